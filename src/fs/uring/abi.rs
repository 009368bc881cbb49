//! The kernel's FUSE wire format (include/uapi/linux/fuse.h, protocol 7.45 as in Linux 6.18): the
//! structs and numbers the io_uring adapter decodes and encodes, under the kernel's own names.
#![allow(non_camel_case_types)]

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The protocol this adapter speaks.
pub(crate) const FUSE_KERNEL_VERSION: u32 = 7;
pub(crate) const FUSE_KERNEL_MINOR_VERSION: u32 = 45;

// Opcodes.
pub(crate) const FUSE_LOOKUP: u32 = 1;
pub(crate) const FUSE_FORGET: u32 = 2;
pub(crate) const FUSE_GETATTR: u32 = 3;
pub(crate) const FUSE_SETATTR: u32 = 4;
pub(crate) const FUSE_READLINK: u32 = 5;
pub(crate) const FUSE_SYMLINK: u32 = 6;
pub(crate) const FUSE_MKNOD: u32 = 8;
pub(crate) const FUSE_MKDIR: u32 = 9;
pub(crate) const FUSE_UNLINK: u32 = 10;
pub(crate) const FUSE_RMDIR: u32 = 11;
pub(crate) const FUSE_RENAME: u32 = 12;
pub(crate) const FUSE_LINK: u32 = 13;
pub(crate) const FUSE_OPEN: u32 = 14;
pub(crate) const FUSE_READ: u32 = 15;
pub(crate) const FUSE_WRITE: u32 = 16;
pub(crate) const FUSE_STATFS: u32 = 17;
pub(crate) const FUSE_RELEASE: u32 = 18;
pub(crate) const FUSE_FSYNC: u32 = 20;
pub(crate) const FUSE_SETXATTR: u32 = 21;
pub(crate) const FUSE_GETXATTR: u32 = 22;
pub(crate) const FUSE_LISTXATTR: u32 = 23;
pub(crate) const FUSE_REMOVEXATTR: u32 = 24;
pub(crate) const FUSE_FLUSH: u32 = 25;
pub(crate) const FUSE_INIT: u32 = 26;
pub(crate) const FUSE_OPENDIR: u32 = 27;
pub(crate) const FUSE_READDIR: u32 = 28;
pub(crate) const FUSE_RELEASEDIR: u32 = 29;
pub(crate) const FUSE_FSYNCDIR: u32 = 30;
pub(crate) const FUSE_ACCESS: u32 = 34;
pub(crate) const FUSE_CREATE: u32 = 35;
pub(crate) const FUSE_INTERRUPT: u32 = 36;
pub(crate) const FUSE_DESTROY: u32 = 38;
pub(crate) const FUSE_IOCTL: u32 = 39;
pub(crate) const FUSE_BATCH_FORGET: u32 = 42;
pub(crate) const FUSE_FALLOCATE: u32 = 43;
pub(crate) const FUSE_READDIRPLUS: u32 = 44;
pub(crate) const FUSE_RENAME2: u32 = 45;
pub(crate) const FUSE_LSEEK: u32 = 46;
pub(crate) const FUSE_COPY_FILE_RANGE: u32 = 47;

// INIT flags, as one u64: `flags | flags2 << 32`.
pub(crate) const FUSE_INIT_EXT: u64 = 1 << 30;
pub(crate) const FUSE_PASSTHROUGH: u64 = 1 << 37;
pub(crate) const FUSE_OVER_IO_URING: u64 = 1 << 41;

// fuse_getattr_in.getattr_flags: `fh` names an open handle.
pub(crate) const FUSE_GETATTR_FH: u32 = 1 << 0;

