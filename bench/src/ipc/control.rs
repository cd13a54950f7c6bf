//! The control channel between the driver and its peer process, and the
//! peer process itself.
//!
//! The driver re-executes its own binary as `… bench ipc-peer` with one end
//! of a unix socketpair as the child's stdin (an inherited descriptor, no
//! name anywhere). Over it travel fixed 32-byte frames and, with each
//! `Setup` frame, the case's descriptors (`SCM_RIGHTS`, through
//! [`nocturne_ipc::fdpass`]: memfds, eventfds, pipe ends, socket ends).
//! Nothing on this channel is timed: it only sequences the cases.
//!
//! ```text
//! driver                         peer
//!   spawn ───────────────────────▶ pin to core B
//!         ◀─────────────────────── Hello{version, pid}
//!   Board{slots}+memfd ──────────▶ attach the park board
//!         ◀─────────────────────── BoardOk
//!   Setup{case, kind, N, arg}+fds ▶ attach
//!         ◀─────────────────────── SetupOk{case, arg}     (per case)
//!   Serve{case, count} ──────────▶
//!         ◀─────────────────────── Ready{case}
//!   … count messages over the case's own mechanism …
//!         ◀─────────────────────── Done{case, served, parks, errors}
//!   Shutdown ────────────────────▶
//!         ◀─────────────────────── Bye
//! ```

use std::io::{self, Read, Write};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nocturne_ipc::fdpass;

/// Bytes of every control frame.
pub const FRAME_BYTES: usize = 32;
/// Bumped whenever a frame changes meaning.
pub const PROTOCOL_VERSION: u64 = 1;
/// The case index of a failure before any case.
pub const NO_CASE: u32 = u32::MAX;
/// Most descriptors one `Setup` frame carries.
pub const MAX_SETUP_FDS: usize = 4;

/// One control message. `case` is the index into the run's case list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    /// peer → driver, once: it is up and pinned.
    Hello {
        /// [`PROTOCOL_VERSION`] of the peer.
        version: u64,
        /// The peer's process id.
        pid: u64,
    },
    /// driver → peer: attach case `case` (descriptors ride along).
    Setup {
        /// Case index.
        case: u32,
        /// The mechanism's wire code.
        mechanism: u64,
        /// Payload bytes per request.
        payload: u64,
        /// Mechanism-specific (TCP port, stream batch size).
        arg: u64,
    },
    /// peer → driver: case attached.
    SetupOk {
        /// Case index.
        case: u32,
        /// Mechanism-specific (the TCP client's local port).
        arg: u64,
    },
    /// driver → peer: serve `count` messages of case `case`.
    Serve {
        /// Case index.
        case: u32,
        /// Messages to serve, warm-up included.
        count: u64,
    },
    /// peer → driver: about to serve.
    Ready {
        /// Case index.
        case: u32,
    },
    /// driver → peer, once before any Setup: the park board (its memfd
    /// rides along) with `slots` slots.
    Board {
        /// Slots on the board (one per case).
        slots: u64,
    },
    /// peer → driver: board attached.
    BoardOk,
    /// peer → driver: served the chunk.
    Done {
        /// Case index.
        case: u32,
        /// Messages served.
        served: u64,
        /// Times the receiver parked (futex sleep) before a message.
        parks: u64,
        /// Messages that failed validation on the peer's side.
        errors: u64,
    },
    /// peer → driver: could not set up or serve `case` (details on its stderr).
    Failed {
        /// Case index, or [`NO_CASE`] before any case.
        case: u32,
    },
    /// driver → peer: exit.
    Shutdown,
    /// peer → driver: exiting.
    Bye,
}

/// A control-channel failure.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Reading or writing the socket failed.
    #[error("control socket I/O failed")]
    Io(#[from] io::Error),
    /// No frame arrived in time.
    #[error("timed out waiting for the peer process on the control socket")]
    TimedOut,
    /// The other side closed the socket.
    #[error("the other process closed the control socket")]
    Closed,
    /// A frame with an unknown tag.
    #[error("unknown control frame tag {0}")]
    UnknownTag(u32),
    /// A valid frame out of turn.
    #[error("expected {expected} on the control socket, got {got:?}")]
    Unexpected {
        /// What the protocol expected.
        expected: &'static str,
        /// What came.
        got: Frame,
    },
    /// The peer reported a failure.
    #[error("the peer process failed case {case} (its stderr says why)")]
    PeerFailed {
        /// Case index.
        case: u32,
    },
    /// The peer could not start (pinning, its control socket).
    #[error("the peer process could not start (its stderr says why)")]
    PeerStartFailed,
}

