//! Mounting: a live mount served on background threads (`spawn_mount`), or in the foreground
//! until unmounted or signalled (`run_until_unmounted`).
//!
//! Privacy is the kernel's: a mount without `--allow-other` does not carry the `allow_other`
//! option, so the kernel refuses every other user (root included, unless root mounted it) before
//! anything is looked up, served from its caches or sent to us. fuser's own user check only sees
//! requests that reach the daemon, while the kernel answers cached names, attributes and link
//! targets by itself, so that check alone would leak them.
//!
//! The mount never outlives the process: it is made through `fusermount3 -o auto_unmount`, which
//! hands us the /dev/fuse descriptor over a socket and stays behind to unmount once our end of
//! that socket closes and the mount no longer answers, both of which the kernel does for us when
//! the process dies, even on SIGKILL. We talk to fusermount3 ourselves (fuser would add
//! `allow_other` to any auto_unmount mount). Its helper checks the dead mount as root, which a
//! mount without `allow_other` refuses unless root owns it: so after a SIGKILL a root daemon's
//! mount goes, a non-root daemon's private mount stays dead until `fusermount3 -u` (fuse 3.14).
//! It leaves a mount that still answers alone, so a clean unmount is done by us: `umount2`, or
//! `fusermount3 -u` for non-root users. If that mount fails (no fusermount3, or a non-root user
//! asking `--allow-other` without `user_allow_other` in /etc/fuse.conf), we mount directly and
//! say so in a warning: then only a clean exit or panic unmounts, and a SIGKILLed daemon leaves a
//! dead mount behind.

use super::fuse::FuseAdapter;
use super::passthrough::Passthrough;
use super::sys;
use super::MountConfig;
use fuser::{BackgroundSession, MountOption, Session, SessionACL};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};

/// A live mount served by background threads. Dropping it unmounts too (ignoring errors).
pub struct MountHandle {
    session: Option<BackgroundSession>,
    end: Arc<SessionEnd>,
    mountpoint: PathBuf,
    auto_unmount: Option<AutoUnmount>,
}

impl MountHandle {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts (if still mounted) and waits for the serving threads to finish.
    pub fn unmount(mut self) -> io::Result<()> {
        self.unmount_and_join()
    }

    /// Blocks until the filesystem is unmounted, typically from outside (`umount MNT`,
    /// `fusermount3 -u MNT`).
    pub fn wait(&self) {
        self.end.wait(|state| state.ended);
    }

    /// Whether the serving threads are still running.
    pub fn is_mounted(&self) -> bool {
        !self.end.state.lock().expect("session end lock").ended
    }

    fn unmount_and_join(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        // fuser only closes fusermount's socket here, and fusermount's auto_unmount leaves a
        // mount whose daemon still answers alone: unmount it ourselves (only while our session
        // runs, so that we never unmount someone else's mount at the same place).
        if self.is_mounted() {
            unmount_path(&self.mountpoint)?;
        }
        let joined = session.umount_and_join();
        if let Some(auto_unmount) = self.auto_unmount.take() {
            auto_unmount.release();
        }
        joined
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_and_join() {
            tracing::warn!(mountpoint = ?self.mountpoint, error = ?e.to_string(), "unmount failed");
        }
    }
}

/// Unmounts `mountpoint`: at once if idle, else lazily (it goes when the last user lets go).
/// Non-root users go through the setuid fusermount3.
fn unmount_path(mountpoint: &Path) -> io::Result<()> {
    let path = CString::new(mountpoint.as_os_str().as_bytes())?;
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    if unsafe { libc::umount2(path.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EBUSY) => {
            tracing::warn!(?mountpoint, "mount busy; detaching it lazily");
            // SAFETY: as above.
            if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        }
        Some(libc::EPERM) => {
            let status = Command::new("fusermount3")
                .args(["-u", "-z", "--"])
                .arg(mountpoint)
                .status()?;
            if status.success() {
                Ok(())
            } else {
                Err(io::Error::other(format!("fusermount3 -u failed: {status}")))
            }
        }
        // Unmounted from outside meanwhile.
        Some(libc::EINVAL) | Some(libc::ENOENT) => Ok(()),
        _ => Err(err),
    }
}

