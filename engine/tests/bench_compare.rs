//! `nocturne bench compare` and its baseline servers through the real
//! binary: a shrunken `--quick` comparison of all three systems (report,
//! Markdown, SVG, clean-up), the hidden `bench rpc-hyper` / `bench rpc-grpc`
//! processes answering exactly like nocturne's built-ins and refusing bad
//! requests with the right statuses, and clear failures for bad options and
//! a missing bar. Timing is never asserted; names, counts, bodies, statuses
//! and exit codes are.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod bench_run;
use bench_run::{command, processes_mentioning, Run, Scratch};

/// A debug build on a busy 2-core machine is slow; the shrunken run takes
/// well under a minute there.
const RUN_LIMIT: Duration = Duration::from_secs(240);
const SYSTEMS: [&str; 3] = ["rpc-hyper", "rpc-grpc", "nocturne"];

/// Runs `nocturne ARGS` to completion (killed past [`RUN_LIMIT`]).
fn nocturne(args: &[&str], scratch: &Scratch) -> Run {
    bench_run::nocturne(args, scratch, RUN_LIMIT)
}

fn have_two_cores() -> bool {
    bench_run::have_cores_0_and_1("bench compare")
}

#[test]
fn a_shrunken_quick_comparison_reports_every_system() {
    if !have_two_cores() {
        return;
    }
    let scratch = Scratch::new("quick");
    let json = scratch.0.join("report/compare.json");
    let out = scratch.0.join("out");
    let run = nocturne(
        &[
            "bench",
            "compare",
            "--quick",
            "--duration",
            "300ms",
            "--warmup",
            "100ms",
            "--sweep-duration",
            "300ms",
            "--sweep-start",
            "200",
            "--pingpong",
            "100",
            "--ladder-max",
            "1",
            "--json",
            json.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "-q",
        ],
        &scratch,
    );
    run.assert_success();
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["suite"], "compare");
    let modes = &report["machine"]["modes"];
    let s: f64 = modes["saturation_rate"].as_str().unwrap().parse().unwrap();
    assert!(s >= 1.0 && s == s.round(), "S is an integer rate: {s}");
    assert_eq!(modes["saturation_from"], "search on rpc-hyper");
    let rates: Vec<u64> = modes["comparison_rates"]
        .as_str()
        .unwrap()
        .split(',')
        .map(|r| r.parse::<f64>().unwrap() as u64)
        .collect();
    let expected: Vec<u64> = [0.25, 0.5, 0.75]
        .iter()
        .map(|f| (f * s).round().max(1.0) as u64)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(rates, expected, "0.25, 0.5 and 0.75 × S as integers");
    let cases = report["cases"].as_array().unwrap();
    let case = |name: &str| {
        cases
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no case {name} in {}", report["cases"]))
    };
    for system in SYSTEMS {
        let unloaded = case(&format!("compare/{system}/unloaded"));
        assert_eq!(unloaded["samples"], 100);
        assert_eq!(unloaded["errors"], 0);
        for rate in &rates {
            let c = case(&format!("compare/{system}/{rate}"));
            assert_eq!(c["errors"], 0, "{c}");
            assert!(c["samples"].as_u64().unwrap() > 0, "{c}");
            assert_eq!(c["rate"].as_f64().unwrap() as u64, *rate, "{c}");
            assert_eq!(c["comparison_rate"], true, "a JSON boolean: {c}");
            assert!(c["p99_us"].as_f64().unwrap() >= c["p50_us"].as_f64().unwrap());
            assert!(c["rss_mb"].as_f64().unwrap() > 0.0, "{c}");
        }
        assert!(modes[format!("best_rate_{system}")].is_string());
    }
    // Every case is one of the three kinds, and the search ran.
    assert!(cases.iter().any(|c| c["name"]
        .as_str()
        .unwrap()
        .starts_with("saturation/rpc-hyper/")));
    for c in cases {
        let name = c["name"].as_str().unwrap();
        assert!(
            name.starts_with("compare/") || name.starts_with("saturation/rpc-hyper/"),
            "{name}"
        );
    }
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(md.contains("Targets:"), "{md}");
    let svg = std::fs::read_to_string(out.join("compare.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for system in SYSTEMS {
        assert!(md.contains(&format!("| {system} |")), "{md}");
        assert!(svg.contains(system), "{svg}");
    }
    assert!(md.contains("S = **"), "{md}");
    // The three targets are printed as checks.
    let targets = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("target: "))
        .count();
    assert_eq!(targets, 3, "{}", run.stdout);
    // -q: no run log anywhere, and the targets once (the Markdown bullets
    // are in compare.md, not on stdout).
    for log in ["ready: pids", "saturation search", "unloaded:"] {
        assert!(
            !run.stdout.contains(log),
            "{log:?} on stdout:\n{}",
            run.stdout
        );
        assert!(
            !run.stderr.contains(log),
            "{log:?} on stderr:\n{}",
            run.stderr
        );
    }
    assert!(!run.stdout.contains("Targets:"), "{}", run.stdout);
    // Every server process ended with the benchmark.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // The comparison's baselines are the ones pinned with --cores (the
        // other tests' servers, running meanwhile, are not).
        // Only this build's binary counts: other checkouts' benchmarks may
        // run on the same machine.
        let exe = env!("CARGO_BIN_EXE_nocturne");
        let left: Vec<String> = processes_mentioning("bench rpc-")
            .into_iter()
            .filter(|p| p.contains("--cores") && p.contains(exe))
            .chain(processes_mentioning(&format!(
                "nocturne-bench-compare-{}-",
                run.pid
            )))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "servers outlived the benchmark: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let prefix = format!("nocturne-bench-compare-{}-", run.pid);
    let configs: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .collect();
    assert!(configs.is_empty(), "config files left behind: {configs:?}");
}

