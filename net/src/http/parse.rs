//! Incremental request parser (sans-IO): turns the unparsed bytes at the
//! front of a connection's input buffer into request boundaries, without
//! copying and without allocating.
//!
//! The head is parsed by `httparse` each time more bytes arrive until it is
//! complete (bounded by `max_header_bytes`, so the re-parsing is bounded
//! too); header positions are recorded as offsets ([`Span`]s) relative to the
//! request's first byte, so they survive the buffer being compacted while a
//! body is still arriving. A `Content-Length` body is a plain range; a chunked
//! body is de-chunked in place: chunk data is moved down over the chunk-size
//! lines as it arrives, so the decoded body ends up contiguous right after
//! the head and never needs more room than the raw bytes did.

use std::ops::Range;

use super::Method;

/// Header fields per request at most (more: 431).
pub(crate) const MAX_HEADERS: usize = 64;
/// Longest chunk-size line (size, extensions, CRLF) accepted.
pub(crate) const MAX_CHUNK_LINE: usize = 1024;

/// A byte range relative to the first byte of the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    start: u32,
    len: u32,
}

impl Span {
    fn of(part: &[u8], whole: &[u8]) -> Self {
        // `part` is a subslice of `whole` (httparse hands out views into the
        // buffer it parsed); heads are at most `max_header_bytes` long, far
        // below u32::MAX.
        let start = part.as_ptr() as usize - whole.as_ptr() as usize;
        Self {
            start: start as u32,
            len: part.len() as u32,
        }
    }

    pub(crate) fn slice(self, buf: &[u8]) -> &[u8] {
        let start = self.start as usize;
        buf.get(start..start + self.len as usize).unwrap_or(&[])
    }
}

/// Where one header field's name and value are.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeaderSpan {
    pub(crate) name: Span,
    pub(crate) value: Span,
}

/// What the server needs to know about a parsed head.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeadInfo {
    /// Bytes of the head, including leading empty lines and the final CRLF.
    pub(crate) head_len: usize,
    pub(crate) method: Method,
    pub(crate) method_name: Span,
    pub(crate) path: Span,
    pub(crate) query: Option<Span>,
    pub(crate) minor_version: u8,
    pub(crate) keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request.
    pub(crate) expect_continue: bool,
    pub(crate) content_length: Option<usize>,
    pub(crate) chunked: bool,
}

impl HeadInfo {
    fn has_body(&self) -> bool {
        self.chunked || self.content_length.unwrap_or(0) > 0
    }
}

/// A request the server answers itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RequestError {
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("request head larger than the limit of {limit} bytes")]
    HeaderTooLarge { limit: usize },
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("chunked trailer fields larger than the limit of {limit} bytes")]
    TrailersTooLarge { limit: usize },
    #[error("request body larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("unsupported Transfer-Encoding: only chunked is accepted")]
    UnsupportedTransferEncoding,
    #[error("unsupported Expect: only 100-continue is accepted")]
    ExpectationFailed,
    #[error("HTTP version not supported: only HTTP/1.0 and HTTP/1.1")]
    VersionNotSupported,
}

impl RequestError {
    pub(crate) fn status(self) -> u16 {
        match self {
            RequestError::Malformed(_) => 400,
            RequestError::HeaderTooLarge { .. }
            | RequestError::TooManyHeaders
            | RequestError::TrailersTooLarge { .. } => 431,
            RequestError::BodyTooLarge { .. } => 413,
            RequestError::UnsupportedTransferEncoding => 501,
            RequestError::ExpectationFailed => 417,
            RequestError::VersionNotSupported => 505,
        }
    }
}

/// The outcome of [`RequestParser::advance`].
#[derive(Clone, Debug)]
pub(crate) enum Progress {
    /// The bytes so far are a prefix of a request.
    NeedMore,
    /// The head is complete and announces a body: call
    /// [`RequestParser::set_body_limit`] before advancing again.
    HeadComplete(HeadInfo),
    /// A whole request: the head is `buf[..head.head_len]`, the (de-chunked)
    /// body `buf[body]`; the request used the first `consumed` bytes.
    Complete {
        head: HeadInfo,
        body: Range<usize>,
        consumed: usize,
    },
}

