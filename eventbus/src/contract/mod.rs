//! Event contracts: what a service publishes and consumes, with the payloads' shapes, for other
//! teams and for checks before a change ships.
//!
//! - `schema.rs`: an event type's payload JSON Schema (draft-07), from `schemars`.
//! - `asyncapi.rs`: the AsyncAPI 3.0 document of a planned topology.
//!
//! It reads the registry and the topology, so it sits above them; `bus` calls it.

mod asyncapi;
mod schema;

pub(crate) use asyncapi::document;
#[cfg(feature = "schema")]
pub(crate) use schema::schema_of;
