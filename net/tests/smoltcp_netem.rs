//! The smoltcp HTTP server on a bad link: loss, reordering, duplication,
//! delay with jitter. The kernel has no `sch_netem`, so a userspace relay
//! (`netns/impair.rs`) sits between a kernel-TCP client and the smoltcp
//! server:
//!
//! ```text
//!  namespace C: client (kernel TCP) ─ TAP nck0 192.0.2.1/24 ═╗
//!                                                         relay (seeded drops, delays, copies)
//!  namespace S: HttpServer<SmoltcpTransport> 192.0.2.2 ─ TAP nct0 ═╝ (packet socket)
//! ```
//!
//! Each test makes its own two namespaces (deleted when it ends, also on
//! failure) and fails if it cannot make them, its TAPs or the relay;
//! `NOCTURNE_SKIP_NETNS=1` (never set in CI) skips them, as in the other
//! namespace tests.
//!
//! Every test checks that each request gets exactly its own answer, that
//! the whole exchange finishes within a generous bound (no hang), and that
//! the server still serves new connections afterwards. Timing is bounded,
//! never asserted tightly. `measure_bad_links` (ignored) prints the numbers
//! in docs/userspace-networking.md, "On a bad link".

mod common;
#[path = "netns/impair.rs"]
mod impair;
mod netns;
#[path = "common/syn_frame.rs"]
mod syn_frame;

use std::io::Read;
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{echo_or_big, get, pattern, post, Client};
use impair::{Counts, Endpoint, Impairment, Relay, RelayConfig};
use netns::Netns;
use nocturne_net::smoltcp::{DeviceSpec, SmoltcpOptions};
use nocturne_net::{Limits, Request, RequestHandler, Responder, Response};
use syn_frame::Syn;

const SERVER: &str = "192.0.2.2:8080";
const PORT: u16 = 8080;
/// Guard against hangs: a client read, and a whole exchange, give up after
/// this. Far above what any test needs (a few seconds even with smoltcp's
/// one-second minimum RTO), so a loaded machine does not fail them.
const PATIENCE: Duration = Duration::from_secs(25);

/// `/echo…` answers `METHOD PATH BODY`; `/big?n=N` answers N pattern bytes.
struct Handler {
    pattern: Vec<u8>,
    scratch: Vec<u8>,
    control: UnixStream,
    stop: bool,
}

impl RequestHandler for Handler {
    fn body_limit(&mut self, _head: &nocturne_net::RequestHead<'_>) -> usize {
        1 << 20
    }

    fn on_request(&mut self, req: Request<'_>, responder: &mut Responder<'_>) {
        let resp = echo_or_big(&req, &mut self.scratch, &self.pattern)
            .unwrap_or(Response::new(404, b"no such route"));
        responder.respond(req.id, &resp).unwrap();
    }

    fn on_wake(&mut self, _token: usize) {
        let mut bytes = [0u8; 16];
        // Any byte, or EOF, stops the server.
        if let Ok(n) = self.control.read(&mut bytes) {
            self.stop |= n == 0 || bytes[..n].contains(&b'!');
        }
    }

    fn on_closed(&mut self, _conn: nocturne_net::ConnId) {}
}

/// A client namespace, a server namespace, the smoltcp server in the
/// latter and the relay between them. Dropping it stops the server and the
/// relay and deletes both namespaces (also when a test fails).
struct BadLink {
    relay: Relay,
    control: UnixStream,
    server: Option<thread::JoinHandle<()>>,
    // Dropped last (field order): the threads above must be gone first.
    client_ns: Netns,
    _server_ns: Netns,
}

