//! Traces: the spans of publishing and handling, named and attributed per the OpenTelemetry
//! messaging conventions, and the W3C trace context (`traceparent`, `tracestate`) that joins
//! them across services.
//!
//! - A publish runs in a span `publish` (OpenTelemetry name `publish {template}`, e.g.
//!   `publish order.{id}.created`, kind producer). With the `opentelemetry` feature and a
//!   `tracing-opentelemetry` layer, the event carries that span's context as `traceparent`
//!   (and `tracestate`): the consumer's span then belongs to the producer's trace.
//! - A delivery is handled in a span `process` (`process {template}`, kind consumer). Its
//!   parent is the context the event carries, and it links to it as well: the conventions
//!   ask consumers to link to the creation context, and allow it as the parent when one
//!   message is processed alone, which is how eventbus handles events. So one trace holds the
//!   producer's span, the handler's, and whatever the handler publishes.
//! - With `tracing` alone (no OpenTelemetry layer, or the feature off), spans carry the same
//!   names and attributes as `tracing` fields, and a handler's `ctx.publish`, `ctx.append` and
//!   dead letters carry the received `traceparent` / `tracestate` on unchanged, so the trace id
//!   survives a service that records no spans.
//!
//! What it costs: `tracing-opentelemetry` copies every string field of a span into an
//! attribute of its own, recorded or not. So the fields a span is created with are the few a
//! log line wants too (the name, the kind, the subject, the handler, the counts as integers);
//! the rest (the messaging system, the operation, the template, the consumer group, the
//! stream) are set by [`describe`] once the span has started: as OpenTelemetry attributes
//! without a copy of the constant ones when a layer records the span, not at all when it does
//! not (a trace not sampled), as `tracing` fields when no OpenTelemetry layer tracks it. A
//! sampler therefore sees the name, the kind and the fields given at creation.

use async_nats::HeaderMap;
use tracing::field::Empty;
use tracing::Span;

/// The W3C `traceparent` header.
#[cfg_attr(not(feature = "opentelemetry"), allow(dead_code))]
pub(crate) const TRACEPARENT: &str = "traceparent";
/// The W3C `tracestate` header.
pub(crate) const TRACESTATE: &str = "tracestate";

/// A W3C trace context as carried in headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TraceContext {
    pub(crate) traceparent: Option<String>,
    pub(crate) tracestate: Option<String>,
}

/// The first value of header `name`, in any case.
pub(crate) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| AsRef::<str>::as_ref(n).eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.first())
        .map(|v| v.as_str())
}

/// The destination template of an event type: its subject pattern with `{id}` for the
/// aggregate id (`order.*.created` → `order.{id}.created`); of a handler's filter, the same
/// with its other wildcards kept (`order.{id}.*`, `order.>`). Written when displayed: a span
/// nobody records costs no string.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Template<'a>(pub(crate) &'a str);

impl std::fmt::Display for Template<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, token) in self.0.split('.').enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            f.write_str(if i == 1 && token != ">" {
                "{id}"
            } else {
                token
            })?;
        }
        Ok(())
    }
}

/// The span of one publish of an event type whose destination template is `template`. The
/// subject and the message id are recorded once known (`messaging.destination.name`,
/// `messaging.message.id`); the attributes that are the same for every publish are described
/// by [`describe`].
pub(crate) fn publish_span(pattern: &str) -> Span {
    #[cfg(feature = "opentelemetry")]
    if otel::in_unsampled_trace() {
        // Not recorded: `outgoing` writes the current context on, still not sampled.
        return Span::none();
    }
    let template = Template(pattern);
    let span = tracing::info_span!(
        target: "eventbus::publish",
        "publish",
        otel.name = %format_args!("publish {template}"),
        otel.kind = "producer",
        messaging.system = Empty,
        messaging.operation.name = Empty,
        messaging.operation.type = Empty,
        messaging.destination.template = Empty,
        messaging.destination.name = Empty,
        messaging.message.id = Empty,
    );
    describe(&span, &publish_attrs(template));
    span
}

/// The attributes of a publish that a log line does not need (see [`describe`]).
fn publish_attrs(template: Template<'_>) -> [(&'static str, Attr<'_>); 4] {
    [
        ("messaging.system", Attr::Static(SYSTEM)),
        ("messaging.operation.name", Attr::Static("publish")),
        ("messaging.operation.type", Attr::Static("send")),
        ("messaging.destination.template", Attr::Template(template)),
    ]
}

