//! The one error type users see, with a [`ErrorKind`] to branch on and the cause kept as
//! [`std::error::Error::source`].

use std::error::Error as StdError;
use std::fmt;

/// A boxed cause.
pub(crate) type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What failed, to branch on. New kinds may be added.
///
/// A kind names the thing at fault, not the operation that met it: a missing stream is
/// [`ErrorKind::NotFound`] whether a publish, a read or a dead-letter republish found it
/// missing. The message says which operation and which thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// An aggregate id that is empty or holds `.`, `*`, `>`, white space or a control character.
    InvalidAggregateId,
    /// A malformed subject or subject filter.
    InvalidSubject,
    /// An event could not be serialized, or a header value cannot be sent.
    Encode,
    /// A message could not be decoded into an event.
    Decode,
    /// A message carries an event type that the receiving event set does not know.
    UnknownEventType,
    /// A configuration value is missing, malformed or contradicts another.
    Config,
    /// The registered handlers and events contradict each other (all problems are listed).
    Registry,
    /// No connection: connecting failed, the connection was lost for good, or there is no bus
    /// to send with.
    Connect,
    /// What the server holds cannot be made to match the configuration: a stream or consumer
    /// setting that cannot change, subjects owned by another stream, or a stream or consumer
    /// that the server refused to create or update.
    Incompatible,
    /// A stream, consumer, message or dead letter that does not exist; a subject that no
    /// stream stores.
    NotFound,
    /// An event larger than the server's max payload or its stream's max message size.
    TooLarge,
    /// The server refused a request for another reason (its answer is the source).
    Refused,
    /// An append found the aggregate at another version than the expected one.
    Conflict,
    /// The server is too old for a feature that was asked for.
    ServerVersion,
    /// The server did not answer in time: what was asked may or may not have been done (a
    /// publish may be stored: send it again with the same id).
    Timeout,
    /// A publish was not sent (`publish_all` stopped sending): the event is not stored.
    NotSent,
    /// Shutting down failed.
    Shutdown,
    /// An event's payload schema breaks readers of its committed snapshot, or a snapshot
    /// cannot be read or written (`eventbus::testing::check_schemas`).
    Contract,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ErrorKind::InvalidAggregateId => "invalid aggregate id",
            ErrorKind::InvalidSubject => "invalid subject",
            ErrorKind::Encode => "encode error",
            ErrorKind::Decode => "decode error",
            ErrorKind::UnknownEventType => "unknown event type",
            ErrorKind::Config => "configuration error",
            ErrorKind::Registry => "registry error",
            ErrorKind::Connect => "connection error",
            ErrorKind::Incompatible => "incompatible with the server",
            ErrorKind::NotFound => "not found",
            ErrorKind::TooLarge => "too large",
            ErrorKind::Refused => "refused by the server",
            ErrorKind::Conflict => "version conflict",
            ErrorKind::ServerVersion => "server version too old",
            ErrorKind::Timeout => "timed out",
            ErrorKind::NotSent => "not sent",
            ErrorKind::Shutdown => "shutdown",
            ErrorKind::Contract => "event contract",
        };
        f.write_str(s)
    }
}

/// The error of every fallible `eventbus` operation.
///
/// Its message is lower-case and names the thing at fault; [`Error::kind`] tells what kind of
/// failure it is; the underlying cause, if any, is [`std::error::Error::source`].
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<BoxError>,
    /// Boxed: rare, and an error is returned on every path.
    conflict: Option<Box<Conflict>>,
    event_id: Option<String>,
}

/// The details of a version conflict ([`ErrorKind::Conflict`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The aggregate type.
    pub aggregate: String,
    /// The aggregate's id.
    pub aggregate_id: String,
    /// The version the writer expected.
    pub expected: u64,
    /// The aggregate's version when the append was refused.
    pub actual: u64,
}

impl Error {
    /// A new error of `kind` with a lower-case message without a trailing period.
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
            conflict: None,
            event_id: None,
        }
    }

    /// The same error, about the event with id `id`.
    pub(crate) fn with_event_id(mut self, id: &str) -> Self {
        self.event_id = Some(id.to_owned());
        self
    }

    /// The id of the event a publish failed for (`ce-id`, `Nats-Msg-Id`), when it has one:
    /// publish it again with this id ([`crate::PublishOptions::id`]) and the server keeps one
    /// copy, whether or not the failed attempt was stored.
    pub fn event_id(&self) -> Option<&str> {
        self.event_id.as_deref()
    }

    /// The same error with a cause.
    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The same error with `note` added to its message (`message; note`), kind, cause and
    /// conflict details kept.
    pub(crate) fn with_note(mut self, note: impl fmt::Display) -> Self {
        self.message = format!("{}; {note}", self.message);
        self
    }

    pub(crate) fn conflict_error(conflict: Conflict, source: Option<BoxError>) -> Self {
        let message = format!(
            "version conflict on `{}` `{}`: expected version {}, but it is at version {}",
            conflict.aggregate, conflict.aggregate_id, conflict.expected, conflict.actual
        );
        Error {
            kind: ErrorKind::Conflict,
            message,
            source,
            conflict: Some(Box::new(conflict)),
            event_id: None,
        }
    }

    /// For a [`ErrorKind::Conflict`]: the expected and the actual version.
    pub fn conflict(&self) -> Option<&Conflict> {
        self.conflict.as_deref()
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the cause.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(c) = &self.conflict {
            d.field("conflict", c);
        }
        if let Some(id) = &self.event_id {
            d.field("event_id", id);
        }
        if let Some(s) = &self.source {
            d.field("source", s);
        }
        d.finish()
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// Formats an error with its chain of causes: `a: b: c`.
pub(crate) fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
