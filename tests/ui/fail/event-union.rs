use eventbus::prelude::*;

#[derive(DomainEvent)]
#[event(aggregate = "order", name = "created")]
pub union OrderCreated {
    pub id: u64,
    pub other: f64,
}

fn main() {}
