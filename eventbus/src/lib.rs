#![doc = include_str!("../../README.md")]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

pub mod envelope;
pub mod error;
pub mod event;
pub mod handler;
pub mod registry;
pub mod subject;
pub mod testing;

pub mod aggregate;
pub mod config;
pub mod connection;
pub mod topology;

mod backend;
mod bus;
mod dispatch;
mod dlq;
mod memory;
mod provision;
mod publish;
mod pull;
mod read;
mod rules;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use crate::aggregate::{Aggregate, Appended, Loaded};
pub use crate::bus::{builder, run, Builder, Bus, PublishOptions, MIN_SERVER_VERSION};
pub use crate::config::{
    Config, Credentials, Discard, Retention, Storage, StreamOptions, TlsConfig,
};
pub use crate::connection::ConnectionState;
pub use crate::dispatch::dlq_headers;
pub use crate::dlq::DeadLetter;
pub use crate::envelope::Metadata;
pub use crate::error::{Conflict, Error, ErrorKind};
pub use crate::event::{AggregateId, DecodeError, DomainEvent, EventDescriptor, EventSet};
pub use crate::handler::{Delivery, EventContext, HandlerError, Retry};
pub use crate::publish::Published;
pub use crate::read::{Read, Recorded};
pub use crate::registry::{AckPolicy, ConsumerOptions, DeliverPolicy, ReplayPolicy};
pub use crate::subject::Subject;
pub use crate::topology::Topology;

/// Registers an `async fn(event, ctx) -> Result<(), E>` as a handler.
pub use eventbus_derive::event_handler;
/// Derives [`DomainEvent`] on a struct, or [`EventSet`] on an enum of event structs.
pub use eventbus_derive::DomainEvent;

/// What an application needs in scope: `use eventbus::prelude::*;`.
pub mod prelude {
    pub use crate::aggregate::Aggregate;
    pub use crate::event::{AggregateId, EventSet};
    pub use crate::handler::{EventContext, HandlerError};
    pub use crate::{event_handler, Bus, DomainEvent};
    pub use serde::{Deserialize, Serialize};
}
