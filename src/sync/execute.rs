//! The executor: looks at one path (file, index entry, unsure note, writers), asks `decide` what
//! to do, and carries the action out: hashing, the service's calls, the index writes. Every error
//! goes through `failure::verdict`. A look runs whole on the blocking pool (index reads and
//! writes, hashing), waiting there for the service's calls, which the async runtime drives: one
//! hand-off per path, and nothing blocking on the async workers.

use std::path::Path;
use std::sync::Arc;

use super::decide::{
    after_conflict, decide, same_content, Action, AfterConflict, Content, Facts, Local,
};
use super::engine::{Engine, Next, Outcome};
use super::failure::UNREADABLE;
use super::failure::{Failure, Step};
use super::hash_cache::Stamp;
use super::hasher::{self, HashRead, Hashed};
use super::index::{IdTaken, IndexEntry, Unsure};
use super::local::{FileStat, Observed, TIME_UNSAYABLE};
use super::queue::Hint;
use super::upload::changed;
use maxlofs_api::contract;
use maxlofs_api::{ApiError, CreateOutcome, MediaId, MediaState, NewMedia};

/// Why a path too long to name stays local.
const TOO_LONG: &str = "path longer than PATH_MAX (4096 bytes)";
/// Shown in status for a file whose bytes are those scrub found damaged, moved or copied since.
const DAMAGED_COPY: &str = "a copy of bytes scrub found damaged: never sent (restore the original \
                            from Maxlo, or replace this file with a good copy)";
/// Shown in status for a file scrub found damaged in place.
pub(super) const CORRUPTED: &str =
    "corrupted locally: its bytes changed under an unchanged stat (maxlofs restore MNT --corrupted)";

/// Files up to this size are hashed without waiting for the hashing budget.
const SMALL_HASH_MAX: u64 = 64 * 1024;

/// What a look at a path found.
struct Look {
    key: String,
    local: Local,
    entry: Option<IndexEntry>,
    unsure: Option<Unsure>,
    writing: bool,
}

/// What a look took for granted, to be checked once its result is recorded.
#[derive(Clone, Copy)]
struct Checked {
    /// The inode's content stamp when the look began.
    stamp: Stamp,
    /// Whether the hash was computed, or reused for the same inode, size and mtime (see
    /// `HashCache::known_hash`).
    hash_verified: bool,
}

/// A failed step of an action.
pub(super) struct Failed(pub Step, pub Failure);

/// Why an action stopped short.
enum Stop {
    /// A step failed; the verdict on it is still to be carried out.
    Failed(Failed),
    /// The verdict on a failed call was carried out where the action might have gone on past
    /// it; the look ends so.
    Ended(Outcome),
}

impl From<Failed> for Stop {
    fn from(failed: Failed) -> Self {
        Stop::Failed(failed)
    }
}

pub(super) trait At<T> {
    fn at(self, step: Step) -> Result<T, Failed>;
}

impl<T, E: Into<Failure>> At<T> for Result<T, E> {
    fn at(self, step: Step) -> Result<T, Failed> {
        self.map_err(|err| Failed(step, err.into()))
    }
}

impl From<anyhow::Error> for Failure {
    fn from(err: anyhow::Error) -> Self {
        match err.downcast_ref::<IdTaken>() {
            Some(taken) => untrue(taken),
            None => Failure::index(err),
        }
    }
}

fn untrue(taken: &IdTaken) -> Failure {
    Failure::Untrue(format!(
        "the service named {taken} for this path; refused, the record is left as it is"
    ))
}

/// The ctime recorded with a hash that was not verified against the content: matches no file
/// (1677: no kernel's clock sets a ctime that early). It is a time the contract's form can say,
/// as it must be: a delete's unsure note describes the record with the entry's times.
const UNVERIFIED_CTIME: i128 = i64::MIN as i128;

