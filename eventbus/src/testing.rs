//! Testing handlers without a server: a bus on the in-process broker that records what each
//! handler did, and waits until everything published has been handled.
//!
//! ```
//! use eventbus::prelude::*;
//! use eventbus::testing::{Outcome, TestBus};
//!
//! #[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
//! #[event(aggregate = "doc_order", name = "placed")]
//! struct OrderPlaced {
//!     #[event(aggregate_id)]
//!     order_id: String,
//!     total_cents: u64,
//! }
//!
//! #[event_handler(max_deliver = 3, backoff = ["1s", "10s"])]
//! async fn reserve_stock(event: OrderPlaced) -> Result<(), HandlerError> {
//!     if event.total_cents == 0 {
//!         return Err(HandlerError::permanent("an order of nothing"));
//!     }
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), eventbus::Error> {
//! // In a test: #[tokio::test(start_paused = true)]
//! let bus = TestBus::start(["reserve_stock"]).await?;
//! bus.publish(&OrderPlaced { order_id: "1".into(), total_cents: 500 }).await?;
//! bus.publish(&OrderPlaced { order_id: "2".into(), total_cents: 0 }).await?;
//! bus.wait_idle().await;
//!
//! let handled = bus.handled("reserve_stock");
//! assert_eq!(handled.len(), 2);
//! assert!(handled.iter().any(|h| h.aggregate_id == "1" && h.outcome == Outcome::Acked));
//! let dead = bus.dead_letters(None).await?;
//! assert_eq!(dead.len(), 1);
//! assert_eq!(dead[0].reason, "permanent");
//! bus.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! Under tokio's paused clock (`#[tokio::test(start_paused = true)]`) backoff delays and ack
//! waits elapse without real waiting, so retries and redeliveries take milliseconds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::backend::{Backend, Broker};
use crate::bus::{builder, Builder, Bus};
use crate::config::Config;
use crate::dispatch::{Observer, Settled, Settlement};
use crate::envelope::{decode, encode, EncodeOptions, Metadata};
use crate::error::Error;
use crate::event::EventSet;
use crate::handler::{Delivery, EventContext, States};
use crate::publish::Publisher;
use crate::subject::split_event_subject;

/// What became of one delivery of an event to a handler.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Handled and acked.
    Acked,
    /// Failed; it is retried after a delay.
    Retried {
        /// The handler's error.
        error: String,
    },
    /// Dead-lettered (and terminated).
    DeadLettered {
        /// `permanent`, `max_deliver`, `undecodable` or `unknown_event_type`.
        reason: String,
        /// The error.
        error: String,
    },
    /// Handled or not, with `ack = none`: nothing is settled.
    Unacknowledged,
}

/// One delivery of an event to a handler, as the test bus saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Handled {
    /// The handler's name.
    pub handler: String,
    /// The event's subject.
    pub subject: String,
    /// The aggregate id (the subject's middle token).
    pub aggregate_id: String,
    /// The event's id (`ce-id`), if it had one.
    pub event_id: Option<String>,
    /// Its stream sequence.
    pub sequence: u64,
    /// Which delivery this was (1 the first time).
    pub attempt: u64,
    /// What became of it.
    pub outcome: Outcome,
}

/// Records what handlers did, and how many events are being handled: the observer of the test
/// bus's workers.
#[derive(Debug, Default)]
struct Recorder {
    records: Mutex<Vec<Handled>>,
    in_flight: AtomicUsize,
    changed: Notify,
}

impl Observer for Recorder {
    fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    fn finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    fn settled(&self, s: Settled<'_>) {
        let outcome = match s.settlement {
            Settlement::Acked => Outcome::Acked,
            Settlement::Retried { error } => Outcome::Retried { error },
            Settlement::DeadLettered { reason, error } => Outcome::DeadLettered {
                reason: reason.to_owned(),
                error,
            },
            Settlement::Unacknowledged => Outcome::Unacknowledged,
        };
        let handled = Handled {
            handler: s.handler.to_owned(),
            subject: s.subject.to_owned(),
            aggregate_id: split_event_subject(s.subject)
                .map(|(_, id, _)| id.to_owned())
                .unwrap_or_default(),
            event_id: s.event_id.map(str::to_owned),
            sequence: s.sequence,
            attempt: s.attempt,
            outcome,
        };
        self.records.lock().expect("records lock").push(handled);
        self.changed.notify_waiters();
    }
}

/// A bus on its own in-process broker (a fresh one per test bus, unless
/// [`TestBus::builder`] names a shared one), with a recorder. It dereferences to [`Bus`], so
/// it publishes, reads, loads and lists dead letters like any bus.
#[derive(Debug)]
pub struct TestBus {
    bus: Bus,
    recorder: Arc<Recorder>,
}

impl std::ops::Deref for TestBus {
    type Target = Bus;
    fn deref(&self) -> &Bus {
        &self.bus
    }
}

