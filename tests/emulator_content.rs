//! The emulator's content calls and its object store, driven over loopback: the real binary, real
//! HTTP, checked on the answers and on the bytes the emulator holds.

mod common;

use common::service::Emulator;
use maxlofs_api::content::{DownloadAnswer, MultipartAnswer, PartSpec, UploadAnswer, UploadItem};
use md5::Md5;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::ops::Deref;
use std::time::Duration;

const BUCKET: &str = "maxlo-emulator";
const MIB: usize = 1024 * 1024;

/// An emulator whose objects are in a temp folder removed with it: a killed emulator cannot
/// remove the temporary folder it makes without `--objects`.
struct Running {
    emulator: Emulator,
    _objects: tempfile::TempDir,
}

impl Deref for Running {
    type Target = Emulator;
    fn deref(&self) -> &Emulator {
        &self.emulator
    }
}

fn start(args: &[&str]) -> Running {
    let objects = tempfile::tempdir().unwrap();
    let mut args = args.to_vec();
    args.extend(["--objects", objects.path().to_str().unwrap()]);
    Running {
        emulator: Emulator::start(&args),
        _objects: objects,
    }
}

/// Byte i is i % 251, as in the hash test vectors of docs/contract.md.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// S3's ETag of a body: its MD5 in hex, in quotes.
fn etag_of(bytes: &[u8]) -> String {
    format!("\"{}\"", hex::encode(Md5::digest(bytes)))
}

/// A content call in grant 1 with the default device key.
fn call(emulator: &Emulator, name: &str, mut body: Value) -> (u16, Value) {
    body["device_session_key"] = json!("demo-device-key");
    emulator.post(&format!("/device/1/media_grant/1/{name}"), &body)
}

/// An answer of the object store.
struct S3Answer {
    status: u16,
    etag: Option<String>,
    body: Vec<u8>,
}

impl S3Answer {
    /// The `<Code>` of an XML error body.
    fn code(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        assert!(text.starts_with("<?xml"), "not an XML error: {text}");
        let start = text.find("<Code>").expect("a Code") + "<Code>".len();
        let end = text.find("</Code>").expect("a Code");
        text[start..end].to_string()
    }

    fn message(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let start = text.find("<Message>").expect("a Message") + "<Message>".len();
        let end = text.find("</Message>").expect("a Message");
        text[start..end].to_string()
    }
}

fn send(request: reqwest::blocking::RequestBuilder) -> S3Answer {
    send_answer(request.send().expect("an answer"))
}

fn put(url: &str, body: &[u8]) -> S3Answer {
    send(
        reqwest::blocking::Client::new()
            .put(url)
            .body(body.to_vec()),
    )
}

fn get(url: &str) -> S3Answer {
    send(reqwest::blocking::Client::new().get(url))
}

/// `upload` for one file; its one answer.
fn upload(emulator: &Emulator, content: &[u8]) -> UploadItem {
    let (status, body) = call(
        emulator,
        "upload",
        json!({"file_list": [{"file_hash": sha256_hex(content), "file_size": content.len()}]}),
    );
    assert_eq!(status, 200, "{body}");
    let mut answer: UploadAnswer = serde_json::from_value(body).unwrap();
    assert_eq!(answer.upload_disabled, None);
    assert_eq!(answer.upload_list.len(), 1);
    answer.upload_list.remove(0)
}

/// The signed PUT URL `upload` answers for content not held.
fn put_url(emulator: &Emulator, content: &[u8]) -> String {
    upload(emulator, content)
        .signed_opts
        .expect("signed_opts for content not held")
        .url
}

fn register(emulator: &Emulator, content: &[u8]) -> u16 {
    let (status, body) = call(
        emulator,
        "s3_object",
        json!({"s3_bucket_id": BUCKET, "file_hash": sha256_hex(content),
               "file_size": content.len()}),
    );
    assert!(matches!(status, 200 | 201 | 400), "{status} {body}");
    status
}

/// Upload, PUT and register: the whole path of a small file.
fn store_whole(emulator: &Emulator, content: &[u8]) -> String {
    let answer = put(&put_url(emulator, content), content);
    assert_eq!(answer.status, 200);
    assert_eq!(register(emulator, content), 201);
    sha256_hex(content)
}

