//! `nocturne bench load` at its edges, through the real binary: Ctrl-C in
//! every phase (baseline, target check, drain after the window), an
//! offered rate far beyond what the connections carry (bounded memory),
//! exit statuses with objectives, `.hgrm` files, protocol violations and
//! request-kind names. The servers are real sockets: the hidden echo
//! server, or a small scripted one here that answers late, never, or
//! wrongly. Bounds on time are generous (a debug build on a busy two-core
//! machine): they tell "promptly" from "after the 60 s timeout".

mod bench_run;
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bench_run::{case_names, read_report, Run, Scratch};
use common::EchoProcess;

/// A debug build on a busy 2-core machine is slow; each run is seconds.
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// Runs `nocturne ARGS` to completion (killed past [`RUN_LIMIT`]).
fn nocturne(args: &[&str]) -> Run {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let scratch = Scratch::new(&format!("run{}", RUNS.fetch_add(1, Ordering::Relaxed)));
    bench_run::nocturne(args, &scratch, RUN_LIMIT)
}

/// What the scripted server does with the n-th request (1-based, over all
/// connections; the probe's is the first).
#[derive(Clone, Copy)]
enum Script {
    /// Never answers.
    Never,
    /// Answers the first `n` requests, then holds every later one; the
    /// first held request is reported on the server's channel.
    AnswerThenHold(usize),
    /// Answers with `status`.
    Status(u16),
    /// Answers 200 with a 2-byte body and 5 bytes nobody asked for.
    Extra,
}

/// A thread-per-connection std::net server following a [`Script`]; it
/// lives until the test binary exits (its threads block, holding sockets).
struct ScriptedServer {
    addr: SocketAddr,
    held: mpsc::Receiver<Instant>,
}

impl ScriptedServer {
    fn start(script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (held_tx, held) = mpsc::channel();
        let count = std::sync::Arc::new(AtomicUsize::new(0));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let count = std::sync::Arc::clone(&count);
                let held_tx = held_tx.clone();
                std::thread::spawn(move || serve(stream, script, &count, &held_tx));
            }
        });
        Self { addr, held }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

/// Reads requests (head, then a Content-Length body) and answers by `script`.
fn serve(mut s: TcpStream, script: Script, count: &AtomicUsize, held: &mpsc::Sender<Instant>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let body = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
        while buf.len() < head_end + 4 + body {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + 4 + body);
        // Relaxed: a counter; nothing else is published through it.
        let n = count.fetch_add(1, Ordering::Relaxed) + 1;
        let answer: &[u8] = match script {
            Script::Never => &[],
            Script::AnswerThenHold(k) if n > k => {
                if n == k + 1 {
                    let _ = held.send(Instant::now());
                }
                &[]
            }
            Script::AnswerThenHold(_) => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            Script::Status(code) => {
                let text = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n");
                if s.write_all(text.as_bytes()).is_err() {
                    return;
                }
                continue;
            }
            Script::Extra => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
        };
        if answer.is_empty() {
            // Hold the connection (and the request) until the client goes.
            let _ = s.read(&mut chunk);
            std::thread::sleep(Duration::from_secs(3600));
        }
        if s.write_all(answer).is_err() {
            return;
        }
    }
}

/// A `bench load` child whose stdout is read line by line.
struct LoadChild {
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
    seen: String,
}

