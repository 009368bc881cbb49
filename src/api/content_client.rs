//! The content calls as maxlofs makes them (docs/contract.md, "Content calls"): `ContentApi`,
//! and `ContentClient`, which sends the API calls through an `HttpApi` (its keys, its base URL,
//! its error classes) and the PUTs to signed URLs through a client of its own.
//!
//! Signed URLs are opaque: they are used as given, never built or changed, and never logged
//! whole (their query is a signature).

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::BoxStream;
use reqwest::{redirect, Client, Method};

use super::answer::{classify, decode, Answer};
use super::content::{
    DownloadAnswer, DownloadRequest, FileRef, MultipartAnswer, MultipartCompleteRequest,
    MultipartConflict, MultipartRequest, S3ObjectRequest, UploadAnswer, UploadRequest,
};
use super::http::{read_capped, transport_error, HttpApi};
use super::{ApiError, GrantId};

/// The bytes of a PUT, produced as they are sent.
pub type PutBody = BoxStream<'static, io::Result<Vec<u8>>>;

/// Where and how to PUT: `signed_opts` of an `upload` answer, or a part's signed URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedPut {
    pub method: String,
    pub url: String,
    /// Sent verbatim.
    pub headers: BTreeMap<String, String>,
}

/// How `multipart` answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MultipartStart {
    Started(MultipartAnswer),
    /// 409 `skip_upload`: the service holds the content.
    Held,
    /// 409 `no_active_file`: the service will not take it now.
    NoActiveFile,
}

/// The content calls. Implementations: `ContentClient` (the service or the emulator) and the
/// in-memory one of the engine's unit tests.
#[async_trait::async_trait]
pub trait ContentApi: Send + Sync {
    /// Asks where each of `files` goes (one call for many).
    async fn upload(&self, grant: GrantId, files: &[FileRef]) -> Result<UploadAnswer, ApiError>;
    async fn s3_object(&self, grant: GrantId, request: &S3ObjectRequest) -> Result<(), ApiError>;
    async fn multipart(
        &self,
        grant: GrantId,
        request: &MultipartRequest,
    ) -> Result<MultipartStart, ApiError>;
    async fn multipart_complete(
        &self,
        grant: GrantId,
        request: &MultipartCompleteRequest,
    ) -> Result<(), ApiError>;
    async fn download(&self, grant: GrantId, hashes: &[String])
        -> Result<DownloadAnswer, ApiError>;
    /// PUTs `len` bytes of `body`; answers the ETag the store gave them. A 403 means the signed
    /// URL was refused (expired, or changed): a new one must be asked for.
    async fn put(&self, target: &SignedPut, len: u64, body: PutBody) -> Result<String, ApiError>;
    /// GETs a signed download URL; the bytes come back as a stream.
    async fn get(&self, url: &str) -> Result<PutBody, ApiError>;
}

/// A stalled transfer: no byte read from the store for this long fails the PUT or GET, however
/// long the whole transfer takes (a rate-limited 4 GiB part takes hours).
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

pub struct ContentClient {
    api: Arc<HttpApi>,
    transfers: Client,
}

