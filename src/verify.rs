//! `maxlofs verify MNT` (or an unmounted BACKING folder): asks the service (`download`) for the
//! content of every record the index says was synced (a mount's daemon lists them through an
//! extended attribute; an unmounted folder's index is read), and reports records whose content it lacks or marks deleted; with
//! `--deep`, downloads each content and checks its Maxlo hash.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::args::VerifyArgs;
use crate::keys::KeySource;
use crate::status::read_xattr;
use maxlofs_api::content_client::{
    receive, ContentApi, ContentClient, Unreceived, DOWNLOAD_FLOOR_BYTES,
};
use maxlofs_api::hash::StreamHasher;
use maxlofs_api::http::{HttpApi, Timeouts};
use maxlofs_api::GrantId;
use maxlofs_fs::SYNCED_XATTR_PREFIX;
use maxlofs_sync::index::{Index, SyncedRecord};
use maxlofs_sync::report::SyncedPage;

/// Hashes per `download` call.
const BATCH: usize = 100;

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Problem {
    /// The service does not hold it, or marks it deleted.
    Missing,
    /// The service gives it another size than the record's, or (`--deep`) what it serves does
    /// not hash to the record's hash.
    Corrupted,
    /// (`--deep`) Its download was slower than the floor and was given up: not checked.
    TooSlow,
}

#[derive(Serialize)]
struct Finding {
    path: String,
    file_hash: String,
    problem: Problem,
}

#[derive(Serialize)]
struct Report {
    records: usize,
    contents: usize,
    deep: bool,
    findings: Vec<Finding>,
    /// The window of the download floor, for the text.
    #[serde(skip)]
    floor_window_secs: u64,
}

/// Exit status: 0 all content is held (and, deep, intact), 1 some is not, 2 it could not check
/// (or some of it: downloads too slow).
pub fn run(args: &VerifyArgs) -> i32 {
    match verify(args) {
        Ok(report) => {
            if let Err(err) = print(&report, args.json) {
                eprintln!("maxlofs: verify: {}", crate::output::error_line(&err));
                return 2;
            }
            let lacking = |problem| report.findings.iter().any(|f| f.problem == problem);
            if lacking(Problem::Missing) || lacking(Problem::Corrupted) {
                1
            } else if lacking(Problem::TooSlow) {
                2
            } else {
                0
            }
        }
        Err(err) => {
            eprintln!("maxlofs: verify: {}", crate::output::error_line(&err));
            2
        }
    }
}

