//! The engine over HTTP, end to end: the real binary, real sockets, real
//! worker processes. Routes, exact bodies, status codes, headers, keep-alive
//! under concurrency and pipelining — each under `--poll spin` and
//! `--poll adaptive`. The body, pipelining and load checks are
//! [`common::http_checks`], which `e2e_transports` runs on every transport
//! too; `Expect: 100-continue` and chunked bodies are checked there alone
//! (`connection_close_half_close_continue_and_chunked`).

mod common;

use std::collections::BTreeSet;

use common::http_checks::{
    echo_returns_binary_empty_and_one_mib_bodies, fifty_pipelined_requests_are_answered_in_order,
    foo_calls_bar_and_answers_exact_bytes, keep_alive_load, FOO_BAR,
};
use common::{for_each_poll, request_bytes, Client, Engine};

/// The functions the embedded default config serves.
const DEFAULT_FUNCTIONS: [&str; 5] = ["echo", "bar", "foo", "spin", "sleep"];

#[test]
fn foo_calls_bar_and_echo_returns_bytes_exactly() {
    for_each_poll(|poll| {
        let engine = Engine::builder().poll(poll).start();
        foo_calls_bar_and_answers_exact_bytes(&engine);
        echo_returns_binary_empty_and_one_mib_bodies(&engine);

        // One byte more than the 1 MiB max_payload is refused from the
        // headers (413), not served.
        let mut c = engine.client();
        let r = Client::connect(engine.addr())
            .try_request("POST", "/function/echo", &[], &[7u8; (1 << 20) + 1])
            .expect("a 413 answer");
        assert_eq!(r.status, 413, "{}", r.text());

        // A connection opened before that still serves.
        let r = c.post("/function/foo", b"again");
        assert_eq!(r.text(), format!("{FOO_BAR}again"));
    });
}

#[test]
fn routes_methods_and_status_codes() {
    for_each_poll(|poll| {
        let engine = Engine::builder().poll(poll).start();
        let mut c = engine.client();

        // GET only where allow_get: bar and foo allow it, echo does not.
        let r = c.get("/function/bar");
        assert_eq!((r.status, r.text().as_str()), (200, "From function Bar: "));
        let r = c.get("/function/foo");
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "From function Foo: From function Bar: ")
        );
        let r = c.get("/function/echo");
        assert_eq!(r.status, 405, "{}", r.text());
        assert_eq!(r.header("allow"), Some("POST"));
        let r = c.request("PUT", "/function/bar", b"x");
        assert_eq!(r.status, 405, "{}", r.text());
        assert_eq!(r.header("allow"), Some("GET, HEAD, POST"));
        let r = c.request("DELETE", "/function/echo", b"");
        assert_eq!(r.status, 405);
        for path in ["/healthz", "/system/functions"] {
            let r = c.post(path, b"");
            assert_eq!(r.status, 405, "{path}");
            assert_eq!(r.header("allow"), Some("GET, HEAD"), "{path}");
        }

        // HEAD wherever GET: the GET's headers, no body, and the connection
        // goes on (a body sent after all would corrupt the next answer).
        let get = c.get("/healthz");
        let head = c.head("/healthz");
        assert_eq!((head.status, head.body.len()), (200, 0));
        assert_eq!(head.header("content-length"), get.header("content-length"));
        let head = c.head("/function/bar");
        assert_eq!(head.status, 200);
        let bar_empty = "From function Bar: ".len().to_string();
        assert_eq!(head.header("content-length"), Some(bar_empty.as_str()));
        let head = c.head("/system/functions");
        assert_eq!(head.status, 200);
        assert_eq!(head.header("content-type"), Some("application/json"));
        let head = c.head("/function/echo");
        assert_eq!(head.status, 405, "echo does not allow GET, so not HEAD");
        assert_eq!(c.post("/function/echo", b"after").text(), "after");

        // Unknown functions and paths are 404, and say so.
        let r = c.post("/function/nosuch", b"x");
        assert_eq!(r.status, 404);
        assert!(r.text().contains("nosuch"), "{}", r.text());
        for path in [
            "/",
            "/function/",
            "/function/echo/extra",
            "/functions/echo",
            "/healthzz",
        ] {
            let r = c.post(path, b"");
            assert_eq!(r.status, 404, "{path}: {}", r.text());
        }

        // The harness waited for /healthz; it stays 200.
        let r = c.get("/healthz");
        assert_eq!(r.status, 200, "{}", r.text());

        // /system/functions lists every configured function, each with at
        // least min_workers (1 in the default config) ready.
        let r = c.get("/system/functions");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/json"));
        let list = r.json();
        let list = list.as_array().expect("a JSON array");
        let names: BTreeSet<&str> = list
            .iter()
            .map(|f| f["name"].as_str().expect("name"))
            .collect();
        assert_eq!(names, DEFAULT_FUNCTIONS.into_iter().collect());
        for f in list {
            let workers = f["workers"].as_u64().expect("workers");
            assert!((1..=4).contains(&workers), "{f}");
            assert!(f["in_flight"].is_u64() && f["queued"].is_u64(), "{f}");
            assert_eq!(f["crash_looping"], false, "{f}");
        }
        // And those workers are real processes, children of the engine.
        for name in DEFAULT_FUNCTIONS {
            let pids = engine.workers(name);
            assert!(
                !pids.is_empty(),
                "no worker process of {name}: {:?}",
                engine.all_workers()
            );
            for pid in pids {
                let argv = common::cmdline(pid);
                assert_eq!(argv[1..], ["worker", name], "{argv:?}");
                assert_eq!(argv[0], common::nocturne_exe().to_str().unwrap());
            }
        }

        // A malformed request is 400 and ends that connection only.
        let mut bad = engine.client();
        bad.write_raw(b"this is not http\r\n\r\n").unwrap();
        let r = bad.read_response();
        assert_eq!(r.status, 400);
        let r = c.post("/function/bar", b"still here");
        assert_eq!(r.text(), "From function Bar: still here");
    });
}

