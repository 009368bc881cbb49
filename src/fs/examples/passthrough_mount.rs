//! Mounts BACKING at MOUNTPOINT with maxlofs' passthrough and no sync engine (events are
//! dropped), until unmounted or SIGTERM/SIGINT. Used by scripts/bench.sh (TARGETS=fsonly).
//!
//!     cargo run --release --example passthrough_mount -- BACKING MOUNTPOINT [--threads N] [--daemon-io]
//!         [--transport auto|io-uring|dev-fuse]

use maxlofs_fs::{spawn_mount, Event, EventSink, MountConfig, TransportChoice};
use std::path::PathBuf;
use std::sync::Arc;

struct DropEvents;

impl EventSink for DropEvents {
    fn send(&self, _event: Event) {}
}

fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let mut args = std::env::args_os().skip(1);
    let usage = "usage: passthrough_mount BACKING MOUNTPOINT [--threads N] [--daemon-io] \
                 [--transport auto|io-uring|dev-fuse]";
    let (Some(backing), Some(mountpoint)) = (args.next(), args.next()) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let mut cfg = MountConfig::new(
        PathBuf::from(backing),
        PathBuf::from(mountpoint),
        Arc::new(DropEvents),
    );
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--threads") => {
                cfg.threads = args
                    .next()
                    .and_then(|n| n.to_str()?.parse().ok())
                    .unwrap_or_else(|| panic!("{usage}"));
            }
            Some("--daemon-io") => cfg.kernel_passthrough = false,
            Some("--transport") => {
                cfg.transport = args
                    .next()
                    .and_then(|t| t.to_str()?.parse::<TransportChoice>().ok())
                    .unwrap_or_else(|| panic!("{usage}"));
            }
            _ => {
                eprintln!("{usage}");
                std::process::exit(2);
            }
        }
    }
    // SIGTERM and SIGINT unmount; registered before the mount, as the daemon does.
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut terminate, mut interrupt) = signals.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        std::io::Result::Ok((
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        ))
    })?;
    let handle = spawn_mount(cfg)?;
    let stopper = handle.stopper();
    std::thread::spawn(move || {
        signals.block_on(async {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        });
        stopper.stop();
    });
    handle.serve_until_unmounted()
}
