//! The Maxlo file hash (NOTES.md, "File hashing").

use std::path::PathBuf;

pub fn run_cli(_files: &[PathBuf]) -> i32 {
    eprintln!("hash: not built yet");
    2
}

/// Placeholder until the hash module lands (single-part only).
pub fn hash_open_file(file: &std::fs::File, _size: u64) -> std::io::Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut hasher = sha2::Sha256::new();
    let mut reader = std::io::BufReader::new(file);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
