//! Running a service: [`run`] and [`Builder::run`] start the bus, wait for SIGINT, SIGTERM, a
//! future of the caller's or a connection lost for good, then shut down gracefully.

use std::future::Future;

use super::builder::{Selection, ShutdownSignal};
use super::{builder, Builder};
use crate::error::Error;

/// Runs the service: configuration from the environment, connect, provision, dispatch, and a
/// graceful shutdown on SIGINT or SIGTERM. Returns an error if start-up fails or the
/// connection is lost for good, so the process exits non-zero and its supervisor restarts it.
///
/// With `EVENTBUS_PRINT_TOPOLOGY=1` it prints the topology and returns without connecting.
pub async fn run() -> Result<(), Error> {
    builder().run().await
}

impl Builder {
    /// Starts the bus and runs it until SIGINT, SIGTERM or the [`Builder::shutdown_on`]
    /// future, then shuts down gracefully.
    ///
    /// The signal handlers are installed before start-up, so a SIGTERM that arrives while the
    /// bus connects and provisions does not kill the process (the default action) but ends it
    /// cleanly: start-up is abandoned and `run` returns `Ok`.
    ///
    /// It runs every handler linked into the program unless the builder chose some
    /// ([`Builder::only_handlers`], [`Builder::without_handlers`]): running the service is
    /// running its handlers.
    ///
    /// With `EVENTBUS_PRINT_TOPOLOGY=1` (unless [`Builder::no_env`]) it prints the topology
    /// and returns without connecting; with `EVENTBUS_PRINT_ASYNCAPI=1`, the AsyncAPI document
    /// ([`Builder::asyncapi`]).
    pub async fn run(mut self) -> Result<(), Error> {
        if matches!(self.selection, Selection::Default) {
            self.selection = Selection::All;
        }
        if self.print_asyncapi() {
            let document = self.asyncapi()?;
            println!(
                "{}",
                serde_json::to_string_pretty(&document).expect("a JSON value serializes")
            );
            return Ok(());
        }
        if self.print_topology() {
            let t = self.topology()?;
            println!("{t}");
            return Ok(());
        }
        let os_signal = shutdown_signal();
        tokio::pin!(os_signal);
        let mut signal: ShutdownSignal = self
            .shutdown_signal
            .take()
            .unwrap_or_else(|| Box::pin(std::future::pending()));
        let bus = tokio::select! {
            bus = self.start() => bus?,
            _ = &mut os_signal => {
                tracing::info!(target: "eventbus", "stopped during start-up");
                return Ok(());
            }
            _ = &mut signal => return Ok(()),
        };
        let outcome = tokio::select! {
            _ = &mut os_signal => Ok(()),
            _ = &mut signal => Ok(()),
            e = bus.failed() => Err(e),
        };
        let shut = bus.shutdown().await;
        outcome.and(shut)
    }
}

/// Waits for SIGTERM or SIGINT. The handlers are installed when this is called, not when the
/// future is first polled, so a signal that arrives in between is not lost.
fn shutdown_signal() -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            let wait = |name: &'static str, s: std::io::Result<tokio::signal::unix::Signal>| async move {
                match s {
                    Ok(mut s) => {
                        s.recv().await;
                        tracing::info!(target: "eventbus", "{name} received");
                    }
                    Err(e) => {
                        tracing::error!(target: "eventbus", error = %e, "cannot listen for {name}");
                        std::future::pending::<()>().await;
                    }
                }
            };
            tokio::select! {
                _ = wait("SIGTERM", term) => {}
                _ = wait("SIGINT", int) => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
