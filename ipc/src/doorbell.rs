//! Doorbells: how a consumer sleeps when its ring is empty and how the
//! producer wakes it, without a system call on the fast path and without ever
//! losing a wake-up.
//!
//! Each ring has a shared 32-bit word, [`AWAKE`] or [`SLEEPING`]. The protocol
//! is Dekker's:
//!
//! * consumer: store `SLEEPING`; `fence(SeqCst)`; re-check the ring; only if
//!   it is still empty, park (`FUTEX_WAIT` while the word is `SLEEPING`, or
//!   wait on an eventfd);
//! * producer: publish the message; `fence(SeqCst)`; load the word; only if
//!   it is `SLEEPING`, swap it to `AWAKE` and, if the swap saw `SLEEPING`
//!   (one waker wins), wake (`FUTEX_WAKE`, or write the eventfd).
//!
//! The two fences are totally ordered, so either the consumer's re-check sees
//! the message, or the producer's load sees `SLEEPING` — both cannot miss.
//! `FUTEX_WAIT` sleeps only if the word is still `SLEEPING` (atomically in the
//! kernel), so a swap between the re-check and the sleep is not lost either.
//! The loom model (`loom_tests`) checks this with the shipped code.
//!
//! [`WaitPolicy`] adds the spin/yield budget in front of parking (docs/design.md §3:
//! spinning pays only when the peer has its own core).
#![allow(unsafe_code)]

use crate::contention::YieldContention;
use crate::sync::{self, fence, AtomicU32, Ordering};
use crate::wake_board::WakeSeat;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// The consumer is running (or about to check the ring): no wake needed.
pub const AWAKE: u32 = 0;
/// The consumer announced it is going to sleep: the producer must wake it.
pub const SLEEPING: u32 = 1;

/// How a consumer waits for its ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitPolicy {
    /// Spin with `spin_loop()` until a message arrives (the peer has its own
    /// core). Never parks.
    Spin,
    /// Shared core: `sched_yield()` for `spin` (polling for
    /// [`POLL_AFTER_YIELD`] each time the core comes back), then park.
    Yield {
        /// Yield budget before parking.
        spin: Duration,
    },
    /// Spin (`spin_loop()`) for `spin` (may be zero), then park.
    Park {
        /// Spin budget before parking.
        spin: Duration,
    },
}

/// Why [`crate::channel::Receiver::wait`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitOutcome {
    /// A message (or a protocol error, which `try_recv` reports) is there.
    Ready,
    /// The timeout passed first.
    TimedOut,
}

/// A ring's doorbell word in shared memory.
#[derive(Clone, Copy)]
pub(crate) struct Doorbell {
    word: *const AtomicU32,
}

// SAFETY: the word lives in shared memory kept alive by the owner of the
// Doorbell; all access is atomic.
unsafe impl Send for Doorbell {}

impl Doorbell {
    /// # Safety
    /// `word` points at an initialized atomic word that outlives the value.
    pub(crate) unsafe fn new(word: *const AtomicU32) -> Self {
        Self { word }
    }

    #[inline(always)]
    fn word(&self) -> &AtomicU32 {
        // SAFETY: `new`'s contract: an initialized, aligned AtomicU32 that
        // outlives `self`; a shared reference to an atomic permits the
        // peer's concurrent (atomic) accesses.
        unsafe { &*self.word }
    }

    /// Producer side, after publishing: true when the consumer announced
    /// sleep and this caller won the right to wake it.
    #[inline(always)]
    pub(crate) fn should_wake(&self) -> bool {
        // SeqCst fence pairs with the fence in `arm` (Dekker): either the
        // consumer's re-check sees our publication or we see its SLEEPING.
        fence(Ordering::SeqCst);
        // Relaxed: ordering comes from the fence; this is the fast path's only
        // access to the word.
        if self.word().load(Ordering::Relaxed) != SLEEPING {
            return false;
        }
        // AcqRel swap: only one waker per sleep; its Release pairs with the
        // consumer's Acquire swap in `after_park`, making our publication
        // visible to the consumer's re-check after it wakes.
        self.word().swap(AWAKE, Ordering::AcqRel) == SLEEPING
    }

