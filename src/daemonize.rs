//! Daemon mode: `maxlofs mount` without `--foreground` runs `maxlofs mount ... --foreground` with
//! the same resolved settings as a daemon (its own session, in `/`, stdin from /dev/null, stdout
//! and stderr to the log file) and waits until that daemon reports the mount live. Starting the
//! program again, rather than fork(2) alone, gives the daemon a fresh process with no threads or
//! state inherited from the parent.
//!
//! The daemon reports on a pipe whose write end it inherits as the fd named by
//! `MAXLOFS_READY_FD`: one line `ready` once mounted (`notify_ready`), after any `warning: `
//! lines (`warn_at_start`), which the parent prints on its stderr. End of file without `ready`
//! means the daemon failed before mounting; the parent then prints what the daemon logged and
//! fails too.
//!
//! Under systemd (a `Type=notify` service running `maxlofs mount --foreground`), the mount
//! reports itself ready to systemd instead, as `READY=1` on `$NOTIFY_SOCKET`.

use parking_lot::Mutex;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;

use crate::args::MountArgs;

pub const READY_FD_ENV: &str = "MAXLOFS_READY_FD";

/// Lines of the daemon's log shown when it fails before the mount is ready.
const TAIL_LINES: usize = 20;

/// The daemon's end of the readiness pipe, once claimed.
static READY: Mutex<Option<File>> = Mutex::new(None);

/// Starts the daemon for `args` and returns once it reports the mount ready; fails, after
/// printing the daemon's last log lines to stderr, when it exits before that.
pub fn spawn(args: &MountArgs) -> anyhow::Result<()> {
    let log_path = match &args.log_file {
        Some(path) => path.clone(),
        None => default_log_file()?,
    };
    let log = open_log(&log_path)?;
    let start = log.metadata()?.len();
    let daemon_args = MountArgs {
        foreground: true,
        ..args.clone()
    };
    let command_line = crate::config::command_line(&daemon_args)
        .context("passing the settings on to the daemon")?;

    let (ready, mut writer) = std::io::pipe()?;
    if writer.as_raw_fd() <= 2 {
        // Started with stdin, stdout or stderr closed: keep clear of the fds the daemon's
        // stdio is set up on (try_clone picks the lowest free fd above 2).
        writer = writer.try_clone()?;
    }
    let fd = writer.as_raw_fd();
    let mut command = Command::new(std::env::current_exe().context("finding maxlofs itself")?);
    command
        .args(command_line)
        // Every setting is on the command line already; a config file must not add to it.
        .arg("--no-config")
        .env(READY_FD_ENV, fd.to_string())
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: between fork and exec only async-signal-safe calls run (setsid, fcntl). Clearing FD_CLOEXEC in the child alone passes the write end to the daemon and to no other process.
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() == -1 || libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut daemon = command.spawn().context("starting the daemon")?;
    // Now only the daemon holds the write end: its exit is our end of file.
    drop(writer);

    let mut ready = BufReader::new(ready);
    let mut line = String::new();
    loop {
        line.clear();
        ready
            .read_line(&mut line)
            .context("waiting for the daemon")?;
        if line == "ready\n" {
            return Ok(());
        }
        match line.strip_prefix(WARNING) {
            Some(warning) => eprint!("maxlofs: warning: {warning}"),
            None => break,
        }
    }
    let status = daemon.wait()?;
    eprint!("{}", tail(&log_path, start, TAIL_LINES));
    let failed = anyhow::anyhow!(
        "the daemon exited ({status}) before the mount was ready; its log is {}",
        log_path.display()
    );
    // The daemon's own exit status 2 (a usage error, a refused mount) is ours as well.
    match status.code() {
        Some(2) => Err(failed.context(crate::args::NotMounted)),
        _ => Err(failed),
    }
}

