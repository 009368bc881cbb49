//! The emulator's object store and URL signing: the S3 side of the content calls.
//!
//! Objects are files named by their file_hash in the data folder:
//!
//! ```text
//! <root>/objects/<file_hash>         held objects: a file (a whole-object PUT that s3_object
//!                                    registered) or a folder (a completed multipart upload: its
//!                                    upload folder, with object.json, served part after part)
//! <root>/pending/<file_hash>         whole-object PUTs not registered yet
//! <root>/uploads/<upload_id>/        a multipart upload: manifest.json (its multipart request),
//!                                    part-<n> (one file per part PUT) and part-<n>.md5 (its MD5)
//! <root>/tmp/                        request bodies while they arrive, removed objects (emptied
//!                                    at start)
//! <root>/signing.key                 the HMAC key of the signed URLs
//! ```
//!
//! Every change is a rename of a finished file or folder, so a kill leaves no half object:
//! `multipart_complete` writes object.json into the upload's folder, then renames the folder into
//! `objects/`; the bytes are never copied or read again. The signing key is kept with the objects
//! so that URLs handed out survive a restart, as a multipart upload that resumes needs. See
//! docs/emulator.md, "Content".

use super::store::Invalid;
use hmac::{Hmac, Mac};
use maxlofs_api::content::{
    DownloadItem, FileRef, MultipartCompleteRequest, MultipartConflict, MultipartRequest, PartSpec,
    S3ObjectRequest, SignedOpts, UploadItem,
};
use maxlofs_api::contract;
use maxlofs_api::hash;
use md5::Md5;
use parking_lot::Mutex;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tempfile::{NamedTempFile, TempDir};

/// The one bucket of the emulator: objects are content-addressed, shared by every grant.
pub const BUCKET: &str = "maxlo-emulator";

const EXPIRES: &str = "X-Maxlo-Expires";
const CONTENT_LENGTH: &str = "X-Maxlo-Content-Length";
const CONTENT_SHA256: &str = "X-Maxlo-Content-Sha256";
const SIGNATURE: &str = "X-Maxlo-Signature";
/// Temporary data folders are `<TEMP_PREFIX><pid>-<random>` in the system's temp folder.
const TEMP_PREFIX: &str = "maxlofs-emulator-objects-";
/// An upload's multipart request, in its folder.
const MANIFEST: &str = "manifest.json";
/// What a multipart object is (`PartsObject`), in its folder: written last, before the folder
/// becomes held.
const OBJECT: &str = "object.json";

/// How the object store is set up and the switches of the content calls.
#[derive(Clone, Debug, Default)]
pub struct ObjectsConfig {
    /// The data folder; a temporary one, removed at exit, when absent.
    pub dir: Option<PathBuf>,
    /// How long a signed URL stays valid.
    pub url_ttl: Duration,
    /// How long a PUT's body may send nothing before it is refused (`None`: no limit).
    pub body_idle: Option<Duration>,
    /// `upload` answers `upload_disabled: true` and an empty list.
    pub upload_disabled: bool,
    /// `multipart` answers 409 `no_active_file: true` for content it does not hold.
    pub no_active_file: bool,
}

/// An S3 error: its status, `<Code>` and `<Message>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Error {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl S3Error {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        S3Error {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn signature() -> Self {
        S3Error::new(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        )
    }
}

/// What a verified signed URL allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permit {
    /// The exact Content-Length a PUT must have.
    pub content_length: Option<u64>,
    /// The SHA-256 (lowercase hex) a PUT's body must have.
    pub content_sha256: Option<String>,
}

/// A `multipart` outcome.
#[derive(Debug)]
pub enum MultipartStart {
    Started { upload_id: String },
    Conflict(MultipartConflict),
}

/// Why `multipart_complete` refused, or an I/O failure.
#[derive(Debug, thiserror::Error)]
pub enum CompleteError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// One held object, as `GET /_emulator/objects` lists it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ObjectInfo {
    pub file_hash: String,
    pub file_size: u64,
    pub s3_bucket_id: String,
}

/// `object.json` of a multipart object: what serving it from its part files needs.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct PartsObject {
    file_size: u64,
    /// Every part but the last has this size (the File Hashing part size).
    part_size: u64,
    /// S3's ETag of a multipart object, quotes included.
    etag: String,
}

/// A held object: its size, its ETag when known, and the files that hold its bytes.
#[derive(Clone, Debug)]
pub struct HeldObject {
    pub size: u64,
    /// The ETag of a multipart object (`"<hex MD5 of the part MD5s>-<parts>"`, S3's form). None
    /// for a whole object: its MD5 is not kept.
    pub etag: Option<String>,
    layout: Layout,
}

#[derive(Clone, Debug)]
enum Layout {
    /// One file.
    Whole(PathBuf),
    /// `part-1`, `part-2`, … in the folder: every part `part_size` bytes but a shorter last one.
    Parts { dir: PathBuf, part_size: u64 },
}

/// Bytes of one file: (file, offset, length).
pub type Run = (PathBuf, u64, u64);

