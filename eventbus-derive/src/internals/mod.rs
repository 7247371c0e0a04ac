//! Analysis, kept apart from code generation: the parsed model ([`ast`]), attribute parsing
//! ([`attr`]), checks across attributes ([`check`]), error collection ([`ctxt`]), attribute keys
//! ([`symbol`]), and the syntax rules of subjects and durations ([`rules`]).

pub(crate) mod ast;
pub(crate) mod attr;
pub(crate) mod check;
pub(crate) mod ctxt;
pub(crate) mod symbol;

// The syntax rules of subjects and durations, the very file the runtime compiles as
// `eventbus::rules`, so that the macros and the runtime apply the same rules. It is included by
// path because this crate cannot depend on `eventbus` (that crate depends on this one); the file
// has no dependency and names no path of either crate.
#[path = "../../../eventbus/src/rules.rs"]
pub(crate) mod rules;

pub(crate) use ctxt::Ctxt;

/// The text of a type as a user would write it: `crate::events::OrderCreated`, `Vec<u8>`
/// (token streams print as `crate :: events :: OrderCreated`).
pub(crate) fn type_text(ty: &syn::Type) -> String {
    use proc_macro2::TokenTree;
    use quote::ToTokens;

    fn push(out: &mut String, tokens: proc_macro2::TokenStream, prev_word: &mut bool) {
        for tt in tokens {
            match tt {
                TokenTree::Ident(i) => {
                    if *prev_word {
                        out.push(' ');
                    }
                    out.push_str(&i.to_string());
                    *prev_word = true;
                }
                TokenTree::Literal(l) => {
                    if *prev_word {
                        out.push(' ');
                    }
                    out.push_str(&l.to_string());
                    *prev_word = true;
                }
                TokenTree::Punct(p) => {
                    out.push(p.as_char());
                    if matches!(p.as_char(), ',' | ';') {
                        out.push(' ');
                    }
                    *prev_word = false;
                }
                TokenTree::Group(g) => {
                    let (open, close) = match g.delimiter() {
                        proc_macro2::Delimiter::Parenthesis => ("(", ")"),
                        proc_macro2::Delimiter::Bracket => ("[", "]"),
                        proc_macro2::Delimiter::Brace => ("{", "}"),
                        proc_macro2::Delimiter::None => ("", ""),
                    };
                    out.push_str(open);
                    *prev_word = false;
                    push(out, g.stream(), prev_word);
                    out.push_str(close);
                    *prev_word = false;
                }
            }
        }
    }

    let mut out = String::new();
    push(&mut out, ty.to_token_stream(), &mut false);
    out
}

#[cfg(test)]
mod tests {
    use super::type_text;

    #[test]
    fn type_texts() {
        for text in [
            "OrderCreated",
            "crate::events::OrderCreated",
            "Vec<u8>",
            "HashMap<String, u8>",
            "&'a str",
            "[u8; 4]",
        ] {
            let ty: syn::Type = syn::parse_str(text).unwrap();
            assert_eq!(type_text(&ty), text);
        }
    }
}
