//! Dispatch semantics against a real `nats-server` (README, "Handlers"; the path of a delivery in docs/ARCHITECTURE.md): ack on success, nak with
//! backoff, dead letters (permanent error, max deliveries, undecodable body, unknown event
//! type), caught panics, in-progress acks for long handlers, bounded concurrency, per-aggregate
//! order, foreign messages, and causation through `ctx.publish`.
//!
//! Every test starts its own server and a bus that runs only the handler under test; each
//! handler has an aggregate of its own (`dsp_*`) and its own statics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::message::StreamMessage;
use async_nats::HeaderMap;
use eventbus::prelude::*;
use eventbus::{PublishOptions, Published};
use eventbus_tests::{wait_for, wait_until, NatsServer, Probe};

/// How long any one condition may take to come true.
const TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Starts a bus of `service` on `server` that runs the handler `handler` alone.
async fn start_bus(server: &NatsServer, service: &str, handler: &str) -> Bus {
    eventbus::builder()
        .no_env()
        .url(server.url())
        .service(service)
        .only_handlers([handler])
        .start()
        .await
        .unwrap_or_else(|e| panic!("bus `{service}` with handler `{handler}` does not start: {e}"))
}

fn header<'a>(msg: &'a StreamMessage, name: &str) -> Option<&'a str> {
    msg.headers.get(name).map(|v| v.as_str())
}

/// Asserts that `dead` carries every header of `original` (except JetStream's own `Nats-*`
/// ones) with the same values, and the same body.
fn assert_copied(dead: &StreamMessage, original: &StreamMessage) {
    assert_eq!(
        dead.payload, original.payload,
        "a dead letter keeps the original body"
    );
    let mut compared = 0;
    for (name, values) in original.headers.iter() {
        let name: &str = name.as_ref();
        if name.starts_with("Nats-") {
            continue;
        }
        let want: Vec<&str> = values.iter().map(|v| v.as_str()).collect();
        let have: Vec<&str> = dead.headers.get_all(name).map(|v| v.as_str()).collect();
        assert_eq!(have, want, "header `{name}` of the dead letter");
        compared += 1;
    }
    assert!(compared > 0 || original.headers.is_empty());
}

fn max_into(max: &AtomicUsize, value: usize) {
    max.fetch_max(value, Ordering::SeqCst);
}

// ---------------------------------------------------------------------------------------------
// 1. Ok → ack
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "dsp_ack", name = "placed")]
struct AckPlaced {
    #[event(aggregate_id)]
    id: String,
}

static ACK_SEEN: Mutex<Vec<(String, String, u64)>> = Mutex::new(Vec::new());

#[event_handler]
async fn ack_record(event: AckPlaced, ctx: EventContext) -> Result<(), HandlerError> {
    ACK_SEEN
        .lock()
        .unwrap()
        .push((event.id, ctx.event_id().to_owned(), ctx.attempt()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handled_event_is_acked_once() {
    let server = NatsServer::start().await;
    let probe = Probe::new(&server).await;
    let bus = start_bus(&server, "dsp", "ack_record").await;

    let mut published = Vec::new();
    for i in 0..5 {
        published.push(
            bus.publish(&AckPlaced {
                id: format!("a{i}"),
            })
            .await
            .unwrap(),
        );
    }
    wait_until(TIMEOUT, "five events are handled", || async {
        ACK_SEEN.lock().unwrap().len() >= 5
    })
    .await;
    let info = probe.settled(TIMEOUT, "DSP_ACK", "dsp-ack_record").await;

    let mut seen = ACK_SEEN.lock().unwrap().clone();
    seen.sort();
    let want: Vec<(String, String, u64)> = published
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("a{i}"), p.id.clone(), 1))
        .collect();
    assert_eq!(
        seen, want,
        "each event handled once, on its first delivery, with its own id"
    );
    assert_eq!(
        info.delivered.consumer_sequence, 5,
        "no event was delivered twice"
    );
    assert_eq!(
        info.ack_floor.stream_sequence,
        published.last().unwrap().sequence,
        "all acked"
    );
    assert_eq!(info.num_redelivered, 0);
    assert!(probe.all("DLQ").await.is_empty());
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 2. Err → nak with the backoff delay of the delivery count
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "dsp_retry", name = "charged")]
struct RetryCharged {
    #[event(aggregate_id)]
    id: String,
}

static RETRY_CALLS: Mutex<Vec<(u64, Instant)>> = Mutex::new(Vec::new());

