//! A storm of worker starts, and after it: the spawner pool grows to start
//! the workers side by side, then gives its extra threads back once they
//! have been idle, and the workers they started live on (QA m8: after a
//! storm the engine kept 64 spawner threads for good).
//!
//! Real processes throughout; every wait is bounded.

mod common;

use std::time::{Duration, Instant};

use common::{nocturne_exe, threads, Engine, LONG};
use nocturne_engine::worker::{SPAWNER_IDLE_RETIRE_ENV, SPAWNER_THREADS};

/// Workers of `slow` that take a second to start (their command sleeps
/// before it becomes the built-in echo), sixteen at once.
fn slow_starts_config() -> String {
    format!(
        r#"
[[functions]]
name = "slow"
command = ["/bin/sh", "-c", 'sleep 1; exec "{}" worker echo']
min_workers = 16
"#,
        nocturne_exe().display()
    )
}

/// The engine's spawner threads (`nocturne-spawner-N`, cut to 15 characters
/// in `comm`), and all its threads.
fn spawner_threads(engine: &Engine) -> (usize, usize) {
    let all = threads(engine.pid());
    let spawners = all
        .iter()
        .filter(|(_, name)| name.starts_with("nocturne-spawn"))
        .count();
    (spawners, all.len())
}

#[test]
fn spawner_threads_above_the_first_four_end_once_idle_and_their_workers_live_on() {
    let engine = Engine::builder()
        .config(&slow_starts_config())
        .env(SPAWNER_IDLE_RETIRE_ENV, "1000")
        .no_health_wait()
        .start();
    // The storm: sixteen starts of a second each, side by side.
    let mut peak = (0, 0);
    let deadline = Instant::now() + LONG;
    while engine.workers("slow").len() < 16 {
        let now = spawner_threads(&engine);
        peak = peak.max(now);
        if Instant::now() > deadline {
            engine.fail(&format!("16 slow workers did not start; threads {now:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (peak_spawners, peak_all) = peak;
    assert!(
        peak_spawners >= 12,
        "the pool did not grow for the storm: {peak_spawners} spawner threads at most"
    );
    let mut workers = engine.workers("slow");
    workers.sort();

    // A second after the storm, the extra threads end.
    let deadline = Instant::now() + LONG;
    let (spawners, all) = loop {
        let now = spawner_threads(&engine);
        if now.0 <= SPAWNER_THREADS {
            break now;
        }
        if Instant::now() > deadline {
            engine.fail(&format!(
                "{} spawner threads {LONG:?} after the storm (peak {peak_spawners})",
                now.0
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(spawners, SPAWNER_THREADS, "the first ones stay");
    assert!(
        all <= peak_all - (peak_spawners - SPAWNER_THREADS),
        "the engine has {all} threads, {peak_all} at the storm's peak"
    );
    // The workers they started live on (the thread that forks a worker is
    // its parent, whose exit would SIGKILL it), and serve.
    let mut now = engine.workers("slow");
    now.sort();
    assert_eq!(now, workers, "workers died with the spawner threads");
    assert_eq!(
        engine.post("/function/slow", b"still here").text(),
        "still here"
    );
    assert!(
        !engine.log_text().contains("is not a nocturne setting"),
        "{SPAWNER_IDLE_RETIRE_ENV} is ours:\n{}",
        engine.log_text()
    );
}
