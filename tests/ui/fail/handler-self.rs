use eventbus::prelude::*;

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "created")]
pub struct OrderCreated {
    #[event(aggregate_id)]
    pub order_id: String,
}

pub struct Billing;

impl Billing {
    #[event_handler]
    async fn bill(&self, _: OrderCreated) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {}
