//! Reading one HTTP/1.1 request off a socket, for the tests' fake servers and proxy.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;

/// One request as it came: the request line, the header lines and the body.
pub struct Request {
    pub method: String,
    /// The request target, query included.
    pub path: String,
    /// The request line and every header line, each with its "\r\n", in order.
    pub lines: Vec<String>,
    pub body: Vec<u8>,
}

/// Reads one request (head, then a body of its Content-Length); `None` if the connection ends
/// or the request is malformed.
pub fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut lines = Vec::new();
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            content_length = value.trim().parse().ok()?;
        }
        lines.push(line);
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body).ok()?;
    let mut parts = lines.first()?.split_whitespace();
    Some(Request {
        method: parts.next()?.to_string(),
        path: parts.next()?.to_string(),
        lines,
        body,
    })
}
