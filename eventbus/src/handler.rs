//! What a handler returns ([`HandlerError`]) and what it is given besides the event
//! ([`EventContext`]).

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::envelope::Metadata;
use crate::error::{BoxError, Error, ErrorKind};
use crate::event::EventSet;
use crate::publish::{PublishOptions, Published, Publisher};

/// The future a registered handler returns, boxed (macro plumbing).
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send + 'static>>;

/// Whether a failed event may succeed if it is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Retry {
    /// Retried with backoff until the consumer's max deliveries, then dead-lettered.
    Transient,
    /// Never retried: dead-lettered at once.
    Permanent,
}

/// The error of a handler.
///
/// Any error type converts into it with `?` (as a transient error, retried with backoff);
/// [`HandlerError::permanent`] marks an error that no retry can fix, so the event is
/// dead-lettered at once.
///
/// It deliberately does not implement [`std::error::Error`], so that every error type can
/// convert into it (as `anyhow::Error` does); [`HandlerError::source`] gives the cause.
pub struct HandlerError {
    retry: Retry,
    source: BoxError,
}

impl HandlerError {
    /// A transient error: the event is retried with backoff.
    pub fn transient(error: impl Into<BoxError>) -> Self {
        HandlerError {
            retry: Retry::Transient,
            source: error.into(),
        }
    }

    /// A permanent error: the event is dead-lettered at once and never retried.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        HandlerError {
            retry: Retry::Permanent,
            source: error.into(),
        }
    }

    /// Whether the event is retried.
    pub fn retry(&self) -> Retry {
        self.retry
    }

    /// Whether this error is permanent.
    pub fn is_permanent(&self) -> bool {
        self.retry == Retry::Permanent
    }

    /// The cause.
    pub fn source(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.source
    }

    /// The cause, owned.
    pub fn into_source(self) -> Box<dyn StdError + Send + Sync + 'static> {
        self.source
    }
}

impl<E: Into<BoxError>> From<E> for HandlerError {
    fn from(e: E) -> Self {
        HandlerError::transient(e)
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::error::chain(&*self.source))
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("retry", &self.retry)
            .field("source", &self.source)
            .finish()
    }
}

/// Where a delivered event sits in its stream and how often it was delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery {
    /// The stream's name.
    pub stream: String,
    /// The consumer's name.
    pub consumer: String,
    /// The event's sequence in the stream.
    pub stream_sequence: u64,
    /// How many times this event was delivered to the consumer, this time included (1 the
    /// first time).
    pub delivered: u64,
    /// How many events were still pending for the consumer after this one.
    pub pending: u64,
}

/// What a handler is given besides the event: its metadata, where it was delivered from, and
/// a publisher that carries the correlation id forward and sets the causation id.
///
/// It holds the bus's publishing side only, not the bus: a handler that keeps its context
/// does not keep the bus's workers running.
#[derive(Clone)]
pub struct EventContext {
    pub(crate) meta: Arc<Metadata>,
    pub(crate) delivery: Arc<Delivery>,
    /// What the handler publishes with; `None` for a context made outside a running bus.
    pub(crate) publisher: Option<Publisher>,
}

impl EventContext {
    /// The event's metadata (id, source, time, correlation and causation ids, headers).
    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    /// The event's id.
    pub fn event_id(&self) -> &str {
        &self.meta.id
    }

    /// The id of the aggregate the event belongs to.
    pub fn aggregate_id(&self) -> &str {
        &self.meta.aggregate_id
    }

    /// The correlation id: the id of the event that started this chain.
    pub fn correlation_id(&self) -> &str {
        self.meta.correlation_id.as_deref().unwrap_or(&self.meta.id)
    }

    /// Where the event was delivered from and how often.
    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    /// How many times this event was delivered, this time included.
    pub fn attempt(&self) -> u64 {
        self.delivery.delivered
    }

    /// Publishes an event caused by the one being handled: the correlation id is carried
    /// forward and the causation id is the handled event's id.
    pub async fn publish<E: EventSet>(&self, event: &E) -> Result<Published, Error> {
        let publisher = self.publisher.as_ref().ok_or_else(|| {
            Error::new(
                ErrorKind::Connect,
                "this event context has no bus to publish with",
            )
        })?;
        let options = PublishOptions {
            correlation_id: Some(self.correlation_id().to_owned()),
            causation_id: Some(self.event_id().to_owned()),
            ..PublishOptions::default()
        };
        publisher.publish(event, &options).await
    }
}

impl fmt::Debug for EventContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventContext")
            .field("metadata", &self.meta)
            .field("delivery", &self.delivery)
            .finish()
    }
}