#[event_handler(max_deliver = 5, backoff = ["200ms", "400ms"])]
async fn retry_flaky(_event: RetryCharged, ctx: EventContext) -> Result<(), HandlerError> {
    let calls = {
        let mut calls = RETRY_CALLS.lock().unwrap();
        calls.push((ctx.attempt(), Instant::now()));
        calls.len()
    };
    if calls < 3 {
        return Err(HandlerError::transient(format!(
            "payment provider unavailable ({calls})"
        )));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_event_is_retried_after_the_backoff_delay() {
    let server = NatsServer::start().await;
    let probe = Probe::new(&server).await;
    let bus = start_bus(&server, "dsp", "retry_flaky").await;

    bus.publish(&RetryCharged { id: "r1".into() })
        .await
        .unwrap();
    wait_until(TIMEOUT, "the third attempt ran", || async {
        RETRY_CALLS.lock().unwrap().len() >= 3
    })
    .await;
    let info = probe.settled(TIMEOUT, "DSP_RETRY", "dsp-retry_flaky").await;

    let calls = RETRY_CALLS.lock().unwrap().clone();
    let attempts: Vec<u64> = calls.iter().map(|(a, _)| *a).collect();
    assert_eq!(attempts, [1, 2, 3], "delivered three times, then acked");
    let first_gap = calls[1].1 - calls[0].1;
    let second_gap = calls[2].1 - calls[1].1;
    assert!(
        first_gap >= Duration::from_millis(200),
        "first retry after {first_gap:?}, before the 200ms backoff"
    );
    assert!(
        second_gap >= Duration::from_millis(400),
        "second retry after {second_gap:?}, before the 400ms backoff"
    );
    assert_eq!(
        info.delivered.consumer_sequence, 3,
        "three deliveries in all"
    );
    assert_eq!(info.ack_floor.stream_sequence, 1, "acked after the success");
    assert!(
        probe.all("DLQ").await.is_empty(),
        "a retried success is no dead letter"
    );
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 3. HandlerError::permanent → dead letter and term at once
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "dsp_perm", name = "invoiced")]
struct PermInvoiced {
    #[event(aggregate_id)]
    id: String,
    total_cents: i64,
}

static PERM_CALLS: AtomicUsize = AtomicUsize::new(0);

#[event_handler(max_deliver = 5, backoff = ["100ms"])]
async fn perm_reject(event: PermInvoiced) -> Result<(), HandlerError> {
    PERM_CALLS.fetch_add(1, Ordering::SeqCst);
    Err(HandlerError::permanent(format!(
        "invoice {} has a negative total {}",
        event.id, event.total_cents
    )))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_error_dead_letters_the_event_at_once() {
    let server = NatsServer::start().await;
    let probe = Probe::new(&server).await;
    let bus = start_bus(&server, "dsp", "perm_reject").await;

    let mut extra = HeaderMap::new();
    extra.insert("x-tenant", "acme");
    let published = bus
        .publish_with(
            &PermInvoiced {
                id: "p1".into(),
                total_cents: -5,
            },
            PublishOptions {
                headers: Some(extra),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let dead = probe.wait_all(TIMEOUT, "DLQ", 1).await;
    let info = probe.settled(TIMEOUT, "DSP_PERM", "dsp-perm_reject").await;

    assert_eq!(
        PERM_CALLS.load(Ordering::SeqCst),
        1,
        "a permanent error is never retried"
    );
    assert_eq!(info.delivered.consumer_sequence, 1, "delivered once");
    assert_eq!(dead.len(), 1);
    let dead = &dead[0];
    assert_eq!(dead.subject.as_str(), "dlq.dsp-perm_reject");
    assert_copied(dead, &probe.stored("DSP_PERM", published.sequence).await);
    assert_eq!(header(dead, "x-tenant"), Some("acme"));
    assert_eq!(header(dead, "ce-id"), Some(published.id.as_str()));
    assert_eq!(header(dead, "eventbus-dlq-reason"), Some("permanent"));
    assert_eq!(
        header(dead, "eventbus-dlq-error"),
        Some("invoice p1 has a negative total -5")
    );
    assert_eq!(
        header(dead, "eventbus-original-subject"),
        Some("dsp_perm.p1.invoiced")
    );
    assert_eq!(
        header(dead, "eventbus-original-sequence"),
        Some(published.sequence.to_string().as_str())
    );
    assert_eq!(header(dead, "eventbus-original-stream"), Some("DSP_PERM"));
    assert_eq!(header(dead, "eventbus-deliveries"), Some("1"));
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 4. the last allowed delivery fails → dead letter, then term
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "dsp_maxdel", name = "shipped")]
struct MaxDelShipped {
    #[event(aggregate_id)]
    id: String,
}

static MAXDEL_ATTEMPTS: Mutex<Vec<u64>> = Mutex::new(Vec::new());

#[event_handler(max_deliver = 3, backoff = ["100ms"])]
async fn maxdel_always_fails(_event: MaxDelShipped, ctx: EventContext) -> Result<(), HandlerError> {
    MAXDEL_ATTEMPTS.lock().unwrap().push(ctx.attempt());
    Err(HandlerError::transient(format!(
        "carrier down (attempt {})",
        ctx.attempt()
    )))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_allowed_delivery_failing_dead_letters_the_event() {
    let server = NatsServer::start().await;
    let probe = Probe::new(&server).await;
    let bus = start_bus(&server, "dsp", "maxdel_always_fails").await;

    let published = bus
        .publish(&MaxDelShipped { id: "m1".into() })
        .await
        .unwrap();
    let dead = probe.wait_all(TIMEOUT, "DLQ", 1).await;
    let info = probe
        .settled(TIMEOUT, "DSP_MAXDEL", "dsp-maxdel_always_fails")
        .await;

    assert_eq!(
        *MAXDEL_ATTEMPTS.lock().unwrap(),
        [1, 2, 3],
        "called exactly max_deliver times"
    );
    assert_eq!(info.delivered.consumer_sequence, 3, "no fourth delivery");
    assert_eq!(dead.len(), 1);
    let dead = &dead[0];
    assert_eq!(dead.subject.as_str(), "dlq.dsp-maxdel_always_fails");
    assert_copied(dead, &probe.stored("DSP_MAXDEL", published.sequence).await);
    assert_eq!(header(dead, "eventbus-dlq-reason"), Some("max_deliver"));
    assert_eq!(
        header(dead, "eventbus-dlq-error"),
        Some("carrier down (attempt 3)")
    );
    assert_eq!(header(dead, "eventbus-deliveries"), Some("3"));
    assert_eq!(
        header(dead, "eventbus-original-subject"),
        Some("dsp_maxdel.m1.shipped")
    );
    assert_eq!(
        header(dead, "eventbus-original-sequence"),
        Some(published.sequence.to_string().as_str())
    );
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 5. undecodable body → dead letter, handler never called
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "dsp_undec", name = "created")]
struct UndecCreated {
    #[event(aggregate_id)]
    id: String,
    amount: u64,
}

static UNDEC_SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[event_handler(max_deliver = 5, backoff = ["100ms"])]
async fn undec_record(event: UndecCreated) -> Result<(), HandlerError> {
    UNDEC_SEEN.lock().unwrap().push(event.id);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_body_is_dead_lettered_without_calling_the_handler() {
    let server = NatsServer::start().await;
    let probe = Probe::new(&server).await;
    let bus = start_bus(&server, "dsp", "undec_record").await;

    let bad = probe
        .publish_raw(
            "dsp_undec.u1.created",
            HeaderMap::new(),
            b"this is not json",
        )
        .await;
    let dead = probe.wait_all(TIMEOUT, "DLQ", 1).await;
    // A good event after the bad one: once it is handled, the bad one is past for good.
    bus.publish(&UndecCreated {
        id: "u2".into(),
        amount: 3,
    })
    .await
    .unwrap();
    wait_until(TIMEOUT, "the good event is handled", || async {
        !UNDEC_SEEN.lock().unwrap().is_empty()
    })
    .await;
    let info = probe
        .settled(TIMEOUT, "DSP_UNDEC", "dsp-undec_record")
        .await;

    assert_eq!(
        *UNDEC_SEEN.lock().unwrap(),
        ["u2"],
        "the handler never saw the undecodable event"
    );
    assert_eq!(
        info.delivered.consumer_sequence, 2,
        "the undecodable event was delivered once"
    );
    assert_eq!(probe.all("DLQ").await.len(), 1);
    let dead = &dead[0];
    assert_eq!(dead.subject.as_str(), "dlq.dsp-undec_record");
    assert_eq!(&dead.payload[..], b"this is not json");
    assert_eq!(header(dead, "eventbus-dlq-reason"), Some("undecodable"));
    assert!(
        header(dead, "eventbus-dlq-error").is_some_and(|e| !e.is_empty()),
        "the decode error is given"
    );
    assert_eq!(
        header(dead, "eventbus-original-subject"),
        Some("dsp_undec.u1.created")
    );
    assert_eq!(
        header(dead, "eventbus-original-sequence"),
        Some(bad.to_string().as_str())
    );
    assert_eq!(header(dead, "eventbus-deliveries"), Some("1"));
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 6. unknown event type → dead letter
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "dsp_set", name = "opened")]
struct SetOpened {
    #[event(aggregate_id)]
    id: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "dsp_set", name = "closed")]
struct SetClosed {
    #[event(aggregate_id)]
    id: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "dsp_set")]
enum SetEvent {
    Opened(SetOpened),
    Closed(SetClosed),
}

static SET_SEEN: Mutex<Vec<SetEvent>> = Mutex::new(Vec::new());

#[event_handler(subject = "dsp_set.*.*", max_deliver = 5, backoff = ["100ms"])]
async fn set_record(event: SetEvent) -> Result<(), HandlerError> {
    SET_SEEN.lock().unwrap().push(event);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_event_type_is_dead_lettered() {
    let server = NatsServer::start().await;
    let probe = Probe::new(&server).await;
    let bus = start_bus(&server, "dsp", "set_record").await;

    bus.publish(&SetOpened { id: "1".into() }).await.unwrap();
    let other = probe
        .publish_raw("dsp_set.1.other", HeaderMap::new(), br#"{"id":"1"}"#)
        .await;
    bus.publish(&SetClosed { id: "1".into() }).await.unwrap();
    let dead = probe.wait_all(TIMEOUT, "DLQ", 1).await;
    wait_until(TIMEOUT, "both known events are handled", || async {
        SET_SEEN.lock().unwrap().len() >= 2
    })
    .await;
    let info = probe.settled(TIMEOUT, "DSP_SET", "dsp-set_record").await;

    // Handled concurrently, so in either order.
    let seen = SET_SEEN.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.contains(&SetEvent::Opened(SetOpened { id: "1".into() })),
        "{seen:?}"
    );
    assert!(
        seen.contains(&SetEvent::Closed(SetClosed { id: "1".into() })),
        "{seen:?}"
    );
    assert_eq!(
        info.delivered.consumer_sequence, 3,
        "each message delivered once"
    );
    assert_eq!(probe.all("DLQ").await.len(), 1);
    let dead = &dead[0];
    assert_eq!(dead.subject.as_str(), "dlq.dsp-set_record");
    assert_eq!(&dead.payload[..], br#"{"id":"1"}"#);
    assert_eq!(
        header(dead, "eventbus-dlq-reason"),
        Some("unknown_event_type")
    );
    assert!(
        header(dead, "eventbus-dlq-error").is_some_and(|e| e.contains("other")),
        "the error names the unknown type: {:?}",
        header(dead, "eventbus-dlq-error")
    );
    assert_eq!(
        header(dead, "eventbus-original-subject"),
        Some("dsp_set.1.other")
    );
    assert_eq!(
        header(dead, "eventbus-original-sequence"),
        Some(other.to_string().as_str())
    );
    assert_eq!(header(dead, "eventbus-deliveries"), Some("1"));
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 7. a panic is caught and counted as an error; the worker lives on
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "dsp_panic", name = "logged")]
struct PanicLogged {
    #[event(aggregate_id)]
    id: String,
}

/// `(event, attempt, succeeded)` per call.
static PANIC_CALLS: Mutex<Vec<(String, u64, bool)>> = Mutex::new(Vec::new());

// One slot: if a panic lost it, nothing after the panic would run.
#[event_handler(concurrency = 1, max_deliver = 5, backoff = ["100ms"])]
async fn panic_once(event: PanicLogged, ctx: EventContext) -> Result<(), HandlerError> {
    let panics = event.id == "p1" && ctx.attempt() == 1;
    PANIC_CALLS
        .lock()
        .unwrap()
        .push((event.id.clone(), ctx.attempt(), !panics));
    if panics {
        panic!("handler bug on {}", event.id);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_caught_and_retried_and_the_worker_lives_on() {
    let server = NatsServer::start().await;
    let probe = Probe::new(&server).await;
    let bus = start_bus(&server, "dsp", "panic_once").await;

    bus.publish(&PanicLogged { id: "p1".into() }).await.unwrap();
    wait_until(TIMEOUT, "p1 succeeds on its retry", || async {
        PANIC_CALLS.lock().unwrap().len() >= 2
    })
    .await;
    bus.publish(&PanicLogged { id: "p2".into() }).await.unwrap();
    bus.publish(&PanicLogged { id: "p3".into() }).await.unwrap();
    wait_until(TIMEOUT, "p2 and p3 are handled", || async {
        PANIC_CALLS.lock().unwrap().len() >= 4
    })
    .await;
    let info = probe.settled(TIMEOUT, "DSP_PANIC", "dsp-panic_once").await;

    let calls = PANIC_CALLS.lock().unwrap().clone();
    let want = [
        ("p1", 1, false),
        ("p1", 2, true),
        ("p2", 1, true),
        ("p3", 1, true),
    ];
    assert_eq!(
        calls,
        want.map(|(id, attempt, ok)| (id.to_owned(), attempt, ok))
    );
    assert_eq!(
        info.delivered.consumer_sequence, 4,
        "p1 twice, the others once"
    );
    assert!(probe.all("DLQ").await.is_empty());
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 8. a handler that runs longer than ack_wait keeps its message
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "dsp_slow", name = "exported")]
struct SlowExported {
    #[event(aggregate_id)]
    id: String,
}

static SLOW_STARTED: Mutex<Vec<(String, u64)>> = Mutex::new(Vec::new());
static SLOW_FINISHED: AtomicUsize = AtomicUsize::new(0);

#[event_handler(ack_wait = "1s", max_deliver = 5, backoff = ["100ms"])]
async fn slow_export(event: SlowExported, ctx: EventContext) -> Result<(), HandlerError> {
    SLOW_STARTED.lock().unwrap().push((event.id, ctx.attempt()));
    // The work itself: three times the ack wait.
    tokio::time::sleep(Duration::from_secs(3)).await;
    SLOW_FINISHED.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_running_longer_than_ack_wait_keeps_its_event() {
    let server = NatsServer::start().await;
    let probe = Probe::new(&server).await;
    let bus = start_bus(&server, "dsp", "slow_export").await;

    bus.publish(&SlowExported { id: "s1".into() })
        .await
        .unwrap();
    wait_until(TIMEOUT, "the slow handler finishes", || async {
        SLOW_FINISHED.load(Ordering::SeqCst) >= 1
    })
    .await;
    let info = probe.settled(TIMEOUT, "DSP_SLOW", "dsp-slow_export").await;

    assert_eq!(
        *SLOW_STARTED.lock().unwrap(),
        [("s1".to_owned(), 1)],
        "never redelivered while it ran"
    );
    assert_eq!(info.delivered.consumer_sequence, 1, "delivered once");
    assert_eq!(info.ack_floor.stream_sequence, 1, "acked");
    assert_eq!(info.num_redelivered, 0);
    assert!(probe.all("DLQ").await.is_empty());
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 9. bounded concurrency
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "dsp_conc", name = "resized")]
struct ConcResized {
    #[event(aggregate_id)]
    id: String,
}

static CONC_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static CONC_MAX: AtomicUsize = AtomicUsize::new(0);
static CONC_DONE: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[event_handler(concurrency = 3)]
async fn conc_resize(event: ConcResized) -> Result<(), HandlerError> {
    max_into(&CONC_MAX, CONC_IN_FLIGHT.fetch_add(1, Ordering::SeqCst) + 1);
    tokio::time::sleep(Duration::from_millis(150)).await;
    CONC_IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    CONC_DONE.lock().unwrap().push(event.id);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_concurrency_events_run_at_once() {
    let server = NatsServer::start().await;
    let probe = Probe::new(&server).await;
    // Stored before the bus starts, so all twenty are there to be pulled at once.
    let publisher = eventbus_tests::publisher(&server.url(), "dsp").await;
    for i in 0..20 {
        publisher
            .publish(&ConcResized {
                id: format!("c{i:02}"),
            })
            .await
            .unwrap();
    }
    let bus = start_bus(&server, "dsp", "conc_resize").await;

    wait_until(TIMEOUT, "twenty events are handled", || async {
        CONC_DONE.lock().unwrap().len() >= 20
    })
    .await;
    let info = probe.settled(TIMEOUT, "DSP_CONC", "dsp-conc_resize").await;

    assert_eq!(
        CONC_MAX.load(Ordering::SeqCst),
        3,
        "three at once, never more"
    );
    let mut done = CONC_DONE.lock().unwrap().clone();
    done.sort();
    assert_eq!(
        done,
        (0..20).map(|i| format!("c{i:02}")).collect::<Vec<_>>(),
        "each handled once"
    );
    assert_eq!(info.delivered.consumer_sequence, 20);
    bus.shutdown().await.unwrap();
    publisher.shutdown().await.unwrap();
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "dsp_backlog", name = "queued")]
struct BacklogQueued {
    #[event(aggregate_id)]
    id: String,
}

static BACKLOG_CALLS: Mutex<Vec<(String, u64)>> = Mutex::new(Vec::new());

#[event_handler(concurrency = 1, ack_wait = "1s", max_deliver = 5, backoff = ["100ms"])]
async fn backlog_work(event: BacklogQueued, ctx: EventContext) -> Result<(), HandlerError> {
    BACKLOG_CALLS
        .lock()
        .unwrap()
        .push((event.id, ctx.attempt()));
    tokio::time::sleep(Duration::from_millis(250)).await;
    Ok(())
}

/// Events that wait for a free slot longer than the ack wait are not redelivered meanwhile,
/// so none is handled twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_waiting_for_a_free_slot_are_not_redelivered() {
    let server = NatsServer::start().await;
    let probe = Probe::new(&server).await;
    let publisher = eventbus_tests::publisher(&server.url(), "dsp").await;
    for i in 0..8 {
        publisher
            .publish(&BacklogQueued {
                id: format!("q{i}"),
            })
            .await
            .unwrap();
    }
    // One at a time, 250ms each: the last waits about 1.75s, longer than the 1s ack wait.
    let bus = start_bus(&server, "dsp", "backlog_work").await;

    let info = wait_for(TIMEOUT, "all eight are acked", || async {
        let info = probe.consumer("DSP_BACKLOG", "dsp-backlog_work").await;
        (info.ack_floor.stream_sequence == 8 && info.num_ack_pending == 0 && info.num_pending == 0)
            .then_some(info)
    })
    .await;

    let calls = BACKLOG_CALLS.lock().unwrap().clone();
    let want: Vec<(String, u64)> = (0..8).map(|i| (format!("q{i}"), 1)).collect();
    assert_eq!(
        calls, want,
        "each event handled once, on its first delivery, in order"
    );
    assert_eq!(
        info.delivered.consumer_sequence, 8,
        "no event was redelivered"
    );
    bus.shutdown().await.unwrap();
    publisher.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 10. ordered: one aggregate's events one at a time, in stream order; aggregates in parallel
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "dsp_ord", name = "stepped")]
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
    order: BTreeMap<String, Vec<u32>>,
}

