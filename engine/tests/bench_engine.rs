//! `nocturne bench engine` end to end, through the real binary: it starts
//! real engines (one per poll mode) and the floor server as separate
//! processes, measures every case with a tiny sample count, and writes the
//! docs/design.md §7 JSON. Timing is never asserted; the report's shape, its error
//! counts, the pids on both ends of the internal calls and the clean-up are.
//!
//! `--net kernel,smoltcp` creates a network namespace and a TAP: those tests
//! need root and iproute2 and fail where they cannot create them, unless
//! `NOCTURNE_SKIP_NETNS=1` is set (CI never sets it).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

mod bench_run;
use bench_run::{case_names, command, processes_mentioning, read_report, Run, Scratch};

/// A debug build on a busy 2-core machine is slow; the run itself is a
/// few seconds.
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// Every case of a default (spin, adaptive) run.
const CASES: [&str; 11] = [
    "tcp-echo-floor",
    "external-call/spin",
    "chain/spin",
    "internal-call/spin",
    "external-call/adaptive",
    "chain/adaptive",
    "internal-call/adaptive",
    "throughput/internal",
    "throughput/external",
    "overload/503",
    "soak",
];

/// Runs `nocturne ARGS` to completion (killed past [`RUN_LIMIT`]).
fn nocturne(args: &[&str], scratch: &Scratch) -> Run {
    bench_run::nocturne(args, scratch, RUN_LIMIT)
}

fn have_two_cores() -> bool {
    bench_run::have_cores_0_and_1("bench engine")
}

/// The config files `bench engine` (pid `pid`) wrote for its engines.
fn leftover_configs(pid: u32) -> Vec<PathBuf> {
    bench_run::temp_files_starting(&format!("nocturne-bench-engine-{pid}-"))
}

/// Set to `1` to skip the tests that need a network namespace.
const SKIP_NETNS_ENV: &str = "NOCTURNE_SKIP_NETNS";

fn skip_netns() -> bool {
    let skip = std::env::var(SKIP_NETNS_ENV).is_ok_and(|v| v == "1");
    if skip {
        eprintln!("{SKIP_NETNS_ENV}=1: skipping a test that needs a network namespace");
    }
    skip
}

