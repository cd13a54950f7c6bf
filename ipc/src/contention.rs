//! When yielding stops paying: a waiter that shares its core notices a
//! CPU-bound neighbour and sleeps instead.
//!
//! `sched_yield` hands the core to whoever else is runnable and comes back
//! when they give it up. Beside threads that wait too (workers, the io loop)
//! that is a microsecond or two. Beside a thread that never waits — a
//! compiler, a busy tenant — the yielder gets the core back only when the
//! scheduler preempts that thread, at its next tick: 4 ms on the 2-core VM
//! (a yield loop beside a busy loop on one core there: 2920 yields in 2 s,
//! p99 gap 4.0 ms). All that time the yielder is runnable but not running,
//! so a message for it waits as long. A *sleeping* waiter is woken by the
//! message's doorbell instead, and the scheduler lets a thread that slept
//! preempt the busy one: tens of µs.
//!
//! So [`SLOW_IN_WINDOW`] yields that each come back later than
//! [`SLOW_YIELD`], within [`SLOW_WINDOW`], turn yielding off (the caller
//! parks, or sleeps in epoll, at once) for a hold time. One slow yield alone
//! proves nothing: the hypervisor may have stopped the whole virtual CPU for
//! a moment, or a worker on the core ran one long call. Beside a busy thread
//! a yield is slow once per time slice of that thread, however many fast
//! ones come in between: two waiters on the core (the io loop and a worker)
//! hand it to each other in microseconds until the busy thread's turn comes
//! round again, so "slow ones in a row" would never be seen. When the hold
//! ends, the next waits yield again, as a probe: slow ones within a window
//! double the hold (up to [`MAX_HOLD`]), a whole window without them means
//! the neighbour has gone. A neighbour that stays costs a few slow yields
//! per hold, a hold being seconds long after a while.

use std::time::{Duration, Instant};

/// A yield that takes longer than this was preempted by a thread that runs
/// long stretches. Far above a hand-over between waiters (≈ 1.5 µs on the
/// 2-core VM) and below a busy thread's time slice (3–4 ms there). 1 ms
/// also caught the ordinary crowd of a loaded shared core and cost 13 % of
/// `bench engine`'s `throughput/internal`.
pub const SLOW_YIELD: Duration = Duration::from_millis(2);
/// Slow yields within [`SLOW_WINDOW`] that mean a busy neighbour.
pub const SLOW_IN_WINDOW: u32 = 3;
/// A busy neighbour makes a yield slow every time slice (≈ 4 ms on the
/// 2-core VM, 1–10 ms anywhere): three of them fall well inside this.
pub const SLOW_WINDOW: Duration = Duration::from_millis(50);
/// The first hold after a slow yield.
pub const MIN_HOLD: Duration = Duration::from_millis(100);
/// The longest hold, reached while the neighbour stays.
pub const MAX_HOLD: Duration = Duration::from_secs(5);

/// Whether yielding currently pays on this thread's core.
#[derive(Clone, Copy, Debug)]
pub struct YieldContention {
    /// Yielding is off until then (`Some` also after it passed, until a
    /// probe yield says how it went).
    until: Option<Instant>,
    hold: Duration,
    /// When the first slow yield of the current window came back.
    window_start: Option<Instant>,
    /// Slow yields since `window_start`.
    slow_in_window: u32,
}

impl Default for YieldContention {
    fn default() -> Self {
        Self::new()
    }
}

impl YieldContention {
    /// No contention seen yet: yielding is on.
    pub const fn new() -> Self {
        Self {
            until: None,
            hold: MIN_HOLD,
            window_start: None,
            slow_in_window: 0,
        }
    }

