//! Configuration: plain structs with documented defaults, each setting also readable from the
//! environment ([`Config::from_env`]).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, ErrorKind};

/// How the bus authenticates to the server.
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Credentials {
    /// No credentials (the default).
    #[default]
    None,
    /// User and password.
    UserPassword {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
    /// A token.
    Token(String),
    /// An nkey seed (`SU...`).
    NKey(String),
    /// A `.creds` file (JWT and nkey seed).
    CredsFile(PathBuf),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::UserPassword { user, .. } => {
                write!(f, "UserPassword {{ user: {user:?}, password: \"***\" }}")
            }
            Credentials::Token(_) => f.write_str("Token(\"***\")"),
            Credentials::NKey(_) => f.write_str("NKey(\"***\")"),
            Credentials::CredsFile(p) => write!(f, "CredsFile({p:?})"),
        }
    }
}

/// TLS settings. TLS is used when any is set or the URL is `tls://`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// Require TLS even if the URL does not say so.
    pub required: bool,
    /// A PEM file of root certificates to trust (the server's CA).
    pub ca_file: Option<PathBuf>,
    /// A PEM client certificate, for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's PEM key.
    pub key_file: Option<PathBuf>,
}

/// How the connection is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconnectConfig {
    /// Reconnect attempts in a row before the bus gives up and `run()` returns an error
    /// (default 60; `None` for never).
    pub max_reconnects: Option<usize>,
    /// The wait between attempts (default 1 s, growing to 8 × this). The first attempt, a
    /// start's connection or the first reconnect after a drop, does not wait.
    pub reconnect_wait: Duration,
    /// How long one connection attempt may take (default 5 s).
    pub connect_timeout: Duration,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        ReconnectConfig {
            max_reconnects: Some(60),
            reconnect_wait: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Where a stream keeps its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Storage {
    /// On disk (the default): survives a server restart.
    File,
    /// In memory: lost when the server stops.
    Memory,
}

/// When a stream removes events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Retention {
    /// Kept until a limit (age, bytes) is reached (the default); needed for replay.
    Limits,
    /// Kept while a consumer has not acked them.
    Interest,
    /// Removed once acked by one consumer.
    WorkQueue,
}

/// What a full stream does with a new event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Discard {
    /// Removes the oldest events (the default).
    Old,
    /// Refuses the new event.
    New,
}

/// The settings of one aggregate's stream. `None` means "the default".
///
/// | option | default |
/// |---|---|
/// | `name` | the aggregate type upper-cased (`order` → `ORDER`) |
/// | `max_age`, `max_bytes`, `max_message_size` | unlimited |
/// | `retention` | [`Retention::Limits`] |
/// | `discard` | [`Discard::Old`] |
/// | `storage` | [`Storage::File`] (events survive a server restart, in debug builds too) |
/// | `replicas` | 1 |
/// | `duplicate_window` | 2 min, or `max_age` if that is shorter (the server allows no longer window) |
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamOptions {
    /// The stream's name.
    pub name: Option<String>,
    /// How long events are kept.
    pub max_age: Option<Duration>,
    /// How many bytes the stream may hold.
    pub max_bytes: Option<i64>,
    /// The largest event accepted, in bytes.
    pub max_message_size: Option<i32>,
    /// When events are removed.
    pub retention: Option<Retention>,
    /// What a full stream does.
    pub discard: Option<Discard>,
    /// Where events are kept.
    pub storage: Option<Storage>,
    /// How many copies a cluster keeps.
    pub replicas: Option<usize>,
    /// How long the server remembers event ids to drop duplicates.
    pub duplicate_window: Option<Duration>,
}

/// `overridden_by` of an options struct whose fields are all `Option`s: `self` with every
/// option that `over` sets replaced by `over`'s.
macro_rules! overridden_by {
    ($options:ident { $($field:ident),* $(,)? }) => {
        impl $options {
            /// `self` with every option that `over` sets replaced by `over`'s.
            pub fn overridden_by(&self, over: &$options) -> $options {
                $options {
                    $($field: over.$field.clone().or_else(|| self.$field.clone()),)*
                }
            }
        }
    };
}

