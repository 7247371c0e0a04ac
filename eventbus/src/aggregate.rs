//! Event-sourced aggregates: [`Aggregate`] folds an aggregate's events into its state;
//! [`load`] reads them; [`append`] writes new ones only if the aggregate is still at the
//! expected version (optimistic concurrency, checked by the server), through the publishing
//! retry policy of [`Publisher`].

use async_nats::jetstream::context::PublishError;
use async_nats::HeaderMap;
use futures::StreamExt;
use tracing::Instrument;

use crate::backend::Backend;
use crate::envelope::{encode, headers, EncodeOptions};
use crate::error::{BoxError, Conflict, Error, ErrorKind};
use crate::event::EventSet;
use crate::observe::trace::PublishTrace;
use crate::publish::{is_wrong_last_sequence, publish_error, PublishOptions, Published, Publisher};
use crate::read::{stream_of, Read};
use crate::subject::check_aggregate_id;

/// The server version that `append` needs (`Nats-Expected-Last-Subject-Sequence-Subject`).
pub const APPEND_MIN_SERVER_VERSION: (u64, u64, u64) = (2, 11, 0);

/// State rebuilt from an aggregate's events.
pub trait Aggregate: Default + Send {
    /// The aggregate's events (an event set, or one event type).
    type Event: EventSet;

    /// Applies one event to the state.
    fn apply(&mut self, event: &Self::Event);
}

/// An aggregate's state and the version it is at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded<A> {
    /// The state after every event.
    pub state: A,
    /// How many events the aggregate has (0: none yet).
    pub version: u64,
}

/// The result of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Appended {
    /// The aggregate's version after the append.
    pub version: u64,
    /// Each event's acknowledgement.
    pub published: Vec<Published>,
}

/// Where an aggregate stands: how many events it has and the stream sequence of its last.
async fn position(backend: &Backend, stream: &str, filter: &str) -> Result<(u64, u64), Error> {
    let (last, count) = backend.last_and_count(stream, filter).await?;
    Ok((count, last))
}

/// Loads an aggregate: applies each of its events, in order, to `A::default()`.
pub(crate) async fn load<A: Aggregate>(backend: &Backend, id: String) -> Result<Loaded<A>, Error> {
    let mut state = A::default();
    let mut version = 0;
    let mut events = Read::<A::Event>::new(backend.clone(), id).into_stream();
    while let Some(r) = events.next().await {
        let r = r?;
        state.apply(&r.event);
        version = r.version;
    }
    Ok(Loaded { state, version })
}

