//! The engine's orchestration: takes filesystem events and turns them into marks on the work
//! queue, runs the workers that look at each marked path (`execute`), supervises them, and
//! answers status. What to do about a path is decided in `decide`, what an error means in
//! `failure`, and the reconcile pass that catches up after a stop is in `reconcile`.
//!
//! Workers compare states, not replay operations: for a path they look at the file now and at the
//! index entry (what the service acknowledged), and send the one call that makes the service match.
//! That is what makes a temp file that lived inside the settle window send nothing, makes a
//! safe-save an update of the original record, and makes a crash at any instant recoverable by
//! looking at every path again (reconcile).

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;

use super::execute::Failed;
use super::failure::UNREADABLE;
use super::failure::{io_meaning, verdict, Io, Verdict};
use super::hash_cache::{HashBudget, HashCache};
use super::heal::{HealConfig, Healer, NotTaken};
use super::ignore::IgnoreRules;
use super::index::Index;
use super::local::{Backing, FileStat, Observed};
use super::queue::{Finish, Hint, WorkQueue};
use super::reconcile::HeldDeletes;
use super::upload::{UploadConfig, Uploads};
use crate::report::{PathReason, StatusReport};
use maxlofs_api::{GrantId, MediaApi};
use maxlofs_fs::{Event, EventSink, MountStatus, OpenWriters, StatusSource};

pub struct SyncConfig {
    pub grant: GrantId,
    pub prefix: String,
    pub settle: Duration,
    pub concurrency: usize,
    pub no_delete: bool,
    pub ignore: IgnoreRules,
    pub upload: UploadConfig,
    pub heal: HealConfig,
}

/// Local-only and failed lists in status are capped so status stays small.
const STATUS_LIST_LIMIT: usize = 100;

#[derive(Default, Serialize, Clone, Debug)]
pub struct Totals {
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
}

#[derive(Default)]
pub(super) struct Report {
    pub failed: BTreeMap<String, String>,
    pub local_only: BTreeMap<String, String>,
    pub paused: Option<String>,
    pub last_error: Option<String>,
    /// When `last_error` happened, in seconds since the epoch.
    pub last_error_at: Option<i64>,
    pub totals: Totals,
    pub reconciled: bool,
}

impl Report {
    /// Notes `why` as the last error, and when it happened: status shows its age, so that an
    /// error long since overcome is not taken for trouble now.
    pub fn error(&mut self, why: String) {
        self.last_error = Some(why);
        self.last_error_at = Some(chrono::Utc::now().timestamp());
    }
}

pub struct Engine {
    pub(super) config: SyncConfig,
    pub(super) api: Arc<dyn MediaApi>,
    pub(super) index: Arc<Index>,
    pub(super) backing: Arc<Backing>,
    pub(super) queue: WorkQueue,
    pub(super) report: Mutex<Report>,
    /// Content changes per inode, and each file's last hash: the one place a hash is reused.
    pub(super) hashes: Mutex<HashCache>,
    pub(super) hash_budget: HashBudget,
    pub(super) uploads: Uploads,
    /// Files open for writing through the mount (shared with the filesystem): none is sent.
    pub(super) writers: Arc<OpenWriters>,
    /// Paths whose look found their file held by a writer, by inode: the next content change or
    /// close of that inode marks them, whichever of its names the event carries (a hard link
    /// made while the file was open has no index entry that would name it).
    waiting_for_writers: Mutex<HashMap<u64, HashSet<PathBuf>>>,
    events: mpsc::UnboundedSender<Event>,
    intake: Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
    /// Events sent but not yet turned into marks: they count as pending work.
    unmarked_events: Arc<AtomicUsize>,
    /// Deletes found behind the mount's back and held by the mass-deletion guard (`reconcile`).
    pub(super) held_deletes: Mutex<HeldDeletes>,
    /// Scrub and restore jobs (`heal`).
    pub(super) heal: Healer,
}

