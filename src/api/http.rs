//! The real HTTP client: `MediaApi` over the Maxlo device API (or `maxlofs emulator`).
//!
//! Wire format (NOTES.md, decision "keys"; docs/contract.md): POST calls carry
//! `device_session_key` in the JSON body; DELETE carries `user_session_key` (when configured, else
//! `device_session_key`) in the query string. Keys never reach logs, errors or Debug output.

use super::{
    ApiError, CreateOutcome, DeviceInfo, GrantId, Keys, MediaApi, MediaGrantList, MediaId,
    MediaRecord, MediaState, NewMedia, SecretKey,
};
use reqwest::{redirect, Client, Method, RequestBuilder, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

/// How long the client waits. A request that runs out of either is a `Transient` error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// To establish a connection (TCP and TLS).
    pub connect: Duration,
    /// For a whole call, from sending to the last byte of the answer.
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            request: Duration::from_secs(60),
        }
    }
}

/// `MediaApi` over HTTP. One instance shares one connection pool between all its calls.
pub struct HttpApi {
    client: Client,
    /// The service's URL, as given. Calls clone it and append their path to its own: parsing a
    /// whole URL string per call (host, IDNA) was a measurable share of a small file's sync.
    base_url: Url,
    timeouts: Timeouts,
    /// Swapped whole by `set_keys`; each call reads the key it needs once.
    keys: RwLock<Keys>,
}

impl HttpApi {
    /// A client for the service at `base_url` (e.g. `http://127.0.0.1:8700`; a path prefix is
    /// kept). Fails when the URL is not http(s) or carries a query or fragment.
    pub fn new(base_url: &str, keys: Keys, timeouts: Timeouts) -> anyhow::Result<Self> {
        let url =
            Url::parse(base_url).map_err(|err| anyhow::anyhow!("API URL {base_url:?}: {err}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            anyhow::bail!("API URL {base_url:?}: the scheme must be http or https");
        }
        if url.query().is_some() || url.fragment().is_some() {
            anyhow::bail!("API URL {base_url:?}: must not have a query or fragment");
        }
        let client = Client::builder()
            .connect_timeout(timeouts.connect)
            .timeout(timeouts.request)
            // A redirect could replay a body that holds the key to another host; and the base
            // URL is the user's to fix.
            .redirect(redirect::Policy::none())
            .user_agent(concat!("maxlofs/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(HttpApi {
            client,
            base_url: url,
            timeouts,
            keys: RwLock::new(keys),
        })
    }

    fn keys(&self) -> Keys {
        // Keys are replaced whole, so a panic elsewhere cannot have left them half-written.
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A POST to `path` whose JSON body is `fields` plus `device_session_key`.
    pub(super) fn post<T: Serialize + ?Sized>(&self, path: &str, fields: &T) -> RequestBuilder {
        let key = self.keys().device;
        let body = WithDeviceKey {
            device_session_key: key.expose(),
            fields,
        };
        self.client
            .request(Method::POST, self.url(path))
            .json(&body)
    }

    fn url(&self, path: &str) -> Url {
        let mut url = self.base_url.clone();
        let prefix = self.base_url.path().trim_end_matches('/');
        url.set_path(&format!("{prefix}{path}"));
        url
    }

    /// Sends a request and reads the whole answer, then gives it its meaning.
    pub(super) async fn call(&self, request: RequestBuilder) -> Result<Answer, ApiError> {
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status();
        // The path only: a DELETE's query holds the key.
        tracing::debug!(%status, path = response.url().path(), "API answer");
        let body: Vec<u8> = response.bytes().await.map_err(transport_error)?.into();
        classify(status, body)
    }
}

impl fmt::Debug for HttpApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpApi")
            .field("base_url", &self.base_url.as_str())
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct WithDeviceKey<'a, T: ?Sized> {
    device_session_key: &'a str,
    #[serde(flatten)]
    fields: &'a T,
}

/// The body of a POST that sends nothing but the key.
#[derive(Serialize)]
struct NoFields {}

#[derive(Deserialize)]
struct Created {
    media_id: MediaId,
}

/// A non-error answer, body included.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Answer {
    Success(Vec<u8>),
    /// 409: only a create documents it (its body is the path's current record).
    Conflict(Vec<u8>),
}

