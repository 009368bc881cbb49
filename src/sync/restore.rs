//! Restore: fetches one path's content back from the service and puts it in place atomically,
//! so that every program sees the old file or the whole good one, never a part.
//!
//! # API
//!
//! - [`restore`]`(index, backing, content, config, source) -> anyhow::Result<Restored>`
//!   restores one [`Source`]:
//!   - `Source::Indexed(path)`: the content of the path's index entry (hash, size, mtime), for
//!     a file found damaged (`Index::corrupted`) or missing. The file at the path, if any, must
//!     still be the one the entry was taken of (same inode and ctime): one written since is an
//!     edit, and is never overwritten (`Refused::Edited`). Afterwards the entry takes the new
//!     file's inode and ctime (its content is the recorded one, so the engine has nothing to
//!     send) and the path's corruption mark is cleared.
//!   - `Source::Deleted { path, hash, size, mtime_ns }`: a path deleted since, from its last
//!     known content given by the caller (the record its delete left, `Index::deleted`); only
//!     where nothing stands now (`Refused::Occupied`). The index is not changed: the engine
//!     sees a new file.
//! - [`Refused`]: the reasons a restore does not happen (in the `anyhow::Error`, for
//!   `downcast_ref`).
//!
//! How: `download` names a signed URL and a `chunk_size` for the hash (`is_deleted` refuses).
//! The content is fetched one chunk at a time with an HTTP `Range`, written into a temporary
//! file beside the path (`.maxlofs-restore-<hash>`, which the engine always ignores: see
//! [`is_restore_temp`]), and each chunk is checked where its digest is known: a file hashed
//! whole is one chunk checked against the file hash; a multipart file's chunks are its File
//! Hashing parts, checked against the part digests the index keeps (`Index::content_parts`). A
//! bad chunk (damaged, short, failed, or slower than the download floor: see
//! `content_client::receive` and `RestoreConfig::floor_window`) is fetched again with a fresh
//! URL, up to `RestoreConfig::attempts` times, not the whole file. The whole is checked against
//! the file hash at the end (when the part digests are not known, that is the only check, and a
//! failed one fetches every chunk again, as many rounds). Then the temp
//! file is given the old file's mode and owner (0644 and the daemon's for a deleted one) and the
//! recorded mtime, fsynced, and renamed over the path (`renameat2`, `RENAME_NOREPLACE` where
//! nothing is to be replaced), and the folder is fsynced.
//!
//! Resumable: a restore that stops (killed, or the store failing more than `attempts` times)
//! leaves its temp file; the next one of the same content in the same folder keeps its complete
//! chunks that still check (or all complete ones, when digests are unknown and only the end
//! checks), and fetches from the first one missing. Nothing partial is ever at the path.
//!
//! Every file call is relative to the path's folder, opened beneath BACKING without following
//! any symlink (`Backing::open_dir`): a symlink planted on the way fails the restore (`ELOOP`,
//! or `ENOTDIR` for one standing in the folder's place).
//!
//! File I/O runs on the calling task (it writes a chunk at a time); the caller runs restores
//! one at a time per folder and content. BACKING is changed behind the mount: a daemon that
//! restores under a live mount must also drop the mount's cached inode and pages of the path.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::num::NonZeroU32;
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Component, Path};
use std::time::Duration;

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::index::Index;
use super::local::{Backing, FileStat};
use maxlofs_api::content::DownloadItem;
use maxlofs_api::content_client::{receive, ContentApi};
use maxlofs_api::hash;
use maxlofs_api::GrantId;
use maxlofs_fs::sys;

/// The temp file of a restore begins with this, then the file hash.
const TEMP_PREFIX: &str = ".maxlofs-restore-";

/// Whether `name` is a restore's temp file: never synced, whatever the ignore rules say.
pub fn is_restore_temp(name: &str) -> bool {
    name.strip_prefix(TEMP_PREFIX)
        .is_some_and(maxlofs_api::contract::is_hex_digest)
}

#[derive(Clone, Copy, Debug)]
pub struct RestoreConfig {
    pub grant: GrantId,
    /// How many times a chunk is fetched before the restore gives up (and, when chunks cannot
    /// be checked one by one, how many rounds of the whole file).
    pub attempts: NonZeroU32,
    /// Each `content_client::DOWNLOAD_FLOOR_BYTES` of a chunk must come within this long (the
    /// first, of its request), or the fetch fails: a trickling store cannot hold a restore.
    pub floor_window: Duration,
}

/// What to restore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The content of the path's index entry.
    Indexed(String),
    /// A deleted path's last known content.
    Deleted {
        path: String,
        hash: String,
        size: u64,
        mtime_ns: i128,
    },
}

