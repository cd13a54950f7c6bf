//! End-to-end test of `bench ipc`: a real driver, a real peer process, every
//! case, tiny sample counts. No timing is asserted — only that every case
//! ran, counted no errors, and produced sane numbers in the docs/design.md §7 JSON.
//!
//! The driver re-executes its own binary as `<exe> bench ipc-peer …`, so
//! this test brings its own `main` (`harness = false`): invoked that way it
//! *is* the peer, otherwise it runs the tests below in order.
#![allow(unsafe_code)] // one kill(2), to play a crashing peer

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use nocturne_bench::ipc::control::{self, ControlError, Frame, PeerProcess};
use nocturne_bench::ipc::{run_ipc, IpcArgs, IpcSettings};
use nocturne_bench::report::Report;
use nocturne_bench::{pin, BenchCommand};
use nocturne_ipc::region::MemfdRegion;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    top: Top,
}

#[derive(Subcommand)]
enum Top {
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// A test, given the two cores to use (None: fewer than two available).
type Test = fn(Option<&str>);

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("bench") {
        let Top::Bench(cmd) = Cli::parse().top;
        if let Err(e) = nocturne_bench::run(cmd) {
            eprintln!("{e:#}");
            std::process::exit(1);
        }
        return;
    }
    if argv.iter().any(|a| a == "--list") {
        return;
    }
    // Read before any test pins a thread (a pinned thread sees one core).
    let cores = two_cores();
    let tests: [(&str, Test); 4] = [
        (
            "bad_cores_fail_before_anything_starts",
            bad_cores_fail_before_anything_starts,
        ),
        (
            "the_peer_rejects_bad_control_frames",
            the_peer_rejects_bad_control_frames,
        ),
        (
            "every_case_runs_and_reports_sane_numbers",
            every_case_runs_and_reports_sane_numbers,
        ),
        (
            "a_killed_peer_ends_the_run_with_an_error",
            a_killed_peer_ends_the_run_with_an_error,
        ),
    ];
    let filter = argv.iter().skip(1).find(|a| !a.starts_with('-'));
    for (name, test) in tests {
        if filter.is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        eprintln!("test {name} ...");
        // Each test on a fresh thread of the unpinned main thread: the
        // driver pins the thread it runs on.
        let cores = cores.clone();
        std::thread::spawn(move || test(cores.as_deref()))
            .join()
            .unwrap_or_else(|_| panic!("test {name} failed"));
        eprintln!("test {name} ... ok");
    }
}

/// `IpcArgs` as the command line would give them.
fn args(extra: &[&str]) -> IpcArgs {
    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        ipc: IpcArgs,
    }
    Args::parse_from(std::iter::once("ipc").chain(extra.iter().copied())).ipc
}

/// The first two cores this process may use, as `A,B`; None on one core.
fn two_cores() -> Option<String> {
    let allowed = pin::allowed_cores().unwrap();
    match allowed[..] {
        [a, b, ..] => Some(format!("{a},{b}")),
        _ => None,
    }
}

/// `cores` of a test that needs two; without them (None) the test passes
/// only when skipping was asked for: nothing skips silently.
fn cores_or_opt_out(cores: Option<&str>) -> Option<&str> {
    if cores.is_none() {
        assert!(
            std::env::var_os("NOCTURNE_SKIP_MULTICORE").is_some(),
            "fewer than two cores available (set NOCTURNE_SKIP_MULTICORE=1 to skip the tests that need two)"
        );
        eprintln!("  skipped (NOCTURNE_SKIP_MULTICORE): fewer than two cores available");
    }
    cores
}

fn bad_cores_fail_before_anything_starts(_: Option<&str>) {
    let cmd = BenchCommand::Ipc(args(&["--cores", "0,100000"]));
    let err = nocturne_bench::run(cmd).unwrap_err();
    assert!(format!("{err:#}").contains("not available"), "{err:#}");
    let cmd = BenchCommand::Ipc(args(&["--cores", "0,0"]));
    assert!(nocturne_bench::run(cmd).is_err());
    let cmd = BenchCommand::Ipc(args(&["--payload", "64,lots"]));
    assert!(nocturne_bench::run(cmd).is_err());
    let cmd = BenchCommand::Ipc(args(&["--filter", "no-such-case"]));
    let err = nocturne_bench::run(cmd).unwrap_err();
    assert!(format!("{err:#}").contains("no case"), "{err:#}");
}

