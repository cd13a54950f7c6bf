//! One end-to-end HTTP suite, run over every network stack the engine
//! serves on: kernel TCP, smoltcp on a TAP device, and smoltcp on an
//! AF_PACKET socket bound to one end of a veth pair.
//!
//! Each check is written once, as a function of a running [`Engine`] (the
//! ones `e2e_http` also runs under every poll mode live in
//! [`common::http_checks`]), and [`on_every_transport!`] makes one `#[test]`
//! of it per [`Transport`] (`kernel::NAME`, `smoltcp_tap::NAME`,
//! `smoltcp_raw::NAME`). For the smoltcp ones the test makes a network
//! namespace with the device in it, runs `nocturne serve --net smoltcp`
//! there under `ip netns exec`, and runs the check — every client socket it
//! opens — on a thread inside that namespace, where the kernel reaches the
//! engine's 192.0.2.2 over the device. The engine is stopped (and checked
//! for leftover workers) by its drop guard and the namespace deleted by its
//! own, also when a check fails;
//! [`a_failing_check_leaves_no_engine_workers_or_namespace`] tests exactly
//! that.
//!
//! The smoltcp tests need root and iproute2. One that cannot create its
//! namespace fails, unless `NOCTURNE_SKIP_NETNS=1` is set.

mod common;
#[path = "../../net/tests/netns/mod.rs"]
mod netns;

use std::net::Shutdown;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use common::http_checks::{
    echo_returns_binary_empty_and_one_mib_bodies, fifty_pipelined_requests_are_answered_in_order,
    foo_calls_bar_and_answers_exact_bytes, keep_alive_load, FOO_BAR,
};
use common::{request_bytes, Client, Engine, EngineBuilder, LONG};
use netns::Netns;

/// The network stack an engine serves HTTP on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    /// Kernel TCP on 127.0.0.1, a free port.
    Kernel,
    /// smoltcp on a TAP device whose kernel side is 192.0.2.1/24.
    SmoltcpTap,
    /// smoltcp on a packet socket on a veth end without an address; the
    /// other end is 192.0.2.1/24.
    SmoltcpRaw,
}

/// The kernel side of the namespace's device.
const KERNEL_SIDE: &str = "192.0.2.1/24";
/// The engine's own address on smoltcp.
const ENGINE_IP: &str = "192.0.2.2/24";
/// smoltcp needs a fixed port; every test has a namespace of its own.
const ENGINE_LISTEN: &str = "0.0.0.0:8080";
const TAP: &str = "nct0";
/// The veth end the kernel stack owns, and the one the engine's packet socket owns.
const VETH_KERNEL: &str = "nck0";
const VETH_RAW: &str = "ncr0";

/// How long a client waits, once the engine has exited, for the FIN or
/// reset the engine sent on its way out: delivery only, nothing is left to
/// compute.
const AFTER_EXIT: Duration = Duration::from_secs(5);

impl Transport {
    const ALL: [Transport; 3] = [
        Transport::Kernel,
        Transport::SmoltcpTap,
        Transport::SmoltcpRaw,
    ];

    /// Starts an engine with the default configuration on this transport
    /// and runs `check` with it, on a thread that can reach it.
    fn test(self, check: fn(&Engine)) {
        self.test_with(|engine, _netns| check(engine));
    }

    /// Like [`test`](Self::test); `check` also gets the namespace's name
    /// (`None` on the kernel transport). Nothing outlives this call: the
    /// engine (and its workers) is stopped before the namespace goes, also
    /// when `check` panics. Returns without running `check` only when
    /// namespaces are skipped (`NOCTURNE_SKIP_NETNS=1`).
    fn test_with(self, check: impl FnOnce(&Engine, Option<&str>) + Send) {
        let device_args = match self {
            Transport::Kernel => {
                let engine = Engine::builder().start();
                self.assert_serves_on(&engine);
                check(&engine, None);
                return;
            }
            Transport::SmoltcpTap => ["--tap", TAP],
            Transport::SmoltcpRaw => ["--raw", VETH_RAW],
        };
        let Some(ns) = Netns::for_test() else { return };
        match self {
            Transport::SmoltcpTap => ns.add_tap(TAP, KERNEL_SIDE),
            Transport::SmoltcpRaw => ns.add_veth(VETH_KERNEL, VETH_RAW, KERNEL_SIDE),
            Transport::Kernel => unreachable!("served above"),
        }
        let name = ns.name().to_owned();
        ns.run(|| {
            let engine = smoltcp_engine(&device_args).start_in_netns(&name);
            self.assert_serves_on(&engine);
            check(&engine, Some(&name));
            // `engine` drops here, on the namespace's thread: before `ns`.
        });
        drop(ns);
        assert!(!netns::exists(&name), "namespace {name} outlived its test");
    }

