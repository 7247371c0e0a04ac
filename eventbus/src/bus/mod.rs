//! The running bus. [`builder`] and [`run`] start it (`builder.rs`, `start.rs`, `run.rs`); a
//! [`Bus`] is the handle of a started one: it publishes, reads, loads and appends, lists and
//! republishes dead letters, and shuts down. Every operation is a thin call into the module
//! that owns the behaviour (`publish.rs`, `read.rs`, `aggregate.rs`, `dlq.rs`).

mod builder;
mod run;
mod start;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use self::builder::{builder, Builder};
pub use self::run::run;
use crate::aggregate::{self, Aggregate, Appended, Loaded};
use crate::backend::{Backend, ConnectionState};
use crate::config::Config;
use crate::dlq::{self, DeadLetter};
use crate::error::{Error, ErrorKind};
use crate::event::EventSet;
use crate::publish::{PublishOptions, Published, Publisher};
use crate::read::Read;
use crate::stats::{Sources, Stats};
use crate::topology::Topology;

/// How long a shutdown waits to send the last acks (the connection may be down).
const SHUTDOWN_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// What a started bus runs: its workers, and the ephemeral consumers to remove at the end.
struct Running {
    stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    ephemeral: Vec<(String, String)>,
}

impl Running {
    /// Stops the workers gracefully (in-flight handlers finish within the grace period),
    /// removes the ephemeral consumers and closes the connection.
    async fn stop(self, backend: Backend, service: String) -> Result<(), Error> {
        tracing::info!(target: "eventbus", service = %service, "shutting down");
        self.stop.send_replace(true);
        for w in self.workers {
            if let Err(e) = w.await {
                tracing::error!(target: "eventbus", error = %e, "a worker task failed");
            }
        }
        for (stream, name) in self.ephemeral {
            if let Err(e) = backend.delete_consumer(&stream, &name).await {
                tracing::warn!(target: "eventbus", consumer = %name, error = %e, "cannot remove ephemeral consumer; the server removes it when inactive");
            }
        }
        backend.close(SHUTDOWN_FLUSH_TIMEOUT).await?;
        tracing::info!(target: "eventbus", service = %service, "shut down");
        Ok(())
    }
}

struct Inner {
    publisher: Publisher,
    service: String,
    config: Config,
    topology: Topology,
    state: watch::Receiver<ConnectionState>,
    gave_up: watch::Receiver<bool>,
    /// The senders of the state channels of the in-process broker, kept open.
    _keep_alive: Option<(watch::Sender<ConnectionState>, watch::Sender<bool>)>,
    /// Until a shutdown, or the drop of the last handle, takes it.
    running: Mutex<Option<Running>>,
    /// Where `stats` comes from.
    stats: Arc<Sources>,
    /// Where the HTTP endpoint listens, if it is on.
    http_addr: Option<std::net::SocketAddr>,
    shut_down: tokio::sync::Mutex<bool>,
}

impl Drop for Inner {
    /// The last handle is gone without a shutdown: shut down the same way, in a task of its
    /// own (outside a tokio runtime, the workers are only told to stop).
    fn drop(&mut self) {
        let Some(running) = self.running.get_mut().ok().and_then(Option::take) else {
            return;
        };
        let backend = self.publisher.backend().clone();
        let service = std::mem::take(&mut self.service);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(e) = running.stop(backend, service).await {
                        tracing::warn!(target: "eventbus", error = %e, "shutting down the dropped bus failed");
                    }
                });
            }
            Err(_) => {
                running.stop.send_replace(true);
            }
        }
    }
}

/// A started bus: it runs the handlers, publishes, reads, and shuts down gracefully. Cheap to
/// clone.
///
/// It owns the handlers' workers: when the last clone is dropped without
/// [`Bus::shutdown`], they are shut down all the same (in-flight handlers finish within the
/// grace period, the connection is drained), in a task of its own. Handlers' contexts do not
/// hold the bus, so they do not keep it running.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("service", &self.inner.service)
            .field("state", &*self.inner.state.borrow())
            .finish_non_exhaustive()
    }
}

impl Bus {
    /// The service's name.
    pub fn service(&self) -> &str {
        &self.inner.service
    }

    /// The service's AsyncAPI 3.0 document (see [`Builder::asyncapi`]) for the topology it
    /// provisioned: what an HTTP endpoint serves as `/asyncapi.json`.
    pub fn asyncapi(&self) -> serde_json::Value {
        crate::contract::document(&self.inner.topology, &self.inner.config)
    }

    /// The topology it provisioned.
    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Where the events live (for `eventbus::testing`).
    pub(crate) fn backend(&self) -> &Backend {
        self.inner.publisher.backend()
    }

    /// The server's version, `(major, minor, patch)`; `None` on the in-process broker.
    pub fn server_version(&self) -> Option<(u64, u64, u64)> {
        (!self.is_in_process()).then(|| self.backend().server_version())
    }

    /// The connection's state now.
    pub fn connection_state(&self) -> ConnectionState {
        *self.inner.state.borrow()
    }

