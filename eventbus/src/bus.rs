//! The running bus: [`builder`] and [`run`] start it; a [`Bus`] publishes and shuts down.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::IntoConsumerConfig};
use async_nats::HeaderMap;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::backend::Backend;
use crate::config::{Config, Credentials, StreamOptions, TlsConfig};
use crate::connection::{self, ConnectionState};
use crate::dispatch::{self, Worker};
use crate::envelope::{encode, EncodeOptions};
use crate::error::{Error, ErrorKind};
use crate::event::EventSet;
use crate::handler::EventContext;
use crate::provision;
use crate::publish::{publish_acked, Published};
use crate::registry::{self, ConsumerOptions, HandlerRegistration};
use crate::topology::Topology;

/// The oldest server version eventbus runs on.
pub const MIN_SERVER_VERSION: (u64, u64, u64) = (2, 10, 0);

/// How long a shutdown waits to send the last acks (the connection may be down).
const SHUTDOWN_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

type Setter = Box<dyn FnOnce(&mut Config) + Send>;
type ShutdownSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Which registered handlers a bus runs.
#[derive(Debug, Clone)]
enum Selection {
    All,
    Only(Vec<String>),
}

/// Builds and starts a [`Bus`]. Start from [`builder`]; every setting not given here is read
/// from the environment (see [`Config::from_env`]), unless [`Builder::no_env`] is called.
#[must_use = "a builder does nothing until `start` is called"]
pub struct Builder {
    env: bool,
    setters: Vec<Setter>,
    selection: Selection,
    shutdown_signal: Option<ShutdownSignal>,
    record: bool,
}

/// A builder that reads the environment for what it is not given.
pub fn builder() -> Builder {
    Builder {
        env: true,
        setters: Vec::new(),
        selection: Selection::All,
        shutdown_signal: None,
        record: false,
    }
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("env", &self.env)
            .field("selection", &self.selection)
            .finish_non_exhaustive()
    }
}

impl Builder {
    fn set(mut self, f: impl FnOnce(&mut Config) + Send + 'static) -> Self {
        self.setters.push(Box::new(f));
        self
    }

    /// Records what handlers do, for [`crate::testing`].
    pub(crate) fn record(mut self) -> Self {
        self.record = true;
        self
    }

    /// Ignores the environment: only what is given here counts.
    pub fn no_env(mut self) -> Self {
        self.env = false;
        self
    }

    /// Starts from a whole configuration (later setters still apply on top).
    pub fn config(self, config: Config) -> Self {
        self.set(move |c| *c = config)
    }

