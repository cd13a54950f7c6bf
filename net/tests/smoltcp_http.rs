//! The HTTP server over the smoltcp transport, end to end: every test makes
//! its own network namespace with a TAP (or a veth pair for the raw
//! backend), runs `HttpServer<SmoltcpTransport>` on a thread inside it, and
//! drives it with the kernel's TCP stack (std sockets, curl) from inside the
//! same namespace. Nothing is mocked; timing is never asserted.

mod common;
mod netns;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{echo_or_big, get, pattern, post, Client};
use netns::Netns;
use nocturne_net::smoltcp::{DeviceSpec, SmoltcpOptions, SmoltcpStats, SmoltcpTransport};
use nocturne_net::{
    ConnId, Limits, Request, RequestHandler, RequestHead, Responder, Response, Transport,
};

const SERVER: &str = "192.0.2.2:8080";
const KERNEL_SIDE: &str = "192.0.2.1/24";
const STACK_ADDR: &str = "192.0.2.2/24";
const PORT: u16 = 8080;
/// The longest any wait in these tests may take before it fails (a guard
/// against hangs, not a timing assertion).
const PATIENCE: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wire {
    Tap,
    Raw,
}

/// Creates the interface for `wire` in `ns` and names the device the
/// transport opens.
fn make_wire(ns: &Netns, wire: Wire) -> DeviceSpec {
    make_wire_with(ns, wire, false)
}

/// Like [`make_wire`]; `multi_queue` makes a TAP multi-queue, so that
/// several transports can open it (one queue each). Several packet sockets
/// share a veth end as it is.
fn make_wire_with(ns: &Netns, wire: Wire, multi_queue: bool) -> DeviceSpec {
    match wire {
        Wire::Tap => {
            ns.add_tap_with("nct0", KERNEL_SIDE, multi_queue);
            DeviceSpec::Tap("nct0".into())
        }
        Wire::Raw => {
            ns.add_veth("nck0", "ncr0", KERNEL_SIDE);
            DeviceSpec::Raw("ncr0".into())
        }
    }
}

/// The same test on both backends: `mod name { tap, raw }`.
macro_rules! on_both_wires {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn tap() {
                super::$name(super::Wire::Tap)
            }
            #[test]
            fn raw() {
                super::$name(super::Wire::Raw)
            }
        }
    )*};
}

on_both_wires!(
    keep_alive_and_pipelining,
    one_megabyte_bodies_both_ways,
    many_connections_open_at_once,
    connection_close_and_time_wait,
    resets_and_half_closes,
    burst_of_1000_concurrent_connects,
    connection_cap_refuses_and_recovers,
    several_queues_share_one_device,
);

/// What the server thread publishes after every turn.
#[derive(Clone, Debug, Default)]
struct Snapshot {
    http_connections: usize,
    requests: u64,
    stats: SmoltcpStats,
    closed: Vec<ConnId>,
    wakes: u64,
}

/// Routes: `/echo…` answers `METHOD PATH BODY`; `/len` answers the body's
/// length and checksum; `/big?n=N` answers N pattern bytes; else 404.
struct Handler {
    pattern: Arc<Vec<u8>>,
    scratch: Vec<u8>,
    snapshot: Arc<Mutex<Snapshot>>,
    control: UnixStream,
    stop: bool,
    stop_accepting: bool,
}

impl RequestHandler for Handler {
    fn body_limit(&mut self, _head: &RequestHead<'_>) -> usize {
        2 << 20
    }

    fn on_request(&mut self, req: Request<'_>, responder: &mut Responder<'_>) {
        self.snapshot.lock().unwrap().requests += 1;
        let resp = if req.head.path == "/len" {
            self.scratch.clear();
            let line = format!("len={} sum={}", req.body.len(), checksum(req.body));
            self.scratch.extend_from_slice(line.as_bytes());
            Response::new(200, &self.scratch)
        } else {
            echo_or_big(&req, &mut self.scratch, &self.pattern)
                .unwrap_or(Response::new(404, b"no such route"))
        };
        responder.respond(req.id, &resp).unwrap();
    }

    fn on_wake(&mut self, token: usize) {
        assert_eq!(token, 7);
        self.snapshot.lock().unwrap().wakes += 1;
        let mut bytes = [0u8; 16];
        while let Ok(n) = self.control.read(&mut bytes) {
            if n == 0 {
                self.stop = true;
                break;
            }
            for &b in &bytes[..n] {
                match b {
                    b'!' => self.stop = true,
                    b's' => self.stop_accepting = true,
                    _ => {}
                }
            }
        }
    }

