//! HTTP routes of a core loop.
//!
//! | route                   | answer |
//! |-------------------------|--------|
//! | `POST /function/NAME`   | invoke NAME with the body (`GET` too where `allow_get`); the query string reaches the function either way |
//! | `GET /healthz`          | 200 once every function has `min_workers` ready, else 503 |
//! | `GET /system/functions` | JSON array of `{"name","workers","in_flight","queued","crash_looping"}` |
//!
//! `HEAD` is answered wherever `GET` is (RFC 9110 §9.3.2: the same answer
//! without its body; the HTTP server drops the body). Unknown paths are 404,
//! a known path with the wrong method 405 with `Allow`.

use nocturne_functions::protocol;
use nocturne_net::http::{
    EarlyAnswer, Method, Request, RequestHandler, RequestHead, Responder, Response,
};
use nocturne_net::ConnId;

use super::dispatch::{server_timing, Admission, NewCall};
use super::{LoopState, Origin, WAKE_TOKEN};

/// The longest function name (the configuration refuses longer ones).
const MAX_FUNCTION_NAME: usize = crate::config::limits::MAX_FUNCTION_NAME;

/// The body limit for paths that take no body.
const NO_BODY_LIMIT: usize = 64 * 1024;

enum Route<'a> {
    Function(&'a str),
    Healthz,
    Functions,
    NotFound,
}

fn route(path: &str) -> Route<'_> {
    match path {
        "/healthz" => Route::Healthz,
        "/system/functions" => Route::Functions,
        _ => match path.strip_prefix("/function/") {
            Some(name) if !name.is_empty() && !name.contains('/') => Route::Function(name),
            _ => Route::NotFound,
        },
    }
}

impl LoopState {
    /// The function a path's NAME names. A name may come percent-encoded
    /// (`/function/ech%6F`): RFC 3986 §6.2.2.2 makes that the same URL, and
    /// proxies and client libraries do encode characters a name may hold.
    fn function_id(&self, name: &str) -> Option<u32> {
        let mut decoded = [0u8; MAX_FUNCTION_NAME];
        let name = percent_decode_name(name, &mut decoded)?;
        self.functions
            .iter()
            .position(|f| f.name.as_bytes() == name)
            .map(|i| i as u32)
    }
}

/// `name` with its `%XX` escapes decoded into `buf`, or `None` where it is
/// malformed or longer than any function name (such a name names nothing).
/// No allocation: the router runs for every request.
fn percent_decode_name<'a>(name: &'a str, buf: &'a mut [u8]) -> Option<&'a [u8]> {
    if !name.contains('%') {
        return Some(name.as_bytes());
    }
    let bytes = name.as_bytes();
    let (mut read, mut len) = (0, 0);
    while read < bytes.len() {
        let byte = match bytes[read] {
            b'%' => {
                let hex = bytes.get(read + 1..read + 3)?;
                read += 3;
                // Not `from_str_radix`, which would take `%+1`.
                let digit = |b: u8| (b as char).to_digit(16);
                (digit(hex[0])? * 16 + digit(hex[1])?) as u8
            }
            other => {
                read += 1;
                other
            }
        };
        *buf.get_mut(len)? = byte;
        len += 1;
    }
    Some(&buf[..len])
}

/// Whether `method` reads: `GET`, or `HEAD` (the same answer without a body).
fn is_read(method: Method) -> bool {
    matches!(method, Method::Get | Method::Head)
}

/// 405 for a route that only reads.
fn read_only<'a>() -> Response<'a> {
    Response {
        status: 405,
        content_type: Some("text/plain; charset=utf-8"),
        headers: &[("Allow", "GET, HEAD")],
        body: b"use GET\n",
    }
}

/// `no function named "NAME"`, the name cut to 64 characters (a function
/// name's limit): a 404 must not echo a megabyte path back.
fn no_such_function(name: &str) -> String {
    const SHOWN: usize = 64;
    match name.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("no function named {:?}…", &name[..cut]),
        None => format!("no function named {name:?}"),
    }
}