    /// Consumer side: announce sleep. The caller must re-check the ring
    /// afterwards and park only if it is still empty.
    ///
    /// Every write to the word is an RMW (here and in `disarm`, and the
    /// producer's swap), so the word's history is one chain in which each
    /// write saw the previous one. That is free (these are all slow paths)
    /// and lets loom check the protocol: with plain stores its partial
    /// modification order lets the producer's post-fence load read a value
    /// the SC-fence rule forbids (see docs/ipc.md, "Loom and SeqCst fences").
    #[inline]
    pub(crate) fn arm(&self) {
        // Relaxed RMW, then the SeqCst fence that pairs with the producer's
        // fence in `should_wake`.
        self.word().swap(SLEEPING, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    /// Consumer side: withdraw the announcement (found work, or woke up).
    #[inline]
    pub(crate) fn disarm(&self) {
        // Relaxed: a stale SLEEPING only costs the producer a spare wake.
        self.word().swap(AWAKE, Ordering::Relaxed);
    }

    /// Consumer side, after parking returned.
    #[inline]
    fn after_park(&self) {
        // Acquire pairs with the producer's AcqRel swap in `should_wake`: if
        // it woke us, its message is visible to the re-check that follows.
        self.word().swap(AWAKE, Ordering::Acquire);
    }
}

/// How a producer rings (and a consumer sleeps on) a doorbell.
#[derive(Debug)]
pub(crate) enum Bell {
    /// `FUTEX_WAKE` / `FUTEX_WAIT` on the shared word.
    Futex,
    /// Write / wait on an eventfd (the consumer may instead epoll it).
    Eventfd(OwnedFd),
}

impl Bell {
    /// Wakes the consumer sleeping on `db` (the slow path: a system call).
    #[cold]
    #[inline(never)]
    pub(crate) fn ring(&self, db: &Doorbell) {
        match self {
            Bell::Futex => sync::futex_wake(db.word()),
            Bell::Eventfd(fd) => {
                let one: u64 = 1;
                // SAFETY: writes 8 bytes from a live u64 to a descriptor we own.
                // An error (EAGAIN: counter saturated) still leaves it readable,
                // which is all a wake needs.
                unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
            }
        }
    }

    /// Sleeps until woken (or `timeout`, or spuriously). The word must have
    /// been armed and the ring re-checked empty.
    fn park(&self, db: &Doorbell, timeout: Option<Duration>) {
        match self {
            Bell::Futex => sync::futex_wait(db.word(), SLEEPING, timeout),
            Bell::Eventfd(fd) => {
                let ms = match timeout {
                    None => -1,
                    Some(d) => d.as_millis().clamp(1, i32::MAX as u128) as i32,
                };
                let mut pfd = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one live pollfd for the call.
                let n = unsafe { libc::poll(&mut pfd, 1, ms) };
                if n > 0 && pfd.revents & libc::POLLIN != 0 {
                    let mut v: u64 = 0;
                    // SAFETY: reads 8 bytes into a live u64; the eventfd is
                    // readable, so this does not block (unless another thread
                    // drained it first, which the engine does not do).
                    unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
                }
            }
        }
    }
}

/// How long a yielding consumer keeps polling once a `sched_yield` has
/// given it the core back, before it yields again.
///
/// A hand-over between two processes on one core costs ≈ 1.5 µs, and the
/// message a yielding worker waits for is often already on its way through
/// the io core (posted ≈ 0.3–1 µs after the peer that caused it handed the
/// core over). Yielding again at once would pay two more hand-overs for it.
/// Measured on the 2-core VM (`foo`→`bar`, client and both workers on core
/// 0, io loop spinning on core 1): 500 ns, 1 µs and 1.5 µs each took the
/// chain's p50 from 33.1–33.8 to 31.6–32.0 µs, 2.5 µs made it 36 µs; echo
/// (one worker) unchanged at 14.4–14.7 (docs/benchmarks.md).
pub const POLL_AFTER_YIELD: Duration = Duration::from_nanos(500);

/// Polls `ready()` for [`POLL_AFTER_YIELD`]; true if it became ready.
fn poll_after_yield(ready: &mut impl FnMut() -> bool) -> bool {
    if cfg!(loom) {
        return false;
    }
    let start = Instant::now();
    let mut i = 0u32;
    loop {
        if ready() {
            return true;
        }
        sync::spin_loop();
        i = i.wrapping_add(1);
        // The clock costs ~20 ns a read; the check ~5.
        if i.is_multiple_of(8) && start.elapsed() >= POLL_AFTER_YIELD {
            return false;
        }
    }
}

/// A consumer's seat on a wake board, and whether it parks at once when
/// another consumer of the board polls ([`Receiver::park_beside_a_poller`](crate::channel::Receiver::park_beside_a_poller)).
pub(crate) struct Seated {
    pub(crate) seat: WakeSeat,
    pub(crate) park_beside_a_poller: bool,
}

/// A seated consumer's polling announcement on its board, withdrawn (and
/// the wakes delegated meanwhile served) when it goes out of scope.
struct Polling<'a>(&'a WakeSeat);

impl<'a> Polling<'a> {
    fn enter(seat: &'a WakeSeat) -> Self {
        seat.board().enter_poll(seat.slot());
        Self(seat)
    }

