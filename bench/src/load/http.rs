//! Framing HTTP/1.1 responses as they stream in, without allocating and
//! without keeping bodies: the generator needs each response's status, where
//! it ends, and whether the server will close the connection.
//!
//! [`ResponseParser::parse`] is fed whatever bytes a non-blocking read left
//! in the connection's buffer and says how many it consumed. A head is
//! consumed only once complete (parsed by `httparse`); body bytes are
//! consumed, and forgotten, as they arrive, so a buffer of
//! [`MAX_HEAD_BYTES`] is enough for any body size. Bodies are framed by
//! `Content-Length`, chunked transfer coding, or the end of the connection;
//! interim `1xx` responses are skipped. Anything that does not start like
//! `HTTP/1.x` is rejected at its first bytes, so a server speaking another
//! protocol is reported at once instead of waiting for a blank line that
//! never comes.

/// Largest response head the generator accepts.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest chunk-size or trailer line.
const MAX_LINE_BYTES: usize = 4 * 1024;
/// Most headers in one response.
const MAX_HEADERS: usize = 64;
/// Longest head remembered to recognise the next identical one.
const CACHED_HEAD_BYTES: usize = 256;

/// Why the bytes from a server are not an HTTP/1.x response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// The first bytes are not `HTTP/1.`.
    #[error("not an HTTP response (it starts with {0:?})")]
    NotHttp(String),
    /// The head does not parse.
    #[error("malformed HTTP response head: {0}")]
    Malformed(String),
    /// The head did not end within [`MAX_HEAD_BYTES`].
    #[error("response head longer than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    /// A chunk size or trailer line is malformed or too long.
    #[error("malformed chunked body: {0}")]
    BadChunk(&'static str),
}

/// A complete response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    /// Status code (never 1xx: interim responses are skipped).
    pub status: u16,
    /// The server will close the connection after it (`Connection: close`,
    /// an HTTP/1.0 response without keep-alive, or a close-delimited body).
    pub close: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Body { remaining: u64 },
    UntilClose,
    ChunkSize,
    ChunkData { remaining: u64 },
    ChunkDataEnd,
    Trailer,
}

/// The last final head parsed on a connection and what it meant. A server
/// answering alike sends the same head bytes again and again: a head equal
/// byte for byte means the same (status, framing, close), so it is
/// recognised with one comparison instead of parsed again.
#[derive(Debug, Clone)]
struct HeadCache {
    bytes: [u8; CACHED_HEAD_BYTES],
    /// 0: nothing cached.
    len: usize,
    has_body: bool,
    state: State,
    response: Response,
}

/// Frames consecutive responses on one connection.
#[derive(Debug, Clone)]
pub struct ResponseParser {
    state: State,
    current: Response,
    cache: HeadCache,
}

impl Default for ResponseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseParser {
    /// A parser at the start of a connection.
    pub fn new() -> Self {
        let response = Response {
            status: 0,
            close: false,
        };
        Self {
            state: State::Head,
            current: response,
            cache: HeadCache {
                bytes: [0; CACHED_HEAD_BYTES],
                len: 0,
                has_body: false,
                state: State::Head,
                response,
            },
        }
    }

    /// True between responses (nothing of the next one seen yet).
    pub fn is_between_responses(&self) -> bool {
        self.state == State::Head
    }

