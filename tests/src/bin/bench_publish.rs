//! Benchmark: publishing through eventbus against raw async-nats, on the same server and the
//! same connection in the same run.
//!
//! Run: `cargo run --release -p eventbus-tests --bin bench_publish -- [pipelined] [awaited] [rounds]`
//! (defaults: 100000 pipelined events, 10000 awaited events, 5 rounds). It starts its own
//! nats-server (see the harness) and measures, per round and in alternating order:
//!
//! - pipelined: `bus.publish_all` of the events against raw `publish_with_headers` keeping the
//!   same number of acknowledgements pending (1024), each waited for in order;
//! - awaited: `bus.publish` of one event after the other against raw publish-and-wait.
//!
//! Raw publishes messages encoded beforehand, outside the timed part, with the headers eventbus
//! writes (so the server does the same work, de-duplication included); eventbus encodes inside
//! the timed part, which is the cost a user pays. A third mode, "pipelined (raw serializes)",
//! has raw do inside the timed part the least a program publishing these events itself does
//! for the same guarantee: serialize the body and set a `Nats-Msg-Id`. The stream is purged before every timed part.
//! It prints each round's rates, the CPU time per event of this process and of the server, and
//! the median ratio raw time / eventbus time per mode (1.0: as fast as raw; the target is 0.9
//! or more). On a busy machine the wall times vary from round to round; the CPU times show
//! what eventbus itself adds.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use eventbus::envelope::{encode, EncodeOptions, EncodedEvent};
use eventbus::prelude::*;
use eventbus_tests::NatsServer;

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "bench_pub", name = "tick")]
struct Tick {
    #[event(aggregate_id)]
    id: String,
    n: u64,
    note: String,
}

const STREAM: &str = "BENCH_PUB";
/// What `publish_all` keeps pending; raw keeps the same.
const WINDOW: usize = 1024;

fn ticks(n: usize) -> Vec<Tick> {
    (0..n)
        .map(|i| Tick {
            id: format!("a{}", i % 1000),
            n: i as u64,
            note: "x".repeat(64),
        })
        .collect()
}

/// The events as eventbus would send them (fresh ids, so the server stores every one).
fn encoded(events: &[Tick]) -> Vec<EncodedEvent> {
    events
        .iter()
        .map(|e| {
            encode(
                e,
                &EncodeOptions {
                    source: "bench",
                    ..Default::default()
                },
            )
            .expect("encode")
        })
        .collect()
}

async fn purge(js: &jetstream::Context) {
    js.get_stream(STREAM)
        .await
        .expect("stream")
        .purge()
        .await
        .expect("purge");
}

async fn raw_pipelined(js: &jetstream::Context, messages: Vec<EncodedEvent>) -> Duration {
    let started = Instant::now();
    let mut window = VecDeque::with_capacity(WINDOW);
    for m in messages {
        if window.len() == WINDOW {
            let ack: jetstream::context::PublishAckFuture = window.pop_front().expect("full");
            ack.await.expect("ack");
        }
        window.push_back(
            js.publish_with_headers(m.subject.into_string(), m.headers, m.payload)
                .await
                .expect("publish"),
        );
    }
    while let Some(ack) = window.pop_front() {
        ack.await.expect("ack");
    }
    started.elapsed()
}