/// What a restore did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    /// The restored file, as it is now at the path.
    pub stat: FileStat,
    /// Bytes kept from an earlier restore's temp file.
    pub resumed_bytes: u64,
    /// Bytes fetched (refused ones included).
    pub downloaded_bytes: u64,
    /// Chunk fetches refused (damaged, short, failed) and made again.
    pub refetched_chunks: u32,
}

/// Why a restore was not made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("the index has no entry for the path")]
    NoEntry,
    #[error("the path must be a relative path of a file in BACKING")]
    BadPath,
    #[error("a file hash is 64 lowercase hex characters")]
    BadHash,
    #[error("the service does not hold the content (is_deleted)")]
    ContentDeleted,
    #[error("the service holds the content at {held} bytes, not {size}")]
    OtherSize { held: u64, size: u64 },
    #[error("the file at the path changed since its record (an edit): not overwritten")]
    Edited,
    #[error("something stands at the path: a deleted file is restored only where nothing is")]
    Occupied,
    #[error("bytes {start}-{end} were refused {attempts} times")]
    BadChunk { start: u64, end: u64, attempts: u32 },
    #[error("the download did not hash to the file hash, {attempts} times")]
    BadWhole { attempts: u32 },
}

/// What the restore may replace at the path.
enum Guard {
    /// Nothing.
    Absent,
    /// Nothing, or the file of this inode and ctime.
    AbsentOr { ino: u64, ctime_ns: i128 },
}

/// The content to restore and where.
struct Target<'a> {
    path: &'a str,
    hash: &'a str,
    size: u64,
    mtime_ns: i128,
}

/// Restores `source` (see the module doc): the whole good content at its path, or an error
/// with nothing changed there.
pub async fn restore(
    index: &Index,
    backing: &Backing,
    content: &dyn ContentApi,
    config: &RestoreConfig,
    source: &Source,
) -> anyhow::Result<Restored> {
    let entry = match source {
        Source::Indexed(path) => Some(index.get(path)?.ok_or(Refused::NoEntry)?),
        Source::Deleted { .. } => None,
    };
    let (target, guard) = match (source, &entry) {
        (Source::Indexed(path), Some(entry)) => {
            let target = Target {
                path,
                hash: &entry.hash,
                size: entry.size,
                mtime_ns: entry.mtime_ns,
            };
            let guard = Guard::AbsentOr {
                ino: entry.ino,
                ctime_ns: entry.ctime_ns,
            };
            (target, guard)
        }
        (
            Source::Deleted {
                path,
                hash,
                size,
                mtime_ns,
            },
            _,
        ) => {
            let target = Target {
                path,
                hash,
                size: *size,
                mtime_ns: *mtime_ns,
            };
            (target, Guard::Absent)
        }
        (Source::Indexed(_), None) => unreachable!("an indexed source has its entry"),
    };
    // The temp file is named after it: it must name nothing else.
    if !maxlofs_api::contract::is_hex_digest(target.hash) {
        return Err(Refused::BadHash.into());
    }
    let (parent, name) = split(target.path)?;
    let dir = backing
        .open_dir(parent)
        .with_context(|| format!("opening the folder of {:?} in BACKING", target.path))?;
    // Before any download: a refusal costs nothing.
    let old = standing(dir.as_fd(), &name, &guard)?;
    let mut restored = fetch(index, content, config, &target, dir.as_fd()).await?;
    let temp_name = temp_name(target.hash);
    let temp = File::from(open_at(dir.as_fd(), &temp_name, libc::O_RDWR, 0)?);
    match &old {
        Some(old) => {
            let made = temp.metadata()?;
            if (old.st_uid, old.st_gid) != (made.uid(), made.gid()) {
                // Before the mode: a chown clears set-user-ID and set-group-ID bits.
                sys::chown_fd(temp.as_fd(), Some(old.st_uid), Some(old.st_gid)).map_err(as_io)?;
            }
            sys::fchmod(temp.as_fd(), old.st_mode & 0o7777).map_err(as_io)?;
        }
        None => sys::fchmod(temp.as_fd(), 0o644).map_err(as_io)?,
    }
    let secs = i64::try_from(target.mtime_ns.div_euclid(1_000_000_000))?;
    let mtime = sys::system_time(secs, target.mtime_ns.rem_euclid(1_000_000_000) as i64);
    sys::set_times(
        temp.as_fd(),
        Some(sys::TimeSpec::Now),
        Some(sys::TimeSpec::At(mtime)),
    )
    .map_err(as_io)?;
    temp.sync_all()?;
    // Again, just before: a file written meanwhile is still not overwritten.
    let old = standing(dir.as_fd(), &name, &guard)?;
    let flags = match old {
        Some(_) => 0,
        None => libc::RENAME_NOREPLACE,
    };
    sys::renameat2(dir.as_fd(), &temp_name, dir.as_fd(), &name, flags)
        .map_err(as_io)
        .with_context(|| format!("renaming the restored {:?} into place", target.path))?;
    rustix::fs::fsync(dir.as_fd())?;
    restored.stat = FileStat::from_metadata(&temp.metadata()?);
    if let (Source::Indexed(path), Some(mut entry)) = (source, entry) {
        entry.ino = restored.stat.ino;
        entry.ctime_ns = restored.stat.ctime_ns;
        index.put(path, &entry)?;
        index.clear_corrupted(path)?;
    }
    Ok(restored)
}

