//! `nocturne bench load` through the real binary: against a real
//! `nocturne serve` (the JSON report of a short run), against bad targets
//! (a clear error and a non-zero exit), and against its own hidden echo
//! server (`bench load-echo-server`) with the ping-pong baseline. Timing is
//! never asserted; counts, exit statuses and messages are.

mod bench_run;
mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bench_run::{case_names, read_report, Run, Scratch};
use common::{EchoProcess, Engine};

/// A debug build on a busy 2-core machine is slow; each run is a second or two.
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// Runs `nocturne ARGS` to completion (killed past [`RUN_LIMIT`]: a hang),
/// its output into a scratch directory of its own.
fn nocturne(args: &[&str]) -> Run {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let scratch = Scratch::new(&format!("run{}", RUNS.fetch_add(1, Ordering::Relaxed)));
    bench_run::nocturne(args, &scratch, RUN_LIMIT)
}

/// A scratch file path, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> Self {
        Self(
            std::env::temp_dir().join(format!("nocturne-bench-load-{}-{name}", std::process::id())),
        )
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn load_against_a_real_engine_writes_the_report() {
    let engine = Engine::builder().poll("adaptive").start();
    let json = TempFile::new("engine.json");
    let url = format!("http://{}/function/echo", engine.addr());
    let run = nocturne(&[
        "bench",
        "load",
        &url,
        "--rate",
        "2000",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
        "--body",
        "hello",
        "--poll",
        "block",
        "--timeout",
        "20s",
        "--json",
        json.path(),
        "-q",
    ]);
    run.assert_success();
    assert!(
        run.stdout.contains("p99.9") && run.stdout.contains("2k/s"),
        "{}",
        run.stdout
    );

    let report = read_report(&json.0);
    assert_eq!(report["suite"], "load");
    assert!(
        report["machine"]["command_line"]
            .as_str()
            .unwrap()
            .contains("bench load"),
        "{report}"
    );
    assert_eq!(report["machine"]["modes"]["arrival"], "fixed");
    let case = &report["cases"][0];
    assert_eq!(case["name"], "2k/s");
    // 2000/s for exactly 1 s: the schedule's 2000 requests, every one
    // answered 200 (the engine echoes; nothing failed).
    assert_eq!(case["offered"], 2000.0, "{case}");
    assert_eq!(case["samples"], 2000, "{case}");
    assert_eq!(
        case["sent"].as_f64().unwrap() + case["unsent"].as_f64().unwrap(),
        2000.0
    );
    assert_eq!(case["errors"], 0, "{case}");
    assert_eq!(case["non_2xx"], 0.0, "{case}");
    for key in [
        "p50_us",
        "p90_us",
        "p99_us",
        "p999_us",
        "p9999_us",
        "max_us",
        "service_p50_us",
    ] {
        assert!(case[key].as_f64().unwrap() > 0.0, "{key}: {case}");
    }
    assert!(case["p50_us"].as_f64() <= case["max_us"].as_f64());
    assert!(case["ops_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn bad_targets_fail_clearly() {
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/function/echo", l.local_addr().unwrap())
    };
    let run = nocturne(&[
        "bench",
        "load",
        &refused,
        "--rate",
        "1k",
        "--duration",
        "200ms",
        "-q",
    ]);
    assert!(!run.success);
    assert!(
        run.stderr.contains("nocturne: error:") && run.stderr.contains("refused"),
        "{}",
        run.stderr
    );
    // Each cause is said once, not once per layer of the error chain.
    assert_eq!(run.stderr.matches("refused").count(), 1, "{}", run.stderr);

    let run = nocturne(&[
        "bench",
        "load",
        "http://nonexistent.invalid/x",
        "--rate",
        "1k",
    ]);
    assert!(!run.success);
    assert!(run.stderr.contains("cannot resolve host"), "{}", run.stderr);
    assert_eq!(
        run.stderr.matches("failed to lookup address").count(),
        1,
        "{}",
        run.stderr
    );

    // A function the engine does not serve: the probe's 404 is the error.
    let engine = Engine::builder().poll("adaptive").start();
    let nope = format!("http://{}/function/nope", engine.addr());
    let run = nocturne(&[
        "bench",
        "load",
        &nope,
        "--rate",
        "1k",
        "--duration",
        "200ms",
        "-q",
    ]);
    assert!(!run.success);
    assert!(run.stderr.contains("answered 404"), "{}", run.stderr);
}

#[test]
fn an_output_path_that_cannot_be_written_fails_before_the_run() {
    // A regular file where the output's directory should be.
    let blocker = TempFile::new("not-a-dir");
    std::fs::write(&blocker.0, "x").unwrap();
    let json = format!("{}/out.json", blocker.path());
    let engine = Engine::builder().poll("adaptive").start();
    let url = format!("http://{}/function/echo", engine.addr());
    // A minute-long run: the error comes first, without the run (no table).
    let run = nocturne(&[
        "bench",
        "load",
        &url,
        "--rate",
        "1k",
        "--duration",
        "60s",
        "--json",
        &json,
        "-q",
    ]);
    assert!(!run.success);
    assert!(
        run.stderr.contains(&format!("cannot write {json}")),
        "{}",
        run.stderr
    );
    assert!(!run.stdout.contains("offered"), "it ran: {}", run.stdout);
    // The same for bench engine and bench compare.
    for args in [
        &["bench", "engine", "--quick", "--json", &json][..],
        &["bench", "compare", "--quick", "--json", &json],
    ] {
        let run = nocturne(args);
        assert!(!run.success, "{args:?}");
        assert!(
            run.stderr.contains("cannot write"),
            "{args:?}: {}",
            run.stderr
        );
    }
}

#[test]
fn ctrl_c_ends_a_sweep_and_keeps_the_rates_that_finished() {
    let engine = Engine::builder().poll("adaptive").start();
    let url = format!("http://{}/function/echo", engine.addr());
    let sweep = |window: &str, json: &TempFile| {
        bench_run::command()
            .args(["bench", "load", &url, "--rate", "500..1500/500"])
            .args(["--warmup", "100ms", "--duration", window])
            .args(["--json", json.path()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };

    // Ctrl-C once the first rate's row is out: that rate is reported and
    // written, the one in progress is left out, the sweep stops.
    let json = TempFile::new("interrupted.json");
    let mut child = sweep("1s", &json);
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert_ne!(
            stdout.read_line(&mut line).unwrap(),
            0,
            "ended early: {seen}"
        );
        seen.push_str(&line);
        if line.starts_with("500/s ") {
            break;
        }
    }
    common::signal(child.id() as i32, libc::SIGINT);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    // Where it lands depends on timing: just after the 500/s window, in
    // the check before the 1k/s one, or in that window (then left out).
    // In each case exactly the finished rate is reported.
    assert!(
        [
            "interrupted after the 500/s window had ended; the 1 rate(s) that finished are reported above",
            "interrupted during the target check before the 1k/s window; the 1 rate(s) before it are reported above",
            "interrupted during the 1k/s window, which is left out; the 1 rate(s) before it are reported above",
        ]
        .iter()
        .any(|m| stderr.contains(m)),
        "{stderr}"
    );
    let report = read_report(&json.0);
    assert_eq!(case_names(&report).len(), 1, "{report}");

    // Ctrl-C before any window ends: an error, and no empty report.
    let json = TempFile::new("interrupted-early.json");
    let child = sweep("30s", &json);
    std::thread::sleep(Duration::from_secs(1));
    common::signal(child.id() as i32, libc::SIGINT);
    let started = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the window ran on after Ctrl-C"
    );
    assert!(!out.status.success());
    assert!(
        stderr.contains("interrupted during the 500/s window: no rate finished"),
        "{stderr}"
    );
    assert!(!json.0.exists(), "nothing measured, nothing written");
}

#[test]
fn load_against_its_own_echo_server_with_the_baseline() {
    let echo = EchoProcess::start();
    let json = TempFile::new("echo.json");
    let url = echo.url();
    let run = nocturne(&[
        "bench",
        "load",
        &url,
        "--rate",
        "1k,2k",
        "--duration",
        "300ms",
        "--warmup",
        "100ms",
        "--pingpong",
        "500",
        "--poll",
        "block",
        "--json",
        json.path(),
        "-q",
    ]);
    run.assert_success();
    assert!(
        run.stdout.contains("generator overhead at p50"),
        "{}",
        run.stdout
    );
    let report = read_report(&json.0);
    let names = case_names(&report);
    assert_eq!(names, ["pingpong", "1k/s", "2k/s"]);
    assert_eq!(report["cases"][0]["samples"], 500);
    assert_eq!(report["cases"][1]["samples"], 300);
    assert_eq!(report["cases"][2]["samples"], 600);
}

/// Runs `nocturne bench load ARGS` with stdout and stderr piped (not a
/// terminal), to completion.
fn load_piped(args: &[&str]) -> (String, String) {
    let out = bench_run::command()
        .args(["bench", "load"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    (stdout, stderr)
}

/// The table's lines in `text`: its header, the rows of `rates` and the
/// note under it.
fn table_lines<'a>(text: &'a str, rates: &[&str]) -> Vec<&'a str> {
    text.lines()
        .filter(|l| {
            l.starts_with("rate ")
                || l.starts_with("(µs;")
                || rates.iter().any(|r| l.starts_with(&format!("{r} ")))
        })
        .collect()
}

#[test]
fn the_table_is_printed_once_into_a_pipe_with_or_without_q() {
    let echo = EchoProcess::start();
    let url = echo.url();
    let window = [
        "--duration",
        "300ms",
        "--warmup",
        "100ms",
        "--poll",
        "block",
    ];
    for quiet in [false, true] {
        let q: &[&str] = if quiet { &["-q"] } else { &[] };
        // A sweep: a row as each rate finishes, the table once in all.
        let sweep = [&[url.as_str(), "--rate", "1k,2k"][..], &window, q].concat();
        let (stdout, stderr) = load_piped(&sweep);
        let lines = table_lines(&stdout, &["1k/s", "2k/s"]);
        assert_eq!(lines.len(), 4, "quiet {quiet}: {lines:?}\n{stdout}");
        assert!(lines[0].starts_with("rate ") && lines[3].starts_with("(µs;"));
        assert!(lines[1].starts_with("1k/s ") && lines[2].starts_with("2k/s "));
        // Both rows line up under the header.
        let header_len = lines[0].len();
        assert!(
            lines[1..3].iter().all(|l| l.len() == header_len),
            "{lines:#?}"
        );
        assert!(
            table_lines(&stderr, &["1k/s", "2k/s"]).is_empty(),
            "{stderr}"
        );
        // One rate: the table whole, once.
        let single = [&[url.as_str(), "--rate", "1k"][..], &window, q].concat();
        let (stdout, stderr) = load_piped(&single);
        let lines = table_lines(&stdout, &["1k/s"]);
        assert_eq!(lines.len(), 3, "quiet {quiet}: {lines:?}\n{stdout}");
        assert!(table_lines(&stderr, &["1k/s"]).is_empty(), "{stderr}");
    }
}
