//! Ordered handling: the events of one aggregate are handled one at a time, in stream order.
//!
//! Within one worker, an event whose aggregate has an event in flight waits in that aggregate's
//! lane (kept with in-progress acks) and starts when the one before it is settled; a lane
//! always takes its lowest stream sequence first.
//!
//! Across a crash or a restart, the events an earlier instance (or this one, before its
//! connection dropped) was given and did not settle stay pending on the server until their ack
//! wait passes, and meanwhile the server hands out newer ones. The [`Gate`] keeps those newer
//! ones from overtaking: when the worker starts, and after every pull reset, it reads the
//! consumer's position and, if events are unacknowledged, scans the stream between the ack
//! floor and the last delivered sequence for the aggregates they belong to. An event of such an
//! aggregate waits (with in-progress acks, holding no handler slot) until every earlier held
//! sequence of its aggregate is settled here or lies under the consumer's ack floor.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::AckKind;
use tokio::sync::{watch, Notify};

use crate::backend::{Backend, Incoming};
use crate::error::Error;
use crate::subject::split_event_subject;

/// The lanes of one ordered worker, and its gate.
#[derive(Clone, Default)]
pub(super) struct Lanes(Arc<Shared>);

#[derive(Default)]
struct Shared {
    /// Events waiting for their turn, by aggregate id, then by stream sequence.
    waiting: Mutex<HashMap<String, BTreeMap<u64, Incoming>>>,
    gate: Mutex<Gate>,
    /// Told whenever an event joins a lane or the gate lets one through.
    changed: Notify,
}

/// The events that may still be pending from before the last (re)start, by aggregate id.
#[derive(Default)]
struct Gate {
    held: HashMap<String, BTreeSet<u64>>,
}

impl Gate {
    /// Whether an earlier event of `key` than `seq` may still be pending.
    fn blocks(&self, key: &str, seq: u64) -> bool {
        self.held
            .get(key)
            .and_then(|s| s.first())
            .is_some_and(|first| *first < seq)
    }

    fn settled(&mut self, key: &str, seq: u64) -> bool {
        let Some(set) = self.held.get_mut(key) else {
            return false;
        };
        let removed = set.remove(&seq);
        if set.is_empty() {
            self.held.remove(key);
        }
        removed
    }

    /// Everything up to `floor` is settled.
    fn floor(&mut self, floor: u64) -> bool {
        let before: usize = self.held.values().map(BTreeSet::len).sum();
        self.held.retain(|_, set| {
            set.retain(|seq| *seq > floor);
            !set.is_empty()
        });
        let after: usize = self.held.values().map(BTreeSet::len).sum();
        after != before
    }
}

/// The consumer an ordered worker reads, for its gate.
pub(super) struct Source<'a> {
    pub(super) backend: &'a Backend,
    pub(super) stream: &'a str,
    pub(super) consumer: &'a str,
    pub(super) filters: &'a [String],
}

/// The lane of one aggregate, entered by the event that found it empty.
pub(super) struct Lane {
    lanes: Lanes,
    key: String,
}

impl Lanes {
    /// Lets `msg` into its aggregate's lane: the [`Lane`] to run if the aggregate had none
    /// running, else `None` (it waits in the running lane, which takes it in stream order).
    pub(super) fn enter(&self, msg: Incoming) -> Option<Lane> {
        let key = ordering_key(&msg);
        let seq = msg.info().map_or(0, |i| i.stream_sequence);
        let mut map = self.0.waiting.lock().expect("lanes lock");
        if let Some(queue) = map.get_mut(&key) {
            queue.insert(seq, msg);
            drop(map);
            self.0.changed.notify_waiters();
            return None;
        }
        map.insert(key.clone(), BTreeMap::from([(seq, msg)]));
        Some(Lane {
            lanes: self.clone(),
            key,
        })
    }

    /// Reads where the consumer stands and holds back the aggregates of every event that may
    /// still be pending from an earlier delivery (see the module's documentation).
    pub(super) async fn arm(&self, source: &Source<'_>) -> Result<(), Error> {
        let position = source
            .backend
            .consumer_position(source.stream, source.consumer)
            .await?;
        if position.ack_pending == 0 || position.delivered <= position.ack_floor {
            return Ok(());
        }
        let mut held: HashMap<String, BTreeSet<u64>> = HashMap::new();
        for filter in source.filters {
            let mut scan = source
                .backend
                .scan(source.stream, filter.clone(), position.ack_floor + 1)
                .await?;
            while let Some(m) = scan.next().await {
                let m = m?;
                if m.sequence > position.delivered {
                    break;
                }
                held.entry(subject_key(&m.subject))
                    .or_default()
                    .insert(m.sequence);
            }
        }
        let count: usize = held.values().map(BTreeSet::len).sum();
        tracing::info!(
            target: "eventbus::dispatch",
            consumer = %source.consumer,
            unacknowledged = position.ack_pending,
            held = count,
            aggregates = held.len(),
            "ordered: later events of aggregates with events still pending wait for them"
        );
        let mut gate = self.0.gate.lock().expect("gate lock");
        for (key, seqs) in held {
            gate.held.entry(key).or_default().extend(seqs);
        }
        gate.floor(position.ack_floor);
        drop(gate);
        self.0.changed.notify_waiters();
        Ok(())
    }

