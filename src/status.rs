//! `maxlofs status MOUNTPOINT`: asks the daemon through an extended attribute on the mount root,
//! so it needs nothing but the mountpoint.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::args::StatusArgs;
use crate::output::escaped;
use maxlofs_fs::STATUS_XATTR;
use maxlofs_sync::report::{HealStatus, JobKind, StatusReport};

/// Reads the daemon's status from the mount at `mountpoint`.
pub fn read(mountpoint: &Path) -> anyhow::Result<StatusReport> {
    let buf = read_xattr(mountpoint, STATUS_XATTR)?;
    serde_json::from_slice(&buf).context("the daemon's status is not valid JSON")
}

/// `maxlofs release-deletes MOUNTPOINT`: the deletes the mass-deletion guard holds go out.
pub fn release_deletes(mountpoint: &Path) -> anyhow::Result<()> {
    let held = read(mountpoint)?.held_deletes;
    if held == 0 {
        println!("no deletes are held");
        return Ok(());
    }
    ask_daemon(mountpoint, maxlofs_fs::RELEASE_DELETES_XATTR, b"")?.map_err(|errno| {
        anyhow::anyhow!(
            "the daemon of {} refused to release the deletes ({errno})",
            mountpoint.display()
        )
    })?;
    println!(
        "{held} held deletes released: their records are deleted unless their files came back"
    );
    Ok(())
}

/// Sets the daemon's extended attribute `name` on the mount root to `value`: a request. The outer
/// error is the mount root's; the inner one is the daemon's answer.
pub fn ask_daemon(
    mountpoint: &Path,
    name: &str,
    value: &[u8],
) -> anyhow::Result<Result<(), std::io::Error>> {
    let root = std::fs::File::open(mountpoint)
        .with_context(|| format!("opening {}", mountpoint.display()))?;
    let name = CString::new(name)?;
    Ok(
        maxlofs_fs::sys::set_xattr(std::os::fd::AsFd::as_fd(&root), &name, value, 0)
            .map_err(|errno| std::io::Error::from_raw_os_error(errno.code())),
    )
}

/// The value of the daemon's extended attribute `name` on the mount root.
pub fn read_xattr(mountpoint: &Path, name: &str) -> anyhow::Result<Vec<u8>> {
    let path = CString::new(mountpoint.as_os_str().as_bytes())?;
    let name = CString::new(name)?;
    let not_ours = |err: std::io::Error| {
        anyhow::anyhow!(
            "{} is not a maxlofs mount, or its daemon does not answer ({err})",
            mountpoint.display()
        )
    };
    let mut buf = Vec::new();
    loop {
        let size = rustix::fs::getxattr_query(path.as_c_str(), name.as_c_str())
            .map_err(|err| not_ours(err.into()))?;
        buf.resize(size, 0);
        let err = match rustix::fs::getxattr(path.as_c_str(), name.as_c_str(), &mut buf[..]) {
            Ok(len) => {
                buf.truncate(len);
                break;
            }
            Err(err) => err,
        };
        match err {
            // It grew between the two calls: ask its size again.
            rustix::io::Errno::RANGE => continue,
            rustix::io::Errno::TOOBIG => bail!(
                "the status of {} is larger than an extended attribute can carry ({err})",
                mountpoint.display()
            ),
            _ => return Err(not_ours(err.into())),
        }
    }
    Ok(buf)
}

/// `status --wait` on a terminal: a bar of the bytes uploaded while it waits.
fn upload_bar(json: bool) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if json || !std::io::stderr().is_terminal() {
        return None;
    }
    let style = indicatif::ProgressStyle::with_template(
        "uploading [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}, {eta} left",
    )
    .expect("a valid template")
    .progress_chars("=> ");
    Some(indicatif::ProgressBar::new(0).with_style(style))
}

fn is_settled(status: &StatusReport) -> bool {
    status.reconciled
        && status.pending == 0
        && status.in_flight == 0
        && status.open_for_writing == 0
}

