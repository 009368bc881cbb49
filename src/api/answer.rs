//! What the service's answers mean, read once for both clients (`http::HttpApi` over the wire,
//! `memory::MemoryApi` over a `Store`): the status classes, the service's message, the body cap,
//! and the checks that keep a buggy or hostile service within the contract (docs/contract.md).

use super::{ApiError, CreateOutcome, MediaId, NewMedia};
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// The largest answer body read: every documented answer is a few hundred bytes, and a service
/// that sends more must not make the daemon buffer it.
pub const BODY_MAX_BYTES: usize = 1 << 20;

/// The error for an answer that passes `BODY_MAX_BYTES`.
pub fn body_too_large() -> ApiError {
    ApiError::Transient("answer larger than 1 MiB".into())
}

/// A non-error answer, body included.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Success(Vec<u8>),
    /// 409: only a create documents it (its body is the path's current record).
    Conflict(Vec<u8>),
}

impl Answer {
    /// For calls that do not document a 409: it is a rejection like any other 4xx.
    pub fn success(self) -> Result<Vec<u8>, ApiError> {
        match self {
            Answer::Success(body) => Ok(body),
            Answer::Conflict(body) => Err(ApiError::BadRequest {
                status: 409,
                message: service_message(&body),
            }),
        }
    }
}

