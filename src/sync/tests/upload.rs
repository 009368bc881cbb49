//! The content step against an in-memory object store: content goes up before the record that
//! names it, once per content, and never from a file that changed while it was sent.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use super::*;
use maxlofs_api::content::{
    DownloadAnswer, DownloadItem, FileRef, MultipartAnswer, MultipartCompleteRequest,
    MultipartRequest, S3ObjectRequest, SignedOpts, SignedPartUrl, UploadAnswer, UploadItem,
};
use maxlofs_api::content_client::{MultipartStart, PutBody, SignedPut};
use maxlofs_api::{CreateOutcome, DeviceInfo, GrantId, MediaGrantList, MediaId};

type Hook = Box<dyn FnOnce() + Send>;

/// An object store in memory that checks what it is sent as the emulator does.
#[derive(Default)]
struct Objects {
    held: Mutex<HashMap<String, Vec<u8>>>,
    /// Whole objects PUT and not yet registered by `s3_object`.
    staged: Mutex<HashMap<String, Vec<u8>>>,
    /// (upload_id, part_num) → bytes.
    parts: Mutex<BTreeMap<(String, u64), Vec<u8>>>,
    /// upload_id → the part hashes `multipart` named.
    uploads: Mutex<HashMap<String, Vec<String>>>,
    object_puts: AtomicUsize,
    part_puts: AtomicUsize,
    /// PUTs still to fail with a 503.
    failing_puts: AtomicUsize,
    disabled: AtomicBool,
    /// How many files each `upload` call asked about.
    asked: Mutex<Vec<usize>>,
    /// `upload` calls still to fail with a 503.
    failing_asks: AtomicUsize,
    /// `upload` answers take this long (questions asked meanwhile gather).
    ask_delay: Mutex<Duration>,
    /// Runs once, before the next PUT reads its body.
    before_put: Mutex<Option<Hook>>,
}

impl Objects {
    fn holds(&self, hash: &str) -> bool {
        self.held.lock().contains_key(hash)
    }

    fn bytes(&self, hash: &str) -> Option<Vec<u8>> {
        self.held.lock().get(hash).cloned()
    }

    fn puts(&self) -> usize {
        self.object_puts.load(Ordering::SeqCst) + self.part_puts.load(Ordering::SeqCst)
    }
}

fn refused(message: &str) -> ApiError {
    ApiError::BadRequest {
        status: 400,
        message: message.into(),
    }
}

