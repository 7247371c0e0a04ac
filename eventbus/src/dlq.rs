//! Dead letters: list them, and publish them again to their original subject once the cause
//! is fixed.

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use time::OffsetDateTime;

use crate::bus::Bus;
use crate::dispatch::dlq_headers;
use crate::envelope::{headers, headers_without};
use crate::error::{Error, ErrorKind};
use crate::publish::{publish_acked, Published};
use crate::read::{open, scan};

/// One dead-lettered event.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Its sequence in the dead-letter stream (what [`Bus::republish_dead_letter`] takes).
    pub sequence: u64,
    /// The consumer that gave up on it.
    pub consumer: String,
    /// Why: `permanent`, `max_deliver`, `undecodable` or `unknown_event_type`.
    pub reason: String,
    /// The handler's last error.
    pub error: String,
    /// The subject it was published on.
    pub original_subject: String,
    /// The stream it was stored in.
    pub original_stream: String,
    /// Its sequence in that stream.
    pub original_sequence: u64,
    /// How many times it was delivered.
    pub deliveries: u64,
    /// When it was dead-lettered.
    pub time: OffsetDateTime,
    /// Its headers: the original ones plus the `eventbus-*` ones.
    pub headers: HeaderMap,
    /// Its original body.
    pub payload: Bytes,
}

/// Marks a republished dead letter with `{original stream}:{original sequence}`: a second
/// copy of an event already in its aggregate's history, which reads skip (they count it in the
/// versions, as the server does for an append's expected version).
pub(crate) const REPUBLISHED_FROM: &str = "eventbus-republished-from";

fn header(h: &HeaderMap, name: &str) -> String {
    h.get(name)
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default()
}

impl Bus {
    /// The dead-letter stream, if there is one (it is created with the first consumer that
    /// acknowledges explicitly).
    async fn dlq_stream_name(&self) -> Result<Option<String>, Error> {
        self.inner.backend.stream_by_subject("dlq.x").await
    }

    /// Every dead letter, oldest first; of one consumer only if `consumer` is given. None
    /// (an empty list) when there is no dead-letter stream.
    pub async fn dead_letters(&self, consumer: Option<&str>) -> Result<Vec<DeadLetter>, Error> {
        let Some(name) = self.dlq_stream_name().await? else {
            return Ok(Vec::new());
        };
        let opened = open(&self.inner, &name).await?;
        let filter = match consumer {
            Some(c) => format!("dlq.{c}"),
            None => "dlq.>".to_owned(),
        };
        let mut messages = scan(opened, filter, 1);
        let mut out = Vec::new();
        while let Some(m) = messages.next().await {
            let m = m?;
            let h = &m.headers;
            out.push(DeadLetter {
                sequence: m.sequence,
                consumer: header(h, dlq_headers::CONSUMER),
                reason: header(h, dlq_headers::REASON),
                error: header(h, dlq_headers::ERROR),
                original_subject: header(h, dlq_headers::ORIGINAL_SUBJECT),
                original_stream: header(h, dlq_headers::ORIGINAL_STREAM),
                original_sequence: header(h, dlq_headers::ORIGINAL_SEQUENCE)
                    .parse()
                    .unwrap_or(0),
                deliveries: header(h, dlq_headers::DELIVERIES).parse().unwrap_or(0),
                time: m.time,
                headers: m.headers,
                payload: m.payload,
            });
        }
        Ok(out)
    }

    /// Publishes a dead letter again, to its original subject, with its original body and
    /// headers (the same `ce-id`, so handlers see the same event; a new `Nats-Msg-Id`, so the
    /// server does not drop it as a duplicate), then removes it from the dead-letter stream.
    ///
    /// Every consumer of that subject receives it again, not only the one that gave up on it:
    /// handlers are expected to be idempotent. The copy carries an `eventbus-republished-from`
    /// header (`{original stream}:{original sequence}`); [`Bus::read`] and [`Bus::load`] skip
    /// it, so the aggregate's history holds the event once (its versions count the copy).
    pub async fn republish_dead_letter(&self, sequence: u64) -> Result<Published, Error> {
        let name = self.dlq_stream_name().await?.ok_or_else(|| {
            Error::new(
                ErrorKind::Read,
                format!("no dead letter with sequence {sequence}: there is no dead-letter stream (`dlq.>`)"),
            )
        })?;
        let m = self.inner.backend.get(&name, sequence).await.map_err(|e| {
            Error::new(
                ErrorKind::Read,
                format!("no dead letter with sequence {sequence} in `{name}`"),
            )
            .with_source(e)
        })?;
        let subject = header(&m.headers, dlq_headers::ORIGINAL_SUBJECT);
        if subject.is_empty() {
            return Err(Error::new(
                ErrorKind::Read,
                format!(
                    "message {sequence} of `{name}` is not a dead letter: it has no `{}` header",
                    dlq_headers::ORIGINAL_SUBJECT
                ),
            ));
        }
        let mut h = headers_without(&m.headers, |n| {
            n.starts_with("eventbus-") || n.starts_with("Nats-")
        });
        let ce_id = header(&m.headers, headers::ID);
        let id = format!(
            "{}redrive-{name}-{sequence}",
            if ce_id.is_empty() {
                String::new()
            } else {
                format!("{ce_id}-")
            }
        );
        h.insert(headers::MSG_ID, id.as_str());
        let origin = format!(
            "{}:{}",
            header(&m.headers, dlq_headers::ORIGINAL_STREAM),
            header(&m.headers, dlq_headers::ORIGINAL_SEQUENCE)
        );
        h.insert(REPUBLISHED_FROM, origin.as_str());
        let kept = h.clone();
        let published = publish_acked(
            &self.inner.backend,
            self.inner.config.publish_attempts,
            &subject,
            &id,
            h,
            m.payload,
            || Some(kept.clone()),
        )
        .await?;
        self.inner.backend.delete_message(&name, sequence).await.map_err(|e| {
            Error::new(
                ErrorKind::JetStream,
                format!("dead letter {sequence} was published again to `{subject}`, but cannot be removed from `{name}`"),
            )
            .with_source(e)
        })?;
        Ok(published)
    }

    /// Publishes every dead letter (of one consumer, if given) again; see
    /// [`Bus::republish_dead_letter`]. Stops at the first failure.
    pub async fn republish_dead_letters(
        &self,
        consumer: Option<&str>,
    ) -> Result<Vec<Published>, Error> {
        let mut out = Vec::new();
        for d in self.dead_letters(consumer).await? {
            out.push(self.republish_dead_letter(d.sequence).await?);
        }
        Ok(out)
    }
}
