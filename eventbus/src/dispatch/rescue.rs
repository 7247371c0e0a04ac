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

use super::{Settled, Settlement, Worker};
use crate::backend::{GaveUp, GivenUp};
use crate::dlq::{self, DeadReason};
use crate::envelope::headers;
use crate::error::chain;

/// How many times storing one rescued dead letter is tried, a second apart.
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

async fn rescue(w: &Worker, gave_up: GaveUp) {
    let GaveUp {
        sequence,
        deliveries,
    } = gave_up;
    let backend = w.publisher.backend();
    for attempt in 1..=ATTEMPTS {
        let outcome = async {
            let (stored, unreadable) = backend.get_as_data(&w.stream, sequence).await?;
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
            dlq::store(&w.publisher, &given).await?;
            Ok::<_, crate::Error>((stored, error))
        }
        .await;
        match outcome {
            Ok((stored, error)) => {
                w.metrics.dead_letter(DeadReason::Undeliverable.as_str());
                tracing::error!(target: "eventbus::dispatch", consumer = %w.consumer_name, stream = %w.stream, sequence, %error, "dead-lettered an event the server gave up on");
                if let Some(o) = &w.observer {
                    let id = stored
                        .headers
                        .get(headers::ID)
                        .or_else(|| stored.headers.get(headers::MSG_ID))
                        .map(|v| v.as_str());
                    o.settled(Settled {
                        handler: &w.plan.handler,
                        subject: &stored.subject,
                        event_id: id,
                        sequence,
                        attempt: deliveries,
                        settlement: Settlement::DeadLettered {
                            reason: DeadReason::Undeliverable.as_str(),
                            error,
                        },
                    });
                }
                return;
            }
            Err(e) if e.kind() == crate::ErrorKind::NotFound && attempt > 1 => {
                tracing::error!(target: "eventbus::dispatch", consumer = %w.consumer_name, stream = %w.stream, sequence, error = %chain(&e), "the server gave up on an event that is no longer in its stream");
                return;
            }
            Err(e) => {
                tracing::warn!(target: "eventbus::dispatch", consumer = %w.consumer_name, stream = %w.stream, sequence, attempt, error = %chain(&e), "cannot dead-letter an event the server gave up on yet; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    tracing::error!(target: "eventbus::dispatch", consumer = %w.consumer_name, stream = %w.stream, sequence, "gave up dead-lettering an event the server gave up on; it stays in its stream");
}
