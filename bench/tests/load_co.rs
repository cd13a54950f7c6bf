//! Coordinated-omission correction, visibly applied: a test server
//! (std::net, a thread per connection) stalls every answer for a while
//! once its K-th request arrives, like a server-wide pause.
//!
//! The expected shape is wrk2's: at rate R, the R·S requests intended
//! during a stall of S wait for its end, so their latencies from the
//! intended time spread evenly over (0, S]. With R = 1000/s, a 1 s window
//! and S = 100 ms, 10 % of the requests are hit: the 10th largest latency
//! (p99) is at least 91 ms and the 50th (p95) at least 51 ms whatever the
//! machine does, because request k of the stall cannot be answered before
//! the stall ends, (100 − k) ms after its intended time. Those are the
//! bounds asserted; nothing asserts an upper time. The service time from
//! the actual send sees the stall only in the few requests that were
//! inside the server when it began (one per connection), which is the
//! omission the correction repairs.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{assert_balanced, short_plan, within};
use nocturne_bench::load::{run_rate, LoadPlan, RequestSpec, Url};

#[derive(Default)]
struct Log {
    /// (arrival time, connection number) of every request.
    arrivals: Vec<(Instant, usize)>,
    /// (start, end, connection) of the stall, once triggered.
    stall: Option<(Instant, Instant, usize)>,
}

struct StallServer {
    addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
}

