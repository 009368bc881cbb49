//! FUSE over io_uring: our own decoding and encoding of the kernel's FUSE protocol (`abi`,
//! `dispatch`, a second adapter over `Passthrough`), served from per-CPU rings (`ring`) by our
//! own session (`session`).

pub(crate) mod abi;
pub(crate) mod dispatch;
#[cfg(test)]
mod fuzz;
mod ring;
pub(crate) mod session;