fn write_text(out: &mut impl Write, status: &StatusReport) -> std::io::Result<()> {
    writeln!(out, "pending:    {}", status.pending)?;
    writeln!(out, "in flight:  {}", status.in_flight)?;
    writeln!(out, "open for writing: {}", status.open_for_writing)?;
    for path in &status.writing {
        writeln!(out, "  {}", escaped(path))?;
    }
    write_left_out(out, status.open_for_writing, status.writing.len())?;
    writeln!(
        out,
        "sent:       {} created, {} updated, {} deleted",
        status.created, status.updated, status.deleted
    )?;
    writeln!(out, "indexed:    {}", status.indexed)?;
    match &status.uploads_off {
        Some(why) => writeln!(out, "uploads:    off: {}", escaped(why))?,
        None => {
            write!(
                out,
                "uploads:    {} sent, {} to send, {}/s",
                bytes(status.uploaded_bytes),
                bytes(status.upload_bytes_left),
                bytes(status.upload_rate)
            )?;
            match status.upload_eta_secs {
                Some(secs) if status.upload_bytes_left > 0 => {
                    writeln!(out, ", about {secs} s left")?
                }
                _ => writeln!(out)?,
            }
        }
    }
    writeln!(
        out,
        "reconcile:  {}",
        if status.reconciled { "done" } else { "running" }
    )?;
    if let Some(transport) = &status.transport {
        writeln!(out, "transport:  {}", escaped(transport))?;
    }
    if let Some(why) = &status.paused {
        writeln!(out, "PAUSED:     {}", escaped(why))?;
    }
    if status.held_deletes > 0 {
        let why = status.held_deletes_why.as_deref().unwrap_or_default();
        writeln!(
            out,
            "DELETES HELD ({}): {}",
            status.held_deletes,
            escaped(why)
        )?;
    }
    if let Some(err) = &status.last_error {
        let age = status
            .last_error_at
            .map(|at| format!(" ({})", ago(chrono::Utc::now().timestamp() - at)))
            .unwrap_or_default();
        writeln!(out, "last error: {}{age}", escaped(err))?;
    }
    if let Some(heal) = &status.heal {
        writeln!(out, "job: {}", heal_line(heal))?;
    }
    for (title, count, list) in [
        ("CORRUPTED", status.corrupted_count, &status.corrupted),
        ("failed", status.failed_count, &status.failed),
        ("local only", status.local_only_count, &status.local_only),
    ] {
        if count > 0 {
            writeln!(out, "{title} ({count}):")?;
            for entry in list {
                writeln!(
                    out,
                    "  {}: {}",
                    escaped(&entry.path),
                    escaped(&entry.reason)
                )?;
            }
            write_left_out(out, count, list.len())?;
        }
    }
    Ok(())
}

/// One line on a scrub, restore or verify job: how far it got, or what it did.
pub fn heal_line(heal: &HealStatus) -> String {
    let state = if heal.running { "running" } else { "done" };
    let (job, kind) = (heal.job, heal.kind.name());
    let mut line = match &heal.verify {
        Some(verify) => format!(
            "{job} {kind} {state}: {} records, {} contents checked{}: {} lack their content, {} \
             not checked (too slow)",
            verify.records,
            verify.contents,
            if verify.deep { " (downloaded)" } else { "" },
            verify.lacking,
            verify.too_slow
        ),
        None if heal.kind == JobKind::Verify => format!("{job} {kind} {state}"),
        None => {
            let mut line = format!(
                "{job} {kind} {state}: {} files checked ({}), {} found corrupted, {} restored",
                heal.files_checked,
                bytes(heal.bytes_read),
                heal.corrupted_found,
                heal.restored
            );
            if !heal.failed.is_empty() {
                line += &format!(", {} not restored", heal.failed.len());
            }
            line
        }
    };
    if let Some(err) = &heal.error {
        line += &format!("; {}", escaped(err));
    }
    line
}