    /// The server URL (`nats://host:port`); several, comma-separated, for a cluster.
    pub fn url(self, url: impl Into<String>) -> Self {
        let url = url.into();
        self.set(move |c| {
            c.urls = url
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
    }

    /// The service's name (`ce-source`, and the prefix of its durable consumers).
    pub fn service(self, service: impl Into<String>) -> Self {
        let s = service.into();
        self.set(move |c| c.service = Some(s))
    }

    /// Credentials.
    pub fn credentials(self, credentials: Credentials) -> Self {
        self.set(move |c| c.credentials = credentials)
    }

    /// TLS settings.
    pub fn tls(self, tls: TlsConfig) -> Self {
        self.set(move |c| c.tls = tls)
    }

    /// Reconnect attempts in a row before giving up (`None`: never give up).
    pub fn max_reconnects(self, n: Option<usize>) -> Self {
        self.set(move |c| c.reconnect.max_reconnects = n)
    }

    /// Wait between reconnect attempts.
    pub fn reconnect_wait(self, wait: Duration) -> Self {
        self.set(move |c| c.reconnect.reconnect_wait = wait)
    }

    /// How long one connection attempt may take.
    pub fn connect_timeout(self, timeout: Duration) -> Self {
        self.set(move |c| c.reconnect.connect_timeout = timeout)
    }

    /// How long in-flight handlers may run on after a shutdown began.
    pub fn shutdown_grace(self, grace: Duration) -> Self {
        self.set(move |c| c.shutdown_grace = grace)
    }

    /// How long a publish waits for its acknowledgement before sending again.
    pub fn publish_timeout(self, timeout: Duration) -> Self {
        self.set(move |c| c.publish_timeout = timeout)
    }

    /// Settings of every stream.
    pub fn stream_defaults(self, options: StreamOptions) -> Self {
        self.set(move |c| c.stream_defaults = options)
    }

    /// Settings of one aggregate's stream (they override the defaults).
    pub fn stream(self, aggregate: impl Into<String>, options: StreamOptions) -> Self {
        let a = aggregate.into();
        self.set(move |c| {
            c.streams.insert(a, options);
        })
    }

    /// Consumer options of one handler; they override the attribute's.
    pub fn handler(self, name: impl Into<String>, options: ConsumerOptions) -> Self {
        let n = name.into();
        self.set(move |c| {
            let merged = c
                .handlers
                .get(&n)
                .map(|o| o.overridden_by(&options))
                .unwrap_or(options);
            c.handlers.insert(n, merged);
        })
    }

    /// The dead-letter stream's name.
    pub fn dlq_stream(self, name: impl Into<String>) -> Self {
        let n = name.into();
        self.set(move |c| c.dlq_stream = n)
    }

    /// Runs only the named handlers of the registry (by function name); by default all run.
    pub fn only_handlers<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.selection = Selection::Only(names.into_iter().map(Into::into).collect());
        self
    }

    /// Runs no handler: a bus that only publishes and reads.
    pub fn without_handlers(mut self) -> Self {
        self.selection = Selection::Only(Vec::new());
        self
    }

    /// A future whose completion shuts [`run`]'s bus down (besides SIGINT and SIGTERM).
    pub fn shutdown_on(mut self, signal: impl Future<Output = ()> + Send + 'static) -> Self {
        self.shutdown_signal = Some(Box::pin(signal));
        self
    }

    /// The configuration, the service's name and the selected handlers, plus the problems of
    /// the selection itself (names in [`Builder::only_handlers`] that no handler has). Those
    /// are reported together with the topology's own problems, not on their own.
    fn resolve(&mut self) -> Result<Resolved, Error> {
        let mut config = if self.env {
            Config::from_env()?
        } else {
            Config::default()
        };
        for s in self.setters.drain(..) {
            s(&mut config);
        }
        let service = match &config.service {
            Some(s) => s.clone(),
            None => default_service_name(),
        };
        let all = registry::handlers();
        let mut problems = Vec::new();
        let handlers = match &self.selection {
            Selection::All => all,
            Selection::Only(names) => {
                let unknown: Vec<&String> = names
                    .iter()
                    .filter(|n| !all.iter().any(|h| h.name == n.as_str()))
                    .collect();
                if !unknown.is_empty() {
                    problems.push(format!(
                        "no registered handler is named {}; registered: {}",
                        unknown
                            .iter()
                            .map(|n| format!("`{n}`"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        all.iter().map(|h| h.name).collect::<Vec<_>>().join(", ")
                    ));
                }
                all.into_iter()
                    .filter(|h| names.iter().any(|n| n == h.name))
                    .collect()
            }
        };
        Ok(Resolved {
            config,
            service,
            handlers,
            problems,
        })
    }

    /// The topology this builder would provision, validated, without any network call.
    pub fn topology(mut self) -> Result<Topology, Error> {
        self.resolve()?.plan().map(|(_, _, topology)| topology)
    }

    /// Validates the registry, connects, provisions streams and consumers, and starts the
    /// handlers.
    pub async fn start(mut self) -> Result<Bus, Error> {
        let (config, service, topology) = self.resolve()?.plan()?;
        let memory = match config.urls.as_slice() {
            [] => Some("memory://".to_owned()),
            [u] if u.starts_with("memory:") => Some(u.clone()),
            _ => None,
        };
        let (backend, client, state, gave_up, keep_alive, version, server) = match memory {
            Some(url) => {
                tracing::warn!(
                    target: "eventbus",
                    %url,
                    "no server URL: running on the in-process broker; events live only in this process (set EVENTBUS_URL=nats://... for JetStream)"
                );
                let broker = crate::memory::Broker::named(
                    url.trim_start_matches("memory:").trim_start_matches("//"),
                );
                let (state_tx, state) = watch::channel(ConnectionState::Connected);
                let (gave_up_tx, gave_up) = watch::channel(false);
                (
                    Backend::Memory(broker),
                    None,
                    state,
                    gave_up,
                    Some((state_tx, gave_up_tx)),
                    (u64::MAX, 0, 0),
                    "in-process".to_owned(),
                )
            }
            None => {
                let urls = config.urls.clone();
                let conn = connection::connect(&config, &service, &urls).await?;
                let info = conn.client.server_info();
                let version = connection::parse_version(&info.version).unwrap_or((0, 0, 0));
                if version < MIN_SERVER_VERSION {
                    return Err(Error::new(
                        ErrorKind::ServerVersion,
                        format!(
                            "nats-server {} at {} is too old: eventbus needs 2.10 or newer",
                            info.version,
                            urls.join(",")
                        ),
                    ));
                }
                let js = jetstream::ContextBuilder::new()
                    .timeout(config.publish_timeout)
                    .build(conn.client.clone());
                (
                    Backend::Nats(js),
                    Some(conn.client),
                    conn.state,
                    conn.gave_up,
                    None,
                    version,
                    info.version,
                )
            }
        };
        let stream_names = provision::streams(&backend, &topology).await?;
        let mut problems = Vec::new();
        for c in topology.consumers.iter().filter(|c| c.durable) {
            let stream = stream_names
                .get(&c.stream)
                .cloned()
                .unwrap_or_else(|| c.stream.clone());
            if let Err(e) = provision::consumer(&backend, &stream, c).await {
                problems.push(crate::error::chain(&e));
            }
        }
        if !problems.is_empty() {
            return Err(Error::new(ErrorKind::Provision, problems.join("\n")));
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            backend: backend.clone(),
            recorder: self.record.then(Arc::default),
            client,
            _keep_alive: keep_alive,
            service: service.clone(),
            config: config.clone(),
            topology: topology.clone(),
            state,
            gave_up,
            stop: stop_tx,
            workers: Mutex::new(Vec::new()),
            ephemeral: Mutex::new(Vec::new()),
            server_version: version,
            shut_down: tokio::sync::Mutex::new(false),
        });
        let bus = Bus { inner };
        for plan in &topology.consumers {
            let stream_name = stream_names
                .get(&plan.stream)
                .cloned()
                .unwrap_or_else(|| plan.stream.clone());
            let name = if plan.durable {
                plan.name.clone()
            } else {
                let name = format!(
                    "{}-{}",
                    plan.name,
                    &uuid::Uuid::now_v7().simple().to_string()[20..]
                );
                let config = provision::consumer_config(plan, &name).into_consumer_config();
                backend.put_consumer(&stream_name, config, false).await?;
                bus.inner
                    .ephemeral
                    .lock()
                    .expect("lock")
                    .push((stream_name.clone(), name.clone()));
                name
            };
            let puller = backend
                .puller(&stream_name, &name, bus.watch_connection())
                .await?;
            let worker = Arc::new(Worker {
                plan: plan.clone(),
                stream: stream_name,
                consumer_name: name.clone(),
                bus: bus.clone(),
                backend: backend.clone(),
                recorder: bus.inner.recorder.clone(),
                dlq_subject: format!("dlq.{name}"),
            });
            let handle = tokio::spawn(dispatch::run(
                worker,
                puller,
                stop_rx.clone(),
                config.shutdown_grace,
            ));
            bus.inner.workers.lock().expect("lock").push(handle);
        }
        tracing::info!(
            target: "eventbus",
            service = %service,
            server = %server,
            handlers = topology.consumers.len(),
            streams = topology.streams.len(),
            "eventbus started"
        );
        Ok(bus)
    }
}

/// What a builder resolved to, before planning.
struct Resolved {
    config: Config,
    service: String,
    handlers: Vec<&'static HandlerRegistration>,
    /// Problems of the handler selection, reported with the plan's own.
    problems: Vec<String>,
}

impl Resolved {
    /// The validated topology, with the configuration and the service's name.
    fn plan(self) -> Result<(Config, String, Topology), Error> {
        let topology = Topology::plan_with_problems(
            &self.config,
            &self.service,
            &self.handlers,
            &registry::events(),
            self.problems,
        )?;
        Ok((self.config, self.service, topology))
    }
}

fn default_service_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|s| {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        })
        .filter(|s: &String| !s.is_empty())
        .unwrap_or_else(|| "eventbus".to_owned())
}

