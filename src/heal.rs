//! `maxlofs scrub FOLDER`, `maxlofs restore FOLDER` and the live side of `maxlofs verify`. On a
//! mount, the job is asked of its daemon (it holds the key and the index), waited for, and its
//! result printed; on an unmounted backing folder the same job (`maxlofs_sync::heal::run_job`)
//! runs here, on the folder's index, with the keys given.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use maxlofs_sync::heal::{corrupted_list, Workbench};
use maxlofs_sync::report::{HealStatus, Page, PathReason};
use maxlofs_sync::scrub::{ScrubConfig, ScrubProgress};
use maxlofs_sync::verify::{Finding, VerifyReport};
use maxlofs_sync::HealRequest;

use crate::args::{RestoreArgs, ScrubArgs, UnmountedArgs};
use crate::output::escaped;
use crate::status::{self, EXIT_PATHS_FAILED};

/// How often the job's end is asked about.
const POLL: Duration = Duration::from_millis(100);

pub fn run_scrub(args: &ScrubArgs) -> anyhow::Result<i32> {
    let request = HealRequest::Scrub {
        repair: args.repair,
    };
    let (job, damage) = if is_mount(&args.folder) {
        if args.scrub_rate.is_some() {
            bail!(
                "{} is a mount: it scrubs at the rate it was mounted with (its --scrub-rate)",
                args.folder.display()
            );
        }
        run_on_mount(&args.folder, &request)?
    } else {
        let scrub = ScrubConfig {
            bytes_per_sec: args.scrub_rate.and_then(std::num::NonZeroU64::new),
        };
        run_unmounted(&args.folder, &args.unmounted, scrub, request)?
    };
    println!("{}", status::heal_line(&job));
    if !job.scrub_finished && job.error.is_none() {
        println!("the pass stopped before its end; the next one goes on from there");
    }
    print_damage(&job, &damage);
    Ok(outcome(&job, &damage))
}

pub fn run_restore(args: &RestoreArgs) -> anyhow::Result<i32> {
    let paths = args
        .paths
        .iter()
        .map(|path| in_folder(&args.folder, path))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let request = HealRequest::Restore {
        paths,
        deleted: args.deleted,
    };
    let (job, damage) = if is_mount(&args.folder) {
        run_on_mount(&args.folder, &request)?
    } else {
        run_unmounted(
            &args.folder,
            &args.unmounted,
            ScrubConfig::default(),
            request,
        )?
    };
    println!("{} restored", job.restored);
    print_damage(&job, &damage);
    Ok(outcome(&job, &damage))
}

/// Runs a verify job on `folder`: by its daemon on a mount, here on an unmounted backing folder.
pub fn run_verify(
    folder: &Path,
    args: &UnmountedArgs,
    request: HealRequest,
) -> anyhow::Result<VerifyReport> {
    let mounted = is_mount(folder);
    let (job, _) = if mounted {
        run_on_mount(folder, &request)?
    } else {
        run_unmounted(folder, args, ScrubConfig::default(), request)?
    };
    if let Some(err) = job.error {
        bail!("{err}");
    }
    let mut report = job.verify.context("the job answered no verify result")?;
    if mounted {
        // Status carries the first few findings; the daemon pages out the rest.
        report.findings = findings_of_mount(folder)?;
    }
    Ok(report)
}

/// Whether `folder` is a live mount: its daemon answers status, or it is a FUSE mount whose
/// daemon does not answer this user (another user's mount): that refusal is then said as it is,
/// not taken for an unmounted folder.
fn is_mount(folder: &Path) -> bool {
    status::read(folder).is_ok() || on_fuse(folder)
}

/// Whether `folder` is on a FUSE filesystem. The kernel answers statfs with the filesystem's type
/// even to a user the mount does not let in.
fn on_fuse(folder: &Path) -> bool {
    rustix::fs::statfs(folder).is_ok_and(|stat| stat.f_type == libc::FUSE_SUPER_MAGIC)
}

/// The paths scrub found damaged and still are: the first ones, and how many in all.
struct Damage {
    corrupted: Vec<PathReason>,
    count: usize,
}

