//! HTTP checks that run both on every transport (`e2e_transports`, under the
//! default poll mode) and under every poll mode (`e2e_http`, on kernel TCP):
//! each is a function of a running [`Engine`] and opens every socket from
//! the calling thread (or threads it scopes), so it works inside a network
//! namespace too.

use super::{request_bytes, Client, Engine};

/// What foo answers before its input.
pub const FOO_BAR: &str = "From function Foo: From function Bar: ";

/// Bytes where every value occurs, NUL, CR and LF included.
pub fn every_byte(len: usize) -> Vec<u8> {
    (0..=255u8).cycle().take(len).collect()
}

/// foo's internal call to bar, POST and GET, text and binary input, on one
/// keep-alive connection and on fresh ones.
pub fn foo_calls_bar_and_answers_exact_bytes(engine: &Engine) {
    let mut c = engine.client();
    let r = c.post("/function/foo", b"hi");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), format!("{FOO_BAR}hi"));
    let r = c.post("/function/bar", b"hi");
    assert_eq!((r.status, r.text()), (200, "From function Bar: hi".into()));
    // GET is allowed on both, with an empty input.
    let r = c.get("/function/foo");
    assert_eq!((r.status, r.text()), (200, FOO_BAR.to_string()));
    let r = c.get("/function/bar");
    assert_eq!((r.status, r.text()), (200, "From function Bar: ".into()));

    // Binary input survives foo's internal call to bar byte for byte.
    let input = every_byte(3000);
    let r = c.post("/function/foo", &input);
    assert_eq!(r.status, 200);
    let mut want = FOO_BAR.as_bytes().to_vec();
    want.extend_from_slice(&input);
    assert!(r.body == want, "foo's answer to binary input differs");

    // The same on fresh connections, one request each.
    for i in 0..5 {
        let body = format!("fresh {i}");
        let r = engine.post("/function/foo", body.as_bytes());
        assert_eq!((r.status, r.text()), (200, format!("{FOO_BAR}{body}")));
    }
}

/// Echo returns every byte value, an empty body and bodies up to the
/// default 1 MiB `max_payload` unchanged, on one connection.
pub fn echo_returns_binary_empty_and_one_mib_bodies(engine: &Engine) {
    let mut c = engine.client();
    let binary = every_byte(4096);
    let r = c.post("/function/echo", &binary);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, binary);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));

    let r = c.post("/function/echo", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body.is_empty(), "{:?}", r.text());
    assert_eq!(r.header("content-length"), Some("0"));

    // One byte past a 64 KiB window, then 1 MiB: the default max_payload,
    // the largest body echo takes, many windows each way.
    for len in [(64 << 10) + 1, 1 << 20] {
        let big: Vec<u8> = (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let r = c.post("/function/echo", &big);
        assert_eq!(
            r.status,
            200,
            "{len} bytes: {}",
            String::from_utf8_lossy(&r.body[..r.body.len().min(200)])
        );
        assert_eq!(r.body.len(), big.len());
        assert!(r.body == big, "the {len}-byte echo differs");
    }

    // The connection still serves small requests after the big ones.
    assert_eq!(c.post("/function/echo", b"after").text(), "after");
    assert_eq!(c.post("/function/echo", b"").body.len(), 0);
}

/// Fifty requests and a GET in one write come back in request order, though
/// their calls complete out of order.
pub fn fifty_pipelined_requests_are_answered_in_order(engine: &Engine) {
    const N: usize = 50;
    let mut c = engine.client();
    // Sleeps of decreasing length between fast calls: completions come back
    // out of order; the answers must not.
    let mut bytes = Vec::new();
    let mut expected = Vec::new();
    for i in 0..N {
        let (path, body, want) = match i % 3 {
            0 => {
                let input = format!("p{i}");
                (
                    "/function/foo".to_string(),
                    input.clone(),
                    format!("{FOO_BAR}{input}"),
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
    // A GET without a body at the end of the batch, too.
    bytes.extend(request_bytes("GET", "/function/bar", &[], b""));
    expected.push("From function Bar: ".to_string());
    // All of it in one write: several requests per segment, and requests
    // split across segments.
    c.write_raw(&bytes).expect("write the pipelined batch");
    for (i, want) in expected.iter().enumerate() {
        let r = c
            .try_read_response()
            .unwrap_or_else(|e| engine.fail(&format!("response {i}: {e}")));
        assert_eq!(r.status, 200, "response {i}: {}", r.text());
        assert_eq!(&r.text(), want, "response {i} out of order");
    }
    assert_eq!(c.post("/function/echo", b"end").text(), "end");
}

/// `requests` calls, foo and echo in turn with inputs of growing length,
/// spread over `connections` keep-alive connections on threads of their
/// own; each answer is checked byte for byte, and nothing is left in flight
/// or queued afterwards. The threads are scoped, so they start inside the
/// network namespace of the thread that calls this.
pub fn keep_alive_load(engine: &Engine, connections: usize, requests: usize) {
    let addr = engine.addr();
    let answered: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..connections)
            .map(|conn| {
                s.spawn(move || {
                    let mut c = Client::connect(addr);
                    let mut ok = 0;
                    for i in (conn..requests).step_by(connections) {
                        let input = format!("c{conn}-r{i}-{}", "x".repeat(i % 97)).into_bytes();
                        let (path, want) = if i % 2 == 1 {
                            let mut want = FOO_BAR.as_bytes().to_vec();
                            want.extend_from_slice(&input);
                            ("/function/foo", want)
                        } else {
                            ("/function/echo", input.clone())
                        };
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
                            r.body == want,
                            "connection {conn}, request {i}: got {:?}, want {:?}",
                            r.text(),
                            String::from_utf8_lossy(&want)
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
    assert_eq!(answered, requests);
    for f in engine.functions_status() {
        assert_eq!(
            (f["in_flight"].as_u64(), f["queued"].as_u64()),
            (Some(0), Some(0)),
            "{f}"
        );
    }
}
