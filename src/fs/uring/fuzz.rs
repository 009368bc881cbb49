//! Property tests feeding malformed messages through the whole decode path of the io_uring
//! transport: raw bytes → `Request::from_device` / `Request::from_ring` (the in-header and its
//! `len`) → `Dispatcher::serve_received` (opcode dispatch, argument decoding) → `Passthrough`
//! over a temporary directory, which is as far as a request's effects go. Random bytes, valid
//! messages cut short, and valid messages whose `len` lies. The ring's raw buffers (written by
//! the kernel, reached through pointers in `ring`) end where `from_ring` takes slices of them.
//!
//! The /dev/fuse transport through fuser (`fs::fuse`) is not tested here: there, the wire
//! format is decoded by fuser, not by us.

use super::abi::*;
use super::dispatch::{Dispatcher, Reply, Request};
use crate::passthrough::Passthrough;
use crate::{Event, EventSink};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::cell::RefCell;
use std::sync::Arc;

struct Ignore;
impl EventSink for Ignore {
    fn send(&self, _: Event) {}
}

const IN_HEADER: usize = size_of::<fuse_in_header>();
const OUT_SIZE: usize = 64 * 1024 + 4096;
const CASES: u32 = 1000;

/// The opcodes served, and a few that are not.
const OPCODES: &[u32] = &[
    FUSE_LOOKUP,
    FUSE_FORGET,
    FUSE_GETATTR,
    FUSE_SETATTR,
    FUSE_READLINK,
    FUSE_SYMLINK,
    FUSE_MKNOD,
    FUSE_MKDIR,
    FUSE_UNLINK,
    FUSE_RMDIR,
    FUSE_RENAME,
    FUSE_LINK,
    FUSE_OPEN,
    FUSE_READ,
    FUSE_WRITE,
    FUSE_STATFS,
    FUSE_RELEASE,
    FUSE_FSYNC,
    FUSE_SETXATTR,
    FUSE_GETXATTR,
    FUSE_LISTXATTR,
    FUSE_REMOVEXATTR,
    FUSE_FLUSH,
    FUSE_INIT,
    FUSE_OPENDIR,
    FUSE_READDIR,
    FUSE_RELEASEDIR,
    FUSE_FSYNCDIR,
    FUSE_ACCESS,
    FUSE_CREATE,
    FUSE_INTERRUPT,
    FUSE_DESTROY,
    FUSE_IOCTL,
    FUSE_BATCH_FORGET,
    FUSE_FALLOCATE,
    FUSE_READDIRPLUS,
    FUSE_RENAME2,
    FUSE_LSEEK,
    FUSE_COPY_FILE_RANGE,
    0,
    7,
    99,
    u32::MAX,
];

fn dispatcher(dir: &tempfile::TempDir) -> Dispatcher {
    let fs = Passthrough::new(dir.path(), Arc::new(Ignore), None, Arc::default()).unwrap();
    // Any uid is the owner's or allowed: requests get past the access check to decoding.
    Dispatcher::new(fs, true, None)
}

/// Bytes mostly from a small alphabet with NULs, so that names split and paths resolve.
fn body(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![Just(0u8), Just(b'a'), Just(b'b'), Just(b'/'), any::<u8>()],
        0..max,
    )
}

/// A well-formed request: an in-header whose `len` counts it, the op's fixed argument, a
/// payload (what the kernel sends, but with random argument values).
fn valid_message() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(OPCODES),
        prop_oneof![Just(1u64), 1u64..8, any::<u64>()],
        any::<u64>(),
        body(64),
    )
        .prop_flat_map(|(opcode, nodeid, unique, payload)| {
            let op_len = Dispatcher::op_in_size(opcode);
            prop::collection::vec(any::<u8>(), op_len).prop_map(move |op_in| {
                let header = fuse_in_header {
                    len: (IN_HEADER + op_in.len() + payload.len()) as u32,
                    opcode,
                    unique,
                    nodeid,
                    ..Default::default()
                };
                let mut bytes = struct_bytes(&header).to_vec();
                bytes.extend_from_slice(&op_in);
                bytes.extend_from_slice(&payload);
                bytes
            })
        })
}

