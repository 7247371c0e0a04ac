use eventbus::prelude::*;

// `Serialize` and `Deserialize` are not derived.
#[derive(DomainEvent)]
#[event(aggregate = "order", name = "created")]
pub struct OrderCreated {
    #[event(aggregate_id)]
    pub order_id: String,
}

fn main() {}
