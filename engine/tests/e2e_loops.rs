//! Several io loops and functions with fewer workers than loops.
//!
//! `max_workers` counts per engine. With two loops and `max_workers = 1`
//! only loop 0 runs a worker of the function; loop 1 forwards the calls it
//! takes (external, and internal ones its workers make) to loop 0 and
//! answers them when the result comes back. The kernel spreads connections
//! over the two `SO_REUSEPORT` listeners by their addresses, so with 32
//! connections both loops take calls (all 32 on one loop: 2⁻³¹).

mod common;

use std::time::{Duration, Instant};

use common::{two_cores, Client, Engine, LONG};

/// Two loops (on the first and last allowed cores: `IO_CORES` is replaced),
/// adaptive as they share the cores with the workers; whoami, sleep and bar
/// with one worker each, foo with one worker per loop.
const TWO_LOOPS: &str = r#"
io_cores = "IO_CORES"
poll = "adaptive"

[[functions]]
name = "whoami"
builtin = "whoami"
min_workers = 1
max_workers = 1

[[functions]]
name = "foo"
builtin = "foo"
min_workers = 2
max_workers = 2

[[functions]]
name = "bar"
builtin = "bar"
min_workers = 1
max_workers = 1

[[functions]]
name = "sleep"
builtin = "sleep"
min_workers = 1
max_workers = 1
timeout = "300ms"
"#;

const CONNECTIONS: usize = 32;

/// `TWO_LOOPS` with `sleep_settings` replacing the sleep function's timeout line, or
/// `None` where the machine has one core (see `two_cores`).
fn two_loops(sleep_settings: &str) -> Option<String> {
    let (first, last) = two_cores()?;
    Some(
        TWO_LOOPS
            .replace("IO_CORES", &format!("{first},{last}"))
            .replace("timeout = \"300ms\"", sleep_settings),
    )
}

/// `functions` (TOML) served by two adaptive loops on the first and last
/// allowed cores; `None` where the machine has one core.
fn on_two_loops(functions: &str) -> Option<String> {
    let (first, last) = two_cores()?;
    Some(format!(
        "io_cores = \"{first},{last}\"\npoll = \"adaptive\"\n{functions}"
    ))
}

fn clients(engine: &Engine) -> Vec<Client> {
    (0..CONNECTIONS).map(|_| engine.client()).collect()
}

#[test]
fn max_workers_counts_per_engine_and_other_loops_forward_to_the_owner() {
    let Some(config) = two_loops("timeout = \"300ms\"") else {
        return;
    };
    let (first, _) = two_cores().expect("checked by two_loops");
    let engine = Engine::builder().config(&config).start();
    assert_eq!(engine.io_threads().len(), 2, "{:?}", engine.io_threads());
    // The start-up log says where the singletons run.
    let log = engine.log_text();
    assert!(
        log.contains(&format!(
            "function whoami (built-in whoami): 1..1 workers; the loops of io cores [{first}] \
             run them, the others forward their calls"
        )),
        "{log}"
    );
    assert!(
        log.contains("function foo (built-in foo): 2..2 workers, POST"),
        "{log}"
    );
    // Exactly the configured pools, engine-wide.
    let whoami = engine.wait_workers("whoami", 1, Duration::from_secs(10));
    engine.wait_workers("bar", 1, Duration::from_secs(10));
    engine.wait_workers("foo", 2, Duration::from_secs(10));
    let mut clients = clients(&engine);
    for round in 0..5 {
        // Every connection's request in flight at once, then the answers.
        for c in &mut clients {
            c.send("POST", "/function/whoami", &[], b"").unwrap();
        }
        for c in &mut clients {
            let r = c.read_response();
            assert_eq!(r.status, 200, "round {round}: {}", r.text());
            assert_eq!(r.text(), whoami[0].to_string(), "round {round}");
            assert!(r.header("server-timing").is_some());
        }
        // foo runs on both loops; bar only on loop 0: the internal calls of
        // loop 1's foo cross over.
        for (i, c) in clients.iter_mut().enumerate() {
            let body = format!("r{round}c{i}");
            c.send("POST", "/function/foo", &[], body.as_bytes())
                .unwrap();
        }
        for (i, c) in clients.iter_mut().enumerate() {
            let r = c.read_response();
            assert_eq!(
                (r.status, r.text()),
                (
                    200,
                    format!("From function Foo: From function Bar: r{round}c{i}")
                ),
            );
        }
    }
    // Still one worker each: nothing was started beside the owner's.
    assert_eq!(engine.workers("whoami"), whoami);
    assert_eq!(engine.workers("bar").len(), 1);
    let status = engine.functions_status();
    let listed = |name: &str| {
        status
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("{name} listed: {status:?}"))["workers"]
            .as_u64()
    };
    assert_eq!(listed("whoami"), Some(1));
    assert_eq!(listed("bar"), Some(1));
    assert_eq!(listed("foo"), Some(2));
    engine.stop();
}

