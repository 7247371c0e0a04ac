//! Observability (README, "Metrics" and "Seeing it run in production"): `/metrics` scraped over
//! real HTTP from a running service finds every documented metric with the values its traffic
//! implies; `/readyz` follows the server going away and coming back; `Bus::stats` agrees with
//! the server's own stream and consumer info.
//!
//! Each test runs in a process of its own (nextest), so the process-wide metrics recorder the
//! HTTP endpoint installs is this test's alone.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use eventbus::prelude::*;
use eventbus_tests::{wait_for, wait_until, NatsServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long any one condition may take to come true.
const TIMEOUT: Duration = Duration::from_secs(20);

/// `GET path` on `addr` over HTTP/1.0: the status and the body.
async fn get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The samples of a Prometheus text exposition: `(name, labels, value)`.
fn samples(text: &str) -> Vec<(String, HashMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample line");
        let value: f64 = value.parse().expect("a sample value");
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut map = HashMap::new();
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once("=\"").expect("a label");
            map.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
        }
        out.push((name.to_owned(), map, value));
    }
    out
}

/// The Prometheus name of a metric: dots become underscores.
fn prom(name: &str) -> String {
    name.replace('.', "_")
}

/// The sum of the samples of `name` whose labels include `labels`, if any sample matches.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let name = prom(name);
    let mut found = None;
    for (n, l, v) in samples(text) {
        if n == name
            && labels
                .iter()
                .all(|(k, want)| l.get(*k).map(String::as_str) == Some(want))
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

// ---------------------------------------------------------------------------------------------
// /metrics and /readyz on nats-server
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "obs_job", name = "queued")]
struct JobQueued {
    #[event(aggregate_id)]
    id: String,
    /// What the handler does with it: `ok`, `fail_once`, `panic_once`, `permanent`.
    how: String,
}

static TRIED: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[event_handler(max_deliver = 3, backoff = ["100ms"])]
async fn obs_work(event: JobQueued) -> Result<(), HandlerError> {
    let first = {
        let mut tried = TRIED.lock().unwrap();
        let first = !tried.contains(&event.id);
        tried.push(event.id.clone());
        first
    };
    match event.how.as_str() {
        "fail_once" if first => Err(HandlerError::transient("not yet")),
        "panic_once" if first => panic!("a bug, once"),
        "permanent" => Err(HandlerError::permanent("never")),
        _ => Ok(()),
    }
}