static ORD: Mutex<Option<OrdState>> = Mutex::new(None);

fn ord<T>(f: impl FnOnce(&mut OrdState) -> T) -> T {
    f(ORD.lock().unwrap().get_or_insert_with(OrdState::default))
}

#[event_handler(ordered, concurrency = 8)]
async fn ord_step(event: OrdStepped) -> Result<(), HandlerError> {
    ord(|s| {
        let here = s.in_flight.entry(event.id.clone()).or_default();
        *here += 1;
        let here = *here;
        let max = s.max_per_aggregate.entry(event.id.clone()).or_default();
        *max = (*max).max(here);
        s.total += 1;
        s.max_total = s.max_total.max(s.total);
    });
    tokio::time::sleep(Duration::from_millis(60)).await;
    ord(|s| {
        *s.in_flight.get_mut(&event.id).unwrap() -= 1;
        s.total -= 1;
        s.order.entry(event.id.clone()).or_default().push(event.n);
    });
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_handles_one_aggregate_at_a_time_in_order_and_aggregates_in_parallel() {
    let server = NatsServer::start().await;
    let probe = Probe::new(&server).await;
    let publisher = eventbus_tests::publisher(&server.url(), "dsp").await;
    let aggregates = ["a", "b", "c", "d"];
    for n in 0..5 {
        for id in aggregates {
            publisher
                .publish(&OrdStepped { id: id.into(), n })
                .await
                .unwrap();
        }
    }
    let bus = start_bus(&server, "dsp", "ord_step").await;

    wait_until(TIMEOUT, "twenty events are handled", || async {
        ord(|s| s.order.values().map(Vec::len).sum::<usize>() >= 20)
    })
    .await;
    let info = probe.settled(TIMEOUT, "DSP_ORD", "dsp-ord_step").await;

    ord(|s| {
        for id in aggregates {
            assert_eq!(
                s.order[id],
                [0, 1, 2, 3, 4],
                "aggregate {id} in stream order, each once"
            );
            assert_eq!(
                s.max_per_aggregate[id], 1,
                "aggregate {id} had two events in flight"
            );
        }
        assert!(
            s.max_total > 1,
            "aggregates ran one after another, not in parallel"
        );
    });
    assert_eq!(info.delivered.consumer_sequence, 20, "no redelivery");
    bus.shutdown().await.unwrap();
    publisher.shutdown().await.unwrap();
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "dsp_ordwait", name = "stepped")]
struct OrdWaitStepped {
    #[event(aggregate_id)]
    id: String,
    n: u32,
}

