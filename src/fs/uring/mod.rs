//! The io_uring transport's side of the FUSE protocol: our own wire-format decoding and encoding.

pub(crate) mod abi;
pub(crate) mod dispatch;
