// The generated code names everything by absolute path: local items named like std's or
// eventbus's do not disturb it, and nothing but `eventbus` needs to be in scope.
#![no_implicit_prelude]

extern crate eventbus;
extern crate serde;
extern crate std;

#[allow(dead_code)]
struct Result;
#[allow(dead_code)]
struct Option;
#[allow(dead_code)]
struct Cow;
#[allow(dead_code)]
struct Vec;
#[allow(dead_code)]
struct String;
#[allow(dead_code)]
mod core {}
#[allow(dead_code)]
mod serde_json {}
#[allow(dead_code)]
mod inventory {}

#[derive(::eventbus::DomainEvent, ::serde::Serialize, ::serde::Deserialize)]
#[event(aggregate = "order", name = "created")]
pub struct OrderCreated {
    #[event(aggregate_id)]
    pub order_id: u64,
}

#[derive(::eventbus::DomainEvent)]
#[event(aggregate = "order")]
pub enum OrderEvent {
    Created(OrderCreated),
}

#[::eventbus::event_handler(ack_wait = "5s", backoff = ["1s"], durable = "x")]
async fn meta(
    event: OrderEvent,
    ctx: ::eventbus::EventContext,
) -> ::std::result::Result<(), ::eventbus::HandlerError> {
    let _ = (event, ctx);
    ::std::result::Result::Ok(())
}

#[::eventbus::event_handler]
async fn body(body: OrderCreated) -> ::std::result::Result<(), ::eventbus::HandlerError> {
    let _ = body;
    ::std::result::Result::Ok(())
}

fn main() {}
