//! `maxlofs mount`: checks the key and grant, opens the index, starts the sync engine, serves the
//! filesystem until it is unmounted or signalled, then drains what is queued.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use std::ffi::{CString, OsStr};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};

use crate::args::{MountArgs, NotMounted};
use crate::keys::KeySource;
use maxlofs_api::http::{HttpApi, Timeouts};
use maxlofs_api::{ApiError, GrantId, Keys, MediaApi};
use maxlofs_fs::sys;
use maxlofs_fs::{MountConfig, OpenWriters};
use maxlofs_sync::ignore::IgnoreRules;
use maxlofs_sync::index::Index;
use maxlofs_sync::local::Backing;
use maxlofs_sync::upload::ENCRYPTED_GRANT;
use maxlofs_sync::{Engine, SyncConfig};

/// Default state folder: `$XDG_STATE_HOME/maxlofs/<backing path>-g<grant>`.
pub fn default_state_dir(backing: &Path, grant: GrantId) -> anyhow::Result<PathBuf> {
    let base = crate::config::xdg_dir("XDG_STATE_HOME", ".local/state")
        .context("neither XDG_STATE_HOME nor HOME is set")?;
    let name: String = backing
        .to_string_lossy()
        .trim_start_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok(base.join("maxlofs").join(format!("{name}-g{grant}")))
}

/// The grant's prefix_path: recorded in the state folder when the service gives it, read back from
/// there while it cannot be reached (empty if it never could). One that no media_path can start
/// with, from the service or the file, is refused (`NotMounted`) and not recorded; a file that
/// cannot be read is an error, not an empty prefix: the mount would send every path elsewhere.
fn grant_prefix(state: &StateDir, fresh: Option<String>) -> anyhow::Result<String> {
    const NAME: &str = "grant-prefix-path";
    let file = state.path.join(NAME);
    let refused = |prefix: &str, fault: &str, source: &str| {
        anyhow::anyhow!(
            "the grant's prefix_path {prefix:?} ({source}) cannot start a media_path: {fault}"
        )
        .context(NotMounted)
    };
    match fresh {
        Some(prefix) => {
            if let Some(fault) = maxlofs_api::contract::prefix_fault(&prefix) {
                return Err(refused(&prefix, fault, "as the service gives it"));
            }
            state
                .private_file(NAME, true)
                .and_then(|mut out| out.write_all(prefix.as_bytes()))
                .with_context(|| format!("recording {}", state.path.join(NAME).display()))?;
            Ok(prefix)
        }
        None => {
            let mut prefix = String::new();
            let read = state
                .open(NAME, libc::O_RDONLY, 0)
                .and_then(|mut recorded| recorded.read_to_string(&mut prefix));
            match read {
                Ok(_) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => prefix.clear(),
                Err(err) => {
                    return Err(err).with_context(|| {
                        format!(
                            "reading the grant's prefix_path recorded in {} (the service cannot \
                             be reached to give it)",
                            file.display()
                        )
                    })
                }
            }
            match maxlofs_api::contract::prefix_fault(&prefix) {
                Some(fault) => Err(refused(&prefix, fault, &format!("in {}", file.display()))),
                None => Ok(prefix),
            }
        }
    }
}

/// The state folder, opened once without following a symlink at its name: every file in it is
/// opened relative to this descriptor, and never through a symlink either.
pub(crate) struct StateDir {
    pub(crate) path: PathBuf,
    fd: File,
}

impl StateDir {
    /// Opens `name` in the state folder with `flags` (created with `mode`), refusing a symlink.
    pub(crate) fn open(&self, name: &str, flags: i32, mode: libc::mode_t) -> std::io::Result<File> {
        let name = CString::new(name).expect("no NUL in a state file's name");
        sys::openat(self.fd.as_fd(), &name, flags | libc::O_NOFOLLOW, mode)
            .map(File::from)
            .map_err(|err| std::io::Error::from_raw_os_error(err.code()))
    }

