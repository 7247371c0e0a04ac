//! Benchmark: consuming a backlog through eventbus's dispatch against raw async-nats, on the
//! same server in the same run.
//!
//! Run: `cargo run --release -p eventbus-tests --bin bench_dispatch -- [events] [rounds] [concurrency]`
//! (defaults: 100000 events, 3 rounds, the handler's concurrency 1024: events are pulled only for
//! free handler slots, so concurrency is the depth of the pipeline; raw async-nats keeps 256
//! to 384 events requested). It starts its own nats-server (see the harness),
//! publishes the backlog once, then alternates, per round, a raw consumer (pull, decode the
//! JSON body, ack: the least any consumer does) and an eventbus handler that does nothing,
//! each on a fresh durable consumer reading the whole backlog. It prints each round's times and
//! the ratio raw time / eventbus time (1.0: as fast as raw; the target is 0.9 or more).

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use eventbus::prelude::*;
use eventbus::ConsumerOptions;
use eventbus_tests::{Countdown, NatsServer};
use futures::StreamExt;

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "bench", name = "tick")]
struct Tick {
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

async fn raw_round(js: &jetstream::Context, name: &str, n: usize) -> Duration {
    let started = Instant::now();
    let stream = js.get_stream("BENCH").await.expect("stream");
    let c: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.to_owned()),
            filter_subject: "bench.*.tick".to_owned(),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = c
        .stream()
        .max_messages_per_batch(
            std::env::var("RAW_BATCH")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(256),
        )
        .messages()
        .await
        .expect("messages");
    let mut count = 0;
    while let Some(m) = messages.next().await {
        let m = m.expect("message");
        let t: Tick = serde_json::from_slice(&m.payload).expect("decode");
        std::hint::black_box(&t);
        m.ack().await.expect("ack");
        count += 1;
        if count == n {
            break;
        }
    }
    js.client().flush().await.expect("flush");
    started.elapsed()
}

async fn eventbus_round(url: &str, name: &str, n: usize, concurrency: usize) -> Duration {
    HANDLED.arm(n);
    let started = Instant::now();
    let bus = eventbus::builder()
        .no_env()
        .url(url)
        .service("bench")
        .only_handlers(["bench_tick"])
        .handler(
            "bench_tick",
            ConsumerOptions {
                durable_name: Some(name.to_owned().into()),
                concurrency: Some(concurrency),
                ..Default::default()
            },
        )
        .start()
        .await
        .expect("bus");
    HANDLED.done().await;
    let elapsed = started.elapsed();
    bus.shutdown().await.expect("shutdown");
    elapsed
}

/// CPU time (user + system) a process used so far, from `/proc/{pid}/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .map(|a| a.parse().expect("events"))
        .unwrap_or(100_000);
    let rounds: usize = args.next().map(|a| a.parse().expect("rounds")).unwrap_or(3);
    let concurrency: usize = args
        .next()
        .map(|a| a.parse().expect("concurrency"))
        .unwrap_or(1024);
    let server = NatsServer::start().await;
    let url = server.url();

    // Provision through eventbus, then publish the backlog pipelined, with eventbus's headers.
    let publisher = eventbus_tests::publisher(&url, "bench").await;
    let js = publisher.jetstream().expect("a NATS bus").clone();
    let options = eventbus::__private::EncodeOptions {
        source: "bench",
        ..Default::default()
    };
    let encoded = (0..n).map(|i| {
        let e = Tick {
            id: format!("a{}", i % 1000),
            n: i as u64,
            note: "x".repeat(64),
        };
        eventbus::__private::encode(&e, &options).expect("encode")
    });
    eventbus_tests::store_backlog(&js, encoded).await;
    println!(
        "backlog: {n} events on nats-server {}",
        publisher.server_version().expect("a NATS bus").0
    );

    let mut ratios = Vec::new();
    for r in 1..=rounds {
        let pid = server.pid().expect("server runs");
        let (s0, c0) = (cpu_time(pid), cpu_time(std::process::id()));
        let raw = raw_round(&js, &format!("raw-{r}"), n).await;
        let (s1, c1) = (cpu_time(pid), cpu_time(std::process::id()));
        let eb = eventbus_round(&url, &format!("eventbus-{r}"), n, concurrency).await;
        let (s2, c2) = (cpu_time(pid), cpu_time(std::process::id()));
        println!(
            "round {r}: cpu µs/event: raw server {:.1} client {:.1}; eventbus server {:.1} client {:.1}",
            (s1 - s0).as_micros() as f64 / n as f64,
            (c1 - c0).as_micros() as f64 / n as f64,
            (s2 - s1).as_micros() as f64 / n as f64,
            (c2 - c1).as_micros() as f64 / n as f64,
        );
        let ratio = raw.as_secs_f64() / eb.as_secs_f64();
        println!(
            "round {r}: raw {:.0} ev/s, eventbus {:.0} ev/s, ratio {ratio:.3}",
            n as f64 / raw.as_secs_f64(),
            n as f64 / eb.as_secs_f64()
        );
        ratios.push(ratio);
    }
    ratios.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    println!(
        "median ratio (raw time / eventbus time): {:.3}",
        ratios[ratios.len() / 2]
    );
    publisher.shutdown().await.expect("shutdown");
}
