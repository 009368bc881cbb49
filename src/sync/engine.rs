//! The engine: takes filesystem events, turns them into marks on the work queue, and runs workers
//! that bring each marked path's record in line with what the backing tree holds.
//!
//! Workers compare states, not replay operations: for a path they look at the file now and at the
//! index entry (what the service acknowledged), and send the one call that makes the service match.
//! That is what makes a temp file that lived inside the settle window send nothing, makes a
//! safe-save an update of the original record, and makes a crash at any instant recoverable by
//! looking at every path again (reconcile).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};

use super::hasher;
use super::ignore::IgnoreRules;
use super::index::{Index, IndexEntry};
use super::local::{Backing, FileStat, Observed};
use super::queue::{Finish, Hint, WorkQueue};
use crate::api::{ApiError, CreateOutcome, GrantId, MediaApi, MediaId, MediaState, NewMedia};
use crate::contract;
use crate::fs::{Event, EventSink, StatusSource};
use crate::progress::{Progress, Unit};
use crate::status::{PathReason, StatusReport};

pub struct SyncConfig {
    pub grant: GrantId,
    pub prefix: String,
    pub settle: Duration,
    pub concurrency: usize,
    pub no_delete: bool,
    pub ignore: IgnoreRules,
}

/// Why a path too long to name stays local.
const TOO_LONG: &str = "path longer than PATH_MAX (4096 bytes)";

/// Files up to this size are hashed on the worker itself rather than on the blocking pool.
const INLINE_HASH_MAX: u64 = 64 * 1024;

/// Local-only and failed lists in status are capped so status stays small.
const STATUS_LIST_LIMIT: usize = 100;

#[derive(Default, Serialize, Clone, Debug)]
pub struct Totals {
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
}

#[derive(Default)]
struct Report {
    failed: BTreeMap<String, String>,
    local_only: BTreeMap<String, String>,
    paused: Option<String>,
    last_error: Option<String>,
    totals: Totals,
    reconciled: bool,
}

pub struct Engine {
    config: SyncConfig,
    api: Arc<dyn MediaApi>,
    index: Index,
    backing: Arc<Backing>,
    queue: WorkQueue,
    report: Mutex<Report>,
    /// Content changes per inode, and the hash of each inode's content as of its last hash.
    versions: Mutex<Versions>,
    hash_slots: Semaphore,
    events: mpsc::UnboundedSender<Event>,
    intake: Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
    /// Events sent but not yet turned into marks: they count as pending work.
    unmarked_events: Arc<AtomicUsize>,
    indexed: AtomicU64,
}

/// The filesystem's handle on the engine: queues the event and returns at once.
struct EngineSink {
    events: mpsc::UnboundedSender<Event>,
    unmarked_events: Arc<AtomicUsize>,
}

