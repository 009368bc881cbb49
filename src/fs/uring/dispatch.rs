//! Serves FUSE requests decoded from the kernel's wire format on `Passthrough`, answering as the
//! fuser adapter does (its rules live in `fs::kernel`): the io_uring transport hands over each
//! request's header, fixed argument struct and payload, and sends the out-arguments written here.

use super::abi::*;
use crate::backing::FuseDevice;
use crate::kernel;
use crate::passthrough::{AttrChanges, Caller, Opened, Passthrough, TTL};
use crate::sys::{self, TimeSpec, XattrValue};
use fuser::{Errno, FileAttr, FileType};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::UNIX_EPOCH;
use tracing::debug;

/// What to send for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Nothing: the kernel expects no answer (forgets, interrupts).
    None,
    /// An error (a positive errno) with no out-arguments.
    Error(i32),
    /// Success, with this many bytes of out-arguments written to `out`.
    Data(usize),
}

/// The answer to INIT and what it agreed.
#[derive(Debug)]
pub(crate) struct InitOutcome {
    pub reply: fuse_init_out,
    /// Both sides agreed to FUSE_OVER_IO_URING.
    pub io_uring: bool,
    /// The smallest payload buffer the kernel takes for a ring entry: max(8 KiB, max_write,
    /// max_pages × page size); it refuses REGISTER with a smaller one.
    pub ring_payload: usize,
}

/// A request's parts, checked against its in-header's `len`.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    pub header: fuse_in_header,
    /// The op's fixed argument struct (what `decode` reads; EINVAL when it is too short).
    pub op_in: &'a [u8],
    /// What follows it: names, data.
    pub payload: &'a [u8],
}

/// Why a request's bytes cannot be served.
#[derive(Debug)]
pub(crate) enum Malformed {
    /// Fewer bytes than an in-header: there is no request id to answer.
    NoHeader,
    /// The header's `len` is smaller than the header or larger than the bytes received.
    Length(fuse_in_header),
}

const IN_HEADER: usize = size_of::<fuse_in_header>();

impl<'a> Request<'a> {
    /// A message as read from /dev/fuse: the in-header, the op's fixed argument, the rest;
    /// `len` covers them all (bytes past it are ignored).
    pub fn from_device(message: &'a [u8]) -> Result<Request<'a>, Malformed> {
        let header: fuse_in_header = read_struct(message).ok_or(Malformed::NoHeader)?;
        let body = (header.len as usize)
            .checked_sub(IN_HEADER)
            .and_then(|body| message.get(IN_HEADER..IN_HEADER + body))
            .ok_or(Malformed::Length(header))?;
        let (op_in, payload) = body.split_at(Dispatcher::op_in_size(header.opcode).min(body.len()));
        Ok(Request {
            header,
            op_in,
            payload,
        })
    }

    /// A ring entry's request: the in-header at the start of `in_out`, the op's fixed argument
    /// in the `op_in` area, and `payload_sz` bytes of `payload` (as the entry says). The
    /// kernel's `len` counts all three, so what is left of it after the header and the payload
    /// is the length of the fixed argument, which must fit in the `op_in` area.
    pub fn from_ring(
        in_out: &[u8],
        op_in: &'a [u8],
        payload: &'a [u8],
        payload_sz: u32,
    ) -> Result<Request<'a>, Malformed> {
        let header: fuse_in_header = read_struct(in_out).ok_or(Malformed::NoHeader)?;
        let malformed = || Malformed::Length(header);
        let payload = payload.get(..payload_sz as usize).ok_or_else(malformed)?;
        let op_len = (header.len as usize)
            .checked_sub(IN_HEADER + payload.len())
            .ok_or_else(malformed)?;
        let op_in = op_in.get(..op_len).ok_or_else(malformed)?;
        Ok(Request {
            header,
            op_in,
            payload,
        })
    }
}

pub(crate) struct Dispatcher {
    fs: Passthrough,
    allow_other: bool,
    /// Where backing files are registered, when kernel passthrough is wanted.
    kernel_passthrough: Option<Arc<FuseDevice>>,
}

/// The oldest protocol served: flags2 (passthrough, io_uring) and the argument layouts decoded
/// here are those of 7.36 and later.
const MIN_MINOR_VERSION: u32 = 36;
/// fuser's defaults, which the fuser adapter keeps.
const MAX_BACKGROUND: u16 = 16;
const CONGESTION_THRESHOLD: u16 = MAX_BACKGROUND * 3 / 4;
const TIME_GRAN_NS: u32 = 1;
/// The part of fuse_init_in every protocol version sends (major, minor, max_readahead, flags).
const INIT_IN_MIN_SIZE: usize = 16;

impl Dispatcher {
    pub fn new(
        fs: Passthrough,
        allow_other: bool,
        kernel_passthrough: Option<Arc<FuseDevice>>,
    ) -> Dispatcher {
        Dispatcher {
            fs,
            allow_other,
            kernel_passthrough,
        }
    }

    /// The filesystem both adapters serve.
    pub fn fs(&self) -> &Passthrough {
        &self.fs
    }

    /// INIT: the capabilities and limits the fuser adapter negotiates, plus FUSE_OVER_IO_URING
    /// when `want_io_uring` and the kernel offers it. Err(errno) for a protocol not served.
    pub fn init(&self, op_in: &[u8], want_io_uring: bool) -> Result<InitOutcome, i32> {
        if op_in.len() < INIT_IN_MIN_SIZE {
            return Err(libc::EINVAL);
        }
        // Older kernels send a shorter struct; what they leave out reads as zero.
        let mut arg_bytes = [0u8; size_of::<fuse_init_in>()];
        let known = op_in.len().min(arg_bytes.len());
        arg_bytes[..known].copy_from_slice(&op_in[..known]);
        let arg: fuse_init_in = read_struct(&arg_bytes).ok_or(libc::EINVAL)?;
        if arg.major != FUSE_KERNEL_VERSION || arg.minor < MIN_MINOR_VERSION {
            return Err(libc::EPROTO);
        }
        let mut offered = u64::from(arg.flags);
        if offered & FUSE_INIT_EXT != 0 {
            offered |= u64::from(arg.flags2) << 32;
        }
        let mut wanted = kernel::optional_capabilities(self.allow_other).bits() | FUSE_INIT_EXT;
        let passthrough = self
            .kernel_passthrough
            .clone()
            .filter(|_| offered & FUSE_PASSTHROUGH != 0);
        if passthrough.is_some() {
            wanted |= FUSE_PASSTHROUGH;
        }
        if want_io_uring {
            wanted |= FUSE_OVER_IO_URING;
        }
        let agreed = offered & wanted;
        let max_stack_depth = if passthrough.is_some() {
            kernel::PASSTHROUGH_MAX_STACK_DEPTH
        } else {
            0
        };
        debug!(passthrough = passthrough.is_some(), agreed, "init");
        self.fs.set_kernel_passthrough(passthrough);
        let max_write = kernel::MAX_WRITE;
        let page = page_size();
        let max_pages = max_pages(max_write.max(arg.max_readahead), page);
        let reply = fuse_init_out {
            major: FUSE_KERNEL_VERSION,
            minor: FUSE_KERNEL_MINOR_VERSION,
            max_readahead: arg.max_readahead,
            flags: agreed as u32,
            flags2: (agreed >> 32) as u32,
            max_background: MAX_BACKGROUND,
            congestion_threshold: CONGESTION_THRESHOLD,
            max_write,
            time_gran: TIME_GRAN_NS,
            max_pages,
            max_stack_depth,
            ..Default::default()
        };
        Ok(InitOutcome {
            reply,
            io_uring: agreed & FUSE_OVER_IO_URING != 0,
            ring_payload: (max_write as usize)
                .max(usize::from(max_pages) * page as usize)
                .max(FUSE_MIN_READ_BUFFER),
        })
    }

