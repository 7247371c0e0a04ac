//! Subject syntax, checked at expansion time: the same rules as `eventbus::subject`, which this
//! crate cannot depend on (that crate depends on this one).

/// Why `s` is not a name token (an aggregate or event type), if it is not: names are one
/// non-empty subject token of `[A-Za-z0-9_-]`.
pub(crate) fn name_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("it is empty".to_owned());
    }
    let bad = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))?;
    Some(match bad {
        '.' => "it contains `.`, which separates subject tokens".to_owned(),
        '*' | '>' => format!("it contains `{bad}`, a subject wildcard"),
        c if c.is_whitespace() => "it contains white space".to_owned(),
        c => format!("it contains {c:?}"),
    })
}

/// Why a subject filter is malformed, if it is: an empty token, `*` or `>` inside a token, `>`
/// before the last token, white space or a control character.
pub(crate) fn filter_problem(filter: &str) -> Option<&'static str> {
    if filter.is_empty() {
        return Some("the subject is empty");
    }
    if filter.chars().any(char::is_whitespace) {
        return Some("the subject contains white space");
    }
    if filter.chars().any(char::is_control) {
        return Some("the subject contains a control character");
    }
    let tokens: Vec<&str> = filter.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Some("the subject has an empty token (`..`, or a leading or trailing `.`)");
        }
        if token.len() > 1 && token.contains(['*', '>']) {
            return Some("a wildcard (`*` or `>`) must be a whole token");
        }
        if *token == ">" && i + 1 != tokens.len() {
            return Some("`>` may only be the last token");
        }
    }
    None
}

/// Whether `s` is a valid consumer name: `[A-Za-z0-9_-]+`.
pub(crate) fn is_consumer_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["order", "Order_2", "a-b", "x", "0"] {
            assert_eq!(name_problem(ok), None, "{ok}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("a.b", "`.`"),
            ("*", "wildcard"),
            ("a>", "wildcard"),
            ("a b", "white space"),
            ("é", "'é'"),
            ("a/b", "'/'"),
        ] {
            let p = name_problem(bad).unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(p.contains(why), "{bad:?}: {p}");
        }
    }

    #[test]
    fn filters() {
        for ok in [
            "order.*.created",
            "order.>",
            ">",
            "*",
            "a.b.c",
            "order.*.*",
            "a-1.b_2",
            "ü.*",
        ] {
            assert_eq!(filter_problem(ok), None, "{ok}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("order..created", "empty token"),
            (".order", "empty token"),
            ("order.", "empty token"),
            ("order.>.created", "last"),
            (">.>", "last"),
            ("order.a*.created", "whole token"),
            ("order.>x", "whole token"),
            ("order.**", "whole token"),
            ("order. x", "white space"),
            ("order.\u{7f}", "control"),
        ] {
            let p = filter_problem(bad).unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(p.contains(why), "{bad:?}: {p}");
        }
    }

    #[test]
    fn consumer_names() {
        assert!(is_consumer_name("billing-bill_order2"));
        for bad in ["", "a.b", "a b", "a*", "a>", "ü"] {
            assert!(!is_consumer_name(bad), "{bad:?}");
        }
    }
}
