//! `pipe/N`, `unix-socket/N`, `tcp-loopback/N`: the request (64-byte
//! [`RawHeader`] + N bytes) and the 64-byte reply as bytes through a kernel
//! byte stream, both sides in blocking reads.
//!
//! The driver keeps its ends and hands the peer's ends over with the setup
//! frame, then drops its copies, so the peer's death is an EOF here. TCP
//! cannot pass a connected socket, so the peer connects to a listener on
//! 127.0.0.1 and reports its local port, which the driver checks against
//! the connection it accepts. Both TCP ends set `TCP_NODELAY`.
//!
//! Before each request the driver waits until the peer sleeps in its read
//! ([`SleepProbe`]), untimed, as for the other blocking cases.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::guard::Stop;
use super::msg::{checksum, payload_pattern, RawHeader, HEADER_BYTES, REPLY_BYTES, STREAM_MAGIC};
use super::park::{ParkCounter, SleepProbe};
use super::{
    CaseError, Chunk, DriverCase, PeerCase, PeerSetup, PeerTally, SetupError, SetupLink, Tally,
};

/// How long the driver waits for the peer's TCP connection.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(5);

/// The driver's side over any byte stream.
pub struct StreamDriver<R, W> {
    reader: R,
    writer: W,
    probe: SleepProbe,
    /// Header + payload, the header rewritten per request.
    request: Vec<u8>,
    expected_sum: u64,
    seq: u64,
}

/// Driver of `pipe/N`.
pub type PipeDriver = StreamDriver<std::io::PipeReader, std::io::PipeWriter>;
/// Driver of `unix-socket/N` and `tcp-loopback/N` (a socket and its clone).
pub type SocketDriver<S> = StreamDriver<S, S>;

impl<R: Read, W: Write> StreamDriver<R, W> {
    fn new(link: &SetupLink<'_>, reader: R, writer: W) -> Result<Self, SetupError> {
        let payload = payload_pattern(link.spec.payload);
        let mut request = vec![0u8; HEADER_BYTES];
        request.extend_from_slice(&payload);
        Ok(Self {
            reader,
            writer,
            probe: link.sleep_probe()?,
            request,
            expected_sum: checksum(&payload),
            seq: 0,
        })
    }
}

impl PipeDriver {
    /// Two pipes: requests one way, replies the other.
    pub fn setup_pipe(link: &SetupLink<'_>) -> Result<Self, SetupError> {
        let (peer_reader, writer) = std::io::pipe()?;
        let (reader, peer_writer) = std::io::pipe()?;
        link.send(0, &[peer_reader.as_fd(), peer_writer.as_fd()])?;
        Self::new(link, reader, writer)
    }
}

impl SocketDriver<UnixStream> {
    /// A connected unix stream socketpair.
    pub fn setup_unix(link: &SetupLink<'_>) -> Result<Self, SetupError> {
        let (ours, theirs) = UnixStream::pair()?;
        link.send(0, &[theirs.as_fd()])?;
        drop(theirs);
        let writer = ours.try_clone()?;
        Self::new(link, ours, writer)
    }
}

impl SocketDriver<TcpStream> {
    /// A TCP connection over loopback, made by the peer.
    pub fn setup_tcp(link: &SetupLink<'_>) -> Result<Self, SetupError> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        // The peer connects before it acknowledges, so the connection is
        // waiting in the backlog when we accept.
        let peer_port = link.send(u64::from(port), &[])?;
        listener.set_nonblocking(true)?;
        let deadline = Instant::now() + ACCEPT_TIMEOUT;
        let stream = loop {
            match listener.accept() {
                Ok((stream, from)) if u64::from(from.port()) == peer_port => break stream,
                // Someone else connected to our ephemeral port: ignore them.
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(SetupError::Tcp("the peer's connection never arrived"));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(e.into()),
            }
        };
        stream.set_nonblocking(false)?;
        stream.set_nodelay(true)?;
        let writer = stream.try_clone()?;
        Self::new(link, stream, writer)
    }
}