impl HeldObject {
    /// The files that hold bytes `first..end` (end exclusive, at most the size), in order.
    pub fn runs(&self, first: u64, end: u64) -> Vec<Run> {
        let end = end.min(self.size);
        match &self.layout {
            Layout::Whole(path) if first < end => vec![(path.clone(), first, end - first)],
            Layout::Whole(_) => Vec::new(),
            Layout::Parts { dir, part_size } => {
                let mut runs = Vec::new();
                let mut at = first;
                while at < end {
                    let index = at / part_size;
                    let to = end.min((index + 1) * part_size);
                    runs.push((
                        dir.join(part_name(index + 1)),
                        at - index * part_size,
                        to - at,
                    ));
                    at = to;
                }
                runs
            }
        }
    }

    /// The file that holds the first byte (the only file of an empty object).
    fn first_file(&self) -> PathBuf {
        match &self.layout {
            Layout::Whole(path) => path.clone(),
            Layout::Parts { dir, .. } => dir.join(part_name(1)),
        }
    }
}

pub struct ObjectStore {
    root: PathBuf,
    config: ObjectsConfig,
    signing_key: [u8; 32],
    /// Seconds the store's clock (signed URLs' expiry) runs ahead of the real one: advanced by
    /// `POST /_emulator/clock`, so a test need not wait out a URL's lifetime.
    clock_ahead: AtomicU64,
    /// GETs of signed URLs still to be served damaged, per object
    /// (`POST /_emulator/objects/:file_hash/damage-next`).
    damaged_gets: Mutex<HashMap<String, u64>>,
    /// Keeps a temporary data folder alive as long as the store.
    _temp: Option<TempDir>,
}

impl ObjectStore {
    pub fn open(config: ObjectsConfig) -> io::Result<Self> {
        let (root, temp) = match &config.dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let tmp = std::env::temp_dir();
                remove_abandoned(&tmp);
                let temp = tempfile::Builder::new()
                    .prefix(&format!("{TEMP_PREFIX}{}-", std::process::id()))
                    .tempdir_in(tmp)?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        for sub in ["objects", "pending", "uploads"] {
            fs::create_dir_all(root.join(sub))?;
        }
        // Bodies that were arriving when the emulator stopped will never be finished.
        let tmp = root.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        let signing_key = signing_key(&root.join("signing.key"))?;
        Ok(ObjectStore {
            root,
            config,
            signing_key,
            clock_ahead: AtomicU64::new(0),
            damaged_gets: Mutex::default(),
            _temp: temp,
        })
    }

    /// The store's clock, in Unix seconds: the real one plus what tests advanced it by.
    fn now(&self) -> u64 {
        unix_now().saturating_add(self.clock_ahead.load(Ordering::Relaxed))
    }

    /// Moves the store's clock `secs` ahead; answers how far ahead of the real one it is now.
    pub fn advance_clock(&self, secs: u64) -> u64 {
        let before = self
            .clock_ahead
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |ahead| {
                Some(ahead.saturating_add(secs))
            })
            .unwrap_or_default();
        before.saturating_add(secs)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config(&self) -> &ObjectsConfig {
        &self.config
    }

    /// Where a held object is: its file, or the folder of its parts.
    fn object_path(&self, file_hash: &str) -> PathBuf {
        self.root.join("objects").join(file_hash)
    }

