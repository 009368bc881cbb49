//! Mounting: a live mount served on background threads (`spawn_mount`), or in the foreground
//! until unmounted or signalled (`run_until_unmounted`).
//!
//! Privacy is the kernel's: a mount without `--allow-other` does not carry the `allow_other`
//! option, so the kernel refuses every other user (root included, unless root mounted it) before
//! anything is looked up, served from its caches or sent to us. fuser's own user check only sees
//! requests that reach the daemon, while the kernel answers cached names, attributes and link
//! targets by itself, so that check alone would leak them.
//!
//! The mount never outlives the process. A watchdog process started at mount waits on a pipe
//! only the daemon holds; the kernel closes it when the daemon ends however it ends (SIGKILL
//! included), and the watchdog then unmounts the mount if it is dead (ENOTCONN), as the daemon's
//! user: `umount -l` for root, `fusermount3 -u -z` otherwise. (fusermount3's own `auto_unmount`
//! helper cannot serve here: it checks the dead mount as root, which a mount without
//! `allow_other` refuses unless root owns it, and fuser adds `allow_other` to any auto_unmount
//! mount.) A mount that still answers is left alone, so a clean unmount is done by us: `umount2`,
//! or `fusermount3 -u` for non-root users. We mount ourselves too (mount(2) for root,
//! fusermount3 for others) and hand fuser the descriptor, so that fuser never unmounts.

use super::backing::FuseDevice;
use super::fuse::FuseAdapter;
use super::passthrough::Passthrough;
use super::sys;
use super::uring::dispatch::Dispatcher;
use super::uring::session::{self, ConnectionAbort, OwnSession};
use super::{MountConfig, Transport, TransportChoice};
use fuser::{BackgroundSession, Session, SessionACL};
use parking_lot::{Condvar, Mutex};
use rustix::mount::MountFlags;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;

/// A live mount served by background threads. Dropping it unmounts too (ignoring errors).
pub struct MountHandle {
    session: Option<Serving>,
    end: Arc<SessionEnd>,
    mountpoint: PathBuf,
    watchdog: Option<UnmountWatchdog>,
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

    /// What asks this mount to end (from a signal handler's task, say): see
    /// `serve_until_unmounted`.
    pub fn stopper(&self) -> MountStopper {
        MountStopper(self.end.clone())
    }

    /// Serves until the filesystem is unmounted from outside or a `MountStopper` asks, then
    /// unmounts (if still mounted) and waits for the serving threads.
    pub fn serve_until_unmounted(self) -> io::Result<()> {
        self.end.wait(|state| state.ended || state.stop_requested);
        self.unmount()
    }