/// How long the intake lets events gather after the first of a burst (they are only marked,
/// then settle for `settle_ms`, so this adds nothing a user sees).
const INTAKE_GATHER: Duration = Duration::from_millis(5);

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
    fn status_json(&self, mount: &MountStatus<'_>) -> String {
        let status = StatusReport {
            open_for_writing: mount.open_for_writing,
            writing: mount.writing.to_vec(),
            transport: Some(mount.transport.name().to_string()),
            ..self.status()
        };
        crate::report::encode_bounded(&status)
    }

    fn verify_findings_page(&self, from: u64) -> Option<String> {
        let rows = self.heal.verify_findings(from, PAGE_ROWS)?;
        Some(crate::report::encode_page(from, rows, PAGE_ROWS))
    }

    fn release_held_deletes(&self) -> usize {
        Engine::release_held_deletes(self)
    }

    fn heal(&self, request: &[u8]) -> Result<(), maxlofs_fs::Errno> {
        let has_content = self.heal.config.content.is_some();
        self.heal
            .ask(request, has_content)
            .map_err(|not| match not {
                NotTaken::Malformed => maxlofs_fs::Errno::EINVAL,
                NotTaken::Busy => maxlofs_fs::Errno::EBUSY,
                NotTaken::NoContent => maxlofs_fs::Errno::EOPNOTSUPP,
            })
    }
}

/// Verify findings read per page; as many as fit are sent.
const PAGE_ROWS: u64 = 500;

/// How a look at a path ended.
pub(super) enum Outcome {
    Done,
    /// Looked at again once it settles (it is still changing), with no backoff.
    Again,
    Retry,
}

/// How a look goes on after a failed step, as the verdict on it says.
pub(super) enum Next {
    /// The action goes on without the call: its purpose is met.
    Settled,
    /// The action goes on with a create in place of the update.
    CreateInstead,
    /// The look ends so.
    End(Outcome),
}

impl Next {
    /// How the look ends when the failed step was its last.
    pub(super) fn outcome(self) -> Outcome {
        match self {
            Next::Settled => Outcome::Done,
            // Only an update adopted from a 409 ends here: its record vanished in between, and
            // the next look makes a new one.
            Next::CreateInstead => Outcome::Retry,
            Next::End(outcome) => outcome,
        }
    }
}

