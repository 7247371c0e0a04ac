//! Test harness for eventbus's integration tests: real `nats-server` processes.
//!
//! Every test starts its own server (or cluster) on free loopback ports with a temporary store,
//! so no test depends on another's leftover state (README, "Set up"):
//!
//! ```no_run
//! use eventbus_tests::{wait_until, NatsServer};
//! use std::time::Duration;
//!
//! # async fn example() {
//! let mut server = NatsServer::start().await;
//! let client = server.connect().await;
//! // ... exercise the code under test against `server.url()` ...
//! server.restart().await; // SIGKILL, then start again on the same port and store
//! wait_until(Duration::from_secs(10), "the client reconnects", || async {
//!     client.connection_state() == async_nats::connection::State::Connected
//! })
//! .await;
//! # }
//! ```
//!
//! The binary comes from `NATS_SERVER_BIN`, else `nats-server` on `PATH` (at least 2.10); when
//! there is none the harness panics telling you to run `scripts/install-nats-server.sh`.
//! A server is killed and its store removed when dropped; when that happens because a test is
//! panicking, the end of the server's log is printed to stderr.

mod asyncapi;
mod bus;
mod caller;
mod cluster;
mod countdown;
mod monitor;
mod probe;
mod retries;
mod server;
mod wait;

pub use asyncapi::{validate_asyncapi, ASYNCAPI_ENV};
pub use bus::{publisher, store_backlog};
pub use caller::Caller;
pub use cluster::NatsCluster;
pub use countdown::{median, Countdown};
pub use probe::Probe;
pub use retries::Retries;
pub use server::{
    locate_nats_server, NatsServer, NatsServerBuilder, Version, BIN_ENV, INSTALL_HINT, MIN_VERSION,
};
pub use wait::{wait_for, wait_until};
