//! Hashing a backing file in the state it was in from start to end of the read.

use std::io;
use std::num::NonZeroUsize;
use std::path::Path;

use super::local::{Backing, FileStat};
use crate::hash;

/// A file's Maxlo hash, the SHA-256 of each of its parts (multipart files only), and the stat
/// both belong to.
pub struct Hashed {
    pub hash: String,
    pub parts: Vec<[u8; 32]>,
    pub stat: FileStat,
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
        let progress = hash::progress_for(path, before.size);
        let (hash, parts) =
            match hash::hash_with_parts(&file, before.size, threads, progress.as_ref()) {
                Ok((hash, parts)) => (hash.to_hex(), parts),
                // It shrank while being read: look again.
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => continue,
                Err(err) => return Err(err),
            };
        let held = FileStat::from_metadata(&file.metadata()?);
        let (_, at_path) = backing.open_file(path)?;
        if before == held && before == at_path {
            return Ok(Some(Hashed {
                hash,
                parts,
                stat: before,
            }));
        }
    }
    Ok(None)
}
