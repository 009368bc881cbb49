//! The HTTP face of the content calls: `upload`, `s3_object`, `multipart`, `multipart_complete`
//! and `download` under a grant, the signed object URLs (`/_s3/...`, answering as S3 does) and
//! the object inspection endpoints. The rules live in `objects::ObjectStore`.

use super::app::{error_response, App};
use super::objects::{BodyDigest, CompleteError, MultipartStart, Run, S3Error};
use super::request::Payload;
use super::stats::Call;
use super::store::{Invalid, StoreError};
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, RANGE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put, MethodRouter};
use axum::{Json, Router};
use futures_util::{stream, StreamExt, TryStreamExt};
use maxlofs_api::content::{
    DownloadAnswer, DownloadRequest, MultipartAnswer, MultipartCompleteRequest, MultipartRequest,
    S3ObjectRequest, SignedPartUrl, UploadAnswer, UploadRequest,
};
use maxlofs_api::contract;
use serde::de::DeserializeOwned;
use serde_json::json;
use std::io;
use tempfile::NamedTempFile;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// The content routes; `api` wraps a route in the fault injection and counting of `call`.
pub(super) fn routes(api: &dyn Fn(Call, MethodRouter<App>) -> MethodRouter<App>) -> Router<App> {
    Router::new()
        .route(
            "/device/1/media_grant/:grant/upload",
            api(Call::Upload, post(upload)),
        )
        .route(
            "/device/1/media_grant/:grant/s3_object",
            api(Call::S3Object, post(s3_object)),
        )
        .route(
            "/device/1/media_grant/:grant/multipart",
            api(Call::Multipart, post(multipart)),
        )
        .route(
            "/device/1/media_grant/:grant/multipart_complete",
            api(Call::MultipartComplete, post(multipart_complete)),
        )
        .route(
            "/device/1/media_grant/:grant/download",
            api(Call::Download, post(download)),
        )
        .route(
            "/_s3/:bucket/:file_hash",
            api(Call::ObjectPut, put(put_object)),
        )
        .route(
            "/_s3/:bucket/:file_hash",
            api(Call::ObjectGet, get(get_object)),
        )
        .route(
            "/_s3/:bucket/:file_hash/:upload_id/:part_num",
            api(Call::PartPut, put(put_part)),
        )
        .route("/_emulator/objects", get(list_objects))
        .route(
            "/_emulator/objects/:file_hash",
            get(read_object).delete(delete_object),
        )
        .route(
            "/_emulator/objects/:file_hash/corrupt",
            post(corrupt_object),
        )
        .route(
            "/_emulator/objects/:file_hash/damage-next",
            post(damage_next),
        )
        .route("/_emulator/clock", post(advance_clock))
}

/// A content call that failed: as the media calls answer (403, 404, 400 with the field), or 500.
#[derive(Debug)]
enum ContentError {
    Store(StoreError),
    Io(io::Error),
}

impl From<StoreError> for ContentError {
    fn from(err: StoreError) -> Self {
        ContentError::Store(err)
    }
}

impl From<Invalid> for ContentError {
    fn from(invalid: Invalid) -> Self {
        ContentError::Store(invalid.into())
    }
}

impl From<io::Error> for ContentError {
    fn from(err: io::Error) -> Self {
        ContentError::Io(err)
    }
}

impl From<CompleteError> for ContentError {
    fn from(err: CompleteError) -> Self {
        match err {
            CompleteError::Invalid(invalid) => invalid.into(),
            CompleteError::Io(err) => err.into(),
        }
    }
}

impl IntoResponse for ContentError {
    fn into_response(self) -> Response {
        match self {
            ContentError::Store(err) => err.into_response(),
            ContentError::Io(err) => {
                tracing::error!(%err, "object store error");
                error_response(StatusCode::INTERNAL_SERVER_ERROR, "object store error")
            }
        }
    }
}

impl IntoResponse for S3Error {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        // Codes and messages are this module's constants: nothing in them needs XML escaping.
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message></Error>",
            self.code, self.message
        );
        (status, [(CONTENT_TYPE, "application/xml")], body).into_response()
    }
}

fn internal(err: io::Error) -> S3Error {
    tracing::error!(%err, "object store error");
    S3Error::new(
        500,
        "InternalError",
        "We encountered an internal error. Please try again.",
    )
}

