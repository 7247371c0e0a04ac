//! Conformance (README, "The in-process broker"): the same scenarios on the in-process broker and on a real
//! `nats-server`, so the two cannot drift apart. Each scenario is an `async fn(url)` that uses
//! the public API only; [`conformance!`] runs it twice, as `<scenario>::memory` on a
//! `memory://` broker of its own and as `<scenario>::nats` on a server of its own.
//!
//! Covered: every dispatch and publishing behaviour that needs no server restart or cluster —
//! ack, retry after the backoff delay, dead letters (permanent, max deliver, undecodable,
//! unknown event type; listed and republished), the subjects of an event-set handler, caught
//! panics, in-progress acks, bounded concurrency, per-aggregate order, a durable consumer
//! shared by two instances, an ephemeral one per instance (broadcast), `ack = "none"`, deliver
//! policy `new`, publish dedup, `publish_all`, `append` with an expected version, reads,
//! causation through `ctx.publish`, and JetStream's own publish headers (expected sequences
//! before the duplicate window).
//!
//! Handlers record what they saw in [`CALLS`], keyed by aggregate ids that start with the
//! run's own prefix ([`Run`]), so the two instances of a scenario (and scenarios running at
//! once in one process) never see each other's events. Each scenario has aggregates (`cf_*`)
//! and handlers of its own, and its buses run only those.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use eventbus::prelude::*;
use eventbus::{DeadLetter, Error, ErrorKind, Loaded, PublishOptions, Published};
use eventbus_tests::{wait_for, wait_until};
use tokio::sync::Barrier;

/// How long any one condition may take to come true.
const TIMEOUT: Duration = Duration::from_secs(20);

/// The service every bus here runs as: durable consumers are `cf-{handler}`.
const SERVICE: &str = "cf";

/// Runs a scenario on both backends: `mod $name { memory, nats }`. With `nats >= (x, y, z)`,
/// the NATS instance is skipped (with a note) on an older server.
macro_rules! conformance {
    ($name:ident, $scenario:ident $(, nats >= $min:expr)?) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$scenario(&super::memory_url(stringify!($name))).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn nats() {
                let server = eventbus_tests::NatsServer::start().await;
                $(
                    if server.version() < $min {
                        eprintln!(
                            "note: nats-server {:?} is older than {:?}; skipped",
                            server.version(),
                            $min
                        );
                        return;
                    }
                )?
                super::$scenario(&server.url()).await;
            }
        }
    };
}

conformance!(ack_once, scenario_ack_once);
conformance!(retry_after_backoff, scenario_retry_after_backoff);
conformance!(permanent_error, scenario_permanent_error);
conformance!(max_deliver, scenario_max_deliver);
conformance!(undecodable, scenario_undecodable);
conformance!(unknown_event_type, scenario_unknown_event_type);
conformance!(event_set_subjects, scenario_event_set_subjects);
conformance!(panic_caught, scenario_panic_caught);
conformance!(longer_than_ack_wait, scenario_longer_than_ack_wait);
conformance!(concurrency_bound, scenario_concurrency_bound);
conformance!(ordered, scenario_ordered);
conformance!(shared_durable, scenario_shared_durable);
conformance!(publish_dedup, scenario_publish_dedup);
conformance!(publish_all, scenario_publish_all);
conformance!(append_race, scenario_append_race, nats >= (2, 11, 0));
conformance!(read, scenario_read);
conformance!(republish_dead_letters, scenario_republish_dead_letters);
conformance!(causation, scenario_causation);
conformance!(deliver_new, scenario_deliver_new);
conformance!(publish_headers, scenario_publish_headers);
conformance!(broadcast, scenario_broadcast);
conformance!(ack_none, scenario_ack_none);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A broker of its own for one test: `memory://cf-{test}-{pid}-{n}`.
fn memory_url(test: &str) -> String {
    format!(
        "memory://cf-{test}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// One run of a scenario: the prefix of every aggregate id it uses.
struct Run {
    prefix: String,
}

impl Run {
    fn new() -> Run {
        Run {
            prefix: format!(
                "r{}p{}",
                NEXT.fetch_add(1, Ordering::SeqCst),
                std::process::id()
            ),
        }
    }

    /// This run's aggregate id `name`.
    fn id(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Whether `id` is one of this run's aggregate ids.
    fn owns(&self, id: &str) -> bool {
        run_of(id) == self.prefix
    }

    /// The calls of `handler` with this run's events, in the order they began.
    fn calls(&self, handler: &str) -> Vec<Call> {
        CALLS
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.handler == handler && self.owns(&c.id))
            .cloned()
            .collect()
    }

    /// The calls of `handler` with aggregate `name` of this run.
    fn calls_of(&self, handler: &str, name: &str) -> Vec<Call> {
        let id = self.id(name);
        self.calls(handler)
            .into_iter()
            .filter(|c| c.id == id)
            .collect()
    }
}

/// The run prefix of an aggregate id (the part before the first `-`).
fn run_of(id: &str) -> &str {
    id.split('-').next().unwrap_or(id)
}

/// One call of a handler.
#[derive(Debug, Clone)]
struct Call {
    handler: &'static str,
    /// The event's aggregate id.
    id: String,
    /// A number the event carries, where it has one.
    n: i64,
    attempt: u64,
    event_id: String,
    correlation_id: String,
    /// Whether the handler returned `Ok`.
    ok: bool,
    at: Instant,
    /// The name of the thread that ran it (which instance, in [`scenario_shared_durable`]).
    thread: Option<String>,
}

static CALLS: Mutex<Vec<Call>> = Mutex::new(Vec::new());

/// Records a call.
fn note(handler: &'static str, id: &str, n: i64, ctx: &EventContext, ok: bool) {
    CALLS.lock().unwrap().push(Call {
        handler,
        id: id.to_owned(),
        n,
        attempt: ctx.attempt(),
        event_id: ctx.event_id().to_owned(),
        correlation_id: ctx.correlation_id().to_owned(),
        ok,
        at: Instant::now(),
        thread: std::thread::current().name().map(str::to_owned),
    });
}

/// A bus of service `cf` on `url` that runs `handlers` (none: it only publishes and reads).
async fn start(url: &str, handlers: &[&str]) -> Bus {
    eventbus::builder()
        .no_env()
        .url(url)
        .service(SERVICE)
        .only_handlers(handlers.iter().copied())
        .start()
        .await
        .unwrap_or_else(|e| panic!("a bus on {url} running {handlers:?} does not start: {e}"))
}

/// The durable consumer of `handler`.
fn consumer(handler: &str) -> String {
    format!("{SERVICE}-{handler}")
}

/// This run's dead letters of `handler`'s consumer.
async fn dead_letters(bus: &Bus, run: &Run, handler: &str) -> Vec<DeadLetter> {
    bus.dead_letters(Some(&consumer(handler)))
        .await
        .unwrap_or_else(|e| panic!("cannot list the dead letters: {e}"))
        .into_iter()
        .filter(|d| {
            d.original_subject
                .split('.')
                .nth(1)
                .is_some_and(|id| run.owns(id))
        })
        .collect()
}

/// Waits until `handler`'s consumer has `n` dead letters of this run, and returns them.
async fn wait_dead_letters(bus: &Bus, run: &Run, handler: &str, n: usize) -> Vec<DeadLetter> {
    wait_for(
        TIMEOUT,
        format_args!("{n} dead letter(s) of `{handler}`"),
        || async {
            let all = dead_letters(bus, run, handler).await;
            (all.len() >= n).then_some(all)
        },
    )
    .await
}

/// Waits until `handler` has been called for aggregate `name` of this run and returned `Ok`.
async fn wait_handled(run: &Run, handler: &str, name: &str) {
    wait_until(
        TIMEOUT,
        format_args!("`{handler}` handled {}", run.id(name)),
        || async { run.calls_of(handler, name).iter().any(|c| c.ok) },
    )
    .await
}

/// Lets `window` pass before a marker event that proves a negative: an event wrongly left
/// unacked, or retried, would be due again within it, and so delivered before the marker.
/// It is the time the semantics give a redelivery, not synchronisation (that is always a
/// condition with a deadline).
async fn let_pass(window: Duration) {
    tokio::time::sleep(window).await;
}

fn header<'a>(d: &'a DeadLetter, name: &str) -> Option<&'a str> {
    d.headers.get(name).map(|v| v.as_str())
}

