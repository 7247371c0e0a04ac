//! The seam to the outside world: where events live. Either a NATS JetStream server
//! ([`nats`], with its connection in [`connection`] and its credit-based pulls in [`pull`]) or
//! the in-process broker ([`memory`]). Nothing above this module knows which one it talks to:
//! streams, consumers, pulls, acks, publishes and stored-message reads all go through
//! [`Backend`], and every type it hands out ([`Incoming`], [`Puller`], [`Scan`], [`Stored`])
//! hides the difference.
//!
//! This module sends one request at a time and reports what the server answered; it decides
//! nothing. Retrying a publish is the publishing module's policy (`publish.rs`).

mod connection;
pub(crate) mod memory;
mod nats;
mod pull;

use std::time::Duration;

use async_nats::jetstream::context::PublishError;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self, consumer, stream, AckKind};
use async_nats::HeaderMap;
use bytes::Bytes;
use time::OffsetDateTime;
use tokio::sync::watch;

pub use self::connection::ConnectionState;
pub(crate) use self::memory::Broker;
use self::memory::Settle;
use self::nats::Nats;
use self::pull::NatsPuller;
use crate::config::Config;
use crate::error::{Error, ErrorKind};

/// The oldest server version eventbus runs on.
pub const MIN_SERVER_VERSION: (u64, u64, u64) = (2, 10, 0);

/// A stored message, as a read or a get returns it.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) subject: String,
    pub(crate) sequence: u64,
    pub(crate) headers: HeaderMap,
    pub(crate) payload: Bytes,
    pub(crate) time: OffsetDateTime,
}

/// Where the events live. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) enum Backend {
    /// A NATS JetStream server.
    Nats(std::sync::Arc<Nats>),
    /// The in-process broker.
    Memory(Broker),
}

/// A backend, connected, with what is known of its connection.
pub(crate) struct Connected {
    pub(crate) backend: Backend,
    /// The connection's state, as it changes.
    pub(crate) state: watch::Receiver<ConnectionState>,
    /// Turns true when reconnect attempts are exhausted.
    pub(crate) gave_up: watch::Receiver<bool>,
    /// What the logs call the server.
    pub(crate) server: String,
    /// The senders of the state channels of the in-process broker, kept open.
    pub(crate) _keep_alive: Option<(watch::Sender<ConnectionState>, watch::Sender<bool>)>,
}

impl Backend {
    /// Connects to what the configuration names: the in-process broker for no URL or
    /// `memory://[NAME]` (with a warning, as events then live only in this process), else the
    /// NATS servers, refusing one older than [`MIN_SERVER_VERSION`].
    pub(crate) async fn connect(config: &Config, service: &str) -> Result<Connected, Error> {
        let memory = match config.urls.as_slice() {
            [] => Some("memory://".to_owned()),
            [u] if u.starts_with("memory:") => Some(u.clone()),
            _ => None,
        };
        let Some(url) = memory else {
            let conn = connection::connect(config, service, &config.urls).await?;
            let info = conn.client.server_info();
            let version = connection::parse_version(&info.version).unwrap_or((0, 0, 0));
            if version < MIN_SERVER_VERSION {
                return Err(Error::new(
                    ErrorKind::ServerVersion,
                    format!(
                        "nats-server {} at {} is too old: eventbus needs 2.10 or newer",
                        info.version,
                        config.urls.join(",")
                    ),
                ));
            }
            let nats = Nats::new(conn.client, version, config.publish_timeout);
            return Ok(Connected {
                backend: Backend::Nats(std::sync::Arc::new(nats)),
                state: conn.state,
                gave_up: conn.gave_up,
                server: info.version,
                _keep_alive: None,
            });
        };
        tracing::warn!(
            target: "eventbus",
            %url,
            "no server URL: running on the in-process broker; events live only in this process (set EVENTBUS_URL=nats://... for JetStream)"
        );
        let broker = Broker::named(url.trim_start_matches("memory:").trim_start_matches("//"));
        let (state_tx, state) = watch::channel(ConnectionState::Connected);
        let (gave_up_tx, gave_up) = watch::channel(false);
        Ok(Connected {
            backend: Backend::Memory(broker),
            state,
            gave_up,
            server: "in-process".to_owned(),
            _keep_alive: Some((state_tx, gave_up_tx)),
        })
    }

