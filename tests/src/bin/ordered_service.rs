//! A service with one `ordered` handler, run as its own process by `tests/tests/lifecycle.rs`
//! to be killed with -9 mid-handling and started again.
//!
//! It is `eventbus::run()` configured from the environment (`EVENTBUS_URL`, `EVENTBUS_SERVICE`).
//! The handler prints `handling <id> <n>` when it starts an event and `handled <id> <n>` when
//! it is done. With `ORDERED_SERVICE_HANG_ON=<n>` it never finishes event `n` (the test kills
//! the process meanwhile).

use eventbus::prelude::*;

/// The event the test publishes (the test declares the same event).
#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "lc_ordered", name = "noted")]
struct OrderedNoted {
    #[event(aggregate_id)]
    id: String,
    n: u32,
}

#[event_handler(ordered, ack_wait = "3s", concurrency = 8)]
async fn lc_ordered_handler(event: OrderedNoted) -> Result<(), HandlerError> {
    println!("handling {} {}", event.id, event.n);
    let hang_on = std::env::var("ORDERED_SERVICE_HANG_ON")
        .ok()
        .and_then(|v| v.parse::<u32>().ok());
    if hang_on == Some(event.n) {
        std::future::pending::<()>().await;
    }
    println!("handled {} {}", event.id, event.n);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), eventbus::Error> {
    eventbus::run().await
}
