//! The two places events can live: a NATS JetStream server, or the in-process broker. The
//! runtime talks to both through this one enum, so the same dispatch, publishing and reading
//! code runs on either.

use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self, consumer, stream, AckKind};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;

use crate::error::{Error, ErrorKind};
use crate::memory::{self, Broker, Settle};
use crate::publish::retryable;
use crate::pull::{NatsPuller, PullEvent};

/// How long a publish that found no stream, though one stores its subject, waits before it is
/// sent again (times the attempt).
pub(crate) const NO_STREAM_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// A stored message, as a read returns it.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) sequence: u64,
    pub(crate) headers: HeaderMap,
    pub(crate) payload: Bytes,
}

impl From<memory::Stored> for Stored {
    fn from(m: memory::Stored) -> Self {
        Stored {
            sequence: m.sequence,
            headers: m.headers,
            payload: m.payload,
        }
    }
}

impl From<jetstream::message::StreamMessage> for Stored {
    fn from(m: jetstream::message::StreamMessage) -> Self {
        Stored {
            sequence: m.sequence,
            headers: m.headers,
            payload: m.payload,
        }
    }
}

/// Where the events live.
#[derive(Clone, Debug)]
// One per bus, worker or read, or moved once per event: boxing the large variant would
// cost an allocation per event for no gain.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Backend {
    /// A NATS JetStream server.
    Nats(jetstream::Context),
    /// The in-process broker.
    Memory(Broker),
}

fn js_err(
    kind: ErrorKind,
    context: String,
) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> Error {
    move |e| Error::new(kind, context).with_source(e)
}

/// The acknowledgement of a publish that was sent.
pub(crate) enum AckFuture {
    Nats(PublishAckFuture),
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
// One per bus, worker or read, or moved once per event: boxing the large variant would
// cost an allocation per event for no gain.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Pulled {
    /// An event, against one credit.
    Message(Incoming),
    /// Credits returned unused.
    Returned(usize),
    /// Every outstanding credit is lost: ask again.
    Reset,
    /// The pull failed; it starts over after a pause.
    Failed(Error),
}

/// Pulls one consumer's events by credit: [`Puller::request`] asks for `n` more, each
/// [`Pulled::Message`] uses one.
// One per bus, worker or read, or moved once per event: boxing the large variant would
// cost an allocation per event for no gain.
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

    /// The next thing the pull brings. Cancel-safe.
    pub(crate) async fn next(&mut self) -> Pulled {
        match self {
            Puller::Nats(p) => match p.next().await {
                PullEvent::Message(m) => Pulled::Message(Incoming::Nats(m)),
                PullEvent::Returned(n) => Pulled::Returned(n),
                PullEvent::Reset => Pulled::Reset,
                PullEvent::Failed(e) => Pulled::Failed(e),
            },
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
                            ErrorKind::Provision,
                            format!("consumer `{consumer}` on stream `{stream}` is gone"),
                        ))
                    }
                }
            }
        }
    }
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
                    Error::new(ErrorKind::JetStream, "message without JetStream metadata")
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

    pub(crate) async fn settle(&self, how: AckKind) -> Result<(), Error> {
        match self {
            Incoming::Nats(m) => m
                .ack_with(how)
                .await
                .map_err(|e| Error::new(ErrorKind::JetStream, "cannot acknowledge").with_source(e)),
            Incoming::Memory(b, d) => {
                let s = match how {
                    AckKind::Ack => Settle::Ack,
                    AckKind::Nak(delay) => Settle::Nak(delay),
                    AckKind::Progress => Settle::Progress,
                    AckKind::Term => Settle::Term,
                    AckKind::Next => Settle::Ack,
                };
                b.settle(d, s);
                Ok(())
            }
        }
    }
}

impl Backend {
    /// Every stream's configuration.
    pub(crate) async fn streams(&self) -> Result<Vec<stream::Config>, Error> {
        match self {
            Backend::Nats(js) => {
                let infos: Vec<stream::Info> = js
                    .streams()
                    .collect::<Vec<_>>()
                    .await
                    .into_iter()
                    .collect::<Result<_, _>>()
                    .map_err(|e| {
                        Error::new(ErrorKind::Provision, "cannot list the server's streams")
                            .with_source(e)
                    })?;
                Ok(infos.into_iter().map(|i| i.config).collect())
            }
            Backend::Memory(b) => Ok(b.streams()),
        }
    }