/// The key (403), then the grant (404), then the body (400): the media calls' order.
fn authorized<T: DeserializeOwned>(
    app: &App,
    grant: &str,
    payload: Payload,
) -> Result<T, ContentError> {
    let grant = grant.parse().map_err(|_| StoreError::GrantNotFound)?;
    app.store.check_device_grant(&payload.credentials, grant)?;
    Ok(payload.body?.parse()?)
}

async fn upload(
    State(app): State<App>,
    Path(grant): Path<String>,
    payload: Payload,
) -> Result<Response, ContentError> {
    app.blocking(move |app| {
        let request: UploadRequest = authorized(app, &grant, payload)?;
        if app.objects.config().upload_disabled {
            return Ok(Json(UploadAnswer {
                upload_list: Vec::new(),
                upload_disabled: Some(true),
            })
            .into_response());
        }
        let upload_list = request
            .file_list
            .iter()
            .map(|file| app.objects.upload_item(file, &app.origin))
            .collect::<Result<_, _>>()?;
        Ok(Json(UploadAnswer {
            upload_list,
            upload_disabled: None,
        })
        .into_response())
    })
    .await
}

/// 201 when the object becomes held, 200 when it was held already.
async fn s3_object(
    State(app): State<App>,
    Path(grant): Path<String>,
    payload: Payload,
) -> Result<Response, ContentError> {
    app.blocking(move |app| {
        let request: S3ObjectRequest = authorized(app, &grant, payload)?;
        let status = if app.objects.register(&request)? {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok((status, Json(json!({}))).into_response())
    })
    .await
}

async fn multipart(
    State(app): State<App>,
    Path(grant): Path<String>,
    payload: Payload,
) -> Result<Response, ContentError> {
    app.blocking(move |app| multipart_answer(app, &grant, payload))
        .await
}

/// `multipart`'s answer (it reads the uploads under way: blocking).
fn multipart_answer(app: &App, grant: &str, payload: Payload) -> Result<Response, ContentError> {
    let request: MultipartRequest = authorized(app, grant, payload)?;
    Ok(match app.objects.start_multipart(&request)? {
        MultipartStart::Started { upload_id } => {
            let signed_url_list = request
                .part_list
                .iter()
                .map(|part| SignedPartUrl {
                    part_num: part.part_num,
                    url: format!(
                        "{}{}",
                        app.origin,
                        app.objects
                            .part_put_path(&request.file_hash, &upload_id, part)
                    ),
                })
                .collect();
            Json(MultipartAnswer {
                upload_id,
                signed_url_list,
            })
            .into_response()
        }
        MultipartStart::Conflict(conflict) => {
            (StatusCode::CONFLICT, Json(conflict)).into_response()
        }
    })
}

async fn multipart_complete(
    State(app): State<App>,
    Path(grant): Path<String>,
    payload: Payload,
) -> Result<Response, ContentError> {
    app.blocking(move |app| {
        let request: MultipartCompleteRequest = authorized(app, &grant, payload)?;
        app.objects.complete(&request)?;
        Ok((StatusCode::CREATED, Json(json!({}))).into_response())
    })
    .await
}

async fn download(
    State(app): State<App>,
    Path(grant): Path<String>,
    payload: Payload,
) -> Result<Response, ContentError> {
    app.blocking(move |app| {
        let request: DownloadRequest = authorized(app, &grant, payload)?;
        let download_list = request
            .hash_list
            .iter()
            .map(|file_hash| app.objects.download_item(file_hash, &app.origin))
            .collect::<Result<_, _>>()?;
        Ok(Json(DownloadAnswer { download_list }).into_response())
    })
    .await
}

/// A whole-object PUT: kept until `s3_object` registers it.
async fn put_object(
    State(app): State<App>,
    Path((_bucket, file_hash)): Path<(String, String)>,
    request: Request,
) -> Result<Response, S3Error> {
    let (body, etag) = receive(&app, request).await?;
    // The path was signed, so file_hash is one `upload` handed out.
    app.blocking(move |app| app.objects.keep_pending(body, &file_hash))
        .await
        .map_err(internal)?;
    Ok(stored(&etag))
}

async fn put_part(
    State(app): State<App>,
    Path((_bucket, _file_hash, upload_id, part_num)): Path<(String, String, String, String)>,
    request: Request,
) -> Result<Response, S3Error> {
    let (body, etag) = receive(&app, request).await?;
    let part_num = part_num.parse().map_err(|_| S3Error::signature())?;
    let kept = {
        let etag = etag.clone();
        app.blocking(move |app| app.objects.keep_part(body, &upload_id, part_num, &etag))
            .await
    };
    match kept {
        Ok(()) => Ok(stored(&etag)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Err(S3Error::new(
            404,
            "NoSuchUpload",
            "The specified upload does not exist. The upload ID may be invalid, or the upload \
             may have been aborted or completed.",
        )),
        Err(err) => Err(internal(err)),
    }
}

/// The signed length and SHA-256 of a PUT whose URL and Content-Length are right.
fn check_put(app: &App, request: &Request) -> Result<(u64, String), S3Error> {
    let permit = app
        .objects
        .verify("PUT", request.uri().path(), request.uri().query())?;
    // Every PUT URL signs its length and hash.
    let (Some(signed_length), Some(signed_sha256)) = (permit.content_length, permit.content_sha256)
    else {
        return Err(S3Error::signature());
    };
    let length = request
        .headers()
        .get(CONTENT_LENGTH)
        .ok_or_else(|| {
            S3Error::new(
                411,
                "MissingContentLength",
                "You must provide the Content-Length HTTP header.",
            )
        })?
        .to_str()
        .ok()
        .and_then(|value| value.parse::<u64>().ok())
        .ok_or_else(|| S3Error::new(400, "InvalidArgument", "Content-Length is not a number"))?;
    // The length is part of what was signed (as S3 signs the headers it lists).
    if length != signed_length {
        return Err(S3Error::signature());
    }
    Ok((signed_length, signed_sha256))
}

/// Reads a refused request's body to its Content-Length and drops it, so that the client, which
/// sends it before reading the answer, gets the answer rather than a broken pipe. A body without
/// a length (chunked) is not read: the connection is closed after the answer.
pub(super) async fn discard_body(request: Request) {
    if !request.headers().contains_key(CONTENT_LENGTH) {
        return;
    }
    let mut body = request.into_body().into_data_stream();
    while let Some(Ok(_)) = body.next().await {}
}

fn stored(etag: &str) -> Response {
    (StatusCode::OK, [(ETAG, etag)]).into_response()
}

/// Checks a PUT's signed URL and Content-Length, then streams its body into a temp file in the
/// data folder, never past the signed length, and checks its SHA-256. Answers the file and the
/// body's ETag.
async fn receive(app: &App, request: Request) -> Result<(NamedTempFile, String), S3Error> {
    let (signed_length, signed_sha256) = match check_put(app, &request) {
        Ok(signed) => signed,
        Err(err) => {
            discard_body(request).await;
            return Err(err);
        }
    };
    let temp = app
        .blocking(|app| app.objects.temp_file())
        .await
        .map_err(internal)?;
    let file = temp.as_file().try_clone().map_err(internal)?;
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(file));
    let mut digest = BodyDigest::default();
    let mut body = request.into_body().into_data_stream();
    let incomplete = || {
        S3Error::new(
            400,
            "IncompleteBody",
            "You did not provide the number of bytes specified by the Content-Length HTTP header.",
        )
    };
    // S3 refuses a request whose body stalls (about 20 s) with this code and message (Amazon S3
    // error responses): a client that pauses mid-body must not pause that long.
    let idle = app.objects.config().body_idle;
    loop {
        let next = match idle {
            Some(idle) => tokio::time::timeout(idle, body.next()).await.map_err(|_| {
                S3Error::new(
                    400,
                    "RequestTimeout",
                    "Your socket connection to the server was not read from or written to \
                     within the timeout period. Idle connections will be closed.",
                )
            })?,
            None => body.next().await,
        };
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|_| incomplete())?;
        if digest.len + chunk.len() as u64 > signed_length {
            return Err(S3Error::new(
                400,
                "InvalidRequest",
                "The body is longer than its Content-Length.",
            ));
        }
        digest.update(&chunk);
        out.write_all(&chunk).await.map_err(internal)?;
    }
    if digest.len != signed_length {
        return Err(incomplete());
    }
    out.flush().await.map_err(internal)?;
    let (sha256, etag) = digest.finish();
    if sha256 != signed_sha256 {
        return Err(S3Error::new(
            400,
            "BadDigest",
            "The SHA-256 of the content did not match the signed hash.",
        ));
    }
    Ok((temp, etag))
}