    /// Whether the serving threads are still running.
    pub fn is_mounted(&self) -> bool {
        !self.end.state.lock().ended
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
        let joined = session.join();
        drop(self.watchdog.take());
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
    use rustix::io::Errno;
    use rustix::mount::{unmount, UnmountFlags};
    let path = CString::new(mountpoint.as_os_str().as_bytes())?;
    let Err(err) = unmount(path.as_c_str(), UnmountFlags::empty()) else {
        return Ok(());
    };
    match err {
        Errno::BUSY => {
            tracing::warn!(?mountpoint, "mount busy; detaching it lazily");
            Ok(unmount(path.as_c_str(), UnmountFlags::DETACH)?)
        }
        Errno::PERM => {
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
        Errno::INVAL | Errno::NOENT => Ok(()),
        _ => Err(err.into()),
    }
}

/// Mounts `cfg.backing` at `cfg.mountpoint` and serves it on `cfg.threads` background threads;
/// returns once the mount is live.
pub fn spawn_mount(mut cfg: MountConfig) -> io::Result<MountHandle> {
    sys::raise_nofile_limit();
    // Unmounting later must name the same place whatever the working directory is then.
    cfg.mountpoint = cfg.mountpoint.canonicalize()?;
    let watchdog = match UnmountWatchdog::spawn(&cfg.mountpoint) {
        Ok(watchdog) => Some(watchdog),
        Err(e) => {
            tracing::warn!(
                error = ?e.to_string(),
                "no unmount watchdog, so a killed daemon leaves a dead mount behind"
            );
            None
        }
    };
    let (session, end) = serve(&cfg)?;
    Ok(MountHandle {
        session: Some(session),
        end,
        mountpoint: cfg.mountpoint,
        watchdog,
    })
}

/// The threads serving a mount: fuser's (/dev/fuse) or our own session (io_uring).
enum Serving {
    Fuser(BackgroundSession),
    Own(OwnSession),
}

impl Serving {
    fn join(self) -> io::Result<()> {
        match self {
            Serving::Fuser(session) => session.join(),
            Serving::Own(session) => {
                session.join();
                Ok(())
            }
        }
    }
}

/// Where the administrator turns FUSE over io_uring on (root only, global; see
/// docs/operations.md). maxlofs only reads it.
const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

fn uring_enabled() -> bool {
    std::fs::read_to_string(ENABLE_URING).is_ok_and(|value| value.trim() == "Y")
}

/// Mounts and starts serving on the transport `cfg.transport` asks for.
fn serve(cfg: &MountConfig) -> io::Result<(Serving, Arc<SessionEnd>)> {
    let want_io_uring = match cfg.transport {
        TransportChoice::DevFuse => false,
        TransportChoice::Auto => uring_enabled(),
        TransportChoice::IoUring if uring_enabled() => true,
        TransportChoice::IoUring => {
            return Err(io::Error::other(format!(
                "--transport io-uring: the kernel has FUSE over io_uring off ({ENABLE_URING} is \
                 not Y; see docs/operations.md)"
            )))
        }
    };
    let end = Arc::new(SessionEnd::default());
    let fs = Passthrough::new(
        &cfg.backing,
        cfg.events.clone(),
        cfg.status.clone(),
        cfg.writers.clone(),
    )?;
    let device = mount_fuse(cfg)?;
    let kernel_passthrough = if cfg.kernel_passthrough {
        Some(FuseDevice::new(device.try_clone()?))
    } else {
        None
    };
    if !want_io_uring {
        fs.set_transport(Transport::DevFuse);
        let adapter = FuseAdapter::new(
            fs,
            kernel_passthrough,
            cfg.allow_other,
            SessionEndGuard(end.clone()),
        );
        let mut config = fuser::Config::default();
        config.n_threads = Some(cfg.threads.max(1));
        // One /dev/fuse descriptor per thread, so threads do not contend on one queue.
        config.clone_fd = true;
        // fuser's own check of each request's user, a second line behind the kernel's.
        let acl = if cfg.allow_other {
            SessionACL::All
        } else {
            SessionACL::Owner
        };
        // We mount and unmount ourselves: fuser's unmount, given a mount of its own, would run
        // after ours and could hit whatever is mounted at the place by then.
        let session = Session::from_fd(adapter, device, acl, config)?;
        return Ok((Serving::Fuser(session.spawn()?), end));
    }
    let dispatcher = Arc::new(Dispatcher::new(fs, cfg.allow_other, kernel_passthrough));
    let abort = Arc::new(ConnectionAbort::default());
    // Read now, while ours is the newest mount there; never by a stat of the mount, which
    // could make a user's umount find it busy (or wait on a ring nobody serves).
    match std::fs::read("/proc/self/mountinfo")
        .ok()
        .and_then(|mountinfo| fuse_connection(&mountinfo, &cfg.mountpoint))
    {
        Some(connection) => abort.set_connection(connection),
        None => tracing::warn!("the new mount is not in /proc/self/mountinfo"),
    }
    let started = session::start(
        device,
        dispatcher,
        cfg.threads,
        abort.clone(),
        SessionEndGuard(end.clone()),
    );
    let session = match started {
        Ok(session) => session,
        Err(e) => {
            let _ = unmount_path(&cfg.mountpoint);
            return Err(e);
        }
    };
    let transport = session.transport();
    tracing::info!(transport = transport.name(), "serving");
    if transport != Transport::IoUring && cfg.transport == TransportChoice::IoUring {
        let _ = unmount_path(&cfg.mountpoint);
        session.join();
        return Err(io::Error::other(
            "--transport io-uring: the kernel did not take the io_uring queues (see the log)",
        ));
    }
    Ok((Serving::Own(session), end))
}

/// The FUSE connection number (fusectl's name for it: the kernel's dev_t, major above bit 20)
/// of the newest FUSE mount at `mountpoint` in `mountinfo` (proc_pid_mountinfo(5)).
fn fuse_connection(mountinfo: &[u8], mountpoint: &Path) -> Option<u64> {
    // mountinfo escapes space, tab, newline and backslash in paths as octal.
    let mut wanted = Vec::new();
    for &byte in mountpoint.as_os_str().as_bytes() {
        match byte {
            b' ' | b'\t' | b'\n' | b'\\' => wanted.extend(format!("\\{byte:03o}").bytes()),
            _ => wanted.push(byte),
        }
    }
    mountinfo
        .split(|&byte| byte == b'\n')
        .rev()
        .find_map(|line| {
            let separator = line.windows(3).position(|w| w == b" - ")?;
            let fields: Vec<&[u8]> = line[..separator].split(|&byte| byte == b' ').collect();
            let fs_type = line[separator + 3..].split(|&byte| byte == b' ').next()?;
            if fields.get(4) != Some(&wanted.as_slice()) || !fs_type.starts_with(b"fuse") {
                return None;
            }
            let (major, minor) = std::str::from_utf8(fields.get(2)?).ok()?.split_once(':')?;
            Some((major.parse::<u64>().ok()? << 20) | minor.parse::<u64>().ok()?)
        })
}

/// Mounts a FUSE filesystem at `cfg.mountpoint` and answers the /dev/fuse descriptor that serves
/// it: root with mount(2), other users through the setuid `fusermount3`.
///
/// `allow_other` only when asked, and then `default_permissions`: others get in, so the kernel
/// checks permissions against the backing modes. Without it the kernel lets no one but the
/// mounting user in.
fn mount_fuse(cfg: &MountConfig) -> io::Result<OwnedFd> {
    let mut options = Vec::new();
    if cfg.allow_other {
        options.extend(["default_permissions", "allow_other"]);
    }
    if !rustix::process::geteuid().is_root() {
        if cfg.read_only {
            options.push("ro");
        }
        return mount_with_fusermount(&cfg.mountpoint, &options);
    }
    let device: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?
        .into();
    let root_mode = std::fs::metadata(&cfg.mountpoint)?.mode() & libc::S_IFMT;
    let mut data = format!(
        "fd={},rootmode={root_mode:o},user_id=0,group_id={}",
        device.as_raw_fd(),
        rustix::process::getegid().as_raw()
    );
    for option in options {
        data.push(',');
        data.push_str(option);
    }
    let mut flags = MountFlags::NOSUID | MountFlags::NODEV;
    if cfg.read_only {
        flags |= MountFlags::RDONLY;
    }
    let target = CString::new(cfg.mountpoint.as_os_str().as_bytes())?;
    let data = CString::new(data)?;
    rustix::mount::mount(
        c"maxlofs",
        target.as_c_str(),
        c"fuse.maxlofs",
        flags,
        data.as_c_str(),
    )?;
    Ok(device)
}

/// `fusermount3 -o OPTIONS -- MOUNTPOINT`, which mounts and passes the /dev/fuse descriptor back
/// over the socket named in `_FUSE_COMMFD`.
fn mount_with_fusermount(mountpoint: &Path, options: &[&str]) -> io::Result<OwnedFd> {
    let mut words = vec!["fsname=maxlofs", "subtype=maxlofs"];
    words.extend(options);
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
        // SAFETY: fcntl is async-signal-safe, and no memory is touched: the descriptor is one the child inherited from us, and only its flags change.
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
    let received = sys::recv_fd(ours.as_fd());
    drop(ours);
    let output = helper.wait_with_output()?;
    match received? {
        Some(device) => Ok(device),
        None => Err(io::Error::other(format!(
            "fusermount3: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))),
    }
}

/// A process that unmounts the mount at a place if the daemon dies with it still there.
/// Dropping it (once the mount is gone: it then finds nothing to unmount) lets it go and reaps
/// it.
struct UnmountWatchdog {
    /// Its stdin, which no other process holds: closed by us, or by the kernel when the daemon
    /// dies, it wakes the watchdog.
    alive: Option<ChildStdin>,
    child: Child,
}

/// The watchdog: waits for the end of stdin, then unmounts `$1` if it is a dead FUSE mount
/// (ENOTCONN, or ECONNABORTED for a request caught in the teardown; `LC_ALL=C` fixes their
/// messages), as the daemon's user: root directly, others
/// through the setuid fusermount3, which only unmounts their own mounts. It asks with statfs,
/// which always goes to the connection (a plain stat may be answered from the kernel's attribute
/// cache). A killed daemon's connection can take a moment to end (its io_uring queues are
/// cancelled after it exits), so while the place still answers as a FUSE mount (type
/// 0x65735546) it asks again, for up to 10 s. A place that is no FUSE mount (ours after a clean
/// unmount) is left at once; a FUSE mount that keeps answering (someone else's) in the end too.
const WATCHDOG_SCRIPT: &str = r#"cat >/dev/null
for _ in $(seq 50); do
  case $(LC_ALL=C stat -f -c %t -- "$1" 2>&1) in
  *': Transport endpoint is not connected' | *': Software caused connection abort')
    if [ "$(id -u)" = 0 ]; then exec umount -l -- "$1"; else exec fusermount3 -u -z -- "$1"; fi ;;
  65735546) sleep 0.2 ;;
  *) exit 0 ;;
  esac
done"#;

impl UnmountWatchdog {
    fn spawn(mountpoint: &Path) -> io::Result<UnmountWatchdog> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg("maxlofs-unmount-watchdog")
            .arg(mountpoint)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: Ctrl-C or a signal to the daemon's group leaves it alone.
            .process_group(0)
            .spawn()?;
        Ok(UnmountWatchdog {
            alive: child.stdin.take(),
            child,
        })
    }
}

impl Drop for UnmountWatchdog {
    fn drop(&mut self) {
        drop(self.alive.take());
        let _ = self.child.wait();
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
        change(&mut self.state.lock());
        self.changed.notify_all();
    }

