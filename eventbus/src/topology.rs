//! The topology: the streams and consumers the registry asks for, validated as a whole before
//! any network call, and printable.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use crate::config::{is_valid_name, Config, Discard, Retention, Storage, StreamOptions};
use crate::config::{AckPolicy, ConsumerOptions, DeliverPolicy, ReplayPolicy};
use crate::error::{Error, ErrorKind};
use crate::event::EventDescriptor;
use crate::registry::HandlerRegistration;
use crate::rules::{filter_covers, filter_problem, filters_overlap};

/// Default max deliveries of a consumer.
pub(crate) const DEFAULT_MAX_DELIVER: i64 = 5;
/// Default ack wait of a consumer.
pub(crate) const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
/// Default retry delays; the last repeats.
pub(crate) const DEFAULT_BACKOFF: &[Duration] = &[
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(120),
];
/// Default number of events one handler runs at once in one instance.
pub(crate) const DEFAULT_CONCURRENCY: usize = 16;
/// Default duplicate window of a stream.
pub(crate) const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// One stream to create or use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPlan {
    /// The stream's name.
    pub name: String,
    /// The aggregate type whose events it holds (`None` for the dead-letter stream).
    pub aggregate: Option<String>,
    /// Its subjects.
    pub subjects: Vec<String>,
    /// Its settings (defaults applied where the configuration gave none).
    pub options: StreamOptions,
}

/// One consumer to create or update, for one handler.
#[derive(Debug, Clone)]
pub struct ConsumerPlan {
    /// The handler's name.
    pub handler: String,
    /// The stream it reads.
    pub stream: String,
    /// The consumer's name.
    pub name: String,
    /// Whether it is durable (else ephemeral, per instance).
    pub durable: bool,
    /// The handler's subject filter.
    pub filter: String,
    /// The subjects the handler takes: its filter, or, for a handler of an event set that gave
    /// no subject, the patterns of the set's events, so that event types outside the set do
    /// not reach it. (A subject given on the attribute is used as it is: an event type outside
    /// the set that it matches is dead-lettered as unknown.)
    ///
    /// On the aggregate's own stream the consumer has these filters on the server only where
    /// that reads the handler's events faster than reading the whole stream and skipping the
    /// events that match none of these (on nats-server 2.10 and later a consumer whose filter
    /// has a wildcard over thousands of subjects reads several times slower than one with
    /// none); the choice follows the stream's shape. On a stream adopted because it already
    /// covered the aggregate, these are always the consumer's filters.
    pub filters: Vec<String>,
    /// Whether the handler takes every event type this program knows for its aggregate (its
    /// filter covers each one's subjects): then its stream holds little else, and a filter on
    /// the server could only slow the consumer down.
    pub takes_every_event: bool,
    /// Where a new consumer starts.
    pub deliver: DeliverPolicy,
    /// Ack policy.
    pub ack: AckPolicy,
    /// Replay policy.
    pub replay: ReplayPolicy,
    /// Deliveries before dead-lettering.
    pub max_deliver: i64,
    /// How long the server waits for an ack.
    pub ack_wait: Duration,
    /// Retry delays; the last repeats.
    pub backoff: Vec<Duration>,
    /// Events handled at once.
    pub concurrency: usize,
    /// One aggregate's events one at a time, in order.
    pub ordered: bool,
    pub(crate) registration: &'static HandlerRegistration,
}

impl ConsumerPlan {
    /// The delay before retry number `delivered` (1 after the first delivery failed).
    pub fn retry_delay(&self, delivered: u64) -> Duration {
        let i = (delivered.max(1) - 1) as usize;
        self.backoff
            .get(i)
            .or(self.backoff.last())
            .copied()
            .unwrap_or(Duration::from_secs(1))
    }
}

/// The whole topology of a service.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The service's name.
    pub service: String,
    /// The aggregates' streams.
    pub streams: Vec<StreamPlan>,
    /// The dead-letter stream (present when some handler acks explicitly).
    pub dlq: Option<StreamPlan>,
    /// One consumer per handler.
    pub consumers: Vec<ConsumerPlan>,
}