impl<R: Read, W: Write> DriverCase for StreamDriver<R, W> {
    fn run_chunk(&mut self, chunk: Chunk, tally: &mut Tally, stop: &Stop) -> Result<(), CaseError> {
        let payload_len = (self.request.len() - HEADER_BYTES) as u64;
        let mut reply = [0u8; REPLY_BYTES];
        for i in 0..chunk.total() {
            self.seq += 1;
            self.probe.wait_asleep(stop)?;
            let t0 = Instant::now();
            RawHeader {
                flag: STREAM_MAGIC,
                seq: self.seq,
                len: payload_len,
                checksum: 0,
            }
            .emit(&mut self.request);
            self.writer.write_all(&self.request).map_err(eof_is_gone)?;
            self.reader.read_exact(&mut reply).map_err(eof_is_gone)?;
            let elapsed = t0.elapsed();
            let ok = RawHeader::parse(&reply).is_some_and(|r| {
                r.flag == STREAM_MAGIC && r.seq == self.seq && r.checksum == self.expected_sum
            });
            tally.record(i >= chunk.warmup, elapsed, ok);
        }
        Ok(())
    }
}

/// A closed stream means the other process died.
fn eof_is_gone(e: io::Error) -> CaseError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset => CaseError::PeerGone,
        _ => CaseError::Io(e),
    }
}

/// The peer's side over any byte stream.
pub struct StreamPeer<R, W> {
    reader: R,
    writer: W,
    request: Vec<u8>,
    expected: u64,
    parks: ParkCounter,
}

impl<R: Read, W: Write> StreamPeer<R, W> {
    fn new(reader: R, writer: W, setup: &PeerSetup) -> Result<Self, SetupError> {
        Ok(Self {
            reader,
            writer,
            request: vec![0u8; HEADER_BYTES + setup.spec.payload],
            expected: 0,
            parks: setup.park_counter()?,
        })
    }
}

/// Attaches the peer's side of a pipe case.
pub fn attach_pipe(mut setup: PeerSetup) -> Result<Box<dyn PeerCase>, SetupError> {
    let [reader, writer] = setup.take_fds::<2>()?;
    let reader = std::io::PipeReader::from(reader);
    let writer = std::io::PipeWriter::from(writer);
    Ok(Box::new(StreamPeer::new(reader, writer, &setup)?))
}

/// Attaches the peer's side of a unix socket case.
pub fn attach_unix(mut setup: PeerSetup) -> Result<Box<dyn PeerCase>, SetupError> {
    let [socket] = setup.take_fds::<1>()?;
    let socket = UnixStream::from(socket);
    let writer = socket.try_clone()?;
    Ok(Box::new(StreamPeer::new(socket, writer, &setup)?))
}

/// Connects the peer's side of a TCP case to the driver's port `setup.arg`;
/// returns it and the local port to acknowledge.
pub fn attach_tcp(mut setup: PeerSetup) -> Result<(Box<dyn PeerCase>, u64), SetupError> {
    let port = u16::try_from(setup.arg).map_err(|_| SetupError::Tcp("bad port"))?;
    setup.take_fds::<0>()?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&addr, ACCEPT_TIMEOUT)?;
    stream.set_nodelay(true)?;
    let local_port = stream.local_addr()?.port();
    let writer = stream.try_clone()?;
    Ok((
        Box::new(StreamPeer::new(stream, writer, &setup)?),
        u64::from(local_port),
    ))
}

impl<R: Read, W: Write> PeerCase for StreamPeer<R, W> {
    fn begin_chunk(&mut self) {
        self.parks.begin_chunk();
    }

    fn serve(&mut self, count: u64, _stop: &Stop) -> Result<PeerTally, CaseError> {
        let mut tally = PeerTally::default();
        let payload_len = (self.request.len() - HEADER_BYTES) as u64;
        let mut reply = [0u8; REPLY_BYTES];
        for _ in 0..count {
            self.expected += 1;
            self.reader
                .read_exact(&mut self.request)
                .map_err(eof_is_gone)?;
            let header = RawHeader::parse(&self.request).expect("buffer holds a header");
            let valid = header.flag == STREAM_MAGIC
                && header.seq == self.expected
                && header.len == payload_len;
            let sum = if valid {
                checksum(&self.request[HEADER_BYTES..])
            } else {
                tally.errors += 1;
                0
            };
            RawHeader {
                flag: STREAM_MAGIC,
                seq: header.seq,
                len: 0,
                checksum: sum,
            }
            .emit(&mut reply);
            self.writer.write_all(&reply).map_err(eof_is_gone)?;
            self.parks.message_done();
        }
        tally.parks = self.parks.parks();
        Ok(tally)
    }
}