impl Engine {
    /// Brings the record of one path in line with the backing tree.
    /// Runs on the blocking pool.
    pub(super) fn sync_path(self: &Arc<Self>, path: &Path, hint: Hint) -> Outcome {
        let look = match self.look(path) {
            Ok(Some(look)) => look,
            Ok(None) => return Outcome::Done,
            Err(failure) => {
                let key = path.to_string_lossy();
                return self.apply(&key, Failed(Step::Local, failure)).outcome();
            }
        };
        let key = look.key.clone();
        match self.carry_out(path, look, hint) {
            Ok(()) => {
                self.report.lock().failed.remove(&key);
                Outcome::Done
            }
            Err(Stop::Failed(failed)) => self.apply(&key, failed).outcome(),
            Err(Stop::Ended(outcome)) => outcome,
        }
    }

    /// Carries out the verdict on a failed call that the action may go on past: how it goes on,
    /// or, for any other verdict, the end of the look.
    fn judge(&self, key: &str, step: Step, err: ApiError) -> Result<Next, Stop> {
        match self.apply(key, Failed(step, Failure::Api(err))) {
            Next::End(outcome) => Err(Stop::Ended(outcome)),
            next => Ok(next),
        }
    }

    /// Waits, on the blocking pool, for a call the async runtime carries out.
    fn wait<F: std::future::Future>(&self, call: F) -> F::Output {
        tokio::runtime::Handle::current().block_on(call)
    }

    /// The facts of `path`, or `None` when its name stays local (reported in status).
    fn look(&self, path: &Path) -> Result<Option<Look>, Failure> {
        let Some(key) = path.to_str().map(str::to_string) else {
            let shown = path.to_string_lossy().into_owned();
            tracing::warn!("{shown:?} stays local: its name is not UTF-8");
            self.note_local_only(shown, Some("name is not UTF-8"));
            return Ok(None);
        };
        let observed = match self.backing.observe(path) {
            Ok(observed) => observed,
            // Longer than PATH_MAX: it cannot be named whole, so it cannot be read safely.
            Err(err) if err.raw_os_error() == Some(libc::ENAMETOOLONG) => {
                tracing::warn!("{key:.200?}…: stays local: its path is longer than PATH_MAX");
                self.note_local_only(key, Some(TOO_LONG));
                return Ok(None);
            }
            Err(err) => return Err(Failure::io("cannot look at it", err)),
        };
        // Damaged in place (scrub found its bytes changed under the stat it had): never sent as
        // a new version while it is as found. An edit gives it a new ctime, and is sent.
        let corrupted = match observed {
            Observed::File(stat) => self
                .index
                .corrupted(&key)?
                .is_some_and(|mark| mark.ctime_ns == stat.ctime_ns),
            _ => false,
        };
        let local_only = match observed {
            Observed::Special => Some("not a regular file (symlink, fifo, socket or device)"),
            Observed::Unreadable => Some(UNREADABLE),
            Observed::File(stat) if !stat.times_can_be_sent() => Some(TIME_UNSAYABLE),
            Observed::File(_) if corrupted => Some(CORRUPTED),
            _ => None,
        };
        self.note_local_only(key.clone(), local_only);
        // Whether a file is there is unknown, or its state cannot be said, or it is damaged: its
        // record is left as it is.
        if matches!(local_only, Some(UNREADABLE | TIME_UNSAYABLE | CORRUPTED)) {
            return Ok(None);
        }
        // An ignored name is local: whatever record it has should not exist.
        let local = match observed {
            Observed::File(stat) if !self.config.ignore.is_ignored(path) => {
                Local::File { stat, hash: None }
            }
            _ => Local::Absent,
        };
        let writing = matches!(&local, Local::File { stat, .. } if self.held_by_writer(stat, path));
        let entry = self.index.get(&key)?;
        // A path with an entry has no unsure note that could change the decision.
        let unsure = match entry {
            Some(_) => None,
            None => self.index.unsure(&key)?,
        };
        Ok(Some(Look {
            entry,
            unsure,
            key,
            local,
            writing,
        }))
    }