/// The network namespaces `bench engine` (pid `pid`) created that still
/// exist.
fn leftover_namespaces(pid: u32) -> Vec<String> {
    let prefix = format!("nct-bench-{pid}-");
    std::fs::read_dir("/var/run/netns")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits (bounded) until no process mentions the run's config files.
fn assert_engines_gone(pid: u32) {
    let prefix = format!("nocturne-bench-engine-{pid}-");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_mentioning(&prefix).is_empty() {
        assert!(
            Instant::now() < deadline,
            "engines outlived the benchmark: {:?}",
            processes_mentioning(&prefix)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn number(case: &Value, key: &str) -> f64 {
    case[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{} has no numeric {key}: {case}", case["name"]))
}

#[test]
fn a_quick_run_reports_every_case_and_cleans_up() {
    if !have_two_cores() {
        return;
    }
    let scratch = Scratch::new("quick");
    let json = scratch.0.join("engine.json");
    let run = nocturne(
        &[
            "bench",
            "engine",
            "--quick",
            "--samples",
            "200",
            "--warmup",
            "50",
            "--rounds",
            "2",
            "--duration",
            "300ms",
            "--connections",
            "3",
            "--soak-requests",
            "2000",
            "--json",
            json.to_str().unwrap(),
        ],
        &scratch,
    );
    run.assert_success();
    for name in CASES {
        assert!(
            run.stdout.contains(name),
            "{name} missing from the table:\n{}",
            run.stdout
        );
    }
    assert!(run
        .stdout
        .contains("target: external-call/spin p50 - tcp-echo-floor p50"));
    assert!(run
        .stdout
        .contains("target: internal-call/spin p50 / external-call/spin p50"));

    let report = read_report(&json);
    assert_eq!(report["suite"], "engine");
    let machine = &report["machine"];
    for role in ["client", "io", "workers"] {
        assert!(
            machine["core_map"][role].is_array(),
            "core_map.{role}: {machine}"
        );
    }
    assert_eq!(machine["modes"]["modes"], "spin,adaptive");
    assert!(machine["command_line"]
        .as_str()
        .unwrap()
        .contains("bench engine"));
    let cases = report["cases"].as_array().unwrap();
    let names = case_names(&report);
    assert_eq!(names, CASES);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        assert!(case["samples"].as_u64().unwrap() > 0, "{name}: no samples");
        assert_eq!(case["errors"].as_u64(), Some(0), "{name}: errors");
        for key in [
            "p50_us",
            "p90_us",
            "p99_us",
            "p999_us",
            "max_us",
            "ops_per_s",
        ] {
            assert!(
                number(case, key) > 0.0,
                "{name}: {key} is not positive: {case}"
            );
        }
        assert!(number(case, "p50_us") <= number(case, "max_us"), "{case}");
        assert!(number(case, "rss_mb") > 0.0, "{name}: rss_mb");
        if name != "tcp-echo-floor" {
            assert!(
                number(case, "workers") >= 6.0,
                "{name}: every function has a worker"
            );
        }
        if name.starts_with("external-call/") || name.starts_with("chain/") {
            // The engine's Server-Timing splits the round trip: its own
            // share (µs resolution) and the rest.
            let (inside, outside) = (
                number(case, "server_timing_p50_us"),
                number(case, "outside_p50_us"),
            );
            assert!(inside >= 0.0 && outside > 0.0, "{case}");
            assert!(
                outside <= number(case, "p50_us") + 1.0,
                "{name}: outside is part of the round trip: {case}"
            );
        } else {
            assert!(
                case.get("server_timing_p50_us").is_none(),
                "{name}: no Server-Timing expected: {case}"
            );
        }
        if name.starts_with("internal-call/") {
            let (caller, callee) = (number(case, "caller_pid"), number(case, "callee_pid"));
            assert!(caller > 0.0 && callee > 0.0, "{case}");
            assert_ne!(caller, callee, "{name}: caller and callee are one process");
            assert_ne!(
                caller,
                f64::from(run.pid),
                "{name}: the caller is not the bench"
            );
        }
    }
    // Two rounds of 200 samples, per latency case.
    assert_eq!(cases[0]["samples"].as_u64(), Some(400));
    // The internal calls of the two engines ran in different processes.
    assert_ne!(
        number(&cases[3], "caller_pid"),
        number(&cases[6], "caller_pid")
    );

    // Every server is gone, and so are the config files.
    assert!(
        leftover_configs(run.pid).is_empty(),
        "{:?}",
        leftover_configs(run.pid)
    );
    assert_engines_gone(run.pid);
}

/// The name of throughput client thread `i` is this and `i` (the driver's
/// `THROUGHPUT_CLIENT_THREAD`).
const CLIENT_THREAD: &str = "throughput-";

/// `(tid, name, Cpus_allowed_list)` of every live throughput client thread
/// of process `pid`.
fn client_threads(pid: u32) -> Vec<(u32, String, String)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let tid: u32 = task.file_name().to_str()?.parse().ok()?;
            // A thread may end between the listing and the reads: skipped.
            let status = std::fs::read_to_string(task.path().join("status")).ok()?;
            let field = |key: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(key))
                    .map(|v| v.trim().to_owned())
            };
            let name = field("Name:")?;
            name.starts_with(CLIENT_THREAD)
                .then(|| Some((tid, name, field("Cpus_allowed_list:")?)))?
        })
        .collect()
}