/// Starts service `service` on `url` with the endpoint on, sends it 10 events (6 handled at
/// once, 2 failing once, 1 panicking once, 1 failing for good) and 1 message that is no
/// event, and checks that `/metrics` shows every documented metric with the values this
/// traffic implies. Returns the bus and the endpoint's address.
async fn scrape_the_traffic(url: &str, service: &'static str) -> (Bus, std::net::SocketAddr) {
    let bus = eventbus::builder()
        .config(eventbus::Config {
            publish_timeout: Duration::from_millis(500),
            publish_attempts: 40,
            ..Default::default()
        })
        .no_env()
        .url(url)
        .service(service)
        .only_handlers(["obs_work"])
        .http("127.0.0.1:0".parse().unwrap())
        // The background refresh runs too (and finds no stalled consumer in this traffic).
        .stats_interval(Duration::from_millis(200))
        .reconnect_wait(Duration::from_millis(100))
        .max_reconnects(None)
        .start()
        .await
        .expect("bus starts");
    let addr = bus.http_addr().expect("the endpoint is on");
    assert_eq!(get(addr, "/healthz").await.unwrap().0, 200);
    assert_eq!(get(addr, "/readyz").await.unwrap().0, 200);
    let (status, body) = get(addr, "/asyncapi.json").await.unwrap();
    assert_eq!(status, 200, "the service's AsyncAPI document");
    let document: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(document["asyncapi"], "3.0.0", "{document}");

    // 10 events: 6 handled at once, 2 failing once, 1 panicking once, 1 failing for good;
    // and 1 message that is no event at all.
    let hows = [
        "ok",
        "ok",
        "ok",
        "ok",
        "ok",
        "ok",
        "fail_once",
        "fail_once",
        "panic_once",
        "permanent",
    ];
    for (i, how) in hows.iter().enumerate() {
        bus.publish(&JobQueued {
            id: format!("{service}-j{i}"),
            how: how.to_string(),
        })
        .await
        .unwrap();
    }
    bus.publish_raw("obs_job.bad.queued", Default::default(), "not json")
        .await
        .unwrap();

    let text = wait_for(
        TIMEOUT,
        "every event settled, as /metrics says",
        || async move {
            let (status, text) = get(addr, "/metrics").await.ok()?;
            assert_eq!(status, 200, "{text}");
            let handled = |o| {
                value(
                    &text,
                    "eventbus.handled",
                    &[("service", service), ("outcome", o)],
                )
                .unwrap_or(0.0)
            };
            let settled = handled("acked") + handled("dead_lettered") + handled("undecodable");
            let idle = value(
                &text,
                "eventbus.consumer.ack_pending",
                &[("service", service)],
            ) == Some(0.0);
            (settled == 11.0 && idle).then_some(text)
        },
    )
    .await;

    let h = [
        ("service", service),
        ("handler", "obs_work"),
        ("stream", "OBS_JOB"),
    ];
    let with = |extra: (&'static str, &'static str)| {
        let mut l = h.to_vec();
        l.push(extra);
        l
    };
    let expect = |name: &str, labels: &[(&str, &str)], want: f64| {
        assert_eq!(
            value(&text, name, labels),
            Some(want),
            "{name} {labels:?} in:\n{text}"
        );
    };
    // Deliveries: 11 first ones, 3 redeliveries (2 failures, 1 panic).
    expect("messaging.client.consumed.messages", &h, 14.0);
    expect("eventbus.redeliveries", &h, 3.0);
    expect("eventbus.handled", &with(("outcome", "acked")), 9.0);
    expect("eventbus.handled", &with(("outcome", "retried")), 2.0);
    expect("eventbus.handled", &with(("outcome", "panicked")), 1.0);
    expect("eventbus.handled", &with(("outcome", "dead_lettered")), 1.0);
    expect("eventbus.handled", &with(("outcome", "undecodable")), 1.0);
    expect(
        "eventbus.handled",
        &with(("outcome", "unacknowledged")),
        0.0,
    );
    expect("eventbus.dead_letters", &with(("reason", "permanent")), 1.0);
    expect(
        "eventbus.dead_letters",
        &with(("reason", "undecodable")),
        1.0,
    );
    expect(
        "eventbus.dead_letters",
        &with(("reason", "max_deliver")),
        0.0,
    );
    expect("eventbus.in_flight", &h, 0.0);
    expect("messaging.process.duration_count", &h, 14.0);
    // Publishes: 10 events and 1 raw message, all stored.
    let job = [("service", service), ("event_type", "obs_job.queued.v1")];
    expect("messaging.client.sent.messages", &job, 10.0);
    expect(
        "messaging.client.sent.messages",
        &[("service", service), ("event_type", "raw")],
        1.0,
    );
    expect("messaging.client.operation.duration_count", &job, 10.0);
    expect("eventbus.publish.retries", &[("service", service)], 0.0);
    // Lag and sizes, as the server reports them.
    expect("eventbus.consumer.pending", &h, 0.0);
    expect("eventbus.consumer.ack_pending", &h, 0.0);
    expect("eventbus.consumer.redelivered", &h, 0.0);
    expect("eventbus.stream.messages", &[("stream", "OBS_JOB")], 11.0);
    expect("eventbus.stream.consumers", &[("stream", "OBS_JOB")], 1.0);
    expect("eventbus.stream.messages", &[("stream", "DLQ")], 2.0);
    assert!(value(&text, "eventbus.stream.bytes", &[("stream", "OBS_JOB")]).unwrap() > 0.0);
    expect(
        "eventbus.connection.state",
        &[("service", service), ("state", "connected")],
        1.0,
    );
    expect(
        "eventbus.connection.reconnects",
        &[("service", service)],
        0.0,
    );
    expect("eventbus.consumer.stalls", &h, 0.0);
    // Every metric the README documents is there.
    for name in eventbus::__private::METRIC_NAMES {
        assert!(
            text.contains(&prom(name)),
            "metric {name} is not in /metrics:\n{text}"
        );
    }
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README");
    for name in eventbus::__private::METRIC_NAMES {
        assert!(
            readme.contains(&format!("`{name}`")),
            "the README's table of metrics lacks `{name}`"
        );
    }

    (bus, addr)
}