/// A short nocturne-only comparison (S given, so no search) with
/// `--repeat` as given (`None`: the default): its report and compare.md.
fn nocturne_ladder(repeat: Option<&str>, scratch: &Scratch) -> (Run, Value, String) {
    let json = scratch.0.join("compare.json");
    let out = scratch.0.join("out");
    let mut args = vec![
        "bench",
        "compare",
        "--systems",
        "nocturne",
        "--saturation",
        "400",
        "--quick",
        "--duration",
        "200ms",
        "--warmup",
        "100ms",
        "--pingpong",
        "100",
        "--ladder-max",
        "0.75",
        "--json",
        json.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    if let Some(n) = repeat {
        args.extend(["--repeat", n]);
    }
    let run = nocturne(&args, scratch);
    run.assert_success();
    let report = bench_run::read_report(&json);
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    (run, report, md)
}

/// The ladder cases of a report (every rate a system ran, not its
/// unloaded round trips).
fn ladder_cases(report: &Value) -> Vec<&Value> {
    let cases: Vec<&Value> = report["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            let name = c["name"].as_str().unwrap();
            name.starts_with("compare/nocturne/") && !name.ends_with("/unloaded")
        })
        .collect();
    // 0.25, 0.5 and 0.75 × S at least.
    assert!(cases.len() >= 3, "{report}");
    cases
}

#[test]
fn repeat_reports_the_median_window_of_each_rate_and_every_windows_p99() {
    if !have_two_cores() {
        return;
    }
    let scratch = Scratch::new("repeat3");
    let (run, report, md) = nocturne_ladder(Some("3"), &scratch);
    assert_eq!(report["machine"]["modes"]["repeat"], "3", "{report}");
    for case in ladder_cases(&report) {
        assert_eq!(case["windows"], 3, "a JSON integer: {case}");
        let p99s: Vec<f64> = (1..=3)
            .map(|n| {
                case[format!("p99_window_{n}_us")]
                    .as_f64()
                    .unwrap_or_else(|| panic!("no p99 of window {n}: {case}"))
            })
            .collect();
        assert!(case.get("p99_window_4_us").is_none(), "{case}");
        // The case's own p99 is one window's (never a blend), and that
        // window is the median.
        let own = case["p99_us"].as_f64().unwrap();
        assert!(p99s.contains(&own), "{own} not among {p99s:?}: {case}");
        let mut sorted = p99s.clone();
        sorted.sort_by(f64::total_cmp);
        assert_eq!(sorted[1], own, "not the median of {p99s:?}: {case}");
    }
    assert!(
        md.contains("| errors | SLO | p99 of windows |"),
        "no windows column:\n{md}"
    );
    assert!(md.contains("3 windows per rate"), "{md}");
    // The run log names each window, and the median that settled the rate.
    for window in [
        "window 1/3",
        "window 2/3",
        "window 3/3",
        "the median, stands for the rate",
    ] {
        assert!(
            run.stderr.contains(window),
            "{window:?} not in:\n{}",
            run.stderr
        );
    }
}