/// `(file_hash, file_size)` of every held object.
fn held(emulator: &Emulator) -> Vec<(String, u64)> {
    emulator.get("/_emulator/objects")["object_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            assert_eq!(o["s3_bucket_id"], BUCKET);
            (
                o["file_hash"].as_str().unwrap().to_string(),
                o["file_size"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The bytes the emulator holds for a hash, or None (404).
fn held_bytes(emulator: &Emulator, file_hash: &str) -> Option<Vec<u8>> {
    let answer = get(&format!("{}/_emulator/objects/{file_hash}", emulator.url));
    match answer.status {
        200 => Some(answer.body),
        404 => None,
        other => panic!("GET object: {other}"),
    }
}

/// `POST OBJECT/corrupt` (OBJECT: an `/_emulator/objects/HASH` URL): the answer's status.
fn corrupt(object: &str) -> u16 {
    reqwest::blocking::Client::new()
        .post(format!("{object}/corrupt"))
        .send()
        .unwrap()
        .status()
        .as_u16()
}

fn stats_of(emulator: &Emulator, call: &str) -> Value {
    emulator.stats()["calls"][call].clone()
}

/// A file uploaded in parts: its content, Maxlo hash and File Hashing parts.
struct Multipart {
    content: Vec<u8>,
    file_hash: String,
    parts: Vec<PartSpec>,
}

impl Multipart {
    fn new(len: usize) -> Multipart {
        let content = pattern(len);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        std::fs::write(&path, &content).unwrap();
        let file_hash = maxlofs_api::hash::hash_file(&path).unwrap().to_hex();
        let part_size =
            maxlofs_api::hash::part_size(len as u64).expect("a multipart size") as usize;
        let parts = content
            .chunks(part_size)
            .zip(1..)
            .map(|(bytes, part_num)| PartSpec {
                part_num,
                part_size: bytes.len() as u64,
                part_hash: sha256_hex(bytes),
            })
            .collect();
        Multipart {
            content,
            file_hash,
            parts,
        }
    }

    fn part(&self, part_num: u64) -> &[u8] {
        let size = self.parts[0].part_size as usize;
        let start = (part_num as usize - 1) * size;
        &self.content[start..(start + size).min(self.content.len())]
    }

    fn request(&self) -> Value {
        json!({"file_size": self.content.len(), "file_hash": self.file_hash,
               "part_list": self.parts})
    }

    fn start(&self, emulator: &Emulator) -> MultipartAnswer {
        let (status, body) = call(emulator, "multipart", self.request());
        assert_eq!(status, 200, "{body}");
        let answer: MultipartAnswer = serde_json::from_value(body).unwrap();
        let numbers: Vec<_> = answer.signed_url_list.iter().map(|u| u.part_num).collect();
        assert_eq!(numbers, (1..=self.parts.len() as u64).collect::<Vec<_>>());
        answer
    }

    /// PUTs part `part_num` to its URL; answers its ETag.
    fn put_part(&self, answer: &MultipartAnswer, part_num: u64) -> String {
        let url = &answer.signed_url_list[part_num as usize - 1].url;
        let put = put(url, self.part(part_num));
        assert_eq!(put.status, 200, "{}", String::from_utf8_lossy(&put.body));
        let etag = put.etag.expect("an ETag");
        assert_eq!(etag, etag_of(self.part(part_num)));
        etag
    }

    fn complete(&self, emulator: &Emulator, upload_id: &str, part_list: Value) -> (u16, Value) {
        call(
            emulator,
            "multipart_complete",
            json!({"file_size": self.content.len(), "file_hash": self.file_hash,
                   "s3_bucket_id": BUCKET, "upload_id": upload_id, "part_list": part_list}),
        )
    }
}

/// S3's ETag of a multipart object: the MD5 of its parts' binary MD5s, `-` and the number of
/// parts, in quotes.
fn multipart_etag_of(file: &Multipart) -> String {
    let md5s: Vec<u8> = (1..=file.parts.len() as u64)
        .flat_map(|n| Md5::digest(file.part(n)).to_vec())
        .collect();
    format!(
        "\"{}-{}\"",
        hex::encode(Md5::digest(md5s)),
        file.parts.len()
    )
}

/// A ranged GET: the answer and its Content-Range.
fn get_range(url: &str, range: &str) -> (S3Answer, Option<String>) {
    let response = reqwest::blocking::Client::new()
        .get(url)
        .header("range", range)
        .send()
        .unwrap();
    let content_range = response
        .headers()
        .get("content-range")
        .map(|v| v.to_str().unwrap().to_string());
    (send_answer(response), content_range)
}

fn send_answer(response: reqwest::blocking::Response) -> S3Answer {
    S3Answer {
        status: response.status().as_u16(),
        etag: response
            .headers()
            .get("etag")
            .map(|v| v.to_str().unwrap().to_string()),
        body: response.bytes().unwrap().to_vec(),
    }
}

/// The signed download URL of a held object.
fn download_url(emulator: &Emulator, file_hash: &str) -> String {
    let (status, body) = call(emulator, "download", json!({"hash_list": [file_hash]}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["download_list"][0]["is_deleted"], false, "{body}");
    body["download_list"][0]["url"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Uploads `file` in parts and completes it.
fn store_in_parts(emulator: &Emulator, file: &Multipart) {
    let answer = file.start(emulator);
    let etags: Vec<String> = (1..=file.parts.len() as u64)
        .map(|n| file.put_part(&answer, n))
        .collect();
    let (status, body) = file.complete(emulator, &answer.upload_id, part_list(&etags));
    assert_eq!(status, 201, "{body}");
}

fn part_list(etags: &[String]) -> Value {
    json!(etags
        .iter()
        .zip(1..)
        .map(|(etag, part_num)| json!({"part_num": part_num, "etag": etag}))
        .collect::<Vec<_>>())
}

#[test]
fn a_small_file_goes_up_whole_is_registered_and_downloads() {
    let emulator = start(&[]);
    let content = pattern(1000);
    let file_hash = sha256_hex(&content);

    let item = upload(&emulator, &content);
    assert_eq!(
        (item.file_hash.as_str(), item.file_size),
        (file_hash.as_str(), 1000)
    );
    assert_eq!(item.skip_upload, None);
    assert_eq!(item.s3_bucket_id.as_deref(), Some(BUCKET));
    let opts = item.signed_opts.expect("signed_opts");
    assert_eq!(opts.method, "PUT");
    assert_eq!(opts.url, format!("{}{}", emulator.url, opts.path));
    assert_eq!(format!("http://{}", opts.host), emulator.url);
    assert_eq!(opts.headers["Content-Length"], "1000");

    let answer = put(&opts.url, &content);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.etag.as_deref(), Some(etag_of(&content).as_str()));
    // Not held until registered.
    assert!(held(&emulator).is_empty());
    assert_eq!(register(&emulator, &content), 201);
    assert_eq!(register(&emulator, &content), 200, "registered again");
    assert_eq!(held(&emulator), [(file_hash.clone(), 1000)]);
    assert_eq!(held_bytes(&emulator, &file_hash).unwrap(), content);

    // Held content is skipped.
    let again = upload(&emulator, &content);
    assert_eq!(again.skip_upload, Some(true));
    assert!(again.signed_opts.is_none());

    let absent = sha256_hex(b"never uploaded");
    let (status, body) = call(
        &emulator,
        "download",
        json!({"hash_list": [file_hash, absent]}),
    );
    assert_eq!(status, 200, "{body}");
    let answer: DownloadAnswer = serde_json::from_value(body).unwrap();
    let [present, missing] = &answer.download_list[..] else {
        panic!("two answers: {answer:?}");
    };
    assert_eq!(
        (
            present.file_hash.as_str(),
            present.file_size,
            present.chunk_size,
            present.is_deleted
        ),
        (file_hash.as_str(), 1000, 1000, false)
    );
    assert_eq!(get(present.url.as_ref().unwrap()).body, content);
    assert!(missing.is_deleted && missing.url.is_none());
    assert_eq!(missing.file_hash, absent);
}

#[test]
fn whole_put_refusals_are_s3_errors_and_store_nothing() {
    let emulator = start(&[]);
    let content = pattern(5000);
    let url = put_url(&emulator, &content);
    let refused = |answer: S3Answer, status: u16, code: &str| {
        assert_eq!((answer.status, answer.code().as_str()), (status, code));
    };

    // A changed URL: another hash in the path, a longer expiry, another length, no signature,
    // an added parameter, a changed signature.
    let other_hash = sha256_hex(b"other");
    let changed = [
        url.replace(&sha256_hex(&content), &other_hash),
        url.replace("X-Maxlo-Expires=", "X-Maxlo-Expires=9"),
        url.replace("X-Maxlo-Content-Length=5000", "X-Maxlo-Content-Length=4999"),
        url[..url.find("&X-Maxlo-Signature").unwrap()].to_string(),
        format!("{url}&extra=1"),
        {
            let mut tampered = url.clone();
            let last = tampered.pop().unwrap();
            tampered.push(if last == '0' { '1' } else { '0' });
            tampered
        },
    ];
    for changed in &changed {
        let answer = put(changed, &content[..]);
        assert_eq!(answer.status, 403, "{changed}");
        assert!(
            ["SignatureDoesNotMatch", "AccessDenied"].contains(&answer.code().as_str()),
            "{changed}"
        );
    }
    refused(put(&changed[0], &content), 403, "SignatureDoesNotMatch");
    // Another method.
    refused(get(&url), 403, "SignatureDoesNotMatch");
    // Another Content-Length (the length is signed).
    refused(put(&url, &content[..4999]), 403, "SignatureDoesNotMatch");
    let mut longer = content.clone();
    longer.push(0);
    refused(put(&url, &longer), 403, "SignatureDoesNotMatch");
    // No Content-Length at all: a chunked body.
    let chunked = reqwest::blocking::Body::new(std::io::Cursor::new(content.clone()));
    refused(
        send(reqwest::blocking::Client::new().put(&url).body(chunked)),
        411,
        "MissingContentLength",
    );
    // The right length, other bytes.
    let mut wrong = content.clone();
    wrong[17] ^= 1;
    refused(put(&url, &wrong), 400, "BadDigest");

    assert_eq!(register(&emulator, &content), 400, "nothing was stored");
    assert!(held(&emulator).is_empty());
    assert_eq!(
        stats_of(&emulator, "object_put"),
        json!({"403": changed.len() + 3, "411": 1, "400": 1})
    );
    // The untouched URL still works.
    assert_eq!(put(&url, &content).status, 200);
    assert_eq!(register(&emulator, &content), 201);
}

/// A body that stops for `pause` once `pause_at` of its bytes are read.
struct PausingBody {
    data: Vec<u8>,
    at: usize,
    pause_at: usize,
    pause: Duration,
}

impl Read for PausingBody {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.pause_at {
            std::thread::sleep(self.pause);
        }
        let end = if self.at < self.pause_at {
            self.pause_at
        } else {
            self.data.len()
        };
        let n = buf.len().min(end - self.at);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// As S3: a PUT whose body stops for longer than `--body-idle-secs` is refused (400
/// RequestTimeout) and stores nothing; a shorter pause is waited out.
#[test]
fn a_put_body_that_stops_too_long_is_refused() {
    let emulator = start(&["--body-idle-secs", "1"]);
    let content = pattern(300_000);
    let paused_put = |pause: Duration| {
        let body = PausingBody {
            data: content.clone(),
            at: 0,
            pause_at: 100_000,
            pause,
        };
        // The refusal may come while the rest is still being written: then the client sees the
        // connection end instead of the answer.
        reqwest::blocking::Client::new()
            .put(put_url(&emulator, &content))
            .body(reqwest::blocking::Body::sized(body, content.len() as u64))
            .send()
            .map(|response| response.status().as_u16())
    };
    assert!(!matches!(paused_put(Duration::from_millis(2500)), Ok(200)));
    assert_eq!(stats_of(&emulator, "object_put")["400"], 1);
    assert_eq!(register(&emulator, &content), 400, "nothing was stored");
    assert_eq!(paused_put(Duration::from_millis(300)).unwrap(), 200);
    assert_eq!(register(&emulator, &content), 201);
}

#[test]
fn signed_urls_expire() {
    let emulator = start(&["--url-ttl-secs", "60"]);
    let stored = pattern(10);
    store_whole(&emulator, &stored);
    let (_, body) = call(
        &emulator,
        "download",
        json!({"hash_list": [sha256_hex(&stored)]}),
    );
    let download_url = body["download_list"][0]["url"]
        .as_str()
        .unwrap()
        .to_string();
    let content = pattern(20);
    let url = put_url(&emulator, &content);
    // The control: not expired yet.
    assert_eq!(get(&download_url).status, 200);
    for refused in [
        json!({"advance_secs": -1}),
        json!({"advance_secs": 1.5}),
        json!({}),
    ] {
        assert_eq!(
            emulator.post("/_emulator/clock", &refused).0,
            400,
            "{refused}"
        );
    }
    // Expiry is in whole seconds: 61 s on, a 60 s link is past it.
    emulator.advance_clock(61);
    for answer in [put(&url, &content), get(&download_url)] {
        assert_eq!(answer.status, 403);
        assert_eq!(answer.code(), "AccessDenied");
        assert_eq!(answer.message(), "Request has expired");
    }
    assert_eq!(register(&emulator, &content), 400);
    // A fresh link works.
    assert_eq!(put(&put_url(&emulator, &content), &content).status, 200);
}

#[test]
fn a_large_file_goes_up_in_parts_in_any_order_and_is_assembled() {
    let emulator = start(&[]);
    // 3 parts of 8 MiB, 8 MiB and 1000 bytes.
    let file = Multipart::new(16 * MIB + 1000);
    assert_eq!(file.parts.len(), 3);

    // Over 16 MiB: no whole PUT, but the bucket for multipart_complete.
    let (status, body) = call(
        &emulator,
        "upload",
        json!({"file_list": [{"file_hash": file.file_hash, "file_size": file.content.len()}]}),
    );
    assert_eq!(status, 200);
    assert_eq!(
        body["upload_list"][0],
        json!({"file_hash": file.file_hash, "file_size": file.content.len(),
               "s3_bucket_id": BUCKET}),
        "no skip_upload and no signed_opts"
    );

    let answer = file.start(&emulator);
    let mut etags = vec![String::new(); 3];
    for part_num in [3, 1, 2] {
        etags[part_num as usize - 1] = file.put_part(&answer, part_num);
    }
    // Putting a part again replaces it.
    file.put_part(&answer, 2);
    assert!(held(&emulator).is_empty(), "not held before completion");
    let (status, body) = file.complete(&emulator, &answer.upload_id, part_list(&etags));
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        held(&emulator),
        [(file.file_hash.clone(), file.content.len() as u64)]
    );
    assert!(held_bytes(&emulator, &file.file_hash).unwrap() == file.content);

    // Held now: multipart and upload say skip.
    let (status, body) = call(&emulator, "multipart", file.request());
    assert_eq!((status, body), (409, json!({"skip_upload": true})));
    let (_, body) = call(
        &emulator,
        "upload",
        json!({"file_list": [{"file_hash": file.file_hash, "file_size": file.content.len()}]}),
    );
    assert_eq!(body["upload_list"][0]["skip_upload"], true);
    // The upload is over: its part URLs name nothing.
    let late = put(&answer.signed_url_list[0].url, file.part(1));
    assert_eq!((late.status, late.code().as_str()), (404, "NoSuchUpload"));

    let (_, body) = call(
        &emulator,
        "download",
        json!({"hash_list": [file.file_hash]}),
    );
    assert_eq!(body["download_list"][0]["chunk_size"], 8 * MIB);
    assert_eq!(body["download_list"][0]["file_size"], file.content.len());
    let url = body["download_list"][0]["url"].as_str().unwrap();
    assert!(get(url).body == file.content);
    // Chunk by chunk, each checked against its part hash, as a verifying client may fetch it.
    let client = reqwest::blocking::Client::new();
    let chunk = 8 * MIB as u64;
    let size = file.content.len() as u64;
    for part in &file.parts {
        let first = (part.part_num - 1) * chunk;
        let last = (first + chunk).min(size) - 1;
        let answer = send(
            client
                .get(url)
                .header("range", format!("bytes={first}-{last}")),
        );
        assert_eq!(answer.status, 206);
        assert_eq!(sha256_hex(&answer.body), part.part_hash);
    }
    let response = client.get(url).header("range", "bytes=-10").send().unwrap();
    assert_eq!(
        response.headers()["content-range"],
        format!("bytes {}-{}/{size}", size - 10, size - 1).as_str()
    );
    assert_eq!(
        response.bytes().unwrap(),
        file.content[size as usize - 10..]
    );
    let beyond = send(client.get(url).header("range", format!("bytes={size}-")));
    assert_eq!(
        (beyond.status, beyond.code().as_str()),
        (416, "InvalidRange")
    );
}

/// A completed multipart object is served from its parts: whole, in ranges across part
/// boundaries, with S3's multipart ETag on GET and HEAD; corrupting it damages what downloads
/// serve; deleting it forgets it.
#[test]
fn a_multipart_object_is_served_from_its_parts() {
    let emulator = start(&[]);
    let file = Multipart::new(16 * MIB + 1000);
    store_in_parts(&emulator, &file);
    let url = download_url(&emulator, &file.file_hash);
    let etag = multipart_etag_of(&file);
    assert!(etag.ends_with("-3\""), "{etag}");

    let whole = get(&url);
    assert_eq!(whole.status, 200);
    assert_eq!(sha256_hex(&whole.body), sha256_hex(&file.content));
    assert_eq!(whole.etag.as_deref(), Some(etag.as_str()));
    let head = reqwest::blocking::Client::new().head(&url).send().unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["etag"], etag.as_str());
    assert_eq!(
        head.headers()["content-length"],
        file.content.len().to_string().as_str()
    );
    assert!(head.bytes().unwrap().is_empty());

    let size = file.content.len() as u64;
    let boundary = 8 * MIB as u64;
    for (first, last) in [
        (boundary - 100, boundary + 99),
        (boundary, boundary),
        (boundary - 1, boundary),
        // From the last byte of part 1 to the first of part 3.
        (boundary - 1, 2 * boundary),
        (2 * boundary - 5, size - 1),
        (3, size - 3),
    ] {
        let (answer, content_range) = get_range(&url, &format!("bytes={first}-{last}"));
        assert_eq!(answer.status, 206, "{first}-{last}");
        assert_eq!(
            content_range.as_deref(),
            Some(format!("bytes {first}-{last}/{size}").as_str())
        );
        assert_eq!(answer.etag.as_deref(), Some(etag.as_str()));
        assert!(
            answer.body == file.content[first as usize..=last as usize],
            "bytes {first}-{last}"
        );
    }
    let (answer, _) = get_range(&url, &format!("bytes={}-", boundary * 2 - 1));
    assert!(answer.body == file.content[2 * 8 * MIB - 1..]);

    let client = reqwest::blocking::Client::new();
    let object = format!("{}/_emulator/objects/{}", emulator.url, file.file_hash);
    assert_eq!(corrupt(&object), 200);
    let damaged = get(&url).body;
    assert_eq!(damaged.len(), file.content.len());
    assert_eq!(damaged[0], file.content[0] ^ 0xff);
    assert!(damaged[1..] == file.content[1..]);
    assert_ne!(sha256_hex(&damaged), sha256_hex(&file.content));
    let (answer, _) = get_range(&url, "bytes=0-9");
    assert_eq!(answer.body[0], file.content[0] ^ 0xff);
    assert_eq!(held(&emulator), [(file.file_hash.clone(), size)]);

    assert_eq!(client.delete(&object).send().unwrap().status(), 200);
    assert!(held(&emulator).is_empty());
    assert_eq!(get(&url).code(), "NoSuchKey");
    let (_, body) = call(
        &emulator,
        "download",
        json!({"hash_list": [file.file_hash]}),
    );
    assert_eq!(body["download_list"][0]["is_deleted"], true);
    // Not held any more: it can be uploaded again.
    store_in_parts(&emulator, &file);
    assert!(get(&url).body == file.content);
}

/// `multipart` asked again for an upload under way (its URLs expired) answers the same upload
/// with new URLs: the parts already sent stay, and the rest completes it.
#[test]
fn multipart_asked_again_answers_the_same_upload_with_new_urls() {
    let emulator = start(&["--url-ttl-secs", "60"]);
    let file = Multipart::new(17 * 1024 * 1024 + 3);
    let first = file.start(&emulator);
    let one = file.put_part(&first, 1);
    // Expiry is in whole seconds: 61 s on, a 60 s link is past it.
    emulator.advance_clock(61);
    let expired = put(&first.signed_url_list[1].url, file.part(2));
    assert_eq!(expired.status, 403);
    let again = file.start(&emulator);
    assert_eq!(again.upload_id, first.upload_id);
    assert_ne!(again.signed_url_list, first.signed_url_list, "new URLs");
    let rest: Vec<String> = (2..=3).map(|num| file.put_part(&again, num)).collect();
    let (status, body) = file.complete(
        &emulator,
        &again.upload_id,
        part_list(&[vec![one], rest].concat()),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        held_bytes(&emulator, &file.file_hash).unwrap(),
        file.content
    );
    // Another file, or the same one done: a new upload.
    let other = Multipart::new(17 * 1024 * 1024 + 4);
    assert_ne!(other.start(&emulator).upload_id, first.upload_id);
}

#[test]
fn multipart_part_lists_must_be_the_file_hashing_parts() {
    let emulator = start(&[]);
    let file = Multipart::new(16 * MIB + 1000);
    let refused = |request: Value| {
        let (status, body) = call(&emulator, "multipart", request);
        assert_eq!(status, 400, "{body}");
        body["field"].as_str().unwrap().to_string()
    };
    let with_parts = |change: &dyn Fn(&mut Vec<Value>)| {
        let mut request = file.request();
        let parts = request["part_list"].as_array_mut().unwrap();
        change(parts);
        request
    };
    // At most 16 MiB goes up whole.
    let small = Multipart::new(16 * MIB + 1);
    let mut request = small.request();
    request["file_size"] = json!(16 * MIB);
    assert_eq!(refused(request), "file_size");
    assert_eq!(refused(with_parts(&|parts| drop(parts.pop()))), "part_list");
    assert_eq!(
        refused(with_parts(&|parts| parts
            .push(json!({"part_num": 4, "part_size": 0,
            "part_hash": sha256_hex(b"")})))),
        "part_list"
    );
    assert_eq!(refused(with_parts(&|parts| parts.swap(0, 1))), "part_list");
    assert_eq!(
        refused(with_parts(&|parts| {
            for part in parts.iter_mut() {
                part["part_num"] = json!(part["part_num"].as_u64().unwrap() - 1);
            }
        })),
        "part_list",
        "part_num starts at 1"
    );
    assert_eq!(
        refused(with_parts(&|parts| {
            // 4 MiB parts: sizes that add up, but not the File Hashing ones.
            *parts = (1..=5)
                .map(|n| {
                    json!({"part_num": n, "part_size": if n < 5 { 4 * MIB } else { 1000 },
                    "part_hash": sha256_hex(b"")})
                })
                .collect();
        })),
        "part_list"
    );
    assert_eq!(
        refused(with_parts(&|parts| parts[1]["part_hash"] = json!("ABC"))),
        "part_list: part_hash"
    );
    let mut request = file.request();
    request["file_hash"] = json!("nothex");
    assert_eq!(refused(request), "file_hash");
    assert_eq!(refused(json!({"file_size": 1})), "body");
    assert_eq!(stats_of(&emulator, "multipart"), json!({"400": 9}));
}

#[test]
fn part_puts_and_completion_are_checked() {
    let emulator = start(&[]);
    let file = Multipart::new(16 * MIB + 1000);
    let answer = file.start(&emulator);

    // A part's bytes and length are checked against its part_hash and part_size.
    let url = &answer.signed_url_list[2].url;
    let mut wrong = file.part(3).to_vec();
    wrong[0] ^= 1;
    let bad = put(url, &wrong);
    assert_eq!((bad.status, bad.code().as_str()), (400, "BadDigest"));
    let short = put(url, &file.part(3)[1..]);
    assert_eq!(
        (short.status, short.code().as_str()),
        (403, "SignatureDoesNotMatch")
    );
    // A refused 8 MiB body is read and dropped: the client gets the answer, not a broken pipe.
    let tampered = answer.signed_url_list[0]
        .url
        .replace("X-Maxlo-Expires=", "X-Maxlo-Expires=1");
    let refused = put(&tampered, file.part(1));
    assert_eq!(
        (refused.status, refused.code().as_str()),
        (403, "SignatureDoesNotMatch")
    );
    // Another part's URL does not take this part.
    let swapped = put(&answer.signed_url_list[1].url, file.part(3));
    assert_eq!(swapped.status, 403);

    let etag1 = file.put_part(&answer, 1);
    let etag3 = file.put_part(&answer, 3);
    let complete = |parts: Value| {
        let (status, body) = file.complete(&emulator, &answer.upload_id, parts);
        assert_eq!(status, 400, "{body}");
        body["error"].as_str().unwrap().to_string()
    };
    let etag2 = etag_of(file.part(2));
    // Part 2 was never PUT.
    let missing = complete(part_list(&[etag1.clone(), etag2.clone(), etag3.clone()]));
    assert!(missing.contains("part 2 was not uploaded"), "{missing}");
    let etag2 = file.put_part(&answer, 2);
    let etags = [etag1.clone(), etag2.clone(), etag3.clone()];
    // Out of order, missing from the list, a wrong ETag, an unknown upload, another bucket.
    let mut out_of_order = part_list(&etags);
    out_of_order.as_array_mut().unwrap().swap(0, 1);
    assert!(complete(out_of_order).contains("ascending part_num"));
    assert!(complete(part_list(&etags[..2])).contains("all 3 parts"));
    let wrong_etag = complete(part_list(&[etag1.clone(), etag3.clone(), etag3.clone()]));
    assert!(wrong_etag.contains("part 2: the etag"), "{wrong_etag}");
    let (status, body) = file.complete(&emulator, &"0".repeat(32), part_list(&etags));
    assert_eq!((status, body["field"].as_str()), (400, Some("upload_id")));
    let (status, body) = call(
        &emulator,
        "multipart_complete",
        json!({"file_size": file.content.len(), "file_hash": file.file_hash,
               "s3_bucket_id": "another", "upload_id": answer.upload_id,
               "part_list": part_list(&etags)}),
    );
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("s3_bucket_id"))
    );
    assert!(held(&emulator).is_empty());

    // ETags are taken with or without their quotes.
    let bare: Vec<String> = etags
        .iter()
        .map(|e| e.trim_matches('"').to_string())
        .collect();
    let (status, body) = file.complete(&emulator, &answer.upload_id, part_list(&bare));
    assert_eq!(status, 201, "{body}");
    assert!(held_bytes(&emulator, &file.file_hash).unwrap() == file.content);
    assert_eq!(
        stats_of(&emulator, "multipart_complete"),
        json!({"400": 6, "201": 1})
    );
}

/// Parts that each match their part_hash but do not make file_hash: the assembled object is
/// refused and not held.
#[test]
fn completion_refuses_parts_that_do_not_make_the_file_hash() {
    let emulator = start(&[]);
    let mut file = Multipart::new(16 * MIB + 1000);
    file.file_hash = sha256_hex(b"some other file");
    let answer = file.start(&emulator);
    let etags: Vec<String> = (1..=3).map(|n| file.put_part(&answer, n)).collect();
    let (status, body) = file.complete(&emulator, &answer.upload_id, part_list(&etags));
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("file_hash")),
        "{body}"
    );
    assert!(held(&emulator).is_empty());
    assert_eq!(held_bytes(&emulator, &file.file_hash), None);
}

#[test]
fn uploads_disabled_by_policy_and_on_the_device_record() {
    let emulator = start(&["--upload-disabled"]);
    let (status, body) = call(
        &emulator,
        "upload",
        json!({"file_list": [{"file_hash": sha256_hex(b"x"), "file_size": 1}]}),
    );
    assert_eq!(
        (status, body),
        (200, json!({"upload_list": [], "upload_disabled": true}))
    );

    let current = |emulator: &Emulator| {
        let (status, body) = emulator.post(
            "/device/1/current",
            &json!({"device_session_key": "demo-device-key"}),
        );
        assert_eq!(status, 200);
        body
    };
    assert_eq!(current(&emulator)["is_upload_disabled"], false);
    let device_disabled = start(&["--device-upload-disabled"]);
    assert_eq!(current(&device_disabled)["is_upload_disabled"], true);
    assert_eq!(current(&device_disabled)["upload_priority"], 0);
}

#[test]
fn no_active_file_is_answered_only_when_asked_for() {
    let emulator = start(&["--multipart-no-active-file"]);
    let file = Multipart::new(16 * MIB + 1000);
    let (status, body) = call(&emulator, "multipart", file.request());
    assert_eq!((status, body), (409, json!({"no_active_file": true})));
}

#[test]
fn content_calls_check_the_key_then_the_grant_then_the_body() {
    let emulator = start(&[]);
    let bodies = [
        ("upload", json!({"file_list": []})),
        (
            "s3_object",
            json!({"s3_bucket_id": BUCKET, "file_hash": sha256_hex(b""), "file_size": 0}),
        ),
        ("multipart", Multipart::new(16 * MIB + 1).request()),
        (
            "multipart_complete",
            json!({"file_size": 1, "file_hash": sha256_hex(b""), "s3_bucket_id": BUCKET,
                   "upload_id": "0".repeat(32), "part_list": []}),
        ),
        ("download", json!({"hash_list": []})),
    ];
    for (name, body) in &bodies {
        let path = |grant: &str| format!("/device/1/media_grant/{grant}/{name}");
        let (status, _) = emulator.post(&path("1"), body);
        assert_eq!(status, 403, "{name} without a key");
        let mut with_key = body.clone();
        with_key["device_session_key"] = json!("demo-user-key");
        assert_eq!(
            emulator.post(&path("1"), &with_key).0,
            403,
            "{name}, user key"
        );
        with_key["device_session_key"] = json!("demo-device-key");
        assert_eq!(emulator.post(&path("9"), &with_key).0, 404, "{name}");
        assert_eq!(emulator.post(&path("x"), &with_key).0, 404, "{name}");
        let (status, answer) = emulator.post(
            &path("9"),
            &json!({"device_session_key": "wrong", "nonsense": true}),
        );
        assert_eq!(status, 403, "{name}: the key first: {answer}");
        let (status, answer) = emulator.post(
            &path("1"),
            &json!({"device_session_key": "demo-device-key"}),
        );
        assert_eq!(
            (status, answer["field"].as_str()),
            (400, Some("body")),
            "{name}"
        );
    }
    // Answers of the empty lists.
    assert_eq!(
        call(&emulator, "upload", json!({"file_list": []})),
        (200, json!({"upload_list": []}))
    );
    assert_eq!(
        call(&emulator, "download", json!({"hash_list": []})),
        (200, json!({"download_list": []}))
    );
    for (name, body) in [
        (
            "upload",
            json!({"file_list": [{"file_hash": "A".repeat(64), "file_size": 1}]}),
        ),
        ("download", json!({"hash_list": ["../x"]})),
        (
            "s3_object",
            json!({"s3_bucket_id": BUCKET, "file_hash": "zz", "file_size": 1}),
        ),
    ] {
        assert_eq!(call(&emulator, name, body).0, 400, "{name}");
    }
}

#[test]
fn objects_uploads_and_signed_urls_survive_a_restart_with_db() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("emulator.db");
    let db_arg = db.to_str().unwrap();
    let mut emulator = Emulator::start(&["--db", db_arg]);
    let small = pattern(300);
    let small_hash = store_whole(&emulator, &small);
    let file = Multipart::new(16 * MIB + 1000);
    let answer = file.start(&emulator);
    let etag1 = file.put_part(&answer, 1);
    let pending = pattern(77);
    assert_eq!(put(&put_url(&emulator, &pending), &pending).status, 200);
    assert!(dir.path().join("emulator.db.objects/objects").is_dir());

    emulator.restart();
    assert_eq!(held(&emulator), [(small_hash.clone(), 300)]);
    assert_eq!(held_bytes(&emulator, &small_hash).unwrap(), small);
    assert_eq!(upload(&emulator, &small).skip_upload, Some(true));
    // A PUT before the restart is registered after it.
    assert_eq!(register(&emulator, &pending), 201);
    // The URLs handed out before the restart still work: the upload resumes.
    let etag2 = file.put_part(&answer, 2);
    let etag3 = file.put_part(&answer, 3);
    let (status, body) = file.complete(
        &emulator,
        &answer.upload_id,
        part_list(&[etag1, etag2, etag3]),
    );
    assert_eq!(status, 201, "{body}");
    let url = download_url(&emulator, &file.file_hash);
    emulator.restart();
    assert_eq!(held(&emulator).len(), 3);
    assert!(held_bytes(&emulator, &file.file_hash).unwrap() == file.content);
    // The download URL signed before the restart serves it, a range across parts too.
    let downloaded = get(&url);
    assert_eq!(sha256_hex(&downloaded.body), sha256_hex(&file.content));
    assert_eq!(downloaded.etag, Some(multipart_etag_of(&file)));
    let boundary = 8 * MIB;
    let (answer, _) = get_range(&url, &format!("bytes={}-{}", boundary - 2, boundary + 1));
    assert_eq!(answer.body, file.content[boundary - 2..boundary + 2]);

    // --objects puts them elsewhere; without --db or --objects nothing is kept.
    let elsewhere = dir.path().join("elsewhere");
    let other = Emulator::start(&["--db", db_arg, "--objects", elsewhere.to_str().unwrap()]);
    assert!(held(&other).is_empty());
    store_whole(&other, &small);
    assert!(elsewhere.join("objects").join(&small_hash).is_file());
    let mut in_memory = Emulator::start(&[]);
    store_whole(&in_memory, &small);
    in_memory.restart();
    assert!(held(&in_memory).is_empty());
}