#[tokio::test]
async fn metrics_are_scraped_over_http_with_the_values_the_traffic_implies() {
    let mut server = NatsServer::start().await;
    let (bus, addr) = scrape_the_traffic(&server.url(), "obs").await;
    let h = [
        ("service", "obs"),
        ("handler", "obs_work"),
        ("stream", "OBS_JOB"),
    ];
    let job = [("service", "obs"), ("event_type", "obs_job.queued.v1")];

    // The server goes away: not ready; a publish meanwhile is sent again until it is stored.
    server.stop();
    wait_until(TIMEOUT, "/readyz says not ready", || async move {
        matches!(get(addr, "/readyz").await, Ok((503, body)) if body.contains("not connected"))
    })
    .await;
    assert_eq!(
        get(addr, "/healthz").await.unwrap().0,
        200,
        "alive all the same"
    );
    let publishing = {
        let bus = bus.clone();
        tokio::spawn(async move {
            bus.publish(&JobQueued {
                id: "late".into(),
                how: "ok".into(),
            })
            .await
        })
    };
    wait_until(TIMEOUT, "a publish was sent again", || async move {
        let text = get(addr, "/metrics").await.map(|r| r.1).unwrap_or_default();
        value(&text, "eventbus.publish.retries", &[("service", "obs")]).unwrap_or(0.0) >= 1.0
    })
    .await;
    server.start_again().await;
    wait_until(TIMEOUT, "/readyz says ready again", || async move {
        matches!(get(addr, "/readyz").await, Ok((200, _)))
    })
    .await;
    publishing
        .await
        .unwrap()
        .expect("the publish made while the server was away is stored");
    let last = std::sync::Arc::new(Mutex::new(String::new()));
    let seen = last.clone();
    let text = tokio::time::timeout(TIMEOUT, async move {
        loop {
            let text = get(addr, "/metrics").await.map(|r| r.1).unwrap_or_default();
            let late = TRIED.lock().unwrap().iter().any(|id| id == "late");
            if late && value(&text, "eventbus.handled", &[("outcome", "acked")]) >= Some(10.0) {
                return text;
            }
            *seen.lock().unwrap() = text;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the late event is not handled:\n{}", last.lock().unwrap()));
    // A SIGKILL may lose the server's record of the last acks: those events come again (at
    // least once), each a redelivery and one more ack.
    let acked = value(&text, "eventbus.handled", &[("outcome", "acked")]).unwrap();
    let redelivered = value(&text, "eventbus.redeliveries", &h).unwrap();
    assert_eq!(acked - 10.0, redelivered - 3.0, "{text}");
    assert_eq!(
        value(
            &text,
            "eventbus.connection.reconnects",
            &[("service", "obs")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "messaging.client.sent.messages", &job),
        Some(11.0),
        "{text}"
    );

    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// One trace across two services
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "obs_order", name = "placed")]
struct OrderPlaced {
    #[event(aggregate_id)]
    id: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "obs_invoice", name = "issued")]
struct InvoiceIssued {
    #[event(aggregate_id)]
    id: String,
}

/// The back service's handler: bills an order, publishing on.
#[event_handler]
async fn obs_bill(event: OrderPlaced, ctx: EventContext) -> Result<(), HandlerError> {
    ctx.publish(&InvoiceIssued {
        id: format!("inv-{}", event.id),
    })
    .await?;
    Ok(())
}

mod otel {
    use opentelemetry::trace::{SpanId, SpanKind, TraceId};
    use opentelemetry::Value;
    use opentelemetry_sdk::trace::SpanData;

    /// The span named `name`; panics listing the spans there are.
    pub(super) fn span<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
        spans.iter().find(|s| s.name == name).unwrap_or_else(|| {
            panic!(
                "no span `{name}` among {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        })
    }

    /// The attribute `key` of `span`, as a string.
    pub(super) fn attr(span: &SpanData, key: &str) -> String {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| match &kv.value {
                Value::String(s) => s.to_string(),
                other => other.to_string(),
            })
            .unwrap_or_else(|| panic!("span `{}` has no attribute `{key}`", span.name))
    }

    pub(super) fn trace_of(span: &SpanData) -> TraceId {
        span.span_context.trace_id()
    }

    pub(super) fn id_of(span: &SpanData) -> SpanId {
        span.span_context.span_id()
    }

    pub(super) fn kind_of(span: &SpanData) -> SpanKind {
        span.span_kind.clone()
    }
}

/// Two services on `url`: the front publishes an order inside a span of its own; the back
/// handles it and publishes an invoice. One trace holds the front's span, the publish, the
/// handling and the second publish, parent to child.
async fn one_trace_across_two_services(url: &str) {
    use opentelemetry::trace::{SpanKind, TracerProvider as _};
    use tracing::Instrument;
    use tracing_subscriber::layer::SubscriberExt;

    let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("observe-test")));
    // The test's runtime has one thread: every task of both buses sees this subscriber.
    let _default = tracing::subscriber::set_default(subscriber);

    let back = eventbus::builder()
        .no_env()
        .url(url)
        .service("obs-back")
        .only_handlers(["obs_bill"])
        .start()
        .await
        .expect("the back service starts");
    let front = eventbus_tests::publisher(url, "obs-front").await;

    let published = front
        .publish(&OrderPlaced { id: "o1".into() })
        .instrument(tracing::info_span!("checkout"))
        .await
        .unwrap();

    let spans = wait_for(TIMEOUT, "the spans of both services exported", || {
        let exporter = exporter.clone();
        async move {
            let spans = exporter.get_finished_spans().ok()?;
            let names = [
                "checkout",
                "publish obs_order.{id}.placed",
                "process obs_order.{id}.placed",
                "publish obs_invoice.{id}.issued",
            ];
            names
                .iter()
                .all(|n| spans.iter().any(|s| s.name == *n))
                .then_some(spans)
        }
    })
    .await;
    let checkout = otel::span(&spans, "checkout");
    let publish = otel::span(&spans, "publish obs_order.{id}.placed");
    let process = otel::span(&spans, "process obs_order.{id}.placed");
    let publish_on = otel::span(&spans, "publish obs_invoice.{id}.issued");

    // One trace, parent to child.
    let trace = otel::trace_of(checkout);
    for s in [publish, process, publish_on] {
        assert_eq!(
            otel::trace_of(s),
            trace,
            "span `{}` is in the trace",
            s.name
        );
    }
    assert_eq!(publish.parent_span_id, otel::id_of(checkout));
    assert_eq!(
        process.parent_span_id,
        otel::id_of(publish),
        "the handler's parent is the publish"
    );
    assert!(process.parent_span_is_remote, "across services");
    assert_eq!(publish_on.parent_span_id, otel::id_of(process));
    // ... and the handler links to the producer's context as well.
    assert!(
        process
            .links
            .iter()
            .any(|l| l.span_context.span_id() == otel::id_of(publish)),
        "the process span links to the publish: {:?}",
        process.links
    );

    // Named and attributed per the messaging conventions.
    assert_eq!(otel::kind_of(publish), SpanKind::Producer);
    assert_eq!(otel::kind_of(process), SpanKind::Consumer);
    assert_eq!(otel::kind_of(publish_on), SpanKind::Producer);
    for s in [publish, process, publish_on] {
        assert_eq!(otel::attr(s, "messaging.system"), "nats");
    }
    for (s, operation) in [(publish, "publish"), (process, "process")] {
        assert_eq!(otel::attr(s, "messaging.operation.name"), operation);
        assert_eq!(
            otel::attr(s, "messaging.destination.name"),
            "obs_order.o1.placed"
        );
        assert_eq!(
            otel::attr(s, "messaging.destination.template"),
            "obs_order.{id}.placed"
        );
        assert_eq!(otel::attr(s, "messaging.message.id"), published.id);
    }
    assert_eq!(
        otel::attr(process, "messaging.consumer.group.name"),
        "obs-back-obs_bill"
    );
    assert_eq!(
        otel::attr(process, "messaging.nats.message.delivery_count"),
        "1"
    );
    assert_eq!(
        otel::attr(publish_on, "messaging.destination.name"),
        "obs_invoice.inv-o1.issued"
    );

    // The stored invoice carries the trace on the wire, its parent the handler's span.
    let invoice = wait_for(TIMEOUT, "the invoice stored", || {
        let front = front.clone();
        async move {
            let read = front.read::<InvoiceIssued>("inv-o1").collect().await.ok()?;
            read.into_iter().next()
        }
    })
    .await;
    let traceparent = invoice
        .metadata
        .traceparent
        .clone()
        .expect("the invoice carries a traceparent");
    assert_eq!(
        traceparent,
        format!("00-{trace}-{}-01", otel::id_of(publish_on)),
        "the traceparent of the invoice's publish span"
    );

    front.shutdown().await.unwrap();
    back.shutdown().await.unwrap();
}

#[tokio::test]
async fn one_trace_across_two_services_on_nats() {
    let server = NatsServer::start().await;
    one_trace_across_two_services(&server.url()).await;
}

#[tokio::test]
async fn one_trace_across_two_services_in_process() {
    one_trace_across_two_services("memory://observe-trace").await;
}

/// With `tracing` alone (no OpenTelemetry layer), a handler's publishes carry the received
/// trace context on unchanged: the trace id survives a service that records no spans.
#[tokio::test]
async fn without_opentelemetry_a_handler_carries_the_received_trace_context_on() {
    let url = "memory://observe-carry";
    let back = eventbus::builder()
        .no_env()
        .url(url)
        .service("obs-back")
        .only_handlers(["obs_bill"])
        .start()
        .await
        .unwrap();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    back.publish_with(
        &OrderPlaced { id: "o2".into() },
        eventbus::PublishOptions {
            traceparent: Some(traceparent.into()),
            tracestate: Some("vendor=1".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let invoice = wait_for(TIMEOUT, "the invoice stored", || {
        let back = back.clone();
        async move {
            let read = back.read::<InvoiceIssued>("inv-o2").collect().await.ok()?;
            read.into_iter().next()
        }
    })
    .await;
    assert_eq!(invoice.metadata.traceparent.as_deref(), Some(traceparent));
    assert_eq!(
        invoice
            .metadata
            .headers
            .get("tracestate")
            .map(|v| v.as_str()),
        Some("vendor=1")
    );
    back.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// bus.stats() against the server's own figures
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "obs_statn", name = "noted")]
struct NotedOnNats {
    #[event(aggregate_id)]
    id: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "obs_statm", name = "noted")]
struct NotedInProcess {
    #[event(aggregate_id)]
    id: String,
}

/// Handlers wait at their gate until the test opens it.
static GATE_NATS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);
static GATE_MEM: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);

