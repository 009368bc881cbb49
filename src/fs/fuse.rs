//! The fuser adapter: decodes each request, calls `Passthrough`, replies. No policy lives here.

use super::backing::FuseDevice;
use super::kernel;
use super::mount::SessionEndGuard;
use super::passthrough::{AttrChanges, Caller, Opened, Passthrough, Result, TTL};
use super::sys::{TimeSpec, XattrValue};
use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::debug;

pub(crate) struct FuseAdapter {
    fs: Passthrough,
    /// Where backing files are registered, when kernel passthrough is wanted.
    kernel_passthrough: Option<Arc<FuseDevice>>,
    allow_other: bool,
    _session_end: SessionEndGuard,
}

impl FuseAdapter {
    pub(crate) fn new(
        fs: Passthrough,
        kernel_passthrough: Option<Arc<FuseDevice>>,
        allow_other: bool,
        session_end: SessionEndGuard,
    ) -> FuseAdapter {
        FuseAdapter {
            fs,
            kernel_passthrough,
            allow_other,
            _session_end: session_end,
        }
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn time_spec(time: Option<TimeOrNow>) -> Option<TimeSpec> {
    time.map(|t| match t {
        TimeOrNow::Now => TimeSpec::Now,
        TimeOrNow::SpecificTime(at) => TimeSpec::At(as_the_kernel_sent(at)),
    })
}

/// fuser 0.18 reads the kernel's time before 1970, `sec < 0` and `nsec > 0` (which is
/// `sec + nsec`), as `sec - nsec` (fixed upstream by fuser pull request 705, in no release yet):
/// `touch -d '1960-05-01 00:00:00.5'` became 23:59:59.5 the day before. What it hands us is
/// 1970 − (|sec| + nsec), from which the kernel's (sec, nsec) is read back. (The io_uring
/// transport decodes setattr itself.)
fn as_the_kernel_sent(at: SystemTime) -> SystemTime {
    match UNIX_EPOCH.duration_since(at) {
        Ok(before) if before.subsec_nanos() > 0 => {
            UNIX_EPOCH - Duration::from_secs(before.as_secs())
                + Duration::from_nanos(before.subsec_nanos().into())
        }
        _ => at,
    }
}

fn reply_entry(reply: ReplyEntry, result: Result<FileAttr>) {
    match result {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn reply_attr(reply: ReplyAttr, result: Result<FileAttr>) {
    match result {
        Ok(attr) => reply.attr(&TTL, &attr),
        Err(e) => reply.error(e),
    }
}

fn reply_empty(reply: ReplyEmpty, result: Result<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn reply_xattr(reply: ReplyXattr, result: Result<XattrValue>) {
    match result {
        Ok(XattrValue::Size(size)) => reply.size(size),
        Ok(XattrValue::Data(data)) => reply.data(&data),
        Err(e) => reply.error(e),
    }
}

/// A debug-level span around one request, with the fields the io_uring transport's has
/// (`fs::uring::dispatch`); with debug logging off it costs a check of the level.
fn request_span(req: &Request, opcode: &'static str, ino: u64) -> tracing::span::EnteredSpan {
    tracing::debug_span!(
        "fuse_request",
        opcode,
        unique = req.unique().0,
        ino,
        pid = req.pid()
    )
    .entered()
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        for flag in kernel::optional_capabilities(self.allow_other).iter() {
            let _ = config.add_capabilities(flag);
        }
        let _ = config.set_max_write(kernel::MAX_WRITE);
        let passthrough = self.kernel_passthrough.take().filter(|_| {
            config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config
                    .set_max_stack_depth(kernel::PASSTHROUGH_MAX_STACK_DEPTH)
                    .is_ok()
        });
        debug!(passthrough = passthrough.is_some(), "init");
        self.fs.set_kernel_passthrough(passthrough);
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _span = request_span(req, "lookup", parent.0);
        debug!(parent = parent.0, ?name, "lookup");
        reply_entry(reply, kernel::lookup_entry(self.fs.lookup(parent.0, name)));
    }

    // batch_forget: fuser's default calls this once per node, with each node's exact count.
    fn forget(&self, req: &Request, ino: INodeNo, nlookup: u64) {
        let _span = request_span(req, "forget", ino.0);
        debug!(ino = ino.0, nlookup, "forget");
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let _span = request_span(req, "getattr", ino.0);
        debug!(ino = ino.0, ?fh, "getattr");
        reply_attr(reply, self.fs.getattr(ino.0, fh.map(|fh| fh.0)));
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _span = request_span(req, "setattr", ino.0);
        debug!(
            ino = ino.0,
            ?mode,
            ?uid,
            ?gid,
            ?size,
            ?atime,
            ?mtime,
            ?fh,
            "setattr"
        );
        let changes = AttrChanges {
            mode,
            uid,
            gid,
            size,
            atime: time_spec(atime),
            mtime: time_spec(mtime),
        };
        reply_attr(reply, self.fs.setattr(ino.0, fh.map(|fh| fh.0), changes));
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let _span = request_span(req, "readlink", ino.0);
        debug!(ino = ino.0, "readlink");
        match self.fs.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _span = request_span(req, "mknod", parent.0);
        debug!(parent = parent.0, ?name, mode, rdev, "mknod");
        reply_entry(
            reply,
            self.fs.mknod(caller(req), parent.0, name, mode, rdev),
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let _span = request_span(req, "mkdir", parent.0);
        debug!(parent = parent.0, ?name, mode, "mkdir");
        reply_entry(reply, self.fs.mkdir(caller(req), parent.0, name, mode));
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = request_span(req, "unlink", parent.0);
        debug!(parent = parent.0, ?name, "unlink");
        reply_empty(reply, self.fs.unlink(parent.0, name));
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = request_span(req, "rmdir", parent.0);
        debug!(parent = parent.0, ?name, "rmdir");
        reply_empty(reply, self.fs.rmdir(parent.0, name));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _span = request_span(req, "symlink", parent.0);
        debug!(parent = parent.0, ?link_name, ?target, "symlink");
        reply_entry(
            reply,
            self.fs.symlink(caller(req), parent.0, link_name, target),
        );
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _span = request_span(req, "rename", parent.0);
        debug!(parent = parent.0, ?name, newparent = newparent.0, ?newname, %flags, "rename");
        let result = self
            .fs
            .rename(parent.0, name, newparent.0, newname, flags.bits());
        reply_empty(reply, result);
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _span = request_span(req, "link", ino.0);
        debug!(ino = ino.0, newparent = newparent.0, ?newname, "link");
        reply_entry(reply, self.fs.link(ino.0, newparent.0, newname));
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _span = request_span(req, "open", ino.0);
        debug!(ino = ino.0, flags = flags.0, "open");
        match self.fs.open(ino.0, flags.0) {
            Ok(Opened {
                fh,
                backing_id: Some(id),
            }) => {
                // SAFETY: `id` stays registered while the handle is open, and fuser's wrapper of it (used for the reply) is disarmed with `into_raw` before it could end the registration.
                let wrapped = unsafe { reply.wrap_backing(id.raw()) };
                reply.opened_passthrough(FileHandle(fh), kernel::PASSTHROUGH_OPEN_FLAGS, &wrapped);
                wrapped.into_raw();
            }
            Ok(Opened {
                fh,
                backing_id: None,
            }) => reply.opened(FileHandle(fh), kernel::DAEMON_IO_OPEN_FLAGS),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _span = request_span(req, "read", ino.0);
        debug!(ino = ino.0, fh = fh.0, offset, size, "read");
        match self.fs.read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _span = request_span(req, "write", ino.0);
        debug!(ino = ino.0, fh = fh.0, offset, len = data.len(), "write");
        match self.fs.write(fh.0, offset, data) {
            Ok(written) => reply.written(written),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _span = request_span(req, "flush", ino.0);
        debug!(ino = ino.0, fh = fh.0, "flush");
        reply_empty(reply, self.fs.flush(fh.0));
    }

    fn release(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _span = request_span(req, "release", ino.0);
        debug!(ino = ino.0, fh = fh.0, "release");
        reply_empty(reply, self.fs.release(fh.0));
    }

    fn fsync(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _span = request_span(req, "fsync", ino.0);
        debug!(ino = ino.0, fh = fh.0, datasync, "fsync");
        reply_empty(reply, self.fs.fsync(fh.0, datasync));
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _span = request_span(req, "opendir", ino.0);
        debug!(ino = ino.0, "opendir");
        match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _span = request_span(req, "readdir", ino.0);
        debug!(ino = ino.0, fh = fh.0, offset, "readdir");
        let result = self.fs.readdir(fh.0, offset, |ino, next, kind, name| {
            !reply.add(INodeNo(ino), next, kind, name)
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _span = request_span(req, "readdirplus", ino.0);
        debug!(ino = ino.0, fh = fh.0, offset, "readdirplus");
        let result = self.fs.readdirplus(fh.0, offset, |name, next, attr| {
            !reply.add(attr.ino, next, name, &TTL, attr, Generation(0))
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _span = request_span(req, "releasedir", ino.0);
        debug!(ino = ino.0, fh = fh.0, "releasedir");
        reply_empty(reply, self.fs.releasedir(fh.0));
    }

    fn fsyncdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _span = request_span(req, "fsyncdir", ino.0);
        debug!(ino = ino.0, fh = fh.0, datasync, "fsyncdir");
        reply_empty(reply, self.fs.fsyncdir(fh.0, datasync));
    }

    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let _span = request_span(req, "statfs", ino.0);
        debug!(ino = ino.0, "statfs");
        match self.fs.statfs(ino.0) {
            Ok(st) => reply.statfs(
                st.f_blocks,
                st.f_bfree,
                st.f_bavail,
                st.f_files,
                st.f_ffree,
                st.f_bsize as u32,
                st.f_namelen as u32,
                st.f_frsize as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _span = request_span(req, "setxattr", ino.0);
        debug!(ino = ino.0, ?name, len = value.len(), flags, "setxattr");
        reply_empty(
            reply,
            self.fs.setxattr(caller(req), ino.0, name, value, flags),
        );
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _span = request_span(req, "getxattr", ino.0);
        debug!(ino = ino.0, ?name, size, "getxattr");
        reply_xattr(reply, self.fs.getxattr(caller(req), ino.0, name, size));
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _span = request_span(req, "listxattr", ino.0);
        debug!(ino = ino.0, size, "listxattr");
        reply_xattr(reply, self.fs.listxattr(ino.0, size));
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = request_span(req, "removexattr", ino.0);
        debug!(ino = ino.0, ?name, "removexattr");
        reply_empty(reply, self.fs.removexattr(ino.0, name));
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let _span = request_span(req, "access", ino.0);
        debug!(ino = ino.0, mask = mask.bits(), "access");
        reply_empty(reply, self.fs.access(ino.0, mask.bits()));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _span = request_span(req, "create", parent.0);
        debug!(parent = parent.0, ?name, mode, flags, "create");
        let result = self.fs.create(caller(req), parent.0, name, mode, flags);
        match result {
            Ok((attr, Opened { fh, backing_id })) => match backing_id {
                Some(id) => {
                    // SAFETY: `id` stays registered while the handle is open, and the wrapper is disarmed with `into_raw` before it could end the registration.
                    let wrapped = unsafe { reply.wrap_backing(id.raw()) };
                    reply.created_passthrough(
                        &TTL,
                        &attr,
                        Generation(0),
                        FileHandle(fh),
                        kernel::PASSTHROUGH_OPEN_FLAGS,
                        &wrapped,
                    );
                    wrapped.into_raw();
                }
                None => reply.created(
                    &TTL,
                    &attr,
                    Generation(0),
                    FileHandle(fh),
                    kernel::DAEMON_IO_OPEN_FLAGS,
                ),
            },
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _span = request_span(req, "fallocate", ino.0);
        debug!(ino = ino.0, fh = fh.0, offset, length, mode, "fallocate");
        reply_empty(reply, self.fs.fallocate(fh.0, offset, length, mode));
    }

    fn lseek(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let _span = request_span(req, "lseek", ino.0);
        debug!(ino = ino.0, fh = fh.0, offset, whence, "lseek");
        match self.fs.lseek(fh.0, offset, whence) {
            Ok(offset) => reply.offset(offset),
            Err(e) => reply.error(e),
        }
    }

    fn copy_file_range(
        &self,
        req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let _span = request_span(req, "copy_file_range", ino_in.0);
        debug!(
            ino_in = ino_in.0,
            ino_out = ino_out.0,
            offset_in,
            offset_out,
            len,
            "copy_file_range"
        );
        match self
            .fs
            .copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
        {
            Ok(copied) => reply.written(copied),
            Err(e) => reply.error(e),
        }
    }

    /// No ioctl is passed through (the backing file's ioctls would act outside the mount's
    /// rules). Callers probe with them all the time (isatty's TCGETS on every Python open), so
    /// the answer is the usual "not a terminal / not supported here", without a log line.
    fn ioctl(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        let _span = request_span(req, "ioctl", ino.0);
        debug!(ino = ino.0, cmd, "ioctl");
        reply.error(Errno::ENOTTY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_before_1970_is_read_back_as_the_kernel_sent_it() {
        let half = Duration::from_millis(500);
        let secs = Duration::from_secs(305_164_800);
        // The kernel's (-305164800, 5e8), as fuser 0.18 hands it over.
        let from_fuser = UNIX_EPOCH - secs - half;
        assert_eq!(as_the_kernel_sent(from_fuser), UNIX_EPOCH - secs + half);
        for unchanged in [UNIX_EPOCH - secs, UNIX_EPOCH, UNIX_EPOCH + secs + half] {
            assert_eq!(as_the_kernel_sent(unchanged), unchanged);
        }
    }
}
