//! HTTP/1.1 over any [`Transport`](crate::transport::Transport): the request
//! and response types the engine sees, and the server that drives them.
//!
//! [`HttpServer`] owns the transport and one state machine per connection.
//! Each [`HttpServer::poll`] is one bounded turn: poll the transport, read and
//! parse up to `budget` requests, hand each complete request to the
//! [`RequestHandler`] as a zero-copy [`Request`] view into the connection's
//! input buffer, write whatever answers are ready, run the timers.
//! Answers may come at once (through the [`Responder`] passed to
//! [`RequestHandler::on_request`]) or later (through [`HttpServer::respond`]);
//! either way a connection's responses leave in request order.
//!
//! Protocol errors are answered by the server itself and never reach the
//! handler: 400 (malformed; also HTTP/1.0 with `Transfer-Encoding`, or both
//! `Content-Length` and `Transfer-Encoding`), 413 (body over the limit,
//! decided from `Content-Length` before the body is read, or as soon as a
//! chunk would cross it), 417 (an `Expect` other than `100-continue`), 431
//! (head over `max_header_bytes` or more than 64 header fields), 501 (a
//! `Transfer-Encoding` other than plain `chunked`), 503 (over
//! `max_connections`), 408 (head not complete within `header_timeout`). Each
//! of them ends the connection with a lingering close: the server stops
//! parsing, writes the error in order after the answers still owed, half-closes,
//! and drains the peer's input for up to `linger_timeout` before closing, so
//! the client reads the status instead of a reset.
//!
//! Leniencies, on purpose: a missing `Host` header is accepted; empty lines
//! before a request line are skipped (RFC 9112 §2.2).

mod connection_limit;
mod parse;
mod response;
mod server;

use std::time::Duration;

pub use connection_limit::ConnectionLimit;
pub use server::{HttpServer, Responder};

use crate::transport::ConnId;
use parse::{HeadInfo, HeaderSpan};

/// Resource limits of an [`HttpServer`].
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request head (request line and header fields), bytes. Above:
    /// 431.
    pub max_header_bytes: usize,
    /// Global cap on a request body, bytes; a handler's
    /// [`RequestHandler::body_limit`] can only lower it. Above: 413.
    pub max_body_bytes: usize,
    /// Open connections at most; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Connections in a lingering close (refused ones, or closed after an
    /// error: draining the peer's input so it reads the answer) at most,
    /// beside the open ones; past that they are closed at once.
    pub max_lingering: usize,
    /// A request head must be complete this long after its first byte (or
    /// after the connection was accepted); else the connection is closed
    /// (with a 408 when part of a head had arrived). Defeats slowloris.
    pub header_timeout: Duration,
    /// A keep-alive connection with nothing in flight is closed after this
    /// long; so is one whose body or output stops making progress this long.
    pub idle_timeout: Duration,
    /// Requests of one connection handed to the handler and not yet answered,
    /// at most; the server stops parsing that connection's input meanwhile.
    pub max_pipelined: usize,
    /// Bytes one connection may hold, unsent answers plus requests handed
    /// out and not answered yet, above which the server stops parsing its
    /// requests: a peer that pipelines and does not read cannot make the
    /// server (or the handler, which holds the requests it was handed)
    /// buffer more than this, one more request, and the answers to what is
    /// already in flight.
    pub max_output_bytes: usize,
    /// How long a lingering close drains the peer's input at most.
    pub linger_timeout: Duration,
    /// Bytes per second a request body must arrive at on average, once
    /// `header_timeout` has passed since its head (a grace for the first
    /// bytes); slower: 408. A body that stops arriving altogether gets 408
    /// after `idle_timeout`.
    pub min_body_rate: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 8 * 1024,
            max_body_bytes: 4 * 1024 * 1024,
            max_connections: 10_000,
            max_lingering: 1_024,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_pipelined: 64,
            max_output_bytes: 256 * 1024,
            linger_timeout: Duration::from_secs(2),
            min_body_rate: 32 * 1024,
        }
    }
}

/// Names one request: its connection and its position on that connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestId {
    /// The transport connection the request came on.
    pub conn: ConnId,
    /// 0 for the connection's first request, then 1, 2, …
    pub seq: u64,
}

/// The request method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// `GET`
    Get,
    /// `HEAD` (answered without a body)
    Head,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `DELETE`
    Delete,
    /// `OPTIONS`
    Options,
    /// `PATCH`
    Patch,
    /// Any other method; [`RequestHead::method_name`] has its name.
    Other,
}

impl Method {
    fn from_name(name: &str) -> Self {
        match name {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "PATCH" => Method::Patch,
            _ => Method::Other,
        }
    }
}

/// A borrowed view of a parsed request head.
#[derive(Clone, Copy, Debug)]
pub struct RequestHead<'a> {
    /// The method.
    pub method: Method,
    /// The request target up to `?` (e.g. `/function/foo`).
    pub path: &'a str,
    /// The part after `?`, if any.
    pub query: Option<&'a str>,
    /// `Content-Length`, when the request carries one.
    pub content_length: Option<usize>,
    /// The body is `Transfer-Encoding: chunked` (the server de-chunks it).
    pub chunked: bool,
    /// 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub minor_version: u8,
    /// The connection stays open after this request's response.
    pub keep_alive: bool,
    method_name: &'a str,
    raw: &'a [u8],
    headers: &'a [HeaderSpan],
}