/// 0 when the job ended with nothing damaged left and nothing it could not do, else 3.
fn outcome(job: &HealStatus, damage: &Damage) -> i32 {
    if job.error.is_some() || !job.failed.is_empty() || damage.count > 0 {
        EXIT_PATHS_FAILED
    } else {
        0
    }
}

fn print_damage(job: &HealStatus, damage: &Damage) {
    for entry in &job.failed {
        println!(
            "not restored: {}: {}",
            escaped(&entry.path),
            escaped(&entry.reason)
        );
    }
    for entry in &damage.corrupted {
        println!("{}: {}", escaped(&entry.path), escaped(&entry.reason));
    }
    if damage.count > damage.corrupted.len() {
        println!(
            "... and {} more corrupted",
            damage.count - damage.corrupted.len()
        );
    }
    if damage.count > 0 && job.restored == 0 {
        println!("restore them with: maxlofs restore FOLDER --corrupted");
    }
}

/// A path as the index names it: relative to the folder's root (given so, or under FOLDER).
fn in_folder(folder: &Path, path: &Path) -> anyhow::Result<String> {
    let relative: PathBuf = if path.is_absolute() {
        path.strip_prefix(folder)
            .with_context(|| format!("{} is not under {}", path.display(), folder.display()))?
            .to_path_buf()
    } else {
        path.to_path_buf()
    };
    match relative.to_str() {
        Some(name) if !name.is_empty() => Ok(name.to_string()),
        Some(_) => bail!("{} names the folder's root, not a file", path.display()),
        None => bail!(
            "{} is not UTF-8: no record can name it",
            escaped(&path.to_string_lossy())
        ),
    }
}

/// Asks the daemon for the job and waits for it to end: its result, and the damage then.
fn run_on_mount(mountpoint: &Path, request: &HealRequest) -> anyhow::Result<(HealStatus, Damage)> {
    let before = status::read(mountpoint)?.heal.map_or(0, |job| job.job);
    let value = serde_json::to_vec(request).expect("a request encodes");
    status::ask_daemon(mountpoint, maxlofs_fs::HEAL_XATTR, &value)?.map_err(|err| {
        match err.raw_os_error() {
            Some(libc::EBUSY) => anyhow::anyhow!(
                "a scrub, restore or verify is already running on {} (see maxlofs status)",
                mountpoint.display()
            ),
            Some(libc::EOPNOTSUPP) => anyhow::anyhow!(
                "the daemon of {} has no content calls: nothing can be restored or verified",
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
        match status.heal {
            Some(job) if job.job > before && !job.running => {
                let damage = Damage {
                    corrupted: status.corrupted,
                    count: status.corrupted_count,
                };
                return Ok((job, damage));
            }
            _ => {}
        }
    }
}

/// What the mount's last verify job found, page by page.
fn findings_of_mount(mountpoint: &Path) -> anyhow::Result<Vec<Finding>> {
    let mut findings = Vec::new();
    let mut from = Some(0);
    while let Some(at) = from {
        let name = format!("{}{at}", maxlofs_fs::VERIFY_FINDINGS_XATTR_PREFIX);
        let page: Page<Finding> =
            serde_json::from_slice(&status::read_xattr(mountpoint, &name)?)
                .context("the daemon's list of verify findings is not valid JSON")?;
        findings.extend(page.entries);
        from = page.next;
    }
    Ok(findings)
}

/// Runs the job on the unmounted backing folder `folder`: its index, and the service with the
/// keys given where the job restores.
fn run_unmounted(
    folder: &Path,
    args: &UnmountedArgs,
    scrub: ScrubConfig,
    request: HealRequest,
) -> anyhow::Result<(HealStatus, Damage)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (content, grant) = crate::offline::service(args, &runtime, request.needs_content())?;
    let unmounted = crate::offline::open(folder, args, grant)?;
    let bench = Workbench {
        index: unmounted.index.clone(),
        backing: unmounted.backing,
        content,
        grant,
        scrub,
        progress: Arc::new(ScrubProgress::default()),
        stop: Arc::new(AtomicBool::new(false)),
    };
    let job = runtime.block_on(maxlofs_sync::heal::run_job(bench, request, 1));
    let corrupted = corrupted_list(&unmounted.index);
    let damage = Damage {
        count: corrupted.len(),
        corrupted,
    };
    Ok((job, damage))
}
