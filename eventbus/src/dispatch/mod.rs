//! Dispatch: one worker per handler pulls its consumer's events by credit, decodes them, calls
//! the handler, and settles each event (`settle.rs`): ack on success, nak with backoff on
//! error, dead letter and term when retrying cannot help. With `ordered`, one aggregate's
//! events wait in a lane behind the one in flight (`ordered.rs`).
//!
//! A worker holds the bus's publishing side ([`Publisher`], for handlers' `ctx.publish` and for
//! dead letters), never the bus itself: dropping the last `Bus` stops the workers.

mod ordered;
mod settle;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};

use crate::backend::{Incoming, Pulled, Puller};
use crate::handler::States;
use crate::observe::metrics::HandlerMetrics;
use crate::publish::Publisher;
use crate::topology::ConsumerPlan;

use self::ordered::Lanes;

/// What one delivery of an event came to, as an [`Observer`] is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Settlement {
    /// Handled and acked.
    Acked,
    /// Failed; retried after a delay.
    Retried { error: String },
    /// Dead-lettered (and terminated).
    DeadLettered { reason: &'static str, error: String },
    /// `ack = none`: nothing is settled.
    Unacknowledged,
}

/// One settled delivery, as an [`Observer`] is told.
#[derive(Debug)]
pub(crate) struct Settled<'a> {
    pub(crate) handler: &'a str,
    pub(crate) subject: &'a str,
    pub(crate) event_id: Option<&'a str>,
    pub(crate) sequence: u64,
    pub(crate) attempt: u64,
    pub(crate) settlement: Settlement,
}

/// Watches what workers do: told when an event's handling starts and ends, and what each
/// delivery came to. `eventbus::testing` records through it; dispatch knows nothing of tests.
pub(crate) trait Observer: Send + Sync + 'static {
    /// An event's handling started.
    fn started(&self);
    /// A delivery was settled (or, with `ack = none`, left).
    fn settled(&self, settled: Settled<'_>);
    /// An event's handling ended: settled, or left for redelivery at shutdown.
    fn finished(&self);
}

/// The handlers in flight of one worker.
type Tasks = FuturesUnordered<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>;

/// What a worker needs, shared by its tasks.
pub(crate) struct Worker {
    pub(crate) plan: ConsumerPlan,
    pub(crate) stream: String,
    pub(crate) consumer_name: String,
    pub(crate) publisher: Publisher,
    /// The application's state, for handlers' `State<T>` parameters.
    pub(crate) states: States,
    pub(crate) observer: Option<Arc<dyn Observer>>,
    /// The handler's metrics (`observe/metrics.rs`).
    pub(crate) metrics: Arc<HandlerMetrics>,
    /// Told to pull anew when `stats.rs` finds the consumer stalled.
    pub(crate) repull: Arc<Notify>,
}

/// The pause after a failed pull before the next one.
const PULL_RETRY: Duration = Duration::from_millis(500);

