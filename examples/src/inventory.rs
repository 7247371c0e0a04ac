//! An inventory service: the story of issue "Handlers in a real service", written the way a
//! user would, with no global, no second bus and no hand-copied ids.
//!
//! - A SKU is an event-sourced aggregate (`StockAdded`, `StockReserved`), appended to with
//!   optimistic concurrency.
//! - `reserve_stock` handles `OrderPlaced`: it loads the SKU, appends a reservation from the
//!   version it loaded (`ctx.append`: the order's correlation carried forward, the order as
//!   the cause) and confirms or rejects the order (`ctx.publish`).
//! - `project_stock` keeps a read model of stock levels in SQLite (sqlx), taken as application
//!   state (`State<ReadModel>`). It is idempotent under redelivery: the stream sequence it
//!   applied is stored in the same transaction as the change, and a sequence seen before is
//!   skipped.
//! - [`app`] is an HTTP API (axum) on the same bus and state: commands become events, queries
//!   read the read model.
//!
//! The binary `inventory` runs it; `examples/tests/inventory.rs` tests it on both backends.

use std::sync::Arc;

use axum::extract::{Path, State as HttpState};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use eventbus::prelude::*;
use eventbus::{Bus, ErrorKind};
use schemars::JsonSchema;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::Row;

// ---------------------------------------------------------------------------------------------
// Events and the SKU aggregate
// ---------------------------------------------------------------------------------------------

/// Stock came in.
#[derive(DomainEvent, Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[event(aggregate = "sku", name = "added")]
pub struct StockAdded {
    /// The SKU.
    #[event(aggregate_id)]
    pub sku: String,
    /// How many.
    pub qty: u32,
}

/// Stock was set aside for an order.
#[derive(DomainEvent, Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[event(aggregate = "sku", name = "reserved")]
pub struct StockReserved {
    /// The SKU.
    #[event(aggregate_id)]
    pub sku: String,
    /// The order it is for.
    pub order: String,
    /// How many.
    pub qty: u32,
}

/// Every event of a SKU.
#[derive(DomainEvent, Debug, Clone, PartialEq)]
#[event(aggregate = "sku")]
pub enum SkuEvent {
    /// Stock came in.
    Added(StockAdded),
    /// Stock was reserved.
    Reserved(StockReserved),
}

/// A SKU's stock, folded from its events.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct Sku {
    /// Units received.
    pub on_hand: u32,
    /// Units reserved for orders.
    pub reserved: u32,
}

impl Sku {
    /// Units that can still be reserved.
    pub fn available(&self) -> u32 {
        self.on_hand - self.reserved
    }
}

impl Aggregate for Sku {
    type Event = SkuEvent;
    fn apply(&mut self, event: &SkuEvent) {
        match event {
            SkuEvent::Added(e) => self.on_hand += e.qty,
            SkuEvent::Reserved(e) => self.reserved += e.qty,
        }
    }
}

/// A customer ordered.
#[derive(DomainEvent, Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[event(aggregate = "order", name = "placed")]
pub struct OrderPlaced {
    /// The order.
    #[event(aggregate_id)]
    pub order: String,
    /// What.
    pub sku: String,
    /// How many.
    pub qty: u32,
}

/// The stock for an order is reserved.
#[derive(DomainEvent, Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[event(aggregate = "order", name = "confirmed")]
pub struct OrderConfirmed {
    /// The order.
    #[event(aggregate_id)]
    pub order: String,
}

/// An order cannot be served.
#[derive(DomainEvent, Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[event(aggregate = "order", name = "rejected")]
pub struct OrderRejected {
    /// The order.
    #[event(aggregate_id)]
    pub order: String,
    /// Why.
    pub reason: String,
}

/// Every event of an order.
#[derive(DomainEvent, Debug, Clone, PartialEq)]
#[event(aggregate = "order")]
pub enum OrderEvent {
    /// Placed.
    Placed(OrderPlaced),
    /// Stock reserved.
    Confirmed(OrderConfirmed),
    /// Not served.
    Rejected(OrderRejected),
}

// ---------------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------------

