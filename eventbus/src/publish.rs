//! Publishing, with its one send-and-retry policy: an event counts as stored only once the
//! server acknowledged it; a publish whose acknowledgement did not come is sent again with the
//! same `Nats-Msg-Id`, so the server keeps one copy. Every publish of eventbus goes through
//! [`Publisher`]: `Bus::publish*`, a handler's `ctx.publish`, appends to an aggregate
//! (`aggregate.rs`), dead letters and their republishing (`dlq.rs`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::publish::PublishAck;
use async_nats::HeaderMap;
use bytes::Bytes;
use time::OffsetDateTime;
use tokio_util::task::AbortOnDropHandle;
use tracing::instrument::WithSubscriber;
use tracing::Instrument;

use crate::backend::{AckFuture, Backend};
use crate::config::Config;
use crate::envelope::{encode, encode_at, headers, Body, EncodeOptions, EncodedEvent};
use crate::error::{Error, ErrorKind};
use crate::event::{EventDescriptor, EventSet};
use crate::observe::metrics::{PublishMetrics, RAW};
use crate::observe::trace::{self, PublishTrace, TraceContext};

/// How long a publish that found no stream, though one stores its subject, waits before it is
/// sent again (times the attempt).
const NO_STREAM_PAUSE: Duration = Duration::from_millis(50);
/// The longest pause between two publishes that found nobody to answer.
const MAX_NO_STREAM_PAUSE: Duration = Duration::from_secs(1);

/// Options of one publish.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// The event id (`ce-id`, `Nats-Msg-Id`); a new UUIDv7 when `None`. Give your own to make
    /// a publish idempotent across restarts of the publisher.
    pub id: Option<String>,
    /// Extra headers (they may not override the CloudEvents ones).
    pub headers: Option<HeaderMap>,
    /// The correlation id; the event's own id when `None`.
    pub correlation_id: Option<String>,
    /// The causation id.
    pub causation_id: Option<String>,
    /// The W3C `traceparent` to write when no OpenTelemetry span is active (with the
    /// `opentelemetry` feature, the publish span's own context wins). A handler's
    /// `ctx.publish` sets the received one, so a trace crosses a service that records no spans.
    pub traceparent: Option<String>,
    /// The W3C `tracestate` that goes with [`PublishOptions::traceparent`].
    pub tracestate: Option<String>,
}

/// The server's acknowledgement of a stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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

/// No option set: what `publish` and `publish_all` use.
pub(crate) static NO_OPTIONS: PublishOptions = PublishOptions {
    id: None,
    headers: None,
    correlation_id: None,
    causation_id: None,
    traceparent: None,
    tracestate: None,
};

/// An event of `publish_all`, with no option of its own. A function rather than a closure: a
/// closure's lifetimes would keep the future of `publish_all` from being `Send` for every
/// lifetime, so it could not be spawned.
fn without_options<E>(event: &E) -> (&E, &PublishOptions) {
    (event, &NO_OPTIONS)
}

/// The encoding of an event published by `source` with `options`, in the trace `trace` (if
/// any; else the one `options` carries).
fn encode_options<'o>(
    source: &'o str,
    options: &'o PublishOptions,
    trace: Option<&'o TraceContext>,
) -> EncodeOptions<'o> {
    let (traceparent, tracestate) = match trace {
        Some(t) => (t.traceparent.as_deref(), t.tracestate.as_deref()),
        None => (
            options.traceparent.as_deref(),
            options.tracestate.as_deref(),
        ),
    };
    EncodeOptions {
        source,
        id: options.id.as_deref(),
        correlation_id: options.correlation_id.as_deref(),
        causation_id: options.causation_id.as_deref(),
        traceparent,
        tracestate,
        extra_headers: options.headers.as_ref(),
    }
}

/// The trace context `options` carry (a handler's received one).
pub(crate) fn carried(options: &PublishOptions) -> TraceContext {
    TraceContext {
        traceparent: options.traceparent.clone(),
        tracestate: options.tracestate.clone(),
    }
}

/// The publishing side of a bus: where events go, who publishes them, and the retry policy
/// (`publish_attempts` × `publish_timeout`). Cheap to clone; a handler's context holds one, so
/// a handler can publish without holding the whole bus.
#[derive(Clone)]
pub(crate) struct Publisher {
    inner: Arc<Settings>,
}

