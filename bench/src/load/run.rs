//! One run at one rate: probe the targets, start the client threads, let
//! them connect, give them a common start time, watch their progress, and
//! merge what they measured into a [`RateResult`].

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::baseline::{BlockingClient, ProbeError};
use super::client::{run_thread, LiveCounters, SocketErrors, ThreadPlan, ThreadResult, Wire};
use super::interrupt::{stop_check, Phase};
use super::progress::{progress_line, ProgressCounts};
use super::schedule::{ArrivalSchedule, KindPicker};
use super::spec::Slo;
use super::{LoadError, LoadPlan};
use crate::hist::LatencyHistogram;

/// What one run at one rate measured (all client threads merged).
#[derive(Debug, Clone)]
pub struct RateResult {
    /// The rate asked for, requests/s.
    pub rate: f64,
    /// Length of the measurement window (warm-up excluded).
    pub window: Duration,
    /// Requests the schedule called for within the window.
    pub offered: u64,
    /// Of those, requests written to a connection.
    pub sent: u64,
    /// Of those, requests answered (any status).
    pub completed: u64,
    /// Requests still waiting for a free connection when the window
    /// closed: never sent, recorded with the latency they had reached.
    pub unsent: u64,
    /// Requests not answered within the timeout (recorded with the
    /// latency they had reached).
    pub timeouts: u64,
    /// Answers with a status outside 200..=299.
    pub non_2xx: u64,
    /// Failed connection attempts and requests lost to failed connections.
    pub socket_errors: SocketErrors,
    /// Answers by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Responses that arrived within the window (for the achieved rate).
    pub responses_in_window: u64,
    /// Latency from each request's intended send time (coordinated
    /// omission corrected), ns.
    pub latency: LatencyHistogram,
    /// Service time from each request's actual send, ns.
    pub service: LatencyHistogram,
    /// Send lag: from each request's intended to its actual send, ns. Near
    /// zero while the generator keeps up; it grows when requests wait for a
    /// free connection or the client thread runs late.
    pub send_lag: LatencyHistogram,
    /// What each request kind measured (only for more than one kind).
    pub per_kind: Vec<KindResult>,
    /// Connections re-opened during the run.
    pub reconnects: u64,
    /// CPU time of all client threads (warm-up and drain included).
    pub client_cpu: Duration,
    /// Requests the client threads sent in all (warm-up included).
    pub requests_total: u64,
    /// The first error a client thread met, for the error message.
    pub first_error: Option<String>,
    /// Whether non-2xx answers were expected (`--allow-errors`): they are
    /// still counted in [`errors`](Self::errors), but are no
    /// [`failures`](Self::failures) and do not make a rate miss its
    /// objectives.
    pub allow_non_2xx: bool,
}

/// What one request kind of a mix measured: its share of the rate's
/// counts, each request counted under the kind it was drawn as.
#[derive(Debug, Clone, Default)]
pub struct KindResult {
    /// The kind's name (as in the mix, or `METHOD PATH`).
    pub name: String,
    /// Corrected latency of its requests: answered, timed out and unsent
    /// (at the latency they reached), as the rate's own histogram.
    pub latency: LatencyHistogram,
    /// Requests of this kind the schedule called for within the window.
    pub offered: u64,
    /// Of those, requests answered in time (any status).
    pub completed: u64,
    /// Answers within the window (for its achieved rate).
    pub responses_in_window: u64,
    /// Requests never sent (still waiting when the window closed).
    pub unsent: u64,
    /// Requests not answered within the timeout.
    pub timeouts: u64,
    /// Answers with a status outside 200..=299.
    pub non_2xx: u64,
    /// Requests lost to failed connections (connection attempts, which
    /// belong to no kind, are only in the rate's socket errors).
    pub lost: u64,
}

impl KindResult {
    /// Its failed requests: non-2xx answers, timeouts and requests lost
    /// to failed connections.
    pub fn errors(&self) -> u64 {
        self.non_2xx + self.timeouts + self.lost
    }

    /// Answers of this kind within the window, per second.
    pub fn achieved_per_s(&self, window: Duration) -> f64 {
        self.responses_in_window as f64 / window.as_secs_f64().max(1e-9)
    }

