//! Statistics by API ([`Stats`], `Bus::stats`): each stream's size and each handler's
//! consumer as the server reports them (`$JS.API` stream and consumer info, or the in-process
//! broker's figures), with the acknowledgement rate this process measured. The same figures
//! feed the lag and size gauges of `observe/metrics.rs`, refreshed by a background task every
//! `stats_interval` and by each scrape of `/metrics`. Also here: the task that records the
//! connection's state, and the detection of stalled consumers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::backend::{Backend, ConnectionState, StreamFigures};
use crate::error::Error;
use crate::observe::metrics::{self, HandlerMetrics};
use crate::provision::{self, StreamShape};
use crate::topology::ConsumerPlan;

/// What a bus's streams and handlers' consumers hold now (see `Bus::stats`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// The streams of the bus's topology, and the dead-letter stream once it exists.
    pub streams: Vec<StreamStats>,
    /// The handlers this bus runs.
    pub handlers: Vec<HandlerStats>,
}

impl Stats {
    /// The figures of stream `name`, if the bus knows it.
    pub fn stream(&self, name: &str) -> Option<&StreamStats> {
        self.streams.iter().find(|s| s.name == name)
    }

    /// The figures of handler `name`, if the bus runs it.
    pub fn handler(&self, name: &str) -> Option<&HandlerStats> {
        self.handlers.iter().find(|h| h.handler == name)
    }
}

/// One stream's figures, as the server reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamStats {
    /// The stream's name.
    pub name: String,
    /// Messages it holds.
    pub messages: u64,
    /// Bytes it holds.
    pub bytes: u64,
    /// The sequence of its oldest message (0 when it never held one).
    pub first_sequence: u64,
    /// The sequence of its latest message.
    pub last_sequence: u64,
    /// Its consumers.
    pub consumers: usize,
    /// The distinct subjects holding messages (on an aggregate's stream, about the number of
    /// aggregate ids times the event types each has).
    pub subjects: u64,
}

impl StreamStats {
    /// The backend's figures these were made from.
    fn figures(&self) -> StreamFigures {
        StreamFigures {
            messages: self.messages,
            bytes: self.bytes,
            first_sequence: self.first_sequence,
            last_sequence: self.last_sequence,
            consumers: self.consumers,
            subjects: self.subjects,
        }
    }
}

/// One handler's consumer, as the server reports it, and what this process acknowledged.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HandlerStats {
    /// The handler's name.
    pub handler: String,
    /// The stream it reads.
    pub stream: String,
    /// Its consumer's name.
    pub consumer: String,
    /// Events not yet delivered (the lag).
    pub pending: u64,
    /// Events delivered and not yet acknowledged.
    pub ack_pending: u64,
    /// Events redelivered and not yet acknowledged.
    pub redelivered: u64,
    /// Pull requests waiting at the server.
    pub waiting: u64,
    /// Events this process acknowledged since the bus started.
    pub acked: u64,
    /// Acknowledgements per second by this process, since the previous call of
    /// `Bus::stats` (or the start).
    pub ack_rate: f64,
    /// How often this process found the consumer stalled (events pending, nothing received)
    /// and pulled anew.
    pub stalls: u64,
}

/// A handler the statistics follow.
pub(crate) struct Watched {
    pub(crate) handler: String,
    pub(crate) stream: String,
    pub(crate) consumer: String,
    pub(crate) metrics: Arc<HandlerMetrics>,
    /// Told to pull anew when the consumer is found stalled.
    pub(crate) repull: Arc<Notify>,
    /// The acks counted at the previous look, and when.
    last: Mutex<(Instant, u64)>,
    /// What the previous look at its progress found.
    progress: Mutex<Option<Progress>>,
    /// For a consumer whose filter follows its stream's subjects
    /// (`provision::filtered_on_server`): its plan, and whether it is filtered now.
    refilter: Option<(ConsumerPlan, AtomicBool)>,
}

/// A handler's progress as last seen, to tell a stalled consumer.
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// Deliveries received, as last seen.
    consumed: u64,
    /// Since when nothing was received while events were pending.
    since: Instant,
}

/// How long a consumer may receive nothing while events are pending and none is in hand
/// before it counts as stalled: two refreshes, and no less than the pull's own silence
/// detection (`backend/pull.rs`, heartbeats), which it backs up.
pub(crate) fn stall_after(interval: Duration) -> Duration {
    (interval * 2).max(Duration::from_secs(12))
}

impl Watched {
    pub(crate) fn new(
        handler: String,
        stream: String,
        consumer: String,
        metrics: Arc<HandlerMetrics>,
        repull: Arc<Notify>,
    ) -> Watched {
        Watched {
            handler,
            stream,
            consumer,
            metrics,
            repull,
            last: Mutex::new((Instant::now(), 0)),
            progress: Mutex::new(None),
            refilter: None,
        }
    }

    /// Makes the periodic look put the handler's filters on its consumer or take them off as
    /// its stream's subjects grow; `filtered`: how it was made.
    pub(crate) fn refiltered(mut self, plan: ConsumerPlan, filtered: bool) -> Watched {
        self.refilter = Some((plan, AtomicBool::new(filtered)));
        self
    }
}

