//! HTTP/1.1 over a plain `TcpStream`, for tests that need what a well-behaved client will not
//! send: partial heads, bodies shorter than their `Content-Length`, odd methods and paths,
//! or many sockets at once.
//!
//! Include it with `#[path = "common/raw_http.rs"] mod raw_http;`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A parsed answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// Header names (lowercase) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl Answer {
    /// The first header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `host:port` of a base URL `http://host:port`.
pub fn addr_of(base: &str) -> String {
    base.trim_start_matches("http://").to_string()
}

/// Connects with a read timeout of `read_timeout`.
pub fn connect(addr: &str, read_timeout: Duration) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(read_timeout)).expect("timeout");
    s.set_nodelay(true).expect("nodelay");
    s
}

/// Builds a request: `METHOD PATH HTTP/1.1`, `Host`, the headers, `Content-Length` when a body
/// is given, the body.
pub fn request(method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        r.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    r.push_str("\r\n");
    let mut bytes = r.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    bytes
}

/// Reads one answer (head, then a body of `Content-Length` bytes); `None` when the connection
/// closed (or failed) before a whole head arrived.
pub fn read_answer(s: &mut TcpStream) -> Option<Answer> {
    read_answer_to(s, "GET")
}

/// [`read_answer`] for a request of `method` (the answer to `HEAD` has no body).
pub fn read_answer_to(s: &mut TcpStream, method: &str) -> Option<Answer> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse::<u16>().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len = if method == "HEAD" {
        0
    } else {
        headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0)
    };
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some(Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Sends `bytes` on a new connection and reads one answer (read timeout 60 s).
pub fn exchange(addr: &str, bytes: &[u8]) -> Option<Answer> {
    let mut s = connect(addr, Duration::from_secs(60));
    s.write_all(bytes).ok()?;
    read_answer(&mut s)
}

/// What the server did with a connection the test stopped writing to.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// It closed the connection (end of stream or reset) after sending these bytes.
    Closed(Vec<u8>),
    /// It was still open when the test's read timeout passed.
    StillOpen,
}

/// Reads until the server closes the connection (at most `limit` bytes).
pub fn wait_closed(s: &mut TcpStream, limit: usize) -> Closed {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Closed::Closed(got),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.len() > limit {
                    return Closed::Closed(got);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Closed::StillOpen
            }
            Err(_) => return Closed::Closed(got),
        }
    }
}
