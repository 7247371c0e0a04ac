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
