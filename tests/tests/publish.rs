//! Publishing against a real `nats-server` (README, "Publishing, replay and event-sourced aggregates"): an event counts as stored only once
//! the server acknowledged it; an explicit id is published once; what cannot be stored (an
//! invalid aggregate id, a subject no stream covers, an oversize body) is a typed error, never a
//! silent loss; a publish retried across a server restart or a lost acknowledgement leaves one
//! copy; `publish_all` reports every outcome in order; `ctx.publish` carries the chain forward.
//!
//! Every test starts its own server; each has an aggregate of its own (`pub_*`). Buses run no
//! handler (`without_handlers`) unless the test is about one, which they then name.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishErrorKind, message::StreamMessage};
use async_nats::HeaderMap;
use eventbus::prelude::*;
use eventbus::{Config, ErrorKind, PublishOptions, StreamOptions};
use eventbus_tests::{wait_for, wait_until, Caller, NatsServer, Probe, Retries};

/// How long any one condition may take to come true.
const TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A bus of service `pub` on `server` that runs no handler.
async fn publisher(server: &NatsServer) -> Bus {
    eventbus_tests::publisher(&server.url(), "pub").await
}

/// A bus that waits 1 s for each acknowledgement and makes up to 20 attempts, reconnecting
/// every 100 ms: for the tests that take the server away while a publish waits.
async fn impatient_publisher(server: &NatsServer) -> Bus {
    publisher_waiting(server, Duration::from_secs(1), 20).await
}

/// A bus that waits `timeout` for each acknowledgement and makes up to `attempts` attempts,
/// reconnecting every 100 ms.
async fn publisher_waiting(server: &NatsServer, timeout: Duration, attempts: u32) -> Bus {
    eventbus::builder()
        .config(Config {
            publish_timeout: timeout,
            publish_attempts: attempts,
            ..Config::default()
        })
        .no_env()
        .url(server.url())
        .service("pub")
        .reconnect_wait(Duration::from_millis(100))
        .max_reconnects(None)
        .without_handlers()
        .start()
        .await
        .unwrap_or_else(|e| panic!("the bus does not start: {e}"))
}

fn header<'a>(m: &'a StreamMessage, name: &str) -> Option<&'a str> {
    m.headers.get(name).map(|v| v.as_str())
}

