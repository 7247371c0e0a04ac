//! Domain events ([`DomainEvent`]), event sets ([`EventSet`]) and aggregate ids ([`AggregateId`]).

use std::borrow::Cow;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, ErrorKind};
use crate::subject::Subject;

/// One kind of event of one aggregate, as it is known on the wire.
///
/// The wire type (`ce-type`) is `{aggregate}.{name}.v{version}`: stable, and independent of the
/// Rust type's name. An event may also declare the type other producers use
/// ([`EventDescriptor::foreign_type`]), which is read as this event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventDescriptor {
    /// The aggregate type, e.g. `order`.
    pub aggregate: &'static str,
    /// The event type, e.g. `created`.
    pub name: &'static str,
    /// The schema version (1 unless given).
    pub version: u32,
    /// The subject pattern of the event, e.g. `order.*.created`.
    pub subject_pattern: &'static str,
    /// The CloudEvents type eventbus writes, `{aggregate}.{name}.v{version}`, e.g.
    /// `order.created.v1`.
    pub cloud_type: &'static str,
    /// The CloudEvents type other producers give this event, declared with
    /// `#[event(cloud_type = "com.example.orders.created")]`: read as this event besides
    /// [`EventDescriptor::cloud_type`], never written.
    pub foreign_type: Option<&'static str>,
    /// The Rust type's name, for messages only.
    pub rust_type: &'static str,
}

impl EventDescriptor {
    /// The CloudEvents type: `{aggregate}.{name}.v{version}`.
    pub fn cloud_event_type(&self) -> &'static str {
        self.cloud_type
    }
}

/// A domain event: one fact about one aggregate, published on
/// `{AGGREGATE_TYPE}.{aggregate_id}.{EVENT_TYPE}`.
///
/// Derive it with `#[derive(DomainEvent)]` and `#[event(aggregate = "...", name = "...")]` on a
/// struct with one `#[event(aggregate_id)]` field; the derive also implements [`EventSet`] and
/// registers the event.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a domain event",
    label = "not a domain event",
    note = "add `#[derive(DomainEvent)]` and `#[event(aggregate = \"...\", name = \"...\")]` to `{Self}`"
)]
pub trait DomainEvent: EventSet + Serialize + DeserializeOwned {
    /// The aggregate type: the subject's first token, e.g. `order`.
    const AGGREGATE_TYPE: &'static str;
    /// The event type: the subject's last token, e.g. `created`.
    const EVENT_TYPE: &'static str;
    /// The subject pattern of every event of this type, e.g. `order.*.created`.
    const SUBJECT_PATTERN: &'static str;
    /// The schema version (default 1).
    const VERSION: u32 = 1;

    /// The id of the aggregate this event belongs to.
    fn aggregate_id(&self) -> Cow<'_, str>;

    /// The subject this event is published on. Fails if the aggregate id is not a valid subject
    /// token (empty, or holding `.`, `*`, `>` or white space).
    fn subject(&self) -> Result<Subject, Error> {
        Subject::for_event(Self::AGGREGATE_TYPE, &self.aggregate_id(), Self::EVENT_TYPE)
    }

    /// The subject of this event type for an aggregate id, e.g.
    /// `OrderCreated::subject_for("42")` is `order.42.created`.
    fn subject_for(aggregate_id: impl AggregateId) -> Result<Subject, Error> {
        Subject::for_event(
            Self::AGGREGATE_TYPE,
            &aggregate_id.as_aggregate_id(),
            Self::EVENT_TYPE,
        )
    }
}

/// A set of events of one aggregate that can be encoded and decoded by event type: what a
/// handler receives, what a read returns, what an append writes.
///
/// Every [`DomainEvent`] is a set of one. `#[derive(DomainEvent)]` on an enum whose variants
/// each wrap one event struct of the same aggregate makes a larger set.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event or an event set",
    label = "not an event",
    note = "derive `DomainEvent` on `{Self}`: on a struct for one event, on an enum of event structs for an event set"
)]
pub trait EventSet: Sized + Send + Sync + 'static {
    /// The aggregate type of every event of the set.
    const AGGREGATE: &'static str;
    /// A subject filter that matches every event of the set, e.g. `order.*.created` or
    /// `order.*.*`.
    const FILTER: &'static str;
    /// The event types of the set.
    const EVENTS: &'static [EventDescriptor];

    /// The descriptor of this value's event type.
    fn descriptor(&self) -> &'static EventDescriptor;

    /// The id of the aggregate this event belongs to.
    fn id(&self) -> Cow<'_, str>;

    /// The event's JSON body.
    fn to_json(&self) -> Result<Vec<u8>, serde_json::Error>;

    /// Decodes an event of type `name` (the subject's last token) from its JSON body.
    fn from_json(name: &str, body: &[u8]) -> Result<Self, DecodeError>;

    /// Turns the JSON body of version `version` of event type `name`, older than the version
    /// the set reads, into the JSON of that version: the upcaster declared with
    /// `#[event(version = 2, upcast = order_created_from)]`, or [`UpcastError::NoUpcaster`]
    /// when the event declares none.
    fn upcast(
        name: &str,
        version: u32,
        data: serde_json::Value,
    ) -> Result<serde_json::Value, UpcastError> {
        let _ = (name, version, data);
        Err(UpcastError::NoUpcaster)
    }

    /// The subject of this event: `{aggregate}.{id}.{name}`, with the id checked.
    fn event_subject(&self) -> Result<Subject, Error> {
        Subject::for_event(Self::AGGREGATE, &self.id(), self.descriptor().name)
    }
}

