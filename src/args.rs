//! The command line's words: one binary, one subcommand per job, and each one's arguments.

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand, ValueEnum};
use maxlofs_fs::TransportChoice;
use maxlofs_sync::ignore::{ALL_DEFAULTS, DEFAULT_IGNORES};
use serde::Serialize;
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
    /// Print a shell completion script, e.g. for /etc/bash_completion.d/maxlofs.
    Completions { shell: clap_complete::Shell },
    /// Run a local, persistent emulator of the Maxlo device API.
    Emulator(EmulatorArgs),
    /// List the media grants a device key can see.
    Grants(GrantsArgs),
    /// Print the Maxlo file hash of each FILE, like sha256sum.
    Hash {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Mount BACKING at MOUNTPOINT and keep the catalog in step with it.
    ///
    /// Also run by mount(8) for fstab entries of type fuse.maxlofs, as
    /// `maxlofs BACKING MOUNTPOINT -o OPTIONS`.
    Mount(Box<MountCommand>),
    /// Send the deletes a mount holds: records of files that went missing behind its back, most
    /// of the library at once (see `maxlofs status`).
    ReleaseDeletes { mountpoint: PathBuf },
    /// Put back from Maxlo the recorded content of PATHs of a mount (relative to its root, or
    /// under it), or with --corrupted every file scrub found damaged. Exit status 0 when all
    /// were restored, 3 when some could not be, 1 when the mount could not be asked.
    Restore(RestoreArgs),
    /// Re-read every synced file of a mount whose size, mtime and ctime are unchanged since its
    /// hash, and find those whose bytes changed all the same (damaged in place); --repair
    /// restores them. Exit status 0 when none is damaged (or all were repaired), 3 otherwise, 1
    /// when the mount could not be asked.
    Scrub(ScrubArgs),
    /// Show what a mount's sync engine is doing. Exit status 0; with --wait, 0 once everything
    /// is sent, 3 once nothing is left to send but paths failed (the service refused them) or deletes are held, 1 on
    /// timeout or when the status cannot be read; 2 for a usage mistake.
    Status(StatusArgs),
    /// Check that the service holds the content of every synced record (asked of the daemon of
    /// a mount, or read from the index of an unmounted backing folder); exit status 0 when all
    /// is well, 1 when content is missing or corrupted, 2 when it could not check (or, deep,
    /// gave up a download slower than its floor).
    Verify(VerifyArgs),
}

#[derive(Args, Debug, Clone)]
pub struct VerifyArgs {
    /// A maxlofs mount point, or the backing folder of a mount that is not mounted.
    pub folder: PathBuf,
    #[command(flatten)]
    pub unmounted: UnmountedArgs,
    /// Also download each content and check its hash. A download slower than 64 KiB in 30 s is
    /// given up, reported, and the others go on.
    #[arg(long)]
    pub deep: bool,
    /// The window of that floor, in seconds (tests shorten it).
    #[arg(long, hide = true, value_parser = clap::value_parser!(u64).range(1..),
          default_value_t = maxlofs_api::content_client::DOWNLOAD_FLOOR_WINDOW.as_secs())]
    pub download_floor_secs: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct EmulatorArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8700")]
    pub listen: String,
    /// SQLite database file; in memory when absent.
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Accepted device_session_key (repeatable) [default: demo-device-key, unless a key file is
    /// given].
    #[arg(long = "device-key")]
    pub device_keys: Vec<String>,
    /// File of accepted device_session_keys, one per line (repeatable); they follow the
    /// --device-key ones. Keeps the keys out of `ps`.
    #[arg(long = "device-key-file", value_name = "FILE")]
    pub device_key_files: Vec<PathBuf>,
    /// Accepted user_session_key (repeatable) [default: demo-user-key, unless a key file is
    /// given].
    #[arg(long = "user-key")]
    pub user_keys: Vec<String>,
    /// File of accepted user_session_keys, one per line (repeatable); they follow the
    /// --user-key ones.
    #[arg(long = "user-key-file", value_name = "FILE")]
    pub user_key_files: Vec<PathBuf>,
    /// Media grant id that exists (repeatable) [default: 1].
    #[arg(long = "grant")]
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
    /// Folder of the uploaded objects [default: DB.objects next to --db; a temporary folder when
    /// in memory].
    #[arg(long, value_name = "DIR")]
    pub objects: Option<PathBuf>,
    /// How long a signed upload or download URL stays valid, in seconds.
    #[arg(long, default_value_t = 900)]
    pub url_ttl_secs: u64,
    /// A PUT whose body sends no byte for this many seconds is answered 400 RequestTimeout, as
    /// S3 answers an idle request (0: wait for ever).
    #[arg(long, default_value_t = 20)]
    pub body_idle_secs: u64,
    /// `upload` answers upload_disabled: true (uploads off by policy).
    #[arg(long)]
    pub upload_disabled: bool,
    /// The device record says is_upload_disabled: true.
    #[arg(long)]
    pub device_upload_disabled: bool,
    /// `multipart` answers 409 no_active_file: true for content not held.
    #[arg(long)]
    pub multipart_no_active_file: bool,
}