// ---------------------------------------------------------------------------------------------
// 1. publish returns once stored, with the stream, the sequence and the id
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "pub_ack", name = "placed")]
struct AckPlaced {
    #[event(aggregate_id)]
    id: String,
    total_cents: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_returns_the_stored_position_once_the_server_has_it() {
    let server = NatsServer::start().await;
    let bus = publisher(&server).await;
    let probe = Probe::new(&server).await;

    let event = AckPlaced {
        id: "o-1".into(),
        total_cents: 2500,
    };
    let first = bus.publish(&event).await.unwrap();
    let second = bus
        .publish(&AckPlaced {
            id: "o-2".into(),
            total_cents: 990,
        })
        .await
        .unwrap();

    assert_eq!(first.stream, "PUB_ACK");
    assert_eq!((first.sequence, second.sequence), (1, 2));
    assert!(!first.duplicate && !second.duplicate);
    assert_ne!(first.id, second.id, "every event gets an id of its own");
    let uuid = first.id.as_bytes();
    assert!(
        first.id.len() == 36 && uuid[14] == b'7',
        "the id is a UUIDv7: {}",
        first.id
    );

    // Stored when publish returned: no waiting here.
    let m = probe.stored("PUB_ACK", first.sequence).await;
    assert_eq!(m.subject.as_str(), "pub_ack.o-1.placed");
    assert_eq!(header(&m, "ce-id"), Some(first.id.as_str()));
    assert_eq!(header(&m, "Nats-Msg-Id"), Some(first.id.as_str()));
    assert_eq!(header(&m, "ce-specversion"), Some("1.0"));
    assert_eq!(header(&m, "ce-type"), Some("pub_ack.placed.v1"));
    assert_eq!(header(&m, "ce-source"), Some("pub"));
    assert_eq!(header(&m, "ce-subject"), Some("o-1"));
    assert_eq!(header(&m, "content-type"), Some("application/json"));
    assert_eq!(
        header(&m, "ce-correlationid"),
        Some(first.id.as_str()),
        "an event that starts a chain is its own correlation"
    );
    assert!(header(&m, "ce-time").is_some());
    let body: AckPlaced = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(body, event);

    // And the bus reads it back as it was published.
    let read = bus.read::<AckPlaced>("o-1").collect().await.unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].event, event);
    assert_eq!(read[0].sequence, first.sequence);
    assert_eq!(read[0].version, 1);
    assert_eq!(read[0].metadata.id, first.id);
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 2. the same explicit id twice: one copy
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "pub_dedup", name = "placed")]
struct DedupPlaced {
    #[event(aggregate_id)]
    id: String,
    total_cents: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_one_id_twice_stores_one_copy() {
    let server = NatsServer::start().await;
    let bus = publisher(&server).await;
    let probe = Probe::new(&server).await;
    let with_id = || PublishOptions {
        id: Some("order-42-placed".into()),
        ..PublishOptions::default()
    };

    let event = DedupPlaced {
        id: "42".into(),
        total_cents: 100,
    };
    let first = bus.publish_with(&event, with_id()).await.unwrap();
    // A retry by the caller, say after a crash, with a body that differs: still the same event.
    let again = DedupPlaced {
        total_cents: 999,
        ..event.clone()
    };
    let second = bus.publish_with(&again, with_id()).await.unwrap();

    assert_eq!(first.id, "order-42-placed");
    assert!(!first.duplicate);
    assert!(second.duplicate, "the server recognised the id: {second:?}");
    assert_eq!(
        (second.stream.as_str(), second.sequence),
        (first.stream.as_str(), first.sequence),
        "a duplicate reports where the first copy is"
    );
    assert_eq!(second.id, first.id);
    assert_eq!(probe.count("PUB_DEDUP").await, 1);
    let stored: DedupPlaced =
        serde_json::from_slice(&probe.stored("PUB_DEDUP", first.sequence).await.payload).unwrap();
    assert_eq!(stored, event, "the first copy is kept");

    // Another id is another event.
    let third = bus
        .publish_with(
            &event,
            PublishOptions {
                id: Some("order-42-placed-2".into()),
                ..PublishOptions::default()
            },
        )
        .await
        .unwrap();
    assert!(!third.duplicate);
    assert_eq!(third.sequence, 2);
    assert_eq!(probe.count("PUB_DEDUP").await, 2);
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 3. an invalid aggregate id: a typed error, nothing stored
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "pub_badid", name = "placed")]
struct BadIdPlaced {
    #[event(aggregate_id)]
    id: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_aggregate_id_is_refused_and_nothing_is_stored() {
    let server = NatsServer::start().await;
    let bus = publisher(&server).await;
    let probe = Probe::new(&server).await;

    // `a.b` would land on `pub_badid.a.b.placed`, which the stream `pub_badid.>` covers.
    for bad in ["", "a.b", "a b", "a*", "*", ">", "tab\there", "line\nbreak"] {
        let err = bus
            .publish(&BadIdPlaced { id: bad.into() })
            .await
            .expect_err(bad);
        assert_eq!(err.kind(), ErrorKind::InvalidAggregateId, "{bad:?}: {err}");
        assert!(
            err.to_string().contains(&format!("{bad:?}")),
            "the error names the id {bad:?}: {err}"
        );
        let err = bus
            .publish_with(
                &BadIdPlaced { id: bad.into() },
                PublishOptions {
                    id: Some(format!("explicit-{}", bad.len())),
                    ..PublishOptions::default()
                },
            )
            .await
            .expect_err(bad);
        assert_eq!(err.kind(), ErrorKind::InvalidAggregateId, "{bad:?}: {err}");
    }
    assert_eq!(probe.count("PUB_BADID").await, 0, "nothing was stored");
    bus.shutdown().await.unwrap();
}

/// Ids the client could never send, refused before any send: Unicode white space (the client
/// splits protocol lines on it, so each delivery would break the connection) and ids over 1 KiB
/// (the publish line would pass the server's 4 KiB control-line limit, and the server would
/// close the connection on every attempt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_with_unicode_white_space_or_over_the_length_limit_are_refused_at_once() {
    let server = NatsServer::start().await;
    let bus = publisher(&server).await;
    let probe = Probe::new(&server).await;
    let too_long = "x".repeat(5000);
    for bad in [
        "a\u{a0}b",
        "a\u{3000}b",
        "a\u{2028}b",
        "a\u{85}b",
        too_long.as_str(),
    ] {
        let started = Instant::now();
        let err = bus
            .publish(&BadIdPlaced { id: bad.into() })
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), ErrorKind::InvalidAggregateId, "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "refused at once, not after timeouts: {:?}",
            started.elapsed()
        );
        let results = bus.publish_all(&[BadIdPlaced { id: bad.into() }]).await;
        let err = results[0].as_ref().expect_err("refused");
        assert_eq!(err.kind(), ErrorKind::InvalidAggregateId, "{err}");
    }
    assert!(bus
        .publish(&BadIdPlaced {
            id: too_long.clone()
        })
        .await
        .unwrap_err()
        .to_string()
        .contains("longer than 1024 bytes"));
    // The longest id allowed is stored, and the connection is still there.
    let longest = bus
        .publish(&BadIdPlaced {
            id: "y".repeat(1024),
        })
        .await
        .unwrap();
    assert_eq!(longest.sequence, 1);
    assert_eq!(bus.connection_state(), eventbus::ConnectionState::Connected);
    assert_eq!(
        probe.count("PUB_BADID").await,
        1,
        "only the longest allowed id"
    );
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 4. a subject no stream covers: a typed error at once, not a silent loss
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "pub_gone", name = "created")]
struct GoneCreated {
    #[event(aggregate_id)]
    id: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_no_stream_covers_is_an_error() {
    let server = NatsServer::start().await;
    let bus = publisher(&server).await;
    let probe = Probe::new(&server).await;
    // Someone deletes the aggregate's stream while the bus runs.
    probe.js.delete_stream("PUB_GONE").await.unwrap();

    let started = Instant::now();
    let err = bus
        .publish(&GoneCreated { id: "g-1".into() })
        .await
        .expect_err("no stream stores pub_gone.g-1.created");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err:?}");
    assert!(
        err.to_string().contains("pub_gone.g-1.created"),
        "the error names the subject: {err}"
    );
    let cause = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<jetstream::context::PublishError>())
        .unwrap_or_else(|| panic!("the cause is async-nats's publish error: {err:?}"));
    assert_eq!(cause.kind(), PublishErrorKind::StreamNotFound);
    assert!(
        started.elapsed() < bus.config().publish_timeout,
        "refused at once (no responders), not after waiting for an acknowledgement: {:?}",
        started.elapsed()
    );

    let events = [
        GoneCreated { id: "g-2".into() },
        GoneCreated { id: "g-3".into() },
    ];
    let results = bus.publish_all(&events).await;
    assert_eq!(results.len(), 2);
    for r in results {
        let err = r.expect_err("no stream");
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err:?}");
    }
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 5. an oversize event: a typed error, and the connection lives on
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "pub_big", name = "noted")]
struct BigNoted {
    #[event(aggregate_id)]
    id: String,
    note: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "pub_capped", name = "noted")]