/// Runs a worker until `stop` turns true, then lets in-flight handlers finish within `grace`.
///
/// Events are pulled by credit, only for free handler slots (see `backend/pull.rs`): each
/// event the worker receives starts at once and is kept with in-progress acks from then on.
/// Prefetching more would leave events waiting in the client's buffer, where nothing keeps
/// them: once the ack wait passes, the server delivers them again and they are handled twice.
/// It also leaves the rest of the backlog to the other instances sharing the durable
/// consumer. Credit is asked for in batches of a quarter of the slots (at least one), and
/// requests overlap, so the flow does not stop while a pull travels.
pub(crate) async fn run(
    worker: Arc<Worker>,
    mut puller: Puller,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let plan = &worker.plan;
    // The handlers in flight, polled by this worker's task: no task is spawned per event.
    let mut tasks: Tasks = FuturesUnordered::new();
    let permits = Arc::new(Semaphore::new(plan.concurrency));
    let min_batch = (plan.concurrency / 4).max(1);
    // Slots reserved for events asked for and not yet received.
    let mut reserved: Vec<OwnedSemaphorePermit> = Vec::new();
    let lanes = Lanes::default();
    let keeper = plan.ordered.then(|| lanes.keep_alive(plan.ack_wait));
    'pull: loop {
        if *stop.borrow() {
            break;
        }
        let want = if reserved.is_empty() { 1 } else { min_batch };
        tokio::select! {
            biased;
            _ = stop.changed() => break 'pull,
            Some(()) = tasks.next(), if !tasks.is_empty() => {}
            _ = worker.repull.notified() => {
                // Found stalled (`stats.rs`): the credit asked for is forgotten, asked anew.
                if let Pulled::Failed(e) = puller.reset().await {
                    tracing::warn!(target: "eventbus::dispatch", consumer = %worker.consumer_name, error = %e, "cannot pull anew");
                }
                reserved.clear();
            }
            p = permits.clone().acquire_many_owned(want as u32) => {
                let mut p = p.expect("semaphore is never closed");
                let mut slots = Vec::with_capacity(plan.concurrency);
                while p.num_permits() > 1 {
                    slots.push(p.split(1).expect("more than one permit"));
                }
                slots.push(p);
                while let Ok(more) = permits.clone().try_acquire_owned() {
                    slots.push(more);
                }
                match puller.request(slots.len()).await {
                    Ok(()) => reserved.extend(slots),
                    Err(e) => {
                        drop(slots);
                        tracing::warn!(target: "eventbus::dispatch", consumer = %worker.consumer_name, error = %e, "cannot pull; retrying");
                        tokio::select! {
                            _ = stop.changed() => break 'pull,
                            _ = tokio::time::sleep(PULL_RETRY) => {}
                        }
                    }
                }
            }
            pulled = puller.next() => {
                match pulled {
                    Pulled::Message(msg) => {
                        let permit = match reserved.pop() {
                            Some(p) => p,
                            None => {
                                // More events than credit (a pull that outlived a reset):
                                // keep it until a slot is free.
                                let _ = msg.settle(AckKind::Progress).await;
                                tokio::select! {
                                    _ = stop.changed() => break 'pull,
                                    p = permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
                                }
                            }
                        };
                        start(&worker, &mut tasks, &lanes, &stop, msg, permit);
                    }
                    Pulled::Returned(n) => {
                        let keep = reserved.len().saturating_sub(n);
                        reserved.truncate(keep);
                    }
                    Pulled::Reset => reserved.clear(),
                    Pulled::Failed(e) => {
                        reserved.clear();
                        tracing::warn!(target: "eventbus::dispatch", consumer = %worker.consumer_name, error = %e, "pull failed; pulling again shortly");
                        tokio::select! {
                            _ = stop.changed() => break 'pull,
                            _ = tokio::time::sleep(PULL_RETRY) => {}
                        }
                    }
                }
            }
        }
    }
    drop(reserved);
    // Stop pulling. Nothing was pulled that did not start; an event still waiting in an ordered
    // lane is neither acked nor nak'd, and the server redelivers it after the ack wait.
    if let Some(k) = keeper {
        k.abort();
    }
    let in_flight = tasks.len();
    if in_flight > 0 {
        tracing::info!(target: "eventbus::dispatch", consumer = %worker.consumer_name, in_flight, "waiting for in-flight handlers");
    }
    let drained =
        tokio::time::timeout(grace, async { while tasks.next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            target: "eventbus::dispatch",
            consumer = %worker.consumer_name,
            still_running = tasks.len(),
            "grace period over; stopping handlers that did not finish (their events are not acked and will be redelivered)"
        );
        drop(tasks);
    }
}

/// Starts handling one pulled event, holding `permit` until it is settled. In ordered mode an
/// event whose aggregate has an event in flight waits in that aggregate's lane instead (see
/// `ordered.rs`), and gives its slot back.
fn start(
    worker: &Arc<Worker>,
    tasks: &mut Tasks,
    lanes: &Lanes,
    stop: &watch::Receiver<bool>,
    msg: Incoming,
    permit: OwnedSemaphorePermit,
) {
    let w = worker.clone();
    if !worker.plan.ordered {
        tasks.push(Box::pin(async move {
            handle(&w, msg).await;
            drop(permit);
        }));
        return;
    }
    if let Some(lane) = lanes.enter(msg) {
        let stopped = stop.clone();
        tasks.push(Box::pin(async move {
            lane.run(&stopped, |m| handle(&w, m)).await;
            drop(permit);
        }));
    }
}

/// Handles one delivered event to the end: settled (acked, nak'd or terminated) or, at
/// shutdown, left for redelivery.
async fn handle(w: &Worker, msg: Incoming) {
    if let Some(o) = &w.observer {
        o.started();
    }
    settle::handle(w, msg).await;
    if let Some(o) = &w.observer {
        o.finished();
    }
}