impl BadLink {
    /// `to_server` impairs frames from the client to smoltcp, `to_client`
    /// the other way.
    /// `None` only where `NOCTURNE_SKIP_NETNS=1` (never in CI); a
    /// namespace, interface or relay that cannot be made fails the test.
    fn new(seed: u64, to_server: Impairment, to_client: Impairment) -> Option<Self> {
        let client_ns = Netns::for_test()?;
        let server_ns = Netns::for_test()?;
        // The server's TAP has no address on the kernel side: namespace S's
        // own stack drops what smoltcp sends, only the relay passes it on.
        server_ns.ip(&["tuntap", "add", "dev", "nct0", "mode", "tap"]);
        server_ns.ip(&["link", "set", "dev", "nct0", "txqueuelen", "4096"]);
        server_ns.ip(&["link", "set", "dev", "nct0", "up"]);
        client_ns.add_tap("nck0", "192.0.2.1/24");

        let (control, control_reader) = UnixStream::pair().unwrap();
        control_reader.set_nonblocking(true).unwrap();
        let (opened_tx, opened_rx) = mpsc::channel();
        let server = server_ns.spawn("smoltcp-server", move || {
            let opts = SmoltcpOptions::new(
                DeviceSpec::Tap("nct0".into()),
                "192.0.2.2/24".parse().unwrap(),
                PORT,
            );
            let Some(mut server) =
                common::open_smoltcp_server(&opts, Limits::default(), &control_reader, &opened_tx)
            else {
                return;
            };
            let mut handler = Handler {
                pattern: pattern(1 << 20),
                scratch: Vec::new(),
                control: control_reader,
                stop: false,
            };
            while !handler.stop {
                server.poll(None, 64, &mut handler).unwrap();
            }
        });
        common::wait_opened(&opened_rx, PATIENCE);

        let a = client_ns
            .run(|| Endpoint::tap("nck0"))
            .expect("attach the relay to the client's TAP");
        let b = server_ns
            .run(|| Endpoint::packet("nct0"))
            .expect("a packet socket on the server's TAP");
        client_ns
            .run(|| impair::wait_running("nck0", Duration::from_secs(5)))
            .expect("the client's TAP starts carrying frames");
        let relay = Relay::start(
            a,
            b,
            RelayConfig {
                seed,
                a_to_b: to_server,
                b_to_a: to_client,
            },
        );
        Some(Self {
            relay,
            control,
            server: Some(server),
            client_ns,
            _server_ns: server_ns,
        })
    }

    fn to_server(&self) -> Counts {
        self.relay.stats().a_to_b.counts()
    }

    fn to_client(&self) -> Counts {
        self.relay.stats().b_to_a.counts()
    }

    /// Runs `f` in the client's namespace.
    fn client<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.client_ns.run(f)
    }
}

impl Drop for BadLink {
    fn drop(&mut self) {
        common::stop_server_thread(&self.control, self.server.take());
    }
}

fn connect() -> Client {
    let stream = TcpStream::connect_timeout(&SERVER.parse().unwrap(), PATIENCE)
        .expect("connect to the smoltcp server");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.set_write_timeout(Some(PATIENCE)).unwrap();
    stream.set_nodelay(true).unwrap();
    Client::from_stream(stream)
}

/// A request body unique to (connection, request), `len` bytes.
fn body(conn: usize, i: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| b'a' + ((conn * 7 + i * 13 + k) % 26) as u8)
        .collect()
}

/// On `conns` connections at once, `per_conn` requests each: mostly small
/// echoes, every fourth 6000 bytes (several segments each way), groups of
/// three pipelined, and one `download`-byte download per connection (a long
/// run of smoltcp's segments). Checks every answer byte for byte; returns
/// how long it took.
fn exercise(link: &BadLink, conns: usize, per_conn: usize, download: usize) -> Duration {
    let started = Instant::now();
    link.client(|| {
        thread::scope(|scope| {
            let workers: Vec<_> = (0..conns)
                .map(|c| scope.spawn(move || one_connection(c, per_conn, download)))
                .collect();
            for w in workers {
                w.join().expect("a client connection failed");
            }
        })
    });
    let took = started.elapsed();
    assert!(took < PATIENCE, "the exchange took {took:?}");
    took
}

fn one_connection(c: usize, per_conn: usize, download: usize) {
    let mut client = connect();
    let mut i = 0;
    while i < per_conn {
        // Up to three requests in flight at once (pipelining).
        let batch: Vec<usize> = (i..(i + 3).min(per_conn)).collect();
        let mut wire = Vec::new();
        for &k in &batch {
            let len = if k % 4 == 3 { 6000 } else { 64 };
            wire.extend_from_slice(&post(&format!("/echo/{c}/{k}"), &body(c, k, len)));
        }
        client.send(&wire);
        for &k in &batch {
            let len = if k % 4 == 3 { 6000 } else { 64 };
            let resp = client.read_response();
            assert_eq!(resp.status, 200, "connection {c} request {k}");
            let mut want = format!("POST /echo/{c}/{k} ").into_bytes();
            want.extend_from_slice(&body(c, k, len));
            assert!(
                resp.body == want,
                "connection {c} request {k}: wrong answer ({} bytes, want {})",
                resp.body.len(),
                want.len()
            );
        }
        i += batch.len();
    }
    let resp = client.roundtrip(&get(&format!("/big?n={download}")));
    assert_eq!(resp.status, 200);
    assert!(
        resp.body == pattern(download),
        "connection {c}: the {download}-byte download differs"
    );
}