#[test]
fn forwarded_calls_get_their_deadline_and_their_worker_crash() {
    let Some(config) = two_loops("timeout = \"300ms\"") else {
        return;
    };
    let engine = Engine::builder().config(&config).start();
    let sleeper = engine.wait_workers("sleep", 1, Duration::from_secs(10));

    // Deadlines: a call that sleeps 2 s, from every connection, gets 504
    // within its 300 ms timeout (plus scheduling), wherever it waited.
    let mut clients = clients(&engine);
    let started = Instant::now();
    for c in &mut clients {
        c.send("POST", "/function/sleep?us=2000000", &[], b"")
            .unwrap();
    }
    for c in &mut clients {
        let r = c.read_response();
        assert_eq!(r.status, 504, "{}", r.text());
        assert!(r.text().contains("deadline"), "{}", r.text());
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "504s took {:?}",
        started.elapsed()
    );

    // A crash: the one worker is killed while it runs a call and others
    // wait (some of them forwarded). Every call is answered: the running
    // one 502 or 504, the waiting ones by the restarted worker or their
    // deadline; none is lost.
    let stuck = engine.wait_workers("sleep", 1, Duration::from_secs(10));
    for c in &mut clients {
        c.send("POST", "/function/sleep?us=100000", &[], b"")
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    common::signal(stuck[0], libc::SIGKILL);
    let mut statuses = Vec::new();
    for c in &mut clients {
        let r = c.read_response();
        assert!(
            matches!(r.status, 200 | 502 | 504),
            "{} {}",
            r.status,
            r.text()
        );
        statuses.push(r.status);
    }
    assert!(
        statuses.contains(&502) || statuses.contains(&504),
        "the killed worker's call: {statuses:?}"
    );
    let replacement = engine.wait_workers("sleep", 1, Duration::from_secs(10));
    assert_ne!(replacement, sleeper);
    // Both loops still serve.
    for c in &mut clients {
        let r = c.request("POST", "/function/sleep?us=1", b"");
        assert_eq!((r.status, r.text()), (200, "slept 1 us".to_string()));
    }
    engine.stop();
}

#[test]
fn a_full_queue_on_the_owner_is_a_503_with_retry_after_on_every_loop() {
    let Some(config) = two_loops("timeout = \"5s\"\nmax_queue = 1") else {
        return;
    };
    let engine = Engine::builder().config(&config).start();
    let mut clients = clients(&engine);
    for c in &mut clients {
        c.send("POST", "/function/sleep?us=100000", &[], b"")
            .unwrap();
    }
    let mut served = 0;
    for c in &mut clients {
        let r = c.read_response();
        match r.status {
            200 => served += 1,
            503 => assert_eq!(r.header("retry-after"), Some("1"), "{}", r.text()),
            other => panic!("{other}: {}", r.text()),
        }
    }
    // One runs, one waits; the loops refuse the rest (at once: with a
    // queue of one, at most two calls can be served in these 200 ms).
    assert!((1..=2).contains(&served), "{served} served");
    engine.stop();
}

#[test]
fn a_call_cut_off_at_its_deadline_counts_its_run_as_exec_on_either_loop() {
    // sleep's one worker runs on loop 0; calls that reach loop 1 are
    // forwarded there. Eight connections, one call at a time: both loops
    // take some (all eight on one loop: 1 in 128).
    let Some(config) = two_loops("timeout = \"100ms\"") else {
        return;
    };
    let engine = Engine::builder().config(&config).start();
    engine.wait_workers("sleep", 1, Duration::from_secs(10));
    for (i, mut c) in clients(&engine).into_iter().take(8).enumerate() {
        let r = c.post("/function/sleep?us=150000", b"");
        assert_eq!(r.status, 504, "call {i}: {}", r.text());
        let (queue, exec) = (r.timing_ms("queue"), r.timing_ms("exec"));
        assert!(
            exec >= 90.0 && queue < 50.0,
            "call {i} ran until its deadline, yet Server-Timing says queue {queue} ms, exec {exec} ms"
        );
        // Let the abandoned worker finish its 150 ms.
        std::thread::sleep(Duration::from_millis(100));
    }
    engine.stop();
}

#[test]
fn forwarded_calls_in_flight_at_sigterm_finish_before_the_engine_exits() {
    let Some(config) = two_loops("timeout = \"10s\"") else {
        return;
    };
    let mut engine = Engine::builder().config(&config).start();
    let mut clients = clients(&engine);
    clients.truncate(8);
    for c in &mut clients {
        c.send("POST", "/function/sleep?us=150000", &[], b"")
            .unwrap();
    }
    // One runs, seven wait on the owner (some of them forwarded).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = engine.functions_status();
        let sleep = status.iter().find(|f| f["name"] == "sleep").unwrap();
        if sleep["in_flight"].as_u64().unwrap() + sleep["queued"].as_u64().unwrap() == 8 {
            break;
        }
        assert!(Instant::now() < deadline, "never 8 calls in: {sleep}");
        std::thread::sleep(Duration::from_millis(5));
    }
    engine.signal(libc::SIGTERM);
    // Each loop says what it drains; a forwarded call is counted once, by
    // the loop that runs it (at most 8 in all; one may have finished).
    let draining = |l: &str| {
        let (_, rest) = l.split_once(": draining ")?;
        rest.split_once(" call(s)")?.0.parse::<u64>().ok()
    };
    for index in 0..2 {
        let line = engine
            .log()
            .wait_for(LONG, |l| l.contains(&format!("loop {index}: draining")));
        if line.is_none() {
            engine.fail(&format!("loop {index} logged no drain"));
        }
    }
    let drained: u64 = engine.log_text().lines().filter_map(draining).sum();
    assert!(
        (7..=8).contains(&drained),
        "{drained} calls drained: {}",
        engine.log_text()
    );
    for c in &mut clients {
        match c.try_read_response() {
            Ok(r) => assert_eq!((r.status, r.text()), (200, "slept 150000 us".to_string())),
            Err(e) => engine.fail(&format!("a call in flight at SIGTERM was lost: {e}")),
        }
    }
    let status = engine.wait_exit(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "the engine exits 0 after draining: {status:?}"
    );
}