struct Settings {
    backend: Backend,
    service: String,
    timeout: Duration,
    limits: Limits,
    metrics: PublishMetrics,
}

/// How far a publish retries.
struct Limits {
    /// Sends that may time out, in all.
    attempts: u32,
    /// How long "nobody answers" is retried.
    unavailable_wait: Duration,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("service", &self.inner.service)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    pub(crate) fn new(backend: Backend, service: String, config: &Config) -> Publisher {
        Publisher {
            inner: Arc::new(Settings {
                backend,
                timeout: config.publish_timeout,
                limits: Limits {
                    attempts: config.publish_attempts.max(1),
                    unavailable_wait: config.publish_unavailable_wait,
                },
                metrics: PublishMetrics::new(&service),
                service,
            }),
        }
    }

    /// Where the events go.
    pub(crate) fn backend(&self) -> &Backend {
        &self.inner.backend
    }

    /// The publishing service (`ce-source`).
    pub(crate) fn service(&self) -> &str {
        &self.inner.service
    }

    /// The metrics of publishing (for appends, which send through `send_acked`).
    pub(crate) fn metrics(&self) -> &PublishMetrics {
        &self.inner.metrics
    }

    /// Publishes an event and waits until the server stored it (see `Bus::publish`).
    pub(crate) async fn publish<E: EventSet>(
        &self,
        event: &E,
        options: &PublishOptions,
    ) -> Result<Published, Error> {
        let d = event.descriptor();
        let (mut trace, context) = PublishTrace::start(d.subject_pattern, carried(options));
        let mut opts = encode_options(&self.inner.service, options, Some(&context));
        let encoded = encode(event, &opts)?;
        trace.sent(encoded.subject.as_str(), &encoded.id);
        // A retry sends the same headers, made again from the same id and time.
        opts.id = Some(&encoded.id);
        let time = encoded.time;
        let again = || {
            encode_at(event, &opts, Some(time))
                .ok()
                .map(|m| (m.headers, m.payload))
        };
        let subject = encoded.subject.as_str();
        let started = Instant::now();
        let sent = self
            .send_acked_with(subject, encoded.headers, encoded.payload, again)
            .instrument(trace.span().clone())
            .await;
        let result = match sent {
            Ok(ack) => Ok(published(ack, encoded.id)),
            Err(e) => Err(publish_error(subject, e).with_event_id(&encoded.id)),
        };
        self.record(d.cloud_type, started, &result);
        result
    }

    /// Records a publish of `event_type` that started at `started`.
    pub(crate) fn record<T>(
        &self,
        event_type: &'static str,
        started: Instant,
        result: &Result<T, Error>,
    ) {
        let kind = result.as_ref().err().map(|e| format!("{:?}", e.kind()));
        self.inner
            .metrics
            .published(event_type, started.elapsed(), kind.as_deref());
    }

