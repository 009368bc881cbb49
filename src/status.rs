//! `maxlofs status MOUNTPOINT`: asks the daemon through an extended attribute on the mount root,
//! so it needs nothing but the mountpoint.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::cli::StatusArgs;
use crate::fs::STATUS_XATTR;
use serde::{Deserialize, Serialize};

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
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
    pub reconciled: bool,
    pub indexed: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PathReason {
    pub path: String,
    pub reason: String,
}

/// Reads the daemon's status from the mount at `mountpoint`.
pub fn read(mountpoint: &Path) -> anyhow::Result<StatusReport> {
    let path = CString::new(mountpoint.as_os_str().as_bytes())?;
    let name = CString::new(STATUS_XATTR).expect("no NUL");
    let mut buf = vec![0u8; 1 << 16];
    // SAFETY: the pointers are valid for the given lengths for the duration of the call.
    let len = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if len < 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "{} is not a maxlofs mount, or its daemon does not answer ({err})",
            mountpoint.display()
        );
    }
    buf.truncate(len as usize);
    serde_json::from_slice(&buf).context("the daemon's status is not valid JSON")
}

fn is_settled(status: &StatusReport) -> bool {
    status.reconciled
        && status.pending == 0
        && status.in_flight == 0
        && status.open_for_writing == 0
}

fn print_text(status: &StatusReport) {
    println!("pending:    {}", status.pending);
    println!("in flight:  {}", status.in_flight);
    println!("open for writing: {}", status.open_for_writing);
    for path in &status.writing {
        println!("  {path}");
    }
    println!(
        "sent:       {} created, {} updated, {} deleted",
        status.created, status.updated, status.deleted
    );
    println!("indexed:    {}", status.indexed);
    println!(
        "reconcile:  {}",
        if status.reconciled { "done" } else { "running" }
    );
    if let Some(why) = &status.paused {
        println!("PAUSED:     {why}");
    }
    if let Some(err) = &status.last_error {
        println!("last error: {err}");
    }
    if status.failed_count > 0 {
        println!("failed ({}):", status.failed_count);
        for failed in &status.failed {
            println!("  {}: {}", failed.path, failed.reason);
        }
    }
    if status.local_only_count > 0 {
        println!("local only ({}):", status.local_only_count);
        for local in &status.local_only {
            println!("  {}: {}", local.path, local.reason);
        }
    }
}

pub fn run(args: &StatusArgs) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut status = read(&args.mountpoint)?;
    if args.wait {
        while !is_settled(&status) {
            if Instant::now() >= deadline {
                if args.json {
                    println!("{}", serde_json::to_string(&status)?);
                } else {
                    print_text(&status);
                }
                bail!(
                    "still {} pending and {} in flight after {} s",
                    status.pending,
                    status.in_flight,
                    args.timeout
                );
            }
            std::thread::sleep(Duration::from_millis(50));
            status = read(&args.mountpoint)?;
        }
    }
    if args.json {
        println!("{}", serde_json::to_string(&status)?);
    } else {
        print_text(&status);
    }
    Ok(())
}