    /// The held object of `file_hash`, or None. `file_hash` must name no other folder (callers
    /// check that it is 64 hex characters, or take it from a signed URL or `objects/` itself).
    pub fn held_object(&self, file_hash: &str) -> io::Result<Option<HeldObject>> {
        let path = self.object_path(file_hash);
        let metadata = match fs::metadata(&path) {
            Ok(metadata) => metadata,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        if !metadata.is_dir() {
            return Ok(Some(HeldObject {
                size: metadata.len(),
                etag: None,
                layout: Layout::Whole(path),
            }));
        }
        let object: PartsObject = match fs::read(path.join(OBJECT)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(io::Error::from)?,
            // Removed since the first look.
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        if object.part_size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: part_size 0", path.join(OBJECT).display()),
            ));
        }
        Ok(Some(HeldObject {
            size: object.file_size,
            etag: Some(object.etag),
            layout: Layout::Parts {
                dir: path,
                part_size: object.part_size,
            },
        }))
    }

    /// The size of a held object, if held (an object that cannot be read is not held).
    pub fn held(&self, file_hash: &str) -> Option<u64> {
        self.held_object(file_hash).ok().flatten().map(|o| o.size)
    }

    /// `upload`: skip what is held; a signed PUT to `origin` (`http://host:port`) for a file of
    /// at most 16 MiB; for a larger one only the bucket, which says "use multipart".
    pub fn upload_item(&self, file: &FileRef, origin: &str) -> Result<UploadItem, Invalid> {
        check_hash("file_list: file_hash", &file.file_hash)?;
        let held = self.held(&file.file_hash).is_some();
        let signed_opts = (!held && hash::part_size(file.file_size).is_none()).then(|| {
            let path = self.sign(
                "PUT",
                &format!("/_s3/{BUCKET}/{}", file.file_hash),
                &[
                    (CONTENT_LENGTH, file.file_size.to_string()),
                    (CONTENT_SHA256, file.file_hash.clone()),
                ],
            );
            SignedOpts {
                host: origin.trim_start_matches("http://").to_string(),
                method: "PUT".to_string(),
                url: format!("{origin}{path}"),
                path,
                headers: BTreeMap::from([(
                    "Content-Length".to_string(),
                    file.file_size.to_string(),
                )]),
            }
        });
        Ok(UploadItem {
            file_hash: file.file_hash.clone(),
            file_size: file.file_size,
            skip_upload: held.then_some(true),
            signed_opts,
            s3_bucket_id: Some(BUCKET.to_string()),
        })
    }

    /// The path and query of a signed GET of a held object.
    pub fn object_get_path(&self, file_hash: &str) -> String {
        self.sign("GET", &format!("/_s3/{BUCKET}/{file_hash}"), &[])
    }

    /// `download`: a signed GET per held hash; a hash not held is `is_deleted`.
    pub fn download_item(&self, file_hash: &str, origin: &str) -> Result<DownloadItem, Invalid> {
        check_hash("hash_list", file_hash)?;
        Ok(match self.held(file_hash) {
            Some(file_size) => DownloadItem {
                file_hash: file_hash.to_string(),
                file_size,
                chunk_size: hash::part_size(file_size).unwrap_or(file_size),
                url: Some(format!("{origin}{}", self.object_get_path(file_hash))),
                is_deleted: false,
            },
            None => DownloadItem {
                file_hash: file_hash.to_string(),
                file_size: 0,
                chunk_size: 0,
                url: None,
                is_deleted: true,
            },
        })
    }

    /// `s3_object`: makes a PUT object held. Answers whether it was newly registered; an object
    /// held already is registered again without change.
    pub fn register(&self, request: &S3ObjectRequest) -> Result<bool, CompleteError> {
        check_bucket(&request.s3_bucket_id)?;
        check_hash("file_hash", &request.file_hash)?;
        let pending = self.root.join("pending").join(&request.file_hash);
        if let Some(size) = self.held(&request.file_hash) {
            check_size(request.file_size, size)?;
            // A PUT of content held already has nothing to add.
            match fs::remove_file(&pending) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err.into()),
                _ => return Ok(false),
            }
        }
        let size = match fs::metadata(&pending) {
            Ok(metadata) => metadata.len(),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(
                    Invalid::new("file_hash", "no object was uploaded for this hash").into(),
                )
            }
            Err(err) => return Err(err.into()),
        };
        check_size(request.file_size, size)?;
        fs::rename(pending, self.object_path(&request.file_hash))?;
        Ok(true)
    }

    /// `multipart`: checks the part list against the File Hashing parts and starts an upload.
    pub fn start_multipart(
        &self,
        request: &MultipartRequest,
    ) -> Result<MultipartStart, CompleteError> {
        check_hash("file_hash", &request.file_hash)?;
        let part_size = hash::part_size(request.file_size).ok_or_else(|| {
            Invalid::new(
                "file_size",
                "a file of at most 16 MiB is uploaded whole, not in parts",
            )
        })?;
        let expected_parts = request.file_size.div_ceil(part_size);
        if request.part_list.len() as u64 != expected_parts {
            return Err(Invalid::new(
                "part_list",
                format!(
                    "a file of {} bytes has {expected_parts} parts of {part_size} bytes",
                    request.file_size
                ),
            )
            .into());
        }
        for (index, part) in (0u64..).zip(&request.part_list) {
            let size = part_size.min(request.file_size - index * part_size);
            if part.part_num != index + 1 || part.part_size != size {
                return Err(Invalid::new(
                    "part_list",
                    format!(
                        "entry {} must be part_num {} of {size} bytes",
                        index + 1,
                        index + 1
                    ),
                )
                .into());
            }
            check_hash("part_list: part_hash", &part.part_hash)?;
        }
        if self.held(&request.file_hash).is_some() {
            return Ok(MultipartStart::Conflict(MultipartConflict {
                skip_upload: Some(true),
                no_active_file: None,
            }));
        }
        if self.config.no_active_file {
            return Ok(MultipartStart::Conflict(MultipartConflict {
                skip_upload: None,
                no_active_file: Some(true),
            }));
        }
        if let Some(upload_id) = self.upload_under_way(request)? {
            return Ok(MultipartStart::Started { upload_id });
        }
        let upload_id = hex::encode(rand::random::<[u8; 16]>());
        let dir = self.upload_dir(&upload_id);
        fs::create_dir(&dir)?;
        let mut manifest = NamedTempFile::new_in(&dir)?;
        serde_json::to_writer(&mut manifest, request).map_err(io::Error::from)?;
        manifest
            .persist(dir.join(MANIFEST))
            .map_err(io::Error::from)?;
        Ok(MultipartStart::Started { upload_id })
    }

    /// The upload already under way for exactly `request` (the same file, the same parts), if
    /// any: asked again, as a client whose URLs expired does, it is answered again with new
    /// URLs, and the parts already sent stay (docs/contract.md, "Content calls").
    fn upload_under_way(&self, request: &MultipartRequest) -> io::Result<Option<String>> {
        let entries = match fs::read_dir(self.root.join("uploads")) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(upload_id) = name.to_str().filter(|id| is_upload_id(id)) else {
                continue;
            };
            // A manifest that cannot be read (a completion removing it) is no upload under way.
            let Ok(bytes) = fs::read(entry.path().join(MANIFEST)) else {
                continue;
            };
            let manifest = serde_json::from_slice::<MultipartRequest>(&bytes).ok();
            if manifest.as_ref() == Some(request) {
                return Ok(Some(upload_id.to_string()));
            }
        }
        Ok(None)
    }

    /// The path and query of a signed part PUT.
    pub fn part_put_path(&self, file_hash: &str, upload_id: &str, part: &PartSpec) -> String {
        self.sign(
            "PUT",
            &format!("/_s3/{BUCKET}/{file_hash}/{upload_id}/{}", part.part_num),
            &[
                (CONTENT_LENGTH, part.part_size.to_string()),
                (CONTENT_SHA256, part.part_hash.clone()),
            ],
        )
    }

    /// `multipart_complete`, as S3 completes a multipart upload: checks the listed ETags against
    /// the parts received and that the parts' SHA-256s (each checked as its PUT arrived, against
    /// the part_hash its URL signs) make `file_hash`, then holds the upload's folder as the
    /// object, its parts served in order. Nothing is copied and no byte read again: the cost
    /// grows with the number of parts. The folder's rename is the one step that makes the object
    /// held, so an interrupted completion leaves the upload under way, or the object held.
    /// Blocking (a few small files per part).
    pub fn complete(&self, request: &MultipartCompleteRequest) -> Result<(), CompleteError> {
        check_bucket(&request.s3_bucket_id)?;
        let unknown = || Invalid::new("upload_id", "no such multipart upload");
        if !is_upload_id(&request.upload_id) {
            return Err(unknown().into());
        }
        let dir = self.upload_dir(&request.upload_id);
        let manifest: MultipartRequest = match fs::read(dir.join(MANIFEST)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(io::Error::from)?,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Err(unknown().into()),
            Err(err) => return Err(err.into()),
        };
        if manifest.file_hash != request.file_hash || manifest.file_size != request.file_size {
            return Err(Invalid::new(
                "upload_id",
                "this upload is for another file_hash or file_size",
            )
            .into());
        }
        if request.part_list.len() != manifest.part_list.len() {
            return Err(Invalid::new(
                "part_list",
                format!("must list all {} parts", manifest.part_list.len()),
            )
            .into());
        }
        let mut part_md5s = Vec::with_capacity(16 * manifest.part_list.len());
        for (index, (listed, spec)) in
            (1u64..).zip(request.part_list.iter().zip(&manifest.part_list))
        {
            if listed.part_num != index {
                return Err(Invalid::new(
                    "part_list",
                    "parts must be listed in ascending part_num order from 1",
                )
                .into());
            }
            let md5 = part_md5(&dir, spec)?;
            // S3 takes an ETag with or without its quotes.
            if listed.etag.trim_matches('"') != hex::encode(md5) {
                return Err(Invalid::new(
                    "part_list",
                    format!(
                        "part {}: the etag does not match the uploaded part",
                        spec.part_num
                    ),
                )
                .into());
            }
            part_md5s.extend_from_slice(&md5);
        }
        let part_digests = manifest
            .part_list
            .iter()
            .map(|part| {
                let mut digest = [0u8; 32];
                hex::decode_to_slice(&part.part_hash, &mut digest)
                    .map(|()| digest)
                    .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))
            })
            .collect::<io::Result<Vec<_>>>()?;
        let file_hash = hash::hash_of_parts(&part_digests);
        if file_hash.to_hex() != request.file_hash {
            return Err(
                Invalid::new("file_hash", format!("the parts' hashes make {file_hash}")).into(),
            );
        }
        let object = PartsObject {
            file_size: manifest.file_size,
            part_size: manifest.part_list[0].part_size,
            etag: multipart_etag(&part_md5s, manifest.part_list.len()),
        };
        let hold = || -> io::Result<()> {
            let mut written = self.temp_file()?;
            serde_json::to_writer(&mut written, &object).map_err(io::Error::from)?;
            written.persist(dir.join(OBJECT))?;
            fs::rename(&dir, self.object_path(&request.file_hash))
        };
        match hold() {
            Ok(()) => Ok(()),
            // Held already (by another upload of the same content, or by a completion of this
            // one at the same time): this upload has nothing to add.
            Err(_) if self.held(&request.file_hash).is_some() => match fs::remove_dir_all(&dir) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err.into()),
                _ => Ok(()),
            },
            Err(err) if err.kind() == io::ErrorKind::NotFound => Err(unknown().into()),
            Err(err) => Err(err.into()),
        }
    }

    /// A file in the data folder for a body while it arrives.
    pub fn temp_file(&self) -> io::Result<NamedTempFile> {
        NamedTempFile::new_in(self.root.join("tmp"))
    }

    /// Keeps a verified whole-object body until `s3_object` registers it.
    pub fn keep_pending(&self, body: NamedTempFile, file_hash: &str) -> io::Result<()> {
        body.persist(self.root.join("pending").join(file_hash))?;
        Ok(())
    }

    /// Keeps a verified part and its ETag (a PUT of the same part again replaces them). NotFound
    /// when the upload does not exist (completed, or never started).
    pub fn keep_part(
        &self,
        body: NamedTempFile,
        upload_id: &str,
        part_num: u64,
        etag: &str,
    ) -> io::Result<()> {
        let dir = self.upload_dir(upload_id);
        if !dir.join(MANIFEST).exists() {
            return Err(io::ErrorKind::NotFound.into());
        }
        // The MD5 first, so that a part is never there without it. A part PUT again has the same
        // bytes (its URL signs their SHA-256), so the same MD5.
        let mut md5 = self.temp_file()?;
        md5.write_all(etag.trim_matches('"').as_bytes())?;
        md5.persist(dir.join(format!("{}.md5", part_name(part_num))))?;
        body.persist(dir.join(part_name(part_num)))?;
        Ok(())
    }

    /// Every held object, by file_hash.
    pub fn list(&self) -> io::Result<Vec<ObjectInfo>> {
        let mut objects = Vec::new();
        for entry in fs::read_dir(self.root.join("objects"))? {
            let file_hash = entry?.file_name().to_string_lossy().into_owned();
            // Gone since the listing.
            let Some(object) = self.held_object(&file_hash)? else {
                continue;
            };
            objects.push(ObjectInfo {
                file_hash,
                file_size: object.size,
                s3_bucket_id: BUCKET.to_string(),
            });
        }
        objects.sort_by(|a, b| a.file_hash.cmp(&b.file_hash));
        Ok(objects)
    }

    /// Changes a held object's bytes (its first byte flipped, in its first part for a multipart
    /// one; an empty one gets a byte) so that it no longer matches its hash, and downloads serve
    /// the change. Answers whether it was held.
    pub fn corrupt(&self, file_hash: &str) -> io::Result<bool> {
        let Some(object) = self.held_object(file_hash)? else {
            return Ok(false);
        };
        let path = object.first_file();
        let mut file = match fs::OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(err) => return Err(err),
        };
        let mut first = [0u8; 1];
        let byte = match file.read(&mut first)? {
            0 => 0,
            _ => first[0] ^ 0xff,
        };
        std::os::unix::fs::FileExt::write_all_at(&file, &[byte], 0)?;
        Ok(true)
    }

    /// Serves the next `count` signed GETs of a held object with their first byte flipped,
    /// leaving what is held intact (`corrupt` damages it for good): a transfer damaged on the
    /// way, which a client fetching again gets right. Answers whether it is held.
    pub fn damage_next(&self, file_hash: &str, count: u64) -> io::Result<bool> {
        if self.held_object(file_hash)?.is_none() {
            return Ok(false);
        }
        let mut damaged = self.damaged_gets.lock();
        match count {
            0 => damaged.remove(file_hash),
            count => damaged.insert(file_hash.to_string(), count),
        };
        Ok(true)
    }

    /// Whether this signed GET of `file_hash` is one to serve damaged; counts it if so.
    pub fn take_damage(&self, file_hash: &str) -> bool {
        let mut damaged = self.damaged_gets.lock();
        let Some(left) = damaged.get_mut(file_hash) else {
            return false;
        };
        *left -= 1;
        if *left == 0 {
            damaged.remove(file_hash);
        }
        true
    }

    /// Forgets a held object: one rename out of `objects/`, then its file or folder is removed.
    /// Answers whether it was held.
    pub fn remove(&self, file_hash: &str) -> io::Result<bool> {
        let removed = self.root.join("tmp").join(format!(
            "removed-{}",
            hex::encode(rand::random::<[u8; 16]>())
        ));
        match fs::rename(self.object_path(file_hash), &removed) {
            Ok(()) if removed.is_dir() => fs::remove_dir_all(&removed)?,
            Ok(()) => fs::remove_file(&removed)?,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(err) => return Err(err),
        }
        Ok(true)
    }

    /// Checks a signed URL's signature, then its expiry, and answers what it allows.
    pub fn verify(&self, method: &str, path: &str, query: Option<&str>) -> Result<Permit, S3Error> {
        let mut params = BTreeMap::new();
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if params.insert(name, value).is_some() {
                return Err(S3Error::signature());
            }
        }
        let signature = params.remove(SIGNATURE).ok_or_else(|| {
            S3Error::new(
                403,
                "AccessDenied",
                "Query-string authentication requires the Signature and Expires parameters",
            )
        })?;
        let expected = self.signature(method, path, &canonical(&params));
        let given = hex::decode(signature).map_err(|_| S3Error::signature())?;
        expected
            .verify_slice(&given)
            .map_err(|_| S3Error::signature())?;
        let expires: u64 = params
            .get(EXPIRES)
            .and_then(|value| value.parse().ok())
            .ok_or_else(S3Error::signature)?;
        if self.now() > expires {
            return Err(S3Error::new(403, "AccessDenied", "Request has expired"));
        }
        Ok(Permit {
            content_length: params.get(CONTENT_LENGTH).and_then(|v| v.parse().ok()),
            content_sha256: params.get(CONTENT_SHA256).map(|v| v.to_string()),
        })
    }

    /// `path?<params and the expiry>&X-Maxlo-Signature=<HMAC-SHA256 of method, path, params>`.
    fn sign(&self, method: &str, path: &str, params: &[(&'static str, String)]) -> String {
        let expires = self.now() + self.config.url_ttl.as_secs();
        let mut signed: BTreeMap<&str, &str> = params
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        let expires = expires.to_string();
        signed.insert(EXPIRES, &expires);
        let query = canonical(&signed);
        let signature = hex::encode(self.signature(method, path, &query).finalize().into_bytes());
        format!("{path}?{query}&{SIGNATURE}={signature}")
    }

    fn signature(&self, method: &str, path: &str, query: &str) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.signing_key).expect("HMAC takes any key length");
        for part in [method, "\n", path, "\n", query] {
            mac.update(part.as_bytes());
        }
        mac
    }

    fn upload_dir(&self, upload_id: &str) -> PathBuf {
        self.root.join("uploads").join(upload_id)
    }
}

