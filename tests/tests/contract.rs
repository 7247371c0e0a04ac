//! Event contracts (README, "Contracts"): the AsyncAPI document of a test registry, validated by
//! the official AsyncAPI parser (`@asyncapi/parser`, installed by
//! `scripts/install-asyncapi-parser.sh` and given as `EVENTBUS_ASYNCAPI_NODE_MODULES`; without
//! it that validation prints a note, and fails in CI).

use eventbus::prelude::*;
use eventbus::ErrorKind;
use eventbus_tests::validate_asyncapi;
use schemars::JsonSchema;
use serde_json::{json, Value};

const SERVICE: &str = "shop";

// ---------------------------------------------------------------------------------------------
// The registry of this test binary
// ---------------------------------------------------------------------------------------------

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
struct Line {
    sku: String,
    quantity: u32,
}

#[derive(DomainEvent, Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[event(aggregate = "ct_order", name = "placed")]
struct OrderPlaced {
    #[event(aggregate_id)]
    order_id: String,
    total_cents: u64,
    lines: Vec<Line>,
    note: Option<String>,
}

#[derive(DomainEvent, Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[event(aggregate = "ct_order", name = "shipped")]
struct OrderShipped {
    #[event(aggregate_id)]
    order_id: String,
    carrier: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "ct_order")]
enum OrderEvent {
    Placed(OrderPlaced),
    Shipped(OrderShipped),
}

/// No `JsonSchema`: its payload is marked unknown.
#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "ct_audit", name = "noted")]
struct AuditNoted {
    #[event(aggregate_id)]
    id: String,
}

#[event_handler(durable = "billing", max_deliver = 7, backoff = ["1s", "10s"], ack_wait = "45s", publishes = [OrderShipped])]
async fn ct_bill(_event: OrderPlaced) -> Result<(), HandlerError> {
    Ok(())
}

#[event_handler]
async fn ct_project(_event: OrderEvent) -> Result<(), HandlerError> {
    Ok(())
}

#[event_handler(ack = "none", durable = false)]
async fn ct_audit(_event: AuditNoted) -> Result<(), HandlerError> {
    Ok(())
}

const DOC_HANDLERS: [&str; 3] = ["ct_bill", "ct_project", "ct_audit"];

