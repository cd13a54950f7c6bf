//! Response serialization: status line, the server's own header fields and
//! the caller's, formatted straight into a connection's reused output
//! buffer (no `format!`, no allocation once the buffer has grown).

use super::{RespondError, Response};

/// What the server sends before reading a body the client is holding back.
pub(crate) const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Sent to a connection over `max_connections` before closing it.
pub(crate) const SERVICE_UNAVAILABLE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
Content-Type: text/plain\r\nContent-Length: 51\r\nRetry-After: 1\r\nConnection: close\r\n\r\n\
Service Unavailable: too many connections are open\n";

/// How the request being answered shapes its response.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Framing {
    /// Keep the connection open afterwards.
    pub(crate) keep_alive: bool,
    /// The request was HTTP/1.0 (keep-alive must then be said explicitly).
    pub(crate) http10: bool,
    /// The request was `HEAD`: no body bytes.
    pub(crate) head_only: bool,
}

/// The reason phrase of `status` (RFC 9110 wording), or `""`.
pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        // RFC 5842: the engine's answer to a call cycle or a chain past
        // max_call_depth.
        508 => "Loop Detected",
        _ => "",
    }
}

/// Rejects what would corrupt the framing: a status outside 200–599, CR/LF
/// in a header (response splitting), or a header the server owns.
pub(crate) fn validate(resp: &Response<'_>) -> Result<(), RespondError> {
    if !(200..=599).contains(&resp.status) {
        return Err(RespondError::InvalidStatus(resp.status));
    }
    // RFC 9110 §5.5: a field value is visible characters, spaces and tabs
    // (and obs-text). CR/LF would split the response; NUL and the other
    // controls make clients drop it (curl: "Nul byte in header").
    let clean = |s: &str| !s.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f);
    if resp.content_type.is_some_and(|ct| !clean(ct)) {
        return Err(RespondError::InvalidHeader);
    }
    for &(name, value) in resp.headers {
        let reserved = name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("connection")
            || name.eq_ignore_ascii_case("transfer-encoding");
        let bad_name = name.is_empty() || name.bytes().any(|b| b == b':' || b <= b' ');
        if reserved || bad_name || !clean(value) {
            return Err(RespondError::InvalidHeader);
        }
    }
    Ok(())
}

/// Appends the whole response (already [`validate`]d) to `out`.
pub(crate) fn write_response(out: &mut Vec<u8>, resp: &Response<'_>, framing: Framing) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(resp.status));
    out.push(b' ');
    out.extend_from_slice(reason(resp.status).as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(content_type) = resp.content_type {
        out.extend_from_slice(b"Content-Type: ");
        out.extend_from_slice(content_type.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for &(name, value) in resp.headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // 204 must not carry Content-Length; 304 and HEAD carry the length the
    // body would have had.
    let bodyless_status = resp.status == 204 || resp.status == 304;
    if resp.status != 204 {
        out.extend_from_slice(b"Content-Length: ");
        push_decimal(out, resp.body.len() as u64);
        out.extend_from_slice(b"\r\n");
    }
    if !framing.keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if framing.http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !framing.head_only && !bodyless_status {
        out.extend_from_slice(resp.body);
    }
}

/// Appends a server-generated error answer (plain text, connection closing):
/// the reason phrase and, after it, what exactly was wrong.
pub(crate) fn write_error(out: &mut Vec<u8>, status: u16, detail: &str, head_only: bool) {
    let body = format!("{}: {detail}\n", reason(status));
    let resp = Response::new(status, body.as_bytes()).with_content_type("text/plain");
    write_response(
        out,
        &resp,
        Framing {
            keep_alive: false,
            http10: false,
            head_only,
        },
    );
}

/// Appends `n` in decimal without going through `fmt`.
pub(crate) fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(resp: &Response<'_>, framing: Framing) -> String {
        let mut out = Vec::new();
        write_response(&mut out, resp, framing);
        String::from_utf8(out).unwrap()
    }

    const KEEP: Framing = Framing {
        keep_alive: true,
        http10: false,
        head_only: false,
    };

    #[test]
    fn every_status_the_engine_answers_has_its_reason_phrase() {
        let statuses = [
            200, 400, 404, 405, 408, 413, 414, 431, 500, 502, 503, 504, 505, 508,
        ];
        for status in statuses {
            assert_ne!(reason(status), "", "{status}");
        }
        let head = render(&Response::new(508, b""), KEEP);
        assert!(head.starts_with("HTTP/1.1 508 Loop Detected\r\n"), "{head}");
    }

    #[test]
    fn decimal_formatting_matches_std() {
        for n in [0u64, 7, 10, 99, 100, 12345, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }

    #[test]
    fn full_response_layout() {
        let headers = [("Server-Timing", "queue;dur=1")];
        let resp = Response::new(200, b"hi")
            .with_content_type("text/plain")
            .with_headers(&headers);
        assert_eq!(
            render(&resp, KEEP),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nServer-Timing: queue;dur=1\r\n\
Content-Length: 2\r\n\r\nhi"
        );
    }

    #[test]
    fn close_keep_alive_head_and_bodyless_statuses() {
        let close = Framing {
            keep_alive: false,
            ..KEEP
        };
        assert_eq!(
            render(&Response::new(404, b"x"), close),
            "HTTP/1.1 404 Not Found\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"
        );
        let http10 = Framing {
            http10: true,
            ..KEEP
        };
        assert_eq!(
            render(&Response::new(200, b""), http10),
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
        );
        let head = Framing {
            head_only: true,
            ..KEEP
        };
        assert_eq!(
            render(&Response::new(200, b"body"), head),
            "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n"
        );
        assert_eq!(
            render(&Response::new(204, b"ignored"), KEEP),
            "HTTP/1.1 204 No Content\r\n\r\n"
        );
        assert_eq!(
            render(&Response::new(599, b""), KEEP),
            "HTTP/1.1 599 \r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn validation_rejects_splitting_and_reserved_headers() {
        assert_eq!(validate(&Response::new(200, b"")), Ok(()));
        assert_eq!(
            validate(&Response::new(100, b"")),
            Err(RespondError::InvalidStatus(100))
        );
        assert_eq!(
            validate(&Response::new(600, b"")),
            Err(RespondError::InvalidStatus(600))
        );
        for headers in [
            &[("X-A", "b\r\nInjected: yes")][..],
            &[("X-A\r\n", "b")],
            &[("Content-Length", "3")],
            &[("connection", "close")],
            &[("Transfer-Encoding", "chunked")],
            &[("", "x")],
            &[("Bad Name", "x")],
        ] {
            let resp = Response::new(200, b"").with_headers(headers);
            assert_eq!(
                validate(&resp),
                Err(RespondError::InvalidHeader),
                "{headers:?}"
            );
        }
        for content_type in ["text/html\r\nX: y", "text/plain\0", "a\x1bb", "a\x7f"] {
            let resp = Response::new(200, b"").with_content_type(content_type);
            assert_eq!(
                validate(&resp),
                Err(RespondError::InvalidHeader),
                "{content_type:?}"
            );
        }
        let tabbed = [("X-A", "one\ttwo, ünïcode")];
        assert_eq!(
            validate(&Response::new(200, b"").with_headers(&tabbed)),
            Ok(())
        );
    }

    #[test]
    fn canned_503_length_is_right() {
        let text = std::str::from_utf8(SERVICE_UNAVAILABLE).unwrap();
        let (_, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(text.contains(&format!("Content-Length: {}\r\n", body.len())));
    }
}