/// A byte count for people: 1.5 MiB.
fn bytes(count: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = count as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{count} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

/// How long ago, to the unit that matters: "12 s ago", "4 min ago", "3 h ago", "2 d ago".
fn ago(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..=119 => format!("{secs} s ago"),
        120..=7199 => format!("{} min ago", secs / 60),
        7200..=172_799 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

fn write_left_out(out: &mut impl Write, count: usize, listed: usize) -> std::io::Result<()> {
    if count > listed && listed > 0 {
        writeln!(out, "  … and {} more", count - listed)?;
    }
    Ok(())
}

fn write_status(status: &StatusReport, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let written = if json {
        writeln!(out, "{}", serde_json::to_string(status)?)
    } else {
        write_text(&mut out, status)
    }
    .and_then(|()| out.flush());
    match written {
        // The reader went away (`maxlofs status MNT | head -1`): nothing left to tell it.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// How long `status --wait` sleeps before asking the daemon again. Each ask is a getxattr of up
/// to `STATUS_JSON_BUDGET` of JSON: every 50 ms while much is left, so that an hours-long wait
/// costs the daemon little, and every 5 ms once little is, so that the wait ends within a few
/// milliseconds of the last send.
fn wait_poll(status: &StatusReport) -> Duration {
    const PATHS_FEW: usize = 256;
    const BYTES_FEW: u64 = 64 << 20;
    if status.pending + status.in_flight <= PATHS_FEW && status.upload_bytes_left <= BYTES_FEW {
        Duration::from_millis(5)
    } else {
        Duration::from_millis(50)
    }
}

/// The exit status of `status --wait` when it returns with paths the service refused, or with
/// deletes the mass-deletion guard holds: nothing is left to send, but the catalog is not the
/// tree.
pub const EXIT_PATHS_FAILED: i32 = 3;

/// Shows the status, having waited for the sync to settle with `--wait`; answers the exit status.
pub fn run(args: &StatusArgs) -> anyhow::Result<i32> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut status = read(&args.mountpoint)?;
    if args.wait {
        let bar = upload_bar(args.json);
        while !is_settled(&status) {
            if let Some(bar) = &bar {
                // Sent so far of what is known to be sent: the total grows as uploads start.
                bar.set_length(status.uploaded_bytes + status.upload_bytes_left);
                bar.set_position(status.uploaded_bytes);
            }
            if Instant::now() >= deadline {
                if let Some(bar) = &bar {
                    bar.finish_and_clear();
                }
                write_status(&status, args.json)?;
                bail!(
                    "still {} pending and {} in flight after {} s",
                    status.pending,
                    status.in_flight,
                    args.timeout
                );
            }
            std::thread::sleep(wait_poll(&status));
            status = read(&args.mountpoint)?;
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
    }
    write_status(&status, args.json)?;
    Ok(
        match args.wait && (status.failed_count > 0 || status.held_deletes > 0) {
            true => EXIT_PATHS_FAILED,
            false => 0,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_asks_often_only_once_little_is_left() {
        let left = |pending, in_flight, upload_bytes_left| StatusReport {
            pending,
            in_flight,
            upload_bytes_left,
            ..StatusReport::default()
        };
        let (often, seldom) = (Duration::from_millis(5), Duration::from_millis(50));
        assert_eq!(wait_poll(&left(200, 16, 1 << 20)), often);
        assert_eq!(wait_poll(&left(2_000, 16, 0)), seldom);
        assert_eq!(
            wait_poll(&left(0, 1, 900 << 20)),
            seldom,
            "one large file still going up"
        );
        assert_eq!(wait_poll(&left(0, 1, 10 << 20)), often);
    }

    fn text(report: &StatusReport) -> String {
        let mut out = Vec::new();
        write_text(&mut out, report).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_job_line_says_what_the_job_does_and_found() {
        let scrub = HealStatus {
            job: 2,
            files_checked: 3,
            bytes_read: 3 << 20,
            corrupted_found: 1,
            ..HealStatus::default()
        };
        assert_eq!(
            heal_line(&scrub),
            "2 scrub done: 3 files checked (3.0 MiB), 1 found corrupted, 0 restored"
        );
        let verifying = HealStatus {
            job: 3,
            kind: JobKind::Verify,
            running: true,
            ..HealStatus::default()
        };
        assert!(text(&StatusReport {
            heal: Some(verifying.clone()),
            ..StatusReport::default()
        })
        .contains("job: 3 verify running\n"));
        let verified = HealStatus {
            running: false,
            verify: Some(maxlofs_sync::verify::VerifyReport {
                records: 10,
                contents: 9,
                deep: true,
                lacking: 2,
                too_slow: 1,
                findings: Vec::new(),
            }),
            ..verifying
        };
        assert_eq!(
            heal_line(&verified),
            "3 verify done: 10 records, 9 contents checked (downloaded): 2 lack their content, 1 \
             not checked (too slow)"
        );
    }

    #[test]
    fn the_last_error_says_how_long_ago_it_was() {
        let now = chrono::Utc::now().timestamp();
        let report = |at: Option<i64>| StatusReport {
            last_error: Some("a.jpg: HTTP 503".into()),
            last_error_at: at,
            ..StatusReport::default()
        };
        let shown = text(&report(Some(now - 300)));
        assert!(
            shown.contains("last error: a.jpg: HTTP 503 (5 min ago)\n"),
            "{shown}"
        );
        // From a daemon that does not say when: the error alone.
        assert!(text(&report(None)).contains("last error: a.jpg: HTTP 503\n"));
        for (secs, said) in [
            (-3, "0 s ago"),
            (119, "119 s ago"),
            (120, "2 min ago"),
            (7199, "119 min ago"),
            (7200, "2 h ago"),
            (172_800, "2 d ago"),
        ] {
            assert_eq!(ago(secs), said);
        }
    }

    #[test]
    fn the_text_says_how_uploads_go_or_why_there_are_none() {
        let going = StatusReport {
            uploaded_bytes: 3 << 20,
            upload_bytes_left: 1 << 30,
            upload_rate: 10 << 20,
            upload_eta_secs: Some(103),
            ..StatusReport::default()
        };
        assert!(
            text(&going).contains(
                "uploads:    3.0 MiB sent, 1.0 GiB to send, 10.0 MiB/s, about 103 s left\n"
            ),
            "{}",
            text(&going)
        );
        let off = StatusReport {
            uploads_off: Some("uploads are disabled by the service".into()),
            ..StatusReport::default()
        };
        assert!(text(&off).contains("uploads:    off: uploads are disabled by the service\n"));
        // A report from a daemon that predates uploads still reads.
        let old: StatusReport = serde_json::from_str(
            r#"{"pending":0,"open_for_writing":0,"in_flight":0,"failed":[],"failed_count":0,
                "local_only":[],"local_only_count":0,"paused":null,"last_error":null,
                "created":0,"updated":0,"deleted":0,"reconciled":true,"indexed":0}"#,
        )
        .unwrap();
        assert_eq!(old.uploads_off, None);
        assert_eq!(old.transport, None);
        let ring = StatusReport {
            transport: Some("io_uring".into()),
            ..StatusReport::default()
        };
        assert!(
            text(&ring).contains("transport:  io_uring\n"),
            "{}",
            text(&ring)
        );
    }
}
