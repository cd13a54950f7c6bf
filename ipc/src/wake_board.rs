//! The wake board: the doorbell words of consumers that share a core, kept
//! where any of them can wake another, so that a wake-up the producer would
//! send across cores is issued on the sleeper's own core by a consumer that
//! is awake there.
//!
//! Why: on the 2-core VM a futex wake from the io core to a worker's core
//! takes 16–28 µs to get the sleeper running, and 3 µs when a yield-polling
//! process on the sleeper's core issues it and then yields
//! (docs/benchmarks.md, "The chain on two cores, accounted"). This module is
//! the protocol of docs/architecture.md, "Delegated wakes on a shared
//! core": the engine seats each yielding worker of a core loop on that
//! loop's board ([`WakeSeat`]).
//!
//! Each consumer has a slot (0..[`BOARD_SLOTS`]): its doorbell word, which
//! its [`Doorbell`](crate::doorbell) protocol arms and parks on, and one bit
//! in each of two masks: `polling` (the consumer is awake in a wait loop
//! and serves wake requests) and `requests` (its wake was delegated and is
//! not yet done).
//!
//! * producer, once `Doorbell::should_wake` said the consumer sleeps and
//!   this producer won the right to wake it ([`WakeBoard::delegate`]): set
//!   the request bit; `fence(SeqCst)`; load `polling`. If another slot
//!   polls, it will do the wake ([`Delegation::Delegated`]); if none does,
//!   take the bit back with `fetch_and` and, if it was still there, wake the
//!   sleeper itself ([`Delegation::WakeYourself`]).
//! * poller: set its `polling` bit on entering a wait loop
//!   ([`WakeBoard::enter_poll`]); in the loop, [`WakeBoard::serve`] claims
//!   every request bit with one `swap` and `FUTEX_WAKE`s those slots; on
//!   leaving ([`WakeBoard::leave_poll`]) clear the bit, `fence(SeqCst)`, and
//!   serve once more.
//!
//! The two fences are totally ordered, so either the producer's load sees
//! the poller still polling (and the poller's last serve, after its fence,
//! sees the request), or the poller's load missed the request and the
//! producer's load sees it gone and takes the request back. Claiming and
//! taking back are both read-modify-writes of `requests`, so exactly one
//! side wakes. The wake itself is as safe as the producer's own: the
//! producer swapped the doorbell word to `AWAKE` before it set the bit
//! (Release), the claim reads the bit (Acquire), so a sleeper that reaches
//! `FUTEX_WAIT` after the delegated `FUTEX_WAKE` finds `AWAKE` and does not
//! sleep. The loom models (`loom_tests::loom_wake_board_*`) check this with
//! the shipped code.
//!
//! A poller that dies or stops (SIGKILL, SIGSTOP) with its bit set, or a
//! peer that clears request bits without waking, would leave a sleeper
//! asleep: the producer must watch what it delegated and, when the consumer
//! has not taken its message after a grace period, take the request back
//! ([`WakeBoard::reclaim`]) and wake the consumer itself (a spare wake is
//! harmless), and clear a dead consumer's bits ([`WakeBoard::forget`]).
#![allow(unsafe_code)]

use crate::doorbell::AWAKE;
#[cfg(not(loom))]
use crate::region::{MemfdRegion, Region, RegionError};
use crate::sync::{self, fence, AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
use std::os::fd::{BorrowedFd, OwnedFd};

/// Consumers one board holds (the bits of one `u64` mask).
pub const BOARD_SLOTS: usize = 64;

/// What a producer must do after [`WakeBoard::delegate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delegation {
    /// A consumer awake on the board does the wake (or already did).
    Delegated,
    /// Nobody polls: the producer wakes the sleeper itself
    /// ([`WakeBoard::wake`]).
    WakeYourself,
}

/// Why a slot number was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("wake board slot {0} out of range (a board has {BOARD_SLOTS})")]
pub struct BadSlot(pub usize);

/// One consumer's place on a board.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot(u8);

impl Slot {
    /// Slot `index`, if the board has it.
    pub fn new(index: usize) -> Result<Self, BadSlot> {
        if index < BOARD_SLOTS {
            Ok(Self(index as u8))
        } else {
            Err(BadSlot(index))
        }
    }

    /// The slot's number.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    fn bit(self) -> u64 {
        1 << self.0
    }
}

