//! Bad targets and bad options give clear errors and a non-zero exit, never
//! a hang: a refused port, an unresolvable host, servers that speak another
//! protocol, never answer, hang up, answer 404, or go bad in the middle of
//! a run; and every malformed option. Every run is bounded by a watchdog.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{args, try_args, within};
use nocturne_bench::load::{
    run_command, run_rate, run_sweep, LoadError, LoadSettings, ProbeError, SettingsError,
};

/// Quick-failing, short-running options for a target.
fn quick(url: &str) -> Vec<String> {
    [
        url,
        "--rate",
        "500",
        "--duration",
        "300ms",
        "--warmup",
        "0s",
        "--connections",
        "2",
        "--poll",
        "block",
        "--timeout",
        "500ms",
        "--connect-timeout",
        "2s",
        "-q",
    ]
    .map(String::from)
    .to_vec()
}

fn run_cli(list: Vec<String>) -> anyhow::Result<()> {
    within("command", move || {
        let refs: Vec<&str> = list.iter().map(String::as_str).collect();
        run_command(&args(&refs))
    })
}

/// What the scripted server does with request number n (1-based, over all
/// connections).
#[derive(Clone, Copy)]
enum Reply {
    Ok,
    Status(u16),
    Garbage,
    Close,
    Silent,
    /// An HTTP/1.0 answer whose body runs to the end of the connection.
    CloseDelimited,
    /// A framed answer with `Connection: close`, then the close.
    ConnectionClose,
    /// A 200 answer after 1.5 s: three times `quick`'s 500 ms timeout, so
    /// late whatever the load on the machine.
    Late,
}

/// A std::net server, a thread per connection, answering by `script`;
/// `greeting` is written on accept (before any request).
struct ScriptedServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl ScriptedServer {
    fn start(greeting: Option<&'static [u8]>, script: fn(u64) -> Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let count = Arc::new(AtomicU64::new(0));
        std::thread::spawn(move || {
            // Relaxed: a plain flag polled by a test thread.
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        if let Some(g) = greeting {
                            let _ = s.write_all(g);
                        }
                        let (count, stop) = (Arc::clone(&count), Arc::clone(&stop2));
                        std::thread::spawn(move || serve(s, &count, &stop, script));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
            // Dropping the listener refuses new connections from here on.
        });
        Self { addr, stop }
    }

    fn url(&self) -> String {
        format!("http://{}/function/echo", self.addr)
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(mut s: TcpStream, count: &AtomicU64, stop: &AtomicBool, script: fn(u64) -> Reply) {
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let request_end = loop {
            if let Some((head_len, body_len)) = common::request_head(&buf) {
                if buf.len() >= head_len + body_len {
                    break head_len + body_len;
                }
            }
            // Relaxed: a plain flag.
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match s.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return,
            }
        };
        buf.drain(..request_end);
        // Relaxed: only numbers the requests.
        let n = count.fetch_add(1, Ordering::Relaxed) + 1;
        let reply: Vec<u8> = match script(n) {
            Reply::Ok => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            Reply::Status(code) => {
                format!("HTTP/1.1 {code} Nope\r\nContent-Length: 0\r\n\r\n").into_bytes()
            }
            Reply::Garbage => b"hello, I am not a web server\n".to_vec(),
            Reply::Close => return,
            Reply::CloseDelimited => {
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\nbody until the end");
                return;
            }
            Reply::ConnectionClose => {
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
                );
                return;
            }
            Reply::Late => {
                std::thread::sleep(Duration::from_millis(1500));
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()
            }
            Reply::Silent => {
                // Hold the connection open, answering nothing.
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                return;
            }
        };
        if s.write_all(&reply).is_err() {
            return;
        }
    }
}

fn plan_for(url: &str) -> nocturne_bench::load::LoadPlan {
    let refs = quick(url);
    let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
    LoadSettings::from_args(&args(&refs)).unwrap().plan
}

#[test]
fn a_refused_port() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/function/echo");
    let plan = plan_for(&url);
    let err = within("run", move || run_rate(&plan, 500.0, false).unwrap_err());
    assert!(
        matches!(
            &err,
            LoadError::Probe {
                source: ProbeError::Connect { .. },
                ..
            }
        ),
        "{err:?}"
    );
    let err = run_cli(quick(&url)).unwrap_err().to_string();
    assert!(
        err.contains("cannot connect to 127.0.0.1") && err.contains("refused"),
        "{err}"
    );
}

