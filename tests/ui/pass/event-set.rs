// An event set: an enum of the event structs of one aggregate, with `From` for each.
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

mod events {
    #[derive(eventbus::DomainEvent, serde::Serialize, serde::Deserialize)]
    #[event(aggregate = "order", name = "cancelled")]
    pub struct OrderCancelled {
        #[event(aggregate_id)]
        pub order_id: String,
    }
}

#[derive(DomainEvent)]
#[event(aggregate = "order")]
pub enum OrderEvent {
    Created(OrderCreated),
    Shipped(OrderShipped),
    Cancelled(events::OrderCancelled),
}

fn main() {
    let e: OrderEvent = OrderCreated {
        order_id: "1".into(),
    }
    .into();
    assert_eq!(e.descriptor().name, "created");
    assert_eq!(OrderEvent::EVENTS.len(), 3);
    assert_eq!(OrderEvent::FILTER, "order.*.*");
}
