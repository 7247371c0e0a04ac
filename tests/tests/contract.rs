//! Event contracts (README, "Contracts"): the AsyncAPI document of a test registry, validated by
//! the official AsyncAPI parser (`@asyncapi/parser`, installed by
//! `scripts/install-asyncapi-parser.sh` and given as `EVENTBUS_ASYNCAPI_NODE_MODULES`; without
//! it that validation prints a note, and fails in CI); the schema-compatibility check against
//! snapshots; and upcasting, on the in-process broker and on a real nats-server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use eventbus::prelude::*;
use eventbus::testing::{check_schemas, check_schemas_of};
use eventbus::{ErrorKind, UpcastError};
use eventbus_tests::{validate_asyncapi, wait_for, wait_until};
use schemars::JsonSchema;
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(20);
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
    // Every handler of the binary, with the upcasting events' two versions of one channel.
    let all = eventbus::builder()
        .no_env()
        .service(SERVICE)
        .all_handlers()
        .asyncapi()
        .unwrap();
    assert_eq!(
        all["channels"]["ct_acct.opened"]["messages"]
            .as_object()
            .unwrap()
            .len(),
        2
    );
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

// ---------------------------------------------------------------------------------------------
// Schema compatibility against snapshots
// ---------------------------------------------------------------------------------------------

/// `ct_order.placed.v1` as it was committed before `note` was added.
fn placed_snapshot_without_note() -> Value {
    let mut v = eventbus::builder()
        .no_env()
        .service(SERVICE)
        .only_handlers(["ct_bill"])
        .asyncapi()
        .unwrap()["components"]["messages"]["ct_order.placed.v1"]["payload"]
        .clone();
    v["properties"].as_object_mut().unwrap().remove("note");
    v
}

#[test]
fn an_added_optional_field_passes_and_rewrites_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ct_order.placed.v1.json");
    std::fs::write(&path, placed_snapshot_without_note().to_string()).unwrap();

    let check = check_schemas_of::<OrderPlaced>(dir.path()).unwrap();
    assert_eq!(check.updated, std::slice::from_ref(&path));
    let rewritten: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(rewritten["properties"]["note"].is_object());

    let again = check_schemas_of::<OrderPlaced>(dir.path()).unwrap();
    assert_eq!(again.unchanged, [path]);
}

#[test]
fn a_removed_field_fails_naming_the_event_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    // The committed `ct_order.shipped.v1` had a `tracking` field the type no longer has.
    let mut old = json!({
        "type": "object",
        "properties": {
            "order_id": { "type": "string" },
            "carrier": { "type": "string" },
            "tracking": { "type": "string" }
        },
        "required": ["order_id", "carrier", "tracking"]
    });
    let path = dir.path().join("ct_order.shipped.v1.json");
    std::fs::write(&path, old.to_string()).unwrap();

    let err = check_schemas_of::<OrderShipped>(dir.path()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Contract);
    let msg = err.to_string();
    assert!(
        msg.contains("ct_order.shipped.v1")
            && msg.contains("OrderShipped")
            && msg.contains("field `tracking` was removed"),
        "{msg}"
    );
    assert!(
        msg.contains("raise the event's `#[event(version = ...)]`"),
        "{msg}"
    );
    // The failing check leaves the snapshot as committed.
    let kept: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(kept, old);

    // A type change is named the same way.
    old["properties"]["carrier"] = json!({ "type": "integer" });
    old["properties"]
        .as_object_mut()
        .unwrap()
        .remove("tracking");
    old["required"] = json!(["order_id", "carrier"]);
    std::fs::write(&path, old.to_string()).unwrap();
    let msg = check_schemas_of::<OrderShipped>(dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("field `carrier`: type changed from integer to string"),
        "{msg}"
    );
}

