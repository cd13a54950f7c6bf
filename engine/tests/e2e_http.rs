//! The engine over HTTP, end to end: the real binary, real sockets, real
//! worker processes. Routes, exact bodies, status codes, headers, keep-alive
//! under concurrency and pipelining — each under `--poll spin` and
//! `--poll adaptive`.

mod common;

use std::collections::BTreeSet;

use common::{for_each_poll, request_bytes, Client, Engine};

/// The functions the embedded default config serves.
const DEFAULT_FUNCTIONS: [&str; 5] = ["echo", "bar", "foo", "spin", "sleep"];

#[test]
fn foo_calls_bar_and_echo_returns_bytes_exactly() {
    for_each_poll(|poll| {
        let engine = Engine::builder().poll(poll).start();
        let mut c = engine.client();

        let r = c.post("/function/foo", b"hi");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.body, b"From function Foo: From function Bar: hi");
        let r = c.post("/function/bar", b"hi");
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, b"From function Bar: hi".as_slice())
        );

        // Every byte value, including NUL, CR and LF, comes back unchanged.
        let binary: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        let r = c.post("/function/echo", &binary);
        assert_eq!(r.status, 200);
        assert_eq!(r.body, binary);
        assert_eq!(r.header("content-type"), Some("application/octet-stream"));

        let r = c.post("/function/echo", b"");
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.body.is_empty(), "{:?}", r.text());
        assert_eq!(r.header("content-length"), Some("0"));

        // 1 MiB: the default max_payload, so the largest body echo takes; it
        // travels through the payload arena, not the ring's inline slots.
        let big: Vec<u8> = (0..1u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let r = c.post("/function/echo", &big);
        assert_eq!(
            r.status,
            200,
            "{}",
            String::from_utf8_lossy(&r.body[..r.body.len().min(200)])
        );
        assert_eq!(r.body.len(), big.len());
        assert!(r.body == big, "the 1 MiB echo differs");

        // One byte more is refused from the headers (413), not served.
        let r = Client::connect(engine.addr())
            .try_request("POST", "/function/echo", &[], &[7u8; (1 << 20) + 1])
            .expect("a 413 answer");
        assert_eq!(r.status, 413, "{}", r.text());

        // The connection still serves after all of that.
        let r = c.post("/function/foo", b"again");
        assert_eq!(r.body, b"From function Foo: From function Bar: again");
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
        assert_eq!(r.header("allow"), Some("GET, POST"));
        let r = c.request("DELETE", "/function/echo", b"");
        assert_eq!(r.status, 405);
        let r = c.post("/healthz", b"");
        assert_eq!(r.status, 405);
        let r = c.post("/system/functions", b"");
        assert_eq!(r.status, 405);

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
fn server_timing_content_type_status_and_query_string() {
    for_each_poll(|poll| {
        let engine = Engine::builder().poll(poll).start();
        let mut c = engine.client();

        // Server-Timing: queueing, execution and overhead of the call.
        let r = c.post("/function/foo", b"t");
        let timing = r
            .header("server-timing")
            .expect("a Server-Timing header")
            .to_string();
        for metric in ["queue", "exec", "overhead"] {
            let value = timing
                .split(',')
                .map(str::trim)
                .find_map(|m| m.strip_prefix(&format!("{metric};dur=")))
                .unwrap_or_else(|| panic!("no {metric} in {timing:?}"));
            let ms: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("{metric} is not a number: {timing:?}"));
            assert!(ms >= 0.0, "{timing}");
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

/// The expected body of request `i` of connection `conn` in the load test.
fn load_case(conn: usize, i: usize) -> (&'static str, Vec<u8>, Vec<u8>) {
    let input = format!("c{conn}-r{i}-{}", "x".repeat(i % 97)).into_bytes();
    if i % 2 == 1 {
        let mut expected = b"From function Foo: From function Bar: ".to_vec();
        expected.extend_from_slice(&input);
        ("/function/foo", input, expected)
    } else {
        ("/function/echo", input.clone(), input)
    }
}

#[test]
fn ten_thousand_requests_over_sixteen_keep_alive_connections() {
    const CONNECTIONS: usize = 16;
    const REQUESTS: usize = 10_000;
    for_each_poll(|poll| {
        let engine = Engine::builder().poll(poll).start();
        let addr = engine.addr();
        let answered: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..CONNECTIONS)
                .map(|conn| {
                    s.spawn(move || {
                        let mut c = Client::connect(addr);
                        let mut ok = 0;
                        for i in (conn..REQUESTS).step_by(CONNECTIONS) {
                            let (path, input, expected) = load_case(conn, i);
                            let r = c
                                .try_request("POST", path, &[], &input)
                                .unwrap_or_else(|e| panic!("connection {conn}, request {i}: {e}"));
                            assert_eq!(
                                r.status,
                                200,
                                "connection {conn}, request {i}: {}",
                                r.text()
                            );
                            assert!(
                                r.body == expected,
                                "connection {conn}, request {i}: got {:?}, want {:?}",
                                r.text(),
                                String::from_utf8_lossy(&expected)
                            );
                            ok += 1;
                        }
                        ok
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| engine.fail("a load connection failed"))
                })
                .sum()
        });
        assert_eq!(answered, REQUESTS);
        // Nothing is left in flight or queued.
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
fn pipelined_requests_are_answered_in_order() {
    const N: usize = 50;
    for_each_poll(|poll| {
        let engine = Engine::builder().poll(poll).start();
        let mut c = engine.client();
        // Sleeps of decreasing length between fast calls: completions come
        // back out of order; the answers must not.
        let mut bytes = Vec::new();
        let mut expected = Vec::new();
        for i in 0..N {
            let (path, body, want) = match i % 3 {
                0 => {
                    let input = format!("p{i}");
                    (
                        "/function/foo".to_string(),
                        input.clone(),
                        format!("From function Foo: From function Bar: {input}"),
                    )
                }
                1 => (
                    "/function/echo".to_string(),
                    format!("e{i}"),
                    format!("e{i}"),
                ),
                _ => {
                    let us = (N - i) * 200;
                    (
                        format!("/function/sleep?us={us}"),
                        String::new(),
                        format!("slept {us} us"),
                    )
                }
            };
            bytes.extend(request_bytes("POST", &path, &[], body.as_bytes()));
            expected.push(want);
        }
        // A GET without a body in the middle of the batch, too.
        bytes.extend(request_bytes("GET", "/function/bar", &[], b""));
        expected.push("From function Bar: ".to_string());
        c.write_raw(&bytes).unwrap();
        for (i, want) in expected.iter().enumerate() {
            let r = c
                .try_read_response()
                .unwrap_or_else(|e| engine.fail(&format!("response {i}: {e}")));
            assert_eq!(r.status, 200, "response {i}: {}", r.text());
            assert_eq!(&r.text(), want, "response {i} out of order");
        }
        // And the connection is still good for one more.
        assert_eq!(c.post("/function/echo", b"end").text(), "end");
    });
}

#[test]
fn expect_100_continue_and_chunked_bodies() {
    let engine = Engine::start(&[]);
    let mut c = engine.client();
    // Expect: 100-continue: the server says go ahead, then answers.
    c.write_raw(&request_bytes(
        "POST",
        "/function/echo",
        &[("Expect", "100-continue"), ("Content-Length", "5")],
        b"",
    ))
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
    c.write_raw(&request_bytes(
        "POST",
        "/function/echo",
        &[("Transfer-Encoding", "chunked")],
        b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n",
    ))
    .unwrap();
    assert_eq!(c.read_response().text(), "abcdefg");
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
