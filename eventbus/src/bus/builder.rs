//! [`Builder`]: the settings of a bus before it starts, the handler selection, and the
//! topology they plan, validated without any network call. Starting is `start.rs`; running
//! until a signal is `run.rs`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{
    handler_options_from_env, unknown_handler_vars, Config, ConsumerOptions, Credentials,
    StreamOptions, TlsConfig,
};
use crate::contract;
use crate::dispatch::Observer;
use crate::error::{Error, ErrorKind};
use crate::event::EventSet;
use crate::handler::{StateType, States};
use crate::registry::{self, HandlerRegistration};
use crate::topology::Topology;

type Setter = Box<dyn FnOnce(&mut Config) + Send>;
pub(super) type ShutdownSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Which registered handlers a bus runs.
#[derive(Debug, Clone)]
pub(super) enum Selection {
    /// None was chosen: [`Builder::start`] runs no handler, [`Builder::run`] runs them all.
    Default,
    All,
    Only(Vec<String>),
}

/// Builds and starts a [`Bus`]. Start from [`builder`]; every setting not given here is read
/// from the environment (see [`Config::from_env`]), unless [`Builder::no_env`] is called.
#[must_use = "a builder does nothing until `start` is called"]
pub struct Builder {
    pub(super) env: bool,
    setters: Vec<Setter>,
    pub(super) selection: Selection,
    /// The application's state, for handlers' `State<T>` parameters.
    pub(super) states: States,
    pub(super) shutdown_signal: Option<ShutdownSignal>,
    /// Told what the workers do (`eventbus::testing` records through it).
    pub(super) observer: Option<Arc<dyn Observer>>,
}

