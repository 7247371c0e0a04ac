//! Dead letters, all of them: writing one when dispatch gives up on an event, listing them,
//! and publishing them again to their original subject once the cause is fixed. They live in
//! their own stream (default `DLQ`, subjects `dlq.>`), on `dlq.{consumer}`.

use async_nats::HeaderMap;
use bytes::Bytes;
use time::OffsetDateTime;

use crate::backend::Stored;
use crate::envelope::{headers, headers_without};
use crate::error::{Error, ErrorKind};
use crate::publish::{publish_error, Published, Publisher};

/// Header names of a dead letter.
pub mod dlq_headers {
    /// Why the event was dead-lettered: `permanent`, `max_deliver`, `undecodable`,
    /// `unknown_event_type`, `undeliverable` (the server gave up on it with no delivery
    /// settled, e.g. headers the client cannot parse).
    pub const REASON: &str = "eventbus-dlq-reason";
    /// The handler's last error.
    pub const ERROR: &str = "eventbus-dlq-error";
    /// The subject the event was published on.
    pub const ORIGINAL_SUBJECT: &str = "eventbus-original-subject";
    /// Its sequence in its stream.
    pub const ORIGINAL_SEQUENCE: &str = "eventbus-original-sequence";
    /// Its stream.
    pub const ORIGINAL_STREAM: &str = "eventbus-original-stream";
    /// The consumer that gave up on it.
    pub const CONSUMER: &str = "eventbus-dlq-consumer";
    /// How many times it was delivered.
    pub const DELIVERIES: &str = "eventbus-deliveries";
    /// Set (to the body's size in bytes) when the dead letter keeps no body: with the
    /// dead-letter headers the event was over the server's max payload. The body is the
    /// original's, in its stream at its sequence, as long as the stream keeps it.
    pub const BODY_OMITTED: &str = "eventbus-dlq-body-omitted";
}

/// Why an event was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeadReason {
    Permanent,
    MaxDeliver,
    Undecodable,
    UnknownEventType,
    /// The server gave up on it with no delivery settled (the client could not receive it).
    Undeliverable,
}

impl DeadReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DeadReason::Permanent => "permanent",
            DeadReason::MaxDeliver => "max_deliver",
            DeadReason::Undecodable => "undecodable",
            DeadReason::UnknownEventType => "unknown_event_type",
            DeadReason::Undeliverable => "undeliverable",
        }
    }
}

/// An event dispatch gives up on, and where it was delivered from.
pub(crate) struct Given<'a> {
    /// The subject it was published on.
    pub(crate) subject: &'a str,
    /// Its original headers.
    pub(crate) headers: &'a HeaderMap,
    /// Its body.
    pub(crate) payload: &'a Bytes,
    /// Its stream and sequence there.
    pub(crate) stream: &'a str,
    pub(crate) sequence: u64,
    /// The consumer that gives up on it, and after how many deliveries.
    pub(crate) consumer: &'a str,
    pub(crate) deliveries: u64,
    pub(crate) reason: DeadReason,
    /// The last error.
    pub(crate) error: &'a str,
}

/// A header value made of `s`: no line break, at most 2 KiB.
fn header_text(s: &str) -> String {
    let mut t: String = s
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    if t.len() > 2048 {
        let mut cut = 2048;
        while !t.is_char_boundary(cut) {
            cut -= 1;
        }
        t.truncate(cut);
    }
    t
}