/// The filter subjects of a handler's consumer (see [`ConsumerPlan::filters`]).
fn consumer_filters(h: &HandlerRegistration) -> Vec<String> {
    let mut patterns: Vec<String> = h
        .events
        .iter()
        .map(|e| e.subject_pattern.to_owned())
        .collect();
    patterns.sort();
    patterns.dedup();
    if !h.subject_given
        && patterns.len() > 1
        && patterns.iter().all(|p| filter_covers(h.subject, p))
    {
        patterns
    } else {
        vec![h.subject.to_owned()]
    }
}

/// The default stream name of an aggregate: upper-cased, `-` kept.
pub(crate) fn default_stream_name(aggregate: &str) -> String {
    aggregate.to_ascii_uppercase()
}

fn stream_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("it is empty");
    }
    if name.contains(['.', '*', '>', '/', '\\'])
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Some("it may not hold `.`, `*`, `>`, `/`, `\\` or white space");
    }
    None
}

impl Topology {
    /// Plans the topology of `handlers` and `events` under `config`, reporting every problem
    /// at once as one [`ErrorKind::Registry`] error.
    pub fn plan(
        config: &Config,
        service: &str,
        handlers: &[&'static HandlerRegistration],
        events: &[&'static EventDescriptor],
    ) -> Result<Topology, Error> {
        Topology::plan_with_problems(config, service, handlers, events, Vec::new())
    }

    /// [`Topology::plan`], with problems found before planning (such as an unknown handler
    /// name in the builder's selection) reported in the same error as the plan's own.
    pub(crate) fn plan_with_problems(
        config: &Config,
        service: &str,
        handlers: &[&'static HandlerRegistration],
        events: &[&'static EventDescriptor],
        mut problems: Vec<String>,
    ) -> Result<Topology, Error> {
        if !is_valid_name(service) {
            problems.push(format!(
                "service name {service:?} must be one token of [A-Za-z0-9_-]"
            ));
        }

        one_event_per_cloud_type(events, handlers, &mut problems);

        let mut aggregates: BTreeSet<&str> = events.iter().map(|e| e.aggregate).collect();
        aggregates.extend(handlers.iter().map(|h| h.aggregate));

        unknown_names(
            config.streams.keys(),
            &aggregates,
            "stream options are given for aggregate",
            "no registered event or handler has that aggregate (known",
            &mut problems,
        );

        let mut streams = Vec::new();
        let mut by_name: BTreeMap<String, &str> = BTreeMap::new();
        for a in &aggregates {
            let mut options = config.stream_defaults.clone();
            if let Some(o) = config.streams.get(*a) {
                options = options.overridden_by(o);
            }
            let name = options
                .name
                .clone()
                .unwrap_or_else(|| default_stream_name(a));
            if let Some(why) = stream_name_problem(&name) {
                problems.push(format!(
                    "stream name {name:?} of aggregate `{a}` is invalid: {why}"
                ));
            }
            if let Some(other) = by_name.insert(name.clone(), a) {
                problems.push(format!(
                    "aggregates `{other}` and `{a}` both map to stream `{name}`; give one of them another stream name"
                ));
            }
            options.name = Some(name.clone());
            options.retention.get_or_insert(Retention::Limits);
            options.discard.get_or_insert(Discard::Old);
            options.storage.get_or_insert(Storage::File);
            options.replicas.get_or_insert(1);
            // The server refuses a duplicate window longer than the max age: the default one
            // shrinks to a shorter max age; one configured longer is a problem.
            let max_age = options.max_age.filter(|a| !a.is_zero());
            match (options.duplicate_window, max_age) {
                (Some(window), Some(age)) if window > age => problems.push(format!(
                    "stream `{name}`: duplicate_window {window:?} is longer than max_age {age:?}; the server refuses that, so shorten duplicate_window"
                )),
                (Some(_), _) => {}
                (None, age) => {
                    options.duplicate_window = Some(age.map_or(DEFAULT_DUPLICATE_WINDOW, |a| a.min(DEFAULT_DUPLICATE_WINDOW)))
                }
            }
            if options.replicas == Some(0) || options.replicas > Some(5) {
                problems.push(format!("stream `{name}`: replicas must be 1 to 5"));
            }
            streams.push(StreamPlan {
                name,
                aggregate: Some((*a).to_owned()),
                subjects: vec![format!("{a}.>")],
                options,
            });
        }

        let known: BTreeSet<&str> = handlers.iter().map(|h| h.name).collect();
        unknown_names(
            config.handlers.keys(),
            &known,
            "consumer options are given for handler",
            "no handler has that name (handlers",
            &mut problems,
        );

        let mut consumers = Vec::new();
        let mut durables: BTreeMap<String, &HandlerRegistration> = BTreeMap::new();
        let mut any_explicit = false;
        for h in handlers {
            let here = format!("handler `{}` ({}:{})", h.name, h.file, h.line);
            let mut o: ConsumerOptions = h.options.clone();
            if let Some(over) = config.handlers.get(h.name) {
                o = o.overridden_by(over);
            }
            if let Some(why) = filter_problem(h.subject) {
                problems.push(format!("{here}: subject {:?} is invalid: {why}", h.subject));
            }
            let event_filter = format!("{}.*.*", h.aggregate);
            if !filters_overlap(h.subject, &event_filter) {
                problems.push(format!(
                    "{here}: subject `{}` can never match `{}` events ({event_filter})",
                    h.subject, h.event_type
                ));
            }
            let stream = streams
                .iter()
                .find(|s| s.subjects.iter().any(|sub| filter_covers(sub, h.subject)));
            let stream_name = match stream {
                Some(s) => s.name.clone(),
                None => {
                    problems.push(format!(
                        "{here}: no stream covers subject `{}` (streams: {}); use a subject within one aggregate, such as `{}.*.*`",
                        h.subject,
                        list(streams.iter().map(|s| format!("{} [{}]", s.name, s.subjects.join(", ")))),
                        h.aggregate
                    ));
                    String::new()
                }
            };
            let durable = o.durable.unwrap_or(true);
            let name = match &o.durable_name {
                Some(n) => n.to_string(),
                None => format!("{service}-{}", h.name),
            };
            if !is_valid_name(&name) {
                problems.push(format!(
                    "{here}: consumer name {name:?} must be one token of [A-Za-z0-9_-]"
                ));
            }
            if durable {
                if let Some(prev) = durables.insert(name.clone(), h) {
                    problems.push(format!(
                        "duplicate durable consumer `{name}`: handlers `{}` ({}:{}) and `{}` ({}:{}); give one of them `durable = \"...\"`",
                        prev.name, prev.file, prev.line, h.name, h.file, h.line
                    ));
                }
            }
            let ack = o.ack.unwrap_or(AckPolicy::Explicit);
            let max_deliver = o.max_deliver.unwrap_or(DEFAULT_MAX_DELIVER);
            let ack_wait = o.ack_wait.unwrap_or(DEFAULT_ACK_WAIT);
            let backoff = o.backoff.as_deref().unwrap_or(DEFAULT_BACKOFF).to_vec();
            let concurrency = o.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
            if max_deliver < 1 {
                problems.push(format!(
                    "{here}: max_deliver must be at least 1, not {max_deliver}"
                ));
            }
            if ack_wait < Duration::from_millis(100) {
                problems.push(format!(
                    "{here}: ack_wait must be at least 100ms, not {ack_wait:?}"
                ));
            }
            if backoff.is_empty() {
                problems.push(format!("{here}: backoff must hold at least one delay"));
            }
            if concurrency == 0 {
                problems.push(format!("{here}: concurrency must be at least 1"));
            }
            if ack == AckPolicy::None && (o.max_deliver.is_some() || o.backoff.is_some()) {
                problems.push(format!(
                    "{here}: ack = none retries nothing, so max_deliver and backoff do not apply; remove them or ack explicitly"
                ));
            }
            any_explicit |= ack == AckPolicy::Explicit;
            consumers.push(ConsumerPlan {
                handler: h.name.to_owned(),
                stream: stream_name,
                name,
                durable,
                filter: h.subject.to_owned(),
                filters: consumer_filters(h),
                takes_every_event: events
                    .iter()
                    .filter(|e| e.aggregate == h.aggregate)
                    .all(|e| filter_covers(h.subject, e.subject_pattern)),
                deliver: o.deliver.clone().unwrap_or(DeliverPolicy::All),
                ack,
                replay: o.replay.unwrap_or(ReplayPolicy::Instant),
                max_deliver,
                ack_wait,
                backoff,
                concurrency,
                ordered: o.ordered.unwrap_or(false),
                registration: h,
            });
        }

        let dlq = any_explicit.then(|| StreamPlan {
            name: config.dlq_stream.clone(),
            aggregate: None,
            subjects: vec!["dlq.>".to_owned()],
            options: StreamOptions {
                name: Some(config.dlq_stream.clone()),
                retention: Some(Retention::Limits),
                discard: Some(Discard::Old),
                storage: Some(Storage::File),
                replicas: config.stream_defaults.replicas.or(Some(1)),
                duplicate_window: Some(DEFAULT_DUPLICATE_WINDOW),
                ..StreamOptions::default()
            },
        });
        if let Some(d) = &dlq {
            if let Some(why) = stream_name_problem(&d.name) {
                problems.push(format!(
                    "dead-letter stream name {:?} is invalid: {why}",
                    d.name
                ));
            }
            if by_name.contains_key(&d.name) {
                problems.push(format!(
                    "the dead-letter stream `{}` has the name of an aggregate's stream; rename one",
                    d.name
                ));
            }
        }

        if problems.is_empty() {
            Ok(Topology {
                service: service.to_owned(),
                streams,
                dlq,
                consumers,
            })
        } else {
            let n = problems.len();
            let mut msg = format!(
                "{n} problem{} in the registered events and handlers:",
                if n == 1 { "" } else { "s" }
            );
            for p in &problems {
                msg.push_str("\n  - ");
                msg.push_str(p);
            }
            Err(Error::new(ErrorKind::Registry, msg))
        }
    }
}

/// A problem for each name the configuration gives options for that nothing has, e.g.
/// "stream options are given for aggregate `x`, but no ... (known: a, b)".
fn unknown_names<'a>(
    given: impl Iterator<Item = &'a String>,
    known: &BTreeSet<&str>,
    what: &str,
    why: &str,
    problems: &mut Vec<String>,
) {
    for name in given.filter(|n| !known.contains(n.as_str())) {
        problems.push(format!(
            "{what} `{name}`, but {why}: {})",
            list(known.iter())
        ));
    }
}

fn list<T: fmt::Display>(items: impl Iterator<Item = T>) -> String {
    let v: Vec<String> = items.map(|i| i.to_string()).collect();
    if v.is_empty() {
        "none".to_owned()
    } else {
        v.join(", ")
    }
}

fn dur(d: Option<Duration>) -> String {
    match d {
        None => "unlimited".to_owned(),
        Some(d) => format!("{d:?}"),
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "service {}", self.service)?;
        writeln!(f, "streams:")?;
        for s in self.streams.iter().chain(self.dlq.iter()) {
            let o = &s.options;
            writeln!(
                f,
                "  {} [{}] storage={:?} retention={:?} discard={:?} replicas={} max_age={} max_bytes={} max_msg_size={} duplicate_window={}",
                s.name,
                s.subjects.join(", "),
                o.storage.unwrap_or(Storage::File),
                o.retention.unwrap_or(Retention::Limits),
                o.discard.unwrap_or(Discard::Old),
                o.replicas.unwrap_or(1),
                dur(o.max_age),
                o.max_bytes.map_or("unlimited".to_owned(), |b| b.to_string()),
                o.max_message_size.map_or("unlimited".to_owned(), |b| b.to_string()),
                dur(o.duplicate_window),
            )?;
        }
        writeln!(f, "consumers:")?;
        for c in &self.consumers {
            writeln!(
                f,
                "  {} on {} filter={} handler={} ({}) {} deliver={:?} ack={:?} replay={:?} max_deliver={} ack_wait={:?} backoff={:?} concurrency={}{}",
                c.name,
                c.stream,
                c.filters.join(","),
                c.handler,
                c.registration.event_type,
                if c.durable { "durable" } else { "ephemeral" },
                c.deliver,
                c.ack,
                c.replay,
                c.max_deliver,
                c.ack_wait,
                c.backoff,
                c.concurrency,
                if c.ordered { " ordered" } else { "" },
            )?;
        }
        Ok(())
    }
}

/// Refuses two events that claim one CloudEvents type: eventbus's own
/// `{aggregate}.{name}.v{version}` of one and the `cloud_type` another declares, or one
/// `cloud_type` declared twice. A received event of that type could not say which it is.
fn one_event_per_cloud_type(
    events: &[&'static EventDescriptor],
    handlers: &[&'static HandlerRegistration],
    problems: &mut Vec<String>,
) {
    let all = events
        .iter()
        .copied()
        .chain(handlers.iter().flat_map(|h| h.events.iter()));
    // Each type with the first event that claims it.
    let mut claimed: BTreeMap<&str, &EventDescriptor> = BTreeMap::new();
    let mut reported = BTreeSet::new();
    // Own types first, so that a declared type that is another event's own type names both.
    let own = all.clone().map(|d| (d.cloud_type, d));
    let declared = all.filter_map(|d| d.foreign_type.map(|t| (t, d)));
    for (t, d) in own.chain(declared) {
        let same = |a: &EventDescriptor, b: &EventDescriptor| {
            (a.aggregate, a.name, a.version) == (b.aggregate, b.name, b.version)
        };
        match claimed.get(t) {
            None => {
                claimed.insert(t, d);
            }
            Some(first) if !same(first, d) && reported.insert(t) => problems.push(format!(
                "events `{}` ({}) and `{}` ({}) both claim CloudEvents type {t:?}: a received event of that type could not say which it is; give one of them another `cloud_type`",
                first.rust_type, first.cloud_type, d.rust_type, d.cloud_type
            )),
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn event(
        name: &'static str,
        own: &'static str,
        declared: Option<&'static str>,
    ) -> EventDescriptor {
        EventDescriptor {
            aggregate: "order",
            name,
            version: 1,
            subject_pattern: "order.*.x",
            cloud_type: own,
            foreign_type: declared,
            rust_type: name,
        }
    }

    static CREATED: EventDescriptor = event(
        "created",
        "order.created.v1",
        Some("com.example.orders.created"),
    );
    static LEGACY: EventDescriptor = event(
        "legacy",
        "order.legacy.v1",
        Some("com.example.orders.created"),
    );
    static SHIPPED: EventDescriptor =
        event("shipped", "order.shipped.v1", Some("order.created.v1"));
    static PAID: EventDescriptor = event("paid", "order.paid.v1", Some("com.example.orders.paid"));

    fn problems(events: &[&'static EventDescriptor]) -> Vec<String> {
        let mut problems = Vec::new();
        one_event_per_cloud_type(events, &[], &mut problems);
        problems
    }

    #[test]
    fn two_events_may_not_claim_one_cloud_type() {
        assert_eq!(problems(&[&CREATED, &PAID]), Vec::<String>::new());
        // The same event seen twice (registered, and in a handler's set) is one claim.
        assert_eq!(problems(&[&CREATED, &CREATED]), Vec::<String>::new());

        let both_declare = problems(&[&CREATED, &LEGACY]);
        assert_eq!(both_declare.len(), 1, "{both_declare:?}");
        assert!(
            both_declare[0].contains("`created`")
                && both_declare[0].contains("`legacy`")
                && both_declare[0].contains("\"com.example.orders.created\""),
            "{both_declare:?}"
        );

        let declares_anothers_own = problems(&[&SHIPPED, &CREATED]);
        assert_eq!(declares_anothers_own.len(), 1, "{declares_anothers_own:?}");
        assert!(
            declares_anothers_own[0].contains("\"order.created.v1\""),
            "{declares_anothers_own:?}"
        );

        let config = Config::default();
        let err = Topology::plan(&config, "svc", &[], &[&CREATED, &LEGACY]).unwrap_err();
        assert!(
            err.to_string().contains("both claim CloudEvents type"),
            "{err}"
        );
    }
}