struct CappedNoted {
    #[event(aggregate_id)]
    id: String,
    note: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_event_is_an_error_and_the_connection_lives_on() {
    let server = NatsServer::builder()
        .config("max_payload: 4096")
        .start()
        .await;
    let bus = eventbus::builder()
        .no_env()
        .url(server.url())
        .service("pub")
        .stream(
            "pub_capped",
            StreamOptions {
                max_message_size: Some(1024),
                ..StreamOptions::default()
            },
        )
        .without_handlers()
        .start()
        .await
        .unwrap();
    let probe = Probe::new(&server).await;
    assert_eq!(
        bus.nats_client()
            .expect("a NATS bus")
            .server_info()
            .max_payload,
        4096
    );

    let far_above = BigNoted {
        id: "b-1".into(),
        note: "x".repeat(8192),
    };
    let err = bus.publish(&far_above).await.expect_err("8 KiB body");
    assert_eq!(err.kind(), ErrorKind::TooLarge, "{err:?}");
    assert!(
        err.to_string().contains("max payload") && err.to_string().contains("pub_big.b-1.noted"),
        "{err}"
    );

    // A body under max_payload that the headers push over it: the server would close the
    // connection on such a message, so it must not be sent.
    let just_under = BigNoted {
        id: "b-2".into(),
        note: "x".repeat(4000),
    };
    let encoded = eventbus::__private::encode(
        &just_under,
        &eventbus::__private::EncodeOptions {
            source: "pub",
            ..Default::default()
        },
    )
    .unwrap();
    assert!(encoded.payload.len() < 4096, "the body alone fits");
    let err = bus
        .publish(&just_under)
        .await
        .expect_err("body and headers > 4 KiB");
    assert_eq!(err.kind(), ErrorKind::TooLarge, "{err:?}");

    let results = bus
        .publish_all(&[far_above.clone(), just_under.clone()])
        .await;
    assert!(results
        .iter()
        .all(|r| r.as_ref().is_err_and(|e| e.kind() == ErrorKind::TooLarge)));

    // The connection is still there, and nothing of the refused events was stored.
    let small = bus
        .publish(&BigNoted {
            id: "b-3".into(),
            note: "small".into(),
        })
        .await
        .unwrap();
    assert_eq!(small.sequence, 1);
    assert_eq!(probe.count("PUB_BIG").await, 1);

    // Over the stream's own limit (1 KiB) but under max_payload: the server refuses it.
    let err = bus
        .publish(&CappedNoted {
            id: "c-1".into(),
            note: "y".repeat(2000),
        })
        .await
        .expect_err("over the stream's max message size");
    assert_eq!(err.kind(), ErrorKind::TooLarge, "{err:?}");
    assert!(
        err.to_string().contains("max message size"),
        "the error says which limit: {err}"
    );
    assert_eq!(probe.count("PUB_CAPPED").await, 0);
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 6. a publish retried across a server restart, or after a lost acknowledgement: one copy
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "pub_restart", name = "placed")]
struct RestartPlaced {
    #[event(aggregate_id)]
    id: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_retried_across_a_server_restart_is_stored_once() {
    let mut server = NatsServer::start().await;
    let bus = impatient_publisher(&server).await;

    server.stop();
    let retries = Retries::default();
    let publish = tokio::spawn(retries.attach({
        let bus = bus.clone();
        async move {
            bus.publish_with(
                &RestartPlaced { id: "r-1".into() },
                PublishOptions {
                    id: Some("restart-r-1".into()),
                    ..PublishOptions::default()
                },
            )
            .await
        }
    }));
    wait_until(
        TIMEOUT,
        "the publish was not acknowledged and is sent again",
        || async { retries.count() >= 1 },
    )
    .await;
    server.start_again().await;

    let published = tokio::time::timeout(TIMEOUT, publish)
        .await
        .expect("the publish completes once the server is back")
        .expect("the publishing task")
        .expect("the publish succeeds");
    assert_eq!(published.id, "restart-r-1");
    assert_eq!(
        (published.stream.as_str(), published.sequence),
        ("PUB_RESTART", 1)
    );

    let probe = Probe::new(&server).await;
    let stored = probe.all("PUB_RESTART").await;
    assert_eq!(
        stored.len(),
        1,
        "one copy, though it was sent {} times",
        retries.count() + 1
    );
    assert_eq!(header(&stored[0], "Nats-Msg-Id"), Some("restart-r-1"));
    assert_eq!(header(&stored[0], "ce-id"), Some("restart-r-1"));
    bus.shutdown().await.unwrap();
}

/// Sends `signal` (`STOP`, `CONT`) to a process.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
    if signal == "STOP" {
        // `kill` returns once the signal is sent; the server's threads stop a moment later,
        // and one still running could answer a publish sent meanwhile.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !all_threads_stopped(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server {pid} did not stop within 10 s of SIGSTOP"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Whether every thread of process `pid` is stopped (state `T` in `/proc`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                == Some("T")
        })
    })
}

