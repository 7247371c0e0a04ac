//! Parsing of `#[event(...)]` (on event types and their fields) and of the arguments of
//! `#[event_handler(...)]`.
//!
//! Every problem is recorded in the [`Ctxt`] and parsing goes on, so that all of them are
//! reported at once; a value that is malformed is left unset.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{Attribute, Expr, Lit, LitStr, Token};

use super::ctxt::Ctxt;
use super::rules;
use super::symbol::*;

/// A value given on an attribute, with the spans of its key and of its value.
#[derive(Debug, Clone)]
pub(crate) struct Given<T> {
    pub(crate) value: T,
    pub(crate) key: Span,
    pub(crate) span: Span,
}

/// One key of an attribute: remembers whether it was seen, to report duplicates.
struct Attr<'c, T> {
    cx: &'c Ctxt,
    what: &'static str,
    name: Symbol,
    seen: bool,
    value: Option<Given<T>>,
}

impl<'c, T> Attr<'c, T> {
    fn none(cx: &'c Ctxt, what: &'static str, name: Symbol) -> Self {
        Attr {
            cx,
            what,
            name,
            seen: false,
            value: None,
        }
    }

    /// Records the key at `key`, with its value if the value was valid.
    fn set(&mut self, key: &syn::Path, value: Option<(T, Span)>) {
        if self.seen {
            self.cx
                .error_spanned_by(key, format!("duplicate {} `{}`", self.what, self.name));
            return;
        }
        self.seen = true;
        self.value = value.map(|(value, span)| Given {
            value,
            key: key.span(),
            span,
        });
    }

    fn get(self) -> Option<Given<T>> {
        self.value
    }

    /// The key's name if it was given, valid or not.
    fn seen(&self) -> Option<Symbol> {
        self.seen.then_some(self.name)
    }
}

/// The value after `key =`, or `None` (with an error on the key) when there is no `=`.
fn value_of(cx: &Ctxt, meta: &ParseNestedMeta<'_>, example: &str) -> syn::Result<Option<Expr>> {
    if meta.input.peek(Token![=]) {
        return Ok(Some(meta.value()?.parse()?));
    }
    skip_value(meta)?;
    cx.error_spanned_by(&meta.path, format!("expected a value: `{example}`"));
    Ok(None)
}

/// Consumes whatever follows an unusable key (`= value` or `(...)`), so that parsing can go on
/// with the next key.
fn skip_value(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        meta.value()?.parse::<Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        meta.input.parse::<proc_macro2::Group>()?;
    }
    Ok(())
}

/// Errors on a key that takes no value but was given one, and consumes the value (the key
/// still counts as given).
fn no_value(cx: &Ctxt, meta: &ParseNestedMeta<'_>, usage: &str) -> syn::Result<()> {
    if meta.input.peek(Token![=]) || meta.input.peek(syn::token::Paren) {
        skip_value(meta)?;
        cx.error_spanned_by(
            &meta.path,
            format!(
                "`{}` takes no value: write `{usage}`",
                path_text(&meta.path)
            ),
        );
    }
    Ok(())
}

/// The error message of an unknown key: a suggestion when the key looks like a typo of a known
/// one, the list of known keys otherwise.
fn unknown_key(what: &str, key: &syn::Path, known: &[Symbol]) -> String {
    let text = path_text(key);
    match suggest(&text, known) {
        Some(k) => format!("unknown {what} `{text}`; did you mean `{k}`?"),
        None if known.len() == 1 => {
            format!("unknown {what} `{text}`; the only one is `{}`", known[0])
        }
        None => {
            let list = known
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ");
            format!("unknown {what} `{text}`; expected one of {list}")
        }
    }
}