#[test]
fn client_cores_pin_the_throughput_client_threads() {
    if !have_two_cores() {
        return;
    }
    // The latency client (and so the thread that starts the throughput
    // clients) is pinned to core 0. Where cores beyond 0 and 1 exist, the
    // clients get up to two of them, thread i on the (i mod 2)-th: a thread
    // left unpinned would show core 0. On two cores 0 is the only legal
    // list: the check then shows each client's mask is exactly core 0, not
    // 0-1, but cannot tell its own pin from the one it inherited.
    let allowed = nocturne_bench::pin::allowed_cores().unwrap();
    let mut client_cores: Vec<usize> = allowed.into_iter().filter(|&c| c > 1).take(2).collect();
    if client_cores.is_empty() {
        client_cores.push(0);
    }
    let list = client_cores
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let scratch = Scratch::new("client-cores");
    // tid -> (name, every mask it was seen with, in order).
    let mut seen: BTreeMap<u32, (String, Vec<String>)> = BTreeMap::new();
    let run = bench_run::nocturne_watched(
        command(),
        &[
            "bench",
            "engine",
            "--quick",
            "--modes",
            "adaptive",
            "--client-core",
            "0",
            "--io-core",
            "1",
            "--worker-cores",
            "0",
            "--client-cores",
            &list,
            "--samples",
            "50",
            "--warmup",
            "10",
            "--rounds",
            "1",
            "--duration",
            "300ms",
            "--connections",
            "3",
            "--soak-requests",
            "100",
        ],
        &scratch,
        RUN_LIMIT,
        |pid| {
            for (tid, name, mask) in client_threads(pid) {
                let (_, masks) = seen.entry(tid).or_insert_with(|| (name, Vec::new()));
                if masks.last() != Some(&mask) {
                    masks.push(mask);
                }
            }
        },
    );
    run.assert_success();
    assert!(run.stdout.contains("throughput/external"), "{}", run.stdout);
    // Both throughput cases start three clients each; every one lives for
    // the 300 ms window and more, so every name was seen.
    let names: std::collections::BTreeSet<&str> =
        seen.values().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["throughput-0", "throughput-1", "throughput-2"],
        "{seen:?}"
    );
    for (tid, (name, masks)) in &seen {
        let i: usize = name[CLIENT_THREAD.len()..].parse().unwrap();
        let want = client_cores[i % client_cores.len()].to_string();
        // A sample may catch a thread in the instant before it pins itself;
        // from then on it stays where it pinned itself.
        assert_eq!(
            masks.last(),
            Some(&want),
            "{name} (tid {tid}) ran on {masks:?}, --client-cores {list}: {seen:?}"
        );
    }
}

#[test]
fn an_engine_that_fails_to_start_is_reported_with_its_log() {
    if !have_two_cores() {
        return;
    }
    let scratch = Scratch::new("fail");
    let json = scratch.0.join("engine.json");
    let run = nocturne(
        &[
            "bench",
            "engine",
            "--quick",
            "--engine-arg=--no-such-flag",
            "--json",
            json.to_str().unwrap(),
        ],
        &scratch,
    );
    assert!(!run.success, "{}", run.stdout);
    assert!(
        run.stderr.contains("engine (poll spin) exited"),
        "{}",
        run.stderr
    );
    // Its log (clap's complaint) is part of the message.
    assert!(run.stderr.contains("--no-such-flag"), "{}", run.stderr);
    assert!(!json.exists());
    assert!(leftover_configs(run.pid).is_empty());
}

#[test]
fn bad_flags_are_refused_before_anything_starts() {
    let scratch = Scratch::new("flags");
    for (args, needle) in [
        (&["--client-core=1", "--io-core=1"][..], "must differ"),
        (
            &["--worker-cores=0-1", "--io-core=1"],
            "must not include the io core",
        ),
        // --client-core is 0: the clash is --client-cores', and says so.
        (
            &["--client-cores=0-1"],
            "--client-cores and --io-core must differ",
        ),
        (
            &["--duration=0"],
            "--duration 0 is out of range: it takes 1ms..=3600s",
        ),
        // serve's grammar: exact, so no fraction of a nanosecond rounds to 0.
        (
            &["--duration=0.0000000001"],
            "--duration: bad duration: `0.0000000001` is finer than one nanosecond",
        ),
        (&["--modes=spin,turbo"], "unknown poll mode"),
        (&["--net=kernel,dpdk"], "unknown network stack"),
        (
            &["--net=smoltcp", "--conns-rate=0"],
            "--conns-rate 0 is out of range: it takes 1..=100000",
        ),
        (
            &["--io-core=4096", "--client-core=0"],
            "not available to this process",
        ),
    ] {
        let mut argv = vec!["bench", "engine", "--quick"];
        argv.extend_from_slice(args);
        let run = nocturne(&argv, &scratch);
        assert!(!run.success, "{args:?} was accepted");
        assert!(run.stderr.contains(needle), "{args:?}: {}", run.stderr);
        assert!(leftover_configs(run.pid).is_empty());
    }
}