pub(crate) struct Inner {
    pub(crate) backend: Backend,
    pub(crate) recorder: Option<Arc<crate::testing::Recorder>>,
    /// The NATS connection (none on the in-process broker).
    pub(crate) client: Option<async_nats::Client>,
    /// The senders of the state channels of the in-process broker, kept open.
    pub(crate) _keep_alive: Option<(watch::Sender<ConnectionState>, watch::Sender<bool>)>,
    pub(crate) service: String,
    pub(crate) config: Config,
    pub(crate) topology: Topology,
    pub(crate) state: watch::Receiver<ConnectionState>,
    pub(crate) gave_up: watch::Receiver<bool>,
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) workers: Mutex<Vec<JoinHandle<()>>>,
    pub(crate) ephemeral: Mutex<Vec<(String, String)>>,
    /// For feature checks; the in-process broker has every feature, so it counts as newest.
    pub(crate) server_version: (u64, u64, u64),
    pub(crate) shut_down: tokio::sync::Mutex<bool>,
}

/// A running bus: it runs the handlers, publishes, and shuts down gracefully. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("service", &self.inner.service)
            .field("state", &*self.inner.state.borrow())
            .finish_non_exhaustive()
    }
}

/// Options of one publish.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// The event id (`ce-id`, `Nats-Msg-Id`); a new UUIDv7 when `None`. Give your own to make
    /// a publish idempotent across restarts of the publisher.
    pub id: Option<String>,
    /// Extra headers (they may not override the CloudEvents ones).
    pub headers: Option<HeaderMap>,
    /// The correlation id; the event's own id when `None`.
    pub correlation_id: Option<String>,
    /// The causation id.
    pub causation_id: Option<String>,
}

