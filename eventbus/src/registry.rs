//! The registry: every `#[derive(DomainEvent)]` event and every `#[event_handler]` handler in
//! the program, collected at link time through `inventory`.

use std::borrow::Cow;
use std::time::Duration;

use crate::envelope::Metadata;
use crate::error::Error;
use crate::event::EventDescriptor;
use crate::handler::{EventContext, HandlerFuture};

/// Which events a new consumer starts from. Ignored for a consumer that already exists on the
/// server (its position is kept).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeliverPolicy {
    /// Every event in the stream (the default).
    All,
    /// The last event in the stream that matches the filter.
    Last,
    /// The last event of each subject (the latest state of each aggregate per event type).
    LastPerSubject,
    /// Only events published after the consumer was created.
    New,
    /// From a stream sequence.
    ByStartSequence(u64),
    /// From a time.
    ByStartTime(time::OffsetDateTime),
}

/// Whether handled events are acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AckPolicy {
    /// Every event is acked after its handler succeeded (the default); nothing is lost.
    Explicit,
    /// No acks: an event counts as handled once delivered. For lossy projections only; no
    /// retry, no dead letters.
    None,
}

/// How fast a consumer replays stored events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReplayPolicy {
    /// As fast as possible (the default).
    Instant,
    /// At the pace they were originally published.
    Original,
}

/// The options of a handler's consumer. `None` means "not set here": an option given in
/// configuration overrides the attribute's, which overrides the default.
///
/// | option | default |
/// |---|---|
/// | `durable_name` | `{service}-{handler}` |
/// | `durable` | `true`; `false` makes an ephemeral consumer per instance, removed on stop |
/// | `deliver` | [`DeliverPolicy::All`] |
/// | `ack` | [`AckPolicy::Explicit`] |
/// | `replay` | [`ReplayPolicy::Instant`] |
/// | `max_deliver` | 5 |
/// | `ack_wait` | 30 s (in-progress acks keep a longer handler's event) |
/// | `backoff` | 1 s, 5 s, 30 s, 2 min (the last repeats) |
/// | `concurrency` | 16 events at once per handler and instance |
/// | `ordered` | `false`; `true` handles one aggregate's events one at a time, in order |
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConsumerOptions {
    /// The durable consumer's name.
    pub durable_name: Option<Cow<'static, str>>,
    /// `false` for an ephemeral consumer per instance (broadcast).
    pub durable: Option<bool>,
    /// Where a new consumer starts.
    pub deliver: Option<DeliverPolicy>,
    /// Acknowledgement policy.
    pub ack: Option<AckPolicy>,
    /// Replay policy.
    pub replay: Option<ReplayPolicy>,
    /// How many times an event is delivered before it is dead-lettered.
    pub max_deliver: Option<i64>,
    /// How long the server waits for an ack before it redelivers.
    pub ack_wait: Option<Duration>,
    /// The delays before each retry; the last one repeats.
    pub backoff: Option<Cow<'static, [Duration]>>,
    /// How many events of this handler run at once in one instance.
    pub concurrency: Option<usize>,
    /// Whether one aggregate's events are handled one at a time, in stream order.
    pub ordered: Option<bool>,
}

impl ConsumerOptions {
    /// No option set; usable in `const` contexts (`..ConsumerOptions::NONE`).
    pub const NONE: ConsumerOptions = ConsumerOptions {
        durable_name: None,
        durable: None,
        deliver: None,
        ack: None,
        replay: None,
        max_deliver: None,
        ack_wait: None,
        backoff: None,
        concurrency: None,
        ordered: None,
    };

    /// `self` with every option that `over` sets replaced by `over`'s.
    pub fn overridden_by(&self, over: &ConsumerOptions) -> ConsumerOptions {
        ConsumerOptions {
            durable_name: over
                .durable_name
                .clone()
                .or_else(|| self.durable_name.clone()),
            durable: over.durable.or(self.durable),
            deliver: over.deliver.clone().or_else(|| self.deliver.clone()),
            ack: over.ack.or(self.ack),
            replay: over.replay.or(self.replay),
            max_deliver: over.max_deliver.or(self.max_deliver),
            ack_wait: over.ack_wait.or(self.ack_wait),
            backoff: over.backoff.clone().or_else(|| self.backoff.clone()),
            concurrency: over.concurrency.or(self.concurrency),
            ordered: over.ordered.or(self.ordered),
        }
    }
}

/// The erased entry point of a handler: decode the event, then return the handler's future.
pub type CallFn = fn(&Metadata, &[u8], EventContext) -> Result<HandlerFuture, Error>;

/// One `#[event_handler]` function.
#[derive(Debug)]
pub struct HandlerRegistration {
    /// The function's name.
    pub name: &'static str,
    /// The module it is declared in.
    pub module_path: &'static str,
    /// The source file it is declared in.
    pub file: &'static str,
    /// The line it is declared on.
    pub line: u32,
    /// The subject filter it consumes.
    pub subject: &'static str,
    /// Whether the subject was given on the attribute (else it is the event set's filter).
    pub subject_given: bool,
    /// The aggregate type of the events it handles.
    pub aggregate: &'static str,
    /// The Rust type of its event parameter.
    pub event_type: &'static str,
    /// The event types it can decode.
    pub events: &'static [EventDescriptor],
    /// The consumer options given on the attribute.
    pub options: ConsumerOptions,
    /// Decodes and calls it.
    pub call: CallFn,
}

/// One `#[derive(DomainEvent)]` event type.
#[derive(Debug)]
pub struct EventRegistration {
    /// The event type.
    pub descriptor: EventDescriptor,
}

inventory::collect!(HandlerRegistration);
inventory::collect!(EventRegistration);

/// Every registered handler, in a stable order (by name, then module).
pub fn handlers() -> Vec<&'static HandlerRegistration> {
    let mut v: Vec<_> = inventory::iter::<HandlerRegistration>.into_iter().collect();
    v.sort_by(|a, b| (a.name, a.module_path).cmp(&(b.name, b.module_path)));
    v
}

/// Every registered event type, in a stable order (by aggregate, then name).
pub fn events() -> Vec<&'static EventDescriptor> {
    let mut v: Vec<_> = inventory::iter::<EventRegistration>
        .into_iter()
        .map(|r| &r.descriptor)
        .collect();
    v.sort_by(|a, b| (a.aggregate, a.name, a.version).cmp(&(b.aggregate, b.name, b.version)));
    v.dedup();
    v
}