/// The doorbell words and the two masks of consumers that share a core.
///
/// `repr(C)`: the engine and a worker built from another crate map the same
/// bytes ([`SharedWakeBoard`]), so the layout must not depend on the build.
/// All zeros is the initial board (every word `AWAKE`, masks empty), and any
/// bit pattern is a valid value: a peer that writes garbage can cause spare
/// wakes, or hold back the ones it should do, and nothing worse (module docs).
#[repr(C)]
pub struct WakeBoard {
    /// Bit `i`: slot `i` is awake in a wait loop and serves requests.
    polling: AtomicU64,
    /// Bit `i`: slot `i`'s wake was delegated and is not yet done.
    requests: AtomicU64,
    /// Each slot's doorbell word ([`crate::doorbell::SLEEPING`] or `AWAKE`).
    doorbells: [AtomicU32; BOARD_SLOTS],
}

impl Default for WakeBoard {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for WakeBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Relaxed: a snapshot for humans.
        f.debug_struct("WakeBoard")
            .field(
                "polling",
                &format_args!("{:#x}", self.polling.load(Ordering::Relaxed)),
            )
            .field(
                "requests",
                &format_args!("{:#x}", self.requests.load(Ordering::Relaxed)),
            )
            .finish_non_exhaustive()
    }
}

impl WakeBoard {
    /// A board with every consumer awake, none polling, nothing requested.
    pub fn new() -> Self {
        Self {
            polling: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            doorbells: std::array::from_fn(|_| AtomicU32::new(AWAKE)),
        }
    }

    /// The doorbell word of `slot`: its consumer arms and parks on it, its
    /// producer checks it (`Doorbell::new` over this word).
    pub(crate) fn doorbell_word(&self, slot: Slot) -> &AtomicU32 {
        &self.doorbells[slot.index()]
    }

    /// Producer: the consumer of `slot` sleeps and this producer won the
    /// right to wake it (its doorbell's `should_wake` returned true). Hands
    /// the wake to a consumer polling on the board if there is one.
    #[must_use = "WakeYourself means the producer must wake the sleeper"]
    pub fn delegate(&self, slot: Slot) -> Delegation {
        // Release: a poller's Acquire claim of this bit then sees the
        // doorbell word's swap to AWAKE that preceded it (`should_wake`),
        // so a sleeper that parks after the delegated wake does not sleep.
        self.requests.fetch_or(slot.bit(), Ordering::Release);
        // Pairs with the fence in `leave_poll` (Dekker): either this load
        // sees the poller's bit, or the poller's last serve sees ours.
        fence(Ordering::SeqCst);
        // Relaxed: ordered by the fence. The slot's own bit does not count
        // (a stale one, say of a consumer that died polling).
        if self.polling.load(Ordering::Relaxed) & !slot.bit() != 0 {
            return Delegation::Delegated;
        }
        self.take_back(slot)
    }

    /// Producer: takes back a delegated wake that was not done in time (a
    /// poller stopped, or a peer cleared the bit without waking: see the
    /// module docs). `WakeYourself` if the request was still there; a wake
    /// that is not needed any more is harmless, so the producer may also
    /// wake on `Delegated` when the consumer still has not taken its
    /// message.
    #[must_use = "WakeYourself means the producer must wake the sleeper"]
    pub fn reclaim(&self, slot: Slot) -> Delegation {
        self.take_back(slot)
    }

    fn take_back(&self, slot: Slot) -> Delegation {
        // Relaxed: the bit is ours again or a poller claimed it; either way
        // the wake that follows is the producer's own, ordered after its
        // swap of the doorbell word by program order.
        if self.requests.fetch_and(!slot.bit(), Ordering::Relaxed) & slot.bit() != 0 {
            Delegation::WakeYourself
        } else {
            Delegation::Delegated
        }
    }

    /// Producer: wakes the consumer of `slot` (`FUTEX_WAKE` on its word).
    pub fn wake(&self, slot: Slot) {
        sync::futex_wake(self.doorbell_word(slot));
    }

    /// Consumer `slot`: it is awake in a wait loop and serves requests.
    pub fn enter_poll(&self, slot: Slot) {
        // Relaxed: a producer that misses this bit wakes the sleeper itself,
        // which is correct, only slower.
        self.polling.fetch_or(slot.bit(), Ordering::Relaxed);
    }

