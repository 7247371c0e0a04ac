use eventbus::prelude::*;

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "created")]
pub struct OrderCreated {
    #[event(aggregate_id)]
    pub order_id: String,
}

#[event_handler(
    subject = 5,
    durable = "billing.orders",
    deliver = "sometimes",
    ack = "maybe",
    replay = "fast",
    max_deliver = 0,
    concurrency = -1,
    ordered = "yes",
    ack_wait = 30,
    backoff = "1s",
)]
async fn bill(_: OrderCreated) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
