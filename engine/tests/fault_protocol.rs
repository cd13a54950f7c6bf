//! Protocol abuse, end to end (issue #4, item 5): clients that trickle,
//! stall or half-close, and a worker process that lies to the engine through
//! its shared memory (`functions/examples/misbehave`).
//!
//! * Slow and half-open clients: a head trickled a byte a second, a partial
//!   head and then silence, a connection that never sends anything — each is
//!   ended at the header timeout (408 where part of a head had come), while
//!   other clients are served all along; a half-closed connection gets its
//!   complete request answered and a partial one dropped. They run with
//!   `--header-timeout 3s` (default 10 s) to stay quick.
//! * The misbehaving worker: for each way of breaking the ring protocol, the
//!   call gets 502 naming a protocol violation, the engine logs it, kills the
//!   worker and starts another, and keeps serving everything else — also when
//!   the lie is the request ring's release index, which the engine reads
//!   only later; attempts to resize or re-seal the shared region fail with
//!   EPERM inside the worker and its call completes normally.

mod common;

use std::io::Write;
use std::net::Shutdown;
use std::time::{Duration, Instant};

use common::{
    for_each_poll, misbehave_exe, only_worker, process_state, request_bytes, wait_replaced_worker,
    Client, Engine, LONG,
};

// ---------------------------------------------------------------------------
// Slow and half-open clients.

/// A connection the test watches until the engine closes it.
struct Watched {
    name: &'static str,
    client: Client,
    closed_after: Option<Duration>,
    /// Everything the engine sent on it.
    got: Vec<u8>,
}

impl Watched {
    fn new(engine: &Engine, name: &'static str) -> Watched {
        Watched {
            name,
            client: engine.client(),
            closed_after: None,
            got: Vec::new(),
        }
    }

    /// Notes whether the engine has closed it (without waiting).
    fn poll_closed(&mut self, since: Instant) {
        if self.closed_after.is_none() && self.client.closed_within(Duration::from_millis(1)) {
            self.closed_after = Some(since.elapsed());
            self.got = self.client.read_to_close();
        }
    }
}

fn slow_clients_time_out_without_blocking_anyone(poll: &str) {
    // A short header timeout keeps the test quick; the trickle below still
    // sends several bytes before it is cut off.
    let engine = Engine::builder()
        .poll(poll)
        .args(["--header-timeout", "3s", "--keepalive-timeout", "60s"])
        .start();
    let started = Instant::now();
    // A byte a second of a head that would be valid.
    let mut trickle = Watched::new(&engine, "trickle");
    let head = b"POST /function/echo HTTP/1.1\r\nHost: e2e\r\nContent-Length: 2\r\n\r\nhi";
    let mut trickled = 0;
    let mut next_byte = Instant::now();
    // Part of a head, then nothing.
    let mut partial = Watched::new(&engine, "partial");
    partial
        .client
        .write_raw(b"GET /healthz HTTP/1.1\r\nHo")
        .unwrap();
    // Connected, never a byte.
    let mut silent = Watched::new(&engine, "silent");
    // A body promised and never finished: the engine may keep it until its
    // idle timeout (60 s), but nobody else may notice.
    let mut stalled = engine.client();
    stalled
        .write_raw(b"POST /function/echo HTTP/1.1\r\nContent-Length: 100\r\n\r\n0123456789")
        .unwrap();

    // Half-closed after a complete request: answered, then closed.
    let mut half = engine.client();
    half.write_raw(&request_bytes("POST", "/function/echo", &[], b"half"))
        .unwrap();
    half.stream().shutdown(Shutdown::Write).unwrap();
    let r = half.read_response();
    assert_eq!((r.status, r.text()), (200, "half".to_string()));
    assert!(half.closed_within(LONG), "closed after the answer");
    // Half-closed inside a head: dropped and closed, no answer.
    let mut cut = engine.client();
    cut.write_raw(b"POST /function/echo HTTP/1.1\r\nContent-Le")
        .unwrap();
    cut.stream().shutdown(Shutdown::Write).unwrap();
    assert!(
        cut.read_to_close().is_empty(),
        "a partial request is dropped"
    );

    // Meanwhile everyone else is served, on a kept-alive connection and on
    // new ones, until the engine has ended all three slow connections.
    let mut served = 0;
    let mut keep = engine.client();
    let deadline = started + LONG;
    loop {
        for w in [&mut trickle, &mut partial, &mut silent] {
            w.poll_closed(started);
        }
        if [&trickle, &partial, &silent]
            .iter()
            .all(|w| w.closed_after.is_some())
        {
            break;
        }
        if Instant::now() > deadline {
            engine.fail(&format!(
                "slow connections still open after {LONG:?}: trickle {:?}, partial {:?}, silent {:?}",
                trickle.closed_after, partial.closed_after, silent.closed_after
            ));
        }
        if trickle.closed_after.is_none() && Instant::now() >= next_byte && trickled < head.len() {
            // A failed write means the engine closed it; the next poll sees it.
            let _ = trickle
                .client
                .stream()
                .write_all(&head[trickled..trickled + 1]);
            trickled += 1;
            next_byte += Duration::from_secs(1);
        }
        let input = format!("served {served}");
        let r = keep.post("/function/echo", input.as_bytes());
        assert_eq!((r.status, r.text()), (200, input.clone()));
        let r = engine.post("/function/echo", input.as_bytes());
        assert_eq!((r.status, r.text()), (200, input));
        served += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "{poll}: trickle ({trickled} bytes) closed after {:?}, partial after {:?}, silent after \
         {:?}; {served} rounds of echo served meanwhile",
        trickle.closed_after, partial.closed_after, silent.closed_after
    );
    assert!(
        trickled < head.len(),
        "the trickle was cut off before its head was complete"
    );
    for w in [&trickle, &partial] {
        let text = String::from_utf8_lossy(&w.got);
        assert!(
            text.starts_with("HTTP/1.1 408"),
            "{}: a head begun and not finished is answered 408: {text:?}",
            w.name
        );
    }
    assert!(
        silent.got.is_empty(),
        "silent: closed without an answer: {:?}",
        String::from_utf8_lossy(&silent.got)
    );
    assert!(served > 0);
    // The stalled body never reached the function, and blocked nobody.
    assert_eq!(
        keep.post("/function/echo", b"still fine").text(),
        "still fine"
    );
    drop(stalled);
}