fn document() -> Value {
    eventbus::builder()
        .no_env()
        .url("nats://user:secret@orders.example:4222,nats://backup.example:4222")
        .service(SERVICE)
        .api_version("1.4.0")
        .publishes::<AuditNoted>()
        .only_handlers(DOC_HANDLERS)
        .asyncapi()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The AsyncAPI document
// ---------------------------------------------------------------------------------------------

#[test]
fn the_document_lists_every_handler_and_event_with_its_schema() {
    let doc = document();
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(doc["info"]["title"], SERVICE);
    assert_eq!(doc["info"]["version"], "1.4.0");
    assert_eq!(doc["servers"]["nats"]["host"], "orders.example:4222");
    assert_eq!(doc["servers"]["nats-1"]["host"], "backup.example:4222");
    assert!(
        !doc.to_string().contains("secret"),
        "credentials are left out"
    );

    // One channel per event subject, with its `{id}` parameter.
    let placed = &doc["channels"]["ct_order.placed"];
    assert_eq!(placed["address"], "ct_order.{id}.placed");
    assert!(placed["parameters"]["id"].is_object());
    assert_eq!(placed["x-eventbus-stream"], "CT_ORDER");
    assert_eq!(
        placed["messages"]["ct_order.placed.v1"]["$ref"],
        "#/components/messages/ct_order.placed.v1"
    );
    for channel in ["ct_order.placed", "ct_order.shipped", "ct_audit.noted"] {
        assert!(doc["channels"][channel].is_object(), "channel {channel}");
    }

    // One message per event type, its payload the type's JSON Schema.
    let msg = &doc["components"]["messages"]["ct_order.placed.v1"];
    assert_eq!(msg["contentType"], "application/json");
    assert_eq!(
        msg["headers"]["properties"]["ce-type"]["const"],
        "ct_order.placed.v1"
    );
    let payload = &msg["payload"];
    assert_eq!(payload["type"], "object");
    let mut required: Vec<&str> = payload["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    required.sort();
    assert_eq!(required, ["lines", "order_id", "total_cents"]);
    assert_eq!(payload["properties"]["total_cents"]["type"], "integer");
    assert_eq!(
        payload["properties"]["note"]["type"],
        json!(["string", "null"])
    );
    let line = &payload["properties"]["lines"]["items"];
    assert_eq!(
        line["properties"]["sku"]["type"], "string",
        "subschemas are inlined"
    );
    let shipped = &doc["components"]["messages"]["ct_order.shipped.v1"]["payload"];
    assert_eq!(shipped["properties"]["carrier"]["type"], "string");
    let audit = &doc["components"]["messages"]["ct_audit.noted.v1"];
    assert_eq!(audit["payload"], json!({}));
    assert!(audit["x-eventbus-schema"]
        .as_str()
        .unwrap()
        .contains("does not derive `schemars::JsonSchema`"));

    // Receive operations: one per handler and event, with the consumer's settings.
    let bill = &doc["operations"]["ct_bill"];
    assert_eq!(bill["action"], "receive");
    assert_eq!(bill["channel"]["$ref"], "#/channels/ct_order.placed");
    assert_eq!(
        bill["messages"][0]["$ref"],
        "#/channels/ct_order.placed/messages/ct_order.placed.v1"
    );
    assert_eq!(bill["x-eventbus-durable"], "billing");
    assert_eq!(bill["bindings"]["nats"]["queue"], "billing");
    assert_eq!(bill["x-eventbus-stream"], "CT_ORDER");
    assert_eq!(bill["x-eventbus-max-deliver"], 7);
    assert_eq!(bill["x-eventbus-ack-wait"], "45s");
    assert_eq!(bill["x-eventbus-backoff"], json!(["1s", "10s"]));
    assert_eq!(bill["x-eventbus-dead-letter-stream"], "DLQ");
    for event in ["placed", "shipped"] {
        let op = &doc["operations"][format!("ct_project.{event}")];
        assert_eq!(op["action"], "receive", "ct_project handles {event}");
        assert_eq!(op["x-eventbus-durable"], "shop-ct_project");
    }
    let audit_op = &doc["operations"]["ct_audit"];
    assert_eq!(audit_op["x-eventbus-ephemeral"], true);
    assert_eq!(audit_op["x-eventbus-ack"], "none");
    assert!(audit_op["x-eventbus-max-deliver"].is_null());

    // Send operations: declared on a handler, and on the builder.
    let ship = &doc["operations"]["publish.ct_order.shipped.v1"];
    assert_eq!(ship["action"], "send");
    assert_eq!(ship["channel"]["$ref"], "#/channels/ct_order.shipped");
    assert_eq!(ship["x-eventbus-declared-by"], json!(["handler ct_bill"]));
    let noted = &doc["operations"]["publish.ct_audit.noted.v1"];
    assert_eq!(noted["x-eventbus-declared-by"], json!(["builder"]));

    let receive = doc["operations"]
        .as_object()
        .unwrap()
        .values()
        .filter(|o| o["action"] == "receive")
        .count();
    assert_eq!(receive, 4, "ct_bill, ct_project (two events), ct_audit");
}

#[test]
fn the_official_parser_accepts_the_document() {
    if let Some(report) = validate_asyncapi(&document()) {
        assert!(report.contains("valid AsyncAPI 3.0.0"), "{report}");
    }
    // Every handler of the binary.
    let all = eventbus::builder()
        .no_env()
        .service(SERVICE)
        .all_handlers()
        .asyncapi()
        .unwrap();
    validate_asyncapi(&all);
}

#[test]
fn a_topology_problem_is_the_documents_error() {
    let err = eventbus::builder()
        .no_env()
        .service("not a name")
        .asyncapi()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Registry, "{err}");
}
