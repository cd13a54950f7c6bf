//! The engine's log output stalled or closed, as a stuck pager or log
//! shipper, or `| head`, would leave it: the engine keeps serving, replaces
//! workers, and stops on SIGTERM; lines are dropped, never waited for.
//! And a worker that floods its output, which must not flood the log.

mod common;

use std::time::{Duration, Instant};

use common::{nocturne_exe, signal, Engine, LONG};
use nocturne_engine::worker::log::{BURST_BYTES, MAX_LINE_LEN, RATE_BYTES_PER_SEC};

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

/// `echo`, whose worker starts a subshell that writes (beside the worker's
/// own lines) a few ordinary lines, one line of 8 MB, and 2 × 10 MB of
/// random bytes (binary lines, which escaping makes grow about 3× in the
/// log), then an ordinary line after a pause.
fn chatty_config() -> String {
    let exe = nocturne_exe();
    format!(
        r#"
[[functions]]
name = "echo"
command = ["/bin/sh", "-c", '{{ echo "a normal line"; printf "tab\there\n" >&2; head -c 8000000 /dev/zero | tr "\0" x; echo; echo "after the long line"; head -c 10000000 /dev/urandom; echo; head -c 10000000 /dev/urandom >&2; echo >&2; sleep 2; echo "after the flood"; }} & exec "{}" worker echo']
"#,
        exe.display()
    )
}

#[test]
fn a_worker_that_floods_its_output_gets_a_bounded_share_of_the_log() {
    let started = Instant::now();
    let engine = Engine::builder().config(&chatty_config()).start();
    let [pid] = engine.wait_workers("echo", 1, LONG)[..] else {
        engine.fail("one echo worker");
    };
    let tag = format!("[worker echo pid={pid}] ");
    let last = format!("{tag}after the flood");
    if engine.log().wait_for(LONG, |l| l == last).is_none() {
        engine.fail("the line after the flood did not pass");
    }
    let elapsed = started.elapsed();
    // The flood cost the worker nothing: it serves.
    assert_eq!(engine.post("/function/echo", b"hi").text(), "hi");

    let log = engine.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with(&tag)).collect();
    // Ordinary lines pass as they were written.
    for want in ["a normal line", "tab\there", "after the long line"] {
        let want = format!("{tag}{want}");
        assert!(lines.contains(&want.as_str()), "no {want:?} in\n{log}");
    }
    // The long line: its first 4 KiB, and how much was cut.
    let long = format!(
        "{tag}{}… ({} more bytes cut)",
        "x".repeat(MAX_LINE_LEN),
        8_000_000 - MAX_LINE_LEN
    );
    assert!(lines.contains(&long.as_str()), "no cut 8 MB line in\n{log}");
    // The flood: dropped, and said so.
    let dropped: u64 = lines
        .iter()
        .filter_map(|l| {
            let l = l.strip_prefix(&tag)?.strip_prefix("… ")?;
            l.strip_suffix(" bytes of output dropped (over 256 KiB/s)")?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert!(
        dropped >= 15_000_000,
        "{dropped} bytes said dropped of the 20 MB flood"
    );
    // What the worker put in the log is within its budget: a 1 MiB burst
    // and 256 KiB/s since (the notes are free: a line or two a second).
    let logged: usize = lines.iter().map(|l| l.len() + 1).sum();
    let allowed = BURST_BYTES as f64 + RATE_BYTES_PER_SEC as f64 * elapsed.as_secs_f64();
    let notes = 200.0 * (elapsed.as_secs_f64() + 2.0);
    assert!(
        (logged as f64) <= allowed + notes,
        "the worker logged {logged} bytes in {elapsed:?}"
    );
}