#[event_handler(concurrency = 2)]
async fn obs_stat_nats(_event: NotedOnNats) -> Result<(), HandlerError> {
    GATE_NATS.acquire().await?.forget();
    Ok(())
}

#[event_handler(concurrency = 2)]
async fn obs_stat_mem(_event: NotedInProcess) -> Result<(), HandlerError> {
    GATE_MEM.acquire().await?.forget();
    Ok(())
}

/// The server's answer to a `$JS.API` info request.
async fn js_info(client: &async_nats::Client, subject: String) -> serde_json::Value {
    let reply = client
        .request(subject.clone(), "".into())
        .await
        .unwrap_or_else(|e| panic!("{subject}: {e}"));
    serde_json::from_slice(&reply.payload).expect("JSON")
}

/// Asserts that `stats` agrees with the server's stream and consumer info.
async fn assert_agrees_with_the_server(
    client: &async_nats::Client,
    stats: &eventbus::Stats,
    stream: &str,
    handler: &str,
) {
    let s = stats.stream(stream).expect("the stream in stats");
    let info = js_info(client, format!("$JS.API.STREAM.INFO.{stream}")).await;
    let state = &info["state"];
    assert_eq!(s.messages, state["messages"].as_u64().unwrap(), "{info}");
    assert_eq!(s.bytes, state["bytes"].as_u64().unwrap(), "{info}");
    assert_eq!(
        s.first_sequence,
        state["first_seq"].as_u64().unwrap(),
        "{info}"
    );
    assert_eq!(
        s.last_sequence,
        state["last_seq"].as_u64().unwrap(),
        "{info}"
    );
    assert_eq!(
        s.consumers as u64,
        state["consumer_count"].as_u64().unwrap(),
        "{info}"
    );
    let h = stats.handler(handler).expect("the handler in stats");
    let info = js_info(
        client,
        format!("$JS.API.CONSUMER.INFO.{stream}.{}", h.consumer),
    )
    .await;
    assert_eq!(h.pending, info["num_pending"].as_u64().unwrap(), "{info}");
    assert_eq!(
        h.ack_pending,
        info["num_ack_pending"].as_u64().unwrap(),
        "{info}"
    );
    assert_eq!(
        h.redelivered,
        info["num_redelivered"].as_u64().unwrap(),
        "{info}"
    );
    assert_eq!(h.waiting, info["num_waiting"].as_u64().unwrap(), "{info}");
}