    fn carry_out(self: &Arc<Self>, path: &Path, look: Look, hint: Hint) -> Result<(), Stop> {
        let Look {
            key,
            mut local,
            entry,
            unsure,
            writing,
        } = look;
        let mut checked = None;
        let mut content = self.uploads.initial();
        // What hashing the file read for its upload, when this look hashed it.
        let mut read = None;
        loop {
            let action = decide(Facts {
                local: &local,
                entry: entry.as_ref(),
                unsure: unsure.as_ref(),
                hint,
                writing,
                no_delete: self.config.no_delete,
                content,
            });
            tracing::trace!("{key:?}: {action:?}");
            let Local::File { stat, hash } = &local else {
                return self.carry_out_removal(&key, action, entry, unsure);
            };
            self.unhold(path);
            let media_id = match action {
                Action::Nothing => return Ok(()),
                Action::WaitForWriter => {
                    tracing::debug!("{key:?}: open for writing; sent once closed");
                    return Ok(());
                }
                Action::Hash => {
                    // Taken before the hash: a change reported from now on is not in what we send.
                    let stamp = self.hashes.lock().stamp(stat.ino);
                    let (hash, stat, verified, hash_read) =
                        self.file_hash(path, *stat, hint).at(Step::Local)?;
                    checked = Some(Checked {
                        stamp,
                        hash_verified: verified,
                    });
                    read = hash_read;
                    // The bytes scrub found damaged, under another name or stat now (renamed,
                    // chmodded, copied): never sent in place of the good content.
                    if let Some(good) = self.index.damaged_copy_of(&hash).at(Step::Local)? {
                        tracing::warn!("{key:?} stays local: a damaged copy of {good}");
                        self.note_local_only(key, Some(DAMAGED_COPY));
                        return Ok(());
                    }
                    local = Local::File {
                        stat,
                        hash: Some(hash),
                    };
                    continue;
                }
                Action::Upload => {
                    let hash = hash.as_deref().expect("hashed before an upload");
                    content = self.wait(self.upload(path, *stat, hash, read.take()))?;
                    // An upload takes seconds or hours: a file deleted, renamed away or changed
                    // meanwhile gets no record of what it was (the content is up all the same,
                    // and a new name of it finds it there). The event that did it has marked
                    // the path; marking it again covers a change made outside the mount.
                    let checked = checked.as_ref().expect("hashed before an upload");
                    if !self.unchanged_since(path, stat, checked) {
                        tracing::debug!("{key:?}: gone or changed while its content was sent");
                        self.queue.mark(path, Hint::Content);
                        return Ok(());
                    }
                    continue;
                }
                Action::Remember { media_id } => media_id,
                Action::Update { media_id } => {
                    let state = self.state_of(stat, hash).at(Step::Local)?;
                    match self.wait(self.api.update(self.config.grant, media_id, &state)) {
                        Ok(()) => {
                            self.report.lock().totals.updated += 1;
                            media_id
                        }
                        // Gone from the service (a 404): a new record is made. The entry of the
                        // gone one goes first, so that the create's unsure note is all that
                        // names the path should its answer be lost.
                        Err(err) => {
                            self.judge(&key, Step::Update, err)?;
                            if entry.is_some() {
                                self.index.remove(&key).at(Step::Local)?;
                            }
                            let media_path = self.media_path(path).at(Step::Local)?;
                            self.create(&key, NewMedia { media_path, state })?
                        }
                    }
                }
                Action::Create => {
                    let media = NewMedia {
                        media_path: self.media_path(path).at(Step::Local)?,
                        state: self.state_of(stat, hash).at(Step::Local)?,
                    };
                    self.create(&key, media)?
                }
                other => unreachable!("{other:?} for a file"),
            };
            let (stat, hash) = (*stat, hash.clone().expect("hashed before any call"));
            let checked = checked.expect("hashed before any call");
            let content_up = content == Content::Held
                || entry
                    .as_ref()
                    .is_some_and(|e| e.hash == hash && e.content_up);
            self.remember_checked(path, &key, media_id, hash, content_up, stat, checked)
                .at(Step::Local)?;
            return Ok(());
        }
    }