/// Stores an event in the dead-letter stream, on `dlq.{consumer}`, with its original body and
/// headers (less the server's own) plus the `eventbus-*` ones. Its `Nats-Msg-Id` is made of
/// the consumer, the stream and the sequence, so a dead letter stored twice is kept once.
///
/// An event that the dead-letter headers push over the server's max payload is stored as a
/// reference: the headers without the body, marked [`dlq_headers::BODY_OMITTED`]; the
/// original stays in its stream (stream and sequence in the headers), where republishing
/// takes the body from. So no event is lost for being too large to dead-letter.
pub(crate) async fn store(publisher: &Publisher, dead: &Given<'_>) -> Result<(), Error> {
    // The original headers, less the server's own (`Nats-Msg-Id` is set anew below).
    let mut h = headers_without(dead.headers, |n| n.starts_with("Nats-"));
    h.insert(dlq_headers::REASON, dead.reason.as_str());
    h.insert(dlq_headers::ERROR, header_text(dead.error));
    h.insert(dlq_headers::ORIGINAL_SUBJECT, dead.subject);
    h.insert(dlq_headers::ORIGINAL_SEQUENCE, dead.sequence.to_string());
    h.insert(dlq_headers::ORIGINAL_STREAM, dead.stream);
    h.insert(dlq_headers::CONSUMER, dead.consumer);
    h.insert(dlq_headers::DELIVERIES, dead.deliveries.to_string());
    let id = format!("dlq-{}-{}-{}", dead.consumer, dead.stream, dead.sequence);
    h.insert(headers::MSG_ID, id.as_str());
    let subject = format!("dlq.{}", dead.consumer);
    let whole = publisher
        .send_acked(&subject, h.clone(), dead.payload.clone())
        .await
        .map_err(|e| publish_error(&subject, e));
    match whole {
        Err(e) if e.kind() == ErrorKind::TooLarge => {
            tracing::warn!(target: "eventbus::dlq", %subject, bytes = dead.payload.len(), "dead letter over the max payload: stored without its body, as a reference to the original");
            h.insert(dlq_headers::BODY_OMITTED, dead.payload.len().to_string());
            publisher
                .send_acked(&subject, h, Bytes::new())
                .await
                .map(|_| ())
                .map_err(|e| publish_error(&subject, e))
        }
        other => other.map(|_| ()),
    }
}

/// One dead-lettered event.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeadLetter {
    /// Its sequence in the dead-letter stream (what `Bus::republish_dead_letter` takes).
    pub sequence: u64,
    /// The consumer that gave up on it.
    pub consumer: String,
    /// Why: `permanent`, `max_deliver`, `undecodable`, `unknown_event_type` or
    /// `undeliverable`.
    pub reason: String,
    /// The handler's last error.
    pub error: String,
    /// The subject it was published on.
    pub original_subject: String,
    /// The stream it was stored in.
    pub original_stream: String,
    /// Its sequence in that stream.
    pub original_sequence: u64,
    /// How many times it was delivered.
    pub deliveries: u64,
    /// When it was dead-lettered.
    pub time: OffsetDateTime,
    /// Its headers: the original ones plus the `eventbus-*` ones.
    pub headers: HeaderMap,
    /// Its original body (empty when [`DeadLetter::body_omitted`]).
    pub payload: Bytes,
    /// The size of the body not kept, when the dead letter was stored without it (it was over
    /// the server's max payload): the body is the original's, in its stream.
    pub body_omitted: Option<u64>,
}

fn header(h: &HeaderMap, name: &str) -> String {
    h.get(name)
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default()
}

/// The dead-letter stream, if there is one (it is created with the first consumer that
/// acknowledges explicitly).
async fn stream_name(publisher: &Publisher) -> Result<Option<String>, Error> {
    publisher.backend().stream_by_subject("dlq.x").await
}

/// Every dead letter, oldest first; of one consumer only if `consumer` is given. None (an
/// empty list) when there is no dead-letter stream.
pub(crate) async fn list(
    publisher: &Publisher,
    consumer: Option<&str>,
) -> Result<Vec<DeadLetter>, Error> {
    let Some(name) = stream_name(publisher).await? else {
        return Ok(Vec::new());
    };
    let filter = match consumer {
        Some(c) => format!("dlq.{c}"),
        None => "dlq.>".to_owned(),
    };
    let mut scan = publisher.backend().scan(&name, filter, 1).await?;
    let mut out = Vec::new();
    while let Some(m) = scan.next().await {
        out.push(dead_letter(m?));
    }
    Ok(out)
}

