//! Quickstart: two handlers, one event chain.
//!
//! Run: `scripts/quickstart.sh` (starts a nats-server on a free port and runs this program
//! against it), or with a server of your own:
//! `EVENTBUS_URL=nats://127.0.0.1:4222 cargo run --bin quickstart`.
//!
//! It publishes three `OrderCreated` events; `bill_order` handles each and publishes an
//! `InvoiceIssued` caused by it; `send_invoice` handles those. When all three invoices are
//! sent, the program shuts down gracefully.

use std::sync::atomic::{AtomicUsize, Ordering};

use eventbus::prelude::*;
use schemars::JsonSchema;
use tokio::sync::Notify;

#[derive(DomainEvent, Serialize, Deserialize, JsonSchema, Debug, Clone)]
#[event(aggregate = "order", name = "created")]
struct OrderCreated {
    #[event(aggregate_id)]
    order_id: String,
    total_cents: u64,
}

#[derive(DomainEvent, Serialize, Deserialize, JsonSchema, Debug, Clone)]
#[event(aggregate = "invoice", name = "issued")]
struct InvoiceIssued {
    #[event(aggregate_id)]
    invoice_id: String,
    order_id: String,
    total_cents: u64,
}

#[event_handler(subject = "order.*.created", publishes = [InvoiceIssued])]
async fn bill_order(event: OrderCreated, ctx: EventContext) -> Result<(), HandlerError> {
    let invoice = InvoiceIssued {
        invoice_id: format!("inv-{}", event.order_id),
        order_id: event.order_id.clone(),
        total_cents: event.total_cents,
    };
    ctx.publish(&invoice).await?;
    println!(
        "billed order {} ({} cents)",
        event.order_id, event.total_cents
    );
    Ok(())
}

static SENT: AtomicUsize = AtomicUsize::new(0);
static ALL_SENT: Notify = Notify::const_new();

#[event_handler]
async fn send_invoice(event: InvoiceIssued, ctx: EventContext) -> Result<(), HandlerError> {
    println!(
        "sent invoice {} for order {} (correlation {})",
        event.invoice_id,
        event.order_id,
        ctx.correlation_id()
    );
    if SENT.fetch_add(1, Ordering::SeqCst) + 1 == 3 {
        ALL_SENT.notify_one();
    }
    Ok(())
}

/// The service: its handlers, and the events it publishes itself (its AsyncAPI document's
/// `send` operations, with `bill_order`'s `publishes`).
fn service() -> eventbus::Builder {
    eventbus::builder()
        .service("quickstart")
        .publishes::<OrderCreated>()
}

#[tokio::main]
async fn main() -> Result<(), eventbus::Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,eventbus=info".into()),
        )
        .init();
    // `all_handlers`: a bus runs handlers only when told to (a publisher alone runs none).
    let bus = service().all_handlers().start().await?;
    for (id, total) in [("1001", 2500), ("1002", 990), ("1003", 12000)] {
        let stored = bus
            .publish(&OrderCreated {
                order_id: id.into(),
                total_cents: total,
            })
            .await?;
        println!(
            "published order {id} as {}#{}",
            stored.stream, stored.sequence
        );
    }
    ALL_SENT.notified().await;
    bus.shutdown().await?;
    println!("done");
    Ok(())
}