    #[inline]
    fn serve(&self) {
        self.0.board().serve();
    }
}

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        self.0.board().leave_poll(self.0.slot());
    }
}

/// Waits until `ready()` or the timeout, by `policy`. `ready` must be cheap
/// and side-effect free (it is the ring's "next slot published?" check).
///
/// A consumer with a seat on a wake board that yields polls there: it
/// announces itself, serves the wakes producers delegate to the board
/// between its yields, and withdraws before it parks or returns. Told to
/// park beside a poller (its messages come far apart), it does not yield at
/// all when another consumer of the board already polls, but parks at once:
/// the poller serves its wake, and one yielder fewer on the core is what the
/// board is for (docs/architecture.md, "Delegated wakes").
pub(crate) fn wait(
    db: &Doorbell,
    bell: &Bell,
    policy: &WaitPolicy,
    timeout: Option<Duration>,
    contention: &mut YieldContention,
    seated: Option<&Seated>,
    mut ready: impl FnMut() -> bool,
) -> WaitOutcome {
    let seat = seated.map(|s| &s.seat);
    let park_beside_a_poller = seated.is_some_and(|s| s.park_beside_a_poller);
    // Withdraws a polling announcement, one made before the wait
    // (`Receiver::begin_polling`) included, serving what was delegated
    // until now; one load when there is none.
    let withdraw = || {
        if let Some(seat) = seat {
            seat.board().leave_poll(seat.slot());
        }
    };
    if ready() {
        // The consumer goes off to work.
        withdraw();
        return WaitOutcome::Ready;
    }
    // The clock (~20 ns a read) is only read when a spin budget or a
    // timeout needs it. Under loom it is not modelled at all: budgets are
    // skipped and timeouts ignored, so a model is deterministic.
    let spin_budget = match *policy {
        WaitPolicy::Spin => Duration::ZERO,
        WaitPolicy::Yield { spin } | WaitPolicy::Park { spin } => spin,
    };
    let start = if cfg!(loom) || (timeout.is_none() && spin_budget.is_zero()) {
        None
    } else {
        Some(Instant::now())
    };
    let elapsed = || start.map_or(Duration::ZERO, |s| s.elapsed());
    let timed_out = || timeout.is_some_and(|t| !cfg!(loom) && elapsed() >= t);
    match *policy {
        WaitPolicy::Spin => {
            // A spinning consumer has a core of its own and serves nobody.
            withdraw();
            let mut spins = 0u32;
            loop {
                if ready() {
                    return WaitOutcome::Ready;
                }
                sync::spin_loop();
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(1024) && timed_out() {
                    return WaitOutcome::TimedOut;
                }
            }
        }
        WaitPolicy::Yield { spin } | WaitPolicy::Park { spin } => {
            let yielding = matches!(policy, WaitPolicy::Yield { .. });
            // Beside a CPU-bound thread a yield costs a scheduler tick:
            // park at once while that lasts (module `contention`).
            // Beside another poller, a waiter told to park there does not
            // yield either (`wait`'s docs).
            let skip = yielding
                && !cfg!(loom)
                && (contention.contended(Instant::now())
                    || park_beside_a_poller
                        && seat.is_some_and(|s| s.board().others_polling(s.slot())));
            if !cfg!(loom) && !spin.is_zero() && !skip {
                let since_start = |now: Instant| {
                    start.map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
                };
                if yielding {
                    let polling = seat.map(Polling::enter);
                    loop {
                        if ready() {
                            return WaitOutcome::Ready;
                        }
                        if let Some(p) = &polling {
                            p.serve();
                        }
                        // Counted before the ring is looked at again: a
                        // message that arrived during a slow yield must not
                        // hide that the yield was slow.
                        let (now, stand_down) = contention.timed_yield();
                        if stand_down {
                            break;
                        }
                        let e = since_start(now);
                        if timeout.is_some_and(|t| e >= t) {
                            return WaitOutcome::TimedOut;
                        }
                        if e >= spin {
                            break;
                        }
                        if poll_after_yield(&mut ready) {
                            return WaitOutcome::Ready;
                        }
                    }
                } else {
                    let mut i = 0u32;
                    loop {
                        if ready() {
                            return WaitOutcome::Ready;
                        }
                        sync::spin_loop();
                        i = i.wrapping_add(1);
                        // The clock costs ~20 ns; read it every few spins only.
                        if i.is_multiple_of(64) {
                            let e = since_start(Instant::now());
                            if timeout.is_some_and(|t| e >= t) {
                                return WaitOutcome::TimedOut;
                            }
                            if e >= spin {
                                break;
                            }
                        }
                    }
                }
            }
            // Parking: nobody polls for the board from here.
            withdraw();
            loop {
                db.arm();
                if ready() {
                    db.disarm();
                    return WaitOutcome::Ready;
                }
                let remaining = match timeout {
                    Some(t) if !cfg!(loom) => {
                        let e = elapsed();
                        if e >= t {
                            db.disarm();
                            return WaitOutcome::TimedOut;
                        }
                        Some(t - e)
                    }
                    _ => None,
                };
                bell.park(db, remaining);
                db.after_park();
                if ready() {
                    return WaitOutcome::Ready;
                }
                if timed_out() {
                    return WaitOutcome::TimedOut;
                }
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::{poll_after_yield, POLL_AFTER_YIELD};
    use std::time::Instant;

    #[test]
    fn poll_after_yield_catches_a_message_that_arrives_meanwhile() {
        let mut checks = 0;
        // "Arrives" on the fifth check, well inside the budget.
        assert!(poll_after_yield(&mut || {
            checks += 1;
            checks == 5
        }));
        assert_eq!(checks, 5);
    }

    #[test]
    fn poll_after_yield_gives_up_after_its_budget() {
        let start = Instant::now();
        let mut checks = 0u64;
        assert!(!poll_after_yield(&mut || {
            checks += 1;
            false
        }));
        assert!(start.elapsed() >= POLL_AFTER_YIELD);
        assert!(checks >= 8, "polled {checks} times");
    }
}
