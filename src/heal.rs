//! `maxlofs scrub MNT` and `maxlofs restore MNT`: asks the mount's daemon for the job (it holds
//! the key and the index), waits for it to end, and prints what it found and did.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use maxlofs_sync::report::{HealStatus, StatusReport};
use maxlofs_sync::HealRequest;

use crate::args::{RestoreArgs, ScrubArgs};
use crate::output::escaped;
use crate::status::{self, EXIT_PATHS_FAILED};

/// How often the job's end is asked about.
const POLL: Duration = Duration::from_millis(100);

pub fn run_scrub(args: &ScrubArgs) -> anyhow::Result<i32> {
    let request = HealRequest::Scrub {
        repair: args.repair,
    };
    let (job, status) = run_job(&args.mountpoint, &request)?;
    println!("{}", status::heal_line(&job));
    if !job.scrub_finished && job.error.is_none() {
        println!("the pass stopped before its end; the next one goes on from there");
    }
    print_damage(&job, &status);
    Ok(outcome(&job, &status))
}

pub fn run_restore(args: &RestoreArgs) -> anyhow::Result<i32> {
    let paths = args
        .paths
        .iter()
        .map(|path| in_mount(&args.mountpoint, path))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let request = HealRequest::Restore {
        paths,
        deleted: false,
    };
    let (job, status) = run_job(&args.mountpoint, &request)?;
    println!("{} restored", job.restored);
    print_damage(&job, &status);
    Ok(outcome(&job, &status))
}

/// 0 when the job ended with nothing damaged left and nothing it could not do, else 3.
fn outcome(job: &HealStatus, status: &StatusReport) -> i32 {
    if job.error.is_some() || !job.failed.is_empty() || status.corrupted_count > 0 {
        EXIT_PATHS_FAILED
    } else {
        0
    }
}

fn print_damage(job: &HealStatus, status: &StatusReport) {
    for entry in &job.failed {
        println!(
            "not restored: {}: {}",
            escaped(&entry.path),
            escaped(&entry.reason)
        );
    }
    for entry in &status.corrupted {
        println!("{}: {}", escaped(&entry.path), escaped(&entry.reason));
    }
    if status.corrupted_count > status.corrupted.len() {
        println!(
            "... and {} more corrupted",
            status.corrupted_count - status.corrupted.len()
        );
    }
    if status.corrupted_count > 0 && job.restored == 0 {
        println!("restore them with: maxlofs restore MNT --corrupted");
    }
}

/// A path as the index names it: relative to the mount's root (given so, or under MOUNTPOINT).
fn in_mount(mountpoint: &Path, path: &Path) -> anyhow::Result<String> {
    let relative: PathBuf = if path.is_absolute() {
        path.strip_prefix(mountpoint)
            .with_context(|| format!("{} is not under {}", path.display(), mountpoint.display()))?
            .to_path_buf()
    } else {
        path.to_path_buf()
    };
    match relative.to_str() {
        Some(name) if !name.is_empty() => Ok(name.to_string()),
        Some(_) => bail!("{} names the mount's root, not a file", path.display()),
        None => bail!(
            "{} is not UTF-8: no record can name it",
            escaped(&path.to_string_lossy())
        ),
    }
}

/// Asks the daemon for the job and waits for it to end: its result, and the status then.
fn run_job(mountpoint: &Path, request: &HealRequest) -> anyhow::Result<(HealStatus, StatusReport)> {
    let before = status::read(mountpoint)?.heal.map_or(0, |job| job.job);
    let value = serde_json::to_vec(request).expect("a request encodes");
    status::ask_daemon(mountpoint, maxlofs_fs::HEAL_XATTR, &value)?.map_err(|err| {
        match err.raw_os_error() {
            Some(libc::EBUSY) => anyhow::anyhow!(
                "a scrub or restore is already running on {} (see maxlofs status)",
                mountpoint.display()
            ),
            Some(libc::EOPNOTSUPP) => anyhow::anyhow!(
                "the mount at {} sends records only (--no-upload): nothing can be restored",
                mountpoint.display()
            ),
            _ => anyhow::anyhow!(
                "the daemon of {} refused the job ({err})",
                mountpoint.display()
            ),
        }
    })?;
    loop {
        std::thread::sleep(POLL);
        let status = status::read(mountpoint)?;
        match &status.heal {
            Some(job) if job.job > before && !job.running => return Ok((job.clone(), status)),
            _ => {}
        }
    }
}