// ---------------------------------------------------------------------------------------------
// 1. handled once and acked
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "cf_ack", name = "placed")]
struct AckPlaced {
    #[event(aggregate_id)]
    id: String,
}

const ACK_WAIT: Duration = Duration::from_millis(200);

#[event_handler(ack_wait = "200ms")]
async fn cf_ack(event: AckPlaced, ctx: EventContext) -> Result<(), HandlerError> {
    note("cf_ack", &event.id, 0, &ctx, true);
    Ok(())
}

async fn scenario_ack_once(url: &str) {
    let run = Run::new();
    let bus = start(url, &["cf_ack"]).await;

    let mut published = Vec::new();
    for i in 0..3 {
        let id = run.id(&format!("a{i}"));
        published.push((id.clone(), bus.publish(&AckPlaced { id }).await.unwrap()));
    }
    wait_until(TIMEOUT, "three events are handled", || async {
        run.calls("cf_ack").len() >= 3
    })
    .await;
    // An event whose ack was lost would be delivered again after the ack wait, before the
    // marker.
    let_pass(ACK_WAIT * 3).await;
    bus.publish(&AckPlaced {
        id: run.id("marker"),
    })
    .await
    .unwrap();
    wait_handled(&run, "cf_ack", "marker").await;

    let calls = run.calls("cf_ack");
    assert_eq!(calls.len(), 4, "each event handled once: {calls:?}");
    for (id, p) in &published {
        let of: Vec<(u64, &str)> = calls
            .iter()
            .filter(|c| &c.id == id)
            .map(|c| (c.attempt, c.event_id.as_str()))
            .collect();
        assert_eq!(
            of,
            [(1, p.id.as_str())],
            "{id}: once, on its first delivery, with its own id"
        );
    }
    assert!(dead_letters(&bus, &run, "cf_ack").await.is_empty());
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 2. error → retried after the backoff delay
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "cf_retry", name = "charged")]
struct RetryCharged {
    #[event(aggregate_id)]
    id: String,
}

#[event_handler(max_deliver = 5, backoff = ["200ms", "400ms"])]
async fn cf_retry(event: RetryCharged, ctx: EventContext) -> Result<(), HandlerError> {
    let fails = !event.id.ends_with("marker") && ctx.attempt() < 3;
    note("cf_retry", &event.id, 0, &ctx, !fails);
    if fails {
        return Err(HandlerError::transient(format!(
            "payment provider unavailable ({})",
            ctx.attempt()
        )));
    }
    Ok(())
}

async fn scenario_retry_after_backoff(url: &str) {
    let run = Run::new();
    let bus = start(url, &["cf_retry"]).await;

    bus.publish(&RetryCharged { id: run.id("r1") })
        .await
        .unwrap();
    wait_handled(&run, "cf_retry", "r1").await;
    let_pass(Duration::from_millis(400)).await;
    bus.publish(&RetryCharged {
        id: run.id("marker"),
    })
    .await
    .unwrap();
    wait_handled(&run, "cf_retry", "marker").await;

    let calls = run.calls_of("cf_retry", "r1");
    let attempts: Vec<(u64, bool)> = calls.iter().map(|c| (c.attempt, c.ok)).collect();
    assert_eq!(
        attempts,
        [(1, false), (2, false), (3, true)],
        "delivered three times, then acked"
    );
    let first_gap = calls[1].at - calls[0].at;
    let second_gap = calls[2].at - calls[1].at;
    assert!(
        first_gap >= Duration::from_millis(200),
        "first retry after {first_gap:?}, before the 200ms backoff"
    );
    assert!(
        second_gap >= Duration::from_millis(400),
        "second retry after {second_gap:?}, before the 400ms backoff"
    );
    assert!(
        dead_letters(&bus, &run, "cf_retry").await.is_empty(),
        "a retried success is no dead letter"
    );
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 3. permanent error → dead letter at once
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "cf_perm", name = "invoiced")]
struct PermInvoiced {
    #[event(aggregate_id)]
    id: String,
    total_cents: i64,
}

#[event_handler(max_deliver = 5, backoff = ["100ms"])]
async fn cf_perm(event: PermInvoiced, ctx: EventContext) -> Result<(), HandlerError> {
    let ok = event.total_cents >= 0;
    note("cf_perm", &event.id, event.total_cents, &ctx, ok);
    if !ok {
        return Err(HandlerError::permanent(format!(
            "invoice {} has a negative total {}",
            event.id, event.total_cents
        )));
    }
    Ok(())
}

async fn scenario_permanent_error(url: &str) {
    let run = Run::new();
    let bus = start(url, &["cf_perm"]).await;

    let bad = PermInvoiced {
        id: run.id("p1"),
        total_cents: -5,
    };
    let mut extra = HeaderMap::new();
    extra.insert("x-tenant", "acme");
    let published = bus
        .publish_with(
            &bad,
            PublishOptions {
                headers: Some(extra),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let dead = wait_dead_letters(&bus, &run, "cf_perm", 1).await;
    // A retry would come after the 100ms backoff, before the marker.
    let_pass(Duration::from_millis(300)).await;
    bus.publish(&PermInvoiced {
        id: run.id("marker"),
        total_cents: 1,
    })
    .await
    .unwrap();
    wait_handled(&run, "cf_perm", "marker").await;

    assert_eq!(
        run.calls_of("cf_perm", "p1").len(),
        1,
        "a permanent error is never retried"
    );
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.consumer, consumer("cf_perm"));
    assert_eq!(d.reason, "permanent");
    assert_eq!(
        d.error,
        format!("invoice {} has a negative total -5", bad.id)
    );
    assert_eq!(d.original_subject, format!("cf_perm.{}.invoiced", bad.id));
    assert_eq!(d.original_stream, "CF_PERM");
    assert_eq!(d.original_sequence, published.sequence);
    assert_eq!(d.deliveries, 1);
    assert_eq!(header(d, "ce-id"), Some(published.id.as_str()));
    assert_eq!(header(d, "x-tenant"), Some("acme"));
    assert_eq!(
        serde_json::from_slice::<PermInvoiced>(&d.payload).unwrap(),
        bad,
        "the original body"
    );
    assert_eq!(dead_letters(&bus, &run, "cf_perm").await.len(), 1);
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 4. the last allowed delivery fails → dead letter `max_deliver`
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "cf_maxdel", name = "shipped")]
struct MaxDelShipped {
    #[event(aggregate_id)]
    id: String,
}

