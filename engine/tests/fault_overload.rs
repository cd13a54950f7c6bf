//! The engine under overload, end to end (issue #4, item 4):
//!
//! * a burst of 50 000 pipelined requests over 100 connections, half of them
//!   to a function that runs one call at a time with a queue of 8: every
//!   request gets an answer, the only answers are 200 (with the right body)
//!   or 503 with `Retry-After`, and the engine's memory after the burst stays
//!   within a generous bound of what it was after a warm-up burst;
//! * a handler fanning out past its callee's queue gets a typed 503 at once;
//! * a client that pipelines and never reads cannot make the engine buffer.
//!
//! Memory is read from /proc/PID/status: `VmRSS` as the issue asks, and
//! `RssAnon` (the engine's heap), because `VmRSS` also counts the shared
//! regions of every worker the pool adds.
//!
//! A bounded `max_queue` answered 503 (e2e_scaling.rs) and the connection cap
//! (e2e_flags.rs) are shown one request at a time elsewhere; this is the flood.

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use common::{for_each_poll, proc_status_kib, request_bytes, vm_rss_kib, Client, Engine};

const CONFIG: &str = r#"
[[functions]]
name = "echo"
builtin = "echo"

[[functions]]
name = "spin"
builtin = "spin"
max_workers = 1
max_queue = 8
"#;

/// Connections of a burst; even ones call echo, odd ones spin (overloaded).
const CONNECTIONS: usize = 100;
/// Requests written back to back before their answers are read.
const PIPELINE: usize = 50;

