//! The wire format: CloudEvents 1.0, NATS protocol binding, binary mode.
//!
//! The body is the event's JSON; the CloudEvents attributes travel as headers (`ce-id`,
//! `ce-type`, ...), with `Nats-Msg-Id` set to `ce-id` so the server drops duplicates. A message
//! from another producer that has none of these headers is decoded from its subject and body.

use async_nats::HeaderMap;
use bytes::Bytes;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::{Error, ErrorKind};
use crate::event::EventSet;
use crate::subject::{split_event_subject, Subject};

/// Header names of the wire format.
pub mod headers {
    /// CloudEvents spec version; always `1.0`.
    pub const SPECVERSION: &str = "ce-specversion";
    /// Event id: a UUIDv7, unique per event.
    pub const ID: &str = "ce-id";
    /// The service that published the event.
    pub const SOURCE: &str = "ce-source";
    /// `{aggregate}.{event}.v{version}`.
    pub const TYPE: &str = "ce-type";
    /// The aggregate id.
    pub const SUBJECT: &str = "ce-subject";
    /// When the event was published (RFC 3339).
    pub const TIME: &str = "ce-time";
    /// The body's media type: `application/json`.
    pub const CONTENT_TYPE: &str = "content-type";
    /// The id of the event that started the chain this event belongs to.
    pub const CORRELATION_ID: &str = "ce-correlationid";
    /// The id of the event whose handler published this event.
    pub const CAUSATION_ID: &str = "ce-causationid";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    /// JetStream's de-duplication id; equal to `ce-id`.
    pub const MSG_ID: &str = "Nats-Msg-Id";
    /// Marks a republished dead letter with `{original stream}:{original sequence}`: a second
    /// copy of an event already in its aggregate's history, which reads skip (they count it in
    /// the versions, as the server does for an append's expected version).
    pub const REPUBLISHED_FROM: &str = "eventbus-republished-from";
}

/// The CloudEvents spec version written.
pub(crate) const SPEC_VERSION: &str = "1.0";
/// The content type of event bodies.
pub(crate) const JSON: &str = "application/json";

/// Options of one encoding: who publishes, and the chain the event belongs to.
#[derive(Debug, Clone, Default)]
pub struct EncodeOptions<'a> {
    /// `ce-source`: the publishing service.
    pub source: &'a str,
    /// The event id; a new UUIDv7 when `None`.
    pub id: Option<&'a str>,
    /// The correlation id; the event's own id when `None`.
    pub correlation_id: Option<&'a str>,
    /// The causation id, if the event was published while handling another.
    pub causation_id: Option<&'a str>,
    /// W3C `traceparent`, if a trace is active.
    pub traceparent: Option<&'a str>,
    /// Extra headers of the caller's, copied as they are (they may not override the
    /// CloudEvents ones).
    pub extra_headers: Option<&'a HeaderMap>,
}

/// An encoded event, ready to publish.
#[derive(Debug, Clone)]
pub struct EncodedEvent {
    /// Where it goes.
    pub subject: Subject,
    /// The event id (`ce-id` and `Nats-Msg-Id`).
    pub id: String,
    /// When it was published (`ce-time`).
    pub time: OffsetDateTime,
    /// Headers.
    pub headers: HeaderMap,
    /// The JSON body.
    pub payload: Bytes,
}

/// A new event id: a UUIDv7 (time-ordered).
pub fn new_event_id() -> String {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::now_v7()
        .hyphenated()
        .encode_lower(&mut buf)
        .to_owned()
}

/// `ce-time`: RFC 3339 in UTC with nanoseconds, e.g. `2026-11-26T09:30:00.123456789Z`.
///
/// Written digit by digit: it is on the path of every publish, where the general formatter
/// of `time` costs more than the rest of the headers together.
pub(crate) fn format_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let year = t.year();
    if !(0..=9999).contains(&year) {
        // RFC 3339 has four-digit years only; such a clock is wrong, but say what it says.
        return t.format(&Rfc3339).unwrap_or_default();
    }
    let mut out = [0u8; 30];
    let mut put = |at: usize, width: usize, mut n: u32| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, year as u32);
    put(5, 2, u32::from(u8::from(t.month())));
    put(8, 2, u32::from(t.day()));
    put(11, 2, u32::from(t.hour()));
    put(14, 2, u32::from(t.minute()));
    put(17, 2, u32::from(t.second()));
    put(20, 9, t.nanosecond());
    for (at, c) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (29, b'Z'),
    ] {
        out[at] = c;
    }
    // Only ASCII digits and separators were written.
    String::from_utf8(out.to_vec()).unwrap_or_default()
}