    /// Bytes of `opcode`'s fixed argument struct: what the ring puts in `op_in`, and on
    /// /dev/fuse the bytes right after the in-header (the rest is the payload). 0 for ops whose
    /// first argument is a name or nothing.
    pub fn op_in_size(opcode: u32) -> usize {
        match opcode {
            FUSE_FORGET => size_of::<fuse_forget_in>(),
            FUSE_GETATTR => size_of::<fuse_getattr_in>(),
            FUSE_SETATTR => size_of::<fuse_setattr_in>(),
            FUSE_MKNOD => size_of::<fuse_mknod_in>(),
            FUSE_MKDIR => size_of::<fuse_mkdir_in>(),
            FUSE_RENAME => size_of::<fuse_rename_in>(),
            FUSE_LINK => size_of::<fuse_link_in>(),
            FUSE_OPEN | FUSE_OPENDIR => size_of::<fuse_open_in>(),
            FUSE_READ | FUSE_READDIR | FUSE_READDIRPLUS => size_of::<fuse_read_in>(),
            FUSE_WRITE => size_of::<fuse_write_in>(),
            FUSE_RELEASE | FUSE_RELEASEDIR => size_of::<fuse_release_in>(),
            FUSE_FSYNC | FUSE_FSYNCDIR => size_of::<fuse_fsync_in>(),
            FUSE_SETXATTR => size_of::<fuse_setxattr_in>(),
            FUSE_GETXATTR | FUSE_LISTXATTR => size_of::<fuse_getxattr_in>(),
            FUSE_FLUSH => size_of::<fuse_flush_in>(),
            FUSE_INIT => size_of::<fuse_init_in>(),
            FUSE_ACCESS => size_of::<fuse_access_in>(),
            FUSE_CREATE => size_of::<fuse_create_in>(),
            FUSE_INTERRUPT => size_of::<fuse_interrupt_in>(),
            FUSE_IOCTL => size_of::<fuse_ioctl_in>(),
            FUSE_BATCH_FORGET => size_of::<fuse_batch_forget_in>(),
            FUSE_FALLOCATE => size_of::<fuse_fallocate_in>(),
            FUSE_RENAME2 => size_of::<fuse_rename2_in>(),
            FUSE_LSEEK => size_of::<fuse_lseek_in>(),
            FUSE_COPY_FILE_RANGE => size_of::<fuse_copy_file_range_in>(),
            _ => 0,
        }
    }

    /// Serves one request (any opcode but INIT). `op_in` may be longer than the op's struct.
    /// Writes the reply's out-arguments (not the out-header) to `out`.
    pub fn dispatch(
        &self,
        header: &fuse_in_header,
        op_in: &[u8],
        payload: &[u8],
        out: &mut [u8],
    ) -> Reply {
        // One span per request, as the fuser adapter opens (`fs::fuse`); with debug logging
        // off it costs a check of the level.
        let _span = tracing::debug_span!(
            "fuse_request",
            opcode = opcode_name(header.opcode),
            unique = header.unique,
            ino = header.nodeid,
            pid = header.pid
        )
        .entered();
        debug!("request");
        match header.opcode {
            FUSE_FORGET => {
                if let Some(arg) = read_struct::<fuse_forget_in>(op_in) {
                    self.fs.forget(header.nodeid, arg.nlookup);
                }
                return Reply::None;
            }
            FUSE_BATCH_FORGET => {
                self.batch_forget(op_in, payload);
                return Reply::None;
            }
            // Requests are served synchronously and cannot be interrupted: ENOSYS tells the
            // kernel to stop sending interrupts (as the fuser adapter answers).
            FUSE_INTERRUPT => return Reply::Error(libc::ENOSYS),
            FUSE_DESTROY => return Reply::Data(0),
            _ => {}
        }
        if !self.allowed(header) {
            return Reply::Error(libc::EACCES);
        }
        let mut reply = Out { buf: out, len: 0 };
        match self.serve(header, op_in, payload, &mut reply) {
            Ok(()) => Reply::Data(reply.len),
            Err(e) => Reply::Error(e.code()),
        }
    }

    /// Serves a request as received (checked by `Request::from_device` or `from_ring`):
    /// the request id to answer and the answer. A request whose length is wrong is EINVAL
    /// (nothing for the forgets, which are never answered); one without a header cannot be
    /// answered and is `None`.
    pub fn serve_received(
        &self,
        request: Result<Request<'_>, Malformed>,
        out: &mut [u8],
    ) -> Option<(u64, Reply)> {
        match request {
            Ok(request) => Some((
                request.header.unique,
                self.dispatch(&request.header, request.op_in, request.payload, out),
            )),
            Err(Malformed::NoHeader) => None,
            Err(Malformed::Length(header)) => {
                debug!(
                    opcode = header.opcode,
                    unique = header.unique,
                    len = header.len,
                    "request length does not match the bytes received"
                );
                let reply = match header.opcode {
                    FUSE_FORGET | FUSE_BATCH_FORGET => Reply::None,
                    _ => Reply::Error(libc::EINVAL),
                };
                Some((header.unique, reply))
            }
        }
    }

    /// On a private mount, requests of other users are refused, except those the kernel may
    /// send on behalf of no particular user (as fuser's `SessionACL::Owner`, which the fuser
    /// adapter runs under).
    fn allowed(&self, header: &fuse_in_header) -> bool {
        self.allow_other
            || header.uid == self.fs.owner()
            || matches!(
                header.opcode,
                FUSE_READ
                    | FUSE_WRITE
                    | FUSE_FSYNC
                    | FUSE_FSYNCDIR
                    | FUSE_RELEASE
                    | FUSE_RELEASEDIR
                    | FUSE_READDIR
                    | FUSE_READDIRPLUS
            )
    }

    fn batch_forget(&self, op_in: &[u8], payload: &[u8]) {
        let Some(arg) = read_struct::<fuse_batch_forget_in>(op_in) else {
            return;
        };
        let entries = payload
            .chunks_exact(size_of::<fuse_forget_one>())
            .take(arg.count as usize);
        for entry in entries.filter_map(read_struct::<fuse_forget_one>) {
            self.fs.forget(entry.nodeid, entry.nlookup);
        }
    }

