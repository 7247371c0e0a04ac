use eventbus::prelude::*;

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "created")]
pub struct OrderCreated {
    #[event(aggregate_id, cloud_type = "com.example.orders.created")]
    pub order_id: String,
}

#[derive(DomainEvent)]
#[event(aggregate = "order", cloud_type = "com.example.orders")]
pub enum OrderEvent {
    Created(OrderCreated),
}

fn main() {}
