//! Handlers in a real service (README, "Handlers in a service"): application state taken by
//! type (`State<T>`) and refused at start-up when missing, a bus that only publishes whatever
//! handlers are linked, handler options from the environment, and the chain (correlation,
//! causation) kept through `ctx.publish_with`, `ctx.append` and `ctx.load` — on a real
//! nats-server and on the in-process broker; and one handler called alone with a
//! `TestContext`.
//!
//! Every handler of this file is registered in the test binary; each test names the ones it
//! runs. The state is per bus, not a global: two tests in one process do not share it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus::prelude::*;
use eventbus::testing::TestContext;
use eventbus::{ErrorKind, PublishOptions};
use eventbus_tests::{wait_until, NatsServer, Probe};

/// How long any one condition may take to come true.
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "svc_order", name = "placed")]
struct OrderPlaced {
    #[event(aggregate_id)]
    order: String,
    sku: String,
    qty: u32,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "svc_order", name = "confirmed")]
struct OrderConfirmed {
    #[event(aggregate_id)]
    order: String,
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "svc_sku", name = "reserved")]
struct StockReserved {
    #[event(aggregate_id)]
    sku: String,
    order: String,
    qty: u32,
}

/// The reservations of one SKU, folded from its events.
#[derive(Default, Debug)]
struct Sku {
    reserved: u32,
}

impl Aggregate for Sku {
    type Event = StockReserved;
    fn apply(&mut self, event: &StockReserved) {
        self.reserved += event.qty;
    }
}

/// The application's state of a test: the orders its handler saw.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

