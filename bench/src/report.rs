//! Benchmark reports: the JSON schema every bench writes (docs/design.md §7) and the
//! human table printed beside it.
//!
//! ```json
//! {"suite": "ipc",
//!  "machine": {"commit": "…", "cpu_model": "…", "kernel": "…", "cpus": [0, 1],
//!              "core_map": {"driver": [0], "peer": [1]}, "modes": {…},
//!              "command_line": "nocturne bench ipc --quick"},
//!  "cases": [{"name": "ring-spin/64", "samples": 5000, "p50_us": 0.8, "p90_us": …,
//!             "p99_us": …, "p999_us": …, "max_us": …, "ops_per_s": …,
//!             "errors": 0, "parks_per_msg": 1.0}]}
//! ```
//!
//! A case may carry extra fields (flattened into the case object):
//! counts (`offered`, `reconnects`, `workers`, `messages`, …) and process
//! ids as integers, as `samples` and `errors` are, measurements
//! (latencies, rates, ratios, memory) as floats, even when one comes out
//! whole, and yes/no flags (`slo_met`, `kept_up`, `comparison_rate`) as
//! JSON booleans. Readers ignore the fields they don't know.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::hist::LatencyHistogram;

/// One benchmark run: what ran, where, and what it measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Which benchmark (`ipc`, `engine`, `load`, …).
    pub suite: String,
    /// The machine and settings it ran with.
    pub machine: Machine,
    /// One entry per case, in the order they were defined.
    pub cases: Vec<CaseResult>,
}

/// Where and how a report was produced.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// The commit the binary was built from ([`BUILD_COMMIT`]: a short
    /// hash, `-dirty` when built with uncommitted changes, or `"unknown"`),
    /// unless `$NOCTURNE_BENCH_COMMIT` names one.
    pub commit: String,
    /// The CPU model from `/proc/cpuinfo`, or `"unknown"`.
    pub cpu_model: String,
    /// The kernel release (`uname -r`), or `"unknown"`.
    pub kernel: String,
    /// The cores this process was allowed to run on.
    pub cpus: Vec<usize>,
    /// Role → cores, e.g. `{"driver": [0], "peer": [1]}`.
    pub core_map: BTreeMap<String, Vec<usize>>,
    /// Settings that shape the numbers (poll modes, sample counts, …).
    pub modes: BTreeMap<String, String>,
    /// The command line that produced the report.
    pub command_line: String,
}

/// The measurements of one case.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(into = "CaseWire", try_from = "CaseWire")]
pub struct CaseResult {
    /// Case name, `mechanism/payload` by convention (`ring-spin/64`).
    pub name: String,
    /// Number of latency samples behind the percentiles (for a batched
    /// case such as `ring-stream`, the timed windows, each one sample of
    /// the per-message cost; its messages are in an extra field).
    pub samples: u64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 90th percentile, µs.
    pub p90_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// Largest latency, µs.
    pub max_us: f64,
    /// Operations per second (round trips, messages, requests: per case).
    pub ops_per_s: f64,
    /// Failed operations; a case with errors fails the run.
    pub errors: u64,
    /// Case-specific measurements (`parks_per_msg`, `p9999_us`, …),
    /// written as JSON floats.
    pub extra: BTreeMap<String, f64>,
    /// Case-specific counts (`offered`, `reconnects`, …), written as JSON
    /// integers. A key is in `extra` or here, never both; a report read
    /// back has its integer fields here.
    pub counts: BTreeMap<String, u64>,
    /// Case-specific yes/no fields (`slo_met`, `kept_up`, …), written as
    /// JSON booleans, so that a reader never has to guess whether `1.0`
    /// is a measurement or a truth value. A key is in one of `extra`,
    /// `counts` and `flags` only.
    pub flags: BTreeMap<String, bool>,
}

/// A case as it is written: the fixed fields, then the extra ones
/// flattened beside them, counts as integers, measurements as floats and
/// flags as booleans.
#[derive(Serialize, Deserialize)]
struct CaseWire {
    name: String,
    samples: u64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
    ops_per_s: f64,
    errors: u64,
    #[serde(flatten)]
    extra: BTreeMap<String, serde_json::Value>,
}

/// An extra field of a case that is neither a number nor a boolean.
#[derive(Debug, thiserror::Error)]
#[error("case {case:?}: field {field:?} is neither a number nor a boolean")]
pub struct NotANumber {
    /// The case.
    pub case: String,
    /// The field.
    pub field: String,
}