#[event_handler(max_deliver = 3, backoff = ["100ms"])]
async fn cf_maxdel(event: MaxDelShipped, ctx: EventContext) -> Result<(), HandlerError> {
    let ok = event.id.ends_with("marker");
    note("cf_maxdel", &event.id, 0, &ctx, ok);
    if !ok {
        return Err(HandlerError::transient(format!(
            "carrier down (attempt {})",
            ctx.attempt()
        )));
    }
    Ok(())
}

async fn scenario_max_deliver(url: &str) {
    let run = Run::new();
    let bus = start(url, &["cf_maxdel"]).await;

    let published = bus
        .publish(&MaxDelShipped { id: run.id("m1") })
        .await
        .unwrap();
    let dead = wait_dead_letters(&bus, &run, "cf_maxdel", 1).await;
    let_pass(Duration::from_millis(300)).await;
    bus.publish(&MaxDelShipped {
        id: run.id("marker"),
    })
    .await
    .unwrap();
    wait_handled(&run, "cf_maxdel", "marker").await;

    let attempts: Vec<u64> = run
        .calls_of("cf_maxdel", "m1")
        .iter()
        .map(|c| c.attempt)
        .collect();
    assert_eq!(attempts, [1, 2, 3], "called exactly max_deliver times");
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.reason, "max_deliver");
    assert_eq!(d.error, "carrier down (attempt 3)");
    assert_eq!(d.deliveries, 3);
    assert_eq!(
        d.original_subject,
        format!("cf_maxdel.{}.shipped", run.id("m1"))
    );
    assert_eq!(d.original_sequence, published.sequence);
    assert_eq!(header(d, "ce-id"), Some(published.id.as_str()));
    assert_eq!(dead_letters(&bus, &run, "cf_maxdel").await.len(), 1);
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 5. undecodable body → dead letter, handler never called
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "cf_undec", name = "created")]
struct UndecCreated {
    #[event(aggregate_id)]
    id: String,
    amount: u64,
}

// One at a time: once the good event is handled, the bad one before it is settled.
#[event_handler(concurrency = 1, max_deliver = 5, backoff = ["100ms"])]
async fn cf_undec(event: UndecCreated, ctx: EventContext) -> Result<(), HandlerError> {
    note("cf_undec", &event.id, event.amount as i64, &ctx, true);
    Ok(())
}

async fn scenario_undecodable(url: &str) {
    let run = Run::new();
    let bus = start(url, &["cf_undec"]).await;

    let subject = format!("cf_undec.{}.created", run.id("u1"));
    let bad = bus
        .publish_raw(&subject, HeaderMap::new(), &b"this is not json"[..])
        .await
        .unwrap();
    bus.publish(&UndecCreated {
        id: run.id("u2"),
        amount: 3,
    })
    .await
    .unwrap();
    let dead = wait_dead_letters(&bus, &run, "cf_undec", 1).await;
    wait_handled(&run, "cf_undec", "u2").await;

    let seen: Vec<String> = run.calls("cf_undec").into_iter().map(|c| c.id).collect();
    assert_eq!(
        seen,
        [run.id("u2")],
        "the handler never saw the undecodable event"
    );
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.reason, "undecodable");
    assert!(!d.error.is_empty(), "the decode error is given");
    assert_eq!(d.original_subject, subject);
    assert_eq!(d.original_sequence, bad.sequence);
    assert_eq!(d.original_stream, "CF_UNDEC");
    assert_eq!(d.deliveries, 1);
    assert_eq!(&d.payload[..], b"this is not json");
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 6. unknown event type → dead letter `unknown_event_type`
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "cf_set", name = "opened")]
struct SetOpened {
    #[event(aggregate_id)]
    id: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "cf_set", name = "closed")]
struct SetClosed {
    #[event(aggregate_id)]
    id: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "cf_set")]
enum SetEvent {
    Opened(SetOpened),
    Closed(SetClosed),
}

#[event_handler(subject = "cf_set.*.*", max_deliver = 5, backoff = ["100ms"])]
async fn cf_set(event: SetEvent, ctx: EventContext) -> Result<(), HandlerError> {
    let (id, n) = match &event {
        SetEvent::Opened(e) => (&e.id, 1),
        SetEvent::Closed(e) => (&e.id, 2),
    };
    note("cf_set", id, n, &ctx, true);
    Ok(())
}

async fn scenario_unknown_event_type(url: &str) {
    let run = Run::new();
    let bus = start(url, &["cf_set"]).await;
    let id = run.id("s1");

    bus.publish(&SetOpened { id: id.clone() }).await.unwrap();
    let subject = format!("cf_set.{id}.other");
    let body = format!(r#"{{"id":"{id}"}}"#);
    let other = bus
        .publish_raw(&subject, HeaderMap::new(), body.clone())
        .await
        .unwrap();
    bus.publish(&SetClosed { id: id.clone() }).await.unwrap();
    let dead = wait_dead_letters(&bus, &run, "cf_set", 1).await;
    wait_until(TIMEOUT, "both known events are handled", || async {
        run.calls("cf_set").len() >= 2
    })
    .await;

    // Handled concurrently, so in either order.
    let mut seen: Vec<i64> = run.calls("cf_set").iter().map(|c| c.n).collect();
    seen.sort();
    assert_eq!(seen, [1, 2], "opened and closed, each once");
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.reason, "unknown_event_type");
    assert!(
        d.error.contains("other"),
        "the error names the unknown type: {}",
        d.error
    );
    assert_eq!(d.original_subject, subject);
    assert_eq!(d.original_sequence, other.sequence);
    assert_eq!(d.deliveries, 1);
    assert_eq!(&d.payload[..], body.as_bytes());
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 7. an event-set handler without a subject consumes only its events' subjects
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "cf_only", name = "opened")]
struct OnlyOpened {
    #[event(aggregate_id)]
    id: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "cf_only", name = "closed")]
struct OnlyClosed {
    #[event(aggregate_id)]
    id: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "cf_only")]
enum OnlyEvent {
    Opened(OnlyOpened),
    Closed(OnlyClosed),
}

// One at a time, in stream order: once the set's events are handled, anything before them
// was settled (handled or dead-lettered) first.
#[event_handler(concurrency = 1, max_deliver = 5, backoff = ["100ms"])]
async fn cf_only(event: OnlyEvent, ctx: EventContext) -> Result<(), HandlerError> {
    let (id, n) = match &event {
        OnlyEvent::Opened(e) => (&e.id, 1),
        OnlyEvent::Closed(e) => (&e.id, 2),
    };
    note("cf_only", id, n, &ctx, true);
    Ok(())
}

async fn scenario_event_set_subjects(url: &str) {
    let run = Run::new();
    let bus = start(url, &["cf_only"]).await;
    let id = run.id("o1");

    let body = format!(r#"{{"id":"{id}"}}"#);
    bus.publish_raw(&format!("cf_only.{id}.other"), HeaderMap::new(), body)
        .await
        .unwrap();
    bus.publish(&OnlyOpened { id: id.clone() }).await.unwrap();
    bus.publish(&OnlyClosed { id: id.clone() }).await.unwrap();
    wait_until(TIMEOUT, "the set's two events are handled", || async {
        run.calls("cf_only").len() >= 2
    })
    .await;

    let seen: Vec<i64> = run.calls("cf_only").iter().map(|c| c.n).collect();
    assert_eq!(seen, [1, 2], "opened, then closed; nothing else");
    assert!(
        dead_letters(&bus, &run, "cf_only").await.is_empty(),
        "an event type outside the set is not delivered, so not dead-lettered either"
    );
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 8. a panic is caught and retried; the worker lives on
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "cf_panic", name = "logged")]
struct PanicLogged {
    #[event(aggregate_id)]
    id: String,
}

