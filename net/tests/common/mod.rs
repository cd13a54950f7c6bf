//! Test harness: a real `HttpServer<KernelTransport>` on 127.0.0.1 in its own
//! thread, driven by a tiny handler, and a blocking client that reads
//! responses off a real socket.
#![allow(dead_code)] // each test binary uses a different part

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nocturne_net::{
    ConnId, EarlyAnswer, HttpServer, KernelOptions, KernelTransport, Limits, Request,
    RequestHandler, RequestHead, RequestId, Responder, Response, SmoltcpOptions, SmoltcpTransport,
    Transport,
};

/// What the handler saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Request { conn: ConnId, path: String },
    Closed(ConnId),
}

/// Counters the server thread publishes after every turn.
#[derive(Default)]
pub struct Published {
    /// `HttpServer::connection_count`.
    pub connections: AtomicUsize,
    /// Requests handed to the handler.
    pub requests: AtomicU64,
    /// `HttpServer::rejected_connections`.
    pub rejected: AtomicU64,
    /// `HttpServer::lingering_count`.
    pub lingering: AtomicUsize,
    /// `HttpServer::requests_in_progress`.
    pub in_progress: AtomicUsize,
    /// `HttpServer::drain` was called.
    pub draining: AtomicBool,
}

/// Routes:
/// * `/echo…` — 200, body `METHOD PATH[?QUERY] body`, `X-Seq: seq`.
/// * `/hold…` — held; once `hold_batch` are held, or on
///   [`TestServer::release_held`], they are answered in reverse order
///   (body = path) from outside the poll. Body limit 1 MiB.
/// * `/big` — 200 with `big_body`.
/// * `/small…` — body limit 10.
/// * `/gone…` — 404, before its body is read where that saves an upload.
/// * anything else — 404.
struct TestHandler {
    hold_batch: usize,
    held: Vec<(RequestId, String)>,
    big_body: Arc<Vec<u8>>,
    seen: mpsc::Sender<Seen>,
    published: Arc<Published>,
    stop: bool,
    /// `release_held` was asked for.
    release: bool,
    /// `drain` was asked for.
    drain: bool,
    /// `refuse_in_progress` was asked for.
    refuse: bool,
    wake_reader: UnixStream,
    scratch: Vec<u8>,
}

impl RequestHandler for TestHandler {
    fn answer_before_body(&mut self, head: &RequestHead<'_>) -> Option<EarlyAnswer> {
        head.path.starts_with("/gone").then(|| EarlyAnswer {
            status: 404,
            detail: "gone".into(),
        })
    }

    fn body_limit(&mut self, head: &RequestHead<'_>) -> usize {
        if head.path.starts_with("/small") {
            10
        } else if head.path.starts_with("/hold") {
            1 << 20
        } else {
            1024
        }
    }

    fn on_request(&mut self, req: Request<'_>, responder: &mut Responder<'_>) {
        self.published.requests.fetch_add(1, Ordering::Relaxed);
        let path = req.head.path;
        let _ = self.seen.send(Seen::Request {
            conn: req.id.conn,
            path: path.to_owned(),
        });
        if path.starts_with("/echo") || path.starts_with("/small") {
            self.scratch.clear();
            self.scratch
                .extend_from_slice(req.head.method_name().as_bytes());
            self.scratch.push(b' ');
            self.scratch.extend_from_slice(path.as_bytes());
            if let Some(q) = req.head.query {
                self.scratch.push(b'?');
                self.scratch.extend_from_slice(q.as_bytes());
            }
            self.scratch.push(b' ');
            self.scratch.extend_from_slice(req.body);
            let seq = req.id.seq.to_string();
            let headers = [("X-Seq", seq.as_str())];
            let resp = Response::new(200, &self.scratch)
                .with_content_type("text/plain")
                .with_headers(&headers);
            responder.respond(req.id, &resp).unwrap();
        } else if path.starts_with("/hold") {
            self.held.push((req.id, path.to_owned()));
        } else if path == "/big" {
            responder
                .respond(req.id, &Response::new(200, &self.big_body))
                .unwrap();
        } else {
            responder
                .respond(req.id, &Response::new(404, b"no such route"))
                .unwrap();
        }
    }

    fn on_wake(&mut self, token: usize) {
        assert_eq!(token, 7);
        let mut bytes = [0u8; 16];
        let n = self.wake_reader.read(&mut bytes).unwrap_or(0);
        for &b in &bytes[..n] {
            match b {
                b'r' => self.release = true,
                b'd' => self.drain = true,
                b'x' => self.refuse = true,
                _ => self.stop = true,
            }
        }
    }

    fn on_closed(&mut self, conn: ConnId) {
        let _ = self.seen.send(Seen::Closed(conn));
    }
}

pub struct Options {
    pub limits: Limits,
    pub hold_batch: usize,
    pub big_body_len: usize,
    /// Bind here instead of 127.0.0.1:0 (for SO_REUSEPORT).
    pub addr: Option<SocketAddr>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            hold_batch: usize::MAX,
            big_body_len: 0,
            addr: None,
        }
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub seen: mpsc::Receiver<Seen>,
    pub published: Arc<Published>,
    wake: UnixStream,
    thread: Option<thread::JoinHandle<()>>,
}

