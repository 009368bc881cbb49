//! The real HTTP client: `MediaApi` over the Maxlo device API (or `maxlofs emulator`).
//!
//! Wire format (docs/contract.md, "Keys"): POST calls carry `device_session_key` in the JSON body;
//! DELETE carries `user_session_key` (when configured, else `device_session_key`) in the query
//! string. Keys never reach logs, errors or Debug output. Answers are read by `api::answer`.

use super::answer::{body_too_large, check_create, classify, decode, Answer, BODY_MAX_BYTES};
use super::pacer::{health_of, Health, Pacer};
use super::{
    ApiError, CreateOutcome, DeviceInfo, GrantId, Keys, MediaApi, MediaGrantList, MediaId,
    MediaRecord, MediaState, NewMedia, SecretKey,
};
use parking_lot::RwLock;
use reqwest::{redirect, Client, Method, RequestBuilder, Response, Url};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// How long the client waits. A request that runs out of either is a `Transient` error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// To establish a connection (TCP and TLS).
    pub connect: Duration,
    /// For the answer to begin, from sending the call. API calls are small and answered at
    /// once: a call the service took and never answers (its connection held by a process that
    /// stopped, or lost without a reset reaching us) fails in this time, not in `request`.
    pub answer: Duration,
    /// For a whole call, from sending to the last byte of the answer.
    pub request: Duration,
}

