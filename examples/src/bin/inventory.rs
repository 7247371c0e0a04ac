//! Inventory: a service with application state, a read model in SQLite and an HTTP API, on one
//! bus (see `examples/src/inventory.rs` for the story).
//!
//! Run: `cargo run -p eventbus-examples --bin inventory` (the in-process broker, the read model
//! in memory, HTTP on 127.0.0.1:3000), then:
//!
//! ```text
//! curl -X POST localhost:3000/skus/widget/stock -H 'content-type: application/json' -d '{"qty":10}'
//! curl -X POST localhost:3000/orders -H 'content-type: application/json' -d '{"order":"o1","sku":"widget","qty":3}'
//! curl localhost:3000/orders/o1     # {"order":"o1","status":"confirmed"}
//! curl localhost:3000/skus/widget   # {"on_hand":10,"reserved":3,"sku":"widget"}
//! ```
//!
//! On JetStream: `EVENTBUS_URL=nats://127.0.0.1:4222`; a read model on disk:
//! `INVENTORY_DB=sqlite://inventory.db`; another address: `INVENTORY_HTTP_ADDR=0.0.0.0:8080`.
//! Ctrl-C (or SIGTERM) stops the HTTP server, then the bus, gracefully.

use eventbus_examples::inventory::{app, service, ReadModel};

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("listen for SIGTERM");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,eventbus=info".into()),
        )
        .init();
    let db = ReadModel::open(&setting("INVENTORY_DB", "sqlite::memory:")).await?;
    // One bus: it runs this service's handlers, with the read model as their state, and the
    // HTTP API publishes and reads through it.
    let bus = service().state(db.clone()).start().await?;
    let addr = setting("INVENTORY_HTTP_ADDR", "127.0.0.1:3000");
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("inventory: HTTP on http://{addr}");
    axum::serve(listener, app(bus.clone(), db))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    bus.shutdown().await?;
    println!("inventory: shut down");
    Ok(())
}
