//! One io_uring queue of FUSE requests: the queue of one CPU, served by a thread pinned to it.
//!
//! The kernel puts each request on the queue of the CPU it was made on, in one of the entries
//! registered here: the in-header and the op's fixed argument in the entry's header buffer, the
//! rest (names, data) in its payload buffer. The thread answers in place (out-header in the
//! header buffer, out-arguments in the payload buffer) and hands the entry back with
//! COMMIT_AND_FETCH, which also waits for the entry's next request, so a request costs no
//! system call of its own and no other CPU is woken to serve it.

use super::abi::{
    fuse_out_header, fuse_uring_cmd_req, fuse_uring_ent_in_out, fuse_uring_req_header,
    struct_bytes, FUSE_IO_URING_CMD_COMMIT_AND_FETCH, FUSE_IO_URING_CMD_REGISTER,
};
use super::dispatch::{Dispatcher, Reply, Request};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::io;
use std::os::fd::RawFd;
use std::sync::mpsc::Sender;
use std::time::Duration;

/// Entries per queue: requests one CPU can have in the daemon at once (more wait in the kernel).
pub(crate) const QUEUE_DEPTH: usize = 8;

/// How long a queue waits for its registrations to be refused before it counts them accepted
/// (an accepted registration has no answer until a request arrives).
const REGISTER_SETTLE: Duration = Duration::from_millis(100);

/// The buffers of one ring entry. The kernel writes into them whenever the entry is registered
/// or committed, so they are reached only through raw pointers, and only between the entry's
/// completion and its next commit.
struct RingEntry {
    header: *mut fuse_uring_req_header,
    payload: *mut u8,
    payload_len: usize,
}

impl RingEntry {
    fn new(payload_len: usize) -> RingEntry {
        RingEntry {
            header: Box::into_raw(Box::default()),
            payload: Box::into_raw(vec![0u8; payload_len].into_boxed_slice()).cast(),
            payload_len,
        }
    }
}

impl Drop for RingEntry {
    fn drop(&mut self) {
        // SAFETY: both pointers come from `Box::into_raw` in `new` with these exact types and lengths, and the ring that could write to them is dropped before its entries are.
        unsafe {
            drop(Box::from_raw(self.header));
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.payload,
                self.payload_len,
            )));
        }
    }
}

/// The command area of a FUSE ring SQE for queue `qid` (`commit_id` 0 for a registration).
fn command_area(qid: u16, commit_id: u64) -> [u8; 80] {
    let request = fuse_uring_cmd_req {
        qid,
        commit_id,
        ..Default::default()
    };
    let mut cmd = [0u8; 80];
    let bytes = struct_bytes(&request);
    cmd[..bytes.len()].copy_from_slice(bytes);
    cmd
}

/// Answers the request committed as `commit_id` and waits for the entry's next one.
fn commit_and_fetch(device: RawFd, qid: u16, commit_id: u64) -> squeue::Entry128 {
    opcode::UringCmd80::new(types::Fd(device), FUSE_IO_URING_CMD_COMMIT_AND_FETCH)
        .cmd(command_area(qid, commit_id))
        .build()
}

/// A registration also names the entry's two buffers: `sqe->addr` points at two iovecs and
/// `sqe->len` says 2. The io-uring crate (0.7.16, the version locked) sets `addr` but has no
/// setter for `len` on `UringCmd80` and no other way to reach an entry's fields, so `len` is
/// written in place.
fn register_command(device: RawFd, qid: u16, iovecs: *const libc::iovec) -> squeue::Entry128 {
    let mut entry = opcode::UringCmd80::new(types::Fd(device), FUSE_IO_URING_CMD_REGISTER)
        .cmd(command_area(qid, 0))
        .addr(Some(iovecs as u64))
        .build();
    // `Entry128` is `#[repr(C)]`: the kernel's 64-byte `io_uring_sqe` (plain integers and unions
    // of them), then the 64 further bytes of the command. `len` is the u32 at offset 24 of
    // `io_uring_sqe` (include/uapi/linux/io_uring.h).
    const SQE_LEN_OFFSET: usize = 24;
    const _: () = assert!(size_of::<squeue::Entry128>() == 128);
    // SAFETY: offset 24 of the 128 bytes asserted above is in bounds of the exclusively borrowed entry; `write_unaligned` needs no alignment; every bit pattern of a u32 is a valid value.
    unsafe {
        std::ptr::from_mut(&mut entry)
            .cast::<u8>()
            .add(SQE_LEN_OFFSET)
            .cast::<u32>()
            .write_unaligned(2);
    }
    entry
}

/// Pins the calling thread to `cpu`; a CPU that is offline cannot be pinned to (and makes no
/// requests), so that is only logged.
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET stays in bounds for cpu < 1024 and sched_setaffinity reads the set we pass by reference.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu < libc::CPU_SETSIZE as usize {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::debug!(cpu, error = %io::Error::last_os_error(), "not pinned");
        }
    }
}

