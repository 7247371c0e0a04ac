use eventbus::prelude::*;

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "created")]
pub struct OrderCreated {
    #[event(aggregate_id)]
    pub order_id: String,
}

#[derive(DomainEvent)]
#[event(aggregate = "order", name = "any", version = 2, aggregate_id)]
pub enum OrderEvent {
    Created(OrderCreated),
}

fn main() {}
