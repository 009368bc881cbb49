//! The emulator's object store and URL signing: the S3 side of the content calls.
//!
//! Objects are files named by their file_hash in the data folder:
//!
//! ```text
//! <root>/objects/<file_hash>         held objects (registered by s3_object or multipart_complete)
//! <root>/pending/<file_hash>         whole-object PUTs not registered yet
//! <root>/uploads/<upload_id>/        a multipart upload: manifest.json (its multipart request)
//!                                    and part-<part_num>, one file per part PUT
//! <root>/tmp/                        request bodies while they arrive (emptied at start)
//! <root>/signing.key                 the HMAC key of the signed URLs
//! ```
//!
//! Every change is a rename of a finished file, so a kill leaves no half object. The signing key
//! is kept with the objects so that URLs handed out survive a restart, as a multipart upload that
//! resumes needs. See docs/emulator.md, "Content".

use super::store::Invalid;
use crate::api::content::{
    CompletedPart, DownloadItem, FileRef, MultipartCompleteRequest, MultipartConflict,
    MultipartRequest, PartSpec, S3ObjectRequest, SignedOpts, UploadItem,
};
use crate::contract;
use crate::hash;
use hmac::{Hmac, Mac};
use md5::Md5;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
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

pub struct ObjectStore {
    root: PathBuf,
    config: ObjectsConfig,
    signing_key: [u8; 32],
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
            _temp: temp,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config(&self) -> &ObjectsConfig {
        &self.config
    }

    /// The file of a held object.
    pub fn object_path(&self, file_hash: &str) -> PathBuf {
        self.root.join("objects").join(file_hash)
    }

    /// The size of a held object, if held.
    pub fn held(&self, file_hash: &str) -> Option<u64> {
        fs::metadata(self.object_path(file_hash))
            .ok()
            .map(|m| m.len())
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
            .persist(dir.join("manifest.json"))
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
            let Ok(bytes) = fs::read(entry.path().join("manifest.json")) else {
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

    /// `multipart_complete`: joins the parts in order, checking each ETag, and holds the result
    /// if its Maxlo hash is `file_hash`. Blocking.
    pub fn complete(&self, request: &MultipartCompleteRequest) -> Result<(), CompleteError> {
        check_bucket(&request.s3_bucket_id)?;
        let unknown = || Invalid::new("upload_id", "no such multipart upload");
        if !is_upload_id(&request.upload_id) {
            return Err(unknown().into());
        }
        let dir = self.upload_dir(&request.upload_id);
        let manifest: MultipartRequest = match fs::read(dir.join("manifest.json")) {
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
        let mut assembled = NamedTempFile::new_in(self.root.join("tmp"))?;
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
            copy_part(&dir, listed, spec, assembled.as_file_mut())?;
        }
        let file_hash = hash::hash_open_file(
            assembled.as_file(),
            request.file_size,
            hash::default_workers(),
            None,
        )?;
        if file_hash.to_hex() != request.file_hash {
            return Err(Invalid::new(
                "file_hash",
                format!("the assembled parts hash to {file_hash}"),
            )
            .into());
        }
        assembled
            .persist(self.object_path(&request.file_hash))
            .map_err(io::Error::from)?;
        match fs::remove_dir_all(dir) {
            // A completion of the same upload at the same time removed it first.
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err.into()),
            _ => Ok(()),
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

    /// Keeps a verified part (a PUT of the same part again replaces it). NotFound when the
    /// upload does not exist (completed, or never started).
    pub fn keep_part(&self, body: NamedTempFile, upload_id: &str, part_num: u64) -> io::Result<()> {
        let dir = self.upload_dir(upload_id);
        if !dir.join("manifest.json").exists() {
            return Err(io::ErrorKind::NotFound.into());
        }
        body.persist(dir.join(format!("part-{part_num}")))?;
        Ok(())
    }

    /// Every held object, by file_hash.
    pub fn list(&self) -> io::Result<Vec<ObjectInfo>> {
        let mut objects = Vec::new();
        for entry in fs::read_dir(self.root.join("objects"))? {
            let entry = entry?;
            objects.push(ObjectInfo {
                file_hash: entry.file_name().to_string_lossy().into_owned(),
                file_size: entry.metadata()?.len(),
                s3_bucket_id: BUCKET.to_string(),
            });
        }
        objects.sort_by(|a, b| a.file_hash.cmp(&b.file_hash));
        Ok(objects)
    }

    /// Changes a held object's bytes (its first byte flipped; an empty one gets a byte) so that
    /// it no longer matches its hash. Answers whether it was held.
    pub fn corrupt(&self, file_hash: &str) -> io::Result<bool> {
        let path = self.object_path(file_hash);
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

    /// Forgets a held object. Answers whether it was held.
    pub fn remove(&self, file_hash: &str) -> io::Result<bool> {
        match fs::remove_file(self.object_path(file_hash)) {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(err) => Err(err),
        }
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
        if unix_now() > expires {
            return Err(S3Error::new(403, "AccessDenied", "Request has expired"));
        }
        Ok(Permit {
            content_length: params.get(CONTENT_LENGTH).and_then(|v| v.parse().ok()),
            content_sha256: params.get(CONTENT_SHA256).map(|v| v.to_string()),
        })
    }

    /// `path?<params and the expiry>&X-Maxlo-Signature=<HMAC-SHA256 of method, path, params>`.
    fn sign(&self, method: &str, path: &str, params: &[(&'static str, String)]) -> String {
        let expires = unix_now() + self.config.url_ttl.as_secs();
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

/// Appends one uploaded part to `out`, checking the ETag the client listed for it.
fn copy_part(
    dir: &Path,
    listed: &CompletedPart,
    spec: &PartSpec,
    out: &mut fs::File,
) -> Result<(), CompleteError> {
    let mut part = match fs::File::open(dir.join(format!("part-{}", spec.part_num))) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Err(Invalid::new(
                "part_list",
                format!("part {} was not uploaded", spec.part_num),
            )
            .into())
        }
        Err(err) => return Err(err.into()),
    };
    let mut md5 = Md5::new();
    let mut buffer = vec![0; 256 * 1024];
    loop {
        let read = part.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        md5.update(&buffer[..read]);
        out.write_all(&buffer[..read])?;
    }
    // S3 takes an ETag with or without its quotes.
    let wanted = etag(md5.finalize().as_slice());
    if listed.etag.trim_matches('"') != wanted.trim_matches('"') {
        return Err(Invalid::new(
            "part_list",
            format!(
                "part {}: the etag does not match the uploaded part",
                spec.part_num
            ),
        )
        .into());
    }
    Ok(())
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