/// The known key closest to `word`, if it is close enough to be a typo.
fn suggest(word: &str, known: &[Symbol]) -> Option<Symbol> {
    known
        .iter()
        .map(|k| (edit_distance(word, &k.to_string()), *k))
        .filter(|(d, k)| *d <= 2.min(k.to_string().len() / 3 + 1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn path_text(path: &syn::Path) -> String {
    path.to_token_stream().to_string().replace(' ', "")
}

/// `expr` without the invisible groups a `macro_rules!` fragment (`$name:literal`) wraps it in.
fn ungroup(mut expr: &Expr) -> &Expr {
    while let Expr::Group(g) = expr {
        expr = &g.expr;
    }
    expr
}

fn lit_str(cx: &Ctxt, expr: &Expr, example: &str) -> Option<LitStr> {
    let expr = ungroup(expr);
    match expr {
        Expr::Lit(syn::ExprLit {
            lit: Lit::Str(s), ..
        }) => Some(s.clone()),
        _ => {
            cx.error_spanned_by(expr, format!("expected a string literal: `{example}`"));
            None
        }
    }
}

/// An integer literal of at least 1.
fn lit_positive<N>(cx: &Ctxt, expr: &Expr, key: Symbol, max: &str) -> Option<N>
where
    N: std::str::FromStr + PartialOrd + From<u8>,
    N::Err: std::fmt::Display,
{
    let expr = ungroup(expr);
    match expr {
        Expr::Lit(syn::ExprLit {
            lit: Lit::Int(i), ..
        }) => match i.base10_parse::<N>() {
            Ok(n) if n >= N::from(1) => Some(n),
            Ok(_) => {
                cx.error_spanned_by(expr, format!("`{key}` must be at least 1"));
                None
            }
            Err(_) => {
                cx.error_spanned_by(expr, format!("`{key}` must be an integer from 1 to {max}"));
                None
            }
        },
        _ => {
            cx.error_spanned_by(expr, format!("expected an integer literal: `{key} = 5`"));
            None
        }
    }
}

fn lit_bool(expr: &Expr) -> Option<bool> {
    let expr = ungroup(expr);
    match expr {
        Expr::Lit(syn::ExprLit {
            lit: Lit::Bool(b), ..
        }) => Some(b.value),
        _ => None,
    }
}

/// One of a fixed set of words given as a string literal.
fn lit_choice<T: Copy>(
    cx: &Ctxt,
    expr: &Expr,
    key: Symbol,
    choices: &[(&str, T)],
) -> Option<(T, Span)> {
    let expr = ungroup(expr);
    let list = || {
        choices
            .iter()
            .map(|(w, _)| format!("\"{w}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let s = match expr {
        Expr::Lit(syn::ExprLit {
            lit: Lit::Str(s), ..
        }) => s,
        _ => {
            cx.error_spanned_by(
                expr,
                format!("expected a string literal: `{key} = {}`", list()),
            );
            return None;
        }
    };
    let v = s.value();
    match choices.iter().find(|(w, _)| *w == v) {
        Some((_, t)) => Some((*t, s.span())),
        None => {
            cx.error_spanned_by(
                s,
                format!("unknown `{key}` value \"{v}\": expected one of {}", list()),
            );
            None
        }
    }
}

fn duration_lit(cx: &Ctxt, expr: &Expr, key: Symbol) -> Option<u64> {
    let s = lit_str(cx, expr, &format!("{key} = \"30s\""))?;
    let text = s.value();
    match rules::parse_duration(&text) {
        Ok(d) if d.is_zero() => {
            cx.error_spanned_by(
                &s,
                format!("duration {text:?} is zero; it must be greater than zero"),
            );
            None
        }
        // `parse_duration` counts in `u64` milliseconds: this does not truncate.
        Ok(d) => Some(d.as_millis() as u64),
        Err(why) => {
            cx.error_spanned_by(&s, why);
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `#[event(...)]`

const EVENT_WHAT: &str = "`event` attribute";

/// `#[event(...)]` on an event struct or an event set enum.
pub(crate) struct Container {
    /// `aggregate = "order"`, checked to be a name token.
    pub(crate) aggregate: Option<Given<String>>,
    /// `name = "created"`, checked to be a name token.
    pub(crate) name: Option<Given<String>>,
    /// `version = 2`.
    pub(crate) version: Option<Given<u32>>,
    /// `cloud_type = "com.example.orders.created"`: the CloudEvents type other producers use,
    /// checked for the characters the CloudEvents spec allows.
    pub(crate) cloud_type: Option<Given<String>>,
    /// `upcast = path::to::function`: turns the JSON of an older version into this one.
    pub(crate) upcast: Option<Given<syn::ExprPath>>,
    /// `aggregate_id` written on the type (it belongs on a field).
    pub(crate) aggregate_id: Option<Span>,
    /// The first `#[event(...)]` attribute, to point at when a key is missing.
    pub(crate) first_attr: Option<TokenStream>,
    /// The keys that were given, with a valid value or not.
    pub(crate) given: Vec<Symbol>,
    /// Whether an attribute could not be parsed to its end (a syntax error was reported), so
    /// that keys after the error are not reported as missing.
    pub(crate) incomplete: bool,
}

impl Container {
    pub(crate) fn from_ast(cx: &Ctxt, attrs: &[Attribute]) -> Self {
        let mut aggregate = Attr::none(cx, EVENT_WHAT, AGGREGATE);
        let mut name = Attr::none(cx, EVENT_WHAT, NAME);
        let mut version = Attr::none(cx, EVENT_WHAT, VERSION);
        let mut cloud_type = Attr::none(cx, EVENT_WHAT, CLOUD_TYPE);
        let mut upcast = Attr::none(cx, EVENT_WHAT, UPCAST);
        let mut aggregate_id = Attr::none(cx, EVENT_WHAT, AGGREGATE_ID);
        let mut first_attr = None;
        let mut incomplete = false;

        for attr in attrs.iter().filter(|a| a.path() == EVENT) {
            first_attr.get_or_insert_with(|| attr.to_token_stream());
            let parsed = attr.parse_nested_meta(|meta| {
                if meta.path == AGGREGATE {
                    let v = value_of(cx, &meta, "aggregate = \"order\"")?;
                    aggregate.set(
                        &meta.path,
                        v.and_then(|v| name_token(cx, &v, AGGREGATE, "aggregate type")),
                    );
                } else if meta.path == NAME {
                    let v = value_of(cx, &meta, "name = \"created\"")?;
                    name.set(
                        &meta.path,
                        v.and_then(|v| name_token(cx, &v, NAME, "event type")),
                    );
                } else if meta.path == VERSION {
                    let v = value_of(cx, &meta, "version = 2")?;
                    let v = v.and_then(|v| {
                        lit_positive::<u32>(cx, &v, VERSION, "4294967295").map(|n| (n, v.span()))
                    });
                    version.set(&meta.path, v);
                } else if meta.path == CLOUD_TYPE {
                    let v = value_of(cx, &meta, "cloud_type = \"com.example.orders.created\"")?;
                    cloud_type.set(&meta.path, v.and_then(|v| cloud_type_value(cx, &v)));
                } else if meta.path == UPCAST {
                    let v = value_of(cx, &meta, "upcast = order_created_from")?;
                    upcast.set(&meta.path, v.and_then(|v| function_path(cx, &v)));
                } else if meta.path == AGGREGATE_ID {
                    no_value(cx, &meta, "#[event(aggregate_id)]")?;
                    aggregate_id.set(&meta.path, Some(((), meta.path.span())));
                } else {
                    skip_value(&meta)?;
                    cx.error_spanned_by(
                        &meta.path,
                        unknown_key(
                            EVENT_WHAT,
                            &meta.path,
                            &[AGGREGATE, NAME, VERSION, CLOUD_TYPE, UPCAST],
                        ),
                    );
                }
                Ok(())
            });
            if let Err(e) = parsed {
                cx.syn_error(e);
                incomplete = true;
            }
        }
        let given = [
            aggregate.seen(),
            name.seen(),
            version.seen(),
            cloud_type.seen(),
            upcast.seen(),
            aggregate_id.seen(),
        ]
        .into_iter()
        .flatten()
        .collect();
        Container {
            given,
            incomplete,
            aggregate: aggregate.get(),
            name: name.get(),
            version: version.get(),
            cloud_type: cloud_type.get(),
            upcast: upcast.get(),
            aggregate_id: aggregate_id.get().map(|g| g.key),
            first_attr,
        }
    }
}

/// A string literal that is one subject token of `[A-Za-z0-9_-]`.
fn name_token(cx: &Ctxt, expr: &Expr, key: Symbol, what: &str) -> Option<(String, Span)> {
    let s = lit_str(cx, expr, &format!("{key} = \"...\""))?;
    let v = s.value();
    match rules::name_problem(&v) {
        None => Some((v, s.span())),
        Some(why) => {
            cx.error_spanned_by(
                &s,
                format!("invalid {what} \"{v}\": {why}; it must be one subject token of letters, digits, `_` and `-`"),
            );
            None
        }
    }
}

/// A string literal that is a CloudEvents type: not empty, and only characters the CloudEvents
/// spec allows in a string (no control characters U+0000-U+001F and U+007F-U+009F, no
/// noncharacters).
fn cloud_type_value(cx: &Ctxt, expr: &Expr) -> Option<(String, Span)> {
    let s = lit_str(cx, expr, &format!("{CLOUD_TYPE} = \"...\""))?;
    let v = s.value();
    let bad = v.chars().find(|&c| {
        let n = u32::from(c);
        c.is_control() || (0xFDD0..=0xFDEF).contains(&n) || n & 0xFFFE == 0xFFFE
    });
    let why = if v.is_empty() {
        "it is empty".to_owned()
    } else if let Some(c) = bad {
        format!("it contains {c:?}, which the CloudEvents spec does not allow in a string")
    } else {
        return Some((v, s.span()));
    };
    cx.error_spanned_by(
        &s,
        format!(
            "invalid cloud_type {v:?}: {why}; give the `ce-type` other producers write, \
             e.g. \"com.example.orders.created\""
        ),
    );
    None
}

/// The path of the upcaster function: `upcast = order_created_from`.
fn function_path(cx: &Ctxt, expr: &Expr) -> Option<(syn::ExprPath, Span)> {
    let expr = ungroup(expr);
    match expr {
        Expr::Path(p) if p.qself.is_none() => Some((p.clone(), p.span())),
        _ => {
            cx.error_spanned_by(
                expr,
                "expected the path of a function `fn(u32, serde_json::Value) -> Result<serde_json::Value, eventbus::UpcastError>`: `upcast = order_created_from`",
            );
            None
        }
    }
}

/// `#[event(aggregate_id)]` on a field: the span of `aggregate_id`, if present.
pub(crate) fn field_aggregate_id(cx: &Ctxt, attrs: &[Attribute]) -> Option<Span> {
    let mut aggregate_id = Attr::none(cx, EVENT_WHAT, AGGREGATE_ID);
    for attr in attrs.iter().filter(|a| a.path() == EVENT) {
        let parsed = attr.parse_nested_meta(|meta| {
            if meta.path == AGGREGATE_ID {
                no_value(cx, &meta, "#[event(aggregate_id)]")?;
                aggregate_id.set(&meta.path, Some(((), meta.path.span())));
            } else {
                skip_value(&meta)?;
                let msg = if meta.path == AGGREGATE
                    || meta.path == NAME
                    || meta.path == VERSION
                    || meta.path == CLOUD_TYPE
                    || meta.path == UPCAST
                {
                    format!(
                        "`{}` belongs on the type, not on a field; the only field attribute is `aggregate_id`",
                        path_text(&meta.path)
                    )
                } else {
                    unknown_key("`event` field attribute", &meta.path, &[AGGREGATE_ID])
                };
                cx.error_spanned_by(&meta.path, msg);
            }
            Ok(())
        });
        if let Err(e) = parsed {
            cx.syn_error(e);
        }
    }
    aggregate_id.get().map(|g| g.key)
}

// ---------------------------------------------------------------------------------------------
// `#[event_handler(...)]`

const HANDLER_WHAT: &str = "`event_handler` option";

/// `durable = "name"` or `durable = false`.
#[derive(Debug, Clone)]
pub(crate) enum Durable {
    Name(String),
    Flag(bool),
}

/// `deliver = "..."`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deliver {
    All,
    Last,
    LastPerSubject,
    New,
}

/// `ack = "..."`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ack {
    Explicit,
    None,
}

/// `replay = "..."`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replay {
    Instant,
    Original,
}

/// The arguments of `#[event_handler(...)]`, each checked on its own.
#[derive(Default)]
pub(crate) struct Handler {
    pub(crate) subject: Option<Given<LitStr>>,
    pub(crate) durable: Option<Given<Durable>>,
    pub(crate) deliver: Option<Given<Deliver>>,
    pub(crate) start_sequence: Option<Given<u64>>,
    pub(crate) ack: Option<Given<Ack>>,
    pub(crate) replay: Option<Given<Replay>>,
    pub(crate) max_deliver: Option<Given<i64>>,
    pub(crate) concurrency: Option<Given<usize>>,
    pub(crate) ordered: Option<Given<bool>>,
    pub(crate) ack_wait: Option<Given<u64>>,
    pub(crate) backoff: Option<Given<Vec<u64>>>,
    /// `publishes = [OrderShipped, OrderCancelled]`: the event types the handler publishes.
    pub(crate) publishes: Option<Given<Vec<syn::Type>>>,
}

impl Handler {
    pub(crate) fn from_tokens(cx: &Ctxt, args: TokenStream) -> Self {
        use syn::parse::Parser;

        let mut subject = Attr::none(cx, HANDLER_WHAT, SUBJECT);
        let mut durable = Attr::none(cx, HANDLER_WHAT, DURABLE);
        let mut deliver = Attr::none(cx, HANDLER_WHAT, DELIVER);
        let mut start_sequence = Attr::none(cx, HANDLER_WHAT, START_SEQUENCE);
        let mut ack = Attr::none(cx, HANDLER_WHAT, ACK);
        let mut replay = Attr::none(cx, HANDLER_WHAT, REPLAY);
        let mut max_deliver = Attr::none(cx, HANDLER_WHAT, MAX_DELIVER);
        let mut concurrency = Attr::none(cx, HANDLER_WHAT, CONCURRENCY);
        let mut ordered = Attr::none(cx, HANDLER_WHAT, ORDERED);
        let mut ack_wait = Attr::none(cx, HANDLER_WHAT, ACK_WAIT);
        let mut backoff = Attr::none(cx, HANDLER_WHAT, BACKOFF);
        let mut publishes = Attr::none(cx, HANDLER_WHAT, PUBLISHES);

        let parser = syn::meta::parser(|meta| {
            let key = &meta.path;
            if key == SUBJECT {
                let v = value_of(cx, &meta, "subject = \"order.*.created\"")?;
                subject.set(key, v.and_then(|v| subject_filter(cx, &v)));
            } else if key == DURABLE {
                let v = value_of(cx, &meta, "durable = \"billing\"")?;
                durable.set(key, v.and_then(|v| durable_value(cx, &v)));
            } else if key == DELIVER {
                let v = value_of(cx, &meta, "deliver = \"new\"")?;
                let choices = [
                    ("all", Deliver::All),
                    ("last", Deliver::Last),
                    ("last_per_subject", Deliver::LastPerSubject),
                    ("new", Deliver::New),
                ];
                deliver.set(key, v.and_then(|v| lit_choice(cx, &v, DELIVER, &choices)));
            } else if key == START_SEQUENCE {
                let v = value_of(cx, &meta, "start_sequence = 1")?;
                let v = v.and_then(|v| {
                    lit_positive::<u64>(cx, &v, START_SEQUENCE, "18446744073709551615")
                        .map(|n| (n, v.span()))
                });
                start_sequence.set(key, v);
            } else if key == ACK {
                let v = value_of(cx, &meta, "ack = \"none\"")?;
                let choices = [("explicit", Ack::Explicit), ("none", Ack::None)];
                ack.set(key, v.and_then(|v| lit_choice(cx, &v, ACK, &choices)));
            } else if key == REPLAY {
                let v = value_of(cx, &meta, "replay = \"original\"")?;
                let choices = [("instant", Replay::Instant), ("original", Replay::Original)];
                replay.set(key, v.and_then(|v| lit_choice(cx, &v, REPLAY, &choices)));
            } else if key == MAX_DELIVER {
                let v = value_of(cx, &meta, "max_deliver = 5")?;
                let v = v.and_then(|v| {
                    lit_positive::<i64>(cx, &v, MAX_DELIVER, "9223372036854775807")
                        .map(|n| (n, v.span()))
                });
                max_deliver.set(key, v);
            } else if key == CONCURRENCY {
                let v = value_of(cx, &meta, "concurrency = 16")?;
                let v = v.and_then(|v| {
                    lit_positive::<u32>(cx, &v, CONCURRENCY, "4294967295").map(|n| (n, v.span()))
                });
                concurrency.set(key, v.map(|(n, span)| (n as usize, span)));
            } else if key == ORDERED {
                if meta.input.peek(Token![=]) {
                    let v: Expr = meta.value()?.parse()?;
                    match lit_bool(&v) {
                        Some(b) => ordered.set(key, Some((b, v.span()))),
                        None => {
                            cx.error_spanned_by(
                                &v,
                                "expected `true` or `false`: `ordered = true`, or just `ordered`",
                            );
                            ordered.set(key, None);
                        }
                    }
                } else {
                    no_value(cx, &meta, "ordered")?;
                    ordered.set(key, Some((true, key.span())));
                }
            } else if key == ACK_WAIT {
                let v = value_of(cx, &meta, "ack_wait = \"30s\"")?;
                ack_wait.set(
                    key,
                    v.and_then(|v| duration_lit(cx, &v, ACK_WAIT).map(|ms| (ms, v.span()))),
                );
            } else if key == BACKOFF {
                let v = value_of(cx, &meta, "backoff = [\"1s\", \"5s\", \"30s\"]")?;
                backoff.set(key, v.and_then(|v| backoff_value(cx, &v)));
            } else if key == PUBLISHES {
                let v = value_of(cx, &meta, "publishes = [OrderShipped]")?;
                publishes.set(key, v.and_then(|v| publishes_value(cx, &v)));
            } else {
                skip_value(&meta)?;
                cx.error_spanned_by(key, unknown_key(HANDLER_WHAT, key, HANDLER_KEYS));
            }
            Ok(())
        });
        if let Err(e) = parser.parse2(args) {
            cx.syn_error(e);
        }

        Handler {
            subject: subject.get(),
            durable: durable.get(),
            deliver: deliver.get(),
            start_sequence: start_sequence.get(),
            ack: ack.get(),
            replay: replay.get(),
            max_deliver: max_deliver.get(),
            concurrency: concurrency.get(),
            ordered: ordered.get(),
            ack_wait: ack_wait.get(),
            backoff: backoff.get(),
            publishes: publishes.get(),
        }
    }
}

fn subject_filter(cx: &Ctxt, expr: &Expr) -> Option<(LitStr, Span)> {
    let s = lit_str(cx, expr, "subject = \"order.*.created\"")?;
    match rules::filter_problem(&s.value()) {
        None => Some((s.clone(), s.span())),
        Some(why) => {
            cx.error_spanned_by(
                &s,
                format!("invalid subject filter \"{}\": {why}", s.value()),
            );
            None
        }
    }
}

fn durable_value(cx: &Ctxt, expr: &Expr) -> Option<(Durable, Span)> {
    let expr = ungroup(expr);
    if let Some(b) = lit_bool(expr) {
        return Some((Durable::Flag(b), expr.span()));
    }
    let s = match expr {
        Expr::Lit(syn::ExprLit {
            lit: Lit::Str(s), ..
        }) => s,
        _ => {
            cx.error_spanned_by(
                expr,
                "expected a consumer name or `false`: `durable = \"billing\"`, or `durable = false` for an ephemeral consumer",
            );
            return None;
        }
    };
    let v = s.value();
    if rules::is_name_token(&v) {
        Some((Durable::Name(v), s.span()))
    } else {
        cx.error_spanned_by(
            s,
            format!("invalid durable consumer name \"{v}\": use letters, digits, `_` and `-` only"),
        );
        None
    }
}

/// `[OrderShipped, crate::events::OrderCancelled]`: a list of type paths.
fn publishes_value(cx: &Ctxt, expr: &Expr) -> Option<(Vec<syn::Type>, Span)> {
    const USAGE: &str = "`publishes = [OrderShipped, OrderCancelled]`";
    let Expr::Array(array) = expr else {
        cx.error_spanned_by(
            expr,
            format!("expected a list of the event types the handler publishes: {USAGE}"),
        );
        return None;
    };
    if array.elems.is_empty() {
        cx.error_spanned_by(
            array,
            format!("`publishes` needs at least one event type: {USAGE}"),
        );
        return None;
    }
    let mut types = Vec::new();
    for e in &array.elems {
        match e {
            Expr::Path(p) if p.qself.is_none() => types.push(syn::Type::Path(syn::TypePath {
                qself: None,
                path: p.path.clone(),
            })),
            _ => cx.error_spanned_by(e, format!("expected an event type: {USAGE}")),
        }
    }
    (types.len() == array.elems.len()).then(|| (types, array.span()))
}

fn backoff_value(cx: &Ctxt, expr: &Expr) -> Option<(Vec<u64>, Span)> {
    let Expr::Array(array) = expr else {
        cx.error_spanned_by(
            expr,
            "expected a list of durations: `backoff = [\"1s\", \"5s\", \"30s\"]`",
        );
        return None;
    };
    if array.elems.is_empty() {
        cx.error_spanned_by(
            array,
            "`backoff` needs at least one delay: `backoff = [\"1s\", \"5s\", \"30s\"]` (the last one repeats)",
        );
        return None;
    }
    let delays: Vec<Option<u64>> = array
        .elems
        .iter()
        .map(|e| duration_lit(cx, e, BACKOFF))
        .collect();
    let delays: Option<Vec<u64>> = delays.into_iter().collect();
    delays.map(|d| (d, array.span()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(edit_distance("subjet", "subject"), 1);
        assert_eq!(edit_distance("", "ack"), 3);
        assert_eq!(suggest("subjet", HANDLER_KEYS), Some(SUBJECT));
        assert_eq!(suggest("max_delivery", HANDLER_KEYS), Some(MAX_DELIVER));
        assert_eq!(suggest("ackwait", HANDLER_KEYS), Some(ACK_WAIT));
        assert_eq!(suggest("nmae", &[AGGREGATE, NAME, VERSION]), Some(NAME));
        assert_eq!(suggest("retries", HANDLER_KEYS), None);
        assert_eq!(suggest("xyz", HANDLER_KEYS), None);
    }
}