    /// The server's version; the in-process broker has every feature, so it counts as newest.
    pub(crate) fn server_version(&self) -> (u64, u64, u64) {
        match self {
            Backend::Nats(n) => n.version,
            Backend::Memory(_) => (u64::MAX, 0, 0),
        }
    }

    /// The NATS connection (none on the in-process broker).
    pub(crate) fn client(&self) -> Option<&async_nats::Client> {
        match self {
            Backend::Nats(n) => Some(&n.client),
            Backend::Memory(_) => None,
        }
    }

    /// The JetStream context (none on the in-process broker).
    pub(crate) fn jetstream(&self) -> Option<&jetstream::Context> {
        match self {
            Backend::Nats(n) => Some(&n.js),
            Backend::Memory(_) => None,
        }
    }

    /// The in-process broker, if that is where the events live.
    pub(crate) fn broker(&self) -> Option<&Broker> {
        match self {
            Backend::Nats(_) => None,
            Backend::Memory(b) => Some(b),
        }
    }

    /// Sends what is still to be sent and closes the connection (nothing to do in process).
    /// Acks that cannot get out within `flush_timeout` are given up: their events are
    /// redelivered, never lost.
    pub(crate) async fn close(&self, flush_timeout: Duration) -> Result<(), Error> {
        match self {
            Backend::Nats(n) => n.close(flush_timeout).await,
            Backend::Memory(_) => Ok(()),
        }
    }

    /// Every stream's configuration.
    pub(crate) async fn streams(&self) -> Result<Vec<stream::Config>, Error> {
        match self {
            Backend::Nats(n) => n.streams().await,
            Backend::Memory(b) => Ok(b.streams()),
        }
    }

    /// Creates a stream, or updates it (`update`).
    pub(crate) async fn put_stream(
        &self,
        config: stream::Config,
        update: bool,
    ) -> Result<(), Error> {
        let what = if update { "update" } else { "create" };
        let ctx = format!("cannot {what} stream `{}`", config.name);
        match self {
            Backend::Nats(n) => n.put_stream(config, update, ctx).await,
            Backend::Memory(b) => if update {
                b.update_stream(config)
            } else {
                b.create_stream(config)
            }
            .map_err(|e| Error::new(ErrorKind::Incompatible, ctx).with_source(e)),
        }
    }

    /// A consumer's configuration, `None` when it does not exist.
    pub(crate) async fn consumer_config(
        &self,
        stream: &str,
        name: &str,
    ) -> Result<Option<consumer::Config>, Error> {
        match self {
            Backend::Nats(n) => n.consumer_config(stream, name).await,
            Backend::Memory(b) => Ok(b.consumer_config(stream, name)),
        }
    }

    /// Notices of the events `consumer` gives up on: max deliveries reached with no
    /// settlement, which happens when the client cannot receive an event (its headers break
    /// the client's parser) or nobody settled its last delivery. See [`GivenUp`].
    pub(crate) async fn given_up(&self, stream: &str, consumer: &str) -> Result<GivenUp, Error> {
        match self {
            Backend::Nats(n) => Ok(GivenUp::Nats(n.given_up(stream, consumer).await?)),
            Backend::Memory(b) => Ok(GivenUp::Memory {
                notices: b.given_up(),
                stream: stream.to_owned(),
                consumer: consumer.to_owned(),
            }),
        }
    }

    /// Message `seq` of `stream` as data, with the header lines that are not valid headers
    /// apart (the in-process broker has none).
    pub(crate) async fn get_as_data(
        &self,
        stream: &str,
        seq: u64,
    ) -> Result<(Stored, Vec<String>), Error> {
        match self {
            Backend::Nats(n) => n
                .get_as_data(stream, seq)
                .await
                .map(|d| (d.stored, d.unreadable_headers)),
            Backend::Memory(_) => self.get(stream, seq).await.map(|m| (m, Vec::new())),
        }
    }

