//! Helpers for tests that need a real maxlofs mount; any integration test can use them with
//! `mod common;`.
//!
//! ```ignore
//! let Some(mount) = common::mount_or_skip("my_test") else { return };
//! std::fs::write(mount.mountpoint.join("f"), b"x").unwrap();
//! assert!(mount.events.take().contains(&Event::Created { path: "f".into() }));
//! ```
//!
//! `mount_or_skip` mounts a fresh, empty backing directory in a temp dir with a collecting event
//! sink. When FUSE is unavailable (no /dev/fuse, no privileges) it prints a `SKIP` line and
//! returns `None`, unless the environment has `MAXLOFS_REQUIRE_FUSE=1`: then it panics, so CI
//! that can mount never passes by skipping. `mount_or_skip_with` lets a test adjust the
//! `MountConfig` (another event sink, a status source, daemon I/O instead of kernel passthrough).
//! The mount is unmounted when the `TestMount` drops.
#![allow(dead_code)] // each test crate uses a different subset

pub mod model;
/// Mounts against an emulator (`common::service::Mount::start` with extra flags), or returns from
/// the test when FUSE is not available and not required.
#[allow(unused_macros)]
macro_rules! mount {
    ($emulator:expr) => {
        mount!($emulator, &[])
    };
    ($emulator:expr, $extra:expr) => {
        match crate::common::service::Mount::start(&$emulator, $extra) {
            Some(mount) => mount,
            None => return,
        }
    };
}

pub mod ext4;
pub mod http;
pub mod posix;
pub mod proxy;
pub mod reftest;
pub mod service;
pub mod soak;
pub mod wait;

#[allow(unused_imports)]
pub use wait::{eventually, eventually_some, eventually_within, Later};

use maxlofs_fs::{spawn_mount, Event, EventSink, MountConfig, MountHandle};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An `EventSink` that keeps every event for the test to inspect.
#[derive(Default)]
pub struct CollectingSink {
    events: Mutex<Vec<Event>>,
}

impl EventSink for CollectingSink {
    fn send(&self, event: Event) {
        self.events.lock().unwrap().push(event);
    }
}

impl CollectingSink {
    /// The events so far, leaving none behind.
    pub fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }

    /// The events so far after letting asynchronous requests (release, forget) settle.
    pub fn take_settled(&self) -> Vec<Event> {
        std::thread::sleep(Duration::from_millis(150));
        self.take()
    }
}

pub struct TestMount {
    // Declared first so it is dropped (unmounted) before the directories go away.
    handle: Option<MountHandle>,
    pub backing: PathBuf,
    pub mountpoint: PathBuf,
    /// The collecting sink the mount was created with (unused if the test replaced it).
    pub events: Arc<CollectingSink>,
    _dir: tempfile::TempDir,
}

impl TestMount {
    pub fn handle(&self) -> &MountHandle {
        self.handle.as_ref().expect("mounted")
    }

    /// Unmounts, panicking on failure (dropping unmounts too, quietly).
    pub fn unmount(mut self) {
        self.handle
            .take()
            .expect("mounted")
            .unmount()
            .expect("unmount");
    }
}

pub fn mount_or_skip(test: &str) -> Option<TestMount> {
    mount_or_skip_with(test, |_| {})
}

pub fn mount_or_skip_with(
    test: &str,
    configure: impl FnOnce(&mut MountConfig),
) -> Option<TestMount> {
    let dir = tempfile::tempdir().expect("temp dir");
    let backing = dir.path().join("backing");
    let mountpoint = dir.path().join("mnt");
    std::fs::create_dir(&backing).expect("backing dir");
    std::fs::create_dir(&mountpoint).expect("mountpoint");
    let events = Arc::new(CollectingSink::default());
    let mut cfg = MountConfig::new(backing.clone(), mountpoint.clone(), events.clone());
    // scripts/test.sh runs the suite once per transport; the `maxlofs mount` daemons of the
    // other tests read the same variable themselves.
    if let Ok(transport) = std::env::var("MAXLOFS_TRANSPORT") {
        cfg.transport = transport.parse().expect("MAXLOFS_TRANSPORT");
    }
    configure(&mut cfg);
    match spawn_mount(cfg) {
        Ok(handle) => Some(TestMount {
            handle: Some(handle),
            backing,
            mountpoint,
            events,
            _dir: dir,
        }),
        Err(e) if service::fuse_required() => {
            panic!("{test}: cannot mount FUSE ({e}) and MAXLOFS_REQUIRE_FUSE=1")
        }
        Err(e) => {
            eprintln!(
                "SKIP {test}: cannot mount FUSE ({e}); set MAXLOFS_REQUIRE_FUSE=1 to fail instead"
            );
            None
        }
    }
}

/// The two ways file data can flow through a mount.
#[derive(Clone, Copy, Debug)]
pub enum DataPath {
    KernelPassthrough,
    DaemonIo,
}

impl DataPath {
    pub const ALL: [DataPath; 2] = [DataPath::KernelPassthrough, DataPath::DaemonIo];

    pub fn mount_or_skip(self, test: &str) -> Option<TestMount> {
        mount_or_skip_with(test, |cfg| {
            cfg.kernel_passthrough = matches!(self, DataPath::KernelPassthrough)
        })
    }
}