impl From<CaseResult> for CaseWire {
    fn from(c: CaseResult) -> Self {
        let measurements = c
            .extra
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::from(v)));
        let counts = c
            .counts
            .into_iter()
            .map(|(k, n)| (k, serde_json::Value::from(n)));
        let flags = c
            .flags
            .into_iter()
            .map(|(k, b)| (k, serde_json::Value::from(b)));
        Self {
            name: c.name,
            samples: c.samples,
            p50_us: c.p50_us,
            p90_us: c.p90_us,
            p99_us: c.p99_us,
            p999_us: c.p999_us,
            max_us: c.max_us,
            ops_per_s: c.ops_per_s,
            errors: c.errors,
            extra: measurements.chain(counts).chain(flags).collect(),
        }
    }
}

impl TryFrom<CaseWire> for CaseResult {
    type Error = NotANumber;

    fn try_from(w: CaseWire) -> Result<Self, NotANumber> {
        let mut extra = BTreeMap::new();
        let mut counts = BTreeMap::new();
        let mut flags = BTreeMap::new();
        for (field, value) in w.extra {
            // serde_json keeps `7` and `7.0` apart: an integer is a count.
            if let Some(n) = value.as_u64() {
                counts.insert(field, n);
            } else if let Some(b) = value.as_bool() {
                flags.insert(field, b);
            } else if let Some(v) = value.as_f64() {
                extra.insert(field, v);
            } else {
                return Err(NotANumber {
                    case: w.name,
                    field,
                });
            }
        }
        Ok(Self {
            name: w.name,
            samples: w.samples,
            p50_us: w.p50_us,
            p90_us: w.p90_us,
            p99_us: w.p99_us,
            p999_us: w.p999_us,
            max_us: w.max_us,
            ops_per_s: w.ops_per_s,
            errors: w.errors,
            extra,
            counts,
            flags,
        })
    }
}

/// Why a report could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Writing the file failed.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Reading the file failed.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The text is not a report.
    #[error("not a benchmark report")]
    Parse(#[from] serde_json::Error),
}

impl CaseResult {
    /// A case with the percentiles of `latencies` (ns) and no extra fields.
    pub fn from_histogram(
        name: impl Into<String>,
        latencies: &LatencyHistogram,
        ops_per_s: f64,
        errors: u64,
    ) -> Self {
        Self::from_summary(name, &latencies.summary(), ops_per_s, errors)
    }

    /// A case from an already computed summary.
    pub fn from_summary(
        name: impl Into<String>,
        s: &crate::hist::LatencySummary,
        ops_per_s: f64,
        errors: u64,
    ) -> Self {
        Self {
            name: name.into(),
            samples: s.samples,
            p50_us: s.p50_us,
            p90_us: s.p90_us,
            p99_us: s.p99_us,
            p999_us: s.p999_us,
            max_us: s.max_us,
            ops_per_s,
            errors,
            extra: BTreeMap::new(),
            counts: BTreeMap::new(),
            flags: BTreeMap::new(),
        }
    }

    /// Adds (or replaces) an extra measurement, written as a float.
    pub fn with_extra(mut self, key: impl Into<String>, value: f64) -> Self {
        let key = key.into();
        self.counts.remove(&key);
        self.flags.remove(&key);
        self.extra.insert(key, value);
        self
    }

    /// Adds (or replaces) an extra count, written as an integer.
    pub fn with_count(mut self, key: impl Into<String>, count: u64) -> Self {
        let key = key.into();
        self.extra.remove(&key);
        self.flags.remove(&key);
        self.counts.insert(key, count);
        self
    }

    /// Adds (or replaces) an extra yes/no field, written as a boolean.
    pub fn with_flag(mut self, key: impl Into<String>, value: bool) -> Self {
        let key = key.into();
        self.extra.remove(&key);
        self.counts.remove(&key);
        self.flags.insert(key, value);
        self
    }

    /// The extra yes/no field `key`.
    pub fn flag(&self, key: &str) -> Option<bool> {
        self.flags.get(key).copied()
    }

    /// The extra field `key`, count or measurement, as a number.
    pub fn number(&self, key: &str) -> Option<f64> {
        self.counts
            .get(key)
            .map(|&n| n as f64)
            .or_else(|| self.extra.get(key).copied())
    }
}