/// Which config file to read settings from (see `config`).
#[derive(Args, Debug, Clone)]
pub struct ConfigFileArgs {
    /// Config file (TOML, keys named like the flags with underscores) [default:
    /// $XDG_CONFIG_HOME/maxlofs/config.toml, when it exists].
    #[arg(long, env = "MAXLOFS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Read no config file, whatever names one.
    // Daemon mode starts its daemon with it: every setting is on that command line already.
    #[arg(long)]
    pub no_config: bool,
}

/// `maxlofs mount`: the settings (`MountArgs`) and where else to read them from.
#[derive(Args, Debug, Clone)]
pub struct MountCommand {
    #[command(flatten)]
    pub settings: MountArgs,
    #[command(flatten)]
    pub config_file: ConfigFileArgs,
    /// Settings as mount(8) options: NAME=VALUE, or NAME alone for on/off settings; `ro` is
    /// read_only, `config=FILE` names the config file, and the usual mount options that mean
    /// nothing here (rw, dev, nosuid, _netdev, x-systemd.*, ...) are ignored.
    #[arg(short = 'o', value_name = "OPTION[,OPTION...]")]
    pub options: Vec<String>,
    /// Print the resolved settings as JSON and exit without mounting.
    #[arg(long, hide = true)]
    pub print_config: bool,
}

