//! The running bus: connection, provisioning, dispatch, publishing.

/// A running bus.
#[derive(Clone, Debug)]
pub struct Bus {}