impl Report {
    /// A report of `cases` for `suite`.
    pub fn new(suite: impl Into<String>, machine: Machine, cases: Vec<CaseResult>) -> Self {
        Self {
            suite: suite.into(),
            machine,
            cases,
        }
    }

    /// The case called `name`, if any.
    pub fn case(&self, name: &str) -> Option<&CaseResult> {
        self.cases.iter().find(|c| c.name == name)
    }

    /// Sum of the errors of every case.
    pub fn total_errors(&self) -> u64 {
        self.cases.iter().map(|c| c.errors).sum()
    }

    /// Pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report of strings and numbers serializes")
    }

    /// Parses a report from JSON.
    pub fn from_json(text: &str) -> Result<Self, ReportError> {
        Ok(serde_json::from_str(text)?)
    }

    /// Writes the JSON to `path` (with a trailing newline).
    pub fn write_json(&self, path: &Path) -> Result<(), ReportError> {
        let mut text = self.to_json();
        text.push('\n');
        std::fs::write(path, text).map_err(|source| ReportError::Write {
            path: path.display().to_string(),
            source,
        })
    }

    /// Writes the JSON to `json`, when given, and says so on stdout
    /// (`wrote PATH`): how each command ends a run with `--json`.
    pub fn write_json_if_asked(&self, json: Option<&Path>) -> Result<(), ReportError> {
        if let Some(path) = json {
            self.write_json(path)?;
            println!("wrote {}", path.display());
        }
        Ok(())
    }

    /// An error naming how many errors the cases counted, if any: `bench
    /// engine` and `bench ipc` fail such a run once it is reported.
    pub fn fail_on_errors(&self) -> anyhow::Result<()> {
        let errors = self.total_errors();
        if errors > 0 {
            anyhow::bail!("{errors} errors (see the errors column)");
        }
        Ok(())
    }

    /// Reads a report written by [`write_json`](Self::write_json).
    pub fn read_json(path: &Path) -> Result<Self, ReportError> {
        let text = std::fs::read_to_string(path).map_err(|source| ReportError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text)
    }

    /// The human table: one row per case; extra fields go in the last column.
    pub fn table(&self) -> String {
        render_table(&self.cases)
    }
}

/// Makes sure a result can be written to `path` when the run ends, before
/// the run starts: a missing directory or a read-only one fails now, not
/// after minutes of measuring. Creates the file's directory (as writing
/// would anyway), then opens the file for appending, which neither
/// truncates an old result nor leaves a new empty file (one it created is
/// removed again).
pub fn prepare_output(path: &Path) -> Result<(), ReportError> {
    let fail = |source| ReportError::Write {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(fail)?;
    if !existed {
        std::fs::remove_file(path).map_err(fail)?;
    }
    Ok(())
}

/// Two outputs of one run that name the same file: the second write
/// would silently replace the first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{first} and {second} name the same file {path}: give each output its own")]
pub struct OutputClash {
    /// The first output's name (its flag).
    pub first: String,
    /// The second output's name.
    pub second: String,
    /// The file both name.
    pub path: String,
}

/// Refuses one file given for two outputs, before a run starts. `outputs`
/// pairs each output's name (its flag, as the message shows it) with its
/// path, if given. Paths are compared made absolute and, where their
/// directories exist, with those resolved (`..`, symbolic links), so that
/// two spellings of one file clash too.
pub fn check_distinct_outputs(outputs: &[(&str, Option<&Path>)]) -> Result<(), OutputClash> {
    let given: Vec<(&str, &Path, PathBuf)> = outputs
        .iter()
        .filter_map(|&(name, path)| path.map(|p| (name, p, comparable(p))))
        .collect();
    for (i, (first, path, key)) in given.iter().enumerate() {
        if let Some((second, ..)) = given[i + 1..].iter().find(|other| &other.2 == key) {
            return Err(OutputClash {
                first: (*first).to_owned(),
                second: (*second).to_owned(),
                path: path.display().to_string(),
            });
        }
    }
    Ok(())
}

/// `path` as comparable as it gets without creating anything: absolute,
/// its directory resolved when it exists.
fn comparable(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let resolved = absolute
        .parent()
        .zip(absolute.file_name())
        .and_then(|(dir, name)| Some(std::fs::canonicalize(dir).ok()?.join(name)));
    resolved.unwrap_or(absolute)
}

/// Formats `cases` as an aligned text table (latencies in µs).
pub fn render_table(cases: &[CaseResult]) -> String {
    let headers = [
        "case", "samples", "p50", "p90", "p99", "p99.9", "max", "ops/s", "errors", "notes",
    ];
    let rows: Vec<[String; 10]> = cases
        .iter()
        .map(|c| {
            let mut notes: Vec<(&String, String)> = c
                .extra
                .iter()
                .map(|(k, v)| (k, format_number(*v)))
                .chain(c.counts.iter().map(|(k, n)| (k, n.to_string())))
                .chain(c.flags.iter().map(|(k, b)| (k, b.to_string())))
                .collect();
            notes.sort();
            let notes = notes
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ");
            [
                c.name.clone(),
                c.samples.to_string(),
                format_us(c.p50_us),
                format_us(c.p90_us),
                format_us(c.p99_us),
                format_us(c.p999_us),
                format_us(c.max_us),
                format_rate(c.ops_per_s),
                c.errors.to_string(),
                notes,
            ]
        })
        .collect();
    let mut widths = headers.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            let last = i + 1 == cells.len();
            // Names and notes align left, numbers right.
            let _ = match (i, last) {
                (0, _) => write!(text, "{cell:<w$}  "),
                (_, true) => write!(text, "{cell}"),
                _ => write!(text, "{cell:>w$}  "),
            };
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&headers.map(String::from));
    for row in &rows {
        line(row);
    }
    out.push_str("(latencies in µs)\n");
    out
}

