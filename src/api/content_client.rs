//! The content calls as maxlofs makes them (docs/contract.md, "Content calls"): `ContentApi`,
//! and `ContentClient`, which sends the API calls through an `HttpApi` (its keys, its base URL,
//! its error classes) and the PUTs and GETs of signed URLs through clients of its own.
//!
//! Signed URLs are opaque: they are used as given, never built or changed, and never logged
//! whole (their query is a signature).

use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use reqwest::{redirect, Client, Method};

use super::answer::{
    check_signed_url, classify, classify_store, decode, is_local_address, is_local_host, malformed,
    Answer,
};
use super::content::{
    DownloadAnswer, DownloadRequest, FileRef, MultipartAnswer, MultipartCompleteRequest,
    MultipartConflict, MultipartRequest, S3ObjectRequest, UploadAnswer, UploadRequest,
};
use super::http::{read_capped, retry_after, transport_error, HttpApi};
use super::pacer::{health_of, Health, Pacer};
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
    /// GETs the bytes `range` of a signed download URL (one HTTP `Range`); a store answering
    /// other bytes than those asked is an error.
    async fn get_range(&self, url: &str, range: Range<u64>) -> Result<PutBody, ApiError>;
}

/// A stalled transfer: the store taking no byte of a PUT, or sending none of a GET, for this long
/// fails it, however long the whole transfer takes (a rate-limited 4 GiB part takes hours).
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The pace `multipart_complete` is given to join a file, beyond the usual call timeout (bytes
/// per second; the emulator joins and re-hashes at several times this).
const ASSEMBLY_RATE: u64 = 32 * 1024 * 1024;

pub struct ContentClient {
    api: Arc<HttpApi>,
    /// For PUTs: no read timeout, which would also run while the body is sent (the store says
    /// nothing until it has it all) and so fail every PUT longer than it; `StallClock` instead.
    puts: Client,
    /// For GETs, where a read timeout is the stall check: the bytes come to us.
    gets: Client,
    stall_timeout: Duration,
    /// The service's host when it is on this machine or its local network (the emulator, a
    /// test): the one local host a signed URL may point at.
    local_host: Option<String>,
    /// How hard the store may be pressed: its PUTs and GETs go through it (the API calls go
    /// through `api`'s).
    store: Pacer,
}

impl ContentClient {
    pub fn new(api: Arc<HttpApi>) -> anyhow::Result<ContentClient> {
        ContentClient::with_stall_timeout(api, STALL_TIMEOUT)
    }

    fn with_stall_timeout(
        api: Arc<HttpApi>,
        stall_timeout: Duration,
    ) -> anyhow::Result<ContentClient> {
        let local_host = api
            .base_url()
            .host_str()
            .filter(|host| is_local_host(host))
            .map(str::to_string);
        let builder = || {
            let builder = Client::builder()
                .connect_timeout(Duration::from_secs(10))
                // A signed URL is all the authority a transfer has: following a redirect would
                // send the bytes where the service did not say.
                .redirect(redirect::Policy::none())
                .user_agent(concat!("maxlofs/", env!("CARGO_PKG_VERSION")));
            builder.dns_resolver(Arc::new(NoLocalAddresses {
                allowed: local_host.clone(),
            }))
        };
        Ok(ContentClient {
            api,
            puts: builder().build()?,
            gets: builder().read_timeout(stall_timeout).build()?,
            stall_timeout,
            local_host,
            store: Pacer::default(),
        })
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
        // The store joins the parts (the emulator also re-hashes them) before it answers:
        // minutes for tens of GiB. Cut short, the call would be repeated, and could be forever.
        let assembly = Duration::from_secs(request.file_size / ASSEMBLY_RATE);
        let call = self
            .api
            .post(&Self::grant_path(grant, "multipart_complete"), request);
        self.api
            .call_with_work(call, assembly)
            .await?
            .success()
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
        // Bytes go up with PUT, as the contract says; another method (a DELETE, say) sent to a
        // signed URL would do what the service, not the upload, wants.
        if !target.method.eq_ignore_ascii_case("PUT") {
            return Err(malformed(&format!(
                "an upload named the method {:?}, not PUT",
                target.method
            )));
        }
        let url = check_signed_url(&target.url, self.local_host.as_deref())?;
        // Before the clock starts: a wait for the store is not the store stalling.
        let pass = self.store.admit().await;
        let clock = StallClock::new();
        let mut request = self
            .puts
            .request(Method::PUT, url)
            .body(reqwest::Body::wrap_stream(clock.watch(body)));
        let mut has_length = false;
        for (name, value) in &target.headers {
            if name.eq_ignore_ascii_case("content-length") {
                has_length = true;
                if value.trim().parse::<u64>().ok() != Some(len) {
                    return Err(ApiError::SignedLength {
                        signed: value.clone(),
                        len,
                    });
                }
            }
            request = request.header(name.as_str(), value.as_str());
        }
        if !has_length {
            // Without it the body would go chunked, which a signed PUT refuses.
            request = request.header(reqwest::header::CONTENT_LENGTH, len);
        }
        let exchange = async {
            let response = request.send().await.map_err(transport_error)?;
            let status = response.status();
            tracing::debug!(%status, path = response.url().path(), "PUT answer");
            let etag = response
                .headers()
                .get(reqwest::header::ETAG)
                .and_then(|value| value.to_str().ok())
                .map(str::to_string);
            let health = health_of(status.as_u16(), retry_after(&response));
            let answer = read_capped(response).await?;
            Ok((status, etag, health, answer))
        };
        let answered = tokio::select! {
            answered = exchange => answered,
            () = clock.stalled(self.stall_timeout) => Err(ApiError::Transient(format!(
                "the store took no bytes and gave no answer for {} s",
                self.stall_timeout.as_secs()
            ))),
        };
        let (status, etag, health, answer) = match answered {
            Ok(answered) => answered,
            Err(err) => {
                pass.done(Health::Trouble { retry_after: None });
                return Err(err);
            }
        };
        pass.done(health);
        classify_store(status.as_u16(), answer)?.success()?;
        etag.ok_or_else(|| ApiError::Transient("the store answered a PUT without an ETag".into()))
    }

    async fn get(&self, url: &str) -> Result<PutBody, ApiError> {
        self.get_bytes(url, None).await
    }

    async fn get_range(&self, url: &str, range: Range<u64>) -> Result<PutBody, ApiError> {
        self.get_bytes(url, Some(range)).await
    }
}

impl ContentClient {
    /// A GET of a signed URL, whole or (`range`, not empty) those bytes only.
    async fn get_bytes(&self, url: &str, range: Option<Range<u64>>) -> Result<PutBody, ApiError> {
        use futures_util::TryStreamExt;
        let url = check_signed_url(url, self.local_host.as_deref())?;
        let pass = self.store.admit().await;
        let mut request = self.gets.get(url);
        if let Some(range) = &range {
            let last = range.end.saturating_sub(1);
            request = request.header(
                reqwest::header::RANGE,
                format!("bytes={}-{last}", range.start),
            );
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) => {
                pass.done(Health::Trouble { retry_after: None });
                return Err(transport_error(err));
            }
        };
        let status = response.status();
        pass.done(health_of(status.as_u16(), retry_after(&response)));
        if !status.is_success() {
            let body = read_capped(response).await?;
            classify(status.as_u16(), body)?.success()?;
            return Err(ApiError::Transient(format!("GET answered {status}")));
        }
        if let Some(range) = &range {
            // A 200 is the whole object: other bytes than asked, unless they start at 0.
            let answered = response
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.strip_prefix("bytes "))
                .and_then(|value| value.split_once('/'))
                .and_then(|(span, _)| span.split_once('-'))
                .and_then(|(first, last)| {
                    Some((first.parse::<u64>().ok()?, last.parse::<u64>().ok()?))
                });
            let starts_right = match answered {
                Some((first, _)) => first == range.start,
                None => status.as_u16() == 200 && range.start == 0,
            };
            if !starts_right {
                return Err(malformed(&format!(
                    "the store answered other bytes than {}-{} ({status})",
                    range.start,
                    range.end.saturating_sub(1)
                )));
            }
        }
        Ok(Box::pin(
            response
                .bytes_stream()
                .map_ok(|chunk| chunk.to_vec())
                .map_err(io::Error::other),
        ))
    }
}