impl Answer {
    /// For calls that do not document a 409: it is a rejection like any other 4xx.
    pub(super) fn success(self) -> Result<Vec<u8>, ApiError> {
        match self {
            Answer::Success(body) => Ok(body),
            Answer::Conflict(body) => Err(ApiError::BadRequest {
                status: StatusCode::CONFLICT.as_u16(),
                message: service_message(&body),
            }),
        }
    }
}

/// The one place an HTTP status gets its meaning (see `ApiError`'s classes).
pub(super) fn classify(status: StatusCode, body: Vec<u8>) -> Result<Answer, ApiError> {
    match status.as_u16() {
        200..=299 => Ok(Answer::Success(body)),
        409 => Ok(Answer::Conflict(body)),
        403 => Err(ApiError::Unauthorized),
        404 => Err(ApiError::NotFound),
        // Request Timeout and Too Many Requests say "later", not "never".
        408 | 429 | 500..=599 => Err(ApiError::Transient(format!(
            "HTTP {status}: {}",
            service_message(&body)
        ))),
        // Other 4xx, and 1xx/3xx that a client without redirects should never see.
        code => Err(ApiError::BadRequest {
            status: code,
            message: service_message(&body),
        }),
    }
}

/// A success or conflict body that does not parse as what the call answers: most likely cut
/// short, so worth retrying.
pub(super) fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|err| ApiError::Transient(format!("malformed answer: {err}")))
}

/// Longest service message kept in an error.
const MESSAGE_MAX_CHARS: usize = 200;

