//! Provisioning: make the server's streams and consumers match the topology. Create what is
//! missing, update what may be updated, refuse what may not with an error that says what
//! differs and how to fix it.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::consumer::IntoConsumerConfig;
use async_nats::jetstream::{consumer, stream};

use crate::backend::{Backend, StreamFigures};
use crate::config::{
    AckPolicy, DeliverPolicy, Discard, ReplayPolicy, Retention, Storage, StreamOptions,
};
use crate::error::{Error, ErrorKind};
use crate::rules::{filter_covers, filters_overlap};
use crate::topology::{ConsumerPlan, StreamPlan, Topology};

/// The streams in use: planned name → the name of the stream that holds those subjects on the
/// server (the same, unless an existing stream already covered them).
pub(crate) type StreamNames = BTreeMap<String, String>;

fn storage(s: Storage) -> stream::StorageType {
    match s {
        Storage::File => stream::StorageType::File,
        Storage::Memory => stream::StorageType::Memory,
    }
}

fn retention(r: Retention) -> stream::RetentionPolicy {
    match r {
        Retention::Limits => stream::RetentionPolicy::Limits,
        Retention::Interest => stream::RetentionPolicy::Interest,
        Retention::WorkQueue => stream::RetentionPolicy::WorkQueue,
    }
}

fn discard(d: Discard) -> stream::DiscardPolicy {
    match d {
        Discard::Old => stream::DiscardPolicy::Old,
        Discard::New => stream::DiscardPolicy::New,
    }
}

/// Applies the plan's settings onto a stream configuration.
fn apply(cfg: &mut stream::Config, o: &StreamOptions) {
    cfg.max_age = o.max_age.unwrap_or(Duration::ZERO);
    cfg.max_bytes = o.max_bytes.unwrap_or(-1);
    cfg.max_message_size = o.max_message_size.unwrap_or(-1);
    cfg.discard = discard(o.discard.unwrap_or(Discard::Old));
    cfg.num_replicas = o.replicas.unwrap_or(1);
    cfg.duplicate_window = o
        .duplicate_window
        .unwrap_or(crate::topology::DEFAULT_DUPLICATE_WINDOW);
}

fn new_stream_config(plan: &StreamPlan) -> stream::Config {
    let o = &plan.options;
    let mut cfg = stream::Config {
        name: plan.name.clone(),
        subjects: plan.subjects.clone(),
        storage: storage(o.storage.unwrap_or(Storage::File)),
        retention: retention(o.retention.unwrap_or(Retention::Limits)),
        allow_direct: true,
        description: Some(match &plan.aggregate {
            Some(a) => format!("events of aggregate `{a}` (eventbus)"),
            None => "dead letters (eventbus)".to_owned(),
        }),
        ..Default::default()
    };
    apply(&mut cfg, o);
    cfg
}

/// Creates, updates or adopts every stream of the topology.
pub(crate) async fn streams(backend: &Backend, topology: &Topology) -> Result<StreamNames, Error> {
    let existing: Vec<stream::Config> = backend.streams().await?;
    let mut names = StreamNames::new();
    let mut problems = Vec::new();
    for plan in topology.streams.iter().chain(topology.dlq.iter()) {
        let want = &plan.subjects[0];
        let covering = existing
            .iter()
            .find(|i| i.subjects.iter().any(|s| filter_covers(s, want)));
        if let Some(info) = covering {
            if info.name == plan.name {
                if let Err(p) = reconcile(backend, info, plan).await {
                    problems.push(p);
                }
            } else {
                tracing::info!(
                    target: "eventbus::provision",
                    stream = %info.name,
                    subjects = %want,
                    "using the existing stream that covers the subjects, as it is"
                );
            }
            names.insert(plan.name.clone(), info.name.clone());
            continue;
        }
        if let Some(info) = existing
            .iter()
            .find(|i| i.subjects.iter().any(|s| filters_overlap(s, want)))
        {
            problems.push(format!(
                "subjects `{want}` of stream `{}` are partly owned by stream `{}` (subjects: {}); let one stream own `{want}` whole: widen `{}` to `{want}`, or delete it",
                plan.name,
                info.name,
                info.subjects.join(", "),
                info.name
            ));
            continue;
        }
        if let Some(info) = existing.iter().find(|i| i.name == plan.name) {
            problems.push(format!(
                "stream `{}` exists with subjects [{}], which do not cover `{want}`; add `{want}` to it, or give the aggregate another stream name",
                plan.name,
                info.subjects.join(", ")
            ));
            continue;
        }
        match backend.put_stream(new_stream_config(plan), false).await {
            Ok(_) => {
                tracing::info!(target: "eventbus::provision", stream = %plan.name, subjects = %want, "created stream");
                names.insert(plan.name.clone(), plan.name.clone());
            }
            Err(e) => problems.push(format!(
                "cannot create stream `{}`: {}",
                plan.name,
                crate::error::chain(&e)
            )),
        }
    }
    if problems.is_empty() {
        Ok(names)
    } else {
        Err(Error::new(
            ErrorKind::Incompatible,
            join_problems("stream", &problems),
        ))
    }
}