#[test]
fn stats_count_the_content_calls_by_name() {
    let emulator = start(&[]);
    let content = pattern(64);
    store_whole(&emulator, &content);
    let file = Multipart::new(16 * MIB + 1000);
    let answer = file.start(&emulator);
    let etags: Vec<String> = (1..=3).map(|n| file.put_part(&answer, n)).collect();
    assert_eq!(
        file.complete(&emulator, &answer.upload_id, part_list(&etags))
            .0,
        201
    );
    let (_, body) = call(
        &emulator,
        "download",
        json!({"hash_list": [sha256_hex(&content)]}),
    );
    assert_eq!(
        get(body["download_list"][0]["url"].as_str().unwrap()).status,
        200
    );
    // Inspection is not counted.
    held_bytes(&emulator, &file.file_hash);
    let stats = emulator.stats();
    assert_eq!(
        stats["calls"],
        json!({
            "create": {}, "update": {}, "delete": {}, "current": {}, "media_grant": {},
            "upload": {"200": 1}, "s3_object": {"201": 1}, "multipart": {"200": 1},
            "multipart_complete": {"201": 1}, "download": {"200": 1},
            "object_put": {"200": 1}, "part_put": {"200": 3}, "object_get": {"200": 1}
        })
    );
}

/// URLs signed by a healthy emulator, then PUT to the same data folder under faults (the
/// signing key is kept there).
#[test]
fn faults_apply_to_object_and_part_puts() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("emulator.db");
    let db_arg = db.to_str().unwrap();
    let mut emulator = Emulator::start(&["--db", db_arg]);
    let content = pattern(4096);
    let url = put_url(&emulator, &content);
    let file = Multipart::new(16 * MIB + 1000);
    let answer = file.start(&emulator);

    emulator.restart_with(&["--db", db_arg, "--fail-rate", "1"]);
    let failed = put(&url, &content);
    assert_eq!(
        (failed.status, failed.code().as_str()),
        (503, "ServiceUnavailable")
    );
    let failed_part = put(&answer.signed_url_list[0].url, file.part(1));
    assert_eq!(failed_part.status, 503);
    assert_eq!(stats_of(&emulator, "object_put"), json!({"503": 1}));
    assert_eq!(stats_of(&emulator, "part_put"), json!({"503": 1}));

    // A drop comes after the write: the client sees no answer, the bytes are kept.
    emulator.restart_with(&["--db", db_arg, "--drop-rate", "1"]);
    let client = reqwest::blocking::Client::new();
    assert!(client.put(&url).body(content.clone()).send().is_err());
    assert!(client
        .put(&answer.signed_url_list[0].url)
        .body(file.part(1).to_vec())
        .send()
        .is_err());
    assert_eq!(stats_of(&emulator, "object_put"), json!({"dropped": 1}));
    assert_eq!(emulator.stats()["dropped"], 2);

    emulator.restart_with(&["--db", db_arg, "--latency-ms", "300"]);
    let started = std::time::Instant::now();
    assert_eq!(
        register(&emulator, &content),
        201,
        "the dropped PUT was stored"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        held_bytes(&emulator, &sha256_hex(&content)).unwrap(),
        content
    );
    // The dropped part was kept too: completing needs only the two others.
    let etags = [
        etag_of(file.part(1)),
        file.put_part(&answer, 2),
        file.put_part(&answer, 3),
    ];
    assert_eq!(
        file.complete(&emulator, &answer.upload_id, part_list(&etags))
            .0,
        201
    );
}

