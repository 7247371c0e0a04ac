//! The inventory service's event schemas against their committed snapshots
//! (`examples/schemas/*.json`; README, "Contracts"): a change that would break readers fails
//! here, naming the event and the field, unless the event's version was raised.

use eventbus::testing::check_schemas_of;
use eventbus::SchemaCheck;
use eventbus_examples::inventory::{OrderEvent, SkuEvent};

const SNAPSHOTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas");

fn assert_committed(check: SchemaCheck, events: usize) {
    assert!(
        check.updated.is_empty() && check.written.is_empty(),
        "snapshots were written or rewritten; review and commit them: {check:?}"
    );
    assert_eq!(check.unchanged.len(), events, "{check:?}");
}

#[test]
fn event_schemas_stay_compatible() {
    assert_committed(check_schemas_of::<SkuEvent>(SNAPSHOTS).unwrap(), 2);
    assert_committed(check_schemas_of::<OrderEvent>(SNAPSHOTS).unwrap(), 3);
}