/// Appends events to aggregate `id` only if it has exactly `expected_version` events (see
/// `Bus::append`). Each event is sent with `Nats-Expected-Last-Subject-Sequence` = the
/// sequence of the one before it, on `{aggregate}.{id}.*`.
pub(crate) async fn append<E: EventSet>(
    publisher: &Publisher,
    id: &str,
    expected_version: u64,
    events: &[E],
    chain: &PublishOptions,
) -> Result<Appended, Error> {
    let backend = publisher.backend();
    let server_version = backend.server_version();
    if server_version < APPEND_MIN_SERVER_VERSION {
        return Err(Error::new(
                ErrorKind::ServerVersion,
                format!(
                    "append with an expected version needs nats-server 2.11 or newer (for Nats-Expected-Last-Subject-Sequence-Subject); the server is {}.{}.{}",
                    server_version.0, server_version.1, server_version.2
                ),
            ));
    }
    check_aggregate_id(E::AGGREGATE, id)?;
    for e in events {
        if e.id() != id {
            return Err(Error::new(
                ErrorKind::InvalidAggregateId,
                format!(
                    "append to `{}` `{id}` holds an event of aggregate id {:?}",
                    E::AGGREGATE,
                    e.id()
                ),
            ));
        }
    }
    let filter = format!("{}.{id}.*", E::AGGREGATE);
    let stream = stream_of(backend, E::AGGREGATE, id).await?;
    let (count, mut last) = position(backend, &stream, &filter).await?;
    let conflict = |actual: u64, source: Option<BoxError>| {
        Error::conflict_error(
            Conflict {
                aggregate: E::AGGREGATE.to_owned(),
                aggregate_id: id.to_owned(),
                expected: expected_version,
                actual,
            },
            source,
        )
    };
    if count != expected_version {
        return Err(conflict(count, None));
    }
    let mut published = Vec::with_capacity(events.len());
    for (i, event) in events.iter().enumerate() {
        let d = event.descriptor();
        let (mut trace, context) =
            PublishTrace::start(d.subject_pattern, crate::publish::carried(chain));
        let encoded = encode(
            event,
            &EncodeOptions {
                source: publisher.service(),
                correlation_id: chain.correlation_id.as_deref(),
                causation_id: chain.causation_id.as_deref(),
                traceparent: context.traceparent.as_deref(),
                tracestate: context.tracestate.as_deref(),
                ..Default::default()
            },
        )?;
        trace.sent(encoded.subject.as_str(), &encoded.id);
        let mut headers = encoded.headers;
        headers.insert("Nats-Expected-Last-Subject-Sequence", last.to_string());
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence-Subject",
            filter.as_str(),
        );
        let subject = encoded.subject.into_string();
        let sent = Sent {
            stream: &stream,
            filter: &filter,
            subject: &subject,
            id: &encoded.id,
            expected_last: last,
        };
        let partial = |err: Error| {
            if i == 0 {
                err
            } else {
                err.with_note(format!(
                    "{i} of the {} events were stored before",
                    events.len()
                ))
            }
        };
        let started = std::time::Instant::now();
        let result = append_one(publisher, &sent, headers, encoded.payload)
            .instrument(trace.span().clone())
            .await;
        drop(trace);
        let failed = result.as_ref().err().map(|e| format!("{:?}", e.kind()));
        publisher
            .metrics()
            .published(d.cloud_type, started.elapsed(), failed.as_deref());
        match result {
            Ok(p) => {
                last = p.sequence;
                published.push(p);
            }
            Err(e) if is_wrong_last_sequence(&e) => {
                let actual = position(backend, &stream, &filter)
                    .await
                    .map(|p| p.0)
                    .unwrap_or(expected_version + i as u64);
                return Err(partial(conflict(actual, Some(Box::new(e)))));
            }
            Err(e) => return Err(partial(publish_error(&subject, e))),
        }
    }
    Ok(Appended {
        version: expected_version + events.len() as u64,
        published,
    })
}

/// One event of an append, as sent.
struct Sent<'a> {
    stream: &'a str,
    filter: &'a str,
    subject: &'a str,
    id: &'a str,
    /// The sequence of the aggregate's last event it was sent after.
    expected_last: u64,
}

/// Sends one event of an append and waits for its acknowledgement, sent again like any publish
/// ([`Publisher::send_acked`]) with the same id and the same expected last sequence.
///
/// The server checks the expected sequence before it looks for duplicates, so a copy sent
/// again after the first one was stored is refused as a wrong last sequence, not reported as
/// a duplicate: on that refusal the aggregate's next event after the expected one is looked
/// up, and if it is this one (same id) the append of it succeeded. (On a first attempt it is
/// another writer's event, and the refusal stands.)
async fn append_one(
    publisher: &Publisher,
    sent: &Sent<'_>,
    headers: HeaderMap,
    payload: bytes::Bytes,
) -> Result<Published, PublishError> {
    let acked = publisher.send_acked(sent.subject, headers, payload).await;
    match acked {
        Ok(ack) => Ok(Published {
            stream: ack.stream,
            sequence: ack.sequence,
            duplicate: ack.duplicate,
            id: sent.id.to_owned(),
        }),
        Err(e) if is_wrong_last_sequence(&e) => {
            match stored_copy(publisher.backend(), sent).await {
                Some(p) => Ok(p),
                None => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// The event stored right after the expected last one on the aggregate's subjects, if it is
/// the one with `sent.id` (a copy of an earlier attempt).
async fn stored_copy(backend: &Backend, sent: &Sent<'_>) -> Option<Published> {
    let mut scan = backend
        .scan(sent.stream, sent.filter.to_owned(), sent.expected_last + 1)
        .await
        .ok()?;
    let m = scan.next().await?.ok()?;
    let id = m.headers.get(headers::MSG_ID)?;
    (id.as_str() == sent.id).then(|| Published {
        stream: sent.stream.to_owned(),
        sequence: m.sequence,
        duplicate: true,
        id: sent.id.to_owned(),
    })
}