impl TestBus {
    /// Starts a test bus running the named handlers on a fresh in-process broker.
    pub async fn start<I, S>(handlers: I) -> Result<TestBus, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let url = format!("memory://test-{}", uuid::Uuid::now_v7().simple());
        TestBus::from_builder(TestBus::builder(&url).only_handlers(handlers)).await
    }

    /// A builder for a test bus on the in-process broker at `url` (`memory://name`; buses with
    /// the same name share one broker, as two instances share a server), with the service
    /// name `test` and no environment. Customise it, then [`TestBus::from_builder`].
    pub fn builder(url: &str) -> Builder {
        builder().no_env().url(url).service("test")
    }

    /// Starts a test bus from a builder (see [`TestBus::builder`]).
    pub async fn from_builder(builder: Builder) -> Result<TestBus, Error> {
        let recorder = Arc::new(Recorder::default());
        let bus = builder.observe(recorder.clone()).start().await?;
        Ok(TestBus { bus, recorder })
    }

    /// The bus.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Waits until every published event has been handled to the end: nothing left to
    /// deliver, no redelivery scheduled, no handler running. Under a paused clock, backoff
    /// delays elapse at once.
    pub async fn wait_idle(&self) {
        let broker = self
            .bus
            .backend()
            .broker()
            .expect("a test bus runs on the in-process broker")
            .clone();
        let recorder = &self.recorder;
        loop {
            let broker_changed = broker.notified();
            let recorder_changed = recorder.changed.notified();
            tokio::pin!(broker_changed, recorder_changed);
            broker_changed.as_mut().enable();
            recorder_changed.as_mut().enable();
            if broker.idle() && recorder.in_flight.load(Ordering::SeqCst) == 0 {
                // Let workers that were just woken settle, then check once more.
                tokio::task::yield_now().await;
                if broker.idle() && recorder.in_flight.load(Ordering::SeqCst) == 0 {
                    return;
                }
                continue;
            }
            tokio::select! {
                _ = &mut broker_changed => {}
                _ = &mut recorder_changed => {}
            }
        }
    }

    /// Every delivery to every handler so far, in the order they were settled.
    pub fn all_handled(&self) -> Vec<Handled> {
        self.recorder.records.lock().expect("records lock").clone()
    }

    /// The deliveries to one handler so far.
    pub fn handled(&self, handler: &str) -> Vec<Handled> {
        self.all_handled()
            .into_iter()
            .filter(|h| h.handler == handler)
            .collect()
    }

    /// How many deliveries of each handler ended in each kind of outcome.
    pub fn counts(&self) -> HashMap<(String, &'static str), usize> {
        let mut m = HashMap::new();
        for h in self.all_handled() {
            let k = match h.outcome {
                Outcome::Acked => "acked",
                Outcome::Retried { .. } => "retried",
                Outcome::DeadLettered { .. } => "dead_lettered",
                Outcome::Unacknowledged => "unacknowledged",
            };
            *m.entry((h.handler, k)).or_default() += 1;
        }
        m
    }
}

/// The stream of a [`TestContext`]'s broker: it stores every subject.
const TEST_CONTEXT_STREAM: &str = "TEST_CONTEXT";

/// A context for calling one handler function directly, with no bus and no server: what the
/// handler publishes, appends, loads and reads goes to an in-process broker of its own, which
/// stores every subject, and [`TestContext::published`] returns what it published.
///
/// ```
/// use eventbus::prelude::*;
/// use eventbus::testing::TestContext;
///
/// #[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
/// #[event(aggregate = "doc_ctx_order", name = "placed")]
/// struct OrderPlaced { #[event(aggregate_id)] order_id: String }
///
/// #[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
/// #[event(aggregate = "doc_ctx_invoice", name = "issued")]
/// struct InvoiceIssued { #[event(aggregate_id)] invoice_id: String }
///
/// #[derive(Clone)]
/// struct Prefix(&'static str);
///
/// #[event_handler]
/// async fn bill(e: OrderPlaced, State(p): State<Prefix>, ctx: EventContext) -> Result<(), HandlerError> {
///     ctx.publish(&InvoiceIssued { invoice_id: format!("{}{}", p.0, e.order_id) }).await?;
///     Ok(())
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), eventbus::Error> {
/// let test = TestContext::new();
/// let placed = OrderPlaced { order_id: "7".into() };
/// let ctx = test.context_for(&placed)?;
/// bill(placed, State(Prefix("inv-")), ctx.clone()).await.unwrap();
///
/// let published = test.published::<InvoiceIssued>().await?;
/// assert_eq!(published[0].0.invoice_id, "inv-7");
/// assert_eq!(published[0].1.causation_id.as_deref(), Some(ctx.event_id()));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct TestContext {
    publisher: Publisher,
    states: States,
    /// The delivery the contexts describe: (stream sequence, deliveries).
    delivery: (u64, u64),
}