/// Publishes 10 events to a handler that holds 2 at a time: 8 pending, 2 awaiting their ack;
/// then lets them through: none pending, 10 acked.
async fn stats_follow_the_consumer<E: EventSet>(
    url: &str,
    handler: &str,
    stream: &str,
    event: fn(String) -> E,
    gate: &'static tokio::sync::Semaphore,
    server: Option<&async_nats::Client>,
) {
    let bus = eventbus::builder()
        .no_env()
        .url(url)
        .service("obs-stat")
        .only_handlers([handler])
        .start()
        .await
        .unwrap();
    let events: Vec<E> = (0..10).map(|i| event(format!("n{i}"))).collect();
    for r in bus.publish_all(&events).await {
        r.unwrap();
    }
    let stats = wait_for(TIMEOUT, "two events in the handler's hands", || {
        let bus = bus.clone();
        async move {
            let stats = bus.stats().await.ok()?;
            let h = stats.handler(handler)?;
            (h.ack_pending == 2 && h.pending == 8).then_some(stats)
        }
    })
    .await;
    let s = stats.stream(stream).expect("the handler's stream");
    assert_eq!(
        (s.messages, s.first_sequence, s.last_sequence, s.consumers),
        (10, 1, 10, 1)
    );
    assert!(s.bytes > 0);
    let h = stats.handler(handler).unwrap();
    assert_eq!((h.stream.as_str(), h.redelivered, h.acked), (stream, 0, 0));
    assert_eq!(h.consumer, format!("obs-stat-{handler}"));
    if let Some(client) = server {
        assert_agrees_with_the_server(client, &stats, stream, handler).await;
    }

    gate.add_permits(10);
    let stats = wait_for(TIMEOUT, "every event acked", || {
        let bus = bus.clone();
        async move {
            let stats = bus.stats().await.ok()?;
            let h = stats.handler(handler)?;
            (h.acked == 10 && h.ack_pending == 0 && h.pending == 0).then_some(stats)
        }
    })
    .await;
    if let Some(client) = server {
        assert_agrees_with_the_server(client, &stats, stream, handler).await;
    }
    bus.shutdown().await.unwrap();
}