    /// Sends a create for `key` (noted unsure until its answer is recorded) and answers the id
    /// of the record that now shows the file.
    fn create(&self, key: &str, media: NewMedia) -> Result<MediaId, Stop> {
        self.index.mark_unsure(key, &media).at(Step::Local)?;
        let answer = self.wait(self.api.create(self.config.grant, &media));
        match answer.at(Step::Create)? {
            CreateOutcome::Created(id) => {
                self.refuse_others_id(key, id).at(Step::Create)?;
                self.report.lock().totals.created += 1;
                Ok(id)
            }
            CreateOutcome::Conflict(record) => {
                self.refuse_others_id(key, record.media_id)
                    .at(Step::Create)?;
                match after_conflict(Step::Create, &record, &media.state) {
                    AfterConflict::Adopt => {}
                    AfterConflict::AdoptAndUpdate => {
                        let answer = self.wait(self.api.update(
                            self.config.grant,
                            record.media_id,
                            &media.state,
                        ));
                        answer.at(Step::Update)?;
                        self.report.lock().totals.updated += 1;
                    }
                    AfterConflict::NoLiveRecord => unreachable!("a create adopts any record"),
                }
                Ok(record.media_id)
            }
        }
    }

    /// The path shows nothing the catalog keeps: its record (known by the entry or an unsure
    /// note) goes, unless `--no-delete`.
    fn carry_out_removal(
        &self,
        key: &str,
        action: Action,
        entry: Option<IndexEntry>,
        unsure: Option<Unsure>,
    ) -> Result<(), Stop> {
        let media_id = match action {
            Action::Nothing => return Ok(()),
            Action::Forget => {
                self.index.remove(key).at(Step::Local)?;
                return self.clear_unsure(key);
            }
            Action::Delete { media_id } => {
                if self.holds_delete(key) {
                    tracing::debug!("{key:?}: its delete is held (mass-deletion guard)");
                    return Ok(());
                }
                if let Some(entry) = entry {
                    // The entry is traded for an unsure note with the id before the delete is
                    // sent: after a crash between the service's delete and the index write, an
                    // entry left behind would vouch for a record that is gone, and a retry
                    // needs the id, never another create.
                    let media = NewMedia {
                        media_path: self.media_path(Path::new(key)).at(Step::Local)?,
                        state: media_state(
                            entry.hash.clone(),
                            entry.size,
                            entry.ctime_ns,
                            entry.mtime_ns,
                        )
                        .at(Step::Local)?,
                    };
                    self.index
                        .remove_as_unsure(key, &media, media_id)
                        .at(Step::Local)?;
                }
                media_id
            }
            Action::FindAndDelete => {
                let Some(media) = unsure.and_then(|u| u.media) else {
                    tracing::warn!("{key:?}: an unreadable unsure note is dropped");
                    return self.clear_unsure(key);
                };
                match self.find(key, &media)? {
                    Some(media_id) => media_id,
                    None => return self.clear_unsure(key),
                }
            }
            other => unreachable!("{other:?} for an absent path"),
        };
        match self.wait(self.api.delete(self.config.grant, media_id)) {
            Ok(()) => self.report.lock().totals.deleted += 1,
            // Already gone.
            Err(err) => {
                self.judge(key, Step::Delete, err)?;
            }
        }
        self.clear_unsure(key)
    }

