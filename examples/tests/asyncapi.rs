//! The AsyncAPI document of each example program, printed with `EVENTBUS_PRINT_ASYNCAPI=1`
//! (without connecting), validated by the official AsyncAPI parser (README, "Contracts"; the
//! parser is installed by `scripts/install-asyncapi-parser.sh` and given as
//! `EVENTBUS_ASYNCAPI_NODE_MODULES`; without it the validation prints a note, and fails in CI).

use std::process::{Command, Stdio};

use serde_json::Value;

/// Runs an example binary with `EVENTBUS_PRINT_ASYNCAPI=1` and parses what it prints.
fn printed(bin: &str) -> Value {
    let out = Command::new(bin)
        .env("EVENTBUS_PRINT_ASYNCAPI", "1")
        // Nothing to connect to: printing must not try.
        .env("EVENTBUS_URL", "nats://127.0.0.1:1")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
    assert!(
        out.status.success(),
        "{bin} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{bin} printed no JSON document ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn operations(doc: &Value, action: &str) -> Vec<String> {
    let mut v: Vec<String> = doc["operations"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, o)| o["action"] == action)
        .map(|(k, _)| k.clone())
        .collect();
    v.sort();
    v
}

#[test]
fn quickstart() {
    let doc = printed(env!("CARGO_BIN_EXE_quickstart"));
    assert_eq!(doc["info"]["title"], "quickstart");
    assert_eq!(doc["servers"]["nats"]["host"], "127.0.0.1:1");
    assert_eq!(operations(&doc, "receive"), ["bill_order", "send_invoice"]);
    assert_eq!(
        operations(&doc, "send"),
        ["publish.invoice.issued.v1", "publish.order.created.v1"]
    );
    let payload = &doc["components"]["messages"]["order.created.v1"]["payload"];
    assert_eq!(payload["properties"]["total_cents"]["type"], "integer");
    eventbus_tests::validate_asyncapi(&doc);
}

#[test]
fn bank_account() {
    let doc = printed(env!("CARGO_BIN_EXE_bank_account"));
    assert_eq!(operations(&doc, "receive"), Vec::<String>::new());
    assert_eq!(
        operations(&doc, "send"),
        [
            "publish.account.deposited.v1",
            "publish.account.opened.v1",
            "publish.account.withdrawn.v1"
        ]
    );
    eventbus_tests::validate_asyncapi(&doc);
}

#[test]
fn inventory() {
    let doc = printed(env!("CARGO_BIN_EXE_inventory"));
    assert_eq!(doc["info"]["title"], "inventory");
    assert_eq!(
        operations(&doc, "receive"),
        [
            "project_stock.added",
            "project_stock.reserved",
            "reserve_stock"
        ]
    );
    assert_eq!(operations(&doc, "send").len(), 5);
    eventbus_tests::validate_asyncapi(&doc);
}
