// The forms of a handler: with and without a context, any error type that converts into
// `HandlerError`, event types by path, handlers in modules and functions.
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

#[derive(DomainEvent)]
#[event(aggregate = "order")]
pub enum OrderEvent {
    Created(OrderCreated),
    Shipped(OrderShipped),
}

#[event_handler]
async fn without_context(event: OrderCreated) -> Result<(), HandlerError> {
    let _ = event.order_id;
    Ok(())
}

#[event_handler]
async fn with_context(_event: OrderCreated, ctx: EventContext) -> Result<(), std::io::Error> {
    let _ = ctx.event_id();
    Ok(())
}

#[event_handler(subject = "order.42.*")]
async fn one_order(
    (OrderEvent::Created(_) | OrderEvent::Shipped(_)): OrderEvent,
) -> Result<(), String> {
    Ok(())
}

#[event_handler(subject = "order.*.shipped")]
async fn boxed_error(
    _: crate::OrderShipped,
    _: eventbus::EventContext,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    Ok(())
}

#[derive(Clone)]
pub struct Pool(std::sync::Arc<String>);

#[derive(Clone)]
pub struct Limits {
    pub max: u32,
}

/// Application state taken by type, before or after the context, several at once.
#[event_handler(durable = "with-state")]
async fn with_state(
    event: OrderCreated,
    State(pool): State<Pool>,
    ctx: EventContext,
    State(limits): State<Limits>,
) -> Result<(), HandlerError> {
    let _ = (event, pool.0.len(), ctx.attempt(), limits.max);
    Ok(())
}

pub mod billing {
    use eventbus::{event_handler, HandlerError};

    /// A handler in a module, with a doc comment and other attributes kept.
    #[event_handler(subject = "order.*.created")]
    #[allow(clippy::unused_async)]
    pub async fn bill(event: super::OrderCreated) -> Result<(), HandlerError> {
        if event.order_id.is_empty() {
            return Err(HandlerError::permanent("no order id"));
        }
        Ok(())
    }
}

fn main() {
    // Handlers stay callable as plain functions.
    let _future = billing::bill(OrderCreated {
        order_id: "1".into(),
    });
    let _future = without_context(OrderCreated {
        order_id: "1".into(),
    });

    #[event_handler]
    async fn in_a_function(_: OrderShipped) -> Result<(), HandlerError> {
        Ok(())
    }
}
