//! Internal calls, external function binaries and worker crashes, end to end:
//! handlers calling handlers through the engine, the example `wordcount`
//! binary deployed from a config, and a worker killed in the middle of a call.

mod common;

use std::time::{Duration, Instant};

use common::{for_each_poll, signal, wordcount_exe, Engine, Scratch, LONG};

/// fanout, ping and their callees.
const CALLS_CONFIG: &str = r#"
[[functions]]
name = "fanout"
builtin = "fanout"
allow_get = true

[[functions]]
name = "echo"
builtin = "echo"
max_workers = 8

[[functions]]
name = "ping"
builtin = "ping"
allow_get = true

[[functions]]
name = "nop"
builtin = "nop"

[[functions]]
name = "whoami"
builtin = "whoami"
"#;

#[test]
fn fanout_returns_concurrent_outputs_in_order() {
    for_each_poll(|poll| {
        let engine = Engine::builder().config(CALLS_CONFIG).poll(poll).start();
        let mut c = engine.client();
        let r = c.post("/function/fanout?n=8", b"x");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "x0,x1,x2,x3,x4,x5,x6,x7");
        let r = c.get("/function/fanout?n=8");
        assert_eq!(r.text(), "0,1,2,3,4,5,6,7");
        // Repeated, so later rounds run with more echo workers scaled up.
        for round in 0..20 {
            let input = format!("r{round}-");
            let r = c.post("/function/fanout?n=8", input.as_bytes());
            let want: Vec<String> = (0..8).map(|i| format!("{input}{i}")).collect();
            assert_eq!(r.text(), want.join(","), "round {round}");
        }
        let r = c.get("/function/fanout?n=0");
        assert_eq!((r.status, r.body.len()), (200, 0));
    });
}

#[test]
fn ping_measures_round_trips_between_two_processes() {
    for_each_poll(|poll| {
        let engine = Engine::builder().config(CALLS_CONFIG).poll(poll).start();
        let r = engine.get("/function/ping?n=100");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        let v = r.json();
        let caller = v["caller_pid"].as_i64().expect("caller_pid") as i32;
        let callee = v["callee_pid"].as_i64().expect("callee_pid") as i32;
        assert_ne!(caller, callee, "{v}");
        // Both are real worker processes of this engine, of the right function.
        assert!(
            engine.workers("ping").contains(&caller),
            "caller {caller}: {:?}",
            engine.all_workers()
        );
        assert!(
            engine.workers("nop").contains(&callee),
            "callee {callee}: {:?}",
            engine.all_workers()
        );
        let samples = v["samples_ns"].as_array().expect("samples_ns");
        assert_eq!(samples.len(), 100);
        assert!(
            samples.iter().all(|s| s.as_u64().is_some_and(|ns| ns > 0)),
            "{v}"
        );

        let r = engine.get("/function/ping?n=many");
        assert_eq!(r.status, 400, "{}", r.text());
    });
}