/// A latency in µs with 3 significant decimals for small values.
fn format_us(us: f64) -> String {
    if us < 100.0 {
        format!("{us:.3}")
    } else if us < 10_000.0 {
        format!("{us:.1}")
    } else {
        format!("{us:.0}")
    }
}

/// A rate with a thousands unit (`1.23M`).
fn format_rate(per_s: f64) -> String {
    if per_s >= 1e6 {
        format!("{:.2}M", per_s / 1e6)
    } else if per_s >= 1e3 {
        format!("{:.1}k", per_s / 1e3)
    } else {
        format!("{per_s:.1}")
    }
}

/// An extra field: integers as integers, others with 3 decimals.
fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

impl Machine {
    /// Probes this machine (commit, CPU model, kernel, allowed cores) and
    /// records the process's command line; `core_map` and `modes` are the
    /// caller's.
    pub fn probe(core_map: BTreeMap<String, Vec<usize>>, modes: BTreeMap<String, String>) -> Self {
        Self {
            commit: git_commit().unwrap_or_else(|| "unknown".into()),
            cpu_model: cpu_model().unwrap_or_else(|| "unknown".into()),
            kernel: kernel_release().unwrap_or_else(|| "unknown".into()),
            cpus: crate::pin::allowed_cores().unwrap_or_default(),
            core_map,
            modes,
            command_line: command_line(),
        }
    }
}

/// The commit this binary was built from (`<short hash>`, `-dirty` when
/// built from a tree with uncommitted changes, or "unknown" when built
/// without git or outside a repository), baked in by `build.rs`.
pub const BUILD_COMMIT: &str = env!("NOCTURNE_BUILD_COMMIT");

/// `$NOCTURNE_BENCH_COMMIT` when set (a binary whose build could not see
/// its repository, labelled by hand), else [`BUILD_COMMIT`]. Not the
/// checkout of the directory the binary runs in: a copied or older binary
/// would claim a commit it was not built from.
fn git_commit() -> Option<String> {
    if let Some(commit) = std::env::var("NOCTURNE_BENCH_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
    {
        return Some(commit.trim().to_owned());
    }
    Some(BUILD_COMMIT.to_owned()).filter(|c| !c.is_empty())
}

/// The first `model name` of `/proc/cpuinfo`.
fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    parse_cpu_model(&text)
}

fn parse_cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_owned())
    })
}

/// The kernel release, as `uname -r` prints it.
fn kernel_release() -> Option<String> {
    let text = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let release = text.trim();
    (!release.is_empty()).then(|| release.to_owned())
}

