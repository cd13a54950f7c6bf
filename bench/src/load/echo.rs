//! A trivial HTTP/1.1 echo server: the fixed point the generator is
//! calibrated against (its own overhead, the rate one client core reaches)
//! and the target of the load tests.
//!
//! One thread, non-blocking sockets in mio, keep-alive and pipelining: every
//! complete request in a read is answered `200 OK` with its own body, all
//! answers of one read leave in one write. `--poll spin` never sleeps (give
//! it a core of its own), `block` sleeps in epoll. Malformed requests get
//! `400` and a close. Run it as `nocturne bench load-echo-server`, or in
//! process with [`EchoServer::start`].

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

/// Largest request (head and body) the server buffers.
const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;
/// Connections that may wait to be accepted.
const LISTEN_BACKLOG: libc::c_int = 4096;

/// Why a request is refused (then the connection is closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Not HTTP/1.x, or a framing the echo server does not take.
    Malformed,
    /// A body over [`MAX_REQUEST_BYTES`].
    TooLarge,
}
const LISTENER: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);

/// How the server thread waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EchoPoll {
    /// Busy-poll epoll (a dedicated core).
    Spin,
    /// Sleep in epoll.
    Block,
}

/// `nocturne bench load-echo-server` options.
#[derive(clap::Args, Debug, Clone)]
pub struct EchoServerArgs {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
    /// Core to pin the server thread to.
    #[arg(long, value_name = "CORE")]
    pub core: Option<usize>,
    /// How the server waits for requests.
    #[arg(long, value_enum, default_value_t = EchoPoll::Block, value_name = "MODE")]
    pub poll: EchoPoll,
}

