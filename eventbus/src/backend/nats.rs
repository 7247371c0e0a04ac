//! A NATS JetStream server: the JetStream API calls eventbus makes, and scans of stored
//! messages by stream gets and batched direct gets (ADR-31), which create no consumer.

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;

use super::Stored;
use crate::envelope::headers_without;
use crate::error::{Error, ErrorKind};

/// The server version that answers batched direct gets (ADR-31).
const BATCH_GET_MIN_SERVER_VERSION: (u64, u64, u64) = (2, 11, 0);

/// How many messages one batched direct get asks for.
const BATCH: usize = 512;

/// The headers a direct get adds to a stored message; a read returns the message's own only.
const DIRECT_GET_HEADERS: [&str; 6] = [
    "Nats-Stream",
    "Nats-Subject",
    "Nats-Sequence",
    "Nats-Time-Stamp",
    "Nats-Num-Pending",
    "Nats-Last-Sequence",
];

/// A connection to a JetStream server.
#[derive(Debug)]
pub(crate) struct Nats {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    /// The server's version, for feature checks.
    pub(crate) version: (u64, u64, u64),
    /// How long a request waits for its answer.
    pub(crate) timeout: Duration,
}

impl From<jetstream::message::StreamMessage> for Stored {
    fn from(m: jetstream::message::StreamMessage) -> Self {
        Stored {
            subject: m.subject.to_string(),
            sequence: m.sequence,
            headers: m.headers,
            payload: m.payload,
            time: m.time,
        }
    }
}

/// A stored message fetched as data (see [`Nats::get_as_data`]).
pub(crate) struct AsData {
    pub(crate) stored: Stored,
    /// Header lines that are not valid headers (not UTF-8, no colon, a bad name), escaped.
    pub(crate) unreadable_headers: Vec<String>,
}

/// Parses a raw header block (`NATS/1.0` line, then `Name: value` lines) leniently: valid lines
/// become headers, the others are returned apart, escaped.
fn headers_as_data(raw: &[u8]) -> (HeaderMap, Vec<String>) {
    use async_nats::header::{HeaderName, HeaderValue};
    use std::str::FromStr;
    let mut headers = HeaderMap::new();
    let mut unreadable = Vec::new();
    let mut lines = raw
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    // The status line.
    lines.next();
    for line in lines.filter(|l| !l.is_empty()) {
        let parsed = std::str::from_utf8(line).ok().and_then(|text| {
            let (name, value) = text.split_once(':')?;
            let name = HeaderName::from_str(name.trim()).ok()?;
            let value = HeaderValue::from_str(value.trim()).ok()?;
            Some((name, value))
        });
        match parsed {
            Some((name, value)) => headers.append(name, value),
            None => unreadable.push(line.escape_ascii().to_string()),
        }
    }
    (headers, unreadable)
}

impl Nats {
    pub(crate) fn new(
        client: async_nats::Client,
        version: (u64, u64, u64),
        timeout: Duration,
    ) -> Nats {
        let js = jetstream::ContextBuilder::new()
            .timeout(timeout)
            .build(client.clone());
        Nats {
            client,
            js,
            version,
            timeout,
        }
    }

    /// A stream by name (without asking for its info).
    async fn stream(&self, name: &str) -> Result<jetstream::stream::Stream<()>, Error> {
        self.js.get_stream_no_info(name).await.map_err(|e| {
            Error::new(ErrorKind::NotFound, format!("cannot open stream `{name}`")).with_source(e)
        })
    }

