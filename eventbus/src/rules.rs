//! The syntax rules of subjects and durations, in one place for the macros and the runtime.
//!
//! This file is compiled by two crates: `eventbus` (`mod rules;`) and `eventbus-derive`, which
//! cannot depend on `eventbus` (that crate depends on it) and includes this file by path. So it
//! holds pure functions only: no dependency but `core` and `std`, no `crate::` or `super::`
//! path, and `pub(crate)` items (`eventbus` wraps the ones it makes public in
//! `eventbus::subject`).
//!
//! The subject rules are `const fn`s: the runtime runs them at start-up and on publish, the
//! macros at expansion time, and the code the macros generate in `const` assertions, at the
//! user's compile time. White space and control characters are those of Unicode: every
//! `White_Space` code point and every `Cc` (general category "control") code point.

use std::fmt;
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Characters

/// Whether `c` is Unicode white space (the `White_Space` property, as [`char::is_whitespace`]).
const fn is_white_space(c: char) -> bool {
    matches!(
        c,
        '\u{9}'..='\u{d}'
            | ' '
            | '\u{85}'
            | '\u{a0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200a}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202f}'
            | '\u{205f}'
            | '\u{3000}'
    )
}

/// Whether `c` is a control character (C0, DEL and C1, as [`char::is_control`]).
const fn is_control(c: char) -> bool {
    matches!(c, '\0'..='\u{1f}' | '\u{7f}'..='\u{9f}')
}

/// The character that starts at byte `i` of the UTF-8 text `b` (a `str`'s bytes, `i` on a
/// character boundary), and its length in bytes.
const fn char_at(b: &[u8], i: usize) -> (char, usize) {
    let b0 = b[i] as u32;
    let (code, len) = if b0 < 0x80 {
        (b0, 1)
    } else if b0 < 0xe0 {
        (((b0 & 0x1f) << 6) | (b[i + 1] as u32 & 0x3f), 2)
    } else if b0 < 0xf0 {
        (
            ((b0 & 0x0f) << 12) | ((b[i + 1] as u32 & 0x3f) << 6) | (b[i + 2] as u32 & 0x3f),
            3,
        )
    } else {
        (
            ((b0 & 0x07) << 18)
                | ((b[i + 1] as u32 & 0x3f) << 12)
                | ((b[i + 2] as u32 & 0x3f) << 6)
                | (b[i + 3] as u32 & 0x3f),
            4,
        )
    };
    match char::from_u32(code) {
        Some(c) => (c, len),
        // Not reached: the bytes of a `str` are valid UTF-8.
        None => (char::REPLACEMENT_CHARACTER, len),
    }
}

// ---------------------------------------------------------------------------------------------
// Names and aggregate ids

/// Why a text is not a name token (an aggregate type, an event type, a consumer or service
/// name): names are one non-empty subject token of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameProblem {
    /// The name is empty.
    Empty,
    /// It contains `.`.
    Dot,
    /// It contains `*` or `>`.
    Wildcard(char),
    /// It contains white space.
    WhiteSpace,
    /// It contains this character, which is none of the above and not allowed.
    Char(char),
}

impl fmt::Display for NameProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameProblem::Empty => f.write_str("it is empty"),
            NameProblem::Dot => f.write_str("it contains `.`, which separates subject tokens"),
            NameProblem::Wildcard(c) => write!(f, "it contains `{c}`, a subject wildcard"),
            NameProblem::WhiteSpace => f.write_str("it contains white space"),
            NameProblem::Char(c) => write!(f, "it contains {c:?}"),
        }
    }
}

/// Why `s` is not a name token, if it is not: the first character that is not one of
/// `[A-Za-z0-9_-]`.
pub(crate) const fn name_problem(s: &str) -> Option<NameProblem> {
    let b = s.as_bytes();
    if b.is_empty() {
        return Some(NameProblem::Empty);
    }
    let mut i = 0;
    while i < b.len() {
        let (c, len) = char_at(b, i);
        match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '_' | '-' => {}
            '.' => return Some(NameProblem::Dot),
            '*' | '>' => return Some(NameProblem::Wildcard(c)),
            c if is_white_space(c) => return Some(NameProblem::WhiteSpace),
            c => return Some(NameProblem::Char(c)),
        }
        i += len;
    }
    None
}

/// Whether `s` is one subject token made of `[A-Za-z0-9_-]` only.
pub(crate) const fn is_name_token(s: &str) -> bool {
    name_problem(s).is_none()
}