// One slot: if a panic lost it, nothing after the panic would run.
#[event_handler(concurrency = 1, max_deliver = 5, backoff = ["100ms"])]
async fn cf_panic(event: PanicLogged, ctx: EventContext) -> Result<(), HandlerError> {
    let panics = event.id.ends_with("-p1") && ctx.attempt() == 1;
    note("cf_panic", &event.id, 0, &ctx, !panics);
    if panics {
        panic!("handler bug on {}", event.id);
    }
    Ok(())
}

async fn scenario_panic_caught(url: &str) {
    let run = Run::new();
    let bus = start(url, &["cf_panic"]).await;

    bus.publish(&PanicLogged { id: run.id("p1") })
        .await
        .unwrap();
    wait_handled(&run, "cf_panic", "p1").await;
    bus.publish(&PanicLogged { id: run.id("p2") })
        .await
        .unwrap();
    bus.publish(&PanicLogged { id: run.id("p3") })
        .await
        .unwrap();
    wait_handled(&run, "cf_panic", "p3").await;

    let calls: Vec<(String, u64, bool)> = run
        .calls("cf_panic")
        .into_iter()
        .map(|c| (c.id, c.attempt, c.ok))
        .collect();
    let want = [
        ("p1", 1, false),
        ("p1", 2, true),
        ("p2", 1, true),
        ("p3", 1, true),
    ]
    .map(|(id, attempt, ok)| (run.id(id), attempt, ok));
    assert_eq!(calls, want);
    assert!(dead_letters(&bus, &run, "cf_panic").await.is_empty());
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 9. a handler longer than ack_wait is handled once
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "cf_slow", name = "exported")]
struct SlowExported {
    #[event(aggregate_id)]
    id: String,
}

static SLOW_FINISHED: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[event_handler(ack_wait = "1s", max_deliver = 5, backoff = ["100ms"])]
async fn cf_slow(event: SlowExported, ctx: EventContext) -> Result<(), HandlerError> {
    note("cf_slow", &event.id, 0, &ctx, true);
    // The work itself: two and a half times the ack wait.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    SLOW_FINISHED.lock().unwrap().push(event.id);
    Ok(())
}

async fn scenario_longer_than_ack_wait(url: &str) {
    let run = Run::new();
    let bus = start(url, &["cf_slow"]).await;

    bus.publish(&SlowExported { id: run.id("s1") })
        .await
        .unwrap();
    wait_until(TIMEOUT, "the slow handler finishes", || async {
        SLOW_FINISHED.lock().unwrap().contains(&run.id("s1"))
    })
    .await;

    let calls: Vec<u64> = run.calls("cf_slow").iter().map(|c| c.attempt).collect();
    assert_eq!(calls, [1], "never delivered again while it ran");
    assert!(dead_letters(&bus, &run, "cf_slow").await.is_empty());
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 10. at most `concurrency` events at once
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "cf_conc", name = "resized")]
struct ConcResized {
    #[event(aggregate_id)]
    id: String,
}

/// Per run: (in flight now, the most at once).
static CONC: Mutex<BTreeMap<String, (usize, usize)>> = Mutex::new(BTreeMap::new());

#[event_handler(concurrency = 3)]
async fn cf_conc(event: ConcResized, ctx: EventContext) -> Result<(), HandlerError> {
    let run = run_of(&event.id).to_owned();
    {
        let mut conc = CONC.lock().unwrap();
        let (now, max) = conc.entry(run.clone()).or_default();
        *now += 1;
        *max = (*max).max(*now);
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    CONC.lock().unwrap().get_mut(&run).unwrap().0 -= 1;
    note("cf_conc", &event.id, 0, &ctx, true);
    Ok(())
}

async fn scenario_concurrency_bound(url: &str) {
    let run = Run::new();
    // Stored before the handler's bus starts, so all twelve are there to be pulled at once.
    let publisher = start(url, &[]).await;
    let ids: Vec<String> = (0..12).map(|i| run.id(&format!("c{i:02}"))).collect();
    for id in &ids {
        publisher
            .publish(&ConcResized { id: id.clone() })
            .await
            .unwrap();
    }
    let bus = start(url, &["cf_conc"]).await;
    wait_until(TIMEOUT, "twelve events are handled", || async {
        run.calls("cf_conc").len() >= 12
    })
    .await;

    assert_eq!(
        CONC.lock().unwrap()[&run.prefix].1,
        3,
        "three at once, never more"
    );
    let mut done: Vec<String> = run.calls("cf_conc").into_iter().map(|c| c.id).collect();
    done.sort();
    assert_eq!(done, ids, "each handled once");
    bus.shutdown().await.unwrap();
    publisher.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 11. ordered: one aggregate's events one at a time, in order; aggregates in parallel
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "cf_ord", name = "stepped")]
struct OrdStepped {
    #[event(aggregate_id)]
    id: String,
    n: u32,
}

#[derive(Default)]
struct OrdState {
    in_flight: BTreeMap<String, usize>,
    max_per_aggregate: BTreeMap<String, usize>,
    total: usize,
    max_total: usize,
}

/// Per run.
static ORD: Mutex<BTreeMap<String, OrdState>> = Mutex::new(BTreeMap::new());

fn ord<T>(run: &str, f: impl FnOnce(&mut OrdState) -> T) -> T {
    f(ORD.lock().unwrap().entry(run.to_owned()).or_default())
}

#[event_handler(ordered, concurrency = 8)]
async fn cf_ord(event: OrdStepped, ctx: EventContext) -> Result<(), HandlerError> {
    let run = run_of(&event.id).to_owned();
    ord(&run, |s| {
        let here = s.in_flight.entry(event.id.clone()).or_default();
        *here += 1;
        let here = *here;
        let max = s.max_per_aggregate.entry(event.id.clone()).or_default();
        *max = (*max).max(here);
        s.total += 1;
        s.max_total = s.max_total.max(s.total);
    });
    tokio::time::sleep(Duration::from_millis(60)).await;
    ord(&run, |s| {
        *s.in_flight.get_mut(&event.id).unwrap() -= 1;
        s.total -= 1;
    });
    note("cf_ord", &event.id, event.n.into(), &ctx, true);
    Ok(())
}

async fn scenario_ordered(url: &str) {
    let run = Run::new();
    let publisher = start(url, &[]).await;
    let aggregates = ["a", "b", "c", "d"];
    for n in 0..5 {
        for a in aggregates {
            publisher
                .publish(&OrdStepped { id: run.id(a), n })
                .await
                .unwrap();
        }
    }
    let bus = start(url, &["cf_ord"]).await;
    wait_until(TIMEOUT, "twenty events are handled", || async {
        run.calls("cf_ord").len() >= 20
    })
    .await;

    for a in aggregates {
        let order: Vec<(i64, u64)> = run
            .calls_of("cf_ord", a)
            .iter()
            .map(|c| (c.n, c.attempt))
            .collect();
        assert_eq!(
            order,
            (0..5).map(|n| (n, 1)).collect::<Vec<_>>(),
            "aggregate {a} in stream order, each once"
        );
    }
    ord(&run.prefix, |s| {
        for a in aggregates {
            assert_eq!(
                s.max_per_aggregate[&run.id(a)],
                1,
                "aggregate {a} had two events in flight"
            );
        }
        assert!(
            s.max_total > 1,
            "aggregates ran one after another, not in parallel"
        );
    });
    bus.shutdown().await.unwrap();
    publisher.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 12. two instances of a service share a handler's durable consumer
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "cf_shared", name = "queued")]
struct SharedQueued {
    #[event(aggregate_id)]
    id: String,
}