    /// Opens `name` for writing, created 0600 if absent (emptied first if `truncate`).
    fn private_file(&self, name: &str, truncate: bool) -> std::io::Result<File> {
        let truncate = if truncate { libc::O_TRUNC } else { 0 };
        self.open(name, libc::O_WRONLY | libc::O_CREAT | truncate, 0o600)
    }
}

/// (st_dev, st_ino): what a folder is, whatever path names it.
fn file_id(path: &Path) -> anyhow::Result<(u64, u64)> {
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    Ok((meta.dev(), meta.ino()))
}

/// Refuses a state folder inside the backing folder (it would be synced as media, and each
/// index write would change the tree again), whatever path names it: symlinks and `..` are
/// resolved, and each folder on the way up is compared by (st_dev, st_ino), which a bind mount
/// of the backing folder shares with it.
fn refuse_state_inside_backing(state_dir: &Path, backing: &Path) -> anyhow::Result<()> {
    let within = backing_at_or_above(state_dir, backing)
        .with_context(|| format!("state folder {}", state_dir.display()))?;
    if let Some(folder) = within {
        bail!(
            "the state folder {} is inside the backing folder {} (as {}): it would be synced as \
             media; choose a --state-dir outside it",
            state_dir.display(),
            backing.display(),
            folder.display()
        );
    }
    Ok(())
}

/// A mountpoint below the backing folder would put the mount inside itself: the daemon, reading
/// the backing folder, would reach its own mount there and wait on itself for good (and its
/// users with it). The backing folder itself may be the mountpoint: the daemon reads it through
/// a descriptor opened before the mount covers it.
fn refuse_mountpoint_inside_backing(mountpoint: &Path, backing: &Path) -> anyhow::Result<()> {
    let resolved = std::fs::canonicalize(mountpoint)
        .with_context(|| format!("mountpoint {}", mountpoint.display()))?;
    let Some(parent) = resolved.parent() else {
        return Ok(());
    };
    if let Some(folder) = backing_at_or_above(parent, backing)? {
        bail!(
            "the mountpoint {} is inside the backing folder {} (as {}): the mount would hold \
             itself; choose a mountpoint outside it, or the backing folder itself",
            mountpoint.display(),
            backing.display(),
            folder.display()
        );
    }
    Ok(())
}

/// The folder at `path` or above it that is the backing folder, if any, as the kernel resolves
/// the path (symlinks, `..`, bind mounts).
fn backing_at_or_above(path: &Path, backing: &Path) -> anyhow::Result<Option<PathBuf>> {
    let backing_id = file_id(backing)?;
    // The deepest part of the path that exists, resolved by the kernel. The parts below it do
    // not exist yet, so none of them can be the backing folder.
    let mut existing = std::path::absolute(path)?;
    while !existing.exists() && existing.pop() {}
    let resolved = std::fs::canonicalize(&existing)?;
    for folder in resolved.ancestors() {
        if file_id(folder)? == backing_id {
            return Ok(Some(folder.to_path_buf()));
        }
    }
    Ok(None)
}

