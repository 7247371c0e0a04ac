use eventbus::prelude::*;

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "created")]
pub struct OrderCreated {
    #[event(aggregate_id)]
    pub order_id: String,
}

#[event_handler(ack = "none", max_deliver = 3, backoff = ["1s"], ack_wait = "10s")]
async fn bill(_: OrderCreated) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
