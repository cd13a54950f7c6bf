//! The HTTP server over real kernel sockets on 127.0.0.1.

mod common;

use std::io::Write;
use std::thread;
use std::time::Duration;

use common::{get, post, Client, Options, Seen, TestServer};
use nocturne_net::Limits;

fn server() -> TestServer {
    TestServer::start(Options::default())
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let server = server();
    let mut client = server.connect();
    for i in 0..20 {
        let resp = if i % 2 == 0 {
            client.roundtrip(&get(&format!("/echo/{i}?q={i}")))
        } else {
            client.roundtrip(&post("/echo", format!("body {i}").as_bytes()))
        };
        assert_eq!(resp.status_line, "HTTP/1.1 200 OK");
        assert_eq!(resp.header("Connection"), None);
        assert_eq!(resp.header("Content-Type"), Some("text/plain"));
        assert_eq!(resp.header("X-Seq"), Some(i.to_string().as_str()));
        let expected = if i % 2 == 0 {
            format!("GET /echo/{i}?q={i} ")
        } else {
            format!("POST /echo body {i}")
        };
        assert_eq!(resp.body_str(), expected);
    }
    assert_eq!(server.connections(), 1);
    let resp = client.roundtrip(&get("/nowhere"));
    assert_eq!(resp.status_line, "HTTP/1.1 404 Not Found");
}

#[test]
fn pipelined_requests_in_one_write_are_answered_in_order() {
    let server = server();
    let mut client = server.connect();
    let mut batch = Vec::new();
    for i in 0..10 {
        batch.extend_from_slice(&post(&format!("/echo/{i}"), format!("#{i}").as_bytes()));
    }
    client.send(&batch);
    for i in 0..10 {
        let resp = client.read_response();
        assert_eq!(resp.body_str(), format!("POST /echo/{i} #{i}"));
    }
}

#[test]
fn out_of_order_answers_leave_in_request_order() {
    // Held requests are answered last-first, from outside the poll; /echo
    // is answered at once inside on_request. The wire order is the request
    // order regardless.
    let server = TestServer::start(Options {
        hold_batch: 3,
        ..Options::default()
    });
    let mut client = server.connect();
    let mut batch = get("/hold/a");
    batch.extend_from_slice(&get("/echo/1"));
    batch.extend_from_slice(&get("/hold/b"));
    batch.extend_from_slice(&get("/echo/2"));
    batch.extend_from_slice(&get("/hold/c"));
    client.send(&batch);
    assert_eq!(client.read_response().body_str(), "/hold/a");
    assert_eq!(client.read_response().body_str(), "GET /echo/1 ");
    assert_eq!(client.read_response().body_str(), "/hold/b");
    assert_eq!(client.read_response().body_str(), "GET /echo/2 ");
    assert_eq!(client.read_response().body_str(), "/hold/c");
    // The connection is still good.
    assert_eq!(client.roundtrip(&get("/echo/3")).body_str(), "GET /echo/3 ");
}

#[test]
fn chunked_bodies_are_dechunked() {
    let server = server();
    let mut client = server.connect();
    client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    client.send(b"5;name=value\r\nhello\r\n");
    client.send(b"1");
    client.send(b"\r\n \r\n0\r\nX-Trailer: dropped\r\n\r\n");
    let resp = client.read_response();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body_str(), "POST /echo hello ");
    // Followed by a plain request on the same connection.
    assert_eq!(
        client.roundtrip(&post("/echo", b"next")).body_str(),
        "POST /echo next"
    );
    // A chunked body over the limit of /small (10 bytes) is 413 as soon as
    // the crossing chunk is announced.
    client
        .send(b"POST /small HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n");
    assert_eq!(
        client.read_response().status_line,
        "HTTP/1.1 413 Content Too Large"
    );
    client.expect_eof();
}

