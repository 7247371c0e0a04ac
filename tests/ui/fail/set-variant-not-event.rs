use eventbus::prelude::*;

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "created")]
pub struct OrderCreated {
    #[event(aggregate_id)]
    pub order_id: String,
}

#[derive(DomainEvent)]
#[event(aggregate = "order")]
pub enum OrderEvent {
    Created(OrderCreated),
    Note(String),
}

fn main() {}
