//! The floor of the external path: `nocturne bench engine-floor-server`, a
//! bare HTTP server that answers every request with one canned response of
//! the engine's reply size.
//!
//! It does the least a server can: one thread pinned to the io core spins
//! over non-blocking `std::net` sockets (`accept`, then `read` on every
//! connection each turn), frames each request by its head and
//! `Content-Length`, and writes the canned bytes. Whatever the engine's
//! `external-call` costs above this case is the engine's own work: HTTP
//! parsing, routing, the ring hand-offs and the worker.
//!
//! The benchmark starts it as a separate process (like the engine) and
//! stops it with a signal; it also dies with the benchmark
//! (`PR_SET_PDEATHSIG`, set by the spawner) and exits if its parent changes.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use anyhow::Context as _;

use crate::pin::{check_cores, pin_current_thread};

/// `nocturne bench engine-floor-server` options (started by `bench engine`).
#[derive(clap::Args, Debug, Clone)]
pub struct FloorServerArgs {
    /// Core to pin the serving thread to (the engine's io core).
    #[arg(long, value_name = "CORE")]
    pub core: usize,
    /// Bytes of the whole canned response (head and body).
    #[arg(long, value_name = "BYTES")]
    pub reply_bytes: usize,
    /// Bytes of the canned response's body.
    #[arg(long, value_name = "BYTES")]
    pub body_bytes: usize,
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
}

/// Largest request (head and body) the floor server accepts.
const MAX_REQUEST_BYTES: usize = 1 << 20;
/// Spin turns between two looks at the listener once a client is connected
/// (an `accept` that finds nothing is a system call on the hot loop).
const ACCEPT_EVERY: u32 = 256;
/// Spin turns between two checks that the parent is still the benchmark.
const PARENT_CHECK_EVERY: u32 = 1 << 20;

/// Why a request could not be framed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestFrameError {
    /// The head is not HTTP or its `Content-Length` is not a number.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// More than 1 MiB (`MAX_REQUEST_BYTES`).
    #[error("request larger than {MAX_REQUEST_BYTES} bytes")]
    TooLarge,
}

/// The canned response: status 200, `body_bytes` of body, padded with a
/// header to `reply_bytes` in all (or as short as it can be, if that is
/// less than the smallest such response).
pub fn canned_reply(reply_bytes: usize, body_bytes: usize) -> Vec<u8> {
    let head = |pad: usize| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
             Server-Timing: {}\r\nContent-Length: {body_bytes}\r\n\r\n",
            "x".repeat(pad.max(1))
        )
    };
    let shortest = head(1).len() + body_bytes;
    let pad = 1 + reply_bytes.saturating_sub(shortest);
    let mut out = head(pad).into_bytes();
    out.resize(out.len() + body_bytes, b'f');
    out
}

/// Length of the complete request at the start of `buf`, or `None` while
/// it is still arriving.
pub fn request_len(buf: &[u8]) -> Result<Option<usize>, RequestFrameError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_REQUEST_BYTES {
            Err(RequestFrameError::TooLarge)
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buf[..end])
        .map_err(|_| RequestFrameError::Malformed("head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    if !request_line.ends_with(" HTTP/1.1") && !request_line.ends_with(" HTTP/1.0") {
        return Err(RequestFrameError::Malformed("not an HTTP/1.x request line"));
    }
    let mut body = 0usize;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(RequestFrameError::Malformed("header line without ':'"));
        };
        if name.trim().eq_ignore_ascii_case("content-length") {
            body = value
                .trim()
                .parse()
                .map_err(|_| RequestFrameError::Malformed("bad Content-Length"))?;
        } else if name.trim().eq_ignore_ascii_case("transfer-encoding") {
            return Err(RequestFrameError::Malformed(
                "chunked bodies are not served",
            ));
        }
    }
    let total = (end + 4)
        .checked_add(body)
        .filter(|&t| t <= MAX_REQUEST_BYTES)
        .ok_or(RequestFrameError::TooLarge)?;
    Ok((buf.len() >= total).then_some(total))
}

/// One client connection of the floor server.
struct FloorConn {
    stream: TcpStream,
    buf: Vec<u8>,
    filled: usize,
}

impl FloorConn {
    fn new(stream: TcpStream) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: vec![0; 64 * 1024],
            filled: 0,
        })
    }

    /// Reads what has arrived and answers every complete request; `false`
    /// when the connection is finished (closed by the client, or broken).
    fn poll(&mut self, reply: &[u8]) -> bool {
        if self.filled == self.buf.len() {
            if self.buf.len() >= MAX_REQUEST_BYTES {
                return false;
            }
            self.buf.resize(self.buf.len() * 2, 0);
        }
        match self.stream.read(&mut self.buf[self.filled..]) {
            Ok(0) => return false,
            Ok(n) => self.filled += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return true,
            Err(_) => return false,
        }
        let mut start = 0;
        loop {
            match request_len(&self.buf[start..self.filled]) {
                Ok(Some(len)) => {
                    if write_all_spinning(&mut self.stream, reply).is_err() {
                        return false;
                    }
                    start += len;
                }
                Ok(None) => break,
                Err(_) => return false,
            }
        }
        self.buf.copy_within(start..self.filled, 0);
        self.filled -= start;
        true
    }
}

