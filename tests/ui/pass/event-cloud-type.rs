// An event that declares the CloudEvents type other producers give it: read as this event,
// besides eventbus's own `order.created.v1`.
use eventbus::prelude::*;

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "created", cloud_type = "com.example.orders.created")]
pub struct OrderCreated {
    #[event(aggregate_id)]
    pub order_id: String,
}

// Any characters the CloudEvents spec allows in a string.
#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "shipped", version = 2)]
#[event(cloud_type = "Bestellung versandt/v2 ✓")]
pub struct OrderShipped {
    #[event(aggregate_id)]
    pub order_id: String,
}

fn main() {
    let d = &<OrderCreated as EventSet>::EVENTS[0];
    assert_eq!(d.cloud_type, "order.created.v1");
    assert_eq!(d.foreign_type, Some("com.example.orders.created"));
    let d = &<OrderShipped as EventSet>::EVENTS[0];
    assert_eq!(d.foreign_type, Some("Bestellung versandt/v2 ✓"));
}
