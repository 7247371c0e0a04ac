//! Benchmark: publishing through eventbus against raw async-nats, on the same server and the
//! same connection in the same run.
//!
//! Run: `cargo run --release -p eventbus-tests --bin bench_publish -- [pipelined] [awaited] [rounds]`
//! (defaults: 20000 pipelined events, 2000 awaited events, 25 rounds). It starts its own
//! nats-server (see the harness) and measures, per round and in alternating order:
//!
//! - pipelined: `bus.publish_all` of the events against raw `publish_with_headers` keeping the
//!   same number of acknowledgements pending (1024), each waited for in order;
//! - awaited: `bus.publish` of one event after the other against raw publish-and-wait;
//! - 256 tasks at once: as many tasks each `bus.publish` their share of the pipelined events,
//!   one after the other, against raw publish-and-wait in as many tasks (a service publishing
//!   from many requests at once).
//!
//! Raw publishes messages encoded beforehand, outside the timed part, with the headers eventbus
//! writes (so the server does the same work, de-duplication included); eventbus encodes inside
//! the timed part, which is the cost a user pays. A second pipelined mode, "raw serializes",
//! has raw do inside the timed part the least a program publishing these events itself does
//! for the same guarantee: serialize the body and set a `Nats-Msg-Id`. The stream is purged
//! before every timed part.
//!
//! Where the publishing runs matters, for raw and eventbus alike, and each mode says where:
//! "in a task" is a task spawned on the runtime, as in a service (a handler, a request); "on
//! main" is `#[tokio::main]`'s own thread, outside the runtime's workers, as in a one-off
//! script. On main, every message handed to the connection's task wakes a worker thread of the
//! runtime, and the messages are allocated on one thread and freed on another; raw publishes
//! from main as it is, and eventbus's `publish_all` makes only the subjects and bodies there
//! and hands them to a task of its own, which makes the headers and sends.
//!
//! It prints each round's rates, the CPU time per event of this process and of the server, and
//! per mode the ratio raw time / eventbus time over all rounds, with the median of the rounds'
//! ratios (1.0: as fast as raw; the target is 0.9 or more). Many short rounds rather than a few
//! long ones: on a shared machine the speed drifts, and parts close in time meet the same
//! drift. The CPU times show what eventbus itself adds. With `--features mimalloc` both run
//! with mimalloc as the global allocator. `BENCH_ONLY=256` (any part of a mode's name) runs
//! only the modes whose name holds it.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use eventbus::__private::{encode, EncodeOptions, EncodedEvent};
use eventbus::prelude::*;
use eventbus_tests::{median, NatsServer};

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

