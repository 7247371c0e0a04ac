//! The AsyncAPI 3.0 document of a service, from its planned topology and the registry.
//!
//! - one server per configured URL (credentials left out), `localhost:4222` when none is given;
//! - one channel per event subject, `{aggregate}.{name}` with the address
//!   `{aggregate}.{id}.{name}` and its `{id}` parameter, holding one message per registered
//!   version of the event;
//! - one message per event type and version, `{aggregate}.{name}.v{version}`: the payload's
//!   JSON Schema (draft-07, from `schemars`; `{}` and `x-eventbus-schema: "unknown"` for a type
//!   that does not derive `JsonSchema`) and the CloudEvents headers;
//! - one `receive` operation per handler and event it handles, with the NATS binding's `queue`
//!   (the durable name) and the JetStream settings the binding cannot hold as `x-eventbus-*`;
//! - one `send` operation per event the service declares it publishes (`#[event_handler(publishes
//!   = [...])]` on a selected handler, or [`crate::Builder::publishes`]).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::config::{AckPolicy, Config, DeliverPolicy, ReplayPolicy};
use crate::envelope::headers;
use crate::event::EventDescriptor;
use crate::registry;
use crate::rules::filters_overlap;
use crate::topology::Topology;

/// The AsyncAPI version written.
const ASYNCAPI: &str = "3.0.0";
/// The version of the NATS operation binding written.
const NATS_BINDING: &str = "0.1.0";

/// The AsyncAPI 3.0 document of `topology` under `config`: every registered event, the
/// topology's handlers as `receive` operations, the declared published events as `send`
/// operations. No network call.
pub(crate) fn document(topology: &Topology, config: &Config) -> Value {
    // Every event the document names: the registered ones, the handlers' and the published.
    let mut events: BTreeMap<&'static str, EventDescriptor> = BTreeMap::new();
    for r in registry::event_registrations() {
        events.insert(r.descriptor.cloud_type, r.descriptor);
    }
    for c in &topology.consumers {
        for d in c.registration.events {
            events.entry(d.cloud_type).or_insert(*d);
        }
    }
    let published = published(topology, config);
    for (d, _) in &published {
        events.entry(d.cloud_type).or_insert(*d);
    }

    let stream_of = |aggregate: &str| -> Option<String> {
        topology
            .streams
            .iter()
            .find(|s| s.aggregate.as_deref() == Some(aggregate))
            .map(|s| s.name.clone())
    };

    let mut channels = Map::new();
    let mut messages = Map::new();
    let mut schemas = Map::new();
    for d in events.values() {
        let channel = channel_id(d);
        let entry = channels.entry(channel.clone()).or_insert_with(|| {
            let mut c = json!({
                "address": format!("{}.{{id}}.{}", d.aggregate, d.name),
                "title": format!("{} {}", d.aggregate, d.name),
                "description": format!(
                    "`{}` events of aggregate `{}`: subject `{}`, the aggregate id as its middle token.",
                    d.name, d.aggregate, d.subject_pattern
                ),
                "parameters": {
                    "id": { "description": format!("The id of the `{}` aggregate.", d.aggregate) }
                },
                "messages": {},
            });
            if let Some(stream) = stream_of(d.aggregate) {
                c["x-eventbus-stream"] = json!(stream);
            }
            c
        });
        entry["messages"][d.cloud_type] =
            json!({ "$ref": format!("#/components/messages/{}", d.cloud_type) });
        messages.insert(d.cloud_type.to_owned(), message(d, &mut schemas));
    }

    let dlq = topology.dlq.as_ref().map(|d| d.name.clone());
    let mut operations = Map::new();
    for c in &topology.consumers {
        let handled: Vec<&EventDescriptor> = c
            .registration
            .events
            .iter()
            .filter(|d| {
                c.filters
                    .iter()
                    .any(|f| filters_overlap(f, d.subject_pattern))
            })
            .collect();
        for d in &handled {
            let id = if handled.len() == 1 {
                c.handler.clone()
            } else {
                format!("{}.{}", c.handler, d.name)
            };
            let mut op = json!({
                "action": "receive",
                "channel": { "$ref": format!("#/channels/{}", channel_id(d)) },
                "messages": [ message_ref(d) ],
                "title": format!("{} handles {}", c.handler, d.cloud_type),
                "summary": format!(
                    "Handler `{}` ({}:{}) of `{}` events.",
                    c.handler, c.registration.file, c.registration.line, c.registration.event_type
                ),
                "x-eventbus-handler": c.handler,
                "x-eventbus-stream": c.stream,
                "x-eventbus-filter": c.filters,
                "x-eventbus-deliver": deliver(&c.deliver),
                "x-eventbus-ack": match c.ack { AckPolicy::None => "none", _ => "explicit" },
                "x-eventbus-replay": match c.replay { ReplayPolicy::Original => "original", _ => "instant" },
                "x-eventbus-concurrency": c.concurrency,
                "x-eventbus-ordered": c.ordered,
            });
            if c.durable {
                op["x-eventbus-durable"] = json!(c.name);
                op["bindings"] =
                    json!({ "nats": { "queue": c.name, "bindingVersion": NATS_BINDING } });
            } else {
                op["x-eventbus-ephemeral"] = json!(true);
            }
            if c.ack != AckPolicy::None {
                op["x-eventbus-ack-wait"] = json!(duration(c.ack_wait));
                op["x-eventbus-max-deliver"] = json!(c.max_deliver);
                op["x-eventbus-backoff"] =
                    json!(c.backoff.iter().map(|d| duration(*d)).collect::<Vec<_>>());
                if let Some(dlq) = &dlq {
                    op["x-eventbus-dead-letter-stream"] = json!(dlq);
                }
            }
            operations.insert(id, op);
        }
    }
    for (d, by) in &published {
        let mut op = json!({
            "action": "send",
            "channel": { "$ref": format!("#/channels/{}", channel_id(d)) },
            "messages": [ message_ref(d) ],
            "title": format!("{} publishes {}", topology.service, d.cloud_type),
            "x-eventbus-declared-by": by,
        });
        if let Some(stream) = stream_of(d.aggregate) {
            op["x-eventbus-stream"] = json!(stream);
        }
        operations.insert(format!("publish.{}", d.cloud_type), op);
    }

    let mut components = json!({ "messages": messages });
    if !schemas.is_empty() {
        components["schemas"] = Value::Object(schemas);
    }
    json!({
        "asyncapi": ASYNCAPI,
        "info": {
            "title": topology.service,
            "version": config.api_version.clone().unwrap_or_else(|| "0.0.0".to_owned()),
            "description": format!(
                "The events service `{}` publishes and consumes on NATS JetStream, as CloudEvents 1.0 in binary mode (attributes in `ce-*` headers, the event's JSON as the body). Written by eventbus {}.",
                topology.service,
                env!("CARGO_PKG_VERSION")
            ),
        },
        "defaultContentType": crate::envelope::JSON,
        "servers": servers(&config.urls),
        "channels": channels,
        "operations": operations,
        "components": components,
    })
}