#[event_handler(concurrency = 2)]
async fn cf_shared(event: SharedQueued, ctx: EventContext) -> Result<(), HandlerError> {
    tokio::time::sleep(Duration::from_millis(40)).await;
    note("cf_shared", &event.id, 0, &ctx, true);
    Ok(())
}

/// An instance of the service: a bus running `handlers` on a runtime of its own, on a thread
/// named `name`, so a handler can tell which instance called it.
struct Instance {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Instance {
    async fn start(name: &str, url: &str, handlers: &'static [&'static str]) -> Instance {
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let url = url.to_owned();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                rt.block_on(async move {
                    let bus = start(&url, handlers).await;
                    let _ = started_tx.send(());
                    let _ = stop_rx.await;
                    bus.shutdown().await.unwrap();
                });
            })
            .expect("a thread");
        started_rx.await.expect("the instance starts");
        Instance {
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Shuts the instance's bus down and waits for its thread.
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let thread = self.thread.take().unwrap();
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .unwrap()
            .expect("the instance shuts down cleanly");
    }
}

async fn scenario_shared_durable(url: &str) {
    let run = Run::new();
    let publisher = start(url, &[]).await;
    let ids: Vec<String> = (0..30).map(|i| run.id(&format!("q{i:02}"))).collect();
    for id in &ids {
        publisher
            .publish(&SharedQueued { id: id.clone() })
            .await
            .unwrap();
    }
    let (a, b) = tokio::join!(
        Instance::start("cf-instance-a", url, &["cf_shared"]),
        Instance::start("cf-instance-b", url, &["cf_shared"]),
    );
    wait_until(TIMEOUT, "thirty events are handled", || async {
        run.calls("cf_shared").len() >= 30
    })
    .await;
    a.stop().await;
    b.stop().await;

    let calls = run.calls("cf_shared");
    let mut handled: Vec<&str> = calls.iter().map(|c| c.id.as_str()).collect();
    handled.sort();
    assert_eq!(handled, ids, "each event handled exactly once overall");
    assert!(calls.iter().all(|c| c.attempt == 1), "{calls:?}");
    let mut per_instance: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &calls {
        *per_instance
            .entry(c.thread.as_deref().unwrap_or("?"))
            .or_default() += 1;
    }
    assert_eq!(
        per_instance.keys().copied().collect::<Vec<_>>(),
        ["cf-instance-a", "cf-instance-b"],
        "both instances got some: {per_instance:?}"
    );
    publisher.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 13. publish dedup: the same explicit id twice is stored once
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "cf_dedup", name = "placed")]
struct DedupPlaced {
    #[event(aggregate_id)]
    id: String,
    n: u32,
}

async fn scenario_publish_dedup(url: &str) {
    let run = Run::new();
    let bus = start(url, &[]).await;
    let event = DedupPlaced {
        id: run.id("d1"),
        n: 1,
    };
    let event_id = format!("{}-order-1", run.prefix);
    let with_id = || PublishOptions {
        id: Some(event_id.clone()),
        ..Default::default()
    };

    let first = bus.publish_with(&event, with_id()).await.unwrap();
    let second = bus.publish_with(&event, with_id()).await.unwrap();
    assert!(!first.duplicate);
    assert!(second.duplicate, "the second copy is a duplicate");
    assert_eq!(
        (second.stream.as_str(), second.sequence, second.id.as_str()),
        ("CF_DEDUP", first.sequence, event_id.as_str()),
        "the first copy's acknowledgement"
    );
    let other = bus
        .publish(&DedupPlaced {
            id: run.id("d1"),
            n: 2,
        })
        .await
        .unwrap();
    assert!(!other.duplicate);
    assert!(other.sequence > first.sequence);

    let stored = bus
        .read::<DedupPlaced>(run.id("d1"))
        .collect()
        .await
        .unwrap();
    let got: Vec<(u32, &str, u64)> = stored
        .iter()
        .map(|r| (r.event.n, r.metadata.id.as_str(), r.version))
        .collect();
    assert_eq!(
        got,
        [(1, event_id.as_str(), 1), (2, other.id.as_str(), 2)],
        "one copy of the event published twice"
    );
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 14. publish_all reports each outcome, in order
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "cf_all", name = "placed")]
struct AllPlaced {
    #[event(aggregate_id)]
    id: String,
    n: u32,
}

async fn scenario_publish_all(url: &str) {
    let run = Run::new();
    let bus = start(url, &[]).await;
    let ids = [
        run.id("a1"),
        run.id("a2"),
        format!("{}-bad id", run.prefix),
        run.id("a1"),
        run.id("a3"),
    ];
    let events: Vec<AllPlaced> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| AllPlaced {
            id: id.clone(),
            n: n as u32,
        })
        .collect();

    let results = bus.publish_all(&events).await;

    assert_eq!(results.len(), events.len(), "one outcome per event");
    let err = results[2].as_ref().expect_err("the invalid id");
    assert_eq!(err.kind(), ErrorKind::InvalidAggregateId, "{err:?}");
    let stored: Vec<(usize, &Published)> = results
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(i, r)| {
            let p = r
                .as_ref()
                .unwrap_or_else(|e| panic!("event {i} is stored: {e}"));
            assert_eq!(p.stream, "CF_ALL");
            assert!(!p.duplicate);
            (i, p)
        })
        .collect();
    assert!(
        stored.windows(2).all(|w| w[0].1.sequence < w[1].1.sequence),
        "stored in the order given: {stored:?}"
    );
    for (name, want) in [("a1", vec![0, 3]), ("a2", vec![1]), ("a3", vec![4])] {
        let read = bus.read::<AllPlaced>(run.id(name)).collect().await.unwrap();
        let got: Vec<(AllPlaced, String, u64)> = read
            .into_iter()
            .map(|r| (r.event, r.metadata.id, r.sequence))
            .collect();
        let want: Vec<(AllPlaced, String, u64)> = want
            .into_iter()
            .map(|i: usize| {
                let p = results[i].as_ref().unwrap();
                (events[i].clone(), p.id.clone(), p.sequence)
            })
            .collect();
        assert_eq!(got, want, "what is stored of {name}");
    }
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 15. append with an expected version: of two writers racing, exactly one wins
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "cf_acct", name = "opened")]
struct AcctOpened {
    #[event(aggregate_id)]
    account: String,
    owner: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "cf_acct", name = "deposited")]
struct AcctDeposited {
    #[event(aggregate_id)]
    account: String,
    amount: u64,
    /// Who wrote it, so the writers' events can be told apart.
    by: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "cf_acct")]
enum AcctEvent {
    Opened(AcctOpened),
    Deposited(AcctDeposited),
}

#[derive(Debug, Default, Clone, PartialEq)]
struct Account {
    owner: Option<String>,
    balance: u64,
    deposits: u32,
}

impl Aggregate for Account {
    type Event = AcctEvent;

