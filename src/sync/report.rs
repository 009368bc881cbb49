//! What the engine reports to `maxlofs status`: the report, and its JSON bounded to what one
//! extended attribute carries.

use serde::{Deserialize, Serialize};

use crate::verify::VerifyReport;

/// What `maxlofs status` shows.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct StatusReport {
    pub pending: usize,
    /// Files open for writing through the mount: their changes are sent once they are closed.
    pub open_for_writing: usize,
    /// Paths of those files (the first few, as the daemon lists them).
    #[serde(default)]
    pub writing: Vec<String>,
    pub in_flight: usize,
    pub failed: Vec<PathReason>,
    pub failed_count: usize,
    pub local_only: Vec<PathReason>,
    pub local_only_count: usize,
    pub paused: Option<String>,
    pub last_error: Option<String>,
    /// When the last error happened, in seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<i64>,
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
    pub reconciled: bool,
    pub indexed: u64,
    /// Bytes of the uploads under way still to be sent (whole files, or the parts they miss).
    /// (These fields are left out when empty: status shares one extended attribute's room with
    /// the path lists.)
    #[serde(default, skip_serializing_if = "is_zero")]
    pub upload_bytes_left: u64,
    /// Bytes of content sent since the mount started.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub uploaded_bytes: u64,
    /// Bytes per second lately.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub upload_rate: u64,
    /// Seconds until the uploads under way are sent, at that rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_eta_secs: Option<u64>,
    /// Why no content is uploaded (records only): `--no-upload`, an encrypted grant, or
    /// uploads disabled by the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploads_off: Option<String>,
    /// How the kernel's requests reach the daemon: "io_uring" or "dev_fuse".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    /// Deletes of records whose files went missing behind the mount's back, held by the
    /// mass-deletion guard until `maxlofs release-deletes` (or the files come back).
    #[serde(default, skip_serializing_if = "is_zero_count")]
    pub held_deletes: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_deletes_why: Option<String>,
    /// The scrub or restore job running, or the last one (`maxlofs scrub`, `maxlofs restore`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heal: Option<HealStatus>,
    /// Paths scrub found damaged in place, with what differs: never sent, until restored or
    /// edited.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub corrupted: Vec<PathReason>,
    #[serde(default, skip_serializing_if = "is_zero_count")]
    pub corrupted_count: usize,
}

/// What a job does (`maxlofs scrub`, `restore` or `verify`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    #[default]
    Scrub,
    Restore,
    Verify,
}

impl JobKind {
    /// The command's word for it.
    pub fn name(self) -> &'static str {
        match self {
            JobKind::Scrub => "scrub",
            JobKind::Restore => "restore",
            JobKind::Verify => "verify",
        }
    }
}

/// A scrub, restore or verify job of the daemon.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct HealStatus {
    /// The job's number on this mount: 1, 2, ...
    pub job: u64,
    #[serde(default)]
    pub kind: JobKind,
    pub running: bool,
    pub files_checked: u64,
    pub bytes_read: u64,
    pub corrupted_found: u64,
    /// The scrub pass reached the last entry (false: it stopped early, and the next pass goes on
    /// from there).
    #[serde(default)]
    pub scrub_finished: bool,
    pub restored: u64,
    /// Paths a restore could not put back, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<PathReason>,
    /// What a verify job found (in status, its first findings only: `maxlofs verify` reads them
    /// all, page by page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What status says of a path damaged in place: the byte ranges `[start, end)` that differ, and
