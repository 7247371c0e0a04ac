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

/// Makes the headers of `event` again, as `options` (which name the event's first id) and
/// `time` encode them: what an attempt after the first sends. Encoding an event twice with the
/// same id and time gives the same headers.
pub(crate) fn headers_again<'a, E: crate::event::EventSet>(
    event: &'a E,
    options: &'a crate::envelope::EncodeOptions<'a>,
    time: time::OffsetDateTime,
) -> impl FnMut() -> Option<HeaderMap> + 'a {
    move || {
        crate::envelope::encode_at(event, options, Some(time))
            .ok()
            .map(|m| m.headers)
    }
}

/// Whether a failed attempt may be sent again with the same message id.
pub(crate) fn retryable(kind: &PublishErrorKind) -> bool {
    matches!(
        kind,
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe | PublishErrorKind::MaxAckPending
    )
}

/// Publishes one message and waits for its acknowledgement, retrying on a timeout or a lost
/// connection with the same headers (so the same `Nats-Msg-Id`), which `again` makes anew for
/// each attempt after the first.
pub(crate) async fn publish_acked(
    backend: &crate::backend::Backend,
    attempts: u32,
    subject: &str,
    id: &str,
    headers: HeaderMap,
    payload: Bytes,
    again: impl FnMut() -> Option<HeaderMap>,
) -> Result<Published, Error> {
    backend
        .publish_acked_with(attempts, subject, headers, payload, again)
        .await
        .map(|ack| Published {
            stream: ack.stream,
            sequence: ack.sequence,
            duplicate: ack.duplicate,
            id: id.to_owned(),
        })
        .map_err(|e| publish_error(subject, e))
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
        _ if has_code(
            &e,
            async_nats::jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM,
        ) =>
        {
            (
                ErrorKind::Publish,
                format!("event on `{subject}` is larger than its stream's max message size"),
            )
        }
        _ => (ErrorKind::Publish, format!("publish on `{subject}` failed")),
    };
    Error::new(k, msg).with_source(e)
}

/// The JetStream error code the server answered a publish with, if any.
fn server_code(
    e: &async_nats::jetstream::context::PublishError,
) -> Option<async_nats::jetstream::ErrorCode> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cur {
        if let Some(je) = c.downcast_ref::<async_nats::jetstream::Error>() {
            return Some(je.error_code());
        }
        cur = c.source();
    }
    None
}

fn has_code(
    e: &async_nats::jetstream::context::PublishError,
    code: async_nats::jetstream::ErrorCode,
) -> bool {
    server_code(e) == Some(code)
}

/// Whether a publish error is an optimistic-concurrency refusal (JetStream codes 10071 and
/// 10164: the subject's last sequence is not the expected one).
pub(crate) fn is_wrong_last_sequence(e: &async_nats::jetstream::context::PublishError) -> bool {
    use async_nats::jetstream::ErrorCode;
    e.kind() == PublishErrorKind::WrongLastSequence
        || matches!(
            server_code(e),
            Some(
                ErrorCode::STREAM_WRONG_LAST_SEQUENCE
                    | ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT
            )
        )
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
        type Ack = crate::backend::AckFuture;
        /// A publish waiting for its acknowledgement. Its message went to the client as it
        /// was: should it be sent again, the event is encoded again with the same id and time.
        struct InFlight<'a, E> {
            index: usize,
            event: &'a E,
            id: String,
            time: time::OffsetDateTime,
            ack: Result<Ack, async_nats::jetstream::context::PublishError>,
        }
        let inner = &self.inner;
        let options = crate::envelope::EncodeOptions {
            source: &inner.service,
            ..Default::default()
        };
        let events = events.into_iter();
        let mut out: Vec<Option<Result<Published, Error>>> =
            Vec::with_capacity(events.size_hint().0);
        let mut window: VecDeque<InFlight<'a, E>> = VecDeque::with_capacity(PIPELINE_WINDOW);

        async fn finish<E: crate::event::EventSet>(
            inner: &crate::bus::Inner,
            f: InFlight<'_, E>,
        ) -> (usize, Result<Published, Error>) {
            let result = match f.ack {
                Ok(fut) => fut.wait().await,
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
                    let options = crate::envelope::EncodeOptions {
                        source: &inner.service,
                        id: Some(&f.id),
                        ..Default::default()
                    };
                    match crate::envelope::encode_at(f.event, &options, Some(f.time)) {
                        Ok(m) => {
                            let subject = m.subject.into_string();
                            tracing::warn!(target: "eventbus::publish", %subject, id = %f.id, attempt = 1, error = %e, "publish not acknowledged; sending again with the same id");
                            publish_acked(
                                &inner.backend,
                                inner.config.publish_attempts - 1,
                                &subject,
                                &f.id,
                                m.headers,
                                m.payload,
                                headers_again(f.event, &options, f.time),
                            )
                            .await
                        }
                        Err(encode_error) => Err(encode_error),
                    }
                }
                Err(e) => {
                    let subject = f
                        .event
                        .event_subject()
                        .map(|s| s.into_string())
                        .unwrap_or_default();
                    Err(publish_error(&subject, e))
                }
            };
            (f.index, r)
        }

        for (index, event) in events.enumerate() {
            out.push(None);
            let encoded = match crate::envelope::encode(event, &options) {
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
            let ack = inner
                .backend
                .send(
                    encoded.subject.into_string(),
                    encoded.headers,
                    encoded.payload,
                )
                .await;
            window.push_back(InFlight {
                index,
                event,
                id: encoded.id,
                time: encoded.time,
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