/// Serves queue `qid` until the connection ends. Sends on `registered` whether the queue's
/// entries were taken, once that is known; returns when the mount is gone.
pub(crate) fn serve_queue(
    device: RawFd,
    qid: u16,
    payload_len: usize,
    dispatcher: &Dispatcher,
    registered: Sender<io::Result<()>>,
) -> io::Result<()> {
    pin_to(qid as usize);
    let entries: Vec<RingEntry> = (0..QUEUE_DEPTH)
        .map(|_| RingEntry::new(payload_len))
        .collect();
    let iovecs: Vec<[libc::iovec; 2]> = entries
        .iter()
        .map(|entry| {
            [
                libc::iovec {
                    iov_base: entry.header.cast(),
                    iov_len: size_of::<fuse_uring_req_header>(),
                },
                libc::iovec {
                    iov_base: entry.payload.cast(),
                    iov_len: entry.payload_len,
                },
            ]
        })
        .collect();
    // Declared after the buffers, so dropped before them: the kernel may write into the buffers
    // as long as the ring is open.
    let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .build(QUEUE_DEPTH as u32);
    let mut ring = match ring {
        Ok(ring) => ring,
        Err(e) => {
            let _ = registered.send(Err(io::Error::new(e.kind(), format!("io_uring: {e}"))));
            return Ok(());
        }
    };
    for (index, iovec) in iovecs.iter().enumerate() {
        let sqe = register_command(device, qid, iovec.as_ptr()).user_data(index as u64);
        // SAFETY: the iovecs and the buffers they name live until the ring is dropped (they were declared before it, so they are dropped after it).
        unsafe { ring.submission().push(&sqe) }.expect("queue depth fits the ring");
    }
    // A refused registration answers at once; an accepted one only when a request comes.
    let settle = types::Timespec::from(REGISTER_SETTLE);
    let args = types::SubmitArgs::new().timespec(&settle);
    match ring.submitter().submit_with_args(1, &args) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
        Err(e) => {
            let _ = registered.send(Err(e));
            return Ok(());
        }
    }
    // Requests may already have come in: they are served first.
    let mut ready: Vec<(u64, i32)> = Vec::with_capacity(QUEUE_DEPTH);
    ready.extend(ring.completion().map(|cqe| (cqe.user_data(), cqe.result())));
    if let Some(&(_, refused)) = ready.iter().find(|(_, result)| *result < 0) {
        let _ = registered.send(Err(io::Error::from_raw_os_error(-refused)));
        return Ok(());
    }
    let _ = registered.send(Ok(()));
    let mut out = vec![0u8; payload_len];
    loop {
        for &(index, result) in &ready {
            if result < 0 {
                return match -result {
                    // The connection was aborted or unmounted, or the ring is being torn down.
                    libc::ENOTCONN | libc::ENODEV | libc::ECANCELED => Ok(()),
                    errno => Err(io::Error::from_raw_os_error(errno)),
                };
            }
            let entry = &entries[index as usize];
            let commit_id = answer(entry, dispatcher, &mut out);
            let sqe = commit_and_fetch(device, qid, commit_id).user_data(index);
            // SAFETY: the entry's buffers live until the ring is dropped.
            unsafe { ring.submission().push(&sqe) }.expect("one commit per entry fits");
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
        ready.clear();
        ready.extend(ring.completion().map(|cqe| (cqe.user_data(), cqe.result())));
    }
}

/// Serves the request in `entry` and writes the answer into it; returns its commit id.
fn answer(entry: &RingEntry, dispatcher: &Dispatcher, out: &mut [u8]) -> u64 {
    // SAFETY: the entry's completion was taken and it is not yet committed, so the kernel does not touch its buffers; nothing else refers to them.
    let (header, payload) = unsafe {
        (
            &mut *entry.header,
            std::slice::from_raw_parts_mut(entry.payload, entry.payload_len),
        )
    };
    let ring_in: fuse_uring_ent_in_out = header.ring_ent_in_out;
    let request = Request::from_ring(&header.in_out, &header.op_in, payload, ring_in.payload_sz);
    // The header area always holds an in-header; were it not so, request 0 would get EIO.
    let (unique, reply) = dispatcher
        .serve_received(request, out)
        .unwrap_or((0, Reply::Error(libc::EIO)));
    let (error, len) = match reply {
        // Nothing that goes through a ring is left unanswered; an empty answer is harmless.
        Reply::None => (0, 0),
        Reply::Error(errno) => (-errno, 0),
        Reply::Data(len) => (0, len),
    };
    payload[..len].copy_from_slice(&out[..len]);
    let out_header = fuse_out_header {
        len: (size_of::<fuse_out_header>() + len) as u32,
        error,
        unique,
    };
    let bytes = struct_bytes(&out_header);
    header.in_out.fill(0);
    header.in_out[..bytes.len()].copy_from_slice(bytes);
    header.ring_ent_in_out = fuse_uring_ent_in_out {
        payload_sz: len as u32,
        ..Default::default()
    };
    ring_in.commit_id
}