impl Seen {
    fn orders(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// Reserves stock for an order (an append to the SKU, from the version it loaded), then
/// confirms the order with an id of its own; both keep the chain without user code.
#[event_handler]
async fn svc_reserve(
    event: OrderPlaced,
    State(seen): State<Seen>,
    ctx: EventContext,
) -> Result<(), HandlerError> {
    let sku = ctx.load::<Sku>(&event.sku).await?;
    let reserved = StockReserved {
        sku: event.sku.clone(),
        order: event.order.clone(),
        qty: event.qty,
    };
    ctx.append(&event.sku, sku.version, &[reserved]).await?;
    ctx.publish_with(
        &OrderConfirmed {
            order: event.order.clone(),
        },
        PublishOptions {
            id: Some(format!("confirm-{}", event.order)),
            ..Default::default()
        },
    )
    .await?;
    seen.0.lock().unwrap().push(event.order);
    Ok(())
}

#[derive(DomainEvent, Serialize, Deserialize, Debug, Clone)]
#[event(aggregate = "svc_env", name = "ticked")]
struct EnvTicked {
    #[event(aggregate_id)]
    id: String,
}

#[event_handler(concurrency = 2, max_deliver = 3)]
async fn svc_env_handler(_event: EnvTicked) -> Result<(), HandlerError> {
    Ok(())
}

/// A URL nothing listens on: a bus that tried to connect there would fail with `Connect`.
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("nats://127.0.0.1:{port}")
}

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_handler_whose_state_was_not_given_is_refused_before_any_network_call() {
    let e = eventbus::builder()
        .no_env()
        .url(closed_port_url())
        .service("svc")
        .only_handlers(["svc_reserve"])
        .start()
        .await
        .expect_err("no Seen given");
    assert_eq!(e.kind(), ErrorKind::Registry, "{e}");
    let message = e.to_string();
    for part in ["handler `svc_reserve`", "State<", "Seen`", ".state("] {
        assert!(message.contains(part), "{part:?} in: {message}");
    }
    // Given, the same start goes on to connect (and fails there).
    let e = eventbus::builder()
        .no_env()
        .url(closed_port_url())
        .service("svc")
        .only_handlers(["svc_reserve"])
        .state(Seen::default())
        .connect_timeout(Duration::from_millis(200))
        .max_reconnects(Some(1))
        .start()
        .await
        .expect_err("nothing listens");
    assert_eq!(e.kind(), ErrorKind::Connect, "{e}");
}

// ---------------------------------------------------------------------------------------------
// The chain through a handler, with state, on both backends
// ---------------------------------------------------------------------------------------------

/// Runs `svc_reserve` on `url` with a state of its own, publishes an order with correlation
/// `corr-{order}`, and checks what the handler stored.
async fn the_chain_is_kept(url: &str, order: &str) {
    let seen = Seen::default();
    let bus = eventbus::builder()
        .no_env()
        .url(url)
        .service("svc-chain")
        .only_handlers(["svc_reserve"])
        .state(seen.clone())
        .start()
        .await
        .unwrap();
    let placed = bus
        .publish_with(
            &OrderPlaced {
                order: order.into(),
                sku: format!("sku-{order}"),
                qty: 3,
            },
            PublishOptions {
                correlation_id: Some(format!("corr-{order}")),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    wait_until(TIMEOUT, "the handler saw the order", || {
        let seen = seen.clone();
        async move { seen.orders() == [order] }
    })
    .await;

    // The append from the handler: in the SKU's history, with the order's chain.
    let history = bus
        .read::<StockReserved>(format!("sku-{order}"))
        .collect()
        .await
        .unwrap();
    assert_eq!(history.len(), 1);
    let meta = &history[0].metadata;
    assert_eq!(
        meta.correlation_id.as_deref(),
        Some(format!("corr-{order}").as_str())
    );
    assert_eq!(meta.causation_id.as_deref(), Some(placed.id.as_str()));
    assert_eq!(meta.source.as_deref(), Some("svc-chain"));
    let loaded = bus.load::<Sku>(format!("sku-{order}")).await.unwrap();
    assert_eq!((loaded.state.reserved, loaded.version), (3, 1));

    // The publish with an id of the handler's: that id, and the chain all the same.
    let confirmed = bus.read::<OrderConfirmed>(order).collect().await.unwrap();
    assert_eq!(confirmed.len(), 1);
    let meta = &confirmed[0].metadata;
    assert_eq!(meta.id, format!("confirm-{order}"));
    assert_eq!(
        meta.headers.get("Nats-Msg-Id").map(|v| v.as_str()),
        Some(format!("confirm-{order}").as_str())
    );
    assert_eq!(
        meta.correlation_id.as_deref(),
        Some(format!("corr-{order}").as_str())
    );
    assert_eq!(meta.causation_id.as_deref(), Some(placed.id.as_str()));
    bus.shutdown().await.unwrap();
}

#[tokio::test]
async fn state_and_chain_through_a_handler_on_nats() {
    let server = NatsServer::start().await;
    the_chain_is_kept(&server.url(), "n1").await;
}

#[tokio::test]
async fn state_and_chain_through_a_handler_in_process() {
    let url = format!("memory://svc-chain-{}", std::process::id());
    the_chain_is_kept(&url, "m1").await;
}

// ---------------------------------------------------------------------------------------------
// A bus that only publishes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_bus_started_without_choosing_handlers_runs_none_of_those_linked() {
    let server = NatsServer::start().await;
    // This binary links `svc_reserve` and `svc_env_handler`; a plain start runs neither (and
    // so needs no state).
    let bus = eventbus::builder()
        .no_env()
        .url(server.url())
        .service("svc-pub")
        .start()
        .await
        .unwrap();
    assert!(bus.topology().consumers.is_empty(), "{}", bus.topology());
    bus.publish(&OrderPlaced {
        order: "p1".into(),
        sku: "sku-p1".into(),
        qty: 1,
    })
    .await
    .unwrap();
    let probe = Probe::new(&server).await;
    let mut stream = probe.js.get_stream("SVC_ORDER").await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.state.messages, 1, "the event is stored");
    assert_eq!(info.state.consumer_count, 0, "and nothing consumes it");
    bus.shutdown().await.unwrap();

    // Running handlers is explicit: `all_handlers` runs every handler linked in.
    let seen = Seen::default();
    let bus = eventbus::builder()
        .no_env()
        .url(server.url())
        .service("svc-pub")
        .all_handlers()
        .state(seen.clone())
        .start()
        .await
        .unwrap();
    let mut handlers: Vec<&str> = bus
        .topology()
        .consumers
        .iter()
        .map(|c| c.handler.as_str())
        .collect();
    handlers.sort();
    assert_eq!(handlers, ["svc_env_handler", "svc_reserve"]);
    wait_until(TIMEOUT, "the stored order is handled", || {
        let seen = seen.clone();
        async move { seen.orders() == ["p1"] }
    })
    .await;
    bus.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Handler options from the environment
// ---------------------------------------------------------------------------------------------

/// The consumer plan of `svc_env_handler` under the process's environment.
fn env_plan() -> Result<eventbus::ConsumerPlan, eventbus::Error> {
    let topology = eventbus::builder()
        .service("svc-env")
        .only_handlers(["svc_env_handler"])
        .topology()?;
    Ok(topology.consumers[0].clone())
}

/// One test changes the environment, step by step (each test runs in a process of its own
/// under nextest; the variables are removed at the end).
#[test]
fn handler_options_come_from_the_environment_and_bad_values_name_their_variable() {
    const PREFIX: &str = "EVENTBUS_HANDLER_SVC_ENV_HANDLER_";
    let set = |k: &str, v: &str| std::env::set_var(format!("{PREFIX}{k}"), v);
    let unset = |k: &str| std::env::remove_var(format!("{PREFIX}{k}"));

    let plan = env_plan().unwrap();
    assert_eq!(
        (plan.concurrency, plan.max_deliver),
        (2, 3),
        "the attribute's"
    );

    set("CONCURRENCY", "7");
    set("MAX_DELIVER", "9");
    set("ACK_WAIT", "45s");
    set("BACKOFF", "1s, 2m");
    set("ORDERED", "true");
    set("DURABLE", "svc-env-durable");
    let plan = env_plan().unwrap();
    assert_eq!(plan.concurrency, 7);
    assert_eq!(plan.max_deliver, 9);
    assert_eq!(plan.ack_wait, Duration::from_secs(45));
    assert_eq!(
        plan.backoff,
        [Duration::from_secs(1), Duration::from_secs(120)]
    );
    assert!(plan.ordered);
    assert_eq!(plan.name, "svc-env-durable");

    // The builder's own setting wins over the environment.
    let topology = eventbus::builder()
        .service("svc-env")
        .only_handlers(["svc_env_handler"])
        .handler(
            "svc_env_handler",
            eventbus::ConsumerOptions {
                concurrency: Some(11),
                ..Default::default()
            },
        )
        .topology()
        .unwrap();
    assert_eq!(topology.consumers[0].concurrency, 11);
    assert_eq!(
        topology.consumers[0].max_deliver, 9,
        "the rest from the environment"
    );

    // Bad values: refused, each naming its variable, all at once.
    set("CONCURRENCY", "zero");
    set("ACK_WAIT", "soon");
    let e = env_plan().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    let message = e.to_string();
    assert!(
        message.contains(&format!("{PREFIX}CONCURRENCY=\"zero\"")),
        "{message}"
    );
    assert!(
        message.contains(&format!("{PREFIX}ACK_WAIT=\"soon\"")),
        "{message}"
    );
    set("CONCURRENCY", "7");
    set("ACK_WAIT", "45s");

    // A misspelt handler or option is refused too, not ignored.
    std::env::set_var("EVENTBUS_HANDLER_SVC_ENV_HANDLR_CONCURRENCY", "3");
    let e = env_plan().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(
        e.to_string()
            .contains("EVENTBUS_HANDLER_SVC_ENV_HANDLR_CONCURRENCY names no handler option"),
        "{e}"
    );
    std::env::remove_var("EVENTBUS_HANDLER_SVC_ENV_HANDLR_CONCURRENCY");

    for k in [
        "CONCURRENCY",
        "MAX_DELIVER",
        "ACK_WAIT",
        "BACKOFF",
        "ORDERED",
        "DURABLE",
    ] {
        unset(k);
    }
    assert_eq!(env_plan().unwrap().concurrency, 2);
}

// ---------------------------------------------------------------------------------------------
// One handler alone, with no bus
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_handler_called_alone_with_a_test_context() {
    let test = TestContext::new();
    let placed = OrderPlaced {
        order: "t1".into(),
        sku: "sku-t1".into(),
        qty: 2,
    };
    let ctx = test.context_for(&placed).unwrap();
    let seen = Seen::default();
    svc_reserve(placed, State(seen.clone()), ctx.clone())
        .await
        .unwrap();
    assert_eq!(seen.orders(), ["t1"]);

    let confirmed = test.published::<OrderConfirmed>().await.unwrap();
    assert_eq!(confirmed.len(), 1);
    assert_eq!(confirmed[0].0.order, "t1");
    assert_eq!(confirmed[0].1.id, "confirm-t1");
    assert_eq!(confirmed[0].1.causation_id.as_deref(), Some(ctx.event_id()));
    let reserved = test.published::<StockReserved>().await.unwrap();
    assert_eq!(reserved.len(), 1);
    assert_eq!(reserved[0].0.qty, 2);
    assert_eq!(
        reserved[0].1.correlation_id.as_deref(),
        Some(ctx.correlation_id())
    );
}
