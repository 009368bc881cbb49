//! Scrub: finds files damaged in place. A pass walks the index's entries by path and, for each
//! file whose size, mtime, ctime and inode in BACKING are still those recorded with its hash,
//! reads it again and compares its Maxlo hash with the recorded one. Bytes that differ under an
//! unchanged stat were not written through any system call (that would have moved the ctime):
//! the disk or the filesystem damaged them. Such a path is noted in the index
//! (`Index::mark_corrupted`), never sent as a new version. A file whose stat changed is an edit,
//! which the engine syncs; the scrub leaves it alone.
//!
//! # API
//!
//! - [`scrub_pass`]`(index, backing, config, progress, stop) -> anyhow::Result<ScrubReport>`:
//!   one pass, or the rest of one (a cursor in the index's notes, `CURSOR`, says where it
//!   stopped; a finished pass clears it). Blocking: run it on a thread of its own
//!   (`tokio::task::spawn_blocking`). It reads with one thread, at most
//!   [`ScrubConfig::bytes_per_sec`], and returns early, unfinished, once `stop` is set.
//! - [`ScrubProgress`]: counters the caller may read while a pass runs (status).
//! - The damage found: `Index::corrupted_paths`, `Index::corrupted(path)` (recorded and found
//!   hash, the byte ranges that differ, the ctime it had, when it was found),
//!   `Index::clear_corrupted`. A multipart file's differing ranges are its File Hashing parts
//!   whose digests differ, when the recorded digests are known (`Index::content_parts`, learned
//!   when a pass finds the file intact or a restore downloads it); else the whole file.
//!
//! Files are opened beneath BACKING without following any symlink (`Backing::open_file`).

use parking_lot::Mutex;
use std::fs::File;
use std::io;
use std::num::{NonZeroU64, NonZeroUsize};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::index::{CorruptMark, Index, IndexEntry};
use super::local::{Backing, FileStat};
use maxlofs_api::hash;

/// The index note holding the last path a pass under way finished with ("" or none: from the
/// start).
pub const CURSOR: &str = "scrub_cursor";

/// Entries read from the index at a time.
const PAGE: u64 = 256;

/// Idle time earns reading credit up to this much: the cap holds over any longer span.
const BURST: Duration = Duration::from_secs(1);

/// Reads are cut to a tenth of a second's worth, so that a slow cap still sees `stop` soon.
const READS_PER_SEC: u64 = 10;

#[derive(Clone, Copy, Debug, Default)]
pub struct ScrubConfig {
    /// The most bytes read per second, over the whole pass; `None`: as fast as the disk goes.
    pub bytes_per_sec: Option<NonZeroU64>,
}

/// What a pass under way has done so far.
#[derive(Debug, Default)]
pub struct ScrubProgress {
    pub files_checked: AtomicU64,
    pub bytes_read: AtomicU64,
    pub corrupted: AtomicU64,
}

/// What one call of `scrub_pass` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Files read whole and compared.
    pub files_checked: u64,
    pub bytes_read: u64,
    /// Entries not compared: the file changed since its hash was taken (an edit, the engine's
    /// to sync) or while it was read, is gone, is no regular file, or could not be read.
    pub skipped: u64,
    /// Paths found damaged by this call, in order.
    pub corrupted: Vec<String>,
    /// The pass reached the last entry (false: `stop` was set; the next call goes on).
    pub finished: bool,
}

/// One pass over the index's entries, from where the last one stopped.
pub fn scrub_pass(
    index: &Index,
    backing: &Backing,
    config: &ScrubConfig,
    progress: &ScrubProgress,
    stop: &AtomicBool,
) -> anyhow::Result<ScrubReport> {
    let mut report = ScrubReport::default();
    let reader = Reader {
        pace: Mutex::new(Pace::new(config.bytes_per_sec)),
        started: Instant::now(),
        stop,
        progress,
    };
    let mut after = index.note(CURSOR)?.unwrap_or_default();
    loop {
        let page = index.entries_after(&after, PAGE)?;
        if page.is_empty() {
            index.set_note(CURSOR, "")?;
            report.finished = true;
            return Ok(report);
        }
        for (path, entry) in page {
            if stop.load(Ordering::Relaxed) {
                return Ok(report);
            }
            let before = progress.bytes_read.load(Ordering::Relaxed);
            let checked = check(index, backing, &reader, &path, &entry);
            report.bytes_read += progress.bytes_read.load(Ordering::Relaxed) - before;
            match checked? {
                Checked::Stopped => return Ok(report),
                Checked::Skipped => report.skipped += 1,
                Checked::Intact => {
                    report.files_checked += 1;
                    progress.files_checked.fetch_add(1, Ordering::Relaxed);
                }
                Checked::Corrupted => {
                    report.files_checked += 1;
                    progress.files_checked.fetch_add(1, Ordering::Relaxed);
                    progress.corrupted.fetch_add(1, Ordering::Relaxed);
                    report.corrupted.push(path.clone());
                }
            }
            index.set_note(CURSOR, &path)?;
            after = path;
        }
    }
}