impl ContentClient {
    pub fn new(api: Arc<HttpApi>) -> anyhow::Result<ContentClient> {
        let transfers = Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(STALL_TIMEOUT)
            // A signed URL is all the authority a PUT has: following a redirect would send the
            // bytes where the service did not say.
            .redirect(redirect::Policy::none())
            .user_agent(concat!("maxlofs/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(ContentClient { api, transfers })
    }

    fn grant_path(grant: GrantId, call: &str) -> String {
        format!("/device/1/media_grant/{grant}/{call}")
    }

    async fn post_for<T: serde::Serialize + Sync + ?Sized>(
        &self,
        path: &str,
        fields: &T,
    ) -> Result<Vec<u8>, ApiError> {
        self.api.call(self.api.post(path, fields)).await?.success()
    }
}

#[async_trait::async_trait]
impl ContentApi for ContentClient {
    async fn upload(&self, grant: GrantId, files: &[FileRef]) -> Result<UploadAnswer, ApiError> {
        let request = UploadRequest {
            file_list: files.to_vec(),
        };
        let body = self
            .post_for(&Self::grant_path(grant, "upload"), &request)
            .await?;
        decode(&body)
    }

    async fn s3_object(&self, grant: GrantId, request: &S3ObjectRequest) -> Result<(), ApiError> {
        self.post_for(&Self::grant_path(grant, "s3_object"), request)
            .await
            .map(drop)
    }

    async fn multipart(
        &self,
        grant: GrantId,
        request: &MultipartRequest,
    ) -> Result<MultipartStart, ApiError> {
        let path = Self::grant_path(grant, "multipart");
        match self.api.call(self.api.post(&path, request)).await? {
            Answer::Success(body) => Ok(MultipartStart::Started(decode(&body)?)),
            Answer::Conflict(body) => match decode::<MultipartConflict>(&body)? {
                MultipartConflict {
                    skip_upload: Some(true),
                    ..
                } => Ok(MultipartStart::Held),
                MultipartConflict {
                    no_active_file: Some(true),
                    ..
                } => Ok(MultipartStart::NoActiveFile),
                _ => Err(ApiError::BadRequest {
                    status: 409,
                    message: String::from_utf8_lossy(&body).into_owned(),
                }),
            },
        }
    }

    async fn multipart_complete(
        &self,
        grant: GrantId,
        request: &MultipartCompleteRequest,
    ) -> Result<(), ApiError> {
        self.post_for(&Self::grant_path(grant, "multipart_complete"), request)
            .await
            .map(drop)
    }

    async fn download(
        &self,
        grant: GrantId,
        hashes: &[String],
    ) -> Result<DownloadAnswer, ApiError> {
        let request = DownloadRequest {
            hash_list: hashes.to_vec(),
        };
        let body = self
            .post_for(&Self::grant_path(grant, "download"), &request)
            .await?;
        decode(&body)
    }

    async fn put(&self, target: &SignedPut, len: u64, body: PutBody) -> Result<String, ApiError> {
        let method =
            Method::from_bytes(target.method.as_bytes()).map_err(|_| ApiError::BadRequest {
                status: 0,
                message: format!("the service named an unusable method {:?}", target.method),
            })?;
        let mut request = self
            .transfers
            .request(method, target.url.as_str())
            .body(reqwest::Body::wrap_stream(body));
        let mut has_length = false;
        for (name, value) in &target.headers {
            if name.eq_ignore_ascii_case("content-length") {
                has_length = true;
                if value.trim().parse::<u64>().ok() != Some(len) {
                    return Err(ApiError::BadRequest {
                        status: 0,
                        message: format!("the signed request is for {value} bytes, not {len}"),
                    });
                }
            }
            request = request.header(name.as_str(), value.as_str());
        }
        if !has_length {
            // Without it the body would go chunked, which a signed PUT refuses.
            request = request.header(reqwest::header::CONTENT_LENGTH, len);
        }
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status();
        tracing::debug!(%status, path = response.url().path(), "PUT answer");
        let etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        let answer = read_capped(response).await?;
        classify(status.as_u16(), answer)?.success()?;
        etag.ok_or_else(|| ApiError::Transient("the store answered a PUT without an ETag".into()))
    }

    async fn get(&self, url: &str) -> Result<PutBody, ApiError> {
        use futures_util::TryStreamExt;
        let response = self
            .transfers
            .get(url)
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status();
        if !status.is_success() {
            let body = read_capped(response).await?;
            classify(status.as_u16(), body)?.success()?;
            return Err(ApiError::Transient(format!("GET answered {status}")));
        }
        Ok(Box::pin(
            response
                .bytes_stream()
                .map_ok(|chunk| chunk.to_vec())
                .map_err(io::Error::other),
        ))
    }
}