#[test]
fn held_objects_can_be_corrupted_and_deleted_for_tests() {
    let emulator = start(&[]);
    let content = pattern(100);
    let file_hash = store_whole(&emulator, &content);
    let client = reqwest::blocking::Client::new();
    let object = format!("{}/_emulator/objects/{file_hash}", emulator.url);

    assert_eq!(corrupt(&object), 200);
    let corrupted = held_bytes(&emulator, &file_hash).unwrap();
    assert_eq!(corrupted.len(), content.len());
    assert_eq!(corrupted[0], content[0] ^ 0xff);
    assert_eq!(corrupted[1..], content[1..]);
    // Still held: download names it, and serves the corrupted bytes.
    let (_, body) = call(&emulator, "download", json!({"hash_list": [file_hash]}));
    assert_eq!(body["download_list"][0]["is_deleted"], false);
    let mut downloaded = Vec::new();
    reqwest::blocking::get(body["download_list"][0]["url"].as_str().unwrap())
        .unwrap()
        .read_to_end(&mut downloaded)
        .unwrap();
    assert_eq!(downloaded, corrupted);

    assert_eq!(client.delete(&object).send().unwrap().status(), 200);
    assert_eq!(held_bytes(&emulator, &file_hash), None);
    assert_eq!(client.delete(&object).send().unwrap().status(), 404);
    assert_eq!(corrupt(&object), 404);
    let (_, body) = call(&emulator, "download", json!({"hash_list": [file_hash]}));
    assert_eq!(body["download_list"][0]["is_deleted"], true);
    // Not held any more: upload asks for it again.
    assert!(upload(&emulator, &content).signed_opts.is_some());
    assert_eq!(held_bytes(&emulator, "not-a-hash"), None);
}

