//! Benchmark: what metrics and tracing cost, publishing and consuming with both on against
//! the same with both off, on the same server in the same run.
//!
//! Run: `cargo run --release -p eventbus-tests --bin bench_observe -- [pipelined] [awaited] [backlog] [rounds]`
//! (defaults: 20000 pipelined events, 10000 awaited events, a backlog of 50000, 5 rounds). It
//! starts its own nats-server (see the harness). "On" is what a production service runs with:
//! a Prometheus recorder (`metrics-exporter-prometheus`) for eventbus's metrics and a
//! `tracing-opentelemetry` layer exporting every span through a batch processor (the
//! exporter discards them: the cost measured is eventbus's and the layer's, not a network's),
//! so every publish and every delivery makes an OpenTelemetry span and writes or reads
//! `traceparent`. "Off" is no recorder and no subscriber. Both run on this one thread
//! (a current-thread runtime), where the recorder and the subscriber are installed for the
//! "on" parts only (`metrics::set_default_local_recorder`, `tracing::dispatcher::set_default`);
//! the metric handles a bus registers stay bound to the recorder that was there when it
//! registered them.
//!
//! The backlog is published first, as a traced producer publishes: each event in a trace of
//! its own, carrying its `traceparent` (sampled or not, as the sampler decided), so the "on"
//! consumers join those traces as a service downstream of a traced one does.
//!
//! Per round, in alternating order: `publish_all` of the pipelined events, `publish` of the
//! awaited events one after the other, and a do-nothing handler consuming the whole backlog
//! on a fresh durable consumer. It prints each part's rates and this process's CPU time per
//! event (the span exporter's thread included), and, per part, the ratio off time / on time
//! over all rounds (1.0: no cost; 0.95: on takes 5 % longer) and the same ratio of CPU time.
//!
//! `BENCH_ON=metrics` or `BENCH_ON=tracing` turns on only that one in the "on" parts, to see
//! which costs what, and `BENCH_ON=nothing` neither (an A/A run: what the two sides differ by
//! with nothing on, the bench's own bias and noise); `BENCH_SAMPLE=0.01` records that share of
//! traces (parent-based, by trace id: the root publishes decide, the deliveries follow their
//! `traceparent`), as production tracing samples; `BENCH_LAYER=none` records the spans with
//! `tracing-subscriber`'s registry alone (no OpenTelemetry layer), `BENCH_LAYER=lean` with a
//! layer that takes no timings at each poll and adds no thread or source location;
//! `BENCH_LEVEL` (default `info`, as a service's filter) says which levels are recorded;
//! `BENCH_GLOBAL=0` does not make the provider the global one (a publish that starts a trace
//! then makes its span through the layer, to be sampled there). Wall times on a shared machine
//! drift: compare the medians and the CPU times, over several rounds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use eventbus::prelude::*;
use eventbus::{Bus, ConsumerOptions};
use eventbus_tests::{Countdown, NatsServer};
use metrics_exporter_prometheus::PrometheusBuilder;
use opentelemetry::trace::TracerProvider as _;
use tracing_subscriber::layer::SubscriberExt;

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "bench_obs", name = "tick")]
struct Tick {
    #[event(aggregate_id)]
    id: String,
    n: u64,
    note: String,
}

/// Discards the spans it is given, counting them.
#[derive(Debug, Default)]
struct Discard;

static EXPORTED: AtomicUsize = AtomicUsize::new(0);

impl opentelemetry_sdk::trace::SpanExporter for Discard {
    async fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        EXPORTED.fetch_add(batch.len(), Ordering::Relaxed);
        Ok(())
    }
}

/// CPU time this process's threads used so far, in nanoseconds: the sum of each live thread's
/// `/proc/self/task/*/schedstat` (`/proc/self/stat` counts in 10 ms ticks, too coarse for a
/// part of 2000 publishes). The bench's threads (the runtime's and the span exporter's) live
/// until the end, so none is left out.
fn cpu_time() -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    let ns: u64 = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

/// Wall and CPU time of one part.
#[derive(Debug, Clone, Copy, Default)]
struct Took {
    wall: Duration,
    cpu: Duration,
}

static HANDLED: Countdown = Countdown::new();

#[event_handler]
async fn bench_obs_tick(event: Tick) -> Result<(), HandlerError> {
    std::hint::black_box(&event);
    HANDLED.tick();
    Ok(())
}