/// Resumes a stopped server when dropped, so that a failing test does not leave it frozen.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-CONT")
            .arg(self.0.to_string())
            .status();
    }
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "pub_frozen", name = "placed")]
struct FrozenPlaced {
    #[event(aggregate_id)]
    id: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_whose_acknowledgement_came_too_late_is_stored_once() {
    let server = NatsServer::start().await;
    let bus = impatient_publisher(&server).await;
    let pid = server.pid().expect("running");

    // A frozen server: the connection stays up, the first attempt reaches the socket, and the
    // server stores it only after the publisher gave up waiting and sent it again.
    signal(pid, "STOP");
    let resume = Resume(pid);
    let retries = Retries::default();
    let publish = tokio::spawn(retries.attach({
        let bus = bus.clone();
        async move { bus.publish(&FrozenPlaced { id: "f-1".into() }).await }
    }));
    wait_until(
        TIMEOUT,
        "the publish was not acknowledged and is sent again",
        || async { retries.count() >= 1 },
    )
    .await;
    signal(pid, "CONT");
    drop(resume);

    let published = tokio::time::timeout(TIMEOUT, publish)
        .await
        .expect("the publish completes once the server runs again")
        .expect("the publishing task")
        .expect("the publish succeeds");
    assert_eq!(published.sequence, 1);
    assert!(
        published.duplicate,
        "the first attempt was stored; the retry is recognised as its duplicate: {published:?}"
    );
    let probe = Probe::new(&server).await;
    let stored = probe.all("PUB_FROZEN").await;
    assert_eq!(stored.len(), 1, "one copy");
    assert_eq!(header(&stored[0], "ce-id"), Some(published.id.as_str()));
    bus.shutdown().await.unwrap();
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "pub_frozen_all", name = "placed")]
struct FrozenAllPlaced {
    #[event(aggregate_id)]
    id: String,
    n: u64,
}

/// From a task (the window sends from the calling task) and from a thread blocking on the
/// runtime (the events are handed to a task of `publish_all`'s own, whose warnings reach the
/// caller's subscriber).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_all_retried_after_a_lost_acknowledgement_stores_each_event_once() {
    for caller in Caller::BOTH {
        publish_all_retried_after_a_lost_acknowledgement(caller).await;
    }
}

