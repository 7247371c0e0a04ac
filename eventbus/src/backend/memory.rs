//! The in-process broker: JetStream's semantics for everything eventbus uses, in memory.
//!
//! Streams hold messages by sequence with a duplicate window (`Nats-Msg-Id`) and
//! expected-last-subject-sequence checks; durable pull consumers track, per message, the
//! deliveries and the deadline of its ack wait, and honour ack, nak (with a delay), term and
//! in-progress acks, max deliver and the deliver policies. Time is tokio's, so under a paused
//! clock ack waits and backoff delays elapse without real waiting.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::stream;
use async_nats::HeaderMap;
use bytes::Bytes;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::rules::{filter_covers, filters_overlap};

/// The largest message the in-process broker accepts (as nats-server's default).
pub(crate) const MAX_PAYLOAD: usize = 1024 * 1024;

pub(crate) use super::Stored;

#[derive(Debug)]
struct Pending {
    deliveries: u64,
    /// When the server redelivers it if it is not acked by then.
    deadline: Instant,
    /// Whether it is waiting for a redelivery (nak'd or ack wait expired) rather than in a
    /// handler's hands.
    waiting: bool,
}

#[derive(Debug)]
struct Consumer {
    config: consumer::Config,
    /// The next stream sequence to look at for a first delivery.
    cursor: u64,
    /// Delivered and not yet acked or terminated, by stream sequence: kept while the message
    /// may be redelivered.
    pending: BTreeMap<u64, Pending>,
}

#[derive(Debug)]
struct StreamState {
    config: stream::Config,
    messages: BTreeMap<u64, Stored>,
    last_seq: u64,
    dedup: HashMap<String, (u64, Instant)>,
    dedup_order: VecDeque<(Instant, String)>,
    consumers: BTreeMap<String, Consumer>,
    bytes: u64,
}

#[derive(Debug, Default)]
struct State {
    streams: BTreeMap<String, StreamState>,
}

/// The broker. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Broker {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    changed: Notify,
    /// Events a consumer gave up on (max deliveries reached unsettled), as the server's
    /// advisories tell them: stream, consumer, stream sequence, deliveries.
    given_up: tokio::sync::broadcast::Sender<GivenUpNotice>,
    base_instant: Instant,
    base_time: OffsetDateTime,
}

/// An event a consumer gave up on: stream, consumer, stream sequence, deliveries.
pub(crate) type GivenUpNotice = (String, String, u64, u64);

/// What a consumer's delivery carries.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) message: Stored,
    pub(crate) stream: String,
    pub(crate) consumer: String,
    pub(crate) delivered: u64,
    pub(crate) pending: u64,
    explicit: bool,
}

/// How a delivery is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    Ack,
    Nak(Option<Duration>),
    Progress,
    Term,
}

/// Why a stream or consumer request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused(pub(crate) String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.as_str())
}

impl Default for Broker {
    fn default() -> Self {
        Broker::new()
    }
}

impl Broker {
    pub(crate) fn new() -> Self {
        Broker {
            inner: Arc::new(Shared {
                state: Mutex::new(State::default()),
                changed: Notify::new(),
                given_up: tokio::sync::broadcast::channel(1024).0,
                base_instant: Instant::now(),
                base_time: OffsetDateTime::now_utc(),
            }),
        }
    }