/// A builder that reads the environment for what it is not given.
pub fn builder() -> Builder {
    Builder {
        env: true,
        setters: Vec::new(),
        selection: Selection::Default,
        states: States::default(),
        shutdown_signal: None,
        observer: None,
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

    /// Tells `observer` what the workers do (how `eventbus::testing` records).
    pub(crate) fn observe(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
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

    /// Serves `/metrics`, `/healthz` and `/readyz` on `addr` (as `EVENTBUS_HTTP_ADDR` does);
    /// port 0 picks a free one ([`Bus::http_addr`](crate::Bus::http_addr) tells which). Needs the `http` feature:
    /// without it, starting fails with an error that says so.
    pub fn http(self, addr: std::net::SocketAddr) -> Self {
        self.set(move |c| c.http_addr = Some(addr))
    }

    /// How often the lag and size metrics are refreshed and stalled consumers looked for
    /// (default 15 s; zero: never). See [`Config::stats_interval`].
    pub fn stats_interval(self, every: Duration) -> Self {
        self.set(move |c| c.stats_interval = every)
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

    /// Declares that the service publishes the events of `E` (an event or an event set),
    /// besides those its handlers declare with `#[event_handler(publishes = [...])]`: they are
    /// the `send` operations of its AsyncAPI document ([`Builder::asyncapi`]).
    pub fn publishes<E: EventSet>(self) -> Self {
        self.set(|c| {
            for d in E::EVENTS {
                if !c.publishes.iter().any(|t| t == d.cloud_type) {
                    c.publishes.push(d.cloud_type.to_owned());
                }
            }
        })
    }

    /// The version of the service's API in its AsyncAPI document (`info.version`), e.g.
    /// `env!("CARGO_PKG_VERSION")`; `0.0.0` unless given.
    pub fn api_version(self, version: impl Into<String>) -> Self {
        let v = version.into();
        self.set(move |c| c.api_version = Some(v))
    }

    /// Gives the handlers a value of the application's: a handler takes it by type with a
    /// [`crate::State`] parameter (`State(db): State<Db>`). Call it once per type (a second
    /// value of the same type replaces the first). A handler that takes a state nobody gave is
    /// refused when the bus starts, before any network call.
    pub fn state<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.states.insert(value);
        self
    }

    /// Runs every handler linked into the program. [`Builder::run`] does this by default;
    /// [`Builder::start`] runs none unless told which.
    pub fn all_handlers(mut self) -> Self {
        self.selection = Selection::All;
        self
    }

    /// Runs only the named handlers of the registry (by function name).
    pub fn only_handlers<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.selection = Selection::Only(names.into_iter().map(Into::into).collect());
        self
    }

    /// Runs no handler: a bus that only publishes and reads (what [`Builder::start`] does when
    /// no handler was chosen).
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
    pub(super) fn resolve(&mut self) -> Result<Resolved, Error> {
        self.resolve_with(true)
    }

    /// [`Builder::resolve`], checking the states the handlers take only if `check_states`
    /// (a document of the service needs none of them).
    fn resolve_with(&mut self, check_states: bool) -> Result<Resolved, Error> {
        let all = registry::handlers();
        let mut problems = Vec::new();
        let mut config = if self.env {
            let mut config = Config::from_env()?;
            let get = |k: &str| std::env::var(k).ok();
            let mut bad = Vec::new();
            for h in &all {
                let o = handler_options_from_env(h.name, &get, &mut bad);
                if o != ConsumerOptions::default() {
                    config.handlers.insert(h.name.to_owned(), o);
                }
            }
            bad.extend(unknown_handler_vars(
                std::env::vars().map(|(k, _)| k),
                all.iter().map(|h| h.name),
            ));
            if !bad.is_empty() {
                return Err(Error::new(ErrorKind::Config, bad.join("\n")));
            }
            config
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
        let handlers: Vec<_> = match &self.selection {
            Selection::Default => Vec::new(),
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
        for h in handlers.iter().filter(|_| check_states) {
            let mut needs: Vec<StateType> = Vec::new();
            (h.states)(&mut needs);
            for need in needs.iter().filter(|n| !self.states.contains(n.id)) {
                problems.push(format!(
                    "handler `{}` ({}:{}) takes `State<{}>`, but no state of type `{}` was given: add `.state(value)` to the builder",
                    h.name, h.file, h.line, need.name, need.name
                ));
            }
        }
        Ok(Resolved {
            config,
            service,
            handlers,
            problems,
        })
    }

    /// Whether `EVENTBUS_PRINT_TOPOLOGY` asks to print the topology instead of starting (unless
    /// [`Builder::no_env`]).
    pub(super) fn print_topology(&self) -> bool {
        self.env && std::env::var("EVENTBUS_PRINT_TOPOLOGY").is_ok_and(|v| v == "1" || v == "true")
    }

    /// The topology this builder would provision, validated, without any network call.
    pub fn topology(mut self) -> Result<Topology, Error> {
        self.resolve()?.plan().map(|(_, _, topology)| topology)
    }

    /// Whether `EVENTBUS_PRINT_ASYNCAPI` asks to print the AsyncAPI document instead of
    /// starting (unless [`Builder::no_env`]).
    pub(super) fn print_asyncapi(&self) -> bool {
        self.env && std::env::var("EVENTBUS_PRINT_ASYNCAPI").is_ok_and(|v| v == "1" || v == "true")
    }

    /// The service's AsyncAPI 3.0 document, without any network call: its servers, one
    /// channel per event subject, one message per event type and version (payload JSON
    /// Schema and CloudEvents headers), a `receive` operation per handler and event (with
    /// its consumer's settings as `x-eventbus-*`), a `send` operation per event it declares
    /// it publishes. Like [`Builder::run`], it describes every handler unless the builder
    /// chose some. The topology is validated first: its problems are the error (the states
    /// the handlers take need not be given).
    pub fn asyncapi(mut self) -> Result<serde_json::Value, Error> {
        if matches!(self.selection, Selection::Default) {
            self.selection = Selection::All;
        }
        let (config, _, topology) = self.resolve_with(false)?.plan()?;
        Ok(contract::document(&topology, &config))
    }
}

/// What a builder resolved to, before planning.
pub(super) struct Resolved {
    config: Config,
    service: String,
    handlers: Vec<&'static HandlerRegistration>,
    /// Problems of the handler selection, reported with the plan's own.
    problems: Vec<String>,
}

impl Resolved {
    /// The validated topology, with the configuration and the service's name.
    pub(super) fn plan(self) -> Result<(Config, String, Topology), Error> {
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
