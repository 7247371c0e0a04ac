//! Publishing: an event counts as stored only once the server acknowledged it; a publish
//! whose acknowledgement did not come is sent again with the same `Nats-Msg-Id`, so the
//! server keeps one copy.

use std::collections::VecDeque;
use std::time::Instant;

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::HeaderMap;
use bytes::Bytes;

use crate::backend::AckFuture;
use crate::envelope::{encode, EncodeOptions, EncodedEvent};
use crate::error::{Error, ErrorKind};
use crate::event::EventSet;

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
    /// and reports each outcome, in order: `Ok` once the server stored the event, or the error
    /// in its place.
    ///
    /// A publish that is not acknowledged in time is sent again with the same id (so the server
    /// keeps one copy) without holding up the others, up to `publish_attempts` times; so is one
    /// that found nobody to answer although a stream stores its subject, after 50 ms × the
    /// attempt (see [`crate::Bus::publish`]). When the
    /// server is out of reach, `publish_all` does not go on trying event after event: once an
    /// event has used all its attempts, or nothing was acknowledged for `publish_attempts` ×
    /// `publish_timeout`, it stops sending and retrying, waits for what is under way, and
    /// returns within about one more `publish_timeout`. Then:
    ///
    /// - an event sent but not acknowledged has an [`ErrorKind::Timeout`] error: it may or may
    ///   not be stored (publish it again with the same id, [`crate::PublishOptions::id`], to
    ///   be sure of one copy);
    /// - an event not sent at all has an [`ErrorKind::Publish`] error that says so: it is not
    ///   stored.
    ///
    /// Events that are retried may be stored in another order than given; [`crate::Bus::append`]
    /// keeps the order of one aggregate's events.
    pub async fn publish_all<'a, E, I>(&self, events: I) -> Vec<Result<Published, Error>>
    where
        E: crate::event::EventSet + 'a,
        I: IntoIterator<Item = &'a E>,
    {
        let events = events.into_iter();
        let mut run = PublishAll {
            inner: &self.inner,
            out: Vec::with_capacity(events.size_hint().0),
            window: VecDeque::with_capacity(PIPELINE_WINDOW),
            last_progress: Instant::now(),
            stopped: None,
            stream_exists: None,
        };
        let options = EncodeOptions {
            source: &self.inner.service,
            ..Default::default()
        };
        for (index, event) in events.enumerate() {
            run.out.push(None);
            // A publish sent again stays in the window: settle until there is room.
            while run.window.len() >= PIPELINE_WINDOW {
                run.settle_front().await;
            }
            if let Some(why) = &run.stopped {
                run.out[index] = Some(Err(not_sent(event, why)));
                continue;
            }
            match encode(event, &options) {
                Ok(m) => run.send(index, event, m, 1).await,
                Err(e) => run.out[index] = Some(Err(e)),
            }
        }
        while !run.window.is_empty() {
            run.settle_front().await;
        }
        run.out
            .into_iter()
            .map(|r| r.expect("every event has an outcome"))
            .collect()
    }
}

/// One event of `publish_all`, as sent. Its message went to the client as it was: should it be
/// sent again, the event is encoded again with the same id and time.
struct Sent<'a, E> {
    index: usize,
    event: &'a E,
    id: String,
    time: time::OffsetDateTime,
    /// Which attempt this is, from 1.
    attempt: u32,
}

/// A publish of `publish_all` waiting for its acknowledgement.
struct InFlight<'a, E> {
    sent: Sent<'a, E>,
    /// When it was sent. Its acknowledgement is late `publish_timeout` after that (the
    /// client's own timeout starts only when its future is first awaited, which for the last
    /// of the window is long after the send).
    sent_at: tokio::time::Instant,
    ack: Result<AckFuture, PublishError>,
}

/// The state of one `publish_all`.
struct PublishAll<'b, 'a, E> {
    inner: &'b crate::bus::Inner,
    /// Each event's outcome, by index, once known.
    out: Vec<Option<Result<Published, Error>>>,
    /// The publishes waiting for their acknowledgement, oldest first.
    window: VecDeque<InFlight<'a, E>>,
    /// When the server last answered.
    last_progress: Instant,
    /// Why sending stopped, once it did.
    stopped: Option<String>,
    /// Whether a stream stores the events' subjects, once a publish found none.
    stream_exists: Option<bool>,
}