    fn add(&mut self, other: &KindResult) {
        self.latency.merge(&other.latency);
        self.offered += other.offered;
        self.completed += other.completed;
        self.responses_in_window += other.responses_in_window;
        self.unsent += other.unsent;
        self.timeouts += other.timeouts;
        self.non_2xx += other.non_2xx;
        self.lost += other.lost;
    }
}

impl RateResult {
    /// Offered rate within the window, requests/s.
    pub fn offered_per_s(&self) -> f64 {
        self.offered as f64 / self.window.as_secs_f64().max(1e-9)
    }

    /// Achieved rate: responses that arrived within the window, per second.
    pub fn achieved_per_s(&self) -> f64 {
        self.responses_in_window as f64 / self.window.as_secs_f64().max(1e-9)
    }

    /// Failed requests and connection attempts, timeouts and non-2xx
    /// answers.
    pub fn errors(&self) -> u64 {
        self.non_2xx + self.socket_errors.total() + self.timeouts
    }

    /// The errors that fail a run: all of them, less the non-2xx answers
    /// when those were expected ([`allow_non_2xx`](Self::allow_non_2xx)).
    pub fn failures(&self) -> u64 {
        if self.allow_non_2xx {
            self.errors() - self.non_2xx
        } else {
            self.errors()
        }
    }

    /// True when the window measured something, nothing failed and every
    /// objective holds. An empty window meets nothing: no sample is no
    /// evidence.
    pub fn meets(&self, slos: &[Slo]) -> bool {
        !self.latency.is_empty()
            && self.failures() == 0
            && slos.iter().all(|s| s.is_met_by(&self.latency))
    }

    /// Client CPU time per request sent, µs.
    pub fn client_cpu_us_per_request(&self) -> f64 {
        if self.requests_total == 0 {
            return 0.0;
        }
        self.client_cpu.as_secs_f64() * 1e6 / self.requests_total as f64
    }
}

/// Splits a thread's `n` connections over endpoints in proportion to
/// their weights, at least one each.
pub fn split_connections(n: usize, weights: &[u64]) -> Vec<usize> {
    let e = weights.len();
    assert!(n >= e, "at least one connection per endpoint");
    let total = weights.iter().sum::<u64>().max(1) as f64;
    let ideal: Vec<f64> = weights
        .iter()
        .map(|&w| n as f64 * w as f64 / total)
        .collect();
    let mut counts: Vec<usize> = ideal.iter().map(|&x| (x.floor() as usize).max(1)).collect();
    let mut sum: usize = counts.iter().sum();
    // Hand out what is left to the most under-served, take back from the
    // most over-served (never below one).
    while sum < n {
        let i = (0..e)
            .max_by(|&a, &b| {
                (ideal[a] - counts[a] as f64)
                    .total_cmp(&(ideal[b] - counts[b] as f64))
                    .then(b.cmp(&a))
            })
            .expect("at least one endpoint");
        counts[i] += 1;
        sum += 1;
    }
    while sum > n {
        let i = (0..e)
            .filter(|&i| counts[i] > 1)
            .max_by(|&a, &b| {
                (counts[a] as f64 - ideal[a]).total_cmp(&(counts[b] as f64 - ideal[b]))
            })
            .expect("n >= e leaves an endpoint with more than one");
        counts[i] -= 1;
        sum -= 1;
    }
    counts
}

/// Sends every request kind once on a fresh blocking connection: a bad
/// target fails here with a clear message. Non-2xx answers fail too,
/// unless `plan.allow_errors`. A signal (with `plan.stop_on_signal`)
/// ends the wait: [`LoadError::Interrupted`] with [`Phase::Check`].
pub fn probe(plan: &LoadPlan) -> Result<(), LoadError> {
    let stop = stop_check(plan);
    for kind in &plan.targets.kinds {
        let addr = plan.targets.endpoints[kind.endpoint].addr;
        let probe_err = |source| match source {
            ProbeError::Interrupted { .. } => LoadError::Interrupted(Phase::Check { rate: None }),
            source => LoadError::Probe {
                kind: kind.name.clone(),
                source,
            },
        };
        if stop() {
            return Err(LoadError::Interrupted(Phase::Check { rate: None }));
        }
        let mut client =
            BlockingClient::connect(addr, plan.connect_timeout, plan.timeout).map_err(probe_err)?;
        let response = client
            .round_trip_until(&kind.wire, kind.response_has_body, stop)
            .map_err(probe_err)?;
        if !(200..300).contains(&response.status) && !plan.allow_errors {
            return Err(LoadError::ProbeStatus {
                kind: kind.name.clone(),
                addr,
                status: response.status,
            });
        }
    }
    Ok(())
}