impl Timeouts {
    /// For a command a user waits on (`grants`): a service that accepts connections but
    /// never answers gets a clear error in 15 s rather than after a minute.
    pub fn interactive() -> Timeouts {
        Timeouts {
            request: Duration::from_secs(15),
            ..Timeouts::default()
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            answer: Duration::from_secs(15),
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
    /// How hard the service may be pressed: every call goes through it.
    pacer: Pacer,
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
        // The other timeouts are each call's (`call_with_work`).
        let client = Client::builder()
            .connect_timeout(timeouts.connect)
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
            pacer: Pacer::default(),
        })
    }

    fn keys(&self) -> Keys {
        // Keys are replaced whole, so a panic elsewhere cannot have left them half-written.
        self.keys.read().clone()
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

    /// The service's URL, as given.
    pub(super) fn base_url(&self) -> &Url {
        &self.base_url
    }

    fn url(&self, path: &str) -> Url {
        let mut url = self.base_url.clone();
        let prefix = self.base_url.path().trim_end_matches('/');
        url.set_path(&format!("{prefix}{path}"));
        url
    }

    /// Sends a request when the pacer lets it out, reads its answer (up to `BODY_MAX_BYTES`),
    /// then gives it its meaning.
    pub(super) async fn call(&self, request: RequestBuilder) -> Result<Answer, ApiError> {
        self.call_with_work(request, Duration::ZERO).await
    }

    /// `call` for a call the service works on for up to `work` before it answers: the wait for
    /// the answer and the whole call may each take that much longer.
    pub(super) async fn call_with_work(
        &self,
        request: RequestBuilder,
        work: Duration,
    ) -> Result<Answer, ApiError> {
        let answer_within = self.timeouts.answer + work;
        let request = request.timeout(self.timeouts.request + work);
        let pass = self.pacer.admit().await;
        let response = match tokio::time::timeout(answer_within, request.send()).await {
            Ok(Ok(response)) => response,
            Ok(Err(err)) => {
                pass.done(Health::Trouble { retry_after: None });
                return Err(transport_error(err));
            }
            Err(_) => {
                pass.done(Health::Trouble { retry_after: None });
                return Err(ApiError::Transient(format!(
                    "the service took the call and gave no answer within {} s",
                    answer_within.as_secs_f64()
                )));
            }
        };
        let status = response.status();
        // The path only: a DELETE's query holds the key.
        tracing::debug!(%status, path = response.url().path(), "API answer");
        let health = health_of(status.as_u16(), retry_after(&response));
        let body = read_capped(response).await;
        pass.done(match &body {
            // Cut short: the service did not finish answering.
            Err(err) if err.is_transient() && health == Health::Answered => {
                Health::Trouble { retry_after: None }
            }
            _ => health,
        });
        classify(status.as_u16(), body?)
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

/// The answer's body, read as it arrives and given up on past `BODY_MAX_BYTES`, so that a
/// service sending without end costs at most that much memory.
pub(super) async fn read_capped(mut response: Response) -> Result<Vec<u8>, ApiError> {
    if response
        .content_length()
        .is_some_and(|length| length > BODY_MAX_BYTES as u64)
    {
        return Err(body_too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
        if body.len() + chunk.len() > BODY_MAX_BYTES {
            return Err(body_too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The `Retry-After` header of `response`, if it has a readable one.
pub(super) fn retry_after(response: &Response) -> Option<&str> {
    response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()
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
    ApiError::Transport {
        message,
        source: super::Transport(std::sync::Arc::new(err)),
    }
}

#[async_trait::async_trait]
impl MediaApi for HttpApi {
    async fn create(&self, grant: GrantId, media: &NewMedia) -> Result<CreateOutcome, ApiError> {
        let request = self.post(&format!("/device/1/media_grant/{grant}/media"), media);
        let outcome = match self.call(request).await? {
            Answer::Success(body) => CreateOutcome::Created(decode::<Created>(&body)?.media_id),
            Answer::Conflict(body) => CreateOutcome::Conflict(decode::<MediaRecord>(&body)?),
        };
        check_create(media, outcome)
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
        *self.keys.write() = keys;
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
            // The transport's own error is kept, its URL without the query too.
            let ApiError::Transport { source, .. } = &err else {
                panic!("{err:?}")
            };
            assert!(source.0.is_connect(), "{err:?}");
            assert!(std::error::Error::source(&err).is_some());
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
    fn raw_server(count: usize, response: impl Into<String>) -> (String, JoinHandle<Vec<String>>) {
        let response = response.into();
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

    /// What a `holding_server` saw: when each request arrived, and the most it held at once.
    #[derive(Default)]
    struct Seen {
        arrivals: Vec<std::time::Instant>,
        held: usize,
        most_held: usize,
    }

    /// A service that takes any number of connections at once, holds each request `hold`, then
    /// answers it `answer(its index)`.
    fn holding_server(
        hold: Duration,
        answer: impl Fn(usize) -> String + Send + Sync + 'static,
    ) -> (String, std::sync::Arc<parking_lot::Mutex<Seen>>) {
        use parking_lot::Mutex;
        use std::sync::Arc;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let answer = Arc::new(answer);
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let (mut stream, log, answer) = (stream.unwrap(), log.clone(), answer.clone());
                std::thread::spawn(move || {
                    read_request(&mut stream);
                    let index = {
                        let mut seen = log.lock();
                        seen.arrivals.push(std::time::Instant::now());
                        seen.held += 1;
                        seen.most_held = seen.most_held.max(seen.held);
                        seen.arrivals.len() - 1
                    };
                    std::thread::sleep(hold);
                    log.lock().held -= 1;
                    let _ = stream.write_all(answer(index).as_bytes());
                });
            }
        });
        (url, seen)
    }

    const UNAVAILABLE: &str =
        "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

    #[tokio::test]
    async fn while_the_service_fails_one_call_at_a_time_goes_out() {
        let (url, seen) = holding_server(Duration::from_millis(100), |_| UNAVAILABLE.into());
        let api = std::sync::Arc::new(api(&url, false));
        assert!(api.delete(1, 1).await.unwrap_err().is_transient());
        let calls: Vec<_> = (0..4)
            .map(|_| {
                let api = api.clone();
                tokio::spawn(async move { api.delete(1, 1).await })
            })
            .collect();
        for call in calls {
            assert!(call.await.unwrap().unwrap_err().is_transient());
        }
        let seen = seen.lock();
        assert_eq!((seen.arrivals.len(), seen.most_held), (5, 1));
    }

    #[tokio::test]
    async fn retry_after_holds_back_every_call_until_the_time_it_names() {
        // Seconds (counted from the answer), or an HTTP date (whole seconds: at least 2 s after
        // it is written, however long the first call then takes on a loaded machine).
        for (status, as_date) in [
            ("503 Service Unavailable", false),
            ("429 Too Many Requests", true),
        ] {
            let date_written = std::time::Instant::now();
            let retry_after = match as_date {
                false => "2".to_string(),
                true => (chrono::Utc::now() + chrono::Duration::seconds(3))
                    .format("%a, %d %b %Y %H:%M:%S GMT")
                    .to_string(),
            };
            let (url, seen) = holding_server(Duration::ZERO, move |index| match index {
                0 => format!(
                    "HTTP/1.1 {status}\r\nRetry-After: {retry_after}\r\nConnection: close\r\n\
                     Content-Length: 0\r\n\r\n"
                ),
                _ => OK_CLOSE.into(),
            });
            let api = api(&url, false);
            assert!(api.delete(1, 1).await.unwrap_err().is_transient());
            api.delete(1, 2).await.unwrap();
            let arrivals = seen.lock().arrivals.clone();
            let held_from = match as_date {
                false => arrivals[0],
                true => date_written,
            };
            assert!(
                arrivals[1] - held_from >= Duration::from_secs(2),
                "{status}: {:?}",
                arrivals[1] - held_from
            );
        }
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

    /// Answers outside the contract, each to the create of `photos/a.jpg`.
    #[tokio::test]
    async fn answers_outside_the_contract_are_transient_and_name_the_fault() {
        let answer = |status: &str, body: &str| {
            format!("HTTP/1.1 {status}\r\nConnection: close\r\n\r\n{body}")
        };
        let record = |media_id: MediaId, media_path: &str| {
            let time = "2026-11-26T18:20:00.000Z";
            serde_json::json!({
                "media_id": media_id, "media_path": media_path, "file_hash": "00".repeat(32),
                "file_size": 1, "ctime": time, "mtime": time, "last_updated_user_id": 1,
                "last_updated_device_id": 1, "last_updated": time, "is_deleted": false,
            })
            .to_string()
        };
        let too_long = format!(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            BODY_MAX_BYTES + 1
        );
        let cases = [
            (
                answer("409 Conflict", &record(4, "victim.jpg")),
                "409 names another path",
            ),
            (answer("200 OK", r#"{"media_id":0}"#), "media_id 0"),
            (answer("200 OK", r#"{"media_id":-5}"#), "media_id -5"),
            (
                answer("409 Conflict", &record(0, "photos/a.jpg")),
                "media_id 0",
            ),
            (too_long, "larger than 1 MiB"),
        ];
        for (response, fault) in cases {
            let (url, server) = raw_server(1, response.clone());
            let err = api(&url, false).create(1, &new_media()).await.unwrap_err();
            assert!(
                matches!(&err, ApiError::Transient(message) if message.contains(fault)),
                "{response:?}: {err:?}"
            );
            server.join().unwrap();
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

    /// A call taken whole and then met with silence, its connection held open (as by a
    /// service stopped, or whose reset never reached us), fails at the answer timeout and not
    /// at the end of the whole call's.
    #[tokio::test]
    async fn a_call_taken_and_never_answered_fails_at_the_answer_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (release, released) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let request = read_request(&mut stream);
            // Holds the connection open, unanswered, until the client has given up.
            let _ = released.recv();
            drop(stream);
            request
        });
        let timeouts = Timeouts {
            answer: Duration::from_secs(1),
            request: Duration::from_secs(30),
            ..Timeouts::default()
        };
        let api = HttpApi::new(&url, keys(false), timeouts).unwrap();
        let err = api.current_device().await.unwrap_err();
        release.send(()).unwrap();
        assert_eq!(
            request_line(&server.join().unwrap()),
            "POST /device/1/current HTTP/1.1"
        );
        assert!(
            matches!(&err, ApiError::Transient(message)
                if message.contains("gave no answer within 1 s")),
            "{err:?}"
        );
    }
}
