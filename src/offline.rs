//! A backing folder that is not mounted, for `maxlofs verify`, `scrub` and `restore`: its index
//! opened as the mount left it, its filesystem checked to be the one the index was made of, and
//! the service reached with the keys given.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use maxlofs_api::content_client::{ContentApi, ContentClient};
use maxlofs_api::http::{HttpApi, Timeouts};
use maxlofs_api::GrantId;
use maxlofs_sync::index::Index;
use maxlofs_sync::local::Backing;

use crate::args::UnmountedArgs;
use crate::keys::KeySource;

/// Index entries kept in memory: a command's pass reads each entry once.
const CACHE_ENTRIES: usize = 1024;

/// An unmounted backing folder and its index.
pub struct Unmounted {
    pub backing: Arc<Backing>,
    pub index: Arc<Index>,
}

/// The grant `args` names, as an id, and with `content` the content calls of the service it names,
/// with the key given. A grant name is looked up in the service, which needs the key too; an id
/// without content calls needs none (a plain scrub).
pub fn service(
    args: &UnmountedArgs,
    runtime: &tokio::runtime::Runtime,
    content: bool,
) -> anyhow::Result<(Option<Arc<dyn ContentApi>>, GrantId)> {
    let id: Option<GrantId> = args.grant.parse().ok();
    if let (Some(id), false) = (id, content) {
        return Ok((None, id));
    }
    let keys = KeySource::new(args.device_key_file.clone(), None).load()?;
    let api = Arc::new(HttpApi::new(&args.api, keys, Timeouts::default())?);
    let grant = match id {
        Some(id) => id,
        None => {
            runtime
                .block_on(crate::grants::resolve_grant(api.as_ref(), &args.grant))?
                .0
        }
    };
    let calls: Option<Arc<dyn ContentApi>> = match content {
        true => Some(Arc::new(ContentClient::new(api)?)),
        false => None,
    };
    Ok((calls, grant))
}

/// Opens `folder` (a backing folder, not mounted) and the index its mount of `grant` made (in
/// `args.state_dir`, or where `mount` keeps it). Refused while a mount holds the index, and for
/// a folder that is not the one the index is of (empty, or on another filesystem): its files
/// would all look missing or changed.
pub fn open(folder: &Path, args: &UnmountedArgs, grant: GrantId) -> anyhow::Result<Unmounted> {
    let path = std::fs::canonicalize(folder).with_context(|| format!("{}", folder.display()))?;
    let state_dir = match &args.state_dir {
        Some(dir) => dir.clone(),
        None => crate::daemon::default_state_dir(&path, grant)?,
    };
    let index_file = state_dir.join("index.db");
    let no_index = || {
        anyhow::anyhow!(
            "{} is neither a maxlofs mount nor a backing folder with an index ({} is missing)",
            folder.display(),
            index_file.display()
        )
    };
    if !state_dir.is_dir() {
        return Err(no_index());
    }
    // As the daemon takes it: no symlink, nothing of another user's; then the index itself, not
    // a symlink to one (SQLite opens it by name, in that folder no other user can write to).
    let state = crate::daemon::open_state_dir(&state_dir)?;
    match state.open("index.db", libc::O_RDONLY, 0) {
        Ok(_) => {}
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => return Err(no_index()),
        Err(err) => {
            let what = format!("{} (a symlink is not followed)", index_file.display());
            return Err(anyhow::Error::new(err)
                .context(what)
                .context(crate::args::NotMounted));
        }
    }
    let index = Index::open_made(&index_file, CACHE_ENTRIES).map_err(|err| {
        let why = crate::daemon::index_trouble(&err, &index_file);
        err.context(format!(
            "cannot open the index in {} ({why})",
            state_dir.display()
        ))
    })?;
    let backing = Backing::open(&path).with_context(|| format!("{}", path.display()))?;
    crate::daemon::check_backing_identity(&backing, &index, false)?;
    Ok(Unmounted {
        backing: Arc::new(backing),
        index: Arc::new(index),
    })
}