/// A signed download, whole or one `Range`, as S3 serves it.
async fn get_object(
    State(app): State<App>,
    Path((_bucket, file_hash)): Path<(String, String)>,
    request: Request,
) -> Result<Response, S3Error> {
    app.objects
        .verify("GET", request.uri().path(), request.uri().query())?;
    let range = request
        .headers()
        .get(RANGE)
        .and_then(|value| value.to_str().ok());
    let answer = object_bytes(&app, &file_hash, range)
        .await
        .map_err(internal)?
        .ok_or_else(|| S3Error::new(404, "NoSuchKey", "The specified key does not exist."))??;
    Ok(match app.objects.take_damage(&file_hash) {
        true => first_byte_flipped(answer),
        false => answer,
    })
}

/// The answer with the first byte of its body flipped, as a transfer damaged on the way.
fn first_byte_flipped(answer: Response) -> Response {
    let (parts, body) = answer.into_parts();
    let mut first = true;
    let body = body.into_data_stream().map_ok(move |bytes| {
        if !first || bytes.is_empty() {
            return bytes;
        }
        first = false;
        let mut damaged = bytes.to_vec();
        damaged[0] ^= 0xff;
        damaged.into()
    });
    Response::from_parts(parts, Body::from_stream(body))
}

/// The part of an object a `Range` header asks for.
#[derive(Debug, PartialEq, Eq)]
enum ByteRange {
    Whole,
    /// First and last byte, inclusive.
    Part(u64, u64),
    Unsatisfiable,
}