    fn serve(
        &self,
        header: &fuse_in_header,
        op_in: &[u8],
        payload: &[u8],
        out: &mut Out<'_>,
    ) -> Result<(), Errno> {
        let ino = header.nodeid;
        let caller = Caller {
            uid: header.uid,
            gid: header.gid,
        };
        let fs = &self.fs;
        match header.opcode {
            FUSE_LOOKUP => {
                let (name, _) = split_name(payload)?;
                out.entry(&kernel::lookup_entry(fs.lookup(ino, name))?)
            }
            FUSE_GETATTR => {
                let arg: fuse_getattr_in = decode(op_in)?;
                let fh = (arg.getattr_flags & FUSE_GETATTR_FH != 0).then_some(arg.fh);
                out.attr(&fs.getattr(ino, fh)?)
            }
            FUSE_SETATTR => {
                let arg: fuse_setattr_in = decode(op_in)?;
                let fh = (arg.valid & FATTR_FH != 0).then_some(arg.fh);
                out.attr(&fs.setattr(ino, fh, attr_changes(&arg))?)
            }
            FUSE_READLINK => out.push(&fs.readlink(ino)?),
            FUSE_MKNOD => {
                let arg: fuse_mknod_in = decode(op_in)?;
                let (name, _) = split_name(payload)?;
                out.entry(&fs.mknod(caller, ino, name, arg.mode, arg.rdev)?)
            }
            FUSE_MKDIR => {
                let arg: fuse_mkdir_in = decode(op_in)?;
                let (name, _) = split_name(payload)?;
                out.entry(&fs.mkdir(caller, ino, name, arg.mode)?)
            }
            FUSE_SYMLINK => {
                let (name, rest) = split_name(payload)?;
                let (target, _) = split_name(rest)?;
                out.entry(&fs.symlink(caller, ino, name, Path::new(target))?)
            }
            FUSE_UNLINK => fs.unlink(ino, split_name(payload)?.0),
            FUSE_RMDIR => fs.rmdir(ino, split_name(payload)?.0),
            FUSE_RENAME => {
                let arg: fuse_rename_in = decode(op_in)?;
                let (name, rest) = split_name(payload)?;
                let (new_name, _) = split_name(rest)?;
                fs.rename(ino, name, arg.newdir, new_name, 0)
            }
            FUSE_RENAME2 => {
                let arg: fuse_rename2_in = decode(op_in)?;
                let (name, rest) = split_name(payload)?;
                let (new_name, _) = split_name(rest)?;
                fs.rename(ino, name, arg.newdir, new_name, arg.flags)
            }
            FUSE_LINK => {
                let arg: fuse_link_in = decode(op_in)?;
                let (name, _) = split_name(payload)?;
                out.entry(&fs.link(arg.oldnodeid, ino, name)?)
            }
            FUSE_OPEN => {
                let arg: fuse_open_in = decode(op_in)?;
                out.put(&open_out(fs.open(ino, arg.flags as i32)?))
            }
            FUSE_CREATE => {
                let arg: fuse_create_in = decode(op_in)?;
                let (name, _) = split_name(payload)?;
                let (attr, opened) = fs.create(caller, ino, name, arg.mode, arg.flags as i32)?;
                out.entry(&attr)?;
                out.put(&open_out(opened))
            }
            FUSE_READ => {
                let arg: fuse_read_in = decode(op_in)?;
                out.push(&fs.read(arg.fh, arg.offset, arg.size)?)
            }
            FUSE_WRITE => {
                let arg: fuse_write_in = decode(op_in)?;
                let data = payload.get(..arg.size as usize).ok_or(Errno::EINVAL)?;
                let size = fs.write(arg.fh, arg.offset, data)?;
                out.put(&fuse_write_out { size, padding: 0 })
            }
            FUSE_FLUSH => fs.flush(decode::<fuse_flush_in>(op_in)?.fh),
            FUSE_RELEASE => fs.release(decode::<fuse_release_in>(op_in)?.fh),
            FUSE_FSYNC => {
                let arg: fuse_fsync_in = decode(op_in)?;
                fs.fsync(arg.fh, arg.fsync_flags & FUSE_FSYNC_FDATASYNC != 0)
            }
            FUSE_OPENDIR => {
                // The flags do not matter: a directory is always opened for reading.
                let fh = fs.opendir(ino)?;
                out.put(&fuse_open_out {
                    fh,
                    ..Default::default()
                })
            }
            FUSE_READDIR => self.readdir(decode(op_in)?, out),
            FUSE_READDIRPLUS => self.readdirplus(decode(op_in)?, out),
            FUSE_RELEASEDIR => fs.releasedir(decode::<fuse_release_in>(op_in)?.fh),
            FUSE_FSYNCDIR => {
                let arg: fuse_fsync_in = decode(op_in)?;
                fs.fsyncdir(arg.fh, arg.fsync_flags & FUSE_FSYNC_FDATASYNC != 0)
            }
            FUSE_STATFS => {
                let st = fs.statfs(ino)?;
                out.put(&fuse_statfs_out {
                    st: fuse_kstatfs {
                        blocks: st.f_blocks,
                        bfree: st.f_bfree,
                        bavail: st.f_bavail,
                        files: st.f_files,
                        ffree: st.f_ffree,
                        bsize: st.f_bsize as u32,
                        namelen: st.f_namelen as u32,
                        frsize: st.f_frsize as u32,
                        ..Default::default()
                    },
                })
            }
            FUSE_SETXATTR => {
                let arg: fuse_setxattr_in = decode(op_in)?;
                let (name, rest) = split_name(payload)?;
                let value = rest.get(..arg.size as usize).ok_or(Errno::EINVAL)?;
                fs.setxattr(caller, ino, name, value, arg.flags as i32)
            }
            FUSE_GETXATTR => {
                let arg: fuse_getxattr_in = decode(op_in)?;
                let (name, _) = split_name(payload)?;
                out.xattr(fs.getxattr(caller, ino, name, arg.size)?)
            }
            FUSE_LISTXATTR => {
                let arg: fuse_getxattr_in = decode(op_in)?;
                out.xattr(fs.listxattr(ino, arg.size)?)
            }
            FUSE_REMOVEXATTR => fs.removexattr(ino, split_name(payload)?.0),
            FUSE_ACCESS => fs.access(ino, decode::<fuse_access_in>(op_in)?.mask as i32),
            FUSE_FALLOCATE => {
                let arg: fuse_fallocate_in = decode(op_in)?;
                fs.fallocate(arg.fh, arg.offset, arg.length, arg.mode as i32)
            }
            FUSE_LSEEK => {
                let arg: fuse_lseek_in = decode(op_in)?;
                let offset = fs.lseek(arg.fh, arg.offset as i64, arg.whence as i32)?;
                out.put(&fuse_lseek_out {
                    offset: offset as u64,
                })
            }
            FUSE_COPY_FILE_RANGE => {
                let arg: fuse_copy_file_range_in = decode(op_in)?;
                let size =
                    fs.copy_file_range(arg.fh_in, arg.off_in, arg.fh_out, arg.off_out, arg.len)?;
                out.put(&fuse_write_out { size, padding: 0 })
            }
            FUSE_IOCTL => {
                // As the fuser adapter: no ioctl is passed through, and the answer to the usual
                // probes (isatty's TCGETS) is "not a terminal". fuser refuses unrestricted
                // ioctls (CUSE only) before asking.
                let arg: fuse_ioctl_in = decode(op_in)?;
                if arg.flags & FUSE_IOCTL_UNRESTRICTED != 0 {
                    Err(Errno::ENOSYS)
                } else {
                    Err(Errno::ENOTTY)
                }
            }
            // INIT is answered by `init`, once, before any other request.
            FUSE_INIT => Err(Errno::EIO),
            _ => Err(Errno::ENOSYS),
        }
    }

    /// Entries from `arg.offset` while they fit in the requested size.
    fn readdir(&self, arg: fuse_read_in, out: &mut Out<'_>) -> Result<(), Errno> {
        let limit = out.limit(arg.size);
        self.fs
            .readdir(arg.fh, arg.offset, |ino, next, kind, name| {
                let dirent = fuse_dirent {
                    ino,
                    off: next,
                    namelen: name.len() as u32,
                    r#type: file_type_bits(kind) >> 12,
                };
                out.push_dirent(limit, &[struct_bytes(&dirent), name.as_bytes()])
            })
    }

