//! Hashing a backing file in the state it was in from start to end of the read.

use std::io::{self, Read};
use std::num::NonZeroUsize;
use std::path::Path;

use super::local::{Backing, FileStat};
use crate::progress;
use maxlofs_api::hash;

/// Files up to this size are kept in memory as they are hashed, so that their upload sends the
/// very bytes hashed instead of reading and checking them again. No more than one chunk of a
/// streamed PUT, so memory stays bounded by the looks under way.
pub const KEPT_MAX: u64 = 1024 * 1024;

/// A file's Maxlo hash, what its read left for the upload, and the stat both belong to.
pub struct Hashed {
    pub hash: String,
    pub read: HashRead,
    pub stat: FileStat,
}

/// What hashing a file read besides its hash: the SHA-256 of each part (multipart files only),
/// and the bytes themselves (files up to `KEPT_MAX`).
#[derive(Default)]
pub struct HashRead {
    pub parts: Vec<[u8; 32]>,
    pub bytes: Option<Vec<u8>>,
}

/// Hashes `path`, checking the file did not change while it was read (stat of the open file and
/// of the path, before and after); tries a few times. `None`: it kept changing. `threads`: how many
/// the hash of a multipart file may use.
pub fn hash_stable(
    backing: &Backing,
    path: &Path,
    threads: NonZeroUsize,
) -> io::Result<Option<Hashed>> {
    for _ in 0..3 {
        let (file, before) = backing.open_file(path)?;
        let hashed = if before.size <= KEPT_MAX {
            let mut bytes = Vec::with_capacity(before.size as usize);
            (&file).take(before.size).read_to_end(&mut bytes)?;
            let mut hasher = hash::StreamHasher::new(before.size);
            hasher.update(&bytes);
            // Short: it shrank while being read.
            hasher.finish().map(|hash| {
                let read = HashRead {
                    parts: Vec::new(),
                    bytes: Some(bytes),
                };
                (hash, read)
            })
        } else {
            let progress = progress::hashing(path, before.size);
            let counter = progress.as_ref().map(|p| p as &dyn hash::BytesHashed);
            match hash::hash_with_parts(&file, before.size, threads, counter) {
                Ok((hash, parts)) => Some((hash, HashRead { parts, bytes: None })),
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => None,
                Err(err) => return Err(err),
            }
        };
        // It shrank while being read: look again.
        let Some((hash, read)) = hashed else {
            continue;
        };
        let held = FileStat::from_metadata(&file.metadata()?);
        let (_, at_path) = backing.open_file(path)?;
        if before == held && before == at_path {
            return Ok(Some(Hashed {
                hash: hash.to_hex(),
                read,
                stat: before,
            }));
        }
    }
    Ok(None)
}
