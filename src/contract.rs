//! The readings of the Maxlo API pages that the project fixes as its contract, each in one place.
//! See docs/contract.md.

use chrono::{DateTime, SecondsFormat, Utc};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

/// Timestamps: UTC ISO 8601 with milliseconds and `Z` (what JavaScript's toISOString writes).
pub fn iso8601(secs: i64, nanos: u32) -> String {
    DateTime::<Utc>::from_timestamp(secs, nanos)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses a timestamp a client sent. Any RFC 3339 form is accepted; what we send is `iso8601`'s.
pub fn parse_iso8601(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Why a local path has no media_path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MediaPathError {
    #[error("name is not UTF-8")]
    NotUtf8,
    #[error("path is empty or not relative")]
    NotRelative,
}

/// media_path: the path relative to the mount root, `/`-separated, no leading slash, with the
/// configured prefix (may be empty) prepended. Names that are not UTF-8 are never mangled: they
/// have no media_path and stay local.
pub fn media_path(prefix: &str, relative: &Path) -> Result<String, MediaPathError> {
    let mut out = String::from(prefix.trim_matches('/'));
    let mut parts = 0;
    for component in relative.components() {
        let Component::Normal(name) = component else {
            return Err(MediaPathError::NotRelative);
        };
        let name =
            std::str::from_utf8(OsStr::as_bytes(name)).map_err(|_| MediaPathError::NotUtf8)?;
        if !out.is_empty() {
            out.push('/');
        }
        out.push_str(name);
        parts += 1;
    }
    if parts == 0 {
        return Err(MediaPathError::NotRelative);
    }
    Ok(out)
}

/// Whether a media_path the service receives is acceptable: non-empty, relative, no `..`.
pub fn is_valid_media_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != ".." && part != ".")
}

/// Whether `text` is written as the API writes a file hash (or a part hash): 64 lowercase hex
/// characters.
pub fn is_hex_digest(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;
    use std::path::PathBuf;

    #[test]
    fn timestamps_are_utc_millis_with_z() {
        assert_eq!(iso8601(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            iso8601(1_795_717_200, 123_456_789),
            "2026-11-26T18:20:00.123Z"
        );
        assert!(parse_iso8601(&iso8601(5, 0)).is_some());
        assert!(parse_iso8601("yesterday").is_none());
    }

    #[test]
    fn media_path_is_relative_slash_separated_with_prefix() {
        let p = Path::new("photos/2026/a.jpg");
        assert_eq!(media_path("", p).unwrap(), "photos/2026/a.jpg");
        assert_eq!(media_path("/vol/", p).unwrap(), "vol/photos/2026/a.jpg");
        assert_eq!(
            media_path("", Path::new("")),
            Err(MediaPathError::NotRelative)
        );
        assert_eq!(
            media_path("", Path::new("/abs")),
            Err(MediaPathError::NotRelative)
        );
        let bad = PathBuf::from(OsString::from_vec(b"dir/\xff.jpg".to_vec()));
        assert_eq!(media_path("", &bad), Err(MediaPathError::NotUtf8));
    }

    #[test]
    fn media_path_validation() {
        assert!(is_valid_media_path("a/b.jpg"));
        for bad in ["", "/a", "a/../b", "a//b", "..", "a/./b"] {
            assert!(!is_valid_media_path(bad), "{bad}");
        }
    }
}
