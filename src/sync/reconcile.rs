//! The reconcile pass: at start (and after a failure that may have lost marks), everything that
//! differs between the backing tree and the index is marked, so what changed while the engine was
//! not looking is caught up by the same path that serves live events.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::engine::Engine;
use super::index::IndexEntry;
use super::local::{FileStat, Observed};
use super::queue::Hint;
use crate::progress::{Progress, Unit};

/// The longest wait before a failed reconcile pass is run again.
const RECONCILE_RETRY_MAX: Duration = Duration::from_secs(60);

impl Engine {
    /// Runs a pass on the blocking pool. Until one completes, status never reports the mount
    /// settled; a pass that fails (an I/O error in the backing tree) is run again, and the error
    /// shows meanwhile.
    pub(super) fn start_reconcile(self: &Arc<Self>) {
        self.report.lock().unwrap().reconciled = false;
        let engine = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut delay = Duration::from_secs(1);
            while let Err(err) = engine.reconcile() {
                tracing::error!("reconcile failed: {err:#}; trying again in {delay:?}");
                engine
                    .report
                    .lock()
                    .unwrap()
                    .error(format!("reconcile: {err:#}"));
                std::thread::sleep(delay);
                delay = (delay * 2).min(RECONCILE_RETRY_MAX);
            }
        });
    }

    fn reconcile(&self) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let mut marked = 0u64;
        let walked = Progress::new("reconcile, backing folder", None, Unit::Items("paths"));
        self.backing.walk(Path::new(""), &mut |path, observed| {
            walked.add(1);
            let differs = match observed {
                Observed::Directory => false,
                Observed::Absent => false,
                Observed::Unreadable => {
                    self.note_unreadable(path);
                    false
                }
                Observed::Special => true,
                Observed::File(stat) => match path.to_str() {
                    None => true,
                    Some(key) => match self.index.get(key) {
                        Ok(Some(entry)) => !entry_matches(&entry, &stat),
                        _ => true,
                    },
                },
            };
            if differs && !self.config.ignore.is_ignored(path) {
                self.queue.mark(path, Hint::Content);
                marked += 1;
            }
        })?;
        drop(walked);
        let indexed = self.index.paths_under("")?;
        let unsure = self.index.unsure_paths()?;
        let checked = Progress::new(
            "reconcile, index",
            Some((indexed.len() + unsure.len()) as u64),
            Unit::Items("paths"),
        );
        // An indexed path whose file is gone, or whose name now stays local (an ignore rule
        // added since), has a record to delete. One the daemon may not look at keeps it.
        for path in indexed.into_iter().chain(unsure) {
            checked.add(1);
            let path = Path::new(&path);
            if self.config.ignore.is_ignored(path)
                || !matches!(
                    self.backing.observe(path)?,
                    Observed::File(_) | Observed::Unreadable
                )
            {
                self.queue.mark(path, Hint::Meta);
                marked += 1;
            }
        }
        drop(checked);
        // Records whose content is not known to be up (sent with no content, or before uploads
        // existed) get it once uploads are on; `upload` answers skip_upload for what the
        // service holds already, so this costs little. Their look reuses the entry's hash.
        if self.uploads.may_send() {
            let not_up = self.index.paths_not_up()?;
            if !not_up.is_empty() {
                tracing::info!("{} records whose content may not be up", not_up.len());
            }
            for path in not_up {
                self.queue.mark(Path::new(&path), Hint::Meta);
                marked += 1;
            }
        }
        tracing::info!(
            "reconcile: {marked} paths to look at, found in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        self.report.lock().unwrap().reconciled = true;
        Ok(())
    }
}

/// The entry was made from this very file state (ctime included: a chmod or rename moves it).
fn entry_matches(entry: &IndexEntry, stat: &FileStat) -> bool {
    super::decide::same_content(entry, stat) && entry.ctime_ns == stat.ctime_ns
}