overridden_by!(StreamOptions {
    name,
    max_age,
    max_bytes,
    max_message_size,
    retention,
    discard,
    storage,
    replicas,
    duplicate_window,
});

/// Which events a new consumer starts from. Ignored for a consumer that already exists on the
/// server (its position is kept).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeliverPolicy {
    /// Every event in the stream (the default).
    All,
    /// The last event in the stream that matches the filter.
    Last,
    /// The last event of each subject (the latest state of each aggregate per event type).
    LastPerSubject,
    /// Only events published after the consumer was created.
    New,
    /// From a stream sequence.
    ByStartSequence(u64),
    /// From a time.
    ByStartTime(time::OffsetDateTime),
}

/// Whether handled events are acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AckPolicy {
    /// Every event is acked after its handler succeeded (the default); nothing is lost.
    Explicit,
    /// No acks: an event counts as handled once delivered. For lossy projections only; no
    /// retry, no dead letters.
    None,
}

/// How fast a consumer replays stored events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReplayPolicy {
    /// As fast as possible (the default).
    Instant,
    /// At the pace they were originally published.
    Original,
}

/// The options of a handler's consumer. `None` means "not set here": an option given in
/// configuration overrides the attribute's, which overrides the default.
///
/// | option | default |
/// |---|---|
/// | `durable_name` | `{service}-{handler}` |
/// | `durable` | `true`; `false` makes an ephemeral consumer per instance, removed on stop |
/// | `deliver` | [`DeliverPolicy::All`] |
/// | `ack` | [`AckPolicy::Explicit`] |
/// | `replay` | [`ReplayPolicy::Instant`] |
/// | `max_deliver` | 5 |
/// | `ack_wait` | 30 s (in-progress acks keep a longer handler's event) |
/// | `backoff` | 1 s, 5 s, 30 s, 2 min (the last repeats) |
/// | `concurrency` | 16 events at once per handler and instance |
/// | `ordered` | `false`; `true` handles one aggregate's events one at a time, in order |
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConsumerOptions {
    /// The durable consumer's name.
    pub durable_name: Option<Cow<'static, str>>,
    /// `false` for an ephemeral consumer per instance (broadcast).
    pub durable: Option<bool>,
    /// Where a new consumer starts.
    pub deliver: Option<DeliverPolicy>,
    /// Acknowledgement policy.
    pub ack: Option<AckPolicy>,
    /// Replay policy.
    pub replay: Option<ReplayPolicy>,
    /// How many times an event is delivered before it is dead-lettered.
    pub max_deliver: Option<i64>,
    /// How long the server waits for an ack before it redelivers.
    pub ack_wait: Option<Duration>,
    /// The delays before each retry; the last one repeats.
    pub backoff: Option<Cow<'static, [Duration]>>,
    /// How many events of this handler run at once in one instance.
    pub concurrency: Option<usize>,
    /// Whether one aggregate's events are handled one at a time, in stream order.
    pub ordered: Option<bool>,
}

impl ConsumerOptions {
    /// No option set; usable in `const` contexts (`..ConsumerOptions::NONE`).
    pub const NONE: ConsumerOptions = ConsumerOptions {
        durable_name: None,
        durable: None,
        deliver: None,
        ack: None,
        replay: None,
        max_deliver: None,
        ack_wait: None,
        backoff: None,
        concurrency: None,
        ordered: None,
    };
}

overridden_by!(ConsumerOptions {
    durable_name,
    durable,
    deliver,
    ack,
    replay,
    max_deliver,
    ack_wait,
    backoff,
    concurrency,
    ordered,
});

