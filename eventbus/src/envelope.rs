//! The wire format: CloudEvents 1.0 on NATS.
//!
//! Written in binary mode: the body is the event's JSON; the CloudEvents attributes travel as
//! headers (`ce-id`, `ce-type`, ...), percent-encoded where the binding asks for it, with
//! `Nats-Msg-Id` set to `ce-id` so the server drops duplicates.
//!
//! Read liberally: header names in any case, values percent-decoded, `ce-datacontenttype` as
//! the content type when there is no `content-type`; a structured-mode CloudEvent
//! (`application/cloudevents+json`, the released NATS binding) has its attributes read from the
//! body and its `data` (or `data_base64`) decoded as the event, never the envelope itself. A
//! message of another producer that has none of these headers is decoded from its subject and
//! body. The aggregate id always comes from the subject; `ce-subject` is metadata only.

use std::borrow::Cow;

use async_nats::HeaderMap;
use bytes::Bytes;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::{Error, ErrorKind};
use crate::event::{DecodeError, EventDescriptor, EventSet, UpcastError};
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
    /// The aggregate id, as written by eventbus; read as metadata only (the aggregate id of a
    /// received event comes from its NATS subject).
    pub const SUBJECT: &str = "ce-subject";
    /// When the event was published (RFC 3339).
    pub const TIME: &str = "ce-time";
    /// The body's media type: `application/json` in binary mode, `application/cloudevents+json`
    /// in structured mode.
    pub const CONTENT_TYPE: &str = "content-type";
    /// The body's media type as a CloudEvents attribute; read when `content-type` is absent.
    pub const DATACONTENTTYPE: &str = "ce-datacontenttype";
    /// The id of the event that started the chain this event belongs to.
    pub const CORRELATION_ID: &str = "ce-correlationid";
    /// The id of the event whose handler published this event.
    pub const CAUSATION_ID: &str = "ce-causationid";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace state, vendor data that goes with `traceparent`.
    pub const TRACESTATE: &str = "tracestate";
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
/// The content type of a structured-mode CloudEvent in the JSON event format.
pub(crate) const STRUCTURED_JSON: &str = "application/cloudevents+json";
/// The content type of a batch of CloudEvents, which is not read.
const BATCH_JSON: &str = "application/cloudevents-batch+json";

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
    /// W3C `tracestate`, with the `traceparent`.
    pub tracestate: Option<&'a str>,
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
    pub(super) static TRACESTATE: HeaderName = HeaderName::from_static(headers::TRACESTATE);
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
    let body = Body::of(event)?;
    let (id, time, headers) = body.headers(opts, time)?;
    Ok(EncodedEvent {
        subject: body.subject,
        id,
        time,
        headers,
        payload: body.payload,
    })
}

/// What an event's message is made of besides its headers: made from the event once, it
/// makes the headers, again if need be, without the event (`publish_all` off the runtime's
/// worker threads hands it to a task of the runtime).
#[derive(Debug, Clone)]
pub(crate) struct Body {
    /// Where it goes: `{aggregate}.{id}.{event}`.
    pub(crate) subject: Subject,
    /// Its type.
    pub(crate) descriptor: &'static EventDescriptor,
    /// The JSON body.
    pub(crate) payload: Bytes,
}

impl Body {
    /// The subject and body of `event`.
    pub(crate) fn of<E: EventSet>(event: &E) -> Result<Body, Error> {
        let subject = event.event_subject()?;
        let d = event.descriptor();
        let payload = event.to_json().map_err(|e| {
            Error::new(
                ErrorKind::Encode,
                format!("cannot serialize `{}` event `{}`", d.aggregate, d.name),
            )
            .with_source(e)
        })?;
        Ok(Body {
            subject,
            descriptor: d,
            payload: Bytes::from(payload),
        })
    }

    /// The aggregate id: the subject's middle, between the aggregate and the event type (it
    /// was checked to be one token when the subject was made).
    fn aggregate_id(&self) -> &str {
        let s = self.subject.as_str();
        let (a, e) = (self.descriptor.aggregate.len(), self.descriptor.name.len());
        s.get(a + 1..s.len().saturating_sub(e + 1)).unwrap_or(s)
    }