impl TestServer {
    /// [`start`](Self::start) with these limits and the other options left
    /// at their defaults.
    pub fn with_limits(limits: Limits) -> Self {
        Self::start(Options {
            limits,
            ..Options::default()
        })
    }

    pub fn start(opts: Options) -> Self {
        let addr = opts.addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
        let transport = KernelTransport::bind(addr, &KernelOptions::default()).unwrap();
        let mut server = HttpServer::new(transport, opts.limits);
        let addr = server.local_addr();
        let (wake, wake_reader) = UnixStream::pair().unwrap();
        wake_reader.set_nonblocking(true).unwrap();
        server
            .transport_mut()
            .register_wake_fd(wake_reader.as_raw_fd(), 7)
            .unwrap();
        let (tx, seen) = mpsc::channel();
        let published = Arc::new(Published::default());
        let mut handler = TestHandler {
            hold_batch: opts.hold_batch,
            held: Vec::new(),
            big_body: Arc::new(vec![b'x'; opts.big_body_len]),
            seen: tx,
            published: published.clone(),
            stop: false,
            release: false,
            drain: false,
            refuse: false,
            wake_reader,
            scratch: Vec::new(),
        };
        let thread = thread::spawn(move || {
            while !handler.stop {
                // Block in epoll: the server cuts the sleep short for its
                // timers, the wake fd ends it for the stop.
                server.poll(None, 64, &mut handler).unwrap();
                if std::mem::take(&mut handler.drain) {
                    server.drain();
                    handler.published.draining.store(true, Ordering::Relaxed);
                }
                if std::mem::take(&mut handler.refuse) {
                    server.refuse_in_progress(503, "shutting down");
                }
                if handler.held.len() >= handler.hold_batch || handler.release {
                    handler.release = false;
                    for (id, path) in handler.held.drain(..).rev() {
                        let resp = Response::new(200, path.as_bytes());
                        // The client may be gone: ConnectionGone is fine.
                        let _ = server.respond(id, &resp);
                    }
                }
                handler
                    .published
                    .connections
                    .store(server.connection_count(), Ordering::Relaxed);
                handler
                    .published
                    .rejected
                    .store(server.rejected_connections(), Ordering::Relaxed);
                handler
                    .published
                    .lingering
                    .store(server.lingering_count(), Ordering::Relaxed);
                handler
                    .published
                    .in_progress
                    .store(server.requests_in_progress(), Ordering::Relaxed);
            }
        });
        Self {
            addr,
            seen,
            published,
            wake,
            thread: Some(thread),
        }
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    pub fn connections(&self) -> usize {
        self.published.connections.load(Ordering::Relaxed)
    }

    pub fn lingering(&self) -> usize {
        self.published.lingering.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> u64 {
        self.published.requests.load(Ordering::Relaxed)
    }

    /// Answers the `/hold` requests held now.
    pub fn release_held(&self) {
        (&self.wake).write_all(b"r").unwrap();
    }

    /// `HttpServer::drain`, and waits until it was called.
    pub fn drain(&self) {
        (&self.wake).write_all(b"d").unwrap();
        self.wait_until("the drain", |s| {
            s.published.draining.load(Ordering::Relaxed)
        });
    }

    /// `HttpServer::refuse_in_progress(503, "shutting down")`.
    pub fn refuse_in_progress(&self) {
        (&self.wake).write_all(b"x").unwrap();
    }

    pub fn in_progress(&self) -> usize {
        self.published.in_progress.load(Ordering::Relaxed)
    }

    /// Waits (generously; never asserts a duration) until `cond` holds.
    pub fn wait_until(&self, what: &str, cond: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond(self) {
            assert!(Instant::now() < deadline, "gave up waiting for {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// The next handler event (waits generously).
    pub fn next_seen(&self) -> Seen {
        self.seen
            .recv_timeout(Duration::from_secs(20))
            .expect("handler event")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        stop_server_thread(&self.wake, self.thread.take());
    }
}

/// Stops a test's server thread: a byte on `wake` (its transport's wake
/// socket) tells it to return, then it is joined. Its panic fails the test,
/// unless the test is failing already (a second panic while unwinding would
/// abort and hide the first).
pub fn stop_server_thread(wake: &UnixStream, thread: Option<thread::JoinHandle<()>>) {
    let _ = (&*wake).write_all(b"!");
    if let Some(thread) = thread {
        let result = thread.join();
        if !thread::panicking() {
            result.expect("server thread panicked");
        }
    }
}

/// One parsed response.
#[derive(Debug)]
pub struct Resp {
    pub status_line: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_str(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

/// A blocking HTTP/1.1 client over any connected kernel-TCP stream: this
/// harness's kernel server, or the smoltcp server of `smoltcp_http`.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        // Only a guard against hanging forever; no test asserts a duration.
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Self::from_stream(stream)
    }

    /// Wraps a connected stream with its options as they are.
    pub fn from_stream(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 64 * 1024];
        let n = self.stream.read(&mut chunk).expect("read");
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// Reads exactly `expected.len()` bytes and compares.
    pub fn expect_bytes(&mut self, expected: &[u8]) {
        while self.buf.len() < expected.len() {
            assert!(
                self.fill() > 0,
                "EOF before {:?}",
                String::from_utf8_lossy(expected)
            );
        }
        let got: Vec<u8> = self.buf.drain(..expected.len()).collect();
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(expected)
        );
    }

    /// Reads one response; `head_request` for answers to HEAD (no body).
    pub fn read_response_to(&mut self, head_request: bool) -> Resp {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head_len) = parsed.parse(&self.buf).unwrap() {
                let status = parsed.code.unwrap();
                let status_line = format!(
                    "HTTP/1.{} {} {}",
                    parsed.version.unwrap(),
                    status,
                    parsed.reason.unwrap()
                );
                let headers: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_owned(),
                            String::from_utf8(h.value.to_vec()).unwrap(),
                        )
                    })
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .map(|(_, v)| v.parse().unwrap())
                    .unwrap_or(0);
                let body_len = if head_request || status == 204 {
                    0
                } else {
                    len
                };
                while self.buf.len() < head_len + body_len {
                    assert!(self.fill() > 0, "EOF inside a response body");
                }
                let body = self.buf[head_len..head_len + body_len].to_vec();
                self.buf.drain(..head_len + body_len);
                return Resp {
                    status_line,
                    status,
                    headers,
                    body,
                };
            }
            assert!(self.fill() > 0, "EOF before a response head");
        }
    }

    pub fn read_response(&mut self) -> Resp {
        self.read_response_to(false)
    }

    /// The server closed its side cleanly (FIN, not reset) with nothing more.
    pub fn expect_eof(&mut self) {
        assert!(
            self.buf.is_empty(),
            "unread bytes: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        let mut byte = [0u8; 1024];
        match self.stream.read(&mut byte) {
            Ok(0) => {}
            Ok(n) => panic!(
                "expected EOF, got {:?}",
                String::from_utf8_lossy(&byte[..n])
            ),
            Err(e) => panic!("expected a clean EOF, got {e}"),
        }
    }

    /// Sends a request and reads its answer.
    pub fn roundtrip(&mut self, request: &[u8]) -> Resp {
        self.send(request);
        self.read_response()
    }
}

pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes()
}

pub fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

/// The byte pattern the smoltcp tests' `/big` route answers a prefix of
/// (period 251, so a shifted or repeated segment shows).
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// The routes the smoltcp tests' servers share: `/echo…` answers `METHOD
/// PATH BODY` (built in `scratch`), `/big?n=N` the first N bytes of
/// `pattern`; `None` for any other path, which the caller routes.
pub fn echo_or_big<'a>(
    req: &Request<'_>,
    scratch: &'a mut Vec<u8>,
    pattern: &'a [u8],
) -> Option<Response<'a>> {
    let path = req.head.path;
    if path.starts_with("/echo") {
        scratch.clear();
        scratch.extend_from_slice(req.head.method_name().as_bytes());
        scratch.push(b' ');
        scratch.extend_from_slice(path.as_bytes());
        scratch.push(b' ');
        scratch.extend_from_slice(req.body);
        Some(Response::new(200, scratch))
    } else if path == "/big" {
        let n: usize = req
            .head
            .query
            .and_then(|q| q.strip_prefix("n="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
            .min(pattern.len());
        Some(Response::new(200, &pattern[..n]))
    } else {
        None
    }
}

/// In a smoltcp server thread: an `HttpServer` with `limits` on the
/// transport `opts` opens, woken by a byte on `wake`. Tells the test
/// through `opened` whether that worked (the error's text if not, and then
/// `None`), which [`wait_opened`] reads.
pub fn open_smoltcp_server(
    opts: &SmoltcpOptions,
    limits: Limits,
    wake: &UnixStream,
    opened: &mpsc::Sender<Result<(), String>>,
) -> Option<HttpServer<SmoltcpTransport>> {
    let transport = match SmoltcpTransport::open(opts) {
        Ok(t) => t,
        Err(e) => {
            opened.send(Err(e.to_string())).unwrap();
            return None;
        }
    };
    let mut server = HttpServer::new(transport, limits);
    server
        .transport_mut()
        .register_wake_fd(wake.as_raw_fd(), 7)
        .unwrap();
    opened.send(Ok(())).unwrap();
    Some(server)
}

/// The test's side of [`open_smoltcp_server`]: fails unless the server
/// thread opened its transport within `patience`.
pub fn wait_opened(opened: &mpsc::Receiver<Result<(), String>>, patience: Duration) {
    match opened.recv_timeout(patience) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("opening the smoltcp transport failed: {e}"),
        Err(_) => panic!("the server thread did not start"),
    }
}