/// The cases `--net kernel,smoltcp` adds, after the others.
const NET_CASES: [&str; 6] = [
    "external-call/kernel",
    "external-call/smoltcp",
    "conns/kernel/64",
    "conns/kernel/1024",
    "conns/smoltcp/64",
    "conns/smoltcp/1024",
];

#[test]
fn a_quick_net_run_measures_both_stacks_in_a_namespace_it_removes() {
    if !have_two_cores() || skip_netns() {
        return;
    }
    let scratch = Scratch::new("net");
    let json = scratch.0.join("engine.json");
    let run = nocturne(
        &[
            "bench",
            "engine",
            "--quick",
            "--net",
            "kernel,smoltcp",
            "--modes",
            "spin",
            "--samples",
            "100",
            "--warmup",
            "20",
            "--rounds",
            "2",
            "--duration",
            "200ms",
            "--connections",
            "2",
            "--conns-duration",
            "300ms",
            "--json",
            json.to_str().unwrap(),
        ],
        &scratch,
    );
    // Root and iproute2 are required: a run that cannot make its
    // namespace fails, and so does this test.
    run.assert_success();
    for line in [
        "target: external-call/smoltcp p50 / external-call/kernel p50",
        "target: conns/smoltcp/1024 p99.9 / conns/smoltcp/64 p99.9",
        "net kernel: kernel TCP over the loopback of namespace nct-bench-",
        "net smoltcp: smoltcp over TAP nct0 in namespace nct-bench-",
    ] {
        assert!(
            run.stdout.contains(line),
            "{line:?} missing:\n{}",
            run.stdout
        );
    }

    let report = read_report(&json);
    let modes = &report["machine"]["modes"];
    assert_eq!(modes["nets"], "kernel,smoltcp");
    assert_eq!(modes["conns_rate_per_s"], "2000");
    let namespace = modes["net_namespace"].as_str().unwrap().to_owned();
    assert!(
        namespace.starts_with(&format!("nct-bench-{}-", run.pid)),
        "{namespace}"
    );
    assert!(modes["net_path_smoltcp"]
        .as_str()
        .unwrap()
        .contains("192.0.2.2:8080"));
    assert!(modes["server_net_smoltcp"]
        .as_str()
        .unwrap()
        .contains("smoltcp on TAP "));
    assert!(modes["server_net_kernel"]
        .as_str()
        .unwrap()
        .contains("kernel TCP"));
    let cases = report["cases"].as_array().unwrap();
    let names = case_names(&report);
    assert_eq!(
        names[names.len() - NET_CASES.len()..],
        NET_CASES,
        "{names:?}"
    );
    for case in &cases[cases.len() - NET_CASES.len()..] {
        let name = case["name"].as_str().unwrap();
        assert_eq!(case["errors"].as_u64(), Some(0), "{name}: errors");
        assert!(case["samples"].as_u64().unwrap() > 0, "{name}: no samples");
        for key in ["p50_us", "p999_us", "max_us", "ops_per_s", "rss_mb"] {
            assert!(number(case, key) > 0.0, "{name}: {key}: {case}");
        }
        assert!(number(case, "workers") >= 6.0, "{name}: {case}");
        if let Ok(count) = name.rsplit('/').next().unwrap().parse::<f64>() {
            assert_eq!(number(case, "connections"), count, "{case}");
            assert_eq!(number(case, "offered_per_s"), 2000.0, "{case}");
            // Read from the namespace's counters (any value: not a timing).
            assert!(number(case, "tcp_retransmits") >= 0.0, "{case}");
            assert!(
                number(case, "send_lag_p50_us") <= number(case, "send_lag_p99_us"),
                "{case}"
            );
        }
    }
    // The other cases ran as without --net, with no errors either.
    for case in cases {
        assert_eq!(case["errors"].as_u64(), Some(0), "{case}");
    }

    // The namespace (and the TAP in it), the engines and their configs are gone.
    assert!(
        !std::path::Path::new("/var/run/netns")
            .join(&namespace)
            .exists(),
        "{namespace} is left"
    );
    assert_eq!(leftover_namespaces(run.pid), Vec::<String>::new());
    assert!(leftover_configs(run.pid).is_empty());
    assert_engines_gone(run.pid);
}

