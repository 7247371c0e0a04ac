use eventbus::prelude::*;

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "created")]
pub struct OrderCreated {
    #[event(aggregate_id)]
    pub order_id: String,
}

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "shipped")]
pub struct OrderShipped {
    #[event(aggregate_id)]
    pub order_id: String,
}

#[derive(DomainEvent)]
#[event(aggregate = "order")]
pub enum OrderEvent {
    #[event(name = "created")]
    Created(OrderCreated),
    Shipped(#[event(aggregate_id)] OrderShipped),
}

fn main() {}
