//! A service run as its own process by `tests/tests/lifecycle.rs` (real SIGTERM) and
//! `tests/tests/provision.rs` (`EVENTBUS_PRINT_TOPOLOGY`).
//!
//! It is `eventbus::run()` with one handler (or, with `SIGNAL_SERVICE_START=1`,
//! `builder().all_handlers().start()` then a shutdown), configured from the environment (`EVENTBUS_URL`,
//! `EVENTBUS_SERVICE`, `EVENTBUS_SHUTDOWN_GRACE`, ...). The handler prints `started <id>`, works
//! for `work_ms` milliseconds, then prints `finished <id>`; one line each on stdout.
//!
//! Run by hand: `EVENTBUS_URL=nats://127.0.0.1:4222 cargo run -p eventbus-tests --bin signal_service`.

use std::time::Duration;

use eventbus::prelude::*;

/// The event the test publishes (the test declares the same event).
#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "lc_signal", name = "requested")]
struct SignalRequested {
    #[event(aggregate_id)]
    id: String,
    work_ms: u64,
}

#[event_handler]
async fn lc_signal_handler(event: SignalRequested) -> Result<(), HandlerError> {
    println!("started {}", event.id);
    tokio::time::sleep(Duration::from_millis(event.work_ms)).await;
    println!("finished {}", event.id);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), eventbus::Error> {
    if std::env::var_os("SIGNAL_SERVICE_START").is_some() {
        let bus = eventbus::builder().all_handlers().start().await?;
        bus.shutdown().await?;
        println!("started and shut down");
        return Ok(());
    }
    eventbus::run().await?;
    println!("exited cleanly");
    Ok(())
}