/// A part's content hash, size and ETag (quoted MD5 hex, as S3's), computed as the body arrives.
#[derive(Default)]
pub struct BodyDigest {
    sha256: Sha256,
    md5: Md5,
    pub len: u64,
}

impl BodyDigest {
    pub fn update(&mut self, bytes: &[u8]) {
        self.sha256.update(bytes);
        self.md5.update(bytes);
        self.len += bytes.len() as u64;
    }

    /// (SHA-256 lowercase hex, ETag).
    pub fn finish(self) -> (String, String) {
        (
            hex::encode(self.sha256.finalize()),
            etag(self.md5.finalize().as_slice()),
        )
    }
}

fn etag(md5: &[u8]) -> String {
    format!("\"{}\"", hex::encode(md5))
}

/// `part-<n>`: a part's file, in an upload's folder and in a multipart object's.
fn part_name(part_num: u64) -> String {
    format!("part-{part_num}")
}

/// The MD5 of an uploaded part, kept when its PUT arrived; checks that the part is there with its
/// size.
fn part_md5(dir: &Path, spec: &PartSpec) -> Result<[u8; 16], CompleteError> {
    let path = dir.join(part_name(spec.part_num));
    let size = match fs::metadata(&path) {
        Ok(metadata) => metadata.len(),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Err(Invalid::new(
                "part_list",
                format!("part {} was not uploaded", spec.part_num),
            )
            .into())
        }
        Err(err) => return Err(err.into()),
    };
    // The PUT's URL signs the length: only a change behind the emulator's back gets here.
    if size != spec.part_size {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} has {size} bytes, not {}",
                path.display(),
                spec.part_size
            ),
        )
        .into());
    }
    let text = match fs::read_to_string(dir.join(format!("{}.md5", part_name(spec.part_num)))) {
        Ok(text) => text,
        // A part kept by an emulator older than the .md5 files: its MD5 from its bytes.
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            let mut md5 = Md5::new();
            io::copy(&mut fs::File::open(&path)?, &mut md5)?;
            hex::encode(md5.finalize())
        }
        Err(err) => return Err(err.into()),
    };
    let mut md5 = [0u8; 16];
    hex::decode_to_slice(text.trim(), &mut md5)
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
    Ok(md5)
}