/// Runs the plan at `rate` requests/s: probe, connect, warm-up, window,
/// drain. Prints a progress line on stderr when `progress` (and stderr is
/// a terminal).
///
/// With `plan.stop_on_signal`, a signal before or during the window ends
/// the run with [`LoadError::Interrupted`] ([`Phase::Check`] or
/// [`Phase::Window`]); one during the drain after the window cuts the
/// drain short (what is still unanswered counts as timed out) and the
/// result is returned: the caller sees the flag and stops there.
pub fn run_rate(plan: &LoadPlan, rate: f64, progress: bool) -> Result<RateResult, LoadError> {
    plan.validate()?;
    if !(rate.is_finite() && rate > 0.0) {
        return Err(LoadError::Invalid(format!(
            "rate {rate} is not a positive number"
        )));
    }
    let stop = stop_check(plan);
    let checking = LoadError::Interrupted(Phase::Check { rate: Some(rate) });
    match probe(plan) {
        Err(LoadError::Interrupted(_)) => return Err(checking),
        other => other?,
    }
    let threads = plan.threads;
    let kinds: Arc<Vec<Wire>> = Arc::new(
        plan.targets
            .kinds
            .iter()
            .map(|k| Wire {
                endpoint: k.endpoint,
                bytes: k.wire.clone(),
                has_body: k.response_has_body,
            })
            .collect(),
    );
    let endpoints: Vec<_> = plan.targets.endpoints.iter().map(|e| e.addr).collect();
    let mut endpoint_weights = vec![0u64; endpoints.len()];
    for k in &plan.targets.kinds {
        endpoint_weights[k.endpoint] += u64::from(k.weight);
    }
    let weights = plan.targets.weights();
    let warmup_ns = nanos(plan.warmup);
    let end_ns = warmup_ns.saturating_add(nanos(plan.duration));
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut starters = Vec::with_capacity(threads);
    let mut handles = Vec::with_capacity(threads);
    let mut live = Vec::with_capacity(threads);
    for i in 0..threads {
        let n = plan.connections / threads + usize::from(i < plan.connections % threads);
        let split = split_connections(n, &endpoint_weights);
        let connections: Vec<usize> = split
            .iter()
            .enumerate()
            .flat_map(|(e, &count)| std::iter::repeat_n(e, count))
            .collect();
        let counters = Arc::new(LiveCounters::default());
        live.push(Arc::clone(&counters));
        let thread_plan = ThreadPlan {
            core: (!plan.cores.is_empty()).then(|| plan.cores[i % plan.cores.len()]),
            schedule: ArrivalSchedule::for_thread(plan.arrival, rate, i, threads, plan.seed),
            picker: KindPicker::new(&weights, plan.seed.wrapping_add(i as u64)),
            kinds: Arc::clone(&kinds),
            kind_histograms: plan.targets.kinds.len() > 1,
            endpoints: endpoints.clone(),
            connections,
            warmup_ns,
            end_ns,
            pipeline: plan.pipeline,
            poll: plan.poll,
            spin_ns: nanos(plan.spin),
            timeout: plan.timeout,
            connect_timeout: plan.connect_timeout,
            stop_on_signal: plan.stop_on_signal,
            live: counters,
        };
        let (start_tx, start_rx) = mpsc::channel();
        starters.push(start_tx);
        let ready = ready_tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("load-client-{i}"))
            .spawn(move || run_thread(thread_plan, i, ready, start_rx))
            .map_err(LoadError::Setup)?;
        handles.push(handle);
    }
    drop(ready_tx);

    // Every thread connects before any starts; one failure aborts all.
    let connect_budget =
        plan.connect_timeout * (plan.connections as u32 + 1) + Duration::from_secs(10);
    let mut failure = None;
    for _ in 0..threads {
        match ready_rx.recv_timeout(connect_budget) {
            Ok((_, Ok(()))) => {}
            Ok((_, Err(e))) => {
                failure = Some(e);
                break;
            }
            Err(_) => {
                failure = Some(LoadError::Invalid(
                    "client threads did not finish connecting".into(),
                ));
                break;
            }
        }
    }
    if failure.is_none() && stop() {
        failure = Some(checking);
    }
    if let Some(e) = failure {
        for s in &starters {
            let _ = s.send(None);
        }
        for h in handles {
            let _ = h.join();
        }
        return Err(e);
    }
    // A little ahead, so every thread begins at the same schedule origin.
    let start = Instant::now() + Duration::from_millis(2);
    for s in &starters {
        let _ = s.send(Some(start));
    }

    let show = progress && std::io::stderr().is_terminal();
    let mut last_print = Instant::now();
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(50));
        if show && last_print.elapsed() >= Duration::from_millis(500) {
            last_print = Instant::now();
            let line = progress_line(
                rate,
                plan.warmup,
                plan.duration,
                start.elapsed(),
                &ProgressCounts::sum(&live),
            );
            eprint!("\r\x1b[2K{line}");
            let _ = std::io::stderr().flush();
        }
    }
    if show {
        eprint!("\r\x1b[2K");
    }
    let mut results = Vec::with_capacity(threads);
    for h in handles {
        results.push(h.join().map_err(|_| LoadError::ThreadPanicked)??);
    }
    if results.iter().any(|r| r.window_cut) {
        return Err(LoadError::Interrupted(Phase::Window { rate }));
    }
    Ok(merge(plan, rate, results))
}