#[test]
fn a_net_run_that_fails_still_removes_its_namespace() {
    if !have_two_cores() || skip_netns() {
        return;
    }
    let scratch = Scratch::new("net-fail");
    // The namespace is made first; then the first engine refuses the flag.
    let run = nocturne(
        &[
            "bench",
            "engine",
            "--quick",
            "--net",
            "smoltcp",
            "--engine-arg=--no-such-flag",
        ],
        &scratch,
    );
    assert!(!run.success, "{}", run.stdout);
    assert!(
        run.stderr
            .contains(&format!("network namespace nct-bench-{}-", run.pid)),
        "the namespace was not created: {}",
        run.stderr
    );
    assert!(run.stderr.contains("--no-such-flag"), "{}", run.stderr);
    assert_eq!(leftover_namespaces(run.pid), Vec::<String>::new());
    assert!(leftover_configs(run.pid).is_empty());
    assert_engines_gone(run.pid);
}

/// Ctrl-C in the middle of the latency rounds (no `--net`): the run ends
/// promptly, prints and writes the cases measured so far marked as
/// interrupted, fails, and leaves no engine and no config file behind.
#[test]
fn an_interrupted_run_reports_what_it_measured_and_cleans_up() {
    if !have_two_cores() {
        return;
    }
    let scratch = Scratch::new("sigint");
    let json = scratch.0.join("partial.json");
    let stopped = bench_run::interrupt_when(
        &[
            "bench",
            "engine",
            "--quick",
            // Rounds enough to outlast any slow machine: the signal comes
            // in one of them.
            "--rounds",
            "100000",
            "--samples",
            "100",
            "--warmup",
            "10",
            "--json",
            json.to_str().unwrap(),
        ],
        &scratch,
        "latency cases x",
        // Into the rounds, past the first (a few hundred round trips).
        Duration::from_secs(2),
        RUN_LIMIT,
        // A round is milliseconds; the servers' shutdown a second or two.
        Duration::from_secs(30),
    );
    let run = &stopped.run;
    assert!(!run.success, "an interrupted run must fail");
    assert!(
        run.stderr.contains("interrupted in latency round"),
        "{}",
        run.stderr
    );
    // The table of what was measured is printed.
    assert!(run.stdout.contains("tcp-echo-floor"), "{}", run.stdout);
    let report = read_report(&json);
    let interrupted = report["machine"]["modes"]["interrupted"]
        .as_str()
        .unwrap_or_else(|| panic!("no modes.interrupted: {report}"));
    assert!(interrupted.starts_with("in latency round"), "{interrupted}");
    let names = case_names(&report);
    // The latency cases, each with the rounds it finished; none of the
    // cases after the rounds.
    assert_eq!(names, CASES[..7], "{report}");
    for case in report["cases"].as_array().unwrap() {
        assert!(number(case, "samples") > 0.0, "{case}");
        assert_eq!(case["errors"], 0, "{case}");
    }
    assert!(
        leftover_configs(run.pid).is_empty(),
        "{:?}",
        leftover_configs(run.pid)
    );
    assert_engines_gone(run.pid);
}
