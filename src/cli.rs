//! Command line: one binary, one subcommand per job.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "maxlofs",
    version,
    about = "A FUSE filesystem that keeps a Maxlo media catalog in step"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a local, persistent emulator of the Maxlo device API.
    Emulator(EmulatorArgs),
    /// Print the Maxlo file hash of each FILE, like sha256sum.
    Hash {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Mount BACKING at MOUNTPOINT and keep the catalog in step with it.
    Mount(MountArgs),
    /// Show what a mount's sync engine is doing.
    Status(StatusArgs),
}

#[derive(Args, Debug, Clone)]
pub struct EmulatorArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8700")]
    pub listen: String,
    /// SQLite database file; in memory when absent.
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Accepted device_session_key (repeatable).
    #[arg(long = "device-key", default_values_t = vec!["demo-device-key".to_string()])]
    pub device_keys: Vec<String>,
    /// Accepted user_session_key (repeatable).
    #[arg(long = "user-key", default_values_t = vec!["demo-user-key".to_string()])]
    pub user_keys: Vec<String>,
    /// Media grant id that exists (repeatable).
    #[arg(long = "grant", default_values_t = vec![1u64])]
    pub grants: Vec<u64>,
    /// A create on an existing path answers 200 with the same media_id and updates the record.
    #[arg(long)]
    pub merge_parallel_creates: bool,
    /// DELETE accepts only a user key.
    #[arg(long)]
    pub strict_delete_auth: bool,
    /// Fraction of API calls answered with 503.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Fraction of API calls whose connection is closed without an answer.
    #[arg(long, default_value_t = 0.0)]
    pub drop_rate: f64,
    /// Added latency per API call, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
}

#[derive(Args, Debug, Clone)]
pub struct MountArgs {
    /// The local directory that holds the files.
    pub backing: PathBuf,
    /// Where the filesystem appears.
    pub mountpoint: PathBuf,
    /// Stay attached to the terminal.
    #[arg(long)]
    pub foreground: bool,
    /// Mount read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Let other users in (adds default_permissions).
    #[arg(long)]
    pub allow_other: bool,
    /// Base URL of the Maxlo API (or the emulator).
    #[arg(long, default_value = "http://127.0.0.1:8700")]
    pub api: String,
    /// Media grant id the mount shows.
    #[arg(long, default_value_t = 1)]
    pub grant: u64,
    /// Prefix prepended to every media_path.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// File holding the device session key (else MAXLO_DEVICE_SESSION_KEY).
    #[arg(long)]
    pub device_key_file: Option<PathBuf>,
    /// File holding the user session key (else MAXLO_USER_SESSION_KEY).
    #[arg(long)]
    pub user_key_file: Option<PathBuf>,
    /// Where the index lives (default: $XDG_STATE_HOME/maxlofs/<mount>).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Quiet time after the last change to a path before it is sent.
    #[arg(long, default_value_t = 500)]
    pub settle_ms: u64,
    /// Concurrent API requests.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Entries in the media_id LRU.
    #[arg(long, default_value_t = 100_000)]
    pub cache_entries: usize,
    /// Glob of names that stay local (repeatable; editor temp files are ignored by default).
    #[arg(long = "ignore")]
    pub ignore: Vec<String>,
    /// Never send deletes.
    #[arg(long)]
    pub no_delete: bool,
    /// Seconds to keep sending queued work after unmount or SIGTERM.
    #[arg(long, default_value_t = 30)]
    pub drain_timeout: u64,
    /// Threads serving FUSE requests.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
}

#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    pub mountpoint: PathBuf,
    /// Wait until nothing is pending or in flight.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds (exit non-zero).
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Logs go to stderr; RUST_LOG or `info` by default.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Parses arguments, runs the subcommand, and answers the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Emulator(args) => crate::emulator::run(&args),
        Command::Hash { files } => return crate::hash::run_cli(&files),
        Command::Mount(args) => crate::daemon::run(&args),
        Command::Status(args) => crate::status::run(&args),
    };
    match result {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("maxlofs: {err:#}");
            1
        }
    }
}
