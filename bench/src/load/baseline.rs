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
//!   one's, measured in the same run against the same server. Non-2xx
//!   answers are treated as the load window treats them: with
//!   `--allow-errors` they are timed and counted, without it they fail.

use std::collections::BTreeMap;
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
    /// The caller's stop check said to give up (a signal, Ctrl-C).
    #[error("interrupted while waiting for {addr}")]
    Interrupted {
        /// The server.
        addr: SocketAddr,
    },
}

/// How long one blocking read waits before the stop check is looked at
/// again: a signal handler only raises a flag, and `SA_RESTART` resumes
/// the read, so a read waiting for a silent server must wake up on its own
/// to notice Ctrl-C.
const STOP_CHECK_EVERY: Duration = Duration::from_millis(50);

/// A stop check that never stops.
fn never() -> bool {
    false
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
        // Reads wake up every STOP_CHECK_EVERY; `round_trip_until` keeps
        // the overall limit.
        stream
            .set_read_timeout(Some(timeout.min(STOP_CHECK_EVERY)))
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
        self.round_trip_until(request, has_body, never)
    }

    /// [`round_trip`](Self::round_trip), giving up with
    /// [`ProbeError::Interrupted`] within about 50 ms of `stop` turning
    /// true while it waits for the answer.
    pub fn round_trip_until(
        &mut self,
        request: &[u8],
        has_body: bool,
        stop: fn() -> bool,
    ) -> Result<Response, ProbeError> {
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
                // An answer after the deadline is a timeout, as the load
                // client counts it: the read that brought it may have
                // returned after the deadline passed.
                if Instant::now() > deadline {
                    return Err(ProbeError::TimedOut {
                        addr,
                        timeout: self.timeout,
                    });
                }
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
                // A read timeout is one slice of the wait: look at the stop
                // check, then at the deadline (top of the loop).
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(self.io_error(e)),
            }
            if stop() {
                return Err(ProbeError::Interrupted { addr });
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

/// How to run the ping-pong baseline.
#[derive(Debug, Clone)]
pub struct PingPongPlan {
    /// The server.
    pub addr: SocketAddr,
    /// The request, as written on the wire.
    pub request: Vec<u8>,
    /// Whether the answer carries a body (not for `HEAD`).
    pub response_has_body: bool,
    /// Timed round trips.
    pub count: u64,
    /// Untimed round trips before them.
    pub warmup: u64,
    /// The core to pin the client thread to, if any.
    pub core: Option<usize>,
    /// Connect limit, and limit of each round trip.
    pub timeout: Duration,
    /// Whether non-2xx answers are expected (`--allow-errors`): then they
    /// are timed and counted like any other answer, as the load window
    /// counts them; otherwise the first one ends the baseline with
    /// [`LoadError::BaselineStatus`](super::LoadError::BaselineStatus).
    pub allow_non_2xx: bool,
}

/// What the ping-pong baseline measured.
#[derive(Debug, Clone)]
pub struct PingPong {
    /// The time of each timed round trip, ns.
    pub round_trips: LatencyHistogram,
    /// The timed round trips' answers by status code.
    pub statuses: BTreeMap<u16, u64>,
}

impl PingPong {
    /// Timed round trips answered with a status outside 200..=299.
    pub fn non_2xx(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(status, _)| !(200..300).contains(*status))
            .map(|(_, n)| n)
            .sum()
    }
}

/// Runs `plan.warmup` untimed and `plan.count` timed back-to-back round
/// trips on one connection, on a thread pinned to `plan.core` if given.
pub fn pingpong(plan: &PingPongPlan) -> Result<PingPong, super::LoadError> {
    pingpong_until(plan, never)
}

/// [`pingpong`] that gives up with [`LoadError::Interrupted`](super::LoadError::Interrupted)
/// soon after `stop` turns true (looked at before each round trip, and
/// while one waits).
pub fn pingpong_until(
    plan: &PingPongPlan,
    stop: fn() -> bool,
) -> Result<PingPong, super::LoadError> {
    let plan = plan.clone();
    let failed = |source| match source {
        ProbeError::Interrupted { .. } => super::LoadError::Interrupted(super::Phase::Baseline),
        source => super::LoadError::Baseline { source },
    };
    let worker = move || -> Result<PingPong, super::LoadError> {
        if let Some(core) = plan.core {
            crate::pin::pin_current_thread(core)?;
        }
        let mut client =
            BlockingClient::connect(plan.addr, plan.timeout, plan.timeout).map_err(failed)?;
        let mut measured = PingPong {
            round_trips: LatencyHistogram::new(),
            statuses: BTreeMap::new(),
        };
        for i in 0..plan.warmup + plan.count {
            // Outside the timed round trip: one load of the signal flag.
            if stop() {
                return Err(super::LoadError::Interrupted(super::Phase::Baseline));
            }
            let t0 = Instant::now();
            let response = client
                .round_trip_until(&plan.request, plan.response_has_body, stop)
                .map_err(failed)?;
            let rtt = t0.elapsed();
            if !(200..300).contains(&response.status) && !plan.allow_non_2xx {
                return Err(super::LoadError::BaselineStatus(response.status));
            }
            if i >= plan.warmup {
                measured.round_trips.record(rtt);
                *measured.statuses.entry(response.status).or_default() += 1;
            }
        }
        Ok(measured)
    };
    std::thread::Builder::new()
        .name("load-pingpong".into())
        .spawn(worker)
        .map_err(super::LoadError::Setup)?
        .join()
        .map_err(|_| super::LoadError::ThreadPanicked)?
}