    fn readdirplus(&self, arg: fuse_read_in, out: &mut Out<'_>) -> Result<(), Errno> {
        let limit = out.limit(arg.size);
        self.fs.readdirplus(arg.fh, arg.offset, |name, next, attr| {
            let entry = fuse_direntplus {
                entry_out: entry_out(attr),
                dirent: fuse_dirent {
                    ino: attr.ino.0,
                    off: next,
                    namelen: name.len() as u32,
                    r#type: file_type_bits(attr.kind) >> 12,
                },
            };
            out.push_dirent(limit, &[struct_bytes(&entry), name.as_bytes()])
        })
    }
}

/// The out-arguments of a reply, written into the transport's buffer.
struct Out<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Out<'_> {
    /// Appends `bytes`; EIO when the buffer cannot hold them.
    fn push(&mut self, bytes: &[u8]) -> Result<(), Errno> {
        let end = self
            .len
            .checked_add(bytes.len())
            .filter(|&end| end <= self.buf.len())
            .ok_or(Errno::EIO)?;
        self.buf[self.len..end].copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }

    fn put<T: zerocopy::IntoBytes + zerocopy::Immutable>(
        &mut self,
        value: &T,
    ) -> Result<(), Errno> {
        self.push(struct_bytes(value))
    }

    fn entry(&mut self, attr: &FileAttr) -> Result<(), Errno> {
        self.put(&entry_out(attr))
    }

    fn attr(&mut self, attr: &FileAttr) -> Result<(), Errno> {
        self.put(&fuse_attr_out {
            attr_valid: TTL.as_secs(),
            attr_valid_nsec: TTL.subsec_nanos(),
            dummy: 0,
            attr: fuse_attr_of(attr),
        })
    }

    /// The size when asked with size 0, else the bytes; a value larger than the buffer is
    /// ERANGE, as the caller's buffer would have been too small.
    fn xattr(&mut self, value: XattrValue) -> Result<(), Errno> {
        match value {
            XattrValue::Size(size) => self.put(&fuse_getxattr_out { size, padding: 0 }),
            XattrValue::Data(data) => self.push(&data).map_err(|_| Errno::ERANGE),
        }
    }

    /// How far a directory listing of at most `size` bytes may fill the buffer.
    fn limit(&self, size: u32) -> usize {
        (size as usize).min(self.buf.len())
    }

    /// Appends one directory entry (its parts back to back), zero-padded to the next multiple
    /// of 8 as the kernel walks them; false, writing nothing, when it would pass `limit`.
    fn push_dirent(&mut self, limit: usize, parts: &[&[u8]]) -> bool {
        let len: usize = parts.iter().map(|part| part.len()).sum();
        let end = self.len + len.next_multiple_of(8);
        if end > limit {
            return false;
        }
        for part in parts {
            self.buf[self.len..self.len + part.len()].copy_from_slice(part);
            self.len += part.len();
        }
        self.buf[self.len..end].fill(0);
        self.len = end;
        true
    }
}

/// The op's fixed argument struct; EINVAL when `op_in` is too short to hold it.
fn decode<T: zerocopy::FromBytes>(op_in: &[u8]) -> Result<T, Errno> {
    read_struct(op_in).ok_or(Errno::EINVAL)
}

/// The NUL-terminated name at the start of `bytes`, and what follows it.
fn split_name(bytes: &[u8]) -> Result<(&OsStr, &[u8]), Errno> {
    let end = bytes.iter().position(|&b| b == 0).ok_or(Errno::EINVAL)?;
    Ok((OsStr::from_bytes(&bytes[..end]), &bytes[end + 1..]))
}

fn attr_changes(arg: &fuse_setattr_in) -> AttrChanges {
    let set = |bit: u32| arg.valid & bit != 0;
    let time = |bit: u32, now_bit: u32, secs: u64, nsecs: u32| {
        set(bit).then(|| {
            if set(now_bit) {
                TimeSpec::Now
            } else {
                TimeSpec::At(sys::system_time(secs as i64, i64::from(nsecs)))
            }
        })
    };
    AttrChanges {
        mode: set(FATTR_MODE).then_some(arg.mode),
        uid: set(FATTR_UID).then_some(arg.uid),
        gid: set(FATTR_GID).then_some(arg.gid),
        size: set(FATTR_SIZE).then_some(arg.size),
        atime: time(FATTR_ATIME, FATTR_ATIME_NOW, arg.atime, arg.atimensec),
        mtime: time(FATTR_MTIME, FATTR_MTIME_NOW, arg.mtime, arg.mtimensec),
    }
}

/// The open reply; with a kernel passthrough registration the kernel does the file's I/O
/// itself. The registration stays alive with the handle, which holds it too.
fn open_out(opened: Opened) -> fuse_open_out {
    match opened.backing_id {
        Some(id) => fuse_open_out {
            fh: opened.fh,
            open_flags: kernel::PASSTHROUGH_OPEN_FLAGS.bits() | FOPEN_PASSTHROUGH,
            backing_id: id.raw() as i32,
        },
        None => fuse_open_out {
            fh: opened.fh,
            open_flags: kernel::DAEMON_IO_OPEN_FLAGS.bits(),
            backing_id: 0,
        },
    }
}

fn entry_out(attr: &FileAttr) -> fuse_entry_out {
    fuse_entry_out {
        nodeid: attr.ino.0,
        generation: 0,
        entry_valid: TTL.as_secs(),
        attr_valid: TTL.as_secs(),
        entry_valid_nsec: TTL.subsec_nanos(),
        attr_valid_nsec: TTL.subsec_nanos(),
        attr: fuse_attr_of(attr),
    }
}

fn fuse_attr_of(attr: &FileAttr) -> fuse_attr {
    let (atime, atimensec) = time_parts(attr.atime);
    let (mtime, mtimensec) = time_parts(attr.mtime);
    let (ctime, ctimensec) = time_parts(attr.ctime);
    fuse_attr {
        ino: attr.ino.0,
        size: attr.size,
        blocks: attr.blocks,
        atime,
        mtime,
        ctime,
        atimensec,
        mtimensec,
        ctimensec,
        mode: file_type_bits(attr.kind) | u32::from(attr.perm),
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: attr.rdev,
        blksize: attr.blksize,
        flags: 0,
    }
}

/// Seconds (two's complement before 1970, as the kernel's s64) and nanoseconds.
fn time_parts(time: std::time::SystemTime) -> (u64, u32) {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => (after.as_secs(), after.subsec_nanos()),
        Err(before) => {
            let before = before.duration();
            let secs = before.as_secs() as i64;
            match before.subsec_nanos() {
                0 => ((-secs) as u64, 0),
                nanos => ((-secs - 1) as u64, 1_000_000_000 - nanos),
            }
        }
    }
}

/// The S_IFMT bits of `kind`.
fn file_type_bits(kind: FileType) -> u32 {
    match kind {
        FileType::NamedPipe => libc::S_IFIFO,
        FileType::CharDevice => libc::S_IFCHR,
        FileType::BlockDevice => libc::S_IFBLK,
        FileType::Directory => libc::S_IFDIR,
        FileType::RegularFile => libc::S_IFREG,
        FileType::Symlink => libc::S_IFLNK,
        FileType::Socket => libc::S_IFSOCK,
    }
}

/// The kernel's smallest read buffer for a request (`FUSE_MIN_READ_BUFFER`).
const FUSE_MIN_READ_BUFFER: usize = 8192;

fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u32::try_from(page).unwrap_or(4096).max(1)
}

