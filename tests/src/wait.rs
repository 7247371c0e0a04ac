//! Waiting on a condition with a deadline instead of sleeping.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

/// The first pause between two polls; it doubles up to [`MAX_INTERVAL`].
const FIRST_INTERVAL: Duration = Duration::from_millis(5);
/// The longest pause between two polls.
const MAX_INTERVAL: Duration = Duration::from_millis(100);

/// Polls `condition` until it yields `true`; panics with `what` once `timeout` has passed.
///
/// The deadline is measured on the real clock, and a poll still running at the deadline is
/// abandoned. Use it for "eventually" assertions and for waiting on a side effect:
///
/// ```no_run
/// # async fn example(count: std::sync::Arc<std::sync::atomic::AtomicUsize>) {
/// use std::sync::atomic::Ordering;
/// use std::time::Duration;
/// eventbus_tests::wait_until(Duration::from_secs(10), "the handler ran once", || {
///     let count = count.clone();
///     async move { count.load(Ordering::SeqCst) == 1 }
/// })
/// .await;
/// # }
/// ```
pub async fn wait_until<F, Fut>(timeout: Duration, what: impl Display, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(timeout, what, || {
        let poll = condition();
        async move { poll.await.then_some(()) }
    })
    .await
}

/// Polls `poll` until it yields `Some(value)` and returns the value; panics with `what` once
/// `timeout` has passed.
///
/// Like [`wait_until`], for conditions that produce something, e.g. a message that eventually
/// appears in a stream.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: impl Display, mut poll: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match try_wait_for(timeout, &mut poll).await {
        Some(value) => value,
        None => panic!("timed out after {timeout:?} waiting until {what}"),
    }
}

/// [`wait_for`] that returns `None` at the deadline instead of panicking.
pub(crate) async fn try_wait_for<T, F, Fut>(timeout: Duration, mut poll: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut interval = FIRST_INTERVAL;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, poll()).await {
            Ok(Some(value)) => return Some(value),
            Ok(None) => {}
            Err(_elapsed) => return None,
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return None;
        }
        tokio::time::sleep(interval.min(remaining)).await;
        interval = (interval * 2).min(MAX_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn returns_once_the_condition_holds() {
        let polls = AtomicUsize::new(0);
        let value = wait_for(Duration::from_secs(5), "the third poll", || {
            let n = polls.fetch_add(1, Ordering::SeqCst) + 1;
            async move { (n == 3).then_some(n) }
        })
        .await;
        assert_eq!(value, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 50ms waiting until pigs fly")]
    async fn panics_with_the_description_at_the_deadline() {
        wait_until(Duration::from_millis(50), "pigs fly", || async { false }).await;
    }

    #[tokio::test]
    async fn abandons_a_poll_that_hangs_past_the_deadline() {
        let started = Instant::now();
        let result = try_wait_for(Duration::from_millis(50), || {
            std::future::pending::<Option<()>>()
        })
        .await;
        assert!(result.is_none());
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