    /// Publishes a message as it is (see `Bus::publish_raw`).
    pub(crate) async fn publish_raw(
        &self,
        subject: &str,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<Published, Error> {
        let id = headers
            .get(headers::MSG_ID)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        let started = Instant::now();
        let result = self
            .send_acked(subject, headers, payload)
            .await
            .map_err(|e| publish_error(subject, e).with_event_id(&id))
            .map(|ack| published(ack, id));
        self.record(RAW, started, &result);
        result
    }

    /// Publishes and waits for the acknowledgement, sending again with the same headers (so
    /// the same `Nats-Msg-Id`) as [`Publisher::send_acked_with`] does.
    pub(crate) async fn send_acked(
        &self,
        subject: &str,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<PublishAck, PublishError> {
        let kept = (self.inner.limits.attempts > 1).then(|| (headers.clone(), payload.clone()));
        self.send_acked_with(subject, headers, payload, || kept.clone())
            .await
    }

    /// The one send-and-retry loop: publishes and waits for the acknowledgement; after a
    /// timeout or a lost connection, sends again with the headers and body `again` makes (the
    /// same headers, so the same `Nats-Msg-Id`: the server keeps one copy), `publish_attempts` times
    /// in all. A publish that found nobody to answer although a stream stores its subject (a
    /// leader election, servers away) is sent again too, after a pause growing from 50 ms to
    /// 1 s, until `publish_unavailable_wait` has passed since the first such answer. `again`
    /// makes the message only when it is needed, so the first attempt sends without a copy
    /// (not even of the body: a `Bytes` made from a `Vec` allocates when first cloned);
    /// should it have none, the last error stands.
    ///
    /// An attempt that timed out may have been stored: once one has, the publish can no longer
    /// fail as "not stored", and a later "nobody answers" ends it as timed out.
    pub(crate) async fn send_acked_with(
        &self,
        subject: &str,
        headers: HeaderMap,
        payload: Bytes,
        mut again: impl FnMut() -> Option<(HeaderMap, Bytes)>,
    ) -> Result<PublishAck, PublishError> {
        let settings = &*self.inner;
        let mut retry = Retry::default();
        let (mut headers, mut payload) = (headers, payload);
        loop {
            let result = match settings
                .backend
                .send(subject.to_owned(), headers, payload)
                .await
            {
                Ok(f) => f.wait().await,
                Err(e) => Err(e),
            };
            let e = match result {
                Ok(ack) => return Ok(ack),
                Err(e) => e,
            };
            let pause = match retry.after(e, &settings.limits) {
                Next::Fail(e) => return Err(e),
                Next::Again(pause) => pause,
                Next::IfStreamExists(pause, e) => {
                    if !self.stream_not_reached_yet(subject).await {
                        return Err(retry.give_up(e));
                    }
                    retry.last = Some(e);
                    pause
                }
            };
            tokio::time::sleep(pause).await;
            match again() {
                Some((h, p)) => {
                    tracing::warn!(target: "eventbus::publish", %subject, attempt = retry.sends, "publish not acknowledged; sending again with the same id");
                    self.inner.metrics.retried();
                    (headers, payload) = (h, p);
                }
                None => return Err(retry.last.take().expect("the error of the last attempt")),
            }
        }
    }

    /// Whether a publish that found no stream (no responders) may find it on another attempt:
    /// unless the server says that no stream stores the subject. In a cluster, the subjects of
    /// a stream just created reach the other servers a moment later, and a stream whose
    /// servers are away has nobody to answer until one is back; a lookup that fails (the
    /// cluster electing a leader) cannot tell, and the attempts are bounded.
    async fn stream_not_reached_yet(&self, subject: &str) -> bool {
        !matches!(
            self.inner.backend.stream_by_subject(subject).await,
            Ok(None)
        )
    }
}

fn published(ack: PublishAck, id: String) -> Published {
    Published {
        stream: ack.stream,
        sequence: ack.sequence,
        duplicate: ack.duplicate,
        id,
    }
}

/// The retry state of one publish, shared by `publish` and `publish_all`.
#[derive(Default)]
struct Retry {
    /// Sends so far.
    sends: u32,
    /// Sends that timed out or lost their connection: they may have been stored.
    unanswered: u32,
    /// When the first "nobody answers" came.
    unavailable_since: Option<Instant>,
    /// Sends in a row that found nobody to answer.
    unavailable: u32,
    /// The last error, while a retry is decided or pending.
    last: Option<PublishError>,
}

/// What to do after a failed send.
enum Next {
    /// It failed for good, with this error.
    Fail(PublishError),
    /// Send again after this pause.
    Again(Duration),
    /// Send again after this pause if a stream stores the subject; else fail with the error
    /// (through [`Retry::give_up`]).
    IfStreamExists(Duration, PublishError),
}

impl Retry {
    fn after(&mut self, e: PublishError, limits: &Limits) -> Next {
        self.sends += 1;
        if e.kind() == PublishErrorKind::StreamNotFound {
            let since = *self.unavailable_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= limits.unavailable_wait {
                return Next::Fail(self.give_up(e));
            }
            self.unavailable += 1;
            let pause = (NO_STREAM_PAUSE * self.unavailable).min(MAX_NO_STREAM_PAUSE);
            return Next::IfStreamExists(pause, e);
        }
        self.unavailable = 0;
        if !retryable(&e.kind()) {
            return Next::Fail(e);
        }
        self.unanswered += 1;
        if self.unanswered >= limits.attempts {
            return Next::Fail(e);
        }
        self.last = Some(e);
        Next::Again(Duration::ZERO)
    }

    /// The error that ends a publish whose last send found nobody to answer: "not stored"
    /// unless an earlier send may have been stored.
    fn give_up(&self, e: PublishError) -> PublishError {
        if self.unanswered == 0 {
            return e;
        }
        PublishError::with_source(PublishErrorKind::TimedOut, MaybeStored(e))
    }
}

/// "Nobody answers" after a send that may have been stored: the publish's outcome is unknown.
#[derive(Debug)]
struct MaybeStored(PublishError);

impl std::fmt::Display for MaybeStored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "an earlier attempt was not acknowledged and may be stored; the last found nobody to answer ({})",
            self.0
        )
    }
}

