//! What `#[derive(DomainEvent)]` and `#[event_handler]` generate, seen from the user's side:
//! subjects and their checks, encoding and decoding (alone and through the wire envelope), and
//! the registry of events and handlers with their consumer options.

use std::sync::Mutex;
use std::time::Duration;

use eventbus::__private::{self as envelope, EncodeOptions};
use eventbus::__private::{self as registry, HandlerRegistration};
use eventbus::prelude::*;
use eventbus::{
    AckPolicy, ConsumerOptions, DecodeError, DeliverPolicy, ErrorKind, EventDescriptor, Metadata,
    ReplayPolicy,
};

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "order", name = "created")]
struct OrderCreated {
    #[event(aggregate_id)]
    order_id: String,
    total_cents: u64,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "order", name = "shipped", version = 2)]
struct OrderShipped {
    #[event(aggregate_id)]
    order_id: u64,
    carrier: String,
}

/// A tuple struct whose id is its second field.
#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "order", name = "cancelled")]
struct OrderCancelled(String, #[event(aggregate_id)] String);

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "order")]
enum OrderEvent {
    Created(OrderCreated),
    Shipped(OrderShipped),
    Cancelled(OrderCancelled),
}

/// What the handlers below were called with, in order.
static HANDLED: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn handled() -> Vec<String> {
    HANDLED.lock().unwrap().clone()
}

#[event_handler]
async fn record_created(event: OrderCreated) -> Result<(), HandlerError> {
    HANDLED.lock().unwrap().push(format!(
        "record_created {} {}",
        event.order_id, event.total_cents
    ));
    Ok(())
}

#[event_handler(
    subject = "order.*.*",
    durable = "order-audit",
    deliver = "new",
    ack = "explicit",
    replay = "original",
    max_deliver = 7,
    concurrency = 4,
    ordered,
    ack_wait = "1m30s",
    backoff = ["500ms", "5s", "1m"]
)]
async fn audit(event: OrderEvent, ctx: EventContext) -> Result<(), std::io::Error> {
    if let OrderEvent::Cancelled(c) = &event {
        return Err(std::io::Error::other(format!(
            "cannot audit cancellation {}",
            c.1
        )));
    }
    HANDLED.lock().unwrap().push(format!(
        "audit {} {}",
        ctx.aggregate_id(),
        event.descriptor().name
    ));
    Ok(())
}

#[event_handler(durable = false, start_sequence = 42, ack = "none", ordered = false)]
async fn project_shipments(event: OrderShipped, _ctx: EventContext) -> Result<(), HandlerError> {
    HANDLED
        .lock()
        .unwrap()
        .push(format!("project_shipments {}", event.carrier));
    Ok(())
}

fn created() -> OrderCreated {
    OrderCreated {
        order_id: "42".to_owned(),
        total_cents: 1999,
    }
}

fn shipped() -> OrderShipped {
    OrderShipped {
        order_id: 42,
        carrier: "ups".to_owned(),
    }
}

fn cancelled() -> OrderCancelled {
    OrderCancelled("changed my mind".to_owned(), "42".to_owned())
}

fn handler(name: &str) -> &'static HandlerRegistration {
    registry::handlers()
        .into_iter()
        .find(|h| h.name == name)
        .unwrap_or_else(|| panic!("handler `{name}` is not registered"))
}

#[test]
fn event_constants() {
    assert_eq!(OrderCreated::AGGREGATE_TYPE, "order");
    assert_eq!(OrderCreated::EVENT_TYPE, "created");
    assert_eq!(OrderCreated::SUBJECT_PATTERN, "order.*.created");
    assert_eq!(OrderCreated::VERSION, 1);
    assert_eq!(OrderShipped::VERSION, 2);
    assert_eq!(OrderCancelled::SUBJECT_PATTERN, "order.*.cancelled");

    assert_eq!(<OrderCreated as EventSet>::AGGREGATE, "order");
    assert_eq!(<OrderCreated as EventSet>::FILTER, "order.*.created");
    assert_eq!(
        <OrderShipped as EventSet>::EVENTS,
        &[EventDescriptor {
            aggregate: "order",
            name: "shipped",
            version: 2,
            subject_pattern: "order.*.shipped",
            cloud_type: "order.shipped.v2",
            foreign_type: None,
            rust_type: "OrderShipped",
        }]
    );
    assert_eq!(
        shipped().descriptor().cloud_event_type(),
        "order.shipped.v2"
    );
    assert_eq!(
        created().descriptor().cloud_event_type(),
        "order.created.v1"
    );
}