#[test]
fn without_repeat_a_rate_is_one_window_and_nothing_lists_windows() {
    if !have_two_cores() {
        return;
    }
    let scratch = Scratch::new("repeat1");
    let (run, report, md) = nocturne_ladder(None, &scratch);
    assert_eq!(report["machine"]["modes"]["repeat"], "1", "{report}");
    for case in ladder_cases(&report) {
        let fields = case.as_object().unwrap();
        assert!(
            !fields
                .keys()
                .any(|k| k == "windows" || k.starts_with("p99_window_")),
            "{case}"
        );
    }
    assert!(!md.contains("p99 of windows"), "{md}");
    assert!(!md.contains("windows per rate"), "{md}");
    assert!(!run.stderr.contains("window 1/"), "{}", run.stderr);
}

/// A baseline server process, killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(args: &[&str]) -> Self {
        let mut child = command()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a baseline server");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap().to_owned();
                    let _ = tx.send((addr, line));
                }
            }
        });
        let (addr, line) = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(found) => found,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().unwrap();
                panic!("{args:?} did not start ({status})");
            }
        };
        assert!(line.starts_with("nocturne: listening on http://"), "{line}");
        Server {
            child,
            addr: addr.parse().unwrap(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request on a fresh connection; (status, headers, body).
fn http(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => panic!("reading the answer to {head:?}: {e}"),
        };
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let headers = String::from_utf8_lossy(&buf[..end]).to_string();
        let length: usize = headers
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().unwrap())
            })
            .expect("a content-length");
        if buf.len() >= end + 4 + length {
            let status = headers.split_whitespace().nth(1).unwrap().parse().unwrap();
            return (status, headers, buf[end + 4..end + 4 + length].to_vec());
        }
    }
    panic!("connection closed before a whole answer to {head:?}");
}

fn post(addr: SocketAddr, path: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    http(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        ),
        body,
    )
}

