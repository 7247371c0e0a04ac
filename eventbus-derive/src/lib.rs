//! Macros of the `eventbus` framework; use them through the `eventbus` crate, which re-exports
//! them (`eventbus::DomainEvent`, `eventbus::event_handler`) and provides every path the
//! generated code names (`::eventbus::__private`).
//!
//! This file holds the entry points only. Each one parses its input, calls one `expand`, and
//! turns the errors into `compile_error!`s in one place ([`expand_with`]). Analysis lives in
//! `internals` (model, attributes, checks); generation in `domain_event` and `event_handler`.

use proc_macro::TokenStream;
use quote::ToTokens;
use syn::parse::Parse;

mod domain_event;
mod event_handler;
mod internals;

/// Derives `eventbus::DomainEvent` on a struct (one event), or `eventbus::EventSet` on an enum
/// of event structs (an event set).
///
/// # On a struct
///
/// ```
/// use eventbus::prelude::*;
///
/// #[derive(DomainEvent, Serialize, Deserialize)]
/// #[event(aggregate = "order", name = "created")] // published on order.<order_id>.created
/// pub struct OrderCreated {
///     #[event(aggregate_id)]
///     pub order_id: String,
///     pub total_cents: u64,
/// }
///
/// # use eventbus::DomainEvent as _;
/// assert_eq!(OrderCreated::SUBJECT_PATTERN, "order.*.created");
/// assert_eq!(OrderCreated::subject_for("42").unwrap(), "order.42.created");
/// ```
///
/// | `#[event(...)]` on the struct | |
/// |---|---|
/// | `aggregate = "order"` | required: the aggregate type, the subject's first token |
/// | `name = "created"` | required: the event type, the subject's last token; stable on the wire, whatever the Rust type is called |
/// | `version = 2` | the schema version (default 1), in `ce-type` as `order.created.v2` |
/// | `cloud_type = "com.example.orders.created"` | the CloudEvents type other producers give the event, read as it |
/// | `upcast = order_created_from` | (with `version` ≥ 2) a `fn(u32, serde_json::Value) -> Result<serde_json::Value, eventbus::UpcastError>` turning the JSON of an older version into this one: events stored as an older version are handled, read and loaded as this one |
///
/// `aggregate` and `name` are one subject token of ASCII letters, digits, `_` and `-`. Exactly
/// one field, named or positional, is marked `#[event(aggregate_id)]`; its type implements
/// `eventbus::AggregateId` (strings, integers, `Uuid`, or a newtype of yours). The id is checked
/// when a subject is built, never routed to a wrong subject.
///
/// Generated: `impl DomainEvent` (`AGGREGATE_TYPE`, `EVENT_TYPE`, `SUBJECT_PATTERN`, `VERSION`,
/// `aggregate_id()`), `impl EventSet` (a set of one: encoding and decoding by event type), and
/// the event's registration in the registry. `Serialize` and `Deserialize`
/// are derived by you, so that serde's attributes stay yours. Generic structs are refused: an
/// event type is registered once for the whole program.
///
/// # On an enum: an event set
///
/// ```
/// # use eventbus::prelude::*;
/// # #[derive(DomainEvent, Serialize, Deserialize)]
/// # #[event(aggregate = "order", name = "created")]
/// # pub struct OrderCreated { #[event(aggregate_id)] pub order_id: String }
/// # #[derive(DomainEvent, Serialize, Deserialize)]
/// # #[event(aggregate = "order", name = "shipped")]
/// # pub struct OrderShipped { #[event(aggregate_id)] pub order_id: String }
/// #[derive(DomainEvent)]
/// #[event(aggregate = "order")]
/// pub enum OrderEvent {
///     Created(OrderCreated),
///     Shipped(OrderShipped),
/// }
///
/// let event: OrderEvent = OrderShipped { order_id: "42".into() }.into();
/// assert_eq!(event.descriptor().name, "shipped");
/// assert_eq!(OrderEvent::FILTER, "order.*.*");
/// ```
///
/// Each variant wraps one event struct. Generated: `impl EventSet` (its `EVENTS` are the
/// variants' events; encoding delegates to the variant, decoding picks the variant by event
/// type) and `impl From<Event> for Set` for each variant. Checked at compile time: every
/// variant's event is of the set's aggregate, and no two variants hold the same event type.
///
/// Every problem with the attributes is reported at once, each on the token at fault.
#[proc_macro_derive(DomainEvent, attributes(event))]
pub fn derive_domain_event(input: TokenStream) -> TokenStream {
    expand_with(input, domain_event::expand)
}

