//! The Maxlo device API as the rest of maxlofs sees it: typed requests and outcomes, a trait for the
//! calls and a real HTTP client; the contract's readings and the file hash, each in one place.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod answer;
pub mod content;
pub mod content_client;
pub mod contract;
pub mod hash;
pub mod http;
pub mod pacer;
pub mod wake;

use serde::{Deserialize, Serialize};
use std::fmt;

pub type MediaId = i64;
pub type GrantId = u64;

/// The content-describing fields shared by create, update and the stored record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaState {
    pub file_hash: String,
    pub file_size: u64,
    /// ISO 8601, see `contract::iso8601`.
    pub ctime: String,
    pub mtime: String,
}

/// Body of a create call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMedia {
    pub media_path: String,
    #[serde(flatten)]
    pub state: MediaState,
}

/// A record's full current state, as a 409 answers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaRecord {
    pub media_id: MediaId,
    pub media_path: String,
    pub file_hash: String,
    pub file_size: u64,
    pub ctime: String,
    pub mtime: String,
    pub last_updated_user_id: Option<i64>,
    pub last_updated_device_id: Option<i64>,
    pub last_updated: String,
    pub is_deleted: bool,
}

impl MediaRecord {
    pub fn state(&self) -> MediaState {
        MediaState {
            file_hash: self.file_hash.clone(),
            file_size: self.file_size,
            ctime: self.ctime.clone(),
            mtime: self.mtime.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CreateOutcome {
    /// 200: a new record, or (when the service merges parallel creates) the existing one.
    Created(MediaId),
    /// 409: the path already has a record; this is its current state.
    Conflict(MediaRecord),
}

/// `POST /device/1/current`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub device_id: i64,
    pub device_name: String,
    pub user_id: i64,
    pub user_name: String,
    pub upload_priority: i64,
    pub is_disabled: bool,
    pub is_upload_disabled: bool,
    pub is_download_disabled: bool,
}

/// One entry of `POST /device/1/media_grant`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaGrant {
    pub media_grant_id: String,
    pub grant_name: String,
    pub volume_id: i64,
    pub prefix_path: String,
    pub is_disabled: bool,
    pub volume_encryption_key: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaGrantList {
    pub is_device_disabled: bool,
    pub media_grant_list: Vec<MediaGrant>,
}

/// What went wrong with a call, classified by what the caller should do about it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 403: the key is wrong, missing or revoked. Retrying with the same key is pointless.
    #[error("unauthorized (403): the session key was refused")]
    Unauthorized,
    /// 404: unknown media_id or grant.
    #[error("not found (404)")]
    NotFound,
    /// 400 or another 4xx: the request itself is wrong; the message is the service's.
    #[error("rejected ({status}): {message}")]
    BadRequest { status: u16, message: String },
    /// The service's answer cannot be sent as it says: a signed PUT's headers name another
    /// length than the content's. Refused here, before any byte goes.
    #[error("the signed request is for {signed} bytes, not {len}")]
    SignedLength { signed: String, len: u64 },
    /// 5xx, timeouts, malformed answers: retryable, in the words of the service or ours.
    #[error("transient: {0}")]
    Transient(String),
    /// No answer at all (a refused or dropped connection, a timeout, a body cut short), with
    /// the transport's own error. Retryable. `message` is the error and its causes, the query
    /// (which can hold the key) left out of its URL.
    #[error("transient: {message}")]
    Transport {
        message: String,
        #[source]
        source: Transport,
    },
}

impl ApiError {
    /// 5xx, timeouts, no answer, malformed answers: the only retryable class.
    pub fn is_transient(&self) -> bool {
        matches!(self, ApiError::Transient(_) | ApiError::Transport { .. })
    }
}

/// The transport's error behind an `ApiError::Transport`, shared so the error stays `Clone`.
/// Two are equal only when they are the same error.
#[derive(Clone, Debug)]
pub struct Transport(pub std::sync::Arc<reqwest::Error>);

impl PartialEq for Transport {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Transport {}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Transport {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// A session key. Its Debug and Display never show the value, so it cannot leak into logs.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(String);

impl SecretKey {
    pub fn new(value: impl Into<String>) -> Self {
        SecretKey(value.into())
    }
    /// The raw value, for the one place that puts it on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl fmt::Display for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The keys a client authenticates with (docs/contract.md, "Keys").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    pub device: SecretKey,
    pub user: Option<SecretKey>,
}

/// The calls maxlofs makes. Implementations: `http::HttpApi` (the service or the emulator) and
/// `memory::MemoryApi` (unit tests).
#[async_trait::async_trait]
pub trait MediaApi: Send + Sync {
    async fn create(&self, grant: GrantId, media: &NewMedia) -> Result<CreateOutcome, ApiError>;
    async fn update(
        &self,
        grant: GrantId,
        media_id: MediaId,
        state: &MediaState,
    ) -> Result<(), ApiError>;
    async fn delete(&self, grant: GrantId, media_id: MediaId) -> Result<(), ApiError>;
    async fn current_device(&self) -> Result<DeviceInfo, ApiError>;
    async fn media_grants(&self) -> Result<MediaGrantList, ApiError>;
    /// Replaces the keys used from the next call on (key file changed, SIGHUP).
    fn set_keys(&self, keys: Keys);
}