/// Starts a bare peer (this binary) and hands it a park board of `slots`.
fn peer_with_board(slots: usize) -> PeerProcess {
    let exe = std::env::current_exe().unwrap();
    let peer = PeerProcess::spawn(&exe, 0, Duration::from_secs(10)).unwrap();
    let board = MemfdRegion::create("test-board", slots * 64).unwrap();
    board.seal().unwrap();
    let frame = Frame::Board {
        slots: slots as u64,
    };
    control::send_with_fds(peer.control(), frame, &[board.fd()]).unwrap();
    assert_eq!(control::recv(peer.control()).unwrap(), Frame::BoardOk);
    peer
}

fn setup(case: u32, mechanism: u64, payload: u64) -> Frame {
    Frame::Setup {
        case,
        mechanism,
        payload,
        arg: 0,
    }
}

fn the_peer_rejects_bad_control_frames(_: Option<&str>) {
    let failed = |peer: &PeerProcess, case: u32| {
        let got = control::recv(peer.control());
        assert!(
            matches!(got, Err(ControlError::PeerFailed { case: c }) if c == case),
            "{got:?}"
        );
    };
    // A Setup before the park board.
    let exe = std::env::current_exe().unwrap();
    let peer = PeerProcess::spawn(&exe, 0, Duration::from_secs(10)).unwrap();
    control::send(peer.control(), setup(0, 1, 64)).unwrap();
    failed(&peer, 0);
    // A Board frame without its memfd: the peer quits.
    let peer = PeerProcess::spawn(&exe, 0, Duration::from_secs(10)).unwrap();
    control::send(peer.control(), Frame::Board { slots: 1 }).unwrap();
    assert!(matches!(
        control::recv(peer.control()),
        Err(ControlError::Closed)
    ));
    // Unknown mechanism, a case beyond the board, a payload too large, a
    // mechanism without its descriptors, Serve of a case never set up.
    for (frame, case) in [
        (setup(0, 99, 64), 0),
        (setup(5, 1, 64), 5),
        (setup(0, 1, u64::MAX), 0),
        (setup(0, 1, 64), 0),
        (Frame::Serve { case: 0, count: 1 }, 0),
    ] {
        let peer = peer_with_board(1);
        control::send(peer.control(), frame).unwrap();
        failed(&peer, case);
    }
    // A frame only the peer sends.
    let peer = peer_with_board(1);
    control::send(peer.control(), Frame::Bye).unwrap();
    assert!(matches!(
        control::recv(peer.control()),
        Err(ControlError::Closed)
    ));
    // And a clean shutdown.
    let peer = peer_with_board(1);
    assert!(peer.shutdown(Duration::from_secs(5)).unwrap().success());
}

fn every_case_runs_and_reports_sane_numbers(cores: Option<&str>) {
    let Some(cores) = cores_or_opt_out(cores) else {
        return;
    };
    let json = std::env::temp_dir().join(format!("nocturne-bench-ipc-{}.json", std::process::id()));
    let json_arg = json.display().to_string();
    let cmd = BenchCommand::Ipc(args(&[
        "--cores",
        cores,
        "--rounds",
        "2",
        "--samples",
        "25",
        "--warmup",
        "5",
        "--stream-messages",
        "100000",
        "--stream-batch",
        "16",
        "--json",
        &json_arg,
    ]));
    // Through the same entry point as `nocturne bench ipc`: prints the table,
    // writes the JSON, fails on any error.
    nocturne_bench::run(cmd).expect("bench ipc run failed");

    let text = std::fs::read_to_string(&json).unwrap();
    std::fs::remove_file(&json).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["suite"], "ipc");
    for key in ["commit", "cpu_model", "kernel", "command_line"] {
        assert!(value["machine"][key].is_string(), "machine.{key}: {value}");
    }
    assert!(value["machine"]["core_map"]["driver"].is_array());
    let report = Report::from_json(&text).unwrap();
    // Probed before the driver pinned itself: every core it may use.
    assert!(report.machine.cpus.len() >= 2, "{:?}", report.machine.cpus);

    let mut expected = Vec::new();
    for n in [64, 1024, 16384] {
        for m in [
            "atomic-floor",
            "ring-spin",
            "ring-park",
            "futex",
            "eventfd",
            "pipe",
            "unix-socket",
            "tcp-loopback",
        ] {
            expected.push(format!("{m}/{n}"));
        }
    }
    expected.push("ring-stream/64".into());
    let names: Vec<&str> = report.cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );

    for case in &report.cases {
        let name = &case.name;
        assert_eq!(case.errors, 0, "{name} counted errors");
        if name == "ring-stream/64" {
            // 50000 messages a round: 12 whole windows of 4096 (batches of
            // 16 fill each exactly), the percentiles' samples.
            assert_eq!(case.samples, 24, "{name}: 2 rounds x 12 windows");
            // Counts, written as JSON integers.
            assert_eq!(case.counts["messages"], 100_000, "{name}");
            assert_eq!(case.counts["batch"], 16);
            assert_eq!(case.counts["window_msgs"], 4096);
        } else {
            assert_eq!(case.samples, 50, "{name}: 2 rounds x 25 samples");
        }
        let ladder = [
            case.p50_us,
            case.p90_us,
            case.p99_us,
            case.p999_us,
            case.max_us,
        ];
        assert!(
            ladder.iter().all(|v| v.is_finite() && *v > 0.0),
            "{name}: {ladder:?}"
        );
        assert!(
            ladder.windows(2).all(|w| w[0] <= w[1]),
            "{name}: {ladder:?}"
        );
        assert!(case.ops_per_s.is_finite() && case.ops_per_s > 0.0, "{name}");
        let blocking = !["atomic-floor", "ring-spin", "ring-stream"]
            .iter()
            .any(|p| name.starts_with(p));
        if blocking {
            // The driver waited for the peer to sleep before every send.
            assert_eq!(case.extra["parks_per_msg"], 1.0, "{name}");
        } else {
            assert!(!case.extra.contains_key("parks_per_msg"), "{name}");
        }
    }
}