    pub(crate) async fn create_stream(&self, config: stream::Config) -> Result<(), Error> {
        let name = config.name.clone();
        let ctx = format!("cannot create stream `{name}`");
        match self {
            Backend::Nats(js) => js
                .create_stream(config)
                .await
                .map(|_| ())
                .map_err(|e| js_err(ErrorKind::Provision, ctx)(e.into())),
            Backend::Memory(b) => b
                .create_stream(config)
                .map_err(|e| js_err(ErrorKind::Provision, ctx)(e.into())),
        }
    }

    pub(crate) async fn update_stream(&self, config: stream::Config) -> Result<(), Error> {
        let ctx = format!("cannot update stream `{}`", config.name);
        match self {
            Backend::Nats(js) => js
                .update_stream(config)
                .await
                .map(|_| ())
                .map_err(|e| js_err(ErrorKind::Provision, ctx)(e.into())),
            Backend::Memory(b) => b
                .update_stream(config)
                .map_err(|e| js_err(ErrorKind::Provision, ctx)(e.into())),
        }
    }

    /// A consumer's configuration, `None` when it does not exist.
    pub(crate) async fn consumer_config(
        &self,
        stream: &str,
        name: &str,
    ) -> Result<Option<consumer::Config>, Error> {
        match self {
            Backend::Nats(js) => {
                let s = js.get_stream_no_info(stream).await.map_err(|e| {
                    Error::new(
                        ErrorKind::Provision,
                        format!("cannot find stream `{stream}`"),
                    )
                    .with_source(e)
                })?;
                match s.consumer_info(name).await {
                    Ok(info) => Ok(Some(info.config)),
                    Err(e) => match e.kind() {
                        jetstream::context::ConsumerInfoErrorKind::NotFound => Ok(None),
                        jetstream::context::ConsumerInfoErrorKind::JetStream(je)
                            if je.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND =>
                        {
                            Ok(None)
                        }
                        _ => Err(Error::new(
                            ErrorKind::Provision,
                            format!("cannot look up consumer `{name}` on `{stream}`"),
                        )
                        .with_source(e)),
                    },
                }
            }
            Backend::Memory(b) => Ok(b.consumer_config(stream, name)),
        }
    }