/// The events the service declares it publishes, each with who declared it.
fn published(topology: &Topology, config: &Config) -> Vec<(EventDescriptor, Vec<String>)> {
    let mut out: BTreeMap<&'static str, (EventDescriptor, Vec<String>)> = BTreeMap::new();
    for c in &topology.consumers {
        for d in c.registration.publishes.iter().flat_map(|s| s.iter()) {
            out.entry(d.cloud_type)
                .or_insert_with(|| (*d, Vec::new()))
                .1
                .push(format!("handler {}", c.handler));
        }
    }
    let registered = registry::events();
    for t in &config.publishes {
        if let Some(d) = registered.iter().find(|d| d.cloud_type == t.as_str()) {
            out.entry(d.cloud_type)
                .or_insert_with(|| (**d, Vec::new()))
                .1
                .push("builder".to_owned());
        }
    }
    out.into_values().collect()
}

fn channel_id(d: &EventDescriptor) -> String {
    format!("{}.{}", d.aggregate, d.name)
}

fn message_ref(d: &EventDescriptor) -> Value {
    json!({ "$ref": format!("#/channels/{}/messages/{}", channel_id(d), d.cloud_type) })
}

/// The message of one event type and version, its schema's `definitions` (recursive types)
/// moved into `schemas`.
fn message(d: &EventDescriptor, schemas: &mut Map<String, Value>) -> Value {
    let schema = registry::event_registration(d).and_then(|r| (r.schema)());
    let mut m = json!({
        "name": d.cloud_type,
        "title": d.rust_type,
        "summary": format!("Event `{}` of aggregate `{}`, version {}.", d.name, d.aggregate, d.version),
        "contentType": crate::envelope::JSON,
        "headers": headers_schema(d),
        "x-eventbus-version": d.version,
    });
    match schema {
        Some(mut s) => {
            if let Some(Value::Object(defs)) =
                s.as_object_mut().and_then(|o| o.remove("definitions"))
            {
                for (k, v) in defs {
                    schemas.insert(k, v);
                }
            }
            relocate_refs(&mut s);
            m["payload"] = s;
        }
        None => {
            m["payload"] = json!({});
            m["x-eventbus-schema"] = json!(format!(
                "unknown: `{}` does not derive `schemars::JsonSchema`",
                d.rust_type
            ));
        }
    }
    if let Some(t) = d.foreign_type {
        m["x-eventbus-foreign-type"] = json!(t);
    }
    m
}

