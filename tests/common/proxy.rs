//! A tiny HTTP proxy in front of the emulator that misbehaves on request: it forwards calls, or
//! forwards them and then drops the connection unanswered (the call took effect, the client
//! cannot know), or answers bytes of our choosing (garbage, truncated JSON) without forwarding.
//! One request per connection (`Connection: close`), std threads, no dependencies.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug)]
pub enum Action {
    Forward,
    /// Forward, wait `hold`, then close the connection without answering.
    ForwardThenDrop {
        hold: Duration,
    },
    /// Answer these bytes (the whole response, status line included) without forwarding.
    Answer(Vec<u8>),
    /// Forward, then answer these bytes instead of the service's answer.
    ForwardThenAnswer(Vec<u8>),
    /// Answer each of these in turn (without forwarding), round and round.
    Answers(Vec<Vec<u8>>),
    /// Answer this head (status line and headers), then zero bytes without end, until the
    /// client goes.
    Endless(Vec<u8>),
    /// Answer this head, then one zero byte each `every`, until the client goes.
    Trickle {
        head: Vec<u8>,
        every: Duration,
    },
}

/// A rule: requests for which `matches(method, path without query)` holds get `action`, for the
/// next `times` of them (`None`: all).
#[derive(Clone, Debug)]
pub struct Rule {
    pub matches: fn(&str, &str) -> bool,
    pub action: Action,
    pub times: Option<usize>,
}

/// A create: `POST .../media`.
pub fn is_create(method: &str, path: &str) -> bool {
    method == "POST" && path.ends_with("/media")
}

/// A GET of a content's signed URL (the emulator's store).
pub fn is_object_get(method: &str, path: &str) -> bool {
    method == "GET" && path.starts_with("/_s3/")
}

/// A `download` call (signed URLs for contents).
pub fn is_download(method: &str, path: &str) -> bool {
    method == "POST" && path.ends_with("/download")
}

/// Create, update or delete of a record.
pub fn is_media_call(method: &str, path: &str) -> bool {
    path.ends_with("/media") || path.contains("/media/") && (method == "POST" || method == "DELETE")
}

#[derive(Default)]
struct Shared {
    answered: usize,
    rules: Vec<Rule>,
    /// "METHOD path action" of every request, path without its query (it may hold a key).
    seen: Vec<String>,
}

pub struct Proxy {
    pub url: String,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
}

/// An HTTP/1.1 response with a JSON content type.
pub fn response(status: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

struct Request {
    method: String,
    path: String,
    raw: Vec<u8>,
}

/// The request to forward: one per connection, whatever the client asked for.
fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let request = super::http::read_request(stream)?;
    let mut raw = Vec::new();
    for line in &request.lines {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            raw.extend_from_slice(line.as_bytes());
        }
    }
    raw.extend_from_slice(b"connection: close\r\n\r\n");
    raw.extend_from_slice(&request.body);
    Some(Request {
        method: request.method,
        path: request.path,
        raw,
    })
}

fn forward(upstream: &str, request: &Request) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    stream.write_all(&request.raw).ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    Some(answer)
}

impl Proxy {
    /// Starts a proxy to the service at `upstream` (`http://127.0.0.1:PORT`).
    pub fn start(upstream: &str) -> Proxy {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared: Arc<Mutex<Shared>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        {
            let shared = shared.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let shared = shared.clone();
                    let upstream = upstream.clone();
                    std::thread::spawn(move || serve(stream, &upstream, &shared));
                }
            });
        }
        Proxy {
            url: format!("http://{addr}"),
            shared,
            stop,
            addr,
        }
    }

    pub fn add_rule(&self, rule: Rule) {
        self.shared.lock().unwrap().rules.push(rule);
    }

    pub fn clear_rules(&self) {
        self.shared.lock().unwrap().rules.clear();
    }

    /// Requests seen so far, as "METHOD /path ACTION".
    pub fn seen(&self) -> Vec<String> {
        self.shared.lock().unwrap().seen.clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(mut stream: TcpStream, upstream: &str, shared: &Mutex<Shared>) {
    let Some(request) = read_request(&mut stream) else {
        return;
    };
    let action = {
        let mut shared = shared.lock().unwrap();
        let path = request
            .path
            .split('?')
            .next()
            .unwrap_or_default()
            .to_string();
        let found = shared
            .rules
            .iter_mut()
            .find(|rule| rule.times != Some(0) && (rule.matches)(&request.method, &path));
        let action = match found {
            Some(rule) => {
                if let Some(times) = &mut rule.times {
                    *times -= 1;
                }
                rule.action.clone()
            }
            None => Action::Forward,
        };
        let action = match action {
            Action::Answers(list) => {
                shared.answered += 1;
                Action::Answer(list[shared.answered % list.len()].clone())
            }
            other => other,
        };
        let name = match &action {
            Action::Forward => "forward",
            Action::ForwardThenDrop { .. } => "forward-then-drop",
            Action::Answer(_) => "answer",
            Action::ForwardThenAnswer(_) => "forward-then-answer",
            Action::Answers(_) => unreachable!("resolved above"),
            Action::Endless(_) => "endless",
            Action::Trickle { .. } => "trickle",
        };
        shared
            .seen
            .push(format!("{} {path} {name}", request.method));
        action
    };
    let reply = match action {
        Action::Forward => forward(upstream, &request),
        Action::ForwardThenDrop { hold } => {
            let _ = forward(upstream, &request);
            std::thread::sleep(hold);
            None
        }
        Action::Answer(bytes) => Some(bytes),
        Action::ForwardThenAnswer(bytes) => {
            let _ = forward(upstream, &request);
            Some(bytes)
        }
        Action::Answers(_) => unreachable!("resolved above"),
        Action::Endless(head) => {
            let zeros = [0u8; 64 * 1024];
            let mut written = stream.write_all(&head);
            while written.is_ok() {
                written = stream.write_all(&zeros);
            }
            None
        }
        Action::Trickle { head, every } => {
            let mut written = stream.write_all(&head);
            while written.is_ok() {
                std::thread::sleep(every);
                written = stream.write_all(&[0]);
            }
            None
        }
    };
    if let Some(reply) = reply {
        let _ = stream.write_all(&reply);
    }
    let _ = stream.shutdown(Shutdown::Both);
}
