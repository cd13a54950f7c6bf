//! Proof that a blocking case's peer slept before every message.
//!
//! The driver must not send until the peer thread has left the CPU to
//! sleep, or the message is measured against a thread that is still
//! running. Both sides watch the same counter, the peer thread's voluntary
//! context switches (one each time it blocks in the kernel):
//!
//! * the peer ([`ParkCounter`]) reads its count (`getrusage`) after every
//!   reply — off the timed path, the reply is already on its way — and
//!   publishes it with the number of messages done on the [`ParkBoard`], a
//!   page of shared memory with one slot per case;
//! * the driver ([`SleepProbe`]) waits for that record, then until the
//!   count in `/proc/PID/task/TID/status` has moved past it: the first
//!   block after a reply is the wait for the next message, so the peer is
//!   asleep (or was woken spuriously and went back to sleep). Only then does
//!   it take its timestamp and send.
//!
//! The peer also counts the messages whose window saw a switch; that is
//! `parks_per_msg` in the report, 1.0 when every message found it asleep.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nocturne_ipc::region::{MemfdRegion, Region, RegionError};

use super::guard::{Spinner, Stop};
use super::sys::voluntary_switches;
use super::CaseError;

/// Bytes per board slot (a cache line: cases don't share lines).
const SLOT_BYTES: usize = 64;

/// How long [`SleepProbe::wait_asleep`] waits for the peer to block before
/// letting the message go anyway (the peer's own count then shows the miss):
/// long enough for a peer preempted on a busy machine to get back.
const PATIENCE: Duration = Duration::from_secs(1);
/// The patience left once a case's peer failed to block: the case already
/// reports the miss, so the rest of the run should not crawl.
const SPENT_PATIENCE: Duration = Duration::from_millis(1);

/// One case's record: messages done, and the switch count after the last.
#[repr(C)]
struct Slot {
    done: AtomicU64,
    switches: AtomicU64,
}

/// The shared page of per-case records (a sealed memfd).
pub struct ParkBoard {
    region: MemfdRegion,
}

impl ParkBoard {
    /// Creates a zeroed board for `cases` cases (the driver's side).
    pub fn create(cases: usize) -> Result<Self, RegionError> {
        let region = MemfdRegion::create("nocturne-bench-parks", cases.max(1) * SLOT_BYTES)?;
        region.seal()?;
        Ok(Self { region })
    }

    /// Maps a board received from the driver (the peer's side).
    pub fn attach(fd: OwnedFd) -> Result<Self, RegionError> {
        Ok(Self {
            region: MemfdRegion::attach(fd)?,
        })
    }

    /// The memfd, to hand to the peer.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.region.fd()
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.region.len() / SLOT_BYTES
    }

    fn slot(&self, index: usize) -> Option<&Slot> {
        (index < self.slots()).then(|| {
            // SAFETY: the slot lies inside the region (index checked), is
            // 64-aligned (page-aligned base), and holds two u64 atomics for
            // which any bit pattern, zero included, is valid; both processes
            // access them only atomically; the region lives as long as self.
            unsafe { &*self.region.base().add(index * SLOT_BYTES).cast::<Slot>() }
        })
    }
}

/// The peer's count of the messages it slept for, published per message.
pub struct ParkCounter {
    board: Arc<ParkBoard>,
    slot: usize,
    last: u64,
    done: u64,
    parks: u64,
}

/// A case index with no slot on the board.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("case {0} has no slot on the park board")]
pub struct NoSlot(pub usize);

impl ParkCounter {
    /// The counter of case `slot`.
    pub fn new(board: Arc<ParkBoard>, slot: usize) -> Result<Self, NoSlot> {
        board.slot(slot).ok_or(NoSlot(slot))?;
        Ok(Self {
            board,
            slot,
            last: 0,
            done: 0,
            parks: 0,
        })
    }