#[test]
fn baseline_servers_answer_like_the_builtins_and_refuse_bad_requests() {
    for system in ["rpc-hyper", "rpc-grpc"] {
        let bar = Server::start(&["bench", system, "--role", "bar", "--threads", "1"]);
        let bar_addr = bar.addr.to_string();
        let foo = Server::start(&[
            "bench",
            system,
            "--role",
            "foo",
            "--bar-addr",
            &bar_addr,
            "--threads",
            "2",
        ]);
        let (status, _, body) = post(foo.addr, "/function/foo", b"hello");
        assert_eq!(status, 200, "{system}");
        assert_eq!(
            body, b"From function Foo: From function Bar: hello",
            "{system}"
        );
        let (status, _, body) = post(foo.addr, "/function/foo", b"");
        assert_eq!(
            (status, body.as_slice()),
            (200, &b"From function Foo: From function Bar: "[..])
        );
        let (status, _, _) = http(foo.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", b"");
        assert_eq!(status, 200);
        let (status, _, _) = post(foo.addr, "/function/nope", b"x");
        assert_eq!(status, 404);
        let (status, headers, _) = http(
            foo.addr,
            "GET /function/foo HTTP/1.1\r\nHost: x\r\n\r\n",
            b"",
        );
        assert_eq!(status, 405);
        assert!(
            headers.to_ascii_lowercase().contains("allow: post"),
            "{headers}"
        );
        // Declared over the limit: refused before the body is sent.
        let (status, _, _) = http(
            foo.addr,
            "POST /function/foo HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n",
            b"",
        );
        assert_eq!(status, 413, "{system}");
        // A large body within the limit goes through the inner hop whole.
        let big = vec![b'z'; 256 * 1024];
        let (status, _, body) = post(foo.addr, "/function/foo", &big);
        assert_eq!(status, 200);
        assert_eq!(
            body.len(),
            "From function Foo: From function Bar: ".len() + big.len()
        );
        if system == "rpc-hyper" {
            let (status, _, body) = post(bar.addr, "/function/bar", b"X");
            assert_eq!(
                (status, body.as_slice()),
                (200, &b"From function Bar: X"[..])
            );
        }
        // bar gone: foo answers 502 at once, and keeps serving.
        drop(bar);
        let (status, _, body) = post(foo.addr, "/function/foo", b"hello");
        assert_eq!(status, 502, "{system}: {}", String::from_utf8_lossy(&body));
        assert!(String::from_utf8_lossy(&body).contains("bar"), "{system}");
        let (status, _, _) = http(foo.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", b"");
        assert_eq!(status, 200);
    }
}

#[test]
fn foo_without_bar_fails_clearly() {
    let scratch = Scratch::new("nobar");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = listener.local_addr().unwrap().to_string();
    drop(listener);
    for system in ["rpc-hyper", "rpc-grpc"] {
        let run = nocturne(
            &[
                "bench",
                system,
                "--role",
                "foo",
                "--bar-addr",
                &nowhere,
                "--bar-wait",
                "300ms",
            ],
            &scratch,
        );
        assert!(!run.success, "{system}");
        assert!(
            run.stderr.contains("did not answer"),
            "{system}: {}",
            run.stderr
        );
        assert!(!run.stdout.contains("listening on"), "{system}");
    }
    let run = nocturne(&["bench", "rpc-hyper", "--role", "foo"], &scratch);
    assert!(!run.success);
    assert!(run.stderr.contains("--bar-addr"), "{}", run.stderr);
    let run = nocturne(
        &["bench", "rpc-grpc", "--role", "bar", "--cores", "4095"],
        &scratch,
    );
    assert!(!run.success);
    assert!(run.stderr.contains("--cores"), "{}", run.stderr);
}

#[test]
fn bad_compare_options_are_refused_before_anything_starts() {
    let scratch = Scratch::new("badopts");
    let out = scratch.0.join("out");
    let out_dir = out.to_str().unwrap();
    let md = out.join("compare.md");
    let svg = out.join("compare.svg");
    for (args, message) in [
        // One file for two outputs: the JSON would replace the table or
        // the plot.
        (
            vec!["--out", out_dir, "--json", md.to_str().unwrap()],
            "--out (compare.md) and --json name the same file",
        ),
        (
            vec!["--out", out_dir, "--json", svg.to_str().unwrap()],
            "--out (compare.svg) and --json name the same file",
        ),
        // No capacity-overflow panic, no 20 GB body.
        (
            vec!["--payload", "18446744073709551615"],
            "--payload 18446744073709551615 is out of range: it takes 0..=524288",
        ),
        (
            vec!["--payload", "20000000000"],
            "--payload 20000000000 is out of range",
        ),
        // A top the ladder would not honour.
        (vec!["--ladder-max", "0.5"], "--ladder-max 0.5"),
        (vec!["--ladder-max", "3.3"], "one of 0.75, 1, 1.25"),
        // Windows per ladder rate: at least one, at most nine.
        (
            vec!["--repeat", "0"],
            "--repeat 0 is out of range: it takes 1..=9",
        ),
        (
            vec!["--repeat", "10"],
            "--repeat 10 is out of range: it takes 1..=9",
        ),
        (vec!["--systems", "rpc-hyper,grpc"], "unknown system"),
        (vec!["--systems", "nocturne"], "--saturation"),
        (vec!["--saturation", "fast"], "--saturation"),
        (vec!["--duration", "soon"], "--duration"),
        (vec!["--nocturne-poll", "sometimes"], "--nocturne-poll"),
        (vec!["--client-core", "4095"], "--client-core"),
        // The client on a server's core would compete with what it
        // measures.
        (
            vec!["--client-cores", "0", "--io-cores", "0"],
            "--client-cores 0 share core 0 with nocturne's --io-cores",
        ),
        (
            vec!["--sweep-start", "10k", "--sweep-max", "1k"],
            "saturation search",
        ),
    ] {
        let mut all = vec!["bench", "compare"];
        all.extend(&args);
        let run = nocturne(&all, &scratch);
        assert!(!run.success, "{args:?}");
        assert!(
            run.stderr.contains(message),
            "{args:?}: expected {message:?} in:\n{}",
            run.stderr
        );
        assert!(!run.stdout.contains("ready"), "{args:?} started a system");
        assert!(!run.stderr.contains("ready"), "{args:?} started a system");
        assert!(!run.stderr.contains("panicked"), "{args:?}: {}", run.stderr);
        // Nothing written, and the table's file not touched.
        assert!(!md.exists() && !svg.exists(), "{args:?}");
    }
}

/// Ctrl-C during a ladder window: the run ends promptly, prints and
/// writes what finished (marked as interrupted, no compare.md or
/// compare.svg), fails, and leaves no server and no config file behind.
#[test]
fn an_interrupted_comparison_reports_what_finished_and_cleans_up() {
    if !have_two_cores() {
        return;
    }
    let scratch = Scratch::new("sigint");
    let json = scratch.0.join("partial.json");
    let out = scratch.0.join("out");
    let stopped = interrupt_in_the_first_window(
        &scratch,
        &[
            "--out",
            out.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
        ],
    );
    let run = &stopped.run;
    assert!(!run.success, "an interrupted run must fail");
    assert!(
        run.stderr
            .contains("interrupted during nocturne's 100/s window"),
        "{}",
        run.stderr
    );
    assert!(
        run.stdout.contains("compare/nocturne/unloaded"),
        "{}",
        run.stdout
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(
        report["machine"]["modes"]["interrupted"], "during nocturne's 100/s window",
        "{report}"
    );
    let names: Vec<&str> = report["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["compare/nocturne/unloaded"], "{report}");
    assert_eq!(report["cases"][0]["samples"], 100);
    assert!(!out.join("compare.md").exists() && !out.join("compare.svg").exists());
    let prefix = servers_gone(run.pid);
    let left = bench_run::temp_files_starting(&prefix);
    assert!(left.is_empty(), "config files left behind: {left:?}");
}

/// `bench compare` of nocturne alone at 100/s with `extra` arguments, its
/// first ladder window far longer than the test, so that the Ctrl-C sent
/// once the ladder begins lands in it.
fn interrupt_in_the_first_window(scratch: &Scratch, extra: &[&str]) -> bench_run::Interrupted {
    let mut args = vec![
        "bench",
        "compare",
        "--systems",
        "nocturne",
        "--saturation",
        "400",
        "--pingpong",
        "100",
        "--warmup",
        "100ms",
        "--duration",
        "10m",
    ];
    args.extend_from_slice(extra);
    bench_run::interrupt_when(
        &args,
        scratch,
        "loading every system at",
        Duration::from_millis(500),
        RUN_LIMIT,
        Duration::from_secs(30),
    )
}

/// Waits (up to 10 s) until no process mentions the servers' prefix of
/// the benchmark `pid`; returns that prefix.
fn servers_gone(pid: u32) -> String {
    let prefix = format!("nocturne-bench-compare-{pid}-");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_mentioning(&prefix).is_empty() {
        assert!(
            Instant::now() < deadline,
            "servers outlived the benchmark: {:?}",
            processes_mentioning(&prefix)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    prefix
}

/// Ctrl-C during one of a rate's `--repeat` windows: the phase names the
/// window, and the rate is left out (it is reported by the median of all
/// its windows or not at all); the rest is as without `--repeat`.
#[test]
fn an_interrupted_repeated_rate_is_left_out() {
    if !have_two_cores() {
        return;
    }
    let scratch = Scratch::new("sigint-repeat");
    let json = scratch.0.join("partial.json");
    let stopped = interrupt_in_the_first_window(
        &scratch,
        &["--repeat", "3", "--json", json.to_str().unwrap()],
    );
    let run = &stopped.run;
    assert!(!run.success, "an interrupted run must fail");
    assert!(
        run.stderr
            .contains("interrupted during nocturne's 100/s window 1/3"),
        "{}",
        run.stderr
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(
        report["machine"]["modes"]["interrupted"], "during nocturne's 100/s window 1/3",
        "{report}"
    );
    assert_eq!(
        bench_run::case_names(&report),
        ["compare/nocturne/unloaded"],
        "{report}"
    );
    servers_gone(run.pid);
}