fn join_problems(what: &str, problems: &[String]) -> String {
    if problems.len() == 1 {
        return problems[0].clone();
    }
    let mut s = format!("{} {what} problems:", problems.len());
    for p in problems {
        s.push_str("\n  - ");
        s.push_str(p);
    }
    s
}

/// Brings an existing stream of ours in line with its plan: refuses what may not change.
async fn reconcile(
    backend: &Backend,
    have: &stream::Config,
    plan: &StreamPlan,
) -> Result<(), String> {
    let o = &plan.options;
    let mut fixed = Vec::new();
    let want_storage = storage(o.storage.unwrap_or(Storage::File));
    if have.storage != want_storage {
        fixed.push(format!(
            "storage is {:?} on the server but {:?} is configured",
            have.storage, want_storage
        ));
    }
    let want_retention = retention(o.retention.unwrap_or(Retention::Limits));
    if have.retention != want_retention {
        fixed.push(format!(
            "retention is {:?} on the server but {:?} is configured",
            have.retention, want_retention
        ));
    }
    if !fixed.is_empty() {
        return Err(format!(
            "stream `{}`: {}; these cannot change on an existing stream: configure what the server has, or move the events to a new stream (back it up, delete `{}`, restart)",
            plan.name,
            fixed.join(", "),
            plan.name
        ));
    }
    let mut want = have.clone();
    apply(&mut want, o);
    if want == *have {
        return Ok(());
    }
    backend
        .put_stream(want, true)
        .await
        .map(|_| tracing::info!(target: "eventbus::provision", stream = %plan.name, "updated stream settings"))
        .map_err(|e| format!("cannot update stream `{}`: {}", plan.name, crate::error::chain(&e)))
}

pub(crate) fn deliver_policy(d: &DeliverPolicy) -> consumer::DeliverPolicy {
    match d {
        DeliverPolicy::All => consumer::DeliverPolicy::All,
        DeliverPolicy::Last => consumer::DeliverPolicy::Last,
        DeliverPolicy::LastPerSubject => consumer::DeliverPolicy::LastPerSubject,
        DeliverPolicy::New => consumer::DeliverPolicy::New,
        DeliverPolicy::ByStartSequence(s) => {
            consumer::DeliverPolicy::ByStartSequence { start_sequence: *s }
        }
        DeliverPolicy::ByStartTime(t) => consumer::DeliverPolicy::ByStartTime { start_time: *t },
    }
}

/// How many of a stream's messages [`stream_shape`] looks at.
const SAMPLE: u64 = 64;
/// From how many subjects in a stream a wildcard filter reads about as fast as none.
const MANY_SUBJECTS: u64 = 20_000;

/// What decides whether a filter on the server pays: how many subjects a stream holds, and
/// the subjects of a sample of its messages, spread evenly over it.
#[derive(Debug, Clone, Default)]
pub(crate) struct StreamShape {
    pub(crate) subjects: u64,
    pub(crate) sample: Vec<String>,
}

