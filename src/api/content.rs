//! The wire form of the content calls (docs/contract.md, "Content calls"):
//! what a device sends to `upload`, `s3_object`, `multipart`, `multipart_complete` and `download`
//! under `/device/1/media_grant/<grant>/`, and what the service answers. Shared by the emulator
//! and the client. Optional answer fields are left out when absent, as the pages mark them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A file named by its content: one entry of `upload`'s `file_list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub file_hash: String,
    pub file_size: u64,
}

/// `POST .../upload`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRequest {
    pub file_list: Vec<FileRef>,
}

/// The request to make to put an object: send `headers` verbatim to `url` with `method`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedOpts {
    pub host: String,
    pub method: String,
    /// The path and query of `url`.
    pub path: String,
    pub url: String,
    pub headers: BTreeMap<String, String>,
}

/// One answer of `upload_list`. Neither `skip_upload` nor `signed_opts`: upload it with
/// `multipart` (the emulator answers so for files over 16 MiB).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadItem {
    pub file_hash: String,
    pub file_size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_upload: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_opts: Option<SignedOpts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_bucket_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadAnswer {
    pub upload_list: Vec<UploadItem>,
    /// Uploads are off by policy; `upload_list` is then empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_disabled: Option<bool>,
}

/// `POST .../s3_object`: registers an object whose PUT succeeded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3ObjectRequest {
    pub s3_bucket_id: String,
    pub file_hash: String,
    pub file_size: u64,
}

/// One part of a multipart upload: the File Hashing part `part_num` (from 1), its size and the
/// SHA-256 of its bytes (64 lowercase hex characters).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartSpec {
    pub part_num: u64,
    pub part_size: u64,
    pub part_hash: String,
}

/// `POST .../multipart`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultipartRequest {
    pub file_size: u64,
    pub file_hash: String,
    pub part_list: Vec<PartSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPartUrl {
    pub part_num: u64,
    /// PUT the part's bytes here, with its size as Content-Length.
    pub url: String,
}

/// `multipart`'s 2xx answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultipartAnswer {
    pub upload_id: String,
    pub signed_url_list: Vec<SignedPartUrl>,
}

/// `multipart`'s 409 answer: the content is held already, or there is no active file for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultipartConflict {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_upload: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_active_file: Option<bool>,
}

/// A part as its PUT answered: its number and the ETag header, quotes included.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletedPart {
    pub part_num: u64,
    pub etag: String,
}

/// `POST .../multipart_complete`; answered 201.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultipartCompleteRequest {
    pub file_size: u64,
    pub file_hash: String,
    pub s3_bucket_id: String,
    pub upload_id: String,
    pub part_list: Vec<CompletedPart>,
}

/// `POST .../download`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadRequest {
    pub hash_list: Vec<String>,
}

/// One answer of `download_list`. For content the service does not hold, `is_deleted` is true
/// and `url` is null.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadItem {
    pub file_hash: String,
    pub file_size: u64,
    pub chunk_size: u64,
    pub url: Option<String>,
    pub is_deleted: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadAnswer {
    pub download_list: Vec<DownloadItem>,
}