#[async_trait::async_trait]
impl ContentApi for Objects {
    async fn upload(&self, _: GrantId, files: &[FileRef]) -> Result<UploadAnswer, ApiError> {
        self.asked.lock().push(files.len());
        let delay = *self.ask_delay.lock();
        tokio::time::sleep(delay).await;
        if self
            .failing_asks
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(ApiError::Transient("HTTP 503".into()));
        }
        if self.disabled.load(Ordering::SeqCst) {
            return Ok(UploadAnswer {
                upload_list: Vec::new(),
                upload_disabled: Some(true),
            });
        }
        let item = |file: &FileRef| {
            let held = self.holds(&file.file_hash);
            let whole = !held && file.file_size <= maxlofs_api::hash::SINGLE_PART_MAX;
            UploadItem {
                file_hash: file.file_hash.clone(),
                file_size: file.file_size,
                skip_upload: held.then_some(true),
                signed_opts: whole.then(|| SignedOpts {
                    host: "memory".into(),
                    method: "PUT".into(),
                    path: format!("/object/{}", file.file_hash),
                    url: format!("memory:/object/{}", file.file_hash),
                    headers: BTreeMap::from([(
                        "Content-Length".into(),
                        file.file_size.to_string(),
                    )]),
                }),
                s3_bucket_id: Some("bucket".into()),
            }
        };
        Ok(UploadAnswer {
            upload_list: files.iter().map(item).collect(),
            upload_disabled: None,
        })
    }

    async fn s3_object(&self, _: GrantId, request: &S3ObjectRequest) -> Result<(), ApiError> {
        let bytes = self
            .staged
            .lock()
            .remove(&request.file_hash)
            .ok_or_else(|| refused("nothing was PUT"))?;
        self.held.lock().insert(request.file_hash.clone(), bytes);
        Ok(())
    }

    async fn multipart(
        &self,
        _: GrantId,
        request: &MultipartRequest,
    ) -> Result<MultipartStart, ApiError> {
        if self.holds(&request.file_hash) {
            return Ok(MultipartStart::Held);
        }
        let upload_id = format!("u{}", self.uploads.lock().len());
        let hashes = request
            .part_list
            .iter()
            .map(|p| p.part_hash.clone())
            .collect();
        self.uploads.lock().insert(upload_id.clone(), hashes);
        Ok(MultipartStart::Started(MultipartAnswer {
            signed_url_list: request
                .part_list
                .iter()
                .map(|part| SignedPartUrl {
                    part_num: part.part_num,
                    url: format!("memory:/part/{upload_id}/{}", part.part_num),
                })
                .collect(),
            upload_id,
        }))
    }

    async fn multipart_complete(
        &self,
        _: GrantId,
        request: &MultipartCompleteRequest,
    ) -> Result<(), ApiError> {
        let parts = self.parts.lock();
        let mut whole = Vec::new();
        let mut digests = Vec::new();
        for (index, part) in request.part_list.iter().enumerate() {
            assert_eq!(part.part_num, index as u64 + 1, "parts in order");
            let bytes = &parts[&(request.upload_id.clone(), part.part_num)];
            assert_eq!(part.etag, etag(bytes));
            digests.extend_from_slice(&Sha256::digest(bytes));
            whole.extend_from_slice(bytes);
        }
        if hex::encode(Sha256::digest(&digests)) != request.file_hash {
            return Err(refused("the parts do not make the file hash"));
        }
        self.held.lock().insert(request.file_hash.clone(), whole);
        Ok(())
    }

    async fn download(&self, _: GrantId, hashes: &[String]) -> Result<DownloadAnswer, ApiError> {
        let held = self.held.lock();
        Ok(DownloadAnswer {
            download_list: hashes
                .iter()
                .map(|hash| DownloadItem {
                    file_hash: hash.clone(),
                    file_size: held.get(hash).map_or(0, |b| b.len() as u64),
                    chunk_size: 0,
                    url: held.contains_key(hash).then(|| format!("memory:{hash}")),
                    is_deleted: !held.contains_key(hash),
                })
                .collect(),
        })
    }

    async fn put(&self, target: &SignedPut, len: u64, body: PutBody) -> Result<String, ApiError> {
        let hook = self.before_put.lock().take();
        if let Some(hook) = hook {
            hook();
        }
        let chunks: Vec<_> = body.collect().await;
        let mut bytes = Vec::new();
        for chunk in chunks {
            match chunk {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                // The body broke off: the store keeps nothing.
                Err(err) => return Err(ApiError::Transient(format!("body: {err}"))),
            }
        }
        if bytes.len() as u64 != len {
            return Err(refused("length"));
        }
        let path = target.url.strip_prefix("memory:").unwrap();
        let is_part = path.starts_with("/part/");
        let counter = match is_part {
            true => &self.part_puts,
            false => &self.object_puts,
        };
        counter.fetch_add(1, Ordering::SeqCst);
        if self
            .failing_puts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(ApiError::Transient("HTTP 503".into()));
        }
        let tag = etag(&bytes);
        if let Some(hash) = path.strip_prefix("/object/") {
            if hex::encode(Sha256::digest(&bytes)) != hash {
                return Err(refused("BadDigest"));
            }
            self.staged.lock().insert(hash.into(), bytes);
        } else {
            let (upload_id, num) = path["/part/".len()..].split_once('/').unwrap();
            let num: u64 = num.parse().unwrap();
            let expected = self.uploads.lock()[upload_id][num as usize - 1].clone();
            if hex::encode(Sha256::digest(&bytes)) != expected {
                return Err(refused("BadDigest"));
            }
            self.parts.lock().insert((upload_id.into(), num), bytes);
        }
        Ok(tag)
    }

    async fn get(&self, _: &str) -> Result<PutBody, ApiError> {
        unreachable!("a restore asks for ranges")
    }

    async fn get_range(&self, url: &str, range: std::ops::Range<u64>) -> Result<PutBody, ApiError> {
        let hash = url.strip_prefix("memory:").unwrap();
        let bytes = self.held.lock()[hash][range.start as usize..range.end as usize].to_vec();
        Ok(Box::pin(futures_util::stream::iter([Ok(bytes)])))
    }
}

fn etag(bytes: &[u8]) -> String {
    format!("\"{}\"", &hex::encode(Sha256::digest(bytes))[..16])
}

/// The catalog, checking that every record it is sent names content the store holds.
struct Checked {
    api: Arc<MemoryApi>,
    objects: Arc<Objects>,
    violations: Mutex<Vec<String>>,
    /// The grant list says grant 1's volume is encrypted.
    encrypted: bool,
}

impl Checked {
    fn check(&self, hash: &str) {
        if !self.objects.holds(hash) {
            self.violations
                .lock()
                .push(format!("a record named {hash} before it was up"));
        }
    }
}

