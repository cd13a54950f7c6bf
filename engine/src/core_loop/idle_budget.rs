//! How long an adaptive io loop keeps polling after its last work.
//!
//! The floor is `spin_us`. Above it, the loop stretches its budget to cover
//! the gaps between arrivals while they stay under `spin_max_us`: a request
//! that finds the loop asleep in epoll pays the wake-up of an idle core, and
//! on a VM that is the host's too (the chain's p50 at 1375 requests/s on the
//! 2-core VM: 97–134 µs with a 500 µs budget, 43–50 µs with the loop
//! polling through the 727 µs gaps; docs/operations.md, "Low rates").
//! Once the gaps grow past the ceiling, polling through them would keep a
//! core busy for little, and the loop sleeps after `spin_us` again.
//!
//! The gaps are learned from the loop's own idle periods: from its last
//! turn with work to the next one, whether it polled or slept meanwhile.
//! Turns with nothing to do (an epoll timeout, a timer) are not arrivals and
//! teach it nothing.

use std::time::{Duration, Instant};

/// Weight of a new gap in the running mean: 1/8, so a change of rate shows
/// within a few dozen arrivals and one odd gap moves the budget little.
const NEW_GAP_SHIFT: u32 = 3;
/// A gap counts as at most this many ceilings: one long silence must not
/// take hundreds of arrivals to forget.
const GAP_CAP_IN_CEILINGS: u32 = 4;
/// The budget covers this many mean gaps, so that most arrivals of a
/// Poisson stream (86 % at twice the mean) find the loop polling.
const MEAN_GAPS_COVERED: u32 = 2;

/// The budget of one loop: `spin_us`, stretched while arrivals come closer
/// than `spin_max_us`; and when the loop last had work.
#[derive(Debug, Clone)]
pub(crate) struct IdleBudget {
    floor: Duration,
    ceiling: Duration,
    /// Running mean of the idle gaps (each capped), in ns.
    mean_gap_ns: u64,
    last_work: Instant,
    /// Whether no call was in flight after the last work: the idle period
    /// that follows is then a gap between arrivals, not a wait for a worker
    /// (which is the worker's speed, not the clients').
    quiet: bool,
}

impl IdleBudget {
    /// A loop that has seen no arrivals yet (`now`): it assumes they are
    /// sparse, and polls for the floor until they show otherwise.
    pub(crate) fn new(floor: Duration, ceiling: Duration, now: Instant) -> Self {
        let mut budget = Self {
            floor,
            ceiling,
            mean_gap_ns: 0,
            last_work: now,
            quiet: true,
        };
        budget.mean_gap_ns = budget.gap_cap_ns();
        budget
    }

    /// A loop that never sleeps (`poll = "spin"`): it is always within
    /// its budget.
    pub(crate) fn endless(now: Instant) -> Self {
        Self::new(Duration::MAX, Duration::ZERO, now)
    }

    /// The loop did work at `now`, after which `quiet` says whether no call
    /// is in flight.
    pub(crate) fn worked(&mut self, now: Instant, quiet: bool) {
        if self.quiet {
            self.record_gap(now.saturating_duration_since(self.last_work));
        }
        self.last_work = now;
        self.quiet = quiet;
    }

