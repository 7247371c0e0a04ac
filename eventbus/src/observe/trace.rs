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
//!   names and attributes, and a handler's `ctx.publish`, `ctx.append` and dead letters carry
//!   the received `traceparent` / `tracestate` on unchanged, so the trace id survives a
//!   service that records no spans.

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
/// `messaging.message.id`).
pub(crate) fn publish_span(pattern: &str) -> Span {
    let template = Template(pattern);
    tracing::info_span!(
        target: "eventbus::publish",
        "publish",
        otel.name = %format_args!("publish {template}"),
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.operation.name = "publish",
        messaging.operation.type = "send",
        messaging.destination.template = %template,
        messaging.destination.name = Empty,
        messaging.message.id = Empty,
    )
}

/// The trace context a publish in `span` writes: the span's own (with the `opentelemetry`
/// feature and an OpenTelemetry layer), else the one `carried` from the event being handled.
pub(crate) fn outgoing(span: &Span, carried: TraceContext) -> TraceContext {
    #[cfg(feature = "opentelemetry")]
    if let Some(own) = otel::context_of(span) {
        return own;
    }
    let _ = span;
    carried
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

/// The span of one delivery's handling, in the trace the event's `headers` carry (see the
/// module's documentation). `messaging.message.id` is recorded once known.
pub(crate) fn process_span(p: &Process<'_>, headers: &HeaderMap) -> Span {
    let template = Template(p.filter);
    let span = tracing::info_span!(
        target: "eventbus::dispatch",
        "process",
        otel.name = %format_args!("process {template}"),
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.operation.name = "process",
        messaging.operation.type = "process",
        messaging.destination.name = %p.subject,
        messaging.destination.template = %template,
        messaging.consumer.group.name = %p.consumer,
        messaging.message.id = Empty,
        messaging.nats.stream = %p.stream,
        messaging.nats.message.stream_sequence = p.stream_sequence,
        messaging.nats.message.delivery_count = p.delivered,
        handler = %p.handler,
    );
    #[cfg(feature = "opentelemetry")]
    otel::join(&span, headers);
    #[cfg(not(feature = "opentelemetry"))]
    let _ = headers;
    span
}

#[cfg(feature = "opentelemetry")]
mod otel {
    use std::str::FromStr;

    use async_nats::HeaderMap;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing::Span;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::{header, TraceContext, TRACEPARENT, TRACESTATE};

    /// The context of `span` as W3C headers, if it belongs to an OpenTelemetry trace.
    pub(super) fn context_of(span: &Span) -> Option<TraceContext> {
        let cx = span.context();
        let s = cx.span();
        let sc = s.span_context();
        if !sc.is_valid() {
            return None;
        }
        let state = sc.trace_state().header();
        Some(TraceContext {
            traceparent: Some(format!(
                "00-{}-{}-{:02x}",
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags().to_u8()
            )),
            tracestate: (!state.is_empty()).then_some(state),
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

    /// Makes the context `headers` carry the parent of `span`, and links to it.
    pub(super) fn join(span: &Span, headers: &HeaderMap) {
        let Some(tp) = header(headers, TRACEPARENT) else {
            return;
        };
        let Some(sc) = parse(tp, header(headers, TRACESTATE)) else {
            return;
        };
        let parent = opentelemetry::Context::new().with_remote_span_context(sc.clone());
        // Fails only when no OpenTelemetry layer records this span: nothing to join then.
        let _ = span.set_parent(parent);
        span.add_link(sc);
    }

    #[cfg(test)]
    mod tests {
        use super::parse;

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
    use super::Template;

    #[test]
    fn templates_put_id_in_the_aggregate_id_token() {
        let t = |s| Template(s).to_string();
        assert_eq!(t("order.*.created"), "order.{id}.created");
        assert_eq!(t("order.*.*"), "order.{id}.*");
        assert_eq!(t("order.>"), "order.>");
    }
}
