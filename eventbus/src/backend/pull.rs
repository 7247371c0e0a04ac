//! Pulling a JetStream consumer's events by credit: the worker asks for exactly as many events
//! as it has free handler slots, so every event it receives starts at once (an event waiting
//! in a client-side buffer gets no in-progress acks and would be redelivered after the ack
//! wait, then handled twice). Requests overlap, so the flow does not stop while a pull
//! travels to the server and back.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::{StatusCode, Subscriber};
use futures::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;

use super::nats::Nats;
use super::{ConnectionState, Incoming, Pulled};
use crate::error::{Error, ErrorKind};

/// How long one pull request waits on the server.
const EXPIRES: Duration = Duration::from_secs(30);
/// How often the server says a waiting pull request is still alive.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// Pulls one consumer by credit.
pub(crate) struct NatsPuller {
    client: async_nats::Client,
    context: jetstream::Context,
    subject: String,
    inbox: async_nats::Subject,
    sub: Subscriber,
    outstanding: usize,
    last_activity: Instant,
    state: watch::Receiver<ConnectionState>,
    connected: bool,
    /// The consumer's ack wait.
    ack_wait: Duration,
    /// Until when events are pulled one at a time (see [`NatsPuller::credit_limit`]).
    single_until: Option<Instant>,
}

impl NatsPuller {
    pub(crate) async fn new(
        nats: &Nats,
        stream: &str,
        consumer: &str,
        state: watch::Receiver<ConnectionState>,
        ack_wait: Duration,
    ) -> Result<Self, Error> {
        let client = nats.client.clone();
        let context = &nats.js;
        let (inbox, sub) = subscribe(&client).await?;
        Ok(NatsPuller {
            inbox,
            subject: format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"),
            context: context.clone(),
            client,
            sub,
            outstanding: 0,
            last_activity: Instant::now(),
            connected: true,
            state,
            ack_wait,
            single_until: None,
        })
    }

    /// How many events may be on their way at once: one for a while after the connection
    /// dropped with events on their way, else no limit but the handler slots.
    ///
    /// A delivery the client cannot parse (a foreign producer's invalid header) breaks the
    /// connection, and the events behind it on the wire are lost with it; they come again after
    /// their ack wait, and so does it. Pulled one at a time, it goes alone, and the others are
    /// handled; once the server gives up on it, the safety net dead-letters it
    /// (`dispatch/rescue.rs`). A drop for another reason costs the same slow pace for the
    /// same while: twice the ack wait, from the last drop.
    pub(crate) fn credit_limit(&self) -> usize {
        match self.single_until {
            Some(until) if Instant::now() < until => 1,
            _ => usize::MAX,
        }
    }

    /// Asks the server for up to `n` more events.
    pub(crate) async fn request(&mut self, n: usize) -> Result<(), Error> {
        let body = serde_json::json!({
            "batch": n,
            "expires": EXPIRES.as_nanos() as u64,
            "idle_heartbeat": HEARTBEAT.as_nanos() as u64,
        });
        let payload = serde_json::to_vec(&body).expect("json").into();
        self.client
            .publish_with_reply(self.subject.clone(), self.sub_subject(), payload)
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Connect, "cannot send a pull request").with_source(e)
            })?;
        if self.outstanding == 0 {
            self.last_activity = Instant::now();
        }
        self.outstanding += n;
        Ok(())
    }

    fn sub_subject(&self) -> async_nats::Subject {
        self.inbox.clone()
    }

    async fn resubscribe(&mut self) -> Result<(), Error> {
        let (inbox, sub) = subscribe(&self.client).await?;
        let _ = self.sub.unsubscribe().await;
        self.inbox = inbox;
        self.sub = sub;
        Ok(())
    }

    /// Starts over on a new inbox: what the old requests still deliver goes nowhere (the
    /// server redelivers it after the ack wait).
    pub(crate) async fn reset(&mut self) -> Pulled {
        self.outstanding = 0;
        match self.resubscribe().await {
            Ok(()) => Pulled::Reset,
            Err(e) => Pulled::Failed(e),
        }
    }

    /// The next thing the pull brings. Cancel-safe.
    pub(crate) async fn next(&mut self) -> Pulled {
        loop {
            let silence = self.last_activity + HEARTBEAT * 2 + Duration::from_secs(1);
            tokio::select! {
                m = self.sub.next() => {
                    let Some(m) = m else { return self.reset().await };
                    self.last_activity = Instant::now();
                    match m.status.unwrap_or(StatusCode::OK) {
                        StatusCode::OK => {
                            self.outstanding = self.outstanding.saturating_sub(1);
                            return Pulled::Message(Incoming::Nats(jetstream::Message { message: m, context: self.context.clone() }));
                        }
                        StatusCode::IDLE_HEARTBEAT | StatusCode::NOT_FOUND => continue,
                        StatusCode::TIMEOUT | StatusCode::REQUEST_TERMINATED => {
                            let description = m.description.clone().unwrap_or_default();
                            let pending = m
                                .headers
                                .as_ref()
                                .and_then(|h| h.get("Nats-Pending-Messages"))
                                .and_then(|v| v.as_str().parse::<usize>().ok());
                            match pending {
                                Some(n) => {
                                    let n = n.min(self.outstanding);
                                    self.outstanding -= n;
                                    return Pulled::Returned(n);
                                }
                                None => {
                                    return Pulled::Failed(Error::new(
                                        ErrorKind::Refused,
                                        format!("the server ended the pull: {description}"),
                                    ))
                                }
                            }
                        }
                        StatusCode::NO_RESPONDERS => {
                            return Pulled::Failed(Error::new(ErrorKind::Refused, "no JetStream responders for the pull"));
                        }
                        other => {
                            return Pulled::Failed(Error::new(
                                ErrorKind::Refused,
                                format!("unexpected pull status {other}: {}", m.description.unwrap_or_default()),
                            ))
                        }
                    }
                }
                changed = self.state.changed() => {
                    if changed.is_err() {
                        // The bus is gone; nothing more will come.
                        std::future::pending::<()>().await;
                    }
                    let now = *self.state.borrow_and_update() == ConnectionState::Connected;
                    let was = std::mem::replace(&mut self.connected, now);
                    if now && !was {
                        // Reconnected: the server may have lost every waiting request.
                        if self.outstanding > 0 {
                            let pace = self.ack_wait * 2 + HEARTBEAT * 2;
                            tracing::warn!(target: "eventbus::dispatch", subject = %self.subject, ?pace, "the connection dropped while events were on their way; pulling them one at a time for a while, so that one the client cannot receive does not take others with it");
                            self.single_until = Some(Instant::now() + pace);
                        }
                        return self.reset().await;
                    }
                }
                _ = tokio::time::sleep_until(silence), if self.outstanding > 0 => {
                    tracing::warn!(target: "eventbus::dispatch", subject = %self.subject, "no word from the server on the pull; asking again");
                    return self.reset().await;
                }
            }
        }
    }
}

async fn subscribe(
    client: &async_nats::Client,
) -> Result<(async_nats::Subject, Subscriber), Error> {
    let inbox: async_nats::Subject = client.new_inbox().into();
    let sub = client.subscribe(inbox.clone()).await.map_err(|e| {
        Error::new(ErrorKind::Connect, "cannot subscribe to a pull inbox").with_source(e)
    })?;
    Ok((inbox, sub))
}