/// `POST OBJECT/damage-next?count=N`: the answer's status.
fn damage_next(object: &str, count: u64) -> u16 {
    reqwest::blocking::Client::new()
        .post(format!("{object}/damage-next?count={count}"))
        .send()
        .unwrap()
        .status()
        .as_u16()
}

#[test]
fn damage_next_damages_only_the_next_signed_gets() {
    let emulator = start(&[]);
    let content = pattern(100);
    let file_hash = store_whole(&emulator, &content);
    let object = format!("{}/_emulator/objects/{file_hash}", emulator.url);
    let url = download_url(&emulator, &file_hash);
    assert_eq!(damage_next(&object, 2), 200);
    // The inspection GET shows what is held, never damaged, and is not counted.
    assert_eq!(held_bytes(&emulator, &file_hash).unwrap(), content);
    let damaged = get(&url);
    assert_eq!((damaged.status, damaged.body.len()), (200, content.len()));
    assert_eq!(damaged.body[0], content[0] ^ 0xff);
    assert_eq!(damaged.body[1..], content[1..]);
    let (ranged, content_range) = get_range(&url, "bytes=10-19");
    assert_eq!(ranged.status, 206);
    assert_eq!(content_range.as_deref(), Some("bytes 10-19/100"));
    assert_eq!(ranged.body[0], content[10] ^ 0xff);
    assert_eq!(ranged.body[1..], content[11..20]);
    assert_eq!(get(&url).body, content);
    // 0 cancels what is left.
    assert_eq!(damage_next(&object, 5), 200);
    assert_eq!(damage_next(&object, 0), 200);
    assert_eq!(get(&url).body, content);
    let unknown = format!("{}/_emulator/objects/{}", emulator.url, "0".repeat(64));
    assert_eq!(damage_next(&unknown, 1), 404);
}

