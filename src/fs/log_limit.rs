//! Rate limiting for log lines that a client or another process can repeat at will (a refusal
//! per request): at most `burst` lines per interval for each limiter, the rest counted and
//! reported as "suppressed" by the next line let through.

use parking_lot::Mutex;
use std::time::{Duration, Instant};

/// One kind of log line's allowance. Meant to be a `static` next to the line it guards.
pub struct LogLimit {
    burst: u32,
    interval: Duration,
    window: Mutex<Window>,
}

struct Window {
    started: Option<Instant>,
    shown: u32,
    suppressed: u64,
}

impl LogLimit {
    pub const fn new(burst: u32, interval: Duration) -> LogLimit {
        LogLimit {
            burst,
            interval,
            window: Mutex::new(Window {
                started: None,
                shown: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether to log this occurrence now: `Some(k)` to log it, noting that `k` similar ones
    /// were left out since the last line; `None` to leave it out (it is counted).
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut window = self.window.lock();
        let expired = window
            .started
            .is_none_or(|started| now.saturating_duration_since(started) >= self.interval);
        if expired {
            window.started = Some(now);
            window.shown = 0;
        }
        if window.shown < self.burst {
            window.shown += 1;
            Some(std::mem::take(&mut window.suppressed))
        } else {
            window.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_interval_then_the_count_of_what_was_left_out() {
        let limit = LogLimit::new(2, Duration::from_secs(10));
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        assert_eq!(limit.allow_at(at(0)), Some(0));
        assert_eq!(limit.allow_at(at(1)), Some(0));
        for _ in 0..1000 {
            assert_eq!(limit.allow_at(at(2)), None);
        }
        assert_eq!(limit.allow_at(at(9)), None);
        // A new interval: the next line says how many were left out.
        assert_eq!(limit.allow_at(at(10)), Some(1001));
        assert_eq!(limit.allow_at(at(11)), Some(0));
        assert_eq!(limit.allow_at(at(12)), None);
    }
}
