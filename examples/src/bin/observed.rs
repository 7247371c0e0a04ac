//! A service seen from outside: metrics, health and readiness over HTTP.
//!
//! Run: `cargo run -p eventbus-examples --bin observed` (the in-process broker), or against a
//! server: `EVENTBUS_URL=nats://127.0.0.1:4222 cargo run -p eventbus-examples --bin observed`.
//! `EVENTBUS_HTTP_ADDR` moves the endpoint (default here `127.0.0.1:9090`). It needs
//! eventbus's `http` feature (see this crate's Cargo.toml).
//!
//! It publishes a parcel every second; `record_parcel` handles them and fails every fourth
//! once (a retry shows in the metrics). Meanwhile:
//!
//! ```text
//! curl -s localhost:9090/metrics | grep -E '^(eventbus|messaging)_'
//! curl -si localhost:9090/readyz      # 200 ready; 503 "not ready: ..." while the server is away
//! curl -si localhost:9090/healthz
//! ```
//!
//! With `--once` it publishes five parcels, prints its own `/metrics` and `stats()` and exits.

use std::net::SocketAddr;
use std::time::Duration;

use eventbus::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "parcel", name = "shipped")]
struct ParcelShipped {
    #[event(aggregate_id)]
    parcel_id: String,
    n: u64,
}

#[event_handler(max_deliver = 3, backoff = ["200ms"])]
async fn record_parcel(event: ParcelShipped, ctx: EventContext) -> Result<(), HandlerError> {
    if event.n % 4 == 3 && ctx.attempt() == 1 {
        return Err(HandlerError::transient("the carrier's API timed out"));
    }
    println!(
        "recorded parcel {} (attempt {})",
        event.parcel_id,
        ctx.attempt()
    );
    Ok(())
}

/// `GET path` on the service's own endpoint: the body.
async fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or(out))
}

#[tokio::main]
async fn main() -> Result<(), eventbus::Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,eventbus=info".into()),
        )
        .init();
    let once = std::env::args().any(|a| a == "--once");
    let mut builder = eventbus::builder()
        .service("parcels")
        .only_handlers(["record_parcel"]);
    if std::env::var_os("EVENTBUS_HTTP_ADDR").is_none() {
        builder = builder.http("127.0.0.1:9090".parse().expect("an address"));
    }
    let bus = builder.start().await?;
    let addr = bus.http_addr().expect("the endpoint is on");
    println!("serving http://{addr}/metrics, /healthz, /readyz");

    let mut n = 0;
    loop {
        bus.publish(&ParcelShipped {
            parcel_id: format!("p{n}"),
            n,
        })
        .await?;
        n += 1;
        if once && n == 5 {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    if once {
        // Five handled (one of them on its second attempt): then show what an operator sees.
        while bus.stats().await?.handler("record_parcel").map(|h| h.acked) < Some(5) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let metrics = get(addr, "/metrics").await.expect("GET /metrics");
        for line in metrics
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            println!("{line}");
        }
        println!("{:#?}", bus.stats().await?);
        println!(
            "/readyz: {}",
            get(addr, "/readyz").await.expect("GET /readyz").trim()
        );
    }
    bus.shutdown().await
}