    fn apply(&mut self, event: &AcctEvent) {
        match event {
            AcctEvent::Opened(e) => self.owner = Some(e.owner.clone()),
            AcctEvent::Deposited(e) => {
                self.balance += e.amount;
                self.deposits += 1;
            }
        }
    }
}

fn author(e: &AcctEvent) -> &str {
    match e {
        AcctEvent::Opened(o) => &o.owner,
        AcctEvent::Deposited(d) => &d.by,
    }
}

/// Both writers save at once from `version`; returns both outcomes.
async fn race(
    writers: &[Bus; 2],
    account: &str,
    version: u64,
    events: [AcctEvent; 2],
) -> [Result<eventbus::Appended, Error>; 2] {
    let barrier = Arc::new(Barrier::new(2));
    let [ea, eb] = events;
    let [ta, tb] = [(writers[0].clone(), ea), (writers[1].clone(), eb)].map(|(bus, event)| {
        let barrier = barrier.clone();
        let account = account.to_owned();
        tokio::spawn(async move {
            barrier.wait().await;
            bus.save(&account, version, &[event]).await
        })
    });
    let (ra, rb) = tokio::join!(ta, tb);
    [ra.expect("writer a"), rb.expect("writer b")]
}

async fn scenario_append_race(url: &str) {
    let run = Run::new();
    let writers = [start(url, &[]).await, start(url, &[]).await];
    let account = run.id("acc");
    let names = ["a", "b"];
    let mut expected = Account::default();

    for round in 0..6u64 {
        let loaded: Loaded<Account> = writers[round as usize % 2].load(&account).await.unwrap();
        assert_eq!(loaded.version, round, "one event per round");
        assert_eq!(loaded.state, expected, "round {round}: the state loaded");
        let tag = |w: &str| format!("r{round}-{w}");
        let events = names.map(|w| {
            if round == 0 {
                AcctEvent::Opened(AcctOpened {
                    account: account.clone(),
                    owner: tag(w),
                })
            } else {
                AcctEvent::Deposited(AcctDeposited {
                    account: account.clone(),
                    amount: if w == "a" { 10 } else { 20 },
                    by: tag(w),
                })
            }
        });
        let outcomes = race(&writers, &account, loaded.version, events.clone()).await;

        let winner = match (&outcomes[0], &outcomes[1]) {
            (Ok(_), Err(_)) => 0,
            (Err(_), Ok(_)) => 1,
            (a, b) => panic!("round {round}: exactly one writer wins, got {a:?} and {b:?}"),
        };
        let loser = 1 - winner;
        let won = outcomes[winner].as_ref().unwrap();
        assert_eq!(won.version, round + 1, "round {round}");
        let err = outcomes[loser].as_ref().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict, "{err:?}");
        let c = err
            .conflict()
            .unwrap_or_else(|| panic!("a conflict tells the versions: {err:?}"));
        assert_eq!(
            (c.expected, c.actual),
            (round, won.version),
            "round {round}: expected and actual versions"
        );
        assert_eq!(c.aggregate_id, account);

        let history = writers[loser]
            .read::<AcctEvent>(&account)
            .collect()
            .await
            .unwrap();
        assert_eq!(history.len() as u64, won.version, "round {round}");
        let last = &history.last().unwrap().event;
        assert_eq!(author(last), tag(names[winner]), "the winner's event");
        assert!(
            history
                .iter()
                .all(|r| author(&r.event) != tag(names[loser])),
            "round {round}: none of the loser's events"
        );
        expected.apply(&events[winner]);
    }

    // The loser recovers the usual way: load, decide again, save at the loaded version.
    let loaded: Loaded<Account> = writers[1].load(&account).await.unwrap();
    assert_eq!(loaded.version, 6);
    assert_eq!(loaded.state, expected);
    assert_eq!(loaded.state.deposits, 5);
    let again = writers[1]
        .save(
            &account,
            loaded.version,
            &[AcctEvent::Deposited(AcctDeposited {
                account: account.clone(),
                amount: 1,
                by: "retry".into(),
            })],
        )
        .await
        .unwrap();
    assert_eq!(again.version, 7);
    let loaded: Loaded<Account> = writers[0].load(&account).await.unwrap();
    assert_eq!(
        (loaded.version, loaded.state.balance),
        (7, expected.balance + 1)
    );
    for w in &writers {
        w.shutdown().await.unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// 16. read: one aggregate's events in order, from a version or a stream sequence
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "cf_read", name = "opened")]
struct ReadOpened {
    #[event(aggregate_id)]
    account: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "cf_read", name = "ticked")]
struct ReadTicked {
    #[event(aggregate_id)]
    account: String,
    n: u64,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "cf_read")]
enum ReadEvent {
    Opened(ReadOpened),
    Ticked(ReadTicked),
}

/// Another aggregate type, with the same ids.
#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "cf_noise", name = "logged")]
struct NoiseLogged {
    #[event(aggregate_id)]
    account: String,
    n: u64,
}

const READ_COUNT: u64 = 200;

/// The `n`th event (from 0) of `account`.
fn nth_read_event(account: &str, n: u64) -> ReadEvent {
    if n == 0 {
        ReadEvent::Opened(ReadOpened {
            account: account.into(),
        })
    } else {
        ReadEvent::Ticked(ReadTicked {
            account: account.into(),
            n,
        })
    }
}

async fn scenario_read(url: &str) {
    let run = Run::new();
    let bus = start(url, &[]).await;
    let (mine, other) = (run.id("acc-1"), run.id("acc-2"));

    // acc-1's events, with acc-2's (same type) and a noise event (same id) in between.
    let mut sequences = Vec::new();
    let mut between_50_and_51 = 0;
    for n in 0..READ_COUNT {
        sequences.push(
            bus.publish(&nth_read_event(&mine, n))
                .await
                .unwrap()
                .sequence,
        );
        if n % 4 == 0 {
            let p = bus.publish(&nth_read_event(&other, n)).await.unwrap();
            if n == 48 {
                between_50_and_51 = p.sequence;
            }
        }
        if n % 5 == 0 {
            bus.publish(&NoiseLogged {
                account: mine.clone(),
                n,
            })
            .await
            .unwrap();
        }
    }
    // acc-2's event after acc-1's 49th (version 49), before its 50th.
    assert!(sequences[48] < between_50_and_51 && between_50_and_51 < sequences[49]);

    let all = bus.read::<ReadEvent>(&mine).collect().await.unwrap();
    assert_eq!(all.len() as u64, READ_COUNT);
    for (i, r) in all.iter().enumerate() {
        let n = i as u64;
        assert_eq!(r.event, nth_read_event(&mine, n), "event {n} in order");
        assert_eq!(r.version, n + 1);
        assert_eq!(r.sequence, sequences[i]);
        assert_eq!(r.metadata.aggregate_id, mine, "none of another aggregate");
    }

    let from = bus
        .read::<ReadEvent>(&mine)
        .from_version(150)
        .collect()
        .await
        .unwrap();
    assert_eq!(from.len() as u64, READ_COUNT - 149);
    assert_eq!(
        (from[0].version, &from[0].event),
        (150, &nth_read_event(&mine, 149))
    );
    assert_eq!(from.last().unwrap().version, READ_COUNT);

    let from_seq = bus
        .read::<ReadEvent>(&mine)
        .from_sequence(sequences[99])
        .collect()
        .await
        .unwrap();
    assert_eq!(from_seq.len() as u64, READ_COUNT - 99);
    assert_eq!(
        (from_seq[0].version, from_seq[0].sequence),
        (100, sequences[99]),
        "versions still count from the start"
    );
    let after_other = bus
        .read::<ReadEvent>(&mine)
        .from_sequence(between_50_and_51)
        .collect()
        .await
        .unwrap();
    assert_eq!(
        (after_other[0].version, after_other[0].sequence),
        (50, sequences[49]),
        "from another aggregate's sequence: this one's next"
    );

    let others = bus.read::<ReadEvent>(&other).collect().await.unwrap();
    assert_eq!(others.len() as u64, READ_COUNT / 4);
    assert!(others.iter().all(|r| r.metadata.aggregate_id == other));
    let noise = bus.read::<NoiseLogged>(&mine).collect().await.unwrap();
    assert_eq!(noise.len() as u64, READ_COUNT / 5, "the other type's own");
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 17. dead letters are listed, and handled once republished after a fix
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "cf_fix", name = "charged")]
struct FixCharged {
    #[event(aggregate_id)]
    id: String,
    amount: i64,
}

