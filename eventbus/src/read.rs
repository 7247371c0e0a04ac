//! Reading an aggregate's recorded events, in order, to the end that existed when the read
//! began; with no consumer created on the server (each event is fetched by a stream "get").

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::time::Duration;

use async_nats::jetstream::{self, message::StreamMessage, stream::RawMessageErrorKind};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use time::OffsetDateTime;

use crate::backend::Backend;
use crate::bus::Bus;
use crate::envelope::{decode, headers_without, Metadata};
use crate::error::{Error, ErrorKind};
use crate::event::EventSet;
use crate::subject::check_aggregate_id;

/// One recorded event of an aggregate.
#[derive(Debug, Clone)]
pub struct Recorded<E> {
    /// The event.
    pub event: E,
    /// The aggregate's version after this event: its position among the aggregate's events,
    /// from 1.
    pub version: u64,
    /// Its sequence in the stream.
    pub sequence: u64,
    /// When the server stored it.
    pub time: OffsetDateTime,
    /// Its metadata (id, source, correlation and causation ids, headers).
    pub metadata: Metadata,
}

/// Where a read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    Beginning,
    Version(u64),
    Sequence(u64),
}

/// A read of one aggregate's events: a builder, then (through [`Read::into_stream`] or
/// [`Read::collect`]) a stream of [`Recorded`] events.
///
/// Only events whose type belongs to `E` are returned, and no republished dead letter (a
/// second copy of an event, see [`Bus::republish_dead_letter`]); the versions count every
/// message on the aggregate's subjects, as `append`'s expected version does.
#[must_use = "a read does nothing until it is streamed or collected"]
pub struct Read<E> {
    bus: Bus,
    id: String,
    start: Start,
    _event: PhantomData<fn() -> E>,
}

impl<E> std::fmt::Debug for Read<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Read")
            .field("id", &self.id)
            .field("start", &self.start)
            .finish()
    }
}

impl Bus {
    /// Reads the events of aggregate `id` in order, from the start, to the last one stored
    /// when the read begins.
    pub fn read<E: EventSet>(&self, id: impl Into<String>) -> Read<E> {
        Read {
            bus: self.clone(),
            id: id.into(),
            start: Start::Beginning,
            _event: PhantomData,
        }
    }
}

/// The stream that stores an aggregate's subjects.
pub(crate) async fn stream_of(
    backend: &Backend,
    aggregate: &str,
    id: &str,
) -> Result<String, Error> {
    let probe = format!("{aggregate}.{id}.x");
    backend.stream_by_subject(&probe).await?.ok_or_else(|| {
        Error::new(
            ErrorKind::Read,
            format!("no stream stores the events of aggregate `{aggregate}`"),
        )
    })
}

/// How many messages one batched direct get asks for.
const BATCH: usize = 512;

/// The server version that answers batched direct gets (ADR-31).
const BATCH_GET_MIN_SERVER_VERSION: (u64, u64, u64) = (2, 11, 0);

/// The headers a direct get adds to a stored message; a read returns the message's own only.
const DIRECT_GET_HEADERS: [&str; 6] = [
    "Nats-Stream",
    "Nats-Subject",
    "Nats-Sequence",
    "Nats-Time-Stamp",
    "Nats-Num-Pending",
    "Nats-Last-Sequence",
];

/// A stream opened for a read: the range of sequences it held when the read began, and how
/// it can be read.
pub(crate) struct Opened {
    how: Access,
    name: String,
    first: u64,
    last: u64,
    /// The server answers batched direct gets on this stream (2.11+, `allow_direct`).
    batched: bool,
    /// Replicas may answer direct gets, and one may lag behind the leader.
    replicated: bool,
    timeout: Duration,
}

/// How an opened stream is read.
// One per bus, worker or read, or moved once per event: boxing the large variant would
// cost an allocation per event for no gain.
#[allow(clippy::large_enum_variant)]
enum Access {
    Nats {
        stream: jetstream::stream::Stream,
        client: async_nats::Client,
    },
    Memory(crate::memory::Broker),
}

/// Opens a stream and reads the range of sequences it holds now.
pub(crate) async fn open(inner: &crate::bus::Inner, name: &str) -> Result<Opened, Error> {
    let js = match &inner.backend {
        Backend::Nats(js) => js,
        Backend::Memory(b) => {
            let (first, last) = b.stream_range(name).ok_or_else(|| {
                Error::new(
                    ErrorKind::Read,
                    format!("cannot open stream `{name}`: it does not exist"),
                )
            })?;
            return Ok(Opened {
                how: Access::Memory(b.clone()),
                name: name.to_owned(),
                first: first.max(1),
                last,
                batched: false,
                replicated: false,
                timeout: inner.config.publish_timeout,
            });
        }
    };
    let mut s = js.get_stream(name).await.map_err(|e| {
        Error::new(ErrorKind::Read, format!("cannot open stream `{name}`")).with_source(e)
    })?;
    let info = s.info().await.map_err(|e| {
        Error::new(ErrorKind::Read, format!("cannot read stream `{name}`")).with_source(e)
    })?;
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let batched = info.config.allow_direct && inner.server_version >= BATCH_GET_MIN_SERVER_VERSION;
    let replicated = info.config.num_replicas > 1;
    Ok(Opened {
        how: Access::Nats {
            stream: s,
            client: js.client(),
        },
        name: name.to_owned(),
        first: first.max(1),
        last,
        batched,
        replicated,
        timeout: inner.config.publish_timeout,
    })
}

