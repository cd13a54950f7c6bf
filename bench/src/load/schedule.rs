//! The open-loop arrival schedule: when each request is *meant* to be sent,
//! as a pure function of the rate, the arrival process and a seed.
//!
//! Nothing here reads a clock. [`ArrivalSchedule::next`] returns the next
//! intended send time as an offset from the start of the run, so a test can
//! check the exact times with a fake clock, and the client threads measure
//! every latency from these times (coordinated-omission correction): a
//! request that had to wait for a connection, or whose thread was preempted,
//! is late by exactly the time it waited.
//!
//! With T client threads the offered rate R is split T ways. Fixed arrivals
//! interleave: thread i sends at `(i + kT)/R`, so the merged stream is
//! evenly spaced at `1/R`. Poisson arrivals give each thread its own
//! stream of rate R/T from its own seed; a sum of independent Poisson
//! processes is a Poisson process of the summed rate.
//!
//! [`KindPicker`] draws the request kind of each arrival from the mix's
//! weights with its own seeded generator.

use std::time::Duration;

/// How intended send times are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arrival {
    /// Evenly spaced, `1/rate` apart (wrk2's schedule).
    Fixed,
    /// A Poisson process: exponentially distributed gaps of mean `1/rate`.
    Poisson,
}

impl Arrival {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fixed => "fixed",
            Self::Poisson => "poisson",
        }
    }
}

/// A small, fast, seedable generator (xoshiro256++, seeded by SplitMix64):
/// reproducible runs without a dependency, good enough for arrival gaps.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator whose whole sequence is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        let mut next = || {
            sm = sm.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = sm;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Self {
            s: [next(), next(), next(), next()],
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A uniform number in (0, 1]: never 0, so `ln` of it is finite.
    pub fn next_open01(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
}

/// The intended send times of one client thread.
#[derive(Debug, Clone)]
pub struct ArrivalSchedule {
    arrival: Arrival,
    /// Nanoseconds between arrivals of this thread (mean, for Poisson).
    gap_ns: f64,
    /// Fixed: the offset of this thread's first arrival.
    offset_ns: f64,
    /// Fixed: arrivals returned so far (times are computed, not summed, so
    /// they never drift).
    index: u64,
    /// Poisson: the last time returned.
    now_ns: f64,
    rng: Rng,
}

impl ArrivalSchedule {
    /// The schedule of thread `thread` of `threads` for a total rate of
    /// `rate` requests/s. Poisson streams draw from `seed` (mixed with the
    /// thread index, so threads are independent).
    ///
    /// # Panics
    /// If `rate` is not positive and finite or `thread >= threads`: callers
    /// validate both ([`parse_rate`](super::spec::parse_rate)).
    pub fn for_thread(
        arrival: Arrival,
        rate: f64,
        thread: usize,
        threads: usize,
        seed: u64,
    ) -> Self {
        assert!(rate.is_finite() && rate > 0.0, "rate must be positive");
        assert!(thread < threads, "thread index out of range");
        let total_gap_ns = 1e9 / rate;
        Self {
            arrival,
            gap_ns: total_gap_ns * threads as f64,
            offset_ns: total_gap_ns * thread as f64,
            index: 0,
            now_ns: 0.0,
            rng: Rng::new(seed ^ (thread as u64).wrapping_mul(0xa076_1d64_78bd_642f)),
        }
    }

    /// The schedule of a single thread at `rate`.
    pub fn new(arrival: Arrival, rate: f64, seed: u64) -> Self {
        Self::for_thread(arrival, rate, 0, 1, seed)
    }

    /// The next intended send time, from the start of the run. Fixed
    /// schedules start at the thread's offset (0 for thread 0); Poisson
    /// ones after a first random gap.
    // Not `Iterator::next`: the schedule never ends, so an `Option` would
    // only add an `unwrap` to every caller.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Duration {
        Duration::from_nanos(self.next_ns())
    }

    /// Nanoseconds between this thread's arrivals (the mean, for Poisson).
    pub fn mean_gap_ns(&self) -> f64 {
        self.gap_ns
    }

    /// [`next`](Self::next) in nanoseconds.
    pub fn next_ns(&mut self) -> u64 {
        match self.arrival {
            Arrival::Fixed => {
                let t = self.offset_ns + self.index as f64 * self.gap_ns;
                self.index += 1;
                t.round() as u64
            }
            Arrival::Poisson => {
                self.now_ns += -self.rng.next_open01().ln() * self.gap_ns;
                self.now_ns.round() as u64
            }
        }
    }
}