/// S3's ETag of a multipart object: the MD5 of the parts' binary MD5s, in order, in hex, then
/// `-` and the number of parts, in quotes (S3 user guide, "Checking object integrity").
fn multipart_etag(part_md5s: &[u8], parts: usize) -> String {
    format!("\"{}-{parts}\"", hex::encode(Md5::digest(part_md5s)))
}

/// Removes the temporary data folders of emulators that are gone: one that was killed could not
/// remove its own. A folder whose process still runs (or whose pid was reused) is left alone.
fn remove_abandoned(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|name| name.strip_prefix(TEMP_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<libc::pid_t>().ok());
        let Some(pid) = pid else { continue };
        // Signal 0 sends nothing; it only asks whether the process exists. (Pid 0, which is no
        // process's, asks about our own group, which exists.)
        let gone = rustix::process::Pid::from_raw(pid).is_some_and(|pid| {
            rustix::process::test_kill_process(pid) == Err(rustix::io::Errno::SRCH)
        });
        if gone {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// The signing key in `path`, made (random, owner-only) when absent.
fn signing_key(path: &Path) -> io::Result<[u8; 32]> {
    match fs::read(path) {
        Ok(bytes) => bytes.try_into().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a 32-byte key", path.display()),
            )
        }),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut key);
            let mut file = NamedTempFile::new_in(path.parent().unwrap_or(Path::new(".")))?;
            file.write_all(&key)?;
            file.persist(path)?;
            fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            Ok(key)
        }
        Err(err) => Err(err),
    }
}

