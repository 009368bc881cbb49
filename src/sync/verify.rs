//! Verify: whether the service still holds the content of every synced record. `download`
//! answers, per hash, whether the content is held and its size; a record whose content is not
//! held (or is marked deleted) is `Missing`, one held at another size `Corrupted`. Deep, each
//! content is downloaded and hashed: one that does not hash to its record's hash is `Corrupted`,
//! one slower than the download floor is given up as `TooSlow` and the others go on.
//!
//! Run by `maxlofs verify` on an unmounted backing folder (its index read, the keys given), and
//! by a mount's daemon as a job (`HealRequest::Verify`), which holds both.
//!
//! What the service says or sends is held to the size the record has: a content of another size
//! is not this one, and a download is read no further than that size (a service sending without
//! end cannot hold verify), nor slower than the floor.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::index::SyncedRecord;
use maxlofs_api::content_client::{receive, ContentApi, Unreceived};
use maxlofs_api::hash::StreamHasher;
use maxlofs_api::GrantId;

/// Hashes per `download` call.
const BATCH: usize = 100;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// The service does not hold it, or marks it deleted.
    Missing,
    /// The service gives it another size than the record's, or (deep) what it serves does not
    /// hash to the record's hash.
    Corrupted,
    /// (Deep) Its download was slower than the floor and was given up: not checked.
    TooSlow,
}

/// A record whose content has a problem.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub path: String,
    pub file_hash: String,
    pub problem: Problem,
}

/// What a verify found.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub records: usize,
    /// Distinct contents checked (records sharing a hash share one).
    pub contents: usize,
    pub deep: bool,
    /// Records whose content is missing or corrupted.
    pub lacking: usize,
    /// Records not checked because their download was too slow.
    pub too_slow: usize,
    pub findings: Vec<Finding>,
}

/// Checks the content of `records` in `grant`; `deep` downloads each, with that window for
/// `DOWNLOAD_FLOOR_BYTES`.
pub async fn verify(
    content: &dyn ContentApi,
    grant: GrantId,
    records: &[SyncedRecord],
    deep: Option<Duration>,
) -> anyhow::Result<VerifyReport> {
    // One content, one size: the hash is of the bytes.
    let mut paths_of: BTreeMap<&str, (u64, Vec<&str>)> = BTreeMap::new();
    for (path, hash, size) in records {
        let (_, paths) = paths_of.entry(hash).or_insert((*size, Vec::new()));
        paths.push(path);
    }
    let contents: Vec<(&str, u64)> = paths_of
        .iter()
        .map(|(hash, (size, _))| (*hash, *size))
        .collect();
    let problems = check(content, grant, &contents, deep).await?;
    let findings: Vec<Finding> = problems
        .into_iter()
        .flat_map(|(hash, problem)| {
            paths_of[hash].1.iter().map(move |path| Finding {
                path: path.to_string(),
                file_hash: hash.to_string(),
                problem,
            })
        })
        .collect();
    let too_slow = findings
        .iter()
        .filter(|finding| finding.problem == Problem::TooSlow)
        .count();
    Ok(VerifyReport {
        records: records.len(),
        contents: contents.len(),
        deep: deep.is_some(),
        lacking: findings.len() - too_slow,
        too_slow,
        findings,
    })
}

/// The problem of each content (hash and size) that has one.
async fn check<'a>(
    content: &dyn ContentApi,
    grant: GrantId,
    contents: &[(&'a str, u64)],
    deep: Option<Duration>,
) -> anyhow::Result<Vec<(&'a str, Problem)>> {
    let mut problems = Vec::new();
    for batch in contents.chunks(BATCH) {
        let hashes: Vec<String> = batch.iter().map(|(hash, _)| hash.to_string()).collect();
        let answer = content
            .download(grant, &hashes)
            .await
            .context("asking the service for the content (download)")?;
        let items: BTreeMap<&str, _> = answer
            .download_list
            .iter()
            .map(|item| (item.file_hash.as_str(), item))
            .collect();
        for &(hash, size) in batch {
            let item = match items.get(hash) {
                Some(item) if !item.is_deleted => item,
                _ => {
                    problems.push((hash, Problem::Missing));
                    continue;
                }
            };
            if item.file_size != size {
                problems.push((hash, Problem::Corrupted));
                continue;
            }
            let Some(floor_window) = deep else {
                continue;
            };
            let Some(url) = &item.url else {
                problems.push((hash, Problem::Missing));
                continue;
            };
            if let Some(problem) =
                download_and_check(content, url, hash, size, floor_window).await?
            {
                problems.push((hash, problem));
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
