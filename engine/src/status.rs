//! Engine-wide status counters, written by core loops, read by `/healthz` and
//! `/system/functions`.
//!
//! Each core loop owns one row of counters per function and only ever *stores*
//! into its own row (no read-modify-write, no shared cache line between loops);
//! a reader sums the rows. Counters are advisory snapshots, so `Relaxed` is
//! enough everywhere: no other memory is published through them.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// One loop's counters for one function, padded to its own cache line.
#[derive(Default)]
#[repr(align(64))]
struct Row {
    workers: AtomicU32,
    in_flight: AtomicU32,
    queued: AtomicU32,
    crash_looping: AtomicBool,
}

/// A function's counters summed over all loops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionStatus {
    /// Function name.
    pub name: String,
    /// Workers ready to serve (started, handshake done).
    pub workers: u32,
    /// Calls running in a worker.
    pub in_flight: u32,
    /// Calls waiting for a worker.
    pub queued: u32,
    /// Configured minimum.
    pub min_workers: u32,
    /// Whether its workers keep dying (restarts are being backed off).
    pub crash_looping: bool,
}

/// Counters for `loops × functions`.
pub struct EngineStatus {
    names: Vec<String>,
    min_workers: Vec<u32>,
    rows: Vec<Row>,
}

impl EngineStatus {
    /// Counters for `loops` core loops serving functions with these names and minimums.
    pub fn new(loops: usize, functions: &[(String, u32)]) -> Self {
        Self {
            names: functions.iter().map(|(n, _)| n.clone()).collect(),
            min_workers: functions.iter().map(|(_, m)| *m).collect(),
            rows: (0..loops * functions.len())
                .map(|_| Row::default())
                .collect(),
        }
    }

    fn row(&self, core_loop: usize, function: usize) -> &Row {
        &self.rows[core_loop * self.names.len() + function]
    }

    /// Publishes one loop's counters for one function.
    pub fn publish(
        &self,
        core_loop: usize,
        function: usize,
        workers: u32,
        in_flight: u32,
        queued: u32,
    ) {
        let row = self.row(core_loop, function);
        // Relaxed: standalone statistics, nothing is published through them.
        row.workers.store(workers, Ordering::Relaxed);
        row.in_flight.store(in_flight, Ordering::Relaxed);
        row.queued.store(queued, Ordering::Relaxed);
    }

    /// Publishes whether a loop is backing off restarts of a function.
    pub fn set_crash_looping(&self, core_loop: usize, function: usize, looping: bool) {
        // Relaxed: see the module doc.
        self.row(core_loop, function)
            .crash_looping
            .store(looping, Ordering::Relaxed);
    }

    /// Summed counters of every function.
    pub fn snapshot(&self) -> Vec<FunctionStatus> {
        let loops = if self.names.is_empty() {
            0
        } else {
            self.rows.len() / self.names.len()
        };
        self.names
            .iter()
            .enumerate()
            .map(|(f, name)| {
                let mut s = FunctionStatus {
                    name: name.clone(),
                    workers: 0,
                    in_flight: 0,
                    queued: 0,
                    min_workers: self.min_workers[f],
                    crash_looping: false,
                };
                for l in 0..loops {
                    let row = self.row(l, f);
                    // Relaxed: see the module doc.
                    s.workers += row.workers.load(Ordering::Relaxed);
                    s.in_flight += row.in_flight.load(Ordering::Relaxed);
                    s.queued += row.queued.load(Ordering::Relaxed);
                    s.crash_looping |= row.crash_looping.load(Ordering::Relaxed);
                }
                s
            })
            .collect()
    }

    /// Whether every function has at least its minimum of ready workers.
    pub fn healthy(&self) -> bool {
        self.snapshot().iter().all(|f| f.workers >= f.min_workers)
    }

    /// The `/system/functions` body: a JSON array of
    /// `{"name", "workers", "in_flight", "queued", "crash_looping"}`.
    pub fn functions_json(&self) -> String {
        let mut out = String::from("[");
        for (i, f) in self.snapshot().iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&format!(
                "{{\"name\":{},\"workers\":{},\"in_flight\":{},\"queued\":{},\"crash_looping\":{}}}",
                json_string(&f.name),
                f.workers,
                f.in_flight,
                f.queued,
                f.crash_looping
            ));
        }
        out.push(']');
        out
    }
}

/// Quotes `s` as a JSON string.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_rows_of_all_loops() {
        let st = EngineStatus::new(2, &[("a".into(), 1), ("b".into(), 2)]);
        st.publish(0, 0, 1, 3, 0);
        st.publish(1, 0, 1, 2, 5);
        st.publish(0, 1, 1, 0, 0);
        assert!(!st.healthy(), "b has 1 of 2 workers");
        st.publish(1, 1, 1, 0, 0);
        assert!(st.healthy());
        let snap = st.snapshot();
        assert_eq!(
            (snap[0].workers, snap[0].in_flight, snap[0].queued),
            (2, 5, 5)
        );
        st.set_crash_looping(1, 1, true);
        assert_eq!(
            st.functions_json(),
            r#"[{"name":"a","workers":2,"in_flight":5,"queued":5,"crash_looping":false},{"name":"b","workers":2,"in_flight":0,"queued":0,"crash_looping":true}]"#
        );
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n"), r#""a\"b\\c\u000a""#);
    }
}
