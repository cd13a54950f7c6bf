//! Live runs against the in-process echo server over real loopback
//! sockets: the number of requests sent equals the schedule exactly, the
//! warm-up is sent but not recorded, threads split the rate, pipelining,
//! every poll mode, mixes over two servers, and the command line end to
//! end (sweep, objective, JSON, `.hgrm`, SVG). No assertion depends on how
//! fast anything runs.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{args, assert_balanced, short_plan, within};
use nocturne_bench::load::{
    run_command, run_rate, Arrival, ArrivalSchedule, EchoPoll, EchoServer, LoadPlan, PollMode,
    RequestSpec, Url,
};
use nocturne_bench::report::Report;

fn spec(url: &str, weight: u32) -> RequestSpec {
    RequestSpec {
        name: None,
        url: Url::parse(url).unwrap(),
        method: "POST".into(),
        headers: vec!["X-Test: 1".into()],
        body: b"ping".to_vec(),
        weight,
    }
}

fn echo() -> EchoServer {
    EchoServer::start("127.0.0.1:0".parse().unwrap(), EchoPoll::Block, None).unwrap()
}

/// A short plan against `server`: no warm-up, a 500 ms window, 4
/// connections, sleeping client, generous timeouts for a loaded machine.
fn plan(server: &EchoServer) -> LoadPlan {
    let url = format!("http://{}/echo", server.addr());
    let mut p = short_plan(&[spec(&url, 1)], 4, Duration::from_millis(500));
    p.connect_timeout = Duration::from_secs(10);
    p
}

fn schedule_count(
    arrival: Arrival,
    rate: f64,
    threads: usize,
    seed: u64,
    from_ns: u64,
    to_ns: u64,
) -> u64 {
    (0..threads)
        .map(|i| {
            let mut s = ArrivalSchedule::for_thread(arrival, rate, i, threads, seed);
            std::iter::from_fn(|| Some(s.next_ns()))
                .take_while(|&t| t < to_ns)
                .filter(|&t| t >= from_ns)
                .count() as u64
        })
        .sum()
}

#[test]
fn requests_sent_equal_the_schedule() {
    let server = echo();
    let p = plan(&server);
    let r = within("run", move || run_rate(&p, 2_000.0, false).unwrap());
    // 2000/s for 500 ms: arrivals at 0, 0.5 ms, …, 499.5 ms.
    assert_eq!(r.offered, 1_000);
    assert_eq!(
        r.offered,
        schedule_count(Arrival::Fixed, 2_000.0, 1, 1, 0, 500_000_000)
    );
    assert_balanced(&r);
    assert_eq!(
        r.errors(),
        0,
        "{}",
        nocturne_bench::load::output::details(&r)
    );
    assert_eq!(r.completed, r.sent);
    assert_eq!(r.service.len(), r.completed);
    assert_eq!(r.send_lag.len(), r.sent);
    assert_eq!(r.statuses.get(&200), Some(&r.completed));
    // The server answered every request the client sent, plus the probe.
    assert_eq!(server.served(), r.requests_total + 1);
    assert!(r.latency.quantile_ns(0.5) > 0);
    // Latency from the intended time is never below the service time.
    assert!(r.latency.quantile_ns(0.5) >= r.service.quantile_ns(0.5) / 2);
}

#[test]
fn warmup_is_sent_but_not_recorded() {
    let server = echo();
    let mut p = plan(&server);
    p.warmup = Duration::from_millis(200);
    p.duration = Duration::from_millis(300);
    let r = within("run", move || run_rate(&p, 1_000.0, false).unwrap());
    assert_eq!(r.offered, 300, "arrivals at 200..499 ms");
    assert_balanced(&r);
    assert_eq!(
        r.errors(),
        0,
        "{}",
        nocturne_bench::load::output::details(&r)
    );
    // All 500 scheduled requests went out; only the window's were recorded.
    assert_eq!(r.requests_total, 500 - r.unsent);
    assert_eq!(server.served(), r.requests_total + 1);
}

#[test]
fn threads_split_a_poisson_rate() {
    let server = echo();
    let mut p = plan(&server);
    p.threads = 2;
    p.arrival = Arrival::Poisson;
    p.seed = 5;
    p.duration = Duration::from_millis(400);
    let r = within("run", move || run_rate(&p, 3_000.0, false).unwrap());
    assert_eq!(
        r.offered,
        schedule_count(Arrival::Poisson, 3_000.0, 2, 5, 0, 400_000_000)
    );
    assert_balanced(&r);
    assert_eq!(
        r.errors(),
        0,
        "{}",
        nocturne_bench::load::output::details(&r)
    );
}

#[test]
fn pipelining_on_one_connection() {
    let server = echo();
    let mut p = plan(&server);
    p.connections = 1;
    p.pipeline = 8;
    p.duration = Duration::from_millis(300);
    let r = within("run", move || run_rate(&p, 5_000.0, false).unwrap());
    assert_eq!(r.offered, 1_500);
    assert_balanced(&r);
    assert_eq!(
        r.errors(),
        0,
        "{}",
        nocturne_bench::load::output::details(&r)
    );
    assert_eq!(server.served(), r.requests_total + 1);
}