/// Opens the state folder, created 0700 with its parents if absent. It holds what was sent where,
/// and the grant's prefix: 0700, and everything in it 0600 (folders 0700), whatever an older
/// version, a restore or an editor left there. A symlink at its name is refused, not followed (in
/// a shared folder such as /tmp another user can plant one), and so is a folder or an entry in it
/// that belongs to another user, before any mode is changed: that user could widen the modes
/// again, and the modes of what is not ours are not ours to change.
pub(crate) fn open_state_dir(state_dir: &Path) -> anyhow::Result<StateDir> {
    // A trailing slash would make the kernel follow a symlink at the last name.
    let path: PathBuf = state_dir.components().collect();
    let creating = || format!("creating state folder {}", path.display());
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .with_context(creating)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(&path) {
        Err(err) if err.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(err).with_context(creating)
        }
        _ => {}
    }
    let fd = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(&path);
    let fd = match fd {
        Ok(fd) => fd,
        Err(err) if matches!(err.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
            return Err(anyhow::anyhow!(
                "the state folder {} is a symlink or not a folder: maxlofs does not follow it \
                 (another user may have put it there); remove it or choose another --state-dir",
                path.display()
            )
            .context(NotMounted))
        }
        Err(err) => {
            return Err(err).with_context(|| format!("opening state folder {}", path.display()))
        }
    };
    let state = StateDir { path, fd };
    let reading = || format!("reading state folder {}", state.path.display());
    let folder = state.fd.metadata().with_context(reading)?;
    refuse_not_ours(&state.path, "the state folder", &folder)?;
    // Looked through before any change, and again once no other user can add to it.
    state.make_entries_private(false)?;
    if folder.mode() & 0o7777 != 0o700 {
        sys::fchmod(state.fd.as_fd(), 0o700)
            .map_err(|err| std::io::Error::from_raw_os_error(err.code()))
            .with_context(|| format!("cannot make {} private (mode 700)", state.path.display()))?;
    }
    state.make_entries_private(true)?;
    Ok(state)
}

impl StateDir {
    /// Refuses an entry of another user's; then, if `change`, makes files 0600 and folders 0700.
    fn make_entries_private(&self, change: bool) -> anyhow::Result<()> {
        let reading = || format!("reading state folder {}", self.path.display());
        let listed = sys::proc_fd_path(self.fd.as_fd());
        for entry in
            std::fs::read_dir(OsStr::from_bytes(listed.as_bytes())).with_context(reading)?
        {
            let entry = entry.with_context(reading)?;
            let path = self.path.join(entry.file_name());
            // Not following symlinks: what a link points at is not ours to change.
            let meta = entry.metadata().with_context(reading)?;
            refuse_not_ours(&path, "in the state folder", &meta)?;
            let mode = match meta.file_type() {
                kind if kind.is_dir() => 0o700,
                kind if kind.is_file() => 0o600,
                _ => continue,
            };
            if change && meta.mode() & 0o7777 != mode {
                sys::c_name(&entry.file_name())
                    .and_then(|name| sys::open_path(self.fd.as_fd(), &name))
                    .and_then(|entry| sys::chmod_fd(entry.as_fd(), mode))
                    .map_err(|err| std::io::Error::from_raw_os_error(err.code()))
                    .with_context(|| {
                        format!("cannot make {} private (mode {mode:o})", path.display())
                    })?;
            }
        }
        Ok(())
    }
}

/// Refuses what belongs to another user than the daemon's: its modes are that user's to set.
fn refuse_not_ours(path: &Path, what: &str, meta: &std::fs::Metadata) -> anyhow::Result<()> {
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(anyhow::anyhow!(
            "{} ({what}) belongs to uid {}, but maxlofs runs as uid {me}: give it to this user \
             (chown) or choose another --state-dir",
            path.display(),
            meta.uid()
        )
        .context(NotMounted));
    }
    Ok(())
}

/// How long the start-up check of key and grant may take in all. A service that accepts
/// connections but never answers would otherwise hold `mount` for a request timeout per call.
const SERVICE_CHECK_BUDGET: Duration = Duration::from_secs(15);

/// The wait before asking again a service that answered as one in trouble does, doubled after
/// each such answer up to `SERVICE_CHECK_RETRY_MAX`: within the budget, a service failing a third
/// of its calls is asked about ten times, and the chance that all of them fail is negligible.
const SERVICE_CHECK_RETRY_FIRST: Duration = Duration::from_millis(100);
const SERVICE_CHECK_RETRY_MAX: Duration = Duration::from_secs(2);

