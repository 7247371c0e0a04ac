use eventbus::prelude::*;

// No `#[event(...)]` at all.
#[derive(DomainEvent, Serialize, Deserialize)]
pub struct OrderCreated {
    #[event(aggregate_id)]
    pub order_id: String,
}

fn main() {}