    /// Consumer `slot`: it leaves its wait loop (to run a call, or to park);
    /// serves what was delegated until now. Returns the wakes it made.
    /// A consumer that was not polling has nothing to do (one load): only
    /// a polling consumer promised producers to serve.
    pub fn leave_poll(&self, slot: Slot) -> u32 {
        // Relaxed: only this consumer sets its bit, so it sees its own
        // `enter_poll` (program order); a bit the producer cleared
        // (`forget`) belongs to a consumer that is gone.
        if self.polling.load(Ordering::Relaxed) & slot.bit() == 0 {
            return 0;
        }
        // Relaxed RMW, then the fence that pairs with the one in `delegate`.
        self.polling.fetch_and(!slot.bit(), Ordering::Relaxed);
        fence(Ordering::SeqCst);
        self.serve()
    }

    /// A poller: claims every delegated wake and does it. Cheap when there
    /// is none (one load). Returns the wakes it made.
    pub fn serve(&self) -> u32 {
        // Relaxed: a request seen late is seen at the next serve, and the
        // last one (`leave_poll`) is ordered by its fence.
        if self.requests.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        // Acquire: pairs with `delegate`'s Release fetch_or (the doorbell
        // words were swapped to AWAKE before their bits were set).
        let mut claimed = self.requests.swap(0, Ordering::Acquire);
        let woken = claimed.count_ones();
        while claimed != 0 {
            let index = claimed.trailing_zeros() as usize;
            claimed &= claimed - 1;
            sync::futex_wake(&self.doorbells[index]);
        }
        woken
    }

    /// Whether a consumer other than `slot`'s is awake in a wait loop. A
    /// consumer about to wait uses it to stay out of the way: one poller per
    /// core serves everyone's wakes, and a second one only slows the core's
    /// other tenants down (docs/architecture.md, "Delegated wakes").
    pub fn others_polling(&self, slot: Slot) -> bool {
        // Relaxed: advice; a stale answer costs a slower wait, never a lost
        // wake (the doorbell protocol does not depend on it).
        self.polling.load(Ordering::Relaxed) & !slot.bit() != 0
    }

    /// Producer, when the consumer of `slot` is gone: clears its bits (a
    /// consumer that died polling would otherwise attract delegations) and
    /// tells whether a wake delegated to the board for it was still
    /// pending (nobody needs it now).
    pub fn forget(&self, slot: Slot) -> bool {
        // Relaxed: housekeeping of a slot nobody uses until it is given to a
        // new consumer, which the producer does after this returns.
        self.polling.fetch_and(!slot.bit(), Ordering::Relaxed);
        self.requests.fetch_and(!slot.bit(), Ordering::Relaxed) & slot.bit() != 0
    }
}

/// What keeps a seat's board mapped: the shared region, or (under loom,
/// which models no memfd) the board itself.
#[cfg(not(loom))]
type BoardOwner = std::sync::Arc<SharedWakeBoard>;
#[cfg(loom)]
type BoardOwner = crate::sync::Arc<WakeBoard>;

/// One consumer's seat on a board: the board, kept mapped as long as the
/// seat lives, and the consumer's slot. A channel's sender and receiver
/// both take the seat of the receiver
/// ([`Sender::take_seat`](crate::channel::Sender::take_seat),
/// [`Receiver::take_seat`](crate::channel::Receiver::take_seat)), after
/// which the ring's doorbell word is the slot's word on the board.
#[derive(Clone)]
pub struct WakeSeat {
    owner: BoardOwner,
    slot: Slot,
}

impl std::fmt::Debug for WakeSeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WakeSeat")
            .field("slot", &self.slot.index())
            .field("board", self.board())
            .finish()
    }
}

impl WakeSeat {
    /// Seat `slot` of `board`.
    pub fn new(board: BoardOwner, slot: Slot) -> Self {
        Self { owner: board, slot }
    }

    /// The board.
    pub fn board(&self) -> &WakeBoard {
        #[cfg(not(loom))]
        {
            self.owner.board()
        }
        #[cfg(loom)]
        {
            &self.owner
        }
    }

    /// The seat's slot.
    pub fn slot(&self) -> Slot {
        self.slot
    }

    /// The shared board (its memfd goes to the seat's consumer).
    #[cfg(not(loom))]
    pub fn shared_board(&self) -> &SharedWakeBoard {
        &self.owner
    }

    /// The seat's doorbell word, which the channel's doorbell then uses.
    pub(crate) fn doorbell_word(&self) -> &AtomicU32 {
        self.board().doorbell_word(self.slot)
    }
}

