//! The payload JSON Schema of an event type, from `schemars`.
//!
//! Draft-07 (the JSON Schema dialect AsyncAPI 3.0's default schema format is a superset of),
//! with subschemas inlined so that each payload stands alone; a recursive type keeps its
//! `definitions`, which the AsyncAPI document moves under `components/schemas`.

/// The schema of `T`'s JSON (as it is deserialized: what a reader accepts).
#[cfg(feature = "schema")]
pub(crate) fn schema_of<T: schemars::JsonSchema>() -> serde_json::Value {
    schemars::generate::SchemaSettings::draft07()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}
