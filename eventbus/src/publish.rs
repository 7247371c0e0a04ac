//! Publishing: an event counts as stored only once the server acknowledged it; a publish
//! whose acknowledgement did not come is sent again with the same `Nats-Msg-Id`, so the
//! server keeps one copy.

use async_nats::jetstream::context::{PublishErrorKind};
use async_nats::HeaderMap;
use bytes::Bytes;

use crate::error::{Error, ErrorKind};

/// The server's acknowledgement of a stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The stream that stored it.
    pub stream: String,
    /// Its sequence in that stream.
    pub sequence: u64,
    /// Whether the server had it already (same event id within the duplicate window): the
    /// earlier copy is kept and this one dropped.
    pub duplicate: bool,
    /// The event id (`ce-id`, `Nats-Msg-Id`).
    pub id: String,
}

/// Whether a failed attempt may be sent again with the same message id.
fn retryable(kind: &PublishErrorKind) -> bool {
    matches!(kind, PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe | PublishErrorKind::MaxAckPending)
}

/// Publishes one message and waits for its acknowledgement, retrying on a timeout or a lost
/// connection with the same headers (so the same `Nats-Msg-Id`).
pub(crate) async fn publish_acked(
    js: &async_nats::jetstream::Context,
    attempts: u32,
    subject: &str,
    id: &str,
    headers: HeaderMap,
    payload: Bytes,
) -> Result<Published, Error> {
    let attempts = attempts.max(1);
    let mut last = None;
    for attempt in 1..=attempts {
        let sent = js.publish_with_headers(subject.to_owned(), headers.clone(), payload.clone()).await;
        let result = match sent {
            Ok(fut) => fut.await,
            Err(e) => Err(e),
        };
        match result {
            Ok(ack) => {
                return Ok(Published { stream: ack.stream, sequence: ack.sequence, duplicate: ack.duplicate, id: id.to_owned() })
            }
            Err(e) if retryable(&e.kind()) && attempt < attempts => {
                tracing::warn!(target: "eventbus::publish", %subject, %id, attempt, error = %e, "publish not acknowledged; sending again with the same id");
                last = Some(e);
            }
            Err(e) => return Err(publish_error(subject, e)),
        }
    }
    Err(publish_error(subject, last.expect("at least one attempt")))
}

pub(crate) fn publish_error(subject: &str, e: async_nats::jetstream::context::PublishError) -> Error {
    let kind = e.kind();
    let (k, msg) = match kind {
        PublishErrorKind::StreamNotFound => (ErrorKind::Publish, format!("no stream stores subject `{subject}`")),
        PublishErrorKind::MaxPayloadExceeded => {
            (ErrorKind::Publish, format!("event on `{subject}` is larger than the server's max payload"))
        }
        PublishErrorKind::TimedOut => {
            (ErrorKind::Timeout, format!("publish on `{subject}` was not acknowledged in time"))
        }
        PublishErrorKind::WrongLastSequence => {
            (ErrorKind::Conflict, format!("publish on `{subject}` found another last sequence than expected"))
        }
        _ => (ErrorKind::Publish, format!("publish on `{subject}` failed")),
    };
    Error::new(k, msg).with_source(e)
}