/// A [`WakeBoard`] in a sealed memfd, shared by the producer and every
/// consumer of the board's core: the creator sends [`fd`](Self::fd) with
/// [`crate::fdpass`], each consumer [`attach`](Self::attach)es.
#[cfg(not(loom))]
#[derive(Debug)]
pub struct SharedWakeBoard {
    region: MemfdRegion,
}

#[cfg(not(loom))]
impl SharedWakeBoard {
    /// Creates and seals a fresh board (one page, zero-filled: the initial
    /// board).
    pub fn create(name: &str) -> Result<Self, RegionError> {
        let region = MemfdRegion::create(name, board_region_len())?;
        region.seal()?;
        Ok(Self { region })
    }

    /// Maps a board received from the producer. Refuses a file that is not
    /// sealed or is too small to hold a board.
    pub fn attach(fd: OwnedFd) -> Result<Self, RegionError> {
        let region = MemfdRegion::attach(fd)?;
        if region.len() < std::mem::size_of::<WakeBoard>() {
            return Err(RegionError::BadLength(region.len() as u64));
        }
        Ok(Self { region })
    }

    /// The memfd, to hand to a consumer.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.region.fd()
    }

    /// The board.
    pub fn board(&self) -> &WakeBoard {
        // SAFETY: the mapping is page-aligned (mmap), at least
        // `size_of::<WakeBoard>()` long (checked in `attach`; `create` maps a
        // page, more than a board), and lives as long as `self`. WakeBoard is
        // repr(C) atomics only: every bit pattern is a valid value, and a
        // peer's concurrent writes are atomic accesses to the same words.
        unsafe { &*self.region.base().cast::<WakeBoard>() }
    }
}