/// Mounts `cfg.backing` at `cfg.mountpoint` and serves it on `cfg.threads` background threads;
/// returns once the mount is live.
pub fn spawn_mount(mut cfg: MountConfig) -> io::Result<MountHandle> {
    sys::raise_nofile_limit();
    // Unmounting later must name the same place whatever the working directory is then.
    cfg.mountpoint = cfg.mountpoint.canonicalize()?;
    let (session, end, auto_unmount) = match new_session(&cfg, true) {
        Ok(mounted) => mounted,
        Err(e) => {
            // fusermount3's message quotes the mountpoint: Debug keeps its characters escaped.
            tracing::warn!(
                error = ?e.to_string(),
                "auto_unmount mount failed; mounting without it, so a killed daemon leaves a \
                 dead mount behind"
            );
            new_session(&cfg, false)?
        }
    };
    Ok(MountHandle {
        session: Some(session.spawn()?),
        end,
        mountpoint: cfg.mountpoint,
        auto_unmount,
    })
}

/// Mounts and serves until the filesystem is unmounted from outside, or SIGTERM/SIGINT arrives
/// (then unmounts itself).
pub fn run_until_unmounted(cfg: MountConfig, on_ready: impl FnOnce()) -> io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    // Registered before mounting so no signal is lost to the default action in between.
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    let signals_handle = signals.handle();
    let handle = spawn_mount(cfg)?;
    on_ready();
    let end = handle.end.clone();
    let watcher = std::thread::Builder::new()
        .name("maxlofs-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                tracing::info!(signal, "signal received; unmounting");
                end.update(|state| state.stop_requested = true);
            }
        })?;
    handle.end.wait(|state| state.ended || state.stop_requested);
    signals_handle.close();
    let _ = watcher.join();
    handle.unmount()
}

type NewSession = (Session<FuseAdapter>, Arc<SessionEnd>, Option<AutoUnmount>);

fn new_session(cfg: &MountConfig, auto_unmount: bool) -> io::Result<NewSession> {
    let end = Arc::new(SessionEnd::default());
    let fs = Passthrough::new(&cfg.backing, cfg.events.clone(), cfg.status.clone())?;
    let adapter = FuseAdapter::new(
        fs,
        cfg.kernel_passthrough,
        cfg.allow_other,
        SessionEndGuard(end.clone()),
    );
    let options = mount_options(cfg);
    let mut config = fuser::Config::default();
    // fuser checks each request's user too (a second line behind the kernel's), or lets all in.
    config.acl = if cfg.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(cfg.threads.max(1));
    // One /dev/fuse descriptor per thread, so threads do not contend on one queue.
    config.clone_fd = true;
    if auto_unmount {
        let (device, helper) = mount_with_auto_unmount(&cfg.mountpoint, &options, cfg.allow_other)?;
        let acl = config.acl;
        let session = Session::from_fd(adapter, device, acl, config)?;
        Ok((session, end, Some(helper)))
    } else {
        config.mount_options = options;
        let session = Session::new(adapter, &cfg.mountpoint, &config)?;
        Ok((session, end, None))
    }
}

/// The kernel mount's options but `allow_other` (fuser adds that from the ACL on a direct mount).
/// With `allow_other`, `default_permissions`: others get in, so the kernel checks permissions
/// against the backing modes.
fn mount_options(cfg: &MountConfig) -> Vec<MountOption> {
    let mut options = vec![
        MountOption::FSName("maxlofs".into()),
        MountOption::Subtype("maxlofs".into()),
    ];
    if cfg.read_only {
        options.push(MountOption::RO);
    }
    if cfg.allow_other {
        options.push(MountOption::DefaultPermissions);
    }
    options
}