    fn gate_is_empty(&self) -> bool {
        self.0.gate.lock().expect("gate lock").held.is_empty()
    }

    /// A task that keeps waiting events with in-progress acks, so the server does not redeliver
    /// them meanwhile, and, while the gate holds events back, follows the consumer's ack floor.
    /// Abort it when the worker stops.
    pub(super) fn keep_alive(
        &self,
        ack_wait: Duration,
        backend: Backend,
        stream: String,
        consumer: String,
    ) -> tokio::task::JoinHandle<()> {
        let lanes = self.clone();
        let every = (ack_wait / 2).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let progress_every = (ack_wait / 2).max(Duration::from_millis(50));
        tokio::spawn(async move {
            let mut last_progress = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(every).await;
                if !lanes.gate_is_empty() {
                    if let Ok(p) = backend.consumer_position(&stream, &consumer).await {
                        let moved = lanes.0.gate.lock().expect("gate lock").floor(p.ack_floor);
                        if moved {
                            lanes.0.changed.notify_waiters();
                        }
                    }
                }
                if last_progress.elapsed() < progress_every {
                    continue;
                }
                last_progress = tokio::time::Instant::now();
                let waiting: Vec<Incoming> = lanes
                    .0
                    .waiting
                    .lock()
                    .expect("lanes lock")
                    .values()
                    .flat_map(|q| q.values().cloned())
                    .collect();
                for m in waiting {
                    let _ = m.settle(AckKind::Progress).await;
                }
            }
        })
    }
}

/// What a lane's next turn is. Made once per event and moved at once: boxing the event would
/// cost an allocation per event for nothing.
#[allow(clippy::large_enum_variant)]
enum Turn {
    Run(u64, Incoming),
    Wait,
    Done,
}

impl Lane {
    /// Handles the lane's events one after the other, lowest stream sequence first, with
    /// `handle`, until it is empty or the worker stops (events still waiting were then not
    /// tried: they are left to be redelivered). An event the gate holds back waits without
    /// `slot`, the handler slot the lane was started with; `slot` is given back then, so the
    /// worker keeps pulling (the earlier events it waits for come that way), and the lane runs
    /// on without one: after a restart, a worker may run more handlers at once than its
    /// `concurrency`, by the number of aggregates it held back.
    pub(super) async fn run<F, Fut, S>(self, stopped: &watch::Receiver<bool>, slot: S, handle: F)
    where
        F: Fn(Incoming) -> Fut,
        Fut: Future<Output = ()>,
    {
        let Lane { lanes, key } = self;
        let shared = &*lanes.0;
        let mut slot = Some(slot);
        let mut stopped = stopped.clone();
        loop {
            let changed = shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let turn = {
                let mut map = shared.waiting.lock().expect("lanes lock");
                let queue = map.get_mut(&key).expect("a running lane is in the map");
                if *stopped.borrow() {
                    map.remove(&key);
                    Turn::Done
                } else {
                    match queue.first_key_value().map(|(seq, _)| *seq) {
                        None => {
                            map.remove(&key);
                            Turn::Done
                        }
                        Some(seq) => {
                            if shared.gate.lock().expect("gate lock").blocks(&key, seq) {
                                Turn::Wait
                            } else {
                                let (seq, msg) = queue.pop_first().expect("a first event");
                                Turn::Run(seq, msg)
                            }
                        }
                    }
                }
            };
            match turn {
                Turn::Done => break,
                Turn::Run(seq, msg) => {
                    handle(msg).await;
                    if shared.gate.lock().expect("gate lock").settled(&key, seq) {
                        shared.changed.notify_waiters();
                    }
                }
                Turn::Wait => {
                    // Held back: give the handler slot back so pulling goes on.
                    slot = None;
                    tokio::select! {
                        _ = &mut changed => {}
                        gone = stopped.changed() => {
                            if gone.is_err() {
                                // The worker is gone: nothing will stop it more clearly.
                                shared.waiting.lock().expect("lanes lock").remove(&key);
                                break;
                            }
                        }
                    }
                }
            }
        }
        drop(slot);
    }
}

fn ordering_key(msg: &Incoming) -> String {
    subject_key(msg.subject())
}

/// The aggregate id of an event subject (the whole subject if it is not one).
fn subject_key(subject: &str) -> String {
    match split_event_subject(subject) {
        Some((_, id, _)) => id.to_owned(),
        None => subject.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_holds_an_aggregate_until_its_earlier_events_are_settled_or_under_the_floor() {
        let mut gate = Gate::default();
        gate.held.insert("a1".into(), BTreeSet::from([3, 5]));
        gate.held.insert("a2".into(), BTreeSet::from([4]));
        assert!(!gate.blocks("a1", 3), "the earliest held event itself runs");
        assert!(gate.blocks("a1", 5));
        assert!(gate.blocks("a1", 9));
        assert!(!gate.blocks("a3", 9), "an aggregate with nothing pending");
        assert!(gate.settled("a1", 3));
        assert!(!gate.blocks("a1", 5));
        assert!(gate.blocks("a1", 6));
        assert!(gate.floor(4), "the floor passed a2's event");
        assert!(!gate.blocks("a2", 10));
        assert!(gate.floor(5));
        assert!(gate.held.is_empty());
        assert!(!gate.floor(100), "nothing left to pass");
    }
}
