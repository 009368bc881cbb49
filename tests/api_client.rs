//! `HttpApi` against the real `maxlofs emulator` over loopback: every call, every answer class.
//! (Truncated JSON from a raw server is covered by the unit tests in `src/api/http.rs`.)

mod common;

use maxlofs_api::http::{HttpApi, Timeouts};
use maxlofs_api::{ApiError, CreateOutcome, Keys, MediaApi, MediaState, NewMedia, SecretKey};
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

const DEVICE_KEY: &str = "demo-device-key";
const USER_KEY: &str = "demo-user-key";
const GRANT: u64 = 1;

/// A running emulator, killed when dropped.
struct Emulator {
    child: Child,
    url: String,
    /// Kept open so that the emulator never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

impl Emulator {
    fn start(extra_args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_maxlofs"))
            .args(["emulator", "--listen", "127.0.0.1:0"])
            .args(extra_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the emulator");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from the emulator: {line:?}"))
            .to_string();
        Emulator {
            child,
            url,
            _stdout: stdout,
        }
    }

    fn api(&self, keys: Keys) -> HttpApi {
        HttpApi::new(&self.url, keys, Timeouts::default()).unwrap()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keys(device: &str, user: Option<&str>) -> Keys {
    Keys {
        device: SecretKey::new(device),
        user: user.map(SecretKey::new),
    }
}

fn device_keys() -> Keys {
    keys(DEVICE_KEY, None)
}

fn state(byte: u8, size: u64) -> MediaState {
    MediaState {
        file_hash: hex::encode([byte; 32]),
        file_size: size,
        ctime: "2026-11-26T18:20:00.123Z".into(),
        mtime: "2026-11-26T18:19:00.000Z".into(),
    }
}

fn media(path: &str, state: MediaState) -> NewMedia {
    NewMedia {
        media_path: path.into(),
        state,
    }
}

#[tokio::test]
async fn create_conflict_update_delete_round_trip() {
    let emulator = Emulator::start(&[]);
    let api = emulator.api(device_keys());

    let CreateOutcome::Created(id) = api
        .create(GRANT, &media("a/b.jpg", state(1, 10)))
        .await
        .unwrap()
    else {
        panic!("first create must create");
    };
    let conflict = |outcome: CreateOutcome| match outcome {
        CreateOutcome::Conflict(record) => record,
        other => panic!("expected a 409 with the record, got {other:?}"),
    };
    let record = conflict(
        api.create(GRANT, &media("a/b.jpg", state(2, 20)))
            .await
            .unwrap(),
    );
    assert_eq!(
        (record.media_id, record.media_path.as_str()),
        (id, "a/b.jpg")
    );
    assert_eq!(
        record.state(),
        state(1, 10),
        "a 409 carries the current state"
    );
    assert!(!record.is_deleted);

    api.update(GRANT, id, &state(3, 30)).await.unwrap();
    let record = conflict(
        api.create(GRANT, &media("a/b.jpg", state(1, 10)))
            .await
            .unwrap(),
    );
    assert_eq!(record.state(), state(3, 30));

    api.delete(GRANT, id).await.unwrap();
    api.delete(GRANT, id).await.unwrap();
    let record = conflict(
        api.create(GRANT, &media("a/b.jpg", state(1, 10)))
            .await
            .unwrap(),
    );
    assert!(record.is_deleted, "a 409 may carry a deleted record");

    api.update(GRANT, id, &state(4, 40)).await.unwrap();
    let record = conflict(
        api.create(GRANT, &media("a/b.jpg", state(1, 10)))
            .await
            .unwrap(),
    );
    assert!(!record.is_deleted, "update undeletes");
    assert_eq!(record.state(), state(4, 40));
}

#[tokio::test]
async fn merged_parallel_creates_answer_200_with_the_existing_id() {
    let emulator = Emulator::start(&["--merge-parallel-creates"]);
    let api = emulator.api(device_keys());
    let first = api.create(GRANT, &media("x", state(1, 1))).await.unwrap();
    let second = api.create(GRANT, &media("x", state(2, 2))).await.unwrap();
    assert!(matches!(first, CreateOutcome::Created(_)));
    assert_eq!(first, second);
}

#[tokio::test]
async fn device_and_grants() {
    let emulator = Emulator::start(&["--grant", "1", "--grant", "7"]);
    let api = emulator.api(device_keys());
    let device = api.current_device().await.unwrap();
    assert!(!device.is_disabled);
    let grants = api.media_grants().await.unwrap();
    let ids: Vec<&str> = grants
        .media_grant_list
        .iter()
        .map(|grant| grant.media_grant_id.as_str())
        .collect();
    assert_eq!(ids, ["1", "7"]);
}

#[tokio::test]
async fn unknown_ids_and_grants_are_not_found() {
    let emulator = Emulator::start(&[]);
    let api = emulator.api(device_keys());
    assert_eq!(
        api.create(99, &media("a", state(1, 1))).await,
        Err(ApiError::NotFound)
    );
    assert_eq!(
        api.update(GRANT, 123_456, &state(1, 1)).await,
        Err(ApiError::NotFound)
    );
    assert_eq!(api.delete(GRANT, 123_456).await, Err(ApiError::NotFound));
    assert_eq!(api.delete(99, 1).await, Err(ApiError::NotFound));
}

#[tokio::test]
async fn a_refused_key_is_unauthorized_until_the_keys_are_replaced() {
    let emulator = Emulator::start(&[]);
    let api = emulator.api(keys("wrong-device-key", Some("wrong-user-key")));
    assert_eq!(
        api.create(GRANT, &media("a", state(1, 1))).await,
        Err(ApiError::Unauthorized)
    );
    assert_eq!(
        api.update(GRANT, 1, &state(1, 1)).await,
        Err(ApiError::Unauthorized)
    );
    assert_eq!(api.delete(GRANT, 1).await, Err(ApiError::Unauthorized));
    assert_eq!(api.current_device().await, Err(ApiError::Unauthorized));
    assert_eq!(api.media_grants().await, Err(ApiError::Unauthorized));

    api.set_keys(device_keys());
    assert!(api.current_device().await.is_ok());
}

#[tokio::test]
async fn strict_delete_auth_needs_the_user_key() {
    let emulator = Emulator::start(&["--strict-delete-auth"]);
    let api = emulator.api(device_keys());
    let CreateOutcome::Created(id) = api.create(GRANT, &media("a", state(1, 1))).await.unwrap()
    else {
        panic!("first create must create");
    };
    assert_eq!(api.delete(GRANT, id).await, Err(ApiError::Unauthorized));
    api.set_keys(keys(DEVICE_KEY, Some(USER_KEY)));
    api.delete(GRANT, id).await.unwrap();
}

#[tokio::test]
async fn bad_requests_carry_the_service_message() {
    let emulator = Emulator::start(&[]);
    let api = emulator.api(device_keys());
    let mut bad_hash = state(1, 1);
    bad_hash.file_hash = "not-a-hash".into();
    assert_eq!(
        api.create(GRANT, &media("a", bad_hash)).await,
        Err(ApiError::BadRequest {
            status: 400,
            message: "file_hash: must be 64 lowercase hexadecimal characters".into()
        })
    );
    match api.create(GRANT, &media("../a", state(1, 1))).await {
        Err(ApiError::BadRequest {
            status: 400,
            message,
        }) => {
            assert!(message.starts_with("media_path: "), "{message}")
        }
        other => panic!("expected a 400, got {other:?}"),
    }
}

async fn assert_all_calls_transient(api: &HttpApi) {
    let errors = [
        api.create(GRANT, &media("a", state(1, 1))).await.map(drop),
        api.update(GRANT, 1, &state(1, 1)).await,
        api.delete(GRANT, 1).await,
        api.current_device().await.map(drop),
        api.media_grants().await.map(drop),
    ];
    for result in errors {
        let err = result.unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        assert!(!format!("{err:?}").contains(DEVICE_KEY), "{err:?}");
    }
}

#[tokio::test]
async fn server_failures_are_transient() {
    let emulator = Emulator::start(&["--fail-rate", "1.0"]);
    let api = emulator.api(device_keys());
    assert_all_calls_transient(&api).await;
    let err = api.current_device().await.unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
}

#[tokio::test]
async fn dropped_connections_are_transient() {
    let emulator = Emulator::start(&["--drop-rate", "1.0"]);
    assert_all_calls_transient(&emulator.api(device_keys())).await;
}

#[tokio::test]
async fn a_dead_port_is_transient() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let api = HttpApi::new(&url, device_keys(), Timeouts::default()).unwrap();
    assert_all_calls_transient(&api).await;
}

#[tokio::test]
async fn a_slow_answer_times_out_as_transient() {
    let emulator = Emulator::start(&["--latency-ms", "2000"]);
    let timeouts = Timeouts {
        connect: Duration::from_secs(5),
        answer: Duration::from_millis(200),
        request: Duration::from_millis(200),
    };
    let api = HttpApi::new(&emulator.url, device_keys(), timeouts).unwrap();
    let err = api.current_device().await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
}

/// The process's resident memory, from /proc/self/status.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .and_then(|value| value.trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

/// Answers one request with a 200 whose body (no Content-Length: it ends at close) goes on for
/// `total` bytes of JSON white space, or until the client hangs up. Hands back the bytes sent.
fn endless_answer(total: usize) -> (String, std::thread::JoinHandle<usize>) {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        // The answer does not depend on the request.
        common::http::read_request(&stream).expect("a request");
        stream
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n",
            )
            .unwrap();
        // A client that neither reads nor hangs up ends the answer too.
        stream
            .set_write_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let block = vec![b' '; 64 << 10];
        let mut sent = 0;
        while sent < total && stream.write_all(&block).is_ok() {
            sent += block.len();
        }
        sent
    });
    (url, server)
}

// Multi-threaded: the client's connection task must run (and hang up) while this thread waits
// for the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_without_end_is_cut_off_at_1_mib() {
    // 512 MiB: read whole, as the client once did, it would take the time and memory this test
    // forbids.
    let (url, server) = endless_answer(512 << 20);
    let api = HttpApi::new(&url, device_keys(), Timeouts::default()).unwrap();
    let before = resident_bytes();
    let started = std::time::Instant::now();
    let err = api.current_device().await.unwrap_err();
    let elapsed = started.elapsed();
    let grown = resident_bytes().saturating_sub(before);
    assert_eq!(err, ApiError::Transient("answer larger than 1 MiB".into()));
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    assert!(grown < 50 << 20, "resident memory grew by {grown} bytes");
    drop(api);
    let sent = server.join().unwrap();
    assert!(sent < 512 << 20, "the client read all {sent} bytes");
}