#[async_trait::async_trait]
impl MediaApi for Checked {
    async fn create(&self, grant: GrantId, media: &NewMedia) -> Result<CreateOutcome, ApiError> {
        self.check(&media.state.file_hash);
        self.api.create(grant, media).await
    }
    async fn update(
        &self,
        grant: GrantId,
        media_id: MediaId,
        state: &MediaState,
    ) -> Result<(), ApiError> {
        self.check(&state.file_hash);
        self.api.update(grant, media_id, state).await
    }
    async fn delete(&self, grant: GrantId, media_id: MediaId) -> Result<(), ApiError> {
        self.api.delete(grant, media_id).await
    }
    async fn current_device(&self) -> Result<DeviceInfo, ApiError> {
        self.api.current_device().await
    }
    async fn media_grants(&self) -> Result<MediaGrantList, ApiError> {
        let mut list = self.api.media_grants().await?;
        if self.encrypted {
            for grant in &mut list.media_grant_list {
                grant.volume_encryption_key = Some("a key".into());
            }
        }
        Ok(list)
    }
    fn set_keys(&self, keys: Keys) {
        self.api.set_keys(keys)
    }
}

struct ContentRig {
    rig: Rig,
    objects: Arc<Objects>,
    checked: Arc<Checked>,
}

impl ContentRig {
    fn new() -> ContentRig {
        ContentRig::with(false, false)
    }

    /// `grant_unchecked`: the mount could not check the grant; `encrypted`: it is encrypted.
    fn with(grant_unchecked: bool, encrypted: bool) -> ContentRig {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("b")).unwrap();
        let api = Arc::new(MemoryApi::new(store_config(), keys("k1")));
        let objects = Arc::new(Objects::default());
        let checked = Arc::new(Checked {
            api: api.clone(),
            objects: objects.clone(),
            violations: Mutex::default(),
            encrypted,
        });
        let rig = Rig::start(
            dir,
            api,
            Options {
                engine_api: Some(checked.clone()),
                content: Some(objects.clone()),
                grant_unchecked,
                ..Options::default()
            },
        );
        ContentRig {
            rig,
            objects,
            checked,
        }
    }

    fn no_violations(&self) {
        assert_eq!(*self.checked.violations.lock(), Vec::<String>::new());
    }
}