    /// Where a consumer stands: ack floor, last delivered, unacknowledged.
    pub(crate) async fn consumer_position(
        &self,
        stream: &str,
        name: &str,
    ) -> Result<ConsumerPosition, Error> {
        match self {
            Backend::Nats(n) => n.consumer_position(stream, name).await,
            Backend::Memory(b) => b.consumer_position(stream, name).ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("no consumer `{name}` on stream `{stream}`"),
                )
            }),
        }
    }

    /// Creates or updates a consumer.
    pub(crate) async fn put_consumer(
        &self,
        stream: &str,
        config: consumer::Config,
        update: bool,
    ) -> Result<(), Error> {
        let name = config
            .durable_name
            .clone()
            .or_else(|| config.name.clone())
            .unwrap_or_default();
        let ctx = format!(
            "cannot {} consumer `{name}` on stream `{stream}`",
            if update { "update" } else { "create" }
        );
        match self {
            Backend::Nats(n) => n.put_consumer(stream, config, update, ctx).await,
            Backend::Memory(b) => b
                .put_consumer(stream, config)
                .map(|_| ())
                .map_err(|e| Error::new(ErrorKind::Incompatible, ctx).with_source(e)),
        }
    }

    pub(crate) async fn delete_consumer(&self, stream: &str, name: &str) -> Result<(), Error> {
        match self {
            Backend::Nats(n) => n.delete_consumer(stream, name).await,
            Backend::Memory(b) => {
                b.delete_consumer(stream, name);
                Ok(())
            }
        }
    }

    /// A stream's figures now.
    pub(crate) async fn stream_figures(&self, name: &str) -> Result<StreamFigures, Error> {
        match self {
            Backend::Nats(n) => n.stream_figures(name).await,
            Backend::Memory(b) => b
                .stream_figures(name)
                .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no stream `{name}`"))),
        }
    }

    /// A consumer's figures now.
    pub(crate) async fn consumer_figures(
        &self,
        stream: &str,
        name: &str,
    ) -> Result<ConsumerFigures, Error> {
        match self {
            Backend::Nats(n) => n.consumer_figures(stream, name).await,
            Backend::Memory(b) => b.consumer_figures(stream, name).ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("no consumer `{name}` on stream `{stream}`"),
                )
            }),
        }
    }

    /// A puller of a consumer's events. It follows the connection's `state`, to start over
    /// after a reconnect.
    pub(crate) async fn puller(
        &self,
        stream: &str,
        name: &str,
        state: watch::Receiver<ConnectionState>,
        ack_wait: Duration,
    ) -> Result<Puller, Error> {
        match self {
            Backend::Nats(n) => Ok(Puller::Nats(
                NatsPuller::new(n, stream, name, state, ack_wait).await?,
            )),
            Backend::Memory(b) => {
                if b.consumer_config(stream, name).is_none() {
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        format!("no consumer `{name}` on stream `{stream}`"),
                    ));
                }
                Ok(Puller::Memory {
                    broker: b.clone(),
                    stream: stream.to_owned(),
                    consumer: name.to_owned(),
                    credits: 0,
                })
            }
        }
    }

    /// Sends one publish; the returned future gives its acknowledgement. One attempt: sending
    /// again is the decision of `publish.rs`.
    pub(crate) async fn send(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<AckFuture, PublishError> {
        match self {
            Backend::Nats(n) => {
                n.js.publish_with_headers(subject, headers, payload)
                    .await
                    .map(AckFuture::Nats)
            }
            Backend::Memory(b) => Ok(AckFuture::Ready(b.publish(&subject, headers, payload))),
        }
    }

    /// The stream that stores a concrete subject; `None` if none does.
    pub(crate) async fn stream_by_subject(&self, subject: &str) -> Result<Option<String>, Error> {
        match self {
            Backend::Nats(n) => n.stream_by_subject(subject).await,
            Backend::Memory(b) => Ok(b.stream_by_subject(subject)),
        }
    }

    /// The message with sequence `seq`.
    pub(crate) async fn get(&self, stream: &str, seq: u64) -> Result<Stored, Error> {
        match self {
            Backend::Nats(n) => n.get(stream, seq).await,
            Backend::Memory(b) => b.get(stream, seq).ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("no message {seq} in `{stream}`"),
                )
            }),
        }
    }

    /// The sequence of the last message on `filter` (0 if none) and how many messages it has.
    pub(crate) async fn last_and_count(
        &self,
        stream: &str,
        filter: &str,
    ) -> Result<(u64, u64), Error> {
        match self {
            Backend::Nats(n) => n.last_and_count(stream, filter).await,
            Backend::Memory(b) => b
                .last_and_count(stream, filter)
                .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no stream `{stream}`"))),
        }
    }

    /// Removes one message from a stream.
    pub(crate) async fn delete_message(&self, stream: &str, seq: u64) -> Result<(), Error> {
        match self {
            Backend::Nats(n) => n.delete_message(stream, seq).await,
            Backend::Memory(b) => {
                if b.delete_message(stream, seq) {
                    Ok(())
                } else {
                    Err(Error::new(
                        ErrorKind::NotFound,
                        format!("cannot remove message {seq} from `{stream}`"),
                    ))
                }
            }
        }
    }

    /// The messages of stream `name` on `filter`, in order, from sequence `from` up to the
    /// stream's last one when the scan begins. No consumer is created.
    pub(crate) async fn scan(&self, name: &str, filter: String, from: u64) -> Result<Scan, Error> {
        match self {
            Backend::Nats(n) => Ok(Scan::Nats(Box::new(n.scan(name, filter, from).await?))),
            Backend::Memory(b) => {
                let (first, last) = b.stream_range(name).ok_or_else(|| {
                    Error::new(
                        ErrorKind::NotFound,
                        format!("cannot open stream `{name}`: it does not exist"),
                    )
                })?;
                Ok(Scan::Memory {
                    broker: b.clone(),
                    stream: name.to_owned(),
                    filter,
                    next: from.max(first).max(1),
                    last,
                })
            }
        }
    }
}

