//! How hard the client may press a service, one `Pacer` per service (the API, the object store):
//! the one place a failing service slows every path's calls, not just the path that met it.
//!
//! Healthy, it lets every call through at once. A transient answer (5xx, 429, 408, a connection
//! error, a timeout) makes it *troubled*: one call at a time goes out, as a probe, and not before
//! the service's own backoff (`PROBE_FIRST` doubling to `PROBE_CAP`, times 0.5–1.5) or the time a
//! 429 or 503 named in `Retry-After` (at most `RETRY_AFTER_CAP`). Each answered call lets one more
//! call out at once, which doubles them with each round (TCP's slow start), and at `RAMP_DONE`
//! it is healthy again: a service that
//! partly recovers is not handed the whole queue at once. A failure while ramping up halves the
//! calls allowed at once (as TCP does on a loss) rather than starting over: a service that fails
//! one call in three is pressed less, but still served. Any answer that is not trouble (a 4xx
//! included) counts as answered: the service is up, whatever it thought of the call.

use parking_lot::Mutex;
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The service's backoff after its first transient answer; it doubles with each failed probe.
const PROBE_FIRST: Duration = Duration::from_millis(50);
/// The longest wait between probes (before jitter): how long a recovered service may wait to be
/// found out.
const PROBE_CAP: Duration = Duration::from_secs(5);
/// The longest `Retry-After` honoured: a service that names hours (or a date years ahead) must
/// not stop the client for as long.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(300);
/// Calls at once at which a recovering service counts as healthy again (no limit).
const RAMP_DONE: usize = 32;

/// How a call through the pacer ended, for the service's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// The service answered (whatever it answered).
    Answered,
    /// A transient answer or none at all; `retry_after`: the wait a 429 or 503 asked for.
    Trouble { retry_after: Option<Duration> },
}

#[derive(Debug, Default)]
struct State {
    /// Calls allowed at once; `None`: healthy, no limit.
    window: Option<usize>,
    in_flight: usize,
    /// No call goes out before this (a probe's backoff, a `Retry-After`).
    not_before: Option<Instant>,
    /// Failed probes in a row, for the backoff.
    failures: u32,
    /// Counts troubles taken as news; a call admitted before the last one only confirms it (a
    /// burst of calls failing together is one failure, not many).
    epoch: u64,
}

#[derive(Debug, Default)]
pub struct Pacer {
    state: Mutex<State>,
    changed: Notify,
}

/// A call's place among those the pacer lets out; its end is told with `done` (dropped without,
/// the place is given back and nothing is learnt).
#[must_use]
pub struct Pass<'a> {
    pacer: &'a Pacer,
    epoch: u64,
    open: bool,
}

impl Pacer {
    /// Waits until a call may go out, and takes its place.
    pub async fn admit(&self) -> Pass<'_> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wait_until = {
                let mut state = self.state.lock();
                let now = Instant::now();
                match state.not_before {
                    Some(at) if at > now => Some(at),
                    _ if state.window.is_some_and(|window| state.in_flight >= window) => None,
                    _ => {
                        state.in_flight += 1;
                        return Pass {
                            pacer: self,
                            epoch: state.epoch,
                            open: true,
                        };
                    }
                }
            };
            crate::wake::changed_or_until(changed.as_mut(), wait_until).await;
        }
    }

    /// Whether the service is troubled now (calls limited).
    #[cfg(test)]
    fn troubled(&self) -> bool {
        self.state.lock().window.is_some()
    }

    fn finish(&self, epoch: u64, health: Option<Health>) {
        let mut state = self.state.lock();
        state.in_flight -= 1;
        let now = Instant::now();
        match health {
            None => {}
            Some(Health::Answered) => {
                state.failures = 0;
                state.window = state
                    .window
                    .map(|window| window + 1)
                    .filter(|window| *window < RAMP_DONE);
            }
            Some(Health::Trouble { retry_after }) => {
                let mut wait = retry_after.map(|asked| asked.min(RETRY_AFTER_CAP));
                if wait.is_some() {
                    state.window = Some(1);
                }
                if epoch == state.epoch {
                    state.epoch += 1;
                    match state.window {
                        // A ramp that went too far: half as many at once, at once.
                        Some(window) if window > 1 => state.window = Some(window / 2),
                        // The first failure, or a probe's: one call at a time, after a backoff.
                        _ => {
                            state.window = Some(1);
                            let backoff = PROBE_FIRST.saturating_mul(1 << state.failures.min(16));
                            state.failures += 1;
                            let backoff =
                                backoff.min(PROBE_CAP).mul_f64(rand::random::<f64>() + 0.5);
                            wait = Some(wait.map_or(backoff, |asked| asked.max(backoff)));
                        }
                    }
                }
                if let Some(wait) = wait {
                    let at = now + wait;
                    state.not_before = Some(state.not_before.map_or(at, |before| before.max(at)));
                }
            }
        }
        drop(state);
        self.changed.notify_waiters();
    }
}

impl Pass<'_> {
    /// The call ended so: the pacer learns from it, and the place is free.
    pub fn done(mut self, health: Health) {
        self.open = false;
        self.pacer.finish(self.epoch, Some(health));
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if self.open {
            self.pacer.finish(self.epoch, None);
        }
    }
}