fn verify(args: &VerifyArgs) -> anyhow::Result<Report> {
    let keys = KeySource::new(args.device_key_file.clone(), None).load()?;
    let api = Arc::new(HttpApi::new(&args.api, keys, Timeouts::default())?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let grant: GrantId = match args.grant.parse() {
        Ok(id) => id,
        Err(_) => {
            runtime
                .block_on(crate::grants::resolve_grant(api.as_ref(), &args.grant))?
                .0
        }
    };
    let records = match crate::status::read(&args.folder) {
        // A live mount: its daemon holds the index, and lists it.
        Ok(_) => synced_of_mount(&args.folder)?,
        Err(_) => synced_of_backing(args, grant)?,
    };
    // One content, one size: the hash is of the bytes.
    let mut paths_of: BTreeMap<String, (u64, Vec<String>)> = BTreeMap::new();
    for (path, hash, size) in &records {
        let (_, paths) = paths_of.entry(hash.clone()).or_insert((*size, Vec::new()));
        paths.push(path.clone());
    }
    let content = ContentClient::new(api)?;
    let contents: Vec<(String, u64)> = paths_of
        .iter()
        .map(|(hash, (size, _))| (hash.clone(), *size))
        .collect();
    let deep = args
        .deep
        .then(|| Duration::from_secs(args.download_floor_secs));
    let problems = runtime.block_on(check(&content, grant, &contents, deep))?;
    let findings = problems
        .into_iter()
        .flat_map(|(hash, problem)| {
            paths_of[&hash]
                .1
                .iter()
                .map(|path| Finding {
                    path: path.clone(),
                    file_hash: hash.clone(),
                    problem,
                })
                .collect::<Vec<_>>()
        })
        .collect();
    Ok(Report {
        records: records.len(),
        contents: contents.len(),
        deep: args.deep,
        findings,
        floor_window_secs: args.download_floor_secs,
    })
}

/// The synced records a mount's daemon lists, page by page.
fn synced_of_mount(mountpoint: &std::path::Path) -> anyhow::Result<Vec<SyncedRecord>> {
    let mut records = Vec::new();
    let mut from = Some(0);
    while let Some(at) = from {
        let name = format!("{SYNCED_XATTR_PREFIX}{at}");
        let page: SyncedPage = serde_json::from_slice(&read_xattr(mountpoint, &name)?)
            .context("the daemon's list of synced records is not valid JSON")?;
        records.extend(page.entries);
        from = page.next;
    }
    Ok(records)
}

/// The synced records in the index of the backing folder `args.folder` (not mounted).
fn synced_of_backing(args: &VerifyArgs, grant: GrantId) -> anyhow::Result<Vec<SyncedRecord>> {
    let backing = std::fs::canonicalize(&args.folder)
        .with_context(|| format!("folder {}", args.folder.display()))?;
    let state_dir = match &args.state_dir {
        Some(dir) => dir.clone(),
        None => crate::daemon::default_state_dir(&backing, grant)?,
    };
    let index = state_dir.join("index.db");
    if !index.exists() {
        anyhow::bail!(
            "{} is neither a maxlofs mount nor a backing folder with an index ({} is missing)",
            args.folder.display(),
            index.display()
        );
    }
    Index::synced_records(&index).with_context(|| format!("reading the index {}", index.display()))
}

/// The problem of each content (hash and size) that has one; `deep` downloads each, with that
/// window for `DOWNLOAD_FLOOR_BYTES`. What the service says or sends is held to the size the
/// record has: a content of another size is not this one, and a download is read no further
/// than that size (a service sending without end cannot hold verify), nor slower than the floor.
async fn check(
    content: &dyn ContentApi,
    grant: GrantId,
    contents: &[(String, u64)],
    deep: Option<Duration>,
) -> anyhow::Result<Vec<(String, Problem)>> {
    let mut problems = Vec::new();
    for batch in contents.chunks(BATCH) {
        let hashes: Vec<String> = batch.iter().map(|(hash, _)| hash.clone()).collect();
        let answer = content
            .download(grant, &hashes)
            .await
            .context("asking the service for the content (download)")?;
        let items: BTreeMap<&str, _> = answer
            .download_list
            .iter()
            .map(|item| (item.file_hash.as_str(), item))
            .collect();
        for (hash, size) in batch {
            let item = match items.get(hash.as_str()) {
                Some(item) if !item.is_deleted => item,
                _ => {
                    problems.push((hash.clone(), Problem::Missing));
                    continue;
                }
            };
            if item.file_size != *size {
                problems.push((hash.clone(), Problem::Corrupted));
                continue;
            }
            let Some(floor_window) = deep else {
                continue;
            };
            let Some(url) = &item.url else {
                problems.push((hash.clone(), Problem::Missing));
                continue;
            };
            if let Some(problem) =
                download_and_check(content, url, hash, *size, floor_window).await?
            {
                problems.push((hash.clone(), problem));
            }
        }
    }
    Ok(problems)
}

/// Downloads the content `hash` of `size` bytes from `url` and answers its problem, if any. Each
/// `DOWNLOAD_FLOOR_BYTES` must come within `floor_window` of the last (the first, of the
/// request): a slower download is given up as `TooSlow`.
async fn download_and_check(
    content: &dyn ContentApi,
    url: &str,
    hash: &str,
    size: u64,
    floor_window: Duration,
) -> anyhow::Result<Option<Problem>> {
    let mut hasher = StreamHasher::new(size);
    let hashing = |piece: &[u8]| {
        hasher.update(piece);
        Ok(())
    };
    match receive(content.get(url), size, floor_window, hashing).await {
        Ok(_) => {}
        Err(Unreceived::TooSlow) => return Ok(Some(Problem::TooSlow)),
        Err(Unreceived::TooLong(_)) => return Ok(Some(Problem::Corrupted)),
        Err(err) => return Err(anyhow::Error::new(err).context(format!("downloading {hash}"))),
    }
    let intact = hasher.finish().map(|found| found.to_hex()).as_deref() == Some(hash);
    Ok((!intact).then_some(Problem::Corrupted))
}

fn print(report: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
        return Ok(());
    }
    for finding in &report.findings {
        let what = match finding.problem {
            Problem::Missing => "missing  ",
            Problem::Corrupted => "corrupted",
            Problem::TooSlow => "too slow ",
        };
        println!(
            "{what} {} ({})",
            crate::output::escaped(&finding.path),
            finding.file_hash
        );
    }
    let too_slow = report
        .findings
        .iter()
        .filter(|finding| finding.problem == Problem::TooSlow)
        .count();
    let lacking = report.findings.len() - too_slow;
    let mut said = Vec::new();
    if lacking > 0 {
        said.push(format!("{lacking} records lack their content"));
    }
    if too_slow > 0 {
        said.push(format!(
            "{too_slow} records not checked: their download brought less than {} KiB in {} s \
             and was given up",
            DOWNLOAD_FLOOR_BYTES / 1024,
            report.floor_window_secs
        ));
    }
    if said.is_empty() {
        said.push("all held".into());
    }
    println!(
        "{} records, {} contents checked{}: {}",
        report.records,
        report.contents,
        if report.deep { " (downloaded)" } else { "" },
        said.join("; ")
    );
    Ok(())
}