/// Parameters sorted by name, `name=value` joined by `&`. Values are digits and hex, so nothing
/// needs escaping.
fn canonical(params: &BTreeMap<&str, &str>) -> String {
    params
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Whether `text` can be an upload_id this store made (32 hex characters); anything else names
/// no folder.
fn is_upload_id(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

fn check_hash(field: &'static str, text: &str) -> Result<(), Invalid> {
    if contract::is_hex_digest(text) {
        Ok(())
    } else {
        Err(Invalid::new(
            field,
            "must be 64 lowercase hexadecimal characters",
        ))
    }
}

fn check_bucket(bucket: &str) -> Result<(), Invalid> {
    if bucket == BUCKET {
        Ok(())
    } else {
        Err(Invalid::new("s3_bucket_id", "no such bucket"))
    }
}

fn check_size(claimed: u64, held: u64) -> Result<(), Invalid> {
    if claimed == held {
        Ok(())
    } else {
        Err(Invalid::new(
            "file_size",
            format!("the uploaded object has {held} bytes"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use maxlofs_api::content::CompletedPart;

    fn store(dir: &Path) -> ObjectStore {
        ObjectStore::open(ObjectsConfig {
            dir: Some(dir.to_path_buf()),
            url_ttl: Duration::from_secs(60),
            ..ObjectsConfig::default()
        })
        .unwrap()
    }

    fn split(signed: &str) -> (&str, &str) {
        signed.split_once('?').unwrap()
    }

    #[test]
    fn a_signed_url_verifies_only_unchanged_and_with_its_method() {
        let dir = tempfile::tempdir().unwrap();
        let objects = store(dir.path());
        let file = FileRef {
            file_hash: "ab".repeat(32),
            file_size: 7,
        };
        let item = objects.upload_item(&file, "http://127.0.0.1:1").unwrap();
        let signed = item.signed_opts.unwrap().path;
        let (path, query) = split(&signed);
        let permit = objects.verify("PUT", path, Some(query)).unwrap();
        assert_eq!(permit.content_length, Some(7));
        assert_eq!(
            permit.content_sha256.as_deref(),
            Some(file.file_hash.as_str())
        );

        let refused = |method: &str, path: &str, query: &str| {
            objects.verify(method, path, Some(query)).unwrap_err().code
        };
        assert_eq!(refused("GET", path, query), "SignatureDoesNotMatch");
        assert_eq!(
            refused("PUT", &format!("{path}0"), query),
            "SignatureDoesNotMatch"
        );
        let longer = query.replace("Content-Length=7", "Content-Length=8");
        assert_eq!(refused("PUT", path, &longer), "SignatureDoesNotMatch");
        let repeated = format!("{query}&{CONTENT_LENGTH}=7");
        assert_eq!(refused("PUT", path, &repeated), "SignatureDoesNotMatch");
        let unsigned = &query[..query.find(SIGNATURE).unwrap() - 1];
        assert_eq!(refused("PUT", path, unsigned), "AccessDenied");

        // The key is kept in the data folder: a URL survives reopening, not another folder.
        assert!(store(dir.path()).verify("PUT", path, Some(query)).is_ok());
        let other = tempfile::tempdir().unwrap();
        assert!(store(other.path())
            .verify("PUT", path, Some(query))
            .is_err());
    }

    #[test]
    fn an_expired_url_is_refused_after_its_signature_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let objects = store(dir.path());
        let params = BTreeMap::from([(EXPIRES, "1000")]);
        let query = canonical(&params);
        let signature = hex::encode(
            objects
                .signature("GET", "/_s3/b/h", &query)
                .finalize()
                .into_bytes(),
        );
        let signed = format!("{query}&{SIGNATURE}={signature}");
        let err = objects
            .verify("GET", "/_s3/b/h", Some(&signed))
            .unwrap_err();
        assert_eq!(
            (err.status, err.message.as_str()),
            (403, "Request has expired")
        );
        let extended = signed.replace("=1000", "=99999999999");
        let err = objects
            .verify("GET", "/_s3/b/h", Some(&extended))
            .unwrap_err();
        assert_eq!(err.code, "SignatureDoesNotMatch");
    }

    #[test]
    fn runs_of_a_multipart_object_cross_part_boundaries() {
        let parts = HeldObject {
            size: 25,
            etag: None,
            layout: Layout::Parts {
                dir: PathBuf::from("/o"),
                part_size: 10,
            },
        };
        let run = |part: &str, offset, length| (PathBuf::from("/o").join(part), offset, length);
        assert_eq!(
            parts.runs(5, 23),
            [
                run("part-1", 5, 5),
                run("part-2", 0, 10),
                run("part-3", 0, 3)
            ]
        );
        assert_eq!(parts.runs(10, 11), [run("part-2", 0, 1)]);
        assert_eq!(
            parts.runs(9, 11),
            [run("part-1", 9, 1), run("part-2", 0, 1)]
        );
        assert_eq!(parts.runs(0, 25).len(), 3);
        assert_eq!(
            parts.runs(20, 99),
            [run("part-3", 0, 5)],
            "clipped to the size"
        );
        assert!(parts.runs(7, 7).is_empty());
        assert!(parts.runs(25, 30).is_empty());
        let whole = HeldObject {
            size: 8,
            etag: None,
            layout: Layout::Whole(PathBuf::from("/w")),
        };
        assert_eq!(whole.runs(3, 7), [(PathBuf::from("/w"), 3, 4)]);
        assert!(whole.runs(8, 9).is_empty());
    }

    /// The example of Cloudflare R2's documentation of its S3-compatible multipart ETags.
    #[test]
    fn a_multipart_etag_is_the_md5_of_the_part_md5s_and_the_part_count() {
        let md5s = [
            hex::decode("bce6bf66aeb76c7040fdd5f4eccb78e6").unwrap(),
            hex::decode("8165449fc15bbf43d3b674595cbcc406").unwrap(),
        ]
        .concat();
        assert_eq!(
            multipart_etag(&md5s, 2),
            "\"f77dc0eecdebcd774a2a22cb393ad2ff-2\""
        );
    }

    /// A file of 16 MiB + 1000 bytes, its multipart request, and every part kept as a part PUT
    /// keeps it; answers the request, the upload_id, the content and the ETags.
    fn uploaded_in_parts(
        objects: &ObjectStore,
    ) -> (MultipartRequest, String, Vec<u8>, Vec<String>) {
        let content: Vec<u8> = (0..16 * 1024 * 1024 + 1000)
            .map(|i| (i % 251) as u8)
            .collect();
        let chunks: Vec<&[u8]> = content.chunks(8 * 1024 * 1024).collect();
        let digests: Vec<[u8; 32]> = chunks.iter().map(|c| Sha256::digest(c).into()).collect();
        let request = MultipartRequest {
            file_size: content.len() as u64,
            file_hash: hash::hash_of_parts(&digests).to_hex(),
            part_list: (1..)
                .zip(&chunks)
                .map(|(part_num, chunk)| PartSpec {
                    part_num,
                    part_size: chunk.len() as u64,
                    part_hash: hex::encode(Sha256::digest(chunk)),
                })
                .collect(),
        };
        let MultipartStart::Started { upload_id } = objects.start_multipart(&request).unwrap()
        else {
            panic!("not started")
        };
        let mut etags = Vec::new();
        for (part_num, chunk) in (1..).zip(&chunks) {
            let mut body = objects.temp_file().unwrap();
            body.write_all(chunk).unwrap();
            let mut digest = BodyDigest::default();
            digest.update(chunk);
            let (_, etag) = digest.finish();
            objects
                .keep_part(body, &upload_id, part_num, &etag)
                .unwrap();
            etags.push(etag);
        }
        (request, upload_id, content, etags)
    }

    fn complete_request(
        request: &MultipartRequest,
        upload_id: &str,
        etags: &[String],
    ) -> MultipartCompleteRequest {
        MultipartCompleteRequest {
            file_size: request.file_size,
            file_hash: request.file_hash.clone(),
            s3_bucket_id: BUCKET.to_string(),
            upload_id: upload_id.to_string(),
            part_list: (1..)
                .zip(etags)
                .map(|(part_num, etag)| CompletedPart {
                    part_num,
                    etag: etag.clone(),
                })
                .collect(),
        }
    }

    /// The bytes `first..end` of a held object, read from its runs.
    fn read_held(object: &HeldObject, first: u64, end: u64) -> Vec<u8> {
        let mut bytes = Vec::new();
        for (path, offset, length) in object.runs(first, end) {
            let file = fs::File::open(path).unwrap();
            let mut buffer = vec![0; length as usize];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut buffer, offset).unwrap();
            bytes.extend(buffer);
        }
        bytes
    }

    /// Killed after writing object.json but before the rename that holds the object: after a
    /// restart the upload is still under way, nothing is held, and completing it again works.
    #[test]
    fn a_completion_cut_short_before_its_rename_leaves_the_upload_under_way() {
        let dir = tempfile::tempdir().unwrap();
        let objects = store(dir.path());
        let (request, upload_id, content, etags) = uploaded_in_parts(&objects);
        fs::write(
            objects.upload_dir(&upload_id).join(OBJECT),
            r#"{"file_size":16778216,"part_size":8388608,"etag":"\"x-3\""}"#,
        )
        .unwrap();
        drop(objects);

        let objects = store(dir.path());
        assert_eq!(objects.held(&request.file_hash), None);
        assert!(objects.list().unwrap().is_empty());
        let MultipartStart::Started { upload_id: again } =
            objects.start_multipart(&request).unwrap()
        else {
            panic!("not under way")
        };
        assert_eq!(again, upload_id);
        objects
            .complete(&complete_request(&request, &upload_id, &etags))
            .unwrap();
        let object = objects.held_object(&request.file_hash).unwrap().unwrap();
        assert_eq!(object.size, content.len() as u64);
        assert!(read_held(&object, 0, object.size) == content);
        let boundary = 8 * 1024 * 1024;
        assert_eq!(
            read_held(&object, boundary - 3, boundary + 3),
            content[boundary as usize - 3..boundary as usize + 3]
        );
        assert!(!objects.upload_dir(&upload_id).exists());
    }

    /// Content held by another upload's completion while this one was under way: completing
    /// this one answers success and drops its parts; the held object is untouched.
    #[test]
    fn completing_an_upload_of_content_held_meanwhile_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let objects = store(dir.path());
        let (request, upload_id, _, etags) = uploaded_in_parts(&objects);
        // A second upload of the same content, as a restart between two clients' could leave.
        let other = "f".repeat(32);
        let copy = objects.upload_dir(&other);
        fs::create_dir(&copy).unwrap();
        for entry in fs::read_dir(objects.upload_dir(&upload_id)).unwrap() {
            let entry = entry.unwrap();
            fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
        }
        objects
            .complete(&complete_request(&request, &upload_id, &etags))
            .unwrap();
        let held = objects.held_object(&request.file_hash).unwrap().unwrap();
        objects
            .complete(&complete_request(&request, &other, &etags))
            .unwrap();
        assert!(!copy.exists());
        let still = objects.held_object(&request.file_hash).unwrap().unwrap();
        assert_eq!((still.size, still.etag), (held.size, held.etag));
    }

    #[test]
    fn folders_of_emulators_that_are_gone_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let gone = tmp.path().join(format!("{TEMP_PREFIX}{dead}-x"));
        let alive = tmp
            .path()
            .join(format!("{TEMP_PREFIX}{}-y", std::process::id()));
        let unrelated = tmp.path().join("something-else-1");
        for dir in [&gone, &alive, &unrelated] {
            fs::create_dir(dir).unwrap();
        }
        remove_abandoned(tmp.path());
        assert!(!gone.exists());
        assert!(alive.exists() && unrelated.exists());
    }
}