fn dead_letter(m: Stored) -> DeadLetter {
    let h = &m.headers;
    DeadLetter {
        sequence: m.sequence,
        consumer: header(h, dlq_headers::CONSUMER),
        reason: header(h, dlq_headers::REASON),
        error: header(h, dlq_headers::ERROR),
        original_subject: header(h, dlq_headers::ORIGINAL_SUBJECT),
        original_stream: header(h, dlq_headers::ORIGINAL_STREAM),
        original_sequence: header(h, dlq_headers::ORIGINAL_SEQUENCE)
            .parse()
            .unwrap_or(0),
        deliveries: header(h, dlq_headers::DELIVERIES).parse().unwrap_or(0),
        time: m.time,
        body_omitted: h
            .get(dlq_headers::BODY_OMITTED)
            .and_then(|v| v.as_str().parse().ok()),
        headers: m.headers,
        payload: m.payload,
    }
}

/// Publishes a dead letter again to its original subject (see `Bus::republish_dead_letter`),
/// then removes it from the dead-letter stream.
pub(crate) async fn republish(publisher: &Publisher, sequence: u64) -> Result<Published, Error> {
    let name = stream_name(publisher).await?.ok_or_else(|| {
        Error::new(
            ErrorKind::NotFound,
            format!(
                "no dead letter with sequence {sequence}: there is no dead-letter stream (`dlq.>`)"
            ),
        )
    })?;
    let m = publisher
        .backend()
        .get(&name, sequence)
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::NotFound,
                format!("no dead letter with sequence {sequence} in `{name}`"),
            )
            .with_source(e)
        })?;
    let subject = header(&m.headers, dlq_headers::ORIGINAL_SUBJECT);
    if subject.is_empty() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "message {sequence} of `{name}` is not a dead letter: it has no `{}` header",
                dlq_headers::ORIGINAL_SUBJECT
            ),
        ));
    }
    let mut h = headers_without(&m.headers, |n| {
        n.starts_with("eventbus-") || n.starts_with("Nats-")
    });
    let ce_id = header(&m.headers, headers::ID);
    let id = format!(
        "{}redrive-{name}-{sequence}",
        if ce_id.is_empty() {
            String::new()
        } else {
            format!("{ce_id}-")
        }
    );
    h.insert(headers::MSG_ID, id.as_str());
    let origin = format!(
        "{}:{}",
        header(&m.headers, dlq_headers::ORIGINAL_STREAM),
        header(&m.headers, dlq_headers::ORIGINAL_SEQUENCE)
    );
    h.insert(headers::REPUBLISHED_FROM, origin.as_str());
    let payload = if m.headers.get(dlq_headers::BODY_OMITTED).is_some() {
        original_body(publisher, &m.headers, sequence).await?
    } else {
        m.payload
    };
    let published = publisher.publish_raw(&subject, h, payload).await?;
    publisher.backend().delete_message(&name, sequence).await.map_err(|e| {
            Error::new(
                ErrorKind::Refused,
                format!("dead letter {sequence} was published again to `{subject}`, but cannot be removed from `{name}`"),
            )
            .with_source(e)
        })?;
    Ok(published)
}

/// The body of the original of dead letter `sequence`, kept as a reference: from its stream.
async fn original_body(
    publisher: &Publisher,
    dead: &HeaderMap,
    sequence: u64,
) -> Result<Bytes, Error> {
    let stream = header(dead, dlq_headers::ORIGINAL_STREAM);
    let original = header(dead, dlq_headers::ORIGINAL_SEQUENCE);
    let gone = || {
        Error::new(
            ErrorKind::NotFound,
            format!("dead letter {sequence} keeps no body (it was over the max payload), and its original, message {original} of `{stream}`, is gone"),
        )
    };
    let seq: u64 = original.parse().map_err(|_| gone())?;
    publisher
        .backend()
        .get(&stream, seq)
        .await
        .map(|m| m.payload)
        .map_err(|e| gone().with_source(e))
}