#[test]
fn slow_and_half_open_clients_spin() {
    slow_clients_time_out_without_blocking_anyone("spin");
}

#[test]
fn slow_and_half_open_clients_adaptive() {
    slow_clients_time_out_without_blocking_anyone("adaptive");
}

// ---------------------------------------------------------------------------
// The misbehaving worker.

/// Abuses the engine must answer by disconnecting the worker, and a piece of
/// what it then says about each.
const VIOLATIONS: &[(&str, &str)] = &[
    ("corrupt-header", "bad payload placement 30583"),
    (
        "corrupt-length",
        "inline payload of 4294967295 bytes exceeds",
    ),
    ("bad-arena-offset", "arena payload at offset"),
    ("arena-too-long", "exceeds the arena's"),
    ("bad-sequence", "slot sequence for position"),
    ("unknown-kind", "unknown message kind 16962"),
    ("wrong-call-id", "completion for call"),
    ("bad-parent", "internal call names parent"),
    ("flood", "completion for call 0xdeadbeef00000000"),
    // ("bad-release" is its own test below: the engine finds it only later.)
];

/// Attempts on the region that its seals must refuse.
const RESIZES: &[(&str, &str)] = &[
    ("truncate-region", "ftruncate(region, 0) refused: EPERM"),
    ("grow-region", "fallocate(region, len, 4096) refused: EPERM"),
    (
        "seal-write",
        "fcntl(region, F_ADD_SEALS, F_SEAL_WRITE) refused: EPERM",
    ),
];

/// One `mb-MODE` function per abuse (each with its own restart back-off),
/// a well-behaved `misbehave`, and echo.
fn misbehave_config() -> String {
    let exe = misbehave_exe();
    let mut config = format!(
        "[[functions]]\nname = \"misbehave\"\ncommand = [\"{0}\"]\n\n\
         [[functions]]\nname = \"echo\"\nbuiltin = \"echo\"\n\n",
        exe.display()
    );
    for (mode, _) in VIOLATIONS
        .iter()
        .chain(RESIZES)
        .chain([&("complete-then-flood", "")])
    {
        config.push_str(&format!(
            "[[functions]]\nname = \"mb-{mode}\"\ncommand = [\"{}\"]\nmax_workers = 1\n\
             [functions.env]\nMISBEHAVE_DO = \"{mode}\"\n\n",
            exe.display()
        ));
    }
    config
}