impl<'a, E: EventSet> PublishAll<'_, 'a, E> {
    async fn send(&mut self, index: usize, event: &'a E, m: EncodedEvent, attempt: u32) {
        let ack = self
            .inner
            .backend
            .send(m.subject.into_string(), m.headers, m.payload)
            .await;
        self.window.push_back(InFlight {
            sent: Sent {
                index,
                event,
                id: m.id,
                time: m.time,
                attempt,
            },
            sent_at: tokio::time::Instant::now(),
            ack,
        });
    }

    /// Waits for the oldest publish's acknowledgement: records its outcome, or sends it again.
    async fn settle_front(&mut self) {
        let Some(InFlight {
            sent: f,
            sent_at,
            ack,
        }) = self.window.pop_front()
        else {
            return;
        };
        let deadline = sent_at + self.inner.config.publish_timeout;
        let result = match ack {
            Ok(fut) => tokio::time::timeout_at(deadline, fut.wait())
                .await
                .unwrap_or_else(|_| Err(PublishError::new(PublishErrorKind::TimedOut))),
            Err(e) => Err(e),
        };
        let e = match result {
            Ok(ack) => {
                self.last_progress = Instant::now();
                self.out[f.index] = Some(Ok(Published {
                    stream: ack.stream,
                    sequence: ack.sequence,
                    duplicate: ack.duplicate,
                    id: f.id,
                }));
                return;
            }
            Err(e) => e,
        };
        let subject = f
            .event
            .event_subject()
            .map(|s| s.into_string())
            .unwrap_or_default();
        let config = &self.inner.config;
        if e.kind() == PublishErrorKind::StreamNotFound
            && f.attempt < config.publish_attempts
            && self.stopped.is_none()
            && self.stream_not_reached_yet(&subject).await
        {
            // Like a timeout, but answered at once: send it again a pause after it was sent,
            // growing with the attempt as for `publish`. The window's events were sent close
            // together: the first one waits, the others mostly find their pause over.
            let pause = crate::backend::NO_STREAM_PAUSE * f.attempt;
            tokio::time::sleep_until(sent_at + pause).await;
            self.send_again(f, &e).await;
            return;
        }
        if !retryable(&e.kind()) {
            // The server answered: it is there.
            self.last_progress = Instant::now();
            self.out[f.index] = Some(Err(publish_error(&subject, e)));
            return;
        }
        if self.stopped.is_none() {
            let silent = self.last_progress.elapsed();
            if f.attempt >= config.publish_attempts {
                self.stopped = Some(format!(
                    "event {} on `{subject}` was not acknowledged after {} attempts",
                    f.index, f.attempt
                ));
            } else if silent >= config.publish_timeout * config.publish_attempts {
                self.stopped = Some(format!(
                    "the server acknowledged nothing for {} ms",
                    silent.as_millis()
                ));
            }
            if let Some(why) = &self.stopped {
                tracing::warn!(target: "eventbus::publish", reason = %why, "publish_all stops sending");
            }
        }
        if self.stopped.is_some() {
            self.out[f.index] = Some(Err(publish_error(&subject, e)));
            return;
        }
        self.send_again(f, &e).await;
    }

    /// Whether a publish that found no stream may find it on another attempt (see
    /// [`crate::backend::Backend::stream_not_reached_yet`]): looked up once per call, as the
    /// events of one set share their aggregate's stream.
    async fn stream_not_reached_yet(&mut self, subject: &str) -> bool {
        if let Some(known) = self.stream_exists {
            return known;
        }
        let exists = self.inner.backend.stream_not_reached_yet(subject).await;
        self.stream_exists = Some(exists);
        exists
    }

    /// Sends a publish again, encoded with its first id and time, at the back of the window.
    async fn send_again(&mut self, f: Sent<'a, E>, e: &PublishError) {
        let options = EncodeOptions {
            source: &self.inner.service,
            id: Some(&f.id),
            ..Default::default()
        };
        match crate::envelope::encode_at(f.event, &options, Some(f.time)) {
            Ok(m) => {
                tracing::warn!(target: "eventbus::publish", id = %f.id, attempt = f.attempt, error = %e, "publish not acknowledged; sending again with the same id");
                self.send(f.index, f.event, m, f.attempt + 1).await;
            }
            Err(encode_error) => self.out[f.index] = Some(Err(encode_error)),
        }
    }
}

/// The error of an event that `publish_all` did not send, having stopped.
fn not_sent<E: EventSet>(event: &E, why: &str) -> Error {
    let subject = event
        .event_subject()
        .map(|s| s.into_string())
        .unwrap_or_default();
    Error::new(
        ErrorKind::Publish,
        format!("event on `{subject}` was not sent, so it is not stored: publish_all stopped sending because {why}"),
    )
}