impl Engine {
    pub fn new(
        config: SyncConfig,
        api: Arc<dyn MediaApi>,
        index: Index,
        backing: Backing,
        writers: Arc<OpenWriters>,
    ) -> Arc<Engine> {
        let (events, intake) = mpsc::unbounded_channel();
        Arc::new(Engine {
            queue: WorkQueue::new(config.settle),
            heal: Healer::new(config.heal.clone()),
            uploads: Uploads::new(&config.upload),
            config,
            api,
            index: Arc::new(index),
            backing: Arc::new(backing),
            report: Mutex::default(),
            hashes: Mutex::default(),
            hash_budget: HashBudget::new(maxlofs_api::hash::default_workers()),
            writers,
            waiting_for_writers: Mutex::default(),
            events,
            intake: Mutex::new(Some(intake)),
            unmarked_events: Arc::default(),
            held_deletes: Mutex::default(),
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
        let intake = self.intake.lock().take().expect("started once");
        tokio::spawn(self.clone().run_intake(intake));
        for _ in 0..self.config.concurrency.max(1) {
            tokio::spawn(self.clone().run_worker());
        }
        tokio::spawn(self.clone().run_healer());
        self.start_reconcile();
    }

    /// Turns events into marks, a batch at a time, off the async workers (index lookups and
    /// walks block). A batch that fails part way loses marks: a reconcile pass finds them again.
    async fn run_intake(self: Arc<Self>, mut intake: mpsc::UnboundedReceiver<Event>) {
        let mut batch = Vec::new();
        while intake.recv_many(&mut batch, 1024).await > 0 {
            // Events come in bursts (a cp -r, an rm -rf). Waiting a moment lets a burst's events
            // gather and be taken as one batch. Otherwise each event wakes this task, and the
            // blocking pool after it, often on the other CPU, while the FUSE request that sent
            // it waits.
            tokio::time::sleep(INTAKE_GATHER).await;
            if !intake.is_empty() {
                intake.recv_many(&mut batch, 4096).await;
            }
            let events = std::mem::take(&mut batch);
            let count = events.len();
            let engine = self.clone();
            let taken = tokio::task::spawn_blocking(move || {
                events
                    .into_iter()
                    .for_each(|event| engine.take_event(event))
            })
            .await;
            self.unmarked_events.fetch_sub(count, Ordering::SeqCst);
            if let Err(err) = taken {
                let why = format!("taking events failed ({err}); a reconcile pass catches up");
                tracing::error!("{why}");
                self.report.lock().error(why);
                self.start_reconcile();
            }
        }
    }

    /// Hands out due paths, one at a time. Each look runs on the blocking pool (it reads and
    /// writes the index and hashes) holding an `InFlight` guard: a panic in it ends that look,
    /// never this worker, and the guard puts the path back to be tried again.
    async fn run_worker(self: Arc<Self>) {
        loop {
            let (path, hint, attempts) = self.queue.next().await;
            let guard = InFlight {
                engine: self.clone(),
                path,
                hint,
                attempts,
                finished: false,
            };
            let look = tokio::task::spawn_blocking(move || {
                let mut guard = guard;
                // Every line logged during the look (the service's calls it waits for
                // included) carries the path it is about.
                let span = tracing::debug_span!("look", path = ?guard.path);
                let _look = span.enter();
                let outcome = guard.engine.sync_path(&guard.path, guard.hint);
                guard.finish(outcome);
            });
            if let Err(err) = look.await {
                let why = format!("a look at a path failed: {err}");
                tracing::error!("{why}");
                self.report.lock().error(why);
            }
        }
    }

    /// The mount's session ended: a writer whose release never came (a lazily detached mount can
    /// end before the kernel delivers it) is gone all the same, and its files are looked at as
    /// after a change.
    pub fn session_ended(&self) {
        // A scrub pass under way stops at the next file; the next pass goes on from it.
        self.heal.stop();
        for (_, ino) in self.writers.forget_all() {
            self.inode_changed(ino);
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
        let was_paused = self.report.lock().paused.take().is_some();
        if was_paused {
            tracing::info!("resuming sending");
        }
        self.queue.set_paused(false);
    }

    pub fn is_paused(&self) -> bool {
        self.report.lock().paused.is_some()
    }

    pub fn status(&self) -> StatusReport {
        // In this order: a writer's close queues its event before it stops counting, and an
        // event is counted unmarked until its mark is queued, so no work is missed in between.
        let open_for_writing = self.writers.count();
        let unmarked = self.unmarked_events.load(Ordering::SeqCst);
        let (pending, in_flight) = self.queue.counts();
        let (upload_bytes_left, uploaded_bytes, upload_rate) = self.uploads.progress();
        let corrupted = super::heal::corrupted_list(&self.index);
        let report = self.report.lock();
        let held = self.held_deletes.lock();
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
            pending: pending + unmarked,
            open_for_writing,
            writing: Vec::new(),
            in_flight,
            failed: list(&report.failed),
            failed_count: report.failed.len(),
            local_only: list(&report.local_only),
            local_only_count: report.local_only.len(),
            paused: report.paused.clone(),
            last_error: report.last_error.clone(),
            last_error_at: report.last_error_at,
            created: report.totals.created,
            updated: report.totals.updated,
            deleted: report.totals.deleted,
            reconciled: report.reconciled,
            indexed: self.index.count(),
            upload_bytes_left,
            uploaded_bytes,
            upload_rate,
            upload_eta_secs: (upload_rate > 0).then(|| upload_bytes_left.div_ceil(upload_rate)),
            uploads_off: self.uploads.off(),
            // Known to the filesystem side, which adds it (`status_json`).
            transport: None,
            held_deletes: held.paths.len(),
            held_deletes_why: held.why.clone(),
            heal: self.heal.status(),
            corrupted: corrupted.iter().take(STATUS_LIST_LIMIT).cloned().collect(),
            corrupted_count: corrupted.len(),
        }
    }

    /// Turns one filesystem event into marks.
    fn take_event(&self, event: Event) {
        match event {
            Event::Created { path } => self.queue.mark(&path, Hint::Content),
            // `path` is where the inode was when the change was reported; it may be renamed or
            // replaced by now, so every indexed name of that inode is looked at too.
            Event::ContentChanged { path, ino } => {
                self.inode_changed(ino);
                self.queue.mark(&path, Hint::Content);
            }
            // The last writer closed without a change since the last report: the look it was
            // waiting for may reuse the hash of a content change reported before.
            Event::WriterClosed { path, ino } => {
                self.mark_other_links(ino, Hint::Meta);
                self.mark_waiting(ino, Hint::Meta);
                self.queue.mark(&path, Hint::Meta);
            }
            // No name in the mount, but the inode may keep names the mount never saw (links made
            // in BACKING directly), and its writers may have changed it: those are looked at as
            // after a change. So are the paths that waited for it, so that no wait outlives it.
            Event::WriterGone { ino } => self.inode_changed(ino),
            Event::TimesSet { path, ino } => {
                self.mark_other_links(ino, Hint::Meta);
                self.queue.mark(&path, Hint::Meta);
            }
            Event::PermissionsChanged { path } => self.relook_unreadable(&path),
            Event::Removed { path, .. } => {
                self.unhold(&path);
                self.queue.mark(&path, Hint::Meta);
            }
            Event::Linked { path } => self.queue.mark(&path, Hint::Meta),
            Event::Renamed { from, to, is_dir } => {
                self.unhold(&from);
                self.queue.mark(&from, Hint::Meta);
                self.queue.mark(&to, Hint::Meta);
                if is_dir {
                    self.mark_tree(&from);
                    self.mark_tree(&to);
                }
            }
            Event::Exchanged { a, b } => {
                for path in [a, b] {
                    self.unhold(&path);
                    self.queue.mark(&path, Hint::Meta);
                    self.mark_tree(&path);
                }
            }
        }
    }

    /// The content of inode `ino` changed: its known hash is dropped, and its indexed names and
    /// the paths that waited for its writers are marked.
    fn inode_changed(&self, ino: u64) {
        self.hashes.lock().changed(ino);
        self.mark_other_links(ino, Hint::Content);
        self.mark_waiting(ino, Hint::Content);
    }

    /// Marks the paths that waited for a writer of `ino`. A path still held is noted again by
    /// its next look.
    fn mark_waiting(&self, ino: u64, hint: Hint) {
        let waiting = self.waiting_for_writers.lock().remove(&ino);
        for path in waiting.into_iter().flatten() {
            self.queue.mark(&path, hint);
        }
    }

    /// Whether a writer holds the file `stat` describes; if so, `path` is marked again at the next
    /// change or close of an inode of its number (events name no device: one of another
    /// filesystem marks it once more than needed). The path is noted before the writers are
    /// asked: a close in between marks it once more than needed, never not at all.
    pub(super) fn held_by_writer(&self, stat: &FileStat, path: &Path) -> bool {
        let ino = stat.ino;
        self.waiting_for_writers
            .lock()
            .entry(ino)
            .or_default()
            .insert(path.to_path_buf());
        if self.writers.is_open((stat.dev, ino)) {
            return true;
        }
        let mut waiting = self.waiting_for_writers.lock();
        if let Some(paths) = waiting.get_mut(&ino) {
            paths.remove(path);
            if paths.is_empty() {
                waiting.remove(&ino);
            }
        }
        false
    }

    /// Inodes whose writers some path waits for.
    #[cfg(test)]
    pub(super) fn inodes_waited_for(&self) -> usize {
        self.waiting_for_writers.lock().len()
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

    /// Marks every indexed path below `dir` and every entry below it in the backing tree. A
    /// directory the daemon may not list is reported (its records stay as they are).
    fn mark_tree(&self, dir: &Path) {
        // Listed again below if still so; gone from the list if moved away.
        self.forget_unreadable(dir);
        if let Some(dir_str) = dir.to_str() {
            match self.index.paths_under(dir_str) {
                Ok(paths) => paths
                    .iter()
                    .for_each(|p| self.queue.mark(Path::new(p), Hint::Meta)),
                Err(err) => tracing::error!("index lookup failed: {err:#}"),
            }
        }
        let unreadable = match self.backing.observe(dir) {
            Ok(Observed::Directory) => {
                let walked = self
                    .backing
                    .walk(dir, &mut |path, observed| match observed {
                        Observed::Directory => {}
                        // A look would see only a directory there, and say nothing.
                        Observed::Unreadable => self.note_unreadable(path),
                        _ => self.queue.mark(path, Hint::Meta),
                    });
                match walked {
                    Err(err) if io_meaning(&err) == Io::Unreadable => true,
                    Err(err) => {
                        tracing::warn!("walking {:?}: {err}", dir);
                        false
                    }
                    Ok(()) => false,
                }
            }
            Ok(Observed::Unreadable) => true,
            _ => false,
        };
        if unreadable {
            self.note_unreadable(dir);
        }
    }

    /// Lists `path` as local-only: the daemon's user may not look into it.
    pub(super) fn note_unreadable(&self, path: &Path) {
        self.note_local_only(path.to_string_lossy().into_owned(), Some(UNREADABLE));
    }

    /// After a chmod or chown of `path`, what was reported unreadable at or below it is looked
    /// at again: the change may have let the daemon in.
    fn relook_unreadable(&self, path: &Path) {
        for key in self.forget_unreadable(path) {
            let path = Path::new(&key);
            match self.backing.observe(path) {
                Ok(Observed::Directory | Observed::Unreadable) => self.mark_tree(path),
                _ => self.queue.mark(path, Hint::Meta),
            }
        }
    }

    /// Takes the paths at or below `path` off the unreadable list, and answers them.
    fn forget_unreadable(&self, path: &Path) -> Vec<String> {
        let mut report = self.report.lock();
        let keys: Vec<String> = report
            .local_only
            .iter()
            .filter(|(key, why)| why.as_str() == UNREADABLE && Path::new(key).starts_with(path))
            .map(|(key, _)| key.clone())
            .collect();
        for key in &keys {
            report.local_only.remove(key);
        }
        keys
    }

    pub(super) fn note_local_only(&self, key: String, reason: Option<&str>) {
        let mut report = self.report.lock();
        match reason {
            Some(reason) => {
                report.local_only.insert(key, reason.to_string());
            }
            None => {
                report.local_only.remove(&key);
            }
        }
    }

    /// Carries out the failure policy's verdict on a failed step of `key`'s look: the one place
    /// a verdict takes effect.
    pub(super) fn apply(&self, key: &str, Failed(step, failure): Failed) -> Next {
        let verdict = verdict(step, &failure, self.config.grant);
        let mut report = self.report.lock();
        Next::End(match verdict {
            Verdict::Settled => return Next::Settled,
            Verdict::CreateInstead => return Next::CreateInstead,
            // A normal race, not an error: neither the status nor the log calls it one.
            Verdict::Again => {
                tracing::debug!("{key:?}: {failure}");
                Outcome::Again
            }
            Verdict::Retry { why } => {
                tracing::debug!("{key:?}: will retry: {why:?}");
                report.error(format!("{key}: {why}"));
                Outcome::Retry
            }
            Verdict::Pause => {
                if report.paused.is_none() {
                    let why = "the service refused the session key (403); sending is paused until \
                               the key file changes or SIGHUP";
                    tracing::error!("{why}");
                    report.paused = Some(why.to_string());
                    self.queue.set_paused(true);
                }
                Outcome::Retry
            }
            Verdict::Fail { why } => {
                tracing::error!("{key:?}: the service rejected it: {why:?}");
                report.failed.insert(key.to_string(), why.clone());
                report.error(format!("{key}: {why}"));
                Outcome::Done
            }
            Verdict::Unreadable => {
                tracing::warn!("{key:?} stays as it is: {UNREADABLE}");
                report
                    .local_only
                    .insert(key.to_string(), UNREADABLE.to_string());
                Outcome::Done
            }
        })
    }
}

/// A path handed to a worker. Dropped without `finish` (its task panicked or was cancelled), it
/// puts the path back to be tried again, so no path stays in flight forever.
struct InFlight {
    engine: Arc<Engine>,
    path: PathBuf,
    hint: Hint,
    attempts: u32,
    finished: bool,
}

impl InFlight {
    fn finish(&mut self, outcome: Outcome) {
        let finish = match outcome {
            Outcome::Done => Finish::Done,
            Outcome::Again => Finish::Again { hint: self.hint },
            Outcome::Retry => Finish::Retry {
                delay: backoff(self.attempts),
                hint: self.hint,
            },
        };
        self.engine.queue.finish(&self.path, finish, self.attempts);
        self.finished = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.finished {
            self.finish(Outcome::Retry);
        }
    }
}

/// Exponential backoff with jitter, per path: 200 ms doubling to 2 s, times 0.5–1.5. Another
/// path's success never cuts it short. The cap is low because a failing service is spared by the
/// clients' pacers (`api::pacer`), not by this: a path waiting at a pacer holds a worker and
/// sends nothing, and under a service failing one call in three a path's look (several calls)
/// fails often, and a longer wait would leave its last paths waiting for minutes.
fn backoff(attempts: u32) -> Duration {
    let base = Duration::from_millis(200).saturating_mul(1 << attempts.min(4));
    base.min(Duration::from_secs(2))
        .mul_f64(rand::random::<f64>() + 0.5)
}
