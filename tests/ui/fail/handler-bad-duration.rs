use eventbus::prelude::*;

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "created")]
pub struct OrderCreated {
    #[event(aggregate_id)]
    pub order_id: String,
}

#[event_handler(ack_wait = "30", backoff = ["1s", "1.5s", "2 m", "1d", "0s"])]
async fn bill(_: OrderCreated) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
