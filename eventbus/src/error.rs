//! The one error type users see, with a [`ErrorKind`] to branch on and the cause kept as
//! [`std::error::Error::source`].

use std::error::Error as StdError;
use std::fmt;

/// A boxed cause.
pub(crate) type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What went wrong, to branch on. New kinds may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// An aggregate id that is empty or holds `.`, `*`, `>`, white space or a control character.
    InvalidAggregateId,
    /// A malformed subject or subject filter.
    InvalidSubject,
    /// An event could not be serialized.
    Encode,
    /// A message could not be decoded into an event.
    Decode,
    /// A message carries an event type that the receiving event set does not know.
    UnknownEventType,
    /// A configuration value is missing, malformed or contradicts another.
    Config,
    /// The registered handlers and events contradict each other (all problems are listed).
    Registry,
    /// Connecting to the server failed, or the connection was lost for good.
    Connect,
    /// A stream or consumer could not be created or updated as configured.
    Provision,
    /// A publish was not stored by the server.
    Publish,
    /// An append found the aggregate at another version than the expected one.
    Conflict,
    /// The server is too old for a feature that was asked for.
    ServerVersion,
    /// A request to the server timed out.
    Timeout,
    /// A JetStream API call failed.
    JetStream,
    /// The bus was shut down, or shutting down failed.
    Shutdown,
    /// A read of an aggregate's events failed.
    Read,
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
            ErrorKind::Provision => "provisioning error",
            ErrorKind::Publish => "publish error",
            ErrorKind::Conflict => "version conflict",
            ErrorKind::ServerVersion => "server version too old",
            ErrorKind::Timeout => "timed out",
            ErrorKind::JetStream => "jetstream error",
            ErrorKind::Shutdown => "shutdown",
            ErrorKind::Read => "read error",
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
    conflict: Option<Conflict>,
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
        }
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
            conflict: Some(conflict),
        }
    }

    /// For a [`ErrorKind::Conflict`]: the expected and the actual version.
    pub fn conflict(&self) -> Option<&Conflict> {
        self.conflict.as_ref()
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