/// Notices of the events a consumer gave up on (see [`Backend::given_up`]).
pub(crate) enum GivenUp {
    Nats(async_nats::Subscriber),
    Memory {
        notices: tokio::sync::broadcast::Receiver<memory::GivenUpNotice>,
        stream: String,
        consumer: String,
    },
}

/// An event a consumer gave up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GaveUp {
    /// Its stream sequence.
    pub(crate) sequence: u64,
    /// How many times it was delivered.
    pub(crate) deliveries: u64,
}

impl GivenUp {
    /// The next notice; `None` once no more can come (the connection or broker is gone).
    pub(crate) async fn next(&mut self) -> Option<GaveUp> {
        match self {
            GivenUp::Nats(sub) => loop {
                let m = futures::StreamExt::next(sub).await?;
                match serde_json::from_slice::<serde_json::Value>(&m.payload) {
                    Ok(v) => {
                        let field = |name: &str| v.get(name).and_then(|n| n.as_u64());
                        if let Some(sequence) = field("stream_seq") {
                            return Some(GaveUp {
                                sequence,
                                deliveries: field("deliveries").unwrap_or(0),
                            });
                        }
                    }
                    Err(e) => {
                        tracing::warn!(target: "eventbus::dispatch", subject = %m.subject, error = %e, "unreadable max-deliveries advisory; ignored");
                    }
                }
            },
            GivenUp::Memory {
                notices,
                stream,
                consumer,
            } => loop {
                match notices.recv().await {
                    Ok((s, c, sequence, deliveries)) if s == *stream && c == *consumer => {
                        return Some(GaveUp {
                            sequence,
                            deliveries,
                        })
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::error!(target: "eventbus::dispatch", %consumer, missed = n, "in-process broker: notices of given-up events were missed");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            },
        }
    }
}

/// Where a consumer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConsumerPosition {
    /// Every event up to this stream sequence is acknowledged (or terminated, or given up).
    pub(crate) ack_floor: u64,
    /// The stream sequence of the last event delivered for the first time.
    pub(crate) delivered: u64,
    /// Events delivered and not acknowledged yet.
    pub(crate) ack_pending: u64,
}

/// The acknowledgement of a publish that was sent.
pub(crate) enum AckFuture {
    Nats(jetstream::context::PublishAckFuture),
    Ready(Result<PublishAck, PublishError>),
}

impl AckFuture {
    pub(crate) async fn wait(self) -> Result<PublishAck, PublishError> {
        match self {
            AckFuture::Nats(f) => f.await,
            AckFuture::Ready(r) => r,
        }
    }
}

/// What pulling a consumer brought.
// One per worker, or moved once per event: boxing the large variant would cost an allocation
// per event for no gain.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Pulled {
    /// An event, against one credit.
    Message(Incoming),
    /// Credits returned unused (a request expired or ended).
    Returned(usize),
    /// Every outstanding credit is lost (reconnect, or the server went silent): ask again.
    Reset,
    /// The pull failed; it starts over after a pause.
    Failed(Error),
}

