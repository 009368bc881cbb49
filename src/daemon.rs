//! `maxlofs mount`: checks the key and grant, opens the index, starts the sync engine, serves the
//! filesystem until it is unmounted or signalled, then drains what is queued.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use std::os::unix::fs::DirBuilderExt;

use crate::api::http::{HttpApi, Timeouts};
use crate::api::{ApiError, GrantId, Keys, MediaApi, SecretKey};
use crate::cli::MountArgs;
use crate::fs::{MountConfig, OpenWriters};
use crate::sync::ignore::IgnoreRules;
use crate::sync::index::Index;
use crate::sync::local::Backing;
use crate::sync::upload::ENCRYPTED_GRANT;
use crate::sync::{Engine, SyncConfig};

/// Where the keys come from: files (re-read when they change) or the environment.
#[derive(Clone)]
pub struct KeySource {
    device_file: Option<PathBuf>,
    user_file: Option<PathBuf>,
}

const DEVICE_KEY_ENV: &str = "MAXLO_DEVICE_SESSION_KEY";
const USER_KEY_ENV: &str = "MAXLO_USER_SESSION_KEY";

fn read_key(file: Option<&Path>, env: &str, what: &str) -> anyhow::Result<Option<SecretKey>> {
    let value = match file {
        Some(file) => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the {what} key file {}", file.display()))?,
        None => match std::env::var(env) {
            Ok(value) => value,
            Err(_) => return Ok(None),
        },
    };
    let value = value.trim();
    if value.is_empty() {
        bail!("the {what} key is empty");
    }
    Ok(Some(SecretKey::new(value)))
}

impl KeySource {
    pub fn new(device_file: Option<PathBuf>, user_file: Option<PathBuf>) -> Self {
        KeySource {
            device_file,
            user_file,
        }
    }

    pub fn load(&self) -> anyhow::Result<Keys> {
        let device = read_key(self.device_file.as_deref(), DEVICE_KEY_ENV, "device")?
            .with_context(|| {
                format!("no device key: pass --device-key-file FILE or set {DEVICE_KEY_ENV}")
            })?;
        let user = read_key(self.user_file.as_deref(), USER_KEY_ENV, "user")?;
        Ok(Keys { device, user })
    }
}

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
/// there while it cannot be reached (empty if it never could).
fn grant_prefix(state_dir: &Path, fresh: Option<String>) -> anyhow::Result<String> {
    let file = state_dir.join("grant-prefix-path");
    match fresh {
        Some(prefix) => {
            std::fs::write(&file, &prefix)
                .with_context(|| format!("recording {}", file.display()))?;
            Ok(prefix)
        }
        None => Ok(std::fs::read_to_string(&file).unwrap_or_default()),
    }
}

/// Checks key and grant before anything is mounted: a refused key or an unknown grant is an error;
/// a service that cannot be reached is only a warning (the mount works offline and catches up).
/// Answers what it learned of uploads (`None` where the service could not be reached).
async fn check_service(api: &dyn MediaApi, grant: GrantId) -> anyhow::Result<ServiceFacts> {
    let mut facts = ServiceFacts::default();
    let offline = |err: &ApiError| {
        tracing::warn!("the service cannot be reached ({err}); mounting offline, changes will be sent when it is back");
    };
    match api.current_device().await {
        Ok(device) if device.is_disabled => bail!("device {} is disabled", device.device_name),
        Ok(device) => {
            tracing::info!("device {} ({})", device.device_name, device.device_id);
            facts.device_upload_disabled = Some(device.is_upload_disabled);
        }
        Err(ApiError::Unauthorized) => bail!("the service refused the device key (403)"),
        Err(err @ ApiError::Transient(_)) => {
            offline(&err);
            return Ok(facts);
        }
        Err(err) => bail!("checking the device: {err}"),
    }
    match api.media_grants().await {
        Ok(list) => {
            if list.is_device_disabled {
                bail!("this device is disabled");
            }
            let wanted = grant.to_string();
            let Some(found) = list
                .media_grant_list
                .iter()
                .find(|g| g.media_grant_id == wanted)
            else {
                let known: Vec<_> = list
                    .media_grant_list
                    .iter()
                    .map(|g| format!("{} ({})", g.media_grant_id, g.grant_name))
                    .collect();
                bail!(
                    "grant {grant} is not one this device can see; it sees: {}",
                    known.join(", ")
                );
            };
            if found.is_disabled {
                bail!("grant {grant} ({}) is disabled", found.grant_name);
            }
            facts.encrypted = Some(found.volume_encryption_key.is_some());
            Ok(facts)
        }
        Err(ApiError::Unauthorized) => bail!("the service refused the device key (403)"),
        Err(err @ ApiError::Transient(_)) => {
            offline(&err);
            Ok(facts)
        }
        Err(err) => bail!("listing media grants: {err}"),
    }
}

