//! The content step (docs/semantics.md, "Content before the record"): a file's bytes go to the
//! service before a record names its hash. `upload` asks where; a file the service holds is
//! skipped; a whole-object PUT is followed by `s3_object`; a larger file goes up in its File
//! Hashing parts, with the upload_id, the signed URLs and each finished part's ETag kept in the
//! index so that a restart sends only the parts still missing.
//!
//! Bytes are streamed from the open backing file a chunk at a time and checked against the
//! digests the hasher computed as they go: the last chunk of a part is not sent unless the part's
//! SHA-256 matches, so the store never completes an object whose bytes are not the hash's. A
//! small file's bytes kept by the hasher are sent as they are: they are the bytes hashed.
//!
//! Like the rest of a look, this runs on the blocking pool (the executor waits for it there), so
//! it uses the index and opens files directly; only the chunks a request body streams are read
//! off the async workers that poll it.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot::{self, error::TryRecvError};
use tokio::sync::{watch, Semaphore};

use super::decide::{same_content, Content};
use super::engine::Engine;
use super::execute::{At, Failed};
use super::failure::{starts_over, Failure, Step};
use super::hasher::HashRead;
use super::index::MultipartUpload;
use super::local::FileStat;
use maxlofs_api::content::{
    CompletedPart, FileRef, MultipartCompleteRequest, MultipartRequest, PartSpec, S3ObjectRequest,
    UploadItem,
};
use maxlofs_api::content_client::{ContentApi, MultipartStart, PutBody, SignedPut};
use maxlofs_api::ApiError;

/// How a mount sends content.
pub struct UploadConfig {
    /// Where content goes; `None`: records only.
    pub api: Option<Arc<dyn ContentApi>>,
    /// Why records only, for the log and status (when `api` is `None`).
    pub records_only: Option<String>,
    /// Large PUTs under way at once (parts, and whole files over `SMALL_PUT_MAX`), over all
    /// files.
    pub concurrency: usize,
    /// Small PUTs (whole files of at most `SMALL_PUT_MAX`) under way at once, besides.
    pub small_concurrency: usize,
    /// Bytes per second over all uploads; `None`: no limit.
    pub limit: Option<u64>,
    /// Whether the grant's volume is encrypted is not known yet (the service could not be
    /// reached at mount): it is asked before the first upload.
    pub grant_unchecked: bool,
}

/// Why an encrypted grant gets records only.
pub const ENCRYPTED_GRANT: &str = "the grant's volume is encrypted (volume_encryption_key) and \
    the API does not say how content is to be encrypted: records only";

impl UploadConfig {
    pub fn records_only(why: &str) -> UploadConfig {
        UploadConfig {
            api: None,
            records_only: Some(why.to_string()),
            concurrency: 1,
            small_concurrency: 1,
            limit: None,
            grant_unchecked: false,
        }
    }
}

/// The API gives no expiry with its signed URLs: a URL refused as expired (403) starts the
/// upload over. URLs older than this are not even tried: an S3 presigned URL is valid for at
/// most seven days.
const URLS_MAX_AGE_SECS: i64 = 7 * 24 * 3600;

/// Bytes read from the file per chunk of a PUT's body.
const CHUNK: u64 = 1024 * 1024;

/// A PUT of at most this many bytes is small: its time is the round trip, not the bytes, so many
/// run at once (`UploadConfig::small_concurrency`) and overlap their round trips, while the large
/// transfers keep a few streams that share the link. The size of the files the hasher keeps in
/// memory: a small PUT is one chunk.
pub const SMALL_PUT_MAX: u64 = super::hasher::KEPT_MAX;

/// How one content upload ended, shared with the paths waiting on it (`None` until it has).
type FlightResult = Option<Flown>;

#[derive(Clone, Debug)]
enum Flown {
    Done(Content),
    Failed(String),
    /// The leading path's file went away (deleted, renamed away, replaced): a waiting path's file
    /// takes the upload over, resuming a multipart upload where it stopped.
    Abandoned,
}

/// Most files asked about in one `upload` call: its answer, a signed request per file, stays
/// far below the 1 MiB answer cap.
const ASK_MAX: usize = 100;

/// What `upload` answered about one file: whether the service takes uploads at all, and the
/// file's item (`None`: the answer did not name it).
struct Answered {
    disabled: bool,
    item: Option<UploadItem>,
}