async fn publish_all_retried_after_a_lost_acknowledgement(caller: Caller) {
    let server = NatsServer::start().await;
    let bus = impatient_publisher(&server).await;
    let pid = server.pid().expect("running");
    let events: Vec<FrozenAllPlaced> = (0..50)
        .map(|n| FrozenAllPlaced {
            id: format!("f{}", n % 5),
            n,
        })
        .collect();

    signal(pid, "STOP");
    let resume = Resume(pid);
    let retries = Retries::default();
    let publish = tokio::spawn(caller.run(retries.attach({
        let bus = bus.clone();
        let events = events.clone();
        async move { bus.publish_all(&events).await }
    })));
    wait_until(
        TIMEOUT,
        "a publish was not acknowledged and is sent again",
        || async { retries.count() >= 1 },
    )
    .await;
    signal(pid, "CONT");
    drop(resume);

    let results = tokio::time::timeout(TIMEOUT, publish)
        .await
        .expect("publish_all completes once the server runs again")
        .expect("the publishing task");
    println!("{caller:?}: {} retries", retries.count());
    let published: Vec<_> = results
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.unwrap_or_else(|e| panic!("event {i}: {e}")))
        .collect();
    assert!(
        published[0].duplicate,
        "the retry of the first is its duplicate"
    );
    let probe = Probe::new(&server).await;
    let stored = probe.all("PUB_FROZEN_ALL").await;
    assert_eq!(stored.len(), 50, "each event once");
    for (i, (p, m)) in published.iter().zip(&stored).enumerate() {
        assert_eq!(p.sequence, m.sequence, "event {i}");
        assert_eq!(header(m, "ce-id"), Some(p.id.as_str()), "event {i}");
        let body: FrozenAllPlaced = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(body, events[i]);
    }
    bus.shutdown().await.unwrap();
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "pub_silent_all", name = "placed")]
struct SilentAllPlaced {
    #[event(aggregate_id)]
    id: String,
    n: usize,
}

/// Against a server that answers nothing, `publish_all` stops once its attempts are used,
/// instead of trying event after event (1024 × 2 × 300 ms, ten minutes, before), and what it
/// says of each event is true: an event it reports as not sent is never stored, an event it
/// reports as timed out is stored at most once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_all_stops_on_a_silent_server_and_says_which_events_were_not_sent() {
    let server = NatsServer::start().await;
    let bus = publisher_waiting(&server, Duration::from_millis(300), 3).await;
    let marker = |n| SilentAllPlaced {
        id: "marker".into(),
        n,
    };
    // The stream exists before the server falls silent.
    bus.publish(&marker(0)).await.unwrap();
    let events: Vec<SilentAllPlaced> = (1..=5000)
        .map(|n| SilentAllPlaced {
            id: format!("s{}", n % 7),
            n,
        })
        .collect();

    let pid = server.pid().expect("running");
    signal(pid, "STOP");
    let resume = Resume(pid);
    let results = tokio::time::timeout(TIMEOUT, bus.publish_all(&events))
        .await
        .expect("publish_all returns while the server is still silent");
    assert_eq!(results.len(), events.len());
    let (mut timed_out, mut not_sent) = (Vec::new(), Vec::new());
    for (event, r) in events.iter().zip(&results) {
        match r {
            Err(e) if e.kind() == ErrorKind::Timeout => timed_out.push(event.n),
            Err(e) if e.kind() == ErrorKind::NotSent => {
                let text = e.to_string();
                assert!(text.contains("was not sent"), "{text}");
                // Why: an event out of attempts, or nothing acknowledged for attempts × timeout.
                assert!(text.contains("acknowledged"), "says why: {text}");
                not_sent.push(event.n);
            }
            other => panic!("event {}: {other:?} from a silent server", event.n),
        }
    }
    assert!(
        !timed_out.is_empty() && timed_out.len() <= 1024,
        "at most a window of events was sent: {}",
        timed_out.len()
    );
    assert_eq!(timed_out.len() + not_sent.len(), events.len());

    // The server comes back and works through what reached it; an awaited publish on the same
    // connection is stored after all of that.
    signal(pid, "CONT");
    drop(resume);
    let last = tokio::time::timeout(TIMEOUT, bus.publish(&marker(usize::MAX)))
        .await
        .expect("the server answers again")
        .expect("the marker is stored");
    let stored = Probe::new(&server).await.all("PUB_SILENT_ALL").await;
    assert_eq!(stored.last().map(|m| m.sequence), Some(last.sequence));
    let mut copies = std::collections::HashMap::new();
    for m in &stored[1..stored.len() - 1] {
        let body: SilentAllPlaced = serde_json::from_slice(&m.payload).unwrap();
        *copies.entry(body.n).or_insert(0) += 1;
    }
    for (n, count) in &copies {
        assert!(
            timed_out.contains(n),
            "event {n} was stored, so it was sent: it must not be reported as not sent"
        );
        assert_eq!(*count, 1, "event {n} stored once");
    }
    bus.shutdown().await.unwrap();
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "pub_dropped_all", name = "placed")]
struct DroppedAllPlaced {
    #[event(aggregate_id)]
    id: String,
    n: usize,
}

