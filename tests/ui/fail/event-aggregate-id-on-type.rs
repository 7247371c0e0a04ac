use eventbus::prelude::*;

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "created", aggregate_id)]
pub struct OrderCreated {
    #[event(aggregate_id)]
    pub order_id: String,
}

fn main() {}
