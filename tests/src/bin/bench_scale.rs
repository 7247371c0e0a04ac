//! Benchmark: start-up with 100 handlers on 10 streams, and memory while one handler works
//! through a large backlog.
//!
//! Run: `cargo run --release -p eventbus-tests --bin bench_scale -- [backlog]` (default
//! 1,000,000 events). It starts its own nats-server (see the harness), then:
//!
//! - times `builder().all_handlers().start()` of a bus with 101 handlers on 11 streams (10 per
//!   aggregate for 10 aggregates, and the backlog's handler; each stream and durable consumer
//!   created by that start), and a second start that finds them all in place;
//! - publishes the backlog (128-byte events over 1,000 aggregate ids, with `publish_all`), then
//!   starts one default handler on it and samples this process's resident memory (`VmRSS`)
//!   every 100 ms until every event is handled. It prints the memory before the handler
//!   started, the peak while it worked, and the peak over the first and the last tenth of the
//!   backlog: flat means the handler holds no more as the backlog is longer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use eventbus::prelude::*;
use eventbus_tests::NatsServer;

macro_rules! aggregates {
    ($($agg:ident $name:literal => [$($handler:ident),*]),* $(,)?) => {
        $(
            #[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
            #[event(aggregate = $name, name = "noted")]
            #[allow(non_camel_case_types)]
            struct $agg {
                #[event(aggregate_id)]
                id: String,
            }
            $(
                #[event_handler]
                async fn $handler(event: $agg) -> Result<(), HandlerError> {
                    std::hint::black_box(&event);
                    Ok(())
                }
            )*
        )*
    };
}

aggregates! {
    scale_a "scale_a" => [sa0, sa1, sa2, sa3, sa4, sa5, sa6, sa7, sa8, sa9],
    scale_b "scale_b" => [sb0, sb1, sb2, sb3, sb4, sb5, sb6, sb7, sb8, sb9],
    scale_c "scale_c" => [sc0, sc1, sc2, sc3, sc4, sc5, sc6, sc7, sc8, sc9],
    scale_d "scale_d" => [sd0, sd1, sd2, sd3, sd4, sd5, sd6, sd7, sd8, sd9],
    scale_e "scale_e" => [se0, se1, se2, se3, se4, se5, se6, se7, se8, se9],
    scale_f "scale_f" => [sf0, sf1, sf2, sf3, sf4, sf5, sf6, sf7, sf8, sf9],
    scale_g "scale_g" => [sg0, sg1, sg2, sg3, sg4, sg5, sg6, sg7, sg8, sg9],
    scale_h "scale_h" => [sh0, sh1, sh2, sh3, sh4, sh5, sh6, sh7, sh8, sh9],
    scale_i "scale_i" => [si0, si1, si2, si3, si4, si5, si6, si7, si8, si9],
    scale_j "scale_j" => [sj0, sj1, sj2, sj3, sj4, sj5, sj6, sj7, sj8, sj9],
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "scale_backlog", name = "noted")]
struct BacklogNoted {
    #[event(aggregate_id)]
    id: String,
    n: u64,
    note: String,
}

static HANDLED: AtomicUsize = AtomicUsize::new(0);

#[event_handler]
async fn scale_backlog_handler(event: BacklogNoted) -> Result<(), HandlerError> {
    std::hint::black_box(&event);
    HANDLED.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// This process's resident memory, in MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn start_all(url: &str) -> (Bus, Duration) {
    let started = Instant::now();
    let bus = eventbus::builder()
        .no_env()
        .url(url)
        .service("scale")
        .all_handlers()
        .start()
        .await
        .expect("bus");
    (bus, started.elapsed())
}

#[tokio::main]
async fn main() {
    let backlog: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("backlog"))
        .unwrap_or(1_000_000);
    let server = NatsServer::start().await;
    let url = server.url();
    println!("nats-server {:?}", server.version());

    let (bus, first) = start_all(&url).await;
    let (handlers, streams) = (bus.topology().consumers.len(), bus.topology().streams.len());
    bus.shutdown().await.expect("shutdown");
    let (bus, again) = start_all(&url).await;
    bus.shutdown().await.expect("shutdown");
    println!(
        "start-up with {handlers} handlers on {streams} streams: {:.0} ms creating every stream and consumer, {:.0} ms finding them in place",
        first.as_secs_f64() * 1000.0,
        again.as_secs_f64() * 1000.0
    );

    let publisher = eventbus_tests::publisher(&url, "scale-publisher").await;
    let note = "x".repeat(64);
    let mut sent = 0;
    while sent < backlog {
        let chunk: Vec<BacklogNoted> = (sent..(sent + 10_000).min(backlog))
            .map(|n| BacklogNoted {
                id: format!("a{}", n % 1000),
                n: n as u64,
                note: note.clone(),
            })
            .collect();
        for r in publisher.publish_all(&chunk).await {
            r.expect("stored");
        }
        sent += chunk.len();
    }
    println!("backlog: {backlog} events stored");

    let before = rss_mib();
    let started = Instant::now();
    let bus = eventbus::builder()
        .no_env()
        .url(&url)
        .service("scale-consumer")
        .only_handlers(["scale_backlog_handler"])
        .start()
        .await
        .expect("bus");
    let (mut peak, mut first_tenth, mut last_tenth) = (before, before, before);
    while HANDLED.load(Ordering::Relaxed) < backlog {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let rss = rss_mib();
        let done = HANDLED.load(Ordering::Relaxed);
        peak = peak.max(rss);
        if done <= backlog / 10 {
            first_tenth = first_tenth.max(rss);
        }
        if done >= backlog - backlog / 10 {
            last_tenth = last_tenth.max(rss);
        }
    }
    let took = started.elapsed();
    println!(
        "one default handler through {backlog} events in {:.1} s ({:.0}/s): resident memory {before:.1} MiB before, peak {peak:.1} MiB; peak over the first tenth {first_tenth:.1} MiB, over the last tenth {last_tenth:.1} MiB",
        took.as_secs_f64(),
        backlog as f64 / took.as_secs_f64()
    );
    bus.shutdown().await.expect("shutdown");
    publisher.shutdown().await.expect("shutdown");
}