/// A question waiting to be asked, and where its answer goes.
type Question = (FileRef, oneshot::Sender<Result<Answered, ApiError>>);

/// The `upload` questions of the looks under way, asked together (`Engine::ask`).
#[derive(Default)]
struct Questions {
    waiting: Mutex<Vec<Question>>,
    /// Held by the look whose call is out.
    asking: tokio::sync::Mutex<()>,
}

/// The engine's uploads: the content API, the PUT slots, the rate limit, the progress, and the
/// uploads under way by hash.
pub(super) struct Uploads {
    api: Option<Arc<dyn ContentApi>>,
    records_only: Option<String>,
    /// `Some(None)`: the grant is still to be checked for encryption; `Some(Some(why))`: it was,
    /// and is encrypted; `None`: nothing in the way.
    grant: Mutex<Option<Option<String>>>,
    /// Held while the grant is asked about, so that looks running side by side ask once.
    grant_check: tokio::sync::Mutex<()>,
    /// Set while the service answers `upload_disabled`.
    service_off: AtomicBool,
    /// Slots of the large PUTs.
    puts: Arc<Semaphore>,
    /// Slots of the small PUTs: a small file never waits behind a large transfer.
    small_puts: Arc<Semaphore>,
    limit: Option<Arc<RateLimit>>,
    meter: Arc<Meter>,
    /// One upload per content at a time: a second path with the same hash waits for the first's
    /// result.
    flights: Mutex<HashMap<String, watch::Receiver<FlightResult>>>,
    questions: Questions,
}

impl Uploads {
    pub(super) fn new(config: &UploadConfig) -> Uploads {
        Uploads {
            api: config.api.clone(),
            records_only: config.records_only.clone(),
            grant: Mutex::new(config.grant_unchecked.then_some(None)),
            grant_check: tokio::sync::Mutex::const_new(()),
            service_off: AtomicBool::new(false),
            puts: Arc::new(Semaphore::new(config.concurrency.max(1))),
            small_puts: Arc::new(Semaphore::new(config.small_concurrency.max(1))),
            limit: config.limit.filter(|&rate| rate > 0).map(RateLimit::new),
            meter: Arc::default(),
            flights: Mutex::default(),
            questions: Questions::default(),
        }
    }

    /// The content state a look starts from.
    pub(super) fn initial(&self) -> Content {
        match self.api {
            Some(_) => Content::Unknown,
            None => Content::NotSent,
        }
    }

    /// Whether content may be sent: the mount did not choose records only (the grant or the
    /// service may still say no).
    pub(super) fn may_send(&self) -> bool {
        self.api.is_some()
    }

    /// Why no content is sent, if none is: the mount's choice, or the service's.
    pub(super) fn off(&self) -> Option<String> {
        let learned = self.grant.lock().clone().flatten();
        self.records_only.clone().or(learned).or_else(|| {
            self.service_off.load(Ordering::Relaxed).then(|| {
                "uploads are disabled by the service (upload_disabled): records only".to_string()
            })
        })
    }

    /// (bytes still to send of the PUTs under way, bytes sent, bytes per second lately).
    pub(super) fn progress(&self) -> (u64, u64, u64) {
        self.meter.snapshot()
    }
}

/// A token bucket shared by all uploads: a chunk waits until the rate allows it. A chunk larger
/// than what is saved up runs the bucket into debt, which the next takers wait out.
pub(super) struct RateLimit {
    rate: f64,
    /// (tokens, when they were counted).
    bucket: Mutex<(f64, Instant)>,
}

impl RateLimit {
    fn new(rate: u64) -> Arc<RateLimit> {
        Arc::new(RateLimit {
            rate: rate as f64,
            bucket: Mutex::new((0.0, Instant::now())),
        })
    }

