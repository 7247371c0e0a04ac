//! The metrics eventbus records, through the `metrics` facade: the application installs the
//! recorder it wants (or the `http` feature installs a Prometheus one). The README's table
//! "Metrics" lists each one; this file is its source and the two must agree.
//!
//! Names follow the OpenTelemetry messaging conventions where one exists
//! (`messaging.client.sent.messages`, ...) and are eventbus's own otherwise. Labels are
//! low-cardinality: service, handler, stream, event type, outcome, reason; never an aggregate
//! id or an event id. A Prometheus recorder writes the dots as underscores
//! (`messaging_client_sent_messages`).
//!
//! Recording is cheap on the hot path: a handler's handles are registered once, when its
//! worker starts (`HandlerMetrics`), and a publisher's once per event type (`PublishMetrics`);
//! an event costs a few atomic operations, no label built. Handles are taken from the
//! recorder installed when they are registered: install it before the bus starts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram, SharedString};

/// Events published and stored (acknowledged by the server), or failed (label `error_type`).
pub(crate) const SENT_MESSAGES: &str = "messaging.client.sent.messages";
/// How long a publish took until the server's acknowledgement, in seconds.
pub(crate) const OPERATION_DURATION: &str = "messaging.client.operation.duration";
/// Deliveries received by a handler's worker.
pub(crate) const CONSUMED_MESSAGES: &str = "messaging.client.consumed.messages";
/// How long a delivery's handling took (decode, handler, settlement), in seconds.
pub(crate) const PROCESS_DURATION: &str = "messaging.process.duration";
/// Deliveries by outcome: `acked`, `retried`, `dead_lettered`, `panicked`, `undecodable`,
/// `unacknowledged` (each delivery counts once).
pub(crate) const HANDLED: &str = "eventbus.handled";
/// Deliveries that were redeliveries (delivered more than once).
pub(crate) const REDELIVERIES: &str = "eventbus.redeliveries";
/// Events in a handler's hands now.
pub(crate) const IN_FLIGHT: &str = "eventbus.in_flight";
/// Dead letters written, by reason.
pub(crate) const DEAD_LETTERS: &str = "eventbus.dead_letters";
/// Publishes sent again after an attempt that was not acknowledged.
pub(crate) const PUBLISH_RETRIES: &str = "eventbus.publish.retries";
/// Events of a handler's consumer not yet delivered (lag), as the server last said.
pub(crate) const CONSUMER_PENDING: &str = "eventbus.consumer.pending";
/// Events of a handler's consumer delivered and not yet acknowledged.
pub(crate) const CONSUMER_ACK_PENDING: &str = "eventbus.consumer.ack_pending";
/// Events of a handler's consumer redelivered, as the server counts them.
pub(crate) const CONSUMER_REDELIVERED: &str = "eventbus.consumer.redelivered";
/// Messages in a stream.
pub(crate) const STREAM_MESSAGES: &str = "eventbus.stream.messages";
/// Bytes in a stream.
pub(crate) const STREAM_BYTES: &str = "eventbus.stream.bytes";
/// Consumers of a stream.
pub(crate) const STREAM_CONSUMERS: &str = "eventbus.stream.consumers";
/// 1 for the connection's current state, 0 for the others (label `state`).
pub(crate) const CONNECTION_STATE: &str = "eventbus.connection.state";
/// Reconnections after a lost connection.
pub(crate) const RECONNECTS: &str = "eventbus.connection.reconnects";
/// Consumers found stalled (pending events, nothing received) and pulled anew.
pub(crate) const CONSUMER_STALLS: &str = "eventbus.consumer.stalls";

/// Every metric name, for the README's table and the test that scrapes them.
pub const ALL: &[&str] = &[
    SENT_MESSAGES,
    OPERATION_DURATION,
    CONSUMED_MESSAGES,
    PROCESS_DURATION,
    HANDLED,
    REDELIVERIES,
    IN_FLIGHT,
    DEAD_LETTERS,
    PUBLISH_RETRIES,
    CONSUMER_PENDING,
    CONSUMER_ACK_PENDING,
    CONSUMER_REDELIVERED,
    STREAM_MESSAGES,
    STREAM_BYTES,
    STREAM_CONSUMERS,
    CONNECTION_STATE,
    RECONNECTS,
    CONSUMER_STALLS,
];

