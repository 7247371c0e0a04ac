use eventbus::prelude::*;

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "created")]
pub struct OrderCreated {
    #[event(aggregate_id)]
    pub order_id: String,
}

#[event_handler(subject = "order.>")]
async fn bill_all(_: OrderCreated) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
