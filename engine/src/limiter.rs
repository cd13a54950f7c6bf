//! The per-function concurrency limit, by Little's law (as in Nightcore).
//!
//! The number of calls a function needs in flight to keep up is
//! `arrival rate × time in the system` (Little's law). The limiter keeps
//! exponential moving averages of both and sets
//!
//! ```text
//! limit = clamp(ceil(coef × EMA(service time) × EMA(arrival rate)), min, max)
//! ```
//!
//! Above the limit, calls queue rather than start: on few cores, running
//! more of them at once only adds contention. The dispatcher grows the
//! worker pool toward the limit and shrinks idle workers back toward `min`.
//! A waiting call passes the limit once it has waited an average service
//! time (the averages lag a burst; see `core_loop::dispatch`).
//!
//! The time fed in is a call's whole time in the system (queueing + execution),
//! not its execution alone: with execution time only, a closed-loop client
//! population finds a fixed point at *any* pool size (throughput = pool /
//! service time, so the estimate reproduces the current pool) and an
//! undersized pool never grows. Time in the system counts the queue, so the
//! estimate is the number of calls really wanting service.
//!
//! Time is passed in (nanoseconds on any monotonic clock), never read here, so
//! the arithmetic is tested with a fake clock.

/// Weight of a new sample in both moving averages.
const ALPHA: f64 = 0.05;

/// Little's-law concurrency limit of one function.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimiter {
    coef: f64,
    min: usize,
    max: usize,
    /// EMA of the time between arrivals, ns (`None` until two arrivals are seen).
    interarrival_ns: Option<f64>,
    /// EMA of the time a call spends in the system, ns (`None` until one completion).
    service_ns: Option<f64>,
    last_arrival_ns: Option<u64>,
    limit: usize,
}

impl ConcurrencyLimiter {
    /// A limiter clamped to `[min, max]` (min is raised to at least 1).
    pub fn new(coef: f64, min: usize, max: usize) -> Self {
        let min = min.max(1);
        let max = max.max(min);
        Self {
            coef,
            min,
            max,
            interarrival_ns: None,
            service_ns: None,
            last_arrival_ns: None,
            limit: min,
        }
    }

    /// Records a call arriving at `now_ns`.
    pub fn on_arrival(&mut self, now_ns: u64) {
        if let Some(last) = self.last_arrival_ns {
            let gap = now_ns.saturating_sub(last) as f64;
            self.interarrival_ns = Some(ema(self.interarrival_ns, gap));
        }
        self.last_arrival_ns = Some(now_ns);
        self.recompute();
    }

    /// Records a call that spent `time_ns` in the system (see the module doc).
    pub fn on_completion(&mut self, time_ns: u64) {
        self.service_ns = Some(ema(self.service_ns, time_ns as f64));
        self.recompute();
    }

    fn recompute(&mut self) {
        let wanted = match (self.service_ns, self.interarrival_ns) {
            (Some(service), Some(gap)) => {
                // Arrivals in the same turn share a timestamp: a zero gap is
                // a burst, i.e. a very high rate, not "no data". One
                // nanosecond keeps the division finite; the clamp does the rest.
                // The epsilon keeps float noise (2.0000001) from adding a worker.
                (self.coef * service / gap.max(1.0) - 1e-6).ceil()
            }
            _ => 0.0,
        };
        // `as usize` saturates for huge or NaN values, then the clamp applies.
        self.limit = (wanted as usize).clamp(self.min, self.max);
    }

    /// The current limit on calls in flight.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The averaged arrival rate in calls/s (0 before two arrivals).
    pub fn arrival_rate(&self) -> f64 {
        match self.interarrival_ns {
            Some(gap) if gap > 0.0 => 1e9 / gap,
            _ => 0.0,
        }
    }

    /// The averaged time in the system, ns (0 before the first completion).
    pub fn service_ns(&self) -> f64 {
        self.service_ns.unwrap_or(0.0)
    }
}

fn ema(current: Option<f64>, sample: f64) -> f64 {
    match current {
        None => sample,
        Some(current) => current + ALPHA * (sample - current),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `n` arrivals every `gap_ns` each served in `service_ns`.
    fn drive(l: &mut ConcurrencyLimiter, clock: &mut u64, n: usize, gap_ns: u64, service_ns: u64) {
        for _ in 0..n {
            *clock += gap_ns;
            l.on_arrival(*clock);
            l.on_completion(service_ns);
        }
    }

    #[test]
    fn starts_at_min() {
        let l = ConcurrencyLimiter::new(1.0, 2, 8);
        assert_eq!(l.limit(), 2);
    }

    #[test]
    fn converges_to_littles_law() {
        let mut clock = 0;
        // 10k calls/s (100 µs apart), each 1 ms long: 10 in flight on average.
        let mut l = ConcurrencyLimiter::new(1.0, 1, 64);
        drive(&mut l, &mut clock, 500, 100_000, 1_000_000);
        assert_eq!(l.limit(), 10);
        assert!((l.arrival_rate() - 10_000.0).abs() < 1.0);
        // The coefficient scales it.
        let mut l = ConcurrencyLimiter::new(1.5, 1, 64);
        drive(&mut l, &mut clock, 500, 100_000, 1_000_000);
        assert_eq!(l.limit(), 15);
    }

    #[test]
    fn clamps_to_bounds() {
        let mut clock = 0;
        let mut l = ConcurrencyLimiter::new(1.0, 1, 4);
        drive(&mut l, &mut clock, 500, 1_000, 1_000_000); // wants 1000
        assert_eq!(l.limit(), 4);
        let mut l = ConcurrencyLimiter::new(1.0, 3, 8);
        drive(&mut l, &mut clock, 500, 1_000_000, 1_000); // wants 1
        assert_eq!(l.limit(), 3);
    }

    #[test]
    fn follows_a_load_change() {
        let mut clock = 0;
        let mut l = ConcurrencyLimiter::new(1.0, 1, 100);
        drive(&mut l, &mut clock, 400, 1_000_000, 2_000_000); // 2 in flight
        assert_eq!(l.limit(), 2);
        drive(&mut l, &mut clock, 400, 100_000, 2_000_000); // 20 in flight
        assert_eq!(l.limit(), 20);
        drive(&mut l, &mut clock, 400, 1_000_000, 2_000_000); // back to 2
        assert_eq!(l.limit(), 2);
    }

    #[test]
    fn simultaneous_arrivals_are_a_burst() {
        let mut l = ConcurrencyLimiter::new(1.0, 1, 16);
        l.on_completion(1000);
        assert_eq!(
            l.limit(),
            1,
            "no inter-arrival time measured yet: stay at min"
        );
        for _ in 0..100 {
            l.on_arrival(5);
        }
        assert_eq!(l.limit(), 16, "a burst in one instant wants every worker");
    }

    #[test]
    fn closed_loop_load_grows_the_limit() {
        // 8 clients in a closed loop, each call 20 ms of work. With one worker,
        // calls queue: time in the system is 8 × 20 ms while arrivals come
        // every 20 ms, so the limit asks for 8 at once.
        let mut clock = 0;
        let mut l = ConcurrencyLimiter::new(1.0, 1, 16);
        drive(&mut l, &mut clock, 200, 20_000_000, 160_000_000);
        assert_eq!(l.limit(), 8);
    }
}