impl EventSink for EngineSink {
    fn send(&self, event: Event) {
        self.unmarked_events.fetch_add(1, Ordering::SeqCst);
        // Fails only once the engine is gone, at exit; the next start's reconcile covers it.
        if self.events.send(event).is_err() {
            self.unmarked_events.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl StatusSource for Engine {
    fn status_json(&self, open_for_writing: usize) -> String {
        let status = StatusReport {
            open_for_writing,
            ..self.status()
        };
        serde_json::to_string(&status).expect("status serializes")
    }
}

enum Outcome {
    Done,
    Retry,
}

impl Engine {
    pub fn new(
        config: SyncConfig,
        api: Arc<dyn MediaApi>,
        index: Index,
        backing: Backing,
    ) -> Arc<Engine> {
        let (events, intake) = mpsc::unbounded_channel();
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Arc::new(Engine {
            queue: WorkQueue::new(config.settle),
            config,
            api,
            index,
            backing: Arc::new(backing),
            report: Mutex::default(),
            versions: Mutex::default(),
            hash_slots: Semaphore::new(cores),
            events,
            intake: Mutex::new(Some(intake)),
            unmarked_events: Arc::default(),
            indexed: AtomicU64::new(0),
        })
    }

    pub fn event_sink(&self) -> Arc<dyn EventSink> {
        Arc::new(EngineSink {
            events: self.events.clone(),
            unmarked_events: self.unmarked_events.clone(),
        })
    }

    /// Starts the intake, the workers and the reconcile pass on the current tokio runtime.
    pub fn start(self: &Arc<Self>) {
        let mut intake = self.intake.lock().unwrap().take().expect("started once");
        let engine = self.clone();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while intake.recv_many(&mut batch, 1024).await > 0 {
                let engine = engine.clone();
                let events = std::mem::take(&mut batch);
                // Walks and index lookups are blocking work: keep them off the async workers.
                let _ = tokio::task::spawn_blocking(move || {
                    for event in events {
                        engine.take_event(event);
                        engine.unmarked_events.fetch_sub(1, Ordering::SeqCst);
                    }
                })
                .await;
            }
        });
        for _ in 0..self.config.concurrency.max(1) {
            let engine = self.clone();
            tokio::spawn(async move {
                loop {
                    let (path, hint, attempts) = engine.queue.next().await;
                    let finish = match engine.sync_path(&path, hint).await {
                        Outcome::Done => Finish::Done,
                        Outcome::Retry => Finish::Retry {
                            delay: backoff(attempts),
                            hint,
                        },
                    };
                    engine.queue.finish(&path, finish, attempts);
                }
            });
        }
        let engine = self.clone();
        tokio::task::spawn_blocking(move || {
            // Until a pass completes, status never reports the mount settled; a pass that fails
            // (an I/O error in the backing tree) is run again, and the error shows meanwhile.
            let mut delay = Duration::from_secs(1);
            while let Err(err) = engine.reconcile() {
                tracing::error!("reconcile failed: {err:#}; trying again in {delay:?}");
                engine.report.lock().unwrap().last_error = Some(format!("reconcile: {err:#}"));
                std::thread::sleep(delay);
                delay = (delay * 2).min(RECONCILE_RETRY_MAX);
            }
        });
        if let Ok(count) = self.index.count() {
            self.indexed.store(count, Ordering::Relaxed);
        }
    }

    /// Waits until everything queued has been sent, up to `timeout`. True when nothing is left.
    pub async fn drain(&self, timeout: Duration) -> bool {
        self.queue.start_draining();
        let settled = async {
            while !self.is_idle() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(timeout, settled).await.is_ok()
    }

    fn is_idle(&self) -> bool {
        self.unmarked_events.load(Ordering::SeqCst) == 0 && self.queue.counts() == (0, 0)
    }

    /// Resumes sending after a refused key, with new keys if the caller has them.
    pub fn resume(&self) {
        let was_paused = self.report.lock().unwrap().paused.take().is_some();
        if was_paused {
            tracing::info!("resuming sending");
        }
        self.queue.set_paused(false);
    }

    pub fn is_paused(&self) -> bool {
        self.report.lock().unwrap().paused.is_some()
    }

    pub fn status(&self) -> StatusReport {
        let (pending, in_flight) = self.queue.counts();
        let pending = pending + self.unmarked_events.load(Ordering::SeqCst);
        let report = self.report.lock().unwrap();
        let list = |map: &BTreeMap<String, String>| {
            map.iter()
                .take(STATUS_LIST_LIMIT)
                .map(|(path, reason)| PathReason {
                    path: path.clone(),
                    reason: reason.clone(),
                })
                .collect()
        };
        StatusReport {
            pending,
            open_for_writing: 0,
            writing: Vec::new(),
            in_flight,
            failed: list(&report.failed),
            failed_count: report.failed.len(),
            local_only: list(&report.local_only),
            local_only_count: report.local_only.len(),
            paused: report.paused.clone(),
            last_error: report.last_error.clone(),
            created: report.totals.created,
            updated: report.totals.updated,
            deleted: report.totals.deleted,
            reconciled: report.reconciled,
            indexed: self.indexed.load(Ordering::Relaxed),
        }
    }

    /// Turns one filesystem event into marks.
    fn take_event(&self, event: Event) {
        match event {
            Event::Created { path } => self.queue.mark(&path, Hint::Content),
            // `path` is where the inode was when the change was reported; it may be renamed or
            // replaced by now, so every indexed name of that inode is looked at too.
            Event::ContentChanged { path, ino } => {
                self.versions.lock().unwrap().changed(ino);
                self.mark_other_links(ino, Hint::Content);
                self.queue.mark(&path, Hint::Content);
            }
            Event::TimesSet { path, ino } => {
                self.mark_other_links(ino, Hint::Meta);
                self.queue.mark(&path, Hint::Meta);
            }
            Event::Removed { path, .. } | Event::Linked { path } => {
                self.queue.mark(&path, Hint::Meta);
            }
            Event::Renamed { from, to, is_dir } => {
                self.queue.mark(&from, Hint::Meta);
                self.queue.mark(&to, Hint::Meta);
                if is_dir {
                    self.mark_tree(&from);
                    self.mark_tree(&to);
                }
            }
            Event::Exchanged { a, b } => {
                for path in [a, b] {
                    self.queue.mark(&path, Hint::Meta);
                    self.mark_tree(&path);
                }
            }
        }
    }

    fn mark_other_links(&self, ino: u64, hint: Hint) {
        match self.index.find_by_ino(ino) {
            Ok(links) => {
                for (path, _) in links {
                    self.queue.mark(Path::new(&path), hint);
                }
            }
            Err(err) => tracing::error!("index lookup failed: {err:#}"),
        }
    }

    /// Marks every indexed path below `dir` and every entry below it in the backing tree.
    fn mark_tree(&self, dir: &Path) {
        if let Some(dir_str) = dir.to_str() {
            match self.index.paths_under(dir_str) {
                Ok(paths) => paths
                    .iter()
                    .for_each(|p| self.queue.mark(Path::new(p), Hint::Meta)),
                Err(err) => tracing::error!("index lookup failed: {err:#}"),
            }
        }
        if let Ok(Observed::Directory) = self.backing.observe(dir) {
            let walked = self.backing.walk(dir, &mut |path, observed| {
                if observed != Observed::Directory {
                    self.queue.mark(path, Hint::Meta);
                }
            });
            if let Err(err) = walked {
                tracing::warn!("walking {}: {err}", dir.display());
            }
        }
    }

    /// At start: everything that differs between the backing tree and the index is marked, so
    /// what changed while unmounted, or was lost to a crash, is caught up.
    fn reconcile(&self) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let mut marked = 0u64;
        let walked = Progress::new("reconcile, backing folder", None, Unit::Items("paths"));
        self.backing.walk(Path::new(""), &mut |path, observed| {
            walked.add(1);
            let differs = match observed {
                Observed::Directory => false,
                Observed::Absent => false,
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
        for path in indexed.into_iter().chain(unsure) {
            checked.add(1);
            if !matches!(self.backing.observe(Path::new(&path))?, Observed::File(_)) {
                self.queue.mark(Path::new(&path), Hint::Meta);
                marked += 1;
            }
        }
        drop(checked);
        tracing::info!(
            "reconcile: {marked} paths to look at, found in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        self.report.lock().unwrap().reconciled = true;
        Ok(())
    }

    fn note_local_only(&self, key: String, reason: Option<&str>) {
        let mut report = self.report.lock().unwrap();
        match reason {
            Some(reason) => {
                report.local_only.insert(key, reason.to_string());
            }
            None => {
                report.local_only.remove(&key);
            }
        }
    }

    /// Brings the record of one path in line with the backing tree.
    async fn sync_path(&self, path: &Path, hint: Hint) -> Outcome {
        let Some(key) = path.to_str().map(str::to_string) else {
            let shown = path.to_string_lossy().into_owned();
            tracing::warn!("{shown:?} stays local: its name is not UTF-8");
            self.note_local_only(shown, Some("name is not UTF-8"));
            return Outcome::Done;
        };
        if self.config.ignore.is_ignored(path) {
            return Outcome::Done;
        }
        let observed = match self.backing.observe(path) {
            Ok(observed) => observed,
            // Longer than PATH_MAX: it cannot be named whole, so it cannot be read safely.
            Err(err) if err.raw_os_error() == Some(libc::ENAMETOOLONG) => {
                tracing::warn!("{key:.200}…: stays local: its path is longer than PATH_MAX");
                self.note_local_only(key, Some(TOO_LONG));
                return Outcome::Done;
            }
            Err(err) => {
                tracing::warn!("{key}: cannot look at it: {err}");
                self.report.lock().unwrap().last_error = Some(format!("{key}: {err}"));
                return Outcome::Retry;
            }
        };
        let entry = match self.index.get(&key) {
            Ok(entry) => entry,
            Err(err) => return self.local_failure(&key, err),
        };
        self.note_local_only(
            key.clone(),
            (observed == Observed::Special)
                .then_some("not a regular file (symlink, fifo, socket or device)"),
        );
        let result = match observed {
            Observed::File(stat) => self.sync_file(path, &key, stat, entry, hint).await,
            Observed::Absent | Observed::Directory | Observed::Special => match entry {
                Some(entry) => self.remove_record(&key, &entry).await,
                None => self.remove_unsure_record(&key).await,
            },
        };
        match result {
            Ok(outcome) => {
                if matches!(outcome, Outcome::Done) {
                    self.report.lock().unwrap().failed.remove(&key);
                }
                outcome
            }
            Err(failure) => self.api_failure(&key, failure),
        }
    }

    async fn sync_file(
        &self,
        path: &Path,
        key: &str,
        stat: FileStat,
        entry: Option<IndexEntry>,
        hint: Hint,
    ) -> Result<Outcome, Failure> {
        if let Some(entry) = &entry {
            // Only ctime moved (rename, chmod, link): nothing the record shows has changed.
            if hint == Hint::Meta && entry_matches_content(entry, &stat) {
                return Ok(Outcome::Done);
            }
        }
        // Taken before the look: a content change reported from now on is not in what we send.
        let stamp = self.versions.lock().unwrap().stamp(stat.ino);
        let Some((hash, stat, verified)) = self.file_hash(path, stat, hint).await? else {
            return Ok(Outcome::Retry);
        };
        let stamp = Checked {
            stamp,
            hash_verified: verified,
        };
        let media_path = self.media_path(path)?;
        let state = media_state(hash, stat.size, stat.ctime_ns, stat.mtime_ns);
        let mut media_id = entry.as_ref().map(|e| e.media_id);
        if let Some(entry) = &entry {
            if entry.hash == state.file_hash
                && entry.size == stat.size
                && entry.mtime_ns == stat.mtime_ns
            {
                self.remember_checked(path, key, entry.media_id, &state, stat, stamp)?;
                return Ok(Outcome::Done);
            }
        }
        if let Some(id) = media_id {
            match self.api.update(self.config.grant, id, &state).await {
                Ok(()) => {
                    self.report.lock().unwrap().totals.updated += 1;
                    self.remember_checked(path, key, id, &state, stat, stamp)?;
                    return Ok(Outcome::Done);
                }
                // The record is gone from the service: make a new one.
                Err(ApiError::NotFound) => media_id = None,
                Err(err) => return Err(Failure::Api(err)),
            }
        }
        debug_assert!(media_id.is_none());
        let media = NewMedia {
            media_path,
            state: state.clone(),
        };
        let media_json = serde_json::to_string(&media).expect("serializes");
        self.index
            .mark_unsure(key, &media_json)
            .map_err(Failure::index)?;
        let id = match self.api.create(self.config.grant, &media).await? {
            CreateOutcome::Created(id) => {
                self.report.lock().unwrap().totals.created += 1;
                id
            }
            CreateOutcome::Conflict(record) => {
                // The path already has a record (another device, or our own earlier send whose
                // acknowledgement was lost): adopt it, and make it show the local file.
                if record.is_deleted || record.state() != state {
                    self.api
                        .update(self.config.grant, record.media_id, &state)
                        .await?;
                    self.report.lock().unwrap().totals.updated += 1;
                }
                record.media_id
            }
        };
        self.remember_checked(path, key, id, &state, stat, stamp)?;
        Ok(Outcome::Done)
    }

    /// Writes the index entry, then looks at the file again: if it changed since the look that
    /// produced `state` (its stat differs, or a content change of its inode was reported
    /// meanwhile), the path is marked again. An event can name another hard link of the inode,
    /// and this name may not have been indexed when it was handled; this catches that.
    fn remember_checked(
        &self,
        path: &Path,
        key: &str,
        media_id: MediaId,
        state: &MediaState,
        stat: FileStat,
        checked: Checked,
    ) -> Result<(), Failure> {
        self.remember(key, media_id, state, stat, checked.hash_verified)?;
        let unchanged = matches!(
            self.backing.observe(path),
            Ok(Observed::File(now)) if entry_key(&now) == entry_key(&stat)
        ) && self.versions.lock().unwrap().stamp(stat.ino) == checked.stamp;
        if !unchanged {
            tracing::debug!("{key}: changed while it was sent; looking again");
            self.queue.mark(path, Hint::Content);
        }
        Ok(())
    }

    /// The file's hash and the stat it belongs to. A `Meta` look reuses a hash known to be the
    /// inode's content now: that of an indexed name of the inode with the same size and mtime
    /// (a rename or link), or the inode's last hash if no content change was reported since it
    /// was taken (times set). Otherwise the file is hashed, and hashed again if it changed
    /// meanwhile. `None`: it kept changing; look again later.
    async fn file_hash(
        &self,
        path: &Path,
        stat: FileStat,
        hint: Hint,
    ) -> Result<Option<(String, FileStat, bool)>, Failure> {
        if hint == Hint::Meta {
            let links = self.index.find_by_ino(stat.ino).map_err(Failure::index)?;
            if let Some((_, entry)) = links
                .into_iter()
                .find(|(_, e)| e.size == stat.size && e.mtime_ns == stat.mtime_ns)
            {
                return Ok(Some((entry.hash, stat, true)));
            }
            // Not verified: a write through a handle still open is reported only at its
            // release, so this may be stale until then (see `remember`).
            if let Some(hash) = self.versions.lock().unwrap().known_hash(&stat) {
                return Ok(Some((hash, stat, false)));
            }
        }
        let stamp = self.versions.lock().unwrap().stamp(stat.ino);
        let hashed = if stat.size <= INLINE_HASH_MAX {
            // Microseconds of work: a hand-off to another thread would cost more than it saves.
            hasher::hash_stable(&self.backing, path)
        } else {
            let _slot = self.hash_slots.acquire().await.expect("never closed");
            let backing = self.backing.clone();
            let path = path.to_path_buf();
            // Hashing is CPU and disk work: it runs on the blocking pool, never on a FUSE thread.
            tokio::task::spawn_blocking(move || hasher::hash_stable(&backing, &path))
                .await
                .map_err(|err| Failure::Local(format!("hashing task: {err}")))?
        };
        match hashed {
            Ok(Some((hash, stat))) => {
                self.versions.lock().unwrap().hashed(&stat, &hash, stamp);
                Ok(Some((hash, stat, true)))
            }
            Ok(None) => Ok(None),
            // Gone or replaced while we looked: the event that did it marks it again.
            Err(err)
                if matches!(
                    err.raw_os_error(),
                    Some(libc::ENOENT | libc::ELOOP | libc::EINVAL)
                ) =>
            {
                Err(Failure::Vanished)
            }
            Err(err) => Err(Failure::Local(format!("reading: {err}"))),
        }
    }

    /// No file and no index entry at `key`, but a create sent for it got no answer (lost on the
    /// way, or a crash): the service may hold a live record nothing names. Creating again finds
    /// it (a 409 names it, or this makes it), and it is deleted.
    async fn remove_unsure_record(&self, key: &str) -> Result<Outcome, Failure> {
        let Some(json) = self.index.unsure(key).map_err(Failure::index)? else {
            return Ok(Outcome::Done);
        };
        let media = serde_json::from_str::<NewMedia>(&json).ok();
        if let (Some(media), false) = (media, self.config.no_delete) {
            let found = match self.api.create(self.config.grant, &media).await {
                Ok(CreateOutcome::Created(id)) => Some(id),
                Ok(CreateOutcome::Conflict(record)) => {
                    (!record.is_deleted).then_some(record.media_id)
                }
                // Refused: that create can never have made a record either.
                Err(ApiError::BadRequest { .. }) => None,
                Err(err) => return Err(Failure::Api(err)),
            };
            if let Some(media_id) = found {
                match self.api.delete(self.config.grant, media_id).await {
                    Ok(()) => self.report.lock().unwrap().totals.deleted += 1,
                    Err(ApiError::NotFound) => {}
                    Err(err) => return Err(Failure::Api(err)),
                }
            }
        }
        self.index.clear_unsure(key).map_err(Failure::index)?;
        Ok(Outcome::Done)
    }

    /// The media_path a record of `path` has (under the mount's prefix).
    fn media_path(&self, path: &Path) -> Result<String, Failure> {
        contract::media_path(&self.config.prefix, path)
            .map_err(|err| Failure::Local(err.to_string()))
    }

    /// The file at `key` is gone: its record goes too (unless `--no-delete`).
    async fn remove_record(&self, key: &str, entry: &IndexEntry) -> Result<Outcome, Failure> {
        if self.config.no_delete {
            self.index.remove(key).map_err(Failure::index)?;
            self.indexed.fetch_sub(1, Ordering::Relaxed);
            return Ok(Outcome::Done);
        }
        // The entry is traded for an unsure note before the delete is sent: after a crash
        // between the service's delete and the index write, an entry left behind would vouch
        // for a record that is gone (and the file may be back at this path by then). The note
        // makes the next look find out, as for a create whose answer was lost.
        let media = NewMedia {
            media_path: self.media_path(Path::new(key))?,
            state: media_state(
                entry.hash.clone(),
                entry.size,
                entry.ctime_ns,
                entry.mtime_ns,
            ),
        };
        let media_json = serde_json::to_string(&media).expect("serializes");
        self.index
            .remove_as_unsure(key, &media_json)
            .map_err(Failure::index)?;
        self.indexed.fetch_sub(1, Ordering::Relaxed);
        match self.api.delete(self.config.grant, entry.media_id).await {
            Ok(()) => self.report.lock().unwrap().totals.deleted += 1,
            Err(ApiError::NotFound) => {}
            Err(err) => return Err(Failure::Api(err)),
        }
        self.index.clear_unsure(key).map_err(Failure::index)?;
        Ok(Outcome::Done)
    }

    /// Writes the index entry. A hash that was reused without being verified against the
    /// content is recorded with a ctime no file has, so that the next start's reconcile hashes
    /// the file again rather than trust it (a crash may have lost the event that would have).
    fn remember(
        &self,
        key: &str,
        media_id: MediaId,
        state: &MediaState,
        stat: FileStat,
        hash_verified: bool,
    ) -> Result<(), Failure> {
        let entry = IndexEntry {
            media_id,
            hash: state.file_hash.clone(),
            size: stat.size,
            mtime_ns: stat.mtime_ns,
            ctime_ns: if hash_verified {
                stat.ctime_ns
            } else {
                UNVERIFIED_CTIME
            },
            ino: stat.ino,
        };
        let existed = self.index.get(key).map_err(Failure::index)?.is_some();
        self.index.put(key, &entry).map_err(Failure::index)?;
        if !existed {
            self.indexed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn local_failure(&self, key: &str, err: anyhow::Error) -> Outcome {
        self.api_failure(key, Failure::Local(format!("{err:#}")))
    }

    /// The one place that decides what an error means for a path.
    fn api_failure(&self, key: &str, failure: Failure) -> Outcome {
        let mut report = self.report.lock().unwrap();
        match failure {
            Failure::Vanished => Outcome::Done,
            Failure::Api(ApiError::Transient(message)) => {
                tracing::debug!("{key}: transient error, will retry: {message}");
                report.last_error = Some(format!("{key}: {message}"));
                Outcome::Retry
            }
            Failure::Api(ApiError::Unauthorized) => {
                if report.paused.is_none() {
                    let why = "the service refused the session key (403); sending is paused until \
                               the key file changes or SIGHUP";
                    tracing::error!("{why}");
                    report.paused = Some(why.to_string());
                    self.queue.set_paused(true);
                }
                Outcome::Retry
            }
            Failure::Api(ApiError::NotFound) => {
                let why = format!("grant {} not found (404)", self.config.grant);
                tracing::error!("{key}: {why}");
                report.failed.insert(key.to_string(), why.clone());
                report.last_error = Some(why);
                Outcome::Done
            }
            Failure::Api(err @ ApiError::BadRequest { .. }) => {
                tracing::error!("{key}: the service rejected it: {err}");
                report.failed.insert(key.to_string(), err.to_string());
                report.last_error = Some(format!("{key}: {err}"));
                Outcome::Done
            }
            Failure::Local(message) => {
                tracing::warn!("{key}: {message}; will retry");
                report.last_error = Some(format!("{key}: {message}"));
                Outcome::Retry
            }
        }
    }
}

enum Failure {
    Api(ApiError),
    /// Local trouble (index write, read error): retried like a transient error.
    Local(String),
    /// The file went away while we looked; its removal is marked separately.
    Vanished,
}

impl Failure {
    fn index(err: anyhow::Error) -> Failure {
        Failure::Local(format!("index: {err:#}"))
    }
}

impl From<ApiError> for Failure {
    fn from(err: ApiError) -> Self {
        Failure::Api(err)
    }
}

fn entry_matches_content(entry: &IndexEntry, stat: &FileStat) -> bool {
    entry.ino == stat.ino && entry.size == stat.size && entry.mtime_ns == stat.mtime_ns
}

/// The ctime recorded with a hash that was not verified against the content: matches no file.
const UNVERIFIED_CTIME: i64 = i64::MIN;

/// What a look at a path took for granted, to be checked once its result is recorded.
#[derive(Clone, Copy)]
struct Checked {
    /// The inode's content stamp when the look began.
    stamp: Stamp,
    /// Whether the hash was computed (or taken from an entry of the same size and mtime), not
    /// reused from the inode's last hash.
    hash_verified: bool,
}

/// What identifies a file's content state: inode, size, mtime.
fn entry_key(stat: &FileStat) -> (u64, u64, i64) {
    (stat.ino, stat.size, stat.mtime_ns)
}

/// Where an inode's content stands: (changes reported that no inode could be named for, the
/// inode's last reported change). Equal stamps: no content change reported in between.
type Stamp = (u64, u64);

/// Content changes per inode and the last hash of each, so that a hash is reused only while no
/// change was reported since it was taken. In memory: after a restart, reconcile hashes anew.
#[derive(Default)]
struct Versions {
    /// Bumped when a change cannot be tied to an inode; invalidates every stamp and hash.
    epoch: u64,
    /// Generation of each inode's last reported content change.
    changes: HashMap<u64, u64>,
    next: u64,
    /// inode → (hash, size, stamp when hashing began).
    hashes: HashMap<u64, (String, u64, Stamp)>,
}

/// Above this many inodes tracked, the tables start over (as if everything had changed).
const VERSIONS_MAX: usize = 100_000;

impl Versions {
    fn stamp(&self, ino: u64) -> Stamp {
        (self.epoch, self.changes.get(&ino).copied().unwrap_or(0))
    }

    fn changed(&mut self, ino: u64) {
        if self.changes.len() >= VERSIONS_MAX {
            self.changed_unknown();
        }
        self.next += 1;
        self.changes.insert(ino, self.next);
        self.hashes.remove(&ino);
    }

    fn changed_unknown(&mut self) {
        self.epoch += 1;
        self.changes.clear();
        self.hashes.clear();
    }

    /// `hash` was taken of `stat`'s inode, which had `stamp` when hashing began.
    fn hashed(&mut self, stat: &FileStat, hash: &str, stamp: Stamp) {
        if self.stamp(stat.ino) != stamp {
            return;
        }
        if self.hashes.len() >= VERSIONS_MAX {
            self.hashes.clear();
        }
        self.hashes
            .insert(stat.ino, (hash.to_string(), stat.size, stamp));
    }

    /// The inode's last hash, if no content change was reported since and the size agrees.
    fn known_hash(&self, stat: &FileStat) -> Option<String> {
        let (hash, size, stamp) = self.hashes.get(&stat.ino)?;
        (*size == stat.size && *stamp == self.stamp(stat.ino)).then(|| hash.clone())
    }
}

fn entry_matches(entry: &IndexEntry, stat: &FileStat) -> bool {
    entry_matches_content(entry, stat) && entry.ctime_ns == stat.ctime_ns
}

/// A record's state: content hash and size, and times in nanoseconds since the epoch.
fn media_state(file_hash: String, file_size: u64, ctime_ns: i64, mtime_ns: i64) -> MediaState {
    MediaState {
        file_hash,
        file_size,
        ctime: iso8601_ns(ctime_ns),
        mtime: iso8601_ns(mtime_ns),
    }
}

fn iso8601_ns(ns: i64) -> String {
    contract::iso8601(
        ns.div_euclid(1_000_000_000),
        ns.rem_euclid(1_000_000_000) as u32,
    )
}

/// The longest wait before a failed reconcile pass is run again.
const RECONCILE_RETRY_MAX: Duration = Duration::from_secs(60);

/// Exponential backoff with jitter: 200 ms doubling to 30 s, times 0.5–1.5.
fn backoff(attempts: u32) -> Duration {
    let base = Duration::from_millis(200).saturating_mul(1 << attempts.min(8));
    base.min(Duration::from_secs(30))
        .mul_f64(rand::random::<f64>() + 0.5)
}
