//! The keys of the `#[event(...)]` and `#[event_handler(...)]` attributes.

use std::fmt::{self, Display};

use syn::{Ident, Path};

/// An attribute key, compared against parsed paths without allocating.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Symbol(&'static str);

/// The helper attribute of `#[derive(DomainEvent)]`.
pub(crate) const EVENT: Symbol = Symbol("event");

// `#[event(...)]` on the type.
pub(crate) const AGGREGATE: Symbol = Symbol("aggregate");
pub(crate) const NAME: Symbol = Symbol("name");
pub(crate) const VERSION: Symbol = Symbol("version");
pub(crate) const CLOUD_TYPE: Symbol = Symbol("cloud_type");
pub(crate) const UPCAST: Symbol = Symbol("upcast");
// `#[event(...)]` on a field.
pub(crate) const AGGREGATE_ID: Symbol = Symbol("aggregate_id");

// `#[event_handler(...)]`.
pub(crate) const SUBJECT: Symbol = Symbol("subject");
pub(crate) const DURABLE: Symbol = Symbol("durable");
pub(crate) const DELIVER: Symbol = Symbol("deliver");
pub(crate) const START_SEQUENCE: Symbol = Symbol("start_sequence");
pub(crate) const ACK: Symbol = Symbol("ack");
pub(crate) const REPLAY: Symbol = Symbol("replay");
pub(crate) const MAX_DELIVER: Symbol = Symbol("max_deliver");
pub(crate) const CONCURRENCY: Symbol = Symbol("concurrency");
pub(crate) const ORDERED: Symbol = Symbol("ordered");
pub(crate) const ACK_WAIT: Symbol = Symbol("ack_wait");
pub(crate) const BACKOFF: Symbol = Symbol("backoff");
pub(crate) const PUBLISHES: Symbol = Symbol("publishes");

/// Every key of `#[event_handler(...)]`, for the "unknown option" message.
pub(crate) const HANDLER_KEYS: &[Symbol] = &[
    SUBJECT,
    DURABLE,
    DELIVER,
    START_SEQUENCE,
    ACK,
    REPLAY,
    MAX_DELIVER,
    CONCURRENCY,
    ORDERED,
    ACK_WAIT,
    BACKOFF,
    PUBLISHES,
];

impl PartialEq<Symbol> for Ident {
    fn eq(&self, word: &Symbol) -> bool {
        self == word.0
    }
}

impl PartialEq<Symbol> for Path {
    fn eq(&self, word: &Symbol) -> bool {
        self.is_ident(word.0)
    }
}

impl PartialEq<Symbol> for &Path {
    fn eq(&self, word: &Symbol) -> bool {
        self.is_ident(word.0)
    }
}

impl Display for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}