/// The whole configuration of a bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Server URLs (`nats://host:port`, `tls://...`), comma-separated in the environment.
    pub urls: Vec<String>,
    /// The service's name: the `ce-source` of its events and the prefix of its durable
    /// consumers. Default: the executable's name.
    pub service: Option<String>,
    /// Credentials.
    pub credentials: Credentials,
    /// TLS.
    pub tls: TlsConfig,
    /// Reconnect policy.
    pub reconnect: ReconnectConfig,
    /// How long in-flight handlers may run on after a shutdown began (default 30 s).
    pub shutdown_grace: Duration,
    /// How long a publish waits for the server's acknowledgement before it retries with the
    /// same message id (default 5 s); and how many attempts in all (default 3).
    pub publish_timeout: Duration,
    /// How many attempts a publish makes in all before it fails (default 3).
    pub publish_attempts: u32,
    /// How long a publish that finds nobody to answer for a stream that exists keeps being sent
    /// again (default 10 s): the stream is electing a leader (4 to 7 s measured on a three-node
    /// cluster after its leader was killed), its servers are away, or it was just created and
    /// has not reached the connected server yet. Sent again after 50 ms, 100 ms, ... (at most
    /// 1 s apart), with the same id.
    pub publish_unavailable_wait: Duration,
    /// The options of every stream.
    pub stream_defaults: StreamOptions,
    /// Options of one aggregate's stream, by aggregate type.
    pub streams: BTreeMap<String, StreamOptions>,
    /// Options of one handler's consumer, by handler name; they override the attribute's.
    pub handlers: BTreeMap<String, ConsumerOptions>,
    /// The dead-letter stream's name (default `DLQ`, subjects `dlq.>`).
    pub dlq_stream: String,
    /// The CloudEvents types (`order.created.v1`) of the events the service publishes besides
    /// those its handlers declare (`#[event_handler(publishes = [...])]`): the `send`
    /// operations of its AsyncAPI document. Set with `Builder::publishes::<E>()`.
    pub publishes: Vec<String>,
    /// The version of the service's API in its AsyncAPI document (`info.version`; default
    /// `0.0.0`), e.g. `env!("CARGO_PKG_VERSION")`.
    pub api_version: Option<String>,
    /// How often the statistics' gauges (lag, stream sizes) are refreshed and stalled
    /// consumers looked for, on a NATS server (default 15 s; zero: never, as on the
    /// in-process broker, whose figures `Bus::stats` and `/metrics` read when asked).
    pub stats_interval: Duration,
    /// Where the HTTP endpoint (`/metrics`, `/healthz`, `/readyz`) listens, if anywhere
    /// (`EVENTBUS_HTTP_ADDR=0.0.0.0:9090`); needs the `http` feature.
    pub http_addr: Option<std::net::SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            urls: Vec::new(),
            service: None,
            credentials: Credentials::None,
            tls: TlsConfig::default(),
            reconnect: ReconnectConfig::default(),
            shutdown_grace: Duration::from_secs(30),
            publish_timeout: Duration::from_secs(5),
            publish_attempts: 3,
            publish_unavailable_wait: Duration::from_secs(10),
            stream_defaults: StreamOptions::default(),
            streams: BTreeMap::new(),
            handlers: BTreeMap::new(),
            dlq_stream: "DLQ".to_owned(),
            publishes: Vec::new(),
            api_version: None,
            stats_interval: Duration::from_secs(15),
            http_addr: None,
        }
    }
}

impl Config {
    /// The configuration from the environment (the README lists the variables); unset variables keep the
    /// defaults. A malformed value is an error that names the variable.
    pub fn from_env() -> Result<Config, Error> {
        Config::from_lookup(|k| std::env::var(k).ok())
    }

