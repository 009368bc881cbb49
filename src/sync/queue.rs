//! The work queue: which paths need a look, and when. Marks are coalesced per path over the settle
//! window (each mark pushes the path's due time back, up to a cap so a file saved continuously
//! still syncs); a path is handed to at most one worker at a time, and a mark that arrives while it
//! is in flight runs it again afterwards. That gives per-path ordering with concurrency across paths.

use parking_lot::Mutex;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How much a path's look must do. `Content` dominates: the file must be hashed again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hint {
    /// Metadata moved (times set, renamed, linked): the hash of the same unchanged inode may be reused.
    Meta,
    /// The content may have changed.
    Content,
}

struct Pending {
    due: Instant,
    /// A path marked again and again is still looked at by then.
    deadline: Instant,
    hint: Hint,
    /// Failed attempts so far, for backoff.
    attempts: u32,
    /// Distinguishes this entry's timer from stale ones left in the heap.
    generation: u64,
}

#[derive(Default)]
struct State {
    pending: HashMap<PathBuf, Pending>,
    timers: BinaryHeap<Reverse<(Instant, u64, PathBuf)>>,
    /// In flight, with the hint of any mark that arrived meanwhile.
    in_flight: HashMap<PathBuf, Option<Hint>>,
    next_generation: u64,
    /// Set while draining at shutdown: new marks are due at once.
    draining: bool,
    paused: bool,
}

pub struct WorkQueue {
    state: Mutex<State>,
    changed: Notify,
    settle: Duration,
}

/// How a worker's look at a path ended.
pub enum Finish {
    Done,
    /// Look again once it settles (it changed while looked at), keeping the hint; not a failed
    /// attempt.
    Again {
        hint: Hint,
    },
    /// Try again after `delay` (transient error), keeping the hint.
    Retry {
        delay: Duration,
        hint: Hint,
    },
}

impl State {
    /// Due once `settle` has passed quietly (at once while draining), and at the latest after ten
    /// windows, however often it is marked again.
    fn schedule_settled(&mut self, path: PathBuf, settle: Duration, hint: Hint) {
        let settle = if self.draining {
            Duration::ZERO
        } else {
            settle
        };
        let now = Instant::now();
        self.schedule(path, now + settle, now + settle * 10, hint, 0);
    }

    fn schedule(
        &mut self,
        path: PathBuf,
        due: Instant,
        deadline: Instant,
        hint: Hint,
        attempts: u32,
    ) {
        let generation = self.next_generation;
        self.next_generation += 1;
        let entry = self.pending.entry(path.clone()).or_insert(Pending {
            due,
            deadline,
            hint,
            attempts,
            generation,
        });
        entry.deadline = entry.deadline.min(deadline);
        entry.due = due.min(entry.deadline);
        entry.hint = entry.hint.max(hint);
        entry.attempts = entry.attempts.max(attempts);
        entry.generation = generation;
        self.timers.push(Reverse((entry.due, generation, path)));
    }
}

impl WorkQueue {
    pub fn new(settle: Duration) -> Self {
        WorkQueue {
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            settle,
        }
    }

    /// Something happened to `path`: look at it once things settle.
    pub fn mark(&self, path: &Path, hint: Hint) {
        let mut state = self.state.lock();
        if let Some(again) = state.in_flight.get_mut(path) {
            *again = Some(again.map_or(hint, |h| h.max(hint)));
            return;
        }
        state.schedule_settled(path.to_path_buf(), self.settle, hint);
        drop(state);
        self.changed.notify_waiters();
    }