impl Bus {
    /// The service's name.
    pub fn service(&self) -> &str {
        &self.inner.service
    }

    /// The topology it provisioned.
    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The server's version, `(major, minor, patch)`; `None` on the in-process broker.
    pub fn server_version(&self) -> Option<(u64, u64, u64)> {
        (!self.is_in_process()).then_some(self.inner.server_version)
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
    pub fn nats_client(&self) -> Option<&async_nats::Client> {
        self.inner.client.as_ref()
    }

    /// The JetStream context, for what eventbus does not cover (`None` on the in-process
    /// broker).
    pub fn jetstream(&self) -> Option<&jetstream::Context> {
        match &self.inner.backend {
            Backend::Nats(js) => Some(js),
            Backend::Memory(_) => None,
        }
    }

    /// Whether the bus runs on the in-process broker.
    pub fn is_in_process(&self) -> bool {
        matches!(self.inner.backend, Backend::Memory(_))
    }

    /// Publishes an event and waits until the server stored it.
    ///
    /// A publish that was not acknowledged in time (or whose connection was lost) is sent again
    /// with the same event id, so the server keeps one copy, up to `publish_attempts` times in
    /// all; so is one that found nobody to answer although a stream stores its subject (its
    /// servers are away, or the stream is new to this server of a cluster), after 50 ms × the
    /// attempt. An invalid aggregate id, a subject no stream stores or an oversize event is an
    /// error, never a silent loss.
    pub async fn publish<E: EventSet>(&self, event: &E) -> Result<Published, Error> {
        self.publish_with(event, PublishOptions::default()).await
    }

    /// Publishes an event with an id, headers or correlation of the caller's.
    pub async fn publish_with<E: EventSet>(
        &self,
        event: &E,
        options: PublishOptions,
    ) -> Result<Published, Error> {
        let mut opts = EncodeOptions {
            source: &self.inner.service,
            id: options.id.as_deref(),
            correlation_id: options.correlation_id.as_deref(),
            causation_id: options.causation_id.as_deref(),
            traceparent: None,
            extra_headers: options.headers.as_ref(),
        };
        let encoded = encode(event, &opts)?;
        let span = tracing::debug_span!(target: "eventbus::publish", "publish", subject = %encoded.subject, id = %encoded.id);
        // A retry sends the same headers, made again from the same id and time.
        opts.id = Some(&encoded.id);
        publish_acked(
            &self.inner.backend,
            self.inner.config.publish_attempts,
            encoded.subject.as_str(),
            &encoded.id,
            encoded.headers,
            encoded.payload,
            crate::publish::headers_again(event, &opts, encoded.time),
        )
        .instrument(span)
        .await
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
        let id = headers
            .get(crate::envelope::headers::MSG_ID)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        let ack = self
            .inner
            .backend
            .publish_acked(
                self.inner.config.publish_attempts,
                subject,
                headers,
                payload.into(),
            )
            .await
            .map_err(|e| crate::publish::publish_error(subject, e))?;
        Ok(Published {
            stream: ack.stream,
            sequence: ack.sequence,
            duplicate: ack.duplicate,
            id,
        })
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
        tracing::info!(target: "eventbus", service = %self.inner.service, "shutting down");
        self.inner.stop.send_replace(true);
        let workers: Vec<_> = std::mem::take(&mut *self.inner.workers.lock().expect("lock"));
        for w in workers {
            if let Err(e) = w.await {
                tracing::error!(target: "eventbus", error = %e, "a worker task failed");
            }
        }
        let ephemeral: Vec<_> = std::mem::take(&mut *self.inner.ephemeral.lock().expect("lock"));
        for (stream, name) in ephemeral {
            if let Err(e) = self.inner.backend.delete_consumer(&stream, &name).await {
                tracing::warn!(target: "eventbus", consumer = %name, error = %e, "cannot remove ephemeral consumer; the server removes it when inactive");
            }
        }
        let Some(client) = &self.inner.client else {
            tracing::info!(target: "eventbus", service = %self.inner.service, "shut down");
            return Ok(());
        };
        // Bounded: while the server is unreachable a flush waits for the next reconnect, which
        // may be minutes away; acks that do not get out mean redeliveries, not lost events.
        match tokio::time::timeout(SHUTDOWN_FLUSH_TIMEOUT, client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(target: "eventbus", error = %e, "cannot flush the last acks")
            }
            Err(_) => tracing::warn!(
                target: "eventbus",
                timeout = ?SHUTDOWN_FLUSH_TIMEOUT,
                state = ?self.connection_state(),
                "cannot flush the last acks in time; their events will be redelivered"
            ),
        }
        client.drain().await.map_err(|e| {
            Error::new(ErrorKind::Shutdown, "cannot drain the connection").with_source(e)
        })?;
        tracing::info!(target: "eventbus", service = %self.inner.service, "shut down");
        Ok(())
    }
}