/// Refuses a header value that NATS cannot carry (`\r` or `\n`).
fn check_value(name: &str, value: &str) -> Result<(), Error> {
    if value.contains(['\r', '\n']) {
        return Err(Error::new(
            ErrorKind::Encode,
            format!("invalid value of header `{name}`: it contains a line break"),
        ));
    }
    Ok(())
}

/// The header names eventbus writes, built once: inserting a `HeaderName` made from a static
/// string allocates nothing, where a `&str` name is copied into each message's map.
mod names {
    use super::headers;
    use async_nats::header::HeaderName;

    pub(super) static SPECVERSION: HeaderName = HeaderName::from_static(headers::SPECVERSION);
    pub(super) static ID: HeaderName = HeaderName::from_static(headers::ID);
    pub(super) static MSG_ID: HeaderName = HeaderName::from_static(headers::MSG_ID);
    pub(super) static SOURCE: HeaderName = HeaderName::from_static(headers::SOURCE);
    pub(super) static TYPE: HeaderName = HeaderName::from_static(headers::TYPE);
    pub(super) static SUBJECT: HeaderName = HeaderName::from_static(headers::SUBJECT);
    pub(super) static TIME: HeaderName = HeaderName::from_static(headers::TIME);
    pub(super) static CONTENT_TYPE: HeaderName = HeaderName::from_static(headers::CONTENT_TYPE);
    pub(super) static CORRELATION_ID: HeaderName = HeaderName::from_static(headers::CORRELATION_ID);
    pub(super) static CAUSATION_ID: HeaderName = HeaderName::from_static(headers::CAUSATION_ID);
    pub(super) static TRACEPARENT: HeaderName = HeaderName::from_static(headers::TRACEPARENT);
}

/// An empty header map with room for every header eventbus writes.
///
/// `HeaderMap` has no `with_capacity`: a map filled header by header is grown and re-hashed
/// three times, on the path of every publish. A map deserialized from entries that all have
/// one name keeps one entry in a table sized for all of them; a clone of it keeps the size.
/// Its one entry, `ce-specversion`, is replaced by the encoder like the others.
fn sized_header_map() -> HeaderMap {
    static SIZED: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(|| {
        let entry = format!("\"{}\":[\"{SPEC_VERSION}\"]", headers::SPECVERSION);
        let json = format!("{{{}}}", vec![entry; 14].join(","));
        // Should a release of async-nats read maps another way, this is a plain map.
        serde_json::from_str(&json).unwrap_or_default()
    });
    SIZED.clone()
}

/// A copy of `h` without the headers whose names `drop` picks.
pub(crate) fn headers_without(h: &HeaderMap, drop: impl Fn(&str) -> bool) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, values) in h.iter() {
        if drop(name.as_ref()) {
            continue;
        }
        for v in values {
            out.append(name.clone(), v.clone());
        }
    }
    out
}

/// Encodes an event in binary mode.
pub fn encode<E: EventSet>(event: &E, opts: &EncodeOptions<'_>) -> Result<EncodedEvent, Error> {
    encode_at(event, opts, None)
}

