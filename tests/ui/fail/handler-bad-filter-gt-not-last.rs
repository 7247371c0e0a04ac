use eventbus::prelude::*;

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "created")]
pub struct OrderCreated {
    #[event(aggregate_id)]
    pub order_id: String,
}

#[event_handler(subject = "order.>.created")]
async fn bill(event: OrderCreated) -> Result<(), HandlerError> {
    let _ = event;
    Ok(())
}

fn main() {}