#[test]
fn a_forwarded_internal_call_is_held_to_the_callees_max_payload() {
    // `front` runs on both loops, `echo` on loop 0 only: front's calls to
    // echo from loop 1 are forwarded there.
    let Some(config) = on_two_loops(
        r#"
[[functions]]
name = "front"
builtin = "relay"
min_workers = 2
max_workers = 2
[functions.env]
RELAY_TO = "echo"

[[functions]]
name = "echo"
builtin = "echo"
max_workers = 1
max_payload = "1KiB"
"#,
    ) else {
        return;
    };
    let engine = Engine::builder().config(&config).start();
    for mut c in clients(&engine) {
        let r = c.post("/function/front", &[b'z'; 1025]);
        assert_eq!(r.status, 413, "{}", r.text());
        assert!(
            r.text()
                .contains("input of 1025 bytes is more than echo's max_payload (1024 bytes)"),
            "{}",
            r.text()
        );
        assert_eq!(
            c.post("/function/front", b"ok").text(),
            "front via echo: ok"
        );
    }
    engine.stop();
}

#[test]
fn max_connections_counts_over_every_loop() {
    let Some(config) = two_loops("timeout = \"300ms\"") else {
        return;
    };
    // The kernel spreads connections over the loops unevenly: each loop
    // holding half of the limit refused connections one loop could not
    // take while the other had room. Together, exactly eight are served.
    let engine = Engine::builder()
        .config(&config)
        .args(["--max-connections", "8"])
        .start();
    let mut open = Vec::new();
    for i in 0..8 {
        let mut c = engine.client();
        let r = c.post("/function/bar", b"x");
        assert_eq!(r.status, 200, "connection {i}: {}", r.text());
        open.push(c);
    }
    for i in 0..4 {
        let r = engine.client().post("/function/bar", b"x");
        assert_eq!(
            r.status,
            503,
            "connection {} of 8 allowed: {}",
            9 + i,
            r.text()
        );
    }
    // One leaves: one more may come, whichever loop takes it.
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = engine.client().post("/function/bar", b"x");
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no room after a close: {}",
            r.text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    engine.stop();
}

#[test]
fn a_call_cycle_uses_the_workers_of_every_loop_before_it_is_refused() {
    // `rself` calls itself for ever: one worker per loop. On one loop with
    // two workers the cycle takes both and the third call is refused 508;
    // split over two loops it must go as deep (a loop whose own workers all
    // run callers of the call hands it to the other loop's idle one).
    let Some(config) = on_two_loops(
        r#"
[[functions]]
name = "rself"
builtin = "relay"
min_workers = 2
max_workers = 2
[functions.env]
RELAY_TO = "rself"
"#,
    ) else {
        return;
    };
    let engine = Engine::builder().config(&config).start();
    for mut c in clients(&engine) {
        let r = c.post("/function/rself", b"x");
        assert_eq!(r.status, 508, "{}", r.text());
        let text = r.text();
        assert!(text.contains("call cycle"), "{text}");
        assert_eq!(text.matches("rself failed (508)").count(), 2, "{text}");
    }
    engine.stop();
}
