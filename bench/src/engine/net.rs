//! `bench engine --net`: the engines that serve inside the run's network
//! namespace, one per network stack, and the open-loop client of the
//! `conns/<net>/<N>` cases.
//!
//! ```text
//!  namespace nct-bench-<pid>-<n>
//!  ┌─────────────────────────────────────────────────────────────────────┐
//!  │ client sockets ── lo ──────────────────▶ engine --net kernel        │
//!  │   (kernel TCP)                            (127.0.0.1:PORT)          │
//!  │                └─ nct0 192.0.2.1 ═TAP═▶ engine --net smoltcp        │
//!  │                                           (192.0.2.2:8080)          │
//!  └─────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! Both engines spin (`--poll spin`) on the io core and take turns with the
//! other servers of the run; the client is the same blocking one as every
//! other case, its sockets created inside the namespace. The kernel-TCP
//! engine runs in the namespace too and is reached over its loopback, so
//! both stacks serve a kernel client on the same host: what differs is the
//! server's stack and, for smoltcp, the TAP hop in between.
//!
//! A `conns` turn opens N keep-alive connections, sends one request on
//! each (so the server has seen every one), then sends requests
//! round-robin over them on a fixed schedule (`--conns-rate` in all) and
//! times each from its *intended* send time: a reply that comes late
//! delays the requests after it, and that delay counts in their latency
//! (coordinated omission corrected, as in wrk2). One request is in flight
//! at a time. The turn ends by closing every connection with a reset, so
//! only that case's N connections are open while it is measured and
//! thousands of closes leave no TIME-WAIT entries behind.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::hist::LatencyHistogram;
use crate::report::CaseResult;

use super::http::{ClientError, HttpClient};
use super::memory::ServerMemory;
use super::netns::{tcp_retransmits, Netns, NetnsError};
use super::server::ServerProcess;
use super::{conns_case_name, NetStack, CONNS_COUNTS};

/// The TAP the smoltcp engine serves on.
pub const TAP: &str = "nct0";
/// The TAP's kernel side.
pub const TAP_KERNEL_CIDR: &str = "192.0.2.1/24";
/// The smoltcp engine's own address (`serve --ip`).
pub const SMOLTCP_CIDR: &str = "192.0.2.2/24";
/// Where the smoltcp engine listens (`serve --listen`; it answers on
/// [`SMOLTCP_CIDR`]'s address).
pub const SMOLTCP_LISTEN: &str = "0.0.0.0:8080";
/// Where the kernel-TCP engine listens inside the namespace.
pub const KERNEL_LISTEN: &str = "127.0.0.1:0";
/// Key prefix, in the report's `machine.modes`, of the line saying which
/// path each stack's cases take (`net_path_kernel`, `net_path_smoltcp`).
pub const PATH_KEY_PREFIX: &str = "net_path_";
/// Untimed run-in at the start of each `conns` turn (on the schedule).
pub const CONNS_RUN_IN: Duration = Duration::from_millis(50);
/// A sleep towards the next send stops this long before it and the client
/// spins the rest of the way: a sleep overshoots by tens of µs (the
/// default timer slack is 50 µs). The spin does not yield: on a busy core
/// a yield can hand the core away for a whole time slice (milliseconds),
/// and nothing of the benchmark waits for the client's core meanwhile
/// (the previous reply is in, the next request not yet sent).
const SPIN_MARGIN: Duration = Duration::from_micros(100);

/// File descriptors a run with `--net` needs: a `conns` case's
/// connections at once in this process, and as many in the kernel-TCP
/// engine (which inherits this process's limit), with room for the rest.
pub fn open_files_needed() -> u64 {
    let most = CONNS_COUNTS.iter().copied().max().unwrap_or(0) as u64;
    2 * most + 256
}

