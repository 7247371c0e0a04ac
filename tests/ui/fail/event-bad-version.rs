use eventbus::prelude::*;

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "created", version = 0)]
pub struct OrderCreated {
    #[event(aggregate_id)]
    pub order_id: String,
}
#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "shipped", version = "2")]
pub struct OrderShipped {
    #[event(aggregate_id)]
    pub order_id: String,
}
#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "cancelled", version = 4294967296)]
pub struct OrderCancelled {
    #[event(aggregate_id)]
    pub order_id: String,
}

fn main() {}
