//! The parsed model of what the macros are applied to: an event struct or an event set enum
//! ([`Container`]), and a handler function ([`Handler`]).

use syn::spanned::Spanned;
use syn::{DeriveInput, FnArg, Ident, ItemFn, Member, ReturnType, Type};

use super::attr;
use super::ctxt::Ctxt;
use super::symbol::EVENT;

/// A type deriving `DomainEvent`.
pub(crate) struct Container<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) attrs: attr::Container,
    pub(crate) data: Data<'a>,
}

pub(crate) enum Data<'a> {
    /// An event struct, with its `#[event(aggregate_id)]` field if it has exactly one.
    Struct(Option<IdField<'a>>),
    /// An event set: one variant per event struct.
    Enum(Vec<Variant<'a>>),
}

/// The field that holds the aggregate id.
pub(crate) struct IdField<'a> {
    pub(crate) member: Member,
    pub(crate) ty: &'a Type,
}

/// A variant of an event set: `Created(OrderCreated)`.
pub(crate) struct Variant<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) ty: &'a Type,
}

impl<'a> Container<'a> {
    /// The model of `input`, or `None` when it cannot be an event at all (a union). Problems
    /// that leave a usable model are recorded in `cx` and the model is returned.
    pub(crate) fn from_ast(cx: &Ctxt, input: &'a DeriveInput) -> Option<Container<'a>> {
        let attrs = attr::Container::from_ast(cx, &input.attrs);
        let generics = &input.generics;
        if !generics.params.is_empty() || generics.where_clause.is_some() {
            cx.error_spanned_by(
                generics,
                "generic events are not supported: an event type is registered once for the whole \
                 program, so it cannot have lifetime or type parameters",
            );
        }
        let data = match &input.data {
            syn::Data::Struct(s) => Data::Struct(id_field(cx, input, &s.fields)),
            syn::Data::Enum(e) => Data::Enum(variants(cx, e)),
            syn::Data::Union(u) => {
                cx.error_spanned_by(
                    u.union_token,
                    "`DomainEvent` cannot be derived for a union: derive it on a struct (one event) \
                     or on an enum of event structs (an event set)",
                );
                return None;
            }
        };
        Some(Container {
            ident: &input.ident,
            attrs,
            data,
        })
    }
}

fn id_field<'a>(cx: &Ctxt, input: &DeriveInput, fields: &'a syn::Fields) -> Option<IdField<'a>> {
    let mut found: Option<(IdField<'a>, String)> = None;
    for (i, field) in fields.iter().enumerate() {
        let Some(at) = attr::field_aggregate_id(cx, &field.attrs) else {
            continue;
        };
        let (member, shown) = match &field.ident {
            Some(ident) => (Member::Named(ident.clone()), format!("`{ident}`")),
            None => (
                Member::Unnamed(syn::Index {
                    index: i as u32,
                    span: field.ty.span(),
                }),
                format!("field {i}"),
            ),
        };
        match &found {
            Some((_, first)) => cx.error_at(
                at,
                format!(
                    "a second `#[event(aggregate_id)]` field: an event belongs to one aggregate, \
                     and {first} already holds its id"
                ),
            ),
            None => {
                found = Some((
                    IdField {
                        member,
                        ty: &field.ty,
                    },
                    shown,
                ))
            }
        }
    }
    if found.is_none() {
        cx.error_spanned_by(
            &input.ident,
            format!(
                "`{}` has no `#[event(aggregate_id)]` field: mark the field that holds the aggregate id, \
                 e.g. `#[event(aggregate_id)] order_id: String`",
                input.ident
            ),
        );
    }
    found.map(|(f, _)| f)
}

