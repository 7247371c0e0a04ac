//! The safety net: no event may leave a consumer neither handled nor dead-lettered, even one
//! the client never sees.
//!
//! A delivery the client cannot parse (a foreign producer's header value that is not UTF-8,
//! a header line with no colon) breaks the connection before dispatch sees it; so would one
//! lost in any other way. Its deliveries run out unsettled, and the server gives up on it and
//! says so in a max-deliveries advisory. This task listens to those advisories for its
//! consumer (a queue group, so one instance of a service takes each), fetches the event by
//! stream sequence as data (the stream's message-get API answers JSON with base64 headers and
//! body: nothing the client must parse), and dead-letters it with the reason `undeliverable`,
//! naming the header lines that are not valid. The server sends such an advisory only while
//! someone pulls from the consumer, and every worker subscribes before its first pull.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::settle::header_id;
use super::{Settled, Settlement, Worker};
use crate::backend::{GaveUp, GivenUp};
use crate::dlq::{self, DeadReason};
use crate::error::chain;

/// How many times rescuing one event is tried, a second apart.
const ATTEMPTS: u32 = 30;

/// Dead-letters every event the worker's consumer gives up on, until `stop` turns true.
pub(super) async fn run(
    worker: Arc<Worker>,
    mut notices: GivenUp,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let gave_up = tokio::select! {
            _ = stop.changed() => return,
            n = notices.next() => match n {
                Some(n) => n,
                None => return,
            },
        };
        rescue(&worker, gave_up).await;
    }
}

/// Why one try at rescuing an event failed.
enum Failed {
    /// The event is no longer in its stream: nothing to dead-letter.
    Gone(crate::Error),
    /// Fetching or storing failed for now (no connection, no answer): try again.
    Again(crate::Error),
}

async fn rescue(w: &Worker, gave_up: GaveUp) {
    let sequence = gave_up.sequence;
    for attempt in 1..=ATTEMPTS {
        match try_rescue(w, gave_up).await {
            Ok(()) => return,
            Err(Failed::Gone(e)) => {
                tracing::error!(target: "eventbus::dispatch", consumer = %w.consumer_name, stream = %w.stream, sequence, error = %chain(&e), "the server gave up on an event that is no longer in its stream");
                return;
            }
            Err(Failed::Again(e)) => {
                tracing::warn!(target: "eventbus::dispatch", consumer = %w.consumer_name, stream = %w.stream, sequence, attempt, error = %chain(&e), "cannot dead-letter an event the server gave up on yet; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    tracing::error!(target: "eventbus::dispatch", consumer = %w.consumer_name, stream = %w.stream, sequence, "gave up dead-lettering an event the server gave up on; it stays in its stream");
}

/// Fetches the event as data, dead-letters it, and tells the metrics and the observer.
async fn try_rescue(w: &Worker, gave_up: GaveUp) -> Result<(), Failed> {
    let GaveUp {
        sequence,
        deliveries,
    } = gave_up;
    let (stored, unreadable) = w
        .publisher
        .backend()
        .get_as_data(&w.stream, sequence)
        .await
        .map_err(|e| match e.kind() {
            crate::ErrorKind::NotFound => Failed::Gone(e),
            _ => Failed::Again(e),
        })?;
    let error = if unreadable.is_empty() {
        format!(
            "the server gave up after {deliveries} deliveries, none of them settled (not received, or not finished within the ack wait)"
        )
    } else {
        format!(
            "the server gave up after {deliveries} deliveries, none of them settled: the client cannot receive the event, as these header lines are not valid headers (dropped from the dead letter): {}",
            unreadable.join(" | ")
        )
    };
    let given = dlq::Given {
        subject: &stored.subject,
        headers: &stored.headers,
        payload: &stored.payload,
        stream: &w.stream,
        sequence,
        consumer: &w.consumer_name,
        deliveries,
        reason: DeadReason::Undeliverable,
        error: &error,
    };
    dlq::store(&w.publisher, &given)
        .await
        .map_err(Failed::Again)?;
    w.metrics.dead_letter(DeadReason::Undeliverable.as_str());
    tracing::error!(target: "eventbus::dispatch", consumer = %w.consumer_name, stream = %w.stream, sequence, %error, "dead-lettered an event the server gave up on");
    if let Some(o) = &w.observer {
        o.settled(Settled {
            handler: &w.plan.handler,
            subject: &stored.subject,
            event_id: header_id(&stored.headers),
            sequence,
            attempt: deliveries,
            settlement: Settlement::DeadLettered {
                reason: DeadReason::Undeliverable.as_str(),
                error,
            },
        });
    }
    Ok(())
}