    /// Whether the loop, idle at `now`, should still poll.
    pub(crate) fn polls_at(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_work) < self.budget()
    }

    fn gap_cap_ns(&self) -> u64 {
        nanos(self.ceiling).saturating_mul(u64::from(GAP_CAP_IN_CEILINGS))
    }

    /// Work arrived after `gap` with nothing to do.
    fn record_gap(&mut self, gap: Duration) {
        let gap = nanos(gap).min(self.gap_cap_ns());
        // mean += (gap - mean) / 8, in integers that cannot overflow: both
        // terms are at most the cap.
        self.mean_gap_ns =
            self.mean_gap_ns - (self.mean_gap_ns >> NEW_GAP_SHIFT) + (gap >> NEW_GAP_SHIFT);
    }

    /// How long to keep polling after the last work.
    fn budget(&self) -> Duration {
        if self.ceiling <= self.floor || self.mean_gap_ns > nanos(self.ceiling) {
            return self.floor;
        }
        let cover = Duration::from_nanos(
            self.mean_gap_ns
                .saturating_mul(u64::from(MEAN_GAPS_COVERED)),
        );
        cover.clamp(self.floor, self.ceiling)
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    fn learned(floor_us: u32, ceiling_us: u32, gap_us: u32, arrivals: usize) -> IdleBudget {
        let mut b = IdleBudget::new(floor_us * US, ceiling_us * US, Instant::now());
        for _ in 0..arrivals {
            b.record_gap(gap_us * US);
        }
        b
    }

    #[test]
    fn starts_at_the_floor() {
        assert_eq!(
            IdleBudget::new(500 * US, 2000 * US, Instant::now()).budget(),
            500 * US
        );
    }

    #[test]
    fn covers_twice_the_mean_gap_between_floor_and_ceiling() {
        let b = learned(500, 2000, 700, 100);
        let budget = b.budget();
        assert!(
            budget >= 1390 * US && budget <= 1410 * US,
            "{budget:?} for gaps of 700 us"
        );
        // Gaps the floor covers already: the floor.
        assert_eq!(learned(500, 2000, 100, 100).budget(), 500 * US);
        // Gaps between the ceiling and twice it: the ceiling.
        assert_eq!(learned(500, 2000, 1500, 100).budget(), 2000 * US);
    }

    #[test]
    fn sparse_arrivals_fall_back_to_the_floor() {
        assert_eq!(learned(500, 2000, 2500, 100).budget(), 500 * US);
        assert_eq!(learned(50, 2000, 60_000, 100).budget(), 50 * US);
    }

    #[test]
    fn a_ceiling_at_or_below_the_floor_turns_the_stretch_off() {
        assert_eq!(learned(500, 500, 700, 100).budget(), 500 * US);
        assert_eq!(learned(500, 0, 700, 100).budget(), 500 * US);
    }

    #[test]
    fn one_long_silence_is_forgotten_within_a_few_dozen_arrivals() {
        let mut b = learned(500, 2000, 700, 100);
        b.record_gap(Duration::from_secs(60));
        // Capped at 4 ceilings: the mean is ≈ 1.6 ms, still under the
        // ceiling, so the next gaps are still covered.
        assert_eq!(b.budget(), 2000 * US);
        let mut arrivals = 0;
        while b.budget() > 1500 * US {
            b.record_gap(700 * US);
            arrivals += 1;
            assert!(arrivals < 40, "still {:?}", b.budget());
        }
    }

    #[test]
    fn only_idle_periods_without_calls_in_flight_are_gaps() {
        let t0 = Instant::now();
        let mut b = IdleBudget::new(500 * US, 2000 * US, t0);
        let mut t = t0;
        for _ in 0..100 {
            // An arrival 700 us after the last answer, then three short
            // waits for workers (calls in flight), then the answer.
            t += 700 * US;
            b.worked(t, false);
            for _ in 0..3 {
                t += 5 * US;
                b.worked(t, false);
            }
            t += 5 * US;
            b.worked(t, true);
        }
        assert!(b.budget() >= 1390 * US, "{:?}", b.budget());
        assert!(b.polls_at(t + 1300 * US));
        assert!(!b.polls_at(t + 1500 * US));
    }

    #[test]
    fn an_endless_budget_always_polls() {
        let t0 = Instant::now();
        let mut b = IdleBudget::endless(t0);
        b.worked(t0 + 700 * US, true);
        assert!(b.polls_at(t0 + Duration::from_secs(3600)));
    }

    #[test]
    fn a_change_of_rate_moves_the_budget() {
        let mut b = learned(500, 2000, 700, 100);
        for _ in 0..40 {
            b.record_gap(5000 * US);
        }
        assert_eq!(b.budget(), 500 * US, "the rate dropped: back to the floor");
        for _ in 0..40 {
            b.record_gap(700 * US);
        }
        assert!(b.budget() > 1300 * US, "{:?}", b.budget());
    }
}