#[derive(Clone, Copy, Debug)]
enum ChunkPhase {
    /// Expecting a chunk-size line.
    Size,
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// After the last chunk: trailer fields until an empty line.
    Trailers,
}

/// In-place de-chunking state; offsets are relative to the request start.
#[derive(Clone, Copy, Debug)]
struct Dechunk {
    /// End of the decoded body so far (the body starts right after the head).
    decoded_end: usize,
    /// First raw byte not yet looked at.
    raw_pos: usize,
    phase: ChunkPhase,
    /// Trailer bytes seen, bounded by `max_header_bytes`.
    trailer_bytes: usize,
}

#[derive(Clone, Copy, Debug)]
enum State {
    Head,
    AwaitLimit(HeadInfo),
    Length {
        head: HeadInfo,
        len: usize,
    },
    Chunked {
        head: HeadInfo,
        limit: usize,
        dechunk: Dechunk,
    },
}

/// Per-connection parser state; see the module docs.
#[derive(Clone, Debug)]
pub(crate) struct RequestParser {
    state: State,
    max_header_bytes: usize,
}

impl RequestParser {
    pub(crate) fn new(max_header_bytes: usize) -> Self {
        Self {
            state: State::Head,
            max_header_bytes,
        }
    }

    /// Back to expecting a new request head (drops a request in progress).
    pub(crate) fn reset(&mut self) {
        self.state = State::Head;
    }

    /// No head has completed yet for the request in progress.
    pub(crate) fn in_head(&self) -> bool {
        matches!(self.state, State::Head)
    }

    /// How many buffered bytes the request in progress may need at most
    /// before the parser either completes it or rejects it: the input buffer
    /// never has to grow beyond this.
    pub(crate) fn buffer_need(&self) -> usize {
        match self.state {
            State::Head | State::AwaitLimit(_) => self.max_header_bytes,
            State::Length { head, len } => head.head_len.saturating_add(len),
            State::Chunked { head, limit, .. } => head
                .head_len
                .saturating_add(limit)
                .saturating_add(MAX_CHUNK_LINE.max(self.max_header_bytes)),
        }
    }

    /// Closes the gap a chunked body leaves in `buf` (the unparsed input, as
    /// given to [`advance`](Self::advance)): the chunk-size lines and CRLFs
    /// already read, between the decoded body and the raw bytes not yet
    /// looked at. Returns how many bytes at the end of `buf` are free now.
    /// Without it a body sent in small chunks needed buffer room for its
    /// framing too, and was refused although it was within its limit.
    pub(crate) fn compact(&mut self, buf: &mut [u8]) -> usize {
        let State::Chunked {
            ref mut dechunk, ..
        } = self.state
        else {
            return 0;
        };
        let gap = dechunk.raw_pos - dechunk.decoded_end;
        if gap > 0 {
            buf.copy_within(dechunk.raw_pos.min(buf.len()).., dechunk.decoded_end);
            dechunk.raw_pos = dechunk.decoded_end;
        }
        gap
    }

    /// Parses as far as `buf` (the unparsed input, starting at the request's
    /// first byte) allows. `spans` receives the header positions when a head
    /// completes. A chunked body is rewritten in place inside `buf`.
    pub(crate) fn advance(
        &mut self,
        buf: &mut [u8],
        spans: &mut Vec<HeaderSpan>,
    ) -> Result<Progress, RequestError> {
        match self.state {
            State::Head => {
                let Some(head) = parse_head(buf, spans, self.max_header_bytes)? else {
                    return Ok(Progress::NeedMore);
                };
                if head.has_body() {
                    self.state = State::AwaitLimit(head);
                    Ok(Progress::HeadComplete(head))
                } else {
                    Ok(Progress::Complete {
                        head,
                        body: head.head_len..head.head_len,
                        consumed: head.head_len,
                    })
                }
            }
            State::AwaitLimit(head) => Ok(Progress::HeadComplete(head)),
            State::Length { head, len } => {
                let end = head.head_len + len;
                if buf.len() < end {
                    return Ok(Progress::NeedMore);
                }
                self.state = State::Head;
                Ok(Progress::Complete {
                    head,
                    body: head.head_len..end,
                    consumed: end,
                })
            }
            State::Chunked {
                head,
                limit,
                ref mut dechunk,
            } => match dechunk.advance(buf, head.head_len, limit, self.max_header_bytes)? {
                None => Ok(Progress::NeedMore),
                Some((decoded_end, consumed)) => {
                    self.state = State::Head;
                    Ok(Progress::Complete {
                        head,
                        body: head.head_len..decoded_end,
                        consumed,
                    })
                }
            },
        }
    }

