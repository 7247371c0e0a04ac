use eventbus::prelude::*;

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "created", name = "placed")]
pub struct OrderCreated {
    #[event(aggregate_id)]
    pub order_id: String,
}

// Keys split over several attributes count together.
#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "shipped")]
#[event(aggregate = "shipment")]
pub struct OrderShipped {
    #[event(aggregate_id, aggregate_id)]
    pub order_id: String,
}

fn main() {}
