//! `eventbus::testing`: handlers tested on the in-process broker, with no server, under tokio's
//! paused clock (retries an hour apart take no real time).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use eventbus::prelude::*;
use eventbus::testing::{Outcome, TestBus};

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "tst_parcel", name = "sent")]
struct ParcelSent {
    #[event(aggregate_id)]
    parcel_id: String,
    grams: u64,
}

/// Fails twice for every parcel, then succeeds; refuses weightless parcels for good.
#[event_handler(max_deliver = 5, backoff = ["1h", "2h"])]
async fn weigh_parcel(event: ParcelSent, ctx: EventContext) -> Result<(), HandlerError> {
    if event.grams == 0 {
        return Err(HandlerError::permanent("a parcel that weighs nothing"));
    }
    if ctx.attempt() < 3 {
        return Err(HandlerError::transient(format!(
            "scale busy (attempt {})",
            ctx.attempt()
        )));
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn retries_an_hour_apart_take_no_real_time() {
    let real = std::time::Instant::now();
    let started = tokio::time::Instant::now();
    let bus = TestBus::start(["weigh_parcel"]).await.expect("test bus");
    bus.publish(&ParcelSent {
        parcel_id: "p1".into(),
        grams: 500,
    })
    .await
    .expect("publish");
    bus.publish(&ParcelSent {
        parcel_id: "p2".into(),
        grams: 0,
    })
    .await
    .expect("publish");
    bus.wait_idle().await;

    let p1: Vec<_> = bus
        .handled("weigh_parcel")
        .into_iter()
        .filter(|h| h.aggregate_id == "p1")
        .collect();
    let outcomes: Vec<_> = p1.iter().map(|h| (h.attempt, h.outcome.clone())).collect();
    assert_eq!(
        outcomes,
        vec![
            (
                1,
                Outcome::Retried {
                    error: "scale busy (attempt 1)".into()
                }
            ),
            (
                2,
                Outcome::Retried {
                    error: "scale busy (attempt 2)".into()
                }
            ),
            (3, Outcome::Acked),
        ]
    );
    assert!(
        tokio::time::Instant::now() - started >= Duration::from_secs(3 * 3600),
        "backoff 1h then 2h elapsed on the paused clock"
    );
    assert!(
        real.elapsed() < Duration::from_secs(10),
        "and took no real time: {:?}",
        real.elapsed()
    );

    let p2: Vec<_> = bus
        .handled("weigh_parcel")
        .into_iter()
        .filter(|h| h.aggregate_id == "p2")
        .collect();
    assert_eq!(p2.len(), 1, "a permanent error is not retried: {p2:?}");
    assert!(
        matches!(&p2[0].outcome, Outcome::DeadLettered { reason, .. } if reason == "permanent")
    );
    let counts = bus.counts();
    let count = |k: &str| {
        counts
            .get(&("weigh_parcel".to_owned(), k))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(
        (count("acked"), count("retried"), count("dead_lettered")),
        (1, 2, 1)
    );
    assert_eq!(bus.all_handled().len(), 4);
    assert!(bus.is_in_process());
    assert_eq!(bus.server_version(), None);
    let dead = bus.dead_letters(None).await.expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].original_subject, "tst_parcel.p2.sent");
    assert_eq!(dead[0].consumer, "test-weigh_parcel");
    bus.shutdown().await.expect("shutdown");
}

static SLOW_CALLS: AtomicU64 = AtomicU64::new(0);

/// Takes ten minutes (of the paused clock), far longer than its ack wait.
#[event_handler(ack_wait = "30s")]
async fn slow_audit(_event: ParcelSent) -> Result<(), HandlerError> {
    SLOW_CALLS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(600)).await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_long_handler_keeps_its_event_with_in_progress_acks() {
    let bus = TestBus::start(["slow_audit"]).await.expect("test bus");
    bus.publish(&ParcelSent {
        parcel_id: "p9".into(),
        grams: 1,
    })
    .await
    .expect("publish");
    bus.wait_idle().await;
    assert_eq!(
        SLOW_CALLS.load(Ordering::SeqCst),
        1,
        "not redelivered while it ran"
    );
    let handled = bus.handled("slow_audit");
    assert_eq!(handled.len(), 1);
    assert_eq!(handled[0].outcome, Outcome::Acked);
    bus.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_test_bus_reads_an_aggregate_and_drops_duplicates() {
    let bus = TestBus::start(Vec::<String>::new())
        .await
        .expect("test bus");
    for grams in [1, 2, 3] {
        bus.publish(&ParcelSent {
            parcel_id: "r1".into(),
            grams,
        })
        .await
        .expect("publish");
    }
    let options = eventbus::PublishOptions {
        id: Some("same-id".into()),
        ..Default::default()
    };
    let first = bus
        .publish_with(
            &ParcelSent {
                parcel_id: "r1".into(),
                grams: 4,
            },
            options.clone(),
        )
        .await
        .expect("publish");
    let again = bus
        .publish_with(
            &ParcelSent {
                parcel_id: "r1".into(),
                grams: 4,
            },
            options,
        )
        .await
        .expect("publish");
    assert!(!first.duplicate && again.duplicate);
    assert_eq!(again.sequence, first.sequence);
    let events = bus.read::<ParcelSent>("r1").collect().await.expect("read");
    let grams: Vec<u64> = events.iter().map(|r| r.event.grams).collect();
    assert_eq!(grams, [1, 2, 3, 4]);
    assert_eq!(
        events.iter().map(|r| r.version).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    bus.shutdown().await.expect("shutdown");
}

#[event_handler]
async fn tst_record(_event: ParcelSent) -> Result<(), HandlerError> {
    Ok(())
}

/// What the test bus records names each delivery's event id however the producer wrote it:
/// `ce-id` in another case, or inside a structured-mode CloudEvent.
#[tokio::test]
async fn the_recorded_event_id_is_the_events_in_any_mode() {
    let bus = TestBus::start(["tst_record"]).await.expect("test bus");
    let mut binary = eventbus::HeaderMap::new();
    binary.insert("Ce-Id", "bin-1");
    binary.insert("Ce-Specversion", "1.0");
    binary.insert("Content-Type", "application/json");
    bus.publish_raw(
        "tst_parcel.p8.sent",
        binary,
        br#"{"parcel_id":"p8","grams":1}"#.to_vec(),
    )
    .await
    .unwrap();
    let mut structured = eventbus::HeaderMap::new();
    structured.insert("content-type", "application/cloudevents+json");
    let envelope = serde_json::json!({
        "specversion": "1.0",
        "id": "struct-1",
        "source": "/elsewhere",
        "type": "tst_parcel.sent.v1",
        "data": {"parcel_id": "p9", "grams": 2}
    });
    bus.publish_raw(
        "tst_parcel.p9.sent",
        structured,
        serde_json::to_vec(&envelope).unwrap(),
    )
    .await
    .unwrap();
    bus.wait_idle().await;
    let mut ids: Vec<(String, Option<String>)> = bus
        .handled("tst_record")
        .into_iter()
        .map(|h| (h.aggregate_id, h.event_id))
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            ("p8".to_owned(), Some("bin-1".to_owned())),
            ("p9".to_owned(), Some("struct-1".to_owned()))
        ]
    );
}