fn ticks(n: usize, from: usize) -> Vec<Tick> {
    (from..from + n)
        .map(|i| Tick {
            id: format!("a{}", i % 1000),
            n: i as u64,
            note: "x".repeat(64),
        })
        .collect()
}

async fn pipelined(bus: &Bus, events: &[Tick]) -> Duration {
    let started = Instant::now();
    for r in bus.publish_all(events).await {
        r.expect("stored");
    }
    started.elapsed()
}

async fn awaited(bus: &Bus, events: &[Tick]) -> Duration {
    let started = Instant::now();
    for e in events {
        bus.publish(e).await.expect("stored");
    }
    started.elapsed()
}

async fn consume(url: &str, durable: &str, n: usize) -> Duration {
    HANDLED.arm(n);
    let started = Instant::now();
    let bus = eventbus::builder()
        .no_env()
        .url(url)
        .service("bench-obs")
        .only_handlers(["bench_obs_tick"])
        .handler(
            "bench_obs_tick",
            ConsumerOptions {
                durable_name: Some(durable.to_owned().into()),
                concurrency: Some(1024),
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

/// Times `part` with metrics and tracing off, then on (or on first when `on_first`).
async fn both<F, Fut>(
    on_first: bool,
    recorder: &metrics_exporter_prometheus::PrometheusRecorder,
    tracing: &tracing::Dispatch,
    mut part: F,
) -> (Took, Took)
where
    F: FnMut(bool) -> Fut,
    Fut: std::future::Future<Output = Duration>,
{
    let mut on = Took::default();
    let mut off = Took::default();
    for turn in 0..2 {
        let cpu = cpu_time();
        if (turn == 0) == on_first {
            let only = std::env::var("BENCH_ON").unwrap_or_default();
            let none = metrics::NoopRecorder;
            let with_metrics = only != "tracing" && only != "nothing";
            let _metrics =
                metrics::set_default_local_recorder(if with_metrics { recorder } else { &none });
            let off = tracing::Dispatch::none();
            let with_tracing = only != "metrics" && only != "nothing";
            let tracing =
                tracing::dispatcher::set_default(if with_tracing { tracing } else { &off });
            // Callsites first met with no subscriber were cached as never enabled.
            tracing::callsite::rebuild_interest_cache();
            on.wall = part(true).await;
            on.cpu = cpu_time() - cpu;
            drop(tracing);
            tracing::callsite::rebuild_interest_cache();
        } else {
            off.wall = part(false).await;
            off.cpu = cpu_time() - cpu;
        }
    }
    (off, on)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mut arg = |default: usize| {
        args.next()
            .map(|a| a.parse().expect("a number"))
            .unwrap_or(default)
    };
    let (n_pipelined, n_awaited, backlog, rounds) = (arg(20_000), arg(10_000), arg(50_000), arg(5));
    let server = NatsServer::start().await;
    let url = server.url();

    let recorder = PrometheusBuilder::new().build_recorder();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(Discard)
        // BENCH_SAMPLE: the share of traces recorded (default all), as production samples.
        .with_sampler(opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
            opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(
                std::env::var("BENCH_SAMPLE")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1.0),
            ),
        )))
        .build();
    // The provider is the global one too, as a service sets it up (eventbus then samples a
    // publish that starts a trace before making its span); BENCH_GLOBAL=0 leaves the global
    // provider unset, so every publish makes its span through the layer.
    if std::env::var("BENCH_GLOBAL").map_or(true, |v| v != "0") {
        opentelemetry::global::set_tracer_provider(provider.clone());
    }
    // The levels recorded, as a service's filter says (`RUST_LOG=info`): BENCH_LEVEL, default
    // info; `trace` records the debug and trace events of async-nats too.
    let level: tracing_subscriber::filter::LevelFilter = std::env::var("BENCH_LEVEL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO);
    let registry = tracing_subscriber::registry().with(level);
    // BENCH_LAYER=none: spans recorded by the registry alone, no OpenTelemetry layer.
    let tracing = if std::env::var("BENCH_LAYER").is_ok_and(|v| v == "none") {
        tracing::Dispatch::new(registry)
    } else if std::env::var("BENCH_LAYER").is_ok_and(|v| v == "lean") {
        // BENCH_LAYER=lean: the layer without the timings it takes at each poll and the
        // thread and source location it adds to each span.
        tracing::Dispatch::new(
            registry.with(
                tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer("bench"))
                    .with_tracked_inactivity(false)
                    .with_threads(false)
                    .with_location(false),
            ),
        )
    } else {
        tracing::Dispatch::new(
            registry.with(tracing_opentelemetry::layer().with_tracer(provider.tracer("bench"))),
        )
    };

    // One publishing bus each; the "on" one registers its metrics under the recorder.
    let off_bus = eventbus_tests::publisher(&url, "bench-off").await;
    let on_bus = {
        let _metrics = metrics::set_default_local_recorder(&recorder);
        let bus = eventbus_tests::publisher(&url, "bench-on").await;
        // Its handles per event type are registered at its first publish.
        bus.publish(&ticks(1, 0)[0]).await.expect("stored");
        bus
    };
    let pick = |on: bool| if on { &on_bus } else { &off_bus };
    let mut from = 0;
    // The backlog the consumers read, published as a traced producer does: each event in a
    // trace of its own (sampled as BENCH_SAMPLE says), its `traceparent` in its headers. Both
    // parts consume it; only "on" reads the trace context.
    {
        let _tracing = tracing::dispatcher::set_default(&tracing);
        tracing::callsite::rebuild_interest_cache();
        for chunk in ticks(backlog, 0).chunks(1000) {
            for r in futures::future::join_all(chunk.iter().map(|e| on_bus.publish(e))).await {
                r.expect("stored");
            }
        }
    }
    tracing::callsite::rebuild_interest_cache();
    println!(
        "backlog: {backlog} events on nats-server {:?}",
        server.version()
    );

    let mut totals = [(Took::default(), Took::default()); 3];
    let mut ratios: [Vec<f64>; 3] = Default::default();
    let names = ["publish_all", "publish", "consume"];
    for r in 1..=rounds {
        let on_first = r % 2 == 0;
        from += n_pipelined;
        let events = ticks(n_pipelined, from);
        let p = both(on_first, &recorder, &tracing, |on| {
            pipelined(pick(on), &events)
        })
        .await;
        from += n_awaited;
        let events = ticks(n_awaited, from);
        let a = both(on_first, &recorder, &tracing, |on| {
            awaited(pick(on), &events)
        })
        .await;
        let c = both(on_first, &recorder, &tracing, |on| {
            let durable = format!("bench-{}-{r}", if on { "on" } else { "off" });
            let url = url.clone();
            async move { consume(&url, &durable, backlog).await }
        })
        .await;
        for (i, ((off, on), n)) in [(p, n_pipelined), (a, n_awaited), (c, backlog)]
            .into_iter()
            .enumerate()
        {
            totals[i].0.wall += off.wall;
            totals[i].0.cpu += off.cpu;
            totals[i].1.wall += on.wall;
            totals[i].1.cpu += on.cpu;
            let ratio = off.wall.as_secs_f64() / on.wall.as_secs_f64();
            ratios[i].push(ratio);
            println!(
                "round {r} {:<11}: off {:>7.0} ev/s {:>5.1} cpu µs/ev, on {:>7.0} ev/s {:>5.1} cpu µs/ev, ratio {ratio:.3}",
                names[i],
                n as f64 / off.wall.as_secs_f64(),
                off.cpu.as_secs_f64() * 1e6 / n as f64,
                n as f64 / on.wall.as_secs_f64(),
                on.cpu.as_secs_f64() * 1e6 / n as f64,
            );
        }
    }
    for i in 0..3 {
        ratios[i].sort_by(|a, b| a.partial_cmp(b).expect("finite"));
        let (off, on) = totals[i];
        println!(
            "{:<11}: off time / on time over all rounds {:.3} (median of rounds {:.3}); cpu off / on {:.3}",
            names[i],
            off.wall.as_secs_f64() / on.wall.as_secs_f64(),
            ratios[i][ratios[i].len() / 2],
            off.cpu.as_secs_f64() / on.cpu.as_secs_f64(),
        );
    }
    // The "on" parts recorded: show that they did.
    let handle = recorder.handle();
    let text = handle.render();
    let consumed = text
        .lines()
        .find(|l| l.starts_with("messaging_client_consumed_messages{"))
        .unwrap_or("messaging_client_consumed_messages: none");
    println!("recorded: {consumed}");
    let _ = provider.shutdown();
    println!("spans exported: {}", EXPORTED.load(Ordering::Relaxed));
    off_bus.shutdown().await.expect("shutdown");
    on_bus.shutdown().await.expect("shutdown");
}
