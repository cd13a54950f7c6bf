//! The HTTP/1.1 side of a baseline server: hyper's server connection per
//! accepted socket (keep-alive, pipelining), routing `POST /function/NAME`
//! to the process's function and `GET /healthz` to a readiness answer.
//!
//! Statuses follow nocturne's where the same thing goes wrong: unknown path
//! 404, wrong method 405 (with `Allow`), body over [`MAX_BODY`] 413
//! (decided from `Content-Length` before reading when it is there), a body
//! that cannot be read 400, bar unreachable or answering badly 502.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::grpc::BarClient;
use super::hyper_hop::HyperBar;
use super::{BarCallError, BAR_PREFIX, FOO_PREFIX, MAX_BODY};

/// How foo reaches bar.
#[derive(Clone)]
pub enum Downstream {
    /// HTTP/1.1 over a pooled keep-alive hyper client (boxed: the
    /// client is large, and the enum is built once per process).
    Hyper(Box<HyperBar>),
    /// gRPC over a tonic channel.
    Grpc(BarClient),
}

impl Downstream {
    /// Calls bar with `input`; bar's answer.
    pub async fn call(&self, input: Bytes) -> Result<Bytes, BarCallError> {
        match self {
            Downstream::Hyper(bar) => bar.call(input).await,
            Downstream::Grpc(bar) => bar.clone().call(input).await.map_err(BarCallError::Grpc),
        }
    }
}

/// What one server process serves over HTTP/1.1.
pub struct Front {
    path: &'static str,
    downstream: Option<Downstream>,
}

impl Front {
    /// bar: `POST /function/bar` answers `From function Bar: X`.
    pub fn bar() -> Self {
        Self {
            path: "/function/bar",
            downstream: None,
        }
    }

    /// foo: `POST /function/foo` calls bar with X and answers
    /// `From function Foo: <bar's answer>`.
    pub fn foo(downstream: Downstream) -> Self {
        Self {
            path: "/function/foo",
            downstream: Some(downstream),
        }
    }

    /// Answers one request.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: hyper::body::Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let path = request.uri().path();
        if path == "/healthz" {
            return if matches!(*request.method(), Method::GET | Method::HEAD) {
                text(StatusCode::OK, "ok\n")
            } else {
                method_not_allowed("GET, HEAD")
            };
        }
        if path != self.path {
            return text(StatusCode::NOT_FOUND, "no such function\n");
        }
        if request.method() != Method::POST {
            return method_not_allowed("POST");
        }
        let declared = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY as u64) {
            return too_large();
        }
        let input = match Limited::new(request.into_body(), MAX_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
            Err(e) => return text(StatusCode::BAD_REQUEST, &format!("cannot read body: {e}\n")),
        };
        match &self.downstream {
            None => ok(prefixed(BAR_PREFIX, &input)),
            Some(bar) => match bar.call(input).await {
                Ok(answer) => ok(prefixed(FOO_PREFIX, &answer)),
                Err(e) => text(StatusCode::BAD_GATEWAY, &format!("calling bar: {e}\n")),
            },
        }
    }
}

/// Serves `front` on every connection `listener` accepts, until the
/// process ends. Accept errors (out of file descriptors) are logged and
/// retried after a pause, never fatal.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    front: Arc<Front>,
) -> anyhow::Result<()> {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            eprintln!("TCP_NODELAY: {e}");
        }
        let front = Arc::clone(&front);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let front = Arc::clone(&front);
                async move { Ok::<_, Infallible>(front.handle(request).await) }
            });
            // A client that goes away mid-request is its own business.
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn prefixed(prefix: &[u8], body: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(prefix.len() + body.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(body);
    Bytes::from(out)
}

fn ok(body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

fn text(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(message.to_owned())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

fn too_large() -> Response<Full<Bytes>> {
    text(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("body over {MAX_BODY} bytes\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, path: &str, body: &[u8]) -> Request<Full<Bytes>> {
        Request::builder()
            .method(method)
            .uri(path)
            .body(Full::new(Bytes::copy_from_slice(body)))
            .unwrap()
    }

    async fn body(response: Response<Full<Bytes>>) -> (u16, Vec<u8>) {
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, bytes.to_vec())
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn bar_routes_and_statuses() {
        block_on(async {
            let bar = Front::bar();
            assert_eq!(
                body(bar.handle(request("POST", "/function/bar", b"X")).await).await,
                (200, b"From function Bar: X".to_vec())
            );
            assert_eq!(
                body(bar.handle(request("POST", "/function/bar", b"")).await).await,
                (200, b"From function Bar: ".to_vec())
            );
            let (status, _) = body(bar.handle(request("GET", "/healthz", b"")).await).await;
            assert_eq!(status, 200);
            assert_eq!(
                body(bar.handle(request("POST", "/healthz", b"")).await)
                    .await
                    .0,
                405
            );
            assert_eq!(
                body(bar.handle(request("POST", "/function/foo", b"X")).await)
                    .await
                    .0,
                404
            );
            let wrong = bar.handle(request("GET", "/function/bar", b"")).await;
            assert_eq!(wrong.headers()[ALLOW], "POST");
            assert_eq!(body(wrong).await.0, 405);
        });
    }

    #[test]
    fn oversize_bodies_are_refused() {
        block_on(async {
            let bar = Front::bar();
            let big = vec![b'x'; MAX_BODY + 1];
            // No Content-Length header here: the limit is hit while reading.
            assert_eq!(
                body(bar.handle(request("POST", "/function/bar", &big)).await)
                    .await
                    .0,
                413
            );
            let declared = Request::builder()
                .method("POST")
                .uri("/function/bar")
                .header(CONTENT_LENGTH, (MAX_BODY + 1).to_string())
                .body(Full::new(Bytes::new()))
                .unwrap();
            assert_eq!(body(bar.handle(declared).await).await.0, 413);
            let exact = vec![b'x'; MAX_BODY];
            let (status, out) =
                body(bar.handle(request("POST", "/function/bar", &exact)).await).await;
            assert_eq!(status, 200);
            assert_eq!(out.len(), BAR_PREFIX.len() + MAX_BODY);
        });
    }
}