#[test]
fn a_new_version_writes_its_own_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    // Version 1 of `ct_acct.opened` had `owner` as a string; version 2 has an object, which
    // would break readers of v1, but it is a new version: it gets a snapshot of its own.
    let check = check_schemas(dir.path()).unwrap();
    for written in [
        "ct_acct.opened.v1.json",
        "ct_acct.opened.v2.json",
        "ct_order.placed.v1.json",
    ] {
        assert!(
            check.written.contains(&dir.path().join(written)),
            "{written} in {:?}",
            check.written
        );
    }
    assert!(check
        .without_schema
        .contains(&"ct_audit.noted.v1".to_owned()));
    let again = check_schemas(dir.path()).unwrap();
    assert!(
        again.written.is_empty() && again.updated.is_empty(),
        "{again:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Upcasting, on both backends
// ---------------------------------------------------------------------------------------------

/// Version 1, as the events in the stream were written before the upcaster existed.
mod v1 {
    use super::*;

    #[derive(DomainEvent, Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
    #[event(aggregate = "ct_acct", name = "opened")]
    pub(super) struct AccountOpened {
        #[event(aggregate_id)]
        pub(super) account_id: String,
        pub(super) owner: String,
    }

    #[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[event(aggregate = "ct_cust", name = "renamed")]
    pub(super) struct CustomerRenamed {
        #[event(aggregate_id)]
        pub(super) id: String,
        pub(super) name: String,
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
struct Owner {
    name: String,
    verified: bool,
}

/// Version 2: the owner became an object; stored v1 events are upcast.
#[derive(DomainEvent, Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[event(aggregate = "ct_acct", name = "opened", version = 2, upcast = account_opened_from)]
struct AccountOpened {
    #[event(aggregate_id)]
    account_id: String,
    owner: Owner,
}

fn account_opened_from(version: u32, mut data: Value) -> Result<Value, UpcastError> {
    match version {
        1 => {
            let name = data["owner"].take();
            if !name.is_string() {
                return Err(UpcastError::invalid("`owner` is not a string"));
            }
            data["owner"] = json!({ "name": name, "verified": false });
            Ok(data)
        }
        _ => Err(UpcastError::UnknownVersion),
    }
}

/// Version 2 of another event, with no upcaster: stored v1 events are dead-lettered.
#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(aggregate = "ct_cust", name = "renamed", version = 2)]
struct CustomerRenamed {
    #[event(aggregate_id)]
    id: String,
    first: String,
    last: String,
}

static OPENED: Mutex<Vec<AccountOpened>> = Mutex::new(Vec::new());

#[event_handler]
async fn ct_open_account(event: AccountOpened) -> Result<(), HandlerError> {
    OPENED.lock().unwrap().push(event);
    Ok(())
}

#[event_handler]
async fn ct_rename(_event: CustomerRenamed) -> Result<(), HandlerError> {
    Ok(())
}

#[derive(Default)]
struct Account {
    owner: Option<Owner>,
}

impl Aggregate for Account {
    type Event = AccountOpened;
    fn apply(&mut self, event: &AccountOpened) {
        self.owner = Some(event.owner.clone());
    }
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn id(name: &str) -> String {
    format!(
        "{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

async fn bus(url: &str, handlers: &[&str]) -> Bus {
    eventbus::builder()
        .no_env()
        .url(url)
        .service(SERVICE)
        .only_handlers(handlers.iter().copied())
        .start()
        .await
        .unwrap_or_else(|e| panic!("a bus on {url} does not start: {e}"))
}

async fn scenario_upcast(url: &str) {
    let (upcast, refused) = (id("a"), id("c"));
    // Before the upcaster: a service on version 1 stores its events.
    let old = bus(url, &[]).await;
    old.publish(&v1::AccountOpened {
        account_id: upcast.clone(),
        owner: "Ada".into(),
    })
    .await
    .unwrap();
    old.publish(&v1::CustomerRenamed {
        id: refused.clone(),
        name: "Grace Hopper".into(),
    })
    .await
    .unwrap();
    old.shutdown().await.unwrap();

    // After: version 2 with an upcaster handles, reads and loads the v1 event as v2.
    let new = bus(url, &["ct_open_account", "ct_rename"]).await;
    let expected = AccountOpened {
        account_id: upcast.clone(),
        owner: Owner {
            name: "Ada".into(),
            verified: false,
        },
    };
    wait_until(TIMEOUT, "the v1 event is handled as v2", || async {
        OPENED.lock().unwrap().contains(&expected)
    })
    .await;
    let read = new
        .read::<AccountOpened>(upcast.clone())
        .collect()
        .await
        .unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].event, expected);
    assert_eq!(read[0].metadata.version, Some(1), "stored as version 1");
    let loaded = new.load::<Account>(upcast.clone()).await.unwrap();
    assert_eq!(loaded.state.owner, Some(expected.owner.clone()));
    assert_eq!(loaded.version, 1);

    // Version 2 without an upcaster: the v1 event is dead-lettered, naming both versions.
    let dead = wait_for(
        TIMEOUT,
        "the v1 event without an upcaster is dead-lettered",
        || async {
            let all = new.dead_letters(Some("shop-ct_rename")).await.unwrap();
            let mine: Vec<_> = all
                .into_iter()
                .filter(|d| d.original_subject.contains(&refused))
                .collect();
            (!mine.is_empty()).then_some(mine)
        },
    )
    .await;
    assert_eq!(dead[0].reason, "undecodable");
    let why = &dead[0].error;
    assert!(
        why.contains("is version 1, older than version 2")
            && why.contains("`CustomerRenamed` declares no upcaster"),
        "{why}"
    );
    let err = new
        .read::<CustomerRenamed>(refused.clone())
        .collect()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode);
    assert!(
        err.to_string().contains("version 1, older than version 2"),
        "{err}"
    );
    new.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upcast_memory() {
    scenario_upcast(&format!("memory://ct-upcast-{}", std::process::id())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upcast_nats() {
    let server = eventbus_tests::NatsServer::start().await;
    scenario_upcast(&server.url()).await;
}

#[test]
fn an_upcaster_that_refuses_names_both_versions_and_its_reason() {
    let mut headers = eventbus::HeaderMap::new();
    headers.insert("ce-type", "ct_acct.opened.v1");
    let body = br#"{"account_id":"a1","owner":7}"#;
    let meta = eventbus::Metadata::from_parts("ct_acct.a1.opened", headers, body).unwrap();
    let err = eventbus::__private::decode::<AccountOpened>(&meta, body).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode);
    let msg = err.to_string();
    assert!(
        msg.contains("version 1, older than version 2") && msg.contains("`owner` is not a string"),
        "{msg}"
    );
}