/// The path's folder (relative to BACKING) and its name.
fn split(path: &str) -> anyhow::Result<(&Path, CString)> {
    let path = Path::new(path);
    if !path
        .components()
        .all(|component| matches!(component, Component::Normal(_)))
    {
        return Err(Refused::BadPath.into());
    }
    let name = path.file_name().ok_or(Refused::BadPath)?;
    let parent = path.parent().unwrap_or(Path::new(""));
    Ok((parent, CString::new(name.as_bytes())?))
}

fn temp_name(hash: &str) -> CString {
    CString::new(format!("{TEMP_PREFIX}{hash}")).expect("no NUL in a hash")
}

fn as_io(errno: maxlofs_fs::Errno) -> io::Error {
    io::Error::from_raw_os_error(errno.code())
}

fn open_at(dir: BorrowedFd<'_>, name: &CString, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    sys::openat(dir, name, flags | libc::O_NOFOLLOW, mode).map_err(as_io)
}

/// The file the guard lets be replaced at `name`, or `None` when nothing is there.
fn standing(
    dir: BorrowedFd<'_>,
    name: &CString,
    guard: &Guard,
) -> anyhow::Result<Option<sys::Stat>> {
    let stat = match sys::stat_at(dir, name, 0) {
        Ok(stat) => stat,
        Err(errno) if errno.code() == libc::ENOENT => return Ok(None),
        Err(errno) => return Err(as_io(errno).into()),
    };
    match guard {
        Guard::Absent => Err(Refused::Occupied.into()),
        Guard::AbsentOr { ino, ctime_ns } => {
            let ctime = i128::from(stat.st_ctime) * 1_000_000_000 + i128::from(stat.st_ctime_nsec);
            let regular = stat.st_mode & libc::S_IFMT == libc::S_IFREG;
            if regular && stat.st_ino == *ino && ctime == *ctime_ns {
                Ok(Some(stat))
            } else {
                Err(Refused::Edited.into())
            }
        }
    }
}

/// The content's chunks and, where it can be known, the digest each must have.
struct Plan {
    chunks: Vec<Range<u64>>,
    /// Per chunk; `None`: only the whole is checked.
    digests: Option<Vec<[u8; 32]>>,
    /// The chunks are the File Hashing parts (or the one chunk of a file hashed whole), so
    /// their digests make the file hash.
    aligned: bool,
}

fn plan(index: &Index, target: &Target<'_>, chunk_size: u64) -> anyhow::Result<Plan> {
    let size = target.size;
    let chunk = match chunk_size {
        0 => size.max(1),
        chunk => chunk.min(size.max(1)),
    };
    let chunks: Vec<_> = (0..size.div_ceil(chunk))
        .map(|i| i * chunk..(i * chunk + chunk).min(size))
        .collect();
    let (aligned, digests) = match hash::part_size(size) {
        None => {
            let whole = <[u8; 32]>::try_from(hex::decode(target.hash)?.as_slice())?;
            (chunks.len() <= 1, Some(vec![whole; chunks.len()]))
        }
        Some(part) if part == chunk => {
            // Kept digests count only if they are this content's.
            let kept = index.content_parts(target.hash)?.filter(|digests| {
                digests.len() == chunks.len()
                    && hash::hash_of_parts(digests).to_hex() == target.hash
            });
            (true, kept)
        }
        Some(_) => (false, None),
    };
    let digests = digests.filter(|_| aligned);
    Ok(Plan {
        chunks,
        digests,
        aligned,
    })
}

/// Asks the service where the content is: a fresh signed URL each time.
async fn ask(
    content: &dyn ContentApi,
    config: &RestoreConfig,
    target: &Target<'_>,
) -> anyhow::Result<(String, DownloadItem)> {
    let answer = content
        .download(config.grant, &[target.hash.to_string()])
        .await
        .context("asking the service for the content (download)")?;
    let item = answer
        .download_list
        .into_iter()
        .find(|item| item.file_hash == target.hash)
        .ok_or(Refused::ContentDeleted)?;
    let Some(url) = item.url.clone().filter(|_| !item.is_deleted) else {
        return Err(Refused::ContentDeleted.into());
    };
    if item.file_size != target.size {
        return Err(Refused::OtherSize {
            held: item.file_size,
            size: target.size,
        }
        .into());
    }
    Ok((url, item))
}

