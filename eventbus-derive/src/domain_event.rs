//! `#[derive(DomainEvent)]`: on a struct, `DomainEvent` + `EventSet` + registration; on an enum,
//! an `EventSet` of its variants' events.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{DeriveInput, Member};

use crate::internals::ast::{Container, Data, IdField, Variant};
use crate::internals::{check, type_text, Ctxt};

pub(crate) fn expand(input: DeriveInput) -> syn::Result<TokenStream> {
    let cx = Ctxt::new();
    let cont = Container::from_ast(&cx, &input);
    if let Some(cont) = &cont {
        check::check_container(&cx, cont);
    }
    cx.check()?;
    let cont = cont.expect("a container without errors");
    let body = match &cont.data {
        Data::Struct(id) => event_struct(&cont, id.as_ref().expect("an id field without errors")),
        Data::Enum(variants) => event_set(&cont, variants),
    };
    Ok(quote! {
        #[doc(hidden)]
        #[allow(non_upper_case_globals, unused_qualifications, clippy::all)]
        const _: () = {
            #body
        };
    })
}

fn event_struct(cont: &Container<'_>, id: &IdField<'_>) -> TokenStream {
    let ident = cont.ident;
    let attrs = &cont.attrs;
    let aggregate = &attrs.aggregate.as_ref().expect("checked").value;
    let name = &attrs.name.as_ref().expect("checked").value;
    let version = attrs.version.as_ref().map_or(1, |v| v.value);
    let pattern = format!("{aggregate}.*.{name}");
    let cloud_type = format!("{aggregate}.{name}.v{version}");
    let foreign_type = match &attrs.cloud_type {
        Some(t) => {
            let t = &t.value;
            quote!(::core::option::Option::Some(#t))
        }
        None => quote!(::core::option::Option::None),
    };
    let rust_type = ident.unraw().to_string();
    // The upcaster, spanned at the user's path: a function of another signature is reported
    // there.
    let upcast = attrs.upcast.as_ref().map(|u| {
        let path = &u.value;
        let f = quote_spanned! {u.span=>
            let __eventbus_upcast: fn(
                u32,
                ::eventbus::__private::serde_json::Value,
            ) -> ::core::result::Result<::eventbus::__private::serde_json::Value, ::eventbus::UpcastError> = #path;
        };
        quote! {
            fn upcast(
                __eventbus_name: &str,
                __eventbus_version: u32,
                __eventbus_data: ::eventbus::__private::serde_json::Value,
            ) -> ::core::result::Result<::eventbus::__private::serde_json::Value, ::eventbus::UpcastError> {
                #f
                if __eventbus_name == #name {
                    __eventbus_upcast(__eventbus_version, __eventbus_data)
                } else {
                    ::core::result::Result::Err(::eventbus::UpcastError::NoUpcaster)
                }
            }
        }
    });
    // Spanned at the id field's type: a type that is not an aggregate id is reported there.
    let member = match &id.member {
        Member::Named(ident) => {
            let mut ident = ident.clone();
            ident.set_span(id.ty.span());
            Member::Named(ident)
        }
        Member::Unnamed(index) => Member::Unnamed(syn::Index {
            index: index.index,
            span: id.ty.span(),
        }),
    };
    let id_expr = quote_spanned! {id.ty.span()=>
        ::eventbus::AggregateId::as_aggregate_id(&self.#member)
    };
    quote! {
        #[automatically_derived]
        impl ::eventbus::DomainEvent for #ident {
            const AGGREGATE_TYPE: &'static str = #aggregate;
            const EVENT_TYPE: &'static str = #name;
            const SUBJECT_PATTERN: &'static str = #pattern;
            const VERSION: u32 = #version;

            fn aggregate_id(&self) -> ::std::borrow::Cow<'_, str> {
                #id_expr
            }
        }

        #[automatically_derived]
        impl ::eventbus::EventSet for #ident {
            const AGGREGATE: &'static str = #aggregate;
            const FILTER: &'static str = #pattern;
            const EVENTS: &'static [::eventbus::EventDescriptor] = &[::eventbus::EventDescriptor {
                aggregate: #aggregate,
                name: #name,
                version: #version,
                subject_pattern: #pattern,
                cloud_type: #cloud_type,
                foreign_type: #foreign_type,
                rust_type: #rust_type,
            }];

            fn descriptor(&self) -> &'static ::eventbus::EventDescriptor {
                &<Self as ::eventbus::EventSet>::EVENTS[0]
            }

            fn id(&self) -> ::std::borrow::Cow<'_, str> {
                <Self as ::eventbus::DomainEvent>::aggregate_id(self)
            }

            fn to_json(&self) -> ::core::result::Result<::std::vec::Vec<u8>, ::eventbus::__private::serde_json::Error> {
                ::eventbus::__private::event_to_json(self)
            }

            fn from_json(
                __eventbus_name: &str,
                __eventbus_body: &[u8],
            ) -> ::core::result::Result<Self, ::eventbus::DecodeError> {
                ::eventbus::__private::event_from_json(__eventbus_name, __eventbus_body)
            }

            #upcast
        }

        // The payload's JSON Schema when the type derives `schemars::JsonSchema`, else none
        // (the AsyncAPI document marks the payload unknown).
        fn __eventbus_schema() -> ::core::option::Option<::eventbus::__private::serde_json::Value> {
            #[allow(unused_imports)]
            use ::eventbus::__private::{NoSchema as _, SchemaFromJsonSchema as _};
            (&&::eventbus::__private::SchemaProbe::<#ident>::new()).event_schema()
        }

        ::eventbus::__private::inventory::submit! {
            ::eventbus::__private::EventRegistration {
                descriptor: <#ident as ::eventbus::EventSet>::EVENTS[0],
                schema: __eventbus_schema,
            }
        }
    }
}