    /// Sets the body limit of the request whose head just completed; a
    /// `Content-Length` above it is rejected here, before any body byte is
    /// read.
    pub(crate) fn set_body_limit(&mut self, limit: usize) -> Result<(), RequestError> {
        let State::AwaitLimit(head) = self.state else {
            return Ok(());
        };
        if head.chunked {
            self.state = State::Chunked {
                head,
                limit,
                dechunk: Dechunk {
                    decoded_end: head.head_len,
                    raw_pos: head.head_len,
                    phase: ChunkPhase::Size,
                    trailer_bytes: 0,
                },
            };
            return Ok(());
        }
        let len = head.content_length.unwrap_or(0);
        if len > limit {
            self.state = State::Head;
            return Err(RequestError::BodyTooLarge { limit });
        }
        self.state = State::Length { head, len };
        Ok(())
    }
}

impl Dechunk {
    /// Returns `(decoded_end, consumed)` once the last chunk and the trailers
    /// are through.
    fn advance(
        &mut self,
        buf: &mut [u8],
        body_start: usize,
        limit: usize,
        max_trailer_bytes: usize,
    ) -> Result<Option<(usize, usize)>, RequestError> {
        loop {
            let avail = buf.get(self.raw_pos..).unwrap_or(&[]);
            match self.phase {
                ChunkPhase::Size => {
                    let Some(&first) = avail.first() else {
                        return Ok(None);
                    };
                    // httparse takes an empty size as 0; HTTP wants a digit.
                    if !first.is_ascii_hexdigit() {
                        return Err(RequestError::Malformed("bad chunk size"));
                    }
                    match httparse::parse_chunk_size(avail) {
                        Err(_) => return Err(RequestError::Malformed("bad chunk size")),
                        Ok(httparse::Status::Partial) => {
                            if avail.len() >= MAX_CHUNK_LINE {
                                return Err(RequestError::Malformed("chunk size line too long"));
                            }
                            return Ok(None);
                        }
                        Ok(httparse::Status::Complete((line, size))) => {
                            if line > MAX_CHUNK_LINE {
                                return Err(RequestError::Malformed("chunk size line too long"));
                            }
                            self.raw_pos += line;
                            if size == 0 {
                                self.phase = ChunkPhase::Trailers;
                                continue;
                            }
                            let decoded = (self.decoded_end - body_start) as u64;
                            if decoded.saturating_add(size) > limit as u64 {
                                return Err(RequestError::BodyTooLarge { limit });
                            }
                            self.phase = ChunkPhase::Data(size);
                        }
                    }
                }
                ChunkPhase::Data(left) => {
                    if avail.is_empty() {
                        return Ok(None);
                    }
                    // `left` fits: decoded + left <= limit, a usize.
                    let take = (left as usize).min(avail.len());
                    buf.copy_within(self.raw_pos..self.raw_pos + take, self.decoded_end);
                    self.decoded_end += take;
                    self.raw_pos += take;
                    let left = left - take as u64;
                    self.phase = if left == 0 {
                        ChunkPhase::DataEnd
                    } else {
                        ChunkPhase::Data(left)
                    };
                }
                ChunkPhase::DataEnd => {
                    if avail.len() < 2 {
                        if avail.first().is_some_and(|&b| b != b'\r') {
                            return Err(RequestError::Malformed("chunk data not followed by CRLF"));
                        }
                        return Ok(None);
                    }
                    if &avail[..2] != b"\r\n" {
                        return Err(RequestError::Malformed("chunk data not followed by CRLF"));
                    }
                    self.raw_pos += 2;
                    self.phase = ChunkPhase::Size;
                }
                ChunkPhase::Trailers => match find_crlf(avail) {
                    None => {
                        if self.trailer_bytes + avail.len() > max_trailer_bytes {
                            return Err(RequestError::TrailersTooLarge {
                                limit: max_trailer_bytes,
                            });
                        }
                        return Ok(None);
                    }
                    Some(0) => {
                        self.raw_pos += 2;
                        return Ok(Some((self.decoded_end, self.raw_pos)));
                    }
                    Some(line) => {
                        // Trailer fields are dropped (RFC 9112 §7.1.2 lets a
                        // recipient discard them).
                        self.trailer_bytes += line + 2;
                        if self.trailer_bytes > max_trailer_bytes {
                            return Err(RequestError::TrailersTooLarge {
                                limit: max_trailer_bytes,
                            });
                        }
                        self.raw_pos += line + 2;
                    }
                },
            }
        }
    }
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\r\n")
}

