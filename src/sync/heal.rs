//! Scrub, restore and verify jobs: the daemon's side of `maxlofs scrub MNT`, `maxlofs restore
//! MNT` and `maxlofs verify MNT`, and the same jobs on a backing folder that is not mounted.
//!
//! On a live mount a request arrives as an extended attribute set on the mount root
//! (`maxlofs_fs::HEAL_XATTR`, owner and root only) holding a `HealRequest` in JSON; one job runs
//! at a time, on the engine's runtime, and status reports it (`StatusReport::heal`) and every path
//! the index holds as corrupted (`StatusReport::corrupted`). The daemon holds the key, so the
//! command needs nothing more than `maxlofs status` does. On an unmounted folder the command
//! runs the job itself ([`run_job`] on a [`Workbench`] of the folder's index), with keys given.
//!
//! A scrub pass (`scrub::scrub_pass`) runs on a blocking thread at the `--scrub-rate`; with
//! `repair`, each path it found corrupted is then restored. A restore (`restore::restore`) puts
//! back a path's recorded content from the service: the paths asked for, or every path marked
//! corrupted when none is named. With `deleted` (`maxlofs restore --deleted`), each path asked
//! for is brought back from its last record before its delete (`Index::deleted`), where nothing
//! stands now; the engine then sends it as a new file. A verify (`verify::verify`) asks the service for the content of
//! every synced record; its findings are paged out through
//! `maxlofs_fs::VERIFY_FINDINGS_XATTR_PREFIX`. `--scrub-interval` starts a pass of its own that
//! often.

use parking_lot::Mutex;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::engine::Engine;
use super::index::{Index, DELETED_KEPT};
use super::local::Backing;
use super::queue::Hint;
use super::restore::{self, RestoreConfig, Source};
use super::scrub::{self, ScrubConfig, ScrubProgress};
use super::verify::{self, Finding};
use crate::report::{HealStatus, JobKind, PathReason};
use maxlofs_api::content_client::ContentApi;
use maxlofs_api::GrantId;

/// What `maxlofs scrub`, `maxlofs restore` and `maxlofs verify` ask of the daemon.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HealRequest {
    /// One scrub pass (or the rest of one), then, with `repair`, a restore of what it found.
    Scrub { repair: bool },
    /// A restore of these paths, or of every path marked corrupted when `paths` is empty.
    Restore {
        paths: Vec<String>,
        /// Each path is a deleted one, brought back from its last record (`Index::deleted`) and
        /// only where nothing stands now; `paths` must name some.
        #[serde(default)]
        deleted: bool,
    },
    /// A verify of the content of every synced record; deep (each content downloaded and
    /// hashed) with `floor_window_secs`, the window of the download floor.
    Verify { floor_window_secs: Option<u64> },
}

/// Why a request was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum NotTaken {
    /// Not a `HealRequest`, or a restore of deleted paths that names none.
    Malformed,
    /// A job is running.
    Busy,
    /// Restores and verifies need content calls, which the mount was not given.
    NoContent,
}

#[derive(Clone, Default)]
pub struct HealConfig {
    pub scrub: ScrubConfig,
    /// A scrub pass starts this often by itself (`--scrub-interval`); `None`: only when asked.
    pub scrub_interval: Option<Duration>,
    /// The content calls restores and verifies make (downloads: a mount that sends records only
    /// still has them); `None`: jobs that need them are refused.
    pub content: Option<Arc<dyn ContentApi>>,
}

/// The engine's job state: requests waiting, the job running, and what the last one did.
pub(super) struct Healer {
    pub(super) config: HealConfig,
    requests: mpsc::UnboundedSender<HealRequest>,
    intake: Mutex<Option<mpsc::UnboundedReceiver<HealRequest>>>,
    running: AtomicBool,
    /// Set when the engine stops: a pass under way ends early and resumes at the next mount.
    stop: Arc<AtomicBool>,
    jobs: AtomicU64,
    /// What the job running (or the last one) does.
    kind: Mutex<JobKind>,
    progress: Arc<ScrubProgress>,
    last: Mutex<Option<HealStatus>>,
}

