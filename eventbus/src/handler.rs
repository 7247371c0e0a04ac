//! What a handler returns ([`HandlerError`]) and what it is given besides the event: its
//! [`EventContext`], and the application's state ([`State`]), each taken by a parameter whose
//! type implements [`FromContext`].

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::aggregate::{self, Aggregate, Appended, Loaded};
use crate::envelope::Metadata;
use crate::error::{BoxError, Error, ErrorKind};
use crate::event::EventSet;
use crate::observe::trace;
use crate::publish::{PublishOptions, Published, Publisher};
use crate::read::Read;

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
    /// The application's state, given to the builder.
    pub(crate) states: States,
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

    /// The application's state of type `T` given to the builder ([`State`] is the handler
    /// parameter that takes it).
    pub fn state<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.states.get::<T>()
    }

    fn publisher(&self) -> Result<&Publisher, Error> {
        self.publisher.as_ref().ok_or_else(|| {
            Error::new(
                ErrorKind::Connect,
                "this event context has no bus to publish with (it was made outside a running bus)",
            )
        })
    }

    /// The chain an event published while handling this one belongs to: the correlation id
    /// carried forward, the handled event as the cause, and its trace context (written unless
    /// an OpenTelemetry span of the handler's is active); what `options` sets stays.
    fn chained(&self, mut options: PublishOptions) -> PublishOptions {
        options
            .correlation_id
            .get_or_insert_with(|| self.correlation_id().to_owned());
        options
            .causation_id
            .get_or_insert_with(|| self.event_id().to_owned());
        if options.traceparent.is_none() {
            options.traceparent = self.meta.traceparent.clone();
            options.tracestate =
                trace::header(&self.meta.headers, trace::TRACESTATE).map(str::to_owned);
        }
        options
    }

    /// Publishes an event caused by the one being handled: the correlation id is carried
    /// forward and the causation id is the handled event's id.
    pub async fn publish<E: EventSet>(&self, event: &E) -> Result<Published, Error> {
        self.publish_with(event, PublishOptions::default()).await
    }

    /// Publishes an event caused by the one being handled, with an id, headers or chain of
    /// the caller's: a correlation or causation id left `None` is taken from the handled event
    /// as [`EventContext::publish`] does.
    pub async fn publish_with<E: EventSet>(
        &self,
        event: &E,
        options: PublishOptions,
    ) -> Result<Published, Error> {
        self.publisher()?
            .publish(event, &self.chained(options))
            .await
    }

    /// Appends events to aggregate `id` if it has exactly `expected_version` events (see
    /// `Bus::append`); each carries the correlation id forward and the handled event as its
    /// cause.
    pub async fn append<E: EventSet>(
        &self,
        id: &str,
        expected_version: u64,
        events: &[E],
    ) -> Result<Appended, Error> {
        let chain = self.chained(PublishOptions::default());
        aggregate::append(self.publisher()?, id, expected_version, events, &chain).await
    }

    /// Loads an aggregate (see `Bus::load`).
    pub async fn load<A: Aggregate>(&self, id: impl Into<String>) -> Result<Loaded<A>, Error> {
        aggregate::load(self.publisher()?.backend(), id.into()).await
    }

    /// Reads the events of aggregate `id` in order (see `Bus::read`).
    pub fn read<E: EventSet>(&self, id: impl Into<String>) -> Read<E> {
        match self.publisher() {
            Ok(p) => Read::new(p.backend().clone(), id.into()),
            Err(e) => Read::failed(e),
        }
    }
}

/// The application's state given to the builder (`builder().state(value)`), by type.
#[derive(Clone, Default)]
pub(crate) struct States(Arc<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>);

impl States {
    /// Adds `value`, replacing a value of the same type.
    pub(crate) fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        Arc::make_mut(&mut self.0).insert(TypeId::of::<T>(), Arc::new(value));
    }

    pub(crate) fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.0.get(&TypeId::of::<T>())?.downcast_ref()
    }

    pub(crate) fn contains(&self, ty: TypeId) -> bool {
        self.0.contains_key(&ty)
    }
}

impl fmt::Debug for States {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "States({} values)", self.0.len())
    }
}

/// A state type a handler takes: its [`TypeId`] and its name, for the start-up check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateType {
    /// The type's id.
    pub id: TypeId,
    /// The type's name, for messages.
    pub name: &'static str,
}

/// A handler parameter after the event: a value taken from the handler's context. Implemented
/// by [`EventContext`] (the context itself) and [`State<T>`] (the application's state).
///
/// A handler is `async fn name(event: E, ...) -> Result<(), Err>`, where each parameter after
/// the event is of a type implementing this trait, in any order.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a parameter of an event handler",
    label = "not an event handler parameter",
    note = "after the event, a handler takes `ctx: EventContext` and application state as `State(x): State<T>` (given with `eventbus::builder().state(x)`), in any order"
)]
pub trait FromContext: Sized {
    /// The parameter's value, from the handler's context.
    ///
    /// # Panics
    ///
    /// [`State<T>`] panics when no state of type `T` was given; a bus refuses to start such a
    /// handler, so this happens only to a context made by hand without it.
    fn from_context(ctx: &EventContext) -> Self;

    /// The state types this parameter needs, checked when a bus starts (none by default).
    fn needs(_out: &mut Vec<StateType>) {}
}

impl FromContext for EventContext {
    fn from_context(ctx: &EventContext) -> Self {
        ctx.clone()
    }
}

/// Application state of type `T` given to the bus (`eventbus::builder().state(value)`), taken
/// by a handler parameter, as axum's `State` is:
///
/// ```
/// # use eventbus::prelude::*;
/// # #[derive(DomainEvent, Serialize, Deserialize)]
/// # #[event(aggregate = "doc_state", name = "placed")]
/// # pub struct OrderPlaced { #[event(aggregate_id)] pub order_id: String }
/// #[derive(Clone)]
/// struct Db(std::sync::Arc<std::sync::Mutex<Vec<String>>>);
///
/// #[event_handler]
/// async fn remember(event: OrderPlaced, State(db): State<Db>) -> Result<(), HandlerError> {
///     db.0.lock().unwrap().push(event.order_id);
///     Ok(())
/// }
/// ```
///
/// A bus refuses to start a handler whose state was not given, before any network call, with
/// an error that names the handler and the type. Each handler call gets its own clone, so keep
/// `T` cheap to clone (a pool, an `Arc`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State<T>(pub T);

impl<T: Clone + Send + Sync + 'static> FromContext for State<T> {
    fn from_context(ctx: &EventContext) -> Self {
        match ctx.states.get::<T>() {
            Some(v) => State(v.clone()),
            None => panic!(
                "no state of type `{}` was given to the bus (eventbus::builder().state(..))",
                std::any::type_name::<T>()
            ),
        }
    }

    fn needs(out: &mut Vec<StateType>) {
        out.push(StateType {
            id: TypeId::of::<T>(),
            name: std::any::type_name::<T>(),
        });
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