    /// The process's broker of that name (`memory://NAME`; the empty name for `memory://`),
    /// made on first use. Buses with the same name share it, as instances share a server; it
    /// lives as long as the process.
    pub(crate) fn named(name: &str) -> Broker {
        static BROKERS: std::sync::OnceLock<Mutex<HashMap<String, Broker>>> =
            std::sync::OnceLock::new();
        BROKERS
            .get_or_init(Default::default)
            .lock()
            .expect("brokers lock")
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    fn now_time(&self) -> OffsetDateTime {
        self.inner.base_time + (Instant::now() - self.inner.base_instant)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().expect("broker state lock")
    }

    /// Every stream's configuration.
    pub(crate) fn streams(&self) -> Vec<stream::Config> {
        self.lock()
            .streams
            .values()
            .map(|s| s.config.clone())
            .collect()
    }

    /// Creates a stream; refuses a name in use or subjects another stream holds. As on the
    /// server, creating a stream that exists with the same configuration succeeds (instances
    /// starting at once both create it); with another configuration it is refused.
    pub(crate) fn create_stream(&self, mut config: stream::Config) -> Result<(), Refused> {
        with_default_window(&mut config);
        let mut st = self.lock();
        if let Some(existing) = st.streams.get(&config.name) {
            if existing.config == config {
                return Ok(());
            }
            return Err(Refused(format!(
                "stream name already in use with a different configuration: {}",
                config.name
            )));
        }
        for other in st.streams.values() {
            for a in &other.config.subjects {
                for b in &config.subjects {
                    if filters_overlap(a, b) {
                        return Err(Refused(format!(
                            "subjects overlap with an existing stream: `{b}` and `{a}` of `{}`",
                            other.config.name
                        )));
                    }
                }
            }
        }
        st.streams.insert(
            config.name.clone(),
            StreamState {
                config,
                messages: BTreeMap::new(),
                last_seq: 0,
                dedup: HashMap::new(),
                dedup_order: VecDeque::new(),
                consumers: BTreeMap::new(),
                bytes: 0,
            },
        );
        Ok(())
    }

    /// Updates a stream; storage and retention cannot change, as on a server.
    pub(crate) fn update_stream(&self, mut config: stream::Config) -> Result<(), Refused> {
        with_default_window(&mut config);
        let mut st = self.lock();
        let s = st
            .streams
            .get_mut(&config.name)
            .ok_or_else(|| Refused(format!("stream not found: {}", config.name)))?;
        if s.config.storage != config.storage {
            return Err(Refused(
                "stream configuration update can not change storage type".into(),
            ));
        }
        if s.config.retention != config.retention {
            return Err(Refused(
                "stream configuration update can not change retention policy".into(),
            ));
        }
        s.config = config;
        Ok(())
    }

    /// The stream whose subjects match a concrete subject.
    pub(crate) fn stream_by_subject(&self, subject: &str) -> Option<String> {
        self.lock()
            .streams
            .values()
            .find(|s| s.config.subjects.iter().any(|f| filter_covers(f, subject)))
            .map(|s| s.config.name.clone())
    }

    /// The first and last sequences a stream holds now (`(first, last)`; `last == 0` when it
    /// has never held a message).
    pub(crate) fn stream_range(&self, name: &str) -> Option<(u64, u64)> {
        let st = self.lock();
        let s = st.streams.get(name)?;
        let first = s.messages.keys().next().copied().unwrap_or(s.last_seq + 1);
        Some((first, s.last_seq))
    }

    /// A stream's figures, as the server's stream info gives them.
    pub(crate) fn stream_figures(&self, name: &str) -> Option<super::StreamFigures> {
        let st = self.lock();
        let s = st.streams.get(name)?;
        let first = match s.messages.keys().next() {
            Some(f) => *f,
            None if s.last_seq == 0 => 0,
            None => s.last_seq + 1,
        };
        Some(super::StreamFigures {
            messages: s.messages.len() as u64,
            bytes: s.bytes,
            first_sequence: first,
            last_sequence: s.last_seq,
            consumers: s.consumers.len(),
            subjects: s
                .messages
                .values()
                .map(|m| m.subject.as_str())
                .collect::<std::collections::HashSet<_>>()
                .len() as u64,
        })
    }

    /// A consumer's figures, as the server's consumer info gives them: events not yet
    /// delivered, delivered and not acked, redelivered among those; no pull waits here.
    pub(crate) fn consumer_figures(
        &self,
        stream: &str,
        name: &str,
    ) -> Option<super::ConsumerFigures> {
        let st = self.lock();
        let s = st.streams.get(stream)?;
        let c = s.consumers.get(name)?;
        let pending = s
            .messages
            .range(c.cursor..)
            .filter(|(_, m)| matches_consumer(&c.config, &m.subject))
            .count() as u64;
        Some(super::ConsumerFigures {
            pending,
            ack_pending: c.pending.len() as u64,
            redelivered: c.pending.values().filter(|p| p.deliveries > 1).count() as u64,
            waiting: 0,
        })
    }

    /// The first message at or after `seq` whose subject `filter` matches.
    pub(crate) fn next_by_subject(&self, stream: &str, filter: &str, seq: u64) -> Option<Stored> {
        let st = self.lock();
        let s = st.streams.get(stream)?;
        s.messages
            .range(seq..)
            .map(|(_, m)| m)
            .find(|m| filter_covers(filter, &m.subject))
            .cloned()
    }

    /// The message with sequence `seq`.
    pub(crate) fn get(&self, stream: &str, seq: u64) -> Option<Stored> {
        self.lock().streams.get(stream)?.messages.get(&seq).cloned()
    }

    /// The last message whose subject `filter` matches, and how many match.
    pub(crate) fn last_and_count(&self, stream: &str, filter: &str) -> Option<(u64, u64)> {
        let st = self.lock();
        let s = st.streams.get(stream)?;
        let mut last = 0;
        let mut count = 0;
        for (seq, m) in &s.messages {
            if filter_covers(filter, &m.subject) {
                last = *seq;
                count += 1;
            }
        }
        Some((last, count))
    }

    /// Removes one message.
    pub(crate) fn delete_message(&self, stream: &str, seq: u64) -> bool {
        let mut st = self.lock();
        let Some(s) = st.streams.get_mut(stream) else {
            return false;
        };
        match s.messages.remove(&seq) {
            Some(m) => {
                s.bytes -= m.payload.len() as u64;
                true
            }
            None => false,
        }
    }

    /// Publishes a message, with JetStream's checks, in the server's order: a stream must hold
    /// the subject; the message must fit; `Nats-Expected-Last-Sequence` and
    /// `Nats-Expected-Last-Subject-Sequence` (with its `-Subject` filter) must hold; then a
    /// `Nats-Msg-Id` seen within the duplicate window returns the earlier acknowledgement
    /// marked duplicate.
    pub(crate) fn publish(
        &self,
        subject: &str,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<PublishAck, PublishError> {
        let size = payload.len()
            + headers
                .iter()
                .map(|(k, v)| {
                    AsRef::<str>::as_ref(k).len()
                        + v.iter().map(|x| x.as_str().len() + 4).sum::<usize>()
                })
                .sum::<usize>();
        if size > MAX_PAYLOAD {
            return Err(PublishError::with_source(
                PublishErrorKind::MaxPayloadExceeded,
                format!(
                    "message of {size} bytes exceeds the maximum payload of {MAX_PAYLOAD} bytes"
                ),
            ));
        }
        let now = Instant::now();
        let time = self.now_time();
        let mut st = self.lock();
        let Some(s) = st
            .streams
            .values_mut()
            .find(|s| s.config.subjects.iter().any(|f| filter_covers(f, subject)))
        else {
            return Err(PublishError::new(PublishErrorKind::StreamNotFound));
        };
        if s.config.max_message_size > 0 && payload.len() > s.config.max_message_size as usize {
            return Err(PublishError::with_source(
                PublishErrorKind::Other,
                "message size exceeds maximum allowed",
            ));
        }
        // Forget ids older than the duplicate window.
        let window = s.config.duplicate_window;
        while let Some((at, _)) = s.dedup_order.front() {
            if now.duration_since(*at) < window {
                break;
            }
            let (_, id) = s.dedup_order.pop_front().expect("front");
            if s.dedup
                .get(&id)
                .is_some_and(|(_, t)| now.duration_since(*t) >= window)
            {
                s.dedup.remove(&id);
            }
        }
        if let Some(expected) = header(&headers, "Nats-Expected-Last-Sequence") {
            let expected: u64 = expected.parse().unwrap_or(u64::MAX);
            if expected != s.last_seq {
                return Err(PublishError::with_source(
                    PublishErrorKind::WrongLastSequence,
                    format!("wrong last sequence: {}", s.last_seq),
                ));
            }
        }
        if let Some(expected) = header(&headers, "Nats-Expected-Last-Subject-Sequence") {
            let expected: u64 = expected.parse().unwrap_or(u64::MAX);
            let filter =
                header(&headers, "Nats-Expected-Last-Subject-Sequence-Subject").unwrap_or(subject);
            let last = s
                .messages
                .iter()
                .rev()
                .find(|(_, m)| filter_covers(filter, &m.subject))
                .map(|(seq, _)| *seq)
                .unwrap_or(0);
            if expected != last {
                return Err(PublishError::with_source(
                    PublishErrorKind::WrongLastSequence,
                    format!("wrong last sequence: {last}"),
                ));
            }
        }
        // As on the server, the expected sequences are checked before the duplicate window: a
        // copy sent again after the first was stored, with the same expected sequence, is
        // refused as a wrong last sequence, not acknowledged as a duplicate.
        let msg_id = header(&headers, "Nats-Msg-Id").map(str::to_owned);
        if let Some(id) = &msg_id {
            if let Some((seq, _)) = s.dedup.get(id) {
                return Ok(PublishAck {
                    stream: s.config.name.clone(),
                    sequence: *seq,
                    duplicate: true,
                    ..Default::default()
                });
            }
        }
        s.last_seq += 1;
        let seq = s.last_seq;
        s.bytes += payload.len() as u64;
        // Stored with every header it came with, the `Nats-Expected-*` ones too, as the server
        // does.
        s.messages.insert(
            seq,
            Stored {
                subject: subject.to_owned(),
                sequence: seq,
                headers,
                payload,
                time,
            },
        );
        if let Some(id) = msg_id {
            s.dedup.insert(id.clone(), (seq, now));
            s.dedup_order.push_back((now, id));
        }
        // Limits: age and bytes, oldest first.
        if !s.config.max_age.is_zero() {
            let cutoff = time - s.config.max_age;
            while let Some((&first, m)) = s.messages.iter().next() {
                if m.time >= cutoff {
                    break;
                }
                s.bytes -= m.payload.len() as u64;
                s.messages.remove(&first);
            }
        }
        if s.config.max_bytes > 0 {
            while s.bytes > s.config.max_bytes as u64 {
                let Some((&first, _)) = s.messages.iter().next() else {
                    break;
                };
                let m = s.messages.remove(&first).expect("present");
                s.bytes -= m.payload.len() as u64;
            }
        }
        let name = s.config.name.clone();
        drop(st);
        self.inner.changed.notify_waiters();
        Ok(PublishAck {
            stream: name,
            sequence: seq,
            duplicate: false,
            ..Default::default()
        })
    }

    /// Where a consumer stands (see [`super::ConsumerPosition`]).
    pub(crate) fn consumer_position(
        &self,
        stream: &str,
        name: &str,
    ) -> Option<super::ConsumerPosition> {
        let st = self.lock();
        let c = st.streams.get(stream)?.consumers.get(name)?;
        let delivered = c.cursor.saturating_sub(1);
        Some(super::ConsumerPosition {
            ack_floor: c.pending.keys().next().map_or(delivered, |first| first - 1),
            delivered,
            ack_pending: c.pending.len() as u64,
        })
    }

    /// Notices of the events consumers give up on (see [`GivenUpNotice`]).
    pub(crate) fn given_up(&self) -> tokio::sync::broadcast::Receiver<GivenUpNotice> {
        self.inner.given_up.subscribe()
    }

    /// A consumer's configuration.
    pub(crate) fn consumer_config(&self, stream: &str, name: &str) -> Option<consumer::Config> {
        Some(
            self.lock()
                .streams
                .get(stream)?
                .consumers
                .get(name)?
                .config
                .clone(),
        )
    }

    /// Creates or updates a consumer. Deliver, ack and replay policies cannot change.
    pub(crate) fn put_consumer(
        &self,
        stream: &str,
        config: consumer::Config,
    ) -> Result<String, Refused> {
        let name = config
            .durable_name
            .clone()
            .or_else(|| config.name.clone())
            .ok_or_else(|| Refused("consumer needs a name".into()))?;
        let mut st = self.lock();
        let s = st
            .streams
            .get_mut(stream)
            .ok_or_else(|| Refused(format!("stream not found: {stream}")))?;
        if let Some(c) = s.consumers.get_mut(&name) {
            if c.config.deliver_policy != config.deliver_policy {
                return Err(Refused("deliver policy can not be updated".into()));
            }
            if c.config.ack_policy != config.ack_policy {
                return Err(Refused("ack policy can not be updated".into()));
            }
            if c.config.replay_policy != config.replay_policy {
                return Err(Refused("replay policy can not be updated".into()));
            }
            c.config = config;
            return Ok(name);
        }
        let last = s.last_seq;
        let cursor = match &config.deliver_policy {
            DeliverPolicy::All => 1,
            DeliverPolicy::New => last + 1,
            DeliverPolicy::Last => s
                .messages
                .iter()
                .rev()
                .find(|(_, m)| matches_consumer(&config, &m.subject))
                .map(|(q, _)| *q)
                .unwrap_or(last + 1),
            DeliverPolicy::LastPerSubject => {
                // Start at the first message that is the last of its subject.
                let mut lasts: HashMap<&str, u64> = HashMap::new();
                for (q, m) in &s.messages {
                    if matches_consumer(&config, &m.subject) {
                        lasts.insert(&m.subject, *q);
                    }
                }
                lasts.values().min().copied().unwrap_or(last + 1)
            }
            DeliverPolicy::ByStartSequence { start_sequence } => *start_sequence,
            DeliverPolicy::ByStartTime { start_time } => s
                .messages
                .iter()
                .find(|(_, m)| m.time >= *start_time)
                .map(|(q, _)| *q)
                .unwrap_or(last + 1),
        };
        s.consumers.insert(
            name.clone(),
            Consumer {
                config,
                cursor,
                pending: BTreeMap::new(),
            },
        );
        Ok(name)
    }

    /// Removes a consumer.
    pub(crate) fn delete_consumer(&self, stream: &str, name: &str) -> bool {
        let mut st = self.lock();
        st.streams
            .get_mut(stream)
            .is_some_and(|s| s.consumers.remove(name).is_some())
    }

    /// Takes the next delivery for a consumer, if one is due now; otherwise the time when one
    /// may become due (a redelivery), if any.
    fn try_next(
        &self,
        stream: &str,
        name: &str,
    ) -> Result<Result<Delivery, Option<Instant>>, Refused> {
        let now = Instant::now();
        let mut st = self.lock();
        let s = st
            .streams
            .get_mut(stream)
            .ok_or_else(|| Refused(format!("stream not found: {stream}")))?;
        let StreamState {
            messages,
            consumers,
            ..
        } = s;
        let c = consumers
            .get_mut(name)
            .ok_or_else(|| Refused(format!("consumer not found: {name}")))?;
        let explicit = c.config.ack_policy != AckPolicy::None;
        let max_deliver = if c.config.max_deliver > 0 {
            c.config.max_deliver as u64
        } else {
            u64::MAX
        };
        // Redeliveries first, oldest message first.
        let mut next_due: Option<Instant> = None;
        let mut due = None;
        let mut dropped = Vec::new();
        for (seq, p) in c.pending.iter_mut() {
            if p.deadline <= now {
                if !messages.contains_key(seq) {
                    dropped.push(*seq);
                    continue;
                }
                if p.deliveries >= max_deliver {
                    // Max deliveries reached: the server stops delivering it, and says so.
                    dropped.push(*seq);
                    let _ = self.inner.given_up.send((
                        stream.to_owned(),
                        name.to_owned(),
                        *seq,
                        p.deliveries,
                    ));
                    continue;
                }
                due = Some(*seq);
                break;
            }
            next_due = Some(next_due.map_or(p.deadline, |d: Instant| d.min(p.deadline)));
        }
        for seq in dropped {
            c.pending.remove(&seq);
        }
        let ack_wait = if c.config.ack_wait.is_zero() {
            Duration::from_secs(30)
        } else {
            c.config.ack_wait
        };
        let pick = match due {
            Some(seq) => {
                let p = c.pending.get_mut(&seq).expect("due");
                p.deliveries += 1;
                p.deadline = now + ack_wait;
                p.waiting = false;
                Some((seq, p.deliveries))
            }
            None => {
                let mut found = None;
                for (seq, m) in messages.range(c.cursor..) {
                    if matches_consumer(&c.config, &m.subject) {
                        found = Some(*seq);
                        break;
                    }
                }
                match found {
                    Some(seq) => {
                        c.cursor = seq + 1;
                        if explicit {
                            c.pending.insert(
                                seq,
                                Pending {
                                    deliveries: 1,
                                    deadline: now + ack_wait,
                                    waiting: false,
                                },
                            );
                        }
                        Some((seq, 1))
                    }
                    None => {
                        c.cursor = c
                            .cursor
                            .max(messages.keys().next_back().map_or(c.cursor, |l| l + 1));
                        None
                    }
                }
            }
        };
        let Some((seq, delivered)) = pick else {
            return Ok(Err(next_due));
        };
        let pending = messages
            .range(c.cursor..)
            .filter(|(_, m)| matches_consumer(&c.config, &m.subject))
            .count() as u64;
        Ok(Ok(Delivery {
            message: messages.get(&seq).expect("present").clone(),
            stream: stream.to_owned(),
            consumer: name.to_owned(),
            delivered,
            pending,
            explicit,
        }))
    }

    /// Waits for the next delivery of a consumer; `None` if the consumer or stream is gone.
    pub(crate) async fn next(&self, stream: &str, name: &str) -> Option<Delivery> {
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.try_next(stream, name) {
                Err(_) => return None,
                Ok(Ok(d)) => return Some(d),
                Ok(Err(Some(at))) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                Ok(Err(None)) => notified.await,
            }
        }
    }

    /// Settles a delivery.
    pub(crate) fn settle(&self, d: &Delivery, how: Settle) {
        if !d.explicit {
            return;
        }
        let now = Instant::now();
        let mut st = self.lock();
        let Some(c) = st
            .streams
            .get_mut(&d.stream)
            .and_then(|s| s.consumers.get_mut(&d.consumer))
        else {
            return;
        };
        let seq = d.message.sequence;
        let ack_wait = if c.config.ack_wait.is_zero() {
            Duration::from_secs(30)
        } else {
            c.config.ack_wait
        };
        match how {
            Settle::Ack => {
                c.pending.remove(&seq);
            }
            Settle::Term => {
                c.pending.remove(&seq);
            }
            Settle::Progress => {
                if let Some(p) = c.pending.get_mut(&seq) {
                    if !p.waiting {
                        p.deadline = now + ack_wait;
                    }
                }
            }
            Settle::Nak(delay) => {
                if let Some(p) = c.pending.get_mut(&seq) {
                    p.waiting = true;
                    p.deadline = now + delay.unwrap_or_default();
                }
            }
        }
        drop(st);
        self.inner.changed.notify_waiters();
    }

    /// Whether no consumer has anything to deliver or awaiting an ack.
    pub(crate) fn idle(&self) -> bool {
        let st = self.lock();
        st.streams.values().all(|s| {
            s.consumers.values().all(|c| {
                let max_deliver = if c.config.max_deliver > 0 {
                    c.config.max_deliver as u64
                } else {
                    u64::MAX
                };
                c.pending
                    .values()
                    .all(|p| p.waiting && p.deliveries >= max_deliver)
                    && !s
                        .messages
                        .range(c.cursor..)
                        .any(|(_, m)| matches_consumer(&c.config, &m.subject))
            })
        })
    }

    /// A future that resolves when something changes in the broker (enable it before
    /// checking the state it waits for).
    pub(crate) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.changed.notified()
    }
}