/// A string attribute of a span.
#[derive(Debug, Clone, Copy)]
enum Attr<'a> {
    Static(&'static str),
    Str(&'a str),
    Template(Template<'a>),
}

/// Gives `span` the attributes `attrs` that a trace backend wants and a log line does not
/// need (the messaging system, the operation, the template, ...), each the name of a field
/// the span declared `Empty`.
///
/// A span an OpenTelemetry layer records gets them as OpenTelemetry attributes, set at once:
/// a `&'static str` is not copied (`tracing-opentelemetry` copies every string field it is
/// given), and a span it does not record (its trace is not sampled) gets none, as they would
/// be dropped. A span no OpenTelemetry layer tracks (`tracing` alone, or the feature off) gets
/// them as its `tracing` fields.
fn describe(span: &Span, attrs: &[(&'static str, Attr<'_>)]) {
    if span.is_disabled() {
        return;
    }
    #[cfg(feature = "opentelemetry")]
    if otel::describe(span, attrs) {
        return;
    }
    for (name, value) in attrs {
        match value {
            Attr::Static(v) => span.record(*name, *v),
            Attr::Str(v) => span.record(*name, *v),
            Attr::Template(t) => span.record(*name, tracing::field::display(t)),
        };
    }
}

/// `messaging.system`.
const SYSTEM: &str = "nats";

/// The trace context a publish in `span` writes: the span's own (with the `opentelemetry`
/// feature and an OpenTelemetry layer), or the current trace not sampled that `publish_span`
/// made no span in, else the one `carried` from the event being handled.
pub(crate) fn outgoing(span: &Span, carried: TraceContext) -> TraceContext {
    #[cfg(feature = "opentelemetry")]
    if let Some(own) = otel::context_of(span).or_else(otel::current_unsampled) {
        return own;
    }
    let _ = span;
    carried
}

/// Whether `span`, a publish's, is an OpenTelemetry span its sampler did not sample (`trace`
/// is what [`outgoing`] made of it): a publish that started a trace, whose span the layer
/// built only for the sampler to decide on. Its context is written on as it is; the send need
/// not run in the span, which would be entered and left at every poll for nothing.
fn sampled_out(span: &Span, trace: &TraceContext) -> bool {
    #[cfg(feature = "opentelemetry")]
    {
        let flags = trace
            .traceparent
            .as_deref()
            .and_then(|t| t.get(t.len().saturating_sub(2)..))
            .and_then(|f| u8::from_str_radix(f, 16).ok());
        !span.is_disabled() && otel::layer_seen() && flags.is_some_and(|f| f & 1 == 0)
    }
    #[cfg(not(feature = "opentelemetry"))]
    {
        let _ = (span, trace);
        false
    }
}

/// The tracing of one publish: the span it runs in (none in a trace not sampled).
/// `Publisher::publish` and `append` start one per event.
pub(crate) struct PublishTrace {
    span: Span,
    /// A publish that started a trace sampled by the global tracer provider: its
    /// OpenTelemetry span, made without a `tracing` span, ended when this is dropped.
    #[cfg(feature = "opentelemetry")]
    root: Option<opentelemetry::global::BoxedSpan>,
}

impl PublishTrace {
    /// Starts the tracing of a publish of an event type whose subject pattern is `pattern`,
    /// with the trace context its event carries; `carried` is the trace context of the event
    /// a handler is handling, written on when no OpenTelemetry context is current.
    ///
    /// A publish that starts a trace (no span current) while an OpenTelemetry layer records
    /// eventbus's spans and a global tracer provider is set is sampled by that provider first:
    /// dropped, it makes no span at all and writes the new trace on, not sampled; kept, its
    /// span is made by the provider's tracer directly. Either way no `tracing` span is made
    /// for the layer to build, sample and drop: with 1 % of traces sampled, that was most of
    /// what tracing cost a publish (see README, "What it costs").
    pub(crate) fn start(pattern: &str, carried: TraceContext) -> (PublishTrace, TraceContext) {
        #[cfg(feature = "opentelemetry")]
        if let Some((root, context)) = otel::start_root(Template(pattern)) {
            let span = Span::none();
            return (PublishTrace { span, root }, context);
        }
        let span = publish_span(pattern);
        let context = outgoing(&span, carried);
        let span = if sampled_out(&span, &context) {
            Span::none()
        } else {
            span
        };
        let trace = PublishTrace {
            span,
            #[cfg(feature = "opentelemetry")]
            root: None,
        };
        (trace, context)
    }

    /// Records where the event goes and its message id, once encoded.
    pub(crate) fn sent(&mut self, subject: &str, id: &str) {
        self.span.record("messaging.destination.name", subject);
        self.span.record("messaging.message.id", id);
        #[cfg(feature = "opentelemetry")]
        if let Some(root) = &mut self.root {
            use opentelemetry::trace::Span as _;
            root.set_attributes(otel::key_values(&[
                ("messaging.destination.name", Attr::Str(subject)),
                ("messaging.message.id", Attr::Str(id)),
            ]));
        }
    }

    /// The span the publish runs in.
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }
}

/// What a consumer's span is made from.
pub(crate) struct Process<'a> {
    pub(crate) handler: &'a str,
    /// The handler's subject filter.
    pub(crate) filter: &'a str,
    /// The durable consumer: the consumer group.
    pub(crate) consumer: &'a str,
    pub(crate) stream: &'a str,
    pub(crate) subject: &'a str,
    pub(crate) stream_sequence: u64,
    pub(crate) delivered: u64,
}