impl EventContext {
    /// Publishes an event caused by the one being handled: the correlation id is carried
    /// forward and the causation id is the handled event's id.
    pub async fn publish<E: EventSet>(&self, event: &E) -> Result<Published, Error> {
        let bus = self.bus.as_ref().ok_or_else(|| {
            Error::new(
                ErrorKind::Publish,
                "this event context has no bus to publish with",
            )
        })?;
        bus.publish_with(
            event,
            PublishOptions {
                correlation_id: Some(self.correlation_id().to_owned()),
                causation_id: Some(self.event_id().to_owned()),
                ..PublishOptions::default()
            },
        )
        .await
    }
}

/// Runs the service: configuration from the environment, connect, provision, dispatch, and a
/// graceful shutdown on SIGINT or SIGTERM. Returns an error if start-up fails or the
/// connection is lost for good, so the process exits non-zero and its supervisor restarts it.
///
/// With `EVENTBUS_PRINT_TOPOLOGY=1` it prints the topology and returns without connecting.
pub async fn run() -> Result<(), Error> {
    builder().run().await
}

impl Builder {
    /// Starts the bus and runs it until SIGINT, SIGTERM or the [`Builder::shutdown_on`]
    /// future, then shuts down gracefully.
    ///
    /// The signal handlers are installed before start-up, so a SIGTERM that arrives while the
    /// bus connects and provisions does not kill the process (the default action) but ends it
    /// cleanly: start-up is abandoned and `run` returns `Ok`.
    ///
    /// With `EVENTBUS_PRINT_TOPOLOGY=1` (unless [`Builder::no_env`]) it prints the topology
    /// and returns without connecting.
    pub async fn run(mut self) -> Result<(), Error> {
        let print = std::env::var("EVENTBUS_PRINT_TOPOLOGY").is_ok_and(|v| v == "1" || v == "true");
        if self.env && print {
            let t = self.topology()?;
            println!("{t}");
            return Ok(());
        }
        let os_signal = shutdown_signal();
        tokio::pin!(os_signal);
        let mut signal: ShutdownSignal = self
            .shutdown_signal
            .take()
            .unwrap_or_else(|| Box::pin(std::future::pending()));
        let bus = tokio::select! {
            bus = self.start() => bus?,
            _ = &mut os_signal => {
                tracing::info!(target: "eventbus", "stopped during start-up");
                return Ok(());
            }
            _ = &mut signal => return Ok(()),
        };
        let outcome = tokio::select! {
            _ = &mut os_signal => Ok(()),
            _ = &mut signal => Ok(()),
            e = bus.failed() => Err(e),
        };
        let shut = bus.shutdown().await;
        outcome.and(shut)
    }
}

/// Waits for SIGTERM or SIGINT. The handlers are installed when this is called, not when the
/// future is first polled, so a signal that arrives in between is not lost.
fn shutdown_signal() -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            let wait = |name: &'static str, s: std::io::Result<tokio::signal::unix::Signal>| async move {
                match s {
                    Ok(mut s) => {
                        s.recv().await;
                        tracing::info!(target: "eventbus", "{name} received");
                    }
                    Err(e) => {
                        tracing::error!(target: "eventbus", error = %e, "cannot listen for {name}");
                        std::future::pending::<()>().await;
                    }
                }
            };
            tokio::select! {
                _ = wait("SIGTERM", term) => {}
                _ = wait("SIGINT", int) => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