#[tokio::test]
async fn stats_agree_with_the_servers_stream_and_consumer_info() {
    let server = NatsServer::start().await;
    let client = server.connect().await;
    stats_follow_the_consumer(
        &server.url(),
        "obs_stat_nats",
        "OBS_STATN",
        |id| NotedOnNats { id },
        &GATE_NATS,
        Some(&client),
    )
    .await;
}

#[tokio::test]
async fn stats_follow_the_consumer_in_process() {
    stats_follow_the_consumer(
        "memory://observe-stats",
        "obs_stat_mem",
        "OBS_STATM",
        |id| NotedInProcess { id },
        &GATE_MEM,
        None,
    )
    .await;
}

/// An endpoint address already in use fails the start, naming the address, before the bus
/// connects or runs anything.
#[tokio::test]
async fn an_endpoint_address_in_use_fails_the_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let e = eventbus::builder()
        .no_env()
        .url("memory://observe-taken")
        .service("obs-taken")
        .http(addr)
        .start()
        .await
        .expect_err("the address is taken");
    assert_eq!(e.kind(), eventbus::ErrorKind::Config);
    assert!(
        e.to_string()
            .contains(&format!("cannot listen on {addr} for the HTTP endpoint")),
        "{e}"
    );
}

/// The same traffic on the in-process broker: the same metrics, the same values.
#[tokio::test]
async fn metrics_are_scraped_over_http_in_process() {
    let (bus, addr) = scrape_the_traffic("memory://observe-metrics", "obs-mem").await;
    assert_eq!(get(addr, "/readyz").await.unwrap().0, 200);
    bus.shutdown().await.unwrap();
    wait_until(
        TIMEOUT,
        "/readyz says not ready once shut down",
        || async move { !matches!(get(addr, "/readyz").await, Ok((200, _))) },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// A stalled consumer, on nats-server
// ---------------------------------------------------------------------------------------------

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "obs_stall", name = "noted")]
struct NotedWhileStalled {
    #[event(aggregate_id)]
    id: String,
}

