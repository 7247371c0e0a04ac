use eventbus::prelude::*;

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "created", cloud_type = "")]
pub struct OrderCreated {
    #[event(aggregate_id)]
    pub order_id: String,
}
#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "shipped", cloud_type = "com.example.orders\nshipped")]
pub struct OrderShipped {
    #[event(aggregate_id)]
    pub order_id: String,
}
#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "paid", cloud_type = "com.example.orders.paid\u{FFFE}")]
pub struct OrderPaid {
    #[event(aggregate_id)]
    pub order_id: String,
}
#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "cancelled", cloud_type = 7)]
pub struct OrderCancelled {
    #[event(aggregate_id)]
    pub order_id: String,
}

fn main() {}