/// Why the peer process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// Creating the socketpair or the process failed.
    #[error("cannot start the peer process {program}")]
    Spawn {
        /// The executable.
        program: String,
        /// The cause.
        source: io::Error,
    },
    /// The handshake failed.
    #[error("peer process handshake failed")]
    Handshake(#[from] ControlError),
    /// The peer speaks another protocol version.
    #[error("peer process speaks control protocol {got}, this driver {PROTOCOL_VERSION}")]
    Version {
        /// The peer's version.
        got: u64,
    },
    /// Someone else answered.
    #[error("the handshake came from pid {got}, the peer is pid {expected}")]
    WrongPid {
        /// The spawned child's pid.
        expected: u32,
        /// The pid in the Hello.
        got: u64,
    },
}

mod tag {
    pub const HELLO: u32 = 1;
    pub const SETUP: u32 = 2;
    pub const SETUP_OK: u32 = 3;
    pub const SERVE: u32 = 4;
    pub const READY: u32 = 5;
    pub const DONE: u32 = 6;
    pub const FAILED: u32 = 7;
    pub const SHUTDOWN: u32 = 8;
    pub const BYE: u32 = 9;
    pub const BOARD: u32 = 10;
    pub const BOARD_OK: u32 = 11;
}

impl Frame {
    /// Encodes as `[tag u32][case u32][a u64][b u64][c u64]`, little-endian.
    pub fn encode(&self) -> [u8; FRAME_BYTES] {
        let (t, case, a, b, c) = match *self {
            Frame::Hello { version, pid } => (tag::HELLO, 0, version, pid, 0),
            Frame::Setup {
                case,
                mechanism,
                payload,
                arg,
            } => (tag::SETUP, case, mechanism, payload, arg),
            Frame::SetupOk { case, arg } => (tag::SETUP_OK, case, arg, 0, 0),
            Frame::Serve { case, count } => (tag::SERVE, case, count, 0, 0),
            Frame::Ready { case } => (tag::READY, case, 0, 0, 0),
            Frame::Board { slots } => (tag::BOARD, 0, slots, 0, 0),
            Frame::BoardOk => (tag::BOARD_OK, 0, 0, 0, 0),
            Frame::Done {
                case,
                served,
                parks,
                errors,
            } => (tag::DONE, case, served, parks, errors),
            Frame::Failed { case } => (tag::FAILED, case, 0, 0, 0),
            Frame::Shutdown => (tag::SHUTDOWN, 0, 0, 0, 0),
            Frame::Bye => (tag::BYE, 0, 0, 0, 0),
        };
        let mut out = [0u8; FRAME_BYTES];
        out[0..4].copy_from_slice(&t.to_le_bytes());
        out[4..8].copy_from_slice(&case.to_le_bytes());
        out[8..16].copy_from_slice(&a.to_le_bytes());
        out[16..24].copy_from_slice(&b.to_le_bytes());
        out[24..32].copy_from_slice(&c.to_le_bytes());
        out
    }

    /// Decodes a frame; unknown tags are an error.
    pub fn decode(bytes: &[u8; FRAME_BYTES]) -> Result<Self, ControlError> {
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let (case, a, b, c) = (u32_at(4), u64_at(8), u64_at(16), u64_at(24));
        Ok(match u32_at(0) {
            tag::HELLO => Frame::Hello { version: a, pid: b },
            tag::SETUP => Frame::Setup {
                case,
                mechanism: a,
                payload: b,
                arg: c,
            },
            tag::SETUP_OK => Frame::SetupOk { case, arg: a },
            tag::SERVE => Frame::Serve { case, count: a },
            tag::READY => Frame::Ready { case },
            tag::BOARD => Frame::Board { slots: a },
            tag::BOARD_OK => Frame::BoardOk,
            tag::DONE => Frame::Done {
                case,
                served: a,
                parks: b,
                errors: c,
            },
            tag::FAILED => Frame::Failed { case },
            tag::SHUTDOWN => Frame::Shutdown,
            tag::BYE => Frame::Bye,
            other => return Err(ControlError::UnknownTag(other)),
        })
    }
}

fn map_read_error(e: io::Error) -> ControlError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ControlError::TimedOut,
        io::ErrorKind::UnexpectedEof => ControlError::Closed,
        _ => ControlError::Io(e),
    }
}

/// Sends a frame without descriptors.
pub fn send(sock: &UnixStream, frame: Frame) -> Result<(), ControlError> {
    (&*sock).write_all(&frame.encode())?;
    Ok(())
}