/// Chunk fetches a restore makes before it gives up on one (a damaged download is fetched again).
const RESTORE_ATTEMPTS: u32 = 3;

impl Healer {
    pub(super) fn new(config: HealConfig) -> Healer {
        let (requests, intake) = mpsc::unbounded_channel();
        Healer {
            config,
            requests,
            intake: Mutex::new(Some(intake)),
            running: AtomicBool::new(false),
            stop: Arc::new(AtomicBool::new(false)),
            jobs: AtomicU64::new(0),
            kind: Mutex::new(JobKind::default()),
            progress: Arc::new(ScrubProgress::default()),
            last: Mutex::new(None),
        }
    }

    /// Takes a request from the mount root's extended attribute: queued for the job task.
    pub(super) fn ask(&self, request: &[u8], has_content: bool) -> Result<(), NotTaken> {
        let request = serde_json::from_slice(request).map_err(|_| NotTaken::Malformed)?;
        self.take(request, has_content)
    }

    /// Queues `request` unless a job runs or it needs content calls the mount has not.
    fn take(&self, request: HealRequest, has_content: bool) -> Result<(), NotTaken> {
        if matches!(&request, HealRequest::Restore { paths, deleted: true } if paths.is_empty()) {
            return Err(NotTaken::Malformed);
        }
        if request.needs_content() && !has_content {
            return Err(NotTaken::NoContent);
        }
        // Claimed here, so that a second request while this one waits is refused too.
        if self.running.swap(true, Ordering::SeqCst) {
            return Err(NotTaken::Busy);
        }
        self.jobs.fetch_add(1, Ordering::SeqCst);
        *self.kind.lock() = request.kind();
        *self.last.lock() = None;
        for counter in [
            &self.progress.files_checked,
            &self.progress.bytes_read,
            &self.progress.corrupted,
        ] {
            counter.store(0, Ordering::SeqCst);
        }
        // Fails only once the engine is gone.
        let _ = self.requests.send(request);
        Ok(())
    }

    /// The job running, or the last one.
    pub(super) fn status(&self) -> Option<HealStatus> {
        let job = self.jobs.load(Ordering::SeqCst);
        if job == 0 {
            return None;
        }
        if let Some(last) = self.last.lock().clone() {
            return Some(last);
        }
        Some(HealStatus {
            job,
            kind: *self.kind.lock(),
            running: true,
            files_checked: self.progress.files_checked.load(Ordering::Relaxed),
            bytes_read: self.progress.bytes_read.load(Ordering::Relaxed),
            corrupted_found: self.progress.corrupted.load(Ordering::Relaxed),
            ..HealStatus::default()
        })
    }

    /// Up to `limit` findings of the last job's verify from the `from`-th on; `None` when the
    /// last job was no verify.
    pub(super) fn verify_findings(&self, from: u64, limit: u64) -> Option<Vec<Finding>> {
        let last = self.last.lock();
        let findings = &last.as_ref()?.verify.as_ref()?.findings;
        let from = usize::try_from(from).unwrap_or(usize::MAX);
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        Some(findings.iter().skip(from).take(limit).cloned().collect())
    }

    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl HealRequest {
    pub fn kind(&self) -> JobKind {
        match self {
            HealRequest::Scrub { .. } => JobKind::Scrub,
            HealRequest::Restore { .. } => JobKind::Restore,
            HealRequest::Verify { .. } => JobKind::Verify,
        }
    }

    /// Whether the job calls the service's content API (downloads).
    pub fn needs_content(&self) -> bool {
        match self {
            HealRequest::Scrub { repair } => *repair,
            HealRequest::Restore { .. } | HealRequest::Verify { .. } => true,
        }
    }
}

impl Engine {
    /// Runs the jobs asked for, one at a time, and the passes `--scrub-interval` starts.
    pub(super) async fn run_healer(self: Arc<Self>) {
        let Some(mut intake) = self.heal.intake.lock().take() else {
            return;
        };
        let interval = self.heal.config.scrub_interval;
        loop {
            let request = match interval {
                None => intake.recv().await,
                Some(every) => match tokio::time::timeout(every, intake.recv()).await {
                    Ok(request) => request,
                    Err(_) => {
                        // An interval pass waits for a job the user started.
                        let has_content = self.heal.config.content.is_some();
                        let request = HealRequest::Scrub { repair: false };
                        match self.heal.take(request, has_content) {
                            Ok(()) => intake.recv().await,
                            Err(_) => continue,
                        }
                    }
                },
            };
            let Some(request) = request else { return };
            let done = self.heal(request).await;
            *self.heal.last.lock() = Some(done);
            self.heal.running.store(false, Ordering::SeqCst);
        }
    }

