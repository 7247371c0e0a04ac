#![doc = include_str!("../../README.md")]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

// The module map, bottom to top, is in docs/ARCHITECTURE.md: each module imports only from
// modules below it.
mod aggregate;
mod backend;
mod bus;
mod config;
mod contract;
mod dispatch;
mod dlq;
mod envelope;
mod error;
mod event;
mod handler;
#[cfg(feature = "http")]
mod http;
mod observe;
mod provision;
mod publish;
mod read;
mod registry;
mod rules;
mod stats;
mod subject;
pub mod testing;
mod topology;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use crate::aggregate::{Aggregate, Appended, Loaded, APPEND_MIN_SERVER_VERSION};
pub use crate::backend::{ConnectionState, MIN_SERVER_VERSION};
pub use crate::bus::{builder, run, Builder, Bus};
pub use crate::config::{
    AckPolicy, Config, ConsumerOptions, Credentials, DeliverPolicy, Discard, ReconnectConfig,
    ReplayPolicy, Retention, Storage, StreamOptions, TlsConfig,
};
pub use crate::contract::{breaking_changes, SchemaCheck};
pub use crate::dlq::{dlq_headers, DeadLetter};
pub use crate::envelope::{headers, ContentMode, Metadata};
pub use crate::error::{Conflict, Error, ErrorKind};
pub use crate::event::{
    AggregateId, DecodeError, DomainEvent, EventDescriptor, EventSet, UpcastError,
};
pub use crate::handler::{
    Delivery, EventContext, FromContext, HandlerError, Retry, State, StateType,
};
pub use crate::publish::{PublishOptions, Published};
pub use crate::read::{Read, Recorded};
pub use crate::stats::{HandlerStats, Stats, StreamStats};
pub use crate::subject::Subject;
pub use crate::topology::{ConsumerPlan, StreamPlan, Topology};

/// The AsyncAPI 3.0 document of the service this program runs, without connecting: every
/// registered handler and event, with the settings read from the environment. The same as
/// `eventbus::builder().asyncapi()`; see [`Builder::asyncapi`].
pub fn asyncapi() -> Result<serde_json::Value, Error> {
    builder().asyncapi()
}

/// The crate that gives event payloads their JSON Schema: derive
/// `eventbus::schemars::JsonSchema` (with `#[schemars(crate = "eventbus::schemars")]`), or
/// `schemars::JsonSchema` from a `schemars = "1"` dependency of your own.
#[cfg(feature = "schema")]
pub use schemars;

/// Registers an `async fn(event, ctx) -> Result<(), E>` as a handler.
pub use eventbus_derive::event_handler;
/// Derives [`DomainEvent`] on a struct, or [`EventSet`] on an enum of event structs.
pub use eventbus_derive::DomainEvent;

/// The NATS client eventbus runs on (`async-nats`): the types eventbus hands out
/// ([`Bus::nats_client`], [`Bus::jetstream`], [`HeaderMap`]) and what is needed to go further
/// than eventbus does. Use them from here rather than from a dependency of your own, so the
/// versions always match.
pub mod nats {
    pub use async_nats::{Client, HeaderMap, HeaderName, HeaderValue};

    /// JetStream.
    pub mod jetstream {
        pub use async_nats::jetstream::Context;
    }
}
/// Message headers, as [`PublishOptions::headers`] takes them and [`Metadata::headers`] holds
/// them.
pub use async_nats::HeaderMap;
/// The byte buffer of message bodies ([`DeadLetter::payload`], [`Bus::publish_raw`]).
pub use bytes::{self, Bytes};
/// The date-time crate of event times ([`Metadata::time`], [`Recorded::time`],
/// [`DeliverPolicy::ByStartTime`]).
pub use time::{self, OffsetDateTime};

/// What an application needs in scope: `use eventbus::prelude::*;`.
pub mod prelude {
    pub use crate::aggregate::Aggregate;
    pub use crate::event::{AggregateId, EventSet};
    pub use crate::handler::{EventContext, HandlerError, State};
    pub use crate::{event_handler, Bus, DomainEvent};
    pub use serde::{Deserialize, Serialize};
}