/// Registers an `async fn` as an event handler: `eventbus::run()` (or the builder) gives it a
/// consumer and calls it for every event its subject filter matches.
///
/// ```
/// use eventbus::prelude::*;
/// # #[derive(DomainEvent, Serialize, Deserialize)]
/// # #[event(aggregate = "order", name = "created")]
/// # pub struct OrderCreated { #[event(aggregate_id)] pub order_id: String }
///
/// #[event_handler] // consumes order.*.created, with the default options
/// async fn bill_order(event: OrderCreated) -> Result<(), HandlerError> {
///     let _ = event.order_id;
///     Ok(())
/// }
///
/// #[event_handler(subject = "order.*.created", durable = "shipping", max_deliver = 10, backoff = ["1s", "1m"])]
/// async fn reserve_stock(event: OrderCreated, ctx: EventContext) -> Result<(), std::io::Error> {
///     let _ = (event, ctx.attempt());
///     Ok(())
/// }
///
/// #[derive(Clone)]
/// struct Warehouse { name: &'static str }
///
/// // State given with `eventbus::builder().state(Warehouse { .. })`.
/// #[event_handler(durable = "picking")]
/// async fn pick(event: OrderCreated, State(w): State<Warehouse>, ctx: EventContext) -> Result<(), HandlerError> {
///     let _ = (event, w.name, ctx.attempt());
///     Ok(())
/// }
/// ```
///
/// The function is `async fn name(event: E, ...) -> Result<(), Err>`, where `E` is an event
/// struct or an event set, each parameter after the event is taken from the handler's context
/// (`ctx: EventContext`, application state as `State(x): State<T>`, or any type implementing
/// `eventbus::FromContext`, in any order), and `Err` converts into `HandlerError` (any
/// `std::error::Error + Send + Sync`, or `HandlerError` itself to mark an error permanent).
/// Its future must be `Send`. The function itself is left as it is, so it can be called
/// directly in tests.
///
/// | option | |
/// |---|---|
/// | `subject = "order.*.created"` | the subject filter; default: the event's pattern (`order.*.*` for a set). Checked at compile time: tokens not empty, `*` and `>` whole tokens, `>` last, no white space, and able to match the event's subjects |
/// | `durable = "name"` / `durable = false` | the durable consumer's name (`[A-Za-z0-9_-]`; default `{service}-{handler}`), or an ephemeral consumer per instance |
/// | `deliver = "all" \| "last" \| "last_per_subject" \| "new"` | where a new consumer starts (default `all`) |
/// | `start_sequence = N` | start at stream sequence `N` (instead of `deliver`) |
/// | `ack = "explicit" \| "none"` | `none` for lossy projections: nothing is retried |
/// | `replay = "instant" \| "original"` | replay speed of stored events |
/// | `max_deliver = N` | deliveries before an event is dead-lettered (N ≥ 1) |
/// | `ack_wait = "30s"` | how long the server waits for an ack |
/// | `backoff = ["1s", "5s", "30s"]` | delays before each retry; the last one repeats |
/// | `concurrency = N` | events handled at once per instance (N ≥ 1) |
/// | `ordered` / `ordered = true` | one aggregate's events one at a time, in stream order |
/// | `publishes = [OrderShipped, OrderCancelled]` | the event types the handler publishes: the `send` operations of the service's AsyncAPI document |
///
/// Durations are `<number><unit>` parts with units `h`, `m`, `s`, `ms`, largest first:
/// `"500ms"`, `"30s"`, `"1m30s"`. `max_deliver`, `backoff` and `ack_wait` need acks, so they
/// cannot be combined with `ack = "none"`. Options given in configuration override these.
///
/// Every problem with the options or the signature is reported at once, each on the token at
/// fault.
#[proc_macro_attribute]
pub fn event_handler(args: TokenStream, input: TokenStream) -> TokenStream {
    let args = proc_macro2::TokenStream::from(args);
    expand_with(input, |item| event_handler::expand(args, item))
}

/// Parses `input`, expands it with `f`, and turns a parse or expansion error into
/// `compile_error!` invocations, each on the span of the user's token it is about.
fn expand_with<I, K, F>(input: TokenStream, f: F) -> TokenStream
where
    I: Parse,
    K: ToTokens,
    F: FnOnce(I) -> syn::Result<K>,
{
    match syn::parse::<I>(input).and_then(f) {
        Ok(tokens) => tokens.into_token_stream().into(),
        Err(e) => e.into_compile_error().into(),
    }
}
