use eventbus::prelude::*;

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "created")]
pub struct OrderCreated {
    #[event(aggregate_id)]
    pub order_id: String,
}

pub struct NotAnEvent;

#[event_handler(publishes = OrderCreated)]
async fn not_a_list(_event: OrderCreated) -> Result<(), HandlerError> {
    Ok(())
}

#[event_handler(publishes = [])]
async fn empty(_event: OrderCreated) -> Result<(), HandlerError> {
    Ok(())
}

#[event_handler(publishes = ["OrderCreated"])]
async fn not_a_type(_event: OrderCreated) -> Result<(), HandlerError> {
    Ok(())
}

#[event_handler(publishes = [OrderCreated, NotAnEvent])]
async fn not_an_event(_event: OrderCreated) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
