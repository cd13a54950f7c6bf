//! The engine under sustained and excess load (issue #4): `soak` and
//! `overload/503`.
//!
//! * `soak`: a long run of small external calls over a few keep-alive
//!   connections. The engine's own resident memory (`RssAnon`: heap and
//!   stacks, not the workers' shared regions, which come and go with the
//!   pool) after the full count is compared with the same after the first
//!   tenth: `rss_growth_pct` (`vm_rss_growth_pct` for all of VmRSS). A
//!   leak of a few hundred bytes per request (the original Nightcore's call
//!   tracer leaks ≈ 200 B) shows as tens of percent.
//! * `overload/503`: a function with one worker and a queue of one is kept
//!   busy and its queue full; every further call must be refused at once.
//!   The case is the latency of those 503s, to set beside the engine's
//!   normal call latency (a refusal must cost less than ten normal calls).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::http::{build_request, HttpClient};
use super::server::ServerProcess;
use super::EngineSettings;
use crate::hist::LatencyHistogram;
use crate::report::CaseResult;

/// Case name of the soak run.
pub const SOAK: &str = "soak";
/// Case name of the overload refusals.
pub const OVERLOAD: &str = "overload/503";
/// The function the overload case saturates (one worker, a queue of one).
pub const OVERLOAD_FUNCTION: &str = "slow";

/// Runs the soak: `soak_requests` echo calls spread over `connections`
/// client threads, each a keep-alive connection.
pub fn run_soak(
    process: &ServerProcess,
    payload: &[u8],
    settings: &EngineSettings,
) -> anyhow::Result<CaseResult> {
    let total = settings.soak_requests;
    let checkpoint = total / 10;
    let threads = settings.connections.clamp(1, 8) as u64;
    let addr = process.addr();
    let request = build_request("POST", "/function/echo", "bench", payload);
    let started = Instant::now();
    let first = soak_phase(addr, &request, payload, threads, checkpoint, settings)?;
    let (rss_early, anon_early) = (process.rss_mib(), anon_mib(process.pid()));
    let second = soak_phase(
        addr,
        &request,
        payload,
        threads,
        total - checkpoint,
        settings,
    )?;
    let (rss_late, anon_late) = (process.rss_mib(), anon_mib(process.pid()));
    let elapsed = started.elapsed().as_secs_f64();
    let mut latencies = first;
    latencies.merge(&second);
    // The engine's own (anonymous) memory: where a per-request leak would
    // grow. Its total RSS also counts the workers' shared channel regions,
    // which come and go as the pool scales; both are reported.
    let pct = |early: f64, late: f64| {
        if early > 0.0 {
            (late - early) / early * 100.0
        } else {
            0.0
        }
    };
    let growth = pct(anon_early, anon_late);
    eprintln!(
        "nocturne bench engine: soak: engine anonymous memory {anon_early:.2} MiB after {checkpoint} \
         requests, {anon_late:.2} MiB after {total} ({growth:+.2} %); RSS {rss_early:.1} → {rss_late:.1} MiB"
    );
    Ok(
        CaseResult::from_histogram(SOAK, &latencies, total as f64 / elapsed, 0)
            .with_extra("rss_growth_pct", (growth * 1000.0).round() / 1000.0)
            .with_extra(
                "vm_rss_growth_pct",
                (pct(rss_early, rss_late) * 1000.0).round() / 1000.0,
            )
            .with_extra("rss_anon_mb", (anon_late * 1000.0).round() / 1000.0)
            .with_extra("rss_mb_early", (rss_early * 1000.0).round() / 1000.0)
            .with_extra("rss_mb", (rss_late * 1000.0).round() / 1000.0)
            .with_count("requests_early", checkpoint),
    )
}

/// `count` requests over `threads` connections; every answer is checked.
fn soak_phase(
    addr: SocketAddr,
    request: &[u8],
    payload: &[u8],
    threads: u64,
    count: u64,
    settings: &EngineSettings,
) -> anyhow::Result<LatencyHistogram> {
    let timeout = settings.timeout;
    let results: Vec<anyhow::Result<LatencyHistogram>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let share = count / threads + u64::from(t < count % threads);
                scope.spawn(move || -> anyhow::Result<LatencyHistogram> {
                    let _ = crate::pin::pin_current_thread(settings.client_core);
                    let mut client = HttpClient::connect(addr, timeout)?;
                    let mut hist = LatencyHistogram::new();
                    for i in 0..share {
                        // A long case: Ctrl-C must not wait for its end.
                        if super::sys::interrupted() {
                            bail!("interrupted");
                        }
                        let t0 = Instant::now();
                        let reply = client.round_trip(request)?;
                        let ns = t0.elapsed().as_nanos() as u64;
                        if reply.status != 200 || reply.body != payload {
                            bail!(
                                "soak request {i}: status {} with {} bytes",
                                reply.status,
                                reply.body.len()
                            );
                        }
                        hist.record_ns(ns);
                    }
                    Ok(hist)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("soak thread panicked"))
            .collect()
    });
    let mut total = LatencyHistogram::new();
    for r in results {
        total.merge(&r.context("soak")?);
    }
    Ok(total)
}

/// Runs the overload case: one call keeps the only worker of
/// [`OVERLOAD_FUNCTION`] busy, a second fills its queue, and `samples`
/// further calls must each be refused with 503 and `Retry-After`.
pub fn run_overload(
    process: &ServerProcess,
    settings: &EngineSettings,
) -> anyhow::Result<CaseResult> {
    let addr = process.addr();
    let timeout = settings.timeout.max(Duration::from_secs(5));
    let samples = settings.samples.clamp(100, 5000);
    // Long enough for every refusal to happen while the worker is busy.
    let busy_us = 1_000_000;
    let busy = build_request(
        "POST",
        &format!("/function/{OVERLOAD_FUNCTION}?us={busy_us}"),
        "bench",
        b"",
    );
    let mut running = HttpClient::connect(addr, timeout)?;
    let mut queued = HttpClient::connect(addr, timeout)?;
    let mut refused = HttpClient::connect(addr, timeout)?;
    // The busy and the queued call go out without waiting for their answers.
    running
        .send_only(&busy)
        .context("overload: the call that keeps the worker busy")?;
    std::thread::sleep(Duration::from_millis(20));
    queued
        .send_only(&busy)
        .context("overload: the call that fills the queue")?;
    std::thread::sleep(Duration::from_millis(20));
    let probe = build_request(
        "POST",
        &format!("/function/{OVERLOAD_FUNCTION}?us=1"),
        "bench",
        b"",
    );
    let mut hist = LatencyHistogram::new();
    let mut errors = 0;
    let started = Instant::now();
    for _ in 0..samples {
        if started.elapsed() > Duration::from_micros(busy_us) / 2 {
            break; // stay well inside the busy window
        }
        let t0 = Instant::now();
        let reply = refused.round_trip(&probe)?;
        let ns = t0.elapsed().as_nanos() as u64;
        if reply.status == 503 {
            hist.record_ns(ns);
        } else {
            errors += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The busy and the queued calls still complete normally.
    for (what, client) in [("busy", &mut running), ("queued", &mut queued)] {
        let status = client
            .read_reply_status()
            .with_context(|| format!("overload: the {what} call"))?;
        if status != 200 {
            errors += 1;
        }
    }
    Ok(CaseResult::from_histogram(
        OVERLOAD,
        &hist,
        hist.len() as f64 / elapsed,
        errors,
    ))
}

/// `RssAnon` of `pid` in MiB (0 when unreadable).
fn anon_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|l| {
                l.strip_prefix("RssAnon:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kib| kib / 1024.0)
}