/// Where one delivery is handled: its `process` span, in the trace the event's `headers` carry
/// (see the module's documentation); `messaging.message.id` is recorded once known, the
/// attributes a log line does not need are described by [`describe`].
///
/// A delivery whose trace is not sampled, while an OpenTelemetry layer records eventbus's
/// spans, gets no span: the layer would build one to drop it. Its handler runs in the
/// received context instead, so what it makes and publishes stays in that trace, not sampled
/// either (a parent-based sampler, the SDK's default, decides so; see [`Scope`]).
pub(crate) fn process_span(p: &Process<'_>, headers: &HeaderMap) -> Scope {
    #[cfg(feature = "opentelemetry")]
    let received = otel::received(headers);
    #[cfg(feature = "opentelemetry")]
    if let Some(cx) = otel::unsampled(received.as_ref()) {
        return Scope {
            span: Span::none(),
            unsampled: Some(cx),
        };
    }
    #[cfg(not(feature = "opentelemetry"))]
    let _ = headers;
    let template = Template(p.filter);
    let span = tracing::info_span!(
        target: "eventbus::dispatch",
        "process",
        otel.name = %format_args!("process {template}"),
        otel.kind = "consumer",
        messaging.system = Empty,
        messaging.operation.name = Empty,
        messaging.operation.type = Empty,
        messaging.destination.name = p.subject,
        messaging.destination.template = Empty,
        messaging.consumer.group.name = Empty,
        messaging.message.id = Empty,
        messaging.nats.stream = Empty,
        // Integers: an OpenTelemetry layer keeps them as such, without formatting.
        messaging.nats.message.stream_sequence = int(p.stream_sequence),
        messaging.nats.message.delivery_count = int(p.delivered),
        handler = p.handler,
    );
    if !span.is_disabled() {
        #[cfg(feature = "opentelemetry")]
        if let Some(sc) = received {
            otel::join(&span, sc);
        }
        describe(
            &span,
            &[
                ("messaging.system", Attr::Static(SYSTEM)),
                ("messaging.operation.name", Attr::Static("process")),
                ("messaging.operation.type", Attr::Static("process")),
                ("messaging.destination.template", Attr::Template(template)),
                ("messaging.consumer.group.name", Attr::Str(p.consumer)),
                ("messaging.nats.stream", Attr::Str(p.stream)),
            ],
        );
    }
    Scope {
        span,
        #[cfg(feature = "opentelemetry")]
        unsampled: None,
    }
}

/// What a delivery is handled in: its span, or (with the `opentelemetry` feature) the
/// received context of a trace not sampled.
pub(crate) struct Scope {
    span: Span,
    #[cfg(feature = "opentelemetry")]
    unsampled: Option<opentelemetry::Context>,
}

/// Runs a future in a [`Scope`], as `tracing::Instrument` runs one in a span.
pub(crate) trait InScope: std::future::Future + Sized {
    /// Runs `self` in `scope`'s span, or in its received context.
    fn in_scope(self, scope: Scope) -> impl std::future::Future<Output = Self::Output> {
        scope.wrap(self)
    }
}

impl<F: std::future::Future> InScope for F {}