    fn publish(&self) {
        let slot = self.board.slot(self.slot).expect("checked in new");
        // Relaxed: published by the Release store of `done` below.
        slot.switches.store(self.last, Ordering::Relaxed);
        // Release: pairs with the driver's Acquire load of `done` in
        // `SleepProbe::wait_asleep`, which then reads `switches`.
        slot.done.store(self.done, Ordering::Release);
    }

    /// Call at the start of each chunk, before saying Ready: blocking on
    /// the control socket in between chunks is not a park.
    pub fn begin_chunk(&mut self) {
        self.last = voluntary_switches();
        self.parks = 0;
        self.publish();
    }

    /// Call after each reply is sent.
    #[inline]
    pub fn message_done(&mut self) {
        let now = voluntary_switches();
        if now > self.last {
            self.parks += 1;
        }
        self.last = now;
        self.done += 1;
        self.publish();
    }

    /// Messages of this chunk that found the thread asleep.
    pub fn parks(&self) -> u64 {
        self.parks
    }
}

/// What [`SleepProbe::read`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadStatus {
    /// The state letter (`R` running, `S` sleeping, `Z` zombie, …).
    pub state: u8,
    /// Voluntary context switches so far.
    pub voluntary_switches: u64,
}

/// The driver's view of one case's peer: its board slot and its thread's
/// `/proc` status.
pub struct SleepProbe {
    status: File,
    buf: Vec<u8>,
    board: Arc<ParkBoard>,
    slot: usize,
    /// Messages sent so far in this case.
    sent: u64,
    /// [`PATIENCE`], until the peer once failed to block.
    patience: Duration,
}

impl SleepProbe {
    /// Watches the main thread of process `pid` (the peer serves every
    /// case on it) and the board slot of case `slot`.
    pub fn open(pid: u32, board: Arc<ParkBoard>, slot: usize) -> io::Result<Self> {
        if board.slot(slot).is_none() {
            return Err(io::Error::other(NoSlot(slot)));
        }
        Ok(Self {
            status: File::open(format!("/proc/{pid}/task/{pid}/status"))?,
            buf: vec![0; 4096],
            board,
            slot,
            sent: 0,
            patience: PATIENCE,
        })
    }

    /// Reads the thread's state and switch count now.
    pub fn read(&mut self) -> io::Result<ThreadStatus> {
        let n = self.status.read_at(&mut self.buf, 0)?;
        parse_status(&self.buf[..n])
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable /proc status"))
    }

    fn read_alive(&mut self) -> Result<ThreadStatus, CaseError> {
        let status = self.read().map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH) => CaseError::PeerGone,
            _ => CaseError::Io(e),
        })?;
        if matches!(status.state, b'Z' | b'X') {
            return Err(CaseError::PeerGone);
        }
        Ok(status)
    }

    /// Waits until the peer has recorded the previous message and blocked
    /// since; call right before taking the timestamp of the next send.
    /// Gives up on the blocking after a second (a millisecond once that
    /// happened) without an error: the peer's own count then reports the
    /// message that found it awake. A dead peer is an error.
    pub fn wait_asleep(&mut self, stop: &Stop) -> Result<(), CaseError> {
        let slot = self.board.slot(self.slot).expect("checked in open");
        let mut spinner = Spinner::new();
        // Acquire: pairs with the Release store in `ParkCounter::publish`.
        while slot.done.load(Ordering::Acquire) != self.sent {
            spinner.spin(stop)?;
        }
        // Relaxed: published by the `done` store acquired above; the peer
        // writes it again only after our next message.
        let recorded = slot.switches.load(Ordering::Relaxed);
        let started = Instant::now();
        while self.read_alive()?.voluntary_switches <= recorded {
            if started.elapsed() >= self.patience {
                self.patience = SPENT_PATIENCE;
                break;
            }
            stop.check()?;
            std::hint::spin_loop();
        }
        self.sent += 1;
        Ok(())
    }
}