async fn raw_pipelined(js: jetstream::Context, messages: Vec<EncodedEvent>) -> Duration {
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
async fn raw_pipelined_serializing(js: jetstream::Context, events: Arc<Vec<Tick>>) -> Duration {
    let started = Instant::now();
    let mut window = VecDeque::with_capacity(WINDOW);
    for e in events.iter() {
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

async fn eventbus_pipelined(bus: Bus, events: Arc<Vec<Tick>>) -> Duration {
    let started = Instant::now();
    let results = bus.publish_all(events.iter()).await;
    let elapsed = started.elapsed();
    assert!(results.iter().all(Result::is_ok), "every event stored");
    elapsed
}

async fn raw_awaited(js: jetstream::Context, messages: Vec<EncodedEvent>) -> Duration {
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

async fn eventbus_awaited(bus: Bus, events: Arc<Vec<Tick>>) -> Duration {
    let started = Instant::now();
    for e in events.iter() {
        bus.publish(e).await.expect("publish");
    }
    started.elapsed()
}

async fn raw_concurrent(js: jetstream::Context, messages: Vec<EncodedEvent>) -> Duration {
    let mut shares: Vec<Vec<EncodedEvent>> = (0..TASKS).map(|_| Vec::new()).collect();
    for (i, m) in messages.into_iter().enumerate() {
        shares[i % TASKS].push(m);
    }
    let started = Instant::now();
    let tasks: Vec<_> = shares
        .into_iter()
        .map(|share| {
            let js = js.clone();
            tokio::spawn(async move {
                for m in share {
                    js.publish_with_headers(m.subject.into_string(), m.headers, m.payload)
                        .await
                        .expect("publish")
                        .await
                        .expect("ack");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("a publishing task");
    }
    started.elapsed()
}

async fn eventbus_concurrent(bus: Bus, events: Arc<Vec<Tick>>) -> Duration {
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (bus, events) = (bus.clone(), events.clone());
            tokio::spawn(async move {
                for e in events.iter().skip(t).step_by(TASKS) {
                    bus.publish(e).await.expect("publish");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("a publishing task");
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

/// What is timed.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Pipelined; raw publishes messages encoded beforehand.
    Pipelined,
    /// Pipelined; raw serializes and sets `Nats-Msg-Id` in the timed part.
    Serializing,
    /// One publish after the other, each awaited.
    Awaited,
    /// [`TASKS`] tasks at once, each publishing its share one after the other, awaited (a
    /// service publishing from many requests).
    Concurrent,
}

/// How many tasks publish at once in the concurrent mode.
const TASKS: usize = 256;

/// One timed part: wall time, and the CPU time the server and this process used in it.
#[derive(Clone, Copy, Default)]
struct Run {
    wall: Duration,
    server_cpu: Duration,
    client_cpu: Duration,
}

impl Run {
    fn add(&mut self, other: Run) {
        self.wall += other.wall;
        self.server_cpu += other.server_cpu;
        self.client_cpu += other.client_cpu;
    }
}

/// Where a timed part runs.
#[derive(Clone, Copy, PartialEq)]
enum Place {
    /// A task spawned on the runtime.
    Task,
    /// `main`'s thread, outside the runtime's workers.
    Main,
}

async fn measure(
    server: u32,
    place: Place,
    part: impl Future<Output = Duration> + Send + 'static,
) -> Run {
    let (s0, c0) = (cpu_time(server), cpu_time(std::process::id()));
    let wall = match place {
        Place::Task => tokio::spawn(part).await.expect("the timed part ran"),
        Place::Main => part.await,
    };
    Run {
        wall,
        server_cpu: cpu_time(server) - s0,
        client_cpu: cpu_time(std::process::id()) - c0,
    }
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

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let pipelined: usize = args
        .next()
        .map(|a| a.parse().expect("pipelined events"))
        .unwrap_or(20_000);
    let awaited: usize = args
        .next()
        .map(|a| a.parse().expect("awaited events"))
        .unwrap_or(2_000);
    let rounds: usize = args
        .next()
        .map(|a| a.parse().expect("rounds"))
        .unwrap_or(25);
    let server = NatsServer::start().await;
    let bus = eventbus_tests::publisher(&server.url(), "bench").await;
    let js = bus.jetstream().expect("a NATS bus").clone();
    println!(
        "nats-server {:?}; {pipelined} pipelined and {awaited} awaited events per round, {rounds} rounds; allocator: {}",
        bus.server_version().expect("a NATS bus"),
        if cfg!(feature = "mimalloc") { "mimalloc" } else { "the system's" }
    );

    let many = Arc::new(ticks(pipelined));
    let few = Arc::new(ticks(awaited));
    let pid = server.pid().expect("the server runs");
    let modes = [
        ("pipelined, in a task", Mode::Pipelined, Place::Task),
        (
            "pipelined (raw serializes), in a task",
            Mode::Serializing,
            Place::Task,
        ),
        ("awaited, in a task", Mode::Awaited, Place::Task),
        (
            "256 tasks at once, each awaited",
            Mode::Concurrent,
            Place::Task,
        ),
        ("pipelined, on main", Mode::Pipelined, Place::Main),
        (
            "pipelined (raw serializes), on main",
            Mode::Serializing,
            Place::Main,
        ),
    ];
    // `BENCH_ONLY=on main` runs only the modes whose name holds that text.
    let only = std::env::var("BENCH_ONLY").ok();
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut totals: Vec<(Run, Run)> = vec![(Run::default(), Run::default()); modes.len()];
    for round in 1..=rounds {
        // Alternate which goes first, so neither always meets a warmer server.
        let raw_first = round % 2 == 1;
        for (i, &(name, mode, place)) in modes.iter().enumerate() {
            if !only.as_deref().is_none_or(|o| name.contains(o)) {
                continue;
            }
            let events = if mode == Mode::Awaited { &few } else { &many };
            let (mut raw, mut eb) = (Run::default(), Run::default());
            for raw_turn in [raw_first, !raw_first] {
                purge(&js).await;
                if raw_turn {
                    raw = match mode {
                        Mode::Pipelined => {
                            measure(pid, place, raw_pipelined(js.clone(), encoded(events))).await
                        }
                        Mode::Serializing => {
                            let part = raw_pipelined_serializing(js.clone(), events.clone());
                            measure(pid, place, part).await
                        }
                        Mode::Awaited => {
                            measure(pid, place, raw_awaited(js.clone(), encoded(events))).await
                        }
                        Mode::Concurrent => {
                            measure(pid, place, raw_concurrent(js.clone(), encoded(events))).await
                        }
                    };
                } else {
                    eb = match mode {
                        Mode::Awaited => {
                            measure(pid, place, eventbus_awaited(bus.clone(), events.clone())).await
                        }
                        Mode::Concurrent => {
                            let part = eventbus_concurrent(bus.clone(), events.clone());
                            measure(pid, place, part).await
                        }
                        _ => {
                            let part = eventbus_pipelined(bus.clone(), events.clone());
                            measure(pid, place, part).await
                        }
                    };
                }
            }
            ratios[i].push(report(name, round, events.len(), raw, eb));
            totals[i].0.add(raw);
            totals[i].1.add(eb);
        }
    }
    println!(
        "raw time / eventbus time over all rounds (and the median of the rounds' ratios); \
         the target is 0.9 or more:"
    );
    for (((name, mode, _), r), (raw, eb)) in modes.iter().zip(ratios).zip(totals) {
        if r.is_empty() {
            continue;
        }
        let n = rounds
            * if *mode == Mode::Awaited {
                awaited
            } else {
                pipelined
            };
        let per_event = |d: Duration| d.as_micros() as f64 / n as f64;
        println!(
            "  {name}: {:.3} (median {:.3}); cpu µs/event: raw client {:.1} server {:.1}, \
             eventbus client {:.1} server {:.1}",
            raw.wall.as_secs_f64() / eb.wall.as_secs_f64(),
            median(r),
            per_event(raw.client_cpu),
            per_event(raw.server_cpu),
            per_event(eb.client_cpu),
            per_event(eb.server_cpu),
        );
    }
    bus.shutdown().await.expect("shutdown");
}
