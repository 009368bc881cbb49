//! The readings of the Maxlo API pages that the project fixes as its contract, each in one place.
//! See docs/contract.md.

use chrono::{DateTime, Datelike, SecondsFormat, Utc};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

/// Timestamps: UTC ISO 8601 with milliseconds and `Z`, as JavaScript's toISOString writes them:
/// a four-digit year, or outside 0000–9999 a sign and six digits (`+010000-01-01T…`); `None`
/// beyond ±262,143 years (chrono's range, inside JavaScript's ±8.64e15 ms from the epoch).
pub fn iso8601(secs: i64, nanos: u32) -> Option<String> {
    DateTime::<Utc>::from_timestamp(secs, nanos).map(written)
}

/// `iso8601` of a time in nanoseconds since the epoch.
pub fn iso8601_ns(ns: i128) -> Option<String> {
    utc_ns(ns).map(written)
}

/// Whether `iso8601_ns` can write `ns` (asked without writing it).
pub fn can_write_ns(ns: i128) -> bool {
    utc_ns(ns).is_some()
}

fn utc_ns(ns: i128) -> Option<DateTime<Utc>> {
    let secs = i64::try_from(ns.div_euclid(1_000_000_000)).ok()?;
    DateTime::<Utc>::from_timestamp(secs, ns.rem_euclid(1_000_000_000) as u32)
}

fn written(time: DateTime<Utc>) -> String {
    match time.year() {
        0..=9999 => time.to_rfc3339_opts(SecondsFormat::Millis, true),
        year => format!(
            "{}{:06}-{}",
            if year < 0 { '-' } else { '+' },
            year.unsigned_abs(),
            time.format("%m-%dT%H:%M:%S%.3fZ")
        ),
    }
}

/// Parses a timestamp a client sent: any RFC 3339 form, and `iso8601`'s six-digit years.
pub fn parse_iso8601(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Some(time.with_timezone(&Utc));
    }
    // ±YYYYYY-MM-DD…: the rest is read under the leap year 2000, then moved to the real year
    // (which refuses a 29 February it lacks).
    let sign = match text.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits = text.get(1..7)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) || text.get(7..8)? != "-" {
        return None;
    }
    let year = sign * digits.parse::<i32>().ok()?;
    let rest = DateTime::parse_from_rfc3339(&format!("2000{}", text.get(7..)?)).ok()?;
    if year == 0 && sign < 0 || rest.offset().local_minus_utc() != 0 {
        return None;
    }
    let date = chrono::NaiveDate::from_ymd_opt(year, rest.month(), rest.day())?;
    Some(date.and_time(rest.time()).and_utc())
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

/// Why no media_path the service accepts can start with `prefix` (a grant's prefix_path, a
/// mount's `--prefix`), or `None` when one can. As in `media_path`, the slashes around it are
/// trimmed; what is left is empty or passes `is_valid_media_path`. A control character is refused
/// too: a prefix is typed or pasted, not found on disk, and one holding a newline is a mistake.
pub fn prefix_fault(prefix: &str) -> Option<&'static str> {
    let inner = prefix.trim_matches('/');
    if prefix.chars().any(char::is_control) {
        Some("it holds a control character")
    } else if !inner.is_empty() && !is_valid_media_path(inner) {
        Some("it has an empty, `.` or `..` component")
    } else {
        None
    }
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
        assert_eq!(iso8601(0, 0).unwrap(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            iso8601(1_795_717_200, 123_456_789).unwrap(),
            "2026-11-26T18:20:00.123Z"
        );
        assert!(parse_iso8601(&iso8601(5, 0).unwrap()).is_some());
        assert!(parse_iso8601("yesterday").is_none());
    }

    /// What JavaScript's `new Date(ms).toISOString()` writes, from both ends of its range.
    #[test]
    fn timestamps_far_from_now_are_written_as_javascript_writes_them() {
        for (ns, text) in [
            (-1_000_000i128, "1969-12-31T23:59:59.999Z"),
            (-1, "1969-12-31T23:59:59.999Z"),
            (-2_208_988_800_000_000_000, "1900-01-01T00:00:00.000Z"),
            // Past i64 nanoseconds (2262), which ext4 holds.
            (10_413_792_000_000_000_000, "2300-01-01T00:00:00.000Z"),
            (253_402_300_800_000_000_000, "+010000-01-01T00:00:00.000Z"),
            (-62_198_755_200_000_000_000, "-000001-01-01T00:00:00.000Z"),
            (3_093_527_980_800_000_000_000, "+100000-01-01T00:00:00.000Z"),
            (
                -3_217_862_419_200_000_000_000,
                "-100000-01-01T00:00:00.000Z",
            ),
        ] {
            let written = iso8601_ns(ns);
            assert_eq!(written.as_deref(), Some(text), "{ns}");
            let parsed = parse_iso8601(text).unwrap();
            let ms = i128::from(parsed.timestamp_millis());
            assert_eq!(ms, ns.div_euclid(1_000_000), "{text}");
        }
        // JavaScript's last day, +275760-09-13, is past chrono's last year (262143).
        assert_eq!(iso8601_ns(8_640_000_000_000_000_000_000), None);
        assert_eq!(iso8601_ns(-8_640_000_001_000_000_000_000), None);
        assert_eq!(iso8601_ns(i128::MAX), None);
        assert!(can_write_ns(3_093_527_980_800_000_000_000) && !can_write_ns(i128::MAX));
        for refused in [
            "+010001-02-29T00:00:00.000Z",
            "-000000-01-01T00:00:00.000Z",
            "+01000-01-01T00:00:00.000Z",
            "+010000-01-01T00:00:00.000+01:00",
        ] {
            assert_eq!(parse_iso8601(refused), None, "{refused}");
        }
        assert!(parse_iso8601("+010400-02-29T12:00:00Z").is_some());
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

    #[test]
    fn a_prefix_is_a_media_path_once_trimmed_or_nothing() {
        for good in ["", "/", "a", "a/b", "/volumes/photos/", "2026/"] {
            assert_eq!(prefix_fault(good), None, "{good:?}");
            // And it starts a media_path the service takes.
            let path = media_path(good, Path::new("x.jpg")).unwrap();
            assert!(is_valid_media_path(&path), "{path:?}");
        }
        for bad in ["../x", "a//b", "./x", "a/./b", "a/..", "x/../../y"] {
            assert_eq!(
                prefix_fault(bad),
                Some("it has an empty, `.` or `..` component"),
                "{bad:?}"
            );
        }
        for bad in ["a\nb", "a\0b", "photos\n", "\tx"] {
            assert_eq!(
                prefix_fault(bad),
                Some("it holds a control character"),
                "{bad:?}"
            );
        }
    }
}