    /// The event's id, its `ce-time` (`time`, or now) and its headers.
    pub(crate) fn headers(
        &self,
        opts: &EncodeOptions<'_>,
        time: Option<OffsetDateTime>,
    ) -> Result<(String, OffsetDateTime, HeaderMap), Error> {
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
                // Compared as readers compare them: in any case.
                if ce_attribute(n).is_some()
                    || n.eq_ignore_ascii_case(headers::MSG_ID)
                    || n.eq_ignore_ascii_case(headers::CONTENT_TYPE)
                {
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
        // `ce-*` values are percent-encoded as the binding asks (`Nats-Msg-Id` is NATS's own
        // header and stays as it is); a value with nothing to encode is not copied.
        if let Cow::Owned(encoded) = percent_encode(&id) {
            h.insert(names::ID.clone(), encoded);
        }
        h.insert(names::SOURCE.clone(), percent_encode(opts.source).as_ref());
        h.insert(names::TYPE.clone(), self.descriptor.cloud_event_type());
        // Checked by `event_subject`: one subject token, so no line break.
        h.insert(
            names::SUBJECT.clone(),
            percent_encode(self.aggregate_id()).as_ref(),
        );
        h.insert(names::TIME.clone(), format_time(time));
        h.insert(names::CONTENT_TYPE.clone(), JSON);
        h.insert(
            names::CORRELATION_ID.clone(),
            percent_encode(correlation_id).as_ref(),
        );
        if let Some(c) = opts.causation_id {
            check_value(headers::CAUSATION_ID, c)?;
            h.insert(names::CAUSATION_ID.clone(), percent_encode(c).as_ref());
        }
        if let Some(t) = opts.traceparent {
            check_value(headers::TRACEPARENT, t)?;
            h.insert(names::TRACEPARENT.clone(), t);
            if let Some(state) = opts.tracestate {
                check_value(headers::TRACESTATE, state)?;
                h.insert(names::TRACESTATE.clone(), state);
            }
        }
        Ok((id, time, h))
    }
}

/// How a received message carried its event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ContentMode {
    /// CloudEvents binary mode: the attributes are headers, the body is the event.
    Binary,
    /// CloudEvents structured mode: the body is the whole CloudEvent (`application/cloudevents+json`),
    /// whose `data` is the event.
    Structured,
    /// No CloudEvents attributes: a plain message of another producer, decoded from its subject
    /// and body.
    Plain,
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
    /// The aggregate id: always the subject's second token.
    pub aggregate_id: String,
    /// The event type (from `ce-type` when it is eventbus's `{aggregate}.{event}[.v{n}]`, else
    /// the subject's last token).
    pub event_type: String,
    /// The schema version, if the producer gave one.
    pub version: Option<u32>,
    /// The `ce-type` as received, if any.
    pub cloud_type: Option<String>,
    /// The `ce-subject` as received, if any: metadata only, never the aggregate id.
    pub cloud_subject: Option<String>,
    /// How the event was carried.
    pub mode: ContentMode,
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
    /// In structured mode, the event's body taken from the CloudEvent's `data`.
    data: Option<Bytes>,
}

/// The attributes of a received CloudEvent, from headers (binary mode) or from the body
/// (structured mode), decoded.
#[derive(Debug, Default, serde::Deserialize)]
struct Attributes {
    specversion: Option<String>,
    id: Option<String>,
    source: Option<String>,
    #[serde(rename = "type")]
    ty: Option<String>,
    subject: Option<String>,
    time: Option<String>,
    datacontenttype: Option<String>,
    correlationid: Option<String>,
    causationid: Option<String>,
    traceparent: Option<String>,
    /// Structured mode only.
    #[serde(default)]
    data: Option<serde_json::Value>,
    /// Structured mode only.
    #[serde(default)]
    data_base64: Option<String>,
}

/// The headers eventbus reads, found in one pass with their names in any case.
#[derive(Default)]
struct Found<'a> {
    content_type: Option<&'a str>,
    msg_id: Option<&'a str>,
    traceparent: Option<&'a str>,
    /// Whether any `ce-` header is present.
    any_ce: bool,
    attributes: Attributes,
}

/// The attribute a binary-mode header name carries (`ce-id` → `id`, in any case), if it is
/// one. By bytes: a foreign header name need not be ASCII, and slicing it by `str` index could
/// fall inside a character.
fn ce_attribute(name: &str) -> Option<&str> {
    let b = name.as_bytes();
    if b.len() > 3 && b[..3].eq_ignore_ascii_case(b"ce-") {
        name.get(3..)
    } else {
        None
    }
}

