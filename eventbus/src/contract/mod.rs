//! Event contracts: what a service publishes and consumes, with the payloads' shapes, for other
//! teams and for checks before a change ships.
//!
//! - `schema.rs`: an event type's payload JSON Schema (draft-07), from `schemars`.
//! - `asyncapi.rs`: the AsyncAPI 3.0 document of a planned topology.
//! - `compat.rs`: whether a new payload schema breaks readers of an old one, and the committed
//!   snapshots it is checked against.
//!
//! It reads the registry and the topology, so it sits above them; `bus` and `testing` call it.

mod asyncapi;
mod compat;
mod schema;

pub(crate) use asyncapi::document;
pub(crate) use compat::check_snapshots;
pub use compat::{breaking_changes, SchemaCheck};
#[cfg(feature = "schema")]
pub(crate) use schema::schema_of;