    fn on_closed(&mut self, conn: ConnId) {
        self.snapshot.lock().unwrap().closed.push(conn);
    }
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// How the server thread waits between turns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Sleep in epoll (TAP fd + wake fd) until something happens.
    Block,
    /// Poll with a zero timeout, yielding the CPU on idle turns.
    Spin,
}

/// `HttpServer<SmoltcpTransport>` on a thread inside a namespace.
struct Server {
    snapshot: Arc<Mutex<Snapshot>>,
    control: UnixStream,
    thread: Option<thread::JoinHandle<()>>,
}

impl Server {
    fn start(ns: &Netns, opts: SmoltcpOptions, limits: Limits, mode: Mode) -> Self {
        let snapshot = Arc::new(Mutex::new(Snapshot::default()));
        let (control, control_reader) = UnixStream::pair().unwrap();
        control_reader.set_nonblocking(true).unwrap();
        let (opened_tx, opened_rx) = mpsc::channel();
        let published = snapshot.clone();
        let thread = ns.spawn("smoltcp-server", move || {
            let Some(mut server) =
                common::open_smoltcp_server(&opts, limits, &control_reader, &opened_tx)
            else {
                return;
            };
            let mut handler = Handler {
                pattern: Arc::new(pattern(2 << 20)),
                scratch: Vec::new(),
                snapshot: published,
                control: control_reader,
                stop: false,
                stop_accepting: false,
            };
            while !handler.stop {
                let timeout = match mode {
                    Mode::Block => None,
                    Mode::Spin => Some(Duration::ZERO),
                };
                let work = server.poll(timeout, 64, &mut handler).unwrap();
                if handler.stop_accepting {
                    handler.stop_accepting = false;
                    server.transport_mut().stop_accepting();
                }
                {
                    let mut s = handler.snapshot.lock().unwrap();
                    s.http_connections = server.connection_count();
                    s.stats = server.transport().stats();
                }
                if mode == Mode::Spin && work == 0 {
                    thread::yield_now();
                }
            }
        });
        common::wait_opened(&opened_rx, PATIENCE);
        Self {
            snapshot,
            control,
            thread: Some(thread),
        }
    }

    /// A server with default options and limits, sleeping in epoll, on a
    /// fresh `wire` in `ns`.
    fn on_wire(ns: &Netns, wire: Wire) -> Self {
        Self::start(
            ns,
            options(make_wire(ns, wire)),
            Limits::default(),
            Mode::Block,
        )
    }

    fn snapshot(&self) -> Snapshot {
        self.snapshot.lock().unwrap().clone()
    }