fn text<'a>(status: u16, body: &'a str) -> Response<'a> {
    Response {
        status,
        content_type: Some("text/plain; charset=utf-8"),
        headers: &[],
        body: body.as_bytes(),
    }
}

impl RequestHandler for LoopState {
    fn body_limit(&mut self, head: &RequestHead<'_>) -> usize {
        match route(head.path) {
            Route::Function(name) => match self.function_id(name) {
                Some(f) => self.ctx.config.functions[f as usize].max_payload,
                None => NO_BODY_LIMIT,
            },
            _ => NO_BODY_LIMIT,
        }
    }

    fn answer_before_body(&mut self, head: &RequestHead<'_>) -> Option<EarlyAnswer> {
        // A client about to upload learns at once that it would be for
        // nothing. (405s need an `Allow` field: they wait for the body.)
        let early = |status, detail: String| Some(EarlyAnswer { status, detail });
        match route(head.path) {
            Route::Function(_) if self.drain_deadline.is_some() => {
                early(503, "the engine is shutting down".into())
            }
            Route::Function(name) if self.function_id(name).is_none() => {
                early(404, no_such_function(name))
            }
            Route::NotFound => early(404, "functions are at /function/NAME".into()),
            _ => None,
        }
    }

    fn on_request(&mut self, req: Request<'_>, responder: &mut Responder<'_>) {
        if self.clock_stale {
            // Woken from an epoll sleep: the turn's time is from before it.
            self.tick();
            self.clock_stale = false;
        }
        let id = req.id;
        let method = req.head.method;
        match route(req.head.path) {
            Route::Healthz => {
                if !is_read(method) {
                    let _ = responder.respond(id, &read_only());
                } else if self.drain_deadline.is_some() {
                    // A load balancer must stop sending here now.
                    let _ = responder
                        .respond(id, &text(503, "draining: the engine is shutting down\n"));
                } else if self.ctx.status.healthy() {
                    let _ = responder.respond(id, &text(200, "ok\n"));
                } else {
                    let _ = responder.respond(
                        id,
                        &text(503, "not every function has min_workers ready (starting, or restarting workers that failed)\n"),
                    );
                }
            }
            Route::Functions => {
                if !is_read(method) {
                    let _ = responder.respond(id, &read_only());
                } else {
                    let body = self.ctx.status.functions_json();
                    let _ = responder.respond(
                        id,
                        &Response {
                            status: 200,
                            content_type: Some("application/json"),
                            headers: &[],
                            body: body.as_bytes(),
                        },
                    );
                }
            }
            Route::NotFound => {
                let _ = responder.respond(
                    id,
                    &text(404, "not found: functions are at /function/NAME\n"),
                );
            }
            Route::Function(_) if self.drain_deadline.is_some() => {
                let headers = [("Retry-After", "1")];
                let _ = responder.respond(
                    id,
                    &Response {
                        status: 503,
                        content_type: Some("text/plain; charset=utf-8"),
                        headers: &headers,
                        body: b"the engine is shutting down\n",
                    },
                );
            }
            Route::Function(name) => {
                let Some(f) = self.function_id(name) else {
                    let msg = format!("{}\n", no_such_function(name));
                    let _ = responder.respond(id, &text(404, &msg));
                    return;
                };
                let allow_get = self.ctx.config.functions[f as usize].allow_get;
                let allowed = method == Method::Post || (allow_get && is_read(method));
                if !allowed {
                    let allow = if allow_get { "GET, HEAD, POST" } else { "POST" };
                    let headers = [("Allow", allow)];
                    let msg = format!("function {name} takes {allow}\n");
                    let _ = responder.respond(
                        id,
                        &Response {
                            status: 405,
                            content_type: Some("text/plain; charset=utf-8"),
                            headers: &headers,
                            body: msg.as_bytes(),
                        },
                    );
                    return;
                }
                if let Some(query) = req.head.query.filter(|q| q.len() > protocol::MAX_QUERY) {
                    let msg = format!(
                        "query string of {} bytes is longer than {} bytes\n",
                        query.len(),
                        protocol::MAX_QUERY
                    );
                    let _ = responder.respond(id, &text(414, &msg));
                    return;
                }
                let deadline = self.ctx.config.functions[f as usize].timeout;
                let new = |flags| NewCall {
                    function: f,
                    origin: Origin::External(id),
                    parent: None,
                    depth: 0,
                    deadline,
                    flags,
                };
                let admission = match req.head.query {
                    None => self.admit(new(0), req.body),
                    Some(query) => {
                        let mut payload = std::mem::take(&mut self.scratch);
                        protocol::encode_query_prefix(&mut payload, query);
                        payload.extend_from_slice(req.body);
                        let a = self.admit(new(protocol::FLAG_QUERY), &payload);
                        self.scratch = payload;
                        a
                    }
                };
                if let Admission::Rejected((status, msg)) = admission {
                    // Refused before it queued: no queue, no run. The header
                    // is there as on every other answer of a call (and on a
                    // refusal that another loop's queue made).
                    self.timing.clear();
                    server_timing(&mut self.timing, (self.now_ns, self.now_ns), 0, self.now_ns);
                    let seconds = self.retry_after_s(f).to_string();
                    let headers = [
                        ("Server-Timing", self.timing.as_str()),
                        ("Retry-After", seconds.as_str()),
                    ];
                    let headers = if status == protocol::STATUS_OVERLOADED {
                        &headers[..]
                    } else {
                        &headers[..1]
                    };
                    let _ = responder.respond(
                        id,
                        &Response {
                            status,
                            content_type: Some("text/plain; charset=utf-8"),
                            headers,
                            body: msg.as_bytes(),
                        },
                    );
                }
            }
        }
    }

