use eventbus::prelude::*;

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "created")]
pub struct OrderCreated {
    #[event(aggregate_id)]
    pub order_id: String,
}

// Option and signature errors are reported together.
#[event_handler(subject = "order.>.x", max_deliver = 0, nope)]
fn bill(&self, _: OrderCreated) {}

fn main() {}