    /// Waits (generously, never asserting a duration) until `cond` holds.
    fn wait_until(&self, what: &str, cond: impl Fn(&Snapshot) -> bool) -> Snapshot {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let snap = self.snapshot();
            if cond(&snap) {
                return snap;
            }
            assert!(
                Instant::now() < deadline,
                "gave up waiting for {what}: {snap:?}"
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn send_control(&self, byte: u8) {
        (&self.control).write_all(&[byte]).unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        common::stop_server_thread(&self.control, self.thread.take());
    }
}

fn options(device: DeviceSpec) -> SmoltcpOptions {
    SmoltcpOptions::new(device, STACK_ADDR.parse().unwrap(), PORT)
}

/// A client of the smoltcp server (call from inside the namespace).
fn connect() -> Client {
    client_of(TcpStream::connect(SERVER).expect("connect to the smoltcp server"))
}

/// A client on a stream connected to the smoltcp server: reads give up
/// after [`PATIENCE`], and small requests go out at once (no Nagle delay).
fn client_of(stream: TcpStream) -> Client {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.set_nodelay(true).unwrap();
    Client::from_stream(stream)
}

fn keep_alive_and_pipelining(wire: Wire) {
    for mode in [Mode::Block, Mode::Spin] {
        let Some(ns) = Netns::for_test() else { return };
        let server = Server::start(&ns, options(make_wire(&ns, wire)), Limits::default(), mode);
        ns.run(|| {
            let mut client = connect();
            for i in 0..50 {
                let resp =
                    client.roundtrip(&post(&format!("/echo/{i}"), format!("#{i}").as_bytes()));
                assert_eq!(resp.status, 200);
                assert_eq!(resp.body_str(), format!("POST /echo/{i} #{i}"));
                assert_eq!(resp.header("Connection"), None);
            }
            // Twenty requests in one write, answered in order.
            let mut batch = Vec::new();
            for i in 0..20 {
                batch.extend_from_slice(&get(&format!("/echo/p{i}")));
            }
            client.send(&batch);
            for i in 0..20 {
                assert_eq!(
                    client.read_response().body_str(),
                    format!("GET /echo/p{i} ")
                );
            }
            assert_eq!(client.roundtrip(&get("/nowhere")).status, 404);
        });
        let snap = server.wait_until("the requests", |s| s.requests == 71);
        assert_eq!(snap.stats.accepted, 1, "one keep-alive connection");
        assert_eq!(snap.stats.refused, 0);
    }
}

fn one_megabyte_bodies_both_ways(wire: Wire) {
    let Some(ns) = Netns::for_test() else { return };
    let _server = Server::on_wire(&ns, wire);
    ns.run(|| {
        let body = pattern(1 << 20);
        let mut client = connect();
        // Upload: the server reads 1 MiB through a 64 KiB window.
        let resp = client.roundtrip(&post("/len", &body));
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.body_str(),
            format!("len={} sum={}", body.len(), checksum(&body))
        );
        // Download: 1 MiB through a 64 KiB send buffer, on the same
        // connection, twice.
        for _ in 0..2 {
            let resp = client.roundtrip(&get(&format!("/big?n={}", 1 << 20)));
            assert_eq!(resp.status, 200);
            assert_eq!(resp.body.len(), 1 << 20);
            assert!(resp.body == body, "the downloaded bytes differ");
        }
    });
}

fn many_connections_open_at_once(wire: Wire) {
    let Some(ns) = Netns::for_test() else { return };
    let server = Server::on_wire(&ns, wire);
    ns.run(|| {
        let mut clients: Vec<Client> = (0..200).map(|_| connect()).collect();
        // Interleaved: every connection answers in turn, three rounds.
        for round in 0..3 {
            for (i, client) in clients.iter_mut().enumerate() {
                let resp = client.roundtrip(&get(&format!("/echo/{round}/{i}")));
                assert_eq!(resp.body_str(), format!("GET /echo/{round}/{i} "));
            }
        }
        server.wait_until("200 open connections", |s| s.stats.open == 200);
        clients.clear();
    });
    let snap = server.wait_until("every connection closed", |s| {
        s.stats.open == 0 && s.stats.closing == 0 && s.http_connections == 0
    });
    assert_eq!(snap.stats.accepted, 200);
    assert_eq!(snap.closed.len(), 200);
}

fn connection_close_and_time_wait(wire: Wire) {
    let Some(ns) = Netns::for_test() else { return };
    let server = Server::on_wire(&ns, wire);
    ns.run(|| {
        // Short connections, one after another: the server closes first,
        // so each ends in TIME-WAIT on our side.
        for i in 0..100 {
            let mut client = connect();
            let req = format!("GET /echo/{i} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
            let resp = client.roundtrip(req.as_bytes());
            assert_eq!(resp.body_str(), format!("GET /echo/{i} "));
            assert_eq!(resp.header("Connection"), Some("close"));
            client.expect_eof();
        }
    });
    let snap = server.wait_until("closes to settle", |s| {
        s.stats.open == 0 && s.stats.closing == 0 && s.stats.time_wait == 100
    });
    assert_eq!(snap.stats.accepted, 100);
    // The sockets were recycled, not kept for TIME-WAIT: no resets either.
    assert_eq!(snap.stats.resets, 0);
}

fn resets_and_half_closes(wire: Wire) {
    let Some(ns) = Netns::for_test() else { return };
    let server = Server::on_wire(&ns, wire);
    ns.run(|| {
        // A client that resets mid-request (after one answered request, so
        // the connection surely reached the server).
        let mut client = connect();
        assert_eq!(client.roundtrip(&get("/echo/first")).status, 200);
        let mut partial = client.stream;
        partial
            .write_all(b"POST /echo HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc")
            .unwrap();
        socket2::SockRef::from(&partial)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(partial); // RST
        server.wait_until("the reset connection to go", |s| {
            s.stats.accepted == 1 && s.stats.open == 0 && s.closed.len() == 1
        });

        // Reset right after connecting: whether the server saw the
        // handshake complete or not, nothing is left behind.
        let quick = connect();
        socket2::SockRef::from(&quick.stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(quick);
        server.wait_until("the handshake to be cleaned up", |s| {
            s.stats.open == 0 && s.stats.handshaking == 0
        });

        // Half-close after the request: the answer still comes, then EOF.
        let mut client = connect();
        client.send(&post("/echo/half", b"bye"));
        client.stream.shutdown(Shutdown::Write).unwrap();
        assert_eq!(client.read_response().body_str(), "POST /echo/half bye");
        client.expect_eof();

        // Garbage: 400, then a clean close (lingering, not a reset).
        let mut client = connect();
        let resp = client.roundtrip(b"NONSENSE\r\n\r\n");
        assert_eq!(resp.status, 400);
        client.expect_eof();

        // A closed port: refused by the stack's reset.
        let err = TcpStream::connect("192.0.2.2:8081").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);

        // The server still works.
        let mut client = connect();
        assert_eq!(client.roundtrip(&get("/echo/ok")).status, 200);
    });
    let snap = server.wait_until("all connections gone", |s| {
        s.stats.open == 0 && s.stats.closing == 0
    });
    // Connections that reached the handler are reported closed.
    assert!(snap.closed.len() >= 2, "{snap:?}");
}

fn burst_of_1000_concurrent_connects(wire: Wire) {
    const N: usize = 1000;
    let Some(ns) = Netns::for_test() else { return };
    let server = Server::on_wire(&ns, wire);
    netns::raise_fd_limit();
    ns.run(|| {
        let addr: SocketAddr = SERVER.parse().unwrap();
        // All connects in flight at once: non-blocking sockets, then wait
        // for each to finish.
        let sockets: Vec<socket2::Socket> = (0..N)
            .map(|_| {
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                    .unwrap();
                s.set_nonblocking(true).unwrap();
                match s.connect(&addr.into()) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                    Err(e) => panic!("connect: {e}"),
                }
                s
            })
            .collect();
        let mut fds: Vec<libc::pollfd> = sockets
            .iter()
            .map(|s| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut connected = vec![false; N];
        while connected.iter().any(|c| !c) {
            assert!(Instant::now() < deadline, "connects did not finish");
            poll_fds(&mut fds, 100);
            for (i, pfd) in fds.iter_mut().enumerate() {
                if connected[i] || pfd.revents == 0 {
                    continue;
                }
                if let Some(e) = sockets[i].take_error().unwrap() {
                    panic!("connect {i} failed: {e}");
                }
                connected[i] = true;
                pfd.fd = -1; // stop polling it
            }
        }
        // Every connection is real: ask each for an answer.
        let mut clients: Vec<Client> = sockets
            .into_iter()
            .map(|s| {
                s.set_nonblocking(false).unwrap();
                client_of(s.into())
            })
            .collect();
        for (i, client) in clients.iter_mut().enumerate() {
            client.send(&get(&format!("/echo/{i}")));
        }
        for (i, client) in clients.iter_mut().enumerate() {
            assert_eq!(client.read_response().body_str(), format!("GET /echo/{i} "));
        }
        let snap = server.wait_until("1000 open connections", |s| s.stats.open == N);
        assert_eq!(snap.stats.refused, 0);
    });
    let snap = server.wait_until("every connection closed", |s| {
        s.stats.open == 0 && s.stats.closing == 0
    });
    assert_eq!(snap.stats.accepted, N as u64);
    assert_eq!(snap.stats.refused, 0);
}

fn poll_fds(fds: &mut [libc::pollfd], timeout_ms: i32) {
    #[allow(unsafe_code)]
    // SAFETY: fds is a valid, exclusively borrowed array of pollfd.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    assert!(n >= 0, "poll: {}", io::Error::last_os_error());
}

fn connection_cap_refuses_and_recovers(wire: Wire) {
    let Some(ns) = Netns::for_test() else { return };
    let mut opts = options(make_wire(&ns, wire));
    opts.max_connections = 4;
    let server = Server::start(&ns, opts, Limits::default(), Mode::Block);
    ns.run(|| {
        let mut clients: Vec<Client> = (0..4).map(|_| connect()).collect();
        for client in &mut clients {
            assert_eq!(client.roundtrip(&get("/echo")).status, 200);
        }
        // The fifth is refused at once (a reset), not left hanging.
        let err = TcpStream::connect(SERVER).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        server.wait_until("the refusal to be counted", |s| s.stats.refused >= 1);
        // One leaves: after its close completes, a new one gets in.
        clients.pop();
        let deadline = Instant::now() + PATIENCE;
        let mut client = loop {
            match TcpStream::connect(SERVER) {
                Ok(stream) => break client_of(stream),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    assert!(Instant::now() < deadline, "still refused");
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("connect: {e}"),
            }
        };
        assert_eq!(client.roundtrip(&get("/echo/again")).status, 200);
        for client in &mut clients {
            assert_eq!(client.roundtrip(&get("/echo")).status, 200);
        }
    });
}

#[test]
fn stop_accepting_refuses_new_connections_and_keeps_open_ones() {
    let Some(ns) = Netns::for_test() else { return };
    let server = Server::on_wire(&ns, Wire::Tap);
    ns.run(|| {
        let mut client = connect();
        assert_eq!(client.roundtrip(&get("/echo/1")).status, 200);
        server.send_control(b's');
        let deadline = Instant::now() + PATIENCE;
        loop {
            match TcpStream::connect(SERVER) {
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break,
                Err(e) => panic!("connect: {e}"),
                // The wake may not have been handled yet.
                Ok(_) => assert!(Instant::now() < deadline, "still accepting"),
            }
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(client.roundtrip(&get("/echo/2")).body_str(), "GET /echo/2 ");
    });
    assert!(server.snapshot().wakes >= 1);
}

#[test]
fn curl_talks_to_the_tap_stack() {
    let Some(ns) = Netns::for_test() else { return };
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!(
            "curl is not installed: skipping the curl test (the std client tests cover the stack)"
        );
        return;
    }
    let server = Server::on_wire(&ns, Wire::Tap);
    // Two URLs in one curl run share a keep-alive connection.
    let out = ns
        .command("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "--data-binary",
            "hello",
            "http://192.0.2.2:8080/echo/a",
            "http://192.0.2.2:8080/echo/b",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "POST /echo/a helloPOST /echo/b hello"
    );
    let snap = server.wait_until("curl's requests", |s| s.requests == 2);
    assert_eq!(snap.stats.accepted, 1);
}

fn several_queues_share_one_device(wire: Wire) {
    let Some(ns) = Netns::for_test() else { return };
    let mut opts = options(make_wire_with(&ns, wire, true));
    opts.queues = 2;
    let servers: Vec<Server> = (0..2)
        .map(|_| Server::start(&ns, opts.clone(), Limits::default(), Mode::Block))
        .collect();
    ns.run(|| {
        let mut clients: Vec<Client> = (0..32).map(|_| connect()).collect();
        for (i, client) in clients.iter_mut().enumerate() {
            assert_eq!(
                client.roundtrip(&get(&format!("/echo/{i}"))).body_str(),
                format!("GET /echo/{i} ")
            );
        }
    });
    let accepted: Vec<u64> = servers
        .iter()
        .map(|s| s.snapshot().stats.accepted)
        .collect();
    eprintln!("connections per {wire:?} queue: {accepted:?}");
    assert_eq!(accepted.iter().sum::<u64>(), 32);
}

#[test]
fn the_interface_mtu_bounds_segments() {
    let Some(ns) = Netns::for_test() else { return };
    let device = make_wire(&ns, Wire::Tap);
    // Read by the transport from the interface: MSS 1240 both ways.
    ns.ip(&["link", "set", "dev", "nct0", "mtu", "1280"]);
    let probe = options(device.clone());
    let mtu = ns.run(move || SmoltcpTransport::open(&probe).unwrap().mtu());
    assert_eq!(mtu, 1280);
    let _server = Server::start(&ns, options(device), Limits::default(), Mode::Block);
    ns.run(|| {
        let body = pattern(300_000);
        let mut client = connect();
        let resp = client.roundtrip(&post("/len", &body));
        assert_eq!(
            resp.body_str(),
            format!("len={} sum={}", body.len(), checksum(&body))
        );
        let resp = client.roundtrip(&get("/big?n=300000"));
        assert!(resp.body == body);
    });
}

#[test]
fn opening_a_tap_outside_a_usable_name_fails_with_a_typed_error() {
    let Some(ns) = Netns::for_test() else { return };
    // A veth is not a TAP: TUNSETIFF refuses to attach to it.
    ns.add_veth("nck0", "ncr0", KERNEL_SIDE);
    let err = ns.run(|| SmoltcpTransport::open(&options(DeviceSpec::Tap("nck0".into()))).err());
    assert!(
        matches!(err, Some(nocturne_net::smoltcp::OpenError::Tap { .. })),
        "{err:?}"
    );
    // A TAP is not usable as a raw interface with a missing name.
    let err = ns.run(|| SmoltcpTransport::open(&options(DeviceSpec::Raw("nope0".into()))).err());
    assert!(
        matches!(err, Some(nocturne_net::smoltcp::OpenError::Packet { .. })),
        "{err:?}"
    );
}

#[test]
fn the_harness_deletes_its_namespace_also_on_panic() {
    let Some(ns) = Netns::for_test() else { return };
    let name = ns.name().to_owned();
    assert!(netns::exists(&name));
    let result = std::panic::catch_unwind(move || {
        let _owned = ns;
        panic!("a failing test");
    });
    assert!(result.is_err());
    assert!(!netns::exists(&name), "{name} survived the panic");
}