    /// Consumes bytes of `buf` (the unconsumed input, in order) and returns
    /// how many, and the response they completed, if any. `has_body` is
    /// false for the response to a `HEAD` request. Call again after a
    /// completed response: `buf` may hold the next one (pipelining).
    pub fn parse(
        &mut self,
        buf: &[u8],
        has_body: bool,
    ) -> Result<(usize, Option<Response>), ResponseError> {
        let mut used = 0;
        loop {
            let rest = &buf[used..];
            match self.state {
                State::Head => {
                    let Some((n, interim)) = self.parse_head(rest, has_body)? else {
                        return Ok((used, None));
                    };
                    used += n;
                    if interim {
                        continue;
                    }
                    if self.state == State::Head {
                        return Ok((used, Some(self.current)));
                    }
                }
                State::Body { remaining } => {
                    let take = remaining.min(rest.len() as u64);
                    used += take as usize;
                    if take == remaining {
                        self.state = State::Head;
                        return Ok((used, Some(self.current)));
                    }
                    self.state = State::Body {
                        remaining: remaining - take,
                    };
                    return Ok((used, None));
                }
                State::UntilClose => return Ok((buf.len(), None)),
                State::ChunkSize => {
                    let Some((line, n)) = take_line(rest)? else {
                        return Ok((used, None));
                    };
                    used += n;
                    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
                    let digits = std::str::from_utf8(digits)
                        .map_err(|_| ResponseError::BadChunk("chunk size is not text"))?
                        .trim();
                    let size = u64::from_str_radix(digits, 16)
                        .map_err(|_| ResponseError::BadChunk("chunk size is not hexadecimal"))?;
                    self.state = if size == 0 {
                        State::Trailer
                    } else {
                        State::ChunkData { remaining: size }
                    };
                }
                State::ChunkData { remaining } => {
                    let take = remaining.min(rest.len() as u64);
                    used += take as usize;
                    if take < remaining {
                        self.state = State::ChunkData {
                            remaining: remaining - take,
                        };
                        return Ok((used, None));
                    }
                    self.state = State::ChunkDataEnd;
                }
                State::ChunkDataEnd => match rest {
                    [] | [b'\r'] => return Ok((used, None)),
                    [b'\r', b'\n', ..] => {
                        used += 2;
                        self.state = State::ChunkSize;
                    }
                    [b'\n', ..] => {
                        used += 1;
                        self.state = State::ChunkSize;
                    }
                    _ => return Err(ResponseError::BadChunk("no line break after chunk data")),
                },
                State::Trailer => {
                    let Some((line, n)) = take_line(rest)? else {
                        return Ok((used, None));
                    };
                    used += n;
                    if line.is_empty() {
                        self.state = State::Head;
                        return Ok((used, Some(self.current)));
                    }
                }
            }
        }
    }

    /// The connection reached its end: completes a close-delimited body.
    /// Returns `None` if a response was cut short (or none had begun).
    pub fn finish_at_eof(&mut self) -> Option<Response> {
        if self.state == State::UntilClose {
            self.state = State::Head;
            Some(self.current)
        } else {
            None
        }
    }

    /// Parses a head at the start of `buf`: `None` while incomplete, else
    /// the bytes it took and whether it was an interim (1xx) response. Sets
    /// the state for the body.
    fn parse_head(
        &mut self,
        buf: &[u8],
        has_body: bool,
    ) -> Result<Option<(usize, bool)>, ResponseError> {
        // A head ends at its first blank line, so the same bytes are the
        // same complete head, whatever follows them.
        let cached = &self.cache;
        if cached.len > 0
            && cached.has_body == has_body
            && buf.get(..cached.len) == Some(&cached.bytes[..cached.len])
        {
            self.state = cached.state;
            self.current = cached.response;
            return Ok(Some((cached.len, false)));
        }
        // Reject other protocols at their first bytes.
        const PREFIX: &[u8] = b"HTTP/1.";
        let n = buf.len().min(PREFIX.len());
        if buf[..n] != PREFIX[..n] {
            let shown = String::from_utf8_lossy(&buf[..buf.len().min(32)]).into_owned();
            return Err(ResponseError::NotHttp(shown));
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let head_len = match response.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
                return Err(ResponseError::HeadTooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(ResponseError::Malformed(e.to_string())),
        };
        let status = response.code.unwrap_or(0);
        if (100..200).contains(&status) {
            if status == 101 {
                return Err(ResponseError::Malformed(
                    "the server switched protocols (101)".into(),
                ));
            }
            return Ok(Some((head_len, true)));
        }
        let http10 = response.version == Some(0);
        let mut content_length: Option<u64> = None;
        let mut chunked = false;
        let mut close = http10;
        for h in response.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let len = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or_else(|| ResponseError::Malformed("bad Content-Length".into()))?;
                if content_length.is_some_and(|l| l != len) {
                    return Err(ResponseError::Malformed(
                        "conflicting Content-Length".into(),
                    ));
                }
                content_length = Some(len);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
                if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    chunked = true;
                } else {
                    return Err(ResponseError::Malformed(
                        "a transfer coding other than chunked".into(),
                    ));
                }
            } else if h.name.eq_ignore_ascii_case("connection") {
                for token in h.value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") && http10 {
                        close = false;
                    }
                }
            }
        }
        let bodiless = !has_body || status == 204 || status == 304;
        self.state = if bodiless {
            State::Head
        } else if chunked {
            State::ChunkSize
        } else {
            match content_length {
                Some(0) => State::Head,
                Some(len) => State::Body { remaining: len },
                None => {
                    close = true;
                    State::UntilClose
                }
            }
        };
        self.current = Response { status, close };
        if head_len <= CACHED_HEAD_BYTES {
            self.cache.bytes[..head_len].copy_from_slice(&buf[..head_len]);
            self.cache.len = head_len;
            self.cache.has_body = has_body;
            self.cache.state = self.state;
            self.cache.response = self.current;
        }
        Ok(Some((head_len, false)))
    }
}

