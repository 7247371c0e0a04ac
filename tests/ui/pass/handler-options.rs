// Every consumer option of `#[event_handler]`.
use eventbus::prelude::*;

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "created")]
pub struct OrderCreated {
    #[event(aggregate_id)]
    pub order_id: String,
}

#[event_handler(
    subject = "order.*.created",
    durable = "billing-orders_1",
    deliver = "last_per_subject",
    ack = "explicit",
    replay = "instant",
    max_deliver = 10,
    concurrency = 1,
    ordered = true,
    ack_wait = "1h30m",
    backoff = ["100ms", "1s", "1m", "1h"],
)]
async fn all_options(_: OrderCreated, _: EventContext) -> Result<(), HandlerError> {
    Ok(())
}

#[event_handler(
    durable = false,
    ack = "none",
    deliver = "new",
    replay = "original",
    ordered
)]
async fn lossy_projection(_: OrderCreated) -> Result<(), HandlerError> {
    Ok(())
}

#[event_handler(durable = true, start_sequence = 1000)]
async fn from_a_sequence(_: OrderCreated) -> Result<(), HandlerError> {
    Ok(())
}

#[event_handler(deliver = "last")]
async fn last(_: OrderCreated) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
