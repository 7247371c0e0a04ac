//! Subjects: the `{aggregate}.{id}.{event}` rule, token checks, and filter matching.
//!
//! Every check here is a `const fn`, so the same rules run in the macros' generated
//! `const` assertions (at compile time) and in the runtime (at start-up and on publish).

use std::fmt;

use crate::error::{Error, ErrorKind};

/// A concrete, validated NATS subject of one event: `{aggregate_type}.{aggregate_id}.{event_type}`.
///
/// A `Subject` can only be built through checks that refuse an aggregate id that would route the
/// event elsewhere (see [`check_aggregate_id`]).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subject(String);

impl Subject {
    /// Builds the subject of an event of `aggregate_type` / `event_type` for one aggregate id.
    ///
    /// The id is checked: an empty id, or one holding `.`, `*`, `>`, white space or a control
    /// character is refused with an [`ErrorKind::InvalidAggregateId`] error that names it.
    pub fn for_event(
        aggregate_type: &str,
        aggregate_id: &str,
        event_type: &str,
    ) -> Result<Self, Error> {
        check_aggregate_id(aggregate_type, aggregate_id)?;
        let mut s =
            String::with_capacity(aggregate_type.len() + aggregate_id.len() + event_type.len() + 2);
        s.push_str(aggregate_type);
        s.push('.');
        s.push_str(aggregate_id);
        s.push('.');
        s.push_str(event_type);
        Ok(Subject(s))
    }

    /// The subject as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The subject's text, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl AsRef<str> for Subject {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<Subject> for String {
    fn from(s: Subject) -> String {
        s.0
    }
}

impl PartialEq<str> for Subject {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Subject {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// Why an aggregate id is refused, if it is.
pub const fn aggregate_id_problem(id: &str) -> Option<&'static str> {
    let b = id.as_bytes();
    if b.is_empty() {
        return Some("it is empty");
    }
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'.' => return Some("it contains `.`, which separates subject tokens"),
            b'*' => return Some("it contains `*`, a subject wildcard"),
            b'>' => return Some("it contains `>`, a subject wildcard"),
            b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => return Some("it contains white space"),
            0..=0x1f | 0x7f => return Some("it contains a control character"),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Checks an aggregate id: it must be one non-empty subject token with no wildcard, no `.` and
/// no white space. The error names the aggregate type and the id.
pub fn check_aggregate_id(aggregate_type: &str, id: &str) -> Result<(), Error> {
    match aggregate_id_problem(id) {
        None => Ok(()),
        Some(why) => Err(Error::new(
            ErrorKind::InvalidAggregateId,
            format!("invalid aggregate id {id:?} for aggregate `{aggregate_type}`: {why}"),
        )),
    }
}

/// Whether `s` is one subject token made of `[A-Za-z0-9_-]` only (the rule for aggregate and
/// event type names).
pub const fn is_name_token(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if !(c.is_ascii_alphanumeric() || c == b'_' || c == b'-') {
            return false;
        }
        i += 1;
    }
    true
}

/// Why a subject filter is malformed, if it is: an empty token, `*` or `>` inside a token,
/// `>` not last, white space.
pub const fn filter_problem(filter: &str) -> Option<&'static str> {
    let b = filter.as_bytes();
    if b.is_empty() {
        return Some("the subject is empty");
    }
    let mut start = 0;
    loop {
        let end = token_end(b, start);
        if end == start {
            return Some("the subject has an empty token (`..`, or a leading or trailing `.`)");
        }
        let mut i = start;
        while i < end {
            match b[i] {
                b'*' | b'>' if end - start > 1 => {
                    return Some("a wildcard (`*` or `>`) must be a whole token");
                }
                b'>' if end != b.len() => return Some("`>` may only be the last token"),
                b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => {
                    return Some("the subject contains white space");
                }
                0..=0x1f | 0x7f => return Some("the subject contains a control character"),
                _ => {}
            }
            i += 1;
        }
        if end == b.len() {
            return None;
        }
        start = end + 1;
    }
}