/// The process's arguments, quoted where a shell would need it.
fn command_line() -> String {
    std::env::args()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./,=:+@%".contains(c));
            if plain {
                arg
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_report() -> Report {
        let mut h = LatencyHistogram::new();
        for ns in 1..=1000u64 {
            h.record_ns(ns * 100);
        }
        let case = CaseResult::from_histogram("ring-park/64", &h, 12_345.5, 0)
            .with_extra("parks_per_msg", 1.0)
            .with_extra("p9999_us", 99.99)
            .with_count("messages", 100_000)
            .with_flag("slo_met", true);
        let machine = Machine {
            commit: "abc".into(),
            cpu_model: "AMD EPYC".into(),
            kernel: "6.1".into(),
            cpus: vec![0, 1],
            core_map: BTreeMap::from([("driver".into(), vec![0]), ("peer".into(), vec![1])]),
            modes: BTreeMap::from([("rounds".into(), "5".into())]),
            command_line: "nocturne bench ipc --quick".into(),
        };
        Report::new("ipc", machine, vec![case])
    }

    #[test]
    fn json_has_the_design_schema() {
        let report = sample_report();
        let value: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(value["suite"], "ipc");
        for key in [
            "commit",
            "cpu_model",
            "kernel",
            "core_map",
            "modes",
            "command_line",
        ] {
            assert!(value["machine"].get(key).is_some(), "machine.{key} missing");
        }
        let case = &value["cases"][0];
        assert_eq!(case["name"], "ring-park/64");
        assert_eq!(case["samples"], 1000);
        assert_eq!(case["errors"], 0);
        for key in [
            "p50_us",
            "p90_us",
            "p99_us",
            "p999_us",
            "max_us",
            "ops_per_s",
        ] {
            assert!(case[key].is_f64(), "{key} is not a float: {case}");
        }
        // Extra fields are flattened into the case object: measurements
        // as floats even when whole, counts as integers.
        assert_eq!(case["parks_per_msg"], 1.0);
        assert!(case["parks_per_msg"].is_f64(), "{case}");
        assert_eq!(case["p9999_us"], 99.99);
        assert!(case["messages"].is_u64(), "{case}");
        assert_eq!(case["messages"], 100_000);
        // Flags are JSON booleans, not 1.0/0.0.
        assert_eq!(case["slo_met"], serde_json::Value::Bool(true));
        assert!(case.get("extra").is_none() && case.get("counts").is_none());
        assert!((case["p50_us"].as_f64().unwrap() - 50.0).abs() < 0.1);
    }

    #[test]
    fn json_round_trips_through_a_file() {
        let report = sample_report();
        assert_eq!(Report::from_json(&report.to_json()).unwrap(), report);
        let path =
            std::env::temp_dir().join(format!("nocturne-report-{}.json", std::process::id()));
        report.write_json(&path).unwrap();
        let back = Report::read_json(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(back, report);
        let case = back.case("ring-park/64").unwrap();
        assert_eq!(case.extra["parks_per_msg"], 1.0);
        assert_eq!(case.counts["messages"], 100_000);
        assert_eq!(case.number("messages"), Some(100_000.0));
        assert_eq!(case.number("parks_per_msg"), Some(1.0));
        assert_eq!(case.flag("slo_met"), Some(true));
        assert_eq!(case.number("slo_met"), None);
        assert!(back.case("nope").is_none());
    }

    #[test]
    fn readers_ignore_unknown_numeric_fields_and_reject_garbage() {
        let text = r#"{"suite":"x","machine":{"commit":"c","cpu_model":"m","kernel":"k",
            "cpus":[0],"core_map":{},"modes":{},"command_line":""},
            "cases":[{"name":"a","samples":1,"p50_us":1.0,"p90_us":1.0,"p99_us":1.0,
            "p999_us":1.0,"max_us":1.0,"ops_per_s":2.0,"errors":3,"rss_mb":7.5,"pids":2}]}"#;
        let report = Report::from_json(text).unwrap();
        assert_eq!(report.cases[0].extra["rss_mb"], 7.5);
        assert_eq!(report.cases[0].counts["pids"], 2);
        let with_flag = text.replace("\"pids\":2", "\"pids\":2,\"kept_up\":false");
        let flagged = Report::from_json(&with_flag).unwrap();
        assert_eq!(flagged.cases[0].flag("kept_up"), Some(false));
        let not_a_number = text.replace("7.5", "\"lots\"");
        let err = Report::from_json(&not_a_number).unwrap_err();
        assert!(err.to_string().contains("not a benchmark report"), "{err}");
        assert_eq!(report.total_errors(), 3);
        assert!(matches!(
            Report::from_json("{\"suite\": 1}"),
            Err(ReportError::Parse(_))
        ));
        assert!(matches!(
            Report::from_json("not json"),
            Err(ReportError::Parse(_))
        ));
        let missing = std::path::Path::new("/nonexistent/nocturne/report.json");
        assert!(matches!(
            Report::read_json(missing),
            Err(ReportError::Read { .. })
        ));
        assert!(matches!(
            sample_report().write_json(missing),
            Err(ReportError::Write { .. })
        ));
    }

    #[test]
    fn outputs_are_checked_before_a_run_and_left_as_they_were() {
        let dir = std::env::temp_dir().join(format!("nocturne-prepare-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // A new file in a new directory: the directory is made, no file left.
        let fresh = dir.join("sub/out.json");
        prepare_output(&fresh).unwrap();
        assert!(dir.join("sub").is_dir() && !fresh.exists());
        // An old result is neither truncated nor removed.
        std::fs::write(&fresh, "old").unwrap();
        prepare_output(&fresh).unwrap();
        assert_eq!(std::fs::read_to_string(&fresh).unwrap(), "old");
        // A path under a file (not a directory) fails, naming the path.
        let err = prepare_output(&fresh.join("x.json")).unwrap_err();
        assert!(err.to_string().contains("x.json"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn one_file_for_two_outputs_is_refused_however_spelled() {
        let dir = std::env::temp_dir().join(format!("nocturne-clash-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let md = dir.join("compare.md");
        let same = dir.join("sub/../compare.md");
        let other = dir.join("compare.json");
        let ok = check_distinct_outputs(&[
            ("--out (compare.md)", Some(&md)),
            ("--json", Some(&other)),
            ("--plot", None),
        ]);
        assert_eq!(ok, Ok(()));
        let err = check_distinct_outputs(&[
            ("--out (compare.md)", Some(&md)),
            ("--plot", None),
            ("--json", Some(&same)),
        ])
        .unwrap_err();
        assert_eq!(
            (err.first.as_str(), err.second.as_str()),
            ("--out (compare.md)", "--json")
        );
        assert!(err.to_string().contains("name the same file"), "{err}");
        // A relative spelling of the same file clashes too.
        let cwd = std::env::current_dir().unwrap();
        let relative = Path::new("x.json");
        assert!(check_distinct_outputs(&[
            ("--json", Some(relative)),
            ("--hgrm", Some(&cwd.join("x.json"))),
        ])
        .is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn table_lists_every_case_with_aligned_columns() {
        let mut report = sample_report();
        report.cases.push(CaseResult {
            name: "pipe/16384".into(),
            samples: 10,
            p50_us: 12.3456,
            p90_us: 150.0,
            p99_us: 20_000.0,
            p999_us: 20_000.0,
            max_us: 20_000.0,
            ops_per_s: 2.5e7,
            errors: 1,
            extra: BTreeMap::new(),
            counts: BTreeMap::new(),
            flags: BTreeMap::from([("kept_up".into(), false)]),
        });
        let table = report.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(
            lines[0].starts_with("case ") && lines[0].ends_with("notes"),
            "{table}"
        );
        assert!(lines[1].starts_with("ring-park/64"), "{table}");
        assert!(
            lines[1].contains("messages=100000 p9999_us=99.990 parks_per_msg=1"),
            "{table}"
        );
        assert!(
            lines[2].contains("12.346") && lines[2].contains("150.0"),
            "{table}"
        );
        assert!(
            lines[2].contains("20000") && lines[2].contains("25.00M"),
            "{table}"
        );
        // The samples column is right-aligned to the same end position.
        let end = |line: &str, cell: &str| line.find(cell).unwrap() + cell.len();
        assert_eq!(end(lines[0], "samples"), end(lines[2], "10"));
        assert!(lines[2].ends_with("kept_up=false"), "{table}");
    }

    #[test]
    fn machine_probe_fills_every_field() {
        let m = Machine::probe(BTreeMap::new(), BTreeMap::new());
        assert!(!m.commit.is_empty() && !m.cpu_model.is_empty() && !m.kernel.is_empty());
        assert!(!m.cpus.is_empty());
        assert!(!m.command_line.is_empty());
        assert_eq!(
            parse_cpu_model("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n"),
            Some("AMD EPYC 7B13".into())
        );
        assert_eq!(parse_cpu_model("processor: 0\n"), None);
    }
}
