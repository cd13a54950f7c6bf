//! A userspace link impairer: forwards Ethernet frames between two
//! endpoints (a TAP queue or a packet socket on an interface) and drops,
//! delays, reorders and duplicates them with a seeded generator.
//!
//! It exists because the test kernel has no `sch_netem` (`tc qdisc add dev
//! lo root netem delay 1ms` answers "Specified qdisc kind is unknown"), so
//! the smoltcp transport's behaviour on a bad link cannot be tested with
//! `tc`. Depends on `std`, `libc` and the TAP attach, interface index,
//! socket option and packet-socket bind of `nocturne_net::smoltcp` (hidden
//! re-exports for this file);
//! `net/tests/smoltcp_netem.rs` and `net/examples/netem_relay.rs` include
//! it with `#[path]`.
//!
//! The usual wiring (two namespaces, so that no kernel stack short-cuts the
//! relay):
//!
//! ```text
//!  namespace C: kernel TCP ── TAP "nck0" (192.0.2.1/24) ══ relay fd A
//!  namespace S: smoltcp ──── TAP "nct0" (no address)  ══ relay packet socket B
//! ```
//!
//! The relay holds the client TAP's only queue (the kernel's frames to
//! 192.0.2.2 arrive on it, and what it writes there the kernel receives),
//! and a packet socket on the server TAP: what smoltcp writes into its TAP
//! the kernel of namespace S receives on `nct0` and the packet socket sees;
//! what the relay sends on the packet socket the TAP hands to smoltcp.
//! Namespace S has no address on `nct0`, so its own kernel stack drops the
//! frames it sees there.
#![allow(dead_code)] // the test and the example use different parts
#![allow(unsafe_code)] // TUNSETIFF, packet sockets, poll(2)

use std::collections::BinaryHeap;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nocturne_net::smoltcp;

/// Not in every `libc` release; stable kernel ABI (linux/if_packet.h).
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
/// Largest frame forwarded (MTU 1500 + Ethernet header, with room to spare;
/// neither TAP hands out GSO super-frames without `IFF_VNET_HDR`).
const FRAME_MAX: usize = 9216;
/// Frames read from one side per loop turn before looking at the other.
const READ_BURST: usize = 64;
/// Longest sleep of the relay thread (how soon it notices `stop`).
const IDLE_WAIT_MS: i32 = 5;

/// What happens to frames going one way.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Impairment {
    /// Probability that a frame is dropped.
    pub loss: f64,
    /// Probability that a frame is sent twice (the copy right after it).
    pub duplicate: f64,
    /// Probability that a frame is held back by `reorder_by`, so that the
    /// frames behind it overtake it.
    pub reorder: f64,
    /// How long a reordered frame is held back.
    pub reorder_by: Duration,
    /// Every frame waits this long.
    pub delay: Duration,
    /// Plus a uniform random extra in `[0, jitter]` (frames may then pass
    /// each other, as with netem's jitter).
    pub jitter: Duration,
}

impl Impairment {
    /// A clean link.
    pub const NONE: Self = Self {
        loss: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
        reorder_by: Duration::ZERO,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
    };

    pub fn loss(p: f64) -> Self {
        Self {
            loss: p,
            ..Self::NONE
        }
    }

    pub fn duplicate(p: f64) -> Self {
        Self {
            duplicate: p,
            ..Self::NONE
        }
    }

    pub fn reorder(p: f64, by: Duration) -> Self {
        Self {
            reorder: p,
            reorder_by: by,
            ..Self::NONE
        }
    }

    pub fn delay(delay: Duration, jitter: Duration) -> Self {
        Self {
            delay,
            jitter,
            ..Self::NONE
        }
    }

    fn is_clean(&self) -> bool {
        *self == Self::NONE
    }
}

/// Counters of one direction.
#[derive(Debug, Default)]
pub struct DirectionStats {
    pub received: AtomicU64,
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
    pub duplicated: AtomicU64,
    pub reordered: AtomicU64,
    /// Frames the far side refused (queue full): lost like a real drop.
    pub write_errors: AtomicU64,
}

/// A snapshot of [`DirectionStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub received: u64,
    pub forwarded: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub write_errors: u64,
}

impl DirectionStats {
    pub fn counts(&self) -> Counts {
        // Counters only: no ordering with other memory is needed.
        Counts {
            received: self.received.load(Ordering::Relaxed),
            forwarded: self.forwarded.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            duplicated: self.duplicated.load(Ordering::Relaxed),
            reordered: self.reordered.load(Ordering::Relaxed),
            write_errors: self.write_errors.load(Ordering::Relaxed),
        }
    }
}

/// Both directions' counters: `a_to_b` and `b_to_a`.
#[derive(Debug, Default)]
pub struct RelayStats {
    pub a_to_b: DirectionStats,
    pub b_to_a: DirectionStats,
}

