use eventbus::prelude::*;

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "created")]
pub struct OrderCreated {
    #[event(aggregate_id)]
    pub order_id: String,
}

#[event_handler]
async fn bill(order_id: String) -> Result<(), HandlerError> {
    let _ = order_id;
    Ok(())
}

fn main() {}