/// Creates the run's namespace, with the smoltcp engine's TAP if `nets`
/// has smoltcp. The namespace is removed again on any error.
pub fn create_namespace(nets: &[NetStack]) -> Result<Netns, NetnsError> {
    let ns = Netns::create()?;
    if nets.contains(&NetStack::Smoltcp) {
        ns.add_tap(TAP, TAP_KERNEL_CIDR)?;
    }
    Ok(ns)
}

/// The `serve` arguments that put an engine on `net` inside the namespace.
pub fn serve_args(net: NetStack) -> Vec<&'static str> {
    match net {
        NetStack::Kernel => vec!["--net", "kernel", "--listen", KERNEL_LISTEN],
        NetStack::Smoltcp => vec![
            "--net",
            "smoltcp",
            "--tap",
            TAP,
            "--ip",
            SMOLTCP_CIDR,
            "--listen",
            SMOLTCP_LISTEN,
        ],
    }
}

/// The line that says how the cases of `net` reach their engine.
pub fn path_description(net: NetStack, server: &ServerProcess) -> String {
    let ns = server.netns().unwrap_or("(this process's)");
    match net {
        NetStack::Kernel => format!(
            "kernel TCP over the loopback of namespace {ns}: the client connects to {}",
            server.addr()
        ),
        NetStack::Smoltcp => format!(
            "smoltcp over TAP {TAP} in namespace {ns}: the client's kernel TCP reaches {} \
             through the TAP's kernel side {TAP_KERNEL_CIDR}",
            server.addr()
        ),
    }
}

/// How a `conns` turn runs: what it sends, how fast, how many.
#[derive(Clone, Debug)]
pub struct ConnsPlan {
    /// The whole request (an `echo` POST).
    pub request: Vec<u8>,
    /// The body a correct answer carries.
    pub expected: Vec<u8>,
    /// Requests per second over all connections.
    pub rate: u64,
    /// Untimed requests at the start of each turn, on the schedule.
    pub run_in: u64,
    /// Timed requests per turn.
    pub timed: u64,
    /// Connect, read and write timeout.
    pub timeout: Duration,
}

impl ConnsPlan {
    /// A plan that spreads `duration` of timed requests at `rate` over
    /// `rounds` turns.
    pub fn new(
        request: Vec<u8>,
        expected: Vec<u8>,
        rate: u64,
        duration: Duration,
        rounds: u32,
        timeout: Duration,
    ) -> Self {
        let per_turn = duration.as_secs_f64() / f64::from(rounds.max(1));
        let count = |secs: f64| ((rate as f64 * secs).round() as u64).max(1);
        Self {
            request,
            expected,
            rate,
            run_in: count(CONNS_RUN_IN.as_secs_f64()),
            timed: count(per_turn),
            timeout,
        }
    }

