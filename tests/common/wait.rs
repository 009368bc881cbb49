//! Waiting for something that happens asynchronously: one polling loop for every test.
//!
//! ```ignore
//! common::eventually("the file reached the catalog", || emulator.live().contains_key("f"));
//! let text = common::eventually_some(Duration::from_secs(30), "never listed", || {
//!     let text = status_text();
//!     text.contains("local only").then_some(text)
//! });
//! ```
//!
//! `what` says what never happened; for a message that needs the state at the time of failure
//! (a log, a status) pass `Later(|| format!(...))`, which is only formatted if the wait fails.

use std::fmt;
use std::time::{Duration, Instant};

/// How long `eventually` waits when the caller names no limit.
pub const DEFAULT_LIMIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);

/// A message formatted only when it is shown.
pub struct Later<F>(pub F);

impl<F: Fn() -> String> fmt::Display for Later<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&(self.0)())
    }
}

/// Polls `condition` until it holds; panics with `what` after `DEFAULT_LIMIT`.
pub fn eventually(what: impl fmt::Display, mut condition: impl FnMut() -> bool) {
    eventually_some(DEFAULT_LIMIT, what, || condition().then_some(()))
}

/// `eventually` with another limit.
pub fn eventually_within(
    limit: Duration,
    what: impl fmt::Display,
    mut condition: impl FnMut() -> bool,
) {
    eventually_some(limit, what, || condition().then_some(()))
}

/// Polls `condition` until it gives a value and returns it; panics with `what` after `limit`.
pub fn eventually_some<T>(
    limit: Duration,
    what: impl fmt::Display,
    condition: impl FnMut() -> Option<T>,
) -> T {
    match poll(limit, condition) {
        Some(value) => value,
        None => panic!("{what} (waited {limit:?})"),
    }
}

/// Polls `condition` until it gives a value or `limit` passes (`None`), for a caller that must
/// clean up before it fails.
pub fn poll<T>(limit: Duration, mut condition: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = condition() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}
