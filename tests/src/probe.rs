//! A plain JetStream client of a test's own, to look at what the bus under test did.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, message::StreamMessage};
use async_nats::HeaderMap;

use crate::{wait_for, NatsServer};

/// A plain JetStream client, beside the bus under test. Its methods panic, naming the stream,
/// consumer or message, when what they look at is not there.
pub struct Probe {
    /// The client, for what the methods do not cover.
    pub js: jetstream::Context,
}

impl Probe {
    /// A probe connected to `server`.
    pub async fn new(server: &NatsServer) -> Probe {
        Probe {
            js: jetstream::new(server.connect().await),
        }
    }

    async fn stream(&self, stream: &str) -> jetstream::stream::Stream {
        self.js
            .get_stream(stream)
            .await
            .unwrap_or_else(|e| panic!("no stream `{stream}`: {e}"))
    }

    /// How many messages `stream` holds.
    pub async fn count(&self, stream: &str) -> u64 {
        let mut s = self.stream(stream).await;
        s.info().await.expect("stream info").state.messages
    }

    /// The message at `sequence` of `stream`.
    pub async fn stored(&self, stream: &str, sequence: u64) -> StreamMessage {
        self.stream(stream)
            .await
            .get_raw_message(sequence)
            .await
            .unwrap_or_else(|e| panic!("no message {sequence} in `{stream}`: {e}"))
    }

    /// Every message `stream` holds, in order (deleted ones are skipped).
    pub async fn all(&self, stream: &str) -> Vec<StreamMessage> {
        let mut s = self.stream(stream).await;
        let state = s.info().await.expect("stream info").state.clone();
        let mut out = Vec::new();
        if state.messages == 0 {
            return out;
        }
        for sequence in state.first_sequence..=state.last_sequence {
            if let Ok(m) = s.get_raw_message(sequence).await {
                out.push(m);
            }
        }
        out
    }

    /// Waits until `stream` holds at least `n` messages, and returns them all.
    pub async fn wait_all(&self, timeout: Duration, stream: &str, n: usize) -> Vec<StreamMessage> {
        wait_for(
            timeout,
            format_args!("stream `{stream}` holds {n} message(s)"),
            || async {
                let all = self.all(stream).await;
                (all.len() >= n).then_some(all)
            },
        )
        .await
    }

    /// The state of consumer `name` of `stream`.
    pub async fn consumer(&self, stream: &str, name: &str) -> consumer::Info {
        self.stream(stream)
            .await
            .consumer_info(name)
            .await
            .unwrap_or_else(|e| panic!("no consumer `{name}`: {e}"))
    }

    /// Waits until consumer `name` of `stream` has nothing pending and nothing waiting for an
    /// ack, and returns its state then.
    pub async fn settled(&self, timeout: Duration, stream: &str, name: &str) -> consumer::Info {
        wait_for(
            timeout,
            format_args!("consumer `{name}` has nothing pending and nothing ack-pending"),
            || async {
                let info = self.consumer(stream, name).await;
                (info.num_pending == 0 && info.num_ack_pending == 0).then_some(info)
            },
        )
        .await
    }

    /// Publishes a raw message, as another producer would, and returns its stream sequence.
    pub async fn publish_raw(&self, subject: &str, headers: HeaderMap, body: &'static [u8]) -> u64 {
        self.js
            .publish_with_headers(subject.to_owned(), headers, body.into())
            .await
            .expect("send a raw message")
            .await
            .expect("the raw message is stored")
            .sequence
    }
}