    /// The configuration from a lookup function (for tests and other sources).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, Error> {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let mut c = Config::default();
        if let Some(u) = get("EVENTBUS_URL").or_else(|| get("NATS_URL")) {
            c.urls = u
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
        }
        c.service = get("EVENTBUS_SERVICE");
        match (get("EVENTBUS_USER"), get("EVENTBUS_PASSWORD")) {
            (Some(user), Some(password)) => {
                c.credentials = Credentials::UserPassword { user, password }
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(Error::new(
                    ErrorKind::Config,
                    "EVENTBUS_USER and EVENTBUS_PASSWORD must be set together",
                ))
            }
            (None, None) => {}
        }
        if let Some(t) = get("EVENTBUS_TOKEN") {
            c.credentials = Credentials::Token(t);
        }
        if let Some(s) = get("EVENTBUS_NKEY") {
            c.credentials = Credentials::NKey(s);
        }
        if let Some(p) = get("EVENTBUS_CREDS") {
            c.credentials = Credentials::CredsFile(p.into());
        }
        c.tls.ca_file = get("EVENTBUS_TLS_CA").map(Into::into);
        c.tls.cert_file = get("EVENTBUS_TLS_CERT").map(Into::into);
        c.tls.key_file = get("EVENTBUS_TLS_KEY").map(Into::into);
        if let Some(v) = get("EVENTBUS_TLS_REQUIRED") {
            c.tls.required = parse_bool("EVENTBUS_TLS_REQUIRED", &v)?;
        }
        if let Some(v) = get("EVENTBUS_MAX_RECONNECTS") {
            let n: usize = v.trim().parse().map_err(|_| {
                Error::new(
                    ErrorKind::Config,
                    format!("EVENTBUS_MAX_RECONNECTS={v:?} is not a whole number"),
                )
            })?;
            c.reconnect.max_reconnects = (n > 0).then_some(n);
        }
        if let Some(v) = get("EVENTBUS_RECONNECT_WAIT") {
            c.reconnect.reconnect_wait = parse_duration_var("EVENTBUS_RECONNECT_WAIT", &v)?;
        }
        if let Some(v) = get("EVENTBUS_CONNECT_TIMEOUT") {
            c.reconnect.connect_timeout = parse_duration_var("EVENTBUS_CONNECT_TIMEOUT", &v)?;
        }
        if let Some(v) = get("EVENTBUS_SHUTDOWN_GRACE") {
            c.shutdown_grace = parse_duration_var("EVENTBUS_SHUTDOWN_GRACE", &v)?;
        }
        if let Some(v) = get("EVENTBUS_STATS_INTERVAL") {
            c.stats_interval = parse_duration_var("EVENTBUS_STATS_INTERVAL", &v)?;
        }
        if let Some(v) = get("EVENTBUS_HTTP_ADDR") {
            c.http_addr = Some(v.trim().parse().map_err(|_| {
                Error::new(
                    ErrorKind::Config,
                    format!("EVENTBUS_HTTP_ADDR={v:?} is not an address such as 0.0.0.0:9090"),
                )
            })?);
        }
        Ok(c)
    }
}

fn parse_bool(var: &str, v: &str) -> Result<bool, Error> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(Error::new(
            ErrorKind::Config,
            format!("{var}={v:?} is not true or false"),
        )),
    }
}

fn parse_duration_var(var: &str, v: &str) -> Result<Duration, Error> {
    crate::rules::parse_duration(v.trim()).map_err(|why| {
        Error::new(
            ErrorKind::Config,
            format!("{var}={v:?} is not a duration: {why}"),
        )
    })
}

/// The prefix of the environment variables that override a handler's options:
/// `EVENTBUS_HANDLER_{NAME}_{OPTION}`, `NAME` the handler's function name upper-cased.
pub(crate) const HANDLER_ENV_PREFIX: &str = "EVENTBUS_HANDLER_";

/// The options a handler's environment variables can set, by the variable's last part.
const HANDLER_ENV_OPTIONS: &[&str] = &[
    "CONCURRENCY",
    "MAX_DELIVER",
    "ACK_WAIT",
    "BACKOFF",
    "ORDERED",
    "DURABLE",
    "DELIVER",
    "START_SEQUENCE",
    "ACK",
    "REPLAY",
];

/// The environment variable of `option` of handler `handler`.
pub(crate) fn handler_env_var(handler: &str, option: &str) -> String {
    format!(
        "{HANDLER_ENV_PREFIX}{}_{option}",
        handler.to_ascii_uppercase()
    )
}