    fn wait(&self, done: impl Fn(&EndState) -> bool) {
        let mut state = self.state.lock();
        self.changed.wait_while(&mut state, |state| !done(state));
    }
}

/// Asks a mount's `serve_until_unmounted` to unmount.
#[derive(Clone)]
pub struct MountStopper(Arc<SessionEnd>);

impl MountStopper {
    pub fn stop(&self) {
        self.0.update(|state| state.stop_requested = true);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_is_the_newest_fuse_mount_at_the_place_as_fusectl_names_it() {
        let mountinfo = b"\
22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
40 22 0:52 / /mnt/a\\040b rw,nosuid,nodev - fuse.maxlofs maxlofs rw,user_id=0
41 22 0:53 / /mnt/a\\040bc rw,nosuid,nodev - fuse.maxlofs maxlofs rw,user_id=0
42 40 8:3 / /mnt/a\\040b rw - ext4 /dev/sdb rw
43 42 0:60 / /mnt/a\\040b rw,nosuid,nodev shared:9 - fuse.maxlofs maxlofs rw,user_id=0
";
        assert_eq!(fuse_connection(mountinfo, Path::new("/mnt/a b")), Some(60));
        let non_utf8 = b"44 22 0:61 / /mnt/\xff\\134 rw - fuse.maxlofs maxlofs rw\n";
        let path = std::ffi::OsStr::from_bytes(b"/mnt/\xff\\");
        assert_eq!(fuse_connection(non_utf8, Path::new(path)), Some(61));
        assert_eq!(fuse_connection(mountinfo, Path::new("/mnt/a bc")), Some(53));
        assert_eq!(fuse_connection(mountinfo, Path::new("/")), None, "not FUSE");
        assert_eq!(
            fuse_connection(b"50 22 259:7 / /x rw - fuse.sshfs s rw\n", Path::new("/x")),
            Some((259 << 20) | 7)
        );
    }
}
