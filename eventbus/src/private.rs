//! Support for the code the macros generate, and for the workspace's own tests and benchmarks.
//! Not part of the API; may change at any time.

use std::future::Future;

pub use inventory;
pub use serde_json;

pub use crate::envelope::{decode, encode, new_event_id, EncodeOptions, EncodedEvent};
pub use crate::handler::HandlerFuture;
/// Every metric eventbus records (tests/observe.rs checks them against `/metrics` and the README).
pub use crate::observe::metrics::ALL as METRIC_NAMES;
pub use crate::registry::{
    event_registrations, events, handlers, CallFn, EventRegistration, HandlerRegistration,
};

use crate::envelope::Metadata;
use crate::error::Error;
use crate::event::EventSet;
use crate::handler::{EventContext, HandlerError};

/// Decodes the event and starts the handler's future.
pub fn call<E, F, Fut, Err>(
    meta: &Metadata,
    body: &[u8],
    ctx: EventContext,
    f: F,
) -> Result<HandlerFuture, Error>
where
    E: EventSet,
    F: FnOnce(E, EventContext) -> Fut,
    Fut: Future<Output = Result<(), Err>> + Send + 'static,
    Err: Into<HandlerError>,
{
    let event = decode::<E>(meta, body)?;
    let fut = f(event, ctx);
    Ok(Box::pin(async move { fut.await.map_err(Into::into) }))
}

/// The `EventSet::to_json` of a derived event struct. Going through a `DomainEvent` bound keeps a
/// missing `Serialize` to the one error on the struct.
pub fn event_to_json<E: crate::event::DomainEvent>(
    event: &E,
) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(event)
}

/// The `EventSet::from_json` of a derived event struct: decodes `body` if `name` is the
/// struct's event type.
pub fn event_from_json<E: crate::event::DomainEvent>(
    name: &str,
    body: &[u8],
) -> Result<E, crate::event::DecodeError> {
    if name == E::EVENT_TYPE {
        serde_json::from_slice(body).map_err(|source| crate::event::DecodeError::Json {
            name: E::EVENT_TYPE,
            source,
        })
    } else {
        Err(crate::event::DecodeError::UnknownEventType {
            name: name.to_owned(),
            aggregate: E::AGGREGATE_TYPE,
        })
    }
}

/// Asks a type for its payload schema through autoref specialisation: the generated code calls
/// `(&&SchemaProbe::<T>::new()).event_schema()`, which picks [`SchemaFromJsonSchema`] when `T`
/// derives `schemars::JsonSchema` (and the `schema` feature is on), else [`NoSchema`].
pub struct SchemaProbe<T>(std::marker::PhantomData<T>);

impl<T> SchemaProbe<T> {
    /// A probe for `T`.
    pub const fn new() -> Self {
        SchemaProbe(std::marker::PhantomData)
    }
}

impl<T> Default for SchemaProbe<T> {
    fn default() -> Self {
        SchemaProbe::new()
    }
}

/// The schema of a type that derives `schemars::JsonSchema`.
pub trait SchemaFromJsonSchema {
    /// The payload's JSON Schema.
    fn event_schema(&self) -> Option<serde_json::Value>;
}

#[cfg(feature = "schema")]
impl<T: schemars::JsonSchema> SchemaFromJsonSchema for &SchemaProbe<T> {
    fn event_schema(&self) -> Option<serde_json::Value> {
        Some(crate::contract::schema_of::<T>())
    }
}

/// No schema: the type does not derive `schemars::JsonSchema`.
pub trait NoSchema {
    /// None.
    fn event_schema(&self) -> Option<serde_json::Value>;
}

impl<T> NoSchema for SchemaProbe<T> {
    fn event_schema(&self) -> Option<serde_json::Value> {
        None
    }
}