    /// Creates `media` again to learn the id of the record a lost create answer named; the id
    /// is stored at once, so a retry deletes by id. `None`: no live record has the path.
    fn find(&self, key: &str, media: &NewMedia) -> Result<Option<MediaId>, Stop> {
        let media_id = match self.wait(self.api.create(self.config.grant, media)) {
            Ok(CreateOutcome::Created(id)) => id,
            Ok(CreateOutcome::Conflict(record)) => {
                match after_conflict(Step::Find, &record, &media.state) {
                    AfterConflict::Adopt => record.media_id,
                    AfterConflict::NoLiveRecord => return Ok(None),
                    AfterConflict::AdoptAndUpdate => unreachable!("a find updates nothing"),
                }
            }
            Err(err) => {
                self.judge(key, Step::Find, err)?;
                return Ok(None);
            }
        };
        // Never learned, so never deleted: the id of another path's record.
        self.refuse_others_id(key, media_id).at(Step::Find)?;
        self.index.learn_unsure_id(key, media_id).at(Step::Local)?;
        Ok(Some(media_id))
    }

    /// An answer naming the record the index holds for another path cannot be true (the service
    /// keeps one record per path): followed, it would make this file's update or delete land
    /// on that record.
    fn refuse_others_id(&self, key: &str, media_id: MediaId) -> Result<(), Failure> {
        match self.index.path_of(media_id)? {
            Some(holder) if holder != key => Err(untrue(&IdTaken { media_id, holder })),
            _ => Ok(()),
        }
    }

    fn clear_unsure(&self, key: &str) -> Result<(), Stop> {
        Ok(self.index.clear_unsure(key).at(Step::Local)?)
    }

    fn state_of(&self, stat: &FileStat, hash: &Option<String>) -> Result<MediaState, Failure> {
        media_state(
            hash.clone().expect("hashed before any call"),
            stat.size,
            stat.ctime_ns,
            stat.mtime_ns,
        )
    }

    /// The media_path a record of `path` has (under the mount's prefix).
    fn media_path(&self, path: &Path) -> Result<String, Failure> {
        contract::media_path(&self.config.prefix, path)
            .map_err(|err| Failure::Local(err.to_string()))
    }

    /// Writes the index entry, then looks at the file again: if it changed since the look that
    /// produced the hash (its stat differs, or a content change of its inode was reported
    /// meanwhile), the path is marked again. An event can name another hard link of the inode,
    /// and this name may not have been indexed when it was handled; this catches that.
    ///
    /// A hash that was reused without being verified against the content is recorded with a
    /// ctime no file has, so that the next start's reconcile hashes the file again rather than
    /// trust it (a crash may have lost the event that would have). `content_up`: whether the
    /// service is known to hold the hash's content.
    #[allow(clippy::too_many_arguments)]
    fn remember_checked(
        &self,
        path: &Path,
        key: &str,
        media_id: MediaId,
        hash: String,
        content_up: bool,
        stat: FileStat,
        checked: Checked,
    ) -> Result<(), Failure> {
        let entry = IndexEntry {
            media_id,
            hash,
            content_up,
            size: stat.size,
            mtime_ns: stat.mtime_ns,
            ctime_ns: if checked.hash_verified {
                stat.ctime_ns
            } else {
                UNVERIFIED_CTIME
            },
            ino: stat.ino,
        };
        self.index.put(key, &entry)?;
        if !self.unchanged_since(path, &stat, &checked) {
            tracing::debug!("{key:?}: changed while it was sent; looking again");
            self.queue.mark(path, Hint::Content);
        }
        Ok(())
    }

    /// The file's hash and the stat it belongs to, and whether it was verified. A `Meta` look
    /// reuses the file's last hash (`HashCache::known_hash`: same device and inode, no content
    /// change reported since). Otherwise the file is hashed, and hashed again if it changed
    /// meanwhile. What the read left for the upload (part digests, a small file's bytes) comes
    /// with a hash that was computed.
    fn file_hash(
        self: &Arc<Self>,
        path: &Path,
        stat: FileStat,
        hint: Hint,
    ) -> Result<HashFound, Failure> {
        if hint == Hint::Meta {
            if let Some((hash, verified)) = self.hashes.lock().known_hash(&stat) {
                return Ok((hash, stat, verified, None));
            }
        }
        let stamp = self.hashes.lock().stamp(stat.ino);
        let hashed = self.wait(self.hash_now(path, stat))?;
        self.hashes.lock().hashed(&hashed.stat, &hashed.hash, stamp);
        Ok((hashed.hash, hashed.stat, true, Some(hashed.read)))
    }

