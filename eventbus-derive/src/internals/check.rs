//! Checks across attributes: what must be given, what may not be given together.

use super::ast::{Container, Data};
use super::attr::{self, Ack};
use super::ctxt::Ctxt;
use super::symbol::{Symbol, AGGREGATE, NAME};

/// Checks an event struct's or event set's attributes as a whole.
pub(crate) fn check_container(cx: &Ctxt, cont: &Container<'_>) {
    let attrs = &cont.attrs;
    // A key given with a bad value was reported already; only a key not written is missing.
    let missing = |keys: &[Symbol]| -> Vec<String> {
        if attrs.incomplete {
            return Vec::new();
        }
        keys.iter()
            .filter(|k| !attrs.given.contains(k))
            .map(|k| format!("`{k}`"))
            .collect()
    };
    // Point at the `#[event(...)]` attribute when there is one, else at the type's name.
    let report_missing = |what: String| match &attrs.first_attr {
        Some(tokens) => cx.error_spanned_by(tokens, what),
        None => cx.error_spanned_by(cont.ident, what),
    };
    match &cont.data {
        Data::Struct(_) => {
            let missing = missing(&[AGGREGATE, NAME]);
            if !missing.is_empty() {
                report_missing(format!(
                    "missing {}: an event struct needs `#[event(aggregate = \"...\", name = \"...\")]`, \
                     e.g. `#[event(aggregate = \"order\", name = \"created\")]`",
                    missing.join(" and ")
                ));
            }
            if let Some(upcast) = &attrs.upcast {
                if attrs.version.as_ref().is_none_or(|v| v.value < 2) {
                    cx.error_at(
                        upcast.key,
                        "`upcast` turns the JSON of older versions into this one, but this event is version 1: \
                         raise it, e.g. `#[event(version = 2, upcast = ...)]`",
                    );
                }
            }
            if let Some(span) = attrs.aggregate_id {
                cx.error_at(
                    span,
                    "`aggregate_id` marks a field: put `#[event(aggregate_id)]` on the field that holds the id",
                );
            }
        }
        Data::Enum(variants) => {
            if !missing(&[AGGREGATE]).is_empty() {
                report_missing(
                    "missing `aggregate`: an event set needs `#[event(aggregate = \"...\")]`, \
                     e.g. `#[event(aggregate = \"order\")]`"
                        .to_owned(),
                );
            }
            let not_here = "is not allowed on an event set: each event struct it wraps has its own";
            if let Some(name) = &attrs.name {
                cx.error_at(
                    name.key,
                    format!("`name` {not_here} `#[event(name = \"...\")]`"),
                );
            }
            if let Some(version) = &attrs.version {
                cx.error_at(
                    version.key,
                    format!("`version` {not_here} `#[event(version = ...)]`"),
                );
            }
            if let Some(cloud_type) = &attrs.cloud_type {
                cx.error_at(
                    cloud_type.key,
                    format!("`cloud_type` {not_here} `#[event(cloud_type = \"...\")]`"),
                );
            }
            if let Some(upcast) = &attrs.upcast {
                cx.error_at(
                    upcast.key,
                    format!("`upcast` {not_here} `#[event(upcast = ...)]`"),
                );
            }
            if let Some(span) = attrs.aggregate_id {
                cx.error_at(
                    span,
                    format!("`aggregate_id` {not_here} `#[event(aggregate_id)]` field"),
                );
            }
            if variants.is_empty() && !cx.has_errors() {
                cx.error_spanned_by(
                    cont.ident,
                    format!(
                        "event set `{}` has no variants: give it one variant per event struct, \
                         e.g. `Created(OrderCreated)`",
                        cont.ident
                    ),
                );
            }
        }
    }
}

/// Checks a handler's options as a whole.
pub(crate) fn check_handler_options(cx: &Ctxt, a: &attr::Handler) {
    if let (Some(_), Some(seq)) = (&a.deliver, &a.start_sequence) {
        cx.error_at(
            seq.key,
            "`start_sequence` conflicts with `deliver`: `start_sequence = N` is itself a deliver policy; \
             give one of them",
        );
    }
    if a.ack.as_ref().is_some_and(|ack| ack.value == Ack::None) {
        for (key, given) in [
            ("max_deliver", a.max_deliver.as_ref().map(|g| g.key)),
            ("backoff", a.backoff.as_ref().map(|g| g.key)),
            ("ack_wait", a.ack_wait.as_ref().map(|g| g.key)),
        ] {
            if let Some(span) = given {
                cx.error_at(
                    span,
                    format!(
                        "`{key}` has no effect with `ack = \"none\"`: without acks nothing is redelivered; \
                         remove `{key}` or use `ack = \"explicit\"`"
                    ),
                );
            }
        }
    }
}
