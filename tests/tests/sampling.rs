//! Traces not sampled (README, "What it costs"): with an OpenTelemetry layer and a parent-based
//! sampler, a delivery whose trace is not sampled is handled without a `process` span, and what
//! its handler publishes stays in that trace, not sampled either; a sampled trace next to it is
//! recorded whole; a publish that starts a trace its sampler drops writes that trace on, not
//! sampled. On a real server and on the in-process broker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus::prelude::*;
use eventbus_tests::{wait_for, NatsServer};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// How long any one condition may take to come true.
const TIMEOUT: Duration = Duration::from_secs(20);

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "smp_order", name = "placed")]
struct OrderPlaced {
    #[event(aggregate_id)]
    id: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "smp_invoice", name = "issued")]
struct InvoiceIssued {
    #[event(aggregate_id)]
    id: String,
}

/// The back service's handler: bills an order, publishing on.
#[event_handler]
async fn smp_bill(event: OrderPlaced, ctx: EventContext) -> Result<(), HandlerError> {
    ctx.publish(&InvoiceIssued {
        id: format!("inv-{}", event.id),
    })
    .await?;
    Ok(())
}

/// Counts the `tracing` spans made, by name.
#[derive(Clone, Default)]
struct Made(Arc<Mutex<HashMap<String, usize>>>);

impl<S> Layer<S> for Made
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _id: &tracing::span::Id,
        _ctx: Context<'_, S>,
    ) {
        *self
            .0
            .lock()
            .expect("made")
            .entry(attrs.metadata().name().to_owned())
            .or_default() += 1;
    }
}

/// A remote context of a new trace, sampled or not, as an upstream service would send it.
fn upstream(sampled: bool, n: u8) -> opentelemetry::Context {
    let sc = SpanContext::new(
        TraceId::from_bytes([n; 16]),
        SpanId::from_bytes([n; 8]),
        if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        },
        true,
        TraceState::default(),
    );
    opentelemetry::Context::new().with_remote_span_context(sc)
}

/// Makes this thread's subscriber an OpenTelemetry layer whose tracer samples new traces with
/// `root` (parent-based: a trace with a parent keeps its parent's decision) and exports to
/// memory, and a layer that counts the spans made. The test's runtime has one thread: every
/// task of the test's buses sees this subscriber while the guard lives.
fn traced(
    root: opentelemetry_sdk::trace::Sampler,
) -> (
    opentelemetry_sdk::trace::InMemorySpanExporter,
    Made,
    tracing::subscriber::DefaultGuard,
) {
    traced_with(root, false)
}

/// [`traced`], the provider also set as the global tracer provider if `global`.
fn traced_with(
    root: opentelemetry_sdk::trace::Sampler,
    global: bool,
) -> (
    opentelemetry_sdk::trace::InMemorySpanExporter,
    Made,
    tracing::subscriber::DefaultGuard,
) {
    let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .with_sampler(opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
            root,
        )))
        .build();
    if global {
        opentelemetry::global::set_tracer_provider(provider.clone());
    }
    let made = Made::default();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("sampling-test")))
        .with(made.clone());
    (exporter, made, tracing::subscriber::set_default(subscriber))
}

/// The front service (publishes only) and the back service (bills orders, publishing
/// invoices).
async fn services(url: &str) -> (eventbus::Bus, eventbus::Bus) {
    let back = eventbus::builder()
        .no_env()
        .url(url)
        .service("smp-back")
        .only_handlers(["smp_bill"])
        .start()
        .await
        .expect("the back service starts");
    (eventbus_tests::publisher(url, "smp-front").await, back)
}

/// The traceparent the stored invoice of order `id` carries.
async fn invoice_traceparent(bus: &eventbus::Bus, id: &str) -> String {
    let aggregate = format!("inv-{id}");
    let invoice = wait_for(TIMEOUT, format!("the invoice of {id} stored"), || {
        let bus = bus.clone();
        let aggregate = aggregate.clone();
        async move {
            let read = bus.read::<InvoiceIssued>(&aggregate).collect().await.ok()?;
            read.into_iter().next()
        }
    })
    .await;
    invoice
        .metadata
        .traceparent
        .clone()
        .expect("the invoice carries a traceparent")
}