impl<'a> RequestHead<'a> {
    fn new(raw: &'a [u8], info: &HeadInfo, headers: &'a [HeaderSpan]) -> Self {
        // The parser checked that these spans are UTF-8 (httparse hands them
        // out as `str`); the fallback is never taken.
        let text = |span: parse::Span| std::str::from_utf8(span.slice(raw)).unwrap_or("");
        Self {
            method: info.method,
            path: text(info.path),
            query: info.query.map(text),
            content_length: info.content_length,
            chunked: info.chunked,
            minor_version: info.minor_version,
            keep_alive: info.keep_alive,
            method_name: text(info.method_name),
            raw,
            headers,
        }
    }

    /// The method as sent (e.g. `"GET"`, `"PROPFIND"`).
    pub fn method_name(&self) -> &'a str {
        self.method_name
    }

    /// The value of the first header field called `name` (ASCII
    /// case-insensitive), without surrounding whitespace.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.slice(self.raw).eq_ignore_ascii_case(name.as_bytes()))
            .map(|h| h.value.slice(self.raw))
    }

    /// All header fields in order, names as sent.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        let raw = self.raw;
        self.headers.iter().map(move |h| {
            // Header names are tokens (ASCII), checked by httparse.
            let name = std::str::from_utf8(h.name.slice(raw)).unwrap_or("");
            (name, h.value.slice(raw))
        })
    }
}

/// A complete request, borrowed from the connection's input buffer.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// Pass this to [`Responder::respond`] or [`HttpServer::respond`].
    pub id: RequestId,
    /// The head.
    pub head: RequestHead<'a>,
    /// The body (de-chunked in place when it was chunked; trailers dropped).
    pub body: &'a [u8],
}

/// An answer. The server adds `Content-Length` and, where needed,
/// `Connection`; `headers` must not name those (nor `Transfer-Encoding`) and
/// no name or value may contain CR or LF.
#[derive(Clone, Copy, Debug)]
pub struct Response<'a> {
    /// 200–599 (the server sends `100 Continue` itself).
    pub status: u16,
    /// `Content-Type`, if any.
    pub content_type: Option<&'a str>,
    /// More header fields.
    pub headers: &'a [(&'a str, &'a str)],
    /// The body; not sent for `HEAD` requests and 204/304 answers.
    pub body: &'a [u8],
}

impl<'a> Response<'a> {
    /// A response with no content type and no extra headers.
    pub fn new(status: u16, body: &'a [u8]) -> Self {
        Self {
            status,
            content_type: None,
            headers: &[],
            body,
        }
    }

    /// The same response with a `Content-Type`.
    pub fn with_content_type(mut self, content_type: &'a str) -> Self {
        self.content_type = Some(content_type);
        self
    }

    /// The same response with extra header fields.
    pub fn with_headers(mut self, headers: &'a [(&'a str, &'a str)]) -> Self {
        self.headers = headers;
        self
    }
}

/// Why [`HttpServer::respond`] refused an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RespondError {
    /// The connection is closed (or is closing and owes nothing); drop the
    /// answer.
    #[error("the connection is gone")]
    ConnectionGone,
    /// This request was already answered, or no such request was handed out.
    #[error("no unanswered request with this id")]
    UnknownRequest,
    /// The status is outside 200–599.
    #[error("invalid response status {0}")]
    InvalidStatus(u16),
    /// A header name or value contains CR/LF, or the name is one the server
    /// sets itself.
    #[error("invalid or reserved response header")]
    InvalidHeader,
}

/// The engine's side of the HTTP layer.
/// See [`RequestHandler::answer_before_body`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EarlyAnswer {
    pub status: u16,
    /// What was wrong; the body is the reason phrase, `: ` and this.
    pub detail: String,
}

pub trait RequestHandler {
    /// Asked once a request head announcing a body is complete, before the
    /// body is read: the body limit for this request (e.g. per function). The
    /// server applies the smaller of this and [`Limits::max_body_bytes`]. A
    /// `Content-Length` above it is answered 413 at once; a chunked body that
    /// grows past it, too. Not asked for requests without a body.
    fn body_limit(&mut self, head: &RequestHead<'_>) -> usize;

    /// Asked, after [`body_limit`](Self::body_limit), when the client would
    /// otherwise send a body for nothing: its `Content-Length` is over the
    /// limit (the answer would be 413), or it waits for `100 Continue`. An
    /// answer the request gets at once instead (e.g. 404 for no such route),
    /// served like the server's own refusals: its body is not read and the
    /// connection closes after it. Default: none.
    fn answer_before_body(&mut self, _head: &RequestHead<'_>) -> Option<EarlyAnswer> {
        None
    }

    /// A complete request. Answer now through `responder`, or later through
    /// [`HttpServer::respond`] with `req.id`. The views borrow the
    /// connection's buffer: copy what must outlive this call.
    fn on_request(&mut self, req: Request<'_>, responder: &mut Responder<'_>);

    /// A wake-up registered on the transport (a doorbell fd) fired.
    fn on_wake(&mut self, token: usize);

    /// A connection that had at least one request handed to
    /// [`on_request`](Self::on_request) is gone; its unanswered requests are
    /// dead. Called once per such connection.
    fn on_closed(&mut self, conn: ConnId);
}