/// After the impaired run: with the link healed, new connections are
/// served and every answer is right.
fn still_serves(link: &BadLink) {
    link.relay.heal();
    link.client(|| {
        for c in 0..3 {
            let mut client = connect();
            for i in 0..10 {
                let b = body(100 + c, i, 100);
                let resp = client.roundtrip(&post("/echo/after", &b));
                let mut want = b"POST /echo/after ".to_vec();
                want.extend_from_slice(&b);
                assert_eq!(resp.status, 200);
                assert!(resp.body == want, "a wrong answer after the impaired run");
            }
        }
    });
}

#[test]
fn loss() {
    // 2 % each way: enough that both stacks retransmit. Every frame of
    // smoltcp's that is lost costs it at least its one-second minimum RTO
    // (see docs/userspace-networking.md, "On a bad link"), so the download
    // is smaller than in the other tests: 3–10 s in all, far from the bound.
    let imp = Impairment::loss(0.02);
    let Some(link) = BadLink::new(0x5eed_0001, imp, imp) else {
        return;
    };
    let took = exercise(&link, 4, 24, 100_000);
    let (up, down) = (link.to_server(), link.to_client());
    eprintln!("loss: {took:?}, to server {up:?}, to client {down:?}");
    assert!(
        up.dropped + down.dropped > 0,
        "the relay dropped nothing: the test proved nothing"
    );
    still_serves(&link);
}

#[test]
fn reordering() {
    // One frame in ten held back 3 ms: the frames behind it overtake it.
    let imp = Impairment::reorder(0.1, Duration::from_millis(3));
    let Some(link) = BadLink::new(0x5eed_0002, imp, imp) else {
        return;
    };
    let took = exercise(&link, 4, 24, 300_000);
    let (up, down) = (link.to_server(), link.to_client());
    eprintln!("reordering: {took:?}, to server {up:?}, to client {down:?}");
    assert!(up.reordered > 0 && down.reordered > 0);
    still_serves(&link);
}

#[test]
fn duplication() {
    let imp = Impairment::duplicate(0.1);
    let Some(link) = BadLink::new(0x5eed_0003, imp, imp) else {
        return;
    };
    let took = exercise(&link, 4, 24, 300_000);
    let (up, down) = (link.to_server(), link.to_client());
    eprintln!("duplication: {took:?}, to server {up:?}, to client {down:?}");
    assert!(up.duplicated > 0 && down.duplicated > 0);
    still_serves(&link);
}

#[test]
fn delay_and_jitter() {
    // 5 ms ± 0–4 ms each way (jitter reorders, as netem's does).
    let imp = Impairment::delay(Duration::from_millis(5), Duration::from_millis(4));
    let Some(link) = BadLink::new(0x5eed_0004, imp, imp) else {
        return;
    };
    let took = exercise(&link, 4, 12, 300_000);
    let (up, down) = (link.to_server(), link.to_client());
    eprintln!("delay and jitter: {took:?}, to server {up:?}, to client {down:?}");
    assert!(up.forwarded > 0 && down.forwarded > 0);
    still_serves(&link);
}

/// The client's address in the client namespace.
const CLIENT_IP: [u8; 4] = [192, 0, 2, 1];
const SERVER_IP: [u8; 4] = [192, 0, 2, 2];
/// A MAC no interface here has: answers sent to it are lost (the client's
/// TAP drops frames addressed to another host).
const FOREIGN_MAC: [u8; 6] = [0x02, 0xde, 0xad, 0xbe, 0xef, 0x01];

/// What is wrong with a bogus frame.
#[derive(Clone, Copy, Debug)]
enum Bogus {
    TcpChecksum,
    IpChecksum,
    /// Valid, but sent to another Ethernet address.
    OtherDestinationMac,
    /// Valid, but from a multicast Ethernet address (smoltcp's own ARP
    /// check already refused to learn this one; kept as a guard).
    MulticastSourceMac,
}