/// Bytes that differ from part to part and file to file.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 20) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_goes_up_before_the_record_and_an_update_after_its_new_content() {
    let rig = ContentRig::new();
    rig.rig.write("a.jpg", b"first");
    rig.rig.settled().await;
    assert_eq!(rig.objects.bytes(&maxlo_hash(b"first")).unwrap(), b"first");
    assert_eq!(rig.rig.live()["a.jpg"].file_hash, maxlo_hash(b"first"));
    rig.rig.write("a.jpg", b"second");
    rig.rig.settled().await;
    assert_eq!(
        rig.objects.bytes(&maxlo_hash(b"second")).unwrap(),
        b"second"
    );
    assert_eq!(rig.rig.live()["a.jpg"].file_hash, maxlo_hash(b"second"));
    assert_eq!(rig.objects.object_puts.load(Ordering::SeqCst), 2);
    // Times only: the record keeps its hash, and nothing goes up again.
    let file = std::fs::File::options()
        .write(true)
        .open(rig.rig.path("a.jpg"))
        .unwrap();
    file.set_modified(std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000))
        .unwrap();
    rig.rig.sink.send(Event::TimesSet {
        path: "a.jpg".into(),
        ino: rig.rig.ino("a.jpg"),
    });
    rig.rig.settled().await;
    assert_eq!(rig.rig.calls(Call::Update), 2);
    assert_eq!(rig.objects.object_puts.load(Ordering::SeqCst), 2);
    rig.no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_content_goes_up_once() {
    let rig = ContentRig::new();
    let bytes = pattern(300_000, 1);
    for name in ["a", "b", "c", "d"] {
        rig.rig.write(name, &bytes);
    }
    rig.rig.settled().await;
    assert_eq!(rig.rig.live().len(), 4);
    assert_eq!(rig.objects.puts(), 1);
    assert_eq!(rig.objects.bytes(&maxlo_hash(&bytes)).unwrap(), bytes);
    rig.no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_put_holds_the_record_back_until_the_content_is_up() {
    let rig = ContentRig::new();
    rig.objects.failing_puts.store(2, Ordering::SeqCst);
    rig.rig.write("a", b"content");
    rig.rig.settled().await;
    assert_eq!(rig.objects.object_puts.load(Ordering::SeqCst), 3);
    assert_eq!(rig.rig.live()["a"].file_hash, maxlo_hash(b"content"));
    assert_eq!(rig.rig.calls(Call::Create), 1);
    rig.no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_questions_of_looks_side_by_side_share_upload_calls() {
    let rig = ContentRig::new();
    *rig.objects.ask_delay.lock() = Duration::from_millis(100);
    // The first call fails: every file it asked about is asked again.
    rig.objects.failing_asks.store(1, Ordering::SeqCst);
    let files: Vec<_> = (0..12).map(|seed| pattern(1000, seed)).collect();
    for (seed, bytes) in files.iter().enumerate() {
        rig.rig.write(&format!("f{seed}"), bytes);
    }
    rig.rig.settled().await;
    for bytes in &files {
        assert!(rig.objects.holds(&maxlo_hash(bytes)));
    }
    assert_eq!(rig.rig.live().len(), 12);
    let asked = rig.objects.asked.lock().clone();
    let first = asked[0];
    assert_eq!(asked.iter().sum::<usize>(), 12 + first, "{asked:?}");
    assert!(asked.len() < 12, "one call per file: {asked:?}");
    rig.no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_file_goes_up_in_its_hashing_parts() {
    let rig = ContentRig::new();
    let bytes = pattern(17 * 1024 * 1024 + 5, 2);
    rig.rig.write("big.mov", &bytes);
    rig.rig.settled().await;
    let hash = maxlo_hash(&bytes);
    assert_eq!(rig.rig.live()["big.mov"].file_hash, hash);
    assert!(rig.objects.bytes(&hash).unwrap() == bytes);
    assert_eq!(rig.objects.part_puts.load(Ordering::SeqCst), 3);
    // Done: nothing is kept to resume.
    assert_eq!(rig.rig.engine.index.multipart(&hash).unwrap(), None);
    rig.no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_while_it_is_sent_ends_with_its_final_content() {
    let rig = ContentRig::new();
    let path = rig.rig.path("a");
    let sink = rig.rig.sink.clone();
    rig.rig.write("a", &pattern(100_000, 3));
    let ino = rig.rig.ino("a");
    let last = pattern(100_000, 4);
    let written = last.clone();
    *rig.objects.before_put.lock() = Some(Box::new(move || {
        // Same size, in place: only the bytes tell.
        std::fs::write(&path, &written).unwrap();
        sink.send(Event::ContentChanged {
            path: "a".into(),
            ino,
        });
    }));
    rig.rig.settled().await;
    let hash = maxlo_hash(&last);
    assert_eq!(rig.rig.live()["a"].file_hash, hash);
    assert_eq!(rig.objects.bytes(&hash).unwrap(), last);
    // The first content was sent whole from the bytes hashed: the object is what its hash names,
    // and no record names it.
    let first = pattern(100_000, 3);
    assert_eq!(rig.objects.bytes(&maxlo_hash(&first)).unwrap(), first);
    assert_eq!(rig.rig.calls(Call::Create), 1);
    // A normal race: looked at again once it settled, and never reported as an error.
    assert_eq!(rig.rig.engine.status().last_error, None);
    rig.no_violations();
}

/// A file read again for its PUT (over the 1 MiB whose hashed bytes are kept) is removed while
/// its content is sent: the content goes up, but no record is made of a file that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_removed_while_it_is_sent_gets_no_record() {
    let rig = ContentRig::new();
    let content = pattern(2_000_000, 7);
    rig.rig.write("a", &content);
    let (path, sink) = (rig.rig.path("a"), rig.rig.sink.clone());
    *rig.objects.before_put.lock() = Some(Box::new(move || {
        std::fs::remove_file(&path).unwrap();
        sink.send(Event::Removed {
            path: "a".into(),
            is_dir: false,
        });
    }));
    rig.rig.settled().await;
    assert!(rig.objects.holds(&maxlo_hash(&content)));
    assert_eq!(rig.rig.calls(Call::Create), 0);
    assert_eq!(rig.rig.calls(Call::Delete), 0);
    rig.no_violations();
}

/// Renamed while its content is sent, whether sent from the bytes hashed or read again: one
/// record, at the new name, and the content sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_renamed_while_it_is_sent_gets_its_one_record_at_the_new_name() {
    for (len, seed) in [(100_000, 8), (2_000_000, 9)] {
        let rig = ContentRig::new();
        let content = pattern(len, seed);
        rig.rig.write("a", &content);
        let (from, to, sink) = (rig.rig.path("a"), rig.rig.path("b"), rig.rig.sink.clone());
        *rig.objects.before_put.lock() = Some(Box::new(move || {
            std::fs::rename(&from, &to).unwrap();
            sink.send(Event::Renamed {
                from: "a".into(),
                to: "b".into(),
                is_dir: false,
            });
        }));
        rig.rig.settled().await;
        let live = rig.rig.live();
        assert_eq!(live.keys().collect::<Vec<_>>(), ["b"], "{len} bytes");
        assert_eq!(live["b"].file_hash, maxlo_hash(&content));
        assert_eq!(rig.rig.calls(Call::Create), 1);
        assert_eq!(rig.rig.calls(Call::Delete), 0);
        assert_eq!(rig.objects.puts(), 1, "{len} bytes sent once");
        rig.no_violations();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_disabled_by_the_service_still_send_records_and_say_so() {
    let rig = ContentRig::new();
    rig.objects.disabled.store(true, Ordering::SeqCst);
    rig.rig.write("a", b"content");
    rig.rig.settled().await;
    assert_eq!(rig.rig.live()["a"].file_hash, maxlo_hash(b"content"));
    assert_eq!(rig.objects.puts(), 0);
    let off = rig.rig.engine.status().uploads_off.unwrap();
    assert!(off.contains("disabled by the service"), "{off}");
    // Enabled again: the next file goes up, and status no longer says so.
    rig.objects.disabled.store(false, Ordering::SeqCst);
    rig.rig.write("b", b"more");
    rig.rig.settled().await;
    assert!(rig.objects.holds(&maxlo_hash(b"more")));
    assert_eq!(rig.rig.engine.status().uploads_off, None);
    assert_eq!(rig.rig.engine.status().uploaded_bytes, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_only_sends_no_content() {
    let rig = Rig::new();
    rig.write("a", b"content");
    rig.settled().await;
    assert_eq!(rig.live()["a"].file_hash, maxlo_hash(b"content"));
    assert!(rig.engine.status().uploads_off.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_found_encrypted_before_the_first_upload_gets_records_only() {
    let rig = ContentRig::with(true, true);
    rig.rig.write("a", b"content");
    rig.rig.write("b", b"other");
    rig.rig.settled().await;
    assert_eq!(rig.rig.live().len(), 2);
    assert_eq!(rig.objects.puts(), 0);
    assert_eq!(rig.rig.calls(Call::MediaGrant), 1, "asked once");
    let off = rig.rig.engine.status().uploads_off.unwrap();
    assert!(off.contains("encrypted"), "{off}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_found_plain_before_the_first_upload_takes_content() {
    let rig = ContentRig::with(true, false);
    rig.rig.write("a", b"content");
    rig.rig.settled().await;
    assert!(rig.objects.holds(&maxlo_hash(b"content")));
    assert_eq!(rig.rig.engine.status().uploads_off, None);
    rig.no_violations();
}

/// A file deleted through the mount comes back from the record its delete kept, with its bytes
/// and mtime, and the engine sends it as a new file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_file_is_restored_from_its_last_record_and_recorded_anew() {
    let rig = ContentRig::new();
    let content = pattern(100_000, 3);
    rig.rig.write("a", &content);
    rig.rig.settled().await;
    let mtime = std::fs::metadata(rig.rig.path("a"))
        .unwrap()
        .modified()
        .unwrap();
    rig.rig.remove("a");
    rig.rig.settled().await;
    assert!(!rig.rig.live().contains_key("a"));

    let engine = &rig.rig.engine;
    // As `maxlofs restore --deleted` asks, through the mount root's extended attribute.
    let request = br#"{"restore":{"paths":["a","never"],"deleted":true}}"#;
    maxlofs_fs::StatusSource::heal(engine.as_ref(), request).unwrap();
    let done = async {
        loop {
            match engine.status().heal {
                Some(job) if !job.running => return job,
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    };
    let job = tokio::time::timeout(Duration::from_secs(20), done)
        .await
        .expect("the restore ends");
    assert_eq!(job.restored, 1);
    assert_eq!(job.failed.len(), 1);
    assert_eq!(job.failed[0].path, "never");
    assert!(
        job.failed[0].reason.contains("no deleted record"),
        "{}",
        job.failed[0].reason
    );
    assert_eq!(std::fs::read(rig.rig.path("a")).unwrap(), content);
    let restored = std::fs::metadata(rig.rig.path("a")).unwrap();
    assert_eq!(restored.modified().unwrap(), mtime);
    // Marked by the restore, not left for the next mount's reconcile: live again.
    rig.rig.settled().await;
    assert_eq!(rig.rig.live()["a"].file_hash, maxlo_hash(&content));
    rig.no_violations();
}