/// In the daemon: takes the readiness pipe named by `MAXLOFS_READY_FD` out of the environment and
/// marks it close-on-exec, so that no process the daemon starts holds it open (fusermount3 stays
/// for as long as the mount does). Call it early; `notify_ready` calls it too. Does nothing
/// outside daemon mode.
pub fn claim_ready_fd() {
    let Some(value) = std::env::var_os(READY_FD_ENV) else {
        return;
    };
    std::env::remove_var(READY_FD_ENV);
    let Some(fd) = value.to_str().and_then(|v| v.parse::<RawFd>().ok()) else {
        tracing::warn!("ignoring {READY_FD_ENV}={value:?}: not an fd number");
        return;
    };
    // A stray variable must not make us write to, or close, some other file.
    let is_pipe = std::fs::metadata(format!("/proc/self/fd/{fd}"))
        .is_ok_and(|meta| meta.file_type().is_fifo());
    if fd <= 2 || !is_pipe {
        tracing::warn!("ignoring {READY_FD_ENV}={fd}: not an open pipe");
        return;
    }
    // SAFETY: the fd is open, and the parent passed it to this process for this use alone.
    let ready = unsafe { File::from_raw_fd(fd) };
    if rustix::io::fcntl_setfd(&ready, rustix::io::FdFlags::CLOEXEC).is_err() {
        tracing::warn!("ignoring {READY_FD_ENV}={fd}: not an open pipe");
        // Not ours to close after all.
        let _ = ready.into_raw_fd();
        return;
    }
    *READY.lock() = Some(ready);
}

/// How a warning line on the readiness pipe starts.
const WARNING: &str = "warning: ";

/// A warning for whoever starts the mount: logged, and in daemon mode also sent to the waiting
/// `maxlofs mount`, which prints it on its stderr, where the user looks (the log file is not).
/// For what the user must know at once: the mount works, but not as they may expect.
pub fn warn_at_start(message: &str) {
    tracing::warn!("{message}");
    claim_ready_fd();
    if let Some(pipe) = READY.lock().as_mut() {
        // One line, escaped: it may quote the service's words.
        let line = crate::output::escaped_line(message);
        if let Err(err) = writeln!(pipe, "{WARNING}{line}") {
            tracing::warn!("passing a warning to `maxlofs mount`: {err}");
        }
    }
}

/// Reports the mount live: to the waiting parent in daemon mode (`maxlofs mount` without
/// `--foreground`), which then exits 0, closing the pipe; and to systemd when it set
/// `$NOTIFY_SOCKET`. The parent is told once only.
pub fn notify_ready() {
    claim_ready_fd();
    if let Some(mut pipe) = READY.lock().take() {
        if let Err(err) = pipe.write_all(b"ready\n") {
            // The parent is gone (interrupted): nobody waits for the news.
            tracing::warn!("reporting the mount ready: {err}");
        }
    }
    if let Some(socket) = std::env::var_os("NOTIFY_SOCKET") {
        if let Err(err) = notify_systemd(&socket) {
            tracing::warn!("reporting the mount ready to systemd at {socket:?}: {err}");
        }
    }
}

/// sd_notify(3)'s `READY=1`, sent to `socket`: a path, or an abstract socket name after `@`.
fn notify_systemd(socket: &OsStr) -> io::Result<()> {
    const READY: &[u8] = b"READY=1";
    let sender = UnixDatagram::unbound()?;
    match socket.as_bytes().strip_prefix(b"@") {
        Some(name) => sender.send_to_addr(READY, &SocketAddr::from_abstract_name(name)?),
        None => sender.send_to(READY, socket),
    }?;
    Ok(())
}

/// `$XDG_STATE_HOME/maxlofs/maxlofs.log`, else `~/.local/state/maxlofs/maxlofs.log`.
fn default_log_file() -> anyhow::Result<PathBuf> {
    let dir = crate::config::xdg_dir("XDG_STATE_HOME", ".local/state")
        .context("neither XDG_STATE_HOME nor HOME is set: pass --log-file")?;
    Ok(dir.join("maxlofs/maxlofs.log"))
}

