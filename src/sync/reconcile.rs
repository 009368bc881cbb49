//! The reconcile pass: at start (and after a failure that may have lost marks), everything that
//! differs between the backing tree and the index is marked, so what changed while the engine was
//! not looking is caught up by the same path that serves live events.
//!
//! Deletes found this way were not made through the mount, so they pass the mass-deletion guard:
//! when most indexed files are gone at once (a disk that did not mount under BACKING, a folder
//! moved away behind the mount's back), their deletes are held for the user instead of sent.

use std::collections::HashSet;
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

/// Fewer deletes than this found at once are never held: a few files removed while unmounted
/// are the user's ordinary work.
const MASS_DELETE_MIN: usize = 10;

/// Whether `gone` of `indexed` files found missing at once is a mass deletion: more than half
/// of them, as rclone bisync's `--max-delete` default (50 %) judges it, and at least
/// `MASS_DELETE_MIN`. (An empty BACKING is refused before this, at mount, whatever its size.)
pub(super) fn is_mass_deletion(gone: usize, indexed: usize) -> bool {
    gone >= MASS_DELETE_MIN && gone * 2 > indexed
}

/// Deletes held by the guard: the paths, and why, as status tells it.
#[derive(Default)]
pub(super) struct HeldDeletes {
    pub paths: HashSet<String>,
    pub why: Option<String>,
}

impl Engine {
    /// Runs a pass on the blocking pool. Until one completes, status never reports the mount
    /// settled; a pass that fails (an I/O error in the backing tree) is run again, and the error
    /// shows meanwhile.
    pub(super) fn start_reconcile(self: &Arc<Self>) {
        self.report.lock().reconciled = false;
        let engine = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut delay = Duration::from_secs(1);
            while let Err(err) = engine.reconcile() {
                tracing::error!("reconcile failed: {err:#}; trying again in {delay:?}");
                engine.report.lock().error(format!("reconcile: {err:#}"));
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
                        // Its hash is known: a rename or link of it reuses the hash.
                        Ok(Some(entry)) if entry_matches(&entry, &stat) => {
                            let mut hashes = self.hashes.lock();
                            let stamp = hashes.stamp(stat.ino);
                            hashes.hashed(&stat, &entry.hash, stamp);
                            false
                        }
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
        // added since), has a record to delete. One the daemon may not look at keeps it. An
        // unsure note's path goes on with the call it is about.
        let indexed_count = indexed.len();
        let mut gone = Vec::new();
        for (path, is_unsure) in indexed
            .into_iter()
            .map(|p| (p, false))
            .chain(unsure.into_iter().map(|p| (p, true)))
        {
            checked.add(1);
            let ignored = self.config.ignore.is_ignored(Path::new(&path));
            if ignored
                || !matches!(
                    self.backing.observe(Path::new(&path))?,
                    Observed::File(_) | Observed::Unreadable
                )
            {
                if is_unsure || ignored {
                    self.queue.mark(Path::new(&path), Hint::Meta);
                    marked += 1;
                } else {
                    gone.push(path);
                }
            }
        }
        drop(checked);
        if is_mass_deletion(gone.len(), indexed_count) {
            let why = format!(
                "{} of the {indexed_count} indexed files are gone from the backing folder, \
                 found at start (not seen deleted through the mount, or deleted just before the \
                 daemon was stopped or killed): their records are kept; \
                 `maxlofs release-deletes MOUNTPOINT` deletes them, putting the files back \
                 keeps them",
                gone.len()
            );
            tracing::warn!("deletes held: {why}");
            self.hold_deletes(gone, why);
        } else {
            self.hold_deletes(Vec::new(), String::new());
            for path in gone {
                self.queue.mark(Path::new(&path), Hint::Meta);
                marked += 1;
            }
        }
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
        self.report.lock().reconciled = true;
        Ok(())
    }
}

impl Engine {
    fn hold_deletes(&self, paths: Vec<String>, why: String) {
        let mut held = self.held_deletes.lock();
        held.why = (!paths.is_empty()).then_some(why);
        held.paths = paths.into_iter().collect();
    }

    /// Whether the guard holds the delete of `key`'s record.
    pub(super) fn holds_delete(&self, key: &str) -> bool {
        self.held_deletes.lock().paths.contains(key)
    }

    /// `path` is no longer the guard's to hold: its file is back, or the user acted on it
    /// through the mount (a delete made there is theirs and goes out).
    pub(super) fn unhold(&self, path: &Path) {
        let mut held = self.held_deletes.lock();
        if held.paths.is_empty() {
            return;
        }
        if let Some(key) = path.to_str() {
            held.paths.remove(key);
        }
        if held.paths.is_empty() {
            held.why = None;
        }
    }

    /// The user released the held deletes: each path is looked at again and, if its file is
    /// still gone, its record deleted. Answers how many were released.
    pub fn release_held_deletes(&self) -> usize {
        let held = std::mem::take(&mut *self.held_deletes.lock());
        tracing::info!("{} held deletes released", held.paths.len());
        for path in &held.paths {
            self.queue.mark(Path::new(path), Hint::Meta);
        }
        held.paths.len()
    }
}

/// The entry was made from this very file state (ctime included: a chmod or rename moves it).
fn entry_matches(entry: &IndexEntry, stat: &FileStat) -> bool {
    super::decide::same_content(entry, stat) && entry.ctime_ns == stat.ctime_ns
}