fn variants<'a>(cx: &Ctxt, data: &'a syn::DataEnum) -> Vec<Variant<'a>> {
    let mut out = Vec::new();
    for v in &data.variants {
        for a in v.attrs.iter().filter(|a| a.path() == EVENT) {
            cx.error_spanned_by(
                a,
                "`#[event(...)]` is not allowed on a variant of an event set: the event struct it wraps \
                 carries its own `#[event(...)]`",
            );
        }
        for f in &v.fields {
            for a in f.attrs.iter().filter(|a| a.path() == EVENT) {
                cx.error_spanned_by(
                    a,
                    "`#[event(...)]` is not allowed in an event set: the event struct a variant wraps marks \
                     its own `#[event(aggregate_id)]` field",
                );
            }
        }
        match &v.fields {
            syn::Fields::Unnamed(f) if f.unnamed.len() == 1 => {
                out.push(Variant { ident: &v.ident, ty: &f.unnamed[0].ty });
            }
            _ => cx.error_spanned_by(
                v,
                format!(
                    "variant `{0}` of an event set must wrap exactly one event struct, e.g. `{0}(Order{0})`",
                    v.ident
                ),
            ),
        }
    }
    out
}

/// An `#[event_handler]` function.
pub(crate) struct Handler<'a> {
    pub(crate) item: &'a ItemFn,
    pub(crate) attrs: attr::Handler,
    /// The first parameter's type.
    pub(crate) event_ty: &'a Type,
    /// The types of the parameters after the event (`EventContext`, `State<T>`, ...), each
    /// taken from the handler's context through `eventbus::FromContext`.
    pub(crate) params: Vec<&'a Type>,
    /// The declared return type.
    pub(crate) output: &'a Type,
}

const SIGNATURE: &str =
    "`async fn name(event: E, ...) -> Result<(), Err>`, where the parameters after the event are `ctx: EventContext` or `State(x): State<T>`";

impl<'a> Handler<'a> {
    /// The model of a handler, or `None` when its signature cannot be used (the reasons are
    /// recorded in `cx`).
    pub(crate) fn from_ast(
        cx: &Ctxt,
        attrs: attr::Handler,
        item: &'a ItemFn,
    ) -> Option<Handler<'a>> {
        let sig = &item.sig;
        let mut usable = true;
        if sig.asyncness.is_none() {
            cx.error_spanned_by(
                sig.fn_token,
                format!("an event handler must be an `async fn`: {SIGNATURE}"),
            );
            usable = false;
        }
        if let Some(c) = &sig.constness {
            cx.error_spanned_by(c, "an event handler cannot be a `const fn`");
            usable = false;
        }
        if let Some(u) = &sig.unsafety {
            cx.error_spanned_by(u, "an event handler cannot be `unsafe`");
            usable = false;
        }
        if let Some(abi) = &sig.abi {
            cx.error_spanned_by(abi, "an event handler cannot have an `extern` ABI");
            usable = false;
        }
        if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
            cx.error_spanned_by(
                &sig.generics,
                "an event handler cannot be generic: its event type is fixed when it is registered",
            );
            usable = false;
        }
        if let Some(v) = &sig.variadic {
            cx.error_spanned_by(v, "an event handler cannot be variadic");
            usable = false;
        }

        let mut types = Vec::new();
        for input in sig.inputs.iter() {
            match input {
                FnArg::Receiver(r) => {
                    cx.error_spanned_by(
                        r,
                        "an event handler cannot take `self`: declare it as a free function, outside any `impl`",
                    );
                    usable = false;
                }
                FnArg::Typed(t) => types.push(&*t.ty),
            }
        }
        if sig.inputs.is_empty() {
            cx.error_at(
                sig.paren_token.span.join(),
                format!("an event handler takes the event as its first parameter: {SIGNATURE}"),
            );
            usable = false;
        }

        let output = match &sig.output {
            ReturnType::Type(_, ty) => Some(&**ty),
            ReturnType::Default => {
                cx.error_spanned_by(
                    sig,
                    "an event handler returns `Result<(), E>` where `E` converts into `HandlerError`: \
                     add `-> Result<(), HandlerError>`",
                );
                None
            }
        };

        match (usable, output, types.as_slice()) {
            (true, Some(output), [event_ty, rest @ ..]) => Some(Handler {
                item,
                attrs,
                event_ty,
                params: rest.to_vec(),
                output,
            }),
            _ => None,
        }
    }

    pub(crate) fn name(&self) -> &'a Ident {
        &self.item.sig.ident
    }
}
