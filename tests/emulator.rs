//! `maxlofs emulator` driven over loopback: the real binary, real HTTP.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const DEVICE_KEY: &str = "demo-device-key";
const USER_KEY: &str = "demo-user-key";

/// A running emulator; killed when dropped.
struct Emulator {
    child: Child,
    stdout: BufReader<ChildStdout>,
    base: String,
    client: reqwest::Client,
}

impl Emulator {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_maxlofs"))
            .args(["emulator", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("the emulator starts");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let base = line
            .strip_prefix("listening on ")
            .and_then(|rest| rest.strip_suffix('\n'))
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        assert!(base.starts_with("http://127.0.0.1:") && !base.ends_with(":0"));
        Emulator {
            child,
            stdout,
            base,
            client: reqwest::Client::new(),
        }
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base))
    }

    /// Sends and answers the status and the JSON body (`null` if the body is not JSON).
    async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.expect("an answer");
        let status = response.status();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.request(Method::POST, path).json(&body))
            .await
    }

    async fn delete(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.request(Method::DELETE, path).json(&body))
            .await
    }

    /// Creates `path` in grant 1 with the default device key and answers its media_id.
    async fn create(&self, path: &str) -> i64 {
        let (status, body) = self.post(CREATE, create_body(path, 1)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["media_id"].as_i64().unwrap()
    }

    async fn records(&self, grant: u64) -> Vec<Value> {
        let (status, body) = self
            .send(self.request(
                Method::GET,
                &format!("/_emulator/media_grant/{grant}/media"),
            ))
            .await;
        assert_eq!(status, StatusCode::OK);
        body["media_list"].as_array().unwrap().clone()
    }

    async fn stats(&self) -> Value {
        self.send(self.request(Method::GET, "/_emulator/stats"))
            .await
            .1
    }

    /// Stops the emulator and answers what it wrote to stdout after its first line.
    fn stop(mut self) -> String {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        rest
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const CREATE: &str = "/device/1/media_grant/1/media";

fn media(id: i64) -> String {
    format!("/device/1/media_grant/1/media/{id}")
}

/// A file_hash: 64 lowercase hex characters.
fn hash(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn state_body(n: u8) -> Value {
    json!({
        "device_session_key": DEVICE_KEY,
        "file_hash": hash(n),
        "file_size": u64::from(n) * 100,
        "ctime": "2026-11-26T18:20:00.123Z",
        "mtime": "2026-11-26T18:21:00.000Z",
    })
}

fn create_body(path: &str, n: u8) -> Value {
    let mut body = state_body(n);
    body["media_path"] = json!(path);
    body
}

fn with(mut body: Value, field: &str, value: Value) -> Value {
    body[field] = value;
    body
}

fn without(mut body: Value, field: &str) -> Value {
    body.as_object_mut().unwrap().remove(field);
    body
}

#[tokio::test]
async fn create_conflict_update_and_delete_keep_full_records() {
    let emulator = Emulator::start(&[]);
    let (status, created) = emulator.post(CREATE, create_body("photos/a.jpg", 1)).await;
    assert_eq!(status, StatusCode::OK);
    let id = created["media_id"].as_i64().unwrap();

    // A second create of the path: 409 with the full current record, unchanged.
    let (status, record) = emulator.post(CREATE, create_body("photos/a.jpg", 2)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(record["media_id"], id);
    assert_eq!(record["media_path"], "photos/a.jpg");
    assert_eq!(record["file_hash"], hash(1));
    assert_eq!(record["file_size"], 100);
    assert_eq!(record["ctime"], "2026-11-26T18:20:00.123Z");
    assert_eq!(record["mtime"], "2026-11-26T18:21:00.000Z");
    assert_eq!(record["last_updated_device_id"], 1);
    assert_eq!(record["last_updated_user_id"], 1);
    assert!(
        maxlofs_api::contract::parse_iso8601(record["last_updated"].as_str().unwrap()).is_some()
    );
    assert_eq!(record["is_deleted"], false);
    assert_eq!(emulator.records(1).await, vec![record.clone()]);

    // Update changes the content.
    let (status, _) = emulator.post(&media(id), state_body(3)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(emulator.records(1).await[0]["file_hash"], hash(3));

    // Delete is soft and idempotent; the user key may be in the query string.
    let delete = format!("{}?user_session_key={USER_KEY}", media(id));
    for _ in 0..2 {
        let (status, _) = emulator.delete(&delete, json!({})).await;
        assert_eq!(status, StatusCode::OK);
    }
    let deleted = emulator.records(1).await.remove(0);
    assert_eq!(deleted["is_deleted"], true);
    assert_eq!(deleted["last_updated_device_id"], Value::Null);
    assert_eq!(deleted["file_hash"], hash(3));

    // Creating a deleted path conflicts with is_deleted; update undeletes it.
    let (status, record) = emulator.post(CREATE, create_body("photos/a.jpg", 4)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(record["is_deleted"], true);
    let (status, _) = emulator.post(&media(id), state_body(5)).await;
    assert_eq!(status, StatusCode::OK);
    let undeleted = emulator.records(1).await.remove(0);
    assert_eq!(undeleted["is_deleted"], false);
    assert_eq!(undeleted["file_hash"], hash(5));

    // Inspection lists by media_id.
    let second = emulator.create("photos/b.jpg").await;
    assert!(second > id);
    let ids: Vec<_> = emulator
        .records(1)
        .await
        .iter()
        .map(|r| r["media_id"].clone())
        .collect();
    assert_eq!(ids, [json!(id), json!(second)]);

    assert_eq!(emulator.stop(), "", "nothing but the first line on stdout");
}

#[tokio::test]
async fn keys_are_read_from_the_query_string_a_json_body_or_a_form() {
    let emulator = Emulator::start(&[]);
    // JSON body.
    emulator.create("json").await;
    // Query string, JSON body without a key.
    let body = without(create_body("query", 1), "device_session_key");
    let path = format!("{CREATE}?device_session_key={DEVICE_KEY}");
    assert_eq!(emulator.post(&path, body).await.0, StatusCode::OK);
    // Form body, numbers as text.
    let form = [
        ("device_session_key", DEVICE_KEY.to_string()),
        ("media_path", "form".into()),
        ("file_hash", hash(1)),
        ("file_size", "42".into()),
        ("ctime", "2026-11-26T18:20:00.000Z".into()),
        ("mtime", "2026-11-26T18:20:00.000Z".into()),
    ];
    let (status, _) = emulator
        .send(emulator.request(Method::POST, CREATE).form(&form))
        .await;
    assert_eq!(status, StatusCode::OK);
    let records = emulator.records(1).await;
    assert_eq!(records.len(), 3);
    assert_eq!(records[2]["file_size"], 42);

    // A form delete with the user key, and the other calls with each placement.
    let id = records[0]["media_id"].as_i64().unwrap();
    let (status, _) = emulator
        .send(
            emulator
                .request(Method::DELETE, &media(id))
                .form(&[("user_session_key", USER_KEY)]),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    for call in ["/device/1/current", "/device/1/media_grant"] {
        let in_query = format!("{call}?device_session_key={DEVICE_KEY}");
        assert_eq!(emulator.post(&in_query, json!({})).await.0, StatusCode::OK);
        let in_body = json!({ "device_session_key": DEVICE_KEY });
        assert_eq!(emulator.post(call, in_body).await.0, StatusCode::OK);
        let (status, _) = emulator
            .send(
                emulator
                    .request(Method::POST, call)
                    .form(&[("device_session_key", DEVICE_KEY)]),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
}

#[tokio::test]
async fn wrong_missing_or_revoked_keys_answer_403() {
    let emulator = Emulator::start(&["--device-key", "dev-a", "--device-key", "dev-b"]);
    let id = {
        let (status, body) = emulator
            .post(
                CREATE,
                with(create_body("x", 1), "device_session_key", json!("dev-a")),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        body["media_id"].as_i64().unwrap()
    };
    let wrong = create_body("y", 1); // demo-device-key is not accepted here
    let missing = without(create_body("y", 1), "device_session_key");
    let user_key = with(missing.clone(), "user_session_key", json!(USER_KEY));
    for body in [&wrong, &missing, &user_key] {
        let (status, answer) = emulator.post(CREATE, body.clone()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(answer["error"].is_string());
        let update = with(body.clone(), "media_path", Value::Null);
        assert_eq!(
            emulator.post(&media(id), update).await.0,
            StatusCode::FORBIDDEN
        );
    }
    let (status, _) = emulator
        .delete(&media(id), json!({"user_session_key": "nope"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for call in ["/device/1/current", "/device/1/media_grant"] {
        assert_eq!(
            emulator.post(call, json!({})).await.0,
            StatusCode::FORBIDDEN
        );
    }

    // Revoked mid-run: dev-b keeps working, dev-a is refused from now on.
    let current =
        |key: &str| emulator.post("/device/1/current", json!({ "device_session_key": key }));
    let (status, device) = current("dev-b").await;
    assert_eq!(
        (status, device["device_id"].clone()),
        (StatusCode::OK, json!(2))
    );
    let (status, _) = emulator
        .post("/_emulator/revoke-key", json!({"key": "dev-a"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(current("dev-a").await.0, StatusCode::FORBIDDEN);
    let update = with(state_body(2), "device_session_key", json!("dev-a"));
    assert_eq!(
        emulator.post(&media(id), update).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(current("dev-b").await.0, StatusCode::OK);
    assert_eq!(
        emulator.records(1).await[0]["file_hash"],
        hash(1),
        "refused calls change nothing"
    );
}

#[tokio::test]
async fn unknown_grants_and_media_answer_404() {
    let emulator = Emulator::start(&["--grant", "1", "--grant", "2"]);
    let id = emulator.create("x").await;
    let cases = [
        (
            "/device/1/media_grant/3/media".to_string(),
            create_body("x", 1),
        ),
        (
            "/device/1/media_grant/abc/media".to_string(),
            create_body("x", 1),
        ),
        (media(id + 1), state_body(1)),
        (
            "/device/1/media_grant/1/media/abc".to_string(),
            state_body(1),
        ),
        // A media_id of grant 1 is unknown in grant 2.
        (format!("/device/1/media_grant/2/media/{id}"), state_body(1)),
        (format!("/device/1/media_grant/3/media/{id}"), state_body(1)),
    ];
    for (path, body) in cases {
        let (status, answer) = emulator.post(&path, body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(answer["error"].is_string(), "{path}");
    }
    let user = json!({ "user_session_key": USER_KEY });
    assert_eq!(
        emulator.delete(&media(id + 1), user.clone()).await.0,
        StatusCode::NOT_FOUND
    );
    let other_grant = format!("/device/1/media_grant/2/media/{id}");
    assert_eq!(
        emulator.delete(&other_grant, user).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, _) = emulator
        .send(emulator.request(Method::GET, "/_emulator/media_grant/3/media"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(emulator.records(1).await[0]["is_deleted"], false);
}

#[tokio::test]
async fn bad_fields_answer_400_naming_the_field() {
    let emulator = Emulator::start(&[]);
    let good = create_body("ok", 1);
    let cases = [
        ("media_path", without(good.clone(), "media_path")),
        ("media_path", with(good.clone(), "media_path", json!(7))),
        ("media_path", with(good.clone(), "media_path", json!(""))),
        (
            "media_path",
            with(good.clone(), "media_path", json!("/abs")),
        ),
        (
            "media_path",
            with(good.clone(), "media_path", json!("a/../b")),
        ),
        ("file_hash", without(good.clone(), "file_hash")),
        (
            "file_hash",
            with(good.clone(), "file_hash", json!(hash(0xab).to_uppercase())),
        ),
        (
            "file_hash",
            with(good.clone(), "file_hash", json!(&hash(1)[2..])),
        ),
        (
            "file_hash",
            with(good.clone(), "file_hash", json!("z".repeat(64))),
        ),
        ("file_size", without(good.clone(), "file_size")),
        ("file_size", with(good.clone(), "file_size", json!(-1))),
        ("file_size", with(good.clone(), "file_size", json!(1.5))),
        ("file_size", with(good.clone(), "file_size", json!("12"))),
        ("ctime", without(good.clone(), "ctime")),
        ("ctime", with(good.clone(), "ctime", json!("yesterday"))),
        (
            "mtime",
            with(good.clone(), "mtime", json!("2026-11-26 18:20")),
        ),
        ("mtime", with(good.clone(), "mtime", json!(1_700_000_000))),
    ];
    for (field, body) in &cases {
        let (status, answer) = emulator.post(CREATE, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer["field"], *field, "{body} -> {answer}");
        let message = answer["error"].as_str().unwrap();
        assert!(message.starts_with(&format!("{field}: ")), "{message}");
    }
    let (_, answer) = emulator
        .post(CREATE, with(good.clone(), "file_size", json!(-1)))
        .await;
    assert_eq!(
        answer,
        json!({"error": "file_size: must be a non-negative integer", "field": "file_size"})
    );
    assert!(emulator.records(1).await.is_empty(), "nothing was created");

    // The same rules for update.
    let id = emulator.create("ok").await;
    for (field, body) in cases.iter().filter(|(field, _)| *field != "media_path") {
        let (status, answer) = emulator.post(&media(id), body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer["field"], *field);
    }
    assert_eq!(
        emulator.records(1).await[0]["file_hash"],
        hash(1),
        "nothing was updated"
    );

    // A body that is not a JSON object, with the key in the query string.
    let keyed = format!("{CREATE}?device_session_key={DEVICE_KEY}");
    for raw in ["{not json", "[1, 2]"] {
        let request = emulator
            .request(Method::POST, &keyed)
            .header("content-type", "application/json")
            .body(raw);
        let (status, answer) = emulator.send(request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(answer["field"], "body");
    }
    // A form's size must be a non-negative integer too.
    let form = [
        ("device_session_key", DEVICE_KEY.to_string()),
        ("file_hash", hash(1)),
        ("file_size", "-5".into()),
        ("ctime", "2026-11-26T18:20:00.000Z".into()),
        ("mtime", "2026-11-26T18:20:00.000Z".into()),
    ];
    let (status, answer) = emulator
        .send(emulator.request(Method::POST, &media(id)).form(&form))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["field"], "file_size");
}

#[tokio::test]
async fn status_precedence_is_403_then_404_then_400() {
    let emulator = Emulator::start(&[]);
    let bad = with(create_body("x", 1), "file_size", json!(-1));
    let wrong_key = with(bad.clone(), "device_session_key", json!("nope"));
    let unknown_grant = "/device/1/media_grant/9/media";
    assert_eq!(
        emulator.post(unknown_grant, wrong_key).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        emulator.post(unknown_grant, bad.clone()).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        emulator.post(&media(1), bad.clone()).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(emulator.post(CREATE, bad).await.0, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn delete_accepts_a_device_key_unless_strict() {
    for strict in [false, true] {
        let emulator = Emulator::start(if strict {
            &["--strict-delete-auth"]
        } else {
            &[]
        });
        let id = emulator.create("x").await;
        let device = json!({ "device_session_key": DEVICE_KEY });
        let expected = if strict {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::OK
        };
        assert_eq!(
            emulator.delete(&media(id), device).await.0,
            expected,
            "strict: {strict}"
        );
        let user = json!({ "user_session_key": USER_KEY });
        assert_eq!(emulator.delete(&media(id), user).await.0, StatusCode::OK);
        assert_eq!(emulator.records(1).await[0]["is_deleted"], true);
    }
}

#[tokio::test]
async fn merge_mode_answers_200_with_the_same_id_and_updates() {
    let emulator = Emulator::start(&["--merge-parallel-creates"]);
    let id = emulator.create("x").await;
    let user = json!({ "user_session_key": USER_KEY });
    assert_eq!(emulator.delete(&media(id), user).await.0, StatusCode::OK);
    let (status, body) = emulator.post(CREATE, create_body("x", 9)).await;
    assert_eq!((status, body), (StatusCode::OK, json!({ "media_id": id })));
    let records = emulator.records(1).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["file_hash"], hash(9));
    assert_eq!(records[0]["is_deleted"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_creates_of_one_path_make_one_record() {
    for merge in [false, true] {
        let emulator = std::sync::Arc::new(Emulator::start(if merge {
            &["--merge-parallel-creates"]
        } else {
            &[]
        }));
        let tasks: Vec<_> = (0..32)
            .map(|n| {
                let emulator = emulator.clone();
                tokio::spawn(async move { emulator.post(CREATE, create_body("same", n)).await })
            })
            .collect();
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        let records = emulator.records(1).await;
        assert_eq!(records.len(), 1, "merge: {merge}");
        let id = &records[0]["media_id"];
        let ok = answers
            .iter()
            .filter(|(status, _)| *status == StatusCode::OK)
            .count();
        assert_eq!(ok, if merge { 32 } else { 1 }, "merge: {merge}");
        for (status, body) in &answers {
            assert!(matches!(*status, StatusCode::OK | StatusCode::CONFLICT));
            assert_eq!(&body["media_id"], id);
        }
    }
}

#[tokio::test]
async fn records_and_the_id_sequence_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("emulator.db");
    let args = ["--db", db.to_str().unwrap()];
    let (before, last_id) = {
        let emulator = Emulator::start(&args);
        emulator.create("a").await;
        let b = emulator.create("b").await;
        let user = json!({ "user_session_key": USER_KEY });
        assert_eq!(emulator.delete(&media(b), user).await.0, StatusCode::OK);
        (emulator.records(1).await, b)
        // Dropping kills the process: no clean shutdown.
    };
    assert!(Path::new(&db).exists());
    let emulator = Emulator::start(&args);
    assert_eq!(emulator.records(1).await, before);
    let (status, record) = emulator.post(CREATE, create_body("b", 2)).await;
    assert_eq!(
        (status, record["is_deleted"].clone()),
        (StatusCode::CONFLICT, json!(true))
    );
    assert!(emulator.create("c").await > last_id, "ids continue");
}

#[tokio::test]
async fn fail_rate_one_answers_503_to_every_api_call() {
    let emulator = Emulator::start(&["--fail-rate", "1.0"]);
    let calls = [
        (Method::POST, CREATE.to_string(), create_body("x", 1)),
        (Method::POST, media(1), state_body(1)),
        (
            Method::DELETE,
            media(1),
            json!({ "user_session_key": USER_KEY }),
        ),
        (Method::POST, "/device/1/current".into(), state_body(1)),
        (Method::POST, "/device/1/media_grant".into(), state_body(1)),
    ];
    for (method, path, body) in calls {
        let (status, _) = emulator
            .send(emulator.request(method, &path).json(&body))
            .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
    }
    // Inspection is never faulted, and the failed calls changed nothing.
    assert!(emulator.records(1).await.is_empty());
    let stats = emulator.stats().await;
    for call in ["create", "update", "delete", "current", "media_grant"] {
        assert_eq!(stats["calls"][call], json!({"503": 1}), "{stats}");
    }
}

#[tokio::test]
async fn the_fail_rate_is_changed_at_run_time() {
    let emulator = Emulator::start(&["--fail-rate", "1.0"]);
    let current = || emulator.request(Method::POST, "/device/1/current");
    let (status, _) = emulator.send(current().json(&state_body(1))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let set = |rate: Value| {
        emulator
            .request(Method::POST, "/_emulator/fail-rate")
            .json(&json!({ "fail_rate": rate }))
    };
    assert_eq!(
        emulator.send(set(json!(1.5))).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(emulator.send(set(json!(0))).await.0, StatusCode::OK);
    let (status, _) = emulator.send(current().json(&state_body(1))).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn drop_rate_one_closes_connections_without_an_answer() {
    let emulator = Emulator::start(&["--drop-rate", "1.0"]);
    for path in ["a", "b"] {
        let error = emulator
            .request(Method::POST, CREATE)
            .json(&create_body(path, 1))
            .send()
            .await
            .expect_err("a dropped connection, not an answer");
        assert!(error.status().is_none(), "{error}");
    }
    // The calls took effect; only their answers were lost.
    assert_eq!(emulator.records(1).await.len(), 2);
    let stats = emulator.stats().await;
    assert_eq!(stats["calls"]["create"], json!({"dropped": 2}));
    assert_eq!(stats["dropped"], 2);
}

#[tokio::test]
async fn latency_delays_every_api_answer() {
    let emulator = Emulator::start(&["--latency-ms", "300"]);
    let started = Instant::now();
    emulator.create("x").await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    let started = Instant::now();
    let current = json!({ "device_session_key": DEVICE_KEY });
    assert_eq!(
        emulator.post("/device/1/current", current).await.0,
        StatusCode::OK
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn stats_count_calls_by_endpoint_and_status_and_reset() {
    let emulator = Emulator::start(&[]);
    let id = emulator.create("x").await;
    emulator.post(CREATE, create_body("x", 1)).await;
    emulator.post(CREATE, create_body("y", 1)).await;
    emulator.post(&media(id), state_body(2)).await;
    emulator.post(&media(id + 10), state_body(2)).await;
    emulator.delete(&media(id), json!({})).await;
    emulator
        .post(
            "/device/1/media_grant",
            json!({ "device_session_key": DEVICE_KEY }),
        )
        .await;
    assert_eq!(
        emulator.stats().await,
        json!({
            "calls": {
                "create": {"200": 2, "409": 1},
                "update": {"200": 1, "404": 1},
                "delete": {"403": 1},
                "current": {},
                "media_grant": {"200": 1},
                "upload": {},
                "s3_object": {},
                "multipart": {},
                "multipart_complete": {},
                "download": {},
                "object_put": {},
                "part_put": {},
                "object_get": {}
            },
            "dropped": 0
        })
    );
    let (status, _) = emulator.post("/_emulator/stats/reset", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let stats = emulator.stats().await;
    assert_eq!(stats["calls"]["create"], json!({}));
    assert_eq!(stats["dropped"], 0);
}

#[tokio::test]
async fn current_and_media_grant_describe_the_device_and_grants() {
    let emulator = Emulator::start(&[
        "--device-key",
        "dev-a",
        "--device-key",
        "dev-b",
        "--grant",
        "1",
        "--grant",
        "7",
    ]);
    let (status, device) = emulator
        .post(
            "/device/1/current",
            json!({ "device_session_key": "dev-b" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(device["device_id"], 2);
    assert_eq!(device["user_id"], 2);
    assert_eq!(device["is_disabled"], false);
    assert!(device["device_name"].is_string() && device["user_name"].is_string());
    let (status, grants) = emulator
        .post(
            "/device/1/media_grant",
            json!({ "device_session_key": "dev-a", "version": 1 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(grants["is_device_disabled"], false);
    let list = grants["media_grant_list"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(
        list[1],
        json!({
            "media_grant_id": "7",
            "grant_name": "grant-7",
            "volume_id": 7,
            "prefix_path": "",
            "is_disabled": false,
            "volume_encryption_key": null
        })
    );
}

#[test]
fn bad_flags_are_refused() {
    let output = Command::new(env!("CARGO_BIN_EXE_maxlofs"))
        .args(["emulator", "--listen", "127.0.0.1:0", "--fail-rate", "1.5"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--fail-rate"));
}

/// Keys read from files are the accepted ones (in order: device 1, device 2), the demo keys are
/// not, and no key shows on the emulator's command line (`ps`).
#[tokio::test]
async fn keys_from_files_are_accepted_and_stay_off_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let devices = dir.path().join("device.keys");
    let users = dir.path().join("user.keys");
    std::fs::write(&devices, "file-dev-one\nfile-dev-two\n").unwrap();
    std::fs::write(&users, "file-user-one\n").unwrap();
    let emulator = Emulator::start(&[
        "--device-key-file",
        devices.to_str().unwrap(),
        "--user-key-file",
        users.to_str().unwrap(),
    ]);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", emulator.child.id())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(
        !cmdline.contains("file-dev") && !cmdline.contains("file-user"),
        "{cmdline}"
    );

    let (status, _) = emulator.post(CREATE, create_body("demo", 1)).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the demo key is still accepted"
    );
    let (status, body) = emulator
        .post(
            CREATE,
            with(
                create_body("x", 1),
                "device_session_key",
                json!("file-dev-two"),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = body["media_id"].as_i64().unwrap();
    let (status, _) = emulator
        .delete(&media(id), json!({"user_session_key": "file-user-one"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let record = &emulator.records(1).await[0];
    assert_eq!(record["is_deleted"], true);
    assert_eq!(record["last_updated_user_id"], 1);
}

#[test]
fn an_unreadable_or_empty_key_file_stops_the_emulator_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.keys");
    std::fs::write(&empty, "\n").unwrap();
    let missing = dir.path().join("missing.keys");
    for (file, reason) in [
        (&empty, "holds no key"),
        (&missing, "cannot read the key file"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_maxlofs"))
            .args(["emulator", "--listen", "127.0.0.1:0", "--device-key-file"])
            .arg(file)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(out.stdout.is_empty());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(reason), "{stderr}");
    }
}

/// The database (`--db`), its -wal and -shm files and the object store next to it are the
/// emulator's user's alone, whatever the umask it was started with (the tests' is 022).
#[tokio::test]
async fn the_database_and_object_store_are_created_for_its_user_alone() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("emulator.db");
    let emulator = Emulator::start(&["--db", db.to_str().unwrap()]);
    emulator.create("private.jpg").await;
    let mut seen = Vec::new();
    let mut folders = vec![dir.path().to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            assert_eq!(
                meta.permissions().mode() & 0o077,
                0,
                "{}: mode {:o}",
                path.display(),
                meta.permissions().mode()
            );
            if meta.is_dir() {
                folders.push(path.clone());
            }
            seen.push(path.strip_prefix(dir.path()).unwrap().to_path_buf());
        }
    }
    for made in [
        "emulator.db",
        "emulator.db-wal",
        "emulator.db-shm",
        "emulator.db.objects/signing.key",
    ] {
        assert!(
            seen.iter().any(|path| path == Path::new(made)),
            "{made}: {seen:?}"
        );
    }
    drop(emulator);
}