    fn on_wake(&mut self, token: usize) {
        if token == WAKE_TOKEN {
            crate::sys::drain_eventfd(&self.wake_fd);
        } else {
            self.on_worker_token(token);
        }
    }

    fn on_closed(&mut self, _conn: ConnId) {
        // Calls of a closed connection run to completion; their answers find no
        // connection and are dropped by `HttpServer::respond`.
    }
}

#[cfg(test)]
mod tests {
    use super::{no_such_function, percent_decode_name};

    fn decoded(name: &str) -> Option<String> {
        let mut buf = [0u8; 64];
        percent_decode_name(name, &mut buf).map(|b| String::from_utf8_lossy(b).into_owned())
    }

    #[test]
    fn a_percent_encoded_name_is_the_name() {
        assert_eq!(decoded("echo").as_deref(), Some("echo"));
        assert_eq!(decoded("ech%6F").as_deref(), Some("echo"));
        assert_eq!(decoded("%65%63%68%6f").as_deref(), Some("echo"));
        assert_eq!(decoded("my%5Ffn").as_deref(), Some("my_fn"));
    }

    #[test]
    fn a_malformed_or_overlong_escape_names_nothing() {
        for bad in ["ech%6", "ech%", "%zz", "%+1", "%-1", "a%6G"] {
            assert_eq!(decoded(bad), None, "{bad}");
        }
        assert_eq!(decoded(&"a".repeat(64)).map(|n| n.len()), Some(64));
        assert_eq!(decoded(&format!("{}%61", "a".repeat(64))), None);
    }

    #[test]
    fn a_404_shows_at_most_64_characters_of_the_name() {
        assert_eq!(no_such_function("nope"), "no function named \"nope\"");
        let long = "é".repeat(100_000);
        let shown = no_such_function(&long);
        assert_eq!(shown, format!("no function named {:?}…", "é".repeat(64)));
    }
}
