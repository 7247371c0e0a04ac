//! The HTTP endpoint (feature `http`, setting `EVENTBUS_HTTP_ADDR` or `Builder::http`):
//!
//! - `/metrics`: every metric of `observe/metrics.rs` in the Prometheus text format, through
//!   a Prometheus recorder that eventbus installs as the process's `metrics` recorder (the
//!   lag and size gauges are refreshed first);
//! - `/healthz`: 200 while the process serves;
//! - `/readyz`: 200 when connected, provisioned and every handler's worker runs; 503 with the
//!   reason otherwise (the server out of reach, a shutdown begun, a worker gone);
//! - `/asyncapi.json`: the service's AsyncAPI document (`Bus::asyncapi`), made once at start.
//!
//! It holds what it reports on (`Health`), never the bus: the bus's shutdown stops it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State as AxumState;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::watch;

use crate::backend::ConnectionState;
use crate::error::{Error, ErrorKind};
use crate::stats::Sources;

/// A provider of a document served over HTTP (the AsyncAPI document).
pub(crate) type Document = Arc<dyn Fn() -> String + Send + Sync>;

/// How long a scrape waits for fresh figures from the server before it answers with the last.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(2);

/// The buckets of the duration histograms, in seconds.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process's Prometheus recorder, installed by the first bus that serves `/metrics`;
/// `None` when the application had installed a recorder of its own.
static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs eventbus's Prometheus recorder, unless a recorder is installed already. Called
/// before a bus registers its metrics, so its handles record into it.
pub(crate) fn install_recorder() -> Option<PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .expect("the buckets are not empty")
                .build_recorder();
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => Some(handle),
                Err(_) => {
                    tracing::warn!(target: "eventbus", "a metrics recorder of the application's is installed: /metrics is not served (the metrics go to that recorder)");
                    None
                }
            }
        })
        .clone()
}

/// What `/readyz` reports on.
pub(crate) struct Health {
    pub(crate) state: watch::Receiver<ConnectionState>,
    /// Turns true when the bus shuts down.
    pub(crate) stopping: watch::Receiver<bool>,
    pub(crate) workers: usize,
    /// Workers still running (each one's task counts itself out when it ends).
    pub(crate) alive: Arc<AtomicUsize>,
}

impl Health {
    /// `Ok` when ready, else why not.
    fn ready(&self) -> Result<(), String> {
        if *self.stopping.borrow() {
            return Err("shutting down".into());
        }
        match *self.state.borrow() {
            ConnectionState::Connected => {}
            ConnectionState::Reconnecting => {
                return Err("not connected to the server: reconnecting".into())
            }
            _ => return Err("the connection is closed".into()),
        }
        let alive = self.alive.load(Ordering::Relaxed);
        if alive < self.workers {
            return Err(format!(
                "{} of {} handler workers are not running",
                self.workers - alive,
                self.workers
            ));
        }
        Ok(())
    }
}

struct Endpoint {
    health: Health,
    stats: Arc<Sources>,
    prometheus: Option<PrometheusHandle>,
    asyncapi: Option<Document>,
}

/// Listens on `addr` for the endpoint: before the bus connects, so an address in use fails
/// the start at once.
pub(crate) async fn listen(addr: SocketAddr) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Error::new(
            ErrorKind::Config,
            format!("cannot listen on {addr} for the HTTP endpoint"),
        )
        .with_source(e)
    })
}

/// Serves the endpoint on `listener` until the bus stops; returns the address it listens on.
pub(crate) fn serve(
    listener: tokio::net::TcpListener,
    health: Health,
    stats: Arc<Sources>,
    asyncapi: Option<Document>,
) -> SocketAddr {
    let bound = listener
        .local_addr()
        .expect("a bound listener has an address");
    let mut stopping = health.stopping.clone();
    let endpoint = Arc::new(Endpoint {
        health,
        stats,
        prometheus: install_recorder(),
        asyncapi,
    });
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/asyncapi.json", get(asyncapi_json))
        .with_state(endpoint);
    tokio::spawn(async move {
        let stopped = async move {
            let _ = stopping.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stopped)
            .await
        {
            tracing::error!(target: "eventbus", error = %e, "the HTTP endpoint stopped");
        }
    });
    tracing::info!(target: "eventbus", addr = %bound, "HTTP endpoint: /metrics, /healthz, /readyz");
    bound
}

async fn metrics_text(AxumState(e): AxumState<Arc<Endpoint>>) -> Response {
    let Some(handle) = &e.prometheus else {
        return (
            StatusCode::NOT_FOUND,
            "an application's own metrics recorder is installed; eventbus does not serve its metrics\n",
        )
            .into_response();
    };
    // Fresh lag and sizes; the last ones if the server does not answer in time.
    match tokio::time::timeout(REFRESH_TIMEOUT, e.stats.gather()).await {
        Ok(Ok(_)) => {}
        Ok(Err(err)) => {
            tracing::debug!(target: "eventbus", error = %err, "cannot refresh the statistics for /metrics")
        }
        Err(_) => tracing::debug!(target: "eventbus", "the statistics took too long for /metrics"),
    }
    handle.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

async fn readyz(AxumState(e): AxumState<Arc<Endpoint>>) -> Response {
    match e.health.ready() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()).into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn asyncapi_json(AxumState(e): AxumState<Arc<Endpoint>>) -> Response {
    match &e.asyncapi {
        Some(document) => {
            ([(header::CONTENT_TYPE, "application/json")], document()).into_response()
        }
        None => (StatusCode::NOT_FOUND, "no AsyncAPI document for this bus\n").into_response(),
    }
}