/// A `publish_all` given up by its caller (a timeout around it) sends nothing more, from a task
/// and from a thread blocking on the runtime (where its events were handed to a task of its
/// own, which the dropped call stops).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_all_the_caller_gives_up_sends_nothing_more() {
    for caller in Caller::BOTH {
        let server = NatsServer::start().await;
        let bus = publisher(&server).await;
        let marker = |n| DroppedAllPlaced {
            id: "marker".into(),
            n,
        };
        bus.publish(&marker(0)).await.unwrap();
        let events: Vec<DroppedAllPlaced> = (1..=20_000)
            .map(|n| DroppedAllPlaced {
                id: format!("d{}", n % 7),
                n,
            })
            .collect();
        let pid = server.pid().expect("running");
        signal(pid, "STOP");
        let resume = Resume(pid);
        let given_up = caller
            .run({
                let bus = bus.clone();
                async move {
                    tokio::time::timeout(Duration::from_millis(300), bus.publish_all(&events)).await
                }
            })
            .await;
        assert!(given_up.is_err(), "{caller:?}: the server is silent");
        signal(pid, "CONT");
        drop(resume);

        // What had reached the connection is stored before the markers sent after it; a
        // publish_all still sending would add a window's worth between two markers.
        let mut last = 0;
        for n in 1..=10 {
            last = tokio::time::timeout(TIMEOUT, bus.publish(&marker(usize::MAX - n)))
                .await
                .expect("the server answers again")
                .expect("the marker is stored")
                .sequence;
        }
        let stored = Probe::new(&server).await.all("PUB_DROPPED_ALL").await;
        let sent = stored.len() - 11;
        assert!(
            sent <= 1024,
            "{caller:?}: at most a window was sent before the call was given up: {sent}"
        );
        assert_eq!(
            stored.last().map(|m| m.sequence),
            Some(last),
            "{caller:?}: nothing was sent after the markers"
        );
        let tail: Vec<usize> = stored[stored.len() - 10..]
            .iter()
            .map(|m| {
                serde_json::from_slice::<DroppedAllPlaced>(&m.payload)
                    .unwrap()
                    .n
            })
            .collect();
        assert!(
            tail.iter().all(|n| *n > 20_000),
            "{caller:?}: the last ten are the markers, nothing of publish_all between them"
        );
        println!("{caller:?}: {sent} events had reached the server");
        bus.shutdown().await.unwrap();
    }
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "pub_resend", name = "placed")]
struct ResendPlaced {
    #[event(aggregate_id)]
    id: String,
    n: usize,
}