/// The one place an HTTP status gets its meaning (see `ApiError`'s classes).
pub fn classify(status: u16, body: Vec<u8>) -> Result<Answer, ApiError> {
    match status {
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

/// A store's answer to a PUT. S3 refuses a body that stalled or was cut short with a 400 that
/// means "send it again" (RequestTimeout, IncompleteBody; S3's error codes): transient, not a
/// refusal of the file, which would leave it unsent until it changes.
pub fn classify_store(status: u16, body: Vec<u8>) -> Result<Answer, ApiError> {
    let code = std::str::from_utf8(&body).ok().and_then(|text| {
        let start = text.find("<Code>")? + "<Code>".len();
        let end = start + text[start..].find("</Code>")?;
        Some(&text[start..end])
    });
    match (status, code) {
        (400, Some(code @ ("RequestTimeout" | "IncompleteBody"))) => Err(ApiError::Transient(
            format!("the store did not get the whole body ({code}); it is sent again"),
        )),
        _ => classify(status, body),
    }
}

/// A success or conflict body that does not parse as what the call answers: most likely cut
/// short, so worth retrying.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|err| malformed(&err.to_string()))
}

pub(super) fn malformed(why: &str) -> ApiError {
    ApiError::Transient(format!("malformed answer: {why}"))
}

/// A create's outcome, taken only as far as the contract vouches for it: media_ids are positive,
/// and a 409 describes the path that was sent. A 409 naming another path is a protocol error
/// (retryable, like any answer that makes no sense): adopting that record would let the client
/// overwrite, and later delete, a file it never had.
pub fn check_create(sent: &NewMedia, outcome: CreateOutcome) -> Result<CreateOutcome, ApiError> {
    let media_id = match &outcome {
        CreateOutcome::Created(media_id) => *media_id,
        CreateOutcome::Conflict(record) => {
            if record.media_path != sent.media_path {
                return Err(ApiError::Transient(
                    "protocol error: 409 names another path".into(),
                ));
            }
            record.media_id
        }
    };
    check_media_id(media_id)?;
    Ok(outcome)
}

fn check_media_id(media_id: MediaId) -> Result<(), ApiError> {
    if media_id > 0 {
        Ok(())
    } else {
        Err(malformed(&format!(
            "media_id {media_id} is not a positive integer"
        )))
    }
}

/// Longest service message kept in an error.
const MESSAGE_MAX_CHARS: usize = 200;

/// What the service said: the JSON `error` field when there is one, else the body's text, cut
/// to a length fit for a log line.
pub fn service_message(body: &[u8]) -> String {
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

/// Whether `host` (a URL's host: a name, an IPv4 address or a bracketed IPv6 one) is this
/// machine or its local network: `localhost`, or a loopback, link-local, private or unspecified
/// address, an IPv4-mapped IPv6 one included.
pub fn is_local_host(host: &str) -> bool {
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    let literal = name.trim_start_matches('[').trim_end_matches(']');
    literal.parse().is_ok_and(is_local_address)
}

/// Whether an address is this machine's or its local network's (see `is_local_host`).
pub fn is_local_address(address: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match address {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                // 0.0.0.0/8: "this network", which Linux connects to as the local host.
                || v4.octets()[0] == 0
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_local_address(IpAddr::V4(v4)),
            None => {
                let first = v6.segments()[0];
                v6.is_loopback()
                    || v6.is_unspecified()
                    // fc00::/7 unique local, fe80::/10 link-local, fec0::/10 site-local.
                    || first & 0xfe00 == 0xfc00
                    || first & 0xffc0 == 0xfe80
                    || first & 0xffc0 == 0xfec0
            }
        },
    }
}

/// A signed URL the service gave, held to where a store can be: http(s), and not on this machine
/// or its local network, unless at the very host of a service that is there itself
/// (`local_host`: the emulator gives its own address). One that is not is the service lying,
/// like a malformed answer, and is not followed: a signed URL at another local address would
/// reach whatever listens there, keyless admin endpoints included.
pub fn check_signed_url(url: &str, local_host: Option<&str>) -> Result<reqwest::Url, ApiError> {
    let parsed =
        reqwest::Url::parse(url).map_err(|err| malformed(&format!("a signed URL: {err}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(malformed(&format!(
            "a signed URL with scheme {:?}",
            parsed.scheme()
        )));
    }
    let host = parsed.host_str().unwrap_or_default();
    if is_local_host(host) && local_host != Some(host) {
        // The host only: the rest of a signed URL is its signature.
        return Err(malformed(&format!(
            "a signed URL at the local address {host:?}, not followed"
        )));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MediaRecord, MediaState};

    #[test]
    fn classification_by_status() {
        let body = || br#"{"error":"media_path is invalid"}"#.to_vec();
        for code in [200, 201, 204] {
            assert_eq!(classify(code, body()), Ok(Answer::Success(body())));
        }
        assert_eq!(classify(409, body()), Ok(Answer::Conflict(body())));
        assert_eq!(classify(403, body()), Err(ApiError::Unauthorized));
        assert_eq!(classify(404, body()), Err(ApiError::NotFound));
        for code in [400, 412, 422, 302] {
            assert_eq!(
                classify(code, body()),
                Err(ApiError::BadRequest {
                    status: code,
                    message: "media_path is invalid".into()
                })
            );
        }
        for code in [408, 429, 500, 502, 503, 504] {
            let err = classify(code, body()).unwrap_err();
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
        #[derive(Debug, Deserialize)]
        struct Created {
            #[allow(dead_code)]
            media_id: MediaId,
        }
        for body in [&b"{\"media_id\": 1"[..], b"", b"<html>"] {
            let err = decode::<Created>(body).unwrap_err();
            assert!(err.is_transient(), "{err:?}");
        }
    }

    fn sent() -> NewMedia {
        NewMedia {
            media_path: "mine.jpg".into(),
            state: MediaState {
                file_hash: "ab".repeat(32),
                file_size: 1,
                ctime: "2026-11-26T18:20:00.000Z".into(),
                mtime: "2026-11-26T18:20:00.000Z".into(),
            },
        }
    }

    fn record(media_id: MediaId, media_path: &str) -> MediaRecord {
        MediaRecord {
            media_id,
            media_path: media_path.into(),
            file_hash: "cd".repeat(32),
            file_size: 2,
            ctime: "2026-11-26T18:20:00.000Z".into(),
            mtime: "2026-11-26T18:20:00.000Z".into(),
            last_updated_user_id: Some(1),
            last_updated_device_id: Some(1),
            last_updated: "2026-11-26T18:20:00.000Z".into(),
            is_deleted: false,
        }
    }

    #[test]
    fn a_create_outcome_is_taken_only_within_the_contract() {
        let ok = [
            CreateOutcome::Created(1),
            CreateOutcome::Conflict(record(7, "mine.jpg")),
        ];
        for outcome in ok {
            assert_eq!(check_create(&sent(), outcome.clone()), Ok(outcome));
        }
        assert_eq!(
            check_create(&sent(), CreateOutcome::Conflict(record(7, "victim.jpg"))),
            Err(ApiError::Transient(
                "protocol error: 409 names another path".into()
            ))
        );
        for bad in [
            CreateOutcome::Created(0),
            CreateOutcome::Created(-3),
            CreateOutcome::Conflict(record(0, "mine.jpg")),
            CreateOutcome::Conflict(record(-1, "mine.jpg")),
        ] {
            let err = check_create(&sent(), bad).unwrap_err();
            assert!(
                matches!(&err, ApiError::Transient(message) if message.contains("media_id")),
                "{err:?}"
            );
        }
    }

    #[test]
    fn a_body_the_store_did_not_get_whole_is_sent_again_and_other_refusals_are_not() {
        let s3_error = |code: &str| {
            format!("<?xml version=\"1.0\"?><Error><Code>{code}</Code><Message>m</Message></Error>")
                .into_bytes()
        };
        for code in ["RequestTimeout", "IncompleteBody"] {
            let answer = classify_store(400, s3_error(code));
            assert!(matches!(answer, Err(ApiError::Transient(_))), "{answer:?}");
        }
        let answer = classify_store(400, s3_error("BadDigest"));
        assert!(
            matches!(answer, Err(ApiError::BadRequest { status: 400, .. })),
            "{answer:?}"
        );
        assert!(matches!(
            classify_store(200, Vec::new()),
            Ok(Answer::Success(_))
        ));
    }

    #[test]
    fn a_signed_url_on_this_machine_or_its_network_is_refused_unless_at_a_local_services_host() {
        let local = [
            "http://127.0.0.1/x",
            "http://127.0.0.2:9000/x",
            "http://2130706433/x",
            "http://localhost:8700/x",
            "http://LOCALHOST./x",
            "http://a.localhost/x",
            "http://10.1.2.3/x",
            "http://172.16.0.1/x",
            "http://192.168.1.1/x",
            "http://169.254.169.254/latest/meta-data",
            "http://0.0.0.0/x",
            "http://[::1]/x",
            "http://[::]/x",
            "http://[::ffff:127.0.0.1]/x",
            "http://[::ffff:169.254.169.254]/x",
            "http://[fd00::1]/x",
            "http://[fe80::1]/x",
        ];
        for url in local {
            let err = check_signed_url(url, None).unwrap_err();
            assert!(err.to_string().contains("not followed"), "{url}: {err}");
            // A service on loopback may name its own host, and no other local one.
            let own = check_signed_url(url, Some("127.0.0.1"));
            let at_own = reqwest::Url::parse(url).unwrap().host_str() == Some("127.0.0.1");
            assert_eq!(own.is_ok(), at_own, "{url}");
        }
        for url in [
            "https://s3.example.com/b/k?sig=1",
            "http://93.184.216.34/x",
            "http://[2001:db8::1]/x",
        ] {
            check_signed_url(url, None).unwrap_or_else(|err| panic!("{url}: {err}"));
        }
        for url in ["file:///etc/passwd", "not a url"] {
            assert!(check_signed_url(url, None).is_err(), "{url}");
        }
    }
}