// fuse_setattr_in.valid.
pub(crate) const FATTR_MODE: u32 = 1 << 0;
pub(crate) const FATTR_UID: u32 = 1 << 1;
pub(crate) const FATTR_GID: u32 = 1 << 2;
pub(crate) const FATTR_SIZE: u32 = 1 << 3;
pub(crate) const FATTR_ATIME: u32 = 1 << 4;
pub(crate) const FATTR_MTIME: u32 = 1 << 5;
pub(crate) const FATTR_FH: u32 = 1 << 6;
pub(crate) const FATTR_ATIME_NOW: u32 = 1 << 7;
pub(crate) const FATTR_MTIME_NOW: u32 = 1 << 8;

// fuse_open_out.open_flags.
pub(crate) const FOPEN_PASSTHROUGH: u32 = 1 << 7;

// fuse_fsync_in.fsync_flags: only the data need reach the disk.
pub(crate) const FUSE_FSYNC_FDATASYNC: u32 = 1 << 0;

// fuse_ioctl_in.flags: a restricted ioctl's buffers are not described by the caller.
pub(crate) const FUSE_IOCTL_UNRESTRICTED: u32 = 1 << 1;

// The io_uring transport (FUSE_OVER_IO_URING).
pub(crate) const FUSE_URING_IN_OUT_HEADER_SZ: usize = 128;
pub(crate) const FUSE_URING_OP_IN_OUT_SZ: usize = 128;
pub(crate) const FUSE_IO_URING_CMD_REGISTER: u32 = 1;
pub(crate) const FUSE_IO_URING_CMD_COMMIT_AND_FETCH: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_in_header {
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    pub total_extlen: u16,
    pub padding: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_out_header {
    pub len: u32,
    pub error: i32,
    pub unique: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_init_in {
    pub major: u32,
    pub minor: u32,
    pub max_readahead: u32,
    pub flags: u32,
    pub flags2: u32,
    pub unused: [u32; 11],
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_init_out {
    pub major: u32,
    pub minor: u32,
    pub max_readahead: u32,
    pub flags: u32,
    pub max_background: u16,
    pub congestion_threshold: u16,
    pub max_write: u32,
    pub time_gran: u32,
    pub max_pages: u16,
    pub map_alignment: u16,
    pub flags2: u32,
    pub max_stack_depth: u32,
    pub request_timeout: u16,
    pub unused: [u16; 11],
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_uring_ent_in_out {
    pub flags: u64,
    /// Names the ring entry in COMMIT_AND_FETCH; set by the kernel.
    pub commit_id: u64,
    /// Bytes of the payload buffer used, in the request and in the reply.
    pub payload_sz: u32,
    pub padding: u32,
    pub reserved: u64,
}

/// The header buffer of a ring entry: the in- or out-header, the op's fixed argument struct,
/// and the entry's bookkeeping.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_uring_req_header {
    pub in_out: [u8; FUSE_URING_IN_OUT_HEADER_SZ],
    pub op_in: [u8; FUSE_URING_OP_IN_OUT_SZ],
    pub ring_ent_in_out: fuse_uring_ent_in_out,
}

impl Default for fuse_uring_req_header {
    fn default() -> Self {
        fuse_uring_req_header {
            in_out: [0; FUSE_URING_IN_OUT_HEADER_SZ],
            op_in: [0; FUSE_URING_OP_IN_OUT_SZ],
            ring_ent_in_out: fuse_uring_ent_in_out::default(),
        }
    }
}

/// The command of a FUSE_IO_URING_CMD_* submission (in the SQE128's command area).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_uring_cmd_req {
    pub flags: u64,
    pub commit_id: u64,
    pub qid: u16,
    pub padding: [u8; 6],
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_attr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: u64,
    pub mtime: u64,
    pub ctime: u64,
    pub atimensec: u32,
    pub mtimensec: u32,
    pub ctimensec: u32,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
    pub flags: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_entry_out {
    pub nodeid: u64,
    pub generation: u64,
    pub entry_valid: u64,
    pub attr_valid: u64,
    pub entry_valid_nsec: u32,
    pub attr_valid_nsec: u32,
    pub attr: fuse_attr,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_forget_in {
    pub nlookup: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_forget_one {
    pub nodeid: u64,
    pub nlookup: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_batch_forget_in {
    pub count: u32,
    pub dummy: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_getattr_in {
    pub getattr_flags: u32,
    pub dummy: u32,
    pub fh: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_attr_out {
    pub attr_valid: u64,
    pub attr_valid_nsec: u32,
    pub dummy: u32,
    pub attr: fuse_attr,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_mknod_in {
    pub mode: u32,
    pub rdev: u32,
    pub umask: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_mkdir_in {
    pub mode: u32,
    pub umask: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_rename_in {
    pub newdir: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_rename2_in {
    pub newdir: u64,
    pub flags: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_link_in {
    pub oldnodeid: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_setattr_in {
    pub valid: u32,
    pub padding: u32,
    pub fh: u64,
    pub size: u64,
    pub lock_owner: u64,
    pub atime: u64,
    pub mtime: u64,
    pub ctime: u64,
    pub atimensec: u32,
    pub mtimensec: u32,
    pub ctimensec: u32,
    pub mode: u32,
    pub unused4: u32,
    pub uid: u32,
    pub gid: u32,
    pub unused5: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_open_in {
    pub flags: u32,
    pub open_flags: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_create_in {
    pub flags: u32,
    pub mode: u32,
    pub umask: u32,
    pub open_flags: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_open_out {
    pub fh: u64,
    pub open_flags: u32,
    pub backing_id: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_release_in {
    pub fh: u64,
    pub flags: u32,
    pub release_flags: u32,
    pub lock_owner: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_flush_in {
    pub fh: u64,
    pub unused: u32,
    pub padding: u32,
    pub lock_owner: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_read_in {
    pub fh: u64,
    pub offset: u64,
    pub size: u32,
    pub read_flags: u32,
    pub lock_owner: u64,
    pub flags: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_write_in {
    pub fh: u64,
    pub offset: u64,
    pub size: u32,
    pub write_flags: u32,
    pub lock_owner: u64,
    pub flags: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_write_out {
    pub size: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_kstatfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
    pub padding: u32,
    pub spare: [u32; 6],
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_statfs_out {
    pub st: fuse_kstatfs,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_fsync_in {
    pub fh: u64,
    pub fsync_flags: u32,
    pub padding: u32,
}

/// Without FUSE_SETXATTR_EXT (never negotiated here) the kernel sends only `size` and `flags`:
/// FUSE_COMPAT_SETXATTR_IN_SIZE, 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_setxattr_in {
    pub size: u32,
    pub flags: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_getxattr_in {
    pub size: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_getxattr_out {
    pub size: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_access_in {
    pub mask: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_interrupt_in {
    pub unique: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_ioctl_in {
    pub fh: u64,
    pub flags: u32,
    pub cmd: u32,
    pub arg: u64,
    pub in_size: u32,
    pub out_size: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_fallocate_in {
    pub fh: u64,
    pub offset: u64,
    pub length: u64,
    pub mode: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_lseek_in {
    pub fh: u64,
    pub offset: u64,
    pub whence: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_lseek_out {
    pub offset: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_copy_file_range_in {
    pub fh_in: u64,
    pub off_in: u64,
    pub nodeid_out: u64,
    pub fh_out: u64,
    pub off_out: u64,
    pub len: u64,
    pub flags: u64,
}

/// A readdir entry; the name follows, and the next entry starts at the next multiple of 8.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_dirent {
    pub ino: u64,
    pub off: u64,
    pub namelen: u32,
    pub r#type: u32,
}

/// A readdirplus entry; the name follows as in `fuse_dirent`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct fuse_direntplus {
    pub entry_out: fuse_entry_out,
    pub dirent: fuse_dirent,
}

/// The opcode's name as logged (the fuser adapter's method names): "lookup", "batch_forget".
pub(crate) fn opcode_name(opcode: u32) -> &'static str {
    match opcode {
        FUSE_LOOKUP => "lookup",
        FUSE_FORGET => "forget",
        FUSE_GETATTR => "getattr",
        FUSE_SETATTR => "setattr",
        FUSE_READLINK => "readlink",
        FUSE_SYMLINK => "symlink",
        FUSE_MKNOD => "mknod",
        FUSE_MKDIR => "mkdir",
        FUSE_UNLINK => "unlink",
        FUSE_RMDIR => "rmdir",
        FUSE_RENAME => "rename",
        FUSE_LINK => "link",
        FUSE_OPEN => "open",
        FUSE_READ => "read",
        FUSE_WRITE => "write",
        FUSE_STATFS => "statfs",
        FUSE_RELEASE => "release",
        FUSE_FSYNC => "fsync",
        FUSE_SETXATTR => "setxattr",
        FUSE_GETXATTR => "getxattr",
        FUSE_LISTXATTR => "listxattr",
        FUSE_REMOVEXATTR => "removexattr",
        FUSE_FLUSH => "flush",
        FUSE_INIT => "init",
        FUSE_OPENDIR => "opendir",
        FUSE_READDIR => "readdir",
        FUSE_RELEASEDIR => "releasedir",
        FUSE_FSYNCDIR => "fsyncdir",
        FUSE_ACCESS => "access",
        FUSE_CREATE => "create",
        FUSE_INTERRUPT => "interrupt",
        FUSE_DESTROY => "destroy",
        FUSE_IOCTL => "ioctl",
        FUSE_BATCH_FORGET => "batch_forget",
        FUSE_FALLOCATE => "fallocate",
        FUSE_READDIRPLUS => "readdirplus",
        FUSE_RENAME2 => "rename2",
        FUSE_LSEEK => "lseek",
        FUSE_COPY_FILE_RANGE => "copy_file_range",
        _ => "unknown",
    }
}

/// Reads a `T` from the start of `bytes` (no alignment needed); `None` when `bytes` is shorter.
/// `FromBytes` (derived, so checked by zerocopy) says every bit pattern is a valid `T`.
pub(crate) fn read_struct<T: FromBytes>(bytes: &[u8]) -> Option<T> {
    T::read_from_prefix(bytes).ok().map(|(value, _)| value)
}

/// The bytes of `value`, as the kernel reads them. `IntoBytes` (derived, so checked by
/// zerocopy) says `T` has no padding, so every byte is initialised.
pub(crate) fn struct_bytes<T: IntoBytes + Immutable>(value: &T) -> &[u8] {
    value.as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn sizes_match_the_kernel_header() {
        assert_eq!(size_of::<fuse_in_header>(), 40);
        assert_eq!(size_of::<fuse_out_header>(), 16);
        assert_eq!(size_of::<fuse_init_in>(), 64);
        assert_eq!(size_of::<fuse_init_out>(), 64);
        assert_eq!(size_of::<fuse_uring_ent_in_out>(), 32);
        assert_eq!(size_of::<fuse_uring_req_header>(), 288);
        assert_eq!(size_of::<fuse_uring_cmd_req>(), 24);
        assert_eq!(size_of::<fuse_attr>(), 88);
        assert_eq!(size_of::<fuse_entry_out>(), 128);
        assert_eq!(size_of::<fuse_attr_out>(), 104);
        assert_eq!(size_of::<fuse_getattr_in>(), 16);
        assert_eq!(size_of::<fuse_setattr_in>(), 88);
        assert_eq!(size_of::<fuse_mknod_in>(), 16);
        assert_eq!(size_of::<fuse_mkdir_in>(), 8);
        assert_eq!(size_of::<fuse_rename_in>(), 8);
        assert_eq!(size_of::<fuse_rename2_in>(), 16);
        assert_eq!(size_of::<fuse_link_in>(), 8);
        assert_eq!(size_of::<fuse_open_in>(), 8);
        assert_eq!(size_of::<fuse_create_in>(), 16);
        assert_eq!(size_of::<fuse_open_out>(), 16);
        assert_eq!(size_of::<fuse_release_in>(), 24);
        assert_eq!(size_of::<fuse_flush_in>(), 24);
        assert_eq!(size_of::<fuse_read_in>(), 40);
        assert_eq!(size_of::<fuse_write_in>(), 40);
        assert_eq!(size_of::<fuse_write_out>(), 8);
        assert_eq!(size_of::<fuse_statfs_out>(), 80);
        assert_eq!(size_of::<fuse_fsync_in>(), 16);
        assert_eq!(size_of::<fuse_setxattr_in>(), 8);
        assert_eq!(size_of::<fuse_getxattr_in>(), 8);
        assert_eq!(size_of::<fuse_getxattr_out>(), 8);
        assert_eq!(size_of::<fuse_access_in>(), 8);
        assert_eq!(size_of::<fuse_interrupt_in>(), 8);
        assert_eq!(size_of::<fuse_ioctl_in>(), 32);
        assert_eq!(size_of::<fuse_fallocate_in>(), 32);
        assert_eq!(size_of::<fuse_lseek_in>(), 24);
        assert_eq!(size_of::<fuse_lseek_out>(), 8);
        assert_eq!(size_of::<fuse_copy_file_range_in>(), 56);
        assert_eq!(size_of::<fuse_dirent>(), 24);
        assert_eq!(size_of::<fuse_direntplus>(), 152);
        assert_eq!(size_of::<fuse_forget_in>(), 8);
        assert_eq!(size_of::<fuse_forget_one>(), 16);
        assert_eq!(size_of::<fuse_batch_forget_in>(), 8);
    }

    #[test]
    fn offsets_match_the_kernel_header() {
        assert_eq!(offset_of!(fuse_in_header, uid), 24);
        assert_eq!(offset_of!(fuse_in_header, total_extlen), 36);
        assert_eq!(offset_of!(fuse_init_out, max_write), 20);
        assert_eq!(offset_of!(fuse_init_out, max_pages), 28);
        assert_eq!(offset_of!(fuse_init_out, flags2), 32);
        assert_eq!(offset_of!(fuse_init_out, max_stack_depth), 36);
        assert_eq!(offset_of!(fuse_init_out, request_timeout), 40);
        assert_eq!(offset_of!(fuse_uring_req_header, op_in), 128);
        assert_eq!(offset_of!(fuse_uring_req_header, ring_ent_in_out), 256);
        assert_eq!(offset_of!(fuse_uring_ent_in_out, payload_sz), 16);
        assert_eq!(offset_of!(fuse_uring_cmd_req, qid), 16);
        assert_eq!(offset_of!(fuse_attr, atimensec), 48);
        assert_eq!(offset_of!(fuse_attr, mode), 60);
        assert_eq!(offset_of!(fuse_attr, blksize), 80);
        assert_eq!(offset_of!(fuse_entry_out, attr), 40);
        assert_eq!(offset_of!(fuse_attr_out, attr), 16);
        assert_eq!(offset_of!(fuse_setattr_in, atimensec), 56);
        assert_eq!(offset_of!(fuse_setattr_in, mode), 68);
        assert_eq!(offset_of!(fuse_setattr_in, uid), 76);
        assert_eq!(offset_of!(fuse_open_out, backing_id), 12);
        assert_eq!(offset_of!(fuse_write_in, size), 16);
        assert_eq!(offset_of!(fuse_copy_file_range_in, len), 40);
        assert_eq!(offset_of!(fuse_direntplus, dirent), 128);
    }

    #[test]
    fn read_struct_refuses_short_input_and_reads_unaligned() {
        assert!(read_struct::<fuse_in_header>(&[0; 39]).is_none());
        let header = fuse_in_header {
            len: 41,
            opcode: FUSE_LOOKUP,
            unique: 7,
            ..Default::default()
        };
        let mut bytes = vec![0xff];
        bytes.extend_from_slice(struct_bytes(&header));
        let read: fuse_in_header = read_struct(&bytes[1..]).unwrap();
        assert_eq!((read.len, read.opcode, read.unique), (41, FUSE_LOOKUP, 7));
    }
}