    async fn heal(&self, request: HealRequest) -> HealStatus {
        let bench = Workbench {
            index: self.index.clone(),
            backing: self.backing.clone(),
            content: self.heal.config.content.clone(),
            grant: self.config.grant,
            scrub: self.heal.config.scrub,
            progress: self.heal.progress.clone(),
            stop: self.heal.stop.clone(),
        };
        let deleted_paths = match &request {
            HealRequest::Restore {
                paths,
                deleted: true,
            } => paths.clone(),
            _ => Vec::new(),
        };
        let done = run_job(bench, request, self.heal.jobs.load(Ordering::SeqCst)).await;
        // Put in place behind the mount, so no event tells the engine: marked here, a restored
        // file gets its new record now, not at the next mount's reconcile.
        for path in deleted_paths {
            self.queue.mark(Path::new(&path), Hint::Content);
        }
        done
    }
}

/// What a job works on: a live mount's index and BACKING (the engine's), or those of a backing
/// folder that is not mounted.
#[derive(Clone)]
pub struct Workbench {
    pub index: Arc<Index>,
    pub backing: Arc<Backing>,
    /// The content calls restores and verifies make; `None`: a job that needs them fails.
    pub content: Option<Arc<dyn ContentApi>>,
    pub grant: GrantId,
    pub scrub: ScrubConfig,
    /// What a scrub pass under way has done so far (status shows it).
    pub progress: Arc<ScrubProgress>,
    /// Set, a scrub pass under way ends early; the next one goes on from there.
    pub stop: Arc<AtomicBool>,
}

impl Workbench {
    /// The content calls, which restores and verifies need.
    fn content(&self) -> anyhow::Result<&dyn ContentApi> {
        self.content
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("no content calls were given"))
    }
}

/// Runs `request` on `bench` as job number `job`: what it did.
pub async fn run_job(bench: Workbench, request: HealRequest, job: u64) -> HealStatus {
    let mut done = HealStatus {
        job,
        kind: request.kind(),
        ..HealStatus::default()
    };
    let from_deleted = matches!(request, HealRequest::Restore { deleted: true, .. });
    let to_restore = match request {
        HealRequest::Scrub { repair } => {
            let pass = {
                let bench = bench.clone();
                tokio::task::spawn_blocking(move || {
                    scrub::scrub_pass(
                        &bench.index,
                        &bench.backing,
                        &bench.scrub,
                        &bench.progress,
                        &bench.stop,
                    )
                })
                .await
                .unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()))
            };
            match pass {
                Ok(report) => {
                    tracing::info!(
                        files = report.files_checked,
                        bytes = report.bytes_read,
                        corrupted = report.corrupted.len(),
                        finished = report.finished,
                        "scrub pass"
                    );
                    done.files_checked = report.files_checked;
                    done.bytes_read = report.bytes_read;
                    done.corrupted_found = report.corrupted.len() as u64;
                    done.scrub_finished = report.finished;
                    if repair {
                        report.corrupted
                    } else {
                        Vec::new()
                    }
                }
                Err(err) => {
                    tracing::warn!("scrub pass: {err:#}");
                    done.error = Some(format!("{err:#}"));
                    Vec::new()
                }
            }
        }
        HealRequest::Restore { paths, .. } if paths.is_empty() => {
            match bench.index.corrupted_paths() {
                Ok(paths) => paths,
                Err(err) => {
                    done.error = Some(format!("listing corrupted paths: {err:#}"));
                    Vec::new()
                }
            }
        }
        HealRequest::Restore { paths, .. } => paths,
        HealRequest::Verify { floor_window_secs } => {
            match verify_all(&bench, floor_window_secs.map(Duration::from_secs)).await {
                Ok(report) => done.verify = Some(report),
                Err(err) => {
                    tracing::warn!("verify: {err:#}");
                    done.error = Some(format!("{err:#}"));
                }
            }
            Vec::new()
        }
    };
    for path in to_restore {
        match restore_one(&bench, &path, from_deleted).await {
            Ok(()) => done.restored += 1,
            Err(why) => done.failed.push(PathReason { path, reason: why }),
        }
    }
    done
}