impl Default for TestContext {
    fn default() -> Self {
        TestContext::new()
    }
}

impl TestContext {
    /// A context on a fresh in-process broker, for the service `test`.
    pub fn new() -> TestContext {
        let broker = Broker::new();
        broker
            .create_stream(async_nats::jetstream::stream::Config {
                name: TEST_CONTEXT_STREAM.to_owned(),
                subjects: vec![">".to_owned()],
                ..Default::default()
            })
            .expect("a fresh broker takes any stream");
        TestContext {
            publisher: Publisher::new(
                Backend::Memory(broker),
                "test".to_owned(),
                &Config::default(),
            ),
            states: States::default(),
            delivery: (1, 1),
        }
    }

    /// Adds application state, for what the handler takes from its context
    /// ([`EventContext::state`]); a `State<T>` parameter is passed by the caller.
    pub fn state<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.states.insert(value);
        self
    }

    /// Makes the contexts describe delivery number `delivered` of the event at stream sequence
    /// `sequence` (by default 1 and 1): to test how a handler deals with a redelivery.
    pub fn delivery(mut self, sequence: u64, delivered: u64) -> Self {
        self.delivery = (sequence, delivered.max(1));
        self
    }

    /// The context of a delivery of `event`, as a bus would give it the first time: the
    /// event's metadata as published by the service `test` (a new id, its own correlation),
    /// delivered from this context's stream (see [`TestContext::delivery`]).
    pub fn context_for<E: EventSet>(&self, event: &E) -> Result<EventContext, Error> {
        let encoded = encode(
            event,
            &EncodeOptions {
                source: self.publisher.service(),
                ..Default::default()
            },
        )?;
        let meta = Metadata::from_headers(encoded.subject.as_str(), encoded.headers)?;
        Ok(self.context_with(meta))
    }

    /// The context of a delivery with metadata of the caller's (another id, correlation or
    /// causation): see [`Metadata::from_message`].
    pub fn context_with(&self, metadata: Metadata) -> EventContext {
        EventContext {
            meta: Arc::new(metadata),
            delivery: Arc::new(Delivery {
                stream: TEST_CONTEXT_STREAM.to_owned(),
                consumer: "test".to_owned(),
                stream_sequence: self.delivery.0,
                delivered: self.delivery.1,
                pending: 0,
            }),
            publisher: Some(self.publisher.clone()),
            states: self.states.clone(),
        }
    }

    /// The events of the set `E` published or appended through this context's broker so far,
    /// in order, each with its metadata.
    pub async fn published<E: EventSet>(&self) -> Result<Vec<(E, Metadata)>, Error> {
        let mut scan = self
            .publisher
            .backend()
            .scan(TEST_CONTEXT_STREAM, ">".to_owned(), 1)
            .await?;
        let mut out = Vec::new();
        while let Some(m) = scan.next().await {
            let m = m?;
            let meta = Metadata::from_headers(&m.subject, m.headers)?;
            if meta.aggregate_type == E::AGGREGATE
                && E::EVENTS.iter().any(|d| d.name == meta.event_type)
            {
                out.push((decode::<E>(&meta, &m.payload)?, meta));
            }
        }
        Ok(out)
    }
}

/// Checks the payload schema of every registered event against its committed snapshot in
/// `dir` (`{dir}/{aggregate}.{name}.v{version}.json`), like `buf breaking` for events:
///
/// - a change that would break readers (a field removed, added as required or made required,
///   a type changed, enum values changed; the rules are in the README's "Contracts") fails,
///   naming each event and field, unless the event's `version` was raised;
/// - an event version without a snapshot (a new event, or a raised version) gets one written;
/// - a compatible change (an optional field added) rewrites the snapshot, to review and commit.
///
/// Events whose type does not derive `schemars::JsonSchema` are listed in
/// [`crate::SchemaCheck::without_schema`], not checked. "Registered" means linked into the test
/// binary: for events of another crate (an integration test of a library), name them with
/// [`check_schemas_of`], which also links them in. Call it from a test, with the directory under
/// the crate: `check_schemas(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas")).unwrap()`.
pub fn check_schemas(dir: impl AsRef<std::path::Path>) -> Result<crate::SchemaCheck, Error> {
    crate::contract::check_snapshots(dir.as_ref(), &crate::registry::event_registrations())
}

/// [`check_schemas`] for the events of `E` (an event or an event set) only.
pub fn check_schemas_of<E: EventSet>(
    dir: impl AsRef<std::path::Path>,
) -> Result<crate::SchemaCheck, Error> {
    let events: Vec<_> = E::EVENTS
        .iter()
        .filter_map(crate::registry::event_registration)
        .collect();
    crate::contract::check_snapshots(dir.as_ref(), &events)
}