#[test]
fn an_unresolvable_host() {
    let a = args(&[
        "http://nonexistent.invalid:8080/function/echo",
        "--rate",
        "1k",
    ]);
    let err = within("settings", move || LoadSettings::from_args(&a).unwrap_err());
    assert!(matches!(err, SettingsError::Target(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("cannot resolve host \"nonexistent.invalid\""),
        "{err}"
    );
    let err = run_cli(quick("http://nonexistent.invalid/x")).unwrap_err();
    assert!(err.to_string().contains("cannot resolve host"), "{err}");
}

#[test]
fn a_server_that_speaks_another_protocol() {
    // Talks first, like SSH: rejected on its first bytes.
    let ssh = ScriptedServer::start(Some(b"SSH-2.0-OpenSSH_9.6\r\n"), |_| Reply::Silent);
    let err = run_cli(quick(&ssh.url())).unwrap_err().to_string();
    assert!(
        err.contains("is not an HTTP/1.x server") && err.contains("SSH-2.0"),
        "{err}"
    );
    // Answers a request with text that is not HTTP.
    let text = ScriptedServer::start(None, |_| Reply::Garbage);
    let plan = plan_for(&text.url());
    let err = within("run", move || run_rate(&plan, 500.0, false).unwrap_err());
    assert!(
        matches!(
            &err,
            LoadError::Probe {
                source: ProbeError::NotHttp { .. },
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_server_that_never_answers() {
    let silent = ScriptedServer::start(None, |_| Reply::Silent);
    let err = run_cli(quick(&silent.url())).unwrap_err().to_string();
    assert!(
        err.contains("sent no complete response within 500ms"),
        "{err}"
    );
}

#[test]
fn answers_after_the_timeout_are_timeouts_not_successes() {
    // The probe's answer comes late: the target check fails.
    let late = ScriptedServer::start(None, |_| Reply::Late);
    let plan = plan_for(&late.url());
    let err = within("run", move || run_rate(&plan, 20.0, false).unwrap_err());
    assert!(
        matches!(
            &err,
            LoadError::Probe {
                source: ProbeError::TimedOut { .. },
                ..
            }
        ),
        "{err:?}"
    );
    // The probe is answered in time, every request of the window late:
    // each is a timeout, none a success, and no answer is achieved.
    let stalling = ScriptedServer::start(None, |n| if n == 1 { Reply::Ok } else { Reply::Late });
    let plan = plan_for(&stalling.url());
    let r = within("run", move || run_rate(&plan, 20.0, false).unwrap());
    common::assert_balanced(&r);
    assert!(r.sent > 0, "{}", nocturne_bench::load::output::details(&r));
    assert_eq!(
        r.completed,
        0,
        "{}",
        nocturne_bench::load::output::details(&r)
    );
    assert_eq!(r.timeouts, r.sent);
    assert!(r.statuses.is_empty(), "{:?}", r.statuses);
    assert_eq!(r.responses_in_window, 0);
    assert!(r.service.len() == r.timeouts && r.latency.len() == r.timeouts + r.unsent);
    assert!(r.failures() > 0);
}

#[test]
fn a_mix_counts_errors_under_the_kind_that_met_them() {
    use nocturne_bench::load::{RequestSpec, Url};
    let good = ScriptedServer::start(None, |_| Reply::Ok);
    let bad = ScriptedServer::start(None, |_| Reply::Status(404));
    let spec = |name: &str, server: &ScriptedServer| RequestSpec {
        name: Some(name.into()),
        url: Url::parse(&server.url()).unwrap(),
        method: "POST".into(),
        headers: Vec::new(),
        body: b"x".to_vec(),
        weight: 1,
    };
    let mut plan = common::short_plan(
        &[spec("good", &good), spec("bad", &bad)],
        4,
        Duration::from_millis(300),
    );
    plan.allow_errors = true;
    let r = within("run", move || run_rate(&plan, 200.0, false).unwrap());
    common::assert_balanced(&r);
    let details = nocturne_bench::load::output::details(&r);
    let (g, b) = (&r.per_kind[0], &r.per_kind[1]);
    assert_eq!((g.name.as_str(), b.name.as_str()), ("good", "bad"));
    assert!(g.completed > 0 && b.completed > 0, "{details}");
    assert_eq!(g.errors(), 0, "{details}");
    assert_eq!(b.non_2xx, b.completed, "{details}");
    assert_eq!(b.errors(), b.non_2xx);
    assert_eq!(g.non_2xx + b.non_2xx, r.non_2xx);
    assert!(details.contains("  bad: offered"), "{details}");
    let cases = nocturne_bench::load::output::cases(&r, &[]);
    assert_eq!(cases[1].name, "200/s good");
    assert_eq!(cases[1].errors, 0);
    assert_eq!(cases[2].errors, b.non_2xx);
    assert_eq!(cases[2].counts["non_2xx"], b.non_2xx);
}

/// A server that answers `Reply::Ok` on its first `connections`
/// connections, then stops listening: a target that dies between rates.
fn dying_server(connections: usize) -> (SocketAddr, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    std::thread::spawn(move || {
        let count = Arc::new(AtomicU64::new(0));
        for _ in 0..connections {
            let Ok((s, _)) = listener.accept() else {
                return;
            };
            let (count, stop) = (Arc::clone(&count), Arc::clone(&stop2));
            std::thread::spawn(move || serve(s, &count, &stop, |_| Reply::Ok));
        }
        // Dropping the listener refuses every later connection.
    });
    (addr, stop)
}

#[test]
fn a_sweep_whose_target_dies_reports_the_rates_that_finished() {
    // One probe connection and two client connections per rate: the
    // second rate's probe finds nobody listening.
    let (addr, stop) = dying_server(3);
    let dir = std::env::temp_dir().join(format!("nocturne-dies-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = |name: &str| dir.join(name).display().to_string();
    let mut list = quick(&format!("http://{addr}/function/echo"));
    let rate = list.iter().position(|a| a == "--rate").unwrap();
    list[rate + 1] = "200,300,400".into();
    list.extend(
        [
            "--json",
            &path("out.json"),
            "--hgrm",
            &path("out.hgrm"),
            "--plot",
            &path("out.svg"),
        ]
        .map(String::from),
    );
    let err = run_cli(list).unwrap_err().to_string();
    stop.store(true, Ordering::Relaxed);
    assert!(
        err.starts_with("stopped early: 300/s failed: ") && err.contains("cannot connect"),
        "{err}"
    );
    assert!(
        err.contains("the 1 rate(s) before it are reported above"),
        "{err}"
    );
    let report = nocturne_bench::report::Report::read_json(&dir.join("out.json")).unwrap();
    let names: Vec<&str> = report.cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["200/s"]);
    assert!(report.machine.modes["stopped_early"].starts_with("300/s: "));
    assert_eq!(report.machine.modes["rates"], "200");
    assert!(
        dir.join("out.200.hgrm").exists(),
        "{:?}",
        std::fs::read_dir(&dir).unwrap().collect::<Vec<_>>()
    );
    assert!(std::fs::read_to_string(dir.join("out.svg"))
        .unwrap()
        .starts_with("<svg"));
    std::fs::remove_dir_all(&dir).unwrap();

    // A target dead from the first rate is the error itself, as before
    // (a port closed before the run: refused, never half-accepted).
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut list = quick(&format!("http://127.0.0.1:{port}/x"));
    list[rate + 1] = "200,300".into();
    let err = run_cli(list).unwrap_err().to_string();
    assert!(
        !err.contains("stopped early") && err.contains("cannot connect"),
        "{err}"
    );
}

#[test]
fn the_pingpong_baseline_alone_runs_without_a_rate() {
    let server = ScriptedServer::start(None, |_| Reply::Ok);
    let dir = std::env::temp_dir().join(format!("nocturne-ppalone-{}", std::process::id()));
    let json = dir.join("pp.json");
    let list: Vec<String> = [
        &server.url(),
        "--pingpong",
        "50",
        "--timeout",
        "5s",
        "-q",
        "--json",
        &json.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    run_cli(list).unwrap();
    let report = nocturne_bench::report::Report::read_json(&json).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let names: Vec<&str> = report.cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["pingpong"]);
    assert_eq!(report.cases[0].samples, 50);
    // An open-loop option beside it is refused by name.
    let err = run_cli(
        [&server.url(), "--pingpong", "50", "--arrival", "poisson"]
            .map(String::from)
            .to_vec(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("--arrival is an option of open-loop load"),
        "{err}"
    );
}

#[test]
fn a_server_that_hangs_up() {
    let rude = ScriptedServer::start(None, |_| Reply::Close);
    let err = run_cli(quick(&rude.url())).unwrap_err().to_string();
    assert!(
        err.contains("closed the connection before a complete response"),
        "{err}"
    );
}

#[test]
fn a_wrong_path_and_allow_errors() {
    let server = ScriptedServer::start(None, |_| Reply::Status(404));
    let plan = plan_for(&server.url());
    let err = within("run", move || run_rate(&plan, 500.0, false).unwrap_err());
    assert!(
        matches!(err, LoadError::ProbeStatus { status: 404, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("--allow-errors"), "{err}");

    // Asked for, the run goes ahead and counts every answer as non-2xx.
    let mut plan = plan_for(&server.url());
    plan.allow_errors = true;
    let r = within("run", move || run_rate(&plan, 500.0, false).unwrap());
    assert_eq!(r.offered, 150);
    assert!(r.completed > 0);
    assert_eq!(r.non_2xx, r.completed);
    assert_eq!(r.statuses.get(&404), Some(&r.completed));
    let mut list = quick(&server.url());
    list.push("--allow-errors".into());
    run_cli(list).unwrap();
    // Without it, the same non-2xx answers fail the command.
    let err = run_cli(quick(&server.url())).unwrap_err().to_string();
    assert!(err.contains("answered 404"), "{err}");
}

#[test]
fn the_pingpong_baseline_honours_allow_errors_as_the_window_does() {
    // With --allow-errors the probe and the window accept the 404s; the
    // ping-pong baseline before them must too, timing every round trip
    // and counting the non-2xx answers, not aborting the run.
    let server = ScriptedServer::start(None, |_| Reply::Status(404));
    let dir = std::env::temp_dir().join(format!("nocturne-pp404-{}", std::process::id()));
    let json = dir.join("out.json");
    let mut list = quick(&server.url());
    list.extend(
        ["--allow-errors", "--pingpong", "40", "--json"]
            .map(String::from)
            .into_iter()
            .chain([json.display().to_string()]),
    );
    run_cli(list.clone()).unwrap();
    let report = nocturne_bench::report::Report::read_json(&json).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let pingpong = report.case("pingpong").expect("a pingpong case");
    assert_eq!(pingpong.samples, 40, "{pingpong:?}");
    assert_eq!(pingpong.errors, 40, "every answer was a 404: {pingpong:?}");
    let window = report.case("500/s").expect("the rate's case");
    assert_eq!(window.errors, window.samples, "{window:?}");

    // The baseline's own result says what came back.
    let settings =
        LoadSettings::from_args(&args(&list.iter().map(String::as_str).collect::<Vec<_>>()))
            .unwrap();
    let outcome = within("sweep", move || run_sweep(&settings, |_| {}).unwrap());
    let pingpong = outcome.pingpong.expect("the baseline ran");
    assert_eq!(pingpong.round_trips.len(), 40);
    assert_eq!(pingpong.non_2xx(), 40);
    assert_eq!(pingpong.statuses.get(&404), Some(&40));
    let lines = nocturne_bench::load::output::pingpong_lines(&pingpong);
    assert!(
        lines.contains("non-2xx 40") && lines.contains("404: 40"),
        "{lines}"
    );

    // Without --allow-errors the probe refuses the 404 before the baseline.
    let mut list = quick(&server.url());
    list.extend(["--pingpong", "40"].map(String::from));
    let err = run_cli(list).unwrap_err().to_string();
    assert!(
        err.contains("answered 404") && err.contains("--allow-errors"),
        "{err}"
    );
}

#[test]
fn a_server_that_goes_bad_during_the_run() {
    // Fine for the probe and 20 requests, then garbage.
    let server = ScriptedServer::start(None, |n| if n <= 21 { Reply::Ok } else { Reply::Garbage });
    let plan = plan_for(&server.url());
    let r = within("run", move || run_rate(&plan, 500.0, false).unwrap());
    assert!(
        r.socket_errors.protocol > 0,
        "{}",
        nocturne_bench::load::output::details(&r)
    );
    assert!(r.completed >= 20);
    assert_eq!(r.sent + r.unsent, r.offered);
    assert!(
        r.first_error
            .as_deref()
            .unwrap_or("")
            .contains("not an HTTP response"),
        "{}",
        nocturne_bench::load::output::details(&r)
    );
    let fresh = ScriptedServer::start(None, |n| if n <= 21 { Reply::Ok } else { Reply::Garbage });
    let err = run_cli(quick(&fresh.url())).unwrap_err().to_string();
    assert!(
        err.contains("errors (first:") && err.contains("not an HTTP response"),
        "{err}"
    );
}

#[test]
fn a_server_that_dies_during_the_run() {
    // Serves the probe and 30 requests, then hangs up on every request and
    // stops listening: the run counts the losses and ends on time.
    let server = ScriptedServer::start(None, |n| if n <= 31 { Reply::Ok } else { Reply::Close });
    let plan = plan_for(&server.url());
    let stop = Arc::clone(&server.stop);
    let r = within("run", move || {
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            // Relaxed: a plain flag.
            stop.store(true, Ordering::Relaxed);
        });
        let r = run_rate(&plan, 500.0, false).unwrap();
        killer.join().unwrap();
        r
    });
    assert!(
        r.socket_errors.total() > 0,
        "{}",
        nocturne_bench::load::output::details(&r)
    );
    assert_eq!(r.sent + r.unsent, r.offered);
    assert_eq!(
        r.completed + r.timeouts + r.socket_errors.requests(),
        r.sent,
        "{}",
        nocturne_bench::load::output::details(&r)
    );
}

#[test]
fn servers_that_close_after_each_answer_are_followed_not_errors() {
    for script in [(|_| Reply::CloseDelimited) as fn(u64) -> Reply, |_| {
        Reply::ConnectionClose
    }] {
        let server = ScriptedServer::start(None, script);
        let plan = plan_for(&server.url());
        let r = within("run", move || run_rate(&plan, 500.0, false).unwrap());
        let details = nocturne_bench::load::output::details(&r);
        assert_eq!(r.offered, 150, "{details}");
        assert_eq!(r.sent + r.unsent, r.offered, "{details}");
        assert_eq!(r.completed, r.sent, "{details}");
        assert_eq!(r.errors(), 0, "{details}");
        // Every answer closed its connection: each was opened again.
        assert!(r.reconnects >= r.completed.saturating_sub(2), "{details}");
    }
}

#[test]
fn malformed_options_are_named() {
    let cases: [(&[&str], &str); 12] = [
        (&["http://h/", "--rate", "fast"], "bad rate \"fast\""),
        (&["http://h/", "--rate", "5k..1k/1k"], "bad rate sweep"),
        (
            &["http://h/", "--rate", "1k", "--duration", "forever"],
            "bad duration: `forever` is not a number",
        ),
        (
            &["http://h/", "--rate", "1k", "--slo", "p99"],
            "bad objective \"p99\"",
        ),
        (&["https://h/", "--rate", "1k"], "only http:// is supported"),
        (
            &["h:80/", "--rate", "1k"],
            "expected http://HOST[:PORT]/PATH",
        ),
        (&["--rate", "1k"], "give a target URL"),
        (
            &[
                "http://127.0.0.1:9/",
                "--rate",
                "1k",
                "--threads",
                "2",
                "--connections",
                "1",
            ],
            "too few",
        ),
        (
            &["http://127.0.0.1:9/", "--rate", "1k", "--threads", "0"],
            "--threads 0 is out of range: it takes 1..=1024",
        ),
        (
            &["http://127.0.0.1:9/", "--rate", "1k", "--cores", "100000"],
            "not available to this process",
        ),
        (
            &[
                "http://127.0.0.1:9/",
                "--rate",
                "1k",
                "--body-file",
                "/nonexistent/body",
            ],
            "cannot read --body-file",
        ),
        (
            &[
                "http://127.0.0.1:9/",
                "--rate",
                "1k",
                "-H",
                "Content-Length: 3",
            ],
            "set by the load generator",
        ),
    ];
    for (list, expected) in cases {
        let err = LoadSettings::from_args(&args(list))
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{list:?}: {err}");
    }
    // clap itself rejects unknown modes.
    assert!(try_args(&["http://h/", "--rate", "1", "--arrival", "bursty"]).is_err());
}
