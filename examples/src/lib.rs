//! Runnable eventbus programs (see the `[[bin]]` targets), and the inventory service
//! ([`inventory`]) that the `inventory` binary runs and `tests/inventory.rs` tests.

pub mod inventory;