fn merge(plan: &LoadPlan, rate: f64, results: Vec<ThreadResult>) -> RateResult {
    let mut out = RateResult {
        rate,
        window: plan.duration,
        offered: 0,
        sent: 0,
        completed: 0,
        unsent: 0,
        timeouts: 0,
        non_2xx: 0,
        socket_errors: SocketErrors::default(),
        statuses: BTreeMap::new(),
        responses_in_window: 0,
        latency: LatencyHistogram::new(),
        service: LatencyHistogram::new(),
        send_lag: LatencyHistogram::new(),
        per_kind: if plan.targets.kinds.len() > 1 {
            plan.targets
                .kinds
                .iter()
                .map(|k| KindResult {
                    name: k.name.clone(),
                    ..KindResult::default()
                })
                .collect()
        } else {
            Vec::new()
        },
        reconnects: 0,
        client_cpu: Duration::ZERO,
        requests_total: 0,
        first_error: None,
        allow_non_2xx: plan.allow_errors,
    };
    for r in results {
        out.offered += r.offered;
        out.sent += r.sent;
        out.completed += r.completed;
        out.unsent += r.unsent;
        out.timeouts += r.timeouts;
        out.non_2xx += r.non_2xx;
        out.socket_errors.add(&r.socket);
        for (status, n) in r.statuses {
            *out.statuses.entry(status).or_default() += n;
        }
        out.responses_in_window += r.responses_in_window;
        out.latency.merge(&r.latency);
        out.service.merge(&r.service);
        out.send_lag.merge(&r.send_lag);
        for (k, theirs) in out.per_kind.iter_mut().zip(&r.per_kind) {
            k.add(theirs);
        }
        out.reconnects += r.reconnects;
        out.client_cpu += r.cpu;
        out.requests_total += r.requests_total;
        if out.first_error.is_none() {
            out.first_error = r.first_error;
        }
    }
    out
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_follow_the_weights() {
        assert_eq!(split_connections(4, &[1]), vec![4]);
        assert_eq!(split_connections(10, &[1, 1]), vec![5, 5]);
        assert_eq!(split_connections(10, &[9, 1]), vec![9, 1]);
        assert_eq!(split_connections(3, &[1, 1, 1]), vec![1, 1, 1]);
        assert_eq!(split_connections(7, &[0, 1]), vec![1, 6]);
        for (n, w) in [
            (16, vec![3u64, 1, 1]),
            (5, vec![1, 2]),
            (9, vec![5, 5, 5, 5]),
        ] {
            let s = split_connections(n, &w);
            assert_eq!(s.iter().sum::<usize>(), n);
            assert!(s.iter().all(|&c| c >= 1));
        }
    }
}
