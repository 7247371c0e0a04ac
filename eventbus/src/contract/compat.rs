//! Whether a new payload schema breaks readers of an old one, and the committed snapshots
//! (`schemas/{aggregate}.{name}.v{version}.json`) each event's current schema is checked
//! against.
//!
//! Both kinds of readers count: a consumer still on the old type reading new events, and the
//! new type reading events stored under the old schema. So, at any depth of the payload:
//!
//! | change | |
//! |---|---|
//! | a field added, not required | compatible (old readers ignore it, stored events lack it and it is optional) |
//! | a field added as required | **breaking**: stored events lack it |
//! | a field removed | **breaking**: old readers need it |
//! | an optional field made required | **breaking**: stored events may lack it |
//! | a required field made optional | compatible (writers still write it; readers accept it missing) |
//! | a type changed (`integer` → `string`, `string` → `string`/`null`, ...) | **breaking** |
//! | enum values or variants added or removed | **breaking**: one side meets a value it does not know |
//! | any other constraint changed (`format`, `minimum`, `pattern`, `const`, `additionalProperties`, ...) | **breaking** |
//! | a field added where the old schema closed the object (`additionalProperties: false`) | **breaking** |
//! | titles, descriptions, defaults, examples | ignored |
//!
//! A breaking change ships with a raised `#[event(version = N)]` (and an upcaster, so stored
//! events of the old version are still read): the new version gets a new snapshot.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, ErrorKind};
use crate::registry::EventRegistration;

/// Keywords that describe and do not constrain: changes to them are never breaking.
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "default",
    "examples",
    "$comment",
    "$schema",
    "deprecated",
    "readOnly",
    "writeOnly",
    "definitions",
    "$defs",
];

/// The breaking changes from schema `old` to schema `new`, each naming the field (`total`,
/// `customer.address`, `lines[]`); empty when every reader of `old` reads `new` and the other
/// way round (see the module's table).
pub fn breaking_changes(old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    compare(
        Side { root: old, at: old },
        Side { root: new, at: new },
        "",
        &mut seen,
        &mut out,
    );
    out
}

#[derive(Clone, Copy)]
struct Side<'a> {
    root: &'a Value,
    at: &'a Value,
}

impl<'a> Side<'a> {
    /// Follows `$ref`s into the root's `definitions` (or `$defs`).
    fn resolved(self) -> (Side<'a>, Option<&'a str>) {
        let mut at = self.at;
        let mut reference = None;
        for _ in 0..32 {
            let Some(r) = at.get("$ref").and_then(Value::as_str) else {
                break;
            };
            let target = r
                .strip_prefix("#/definitions/")
                .and_then(|n| self.root.get("definitions").and_then(|d| d.get(n)))
                .or_else(|| {
                    r.strip_prefix("#/$defs/")
                        .and_then(|n| self.root.get("$defs").and_then(|d| d.get(n)))
                });
            match target {
                Some(t) => {
                    reference = Some(r);
                    at = t;
                }
                None => break,
            }
        }
        (
            Side {
                root: self.root,
                at,
            },
            reference,
        )
    }