/// The least a download must bring in each window: one slower is given up, so a service sending
/// a byte now and then cannot hold whoever reads it (`receive`).
pub const DOWNLOAD_FLOOR_BYTES: u64 = 64 * 1024;
/// The window `DOWNLOAD_FLOOR_BYTES` must come within, unless a caller sets another.
pub const DOWNLOAD_FLOOR_WINDOW: Duration = Duration::from_secs(30);

/// Why `receive` did not take a download whole.
#[derive(Debug, thiserror::Error)]
pub enum Unreceived {
    #[error("the download brought less than {} KiB in a window", DOWNLOAD_FLOOR_BYTES / 1024)]
    TooSlow,
    #[error("the store sent more than the {0} bytes asked")]
    TooLong(u64),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Takes a download: `request` (a `get` or `get_range`), then its bytes, each piece handed to
/// `each` as it comes. Each `DOWNLOAD_FLOOR_BYTES` must come within `floor_window` of the last
/// (the first, of the request), and no more than `most` bytes in all: a store sending slower,
/// or without end, cannot hold the reader. Answers how many bytes came.
pub async fn receive(
    request: impl std::future::Future<Output = Result<PutBody, ApiError>>,
    most: u64,
    floor_window: Duration,
    mut each: impl FnMut(&[u8]) -> io::Result<()>,
) -> Result<u64, Unreceived> {
    let mut window_end = tokio::time::Instant::now() + floor_window;
    let Ok(body) = tokio::time::timeout_at(window_end, request).await else {
        return Err(Unreceived::TooSlow);
    };
    let mut body = body?;
    let (mut received, mut in_window) = (0u64, 0u64);
    loop {
        let Ok(piece) = tokio::time::timeout_at(window_end, body.next()).await else {
            return Err(Unreceived::TooSlow);
        };
        let Some(piece) = piece else {
            return Ok(received);
        };
        let piece = piece?;
        received += piece.len() as u64;
        if received > most {
            return Err(Unreceived::TooLong(most));
        }
        each(&piece)?;
        in_window += piece.len() as u64;
        if in_window >= DOWNLOAD_FLOOR_BYTES {
            window_end = tokio::time::Instant::now() + floor_window;
            in_window = 0;
        }
    }
}

/// Resolves a signed URL's host name to the addresses it has outside this machine and its local
/// network, and fails if it has none: a name may lead where a literal address may not
/// (`answer::check_signed_url`). The service's own local host, if any, resolves as it is.
struct NoLocalAddresses {
    allowed: Option<String>,
}

impl reqwest::dns::Resolve for NoLocalAddresses {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        let any_address = self.allowed.as_deref() == Some(host.as_str());
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let usable: Vec<_> = found
                .filter(|address| any_address || !is_local_address(address.ip()))
                .collect();
            if usable.is_empty() {
                return Err(format!(
                    "{host:?} resolves only to local addresses: a signed URL may not lead there"
                )
                .into());
            }
            Ok(Box::new(usable.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The most of a PUT's body handed to the HTTP client at a time (see `StallClock::watch`).
const PIECE: usize = 64 * 1024;

/// Whether a PUT waits on the store, and since when. It waits from the request's start, and
/// each time the body has handed over a chunk, until the request asks for the next one; after
/// the last, until the answer. While the body makes a chunk (reading the file, or pacing to
/// `--upload-limit`) the wait is ours, not the store's, and is not counted.
#[derive(Clone)]
struct StallClock {
    start: Instant,
    /// Milliseconds after `start` (plus one) the wait began; 0 while not waiting.
    waiting_since: Arc<AtomicU64>,
}

impl StallClock {
    fn new() -> StallClock {
        let clock = StallClock {
            start: Instant::now(),
            waiting_since: Arc::new(AtomicU64::new(0)),
        };
        clock.wait_from_now();
        clock
    }

    fn wait_from_now(&self) {
        let now = self.start.elapsed().as_millis() as u64 + 1;
        self.waiting_since.store(now, Ordering::Relaxed);
    }

    /// `body` in pieces of at most `PIECE` bytes, telling this clock when the request asks for
    /// more and when it is handed it. Small pieces, because the client asks for the next only
    /// once most of what it holds has gone out: a whole 1 MiB chunk would leave it silent for
    /// minutes on a slow uplink (600 KiB at 10 KB/s), and that would read as a stall.
    fn watch(&self, body: PutBody) -> BoxStream<'static, io::Result<Bytes>> {
        Box::pin(futures_util::stream::unfold(
            (body, Bytes::new(), self.clone()),
            |(mut body, mut rest, clock)| async move {
                clock.waiting_since.store(0, Ordering::Relaxed);
                if rest.is_empty() {
                    match body.next().await {
                        Some(Ok(chunk)) => rest = Bytes::from(chunk),
                        other => {
                            clock.wait_from_now();
                            return other
                                .map(|failed| (failed.map(Bytes::from), (body, rest, clock)));
                        }
                    }
                }
                let piece = rest.split_to(rest.len().min(PIECE));
                clock.wait_from_now();
                Some((Ok(piece), (body, rest, clock)))
            },
        ))
    }

    /// Returns once the store has kept us waiting for `limit`.
    async fn stalled(&self, limit: Duration) {
        loop {
            let since = self.waiting_since.load(Ordering::Relaxed);
            let waited = match since {
                0 => Duration::ZERO,
                since => self
                    .start
                    .elapsed()
                    .saturating_sub(Duration::from_millis(since - 1)),
            };
            if waited >= limit {
                return;
            }
            // Checked a few times per limit, so a stall is seen within a quarter of it.
            let next_check = (limit - waited).min(limit / 4);
            tokio::time::sleep(next_check.max(Duration::from_millis(50))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Timeouts;
    use crate::{Keys, SecretKey};
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};

    fn client_of(service: &str, request_timeout: Duration, stall: Duration) -> ContentClient {
        let keys = Keys {
            device: SecretKey::new("key"),
            user: None,
        };
        let timeouts = Timeouts {
            answer: request_timeout,
            request: request_timeout,
            ..Timeouts::default()
        };
        let api = HttpApi::new(service, keys, timeouts).unwrap();
        ContentClient::with_stall_timeout(Arc::new(api), stall).unwrap()
    }

    fn client(stall_timeout: Duration) -> ContentClient {
        client_of(
            "http://127.0.0.1:1",
            Timeouts::default().request,
            stall_timeout,
        )
    }

    /// A server on loopback that serves one connection with `serve`; its URL.
    fn server(serve: impl FnOnce(TcpStream) + Send + 'static) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || serve(listener.accept().unwrap().0));
        url
    }

    /// A store that serves one PUT with `serve`; the PUT target for it.
    fn store(serve: impl FnOnce(TcpStream) + Send + 'static) -> SignedPut {
        SignedPut {
            method: "PUT".into(),
            url: format!("{}/object", server(serve)),
            headers: BTreeMap::new(),
        }
    }

    /// Reads a request whole, as S3 does before it says anything.
    fn read_request(stream: &TcpStream) {
        let mut reader = BufReader::new(stream);
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        std::io::copy(&mut reader.take(length), &mut std::io::sink()).unwrap();
    }

    fn answer_etag(mut stream: TcpStream) {
        read_request(&stream);
        let answer = "HTTP/1.1 200 OK\r\nETag: \"e\"\r\nContent-Length: 0\r\n\r\n";
        stream.write_all(answer.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_secs(1));
    }

    /// `chunks` chunks of `size` bytes, each made `pause` after the request asks for it.
    fn paced(chunks: usize, size: usize, pause: Duration) -> PutBody {
        Box::pin(
            futures_util::stream::iter(0..chunks).then(move |_| async move {
                tokio::time::sleep(pause).await;
                Ok(vec![7; size])
            }),
        )
    }

    #[tokio::test]
    async fn a_put_longer_than_the_stall_timeout_succeeds_while_the_store_takes_its_bytes() {
        // The store says nothing for 3 s, until it has the body; each chunk is paced longer
        // than the timeout (as --upload-limit paces), which is our wait, not the store's.
        let target = store(answer_etag);
        let body = paced(2, 64 * 1024, Duration::from_millis(1500));
        let answer = client(Duration::from_secs(1))
            .put(&target, 2 * 64 * 1024, body)
            .await;
        assert_eq!(answer.unwrap(), "\"e\"");
    }

    /// S3's SlowDown: a 503 that may say when to come back.
    fn slow_down(mut stream: TcpStream) {
        read_request(&stream);
        let body =
            "<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>";
        let answer = format!(
            "HTTP/1.1 503 Slow Down\r\nRetry-After: 2\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(answer.as_bytes()).unwrap();
    }

    #[tokio::test]
    async fn a_slow_down_from_the_store_holds_back_every_put_until_its_retry_after() {
        let client = client(Duration::from_secs(10));
        let body = || paced(1, 1, Duration::ZERO);
        let err = client.put(&store(slow_down), 1, body()).await.unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        let answered = std::time::Instant::now();
        let asked = Arc::new(parking_lot::Mutex::new(None));
        let asked_at = asked.clone();
        let target = store(move |stream| {
            *asked_at.lock() = Some(std::time::Instant::now());
            answer_etag(stream);
        });
        assert_eq!(client.put(&target, 1, body()).await.unwrap(), "\"e\"");
        let asked = asked.lock().expect("the second PUT came");
        assert!(
            asked - answered >= Duration::from_secs(2),
            "{:?}",
            asked - answered
        );
    }

    #[tokio::test]
    async fn a_store_that_stops_taking_bytes_fails_the_put_at_the_stall_timeout() {
        let target = store(|stream| {
            std::thread::sleep(Duration::from_secs(30));
            drop(stream);
        });
        let started = Instant::now();
        let body = paced(1024, 1024 * 1024, Duration::ZERO);
        let answer = client(Duration::from_secs(1))
            .put(&target, 1024 * 1024 * 1024, body)
            .await;
        assert!(
            matches!(&answer, Err(ApiError::Transient(why)) if why.contains("no bytes")),
            "{answer:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn a_store_that_takes_the_body_and_never_answers_fails_the_put_at_the_stall_timeout() {
        let target = store(|stream| {
            read_request(&stream);
            std::thread::sleep(Duration::from_secs(30));
        });
        let started = Instant::now();
        let body = paced(4, 64 * 1024, Duration::ZERO);
        let answer = client(Duration::from_secs(1))
            .put(&target, 4 * 64 * 1024, body)
            .await;
        assert!(
            matches!(&answer, Err(err) if err.is_transient()),
            "{answer:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    /// A service that reads a call and answers it `after`, with an empty JSON object.
    fn slow_service(after: Duration) -> String {
        server(move |mut stream| {
            read_request(&stream);
            std::thread::sleep(after);
            let answer = "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\n\
                          content-length: 2\r\n\r\n{}";
            let _ = stream.write_all(answer.as_bytes());
        })
    }

    #[tokio::test]
    async fn multipart_complete_waits_longer_for_a_larger_file() {
        let complete = |file_size| MultipartCompleteRequest {
            file_size,
            file_hash: "0".repeat(64),
            s3_bucket_id: "b".into(),
            upload_id: "u".into(),
            part_list: Vec::new(),
        };
        let second = Duration::from_secs(1);
        // 3 s more for 96 MiB: a 2 s assembly is waited for.
        let large = client_of(&slow_service(2 * second), second, second)
            .multipart_complete(1, &complete(96 << 20))
            .await;
        assert!(large.is_ok(), "{large:?}");
        // A small file gets the usual 1 s.
        let small = client_of(&slow_service(2 * second), second, second)
            .multipart_complete(1, &complete(20 << 20))
            .await;
        assert!(
            matches!(&small, Err(err) if err.is_transient()),
            "{small:?}"
        );
    }

    #[tokio::test]
    async fn a_body_is_handed_over_in_pieces_of_at_most_64_kib() {
        let body: PutBody = Box::pin(futures_util::stream::iter([
            Ok(vec![1; 1024 * 1024 + 1]),
            Ok(vec![2; 10]),
        ]));
        let pieces: Vec<usize> = StallClock::new()
            .watch(body)
            .map(|piece| piece.unwrap().len())
            .collect()
            .await;
        let mut expected = vec![PIECE; 16];
        expected.extend([1, 10]);
        assert_eq!(pieces, expected);
    }

    #[tokio::test]
    async fn an_upload_by_another_method_than_put_is_refused_unsent() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!(
            "http://{}/_emulator/objects/x",
            listener.local_addr().unwrap()
        );
        let put = |method: &str| SignedPut {
            method: method.into(),
            url: url.clone(),
            headers: BTreeMap::new(),
        };
        let body = || paced(1, 4, Duration::ZERO);
        let err = client(Duration::from_secs(5))
            .put(&put("DELETE"), 4, body())
            .await
            .unwrap_err();
        assert!(
            err.is_transient() && err.to_string().contains("not PUT"),
            "{err}"
        );
        let reached = listener.accept();
        assert!(
            matches!(&reached, Err(err) if err.kind() == io::ErrorKind::WouldBlock),
            "{reached:?}"
        );
        // The control: a PUT there is sent (and fails, unanswered: nobody serves it).
        let _ = client(Duration::from_secs(1))
            .put(&put("put"), 4, body())
            .await;
        assert!(listener.accept().is_ok());
    }
}
