//! Measurements behind the smoltcp transport's tuning (ignored by default;
//! they print numbers for `docs/userspace-networking.md`):
//!
//! ```text
//! cargo test --release -p nocturne-net --test smoltcp_measure -- --ignored --nocapture --test-threads=1
//! ```
//!
//! * `stock_socket_set_cost_grows_with_connections` — what a transport
//!   pays per turn and per segment when every connection sits in one smoltcp
//!   `SocketSet` (smoltcp scans it for every segment; its egress and
//!   `poll_at` visit every socket), at 1, 64 and 1024 connections.
//! * `request_latency_with_idle_connections` — the transport as built
//!   (a socket set per connection) over a TAP: sequential requests on one
//!   connection while 0, 63 or 1023 others are open.
//! * `frames_per_request_by_ack_delay` — frames on the wire per
//!   request/response and latency with delayed ACKs off and on, for
//!   answers written inside the handler and 5 µs later (as the engine
//!   answers once a worker is done).
//! * `tcp_echo_latency_without_http` — a 64-byte TCP echo straight on the
//!   transport, to separate the stack from the HTTP layer.
//!
//! Each still checks every answer; none asserts a duration.

mod netns;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use netns::Netns;
use nocturne_net::smoltcp::{DeviceSpec, SmoltcpOptions, SmoltcpStats, SmoltcpTransport};
use nocturne_net::{
    ConnId, HttpServer, KernelOptions, KernelTransport, Limits, Request, RequestHandler,
    RequestHead, RequestId, Responder, Response, Transport, TransportEvent,
};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Loopback, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr};

/// Percentiles of a set of latencies, in µs.
fn summary(samples: &mut [Duration]) -> String {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1e6
    };
    format!(
        "p50 {:7.2}  p99 {:7.2}  p99.9 {:7.2}  max {:8.2} µs",
        at(0.5),
        at(0.99),
        at(0.999),
        at(1.0)
    )
}

#[test]
#[ignore = "measurement: run with --ignored --nocapture"]
fn stock_socket_set_cost_grows_with_connections() {
    for n in [1usize, 64, 1024] {
        let mut device = Loopback::new(Medium::Ethernet);
        let config = Config::new(EthernetAddress([0x02, 0, 0, 0, 0, 1]).into());
        let start = Instant::now();
        let now = || SmolInstant::from_micros(1_000_000 + start.elapsed().as_micros() as i64);
        let mut iface = Interface::new(config, &mut device, now());
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::v4(127, 0, 0, 1), 8)).unwrap();
        });
        let mut set = SocketSet::new(Vec::new());
        let mut pairs: Vec<(SocketHandle, SocketHandle)> = Vec::new();
        let new_socket = || {
            let mut s = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 4096]),
                tcp::SocketBuffer::new(vec![0; 4096]),
            );
            s.set_nagle_enabled(false);
            s.set_ack_delay(None);
            s
        };
        for i in 0..n {
            let mut server = new_socket();
            server.listen(80).unwrap();
            let server = set.add(server);
            let client = set.add(new_socket());
            set.get_mut::<tcp::Socket>(client)
                .connect(
                    iface.context(),
                    (IpAddress::v4(127, 0, 0, 1), 80),
                    10_000 + i as u16,
                )
                .unwrap();
            pairs.push((client, server));
        }
        for _ in 0..10_000 {
            iface.poll(now(), &mut device, &mut set);
            if pairs.iter().all(|&(c, s)| {
                set.get::<tcp::Socket>(c).may_send() && set.get::<tcp::Socket>(s).may_send()
            }) {
                break;
            }
        }
        assert!(pairs
            .iter()
            .all(|&(c, _)| set.get::<tcp::Socket>(c).state() == tcp::State::Established));

        // An idle turn: poll + poll_delay with nothing to do.
        let mut idle = Vec::new();
        for _ in 0..2_000 {
            let t = Instant::now();
            iface.poll(now(), &mut device, &mut set);
            let _ = iface.poll_delay(now(), &set);
            idle.push(t.elapsed());
        }
        // One 64-byte message from one client to its server and back to
        // quiet: every segment is matched by a scan of the set.
        let (client, server) = pairs[n / 2];
        let mut exchange = Vec::new();
        let mut buf = [0u8; 64];
        for _ in 0..2_000 {
            let t = Instant::now();
            set.get_mut::<tcp::Socket>(client)
                .send_slice(&[7; 64])
                .unwrap();
            let mut got = 0;
            while got < 64 {
                iface.poll(now(), &mut device, &mut set);
                got += set
                    .get_mut::<tcp::Socket>(server)
                    .recv_slice(&mut buf)
                    .unwrap();
            }
            iface.poll(now(), &mut device, &mut set);
            exchange.push(t.elapsed());
        }
        println!(
            "one SocketSet, {n:4} connections ({:4} sockets): idle turn {} | message {}",
            2 * n,
            summary(&mut idle),
            summary(&mut exchange)
        );
    }
}