/// `#/definitions/X` → `#/components/schemas/X`, everywhere in `v`.
fn relocate_refs(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get_mut("$ref") {
                if let Some(name) = r.strip_prefix("#/definitions/") {
                    *r = format!("#/components/schemas/{name}");
                }
            }
            o.values_mut().for_each(relocate_refs);
        }
        Value::Array(a) => a.iter_mut().for_each(relocate_refs),
        _ => {}
    }
}

/// The CloudEvents headers eventbus writes (binary mode).
fn headers_schema(d: &EventDescriptor) -> Value {
    let string = |description: &str| json!({ "type": "string", "description": description });
    json!({
        "type": "object",
        "required": [headers::SPECVERSION, headers::ID, headers::SOURCE, headers::TYPE, headers::TIME],
        "properties": {
            headers::SPECVERSION: { "type": "string", "const": "1.0", "description": "CloudEvents spec version." },
            headers::ID: string("Event id (a UUIDv7), unique per event."),
            headers::SOURCE: string("The publishing service."),
            headers::TYPE: { "type": "string", "const": d.cloud_type, "description": "`{aggregate}.{event}.v{version}`." },
            headers::TIME: { "type": "string", "format": "date-time", "description": "When the event was published (RFC 3339)." },
            headers::SUBJECT: string("The aggregate id (metadata; the NATS subject is authoritative)."),
            headers::CONTENT_TYPE: { "type": "string", "const": crate::envelope::JSON },
            headers::CORRELATION_ID: string("The id of the event that started the chain."),
            headers::CAUSATION_ID: string("The id of the event whose handler published this one."),
            headers::TRACEPARENT: string("W3C trace context."),
            headers::MSG_ID: string("JetStream de-duplication id, equal to ce-id."),
        },
    })
}

/// One server per URL, user and password left out.
fn servers(urls: &[String]) -> Value {
    let mut out = Map::new();
    let urls: Vec<&str> = if urls.is_empty() {
        vec!["nats://localhost:4222"]
    } else {
        urls.iter().map(String::as_str).collect()
    };
    for (i, url) in urls.iter().enumerate() {
        let (scheme, rest) = url.split_once("://").unwrap_or(("nats", url));
        let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        let host = host.trim_end_matches('/');
        let key = if i == 0 {
            "nats".to_owned()
        } else {
            format!("nats-{i}")
        };
        let mut server = json!({ "host": host, "protocol": "nats" });
        if scheme == "tls" {
            server["description"] = json!("TLS");
        }
        out.insert(key, server);
    }
    Value::Object(out)
}

fn deliver(d: &DeliverPolicy) -> String {
    match d {
        DeliverPolicy::All => "all".to_owned(),
        DeliverPolicy::Last => "last".to_owned(),
        DeliverPolicy::LastPerSubject => "last_per_subject".to_owned(),
        DeliverPolicy::New => "new".to_owned(),
        DeliverPolicy::ByStartSequence(n) => format!("start_sequence {n}"),
        DeliverPolicy::ByStartTime(t) => format!("start_time {}", crate::envelope::format_time(*t)),
    }
}

/// A duration in the grammar of the attributes: `500ms`, `30s`, `2m`, `1h`.
fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 != 0 {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    match s {
        0 => "0s".to_owned(),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_the_attribute_grammar() {
        assert_eq!(duration(Duration::from_millis(500)), "500ms");
        assert_eq!(duration(Duration::from_secs(30)), "30s");
        assert_eq!(duration(Duration::from_secs(120)), "2m");
        assert_eq!(duration(Duration::from_secs(7200)), "2h");
        assert_eq!(duration(Duration::from_secs(90)), "90s");
    }

    #[test]
    fn servers_leave_credentials_out() {
        let s = servers(&[
            "nats://user:secret@a.example:4222".to_owned(),
            "tls://b:4443".to_owned(),
        ]);
        assert_eq!(s["nats"]["host"], "a.example:4222");
        assert_eq!(s["nats-1"]["host"], "b:4443");
        assert!(!s.to_string().contains("secret"));
        assert_eq!(servers(&[])["nats"]["host"], "localhost:4222");
    }
}