    /// Reads and hashes the file now (`stat`: as last seen), within the hashing budget. Async for
    /// the upload's checks; a look waits for it where it has no runtime context of its own.
    pub(super) async fn hash_now(
        self: &Arc<Self>,
        path: &Path,
        stat: FileStat,
    ) -> Result<Hashed, Failure> {
        // Small files are microseconds of work; larger ones wait for threads of the one budget.
        let hashed = if stat.size <= SMALL_HASH_MAX {
            hasher::hash_stable(&self.backing, path, std::num::NonZeroUsize::MIN)
        } else {
            let threads = self.hash_budget.take(useful_threads(stat.size)).await;
            hasher::hash_stable(&self.backing, path, threads.count())
        };
        match hashed {
            Ok(Some(found)) => Ok(found),
            // It kept changing while it was read: a race, not an error.
            Ok(None) => Err(Failure::Changed),
            // Gone or replaced while we looked: the event that did it marks it again.
            Err(err) => Err(Failure::reading("reading", err)),
        }
    }

    /// Whether the file at `path` is still the one a look hashed: as `stat` describes it, and no
    /// content change of its inode reported since.
    fn unchanged_since(&self, path: &Path, stat: &FileStat, checked: &Checked) -> bool {
        self.still_at(path, stat).is_ok() && self.hashes.lock().stamp(stat.ino) == checked.stamp
    }

    /// Whether the file at `path` is still the one `stat` describes (same inode, size, mtime):
    /// `Vanished` when the path shows another file or none, "changed" when it shows this one
    /// changed.
    pub(super) fn still_at(&self, path: &Path, stat: &FileStat) -> Result<(), Failed> {
        match self.backing.observe(path) {
            Ok(Observed::File(now)) if now.ino == stat.ino => match same_content(stat, &now) {
                true => Ok(()),
                false => Err(changed()),
            },
            Ok(Observed::Unreadable) => Err(Failed(Step::Local, Failure::Unreadable)),
            Ok(_) => Err(Failed(Step::Local, Failure::Vanished)),
            Err(err) => Err(Failed(Step::Local, Failure::io("cannot look at it", err))),
        }
    }
}

/// A hash, the stat it belongs to, whether it was verified against the content, and what the
/// read left for the upload when it was just computed.
type HashFound = (String, FileStat, bool, Option<HashRead>);

/// How many threads hashing a file of `size` bytes can use: one per part.
fn useful_threads(size: u64) -> std::num::NonZeroUsize {
    let parts = maxlofs_api::hash::part_size(size).map_or(1, |part| size.div_ceil(part));
    std::num::NonZeroUsize::new(parts.min(usize::MAX as u64) as usize)
        .unwrap_or(std::num::NonZeroUsize::MIN)
}

/// A record's state: content hash and size, and times in nanoseconds since the epoch. A time
/// the service's form cannot say (a touch since the look) waits for the look that event brings.
fn media_state(
    file_hash: String,
    file_size: u64,
    ctime_ns: i128,
    mtime_ns: i128,
) -> Result<MediaState, Failure> {
    let time = |ns| contract::iso8601_ns(ns).ok_or_else(|| Failure::Local(TIME_UNSAYABLE.into()));
    Ok(MediaState {
        file_hash,
        file_size,
        ctime: time(ctime_ns)?,
        mtime: time(mtime_ns)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CI found a delete of such an entry retried for ever when the mark was past the range.
    #[test]
    fn an_entry_of_an_unverified_hash_can_still_be_described_to_the_service() {
        let state = media_state("ab".repeat(32), 1, UNVERIFIED_CTIME, 0).unwrap();
        assert_eq!(state.ctime, "1677-09-21T00:12:43.145Z");
    }
}
