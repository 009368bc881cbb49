//! The Maxlo file hash (docs/contract.md, "File hash").
//!
//! A file of at most 16 MiB hashes as the SHA-256 of its content. A larger file is cut into parts
//! of `part_size` bytes (the last one shorter); its hash is the SHA-256 of the concatenated raw
//! 32-byte SHA-256 digests of its parts. Parts are independent, so they are hashed in parallel.

use sha2::{Digest, Sha256};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::num::NonZeroUsize;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

const MIB: u64 = 1024 * 1024;
/// Files up to this size are hashed whole ("16 MB", read as MiB).
pub const SINGLE_PART_MAX: u64 = 16 * MIB;
/// The part size a multipart hash starts from ("8 MB", read as MiB).
pub const FIRST_PART_SIZE: u64 = 8 * MIB;
/// The part size doubles until the file needs at most this many parts.
pub const MAX_PARTS: u64 = 900;
/// Read buffer per thread. Measured from the page cache with SHA-NI, 32 KiB to 4 MiB hash at the
/// same speed; this keeps syscalls few and the memory per worker small.
const READ_BUFFER: usize = 256 * 1024;

/// Counts the bytes hashed, for whoever shows progress (a bar, a log line). Parts are hashed on
/// several threads at once, so it is shared.
pub trait BytesHashed: Sync {
    fn add(&self, bytes: u64);
}

/// A Maxlo file hash. Displays as 64 lowercase hex characters, the form the API carries.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FileHash([u8; 32]);

impl FileHash {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for FileHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for FileHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileHash({self})")
    }
}

/// The part size for a file of `file_size` bytes, or None when the file is hashed whole.
pub fn part_size(file_size: u64) -> Option<u64> {
    if file_size <= SINGLE_PART_MAX {
        return None;
    }
    let mut size = FIRST_PART_SIZE;
    // Cannot overflow: at 2^63 any u64 needs at most 2 parts.
    while file_size.div_ceil(size) > MAX_PARTS {
        size *= 2;
    }
    Some(size)
}

/// How many threads `hash_file` uses for a multipart file: one per core. Asked once: the
/// answer reads cgroup files under /proc, which costs more than hashing a small file.
pub fn default_workers() -> NonZeroUsize {
    static WORKERS: std::sync::OnceLock<NonZeroUsize> = std::sync::OnceLock::new();
    *WORKERS.get_or_init(|| std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN))
}

/// Opens a regular file for hashing, with its size. A directory is EISDIR; anything else that is
/// not a regular file is refused, and opening a FIFO cannot hang.
pub fn open_regular(path: &Path) -> io::Result<(File, u64)> {
    // O_NONBLOCK so that opening a FIFO cannot hang; it changes nothing for a regular file.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let metadata = file.metadata()?;
    if metadata.is_dir() {
        return Err(io::Error::from_raw_os_error(libc::EISDIR));
    }
    if !metadata.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok((file, metadata.len()))
}

/// Opens and hashes a regular file on all cores. Blocking: call it from a worker thread.
pub fn hash_file(path: &Path) -> io::Result<FileHash> {
    let (file, size) = open_regular(path)?;
    hash_open_file(&file, size, default_workers(), None)
}

/// Hashes the first `size` bytes of an open file (or anything readable at offsets), with up to
/// `workers` threads for a multipart file. The caller gives `size` (from its own fstat) so the
/// hash matches the size it reports; a file that turns out shorter is an `UnexpectedEof` error.
/// Bytes read are counted on `progress`.
pub fn hash_open_file<F: FileExt + Sync>(
    file: &F,
    size: u64,
    workers: NonZeroUsize,
    progress: Option<&dyn BytesHashed>,
) -> io::Result<FileHash> {
    hash_with_parts(file, size, workers, progress).map(|(hash, _)| hash)
}