#[test]
fn an_upload_to_no_function_is_answered_404_before_its_body() {
    let engine = Engine::start(&[]);
    // Over the 64 KiB a request to no function may carry: 404, not 413.
    let mut c = engine.client();
    c.write_raw(b"POST /function/nope HTTP/1.1\r\nContent-Length: 100000\r\n\r\n")
        .unwrap();
    let r = c.read_response();
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.text(), "Not Found: no function named \"nope\"\n");
    // Waiting for 100 Continue: 404 at once, never 100.
    let mut c = engine.client();
    c.write_raw(
        b"POST /function/nope HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .unwrap();
    let r = c.read_response();
    assert_eq!(r.status, 404, "{}", r.text());
    // (A known function's 100 Continue: e2e_transports.)
}

#[test]
fn a_percent_encoded_function_name_is_that_function() {
    let engine = Engine::start(&[]);
    let mut c = engine.client();
    let r = c.post("/function/ech%6F", b"encoded");
    assert_eq!((r.status, r.text().as_str()), (200, "encoded"));
    let r = c.post("/function/%66%6f%6f?x=1", b"q");
    assert_eq!(r.text(), format!("{FOO_BAR}q"));
    // A malformed escape names no function.
    let r = c.post("/function/ech%6", b"x");
    assert_eq!(r.status, 404, "{}", r.text());
}