/// Reserves the stock of a placed order, or rejects the order. A reservation that loses a race
/// with another writer of the SKU (a version conflict) is retried with backoff by the bus, and
/// loads the SKU again.
#[event_handler(
    max_deliver = 10,
    backoff = ["100ms", "500ms", "2s"],
    publishes = [StockReserved, OrderConfirmed, OrderRejected]
)]
pub async fn reserve_stock(event: OrderPlaced, ctx: EventContext) -> Result<(), HandlerError> {
    let sku = ctx.load::<Sku>(&event.sku).await?;
    if sku.state.available() < event.qty {
        let reason = format!(
            "{} of {} available, {} ordered",
            sku.state.available(),
            event.sku,
            event.qty
        );
        ctx.publish(&OrderRejected {
            order: event.order,
            reason,
        })
        .await?;
        return Ok(());
    }
    let reserved = SkuEvent::Reserved(StockReserved {
        sku: event.sku.clone(),
        order: event.order.clone(),
        qty: event.qty,
    });
    ctx.append(&event.sku, sku.version, &[reserved]).await?;
    ctx.publish(&OrderConfirmed { order: event.order }).await?;
    Ok(())
}

/// Keeps the stock levels of the read model. `ordered`: one SKU's events are applied in their
/// order. Idempotent: the event's stream sequence is recorded in the same transaction as the
/// change, and an event whose sequence is recorded already is skipped, so a redelivery (after
/// a crash before the ack) changes nothing.
#[event_handler(ordered)]
pub async fn project_stock(
    event: SkuEvent,
    State(db): State<ReadModel>,
    ctx: EventContext,
) -> Result<(), HandlerError> {
    db.apply(ctx.delivery().stream_sequence, &event).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The read model
// ---------------------------------------------------------------------------------------------

/// Stock levels by SKU, in SQLite.
#[derive(Clone, Debug)]
pub struct ReadModel {
    pool: SqlitePool,
}

/// One SKU's row of the read model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLevel {
    /// The SKU.
    pub sku: String,
    /// Units received.
    pub on_hand: i64,
    /// Units reserved.
    pub reserved: i64,
}

impl ReadModel {
    /// Opens (creating it if needed) the database at `url` (`sqlite://path`, or
    /// `sqlite::memory:` for one in memory) and its tables.
    pub async fn open(url: &str) -> Result<ReadModel, sqlx::Error> {
        let options: SqliteConnectOptions = url.parse()?;
        let options = options.create_if_missing(true);
        // One connection: an in-memory database lives in its connection; a file needs no
        // more for this example.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, on_hand INTEGER NOT NULL, reserved INTEGER NOT NULL)",
        )
        .execute(&pool)
        .await?;
        sqlx::query("CREATE TABLE IF NOT EXISTS applied (sequence INTEGER PRIMARY KEY)")
            .execute(&pool)
            .await?;
        Ok(ReadModel { pool })
    }

    /// Applies the event at stream `sequence`, once: returns whether it changed anything.
    pub async fn apply(&self, sequence: u64, event: &SkuEvent) -> Result<bool, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let fresh = sqlx::query("INSERT OR IGNORE INTO applied (sequence) VALUES (?)")
            .bind(sequence as i64)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if fresh {
            let (sku, on_hand, reserved) = match event {
                SkuEvent::Added(e) => (&e.sku, e.qty, 0),
                SkuEvent::Reserved(e) => (&e.sku, 0, e.qty),
            };
            sqlx::query(
                "INSERT INTO stock (sku, on_hand, reserved) VALUES (?, ?, ?) \
                 ON CONFLICT (sku) DO UPDATE SET on_hand = on_hand + excluded.on_hand, reserved = reserved + excluded.reserved",
            )
            .bind(sku)
            .bind(i64::from(on_hand))
            .bind(i64::from(reserved))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(fresh)
    }

    /// The stock level of a SKU, if the read model has seen it.
    pub async fn level(&self, sku: &str) -> Result<Option<StockLevel>, sqlx::Error> {
        let row = sqlx::query("SELECT sku, on_hand, reserved FROM stock WHERE sku = ?")
            .bind(sku)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| StockLevel {
            sku: r.get("sku"),
            on_hand: r.get("on_hand"),
            reserved: r.get("reserved"),
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// The HTTP API
// ---------------------------------------------------------------------------------------------

/// What the HTTP handlers share: the same bus and read model as the event handlers.
#[derive(Clone)]
struct Http {
    bus: Bus,
    db: ReadModel,
}

/// A new stock delivery.
#[derive(Debug, Deserialize, Serialize)]
pub struct AddStock {
    /// How many.
    pub qty: u32,
}

/// A new order.
#[derive(Debug, Deserialize, Serialize)]
pub struct PlaceOrder {
    /// The order's id.
    pub order: String,
    /// What.
    pub sku: String,
    /// How many.
    pub qty: u32,
}

type Reply = (StatusCode, Json<serde_json::Value>);

fn failure(e: impl std::fmt::Display, status: StatusCode) -> Reply {
    (status, Json(serde_json::json!({ "error": e.to_string() })))
}

fn bus_failure(e: eventbus::Error) -> Reply {
    let status = match e.kind() {
        ErrorKind::InvalidAggregateId => StatusCode::BAD_REQUEST,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    failure(e, status)
}

/// `POST /skus/{sku}/stock {"qty": n}`: appends `StockAdded`, from the version loaded (a
/// concurrent writer makes it `409 Conflict`: send it again).
async fn add_stock(
    HttpState(http): HttpState<Arc<Http>>,
    Path(sku): Path<String>,
    Json(body): Json<AddStock>,
) -> Reply {
    let loaded = match http.bus.load::<Sku>(sku.clone()).await {
        Ok(l) => l,
        Err(e) => return bus_failure(e),
    };
    let added = SkuEvent::Added(StockAdded {
        sku: sku.clone(),
        qty: body.qty,
    });
    match http.bus.append(&sku, loaded.version, &[added]).await {
        Ok(a) => (
            StatusCode::CREATED,
            Json(serde_json::json!({ "sku": sku, "version": a.version })),
        ),
        Err(e) => bus_failure(e),
    }
}

/// `POST /orders {"order": "o1", "sku": "s1", "qty": n}`: publishes `OrderPlaced` with the
/// order's id as the event id, so a client sending it twice places it once.
async fn place_order(HttpState(http): HttpState<Arc<Http>>, Json(body): Json<PlaceOrder>) -> Reply {
    let event = OrderPlaced {
        order: body.order.clone(),
        sku: body.sku,
        qty: body.qty,
    };
    let options = eventbus::PublishOptions {
        id: Some(format!("order-{}", body.order)),
        ..Default::default()
    };
    match http.bus.publish_with(&event, options).await {
        Ok(p) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "order": body.order, "event_id": p.id })),
        ),
        Err(e) => bus_failure(e),
    }
}