impl<'a> Found<'a> {
    fn of(h: &'a HeaderMap) -> Found<'a> {
        let mut f = Found::default();
        for (name, values) in h.iter() {
            let Some(value) = values.first().map(|v| v.as_str()) else {
                continue;
            };
            let name: &str = name.as_ref();
            let slot = if name.eq_ignore_ascii_case(headers::CONTENT_TYPE) {
                f.content_type.get_or_insert(value);
                continue;
            } else if name.eq_ignore_ascii_case(headers::MSG_ID) {
                f.msg_id.get_or_insert(value);
                continue;
            } else if name.eq_ignore_ascii_case(headers::TRACEPARENT) {
                f.traceparent.get_or_insert(value);
                continue;
            } else if let Some(attr) = ce_attribute(name) {
                f.any_ce = true;
                let a = &mut f.attributes;
                // Compared in place: no lower-cased copy of each name on every delivery.
                let is = |known: &str| attr.eq_ignore_ascii_case(known);
                if is("specversion") {
                    &mut a.specversion
                } else if is("id") {
                    &mut a.id
                } else if is("source") {
                    &mut a.source
                } else if is("type") {
                    &mut a.ty
                } else if is("subject") {
                    &mut a.subject
                } else if is("time") {
                    &mut a.time
                } else if is("datacontenttype") {
                    &mut a.datacontenttype
                } else if is("correlationid") {
                    &mut a.correlationid
                } else if is("causationid") {
                    &mut a.causationid
                } else {
                    continue;
                }
            } else {
                continue;
            };
            if slot.is_none() {
                *slot = Some(percent_decode(value).into_owned());
            }
        }
        f
    }
}

/// The media type without parameters, in lower case.
fn media_type(ct: &str) -> String {
    ct.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Whether a media type (without parameters, lower case) is JSON.
fn is_json(base: &str) -> bool {
    base == JSON || base == "text/json" || base.ends_with("+json")
}

impl Metadata {
    /// Reads the metadata of a message from its subject and headers.
    ///
    /// Binary-mode CloudEvents headers are used when present (names in any case, values
    /// percent-decoded); otherwise the subject's tokens give the aggregate, its id and the event
    /// type. A non-JSON content type, a `ce-specversion` other than `1.0`, or a subject that is
    /// not `{aggregate}.{id}.{event}` is a [`ErrorKind::Decode`] error, and so is a
    /// structured-mode CloudEvent, whose attributes are in its body: read that with
    /// [`Metadata::from_parts`].
    pub fn from_message(subject: &str, headers: Option<&HeaderMap>) -> Result<Metadata, Error> {
        Self::from_headers(subject, headers.cloned().unwrap_or_default())
    }

    /// Like [`Metadata::from_message`], with the headers given by value: they become
    /// [`Metadata::headers`] without a copy.
    pub fn from_headers(subject: &str, headers: HeaderMap) -> Result<Metadata, Error> {
        match Self::parsed(subject, &headers, None) {
            Ok(m) => Ok(Metadata { headers, ..m }),
            Err(e) => Err(e),
        }
    }

    /// Reads the metadata of a message from its subject, headers and body: like
    /// [`Metadata::from_headers`], and a structured-mode CloudEvent is read from its body (its
    /// `data` is what [`decode`] then decodes).
    pub fn from_parts(
        subject: &str,
        headers: HeaderMap,
        payload: &[u8],
    ) -> Result<Metadata, Error> {
        Self::from_owned(subject, headers, payload).map_err(|failed| failed.0)
    }

    /// Like [`Metadata::from_parts`], giving the headers back with the error.
    pub(crate) fn from_owned(
        subject: &str,
        headers: HeaderMap,
        payload: &[u8],
    ) -> Result<Metadata, Box<(Error, HeaderMap)>> {
        match Self::parsed(subject, &headers, Some(payload)) {
            Ok(m) => Ok(Metadata { headers, ..m }),
            Err(e) => Err(Box::new((e, headers))),
        }
    }

    /// Everything but the headers themselves (left empty).
    fn parsed(subject: &str, h: &HeaderMap, payload: Option<&[u8]>) -> Result<Metadata, Error> {
        let decode_error = |what: String| Error::new(ErrorKind::Decode, what);
        let (sub_aggregate, sub_id, sub_event) = split_event_subject(subject).ok_or_else(|| {
            decode_error(format!(
                "subject `{subject}` is not an event subject `{{aggregate}}.{{id}}.{{event}}`"
            ))
        })?;
        let found = Found::of(h);
        let content_type = found
            .content_type
            .or(found.attributes.datacontenttype.as_deref());
        let base = content_type.map(media_type);
        let (mode, attributes, data) = match base.as_deref() {
            Some(STRUCTURED_JSON) => {
                let Some(payload) = payload else {
                    return Err(decode_error(format!(
                        "message on `{subject}` is a structured-mode CloudEvent, whose attributes are in its body: read it with its body"
                    )));
                };
                let (attributes, data) = structured(subject, payload)?;
                (ContentMode::Structured, attributes, Some(data))
            }
            Some(BATCH_JSON) => {
                return Err(decode_error(format!(
                    "message on `{subject}` is a batch of CloudEvents (`{BATCH_JSON}`), which eventbus does not read: publish one event per message"
                )))
            }
            Some(base) if !is_json(base) => {
                return Err(decode_error(format!(
                    "message on `{subject}` has content type `{}`, not JSON",
                    content_type.unwrap_or_default()
                )))
            }
            _ if found.any_ce => (ContentMode::Binary, found.attributes, None),
            _ => (ContentMode::Plain, found.attributes, None),
        };
        if let Some(v) = &attributes.specversion {
            if v != SPEC_VERSION {
                return Err(decode_error(format!(
                    "message on `{subject}` is a CloudEvent of spec version {v:?}; eventbus reads CloudEvents {SPEC_VERSION} only"
                )));
            }
        }
        let (aggregate_type, event_type, version) =
            match attributes.ty.as_deref().and_then(parse_cloud_event_type) {
                Some((aggregate, name, version)) => {
                    (aggregate.to_owned(), name.to_owned(), version)
                }
                // No type, or a type of another producer's (resolved by `decode` against the
                // types the events declare): the subject says what it is.
                None => (sub_aggregate.to_owned(), sub_event.to_owned(), None),
            };
        let time = attributes
            .time
            .as_deref()
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
        Ok(Metadata {
            id: attributes
                .id
                .or_else(|| found.msg_id.map(str::to_owned))
                .unwrap_or_default(),
            source: attributes.source,
            aggregate_type,
            aggregate_id: sub_id.to_owned(),
            event_type,
            version,
            cloud_type: attributes.ty,
            cloud_subject: attributes.subject,
            mode,
            subject: subject.to_owned(),
            time,
            correlation_id: attributes.correlationid,
            causation_id: attributes.causationid,
            traceparent: attributes
                .traceparent
                .or_else(|| found.traceparent.map(str::to_owned)),
            headers: HeaderMap::new(),
            data,
        })
    }
}

/// Reads a structured-mode CloudEvent: its attributes, and its `data` (or `data_base64`) as
/// the event's JSON body.
fn structured(subject: &str, payload: &[u8]) -> Result<(Attributes, Bytes), Error> {
    let decode_error = |what: String| Error::new(ErrorKind::Decode, what);
    let mut a: Attributes = serde_json::from_slice(payload).map_err(|e| {
        decode_error(format!(
            "message on `{subject}` has content type `{STRUCTURED_JSON}` but is not a CloudEvent in JSON"
        ))
        .with_source(e)
    })?;
    if a.specversion.is_none() {
        return Err(decode_error(format!(
            "structured-mode CloudEvent on `{subject}` has no `specversion`"
        )));
    }
    if let Some(ct) = &a.datacontenttype {
        if !is_json(&media_type(ct)) {
            return Err(decode_error(format!(
                "structured-mode CloudEvent on `{subject}` has `datacontenttype` `{ct}`: its `data` is not JSON, so it is not an event eventbus can decode"
            )));
        }
    }
    let data = match (a.data.take(), a.data_base64.take()) {
        (Some(data), _) => serde_json::to_vec(&data).map_err(|e| {
            decode_error(format!("cannot re-serialize the `data` of the CloudEvent on `{subject}`"))
                .with_source(e)
        })?,
        (None, Some(b64)) => base64_decode(&b64).ok_or_else(|| {
            decode_error(format!(
                "structured-mode CloudEvent on `{subject}` has a `data_base64` that is not base64"
            ))
        })?,
        (None, None) => {
            return Err(decode_error(format!(
                "structured-mode CloudEvent on `{subject}` has no `data` (nor `data_base64`): there is no event to decode"
            )))
        }
    };
    Ok((a, Bytes::from(data)))
}

/// Splits eventbus's own CloudEvents type, `{aggregate}.{event}.v{version}` or
/// `{aggregate}.{event}` (no version given).
pub(crate) fn parse_cloud_event_type(t: &str) -> Option<(&str, &str, Option<u32>)> {
    let (rest, version) = match t.rsplit_once('.') {
        Some((rest, v))
            if v.len() > 1 && v.starts_with('v') && v[1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            (rest, Some(v[1..].parse().ok()?))
        }
        _ => (t, None),
    };
    let (aggregate, name) = rest.split_once('.')?;
    if crate::rules::name_problem(aggregate).is_some() || crate::rules::name_problem(name).is_some()
    {
        return None;
    }
    Some((aggregate, name, version))
}

/// Characters written as they are in a `ce-*` header: printable ASCII but space, `"` and `%`.
fn is_plain(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && b != b'"' && b != b'%'
}

/// Percent-encodes a `ce-*` header value as the binding asks: every byte of its UTF-8 outside
/// printable ASCII, and space, `"` and `%`.
pub(crate) fn percent_encode(v: &str) -> Cow<'_, str> {
    if v.bytes().all(is_plain) {
        return Cow::Borrowed(v);
    }
    let mut out = String::with_capacity(v.len() + 8);
    for b in v.bytes() {
        if is_plain(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Cow::Owned(out)
}

/// Decodes the `%XX` sequences of a header value. A `%` not followed by two hex digits is kept
/// as it is; a value whose decoded bytes are not UTF-8 is kept as received.
pub(crate) fn percent_decode(v: &str) -> Cow<'_, str> {
    if !v.contains('%') {
        return Cow::Borrowed(v);
    }
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(_) => Cow::Borrowed(v),
    }
}

/// Decodes standard base64 (with or without padding), as `data_base64` holds it.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

/// Decodes the body of a received event into a value of the set `E`.
///
/// The event type is the `ce-type` one of the set's events declares (`cloud_type`), else
/// eventbus's own `{aggregate}.{event}.v{version}`, else the subject's. An event of a version
/// newer than the set's is refused, naming both; an older one goes through the event's
/// upcaster (`#[event(upcast = ...)]`) first, and is refused, naming both, without one. A
/// structured-mode CloudEvent's `data` is decoded, never the envelope.
pub fn decode<E: EventSet>(meta: &Metadata, payload: &[u8]) -> Result<E, Error> {
    let body = meta.data.as_deref().unwrap_or(payload);
    let declared = meta
        .cloud_type
        .as_deref()
        .and_then(|t| E::EVENTS.iter().find(|d| d.foreign_type == Some(t)));
    let name = match declared {
        Some(d) => d.name,
        None => {
            if let Some(t) = &meta.cloud_type {
                if parse_cloud_event_type(t).is_none() {
                    return Err(Error::new(
                        ErrorKind::UnknownEventType,
                        format!(
                            "event on `{}` has `ce-type` {t:?}, which is not `{{aggregate}}.{{event}}.v{{version}}` and which no event of aggregate `{}` declares (`#[event(cloud_type = \"...\")]`)",
                            meta.subject,
                            E::AGGREGATE
                        ),
                    ));
                }
            }
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
            let known = E::EVENTS.iter().find(|d| d.name == meta.event_type);
            if let (Some(d), Some(v)) = (known, meta.version) {
                if v > d.version {
                    return Err(Error::new(
                        ErrorKind::Decode,
                        format!(
                            "event `{}.{}` on `{}` is version {v}, newer than version {} that `{}` reads: deploy a handler that reads version {v}",
                            d.aggregate, d.name, meta.subject, d.version, d.rust_type
                        ),
                    ));
                }
                if v < d.version {
                    let upcast = upcast::<E>(meta, d, v, body)?;
                    return from_json::<E>(meta, d.name, &upcast);
                }
            }
            meta.event_type.as_str()
        }
    };
    from_json::<E>(meta, name, body)
}

/// The body of an event written as version `v`, older than `d`'s, as version `d.version`:
/// through the set's upcaster. Refused, naming both versions, when there is none or it fails.
fn upcast<E: EventSet>(
    meta: &Metadata,
    d: &EventDescriptor,
    v: u32,
    body: &[u8],
) -> Result<Vec<u8>, Error> {
    let refused = |why: String| {
        Error::new(
            ErrorKind::Decode,
            format!(
                "event `{}.{}` on `{}` is version {v}, older than version {} that `{}` reads, and cannot be upcast: {why}",
                d.aggregate, d.name, meta.subject, d.version, d.rust_type
            ),
        )
    };
    let old: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| refused(format!("its body is not JSON ({e})")))?;
    match E::upcast(d.name, v, old) {
        Ok(new) => serde_json::to_vec(&new).map_err(|e| refused(e.to_string())),
        Err(UpcastError::NoUpcaster) => Err(refused(format!(
            "`{}` declares no upcaster; add `#[event(version = {}, upcast = ...)]` with a function turning version {v} into version {}",
            d.rust_type, d.version, d.version
        ))),
        Err(e) => Err(refused(e.to_string())),
    }
}