/// Encodes an event with `ce-time` = `time` (now when `None`): a publish that is sent again
/// is encoded again with its first id and time, so that the copy the server keeps is the same
/// whichever attempt it came from.
pub(crate) fn encode_at<E: EventSet>(
    event: &E,
    opts: &EncodeOptions<'_>,
    time: Option<OffsetDateTime>,
) -> Result<EncodedEvent, Error> {
    let subject = event.event_subject()?;
    let d = event.descriptor();
    let payload = event.to_json().map_err(|e| {
        Error::new(
            ErrorKind::Encode,
            format!("cannot serialize `{}` event `{}`", d.aggregate, d.name),
        )
        .with_source(e)
    })?;
    let id = match opts.id {
        Some(id) => {
            check_value(headers::ID, id)?;
            id.to_owned()
        }
        None => new_event_id(),
    };
    check_value(headers::SOURCE, opts.source)?;
    let correlation_id = opts.correlation_id.unwrap_or(&id);
    check_value(headers::CORRELATION_ID, correlation_id)?;
    let mut h = sized_header_map();
    if let Some(extra) = opts.extra_headers {
        for (name, values) in extra.iter() {
            let n: &str = name.as_ref();
            if n.starts_with("ce-") || n == headers::MSG_ID || n == headers::CONTENT_TYPE {
                return Err(Error::new(
                    ErrorKind::Encode,
                    format!(
                        "header `{n}` is set by eventbus and cannot be given as an extra header"
                    ),
                ));
            }
            for v in values {
                h.append(name.clone(), v.clone());
            }
        }
    }
    let time = time.unwrap_or_else(OffsetDateTime::now_utc);
    h.insert(names::SPECVERSION.clone(), SPEC_VERSION);
    h.insert(names::ID.clone(), id.as_str());
    h.insert(names::MSG_ID.clone(), id.as_str());
    h.insert(names::SOURCE.clone(), opts.source);
    h.insert(names::TYPE.clone(), d.cloud_event_type());
    // Checked by `event_subject`: one subject token, so no line break.
    h.insert(names::SUBJECT.clone(), event.id().as_ref());
    h.insert(names::TIME.clone(), format_time(time));
    h.insert(names::CONTENT_TYPE.clone(), JSON);
    h.insert(names::CORRELATION_ID.clone(), correlation_id);
    if let Some(c) = opts.causation_id {
        check_value(headers::CAUSATION_ID, c)?;
        h.insert(names::CAUSATION_ID.clone(), c);
    }
    if let Some(t) = opts.traceparent {
        check_value(headers::TRACEPARENT, t)?;
        h.insert(names::TRACEPARENT.clone(), t);
    }
    Ok(EncodedEvent {
        subject,
        id,
        time,
        headers: h,
        payload: Bytes::from(payload),
    })
}

/// What is known of a received event besides its body.
#[derive(Debug, Clone)]
pub struct Metadata {
    /// The event id (`ce-id`; for a message of another producer, its `Nats-Msg-Id`, else
    /// `{stream}:{sequence}`).
    pub id: String,
    /// The publishing service, if known.
    pub source: Option<String>,
    /// The aggregate type.
    pub aggregate_type: String,
    /// The aggregate id.
    pub aggregate_id: String,
    /// The event type (the subject's last token).
    pub event_type: String,
    /// The schema version, if the producer gave one.
    pub version: Option<u32>,
    /// The NATS subject.
    pub subject: String,
    /// When the event was published, if known.
    pub time: Option<OffsetDateTime>,
    /// The correlation id, if any.
    pub correlation_id: Option<String>,
    /// The causation id, if any.
    pub causation_id: Option<String>,
    /// W3C trace context, if any.
    pub traceparent: Option<String>,
    /// All headers as received.
    pub headers: HeaderMap,
}

impl Metadata {
    /// Reads the metadata of a message from its subject and headers.
    ///
    /// Binary-mode CloudEvents headers are used when present; otherwise the subject's tokens
    /// give the aggregate, its id and the event type. A `ce-type` that is not
    /// `{aggregate}.{event}.v{n}`, a non-JSON content type, or a subject that is not
    /// `{aggregate}.{id}.{event}` is a [`ErrorKind::Decode`] error.
    pub fn from_message(subject: &str, headers: Option<&HeaderMap>) -> Result<Metadata, Error> {
        Self::from_headers(subject, headers.cloned().unwrap_or_default())
    }

    /// Like [`Metadata::from_message`], with the headers given by value: they become
    /// [`Metadata::headers`] without a copy.
    pub fn from_headers(subject: &str, headers: HeaderMap) -> Result<Metadata, Error> {
        Self::from_owned(subject, headers).map_err(|failed| failed.0)
    }

    /// Like [`Metadata::from_headers`], giving the headers back with the error.
    pub(crate) fn from_owned(
        subject: &str,
        headers: HeaderMap,
    ) -> Result<Metadata, Box<(Error, HeaderMap)>> {
        match Self::parsed(subject, &headers) {
            Ok(mut m) => {
                m.headers = headers;
                Ok(m)
            }
            Err(e) => Err(Box::new((e, headers))),
        }
    }