static STALL_HANDLED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[event_handler]
async fn obs_stall(_event: NotedWhileStalled) -> Result<(), HandlerError> {
    STALL_HANDLED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    Ok(())
}

/// Pauses (`until` some time) or resumes (`None`) a consumer: `$JS.API.CONSUMER.PAUSE`,
/// nats-server 2.11 and later. The server then holds the consumer's events and delivers
/// nothing, though its pull requests stay open: a consumer stalled at the server, as after a
/// lost pull or a leader change that left it behind.
async fn pause(client: &async_nats::Client, stream: &str, consumer: &str, until: Option<&str>) {
    let body = match until {
        Some(t) => serde_json::json!({ "pause_until": t }),
        None => serde_json::json!({}),
    };
    let subject = format!("$JS.API.CONSUMER.PAUSE.{stream}.{consumer}");
    let reply = client
        .request(subject.clone(), body.to_string().into())
        .await
        .unwrap_or_else(|e| panic!("{subject}: {e}"));
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload).expect("JSON");
    assert_eq!(reply["paused"], until.is_some(), "{subject}: {reply}");
}

#[tokio::test]
async fn a_consumer_that_receives_nothing_while_events_wait_is_found_stalled_and_pulled_anew() {
    let server = NatsServer::start().await;
    let client = server.connect().await;
    let bus = eventbus::builder()
        .no_env()
        .url(server.url())
        .service("obs-stall")
        .only_handlers(["obs_stall"])
        .stats_interval(Duration::from_millis(500))
        .http("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap();
    let addr = bus.http_addr().expect("the endpoint's address");
    let (stream, consumer) = ("OBS_STALL", "obs-stall-obs_stall");
    pause(&client, stream, consumer, Some("2099-01-01T00:00:00Z")).await;

    let events: Vec<_> = (0..5)
        .map(|i| NotedWhileStalled {
            id: format!("s{i}"),
        })
        .collect();
    for r in bus.publish_all(&events).await {
        r.unwrap();
    }
    // Pending at the server, none in hand, nothing received: after two looks and the
    // pull's own silence detection (12 s), counted and pulled anew.
    let stats = wait_for(
        Duration::from_secs(40),
        "the consumer found stalled",
        || {
            let bus = bus.clone();
            async move {
                let stats = bus.stats().await.ok()?;
                let h = stats.handler("obs_stall")?;
                (h.stalls >= 1).then_some(stats)
            }
        },
    )
    .await;
    let h = stats.handler("obs_stall").unwrap();
    assert_eq!((h.pending, h.ack_pending, h.acked), (5, 0, 0), "{h:?}");
    assert_eq!(STALL_HANDLED.load(std::sync::atomic::Ordering::SeqCst), 0);
    let (status, text) = get(addr, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    let stalls = value(
        &text,
        "eventbus.consumer.stalls",
        &[("handler", "obs_stall"), ("stream", stream)],
    );
    assert!(stalls.is_some_and(|n| n >= 1.0), "{text}");

    // The worker pulled anew and still pulls: once the server delivers again, every event is
    // handled.
    pause(&client, stream, consumer, None).await;
    wait_for(TIMEOUT, "every event handled after the stall", || {
        let bus = bus.clone();
        async move {
            let stats = bus.stats().await.ok()?;
            let h = stats.handler("obs_stall")?;
            (STALL_HANDLED.load(std::sync::atomic::Ordering::SeqCst) == 5
                && h.acked == 5
                && h.pending == 0)
                .then_some(())
        }
    })
    .await;
    bus.shutdown().await.unwrap();
}