impl Scope {
    fn wrap<F: std::future::Future>(self, fut: F) -> impl std::future::Future<Output = F::Output> {
        use tracing::Instrument;
        #[cfg(feature = "opentelemetry")]
        {
            use futures::future::Either;
            use opentelemetry::context::FutureExt;
            match self.unsampled {
                Some(cx) => Either::Left(fut.with_context(cx)),
                None => Either::Right(fut.instrument(self.span)),
            }
        }
        #[cfg(not(feature = "opentelemetry"))]
        fut.instrument(self.span)
    }
}

/// A count or a sequence as the signed integer OpenTelemetry attributes hold.
fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(feature = "opentelemetry")]
mod otel {
    use std::str::FromStr;
    use std::sync::atomic::{AtomicBool, Ordering};

    use async_nats::HeaderMap;
    use opentelemetry::global::BoxedSpan;
    use opentelemetry::trace::{
        Span as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
        Tracer as _,
    };
    use opentelemetry::{KeyValue, Value};
    use tracing::Span;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::{header, Attr, TraceContext, TRACEPARENT, TRACESTATE};

    /// The context of `span` as W3C headers, if it belongs to an OpenTelemetry trace.
    pub(super) fn context_of(span: &Span) -> Option<TraceContext> {
        let cx = span.context();
        let s = cx.span();
        let sc = s.span_context();
        sc.is_valid().then(|| headers_of(sc))
    }

    /// `sc` as W3C headers.
    fn headers_of(sc: &SpanContext) -> TraceContext {
        let state = sc.trace_state().header();
        TraceContext {
            traceparent: Some(traceparent(sc)),
            tracestate: (!state.is_empty()).then_some(state),
        }
    }

    /// `sc` as a version 00 `traceparent`: `00-{trace id}-{span id}-{flags}`, in lower-case
    /// hex. Written digit by digit: every publish writes one, and `format!` with the ids'
    /// `Display` costs several times more.
    fn traceparent(sc: &SpanContext) -> String {
        fn hex(out: &mut Vec<u8>, bytes: &[u8]) {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            for b in bytes {
                out.push(DIGITS[usize::from(b >> 4)]);
                out.push(DIGITS[usize::from(b & 0xf)]);
            }
        }
        let mut out = Vec::with_capacity(55);
        out.extend_from_slice(b"00-");
        hex(&mut out, &sc.trace_id().to_bytes());
        out.push(b'-');
        hex(&mut out, &sc.span_id().to_bytes());
        out.push(b'-');
        hex(&mut out, &[sc.trace_flags().to_u8()]);
        // Only ASCII hex digits and dashes were written.
        String::from_utf8(out).unwrap_or_default()
    }

    /// Sets `attrs` on the OpenTelemetry span of `span` if it records; false when no
    /// OpenTelemetry layer tracks `span`.
    pub(super) fn describe(span: &Span, attrs: &[(&'static str, Attr<'_>)]) -> bool {
        let cx = span.context();
        let otel = cx.span();
        let tracked = otel.span_context().is_valid();
        LAYER_SEEN.store(tracked, Ordering::Relaxed);
        if !tracked {
            return false;
        }
        if otel.is_recording() {
            otel.set_attributes(key_values(attrs));
        }
        true
    }

