//! Dispatch: one worker per handler pulls its consumer's events by credit, decodes them, calls
//! the handler, and settles each event (`settle.rs`): ack on success, nak with backoff on
//! error, dead letter and term when retrying cannot help. With `ordered`, one aggregate's
//! events wait in a lane behind the one in flight, and behind its events still pending from
//! before a restart or a pull reset (`ordered.rs`).
//!
//! A worker holds the bus's publishing side ([`Publisher`], for handlers' `ctx.publish` and for
//! dead letters), never the bus itself: dropping the last `Bus` stops the workers.

mod ordered;
mod rescue;
mod settle;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::AckKind;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};

use crate::backend::{GivenUp, Incoming, Pulled, Puller};
use crate::handler::States;
use crate::observe::metrics::HandlerMetrics;
use crate::publish::Publisher;
use crate::topology::ConsumerPlan;

use self::ordered::{Lanes, Source};

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

impl Worker {
    /// Whether the handler takes an event on `subject` (see `ConsumerPlan::filters`): its
    /// consumer has no filter, and the others are skipped.
    fn takes(&self, subject: &str) -> bool {
        self.plan
            .filters
            .iter()
            .any(|f| crate::rules::filter_covers(f, subject))
    }
}

/// The pause after a failed pull before the next one.
const PULL_RETRY: Duration = Duration::from_millis(500);

/// Runs a worker until `stop` turns true, then lets in-flight handlers finish within `grace`.
///
/// Events are pulled by credit (see `backend/pull.rs`): for the free handler slots, plus the
/// events the handlers finish in about 20 ms (measured, at most 512; see [`Ahead`]). An event
/// that arrives while every slot is busy waits in the worker's queue and is kept with
/// in-progress acks there, so the server does not deliver it again once its ack wait passes;
/// slow handlers get nothing ahead, which leaves the rest of the backlog to the other
/// instances sharing the durable consumer. Credit is asked for in batches of a quarter of the
/// window, and requests overlap, so the flow does not stop while a pull travels.
///
/// With `given_up` (the consumer's notices of events the server gave up on), the safety net of
/// `rescue.rs` runs beside it and dead-letters those.
pub(crate) async fn run(
    worker: Arc<Worker>,
    mut puller: Puller,
    given_up: Option<GivenUp>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let rescuer = given_up.map(|g| tokio::spawn(rescue::run(worker.clone(), g, stop.clone())));
    let _rescuer = rescuer.map(tokio_util::task::AbortOnDropHandle::new);
    let plan = &worker.plan;
    // The handlers in flight, polled by this worker's task: no task is spawned per event.
    let mut tasks: Tasks = FuturesUnordered::new();
    let permits = Arc::new(Semaphore::new(plan.concurrency));
    // Events received while every slot was busy, oldest first, with when they came.
    let mut queue: VecDeque<(Incoming, Instant)> = VecDeque::new();
    // Credit asked for and not yet used (events on their way).
    let mut credit: usize = 0;
    let mut ahead = Ahead::new(plan);
    // Queued events are kept alive once they waited a quarter of the ack wait; the rate of
    // finished events is measured at least every 100 ms.
    let keep_every = (plan.ack_wait / 4).max(Duration::from_millis(50));
    let mut keep_tick = tokio::time::interval(keep_every.min(Duration::from_millis(100)));
    keep_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let lanes = Lanes::default();
    let keeper = plan.ordered.then(|| {
        lanes.keep_alive(
            plan.ack_wait,
            worker.publisher.backend().clone(),
            worker.stream.clone(),
            worker.consumer_name.clone(),
        )
    });
    if plan.ordered && !arm(&worker, &lanes, &mut stop).await {
        if let Some(k) = keeper {
            k.abort();
        }
        return;
    }
    'pull: loop {
        if *stop.borrow() {
            break;
        }
        // Queued events take the slots that came free.
        while !queue.is_empty() {
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                break;
            };
            let (msg, _) = queue.pop_front().expect("a queued event");
            start(&worker, &mut tasks, &lanes, &stop, msg, permit);
        }
        // Ask for what fills the free slots and the room ahead of them; one at a time for a
        // while after a drop (see `backend/pull.rs`).
        let in_flight = plan.concurrency - permits.available_permits();
        let held = in_flight + queue.len() + credit;
        let want = (plan.concurrency + ahead.room())
            .saturating_sub(held)
            .min(puller.credit_limit().saturating_sub(credit));
        let batch = if credit == 0 { 1 } else { ahead.batch() };
        tokio::select! {
            biased;
            _ = stop.changed() => break 'pull,
            Some(()) = tasks.next(), if !tasks.is_empty() => ahead.finished(),
            _ = worker.repull.notified() => {
                // Found stalled (`stats.rs`): the credit asked for is forgotten, asked anew.
                if let Pulled::Failed(e) = puller.reset().await {
                    tracing::warn!(target: "eventbus::dispatch", consumer = %worker.consumer_name, error = %e, "cannot pull anew");
                }
                credit = 0;
            }
            _ = std::future::ready(()), if want >= batch => {
                match puller.request(want).await {
                    Ok(()) => credit += want,
                    Err(e) => {
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
                        credit = credit.saturating_sub(1);
                        if !worker.takes(msg.subject()) {
                            // Not this handler's: the consumer reads the whole stream.
                            if let Err(e) = msg.settle(AckKind::Ack).await {
                                tracing::warn!(target: "eventbus::dispatch", consumer = %worker.consumer_name, error = %e, "cannot ack an event skipped; the server will deliver it again");
                            }
                            continue;
                        }
                        match permits.clone().try_acquire_owned() {
                            Ok(permit) if queue.is_empty() => {
                                start(&worker, &mut tasks, &lanes, &stop, msg, permit);
                            }
                            _ => queue.push_back((msg, Instant::now())),
                        }
                    }
                    Pulled::Returned(n) => credit = credit.saturating_sub(n),
                    Pulled::Reset => {
                        credit = 0;
                        // What the old pull still had on its way is pending on the server: the
                        // ordered gate holds its aggregates' later events back.
                        if plan.ordered && !arm(&worker, &lanes, &mut stop).await {
                            break 'pull;
                        }
                    }
                    Pulled::Failed(e) => {
                        credit = 0;
                        tracing::warn!(target: "eventbus::dispatch", consumer = %worker.consumer_name, error = %e, "pull failed; pulling again shortly");
                        tokio::select! {
                            _ = stop.changed() => break 'pull,
                            _ = tokio::time::sleep(PULL_RETRY) => {}
                        }
                    }
                }
            }
            // Only while there is something to measure or keep: an idle worker is not woken.
            _ = keep_tick.tick(), if !queue.is_empty() || !tasks.is_empty() || ahead.busy() => {
                ahead.measure();
                // Queued events still waiting are kept, so the server does not deliver them
                // again meanwhile.
                for (msg, since) in &queue {
                    if since.elapsed() >= keep_every {
                        let _ = msg.settle(AckKind::Progress).await;
                    }
                }
            }
        }
    }
    // Stop pulling. Events still queued go back to the server at once, for this consumer's
    // other instances (or the next start); an event still waiting in an ordered lane is
    // neither acked nor nak'd, and the server redelivers it after the ack wait.
    for (msg, _) in queue.drain(..) {
        let _ = msg.settle(AckKind::Nak(None)).await;
    }
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