mod restore {
    use super::*;
    use maxlofs_api::content_client::ContentClient;
    use maxlofs_api::http::{HttpApi, Timeouts};
    use maxlofs_api::{Keys, SecretKey};
    use maxlofs_sync::index::{Index, IndexEntry};
    use maxlofs_sync::local::{Backing, FileStat};
    use maxlofs_sync::restore::{restore, RestoreConfig, Restored, Source};
    use std::num::NonZeroU32;
    use std::sync::Arc;

    /// A backing folder whose index records `path` for `content` (as the service holds it)
    /// while the file there holds `on_disk`, written now.
    struct Folder {
        dir: tempfile::TempDir,
        index: Index,
        backing: Backing,
    }

    impl Folder {
        fn new(path: &str, content: &[u8], file_hash: &str, on_disk: &[u8]) -> Folder {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("b")).unwrap();
            std::fs::write(dir.path().join("b").join(path), on_disk).unwrap();
            let index = Index::open(&dir.path().join("index.db"), "test", 16).unwrap();
            let meta = std::fs::metadata(dir.path().join("b").join(path)).unwrap();
            let stat = FileStat::from_metadata(&meta);
            let entry = IndexEntry {
                media_id: 1,
                hash: file_hash.to_string(),
                size: content.len() as u64,
                mtime_ns: 1_600_000_000_000_000_000,
                ctime_ns: stat.ctime_ns,
                ino: stat.ino,
                content_up: true,
            };
            index.put(path, &entry).unwrap();
            let backing = Backing::open(&dir.path().join("b")).unwrap();
            Folder {
                dir,
                index,
                backing,
            }
        }