/// Why the JSON of an older version of an event could not be turned into the current one.
///
/// An upcaster (`#[event(version = 2, upcast = order_created_from)]`) is a
/// `fn(u32, serde_json::Value) -> Result<serde_json::Value, UpcastError>`: it gets the version
/// the event was written as and its JSON body, and returns the body as the current version
/// reads it. An event that cannot be upcast is dead-lettered with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpcastError {
    /// The event declares no upcaster.
    NoUpcaster,
    /// The upcaster does not know the version it was given.
    UnknownVersion,
    /// The old body does not have the shape the upcaster expects (the text says why).
    Invalid(String),
}

impl UpcastError {
    /// An [`UpcastError::Invalid`] with the reason.
    pub fn invalid(why: impl Into<String>) -> UpcastError {
        UpcastError::Invalid(why.into())
    }
}

impl fmt::Display for UpcastError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpcastError::NoUpcaster => f.write_str("the event declares no upcaster"),
            UpcastError::UnknownVersion => f.write_str("its upcaster does not know that version"),
            UpcastError::Invalid(why) => write!(f, "its upcaster refused the body: {why}"),
        }
    }
}

impl std::error::Error for UpcastError {}

/// Why a body could not be decoded into an event.
#[derive(Debug)]
pub enum DecodeError {
    /// The set has no event of that type.
    UnknownEventType {
        /// The type that was asked for.
        name: String,
        /// The set's aggregate type.
        aggregate: &'static str,
    },
    /// The JSON did not match the event's shape.
    Json {
        /// The event type that was decoded.
        name: &'static str,
        /// Serde's error.
        source: serde_json::Error,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::UnknownEventType { name, aggregate } => {
                write!(f, "unknown event type `{name}` for aggregate `{aggregate}`")
            }
            DecodeError::Json { name, source } => {
                write!(f, "undecodable `{name}` event body: {source}")
            }
        }
    }
}

impl std::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DecodeError::Json { source, .. } => Some(source),
            DecodeError::UnknownEventType { .. } => None,
        }
    }
}

impl From<DecodeError> for Error {
    fn from(e: DecodeError) -> Self {
        let kind = match e {
            DecodeError::UnknownEventType { .. } => ErrorKind::UnknownEventType,
            DecodeError::Json { .. } => ErrorKind::Decode,
        };
        Error::new(kind, e.to_string()).with_source(e)
    }
}

/// A value that can be an aggregate id: its text form goes into the event's subject.
///
/// Implemented for strings, integers and [`uuid::Uuid`]. For an id newtype, implement it in one
/// line, or derive `Display` and return `Cow::Owned(self.to_string())`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used as an aggregate id",
    label = "not an aggregate id",
    note = "use a `String`, an integer or a `Uuid` field, or implement `eventbus::AggregateId` for `{Self}`"
)]
pub trait AggregateId {
    /// The id's text, as it appears in the subject.
    fn as_aggregate_id(&self) -> Cow<'_, str>;
}

impl AggregateId for str {
    fn as_aggregate_id(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}

impl AggregateId for String {
    fn as_aggregate_id(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}

impl AggregateId for Cow<'_, str> {
    fn as_aggregate_id(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}

impl AggregateId for Box<str> {
    fn as_aggregate_id(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}

impl AggregateId for std::sync::Arc<str> {
    fn as_aggregate_id(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}

impl AggregateId for uuid::Uuid {
    fn as_aggregate_id(&self) -> Cow<'_, str> {
        Cow::Owned(self.to_string())
    }
}

impl<T: AggregateId + ?Sized> AggregateId for &T {
    fn as_aggregate_id(&self) -> Cow<'_, str> {
        (**self).as_aggregate_id()
    }
}

macro_rules! int_ids {
    ($($t:ty)*) => {$(
        impl AggregateId for $t {
            fn as_aggregate_id(&self) -> Cow<'_, str> {
                Cow::Owned(self.to_string())
            }
        }
    )*};
}
int_ids!(u8 u16 u32 u64 u128 usize i8 i16 i32 i64 i128 isize);