/// Reads `bytes=FIRST-LAST`, `bytes=FIRST-` and `bytes=-SUFFIX` (RFC 9110). Like S3, anything
/// else, several ranges included, is ignored: the whole object is answered.
fn byte_range(header: Option<&str>, size: u64) -> ByteRange {
    let Some((first, last)) = header
        .and_then(|value| value.strip_prefix("bytes="))
        .filter(|spec| !spec.contains(','))
        .and_then(|spec| spec.split_once('-'))
    else {
        return ByteRange::Whole;
    };
    let (first, last) = match (first.trim(), last.trim()) {
        ("", suffix) => match suffix.parse::<u64>() {
            Ok(0) => return ByteRange::Unsatisfiable,
            Ok(suffix) => (size.saturating_sub(suffix), u64::MAX),
            Err(_) => return ByteRange::Whole,
        },
        (first, last) => match (first.parse::<u64>(), last.parse::<u64>()) {
            (Ok(first), Ok(last)) if first <= last => (first, last),
            (Ok(first), _) if last.is_empty() => (first, u64::MAX),
            _ => return ByteRange::Whole,
        },
    };
    if first >= size {
        ByteRange::Unsatisfiable
    } else {
        ByteRange::Part(first, last.min(size - 1))
    }
}

/// The held object's bytes (those `range` asks for), streamed from its file or, for a multipart
/// object, from its part files in order; None when not held. A multipart object's answer carries
/// its ETag, as S3's GET does.
async fn object_bytes(
    app: &App,
    file_hash: &str,
    range: Option<&str>,
) -> io::Result<Option<Result<Response, S3Error>>> {
    let held = {
        let file_hash = file_hash.to_string();
        app.blocking(move |app| app.objects.held_object(&file_hash))
            .await?
    };
    let Some(object) = held else {
        return Ok(None);
    };
    let size = object.size;
    let (status, first, last) = match byte_range(range, size) {
        ByteRange::Whole => (StatusCode::OK, 0, size),
        ByteRange::Part(first, last) => (StatusCode::PARTIAL_CONTENT, first, last + 1),
        ByteRange::Unsatisfiable => {
            return Ok(Some(Err(S3Error::new(
                416,
                "InvalidRange",
                "The requested range is not satisfiable",
            ))))
        }
    };
    let mut runs = object.runs(first, last).into_iter();
    let body = match runs.next() {
        None => Body::empty(),
        Some(run) => {
            // The first file is opened before answering: an object removed meanwhile is a 404.
            let opened = match open_run(run).await {
                Ok(opened) => opened,
                Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(err) => return Err(err),
            };
            let rest = stream::iter(runs).then(open_run);
            Body::from_stream(stream::once(async { Ok(opened) }).chain(rest).try_flatten())
        }
    };
    let length = last - first;
    let mut response = (
        status,
        [
            (CONTENT_TYPE, "application/octet-stream".to_string()),
            (CONTENT_LENGTH, length.to_string()),
        ],
        body,
    )
        .into_response();
    if status == StatusCode::PARTIAL_CONTENT {
        let content_range = format!("bytes {first}-{}/{size}", last - 1);
        response
            .headers_mut()
            .insert(CONTENT_RANGE, content_range.parse().expect("ASCII"));
    }
    if let Some(etag) = object.etag {
        let etag = etag.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "an ETag that is no header value",
            )
        })?;
        response.headers_mut().insert(ETAG, etag);
    }
    Ok(Some(Ok(response)))
}

