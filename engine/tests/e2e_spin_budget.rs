//! `--spin-us`: how long an adaptive io loop keeps running after work. In a
//! test binary of its own: the expectation (mostly running for a 1 s
//! budget) only holds when no other test's engine competes for the cores,
//! because an adaptive loop beside CPU-bound threads sleeps on purpose
//! (`nocturne_ipc::contention`); `e2e_flags` runs its tests in parallel.

mod common;

use common::{expect_state, mostly_running, mostly_sleeping, Client, Engine};

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
    let engine = Engine::start(&["--poll", "adaptive", "--spin-us", "1000000"]);
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
    let engine = Engine::start(&["--poll", "adaptive", "--spin-us", "0"]);
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
