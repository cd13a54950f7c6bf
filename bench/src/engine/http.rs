//! The benchmark's HTTP/1.1 client: blocking `std::net`, one keep-alive
//! connection, one request at a time, as a plain user's client would be.
//!
//! A request is built once per case ([`build_request`]) and written whole;
//! the response is read into a reused buffer and framed by its
//! `Content-Length` ([`parse_response_head`]): no allocation per round trip.
//! Every read and write has a timeout, so a stuck server is an error, never
//! a hang.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Largest response head the client accepts.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest response body the client accepts.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Why a response could not be framed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// The status line or a header is not HTTP/1.x.
    #[error("malformed HTTP response: {0}")]
    Malformed(&'static str),
    /// The head did not end within [`MAX_HEAD_BYTES`].
    #[error("response head longer than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    /// `Content-Length` is above [`MAX_BODY_BYTES`].
    #[error("response body of {0} bytes is more than the client's {MAX_BODY_BYTES}")]
    BodyTooLarge(u64),
    /// A chunked (or otherwise unframed) response.
    #[error("response without Content-Length (chunked or close-delimited) is not supported")]
    Unframed,
}

/// Why a round trip failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection could not be made.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The server.
        addr: SocketAddr,
        /// The cause.
        source: io::Error,
    },
    /// No progress within the connection's timeout.
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    /// The server closed the connection before the response was complete.
    #[error("the server closed the connection")]
    Closed,
    /// Reading or writing failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The response could not be framed.
    #[error(transparent)]
    Response(#[from] ResponseError),
}

/// The framing of a response: its status and where its body lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// Bytes of the status line and headers, the blank line included.
    pub head_len: usize,
    /// Bytes of the body.
    pub content_length: usize,
}

impl ResponseHead {
    /// Bytes of the whole response.
    pub fn total_len(&self) -> usize {
        self.head_len + self.content_length
    }
}

/// A request's bytes: `METHOD PATH HTTP/1.1`, `Host`, `Content-Length`
/// (for a body or a POST) and the body.
pub fn build_request(method: &str, path: &str, host: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n").into_bytes();
    if !body.is_empty() || method == "POST" {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// The time a response's `Server-Timing` header accounts for, in ns: the
/// sum of its `dur` values (milliseconds, as the header's specification
/// has them; the engine writes queue, exec and overhead at µs resolution).
/// `None` without the header or with a `dur` that is not a number.
pub fn server_timing_ns(head: &[u8]) -> Option<u64> {
    let head = std::str::from_utf8(head).ok()?;
    let value = head.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("server-timing")
            .then_some(value)
    })?;
    let mut total_ms = 0.0;
    for metric in value.split(',') {
        for param in metric.split(';').skip(1) {
            if let Some(dur) = param.trim().strip_prefix("dur=") {
                total_ms += dur.trim().parse::<f64>().ok()?;
            }
        }
    }
    Some((total_ms * 1e6).round() as u64)
}

/// Frames the response at the start of `buf`: `Ok(None)` while its head is
/// incomplete.
pub fn parse_response_head(buf: &[u8]) -> Result<Option<ResponseHead>, ResponseError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD_BYTES {
            return Err(ResponseError::HeadTooLarge);
        }
        return Ok(None);
    };
    let head_len = end + 4;
    if head_len > MAX_HEAD_BYTES {
        return Err(ResponseError::HeadTooLarge);
    }
    let head =
        std::str::from_utf8(&buf[..end]).map_err(|_| ResponseError::Malformed("not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(ResponseError::Malformed("status line is not HTTP/1.x"));
    }
    let status: u16 = parts
        .next()
        .filter(|s| s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or(ResponseError::Malformed("bad status code"))?;
    let mut content_length = None;
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or(ResponseError::Malformed("header line without ':'"))?;
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            let len: u64 = value
                .parse()
                .map_err(|_| ResponseError::Malformed("bad Content-Length"))?;
            if content_length.is_some_and(|l| l != len) {
                return Err(ResponseError::Malformed("conflicting Content-Length"));
            }
            content_length = Some(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ResponseError::Unframed);
        }
    }
    let len = content_length.ok_or(ResponseError::Unframed)?;
    let content_length = usize::try_from(len)
        .ok()
        .filter(|&l| l <= MAX_BODY_BYTES)
        .ok_or(ResponseError::BodyTooLarge(len))?;
    Ok(Some(ResponseHead {
        status,
        head_len,
        content_length,
    }))
}

