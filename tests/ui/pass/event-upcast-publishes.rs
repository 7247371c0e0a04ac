// An event of version 2 with an upcaster from version 1, and a handler that declares what it
// publishes.
use eventbus::prelude::*;
use eventbus::UpcastError;
use serde_json::{json, Value};

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "created", version = 2, upcast = self::upcasts::order_created)]
pub struct OrderCreated {
    #[event(aggregate_id)]
    pub order_id: String,
    pub total: Total,
}

#[derive(Serialize, Deserialize)]
pub struct Total {
    pub cents: u64,
}

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "billed")]
pub struct OrderBilled {
    #[event(aggregate_id)]
    pub order_id: String,
}

mod upcasts {
    use super::*;

    pub fn order_created(version: u32, mut data: Value) -> Result<Value, UpcastError> {
        match version {
            1 => {
                let cents = data["total_cents"].take();
                data["total"] = json!({ "cents": cents });
                Ok(data)
            }
            _ => Err(UpcastError::UnknownVersion),
        }
    }
}

#[event_handler(publishes = [OrderBilled, crate::OrderCreated])]
async fn bill(event: OrderCreated, ctx: EventContext) -> Result<(), HandlerError> {
    ctx.publish(&OrderBilled { order_id: event.order_id }).await?;
    Ok(())
}

fn main() {
    let v1 = json!({ "order_id": "1", "total_cents": 5 });
    let v2 = <OrderCreated as EventSet>::upcast("created", 1, v1).unwrap();
    assert_eq!(v2["total"]["cents"], 5);
    assert_eq!(
        <OrderCreated as EventSet>::upcast("created", 0, json!({})),
        Err(UpcastError::UnknownVersion)
    );
    assert_eq!(
        <OrderBilled as EventSet>::upcast("billed", 0, json!({})),
        Err(UpcastError::NoUpcaster)
    );
}
