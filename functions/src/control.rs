//! The control protocol between the engine and a worker process: the handshake
//! that hands a worker its channel, and the socket whose EOF ends the worker.
//!
//! The engine starts a worker with one end of a `SOCK_SEQPACKET` socketpair in
//! `NOCTURNE_CONTROL_FD` and the function name in `NOCTURNE_FUNCTION`
//! (docs/design.md §4, the worker contract). Over that socket:
//!
//! ```text
//!  engine                                         worker
//!    │── Hello {function, ids, wait, channel, slot, table} ─▶│  + SCM_RIGHTS [memfd, eventfd(, board)]
//!    │                                                │  attach the channel
//!    │◀─ Ready {pid, function_id, worker_index} ──────│  (or Refused {reason})
//!    │            … calls flow over the rings …        │
//!    │── close ───────────────────────────────────────▶│  EOF: the worker exits
//! ```
//!
//! Both sides use the definitions in this module, so there is one source of
//! truth for the byte layout. Each message is one datagram (SEQPACKET keeps the
//! boundaries), little-endian throughout:
//!
//! ```text
//!  0  [u8; 4] magic "NCTL"
//!  4  u16     protocol version (2)
//!  6  u16     kind: 1 Hello, 2 Ready, 3 Refused
//!  8  u32     body length = datagram length - 12
//! 12  body
//!
//!  Hello   u32 function_id, u32 worker_index,
//!          u8 wait tag (0 spin, 1 yield, 2 park), u64 wait spin budget in ns,
//!          u32 ring_slots, u32 slot_size, u32 arena_bytes,
//!          u8 wake-board slot (0..=63; 255: no board),
//!          str function, u32 table length, then per entry: u32 id, str name
//!  Ready   u32 pid, u32 function_id, u32 worker_index
//!  Refused str reason
//!  str  =  u16 length + that many UTF-8 bytes
//! ```
//!
//! A hello with a wake-board slot carries the board's memfd as a third fd:
//! the worker's request ring then rings on that slot's doorbell word of the
//! board (`nocturne_ipc::wake_board::WakeBoard`, `repr(C)`), not on the
//! ring's own, and a worker that yields serves the board while it waits. The
//! SDK does this for every worker built on it ([`WorkerEnd::take_seat`]
//! before ready); a worker written against the wire protocol alone must do
//! the same, or the engine's wake-ups never reach it.
//!
//! Everything read from the socket is untrusted: every length is checked against
//! what is left of the datagram before anything is allocated, and a bad message
//! is a [`ParseError`], never a panic. A peer speaking another version is refused
//! on the version field alone, so the body layout may change with the version.

// Taking ownership of the inherited control fd and checking its socket type
// needs raw fd calls.
#![allow(unsafe_code)]

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nocturne_ipc::channel::{ChannelConfig, ChannelError, WaitPolicy, WorkerEnd};
use nocturne_ipc::fdpass;
use nocturne_ipc::region::RegionError;
use nocturne_ipc::wake_board::{SharedWakeBoard, Slot, WakeSeat};
use std::sync::Arc;

/// Environment variable holding the number of the worker's control socket fd.
pub const CONTROL_FD_ENV: &str = "NOCTURNE_CONTROL_FD";
/// Environment variable holding the name of the function the worker serves.
pub const FUNCTION_ENV: &str = "NOCTURNE_FUNCTION";

/// First four bytes of every control message.
pub const MAGIC: [u8; 4] = *b"NCTL";
/// The protocol version this build speaks (2: the hello's wake-board slot).
pub const VERSION: u16 = 2;
/// Largest control message either side sends or accepts, header included.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;
/// Longest function name (bytes) the protocol carries.
pub const MAX_NAME_LEN: usize = 255;
/// A refusal reason longer than this is cut (at a character boundary) on emit.
pub const MAX_REASON_LEN: usize = 1024;
/// File descriptors that ride with a [`Hello`]: the channel memfd, then the
/// eventfd the worker's response-ring sender writes to wake the engine, then
/// (only with [`Hello::wake_slot`]) the wake board's memfd.
pub const HELLO_FDS: usize = 2;
/// The most file descriptors a [`Hello`] carries (with a wake board).
pub const MAX_HELLO_FDS: usize = HELLO_FDS + 1;
/// The hello's wake-slot byte when the worker has no seat on a board.
const NO_WAKE_SLOT: u8 = u8::MAX;
/// How long a worker waits for the engine's hello before giving up. The engine
/// sends it right after the exec, so only a process started by hand waits long.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

const HEADER_LEN: usize = 12;

/// The kind field of a control message; unknown values are kept, not rejected,
/// so a parser can say what it saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// Engine → worker: who you are and your channel (fds attached).
    Hello,
    /// Worker → engine: attached and serving.
    Ready,
    /// Worker → engine: cannot serve (wrong function, bad channel…), with a reason.
    Refused,
    /// A kind this version does not know.
    Unknown(u16),
}

impl From<u16> for MessageKind {
    fn from(raw: u16) -> Self {
        match raw {
            1 => Self::Hello,
            2 => Self::Ready,
            3 => Self::Refused,
            other => Self::Unknown(other),
        }
    }
}

impl From<MessageKind> for u16 {
    fn from(kind: MessageKind) -> Self {
        match kind {
            MessageKind::Hello => 1,
            MessageKind::Ready => 2,
            MessageKind::Refused => 3,
            MessageKind::Unknown(raw) => raw,
        }
    }
}

/// Engine → worker: everything a worker needs to serve, besides the fds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The function this worker serves (must match `NOCTURNE_FUNCTION`).
    pub function: String,
    /// Its id in ring message headers.
    pub function_id: u32,
    /// Which worker of the engine this is (for logs and call ids).
    pub worker_index: u32,
    /// How the worker waits on its request ring, chosen from its placement.
    pub wait: WaitPolicy,
    /// Layout of the channel region (the worker re-validates it on attach).
    pub channel: ChannelConfig,
    /// The worker's seat on its core loop's wake board, whose memfd then
    /// rides as the third fd: its request ring's doorbell word is that
    /// slot's, and while it yields it serves the wakes the engine delegates
    /// (`nocturne_ipc::wake_board`). `None` for a worker that does not
    /// share a core (spinning, or delegation off).
    pub wake_slot: Option<Slot>,
    /// Name → id of every function of the engine, so `ctx.invoke("bar")`
    /// resolves without asking the engine.
    pub functions: Vec<(String, u32)>,
}

/// Worker → engine: the channel is attached and the worker serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ready {
    /// The worker's pid as it sees it (the engine checks it against the child).
    pub pid: u32,
    /// Echo of [`Hello::function_id`].
    pub function_id: u32,
    /// Echo of [`Hello::worker_index`].
    pub worker_index: u32,
}