/// `hash_open_file`, and the SHA-256 of each File Hashing part of a multipart file (empty for a
/// file hashed whole): the multipart upload names its parts by these, so a file is read once for
/// both.
pub fn hash_with_parts<F: FileExt + Sync>(
    file: &F,
    size: u64,
    workers: NonZeroUsize,
    progress: Option<&dyn BytesHashed>,
) -> io::Result<(FileHash, Vec<[u8; 32]>)> {
    match part_size(size) {
        None => {
            // Small files are the common case: don't zero a full buffer for a few KiB.
            let mut buffer = vec![0; READ_BUFFER.min(size.max(1) as usize)];
            let digest = hash_range(file, 0, size, &mut buffer, progress)?;
            Ok((FileHash(digest), Vec::new()))
        }
        Some(part) => {
            let part_digests = hash_parts(file, size, part, workers, progress)?;
            Ok((hash_of_parts(&part_digests), part_digests))
        }
    }
}

/// The hash of a multipart file from the SHA-256 digests of its parts, in order.
pub fn hash_of_parts(part_digests: &[[u8; 32]]) -> FileHash {
    FileHash(Sha256::digest(part_digests.concat()).into())
}

/// The File Hashing parts of a file of `size` bytes as (offset, length), in order; one part for
/// a file hashed whole.
pub fn parts(size: u64) -> Vec<(u64, u64)> {
    match part_size(size) {
        None => vec![(0, size)],
        Some(part) => (0..size.div_ceil(part))
            .map(|index| (index * part, part.min(size - index * part)))
            .collect(),
    }
}

/// The SHA-256 of each part, in order, computed by `workers` threads that take parts in turn.
fn hash_parts<F: FileExt + Sync>(
    file: &F,
    size: u64,
    part: u64,
    workers: NonZeroUsize,
    progress: Option<&dyn BytesHashed>,
) -> io::Result<Vec<[u8; 32]>> {
    let parts = size.div_ceil(part);
    let next_part = AtomicU64::new(0);
    let worker = || -> io::Result<Vec<(u64, [u8; 32])>> {
        let mut buffer = vec![0; READ_BUFFER];
        let mut done = Vec::new();
        loop {
            let index = next_part.fetch_add(1, Ordering::Relaxed);
            if index >= parts {
                return Ok(done);
            }
            let start = index * part;
            let len = part.min(size - start);
            match hash_range(file, start, len, &mut buffer, progress) {
                Ok(digest) => done.push((index, digest)),
                Err(err) => {
                    // Stop the other workers: the file hash is lost anyway.
                    next_part.store(parts, Ordering::Relaxed);
                    return Err(err);
                }
            }
        }
    };
    let threads = workers.get().min(parts as usize);
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads).map(|_| scope.spawn(worker)).collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("hash worker panicked"))
            .collect()
    });
    let mut digests = vec![[0; 32]; parts as usize];
    for result in results {
        for (index, digest) in result? {
            digests[index as usize] = digest;
        }
    }
    Ok(digests)
}

/// The Maxlo hash of content that arrives in order, a chunk at a time (a download), for content
/// said to be `size` bytes long.
pub struct StreamHasher {
    size: u64,
    part: Option<u64>,
    fed: u64,
    current: Sha256,
    /// Bytes of the current part fed so far.
    in_part: u64,
    parts: Vec<u8>,
}

impl StreamHasher {
    pub fn new(size: u64) -> StreamHasher {
        StreamHasher {
            size,
            part: part_size(size),
            fed: 0,
            current: Sha256::new(),
            in_part: 0,
            parts: Vec::new(),
        }
    }

    pub fn update(&mut self, mut bytes: &[u8]) {
        self.fed += bytes.len() as u64;
        let Some(part) = self.part else {
            self.current.update(bytes);
            return;
        };
        while !bytes.is_empty() {
            let take = ((part - self.in_part) as usize).min(bytes.len());
            self.current.update(&bytes[..take]);
            self.in_part += take as u64;
            if self.in_part == part {
                self.parts.extend_from_slice(&self.current.finalize_reset());
                self.in_part = 0;
            }
            bytes = &bytes[take..];
        }
    }