/// Where a bus's statistics come from.
pub(crate) struct Sources {
    pub(crate) backend: Backend,
    /// The topology's streams, by their names on the server.
    pub(crate) streams: Vec<String>,
    /// The dead-letter stream (counted once it exists).
    pub(crate) dlq: String,
    pub(crate) handlers: Vec<Watched>,
    /// The shape each stream had at the last look of `refilter` (sampled again only when its
    /// subjects changed by a tenth or more, so a look at a steady stream gets no message).
    pub(crate) shapes: Mutex<HashMap<String, StreamShape>>,
}

impl Sources {
    /// The figures now, also recorded as the metrics' gauges.
    pub(crate) async fn gather(&self) -> Result<Stats, Error> {
        let mut streams = Vec::with_capacity(self.streams.len() + 1);
        for name in &self.streams {
            streams.push(self.stream(name).await?);
        }
        if !self.streams.contains(&self.dlq) {
            // The dead-letter stream is made with the first dead letter.
            if let Ok(s) = self.stream(&self.dlq).await {
                streams.push(s);
            }
        }
        let mut handlers = Vec::with_capacity(self.handlers.len());
        for w in &self.handlers {
            let f = self
                .backend
                .consumer_figures(&w.stream, &w.consumer)
                .await?;
            w.metrics.pending.set(f.pending as f64);
            w.metrics.ack_pending.set(f.ack_pending as f64);
            w.metrics.redelivered.set(f.redelivered as f64);
            let acked = w.metrics.acks();
            let now = Instant::now();
            let ack_rate = {
                let mut last = w.last.lock().expect("stats lock");
                let secs = now.duration_since(last.0).as_secs_f64();
                let rate = if secs > 0.0 {
                    (acked - last.1) as f64 / secs
                } else {
                    0.0
                };
                *last = (now, acked);
                rate
            };
            handlers.push(HandlerStats {
                handler: w.handler.clone(),
                stream: w.stream.clone(),
                consumer: w.consumer.clone(),
                pending: f.pending,
                ack_pending: f.ack_pending,
                redelivered: f.redelivered,
                waiting: f.waiting,
                acked,
                ack_rate,
                stalls: w.metrics.stalls(),
            });
        }
        Ok(Stats { streams, handlers })
    }

    async fn stream(&self, name: &str) -> Result<StreamStats, Error> {
        let f = self.backend.stream_figures(name).await?;
        metrics::stream(name, f.messages, f.bytes, f.consumers);
        Ok(StreamStats {
            name: name.to_owned(),
            messages: f.messages,
            bytes: f.bytes,
            first_sequence: f.first_sequence,
            last_sequence: f.last_sequence,
            consumers: f.consumers,
            subjects: f.subjects,
        })
    }

    /// Looks for stalled consumers: events pending at the server, none in this process's
    /// hands or awaiting an ack, and nothing received for `after`. A consumer found so is
    /// pulled anew (a known failure mode: pulls that the server forgot, after a stream's
    /// leader changed), logged and counted (`eventbus.consumer.stalls`).
    pub(crate) fn find_stalls(&self, stats: &Stats, after: Duration) {
        let now = Instant::now();
        for (w, h) in self.handlers.iter().zip(&stats.handlers) {
            let consumed = w.metrics.consumed();
            let waiting = h.pending > 0 && h.ack_pending == 0 && w.metrics.in_flight() == 0;
            let mut prev = w.progress.lock().expect("stats lock");
            let since = match *prev {
                Some(p) if waiting && p.consumed == consumed => p.since,
                _ => now,
            };
            // At least two looks: the one that saw it waiting, and this one.
            let stalled = waiting && since != now && now.duration_since(since) >= after;
            *prev = Some(Progress {
                consumed,
                // Counted again from now once pulled anew.
                since: if stalled { now } else { since },
            });
            if stalled {
                tracing::warn!(target: "eventbus::dispatch", handler = %w.handler, consumer = %w.consumer, pending = h.pending, "consumer has pending events but receives nothing; pulling anew");
                w.metrics.stalled();
                w.repull.notify_one();
            }
        }
    }