    /// Fails unless `engine` says it listens on this transport, so that a
    /// flag the engine ignored cannot turn the suite into three kernel runs.
    fn assert_serves_on(self, engine: &Engine) {
        let stack = match self {
            Transport::Kernel => "(kernel TCP;".to_string(),
            Transport::SmoltcpTap => format!("(smoltcp on TAP {TAP};"),
            Transport::SmoltcpRaw => format!("(smoltcp on raw socket on {VETH_RAW};"),
        };
        let listening = engine
            .log()
            .wait_for(LONG, |l| l.starts_with("nocturne: listening on "))
            .unwrap_or_else(|| engine.fail("no listening line"));
        if !listening.contains(&stack) {
            engine.fail(&format!("not serving on {self:?}: {listening}"));
        }
    }
}

/// `nocturne serve --net smoltcp DEVICE --ip 192.0.2.2/24 --listen 0.0.0.0:8080`.
fn smoltcp_engine(device_args: &[&str]) -> EngineBuilder {
    Engine::builder()
        .no_listen_flag()
        .args([
            "--net",
            "smoltcp",
            "--ip",
            ENGINE_IP,
            "--listen",
            ENGINE_LISTEN,
        ])
        .args(device_args)
}

/// One `#[test]` per check and transport, in modules `kernel`,
/// `smoltcp_tap` and `smoltcp_raw`.
macro_rules! on_every_transport {
    ($($check:ident),* $(,)?) => {
        mod kernel {
            $(#[test] fn $check() { super::Transport::Kernel.test(super::$check) })*
        }
        mod smoltcp_tap {
            $(#[test] fn $check() { super::Transport::SmoltcpTap.test(super::$check) })*
        }
        mod smoltcp_raw {
            $(#[test] fn $check() { super::Transport::SmoltcpRaw.test(super::$check) })*
        }
    };
}

on_every_transport!(
    foo_calls_bar_and_answers_exact_bytes,
    echo_returns_binary_empty_and_one_mib_bodies,
    fifty_pipelined_requests_are_answered_in_order,
    error_statuses_and_the_connections_after_them,
    worker_killed_mid_call_gives_502_then_calls_succeed,
    thousand_requests_over_sixteen_keep_alive_connections,
    burst_of_two_hundred_concurrent_connects_is_served,
    pipelined_large_bodies_stream_both_ways_at_once,
    connection_close_half_close_continue_and_chunked,
    a_client_reset_mid_call_disturbs_nothing,
    sigterm_drains_the_call_in_flight_and_refuses_new_connections,
);

fn error_statuses_and_the_connections_after_them(engine: &Engine) {
    let mut c = engine.client();

    // 404 and 405 keep the connection.
    let r = c.post("/function/nosuch", b"x");
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(
        r.text().contains("nosuch"),
        "names the function: {}",
        r.text()
    );
    let r = c.get("/function/echo");
    assert_eq!(r.status, 405, "{}", r.text());
    assert_eq!(r.header("allow"), Some("POST"));
    let r = c.request("PUT", "/function/bar", b"x");
    assert_eq!(r.status, 405, "{}", r.text());
    assert_eq!(c.post("/function/echo", b"kept").text(), "kept");

    // 413 from the headers alone: the body is never sent.
    let mut big = engine.client();
    big.send(
        "POST",
        "/function/echo",
        &[("Content-Length", &(10u64 << 20).to_string())],
        b"",
    )
    .expect("send the head");
    let r = big.read_response();
    assert_eq!(r.status, 413, "{}", r.text());
    // 413 with the whole body sent: the engine reads on after answering
    // (a lingering close), so the client's writes succeed and it reads the
    // answer rather than a reset.
    let r = engine
        .client()
        .try_request("POST", "/function/echo", &[], &[7u8; (1 << 20) + 1])
        .unwrap_or_else(|e| engine.fail(&format!("no 413 after a 1 MiB + 1 body: {e}")));
    assert_eq!(r.status, 413, "{}", r.text());

    // 400: the answer, then that connection ends.
    let mut bad = engine.client();
    bad.write_raw(b"this is not http\r\n\r\n").unwrap();
    let r = bad.read_response();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        bad.closed_within(LONG),
        "the connection stays open after a 400"
    );

    // 431: a request head over the default 8 KiB; then that connection ends.
    let mut fat = engine.client();
    let pad = "a".repeat(10_000);
    let r = fat
        .try_request("POST", "/function/echo", &[("X-Pad", &pad)], b"big")
        .unwrap_or_else(|e| engine.fail(&format!("no 431 answer: {e}")));
    assert_eq!(r.status, 431, "{}", r.text());
    assert!(
        fat.closed_within(LONG),
        "the connection stays open after a 431"
    );
    // Just under the limit is fine.
    let pad = "a".repeat(3000);
    let r = engine
        .client()
        .try_request("POST", "/function/echo", &[("X-Pad", &pad)], b"ok")
        .unwrap();
    assert_eq!((r.status, r.text()), (200, "ok".to_string()));

    // None of that disturbed the first connection or new ones.
    assert_eq!(c.post("/function/foo", b"z").text(), format!("{FOO_BAR}z"));
    assert_eq!(engine.get("/healthz").status, 200);
}

fn worker_killed_mid_call_gives_502_then_calls_succeed(engine: &Engine) {
    let victim = common::only_worker(engine, "sleep");
    let mut c = engine.client();
    common::kill_sleep_worker_mid_call(engine, &mut c, victim);

    // A replacement serves later calls, on this connection and on new ones.
    let fresh = common::wait_replaced_worker(engine, "sleep", victim);
    assert_eq!(c.post("/function/sleep?us=10", b"").text(), "slept 10 us");
    let r = engine.post("/function/sleep?us=20", b"");
    assert_eq!((r.status, r.text()), (200, "slept 20 us".to_string()));
    // (The pool may have grown: see e2e_calls'
    // worker_killed_mid_call_gives_502_and_is_restarted.)
    let workers = engine.workers("sleep");
    assert!(
        workers.contains(&fresh) && !workers.contains(&victim),
        "{workers:?}"
    );
    assert_eq!(
        engine.post("/function/foo", b"ok").text(),
        format!("{FOO_BAR}ok")
    );
}

fn thousand_requests_over_sixteen_keep_alive_connections(engine: &Engine) {
    keep_alive_load(engine, 16, 1000);
}

fn burst_of_two_hundred_concurrent_connects_is_served(engine: &Engine) {
    const CLIENTS: usize = 200;
    let addr = engine.addr();
    // Everyone connects at once; then, with all of them open together,
    // everyone asks. A failed connect still meets the second barrier, so
    // the others are not left waiting.
    let connect = Barrier::new(CLIENTS);
    let all_open = Barrier::new(CLIENTS);
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let (connect, all_open) = (&connect, &all_open);
                s.spawn(move || {
                    connect.wait();
                    let client = Client::try_connect(addr);
                    all_open.wait();
                    let mut c = client.map_err(|e| format!("client {i}: connect: {e}"))?;
                    let body = format!("burst {i}");
                    let r = c
                        .try_request("POST", "/function/echo", &[], body.as_bytes())
                        .map_err(|e| format!("client {i}: {e}"))?;
                    if (r.status, r.text()) != (200, body.clone()) {
                        return Err(format!("client {i}: {} {:?}", r.status, r.text()));
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a client panicked".into())))
            .collect()
    });
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    if !failed.is_empty() {
        engine.fail(&format!(
            "{} of {CLIENTS} concurrent clients failed: {failed:?}",
            failed.len()
        ));
    }
    // And the engine is still there for the next one.
    assert_eq!(engine.post("/function/echo", b"after").text(), "after");
}

fn pipelined_large_bodies_stream_both_ways_at_once(engine: &Engine) {
    // 24 echoes of 96 KiB each on one connection, written by one thread
    // while another reads: 2.25 MiB each way through 64 KiB windows, with
    // the engine's output backing up into its input.
    const CALLS: usize = 24;
    const LEN: usize = 96 << 10;
    let body = |i: usize| -> Vec<u8> {
        (0..LEN)
            .map(|j| (j as u32).wrapping_mul(31).wrapping_add(i as u32) as u8)
            .collect()
    };
    let mut reader = engine.client();
    let mut writer = reader
        .stream()
        .try_clone()
        .expect("clone the client socket");
    std::thread::scope(|s| {
        let write = s.spawn(move || {
            for i in 0..CALLS {
                let bytes = request_bytes("POST", "/function/echo", &[], &body(i));
                std::io::Write::write_all(&mut writer, &bytes)
                    .unwrap_or_else(|e| panic!("write request {i}: {e}"));
            }
        });
        for i in 0..CALLS {
            let r = reader
                .try_read_response()
                .unwrap_or_else(|e| engine.fail(&format!("response {i}: {e}")));
            assert_eq!(r.status, 200, "response {i}: {}", r.text());
            assert!(
                r.body == body(i),
                "response {i} differs ({} bytes)",
                r.body.len()
            );
        }
        write.join().expect("the writer thread");
    });
    assert_eq!(reader.post("/function/echo", b"end").text(), "end");
}

fn connection_close_half_close_continue_and_chunked(engine: &Engine) {
    // `Connection: close`: answered, then the engine closes.
    let mut c = engine.client();
    let r = c
        .try_request("POST", "/function/echo", &[("Connection", "close")], b"bye")
        .unwrap();
    assert_eq!((r.status, r.text()), (200, "bye".to_string()));
    assert!(c.closed_within(LONG), "open after Connection: close");

    // Half-closed after a complete request: answered, then closed.
    let mut half = engine.client();
    half.send("POST", "/function/foo", &[], b"half").unwrap();
    half.stream().shutdown(Shutdown::Write).unwrap();
    let r = half.read_response();
    assert_eq!((r.status, r.text()), (200, format!("{FOO_BAR}half")));
    assert!(
        half.closed_within(LONG),
        "open after the answer to a half-close"
    );

    // Half-closed inside a head: closed without an answer.
    let mut cut = engine.client();
    cut.write_raw(b"POST /function/echo HTTP/1.1\r\nContent-Le")
        .unwrap();
    cut.stream().shutdown(Shutdown::Write).unwrap();
    let got = cut.read_to_close();
    assert!(
        got.is_empty(),
        "answered a partial head: {:?}",
        String::from_utf8_lossy(&got)
    );

    // Expect: 100-continue: a 100, then the answer once the body came.
    let mut c = engine.client();
    c.send(
        "POST",
        "/function/echo",
        &[("Expect", "100-continue"), ("Content-Length", "5")],
        b"",
    )
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        std::io::Read::read_exact(&mut c.stream(), &mut byte).expect("a 100 Continue");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    c.write_raw(b"hello").unwrap();
    assert_eq!(c.read_response().text(), "hello");

    // A chunked request body arrives whole.
    c.send(
        "POST",
        "/function/echo",
        &[("Transfer-Encoding", "chunked")],
        b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n",
    )
    .unwrap();
    assert_eq!(c.read_response().text(), "abcdefg");
}

fn a_client_reset_mid_call_disturbs_nothing(engine: &Engine) {
    let sleeper = common::only_worker(engine, "sleep");
    // An echo answered and left unread, then a long call: closing the
    // socket with unread input makes the client's kernel send a reset while
    // the call is in flight.
    let mut c = engine.client();
    let mut bytes = request_bytes("POST", "/function/echo", &[], b"unread");
    bytes.extend(request_bytes("POST", "/function/sleep?us=300000", &[], b""));
    c.write_raw(&bytes).unwrap();
    let mut peek = [0u8; 16];
    let n = c.stream().peek(&mut peek).expect("the echo answer arrives");
    assert!(n > 0, "closed before the echo answer");
    common::wait_function_status(engine, "sleep", "the call in flight", |f| {
        f["in_flight"].as_u64() == Some(1)
    });
    drop(c);

    // The call finishes into the void; nothing is stuck or killed.
    common::wait_function_status(engine, "sleep", "no call in flight", |f| {
        f["in_flight"].as_u64() == Some(0) && f["queued"].as_u64() == Some(0)
    });
    assert_eq!(
        engine.workers("sleep"),
        [sleeper],
        "the worker was replaced"
    );
    let r = engine.post("/function/sleep?us=5", b"");
    assert_eq!((r.status, r.text()), (200, "slept 5 us".to_string()));
    let mut c = engine.client();
    for i in 0..20 {
        let body = format!("after reset {i}");
        assert_eq!(c.post("/function/echo", body.as_bytes()).text(), body);
    }
}

fn sigterm_drains_the_call_in_flight_and_refuses_new_connections(engine: &Engine) {
    let mut idle = engine.client();
    assert_eq!(idle.post("/function/echo", b"idle").text(), "idle");
    let mut c = engine.client();
    c.send("POST", "/function/sleep?us=500000", &[], b"")
        .unwrap();
    common::wait_function_status(engine, "sleep", "the call in flight", |f| {
        f["in_flight"].as_u64() == Some(1)
    });
    engine.signal(libc::SIGTERM);
    engine
        .log()
        .wait_for(LONG, |l| l.contains("draining 1 call"))
        .unwrap_or_else(|| engine.fail("no drain of the call in flight logged"));

    // While it drains, the listener is gone: a connect is refused at once
    // (kernel: no listening socket; smoltcp: a reset to the SYN).
    match Client::try_connect(engine.addr()) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        Err(e) => engine.fail(&format!(
            "a connect while draining failed with {e}, not refused"
        )),
        Ok(_) => engine.fail("a connect while draining was accepted"),
    }
    // The call in flight is answered.
    let r = c
        .try_read_response()
        .unwrap_or_else(|e| engine.fail(&format!("the drained call was not answered: {e}")));
    assert_eq!((r.status, r.text()), (200, "slept 500000 us".to_string()));
    // Then the engine exits by itself (a zombie until the harness reaps it).
    let deadline = Instant::now() + LONG;
    while !matches!(common::process_state(engine.pid()), None | Some('Z')) {
        if Instant::now() > deadline {
            engine.fail("the engine did not exit after draining");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // The log reader thread may still be reading the last lines.
    engine
        .log()
        .wait_for(LONG, |l| l.contains("nocturne: stopped"))
        .unwrap_or_else(|| engine.fail("the engine did not log that it stopped"));
    // Whatever the engine sends on its way out was sent before it exited;
    // the wait only covers its delivery. Both clients must learn that their
    // connection ended (FIN or reset) rather than hang on a dead peer.
    // Regression: a userspace stack's connections die silently with the
    // process, so the engine closes them (FIN, then reset) before it exits.
    for (name, client) in [("the drained call's", &mut c), ("an idle", &mut idle)] {
        assert!(
            client.closed_within(AFTER_EXIT),
            "{name} connection was not closed when the engine stopped"
        );
    }
}

/// What a deliberately failing check saw before it panicked.
#[derive(Default)]
struct Seen {
    engine: i32,
    workers: Vec<i32>,
    netns: Option<String>,
}

#[test]
fn a_failing_check_leaves_no_engine_workers_or_namespace() {
    for transport in Transport::ALL {
        let seen = Mutex::new(None::<Seen>);
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            transport.test_with(|engine, netns| {
                let workers = engine.all_workers().into_iter().map(|(p, _)| p).collect();
                *seen.lock().unwrap() = Some(Seen {
                    engine: engine.pid(),
                    workers,
                    netns: netns.map(str::to_owned),
                });
                panic!("a deliberate failure on {transport:?}");
            })
        }));
        let Some(seen) = seen.into_inner().unwrap() else {
            // Only when namespaces are skipped; the kernel transport always runs.
            assert_ne!(transport, Transport::Kernel);
            assert!(outcome.is_ok());
            continue;
        };
        assert!(
            outcome.is_err(),
            "{transport:?}: the check's panic was lost"
        );
        assert!(!seen.workers.is_empty(), "{transport:?}: no workers seen");
        for pid in std::iter::once(seen.engine).chain(seen.workers.iter().copied()) {
            let state = common::process_state(pid);
            assert!(
                state.is_none() || state == Some('Z'),
                "{transport:?}: process {pid} outlived the failed test ({state:?})"
            );
        }
        assert_eq!(seen.netns.is_some(), transport != Transport::Kernel);
        if let Some(name) = seen.netns {
            assert!(
                !netns::exists(&name),
                "{transport:?}: namespace {name} is left"
            );
        }
    }
}

#[test]
fn an_engine_that_cannot_open_its_device_fails_the_test_and_leaves_no_namespace() {
    let Some(ns) = Netns::for_test() else { return };
    let name = ns.name().to_owned();
    // No such interface: the engine exits before it listens, and the
    // harness fails the test with its log.
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        ns.run(|| {
            smoltcp_engine(&["--raw", "nosuch0"]).start_in_netns(&name);
        })
    }));
    let message = match outcome {
        Ok(()) => panic!("an engine on a missing interface started"),
        Err(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default(),
    };
    assert!(
        message.contains("exited") && message.contains("nosuch0"),
        "the failure names the exit and the interface: {message}"
    );
    drop(ns);
    assert!(!netns::exists(&name), "namespace {name} is left");
}