    /// Creates or updates a consumer; returns its name.
    pub(crate) async fn put_consumer(
        &self,
        stream: &str,
        config: consumer::Config,
        update: bool,
    ) -> Result<String, Error> {
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
            Backend::Nats(js) => {
                let s = js.get_stream_no_info(stream).await.map_err(|e| {
                    Error::new(
                        ErrorKind::Provision,
                        format!("cannot find stream `{stream}`"),
                    )
                    .with_source(e)
                })?;
                if update {
                    s.update_consumer(config)
                        .await
                        .map(|_| name)
                        .map_err(|e| js_err(ErrorKind::Provision, ctx)(e.into()))
                } else {
                    s.create_consumer(config)
                        .await
                        .map(|_| name)
                        .map_err(|e| js_err(ErrorKind::Provision, ctx)(e.into()))
                }
            }
            Backend::Memory(b) => b
                .put_consumer(stream, config)
                .map_err(|e| js_err(ErrorKind::Provision, ctx)(e.into())),
        }
    }

    pub(crate) async fn delete_consumer(&self, stream: &str, name: &str) -> Result<(), Error> {
        match self {
            Backend::Nats(js) => js
                .delete_consumer_from_stream(name, stream)
                .await
                .map(|_| ())
                .map_err(|e| {
                    Error::new(
                        ErrorKind::JetStream,
                        format!("cannot remove consumer `{name}`"),
                    )
                    .with_source(e)
                }),
            Backend::Memory(b) => {
                b.delete_consumer(stream, name);
                Ok(())
            }
        }
    }

    /// A puller of a consumer's events.
    pub(crate) async fn puller(
        &self,
        stream: &str,
        name: &str,
        state: tokio::sync::watch::Receiver<crate::connection::ConnectionState>,
    ) -> Result<Puller, Error> {
        match self {
            Backend::Nats(js) => Ok(Puller::Nats(
                NatsPuller::new(js, stream, name, state).await?,
            )),
            Backend::Memory(b) => {
                if b.consumer_config(stream, name).is_none() {
                    return Err(Error::new(
                        ErrorKind::Provision,
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

    /// Publishes and waits for the acknowledgement, sending again with the same headers (so
    /// the same `Nats-Msg-Id`) after a timeout or a lost connection, `attempts` times in all.
    pub(crate) async fn publish_acked(
        &self,
        attempts: u32,
        subject: &str,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<PublishAck, PublishError> {
        let kept = (attempts > 1).then(|| headers.clone());
        self.publish_acked_with(attempts, subject, headers, payload, || kept.clone())
            .await
    }

    /// Like [`Backend::publish_acked`], with the headers of an attempt after the first made
    /// by `again` (the same headers again), so that the first attempt needs no copy of them.
    /// Should `again` have none, the last attempt's error is returned.
    pub(crate) async fn publish_acked_with(
        &self,
        attempts: u32,
        subject: &str,
        headers: HeaderMap,
        payload: Bytes,
        mut again: impl FnMut() -> Option<HeaderMap>,
    ) -> Result<PublishAck, PublishError> {
        let attempts = attempts.max(1);
        let mut attempt = 1;
        let mut headers = headers;
        loop {
            let result = match self
                .send(subject.to_owned(), headers, payload.clone())
                .await
            {
                Ok(f) => f.wait().await,
                Err(e) => Err(e),
            };
            let e = match result {
                Err(e) if attempt < attempts => e,
                other => return other,
            };
            if e.kind() == PublishErrorKind::StreamNotFound {
                if !self.stream_not_reached_yet(subject).await {
                    return Err(e);
                }
                tokio::time::sleep(NO_STREAM_PAUSE * attempt).await;
            } else if !retryable(&e.kind()) {
                return Err(e);
            }
            match again() {
                Some(h) => {
                    tracing::warn!(target: "eventbus::publish", %subject, attempt, error = %e, "publish not acknowledged; sending again with the same id");
                    headers = h;
                    attempt += 1;
                }
                None => return Err(e),
            }
        }
    }

    /// Whether a publish that found no stream (no responders) may find it on another attempt:
    /// unless the server says that no stream stores the subject. In a cluster, the subjects of
    /// a stream just created reach the other servers a moment later, and a stream whose
    /// servers are away has nobody to answer until one is back; a lookup that fails (the
    /// cluster electing a leader) cannot tell, and the attempts are bounded.
    pub(crate) async fn stream_not_reached_yet(&self, subject: &str) -> bool {
        !matches!(self.stream_by_subject(subject).await, Ok(None))
    }

    /// Sends a publish; the returned future gives its acknowledgement.
    pub(crate) async fn send(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<AckFuture, PublishError> {
        match self {
            Backend::Nats(js) => js
                .publish_with_headers(subject, headers, payload)
                .await
                .map(AckFuture::Nats),
            Backend::Memory(b) => Ok(AckFuture::Ready(b.publish(&subject, headers, payload))),
        }
    }

    /// The stream that stores a concrete subject; `None` if none does.
    pub(crate) async fn stream_by_subject(&self, subject: &str) -> Result<Option<String>, Error> {
        match self {
            Backend::Nats(js) => match js.stream_by_subject(subject).await {
                Ok(name) => Ok(Some(name)),
                Err(e) if e.kind() == jetstream::context::GetStreamByNameErrorKind::NotFound => {
                    Ok(None)
                }
                Err(e) => Err(Error::new(
                    ErrorKind::Read,
                    format!("cannot look up the stream that stores subject `{subject}`"),
                )
                .with_source(e)),
            },
            Backend::Memory(b) => Ok(b.stream_by_subject(subject)),
        }
    }

    /// The first message at or after `seq` on `filter`.
    pub(crate) async fn next_by_subject(
        &self,
        stream: &str,
        filter: &str,
        seq: u64,
    ) -> Result<Option<Stored>, Error> {
        match self {
            Backend::Nats(js) => {
                let s = js.get_stream_no_info(stream).await.map_err(|e| {
                    Error::new(ErrorKind::Read, format!("cannot open stream `{stream}`"))
                        .with_source(e)
                })?;
                match s
                    .raw_message_builder()
                    .sequence(seq)
                    .next_by_subject(filter.to_owned())
                    .send()
                    .await
                {
                    Ok(m) => Ok(Some(m.into())),
                    Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
                    Err(e) => Err(Error::new(
                        ErrorKind::Read,
                        format!("cannot read the messages on `{filter}`"),
                    )
                    .with_source(e)),
                }
            }
            Backend::Memory(b) => Ok(b.next_by_subject(stream, filter, seq).map(Into::into)),
        }
    }

    /// The message with sequence `seq`.
    pub(crate) async fn get(&self, stream: &str, seq: u64) -> Result<Stored, Error> {
        let ctx = || format!("no message {seq} in `{stream}`");
        match self {
            Backend::Nats(js) => {
                let s = js
                    .get_stream_no_info(stream)
                    .await
                    .map_err(|e| Error::new(ErrorKind::Read, ctx()).with_source(e))?;
                s.get_raw_message(seq)
                    .await
                    .map(Into::into)
                    .map_err(|e| Error::new(ErrorKind::Read, ctx()).with_source(e))
            }
            Backend::Memory(b) => b
                .get(stream, seq)
                .map(Into::into)
                .ok_or_else(|| Error::new(ErrorKind::Read, ctx())),
        }
    }

    /// The sequence of the last message on `filter` (0 if none) and how many messages it has.
    pub(crate) async fn last_and_count(
        &self,
        stream: &str,
        filter: &str,
    ) -> Result<(u64, u64), Error> {
        match self {
            Backend::Nats(js) => {
                let s = js.get_stream_no_info(stream).await.map_err(|e| {
                    Error::new(
                        ErrorKind::JetStream,
                        format!("cannot open stream `{stream}`"),
                    )
                    .with_source(e)
                })?;
                let last = match s.get_last_raw_message_by_subject(filter).await {
                    Ok(m) => m.sequence,
                    Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => 0,
                    Err(e) => {
                        return Err(Error::new(
                            ErrorKind::JetStream,
                            format!("cannot find the last message on `{filter}`"),
                        )
                        .with_source(e))
                    }
                };
                let info: serde_json::Value = js
                    .request(
                        format!("STREAM.INFO.{stream}"),
                        &serde_json::json!({ "subjects_filter": filter }),
                    )
                    .await
                    .map_err(|e| {
                        Error::new(
                            ErrorKind::JetStream,
                            format!("cannot count the messages on `{filter}`"),
                        )
                        .with_source(e)
                    })?;
                if let Some(err) = info.get("error") {
                    return Err(Error::new(
                        ErrorKind::JetStream,
                        format!("cannot count the messages on `{filter}`: {err}"),
                    ));
                }
                let count = info
                    .pointer("/state/subjects")
                    .and_then(|s| s.as_object())
                    .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
                    .unwrap_or(0);
                Ok((last, count))
            }
            Backend::Memory(b) => b
                .last_and_count(stream, filter)
                .ok_or_else(|| Error::new(ErrorKind::JetStream, format!("no stream `{stream}`"))),
        }
    }

    /// Removes one message from a stream.
    pub(crate) async fn delete_message(&self, stream: &str, seq: u64) -> Result<(), Error> {
        let ctx = || format!("cannot remove message {seq} from `{stream}`");
        match self {
            Backend::Nats(js) => {
                let s = js
                    .get_stream_no_info(stream)
                    .await
                    .map_err(|e| Error::new(ErrorKind::JetStream, ctx()).with_source(e))?;
                s.delete_message(seq)
                    .await
                    .map(|_| ())
                    .map_err(|e| Error::new(ErrorKind::JetStream, ctx()).with_source(e))
            }
            Backend::Memory(b) => {
                if b.delete_message(stream, seq) {
                    Ok(())
                } else {
                    Err(Error::new(ErrorKind::JetStream, ctx()))
                }
            }
        }
    }
}
