//! Counting eventbus's publish retries, so a test can wait until a publish has been retried.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tracing::instrument::WithSubscriber;
use tracing_subscriber::layer::SubscriberExt;

/// Counts eventbus's warnings on the `eventbus::publish` target ("publish not acknowledged;
/// sending again with the same id", and `publish_all` stopping) in the futures it is attached
/// to.
#[derive(Clone, Default)]
pub struct Retries(Arc<AtomicUsize>);

impl Retries {
    /// How many warnings were seen so far.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    /// `f`, with this counter as its tracing subscriber.
    pub fn attach<F: Future>(&self, f: F) -> impl Future<Output = F::Output> {
        f.with_subscriber(tracing_subscriber::registry().with(self.clone()))
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Retries {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        if meta.target() == "eventbus::publish" && *meta.level() == tracing::Level::WARN {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}
