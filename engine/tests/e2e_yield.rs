//! The adaptive core loop yields its core between idle turns when workers
//! share that core (`Config::io_shares_workers`), and spins when they do
//! not: observed from a CPU-bound thread pinned to the io core beside the
//! loop, while requests keep the loop inside its spin budget. Both threads
//! are always runnable there, so their CPU times (`schedstat`) over one
//! window tell the loops apart: a spinning loop takes its fair share, as
//! much as the busy thread (the hog); a yielding one leaves it nearly all.
//!
//! Only the ratio of the two, measured over the same window, is asserted:
//! other load on the core (another engine spinning there, a build) lowers
//! both alike, and no wall-clock figure enters.
//!
//! Its own test binary: the other e2e tests start engines whose loops may
//! run on the same core at the same time (Cargo runs test binaries one
//! after another).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{sample_thread_state, two_cores, Client, Engine, StateSamples};

/// One echo worker, so the engine starts few processes.
const ONE_ECHO: &str =
    "[[functions]]\nname = \"echo\"\nbuiltin = \"echo\"\nmin_workers = 1\nmax_workers = 1\n";

/// How long the CPU hog runs beside the loop per measurement.
const WINDOW: Duration = Duration::from_millis(1500);
/// How often the loop is given work during a window: well inside its
/// 1 s spin budget, so it never goes to sleep in epoll.
const POKE_EVERY: Duration = Duration::from_millis(200);
/// Measurements before a placement's expectation counts as failed (a
/// window can be unlucky on a loaded machine).
const ATTEMPTS: usize = 3;

/// Nanoseconds thread `path` (a `/proc/.../task/TID` or `/proc/thread-self`
/// directory) has run on a CPU: the first field of its `schedstat`.
fn run_ns(path: &str) -> u64 {
    let text = std::fs::read_to_string(format!("{path}/schedstat"))
        .unwrap_or_else(|e| panic!("{path}/schedstat: {e}"));
    text.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{path}/schedstat: {text:?}"))
}

/// What one window measured: the CPU shares of the hog and of the loop.
#[derive(Debug, Clone, Copy)]
struct Shares {
    hog: f64,
    io_loop: f64,
}

/// Runs a busy thread (the hog) pinned to `core` for [`WINDOW`] while a
/// request every [`POKE_EVERY`] keeps the engine's loop in its spin budget;
/// returns the share of the window each of them ran, and the loop's states
/// meanwhile.
fn measure(engine: &Engine, core: usize) -> (Shares, StateSamples) {
    let tid = engine.io_thread();
    let io = format!("/proc/{}/task/{tid}", engine.pid());
    let addr = engine.addr();
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut client = Client::connect(addr);
            // Relaxed: a flag with no data behind it.
            while !done.load(Ordering::Relaxed) {
                assert_eq!(client.post("/function/echo", b"p").text(), "p");
                std::thread::sleep(POKE_EVERY);
            }
        });
        // Let the first request put the loop in its spin budget.
        std::thread::sleep(Duration::from_millis(50));
        let hog = scope.spawn(|| {
            assert!(
                core_affinity::set_for_current(core_affinity::CoreId { id: core }),
                "cannot pin the hog to core {core}"
            );
            let io_before = run_ns(&io);
            let before = run_ns("/proc/thread-self");
            let start = Instant::now();
            let mut x = 0u64;
            while start.elapsed() < WINDOW {
                for _ in 0..1000 {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            let ran = run_ns("/proc/thread-self") - before;
            let io_ran = run_ns(&io) - io_before;
            let wall = start.elapsed().as_nanos() as f64;
            Shares {
                hog: ran as f64 / wall,
                io_loop: io_ran as f64 / wall,
            }
        });
        let states = sample_thread_state(engine.pid(), tid, WINDOW);
        let shares = hog.join();
        // Before any panic: the scope waits for the poking thread.
        done.store(true, Ordering::Relaxed);
        (shares.expect("the hog thread"), states)
    })
}

/// Measures `engine`'s loop beside a CPU hog on `core` until `want`
/// holds (at most [`ATTEMPTS`] windows); fails with every window seen. The
/// loop must also be seen runnable most of the time: polling, not asleep
/// in epoll (which would spare the core without any yield).
fn expect_shares(engine: &Engine, what: &str, core: usize, want: impl Fn(&Shares) -> bool) {
    let mut seen = Vec::new();
    for _ in 0..ATTEMPTS {
        let (shares, states) = measure(engine, core);
        eprintln!(
            "{what}: hog {:.3} of core {core}, io loop {:.3} (states {:?})",
            shares.hog, shares.io_loop, states.counts
        );
        if want(&shares) && states.mostly_running(0.5) {
            return;
        }
        seen.push((shares, states.counts));
    }
    engine.fail(&format!("{what}: windows seen {seen:?}"));
}

#[test]
fn adaptive_loop_yields_to_a_busy_thread_only_when_workers_share_its_core() {
    let Some((first, last)) = two_cores() else {
        return;
    };
    let io = last.to_string();
    let start = |workers: usize| {
        Engine::builder()
            .config(ONE_ECHO)
            .poll("adaptive")
            .args([
                "--spin-us",
                "1000000",
                "--io-cores",
                &io,
                "--worker-cores",
                &workers.to_string(),
            ])
            .start()
    };

    // Workers on the io core: the loop yields to the hog (measured on the
    // 2-core VM, with another engine spinning on the core too: the loop
    // 0.002-0.005 of the core, the hog 0.3-0.7).
    let shared = start(last);
    assert!(
        shared.log_text().contains("yielding"),
        "{}",
        shared.log_text()
    );
    expect_shares(&shared, "workers on the io core", last, |s| {
        s.io_loop < 0.2 * s.hog
    });
    drop(shared);

    // Workers on another core: the loop spins and takes as much as the
    // hog (measured: 0.24-0.29 of the core each, beside that other engine).
    let apart = start(first);
    assert!(
        !apart.log_text().contains("yielding"),
        "{}",
        apart.log_text()
    );
    expect_shares(&apart, "workers on another core", last, |s| {
        s.io_loop > 0.5 * s.hog
    });
}