/// One side of the relay.
pub enum Endpoint {
    /// A TAP queue: `read` gets what the kernel sends into the TAP,
    /// `write` hands a frame to the kernel.
    Tap(OwnedFd),
    /// A packet socket bound to an interface: `recv` gets frames the
    /// interface receives, `send` transmits on it.
    Packet(OwnedFd),
}

impl Endpoint {
    /// Attaches to (or creates) the TAP `name` in the calling thread's
    /// network namespace. The TAP must not be attached elsewhere.
    pub fn tap(name: &str) -> io::Result<Self> {
        // One attempt in single-queue mode, as the TAP must not be shared.
        let (fd, _name) = smoltcp::attach_tap_queue(name, false)?;
        Ok(Self::Tap(fd))
    }

    /// A packet socket on the interface `name` (in the calling thread's
    /// namespace) that ignores the frames sent on it, its own included.
    pub fn packet(name: &str) -> io::Result<Self> {
        let index = smoltcp::interface_index(name)?;
        // Protocol 0 until bind(): nothing from other interfaces is queued.
        // SAFETY: plain socket(2); the result is checked and owned below.
        let fd = cvt(unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        })?;
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Without it the socket would read back every frame it sends (and
        // forward it again).
        smoltcp::set_int_option(&fd, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)?;
        // Room for bursts (the default ~200 KiB holds ~100 frames).
        let _ = smoltcp::set_int_option(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20);
        let _ = smoltcp::set_int_option(&fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 4 << 20);
        smoltcp::bind_packet_socket(&fd, index)?;
        Ok(Self::Packet(fd))
    }

    fn fd(&self) -> &OwnedFd {
        match self {
            Self::Tap(fd) | Self::Packet(fd) => fd,
        }
    }

    /// One frame into `buf`; `Ok(None)` when none is waiting.
    fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let fd = self.fd().as_raw_fd();
        // SAFETY: buf is valid for writes of buf.len() bytes; read(2) and
        // recv(2) write at most that many.
        let n = unsafe {
            match self {
                Self::Tap(_) => libc::read(fd, buf.as_mut_ptr().cast(), buf.len()),
                Self::Packet(_) => {
                    libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_TRUNC)
                }
            }
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        // A truncated frame (over FRAME_MAX) is not forwarded: reported
        // as an empty one, which the caller counts as dropped.
        let n = n as usize;
        Ok(Some(if n > buf.len() { 0 } else { n }))
    }

    /// Sends one frame out of this endpoint; whether it was taken.
    pub fn send(&self, frame: &[u8]) -> bool {
        let fd = self.fd().as_raw_fd();
        // SAFETY: frame is valid for reads of frame.len() bytes.
        let n = unsafe {
            match self {
                Self::Tap(_) => libc::write(fd, frame.as_ptr().cast(), frame.len()),
                Self::Packet(_) => libc::send(fd, frame.as_ptr().cast(), frame.len(), 0),
            }
        };
        n == frame.len() as isize
    }
}

/// splitmix64: small, seedable, good enough for drop decisions.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }
}

/// Waits (at most `patience`) until the interface `name` in the calling
/// thread's namespace is `RUNNING`: a TAP whose first queue was just
/// attached drops every frame until a deferred link-watch event (up to a
/// second later) activates its queue.
pub fn wait_running(name: &str, patience: Duration) -> io::Result<()> {
    // SAFETY: plain socket(2); the result is checked and owned below.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let deadline = Instant::now() + patience;
    loop {
        let mut req = ifreq_for(name)?;
        // SAFETY: SIOCGIFFLAGS writes the flags into the ifreq, which
        // outlives the call.
        cvt(unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                libc::SIOCGIFFLAGS,
                &mut req as *mut libc::ifreq,
            )
        })?;
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        let flags = libc::c_int::from(unsafe { req.ifr_ifru.ifru_flags });
        if flags & libc::IFF_RUNNING != 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{name} is not RUNNING after {patience:?}"),
            ));
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// Settings of a relay: impairments per direction and the generator seed
/// (the same seed and the same frame sequence give the same decisions).
#[derive(Clone, Copy, Debug)]
pub struct RelayConfig {
    pub seed: u64,
    /// Frames read from A, written to B.
    pub a_to_b: Impairment,
    /// Frames read from B, written to A.
    pub b_to_a: Impairment,
}

impl RelayConfig {
    /// The same impairment both ways.
    pub fn symmetric(seed: u64, imp: Impairment) -> Self {
        Self {
            seed,
            a_to_b: imp,
            b_to_a: imp,
        }
    }
}

/// A frame waiting for its release time; the heap pops the earliest
/// (ties in arrival order).
struct Held {
    at: Instant,
    order: u64,
    to_b: bool,
    frame: Vec<u8>,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Reversed: BinaryHeap is a max-heap.
        (other.at, other.order).cmp(&(self.at, self.order))
    }
}