/// What `serve_received` must answer for a /dev/fuse message, from its bytes alone, when its
/// `len` does not fit them: nothing without a header; EINVAL (nothing for forgets) when `len`
/// is below the header or past the bytes.
fn check_device(message: &[u8], answer: Option<(u64, Reply)>) -> Result<(), TestCaseError> {
    let Some(header) = read_struct::<fuse_in_header>(message) else {
        prop_assert!(answer.is_none());
        return Ok(());
    };
    let (unique, reply) = answer.expect("a message with a header is answered");
    prop_assert_eq!(unique, header.unique);
    let len = header.len as usize;
    if len < IN_HEADER || len > message.len() {
        let expected = match header.opcode {
            FUSE_FORGET | FUSE_BATCH_FORGET => Reply::None,
            _ => Reply::Error(libc::EINVAL),
        };
        prop_assert_eq!(reply, expected);
    } else if let Reply::Data(n) = reply {
        prop_assert!(n <= OUT_SIZE);
    }
    Ok(())
}

fn serve_device(dispatcher: &Dispatcher, message: &[u8], out: &mut [u8]) -> Option<(u64, Reply)> {
    dispatcher.serve_received(Request::from_device(message), out)
}

#[test]
fn random_bytes_on_dev_fuse_are_refused_or_served_never_read_out_of_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let dispatcher = dispatcher(&dir);
    let out = RefCell::new(vec![0u8; OUT_SIZE]);
    let mut runner = TestRunner::new(Config::with_cases(CASES));
    runner
        .run(&prop::collection::vec(any::<u8>(), 0..256), |message| {
            let answer = serve_device(&dispatcher, &message, &mut out.borrow_mut());
            check_device(&message, answer)
        })
        .unwrap();
}

