//! `--spin-us`: how long an adaptive io loop keeps running after work. In a
//! test binary of its own: the expectation (mostly running for a 1 s
//! budget) only holds when no other test's engine competes for the cores,
//! because an adaptive loop beside CPU-bound threads sleeps on purpose
//! (`nocturne_ipc::contention`); `e2e_flags` runs its tests in parallel.
//! Its tests take the harness's exclusive lock, one engine at a time: two
//! io loops on one core, each polling for long, would be each other's
//! competitor.

mod common;

use std::time::Duration;

use common::{expect_state, mostly_running, mostly_sleeping, Client, Engine, SAMPLE};

#[test]
fn spin_us_is_how_long_an_adaptive_io_loop_keeps_running() {
    let poke = |engine: &Engine| {
        let addr = engine.addr();
        move || {
            assert_eq!(
                Client::connect(addr).post("/function/echo", b"p").text(),
                "p"
            )
        }
    };
    // The longest budget (1 s): the loop still runs for a while after a call.
    let engine = Engine::builder()
        .args(["--poll", "adaptive", "--spin-us", "1000000"])
        .exclusive()
        .start();
    expect_state(
        &engine,
        "--spin-us 1000000",
        engine.pid(),
        engine.io_thread(),
        poke(&engine),
        mostly_running,
    );
    drop(engine);
    // No budget: it sleeps at once.
    let engine = Engine::builder()
        .args(["--poll", "adaptive", "--spin-us", "0"])
        .exclusive()
        .start();
    expect_state(
        &engine,
        "--spin-us 0",
        engine.pid(),
        engine.io_thread(),
        poke(&engine),
        mostly_sleeping,
    );
    drop(engine);

    let (status, log) = Engine::builder()
        .args(["--spin-us", "5000000"])
        .run_to_exit();
    assert!(!status.success());
    assert!(log.contains("5000000"), "{log}");
}

/// `--spin-max-us`: while requests keep arriving closer together than it,
/// an adaptive loop polls through the gaps between them instead of sleeping
/// after `--spin-us`. A request every 3 ms on one keep-alive connection:
/// with `--spin-us 0` the loop sleeps in each gap unless the stretch lets
/// it poll through them.
#[test]
fn spin_max_us_keeps_an_adaptive_io_loop_polling_between_close_arrivals() {
    // Requests every 3 ms from 150 ms before the sampling (the loop learns
    // the gaps from the first few dozen) until just before it ends, so
    // that no request outlives the engine.
    const LEARN: Duration = Duration::from_millis(150);
    let ticker = |engine: &Engine| {
        let addr = engine.addr();
        move || {
            let end = std::time::Instant::now() + LEARN + SAMPLE - Duration::from_millis(20);
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                while std::time::Instant::now() < end {
                    assert_eq!(client.post("/function/echo", b"t").text(), "t");
                    std::thread::sleep(Duration::from_millis(3));
                }
            });
            std::thread::sleep(LEARN);
        }
    };
    let engine = Engine::builder()
        .args([
            "--poll",
            "adaptive",
            "--spin-us",
            "0",
            "--spin-max-us",
            "1000000",
        ])
        .exclusive()
        .start();
    expect_state(
        &engine,
        "--spin-us 0 --spin-max-us 1000000, a request every 3 ms",
        engine.pid(),
        engine.io_thread(),
        ticker(&engine),
        mostly_running,
    );
    drop(engine);
    let engine = Engine::builder()
        .args(["--poll", "adaptive", "--spin-us", "0", "--spin-max-us", "0"])
        .exclusive()
        .start();
    expect_state(
        &engine,
        "--spin-us 0 --spin-max-us 0, a request every 3 ms",
        engine.pid(),
        engine.io_thread(),
        ticker(&engine),
        mostly_sleeping,
    );
    drop(engine);

    let (status, log) = Engine::builder()
        .args(["--spin-max-us", "5000000"])
        .run_to_exit();
    assert!(!status.success());
    assert!(
        log.contains("--spin-max-us") && log.contains("5000000"),
        "{log}"
    );
}

/// A wake from epoll with nothing to do (the loop's 50 ms timer timeout
/// while idle) is no arrival: it does not start another `--spin-us` of
/// polling. With a 200 ms budget and no requests, a loop that restarted
/// its budget on every such wake would never stop polling.
#[test]
fn an_empty_wake_does_not_restart_the_polling_budget() {
    let engine = Engine::builder()
        .args([
            "--poll",
            "adaptive",
            "--spin-us",
            "200000",
            "--spin-max-us",
            "0",
        ])
        .exclusive()
        .start();
    // Past the budget that the start-up and the health checks began.
    let settle = || std::thread::sleep(Duration::from_millis(400));
    expect_state(
        &engine,
        "--spin-us 200000, idle",
        engine.pid(),
        engine.io_thread(),
        settle,
        mostly_sleeping,
    );
}
