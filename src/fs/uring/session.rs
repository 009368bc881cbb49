//! Our own FUSE session, for the io_uring transport. fuser cannot offer FUSE_OVER_IO_URING, so
//! INIT is answered here; then one ring queue per possible CPU serves requests (`ring`), each on
//! a thread pinned to its CPU. /dev/fuse is still read: the kernel sends FORGET and INTERRUPT
//! there, and everything until every queue is registered. When the kernel does not take the
//! rings, /dev/fuse readers serve it all, through the same `Dispatcher`.

use super::abi::{fuse_out_header, struct_bytes, FUSE_INIT};
use super::dispatch::{Dispatcher, Reply, Request};
use super::ring;
use crate::Transport;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// Room for a request's header and fixed argument ahead of its payload on /dev/fuse.
const HEADER_ROOM: usize = 4096;

/// With the rings serving, /dev/fuse carries almost only FORGETs, one per inode the kernel
/// drops (each unlink): the reader pauses this long after each request, so that the kernel
/// gathers them into BATCH_FORGETs instead of waking the reader, often on the other CPU, for
/// each.
const FORGET_PAUSE: Duration = Duration::from_millis(10);

/// How long the queues may take to register before the session does without them.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);

/// Where fusectl shows each FUSE connection (`N/abort` ends connection N).
const FUSECTL: &str = "/sys/fs/fuse/connections";

/// Ends the FUSE connection when a serving thread fails (an error or a panic) while the others
/// go on: requests queued for a ring nobody serves would wait forever, so the mount's users
/// get ENOTCONN instead, and the daemon ends as after an administrator's abort.
#[derive(Debug, Default)]
pub(crate) struct ConnectionAbort {
    /// fusectl's `abort` file of the connection, once known.
    file: OnceLock<PathBuf>,
}

impl ConnectionAbort {
    /// The connection's number, as fusectl names it.
    pub(crate) fn set_connection(&self, connection: u64) {
        let _ = self.file.set(
            Path::new(FUSECTL)
                .join(connection.to_string())
                .join("abort"),
        );
    }

    /// Ends the connection; if that cannot be done, the process, which ends it too.
    fn abort(&self, why: &str) {
        tracing::error!("{why}: ending the FUSE connection, whose requests no thread would answer");
        let Some(file) = self.file.get() else {
            tracing::error!("connection not known yet: exiting, which ends it");
            std::process::exit(70);
        };
        let mut written = std::fs::write(file, "1");
        if written.is_err() && !Path::new(FUSECTL).join("version").exists() {
            // Without fusectl mounted (systemd mounts it at boot; not every system does).
            // SAFETY: all strings are NUL-terminated literals; no data is passed.
            unsafe {
                libc::mount(
                    c"fusectl".as_ptr(),
                    c"/sys/fs/fuse/connections".as_ptr(),
                    c"fusectl".as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            written = std::fs::write(file, "1");
        }
        if let Err(e) = written {
            tracing::error!(?file, error = %e, "cannot abort the connection: exiting, which ends it");
            std::process::exit(70);
        }
    }

    /// Runs one serving thread's loop; aborts the connection if it fails.
    fn serve(&self, thread: &str, serve: impl FnOnce() -> io::Result<()>) {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(serve)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.abort(&format!("{thread} failed: {e}")),
            Err(_) => self.abort(&format!("{thread} panicked")),
        }
    }
}

/// The threads of a running session; they end when the connection does.
pub(crate) struct OwnSession {
    threads: Vec<JoinHandle<()>>,
    transport: Transport,
}

impl OwnSession {
    pub(crate) fn transport(&self) -> Transport {
        self.transport
    }

