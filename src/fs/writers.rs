//! Which backing inodes are open for writing through the mount. A file is sent to the catalog only
//! once its last writer has closed it: the sync engine asks here before it sends, and the release
//! of the last writer reports the close while holding the same lock, so a look that found the
//! file open is always followed by the event of its close.

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct OpenWriters {
    /// Backing `st_ino` → handles open for writing.
    counts: Mutex<HashMap<u64, usize>>,
}

impl OpenWriters {
    pub fn opened(&self, backing_ino: u64) {
        *self
            .counts
            .lock()
            .expect("writers lock")
            .entry(backing_ino)
            .or_default() += 1;
    }

    /// One writer of `backing_ino` closed; `report(last)` runs under the lock (it must only queue
    /// an event), with `last` true when no writer is left.
    pub fn closed(&self, backing_ino: u64, report: impl FnOnce(bool)) {
        let mut counts = self.counts.lock().expect("writers lock");
        let last = match counts.get_mut(&backing_ino) {
            Some(count) if *count > 1 => {
                *count -= 1;
                false
            }
            _ => {
                counts.remove(&backing_ino);
                true
            }
        };
        report(last);
    }

    pub fn is_open(&self, backing_ino: u64) -> bool {
        self.counts
            .lock()
            .expect("writers lock")
            .contains_key(&backing_ino)
    }

    /// How many files are open for writing.
    pub fn count(&self) -> usize {
        self.counts.lock().expect("writers lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_close_is_reported_as_last() {
        let writers = OpenWriters::default();
        writers.opened(7);
        writers.opened(7);
        writers.opened(8);
        assert_eq!(writers.count(), 2);
        let mut seen = Vec::new();
        writers.closed(7, |last| seen.push(last));
        assert!(writers.is_open(7));
        writers.closed(7, |last| seen.push(last));
        assert!(!writers.is_open(7) && writers.is_open(8));
        assert_eq!(seen, [false, true]);
    }
}