/// Parses a request head; `Ok(None)` while it is incomplete.
fn parse_head(
    buf: &[u8],
    spans: &mut Vec<HeaderSpan>,
    max_header_bytes: usize,
) -> Result<Option<HeadInfo>, RequestError> {
    // Uninitialised slots: httparse writes the ones it uses. Zeroing 64
    // headers (2 KiB) on every parse made a 3-header head cost 119 ns instead
    // of 76 ns (2-core dev VM, release, 2 M parses in a loop).
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= max_header_bytes {
                Err(RequestError::HeaderTooLarge {
                    limit: max_header_bytes,
                })
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::TooManyHeaders),
        Err(httparse::Error::Version) if names_an_http_version(buf) => {
            return Err(RequestError::VersionNotSupported)
        }
        Err(httparse::Error::Version) => return Err(RequestError::Malformed("bad HTTP version")),
        Err(httparse::Error::HeaderName) => return Err(RequestError::Malformed("bad header name")),
        Err(httparse::Error::HeaderValue) => {
            return Err(RequestError::Malformed("bad header value"))
        }
        Err(_) => return Err(RequestError::Malformed("bad request line")),
    };
    if head_len > max_header_bytes {
        return Err(RequestError::HeaderTooLarge {
            limit: max_header_bytes,
        });
    }
    let (Some(method_name), Some(target), Some(minor_version)) =
        (req.method, req.path, req.version)
    else {
        return Err(RequestError::Malformed("bad request line"));
    };
    if target.contains('#') {
        // A fragment is the client's own (RFC 9110 §4.2.5): never sent.
        return Err(RequestError::Malformed(
            "fragment (#) in the request target",
        ));
    }
    let target = origin_form(target);
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };

    let mut content_length: Option<usize> = None;
    let mut transfer_encoding = false;
    let mut chunked = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    let mut host = false;
    spans.clear();
    for h in req.headers.iter() {
        let value = h.value;
        if h.name.eq_ignore_ascii_case("content-length") {
            let len = parse_content_length(value)?;
            if content_length.is_some_and(|seen| seen != len) {
                return Err(RequestError::Malformed("conflicting Content-Length"));
            }
            content_length = Some(len);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if transfer_encoding {
                return Err(RequestError::UnsupportedTransferEncoding);
            }
            transfer_encoding = true;
            if value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                chunked = true;
            } else {
                return Err(RequestError::UnsupportedTransferEncoding);
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                }
            }
        } else if h.name.eq_ignore_ascii_case("host") {
            // RFC 9112 §3.2: which host is meant would be ambiguous.
            if host {
                return Err(RequestError::Malformed("more than one Host field"));
            }
            host = true;
        } else if h.name.eq_ignore_ascii_case("expect") && minor_version == 1 {
            // HTTP/1.0 peers never wait for 100 Continue: ignore Expect.
            if value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            } else {
                return Err(RequestError::ExpectationFailed);
            }
        }
        spans.push(HeaderSpan {
            name: Span::of(h.name.as_bytes(), buf),
            value: Span::of(value, buf),
        });
    }
    if transfer_encoding && minor_version == 0 {
        return Err(RequestError::Malformed("Transfer-Encoding in HTTP/1.0"));
    }
    if transfer_encoding && content_length.is_some() {
        // Request smuggling defence (RFC 9112 §6.3).
        return Err(RequestError::Malformed(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    let keep_alive = if minor_version == 1 {
        !close
    } else {
        keep_alive_token && !close
    };
    Ok(Some(HeadInfo {
        head_len,
        method: Method::from_name(method_name),
        method_name: Span::of(method_name.as_bytes(), buf),
        path: Span::of(path.as_bytes(), buf),
        query: query.map(|q| Span::of(q.as_bytes(), buf)),
        minor_version,
        keep_alive,
        expect_continue: expect_continue && (chunked || content_length.unwrap_or(0) > 0),
        content_length,
        chunked,
    }))
}

/// Whether the request line in `buf` (its first line that is not empty)
/// ends in a well-formed version httparse does not take (`HTTP/2.0`,
/// `HTTP/1.2`): unsupported (505) rather than malformed (400).
fn names_an_http_version(buf: &[u8]) -> bool {
    let line = buf
        .split(|&b| b == b'\r' || b == b'\n')
        .find(|line| !line.is_empty())
        .unwrap_or(&[]);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(_method), Some(_target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    version.starts_with(b"HTTP/") && version.get(5).is_some_and(u8::is_ascii_digit)
}

/// The path-and-query of a request target. A server must accept the
/// absolute form (`http://host:port/path?q`, RFC 9112 §3.2.2) though only
/// proxies are sent it; one without a path is the empty path (a 404 to us).
fn origin_form(target: &str) -> &str {
    let Some((scheme, rest)) = target.split_once("://") else {
        return target;
    };
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return target;
    }
    // The empty path is sliced from the target: spans are offsets into it.
    &rest[rest.find(['/', '?']).unwrap_or(rest.len())..]
}

/// Digits only; values too large for usize saturate (and fail any limit).
fn parse_content_length(value: &[u8]) -> Result<usize, RequestError> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(RequestError::Malformed("bad Content-Length"));
    }
    Ok(digits.iter().fold(0usize, |n, &d| {
        n.saturating_mul(10).saturating_add(usize::from(d - b'0'))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What a test driver saw for one request.
    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        Request {
            method: String,
            path: String,
            query: Option<String>,
            body: Vec<u8>,
            keep_alive: bool,
        },
        Error(u16),
    }

    /// Feeds `input` to a parser in pieces cut at `cuts`, as a connection
    /// would (append, advance until NeedMore, drop consumed bytes).
    fn drive(input: &[u8], cuts: &[usize], body_limit: usize, max_header: usize) -> Vec<Seen> {
        let mut parser = RequestParser::new(max_header);
        let mut spans = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        let mut seen = Vec::new();
        let mut fed = 0;
        let mut boundaries: Vec<usize> =
            cuts.iter().copied().filter(|&c| c <= input.len()).collect();
        boundaries.push(input.len());
        boundaries.sort_unstable();
        for end in boundaries {
            if end < fed {
                continue;
            }
            buf.extend_from_slice(&input[fed..end]);
            fed = end;
            loop {
                match parser.advance(&mut buf, &mut spans) {
                    Ok(Progress::NeedMore) => {
                        // As the server does when its buffer runs short
                        // (here at every other cut, to cover both ways):
                        // then the buffer is within what the parser said it
                        // may need.
                        if end % 2 == 0 {
                            let freed = parser.compact(&mut buf);
                            buf.truncate(buf.len() - freed);
                            assert!(buf.len() <= parser.buffer_need());
                        }
                        break;
                    }
                    Ok(Progress::HeadComplete(_)) => {
                        if let Err(e) = parser.set_body_limit(body_limit) {
                            seen.push(Seen::Error(e.status()));
                            return seen;
                        }
                    }
                    Ok(Progress::Complete {
                        head,
                        body,
                        consumed,
                    }) => {
                        assert!(body.start >= head.head_len);
                        assert!(body.end <= consumed);
                        assert!(consumed <= buf.len());
                        assert!(head.head_len <= max_header);
                        let raw = &buf[..head.head_len];
                        let view = super::super::RequestHead::new(raw, &head, &spans);
                        seen.push(Seen::Request {
                            method: view.method_name().to_owned(),
                            path: view.path.to_owned(),
                            query: view.query.map(str::to_owned),
                            body: buf[body].to_vec(),
                            keep_alive: view.keep_alive,
                        });
                        buf.drain(..consumed);
                    }
                    Err(e) => {
                        seen.push(Seen::Error(e.status()));
                        return seen;
                    }
                }
            }
        }
        seen
    }

    fn req(method: &str, path: &str, query: Option<&str>, body: &[u8], keep_alive: bool) -> Seen {
        Seen::Request {
            method: method.into(),
            path: path.into(),
            query: query.map(Into::into),
            body: body.to_vec(),
            keep_alive,
        }
    }

    const PIPELINE: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n\
POST /function/echo?a=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
POST /function/bar HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: yes\r\n\r\n\
HEAD /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n\
GET /last HTTP/1.1\r\nConnection: close\r\n\r\n";

    fn pipeline_expected() -> Vec<Seen> {
        vec![
            req("GET", "/healthz", None, b"", true),
            req("POST", "/function/echo", Some("a=1"), b"hello", true),
            req("POST", "/function/bar", None, b"abc0123456789abcdef", true),
            req("HEAD", "/x", None, b"", true),
            req("GET", "/last", None, b"", false),
        ]
    }

    #[test]
    fn pipeline_parses_whole() {
        assert_eq!(drive(PIPELINE, &[], 1 << 20, 8192), pipeline_expected());
    }

    #[test]
    fn pipeline_parses_split_at_every_byte() {
        for cut in 0..=PIPELINE.len() {
            assert_eq!(
                drive(PIPELINE, &[cut], 1 << 20, 8192),
                pipeline_expected(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn pipeline_parses_one_byte_at_a_time() {
        let cuts: Vec<usize> = (0..=PIPELINE.len()).collect();
        assert_eq!(drive(PIPELINE, &cuts, 1 << 20, 8192), pipeline_expected());
    }

    #[test]
    fn http10_closes_unless_keep_alive() {
        let seen = drive(b"GET / HTTP/1.0\r\n\r\n", &[], 10, 8192);
        assert_eq!(seen, vec![req("GET", "/", None, b"", false)]);
        let seen = drive(
            b"GET / HTTP/1.1\r\nConnection: Keep-Alive, Close\r\n\r\n",
            &[],
            10,
            8192,
        );
        assert_eq!(seen, vec![req("GET", "/", None, b"", false)]);
    }

    #[test]
    fn header_lookup_is_case_insensitive_and_headers_iterate_in_order() {
        let mut buf =
            b"GET /p?q HTTP/1.1\r\nHost: a\r\nX-Thing:  v1 \r\nx-thing: v2\r\n\r\n".to_vec();
        let mut parser = RequestParser::new(8192);
        let mut spans = Vec::new();
        let Ok(Progress::Complete { head, .. }) = parser.advance(&mut buf, &mut spans) else {
            panic!("not complete");
        };
        let view = super::super::RequestHead::new(&buf[..head.head_len], &head, &spans);
        assert_eq!(view.header("x-THING"), Some(&b"v1"[..]));
        assert_eq!(view.header("missing"), None);
        let all: Vec<_> = view.headers().collect();
        assert_eq!(
            all,
            vec![
                ("Host", &b"a"[..]),
                ("X-Thing", &b"v1"[..]),
                ("x-thing", &b"v2"[..])
            ]
        );
        assert_eq!(view.path, "/p");
        assert_eq!(view.query, Some("q"));
        assert_eq!(view.method, Method::Get);
    }

    #[test]
    fn absolute_form_targets_route_by_their_path_and_query() {
        let input = b"POST http://example.com:8080/function/echo?a=1 HTTP/1.1\r\n\
Content-Length: 2\r\n\r\nhi\
GET HTTPS://h/healthz HTTP/1.1\r\n\r\n\
GET http://h HTTP/1.1\r\n\r\n\
GET http://h?x HTTP/1.1\r\n\r\n\
GET /p?next=http://h/q HTTP/1.1\r\n\r\n";
        assert_eq!(
            drive(input, &[], 1 << 20, 8192),
            vec![
                req("POST", "/function/echo", Some("a=1"), b"hi", true),
                req("GET", "/healthz", None, b"", true),
                req("GET", "", None, b"", true),
                req("GET", "", Some("x"), b"", true),
                req("GET", "/p", Some("next=http://h/q"), b"", true),
            ]
        );
    }

    fn first_error(input: &[u8], body_limit: usize, max_header: usize) -> Option<u16> {
        drive(input, &[], body_limit, max_header)
            .into_iter()
            .find_map(|s| match s {
                Seen::Error(code) => Some(code),
                Seen::Request { .. } => None,
            })
    }

    #[test]
    fn malformed_requests_are_400() {
        for bad in [
            &b"GET / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTQ/1.1\r\n\r\n",
            b"GET /#top HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
            b"GE T / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"\x00\x01\x02\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n",
        ] {
            assert_eq!(
                first_error(bad, 100, 8192),
                Some(400),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn other_http_versions_are_505() {
        for version in ["HTTP/9.1", "HTTP/2.0", "HTTP/1.2", "HTTP/2"] {
            let request = format!("GET / {version}\r\n\r\n");
            assert_eq!(
                first_error(request.as_bytes(), 100, 8192),
                Some(505),
                "{version}"
            );
        }
    }

    #[test]
    fn equal_duplicate_content_lengths_are_accepted() {
        let seen = drive(
            b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
            &[],
            100,
            8192,
        );
        assert_eq!(seen, vec![req("POST", "/", None, b"ok", true)]);
    }

    #[test]
    fn oversize_heads_are_431() {
        let mut big = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 200));
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(first_error(&big, 100, 128), Some(431));
        // Incomplete and already over the limit: rejected without the end.
        assert_eq!(first_error(&big[..150], 100, 128), Some(431));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..(MAX_HEADERS + 1) {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(first_error(&many, 100, 1 << 20), Some(431));
    }

    #[test]
    fn oversize_bodies_are_413_before_the_body_arrives() {
        // Only the head is fed: the decision comes from Content-Length.
        assert_eq!(
            first_error(b"POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n", 100, 8192),
            Some(413)
        );
        assert_eq!(
            first_error(
                b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999999\r\n\r\n",
                100,
                8192
            ),
            Some(413)
        );
        // Chunked: rejected at the chunk that would cross the limit.
        assert_eq!(
            first_error(
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n",
                100,
                8192
            ),
            None
        );
        assert_eq!(
            first_error(
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n",
                63,
                8192
            ),
            Some(413)
        );
        assert_eq!(
            first_error(
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffff\r\n",
                1 << 30,
                8192
            ),
            Some(413)
        );
    }

    #[test]
    fn other_transfer_encodings_are_501_and_other_expectations_417() {
        assert_eq!(
            first_error(
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                100,
                8192
            ),
            Some(501)
        );
        assert_eq!(
            first_error(b"GET / HTTP/1.1\r\nExpect: something\r\n\r\n", 100, 8192),
            Some(417)
        );
        // HTTP/1.0 ignores Expect.
        assert_eq!(
            first_error(b"GET / HTTP/1.0\r\nExpect: something\r\n\r\n", 100, 8192),
            None
        );
    }

    #[test]
    fn expect_continue_is_flagged_only_with_a_body() {
        let mut parser = RequestParser::new(8192);
        let mut spans = Vec::new();
        let mut buf =
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n".to_vec();
        let Ok(Progress::HeadComplete(head)) = parser.advance(&mut buf, &mut spans) else {
            panic!("head not complete");
        };
        assert!(head.expect_continue);
        let mut buf = b"GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n".to_vec();
        let mut parser = RequestParser::new(8192);
        let Ok(Progress::Complete { head, .. }) = parser.advance(&mut buf, &mut spans) else {
            panic!("not complete");
        };
        assert!(!head.expect_continue);
    }

    #[test]
    fn oversize_trailers_are_431() {
        let mut input = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n".to_vec();
        for _ in 0..20 {
            input.extend_from_slice(b"X-Trailer: 0123456789\r\n");
        }
        input.extend_from_slice(b"\r\n");
        assert_eq!(first_error(&input, 100, 128), Some(431));
        assert_eq!(first_error(&input, 100, 8192), None);
    }

    #[test]
    fn buffer_need_bounds_every_state() {
        let mut parser = RequestParser::new(8192);
        assert_eq!(parser.buffer_need(), 8192);
        let mut spans = Vec::new();
        let mut buf = b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n".to_vec();
        let Ok(Progress::HeadComplete(head)) = parser.advance(&mut buf, &mut spans) else {
            panic!("head not complete");
        };
        parser.set_body_limit(100).unwrap();
        assert_eq!(parser.buffer_need(), head.head_len + 10);
        parser.reset();
        assert!(parser.in_head());
    }

    fn arb_request() -> impl Strategy<Value = (Vec<u8>, Seen)> {
        let method = prop::sample::select(vec!["GET", "POST", "PUT", "PROPFIND"]);
        let path = "/[a-z0-9/_.-]{0,20}";
        let query = prop::option::of("[a-z0-9=&]{0,10}");
        let body = prop::collection::vec(any::<u8>(), 0..200);
        let chunks = prop::collection::vec(1usize..50, 1..8);
        let chunked = any::<bool>();
        (method, path, query, body, chunks, chunked).prop_map(
            |(method, path, query, body, chunks, chunked)| {
                let mut raw = format!("{method} {path}");
                if let Some(q) = &query {
                    raw.push('?');
                    raw.push_str(q);
                }
                raw.push_str(" HTTP/1.1\r\nHost: h\r\n");
                let mut raw = raw.into_bytes();
                if chunked && !body.is_empty() {
                    raw.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                    let mut rest = &body[..];
                    let mut sizes = chunks.iter().cycle();
                    while !rest.is_empty() {
                        let n = (*sizes.next().unwrap_or(&1)).min(rest.len());
                        raw.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                        raw.extend_from_slice(&rest[..n]);
                        raw.extend_from_slice(b"\r\n");
                        rest = &rest[n..];
                    }
                    raw.extend_from_slice(b"0\r\n\r\n");
                } else {
                    raw.extend_from_slice(
                        format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes(),
                    );
                    raw.extend_from_slice(&body);
                }
                let seen = Seen::Request {
                    method: method.to_owned(),
                    path,
                    query,
                    body,
                    keep_alive: true,
                };
                (raw, seen)
            },
        )
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            input in prop::collection::vec(any::<u8>(), 0..600),
            cuts in prop::collection::vec(0usize..600, 0..6),
            limit in 0usize..300,
            max_header in 1usize..400,
        ) {
            let _ = drive(&input, &cuts, limit, max_header);
        }

        #[test]
        fn mutated_requests_never_panic(
            (raw, _) in arb_request(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cuts in prop::collection::vec(0usize..600, 0..6),
        ) {
            let mut raw = raw;
            for (at, byte) in flips {
                let i = at.index(raw.len());
                raw[i] = byte;
            }
            let _ = drive(&raw, &cuts, 150, 8192);
        }

        #[test]
        fn valid_pipelines_parse_back_under_any_split(
            reqs in prop::collection::vec(arb_request(), 1..4),
            cuts in prop::collection::vec(0usize..2000, 0..8),
        ) {
            let mut input = Vec::new();
            let mut expected = Vec::new();
            for (raw, seen) in reqs {
                input.extend_from_slice(&raw);
                expected.push(seen);
            }
            prop_assert_eq!(drive(&input, &cuts, 1 << 20, 8192), expected);
        }
    }
}