static ORDWAIT: Mutex<Vec<(u32, u64)>> = Mutex::new(Vec::new());

#[event_handler(ordered, ack_wait = "1s")]
async fn ordwait_step(event: OrdWaitStepped, ctx: EventContext) -> Result<(), HandlerError> {
    tokio::time::sleep(Duration::from_millis(700)).await;
    ORDWAIT.lock().unwrap().push((event.n, ctx.attempt()));
    Ok(())
}

/// Events pulled ahead of their handler (they wait in their aggregate's lane behind the one in
/// flight, the last for about 2.1 s against an ack wait of 1 s) are kept with in-progress acks:
/// none is delivered again while it waits, and each is handled once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_buffered_ahead_of_its_handler_is_not_redelivered_while_it_waits() {
    let server = NatsServer::start().await;
    let probe = Probe::new(&server).await;
    let publisher = eventbus_tests::publisher(&server.url(), "dsp").await;
    for n in 1..=4 {
        publisher
            .publish(&OrdWaitStepped { id: "a".into(), n })
            .await
            .unwrap();
    }
    let bus = start_bus(&server, "dsp", "ordwait_step").await;
    wait_until(TIMEOUT, "four events are handled", || async {
        ORDWAIT.lock().unwrap().len() >= 4
    })
    .await;
    let info = probe
        .settled(TIMEOUT, "DSP_ORDWAIT", "dsp-ordwait_step")
        .await;
    assert_eq!(
        *ORDWAIT.lock().unwrap(),
        [(1, 1), (2, 1), (3, 1), (4, 1)],
        "each once, in order, at its first delivery"
    );
    assert_eq!(
        (info.delivered.consumer_sequence, info.num_redelivered),
        (4, 0),
        "no event was delivered again while it waited: {info:?}"
    );
    bus.shutdown().await.unwrap();
    publisher.shutdown().await.unwrap();
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "dsp_ahead", name = "stepped")]
struct AheadStepped {
    #[event(aggregate_id)]
    id: String,
    n: u32,
}