    /// Flushes what is still to be sent (within `flush_timeout`) and drains the connection.
    pub(crate) async fn close(&self, flush_timeout: Duration) -> Result<(), Error> {
        // Bounded: while the server is unreachable a flush waits for the next reconnect, which
        // may be minutes away; acks that do not get out mean redeliveries, not lost events.
        match tokio::time::timeout(flush_timeout, self.client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(target: "eventbus", error = %e, "cannot flush the last acks")
            }
            Err(_) => tracing::warn!(
                target: "eventbus",
                timeout = ?flush_timeout,
                state = ?self.client.connection_state(),
                "cannot flush the last acks in time; their events will be redelivered"
            ),
        }
        self.client.drain().await.map_err(|e| {
            Error::new(ErrorKind::Shutdown, "cannot drain the connection").with_source(e)
        })
    }

    pub(crate) async fn streams(&self) -> Result<Vec<stream::Config>, Error> {
        let infos: Vec<stream::Info> = self
            .js
            .streams()
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .map_err(|e| {
                Error::new(ErrorKind::Refused, "cannot list the server's streams").with_source(e)
            })?;
        Ok(infos.into_iter().map(|i| i.config).collect())
    }

    /// Creates a stream, or updates it (`update`).
    pub(crate) async fn put_stream(
        &self,
        config: stream::Config,
        update: bool,
        ctx: String,
    ) -> Result<(), Error> {
        let result: Result<(), crate::error::BoxError> = if update {
            self.js
                .update_stream(config)
                .await
                .map(|_| ())
                .map_err(Into::into)
        } else {
            self.js
                .create_stream(config)
                .await
                .map(|_| ())
                .map_err(Into::into)
        };
        result.map_err(|e| Error::new(ErrorKind::Incompatible, ctx).with_source(e))
    }

    /// A consumer's info (`$JS.API.CONSUMER.INFO`).
    async fn consumer_info(&self, stream: &str, name: &str) -> Result<consumer::Info, Error> {
        let s = self.stream(stream).await?;
        s.consumer_info(name).await.map_err(|e| {
            Error::new(
                ErrorKind::Refused,
                format!("cannot look up consumer `{name}` on `{stream}`"),
            )
            .with_source(e)
        })
    }

    /// Where a consumer stands: its ack floor, last delivered and unacknowledged counts.
    pub(crate) async fn consumer_position(
        &self,
        stream: &str,
        name: &str,
    ) -> Result<super::ConsumerPosition, Error> {
        let info = self.consumer_info(stream, name).await?;
        Ok(super::ConsumerPosition {
            ack_floor: info.ack_floor.stream_sequence,
            delivered: info.delivered.stream_sequence,
            ack_pending: info.num_ack_pending as u64,
        })
    }

    pub(crate) async fn consumer_config(
        &self,
        stream: &str,
        name: &str,
    ) -> Result<Option<consumer::Config>, Error> {
        let s = self.stream(stream).await?;
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
                    ErrorKind::Refused,
                    format!("cannot look up consumer `{name}` on `{stream}`"),
                )
                .with_source(e)),
            },
        }
    }

    pub(crate) async fn put_consumer(
        &self,
        stream: &str,
        config: consumer::Config,
        update: bool,
        ctx: String,
    ) -> Result<(), Error> {
        let s = self.stream(stream).await?;
        let result: Result<(), crate::error::BoxError> = if update {
            s.update_consumer(config)
                .await
                .map(|_| ())
                .map_err(Into::into)
        } else {
            s.create_consumer(config)
                .await
                .map(|_| ())
                .map_err(Into::into)
        };
        result.map_err(|e| Error::new(ErrorKind::Incompatible, ctx).with_source(e))
    }

    pub(crate) async fn delete_consumer(&self, stream: &str, name: &str) -> Result<(), Error> {
        self.js
            .delete_consumer_from_stream(name, stream)
            .await
            .map(|_| ())
            .map_err(|e| {
                Error::new(
                    ErrorKind::Refused,
                    format!("cannot remove consumer `{name}`"),
                )
                .with_source(e)
            })
    }

    /// A stream's figures (`$JS.API.STREAM.INFO`).
    pub(crate) async fn stream_figures(&self, name: &str) -> Result<super::StreamFigures, Error> {
        let s = self.js.get_stream(name).await.map_err(|e| {
            Error::new(
                ErrorKind::Refused,
                format!("cannot look up stream `{name}`"),
            )
            .with_source(e)
        })?;
        let st = &s.cached_info().state;
        Ok(super::StreamFigures {
            messages: st.messages,
            bytes: st.bytes,
            first_sequence: st.first_sequence,
            last_sequence: st.last_sequence,
            consumers: st.consumer_count,
            subjects: st.subjects_count,
        })
    }

    /// A consumer's figures (`$JS.API.CONSUMER.INFO`).
    pub(crate) async fn consumer_figures(
        &self,
        stream: &str,
        name: &str,
    ) -> Result<super::ConsumerFigures, Error> {
        let info = self.consumer_info(stream, name).await?;
        Ok(super::ConsumerFigures {
            pending: info.num_pending,
            ack_pending: info.num_ack_pending as u64,
            redelivered: info.num_redelivered as u64,
            waiting: info.num_waiting as u64,
        })
    }

    pub(crate) async fn stream_by_subject(&self, subject: &str) -> Result<Option<String>, Error> {
        match self.js.stream_by_subject(subject).await {
            Ok(name) => Ok(Some(name)),
            Err(e) if e.kind() == jetstream::context::GetStreamByNameErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(Error::new(
                ErrorKind::Refused,
                format!("cannot look up the stream that stores subject `{subject}`"),
            )
            .with_source(e)),
        }
    }

    pub(crate) async fn get(&self, stream: &str, seq: u64) -> Result<Stored, Error> {
        let ctx = || format!("no message {seq} in `{stream}`");
        self.stream(stream)
            .await?
            .get_raw_message(seq)
            .await
            .map(Into::into)
            .map_err(|e| Error::new(ErrorKind::NotFound, ctx()).with_source(e))
    }

    /// Message `seq` of `stream`, fetched as data through the stream's message-get API (JSON,
    /// base64 headers and body), so headers the client could not parse on a delivery do not
    /// break the connection here; those are returned apart, escaped.
    pub(crate) async fn get_as_data(&self, stream: &str, seq: u64) -> Result<AsData, Error> {
        let ctx = || format!("cannot get message {seq} of `{stream}`");
        let answer: serde_json::Value = self
            .js
            .request(
                format!("STREAM.MSG.GET.{stream}"),
                &serde_json::json!({ "seq": seq }),
            )
            .await
            .map_err(|e| Error::new(ErrorKind::Refused, ctx()).with_source(e))?;
        if let Some(e) = answer.get("error") {
            let description = e
                .get("description")
                .and_then(|d| d.as_str())
                .unwrap_or("unknown error");
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("{}: {description}", ctx()),
            ));
        }
        let m = answer.get("message").ok_or_else(|| {
            Error::new(
                ErrorKind::Refused,
                format!("{}: no message in the answer", ctx()),
            )
        })?;
        let field = |name: &str| m.get(name).and_then(|v| v.as_str()).unwrap_or_default();
        let decode = |name: &str| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(field(name))
                .map_err(|e| {
                    Error::new(
                        ErrorKind::Decode,
                        format!("{}: its `{name}` is not base64", ctx()),
                    )
                    .with_source(e)
                })
        };
        let (headers, unreadable) = headers_as_data(&decode("hdrs")?);
        let time = time::OffsetDateTime::parse(
            field("time"),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        Ok(AsData {
            stored: Stored {
                subject: field("subject").to_owned(),
                sequence: seq,
                headers,
                payload: decode("data")?.into(),
                time,
            },
            unreadable_headers: unreadable,
        })
    }

    /// Notices of the events `consumer` of `stream` gave up on (the server's max-deliveries
    /// advisories), shared among the instances of the consumer (a queue group). The server
    /// sends such an advisory only while someone pulls, and it reads a connection's protocol in
    /// order: a worker that subscribes before its first pull request misses none meant for it.
    pub(crate) async fn given_up(
        &self,
        stream: &str,
        consumer: &str,
    ) -> Result<async_nats::Subscriber, Error> {
        let subject = format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}");
        let sub = self
            .client
            .queue_subscribe(subject.clone(), format!("eventbus-{consumer}"))
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Connect,
                    format!("cannot subscribe to `{subject}`"),
                )
                .with_source(e)
            })?;
        Ok(sub)
    }

    pub(crate) async fn last_and_count(
        &self,
        stream: &str,
        filter: &str,
    ) -> Result<(u64, u64), Error> {
        let s = self.stream(stream).await?;
        let last = match s.get_last_raw_message_by_subject(filter).await {
            Ok(m) => m.sequence,
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => 0,
            Err(e) => {
                return Err(Error::new(
                    ErrorKind::Refused,
                    format!("cannot find the last message on `{filter}`"),
                )
                .with_source(e))
            }
        };
        let info: serde_json::Value = self
            .js
            .request(
                format!("STREAM.INFO.{stream}"),
                &serde_json::json!({ "subjects_filter": filter }),
            )
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Refused,
                    format!("cannot count the messages on `{filter}`"),
                )
                .with_source(e)
            })?;
        if let Some(err) = info.get("error") {
            return Err(Error::new(
                ErrorKind::Refused,
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

    pub(crate) async fn delete_message(&self, stream: &str, seq: u64) -> Result<(), Error> {
        let ctx = || format!("cannot remove message {seq} from `{stream}`");
        self.stream(stream)
            .await?
            .delete_message(seq)
            .await
            .map(|_| ())
            .map_err(|e| Error::new(ErrorKind::Refused, ctx()).with_source(e))
    }

    /// Opens a scan of stream `name` on `filter` from sequence `from`: reads the range of
    /// sequences the stream holds now, and whether batched direct gets can read it.
    pub(crate) async fn scan(&self, name: &str, filter: String, from: u64) -> Result<Scan, Error> {
        // Its info, asked for once here, gives the range the scan covers.
        let s = self.js.get_stream(name).await.map_err(|e| {
            Error::new(ErrorKind::NotFound, format!("cannot open stream `{name}`")).with_source(e)
        })?;
        let info = s.cached_info();
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        Ok(Scan {
            batched: info.config.allow_direct && self.version >= BATCH_GET_MIN_SERVER_VERSION,
            replicated: info.config.num_replicas > 1,
            stream: s,
            client: self.client.clone(),
            name: name.to_owned(),
            last,
            timeout: self.timeout,
            filter,
            next: from.max(first).max(1),
            buffer: VecDeque::new(),
            inbox: None,
            done: last == 0,
        })
    }
}

/// A scan of a stream's messages on one filter, up to the last sequence the stream held when
/// it was opened: with nats-server 2.11 or newer (and `allow_direct`, which eventbus sets)
/// batched direct gets fetch up to 512 messages per request; otherwise one get per message.
pub(crate) struct Scan {
    stream: jetstream::stream::Stream,
    client: async_nats::Client,
    name: String,
    last: u64,
    /// The server answers batched direct gets on this stream (2.11+, `allow_direct`).
    batched: bool,
    /// Replicas may answer direct gets, and one may lag behind the leader.
    replicated: bool,
    timeout: Duration,
    filter: String,
    /// The next sequence to look at.
    next: u64,
    /// Fetched, not yet returned.
    buffer: VecDeque<Stored>,
    /// Batched direct gets: the inbox their answers come to.
    inbox: Option<(async_nats::Subject, async_nats::Subscriber)>,
    /// Nothing more to fetch.
    done: bool,
}

impl Scan {
    /// The next message, `None` at the end.
    pub(crate) async fn next(&mut self) -> Option<Result<Stored, Error>> {
        loop {
            if let Some(m) = self.buffer.pop_front() {
                if m.sequence > self.last {
                    return None;
                }
                return Some(Ok(m));
            }
            if self.done {
                return None;
            }
            if let Err(e) = self.fetch().await {
                self.done = true;
                return Some(Err(e));
            }
        }
    }

    fn read_error(&self, what: String) -> Error {
        Error::new(
            ErrorKind::Refused,
            format!(
                "cannot read the messages on `{}` in `{}`: {what}",
                self.filter, self.name
            ),
        )
    }

    /// Fetches the next messages into the buffer, or marks the scan done.
    async fn fetch(&mut self) -> Result<(), Error> {
        if self.next > self.last {
            self.done = true;
            return Ok(());
        }
        if self.batched {
            self.fetch_batch().await?;
            if self.done && self.replicated {
                // A replica answered and may lag behind the leader: the leader confirms the end.
                self.done = false;
                self.batched = false;
                return self.fetch_one().await;
            }
            Ok(())
        } else {
            self.fetch_one().await
        }
    }

    /// One message, from the stream's leader (`STREAM.MSG.GET`).
    async fn fetch_one(&mut self) -> Result<(), Error> {
        let got = self
            .stream
            .raw_message_builder()
            .sequence(self.next)
            .next_by_subject(self.filter.clone())
            .send()
            .await;
        match got {
            Ok(m) if m.sequence <= self.last => {
                self.next = m.sequence + 1;
                self.buffer.push_back(m.into());
            }
            Ok(_) => self.done = true,
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => self.done = true,
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
        if self.inbox.is_none() {
            let inbox: async_nats::Subject = self.client.new_inbox().into();
            let sub = self.client.subscribe(inbox.clone()).await.map_err(|e| {
                self.read_error("cannot subscribe to an inbox".to_owned())
                    .with_source(e)
            })?;
            self.inbox = Some((inbox, sub));
        }
        let request =
            serde_json::json!({ "seq": self.next, "next_by_subj": self.filter, "batch": BATCH });
        let subject = format!("$JS.API.DIRECT.GET.{}", self.name);
        let (inbox, _) = self.inbox.as_ref().expect("subscribed");
        self.client
            .publish_with_reply(subject, inbox.clone(), Bytes::from(request.to_string()))
            .await
            .map_err(|e| {
                self.read_error("cannot send a direct get".to_owned())
                    .with_source(e)
            })?;
        let timeout = self.timeout;
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
                            self.filter, self.name
                        ),
                    ));
                }
            };
            match m.status.map(|s| s.as_u16()) {
                None => {
                    let mut m = jetstream::message::StreamMessage::try_from(m).map_err(|e| {
                        self.read_error("a direct get answered a malformed message".to_owned())
                            .with_source(e)
                    })?;
                    m.headers = strip_direct_get_headers(&m.headers);
                    self.next = m.sequence + 1;
                    self.buffer.push_back(m.into());
                }
                // End of the batch: `Nats-Num-Pending` more match after it.
                Some(204) => {
                    let pending = m
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("Nats-Num-Pending"))
                        .map(|v| v.as_str().trim().to_owned());
                    if pending.as_deref() == Some("0") || self.next > self.last {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_as_data_keeps_the_valid_lines_and_escapes_the_others() {
        let raw =
            b"NATS/1.0\r\nce-id: e1\r\nx-bin: \xff\xfe\r\nno colon here\r\nce-type: t\r\n\r\n";
        let (headers, unreadable) = headers_as_data(raw);
        assert_eq!(headers.get("ce-id").map(|v| v.as_str()), Some("e1"));
        assert_eq!(headers.get("ce-type").map(|v| v.as_str()), Some("t"));
        assert_eq!(unreadable, ["x-bin: \\xff\\xfe", "no colon here"]);
        assert_eq!(headers_as_data(b"").0.len(), 0, "no headers at all");
    }
}