/// The options of `handler` set by the environment (`EVENTBUS_HANDLER_{NAME}_{OPTION}`, read
/// through `get`), or the problems of the values, each naming its variable.
pub(crate) fn handler_options_from_env(
    handler: &str,
    get: &impl Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> ConsumerOptions {
    let mut o = ConsumerOptions::default();
    for option in HANDLER_ENV_OPTIONS {
        let var = handler_env_var(handler, option);
        let Some(v) = get(&var).filter(|v| !v.trim().is_empty()) else {
            continue;
        };
        let t = v.trim();
        let bad = |what: &str| format!("{var}={v:?} is not {what}");
        let positive = |t: &str| t.parse::<u64>().ok().filter(|n| *n > 0);
        let parsed: Result<(), String> = match *option {
            "CONCURRENCY" => positive(t)
                .map(|n| o.concurrency = Some(n as usize))
                .ok_or_else(|| bad("a whole number of at least 1")),
            "MAX_DELIVER" => positive(t)
                .and_then(|n| i64::try_from(n).ok())
                .map(|n| o.max_deliver = Some(n))
                .ok_or_else(|| bad("a whole number of at least 1")),
            "START_SEQUENCE" => positive(t)
                .map(|n| o.deliver = Some(DeliverPolicy::ByStartSequence(n)))
                .ok_or_else(|| bad("a stream sequence of at least 1")),
            "ACK_WAIT" => crate::rules::parse_duration(t)
                .map(|d| o.ack_wait = Some(d))
                .map_err(|why| format!("{var}={v:?} is not a duration: {why}")),
            "BACKOFF" => t
                .split(',')
                .map(|d| crate::rules::parse_duration(d.trim()))
                .collect::<Result<Vec<_>, _>>()
                .map(|delays| o.backoff = Some(delays.into()))
                .map_err(|why| {
                    format!("{var}={v:?} is not a comma-separated list of durations: {why}")
                }),
            "ORDERED" => parse_bool(&var, t)
                .map(|b| o.ordered = Some(b))
                .map_err(|e| e.message().to_owned()),
            "DURABLE" if t == "false" => {
                o.durable = Some(false);
                Ok(())
            }
            "DURABLE" => Some(t)
                .filter(|name| is_valid_name(name))
                .map(|name| o.durable_name = Some(name.to_owned().into()))
                .ok_or_else(|| bad("a consumer name of [A-Za-z0-9_-], or false")),
            "DELIVER" => match t {
                "all" => Some(DeliverPolicy::All),
                "last" => Some(DeliverPolicy::Last),
                "last_per_subject" => Some(DeliverPolicy::LastPerSubject),
                "new" => Some(DeliverPolicy::New),
                _ => None,
            }
            .map(|d| o.deliver = Some(d))
            .ok_or_else(|| bad("one of all, last, last_per_subject, new")),
            "ACK" => match t {
                "explicit" => Some(AckPolicy::Explicit),
                "none" => Some(AckPolicy::None),
                _ => None,
            }
            .map(|a| o.ack = Some(a))
            .ok_or_else(|| bad("explicit or none")),
            "REPLAY" => match t {
                "instant" => Some(ReplayPolicy::Instant),
                "original" => Some(ReplayPolicy::Original),
                _ => None,
            }
            .map(|r| o.replay = Some(r))
            .ok_or_else(|| bad("instant or original")),
            _ => Ok(()),
        };
        if let Err(p) = parsed {
            problems.push(p);
        }
    }
    o
}

/// The `EVENTBUS_HANDLER_*` variables among `vars` that name no option of any of `handlers`
/// (a misspelt handler or option would otherwise be ignored in silence).
pub(crate) fn unknown_handler_vars<'a>(
    vars: impl Iterator<Item = String>,
    handlers: impl Iterator<Item = &'a str> + Clone,
) -> Vec<String> {
    vars.filter(|var| var.starts_with(HANDLER_ENV_PREFIX))
        .filter(|var| {
            !handlers.clone().any(|h| {
                HANDLER_ENV_OPTIONS
                    .iter()
                    .any(|o| *var == handler_env_var(h, o))
            })
        })
        .map(|var| {
            format!(
                "{var} names no handler option: the variables are {HANDLER_ENV_PREFIX}{{HANDLER}}_{{OPTION}} with HANDLER a handler's name upper-cased ({}) and OPTION one of {}",
                handlers
                    .clone()
                    .map(str::to_ascii_uppercase)
                    .collect::<Vec<_>>()
                    .join(", "),
                HANDLER_ENV_OPTIONS.join(", ")
            )
        })
        .collect()
}