/// The event that takes 3 s, after enough quick ones that the worker pulls ahead.
const AHEAD_SLOW: u32 = 300;
static AHEAD: Mutex<Vec<(u32, u64)>> = Mutex::new(Vec::new());
static AHEAD_SLOW_STARTED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

#[event_handler(concurrency = 1, ack_wait = "1s")]
async fn ahead_step(event: AheadStepped, ctx: EventContext) -> Result<(), HandlerError> {
    if event.n == AHEAD_SLOW {
        AHEAD_SLOW_STARTED.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    AHEAD.lock().unwrap().push((event.n, ctx.attempt()));
    Ok(())
}

/// A worker pulls ahead of its one slot as far as its handler's measured pace allows; when an
/// event then takes 3 s (against an ack wait of 1 s), the three events pulled behind it wait in
/// the worker's queue, kept with in-progress acks. Its pull asks for more than the stream
/// holds, so a request stays open all along, into which the server would deliver any of them
/// again once its ack wait passed: none is, and each is handled once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_pulled_ahead_of_a_busy_slot_are_not_redelivered_while_they_wait() {
    const N: u32 = AHEAD_SLOW + 4;
    let server = NatsServer::start().await;
    let probe = Probe::new(&server).await;
    let publisher = eventbus_tests::publisher(&server.url(), "dsp").await;
    let events: Vec<AheadStepped> = (0..N)
        .map(|n| AheadStepped {
            id: format!("a{}", n % 7),
            n,
        })
        .collect();
    for r in publisher.publish_all(&events).await {
        r.unwrap();
    }
    let bus = start_bus(&server, "dsp", "ahead_step").await;
    wait_until(TIMEOUT, "the slow event is in hand", || async {
        AHEAD_SLOW_STARTED.load(Ordering::SeqCst)
    })
    .await;
    // Events pulled behind the slow one wait unacknowledged in the worker's queue.
    let waiting = probe
        .consumer("DSP_AHEAD", "dsp-ahead_step")
        .await
        .num_ack_pending;
    wait_until(TIMEOUT, "every event is handled", || async {
        AHEAD.lock().unwrap().len() >= N as usize
    })
    .await;
    let info = probe.settled(TIMEOUT, "DSP_AHEAD", "dsp-ahead_step").await;
    assert_eq!(
        waiting, 4,
        "the slow event in hand and the three behind it pulled ahead, unacknowledged"
    );
    let mut handled = AHEAD.lock().unwrap().clone();
    handled.sort();
    assert_eq!(
        handled,
        (0..N).map(|n| (n, 1)).collect::<Vec<_>>(),
        "each event once, at its first delivery"
    );
    assert_eq!(
        (info.delivered.consumer_sequence, info.num_redelivered),
        (u64::from(N), 0),
        "no event was delivered again while it waited: {info:?}"
    );
    bus.shutdown().await.unwrap();
    publisher.shutdown().await.unwrap();
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "dsp_ordfail", name = "stepped")]
struct OrdFailStepped {
    #[event(aggregate_id)]
    id: String,
    n: u32,
}

