//! Dispatch: one worker per handler pulls its consumer's events, decodes them, calls the
//! handler, and settles each event: ack on success, nak with backoff on error, dead letter
//! and term when retrying cannot help.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::AckKind;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use crate::backend::{Backend, Incoming, Pulled, Puller};
use crate::bus::Bus;
use crate::envelope::{headers_without, Metadata};
use crate::error::{Error, ErrorKind};
use crate::handler::{Delivery, EventContext, HandlerError};
use crate::registry::AckPolicy;
use crate::testing::{Handled, Outcome as Recorded, Recorder};
use crate::topology::ConsumerPlan;
use async_nats::HeaderMap;

/// Header names of a dead letter.
pub mod dlq_headers {
    /// Why the event was dead-lettered: `permanent`, `max_deliver`, `undecodable`,
    /// `unknown_event_type`.
    pub const REASON: &str = "eventbus-dlq-reason";
    /// The handler's last error.
    pub const ERROR: &str = "eventbus-dlq-error";
    /// The subject the event was published on.
    pub const ORIGINAL_SUBJECT: &str = "eventbus-original-subject";
    /// Its sequence in its stream.
    pub const ORIGINAL_SEQUENCE: &str = "eventbus-original-sequence";
    /// Its stream.
    pub const ORIGINAL_STREAM: &str = "eventbus-original-stream";
    /// The consumer that gave up on it.
    pub const CONSUMER: &str = "eventbus-dlq-consumer";
    /// How many times it was delivered.
    pub const DELIVERIES: &str = "eventbus-deliveries";
}

/// Why an event was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeadReason {
    Permanent,
    MaxDeliver,
    Undecodable,
    UnknownEventType,
}

impl DeadReason {
    fn as_str(self) -> &'static str {
        match self {
            DeadReason::Permanent => "permanent",
            DeadReason::MaxDeliver => "max_deliver",
            DeadReason::Undecodable => "undecodable",
            DeadReason::UnknownEventType => "unknown_event_type",
        }
    }
}

/// The handlers in flight of one worker.
type Tasks = FuturesUnordered<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>;

/// Events waiting behind their aggregate's earlier event, by aggregate id (ordered mode).
type Lanes = Arc<Mutex<HashMap<String, VecDeque<Incoming>>>>;

/// What a worker needs, shared by its tasks.
pub(crate) struct Worker {
    pub(crate) plan: ConsumerPlan,
    pub(crate) stream: String,
    pub(crate) consumer_name: String,
    pub(crate) bus: Bus,
    pub(crate) backend: Backend,
    /// Records outcomes and counts handlers in flight, for [`crate::testing`].
    pub(crate) recorder: Option<Arc<Recorder>>,
    pub(crate) dlq_subject: String,
}

/// The pause after a failed pull before the next one.
const PULL_RETRY: Duration = Duration::from_millis(500);