/// How one delivery ended, as `eventbus.handled` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Acked,
    Retried,
    DeadLettered,
    /// The handler panicked (the event is then retried or dead-lettered, counted here only).
    Panicked,
    /// The event could not be decoded (dead-lettered at once, counted here only).
    Undecodable,
    /// `ack = none`: nothing settled.
    Unacknowledged,
}

/// Why a dead letter was written, as `eventbus.dead_letters` labels it.
pub(crate) const DEAD_REASONS: [&str; 5] = [
    "permanent",
    "max_deliver",
    "undecodable",
    "unknown_event_type",
    "undeliverable",
];

/// The handles of one handler's worker, registered once when it starts.
#[derive(Debug)]
pub(crate) struct HandlerMetrics {
    consumed: Counter,
    process: Histogram,
    acked: Counter,
    retried: Counter,
    dead_lettered: Counter,
    panicked: Counter,
    undecodable: Counter,
    unacknowledged: Counter,
    redeliveries: Counter,
    in_flight: Gauge,
    dead_letters: [Counter; 5],
    stalls: Counter,
    pub(crate) pending: Gauge,
    pub(crate) ack_pending: Gauge,
    pub(crate) redelivered: Gauge,
    /// Acks sent by this process, for the ack rate of `Bus::stats` (recorder or not).
    acks: AtomicU64,
    /// Deliveries received, and those in hand now: to tell a stalled consumer (recorder or
    /// not).
    received: AtomicU64,
    holding: AtomicU64,
    /// Stalls found, for `Bus::stats`.
    stalled: AtomicU64,
}

impl HandlerMetrics {
    pub(crate) fn new(service: &str, handler: &str, stream: &str) -> HandlerMetrics {
        let labels = [
            ("service", SharedString::from(service.to_owned())),
            ("handler", SharedString::from(handler.to_owned())),
            ("stream", SharedString::from(stream.to_owned())),
        ];
        let outcome = |o: &'static str| {
            let mut l = labels.to_vec();
            l.push(("outcome", SharedString::from(o)));
            counter!(HANDLED, &l)
        };
        let reason = |r: &'static str| {
            let mut l = labels.to_vec();
            l.push(("reason", SharedString::from(r)));
            counter!(DEAD_LETTERS, &l)
        };
        HandlerMetrics {
            consumed: counter!(CONSUMED_MESSAGES, &labels),
            process: histogram!(PROCESS_DURATION, &labels),
            acked: outcome("acked"),
            retried: outcome("retried"),
            dead_lettered: outcome("dead_lettered"),
            panicked: outcome("panicked"),
            undecodable: outcome("undecodable"),
            unacknowledged: outcome("unacknowledged"),
            redeliveries: counter!(REDELIVERIES, &labels),
            in_flight: gauge!(IN_FLIGHT, &labels),
            dead_letters: DEAD_REASONS.map(reason),
            stalls: counter!(CONSUMER_STALLS, &labels),
            pending: gauge!(CONSUMER_PENDING, &labels),
            ack_pending: gauge!(CONSUMER_ACK_PENDING, &labels),
            redelivered: gauge!(CONSUMER_REDELIVERED, &labels),
            acks: AtomicU64::new(0),
            received: AtomicU64::new(0),
            holding: AtomicU64::new(0),
            stalled: AtomicU64::new(0),
        }
    }

    /// A delivery's handling starts: counted, in flight until the guard drops.
    pub(crate) fn start(&self, delivered: u64) -> InFlight<'_> {
        self.consumed.increment(1);
        self.received.fetch_add(1, Ordering::Relaxed);
        self.holding.fetch_add(1, Ordering::Relaxed);
        if delivered > 1 {
            self.redeliveries.increment(1);
        }
        self.in_flight.increment(1.0);
        InFlight {
            metrics: self,
            started: Instant::now(),
        }
    }

    /// A delivery ended so.
    pub(crate) fn settled(&self, outcome: Outcome) {
        match outcome {
            Outcome::Acked => {
                self.acks.fetch_add(1, Ordering::Relaxed);
                self.acked.increment(1)
            }
            Outcome::Retried => self.retried.increment(1),
            Outcome::DeadLettered => self.dead_lettered.increment(1),
            Outcome::Panicked => self.panicked.increment(1),
            Outcome::Undecodable => self.undecodable.increment(1),
            Outcome::Unacknowledged => self.unacknowledged.increment(1),
        }
    }

    /// A dead letter was written, for `reason` (one of [`DEAD_REASONS`]).
    pub(crate) fn dead_letter(&self, reason: &str) {
        if let Some(i) = DEAD_REASONS.iter().position(|r| *r == reason) {
            self.dead_letters[i].increment(1);
        }
    }

    /// The consumer was found stalled and pulled anew.
    pub(crate) fn stalled(&self) {
        self.stalled.fetch_add(1, Ordering::Relaxed);
        self.stalls.increment(1);
    }

    /// Stalls found so far.
    pub(crate) fn stalls(&self) -> u64 {
        self.stalled.load(Ordering::Relaxed)
    }

    /// Acks sent by this process so far.
    pub(crate) fn acks(&self) -> u64 {
        self.acks.load(Ordering::Relaxed)
    }

    /// Deliveries received so far.
    pub(crate) fn consumed(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Deliveries in this process's hands now.
    pub(crate) fn in_flight(&self) -> u64 {
        self.holding.load(Ordering::Relaxed)
    }
}