/// How far a worker pulls ahead of its free handler slots: the events its handlers finish in
/// [`AHEAD_HORIZON`], measured, at most [`MAX_AHEAD`]. Fast handlers thus have events at
/// hand when a slot comes free (the pull's round trip does not stall them), and slow handlers
/// get none ahead: an event waiting for a slot waits at most about that horizon, is kept with
/// in-progress acks meanwhile, and is not taken from the consumer's other instances. Ordered
/// workers pull nothing ahead (their lanes already hold what waits).
struct Ahead {
    ordered: bool,
    concurrency: usize,
    /// Events finished since the last measure.
    finished: u64,
    since: Instant,
    /// Events finished per second, smoothed.
    rate: f64,
}

/// How much work a worker pulls ahead of its free slots (see [`Ahead`]).
const AHEAD_HORIZON: Duration = Duration::from_millis(20);
/// The most events a worker pulls ahead of its free slots.
const MAX_AHEAD: usize = 512;

impl Ahead {
    fn new(plan: &ConsumerPlan) -> Ahead {
        Ahead {
            ordered: plan.ordered,
            concurrency: plan.concurrency,
            finished: 0,
            since: Instant::now(),
            rate: 0.0,
        }
    }

    fn finished(&mut self) {
        self.finished += 1;
    }

    /// Whether events finished since the last measure.
    fn busy(&self) -> bool {
        self.finished > 0
    }

    /// Updates the rate from what finished since the last call (made while busy, so a pause
    /// between bursts counts as a slow window once).
    fn measure(&mut self) {
        let elapsed = self.since.elapsed().as_secs_f64();
        if elapsed <= 0.0 {
            return;
        }
        let now = self.finished as f64 / elapsed;
        self.rate = if self.rate == 0.0 {
            now
        } else {
            0.5 * self.rate + 0.5 * now
        };
        self.finished = 0;
        self.since = Instant::now();
    }

    /// How many events to hold beyond the handler slots.
    fn room(&self) -> usize {
        if self.ordered {
            return 0;
        }
        ((self.rate * AHEAD_HORIZON.as_secs_f64()) as usize).min(MAX_AHEAD)
    }

    /// The least credit worth a pull request while some is on its way: a quarter of the
    /// window, so requests overlap and the flow does not stop while one travels.
    fn batch(&self) -> usize {
        ((self.concurrency + self.room()) / 4).max(1)
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
            lane.run(&stopped, permit, |m| handle(&w, m)).await;
        }));
    }
}

/// Arms the ordered gate (see `ordered.rs`), trying again until it is armed or the worker
/// stops; `false` if it stopped.
async fn arm(worker: &Worker, lanes: &Lanes, stop: &mut watch::Receiver<bool>) -> bool {
    let source = Source {
        backend: worker.publisher.backend(),
        stream: &worker.stream,
        consumer: &worker.consumer_name,
        filters: &worker.plan.filters,
    };
    loop {
        match lanes.arm(&source).await {
            Ok(()) => return true,
            Err(e) => {
                tracing::warn!(target: "eventbus::dispatch", consumer = %worker.consumer_name, error = %e, "ordered: cannot read which events are still pending; trying again");
                tokio::select! {
                    _ = stop.changed() => return false,
                    _ = tokio::time::sleep(PULL_RETRY) => {}
                }
            }
        }
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