/// One page: the board is 272 bytes.
#[cfg(not(loom))]
fn board_region_len() -> usize {
    const _: () = assert!(std::mem::size_of::<WakeBoard>() <= 4096);
    4096
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::doorbell::{Doorbell, SLEEPING};
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn slot(i: usize) -> Slot {
        Slot::new(i).unwrap()
    }

    #[test]
    fn slots_beyond_the_board_are_refused() {
        assert_eq!(Slot::new(BOARD_SLOTS - 1).unwrap().index(), BOARD_SLOTS - 1);
        assert_eq!(Slot::new(BOARD_SLOTS), Err(BadSlot(BOARD_SLOTS)));
        assert!(BadSlot(64).to_string().contains("out of range"));
    }

    #[test]
    fn without_a_poller_the_producer_wakes_itself() {
        let board = WakeBoard::new();
        assert_eq!(board.delegate(slot(3)), Delegation::WakeYourself);
        // Taken back: no poller finds it later.
        board.enter_poll(slot(1));
        assert_eq!(board.serve(), 0);
    }

    #[test]
    fn a_sleepers_own_stale_polling_bit_attracts_no_delegation() {
        let board = WakeBoard::new();
        board.enter_poll(slot(5));
        assert_eq!(board.delegate(slot(5)), Delegation::WakeYourself);
    }

    #[test]
    fn a_poller_does_the_wakes_delegated_to_it_once() {
        let board = WakeBoard::new();
        board.enter_poll(slot(0));
        assert_eq!(board.delegate(slot(7)), Delegation::Delegated);
        assert_eq!(board.delegate(slot(9)), Delegation::Delegated);
        assert_eq!(board.serve(), 2);
        assert_eq!(board.serve(), 0);
        // Done: nothing left to take back.
        assert_eq!(board.reclaim(slot(7)), Delegation::Delegated);
    }

    #[test]
    fn a_leaving_poller_serves_what_came_before_it_left() {
        let board = WakeBoard::new();
        board.enter_poll(slot(2));
        assert_eq!(board.delegate(slot(4)), Delegation::Delegated);
        assert_eq!(board.leave_poll(slot(2)), 1);
        assert_eq!(board.delegate(slot(4)), Delegation::WakeYourself);
    }

    #[test]
    fn a_stalled_delegation_is_reclaimed_once() {
        let board = WakeBoard::new();
        board.enter_poll(slot(1));
        assert_eq!(board.delegate(slot(6)), Delegation::Delegated);
        // The poller never serves (stopped): the producer takes it back.
        assert_eq!(board.reclaim(slot(6)), Delegation::WakeYourself);
        assert_eq!(board.reclaim(slot(6)), Delegation::Delegated);
        assert_eq!(board.serve(), 0);
    }

    #[test]
    fn forgetting_a_dead_poller_stops_delegations_to_it() {
        let board = WakeBoard::new();
        board.enter_poll(slot(1));
        assert_eq!(board.delegate(slot(2)), Delegation::Delegated);
        assert!(board.forget(slot(2)), "slot 2's wake was pending");
        assert!(!board.forget(slot(1)));
        assert_eq!(board.delegate(slot(2)), Delegation::WakeYourself);
    }

    /// Rounds of the stress tests below.
    const ROUNDS: u64 = 20_000;

    /// The sleeper: parks on `slot`'s word until it has seen `ROUNDS`
    /// messages, reporting each in `seen`. No allocation (it also runs in a
    /// forked child).
    fn sleep_through_rounds(
        board: &WakeBoard,
        slot: Slot,
        published: &AtomicU64,
        seen: &AtomicU64,
    ) {
        // SAFETY: the word lives in `board`, which outlives this call.
        let db = unsafe { Doorbell::new(board.doorbell_word(slot)) };
        let mut last = 0;
        while last < ROUNDS {
            db.arm();
            let now = published.load(Ordering::Acquire);
            if now != last {
                db.disarm();
                last = now;
                seen.store(last, Ordering::Release);
                continue;
            }
            sync::futex_wait(board.doorbell_word(slot), SLEEPING, None);
            db.disarm();
        }
    }

    /// One visit of a poller: enters, serves a random while, leaves; the
    /// wakes it made. `x` is its xorshift state. No allocation.
    fn poll_once(board: &WakeBoard, slot: Slot, x: &mut u64) -> u64 {
        board.enter_poll(slot);
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        let mut wakes = 0;
        for _ in 0..(*x % 64) {
            wakes += board.serve();
            std::hint::spin_loop();
        }
        u64::from(wakes + board.leave_poll(slot))
    }

    /// What the producer did over the rounds.
    struct Produced {
        delegated: u64,
        own: u64,
        /// The first round whose message the sleeper never saw in time.
        lost: Option<u64>,
    }

    /// The producer: publishes each round, wakes or delegates as the board
    /// says, and waits (60 s at most) for the sleeper to see it.
    fn produce_rounds(
        board: &WakeBoard,
        slot: Slot,
        published: &AtomicU64,
        seen: &AtomicU64,
    ) -> Produced {
        // SAFETY: the word lives in `board`, which outlives this call.
        let db = unsafe { Doorbell::new(board.doorbell_word(slot)) };
        let mut out = Produced {
            delegated: 0,
            own: 0,
            lost: None,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        for round in 1..=ROUNDS {
            published.store(round, Ordering::Release);
            if db.should_wake() {
                match board.delegate(slot) {
                    Delegation::Delegated => out.delegated += 1,
                    Delegation::WakeYourself => {
                        out.own += 1;
                        board.wake(slot);
                    }
                }
            }
            while seen.load(Ordering::Acquire) != round {
                if Instant::now() >= deadline {
                    out.lost = Some(round);
                    return out;
                }
                std::thread::yield_now();
            }
        }
        out
    }

    /// Three processes over one memfd board: a sleeper that parks on its
    /// board word, a poller that comes and goes (and now and then stays
    /// away, so that the producer also finds nobody polling), and the
    /// producer (this process). The children are forked and touch only
    /// atomics and system calls (no allocation, no locks: the test harness
    /// is multi-threaded), and end with `_exit`.
    #[test]
    fn no_wake_is_lost_across_processes() {
        let shared = SharedWakeBoard::create("wake-board-test").unwrap();
        // The children use a board attached from the fd, as a consumer
        // would: it must be the same memory.
        let fd = shared.fd().try_clone_to_owned().unwrap();
        let attached = SharedWakeBoard::attach(fd).unwrap();
        let counters = MemfdRegion::create("wake-board-counters", 4096).unwrap();
        // SAFETY: page-aligned, zero-filled shared memory holding five
        // AtomicU64s (published, seen, stop, the poller's wakes, the
        // poller's first turn done), alive until the end of the test.
        let [published, seen, stop, poller_wakes, poller_started]: [&AtomicU64; 5] =
            std::array::from_fn(|i| unsafe { &*counters.base().cast::<AtomicU64>().add(i) });
        let (sleeper_slot, poller_slot) = (slot(0), slot(1));

        // SAFETY: fork; the child runs only allocation-free code and `_exit`s.
        let sleeper = unsafe { libc::fork() };
        assert!(sleeper >= 0, "fork: {}", std::io::Error::last_os_error());
        if sleeper == 0 {
            sleep_through_rounds(attached.board(), sleeper_slot, published, seen);
            // SAFETY: ends the forked child without running the parent's
            // atexit handlers or destructors.
            unsafe { libc::_exit(0) };
        }
        // SAFETY: as for the sleeper.
        let poller = unsafe { libc::fork() };
        assert!(poller >= 0, "fork: {}", std::io::Error::last_os_error());
        if poller == 0 {
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            while stop.load(Ordering::Relaxed) == 0 {
                let wakes = poll_once(attached.board(), poller_slot, &mut x);
                poller_wakes.fetch_add(wakes, Ordering::Relaxed);
                poller_started.store(1, Ordering::Relaxed);
                if x.is_multiple_of(256) {
                    // SAFETY: a plain sleep; no memory is passed.
                    unsafe { libc::usleep(100) };
                }
            }
            // SAFETY: as for the sleeper.
            unsafe { libc::_exit(0) };
        }
        let reap = |pid: libc::pid_t, kill: bool| {
            if kill {
                // SAFETY: signals our own child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let mut status = 0;
            // SAFETY: waits for our own child; `status` outlives the call.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            status
        };

        // The rounds begin once the poller runs: a child the scheduler
        // had not started yet (two cores, the other tests busy) let every
        // round go by without a poller, and the test exercised one way.
        let started_by = Instant::now() + Duration::from_secs(10);
        while poller_started.load(Ordering::Relaxed) == 0 {
            if Instant::now() > started_by {
                stop.store(1, Ordering::Relaxed);
                reap(poller, true);
                reap(sleeper, true);
                panic!("the poller process did not start polling within 10 s");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let Produced {
            delegated,
            own,
            lost,
        } = produce_rounds(shared.board(), sleeper_slot, published, seen);
        stop.store(1, Ordering::Relaxed);
        let sleeper_status = reap(sleeper, lost.is_some());
        reap(poller, lost.is_some());
        if let Some(round) = lost {
            panic!(
                "round {round}: the sleeper process never saw the message (a lost wake); \
                 {delegated} wakes delegated, {own} done by the producer"
            );
        }
        assert_eq!(sleeper_status, 0, "the sleeper process failed");
        let poller_wakes = poller_wakes.load(Ordering::Relaxed);
        eprintln!(
            "{delegated} delegated ({poller_wakes} done by the poller), {own} by the producer"
        );
        // Both ways were taken.
        assert!(
            own > 0 && poller_wakes > 0,
            "{delegated} delegated, {poller_wakes} done by the poller, {own} by the producer"
        );
        assert!(
            poller_wakes <= delegated,
            "{poller_wakes} wakes for {delegated} requests"
        );
    }

    /// The same with threads of one process and a poller that never stays
    /// away: most wakes are delegated.
    #[test]
    fn no_wake_is_lost_with_a_poller_that_comes_and_goes() {
        let board = Arc::new(WakeBoard::new());
        let (sleeper_slot, poller_slot) = (slot(0), slot(1));
        let published = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let sleeper = {
            let (board, published, seen) = (board.clone(), published.clone(), seen.clone());
            std::thread::spawn(move || {
                sleep_through_rounds(&board, sleeper_slot, &published, &seen)
            })
        };
        let poller = {
            let (board, stop) = (board.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut wakes, mut x) = (0, 0x9e37_79b9_7f4a_7c15u64);
                while !stop.load(Ordering::Relaxed) {
                    wakes += poll_once(&board, poller_slot, &mut x);
                }
                wakes
            })
        };
        let Produced {
            delegated,
            own,
            lost,
        } = produce_rounds(&board, sleeper_slot, &published, &seen);
        stop.store(true, Ordering::Relaxed);
        assert!(
            lost.is_none(),
            "round {lost:?}: the sleeper never saw the message (a lost wake); \
             {delegated} wakes delegated, {own} done by the producer"
        );
        sleeper.join().unwrap();
        let poller_wakes = poller.join().unwrap();
        assert!(
            poller_wakes <= delegated,
            "{poller_wakes} wakes for {delegated} requests"
        );
        eprintln!(
            "{delegated} delegated ({poller_wakes} done by the poller), {own} by the producer"
        );
    }
}
