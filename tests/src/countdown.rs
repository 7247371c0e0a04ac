//! What the benchmarks share: a countdown a handler ticks and the timed part waits for, and
//! the median of per-round figures.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Counts events handled and wakes the waiter when the armed number is reached. A `static`
/// (its constructor is `const`), since a handler is a free function.
pub struct Countdown {
    handled: AtomicUsize,
    target: AtomicUsize,
    done: Notify,
}

impl Countdown {
    /// A countdown not armed yet.
    pub const fn new() -> Countdown {
        Countdown {
            handled: AtomicUsize::new(0),
            target: AtomicUsize::new(usize::MAX),
            done: Notify::const_new(),
        }
    }

    /// Starts over, to be done when `n` events were handled.
    pub fn arm(&self, n: usize) {
        self.handled.store(0, Ordering::SeqCst);
        self.target.store(n, Ordering::SeqCst);
    }

    /// One event handled (from the handler).
    pub fn tick(&self) {
        if self.handled.fetch_add(1, Ordering::Relaxed) + 1 == self.target.load(Ordering::Relaxed) {
            self.done.notify_one();
        }
    }

    /// Waits until the armed number was handled (at once if it already was).
    pub async fn done(&self) {
        self.done.notified().await;
    }
}

impl Default for Countdown {
    fn default() -> Self {
        Countdown::new()
    }
}

/// The median of a benchmark's per-round figures (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    v[v.len() / 2]
}
