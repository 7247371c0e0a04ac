//! Buses for tests that only publish and read.

/// A bus of `service` at `url` that runs no handler and reads no environment: a publisher or
/// reader beside the bus under test. Panics, naming the URL, if it does not start.
pub async fn publisher(url: &str, service: &str) -> eventbus::Bus {
    eventbus::builder()
        .no_env()
        .url(url)
        .service(service)
        .without_handlers()
        .start()
        .await
        .unwrap_or_else(|e| panic!("a bus at {url} does not start: {e}"))
}

/// Stores `messages` (events encoded beforehand, with eventbus's headers) through raw
/// async-nats, up to 1,000 awaiting their acknowledgement at once: a benchmark's backlog, put
/// in place outside the part it times. Panics if one is not stored.
pub async fn store_backlog(
    js: &async_nats::jetstream::Context,
    messages: impl IntoIterator<Item = eventbus::__private::EncodedEvent>,
) {
    let mut pending = Vec::with_capacity(1000);
    for m in messages {
        pending.push(
            js.publish_with_headers(m.subject.into_string(), m.headers, m.payload)
                .await
                .expect("publish"),
        );
        if pending.len() == 1000 {
            for p in pending.drain(..) {
                p.await.expect("ack");
            }
        }
    }
    for p in pending {
        p.await.expect("ack");
    }
}