/// A SYN to the server's port "from" the client's IP, sent by
/// `FOREIGN_MAC`, spoiled as `bogus` says.
fn bogus_syn(bogus: Bogus) -> Vec<u8> {
    use ::smoltcp::wire::{EthernetAddress, EthernetFrame, Ipv4Packet, TcpPacket};
    let mut src_mac = FOREIGN_MAC;
    let mut dst_mac = SmoltcpOptions::default_tap_mac(SERVER_IP.into());
    match bogus {
        Bogus::OtherDestinationMac => dst_mac = [0x02, 0, 0, 0, 0, 0x77],
        Bogus::MulticastSourceMac => src_mac[0] |= 1,
        _ => {}
    }
    let mut frame = Syn {
        src_mac: EthernetAddress(src_mac),
        dst_mac: EthernetAddress(dst_mac),
        src: CLIENT_IP.into(),
        dst: SERVER_IP.into(),
        src_port: 40_999,
        dst_port: PORT,
        seq: 12_345,
        window: 65_535,
    }
    .frame();
    let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
    let mut ip = Ipv4Packet::new_unchecked(eth.payload_mut());
    match bogus {
        Bogus::TcpChecksum => {
            let mut tcp = TcpPacket::new_unchecked(ip.payload_mut());
            let sum = tcp.checksum();
            tcp.set_checksum(sum ^ 0x5a5a);
        }
        Bogus::IpChecksum => {
            let sum = ip.checksum();
            ip.set_checksum(sum ^ 0x5a5a);
        }
        _ => {}
    }
    frame
}

/// A frame that smoltcp rejects (bad checksum, not addressed to it, from a
/// multicast MAC) must not teach its neighbour cache the sender's MAC for
/// the client's IP: if it did, every answer on the client's open
/// connection would go to that MAC and be lost until the entry is
/// refreshed (20 s) or expires (60 s). The link is clean here; the relay
/// only passes frames on.
#[test]
fn bogus_frames_do_not_poison_the_neighbor_cache() {
    let Some(link) = BadLink::new(0x5eed_0005, Impairment::NONE, Impairment::NONE) else {
        return;
    };
    // A second packet socket on the server's TAP: what it sends, smoltcp
    // receives.
    let injector = link
        ._server_ns
        .run(|| Endpoint::packet("nct0"))
        .expect("a packet socket on the server's TAP");
    link.client(|| {
        let mut client = connect();
        // A shorter guard than PATIENCE: a poisoned cache loses every
        // answer for at least 20 s, so 10 s tells the two apart on any
        // machine.
        client
            .stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let resp = client.roundtrip(&post("/echo/before", b"x"));
        assert_eq!(resp.body, b"POST /echo/before x");
        for bogus in [
            Bogus::TcpChecksum,
            Bogus::IpChecksum,
            Bogus::OtherDestinationMac,
            Bogus::MulticastSourceMac,
        ] {
            assert!(injector.send(&bogus_syn(bogus)), "inject {bogus:?}");
            // The injected frame reaches smoltcp before the request
            // below: both go through the same TAP queue, the frame first.
            thread::sleep(Duration::from_millis(20));
            let path = format!("/echo/after-{bogus:?}");
            client.send(&post(&path, b"y"));
            let mut answer = [0u8; 256];
            let n = match client.stream.read(&mut answer) {
                Ok(n) => n,
                Err(e) => panic!(
                    "no answer after a SYN with {bogus:?} ({e}): the neighbour cache was poisoned"
                ),
            };
            let text = String::from_utf8_lossy(&answer[..n]);
            assert!(
                text.starts_with("HTTP/1.1 200") && text.ends_with(&format!("POST {path} y")),
                "after {bogus:?}: {text:?}"
            );
        }
    });
}

