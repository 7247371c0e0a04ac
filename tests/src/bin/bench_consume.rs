//! Benchmark: a default handler consuming a backlog, against the fastest raw async-nats consumer
//! of the same events, over a matrix of aggregate ids, event types and events per aggregate, on
//! the same server in the same run.
//!
//! Run: `cargo run --release -p eventbus-tests --bin bench_consume -- [max-events]`
//! (default 100000). It runs on the server of `NATS_SERVER_BIN` and, when set, also on
//! `NATS_SERVER_210_BIN` (nats-server 2.10). Each cell stores `ids × per-aggregate` events (at
//! least 20,000 and at most `max-events`: the events per aggregate are raised or lowered to fit,
//! and the line says what was stored) of one or three event types in turn (`tick`, `tock`,
//! `tack`), each with eventbus's headers and a 128-byte JSON body. Then, each on a fresh durable
//! consumer reading the whole backlog:
//!
//! - raw, unfiltered: pull, decode each `tick`, ack every event;
//! - raw, filtered on `bench.*.tick` (three types only): pull, decode, ack. A filter with a
//!   wildcard over many subjects is the server's slow path on 2.10+; a run is cut after 10 s and
//!   its rate taken from what it read by then;
//! - eventbus: `#[event_handler]` on `Tick`, every option at its default (or the concurrency
//!   of `BENCH_CONCURRENCY`), timed from the moment `start()` returned.
//!
//! It prints, per cell, the rates of `tick` events handled and the ratio eventbus / the faster
//! raw consumer (1.0: as fast as raw; the target is 0.9 or more): medians over
//! `BENCH_ROUNDS` rounds (default 3) on the same backlog, each round on fresh consumers, since
//! one short round on a shared machine swings by 20 %.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use eventbus::prelude::*;
use eventbus::ConsumerOptions;
use eventbus_tests::{median, Countdown, NatsServer};
use futures::StreamExt;

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "bench", name = "tick")]
struct Tick {
    #[event(aggregate_id)]
    id: String,
    n: u64,
    note: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "bench", name = "tock")]
struct Tock {
    #[event(aggregate_id)]
    id: String,
    n: u64,
    note: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "bench", name = "tack")]
struct Tack {
    #[event(aggregate_id)]
    id: String,
    n: u64,
    note: String,
}

static HANDLED: Countdown = Countdown::new();

#[event_handler]
async fn bench_tick(event: Tick) -> Result<(), HandlerError> {
    std::hint::black_box(&event);
    HANDLED.tick();
    Ok(())
}

/// How long a raw run may take before it is cut.
const CUT: Duration = Duration::from_secs(10);

/// A raw consumer's rate of `tick` events: `filter` empty reads everything and skips the rest.
async fn raw_round(js: &jetstream::Context, name: &str, filter: &str, total: usize) -> f64 {
    let stream = js.get_stream("BENCH").await.expect("stream");
    let c: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.to_owned()),
            filter_subject: filter.to_owned(),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let expected = if filter.is_empty() {
        total
    } else {
        c.cached_info().num_pending as usize
    };
    let started = Instant::now();
    let mut messages = c
        .stream()
        .max_messages_per_batch(256)
        .messages()
        .await
        .expect("messages");
    let (mut seen, mut ticks) = (0, 0);
    while seen < expected && started.elapsed() < CUT {
        let Ok(Some(m)) = tokio::time::timeout(CUT, messages.next()).await else {
            break;
        };
        let m = m.expect("message");
        if m.subject.ends_with(".tick") {
            let t: Tick = serde_json::from_slice(&m.payload).expect("decode");
            std::hint::black_box(&t);
            ticks += 1;
        }
        m.ack().await.expect("ack");
        seen += 1;
    }
    js.client().flush().await.expect("flush");
    ticks as f64 / started.elapsed().as_secs_f64()
}

/// A default eventbus handler's rate of `tick` events.
async fn eventbus_round(url: &str, name: &str, ticks: usize) -> f64 {
    HANDLED.arm(ticks);
    let concurrency = std::env::var("BENCH_CONCURRENCY")
        .ok()
        .map(|c| c.parse().expect("BENCH_CONCURRENCY"));
    let bus = eventbus::builder()
        .no_env()
        .url(url)
        .service("bench")
        .only_handlers(["bench_tick"])
        .handler(
            "bench_tick",
            ConsumerOptions {
                durable_name: Some(name.to_owned().into()),
                concurrency,
                ..Default::default()
            },
        )
        .start()
        .await
        .expect("bus");
    // From the moment it runs, as the raw rounds are timed from their consumer's creation.
    let started = Instant::now();
    HANDLED.done().await;
    let rate = ticks as f64 / started.elapsed().as_secs_f64();
    bus.shutdown().await.expect("shutdown");
    rate
}