async fn a_trace_not_sampled_makes_no_span(url: &str) {
    use opentelemetry::context::FutureExt;

    let (exporter, made, _default) = traced(opentelemetry_sdk::trace::Sampler::AlwaysOn);
    let (front, back) = services(url).await;

    // Not sampled upstream: the front's publish, the handling and the invoice's publish drop it.
    let dropped = upstream(false, 1);
    front
        .publish(&OrderPlaced { id: "o1".into() })
        .with_context(dropped.clone())
        .await
        .unwrap();
    let traceparent = invoice_traceparent(&front, "o1").await;
    let trace = dropped.span().span_context().trace_id();
    assert!(
        traceparent.starts_with(&format!("00-{trace}-")) && traceparent.ends_with("-00"),
        "the invoice stays in the trace, not sampled: {traceparent}"
    );
    assert_eq!(
        made.0.lock().expect("made").get("process"),
        None,
        "no span for a delivery of a trace not sampled"
    );

    // Sampled upstream: recorded whole, parent to child.
    let kept = upstream(true, 2);
    front
        .publish(&OrderPlaced { id: "o2".into() })
        .with_context(kept.clone())
        .await
        .unwrap();
    let traceparent = invoice_traceparent(&front, "o2").await;
    let trace = kept.span().span_context().trace_id();
    assert!(
        traceparent.starts_with(&format!("00-{trace}-")) && traceparent.ends_with("-01"),
        "the invoice is in the sampled trace: {traceparent}"
    );
    let spans = wait_for(TIMEOUT, "the sampled trace's spans exported", || {
        let exporter = exporter.clone();
        async move {
            let spans = exporter.get_finished_spans().ok()?;
            (spans.len() >= 3).then_some(spans)
        }
    })
    .await;
    let mut names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "process smp_order.{id}.placed",
            "publish smp_invoice.{id}.issued",
            "publish smp_order.{id}.placed",
        ],
        "the sampled trace only, whole"
    );
    let span = |name: &str| spans.iter().find(|s| s.name == name).expect("exported");
    for s in &spans {
        assert_eq!(s.span_context.trace_id(), trace, "{} in the trace", s.name);
    }
    let process = span("process smp_order.{id}.placed");
    assert_eq!(
        process.parent_span_id,
        span("publish smp_order.{id}.placed").span_context.span_id()
    );
    assert_eq!(
        span("publish smp_invoice.{id}.issued").parent_span_id,
        process.span_context.span_id()
    );
    assert_eq!(made.0.lock().expect("made").get("process"), Some(&1));

    front.shutdown().await.unwrap();
    back.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_trace_not_sampled_makes_no_span_on_nats() {
    let server = NatsServer::start().await;
    a_trace_not_sampled_makes_no_span(&server.url()).await;
}

#[tokio::test]
async fn a_trace_not_sampled_makes_no_span_in_process() {
    a_trace_not_sampled_makes_no_span("memory://sampling").await;
}