/// Opens the log for appending: created 0600 if new; if it exists, it must be a file of the
/// daemon's user that no one else may write to. A symlink at its name is refused, not followed:
/// in a shared folder such as /tmp another user could point it at a file of ours, or have made
/// the log themselves, to read it.
fn open_log(path: &Path) -> anyhow::Result<File> {
    // A trailing slash would make the kernel follow a symlink at the last name.
    let path: PathBuf = path.components().collect();
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating the log folder {}", dir.display()))?;
    }
    let opening = || format!("opening the log file {}", path.display());
    let refused = |why: &str| -> anyhow::Error {
        anyhow::anyhow!(
            "the log file {} {why}: remove it or choose another --log-file",
            path.display()
        )
        .context(crate::args::NotMounted)
    };
    // O_NONBLOCK: a FIFO put there fails to open rather than hold us; a file ignores it.
    let open = |new: bool| {
        OpenOptions::new()
            .append(true)
            .create_new(new)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
    };
    let existing = match open(true) {
        Ok(created) => return Ok(created),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => open(false),
        Err(err) => Err(err),
    };
    let log = match existing {
        Ok(log) => log,
        Err(err) if matches!(err.raw_os_error(), Some(libc::ELOOP | libc::ENXIO)) => {
            return Err(refused(
                "is a symlink or not a file, which maxlofs does not follow",
            ))
        }
        Err(err) => return Err(err).with_context(opening),
    };
    let meta = log.metadata().with_context(opening)?;
    let me = rustix::process::geteuid().as_raw();
    if !meta.is_file() {
        return Err(refused("is not a file"));
    }
    if meta.uid() != me {
        return Err(refused(&format!(
            "belongs to uid {}, but maxlofs runs as uid {me}",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(refused(&format!(
            "may be written by other users (mode {:o})",
            meta.mode() & 0o7777
        )));
    }
    Ok(log)
}

/// The last `lines` lines written to the log at `path` after byte `start`.
fn tail(path: &Path, start: u64, lines: usize) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut file) = File::open(path) {
        // A log we cannot read back only costs the parent its explanation.
        let _ = file
            .seek(SeekFrom::Start(start))
            .and_then(|_| file.read_to_end(&mut bytes));
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    // The log's own lines are escaped already; this also covers what reached the log file
    // around the logger (a panic's message).
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|line| format!("{}\n", crate::output::escaped_line(line)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `notify_systemd(name)` sends to `systemd`, bound at `name`.
    fn notified(systemd: &UnixDatagram, name: &OsStr) -> Vec<u8> {
        systemd
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        notify_systemd(name).unwrap();
        let mut message = [0; 64];
        let len = systemd.recv(&mut message).unwrap();
        message[..len].to_vec()
    }

    #[test]
    fn notify_systemd_sends_ready_to_a_socket_path_or_an_abstract_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let systemd = UnixDatagram::bind(&path).unwrap();
        assert_eq!(notified(&systemd, path.as_os_str()), b"READY=1");

        let name = format!("maxlofs-test-notify-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(&name).unwrap();
        let systemd = UnixDatagram::bind_addr(&address).unwrap();
        assert_eq!(
            notified(&systemd, OsStr::new(&format!("@{name}"))),
            b"READY=1"
        );

        let nobody = dir.path().join("nobody");
        assert!(notify_systemd(nobody.as_os_str()).is_err());
    }

    #[test]
    fn tail_shows_the_last_lines_written_after_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "old\na\nb\nc").unwrap();
        assert_eq!(tail(&path, 4, 2), "b\nc\n");
        assert_eq!(tail(&path, 4, 10), "a\nb\nc\n");
        assert_eq!(tail(&dir.path().join("missing"), 0, 2), "");
    }
}
