use eventbus::prelude::*;

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "created")]
pub struct OrderCreated {
    #[event(aggregate_id)]
    pub order_id: String,
}

#[event_handler]
async fn bill(_: OrderCreated) -> Result<(), HandlerError> {
    let not_send = std::rc::Rc::new(1);
    std::future::ready(()).await;
    let _ = not_send;
    Ok(())
}

fn main() {}
