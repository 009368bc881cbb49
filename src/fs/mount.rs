//! Mounting: a live mount served on background threads (`spawn_mount`), or in the foreground
//! until unmounted or signalled (`run_until_unmounted`).
//!
//! The mount never outlives the process: it is made through `fusermount3 -o auto_unmount`, whose
//! helper process unmounts once our end of its socket closes and the mount no longer answers,
//! both of which the kernel does for us when the process dies, even on SIGKILL. (It leaves a
//! mount that still answers alone, so a clean unmount is done by us: `umount2`, or
//! `fusermount3 -u` for non-root users.) If that mount fails (no fusermount3, or a non-root user without
//! `user_allow_other` in /etc/fuse.conf), we mount directly and say so in a warning: then only a
//! clean exit or panic unmounts, and a SIGKILLed daemon leaves a dead mount behind.

use super::fuse::FuseAdapter;
use super::passthrough::Passthrough;
use super::sys;
use super::MountConfig;
use fuser::{BackgroundSession, MountOption, Session, SessionACL};
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};

/// A live mount served by background threads. Dropping it unmounts too (ignoring errors).
pub struct MountHandle {
    session: Option<BackgroundSession>,
    end: Arc<SessionEnd>,
    mountpoint: PathBuf,
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
        session.umount_and_join()
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_and_join() {
            tracing::warn!(mountpoint = ?self.mountpoint, "unmount failed: {e}");
        }
    }
}

/// Unmounts `mountpoint`: at once if idle, else lazily (it goes when the last user lets go).
/// Non-root users go through the setuid fusermount3.
fn unmount_path(mountpoint: &Path) -> io::Result<()> {
    let path = CString::new(mountpoint.as_os_str().as_bytes())?;
    if unsafe { libc::umount2(path.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EBUSY) => {
            tracing::warn!(?mountpoint, "mount busy; detaching it lazily");
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
    let (session, end) = match new_session(&cfg, true) {
        Ok(mounted) => mounted,
        Err(e) => {
            tracing::warn!(
                "auto_unmount mount failed ({e}); mounting without it, so a killed daemon \
                 leaves a dead mount behind"
            );
            new_session(&cfg, false)?
        }
    };
    Ok(MountHandle {
        session: Some(session.spawn()?),
        end,
        mountpoint: cfg.mountpoint,
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

fn new_session(
    cfg: &MountConfig,
    auto_unmount: bool,
) -> io::Result<(Session<FuseAdapter>, Arc<SessionEnd>)> {
    let end = Arc::new(SessionEnd::default());
    let fs = Passthrough::new(
        &cfg.backing,
        cfg.events.clone(),
        cfg.status.clone(),
        cfg.writers.clone(),
    )?;
    let adapter = FuseAdapter::new(
        fs,
        cfg.kernel_passthrough,
        cfg.allow_other,
        SessionEndGuard(end.clone()),
    );
    let session = Session::new(adapter, &cfg.mountpoint, &fuser_config(cfg, auto_unmount))?;
    Ok((session, end))
}

fn fuser_config(cfg: &MountConfig, auto_unmount: bool) -> fuser::Config {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName("maxlofs".into()),
        MountOption::Subtype("maxlofs".into()),
    ];
    if cfg.read_only {
        config.mount_options.push(MountOption::RO);
    }
    config.acl = if cfg.allow_other {
        // Others get in, so the kernel checks permissions against the backing modes.
        config.mount_options.push(MountOption::DefaultPermissions);
        SessionACL::All
    } else if auto_unmount {
        // fusermount needs allow_other for auto_unmount; fuser then still answers only the
        // mounting user (and root) and refuses everyone else.
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    if auto_unmount {
        config.mount_options.push(MountOption::AutoUnmount);
    }
    config.n_threads = Some(cfg.threads.max(1));
    // One /dev/fuse descriptor per thread, so threads do not contend on one queue.
    config.clone_fd = true;
    config
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