/// A response, borrowed from the client's buffer.
#[derive(Debug)]
pub struct Reply<'a> {
    /// The status code.
    pub status: u16,
    /// The status line and headers, the blank line included.
    pub head: &'a [u8],
    /// The body.
    pub body: &'a [u8],
    /// Bytes of the whole response on the wire.
    pub wire_len: usize,
}

/// One keep-alive connection.
pub struct HttpClient {
    stream: TcpStream,
    timeout: Duration,
    buf: Vec<u8>,
    /// Bytes of `buf` holding received data.
    filled: usize,
    /// Bytes at the front of `buf` that belong to the previous response.
    consumed: usize,
}

impl HttpClient {
    /// Connects to `addr` with `TCP_NODELAY`; every later read and write
    /// gives up after `timeout`.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self, ClientError> {
        let connect_err = |source| ClientError::Connect { addr, source };
        let stream = TcpStream::connect_timeout(&addr, timeout).map_err(connect_err)?;
        stream.set_nodelay(true).map_err(connect_err)?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(connect_err)?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(connect_err)?;
        Ok(Self {
            stream,
            timeout,
            buf: vec![0; 16 * 1024],
            filled: 0,
            consumed: 0,
        })
    }

    /// Sends `request` (a whole request, see [`build_request`]) and reads
    /// its response.
    pub fn round_trip(&mut self, request: &[u8]) -> Result<Reply<'_>, ClientError> {
        self.discard_consumed();
        self.stream.write_all(request).map_err(|e| self.map_io(e))?;
        let head = self.read_response()?;
        self.consumed = head.total_len();
        Ok(Reply {
            status: head.status,
            head: &self.buf[..head.head_len],
            body: &self.buf[head.head_len..head.total_len()],
            wire_len: head.total_len(),
        })
    }

    /// Sends `request` without reading its response (read it later with
    /// [`read_reply_status`](Self::read_reply_status)).
    pub fn send_only(&mut self, request: &[u8]) -> Result<(), ClientError> {
        self.discard_consumed();
        self.stream.write_all(request).map_err(|e| self.map_io(e))
    }

    /// Reads the next response and returns its status.
    pub fn read_reply_status(&mut self) -> Result<u16, ClientError> {
        self.discard_consumed();
        let head = self.read_response()?;
        self.consumed = head.total_len();
        Ok(head.status)
    }

    /// Closes the connection with a reset (`SO_LINGER` 0) rather than a
    /// FIN: this side keeps no TIME-WAIT entry for it.
    pub fn close_with_reset(self) -> io::Result<()> {
        super::sys::set_linger_zero(&self.stream)
    }

    /// Moves bytes past the previous response (a server's unsolicited
    /// extra bytes) to the front.
    fn discard_consumed(&mut self) {
        if self.consumed > 0 {
            self.buf.copy_within(self.consumed..self.filled, 0);
            self.filled -= self.consumed;
            self.consumed = 0;
        }
    }

    fn read_response(&mut self) -> Result<ResponseHead, ClientError> {
        let mut head = None;
        loop {
            if head.is_none() {
                head = parse_response_head(&self.buf[..self.filled])?;
            }
            if let Some(h) = head {
                if self.filled >= h.total_len() {
                    return Ok(h);
                }
                if self.buf.len() < h.total_len() {
                    self.buf.resize(h.total_len(), 0);
                }
            } else if self.filled == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
            let n = self
                .stream
                .read(&mut self.buf[self.filled..])
                .map_err(|e| self.map_io(e))?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            self.filled += n;
        }
    }

    fn map_io(&self, e: io::Error) -> ClientError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                ClientError::TimedOut(self.timeout)
            }
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe => ClientError::Closed,
            _ => ClientError::Io(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn builds_requests() {
        let r = build_request("POST", "/function/echo", "127.0.0.1:1", b"abc");
        assert_eq!(
            r,
            b"POST /function/echo HTTP/1.1\r\nHost: 127.0.0.1:1\r\nContent-Length: 3\r\n\r\nabc"
        );
        let g = build_request("GET", "/healthz", "h", b"");
        assert_eq!(g, b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n");
        let empty_post = build_request("POST", "/f", "h", b"");
        assert!(empty_post.ends_with(b"Content-Length: 0\r\n\r\n"));
    }

    #[test]
    fn frames_responses() {
        let resp = b"HTTP/1.1 200 OK\r\nContent-Type: x\r\ncontent-length: 5\r\n\r\nhello";
        let head = parse_response_head(resp).unwrap().unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.content_length, 5);
        assert_eq!(head.total_len(), resp.len());
        assert_eq!(&resp[head.head_len..], b"hello");
        // Incomplete heads wait for more.
        assert_eq!(parse_response_head(&resp[..20]).unwrap(), None);
        assert_eq!(parse_response_head(b"").unwrap(), None);
        // A status without a reason phrase, HTTP/1.0.
        let h = parse_response_head(b"HTTP/1.0 503\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.status, h.content_length), (503, 0));
    }

    #[test]
    fn server_timing_sums_the_durations() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\
            server-timing: queue;dur=0.001, exec;dur=0.012, overhead;dur=0.003\r\n\r\n";
        assert_eq!(server_timing_ns(head), Some(16_000));
        assert_eq!(
            server_timing_ns(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            None
        );
        assert_eq!(
            server_timing_ns(b"HTTP/1.1 200 OK\r\nServer-Timing: exec;dur=x\r\n\r\n"),
            None
        );
        // A metric without a duration counts for nothing.
        assert_eq!(
            server_timing_ns(b"HTTP/1.1 200 OK\r\nServer-Timing: miss, exec;dur=2\r\n\r\n"),
            Some(2_000_000)
        );
    }

    #[test]
    fn rejects_malformed_and_unframed_responses() {
        let err = |bytes: &[u8]| parse_response_head(bytes).unwrap_err();
        assert!(matches!(
            err(b"SIP/2.0 200 OK\r\n\r\n"),
            ResponseError::Malformed(_)
        ));
        assert!(matches!(
            err(b"HTTP/1.1 2x0 OK\r\n\r\n"),
            ResponseError::Malformed(_)
        ));
        assert!(matches!(
            err(b"HTTP/1.1 2000 OK\r\n\r\n"),
            ResponseError::Malformed(_)
        ));
        assert!(matches!(
            err(b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n"),
            ResponseError::Malformed(_)
        ));
        assert!(matches!(
            err(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"),
            ResponseError::Malformed(_)
        ));
        assert!(matches!(
            err(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            ResponseError::Malformed(_)
        ));
        assert_eq!(err(b"HTTP/1.1 200 OK\r\n\r\n"), ResponseError::Unframed);
        assert_eq!(
            err(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            ResponseError::Unframed
        );
        assert_eq!(
            err(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n"),
            ResponseError::BodyTooLarge(99_999_999_999)
        );
        assert_eq!(
            err(&vec![b'a'; MAX_HEAD_BYTES + 1]),
            ResponseError::HeadTooLarge
        );
        assert!(matches!(
            err(b"HTTP/1.1 200 \xff\r\nContent-Length: 0\r\n\r\n"),
            ResponseError::Malformed(_)
        ));
    }

    /// A one-connection server thread that answers each request with the
    /// next canned reply (split into small writes), then closes.
    fn canned_server(replies: Vec<Vec<u8>>) -> (SocketAddr, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let thread = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            for reply in replies {
                let _ = conn.read(&mut buf).unwrap();
                for piece in reply.chunks(7) {
                    conn.write_all(piece).unwrap();
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        (addr, thread)
    }

    #[test]
    fn round_trips_over_one_connection_and_reports_a_close() {
        let big = vec![b'x'; 40_000];
        let mut big_reply =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", big.len()).into_bytes();
        big_reply.extend_from_slice(&big);
        let (addr, server) = canned_server(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi".to_vec(),
            big_reply,
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort".to_vec(),
        ]);
        let mut client = HttpClient::connect(addr, Duration::from_secs(10)).unwrap();
        let req = build_request("POST", "/function/echo", "x", b"hi");
        let reply = client.round_trip(&req).unwrap();
        assert_eq!((reply.status, reply.body), (200, &b"hi"[..]));
        assert_eq!(reply.wire_len, 40);
        let reply = client.round_trip(&req).unwrap();
        assert_eq!((reply.status, reply.body.len()), (200, 40_000));
        assert_eq!(client.round_trip(&req).unwrap().status, 404);
        // The server closes mid-body.
        assert!(matches!(client.round_trip(&req), Err(ClientError::Closed)));
        server.join().unwrap();
    }

    #[test]
    fn a_reset_close_resets_the_peer() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = HttpClient::connect(addr, Duration::from_secs(10)).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.close_with_reset().unwrap();
        let mut buf = [0u8; 16];
        let err = server.read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    }

    #[test]
    fn a_silent_server_times_out_and_a_closed_port_refuses() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = HttpClient::connect(addr, Duration::from_millis(50)).unwrap();
        let err = client.round_trip(b"GET / HTTP/1.1\r\n\r\n").unwrap_err();
        assert!(matches!(err, ClientError::TimedOut(_)), "{err}");
        drop(client);
        drop(listener);
        let err = HttpClient::connect(addr, Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    }
}