/// The settings of a mount. Every field but the two paths is also a config file key, an `-o`
/// option (same name) and a `MAXLOFS_<NAME>` environment variable; see `config`.
#[derive(Args, Debug, Clone, PartialEq, Serialize)]
pub struct MountArgs {
    /// The local directory that holds the files.
    pub backing: PathBuf,
    /// Where the filesystem appears.
    pub mountpoint: PathBuf,
    /// Stay attached to the terminal instead of running as a daemon.
    #[arg(long, env = "MAXLOFS_FOREGROUND")]
    pub foreground: bool,
    /// Mount read-only.
    #[arg(long, env = "MAXLOFS_READ_ONLY")]
    pub read_only: bool,
    /// Let other users in (adds default_permissions).
    #[arg(long, env = "MAXLOFS_ALLOW_OTHER")]
    pub allow_other: bool,
    /// Base URL of the Maxlo API (or the emulator).
    #[arg(long, env = "MAXLOFS_API", default_value = "http://127.0.0.1:8700")]
    pub api: String,
    /// Media grant the mount shows: its id or its name (see `maxlofs grants`).
    #[arg(long, env = "MAXLOFS_GRANT", default_value = "1")]
    pub grant: String,
    /// Prefix prepended to every media_path (after the grant's own prefix_path).
    #[arg(long, env = "MAXLOFS_PREFIX", default_value = "", value_parser = parse_prefix)]
    pub prefix: String,
    /// File holding the device session key (else MAXLO_DEVICE_SESSION_KEY).
    #[arg(long, env = "MAXLOFS_DEVICE_KEY_FILE")]
    pub device_key_file: Option<PathBuf>,
    /// File holding the user session key (else MAXLO_USER_SESSION_KEY).
    #[arg(long, env = "MAXLOFS_USER_KEY_FILE")]
    pub user_key_file: Option<PathBuf>,
    /// Where the index lives (default: $XDG_STATE_HOME/maxlofs/<mount>).
    #[arg(long, env = "MAXLOFS_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Quiet time after the last change to a path before it is sent.
    #[arg(long, env = "MAXLOFS_SETTLE_MS", default_value_t = 500)]
    pub settle_ms: u64,
    /// Paths synced at once, each making one API request at a time (content PUTs are also
    /// limited by --upload-concurrency and --small-upload-concurrency). A small file's way up is
    /// four dependent round trips (upload, PUT, s3_object, record), so it takes this many paths
    /// in flight to go at the pace of direct record creates; more paths than PUT slots keep the
    /// slots busy while other paths hash, ask, register and create.
    #[arg(long, env = "MAXLOFS_CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,
    /// Entries in the media_id LRU.
    #[arg(long, env = "MAXLOFS_CACHE_ENTRIES", default_value_t = 100_000)]
    pub cache_entries: usize,
    /// Glob of names that stay local, added to the defaults (repeatable; the environment
    /// variable holds one glob). The defaults: lock, swap, backup and temp files of editors and
    /// office suites, partial downloads, rsync temps, the trash at the mount's top.
    #[arg(long = "ignore", env = "MAXLOFS_IGNORE", value_name = "GLOB")]
    pub ignore: Vec<String>,
    /// A default ignore rule to drop, so that the names it matches are sent (repeatable; `all`
    /// drops every default; the environment variable holds one name).
    #[arg(
        long = "no-default-ignore",
        env = "MAXLOFS_NO_DEFAULT_IGNORE",
        value_name = "NAME",
        value_parser = default_ignore_names(),
    )]
    pub no_default_ignore: Vec<String>,
    /// Never send deletes.
    #[arg(long, env = "MAXLOFS_NO_DELETE")]
    pub no_delete: bool,
    /// Mount a BACKING that is another filesystem than the one the index was made for, or
    /// empty while the index holds records, and take it as the library from now on (it was
    /// moved to a new disk, or emptied on purpose). Without it such a mount is refused: most
    /// often the disk that holds BACKING did not mount. Deletes found stay held all the same.
    #[arg(long, env = "MAXLOFS_NEW_BACKING")]
    pub new_backing: bool,
    /// Send records only, never the files' content (what maxlofs did before it uploaded).
    #[arg(long, env = "MAXLOFS_NO_UPLOAD")]
    pub no_upload: bool,
    /// Large content PUTs under way at once (parts, and files over 1 MiB, over all files): the
    /// streams that share the link.
    #[arg(long, env = "MAXLOFS_UPLOAD_CONCURRENCY", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub upload_concurrency: u16,
    /// Small content PUTs (files of at most 1 MiB) under way at once, besides the large ones:
    /// their time is the round trip, so many overlap.
    #[arg(long, env = "MAXLOFS_SMALL_UPLOAD_CONCURRENCY", default_value_t = 32,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub small_upload_concurrency: u16,
    /// Upload rate limit over all uploads, in bytes per second: a number with an optional K, M
    /// or G (KiB, MiB, GiB), e.g. 20M [default: no limit].
    #[arg(long, env = "MAXLOFS_UPLOAD_LIMIT", value_name = "RATE", value_parser = parse_rate)]
    pub upload_limit: Option<u64>,
    /// The most bytes a scrub pass reads per second (K, M or G as for --upload-limit), so that
    /// it does not slow the mount's users; 0: as fast as the disk goes.
    #[arg(long, env = "MAXLOFS_SCRUB_RATE", value_name = "RATE", value_parser = parse_scrub_rate,
          default_value = "32M")]
    pub scrub_rate: u64,
    /// Start a scrub pass this often by itself: a number and s, m, h or d (e.g. 7d) [default:
    /// only when `maxlofs scrub` asks].
    #[arg(long, env = "MAXLOFS_SCRUB_INTERVAL", value_name = "DURATION", value_parser = parse_interval)]
    pub scrub_interval: Option<u64>,
    /// Seconds to keep sending queued work after unmount or SIGTERM.
    #[arg(long, env = "MAXLOFS_DRAIN_TIMEOUT", default_value_t = 30)]
    pub drain_timeout: u64,
    /// Threads serving FUSE requests.
    #[arg(long, env = "MAXLOFS_THREADS", default_value_t = 4)]
    pub threads: usize,
    /// How the kernel's requests reach the daemon: per-CPU io_uring queues (FUSE over io_uring,
    /// which the administrator turns on; see docs/operations.md) or /dev/fuse. `auto` takes
    /// io_uring when the kernel has it on.
    #[arg(long, env = "MAXLOFS_TRANSPORT", value_parser = transport_choices(), default_value = "auto")]
    pub transport: TransportChoice,
    /// Log level [default: RUST_LOG when set, else info].
    #[arg(long, env = "MAXLOFS_LOG_LEVEL", value_enum)]
    pub log_level: Option<LogLevel>,
    /// Where the daemon writes its log (default: $XDG_STATE_HOME/maxlofs/maxlofs.log); in the
    /// foreground, logs go to stderr.
    #[arg(long, env = "MAXLOFS_LOG_FILE")]
    pub log_file: Option<PathBuf>,
}

