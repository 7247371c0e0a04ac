//! Reading an aggregate's recorded events, in order, to the end that existed when the read
//! began; with no consumer created on the server (the backend scans the stream with gets).

use std::marker::PhantomData;

use futures::stream::{self, BoxStream, StreamExt};
use time::OffsetDateTime;

use crate::backend::{Backend, Stored};
use crate::envelope::{decode, headers, Metadata};
use crate::error::{Error, ErrorKind};
use crate::event::EventSet;
use crate::subject::check_aggregate_id;

/// One recorded event of an aggregate.
#[derive(Debug, Clone)]
#[non_exhaustive]
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
/// second copy of an event, see `Bus::republish_dead_letter`); the versions count every
/// message on the aggregate's subjects, as `append`'s expected version does.
#[must_use = "a read does nothing until it is streamed or collected"]
pub struct Read<E> {
    /// Where to read, or why it cannot be read.
    backend: Result<Backend, Error>,
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

impl<E> Read<E> {
    /// A read of aggregate `id`'s events, from the start.
    pub(crate) fn new(backend: Backend, id: String) -> Self {
        Read {
            backend: Ok(backend),
            id,
            start: Start::Beginning,
            _event: PhantomData,
        }
    }

    /// A read that yields `error` (where there is nothing to read from).
    pub(crate) fn failed(error: Error) -> Self {
        Read {
            backend: Err(error),
            id: String::new(),
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
            ErrorKind::NotFound,
            format!("no stream stores the events of aggregate `{aggregate}`"),
        )
    })
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
        let Read {
            backend, id, start, ..
        } = self;
        let opened = async move {
            let backend = backend?;
            check_aggregate_id(E::AGGREGATE, &id)?;
            let name = stream_of(&backend, E::AGGREGATE, &id).await?;
            let scan = backend
                .scan(&name, format!("{}.{id}.*", E::AGGREGATE), 1)
                .await?;
            Ok::<_, Error>(scan.into_stream())
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
fn recorded<E: EventSet>(msg: Stored, version: u64) -> Option<Result<Recorded<E>, Error>> {
    if msg.headers.get(headers::REPUBLISHED_FROM).is_some() {
        return None;
    }
    let Stored {
        subject,
        sequence,
        headers,
        payload,
        time,
    } = msg;
    let mut meta = match Metadata::from_parts(&subject, headers, &payload) {
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