    /// The hash, or `None` when other than `size` bytes were fed.
    pub fn finish(mut self) -> Option<FileHash> {
        if self.fed != self.size {
            return None;
        }
        if self.part.is_none() {
            return Some(FileHash(self.current.finalize().into()));
        }
        if self.in_part > 0 {
            self.parts.extend_from_slice(&self.current.finalize_reset());
        }
        Some(FileHash(Sha256::digest(&self.parts).into()))
    }
}

/// SHA-256 of `len` bytes from `start`, read with positioned reads so threads can share a file.
pub fn hash_range<F: FileExt>(
    file: &F,
    start: u64,
    len: u64,
    buffer: &mut [u8],
    progress: Option<&dyn BytesHashed>,
) -> io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut offset = start;
    let end = start + len;
    while offset < end {
        let want = buffer.len().min((end - offset) as usize);
        let chunk = &mut buffer[..want];
        file.read_exact_at(chunk, offset).map_err(|err| {
            if err.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(err.kind(), "file shrank while being hashed")
            } else {
                err
            }
        })?;
        hasher.update(&*chunk);
        offset += want as u64;
        if let Some(progress) = progress {
            progress.add(want as u64);
        }
    }
    Ok(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The content of the test vectors (docs/contract.md): byte i is i % 251. Generated on the
    /// fly, so 100 MiB costs no memory.
    struct Pattern {
        len: u64,
    }

    const PERIOD: usize = 251;

    impl FileExt for Pattern {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            let period: [u8; PERIOD] = std::array::from_fn(|i| i as u8);
            let want = buf.len().min(self.len.saturating_sub(offset) as usize);
            let mut phase = (offset % PERIOD as u64) as usize;
            let mut filled = 0;
            while filled < want {
                let take = (PERIOD - phase).min(want - filled);
                buf[filled..filled + take].copy_from_slice(&period[phase..phase + take]);
                filled += take;
                phase = 0;
            }
            Ok(want)
        }

        fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<usize> {
            Err(io::ErrorKind::Unsupported.into())
        }
    }

    fn pattern_hash(len: u64, workers: usize) -> String {
        let workers = NonZeroUsize::new(workers).unwrap();
        hash_open_file(&Pattern { len }, len, workers, None)
            .unwrap()
            .to_hex()
    }

    #[test]
    fn notes_vectors() {
        let vectors = [
            (
                0,
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
            (
                1,
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            ),
            (
                1000,
                "4e4c294b331f7a2099a379bec34b9f9fc03dc46ab465d998f4d683da53487e6d",
            ),
            (
                16777216,
                "287507f403176f1f5b22b9a4d9cb49f7d7f88ac19e406b5ae87ce109564846bd",
            ),
            (
                16777217,
                "c67fb45700283719a5e83286b12584152f70b3dc9fbc429ce236601daf9aaa2f",
            ),
            (
                104857600,
                "8dc4e96bb3338c3e63b6abf2f22fd2a16ef341e91f0b961edf98867ca0d59dce",
            ),
        ];
        for (len, expected) in vectors {
            assert_eq!(pattern_hash(len, 4), expected, "pattern({len})");
        }
    }

    #[test]
    fn part_size_edges() {
        assert_eq!(part_size(0), None);
        assert_eq!(part_size(16 * MIB), None);
        assert_eq!(part_size(16 * MIB + 1), Some(8 * MIB));
        // 900 parts of 8 MiB is the largest file 8 MiB parts serve; one byte more needs 901.
        assert_eq!(part_size(900 * 8 * MIB), Some(8 * MIB));
        assert_eq!(part_size(900 * 8 * MIB + 1), Some(16 * MIB));
        // Further doublings: 900 parts of 1 GiB, then 2 GiB.
        assert_eq!(part_size(900 * 1024 * MIB), Some(1024 * MIB));
        assert_eq!(part_size(900 * 1024 * MIB + 1), Some(2048 * MIB));
        assert_eq!(part_size(u64::MAX), Some(1 << 55));
        for size in [16 * MIB + 1, 900 * 8 * MIB + 1, 5 << 40, u64::MAX] {
            let part = part_size(size).unwrap();
            assert!(size.div_ceil(part) <= MAX_PARTS, "{size}");
            // The backend needs at least 3 parts, the first of at least 5 MiB.
            assert!(size.div_ceil(part) >= 3 && part >= 5 * MIB, "{size}");
        }
    }

    #[test]
    fn multipart_is_the_same_with_one_worker_or_many() {
        // 5 parts of 8 MiB, the last short: more parts than workers, and uneven.
        let len = 4 * 8 * MIB + 12345;
        let one = pattern_hash(len, 1);
        for workers in [2, 3, 8] {
            assert_eq!(pattern_hash(len, workers), one, "{workers} workers");
        }
    }

    #[test]
    fn part_digests_are_the_sha256_of_each_part_and_make_the_hash() {
        let len = 2 * 8 * MIB + 1000;
        let workers = NonZeroUsize::new(2).unwrap();
        let (hash, digests) = hash_with_parts(&Pattern { len }, len, workers, None).unwrap();
        assert_eq!(hash.to_hex(), pattern_hash(len, 1));
        let spans = parts(len);
        assert_eq!(spans, [(0, 8 * MIB), (8 * MIB, 8 * MIB), (16 * MIB, 1000)]);
        assert_eq!(digests.len(), spans.len());
        for ((offset, size), digest) in spans.into_iter().zip(&digests) {
            let mut bytes = vec![0; size as usize];
            Pattern { len }.read_exact_at(&mut bytes, offset).unwrap();
            assert_eq!(&Sha256::digest(&bytes)[..], &digest[..]);
        }
        let (_, whole) = hash_with_parts(&Pattern { len: 10 }, 10, workers, None).unwrap();
        assert!(whole.is_empty());
        assert_eq!(parts(10), [(0, 10)]);
        assert_eq!(parts(0), [(0, 0)]);
    }

    #[test]
    fn a_stream_hashes_as_the_file_whatever_its_chunks() {
        for len in [0, 1000, 16 * MIB, 16 * MIB + 1, 3 * 8 * MIB + 77] {
            let mut bytes = vec![0; len as usize];
            Pattern { len }.read_exact_at(&mut bytes, 0).unwrap();
            let mut stream = StreamHasher::new(len);
            for chunk in bytes.chunks(3 * 1024 * 1024 + 7) {
                stream.update(chunk);
            }
            assert_eq!(
                stream.finish().map(|h| h.to_hex()),
                Some(pattern_hash(len, 2)),
                "{len}"
            );
        }
        let mut short = StreamHasher::new(10);
        short.update(b"12345");
        assert!(short.finish().is_none());
    }

    #[test]
    fn progress_counts_every_byte_hashed_whole_or_in_parts() {
        struct Counted(AtomicU64);
        impl BytesHashed for Counted {
            fn add(&self, bytes: u64) {
                self.0.fetch_add(bytes, Ordering::Relaxed);
            }
        }
        for (len, workers) in [(1000, 1), (4 * 8 * MIB + 12345, 3)] {
            let counted = Counted(AtomicU64::new(0));
            let workers = NonZeroUsize::new(workers).unwrap();
            let with = hash_open_file(&Pattern { len }, len, workers, Some(&counted)).unwrap();
            assert_eq!(counted.0.load(Ordering::Relaxed), len);
            assert_eq!(
                with,
                hash_open_file(&Pattern { len }, len, workers, None).unwrap()
            );
        }
    }

    #[test]
    fn a_short_file_is_an_error_not_a_wrong_hash() {
        let workers = NonZeroUsize::new(2).unwrap();
        for (actual, claimed) in [(10, 20), (20 * MIB, 30 * MIB)] {
            let err = hash_open_file(&Pattern { len: actual }, claimed, workers, None).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        }
    }

    #[test]
    fn hash_file_reads_real_files_and_refuses_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        std::fs::write(&path, b"hello").unwrap();
        assert_eq!(
            hash_file(&path).unwrap().to_hex(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        let err = hash_file(dir.path()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EISDIR));
        let err = hash_file(&dir.path().join("missing")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
