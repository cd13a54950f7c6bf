//! A worker's log budget: a token bucket of log bytes, so that a worker whose
//! output floods (a loop that prints, binary data on stdout) cannot fill the
//! engine's log, or the disk under it. The engine's log drops lines only when
//! its reader falls behind, and a file never does: six calls of a handler
//! writing 30 MB each grew a log file by 860 MB.
//!
//! Each line costs the bytes it takes in the log (tag and escapes included).
//! Past the budget the worker's lines are dropped — its pipes are still read
//! at once, the worker never waits — until the bucket has refilled by
//! [`RESUME_BYTES`]; that ends the *episode*, and one note says how many bytes
//! it dropped. Sans-IO: the caller passes `now` in.

use std::time::{Duration, Instant};

/// Log bytes a worker may write at once after a quiet spell: a start-up
/// banner, a long stack trace, a burst of a few thousand ordinary lines all
/// pass.
pub const BURST_BYTES: u64 = 1 << 20;

/// Log bytes per second a worker may write for good: about 2 500 lines of
/// 100 bytes a second, far more than a function that logs (rather than
/// dumps data) writes, and a log that grows by at most 22 GB a day per
/// worker in the worst case instead of as fast as a pipe goes.
pub const RATE_BYTES_PER_SEC: u64 = 256 << 10;

/// A drop episode ends once the bucket holds this much again: a second of
/// [`RATE_BYTES_PER_SEC`]. A worker that floods without pause then gets one
/// note a second, each followed by a second's worth of its lines, instead of
/// a note between every two lines that squeeze through.
pub const RESUME_BYTES: u64 = RATE_BYTES_PER_SEC;

/// One worker's bucket (its stdout and stderr share it).
#[derive(Clone, Debug)]
pub(crate) struct LogBudget {
    /// Bytes that may be logged now, at most [`BURST_BYTES`].
    tokens: f64,
    refilled_at: Instant,
    /// Output bytes dropped in the episode under way, if one is.
    dropping: Option<u64>,
}

impl LogBudget {
    /// A full bucket.
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            tokens: BURST_BYTES as f64,
            refilled_at: now,
            dropping: None,
        }
    }

    /// Whether a line of `len` bytes of output that takes `cost()` bytes in
    /// the log may be logged; if not, its bytes are counted as dropped. Call
    /// [`end_episode`](Self::end_episode) first. `cost` is not called in an
    /// episode: a flood's lines are dropped without being measured.
    pub(crate) fn admit(&mut self, len: u64, now: Instant, cost: impl FnOnce() -> u64) -> bool {
        self.refill(now);
        if let Some(dropped) = &mut self.dropping {
            *dropped += len;
            return false;
        }
        let cost = cost();
        if self.tokens >= cost as f64 {
            self.tokens -= cost as f64;
            return true;
        }
        self.dropping = Some(len);
        false
    }

    /// Ends the drop episode under way if the bucket has refilled by
    /// [`RESUME_BYTES`]: the output bytes it dropped, for its note.
    pub(crate) fn end_episode(&mut self, now: Instant) -> Option<u64> {
        self.refill(now);
        if self.tokens >= RESUME_BYTES as f64 {
            self.dropping.take()
        } else {
            None
        }
    }

    /// Ends the drop episode under way, if any, whatever the bucket holds:
    /// the worker's output has ended.
    pub(crate) fn finish(&mut self) -> Option<u64> {
        self.dropping.take()
    }

    /// Whether a drop episode is under way.
    pub(crate) fn dropping(&self) -> bool {
        self.dropping.is_some()
    }

    /// How long until [`end_episode`](Self::end_episode) ends the episode
    /// under way; `None` when none is.
    pub(crate) fn episode_ends_in(&self, now: Instant) -> Option<Duration> {
        self.dropping?;
        let elapsed = now.saturating_duration_since(self.refilled_at);
        let tokens = self.tokens + elapsed.as_secs_f64() * RATE_BYTES_PER_SEC as f64;
        let missing = (RESUME_BYTES as f64 - tokens).max(0.0);
        // Rounded up: woken a little late rather than too early (and then
        // at once again, for the last fraction of a byte).
        Some(
            Duration::from_secs_f64(missing / RATE_BYTES_PER_SEC as f64) + Duration::from_millis(1),
        )
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled_at);
        if elapsed.is_zero() {
            return;
        }
        self.tokens = (self.tokens + elapsed.as_secs_f64() * RATE_BYTES_PER_SEC as f64)
            .min(BURST_BYTES as f64);
        self.refilled_at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: u64 = 100;

    /// Admits `LINE`-byte lines until one is refused; how many passed.
    fn lines_until_refused(budget: &mut LogBudget, now: Instant) -> u64 {
        let mut passed = 0;
        while budget.admit(LINE, now, || LINE) {
            passed += 1;
        }
        passed
    }

    #[test]
    fn a_burst_passes_and_the_rest_is_dropped_until_the_bucket_refills() {
        let start = Instant::now();
        let mut budget = LogBudget::new(start);
        assert_eq!(lines_until_refused(&mut budget, start), BURST_BYTES / LINE);
        // The refused line opened an episode: everything is dropped, even
        // once a line would fit again, until RESUME_BYTES have come back.
        let later = start + Duration::from_millis(100);
        assert_eq!(budget.end_episode(later), None);
        assert!(!budget.admit(7, later, || LINE));
        let ends_in = budget.episode_ends_in(later).unwrap();
        let expected = Duration::from_secs(1) - Duration::from_millis(100);
        assert!(
            ends_in >= expected && ends_in < expected + Duration::from_millis(5),
            "{ends_in:?}"
        );
        // The note counts the output dropped: the refused line and the next.
        assert_eq!(budget.end_episode(later + ends_in), Some(LINE + 7));
        assert_eq!(budget.episode_ends_in(later + ends_in), None);
        assert!(budget.admit(LINE, later + ends_in, || LINE));
    }

    #[test]
    fn a_steady_flood_gets_the_rate_and_one_episode_a_second() {
        let start = Instant::now();
        let mut budget = LogBudget::new(start);
        let mut logged = 0;
        let mut notes = 0;
        // A 1000-line write every millisecond for 10 s.
        for ms in 0..10_000 {
            let now = start + Duration::from_millis(ms);
            for _ in 0..1000 {
                if budget.end_episode(now).is_some() {
                    notes += 1;
                }
                if budget.admit(LINE, now, || LINE) {
                    logged += LINE;
                }
            }
        }
        let allowed = BURST_BYTES + 10 * RATE_BYTES_PER_SEC;
        assert!(logged <= allowed, "{logged} > {allowed}");
        // Less only by what the last episode had not yet let through.
        assert!(logged >= allowed - 2 * RESUME_BYTES, "{logged}");
        assert!((9..=10).contains(&notes), "{notes} notes");
    }

    #[test]
    fn quiet_time_refills_up_to_the_burst_only() {
        let start = Instant::now();
        let mut budget = LogBudget::new(start);
        lines_until_refused(&mut budget, start);
        let later = start + Duration::from_secs(3600);
        assert_eq!(budget.end_episode(later), Some(LINE));
        assert_eq!(lines_until_refused(&mut budget, later), BURST_BYTES / LINE);
        assert_eq!(budget.finish(), Some(LINE));
        assert_eq!(budget.finish(), None);
    }
}