impl std::error::Error for MaybeStored {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Whether a failed attempt may be sent again with the same message id.
fn retryable(kind: &PublishErrorKind) -> bool {
    matches!(
        kind,
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe | PublishErrorKind::MaxAckPending
    )
}

/// The error of a publish on `subject`, by what the server answered.
pub(crate) fn publish_error(
    subject: &str,
    e: async_nats::jetstream::context::PublishError,
) -> Error {
    let kind = e.kind();
    let (k, msg) = match kind {
        PublishErrorKind::StreamNotFound => (
            ErrorKind::NotFound,
            format!("no stream stores subject `{subject}`"),
        ),
        PublishErrorKind::MaxPayloadExceeded => (
            ErrorKind::TooLarge,
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
                ErrorKind::TooLarge,
                format!("event on `{subject}` is larger than its stream's max message size"),
            )
        }
        PublishErrorKind::BrokenPipe => (
            ErrorKind::Connect,
            format!("publish on `{subject}` lost its connection before the acknowledgement; it may be stored"),
        ),
        _ => (ErrorKind::Refused, format!("publish on `{subject}` failed")),
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

/// How many events the caller of `publish_all` off the runtime's worker threads hands to the
/// publishing task at once.
const HANDOVER_CHUNK: usize = 256;

impl Publisher {
    /// Publishes many events, pipelined (see `Bus::publish_all`): up to [`PIPELINE_WINDOW`]
    /// wait for their acknowledgement at once; one not acknowledged in time goes back into the
    /// window with the same id; once an event used its attempts, or nothing was acknowledged
    /// for `publish_attempts` × `publish_timeout`, sending stops.
    pub(crate) async fn publish_all<'a, E, I>(&self, events: I) -> Vec<Result<Published, Error>>
    where
        E: EventSet + 'a,
        I: IntoIterator<Item = &'a E>,
    {
        self.publish_all_with(events.into_iter().map(without_options))
            .await
    }

    /// [`Publisher::publish_all`] with each event's own options (an id, headers, a chain): a
    /// retry, and a publish sent again by the caller, use the same.
    pub(crate) async fn publish_all_with<'a, E, I>(
        &self,
        events: I,
    ) -> Vec<Result<Published, Error>>
    where
        E: EventSet + 'a,
        I: IntoIterator<Item = (&'a E, &'a PublishOptions)>,
    {
        let events = events.into_iter();
        // One trace for the whole call: the current span's (the events' own otherwise).
        let current = trace::outgoing(&tracing::Span::current(), TraceContext::default());
        let trace = current.traceparent.is_some().then_some(current);
        if off_the_workers() {
            return self.publish_all_handed_over(events, trace).await;
        }
        let mut run = PublishAll::new(self, trace, events.size_hint().0);
        for (index, event) in events.enumerate() {
            run.push(index, Ok(event)).await;
        }
        run.finish().await
    }

    /// `publish_all` called off the runtime's worker threads (`#[tokio::main]`'s own thread,
    /// a `block_on`): the caller makes each event's subject and body, and a task of the
    /// runtime makes the headers, sends and waits for the acknowledgements. Sending from the
    /// caller's thread, each message handed to the connection's task would wake a worker
    /// thread, and the headers (most of a message's allocations) would be allocated on one
    /// thread and freed on another; from a task, both happen where the connection's task
    /// runs. Dropping the call stops the sending, as it does in a task.
    async fn publish_all_handed_over<'a, E, I>(
        &self,
        events: I,
        trace: Option<TraceContext>,
    ) -> Vec<Result<Published, Error>>
    where
        E: EventSet + 'a,
        I: Iterator<Item = (&'a E, &'a PublishOptions)>,
    {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Result<Owned, Error>>>(
            PIPELINE_WINDOW / HANDOVER_CHUNK,
        );
        let publisher = self.clone();
        let expected = events.size_hint().0;
        let run = async move {
            let mut run = PublishAll::new(&publisher, trace, expected);
            let mut index = 0;
            while let Some(chunk) = rx.recv().await {
                for event in chunk {
                    run.push(index, event).await;
                    index += 1;
                }
            }
            run.finish().await
        };
        // Its warnings go where the caller's would: its span, its subscriber.
        let run = run
            .instrument(tracing::Span::current())
            .with_current_subscriber();
        let mut task = AbortOnDropHandle::new(tokio::spawn(run));
        let mut handed = 0;
        let mut chunk = Vec::with_capacity(HANDOVER_CHUNK);
        for (event, options) in events {
            handed += 1;
            if tx.is_closed() {
                // The task ended early (the runtime is shutting down): count the rest.
                continue;
            }
            chunk.push(Body::of(event).map(|body| Owned {
                body,
                options: options.clone(),
            }));
            if chunk.len() == HANDOVER_CHUNK {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(HANDOVER_CHUNK));
                // A send fails only once the task ended, which the join says how.
                let _ = tx.send(full).await;
            }
        }
        if !chunk.is_empty() {
            let _ = tx.send(chunk).await;
        }
        drop(tx);
        match (&mut task).await {
            Ok(out) => out,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => (0..handed)
                .map(|_| {
                    Err(Error::new(
                        ErrorKind::Shutdown,
                        "publish_all's task was stopped (the runtime is shutting down): its events may or may not be stored",
                    ))
                })
                .collect(),
        }
    }
}