/// Picks the kind of each request from the mix's weights.
#[derive(Debug, Clone)]
pub struct KindPicker {
    /// Running sums of the weights; the last one is the total.
    cumulative: Vec<u64>,
    rng: Rng,
}

impl KindPicker {
    /// A picker over kinds with these weights (at least one positive).
    ///
    /// # Panics
    /// If every weight is 0: the mix parser rejects that.
    pub fn new(weights: &[u32], seed: u64) -> Self {
        let cumulative: Vec<u64> = weights
            .iter()
            .scan(0u64, |sum, &w| {
                *sum += u64::from(w);
                Some(*sum)
            })
            .collect();
        assert!(
            cumulative.last().is_some_and(|&t| t > 0),
            "a mix needs a positive weight"
        );
        Self {
            cumulative,
            rng: Rng::new(seed ^ 0x5bd1_e995_5bd1_e995),
        }
    }

    /// `count` requests split over the kinds in proportion to their
    /// weights (largest remainders first), summing to `count`: what
    /// [`pick`](Self::pick) would give on average.
    pub fn shares(&self, count: u64) -> Vec<u64> {
        let total = u128::from(*self.cumulative.last().expect("non-empty, checked in new"));
        let weights: Vec<u128> = std::iter::once(0)
            .chain(self.cumulative.iter().copied())
            .collect::<Vec<u64>>()
            .windows(2)
            .map(|w| u128::from(w[1] - w[0]))
            .collect();
        let exact: Vec<u128> = weights.iter().map(|&w| u128::from(count) * w).collect();
        let mut shares: Vec<u64> = exact.iter().map(|&e| (e / total) as u64).collect();
        let mut left = count - shares.iter().sum::<u64>();
        let mut order: Vec<usize> = (0..shares.len()).collect();
        order.sort_by_key(|&k| std::cmp::Reverse(exact[k] % total));
        for k in order {
            if left == 0 {
                break;
            }
            if weights[k] > 0 {
                shares[k] += 1;
                left -= 1;
            }
        }
        shares
    }

    /// The index of the next request's kind.
    pub fn pick(&mut self) -> usize {
        let total = *self.cumulative.last().expect("non-empty, checked in new");
        if self.cumulative.len() == 1 {
            return 0;
        }
        // Multiply-shift maps 64 random bits onto 0..total without modulo bias
        // worth mentioning (total is tiny against 2^64).
        let r = ((u128::from(self.rng.next_u64()) * u128::from(total)) >> 64) as u64;
        self.cumulative.partition_point(|&c| c <= r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_open() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let mut c = Rng::new(8);
        let xs: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        let zs: Vec<u64> = (0..8).map(|_| c.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
        for _ in 0..10_000 {
            let u = a.next_open01();
            assert!(u > 0.0 && u <= 1.0);
        }
    }

    #[test]
    fn shares_follow_the_weights_and_sum_up() {
        let p = KindPicker::new(&[0, 3, 0, 1], 1);
        assert_eq!(p.shares(8), vec![0, 6, 0, 2]);
        assert_eq!(p.shares(3), vec![0, 2, 0, 1]);
        assert_eq!(p.shares(0), vec![0, 0, 0, 0]);
        let q = KindPicker::new(&[1, 1, 1], 1);
        assert_eq!(q.shares(10).iter().sum::<u64>(), 10);
        assert_eq!(KindPicker::new(&[5], 1).shares(7), vec![7]);
    }

    #[test]
    fn zero_weights_are_never_picked() {
        let mut p = KindPicker::new(&[0, 3, 0, 1], 1);
        let mut counts = [0u32; 4];
        for _ in 0..4_000 {
            counts[p.pick()] += 1;
        }
        assert_eq!(counts[0], 0);
        assert_eq!(counts[2], 0);
        assert!(counts[1] > 2 * counts[3], "{counts:?}");
    }
}
