use eventbus::prelude::*;

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "created")]
pub struct OrderCreated {
    #[event(aggregate_id)]
    pub order_id: String,
}

#[event_handler]
async fn bill(_: OrderCreated, ctx: &EventContext) -> Result<(), HandlerError> {
    let _ = ctx;
    Ok(())
}

fn main() {}
