//! Restart back-off for a crashing function: the first restart is immediate (a
//! one-off crash costs no latency), the following ones wait exponentially
//! longer (so a worker that dies at start does not eat a core forking), and
//! once a restarted worker has stayed up for a while the count starts over.
//! Sans-IO: the caller passes the loop's `now` in and schedules the returned
//! delay on its own timer.

use std::time::{Duration, Instant};

/// Exponential restart back-off with reset after a stable run.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    stable_after: Duration,
    crash_loop_after: u32,
    /// Failures since the last stable run.
    consecutive: u32,
    /// When the last failure was recorded and the delay it got: the
    /// replacement started (about) at `at + delay`.
    last: Option<(Instant, Duration)>,
}

impl Default for Backoff {
    /// 100 ms doubling up to 10 s; stable after 10 s up; crash-looping from
    /// the 5th failure in a row.
    fn default() -> Self {
        Self::new(
            Duration::from_millis(100),
            Duration::from_secs(10),
            Duration::from_secs(10),
        )
    }
}

impl Backoff {
    /// Delays start at `min` (for the second failure in a row; the first is
    /// restarted at once), double up to `max`, and the count starts over when
    /// a replacement has been up for `stable_after`.
    pub fn new(min: Duration, max: Duration, stable_after: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            stable_after,
            crash_loop_after: 5,
            consecutive: 0,
            last: None,
        }
    }

    /// Records that a worker died at `now`; returns how long to wait before
    /// starting its replacement.
    pub fn on_failure(&mut self, now: Instant) -> Duration {
        if self.is_stable(now) {
            self.consecutive = 0;
        }
        self.next_delay(now)
    }

    /// Records that a worker could not be started at `now` (its start may
    /// have taken long: a handshake that timed out); returns how long to
    /// wait before the next try. Unlike a death, this is never a stable run
    /// ending: a function none of whose starts succeeds keeps backing off
    /// (it used to look "up for 10 s" after each 10 s handshake timeout, and
    /// was retried at once, forever).
    pub fn on_start_failure(&mut self, now: Instant) -> Duration {
        if self.last.is_none() {
            self.consecutive = 0;
        }
        self.next_delay(now)
    }

    fn next_delay(&mut self, now: Instant) -> Duration {
        let delay = match self.consecutive {
            0 => Duration::ZERO,
            // min * 2^(n-1); any overflow means "past max".
            n => 1u32
                .checked_shl(n - 1)
                .and_then(|factor| self.min.checked_mul(factor))
                .map_or(self.max, |d| d.min(self.max)),
        };
        self.consecutive = self.consecutive.saturating_add(1);
        self.last = Some((now, delay));
        delay
    }

    /// Whether the last replacement has been up for `stable_after` by `now`
    /// (true if nothing ever failed): the next failure restarts at once.
    pub fn is_stable(&self, now: Instant) -> bool {
        match self.last {
            None => true,
            Some((at, delay)) => {
                now.saturating_duration_since(at) >= delay.saturating_add(self.stable_after)
            }
        }
    }

    /// Forgets past failures (e.g. after the function was reconfigured).
    pub fn reset(&mut self) {
        self.consecutive = 0;
        self.last = None;
    }

    /// Failures in a row, without a stable run between them.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive
    }

    /// Whether the function keeps dying young (for the log and status pages).
    pub fn is_crash_looping(&self) -> bool {
        self.consecutive >= self.crash_loop_after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn first_restart_is_immediate_then_exponential_and_capped() {
        let mut b = Backoff::new(100 * MS, 1000 * MS, Duration::from_secs(10));
        let t0 = Instant::now();
        let delays: Vec<_> = (0..7u32).map(|i| b.on_failure(t0 + i * MS)).collect();
        assert_eq!(
            delays,
            [0, 100, 200, 400, 800, 1000, 1000].map(|ms| ms * MS)
        );
        assert_eq!(b.consecutive_failures(), 7);
    }

    #[test]
    fn a_stable_run_starts_the_count_over() {
        let mut b = Backoff::new(100 * MS, 1000 * MS, Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(b.is_stable(t0), "nothing failed yet");
        b.on_failure(t0);
        let d = b.on_failure(t0 + MS);
        assert_eq!(d, 100 * MS);
        // Restarted at t0+1ms+100ms; not yet up for 10 s at t0+10s.
        assert!(!b.is_stable(t0 + Duration::from_secs(10)));
        assert_eq!(b.on_failure(t0 + Duration::from_secs(10)), 200 * MS);
        let last = t0 + Duration::from_secs(10);
        assert!(b.is_stable(last + 200 * MS + Duration::from_secs(10)));
        assert_eq!(b.on_failure(last + Duration::from_secs(11)), Duration::ZERO);
        assert_eq!(b.consecutive_failures(), 1);
    }

    #[test]
    fn start_failures_back_off_however_long_each_start_took() {
        let mut b = Backoff::new(100 * MS, 1000 * MS, Duration::from_secs(10));
        let t0 = Instant::now();
        // Each start fails after a 10 s handshake timeout: never stable.
        let delays: Vec<_> = (0..4u32)
            .map(|i| b.on_start_failure(t0 + i * Duration::from_secs(11)))
            .collect();
        assert_eq!(delays, [0, 100, 200, 400].map(|ms| ms * MS));
        assert_eq!(b.consecutive_failures(), 4);
    }

    #[test]
    fn crash_loop_detection() {
        let mut b = Backoff::default();
        let t0 = Instant::now();
        for i in 0..4u32 {
            b.on_failure(t0 + i * MS);
            assert!(!b.is_crash_looping());
        }
        b.on_failure(t0 + 5 * MS);
        assert!(b.is_crash_looping());
        b.reset();
        assert!(!b.is_crash_looping());
        assert_eq!(b.on_failure(t0 + 6 * MS), Duration::ZERO);
    }

    #[test]
    fn huge_counts_and_durations_do_not_overflow() {
        let mut b = Backoff::new(
            Duration::from_secs(u64::MAX / 4),
            Duration::MAX,
            Duration::MAX,
        );
        let t0 = Instant::now();
        for _ in 0..200 {
            b.on_failure(t0);
            assert!(!b.is_stable(t0));
        }
        assert!(b.is_crash_looping());
    }
}