    /// Waits for the next path that is due and not in flight, and hands it out.
    pub async fn next(&self) -> (PathBuf, Hint, u32) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wake_at = {
                let mut state = self.state.lock();
                if let Some(item) = Self::take_due(&mut state) {
                    return item;
                }
                if state.paused {
                    None
                } else {
                    state.timers.peek().map(|Reverse((due, _, _))| *due)
                }
            };
            maxlofs_api::wake::changed_or_until(changed.as_mut(), wake_at).await;
        }
    }

    fn take_due(state: &mut State) -> Option<(PathBuf, Hint, u32)> {
        if state.paused {
            return None;
        }
        let now = Instant::now();
        while let Some(Reverse((due, generation, _))) = state.timers.peek() {
            if *due > now {
                return None;
            }
            let generation = *generation;
            let Reverse((_, _, path)) = state.timers.pop().expect("peeked");
            let current = state
                .pending
                .get(&path)
                .is_some_and(|p| p.generation == generation);
            if !current {
                continue;
            }
            let pending = state.pending.remove(&path).expect("checked");
            state.in_flight.insert(path.clone(), None);
            return Some((path, pending.hint, pending.attempts));
        }
        None
    }

    /// A worker is done with `path`.
    pub fn finish(&self, path: &Path, finish: Finish, attempts: u32) {
        let mut state = self.state.lock();
        let again = state.in_flight.remove(path).flatten();
        let now = Instant::now();
        match finish {
            Finish::Retry { delay, hint } => {
                let hint = again.map_or(hint, |h| h.max(hint));
                state.schedule(
                    path.to_path_buf(),
                    now + delay,
                    now + delay,
                    hint,
                    attempts + 1,
                );
            }
            Finish::Again { hint } => {
                let hint = again.map_or(hint, |h| h.max(hint));
                state.schedule_settled(path.to_path_buf(), self.settle, hint);
            }
            Finish::Done => {
                if let Some(hint) = again {
                    state.schedule_settled(path.to_path_buf(), self.settle, hint);
                }
            }
        }
        drop(state);
        self.changed.notify_waiters();
    }

    /// Stops or restarts handing out work (a refused key pauses all sending).
    pub fn set_paused(&self, paused: bool) {
        self.state.lock().paused = paused;
        self.changed.notify_waiters();
    }

    /// Shutdown: everything pending is due now, and so is anything marked from now on.
    pub fn start_draining(&self) {
        let mut state = self.state.lock();
        state.draining = true;
        let now = Instant::now();
        let paths: Vec<PathBuf> = state.pending.keys().cloned().collect();
        for path in paths {
            let pending = state.pending.remove(&path).expect("listed");
            // Keep a retry's backoff; only the settle wait goes.
            let due = if pending.attempts > 0 {
                pending.due
            } else {
                now
            };
            state.schedule(path, due, due, pending.hint, pending.attempts);
        }
        drop(state);
        self.changed.notify_waiters();
    }

    /// (pending, in flight)
    pub fn counts(&self) -> (usize, usize) {
        let state = self.state.lock();
        (state.pending.len(), state.in_flight.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn marks_coalesce_over_the_settle_window() {
        let queue = WorkQueue::new(Duration::from_millis(500));
        let start = Instant::now();
        for _ in 0..10 {
            queue.mark(Path::new("a"), Hint::Meta);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        queue.mark(Path::new("a"), Hint::Content);
        let (path, hint, attempts) = queue.next().await;
        assert_eq!(
            (path.as_path(), hint, attempts),
            (Path::new("a"), Hint::Content, 0)
        );
        // Ten marks 100 ms apart: due 500 ms after the last one, not after the first.
        assert!(start.elapsed() >= Duration::from_millis(1500));
        assert_eq!(queue.counts(), (0, 1));
        queue.finish(&path, Finish::Done, attempts);
        assert_eq!(queue.counts(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn continuous_marks_are_still_served_by_the_deadline() {
        let queue = std::sync::Arc::new(WorkQueue::new(Duration::from_millis(100)));
        let marker = queue.clone();
        tokio::spawn(async move {
            loop {
                marker.mark(Path::new("busy"), Hint::Content);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let start = Instant::now();
        let (path, _, _) = queue.next().await;
        assert_eq!(path, Path::new("busy"));
        assert!(start.elapsed() <= Duration::from_millis(1000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_mark_while_in_flight_runs_the_path_again_afterwards() {
        let queue = WorkQueue::new(Duration::from_millis(10));
        queue.mark(Path::new("p"), Hint::Meta);
        let (path, _, attempts) = queue.next().await;
        queue.mark(Path::new("p"), Hint::Content);
        // Not handed out twice at once.
        assert_eq!(queue.counts(), (0, 1));
        queue.finish(&path, Finish::Done, attempts);
        let (again, hint, _) = queue.next().await;
        assert_eq!((again.as_path(), hint), (Path::new("p"), Hint::Content));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_back_off_and_count_attempts() {
        let queue = WorkQueue::new(Duration::ZERO);
        queue.mark(Path::new("r"), Hint::Content);
        let (path, hint, attempts) = queue.next().await;
        let before = Instant::now();
        queue.finish(
            &path,
            Finish::Retry {
                delay: Duration::from_secs(2),
                hint,
            },
            attempts,
        );
        let (_, _, attempts) = queue.next().await;
        assert_eq!(attempts, 1);
        assert!(before.elapsed() >= Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_path_that_changed_while_looked_at_waits_the_settle_window_not_a_backoff() {
        let queue = WorkQueue::new(Duration::from_millis(300));
        queue.mark(Path::new("c"), Hint::Content);
        let (path, hint, attempts) = queue.next().await;
        let before = Instant::now();
        queue.finish(&path, Finish::Again { hint }, attempts);
        let (_, again, attempts) = queue.next().await;
        assert_eq!((again, attempts), (Hint::Content, 0));
        assert!(before.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn paused_queue_hands_out_nothing_until_resumed() {
        let queue = std::sync::Arc::new(WorkQueue::new(Duration::ZERO));
        queue.set_paused(true);
        queue.mark(Path::new("x"), Hint::Meta);
        let waiter = queue.clone();
        let task = tokio::spawn(async move { waiter.next().await });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!task.is_finished());
        queue.set_paused(false);
        assert_eq!(task.await.unwrap().0, Path::new("x"));
    }

    #[tokio::test(start_paused = true)]
    async fn draining_makes_settling_work_due_at_once() {
        let queue = WorkQueue::new(Duration::from_secs(3600));
        queue.mark(Path::new("late"), Hint::Content);
        queue.start_draining();
        let start = Instant::now();
        queue.next().await;
        assert!(start.elapsed() < Duration::from_secs(1));
    }
}
