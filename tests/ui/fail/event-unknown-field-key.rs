use eventbus::prelude::*;

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "created")]
pub struct OrderCreated {
    #[event(aggregate_id)]
    pub order_id: String,
    #[event(skip)]
    pub note: String,
    #[event(name = "total")]
    pub total_cents: u64,
}

fn main() {}