/// Echo handler: `POST /echo` answers the body, at once or (`defer`) from
/// outside the poll after a delay, the way the engine answers once a
/// worker is done.
struct Echo {
    stop: bool,
    control: UnixStream,
    defer: Option<Duration>,
    held: Vec<(RequestId, Instant)>,
}

impl RequestHandler for Echo {
    fn body_limit(&mut self, _head: &RequestHead<'_>) -> usize {
        4096
    }

    fn on_request(&mut self, req: Request<'_>, responder: &mut Responder<'_>) {
        if self.defer.is_some() {
            assert_eq!(req.body, &[b'x'; 64][..]);
            self.held.push((req.id, Instant::now()));
        } else {
            responder
                .respond(req.id, &Response::new(200, req.body))
                .unwrap();
        }
    }

    fn on_wake(&mut self, _token: usize) {
        let mut b = [0u8; 8];
        let _ = self.control.read(&mut b);
        self.stop = true;
    }

    fn on_closed(&mut self, _conn: ConnId) {}
}

/// A busy-polling server (yields on idle turns, so a 2-core machine still
/// runs the client) on its own thread in `ns`.
struct Spinner {
    control: UnixStream,
    stats: Arc<Mutex<Option<SmoltcpStats>>>,
    thread: Option<thread::JoinHandle<()>>,
}

/// The frame counters of a transport that has them.
trait FrameStats {
    fn frame_stats(&self) -> Option<SmoltcpStats>;
}

impl FrameStats for SmoltcpTransport {
    fn frame_stats(&self) -> Option<SmoltcpStats> {
        Some(self.stats())
    }
}

impl FrameStats for KernelTransport {
    fn frame_stats(&self) -> Option<SmoltcpStats> {
        None
    }
}

impl Spinner {
    fn start<T, F>(ns: &Netns, defer: Option<Duration>, make: F) -> (Self, std::net::SocketAddr)
    where
        T: Transport + FrameStats + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (control, reader) = UnixStream::pair().unwrap();
        reader.set_nonblocking(true).unwrap();
        let stats = Arc::new(Mutex::new(None));
        let published = stats.clone();
        let (tx, rx) = mpsc::channel();
        let thread = ns.spawn("spinner", move || {
            let transport = make();
            let mut server = HttpServer::new(transport, Limits::default());
            server
                .transport_mut()
                .register_wake_fd(reader.as_raw_fd(), 1)
                .unwrap();
            tx.send(server.local_addr()).unwrap();
            let mut handler = Echo {
                stop: false,
                control: reader,
                defer,
                held: Vec::new(),
            };
            while !handler.stop {
                let work = server.poll(Some(Duration::ZERO), 64, &mut handler).unwrap();
                let mut answered = 0;
                if let Some(delay) = handler.defer {
                    while handler
                        .held
                        .first()
                        .is_some_and(|(_, t)| t.elapsed() >= delay)
                    {
                        let (id, _) = handler.held.remove(0);
                        server
                            .respond(id, &Response::new(200, &[b'x'; 64]))
                            .unwrap();
                        answered += 1;
                    }
                }
                if work == 0 && answered == 0 && handler.held.is_empty() {
                    thread::yield_now();
                }
            }
            *published.lock().unwrap() = server.transport().frame_stats();
        });
        let addr = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        (
            Self {
                control,
                stats,
                thread: Some(thread),
            },
            addr,
        )
    }

    fn stop(mut self) -> Option<SmoltcpStats> {
        (&self.control).write_all(b"!").unwrap();
        self.thread.take().unwrap().join().unwrap();
        *self.stats.lock().unwrap()
    }
}

/// Sequential 64-byte echo requests on one connection.
fn sequential_latency(addr: std::net::SocketAddr, requests: usize) -> Vec<Duration> {
    let body = [b'x'; 64];
    let mut req = format!(
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // Learn the answer's length once.
    stream.write_all(&req).unwrap();
    let mut first = Vec::new();
    let mut chunk = [0u8; 4096];
    let expected = loop {
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0);
        first.extend_from_slice(&chunk[..n]);
        if let Some(end) = first.windows(4).position(|w| w == b"\r\n\r\n") {
            if first.len() >= end + 4 + body.len() {
                assert!(first.starts_with(b"HTTP/1.1 200"));
                assert!(first.ends_with(&body));
                break first.len();
            }
        }
    };
    let mut samples = Vec::with_capacity(requests);
    let mut answer = vec![0u8; expected];
    for _ in 0..requests {
        let t = Instant::now();
        stream.write_all(&req).unwrap();
        stream.read_exact(&mut answer).unwrap();
        samples.push(t.elapsed());
        assert!(answer.ends_with(&body));
    }
    samples
}

fn tap_transport(opts: SmoltcpOptions) -> impl FnOnce() -> SmoltcpTransport + Send + 'static {
    move || SmoltcpTransport::open(&opts).unwrap()
}

fn tap_options() -> SmoltcpOptions {
    SmoltcpOptions::new(
        DeviceSpec::Tap("nct0".into()),
        "192.0.2.2/24".parse().unwrap(),
        8080,
    )
}