fn from_json<E: EventSet>(meta: &Metadata, name: &str, body: &[u8]) -> Result<E, Error> {
    E::from_json(name, body).map_err(|e| match (&e, meta.mode) {
        (DecodeError::Json { .. }, ContentMode::Structured) => Error::new(
            ErrorKind::Decode,
            format!(
                "the `data` of the structured-mode CloudEvent on `{}` does not fit event `{}.{name}`",
                meta.subject,
                E::AGGREGATE
            ),
        )
        .with_source(e),
        _ => Error::from(e),
    })
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

    #[test]
    fn ce_header_names_are_matched_in_any_case() {
        assert_eq!(ce_attribute("Ce-Id"), Some("Id"));
        assert_eq!(ce_attribute("CE-specversion"), Some("specversion"));
        assert_eq!(ce_attribute("ce-"), None);
        assert_eq!(ce_attribute("content-type"), None);
        // A foreign name whose third byte falls inside a character.
        assert_eq!(ce_attribute("üü-x"), None);
        let mut h = HeaderMap::new();
        h.insert("Ce-Id", "e1");
        h.insert("CE-SPECVERSION", "1.0");
        let m = Metadata::from_headers("order.1.created", h).unwrap();
        assert_eq!(m.id, "e1");
    }

    #[test]
    fn header_values_are_percent_encoded_and_decoded() {
        assert_eq!(percent_encode("py id 7"), "py%20id%207");
        assert_eq!(percent_encode("a%\"b\u{e9}"), "a%25%22b%C3%A9");
        assert!(matches!(percent_encode("order-42/x"), Cow::Borrowed(_)));
        for v in ["py id 7", "a%\"b\u{e9}", "plain", "100%"] {
            assert_eq!(percent_decode(&percent_encode(v)), v);
        }
        assert_eq!(percent_decode("py%20id%207"), "py id 7");
        assert_eq!(percent_decode("caf%C3%a9"), "caf\u{e9}");
        // An invalid sequence is kept as it is, and so is a value that is not UTF-8 decoded.
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%FF"), "%FF");
    }

    #[test]
    fn base64_as_data_base64_holds_it() {
        assert_eq!(base64_decode("eyJhIjoxfQ==").unwrap(), br#"{"a":1}"#);
        assert_eq!(base64_decode("eyJhIjoxfQ").unwrap(), br#"{"a":1}"#);
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("TWFu").unwrap(), b"Man");
        assert!(base64_decode("not base64!").is_none());
    }

    #[test]
    fn own_cloud_types_with_and_without_a_version() {
        assert_eq!(
            parse_cloud_event_type("order.created.v2"),
            Some(("order", "created", Some(2)))
        );
        assert_eq!(
            parse_cloud_event_type("order.created"),
            Some(("order", "created", None))
        );
        assert_eq!(
            parse_cloud_event_type("order.verified"),
            Some(("order", "verified", None))
        );
        for foreign in [
            "com.example.orders.created",
            "created",
            "order.created.vx.y",
            "order..v1",
        ] {
            assert_eq!(parse_cloud_event_type(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn header_names_are_read_in_any_case() {
        let mut h = HeaderMap::new();
        h.insert("Ce-Id", "py%20id%207");
        h.insert("CE-TYPE", "order.created.v1");
        h.insert("Content-Type", "Application/JSON; charset=utf-8");
        h.insert("ce-subject", "orders/f7e");
        let m = Metadata::from_headers("order.f7e.created", h).unwrap();
        assert_eq!(m.id, "py id 7");
        assert_eq!(m.mode, ContentMode::Binary);
        assert_eq!(m.aggregate_id, "f7e");
        assert_eq!(m.cloud_subject.as_deref(), Some("orders/f7e"));
        assert_eq!(m.version, Some(1));
    }
}
