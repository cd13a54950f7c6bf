//! Shared by the live load-generator tests (`load_co` against a stalling
//! server, `load_live` against the echo server, `load_errors` against bad
//! targets): a watchdog that fails a run instead of hanging the test, the
//! bookkeeping every run must balance, the short plan they start from,
//! `bench load`'s options parsed as the command line would, and the request
//! framing of the hand-written test servers.

#![allow(dead_code)] // each test binary uses a different part

use std::sync::mpsc;
use std::time::Duration;

use clap::Parser;
use nocturne_bench::load::{LoadArgs, LoadPlan, PollMode, RateResult, RequestSpec, Targets};

/// Fails the test instead of hanging it.
pub fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(120))
        .unwrap_or_else(|_| panic!("{what} did not finish within 120 s"))
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    load: LoadArgs,
}

/// `bench load LIST…` parsed as the command line would be.
pub fn try_args(list: &[&str]) -> Result<LoadArgs, clap::Error> {
    Cli::try_parse_from(std::iter::once("load").chain(list.iter().copied())).map(|cli| cli.load)
}

/// [`try_args`] of options the test knows to be valid.
pub fn args(list: &[&str]) -> LoadArgs {
    try_args(list).unwrap()
}

/// The bookkeeping every run must balance, whatever the timing.
pub fn assert_balanced(r: &RateResult) {
    assert_eq!(
        r.sent + r.unsent,
        r.offered,
        "{}",
        nocturne_bench::load::output::details(r)
    );
    assert_eq!(
        r.completed + r.timeouts + r.socket_errors.requests(),
        r.sent,
        "{}",
        nocturne_bench::load::output::details(r)
    );
    // Every offered request is in the corrected histogram: answered ones,
    // timed-out ones and unsent ones (at the latency they reached).
    assert_eq!(
        r.latency.len(),
        r.completed + r.timeouts + r.unsent,
        "{}",
        nocturne_bench::load::output::details(r)
    );
}

/// A short plan over `specs`: no warm-up, a sleeping client, `connections`
/// connections for a `duration` window, and a request timeout generous
/// enough for a loaded machine.
pub fn short_plan(specs: &[RequestSpec], connections: usize, duration: Duration) -> LoadPlan {
    let mut p = LoadPlan::new(Targets::build(specs, Duration::from_secs(5)).unwrap());
    p.poll = PollMode::Block;
    p.warmup = Duration::ZERO;
    p.duration = duration;
    p.connections = connections;
    p.timeout = Duration::from_secs(20);
    p
}

/// Where the first request in `buf` ends its head and how long its body
/// is: `(head bytes with the blank line, Content-Length or 0)`, once the
/// head is complete. For the test servers, which read requests by hand.
pub fn request_head(buf: &[u8]) -> Option<(usize, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
    Some((end + 4, len))
}