/// Sends a frame with `fds` attached.
pub fn send_with_fds(
    sock: &UnixStream,
    frame: Frame,
    fds: &[BorrowedFd<'_>],
) -> Result<(), ControlError> {
    fdpass::send_with_fds(sock, &frame.encode(), fds)?;
    Ok(())
}

/// Receives one frame (any descriptors sent with it are closed).
pub fn recv(sock: &UnixStream) -> Result<Frame, ControlError> {
    recv_with_fds(sock, 0).map(|(frame, _)| frame)
}

/// Receives one frame and up to `max_fds` descriptors sent with it.
/// A [`Frame::Failed`] becomes [`ControlError::PeerFailed`].
pub fn recv_with_fds(
    sock: &UnixStream,
    max_fds: usize,
) -> Result<(Frame, Vec<OwnedFd>), ControlError> {
    let mut buf = [0u8; FRAME_BYTES];
    let mut filled = 0;
    let mut fds = Vec::new();
    // Read exactly one frame: descriptors ride on its first byte, so never
    // read into the next frame.
    while filled < FRAME_BYTES {
        let (n, mut got) = if max_fds > 0 {
            fdpass::recv_with_fds(sock, &mut buf[filled..], max_fds)
        } else {
            (&*sock).read(&mut buf[filled..]).map(|n| (n, Vec::new()))
        }
        .map_err(map_read_error)?;
        if n == 0 {
            return Err(ControlError::Closed);
        }
        filled += n;
        fds.append(&mut got);
    }
    match Frame::decode(&buf)? {
        Frame::Failed { case: NO_CASE } => Err(ControlError::PeerStartFailed),
        Frame::Failed { case } => Err(ControlError::PeerFailed { case }),
        frame => Ok((frame, fds)),
    }
}

/// The peer process, as the driver holds it. Dropping it closes the
/// control socket and kills the process if it does not exit by itself,
/// unless [`shutdown`](Self::shutdown) ended it cleanly.
pub struct PeerProcess {
    child: Arc<Mutex<Child>>,
    control: UnixStream,
    pid: u32,
    exited: bool,
}

/// A handle that can kill the peer from another thread (the watchdog).
#[derive(Clone)]
pub struct PeerKiller(Arc<Mutex<Child>>);

impl PeerKiller {
    /// A killer for `child`.
    pub fn new(child: Arc<Mutex<Child>>) -> Self {
        Self(child)
    }

    /// SIGKILLs the peer (harmless if it already exited).
    pub fn kill(&self) {
        let mut child = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        let _ = child.kill();
    }
}

impl PeerProcess {
    /// Starts `program bench ipc-peer --core CORE --driver-pid PID` with the
    /// control socket as its stdin, and waits up to `timeout` for its Hello.
    pub fn spawn(program: &Path, core: usize, timeout: Duration) -> Result<Self, SpawnError> {
        let spawn_err = |source| SpawnError::Spawn {
            program: program.display().to_string(),
            source,
        };
        let (control, theirs) = UnixStream::pair().map_err(spawn_err)?;
        let child = Command::new(program)
            .args(["bench", "ipc-peer", "--core"])
            .arg(core.to_string())
            .arg("--driver-pid")
            .arg(std::process::id().to_string())
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .spawn()
            .map_err(spawn_err)?;
        // The Command (and with it our copy of the child's end) is gone:
        // the child's exit now closes the socket.
        let pid = child.id();
        let peer = Self {
            child: Arc::new(Mutex::new(child)),
            control,
            pid,
            exited: false,
        };
        peer.control
            .set_read_timeout(Some(timeout))
            .map_err(spawn_err)?;
        match recv(&peer.control)? {
            Frame::Hello { version, .. } if version != PROTOCOL_VERSION => {
                return Err(SpawnError::Version { got: version })
            }
            Frame::Hello { pid: got, .. } if got != u64::from(pid) => {
                return Err(SpawnError::WrongPid { expected: pid, got })
            }
            Frame::Hello { .. } => {}
            got => {
                return Err(ControlError::Unexpected {
                    expected: "Hello",
                    got,
                }
                .into())
            }
        }
        Ok(peer)
    }

    /// The control socket.
    pub fn control(&self) -> &UnixStream {
        &self.control
    }

    /// The peer's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A handle to kill the peer from another thread.
    pub fn killer(&self) -> PeerKiller {
        PeerKiller(Arc::clone(&self.child))
    }

    /// Asks the peer to exit and waits up to `timeout` for it (killing it
    /// after that).
    pub fn shutdown(mut self, timeout: Duration) -> Result<ExitStatus, ControlError> {
        send(&self.control, Frame::Shutdown)?;
        match recv(&self.control)? {
            Frame::Bye => {}
            got => {
                return Err(ControlError::Unexpected {
                    expected: "Bye",
                    got,
                })
            }
        }
        let deadline = Instant::now() + timeout;
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(status) = child.try_wait()? {
                self.exited = true;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let status = child.wait()?;
                self.exited = true;
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// How long a dropped [`PeerProcess`] may take to exit on its own (it
/// exits at EOF on the control socket, after printing why it failed).
const EXIT_GRACE: Duration = Duration::from_millis(500);

impl Drop for PeerProcess {
    fn drop(&mut self) {
        if self.exited {
            return;
        }
        // EOF first, so a peer that is up (or reporting a failure on its
        // stderr) ends by itself; then kill whatever is left.
        let _ = self.control.shutdown(std::net::Shutdown::Both);
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = Instant::now() + EXIT_GRACE;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Frame; 11] = [
        Frame::Hello {
            version: 1,
            pid: 42,
        },
        Frame::Setup {
            case: 3,
            mechanism: 7,
            payload: 16_384,
            arg: 9,
        },
        Frame::SetupOk { case: 3, arg: 5 },
        Frame::Serve {
            case: 1,
            count: 1000,
        },
        Frame::Ready { case: 1 },
        Frame::Board { slots: 25 },
        Frame::BoardOk,
        Frame::Done {
            case: 1,
            served: 1000,
            parks: 999,
            errors: 1,
        },
        Frame::Failed { case: NO_CASE },
        Frame::Shutdown,
        Frame::Bye,
    ];

    #[test]
    fn frames_round_trip() {
        for frame in ALL {
            assert_eq!(Frame::decode(&frame.encode()).unwrap(), frame);
        }
        let mut bad = Frame::Bye.encode();
        bad[0] = 200;
        assert!(matches!(
            Frame::decode(&bad),
            Err(ControlError::UnknownTag(200))
        ));
    }

    #[test]
    fn frames_and_descriptors_cross_a_socketpair() {
        let (a, b) = UnixStream::pair().unwrap();
        let (keep, pass) = UnixStream::pair().unwrap();
        let setup = ALL[1];
        send_with_fds(&a, setup, &[std::os::fd::AsFd::as_fd(&pass)]).unwrap();
        send(&a, Frame::Shutdown).unwrap();
        let (frame, fds) = recv_with_fds(&b, MAX_SETUP_FDS).unwrap();
        assert_eq!((frame, fds.len()), (setup, 1));
        // The received descriptor is the same socket.
        let mut passed = UnixStream::from(fds.into_iter().next().unwrap());
        passed.write_all(b"x").unwrap();
        let mut byte = [0u8];
        (&keep).read_exact(&mut byte).unwrap();
        assert_eq!(&byte, b"x");
        // The next frame is read whole and separately.
        assert_eq!(recv(&b).unwrap(), Frame::Shutdown);
    }

    #[test]
    fn failures_eof_and_timeouts_are_typed() {
        let (a, b) = UnixStream::pair().unwrap();
        send(&a, Frame::Failed { case: 4 }).unwrap();
        assert!(matches!(
            recv(&b),
            Err(ControlError::PeerFailed { case: 4 })
        ));
        send(&a, Frame::Failed { case: NO_CASE }).unwrap();
        assert!(matches!(recv(&b), Err(ControlError::PeerStartFailed)));
        b.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
        assert!(matches!(recv(&b), Err(ControlError::TimedOut)));
        // Half a frame, then EOF.
        (&a).write_all(&[1, 0, 0]).unwrap();
        drop(a);
        assert!(matches!(recv(&b), Err(ControlError::Closed)));
    }

    #[test]
    fn spawning_something_that_is_not_a_peer_fails_cleanly() {
        // `true` exits at once without a Hello: the socket closes. (A peer
        // that hangs instead runs into the read timeout, tested above.)
        let err = PeerProcess::spawn(Path::new("true"), 0, Duration::from_secs(5))
            .err()
            .unwrap();
        assert!(
            matches!(err, SpawnError::Handshake(ControlError::Closed)),
            "{err}"
        );
        let err = PeerProcess::spawn(
            Path::new("/nonexistent/nocturne"),
            0,
            Duration::from_secs(5),
        )
        .err()
        .unwrap();
        assert!(matches!(err, SpawnError::Spawn { .. }), "{err}");
    }
}