        fn restore(&self, emulator: &Emulator, path: &str) -> Restored {
            let keys = Keys {
                device: SecretKey::new("demo-device-key"),
                user: None,
            };
            let api = HttpApi::new(&emulator.url, keys, Timeouts::default()).unwrap();
            let content = ContentClient::new(Arc::new(api)).unwrap();
            let config = RestoreConfig {
                grant: 1,
                attempts: NonZeroU32::new(3).unwrap(),
                floor_window: Duration::from_secs(30),
            };
            let source = Source::Indexed(path.into());
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(restore(
                    &self.index,
                    &self.backing,
                    &content,
                    &config,
                    &source,
                ))
                .unwrap()
        }

        fn read(&self, path: &str) -> Vec<u8> {
            std::fs::read(self.dir.path().join("b").join(path)).unwrap()
        }
    }

    #[test]
    fn a_restore_refuses_a_download_damaged_on_the_way_and_fetches_it_again() {
        let emulator = start(&[]);
        let content = pattern(1000);
        let file_hash = store_whole(&emulator, &content);
        let folder = Folder::new("a.jpg", &content, &file_hash, b"damaged");
        let object = format!("{}/_emulator/objects/{file_hash}", emulator.url);
        assert_eq!(damage_next(&object, 1), 200);
        let restored = folder.restore(&emulator, "a.jpg");
        assert_eq!(folder.read("a.jpg"), content);
        assert_eq!(restored.refetched_chunks, 1);
        assert_eq!(stats_of(&emulator, "object_get")["206"], 2);
    }

    #[test]
    fn a_restore_of_a_multipart_file_fetches_again_only_its_damaged_part() {
        let emulator = start(&[]);
        let file = Multipart::new(17 * MIB + 5);
        store_in_parts(&emulator, &file);
        let folder = Folder::new("big", &file.content, &file.file_hash, b"damaged");
        let digests: Vec<[u8; 32]> = file
            .parts
            .iter()
            .map(|part| hex::decode(&part.part_hash).unwrap().try_into().unwrap())
            .collect();
        folder
            .index
            .set_content_parts(&file.file_hash, &digests)
            .unwrap();
        let object = format!("{}/_emulator/objects/{}", emulator.url, file.file_hash);
        assert_eq!(damage_next(&object, 1), 200);
        let restored = folder.restore(&emulator, "big");
        assert!(folder.read("big") == file.content);
        assert_eq!(restored.refetched_chunks, 1);
        assert_eq!(restored.downloaded_bytes, (17 * MIB + 5 + 8 * MIB) as u64);
        assert_eq!(stats_of(&emulator, "object_get")["206"], 4);
    }
}