/// The bytes of one run, streamed from its file.
async fn open_run(
    (path, offset, length): Run,
) -> io::Result<tokio_util::io::ReaderStream<tokio::io::Take<tokio::fs::File>>> {
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(io::SeekFrom::Start(offset)).await?;
    Ok(tokio_util::io::ReaderStream::with_capacity(
        file.take(length),
        1 << 20,
    ))
}

async fn list_objects(State(app): State<App>) -> Result<Response, ContentError> {
    let object_list = app.blocking(|app| app.objects.list()).await?;
    Ok(Json(json!({ "object_list": object_list })).into_response())
}

fn not_held() -> Response {
    error_response(StatusCode::NOT_FOUND, "no such object")
}

/// The held bytes, whole or one `Range` as a signed GET serves them.
async fn read_object(
    State(app): State<App>,
    Path(file_hash): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ContentError> {
    if !contract::is_hex_digest(&file_hash) {
        return Ok(not_held());
    }
    let range = headers.get(RANGE).and_then(|value| value.to_str().ok());
    Ok(match object_bytes(&app, &file_hash, range).await? {
        Some(answer) => answer.into_response(),
        None => not_held(),
    })
}

async fn delete_object(
    State(app): State<App>,
    Path(file_hash): Path<String>,
) -> Result<Response, ContentError> {
    let held = contract::is_hex_digest(&file_hash)
        && app
            .blocking(move |app| app.objects.remove(&file_hash))
            .await?;
    Ok(if held {
        Json(json!({})).into_response()
    } else {
        not_held()
    })
}

async fn corrupt_object(
    State(app): State<App>,
    Path(file_hash): Path<String>,
) -> Result<Response, ContentError> {
    let held = contract::is_hex_digest(&file_hash)
        && app
            .blocking(move |app| app.objects.corrupt(&file_hash))
            .await?;
    Ok(if held {
        Json(json!({})).into_response()
    } else {
        not_held()
    })
}

#[derive(serde::Deserialize)]
struct DamageCount {
    count: Option<u64>,
}

/// `POST /_emulator/objects/:file_hash/damage-next?count=N` (1 by default).
async fn damage_next(
    State(app): State<App>,
    Path(file_hash): Path<String>,
    Query(DamageCount { count }): Query<DamageCount>,
) -> Result<Response, ContentError> {
    let count = count.unwrap_or(1);
    let held = contract::is_hex_digest(&file_hash) && app.objects.damage_next(&file_hash, count)?;
    Ok(if held {
        Json(json!({ "count": count })).into_response()
    } else {
        not_held()
    })
}

/// `POST /_emulator/clock {"advance_secs": N}`: the signed URLs' clock moves N s ahead.
async fn advance_clock(State(app): State<App>, payload: Payload) -> Result<Response, ContentError> {
    #[derive(serde::Deserialize)]
    struct Advance {
        advance_secs: u64,
    }
    let Advance { advance_secs } = payload.body.and_then(|body| body.parse())?;
    let ahead = app.objects.advance_clock(advance_secs);
    tracing::info!(advance_secs, ahead, "signed URLs' clock advanced");
    Ok(Json(json!({ "ahead_secs": ahead })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_read_as_s3_reads_them() {
        let range = |header: &str| byte_range(Some(header), 100);
        assert_eq!(byte_range(None, 100), ByteRange::Whole);
        assert_eq!(range("bytes=0-9"), ByteRange::Part(0, 9));
        assert_eq!(range("bytes=90-200"), ByteRange::Part(90, 99));
        assert_eq!(range("bytes=95-"), ByteRange::Part(95, 99));
        assert_eq!(range("bytes=-10"), ByteRange::Part(90, 99));
        assert_eq!(range("bytes=-1000"), ByteRange::Part(0, 99));
        assert_eq!(range("bytes=100-"), ByteRange::Unsatisfiable);
        assert_eq!(range("bytes=-0"), ByteRange::Unsatisfiable);
        assert_eq!(byte_range(Some("bytes=0-0"), 0), ByteRange::Unsatisfiable);
        for ignored in [
            "bytes=0-1,5-6",
            "bytes=9-1",
            "items=0-1",
            "bytes=a-b",
            "bytes=5",
        ] {
            assert_eq!(range(ignored), ByteRange::Whole, "{ignored}");
        }
    }
}