/// What the service said: the JSON `error` field when there is one, else the body's text, cut
/// to a length fit for a log line.
fn service_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: String,
    }
    let text = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(parsed) => parsed.error,
        Err(_) => String::from_utf8_lossy(body).trim().to_string(),
    };
    if text.is_empty() {
        return "(no message)".to_string();
    }
    match text.char_indices().nth(MESSAGE_MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// A failure to get an answer at all: timeouts, refused or dropped connections, a body cut short.
pub(super) fn transport_error(mut err: reqwest::Error) -> ApiError {
    // A DELETE URL holds the key in its query; the path is worth keeping.
    if let Some(url) = err.url_mut() {
        url.set_query(None);
    }
    let mut message = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    ApiError::Transient(message)
}

#[async_trait::async_trait]
impl MediaApi for HttpApi {
    async fn create(&self, grant: GrantId, media: &NewMedia) -> Result<CreateOutcome, ApiError> {
        let request = self.post(&format!("/device/1/media_grant/{grant}/media"), media);
        match self.call(request).await? {
            Answer::Success(body) => Ok(CreateOutcome::Created(decode::<Created>(&body)?.media_id)),
            Answer::Conflict(body) => Ok(CreateOutcome::Conflict(decode::<MediaRecord>(&body)?)),
        }
    }

    async fn update(
        &self,
        grant: GrantId,
        media_id: MediaId,
        state: &MediaState,
    ) -> Result<(), ApiError> {
        let path = format!("/device/1/media_grant/{grant}/media/{media_id}");
        self.call(self.post(&path, state)).await?.success()?;
        Ok(())
    }

    async fn delete(&self, grant: GrantId, media_id: MediaId) -> Result<(), ApiError> {
        let path = format!("/device/1/media_grant/{grant}/media/{media_id}");
        let (name, key): (&str, SecretKey) = match self.keys() {
            Keys {
                user: Some(user), ..
            } => ("user_session_key", user),
            Keys { device, .. } => ("device_session_key", device),
        };
        let request = self
            .client
            .request(Method::DELETE, self.url(&path))
            .query(&[(name, key.expose())]);
        self.call(request).await?.success()?;
        Ok(())
    }

    async fn current_device(&self) -> Result<DeviceInfo, ApiError> {
        let body = self
            .call(self.post("/device/1/current", &NoFields {}))
            .await?
            .success()?;
        decode(&body)
    }

    async fn media_grants(&self) -> Result<MediaGrantList, ApiError> {
        let body = self
            .call(self.post("/device/1/media_grant", &NoFields {}))
            .await?
            .success()?;
        decode(&body)
    }

    fn set_keys(&self, keys: Keys) {
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = keys;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::thread::JoinHandle;

    const DEVICE_KEY: &str = "device-secret-4711";
    const USER_KEY: &str = "user-secret-0815";

    fn keys(user: bool) -> Keys {
        Keys {
            device: SecretKey::new(DEVICE_KEY),
            user: user.then(|| SecretKey::new(USER_KEY)),
        }
    }

    fn api(base_url: &str, user_key: bool) -> HttpApi {
        HttpApi::new(base_url, keys(user_key), Timeouts::default()).unwrap()
    }

    fn status(code: u16) -> StatusCode {
        StatusCode::from_u16(code).unwrap()
    }

    #[test]
    fn classification_by_status() {
        let body = || br#"{"error":"media_path is invalid"}"#.to_vec();
        for code in [200, 201, 204] {
            assert_eq!(classify(status(code), body()), Ok(Answer::Success(body())));
        }
        assert_eq!(classify(status(409), body()), Ok(Answer::Conflict(body())));
        assert_eq!(classify(status(403), body()), Err(ApiError::Unauthorized));
        assert_eq!(classify(status(404), body()), Err(ApiError::NotFound));
        for code in [400, 412, 422, 302] {
            assert_eq!(
                classify(status(code), body()),
                Err(ApiError::BadRequest {
                    status: code,
                    message: "media_path is invalid".into()
                })
            );
        }
        for code in [408, 429, 500, 502, 503, 504] {
            let err = classify(status(code), body()).unwrap_err();
            assert!(err.is_transient(), "{code}: {err:?}");
        }
    }

    #[test]
    fn a_conflict_is_a_rejection_where_it_is_not_documented() {
        assert_eq!(
            Answer::Conflict(b"busy".to_vec()).success(),
            Err(ApiError::BadRequest {
                status: 409,
                message: "busy".into()
            })
        );
    }

    #[test]
    fn service_messages_are_the_error_field_or_the_cut_text() {
        assert_eq!(
            service_message(br#"{"error":"no such grant"}"#),
            "no such grant"
        );
        assert_eq!(service_message(b"  plain text\n"), "plain text");
        assert_eq!(service_message(br#"{"other":1}"#), r#"{"other":1}"#);
        assert_eq!(service_message(b""), "(no message)");
        let long = "é".repeat(1000);
        let cut = service_message(long.as_bytes());
        assert_eq!(cut, format!("{}…", "é".repeat(MESSAGE_MAX_CHARS)));
    }

    #[test]
    fn malformed_or_truncated_json_is_transient() {
        for body in [&b"{\"media_id\": 1"[..], b"", b"<html>"] {
            let err = decode::<Created>(body).err().unwrap();
            assert!(err.is_transient(), "{err:?}");
        }
    }

    #[test]
    fn base_urls() {
        assert_eq!(
            api("http://127.0.0.1:8700/", false).url("/x").as_str(),
            "http://127.0.0.1:8700/x"
        );
        assert_eq!(
            api("https://h/api/", false).url("/x").as_str(),
            "https://h/api/x"
        );
        assert_eq!(
            api("http://h:1/api", false).url("/x").as_str(),
            "http://h:1/api/x"
        );
        for bad in ["127.0.0.1:8700", "ftp://h", "http://h/?k=v", "not a url"] {
            assert!(
                HttpApi::new(bad, keys(false), Timeouts::default()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn debug_never_shows_keys() {
        let api = api("http://127.0.0.1:1", true);
        let debug = format!("{api:?}");
        assert!(debug.contains("127.0.0.1:1"), "{debug}");
        assert!(
            !debug.contains(DEVICE_KEY) && !debug.contains(USER_KEY),
            "{debug}"
        );
    }

    /// A port nothing listens on.
    fn dead_port_url() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    }

    #[tokio::test]
    async fn transport_errors_are_transient_and_never_show_keys() {
        let api = api(&dead_port_url(), true);
        let errors = [
            api.delete(1, 7).await.unwrap_err(),
            api.current_device().await.unwrap_err(),
        ];
        for err in errors {
            assert!(err.is_transient(), "{err:?}");
            for text in [format!("{err}"), format!("{err:?}")] {
                assert!(
                    !text.contains(DEVICE_KEY) && !text.contains(USER_KEY),
                    "{text}"
                );
            }
        }
    }

    /// Answers `count` connections with `response`, one request each, and hands back the
    /// requests as received.
    fn raw_server(count: usize, response: &'static str) -> (String, JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            (0..count)
                .map(|_| {
                    let (mut stream, _) = listener.accept().unwrap();
                    let request = read_request(&mut stream);
                    stream.write_all(response.as_bytes()).unwrap();
                    request
                })
                .collect()
        });
        (url, server)
    }

    /// Reads one HTTP/1.1 request: the head, then a Content-Length body.
    fn read_request(stream: &mut impl Read) -> String {
        let mut request = Vec::new();
        let mut chunk = [0; 4096];
        loop {
            let n = stream.read(&mut chunk).unwrap();
            request.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&request);
            if let Some(head_end) = text.find("\r\n\r\n") {
                let body_len = text[..head_end]
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if request.len() >= head_end + 4 + body_len || n == 0 {
                    return text.into_owned();
                }
            }
        }
    }

    const OK_CLOSE: &str = "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

    fn request_line(request: &str) -> &str {
        request.lines().next().unwrap()
    }

    fn json_body(request: &str) -> serde_json::Value {
        serde_json::from_str(request.split_once("\r\n\r\n").unwrap().1).unwrap()
    }

    #[tokio::test]
    async fn posts_carry_the_device_key_in_the_body_only() {
        let created =
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 14\r\n\r\n{\"media_id\":5}";
        let (url, server) = raw_server(1, created);
        let api = api(&url, true);
        assert_eq!(
            api.create(1, &new_media()).await,
            Ok(CreateOutcome::Created(5))
        );
        let request = server.join().unwrap().remove(0);
        assert_eq!(
            request_line(&request),
            "POST /device/1/media_grant/1/media HTTP/1.1"
        );
        assert_eq!(
            json_body(&request),
            serde_json::json!({
                "device_session_key": DEVICE_KEY,
                "media_path": "photos/a.jpg",
                "file_hash": "ab".repeat(32),
                "file_size": 3,
                "ctime": "2026-11-26T18:20:00.123Z",
                "mtime": "2026-11-26T18:20:00.456Z",
            })
        );
    }

    #[tokio::test]
    async fn key_only_posts_send_just_the_device_key() {
        let (url, server) = raw_server(2, OK_CLOSE);
        let api = api(&url, true);
        // The empty answer is not a DeviceInfo or MediaGrantList: only the requests matter here.
        assert!(api.current_device().await.unwrap_err().is_transient());
        assert!(api.media_grants().await.unwrap_err().is_transient());
        let requests = server.join().unwrap();
        for (request, path) in requests
            .iter()
            .zip(["/device/1/current", "/device/1/media_grant"])
        {
            assert_eq!(request_line(request), format!("POST {path} HTTP/1.1"));
            assert_eq!(
                json_body(request),
                serde_json::json!({ "device_session_key": DEVICE_KEY })
            );
        }
    }

    #[tokio::test]
    async fn deletes_carry_the_user_key_else_the_device_key_in_the_query() {
        let (url, server) = raw_server(3, OK_CLOSE);
        let api = api(&url, true);
        api.delete(2, 9).await.unwrap();
        api.set_keys(keys(false));
        api.delete(2, 9).await.unwrap();
        api.set_keys(Keys {
            device: SecretKey::new("rotated"),
            user: None,
        });
        api.delete(2, 9).await.unwrap();
        let lines: Vec<String> = server
            .join()
            .unwrap()
            .iter()
            .map(|request| request_line(request).to_string())
            .collect();
        assert_eq!(
            lines,
            [
                format!("DELETE /device/1/media_grant/2/media/9?user_session_key={USER_KEY} HTTP/1.1"),
                format!("DELETE /device/1/media_grant/2/media/9?device_session_key={DEVICE_KEY} HTTP/1.1"),
                "DELETE /device/1/media_grant/2/media/9?device_session_key=rotated HTTP/1.1".to_string(),
            ]
        );
    }

    fn new_media() -> NewMedia {
        NewMedia {
            media_path: "photos/a.jpg".into(),
            state: MediaState {
                file_hash: "ab".repeat(32),
                file_size: 3,
                ctime: "2026-11-26T18:20:00.123Z".into(),
                mtime: "2026-11-26T18:20:00.456Z".into(),
            },
        }
    }

    #[tokio::test]
    async fn a_truncated_or_missing_answer_is_transient() {
        let responses = [
            // Content-Length promises more than arrives before the connection closes.
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 100\r\n\r\n{\"media_id\":",
            // No Content-Length: the body ends at close, and is half a JSON object.
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"media_id\": 1",
            "HTTP/1.1 409 Conflict\r\nConnection: close\r\n\r\n{\"media_id\": 3, \"media_pa",
            // Closed without an answer.
            "",
        ];
        for response in responses {
            let (url, server) = raw_server(1, response);
            let err = api(&url, false).create(1, &new_media()).await.unwrap_err();
            assert!(err.is_transient(), "{response:?}: {err:?}");
            server.join().unwrap();
        }
    }
}
