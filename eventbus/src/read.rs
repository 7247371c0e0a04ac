//! Reading an aggregate's recorded events, in order, to the end that existed when the read
//! began; with no consumer created on the server (each event is fetched by a stream "get").

use std::marker::PhantomData;

use async_nats::jetstream::{self, stream::RawMessageErrorKind};
use futures::stream::{self, BoxStream, StreamExt};
use time::OffsetDateTime;

use crate::bus::Bus;
use crate::envelope::{decode, Metadata};
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
/// Only events whose type belongs to `E` are returned; the versions count all of the
/// aggregate's events.
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
    js: &jetstream::Context,
    aggregate: &str,
    id: &str,
) -> Result<String, Error> {
    let probe = format!("{aggregate}.{id}.x");
    js.stream_by_subject(probe).await.map_err(|e| {
        Error::new(
            ErrorKind::Read,
            format!("no stream stores the events of aggregate `{aggregate}`"),
        )
        .with_source(e)
    })
}

/// Fetches the messages of `stream` on `filter`, in order, from sequence `from` up to `end`,
/// one stream "get" each (no consumer is created).
pub(crate) fn scan(
    stream: jetstream::stream::Stream,
    filter: String,
    from: u64,
    end: u64,
) -> BoxStream<'static, Result<jetstream::message::StreamMessage, Error>> {
    stream::unfold(Some((stream, from)), move |st| {
        let filter = filter.clone();
        async move {
            let (s, next) = st?;
            if next > end || end == 0 {
                return None;
            }
            match s
                .raw_message_builder()
                .sequence(next)
                .next_by_subject(filter.clone())
                .send()
                .await
            {
                Ok(m) if m.sequence <= end => {
                    let after = m.sequence + 1;
                    Some((Ok(m), Some((s, after))))
                }
                Ok(_) => None,
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => None,
                Err(e) => Some((
                    Err(Error::new(
                        ErrorKind::Read,
                        format!("cannot read the messages on `{filter}`"),
                    )
                    .with_source(e)),
                    None,
                )),
            }
        }
    })
    .boxed()
}

/// Opens a stream and reads the range of sequences it holds now.
pub(crate) async fn open(
    js: &jetstream::Context,
    name: &str,
) -> Result<(jetstream::stream::Stream, u64, u64), Error> {
    let mut s = js.get_stream(name).await.map_err(|e| {
        Error::new(ErrorKind::Read, format!("cannot open stream `{name}`")).with_source(e)
    })?;
    let info = s.info().await.map_err(|e| {
        Error::new(ErrorKind::Read, format!("cannot read stream `{name}`")).with_source(e)
    })?;
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    Ok((s, first.max(1), last))
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
        let js = bus.inner.js.clone();
        let opened = async move {
            check_aggregate_id(E::AGGREGATE, &id)?;
            let name = stream_of(&js, E::AGGREGATE, &id).await?;
            let (s, first, last) = open(&js, &name).await?;
            Ok::<_, Error>(scan(s, format!("{}.{id}.*", E::AGGREGATE), first, last))
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

/// Decodes one stored message, or `None` if its type is not in the set `E`.
fn recorded<E: EventSet>(
    msg: jetstream::message::StreamMessage,
    version: u64,
) -> Option<Result<Recorded<E>, Error>> {
    let mut meta = match Metadata::from_message(msg.subject.as_str(), Some(&msg.headers)) {
        Ok(m) => m,
        Err(e) => return Some(Err(e)),
    };
    if !E::EVENTS.iter().any(|d| d.name == meta.event_type) {
        return None;
    }
    if meta.id.is_empty() {
        meta.id = format!("seq:{}", msg.sequence);
    }
    Some(decode::<E>(&meta, &msg.payload).map(|event| Recorded {
        event,
        version,
        sequence: msg.sequence,
        time: msg.time,
        metadata: meta,
    }))
}
