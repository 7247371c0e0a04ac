use eventbus::prelude::*;

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "created")]
pub struct OrderCreated {
    #[event(aggregate_id)]
    pub order_id: String,
}

#[derive(Clone)]
pub struct Db;

// Application state is taken as `State(db): State<Db>`, not as the bare type.
#[event_handler]
async fn bill(_: OrderCreated, _: EventContext, db: Db) -> Result<(), HandlerError> {
    let _ = db;
    Ok(())
}

fn main() {}
