//! The inventory example (`examples/src/inventory.rs`) end to end, on the in-process broker and
//! on a real nats-server: stock comes in through the HTTP API, orders are placed, the handler
//! reserves or rejects (appending to the SKU from a handler, the chain kept), the SQLite read
//! model follows, and a redelivered event changes nothing.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use eventbus::testing::TestContext;
use eventbus_examples::inventory::{
    app, project_stock, OrderPlaced, ReadModel, SkuEvent, StockAdded, StockLevel, HANDLERS,
};
use eventbus_tests::{wait_for, NatsServer};
use tower::ServiceExt;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Sends one request to the API and returns the status and the JSON body.
async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    body: Option<serde_json::Value>,
) -> (StatusCode, serde_json::Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(match body {
            Some(b) => Body::from(b.to_string()),
            None => Body::empty(),
        })
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, json)
}

async fn order_status(app: &Router, order: &str) -> Option<String> {
    let (status, body) = call(app, "GET", &format!("/orders/{order}"), None).await;
    (status == StatusCode::OK).then(|| body["status"].as_str().unwrap_or_default().to_owned())
}

async fn story(url: &str) {
    let db = ReadModel::open("sqlite::memory:").await.unwrap();
    let bus = eventbus::builder()
        .no_env()
        .url(url)
        .service("inventory")
        .only_handlers(HANDLERS)
        .state(db.clone())
        .start()
        .await
        .unwrap();
    let api = app(bus.clone(), db.clone());

    let (status, body) = call(
        &api,
        "POST",
        "/skus/widget/stock",
        Some(serde_json::json!({ "qty": 10 })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["version"], 1);

    for (order, qty) in [("o1", 3), ("o2", 20)] {
        let (status, body) = call(
            &api,
            "POST",
            "/orders",
            Some(serde_json::json!({ "order": order, "sku": "widget", "qty": qty })),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    // The same order sent again is placed once (its id is the event id).
    let (status, _) = call(
        &api,
        "POST",
        "/orders",
        Some(serde_json::json!({ "order": "o1", "sku": "widget", "qty": 3 })),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);

    for (order, expected) in [("o1", "confirmed"), ("o2", "rejected")] {
        wait_for(TIMEOUT, format!("order {order} is {expected}"), || async {
            (order_status(&api, order).await.as_deref() == Some(expected)).then_some(())
        })
        .await;
    }
    let level: StockLevel = wait_for(TIMEOUT, "the read model shows the reservation", || async {
        let (status, body) = call(&api, "GET", "/skus/widget", None).await;
        let level: Option<StockLevel> =
            (status == StatusCode::OK).then(|| serde_json::from_value(body).unwrap());
        level.filter(|l| l.reserved == 3)
    })
    .await;
    assert_eq!(level.on_hand, 10);

    // The reservation was appended by the handler, caused by the order, in its chain.
    let sku = bus.read::<SkuEvent>("widget").collect().await.unwrap();
    assert_eq!(sku.len(), 2, "stock added, one reservation: {sku:?}");
    let placed = bus.read::<OrderPlaced>("o1").collect().await.unwrap();
    assert_eq!(placed.len(), 1, "placed once");
    let reserved = &sku[1].metadata;
    assert_eq!(
        reserved.causation_id.as_deref(),
        Some(placed[0].metadata.id.as_str())
    );
    assert_eq!(
        reserved.correlation_id.as_deref(),
        Some(placed[0].metadata.id.as_str())
    );
    bus.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_inventory_story_in_process() {
    story(&format!("memory://inventory-{}", std::process::id())).await;
}

#[tokio::test]
async fn the_inventory_story_on_nats() {
    let server = NatsServer::start().await;
    story(&server.url()).await;
}

#[tokio::test]
async fn the_projection_applies_a_redelivered_event_once() {
    let db = ReadModel::open("sqlite::memory:").await.unwrap();
    let event = SkuEvent::Added(StockAdded {
        sku: "bolt".into(),
        qty: 5,
    });
    let first = TestContext::new().delivery(7, 1);
    project_stock(
        event.clone(),
        eventbus::State(db.clone()),
        first.context_for(&event).unwrap(),
    )
    .await
    .unwrap();
    // The same event (stream sequence 7) again, as after a crash before its ack.
    let again = TestContext::new().delivery(7, 2);
    project_stock(
        event.clone(),
        eventbus::State(db.clone()),
        again.context_for(&event).unwrap(),
    )
    .await
    .unwrap();
    let level = db.level("bolt").await.unwrap().unwrap();
    assert_eq!((level.on_hand, level.reserved), (5, 0));
}

/// The service's handlers with their real SQLite read model on a `TestBus`, with the clock
/// running (a paused clock would stop the pool's own timers): `wait_idle` waits for the work.
#[tokio::test]
async fn the_handlers_with_a_real_database_on_a_test_bus() {
    use eventbus::testing::{Outcome, TestBus};
    use eventbus_examples::inventory::{OrderConfirmed, OrderEvent};

    let db = ReadModel::open("sqlite::memory:").await.unwrap();
    let url = format!("memory://inventory-testbus-{}", std::process::id());
    let bus = TestBus::from_builder(
        TestBus::builder(&url)
            .only_handlers(HANDLERS)
            .state(db.clone()),
    )
    .await
    .unwrap();
    bus.append(
        "gear",
        0,
        &[SkuEvent::Added(StockAdded {
            sku: "gear".into(),
            qty: 4,
        })],
    )
    .await
    .unwrap();
    bus.publish(&OrderPlaced {
        order: "g1".into(),
        sku: "gear".into(),
        qty: 4,
    })
    .await
    .unwrap();
    bus.wait_idle().await;

    assert!(bus
        .handled("reserve_stock")
        .iter()
        .all(|h| h.outcome == Outcome::Acked));
    let level = db.level("gear").await.unwrap().unwrap();
    assert_eq!((level.on_hand, level.reserved), (4, 4));
    let order = bus.read::<OrderEvent>("g1").collect().await.unwrap();
    assert!(
        matches!(
            order.last().map(|r| &r.event),
            Some(OrderEvent::Confirmed(OrderConfirmed { .. }))
        ),
        "{order:?}"
    );
    bus.shutdown().await.unwrap();
}
