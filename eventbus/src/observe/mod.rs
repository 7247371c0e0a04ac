//! Observability below everything that publishes or handles: the metrics eventbus records
//! (`metrics.rs`: names, labels and pre-registered handles) and the trace context it carries
//! across services (`trace.rs`: spans named per the OpenTelemetry messaging conventions,
//! W3C `traceparent` / `tracestate` written and read). It imports nothing of eventbus: the
//! modules that publish (`publish.rs`), handle (`dispatch/`) and watch the connection
//! (`bus/start.rs`) call into it with what they know.
//!
//! The statistics by API (`Bus::stats`) are `stats.rs`; the HTTP endpoint is `http.rs`.

pub(crate) mod metrics;
pub(crate) mod trace;