/// The `State:` letter and `voluntary_ctxt_switches:` of a `/proc/…/status`
/// file.
fn parse_status(text: &[u8]) -> Option<ThreadStatus> {
    let text = std::str::from_utf8(text).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
    };
    Some(ThreadStatus {
        state: *field("State:")?.as_bytes().first()?,
        voluntary_switches: field("voluntary_ctxt_switches:")?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status() {
        let text = b"Name:\tnocturne\nState:\tS (sleeping)\nTgid:\t42\n\
            voluntary_ctxt_switches:\t17\nnonvoluntary_ctxt_switches:\t3\n";
        assert_eq!(
            parse_status(text),
            Some(ThreadStatus {
                state: b'S',
                voluntary_switches: 17
            })
        );
        assert_eq!(parse_status(b"State:\tR (running)\n"), None);
        assert_eq!(parse_status(b"garbage"), None);
    }

    #[test]
    fn board_slots_cross_two_mappings_and_are_bounds_checked() {
        let driver = Arc::new(ParkBoard::create(3).unwrap());
        let peer = Arc::new(ParkBoard::attach(driver.fd().try_clone_to_owned().unwrap()).unwrap());
        assert_eq!(peer.slots(), 3);
        assert!(ParkCounter::new(Arc::clone(&peer), 3).is_err());
        assert!(SleepProbe::open(std::process::id(), Arc::clone(&driver), 3).is_err());
        let mut counter = ParkCounter::new(Arc::clone(&peer), 2).unwrap();
        counter.begin_chunk();
        // A message the thread slept for, then one it did not.
        std::thread::sleep(Duration::from_millis(1));
        counter.message_done();
        let slot = driver.slot(2).unwrap();
        assert_eq!(slot.done.load(Ordering::Acquire), 1);
        let after_sleep = slot.switches.load(Ordering::Relaxed);
        assert!(after_sleep > 0);
        counter.message_done();
        assert_eq!(slot.done.load(Ordering::Acquire), 2);
        assert_eq!(counter.parks(), 1);
        assert_eq!(driver.slot(0).unwrap().done.load(Ordering::Acquire), 0);
    }

    #[test]
    fn the_probe_waits_for_a_recorded_message_and_a_block() {
        // The "peer" is a thread of this process: the probe watches the
        // main thread, so record on the main thread of a child instead.
        let board = Arc::new(ParkBoard::create(1).unwrap());
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let mut probe = SleepProbe::open(child.id(), Arc::clone(&board), 0).unwrap();
        let stop = Stop::new();
        // Nothing recorded yet (done == sent == 0) and switches recorded as
        // 0: `sleep` blocks in nanosleep at once, so its count passes 0.
        probe.wait_asleep(&stop).unwrap();
        assert!(probe.read().unwrap().voluntary_switches > 0);
        // The next message needs done == 1: the peer never records it, so
        // only `stop` ends the wait.
        stop.set();
        assert!(matches!(probe.wait_asleep(&stop), Err(CaseError::Aborted)));
        // Recorded with a count the child never passes: patience, no error.
        let stop = Stop::new();
        let slot = board.slot(0).unwrap();
        slot.switches.store(u64::MAX, Ordering::Relaxed);
        slot.done.store(1, Ordering::Release);
        let t = Instant::now();
        probe.wait_asleep(&stop).unwrap();
        assert!(t.elapsed() >= PATIENCE);
        // After one miss the probe no longer waits long.
        assert_eq!(probe.patience, SPENT_PATIENCE);
        // A dead peer: zombie, then gone.
        child.kill().unwrap();
        let t = Instant::now();
        loop {
            slot.done.store(probe.sent, Ordering::Release);
            if matches!(probe.wait_asleep(&stop), Err(CaseError::PeerGone)) {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(10));
        }
        child.wait().unwrap();
        slot.done.store(probe.sent, Ordering::Release);
        assert!(matches!(probe.wait_asleep(&stop), Err(CaseError::PeerGone)));
    }
}