/// What the start-up check found out.
enum ServiceCheck {
    /// The key is accepted and the grant can be mounted: its id and prefix_path, and what the
    /// service says of uploads.
    Online {
        grant: GrantId,
        prefix_path: String,
        uploads: UploadFacts,
    },
    /// The service did not answer (in time): the mount works offline and catches up later.
    Offline,
}

/// Checks key and grant before anything is mounted, within `SERVICE_CHECK_BUDGET`: a refused
/// key, a disabled device, or a grant that cannot be mounted is an error; a service that stays
/// unreachable, or in trouble, for the whole budget is only a warning.
async fn check_service(api: &dyn MediaApi, wanted: &str) -> anyhow::Result<ServiceCheck> {
    let offline = |why: &dyn std::fmt::Display| {
        crate::daemonize::warn_at_start(&format!(
            "the service cannot be reached ({why}); mounting offline, changes will be sent when it is back"
        ));
        ServiceCheck::Offline
    };
    let deadline = tokio::time::Instant::now() + SERVICE_CHECK_BUDGET;
    let still_in_trouble = |err: &ApiError| {
        format!(
            "{err}, still after {} s of asking",
            SERVICE_CHECK_BUDGET.as_secs()
        )
    };
    let check = async {
        let device_upload_disabled =
            match ask_until_answered(deadline, || api.current_device()).await {
                // The device's name is the service's text: shown escaped.
                Ok(device) if device.is_disabled => {
                    bail!("device {:?} is disabled", device.device_name)
                }
                Ok(device) => {
                    tracing::info!("device {:?} ({})", device.device_name, device.device_id);
                    device.is_upload_disabled
                }
                Err(ApiError::Unauthorized) => bail!("the service refused the device key (403)"),
                Err(err) if err.is_transient() => return Ok(offline(&still_in_trouble(&err))),
                Err(err) => bail!("checking the device: {err}"),
            };
        let grants = match ask_until_answered(deadline, || api.media_grants()).await {
            Ok(grants) => grants,
            Err(err) if err.is_transient() => return Ok(offline(&still_in_trouble(&err))),
            Err(err) => return Err(crate::grants::listing_failed(err)),
        };
        let (grant, record) = crate::grants::grant_in(&grants, wanted)?;
        Ok(ServiceCheck::Online {
            grant,
            prefix_path: record.prefix_path,
            uploads: UploadFacts {
                device_upload_disabled,
                encrypted: record.volume_encryption_key.is_some(),
            },
        })
    };
    match tokio::time::timeout_at(deadline, check).await {
        Ok(checked) => checked,
        Err(_) => Ok(offline(&format_args!(
            "no answer within {} s",
            SERVICE_CHECK_BUDGET.as_secs()
        ))),
    }
}