#[test]
fn server_timing_content_type_status_and_query_string() {
    for_each_poll(|poll| {
        let engine = Engine::builder().poll(poll).start();
        let mut c = engine.client();

        // Server-Timing: queueing, execution and overhead of the call.
        let r = c.post("/function/foo", b"t");
        for metric in ["queue", "exec", "overhead"] {
            assert!(r.timing_ms(metric) >= 0.0);
        }

        // The query string reaches the function: spin and sleep say what they did.
        let r = c.post("/function/spin?us=100", b"");
        assert_eq!((r.status, r.text().as_str()), (200, "spun 100 us"));
        let r = c.get("/function/spin?us=250");
        assert_eq!((r.status, r.text().as_str()), (200, "spun 250 us"));
        let r = c.post("/function/sleep", br#"{"us":100}"#);
        assert_eq!((r.status, r.text().as_str()), (200, "slept 100 us"));
        let r = c.post("/function/sleep?us=7", br#"{"us":100}"#);
        assert_eq!(r.text(), "slept 7 us", "the query wins over the body");
        let r = c.post("/function/sleep", b"");
        assert_eq!(r.text(), "slept 0 us");

        // A handler's own status: bad input to spin is its 400, in text/plain,
        // still with Server-Timing.
        let r = c.post("/function/spin?us=abc", b"");
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(r.text().contains("abc"), "{}", r.text());
        assert!(r
            .header("content-type")
            .unwrap_or_default()
            .starts_with("text/plain"));
        assert!(r.header("server-timing").is_some());
        let r = c.post("/function/sleep", b"{\"us\":\"soon\"}");
        assert_eq!(r.status, 400, "{}", r.text());
    });
}

#[test]
fn a_body_at_max_payload_with_a_long_query_string_is_served() {
    // Regression: the worker's arena had room for max_payload and 4 KiB, so a
    // body at the limit with a 7 KB query (well within max_header_bytes) was
    // answered 503 "payload of 265052 bytes exceeds the maximum of 262144".
    let engine = Engine::start(&["--set", "echo.max_payload=252KiB"]);
    let body = vec![b'a'; 252 * 1024];
    let query = format!("q={}", "x".repeat(7000));
    let r = engine.post(&format!("/function/echo?{query}"), &body);
    assert_eq!(
        r.status,
        200,
        "{}",
        String::from_utf8_lossy(&r.body[..200.min(r.body.len())])
    );
    assert_eq!(r.body, body);
    // One byte more is the client's fault, and said so.
    let r = engine.post(&format!("/function/echo?{query}"), &[b'a'; 252 * 1024 + 1]);
    assert_eq!(r.status, 413, "{}", r.text());
}

#[test]
fn a_query_string_too_long_to_carry_is_414_and_the_connection_goes_on() {
    // A call carries its query with a 16-bit length: a longer one (possible
    // with a large max_header_bytes) is refused, not cut.
    let engine = Engine::start(&["--max-header-bytes", "128KiB"]);
    let mut c = engine.client();
    let long = format!("q={}", "x".repeat(70_000));
    let r = c.post(&format!("/function/echo?{long}"), b"body");
    assert_eq!(r.status, 414, "{}", r.text());
    assert!(
        r.text()
            .contains("query string of 70002 bytes is longer than 65535"),
        "{}",
        r.text()
    );
    let fits = format!("q={}", "x".repeat(60_000));
    let r = c.post(&format!("/function/echo?{fits}"), b"body");
    assert_eq!((r.status, r.text().as_str()), (200, "body"));
}

#[test]
fn an_internal_call_over_the_callees_max_payload_is_a_typed_413() {
    let engine = Engine::builder()
        .config(
            r#"
[[functions]]
name = "front"
builtin = "relay"
max_payload = "64KiB"
[functions.env]
RELAY_TO = "echo"

[[functions]]
name = "echo"
builtin = "echo"
max_payload = "1KiB"
"#,
        )
        .start();
    let r = engine.post("/function/front", &[b'z'; 1024]);
    assert_eq!(
        (r.status, r.body.len()),
        (200, "front via echo: ".len() + 1024)
    );
    let r = engine.post("/function/front", &[b'z'; 1025]);
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(
        r.text()
            .contains("input of 1025 bytes is more than echo's max_payload (1024 bytes)"),
        "{}",
        r.text()
    );
    // The caller's worker serves on.
    let r = engine.post("/function/front", b"again");
    assert_eq!(r.text(), "front via echo: again");
}

#[test]
fn handler_content_type_reaches_the_client() {
    // ping sets application/json; it needs nop and whoami deployed.
    let engine = Engine::builder()
        .config(
            "[[functions]]\nname = \"ping\"\nbuiltin = \"ping\"\nallow_get = true\n\
             [[functions]]\nname = \"nop\"\nbuiltin = \"nop\"\n\
             [[functions]]\nname = \"whoami\"\nbuiltin = \"whoami\"\n",
        )
        .start();
    let r = engine.get("/function/ping?n=3");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["samples_ns"].as_array().expect("samples").len(), 3);
    let r = engine.post("/function/nop", b"ignored");
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
}

#[test]
fn ten_thousand_requests_over_sixteen_keep_alive_connections() {
    for_each_poll(|poll| keep_alive_load(&Engine::builder().poll(poll).start(), 16, 10_000));
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    for_each_poll(|poll| {
        fifty_pipelined_requests_are_answered_in_order(&Engine::builder().poll(poll).start())
    });
}

#[test]
fn pipelined_engine_errors_keep_their_place() {
    // A 404 and a 405 answered by the engine itself between calls answered by
    // workers still leave in request order.
    let engine = Engine::start(&[]);
    let mut c = engine.client();
    let mut bytes = request_bytes("POST", "/function/sleep?us=30000", &[], b"");
    bytes.extend(request_bytes("POST", "/function/nosuch", &[], b""));
    bytes.extend(request_bytes("GET", "/function/echo", &[], b""));
    bytes.extend(request_bytes("POST", "/function/echo", &[], b"last"));
    c.write_raw(&bytes).unwrap();
    let statuses: Vec<(u16, String)> = (0..4)
        .map(|_| {
            let r = c.read_response();
            (r.status, r.text())
        })
        .collect();
    assert_eq!(statuses[0], (200, "slept 30000 us".to_string()));
    assert_eq!(statuses[1].0, 404);
    assert_eq!(statuses[2].0, 405);
    assert_eq!(statuses[3], (200, "last".to_string()));
}