/// Asserts the engine process is alive and serving.
fn assert_engine_serves(engine: &Engine, after: &str) {
    assert!(
        process_state(engine.pid()).is_some_and(|s| s != 'Z'),
        "the engine died after {after}"
    );
    let r = engine.post("/function/echo", after.as_bytes());
    assert_eq!((r.status, r.text()), (200, after.to_string()));
}

/// Waits for the engine's log line about `pid` breaking the protocol.
fn wait_violation_logged(engine: &Engine, function: &str, pid: i32, what: &str) -> String {
    let prefix = format!("worker {function} pid {pid}: protocol violation: ");
    engine
        .log()
        .wait_for(LONG, |l| l.contains(&prefix) && l.ends_with("; killing it"))
        .inspect(|line| assert!(line.contains(what), "{line:?} should say {what:?}"))
        .unwrap_or_else(|| engine.fail(&format!("no log line {prefix:?}…")))
}

#[test]
fn a_worker_that_breaks_the_ring_protocol_is_replaced_and_nobody_else_notices() {
    let config = misbehave_config();
    for_each_poll(|poll| {
        let engine = Engine::builder().config(&config).poll(poll).start();
        let bystander = only_worker(&engine, "misbehave");
        let echo = only_worker(&engine, "echo");

        for &(mode, what) in VIOLATIONS {
            let function = format!("mb-{mode}");
            let liar = only_worker(&engine, &function);
            let r = engine.post(&format!("/function/{function}"), b"");
            assert_eq!(r.status, 502, "{mode}: {}", r.text());
            let msg = r.text();
            assert!(
                msg.contains("protocol violation")
                    && msg.contains(what)
                    && msg.contains(&function)
                    && msg.contains(&liar.to_string()),
                "{mode}: {msg}"
            );
            wait_violation_logged(&engine, &function, liar, what);
            // Killed (not just forgotten) and replaced; the replacement serves.
            let fresh = wait_replaced_worker(&engine, &function, liar);
            let r = engine.post(&format!("/function/{function}?do=none"), b"");
            assert_eq!(
                (r.status, r.text()),
                (200, format!("ok from pid {fresh}")),
                "{mode}"
            );
            assert_engine_serves(&engine, mode);
        }

        // Broken by a worker that is idle: its call was answered; the worker
        // goes all the same.
        let function = "mb-complete-then-flood";
        let liar = only_worker(&engine, function);
        let r = engine.post(&format!("/function/{function}"), b"");
        assert_eq!((r.status, r.text()), (200, format!("ok from pid {liar}")));
        wait_violation_logged(&engine, function, liar, "completion for call 0xdeadbeef");
        wait_replaced_worker(&engine, function, liar);
        assert_engine_serves(&engine, "complete-then-flood");

        // The seals hold: every resize attempt fails with EPERM inside the
        // worker, its call completes, and it keeps serving.
        for &(mode, what) in RESIZES {
            let function = format!("mb-{mode}");
            let worker = only_worker(&engine, &function);
            let r = engine.post(&format!("/function/{function}"), b"");
            assert_eq!(r.status, 200, "{mode}: {}", r.text());
            assert!(r.text().contains(what), "{mode}: {}", r.text());
            let tag = format!("[worker {function} pid={worker}] misbehave: ");
            if engine
                .log()
                .wait_for(LONG, |l| l.contains(&tag) && l.contains(what))
                .is_none()
            {
                engine.fail(&format!("{mode}: the worker's report is not in the log"));
            }
            let r = engine.post(&format!("/function/{function}?do=none"), b"");
            assert_eq!((r.status, r.text()), (200, format!("ok from pid {worker}")));
            assert_eq!(engine.workers(&function), [worker], "{mode}: not replaced");
            assert_engine_serves(&engine, mode);
        }

        // Nobody else noticed: same processes, no other violation, no panic.
        assert_eq!(engine.workers("misbehave"), [bystander]);
        assert_eq!(engine.workers("echo"), [echo]);
        let r = engine.post("/function/misbehave", b"");
        assert_eq!(
            (r.status, r.text()),
            (200, format!("ok from pid {bystander}"))
        );
        let log = engine.log_text();
        let disconnects = log
            .lines()
            .filter(|l| l.contains(": protocol violation: ") && l.ends_with("; killing it"))
            .count();
        assert_eq!(disconnects, VIOLATIONS.len() + 1, "{log}");
        assert!(!log.contains("panicked"), "{log}");
        assert_eq!(engine.get("/healthz").status, 200);
    });
}