    /// How long to wait before sending `bytes`, taking them from the bucket now.
    fn wait_for(&self, bytes: u64, now: Instant) -> Duration {
        let mut bucket = self.bucket.lock();
        let (tokens, then) = *bucket;
        // At most a second's worth saved up: a burst after a pause stays short.
        let refilled = (tokens + now.duration_since(then).as_secs_f64() * self.rate).min(self.rate);
        let left = refilled - bytes as f64;
        *bucket = (left, now);
        if left >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-left / self.rate)
        }
    }

    /// The most sent at one time under this rate: an eighth of a second's worth (4 to 64 KiB).
    fn piece(&self) -> usize {
        ((self.rate / 8.0) as usize).clamp(4 * 1024, 64 * 1024)
    }

    async fn take(&self, bytes: u64) {
        let wait = self.wait_for(bytes, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Upload progress for status.
#[derive(Default)]
pub(super) struct Meter {
    to_send: AtomicU64,
    sent: AtomicU64,
    /// (when, bytes sent by then), taken at each snapshot: the rate is over the last few.
    samples: Mutex<VecDeque<(Instant, u64)>>,
}

/// The span the rate is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(10);

impl Meter {
    fn snapshot(&self) -> (u64, u64, u64) {
        let sent = self.sent.load(Ordering::Relaxed);
        let now = Instant::now();
        let mut samples = self.samples.lock();
        samples.push_back((now, sent));
        while samples.len() > 2
            && (now.duration_since(samples[1].0) >= RATE_WINDOW || samples.len() > 1000)
        {
            samples.pop_front();
        }
        let (then, sent_then) = samples[0];
        let elapsed = now.duration_since(then).as_secs_f64();
        let rate = if elapsed >= 0.5 {
            ((sent - sent_then) as f64 / elapsed) as u64
        } else {
            0
        };
        drop(samples);
        (self.to_send.load(Ordering::Relaxed), sent, rate)
    }
}

/// An upload's bytes not sent yet (the whole object, or the parts still missing), counted in
/// `to_send` until sent or given up.
struct Tally {
    meter: Arc<Meter>,
    left: AtomicU64,
}

impl Tally {
    fn new(meter: &Arc<Meter>, len: u64) -> Arc<Tally> {
        meter.to_send.fetch_add(len, Ordering::Relaxed);
        Arc::new(Tally {
            meter: meter.clone(),
            left: AtomicU64::new(len),
        })
    }

    fn sent(&self, bytes: u64) {
        self.meter.sent.fetch_add(bytes, Ordering::Relaxed);
        // Never below zero: the bytes of a PUT that failed and is sent again count twice as
        // sent, once as left.
        let before = self
            .left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                Some(left.saturating_sub(bytes))
            })
            .expect("always Some");
        self.meter
            .to_send
            .fetch_sub(before.min(bytes), Ordering::Relaxed);
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        let left = self.left.load(Ordering::Relaxed);
        self.meter.to_send.fetch_sub(left, Ordering::Relaxed);
    }
}

/// Where the bytes of a PUT come from.
enum Origin {
    /// Read a chunk at a time, and checked.
    File(Arc<File>),
    /// The bytes the hasher kept: sent whole, with nothing to check.
    Kept(Vec<u8>),
}

/// The bytes of one PUT, `[offset, end)` of the file, checked against the SHA-256 of each range
/// that ends at a checkpoint before the chunk that ends it is sent.
struct Source {
    origin: Origin,
    offset: u64,
    end: u64,
    /// (end offset, SHA-256 of the bytes from the previous checkpoint or `offset`), in order.
    checks: VecDeque<(u64, [u8; 32])>,
    hasher: Sha256,
    limit: Option<Arc<RateLimit>>,
    tally: Arc<Tally>,
    /// Set when the bytes are not those that were hashed: the file changed.
    changed: Arc<AtomicBool>,
    finished: bool,
}

fn file_body(source: Source) -> PutBody {
    Box::pin(futures_util::stream::try_unfold(
        (source, Vec::new(), 0),
        |(mut source, mut chunk, mut at)| async move {
            if at == chunk.len() {
                if source.finished {
                    return Ok(None);
                }
                chunk = match &mut source.origin {
                    Origin::Kept(bytes) => std::mem::take(bytes),
                    Origin::File(file) => read_checked(file.clone(), &mut source).await?,
                };
                at = 0;
                source.offset += chunk.len() as u64;
                source.finished = source.offset == source.end;
            }
            // Paced, a chunk goes in pieces each sent when the rate allows it: a whole chunk
            // waited for at a low rate would leave the request silent for longer than a store
            // waits (S3 gives up after about 20 s).
            let piece = match &source.limit {
                Some(limit) => {
                    let end = chunk.len().min(at + limit.piece());
                    let piece = chunk[at..end].to_vec();
                    at = end;
                    limit.take(piece.len() as u64).await;
                    piece
                }
                None => {
                    at = 0;
                    std::mem::take(&mut chunk)
                }
            };
            source.tally.sent(piece.len() as u64);
            Ok(Some((piece, (source, chunk, at))))
        },
    ))
}