    /// The connection's state, to watch for changes.
    pub fn watch_connection(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.clone()
    }

    /// The underlying NATS client, for what eventbus does not cover (`None` on the in-process
    /// broker).
    pub fn nats_client(&self) -> Option<&crate::nats::Client> {
        self.backend().client()
    }

    /// The JetStream context, for what eventbus does not cover (`None` on the in-process
    /// broker).
    pub fn jetstream(&self) -> Option<&crate::nats::jetstream::Context> {
        self.backend().jetstream()
    }

    /// Whether the bus runs on the in-process broker.
    pub fn is_in_process(&self) -> bool {
        self.backend().broker().is_some()
    }

    /// Publishes an event and waits until the server stored it.
    ///
    /// A publish that was not acknowledged in time (or whose connection was lost) is sent again
    /// with the same event id, so the server keeps one copy, up to `publish_attempts` times in
    /// all. One that found nobody to answer although a stream stores its subject (the stream
    /// is electing a leader, its servers are away, or it is new to this server of a cluster)
    /// is sent again after 50 ms, 100 ms, ... (at most 1 s apart) for up to
    /// `publish_unavailable_wait`; should nobody answer after a send that timed out, the error
    /// is a [`ErrorKind::Timeout`], as that send may be stored. An invalid aggregate id, a
    /// subject no stream stores or an oversize event is an error, never a silent loss.
    pub async fn publish<E: EventSet>(&self, event: &E) -> Result<Published, Error> {
        self.inner
            .publisher
            .publish(event, &PublishOptions::default())
            .await
    }

    /// Publishes an event with an id, headers or correlation of the caller's.
    pub async fn publish_with<E: EventSet>(
        &self,
        event: &E,
        options: PublishOptions,
    ) -> Result<Published, Error> {
        self.inner.publisher.publish(event, &options).await
    }

    /// Publishes a message as it is, without the CloudEvents headers: for bridging producers
    /// that do not use eventbus, and for tests of foreign or malformed messages. Waits for the
    /// acknowledgement, retried with the same headers (so the same `Nats-Msg-Id`, if any).
    pub async fn publish_raw(
        &self,
        subject: &str,
        headers: HeaderMap,
        payload: impl Into<bytes::Bytes>,
    ) -> Result<Published, Error> {
        self.inner
            .publisher
            .publish_raw(subject, headers, payload.into())
            .await
    }

    /// Publishes many events, pipelined (up to 1024 awaiting their acknowledgement at once),
    /// and reports each outcome, in order: `Ok` once the server stored the event, or the error
    /// in its place.
    ///
    /// A publish that is not acknowledged in time is sent again with the same id (so the server
    /// keeps one copy) without holding up the others, up to `publish_attempts` times; so is one
    /// that found nobody to answer although a stream stores its subject, for up to
    /// `publish_unavailable_wait` (see [`Bus::publish`]). When the server is out of reach,
    /// `publish_all` does not go on trying event after event: once an event has used all its
    /// attempts or that wait, or nothing was acknowledged for `publish_attempts` ×
    /// `publish_timeout`, it stops sending and retrying,
    /// waits for what is under way, and returns within about one more `publish_timeout`. Then:
    ///
    /// - an event sent but not acknowledged has an [`ErrorKind::Timeout`] error: it may or may
    ///   not be stored (publish it again with the same id, [`Error::event_id`], through
    ///   [`Bus::publish_all_with`] or [`PublishOptions::id`], to be sure of one copy);
    /// - an event not sent at all has an [`ErrorKind::NotSent`] error that says so: it is not
    ///   stored.
    ///
    /// Events that are retried may be stored in another order than given; [`Bus::append`]
    /// keeps the order of one aggregate's events.
    pub async fn publish_all<'a, E, I>(&self, events: I) -> Vec<Result<Published, Error>>
    where
        E: EventSet + 'a,
        I: IntoIterator<Item = &'a E>,
    {
        self.inner.publisher.publish_all(events).await
    }

    /// [`Bus::publish_all`] with each event's own options: an id of the caller's (to publish
    /// again, with the same ids, what an earlier `publish_all` could not confirm: the server
    /// keeps one copy of each), headers, a correlation or causation.
    ///
    /// Every error of a publish carries the event's id ([`Error::event_id`]): the given one, or
    /// the one eventbus made for an event that was sent.
    pub async fn publish_all_with<'a, E, I>(&self, events: I) -> Vec<Result<Published, Error>>
    where
        E: EventSet + 'a,
        I: IntoIterator<Item = (&'a E, &'a PublishOptions)>,
    {
        self.inner.publisher.publish_all_with(events).await
    }

    /// Reads the events of aggregate `id` in order, from the start, to the last one stored
    /// when the read begins.
    pub fn read<E: EventSet>(&self, id: impl Into<String>) -> Read<E> {
        Read::new(self.backend().clone(), id.into())
    }

    /// Loads an aggregate: applies each of its events, in order, to `A::default()`.
    pub async fn load<A: Aggregate>(&self, id: impl Into<String>) -> Result<Loaded<A>, Error> {
        aggregate::load(self.backend(), id.into()).await
    }