fn event_set(cont: &Container<'_>, variants: &[Variant<'_>]) -> TokenStream {
    let ident = cont.ident;
    let set_name = ident.to_string();
    let aggregate = &cont.attrs.aggregate.as_ref().expect("checked").value;
    let filter = format!("{aggregate}.*.*");

    // Everything that names a variant's type is spanned at that type, and goes through
    // `EventSet` only: a type that is not an event is reported once, on the type.
    let mut events = Vec::new();
    let mut descriptor_arms = Vec::new();
    let mut id_arms = Vec::new();
    let mut to_json_arms = Vec::new();
    let mut decoders = Vec::new();
    let mut upcasters = Vec::new();
    let mut checks = TokenStream::new();
    for (i, v) in variants.iter().enumerate() {
        let (vident, ty) = (v.ident, v.ty);
        let vname = vident.to_string();
        let set = quote_spanned!(ty.span()=> <#ty as ::eventbus::EventSet>);
        events.push(quote_spanned!(ty.span()=> #set::EVENTS[0]));
        descriptor_arms.push(quote_spanned!(ty.span()=> #ident::#vident(__eventbus_event) => #set::descriptor(__eventbus_event)));
        id_arms.push(quote_spanned!(ty.span()=> #ident::#vident(__eventbus_event) => #set::id(__eventbus_event)));
        to_json_arms.push(quote_spanned!(ty.span()=> #ident::#vident(__eventbus_event) => #set::to_json(__eventbus_event)));
        upcasters.push(quote_spanned! {ty.span()=>
            if __eventbus_name == #set::EVENTS[0].name {
                return #set::upcast(__eventbus_name, __eventbus_version, __eventbus_data);
            }
        });
        decoders.push(quote_spanned! {ty.span()=>
            if __eventbus_name == #set::EVENTS[0].name {
                return #set::from_json(__eventbus_name, __eventbus_body).map(#ident::#vident);
            }
        });

        // A variant wraps one event struct, not another set.
        checks.extend(quote_spanned! {ty.span()=>
            const _: () = ::eventbus::__private::assert_domain_event::<#ty>();
        });
        let span = variant_span(v);
        checks.extend(quote_spanned! {span=>
            const _: () = ::eventbus::__private::check_variant_aggregate(
                #set_name, #vname, #aggregate, #set::AGGREGATE,
            );
        });
        for earlier in &variants[..i] {
            let (ety, ename) = (earlier.ty, earlier.ident.to_string());
            checks.extend(quote_spanned! {span=>
                const _: () = ::eventbus::__private::check_distinct_events(
                    #set_name, #ename, #vname,
                    <#ety as ::eventbus::EventSet>::EVENTS[0].name,
                    #set::EVENTS[0].name,
                );
            });
        }
    }

    // `From` for each event type wrapped once (a type wrapped twice is reported by the checks).
    let mut from_impls = TokenStream::new();
    for v in variants {
        let text = type_text(v.ty);
        if variants.iter().filter(|o| type_text(o.ty) == text).count() > 1 {
            continue;
        }
        let (vident, ty) = (v.ident, v.ty);
        from_impls.extend(quote! {
            #[automatically_derived]
            impl ::core::convert::From<#ty> for #ident {
                fn from(event: #ty) -> Self {
                    #ident::#vident(event)
                }
            }
        });
    }

    quote! {
        #[automatically_derived]
        impl ::eventbus::EventSet for #ident {
            const AGGREGATE: &'static str = #aggregate;
            const FILTER: &'static str = #filter;
            const EVENTS: &'static [::eventbus::EventDescriptor] = &[#(#events),*];

            fn descriptor(&self) -> &'static ::eventbus::EventDescriptor {
                match self {
                    #(#descriptor_arms,)*
                }
            }

            fn id(&self) -> ::std::borrow::Cow<'_, str> {
                match self {
                    #(#id_arms,)*
                }
            }

            fn to_json(&self) -> ::core::result::Result<::std::vec::Vec<u8>, ::eventbus::__private::serde_json::Error> {
                match self {
                    #(#to_json_arms,)*
                }
            }

            fn from_json(
                __eventbus_name: &str,
                __eventbus_body: &[u8],
            ) -> ::core::result::Result<Self, ::eventbus::DecodeError> {
                #(#decoders)*
                ::core::result::Result::Err(::eventbus::DecodeError::UnknownEventType {
                    name: ::std::borrow::ToOwned::to_owned(__eventbus_name),
                    aggregate: #aggregate,
                })
            }

            fn upcast(
                __eventbus_name: &str,
                __eventbus_version: u32,
                __eventbus_data: ::eventbus::__private::serde_json::Value,
            ) -> ::core::result::Result<::eventbus::__private::serde_json::Value, ::eventbus::UpcastError> {
                #(#upcasters)*
                ::core::result::Result::Err(::eventbus::UpcastError::NoUpcaster)
            }
        }

        #from_impls
        #checks
    }
}

/// The span of a whole variant (`Created(OrderCreated)`), where stable Rust can join spans;
/// otherwise its name.
fn variant_span(v: &Variant<'_>) -> Span {
    v.ident
        .span()
        .join(v.ty.span())
        .unwrap_or_else(|| v.ident.span())
}
