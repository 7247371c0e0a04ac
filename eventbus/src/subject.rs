//! Subjects: [`Subject`], the `{aggregate}.{id}.{event}` of one event, and the run-time checks
//! that name what is at fault. The syntax rules themselves are `rules.rs`, which the macros'
//! crate compiles too, so that the macros and the runtime apply the same ones.

use std::fmt;

use crate::error::{Error, ErrorKind};
use crate::rules;

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

/// Checks an aggregate id: it must be one non-empty subject token with no wildcard, no `.`, no
/// white space and no control character (as Unicode defines them; the rule is
/// `rules::aggregate_id_problem`). The error names the aggregate type and the id.
pub(crate) fn check_aggregate_id(aggregate_type: &str, id: &str) -> Result<(), Error> {
    match rules::aggregate_id_problem(id) {
        None => Ok(()),
        Some(why) => Err(Error::new(
            ErrorKind::InvalidAggregateId,
            format!("invalid aggregate id {id:?} for aggregate `{aggregate_type}`: {why}"),
        )),
    }
}

/// The tokens of an event subject: `(aggregate_type, aggregate_id, event_type)`, if it has
/// exactly three non-empty tokens.
pub(crate) fn split_event_subject(subject: &str) -> Option<(&str, &str, &str)> {
    let mut it = subject.split('.');
    let (a, id, e) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || a.is_empty() || id.is_empty() || e.is_empty() {
        return None;
    }
    Some((a, id, e))
}

#[cfg(test)]
mod tests {
    // The rules themselves are tested in `crate::rules`; these test what this module adds.
    use super::*;

    #[test]
    fn aggregate_ids() {
        for ok in [
            "42",
            "550e8400-e29b-41d4-a716-446655440000",
            "ünïcode",
            "a:b",
        ] {
            assert_eq!(
                Subject::for_event("order", ok, "created").unwrap().as_str(),
                format!("order.{ok}.created")
            );
        }
        for bad in [
            "",
            "a.b",
            "*",
            "a*",
            ">",
            "a>",
            "a b",
            " ",
            "a\tb",
            "a\nb",
            "\0",
            "a\u{a0}b",
            "a\u{3000}b",
            "a\u{2028}b",
            "a\u{85}b",
            "a\u{80}b",
        ] {
            let err = Subject::for_event("order", bad, "created").unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidAggregateId, "{bad:?}");
            let msg = err.to_string();
            assert!(msg.contains(&format!("{bad:?}")), "{msg} names {bad:?}");
            assert!(msg.contains("order"), "{msg}");
        }
        assert!(check_aggregate_id("order", "a\u{a0}b")
            .unwrap_err()
            .to_string()
            .ends_with("it contains white space"));
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