/// `ask`s until the service answers other than transiently (a 5xx, a timeout, a refused or
/// dropped connection: `ApiError::Transient`), waiting longer before each new try; the last
/// transient error when the next try would start past `deadline`.
async fn ask_until_answered<T, F, Answer>(
    deadline: tokio::time::Instant,
    mut ask: F,
) -> Result<T, ApiError>
where
    F: FnMut() -> Answer,
    Answer: std::future::Future<Output = Result<T, ApiError>>,
{
    let mut wait = SERVICE_CHECK_RETRY_FIRST;
    loop {
        match ask().await {
            Err(err) if err.is_transient() && tokio::time::Instant::now() + wait < deadline => {
                tracing::info!("at start: {err}; asking again in {wait:?}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(SERVICE_CHECK_RETRY_MAX);
            }
            answer => return answer,
        }
    }
}

/// What the start-up check learned of uploads.
struct UploadFacts {
    device_upload_disabled: bool,
    encrypted: bool,
}

/// How this mount sends content. `facts` is `None` when the service could not be checked at
/// mount: then a grant's encryption is checked before its first upload.
fn upload_config(
    args: &MountArgs,
    api: &Arc<HttpApi>,
    facts: Option<&UploadFacts>,
) -> anyhow::Result<maxlofs_sync::UploadConfig> {
    use maxlofs_sync::UploadConfig;
    let why = if args.no_upload {
        Some("--no-upload")
    } else if facts.is_some_and(|f| f.encrypted) {
        Some(ENCRYPTED_GRANT)
    } else if facts.is_some_and(|f| f.device_upload_disabled) {
        Some("uploads are disabled by the service (the device's is_upload_disabled)")
    } else {
        None
    };
    if let Some(why) = why {
        let records_only = format!("records only, no content is uploaded: {why}");
        match args.no_upload {
            true => tracing::info!("{records_only}"),
            // Not what the user asked for: said where they look.
            false => crate::daemonize::warn_at_start(&records_only),
        }
        return Ok(UploadConfig::records_only(why));
    }
    let client = maxlofs_api::content_client::ContentClient::new(api.clone())?;
    Ok(UploadConfig {
        api: Some(Arc::new(client)),
        records_only: None,
        concurrency: args.upload_concurrency.into(),
        small_concurrency: args.small_upload_concurrency.into(),
        limit: args.upload_limit,
        grant_unchecked: facts.is_none(),
    })
}

/// `--concurrency`, lowered where the descriptor limit cannot hold it: each look may hold the file
/// it hashes or sends and a connection, the inode table takes half the limit
/// (`fs::passthrough`), and the rest must still serve the files programs open through the mount,
/// so the looks get at most a quarter of it. A limit the daemon cannot lift (256 without
/// CAP_SYS_RESOURCE) would otherwise make opens through the mount fail with EMFILE.
fn looks_within_descriptors(wanted: usize) -> usize {
    maxlofs_fs::sys::raise_nofile_limit();
    let limit = maxlofs_fs::sys::nofile_limit();
    let most = (limit / 8).max(1);
    if wanted > most {
        tracing::info!(
            "{most} paths synced at once, not {wanted}: the open-file limit is {limit} \
             (ulimit -n; each path may hold a file and a connection)"
        );
    }
    wanted.min(most)
}

/// SIGTERM and SIGINT: each unmounts, and the daemon then sends what is queued. Registered
/// before the mount, so that no signal meets the default action (an exit that leaves a dead
/// mount) in between.
struct StopSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Within the runtime's context.
    fn register() -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn unmount_at_first(mut self, stopper: maxlofs_fs::MountStopper) {
        let signal = tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        };
        tracing::info!(signal, "signal received; unmounting");
        stopper.stop();
    }
}

/// While sending is paused by a refused key, re-reads the keys every second and resumes as soon as
/// they change; SIGHUP re-reads them and resumes at once.
fn watch_keys(engine: Arc<Engine>, api: Arc<HttpApi>, keys: KeySource, mut current: Keys) {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .expect("SIGHUP handler");
    tokio::spawn(async move {
        loop {
            let forced = tokio::select! {
                _ = hangup.recv() => true,
                _ = tokio::time::sleep(Duration::from_secs(1)) => false,
            };
            if !forced && !engine.is_paused() {
                continue;
            }
            match keys.load() {
                Ok(fresh) if forced || fresh != current => {
                    tracing::info!("keys re-read");
                    api.set_keys(fresh.clone());
                    current = fresh;
                    engine.resume();
                }
                Ok(_) => {}
                Err(err) => tracing::warn!("re-reading keys: {err:#}"),
            }
        }
    });
}

/// Makes the daemon not dumpable, before it reads a key: no core dump then holds the keys, and
/// no other process of its user may read its memory (ptrace, /proc/PID/mem or environ, which the
/// kernel gives to root once a process is not dumpable).
fn refuse_dumps_and_tracing() -> anyhow::Result<()> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .context("prctl(PR_SET_DUMPABLE, 0)")
}