#[test]
fn subjects() {
    assert_eq!(created().subject().unwrap(), "order.42.created");
    assert_eq!(shipped().subject().unwrap(), "order.42.shipped");
    assert_eq!(cancelled().subject().unwrap(), "order.42.cancelled");
    assert_eq!(OrderCreated::subject_for("42").unwrap(), "order.42.created");
    assert_eq!(OrderShipped::subject_for(7u64).unwrap(), "order.7.shipped");
    assert_eq!(created().event_subject().unwrap(), "order.42.created");
    assert_eq!(
        OrderEvent::from(shipped()).event_subject().unwrap(),
        "order.42.shipped"
    );
}

#[test]
fn invalid_aggregate_ids_are_refused_with_the_id_named() {
    for bad in ["", "a.b", "a*", ">", "a b", "tab\there"] {
        let event = OrderCreated {
            order_id: bad.to_owned(),
            total_cents: 1,
        };
        let errors = [
            event.subject().unwrap_err(),
            OrderCreated::subject_for(bad).unwrap_err(),
            OrderEvent::from(event.clone()).event_subject().unwrap_err(),
            OrderCancelled(String::new(), bad.to_owned())
                .subject()
                .unwrap_err(),
        ];
        for err in errors {
            assert_eq!(err.kind(), ErrorKind::InvalidAggregateId, "{bad:?}");
            assert!(
                err.to_string().contains(&format!("{bad:?}")),
                "{err} names {bad:?}"
            );
        }
    }
}

#[test]
fn json_round_trip() {
    let json = created().to_json().unwrap();
    assert_eq!(json, serde_json::to_vec(&created()).unwrap());
    assert_eq!(
        OrderCreated::from_json("created", &json).unwrap(),
        created()
    );

    let json = cancelled().to_json().unwrap();
    assert_eq!(
        OrderCancelled::from_json("cancelled", &json).unwrap(),
        cancelled()
    );
}

#[test]
fn a_struct_decodes_its_own_event_type_only() {
    let json = created().to_json().unwrap();
    match OrderCreated::from_json("shipped", &json) {
        Err(DecodeError::UnknownEventType { name, aggregate }) => {
            assert_eq!((name.as_str(), aggregate), ("shipped", "order"));
        }
        other => panic!("expected an unknown event type, got {other:?}"),
    }
    match OrderCreated::from_json("created", b"{\"order_id\": 42}") {
        Err(
            e @ DecodeError::Json {
                name: "created", ..
            },
        ) => {
            assert!(e.to_string().contains("created"), "{e}");
        }
        other => panic!("expected a JSON error, got {other:?}"),
    }
}

#[test]
fn event_set_constants() {
    assert_eq!(<OrderEvent as EventSet>::AGGREGATE, "order");
    assert_eq!(<OrderEvent as EventSet>::FILTER, "order.*.*");
    let names: Vec<_> = OrderEvent::EVENTS
        .iter()
        .map(|d| (d.name, d.version, d.rust_type))
        .collect();
    assert_eq!(
        names,
        [
            ("created", 1, "OrderCreated"),
            ("shipped", 2, "OrderShipped"),
            ("cancelled", 1, "OrderCancelled")
        ]
    );
}

#[test]
fn event_set_delegates_to_its_variants() {
    let events = [
        OrderEvent::from(created()),
        OrderEvent::from(shipped()),
        OrderEvent::from(cancelled()),
    ];
    for (event, name) in events.iter().zip(["created", "shipped", "cancelled"]) {
        assert_eq!(event.descriptor().name, name);
        assert_eq!(event.id(), "42");
        let json = event.to_json().unwrap();
        assert_eq!(
            &OrderEvent::from_json(name, &json).unwrap(),
            event,
            "{name}"
        );
    }
    assert_eq!(
        OrderEvent::from(created()).to_json().unwrap(),
        created().to_json().unwrap()
    );
}