async fn verify_all(
    bench: &Workbench,
    deep: Option<Duration>,
) -> anyhow::Result<verify::VerifyReport> {
    let content = bench.content()?;
    let records = bench.index.synced_records()?;
    verify::verify(content, bench.grant, &records, deep).await
}

/// Restores one path from its index entry or, `deleted`, from its last record before its
/// delete. `restore` checks just before its rename that the file is still the one scrub found
/// (an edit made meanwhile is kept, and the restore refused), or that nothing stands at a
/// deleted path; a file renamed in from its entry matches it, so no look sends anything for it.
async fn restore_one(bench: &Workbench, path: &str, deleted: bool) -> Result<(), String> {
    let content = bench.content().map_err(|err| format!("{err:#}"))?;
    let source = match deleted {
        false => Source::Indexed(path.to_string()),
        true => match bench.index.deleted(path) {
            Ok(Some(record)) => Source::Deleted {
                path: path.to_string(),
                hash: record.hash,
                size: record.size,
                mtime_ns: record.mtime_ns,
            },
            Ok(None) => {
                return Err(format!(
                    "no deleted record of this path is known \
                     (the index keeps the last {DELETED_KEPT} deletes)"
                ))
            }
            Err(err) => return Err(format!("reading its deleted record: {err:#}")),
        },
    };
    let config = RestoreConfig {
        grant: bench.grant,
        attempts: RESTORE_ATTEMPTS.try_into().expect("not zero"),
        floor_window: maxlofs_api::content_client::DOWNLOAD_FLOOR_WINDOW,
    };
    let restored = restore::restore(&bench.index, &bench.backing, content, &config, &source).await;
    match restored {
        Ok(restored) => {
            tracing::info!(
                path,
                downloaded = restored.downloaded_bytes,
                resumed = restored.resumed_bytes,
                refetched_chunks = restored.refetched_chunks,
                "restored"
            );
            Ok(())
        }
        Err(err) => {
            tracing::warn!(path, "restore: {err:#}");
            Err(format!("{err:#}"))
        }
    }
}

/// The paths scrub found damaged, with what differs, by path.
pub fn corrupted_list(index: &Index) -> Vec<PathReason> {
    match index.corrupted_marks() {
        Ok(marks) => marks
            .into_iter()
            .map(|(path, mark)| PathReason {
                path,
                reason: match mark {
                    Ok(mark) => crate::report::corruption_reason(&mark.ranges, mark.found_at),
                    Err(err) => format!("corrupted ({err:#})"),
                },
            })
            .collect(),
        Err(err) => {
            tracing::warn!("listing corrupted paths: {err:#}");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_of_deleted_paths_must_name_them() {
        let healer = Healer::new(HealConfig::default());
        let named_none = br#"{"restore":{"paths":[],"deleted":true}}"#;
        assert_eq!(healer.ask(named_none, true), Err(NotTaken::Malformed));
        // A request without the field restores from the index.
        let request: HealRequest = serde_json::from_str(r#"{"restore":{"paths":["a"]}}"#).unwrap();
        assert_eq!(
            request,
            HealRequest::Restore {
                paths: vec!["a".into()],
                deleted: false
            }
        );
        let named = br#"{"restore":{"paths":["a"],"deleted":true}}"#;
        assert_eq!(healer.ask(named, true), Ok(()));
    }
}
