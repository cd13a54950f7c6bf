//! Ctrl-C (SIGINT, SIGTERM, SIGHUP) while `bench load` runs: where it
//! stopped, and the stop check every waiting part of a run looks at.
//!
//! The command installs `engine::sys::catch_interrupts`, whose handler
//! only raises a flag; nothing is cut short by the signal itself
//! (`SA_RESTART` resumes blocking calls). So every phase that can wait —
//! the ping-pong baseline, the target check, the window, the drain after
//! it — looks at the flag at least every 50 ms or so, and says which
//! [`Phase`] it was in, so that the message names the phase actually
//! interrupted and a window that had finished is still reported.

use std::fmt;

use super::spec::format_rate;
use super::LoadPlan;

/// Where a signal stopped a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Phase {
    /// The ping-pong baseline (`--pingpong`): nothing was measured yet.
    Baseline,
    /// The target check (and connecting) before the window of `rate`, or
    /// before the baseline (`None`).
    Check {
        /// The rate about to run.
        rate: Option<f64>,
    },
    /// The window of `rate`, which is left out: a cut-short window is no
    /// measurement of its rate.
    Window {
        /// The rate whose window was cut.
        rate: f64,
    },
    /// After the window of `rate` had ended (while its last answers were
    /// awaited, or between rates): that rate is complete and reported; any
    /// request still unanswered counts as a timeout.
    AfterWindow {
        /// The rate that finished.
        rate: f64,
    },
}

impl Phase {
    /// Whether the rate this phase names was measured in full.
    pub fn rate_finished(&self) -> bool {
        matches!(self, Self::AfterWindow { .. })
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Baseline => f.write_str("during the ping-pong baseline"),
            Self::Check { rate: None } => {
                f.write_str("during the target check before the ping-pong baseline")
            }
            Self::Check { rate: Some(r) } => write!(
                f,
                "during the target check before the {}/s window",
                format_rate(r)
            ),
            Self::Window { rate } => write!(f, "during the {}/s window", format_rate(rate)),
            Self::AfterWindow { rate } => {
                write!(f, "after the {}/s window had ended", format_rate(rate))
            }
        }
    }
}

/// The plan's stop check: the signal flag when the plan honours signals
/// ([`LoadPlan::stop_on_signal`]), else never.
pub(crate) fn stop_check(plan: &LoadPlan) -> fn() -> bool {
    if plan.stop_on_signal {
        crate::engine::sys::interrupted
    } else {
        || false
    }
}