/// A stream's duplicate window as the server sets it when none is given: 2 minutes, or the
/// max age if that is shorter.
fn with_default_window(config: &mut stream::Config) {
    if config.duplicate_window.is_zero() {
        let default = Duration::from_secs(120);
        config.duplicate_window = if config.max_age.is_zero() {
            default
        } else {
            config.max_age.min(default)
        };
    }
}

fn matches_consumer(c: &consumer::Config, subject: &str) -> bool {
    if !c.filter_subjects.is_empty() {
        return c.filter_subjects.iter().any(|f| filter_covers(f, subject));
    }
    c.filter_subject.is_empty() || filter_covers(&c.filter_subject, subject)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(name: &str, subjects: &[&str]) -> stream::Config {
        stream::Config {
            name: name.into(),
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        }
    }

    fn consumer(name: &str, filter: &str) -> consumer::Config {
        consumer::Config {
            durable_name: Some(name.into()),
            filter_subject: filter.into(),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_deliver: 3,
            ..Default::default()
        }
    }

    fn with_id(id: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", id);
        h
    }

    #[tokio::test(start_paused = true)]
    async fn publish_sequences_dedup_and_expected_sequence() {
        let b = Broker::new();
        b.create_stream(stream("ORDER", &["order.>"])).unwrap();
        assert!(
            b.create_stream(stream("OTHER", &["order.*.created"]))
                .is_err(),
            "overlap refused"
        );
        b.create_stream(stream("ORDER", &["order.>"]))
            .expect("the same stream again: nothing to do");
        assert!(
            b.create_stream(stream("ORDER", &["order.*.*"])).is_err(),
            "another configuration refused"
        );
        let a = b
            .publish("order.1.created", with_id("a"), Bytes::from_static(b"{}"))
            .unwrap();
        assert_eq!((a.sequence, a.duplicate), (1, false));
        let dup = b
            .publish("order.1.created", with_id("a"), Bytes::from_static(b"{}"))
            .unwrap();
        assert_eq!((dup.sequence, dup.duplicate), (1, true));
        tokio::time::advance(Duration::from_secs(121)).await;
        let after = b
            .publish("order.1.created", with_id("a"), Bytes::from_static(b"{}"))
            .unwrap();
        assert_eq!(
            (after.sequence, after.duplicate),
            (2, false),
            "window over: stored again"
        );
        assert_eq!(
            b.publish("invoice.1.x", HeaderMap::new(), Bytes::new())
                .unwrap_err()
                .kind(),
            PublishErrorKind::StreamNotFound
        );
        let mut h = HeaderMap::new();
        h.insert("Nats-Expected-Last-Subject-Sequence", "1");
        h.insert("Nats-Expected-Last-Subject-Sequence-Subject", "order.1.*");
        let e = b
            .publish("order.1.shipped", h.clone(), Bytes::new())
            .unwrap_err();
        assert_eq!(e.kind(), PublishErrorKind::WrongLastSequence);
        h.insert("Nats-Expected-Last-Subject-Sequence", "2");
        assert_eq!(
            b.publish("order.1.shipped", h, Bytes::new())
                .unwrap()
                .sequence,
            3
        );
        let mut h = HeaderMap::new();
        h.insert("Nats-Expected-Last-Subject-Sequence", "0");
        h.insert("Nats-Expected-Last-Subject-Sequence-Subject", "order.2.*");
        assert_eq!(
            b.publish("order.2.created", h, Bytes::new())
                .unwrap()
                .sequence,
            4
        );
        assert_eq!(b.last_and_count("ORDER", "order.1.*"), Some((3, 3)));
        assert!(b
            .publish(
                "order.1.x",
                HeaderMap::new(),
                Bytes::from(vec![0; MAX_PAYLOAD + 1])
            )
            .is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn expected_sequences_come_before_the_duplicate_window_and_are_stored() {
        let b = Broker::new();
        b.create_stream(stream("ORDER", &["order.>"])).unwrap();
        let expecting = |id: &str, last: &str| {
            let mut h = with_id(id);
            h.insert("Nats-Expected-Last-Subject-Sequence", last);
            h.insert("Nats-Expected-Last-Subject-Sequence-Subject", "order.1.*");
            h
        };
        assert_eq!(
            b.publish("order.1.created", expecting("a", "0"), Bytes::new())
                .unwrap()
                .sequence,
            1
        );
        // Sent again with the same expected sequence: refused, as nats-server does, not a
        // duplicate.
        let e = b
            .publish("order.1.created", expecting("a", "0"), Bytes::new())
            .unwrap_err();
        assert_eq!(e.kind(), PublishErrorKind::WrongLastSequence);
        let dup = b
            .publish("order.1.created", expecting("a", "1"), Bytes::new())
            .unwrap();
        assert_eq!((dup.sequence, dup.duplicate), (1, true));
        let mut stale = with_id("a");
        stale.insert("Nats-Expected-Last-Sequence", "0");
        let e = b
            .publish("order.1.created", stale, Bytes::new())
            .unwrap_err();
        assert_eq!(e.kind(), PublishErrorKind::WrongLastSequence);
        // Stored with every header it came with.
        let m = b.get("ORDER", 1).unwrap();
        assert_eq!(
            header(&m.headers, "Nats-Expected-Last-Subject-Sequence"),
            Some("0")
        );
        assert_eq!(
            header(&m.headers, "Nats-Expected-Last-Subject-Sequence-Subject"),
            Some("order.1.*")
        );
        // No duplicate window given: the server's 2 minutes.
        b.create_stream(stream::Config {
            name: "BARE".into(),
            subjects: vec!["bare.>".into()],
            ..Default::default()
        })
        .unwrap();
        b.publish("bare.1.x", with_id("z"), Bytes::new()).unwrap();
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(
            b.publish("bare.1.x", with_id("z"), Bytes::new())
                .unwrap()
                .duplicate
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ack_nak_term_progress_and_redelivery() {
        let b = Broker::new();
        b.create_stream(stream("ORDER", &["order.>"])).unwrap();
        b.put_consumer("ORDER", consumer("c", "order.*.created"))
            .unwrap();
        for i in 1..=3 {
            b.publish(
                &format!("order.{i}.created"),
                HeaderMap::new(),
                Bytes::new(),
            )
            .unwrap();
        }
        b.publish("order.9.shipped", HeaderMap::new(), Bytes::new())
            .unwrap();
        let d1 = b.next("ORDER", "c").await.unwrap();
        let d2 = b.next("ORDER", "c").await.unwrap();
        let d3 = b.next("ORDER", "c").await.unwrap();
        assert_eq!(
            [
                d1.message.sequence,
                d2.message.sequence,
                d3.message.sequence
            ],
            [1, 2, 3]
        );
        assert_eq!((d1.delivered, d1.pending), (1, 2));
        b.settle(&d1, Settle::Ack);
        b.settle(&d2, Settle::Term);
        b.settle(&d3, Settle::Nak(Some(Duration::from_secs(5))));
        let start = Instant::now();
        let again = b.next("ORDER", "c").await.unwrap();
        assert_eq!((again.message.sequence, again.delivered), (3, 2));
        assert!(
            Instant::now() - start >= Duration::from_secs(5),
            "nak delay honoured"
        );
        // Ack wait: not acked in 30 s → redelivered; in-progress acks keep it.
        tokio::time::advance(Duration::from_secs(20)).await;
        b.settle(&again, Settle::Progress);
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(
            b.try_next("ORDER", "c").unwrap().is_err(),
            "progress extended the ack wait"
        );
        let third = b.next("ORDER", "c").await.unwrap();
        assert_eq!(third.delivered, 3);
        // Max deliver 3: no fourth delivery, and a notice that the consumer gave up on it,
        // as the server's advisory says (dispatch/rescue.rs dead-letters it).
        let mut given_up = b.given_up();
        assert_eq!(
            b.consumer_position("ORDER", "c")
                .map(|p| (p.ack_floor, p.delivered, p.ack_pending)),
            Some((2, 4, 1)),
            "1 acked, 2 terminated, 3 pending; 4 (not for this consumer) looked at"
        );
        b.settle(&third, Settle::Nak(None));
        assert!(b.try_next("ORDER", "c").unwrap().is_err());
        assert_eq!(
            given_up.try_recv().unwrap(),
            ("ORDER".to_owned(), "c".to_owned(), 3, 3)
        );
        assert!(b.idle());
        assert_eq!(
            b.consumer_position("ORDER", "c")
                .map(|p| (p.ack_floor, p.ack_pending)),
            Some((4, 0)),
            "nothing pending: the floor is the last message looked at"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shared_consumer_splits_and_deliver_policies() {
        let b = Broker::new();
        b.create_stream(stream("ORDER", &["order.>"])).unwrap();
        for i in 1..=4 {
            b.publish(
                &format!("order.{}.created", i % 2),
                HeaderMap::new(),
                Bytes::new(),
            )
            .unwrap();
        }
        b.put_consumer("ORDER", consumer("shared", "order.>"))
            .unwrap();
        let (x, y) = tokio::join!(b.next("ORDER", "shared"), b.next("ORDER", "shared"));
        assert_ne!(x.unwrap().message.sequence, y.unwrap().message.sequence);
        let mut new = consumer("new", "order.>");
        new.deliver_policy = DeliverPolicy::New;
        b.put_consumer("ORDER", new).unwrap();
        let mut last = consumer("last", "order.>");
        last.deliver_policy = DeliverPolicy::Last;
        b.put_consumer("ORDER", last).unwrap();
        assert_eq!(b.next("ORDER", "last").await.unwrap().message.sequence, 4);
        let mut changed = consumer("last", "order.>");
        changed.deliver_policy = DeliverPolicy::All;
        assert!(
            b.put_consumer("ORDER", changed).is_err(),
            "deliver policy cannot change"
        );
        b.publish("order.5.created", HeaderMap::new(), Bytes::new())
            .unwrap();
        assert_eq!(b.next("ORDER", "new").await.unwrap().message.sequence, 5);
    }
}