/// Pulls one consumer's events by credit: [`Puller::request`] asks for `n` more, each
/// [`Pulled::Message`] uses one.
// One per worker: boxing the large variant would gain nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Puller {
    Nats(NatsPuller),
    Memory {
        broker: Broker,
        stream: String,
        consumer: String,
        credits: usize,
    },
}

impl Puller {
    /// Asks for up to `n` more events.
    pub(crate) async fn request(&mut self, n: usize) -> Result<(), Error> {
        match self {
            Puller::Nats(p) => p.request(n).await,
            Puller::Memory { credits, .. } => {
                *credits += n;
                Ok(())
            }
        }
    }

    /// How many events may be on their way at once (see [`NatsPuller::credit_limit`]).
    pub(crate) fn credit_limit(&self) -> usize {
        match self {
            Puller::Nats(p) => p.credit_limit(),
            Puller::Memory { .. } => usize::MAX,
        }
    }

    /// Forgets every outstanding request and starts over (a stalled consumer): answers
    /// [`Pulled::Reset`], or the failure to start over.
    pub(crate) async fn reset(&mut self) -> Pulled {
        match self {
            Puller::Nats(p) => p.reset().await,
            Puller::Memory { credits, .. } => {
                *credits = 0;
                Pulled::Reset
            }
        }
    }

    /// The next thing the pull brings. Cancel-safe.
    pub(crate) async fn next(&mut self) -> Pulled {
        match self {
            Puller::Nats(p) => p.next().await,
            Puller::Memory {
                broker,
                stream,
                consumer,
                credits,
            } => {
                if *credits == 0 {
                    return std::future::pending().await;
                }
                match broker.next(stream, consumer).await {
                    Some(d) => {
                        *credits -= 1;
                        Pulled::Message(Incoming::Memory(broker.clone(), d))
                    }
                    None => {
                        *credits = 0;
                        Pulled::Failed(Error::new(
                            ErrorKind::NotFound,
                            format!("consumer `{consumer}` on stream `{stream}` is gone"),
                        ))
                    }
                }
            }
        }
    }
}

/// A stream's figures, as the server reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamFigures {
    pub(crate) messages: u64,
    pub(crate) bytes: u64,
    pub(crate) first_sequence: u64,
    pub(crate) last_sequence: u64,
    pub(crate) consumers: usize,
    /// Distinct subjects holding messages.
    pub(crate) subjects: u64,
}

/// A consumer's figures, as the server reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConsumerFigures {
    /// Events not yet delivered.
    pub(crate) pending: u64,
    /// Delivered and not yet acknowledged.
    pub(crate) ack_pending: u64,
    /// Redelivered and not yet acknowledged.
    pub(crate) redelivered: u64,
    /// Pull requests waiting.
    pub(crate) waiting: u64,
}