/// The values `--no-default-ignore` takes: the defaults' names and `all`.
fn default_ignore_names() -> PossibleValuesParser {
    let names = DEFAULT_IGNORES
        .iter()
        .map(|default| PossibleValue::new(default.name).help(default.tool));
    PossibleValuesParser::new(
        std::iter::once(PossibleValue::new(ALL_DEFAULTS).help("every default")).chain(names),
    )
}

/// The values `--transport` takes (the filesystem layer has no command line of its own).
fn transport_choices() -> impl TypedValueParser<Value = TransportChoice> {
    PossibleValuesParser::new([
        PossibleValue::new("auto")
            .help("io_uring when the administrator has enabled it (enable_uring), else /dev/fuse"),
        PossibleValue::new("io-uring").help("io_uring, or no mount"),
        PossibleValue::new("dev-fuse").help("/dev/fuse"),
    ])
    .map(|name| name.parse().expect("one of the possible values"))
}

/// `--prefix`: refused as a usage error, before anything mounts, when no media_path the service
/// accepts can start with it (every file would be refused, 400).
fn parse_prefix(prefix: &str) -> Result<String, String> {
    match maxlofs_api::contract::prefix_fault(prefix) {
        None => Ok(prefix.to_string()),
        Some(fault) => Err(format!("no media_path can start with {prefix:?}: {fault}")),
    }
}

/// `--scrub-rate`: a rate as `parse_rate` reads it, or 0 for no cap.
fn parse_scrub_rate(text: &str) -> Result<u64, String> {
    match text.trim() {
        "0" => Ok(0),
        rate => parse_rate(rate),
    }
}

/// A duration in seconds from a number and a unit: s, m, h or d; more than zero.
pub fn parse_interval(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let unit = text.chars().last().ok_or("an empty duration")?;
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(format!("{text:?}: a number and s, m, h or d, e.g. 7d")),
    };
    let count: u64 = text[..text.len() - 1]
        .parse()
        .map_err(|_| format!("{text:?}: a number and s, m, h or d, e.g. 7d"))?;
    match count.checked_mul(scale) {
        Some(0) => Err(format!("{text:?}: more than zero")),
        Some(secs) => Ok(secs),
        None => Err(format!("{text:?}: too long")),
    }
}

/// A rate in bytes per second: digits, then optionally K, M or G (powers of 1024), any case.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, scale) = match text.char_indices().last() {
        Some((at, unit)) if unit.is_ascii_alphabetic() => {
            let scale = match unit.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("{text:?}: the unit is K, M or G")),
            };
            (&text[..at], scale)
        }
        _ => (text, 1),
    };
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a rate (e.g. 500K, 20M, 1G)"))?;
    match number.checked_mul(scale) {
        Some(0) | None => Err(format!(
            "{text:?}: the rate must be above 0 and fit 64 bits"
        )),
        Some(rate) => Ok(rate),
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    #[value(alias = "errors")]
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn filter(self) -> tracing_subscriber::EnvFilter {
        let level = match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        };
        // Other crates' info and debug output (hyper, rustls, ...) is noise to an operator;
        // `maxlofs` names every crate of ours too (maxlofs_sync, ...): targets match by prefix.
        let others = if self > LogLevel::Warn { "warn" } else { level };
        tracing_subscriber::EnvFilter::new(format!("{others},maxlofs={level}"))
    }
}