/// `GET /skus/{sku}`: the read model's stock level.
async fn stock_level(HttpState(http): HttpState<Arc<Http>>, Path(sku): Path<String>) -> Reply {
    match http.db.level(&sku).await {
        Ok(Some(level)) => (StatusCode::OK, Json(serde_json::json!(level))),
        Ok(None) => failure(format!("no stock of `{sku}` yet"), StatusCode::NOT_FOUND),
        Err(e) => failure(e, StatusCode::INTERNAL_SERVER_ERROR),
    }
}

/// `GET /orders/{order}`: where the order stands, from its events in the stream.
async fn order_status(HttpState(http): HttpState<Arc<Http>>, Path(order): Path<String>) -> Reply {
    let events = match http.bus.read::<OrderEvent>(order.clone()).collect().await {
        Ok(events) => events,
        Err(e) => return bus_failure(e),
    };
    let status = match events.last().map(|r| &r.event) {
        None => return failure(format!("no order `{order}`"), StatusCode::NOT_FOUND),
        Some(OrderEvent::Placed(_)) => "placed",
        Some(OrderEvent::Confirmed(_)) => "confirmed",
        Some(OrderEvent::Rejected(_)) => "rejected",
    };
    (
        StatusCode::OK,
        Json(serde_json::json!({ "order": order, "status": status })),
    )
}

/// The HTTP API on `bus` and `db`.
pub fn app(bus: Bus, db: ReadModel) -> Router {
    Router::new()
        .route("/skus/{sku}/stock", post(add_stock))
        .route("/skus/{sku}", get(stock_level))
        .route("/orders", post(place_order))
        .route("/orders/{order}", get(order_status))
        .with_state(Arc::new(Http { bus, db }))
}

/// The handlers of this service, by name: what its bus runs.
pub const HANDLERS: [&str; 2] = ["reserve_stock", "project_stock"];

/// The service, before its state is given: its name, its handlers, and the events its HTTP API
/// publishes (with `reserve_stock`'s `publishes`, the `send` operations of its AsyncAPI
/// document).
pub fn service() -> eventbus::Builder {
    eventbus::builder()
        .service("inventory")
        .only_handlers(HANDLERS)
        .publishes::<OrderPlaced>()
        .publishes::<StockAdded>()
}
