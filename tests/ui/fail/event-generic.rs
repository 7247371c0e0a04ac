use eventbus::prelude::*;

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "created")]
pub struct OrderCreated<T> {
    #[event(aggregate_id)]
    pub order_id: String,
    pub payload: T,
}

fn main() {}
