//! A server's memory when a case ran, and how the case reports it:
//! `rss_mb` (the server's `VmRSS`), and for an engine its `workers` (a
//! count, so a JSON integer) and their summed `workers_rss_mb`.

use super::procfs;
use super::server::ServerProcess;
use crate::report::CaseResult;

/// Memory of a server (and of an engine's workers) at one moment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ServerMemory {
    /// The server's resident memory, MiB (three decimals).
    pub rss_mb: f64,
    /// The engine's worker processes and their summed resident memory,
    /// MiB; `None` for a server with no workers to report (the floor).
    pub workers: Option<(u64, f64)>,
}

impl ServerMemory {
    /// Reads `process`'s memory and its workers' now.
    pub fn of(process: &ServerProcess) -> Self {
        let workers = process.children();
        let workers_rss: f64 = workers.iter().filter_map(|w| procfs::rss_mib(w.pid)).sum();
        Self {
            rss_mb: round3(process.rss_mib()),
            workers: Some((workers.len() as u64, round3(workers_rss))),
        }
    }

    /// The server's own memory only (the floor server has no workers, and
    /// reporting 0 of them would read as an engine that lost its pool).
    pub fn server_only(self) -> Self {
        Self {
            workers: None,
            ..self
        }
    }

    /// `case` with these fields added, except those it already has (the
    /// soak case's `rss_mb` is its own reading at the end of its run).
    pub fn note_on(&self, mut case: CaseResult) -> CaseResult {
        let absent = |case: &CaseResult, key: &str| case.number(key).is_none();
        if absent(&case, "rss_mb") {
            case = case.with_extra("rss_mb", self.rss_mb);
        }
        if let Some((count, rss_mb)) = self.workers {
            if absent(&case, "workers") {
                case = case.with_count("workers", count);
            }
            if absent(&case, "workers_rss_mb") {
                case = case.with_extra("workers_rss_mb", rss_mb);
            }
        }
        case
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hist::LatencyHistogram;

    fn case() -> CaseResult {
        CaseResult::from_histogram("c", &LatencyHistogram::new(), 0.0, 0)
    }

    #[test]
    fn workers_are_a_count_and_a_case_keeps_its_own_readings() {
        let memory = ServerMemory {
            rss_mb: 12.5,
            workers: Some((7, 30.25)),
        };
        let noted = memory.note_on(case());
        assert_eq!(noted.counts["workers"], 7);
        assert_eq!(noted.extra["rss_mb"], 12.5);
        assert_eq!(noted.extra["workers_rss_mb"], 30.25);
        let json = serde_json::to_value(&noted).unwrap();
        assert!(json["workers"].is_u64(), "{json}");
        // The soak case's rss_mb is its own; the rest is added.
        let soak = memory.note_on(case().with_extra("rss_mb", 99.0));
        assert_eq!(soak.extra["rss_mb"], 99.0);
        assert_eq!(soak.counts["workers"], 7);
        // The floor reports its memory, and no workers.
        let floor = memory.server_only().note_on(case());
        assert_eq!(floor.extra["rss_mb"], 12.5);
        assert_eq!(floor.number("workers"), None);
        assert_eq!(floor.number("workers_rss_mb"), None);
    }
}