/// What a silent server leaves unresolved can be resolved: every error of `publish_all` carries
/// its event's id, and `publish_all_with` sends the events again with those ids, so the server
/// keeps one copy of each, whether or not the first attempt was stored (issue 15, item 6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_publish_all_could_not_confirm_are_sent_again_with_their_ids_and_stored_once() {
    let server = NatsServer::start().await;
    let bus = publisher_waiting(&server, Duration::from_millis(300), 3).await;
    bus.publish(&ResendPlaced {
        id: "marker".into(),
        n: 0,
    })
    .await
    .unwrap();
    let events: Vec<ResendPlaced> = (1..=3000)
        .map(|n| ResendPlaced {
            id: format!("r{}", n % 5),
            n,
        })
        .collect();
    let options: Vec<PublishOptions> = events
        .iter()
        .map(|e| PublishOptions {
            id: Some(format!("resend-{}", e.n)),
            correlation_id: Some("batch-1".into()),
            ..Default::default()
        })
        .collect();

    let pid = server.pid().expect("running");
    signal(pid, "STOP");
    let resume = Resume(pid);
    let results = tokio::time::timeout(TIMEOUT, bus.publish_all_with(events.iter().zip(&options)))
        .await
        .expect("publish_all_with returns while the server is silent");
    let mut unresolved = Vec::new();
    for (i, r) in results.iter().enumerate() {
        let e = r
            .as_ref()
            .expect_err("nothing is acknowledged by a silent server");
        assert!(
            matches!(e.kind(), ErrorKind::Timeout | ErrorKind::NotSent),
            "{e}"
        );
        assert_eq!(e.event_id(), options[i].id.as_deref(), "{e:?}");
        unresolved.push(i);
    }
    signal(pid, "CONT");
    drop(resume);

    // Sent again with the ids the errors name: each event ends up stored once.
    let again: Vec<(&ResendPlaced, PublishOptions)> = unresolved
        .iter()
        .map(|&i| {
            let id = results[i]
                .as_ref()
                .unwrap_err()
                .event_id()
                .unwrap()
                .to_owned();
            (
                &events[i],
                PublishOptions {
                    id: Some(id),
                    correlation_id: Some("batch-1".into()),
                    ..Default::default()
                },
            )
        })
        .collect();
    let results = tokio::time::timeout(
        TIMEOUT,
        bus.publish_all_with(again.iter().map(|(e, o)| (*e, o))),
    )
    .await
    .expect("the server answers again");
    let duplicates = results
        .iter()
        .map(|r| r.as_ref().expect("stored"))
        .filter(|p| p.duplicate)
        .count();
    let stored = Probe::new(&server).await.all("PUB_RESEND").await;
    let mut copies = std::collections::HashMap::new();
    for m in &stored[1..] {
        let body: ResendPlaced = serde_json::from_slice(&m.payload).unwrap();
        *copies.entry(body.n).or_insert(0) += 1;
        let headers = &m.headers;
        assert_eq!(
            headers.get("Nats-Msg-Id").map(|v| v.as_str().to_owned()),
            Some(format!("resend-{}", body.n))
        );
        assert_eq!(
            headers.get("ce-correlationid").map(|v| v.as_str()),
            Some("batch-1")
        );
    }
    assert_eq!(copies.len(), events.len(), "every event is stored");
    assert!(copies.values().all(|c| *c == 1), "each once");
    println!("{duplicates} of the events sent again had been stored by the first attempt");
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 7. publish_all reports each outcome, in order
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "pub_all", name = "placed")]
struct AllPlaced {
    #[event(aggregate_id)]
    id: String,
    n: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_all_reports_each_outcome_in_order() {
    for caller in Caller::BOTH {
        publish_all_reports_each_outcome_in_order_from(caller).await;
    }
}

async fn publish_all_reports_each_outcome_in_order_from(caller: Caller) {
    let server = NatsServer::start().await;
    let bus = publisher(&server).await;
    let probe = Probe::new(&server).await;
    let publish_all = |events: Vec<AllPlaced>| {
        let bus = bus.clone();
        caller.run(async move { bus.publish_all(&events).await })
    };

    let ids = ["a1", "a2", "bad.id", "a1", "a3"];
    let events: Vec<AllPlaced> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| AllPlaced {
            id: (*id).into(),
            n: n as u64,
        })
        .collect();
    let results = publish_all(events.clone()).await;

    assert_eq!(results.len(), events.len(), "one outcome per event");
    let err = results[2].as_ref().expect_err("the invalid id");
    assert_eq!(err.kind(), ErrorKind::InvalidAggregateId, "{err:?}");
    assert!(err.to_string().contains("\"bad.id\""), "{err}");
    let stored: Vec<(usize, u64)> = results
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(i, r)| {
            let p = r
                .as_ref()
                .unwrap_or_else(|e| panic!("event {i} is stored: {e}"));
            assert_eq!(p.stream, "PUB_ALL");
            assert!(!p.duplicate);
            (i, p.sequence)
        })
        .collect();
    assert_eq!(
        stored,
        vec![(0, 1), (1, 2), (3, 3), (4, 4)],
        "stored in the order given, the invalid one skipped"
    );
    for (i, sequence) in stored {
        let m = probe.stored("PUB_ALL", sequence).await;
        let body: AllPlaced = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(body, events[i]);
        assert_eq!(
            header(&m, "ce-id"),
            Some(results[i].as_ref().unwrap().id.as_str())
        );
    }
    assert_eq!(probe.count("PUB_ALL").await, 4);

    // More events than the pipeline window (1024) keep their order too.
    let many: Vec<AllPlaced> = (0..2500)
        .map(|n| AllPlaced {
            id: format!("m{}", n % 7),
            n,
        })
        .collect();
    let results = publish_all(many).await;
    let sequences: Vec<u64> = results
        .into_iter()
        .map(|r| r.expect("stored").sequence)
        .collect();
    assert_eq!(sequences, (5..5 + 2500).collect::<Vec<u64>>());
    assert!(publish_all(Vec::new()).await.is_empty());
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 8. extra headers travel along; eventbus's own cannot be overridden
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "pub_hdr", name = "placed")]
struct HdrPlaced {
    #[event(aggregate_id)]
    id: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_headers_are_stored_and_cannot_override_eventbus_headers() {
    let server = NatsServer::start().await;
    let bus = publisher(&server).await;
    let probe = Probe::new(&server).await;

    let mut extra = HeaderMap::new();
    extra.insert("x-tenant", "acme");
    let p = bus
        .publish_with(
            &HdrPlaced { id: "h-1".into() },
            PublishOptions {
                headers: Some(extra),
                correlation_id: Some("corr-1".into()),
                causation_id: Some("cause-1".into()),
                ..PublishOptions::default()
            },
        )
        .await
        .unwrap();
    let m = probe.stored("PUB_HDR", p.sequence).await;
    assert_eq!(header(&m, "x-tenant"), Some("acme"));
    assert_eq!(header(&m, "ce-correlationid"), Some("corr-1"));
    assert_eq!(header(&m, "ce-causationid"), Some("cause-1"));

    for name in ["ce-id", "ce-type", "Nats-Msg-Id", "content-type"] {
        let mut extra = HeaderMap::new();
        extra.insert(name, "mine");
        let err = bus
            .publish_with(
                &HdrPlaced { id: "h-2".into() },
                PublishOptions {
                    headers: Some(extra),
                    ..PublishOptions::default()
                },
            )
            .await
            .expect_err(name);
        assert_eq!(err.kind(), ErrorKind::Encode, "{name}: {err:?}");
        assert!(err.to_string().contains(name), "{err}");
    }
    let err = bus
        .publish_with(
            &HdrPlaced { id: "h-3".into() },
            PublishOptions {
                correlation_id: Some("two\r\nlines".into()),
                ..PublishOptions::default()
            },
        )
        .await
        .expect_err("a line break in a header");
    assert_eq!(err.kind(), ErrorKind::Encode, "{err:?}");
    assert_eq!(probe.count("PUB_HDR").await, 1);
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 9. ctx.publish carries the correlation id forward and sets the causation id
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "pub_chain", name = "placed")]
struct ChainPlaced {
    #[event(aggregate_id)]
    id: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "pub_chain_bill", name = "billed")]
