//! Reading an aggregate's events against a real `nats-server` (README, "Publishing, replay and event-sourced aggregates"): in order, from
//! the start, from a version or from a stream sequence, to the end that existed when the read
//! began, with no cap on the count and no consumer left on the server.
//!
//! Every test starts its own server and a bus that runs no handler; each has aggregates of its
//! own (`rd_*`).

use std::time::Duration;

use async_nats::jetstream;
use eventbus::prelude::*;
use eventbus::{ErrorKind, Published, Recorded};
use eventbus_tests::NatsServer;
use futures::StreamExt;

/// The bus of service `rd` on `server`, running no handler.
async fn reader(server: &NatsServer) -> Bus {
    eventbus_tests::publisher(&server.url(), "rd").await
}

/// How many consumers `stream` has, as the server counts them.
async fn consumer_count(js: &jetstream::Context, stream: &str) -> usize {
    let mut s = js
        .get_stream(stream)
        .await
        .unwrap_or_else(|e| panic!("no stream `{stream}`: {e}"));
    s.info().await.expect("stream info").state.consumer_count
}

// ---------------------------------------------------------------------------------------------
// 1. 10,000 events of one aggregate among those of others
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "rd_many", name = "opened")]
struct ManyOpened {
    #[event(aggregate_id)]
    account: String,
    owner: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "rd_many", name = "deposited")]
struct ManyDeposited {
    #[event(aggregate_id)]
    account: String,
    n: u64,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "rd_many")]
enum ManyEvent {
    Opened(ManyOpened),
    Deposited(ManyDeposited),
}

/// Another aggregate type, with the same ids.
#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "rd_noise", name = "logged")]
struct NoiseLogged {
    #[event(aggregate_id)]
    account: String,
    n: u64,
}

/// The `n`th event (from 0) of account `acc-1` in the many-events test.
fn nth_event(n: u64) -> ManyEvent {
    if n == 0 {
        ManyEvent::Opened(ManyOpened {
            account: "acc-1".into(),
            owner: "ada".into(),
        })
    } else {
        ManyEvent::Deposited(ManyDeposited {
            account: "acc-1".into(),
            n,
        })
    }
}