/// Whether a name is a valid service or consumer name: `[A-Za-z0-9_-]+`.
pub(crate) fn is_valid_name(s: &str) -> bool {
    crate::rules::is_name_token(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one duration grammar (`rules.rs`), as the environment's values go through it.
    fn parse_duration(s: &str) -> Option<Duration> {
        crate::rules::parse_duration(s.trim()).ok()
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration(" 2m "), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        for bad in ["", "s", "5", "5x", "-1s", "1.5s", "30s1m", "1s1s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn env() {
        let vars: BTreeMap<&str, &str> = [
            ("NATS_URL", "nats://a:1"),
            ("EVENTBUS_SERVICE", "billing"),
            ("EVENTBUS_USER", "u"),
            ("EVENTBUS_PASSWORD", "p"),
            ("EVENTBUS_MAX_RECONNECTS", "0"),
            ("EVENTBUS_RECONNECT_WAIT", "250ms"),
        ]
        .into_iter()
        .collect();
        let c = Config::from_lookup(|k| vars.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(c.urls, ["nats://a:1"]);
        assert_eq!(c.service.as_deref(), Some("billing"));
        assert_eq!(
            c.credentials,
            Credentials::UserPassword {
                user: "u".into(),
                password: "p".into()
            }
        );
        assert_eq!(c.reconnect.max_reconnects, None);
        assert_eq!(c.reconnect.reconnect_wait, Duration::from_millis(250));
        assert!(
            !format!("{:?}", c.credentials).contains("\"p\""),
            "password not printed"
        );

        let e =
            Config::from_lookup(|k| (k == "EVENTBUS_CONNECT_TIMEOUT").then(|| "soon".to_owned()))
                .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("EVENTBUS_CONNECT_TIMEOUT"), "{e}");
        assert!(
            e.to_string()
                .starts_with("EVENTBUS_CONNECT_TIMEOUT=\"soon\" is not a duration: "),
            "{e}"
        );
        let e = Config::from_lookup(|k| (k == "EVENTBUS_SHUTDOWN_GRACE").then(|| "30s1m".into()))
            .unwrap_err();
        assert!(e.to_string().contains("EVENTBUS_SHUTDOWN_GRACE"), "{e}");
        assert!(e.to_string().contains("from the largest"), "{e}");
        let e =
            Config::from_lookup(|k| (k == "EVENTBUS_USER").then(|| "u".to_owned())).unwrap_err();
        assert!(e.to_string().contains("EVENTBUS_PASSWORD"), "{e}");
    }

    #[test]
    fn observability_from_the_env() {
        let c = Config::from_lookup(|k| match k {
            "EVENTBUS_HTTP_ADDR" => Some("0.0.0.0:9090".into()),
            "EVENTBUS_STATS_INTERVAL" => Some("2s".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.http_addr, Some("0.0.0.0:9090".parse().unwrap()));
        assert_eq!(c.stats_interval, Duration::from_secs(2));
        let d = Config::default();
        assert_eq!(
            (d.http_addr, d.stats_interval),
            (None, Duration::from_secs(15))
        );
        let e = Config::from_lookup(|k| (k == "EVENTBUS_HTTP_ADDR").then(|| "9090".into()))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(
            e.to_string()
                .starts_with("EVENTBUS_HTTP_ADDR=\"9090\" is not an address"),
            "{e}"
        );
    }
}