/// Where a scan stands.
struct Scan {
    opened: Opened,
    filter: String,
    /// The next sequence to look at.
    next: u64,
    /// Fetched, not yet returned.
    buffer: VecDeque<StreamMessage>,
    /// Batched direct gets: the inbox their answers come to.
    inbox: Option<(String, async_nats::Subscriber)>,
    /// Nothing more to fetch.
    done: bool,
}

impl Scan {
    fn read_error(&self, what: String) -> Error {
        Error::new(
            ErrorKind::Read,
            format!(
                "cannot read the messages on `{}` in `{}`: {what}",
                self.filter, self.opened.name
            ),
        )
    }

    /// Fetches the next messages into the buffer, or marks the scan done.
    async fn fetch(&mut self) -> Result<(), Error> {
        if self.next > self.opened.last {
            self.done = true;
            return Ok(());
        }
        if self.opened.batched {
            self.fetch_batch().await?;
            if self.done && self.opened.replicated {
                // A replica answered and may lag behind the leader: the leader confirms the end.
                self.done = false;
                self.opened.batched = false;
                return self.fetch_one().await;
            }
            Ok(())
        } else {
            self.fetch_one().await
        }
    }

    /// One message, from the stream's leader (`STREAM.MSG.GET`); from the in-process
    /// broker, up to [`BATCH`].
    async fn fetch_one(&mut self) -> Result<(), Error> {
        let stream = match &self.opened.how {
            Access::Nats { stream, .. } => stream,
            Access::Memory(b) => {
                for _ in 0..BATCH {
                    match b.next_by_subject(&self.opened.name, &self.filter, self.next) {
                        Some(m) if m.sequence <= self.opened.last => {
                            self.next = m.sequence + 1;
                            self.buffer.push_back(StreamMessage {
                                subject: m.subject.into(),
                                sequence: m.sequence,
                                headers: m.headers,
                                payload: m.payload,
                                time: m.time,
                            });
                        }
                        _ => {
                            self.done = true;
                            break;
                        }
                    }
                }
                return Ok(());
            }
        };
        let got = stream
            .raw_message_builder()
            .sequence(self.next)
            .next_by_subject(self.filter.clone())
            .send()
            .await;
        match got {
            Ok(m) if m.sequence <= self.opened.last => {
                self.next = m.sequence + 1;
                self.buffer.push_back(m);
            }
            Ok(_) => self.done = true,
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => self.done = true,
            Err(e) => {
                return Err(self
                    .read_error("the server refused a get".to_owned())
                    .with_source(e))
            }
        }
        Ok(())
    }

    /// Up to [`BATCH`] messages with one batched direct get.
    async fn fetch_batch(&mut self) -> Result<(), Error> {
        let client = match &self.opened.how {
            Access::Nats { client, .. } => client.clone(),
            Access::Memory(_) => return self.fetch_one().await,
        };
        if self.inbox.is_none() {
            let inbox = client.new_inbox();
            let sub = client.subscribe(inbox.clone()).await.map_err(|e| {
                self.read_error("cannot subscribe to an inbox".to_owned())
                    .with_source(e)
            })?;
            self.inbox = Some((inbox, sub));
        }
        let request =
            serde_json::json!({ "seq": self.next, "next_by_subj": self.filter, "batch": BATCH });
        let subject = format!("$JS.API.DIRECT.GET.{}", self.opened.name);
        let (inbox, _) = self.inbox.as_ref().expect("subscribed");
        client
            .publish_with_reply(subject, inbox.clone(), Bytes::from(request.to_string()))
            .await
            .map_err(|e| {
                self.read_error("cannot send a direct get".to_owned())
                    .with_source(e)
            })?;
        let timeout = self.opened.timeout;
        loop {
            let (_, sub) = self.inbox.as_mut().expect("subscribed");
            let m = match tokio::time::timeout(timeout, sub.next()).await {
                Ok(Some(m)) => m,
                Ok(None) => return Err(self.read_error("the connection was closed".to_owned())),
                Err(_) => {
                    // Answers of this request may still come: start over on a new inbox.
                    self.inbox = None;
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "reading the messages on `{}` in `{}`: no answer within {timeout:?}",
                            self.filter, self.opened.name
                        ),
                    ));
                }
            };
            match m.status.map(|s| s.as_u16()) {
                None => {
                    let mut m = StreamMessage::try_from(m).map_err(|e| {
                        self.read_error("a direct get answered a malformed message".to_owned())
                            .with_source(e)
                    })?;
                    m.headers = strip_direct_get_headers(&m.headers);
                    self.next = m.sequence + 1;
                    self.buffer.push_back(m);
                }
                // End of the batch: `Nats-Num-Pending` more match after it.
                Some(204) => {
                    let pending = m
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("Nats-Num-Pending"))
                        .map(|v| v.as_str().trim().to_owned());
                    if pending.as_deref() == Some("0") || self.next > self.opened.last {
                        self.done = true;
                    }
                    return Ok(());
                }
                Some(404) => {
                    self.done = true;
                    return Ok(());
                }
                Some(code) => {
                    return Err(self.read_error(format!(
                        "a direct get was answered with {code} {}",
                        m.description.unwrap_or_default()
                    )))
                }
            }
        }
    }
}