/// Stores the cell's backlog; returns how many events and how many of them are `tick`s.
async fn backlog(js: &jetstream::Context, ids: usize, per: usize, types: usize) -> (usize, usize) {
    let total = ids * per;
    let note = "x".repeat(64);
    let options = eventbus::__private::EncodeOptions {
        source: "bench",
        ..Default::default()
    };
    let encoded = (0..total).map(|i| {
        let (id, n, note) = (format!("a{}", i % ids), i as u64, note.clone());
        match i % types {
            0 => eventbus::__private::encode(&Tick { id, n, note }, &options),
            1 => eventbus::__private::encode(&Tock { id, n, note }, &options),
            _ => eventbus::__private::encode(&Tack { id, n, note }, &options),
        }
        .expect("encode")
    });
    eventbus_tests::store_backlog(js, encoded).await;
    (total, total.div_ceil(types))
}

async fn run_on(binary: Option<String>, max_events: usize) {
    let server = match binary {
        Some(b) => NatsServer::builder().binary(b).start().await,
        None => NatsServer::start().await,
    };
    let url = server.url();
    let version = server.version();
    println!("nats-server {version:?}");
    println!(
        "{:>7} {:>6} {:>5} {:>8} | {:>10} {:>10} {:>10} | ratio",
        "ids", "per-id", "types", "events", "raw-all/s", "raw-filt/s", "eventbus/s"
    );
    // `BENCH_ROUNDS` (default 3): each cell's consumers run that many times over its
    // backlog; the line gives the medians (rates, and the ratio of each round).
    let rounds: usize =
        std::env::var("BENCH_ROUNDS").map_or(3, |r| r.parse().expect("BENCH_ROUNDS"));
    let mut cell = 0;
    let mut done = std::collections::BTreeSet::new();
    // `BENCH_IDS=30,3000` and `BENCH_TYPES=3` run other rows (to find where the server's
    // filtered path turns slow).
    let list = |var: &str, default: &[usize]| -> Vec<usize> {
        std::env::var(var).map_or_else(
            |_| default.to_vec(),
            |v| v.split(',').map(|n| n.trim().parse().expect(var)).collect(),
        )
    };
    for ids in list("BENCH_IDS", &[10, 1_000, 100_000]) {
        for per in [1, 10, 100] {
            for types in list("BENCH_TYPES", &[1, 3]) {
                let least = 20_000usize.div_ceil(ids);
                let per = per.clamp(least, (max_events / ids).max(least));
                if !done.insert((ids, per, types)) {
                    continue;
                }
                cell += 1;
                let publisher = eventbus_tests::publisher(&url, "bench").await;
                let js = publisher.jetstream().expect("a NATS bus").clone();
                let (total, ticks) = backlog(&js, ids, per, types).await;
                let (mut alls, mut filtereds, mut ebs, mut ratios) =
                    (vec![], vec![], vec![], vec![]);
                for round in 0..rounds {
                    let all = raw_round(&js, &format!("raw-all-{cell}-{round}"), "", total).await;
                    let filtered = if types > 1 {
                        let name = format!("raw-filt-{cell}-{round}");
                        raw_round(&js, &name, "bench.*.tick", total).await
                    } else {
                        0.0
                    };
                    let eb = eventbus_round(&url, &format!("eventbus-{cell}-{round}"), ticks).await;
                    ratios.push(eb / all.max(filtered));
                    alls.push(all);
                    filtereds.push(filtered);
                    ebs.push(eb);
                }
                let (all, filtered, eb) = (median(alls), median(filtereds), median(ebs));
                println!(
                    "{ids:>7} {per:>6} {types:>5} {total:>8} | {all:>10.0} {filtered:>10.0} {eb:>10.0} | {:.2}",
                    median(ratios)
                );
                js.delete_stream("BENCH").await.expect("delete the stream");
                publisher.shutdown().await.expect("shutdown");
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let max_events: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("max events"))
        .unwrap_or(100_000);
    run_on(None, max_events).await;
    if let Ok(old) = std::env::var("NATS_SERVER_210_BIN") {
        run_on(Some(old), max_events).await;
    }
}