/// One delivered message.
#[derive(Clone)]
pub(crate) enum Incoming {
    Nats(jetstream::Message),
    Memory(Broker, memory::Delivery),
}

/// Where a delivered message sits.
pub(crate) struct IncomingInfo {
    pub(crate) stream_sequence: u64,
    pub(crate) delivered: u64,
    pub(crate) pending: u64,
}

impl Incoming {
    pub(crate) fn subject(&self) -> &str {
        match self {
            Incoming::Nats(m) => m.subject.as_str(),
            Incoming::Memory(_, d) => &d.message.subject,
        }
    }

    /// Takes the headers out (for the event's metadata, without a copy).
    pub(crate) fn take_headers(&mut self) -> HeaderMap {
        match self {
            Incoming::Nats(m) => m.message.headers.take().unwrap_or_default(),
            Incoming::Memory(_, d) => std::mem::take(&mut d.message.headers),
        }
    }

    pub(crate) fn payload(&self) -> &Bytes {
        match self {
            Incoming::Nats(m) => &m.payload,
            Incoming::Memory(_, d) => &d.message.payload,
        }
    }

    pub(crate) fn info(&self) -> Result<IncomingInfo, Error> {
        match self {
            Incoming::Nats(m) => {
                let i = m.info().map_err(|e| {
                    Error::new(ErrorKind::Decode, "message without JetStream metadata")
                        .with_source(e)
                })?;
                Ok(IncomingInfo {
                    stream_sequence: i.stream_sequence,
                    delivered: i.delivered.max(1) as u64,
                    pending: i.pending,
                })
            }
            Incoming::Memory(_, d) => Ok(IncomingInfo {
                stream_sequence: d.message.sequence,
                delivered: d.delivered,
                pending: d.pending,
            }),
        }
    }

    /// Acks, naks (with a delay), terminates or keeps (in progress) the message.
    pub(crate) async fn settle(&self, how: AckKind) -> Result<(), Error> {
        match self {
            Incoming::Nats(m) => m
                .ack_with(how)
                .await
                .map_err(|e| Error::new(ErrorKind::Connect, "cannot acknowledge").with_source(e)),
            Incoming::Memory(b, d) => {
                let s = match how {
                    AckKind::Ack | AckKind::Next => Settle::Ack,
                    AckKind::Nak(delay) => Settle::Nak(delay),
                    AckKind::Progress => Settle::Progress,
                    AckKind::Term => Settle::Term,
                };
                b.settle(d, s);
                Ok(())
            }
        }
    }
}

/// A scan of a stream's stored messages (see [`Backend::scan`]).
pub(crate) enum Scan {
    // Boxed: a scan of the server holds its buffers and subscription, and there is one per read.
    Nats(Box<nats::Scan>),
    Memory {
        broker: Broker,
        stream: String,
        filter: String,
        next: u64,
        last: u64,
    },
}

impl Scan {
    /// The next message, `None` at the end.
    pub(crate) async fn next(&mut self) -> Option<Result<Stored, Error>> {
        match self {
            Scan::Nats(s) => s.next().await,
            Scan::Memory {
                broker,
                stream,
                filter,
                next,
                last,
            } => {
                let m = broker
                    .next_by_subject(stream, filter, *next)
                    .filter(|m| m.sequence <= *last)?;
                *next = m.sequence + 1;
                Some(Ok(m))
            }
        }
    }

    /// The scan as a stream of messages; an error ends it.
    pub(crate) fn into_stream(self) -> futures::stream::BoxStream<'static, Result<Stored, Error>> {
        use futures::StreamExt;
        futures::stream::unfold(Some(self), |state| async move {
            let mut scan = state?;
            match scan.next().await? {
                Ok(m) => Some((Ok(m), Some(scan))),
                Err(e) => Some((Err(e), None)),
            }
        })
        .boxed()
    }
}
