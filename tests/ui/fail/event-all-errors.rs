use eventbus::prelude::*;

// Every problem is reported at once.
#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "sales.order", nmae = "created", version = 0, version = 2)]
pub struct OrderCreated {
    pub order_id: String,
    #[event(id)]
    pub total_cents: u64,
}

fn main() {}