    /// Puts handlers' filters on their consumers or takes them off, as their streams' subjects
    /// now ask (see `provision::filtered_on_server`). The consumer keeps its position; the
    /// worker skips what it does not take either way.
    pub(crate) async fn refilter(&self, stats: &Stats) {
        let version = self.backend.server_version();
        for w in &self.handlers {
            let Some((plan, now)) = &w.refilter else {
                continue;
            };
            let Some(s) = stats.stream(&w.stream) else {
                continue;
            };
            let subjects = s.subjects;
            let cached = self
                .shapes
                .lock()
                .expect("stats lock")
                .get(&w.stream)
                .cloned();
            let shape = match cached {
                Some(mut shape)
                    if shape.subjects.abs_diff(subjects) * 10 < shape.subjects.max(1) =>
                {
                    shape.subjects = subjects;
                    shape
                }
                _ => match provision::stream_shape(&self.backend, &w.stream, &s.figures()).await {
                    Ok(shape) => {
                        let mut shapes = self.shapes.lock().expect("stats lock");
                        shapes.insert(w.stream.clone(), shape.clone());
                        shape
                    }
                    Err(e) => {
                        tracing::debug!(target: "eventbus", stream = %w.stream, error = %e, "cannot look at the stream's shape");
                        continue;
                    }
                },
            };
            let want = provision::filtered_on_server(plan, &w.stream, Some(&shape), version);
            if want == now.load(Ordering::Relaxed) {
                continue;
            }
            match provision::consumer(&self.backend, &w.stream, plan, &w.consumer, want).await {
                Ok(()) => {
                    now.store(want, Ordering::Relaxed);
                    tracing::info!(target: "eventbus::dispatch", handler = %w.handler, consumer = %w.consumer, subjects = shape.subjects, filtered = want, "the stream's shape changed how the consumer reads it best");
                }
                Err(e) => {
                    tracing::warn!(target: "eventbus::dispatch", handler = %w.handler, consumer = %w.consumer, error = %e, "cannot change the consumer's filter")
                }
            }
        }
    }
}

/// Refreshes the statistics every `every` (their gauges, the look for stalled consumers, and
/// the choice of consumer filters) until `stop` turns true.
pub(crate) async fn poll(sources: Arc<Sources>, every: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if *stop.borrow() {
            return;
        }
        match sources.gather().await {
            Ok(stats) => {
                sources.find_stalls(&stats, stall_after(every));
                sources.refilter(&stats).await;
            }
            Err(e) => {
                tracing::debug!(target: "eventbus", error = %e, "cannot refresh the statistics")
            }
        }
    }
}

/// Records the connection's state (`eventbus.connection.state`) and counts reconnections
/// (`eventbus.connection.reconnects`) until the state channel closes.
pub(crate) async fn watch_connection(service: String, mut state: watch::Receiver<ConnectionState>) {
    let reconnects = metrics::reconnects(&service);
    // Registered now, so that it reads 0 until the first reconnection.
    reconnects.increment(0);
    let mut last = *state.borrow_and_update();
    metrics::connection_state(&service, name(last));
    while state.changed().await.is_ok() {
        let now = *state.borrow_and_update();
        if now == ConnectionState::Connected && last != ConnectionState::Connected {
            reconnects.increment(1);
        }
        metrics::connection_state(&service, name(now));
        last = now;
    }
}

fn name(state: ConnectionState) -> &'static str {
    match state {
        ConnectionState::Connected => "connected",
        ConnectionState::Reconnecting => "reconnecting",
        _ => "closed",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use futures::FutureExt;
    use tokio::sync::Notify;

    use super::{HandlerStats, Sources, Stats, Watched};
    use crate::backend::memory::Broker;
    use crate::backend::Backend;
    use crate::observe::metrics::HandlerMetrics;

    fn stats(pending: u64, ack_pending: u64) -> Stats {
        Stats {
            streams: Vec::new(),
            handlers: vec![HandlerStats {
                handler: "h".into(),
                stream: "S".into(),
                consumer: "svc-h".into(),
                pending,
                ack_pending,
                redelivered: 0,
                waiting: 0,
                acked: 0,
                ack_rate: 0.0,
                stalls: 0,
            }],
        }
    }

    #[test]
    fn a_consumer_with_pending_events_that_receives_nothing_is_pulled_anew() {
        let metrics = Arc::new(HandlerMetrics::new("svc", "h", "S"));
        let repull = Arc::new(Notify::new());
        let sources = Sources {
            backend: Backend::Memory(Broker::new()),
            streams: Vec::new(),
            dlq: "DLQ".into(),
            handlers: vec![Watched::new(
                "h".into(),
                "S".into(),
                "svc-h".into(),
                metrics.clone(),
                repull.clone(),
            )],
            shapes: std::sync::Mutex::default(),
        };
        let pulled_anew = || repull.notified().now_or_never().is_some();
        let after = Duration::ZERO;
        // Nothing pending: never stalled.
        sources.find_stalls(&stats(0, 0), after);
        sources.find_stalls(&stats(0, 0), after);
        assert!(!pulled_anew());
        // Pending, but awaiting acks, or in hand: working, not stalled.
        sources.find_stalls(&stats(5, 2), after);
        assert!(!pulled_anew());
        let held = metrics.start(1);
        sources.find_stalls(&stats(5, 0), after);
        assert!(!pulled_anew());
        drop(held);
        // Pending, nothing in hand, nothing received: stalled.
        sources.find_stalls(&stats(5, 0), after);
        assert!(pulled_anew());
        assert_eq!(metrics.stalls(), 1);
        // Not before the time has passed, counted from the last pull anew or delivery.
        sources.find_stalls(&stats(5, 0), Duration::from_secs(60));
        assert!(!pulled_anew());
        drop(metrics.start(1));
        sources.find_stalls(&stats(4, 0), after);
        assert!(!pulled_anew(), "received something since the last look");
        assert_eq!(metrics.stalls(), 1);
    }
}