/// `write_all` on a non-blocking socket: spins while the send buffer is full.
fn write_all_spinning(stream: &mut TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                std::hint::spin_loop();
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Runs the floor server until it is killed (or its parent goes away).
pub fn run_floor_server(args: &FloorServerArgs) -> anyhow::Result<()> {
    let parent = std::os::unix::process::parent_id();
    check_cores(&[args.core])
        .and_then(|()| pin_current_thread(args.core))
        .with_context(|| format!("engine-floor-server: pinning to core {}", args.core))?;
    let listener = TcpListener::bind(args.listen)
        .with_context(|| format!("engine-floor-server: cannot listen on {}", args.listen))?;
    listener.set_nonblocking(true)?;
    let reply = canned_reply(args.reply_bytes, args.body_bytes);
    // The same line the engine logs: the benchmark waits for it.
    eprintln!(
        "nocturne: listening on http://{} (tcp-echo-floor: busy-polling on core {}, {}-byte replies)",
        listener.local_addr()?,
        args.core,
        reply.len()
    );
    let mut conns: Vec<FloorConn> = Vec::new();
    let mut turn = 0u32;
    loop {
        turn = turn.wrapping_add(1);
        if conns.is_empty() || turn.is_multiple_of(ACCEPT_EVERY) {
            match listener.accept() {
                Ok((stream, _)) => match FloorConn::new(stream) {
                    Ok(conn) => conns.push(conn),
                    Err(e) => eprintln!("engine-floor-server: dropping a connection: {e}"),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => eprintln!("engine-floor-server: accept: {e}"),
            }
        }
        conns.retain_mut(|conn| conn.poll(&reply));
        if turn.is_multiple_of(PARENT_CHECK_EVERY) && std::os::unix::process::parent_id() != parent
        {
            anyhow::bail!("engine-floor-server: the benchmark went away");
        }
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::http::parse_response_head;

    #[test]
    fn canned_replies_have_the_asked_size_and_parse() {
        for (total, body) in [(200, 64), (150, 64), (1000, 0), (129, 64)] {
            let reply = canned_reply(total, body);
            let head = parse_response_head(&reply).unwrap().unwrap();
            assert_eq!((head.status, head.content_length), (200, body));
            assert_eq!(head.total_len(), reply.len());
            let shortest = canned_reply(0, body).len();
            assert_eq!(reply.len(), total.max(shortest), "asked {total}");
        }
    }

    #[test]
    fn frames_requests() {
        let req = b"POST /function/echo HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(request_len(req), Ok(Some(req.len())));
        assert_eq!(request_len(&req[..req.len() - 1]), Ok(None));
        assert_eq!(request_len(&req[..10]), Ok(None));
        let mut two = req.to_vec();
        two.extend_from_slice(b"GET /x HTTP/1.1\r\n\r\n");
        assert_eq!(request_len(&two), Ok(Some(req.len())));
        assert_eq!(request_len(&two[req.len()..]), Ok(Some(19)));
    }

    #[test]
    fn rejects_bad_requests() {
        assert!(matches!(
            request_len(b"HELLO\r\n\r\n"),
            Err(RequestFrameError::Malformed(_))
        ));
        assert!(matches!(
            request_len(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Err(RequestFrameError::Malformed(_))
        ));
        assert!(matches!(
            request_len(b"GET / HTTP/1.1\r\nbad\r\n\r\n"),
            Err(RequestFrameError::Malformed(_))
        ));
        assert!(matches!(
            request_len(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(RequestFrameError::Malformed(_))
        ));
        assert_eq!(
            request_len(b"POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n"),
            Err(RequestFrameError::TooLarge)
        );
        assert_eq!(
            request_len(&vec![b'a'; MAX_REQUEST_BYTES + 1]),
            Err(RequestFrameError::TooLarge)
        );
    }

    #[test]
    fn a_connection_answers_requests_split_and_batched() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        let mut conn = FloorConn::new(server_side).unwrap();
        let reply = canned_reply(100, 4);
        let req = b"POST /f HTTP/1.1\r\nContent-Length: 2\r\n\r\nab";
        // Half a request: nothing is answered yet.
        client.write_all(&req[..10]).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while conn.filled < 10 {
            assert!(conn.poll(&reply));
            assert!(std::time::Instant::now() < deadline);
        }
        // The rest, and a second request in the same write.
        let mut rest = req[10..].to_vec();
        rest.extend_from_slice(req);
        client.write_all(&rest).unwrap();
        let mut got = vec![0u8; 2 * reply.len()];
        let mut read = 0;
        client
            .set_read_timeout(Some(std::time::Duration::from_millis(1)))
            .unwrap();
        while read < got.len() {
            assert!(conn.poll(&reply));
            if let Ok(n) = client.read(&mut got[read..]) {
                read += n;
            }
            assert!(std::time::Instant::now() < deadline, "no answer");
        }
        assert_eq!(&got[..reply.len()], &reply[..]);
        assert_eq!(&got[reply.len()..], &reply[..]);
        // Garbage ends the connection; so does a close.
        client.write_all(b"garbage\r\n\r\n").unwrap();
        while conn.poll(&reply) {
            assert!(std::time::Instant::now() < deadline, "garbage accepted");
        }
    }
}