// Regression: a worker that corrupts its request ring's release index is
// disconnected and replaced, not left on the idle list failing every call.
#[test]
fn a_worker_that_lies_about_its_request_ring_is_replaced() {
    let exe = misbehave_exe();
    let config = format!(
        "[[functions]]\nname = \"liar\"\ncommand = [\"{}\"]\nmax_workers = 1\n\n\
         [[functions]]\nname = \"echo\"\nbuiltin = \"echo\"\n",
        exe.display()
    );
    for_each_poll(|poll| {
        let engine = Engine::builder().config(&config).poll(poll).start();
        let liar = only_worker(&engine, "liar");
        let r = engine.post("/function/liar?do=bad-release", b"");
        assert_eq!((r.status, r.text()), (200, format!("ok from pid {liar}")));
        // The engine reads the lie once its cached release index runs out
        // (a ring of 32 slots): within 80 calls it must have disconnected the
        // worker. Until then calls are served; the one that finds the lie may
        // fail with 502, and nothing else may.
        let mut c = engine.client();
        let mut statuses = Vec::new();
        let violation = format!("worker liar pid {liar}: protocol violation");
        for _ in 0..80 {
            let r = c.post("/function/liar?do=none", b"");
            statuses.push(r.status);
            match r.status {
                200 => {}
                502 => assert!(r.text().contains("protocol violation"), "{}", r.text()),
                _ => engine.fail(&format!(
                    "call {} answered {} {}",
                    statuses.len(),
                    r.status,
                    r.text()
                )),
            }
            if engine.log_text().contains(&violation) {
                break;
            }
        }
        assert!(
            statuses.iter().filter(|&&s| s == 502).count() <= 1,
            "{statuses:?}"
        );
        wait_violation_logged(&engine, "liar", liar, "release index");
        let fresh = wait_replaced_worker(&engine, "liar", liar);
        let r = c.post("/function/liar", b"");
        assert_eq!((r.status, r.text()), (200, format!("ok from pid {fresh}")));
        assert_engine_serves(&engine, "bad-release");
    });
}

// Regression: an answer HTTP cannot carry (a 1xx status, CR/LF in the content
// type) was refused by the HTTP layer and dropped, leaving its client and
// everything pipelined behind it waiting forever.
#[test]
fn an_answer_http_cannot_carry_is_a_500_and_the_connection_goes_on() {
    let exe = misbehave_exe();
    let config = format!(
        "[[functions]]\nname = \"odd\"\ncommand = [\"{}\"]\nmax_workers = 1\n",
        exe.display()
    );
    let engine = Engine::builder().config(&config).start();
    let mut c = engine.client();
    for (mode, what) in [
        ("status-101", "invalid response status 101"),
        ("split-content-type", "invalid or reserved response header"),
    ] {
        // Pipelined: the odd answer, then a good one behind it.
        c.send("POST", &format!("/function/odd?do={mode}"), &[], b"")
            .unwrap();
        c.send("POST", "/function/odd?do=none", &[], b"").unwrap();
        let r = c.read_response();
        assert_eq!(r.status, 500, "{mode}: {}", r.text());
        assert!(
            r.text()
                .contains("function odd gave an answer HTTP cannot carry")
                && r.text().contains(what),
            "{mode}: {}",
            r.text()
        );
        assert!(r.header("x-injected").is_none(), "{:?}", r.headers);
        assert!(r.header("server-timing").is_some(), "{:?}", r.headers);
        let r = c.read_response();
        assert_eq!(r.status, 200, "{mode}, the call behind: {}", r.text());
        assert!(r.text().starts_with("ok from pid"), "{}", r.text());
    }
    assert!(
        engine
            .log_text()
            .contains("function odd gave an answer HTTP cannot carry"),
        "{}",
        engine.log_text()
    );
}