    pub(crate) fn join(self) {
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// Answers INIT on `device` (a fresh mount's /dev/fuse descriptor), asking for io_uring, then
/// starts serving: on rings when the kernel takes them, else on `readers` /dev/fuse threads.
/// `on_end` is dropped when the last serving thread ends; a thread that fails ends the
/// connection through `abort`.
pub(crate) fn start<G: Send + Sync + 'static>(
    device: OwnedFd,
    dispatcher: Arc<Dispatcher>,
    readers: usize,
    abort: Arc<ConnectionAbort>,
    on_end: G,
) -> io::Result<OwnSession> {
    let device = Arc::new(device);
    let on_end = Arc::new(on_end);
    // The kernel refuses reads into less than it may send: 8 KiB, or more after INIT.
    let mut buffer = vec![0u8; (1 << 20) + HEADER_ROOM];
    let len = read_request(&device, &mut buffer)?;
    let request = Request::from_device(&buffer[..len])
        .ok()
        .filter(|request| request.header.opcode == FUSE_INIT)
        .ok_or_else(|| io::Error::other("the kernel's first request was not INIT"))?;
    let (header, op_in) = (request.header, request.op_in);
    let init = match dispatcher.init(op_in, true) {
        Ok(init) => init,
        Err(errno) => {
            send_reply(&device, header.unique, Reply::Error(errno), &[])?;
            return Err(io::Error::other(format!(
                "the kernel's FUSE protocol cannot be served (INIT: errno {errno})"
            )));
        }
    };
    let reply = struct_bytes(&init.reply).to_vec();
    send_reply(&device, header.unique, Reply::Data(reply.len()), &reply)?;
    // Room for the largest payload either way (and for the dispatcher's answers).
    let payload_len = init.ring_payload.max(64 * 1024) + HEADER_ROOM;

    let rings_serve = Arc::new(AtomicBool::new(false));
    let spawn_reader = |n: usize| {
        let (device, dispatcher, on_end) = (device.clone(), dispatcher.clone(), on_end.clone());
        let (rings_serve, abort) = (rings_serve.clone(), abort.clone());
        spawn(format!("maxlofs-fuse-{n}"), move || {
            abort.serve("the /dev/fuse reader", || {
                serve_device(&device, &dispatcher, payload_len, &rings_serve)
            });
            drop(on_end);
        })
    };
    // /dev/fuse is served from the start: with rings it carries what they do not (FORGET,
    // INTERRUPT, requests made before every queue is registered), and one reader is enough.
    let mut threads = vec![spawn_reader(0)?];
    let mut transport = Transport::DevFuse;
    if init.io_uring {
        transport = Transport::IoUring;
        // Said before any ring can answer a status request.
        dispatcher.fs().set_transport(transport);
        let (registered, outcomes) = mpsc::channel();
        let queues = possible_cpus()?;
        for qid in 0..queues {
            let (device, dispatcher, registered, on_end, abort) = (
                device.clone(),
                dispatcher.clone(),
                registered.clone(),
                on_end.clone(),
                abort.clone(),
            );
            threads.push(spawn(format!("maxlofs-ring-{qid}"), move || {
                abort.serve(&format!("ring queue {qid}"), || {
                    ring::serve_queue(
                        device.as_raw_fd(),
                        qid,
                        payload_len,
                        &dispatcher,
                        registered,
                    )
                });
                drop(on_end);
            })?);
        }
        drop(registered);
        for _ in 0..queues {
            let why = match outcomes.recv_timeout(REGISTER_TIMEOUT) {
                Ok(Ok(())) => continue,
                // Unmounted (or aborted) while starting: every thread ends with the connection.
                Ok(Err(e))
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOTCONN | libc::ECONNABORTED | libc::ENODEV)
                    ) =>
                {
                    continue
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "no answer in time".to_string(),
            };
            tracing::warn!("io_uring queue not registered ({why}); serving /dev/fuse");
            transport = Transport::DevFuse;
            break;
        }
    }
    dispatcher.fs().set_transport(transport);
    rings_serve.store(transport == Transport::IoUring, Ordering::Relaxed);
    if transport == Transport::DevFuse {
        for n in 1..readers.max(1) {
            threads.push(spawn_reader(n)?);
        }
    }
    Ok(OwnSession { threads, transport })
}

fn spawn(name: String, serve: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name).spawn(serve)
}