#[test]
fn every_poll_mode_runs_the_schedule() {
    for mode in [PollMode::Spin, PollMode::Adaptive, PollMode::Block] {
        let server = echo();
        let mut p = plan(&server);
        p.poll = mode;
        p.duration = Duration::from_millis(200);
        let r = within("run", move || run_rate(&p, 2_000.0, false).unwrap());
        assert_eq!(r.offered, 400, "{mode:?}");
        assert_balanced(&r);
        assert_eq!(
            r.errors(),
            0,
            "{mode:?}: {}",
            nocturne_bench::load::output::details(&r)
        );
    }
}

#[test]
fn a_mix_over_two_servers() {
    let a = echo();
    let b = echo();
    let specs = [
        spec(&format!("http://{}/a", a.addr()), 3),
        spec(&format!("http://{}/b", b.addr()), 1),
    ];
    let p = short_plan(&specs, 6, Duration::from_millis(500));
    let r = within("run", move || run_rate(&p, 4_000.0, false).unwrap());
    assert_eq!(r.offered, 2_000);
    assert_balanced(&r);
    assert_eq!(
        r.errors(),
        0,
        "{}",
        nocturne_bench::load::output::details(&r)
    );
    assert_eq!(r.per_kind.len(), 2);
    assert_eq!(r.per_kind[0].name, "POST /a");
    let (na, nb) = (r.per_kind[0].latency.len(), r.per_kind[1].latency.len());
    // Each kind's counts are its own: every request of kind a went to
    // server a, so a's completed answers are what a served (less the probe).
    let (ka, kb) = (&r.per_kind[0], &r.per_kind[1]);
    assert_eq!(ka.completed, a.served() - 1);
    assert_eq!(kb.completed, b.served() - 1);
    assert_eq!(ka.offered + kb.offered, r.offered);
    assert_eq!(ka.completed + kb.completed, r.completed);
    assert_eq!(ka.unsent + kb.unsent, r.unsent);
    assert_eq!(
        ka.responses_in_window + kb.responses_in_window,
        r.responses_in_window
    );
    assert_eq!(ka.errors() + kb.errors(), 0);
    for k in [ka, kb] {
        assert_eq!(k.latency.len(), k.completed + k.unsent, "{k:?}");
    }
    let cases = nocturne_bench::load::output::cases(&r, &[]);
    assert_eq!(cases[1].name, "4k/s POST /a");
    assert_eq!(cases[1].counts["completed"], ka.completed);
    assert_eq!(cases[1].samples, na);
    assert!(cases[1].ops_per_s > cases[2].ops_per_s, "{cases:?}");
    assert_eq!(na + nb, r.latency.len());
    // The servers saw every request sent, plus one probe each; each saw at
    // most its kind's recorded requests (those include the unsent ones).
    assert_eq!(a.served() + b.served(), r.requests_total + 2);
    assert!(a.served() <= na + 1 && b.served() <= nb + 1);
    assert!(a.served() + b.served() + r.unsent == na + nb + 2);
    let share = na as f64 / (na + nb) as f64;
    assert!(
        (share - 0.75).abs() < 0.05,
        "share of the weight-3 kind: {share}"
    );
}

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("nocturne-load-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn command_line_sweep_writes_every_output() {
    let server = echo();
    let dir = Scratch::new("sweep");
    let url = format!("http://{}/function/echo", server.addr());
    let (json, hgrm, svg) = (
        dir.path("out.json"),
        dir.path("lat.hgrm"),
        dir.path("sweep.svg"),
    );
    let a = args(&[
        &url,
        "--rate",
        "500,1k",
        "--duration",
        "300ms",
        "--warmup",
        "100ms",
        "--connections",
        "4",
        "--poll",
        "block",
        "--timeout",
        "20s",
        "--slo",
        "p99.9=5s",
        "--body",
        "hi",
        "--json",
        &json,
        "--hgrm",
        &hgrm,
        "--plot",
        &svg,
        "--pingpong",
        "200",
        "-q",
    ]);
    within("command", move || run_command(&a).unwrap());

    let report = Report::read_json(std::path::Path::new(&json)).unwrap();
    assert_eq!(report.suite, "load");
    assert!(report.machine.command_line.contains("load"));
    assert_eq!(report.machine.modes["best_rate"], "1000");
    assert_eq!(report.machine.modes["arrival"], "fixed");
    let names: Vec<&str> = report.cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["pingpong", "500/s", "1k/s"]);
    for (case, offered) in [(&report.cases[1], 150), (&report.cases[2], 300)] {
        assert_eq!(case.errors, 0, "{case:?}");
        assert_eq!(case.counts["offered"], offered, "{case:?}");
        assert_eq!(case.samples, offered, "{case:?}");
        assert_eq!(case.flag("slo_met"), Some(true));
        assert!(case.p50_us > 0.0 && case.p50_us <= case.p99_us && case.p99_us <= case.max_us);
    }
    assert_eq!(report.cases[0].samples, 200);

    for rate in ["500", "1000"] {
        let text = std::fs::read_to_string(dir.path(&format!("lat.{rate}.hgrm"))).unwrap();
        assert!(
            text.contains("Percentile") && text.contains("#[Max"),
            "{text}"
        );
    }
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 3, "p50, p99, p99.9");
    assert!(
        svg.contains("SLO p99.9&lt;=5s") && svg.contains("best 1k/s"),
        "{svg}"
    );
}