#[test]
fn external_function_binary_serves_and_calls_a_builtin() {
    let exe = wordcount_exe();
    let exe = exe.to_str().expect("a UTF-8 path");
    let config = format!(
        r#"
[[functions]]
name = "wordcount"
command = ["{exe}"]
max_workers = 2

[[functions]]
name = "shout"
command = ["{exe}"]
max_workers = 2

[[functions]]
name = "bar"
builtin = "bar"
"#
    );
    for_each_poll(|poll| {
        let engine = Engine::builder().config(&config).poll(poll).start();
        let mut c = engine.client();

        let r = c.post("/function/wordcount", b"the quick  brown\nfox");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.text(), r#"{"words":4}"#);
        let r = c.post("/function/wordcount?lines=1", b"one\ntwo three\n");
        assert_eq!(r.text(), r#"{"words":3,"lines":2}"#);
        let r = c.post("/function/wordcount", b"");
        assert_eq!(r.text(), r#"{"words":0}"#);
        let r = c.post("/function/wordcount", &[0xff, 0xfe]);
        assert_eq!(r.status, 400, "{}", r.text());

        // shout upper-cases and calls the built-in bar through the engine.
        let r = c.post("/function/shout", b"hi");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "From function Bar: HI");

        // The workers are the external binary, started by the engine.
        for name in ["wordcount", "shout"] {
            let pids = engine.workers(name);
            assert!(!pids.is_empty(), "{name}: {:?}", engine.all_workers());
            for pid in pids {
                assert_eq!(common::cmdline(pid), [exe], "{name} worker {pid}");
            }
        }
    });
}

#[test]
fn a_function_the_binary_has_no_handler_for_is_refused_at_start() {
    // The handler is chosen by the configured name; `wordcount` has none
    // called `notinbin`. Its workers refuse the handshake, saying so, rather
    // than answering ready and exiting (which looked like a crash loop).
    let exe = wordcount_exe();
    let config = format!(
        "[[functions]]\nname = \"notinbin\"\ncommand = [\"{}\"]\ntimeout = \"5s\"\n\
         [[functions]]\nname = \"echo\"\nbuiltin = \"echo\"\n",
        exe.display()
    );
    let engine = Engine::builder().config(&config).no_health_wait().start();
    let reason = r#"this binary has no function named "notinbin"; it has: wordcount, shout"#;
    let refused = engine
        .log()
        .wait_for(LONG, |l| l.contains("it refused: ") && l.contains(reason));
    assert!(
        refused.is_some_and(|l| l.contains("cannot start a worker of notinbin")),
        "the start failure names the reason:\n{}",
        engine.log_text()
    );
    let r = engine.post("/function/notinbin", b"x");
    assert!([502, 503].contains(&r.status), "{} {}", r.status, r.text());
    assert!(r.text().contains("notinbin"), "{}", r.text());
    assert!(
        !engine.log_text().contains("worker notinbin ready"),
        "{}",
        engine.log_text()
    );
    assert_eq!(engine.workers("notinbin"), [] as [i32; 0]);
    assert_eq!(engine.get("/healthz").status, 503);
    assert_eq!(engine.post("/function/echo", b"fine").text(), "fine");
}

/// Waits until `function` has one worker and it is not `old`; returns it.
fn wait_replaced(engine: &Engine, function: &str, old: i32) -> i32 {
    let deadline = Instant::now() + LONG;
    loop {
        if let [pid] = engine.workers(function)[..] {
            if pid != old {
                return pid;
            }
        }
        if Instant::now() > deadline {
            engine.fail(&format!(
                "{function} worker {old} was not replaced: {:?}",
                engine.all_workers()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn worker_killed_mid_call_gives_502_and_is_restarted() {
    for_each_poll(|poll| {
        let engine = Engine::builder().poll(poll).start();
        let [victim] = engine.workers("sleep")[..] else {
            engine.fail(&format!(
                "expected one sleep worker: {:?}",
                engine.all_workers()
            ))
        };
        let mut c = engine.client();
        let msg = common::kill_sleep_worker_mid_call(&engine, &mut c, victim);
        assert!(msg.contains(&victim.to_string()), "names the pid: {msg}");

        // A new worker replaces it, and calls succeed again, on the same
        // connection and on new ones.
        let fresh = wait_replaced(&engine, "sleep", victim);
        assert_eq!(c.post("/function/sleep?us=10", b"").text(), "slept 10 us");
        assert_eq!(
            engine.post("/function/sleep?us=20", b"").text(),
            "slept 20 us"
        );
        // (The pool may have grown meanwhile: the first call after the crash
        // waited for the replacement to start, and that wait counts in the
        // time in the system the concurrency limit is estimated from.)
        let workers = engine.workers("sleep");
        assert!(
            workers.contains(&fresh) && !workers.contains(&victim),
            "{workers:?}"
        );
        // Nothing else was disturbed.
        assert_eq!(
            engine.post("/function/foo", b"ok").text(),
            "From function Foo: From function Bar: ok"
        );
        assert_eq!(engine.get("/healthz").status, 200);
        let log = engine.log_text();
        assert!(
            log.contains(&format!("pid {victim}")),
            "the crash is logged:\n{log}"
        );
    });
}

#[test]
fn idle_worker_killed_is_replaced_without_failing_calls() {
    let engine = Engine::start(&[]);
    let [victim] = engine.workers("bar")[..] else {
        engine.fail(&format!(
            "expected one bar worker: {:?}",
            engine.all_workers()
        ))
    };
    signal(victim, libc::SIGKILL);
    // Once the engine has seen the death (its log says so), foo's internal
    // call to bar goes to the replacement, or waits for it. (A call that
    // races the death, dispatched before the engine notices, is handed to
    // another worker: see fault_workers.rs. One the worker had taken fails
    // with 502: see worker_killed_mid_call_gives_502_and_is_restarted.)
    let death = format!("worker bar pid {victim} killed by signal 9");
    if engine
        .log()
        .wait_for(LONG, |l| l.contains(&death))
        .is_none()
    {
        engine.fail(&format!("the engine did not log {death:?}"));
    }
    let r = engine.post("/function/foo", b"after");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "From function Foo: From function Bar: after");
    let fresh = wait_replaced(&engine, "bar", victim);
    assert_ne!(fresh, victim);
}

#[test]
fn worker_that_fails_to_start_is_reported_not_hung() {
    // A command that exits at once: no worker ever becomes ready, so calls are
    // answered with an error instead of waiting forever, and /healthz says 503.
    let dir = Scratch::new("calls");
    let script = dir.write(
        "broken.sh",
        "#!/bin/sh\necho 'broken worker says bye' >&2\nexit 3\n",
    );
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = format!(
        "[[functions]]\nname = \"broken\"\ncommand = [\"{}\"]\ntimeout = \"5s\"\n\
         [[functions]]\nname = \"echo\"\nbuiltin = \"echo\"\n",
        script.display()
    );
    let engine = Engine::builder().config(&config).no_health_wait().start();
    let r = engine.post("/function/broken", b"x");
    assert!(
        [502, 503, 504].contains(&r.status),
        "{} {}",
        r.status,
        r.text()
    );
    assert!(r.text().contains("broken"), "{}", r.text());
    assert_eq!(engine.get("/healthz").status, 503);
    // The other function is unaffected.
    let mut healthy_echo = None;
    let deadline = Instant::now() + LONG;
    while healthy_echo.is_none() && Instant::now() < deadline {
        let r = engine.post("/function/echo", b"fine");
        if r.status == 200 {
            healthy_echo = Some(r.text());
        }
    }
    assert_eq!(healthy_echo.as_deref(), Some("fine"));
    let status = engine.functions_status();
    let broken = status
        .iter()
        .find(|f| f["name"] == "broken")
        .expect("listed");
    assert_eq!(broken["workers"], 0, "{broken}");
    assert!(
        engine
            .log()
            .wait_for(LONG, |l| l.contains("broken worker says bye"))
            .is_some(),
        "the worker's stderr reaches the engine log:\n{}",
        engine.log_text()
    );
}

#[test]
fn deadline_exceeded_gives_504_and_a_stuck_worker_is_replaced() {
    for_each_poll(|poll| {
        let engine = Engine::builder()
            .poll(poll)
            .args([
                "--set",
                "sleep.timeout=200ms",
                "--set",
                "sleep.max_workers=1",
            ])
            .start();
        let [stuck] = engine.workers("sleep")[..] else {
            engine.fail(&format!(
                "expected one sleep worker: {:?}",
                engine.all_workers()
            ))
        };
        let r = engine.post("/function/sleep?us=30000000", b"");
        assert_eq!(r.status, 504, "{}", r.text());
        // Cut off after running 200 ms: that is execution, not overhead.
        let exec = r.timing_ms("exec");
        assert!(exec >= 150.0, "exec {exec} ms of a call cut off at 200 ms");
        assert!(
            r.timing_ms("overhead") < exec,
            "{:?}",
            r.header("server-timing")
        );
        assert!(
            r.text().contains("sleep") && r.text().contains("(200ms)"),
            "{}",
            r.text()
        );
        // The worker still sleeps; past a grace period the engine kills it and
        // starts another, which serves.
        let fresh = wait_replaced(&engine, "sleep", stuck);
        assert_ne!(fresh, stuck);
        assert_eq!(
            engine.post("/function/sleep?us=10", b"").text(),
            "slept 10 us"
        );
        assert!(engine.log_text().contains("stuck"), "{}", engine.log_text());
    });
}

#[test]
fn handler_panic_exit_and_abort() {
    let engine = Engine::builder()
        .config(
            "[[functions]]\nname = \"crash\"\nbuiltin = \"crash\"\nallow_get = true\n\
             [[functions]]\nname = \"echo\"\nbuiltin = \"echo\"\n",
        )
        .start();
    // A panic is the handler's 500; the worker survives it.
    let [worker] = engine.workers("crash")[..] else {
        engine.fail(&format!(
            "expected one crash worker: {:?}",
            engine.all_workers()
        ))
    };
    let r = engine.get("/function/crash?how=panic");
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("panicked"), "{}", r.text());
    assert_eq!(engine.workers("crash"), [worker]);

    // exit(3) and abort(): 502 naming the exit code and the signal; a new
    // worker each time.
    let r = engine.get("/function/crash?how=exit");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("code 3"), "{}", r.text());
    let worker = wait_replaced(&engine, "crash", worker);
    let r = engine.get("/function/crash?how=abort");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("SIGABRT"), "{}", r.text());
    wait_replaced(&engine, "crash", worker);
    // Nothing else was disturbed.
    assert_eq!(engine.post("/function/echo", b"calm").text(), "calm");
}

#[test]
fn builtins_under_other_names_and_call_cycles() {
    let engine = Engine::builder()
        .config(
            r#"
[[functions]]
name = "front"
builtin = "relay"
allow_get = true
[functions.env]
RELAY_TO = "echo"

[[functions]]
name = "ping-pong"
builtin = "relay"
max_call_depth = 4
[functions.env]
RELAY_TO = "pong"

[[functions]]
name = "pong"
builtin = "relay"
[functions.env]
RELAY_TO = "ping-pong"

[[functions]]
name = "lost"
builtin = "relay"
[functions.env]
RELAY_TO = "nosuch"

[[functions]]
name = "echo"
builtin = "echo"
"#,
        )
        .start();
    let r = engine.post("/function/front", b"x");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "front via echo: x");
    // A call to no such function is the caller's bug: 500, not a 404 that
    // would tell the client its own URL was wrong.
    let r = engine.post("/function/lost", b"x");
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(
        r.text()
            .contains("internal call to unknown function \"nosuch\""),
        "{}",
        r.text()
    );
    // A cycle ends at max_call_depth with 508 instead of running forever.
    let r = engine.post("/function/ping-pong", b"loop");
    assert_eq!(r.status, 508, "{}", r.text());
    assert!(r.text().contains("max_call_depth"), "{}", r.text());
    // And the chain's workers are all free again.
    assert_eq!(
        engine.post("/function/front", b"y").text(),
        "front via echo: y"
    );
}

#[test]
fn engine_killed_by_sigkill_takes_its_workers_along() {
    let mut engine = Engine::start(&[]);
    let workers: Vec<i32> = engine.all_workers().into_iter().map(|(p, _)| p).collect();
    assert_eq!(workers.len(), 5, "{workers:?}");
    // The harness finds every worker by the tag it inherits (so its drop
    // check would see a leftover one).
    let mut tagged = engine.tagged_processes();
    tagged.sort_unstable();
    let mut expected = workers.clone();
    expected.push(engine.pid());
    expected.sort_unstable();
    assert_eq!(tagged, expected);
    // No SIGTERM, no drain, no chance to close anything: the workers still go
    // (PR_SET_PDEATHSIG, and EOF on their control sockets). The harness's
    // drop fails the test if any outlives the engine.
    engine.signal(libc::SIGKILL);
    let status = engine
        .wait_exit(LONG)
        .unwrap_or_else(|| engine.fail("SIGKILL did not end the engine"));
    assert!(!status.success());
}

#[test]
fn workers_killed_for_overrunning_deadlines_are_not_a_crash_loop() {
    let engine = Engine::builder()
        .args([
            "--set",
            "sleep.timeout=300ms",
            "--set",
            "sleep.max_workers=1",
        ])
        .start();
    // Each call overruns its deadline; the engine kills the stuck worker a
    // second later and starts another. Three in a row are three 504s, not
    // a function that "keeps crashing" (whose calls would get 503).
    for round in 0..3 {
        let old = engine.workers("sleep");
        let r = engine.post("/function/sleep?us=5000000", b"");
        assert_eq!(r.status, 504, "round {round}: {}", r.text());
        let deadline = Instant::now() + LONG;
        while engine.workers("sleep") == old || engine.workers("sleep").is_empty() {
            assert!(Instant::now() < deadline, "round {round}: not replaced");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let log = engine.log_text();
    assert_eq!(
        log.matches("past its call's deadline; killing it").count(),
        3,
        "{log}"
    );
    assert!(!log.contains("keeps crashing"), "{log}");
    let sleep = engine
        .functions_status()
        .into_iter()
        .find(|f| f["name"] == "sleep")
        .expect("sleep in /system/functions");
    assert_eq!(sleep["crash_looping"], false, "{sleep}");
}