fn strip_direct_get_headers(h: &HeaderMap) -> HeaderMap {
    headers_without(h, |n| {
        DIRECT_GET_HEADERS.iter().any(|d| d.eq_ignore_ascii_case(n))
    })
}

/// The messages of an opened stream on `filter`, in order, from sequence `from` up to the
/// stream's last when it was opened. No consumer is created: with nats-server 2.11 or newer
/// (and `allow_direct`, which eventbus sets) batched direct gets fetch up to 512 messages per
/// request; otherwise one "get" per message.
pub(crate) fn scan(
    opened: Opened,
    filter: String,
    from: u64,
) -> BoxStream<'static, Result<StreamMessage, Error>> {
    let next = from.max(opened.first);
    let done = opened.last == 0;
    let scan = Scan {
        opened,
        filter,
        next,
        buffer: VecDeque::new(),
        inbox: None,
        done,
    };
    stream::unfold(Some(scan), |state| async move {
        let mut scan = state?;
        loop {
            if let Some(m) = scan.buffer.pop_front() {
                if m.sequence > scan.opened.last {
                    return None;
                }
                return Some((Ok(m), Some(scan)));
            }
            if scan.done {
                return None;
            }
            if let Err(e) = scan.fetch().await {
                return Some((Err(e), None));
            }
        }
    })
    .boxed()
}

impl<E: EventSet> Read<E> {
    /// Starts at the event that made version `version` (1 is the first event).
    pub fn from_version(mut self, version: u64) -> Self {
        self.start = Start::Version(version.max(1));
        self
    }

    /// Starts at the first event of the aggregate at or after stream sequence `sequence`.
    pub fn from_sequence(mut self, sequence: u64) -> Self {
        self.start = Start::Sequence(sequence.max(1));
        self
    }

    /// All events at once.
    pub async fn collect(self) -> Result<Vec<Recorded<E>>, Error> {
        let mut s = self.into_stream();
        let mut v = Vec::new();
        while let Some(r) = s.next().await {
            v.push(r?);
        }
        Ok(v)
    }

    /// The events as a stream. An error ends it.
    pub fn into_stream(self) -> BoxStream<'static, Result<Recorded<E>, Error>> {
        let Read { bus, id, start, .. } = self;
        let inner = bus.inner.clone();
        let opened = async move {
            check_aggregate_id(E::AGGREGATE, &id)?;
            let name = stream_of(&inner.backend, E::AGGREGATE, &id).await?;
            let opened = open(&inner, &name).await?;
            Ok::<_, Error>(scan(opened, format!("{}.{id}.*", E::AGGREGATE), 1))
        };
        let messages = stream::once(opened)
            .flat_map(|r| match r {
                Ok(s) => s,
                Err(e) => stream::once(async move { Err(e) }).boxed(),
            })
            .boxed();
        let mut version = 0u64;
        let mut failed = false;
        messages
            .filter_map(move |m| {
                let out = if failed {
                    None
                } else {
                    match m {
                        Err(e) => Some(Err(e)),
                        Ok(msg) => {
                            version += 1;
                            let wanted = match start {
                                Start::Beginning => true,
                                Start::Version(v) => version >= v,
                                Start::Sequence(q) => msg.sequence >= q,
                            };
                            if wanted {
                                recorded::<E>(msg, version)
                            } else {
                                None
                            }
                        }
                    }
                };
                failed |= matches!(out, Some(Err(_)));
                std::future::ready(out)
            })
            .boxed()
    }
}

/// Decodes one stored message, or `None` if its type is not in the set `E` or it is a
/// republished dead letter.
fn recorded<E: EventSet>(
    msg: jetstream::message::StreamMessage,
    version: u64,
) -> Option<Result<Recorded<E>, Error>> {
    if msg.headers.get(crate::dlq::REPUBLISHED_FROM).is_some() {
        return None;
    }
    let StreamMessage {
        subject,
        sequence,
        headers,
        payload,
        time,
        ..
    } = msg;
    let mut meta = match Metadata::from_headers(subject.as_str(), headers) {
        Ok(m) => m,
        Err(e) => return Some(Err(e)),
    };
    if !E::EVENTS.iter().any(|d| d.name == meta.event_type) {
        return None;
    }
    if meta.id.is_empty() {
        meta.id = format!("seq:{sequence}");
    }
    Some(decode::<E>(&meta, &payload).map(|event| Recorded {
        event,
        version,
        sequence,
        time,
        metadata: meta,
    }))
}