    /// Appends events to aggregate `id` if it is still at `version` (the version [`Bus::load`]
    /// returned). Same as [`Bus::append`].
    pub async fn save<E: EventSet>(
        &self,
        id: &str,
        version: u64,
        events: &[E],
    ) -> Result<Appended, Error> {
        self.append(id, version, events).await
    }

    /// Appends events to aggregate `id` only if it has exactly `expected_version` events.
    ///
    /// The server checks it (`Nats-Expected-Last-Subject-Sequence` on `{aggregate}.{id}.*`),
    /// so of two writers racing from the same version exactly one wins; the other gets an
    /// [`ErrorKind::Conflict`] error whose [`Error::conflict`] tells the actual version, and
    /// none of its events is stored. Needs nats-server 2.11 or newer
    /// ([`ErrorKind::ServerVersion`] otherwise).
    ///
    /// Each event is checked against the one before it, so a writer that loaded after this
    /// append's first event cannot slip in between its events: it gets a conflict. Should a
    /// conflict or a lost connection stop an append part-way, the error says how many of the
    /// events were stored.
    pub async fn append<E: EventSet>(
        &self,
        id: &str,
        expected_version: u64,
        events: &[E],
    ) -> Result<Appended, Error> {
        aggregate::append(
            &self.inner.publisher,
            id,
            expected_version,
            events,
            &PublishOptions::default(),
        )
        .await
    }

    /// Every dead letter, oldest first; of one consumer only if `consumer` is given. None
    /// (an empty list) when there is no dead-letter stream.
    pub async fn dead_letters(&self, consumer: Option<&str>) -> Result<Vec<DeadLetter>, Error> {
        dlq::list(&self.inner.publisher, consumer).await
    }

    /// Publishes a dead letter again, to its original subject, with its original body and
    /// headers (the same `ce-id`, so handlers see the same event; a new `Nats-Msg-Id`, so the
    /// server does not drop it as a duplicate), then removes it from the dead-letter stream.
    ///
    /// Every consumer of that subject receives it again, not only the one that gave up on it:
    /// handlers are expected to be idempotent. The copy carries an `eventbus-republished-from`
    /// header (`{original stream}:{original sequence}`); [`Bus::read`] and [`Bus::load`] skip
    /// it, so the aggregate's history holds the event once (its versions count the copy).
    pub async fn republish_dead_letter(&self, sequence: u64) -> Result<Published, Error> {
        dlq::republish(&self.inner.publisher, sequence).await
    }

    /// Publishes every dead letter (of one consumer, if given) again; see
    /// [`Bus::republish_dead_letter`]. Stops at the first failure.
    pub async fn republish_dead_letters(
        &self,
        consumer: Option<&str>,
    ) -> Result<Vec<Published>, Error> {
        let mut out = Vec::new();
        for d in self.dead_letters(consumer).await? {
            out.push(self.republish_dead_letter(d.sequence).await?);
        }
        Ok(out)
    }

    /// What the bus's streams and handlers' consumers hold now, as the server reports them
    /// (`$JS.API` stream and consumer info; the in-process broker's own figures), with the
    /// acknowledgement rate this process measured: per stream its messages, bytes, first and
    /// last sequence and consumers; per handler its consumer's pending (lag), ack-pending,
    /// redelivered and waiting pulls. Also refreshes the lag and size metrics.
    pub async fn stats(&self) -> Result<Stats, Error> {
        self.inner.stats.gather().await
    }

    /// Where the HTTP endpoint (`/metrics`, `/healthz`, `/readyz`) listens, if it is on
    /// (feature `http`, [`Builder::http`]): the bound address, so a port 0 shows its number.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner.http_addr
    }

    /// Resolves with an error when the connection is lost for good (reconnect attempts
    /// exhausted); never resolves otherwise.
    pub async fn failed(&self) -> Error {
        let mut gave_up = self.inner.gave_up.clone();
        let _ = gave_up.wait_for(|g| *g).await;
        Error::new(
            ErrorKind::Connect,
            format!(
                "lost the connection to {} and reconnect attempts are exhausted",
                self.inner.config.urls.join(",")
            ),
        )
    }

    /// Shuts down gracefully: stops pulling, lets in-flight handlers finish within the grace
    /// period (their events are then acked; events not tried are left for redelivery), removes
    /// ephemeral consumers and drains the connection. Calling it again does nothing.
    ///
    /// It does not wait for a lost connection to come back: the last acks get 5 s to go out,
    /// and events whose acks did not are redelivered (handled again), never lost.
    pub async fn shutdown(&self) -> Result<(), Error> {
        let mut done = self.inner.shut_down.lock().await;
        if *done {
            return Ok(());
        }
        *done = true;
        let running = self.inner.running.lock().expect("lock").take();
        match running {
            Some(r) => {
                r.stop(self.backend().clone(), self.inner.service.clone())
                    .await
            }
            None => Ok(()),
        }
    }
}