/// Whether this runs off the worker threads of a multi-thread runtime (on `#[tokio::main]`'s
/// own thread, in a `block_on`), not in a task.
fn off_the_workers() -> bool {
    tokio::task::try_id().is_none()
        && tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// An event of `publish_all` as its window holds it until the server acknowledges it: what
/// makes its message again, for a retry, and names it in errors.
trait Outgoing {
    /// The caller's options of its publish.
    fn options(&self) -> &PublishOptions;
    /// Its type.
    fn descriptor(&self) -> &'static EventDescriptor;
    /// Its subject, for errors (empty if it has none).
    fn subject(&self) -> String;
    /// Its message, at `time` (now when `None`).
    fn encode(
        &self,
        opts: &EncodeOptions<'_>,
        time: Option<OffsetDateTime>,
    ) -> Result<EncodedEvent, Error>;
}

/// An event as the caller lent it: encoded again from the event.
impl<E: EventSet> Outgoing for (&E, &PublishOptions) {
    fn options(&self) -> &PublishOptions {
        self.1
    }

    fn descriptor(&self) -> &'static EventDescriptor {
        self.0.descriptor()
    }

    fn subject(&self) -> String {
        self.0
            .event_subject()
            .map(|s| s.into_string())
            .unwrap_or_default()
    }

    fn encode(
        &self,
        opts: &EncodeOptions<'_>,
        time: Option<OffsetDateTime>,
    ) -> Result<EncodedEvent, Error> {
        encode_at(self.0, opts, time)
    }
}

/// An event handed over to `publish_all`'s task: its subject and body made by the caller, its
/// options its own.
struct Owned {
    body: Body,
    options: PublishOptions,
}

impl Outgoing for Owned {
    fn options(&self) -> &PublishOptions {
        &self.options
    }

    fn descriptor(&self) -> &'static EventDescriptor {
        self.body.descriptor
    }

    fn subject(&self) -> String {
        self.body.subject.as_str().to_owned()
    }

    fn encode(
        &self,
        opts: &EncodeOptions<'_>,
        time: Option<OffsetDateTime>,
    ) -> Result<EncodedEvent, Error> {
        let (id, time, headers) = self.body.headers(opts, time)?;
        Ok(EncodedEvent {
            subject: self.body.subject.clone(),
            id,
            time,
            headers,
            payload: self.body.payload.clone(),
        })
    }
}

