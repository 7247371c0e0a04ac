use eventbus::prelude::*;

#[derive(DomainEvent, Serialize, Deserialize)]
#[event(aggregate = "order", name = "created")]
pub struct OrderCreated {
    #[event(aggregate_id)]
    pub order_id: String,
}

mod v2 {
    use eventbus::prelude::*;

    #[derive(DomainEvent, Serialize, Deserialize)]
    #[event(aggregate = "order", name = "created", version = 2)]
    pub struct OrderCreated {
        #[event(aggregate_id)]
        pub order_id: String,
    }
}

#[derive(DomainEvent)]
#[event(aggregate = "order")]
pub enum OrderEvent {
    Created(OrderCreated),
    CreatedV2(v2::OrderCreated),
}

fn main() {}