struct ChainBilled {
    #[event(aggregate_id)]
    id: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "pub_chain_file", name = "filed")]
struct ChainFiled {
    #[event(aggregate_id)]
    id: String,
}

#[event_handler(max_deliver = 3, backoff = ["100ms"])]
async fn pub_chain_bill(event: ChainPlaced, ctx: EventContext) -> Result<(), HandlerError> {
    ctx.publish(&ChainBilled { id: event.id }).await?;
    Ok(())
}

#[event_handler(max_deliver = 3, backoff = ["100ms"])]
async fn pub_chain_file(event: ChainBilled, ctx: EventContext) -> Result<(), HandlerError> {
    ctx.publish(&ChainFiled { id: event.id }).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctx_publish_carries_the_correlation_and_sets_the_causation() {
    let server = NatsServer::start().await;
    let bus = eventbus::builder()
        .no_env()
        .url(server.url())
        .service("pub-chain")
        .only_handlers(["pub_chain_bill", "pub_chain_file"])
        .start()
        .await
        .unwrap();
    let probe = Probe::new(&server).await;

    let correlated = bus
        .publish_with(
            &ChainPlaced { id: "c1".into() },
            PublishOptions {
                correlation_id: Some("request-7".into()),
                ..PublishOptions::default()
            },
        )
        .await
        .unwrap();
    let plain = bus.publish(&ChainPlaced { id: "c2".into() }).await.unwrap();

    /// The message of `stream` on `subject`, once there.
    async fn on(probe: &Probe, stream: &str, subject: &str) -> StreamMessage {
        wait_for(TIMEOUT, format_args!("an event on `{subject}`"), || async {
            probe
                .all(stream)
                .await
                .into_iter()
                .find(|m| m.subject.as_str() == subject)
        })
        .await
    }

    for (cause, id, correlation) in [
        (&correlated, "c1", "request-7"),
        (&plain, "c2", plain.id.as_str()),
    ] {
        let billed = on(
            &probe,
            "PUB_CHAIN_BILL",
            &format!("pub_chain_bill.{id}.billed"),
        )
        .await;
        assert_eq!(header(&billed, "ce-correlationid"), Some(correlation));
        assert_eq!(header(&billed, "ce-causationid"), Some(cause.id.as_str()));
        assert_eq!(header(&billed, "ce-source"), Some("pub-chain"));
        let billed_id = header(&billed, "ce-id").expect("ce-id");
        assert_ne!(billed_id, cause.id, "a new event has a new id");

        // One hop further: the same correlation, caused by the event handled there.
        let filed = on(
            &probe,
            "PUB_CHAIN_FILE",
            &format!("pub_chain_file.{id}.filed"),
        )
        .await;
        assert_eq!(header(&filed, "ce-correlationid"), Some(correlation));
        assert_eq!(header(&filed, "ce-causationid"), Some(billed_id));
    }
    bus.shutdown().await.unwrap();
}