#[test]
fn a_body_in_many_small_chunks_is_bounded_by_its_decoded_size() {
    // 1000 one-byte chunks: 6 KB on the wire for a 1000-byte body within
    // /echo's 1 KiB limit, while the input buffer may grow only to the
    // head + 1 KiB + one chunk line or trailer section (1 KiB here). The
    // framing already read is dropped as the body arrives.
    let server = TestServer::with_limits(Limits {
        max_header_bytes: 1024,
        ..Limits::default()
    });
    let mut client = server.connect();
    let body: Vec<u8> = (0..1000).map(|i| b'a' + (i % 26) as u8).collect();
    let mut request = b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for &b in &body {
        request.extend_from_slice(b"1\r\n");
        request.push(b);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    assert!(request.len() > 6000);
    client.send(&request);
    let resp = client.read_response();
    assert_eq!(resp.status_line, "HTTP/1.1 200 OK");
    assert_eq!(
        resp.body_str(),
        format!("POST /echo {}", String::from_utf8(body).unwrap())
    );
    // The parser is in step with the stream: the next request is served.
    assert_eq!(
        client.roundtrip(&post("/echo", b"next")).body_str(),
        "POST /echo next"
    );
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let server = server();
    let mut client = server.connect();
    client.send(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
    );
    client.expect_bytes(b"HTTP/1.1 100 Continue\r\n\r\n");
    client.send(b"data");
    let resp = client.read_response();
    assert_eq!(resp.status_line, "HTTP/1.1 200 OK");
    assert_eq!(resp.body_str(), "POST /echo data");

    // Behind a held request, the 100 waits for the earlier answer.
    let server = TestServer::start(Options {
        hold_batch: 1,
        ..Options::default()
    });
    let mut client = server.connect();
    let mut batch = get("/hold/first");
    batch.extend_from_slice(
        b"POST /echo HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
    );
    client.send(&batch);
    assert_eq!(client.read_response().body_str(), "/hold/first");
    client.expect_bytes(b"HTTP/1.1 100 Continue\r\n\r\n");
    client.send(b"ok");
    assert_eq!(client.read_response().body_str(), "POST /echo ok");
}

#[test]
fn expect_100_continue_over_the_limit_gets_413_and_no_100() {
    let server = server();
    let mut client = server.connect();
    client.send(b"POST /small HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n");
    let resp = client.read_response();
    assert_eq!(resp.status_line, "HTTP/1.1 413 Content Too Large");
    assert_eq!(resp.header("Connection"), Some("close"));
    client.expect_eof();
}

#[test]
fn a_request_the_handler_answers_before_its_body_is_not_uploaded() {
    let server = server();
    // Over the body limit: the handler's 404, not 413.
    let mut client = server.connect();
    client.send(b"POST /gone HTTP/1.1\r\nContent-Length: 100000\r\n\r\n");
    let resp = client.read_response();
    assert_eq!(resp.status_line, "HTTP/1.1 404 Not Found");
    assert_eq!(resp.body_str(), "Not Found: gone\n");
    assert_eq!(resp.header("Connection"), Some("close"));
    client.expect_eof();
    // Waiting for 100 Continue: the 404 instead, and no 100.
    let mut client = server.connect();
    client.send(b"POST /gone HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    assert_eq!(client.read_response().status, 404);
    client.expect_eof();
    // A small body without Expect is read as usual, and the handler's own
    // answer (here the catch-all 404) keeps the connection.
    let mut client = server.connect();
    let resp = client.roundtrip(&post("/gone", b"small"));
    assert_eq!(resp.status, 404);
    assert_eq!(resp.body_str(), "no such route");
    assert_eq!(client.roundtrip(&get("/echo")).status, 200);
}

#[test]
fn malformed_request_is_400_then_close() {
    let server = server();
    let mut client = server.connect();
    client.send(b"GET / HTTP/1.1\r\nBad Header\r\n\r\nGET /echo HTTP/1.1\r\n\r\n");
    let resp = client.read_response();
    assert_eq!(resp.status_line, "HTTP/1.1 400 Bad Request");
    assert_eq!(resp.header("Connection"), Some("close"));
    // The body says what exactly was wrong.
    assert_eq!(
        resp.body_str(),
        "Bad Request: malformed request: bad header name\n"
    );
    client.expect_eof();
}

#[test]
fn malformed_request_behind_good_ones_is_answered_after_them() {
    let server = server();
    let mut client = server.connect();
    let mut batch = get("/echo/1");
    batch.extend_from_slice(b"POST /echo HTTP/1.1\r\nContent-Length: nope\r\n\r\n");
    client.send(&batch);
    assert_eq!(client.read_response().body_str(), "GET /echo/1 ");
    assert_eq!(
        client.read_response().status_line,
        "HTTP/1.1 400 Bad Request"
    );
    client.expect_eof();
}

#[test]
fn oversize_head_is_431() {
    let server = server();
    let mut client = server.connect();
    let mut req = b"GET /echo HTTP/1.1\r\nX-Filler: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 9 * 1024));
    req.extend_from_slice(b"\r\n\r\n");
    client.send(&req);
    let resp = client.read_response();
    assert_eq!(
        resp.status_line,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    assert_eq!(
        resp.body_str(),
        format!(
            "Request Header Fields Too Large: request head larger than the limit of {} bytes\n",
            Limits::default().max_header_bytes
        )
    );
    client.expect_eof();
}

#[test]
fn too_many_header_fields_is_431_and_says_so() {
    let server = server();
    let mut client = server.connect();
    let mut req = b"GET /echo HTTP/1.1\r\n".to_vec();
    for i in 0..65 {
        req.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    client.send(&req);
    let resp = client.read_response();
    assert_eq!(
        resp.status_line,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    assert_eq!(
        resp.body_str(),
        "Request Header Fields Too Large: more than 64 header fields\n"
    );
    client.expect_eof();
}

#[test]
fn oversize_body_is_413_from_the_headers_and_the_client_reads_it() {
    let server = server();
    let mut client = server.connect();
    // 1 MiB announced against a 1 KiB limit. The client keeps sending the
    // body from another thread while it reads: the lingering close drains
    // it, so the answer arrives intact and the close is a clean FIN.
    let head = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1048576\r\n\r\n";
    client.send(head);
    let mut writer = client.stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        let chunk = vec![b'b'; 64 * 1024];
        for _ in 0..16 {
            if writer.write_all(&chunk).is_err() {
                break; // closed after the linger: fine
            }
        }
    });
    let resp = client.read_response();
    assert_eq!(resp.status_line, "HTTP/1.1 413 Content Too Large");
    assert_eq!(resp.header("Connection"), Some("close"));
    let why = "Content Too Large: request body larger than the limit of 1024 bytes\n";
    assert_eq!(resp.body_str(), why);
    assert_eq!(resp.header("Content-Length"), Some(&*why.len().to_string()));
    client.expect_eof();
    sender.join().unwrap();
}

#[test]
fn unsupported_transfer_encoding_is_501() {
    let server = server();
    let mut client = server.connect();
    client.send(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n");
    let resp = client.read_response();
    assert_eq!(resp.status_line, "HTTP/1.1 501 Not Implemented");
    assert_eq!(
        resp.body_str(),
        "Not Implemented: unsupported Transfer-Encoding: only chunked is accepted\n"
    );
    client.expect_eof();
}

#[test]
fn head_get_post_put_delete() {
    let server = server();
    let mut client = server.connect();
    client.send(b"HEAD /echo HTTP/1.1\r\nHost: t\r\n\r\n");
    let resp = client.read_response_to(true);
    assert_eq!(resp.status, 200);
    // The length GET would have had, and no body bytes on the wire: the
    // next answer parses cleanly.
    assert_eq!(resp.header("Content-Length"), Some("11"));
    assert_eq!(client.roundtrip(&get("/echo")).body_str(), "GET /echo ");
    assert_eq!(
        client.roundtrip(&post("/echo", b"p")).body_str(),
        "POST /echo p"
    );
    let put = b"PUT /echo HTTP/1.1\r\nContent-Length: 1\r\n\r\nu";
    assert_eq!(client.roundtrip(put).body_str(), "PUT /echo u");
    let delete = b"DELETE /echo HTTP/1.1\r\n\r\n";
    assert_eq!(client.roundtrip(delete).body_str(), "DELETE /echo ");
    let other = b"PROPFIND /echo HTTP/1.1\r\n\r\n";
    assert_eq!(client.roundtrip(other).body_str(), "PROPFIND /echo ");
}

#[test]
fn connection_close_and_http10_end_the_connection() {
    let server = server();
    // Connection: close is honoured; a request pipelined behind it is not
    // answered.
    let mut client = server.connect();
    let mut batch = b"GET /echo HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec();
    batch.extend_from_slice(&get("/echo/ignored"));
    client.send(&batch);
    let resp = client.read_response();
    assert_eq!(resp.header("Connection"), Some("close"));
    client.expect_eof();

    // HTTP/1.0 closes by default…
    let mut client = server.connect();
    let resp = client.roundtrip(b"GET /echo HTTP/1.0\r\n\r\n");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("Connection"), Some("close"));
    client.expect_eof();

    // …and stays with keep-alive.
    let mut client = server.connect();
    for _ in 0..3 {
        let resp = client.roundtrip(b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!(resp.header("Connection"), Some("keep-alive"));
    }
}

#[test]
fn client_closing_mid_request_is_harmless() {
    let server = TestServer::start(Options {
        hold_batch: 2,
        ..Options::default()
    });
    // Half a head, then gone: nothing reaches the handler.
    let mut client = server.connect();
    client.send(b"GET /echo HTT");
    drop(client);
    // Half a body, then gone.
    let mut client = server.connect();
    client.send(b"POST /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
    drop(client);
    server.wait_until("connections closed", |s| s.connections() == 0);

    // A whole request, then gone before the answer: the request is handed
    // out; once answered, the connection is dropped and on_closed reported.
    let mut client = server.connect();
    client.send(&get("/hold/orphan"));
    let Seen::Request { conn: orphan, path } = server.next_seen() else {
        panic!("expected the request first");
    };
    assert_eq!(path, "/hold/orphan");
    drop(client);
    // A second held request completes the batch and gets both answered.
    let mut other = server.connect();
    other.send(&get("/hold/other"));
    assert_eq!(other.read_response().body_str(), "/hold/other");
    let mut closed = false;
    while !closed {
        match server.next_seen() {
            Seen::Closed(conn) => closed = conn == orphan,
            Seen::Request { .. } => {}
        }
    }
    server.wait_until("orphan gone", |s| s.connections() == 1);
    // The server is fine.
    assert_eq!(other.roundtrip(&get("/echo")).body_str(), "GET /echo ");
}

#[test]
fn slow_head_times_out_with_408_and_silent_connection_is_closed() {
    let server = TestServer::with_limits(Limits {
        header_timeout: Duration::from_millis(200),
        ..Limits::default()
    });
    let mut client = server.connect();
    client.send(b"GET /echo HTTP/1.1\r\nHost: sl");
    let resp = client.read_response();
    assert_eq!(resp.status_line, "HTTP/1.1 408 Request Timeout");
    assert_eq!(
        resp.body_str(),
        "Request Timeout: request head not complete within 200 ms\n"
    );
    client.expect_eof();

    let mut silent = server.connect();
    silent.expect_eof();
    server.wait_until("connections closed", |s| s.connections() == 0);
}

#[test]
fn a_body_trickling_in_is_cut_off_with_408_and_one_arriving_steadily_is_not() {
    // A grace of 300 ms after the head, then at least 1000 bytes/s.
    let server = TestServer::with_limits(Limits {
        header_timeout: Duration::from_millis(300),
        min_body_rate: 1000,
        ..Limits::default()
    });
    // 10 bytes every 100 ms (100 bytes/s) of a 1000-byte body: 408, long
    // before the body could be complete (10 s).
    let mut slow = server.connect();
    slow.send(b"POST /echo HTTP/1.1\r\nContent-Length: 1000\r\n\r\n");
    let mut writer = slow.stream.try_clone().unwrap();
    let trickle = thread::spawn(move || {
        for _ in 0..100 {
            if writer.write_all(&[b't'; 10]).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
    });
    let resp = slow.read_response();
    assert_eq!(resp.status_line, "HTTP/1.1 408 Request Timeout");
    assert!(
        resp.body_str()
            .starts_with("Request Timeout: request body arriving slower than 1000 bytes/s: "),
        "{}",
        resp.body_str()
    );
    // Ends the trickle (its writes fail on a shut socket).
    slow.stream.shutdown(std::net::Shutdown::Both).unwrap();
    trickle.join().unwrap();

    // 200 bytes every 100 ms (2000 bytes/s) for 0.5 s: served.
    let mut steady = server.connect();
    steady.send(b"POST /echo HTTP/1.1\r\nContent-Length: 1000\r\n\r\n");
    for _ in 0..5 {
        thread::sleep(Duration::from_millis(100));
        steady.send(&[b's'; 200]);
    }
    let resp = steady.read_response();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body_str().len(), "POST /echo ".len() + 1000);
}

#[test]
fn a_body_that_stops_arriving_gets_408_after_the_idle_timeout() {
    let server = TestServer::with_limits(Limits {
        idle_timeout: Duration::from_millis(300),
        ..Limits::default()
    });
    let mut client = server.connect();
    client.send(b"POST /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
    let resp = client.read_response();
    assert_eq!(resp.status_line, "HTTP/1.1 408 Request Timeout");
    assert!(
        resp.body_str()
            .starts_with("Request Timeout: request body stopped arriving: nothing for "),
        "{}",
        resp.body_str()
    );
    client.expect_eof();
}

#[test]
fn idle_keep_alive_connection_is_closed() {
    let server = TestServer::with_limits(Limits {
        idle_timeout: Duration::from_millis(200),
        ..Limits::default()
    });
    let mut client = server.connect();
    assert_eq!(client.roundtrip(&get("/echo")).status, 200);
    client.expect_eof();
    server.wait_until("connections closed", |s| s.connections() == 0);
}

#[test]
fn connections_over_the_cap_get_503() {
    let server = TestServer::with_limits(Limits {
        max_connections: 2,
        ..Limits::default()
    });
    let mut first = server.connect();
    let mut second = server.connect();
    assert_eq!(first.roundtrip(&get("/echo")).status, 200);
    assert_eq!(second.roundtrip(&get("/echo")).status, 200);

    let mut third = server.connect();
    third.send(&get("/echo"));
    let resp = third.read_response();
    assert_eq!(resp.status_line, "HTTP/1.1 503 Service Unavailable");
    assert_eq!(resp.header("Retry-After"), Some("1"));
    assert_eq!(
        resp.body_str(),
        "Service Unavailable: too many connections are open\n"
    );
    third.expect_eof();
    // Published after the turn that answered: wait for it, then it is 1.
    server.wait_until("the rejection counted", |s| {
        s.published
            .rejected
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    });
    assert_eq!(
        server
            .published
            .rejected
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // Room again once one leaves.
    drop(first);
    server.wait_until("a slot frees", |s| s.connections() == 1);
    let mut fourth = server.connect();
    assert_eq!(fourth.roundtrip(&get("/echo")).status, 200);
    assert_eq!(second.roundtrip(&get("/echo")).status, 200);
}

#[test]
fn lingering_closes_past_max_lingering_are_closed_at_once() {
    // Room for one lingering close. The linger outlasts the test, so the
    // first stays in it until its client leaves.
    let server = TestServer::with_limits(Limits {
        max_lingering: 1,
        linger_timeout: Duration::from_secs(60),
        ..Limits::default()
    });
    let bad_request = |client: &mut common::Client| {
        client.send(b"NOT HTTP\r\n\r\n");
        assert_eq!(client.read_response().status, 400);
        client.expect_eof();
    };
    let mut first = server.connect();
    bad_request(&mut first);
    server.wait_until("the first lingers", |s| s.lingering() == 1);

    // The second gets its answer as well, but is closed, not lingered:
    // the count stays at the cap and nothing of it stays open.
    let mut second = server.connect();
    bad_request(&mut second);
    server.wait_until("the second is gone", |s| s.connections() == 0);
    assert_eq!(server.lingering(), 1);
    // Its socket is closed at the server's end: more input is refused.
    let _ = second.stream.write_all(&[b'x'; 64]);
    thread::sleep(Duration::from_millis(50));
    assert!(
        second.stream.write_all(&[b'x'; 64]).is_err(),
        "the second connection should have been closed, not lingered"
    );

    // Once the first's client leaves, its slot is free for the next.
    drop(first);
    server.wait_until("the first's linger ends", |s| s.lingering() == 0);
    let mut third = server.connect();
    bad_request(&mut third);
    server.wait_until("the third lingers", |s| s.lingering() == 1);
}

#[test]
fn requests_the_handler_still_holds_count_against_the_output_budget() {
    // Four pipelined 100 KB uploads, held by the handler: past the
    // 256 KiB budget (three held) the server stops handing out more, so a
    // client cannot make the handler hold max_pipelined large requests and
    // then their answers.
    let server = server();
    let mut client = server.connect();
    let mut writer = client.stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        for i in 0..4 {
            writer
                .write_all(&post(&format!("/hold/{i}"), &[b'u'; 100_000]))
                .unwrap();
        }
    });
    server.wait_until("three requests handed out", |s| s.requests() == 3);
    thread::sleep(Duration::from_millis(200));
    assert_eq!(
        server.requests(),
        3,
        "the fourth was handed out over budget"
    );

    // Answered, the three no longer count: the fourth goes out.
    server.release_held();
    server.wait_until("the fourth handed out", |s| s.requests() == 4);
    server.release_held();
    for i in 0..4 {
        let resp = client.read_response();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body_str(), format!("/hold/{i}"));
    }
    sender.join().unwrap();
}

#[test]
fn a_drain_closes_each_connection_after_its_last_answer_and_waits_for_requests_arriving() {
    let server = server();
    // Idle keep-alive; one with a call held; one in the middle of a body.
    let mut idle = server.connect();
    assert_eq!(idle.roundtrip(&get("/echo")).status, 200);
    let mut busy = server.connect();
    busy.send(&get("/hold/a"));
    let mut uploading = server.connect();
    uploading.send(b"POST /echo HTTP/1.1\r\nContent-Length: 6\r\n\r\nabc");
    // A held call with an answer ready behind it (serialized before the
    // drain, so without `Connection: close`).
    let mut behind = server.connect();
    let mut pipelined = get("/hold/b");
    pipelined.extend_from_slice(&get("/echo/ready"));
    behind.send(&pipelined);
    server.wait_until("the held calls and the upload", |s| {
        s.requests() == 4 && s.in_progress() == 1
    });

    server.drain();
    // The idle connection's next request is answered, saying it is the last.
    let resp = idle.roundtrip(&get("/echo/after"));
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("Connection"), Some("close"));
    idle.expect_eof();
    // So is the call in flight once it is answered.
    server.release_held();
    let resp = busy.read_response();
    assert_eq!(resp.body_str(), "/hold/a");
    assert_eq!(resp.header("Connection"), Some("close"));
    busy.expect_eof();
    // The connection whose last answer was ready before closes after it.
    assert_eq!(behind.read_response().body_str(), "/hold/b");
    assert_eq!(behind.read_response().body_str(), "GET /echo/ready ");
    behind.expect_eof();
    // The upload is waited for and answered.
    assert_eq!(server.in_progress(), 1);
    uploading.send(b"def");
    let resp = uploading.read_response();
    assert_eq!(resp.body_str(), "POST /echo abcdef");
    assert_eq!(resp.header("Connection"), Some("close"));
    uploading.expect_eof();
    server.wait_until("nothing in progress", |s| s.in_progress() == 0);

    // One that does not finish in time is refused, not cut off silently.
    let mut late = server.connect();
    late.send(b"POST /echo HTTP/1.1\r\nContent-Length: 6\r\n\r\nab");
    server.wait_until("the late upload", |s| s.in_progress() == 1);
    server.refuse_in_progress();
    let resp = late.read_response();
    assert_eq!(resp.status_line, "HTTP/1.1 503 Service Unavailable");
    assert_eq!(resp.body_str(), "Service Unavailable: shutting down\n");
    late.expect_eof();
}

#[test]
fn errors_the_server_answers_to_head_have_no_body() {
    let server = server();
    let mut client = server.connect();
    client.send(b"HEAD /echo HTTP/1.1\r\nExpect: something-else\r\n\r\n");
    let resp = client.read_response_to(true);
    assert_eq!(resp.status_line, "HTTP/1.1 417 Expectation Failed");
    assert!(resp.header("Content-Length").is_some_and(|n| n != "0"));
    // No body bytes follow the head: the next thing is the close.
    client.expect_eof();
}

#[test]
fn a_peer_that_does_not_read_cannot_grow_the_output_without_bound() {
    // 40 pipelined requests for 1 MiB each: far more than the socket buffers
    // hold. While the client does not read, the server stops parsing.
    const N: usize = 40;
    let server = TestServer::start(Options {
        big_body_len: 1 << 20,
        ..Options::default()
    });
    let mut client = server.connect();
    let mut batch = Vec::new();
    for _ in 0..N {
        batch.extend_from_slice(&get("/big"));
    }
    client.send(&batch);
    server.wait_until("some requests", |s| {
        s.published
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    });
    thread::sleep(Duration::from_millis(300));
    let handed_out = server
        .published
        .requests
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        handed_out < N as u64,
        "all {handed_out} requests parsed with nobody reading"
    );
    // Reading resumes everything, in order and intact.
    for _ in 0..N {
        let resp = client.read_response();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body.len(), 1 << 20);
    }
    assert_eq!(client.roundtrip(&get("/echo")).status, 200);
}

#[test]
fn many_connections_interleave() {
    let server = server();
    let mut clients: Vec<Client> = (0..50).map(|_| server.connect()).collect();
    for round in 0..3 {
        for (i, c) in clients.iter_mut().enumerate() {
            c.send(&get(&format!("/echo/{i}/{round}")));
        }
        for (i, c) in clients.iter_mut().enumerate() {
            assert_eq!(
                c.read_response().body_str(),
                format!("GET /echo/{i}/{round} ")
            );
        }
    }
    assert_eq!(server.connections(), 50);
}

#[test]
fn arbitrary_bytes_on_the_wire_never_hurt_the_server() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    use std::io::Read;
    use std::net::Shutdown;

    let server = TestServer::with_limits(Limits {
        max_header_bytes: 256,
        ..Limits::default()
    });
    let prefixes = prop::sample::select(vec![
        &b""[..],
        b"POST /echo HTTP/1.1\r\n",
        b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /small HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
        b"GET /echo HTTP/1.1\r\n\r\n",
    ]);
    let mut runner = TestRunner::new(Config {
        cases: 64,
        ..Config::default()
    });
    runner
        .run(
            &(prefixes, prop::collection::vec(any::<u8>(), 0..400)),
            |(prefix, noise)| {
                let mut client = server.connect();
                client.send(prefix);
                client.send(&noise);
                client.stream.shutdown(Shutdown::Write).unwrap();
                let mut reply = Vec::new();
                // EOF or a reset both end it; the server must not hang.
                let _ = client.stream.read_to_end(&mut reply);
                prop_assert!(
                    reply.is_empty() || reply.starts_with(b"HTTP/1.1 "),
                    "{:?}",
                    String::from_utf8_lossy(&reply)
                );
                Ok(())
            },
        )
        .unwrap();
    let mut client = server.connect();
    assert_eq!(client.roundtrip(&get("/echo")).status, 200);
    drop(client);
    server.wait_until("connections closed", |s| s.connections() == 0);
}

/// A request and the client's FIN in one burst: the answer goes out and the
/// connection closes at once (not at the keep-alive timeout), although the
/// request was read in one short read.
#[test]
fn a_request_with_its_fin_is_answered_and_closed_promptly() {
    use std::io::Read as _;
    let server = server();
    for _ in 0..20 {
        let mut client = server.connect();
        client
            .stream
            .write_all(&post("/echo", b"last words"))
            .unwrap();
        client.stream.shutdown(std::net::Shutdown::Write).unwrap();
        client
            .stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let mut reply = Vec::new();
        client
            .stream
            .read_to_end(&mut reply)
            .expect("the server closes within 3 s");
        let text = String::from_utf8_lossy(&reply);
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        assert!(text.ends_with("POST /echo last words"), "{text}");
    }
}