/// One control message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlMessage {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`Ready`].
    Ready(Ready),
    /// The worker refuses to serve, and why.
    Refused {
        /// Human-readable reason, for the engine log.
        reason: String,
    },
}

/// Why bytes received on the control socket are not a valid message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The datagram ends before a field it must hold.
    #[error("control message truncated: need {need} bytes at offset {offset}, {have} left")]
    Truncated {
        /// Offset of the field that does not fit.
        offset: usize,
        /// Bytes the field needs.
        need: usize,
        /// Bytes left in the datagram.
        have: usize,
    },
    /// The first four bytes are not [`MAGIC`].
    #[error("bad control message magic {0:02x?}")]
    BadMagic([u8; 4]),
    /// The peer speaks another protocol version.
    #[error("control protocol version {got}, this side speaks {VERSION}")]
    Version {
        /// Version the peer sent.
        got: u16,
    },
    /// The body length field disagrees with the datagram.
    #[error("control body length field says {declared} bytes but {actual} follow the header")]
    BodyLength {
        /// Length field.
        declared: u32,
        /// Bytes after the header.
        actual: usize,
    },
    /// The datagram is larger than [`MAX_MESSAGE_LEN`].
    #[error("control message of {len}+ bytes exceeds the {MAX_MESSAGE_LEN}-byte limit")]
    TooLarge {
        /// Bytes received (at least).
        len: usize,
    },
    /// A kind this version does not know.
    #[error("unknown control message kind {0}")]
    UnknownKind(u16),
    /// A string field is empty where a name is required, too long, or not UTF-8.
    #[error("invalid {what} string in control message")]
    BadString {
        /// Which field.
        what: &'static str,
    },
    /// The wake-board slot is neither a board slot nor "none".
    #[error("wake board slot {0} is out of range (0..=63, or 255 for none)")]
    BadWakeSlot(u8),
    /// The wait-policy tag is not 0, 1 or 2.
    #[error("unknown wait policy tag {0}")]
    BadWaitPolicy(u8),
    /// The function table names a function twice.
    #[error("function {0:?} appears twice in the function table")]
    DuplicateFunction(String),
    /// Bytes are left after the body of a known kind.
    #[error("{0} unexpected trailing bytes in control message")]
    TrailingBytes(usize),
}

/// Why a message cannot be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    /// A function name is empty or longer than [`MAX_NAME_LEN`] bytes.
    #[error("function name {name:?} is empty or longer than {MAX_NAME_LEN} bytes")]
    BadName {
        /// The name.
        name: String,
    },
    /// The encoded message would exceed [`MAX_MESSAGE_LEN`] (too many functions).
    #[error("control message of {len} bytes exceeds the {MAX_MESSAGE_LEN}-byte limit")]
    TooLarge {
        /// Encoded length.
        len: usize,
    },
}

/// Why a control message could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendControlError {
    /// The message cannot be encoded.
    #[error(transparent)]
    Emit(#[from] EmitError),
    /// The socket refused it (`EPIPE`: the peer is gone).
    #[error("control socket send: {0}")]
    Io(#[from] io::Error),
}

/// Why no control message could be received.
#[derive(Debug, thiserror::Error)]
pub enum RecvControlError {
    /// The socket failed; a receive timeout shows up as `WouldBlock`/`TimedOut`.
    #[error("control socket receive: {0}")]
    Io(#[from] io::Error),
    /// The peer sent something that is not a valid message.
    #[error(transparent)]
    Parse(#[from] ParseError),
}

impl RecvControlError {
    /// Whether this is a receive timeout (`SO_RCVTIMEO` expired).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Io(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }
}

// ---------------------------------------------------------------------------
// Encoding.

struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.out.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    /// A length-prefixed string; the caller has bounded `s` to `u16::MAX`.
    fn str(&mut self, s: &str) {
        debug_assert!(s.len() <= usize::from(u16::MAX));
        self.u16(s.len() as u16);
        self.out.extend_from_slice(s.as_bytes());
    }
}

fn check_name(name: &str) -> Result<(), EmitError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(EmitError::BadName {
            name: name.to_string(),
        });
    }
    Ok(())
}

/// Cuts `s` to at most `max` bytes at a character boundary.
fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn wait_to_wire(wait: &WaitPolicy) -> (u8, u64) {
    let ns = |d: &Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    match wait {
        WaitPolicy::Spin => (0, 0),
        WaitPolicy::Yield { spin } => (1, ns(spin)),
        WaitPolicy::Park { spin } => (2, ns(spin)),
    }
}

fn wait_from_wire(tag: u8, spin_ns: u64) -> Result<WaitPolicy, ParseError> {
    let spin = Duration::from_nanos(spin_ns);
    match tag {
        0 => Ok(WaitPolicy::Spin),
        1 => Ok(WaitPolicy::Yield { spin }),
        2 => Ok(WaitPolicy::Park { spin }),
        other => Err(ParseError::BadWaitPolicy(other)),
    }
}

impl ControlMessage {
    /// The kind field this message is sent with.
    pub fn kind(&self) -> MessageKind {
        match self {
            Self::Hello(_) => MessageKind::Hello,
            Self::Ready(_) => MessageKind::Ready,
            Self::Refused { .. } => MessageKind::Refused,
        }
    }