pub fn run(args: &MountArgs) -> anyhow::Result<()> {
    refuse_dumps_and_tracing()?;
    let backing_path = std::fs::canonicalize(&args.backing)
        .with_context(|| format!("backing folder {}", args.backing.display()))?;
    let backing = Backing::open(&backing_path)?;
    if !args.mountpoint.is_dir() {
        bail!(
            "mountpoint {} is not a directory",
            args.mountpoint.display()
        );
    }
    refuse_mountpoint_inside_backing(&args.mountpoint, &backing_path)?;
    let ignore = IgnoreRules::new(&args.ignore, &args.no_default_ignore)?;
    let key_source = KeySource::new(args.device_key_file.clone(), args.user_key_file.clone());
    let keys = key_source.load()?;
    let sync_nice = sync_threads_nice();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("maxlofs-sync")
        .on_thread_start(move || yield_to_filesystem_threads(sync_nice))
        .build()?;
    let api = Arc::new(HttpApi::new(&args.api, keys.clone(), Timeouts::default())?);
    let checked = runtime
        .block_on(check_service(api.as_ref(), &args.grant))
        .context(NotMounted)?;
    let (grant, fresh_prefix, upload_facts) = match checked {
        ServiceCheck::Online {
            grant,
            prefix_path,
            uploads,
        } => (grant, Some(prefix_path), Some(uploads)),
        // Offline, a grant id still mounts, with the prefix_path recorded at its last mount; a
        // name cannot be looked up.
        ServiceCheck::Offline => match args.grant.parse() {
            Ok(grant) => (grant, None, None),
            Err(_) => bail!(
                "the service cannot be reached, and a grant name is looked up in it; give the grant id to mount while it is unreachable"
            ),
        },
    };
    let state_dir = match &args.state_dir {
        Some(dir) => dir.clone(),
        None => default_state_dir(&backing_path, grant)?,
    };
    refuse_state_inside_backing(&state_dir, &backing_path)?;
    let state = open_state_dir(&state_dir)?;
    let grant_prefix = grant_prefix(&state, fresh_prefix)?;
    let prefix = crate::grants::join_prefix(&grant_prefix, &args.prefix);

    let identity = format!("{} grant {} prefix {:?}", args.api, grant, prefix);
    let index_file = state.path.join("index.db");
    // Created 0600 before SQLite opens it: its -wal and -shm files take the database's mode.
    // SQLite opens it by name, in the folder checked above, which no other user can write to.
    state
        .private_file("index.db", false)
        .with_context(|| format!("creating {}", index_file.display()))?;
    let index = Index::open(&index_file, &identity, args.cache_entries).map_err(|err| {
        let why = index_trouble(&err, &index_file);
        err.context(format!(
            "cannot open the index in {} ({why})",
            state_dir.display()
        ))
    })?;
    check_backing_identity(&backing, &index, args.new_backing)?;
    let config = SyncConfig {
        grant,
        prefix,
        settle: Duration::from_millis(args.settle_ms),
        concurrency: looks_within_descriptors(args.concurrency),
        no_delete: args.no_delete,
        ignore,
        upload: upload_config(args, &api, upload_facts.as_ref())?,
        heal: maxlofs_sync::HealConfig {
            scrub: maxlofs_sync::scrub::ScrubConfig {
                bytes_per_sec: std::num::NonZeroU64::new(args.scrub_rate),
            },
            scrub_interval: args.scrub_interval.map(Duration::from_secs),
            content: Some(Arc::new(maxlofs_api::content_client::ContentClient::new(
                api.clone(),
            )?)),
        },
    };
    let writers = Arc::new(OpenWriters::default());
    let engine = Engine::new(config, api.clone(), index, backing, writers.clone());
    {
        let _entered = runtime.enter();
        engine.start();
        watch_keys(engine.clone(), api, key_source, keys);
    }

    let mut mount = MountConfig::new(backing_path, args.mountpoint.clone(), engine.event_sink());
    mount.read_only = args.read_only;
    mount.allow_other = args.allow_other;
    mount.threads = args.threads.max(1);
    mount.transport = args.transport;
    mount.status = Some(engine.clone());
    mount.writers = writers;
    let stop_signals = {
        let _entered = runtime.enter();
        StopSignals::register().context("registering for SIGTERM and SIGINT")?
    };
    let handle = maxlofs_fs::spawn_mount(mount).context("mounting")?;
    tracing::info!("mounted {:?} at {:?}", args.backing, args.mountpoint);
    crate::daemonize::notify_ready();
    runtime.spawn(stop_signals.unmount_at_first(handle.stopper()));
    handle
        .serve_until_unmounted()
        .context("serving the mount")?;

    engine.session_ended();
    let timeout = Duration::from_secs(args.drain_timeout);
    tracing::info!("unmounted; sending what is queued (up to {timeout:?})");
    if runtime.block_on(engine.drain(timeout)) {
        tracing::info!("everything sent");
    } else {
        let status = engine.status();
        tracing::warn!(
            "{} paths not sent yet; the next mount catches them up",
            status.pending + status.in_flight
        );
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// The index's note of what its backing folder is (`Backing::identity`).
const BACKING_NOTE: &str = "backing";

/// Refuses a backing folder that is not the one the index's records are of: empty while the
/// index holds records, or on another filesystem (or another folder) than at the last mount.
/// Mounted, either would make the start's reconcile take every record for deleted. Noted anew
/// once accepted: an index from before this check adopts the folder it finds.
pub(crate) fn check_backing_identity(
    backing: &Backing,
    index: &Index,
    accept_new: bool,
) -> anyhow::Result<()> {
    let shown = backing.path().display();
    let now = backing
        .identity()
        .with_context(|| format!("reading what filesystem {shown} is on"))?;
    let records = index.count();
    if records > 0 && !accept_new {
        let how = "Nothing was deleted. If this is intended (the library moved to a new disk, or \
                   was emptied on purpose), mount with --new-backing: deletes found at start are \
                   still held for `maxlofs release-deletes`";
        if backing
            .is_empty()
            .with_context(|| format!("listing {shown}"))?
        {
            bail!(
                "the backing folder {shown} is empty, while the index holds {records} records of \
                 its files: most often the disk or share that holds it did not mount. {how}"
            );
        }
        if let Some(was) = index.note(BACKING_NOTE)?.filter(|was| *was != now) {
            bail!(
                "the backing folder {shown} is not the one this index was made for (it was on \
                 {was}; it is now on {now}): most often another disk, or the folder beneath a \
                 disk that did not mount. {how}"
            );
        }
    }
    index.set_note(BACKING_NOTE, &now)
}

/// What a user can do about an index that would not open.
pub(crate) fn index_trouble(err: &anyhow::Error, index_file: &Path) -> String {
    use rusqlite::ErrorCode;
    let code = err
        .downcast_ref::<rusqlite::Error>()
        .and_then(rusqlite::Error::sqlite_error_code);
    match code {
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => format!(
            "it is damaged; moving {} aside makes the next mount rebuild it from the tree and \
             the service's answers, though a file removed while unmounted would then keep its \
             record",
            index_file.display()
        ),
        _ => "is another maxlofs mount using this state folder?".into(),
    }
}

/// The nice value of the sync threads: 10 above the daemon's own, so a daemon started under `nice`
/// keeps its sync threads below itself. Read on the thread that builds the runtime.
fn sync_threads_nice() -> i32 {
    const SYNC_NICE_INCREMENT: i32 = 10;
    // On Linux, `None` (`who` 0) is the calling thread, which may always ask its own; -1 is what
    // libc's getpriority answered for a failure too.
    let own = rustix::process::getpriority_process(None).unwrap_or(-1);
    (own + SYNC_NICE_INCREMENT).min(19)
}

/// Catalog work (hashing, index writes, uploads) runs at a lower CPU priority than the threads
/// serving the mount, so a user's `cp` or `tar` never waits behind it; it still gets every
/// cycle they leave idle. Set absolutely: a thread started by a sync thread has inherited the
/// lowered value already, and a relative step would lower it again.
fn yield_to_filesystem_threads(nice: i32) {
    // On Linux the nice value is per thread: `None` (`who` 0) is the calling thread.
    if let Err(e) = rustix::process::setpriority_process(None, nice) {
        tracing::debug!("could not lower the sync threads' priority: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_folder_is_inside_the_backing_folder_by_what_the_kernel_resolves() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let backing = root.join("backing");
        std::fs::create_dir_all(backing.join("sub")).unwrap();
        std::fs::create_dir(root.join("other")).unwrap();
        std::os::unix::fs::symlink(&backing, root.join("to-backing")).unwrap();
        let inside = [
            "backing/state",
            "backing/sub",
            "backing",
            "other/../backing/new/state",
            "to-backing/state",
            "backing/missing/../state",
        ];
        for state in inside {
            let err = refuse_state_inside_backing(&root.join(state), &backing).unwrap_err();
            assert!(
                err.to_string().contains("is inside the backing folder"),
                "{state}: {err:#}"
            );
        }
        // `..` leads out of the backing folder here, though the path starts inside it.
        let outside = ["other/state", "backing/sub/../../other/state", "state"];
        for state in outside {
            refuse_state_inside_backing(&root.join(state), &backing)
                .unwrap_or_else(|err| panic!("{state}: {err:#}"));
        }
    }

    #[test]
    fn the_grant_prefix_is_read_back_only_as_a_prefix_a_media_path_can_start_with() {
        let dir = tempfile::tempdir().unwrap();
        let state = &open_state_dir(&dir.path().join("state")).unwrap();
        let file = state.path.join("grant-prefix-path");
        let refused = |err: anyhow::Error| {
            assert!(err.downcast_ref::<NotMounted>().is_some(), "{err:#}");
            format!("{err:#}")
        };
        assert_eq!(grant_prefix(state, None).unwrap(), "", "never recorded");
        let photos = "/volumes/photos/".to_string();
        assert_eq!(grant_prefix(state, Some(photos.clone())).unwrap(), photos);
        assert_eq!(grant_prefix(state, None).unwrap(), photos);

        let err = refused(grant_prefix(state, Some("../up".into())).unwrap_err());
        assert!(err.contains("as the service gives it"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            photos,
            "not recorded"
        );

        std::fs::write(&file, "a//b").unwrap();
        let err = refused(grant_prefix(state, None).unwrap_err());
        assert!(err.contains("cannot start a media_path"), "{err}");
        // Not read as no prefix at all: every path would be sent elsewhere.
        std::fs::write(&file, b"volumes/\xff").unwrap();
        let err = grant_prefix(state, None).unwrap_err();
        assert!(
            format!("{err:#}").contains("reading the grant's prefix_path"),
            "{err:#}"
        );
    }

    #[test]
    fn a_mountpoint_below_the_backing_folder_is_refused_and_the_folder_itself_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let backing = root.join("backing");
        std::fs::create_dir_all(backing.join("sub/deeper")).unwrap();
        std::fs::create_dir(root.join("other")).unwrap();
        std::os::unix::fs::symlink(&backing, root.join("to-backing")).unwrap();
        for mountpoint in ["backing/sub", "backing/sub/deeper", "to-backing/sub"] {
            let err =
                refuse_mountpoint_inside_backing(&root.join(mountpoint), &backing).unwrap_err();
            assert!(
                err.to_string().contains("the mount would hold itself"),
                "{mountpoint}: {err:#}"
            );
        }
        for mountpoint in ["backing", "to-backing", "other", "backing/sub/../../other"] {
            refuse_mountpoint_inside_backing(&root.join(mountpoint), &backing)
                .unwrap_or_else(|err| panic!("{mountpoint}: {err:#}"));
        }
    }
}