#[test]
fn a_sweep_stops_at_the_first_rate_that_misses_the_objective() {
    let server = echo();
    let dir = Scratch::new("miss");
    let url = format!("http://{}/", server.addr());
    let json = dir.path("out.json");
    let a = args(&[
        &url,
        "--rate",
        "500..1500/500",
        "--duration",
        "200ms",
        "--warmup",
        "0s",
        "--poll",
        "block",
        "--slo",
        "p50=1ns",
        "--json",
        &json,
        "-q",
    ]);
    let err = within("command", move || run_command(&a).unwrap_err());
    assert!(err.to_string().contains("no rate met"), "{err}");
    let report = Report::read_json(std::path::Path::new(&json)).unwrap();
    assert_eq!(report.cases.len(), 1, "only the first rate ran");
    assert_eq!(report.cases[0].flag("slo_met"), Some(false));
    let raw = std::fs::read_to_string(&json).unwrap();
    assert!(
        raw.contains("\"slo_met\": false") || raw.contains("\"slo_met\":false"),
        "{raw}"
    );
    assert_eq!(report.machine.modes["best_rate"], "none");
}

#[test]
fn a_mix_file_through_the_command_line() {
    let server = echo();
    let dir = Scratch::new("mix");
    std::fs::write(dir.0.join("big.bin"), vec![b'x'; 100_000]).unwrap();
    let mix = dir.path("mix.toml");
    std::fs::write(
        &mix,
        "[[request]]\nname = \"small\"\npath = \"/small\"\nweight = 4\nbody = \"s\"\n\n\
         [[request]]\nname = \"big\"\npath = \"/big\"\nbody_file = \"big.bin\"\n\n\
         [[request]]\nname = \"head\"\npath = \"/h\"\nmethod = \"GET\"\nweight = 1\n",
    )
    .unwrap();
    let json = dir.path("mix.json");
    let url = format!("http://{}", server.addr());
    let a = args(&[
        &url,
        "--mix",
        &mix,
        "--rate",
        "1k",
        "--duration",
        "300ms",
        "--warmup",
        "0s",
        "--poll",
        "adaptive",
        "--spin-us",
        "10",
        "--arrival",
        "poisson",
        "--json",
        &json,
        "-q",
    ]);
    within("command", move || run_command(&a).unwrap());
    let report = Report::read_json(std::path::Path::new(&json)).unwrap();
    let names: Vec<&str> = report.cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["1k/s", "1k/s small", "1k/s big", "1k/s head"]);
    let total = report.cases[0].samples;
    let parts: u64 = report.cases[1..].iter().map(|c| c.samples).sum();
    assert_eq!(total, parts);
    assert!(report.cases[1].samples > report.cases[2].samples);
    assert_eq!(report.cases[0].errors, 0);
}

#[test]
fn a_url_path_beside_a_mix_is_ignored_with_a_warning() {
    let dir = Scratch::new("mixpath");
    let mix = dir.path("mix.toml");
    std::fs::write(
        &mix,
        "[[request]]\nname = \"a\"\npath = \"/a\"\n\n[[request]]\nname = \"b\"\npath = \"/b\"\n",
    )
    .unwrap();
    let settings = |url: &str| {
        let a = args(&[url, "--mix", &mix, "--rate", "1k"]);
        nocturne_bench::load::LoadSettings::from_args(&a).unwrap()
    };
    // The mix's paths replace the URL's: requests go to /a and /b.
    let with_path = settings("http://127.0.0.1:9/function/foo");
    let kinds = &with_path.plan.targets.kinds;
    assert!(kinds[0].wire.starts_with(b"POST /a HTTP/1.1\r\n"));
    assert!(kinds[1].wire.starts_with(b"POST /b HTTP/1.1\r\n"));
    assert_eq!(with_path.warnings.len(), 1, "{:?}", with_path.warnings);
    let w = &with_path.warnings[0];
    assert!(w.contains("(/function/foo) is ignored"), "{w}");
    // A URL that only gives host and port is what the mix expects.
    assert!(settings("http://127.0.0.1:9").warnings.is_empty());
    assert!(settings("http://127.0.0.1:9/").warnings.is_empty());
}