/// A line at the start of `buf` without its line break, and the bytes it
/// took with the break; `None` while the break has not arrived.
fn take_line(buf: &[u8]) -> Result<Option<(&[u8], usize)>, ResponseError> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) if i > MAX_LINE_BYTES => Err(ResponseError::BadChunk("line too long")),
        Some(i) => {
            let line = &buf[..i];
            Ok(Some((line.strip_suffix(b"\r").unwrap_or(line), i + 1)))
        }
        None if buf.len() > MAX_LINE_BYTES => Err(ResponseError::BadChunk("line too long")),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes the way a connection buffer
    /// would (unconsumed bytes stay in front), collecting responses.
    fn feed(input: &[u8], step: usize, has_body: bool) -> Result<Vec<Response>, ResponseError> {
        let mut p = ResponseParser::new();
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            buf.extend_from_slice(piece);
            loop {
                let (n, done) = p.parse(&buf, has_body)?;
                buf.drain(..n);
                match done {
                    Some(r) => out.push(r),
                    None => break,
                }
            }
        }
        Ok(out)
    }

    const OK: Response = Response {
        status: 200,
        close: false,
    };

    #[test]
    fn content_length_responses_pipelined_in_any_split() {
        let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi";
        for step in [1, 2, 7, 64, wire.len()] {
            let got = feed(wire, step, true).unwrap();
            assert_eq!(
                got,
                vec![
                    OK,
                    Response {
                        status: 503,
                        close: false
                    },
                    OK
                ],
                "step {step}"
            );
        }
    }

    #[test]
    fn chunked_bodies_with_extensions_and_trailers() {
        let wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nX-T: 1\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n";
        for step in [1, 3, 1000] {
            assert_eq!(feed(wire, step, true).unwrap(), vec![OK, OK], "step {step}");
        }
        assert!(matches!(
            feed(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                100,
                true
            ),
            Err(ResponseError::BadChunk(_))
        ));
        assert!(matches!(
            feed(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
                100,
                true
            ),
            Err(ResponseError::BadChunk(_))
        ));
        assert!(matches!(
            feed(
                &[
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".as_slice(),
                    &[b'1'; 5000]
                ]
                .concat(),
                100,
                true
            ),
            Err(ResponseError::BadChunk("line too long"))
        ));
    }

    #[test]
    fn interim_bodiless_and_close_delimited() {
        let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n";
        let got = feed(wire, 5, true).unwrap();
        assert_eq!(
            got.iter().map(|r| r.status).collect::<Vec<_>>(),
            vec![204, 304]
        );
        // HEAD: the Content-Length describes a body that is not sent.
        let got = feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", 5, false).unwrap();
        assert_eq!(got, vec![OK]);
        // No framing: the body runs to the end of the connection.
        let mut p = ResponseParser::new();
        let wire = b"HTTP/1.0 200 OK\r\n\r\nbody bytes";
        assert_eq!(p.parse(wire, true).unwrap(), (wire.len(), None));
        assert_eq!(p.parse(b"more", true).unwrap(), (4, None));
        assert_eq!(
            p.finish_at_eof(),
            Some(Response {
                status: 200,
                close: true
            })
        );
        assert_eq!(p.finish_at_eof(), None);
    }

    #[test]
    fn connection_close_and_http10_keep_alive() {
        let got = feed(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            9,
            true,
        )
        .unwrap();
        assert!(got[0].close);
        let got = feed(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", 9, true).unwrap();
        assert!(got[0].close);
        let got = feed(
            b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
            9,
            true,
        )
        .unwrap();
        assert!(!got[0].close);
    }

    #[test]
    fn a_repeated_head_is_recognised_and_a_changed_one_is_parsed() {
        let mut p = ResponseParser::new();
        let a = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";
        let b = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
        let close = b"HTTP/1.1 503 Busy\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        for _ in 0..3 {
            assert_eq!(p.parse(a, true).unwrap(), (a.len(), Some(OK)));
        }
        // Same status, other framing: parsed afresh, not taken from the cache.
        assert_eq!(p.parse(b, true).unwrap(), (b.len(), Some(OK)));
        assert_eq!(p.parse(a, true).unwrap(), (a.len(), Some(OK)));
        let busy = Response {
            status: 503,
            close: true,
        };
        assert_eq!(p.parse(close, true).unwrap(), (close.len(), Some(busy)));
        assert_eq!(p.parse(close, true).unwrap(), (close.len(), Some(busy)));
        // The same head answering HEAD has no body.
        let head_len = a.len() - 2;
        assert_eq!(p.parse(a, true).unwrap(), (a.len(), Some(OK)));
        assert_eq!(p.parse(a, false).unwrap(), (head_len, Some(OK)));
        assert_eq!(p.parse(a, false).unwrap(), (head_len, Some(OK)));
        // A cached head arriving in pieces, body split too.
        assert_eq!(p.parse(a, true).unwrap(), (a.len(), Some(OK)));
        assert_eq!(p.parse(&a[..10], true).unwrap(), (0, None));
        assert_eq!(p.parse(&a[..head_len], true).unwrap(), (head_len, None));
        assert_eq!(p.parse(b"h", true).unwrap(), (1, None));
        assert_eq!(p.parse(b"i", true).unwrap(), (1, Some(OK)));
        // A head longer than the cache holds is parsed every time.
        let mut long = b"HTTP/1.1 200 OK\r\nX-Pad: ".to_vec();
        long.resize(long.len() + 300, b'p');
        long.extend_from_slice(b"\r\nContent-Length: 1\r\n\r\n!");
        for _ in 0..2 {
            assert_eq!(p.parse(&long, true).unwrap(), (long.len(), Some(OK)));
        }
        assert_eq!(p.parse(a, true).unwrap(), (a.len(), Some(OK)));
        // Garbage after a cached head is still rejected.
        assert!(matches!(
            p.parse(b"SSH-2.0", true),
            Err(ResponseError::NotHttp(_))
        ));
    }

    #[test]
    fn garbage_is_rejected_at_its_first_bytes() {
        let mut p = ResponseParser::new();
        assert!(
            matches!(p.parse(b"SSH-2.0-OpenSSH", true), Err(ResponseError::NotHttp(s)) if s.starts_with("SSH"))
        );
        let mut p = ResponseParser::new();
        assert!(matches!(
            p.parse(b"x", true),
            Err(ResponseError::NotHttp(_))
        ));
        // A prefix of "HTTP/1." is not yet an error.
        let mut p = ResponseParser::new();
        assert_eq!(p.parse(b"HTT", true).unwrap(), (0, None));
        let mut p = ResponseParser::new();
        assert!(matches!(
            p.parse(b"HTTP/1.1 abc\r\n\r\n", true),
            Err(ResponseError::Malformed(_))
        ));
        let mut p = ResponseParser::new();
        assert!(matches!(
            p.parse(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", true),
            Err(ResponseError::Malformed(_))
        ));
        let mut p = ResponseParser::new();
        assert!(matches!(
            p.parse(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                true
            ),
            Err(ResponseError::Malformed(_))
        ));
        let mut p = ResponseParser::new();
        assert!(matches!(
            p.parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", true),
            Err(ResponseError::Malformed(_))
        ));
        let mut big = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        big.resize(MAX_HEAD_BYTES + 1, b'a');
        let mut p = ResponseParser::new();
        assert_eq!(p.parse(&big, true), Err(ResponseError::HeadTooLarge));
    }
}