/// The next chunk of `file` from `source.offset`, up to the next checkpoint; the chunk that
/// ends at a checkpoint only if the range's SHA-256 is the one expected.
async fn read_checked(file: Arc<File>, source: &mut Source) -> io::Result<Vec<u8>> {
    let checkpoint = source.checks.front().map_or(source.end, |&(end, _)| end);
    let want = CHUNK.min(checkpoint - source.offset);
    let at = source.offset;
    let read = tokio::task::spawn_blocking(move || {
        let mut chunk = vec![0; want as usize];
        file.read_exact_at(&mut chunk, at).map(|()| chunk)
    })
    .await
    .map_err(io::Error::other)?;
    let chunk = match read {
        Ok(chunk) => chunk,
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
            source.changed.store(true, Ordering::Relaxed);
            return Err(io::Error::new(err.kind(), "the file shrank while sent"));
        }
        Err(err) => return Err(err),
    };
    source.hasher.update(&chunk);
    if at + want == checkpoint {
        if let Some((_, expected)) = source.checks.pop_front() {
            let digest: [u8; 32] = source.hasher.finalize_reset().into();
            if digest != expected {
                source.changed.store(true, Ordering::Relaxed);
                return Err(io::Error::other("the file changed since it was hashed"));
            }
        }
    }
    Ok(chunk)
}

/// Why a path waits: its file changed while its content was read or sent.
pub(super) fn changed() -> Failed {
    Failed(Step::Local, Failure::Changed)
}

/// The 32 bytes of a 64-hex-digit hash.
fn digest_of(hash: &str) -> Result<[u8; 32], Failed> {
    let mut digest = [0; 32];
    hex::decode_to_slice(hash, &mut digest)
        .map_err(|err| Failed(Step::Local, Failure::Local(format!("hash {hash:?}: {err}"))))?;
    Ok(digest)
}

/// A leader's hold on the upload of one hash: gone (finished, failed, or its task cancelled),
/// it is no longer found, and paths waiting on it learn the result.
struct Flight {
    engine: Arc<Engine>,
    hash: String,
    result: watch::Sender<FlightResult>,
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.engine.uploads.flights.lock().remove(&self.hash);
    }
}