    /// Whether to sleep instead of yielding at `now`.
    pub fn contended(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| now < until)
    }

    /// Yields the core (`sched_yield`) and records how long that took.
    /// Returns when the yield came back, and whether yielding is off from
    /// then on (as [`record`](Self::record)).
    pub fn timed_yield(&mut self) -> (Instant, bool) {
        let start = Instant::now();
        crate::sync::yield_now();
        let end = Instant::now();
        (end, self.record(start, end))
    }

    /// Records a yield from `start` to `end`; returns whether yielding is
    /// off from `end` on (it was the last of [`SLOW_IN_WINDOW`] slow yields
    /// within [`SLOW_WINDOW`]).
    pub fn record(&mut self, start: Instant, end: Instant) -> bool {
        if end.saturating_duration_since(start) <= SLOW_YIELD {
            if self.until.is_some_and(|until| end >= until + SLOW_WINDOW) {
                // A whole window after the hold without contention: the
                // neighbour has gone.
                self.until = None;
                self.hold = MIN_HOLD;
            }
            return false;
        }
        let window_open = self
            .window_start
            .is_some_and(|w| end.saturating_duration_since(w) <= SLOW_WINDOW);
        if !window_open {
            self.window_start = Some(end);
            self.slow_in_window = 0;
        }
        self.slow_in_window += 1;
        if self.slow_in_window < SLOW_IN_WINDOW {
            return false;
        }
        self.window_start = None;
        self.slow_in_window = 0;
        if self.until.is_some() {
            // Slow again right after a hold: it stays, hold longer.
            self.hold = (self.hold * 2).min(MAX_HOLD);
        }
        self.until = Some(end + self.hold);
        true
    }

    /// The current hold (how long yielding stays off after a slow yield).
    pub fn hold(&self) -> Duration {
        self.hold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Duration = Duration::from_micros(2);
    const SLOW: Duration = Duration::from_millis(4);

    /// Records slow yields from `t` until one turns yielding off; returns
    /// when that happened.
    fn slow_until_off(c: &mut YieldContention, mut t: Instant) -> Instant {
        for n in 1..=SLOW_IN_WINDOW {
            let off = c.record(t, t + SLOW);
            t += SLOW;
            assert_eq!(off, n == SLOW_IN_WINDOW, "slow yield {n}");
        }
        t
    }

    #[test]
    fn fast_yields_keep_yielding_on() {
        let mut c = YieldContention::new();
        let t0 = Instant::now();
        for i in 0..100 {
            let start = t0 + FAST * i;
            assert!(!c.record(start, start + FAST));
            assert!(!c.contended(start + FAST));
        }
        // Exactly at the threshold is still fast.
        assert!(!c.record(t0, t0 + SLOW_YIELD));
    }

    #[test]
    fn slow_yields_in_a_row_turn_yielding_off_for_the_hold() {
        let mut c = YieldContention::new();
        let end = slow_until_off(&mut c, Instant::now());
        assert!(c.contended(end));
        assert!(c.contended(end + MIN_HOLD - FAST));
        assert!(!c.contended(end + MIN_HOLD));
    }

    #[test]
    fn now_and_then_a_slow_yield_is_not_contention() {
        // A virtual CPU stopped by the hypervisor, one long call of a
        // worker: slow once, then fast again for longer than a window.
        let mut c = YieldContention::new();
        let mut t = Instant::now();
        for _ in 0..10 {
            assert!(!c.record(t, t + SLOW));
            t += SLOW;
            for _ in 0..100 {
                assert!(!c.record(t, t + FAST));
                t += Duration::from_millis(1);
            }
            assert!(!c.contended(t));
        }
    }

    #[test]
    fn slow_yields_between_fast_ones_are_a_busy_neighbour() {
        // Two waiters beside a busy thread: they hand the core to each
        // other in microseconds, and once a time slice the busy thread
        // takes it for a tick.
        let mut c = YieldContention::new();
        let mut t = Instant::now();
        let mut off = false;
        for _ in 0..SLOW_IN_WINDOW {
            for _ in 0..20 {
                assert!(!c.record(t, t + FAST));
                t += FAST;
            }
            off = c.record(t, t + SLOW);
            t += SLOW;
        }
        assert!(off);
        assert!(c.contended(t));
    }

    #[test]
    fn a_neighbour_that_stays_doubles_the_hold_up_to_the_cap() {
        let mut c = YieldContention::new();
        let mut t = Instant::now();
        let mut holds = Vec::new();
        for _ in 0..10 {
            t = slow_until_off(&mut c, t);
            holds.push(c.hold());
            // The probes at the end of the hold are slow again.
            t += c.hold();
            assert!(!c.contended(t));
        }
        assert_eq!(holds[0], MIN_HOLD);
        assert_eq!(holds[1], MIN_HOLD * 2);
        assert_eq!(holds[2], MIN_HOLD * 4);
        assert_eq!(*holds.last().unwrap(), MAX_HOLD);
    }

    #[test]
    fn a_fast_probe_after_the_hold_resets_it() {
        let mut c = YieldContention::new();
        let t1 = slow_until_off(&mut c, Instant::now()) + MIN_HOLD;
        let t2 = slow_until_off(&mut c, t1) + c.hold();
        assert_eq!(c.hold(), MIN_HOLD * 2);
        // Right after the hold, a fast yield proves nothing yet (the busy
        // thread's slice may just not have come round)...
        assert!(!c.record(t2, t2 + FAST));
        assert_eq!(c.hold(), MIN_HOLD * 2);
        // ...a whole window without slow ones does.
        let t3 = t2 + SLOW_WINDOW;
        assert!(!c.record(t3, t3 + FAST));
        assert_eq!(c.hold(), MIN_HOLD);
        assert!(!c.contended(t3 + FAST));
        // The next slow yields start from the shortest hold again.
        slow_until_off(&mut c, t3 + Duration::from_secs(1));
        assert_eq!(c.hold(), MIN_HOLD);
    }

    #[test]
    fn fast_yields_during_a_hold_do_not_end_it() {
        let mut c = YieldContention::new();
        let end = slow_until_off(&mut c, Instant::now());
        // (Callers do not yield while contended; if one did, a fast yield
        // inside the hold changes nothing.)
        let inside = end + Duration::from_millis(10);
        assert!(!c.record(inside, inside + FAST));
        assert!(c.contended(inside + FAST));
    }
}