/// A running in-process echo server; stops when dropped.
pub struct EchoServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    served: Arc<AtomicU64>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl EchoServer {
    /// Binds `listen` and serves on a new thread (pinned to `core` if given).
    pub fn start(listen: SocketAddr, poll_mode: EchoPoll, core: Option<usize>) -> io::Result<Self> {
        let mut listener = TcpListener::bind(listen)?;
        // mio listens with std's backlog of 128: a client opening a
        // thousand connections at once would wait for SYN retransmits
        // (seconds).
        super::sys::set_listen_backlog(&listener, LISTEN_BACKLOG)?;
        let addr = listener.local_addr()?;
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let (stop2, served2) = (Arc::clone(&stop), Arc::clone(&served));
        let thread = std::thread::Builder::new()
            .name("load-echo".into())
            .spawn(move || {
                if let Some(core) = core {
                    crate::pin::pin_current_thread(core).map_err(io::Error::other)?;
                }
                serve(poll, listener, poll_mode, &stop2, &served2)
            })?;
        Ok(Self {
            addr,
            stop,
            waker,
            served,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        // Relaxed: a statistic; no other memory depends on it.
        self.served.load(Ordering::Relaxed)
    }

    /// Stops the server and waits for its thread.
    pub fn stop(mut self) -> io::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> io::Result<()> {
        // Release pairs with the Acquire load in the serve loop.
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| io::Error::other("the echo server thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// `nocturne bench load-echo-server`: serves until the process is killed.
pub fn run_echo_server(args: &EchoServerArgs) -> anyhow::Result<()> {
    if let Some(core) = args.core {
        crate::pin::check_cores(&[core])?;
    }
    let mut server = EchoServer::start(args.listen, args.poll, args.core)?;
    eprintln!("nocturne: listening on http://{}", server.addr());
    let thread = server
        .thread
        .take()
        .expect("a started server has its thread");
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("the echo server thread panicked"))??;
    Ok(())
}

struct Conn {
    stream: TcpStream,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// Answered with a refusal: once it is written, the write side is
    /// shut and whatever the client still sends is read and dropped until
    /// it closes, so that it reads the answer instead of a reset.
    close_after_write: bool,
    write_shut: bool,
}

fn serve(
    mut poll: Poll,
    listener: TcpListener,
    mode: EchoPoll,
    stop: &AtomicBool,
    served: &AtomicU64,
) -> io::Result<()> {
    let mut events = Events::with_capacity(256);
    let mut conns: Vec<Option<Conn>> = Vec::new();
    // One read buffer for all connections, initialised once.
    let mut chunk = vec![0u8; 16 * 1024].into_boxed_slice();
    let timeout = match mode {
        EchoPoll::Spin => Some(Duration::ZERO),
        EchoPoll::Block => None,
    };
    // Acquire pairs with the Release store in `EchoServer::shutdown`.
    while !stop.load(Ordering::Acquire) {
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in events.iter() {
            match event.token() {
                WAKER => {}
                LISTENER => loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let _ = stream.set_nodelay(true);
                            let slot =
                                conns.iter().position(Option::is_none).unwrap_or_else(|| {
                                    conns.push(None);
                                    conns.len() - 1
                                });
                            poll.registry().register(
                                &mut stream,
                                Token(slot),
                                Interest::READABLE | Interest::WRITABLE,
                            )?;
                            conns[slot] = Some(Conn {
                                stream,
                                rbuf: Vec::with_capacity(4096),
                                wbuf: Vec::with_capacity(4096),
                                close_after_write: false,
                                write_shut: false,
                            });
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        // Out of descriptors and the like: drop this attempt.
                        Err(_) => break,
                    }
                },
                Token(slot) => {
                    let Some(conn) = conns.get_mut(slot).and_then(Option::as_mut) else {
                        continue;
                    };
                    let peer_closed = event.is_read_closed() || event.is_error();
                    let alive = handle(conn, &mut chunk, peer_closed, served);
                    if !alive {
                        if let Some(mut c) = conns[slot].take() {
                            let _ = poll.registry().deregister(&mut c.stream);
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Reads, answers and writes for one connection; false when it is done.
///
/// A read that does not fill `chunk` drained the socket (epoll is
/// edge-triggered: later data raises a new event), so the read that would
/// only return `WouldBlock` is skipped, unless the peer has closed and the
/// end of the stream must be seen.
fn handle(conn: &mut Conn, chunk: &mut [u8], peer_closed: bool, served: &AtomicU64) -> bool {
    let mut eof = false;
    loop {
        match conn.stream.read(chunk) {
            Ok(0) => {
                eof = true;
                break;
            }
            Ok(n) => {
                conn.rbuf.extend_from_slice(&chunk[..n]);
                if n < chunk.len() && !peer_closed {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    if conn.close_after_write {
        conn.rbuf.clear();
    } else {
        let (used, answered, refusal) = answer_all(&conn.rbuf, &mut conn.wbuf);
        conn.rbuf.drain(..used);
        // Relaxed: a statistic.
        served.fetch_add(answered, Ordering::Relaxed);
        let refusal =
            refusal.or((conn.rbuf.len() > MAX_REQUEST_BYTES).then_some(Refusal::Malformed));
        if let Some(refusal) = refusal {
            conn.wbuf.extend_from_slice(match refusal {
                Refusal::Malformed => {
                    &b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"[..]
                }
                Refusal::TooLarge => {
                    b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                }
            });
            conn.close_after_write = true;
            conn.rbuf.clear();
        }
    }
    while !conn.wbuf.is_empty() {
        match conn.stream.write(&conn.wbuf) {
            Ok(0) => return false,
            Ok(n) => {
                conn.wbuf.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return !eof,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    if conn.close_after_write && !conn.write_shut {
        let _ = conn.stream.shutdown(std::net::Shutdown::Write);
        conn.write_shut = true;
    }
    !eof
}

/// Answers every complete request at the start of `input`; returns the
/// bytes used, the number answered and why the first refused one was
/// refused, if one was met.
fn answer_all(input: &[u8], out: &mut Vec<u8>) -> (usize, u64, Option<Refusal>) {
    let mut used = 0;
    let mut answered = 0;
    loop {
        let rest = &input[used..];
        if rest.is_empty() {
            return (used, answered, None);
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(rest) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return (used, answered, None),
            Err(_) => return (used, answered, Some(Refusal::Malformed)),
        };
        let mut body_len = 0usize;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                match std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                {
                    Some(n) => body_len = n,
                    None => return (used, answered, Some(Refusal::Malformed)),
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                // Chunked requests are not needed by the generator.
                return (used, answered, Some(Refusal::Malformed));
            }
        }
        if body_len > MAX_REQUEST_BYTES {
            return (used, answered, Some(Refusal::TooLarge));
        }
        if rest.len() < head_len + body_len {
            return (used, answered, None);
        }
        let body = &rest[head_len..head_len + body_len];
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: ");
        // Writing to a Vec cannot fail; no String is allocated.
        let _ = write!(out, "{body_len}\r\n\r\n");
        out.extend_from_slice(body);
        used += head_len + body_len;
        answered += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream as StdStream;

    #[test]
    fn answers_pipelined_requests_with_their_bodies() {
        let mut out = Vec::new();
        let input = b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nxy";
        let (used, answered, refusal) = answer_all(input, &mut out);
        assert_eq!((answered, refusal), (2, None));
        assert_eq!(
            &input[used..],
            b"POST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nxy"
        );
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        );
        let (_, _, refusal) = answer_all(b"\x16\x03\x01 tls hello\r\n\r\n", &mut out);
        assert_eq!(refusal, Some(Refusal::Malformed));
        let (_, _, refusal) = answer_all(
            b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
            &mut out,
        );
        assert_eq!(refusal, Some(Refusal::TooLarge));
    }

    #[test]
    fn serves_over_tcp_and_rejects_garbage() {
        let server =
            EchoServer::start("127.0.0.1:0".parse().unwrap(), EchoPoll::Block, None).unwrap();
        let mut s = StdStream::connect(server.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"POST /x HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi")
            .unwrap();
        let mut buf = [0u8; 128];
        let mut got = Vec::new();
        while !got.ends_with(b"hi") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi");
        assert_eq!(server.served(), 1);
        let mut g = StdStream::connect(server.addr()).unwrap();
        g.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        g.write_all(b"garbage garbage\r\n\r\n").unwrap();
        let mut reply = Vec::new();
        g.read_to_end(&mut reply).unwrap();
        assert!(reply.starts_with(b"HTTP/1.1 400"), "{reply:?}");
        // A body over the limit is answered 413, and the client, still
        // sending it, reads the answer rather than a reset.
        let mut big = StdStream::connect(server.addr()).unwrap();
        big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let body_len = MAX_REQUEST_BYTES + 1;
        big.write_all(format!("POST /x HTTP/1.1\r\nContent-Length: {body_len}\r\n\r\n").as_bytes())
            .unwrap();
        let chunk = vec![b'z'; 1 << 20];
        for _ in 0..4 {
            big.write_all(&chunk).unwrap();
        }
        big.shutdown(std::net::Shutdown::Write).unwrap();
        let mut reply = Vec::new();
        big.read_to_end(&mut reply).unwrap();
        assert!(reply.starts_with(b"HTTP/1.1 413"), "{reply:?}");
        server.stop().unwrap();
    }

    #[test]
    fn answers_a_request_that_arrives_with_the_end_of_the_stream() {
        let server =
            EchoServer::start("127.0.0.1:0".parse().unwrap(), EchoPoll::Block, None).unwrap();
        // Large enough to take more than one read of the server's buffer.
        let body = vec![b'z'; 40 * 1024];
        for body in [&b"hi"[..], &body] {
            let mut s = StdStream::connect(server.addr()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut req =
                format!("POST /x HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            req.extend_from_slice(body);
            s.write_all(&req).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            // The server answers, sees the end of the stream and closes: the
            // read ends instead of timing out.
            let mut reply = Vec::new();
            s.read_to_end(&mut reply).unwrap();
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            assert_eq!(&reply[..head.len()], head.as_bytes());
            assert_eq!(&reply[head.len()..], body);
        }
        server.stop().unwrap();
    }
}