/// A running relay thread; dropping it stops the thread and closes both
/// endpoints.
pub struct Relay {
    stop: Arc<AtomicBool>,
    clean: Arc<AtomicBool>,
    stats: Arc<RelayStats>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Relay {
    pub fn start(a: Endpoint, b: Endpoint, config: RelayConfig) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let clean = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(RelayStats::default());
        let (stop2, clean2, stats2) = (stop.clone(), clean.clone(), stats.clone());
        let thread = thread::Builder::new()
            .name("impair-relay".into())
            .spawn(move || run(a, b, config, &stop2, &clean2, &stats2))
            .expect("spawn the relay thread");
        Self {
            stop,
            clean,
            stats,
            thread: Some(thread),
        }
    }

    /// From now on every frame is forwarded at once, unimpaired (frames
    /// already held back still leave when due).
    pub fn heal(&self) {
        self.clean.store(true, Ordering::Release);
    }

    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }

    /// Runs until `stop` is set: the example's foreground loop.
    pub fn run_here(
        a: Endpoint,
        b: Endpoint,
        config: RelayConfig,
        stop: &AtomicBool,
    ) -> RelayStats {
        let stats = RelayStats::default();
        run(a, b, config, stop, &AtomicBool::new(false), &stats);
        stats
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Release: the thread sees the flag at its next wake-up.
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(
    a: Endpoint,
    b: Endpoint,
    config: RelayConfig,
    stop: &AtomicBool,
    clean: &AtomicBool,
    stats: &RelayStats,
) {
    let mut rng = Rng::new(config.seed);
    let mut held: BinaryHeap<Held> = BinaryHeap::new();
    let mut order = 0u64;
    let mut buf = vec![0u8; FRAME_MAX];
    while !stop.load(Ordering::Acquire) {
        // Sleep until a side has frames or the next held frame is due.
        let now = Instant::now();
        let wait_ms = held.peek().map_or(IDLE_WAIT_MS, |h| {
            let due = h.at.saturating_duration_since(now);
            // Round up: waking early only spins one more turn.
            (due.as_micros().div_ceil(1000) as i32).min(IDLE_WAIT_MS)
        });
        let mut fds = [
            libc::pollfd {
                fd: a.fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: b.fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: fds is a valid array of two pollfds for the call.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, wait_ms) };
        for to_b in [true, false] {
            let (from, to, imp, st) = if to_b {
                (&a, &b, &config.a_to_b, &stats.a_to_b)
            } else {
                (&b, &a, &config.b_to_a, &stats.b_to_a)
            };
            for _ in 0..READ_BURST {
                let n = match from.recv(&mut buf) {
                    Ok(Some(n)) => n,
                    Ok(None) => break,
                    // The interface went away (namespace deleted): stop.
                    Err(_) => return,
                };
                // Counters only (Relaxed): read by others for reports.
                st.received.fetch_add(1, Ordering::Relaxed);
                if n == 0 {
                    st.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let frame = &buf[..n];
                if imp.is_clean() || clean.load(Ordering::Acquire) {
                    forward(to, frame, st);
                    continue;
                }
                if rng.chance(imp.loss) {
                    st.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let copies = if rng.chance(imp.duplicate) {
                    st.duplicated.fetch_add(1, Ordering::Relaxed);
                    2
                } else {
                    1
                };
                let mut extra = imp.delay;
                if !imp.jitter.is_zero() {
                    extra += imp.jitter.mul_f64(rng.unit());
                }
                if rng.chance(imp.reorder) {
                    st.reordered.fetch_add(1, Ordering::Relaxed);
                    extra += imp.reorder_by;
                }
                for _ in 0..copies {
                    if extra.is_zero() && held.is_empty() {
                        forward(to, frame, st);
                    } else {
                        order += 1;
                        held.push(Held {
                            at: Instant::now() + extra,
                            order,
                            to_b,
                            frame: frame.to_vec(),
                        });
                    }
                }
            }
        }
        let now = Instant::now();
        while held.peek().is_some_and(|h| h.at <= now) {
            let h = held.pop().expect("peeked");
            let (to, st) = if h.to_b {
                (&b, &stats.a_to_b)
            } else {
                (&a, &stats.b_to_a)
            };
            forward(to, &h.frame, st);
        }
    }
}

fn forward(to: &Endpoint, frame: &[u8], st: &DirectionStats) {
    if to.send(frame) {
        st.forwarded.fetch_add(1, Ordering::Relaxed);
    } else {
        st.write_errors.fetch_add(1, Ordering::Relaxed);
    }
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn ifreq_for(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    // SAFETY: ifreq is plain old data; all zeroes is valid.
    let mut req: libc::ifreq = unsafe { mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}
