//! Running the `nocturne` binary to completion, for the tests of the
//! `bench` subcommands (`bench_engine.rs`, `bench_compare.rs`,
//! `bench_load.rs`, `bench_commit.rs`): a scratch directory for its output,
//! a run with a time limit and no inherited `NOCTURNE_*` variables (a test
//! sets the ones it means on [`command`]), optionally watched in `/proc`
//! while it runs, the two-core precondition of the benches' defaults, and a
//! `/proc` scan for leftover processes, and a run interrupted with SIGINT
//! once it reached a given phase.

#![allow(dead_code)] // each test binary uses a different part

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a finished run printed and how it ended.
pub struct Run {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
    pub pid: u32,
}

impl Run {
    /// Fails the test, showing both outputs, unless the run succeeded.
    #[track_caller]
    pub fn assert_success(&self) {
        assert!(
            self.success,
            "the run failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
    }
}

/// A scratch directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A directory named after the test binary, `tag` and this process.
    pub fn new(tag: &str) -> Self {
        let binary = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "test".into());
        let dir =
            std::env::temp_dir().join(format!("nocturne-{binary}-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `nocturne` without the `NOCTURNE_*` variables of the test's environment.
pub fn command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nocturne"));
    for (key, _) in std::env::vars() {
        if key.starts_with("NOCTURNE_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Runs `nocturne ARGS` to completion, its output into `scratch`; kills it
/// and fails the test if it runs past `limit`.
pub fn nocturne(args: &[&str], scratch: &Scratch, limit: Duration) -> Run {
    run_to_completion(
        command(),
        args,
        scratch,
        limit,
        Duration::from_millis(50),
        |_| {},
    )
}

/// As [`nocturne`], but from `cmd` (e.g. [`command`] with a variable set),
/// calling `watch` with the child's pid about every 10 ms while it runs,
/// so that a test can look at the running process in `/proc`.
pub fn nocturne_watched(
    cmd: Command,
    args: &[&str],
    scratch: &Scratch,
    limit: Duration,
    watch: impl FnMut(u32),
) -> Run {
    run_to_completion(cmd, args, scratch, limit, Duration::from_millis(10), watch)
}

fn run_to_completion(
    cmd: Command,
    args: &[&str],
    scratch: &Scratch,
    limit: Duration,
    every: Duration,
    mut watch: impl FnMut(u32),
) -> Run {
    let (mut child, out_path, err_path) = spawn_into(cmd, args, scratch);
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "nocturne {args:?} ran past {limit:?}; stdout:\n{}\nstderr:\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default(),
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        watch(child.id());
        std::thread::sleep(every);
    };
    Run {
        success: status.success(),
        stdout: std::fs::read_to_string(&out_path).unwrap(),
        stderr: std::fs::read_to_string(&err_path).unwrap(),
        pid: child.id(),
    }
}

/// Whether cores 0 and 1, which `bench`'s defaults use, are allowed. When
/// they are not, the test fails with the reason, unless
/// `NOCTURNE_SKIP_MULTICORE=1` turns that into an announced skip.
pub fn have_cores_0_and_1(bench: &str) -> bool {
    let allowed = nocturne_bench::pin::allowed_cores().unwrap_or_default();
    let ok = allowed.contains(&0) && allowed.contains(&1);
    if !ok {
        // Nothing skips silently: only an explicit opt-out lets it pass.
        assert!(
            std::env::var_os("NOCTURNE_SKIP_MULTICORE").is_some(),
            "{bench}'s defaults need cores 0 and 1, allowed: {allowed:?} \
             (set NOCTURNE_SKIP_MULTICORE=1 to skip the tests that need two cores)"
        );
        eprintln!(
            "skipped (NOCTURNE_SKIP_MULTICORE): {bench}'s defaults need cores 0 and 1, \
             allowed: {allowed:?}"
        );
    }
    ok
}

/// Live processes (not zombies) whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let path = entry.path();
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        // Zombies (state Z) are gone in every sense that matters here.
        let state = stat
            .rfind(')')
            .and_then(|close| stat[close + 1..].split_whitespace().next());
        if state == Some("Z") {
            continue;
        }
        let Ok(cmdline) = std::fs::read(path.join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(needle) {
            found.push(format!("{}: {text}", path.display()));
        }
    }
    found
}

/// A `--json` report (docs/design.md §7) read back.
pub fn read_report(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read the report {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("report {} is not JSON: {e}", path.display()))
}

/// The names of a report's cases, in order.
pub fn case_names(report: &serde_json::Value) -> Vec<&str> {
    report["cases"]
        .as_array()
        .unwrap_or_else(|| panic!("no cases: {report}"))
        .iter()
        .map(|c| {
            c["name"]
                .as_str()
                .unwrap_or_else(|| panic!("unnamed case: {c}"))
        })
        .collect()
}

/// A run stopped by SIGINT, and how long it took to end after the signal.
pub struct Interrupted {
    pub run: Run,
    pub after_signal: Duration,
}

/// Starts `nocturne ARGS`, waits (up to `start_limit`) until its stderr
/// shows `marker` (the phase to interrupt has begun), lets it run `into`
/// that phase, sends SIGINT to the bench process alone (not its servers:
/// the bench must stop those itself), and waits up to `stop_limit` for
/// it to end. Fails the test (killing it) past either limit.
pub fn interrupt_when(
    args: &[&str],
    scratch: &Scratch,
    marker: &str,
    into: Duration,
    start_limit: Duration,
    stop_limit: Duration,
) -> Interrupted {
    let (mut child, out_path, err_path) = spawn_into(command(), args, scratch);
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    let fail = |child: &mut std::process::Child, why: String| {
        let _ = child.kill();
        let _ = child.wait();
        format!(
            "nocturne {args:?}: {why}; stdout:\n{}\nstderr:\n{}",
            read(&out_path),
            read(&err_path)
        )
    };
    let started = Instant::now();
    while !read(&err_path).contains(marker) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "{}",
                fail(&mut child, format!("ended ({status}) before {marker:?}"))
            );
        }
        if started.elapsed() > start_limit {
            panic!(
                "{}",
                fail(&mut child, format!("no {marker:?} within {start_limit:?}"))
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(into);
    let signalled = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    if !signalled {
        panic!("{}", fail(&mut child, "kill -INT failed".into()));
    }
    let sent = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if sent.elapsed() > stop_limit {
            panic!(
                "{}",
                fail(
                    &mut child,
                    format!("still running {stop_limit:?} after SIGINT")
                )
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Interrupted {
        after_signal: sent.elapsed(),
        run: Run {
            success: status.success(),
            stdout: read(&out_path),
            stderr: read(&err_path),
            pid: child.id(),
        },
    }
}

/// The files in the temp directory whose names start with `prefix`.
pub fn temp_files_starting(prefix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect()
}

/// Starts `cmd ARGS` with its stdout and stderr in files of `scratch`;
/// returns the child and the two paths.
fn spawn_into(
    mut cmd: Command,
    args: &[&str],
    scratch: &Scratch,
) -> (std::process::Child, PathBuf, PathBuf) {
    let out_path = scratch.0.join("stdout");
    let err_path = scratch.0.join("stderr");
    let child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("start nocturne");
    (child, out_path, err_path)
}