/// Raw pipelined publishing that does the least a program publishing these events itself
/// does for the same guarantee: serialize the body and give each message a `Nats-Msg-Id`
/// (so a resend is dropped as a duplicate), inside the timed part.
async fn raw_pipelined_serializing(js: &jetstream::Context, events: &[Tick]) -> Duration {
    let started = Instant::now();
    let mut window = VecDeque::with_capacity(WINDOW);
    for e in events {
        if window.len() == WINDOW {
            let ack: jetstream::context::PublishAckFuture = window.pop_front().expect("full");
            ack.await.expect("ack");
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", uuid::Uuid::now_v7().to_string());
        let body = serde_json::to_vec(e).expect("json");
        window.push_back(
            js.publish_with_headers(format!("bench_pub.{}.tick", e.id), headers, body.into())
                .await
                .expect("publish"),
        );
    }
    while let Some(ack) = window.pop_front() {
        ack.await.expect("ack");
    }
    started.elapsed()
}

async fn eventbus_pipelined(bus: &Bus, events: &[Tick]) -> Duration {
    let started = Instant::now();
    let results = bus.publish_all(events).await;
    let elapsed = started.elapsed();
    assert!(results.iter().all(Result::is_ok), "every event stored");
    elapsed
}

async fn raw_awaited(js: &jetstream::Context, messages: Vec<EncodedEvent>) -> Duration {
    let started = Instant::now();
    for m in messages {
        js.publish_with_headers(m.subject.into_string(), m.headers, m.payload)
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    started.elapsed()
}

async fn eventbus_awaited(bus: &Bus, events: &[Tick]) -> Duration {
    let started = Instant::now();
    for e in events {
        bus.publish(e).await.expect("publish");
    }
    started.elapsed()
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

/// One timed part: wall time, and the CPU time the server and this process used in it.
#[derive(Clone, Copy, Default)]
struct Run {
    wall: Duration,
    server_cpu: Duration,
    client_cpu: Duration,
}

async fn measure(server: u32, part: impl std::future::Future<Output = Duration>) -> Run {
    let (s0, c0) = (cpu_time(server), cpu_time(std::process::id()));
    let wall = part.await;
    Run {
        wall,
        server_cpu: cpu_time(server) - s0,
        client_cpu: cpu_time(std::process::id()) - c0,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    v[v.len() / 2]
}

fn report(mode: &str, round: usize, n: usize, raw: Run, eb: Run) -> f64 {
    let ratio = raw.wall.as_secs_f64() / eb.wall.as_secs_f64();
    let per_event = |d: Duration| d.as_micros() as f64 / n as f64;
    println!(
        "{mode} round {round}: raw {:.0} ev/s, eventbus {:.0} ev/s, ratio {ratio:.3}; \
         cpu µs/event: raw client {:.1} server {:.1}, eventbus client {:.1} server {:.1}",
        n as f64 / raw.wall.as_secs_f64(),
        n as f64 / eb.wall.as_secs_f64(),
        per_event(raw.client_cpu),
        per_event(raw.server_cpu),
        per_event(eb.client_cpu),
        per_event(eb.server_cpu),
    );
    ratio
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let pipelined: usize = args
        .next()
        .map(|a| a.parse().expect("pipelined events"))
        .unwrap_or(100_000);
    let awaited: usize = args
        .next()
        .map(|a| a.parse().expect("awaited events"))
        .unwrap_or(10_000);
    let rounds: usize = args.next().map(|a| a.parse().expect("rounds")).unwrap_or(5);
    let server = NatsServer::start().await;
    let bus = eventbus::builder()
        .no_env()
        .url(server.url())
        .service("bench")
        .without_handlers()
        .start()
        .await
        .expect("bus");
    let js = bus.jetstream().expect("a NATS bus").clone();
    println!(
        "nats-server {:?}; {pipelined} pipelined and {awaited} awaited events per round, {rounds} rounds",
        bus.server_version().expect("a NATS bus")
    );

    let many = ticks(pipelined);
    let few = ticks(awaited);
    let (mut pipelined_ratios, mut awaited_ratios) = (Vec::new(), Vec::new());
    let mut serializing_ratios = Vec::new();
    let pid = server.pid().expect("the server runs");
    for round in 1..=rounds {
        // Alternate which goes first, so neither always meets a warmer server.
        let raw_first = round % 2 == 1;
        let (mut raw, mut eb) = (Run::default(), Run::default());
        for raw_turn in [raw_first, !raw_first] {
            purge(&js).await;
            if raw_turn {
                let messages = encoded(&many);
                raw = measure(pid, raw_pipelined(&js, messages)).await;
            } else {
                eb = measure(pid, eventbus_pipelined(&bus, &many)).await;
            }
        }
        pipelined_ratios.push(report("pipelined", round, pipelined, raw, eb));

        for raw_turn in [raw_first, !raw_first] {
            purge(&js).await;
            if raw_turn {
                raw = measure(pid, raw_pipelined_serializing(&js, &many)).await;
            } else {
                eb = measure(pid, eventbus_pipelined(&bus, &many)).await;
            }
        }
        serializing_ratios.push(report(
            "pipelined (raw serializes)",
            round,
            pipelined,
            raw,
            eb,
        ));

        for raw_turn in [raw_first, !raw_first] {
            purge(&js).await;
            if raw_turn {
                let messages = encoded(&few);
                raw = measure(pid, raw_awaited(&js, messages)).await;
            } else {
                eb = measure(pid, eventbus_awaited(&bus, &few)).await;
            }
        }
        awaited_ratios.push(report("awaited", round, awaited, raw, eb));
    }
    println!(
        "median ratio (raw time / eventbus time): pipelined {:.3} (raw pre-encoded), {:.3} (raw serializes and sets Nats-Msg-Id), awaited {:.3}",
        median(pipelined_ratios),
        median(serializing_ratios),
        median(awaited_ratios)
    );
    bus.shutdown().await.expect("shutdown");
}
