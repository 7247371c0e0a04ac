use eventbus::prelude::*;

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "order created")]
pub struct OrderCreated {
    #[event(aggregate_id)]
    pub order_id: String,
}
#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "", name = "*")]
pub struct OrderShipped {
    #[event(aggregate_id)]
    pub order_id: String,
}

fn main() {}
