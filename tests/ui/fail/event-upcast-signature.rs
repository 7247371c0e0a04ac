use eventbus::prelude::*;

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "created", version = 2, upcast = order_created_from)]
pub struct OrderCreated {
    #[event(aggregate_id)]
    pub order_id: String,
}

// Not `fn(u32, serde_json::Value) -> Result<serde_json::Value, eventbus::UpcastError>`.
fn order_created_from(data: serde_json::Value) -> serde_json::Value {
    data
}

fn main() {}
