//! A minimal HTTP/1.1 server side: request parsing (Content-Length and chunked bodies,
//! keep-alive) and response writing (fixed-length or chunked streaming bodies).
//!
//! Hand-written on std so that the mock works from any context (sync tests, async
//! tests, benches) without a runtime, and answers in microseconds.

use std::io::{self, BufRead, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Upper bound on the request head, as real servers have one.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Upper bound on a request body (the mock is for tests; 64 MiB is plenty).
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// One parsed request.
pub(crate) struct Request {
    pub method: String,
    pub path: String,
    /// Header names lowercased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the client asked to close the connection after this exchange.
    pub fn wants_close(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Reads one request; `Ok(None)` when the peer closed the connection between requests.
pub(crate) fn read_request<R: BufRead>(reader: &mut R) -> io::Result<Option<Request>> {
    let mut line = String::new();
    // Skip stray empty lines before a request line (RFC 9112 §2.2 allows it).
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if !line.trim_end().is_empty() {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let method = parts
        .next()
        .ok_or_else(|| bad("empty request line"))?
        .to_string();
    let path = parts
        .next()
        .ok_or_else(|| bad("request line without a path"))?
        .to_string();

    let mut headers = Vec::new();
    let mut head_bytes = line.len();
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n == 0 {
            return Err(bad("connection closed inside the request head"));
        }
        head_bytes += n;
        if head_bytes > MAX_HEAD_BYTES {
            return Err(bad("request head too large"));
        }
        let trimmed = line.trim_end_matches(['\r', '\n']);
        if trimmed.is_empty() {
            break;
        }
        if let Some((name, value)) = trimmed.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let mut req = Request {
        method,
        path,
        headers,
        body: Vec::new(),
    };
    let chunked = req
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        req.body = read_chunked(reader)?;
    } else if let Some(len) = req.header("content-length") {
        let len: usize = len.parse().map_err(|_| bad("bad content-length"))?;
        if len > MAX_BODY_BYTES {
            return Err(bad("request body too large"));
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        req.body = body;
    }
    Ok(Some(req))
}

fn read_chunked<R: BufRead>(reader: &mut R) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let size_str = line.trim().split(';').next().unwrap_or("");
        let size =
            usize::from_str_radix(size_str, 16).map_err(|_| bad("bad chunk size in request"))?;
        if body.len() + size > MAX_BODY_BYTES {
            return Err(bad("request body too large"));
        }
        if size == 0 {
            // Trailers until the empty line.
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf)?;
    }
}

/// How a streamed body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamEnd {
    /// The terminating zero-length chunk is sent: a well-formed HTTP body.
    Complete,
    /// The connection is closed without the terminating chunk.
    Cut,
    /// Nothing more is sent; the connection stays open until the peer closes it or the
    /// server stops.
    Stall,
}

/// A response to write.
pub(crate) enum Response {
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        /// Send only this many bytes of the body, then close (a cut non-streaming reply).
        cut_at: Option<usize>,
    },
    Stream {
        headers: Vec<(String, String)>,
        /// Each piece becomes one HTTP chunk (one SSE event or one NDJSON line).
        pieces: Vec<Vec<u8>>,
        end: StreamEnd,
    },
    /// A chunked 200 that sends `first`, then `repeat` every `interval`, until the peer
    /// goes away or the server stops: a never-ending stream.
    Endless {
        headers: Vec<(String, String)>,
        first: Vec<Vec<u8>>,
        repeat: Vec<u8>,
        interval: Duration,
    },
}

pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        529 => "Site Overloaded",
        _ => "Unknown",
    }
}

fn head(status: u16, headers: &[(String, String)], extra: &str) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in headers {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    }
    out.push_str(extra);
    out.push_str("\r\n");
    out.into_bytes()
}

fn push_chunk(buf: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    buf.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    buf.extend_from_slice(data);
    buf.extend_from_slice(b"\r\n");
}

/// What the connection loop does after a response.
#[derive(PartialEq, Eq)]
pub(crate) enum After {
    KeepAlive,
    Close,
}

/// Writes `response`. With `delay` each streamed piece is flushed on its own and
/// followed by a pause; without it the whole response goes out in one write.
pub(crate) fn write_response(
    stream: &mut TcpStream,
    response: Response,
    delay: Duration,
    stop: &AtomicBool,
) -> io::Result<After> {
    match response {
        Response::Full {
            status,
            headers,
            body,
            cut_at,
        } => {
            let mut out = head(
                status,
                &headers,
                &format!("content-length: {}\r\n", body.len()),
            );
            match cut_at {
                Some(n) => {
                    out.extend_from_slice(&body[..n.min(body.len())]);
                    stream.write_all(&out)?;
                    stream.flush()?;
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    Ok(After::Close)
                }
                None => {
                    out.extend_from_slice(&body);
                    stream.write_all(&out)?;
                    Ok(After::KeepAlive)
                }
            }
        }
        Response::Endless {
            headers,
            first,
            repeat,
            interval,
        } => {
            let mut out = head(200, &headers, "transfer-encoding: chunked\r\n");
            for piece in &first {
                push_chunk(&mut out, piece);
            }
            stream.write_all(&out)?;
            stream.flush()?;
            let mut chunk = Vec::new();
            push_chunk(&mut chunk, &repeat);
            // Many repeats per write when there is no pause, so the flood is fast.
            let batch = if interval.is_zero() {
                chunk.repeat(64)
            } else {
                chunk
            };
            while !stop.load(Ordering::Relaxed) {
                if stream.write_all(&batch).is_err() {
                    break;
                }
                if !interval.is_zero() {
                    std::thread::sleep(interval);
                }
            }
            let _ = stream.shutdown(std::net::Shutdown::Both);
            Ok(After::Close)
        }
        Response::Stream {
            headers,
            pieces,
            end,
        } => {
            let mut out = head(200, &headers, "transfer-encoding: chunked\r\n");
            if delay.is_zero() {
                for piece in &pieces {
                    push_chunk(&mut out, piece);
                }
                if end == StreamEnd::Complete {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
                stream.write_all(&out)?;
            } else {
                stream.write_all(&out)?;
                for piece in &pieces {
                    let mut buf = Vec::with_capacity(piece.len() + 16);
                    push_chunk(&mut buf, piece);
                    stream.write_all(&buf)?;
                    stream.flush()?;
                    std::thread::sleep(delay);
                    if stop.load(Ordering::Relaxed) {
                        return Ok(After::Close);
                    }
                }
                if end == StreamEnd::Complete {
                    stream.write_all(b"0\r\n\r\n")?;
                }
            }
            stream.flush()?;
            match end {
                StreamEnd::Complete => Ok(After::KeepAlive),
                StreamEnd::Cut => {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    Ok(After::Close)
                }
                StreamEnd::Stall => {
                    stall(stream, stop);
                    Ok(After::Close)
                }
            }
        }
    }
}

/// Holds the connection open, sending nothing, until the peer closes it or the server
/// stops.
fn stall(stream: &mut TcpStream, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = [0u8; 1024];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => {
            }
            Err(_) => break,
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}