/// What a burst got back.
#[derive(Default, Debug)]
struct Tally {
    /// (function, status) → count.
    statuses: BTreeMap<(&'static str, u16), usize>,
    answered: usize,
}

impl Tally {
    fn count(&self, function: &str, status: u16) -> usize {
        self.statuses
            .iter()
            .filter(|((f, s), _)| *f == function && *s == status)
            .map(|(_, n)| n)
            .sum()
    }
}

/// Sends `per_connection` requests on each of [`CONNECTIONS`] connections at
/// once, [`PIPELINE`] at a time, and checks every answer.
fn burst(engine: &Engine, per_connection: usize) -> Tally {
    let results: Vec<Tally> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CONNECTIONS)
            .map(|conn| {
                s.spawn(move || {
                    let mut tally = Tally::default();
                    let mut c = engine.client();
                    let function = if conn % 2 == 0 { "echo" } else { "spin" };
                    let mut sent = 0;
                    while sent < per_connection {
                        let n = PIPELINE.min(per_connection - sent);
                        let mut bytes = Vec::new();
                        for i in sent..sent + n {
                            let (path, body) = if function == "echo" {
                                ("/function/echo", format!("c{conn}-{i}").into_bytes())
                            } else {
                                ("/function/spin?us=100", Vec::new())
                            };
                            bytes.extend(request_bytes("POST", path, &[], &body));
                        }
                        c.write_raw(&bytes).unwrap_or_else(|e| {
                            engine.fail(&format!("connection {conn}: write: {e}"))
                        });
                        for i in sent..sent + n {
                            let r = c.try_read_response().unwrap_or_else(|e| {
                                engine.fail(&format!("connection {conn}, request {i}: {e}"))
                            });
                            check_answer(engine, function, conn, i, &r);
                            *tally.statuses.entry((function, r.status)).or_default() += 1;
                            tally.answered += 1;
                        }
                        sent += n;
                    }
                    tally
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut total = Tally::default();
    for t in results {
        total.answered += t.answered;
        for (k, n) in t.statuses {
            *total.statuses.entry(k).or_default() += n;
        }
    }
    total
}

fn check_answer(engine: &Engine, function: &str, conn: usize, i: usize, r: &common::Response) {
    match r.status {
        200 => {
            let want = if function == "echo" {
                format!("c{conn}-{i}")
            } else {
                "spun 100 us".to_string()
            };
            if r.text() != want {
                engine.fail(&format!(
                    "connection {conn}, request {i}: {:?}, want {want:?}",
                    r.text()
                ));
            }
        }
        503 => {
            if r.header("retry-after") != Some("1") {
                engine.fail(&format!("503 without Retry-After: 1: {:?}", r.headers));
            }
            // Refused without a run, as Server-Timing says on every call's answer.
            if r.header("server-timing").is_none() || r.timing_ms("exec") != 0.0 {
                engine.fail(&format!(
                    "503 without Server-Timing exec 0: {:?}",
                    r.headers
                ));
            }
        }
        other => engine.fail(&format!(
            "connection {conn}, request {i} to {function}: {other} {}",
            r.text()
        )),
    }
}

#[test]
fn a_burst_of_fifty_thousand_requests_is_answered_in_bounded_memory() {
    /// Growth of the engine's resident memory allowed between the warm-up
    /// burst and the end of the big one: generous (allocator slack, buffers
    /// of 100 connections), yet a leak of a few hundred bytes per request
    /// would cross it.
    const RSS_SLACK_KIB: u64 = 24 * 1024;
    /// The same for the engine's private memory (its heap): a leak of 170
    /// bytes per request would cross it.
    const ANON_SLACK_KIB: u64 = 8 * 1024;
    for_each_poll(|poll| {
        let engine = Engine::builder().config(CONFIG).poll(poll).start();
        // Warm up: pools, buffers and allocator arenas reach their working size.
        let warm = burst(&engine, 50);
        assert_eq!(warm.answered, CONNECTIONS * 50, "{warm:?}");
        let before = vm_rss_kib(engine.pid()).expect("engine VmRSS");
        let anon_before = proc_status_kib(engine.pid(), "RssAnon").expect("engine RssAnon");

        let started = Instant::now();
        let tally = burst(&engine, 500);
        let took = started.elapsed();
        let after = vm_rss_kib(engine.pid()).expect("engine VmRSS");
        let anon_after = proc_status_kib(engine.pid(), "RssAnon").expect("engine RssAnon");
        eprintln!(
            "{poll}: {} answers in {took:?}: {:?}; VmRSS {before} KiB -> {after} KiB, \
             RssAnon {anon_before} KiB -> {anon_after} KiB",
            tally.answered, tally.statuses
        );
        assert_eq!(tally.answered, CONNECTIONS * 500, "every request answered");
        // Overload showed as 503s, and spin still got work done.
        assert!(tally.count("spin", 503) > 0, "{tally:?}");
        assert!(tally.count("spin", 200) > 0, "{tally:?}");
        assert!(tally.count("echo", 200) > 0, "{tally:?}");
        // VmRSS also counts the shared regions of any worker the pool added;
        // the warm-up has grown the pool, so both must hold.
        assert!(
            after <= before + RSS_SLACK_KIB,
            "engine VmRSS grew from {before} KiB to {after} KiB over one burst\n{}",
            engine.log_text()
        );
        assert!(
            anon_after <= anon_before + ANON_SLACK_KIB,
            "engine RssAnon grew from {anon_before} KiB to {anon_after} KiB over one burst"
        );

        // Afterwards the engine is idle and fine.
        let mut c: Client = engine.client();
        assert_eq!(c.post("/function/echo", b"after").text(), "after");
        assert_eq!(c.post("/function/spin?us=1", b"").text(), "spun 1 us");
        for f in engine.functions_status() {
            assert_eq!(
                (f["in_flight"].as_u64(), f["queued"].as_u64()),
                (Some(0), Some(0)),
                "{f}"
            );
        }
    });
}

#[test]
fn a_fanout_past_its_callees_queue_fails_fast_with_a_typed_503() {
    // fanout starts N concurrent internal calls to echo; echo runs one at a
    // time with a queue of 16, so most are refused at once. The caller's
    // handler gets InvokeError::Overloaded and fails with it; the calls it
    // abandoned drain; the next fanout is served.
    let config = r#"
[[functions]]
name = "fanout"
builtin = "fanout"

[[functions]]
name = "echo"
builtin = "echo"
max_workers = 1
max_queue = 16
"#;
    for_each_poll(|poll| {
        let engine = Engine::builder().config(config).poll(poll).start();
        let fanout = common::only_worker(&engine, "fanout");
        let mut c = engine.client();
        for _ in 0..3 {
            let r = c.post("/function/fanout?n=2000", b"x");
            assert_eq!(r.status, 503, "{}", r.text());
            assert!(
                r.text().contains("echo is overloaded"),
                "a typed error: {}",
                r.text()
            );
        }
        common::wait_function_status(&engine, "echo", "its calls drained", |f| {
            f["in_flight"] == 0 && f["queued"] == 0
        });
        let r = c.post("/function/fanout?n=4", b"y");
        assert_eq!((r.status, r.text()), (200, "y0,y1,y2,y3".to_string()));
        assert_eq!(engine.workers("fanout"), [fanout], "the caller survived");
        assert!(!engine.log_text().contains("protocol violation"));
    });
}

#[test]
fn a_client_that_never_reads_cannot_make_the_engine_buffer_without_bound() {
    /// Most the test writes before it expects the engine to have stopped reading.
    const WRITE_CAP: usize = 256 << 20;
    /// Growth of the engine's private memory allowed meanwhile.
    const ANON_SLACK_KIB: u64 = 8 * 1024;
    for_each_poll(|poll| {
        let engine = Engine::builder().poll(poll).start();
        // The engine's own memory: VmRSS also counts the shared regions of
        // workers the pool may add meanwhile (several MiB each).
        let before = proc_status_kib(engine.pid(), "RssAnon").expect("engine RssAnon");
        // Pipelined echo calls of 4 KiB each, written and never read: the
        // answers pile up until the engine stops parsing, then its socket
        // buffer fills, then ours.
        let hog = engine.client();
        hog.stream()
            .set_write_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let body = vec![b'h'; 4096];
        let batch: Vec<u8> = (0..64)
            .flat_map(|_| request_bytes("POST", "/function/echo", &[], &body))
            .collect();
        let mut written = 0;
        let stopped = loop {
            match std::io::Write::write(&mut hog.stream(), &batch) {
                Ok(n) => written += n,
                Err(e) => break e,
            }
            if written > WRITE_CAP {
                engine.fail(&format!("the engine read {written} bytes it cannot answer"));
            }
        };
        assert!(
            matches!(
                stopped.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the hog's writes should block, not fail: {stopped}"
        );
        let after = proc_status_kib(engine.pid(), "RssAnon").expect("engine RssAnon");
        eprintln!("{poll}: the hog wrote {written} bytes; RssAnon {before} KiB -> {after} KiB");
        assert!(
            after <= before + ANON_SLACK_KIB,
            "RssAnon grew from {before} KiB to {after} KiB"
        );
        // Everyone else is served meanwhile.
        let mut c = engine.client();
        for i in 0..20 {
            let input = format!("next {i}");
            assert_eq!(c.post("/function/echo", input.as_bytes()).text(), input);
        }
        drop(hog);
    });
}