/// Pages of `page` bytes a request may span, enough for `largest` bytes (what fuser answers).
fn max_pages(largest: u32, page: u32) -> u16 {
    u16::try_from(largest.saturating_sub(1) / page + 1).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Event, EventSink};
    use fuser::InitFlags;

    struct Ignore;
    impl EventSink for Ignore {
        fn send(&self, _: Event) {}
    }

    const ROOT: u64 = 1;
    const OUT_SIZE: usize = 64 * 1024 + 4096;

    struct Fixture {
        dir: tempfile::TempDir,
        dispatcher: Dispatcher,
    }

    fn fixture(allow_other: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let fs = Passthrough::new(dir.path(), Arc::new(Ignore), None, Arc::default()).unwrap();
        Fixture {
            dispatcher: Dispatcher::new(fs, allow_other, None),
            dir,
        }
    }

    fn owner() -> u32 {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() }
    }

    fn name(name: &str) -> Vec<u8> {
        let mut bytes = name.as_bytes().to_vec();
        bytes.push(0);
        bytes
    }

    fn names(first: &str, second: &str) -> Vec<u8> {
        let mut bytes = name(first);
        bytes.extend(name(second));
        bytes
    }

    impl Fixture {
        /// One request as the owner; the reply's out-arguments on success.
        fn call(
            &self,
            opcode: u32,
            nodeid: u64,
            op_in: &[u8],
            payload: &[u8],
        ) -> Result<Vec<u8>, i32> {
            self.call_as(owner(), opcode, nodeid, op_in, payload)
        }

        fn call_as(
            &self,
            uid: u32,
            opcode: u32,
            nodeid: u64,
            op_in: &[u8],
            payload: &[u8],
        ) -> Result<Vec<u8>, i32> {
            let header = fuse_in_header {
                len: (size_of::<fuse_in_header>() + op_in.len() + payload.len()) as u32,
                opcode,
                unique: 2,
                nodeid,
                uid,
                ..Default::default()
            };
            let mut out = vec![0u8; OUT_SIZE];
            match self.dispatcher.dispatch(&header, op_in, payload, &mut out) {
                Reply::Data(len) => Ok(out[..len].to_vec()),
                Reply::Error(errno) => Err(errno),
                Reply::None => panic!("no reply to opcode {opcode}"),
            }
        }

        fn lookup(&self, parent: u64, entry: &str) -> Result<fuse_entry_out, i32> {
            self.call(FUSE_LOOKUP, parent, &[], &name(entry))
                .map(|out| read_struct(&out).unwrap())
        }

        fn create(&self, entry: &str) -> (fuse_entry_out, fuse_open_out) {
            let arg = fuse_create_in {
                flags: libc::O_RDWR as u32,
                mode: libc::S_IFREG | 0o640,
                ..Default::default()
            };
            let out = self
                .call(FUSE_CREATE, ROOT, struct_bytes(&arg), &name(entry))
                .unwrap();
            assert_eq!(out.len(), 128 + 16);
            (
                read_struct(&out).unwrap(),
                read_struct(&out[128..]).unwrap(),
            )
        }

        fn opendir(&self, ino: u64) -> u64 {
            let out = self
                .call(
                    FUSE_OPENDIR,
                    ino,
                    struct_bytes(&fuse_open_in::default()),
                    &[],
                )
                .unwrap();
            read_struct::<fuse_open_out>(&out).unwrap().fh
        }

        /// The (name, ino, next offset, type) of each entry of a readdir(plus) reply.
        fn list(&self, opcode: u32, fh: u64, size: u32) -> Vec<(String, u64, u64, u32)> {
            let arg = fuse_read_in {
                fh,
                size,
                ..Default::default()
            };
            let out = self.call(opcode, ROOT, struct_bytes(&arg), &[]).unwrap();
            assert!(out.len() <= size as usize);
            let skip = if opcode == FUSE_READDIRPLUS { 128 } else { 0 };
            let mut entries = Vec::new();
            let mut at = 0;
            while at < out.len() {
                let dirent: fuse_dirent = read_struct(&out[at + skip..]).unwrap();
                let start = at + skip + size_of::<fuse_dirent>();
                let entry_name = &out[start..start + dirent.namelen as usize];
                if opcode == FUSE_READDIRPLUS {
                    let entry: fuse_entry_out = read_struct(&out[at..]).unwrap();
                    assert_eq!(entry.nodeid, dirent.ino);
                }
                entries.push((
                    String::from_utf8(entry_name.to_vec()).unwrap(),
                    dirent.ino,
                    dirent.off,
                    dirent.r#type,
                ));
                at = (start + dirent.namelen as usize).next_multiple_of(8);
            }
            assert_eq!(at, out.len());
            entries
        }
    }

    fn init_in(minor: u32, flags: u64) -> fuse_init_in {
        fuse_init_in {
            major: 7,
            minor,
            max_readahead: 128 * 1024,
            flags: flags as u32,
            flags2: (flags >> 32) as u32,
            ..Default::default()
        }
    }

    #[test]
    fn init_agrees_on_what_both_offer() {
        let f = fixture(false);
        let offered = u64::MAX;
        let outcome = f
            .dispatcher
            .init(struct_bytes(&init_in(45, offered)), true)
            .unwrap();
        let reply = outcome.reply;
        let agreed = u64::from(reply.flags) | u64::from(reply.flags2) << 32;
        let expected =
            kernel::optional_capabilities(false).bits() | FUSE_INIT_EXT | FUSE_OVER_IO_URING;
        assert_eq!(agreed, expected);
        assert!(agreed & InitFlags::FUSE_HANDLE_KILLPRIV_V2.bits() != 0);
        // No device to register on: no passthrough, no stacking.
        assert_eq!(agreed & FUSE_PASSTHROUGH, 0);
        assert_eq!(reply.max_stack_depth, 0);
        assert!(outcome.io_uring);
        assert_eq!((reply.major, reply.minor), (7, FUSE_KERNEL_MINOR_VERSION));
        assert_eq!(reply.max_write, kernel::MAX_WRITE);
        assert!(outcome.ring_payload >= kernel::MAX_WRITE as usize);
        assert!(outcome.ring_payload >= usize::from(reply.max_pages) * page_size() as usize);
        assert_eq!(reply.max_readahead, 128 * 1024);
        assert!(reply.max_pages >= 1);
    }

    #[test]
    fn init_without_the_kernels_offer_or_our_wish_is_dev_fuse() {
        let f = fixture(true);
        let without_uring = FUSE_INIT_EXT | InitFlags::FUSE_DO_READDIRPLUS.bits();
        let outcome = f
            .dispatcher
            .init(struct_bytes(&init_in(45, without_uring)), true)
            .unwrap();
        assert!(!outcome.io_uring);
        let outcome = f
            .dispatcher
            .init(struct_bytes(&init_in(45, u64::MAX)), false)
            .unwrap();
        assert!(!outcome.io_uring);
        // A shared mount does not hand set-user-ID clearing to the backing filesystem.
        assert_eq!(
            outcome.reply.flags as u64 & InitFlags::FUSE_HANDLE_KILLPRIV_V2.bits(),
            0
        );
    }

    #[test]
    fn init_refuses_protocols_it_cannot_serve() {
        let f = fixture(false);
        let old = init_in(35, FUSE_INIT_EXT);
        assert_eq!(
            f.dispatcher.init(struct_bytes(&old), false).unwrap_err(),
            libc::EPROTO
        );
        let mut next_major = init_in(45, FUSE_INIT_EXT);
        next_major.major = 8;
        assert_eq!(
            f.dispatcher
                .init(struct_bytes(&next_major), false)
                .unwrap_err(),
            libc::EPROTO
        );
        assert_eq!(
            f.dispatcher.init(&[7, 0, 0], false).unwrap_err(),
            libc::EINVAL
        );
    }

    #[test]
    fn lookup_answers_hits_and_caches_misses() {
        let f = fixture(false);
        std::fs::write(f.dir.path().join("here"), b"12345").unwrap();
        let hit = f.lookup(ROOT, "here").unwrap();
        assert_ne!(hit.nodeid, 0);
        assert_eq!(hit.attr.ino, hit.nodeid);
        assert_eq!(hit.attr.size, 5);
        assert_eq!(hit.attr.mode & libc::S_IFMT, libc::S_IFREG);
        assert_eq!(
            (hit.entry_valid, hit.attr_valid),
            (TTL.as_secs(), TTL.as_secs())
        );
        let miss = f.lookup(ROOT, "absent").unwrap();
        assert_eq!(miss.nodeid, 0);
        assert_eq!(miss.entry_valid, TTL.as_secs());
    }

    #[test]
    fn mkdir_create_write_read_getattr() {
        let f = fixture(false);
        let mkdir = fuse_mkdir_in {
            mode: 0o750,
            umask: 0,
        };
        let out = f
            .call(FUSE_MKDIR, ROOT, struct_bytes(&mkdir), &name("sub"))
            .unwrap();
        let dir: fuse_entry_out = read_struct(&out).unwrap();
        assert_eq!(dir.attr.mode, libc::S_IFDIR | 0o750);
        assert!(f.dir.path().join("sub").is_dir());

        let (file, opened) = f.create("file");
        assert_eq!(file.attr.mode, libc::S_IFREG | 0o640);
        // No kernel passthrough here: the daemon serves the data and the cache is kept.
        assert_eq!(opened.backing_id, 0);
        assert_eq!(opened.open_flags, kernel::DAEMON_IO_OPEN_FLAGS.bits());

        let write = fuse_write_in {
            fh: opened.fh,
            offset: 2,
            size: 5,
            ..Default::default()
        };
        // The payload may run past `size` (a ring's buffer): only `size` bytes are written.
        let out = f
            .call(
                FUSE_WRITE,
                file.nodeid,
                struct_bytes(&write),
                b"hello, world",
            )
            .unwrap();
        assert_eq!(read_struct::<fuse_write_out>(&out).unwrap().size, 5);
        assert_eq!(
            std::fs::read(f.dir.path().join("file")).unwrap(),
            b"\0\0hello"
        );

        let read = fuse_read_in {
            fh: opened.fh,
            offset: 3,
            size: 100,
            ..Default::default()
        };
        let out = f
            .call(FUSE_READ, file.nodeid, struct_bytes(&read), &[])
            .unwrap();
        assert_eq!(out, b"ello");

        let getattr = fuse_getattr_in {
            getattr_flags: FUSE_GETATTR_FH,
            dummy: 0,
            fh: opened.fh,
        };
        let out = f
            .call(FUSE_GETATTR, file.nodeid, struct_bytes(&getattr), &[])
            .unwrap();
        let attr: fuse_attr_out = read_struct(&out).unwrap();
        assert_eq!(attr.attr.size, 7);
        assert_eq!(attr.attr_valid, TTL.as_secs());

        let release = fuse_release_in {
            fh: opened.fh,
            ..Default::default()
        };
        assert_eq!(
            f.call(FUSE_RELEASE, file.nodeid, struct_bytes(&release), &[]),
            Ok(vec![])
        );
        // The handle is gone.
        assert_eq!(
            f.call(FUSE_READ, file.nodeid, struct_bytes(&read), &[]),
            Err(libc::EBADF)
        );
    }

    #[test]
    fn ring_sized_op_in_is_read_as_the_struct_it_starts_with() {
        let f = fixture(false);
        std::fs::create_dir(f.dir.path().join("d")).unwrap();
        let d = f.lookup(ROOT, "d").unwrap();
        let mut op_in = [0xaau8; FUSE_URING_OP_IN_OUT_SZ];
        op_in[..8].copy_from_slice(&0u64.to_ne_bytes()); // getattr_flags, dummy: no fh
        let out = f.call(FUSE_GETATTR, d.nodeid, &op_in, &[]).unwrap();
        let attr: fuse_attr_out = read_struct(&out).unwrap();
        assert_eq!(attr.attr.mode & libc::S_IFMT, libc::S_IFDIR);
    }

    #[test]
    fn readdir_and_readdirplus_encode_aligned_entries_that_fit() {
        let f = fixture(false);
        for entry in ["a", "bb", "name-of-nine"] {
            std::fs::write(f.dir.path().join(entry), b"").unwrap();
        }
        std::fs::create_dir(f.dir.path().join("dir")).unwrap();
        let fh = f.opendir(ROOT);
        let all = f.list(FUSE_READDIR, fh, 4096);
        let mut listed: Vec<_> = all.iter().map(|e| e.0.as_str()).collect();
        listed.sort();
        assert_eq!(listed, [".", "..", "a", "bb", "dir", "name-of-nine"]);
        let dir = all.iter().find(|e| e.0 == "dir").unwrap();
        assert_eq!(dir.3, libc::DT_DIR as u32);
        let a = all.iter().find(|e| e.0 == "a").unwrap();
        assert_eq!(a.3, libc::DT_REG as u32);

        // Room for two short entries (32 bytes each): the third does not fit and is left for
        // the next call, which starts from the second's offset.
        let two = f.list(FUSE_READDIR, fh, 70);
        assert_eq!(two.len(), 2);
        assert_eq!(two[..], all[..2]);

        let plus = f.list(FUSE_READDIRPLUS, fh, 4096);
        assert_eq!(plus.len(), all.len());
        let a_plus = plus.iter().find(|e| e.0 == "a").unwrap();
        assert_eq!(a_plus.1, f.lookup(ROOT, "a").unwrap().nodeid);
        // Too small for even one entry plus: an empty answer, not an error.
        assert!(f.list(FUSE_READDIRPLUS, fh, 100).is_empty());

        let release = fuse_release_in {
            fh,
            ..Default::default()
        };
        assert_eq!(
            f.call(FUSE_RELEASEDIR, ROOT, struct_bytes(&release), &[]),
            Ok(vec![])
        );
    }

    #[test]
    fn setattr_applies_the_valid_fields_only() {
        let f = fixture(false);
        std::fs::write(f.dir.path().join("f"), b"0123456789").unwrap();
        let file = f.lookup(ROOT, "f").unwrap();
        let arg = fuse_setattr_in {
            valid: FATTR_SIZE | FATTR_MODE | FATTR_MTIME,
            size: 4,
            mode: libc::S_IFREG | 0o600,
            mtime: 1_000_000_000,
            mtimensec: 5,
            uid: 12345, // not valid: ignored
            ..Default::default()
        };
        let out = f
            .call(FUSE_SETATTR, file.nodeid, struct_bytes(&arg), &[])
            .unwrap();
        let attr: fuse_attr_out = read_struct(&out).unwrap();
        assert_eq!(attr.attr.size, 4);
        assert_eq!(attr.attr.mode, libc::S_IFREG | 0o600);
        assert_eq!((attr.attr.mtime, attr.attr.mtimensec), (1_000_000_000, 5));
        assert_eq!(attr.attr.uid, owner());

        let now = fuse_setattr_in {
            valid: FATTR_ATIME | FATTR_ATIME_NOW,
            ..Default::default()
        };
        let out = f
            .call(FUSE_SETATTR, file.nodeid, struct_bytes(&now), &[])
            .unwrap();
        let attr: fuse_attr_out = read_struct(&out).unwrap();
        assert!(attr.attr.atime > 1_700_000_000);
        assert_eq!(attr.attr.mtime, 1_000_000_000);
    }

    #[test]
    fn rename_rename2_link_symlink_unlink_rmdir() {
        let f = fixture(false);
        std::fs::write(f.dir.path().join("a"), b"").unwrap();
        std::fs::write(f.dir.path().join("b"), b"").unwrap();
        std::fs::create_dir(f.dir.path().join("d")).unwrap();
        let a = f.lookup(ROOT, "a").unwrap();
        let d = f.lookup(ROOT, "d").unwrap();

        let rename = fuse_rename_in { newdir: d.nodeid };
        f.call(
            FUSE_RENAME,
            ROOT,
            struct_bytes(&rename),
            &names("a", "moved"),
        )
        .unwrap();
        assert!(f.dir.path().join("d/moved").exists());

        let noreplace = fuse_rename2_in {
            newdir: d.nodeid,
            flags: libc::RENAME_NOREPLACE,
            padding: 0,
        };
        assert_eq!(
            f.call(
                FUSE_RENAME2,
                ROOT,
                struct_bytes(&noreplace),
                &names("b", "moved")
            ),
            Err(libc::EEXIST)
        );

        let link = fuse_link_in {
            oldnodeid: a.nodeid,
        };
        let out = f
            .call(FUSE_LINK, ROOT, struct_bytes(&link), &name("hard"))
            .unwrap();
        let linked: fuse_entry_out = read_struct(&out).unwrap();
        assert_eq!((linked.nodeid, linked.attr.nlink), (a.nodeid, 2));

        let out = f
            .call(FUSE_SYMLINK, ROOT, &[], &names("sym", "d/moved"))
            .unwrap();
        let sym: fuse_entry_out = read_struct(&out).unwrap();
        assert_eq!(sym.attr.mode & libc::S_IFMT, libc::S_IFLNK);
        assert_eq!(
            f.call(FUSE_READLINK, sym.nodeid, &[], &[]).unwrap(),
            b"d/moved"
        );

        f.call(FUSE_UNLINK, d.nodeid, &[], &name("moved")).unwrap();
        f.call(FUSE_RMDIR, ROOT, &[], &name("d")).unwrap();
        assert!(!f.dir.path().join("d").exists());
    }

    #[test]
    fn xattrs_set_get_list_remove() {
        let f = fixture(false);
        std::fs::write(f.dir.path().join("x"), b"").unwrap();
        let x = f.lookup(ROOT, "x").unwrap().nodeid;
        let set = fuse_setxattr_in { size: 3, flags: 0 };
        let mut payload = name("user.k");
        payload.extend_from_slice(b"val");
        match f.call(FUSE_SETXATTR, x, struct_bytes(&set), &payload) {
            // The temporary directory's filesystem may not take user attributes.
            Err(libc::EOPNOTSUPP) => return,
            result => result.unwrap(),
        };

        let size_only = fuse_getxattr_in::default();
        let out = f
            .call(FUSE_GETXATTR, x, struct_bytes(&size_only), &name("user.k"))
            .unwrap();
        assert_eq!(read_struct::<fuse_getxattr_out>(&out).unwrap().size, 3);
        let sized = fuse_getxattr_in {
            size: 16,
            padding: 0,
        };
        let out = f
            .call(FUSE_GETXATTR, x, struct_bytes(&sized), &name("user.k"))
            .unwrap();
        assert_eq!(out, b"val");
        let small = fuse_getxattr_in {
            size: 2,
            padding: 0,
        };
        assert_eq!(
            f.call(FUSE_GETXATTR, x, struct_bytes(&small), &name("user.k")),
            Err(libc::ERANGE)
        );

        let out = f
            .call(FUSE_LISTXATTR, x, struct_bytes(&sized), &[])
            .unwrap();
        assert!(out.split(|&b| b == 0).any(|n| n == b"user.k"));

        f.call(FUSE_REMOVEXATTR, x, &[], &name("user.k")).unwrap();
        assert_eq!(
            f.call(FUSE_GETXATTR, x, struct_bytes(&sized), &name("user.k")),
            Err(libc::ENODATA)
        );
    }

    #[test]
    fn no_reply_ops_and_fixed_answers() {
        let f = fixture(false);
        let mut out = [0u8; 64];
        let header = |opcode| fuse_in_header {
            opcode,
            nodeid: ROOT,
            uid: owner(),
            ..Default::default()
        };
        let forget = fuse_forget_in { nlookup: 1 };
        for (opcode, op_in) in [
            (FUSE_FORGET, struct_bytes(&forget)),
            (FUSE_BATCH_FORGET, &[][..]),
        ] {
            let reply = f.dispatcher.dispatch(&header(opcode), op_in, &[], &mut out);
            assert_eq!(reply, Reply::None);
        }
        let reply = f
            .dispatcher
            .dispatch(&header(FUSE_INTERRUPT), &[], &[], &mut out);
        assert_eq!(reply, Reply::Error(libc::ENOSYS));
        let reply = f
            .dispatcher
            .dispatch(&header(FUSE_DESTROY), &[], &[], &mut out);
        assert_eq!(reply, Reply::Data(0));
        let ioctl = fuse_ioctl_in::default();
        assert_eq!(
            f.call(FUSE_IOCTL, ROOT, struct_bytes(&ioctl), &[]),
            Err(libc::ENOTTY)
        );
        assert_eq!(f.call(31 /* GETLK */, ROOT, &[], &[]), Err(libc::ENOSYS));
        assert_eq!(f.call(9999, ROOT, &[], &[]), Err(libc::ENOSYS));
        assert_eq!(f.call(FUSE_INIT, ROOT, &[], &[]), Err(libc::EIO));
    }

    #[test]
    fn a_private_mount_refuses_other_users() {
        let private = fixture(false);
        let other = owner().wrapping_add(1);
        assert_eq!(
            private.call_as(other, FUSE_LOOKUP, ROOT, &[], &name("x")),
            Err(libc::EACCES)
        );
        // Reads of open handles may come with no particular user's id: not refused.
        let read = fuse_read_in::default();
        assert_eq!(
            private.call_as(other, FUSE_READ, ROOT, struct_bytes(&read), &[]),
            Err(libc::EBADF)
        );
        let shared = fixture(true);
        assert_eq!(shared.lookup(ROOT, "x").unwrap().nodeid, 0);
        let miss = shared
            .call_as(other, FUSE_LOOKUP, ROOT, &[], &name("x"))
            .unwrap();
        assert_eq!(read_struct::<fuse_entry_out>(&miss).unwrap().nodeid, 0);
    }

    #[test]
    fn malformed_requests_are_errors() {
        let f = fixture(false);
        // A name without its NUL.
        assert_eq!(f.call(FUSE_LOOKUP, ROOT, &[], b"abc"), Err(libc::EINVAL));
        // A fixed argument struct cut short.
        assert_eq!(f.call(FUSE_GETATTR, ROOT, &[0; 15], &[]), Err(libc::EINVAL));
        // A write announcing more bytes than it carries.
        let (_, opened) = f.create("w");
        let write = fuse_write_in {
            fh: opened.fh,
            size: 10,
            ..Default::default()
        };
        assert_eq!(
            f.call(FUSE_WRITE, ROOT, struct_bytes(&write), b"short"),
            Err(libc::EINVAL)
        );
        // A symlink with its target's NUL missing.
        assert_eq!(
            f.call(FUSE_SYMLINK, ROOT, &[], b"s\0target"),
            Err(libc::EINVAL)
        );
        // A read larger than the reply buffer.
        std::fs::write(f.dir.path().join("big"), vec![7u8; 200]).unwrap();
        let big = f.lookup(ROOT, "big").unwrap();
        let open = fuse_open_in::default();
        let out = f
            .call(FUSE_OPEN, big.nodeid, struct_bytes(&open), &[])
            .unwrap();
        let fh = read_struct::<fuse_open_out>(&out).unwrap().fh;
        let header = fuse_in_header {
            opcode: FUSE_READ,
            nodeid: big.nodeid,
            uid: owner(),
            ..Default::default()
        };
        let read = fuse_read_in {
            fh,
            size: 200,
            ..Default::default()
        };
        let mut small = [0u8; 100];
        let reply = f
            .dispatcher
            .dispatch(&header, struct_bytes(&read), &[], &mut small);
        assert_eq!(reply, Reply::Error(libc::EIO));
    }

    /// A /dev/fuse message: the in-header (with `len` as given), then `body`.
    fn device_message(len: u32, opcode: u32, body: &[u8]) -> Vec<u8> {
        let header = fuse_in_header {
            len,
            opcode,
            unique: 9,
            nodeid: ROOT,
            uid: owner(),
            ..Default::default()
        };
        let mut bytes = struct_bytes(&header).to_vec();
        bytes.extend_from_slice(body);
        bytes
    }

    #[test]
    fn a_device_message_is_checked_against_its_length() {
        let f = fixture(false);
        let mut out = vec![0u8; OUT_SIZE];
        let getattr = fuse_getattr_in::default();
        let body = struct_bytes(&getattr);
        let whole = (IN_HEADER + body.len()) as u32;
        let serve = |message: &[u8], out: &mut [u8]| {
            f.dispatcher
                .serve_received(Request::from_device(message), out)
        };
        // Well formed.
        let (unique, reply) = serve(&device_message(whole, FUSE_GETATTR, body), &mut out).unwrap();
        assert_eq!(unique, 9);
        assert!(matches!(reply, Reply::Data(_)));
        // Shorter than an in-header: nothing to answer.
        assert!(serve(&[0u8; IN_HEADER - 1], &mut out).is_none());
        // len below the header, or beyond the bytes read.
        for len in [0, IN_HEADER as u32 - 1, whole + 1, u32::MAX] {
            let reply = serve(&device_message(len, FUSE_GETATTR, body), &mut out);
            assert_eq!(reply, Some((9, Reply::Error(libc::EINVAL))), "len {len}");
        }
        // len cutting the op's struct short.
        let reply = serve(&device_message(whole - 1, FUSE_GETATTR, body), &mut out);
        assert_eq!(reply, Some((9, Reply::Error(libc::EINVAL))));
        // A forget with a wrong length is not answered.
        let reply = serve(&device_message(whole + 1, FUSE_FORGET, &[0; 8]), &mut out);
        assert_eq!(reply, Some((9, Reply::None)));
    }

    #[test]
    fn a_ring_request_is_checked_against_its_length() {
        let f = fixture(false);
        std::fs::create_dir(f.dir.path().join("d")).unwrap();
        let mut out = vec![0u8; OUT_SIZE];
        let op_in = [0u8; FUSE_URING_OP_IN_OUT_SZ];
        let payload = name("d");
        let serve = |len: u32, opcode: u32, payload_sz: u32, out: &mut [u8]| {
            let in_out = device_message(len, opcode, &[]);
            let request = Request::from_ring(&in_out, &op_in, &payload, payload_sz);
            f.dispatcher.serve_received(request, out).unwrap().1
        };
        let lookup = (IN_HEADER + payload.len()) as u32;
        assert!(matches!(
            serve(lookup, FUSE_LOOKUP, 2, &mut out),
            Reply::Data(128)
        ));
        // A payload larger than its buffer, a len smaller than header and payload, or one
        // leaving more for the fixed argument than the op_in area holds.
        for (len, payload_sz) in [
            (lookup, 3),
            (lookup - 1, 2),
            (lookup + FUSE_URING_OP_IN_OUT_SZ as u32 + 1, 2),
        ] {
            let reply = serve(len, FUSE_LOOKUP, payload_sz, &mut out);
            assert_eq!(reply, Reply::Error(libc::EINVAL), "{len} {payload_sz}");
        }
        // A fixed argument shorter than the op's struct.
        let getattr = (IN_HEADER + size_of::<fuse_getattr_in>()) as u32;
        assert!(matches!(
            serve(getattr, FUSE_GETATTR, 0, &mut out),
            Reply::Data(_)
        ));
        assert_eq!(
            serve(getattr - 1, FUSE_GETATTR, 0, &mut out),
            Reply::Error(libc::EINVAL)
        );
    }

    #[test]
    fn garbage_never_panics() {
        let f = fixture(false);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut out = vec![0u8; OUT_SIZE];
        for round in 0..2000 {
            let opcode = (round % 60) as u32;
            let op_len = (next() % 130) as usize;
            let payload_len = (next() % 40) as usize;
            let bytes: Vec<u8> = (0..op_len + payload_len)
                .map(|_| match next() % 4 {
                    0 => 0,
                    _ => b'a' + (next() % 26) as u8,
                })
                .collect();
            let header = fuse_in_header {
                opcode,
                nodeid: if next() % 2 == 0 { ROOT } else { next() },
                uid: owner(),
                ..Default::default()
            };
            if opcode == FUSE_INIT {
                continue;
            }
            let (op_in, payload) = bytes.split_at(op_len);
            let _ = f.dispatcher.dispatch(&header, op_in, payload, &mut out);
        }
    }

    #[test]
    fn each_request_runs_in_a_debug_span_with_its_opcode_id_inode_and_pid() {
        #[derive(Clone, Default)]
        struct Lines(Arc<parking_lot::Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let f = fixture(false);
        let header = fuse_in_header {
            opcode: FUSE_GETATTR,
            unique: 77,
            nodeid: ROOT,
            uid: owner(),
            pid: 4242,
            ..Default::default()
        };
        let getattr = fuse_getattr_in::default();
        let mut out = vec![0u8; OUT_SIZE];
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            // Another test's thread may have met the span's callsite while no subscriber
            // wanted it, and cached that: ask again, with this subscriber in place.
            tracing::callsite::rebuild_interest_cache();
            f.dispatcher
                .dispatch(&header, struct_bytes(&getattr), &[], &mut out)
        });
        let logged = String::from_utf8(lines.0.lock().clone()).unwrap();
        assert!(
            logged.contains(r#"fuse_request{opcode="getattr" unique=77 ino=1 pid=4242}"#),
            "{logged}"
        );
    }

    #[test]
    fn the_dispatcher_is_shared_by_the_queue_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Dispatcher>();
    }

    #[test]
    fn op_in_size_matches_the_fixed_structs() {
        assert_eq!(Dispatcher::op_in_size(FUSE_LOOKUP), 0);
        assert_eq!(Dispatcher::op_in_size(FUSE_SYMLINK), 0);
        assert_eq!(Dispatcher::op_in_size(FUSE_READLINK), 0);
        assert_eq!(Dispatcher::op_in_size(FUSE_WRITE), 40);
        assert_eq!(Dispatcher::op_in_size(FUSE_SETATTR), 88);
        assert_eq!(Dispatcher::op_in_size(FUSE_SETXATTR), 8);
        assert_eq!(Dispatcher::op_in_size(FUSE_COPY_FILE_RANGE), 56);
        assert_eq!(Dispatcher::op_in_size(FUSE_INIT), 64);
        for opcode in 0..64 {
            assert!(Dispatcher::op_in_size(opcode) <= FUSE_URING_OP_IN_OUT_SZ);
        }
    }
}