#[test]
fn valid_messages_cut_short_or_with_a_wrong_len_are_einval() {
    let dir = tempfile::tempdir().unwrap();
    let dispatcher = dispatcher(&dir);
    let out = RefCell::new(vec![0u8; OUT_SIZE]);
    let mut runner = TestRunner::new(Config::with_cases(CASES));
    let cases = (
        valid_message(),
        any::<prop::sample::Index>(),
        any::<u32>(),
        0u8..4,
    );
    runner
        .run(&cases, |(mut message, cut, wrong_len, how)| {
            let whole = message.len();
            match how {
                // Cut short, `len` still the whole message's.
                0 => message.truncate(cut.index(whole)),
                // `len` says more than was received.
                1 => {
                    let len = whole as u32 + 1 + wrong_len % 4096;
                    message[..4].copy_from_slice(&len.to_ne_bytes());
                }
                // `len` below the header.
                2 => {
                    let len = wrong_len % IN_HEADER as u32;
                    message[..4].copy_from_slice(&len.to_ne_bytes());
                }
                // Any `len`.
                _ => message[..4].copy_from_slice(&wrong_len.to_ne_bytes()),
            }
            let answer = serve_device(&dispatcher, &message, &mut out.borrow_mut());
            check_device(&message, answer)?;
            if how == 0 && message.len() >= IN_HEADER && message.len() < whole {
                let opcode = read_struct::<fuse_in_header>(&message).unwrap().opcode;
                let expected = match opcode {
                    FUSE_FORGET | FUSE_BATCH_FORGET => Reply::None,
                    _ => Reply::Error(libc::EINVAL),
                };
                prop_assert_eq!(answer.map(|(_, reply)| reply), Some(expected));
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_len_that_cuts_the_ops_struct_short_is_einval() {
    let dir = tempfile::tempdir().unwrap();
    let dispatcher = dispatcher(&dir);
    let out = RefCell::new(vec![0u8; OUT_SIZE]);
    let mut runner = TestRunner::new(Config::with_cases(CASES));
    runner
        .run(
            &(valid_message(), any::<prop::sample::Index>()),
            |(mut message, cut)| {
                let header = read_struct::<fuse_in_header>(&message).unwrap();
                let op_len = Dispatcher::op_in_size(header.opcode);
                // Ops whose fixed argument is decoded (INIT's is `Dispatcher::init`'s; FORGET,
                // INTERRUPT and DESTROY are answered without reading it, OPENDIR ignores it).
                let decoded = !matches!(
                    header.opcode,
                    FUSE_INIT
                        | FUSE_FORGET
                        | FUSE_BATCH_FORGET
                        | FUSE_INTERRUPT
                        | FUSE_DESTROY
                        | FUSE_OPENDIR
                );
                if op_len == 0 || !decoded {
                    return Ok(());
                }
                let len = IN_HEADER + cut.index(op_len);
                message[..4].copy_from_slice(&(len as u32).to_ne_bytes());
                let answer = serve_device(&dispatcher, &message, &mut out.borrow_mut());
                prop_assert_eq!(answer, Some((header.unique, Reply::Error(libc::EINVAL))));
                Ok(())
            },
        )
        .unwrap();
}

#[test]
fn random_ring_entries_are_refused_or_served_never_read_out_of_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let dispatcher = dispatcher(&dir);
    let out = RefCell::new(vec![0u8; OUT_SIZE]);
    let mut runner = TestRunner::new(Config::with_cases(CASES));
    let cases = (
        valid_message(),
        prop::collection::vec(any::<u8>(), FUSE_URING_IN_OUT_HEADER_SZ),
        any::<u32>(),
        prop_oneof![
            Just(None),
            (0u32..512).prop_map(Some),
            any::<u32>().prop_map(Some)
        ],
        body(256),
        any::<bool>(),
    );
    runner
        .run(
            &cases,
            |(message, random_header, len, payload_sz, payload, keep_header)| {
                // The header area: the valid message's in-header, or random bytes; its `len`
                // kept or replaced.
                let mut in_out = [0u8; FUSE_URING_IN_OUT_HEADER_SZ];
                if keep_header {
                    in_out[..IN_HEADER].copy_from_slice(&message[..IN_HEADER]);
                } else {
                    in_out.copy_from_slice(&random_header);
                }
                if len % 2 == 0 {
                    in_out[..4].copy_from_slice(&len.to_ne_bytes());
                }
                let header = read_struct::<fuse_in_header>(&in_out).unwrap();
                let mut op_in = [0u8; FUSE_URING_OP_IN_OUT_SZ];
                let op_len = Dispatcher::op_in_size(header.opcode).min(message.len() - IN_HEADER);
                op_in[..op_len].copy_from_slice(&message[IN_HEADER..IN_HEADER + op_len]);
                let payload_sz = payload_sz.unwrap_or(payload.len() as u32);
                let request = Request::from_ring(&in_out, &op_in, &payload, payload_sz);
                let (unique, reply) = dispatcher
                    .serve_received(request, &mut out.borrow_mut())
                    .expect("the header area always holds an in-header");
                prop_assert_eq!(unique, header.unique);
                let fits = (payload_sz as usize) <= payload.len()
                    && (header.len as usize)
                        .checked_sub(IN_HEADER + payload_sz as usize)
                        .is_some_and(|op_len| op_len <= FUSE_URING_OP_IN_OUT_SZ);
                if !fits {
                    let expected = match header.opcode {
                        FUSE_FORGET | FUSE_BATCH_FORGET => Reply::None,
                        _ => Reply::Error(libc::EINVAL),
                    };
                    prop_assert_eq!(reply, expected);
                } else if let Reply::Data(n) = reply {
                    prop_assert!(n <= OUT_SIZE);
                }
                Ok(())
            },
        )
        .unwrap();
}