enum Checked {
    Intact,
    Corrupted,
    Skipped,
    Stopped,
}

/// Whether a file's stat is the one its hash was taken with.
fn unchanged(stat: &FileStat, entry: &IndexEntry) -> bool {
    (stat.size, stat.mtime_ns, stat.ctime_ns, stat.ino)
        == (entry.size, entry.mtime_ns, entry.ctime_ns, entry.ino)
}

fn check(
    index: &Index,
    backing: &Backing,
    reader: &Reader<'_>,
    path: &str,
    entry: &IndexEntry,
) -> anyhow::Result<Checked> {
    let (file, before) = match backing.open_file(Path::new(path)) {
        Ok(opened) => opened,
        Err(err) => {
            tracing::debug!(path, %err, "scrub: not opened");
            return Ok(Checked::Skipped);
        }
    };
    if !unchanged(&before, entry) {
        return Ok(Checked::Skipped);
    }
    let paced = Paced {
        file: &file,
        reader,
    };
    let (found, parts) = match hash::hash_with_parts(&paced, entry.size, NonZeroUsize::MIN, None) {
        Ok(hashed) => hashed,
        Err(_) if reader.stop.load(Ordering::Relaxed) => return Ok(Checked::Stopped),
        Err(err) => {
            tracing::warn!(path, %err, "scrub: could not read the file");
            return Ok(Checked::Skipped);
        }
    };
    // Written while it was read: the bytes hashed are of no one state.
    if FileStat::from_metadata(&file.metadata()?) != before {
        return Ok(Checked::Skipped);
    }
    let found = found.to_hex();
    if found == entry.hash {
        if !parts.is_empty() && index.content_parts(&entry.hash)?.is_none() {
            index.set_content_parts(&entry.hash, &parts)?;
        }
        // Its good bytes came back by some other way (copied back by hand): no longer damaged.
        if index.corrupted(path)?.is_some() {
            tracing::info!(path, "scrub: intact again; its corruption mark is cleared");
            index.clear_corrupted(path)?;
        }
        return Ok(Checked::Intact);
    }
    let ranges = differing_ranges(entry.size, &parts, index.content_parts(&entry.hash)?);
    tracing::warn!(path, recorded = %entry.hash, %found, ?ranges, "scrub: damaged in place");
    let found_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64);
    index.mark_corrupted(
        path,
        &CorruptMark {
            recorded_hash: entry.hash.clone(),
            found_hash: found,
            ranges,
            ctime_ns: before.ctime_ns,
            found_at,
        },
    )?;
    Ok(Checked::Corrupted)
}

/// The byte ranges of the parts whose digests differ from the recorded ones; the whole file
/// when those are not known (or the file is hashed whole).
fn differing_ranges(
    size: u64,
    found: &[[u8; 32]],
    recorded: Option<Vec<[u8; 32]>>,
) -> Vec<(u64, u64)> {
    match recorded {
        Some(recorded) if !found.is_empty() && recorded.len() == found.len() => hash::parts(size)
            .into_iter()
            .zip(found.iter().zip(&recorded))
            .filter(|(_, (found, recorded))| found != recorded)
            .map(|((start, len), _)| (start, start + len))
            .collect(),
        _ => vec![(0, size)],
    }
}

/// What the reads of one pass share: the rate cap, the stop flag and the counters.
struct Reader<'a> {
    pace: Mutex<Pace>,
    started: Instant,
    stop: &'a AtomicBool,
    progress: &'a ScrubProgress,
}

/// A file read at the pass's pace: the hash reads through it.
struct Paced<'a> {
    file: &'a File,
    reader: &'a Reader<'a>,
}

impl FileExt for Paced<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let reader = self.reader;
        if reader.stop.load(Ordering::Relaxed) {
            // Not `Interrupted`, which `read_exact_at` would retry.
            return Err(io::Error::other("scrub stopped"));
        }
        let most = reader.pace.lock().read_size(buf.len());
        let read = self.file.read_at(&mut buf[..most], offset)?;
        reader
            .progress
            .bytes_read
            .fetch_add(read as u64, Ordering::Relaxed);
        let wait = reader
            .pace
            .lock()
            .wait_after(read as u64, reader.started.elapsed());
        std::thread::sleep(wait);
        Ok(read)
    }

    fn write_at(&self, _: &[u8], _: u64) -> io::Result<usize> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// The rate cap: a token bucket holding at most `BURST` of credit.