/// `maxlofs grants`. `api` and `device_key_file` are settings of `mount` too, read from the same
/// places (see `config`).
#[derive(Args, Debug, Clone)]
pub struct GrantsArgs {
    /// Base URL of the Maxlo API (or the emulator).
    #[arg(long, env = "MAXLOFS_API", default_value = "http://127.0.0.1:8700")]
    pub api: String,
    /// File holding the device session key (else MAXLO_DEVICE_SESSION_KEY).
    #[arg(long, env = "MAXLOFS_DEVICE_KEY_FILE")]
    pub device_key_file: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub config_file: ConfigFileArgs,
}

#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    pub mountpoint: PathBuf,
    /// Wait until nothing is pending or in flight; exit 3 if paths failed meanwhile.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds (exit 1).
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// How `verify`, `scrub` and `restore` reach the index and the service when FOLDER is a backing
/// folder that is not mounted. On a live mount they are not needed: its daemon holds the index and
/// the key, and does the work.
#[derive(Args, Debug, Clone)]
pub struct UnmountedArgs {
    /// Base URL of the Maxlo API (or the emulator).
    #[arg(long, env = "MAXLOFS_API", default_value = "http://127.0.0.1:8700")]
    pub api: String,
    /// Media grant: its id or its name (a name is looked up in the service).
    #[arg(long, env = "MAXLOFS_GRANT", default_value = "1")]
    pub grant: String,
    /// File holding the device session key (else MAXLO_DEVICE_SESSION_KEY).
    #[arg(long, env = "MAXLOFS_DEVICE_KEY_FILE")]
    pub device_key_file: Option<PathBuf>,
    /// Where the mount's index lives (default: as for `mount`).
    #[arg(long, env = "MAXLOFS_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

/// `maxlofs scrub FOLDER`.
#[derive(Args, Debug)]
pub struct ScrubArgs {
    /// A maxlofs mount point, or the backing folder of a mount that is not mounted.
    pub folder: PathBuf,
    /// Restore each damaged file from Maxlo after the pass.
    #[arg(long)]
    pub repair: bool,
    /// The most bytes read per second, for an unmounted folder (a mount scrubs at its own
    /// --scrub-rate): a number with an optional K, M or G; 0 for no cap.
    #[arg(long, value_parser = parse_scrub_rate)]
    pub scrub_rate: Option<u64>,
    #[command(flatten)]
    pub unmounted: UnmountedArgs,
}

/// `maxlofs restore FOLDER`.
#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["corrupted", "paths"]))]
pub struct RestoreArgs {
    /// A maxlofs mount point, or the backing folder of a mount that is not mounted.
    pub folder: PathBuf,
    /// Every file scrub found damaged.
    #[arg(long)]
    pub corrupted: bool,
    /// The PATHs are files deleted since they were synced: each comes back from its last record
    /// (the index keeps the last 100,000 deletes), where nothing stands now.
    #[arg(long, requires = "paths", conflicts_with = "corrupted")]
    pub deleted: bool,
    /// Files to restore, relative to FOLDER's root or under FOLDER.
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub unmounted: UnmountedArgs,
}

/// A mount refused for what it was asked to mount, before anything was mounted: a key the
/// service refuses, a disabled device, a grant it does not have or that cannot be mounted, a
/// prefix no media_path can start with, a state folder or log file that a symlink or another
/// user put there. Added as context to the error; `maxlofs mount` then
/// exits with 2, as for a usage error, not 1.
#[derive(Debug)]
pub struct NotMounted;

impl std::fmt::Display for NotMounted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not mounted")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrub_rate_of_zero_is_no_cap_and_others_read_as_rates() {
        assert_eq!(parse_scrub_rate("0"), Ok(0));
        assert_eq!(parse_scrub_rate("32M"), Ok(32 << 20));
        assert!(parse_scrub_rate("fast").is_err());
    }

    #[test]
    fn intervals_take_a_unit_and_are_more_than_zero() {
        assert_eq!(parse_interval("7d"), Ok(7 * 86_400));
        assert_eq!(parse_interval("90m"), Ok(5_400));
        assert_eq!(parse_interval("12h"), Ok(43_200));
        assert_eq!(parse_interval("30s"), Ok(30));
        for bad in ["", "7", "0d", "d", "7w", "-1h", "99999999999999999999d"] {
            assert!(parse_interval(bad).is_err(), "{bad:?}");
        }
    }
}