/// Checks a subject filter's syntax; the error names the filter.
pub fn check_filter(filter: &str) -> Result<(), Error> {
    match filter_problem(filter) {
        None => Ok(()),
        Some(why) => Err(Error::new(
            ErrorKind::InvalidSubject,
            format!("invalid subject filter {filter:?}: {why}"),
        )),
    }
}

const fn token_end(b: &[u8], start: usize) -> usize {
    let mut i = start;
    while i < b.len() && b[i] != b'.' {
        i += 1;
    }
    i
}

const fn token_is(b: &[u8], start: usize, end: usize, c: u8) -> bool {
    end == start + 1 && b[start] == c
}

const fn tokens_equal(a: &[u8], a0: usize, a1: usize, b: &[u8], b0: usize, b1: usize) -> bool {
    if a1 - a0 != b1 - b0 {
        return false;
    }
    let mut i = 0;
    while i < a1 - a0 {
        if a[a0 + i] != b[b0 + i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Whether some subject matches both filters (`*` one token, `>` one or more trailing tokens).
/// A concrete subject is a filter without wildcards, so this also tells whether a filter
/// matches a subject.
pub const fn filters_overlap(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut pa, mut pb) = (0, 0);
    loop {
        let a_done = pa > a.len();
        let b_done = pb > b.len();
        if a_done || b_done {
            return a_done && b_done;
        }
        let ea = token_end(a, pa);
        let eb = token_end(b, pb);
        if token_is(a, pa, ea, b'>') || token_is(b, pb, eb, b'>') {
            return true;
        }
        if !(token_is(a, pa, ea, b'*')
            || token_is(b, pb, eb, b'*')
            || tokens_equal(a, pa, ea, b, pb, eb))
        {
            return false;
        }
        pa = ea + 1;
        pb = eb + 1;
    }
}

/// Whether every subject that `inner` matches is also matched by `outer` (`outer` covers
/// `inner`), as a stream's subjects must cover a consumer's filter.
pub const fn filter_covers(outer: &str, inner: &str) -> bool {
    let (o, n) = (outer.as_bytes(), inner.as_bytes());
    let (mut po, mut pn) = (0, 0);
    loop {
        let o_done = po > o.len();
        let n_done = pn > n.len();
        if o_done || n_done {
            return o_done && n_done;
        }
        let eo = token_end(o, po);
        let en = token_end(n, pn);
        if token_is(o, po, eo, b'>') {
            return true;
        }
        if token_is(n, pn, en, b'>') {
            return false;
        }
        if !(token_is(o, po, eo, b'*')
            || (!token_is(n, pn, en, b'*') && tokens_equal(o, po, eo, n, pn, en)))
        {
            return false;
        }
        po = eo + 1;
        pn = en + 1;
    }
}

/// Whether a concrete subject is matched by a filter.
pub const fn filter_matches(filter: &str, subject: &str) -> bool {
    filter_covers(filter, subject)
}

/// The tokens of an event subject: `(aggregate_type, aggregate_id, event_type)`, if it has
/// exactly three non-empty tokens.
pub fn split_event_subject(subject: &str) -> Option<(&str, &str, &str)> {
    let mut it = subject.split('.');
    let (a, id, e) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || a.is_empty() || id.is_empty() || e.is_empty() {
        return None;
    }
    Some((a, id, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_tokens() {
        for ok in ["order", "Order_2", "a-b", "x"] {
            assert!(is_name_token(ok), "{ok}");
        }
        for bad in ["", "a.b", "a b", "*", ">", "é", "a/b", "a\t"] {
            assert!(!is_name_token(bad), "{bad}");
        }
    }

    #[test]
    fn aggregate_ids() {
        for ok in [
            "42",
            "a-b_c",
            "550e8400-e29b-41d4-a716-446655440000",
            "ünïcode",
            "a:b",
        ] {
            assert!(aggregate_id_problem(ok).is_none(), "{ok}");
            assert_eq!(
                Subject::for_event("order", ok, "created").unwrap().as_str(),
                format!("order.{ok}.created")
            );
        }
        for bad in [
            "", "a.b", "*", "a*", ">", "a>", "a b", " ", "a\tb", "a\nb", "\0",
        ] {
            let err = Subject::for_event("order", bad, "created").unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidAggregateId, "{bad:?}");
            let msg = err.to_string();
            assert!(msg.contains(&format!("{bad:?}")), "{msg} names {bad:?}");
            assert!(msg.contains("order"), "{msg}");
        }
    }

    #[test]
    fn filter_syntax() {
        for ok in [
            "order.*.created",
            "order.>",
            ">",
            "*",
            "a.b.c",
            "order.*.*",
            "a-1.b_2",
        ] {
            assert_eq!(filter_problem(ok), None, "{ok}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("order..created", "empty token"),
            (".order", "empty token"),
            ("order.", "empty token"),
            ("order.>.created", "last"),
            ("order.a*.created", "whole token"),
            ("order.>x", "whole token"),
            ("order.**", "whole token"),
            ("order. x", "white space"),
        ] {
            let p = filter_problem(bad).unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(p.contains(why), "{bad:?}: {p}");
        }
        assert!(check_filter("a..b")
            .unwrap_err()
            .to_string()
            .contains("\"a..b\""));
    }

    #[test]
    fn overlap() {
        let yes = [
            ("order.*.created", "order.*.created"),
            ("order.*.created", "order.42.created"),
            ("order.>", "order.*.created"),
            ("order.*.*", "order.*.created"),
            (">", "a.b.c"),
            ("*.*.created", "order.*.*"),
            ("order.42.>", "order.*.created"),
        ];
        for (a, b) in yes {
            assert!(filters_overlap(a, b), "{a} ~ {b}");
            assert!(filters_overlap(b, a), "{b} ~ {a}");
        }
        let no = [
            ("order.*.created", "order.*.shipped"),
            ("order.*.created", "invoice.*.created"),
            ("order.>", "order"),
            ("order.*", "order.*.created"),
            ("order.*.created.x", "order.*.created"),
            ("*.*", "order.*.created"),
        ];
        for (a, b) in no {
            assert!(!filters_overlap(a, b), "{a} !~ {b}");
            assert!(!filters_overlap(b, a), "{b} !~ {a}");
        }
    }

    #[test]
    fn covers() {
        assert!(filter_covers("order.>", "order.*.created"));
        assert!(filter_covers("order.>", "order.42.created"));
        assert!(filter_covers("order.*.*", "order.*.created"));
        assert!(filter_covers(">", "order.*.created"));
        assert!(filter_covers("order.*.created", "order.42.created"));
        assert!(!filter_covers("order.*.created", "order.*.*"));
        assert!(!filter_covers("order.42.created", "order.*.created"));
        assert!(!filter_covers("order.*.created", "order.>"));
        assert!(!filter_covers("order.>", "order"));
        assert!(!filter_covers("invoice.>", "order.*.created"));
        assert!(filter_matches("order.*.created", "order.1.created"));
        assert!(!filter_matches("order.*.created", "order.1.shipped"));
    }

    #[test]
    fn const_evaluation() {
        const OK: bool = filters_overlap("order.*.created", "order.>");
        const NAME: bool = is_name_token("order");
        const { assert!(OK && NAME) };
    }

    #[test]
    fn split() {
        assert_eq!(
            split_event_subject("order.42.created"),
            Some(("order", "42", "created"))
        );
        assert_eq!(split_event_subject("order.42"), None);
        assert_eq!(split_event_subject("order..created"), None);
        assert_eq!(split_event_subject("a.b.c.d"), None);
    }
}