const MANY: u64 = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_ten_thousand_events_in_order_without_the_others_and_leaves_no_consumer() {
    let server = NatsServer::start().await;
    let bus = reader(&server).await;
    let js = jetstream::new(server.connect().await);

    // acc-1's events, each followed by one of another account of the same aggregate type.
    let mut events = Vec::with_capacity(2 * MANY as usize);
    for n in 0..MANY {
        events.push(nth_event(n));
        events.push(ManyEvent::Deposited(ManyDeposited {
            account: format!("acc-{}", 2 + n % 3),
            n,
        }));
    }
    let published: Vec<Published> = bus
        .publish_all(&events)
        .await
        .into_iter()
        .map(|r| r.expect("stored"))
        .collect();
    // The same id in another aggregate type.
    let noise: Vec<NoiseLogged> = (0..1000)
        .map(|n| NoiseLogged {
            account: "acc-1".into(),
            n,
        })
        .collect();
    for r in bus.publish_all(&noise).await {
        r.expect("stored");
    }
    // acc-1's stream sequences, by version - 1.
    let sequences: Vec<u64> = published.iter().step_by(2).map(|p| p.sequence).collect();

    let all = bus.read::<ManyEvent>("acc-1").collect().await.unwrap();
    assert_eq!(all.len() as u64, MANY);
    for (i, r) in all.iter().enumerate() {
        let i = i as u64;
        assert_eq!(r.version, i + 1, "versions count from 1");
        assert_eq!(r.event, nth_event(i), "version {}", r.version);
        assert_eq!(r.sequence, sequences[i as usize]);
        assert_eq!(r.metadata.aggregate_id, "acc-1");
        assert_eq!(r.metadata.aggregate_type, "rd_many");
        assert_eq!(r.metadata.id, published[2 * i as usize].id);
    }
    assert_eq!(
        consumer_count(&js, "RD_MANY").await,
        0,
        "a read leaves no consumer behind"
    );

    // From a version.
    let from = bus
        .read::<ManyEvent>("acc-1")
        .from_version(5000)
        .collect()
        .await
        .unwrap();
    assert_eq!(from.len() as u64, MANY - 4999);
    assert_eq!((from[0].version, &from[0].event), (5000, &nth_event(4999)));
    assert_eq!(from.last().unwrap().version, MANY);
    // From a stream sequence (versions still count from the start).
    let at = sequences[6999];
    let from_seq = bus
        .read::<ManyEvent>("acc-1")
        .from_sequence(at)
        .collect()
        .await
        .unwrap();
    assert_eq!(from_seq.len() as u64, MANY - 6999);
    assert_eq!((from_seq[0].version, from_seq[0].sequence), (7000, at));
    // One event type of the set: only those, with versions that count every event.
    let deposits = bus.read::<ManyDeposited>("acc-1").collect().await.unwrap();
    assert_eq!(deposits.len() as u64, MANY - 1);
    assert_eq!((deposits[0].version, deposits[0].event.n), (2, 1));
    assert_eq!(deposits.last().unwrap().version, MANY);

    // The other aggregate type, same id: only its own.
    let noise_read = bus.read::<NoiseLogged>("acc-1").collect().await.unwrap();
    assert_eq!(noise_read.len(), 1000);
    assert_eq!(
        noise_read.iter().map(|r| r.version).collect::<Vec<_>>(),
        (1..=1000).collect::<Vec<u64>>()
    );

    for stream in ["RD_MANY", "RD_NOISE"] {
        assert_eq!(consumer_count(&js, stream).await, 0, "{stream}");
    }
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 2. the end is fixed when the read begins
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "rd_end", name = "ticked")]
struct EndTicked {
    #[event(aggregate_id)]
    id: String,
    n: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_ends_at_the_last_event_stored_when_it_began() {
    let server = NatsServer::start().await;
    let bus = reader(&server).await;
    let js = jetstream::new(server.connect().await);
    let tick = |n| EndTicked { id: "e1".into(), n };

    let first: Vec<EndTicked> = (0..50).map(tick).collect();
    for r in bus.publish_all(&first).await {
        r.expect("stored");
    }

    let mut stream = bus.read::<EndTicked>("e1").into_stream();
    let head: Recorded<EndTicked> = stream.next().await.expect("an event").unwrap();
    assert_eq!(head.version, 1);
    // Published while the read runs: not part of it.
    let later: Vec<EndTicked> = (50..60).map(tick).collect();
    for r in bus.publish_all(&later).await {
        r.expect("stored");
    }
    let rest: Vec<Recorded<EndTicked>> = stream.map(|r| r.unwrap()).collect().await;
    assert_eq!(
        rest.len(),
        49,
        "the read stops where the stream ended when it began"
    );
    assert_eq!(rest.last().unwrap().event.n, 49);

    // A new read sees them.
    let again = bus.read::<EndTicked>("e1").collect().await.unwrap();
    assert_eq!(again.len(), 60);
    assert_eq!(
        again.iter().map(|r| r.event.n).collect::<Vec<_>>(),
        (0..60).collect::<Vec<_>>()
    );

    // Where reads start: a version (0 is the start, past the end is nothing), a sequence
    // (one of another aggregate's events: the read starts at this one's next).
    let other = bus
        .publish(&EndTicked {
            id: "e2".into(),
            n: 0,
        })
        .await
        .unwrap();
    bus.publish(&tick(60)).await.unwrap();
    let versions = |v: &[Recorded<EndTicked>]| v.iter().map(|r| r.version).collect::<Vec<_>>();
    for (from, first) in [(0, 1), (1, 1), (2, 2), (61, 61)] {
        let read = bus
            .read::<EndTicked>("e1")
            .from_version(from)
            .collect()
            .await
            .unwrap();
        assert_eq!(
            versions(&read),
            (first..=61).collect::<Vec<_>>(),
            "from version {from}"
        );
    }
    assert!(bus
        .read::<EndTicked>("e1")
        .from_version(62)
        .collect()
        .await
        .unwrap()
        .is_empty());
    let read = bus
        .read::<EndTicked>("e1")
        .from_sequence(other.sequence)
        .collect()
        .await
        .unwrap();
    assert_eq!(
        (read.len(), read[0].version, read[0].event.n),
        (1, 61, 60),
        "from the sequence of e2's event: e1's next"
    );
    let read = bus
        .read::<EndTicked>("e1")
        .from_sequence(again[10].sequence)
        .collect()
        .await
        .unwrap();
    assert_eq!((read.len(), read[0].version), (51, 11));
    assert!(bus
        .read::<EndTicked>("e1")
        .from_sequence(other.sequence + 1_000)
        .collect()
        .await
        .unwrap()
        .is_empty());

    // A read abandoned part-way leaves nothing on the server either.
    let mut partial = bus.read::<EndTicked>("e1").into_stream();
    partial.next().await.expect("an event").unwrap();
    drop(partial);
    assert_eq!(consumer_count(&js, "RD_END").await, 0);
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 3. nothing to read, and what cannot be read
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "rd_empty", name = "ticked")]
struct EmptyTicked {
    #[event(aggregate_id)]
    id: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "rd_gone", name = "ticked")]
struct GoneTicked {
    #[event(aggregate_id)]
    id: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_nothing_an_invalid_id_or_a_missing_stream() {
    let server = NatsServer::start().await;
    let bus = reader(&server).await;
    let js = jetstream::new(server.connect().await);

    // An empty stream, then a stream with another aggregate's events only.
    assert!(bus
        .read::<EmptyTicked>("x")
        .collect()
        .await
        .unwrap()
        .is_empty());
    bus.publish(&EmptyTicked { id: "y".into() }).await.unwrap();
    assert!(bus
        .read::<EmptyTicked>("x")
        .collect()
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        bus.read::<EmptyTicked>("y").collect().await.unwrap().len(),
        1
    );

    for bad in ["", "a.b", "*", ">", "a b"] {
        let err = bus.read::<EmptyTicked>(bad).collect().await.expect_err(bad);
        assert_eq!(err.kind(), ErrorKind::InvalidAggregateId, "{bad:?}: {err}");
    }

    js.delete_stream("RD_GONE").await.unwrap();
    let err = bus
        .read::<GoneTicked>("g")
        .collect()
        .await
        .expect_err("no stream");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err:?}");
    assert!(err.to_string().contains("rd_gone"), "{err}");

    // A stream ends after its error.
    let mut s = bus.read::<GoneTicked>("g").into_stream();
    assert!(s.next().await.expect("the error").is_err());
    assert!(tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("ends at once")
        .is_none());
    bus.shutdown().await.unwrap();
}