/// The longest aggregate id, in bytes. A subject travels on the publish's control line, which
/// nats-server limits to 4 KiB (`max_control_line`) with the reply inbox and the sizes: a longer
/// line closes the connection, and the event could never be stored. 1 KiB leaves room for the
/// aggregate and event names.
#[allow(dead_code)] // used by the runtime; the derive crate compiles it too
pub(crate) const MAX_AGGREGATE_ID_BYTES: usize = 1024;

/// Why an aggregate id is refused, if it is: empty, longer than [`MAX_AGGREGATE_ID_BYTES`], or
/// holding `.`, `*`, `>`, white space or a control character.
#[allow(dead_code)] // used by the runtime; the derive crate compiles it too
pub(crate) const fn aggregate_id_problem(id: &str) -> Option<&'static str> {
    let b = id.as_bytes();
    if b.is_empty() {
        return Some("it is empty");
    }
    if b.len() > MAX_AGGREGATE_ID_BYTES {
        return Some(
            "it is longer than 1024 bytes (with the rest of the subject it must fit the server's 4 KiB control line)",
        );
    }
    let mut i = 0;
    while i < b.len() {
        let (c, len) = char_at(b, i);
        match c {
            '.' => return Some("it contains `.`, which separates subject tokens"),
            '*' => return Some("it contains `*`, a subject wildcard"),
            '>' => return Some("it contains `>`, a subject wildcard"),
            c if is_white_space(c) => return Some("it contains white space"),
            c if is_control(c) => return Some("it contains a control character"),
            _ => {}
        }
        i += len;
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Subject filters

/// Why a subject filter is malformed, if it is: empty, white space or a control character,
/// an empty token, `*` or `>` inside a token, or `>` before the last token.
pub(crate) const fn filter_problem(filter: &str) -> Option<&'static str> {
    let b = filter.as_bytes();
    if b.is_empty() {
        return Some("the subject is empty");
    }
    let mut white_space = false;
    let mut control = false;
    let mut i = 0;
    while i < b.len() {
        let (c, len) = char_at(b, i);
        white_space |= is_white_space(c);
        control |= is_control(c);
        i += len;
    }
    if white_space {
        return Some("the subject contains white space");
    }
    if control {
        return Some("the subject contains a control character");
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

/// The end of the token that starts at byte `start`: the next `.`, or the end.
const fn token_end(b: &[u8], start: usize) -> usize {
    let mut i = start;
    while i < b.len() && b[i] != b'.' {
        i += 1;
    }
    i
}

/// Whether the token `b[start..end]` is the one byte `c`.
const fn token_is(b: &[u8], start: usize, end: usize, c: u8) -> bool {
    end == start + 1 && b[start] == c
}

/// Whether the tokens `a[a0..a1]` and `b[b0..b1]` are equal.
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
#[allow(dead_code)] // used by the runtime and the generated code; the derive crate compiles it too
pub(crate) const fn filters_overlap(a: &str, b: &str) -> bool {
    compare(a.as_bytes(), b.as_bytes(), false)
}

/// Whether every subject that `inner` matches is also matched by `outer` (`outer` covers
/// `inner`), as a stream's subjects must cover a consumer's filter.
#[allow(dead_code)] // used by the runtime and the generated code; the derive crate compiles it too
pub(crate) const fn filter_covers(outer: &str, inner: &str) -> bool {
    compare(outer.as_bytes(), inner.as_bytes(), true)
}

/// Walks two filters token by token: whether `a` covers `b` (`cover`), or whether they
/// overlap. A `>` of `a` matches the rest of `b`; a `>` of `b` matches the rest of `a` only
/// for an overlap (`a` then does not cover all of it). A `*` of `a` matches any token; a `*`
/// of `b` matches any token of `a` only for an overlap.
#[allow(dead_code)] // used by the runtime and the generated code; the derive crate compiles it too
const fn compare(a: &[u8], b: &[u8], cover: bool) -> bool {
    let (mut pa, mut pb) = (0, 0);
    loop {
        let a_done = pa > a.len();
        let b_done = pb > b.len();
        if a_done || b_done {
            return a_done && b_done;
        }
        let ea = token_end(a, pa);
        let eb = token_end(b, pb);
        if token_is(a, pa, ea, b'>') {
            return true;
        }
        if token_is(b, pb, eb, b'>') {
            return !cover;
        }
        let a_star = token_is(a, pa, ea, b'*');
        let b_star = token_is(b, pb, eb, b'*');
        let matched = if cover {
            a_star || (!b_star && tokens_equal(a, pa, ea, b, pb, eb))
        } else {
            a_star || b_star || tokens_equal(a, pa, ea, b, pb, eb)
        };
        if !matched {
            return false;
        }
        pa = ea + 1;
        pb = eb + 1;
    }
}

// ---------------------------------------------------------------------------------------------
// Durations

/// Parses a duration written as text: one or more `<digits><unit>` parts, units `h`, `m`, `s`
/// and `ms`, each unit at most once and from the largest to the smallest (`"500ms"`, `"30s"`,
/// `"1m30s"`, `"1h2m3s4ms"`). No sign, no decimals, no white space. Zero is a duration here;
/// callers that need more refuse it themselves. The error is a sentence that quotes the text.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    const EXPECTED: &str =
        "expected a number followed by a unit (`ms`, `s`, `m` or `h`), e.g. \"500ms\", \"30s\" or \"1m30s\"";
    if text.is_empty() {
        return Err(format!("empty duration: {EXPECTED}"));
    }
    let mut rest = text;
    // Counted in milliseconds: the longest duration is `u64::MAX` ms (some 584 million years).
    let mut total: u64 = 0;
    // The rank of the last unit: parts go from hours down to milliseconds, each once.
    let mut last_rank = usize::MAX;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("invalid duration {text:?}: {EXPECTED}"));
        }
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let (rank, factor) = match unit {
            "h" => (0, 3_600_000),
            "m" => (1, 60_000),
            "s" => (2, 1_000),
            "ms" => (3, 1),
            "" => {
                return Err(format!(
                    "invalid duration {text:?}: `{number}` has no unit; {EXPECTED}"
                ))
            }
            _ => {
                return Err(format!(
                    "invalid duration {text:?}: unknown unit `{unit}`; {EXPECTED}"
                ))
            }
        };
        if last_rank != usize::MAX && rank <= last_rank {
            return Err(format!(
                "invalid duration {text:?}: give each unit once, from the largest to the smallest, e.g. \"1h30m\""
            ));
        }
        last_rank = rank;
        let part = number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(factor))
            .and_then(|ms| total.checked_add(ms));
        total = part.ok_or_else(|| format!("duration {text:?} is too long"))?;
        rest = tail;
    }
    Ok(Duration::from_millis(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregate_ids_have_a_length_limit() {
        assert_eq!(
            aggregate_id_problem(&"a".repeat(MAX_AGGREGATE_ID_BYTES)),
            None
        );
        let long = aggregate_id_problem(&"a".repeat(MAX_AGGREGATE_ID_BYTES + 1)).unwrap();
        assert!(long.contains("1024 bytes"), "{long}");
        // Bytes, not characters: 342 three-byte characters are 1026 bytes.
        assert!(aggregate_id_problem(&"€".repeat(342)).is_some());
    }

    #[test]
    fn characters_are_those_of_unicode() {
        let mut buf = [0; 4];
        for c in (0..=0x10ffff).filter_map(char::from_u32) {
            assert_eq!(is_white_space(c), c.is_whitespace(), "{c:?}");
            assert_eq!(is_control(c), c.is_control(), "{c:?}");
            let s = c.encode_utf8(&mut buf);
            assert_eq!(char_at(s.as_bytes(), 0), (c, s.len()), "{c:?}");
        }
    }

    #[test]
    fn name_tokens() {
        for ok in ["order", "Order_2", "a-b", "x", "0", "billing-bill_order2"] {
            assert_eq!(name_problem(ok), None, "{ok}");
            assert!(is_name_token(ok), "{ok}");
        }
        for (bad, why) in [
            ("", "it is empty"),
            ("a.b", "it contains `.`, which separates subject tokens"),
            ("*", "it contains `*`, a subject wildcard"),
            ("a>", "it contains `>`, a subject wildcard"),
            ("a b", "it contains white space"),
            ("a\t", "it contains white space"),
            ("a\u{a0}b", "it contains white space"),
            ("a\u{3000}", "it contains white space"),
            ("é", "it contains 'é'"),
            ("ü", "it contains 'ü'"),
            ("a/b", "it contains '/'"),
            ("a\u{7f}", "it contains '\\u{7f}'"),
        ] {
            let p = name_problem(bad).unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(p.to_string(), why, "{bad:?}");
            assert!(!is_name_token(bad), "{bad:?}");
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
            "日本",
            "a\u{200b}b", // zero width space: not White_Space, not a control
        ] {
            assert_eq!(aggregate_id_problem(ok), None, "{ok}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("a.b", "`.`"),
            ("*", "`*`"),
            ("a*", "`*`"),
            (">", "`>`"),
            ("a>", "`>`"),
            ("a b", "white space"),
            (" ", "white space"),
            ("a\tb", "white space"),
            ("a\nb", "white space"),
            ("a\u{a0}b", "white space"),
            ("a\u{3000}b", "white space"),
            ("a\u{2028}b", "white space"),
            ("a\u{85}b", "white space"),
            ("a\u{1680}", "white space"),
            ("\0", "control"),
            ("a\u{1b}", "control"),
            ("a\u{7f}", "control"),
            ("a\u{80}b", "control"),
            ("a\u{9f}b", "control"),
        ] {
            let p = aggregate_id_problem(bad).unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(p.contains(why), "{bad:?}: {p}");
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
            "ü.*",
            "日本.*.x",
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
            ("order.* .created", "white space"),
            ("order.\u{a0}", "white space"),
            ("order.\u{3000}.x", "white space"),
            ("order.\u{2028}", "white space"),
            ("order.\u{85}", "white space"),
            // White space and control characters are named before the tokens' problems.
            ("order..a b", "white space"),
            ("order.\u{7f}", "control"),
            ("order.\u{80}", "control"),
            ("order.\u{9f}.x", "control"),
            ("order..\u{0}", "control"),
        ] {
            let p = filter_problem(bad).unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(p.contains(why), "{bad:?}: {p}");
        }
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
        // A concrete subject is a filter without wildcards: covering it is matching it.
        assert!(filter_covers("order.*.created", "order.1.created"));
        assert!(!filter_covers("order.*.created", "order.1.shipped"));
    }

    #[test]
    fn const_evaluation() {
        const OVERLAP: bool = filters_overlap("order.*.created", "order.>");
        const COVERS: bool = filter_covers("order.>", "order.*.created");
        const NAME: bool = is_name_token("order");
        const NOT_NAME: bool = is_name_token("ordér");
        const FILTER_OK: bool = filter_problem("order.*.created").is_none();
        const FILTER_WS: bool = filter_problem("order.\u{3000}").is_some();
        const ID_WS: bool = aggregate_id_problem("a\u{a0}b").is_some();
        const {
            assert!(OVERLAP && COVERS && NAME && !NOT_NAME);
            assert!(FILTER_OK && FILTER_WS && ID_WS);
        };
    }

    #[test]
    fn durations() {
        for (text, ms) in [
            ("0s", 0),
            ("1ms", 1),
            ("500ms", 500),
            ("30s", 30_000),
            ("2m", 120_000),
            ("1h", 3_600_000),
            ("2h", 7_200_000),
            ("1m30s", 90_000),
            ("1h2m3s4ms", 3_723_004),
            ("0m5s", 5_000),
            ("007s", 7_000),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(ms)),
                "{text}"
            );
        }
    }

    #[test]
    fn invalid_durations() {
        for (text, why) in [
            ("", "empty duration"),
            ("30", "has no unit"),
            ("5", "has no unit"),
            ("s", "expected a number"),
            ("1.5s", "unknown unit `.`"),
            ("30 s", "unknown unit ` s`"),
            (" 30s", "expected a number"),
            ("30sec", "unknown unit `sec`"),
            ("5x", "unknown unit `x`"),
            ("1d", "unknown unit `d`"),
            ("-1s", "expected a number"),
            ("+1s", "expected a number"),
            ("30s1m", "from the largest"),
            ("1s1s", "from the largest"),
            ("0ms0s", "from the largest"),
            ("99999999999999999999s", "too long"),
            ("5124095576030432h", "too long"),
        ] {
            let err = parse_duration(text).expect_err(text);
            assert!(err.contains(why), "{text:?}: {err}");
            assert!(
                err.contains(&format!("{text:?}")) || text.is_empty(),
                "{err}"
            );
        }
        assert_eq!(
            parse_duration("30").unwrap_err(),
            "invalid duration \"30\": `30` has no unit; expected a number followed by a unit (`ms`, `s`, `m` or `h`), e.g. \"500ms\", \"30s\" or \"1m30s\""
        );
    }
}