/// Looks at `stream`'s shape, given its figures `f` (read by the caller, who has them
/// already at each stats look): up to [`SAMPLE`] of its messages (by sequence, evenly spaced;
/// deleted ones are left out).
pub(crate) async fn stream_shape(
    backend: &Backend,
    stream: &str,
    f: &StreamFigures,
) -> Result<StreamShape, Error> {
    let n = SAMPLE.min(f.messages);
    let span = f.last_sequence.saturating_sub(f.first_sequence) + 1;
    let mut seqs: Vec<u64> = (0..n).map(|i| f.first_sequence + span * i / n).collect();
    seqs.dedup();
    let gets = seqs.into_iter().map(|seq| async move {
        match backend.get(stream, seq).await {
            Ok(m) => Ok(Some(m.subject)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    });
    let mut sample = Vec::new();
    let mut got = futures::StreamExt::buffered(futures::stream::iter(gets), 16);
    while let Some(subject) = futures::StreamExt::next(&mut got).await {
        sample.extend(subject?);
    }
    Ok(StreamShape {
        subjects: f.subjects,
        sample,
    })
}

/// Whether the filter of a handler's consumer changes with its stream (see
/// [`filtered_on_server`]): on the aggregate's own stream, for a handler that does not take
/// every event type of its aggregate and is not ordered.
pub(crate) fn adapts(plan: &ConsumerPlan, stream_name: &str) -> bool {
    stream_name == plan.stream && !plan.takes_every_event && !plan.ordered
}

/// Whether a handler's consumer on `stream_name` has the handler's filters on the server;
/// if not, it reads the whole stream, and dispatch acks and skips the events its handler does
/// not take. `shape`: the stream's, if known.
///
/// - On a stream eventbus adopted because it already covered the aggregate's subjects (it may
///   hold much else): filtered.
/// - A handler that takes every event type of its aggregate: not filtered; reading a whole
///   stream is the server's fast path. An ordered handler: not filtered (its gate reads the
///   consumer's positions as those of the whole stream).
/// - The others: filtered when the share of the stream the handler takes (in the sample) is
///   smaller than how fast, relative to reading everything, a filter reads such a stream.
///   nats-server finds the next message for a wildcard filter (`order.*.created`) by walking
///   the block's subjects that match it, once per message, unless the block has more subjects
///   than a quarter of its messages (`filestore.go`, `firstMatching`). So a filter reads
///   nearly as fast as none over very many subjects (20,000 and more), fairly fast over few
///   matching ones, and 5 to 10 times slower over thousands. The figures are measured with
///   `bench_consume` (`BENCH_IDS`, one and three event types; README). With no events yet,
///   not filtered. The statistics task looks again every `stats_interval` as the stream grows
///   (`stats.rs`, `refilter`).
pub(crate) fn filtered_on_server(
    plan: &ConsumerPlan,
    stream_name: &str,
    shape: Option<&StreamShape>,
    version: (u64, u64, u64),
) -> bool {
    if stream_name != plan.stream {
        return true;
    }
    if !adapts(plan, stream_name) {
        return false;
    }
    let Some(shape) = shape.filter(|s| !s.sample.is_empty()) else {
        return false;
    };
    let taken = shape
        .sample
        .iter()
        .filter(|s| plan.filters.iter().any(|f| filter_covers(f, s)))
        .count();
    let share = taken as f64 / shape.sample.len() as f64;
    filter_pays(share, shape.subjects, version)
}

/// Whether a filter on the server reads a handler's events faster than reading the whole
/// stream and skipping: `share`, the part of the stream the handler takes, against a
/// filtered read's speed relative to an unfiltered one, which depends on the subjects the
/// filter matches and the stream's subjects (see [`filtered_on_server`]).
fn filter_pays(share: f64, subjects: u64, version: (u64, u64, u64)) -> bool {
    // The subjects the filter matches, estimated.
    let matching = (subjects as f64 * share).ceil() as u64;
    let speed = if subjects >= MANY_SUBJECTS {
        0.85
    } else if version >= (2, 11, 0) {
        match matching {
            0..=100 => 0.7,
            101..=300 => 0.45,
            301..=1_000 => 0.2,
            _ => 0.1,
        }
    } else {
        match matching {
            0..=50 => 0.7,
            51..=300 => 0.3,
            _ => 0.08,
        }
    };
    share < speed
}

/// The server-side configuration of a handler's consumer, with the handler's filters on the
/// server or none (`filtered`, see [`filtered_on_server`]).
///
/// The server's `max_deliver` is one more than the plan's: the dispatcher dead-letters after
/// the last allowed delivery fails, and the extra delivery only happens if the process died
/// during the last one, so that event is dead-lettered too instead of silently dropped.
pub(crate) fn consumer_config(
    plan: &ConsumerPlan,
    name: &str,
    filtered: bool,
) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: plan.durable.then(|| name.to_owned()),
        name: Some(name.to_owned()),
        description: Some(format!("handler `{}` (eventbus)", plan.handler)),
        filter_subject: if filtered && plan.filters.len() == 1 {
            plan.filters[0].clone()
        } else {
            String::new()
        },
        filter_subjects: if filtered && plan.filters.len() > 1 {
            plan.filters.clone()
        } else {
            Vec::new()
        },
        deliver_policy: deliver_policy(&plan.deliver),
        ack_policy: match plan.ack {
            AckPolicy::Explicit => consumer::AckPolicy::Explicit,
            AckPolicy::None => consumer::AckPolicy::None,
        },
        replay_policy: match plan.replay {
            ReplayPolicy::Instant => consumer::ReplayPolicy::Instant,
            ReplayPolicy::Original => consumer::ReplayPolicy::Original,
        },
        ack_wait: plan.ack_wait,
        max_deliver: match plan.ack {
            AckPolicy::Explicit => plan.max_deliver + 1,
            AckPolicy::None => -1,
        },
        inactive_threshold: if plan.durable {
            Duration::ZERO
        } else {
            Duration::from_secs(60)
        },
        ..Default::default()
    }
}