/// Fills the temp file with the content, checked; answers what it took.
async fn fetch(
    index: &Index,
    content: &dyn ContentApi,
    config: &RestoreConfig,
    target: &Target<'_>,
    dir: BorrowedFd<'_>,
) -> anyhow::Result<Restored> {
    let (mut url, item) = ask(content, config, target).await?;
    let plan = plan(index, target, item.chunk_size)?;
    let temp = File::from(open_at(
        dir,
        &temp_name(target.hash),
        libc::O_RDWR | libc::O_CREAT,
        0o600,
    )?);
    if !temp.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the restore's temp name is taken",
        )
        .into());
    }
    let mut restored = Restored {
        stat: FileStat::from_metadata(&temp.metadata()?),
        resumed_bytes: 0,
        downloaded_bytes: 0,
        refetched_chunks: 0,
    };
    let attempts = config.attempts.get();
    let mut digests = kept_chunks(&temp, &plan)?;
    restored.resumed_bytes = plan.chunks[..digests.len()]
        .iter()
        .map(|chunk| chunk.end - chunk.start)
        .sum();
    for round in 1..=attempts {
        let first = plan
            .chunks
            .get(digests.len())
            .map_or(target.size, |c| c.start);
        temp.set_len(first)?;
        for (index, chunk) in plan.chunks.iter().enumerate().skip(digests.len()) {
            let expected = plan.digests.as_ref().map(|digests| digests[index]);
            let mut tries = 0;
            let digest = loop {
                tries += 1;
                let got =
                    fetch_chunk(content, &url, config.floor_window, &temp, chunk.clone()).await;
                restored.downloaded_bytes += got.as_ref().map_or(0, |(_, bytes)| *bytes);
                match got {
                    Ok((digest, _)) if expected.is_none_or(|expected| expected == digest) => {
                        break digest
                    }
                    Ok(_) => {
                        tracing::warn!(path = target.path, ?chunk, "restore: a chunk came damaged")
                    }
                    Err(err) => tracing::warn!(path = target.path, ?chunk, "restore: {err:#}"),
                }
                if tries == attempts {
                    return Err(Refused::BadChunk {
                        start: chunk.start,
                        end: chunk.end,
                        attempts,
                    }
                    .into());
                }
                restored.refetched_chunks += 1;
                // The URL may have expired meanwhile.
                url = ask(content, config, target).await?.0;
            };
            // A chunk kept is a chunk a restart need not fetch.
            temp.sync_data()?;
            digests.push(digest);
        }
        let whole = match plan.aligned {
            true if hash::part_size(target.size).is_some() => {
                hash::hash_of_parts(&digests).to_hex()
            }
            true => digests.first().map_or_else(
                || {
                    hash::hash_open_file(&temp, 0, hash::default_workers(), None)
                        .map(|h| h.to_hex())
                },
                |digest| Ok(hex::encode(digest)),
            )?,
            false => {
                hash::hash_open_file(&temp, target.size, hash::default_workers(), None)?.to_hex()
            }
        };
        if whole == target.hash {
            if plan.aligned && plan.digests.is_none() && hash::part_size(target.size).is_some() {
                index.set_content_parts(target.hash, &digests)?;
            }
            return Ok(restored);
        }
        tracing::warn!(
            path = target.path,
            round,
            "restore: the download did not hash to its hash"
        );
        digests.clear();
        url = ask(content, config, target).await?.0;
    }
    Err(Refused::BadWhole { attempts }.into())
}

/// The digests of the chunks an earlier restore left complete in `temp` that still check (all
/// complete ones when digests are not known), in order.
fn kept_chunks(temp: &File, plan: &Plan) -> io::Result<Vec<[u8; 32]>> {
    let len = temp.metadata()?.len();
    let mut kept = Vec::new();
    let mut buffer = vec![0; 256 * 1024];
    for (index, chunk) in plan.chunks.iter().enumerate() {
        if chunk.end > len || chunk.is_empty() {
            break;
        }
        let digest = hash::hash_range(
            temp,
            chunk.start,
            chunk.end - chunk.start,
            &mut buffer,
            None,
        )?;
        if plan
            .digests
            .as_ref()
            .is_some_and(|digests| digests[index] != digest)
        {
            break;
        }
        kept.push(digest);
    }
    Ok(kept)
}