/// One call of `ordfail_step`.
#[derive(Debug, Clone)]
struct OrdFailCall {
    aggregate: String,
    n: u32,
    attempt: u64,
    ok: bool,
    at: Instant,
}

static ORDFAIL_CALLS: Mutex<Vec<OrdFailCall>> = Mutex::new(Vec::new());

/// `a`'s first event fails twice, then succeeds; `c`'s first event always fails.
#[event_handler(ordered, max_deliver = 3, backoff = ["150ms"])]
async fn ordfail_step(event: OrdFailStepped, ctx: EventContext) -> Result<(), HandlerError> {
    let fails = event.n == 0 && (event.id == "c" || (event.id == "a" && ctx.attempt() < 3));
    ORDFAIL_CALLS.lock().unwrap().push(OrdFailCall {
        aggregate: event.id.clone(),
        n: event.n,
        attempt: ctx.attempt(),
        ok: !fails,
        at: Instant::now(),
    });
    if fails {
        return Err(HandlerError::transient(format!(
            "ledger {} locked",
            event.id
        )));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_retries_a_failed_event_before_its_aggregates_later_events() {
    let server = NatsServer::start().await;
    let probe = Probe::new(&server).await;
    let publisher = eventbus_tests::publisher(&server.url(), "dsp").await;
    let events = [
        ("a", 0),
        ("a", 1),
        ("b", 0),
        ("c", 0),
        ("a", 2),
        ("b", 1),
        ("c", 1),
    ];
    let mut c0_sequence = 0;
    for (id, n) in events {
        let stored = publisher
            .publish(&OrdFailStepped { id: id.into(), n })
            .await
            .unwrap();
        if (id, n) == ("c", 0) {
            c0_sequence = stored.sequence;
        }
    }
    let bus = start_bus(&server, "dsp", "ordfail_step").await;

    // a: 3 + 1 + 1, b: 1 + 1, c: 3 + 1.
    wait_until(TIMEOUT, "eleven calls", || async {
        ORDFAIL_CALLS.lock().unwrap().len() >= 11
    })
    .await;
    let dead = probe.wait_all(TIMEOUT, "DLQ", 1).await;
    let info = probe
        .settled(TIMEOUT, "DSP_ORDFAIL", "dsp-ordfail_step")
        .await;

    let calls = ORDFAIL_CALLS.lock().unwrap().clone();
    let of = |id: &str| -> Vec<(u32, u64, bool)> {
        calls
            .iter()
            .filter(|c| c.aggregate == id)
            .map(|c| (c.n, c.attempt, c.ok))
            .collect()
    };
    assert_eq!(
        of("a"),
        [
            (0, 1, false),
            (0, 2, false),
            (0, 3, true),
            (1, 1, true),
            (2, 1, true)
        ],
        "a's later events wait until its first one succeeded"
    );
    assert_eq!(of("b"), [(0, 1, true), (1, 1, true)]);
    assert_eq!(
        of("c"),
        [(0, 1, false), (0, 2, false), (0, 3, false), (1, 1, true)],
        "c's first event is given up after max_deliver attempts, then c goes on"
    );
    assert_eq!(calls.len(), 11);
    let a0_done = calls
        .iter()
        .find(|c| c.aggregate == "a" && c.ok)
        .unwrap()
        .at;
    let b_done = calls
        .iter()
        .filter(|c| c.aggregate == "b")
        .map(|c| c.at)
        .max()
        .unwrap();
    assert!(b_done < a0_done, "b's events waited behind a's retries");

    assert_eq!(dead.len(), 1);
    assert_eq!(header(&dead[0], "eventbus-dlq-reason"), Some("max_deliver"));
    assert_eq!(header(&dead[0], "eventbus-deliveries"), Some("3"));
    assert_eq!(
        header(&dead[0], "eventbus-dlq-error"),
        Some("ledger c locked")
    );
    assert_eq!(
        header(&dead[0], "eventbus-original-sequence"),
        Some(c0_sequence.to_string().as_str())
    );
    assert_eq!(info.ack_floor.stream_sequence, 7, "all settled");
    assert_eq!(
        info.delivered.consumer_sequence, 7,
        "retried in place, never redelivered"
    );
    bus.shutdown().await.unwrap();
    publisher.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 11. a foreign message (subject and JSON body only) is decoded and handled
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "dsp_foreign", name = "created")]
struct ForeignCreated {
    #[event(aggregate_id)]
    id: String,
    n: u32,
}

/// `(id, n, metadata aggregate id, aggregate type, event type, event id, source)`.
type ForeignSeen = (String, u32, String, String, String, String, Option<String>);
static FOREIGN_SEEN: Mutex<Vec<ForeignSeen>> = Mutex::new(Vec::new());

#[event_handler]
async fn foreign_record(event: ForeignCreated, ctx: EventContext) -> Result<(), HandlerError> {
    let m = ctx.metadata();
    FOREIGN_SEEN.lock().unwrap().push((
        event.id,
        event.n,
        m.aggregate_id.clone(),
        m.aggregate_type.clone(),
        m.event_type.clone(),
        ctx.event_id().to_owned(),
        m.source.clone(),
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_message_is_decoded_from_subject_and_body() {
    let server = NatsServer::start().await;
    let probe = Probe::new(&server).await;
    let bus = start_bus(&server, "dsp", "foreign_record").await;

    let seq = probe
        .publish_raw(
            "dsp_foreign.f-42.created",
            HeaderMap::new(),
            br#"{"id":"f-42","n":7}"#,
        )
        .await;
    let mut with_id = HeaderMap::new();
    with_id.insert("Nats-Msg-Id", "ext-9");
    probe
        .publish_raw(
            "dsp_foreign.f-43.created",
            with_id,
            br#"{"id":"f-43","n":8}"#,
        )
        .await;
    wait_until(TIMEOUT, "both foreign messages are handled", || async {
        FOREIGN_SEEN.lock().unwrap().len() >= 2
    })
    .await;
    let info = probe
        .settled(TIMEOUT, "DSP_FOREIGN", "dsp-foreign_record")
        .await;

    // Handled concurrently, so in either order.
    let mut seen = FOREIGN_SEEN.lock().unwrap().clone();
    seen.sort();
    let s = |v: &str| v.to_owned();
    assert_eq!(
        seen,
        [
            (
                s("f-42"),
                7,
                s("f-42"),
                s("dsp_foreign"),
                s("created"),
                format!("DSP_FOREIGN:{seq}"),
                None
            ),
            (
                s("f-43"),
                8,
                s("f-43"),
                s("dsp_foreign"),
                s("created"),
                s("ext-9"),
                None
            ),
        ]
    );
    assert_eq!(info.delivered.consumer_sequence, 2);
    assert!(probe.all("DLQ").await.is_empty());
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 12. ctx.publish carries the correlation id forward and sets the causation id
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "dsp_cause", name = "requested")]
struct CauseRequested {
    #[event(aggregate_id)]
    id: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "dsp_effect", name = "done")]
struct EffectDone {
    #[event(aggregate_id)]
    id: String,
}

/// `(handled event id, its correlation id, what ctx.publish stored)`.
static CAUSE_PUBLISHED: Mutex<Vec<(String, String, Published)>> = Mutex::new(Vec::new());

#[event_handler]
async fn cause_publishes(event: CauseRequested, ctx: EventContext) -> Result<(), HandlerError> {
    let stored = ctx
        .publish(&EffectDone {
            id: format!("of-{}", event.id),
        })
        .await?;
    CAUSE_PUBLISHED.lock().unwrap().push((
        ctx.event_id().to_owned(),
        ctx.correlation_id().to_owned(),
        stored,
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctx_publish_carries_correlation_and_sets_causation() {
    let server = NatsServer::start().await;
    let probe = Probe::new(&server).await;
    let bus = start_bus(&server, "dsp-cause", "cause_publishes").await;

    let correlated = bus
        .publish_with(
            &CauseRequested { id: "k1".into() },
            PublishOptions {
                correlation_id: Some("corr-7".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let plain = bus
        .publish(&CauseRequested { id: "k2".into() })
        .await
        .unwrap();
    wait_until(TIMEOUT, "both causes are handled", || async {
        CAUSE_PUBLISHED.lock().unwrap().len() >= 2
    })
    .await;
    probe
        .settled(TIMEOUT, "DSP_CAUSE", "dsp-cause-cause_publishes")
        .await;

    let mut records = CAUSE_PUBLISHED.lock().unwrap().clone();
    records.sort_by_key(|r| r.2.sequence);
    assert_eq!(records.len(), 2);
    for (cause, want_correlation) in [(&correlated, "corr-7"), (&plain, plain.id.as_str())] {
        let (handled_id, handled_correlation, stored) = records
            .iter()
            .find(|r| r.0 == cause.id)
            .unwrap_or_else(|| panic!("cause {} was handled: {records:?}", cause.id));
        assert_eq!(handled_correlation, want_correlation);
        assert_eq!(stored.stream, "DSP_EFFECT");
        let effect = probe.stored("DSP_EFFECT", stored.sequence).await;
        assert_eq!(
            header(&effect, "ce-correlationid"),
            Some(want_correlation),
            "correlation carried forward"
        );
        assert_eq!(
            header(&effect, "ce-causationid"),
            Some(handled_id.as_str()),
            "caused by the handled event"
        );
        assert_eq!(header(&effect, "ce-id"), Some(stored.id.as_str()));
        assert_ne!(stored.id, cause.id, "the effect has an id of its own");
        assert_eq!(header(&effect, "ce-source"), Some("dsp-cause"));
        assert_eq!(header(&effect, "ce-type"), Some("dsp_effect.done.v1"));
    }
    bus.shutdown().await.unwrap();
}