/// Descriptors the process `pid` has open on `path`.
fn opened_by(pid: u32, path: &std::path::Path) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target == path)
        .count()
}

/// An object store call that blocks (here on a FIFO standing as a held object's object.json, as
/// a stalled disk would) holds up its own call only: while as many calls as the emulator has
/// async workers wait on it, another call is answered. When the object store was called on the
/// async workers, each such call held one, and then the emulator answered nothing more.
#[test]
fn object_store_calls_that_block_leave_the_other_calls_answered() {
    let objects = tempfile::tempdir().unwrap();
    let file_hash = "ab".repeat(32);
    let held = objects.path().join("objects").join(&file_hash);
    std::fs::create_dir_all(&held).unwrap();
    let fifo = held.join("object.json");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        0,
    )
    .unwrap();
    let fifo = fifo.canonicalize().unwrap();
    // Open for writing too: the emulator's opens return at once, and its reads wait for bytes
    // until this closes.
    let writer = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let emulator = Emulator::start(&["--objects", objects.path().to_str().unwrap()]);
    // tokio's count of async workers.
    let workers = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let url = format!("{}/device/1/media_grant/1/upload", emulator.url);
    let body = json!({"device_session_key": "demo-device-key",
                      "file_list": [{"file_hash": file_hash, "file_size": 5}]});
    // The bound only turns the old hangs into failures: nothing here waits on more than a
    // loopback call.
    let bound = Duration::from_secs(60);
    let deadline = std::time::Instant::now() + bound;
    // One after the other, each once the one before waits on the FIFO. On the async workers, a
    // call could also be stranded behind a waiting one (in its worker's LIFO slot, which no other
    // worker takes from) and never reach the FIFO.
    let blocked: Vec<_> = (1..=workers)
        .map(|waiting| {
            let (url, body) = (url.clone(), body.clone());
            let call = std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(None)
                    .build()
                    .unwrap();
                client.post(url).json(&body).send().unwrap().status()
            });
            while opened_by(emulator.pid(), &fifo) < waiting {
                assert!(
                    std::time::Instant::now() < deadline,
                    "call {waiting} never reached the object store"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            call
        })
        .collect();
    let stats = reqwest::blocking::Client::builder()
        .timeout(bound)
        .build()
        .unwrap()
        .get(format!("{}/_emulator/stats", emulator.url))
        .send();
    assert!(
        stats.as_ref().is_ok_and(|answer| answer.status() == 200),
        "no answer while {workers} calls wait on the object store: {stats:?}"
    );
    assert_eq!(opened_by(emulator.pid(), &fifo), workers, "still waiting");
    // The object.json read ends empty: not held, so upload signs a PUT for it.
    drop(writer);
    for call in blocked {
        assert_eq!(call.join().unwrap(), 200);
    }
}