#[test]
fn event_set_refuses_unknown_event_types() {
    let json = created().to_json().unwrap();
    match OrderEvent::from_json("deleted", &json) {
        Err(e @ DecodeError::UnknownEventType { .. }) => {
            assert_eq!(
                e.to_string(),
                "unknown event type `deleted` for aggregate `order`"
            );
            let err = eventbus::Error::from(e);
            assert_eq!(err.kind(), ErrorKind::UnknownEventType);
        }
        other => panic!("expected an unknown event type, got {other:?}"),
    }
    assert!(matches!(
        OrderEvent::from_json("shipped", &json),
        Err(DecodeError::Json {
            name: "shipped",
            ..
        })
    ));
}

#[test]
fn events_are_registered() {
    let events = registry::events();
    for descriptor in [
        OrderCreated::EVENTS[0],
        OrderShipped::EVENTS[0],
        OrderCancelled::EVENTS[0],
    ] {
        assert!(
            events.contains(&&descriptor),
            "{descriptor:?} in {events:?}"
        );
    }
}

#[test]
fn handlers_are_registered_with_their_defaults() {
    let h = handler("record_created");
    assert_eq!(h.subject, "order.*.created");
    assert_eq!(h.aggregate, "order");
    assert_eq!(h.event_type, "OrderCreated");
    assert_eq!(h.events, OrderCreated::EVENTS);
    assert_eq!(h.module_path, module_path!());
    assert!(h.file.ends_with("derive.rs"), "{}", h.file);
    assert!(h.line > 0);
    assert_eq!(h.options, ConsumerOptions::default());
}

#[test]
fn handlers_are_registered_with_their_options() {
    let h = handler("audit");
    assert_eq!(h.subject, "order.*.*");
    assert_eq!(h.event_type, "OrderEvent");
    assert_eq!(h.events, OrderEvent::EVENTS);
    assert_eq!(
        h.options,
        ConsumerOptions {
            durable_name: Some("order-audit".into()),
            deliver: Some(DeliverPolicy::New),
            ack: Some(AckPolicy::Explicit),
            replay: Some(ReplayPolicy::Original),
            max_deliver: Some(7),
            concurrency: Some(4),
            ordered: Some(true),
            ack_wait: Some(Duration::from_secs(90)),
            backoff: Some(
                vec![
                    Duration::from_millis(500),
                    Duration::from_secs(5),
                    Duration::from_secs(60)
                ]
                .into()
            ),
            ..ConsumerOptions::default()
        }
    );

    let h = handler("project_shipments");
    assert_eq!(h.subject, "order.*.shipped");
    assert_eq!(
        h.options,
        ConsumerOptions {
            durable: Some(false),
            deliver: Some(DeliverPolicy::ByStartSequence(42)),
            ack: Some(AckPolicy::None),
            ordered: Some(false),
            ..ConsumerOptions::default()
        }
    );
}

#[test]
fn envelope_round_trip() {
    let opts = EncodeOptions {
        source: "billing",
        ..Default::default()
    };
    for event in [
        OrderEvent::from(created()),
        OrderEvent::from(shipped()),
        OrderEvent::from(cancelled()),
    ] {
        let encoded = envelope::encode(&event, &opts).unwrap();
        let meta =
            Metadata::from_message(encoded.subject.as_str(), Some(&encoded.headers)).unwrap();
        assert_eq!(meta.aggregate_id, "42");
        assert_eq!(meta.event_type, event.descriptor().name);
        assert_eq!(meta.version, Some(event.descriptor().version));
        assert_eq!(meta.source.as_deref(), Some("billing"));
        assert_eq!(meta.id, encoded.id);
        assert_eq!(
            meta.time,
            Some(encoded.time),
            "ce-time keeps the nanoseconds"
        );
        assert_eq!(
            envelope::decode::<OrderEvent>(&meta, &encoded.payload).unwrap(),
            event
        );
        // Exactly the CloudEvents headers, each once.
        let mut names: Vec<(String, usize)> = encoded
            .headers
            .iter()
            .map(|(name, values)| (name.to_string(), values.len()))
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "Nats-Msg-Id",
                "ce-correlationid",
                "ce-id",
                "ce-source",
                "ce-specversion",
                "ce-subject",
                "ce-time",
                "ce-type",
                "content-type"
            ]
            .map(|n| (n.to_owned(), 1))
        );
        assert_eq!(
            encoded.headers.get("ce-specversion").map(|v| v.as_str()),
            Some("1.0")
        );
    }

    // A single event type decodes its own messages.
    let encoded = envelope::encode(&shipped(), &opts).unwrap();
    let meta = Metadata::from_message(encoded.subject.as_str(), Some(&encoded.headers)).unwrap();
    assert_eq!(
        envelope::decode::<OrderShipped>(&meta, &encoded.payload).unwrap(),
        shipped()
    );
    let err = envelope::decode::<OrderCreated>(&meta, &encoded.payload).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnknownEventType);
}