impl Engine {
    /// Makes sure the service holds the content of `hash`, the file at `path` as `stat` and
    /// (when this look hashed it) `read` describe it. One upload per content at a time.
    pub(super) async fn upload(
        self: &Arc<Self>,
        path: &Path,
        stat: FileStat,
        hash: &str,
        read: Option<HashRead>,
    ) -> Result<Content, Failed> {
        let Some(api) = self.uploads.api.clone() else {
            return Ok(Content::NotSent);
        };
        if !self.grant_allows_uploads().await? {
            return Ok(Content::NotSent);
        }
        let result = loop {
            let waiting = {
                let mut flights = self.uploads.flights.lock();
                match flights.get(hash) {
                    Some(flight) => Err(flight.clone()),
                    None => {
                        let (result, receiver) = watch::channel(None);
                        flights.insert(hash.to_string(), receiver);
                        Ok(result)
                    }
                }
            };
            let mut flight = match waiting {
                Ok(result) => break result,
                Err(flight) => flight,
            };
            let outcome = flight
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|done| done.clone());
            match outcome {
                Some(Flown::Done(content)) => return Ok(content),
                // Its file went away: this path's file takes the upload over.
                Some(Flown::Abandoned) => continue,
                Some(Flown::Failed(why)) => {
                    return Err(Failed(
                        Step::Local,
                        Failure::Local(format!("the same content's upload failed: {why}")),
                    ))
                }
                None => {
                    return Err(Failed(
                        Step::Local,
                        Failure::Local("the same content's upload stopped".into()),
                    ))
                }
            }
        };
        let flight = Flight {
            engine: self.clone(),
            hash: hash.to_string(),
            result,
        };
        let sent = self
            .send_content(api.as_ref(), path, stat, hash, read.unwrap_or_default())
            .await;
        let shared = match &sent {
            Ok(content) => Flown::Done(*content),
            // Its file went or changed: another path's file of this content takes it over.
            Err(Failed(_, Failure::Vanished | Failure::Unreadable | Failure::Changed)) => {
                Flown::Abandoned
            }
            Err(Failed(step, failure)) => Flown::Failed(format!("{step:?}: {failure}")),
        };
        flight.result.send_replace(Some(shared));
        drop(flight);
        sent
    }

    /// Whether the grant takes plaintext uploads: asked of the service once, when the mount
    /// could not (an encrypted grant gets records only).
    async fn grant_allows_uploads(self: &Arc<Self>) -> Result<bool, Failed> {
        let known = |engine: &Engine| match engine.uploads.grant.lock().clone() {
            Some(Some(_)) => Some(false),
            Some(None) => None,
            None => Some(true),
        };
        if let Some(allows) = known(self) {
            return Ok(allows);
        }
        let _asking = self.uploads.grant_check.lock().await;
        // Another look may have asked while this one waited.
        if let Some(allows) = known(self) {
            return Ok(allows);
        }
        let list = self.api.media_grants().await.at(Step::Upload)?;
        let wanted = self.config.grant.to_string();
        let encrypted = list
            .media_grant_list
            .iter()
            .find(|grant| grant.media_grant_id == wanted)
            .is_some_and(|grant| grant.volume_encryption_key.is_some());
        let mut grant = self.uploads.grant.lock();
        if encrypted {
            tracing::warn!("{ENCRYPTED_GRANT}");
            *grant = Some(Some(ENCRYPTED_GRANT.to_string()));
        } else {
            *grant = None;
        }
        Ok(!encrypted)
    }

    async fn send_content(
        self: &Arc<Self>,
        api: &dyn ContentApi,
        path: &Path,
        stat: FileStat,
        hash: &str,
        read: HashRead,
    ) -> Result<Content, Failed> {
        let grant = self.config.grant;
        let file = FileRef {
            file_hash: hash.to_string(),
            file_size: stat.size,
        };
        let answered = self.ask(api, file).await.at(Step::Upload)?;
        let disabled = answered.disabled;
        if self.uploads.service_off.swap(disabled, Ordering::Relaxed) != disabled {
            match disabled {
                true => tracing::warn!("the service disabled uploads: records only"),
                false => tracing::info!("the service takes uploads again"),
            }
        }
        if disabled {
            return Ok(Content::NotSent);
        }
        let malformed = |why: &str| {
            Failed(
                Step::Upload,
                Failure::Api(ApiError::Transient(format!("malformed answer: {why}"))),
            )
        };
        let item = answered
            .item
            .ok_or_else(|| malformed("upload_list does not name the file"))?;
        if item.skip_upload == Some(true) {
            return Ok(Content::Held);
        }
        let bucket = item
            .s3_bucket_id
            .ok_or_else(|| malformed("no s3_bucket_id"))?;
        let Some(opts) = item.signed_opts else {
            if maxlofs_api::hash::part_size(stat.size).is_none() {
                // A file hashed whole has no parts to send in a multipart upload.
                return Err(malformed(
                    "neither signed_opts nor skip_upload for a small file",
                ));
            }
            let open = self.open_unchanged(path, stat).await?;
            return self
                .multipart(api, path, open, stat, hash, bucket, read.parts)
                .await;
        };
        let target = SignedPut {
            method: opts.method,
            url: opts.url,
            headers: opts.headers,
        };
        let tally = Tally::new(&self.uploads.meter, stat.size);
        let (size, step) = (stat.size, Step::ObjectPut);
        match read.bytes {
            Some(bytes) => {
                let kept = Origin::Kept(bytes);
                // The bytes sent are those hashed: once sent, the object is the hash's content
                // and is registered whatever the file holds by then (renamed, it is still
                // wanted); the look checks the file before it makes a record, as for a file
                // read again below.
                self.put(
                    api,
                    &target,
                    (path, &stat),
                    kept,
                    0,
                    size,
                    Vec::new(),
                    &tally,
                    step,
                )
                .await?;
            }
            None => {
                let open = self.open_unchanged(path, stat).await?;
                // Checked part by part for a file hashed in parts, whole otherwise.
                let checks = match maxlofs_api::hash::part_size(stat.size) {
                    None => vec![(stat.size, digest_of(hash)?)],
                    Some(_) => {
                        let digests = self.part_digests(path, stat, hash, read.parts).await?;
                        let ends = maxlofs_api::hash::parts(stat.size)
                            .into_iter()
                            .map(|(offset, len)| offset + len);
                        ends.zip(digests).collect()
                    }
                };
                let file = Origin::File(open);
                self.put(
                    api,
                    &target,
                    (path, &stat),
                    file,
                    0,
                    size,
                    checks,
                    &tally,
                    step,
                )
                .await?;
            }
        }
        let register = S3ObjectRequest {
            s3_bucket_id: bucket,
            file_hash: hash.to_string(),
            file_size: stat.size,
        };
        api.s3_object(grant, &register).await.at(Step::S3Object)?;
        Ok(Content::Held)
    }

    /// Asks `upload` about `file`, in one call with the questions of other looks: while a call
    /// is out, the questions that come meanwhile gather for the next one, so a lone question
    /// waits for nothing and many looks share few calls.
    async fn ask(&self, api: &dyn ContentApi, file: FileRef) -> Result<Answered, ApiError> {
        let questions = &self.uploads.questions;
        let (answer, mut answered) = oneshot::channel();
        questions.waiting.lock().push((file, answer));
        let given_up =
            || ApiError::Transient("the upload call that carried the question was given up".into());
        loop {
            // The answer may come in another look's call while this one waits for its turn.
            let _asking = tokio::select! {
                biased;
                answer = &mut answered => return answer.unwrap_or_else(|_| Err(given_up())),
                asking = questions.asking.lock() => asking,
            };
            match answered.try_recv() {
                Ok(answer) => return answer,
                Err(TryRecvError::Closed) => return Err(given_up()),
                Err(TryRecvError::Empty) => {}
            }
            let batch: Vec<_> = {
                let mut waiting = questions.waiting.lock();
                let taken = waiting.len().min(ASK_MAX);
                waiting.drain(..taken).collect()
            };
            let files: Vec<FileRef> = batch.iter().map(|(file, _)| file.clone()).collect();
            match api.upload(self.config.grant, &files).await {
                Ok(answer) => {
                    let disabled = answer.upload_disabled == Some(true);
                    let mut items: HashMap<String, UploadItem> = answer
                        .upload_list
                        .into_iter()
                        .map(|item| (item.file_hash.clone(), item))
                        .collect();
                    for (file, answer) in batch {
                        let item = items.remove(&file.file_hash);
                        // A receiver gone is a look given up: nothing to tell it.
                        let _ = answer.send(Ok(Answered { disabled, item }));
                    }
                }
                Err(err) => {
                    for (_, answer) in batch {
                        let _ = answer.send(Err(err.clone()));
                    }
                }
            }
        }
    }

    /// Opens the file and checks it is still the one that was hashed.
    pub(super) async fn open_unchanged(
        self: &Arc<Self>,
        path: &Path,
        stat: FileStat,
    ) -> Result<Arc<File>, Failed> {
        let (file, now) = self
            .backing
            .open_file(path)
            .map_err(|err| Failed(Step::Local, Failure::reading("opening", err)))?;
        if !same_content(&stat, &now) {
            return Err(changed());
        }
        Ok(Arc::new(file))
    }

    /// The SHA-256 of each part: those the hasher gave, or (for a hash reused without reading
    /// the file, as after a rename) read again, and the same file hash checked.
    async fn part_digests(
        self: &Arc<Self>,
        path: &Path,
        stat: FileStat,
        hash: &str,
        known: Vec<[u8; 32]>,
    ) -> Result<Vec<[u8; 32]>, Failed> {
        if !known.is_empty() {
            return Ok(known);
        }
        let hashed = self.hash_now(path, stat).await.at(Step::Local)?;
        match hashed.hash == hash && same_content(&stat, &hashed.stat) {
            true => Ok(hashed.read.parts),
            false => Err(changed()),
        }
    }

    /// PUTs `[offset, offset + len)` of the file at `path` (as `stat` describes it) in one of the
    /// PUT slots of its size, within the rate limit.
    #[allow(clippy::too_many_arguments)]
    async fn put(
        self: &Arc<Self>,
        api: &dyn ContentApi,
        target: &SignedPut,
        (path, stat): (&Path, &FileStat),
        origin: Origin,
        offset: u64,
        len: u64,
        checks: Vec<(u64, [u8; 32])>,
        tally: &Arc<Tally>,
        step: Step,
    ) -> Result<String, Failed> {
        let slots = if len <= SMALL_PUT_MAX {
            &self.uploads.small_puts
        } else {
            &self.uploads.puts
        };
        let _slot = slots.clone().acquire_owned().await.expect("never closed");
        // The upload of a file deleted or renamed away stops at its next PUT: the content of a
        // deleted file is not wanted, and a new name of it takes the upload over.
        self.still_at(path, stat)?;
        let changed_meanwhile = Arc::new(AtomicBool::new(false));
        let body = file_body(Source {
            origin,
            offset,
            end: offset + len,
            checks: checks.into(),
            hasher: Sha256::new(),
            limit: self.uploads.limit.clone(),
            tally: tally.clone(),
            changed: changed_meanwhile.clone(),
            finished: false,
        });
        let answer = api.put(target, len, body).await;
        if changed_meanwhile.load(Ordering::Relaxed) {
            return Err(changed());
        }
        answer.at(step)
    }

    #[allow(clippy::too_many_arguments)]
    async fn multipart(
        self: &Arc<Self>,
        api: &dyn ContentApi,
        path: &Path,
        file: Arc<File>,
        stat: FileStat,
        hash: &str,
        bucket: String,
        parts: Vec<[u8; 32]>,
    ) -> Result<Content, Failed> {
        let grant = self.config.grant;
        let digests = self.part_digests(path, stat, hash, parts).await?;
        // Kept so that a scrub can say which part of a damaged copy differs.
        self.index
            .set_content_parts(hash, &digests)
            .at(Step::Local)?;
        let spans = maxlofs_api::hash::parts(stat.size);
        let resumable = |upload: &MultipartUpload| {
            upload.size == stat.size
                && (1..=spans.len() as u64).all(|num| upload.urls.contains_key(&num))
                && chrono::Utc::now().timestamp() - upload.started_at < URLS_MAX_AGE_SECS
        };
        let mut upload = match self.index.multipart(hash).at(Step::Local)? {
            Some(upload) if resumable(&upload) => {
                tracing::info!(
                    "{hash}: resuming its multipart upload, {} of {} parts sent",
                    upload.etags.len(),
                    spans.len()
                );
                upload
            }
            kept => {
                let request = MultipartRequest {
                    file_size: stat.size,
                    file_hash: hash.to_string(),
                    part_list: spans
                        .iter()
                        .zip(&digests)
                        .enumerate()
                        .map(|(index, (&(_, len), digest))| PartSpec {
                            part_num: index as u64 + 1,
                            part_size: len,
                            part_hash: hex::encode(digest),
                        })
                        .collect(),
                };
                let answer = match api.multipart(grant, &request).await.at(Step::Multipart)? {
                    MultipartStart::Held => return Ok(Content::Held),
                    MultipartStart::NoActiveFile => {
                        return Err(Failed(
                            Step::Multipart,
                            Failure::Api(ApiError::BadRequest {
                                status: 409,
                                message: "no_active_file".into(),
                            }),
                        ))
                    }
                    MultipartStart::Started(answer) => answer,
                };
                let mut upload = MultipartUpload {
                    size: stat.size,
                    upload_id: answer.upload_id,
                    s3_bucket_id: bucket,
                    urls: answer
                        .signed_url_list
                        .into_iter()
                        .map(|part| (part.part_num, part.url))
                        .collect(),
                    etags: BTreeMap::new(),
                    started_at: chrono::Utc::now().timestamp(),
                };
                if !(1..=spans.len() as u64).all(|num| upload.urls.contains_key(&num)) {
                    return Err(Failed(
                        Step::Multipart,
                        Failure::Api(ApiError::Transient(
                            "malformed answer: a part has no signed URL".into(),
                        )),
                    ));
                }
                // Asked again once its URLs were refused, the service may answer the same
                // upload: the parts it holds need not go up again (an upload longer than a
                // URL's lifetime would otherwise never end).
                if let Some(old) = kept.filter(|old| old.upload_id == upload.upload_id) {
                    upload.etags = old.etags;
                }
                self.index.start_multipart(hash, &upload).at(Step::Local)?;
                upload
            }
        };
        let missing: u64 = (1..)
            .zip(&spans)
            .filter(|(num, _)| !upload.etags.contains_key(num))
            .map(|(_, &(_, len))| len)
            .sum();
        let tally = Tally::new(&self.uploads.meter, missing);
        let mut sending: FuturesUnordered<_> = spans
            .iter()
            .zip(&digests)
            .enumerate()
            .map(|(index, (&(offset, len), digest))| (index as u64 + 1, offset, len, *digest))
            .filter(|(num, ..)| !upload.etags.contains_key(num))
            .map(|(num, offset, len, digest)| {
                let target = SignedPut {
                    method: "PUT".into(),
                    url: upload.urls[&num].clone(),
                    headers: BTreeMap::new(),
                };
                let (file, tally) = (file.clone(), tally.clone());
                async move {
                    let checks = vec![(offset + len, digest)];
                    let etag = self
                        .put(
                            api,
                            &target,
                            (path, &stat),
                            Origin::File(file),
                            offset,
                            len,
                            checks,
                            &tally,
                            Step::PartPut,
                        )
                        .await?;
                    // Kept the moment the store acknowledged it: a restart skips this part.
                    self.index.part_done(hash, num, &etag).at(Step::Local)?;
                    Ok::<_, Failed>((num, etag))
                }
            })
            .collect();
        while let Some(sent) = sending.next().await {
            match sent {
                Ok((num, etag)) => {
                    upload.etags.insert(num, etag);
                }
                Err(failed) => {
                    drop(sending);
                    return Err(self.maybe_start_over(hash, failed).await);
                }
            }
        }
        let complete = MultipartCompleteRequest {
            file_size: stat.size,
            file_hash: hash.to_string(),
            s3_bucket_id: upload.s3_bucket_id.clone(),
            upload_id: upload.upload_id.clone(),
            part_list: upload
                .etags
                .iter()
                .map(|(&part_num, etag)| CompletedPart {
                    part_num,
                    etag: etag.clone(),
                })
                .collect(),
        };
        let completed = api.multipart_complete(grant, &complete).await;
        if let Err(err) = completed {
            let failed = Failed(Step::MultipartComplete, Failure::Api(err));
            return Err(self.maybe_start_over(hash, failed).await);
        }
        self.index.forget_multipart(hash).at(Step::Local)?;
        Ok(Content::Held)
    }

    /// A failure that makes the upload's URLs useless (see `failure::starts_over`) forgets
    /// them, so the next attempt asks for new ones: a refused URL (403, expired) only its URLs,
    /// anything else the whole upload.
    async fn maybe_start_over(self: &Arc<Self>, hash: &str, failed: Failed) -> Failed {
        if let Failed(step, Failure::Api(err)) = &failed {
            if starts_over(*step, err) {
                let forgotten = match (step, err) {
                    (Step::PartPut, ApiError::Unauthorized) => self.index.forget_urls(hash),
                    _ => self.index.forget_multipart(hash),
                };
                if let Err(forgetting) = forgotten.at(Step::Local) {
                    return forgetting;
                }
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_left_count_down_as_sent_and_go_when_an_upload_ends() {
        let meter = Arc::new(Meter::default());
        let whole = Tally::new(&meter, 100);
        let other = Tally::new(&meter, 50);
        whole.sent(60);
        assert_eq!(meter.snapshot().0, 90);
        // A PUT sent again after a failure: sent counts it, left stays at zero.
        whole.sent(60);
        assert_eq!((meter.snapshot().0, meter.snapshot().1), (50, 120));
        drop(whole);
        other.sent(10);
        assert_eq!(meter.snapshot().0, 40);
        // Given up: its rest is no longer to be sent.
        drop(other);
        assert_eq!(meter.snapshot().0, 0);
    }

    #[test]
    fn the_rate_limit_holds_over_many_takers() {
        let start = Instant::now();
        let limit = RateLimit {
            rate: 1000.0,
            bucket: Mutex::new((0.0, start)),
        };
        // Nothing saved up at first: 1000 bytes wait a second.
        assert_eq!(limit.wait_for(1000, start), Duration::from_secs(1));
        // Another taker at the same instant waits behind the first.
        assert_eq!(limit.wait_for(500, start), Duration::from_millis(1500));
        // Two seconds on, the debt is paid and half a second saved up.
        let later = start + Duration::from_secs(2);
        assert_eq!(limit.wait_for(500, later), Duration::ZERO);
        // Saving up stops at one second's worth.
        let much_later = later + Duration::from_secs(60);
        assert_eq!(limit.wait_for(1000, much_later), Duration::ZERO);
        assert_eq!(limit.wait_for(1000, much_later), Duration::from_secs(1));
    }
}