/// Fails compilation (in a `const` evaluation) when a handler's subject filter can never
/// match the events its parameter type decodes, or also matches subjects outside their
/// pattern. The message names both.
pub const fn check_handler_subject(handler: &str, filter: &str, event_type: &str, pattern: &str) {
    if !crate::rules::filters_overlap(filter, pattern) {
        let mut m = ConstMessage::new();
        m.push("handler `");
        m.push(handler);
        m.push("`: subject filter `");
        m.push(filter);
        m.push("` can never match `");
        m.push(event_type);
        m.push("` events, which are published on `");
        m.push(pattern);
        m.push("`");
        panic!("{}", m.as_str());
    }
    if !crate::rules::filter_covers(pattern, filter) {
        let mut m = ConstMessage::new();
        m.push("handler `");
        m.push(handler);
        m.push("`: subject filter `");
        m.push(filter);
        m.push("` also matches subjects outside `");
        m.push(pattern);
        m.push("`, where `");
        m.push(event_type);
        m.push("` events are published; events of other types would be dead-lettered as unknown: use a filter within `");
        m.push(pattern);
        m.push("`");
        panic!("{}", m.as_str());
    }
}

/// Fails compilation when two variants of an event set hold the same event type.
pub const fn check_distinct_events(set: &str, a: &str, b: &str, name_a: &str, name_b: &str) {
    if const_str_eq(name_a, name_b) {
        let mut m = ConstMessage::new();
        m.push("event set `");
        m.push(set);
        m.push("`: variants `");
        m.push(a);
        m.push("` and `");
        m.push(b);
        m.push("` both hold event type `");
        m.push(name_a);
        m.push("`");
        panic!("{}", m.as_str());
    }
}

/// Asserts at compile time that a variant of an event set wraps a domain event (an event
/// struct, not another set); the error points at the variant's type.
pub const fn assert_domain_event<E: crate::event::DomainEvent>() {}

/// Fails compilation when a variant of an event set holds an event of another aggregate than
/// the one the set declares (`#[event(aggregate = "...")]` on the enum). The message names both.
pub const fn check_variant_aggregate(set: &str, variant: &str, set_aggregate: &str, actual: &str) {
    if !const_str_eq(set_aggregate, actual) {
        let mut m = ConstMessage::new();
        m.push("event set `");
        m.push(set);
        m.push("` is of aggregate `");
        m.push(set_aggregate);
        m.push("`, but its variant `");
        m.push(variant);
        m.push("` holds an event of aggregate `");
        m.push(actual);
        m.push("`; an event set holds the events of one aggregate");
        panic!("{}", m.as_str());
    }
}

/// A context for an event handled outside a running bus (no publisher; delivered once, from
/// no stream): lets tests call a registered handler's `call` directly.
pub fn detached_context(meta: Metadata) -> EventContext {
    let delivery = crate::handler::Delivery {
        stream: String::new(),
        consumer: String::new(),
        stream_sequence: 0,
        delivered: 1,
        pending: 0,
    };
    EventContext {
        meta: std::sync::Arc::new(meta),
        delivery: std::sync::Arc::new(delivery),
        publisher: None,
        states: crate::handler::States::default(),
    }
}

/// String equality in `const` contexts.
pub const fn const_str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// A message composed at compile time (const panics cannot format).
struct ConstMessage {
    buf: [u8; 512],
    len: usize,
}

impl ConstMessage {
    const fn new() -> Self {
        ConstMessage {
            buf: [0; 512],
            len: 0,
        }
    }

    /// Appends `s` whole, or nothing if it does not fit (so the text stays valid UTF-8).
    const fn push(&mut self, s: &str) {
        let b = s.as_bytes();
        if self.len + b.len() > self.buf.len() {
            return;
        }
        let mut i = 0;
        while i < b.len() {
            self.buf[self.len] = b[i];
            self.len += 1;
            i += 1;
        }
    }

    const fn as_str(&self) -> &str {
        match core::str::from_utf8(self.buf.split_at(self.len).0) {
            Ok(s) => s,
            Err(_) => "invalid event handler subject",
        }
    }
}
