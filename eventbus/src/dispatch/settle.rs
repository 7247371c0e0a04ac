//! One event's handling, from decoding to its fate: decide once what becomes of it (ack,
//! retry with backoff, dead letter, or leave), tell the observer, and settle it with the server.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::HeaderMap;
use futures::FutureExt;

use super::{Settled, Settlement, Worker};
use crate::backend::Incoming;
use crate::config::AckPolicy;
use crate::dlq::{self, DeadReason};
use crate::envelope::{headers, Metadata};
use crate::error::{chain, ErrorKind};
use crate::handler::{Delivery, EventContext, HandlerError};
use crate::observe::metrics;
use crate::observe::trace::{self, InScope, Process};
use crate::topology::ConsumerPlan;

enum Outcome {
    Handled,
    Failed(HandlerError),
    /// The handler panicked (a transient failure).
    Panicked(HandlerError),
    Dead(DeadReason, String),
}

/// The id a message carries in its headers (`ce-id` in any case, else `Nats-Msg-Id`), for a
/// message whose metadata could not be read (and one the safety net fetched, `rescue.rs`).
pub(super) fn header_id(headers: &HeaderMap) -> Option<&str> {
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| AsRef::<str>::as_ref(n).eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.first())
            .map(|v| v.as_str())
    };
    find(headers::ID).or_else(|| find(headers::MSG_ID))
}

fn observe(
    w: &Worker,
    msg: &Incoming,
    event_id: Option<&str>,
    seq: u64,
    attempt: u64,
    settlement: Settlement,
) {
    let Some(o) = &w.observer else { return };
    o.settled(Settled {
        handler: &w.plan.handler,
        subject: msg.subject(),
        event_id,
        sequence: seq,
        attempt,
        settlement,
    });
}

/// Handles one delivered event to the end: settled (acked, nak'd or terminated) or, at
/// shutdown, left for redelivery.
pub(super) async fn handle(w: &Worker, mut msg: Incoming) {
    let plan = &w.plan;
    let (stream_sequence, delivered, pending) = match msg.info() {
        Ok(i) => (i.stream_sequence, i.delivered, i.pending),
        Err(e) => {
            tracing::error!(target: "eventbus::dispatch", consumer = %w.consumer_name, subject = %msg.subject(), error = %e, "message without JetStream metadata; skipped");
            return;
        }
    };
    let _in_flight = w.metrics.start(delivered);
    // The headers move into the metadata: no copy per event.
    let headers = msg.take_headers();
    let scope = trace::process_span(
        &Process {
            handler: &plan.handler,
            filter: &plan.filter,
            consumer: &w.consumer_name,
            stream: &w.stream,
            subject: msg.subject(),
            stream_sequence,
            delivered,
        },
        &headers,
    );
    async move {
        let explicit = plan.ack == AckPolicy::Explicit;
        // Whether the message carried an id of its own (else it gets one of its stream's).
        let mut carried_id = true;
        let meta = match Metadata::from_owned(msg.subject(), headers, msg.payload()) {
            Ok(mut m) => {
                if m.id.is_empty() {
                    carried_id = false;
                    m.id = format!("{}:{stream_sequence}", w.stream);
                }
                Arc::new(m)
            }
            Err(failed) => {
                let (e, headers) = *failed;
                let dead = Outcome::Dead(DeadReason::Undecodable, chain(&e));
                let id = header_id(&headers);
                settle(w, &msg, &headers, id, stream_sequence, delivered, dead).await;
                return;
            }
        };
        let event_id = carried_id.then_some(meta.id.as_str());
        tracing::Span::current().record("messaging.message.id", meta.id.as_str());
        if explicit && delivered as i64 > plan.max_deliver {
            let why = format!(
                "delivered {delivered} times, more than max_deliver {}: the last attempt did not finish",
                plan.max_deliver
            );
            settle(w, &msg, &meta.headers, event_id, stream_sequence, delivered, Outcome::Dead(DeadReason::MaxDeliver, why)).await;
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
                publisher: Some(w.publisher.clone()),
                states: w.states.clone(),
            };
            let outcome = call(w, &msg, &meta, ctx, explicit).await;
            let panicked = matches!(outcome, Outcome::Panicked(_));
            match outcome {
                Outcome::Failed(e) | Outcome::Panicked(e) if plan.ordered && explicit && !e.is_permanent() && (attempt as i64) < plan.max_deliver => {
                    // Ordered: retry in place so later events of the aggregate wait.
                    let delay = plan.retry_delay(attempt);
                    tracing::warn!(target: "eventbus::dispatch", error = %e, attempt, ?delay, "handler failed; retrying in order");
                    w.metrics.settled(if panicked { metrics::Outcome::Panicked } else { metrics::Outcome::Retried });
                    observe(w, &msg, event_id, stream_sequence, attempt, Settlement::Retried { error: e.to_string() });
                    keep_while(&msg, plan.ack_wait, tokio::time::sleep(delay)).await;
                    attempt += 1;
                }
                other => {
                    settle(w, &msg, &meta.headers, event_id, stream_sequence, attempt, other).await;
                    return;
                }
            }
        }
    }
    .in_scope(scope)
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
            return Outcome::Dead(reason, chain(&e));
        }
        Err(panic) => return Outcome::Panicked(panicked(panic)),
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
        Err(panic) => Outcome::Panicked(panicked(panic)),
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
        Outcome::Failed(e) | Outcome::Panicked(e) => (e.is_permanent(), e.to_string()),
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
    event_id: Option<&str>,
    seq: u64,
    delivered: u64,
    outcome: Outcome,
) {
    let special = match &outcome {
        Outcome::Panicked(_) => Some(metrics::Outcome::Panicked),
        Outcome::Dead(DeadReason::Undecodable | DeadReason::UnknownEventType, _) => {
            Some(metrics::Outcome::Undecodable)
        }
        _ => None,
    };
    let action = decide(&w.plan, delivered, outcome);
    w.metrics.settled(special.unwrap_or(match &action {
        Action::Ack => metrics::Outcome::Acked,
        Action::Retry { .. } => metrics::Outcome::Retried,
        Action::DeadLetter { .. } => metrics::Outcome::DeadLettered,
        Action::Leave { .. } => metrics::Outcome::Unacknowledged,
    }));
    if w.observer.is_some() {
        let settlement = match &action {
            Action::Ack => Settlement::Acked,
            Action::Retry { error, .. } => Settlement::Retried {
                error: error.clone(),
            },
            Action::DeadLetter { reason, error } => Settlement::DeadLettered {
                reason: reason.as_str(),
                error: error.clone(),
            },
            Action::Leave { .. } => Settlement::Unacknowledged,
        };
        observe(w, msg, event_id, seq, delivered, settlement);
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
    let given = dlq::Given {
        subject: msg.subject(),
        headers,
        payload: msg.payload(),
        stream: &w.stream,
        sequence: seq,
        consumer: &w.consumer_name,
        deliveries: delivered,
        reason,
        error,
    };
    match dlq::store(&w.publisher, &given).await {
        Ok(()) => {
            w.metrics.dead_letter(reason.as_str());
            if let Err(e) = msg.settle(AckKind::Term).await {
                tracing::warn!(target: "eventbus::dispatch", error = %e, "cannot terminate dead-lettered event");
            }
        }
        Err(e) => {
            tracing::error!(target: "eventbus::dispatch", error = %chain(&e), "cannot store dead letter; the event is retried later");
            let _ = msg
                .settle(AckKind::Nak(Some(w.plan.retry_delay(delivered))))
                .await;
        }
    }
}