impl StallServer {
    /// Answers `200 ok` at once, except that from the arrival of request
    /// number `stall_on` (1-based, the probe included) every answer waits
    /// until `stall` has passed.
    fn start(stall_on: u64, stall: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let (log2, stop2) = (Arc::clone(&log), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut next_conn = 0;
            // Relaxed: a plain flag polled by a test thread.
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        let (log, count) = (Arc::clone(&log2), Arc::clone(&count));
                        let conn = next_conn;
                        next_conn += 1;
                        std::thread::spawn(move || {
                            serve(stream, conn, &log, &count, stall_on, stall)
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        Self { addr, log, stop }
    }
}

impl Drop for StallServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(
    mut s: TcpStream,
    conn: usize,
    log: &Mutex<Log>,
    count: &AtomicU64,
    stall_on: u64,
    stall: Duration,
) {
    let _ = s.set_nodelay(true);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // One request: a head, and the body its Content-Length announces.
        let (head_end, body_len) = loop {
            if let Some(head) = common::request_head(&buf) {
                break head;
            }
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        while buf.len() < head_end + body_len {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + body_len);
        let now = Instant::now();
        // Relaxed: the count only numbers requests; the log's mutex orders the rest.
        let n = count.fetch_add(1, Ordering::Relaxed) + 1;
        let hold_until = {
            let mut log = log.lock().unwrap();
            log.arrivals.push((now, conn));
            if n == stall_on {
                log.stall = Some((now, now + stall, conn));
            }
            log.stall.map(|(_, end, _)| end).filter(|&end| end > now)
        };
        if let Some(end) = hold_until {
            std::thread::sleep(end.saturating_duration_since(Instant::now()));
        }
        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .is_err()
        {
            return;
        }
    }
}

/// The plan of every run here: 1 s of POSTs to `addr`.
fn plan(addr: SocketAddr, connections: usize) -> LoadPlan {
    let spec = RequestSpec {
        name: None,
        url: Url::parse(&format!("http://{addr}/function/echo")).unwrap(),
        method: "POST".into(),
        headers: Vec::new(),
        body: b"x".to_vec(),
        weight: 1,
    };
    short_plan(&[spec], connections, Duration::from_secs(1))
}

const MS: u64 = 1_000_000;

#[test]
fn a_stall_shows_up_in_the_corrected_percentiles() {
    // Request 301 = the run's 300th (the probe is the first), intended at 299 ms.
    let server = StallServer::start(301, Duration::from_millis(100));
    let connections = 4;
    let p = plan(server.addr, connections);
    let r = within("run", move || run_rate(&p, 1_000.0, false).unwrap());
    eprint!(
        "{}",
        nocturne_bench::load::output::table(std::slice::from_ref(&r), &[])
    );
    assert_eq!(r.offered, 1_000);
    assert_balanced(&r);
    assert_eq!(
        r.errors(),
        0,
        "{}",
        nocturne_bench::load::output::details(&r)
    );

    let (p95, p99, max) = (
        r.latency.quantile_ns(0.95),
        r.latency.quantile_ns(0.99),
        r.latency.max_ns(),
    );
    assert!(
        max >= 100 * MS,
        "max {max} ns: the stalled request waited the whole stall"
    );
    assert!(
        p99 >= 90 * MS,
        "p99 {p99} ns: ten requests were due in the stall's first 10 ms"
    );
    assert!(
        p95 >= 50 * MS,
        "p95 {p95} ns: fifty were due in its first 50 ms"
    );
    // Uncorrected, the stall hides: only the requests already inside the
    // server (at most one per connection, 4 of 1000) sat through it, so the
    // service time's p99 (the 10th largest) is below the stall while the
    // corrected p99 is above it.
    let service_p99 = r.service.quantile_ns(0.99);
    assert!(
        service_p99 < 90 * MS,
        "service p99 {service_p99} ns vs corrected p99 {p99} ns"
    );
    assert!(r.service.max_ns() >= 90 * MS);

    // Sends continued on the other connections during the stall: the
    // server saw requests arrive on them while it was stalled, at most
    // one each (no pipelining; each then waited in the stall too).
    let log = server.log.lock().unwrap();
    let (start, end, stalled_conn) = log.stall.expect("the stall happened");
    let during: Vec<usize> = log
        .arrivals
        .iter()
        .filter(|(t, c)| *t > start && *t < end && *c != stalled_conn)
        .map(|(_, c)| *c)
        .collect();
    assert!(
        !during.is_empty(),
        "no request reached another connection during the stall"
    );
    assert!(during.len() < connections, "{during:?}");
    let mut distinct = during.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        during.len(),
        "one request per other connection: {during:?}"
    );
}

#[test]
fn requests_that_could_not_be_sent_are_counted_not_dropped() {
    // The run's 950th request (intended at 949 ms) starts a 300 ms stall on
    // 2 connections: when the window closes at 1 s, the requests intended
    // since then are still waiting for a connection.
    let server = StallServer::start(951, Duration::from_millis(300));
    let p = plan(server.addr, 2);
    let r = within("run", move || run_rate(&p, 1_000.0, false).unwrap());
    assert_eq!(r.offered, 1_000);
    assert_balanced(&r);
    assert!(
        r.unsent > 0,
        "{}",
        nocturne_bench::load::output::details(&r)
    );
    assert_eq!(r.timeouts, 0);
    assert_eq!(
        r.completed, r.sent,
        "the drain waited for the stalled requests"
    );
    // Nothing offered is missing from the latency statistics.
    assert_eq!(r.latency.len(), r.offered);
    assert!(
        r.latency.max_ns() >= 300 * MS,
        "the stalled request waited out the stall"
    );
}

#[test]
fn requests_stuck_past_the_timeout_are_timeouts_and_the_run_ends() {
    // A 3 s stall from the run's 100th request at 200/s, with a 300 ms
    // timeout: the requests inside the server time out, their connections
    // are replaced, and the run still ends on time with everything counted.
    let server = StallServer::start(101, Duration::from_secs(3));
    let mut p = plan(server.addr, 2);
    p.timeout = Duration::from_millis(300);
    let started = Instant::now();
    let r = within("run", move || run_rate(&p, 200.0, false).unwrap());
    assert_eq!(r.offered, 200);
    assert_balanced(&r);
    assert!(
        r.timeouts >= 1,
        "{}",
        nocturne_bench::load::output::details(&r)
    );
    assert!(r.errors() >= r.timeouts);
    assert!(
        r.first_error.as_deref().unwrap_or("").contains("timeout"),
        "{}",
        nocturne_bench::load::output::details(&r)
    );
    // Ended with the drain, long before the stall did (a bound of minutes,
    // against a stall of seconds: not a timing assertion).
    drop(server);
    assert!(started.elapsed() < Duration::from_secs(60));
}