    /// Appends the encoded message to `out` (which is left as it was on error).
    pub fn emit(&self, out: &mut Vec<u8>) -> Result<(), EmitError> {
        let start = out.len();
        let result = self.emit_inner(out);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    fn emit_inner(&self, out: &mut Vec<u8>) -> Result<(), EmitError> {
        let start = out.len();
        out.extend_from_slice(&MAGIC);
        let mut w = Writer { out };
        w.u16(VERSION);
        w.u16(self.kind().into());
        w.u32(0); // body length, patched below
        match self {
            Self::Hello(hello) => {
                check_name(&hello.function)?;
                w.u32(hello.function_id);
                w.u32(hello.worker_index);
                let (tag, spin_ns) = wait_to_wire(&hello.wait);
                w.u8(tag);
                w.u64(spin_ns);
                w.u32(hello.channel.ring_slots);
                w.u32(hello.channel.slot_size);
                w.u32(hello.channel.arena_bytes);
                w.u8(hello.wake_slot.map_or(NO_WAKE_SLOT, |s| s.index() as u8));
                w.str(&hello.function);
                let count = u32::try_from(hello.functions.len())
                    .map_err(|_| EmitError::TooLarge { len: usize::MAX })?;
                w.u32(count);
                for (name, id) in &hello.functions {
                    check_name(name)?;
                    w.u32(*id);
                    w.str(name);
                    // Stop early rather than build a huge buffer for a table
                    // that cannot be sent anyway.
                    if w.out.len() - start > MAX_MESSAGE_LEN {
                        return Err(EmitError::TooLarge {
                            len: w.out.len() - start,
                        });
                    }
                }
            }
            Self::Ready(ready) => {
                w.u32(ready.pid);
                w.u32(ready.function_id);
                w.u32(ready.worker_index);
            }
            Self::Refused { reason } => w.str(truncate_str(reason, MAX_REASON_LEN)),
        }
        let len = out.len() - start;
        if len > MAX_MESSAGE_LEN {
            return Err(EmitError::TooLarge { len });
        }
        let body_len = (len - HEADER_LEN) as u32; // <= MAX_MESSAGE_LEN, fits
        out[start + 8..start + 12].copy_from_slice(&body_len.to_le_bytes());
        Ok(())
    }

    /// Parses one datagram. Every length is checked before it is used.
    pub fn parse(buf: &[u8]) -> Result<Self, ParseError> {
        if buf.len() > MAX_MESSAGE_LEN {
            return Err(ParseError::TooLarge { len: buf.len() });
        }
        let mut r = Reader { buf, pos: 0 };
        let magic = r.array::<4>()?;
        if magic != MAGIC {
            return Err(ParseError::BadMagic(magic));
        }
        let version = r.u16()?;
        if version != VERSION {
            return Err(ParseError::Version { got: version });
        }
        let kind = MessageKind::from(r.u16()?);
        let declared = r.u32()?;
        let actual = buf.len() - HEADER_LEN;
        if declared as usize != actual {
            return Err(ParseError::BodyLength { declared, actual });
        }
        let msg = match kind {
            MessageKind::Hello => {
                let function_id = r.u32()?;
                let worker_index = r.u32()?;
                let tag = r.u8()?;
                let spin_ns = r.u64()?;
                let wait = wait_from_wire(tag, spin_ns)?;
                let channel = ChannelConfig {
                    ring_slots: r.u32()?,
                    slot_size: r.u32()?,
                    arena_bytes: r.u32()?,
                };
                let wake_slot = match r.u8()? {
                    NO_WAKE_SLOT => None,
                    raw => Some(
                        Slot::new(usize::from(raw)).map_err(|_| ParseError::BadWakeSlot(raw))?,
                    ),
                };
                let function = r.name("function")?;
                let count = r.u32()? as usize;
                // Each entry takes at least 4 + 2 + 1 bytes: bound the count by
                // what is left before trusting it with an allocation.
                let min_entry = 7;
                if count > r.remaining() / min_entry {
                    return Err(ParseError::Truncated {
                        offset: r.pos,
                        need: count.saturating_mul(min_entry),
                        have: r.remaining(),
                    });
                }
                let mut functions = Vec::with_capacity(count);
                let mut seen = HashSet::with_capacity(count);
                for _ in 0..count {
                    let id = r.u32()?;
                    let name = r.name("function table")?;
                    if !seen.insert(name.clone()) {
                        return Err(ParseError::DuplicateFunction(name));
                    }
                    functions.push((name, id));
                }
                Self::Hello(Hello {
                    function,
                    function_id,
                    worker_index,
                    wait,
                    channel,
                    wake_slot,
                    functions,
                })
            }
            MessageKind::Ready => Self::Ready(Ready {
                pid: r.u32()?,
                function_id: r.u32()?,
                worker_index: r.u32()?,
            }),
            MessageKind::Refused => Self::Refused {
                reason: r.str("reason")?.to_string(),
            },
            MessageKind::Unknown(raw) => return Err(ParseError::UnknownKind(raw)),
        };
        if r.remaining() != 0 {
            return Err(ParseError::TrailingBytes(r.remaining()));
        }
        Ok(msg)
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        if n > self.remaining() {
            return Err(ParseError::Truncated {
                offset: self.pos,
                need: n,
                have: self.remaining(),
            });
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ParseError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, ParseError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, ParseError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, ParseError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, ParseError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn str(&mut self, what: &'static str) -> Result<&'a str, ParseError> {
        let len = usize::from(self.u16()?);
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|_| ParseError::BadString { what })
    }

    /// A function name: non-empty, at most [`MAX_NAME_LEN`] bytes.
    fn name(&mut self, what: &'static str) -> Result<String, ParseError> {
        let s = self.str(what)?;
        if s.is_empty() || s.len() > MAX_NAME_LEN {
            return Err(ParseError::BadString { what });
        }
        Ok(s.to_string())
    }
}

// ---------------------------------------------------------------------------
// Transport: one message per datagram, fds as SCM_RIGHTS.

/// Creates the `SOCK_SEQPACKET` socketpair of a worker's control connection,
/// both ends close-on-exec (the engine clears the flag on the child's end only
/// in the forked child, so no other worker can inherit it and hold off the EOF).
pub fn control_socketpair() -> io::Result<(UnixStream, UnixStream)> {
    let mut fds = [-1 as RawFd; 2];
    // SAFETY: `fds` is a valid, writable array of two ints, as socketpair requires.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socketpair succeeded, so both fds are open and owned by nobody else.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((UnixStream::from(a), UnixStream::from(b)))
}

/// Sends one message with `fds` attached.
pub fn send(
    sock: &UnixStream,
    msg: &ControlMessage,
    fds: &[BorrowedFd<'_>],
) -> Result<(), SendControlError> {
    let mut buf = Vec::with_capacity(256);
    msg.emit(&mut buf)?;
    fdpass::send_with_fds(sock, &buf, fds)?;
    Ok(())
}

/// Receives one message and up to `max_fds` fds; `Ok(None)` is EOF (the peer
/// closed its end). Honours the socket's read timeout.
pub fn recv(
    sock: &UnixStream,
    max_fds: usize,
) -> Result<Option<(ControlMessage, Vec<OwnedFd>)>, RecvControlError> {
    // One byte more than the limit: a datagram that fills it was too large
    // (SEQPACKET silently cuts a datagram to the buffer).
    let mut buf = vec![0u8; MAX_MESSAGE_LEN + 1];
    let (n, fds) = loop {
        match fdpass::recv_with_fds(sock, &mut buf, max_fds) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other?,
        }
    };
    if n == 0 {
        return Ok(None);
    }
    let msg = ControlMessage::parse(&buf[..n])?;
    Ok(Some((msg, fds)))
}

// ---------------------------------------------------------------------------
// Worker side.

/// What a worker has after a successful handshake.
pub struct Bootstrap {
    /// The function to serve (from `NOCTURNE_FUNCTION`, checked against the hello).
    pub function: String,
    /// Its id in ring message headers.
    pub function_id: u32,
    /// Name → id of every function, so `ctx.invoke("bar")` resolves locally.
    pub functions: Vec<(String, u32)>,
    /// The attached channel: requests in, responses out. Its request
    /// receiver comes out of `split` seated on the engine's wake board when
    /// the hello gave it a seat ([`Hello::wake_slot`]).
    pub end: WorkerEnd,
    /// How to wait on the request ring.
    pub wait: WaitPolicy,
    /// The control socket. Keep it open: its EOF tells the worker the engine is
    /// gone (see [`spawn_eof_watchdog`]); closing it tells the engine the same.
    pub control: UnixStream,
    /// Which worker of the engine this is.
    pub worker_index: u32,
}

/// Why a worker's handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// `NOCTURNE_CONTROL_FD` is not set.
    #[error("{CONTROL_FD_ENV} is not set: this process was not started by a nocturne engine")]
    NotStarted,
    /// An environment variable of the worker contract is malformed.
    #[error("{var}={value:?} is invalid: {why}")]
    BadEnv {
        /// Which variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The inherited control fd was already taken by an earlier call.
    #[error("the control socket was already taken by an earlier connect_from_env or receive_hello_from_env")]
    AlreadyConnected,
    /// Sending or receiving failed.
    #[error("control socket I/O: {0}")]
    Io(#[source] io::Error),
    /// No hello arrived within [`HELLO_TIMEOUT`].
    #[error("no hello from the engine within {0:?}")]
    Timeout(Duration),
    /// The engine closed the control socket before the handshake finished.
    #[error("the engine closed the control socket during the handshake")]
    EngineGone,
    /// The engine sent a malformed message.
    #[error("malformed message from the engine: {0}")]
    Parse(#[from] ParseError),
    /// The engine sent a valid message of the wrong kind.
    #[error("expected a hello from the engine, got {0:?}")]
    Unexpected(MessageKind),
    /// The hello came with the wrong number of fds.
    #[error("the hello carried {got} file descriptors, expected {expected}")]
    MissingFds {
        /// How many came.
        got: usize,
        /// How many the hello announced.
        expected: usize,
    },
    /// The received wake board memfd is not a valid board.
    #[error("cannot attach the wake board: {0}")]
    WakeBoard(#[source] RegionError),
    /// The engine's hello is for another function than `NOCTURNE_FUNCTION`.
    #[error("started as {env:?} but the engine's hello is for {engine:?}")]
    FunctionMismatch {
        /// `NOCTURNE_FUNCTION`.
        env: String,
        /// [`Hello::function`].
        engine: String,
    },
    /// The function table gives the worker's own function another id.
    #[error("the function table maps {function:?} to id {table} but the hello says {hello}")]
    TableMismatch {
        /// The function.
        function: String,
        /// Id in the table.
        table: u32,
        /// Id in the hello.
        hello: u32,
    },
    /// The received memfd is not a valid channel.
    #[error("cannot attach the channel: {0}")]
    Attach(#[source] ChannelError),
    /// The attached channel's layout is not the one the hello announced.
    #[error("the hello announces channel {hello:?} but the region holds {region:?}")]
    ConfigMismatch {
        /// From the hello.
        hello: ChannelConfig,
        /// From the attached region.
        region: ChannelConfig,
    },
}

impl From<RecvControlError> for ControlError {
    fn from(e: RecvControlError) -> Self {
        match e {
            RecvControlError::Io(e) => Self::Io(e),
            RecvControlError::Parse(e) => Self::Parse(e),
        }
    }
}

impl From<SendControlError> for ControlError {
    fn from(e: SendControlError) -> Self {
        match e {
            SendControlError::Io(e) => Self::Io(e),
            // Ready and Refused always encode (the reason is cut to length).
            SendControlError::Emit(e) => Self::Io(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }
}

/// Set once the inherited control fd has been wrapped in an owner, so a second
/// call cannot create a second owner of the same fd.
static CONTROL_FD_TAKEN: AtomicBool = AtomicBool::new(false);

/// The worker side of the handshake, for a process the engine started: takes
/// the control socket from `NOCTURNE_CONTROL_FD`, receives the hello and the
/// channel fds, attaches the channel and answers ready.
pub fn connect_from_env() -> Result<Bootstrap, ControlError> {
    receive_hello_from_env()?.ready()
}

/// The first half of [`connect_from_env`]: receives and checks the hello and
/// attaches the channel, but does not answer yet, so the worker can still
/// refuse (see [`PendingHandshake`]).
pub fn receive_hello_from_env() -> Result<PendingHandshake, ControlError> {
    let raw = std::env::var(CONTROL_FD_ENV).map_err(|e| match e {
        std::env::VarError::NotPresent => ControlError::NotStarted,
        std::env::VarError::NotUnicode(v) => ControlError::BadEnv {
            var: CONTROL_FD_ENV,
            value: v.to_string_lossy().into_owned(),
            why: "not a number",
        },
    })?;
    let function = std::env::var(FUNCTION_ENV).map_err(|_| ControlError::BadEnv {
        var: FUNCTION_ENV,
        value: std::env::var_os(FUNCTION_ENV)
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_default(),
        why: "missing or not UTF-8",
    })?;
    let bad = |why| ControlError::BadEnv {
        var: CONTROL_FD_ENV,
        value: raw.clone(),
        why,
    };
    let fd: RawFd = raw.trim().parse().map_err(|_| bad("not a number"))?;
    if fd < 0 {
        return Err(bad("negative"));
    }
    check_control_fd(fd).map_err(bad)?;
    // No ordering is needed (Relaxed would do): the swap is a read-modify-
    // write, so exactly one caller ever sees `false` and becomes the fd's
    // owner, and nothing is published through the flag. SeqCst only keeps a
    // reader from having to check that; this runs once per process.
    if CONTROL_FD_TAKEN.swap(true, Ordering::SeqCst) {
        return Err(ControlError::AlreadyConnected);
    }
    // SAFETY: the fd is open (checked above) and is the control socket the engine
    // passed us; the flag above makes this the only owner this process creates.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // The socket was inherited without close-on-exec; a program this worker
    // execs must not hold it (it would keep the engine from seeing our EOF).
    set_cloexec(owned.as_raw_fd()).map_err(ControlError::Io)?;
    receive_hello(UnixStream::from(owned), &function)
}

/// Checks that `fd` is open and is a `SOCK_SEQPACKET` socket.
fn check_control_fd(fd: RawFd) -> Result<(), &'static str> {
    let mut ty: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `ty`/`len` are valid for writes of the sizes given; getsockopt on an
    // arbitrary fd number only reads kernel state (EBADF/ENOTSOCK if it is not ours).
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut ty as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err("not an open socket");
    }
    if ty != libc::SOCK_SEQPACKET {
        return Err("not a SOCK_SEQPACKET socket");
    }
    Ok(())
}

fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl F_GETFD/F_SETFD on an fd we own reads/writes only its flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The worker side of the handshake on an already-open control socket, for a
/// worker that must serve `function`. On a bad hello the worker answers
/// `Refused` with the reason (best effort) before returning the error, so the
/// engine logs why instead of only seeing an exit.
pub fn connect(control: UnixStream, function: &str) -> Result<Bootstrap, ControlError> {
    receive_hello(control, function)?.ready()
}

/// The first half of [`connect`]: everything but the answer (see
/// [`PendingHandshake`]). A bad hello is refused here already, as by `connect`.
pub fn receive_hello(
    control: UnixStream,
    function: &str,
) -> Result<PendingHandshake, ControlError> {
    control
        .set_read_timeout(Some(HELLO_TIMEOUT))
        .map_err(ControlError::Io)?;
    let result = read_hello(&control, function);
    let (hello, end) = match result {
        Ok(ok) => ok,
        Err(e) => {
            if !matches!(
                e,
                ControlError::EngineGone | ControlError::Io(_) | ControlError::Timeout(_)
            ) {
                let _ = send(
                    &control,
                    &ControlMessage::Refused {
                        reason: e.to_string(),
                    },
                    &[],
                );
            }
            return Err(e);
        }
    };
    control.set_read_timeout(None).map_err(ControlError::Io)?;
    Ok(PendingHandshake {
        control,
        hello,
        end,
    })
}

/// A handshake whose hello was received and checked, and whose channel is
/// attached, but which the worker has not answered yet: it either
/// [serves](Self::ready) or [refuses](Self::refuse). Refusing is for what only
/// the worker knows, such as a binary that has no handler for the function the
/// hello names: the engine then logs a start failure with the reason, where a
/// worker that answered ready and exited would look like a crash loop.
pub struct PendingHandshake {
    control: UnixStream,
    hello: Hello,
    end: WorkerEnd,
}

impl PendingHandshake {
    /// The engine's hello: the function to serve, the function table, the wait policy.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// Answers `Ready`: from now on the engine sends calls on the channel.
    pub fn ready(self) -> Result<Bootstrap, ControlError> {
        let Self {
            control,
            hello,
            end,
        } = self;
        let ready = Ready {
            pid: std::process::id(),
            function_id: hello.function_id,
            worker_index: hello.worker_index,
        };
        send(&control, &ControlMessage::Ready(ready), &[])?;
        Ok(Bootstrap {
            function: hello.function,
            function_id: hello.function_id,
            functions: hello.functions,
            end,
            wait: hello.wait,
            control,
            worker_index: hello.worker_index,
        })
    }

    /// Answers `Refused { reason }` (cut to [`MAX_REASON_LEN`]) and closes the
    /// control socket; the engine logs the reason and the worker should exit.
    /// An error means the engine could not be told (it is likely gone).
    pub fn refuse(self, reason: &str) -> Result<(), ControlError> {
        let refused = ControlMessage::Refused {
            reason: reason.to_string(),
        };
        send(&self.control, &refused, &[])?;
        Ok(())
    }
}

fn read_hello(control: &UnixStream, function: &str) -> Result<(Hello, WorkerEnd), ControlError> {
    let (msg, fds) = match recv(control, MAX_HELLO_FDS) {
        Ok(Some(got)) => got,
        Ok(None) => return Err(ControlError::EngineGone),
        Err(e) if e.is_timeout() => return Err(ControlError::Timeout(HELLO_TIMEOUT)),
        Err(e) => return Err(e.into()),
    };
    let hello = match msg {
        ControlMessage::Hello(hello) => hello,
        other => return Err(ControlError::Unexpected(other.kind())),
    };
    if hello.function != function {
        return Err(ControlError::FunctionMismatch {
            env: function.to_string(),
            engine: hello.function,
        });
    }
    if let Some((_, id)) = hello
        .functions
        .iter()
        .find(|(name, _)| *name == hello.function)
    {
        if *id != hello.function_id {
            return Err(ControlError::TableMismatch {
                function: hello.function,
                table: *id,
                hello: hello.function_id,
            });
        }
    }
    let got = fds.len();
    let expected = HELLO_FDS + usize::from(hello.wake_slot.is_some());
    if got != expected {
        return Err(ControlError::MissingFds { got, expected });
    }
    let mut fds = fds.into_iter();
    let (Some(memfd), Some(efd)) = (fds.next(), fds.next()) else {
        unreachable!("the count was checked");
    };
    let wake_seat = match (hello.wake_slot, fds.next()) {
        (Some(slot), Some(board)) => {
            let board = SharedWakeBoard::attach(board).map_err(ControlError::WakeBoard)?;
            Some(WakeSeat::new(Arc::new(board), slot))
        }
        _ => None,
    };
    let mut end = WorkerEnd::attach_with_eventfd(memfd, efd).map_err(ControlError::Attach)?;
    // Seated before the worker answers ready, so it never sleeps on the
    // ring's own word while the engine wakes the board's.
    if let Some(seat) = wake_seat {
        end.take_seat(seat);
    }
    if end.config() != hello.channel {
        return Err(ControlError::ConfigMismatch {
            hello: hello.channel,
            region: end.config(),
        });
    }
    Ok((hello, end))
}

/// Starts a thread that blocks on the control socket and exits the process
/// (`exit(0)`) when it reaches EOF, i.e. when the engine closed it or died. This
/// is the contract's guarantee that a worker never outlives its engine, even
/// where `PR_SET_PDEATHSIG` is missed (the engine thread that forked us is not
/// the one that died, or the worker was started through a wrapper).
///
/// After the handshake the engine sends nothing on this socket; anything that
/// arrives is read and dropped so it cannot fill the buffer.
pub fn spawn_eof_watchdog(control: &UnixStream) {
    let sock = match control.try_clone() {
        Ok(sock) => sock,
        Err(e) => {
            // Without a watchdog the worker could outlive the engine: refuse to run.
            eprintln!("nocturne worker: cannot start the control watchdog: {e}");
            std::process::exit(1);
        }
    };
    let spawned = std::thread::Builder::new()
        .name("nocturne-control".into())
        .spawn(move || {
            let _ = sock.set_read_timeout(None);
            let mut buf = [0u8; 512];
            loop {
                match fdpass::recv_with_fds(&sock, &mut buf, 0) {
                    Ok((0, _)) => std::process::exit(0),
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // Descriptors we did not ask for: fdpass already closed them.
                    Err(e) if e.kind() == io::ErrorKind::InvalidData => continue,
                    // Any other error means the socket is unusable: the engine can no
                    // longer reach us, which is as good as gone.
                    Err(_) => std::process::exit(0),
                }
            }
        });
    if let Err(e) = spawned {
        eprintln!("nocturne worker: cannot start the control watchdog: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_hello() -> Hello {
        Hello {
            function: "foo".into(),
            function_id: 7,
            worker_index: 3,
            wait: WaitPolicy::Yield {
                spin: Duration::from_micros(50),
            },
            channel: ChannelConfig {
                ring_slots: 64,
                slot_size: 256,
                arena_bytes: 4096,
            },
            wake_slot: Some(Slot::new(63).unwrap()),
            functions: vec![("foo".into(), 7), ("bar".into(), 8), ("écho".into(), 9)],
        }
    }

    #[test]
    fn a_hello_without_a_wake_slot_round_trips_and_bad_slots_are_refused() {
        let hello = Hello {
            wake_slot: None,
            ..sample_hello()
        };
        let buf = encode(&ControlMessage::Hello(hello.clone()));
        assert_eq!(
            ControlMessage::parse(&buf).unwrap(),
            ControlMessage::Hello(hello)
        );
        // The slot byte follows the channel geometry: header, ids (8), wait
        // (9), geometry (12).
        let at = HEADER_LEN + 8 + 9 + 12;
        assert_eq!(buf[at], NO_WAKE_SLOT);
        for bad in [64u8, 200, 254] {
            let mut b = buf.clone();
            b[at] = bad;
            assert_eq!(ControlMessage::parse(&b), Err(ParseError::BadWakeSlot(bad)));
        }
        assert!(ParseError::BadWakeSlot(64)
            .to_string()
            .contains("wake board slot 64 is out of range"));
    }

    fn encode(msg: &ControlMessage) -> Vec<u8> {
        let mut buf = Vec::new();
        msg.emit(&mut buf).unwrap();
        buf
    }

    #[test]
    fn hello_round_trips() {
        let hello = sample_hello();
        let buf = encode(&ControlMessage::Hello(hello.clone()));
        let ControlMessage::Hello(back) = ControlMessage::parse(&buf).unwrap() else {
            panic!("not a hello")
        };
        assert_eq!(back.function, hello.function);
        assert_eq!(back.function_id, 7);
        assert_eq!(back.worker_index, 3);
        assert!(
            matches!(back.wait, WaitPolicy::Yield { spin } if spin == Duration::from_micros(50))
        );
        assert_eq!(back.channel.ring_slots, 64);
        assert_eq!(back.channel.slot_size, 256);
        assert_eq!(back.channel.arena_bytes, 4096);
        assert_eq!(back.functions, hello.functions);
    }

    #[test]
    fn every_wait_policy_round_trips() {
        for wait in [
            WaitPolicy::Spin,
            WaitPolicy::Park {
                spin: Duration::ZERO,
            },
            WaitPolicy::Park {
                spin: Duration::from_nanos(1234),
            },
        ] {
            let (tag, ns) = wait_to_wire(&wait);
            let back = wait_from_wire(tag, ns).unwrap();
            assert_eq!(wait_to_wire(&back), (tag, ns));
        }
        assert_eq!(
            wait_from_wire(9, 0).unwrap_err(),
            ParseError::BadWaitPolicy(9)
        );
    }

    #[test]
    fn ready_and_refused_round_trip() {
        let ready = Ready {
            pid: 4242,
            function_id: 1,
            worker_index: 0,
        };
        let buf = encode(&ControlMessage::Ready(ready));
        assert!(
            matches!(ControlMessage::parse(&buf).unwrap(), ControlMessage::Ready(r) if r == ready)
        );

        let buf = encode(&ControlMessage::Refused {
            reason: "no such function".into(),
        });
        assert!(matches!(ControlMessage::parse(&buf).unwrap(),
            ControlMessage::Refused { reason } if reason == "no such function"));
    }

    #[test]
    fn long_reason_is_cut_at_a_char_boundary() {
        let reason = "é".repeat(MAX_REASON_LEN); // 2 bytes each
        let buf = encode(&ControlMessage::Refused { reason });
        let ControlMessage::Refused { reason } = ControlMessage::parse(&buf).unwrap() else {
            panic!()
        };
        assert!(reason.len() <= MAX_REASON_LEN);
        assert!(reason.chars().all(|c| c == 'é'));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let buf = encode(&ControlMessage::Hello(sample_hello()));
        for len in 0..buf.len() {
            assert!(
                ControlMessage::parse(&buf[..len]).is_err(),
                "prefix of {len} bytes parsed"
            );
        }
    }

    #[test]
    fn truncation_with_a_consistent_length_field_is_truncated() {
        let mut buf = encode(&ControlMessage::Ready(Ready {
            pid: 1,
            function_id: 2,
            worker_index: 3,
        }));
        buf.truncate(buf.len() - 2);
        let body = (buf.len() - HEADER_LEN) as u32;
        buf[8..12].copy_from_slice(&body.to_le_bytes());
        assert!(matches!(
            ControlMessage::parse(&buf),
            Err(ParseError::Truncated { .. })
        ));
    }

    #[test]
    fn header_fields_are_checked() {
        let good = encode(&ControlMessage::Ready(Ready {
            pid: 1,
            function_id: 2,
            worker_index: 3,
        }));

        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(matches!(
            ControlMessage::parse(&bad),
            Err(ParseError::BadMagic(_))
        ));

        let mut bad = good.clone();
        bad[4..6].copy_from_slice(&1u16.to_le_bytes());
        assert_eq!(
            ControlMessage::parse(&bad).unwrap_err(),
            ParseError::Version { got: 1 }
        );

        let mut bad = good.clone();
        bad[6..8].copy_from_slice(&99u16.to_le_bytes());
        assert_eq!(
            ControlMessage::parse(&bad).unwrap_err(),
            ParseError::UnknownKind(99)
        );

        let mut bad = good.clone();
        bad[8..12].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(
            ControlMessage::parse(&bad),
            Err(ParseError::BodyLength { declared: 1000, .. })
        ));

        let mut bad = good.clone();
        bad.push(0);
        let body = (bad.len() - HEADER_LEN) as u32;
        bad[8..12].copy_from_slice(&body.to_le_bytes());
        assert_eq!(
            ControlMessage::parse(&bad).unwrap_err(),
            ParseError::TrailingBytes(1)
        );

        let huge = vec![0u8; MAX_MESSAGE_LEN + 1];
        assert!(matches!(
            ControlMessage::parse(&huge),
            Err(ParseError::TooLarge { .. })
        ));
    }

    /// Builds a hello by hand with a hostile function table.
    fn hello_with_table(count: u32, entries: &[(u32, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        let mut w = Writer { out: &mut body };
        w.u32(1);
        w.u32(0);
        w.u8(2);
        w.u64(0);
        w.u32(64);
        w.u32(256);
        w.u32(0);
        w.u8(NO_WAKE_SLOT);
        w.str("foo");
        w.u32(count);
        for (id, name) in entries {
            w.u32(*id);
            w.u16(name.len() as u16);
            w.out.extend_from_slice(name);
        }
        let mut buf = Vec::new();
        buf.extend_from_slice(&MAGIC);
        buf.extend_from_slice(&VERSION.to_le_bytes());
        buf.extend_from_slice(&1u16.to_le_bytes());
        buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
        buf.extend_from_slice(&body);
        buf
    }

    #[test]
    fn hostile_function_tables_are_refused() {
        // A count far beyond the bytes present must not allocate or loop long.
        let buf = hello_with_table(u32::MAX, &[]);
        assert!(matches!(
            ControlMessage::parse(&buf),
            Err(ParseError::Truncated { .. })
        ));

        let buf = hello_with_table(1, &[(1, b"\xff\xfe")]);
        assert_eq!(
            ControlMessage::parse(&buf).unwrap_err(),
            ParseError::BadString {
                what: "function table"
            }
        );

        let buf = hello_with_table(2, &[(1, b""), (2, b"bar")]);
        assert_eq!(
            ControlMessage::parse(&buf).unwrap_err(),
            ParseError::BadString {
                what: "function table"
            }
        );

        let buf = hello_with_table(2, &[(1, b"bar"), (2, b"bar")]);
        assert_eq!(
            ControlMessage::parse(&buf).unwrap_err(),
            ParseError::DuplicateFunction("bar".into())
        );

        let buf = hello_with_table(1, &[(5, b"bar")]);
        let ControlMessage::Hello(hello) = ControlMessage::parse(&buf).unwrap() else {
            panic!()
        };
        assert_eq!(hello.functions, vec![("bar".to_string(), 5)]);
    }

    #[test]
    fn bad_names_are_not_emitted() {
        let mut hello = sample_hello();
        hello.function = String::new();
        let mut buf = vec![1, 2, 3];
        assert!(matches!(
            ControlMessage::Hello(hello).emit(&mut buf),
            Err(EmitError::BadName { .. })
        ));
        assert_eq!(buf, [1, 2, 3], "a failed emit leaves the buffer as it was");

        let mut hello = sample_hello();
        hello.functions.push(("x".repeat(MAX_NAME_LEN + 1), 1));
        assert!(matches!(
            ControlMessage::Hello(hello).emit(&mut Vec::new()),
            Err(EmitError::BadName { .. })
        ));

        let mut hello = sample_hello();
        hello.functions = (0..20_000).map(|i| (format!("function-{i}"), i)).collect();
        assert!(matches!(
            ControlMessage::Hello(hello).emit(&mut Vec::new()),
            Err(EmitError::TooLarge { .. })
        ));
    }

    #[test]
    fn unknown_kinds_keep_their_raw_value() {
        assert_eq!(MessageKind::from(77), MessageKind::Unknown(77));
        for kind in [
            MessageKind::Hello,
            MessageKind::Ready,
            MessageKind::Refused,
            MessageKind::Unknown(9),
        ] {
            assert_eq!(MessageKind::from(u16::from(kind)), kind);
        }
    }

    // --- the handshake over a real socketpair and a real memfd channel ---

    use nocturne_ipc::channel::EngineEnd;
    use nocturne_ipc::message::{Header, Kind};
    use std::os::fd::AsFd;

    fn eventfd() -> OwnedFd {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new fd we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(fd >= 0, "eventfd: {}", io::Error::last_os_error());
        // SAFETY: fd was just created and is owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    fn engine_hello(function: &str) -> Hello {
        Hello {
            function: function.into(),
            functions: vec![(function.into(), 7), ("bar".into(), 8)],
            wake_slot: None,
            ..sample_hello()
        }
    }

    /// The engine's half of a handshake up to the hello: a control socket
    /// pair, the engine end of `hello`'s channel with its eventfd, and
    /// `hello` sent with the region and the eventfd. Returns the engine's
    /// socket, the worker's, the engine end and the eventfd (kept open for
    /// the test's length: the end signals through it).
    fn engine_sends_hello(hello: &Hello) -> (UnixStream, UnixStream, EngineEnd, OwnedFd) {
        engine_sends_hello_with(hello, None)
    }

    /// [`engine_sends_hello`], with `board` as the hello's third fd.
    fn engine_sends_hello_with(
        hello: &Hello,
        board: Option<BorrowedFd<'_>>,
    ) -> (UnixStream, UnixStream, EngineEnd, OwnedFd) {
        let (engine_sock, worker_sock) = control_socketpair().unwrap();
        let efd = eventfd();
        let end =
            EngineEnd::create_with_eventfd(&hello.channel, "control-test", efd.as_fd()).unwrap();
        let mut fds = vec![end.region_fd(), efd.as_fd()];
        fds.extend(board);
        send(&engine_sock, &ControlMessage::Hello(hello.clone()), &fds).unwrap();
        (engine_sock, worker_sock, end, efd)
    }

    #[test]
    fn handshake_attaches_the_channel() {
        let hello = engine_hello("foo");
        let (engine_sock, worker_sock, end, _efd) = engine_sends_hello(&hello);

        let boot = connect(worker_sock, "foo").unwrap();
        assert_eq!(boot.function, "foo");
        assert_eq!(boot.function_id, 7);
        assert_eq!(boot.worker_index, 3);
        assert_eq!(boot.functions, hello.functions);

        let (msg, fds) = recv(&engine_sock, 0).unwrap().unwrap();
        assert!(fds.is_empty());
        let ControlMessage::Ready(ready) = msg else {
            panic!("expected ready, got {msg:?}")
        };
        assert_eq!(
            ready,
            Ready {
                pid: std::process::id(),
                function_id: 7,
                worker_index: 3
            }
        );

        // The attached channel is the engine's: a request crosses it.
        let (mut tx, _rx) = end.split();
        let (_wtx, mut wrx) = boot.end.split();
        let header = Header {
            kind: Kind::Invoke,
            function_id: 7,
            call_id: 1,
            ..Header::default()
        };
        tx.try_send(&header, b"ping").unwrap();
        let view = wrx.try_recv().unwrap().expect("request arrived");
        assert_eq!(view.payload(), b"ping");
    }

    #[test]
    fn a_hello_with_a_wake_slot_seats_the_worker_on_the_engines_board() {
        let hello = Hello {
            wake_slot: Some(Slot::new(9).unwrap()),
            ..engine_hello("foo")
        };
        let board = SharedWakeBoard::create("control-test-board").unwrap();
        let (_engine_sock, worker_sock, _end, _efd) =
            engine_sends_hello_with(&hello, Some(board.fd()));
        let boot = connect(worker_sock, "foo").unwrap();
        let (_tx, rx) = boot.end.split();
        let seat = rx.seat().expect("the receiver is seated").clone();
        assert_eq!(seat.slot().index(), 9);
        // The same board: the worker's polling shows on the engine's side,
        // and the engine's delegation to it is the worker's to serve.
        let poller = Slot::new(9).unwrap();
        let sleeper = Slot::new(2).unwrap();
        seat.board().enter_poll(poller);
        assert!(board.board().others_polling(sleeper));
        assert_eq!(
            board.board().delegate(sleeper),
            nocturne_ipc::wake_board::Delegation::Delegated
        );
        assert_eq!(seat.board().leave_poll(poller), 1);
        assert!(!board.board().others_polling(sleeper));
    }

    #[test]
    fn a_hello_announcing_a_wake_slot_without_the_board_is_refused() {
        let hello = Hello {
            wake_slot: Some(Slot::new(1).unwrap()),
            ..engine_hello("foo")
        };
        let (engine_sock, worker_sock, _end, _efd) = engine_sends_hello(&hello);
        let err = connect(worker_sock, "foo").err().expect("must refuse");
        assert!(
            matches!(
                err,
                ControlError::MissingFds {
                    got: 2,
                    expected: 3
                }
            ),
            "{err}"
        );
        let (msg, _) = recv(&engine_sock, 0).unwrap().unwrap();
        let ControlMessage::Refused { reason } = msg else {
            panic!("expected refused, got {msg:?}")
        };
        assert_eq!(reason, "the hello carried 2 file descriptors, expected 3");
    }

    #[test]
    fn a_wake_board_that_is_not_one_is_refused() {
        let hello = Hello {
            wake_slot: Some(Slot::new(1).unwrap()),
            ..engine_hello("foo")
        };
        // An eventfd where the board's memfd belongs.
        let not_a_board = eventfd();
        let (engine_sock, worker_sock, _end, _efd) =
            engine_sends_hello_with(&hello, Some(not_a_board.as_fd()));
        let err = connect(worker_sock, "foo").err().expect("must refuse");
        assert!(matches!(err, ControlError::WakeBoard(_)), "{err}");
        let (msg, _) = recv(&engine_sock, 0).unwrap().unwrap();
        assert!(
            matches!(&msg, ControlMessage::Refused { reason } if reason.starts_with("cannot attach the wake board")),
            "{msg:?}"
        );
    }

    #[test]
    fn a_pending_handshake_can_be_refused_after_a_valid_hello() {
        let hello = engine_hello("foo");
        let (engine_sock, worker_sock, _end, _efd) = engine_sends_hello(&hello);

        let pending = receive_hello(worker_sock, "foo").unwrap();
        assert_eq!(pending.hello(), &hello);
        // Nothing is answered until the worker decides.
        engine_sock.set_nonblocking(true).unwrap();
        let nothing = recv(&engine_sock, 0).expect_err("no answer yet");
        assert!(
            matches!(&nothing, RecvControlError::Io(e) if e.kind() == io::ErrorKind::WouldBlock)
        );
        engine_sock.set_nonblocking(false).unwrap();

        pending.refuse("no handler for foo here").unwrap();
        let (msg, _) = recv(&engine_sock, 0).unwrap().unwrap();
        assert_eq!(
            msg,
            ControlMessage::Refused {
                reason: "no handler for foo here".into()
            }
        );
        // The refusing worker's end is closed: the engine reads EOF next.
        assert!(recv(&engine_sock, 0).unwrap().is_none());
    }

    #[test]
    fn wrong_function_is_refused_with_a_reason() {
        let hello = engine_hello("foo");
        let (engine_sock, worker_sock, _end, _efd) = engine_sends_hello(&hello);

        let err = connect(worker_sock, "bar").err().expect("must refuse");
        assert!(
            matches!(&err, ControlError::FunctionMismatch { env, engine } if env == "bar" && engine == "foo")
        );
        let (msg, _) = recv(&engine_sock, 0).unwrap().unwrap();
        let ControlMessage::Refused { reason } = msg else {
            panic!("expected refused, got {msg:?}")
        };
        assert!(reason.contains("\"foo\""), "{reason}");
    }

    #[test]
    fn hello_without_fds_is_refused() {
        let (engine_sock, worker_sock) = control_socketpair().unwrap();
        send(
            &engine_sock,
            &ControlMessage::Hello(engine_hello("foo")),
            &[],
        )
        .unwrap();
        let err = connect(worker_sock, "foo").err().expect("must refuse");
        assert!(
            matches!(
                err,
                ControlError::MissingFds {
                    got: 0,
                    expected: 2
                }
            ),
            "{err}"
        );
        assert!(matches!(
            recv(&engine_sock, 0).unwrap(),
            Some((ControlMessage::Refused { .. }, _))
        ));
    }

    #[test]
    fn inconsistent_table_is_refused() {
        let (engine_sock, worker_sock) = control_socketpair().unwrap();
        let mut hello = engine_hello("foo");
        hello.functions[0].1 = 99;
        send(&engine_sock, &ControlMessage::Hello(hello), &[]).unwrap();
        let err = connect(worker_sock, "foo").err().expect("must refuse");
        assert!(
            matches!(
                err,
                ControlError::TableMismatch {
                    table: 99,
                    hello: 7,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn garbage_and_eof_are_typed_errors() {
        let (engine_sock, worker_sock) = control_socketpair().unwrap();
        fdpass::send_with_fds(&engine_sock, b"GET / HTTP/1.1\r\n\r\n", &[]).unwrap();
        let err = connect(worker_sock, "foo").err().expect("must refuse");
        assert!(
            matches!(err, ControlError::Parse(ParseError::BadMagic(_))),
            "{err}"
        );

        let (engine_sock, worker_sock) = control_socketpair().unwrap();
        drop(engine_sock);
        let err = connect(worker_sock, "foo").err().expect("must fail");
        assert!(matches!(err, ControlError::EngineGone), "{err}");

        let (engine_sock, worker_sock) = control_socketpair().unwrap();
        send(
            &engine_sock,
            &ControlMessage::Ready(Ready {
                pid: 1,
                function_id: 1,
                worker_index: 1,
            }),
            &[],
        )
        .unwrap();
        let err = connect(worker_sock, "foo").err().expect("must refuse");
        assert!(
            matches!(err, ControlError::Unexpected(MessageKind::Ready)),
            "{err}"
        );
    }

    #[test]
    fn oversize_datagram_is_too_large() {
        let (a, b) = control_socketpair().unwrap();
        let big = vec![0u8; MAX_MESSAGE_LEN + 100];
        fdpass::send_with_fds(&a, &big, &[]).unwrap();
        let err = recv(&b, 0).expect_err("must fail");
        assert!(
            matches!(err, RecvControlError::Parse(ParseError::TooLarge { .. })),
            "{err}"
        );
    }

    #[test]
    fn recv_times_out_as_a_timeout() {
        let (_a, b) = control_socketpair().unwrap();
        b.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
        let err = recv(&b, 0).expect_err("nothing was sent");
        assert!(err.is_timeout(), "{err}");
    }

    #[test]
    fn env_without_control_fd_is_not_started() {
        // The test process is not a worker; nothing sets the variable.
        if std::env::var_os(CONTROL_FD_ENV).is_none() {
            assert!(matches!(connect_from_env(), Err(ControlError::NotStarted)));
        }
    }
}