/// What the mount-time checks learned of uploads.
#[derive(Default)]
struct ServiceFacts {
    device_upload_disabled: Option<bool>,
    encrypted: Option<bool>,
}

/// How this mount sends content. A grant whose encryption could not be checked at mount (the
/// service was unreachable) is checked before its first upload.
fn upload_config(
    args: &MountArgs,
    api: &Arc<HttpApi>,
    facts: &ServiceFacts,
) -> anyhow::Result<crate::sync::UploadConfig> {
    use crate::sync::UploadConfig;
    let why = if args.no_upload {
        Some("--no-upload")
    } else if facts.encrypted == Some(true) {
        Some(ENCRYPTED_GRANT)
    } else if facts.device_upload_disabled == Some(true) {
        Some("uploads are disabled by the service (the device's is_upload_disabled)")
    } else {
        None
    };
    if let Some(why) = why {
        return Ok(UploadConfig::records_only(why));
    }
    let client = crate::api::content_client::ContentClient::new(api.clone())?;
    Ok(UploadConfig {
        api: Some(Arc::new(client)),
        records_only: None,
        concurrency: args.upload_concurrency.into(),
        limit: args.upload_limit,
        grant_unchecked: facts.encrypted.is_none(),
    })
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

pub fn run(args: &MountArgs) -> anyhow::Result<()> {
    let backing_path = std::fs::canonicalize(&args.backing)
        .with_context(|| format!("backing folder {}", args.backing.display()))?;
    let backing = Backing::open(&backing_path)?;
    if !args.mountpoint.is_dir() {
        bail!(
            "mountpoint {} is not a directory",
            args.mountpoint.display()
        );
    }
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
    let (grant, fresh_prefix) =
        match runtime.block_on(crate::grants::resolve_grant(api.as_ref(), &args.grant)) {
            Ok((grant, prefix_path)) => (grant, Some(prefix_path)),
            // Offline, a grant id still mounts (check_service warns), with the prefix_path
            // recorded at its last mount; a name cannot be looked up.
            Err(err) if err.downcast_ref::<ApiError>().is_some_and(ApiError::is_transient) => {
                match args.grant.parse() {
                    Ok(grant) => (grant, None),
                    Err(_) => {
                        return Err(err.context(
                            "a grant name is looked up in the service; give the grant id to mount while it is unreachable",
                        ))
                    }
                }
            }
            Err(err) => return Err(err),
        };
    let state_dir = match &args.state_dir {
        Some(dir) => dir.clone(),
        None => default_state_dir(&backing_path, grant)?,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&state_dir)
        .with_context(|| format!("creating state folder {}", state_dir.display()))?;
    if state_dir.starts_with(&backing_path) {
        bail!("the state folder must not be inside the backing folder");
    }
    let grant_prefix = grant_prefix(&state_dir, fresh_prefix)?;
    let prefix = crate::grants::join_prefix(&grant_prefix, &args.prefix);

    let facts = runtime.block_on(check_service(api.as_ref(), grant))?;
    let upload = upload_config(args, &api, &facts)?;

    let identity = format!("{} grant {} prefix {:?}", args.api, grant, prefix);
    let index = Index::open(&state_dir.join("index.db"), &identity, args.cache_entries)
        .with_context(|| {
            format!(
                "cannot open the index in {} (is another maxlofs mount using this state folder?)",
                state_dir.display()
            )
        })?;
    let config = SyncConfig {
        grant,
        prefix,
        settle: Duration::from_millis(args.settle_ms),
        concurrency: args.concurrency,
        no_delete: args.no_delete,
        ignore,
        upload,
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
    mount.status = Some(engine.clone());
    mount.writers = writers;
    tracing::info!(
        "mounted {} at {}",
        args.backing.display(),
        args.mountpoint.display()
    );
    crate::fs::run_until_unmounted(mount, crate::daemonize::notify_ready)
        .context("serving the mount")?;

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

/// The nice value of the sync threads: 10 above the daemon's own, so a daemon started under `nice`
/// keeps its sync threads below itself. Read on the thread that builds the runtime.
fn sync_threads_nice() -> libc::c_int {
    const SYNC_NICE_INCREMENT: libc::c_int = 10;
    // SAFETY: getpriority has no memory effects; on Linux, `who` 0 is the calling thread.
    let own = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    (own + SYNC_NICE_INCREMENT).min(19)
}

/// Catalog work (hashing, index writes, uploads) runs at a lower CPU priority than the threads
/// serving the mount, so a user's `cp` or `tar` never waits behind it; it still gets every
/// cycle they leave idle. Set absolutely: a thread started by a sync thread has inherited the
/// lowered value already, and a relative step would lower it again.
fn yield_to_filesystem_threads(nice: libc::c_int) {
    // On Linux the nice value is per thread: `who` 0 is the calling thread.
    // SAFETY: setpriority has no memory effects.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
        tracing::debug!(
            "could not lower the sync threads' priority: {}",
            std::io::Error::last_os_error()
        );
    }
}
