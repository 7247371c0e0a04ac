//! The registry: every `#[derive(DomainEvent)]` event and every `#[event_handler]` handler in
//! the program, collected at link time through `inventory`.

use crate::config::ConsumerOptions;
use crate::envelope::Metadata;
use crate::error::Error;
use crate::event::EventDescriptor;
use crate::handler::{EventContext, HandlerFuture, StateType};

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
    /// The events it declares it publishes (`publishes = [...]`), for the AsyncAPI document.
    pub publishes: &'static [&'static [EventDescriptor]],
    /// Lists the state types its parameters take (checked when a bus starts).
    pub states: fn(&mut Vec<StateType>),
    /// Decodes and calls it.
    pub call: CallFn,
}

/// One `#[derive(DomainEvent)]` event type.
#[derive(Debug)]
pub struct EventRegistration {
    /// The event type.
    pub descriptor: EventDescriptor,
    /// The JSON Schema (draft-07) of its payload, when the type derives `schemars::JsonSchema`
    /// (and the `schema` feature is on).
    pub schema: fn() -> Option<serde_json::Value>,
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

/// Every registered event type with its schema function, in the order of [`events`].
pub fn event_registrations() -> Vec<&'static EventRegistration> {
    let mut v: Vec<_> = inventory::iter::<EventRegistration>.into_iter().collect();
    v.sort_by(|a, b| {
        let (a, b) = (&a.descriptor, &b.descriptor);
        (a.aggregate, a.name, a.version).cmp(&(b.aggregate, b.name, b.version))
    });
    v.dedup_by(|a, b| a.descriptor == b.descriptor);
    v
}

/// The registration of an event type, if it is registered.
pub(crate) fn event_registration(d: &EventDescriptor) -> Option<&'static EventRegistration> {
    inventory::iter::<EventRegistration>
        .into_iter()
        .find(|r| r.descriptor == *d)
}
