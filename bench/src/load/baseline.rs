//! The simplest possible client: one blocking keep-alive connection, one
//! request at a time. It has two jobs:
//!
//! * the **probe** before every run sends each request kind once, so a
//!   refused port, a server that never answers, one that speaks another
//!   protocol or a wrong path (404) is a clear error before any load is
//!   generated, never a run full of errors or a hang;
//! * the **ping-pong baseline** (`--pingpong N`): N back-to-back round trips
//!   timed around `write` + blocking `read`, the cheapest way a client can
//!   measure a server; the generator's own overhead is its p50 minus this
//!   one's, measured in the same run against the same server.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::http::{Response, ResponseError, ResponseParser, MAX_HEAD_BYTES};
use crate::hist::LatencyHistogram;

/// Why a blocking round trip failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The connection could not be made.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The server.
        addr: SocketAddr,
        /// The cause (refused, unreachable, timed out).
        source: io::Error,
    },
    /// No complete response within the timeout.
    #[error("{addr} accepted the connection but sent no complete response within {timeout:?}")]
    TimedOut {
        /// The server.
        addr: SocketAddr,
        /// How long it was given.
        timeout: Duration,
    },
    /// The server closed the connection before a complete response.
    #[error("{addr} closed the connection before a complete response")]
    Closed {
        /// The server.
        addr: SocketAddr,
    },
    /// Reading or writing failed.
    #[error("talking to {addr}: {source}")]
    Io {
        /// The server.
        addr: SocketAddr,
        /// The cause.
        source: io::Error,
    },
    /// What came back is not HTTP.
    #[error("{addr} is not an HTTP/1.x server: {source}")]
    NotHttp {
        /// The server.
        addr: SocketAddr,
        /// What was wrong with its answer.
        source: ResponseError,
    },
}

/// One blocking keep-alive connection.
pub struct BlockingClient {
    addr: SocketAddr,
    stream: TcpStream,
    timeout: Duration,
    parser: ResponseParser,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl BlockingClient {
    /// Connects (giving up after `connect_timeout`) with `TCP_NODELAY`;
    /// every later read and write gives up after `timeout`.
    pub fn connect(
        addr: SocketAddr,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Self, ProbeError> {
        let connect_err = |source| ProbeError::Connect { addr, source };
        let stream = TcpStream::connect_timeout(&addr, connect_timeout).map_err(connect_err)?;
        stream.set_nodelay(true).map_err(connect_err)?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(connect_err)?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(connect_err)?;
        Ok(Self {
            addr,
            stream,
            timeout,
            parser: ResponseParser::new(),
            buf: vec![0; MAX_HEAD_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
        })
    }

    /// Sends `request` and reads its response.
    pub fn round_trip(&mut self, request: &[u8], has_body: bool) -> Result<Response, ProbeError> {
        let addr = self.addr;
        self.stream
            .write_all(request)
            .map_err(|e| self.io_error(e))?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let (n, done) = self
                .parser
                .parse(&self.buf[self.start..self.end], has_body)
                .map_err(|source| ProbeError::NotHttp { addr, source })?;
            self.start += n;
            if let Some(response) = done {
                return Ok(response);
            }
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            } else if self.end == self.buf.len() {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if Instant::now() > deadline {
                return Err(ProbeError::TimedOut {
                    addr,
                    timeout: self.timeout,
                });
            }
            match self.stream.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    return self
                        .parser
                        .finish_at_eof()
                        .ok_or(ProbeError::Closed { addr })
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_error(e)),
            }
        }
    }

    fn io_error(&self, e: io::Error) -> ProbeError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ProbeError::TimedOut {
                addr: self.addr,
                timeout: self.timeout,
            },
            _ => ProbeError::Io {
                addr: self.addr,
                source: e,
            },
        }
    }
}

/// Runs `warmup` untimed and `count` timed back-to-back round trips of
/// `request` on one connection, on a thread pinned to `core` if given.
/// Returns the round-trip times; a non-2xx answer is an error.
pub fn pingpong(
    addr: SocketAddr,
    request: &[u8],
    has_body: bool,
    count: u64,
    warmup: u64,
    core: Option<usize>,
    timeout: Duration,
) -> Result<LatencyHistogram, super::LoadError> {
    let request = request.to_vec();
    let worker = move || -> Result<LatencyHistogram, super::LoadError> {
        if let Some(core) = core {
            crate::pin::pin_current_thread(core)?;
        }
        let mut client = BlockingClient::connect(addr, timeout, timeout)
            .map_err(|source| super::LoadError::Baseline { source })?;
        let mut hist = LatencyHistogram::new();
        for i in 0..warmup + count {
            let t0 = Instant::now();
            let response = client
                .round_trip(&request, has_body)
                .map_err(|source| super::LoadError::Baseline { source })?;
            let rtt = t0.elapsed();
            if !(200..300).contains(&response.status) {
                return Err(super::LoadError::BaselineStatus(response.status));
            }
            if i >= warmup {
                hist.record(rtt);
            }
        }
        Ok(hist)
    };
    std::thread::Builder::new()
        .name("load-pingpong".into())
        .spawn(worker)
        .map_err(super::LoadError::Setup)?
        .join()
        .map_err(|_| super::LoadError::ThreadPanicked)?
}