#[test]
fn a_foreign_message_decodes_from_its_subject_and_body() {
    let meta = Metadata::from_message("order.42.created", None).unwrap();
    let body = br#"{"order_id": "42", "total_cents": 1999}"#;
    assert_eq!(
        envelope::decode::<OrderCreated>(&meta, body).unwrap(),
        created()
    );
    assert_eq!(
        envelope::decode::<OrderEvent>(&meta, body).unwrap(),
        OrderEvent::Created(created())
    );
    assert_eq!(meta.version, None);
}

#[tokio::test]
async fn registered_handlers_decode_and_run() {
    let meta = Metadata::from_message("order.42.created", None).unwrap();
    let body = created().to_json().unwrap();
    for name in ["record_created", "audit"] {
        let h = handler(name);
        let ctx = eventbus::__private::detached_context(meta.clone());
        (h.call)(&meta, &body, ctx).unwrap().await.unwrap();
    }
    let handled = handled();
    assert!(
        handled.contains(&"record_created 42 1999".to_owned()),
        "{handled:?}"
    );
    assert!(
        handled.contains(&"audit 42 created".to_owned()),
        "{handled:?}"
    );

    // The handler's own error type converts into a (transient) `HandlerError`.
    let meta = Metadata::from_message("order.42.cancelled", None).unwrap();
    let ctx = eventbus::__private::detached_context(meta.clone());
    let err = (handler("audit").call)(&meta, &cancelled().to_json().unwrap(), ctx)
        .unwrap()
        .await
        .unwrap_err();
    assert!(!err.is_permanent());
    assert_eq!(err.to_string(), "cannot audit cancellation 42");

    // An event the handler cannot decode fails before the handler runs.
    let ctx = eventbus::__private::detached_context(meta.clone());
    let err = match (handler("record_created").call)(&meta, b"{}", ctx) {
        Err(e) => e,
        Ok(_) => panic!("a cancellation was decoded as a creation"),
    };
    assert_eq!(err.kind(), ErrorKind::UnknownEventType);
    let meta = Metadata::from_message("order.42.created", None).unwrap();
    let ctx = eventbus::__private::detached_context(meta.clone());
    let err = match (handler("record_created").call)(&meta, b"{}", ctx) {
        Err(e) => e,
        Ok(_) => panic!("an empty body was decoded"),
    };
    assert_eq!(err.kind(), ErrorKind::Decode);
}

// Events declared by a `macro_rules!` macro: its `$name:literal` fragments reach the derive
// wrapped in invisible groups, which the derive sees through.
macro_rules! declared_event {
    ($ty:ident, $aggregate:literal, $name:literal, $version:literal) => {
        #[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
        #[event(aggregate = $aggregate, name = $name, version = $version)]
        struct $ty {
            #[event(aggregate_id)]
            id: String,
        }
    };
}

declared_event!(MacroDeclared, "drv_macro", "declared", 2);

#[test]
fn an_event_declared_through_macro_rules_fragments_is_derived_as_written() {
    let e = MacroDeclared { id: "m1".into() };
    assert_eq!(e.subject().unwrap().as_str(), "drv_macro.m1.declared");
    assert_eq!(<MacroDeclared as DomainEvent>::VERSION, 2);
}