impl LoadChild {
    fn spawn(args: &[&str]) -> Self {
        let mut child = bench_run::command()
            .args(["bench", "load"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdout,
            seen: String::new(),
        }
    }

    /// Reads stdout up to a line starting with `prefix`.
    fn wait_for_line(&mut self, prefix: &str) {
        loop {
            let mut line = String::new();
            let n = self.stdout.read_line(&mut line).unwrap();
            assert_ne!(n, 0, "ended before {prefix:?}: {}", self.seen);
            self.seen.push_str(&line);
            if line.starts_with(prefix) {
                return;
            }
        }
    }

    /// Sends SIGINT; returns how long the process took to exit after it,
    /// whether it succeeded, and everything it printed.
    fn interrupt(mut self) -> (Duration, bool, String, String) {
        common::signal(self.child.id() as i32, libc::SIGINT);
        let sent = Instant::now();
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        let out = self.child.wait_with_output().unwrap();
        let took = sent.elapsed();
        self.seen.push_str(&rest);
        (
            took,
            out.status.success(),
            self.seen,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// Long enough that only a hang (a phase that ignores Ctrl-C) reaches it;
/// every run below would otherwise wait 60 s or more.
const PROMPT: Duration = Duration::from_secs(10);

#[test]
fn ctrl_c_during_the_pingpong_baseline_ends_it_at_once() {
    let echo = EchoProcess::start();
    let url = echo.url();
    // 100 million round trips: minutes, were Ctrl-C ignored.
    let mut load = LoadChild::spawn(&[
        &url,
        "--rate",
        "1k",
        "--duration",
        "1s",
        "--pingpong",
        "100000000",
        "-q",
    ]);
    load.wait_for_line("open-loop load:");
    // The probe against the echo server takes milliseconds.
    std::thread::sleep(Duration::from_millis(1500));
    let (took, ok, stdout, stderr) = load.interrupt();
    assert!(took < PROMPT, "exit took {took:?}: {stderr}");
    assert!(!ok);
    assert!(
        stderr.contains("interrupted during the ping-pong baseline: no rate finished"),
        "{stderr}\n{stdout}"
    );
}

#[test]
fn ctrl_c_during_the_target_check_ends_it_at_once() {
    let server = ScriptedServer::start(Script::Never);
    let url = server.url();
    let mut load = LoadChild::spawn(&[&url, "--rate", "1k", "--timeout", "60s", "-q"]);
    load.wait_for_line("open-loop load:");
    std::thread::sleep(Duration::from_millis(500));
    let (took, ok, _, stderr) = load.interrupt();
    assert!(took < PROMPT, "exit took {took:?}: {stderr}");
    assert!(!ok);
    assert!(
        stderr.contains("interrupted during the target check before the 1k/s window"),
        "{stderr}"
    );
}

#[test]
fn ctrl_c_after_the_window_keeps_it_and_ends_the_drain() {
    // The probe and 9 more are answered; then every request is held, so
    // after the 1 s window the drain would wait out the 60 s timeout.
    let server = ScriptedServer::start(Script::AnswerThenHold(10));
    let url = server.url();
    let json = Scratch::new("drain");
    let json_path = json.0.join("drain.json");
    let mut load = LoadChild::spawn(&[
        &url,
        "--rate",
        "100",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--connections",
        "2",
        "--timeout",
        "60s",
        "--json",
        json_path.to_str().unwrap(),
        "-q",
    ]);
    load.wait_for_line("open-loop load:");
    // The window began before the first held request and lasts 1 s.
    let first_held = server.held.recv_timeout(Duration::from_secs(60)).unwrap();
    std::thread::sleep(
        (first_held + Duration::from_secs(4)).saturating_duration_since(Instant::now()),
    );
    let (took, ok, stdout, stderr) = load.interrupt();
    assert!(took < PROMPT, "exit took {took:?}: {stderr}");
    assert!(!ok, "interrupted: a non-zero exit");
    assert!(
        stderr.contains(
            "interrupted after the 100/s window had ended; the 1 rate(s) that finished are reported above"
        ),
        "{stderr}"
    );
    // The finished window is reported, its unanswered requests as timeouts.
    assert!(stdout.contains("100/s: offered 100"), "{stdout}");
    assert!(
        stdout.contains("no response before a signal cut the wait short"),
        "{stdout}"
    );
    let report = read_report(&json_path);
    assert_eq!(case_names(&report), ["100/s"]);
    assert_eq!(report["cases"][0]["timeouts"], 2.0, "{report}");
    assert!(
        report["machine"]["modes"]["interrupted"]
            .as_str()
            .unwrap()
            .contains("after the 100/s window"),
        "{report}"
    );
}

/// The peak resident set of process `pid` so far (VmHWM), KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[test]
fn a_rate_far_beyond_the_connections_runs_in_bounded_memory() {
    let echo = EchoProcess::start();
    let url = echo.url();
    let scratch = Scratch::new("huge-rate");
    let json = scratch.0.join("huge.json");
    // 200M/s for 100 ms: 20 million requests offered to 16 connections.
    // Held one by one they would take about half a GB.
    let mut peak = 0;
    let started = Instant::now();
    let run = bench_run::nocturne_watched(
        bench_run::command(),
        &[
            "bench",
            "load",
            &url,
            "--rate",
            "200M",
            "--duration",
            "100ms",
            "--warmup",
            "0s",
            "--json",
            json.to_str().unwrap(),
            "-q",
        ],
        &scratch,
        RUN_LIMIT,
        |pid| peak = peak.max(peak_rss_kib(pid).unwrap_or(0)),
    );
    let took = started.elapsed();
    run.assert_success();
    assert!(peak > 0, "never saw the process");
    assert!(peak < 150 * 1024, "peak RSS {peak} KiB");
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert!(run.stdout.contains("200M/s"), "{}", run.stdout);
    // Every offered request is accounted for: sent or unsent, and each in
    // the corrected histogram.
    let report = read_report(&json);
    let case = &report["cases"][0];
    assert_eq!(case["offered"], 20_000_000.0, "{case}");
    let sent = case["sent"].as_f64().unwrap();
    let unsent = case["unsent"].as_f64().unwrap();
    assert_eq!(sent + unsent, 20_000_000.0, "{case}");
    assert!(unsent > 19_000_000.0, "{case}");
    assert_eq!(case["samples"], 20_000_000, "{case}");
    // The unsent waited up to the whole window: a max near 100 ms.
    assert!(case["max_us"].as_f64().unwrap() >= 90_000.0, "{case}");
}

/// A scratch `.hgrm` stem in `dir`.
fn hgrm_in(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().unwrap().to_owned()
}

/// Short options for a quick run against `url`.
fn quick<'a>(url: &'a str, rate: &'a str) -> Vec<&'a str> {
    vec![
        "bench",
        "load",
        url,
        "--rate",
        rate,
        "--duration",
        "300ms",
        "--warmup",
        "0s",
        "--poll",
        "block",
        "--timeout",
        "20s",
        "-q",
    ]
}

#[test]
fn allow_errors_with_objectives_judges_the_latencies_not_the_status() {
    let server = ScriptedServer::start(Script::Status(404));
    let url = server.url();
    let mut args = quick(&url, "200,400");
    args.extend(["--allow-errors", "--slo", "p99=10s"]);
    let run = nocturne(&args);
    run.assert_success();
    assert!(!run.stdout.contains("MISSED"), "{}", run.stdout);
    assert!(
        run.stdout.contains("highest rate meeting p99<=10s: 400/s"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("404: 60"), "{}", run.stdout);
}

#[test]
fn objectives_decide_the_exit_status_for_a_single_rate_too() {
    let echo = EchoProcess::start();
    let url = echo.url();
    let mut missed = quick(&url, "1k");
    missed.extend(["--slo", "p99=1ns"]);
    let run = nocturne(&missed);
    assert!(!run.success, "{}", run.stdout);
    assert!(
        run.stdout.contains("no rate met p99<=1ns"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr.contains("no rate met the objectives"),
        "{}",
        run.stderr
    );
    let mut met = quick(&url, "1k");
    met.extend(["--slo", "p99=10s"]);
    let run = nocturne(&met);
    run.assert_success();
}

/// The rows of an `.hgrm` file: (value, percentile, total count).
fn hgrm_rows(text: &str) -> Vec<(f64, f64, u64)> {
    text.lines()
        .skip(2)
        .take_while(|l| !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn hgrm_files_are_cumulative_and_named_by_rate_in_a_sweep() {
    let echo = EchoProcess::start();
    let url = echo.url();
    let dir = Scratch::new("hgrm");
    let stem = hgrm_in(&dir.0, "s.hgrm");
    // The objective stops the sweep after its first rate: still a sweep,
    // so the file is named by its rate.
    let mut args = quick(&url, "1k,2k");
    args.extend(["--slo", "p99=1ns", "--hgrm", &stem]);
    let run = nocturne(&args);
    assert!(!run.success, "no rate met the objective");
    assert!(!dir.0.join("s.hgrm").exists());
    let text = std::fs::read_to_string(dir.0.join("s.1000.hgrm"))
        .unwrap_or_else(|e| panic!("{e}: {}", run.stdout));
    let rows = hgrm_rows(&text);
    assert!(rows.len() > 10, "{text}");
    assert!(
        rows.windows(2).all(|w| w[0].2 <= w[1].2),
        "not cumulative: {text}"
    );
    assert!(
        rows.windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1),
        "{text}"
    );
    let last = rows.last().unwrap();
    assert_eq!(last.1, 1.0, "{text}");
    assert_eq!(last.2, 300, "the last row counts every request: {text}");
    assert!(text.contains("Total count    =          300]"), "{text}");
    assert!(text.contains("#[Buckets = "), "{text}");
    assert!(text.contains("SubBuckets     =         2048]"), "{text}");

    // Rates that would share a name are refused, before anything runs.
    let run = nocturne(&quick(&url, "1k,1000"));
    assert!(!run.success);
    assert!(
        run.stderr
            .contains("rates \"1k\" and \"1000\" are the same rate as reported (1k/s)"),
        "{}",
        run.stderr
    );
    assert!(!run.stdout.contains("open-loop"), "{}", run.stdout);
}

#[test]
fn bytes_after_a_response_are_an_error_and_reconnects_are_shown() {
    let server = ScriptedServer::start(Script::Extra);
    let url = server.url();
    let scratch = Scratch::new("extra");
    let json = scratch.0.join("extra.json");
    let mut args = quick(&url, "200");
    args.extend(["--json", json.to_str().unwrap()]);
    let run = nocturne(&args);
    assert!(!run.success, "{}", run.stdout);
    assert!(
        run.stderr
            .contains("the server sent bytes nobody asked for"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.contains("  reconnects: "), "{}", run.stdout);
    let case = &read_report(&json)["cases"][0];
    let unsolicited = case["unsolicited"].as_f64().unwrap();
    assert!(unsolicited >= 1.0, "{case}");
    assert!(case["reconnects"].as_f64().unwrap() >= 1.0, "{case}");
    assert!(case["errors"].as_u64().unwrap() >= 1, "{case}");
    // Every request was answered, or (had one been written before the
    // stray bytes were read) lost to the connection they broke.
    let lost = case["socket_errors"].as_f64().unwrap()
        - unsolicited
        - case["connect_errors"].as_f64().unwrap();
    assert_eq!(case["completed"].as_f64().unwrap() + lost, 60.0, "{case}");
}

#[test]
fn options_that_cannot_measure_anything_are_refused() {
    let echo = EchoProcess::start();
    let url = echo.url();
    let scratch = Scratch::new("refused");
    let out = hgrm_in(&scratch.0, "same.out");
    for (args, message) in [
        (
            vec![&url[..], "--rate", "0.5", "--duration", "1s"],
            "--rate 0.5/s with --duration 1s offers less than one request per window: make the window at least 2s",
        ),
        (
            vec![&url, "--rate", "1k", "--json", &out, "--hgrm", &out],
            "--json and --hgrm name the same file",
        ),
        (
            vec![&url, "--rate", "1k", "--slo", "p99=0s"],
            "can never be met",
        ),
        (
            vec![&url, "--rate", "1k", "--slo", "p99=1ms,p99=2ms"],
            "bound the same percentile",
        ),
        (
            vec![&url, "--rate", "1k", "--method", "head"],
            "methods are case-sensitive; did you mean HEAD?",
        ),
    ] {
        let mut full = vec!["bench", "load"];
        full.extend(args);
        let run = nocturne(&full);
        assert!(!run.success, "{full:?}");
        assert!(run.stderr.contains(message), "{full:?}: {}", run.stderr);
        assert!(!run.stdout.contains("open-loop"), "it ran: {}", run.stdout);
    }
}

#[test]
fn request_kinds_have_distinct_names() {
    let echo = EchoProcess::start();
    let port = echo.addr.rsplit(':').next().unwrap().to_owned();
    let (a, b) = (
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
    );
    let scratch = Scratch::new("names");
    let json = scratch.0.join("names.json");
    let mut args = quick(&a, "1k");
    args.insert(3, &b);
    args.extend(["--json", json.to_str().unwrap()]);
    let run = nocturne(&args);
    run.assert_success();
    let report = read_report(&json);
    let names = case_names(&report);
    assert_eq!(
        names,
        [
            "1k/s".to_owned(),
            format!("1k/s POST 127.0.0.1:{port}/"),
            format!("1k/s POST localhost:{port}/"),
        ],
        "{report}"
    );

    // A mix that names two requests alike is refused.
    let mix = scratch.0.join("mix.toml");
    std::fs::write(
        &mix,
        "[[request]]\nname = \"x\"\npath = \"/a\"\n[[request]]\nname = \"x\"\npath = \"/b\"\n",
    )
    .unwrap();
    let run = nocturne(&[
        "bench",
        "load",
        &a,
        "--rate",
        "1k",
        "--mix",
        mix.to_str().unwrap(),
    ]);
    assert!(!run.success);
    assert!(
        run.stderr
            .contains("request 2: name \"x\" is taken by request 1"),
        "{}",
        run.stderr
    );
}