#[test]
#[ignore = "measurement: run with --ignored --nocapture"]
fn request_latency_with_idle_connections() {
    netns::raise_fd_limit();
    let Some(ns) = Netns::for_test() else { return };
    ns.add_tap("nct0", "192.0.2.1/24");
    let (server, addr) = Spinner::start(&ns, None, tap_transport(tap_options()));
    ns.run(|| {
        let mut idle: Vec<TcpStream> = Vec::new();
        for n in [1usize, 64, 1024] {
            while idle.len() + 1 < n {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
                let mut b = [0u8; 256];
                assert!(s.read(&mut b).unwrap() > 0);
                idle.push(s);
            }
            let _warm = sequential_latency(addr, 1_000);
            let mut samples = sequential_latency(addr, 20_000);
            println!("smoltcp TAP, {n:4} connections: {}", summary(&mut samples));
        }
    });
    server.stop();
    // The kernel stack in the same namespace, same server, same client.
    let (kernel, kaddr) = Spinner::start(&ns, None, || {
        KernelTransport::bind("127.0.0.1:0".parse().unwrap(), &KernelOptions::default()).unwrap()
    });
    ns.run(|| {
        let _warm = sequential_latency(kaddr, 1_000);
        let mut samples = sequential_latency(kaddr, 20_000);
        println!("kernel loopback, 1 connection: {}", summary(&mut samples));
    });
    kernel.stop();
}

#[test]
#[ignore = "measurement: run with --ignored --nocapture"]
fn frames_per_request_by_ack_delay() {
    const REQUESTS: usize = 20_000;
    // Answered inside the handler, and 5 µs later from outside the poll
    // (a worker's round trip).
    for defer in [None, Some(Duration::from_micros(5))] {
        for ack_delay in [
            None,
            Some(Duration::from_millis(1)),
            Some(Duration::from_millis(10)),
        ] {
            let Some(ns) = Netns::for_test() else { return };
            ns.add_tap("nct0", "192.0.2.1/24");
            let mut opts = tap_options();
            opts.ack_delay = ack_delay;
            let (server, addr) = Spinner::start(&ns, defer, tap_transport(opts));
            let mut samples = ns.run(|| {
                let _warm = sequential_latency(addr, 2_000);
                sequential_latency(addr, REQUESTS)
            });
            // Over the whole run: two connections' handshakes and closes
            // are noise next to 22 002 requests.
            let total = (REQUESTS + 2_002) as f64;
            let after = server.stop().unwrap();
            let rx = after.rx_frames as f64 / total;
            let tx = after.tx_frames as f64 / total;
            println!(
                "answer {:>9}, ack_delay {:>9}: frames per request in {rx:.2} out {tx:.2} | {}",
                defer.map_or("at once".to_owned(), |d| format!("+{d:?}")),
                format!("{ack_delay:?}"),
                summary(&mut samples)
            );
        }
    }
}

#[test]
#[ignore = "measurement: run with --ignored --nocapture"]
fn tcp_echo_latency_without_http() {
    let Some(ns) = Netns::for_test() else { return };
    ns.add_tap("nct0", "192.0.2.1/24");
    let (opened_tx, opened_rx) = mpsc::channel();
    let (stop, stop_reader) = UnixStream::pair().unwrap();
    stop_reader.set_nonblocking(true).unwrap();
    let echo = ns.spawn("echo", move || {
        let mut transport = SmoltcpTransport::open(&tap_options()).unwrap();
        transport
            .register_wake_fd(stop_reader.as_raw_fd(), 1)
            .unwrap();
        opened_tx.send(()).unwrap();
        let mut events = Vec::new();
        let mut buf = vec![0u8; 4096];
        loop {
            events.clear();
            transport.poll(Some(Duration::ZERO), &mut events).unwrap();
            if events.is_empty() {
                thread::yield_now();
            }
            for &event in &events {
                match event {
                    TransportEvent::Wake(_) => return,
                    TransportEvent::Accepted(id) | TransportEvent::Readable(id) => loop {
                        match transport.read(id, &mut buf) {
                            Ok(0) => {
                                transport.close(id);
                                break;
                            }
                            Ok(n) => assert_eq!(transport.write(id, &buf[..n]).unwrap(), n),
                            Err(_) => break,
                        }
                    },
                    _ => {}
                }
            }
        }
    });
    opened_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    ns.run(|| {
        let mut stream = TcpStream::connect("192.0.2.2:8080").unwrap();
        stream.set_nodelay(true).unwrap();
        let message = [7u8; 64];
        let mut back = [0u8; 64];
        let mut samples = Vec::new();
        for i in 0..25_000 {
            let t = Instant::now();
            stream.write_all(&message).unwrap();
            stream.read_exact(&mut back).unwrap();
            if i >= 5_000 {
                samples.push(t.elapsed());
            }
            assert_eq!(back, message);
        }
        println!(
            "TCP echo on SmoltcpTransport (no HTTP), TAP: {}",
            summary(&mut samples)
        );
    });
    (&stop).write_all(b"!").unwrap();
    echo.join().unwrap();
}