    /// `attrs` as OpenTelemetry attributes; a `&'static str` is not copied.
    pub(super) fn key_values<'a>(
        attrs: &'a [(&'static str, Attr<'_>)],
    ) -> impl Iterator<Item = KeyValue> + 'a {
        attrs.iter().map(|(name, value)| {
            let value = match value {
                Attr::Static(v) => Value::from(*v),
                Attr::Str(v) => Value::from(v.to_string()),
                Attr::Template(t) => Value::from(t.to_string()),
            };
            KeyValue::new(*name, value)
        })
    }

    /// A `traceparent` (version 00, or a later one read as 00) as a remote span context.
    pub(super) fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
        let mut parts = traceparent.trim().split('-');
        let version = parts.next()?;
        let trace_id = parts.next()?;
        let span_id = parts.next()?;
        let flags = parts.next()?;
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        if trace_id.len() != 32 || span_id.len() != 16 || flags.len() != 2 {
            return None;
        }
        let trace_id = TraceId::from_hex(trace_id).ok()?;
        let span_id = SpanId::from_hex(span_id).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        let state = tracestate
            .and_then(|s| TraceState::from_str(s).ok())
            .unwrap_or_default();
        let sc = SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::new(flags & TraceFlags::SAMPLED.to_u8()),
            true,
            state,
        );
        sc.is_valid().then_some(sc)
    }

    /// The span context `headers` carry, if valid.
    pub(super) fn received(headers: &HeaderMap) -> Option<SpanContext> {
        parse(header(headers, TRACEPARENT)?, header(headers, TRACESTATE))
    }

    /// Whether the last span eventbus made that a subscriber enabled was tracked by an
    /// OpenTelemetry layer: the subscriber of a service does not change, so this says whether
    /// it has one, without making a span to find out.
    static LAYER_SEEN: AtomicBool = AtomicBool::new(false);

    /// The received context of a delivery whose trace is not sampled, when an OpenTelemetry
    /// layer would record its span (and so drop it): handled in that context, without a span.
    pub(super) fn unsampled(received: Option<&SpanContext>) -> Option<opentelemetry::Context> {
        let sc = received?;
        if sc.is_sampled()
            || !LAYER_SEEN.load(Ordering::Relaxed)
            || !tracing::span_enabled!(target: "eventbus::dispatch", tracing::Level::INFO)
        {
            return None;
        }
        Some(opentelemetry::Context::new().with_remote_span_context(sc.clone()))
    }

    /// Whether an OpenTelemetry layer records eventbus's spans (see [`LAYER_SEEN`]).
    pub(super) fn layer_seen() -> bool {
        LAYER_SEEN.load(Ordering::Relaxed)
    }

    /// Whether a publish now belongs to a trace not sampled (the current OpenTelemetry
    /// context's), while an OpenTelemetry layer records eventbus's spans: its span would be
    /// dropped.
    pub(super) fn in_unsampled_trace() -> bool {
        if !LAYER_SEEN.load(Ordering::Relaxed) {
            return false;
        }
        let cx = opentelemetry::Context::current();
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid()
            && !sc.is_sampled()
            && tracing::span_enabled!(target: "eventbus::publish", tracing::Level::INFO)
    }

    /// The current OpenTelemetry context as W3C headers, if it is a trace not sampled (the
    /// one a publish made no span in).
    pub(super) fn current_unsampled() -> Option<TraceContext> {
        let cx = opentelemetry::Context::current();
        let span = cx.span();
        let sc = span.span_context();
        (sc.is_valid() && !sc.is_sampled()).then(|| headers_of(sc))
    }

    /// A publish that starts a trace, sampled by the global tracer provider before any span
    /// is made (see [`super::PublishTrace::start`]): its span if the sampler records it, and
    /// the context the event carries. `None` when the publish does not start a trace (a
    /// `tracing` span or an OpenTelemetry context is current), when no OpenTelemetry layer
    /// records eventbus's spans, or when no global tracer provider is set (its no-op tracer
    /// makes no valid context): the publish then gets a `tracing` span as before.
    pub(super) fn start_root(
        template: super::Template<'_>,
    ) -> Option<(Option<BoxedSpan>, TraceContext)> {
        if !LAYER_SEEN.load(Ordering::Relaxed) || !Span::current().is_none() {
            return None;
        }
        let parent = opentelemetry::Context::current();
        if parent.span().span_context().is_valid()
            || !tracing::span_enabled!(target: "eventbus::publish", tracing::Level::INFO)
        {
            return None;
        }
        let tracer = opentelemetry::global::tracer("eventbus");
        let mut span = tracer
            .span_builder(format!("publish {template}"))
            .with_kind(SpanKind::Producer)
            .start_with_context(&tracer, &parent);
        let sc = span.span_context();
        if !sc.is_valid() {
            return None;
        }
        let context = headers_of(sc);
        if !span.is_recording() {
            return Some((None, context));
        }
        span.set_attributes(key_values(&super::publish_attrs(template)));
        Some((Some(span), context))
    }

    /// Makes `sc`, the context the event carries, the parent of `span`, and links to it.
    pub(super) fn join(span: &Span, sc: SpanContext) {
        let parent = opentelemetry::Context::new().with_remote_span_context(sc.clone());
        // Fails only when no OpenTelemetry layer records this span: nothing to join then.
        let _ = span.set_parent(parent);
        span.add_link(sc);
    }

    #[cfg(test)]
    mod tests {
        use super::{headers_of, parse, traceparent};

        #[test]
        fn traceparent_is_written_as_it_is_read() {
            for line in [
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
                "00-ffffffffffffffffffffffffffffffff-0000000000000001-01",
            ] {
                let sc = parse(line, None).expect("valid");
                assert_eq!(traceparent(&sc), line);
                assert_eq!(headers_of(&sc).traceparent.as_deref(), Some(line));
            }
        }

        #[test]
        fn traceparent_is_read_as_w3c_writes_it() {
            let sc = parse(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                Some("rojo=00f067aa0ba902b7"),
            )
            .expect("valid");
            assert_eq!(
                sc.trace_id().to_string(),
                "4bf92f3577b34da6a3ce929d0e0e4736"
            );
            assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
            assert!(sc.is_sampled());
            assert!(sc.is_remote());
            assert_eq!(sc.trace_state().header(), "rojo=00f067aa0ba902b7");
            for bad in [
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                "00-4bf92f35-00f067aa0ba902b7-01",
                "garbage",
            ] {
                assert!(parse(bad, None).is_none(), "{bad}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::{Arc, Mutex};

    use async_nats::HeaderMap;
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing_subscriber::layer::{Context, SubscriberExt};
    use tracing_subscriber::Layer;

    use super::{process_span, publish_span, Process, Template};

    #[test]
    fn templates_put_id_in_the_aggregate_id_token() {
        let t = |s| Template(s).to_string();
        assert_eq!(t("order.*.created"), "order.{id}.created");
        assert_eq!(t("order.*.*"), "order.{id}.*");
        assert_eq!(t("order.>"), "order.>");
    }

    /// Each span's fields with a value, by span name.
    #[derive(Clone, Default)]
    struct Fields(Arc<Mutex<BTreeMap<String, BTreeMap<String, String>>>>);

    struct Collect<'a>(&'a mut BTreeMap<String, String>);

    impl Visit for Collect<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.insert(
                field.name().to_owned(),
                format!("{value:?}").replace('"', ""),
            );
        }
    }

    impl<S> Layer<S> for Fields
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
            let name = ctx.span(id).expect("span").name().to_owned();
            let mut all = self.0.lock().expect("fields");
            attrs.record(&mut Collect(all.entry(name).or_default()));
        }

        fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
            let name = ctx.span(id).expect("span").name().to_owned();
            let mut all = self.0.lock().expect("fields");
            values.record(&mut Collect(all.entry(name).or_default()));
        }
    }

    #[test]
    fn with_tracing_alone_spans_carry_every_attribute_as_a_field() {
        let fields = Fields::default();
        let subscriber = tracing_subscriber::registry().with(fields.clone());
        tracing::subscriber::with_default(subscriber, || {
            drop(publish_span("order.*.created"));
            let process = Process {
                handler: "bill",
                filter: "order.*.created",
                consumer: "billing-bill",
                stream: "ORDER",
                subject: "order.42.created",
                stream_sequence: 7,
                delivered: 2,
            };
            drop(process_span(&process, &HeaderMap::new()));
        });
        let all = fields.0.lock().expect("fields");
        let names = |span: &str| all[span].keys().cloned().collect::<BTreeSet<_>>();
        let common = [
            "otel.name",
            "otel.kind",
            "messaging.system",
            "messaging.operation.name",
            "messaging.operation.type",
            "messaging.destination.template",
        ];
        let publish: BTreeSet<String> = common.iter().map(|s| s.to_string()).collect();
        assert_eq!(names("publish"), publish);
        let process: BTreeSet<String> = common
            .iter()
            .chain(&[
                "messaging.destination.name",
                "messaging.consumer.group.name",
                "messaging.nats.stream",
                "messaging.nats.message.stream_sequence",
                "messaging.nats.message.delivery_count",
                "handler",
            ])
            .map(|s| s.to_string())
            .collect();
        assert_eq!(names("process"), process);
        let p = &all["process"];
        assert_eq!(p["otel.name"], "process order.{id}.created");
        assert_eq!(p["messaging.system"], "nats");
        assert_eq!(p["messaging.operation.type"], "process");
        assert_eq!(p["messaging.destination.template"], "order.{id}.created");
        assert_eq!(p["messaging.consumer.group.name"], "billing-bill");
        assert_eq!(p["messaging.nats.message.delivery_count"], "2");
        assert_eq!(all["publish"]["messaging.operation.name"], "publish");
    }
}