/// Fetches the bytes `chunk` into `temp` at their place, at no less than the download floor;
/// answers their SHA-256 and how many bytes came. More or fewer bytes than asked are an error.
async fn fetch_chunk(
    content: &dyn ContentApi,
    url: &str,
    floor_window: Duration,
    temp: &File,
    chunk: Range<u64>,
) -> anyhow::Result<([u8; 32], u64)> {
    let mut hasher = Sha256::new();
    let mut at = chunk.start;
    let writing = |piece: &[u8]| {
        temp.write_all_at(piece, at)?;
        hasher.update(piece);
        at += piece.len() as u64;
        Ok(())
    };
    let request = content.get_range(url, chunk.clone());
    let came = receive(request, chunk.end - chunk.start, floor_window, writing).await?;
    if came != chunk.end - chunk.start {
        anyhow::bail!("the store sent {came} bytes of {}", chunk.end - chunk.start);
    }
    Ok((hasher.finalize().into(), came))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{CorruptMark, IndexEntry};
    use crate::tests::Library;
    use maxlofs_api::content::{
        DownloadAnswer, FileRef, MultipartCompleteRequest, MultipartRequest, S3ObjectRequest,
        UploadAnswer,
    };
    use maxlofs_api::content_client::{MultipartStart, PutBody, SignedPut};
    use maxlofs_api::ApiError;
    use parking_lot::Mutex;
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// The store's side of downloads in memory: signed GETs of ranges, with the faults a
    /// restore must survive.
    #[derive(Default)]
    struct Store {
        held: Mutex<HashMap<String, Vec<u8>>>,
        /// GETs still to be served with their first byte flipped.
        damage_next: AtomicU32,
        /// GETs still answered before the store drops every one; `None`: no limit.
        gets_left: Mutex<Option<u32>>,
        gets: AtomicU32,
        /// GETs answer and then send nothing, for ever.
        stalls: std::sync::atomic::AtomicBool,
    }

    impl Store {
        fn hold(&self, bytes: &[u8]) -> String {
            let file_hash = hash_of(bytes);
            self.held.lock().insert(file_hash.clone(), bytes.to_vec());
            file_hash
        }
    }

    fn hash_of(bytes: &[u8]) -> String {
        let mut hasher = hash::StreamHasher::new(bytes.len() as u64);
        hasher.update(bytes);
        hasher.finish().unwrap().to_hex()
    }

    #[async_trait::async_trait]
    impl ContentApi for Store {
        async fn upload(&self, _: GrantId, _: &[FileRef]) -> Result<UploadAnswer, ApiError> {
            unreachable!("a restore only downloads")
        }
        async fn s3_object(&self, _: GrantId, _: &S3ObjectRequest) -> Result<(), ApiError> {
            unreachable!("a restore only downloads")
        }
        async fn multipart(
            &self,
            _: GrantId,
            _: &MultipartRequest,
        ) -> Result<MultipartStart, ApiError> {
            unreachable!("a restore only downloads")
        }
        async fn multipart_complete(
            &self,
            _: GrantId,
            _: &MultipartCompleteRequest,
        ) -> Result<(), ApiError> {
            unreachable!("a restore only downloads")
        }
        async fn put(&self, _: &SignedPut, _: u64, _: PutBody) -> Result<String, ApiError> {
            unreachable!("a restore only downloads")
        }
        async fn get(&self, _: &str) -> Result<PutBody, ApiError> {
            unreachable!("a restore asks for ranges")
        }

        async fn download(
            &self,
            _: GrantId,
            hashes: &[String],
        ) -> Result<DownloadAnswer, ApiError> {
            let held = self.held.lock();
            let item = |file_hash: &String| match held.get(file_hash) {
                Some(bytes) => DownloadItem {
                    file_hash: file_hash.clone(),
                    file_size: bytes.len() as u64,
                    chunk_size: hash::part_size(bytes.len() as u64).unwrap_or(bytes.len() as u64),
                    url: Some(format!("memory:{file_hash}")),
                    is_deleted: false,
                },
                None => DownloadItem {
                    file_hash: file_hash.clone(),
                    file_size: 0,
                    chunk_size: 0,
                    url: None,
                    is_deleted: true,
                },
            };
            Ok(DownloadAnswer {
                download_list: hashes.iter().map(item).collect(),
            })
        }

        async fn get_range(&self, url: &str, range: Range<u64>) -> Result<PutBody, ApiError> {
            self.gets.fetch_add(1, Ordering::SeqCst);
            if let Some(left) = self.gets_left.lock().as_mut() {
                if *left == 0 {
                    return Err(ApiError::Transient("connection dropped".into()));
                }
                *left -= 1;
            }
            if self.stalls.load(Ordering::SeqCst) {
                return Ok(Box::pin(futures_util::stream::pending()));
            }
            let file_hash = url.strip_prefix("memory:").unwrap();
            let held = self.held.lock();
            let mut bytes = held[file_hash][range.start as usize..range.end as usize].to_vec();
            let damaged = self
                .damage_next
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if damaged {
                bytes[0] ^= 0xff;
            }
            let pieces: Vec<_> = bytes.chunks(1 << 20).map(|p| Ok(p.to_vec())).collect();
            Ok(Box::pin(futures_util::stream::iter(pieces)))
        }
    }

    struct Rig {
        library: Library,
        store: Store,
    }

    impl std::ops::Deref for Rig {
        type Target = Library;

        fn deref(&self) -> &Library {
            &self.library
        }
    }

    /// A recorded mtime unlike any a file written now has.
    const MTIME_NS: i128 = 1_600_000_000_123_456_789;

    impl Rig {
        fn new() -> Rig {
            Rig {
                library: Library::new(),
                store: Store::default(),
            }
        }

        /// The service holds `good`; the index records it for `rel`, with the stat of the file
        /// at `rel` (`on_disk`, written now) and mtime `MTIME_NS`.
        fn record(&self, rel: &str, good: &[u8], on_disk: &[u8]) -> IndexEntry {
            let hash = self.store.hold(good);
            std::fs::write(self.path(rel), on_disk).unwrap();
            let stat = FileStat::from_metadata(&std::fs::metadata(self.path(rel)).unwrap());
            let entry = IndexEntry {
                media_id: self.index.count() as i64 + 1,
                hash,
                size: good.len() as u64,
                mtime_ns: MTIME_NS,
                ctime_ns: stat.ctime_ns,
                ino: stat.ino,
                content_up: true,
            };
            self.index.put(rel, &entry).unwrap();
            entry
        }

        async fn restore(&self, source: &Source, attempts: u32) -> anyhow::Result<Restored> {
            let config = RestoreConfig {
                grant: 1,
                attempts: NonZeroU32::new(attempts).unwrap(),
                floor_window: Duration::from_secs(30),
            };
            restore(&self.index, &self.backing, &self.store, &config, source).await
        }

        fn names(&self) -> Vec<String> {
            let mut names: Vec<_> = std::fs::read_dir(self.path(""))
                .unwrap()
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }

    fn refusal(err: &anyhow::Error) -> Option<&Refused> {
        err.downcast_ref::<Refused>()
    }

    /// 24 MiB: three File Hashing parts of 8 MiB, so three chunks.
    fn large() -> Vec<u8> {
        (0..24 << 20).map(|i: u32| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn restore_makes_a_damaged_file_byte_identical_with_its_recorded_mtime() {
        let rig = Rig::new();
        let entry = rig.record("a.jpg", b"hello world", b"hello wOrld");
        std::fs::set_permissions(rig.path("a.jpg"), PermissionsExt::from_mode(0o640)).unwrap();
        let entry = IndexEntry {
            ctime_ns: FileStat::from_metadata(&std::fs::metadata(rig.path("a.jpg")).unwrap())
                .ctime_ns,
            ..entry
        };
        rig.index.put("a.jpg", &entry).unwrap();
        let mark = CorruptMark {
            recorded_hash: entry.hash.clone(),
            found_hash: hash_of(b"hello wOrld"),
            ranges: vec![(0, 11)],
            ctime_ns: entry.ctime_ns,
            found_at: 0,
        };
        rig.index.mark_corrupted("a.jpg", &mark).unwrap();
        let restored = rig
            .restore(&Source::Indexed("a.jpg".into()), 3)
            .await
            .unwrap();
        assert_eq!(std::fs::read(rig.path("a.jpg")).unwrap(), b"hello world");
        let meta = std::fs::metadata(rig.path("a.jpg")).unwrap();
        let stat = FileStat::from_metadata(&meta);
        assert_eq!(stat.mtime_ns, MTIME_NS);
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        assert_eq!(restored.stat, stat);
        assert_eq!(
            (restored.downloaded_bytes, restored.refetched_chunks),
            (11, 0)
        );
        // The entry names the new file, and the damage is no longer noted.
        let now = rig.index.get("a.jpg").unwrap().unwrap();
        assert_eq!((now.ino, now.ctime_ns), (stat.ino, stat.ctime_ns));
        assert_eq!((now.hash, now.media_id), (entry.hash, entry.media_id));
        assert!(rig.index.corrupted_paths().unwrap().is_empty());
        assert_eq!(rig.names(), ["a.jpg"]);
    }

    #[tokio::test]
    async fn a_damaged_download_chunk_is_refused_and_fetched_again() {
        let rig = Rig::new();
        rig.record("a", b"hello world", b"hello wOrld");
        rig.store.damage_next.store(1, Ordering::SeqCst);
        let restored = rig.restore(&Source::Indexed("a".into()), 3).await.unwrap();
        assert_eq!(std::fs::read(rig.path("a")).unwrap(), b"hello world");
        assert_eq!(restored.refetched_chunks, 1);
        assert_eq!(rig.store.gets.load(Ordering::SeqCst), 2);

        // Damaged every time: refused, and the damaged file is left as it was.
        rig.record("b", b"hello world", b"hello wOrld");
        rig.store.damage_next.store(u32::MAX, Ordering::SeqCst);
        let err = rig
            .restore(&Source::Indexed("b".into()), 2)
            .await
            .unwrap_err();
        assert_eq!(
            refusal(&err),
            Some(&Refused::BadChunk {
                start: 0,
                end: 11,
                attempts: 2
            })
        );
        assert_eq!(std::fs::read(rig.path("b")).unwrap(), b"hello wOrld");
    }

    /// On tokio's paused clock: the floor's window passes without a real wait.
    #[tokio::test(start_paused = true)]
    async fn a_store_sending_slower_than_the_floor_cannot_hold_a_restore() {
        let rig = Rig::new();
        rig.record("a", b"hello world", b"hello wOrld");
        rig.store.stalls.store(true, Ordering::SeqCst);
        let err = rig
            .restore(&Source::Indexed("a".into()), 2)
            .await
            .unwrap_err();
        assert!(
            matches!(refusal(&err), Some(Refused::BadChunk { attempts: 2, .. })),
            "{err:#}"
        );
        assert_eq!(rig.store.gets.load(Ordering::SeqCst), 2);
        assert_eq!(std::fs::read(rig.path("a")).unwrap(), b"hello wOrld");
    }

    #[tokio::test]
    async fn a_damaged_part_of_a_multipart_file_is_fetched_again_alone() {
        let rig = Rig::new();
        let good = large();
        let entry = rig.record("big", &good, b"gone bad");
        let parts: Vec<[u8; 32]> = good
            .chunks(8 << 20)
            .map(|part| Sha256::digest(part).into())
            .collect();
        rig.index.set_content_parts(&entry.hash, &parts).unwrap();
        rig.store.damage_next.store(1, Ordering::SeqCst);
        let restored = rig
            .restore(&Source::Indexed("big".into()), 3)
            .await
            .unwrap();
        assert!(std::fs::read(rig.path("big")).unwrap() == good);
        assert_eq!(restored.refetched_chunks, 1);
        assert_eq!(restored.downloaded_bytes, 32 << 20);
        assert_eq!(rig.store.gets.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn an_interrupted_restore_leaves_the_old_file_and_completes_on_the_next_call() {
        let rig = Rig::new();
        let good = large();
        let entry = rig.record("big", &good, b"the old file");
        // The part digests are not known: each chunk is checked only with the whole.
        assert_eq!(rig.index.content_parts(&entry.hash).unwrap(), None);
        *rig.store.gets_left.lock() = Some(1);
        let err = rig
            .restore(&Source::Indexed("big".into()), 2)
            .await
            .unwrap_err();
        assert!(
            matches!(refusal(&err), Some(Refused::BadChunk { start, .. }) if *start == 8 << 20),
            "{err:#}"
        );
        assert_eq!(std::fs::read(rig.path("big")).unwrap(), b"the old file");
        assert_eq!(
            rig.names(),
            [format!("{TEMP_PREFIX}{}", entry.hash), "big".into()]
        );

        *rig.store.gets_left.lock() = None;
        let restored = rig
            .restore(&Source::Indexed("big".into()), 2)
            .await
            .unwrap();
        assert_eq!(restored.resumed_bytes, 8 << 20);
        assert_eq!(restored.downloaded_bytes, 16 << 20);
        assert!(std::fs::read(rig.path("big")).unwrap() == good);
        assert_eq!(rig.names(), ["big"]);
        // Learned from the download that hashed right.
        assert_eq!(
            rig.index.content_parts(&entry.hash).unwrap().unwrap().len(),
            3
        );
    }

    #[tokio::test]
    async fn restore_refuses_a_symlink_planted_at_the_parent() {
        let rig = Rig::new();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(rig.path("d")).unwrap();
        rig.record("d/f", b"hello world", b"hello wOrld");
        std::fs::rename(rig.path("d"), rig.path("moved")).unwrap();
        std::os::unix::fs::symlink(outside.path(), rig.path("d")).unwrap();
        let err = rig
            .restore(&Source::Indexed("d/f".into()), 3)
            .await
            .unwrap_err();
        let errno = err
            .root_cause()
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error);
        // ENOTDIR: a symlink where the folder was is no folder, and is not followed.
        assert!(
            matches!(errno, Some(libc::ELOOP | libc::ENOTDIR)),
            "{err:#}"
        );
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        assert_eq!(rig.store.gets.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn restore_never_overwrites_an_edit_nor_brings_back_what_the_service_lost() {
        let rig = Rig::new();
        let entry = rig.record("edited", b"hello world", b"new words!!");
        let before_the_edit = IndexEntry {
            ctime_ns: entry.ctime_ns - 1,
            ..entry.clone()
        };
        rig.index.put("edited", &before_the_edit).unwrap();
        let err = rig
            .restore(&Source::Indexed("edited".into()), 3)
            .await
            .unwrap_err();
        assert_eq!(refusal(&err), Some(&Refused::Edited));
        assert_eq!(std::fs::read(rig.path("edited")).unwrap(), b"new words!!");

        let deleted = |path: &str, hash: &str| Source::Deleted {
            path: path.into(),
            hash: hash.into(),
            size: 11,
            mtime_ns: MTIME_NS,
        };
        let err = rig
            .restore(&deleted("edited", &entry.hash), 3)
            .await
            .unwrap_err();
        assert_eq!(refusal(&err), Some(&Refused::Occupied));
        let err = rig
            .restore(&deleted("lost", &hash_of(b"not held!!!")), 3)
            .await
            .unwrap_err();
        assert_eq!(refusal(&err), Some(&Refused::ContentDeleted));
        let err = rig
            .restore(&deleted("lost", "../../x"), 3)
            .await
            .unwrap_err();
        assert_eq!(refusal(&err), Some(&Refused::BadHash));
        let err = rig
            .restore(&deleted("../lost", &entry.hash), 3)
            .await
            .unwrap_err();
        assert_eq!(refusal(&err), Some(&Refused::BadPath));
        assert_eq!(rig.store.gets.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_deleted_file_comes_back_from_the_record_its_delete_kept() {
        let rig = Rig::new();
        let entry = rig.record("gone", b"hello world", b"hello world");
        // As the engine sends the delete of a recorded file (`carry_out_removal`).
        let media = maxlofs_api::NewMedia {
            media_path: "gone".into(),
            state: maxlofs_api::MediaState {
                file_hash: entry.hash.clone(),
                file_size: entry.size,
                ctime: "2020-09-13T12:26:40.123Z".into(),
                mtime: "2020-09-13T12:26:40.123Z".into(),
            },
        };
        rig.index
            .remove_as_unsure("gone", &media, entry.media_id)
            .unwrap();
        std::fs::remove_file(rig.path("gone")).unwrap();
        let record = rig.index.deleted("gone").unwrap().unwrap();
        let source = Source::Deleted {
            path: "gone".into(),
            hash: record.hash,
            size: record.size,
            mtime_ns: record.mtime_ns,
        };
        rig.restore(&source, 3).await.unwrap();
        assert_eq!(std::fs::read(rig.path("gone")).unwrap(), b"hello world");
        let meta = std::fs::metadata(rig.path("gone")).unwrap();
        assert_eq!(FileStat::from_metadata(&meta).mtime_ns, MTIME_NS);
        assert_eq!(rig.index.get("gone").unwrap(), None);
    }

    #[tokio::test]
    async fn a_deleted_or_missing_file_comes_back_where_nothing_is() {
        let rig = Rig::new();
        let hash = rig.store.hold(b"hello world");
        let source = Source::Deleted {
            path: "back".into(),
            hash,
            size: 11,
            mtime_ns: MTIME_NS,
        };
        rig.restore(&source, 3).await.unwrap();
        assert_eq!(std::fs::read(rig.path("back")).unwrap(), b"hello world");
        let meta = std::fs::metadata(rig.path("back")).unwrap();
        assert_eq!(FileStat::from_metadata(&meta).mtime_ns, MTIME_NS);
        assert_eq!(rig.index.get("back").unwrap(), None);
        // A recorded file gone missing comes back too, and its entry names it.
        rig.record("missing", b"hello again", b"hello again");
        std::fs::remove_file(rig.path("missing")).unwrap();
        let restored = rig
            .restore(&Source::Indexed("missing".into()), 3)
            .await
            .unwrap();
        assert_eq!(std::fs::read(rig.path("missing")).unwrap(), b"hello again");
        let entry = rig.index.get("missing").unwrap().unwrap();
        assert_eq!(entry.ino, restored.stat.ino);
        assert!(is_restore_temp(&format!("{TEMP_PREFIX}{}", "0".repeat(64))));
        assert!(!is_restore_temp(&format!("{TEMP_PREFIX}x")));
    }
}