/// Creates or updates consumer `name` of a handler (its durable one, `plan.name`; or, to put
/// its filters on or take them off as the stream's shape asks, an instance's ephemeral one).
/// The server keeps an updated consumer's position.
pub(crate) async fn consumer(
    backend: &Backend,
    stream_name: &str,
    plan: &ConsumerPlan,
    name: &str,
    filtered: bool,
) -> Result<(), Error> {
    let want = consumer_config(plan, name, filtered);
    let have = backend.consumer_config(stream_name, name).await?;
    let Some(have) = have else {
        backend
            .put_consumer(stream_name, want.into_consumer_config(), false)
            .await?;
        tracing::info!(target: "eventbus::provision", consumer = %name, stream = %stream_name, takes = %plan.filters.join(","), "created consumer");
        return Ok(());
    };
    let mut fixed = Vec::new();
    if have.deliver_policy != want.deliver_policy {
        fixed.push(format!(
            "deliver policy is {:?} on the server but {:?} is configured",
            have.deliver_policy, want.deliver_policy
        ));
    }
    if have.ack_policy != want.ack_policy {
        fixed.push(format!(
            "ack policy is {:?} on the server but {:?} is configured",
            have.ack_policy, want.ack_policy
        ));
    }
    if have.replay_policy != want.replay_policy {
        fixed.push(format!(
            "replay policy is {:?} on the server but {:?} is configured",
            have.replay_policy, want.replay_policy
        ));
    }
    if !fixed.is_empty() {
        return Err(Error::new(
            ErrorKind::Incompatible,
            format!(
                "consumer `{name}` of handler `{}` on stream `{stream_name}`: {}; these cannot change on an existing consumer: configure what the server has, give the handler a new durable name (`durable = \"...\"`, it then starts from its deliver policy), or delete the consumer (`nats consumer rm {stream_name} {name}`) so it is created anew",
                plan.handler,
                fixed.join(", "),
            ),
        ));
    }
    let changed = have.filter_subject != want.filter_subject
        || have.filter_subjects != want.filter_subjects
        || have.ack_wait != want.ack_wait
        || have.max_deliver != want.max_deliver
        || have.description != want.description;
    if changed {
        let mut update = have.clone();
        update.filter_subject = want.filter_subject.clone();
        update.filter_subjects = want.filter_subjects.clone();
        update.ack_wait = want.ack_wait;
        update.max_deliver = want.max_deliver;
        update.description = want.description.clone();
        backend.put_consumer(stream_name, update, true).await?;
        tracing::info!(target: "eventbus::provision", consumer = %name, stream = %stream_name, "updated consumer");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::filter_pays;

    const NEW: (u64, u64, u64) = (2, 15, 1);
    const OLD: (u64, u64, u64) = (2, 10, 26);

    /// The cells of `bench_consume` where a handler takes one of three event types, and what
    /// the raw consumers measured there (README): the filter where it read faster.
    #[test]
    fn a_filter_is_chosen_where_the_server_reads_it_faster() {
        let third = 1.0 / 3.0;
        // 10 ids: 30 subjects, a filter reads 2-3 times the unfiltered rate of its events.
        assert!(filter_pays(third, 30, NEW));
        assert!(filter_pays(third, 30, OLD));
        // 1,000 ids: 3,000 subjects, the slow path: reading everything is as fast or faster.
        assert!(!filter_pays(third, 3_000, NEW));
        assert!(!filter_pays(third, 3_000, OLD));
        // 100,000 ids: a filter reads nearly as fast as none.
        assert!(filter_pays(third, 100_000, NEW));
        assert!(filter_pays(third, 100_000, OLD));
        // 300 ids: 900 subjects, 300 matching: faster filtered on 2.15, not on 2.10.
        assert!(filter_pays(third, 900, NEW));
        assert!(!filter_pays(third, 900, OLD));
    }

    #[test]
    fn a_handler_that_takes_nearly_everything_reads_the_whole_stream() {
        for subjects in [1, 30, 1_000, 100_000] {
            assert!(!filter_pays(1.0, subjects, NEW), "{subjects}");
            assert!(!filter_pays(0.9, subjects, OLD), "{subjects}");
        }
        // A rare type over few subjects: filtered.
        assert!(filter_pays(0.01, 2_000, NEW));
    }
}