/// One measured link: latency of back-to-back requests and the time of
/// 1 MiB downloads. Prints one table row.
/// `rcvbuf`: the client sets `SO_RCVBUF` (which turns off the kernel's
/// receive-buffer autotuning, so its advertised window stops growing).
fn measure_one(
    name: &str,
    seed: u64,
    to_server: Impairment,
    to_client: Impairment,
    rcvbuf: Option<usize>,
) {
    const REQUESTS: usize = 400;
    const DOWNLOADS: usize = 3;
    const MIB: usize = 1 << 20;
    let Some(link) = BadLink::new(seed, to_server, to_client) else {
        return;
    };
    let started = Instant::now();
    let (mut lat, downloads) = link.client(|| {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("a client socket");
        if let Some(size) = rcvbuf {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        let server: std::net::SocketAddr = SERVER.parse().unwrap();
        socket
            .connect_timeout(&server.into(), PATIENCE)
            .expect("connect to the smoltcp server");
        let stream: TcpStream = socket.into();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        let mut client = Client::from_stream(stream);
        let b = body(0, 0, 64);
        let req = post("/echo/m", &b);
        let mut want = b"POST /echo/m ".to_vec();
        want.extend_from_slice(&b);
        let mut lat = Vec::with_capacity(REQUESTS);
        for _ in 0..REQUESTS {
            let t = Instant::now();
            let resp = client.roundtrip(&req);
            lat.push(t.elapsed());
            assert!(resp.body == want);
        }
        let full = pattern(MIB);
        let mut downloads = Vec::new();
        for _ in 0..DOWNLOADS {
            let t = Instant::now();
            let resp = client.roundtrip(&get(&format!("/big?n={MIB}")));
            downloads.push(t.elapsed());
            assert!(resp.body == full);
        }
        (lat, downloads)
    });
    let total = started.elapsed();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let over = |limit_ms: f64| lat.iter().filter(|&&d| ms(d) >= limit_ms).count();
    let mut dl: Vec<f64> = downloads.iter().map(|&d| ms(d)).collect();
    dl.sort_by(f64::total_cmp);
    let (up, down) = (link.to_server(), link.to_client());
    println!(
        "| {name} | {:.3} | {:.3} | {:.1} | {} / {} | {:.0} / {:.0} / {:.0} | {:.1} | {:.1} | {}/{} | {}/{} |",
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(lat[lat.len() - 1]),
        over(150.0),
        over(900.0),
        dl[0],
        dl[dl.len() / 2],
        dl[dl.len() - 1],
        MIB as f64 / 1e6 / (dl[dl.len() / 2] / 1000.0),
        total.as_secs_f64(),
        up.dropped,
        up.received,
        down.dropped,
        down.received,
    );
}

/// The numbers of docs/userspace-networking.md, "On a bad link":
/// `cargo test --release -p nocturne-net --test smoltcp_netem -- --ignored --nocapture --test-threads=1`
#[test]
#[ignore = "a measurement (about four minutes), not a check"]
fn measure_bad_links() {
    let ms = Duration::from_millis;
    let none = Impairment::NONE;
    println!(
        "| link | p50 ms | p99 ms | max ms | ≥150 ms / ≥900 ms | 1 MiB min / median / max ms | MB/s (median) | run s | dropped to server | dropped to client |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let loss = Impairment::loss;
    let fixed = Some(256 << 10);
    let rows = [
        ("clean (through the relay)", none, none, None),
        ("1 % loss both ways", loss(0.01), loss(0.01), None),
        ("5 % loss both ways", loss(0.05), loss(0.05), None),
        ("2 % loss to the server only", loss(0.02), none, None),
        ("2 % loss to the client only", none, loss(0.02), None),
        (
            "2 % loss to the client only, client SO_RCVBUF 256 KiB",
            none,
            loss(0.02),
            fixed,
        ),
        (
            "5 % loss both ways, client SO_RCVBUF 256 KiB",
            loss(0.05),
            loss(0.05),
            fixed,
        ),
        (
            "10 % held back 3 ms (reordering)",
            Impairment::reorder(0.1, ms(3)),
            Impairment::reorder(0.1, ms(3)),
            None,
        ),
        (
            "10 % duplicated",
            Impairment::duplicate(0.1),
            Impairment::duplicate(0.1),
            None,
        ),
        (
            "5 ms delay each way",
            Impairment::delay(ms(5), Duration::ZERO),
            Impairment::delay(ms(5), Duration::ZERO),
            None,
        ),
        (
            "5 ms + 0–4 ms jitter each way",
            Impairment::delay(ms(5), ms(4)),
            Impairment::delay(ms(5), ms(4)),
            None,
        ),
    ];
    for (seed, (name, to_server, to_client, rcvbuf)) in rows.into_iter().enumerate() {
        measure_one(name, seed as u64 + 1, to_server, to_client, rcvbuf);
    }
}

/// The relay's decisions depend on the seed alone, and its rates are what
/// was asked for (no namespace needed).
#[test]
fn relay_decisions_follow_the_seed() {
    let draws = |seed| {
        let mut rng = impair::Rng::new(seed);
        (0..1000).map(|_| rng.next_u64()).collect::<Vec<_>>()
    };
    assert_eq!(draws(7), draws(7));
    assert_ne!(draws(7), draws(8));
    let mut rng = impair::Rng::new(0x5eed);
    let n = 200_000;
    let hits = (0..n).filter(|_| rng.chance(0.02)).count();
    let rate = hits as f64 / n as f64;
    assert!((0.018..0.022).contains(&rate), "2 % asked, {rate} drawn");
    assert!((0..1000).all(|_| !rng.chance(0.0)));
    assert!((0..1000).all(|_| (0.0..1.0).contains(&rng.unit())));
}
