//! Where a test calls the bus from: a task of the runtime, or a thread of its own that blocks
//! on the runtime (as `#[tokio::main]`'s own thread does). `publish_all` takes another path in
//! each (see `eventbus/src/publish.rs`), and tests run on both.

use std::future::Future;

/// Where a call is made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A task spawned on the runtime, as in a service (a handler, a request).
    Task,
    /// A thread outside the runtime's workers blocking on it, as `#[tokio::main]`'s thread.
    Thread,
}

impl Caller {
    /// Both places.
    pub const BOTH: [Caller; 2] = [Caller::Task, Caller::Thread];

    /// Runs `f` from this place, on the current runtime, and returns what it returns.
    pub async fn run<F>(self, f: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self {
            Caller::Task => tokio::spawn(f).await.expect("the calling task"),
            Caller::Thread => {
                let runtime = tokio::runtime::Handle::current();
                let (tx, rx) = tokio::sync::oneshot::channel();
                std::thread::spawn(move || {
                    let _ = tx.send(runtime.block_on(f));
                });
                rx.await.expect("the calling thread")
            }
        }
    }
}
