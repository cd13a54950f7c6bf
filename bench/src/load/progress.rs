//! The live progress line `bench load` shows on a terminal while a rate
//! runs, rendered from a snapshot of the client threads' counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::client::LiveCounters;
use super::spec::format_rate;

/// The client threads' counters, summed at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ProgressCounts {
    /// Warm-up requests sent.
    pub warmup_sent: u64,
    /// Warm-up responses received.
    pub warmup_completed: u64,
    /// Measured requests sent.
    pub sent: u64,
    /// Measured responses received.
    pub completed: u64,
    /// Errors the result will count so far.
    pub errors: u64,
}

impl ProgressCounts {
    /// Sums every thread's counters.
    pub fn sum(live: &[Arc<LiveCounters>]) -> Self {
        // Relaxed: statistics, read for display only.
        let sum = |f: fn(&LiveCounters) -> &AtomicU64| {
            live.iter()
                .map(|c| f(c).load(Ordering::Relaxed))
                .sum::<u64>()
        };
        Self {
            warmup_sent: sum(|c| &c.warmup_sent),
            warmup_completed: sum(|c| &c.warmup_completed),
            sent: sum(|c| &c.sent),
            completed: sum(|c| &c.completed),
            errors: sum(|c| &c.errors),
        }
    }
}

/// Where a run is, and how far into that phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunPhase {
    /// Sending on schedule, not recording.
    WarmUp { elapsed: Duration },
    /// The measured window.
    Measuring { elapsed: Duration },
    /// The window has ended; the threads wait (up to `--timeout`) for the
    /// answers still due.
    Draining { elapsed: Duration },
}

impl RunPhase {
    fn at(since_start: Duration, warmup: Duration, window: Duration) -> Self {
        if since_start < warmup {
            Self::WarmUp {
                elapsed: since_start,
            }
        } else if since_start - warmup < window {
            Self::Measuring {
                elapsed: since_start - warmup,
            }
        } else {
            Self::Draining {
                elapsed: since_start - warmup - window,
            }
        }
    }
}

/// The progress line of a run at `rate` with `warmup` and `window`,
/// `since_start` after its start. Each phase shows its own clock and its
/// own requests: the warm-up's time against the warm-up and the warm-up
/// requests, the window's time against the window and the measured
/// requests (the ones the result reports), then the wait for the last
/// answers. A timer running from the start beside counts that start with
/// the window would disagree by the whole warm-up.
pub fn progress_line(
    rate: f64,
    warmup: Duration,
    window: Duration,
    since_start: Duration,
    counts: &ProgressCounts,
) -> String {
    let secs = |d: Duration| d.as_secs_f64();
    let (phase, sent, completed) = match RunPhase::at(since_start, warmup, window) {
        RunPhase::WarmUp { elapsed } => (
            format!("warm-up {:.1}/{:.1}s", secs(elapsed), secs(warmup)),
            counts.warmup_sent,
            counts.warmup_completed,
        ),
        RunPhase::Measuring { elapsed } => (
            format!("measuring {:.1}/{:.1}s", secs(elapsed), secs(window)),
            counts.sent,
            counts.completed,
        ),
        RunPhase::Draining { elapsed } => (
            format!(
                "window done, waiting for the last answers {:.1}s",
                secs(elapsed)
            ),
            counts.sent,
            counts.completed,
        ),
    };
    format!(
        "{}/s {phase}  sent {sent}  done {completed}  errors {}",
        format_rate(rate),
        counts.errors,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const WARMUP: Duration = Duration::from_secs(1);
    const WINDOW: Duration = Duration::from_secs(10);

    fn line_at(since_start_ms: u64, counts: ProgressCounts) -> String {
        progress_line(
            20_000.0,
            WARMUP,
            WINDOW,
            Duration::from_millis(since_start_ms),
            &counts,
        )
    }

    #[test]
    fn the_warm_up_shows_its_own_time_and_requests() {
        let counts = ProgressCounts {
            warmup_sent: 10_000,
            warmup_completed: 9_990,
            ..ProgressCounts::default()
        };
        let line = line_at(500, counts);
        assert!(line.starts_with("20k/s warm-up 0.5/1.0s"), "{line}");
        assert!(
            line.contains("sent 10000") && line.contains("done 9990"),
            "{line}"
        );
    }

    #[test]
    fn the_window_counts_its_time_from_its_own_start() {
        let counts = ProgressCounts {
            warmup_sent: 20_000,
            warmup_completed: 20_000,
            sent: 50_000,
            completed: 49_990,
            errors: 3,
        };
        let line = line_at(3_500, counts);
        assert!(line.starts_with("20k/s measuring 2.5/10.0s"), "{line}");
        assert!(
            line.contains("sent 50000") && line.contains("done 49990") && line.contains("errors 3"),
            "{line}"
        );
    }

    #[test]
    fn after_the_window_the_line_says_it_waits_for_the_last_answers() {
        let counts = ProgressCounts {
            warmup_sent: 20_000,
            warmup_completed: 20_000,
            sent: 200_000,
            completed: 199_000,
            errors: 0,
        };
        let line = line_at(11_300, counts);
        assert!(
            line.starts_with("20k/s window done, waiting for the last answers 0.3s"),
            "{line}"
        );
        assert!(
            line.contains("sent 200000") && line.contains("done 199000"),
            "{line}"
        );
    }

    #[test]
    fn without_a_warm_up_the_run_starts_measuring() {
        let line = progress_line(
            500.0,
            Duration::ZERO,
            Duration::from_secs(2),
            Duration::ZERO,
            &ProgressCounts::default(),
        );
        assert!(line.starts_with("500/s measuring 0.0/2.0s"), "{line}");
    }
}
