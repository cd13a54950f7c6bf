//! The engine's log output stalled or closed, as a stuck pager or log
//! shipper, or `| head`, would leave it: the engine keeps serving, replaces
//! workers, and stops on SIGTERM; lines are dropped, never waited for.

mod common;

use std::time::{Duration, Instant};

use common::{nocturne_exe, signal, Engine, LONG};

/// `echo` prints 30 000 lines (300 KB) to stderr each time a worker of it
/// starts (far more than a pipe or the engine's log queue holds), then
/// becomes the built-in echo.
fn noisy_config() -> String {
    let exe = nocturne_exe();
    format!(
        r#"
[[functions]]
name = "echo"
command = ["/bin/sh", "-c", "head -c 300000 /dev/zero | tr '\\0' x | fold -w 9 >&2; exec '{}' worker echo"]

[[functions]]
name = "bar"
builtin = "bar"
"#,
        exe.display()
    )
}

/// Kills `function`'s one worker and waits for another (not for its
/// "ready" line: the log may not be read).
fn replace_worker(engine: &Engine, function: &str) {
    let [old] = engine.workers(function)[..] else {
        engine.fail(&format!(
            "one {function} worker: {:?}",
            engine.all_workers()
        ));
    };
    signal(old, libc::SIGKILL);
    let deadline = Instant::now() + LONG;
    while !matches!(engine.workers(function)[..], [pid] if pid != old) {
        if Instant::now() > deadline {
            engine.fail(&format!("{function} worker {old} was not replaced"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_stalled_log_reader_costs_log_lines_not_serving() {
    let mut engine = Engine::builder().config(&noisy_config()).start();
    engine.log().pause();
    // Each replacement floods the log (the engine's own lines and its
    // worker's 300 KB) while nobody reads it.
    for round in 0..2 {
        replace_worker(&engine, "echo");
        let r = engine.post("/function/echo", b"still serving");
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "still serving"),
            "round {round}"
        );
        assert_eq!(engine.post("/function/bar", b"x").status, 200);
        assert_eq!(engine.get("/healthz").status, 200);
    }
    // Read again, the log says what it lost.
    engine.log().resume();
    replace_worker(&engine, "echo");
    if engine
        .log()
        .wait_for(LONG, |l| {
            l.contains("log line(s) dropped here: the log output was not read fast enough")
        })
        .is_none()
    {
        engine.fail("no note of the dropped lines");
    }
    // Stalled again: SIGTERM still stops the engine.
    engine.log().pause();
    replace_worker(&engine, "echo");
    engine.signal(libc::SIGTERM);
    let status = engine.wait_exit(LONG);
    engine.log().resume();
    match status {
        Some(status) => assert!(status.success(), "{status:?}"),
        None => engine.fail("SIGTERM did not stop an engine whose log is stalled"),
    }
}

#[test]
fn a_closed_log_output_does_not_stop_the_engine() {
    let mut engine = Engine::start(&[]);
    engine.log().close();
    // The first worker death is the last line read; the second one's lines
    // meet a closed pipe.
    replace_worker(&engine, "echo");
    replace_worker(&engine, "echo");
    let r = engine.post("/function/echo", b"still serving");
    assert_eq!((r.status, r.text().as_str()), (200, "still serving"));
    assert_eq!(engine.get("/healthz").status, 200);
    engine.signal(libc::SIGTERM);
    match engine.wait_exit(LONG) {
        Some(status) => assert!(status.success(), "{status:?}"),
        None => engine.fail("the engine did not stop on SIGTERM"),
    }
}