/// The peer process started by this process (a child of one of its threads).
/// The bench's peer process among this test's children. Other short-lived
/// children (the `git rev-parse` of the machine probe) are skipped: only a
/// process running `bench ipc-peer` counts.
fn find_child() -> Option<u32> {
    let me = std::process::id();
    for task in std::fs::read_dir(format!("/proc/{me}/task")).ok()? {
        let children: PathBuf = task.ok()?.path().join("children");
        let text = std::fs::read_to_string(children).unwrap_or_default();
        for pid in text
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains("ipc-peer") {
                return Some(pid);
            }
        }
    }
    None
}

fn a_killed_peer_ends_the_run_with_an_error(cores: Option<&str>) {
    let Some(cores) = cores_or_opt_out(cores) else {
        return;
    };
    // A mix (a byte stream sees EOF at once), a spinning case and a blocked
    // eventfd read (only the watchdog can end those two).
    for filter in ["/64", "atomic-floor/64", "eventfd/64"] {
        kill_peer_mid_run(cores, filter);
    }
}

fn kill_peer_mid_run(cores: &str, filter: &str) {
    // Enough work that the run is still going when the peer is killed.
    let settings = IpcSettings::from_args(&args(&[
        "--cores",
        cores,
        "--rounds",
        "100000",
        "--samples",
        "1000",
        // ring-stream (in "/64") needs 10 windows of 4096 a round.
        "--stream-messages",
        "4096000000",
        "--filter",
        filter,
        "--stall-timeout",
        "2s",
    ]))
    .unwrap();
    let run = std::thread::spawn(move || run_ipc(&settings));
    let deadline = Instant::now() + Duration::from_secs(30);
    let peer = loop {
        if let Some(pid) = find_child() {
            break pid;
        }
        assert!(Instant::now() < deadline, "the peer never started");
        std::thread::sleep(Duration::from_millis(5));
    };
    std::thread::sleep(Duration::from_millis(300));
    kill(peer);
    let started = Instant::now();
    // The case notices (EOF, a dead thread, or the 2 s watchdog): the run
    // ends in an error, where finishing its 100000 rounds would be Ok (and
    // take hours). No wall-clock bound on how soon it notices (a loaded
    // machine may take its time, docs/design.md §7); the join is bounded
    // only so that a run that never notices fails instead of hanging.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(run.join());
    });
    let err = rx
        .recv_timeout(Duration::from_secs(600))
        .expect("the run never noticed its peer died")
        .unwrap()
        .unwrap_err();
    eprintln!(
        "  {filter}: run ended after {:?} with: {err:#}",
        started.elapsed()
    );
    assert!(find_child().is_none(), "the peer was not reaped");
}

/// SIGKILLs `pid` (a child this test started through the driver).
fn kill(pid: u32) {
    let pid = libc::pid_t::try_from(pid).unwrap();
    // SAFETY: kill(2) takes no pointers; `pid` is our own unreaped child, so
    // the id cannot have been reused by another process.
    let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill({pid}) failed");
}