/// A delivery in a handler's hands: `eventbus.in_flight` counts it until this drops, and the
/// drop records `messaging.process.duration`.
pub(crate) struct InFlight<'a> {
    metrics: &'a HandlerMetrics,
    started: Instant,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.metrics.in_flight.decrement(1.0);
        self.metrics.holding.fetch_sub(1, Ordering::Relaxed);
        self.metrics
            .process
            .record(self.started.elapsed().as_secs_f64());
    }
}

/// The handles of one event type's publishes.
#[derive(Debug)]
struct TypeHandles {
    sent: Counter,
    duration: Histogram,
}

/// A publisher's handles: one set per event type, registered at its first publish.
#[derive(Debug)]
pub(crate) struct PublishMetrics {
    service: SharedString,
    retries: Counter,
    by_type: RwLock<HashMap<&'static str, Arc<TypeHandles>>>,
}

/// The event type label of a publish of a message as it is (`publish_raw`, republishing).
pub(crate) const RAW: &str = "raw";

impl PublishMetrics {
    pub(crate) fn new(service: &str) -> PublishMetrics {
        let service = SharedString::from(service.to_owned());
        PublishMetrics {
            retries: counter!(PUBLISH_RETRIES, "service" => service.clone()),
            service,
            by_type: RwLock::new(HashMap::new()),
        }
    }

    fn handles(&self, event_type: &'static str) -> Arc<TypeHandles> {
        if let Some(h) = self.by_type.read().expect("metrics lock").get(event_type) {
            return h.clone();
        }
        let labels = [
            ("service", self.service.clone()),
            ("event_type", SharedString::from(event_type)),
            ("operation", SharedString::from("publish")),
        ];
        let h = Arc::new(TypeHandles {
            sent: counter!(SENT_MESSAGES, &labels[..2]),
            duration: histogram!(OPERATION_DURATION, &labels),
        });
        self.by_type
            .write()
            .expect("metrics lock")
            .entry(event_type)
            .or_insert(h)
            .clone()
    }

    /// A publish of `event_type` (its CloudEvents type) that took `took` ended: stored, or
    /// failed with an error of that kind.
    pub(crate) fn published(&self, event_type: &'static str, took: Duration, failed: Option<&str>) {
        let h = self.handles(event_type);
        h.duration.record(took.as_secs_f64());
        match failed {
            None => h.sent.increment(1),
            // Failures are rare: their label is built when one happens.
            Some(kind) => counter!(
                SENT_MESSAGES,
                "service" => self.service.clone(),
                "event_type" => event_type,
                "error_type" => kind.to_owned()
            )
            .increment(1),
        }
    }

    /// A publish is sent again.
    pub(crate) fn retried(&self) {
        self.retries.increment(1);
    }
}

/// Records the connection's state: 1 for `state`, 0 for the others.
pub(crate) fn connection_state(service: &str, state: &'static str) {
    for s in ["connected", "reconnecting", "closed"] {
        gauge!(CONNECTION_STATE, "service" => service.to_owned(), "state" => s)
            .set(if s == state { 1.0 } else { 0.0 });
    }
}

/// The counter of reconnections.
pub(crate) fn reconnects(service: &str) -> Counter {
    counter!(RECONNECTS, "service" => service.to_owned())
}

/// Records a stream's size.
pub(crate) fn stream(stream: &str, messages: u64, bytes: u64, consumers: usize) {
    let s = SharedString::from(stream.to_owned());
    gauge!(STREAM_MESSAGES, "stream" => s.clone()).set(messages as f64);
    gauge!(STREAM_BYTES, "stream" => s.clone()).set(bytes as f64);
    gauge!(STREAM_CONSUMERS, "stream" => s).set(consumers as f64);
}