/// Reads and serves /dev/fuse requests until the connection ends.
fn serve_device(
    device: &OwnedFd,
    dispatcher: &Dispatcher,
    payload_len: usize,
    rings_serve: &AtomicBool,
) -> io::Result<()> {
    let mut buffer = vec![0u8; payload_len + HEADER_ROOM];
    let mut out = vec![0u8; payload_len];
    loop {
        let len = match read_request(device, &mut buffer) {
            Ok(len) => len,
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(()),
            Err(e) => return Err(e),
        };
        let Some((unique, reply)) =
            dispatcher.serve_received(Request::from_device(&buffer[..len]), &mut out)
        else {
            tracing::warn!(len, "short request on /dev/fuse");
            continue;
        };
        match send_reply(device, unique, reply, &out) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(()),
            Err(e) => return Err(e),
        }
        if rings_serve.load(Ordering::Relaxed) {
            std::thread::sleep(FORGET_PAUSE);
        }
    }
}

/// One request from /dev/fuse; retried while the kernel says it was interrupted or not ready.
fn read_request(device: &OwnedFd, buffer: &mut [u8]) -> io::Result<usize> {
    loop {
        let fd = device.as_raw_fd();
        // SAFETY: `buffer` is valid for writes of its length for the duration of the call.
        let len = unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) };
        if len >= 0 {
            return Ok(len as usize);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            // ENOENT: the request was interrupted before we read it.
            Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::ENOENT) => continue,
            _ => return Err(err),
        }
    }
}

/// Writes the answer to request `unique` (none for `Reply::None`); `out` holds its data.
fn send_reply(device: &OwnedFd, unique: u64, reply: Reply, out: &[u8]) -> io::Result<()> {
    let (error, data) = match reply {
        Reply::None => return Ok(()),
        Reply::Error(errno) => (-errno, &[][..]),
        Reply::Data(len) => (0, &out[..len]),
    };
    let header = fuse_out_header {
        len: (size_of::<fuse_out_header>() + data.len()) as u32,
        error,
        unique,
    };
    let header = struct_bytes(&header);
    let parts = [
        libc::iovec {
            iov_base: header.as_ptr() as *mut _,
            iov_len: header.len(),
        },
        libc::iovec {
            iov_base: data.as_ptr() as *mut _,
            iov_len: data.len(),
        },
    ];
    // SAFETY: both iovecs name live buffers of their lengths, which writev only reads.
    let written = unsafe { libc::writev(device.as_raw_fd(), parts.as_ptr(), 2) };
    if written >= 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        // The request was interrupted and its answer is no longer wanted.
        Some(libc::ENOENT) => Ok(()),
        _ => Err(err),
    }
}

/// How many CPUs the kernel may ever have (it keeps one queue per possible CPU): one more than
/// the highest number in /sys/devices/system/cpu/possible ("0-1", "0,2-3").
fn possible_cpus() -> io::Result<u16> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    text.trim()
        .split([',', '-'])
        .filter_map(|n| n.parse::<u16>().ok())
        .max()
        .map(|highest| highest + 1)
        .ok_or_else(|| io::Error::other(format!("unreadable possible CPUs: {text:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_serving_thread_that_fails_or_panics_aborts_the_connection_and_one_that_ends_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("abort");
        let abort = ConnectionAbort::default();
        abort.file.set(file.clone()).unwrap();
        abort.serve("a queue", || Ok(()));
        assert!(
            !file.exists(),
            "a thread that ends with its connection aborts nothing"
        );
        abort.serve("a queue", || Err(io::Error::other("unexpected")));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "1");
        std::fs::remove_file(&file).unwrap();
        abort.serve("a queue", || panic!("a bug in a request's handling"));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "1");
    }
}