struct Pace {
    rate: Option<NonZeroU64>,
    /// The time (since the pass began) by which the bytes read so far are paid for.
    paid_until: Duration,
}

impl Pace {
    fn new(rate: Option<NonZeroU64>) -> Pace {
        Pace {
            rate,
            paid_until: Duration::ZERO,
        }
    }

    /// The most to read at once out of `wanted`.
    fn read_size(&self, wanted: usize) -> usize {
        match self.rate {
            None => wanted,
            Some(rate) => wanted.min((rate.get() / READS_PER_SEC).max(4096) as usize),
        }
    }

    /// How long to wait, `now` into the pass, after reading `read` more bytes.
    fn wait_after(&mut self, read: u64, now: Duration) -> Duration {
        let Some(rate) = self.rate else {
            return Duration::ZERO;
        };
        self.paid_until = self.paid_until.max(now.saturating_sub(BURST))
            + Duration::from_secs_f64(read as f64 / rate.get() as f64);
        self.paid_until.saturating_sub(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::Library;
    use std::os::unix::fs::MetadataExt;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_pace_holds_reads_to_the_rate_and_idle_time_earns_at_most_a_burst() {
        let mut pace = Pace::new(NonZeroU64::new(1000));
        assert_eq!(pace.read_size(1 << 20), 4096);
        assert_eq!(pace.wait_after(500, ms(0)), ms(500));
        assert_eq!(pace.wait_after(500, ms(500)), ms(500));
        // Ten seconds idle: one second of credit, no more.
        assert_eq!(pace.wait_after(500, ms(11_000)), ms(0));
        assert_eq!(pace.wait_after(500, ms(11_000)), ms(0));
        assert_eq!(pace.wait_after(500, ms(11_000)), ms(500));
        let mut free = Pace::new(None);
        assert_eq!(free.read_size(1 << 20), 1 << 20);
        assert_eq!(free.wait_after(1 << 30, ms(0)), ms(0));
    }

    #[test]
    fn differing_ranges_are_the_parts_that_differ_or_the_whole_file() {
        let size = 20 * 1024 * 1024;
        let (a, b) = ([1; 32], [2; 32]);
        let ranges = differing_ranges(size, &[a, b, a], Some(vec![a, a, a]));
        assert_eq!(ranges, [(8 << 20, 16 << 20)]);
        assert_eq!(differing_ranges(size, &[a, b, a], None), [(0, size)]);
        assert_eq!(differing_ranges(5, &[], Some(vec![a])), [(0, 5)]);
    }

    struct Rig(Library);

    impl std::ops::Deref for Rig {
        type Target = Library;

        fn deref(&self) -> &Library {
            &self.0
        }
    }

    impl Rig {
        fn new() -> Rig {
            Rig(Library::new())
        }

        /// Writes `rel` and records it as synced with the hash of `recorded` and the file's
        /// stat as it is now: a file whose bytes are not `recorded` models bytes damaged under
        /// an unchanged stat.
        fn record(&self, rel: &str, recorded: &[u8], on_disk: &[u8], media_id: i64) {
            std::fs::write(self.path(rel), on_disk).unwrap();
            let meta = std::fs::metadata(self.path(rel)).unwrap();
            let stat = FileStat::from_metadata(&meta);
            let recorded_hash = {
                let mut hasher = hash::StreamHasher::new(recorded.len() as u64);
                hasher.update(recorded);
                hasher.finish().unwrap().to_hex()
            };
            let entry = IndexEntry {
                media_id,
                hash: recorded_hash,
                size: recorded.len() as u64,
                mtime_ns: stat.mtime_ns,
                ctime_ns: stat.ctime_ns,
                ino: meta.ino(),
                content_up: true,
            };
            self.index.put(rel, &entry).unwrap();
        }

        fn pass(&self, stop: &AtomicBool) -> ScrubReport {
            let progress = ScrubProgress::default();
            scrub_pass(
                &self.index,
                &self.backing,
                &ScrubConfig::default(),
                &progress,
                stop,
            )
            .unwrap()
        }
    }

    #[test]
    fn scrub_marks_exactly_the_file_damaged_under_an_unchanged_stat() {
        let rig = Rig::new();
        rig.record("good", b"hello", b"hello", 1);
        rig.record("damaged", b"hello", b"jello", 2);
        let report = rig.pass(&AtomicBool::new(false));
        assert_eq!(report.corrupted, ["damaged"]);
        assert_eq!((report.files_checked, report.skipped), (2, 0));
        assert!(report.finished);
        assert_eq!(rig.index.corrupted_paths().unwrap(), ["damaged"]);
        let mark = rig.index.corrupted("damaged").unwrap().unwrap();
        assert_eq!(
            mark.recorded_hash,
            rig.index.get("damaged").unwrap().unwrap().hash
        );
        assert_eq!(mark.ranges, [(0, 5)]);
        // The index entry is left as the service has it: no new version.
        assert_eq!(rig.index.get("damaged").unwrap().unwrap().media_id, 2);
    }

    #[test]
    fn a_file_found_intact_again_loses_its_mark() {
        let rig = Rig::new();
        rig.record("photo", b"hello", b"jello", 1);
        rig.pass(&AtomicBool::new(false));
        assert_eq!(rig.index.corrupted_paths().unwrap(), ["photo"]);
        // The good bytes copied back by hand; the engine then records the same content with
        // the file's new stat, which keeps the mark.
        rig.record("photo", b"hello", b"hello", 1);
        assert_eq!(rig.index.corrupted_paths().unwrap(), ["photo"]);
        let report = rig.pass(&AtomicBool::new(false));
        assert!(report.corrupted.is_empty(), "{report:?}");
        assert!(rig.index.corrupted_paths().unwrap().is_empty());
        assert!(rig.index.corrupted("photo").unwrap().is_none());
    }

    #[test]
    fn scrub_skips_a_file_edited_since_its_hash_was_taken() {
        let rig = Rig::new();
        // Other bytes, and a ctime other than the one recorded with the hash: written since.
        rig.record("edited", b"hello", b"jello", 1);
        let entry = rig.index.get("edited").unwrap().unwrap();
        let before_the_edit = IndexEntry {
            ctime_ns: entry.ctime_ns - 1,
            ..entry
        };
        rig.index.put("edited", &before_the_edit).unwrap();
        let report = rig.pass(&AtomicBool::new(false));
        assert_eq!((report.files_checked, report.skipped), (0, 1));
        assert!(report.corrupted.is_empty());
        assert!(rig.index.corrupted_paths().unwrap().is_empty());
    }

    #[test]
    fn a_stopped_pass_resumes_after_the_last_path_it_finished() {
        let rig = Rig::new();
        for (n, name) in ["a", "b", "c"].into_iter().enumerate() {
            rig.record(name, b"same", b"diff", n as i64 + 1);
        }
        // A pass stopped after "a": the cursor names it.
        rig.index.set_note(CURSOR, "a").unwrap();
        let stopped = rig.pass(&AtomicBool::new(true));
        assert!(!stopped.finished && stopped.files_checked == 0);
        assert_eq!(rig.index.note(CURSOR).unwrap().as_deref(), Some("a"));
        let rest = rig.pass(&AtomicBool::new(false));
        assert_eq!(rest.corrupted, ["b", "c"]);
        assert!(rest.finished);
        // Finished: the next pass starts over.
        assert_eq!(rig.index.note(CURSOR).unwrap().as_deref(), Some(""));
        assert_eq!(rig.pass(&AtomicBool::new(false)).corrupted, ["a", "b", "c"]);
    }

    #[test]
    fn a_multipart_file_names_the_part_that_differs_once_its_digests_are_known() {
        let rig = Rig::new();
        let size = 17 * 1024 * 1024 + 3;
        let good: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        rig.record("big", &good, &good, 1);
        // Intact, it teaches the index its part digests.
        assert!(rig.pass(&AtomicBool::new(false)).corrupted.is_empty());
        let hash = rig.index.get("big").unwrap().unwrap().hash;
        assert_eq!(rig.index.content_parts(&hash).unwrap().unwrap().len(), 3);
        let mut bad = good.clone();
        bad[9 * 1024 * 1024] ^= 1;
        rig.index.remove("big").unwrap();
        rig.record("big", &good, &bad, 1);
        assert_eq!(rig.pass(&AtomicBool::new(false)).corrupted, ["big"]);
        let mark = rig.index.corrupted("big").unwrap().unwrap();
        assert_eq!(mark.ranges, [(8 << 20, 16 << 20)]);
    }

    #[test]
    fn scrub_opens_no_symlink() {
        let rig = Rig::new();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("f"), b"jello").unwrap();
        rig.record("f", b"hello", b"hello", 1);
        std::fs::remove_file(rig.path("f")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("f"), rig.path("f")).unwrap();
        let report = rig.pass(&AtomicBool::new(false));
        assert_eq!((report.files_checked, report.skipped), (0, 1));
    }
}