    fn with(self, at: &'a Value) -> Side<'a> {
        Side {
            root: self.root,
            at,
        }
    }
}

fn field(path: &str) -> String {
    if path.is_empty() {
        "the payload".to_owned()
    } else {
        format!("field `{path}`")
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

fn types(v: &Value) -> Option<BTreeSet<String>> {
    match v.get("type")? {
        Value::String(s) => Some([s.clone()].into()),
        Value::Array(a) => Some(
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect(),
        ),
        _ => None,
    }
}

fn required(v: &Value) -> BTreeSet<&str> {
    v.get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn compare(
    old: Side<'_>,
    new: Side<'_>,
    path: &str,
    seen: &mut BTreeSet<(String, String)>,
    out: &mut Vec<String>,
) {
    let (old, old_ref) = old.resolved();
    let (new, new_ref) = new.resolved();
    if let (Some(a), Some(b)) = (old_ref, new_ref) {
        // A recursive type: compared once.
        if !seen.insert((a.to_owned(), b.to_owned())) {
            return;
        }
    }
    let empty = Map::new();
    let (o, n) = (
        old.at.as_object().unwrap_or(&empty),
        new.at.as_object().unwrap_or(&empty),
    );
    if old.at.is_boolean() || new.at.is_boolean() {
        if old.at != new.at {
            out.push(format!(
                "{}: schema changed from {} to {}",
                field(path),
                old.at,
                new.at
            ));
        }
        return;
    }

    let (ot, nt) = (types(old.at), types(new.at));
    if ot != nt {
        let show = |t: &Option<BTreeSet<String>>| match t {
            Some(t) => t.iter().cloned().collect::<Vec<_>>().join(" or "),
            None => "any".to_owned(),
        };
        out.push(format!(
            "{}: type changed from {} to {}",
            field(path),
            show(&ot),
            show(&nt)
        ));
        return;
    }

    // Objects: fields removed, added as required, made required.
    let (op, np) = (o.get("properties"), n.get("properties"));
    if op.is_some() || np.is_some() {
        let (op, np) = (
            op.and_then(Value::as_object).unwrap_or(&empty),
            np.and_then(Value::as_object).unwrap_or(&empty),
        );
        let (oreq, nreq) = (required(old.at), required(new.at));
        let closed = o.get("additionalProperties") == Some(&Value::Bool(false));
        for (name, oschema) in op {
            let p = join(path, name);
            match np.get(name) {
                None => out.push(format!("{} was removed", field(&p))),
                Some(nschema) => {
                    if nreq.contains(name.as_str()) && !oreq.contains(name.as_str()) {
                        out.push(format!("{} was optional and is now required", field(&p)));
                    }
                    compare(old.with(oschema), new.with(nschema), &p, seen, out);
                }
            }
        }
        for name in np.keys().filter(|k| !op.contains_key(*k)) {
            let p = join(path, name);
            if nreq.contains(name.as_str()) {
                out.push(format!(
                    "{} was added as required (events stored before lack it)",
                    field(&p)
                ));
            } else if closed {
                out.push(format!(
                    "{} was added, but old readers refuse unknown fields (additionalProperties: false)",
                    field(&p)
                ));
            }
        }
    }

    // Arrays.
    match (o.get("items"), n.get("items")) {
        (Some(a), Some(b)) => compare(old.with(a), new.with(b), &format!("{path}[]"), seen, out),
        (None, None) => {}
        _ => out.push(format!("{}: its items changed", field(path))),
    }

    // Alternatives (enums with data, `Option` of a struct): compared one by one.
    for key in ["anyOf", "oneOf", "allOf"] {
        match (
            o.get(key).and_then(Value::as_array),
            n.get(key).and_then(Value::as_array),
        ) {
            (Some(a), Some(b)) if a.len() == b.len() => {
                for (x, y) in a.iter().zip(b) {
                    compare(old.with(x), new.with(y), path, seen, out);
                }
            }
            (None, None) => {}
            (a, b) => out.push(format!(
                "{}: its variants changed ({key}: {} before, {} now)",
                field(path),
                a.map_or(0, Vec::len),
                b.map_or(0, Vec::len)
            )),
        }
    }

    // Enum values.
    if let (Some(a), Some(b)) = (
        o.get("enum").and_then(Value::as_array),
        n.get("enum").and_then(Value::as_array),
    ) {
        let removed: Vec<String> = a
            .iter()
            .filter(|v| !b.contains(v))
            .map(Value::to_string)
            .collect();
        let added: Vec<String> = b
            .iter()
            .filter(|v| !a.contains(v))
            .map(Value::to_string)
            .collect();
        if !removed.is_empty() {
            out.push(format!(
                "{}: values removed: {}",
                field(path),
                removed.join(", ")
            ));
        }
        if !added.is_empty() {
            out.push(format!(
                "{}: values added (old readers refuse them): {}",
                field(path),
                added.join(", ")
            ));
        }
    }

    // Every other constraint must be unchanged.
    let handled = [
        "type",
        "properties",
        "required",
        "items",
        "anyOf",
        "oneOf",
        "allOf",
        "enum",
        "$ref",
    ];
    let keys: BTreeSet<&String> = o.keys().chain(n.keys()).collect();
    for k in keys {
        if handled.contains(&k.as_str()) || ANNOTATIONS.contains(&k.as_str()) {
            continue;
        }
        if k == "additionalProperties" {
            // Opening a closed object is compatible; closing or changing one is not.
            match (o.get(k), n.get(k)) {
                (Some(Value::Bool(false)), None | Some(Value::Bool(true))) => continue,
                (Some(a), Some(b)) if a.is_object() && b.is_object() => {
                    compare(old.with(a), new.with(b), &format!("{path}{{*}}"), seen, out);
                    continue;
                }
                _ => {}
            }
        }
        let (a, b) = (o.get(k), n.get(k));
        if a != b {
            let show = |v: Option<&Value>| v.map_or("none".to_owned(), Value::to_string);
            out.push(format!(
                "{}: `{k}` changed from {} to {}",
                field(path),
                show(a),
                show(b)
            ));
        }
    }
}

/// What `eventbus::testing::check_schemas` found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaCheck {
    /// Snapshots written for the first time (a new event, or a new version).
    pub written: Vec<PathBuf>,
    /// Snapshots rewritten after a compatible change (review and commit them).
    pub updated: Vec<PathBuf>,
    /// Snapshots equal to the current schema.
    pub unchanged: Vec<PathBuf>,
    /// Events whose type gives no schema (it does not derive `schemars::JsonSchema`), by
    /// CloudEvents type: not checked.
    pub without_schema: Vec<String>,
}

/// The snapshot file of one event version.
fn snapshot_path(dir: &Path, r: &EventRegistration) -> PathBuf {
    dir.join(format!("{}.json", r.descriptor.cloud_type))
}

/// Checks each event's current schema against its snapshot in `dir`: fails, listing every
/// breaking change with the event and the field, when one breaks readers of its snapshot;
/// writes the snapshot of an event version that has none; rewrites one after a compatible
/// change.
pub(crate) fn check_snapshots(
    dir: &Path,
    events: &[&EventRegistration],
) -> Result<SchemaCheck, Error> {
    let io = |what: String, e: std::io::Error| {
        Error::new(ErrorKind::Contract, format!("{what}: {e}")).with_source(e)
    };
    std::fs::create_dir_all(dir).map_err(|e| {
        io(
            format!("cannot create the snapshot directory {}", dir.display()),
            e,
        )
    })?;
    let mut check = SchemaCheck::default();
    let mut problems = Vec::new();
    let mut writes = Vec::new();
    for r in events {
        let d = &r.descriptor;
        let Some(current) = (r.schema)() else {
            check.without_schema.push(d.cloud_type.to_owned());
            continue;
        };
        let path = snapshot_path(dir, r);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let old: Value = serde_json::from_str(&text).map_err(|e| {
                    Error::new(
                        ErrorKind::Contract,
                        format!("snapshot {} is not JSON: {e}", path.display()),
                    )
                    .with_source(e)
                })?;
                let breaks = breaking_changes(&old, &current);
                if !breaks.is_empty() {
                    for b in breaks {
                        problems.push(format!(
                            "event {} ({}, snapshot {}): {b}",
                            d.cloud_type,
                            d.rust_type,
                            path.display()
                        ));
                    }
                } else if old != current {
                    writes.push((path.clone(), current));
                    check.updated.push(path);
                } else {
                    check.unchanged.push(path);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                writes.push((path.clone(), current));
                check.written.push(path);
            }
            Err(e) => return Err(io(format!("cannot read snapshot {}", path.display()), e)),
        }
    }
    if !problems.is_empty() {
        let n = problems.len();
        return Err(Error::new(
            ErrorKind::Contract,
            format!(
                "{n} breaking schema change{} (readers of the committed snapshot would fail): raise the event's `#[event(version = ...)]` (with an upcaster) or undo the change:\n  {}",
                if n == 1 { "" } else { "s" },
                problems.join("\n  ")
            ),
        ));
    }
    for (path, schema) in writes {
        let mut text = serde_json::to_string_pretty(&schema).expect("a JSON value serializes");
        text.push('\n');
        std::fs::write(&path, text)
            .map_err(|e| io(format!("cannot write snapshot {}", path.display()), e))?;
    }
    Ok(check)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn order() -> Value {
        json!({
            "type": "object",
            "properties": {
                "order_id": { "type": "string" },
                "total": { "type": "integer", "format": "uint64", "minimum": 0 },
                "status": { "type": "string", "enum": ["open", "paid"] },
                "lines": { "type": "array", "items": {
                    "type": "object",
                    "properties": { "sku": { "type": "string" } },
                    "required": ["sku"]
                }},
                "note": { "type": ["string", "null"] }
            },
            "required": ["order_id", "total", "status", "lines"]
        })
    }

    fn edit(f: impl FnOnce(&mut Value)) -> Value {
        let mut v = order();
        f(&mut v);
        v
    }

    #[test]
    fn the_same_schema_and_annotations_are_compatible() {
        assert!(breaking_changes(&order(), &order()).is_empty());
        let described = edit(|v| {
            v["title"] = json!("Order");
            v["properties"]["total"]["description"] = json!("cents");
        });
        assert!(breaking_changes(&order(), &described).is_empty());
    }

    #[test]
    fn an_optional_field_added_is_compatible_a_required_one_is_not() {
        let optional = edit(|v| v["properties"]["coupon"] = json!({ "type": ["string", "null"] }));
        assert_eq!(breaking_changes(&order(), &optional), Vec::<String>::new());
        let required = edit(|v| {
            v["properties"]["coupon"] = json!({ "type": "string" });
            v["required"].as_array_mut().unwrap().push(json!("coupon"));
        });
        let b = breaking_changes(&order(), &required);
        assert_eq!(b.len(), 1, "{b:?}");
        assert!(
            b[0].contains("`coupon`") && b[0].contains("added as required"),
            "{b:?}"
        );
    }

    #[test]
    fn removed_retyped_required_and_nested_fields_break() {
        let removed = edit(|v| {
            v["properties"].as_object_mut().unwrap().remove("total");
        });
        assert_eq!(
            breaking_changes(&order(), &removed),
            ["field `total` was removed"]
        );

        let retyped = edit(|v| v["properties"]["total"] = json!({ "type": "string" }));
        let b = breaking_changes(&order(), &retyped);
        assert!(
            b[0].contains("`total`: type changed from integer to string"),
            "{b:?}"
        );

        let made_required = edit(|v| v["required"].as_array_mut().unwrap().push(json!("note")));
        let b = breaking_changes(&order(), &made_required);
        assert!(
            b[0].contains("`note` was optional and is now required"),
            "{b:?}"
        );

        let nested = edit(|v| {
            v["properties"]["lines"]["items"]["properties"]["sku"] = json!({ "type": "integer" })
        });
        let b = breaking_changes(&order(), &nested);
        assert!(b[0].contains("`lines[].sku`"), "{b:?}");

        let new_value =
            edit(|v| v["properties"]["status"]["enum"] = json!(["open", "paid", "void"]));
        let b = breaking_changes(&order(), &new_value);
        assert!(
            b[0].contains("`status`") && b[0].contains("\"void\""),
            "{b:?}"
        );

        let format = edit(|v| v["properties"]["total"]["format"] = json!("uint32"));
        assert_eq!(breaking_changes(&order(), &format).len(), 1);
    }

    #[test]
    fn refs_are_followed_and_recursion_ends() {
        let tree = |leaf: &str| {
            json!({
                "$ref": "#/definitions/Node",
                "definitions": { "Node": {
                    "type": "object",
                    "properties": {
                        "name": { "type": leaf },
                        "children": { "type": "array", "items": { "$ref": "#/definitions/Node" } }
                    },
                    "required": ["name", "children"]
                }}
            })
        };
        assert!(breaking_changes(&tree("string"), &tree("string")).is_empty());
        let b = breaking_changes(&tree("string"), &tree("integer"));
        assert_eq!(b, ["field `name`: type changed from string to integer"]);
    }
}
