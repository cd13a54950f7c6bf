//! The wake gate: whether a consumer that sleeps in `epoll` must be woken
//! after a producer posted into an in-process queue.
//!
//! The engine's core loops post calls to each other through `mpsc` queues
//! and wake a sleeping loop through its eventfd. Writing the eventfd after
//! every post costs two system calls (the producer's write, and the read
//! that drains it after `epoll` reports it) even while the receiving loop
//! spins and would find the letter on its next turn anyway. The gate lets a
//! producer skip the write unless the consumer may be asleep, and loses no
//! wake-up, by the argument of the rings' doorbells (Dekker's):
//!
//! * producer: publish into the queue; `pending += 1`; if `asleep`, wake;
//! * consumer: `asleep = true`; sleep only if `pending == 0`; after the sleep
//!   (or instead of it) `asleep = false`; `pending -= 1` per item taken.
//!
//! A `SeqCst` fence separates each side's two accesses, and the fences sit
//! in one total order: if the consumer's load of `pending` misses the
//! producer's increment, the producer's fence comes after the consumer's,
//! and the producer's load of `asleep` sees the consumer's store and wakes.
//! (Fences rather than `SeqCst` accesses: loom checks fences exactly.)
//!
//! `pending` may dip below zero for a moment (an item taken between its
//! publication and the increment), hence it is read as signed. The loom
//! models (`loom_tests::loom_wake_gate_one_producer`, and
//! `loom_wake_gate_two_producers_bounded` with a preemption bound) check
//! the argument with the shipped code, and fail when the consumer's fence
//! is removed.

use crate::sync::{fence, AtomicU32, AtomicU64, Ordering};

/// One consumer's sleep announcement and its count of untaken items.
#[derive(Debug)]
pub struct WakeGate {
    /// 1 from [`arm`](Self::arm) until [`disarm`](Self::disarm).
    asleep: AtomicU32,
    /// Items posted minus items taken, as an `i64` in two's complement.
    pending: AtomicU64,
}

impl Default for WakeGate {
    fn default() -> Self {
        Self::new()
    }
}

impl WakeGate {
    /// A gate with nothing pending and the consumer awake.
    pub fn new() -> Self {
        Self {
            asleep: AtomicU32::new(0),
            pending: AtomicU64::new(0),
        }
    }

    /// Producer, after it published one item: `true` if the consumer may be
    /// asleep and must be woken.
    #[must_use = "a true answer means the consumer must be woken"]
    pub fn posted(&self) -> bool {
        self.pending.fetch_add(1, Ordering::Relaxed);
        // Pairs with the fence in `arm` (Dekker): this load or that one sees
        // the other side's store.
        fence(Ordering::SeqCst);
        self.asleep.load(Ordering::Relaxed) != 0
    }

    /// Consumer, for each item it took.
    pub fn taken(&self) {
        // Relaxed: an RMW, so it never loses an increment; the only reader
        // that matters, `arm`, runs on this same thread.
        self.pending.fetch_sub(1, Ordering::Relaxed);
    }

    /// Consumer, before it sleeps: announces the sleep, and answers whether
    /// it may sleep (`false`: items are pending; take them, and
    /// [`disarm`](Self::disarm) either way).
    #[must_use = "sleeping after a false answer may lose a wake-up"]
    pub fn arm(&self) -> bool {
        self.asleep.store(1, Ordering::Relaxed);
        // Pairs with the fence in `posted` (Dekker).
        fence(Ordering::SeqCst);
        self.pending.load(Ordering::Relaxed) as i64 <= 0
    }

    /// Consumer, awake again (or not sleeping after all).
    pub fn disarm(&self) {
        // Relaxed: a producer that still sees 1 only wakes a loop that is
        // awake, which costs it a spurious wake-up and nothing else.
        self.asleep.store(0, Ordering::Relaxed);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::WakeGate;

    #[test]
    fn an_awake_consumer_costs_its_producers_no_wake_up() {
        let gate = WakeGate::new();
        assert!(!gate.posted());
        assert!(!gate.posted());
        gate.taken();
        gate.taken();
        assert!(gate.arm(), "nothing pending: may sleep");
        assert!(gate.posted(), "asleep: must be woken");
        gate.disarm();
        assert!(!gate.posted());
    }

    #[test]
    fn pending_items_keep_the_consumer_up() {
        let gate = WakeGate::new();
        assert!(!gate.posted());
        assert!(!gate.arm(), "one item pending");
        gate.disarm();
        gate.taken();
        assert!(gate.arm());
    }

    #[test]
    fn an_item_taken_before_it_is_counted_does_not_block_sleep_forever() {
        let gate = WakeGate::new();
        // The consumer took the item between its publication and `posted`.
        gate.taken();
        assert!(gate.arm(), "pending is -1: nothing to take");
        assert!(gate.posted(), "the late increment sees the sleeper");
        gate.disarm();
        assert!(gate.arm(), "the count is back at 0");
    }
}
