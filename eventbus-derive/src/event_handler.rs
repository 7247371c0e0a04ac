//! `#[event_handler]`: re-emits the function and registers it with its consumer options.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::ItemFn;

use crate::internals::ast::Handler;
use crate::internals::attr::{self, Ack, Deliver, Durable, Replay};
use crate::internals::{check, type_text, Ctxt};

pub(crate) fn expand(args: TokenStream, item: ItemFn) -> syn::Result<TokenStream> {
    let cx = Ctxt::new();
    let attrs = attr::Handler::from_tokens(&cx, args);
    check::check_handler_options(&cx, &attrs);
    let handler = Handler::from_ast(&cx, attrs, &item);
    if let Err(errors) = cx.check() {
        // The function stays, so that its callers do not add errors of their own.
        let errors = errors.into_compile_error();
        return Ok(quote! { #item #errors });
    }
    let handler = handler.expect("a handler without errors");
    let registration = registration(&handler);
    Ok(quote! {
        #item

        #[doc(hidden)]
        #[allow(non_upper_case_globals, unused_qualifications, clippy::all)]
        const _: () = {
            #registration
        };
    })
}

fn registration(h: &Handler<'_>) -> TokenStream {
    let name = h.name();
    let name_str = name.to_string();
    let event_ty = h.event_ty;
    let event_text = type_text(event_ty);

    // The handler's call, spanned at its return type: a future that is not `Send`, or an error
    // type that does not convert into `HandlerError`, is reported there. Each parameter after
    // the event is taken from the context through `FromContext`, spanned at its type: a type
    // that is not a handler parameter is reported on it.
    let params: Vec<TokenStream> = h
        .params
        .iter()
        .map(|ty| {
            quote_spanned! {ty.span()=>
                <#ty as ::eventbus::FromContext>::from_context(&__eventbus_ctx)
            }
        })
        .collect();
    let needs: Vec<TokenStream> = h
        .params
        .iter()
        .map(|ty| {
            quote_spanned! {ty.span()=>
                <#ty as ::eventbus::FromContext>::needs(__eventbus_out);
            }
        })
        .collect();
    let ctx_pat = if h.params.is_empty() {
        quote!(_)
    } else {
        quote!(__eventbus_ctx)
    };
    let output_span = h.output.span();
    let closure = quote_spanned! {output_span=>
        |__eventbus_event, #ctx_pat| #name(__eventbus_event #(, #params)*)
    };
    // The event type keeps its own span, so that a type that is not an event is reported on
    // it; the bounds on the handler's future are reported on the return type.
    let call_fn = quote_spanned! {output_span=>
        ::eventbus::__private::call::<#event_ty, _, _, _>
    };

    let subject_given = h.attrs.subject.is_some();
    let (subject, subject_check) = match &h.attrs.subject {
        Some(given) => {
            let lit = &given.value;
            let check = quote_spanned! {given.span=>
                const _: () = ::eventbus::__private::check_handler_subject(
                    #name_str, #lit, #event_text, <#event_ty as ::eventbus::EventSet>::FILTER,
                );
            };
            (quote!(#lit), check)
        }
        None => (
            quote!(<#event_ty as ::eventbus::EventSet>::FILTER),
            quote!(),
        ),
    };

    let options = options(h);
    // Each published type spanned at itself: a type that is not an event is reported there.
    let publishes: Vec<TokenStream> = h
        .attrs
        .publishes
        .iter()
        .flat_map(|p| p.value.iter())
        .map(|ty| quote_spanned!(ty.span()=> <#ty as ::eventbus::EventSet>::EVENTS))
        .collect();

    quote! {
        #subject_check

        fn __eventbus_states(__eventbus_out: &mut ::std::vec::Vec<::eventbus::StateType>) {
            #(#needs)*
        }

        fn __eventbus_call(
            __eventbus_meta: &::eventbus::Metadata,
            __eventbus_body: &[u8],
            __eventbus_ctx: ::eventbus::EventContext,
        ) -> ::core::result::Result<::eventbus::__private::HandlerFuture, ::eventbus::Error> {
            #call_fn(__eventbus_meta, __eventbus_body, __eventbus_ctx, #closure)
        }

        ::eventbus::__private::inventory::submit! {
            ::eventbus::__private::HandlerRegistration {
                name: #name_str,
                module_path: ::core::module_path!(),
                file: ::core::file!(),
                line: ::core::line!(),
                subject: #subject,
                subject_given: #subject_given,
                aggregate: <#event_ty as ::eventbus::EventSet>::AGGREGATE,
                event_type: #event_text,
                events: <#event_ty as ::eventbus::EventSet>::EVENTS,
                options: #options,
                publishes: &[#(#publishes),*],
                states: __eventbus_states,
                call: __eventbus_call,
            }
        }
    }
}

/// The `ConsumerOptions` given on the attribute, as a `const` expression.
fn options(h: &Handler<'_>) -> TokenStream {
    let a = &h.attrs;
    let some = |t: TokenStream| quote!(::core::option::Option::Some(#t));
    let mut fields = Vec::new();
    if let Some(d) = &a.durable {
        fields.push(match &d.value {
            Durable::Name(n) => {
                let v = some(quote!(::std::borrow::Cow::Borrowed(#n)));
                quote!(durable_name: #v)
            }
            Durable::Flag(b) => {
                let v = some(quote!(#b));
                quote!(durable: #v)
            }
        });
    }
    let deliver = a.deliver.as_ref().map(|d| match d.value {
        Deliver::All => quote!(All),
        Deliver::Last => quote!(Last),
        Deliver::LastPerSubject => quote!(LastPerSubject),
        Deliver::New => quote!(New),
    });
    let deliver = deliver.or_else(|| {
        a.start_sequence.as_ref().map(|s| {
            let n = s.value;
            quote!(ByStartSequence(#n))
        })
    });
    if let Some(d) = deliver {
        let v = some(quote!(::eventbus::DeliverPolicy::#d));
        fields.push(quote!(deliver: #v));
    }
    if let Some(ack) = &a.ack {
        let v = match ack.value {
            Ack::Explicit => quote!(Explicit),
            Ack::None => quote!(None),
        };
        let v = some(quote!(::eventbus::AckPolicy::#v));
        fields.push(quote!(ack: #v));
    }
    if let Some(replay) = &a.replay {
        let v = match replay.value {
            Replay::Instant => quote!(Instant),
            Replay::Original => quote!(Original),
        };
        let v = some(quote!(::eventbus::ReplayPolicy::#v));
        fields.push(quote!(replay: #v));
    }
    if let Some(m) = &a.max_deliver {
        let v = some({
            let n = m.value;
            quote!(#n)
        });
        fields.push(quote!(max_deliver: #v));
    }
    if let Some(w) = &a.ack_wait {
        let v = some(duration(w.value));
        fields.push(quote!(ack_wait: #v));
    }
    if let Some(b) = &a.backoff {
        let delays = b.value.iter().map(|ms| duration(*ms));
        let v = some(quote!(::std::borrow::Cow::Borrowed(&[#(#delays),*])));
        fields.push(quote!(backoff: #v));
    }
    if let Some(c) = &a.concurrency {
        let v = some({
            let n = c.value;
            quote!(#n)
        });
        fields.push(quote!(concurrency: #v));
    }
    if let Some(o) = &a.ordered {
        let v = some({
            let b = o.value;
            quote!(#b)
        });
        fields.push(quote!(ordered: #v));
    }
    quote! {
        ::eventbus::ConsumerOptions {
            #(#fields,)*
            ..::eventbus::ConsumerOptions::NONE
        }
    }
}

fn duration(ms: u64) -> TokenStream {
    quote!(::core::time::Duration::from_millis(#ms))
}