/// The runs whose bug behind `cf_fix`'s failures is fixed.
static FIXED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

#[event_handler(max_deliver = 5, backoff = ["100ms"])]
async fn cf_fix(event: FixCharged, ctx: EventContext) -> Result<(), HandlerError> {
    let fixed = FIXED.lock().unwrap().contains(run_of(&event.id));
    let ok = event.amount >= 0 || fixed;
    note("cf_fix", &event.id, event.amount, &ctx, ok);
    if !ok {
        return Err(HandlerError::permanent(format!(
            "charge {} has a negative amount {}",
            event.id, event.amount
        )));
    }
    Ok(())
}

async fn scenario_republish_dead_letters(url: &str) {
    let run = Run::new();
    let bus = start(url, &["cf_fix"]).await;
    let mut published = BTreeMap::new();
    for (name, amount) in [("c1", 10), ("c2", -5), ("c3", -7), ("c4", 20)] {
        let p = bus
            .publish(&FixCharged {
                id: run.id(name),
                amount,
            })
            .await
            .unwrap();
        published.insert(name, p);
    }

    let mut dead = wait_dead_letters(&bus, &run, "cf_fix", 2).await;
    dead.sort_by_key(|d| d.original_sequence);
    wait_handled(&run, "cf_fix", "c4").await;
    wait_handled(&run, "cf_fix", "c1").await;
    for (d, (name, amount)) in dead.iter().zip([("c2", -5), ("c3", -7)]) {
        let id = run.id(name);
        assert_eq!(d.reason, "permanent");
        assert_eq!(
            d.error,
            format!("charge {id} has a negative amount {amount}")
        );
        assert_eq!(d.original_sequence, published[name].sequence);
        assert_eq!(header(d, "ce-id"), Some(published[name].id.as_str()));
    }

    // Fixed: one republished is handled, as the same event, and leaves the list.
    FIXED.lock().unwrap().insert(run.prefix.clone());
    bus.republish_dead_letter(dead[0].sequence).await.unwrap();
    wait_handled(&run, "cf_fix", "c2").await;
    let c2: Vec<(String, bool)> = run
        .calls_of("cf_fix", "c2")
        .into_iter()
        .map(|c| (c.event_id, c.ok))
        .collect();
    assert_eq!(
        c2,
        [
            (published["c2"].id.clone(), false),
            (published["c2"].id.clone(), true)
        ],
        "the handler sees the same event id"
    );
    let left: Vec<u64> = dead_letters(&bus, &run, "cf_fix")
        .await
        .iter()
        .map(|d| d.sequence)
        .collect();
    assert_eq!(left, [dead[1].sequence], "c2 left the list");

    // All the others.
    let again = bus
        .republish_dead_letters(Some(&consumer("cf_fix")))
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    wait_handled(&run, "cf_fix", "c3").await;
    assert!(dead_letters(&bus, &run, "cf_fix").await.is_empty());
    let mut handled: Vec<String> = run
        .calls("cf_fix")
        .into_iter()
        .filter(|c| c.ok)
        .map(|c| c.id)
        .collect();
    handled.sort();
    assert_eq!(
        handled,
        ["c1", "c2", "c3", "c4"].map(|n| run.id(n)),
        "each charge handled once"
    );
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 18. ctx.publish carries the correlation id forward and sets the causation id
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "cf_cause", name = "requested")]
struct CauseRequested {
    #[event(aggregate_id)]
    id: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "cf_effect", name = "done")]
struct EffectDone {
    #[event(aggregate_id)]
    id: String,
}

/// Per handled cause: what `ctx.publish` stored.
static EFFECTS: Mutex<Vec<(String, Published)>> = Mutex::new(Vec::new());

#[event_handler]
async fn cf_cause(event: CauseRequested, ctx: EventContext) -> Result<(), HandlerError> {
    let stored = ctx
        .publish(&EffectDone {
            id: format!("{}-effect", event.id),
        })
        .await?;
    EFFECTS
        .lock()
        .unwrap()
        .push((ctx.event_id().to_owned(), stored));
    note("cf_cause", &event.id, 0, &ctx, true);
    Ok(())
}

async fn scenario_causation(url: &str) {
    let run = Run::new();
    let bus = start(url, &["cf_cause"]).await;
    let correlation = format!("{}-corr", run.prefix);

    let correlated = bus
        .publish_with(
            &CauseRequested { id: run.id("k1") },
            PublishOptions {
                correlation_id: Some(correlation.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let plain = bus
        .publish(&CauseRequested { id: run.id("k2") })
        .await
        .unwrap();
    wait_handled(&run, "cf_cause", "k1").await;
    wait_handled(&run, "cf_cause", "k2").await;

    for (name, cause, want_correlation) in [
        ("k1", &correlated, correlation.as_str()),
        ("k2", &plain, plain.id.as_str()),
    ] {
        let call = &run.calls_of("cf_cause", name)[0];
        assert_eq!(call.event_id, cause.id);
        assert_eq!(call.correlation_id, want_correlation);
        let stored = EFFECTS
            .lock()
            .unwrap()
            .iter()
            .find(|(handled, _)| handled == &cause.id)
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| panic!("{name}'s effect was published"));
        assert_eq!(stored.stream, "CF_EFFECT");

        let effect_id = format!("{}-effect", run.id(name));
        let effects = bus.read::<EffectDone>(&effect_id).collect().await.unwrap();
        assert_eq!(effects.len(), 1, "{effects:?}");
        let m = &effects[0].metadata;
        assert_eq!(effects[0].event, EffectDone { id: effect_id });
        assert_eq!(effects[0].sequence, stored.sequence);
        assert_eq!(m.id, stored.id);
        assert_ne!(m.id, cause.id, "the effect has an id of its own");
        assert_eq!(
            m.correlation_id.as_deref(),
            Some(want_correlation),
            "correlation carried forward"
        );
        assert_eq!(
            m.causation_id.as_deref(),
            Some(cause.id.as_str()),
            "caused by the handled event"
        );
        assert_eq!(m.source.as_deref(), Some(SERVICE));
    }
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 19. deliver policy `new`: only events published after the consumer was created
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "cf_new", name = "posted")]
struct NewPosted {
    #[event(aggregate_id)]
    id: String,
}

// One at a time, in stream order: once a later event is handled, an earlier one would have
// been too.
#[event_handler(deliver = "new", concurrency = 1)]
async fn cf_new(event: NewPosted, ctx: EventContext) -> Result<(), HandlerError> {
    note("cf_new", &event.id, 0, &ctx, true);
    Ok(())
}

async fn scenario_deliver_new(url: &str) {
    let run = Run::new();
    let publisher = start(url, &[]).await;
    for name in ["old1", "old2"] {
        publisher
            .publish(&NewPosted { id: run.id(name) })
            .await
            .unwrap();
    }
    let bus = start(url, &["cf_new"]).await;
    for name in ["new1", "new2"] {
        publisher
            .publish(&NewPosted { id: run.id(name) })
            .await
            .unwrap();
    }
    wait_handled(&run, "cf_new", "new2").await;

    let seen: Vec<String> = run.calls("cf_new").into_iter().map(|c| c.id).collect();
    assert_eq!(
        seen,
        [run.id("new1"), run.id("new2")],
        "only what was published after the consumer was created"
    );
    bus.shutdown().await.unwrap();
    publisher.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 20. JetStream's publish headers: the expected sequences are checked before the duplicate
//     window, and the stored message keeps every header
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "cf_hdr", name = "noted")]
struct HdrNoted {
    #[event(aggregate_id)]
    id: String,
}