/// One event of `publish_all`, as sent. Its message went to the client as it was: should it be
/// sent again, it is encoded again with the same id and time.
struct Sent<O> {
    index: usize,
    event: O,
    id: String,
    time: OffsetDateTime,
    /// Its attempts so far.
    retry: Retry,
    /// When it was first sent.
    started: Instant,
}

/// A publish of `publish_all` waiting for its acknowledgement.
struct InFlight<O> {
    sent: Sent<O>,
    /// When it was sent. Its acknowledgement is late `publish_timeout` after that (the
    /// client's own timeout starts only when its future is first awaited, which for the last
    /// of the window is long after the send).
    sent_at: tokio::time::Instant,
    ack: Result<AckFuture, PublishError>,
}

/// The state of one `publish_all`.
struct PublishAll<'b, O> {
    publisher: &'b Publisher,
    /// Each event's outcome, by index, once known.
    out: Vec<Option<Result<Published, Error>>>,
    /// The publishes waiting for their acknowledgement, oldest first.
    window: VecDeque<InFlight<O>>,
    /// When the server last answered.
    last_progress: Instant,
    /// Why sending stopped, once it did.
    stopped: Option<String>,
    /// Whether a stream stores the events' subjects, once a publish found none.
    stream_exists: Option<bool>,
    /// The trace the events carry, if a span is active.
    trace: Option<TraceContext>,
}

impl<'b, O: Outgoing> PublishAll<'b, O> {
    fn new(publisher: &'b Publisher, trace: Option<TraceContext>, expected: usize) -> Self {
        PublishAll {
            trace,
            publisher,
            out: Vec::with_capacity(expected),
            window: VecDeque::with_capacity(PIPELINE_WINDOW),
            last_progress: Instant::now(),
            stopped: None,
            stream_exists: None,
        }
    }

