//! Ordered handling: the events of one aggregate are handled one at a time, in stream order,
//! within one instance. An event whose aggregate has an event in flight waits in that
//! aggregate's lane, kept with in-progress acks, and starts when the one before it is settled.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::AckKind;
use tokio::sync::watch;

use crate::backend::Incoming;
use crate::subject::split_event_subject;

/// Events waiting behind their aggregate's earlier event, by aggregate id.
#[derive(Clone, Default)]
pub(super) struct Lanes(Arc<Mutex<HashMap<String, VecDeque<Incoming>>>>);

/// The lane of one aggregate, entered by its first event.
pub(super) struct Lane {
    lanes: Lanes,
    key: String,
    first: Incoming,
}

impl Lanes {
    /// Lets `msg` into its aggregate's lane: the [`Lane`] to run if the aggregate had no event
    /// in flight, else `None` (it waits behind the one in flight).
    pub(super) fn enter(&self, msg: Incoming) -> Option<Lane> {
        let key = ordering_key(&msg);
        let mut map = self.0.lock().expect("lanes lock");
        if let Some(queue) = map.get_mut(&key) {
            queue.push_back(msg);
            return None;
        }
        map.insert(key.clone(), VecDeque::new());
        Some(Lane {
            lanes: self.clone(),
            key,
            first: msg,
        })
    }

    /// A task that keeps waiting events with in-progress acks, so the server does not redeliver
    /// them meanwhile. Abort it when the worker stops.
    pub(super) fn keep_alive(&self, ack_wait: Duration) -> tokio::task::JoinHandle<()> {
        let lanes = self.clone();
        let every = (ack_wait / 2).max(Duration::from_millis(50));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let waiting: Vec<Incoming> = lanes
                    .0
                    .lock()
                    .expect("lanes lock")
                    .values()
                    .flat_map(|q| q.iter().cloned())
                    .collect();
                for m in waiting {
                    let _ = m.settle(AckKind::Progress).await;
                }
            }
        })
    }
}

impl Lane {
    /// Handles the lane's events one after the other with `handle`, until it is empty or the
    /// worker stops (later events of the aggregate were then not tried: they are left to be
    /// redelivered).
    pub(super) async fn run<F, Fut>(self, stopped: &watch::Receiver<bool>, handle: F)
    where
        F: Fn(Incoming) -> Fut,
        Fut: Future<Output = ()>,
    {
        let Lane { lanes, key, first } = self;
        let mut current = first;
        loop {
            handle(current).await;
            let mut map = lanes.0.lock().expect("lanes lock");
            if *stopped.borrow() {
                map.remove(&key);
                break;
            }
            match map.get_mut(&key).and_then(VecDeque::pop_front) {
                Some(next) => current = next,
                None => {
                    map.remove(&key);
                    break;
                }
            }
        }
    }
}

fn ordering_key(msg: &Incoming) -> String {
    let subject = msg.subject();
    match split_event_subject(subject) {
        Some((_, id, _)) => id.to_owned(),
        None => subject.to_owned(),
    }
}