/// What an HTTP status says of the service's health: 408, 429 and 5xx are trouble; a 429 or 503
/// may say how long to wait (`retry_after`: the header's value).
pub fn health_of(status: u16, retry_after: Option<&str>) -> Health {
    match status {
        408 | 429 | 500..=599 => Health::Trouble {
            retry_after: match status {
                429 | 503 => {
                    retry_after.and_then(|value| parse_retry_after(value, SystemTime::now()))
                }
                _ => None,
            },
        },
        _ => Health::Answered,
    }
}

/// `Retry-After` (RFC 9110 10.2.3): seconds, or an HTTP date, as a wait from `now`. A date past
/// is no wait; a value that is neither is ignored.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at: SystemTime = chrono::DateTime::parse_from_rfc2822(value).ok()?.into();
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const TROUBLE: Health = Health::Trouble { retry_after: None };

    #[tokio::test(start_paused = true)]
    async fn healthy_lets_every_call_through_at_once() {
        let pacer = Pacer::default();
        let passes: Vec<_> = futures_util::future::join_all((0..100).map(|_| pacer.admit())).await;
        assert_eq!(passes.len(), 100);
        assert!(!pacer.troubled());
    }

    #[tokio::test(start_paused = true)]
    async fn troubled_lets_one_probe_out_at_a_time_after_its_backoff() {
        let pacer = Arc::new(Pacer::default());
        let start = Instant::now();
        pacer.admit().await.done(TROUBLE);
        assert!(pacer.troubled());
        let probe = pacer.admit().await;
        // The first backoff, jitter included.
        assert!(start.elapsed() >= PROBE_FIRST / 2);
        let waiting = {
            let pacer = pacer.clone();
            tokio::spawn(async move { drop(pacer.admit().await) })
        };
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(
            !waiting.is_finished(),
            "a second call while the probe is out"
        );
        probe.done(TROUBLE);
        waiting.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probes_back_off_up_to_the_cap() {
        let pacer = Pacer::default();
        let mut last = Instant::now();
        let mut waits = Vec::new();
        for _ in 0..12 {
            pacer.admit().await.done(TROUBLE);
            let pass = pacer.admit().await;
            waits.push(last.elapsed());
            last = Instant::now();
            drop(pass);
        }
        assert!(waits[1] >= PROBE_FIRST, "{waits:?}");
        assert!(waits[11] >= PROBE_CAP / 2, "{waits:?}");
        assert!(
            waits.iter().all(|wait| *wait <= PROBE_CAP * 3 / 2),
            "{waits:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_failing_together_is_one_failure() {
        let pacer = Pacer::default();
        let burst: Vec<_> = futures_util::future::join_all((0..10).map(|_| pacer.admit())).await;
        let start = Instant::now();
        for pass in burst {
            pass.done(TROUBLE);
        }
        drop(pacer.admit().await);
        // Ten failures counted would wait 2^10 times the first backoff (capped at 5 s).
        assert!(start.elapsed() <= PROBE_FIRST * 3 / 2);
    }

    #[tokio::test(start_paused = true)]
    async fn answers_ramp_up_by_doubling_then_the_limit_goes() {
        let pacer = Pacer::default();
        pacer.admit().await.done(TROUBLE);
        let mut allowed = Vec::new();
        while pacer.troubled() {
            // As many as may go out at once now.
            let mut passes = vec![pacer.admit().await];
            while let Ok(pass) = tokio::time::timeout(Duration::from_secs(1), pacer.admit()).await {
                passes.push(pass);
            }
            allowed.push(passes.len());
            passes
                .into_iter()
                .for_each(|pass| pass.done(Health::Answered));
        }
        assert_eq!(allowed, [1, 2, 4, 8, 16]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_while_ramping_up_halves_the_calls_at_once() {
        let pacer = Pacer::default();
        pacer.admit().await.done(TROUBLE);
        for _ in 0..7 {
            pacer.admit().await.done(Health::Answered);
        }
        // Eight allowed at once; one of them fails.
        let start = Instant::now();
        pacer.admit().await.done(TROUBLE);
        let passes: Vec<_> = futures_util::future::join_all((0..4).map(|_| pacer.admit())).await;
        assert_eq!(start.elapsed(), Duration::ZERO, "no backoff while ramping");
        assert!(
            tokio::time::timeout(Duration::from_secs(60), pacer.admit())
                .await
                .is_err(),
            "a fifth"
        );
        drop(passes);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_holds_every_call_back_and_is_capped() {
        let pacer = Pacer::default();
        let start = Instant::now();
        pacer.admit().await.done(Health::Trouble {
            retry_after: Some(Duration::from_secs(7)),
        });
        drop(pacer.admit().await);
        assert!(start.elapsed() >= Duration::from_secs(7));
        let start = Instant::now();
        pacer.admit().await.done(Health::Trouble {
            retry_after: Some(Duration::from_secs(86_400)),
        });
        drop(pacer.admit().await);
        assert!(start.elapsed() >= RETRY_AFTER_CAP);
        assert!(start.elapsed() < RETRY_AFTER_CAP + PROBE_CAP * 2);
    }

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:39 GMT", now),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        for unusable in ["", "soon", "-1", "1.5"] {
            assert_eq!(parse_retry_after(unusable, now), None, "{unusable:?}");
        }
    }

    #[test]
    fn statuses_say_trouble_or_an_answer() {
        for status in [200, 400, 403, 404, 409] {
            assert_eq!(health_of(status, Some("9")), Health::Answered);
        }
        assert_eq!(health_of(500, Some("9")), TROUBLE);
        for status in [429, 503] {
            assert_eq!(
                health_of(status, Some("9")),
                Health::Trouble {
                    retry_after: Some(Duration::from_secs(9))
                }
            );
        }
    }
}