/// A publish with no trace around it starts one; when the sampler drops it, the event still
/// carries that trace, not sampled, and so does everything handled and published after it,
/// with no span exported and none made for the delivery.
async fn a_publish_that_starts_a_trace_not_sampled_writes_it_on(url: &str) {
    let (exporter, made, _default) = traced(opentelemetry_sdk::trace::Sampler::AlwaysOff);
    let (front, back) = services(url).await;
    for id in ["r1", "r2"] {
        front.publish(&OrderPlaced { id: id.into() }).await.unwrap();
        let order = front
            .read::<OrderPlaced>(id)
            .collect()
            .await
            .unwrap()
            .remove(0);
        let started = order.metadata.traceparent.clone().expect("a traceparent");
        let trace = started.split('-').nth(1).expect("a trace id").to_owned();
        assert!(
            started.ends_with("-00") && trace != "0".repeat(32),
            "a trace of its own, not sampled: {started}"
        );
        let invoice = invoice_traceparent(&front, id).await;
        assert!(
            invoice.starts_with(&format!("00-{trace}-")) && invoice.ends_with("-00"),
            "the invoice stays in that trace, not sampled: {invoice}"
        );
    }
    assert_eq!(exporter.get_finished_spans().unwrap().len(), 0);
    assert_eq!(made.0.lock().expect("made").get("process"), None);
    front.shutdown().await.unwrap();
    back.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_publish_that_starts_a_trace_not_sampled_writes_it_on_on_nats() {
    let server = NatsServer::start().await;
    a_publish_that_starts_a_trace_not_sampled_writes_it_on(&server.url()).await;
}

#[tokio::test]
async fn a_publish_that_starts_a_trace_not_sampled_writes_it_on_in_process() {
    a_publish_that_starts_a_trace_not_sampled_writes_it_on("memory://sampling-root").await;
}

/// With the provider also the global tracer provider (as a service sets it up), a publish that
/// starts a trace is sampled before any span is made (README, "What it costs"): once eventbus
/// has seen the OpenTelemetry layer, a dropped one makes no `tracing` span and writes its
/// trace on, not sampled; a kept one is exported as the conventions name it, made by the
/// provider's tracer, the parent of the delivery's span.
async fn a_publish_that_starts_a_trace_is_sampled_before_any_span_is_made(url: &str, keep: bool) {
    use opentelemetry_sdk::trace::Sampler;

    let sampler = if keep {
        Sampler::AlwaysOn
    } else {
        Sampler::AlwaysOff
    };
    let (exporter, made, _default) = traced_with(sampler, true);
    let (front, back) = services(url).await;
    let publishes = || made.0.lock().expect("made").get("publish").copied();
    // The first publish makes its span through the layer, which eventbus then knows is there.
    front
        .publish(&OrderPlaced { id: "w0".into() })
        .await
        .unwrap();
    invoice_traceparent(&front, "w0").await;
    let before = publishes();
    let spans_before = exporter.get_finished_spans().unwrap().len();

    let order = front
        .publish(&OrderPlaced { id: "g1".into() })
        .await
        .unwrap();
    let stored = front
        .read::<OrderPlaced>("g1")
        .collect()
        .await
        .unwrap()
        .remove(0);
    let started = stored.metadata.traceparent.clone().expect("a traceparent");
    let trace = started.split('-').nth(1).expect("a trace id").to_owned();
    assert!(trace != "0".repeat(32), "a trace of its own: {started}");
    let invoice = invoice_traceparent(&front, "g1").await;
    assert!(
        invoice.starts_with(&format!("00-{trace}-")),
        "the invoice is in the trace the publish started: {invoice}"
    );
    // The invoice's publish is inside the handler's trace: a span of its own, as before.
    let root_publishes = publishes().unwrap_or(0) - before.unwrap_or(0);
    assert_eq!(
        root_publishes,
        usize::from(keep),
        "no `tracing` span for the publish that started the trace, only for the invoice's (made in a sampled trace)"
    );
    if !keep {
        assert!(started.ends_with("-00"), "not sampled: {started}");
        assert!(invoice.ends_with("-00"), "not sampled: {invoice}");
        assert_eq!(exporter.get_finished_spans().unwrap().len(), 0);
        assert_eq!(made.0.lock().expect("made").get("process"), None);
    } else {
        assert!(started.ends_with("-01"), "sampled: {started}");
        let spans = wait_for(TIMEOUT, "the trace's three spans exported", || {
            let exporter = exporter.clone();
            let trace = trace.clone();
            async move {
                let spans: Vec<_> = exporter
                    .get_finished_spans()
                    .ok()?
                    .into_iter()
                    .skip(spans_before)
                    .filter(|s| s.span_context.trace_id().to_string() == trace)
                    .collect();
                (spans.len() >= 3).then_some(spans)
            }
        })
        .await;
        let span = |name: &str| {
            spans
                .iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("{name} exported"))
        };
        let publish = span("publish smp_order.{id}.placed");
        assert_eq!(publish.span_kind, opentelemetry::trace::SpanKind::Producer);
        assert_eq!(
            publish.parent_span_id,
            SpanId::INVALID,
            "it starts the trace"
        );
        assert_eq!(
            started,
            format!("00-{trace}-{}-01", publish.span_context.span_id()),
            "the event carries the publish span's context"
        );
        let attr = |key: &str| {
            publish
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == key)
                .map(|kv| kv.value.to_string())
                .unwrap_or_else(|| panic!("attribute {key}"))
        };
        assert_eq!(attr("messaging.system"), "nats");
        assert_eq!(attr("messaging.operation.name"), "publish");
        assert_eq!(attr("messaging.operation.type"), "send");
        assert_eq!(
            attr("messaging.destination.template"),
            "smp_order.{id}.placed"
        );
        assert_eq!(attr("messaging.destination.name"), "smp_order.g1.placed");
        assert_eq!(attr("messaging.message.id"), order.id);
        let process = span("process smp_order.{id}.placed");
        assert_eq!(process.parent_span_id, publish.span_context.span_id());
        assert_eq!(
            span("publish smp_invoice.{id}.issued").parent_span_id,
            process.span_context.span_id()
        );
    }
    front.shutdown().await.unwrap();
    back.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_publish_that_starts_a_dropped_trace_makes_no_span_on_nats() {
    let server = NatsServer::start().await;
    a_publish_that_starts_a_trace_is_sampled_before_any_span_is_made(&server.url(), false).await;
}

#[tokio::test]
async fn a_publish_that_starts_a_dropped_trace_makes_no_span_in_process() {
    a_publish_that_starts_a_trace_is_sampled_before_any_span_is_made("memory://smp-drop", false)
        .await;
}

#[tokio::test]
async fn a_publish_that_starts_a_kept_trace_is_exported_by_the_providers_tracer_on_nats() {
    let server = NatsServer::start().await;
    a_publish_that_starts_a_trace_is_sampled_before_any_span_is_made(&server.url(), true).await;
}

#[tokio::test]
async fn a_publish_that_starts_a_kept_trace_is_exported_by_the_providers_tracer_in_process() {
    a_publish_that_starts_a_trace_is_sampled_before_any_span_is_made("memory://smp-keep", true)
        .await;
}
