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
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bench_run::{case_names, read_report, Run, Scratch};

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

/// `nocturne bench load-echo-server`, killed on drop.
struct EchoProcess(Child, String);

impl EchoProcess {
    fn start() -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_nocturne"))
            .args(["bench", "load-echo-server", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("nocturne: listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Self(child, addr)
    }

    fn url(&self) -> String {
        format!("http://{}/", self.1)
    }
}

impl Drop for EchoProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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
    assert!(run.success, "{}\n{}", run.stdout, run.stderr);
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
