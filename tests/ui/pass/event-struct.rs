// Event structs: named and tuple fields, a version, and the id types that can be aggregate ids.
use eventbus::prelude::*;
use std::borrow::Cow;

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "created")]
pub struct OrderCreated {
    #[event(aggregate_id)]
    pub order_id: String,
    pub total_cents: u64,
}

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "shipped", version = 3)]
pub struct OrderShipped {
    pub carrier: String,
    #[event(aggregate_id)]
    pub order_id: u64,
}

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order-line_2", name = "Added-1")]
pub struct LineAdded(#[event(aggregate_id)] i32, String);

/// An id newtype: one line of `AggregateId`.
#[derive(Serialize, Deserialize)]
pub struct CustomerId(String);

impl AggregateId for CustomerId {
    fn as_aggregate_id(&self) -> Cow<'_, str> {
        Cow::Borrowed(&self.0)
    }
}

// Attributes may be split over several `#[event]`s.
#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "customer")]
#[event(name = "registered")]
pub struct CustomerRegistered {
    #[event(aggregate_id)]
    pub id: CustomerId,
}

fn main() {
    const _: &str = OrderCreated::SUBJECT_PATTERN;
    assert_eq!(OrderShipped::VERSION, 3);
    assert_eq!(LineAdded::SUBJECT_PATTERN, "order-line_2.*.Added-1");
    assert_eq!(LineAdded(7, String::new()).aggregate_id(), "7");
    assert_eq!(
        CustomerRegistered {
            id: CustomerId("c1".into())
        }
        .subject()
        .unwrap(),
        "customer.c1.registered"
    );
}