    /// When request `i` of a turn that starts at `start` is due.
    pub fn intended(&self, start: Instant, i: u64) -> Instant {
        let ns = u128::from(i) * 1_000_000_000 / u128::from(self.rate.max(1));
        start + Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

/// One `conns/<net>/<N>` case and what it measured so far.
pub struct ConnsCase {
    /// `conns/<net>/<N>`.
    pub name: String,
    /// The stack of the engine it runs against.
    pub net: NetStack,
    /// Open connections.
    pub connections: usize,
    latency: LatencyHistogram,
    /// How late each timed request left: the client's own share of its
    /// latency (a late wake-up, or the previous reply still outstanding).
    send_lag: LatencyHistogram,
    /// TCP segments the namespace's kernel sockets retransmitted during
    /// the turns (`None` outside a namespace or where it cannot be read).
    retransmits: Option<u64>,
    /// Wall time of the timed parts: first intended send to last reply.
    timed_ns: u128,
    errors: u64,
    /// Statuses of the wrong answers that were not 200 (503, 504…), and
    /// how many of each.
    error_statuses: std::collections::BTreeMap<u16, u64>,
    /// The engine's memory at the last turn, for the report.
    pub memory: Option<ServerMemory>,
}

impl ConnsCase {
    /// An empty case.
    pub fn new(net: NetStack, connections: usize) -> Self {
        Self {
            name: conns_case_name(net, connections),
            net,
            connections,
            latency: LatencyHistogram::new(),
            send_lag: LatencyHistogram::new(),
            retransmits: Some(0),
            timed_ns: 0,
            errors: 0,
            error_statuses: Default::default(),
            memory: None,
        }
    }

    /// One turn against `server` (running): open the connections, one
    /// request on each, the run-in and the timed requests on the schedule,
    /// then close them all. A request that fails at the socket level ends
    /// the turn with the error; a wrong answer counts as an error.
    pub fn run_turn(
        &mut self,
        server: &ServerProcess,
        plan: &ConnsPlan,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<(), ConnsError> {
        let retransmits = || server.netns().and_then(|ns| tcp_retransmits(ns).ok());
        let before = retransmits();
        let mut clients = server
            .connect_many(self.connections, plan.timeout)
            .map_err(ConnsError::Client)?;
        let outcome = self.run_open(&mut clients, plan, interrupted);
        for client in clients {
            // A socket that cannot take SO_LINGER is closed normally.
            let _ = client.close_with_reset();
        }
        self.retransmits = match (self.retransmits, before, retransmits()) {
            (Some(sum), Some(before), Some(after)) => Some(sum + after.saturating_sub(before)),
            _ => None,
        };
        outcome
    }

    fn run_open(
        &mut self,
        clients: &mut [HttpClient],
        plan: &ConnsPlan,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<(), ConnsError> {
        for client in clients.iter_mut() {
            self.exchange(client, plan)?;
        }
        let start = Instant::now() + SPIN_MARGIN;
        let total = plan.run_in + plan.timed;
        let mut timed_from = None;
        let mut last_done = start;
        for i in 0..total {
            if interrupted() {
                return Err(ConnsError::Interrupted);
            }
            let due = plan.intended(start, i);
            wait_until(due);
            let sent = Instant::now();
            let client = &mut clients[(i % clients.len() as u64) as usize];
            let ok = self.exchange(client, plan)?;
            let done = Instant::now();
            if i < plan.run_in {
                continue;
            }
            timed_from.get_or_insert(due);
            last_done = done;
            if ok {
                self.latency.record(done.saturating_duration_since(due));
                self.send_lag.record(sent.saturating_duration_since(due));
            }
        }
        if let Some(first) = timed_from {
            self.timed_ns += last_done.saturating_duration_since(first).as_nanos();
        }
        Ok(())
    }

    /// One round trip on `client`; `Ok(false)` (and an error counted) for
    /// a wrong answer.
    fn exchange(&mut self, client: &mut HttpClient, plan: &ConnsPlan) -> Result<bool, ConnsError> {
        let reply = client
            .round_trip(&plan.request)
            .map_err(ConnsError::Client)?;
        let ok = reply.status == 200 && reply.body == plan.expected.as_slice();
        if !ok {
            self.errors += 1;
            if reply.status != 200 {
                *self.error_statuses.entry(reply.status).or_default() += 1;
            }
        }
        Ok(ok)
    }

    /// The case's report row: percentiles from the intended send times,
    /// the achieved rate, the connections, the offered rate, how late the
    /// client sent (p50, p99 of the send lag) and the namespace's TCP
    /// retransmissions.
    pub fn result(&self, plan: &ConnsPlan) -> CaseResult {
        let ops = if self.timed_ns == 0 {
            0.0
        } else {
            self.latency.len() as f64 * 1e9 / self.timed_ns as f64
        };
        let mut case = CaseResult::from_histogram(&self.name, &self.latency, ops, self.errors)
            .with_count("connections", self.connections as u64)
            .with_extra("offered_per_s", plan.rate as f64);
        for (status, &count) in &self.error_statuses {
            case = case.with_count(format!("status_{status}"), count);
        }
        if let Some(retransmits) = self.retransmits {
            case = case.with_count("tcp_retransmits", retransmits);
        }
        if !self.send_lag.is_empty() {
            let lag = self.send_lag.summary();
            case = case
                .with_extra("send_lag_p50_us", lag.p50_us)
                .with_extra("send_lag_p99_us", lag.p99_us);
        }
        match &self.memory {
            Some(memory) => memory.note_on(case),
            None => case,
        }
    }
}

/// Why a `conns` turn stopped.
#[derive(Debug, thiserror::Error)]
pub enum ConnsError {
    /// Connecting, sending or receiving failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A signal asked the run to stop.
    #[error("interrupted")]
    Interrupted,
}

/// Sleeps until shortly before `due`, then spins up to it (at most
/// [`SPIN_MARGIN`] and the sleep's own early return).
fn wait_until(due: Instant) {
    loop {
        let now = Instant::now();
        if now >= due {
            return;
        }
        let left = due - now;
        if left > SPIN_MARGIN {
            std::thread::sleep(left - SPIN_MARGIN);
        } else {
            std::hint::spin_loop();
        }
    }
}

/// The `serve` command of an engine on `net` inside `ns`.
pub fn serve_command(ns: &Netns, exe: &Path, net: NetStack) -> std::process::Command {
    let mut command = ns.command(exe);
    command.arg("serve").args(serve_args(net));
    command
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    #[test]
    fn a_plan_spreads_its_requests_over_the_rounds_on_a_fixed_schedule() {
        let plan = ConnsPlan::new(
            b"r".to_vec(),
            b"e".to_vec(),
            2000,
            Duration::from_secs(10),
            10,
            Duration::from_secs(1),
        );
        assert_eq!((plan.run_in, plan.timed), (100, 2000));
        let start = Instant::now();
        assert_eq!(plan.intended(start, 0), start);
        assert_eq!(plan.intended(start, 1) - start, Duration::from_micros(500));
        assert_eq!(plan.intended(start, 2000) - start, Duration::from_secs(1));
        // A tiny plan still sends something.
        let tiny = ConnsPlan::new(
            Vec::new(),
            Vec::new(),
            1,
            Duration::from_millis(1),
            5,
            Duration::from_secs(1),
        );
        assert_eq!((tiny.run_in, tiny.timed), (1, 1));
    }

    #[test]
    fn the_namespace_serve_arguments_name_the_stack() {
        assert_eq!(
            serve_args(NetStack::Kernel),
            ["--net", "kernel", "--listen", "127.0.0.1:0"]
        );
        let smoltcp = serve_args(NetStack::Smoltcp).join(" ");
        assert_eq!(
            smoltcp,
            "--net smoltcp --tap nct0 --ip 192.0.2.2/24 --listen 0.0.0.0:8080"
        );
        assert!(open_files_needed() >= 2 * 1024);
    }

    /// An HTTP server thread answering every request on each of its
    /// `conns` connections with `reply`, one connection after another
    /// accepted up front.
    fn canned_server(
        conns: usize,
        reply: &'static [u8],
    ) -> (std::net::SocketAddr, std::thread::JoinHandle<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let thread = std::thread::spawn(move || {
            let mut streams: Vec<_> = (0..conns).map(|_| listener.accept().unwrap().0).collect();
            for s in &streams {
                s.set_nonblocking(true).unwrap();
            }
            let mut served = 0;
            let mut open = conns;
            let mut buf = [0u8; 4096];
            while open > 0 {
                open = 0;
                for s in &mut streams {
                    match s.read(&mut buf) {
                        // Closed by the client (normally or with a reset).
                        Ok(0) => {}
                        Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => {}
                        Err(_) => open += 1,
                        Ok(_) => {
                            served += 1;
                            s.write_all(reply).unwrap();
                            open += 1;
                        }
                    }
                }
                std::thread::yield_now();
            }
            served
        });
        (addr, thread)
    }

    #[test]
    fn a_turn_round_robins_over_its_connections_and_counts_wrong_answers() {
        let good: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";
        let (addr, server) = canned_server(3, good);
        let mut clients: Vec<_> = (0..3)
            .map(|_| HttpClient::connect(addr, Duration::from_secs(10)).unwrap())
            .collect();
        let plan = ConnsPlan {
            request: b"POST /function/echo HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi".to_vec(),
            expected: b"hi".to_vec(),
            rate: 10_000,
            run_in: 2,
            timed: 7,
            timeout: Duration::from_secs(10),
        };
        let mut case = ConnsCase::new(NetStack::Kernel, 3);
        case.run_open(&mut clients, &plan, &|| false).unwrap();
        let r = case.result(&plan);
        assert_eq!((r.samples, r.errors), (7, 0));
        assert_eq!(r.counts["connections"], 3);
        assert_eq!(r.extra["offered_per_s"], 10_000.0);
        assert!(r.ops_per_s > 0.0 && r.p50_us > 0.0, "{r:?}");
        assert!(r.extra["send_lag_p50_us"] <= r.extra["send_lag_p99_us"]);
        // The same answer, expected differently: every one is an error.
        let strict = ConnsPlan {
            expected: b"ho".to_vec(),
            ..plan.clone()
        };
        let mut wrong = ConnsCase::new(NetStack::Kernel, 3);
        wrong.run_open(&mut clients, &strict, &|| false).unwrap();
        let r = wrong.result(&strict);
        assert_eq!((r.samples, r.errors), (0, 3 + 2 + 7));
        assert!(
            !r.counts.keys().any(|k| k.starts_with("status_")),
            "a 200 with the wrong body counts, but has no status to name: {r:?}"
        );
        assert!(
            !r.extra.contains_key("send_lag_p50_us"),
            "no samples, no lag"
        );
        // An interrupted turn stops with a typed error.
        let err = case.run_open(&mut clients, &plan, &|| true).unwrap_err();
        assert!(matches!(err, ConnsError::Interrupted), "{err}");
        for client in clients {
            client.close_with_reset().unwrap();
        }
        // (3 first requests + 9) twice, then the interrupted turn's 3.
        assert_eq!(server.join().unwrap(), 3 + 9 + 12 + 3);
    }

    #[test]
    fn error_answers_are_counted_by_status() {
        let (addr, server) = canned_server(
            2,
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
        );
        let mut clients: Vec<_> = (0..2)
            .map(|_| HttpClient::connect(addr, Duration::from_secs(10)).unwrap())
            .collect();
        let plan = ConnsPlan {
            request: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            expected: Vec::new(),
            rate: 10_000,
            run_in: 1,
            timed: 3,
            timeout: Duration::from_secs(10),
        };
        let mut case = ConnsCase::new(NetStack::Smoltcp, 2);
        case.run_open(&mut clients, &plan, &|| false).unwrap();
        let r = case.result(&plan);
        assert_eq!((r.samples, r.errors), (0, 2 + 1 + 3));
        assert_eq!(r.counts["status_503"], 6, "{r:?}");
        drop(clients);
        assert_eq!(server.join().unwrap(), 6);
    }

    #[test]
    fn a_server_that_closes_ends_the_turn_with_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf);
            // Closes without an answer.
        });
        let mut clients = vec![HttpClient::connect(addr, Duration::from_secs(10)).unwrap()];
        let plan = ConnsPlan::new(
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            Vec::new(),
            1000,
            Duration::from_millis(10),
            1,
            Duration::from_secs(10),
        );
        let mut case = ConnsCase::new(NetStack::Smoltcp, 1);
        let err = case.run_open(&mut clients, &plan, &|| false).unwrap_err();
        assert!(
            matches!(err, ConnsError::Client(ClientError::Closed)),
            "{err}"
        );
        server.join().unwrap();
    }

    #[test]
    fn waiting_never_returns_early() {
        for us in [0u64, 50, 300, 2000] {
            let due = Instant::now() + Duration::from_micros(us);
            wait_until(due);
            assert!(Instant::now() >= due);
        }
    }
}