async fn scenario_publish_headers(url: &str) {
    let run = Run::new();
    let bus = start(url, &[]).await;
    let id = run.id("h1");
    let subject = format!("cf_hdr.{id}.noted");
    let filter = format!("cf_hdr.{id}.*");
    let body = format!(r#"{{"id":"{id}"}}"#);
    let expecting = |msg_id: &str, last: u64| {
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", msg_id);
        h.insert("Nats-Expected-Last-Subject-Sequence", last.to_string());
        h.insert(
            "Nats-Expected-Last-Subject-Sequence-Subject",
            filter.as_str(),
        );
        h
    };

    let first = bus
        .publish_raw(&subject, expecting("m1", 0), body.clone())
        .await
        .unwrap();
    assert!(!first.duplicate);
    // The copy a publisher sends again when the first acknowledgement did not come: with the
    // same expected sequence it is refused, with the first copy's as expected it is a
    // duplicate (what `append` relies on).
    let err = bus
        .publish_raw(&subject, expecting("m1", 0), body.clone())
        .await
        .expect_err("the aggregate moved on: a wrong last sequence, not a duplicate");
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err:?}");
    let again = bus
        .publish_raw(&subject, expecting("m1", first.sequence), body.clone())
        .await
        .unwrap();
    assert_eq!(
        (again.duplicate, again.sequence),
        (true, first.sequence),
        "the first copy's acknowledgement"
    );
    let mut stale = HeaderMap::new();
    stale.insert("Nats-Msg-Id", "m1");
    stale.insert("Nats-Expected-Last-Sequence", "0");
    let err = bus
        .publish_raw(&subject, stale, body.clone())
        .await
        .expect_err("a wrong last stream sequence, not a duplicate");
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err:?}");
    let mut right = HeaderMap::new();
    right.insert("Nats-Expected-Last-Sequence", first.sequence.to_string());
    let second = bus
        .publish_raw(&subject, right, body.clone())
        .await
        .unwrap();
    assert_eq!(second.sequence, first.sequence + 1);

    let read = bus.read::<HdrNoted>(&id).collect().await.unwrap();
    assert_eq!(read.len(), 2, "{read:?}");
    let h = &read[0].metadata.headers;
    let value = |name: &str| h.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(value("Nats-Msg-Id").as_deref(), Some("m1"));
    assert_eq!(
        value("Nats-Expected-Last-Subject-Sequence").as_deref(),
        Some("0"),
        "stored with the headers it came with"
    );
    assert_eq!(
        value("Nats-Expected-Last-Subject-Sequence-Subject"),
        Some(filter.clone())
    );

    let err = bus
        .publish_raw("cf_nowhere.1.x", HeaderMap::new(), body)
        .await
        .expect_err("no stream stores it");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err:?}");
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 21. `durable = false`: a consumer of its own per instance, so every instance gets every event
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "cf_bcast", name = "invalidated")]
struct BcastInvalidated {
    #[event(aggregate_id)]
    id: String,
}

#[event_handler(durable = false)]
async fn cf_bcast(event: BcastInvalidated, ctx: EventContext) -> Result<(), HandlerError> {
    note("cf_bcast", &event.id, 0, &ctx, true);
    Ok(())
}

async fn scenario_broadcast(url: &str) {
    let run = Run::new();
    let publisher = start(url, &[]).await;
    let (a, b) = tokio::join!(
        Instance::start("cf-instance-a", url, &["cf_bcast"]),
        Instance::start("cf-instance-b", url, &["cf_bcast"]),
    );
    let ids: Vec<String> = (0..3).map(|i| run.id(&format!("k{i}"))).collect();
    for id in &ids {
        publisher
            .publish(&BcastInvalidated { id: id.clone() })
            .await
            .unwrap();
    }
    wait_until(TIMEOUT, "both instances handled all three", || async {
        run.calls("cf_bcast").len() >= 6
    })
    .await;
    a.stop().await;
    b.stop().await;

    let mut per_instance: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in run.calls("cf_bcast") {
        per_instance
            .entry(c.thread.unwrap_or_default())
            .or_default()
            .push(c.id);
    }
    for handled in per_instance.values_mut() {
        handled.sort();
    }
    assert_eq!(
        per_instance,
        BTreeMap::from([
            ("cf-instance-a".to_owned(), ids.clone()),
            ("cf-instance-b".to_owned(), ids.clone()),
        ]),
        "each instance handled each event once"
    );
    publisher.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 22. `ack = "none"`: a failed event is neither retried nor dead-lettered
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "cf_lossy", name = "viewed")]
struct LossyViewed {
    #[event(aggregate_id)]
    id: String,
}

// One at a time, in stream order: once the marker is handled, the failed event is past.
#[event_handler(ack = "none", concurrency = 1)]
async fn cf_lossy(event: LossyViewed, ctx: EventContext) -> Result<(), HandlerError> {
    let ok = !event.id.ends_with("-f1");
    note("cf_lossy", &event.id, 0, &ctx, ok);
    if !ok {
        return Err(HandlerError::transient("projection store is down"));
    }
    Ok(())
}

async fn scenario_ack_none(url: &str) {
    let run = Run::new();
    let bus = start(url, &["cf_lossy"]).await;

    bus.publish(&LossyViewed { id: run.id("f1") })
        .await
        .unwrap();
    wait_until(TIMEOUT, "f1 is tried", || async {
        !run.calls_of("cf_lossy", "f1").is_empty()
    })
    .await;
    bus.publish(&LossyViewed {
        id: run.id("marker"),
    })
    .await
    .unwrap();
    wait_handled(&run, "cf_lossy", "marker").await;

    let calls: Vec<(String, u64, bool)> = run
        .calls("cf_lossy")
        .into_iter()
        .map(|c| (c.id, c.attempt, c.ok))
        .collect();
    assert_eq!(
        calls,
        [(run.id("f1"), 1, false), (run.id("marker"), 1, true)],
        "the failed event is not retried"
    );
    // Nor dead-lettered: a bus whose handlers all have `ack = "none"` has no dead-letter
    // stream at all.
    match bus.dead_letters(None).await {
        Ok(all) => assert!(all.is_empty(), "{all:?}"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::NotFound, "{e:?}"),
    }
    bus.shutdown().await.unwrap();
}