/// fusermount3's helper process, which unmounts once `socket` closes and the mount is dead.
struct AutoUnmount {
    socket: UnixStream,
    helper: Child,
}

impl AutoUnmount {
    /// Lets the helper go (call once the mount is gone) and reaps it.
    fn release(self) {
        let AutoUnmount { socket, mut helper } = self;
        drop(socket);
        let _ = helper.wait();
    }
}

/// Mounts through `fusermount3 -o auto_unmount,...`, which passes the /dev/fuse descriptor back
/// over the socket named in `_FUSE_COMMFD` and keeps running to unmount once that socket closes.
fn mount_with_auto_unmount(
    mountpoint: &Path,
    options: &[MountOption],
    allow_other: bool,
) -> io::Result<(OwnedFd, AutoUnmount)> {
    let mut words = vec!["auto_unmount".to_string()];
    words.extend(options.iter().map(fusermount_option));
    if allow_other {
        words.push("allow_other".into());
    }
    let (ours, theirs) = UnixStream::pair()?;
    let theirs_fd = theirs.as_raw_fd();
    let mut command = Command::new("fusermount3");
    command
        .arg("-o")
        .arg(words.join(","))
        .arg("--")
        .arg(mountpoint)
        .env("_FUSE_COMMFD", theirs_fd.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let keep_open_across_exec = move || {
        // SAFETY: fcntl is async-signal-safe and only changes the flags of a descriptor the child
        // inherited from us.
        if unsafe { libc::fcntl(theirs_fd, libc::F_SETFD, 0) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    // SAFETY: the hook runs between fork and exec and does nothing but one fcntl (see above).
    unsafe { command.pre_exec(keep_open_across_exec) };
    let helper = command.spawn()?;
    drop(theirs);
    match sys::recv_fd(ours.as_fd()) {
        Ok(Some(device)) => Ok((
            device,
            AutoUnmount {
                socket: ours,
                helper,
            },
        )),
        failed => {
            drop(ours);
            let output = helper.wait_with_output()?;
            let stderr = String::from_utf8_lossy(&output.stderr);
            Err(match failed {
                Err(e) => e,
                _ => io::Error::other(format!("fusermount3: {}", stderr.trim())),
            })
        }
    }
}

/// One mount option as fusermount3 spells it (only those `mount_options` uses).
fn fusermount_option(option: &MountOption) -> String {
    match option {
        MountOption::FSName(name) => format!("fsname={name}"),
        MountOption::Subtype(subtype) => format!("subtype={subtype}"),
        MountOption::RO => "ro".into(),
        MountOption::DefaultPermissions => "default_permissions".into(),
        other => unreachable!("mount_options does not use {other:?}"),
    }
}

#[derive(Debug, Default)]
pub(crate) struct EndState {
    /// The serving threads have finished (unmounted, from inside or outside).
    ended: bool,
    /// A signal asked `run_until_unmounted` to unmount.
    stop_requested: bool,
}

/// Lets a `MountHandle` wait for the end of its session.
#[derive(Debug, Default)]
pub(crate) struct SessionEnd {
    state: Mutex<EndState>,
    changed: Condvar,
}

impl SessionEnd {
    fn update(&self, change: impl FnOnce(&mut EndState)) {
        change(&mut self.state.lock().expect("session end lock"));
        self.changed.notify_all();
    }

    fn wait(&self, done: impl Fn(&EndState) -> bool) {
        let state = self.state.lock().expect("session end lock");
        let _state = self
            .changed
            .wait_while(state, |state| !done(state))
            .expect("session end lock");
    }
}

/// Owned by the filesystem object fuser runs, which it drops when the session ends however it
/// ends (unmount, error, panic).
pub(crate) struct SessionEndGuard(Arc<SessionEnd>);

impl Drop for SessionEndGuard {
    fn drop(&mut self) {
        self.0.update(|state| state.ended = true);
    }
}
