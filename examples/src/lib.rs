//! Runnable eventbus programs (see the `[[bin]]` targets).