/// when it was found (seconds since the epoch).
pub fn corruption_reason(ranges: &[(u64, u64)], found_at: i64) -> String {
    let ranges: Vec<String> = ranges
        .iter()
        .map(|&(start, end)| format!("{start}-{}", end.saturating_sub(1)))
        .collect();
    let when = chrono::DateTime::from_timestamp(found_at, 0)
        .map(|at| at.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default();
    format!(
        "corrupted locally: bytes {} differ from its record (found {when})",
        ranges.join(", ")
    )
}

fn is_zero_count(value: &usize) -> bool {
    *value == 0
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PathReason {
    pub path: String,
    pub reason: String,
}

/// What `encode_bounded` keeps the JSON under: well below the 64 KiB (`XATTR_SIZE_MAX`) an
/// extended attribute can carry, which is the status channel.
pub const STATUS_JSON_BUDGET: usize = 48 * 1024;
/// Longest server message or reason kept in status (in bytes, cut at a character boundary).
const MESSAGE_MAX: usize = 1024;
/// Longest path shown whole in status; a longer one keeps its start and its end (the file's
/// name), so many long paths still fit.
const PATH_SHOWN_MAX: usize = 512;

/// The report as JSON of at most `STATUS_JSON_BUDGET` bytes, whatever the number and length of
/// its paths: messages longer than `MESSAGE_MAX` are cut, and the lists (`writing`, then
/// `corrupted`, the job's `failed`, `failed`, then `local_only`) keep the entries that fit; `open_for_writing`, `failed_count` and
/// `local_only_count` still count them all, so the reader can say how many were left out.
pub fn encode_bounded(report: &StatusReport) -> String {
    let mut bounded = StatusReport {
        writing: Vec::new(),
        failed: Vec::new(),
        local_only: Vec::new(),
        paused: report.paused.as_deref().map(cut),
        last_error: report.last_error.as_deref().map(cut),
        held_deletes_why: report.held_deletes_why.as_deref().map(cut),
        corrupted: Vec::new(),
        heal: report.heal.as_ref().map(|heal| HealStatus {
            failed: Vec::new(),
            verify: heal.verify.as_ref().map(|verify| VerifyReport {
                findings: Vec::new(),
                ..verify.clone()
            }),
            error: heal.error.as_deref().map(cut),
            ..heal.clone()
        }),
        ..report.clone()
    };
    let mut room = STATUS_JSON_BUDGET.saturating_sub(json_len(&bounded));
    bounded.writing = fitting(report.writing.iter().map(|p| shortened(p)), &mut room);
    let cut_reason = |entry: &PathReason| PathReason {
        path: shortened(&entry.path),
        reason: cut(&entry.reason),
    };
    // Damage first: it is what a user must act on.
    bounded.corrupted = fitting(report.corrupted.iter().map(cut_reason), &mut room);
    if let (Some(bounded), Some(heal)) = (&mut bounded.heal, &report.heal) {
        bounded.failed = fitting(heal.failed.iter().map(cut_reason), &mut room);
        if let (Some(bounded), Some(verify)) = (&mut bounded.verify, &heal.verify) {
            bounded.findings = fitting(verify.findings.iter().cloned(), &mut room);
        }
    }
    bounded.failed = fitting(report.failed.iter().map(cut_reason), &mut room);
    bounded.local_only = fitting(report.local_only.iter().map(cut_reason), &mut room);
    serde_json::to_string(&bounded).expect("a report serializes")
}

/// A page of a list the daemon pages out (see `fs::StatusSource::verify_findings_page`).
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct Page<T> {
    pub entries: Vec<T>,
    /// Where the next page starts; `None` after the last.
    pub next: Option<u64>,
}

/// The page of `rows` (read from the `from`-th entry on, `asked` at most) that fits the status
/// budget; the rest come with the next page. At least one row goes, so paging always advances:
/// a row holds at most a path of PATH_MAX bytes, well under the budget even escaped.
pub fn encode_page<T: Serialize>(from: u64, rows: Vec<T>, asked: u64) -> String {
    let read = rows.len() as u64;
    let mut room = STATUS_JSON_BUDGET - 64;
    let entries = fitting(rows.into_iter(), &mut room);
    let kept = entries.len() as u64;
    let next = (kept < read || read == asked).then_some(from + kept);
    serde_json::to_string(&Page { entries, next }).expect("a page serializes")
}

fn json_len(value: &impl Serialize) -> usize {
    serde_json::to_string(value)
        .expect("a report serializes")
        .len()
}

/// The leading entries whose JSON (and a separating comma each) fit in `room`, which shrinks.
fn fitting<T: Serialize>(entries: impl Iterator<Item = T>, room: &mut usize) -> Vec<T> {
    let mut kept = Vec::new();
    for entry in entries {
        let cost = json_len(&entry) + 1;
        if cost > *room {
            break;
        }
        *room -= cost;
        kept.push(entry);
    }
    kept
}

/// `path` whole if it is short, else its first 64 bytes, "…" and its last bytes.
fn shortened(path: &str) -> String {
    if path.len() <= PATH_SHOWN_MAX {
        return path.to_string();
    }
    let mut head = 64;
    while !path.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = path.len() - (PATH_SHOWN_MAX - 64);
    while !path.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{}…{}", &path[..head], &path[tail..])
}

fn cut(message: &str) -> String {
    if message.len() <= MESSAGE_MAX {
        return message.to_string();
    }
    let mut end = MESSAGE_MAX;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Eleven paths of 4 KiB each (deeper than PATH_MAX, say) all show, with their file names.
    #[test]
    fn long_paths_keep_their_start_and_their_name() {
        let local_only: Vec<PathReason> = (0..11)
            .map(|i| PathReason {
                path: format!("{}/f{i}.jpg", "é".repeat(2100)),
                reason: "too long".into(),
            })
            .collect();
        let report = StatusReport {
            local_only_count: local_only.len(),
            local_only,
            ..StatusReport::default()
        };
        let back: StatusReport = serde_json::from_str(&encode_bounded(&report)).unwrap();
        assert_eq!(back.local_only.len(), 11);
        for (i, entry) in back.local_only.iter().enumerate() {
            assert!(
                entry.path.len() <= PATH_SHOWN_MAX + "…".len(),
                "{}",
                entry.path.len()
            );
            assert!(entry.path.starts_with("éé") && entry.path.ends_with(&format!("/f{i}.jpg")));
        }
    }

    #[test]
    fn pages_fit_the_budget_and_say_where_the_next_starts() {
        let row = |i: u64| (format!("{i:04}/{}", "p".repeat(3000)), "h".repeat(64), i);
        let rows: Vec<_> = (0..20).map(row).collect();
        let page: Page<(String, String, u64)> =
            serde_json::from_str(&encode_page(40, rows.clone(), 20)).unwrap();
        assert!(page.entries.len() < 20 && !page.entries.is_empty());
        assert_eq!(page.entries[..], rows[..page.entries.len()]);
        assert_eq!(page.next, Some(40 + page.entries.len() as u64));
        // A short read is the last page; a full one may have more.
        let last: Page<(String, String, u64)> =
            serde_json::from_str(&encode_page(7, vec![row(1)], 500)).unwrap();
        assert_eq!(last.next, None);
        let full: Page<(String, String, u64)> =
            serde_json::from_str(&encode_page(7, vec![row(1)], 1)).unwrap();
        assert_eq!(full.next, Some(8));
        let empty: Page<(String, String, u64)> =
            serde_json::from_str(&encode_page::<(String, String, u64)>(9, vec![], 5)).unwrap();
        assert_eq!((empty.entries.len(), empty.next), (0, None));
    }

    #[test]
    fn encode_bounded_stays_within_budget_whatever_the_paths() {
        // Control characters cost six bytes each in JSON: the worst case for a path.
        let path = "\u{1}".repeat(4000);
        let entry = PathReason {
            path: path.clone(),
            reason: "\u{1}".repeat(100_000),
        };
        let report = StatusReport {
            writing: vec![path; 100],
            failed: vec![entry.clone(); 100],
            failed_count: 100,
            local_only: vec![entry; 100],
            local_only_count: 100,
            paused: Some("\u{1}".repeat(1 << 20)),
            last_error: Some("e".repeat(1 << 20)),
            ..StatusReport::default()
        };
        let json = encode_bounded(&report);
        assert!(json.len() <= STATUS_JSON_BUDGET, "{}", json.len());
        let back: StatusReport = serde_json::from_str(&json).unwrap();
        assert_eq!((back.failed_count, back.local_only_count), (100, 100));
        assert!(back.writing.len() < 100);
        assert!(back.last_error.unwrap().ends_with('…'));
        // A small report goes through whole.
        let small = StatusReport {
            failed: vec![PathReason {
                path: "a.jpg".into(),
                reason: "refused".into(),
            }],
            failed_count: 1,
            ..StatusReport::default()
        };
        assert_eq!(
            encode_bounded(&small),
            serde_json::to_string(&small).unwrap()
        );
    }
}