    /// Everything but the headers themselves (left empty).
    fn parsed(subject: &str, h: &HeaderMap) -> Result<Metadata, Error> {
        let get = |n: &str| h.get(n).map(|v| v.as_str().to_owned());
        let (sub_aggregate, sub_id, sub_event) = split_event_subject(subject).ok_or_else(|| {
            Error::new(
                ErrorKind::Decode,
                format!(
                    "subject `{subject}` is not an event subject `{{aggregate}}.{{id}}.{{event}}`"
                ),
            )
        })?;
        if let Some(ct) = h.get(headers::CONTENT_TYPE) {
            let ct = ct.as_str();
            let base = ct.split(';').next().unwrap_or("").trim();
            if !(base == JSON || base.ends_with("+json")) {
                return Err(Error::new(
                    ErrorKind::Decode,
                    format!("message on `{subject}` has content type `{ct}`, not JSON"),
                ));
            }
        }
        let (aggregate_type, event_type, version) = match h.get(headers::TYPE) {
            Some(t) => {
                let (aggregate, name, version) = parse_cloud_event_type(t.as_str()).ok_or_else(|| {
                    Error::new(
                        ErrorKind::Decode,
                        format!(
                            "message on `{subject}` has `ce-type` {:?}, not `{{aggregate}}.{{event}}.v{{version}}`",
                            t.as_str()
                        ),
                    )
                })?;
                (aggregate.to_owned(), name.to_owned(), Some(version))
            }
            None => (sub_aggregate.to_owned(), sub_event.to_owned(), None),
        };
        let time = match h.get(headers::TIME) {
            Some(t) => OffsetDateTime::parse(t.as_str(), &Rfc3339).ok(),
            None => None,
        };
        Ok(Metadata {
            id: get(headers::ID)
                .or_else(|| get(headers::MSG_ID))
                .unwrap_or_default(),
            source: get(headers::SOURCE),
            aggregate_type,
            aggregate_id: get(headers::SUBJECT).unwrap_or_else(|| sub_id.to_owned()),
            event_type,
            version,
            subject: subject.to_owned(),
            time,
            correlation_id: get(headers::CORRELATION_ID),
            causation_id: get(headers::CAUSATION_ID),
            traceparent: get(headers::TRACEPARENT),
            headers: HeaderMap::new(),
        })
    }
}

/// Splits `{aggregate}.{event}.v{version}`.
pub(crate) fn parse_cloud_event_type(t: &str) -> Option<(&str, &str, u32)> {
    let (rest, v) = t.rsplit_once('.')?;
    let version = v.strip_prefix('v')?.parse().ok()?;
    let (aggregate, name) = rest.split_once('.')?;
    if aggregate.is_empty() || name.is_empty() || name.contains('.') {
        return None;
    }
    Some((aggregate, name, version))
}

/// Decodes the body of a received event into a value of the set `E`.
pub fn decode<E: EventSet>(meta: &Metadata, payload: &[u8]) -> Result<E, Error> {
    if meta.aggregate_type != E::AGGREGATE {
        return Err(Error::new(
            ErrorKind::UnknownEventType,
            format!(
                "event `{}.{}` on `{}` is not of aggregate `{}`",
                meta.aggregate_type,
                meta.event_type,
                meta.subject,
                E::AGGREGATE
            ),
        ));
    }
    E::from_json(&meta.event_type, payload).map_err(Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_is_rfc3339_with_nanoseconds() {
        let parse = |s: &str| OffsetDateTime::parse(s, &Rfc3339).unwrap();
        for text in [
            "2026-11-26T09:30:00.123456789Z",
            "2026-01-02T03:04:05.000000000Z",
            "1999-12-31T23:59:59.999999999Z",
            "0001-01-01T00:00:00.000000001Z",
            "9999-12-31T23:59:59.000000000Z",
        ] {
            assert_eq!(format_time(parse(text)), text);
        }
        // Another offset is written in UTC.
        let t = parse("2026-11-26T10:30:00.5+01:00");
        assert_eq!(format_time(t), "2026-11-26T09:30:00.500000000Z");
        // Now, through the parser the readers use.
        let now = OffsetDateTime::now_utc();
        assert_eq!(parse(&format_time(now)), now);
    }

    #[test]
    fn new_ids_are_hyphenated_v7_uuids() {
        let id = new_event_id();
        let parsed = uuid::Uuid::parse_str(&id).unwrap();
        assert_eq!(parsed.get_version_num(), 7);
        assert_eq!(parsed.hyphenated().to_string(), id);
    }

    #[test]
    fn the_sized_map_holds_one_header_that_encoding_replaces() {
        let h = sized_header_map();
        assert_eq!(h.len(), 1);
        assert_eq!(
            h.get(headers::SPECVERSION).map(|v| v.as_str()),
            Some(SPEC_VERSION)
        );
    }
}
