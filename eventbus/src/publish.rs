//! Publishing: an event counts as stored only once the server acknowledged it; a publish
//! whose acknowledgement did not come is sent again with the same `Nats-Msg-Id`, so the
//! server keeps one copy.

use async_nats::jetstream::context::PublishErrorKind;
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
    matches!(
        kind,
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe | PublishErrorKind::MaxAckPending
    )
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
        let sent = js
            .publish_with_headers(subject.to_owned(), headers.clone(), payload.clone())
            .await;
        let result = match sent {
            Ok(fut) => fut.await,
            Err(e) => Err(e),
        };
        match result {
            Ok(ack) => {
                return Ok(Published {
                    stream: ack.stream,
                    sequence: ack.sequence,
                    duplicate: ack.duplicate,
                    id: id.to_owned(),
                })
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

pub(crate) fn publish_error(
    subject: &str,
    e: async_nats::jetstream::context::PublishError,
) -> Error {
    let kind = e.kind();
    let (k, msg) = match kind {
        PublishErrorKind::StreamNotFound => (
            ErrorKind::Publish,
            format!("no stream stores subject `{subject}`"),
        ),
        PublishErrorKind::MaxPayloadExceeded => (
            ErrorKind::Publish,
            format!("event on `{subject}` is larger than the server's max payload"),
        ),
        PublishErrorKind::TimedOut => (
            ErrorKind::Timeout,
            format!("publish on `{subject}` was not acknowledged in time"),
        ),
        PublishErrorKind::WrongLastSequence => (
            ErrorKind::Conflict,
            format!("publish on `{subject}` found another last sequence than expected"),
        ),
        _ => (ErrorKind::Publish, format!("publish on `{subject}` failed")),
    };
    Error::new(k, msg).with_source(e)
}

/// Whether a publish error is an optimistic-concurrency refusal (JetStream codes 10071 and
/// 10164: the subject's last sequence is not the expected one).
pub(crate) fn is_wrong_last_sequence(e: &async_nats::jetstream::context::PublishError) -> bool {
    if e.kind() == PublishErrorKind::WrongLastSequence {
        return true;
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cur {
        if let Some(je) = c.downcast_ref::<async_nats::jetstream::Error>() {
            let code = je.error_code();
            return code == async_nats::jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE
                || code == async_nats::jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT;
        }
        cur = c.source();
    }
    false
}

/// How many publishes `publish_all` keeps waiting for their acknowledgement at once.
pub(crate) const PIPELINE_WINDOW: usize = 1024;

impl crate::bus::Bus {
    /// Publishes many events, pipelined (up to 1024 awaiting their acknowledgement at once),
    /// and reports each outcome, in order. An event that cannot be encoded, or whose publish
    /// failed after its retries, has an error in its place; the others are stored.
    pub async fn publish_all<'a, E, I>(&self, events: I) -> Vec<Result<Published, Error>>
    where
        E: crate::event::EventSet + 'a,
        I: IntoIterator<Item = &'a E>,
    {
        use std::collections::VecDeque;
        type Ack = async_nats::jetstream::context::PublishAckFuture;
        struct InFlight {
            index: usize,
            subject: String,
            id: String,
            headers: HeaderMap,
            payload: Bytes,
            ack: Result<Ack, async_nats::jetstream::context::PublishError>,
        }
        let inner = &self.inner;
        let mut out: Vec<Option<Result<Published, Error>>> = Vec::new();
        let mut window: VecDeque<InFlight> = VecDeque::with_capacity(PIPELINE_WINDOW);

        async fn finish(
            inner: &crate::bus::Inner,
            f: InFlight,
        ) -> (usize, Result<Published, Error>) {
            let result = match f.ack {
                Ok(fut) => fut.await,
                Err(e) => Err(e),
            };
            let r = match result {
                Ok(ack) => Ok(Published {
                    stream: ack.stream,
                    sequence: ack.sequence,
                    duplicate: ack.duplicate,
                    id: f.id,
                }),
                Err(e) if retryable(&e.kind()) && inner.config.publish_attempts > 1 => {
                    publish_acked(
                        &inner.js,
                        inner.config.publish_attempts - 1,
                        &f.subject,
                        &f.id,
                        f.headers,
                        f.payload,
                    )
                    .await
                }
                Err(e) => Err(publish_error(&f.subject, e)),
            };
            (f.index, r)
        }

        for (index, event) in events.into_iter().enumerate() {
            out.push(None);
            let encoded = crate::envelope::encode(
                event,
                &crate::envelope::EncodeOptions {
                    source: &inner.service,
                    ..Default::default()
                },
            );
            let encoded = match encoded {
                Ok(e) => e,
                Err(e) => {
                    out[index] = Some(Err(e));
                    continue;
                }
            };
            if window.len() == PIPELINE_WINDOW {
                let f = window.pop_front().expect("full window");
                let (i, r) = finish(inner, f).await;
                out[i] = Some(r);
            }
            let subject = encoded.subject.into_string();
            let ack = inner
                .js
                .publish_with_headers(
                    subject.clone(),
                    encoded.headers.clone(),
                    encoded.payload.clone(),
                )
                .await;
            window.push_back(InFlight {
                index,
                subject,
                id: encoded.id,
                headers: encoded.headers,
                payload: encoded.payload,
                ack,
            });
        }
        while let Some(f) = window.pop_front() {
            let (i, r) = finish(inner, f).await;
            out[i] = Some(r);
        }
        out.into_iter()
            .map(|r| r.expect("every event has an outcome"))
            .collect()
    }
}