/// Runs a worker until `stop` turns true, then lets in-flight handlers finish within `grace`.
///
/// Events are pulled by credit, only for free handler slots (see [`crate::pull`]): each
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
    let lanes: Lanes = Arc::default();
    // Ordered: events waiting in a lane behind their aggregate's earlier event are kept with
    // in-progress acks, so the server does not redeliver them meanwhile.
    let keeper = plan.ordered.then(|| {
        let lanes = lanes.clone();
        let every = (plan.ack_wait / 2).max(Duration::from_millis(50));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let waiting: Vec<Incoming> = lanes
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
    });
    'pull: loop {
        if *stop.borrow() {
            break;
        }
        let want = if reserved.is_empty() { 1 } else { min_batch };
        tokio::select! {
            biased;
            _ = stop.changed() => break 'pull,
            Some(()) = tasks.next(), if !tasks.is_empty() => {}
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

/// Starts handling one pulled event in its own task, holding `permit` until it is settled. In
/// ordered mode an event whose aggregate has an event in flight waits in that aggregate's lane
/// instead, and gives its slot back.
fn start(
    worker: &Arc<Worker>,
    tasks: &mut Tasks,
    lanes: &Lanes,
    stop: &watch::Receiver<bool>,
    msg: Incoming,
    permit: OwnedSemaphorePermit,
) {
    if !worker.plan.ordered {
        let w = worker.clone();
        tasks.push(Box::pin(async move {
            handle(&w, msg).await;
            drop(permit);
        }));
        return;
    }
    let key = ordering_key(&msg);
    let mut map = lanes.lock().expect("lanes lock");
    if let Some(queue) = map.get_mut(&key) {
        queue.push_back(msg);
        return;
    }
    map.insert(key.clone(), VecDeque::new());
    drop(map);
    let w = worker.clone();
    let lanes = lanes.clone();
    let stopped = stop.clone();
    tasks.push(Box::pin(async move {
        let mut current = msg;
        loop {
            handle(&w, current).await;
            let mut map = lanes.lock().expect("lanes lock");
            if *stopped.borrow() {
                // Shutting down: later events of this aggregate were not tried; leave them to
                // be redelivered.
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
        drop(permit);
    }));
}

fn ordering_key(msg: &Incoming) -> String {
    let subject = msg.subject();
    match crate::subject::split_event_subject(subject) {
        Some((_, id, _)) => id.to_owned(),
        None => subject.to_owned(),
    }
}

enum Outcome {
    Handled,
    Failed(HandlerError),
    Dead(DeadReason, String),
}

/// Handles one delivered event to the end: settled (acked, nak'd or terminated) or, at
/// shutdown, left for redelivery.
async fn handle(w: &Worker, msg: Incoming) {
    if let Some(r) = &w.recorder {
        r.begin();
    }
    handle_inner(w, msg).await;
    if let Some(r) = &w.recorder {
        r.end();
    }
}

fn record(
    w: &Worker,
    msg: &Incoming,
    headers: &HeaderMap,
    seq: u64,
    attempt: u64,
    outcome: Recorded,
) {
    let Some(r) = &w.recorder else { return };
    let subject = msg.subject().to_owned();
    let aggregate_id = crate::subject::split_event_subject(&subject)
        .map(|(_, id, _)| id.to_owned())
        .unwrap_or_default();
    r.record(Handled {
        handler: w.plan.handler.clone(),
        event_id: headers
            .get(crate::envelope::headers::ID)
            .map(|v| v.as_str().to_owned()),
        subject,
        aggregate_id,
        sequence: seq,
        attempt,
        outcome,
    });
}

async fn handle_inner(w: &Worker, mut msg: Incoming) {
    let plan = &w.plan;
    let (stream_sequence, delivered, pending) = match msg.info() {
        Ok(i) => (i.stream_sequence, i.delivered, i.pending),
        Err(e) => {
            tracing::error!(target: "eventbus::dispatch", consumer = %w.consumer_name, subject = %msg.subject(), error = %e, "message without JetStream metadata; skipped");
            return;
        }
    };
    let span = tracing::info_span!(
        target: "eventbus::dispatch",
        "handle",
        handler = %plan.handler,
        subject = %msg.subject(),
        stream_sequence,
        delivered,
    );
    async move {
        let explicit = plan.ack == AckPolicy::Explicit;
        // The headers move into the metadata: no copy per event.
        let headers = msg.take_headers();
        let meta = match Metadata::from_owned(msg.subject(), headers) {
            Ok(mut m) => {
                if m.id.is_empty() {
                    m.id = format!("{}:{stream_sequence}", w.stream);
                }
                Arc::new(m)
            }
            Err(failed) => {
                let (e, headers) = *failed;
                let dead = Outcome::Dead(DeadReason::Undecodable, crate::error::chain(&e));
                settle(w, &msg, &headers, stream_sequence, delivered, dead).await;
                return;
            }
        };
        if explicit && delivered as i64 > plan.max_deliver {
            let why = format!(
                "delivered {delivered} times, more than max_deliver {}: the last attempt did not finish",
                plan.max_deliver
            );
            settle(w, &msg, &meta.headers, stream_sequence, delivered, Outcome::Dead(DeadReason::MaxDeliver, why)).await;
            return;
        }
        let mut attempt = delivered;
        loop {
            let ctx = EventContext {
                meta: meta.clone(),
                delivery: Arc::new(Delivery {
                    stream: w.stream.clone(),
                    consumer: w.consumer_name.clone(),
                    stream_sequence,
                    delivered: attempt,
                    pending,
                }),
                bus: Some(w.bus.clone()),
            };
            let outcome = call(w, &msg, &meta, ctx, explicit).await;
            match outcome {
                Outcome::Failed(e) if plan.ordered && explicit && !e.is_permanent() && (attempt as i64) < plan.max_deliver => {
                    // Ordered: retry in place so later events of the aggregate wait.
                    let delay = plan.retry_delay(attempt);
                    tracing::warn!(target: "eventbus::dispatch", error = %e, attempt, ?delay, "handler failed; retrying in order");
                    record(w, &msg, &meta.headers, stream_sequence, attempt, Recorded::Retried { error: e.to_string() });
                    keep_while(&msg, plan.ack_wait, tokio::time::sleep(delay)).await;
                    attempt += 1;
                }
                other => {
                    settle(w, &msg, &meta.headers, stream_sequence, attempt, other).await;
                    return;
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// Decodes and runs the handler, catching panics, keeping the event with in-progress acks
/// while it runs.
async fn call(
    w: &Worker,
    msg: &Incoming,
    meta: &Metadata,
    ctx: EventContext,
    explicit: bool,
) -> Outcome {
    let reg = w.plan.registration;
    let started =
        std::panic::catch_unwind(AssertUnwindSafe(|| (reg.call)(meta, msg.payload(), ctx)));
    let fut = match started {
        Ok(Ok(fut)) => fut,
        Ok(Err(e)) => {
            let reason = if e.kind() == ErrorKind::UnknownEventType {
                DeadReason::UnknownEventType
            } else {
                DeadReason::Undecodable
            };
            return Outcome::Dead(reason, crate::error::chain(&e));
        }
        Err(panic) => return Outcome::Failed(panicked(panic)),
    };
    let guarded = AssertUnwindSafe(fut).catch_unwind();
    let result = if explicit {
        keep_while(msg, w.plan.ack_wait, guarded).await
    } else {
        guarded.await
    };
    match result {
        Ok(Ok(())) => Outcome::Handled,
        Ok(Err(e)) => Outcome::Failed(e),
        Err(panic) => Outcome::Failed(panicked(panic)),
    }
}

fn panicked(panic: Box<dyn std::any::Any + Send>) -> HandlerError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string payload".to_owned());
    HandlerError::transient(format!("handler panicked: {what}"))
}

/// Runs `fut`, sending in-progress acks so the server does not redeliver the event meanwhile.
async fn keep_while<F: std::future::Future>(
    msg: &Incoming,
    ack_wait: Duration,
    fut: F,
) -> F::Output {
    tokio::pin!(fut);
    // Most handlers finish at their first poll: no timer for them.
    if let Some(out) = fut.as_mut().now_or_never() {
        return out;
    }
    let every = (ack_wait / 2).max(Duration::from_millis(50));
    loop {
        tokio::select! {
            out = &mut fut => return out,
            _ = tokio::time::sleep(every) => {
                if let Err(e) = msg.settle(AckKind::Progress).await {
                    tracing::warn!(target: "eventbus::dispatch", error = %e, "cannot send in-progress ack");
                }
            }
        }
    }
}

/// What becomes of an event once its handler is done with it.
enum Action {
    Ack,
    Retry {
        delay: Duration,
        error: String,
    },
    DeadLetter {
        reason: DeadReason,
        error: String,
    },
    /// `ack = none`: nothing is settled.
    Leave {
        failure: Option<String>,
    },
}

/// Decides, once, what becomes of an event after its `delivered`-th delivery.
fn decide(plan: &ConsumerPlan, delivered: u64, outcome: Outcome) -> Action {
    let failure = match outcome {
        Outcome::Handled if plan.ack == AckPolicy::None => return Action::Leave { failure: None },
        Outcome::Handled => return Action::Ack,
        Outcome::Failed(e) => (e.is_permanent(), e.to_string()),
        Outcome::Dead(reason, error) if plan.ack != AckPolicy::None => {
            return Action::DeadLetter { reason, error }
        }
        Outcome::Dead(_, error) => {
            return Action::Leave {
                failure: Some(error),
            }
        }
    };
    match failure {
        (_, error) if plan.ack == AckPolicy::None => Action::Leave {
            failure: Some(error),
        },
        (true, error) => Action::DeadLetter {
            reason: DeadReason::Permanent,
            error,
        },
        (false, error) if delivered as i64 >= plan.max_deliver => Action::DeadLetter {
            reason: DeadReason::MaxDeliver,
            error,
        },
        (false, error) => Action::Retry {
            delay: plan.retry_delay(delivered),
            error,
        },
    }
}

async fn settle(
    w: &Worker,
    msg: &Incoming,
    headers: &HeaderMap,
    seq: u64,
    delivered: u64,
    outcome: Outcome,
) {
    let action = decide(&w.plan, delivered, outcome);
    if w.recorder.is_some() {
        let recorded = match &action {
            Action::Ack => Recorded::Acked,
            Action::Retry { error, .. } => Recorded::Retried {
                error: error.clone(),
            },
            Action::DeadLetter { reason, error } => Recorded::DeadLettered {
                reason: reason.as_str().to_owned(),
                error: error.clone(),
            },
            Action::Leave { .. } => Recorded::Unacknowledged,
        };
        record(w, msg, headers, seq, delivered, recorded);
    }
    let result = match action {
        Action::Ack => msg.settle(AckKind::Ack).await,
        Action::Retry { delay, error } => {
            tracing::warn!(target: "eventbus::dispatch", %error, ?delay, "handler failed; retrying after a delay");
            msg.settle(AckKind::Nak(Some(delay))).await
        }
        Action::DeadLetter { reason, error } => {
            dead_letter(w, msg, headers, seq, delivered, reason, &error).await;
            return;
        }
        Action::Leave { failure } => {
            if let Some(error) = failure {
                tracing::warn!(target: "eventbus::dispatch", %error, "event not handled; ack = none, so it is neither retried nor dead-lettered");
            }
            return;
        }
    };
    if let Err(e) = result {
        tracing::warn!(target: "eventbus::dispatch", error = %e, "cannot settle event; the server will redeliver it");
    }
}

/// Stores the event in the dead-letter stream, then terminates it. If the dead letter cannot be
/// stored, the event is nak'd instead, so it is not lost.
async fn dead_letter(
    w: &Worker,
    msg: &Incoming,
    headers: &HeaderMap,
    seq: u64,
    delivered: u64,
    reason: DeadReason,
    error: &str,
) {
    tracing::error!(target: "eventbus::dispatch", reason = reason.as_str(), %error, "dead-lettering event");
    match store_dead_letter(w, msg, headers, seq, delivered, reason, error).await {
        Ok(()) => {
            if let Err(e) = msg.settle(AckKind::Term).await {
                tracing::warn!(target: "eventbus::dispatch", error = %e, "cannot terminate dead-lettered event");
            }
        }
        Err(e) => {
            tracing::error!(target: "eventbus::dispatch", error = %crate::error::chain(&e), "cannot store dead letter; the event is retried later");
            let _ = msg
                .settle(AckKind::Nak(Some(w.plan.retry_delay(delivered))))
                .await;
        }
    }
}

fn header_text(s: &str) -> String {
    let mut t: String = s
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    if t.len() > 2048 {
        let mut cut = 2048;
        while !t.is_char_boundary(cut) {
            cut -= 1;
        }
        t.truncate(cut);
    }
    t
}

async fn store_dead_letter(
    w: &Worker,
    msg: &Incoming,
    original: &HeaderMap,
    seq: u64,
    delivered: u64,
    reason: DeadReason,
    error: &str,
) -> Result<(), Error> {
    // The original headers, less the server's own (`Nats-Msg-Id` is set anew below).
    let mut headers = headers_without(original, |n| n.starts_with("Nats-"));
    headers.insert(dlq_headers::REASON, reason.as_str());
    headers.insert(dlq_headers::ERROR, header_text(error));
    headers.insert(dlq_headers::ORIGINAL_SUBJECT, msg.subject());
    headers.insert(dlq_headers::ORIGINAL_SEQUENCE, seq.to_string());
    headers.insert(dlq_headers::ORIGINAL_STREAM, w.stream.as_str());
    headers.insert(dlq_headers::CONSUMER, w.consumer_name.as_str());
    headers.insert(dlq_headers::DELIVERIES, delivered.to_string());
    let id = format!("dlq-{}-{}-{seq}", w.consumer_name, w.stream);
    headers.insert(crate::envelope::headers::MSG_ID, id.as_str());
    w.backend
        .publish_acked(3, &w.dlq_subject, headers, msg.payload().clone())
        .await
        .map(|_| ())
        .map_err(|e| crate::publish::publish_error(&w.dlq_subject, e))
}
