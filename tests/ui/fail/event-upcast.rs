use eventbus::prelude::*;

// Not a path.
#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "created", version = 2, upcast = "order_created_from")]
pub struct OrderCreated {
    #[event(aggregate_id)]
    pub order_id: String,
}

// Version 1 has no older version to upcast.
#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "paid", upcast = order_paid_from)]
pub struct OrderPaid {
    #[event(aggregate_id)]
    pub order_id: String,
}

// Each event of a set has its own.
#[derive(DomainEvent)]
#[event(aggregate = "order", upcast = order_paid_from)]
pub enum OrderEvent {
    Paid(OrderPaid),
}

fn order_paid_from(
    _version: u32,
    data: serde_json::Value,
) -> Result<serde_json::Value, eventbus::UpcastError> {
    Ok(data)
}

fn main() {}