    /// Sends the event of index `index` (the next one), once the window has room; an event
    /// that could not be encoded has that error as its outcome.
    async fn push(&mut self, index: usize, event: Result<O, Error>) {
        self.out.push(None);
        // A publish sent again stays in the window: settle until there is room.
        while self.window.len() >= PIPELINE_WINDOW {
            self.settle_front().await;
        }
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                self.out[index] = Some(Err(e));
                return;
            }
        };
        if let Some(why) = &self.stopped {
            self.out[index] = Some(Err(not_sent(&event, why)));
            return;
        }
        let encoded = event.encode(
            &encode_options(
                self.publisher.service(),
                event.options(),
                self.trace.as_ref(),
            ),
            None,
        );
        match encoded {
            Ok(m) => {
                self.send(index, event, m, Retry::default(), Instant::now())
                    .await
            }
            Err(e) => self.out[index] = Some(Err(e)),
        }
    }

    /// Waits for the publishes left in the window; every event's outcome.
    async fn finish(mut self) -> Vec<Result<Published, Error>> {
        while !self.window.is_empty() {
            self.settle_front().await;
        }
        self.out
            .into_iter()
            .map(|r| r.expect("every event has an outcome"))
            .collect()
    }

    async fn send(
        &mut self,
        index: usize,
        event: O,
        m: EncodedEvent,
        retry: Retry,
        started: Instant,
    ) {
        let ack = self
            .publisher
            .backend()
            .send(m.subject.into_string(), m.headers, m.payload)
            .await;
        self.window.push_back(InFlight {
            sent: Sent {
                index,
                event,
                id: m.id,
                time: m.time,
                retry,
                started,
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
        let deadline = sent_at + self.publisher.inner.timeout;
        let result = match ack {
            Ok(fut) => tokio::time::timeout_at(deadline, fut.wait())
                .await
                .unwrap_or_else(|_| Err(PublishError::new(PublishErrorKind::TimedOut))),
            Err(e) => Err(e),
        };
        let e = match result {
            Ok(ack) => {
                self.last_progress = Instant::now();
                let d = f.event.descriptor();
                let result = Ok(published(ack, f.id));
                self.publisher.record(d.cloud_type, f.started, &result);
                self.out[f.index] = Some(result);
                return;
            }
            Err(e) => e,
        };
        let subject = f.event.subject();
        let mut f = f;
        if self.stopped.is_some() {
            let e = if e.kind() == PublishErrorKind::StreamNotFound {
                f.retry.give_up(e)
            } else {
                e
            };
            self.failed(&f, Err(publish_error(&subject, e).with_event_id(&f.id)));
            return;
        }
        let settings = &self.publisher.inner;
        match f.retry.after(e, &settings.limits) {
            Next::Fail(e) => {
                if e.kind() == PublishErrorKind::TimedOut || retryable(&e.kind()) {
                    self.stop(format!(
                        "event {} on `{subject}` was not acknowledged after {} attempts",
                        f.index, f.retry.sends
                    ));
                } else if f.retry.unavailable_since.is_some() {
                    self.stop(format!(
                        "nobody answered for the stream of `{subject}` for {} ms",
                        settings.limits.unavailable_wait.as_millis()
                    ));
                } else {
                    // The server answered: it is there.
                    self.last_progress = Instant::now();
                }
                self.failed(&f, Err(publish_error(&subject, e).with_event_id(&f.id)));
            }
            Next::Again(_) => {
                let silent = self.last_progress.elapsed();
                if silent >= settings.timeout * settings.limits.attempts {
                    self.stop(format!(
                        "the server acknowledged nothing for {} ms",
                        silent.as_millis()
                    ));
                    let e = f.retry.last.take().expect("the error of the last attempt");
                    self.failed(&f, Err(publish_error(&subject, e).with_event_id(&f.id)));
                    return;
                }
                self.send_again(f).await;
            }
            Next::IfStreamExists(pause, e) => {
                if !self.stream_not_reached_yet(&subject).await {
                    let e = f.retry.give_up(e);
                    self.failed(&f, Err(publish_error(&subject, e).with_event_id(&f.id)));
                    return;
                }
                // Like a timeout, but answered at once: send it again a pause after it was
                // sent. The window's events were sent close together: the first one waits,
                // the others mostly find their pause over.
                tokio::time::sleep_until(sent_at + pause).await;
                f.retry.last = Some(e);
                self.send_again(f).await;
            }
        }
    }

    /// Stops sending, for `why`.
    fn stop(&mut self, why: String) {
        tracing::warn!(target: "eventbus::publish", reason = %why, "publish_all stops sending");
        self.stopped = Some(why);
    }

    /// Whether a publish that found no stream may find it on another attempt (see
    /// [`Publisher::stream_not_reached_yet`]): looked up once per call, as the
    /// events of one set share their aggregate's stream.
    async fn stream_not_reached_yet(&mut self, subject: &str) -> bool {
        if let Some(known) = self.stream_exists {
            return known;
        }
        let exists = self.publisher.stream_not_reached_yet(subject).await;
        self.stream_exists = Some(exists);
        exists
    }

    /// Records the failure of a publish of the window.
    fn failed(&mut self, f: &Sent<O>, result: Result<Published, Error>) {
        self.publisher
            .record(f.event.descriptor().cloud_type, f.started, &result);
        self.out[f.index] = Some(result);
    }

    /// Sends a publish again, encoded with its first id and time, at the back of the window.
    async fn send_again(&mut self, mut f: Sent<O>) {
        let mut options = encode_options(
            self.publisher.service(),
            f.event.options(),
            self.trace.as_ref(),
        );
        options.id = Some(&f.id);
        match f.event.encode(&options, Some(f.time)) {
            Ok(m) => {
                if let Some(e) = f.retry.last.take() {
                    tracing::warn!(target: "eventbus::publish", id = %f.id, attempt = f.retry.sends, error = %e, "publish not acknowledged; sending again with the same id");
                }
                self.publisher.inner.metrics.retried();
                let (retry, started) = (f.retry, f.started);
                self.send(f.index, f.event, m, retry, started).await;
            }
            Err(encode_error) => self.out[f.index] = Some(Err(encode_error)),
        }
    }
}

/// The error of an event that `publish_all` did not send, having stopped. It carries the id
/// the caller gave, if any (an event not sent has no other).
fn not_sent(event: &impl Outgoing, why: &str) -> Error {
    let subject = event.subject();
    let e = Error::new(
        ErrorKind::NotSent,
        format!("event on `{subject}` was not sent, so it is not stored: publish_all stopped sending because {why}"),
    );
    match &event.options().id {
        Some(id) => e.with_event_id(id),
        None => e,
    }
}
