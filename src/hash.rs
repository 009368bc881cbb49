//! `maxlofs hash FILE...`: the Maxlo file hash of each file, printed as sha256sum prints.

use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use maxlofs_api::hash::{self, FileHash};
use maxlofs_sync::progress;

use crate::output::{escaped, escaped_line};

/// Hashes a regular file on all cores, with a progress report when it is large.
pub fn hash_with_progress(path: &Path) -> io::Result<FileHash> {
    let (file, size) = hash::open_regular(path)?;
    let progress = progress::hashing(path, size);
    hash::hash_open_file(
        &file,
        size,
        hash::default_workers(),
        progress.as_ref().map(|p| p as &dyn hash::BytesHashed),
    )
}

/// One line of `maxlofs hash`, as GNU sha256sum writes it: `<hash>  <path>`, the path's own
/// bytes even when not UTF-8; a path holding a backslash, a newline or a carriage return has
/// them written `\\`, `\n` and `\r`, and its line starts with a backslash, so that one file is
/// one line and `sha256sum -c` reads the name back.
fn checksum_line(hash: &str, path: &[u8]) -> Vec<u8> {
    let escapes = path.iter().any(|b| matches!(b, b'\\' | b'\n' | b'\r'));
    let mut line = Vec::with_capacity(hash.len() + path.len() + 4);
    if escapes {
        line.push(b'\\');
    }
    line.extend_from_slice(hash.as_bytes());
    line.extend_from_slice(b"  ");
    for &byte in path {
        match byte {
            b'\\' => line.extend_from_slice(b"\\\\"),
            b'\n' => line.extend_from_slice(b"\\n"),
            b'\r' => line.extend_from_slice(b"\\r"),
            other => line.push(other),
        }
    }
    line.push(b'\n');
    line
}

/// `maxlofs hash FILE...`: prints `<hash>  <path>` per file, like sha256sum. A file that cannot
/// be hashed is reported on stderr and the others are still hashed; the exit code is 1 if any
/// failed.
pub fn run_cli(files: &[PathBuf]) -> i32 {
    let mut stdout = io::stdout().lock();
    let mut failed = false;
    for path in files {
        match hash_with_progress(path) {
            Ok(hash) => {
                let line = checksum_line(&hash.to_string(), path.as_os_str().as_bytes());
                if let Err(err) = stdout.write_all(&line) {
                    eprintln!("maxlofs: hash: stdout: {err}");
                    return 1;
                }
            }
            Err(err) => {
                // Flush first so stdout and stderr keep the order of the files.
                let _ = stdout.flush();
                eprintln!(
                    "maxlofs: hash: {}: {}",
                    escaped(&path.to_string_lossy()),
                    escaped_line(&err.to_string())
                );
                failed = true;
            }
        }
    }
    if let Err(err) = stdout.flush() {
        eprintln!("maxlofs: hash: stdout: {err}");
        return 1;
    }
    i32::from(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_lines_escape_names_as_sha256sum_does() {
        let hash = "ab".repeat(32);
        let plain = [hash.as_bytes(), b"  plain \xff.jpg\n"].concat();
        assert_eq!(checksum_line(&hash, b"plain \xff.jpg"), plain);
        assert_eq!(
            checksum_line(&hash, b"a\nb\\c\rd"),
            format!("\\{hash}  a\\nb\\\\c\\rd\n").into_bytes()
        );
    }
}
