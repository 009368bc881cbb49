//! Kernel passthrough registrations: a backing file is registered on the mount's /dev/fuse
//! descriptor (`FUSE_DEV_IOC_BACKING_OPEN`) and its id answered in an open reply, after which
//! the kernel does the file's reads and writes itself. Both transports register through here, so
//! a registration is ended (`FUSE_DEV_IOC_BACKING_CLOSE`) the same way whichever served the open.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

/// `struct fuse_backing_map` of include/uapi/linux/fuse.h.
#[repr(C)]
struct BackingMap {
    fd: i32,
    flags: u32,
    padding: u64,
}

/// `_IOW(FUSE_DEV_IOC_MAGIC, n, T)`: write direction (1 << 30), the argument's size, magic 229.
const fn fuse_dev_ioc_write(number: u64, size: usize) -> u64 {
    (1 << 30) | ((size as u64) << 16) | (229 << 8) | number
}
const FUSE_DEV_IOC_BACKING_OPEN: u64 = fuse_dev_ioc_write(1, size_of::<BackingMap>());
const FUSE_DEV_IOC_BACKING_CLOSE: u64 = fuse_dev_ioc_write(2, size_of::<u32>());

/// The mount's /dev/fuse connection, as far as passthrough registrations need it.
#[derive(Debug)]
pub struct FuseDevice(OwnedFd);

impl FuseDevice {
    /// `device` is any descriptor of the connection (a duplicate of the mount's serves).
    pub fn new(device: OwnedFd) -> Arc<FuseDevice> {
        Arc::new(FuseDevice(device))
    }

    /// Registers `file` as a backing file; the registration lasts as long as the answer.
    pub fn register(self: &Arc<Self>, file: BorrowedFd<'_>) -> io::Result<BackingId> {
        let map = BackingMap {
            fd: file.as_raw_fd(),
            flags: 0,
            padding: 0,
        };
        // SAFETY: the request number encodes `BackingMap`'s size and the write direction, and `map` is a valid `BackingMap` that outlives the call.
        let id = unsafe {
            libc::ioctl(
                self.0.as_raw_fd(),
                FUSE_DEV_IOC_BACKING_OPEN as _,
                &map as *const BackingMap,
            )
        };
        if id < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(BackingId {
            device: self.clone(),
            id: id as u32,
        })
    }
}

/// One registered backing file; dropping it ends the registration.
#[derive(Debug)]
pub struct BackingId {
    device: Arc<FuseDevice>,
    id: u32,
}

impl BackingId {
    /// The id an open reply names (`fuse_open_out.backing_id`).
    pub fn raw(&self) -> u32 {
        self.id
    }
}

impl Drop for BackingId {
    fn drop(&mut self) {
        // SAFETY: the request number encodes a u32 argument and the write direction; `self.id` outlives the call.
        let closed = unsafe {
            libc::ioctl(
                self.device.0.as_raw_fd(),
                FUSE_DEV_IOC_BACKING_CLOSE as _,
                &self.id as *const u32,
            )
        };
        if closed < 0 {
            // The connection is gone (unmounted): the kernel ended every registration with it.
            tracing::debug!(id = self.id, error = %io::Error::last_os_error(), "backing close");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_header() {
        // _IOW(229, 1, struct fuse_backing_map) and _IOW(229, 2, uint32_t) as the kernel computes
        // them (16- and 4-byte arguments).
        assert_eq!(FUSE_DEV_IOC_BACKING_OPEN, 0x4010_e501);
        assert_eq!(FUSE_DEV_IOC_BACKING_CLOSE, 0x4004_e502);
    }
}
