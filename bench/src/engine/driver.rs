//! The rounds of `nocturne bench engine`: starting the servers, taking
//! turns on the io core, timing the round trips, and the report.
//!
//! ```text
//! main thread (unpinned)           spawn engine/<mode> … ─ pause (SIGSTOP)
//!   │                              measure the engine's echo reply size
//!   │                              spawn floor server (that reply size) ─ pause
//!   ▼ pin to the client core
//! round r: for each server (rotated): resume ─ each case (rotated):
//!            warm-up + timed chunk over its keep-alive connection ─ pause
//! throughput: resume the first mode's engine ─ N client threads ─ pause
//! with --net, first: namespace + TAP; engine/<net> spawned inside it; its
//!   external-call/<net> case takes turns in the rounds like the others
//! conns round r: for each conns/<net>/<N> (rotated): resume ─ open N ─
//!            schedule ─ close ─ pause
//! ```
//!
//! Servers are spawned before the client pins itself: a child inherits the
//! spawning thread's CPU mask, and the engine must see every core. The
//! namespace guard is made before any server and dropped after all of
//! them, on success and on every error path.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::hist::LatencyHistogram;
use crate::pin::{allowed_cores, check_cores_against, format_core_list, pin_current_thread};
use crate::report::{CaseResult, Machine, Report};

use super::http::{build_request, server_timing_ns, ClientError, HttpClient};
use super::memory::ServerMemory;
use super::net::{self, ConnsCase, ConnsError, ConnsPlan};
use super::netns::{self, Netns};
use super::server::{write_temp_file, Launch, ServerProcess, StartError};
use super::sys;
use super::{
    EngineSettings, NetStack, PollMode, CHAIN, CONNS_COUNTS, EXTERNAL_CALL, INTERNAL_CALL,
    TCP_ECHO_FLOOR, THROUGHPUT_EXTERNAL, THROUGHPUT_INTERNAL,
};

/// Most internal calls one `ping` request makes (its reply lists them all).
const PING_BATCH: u64 = 10_000;
/// Internal calls per `ping` request in `throughput/internal`.
const THROUGHPUT_PING_CALLS: u64 = 100;
/// How long a server may take to stop on SIGSTOP.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Echo round trips before the engine's reply size is taken.
const REPLY_SIZE_PROBES: usize = 20;
/// What `foo` answers to an input (with `bar`'s answer inside).
const CHAIN_PREFIX: &[u8] = b"From function Foo: From function Bar: ";

/// What one latency case sends and expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LatencyKind {
    /// Any request to the floor server; a 200 with a body of the payload size.
    Floor,
    /// `echo`: the payload back.
    External,
    /// `foo`: the payload wrapped by `bar` and `foo`.
    Chain,
    /// `ping`: internal round trips timed inside the caller.
    Internal,
}

/// One latency case's request and what it measured so far.
struct LatencyCase {
    name: String,
    kind: LatencyKind,
    /// The whole request (not used by `Internal`, whose request varies).
    request: Vec<u8>,
    /// The body a correct answer carries (`External`, `Chain`).
    expected: Vec<u8>,
    latency: LatencyHistogram,
    /// Per timed request with a `Server-Timing` header: the time it
    /// accounts for (inside the engine), and the rest of the round trip
    /// (the client's and the kernel's share).
    inside: LatencyHistogram,
    outside: LatencyHistogram,
    timed_ns: u128,
    errors: u64,
    /// Whole numbers for the report: `status_NNN` (wrong answers by
    /// status), `caller_pid`, `callee_pid` or `callee_workers`.
    counts: BTreeMap<String, u64>,
    /// The server's memory at its last turn.
    memory: Option<ServerMemory>,
}

impl LatencyCase {
    fn new(name: String, kind: LatencyKind, host: &str, payload: &[u8]) -> Self {
        let (path, expected) = match kind {
            LatencyKind::Floor | LatencyKind::External => ("/function/echo", payload.to_vec()),
            LatencyKind::Chain => ("/function/foo", [CHAIN_PREFIX, payload].concat()),
            LatencyKind::Internal => ("/function/ping", Vec::new()),
        };
        Self {
            name,
            kind,
            request: build_request("POST", path, host, payload),
            expected,
            latency: LatencyHistogram::new(),
            inside: LatencyHistogram::new(),
            outside: LatencyHistogram::new(),
            timed_ns: 0,
            errors: 0,
            counts: BTreeMap::new(),
            memory: None,
        }
    }

    fn reply_ok(&self, status: u16, body: &[u8]) -> bool {
        status == 200
            && match self.kind {
                LatencyKind::Floor => body.len() == self.expected.len(),
                _ => body == self.expected,
            }
    }

    fn result(&self) -> CaseResult {
        let ops = if self.timed_ns == 0 {
            0.0
        } else {
            self.latency.len() as f64 * 1e9 / self.timed_ns as f64
        };
        let mut case = CaseResult::from_histogram(&self.name, &self.latency, ops, self.errors);
        for (key, &count) in &self.counts {
            case = case.with_count(key.clone(), count);
        }
        if !self.inside.is_empty() {
            let p50_us = |h: &LatencyHistogram| h.quantile_ns(0.5) as f64 / 1e3;
            case = case
                .with_extra("server_timing_p50_us", p50_us(&self.inside))
                .with_extra("outside_p50_us", p50_us(&self.outside));
        }
        match &self.memory {
            Some(memory) => memory.note_on(case),
            None => case,
        }
    }
}

/// A server with its connection and its latency cases.
struct Slot {
    process: ServerProcess,
    /// `None` for the floor server.
    mode: Option<PollMode>,
    /// The stack of an engine inside the namespace (`--net`).
    net: Option<NetStack>,
    client: Option<HttpClient>,
    cases: Vec<LatencyCase>,
}

impl Slot {
    /// Records the server's memory (and its workers') on every case.
    fn note_memory(&mut self) {
        let mut memory = ServerMemory::of(&self.process);
        if self.mode.is_none() {
            memory = memory.server_only();
        }
        for case in &mut self.cases {
            case.memory = Some(memory);
        }
    }
}

/// Stops the run if a signal asked it to (see [`sys::catch_interrupts`]).
fn check_interrupted() -> anyhow::Result<()> {
    if sys::interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// With `--net`: raises the open-files limit for the `conns` cases and
/// creates the namespace (with its TAP).
fn prepare_net(settings: &EngineSettings) -> anyhow::Result<Option<(Netns, u64)>> {
    if settings.nets.is_empty() {
        return Ok(None);
    }
    let need = net::open_files_needed();
    let limit =
        nocturne_ipc::open_files::raise_open_files_limit(need).context("raising RLIMIT_NOFILE")?;
    if limit.soft < need {
        bail!(
            "--net: the conns/<net>/{} cases need {need} open files (the client's connections, \
             and as many in the kernel-TCP engine, which inherits the limit), but the hard \
             limit is {}: raise it (ulimit -Hn {need}, as root) first",
            CONNS_COUNTS.iter().max().unwrap_or(&0),
            limit.hard
        );
    }
    if limit.raised() {
        eprintln!(
            "nocturne bench engine: raised the open-files limit from {} to {} (hard {})",
            limit.before, limit.soft, limit.hard
        );
    }
    for name in netns::stale() {
        eprintln!(
            "nocturne bench engine: note: network namespace {name} was left by a run that was \
             killed; remove it with `ip netns del {name}`"
        );
    }
    let ns = net::create_namespace(&settings.nets).context(
        "--net: cannot set up the benchmark's network namespace (this needs root and iproute2)",
    )?;
    eprintln!(
        "nocturne bench engine: network namespace {}{}",
        ns.name(),
        if settings.nets.contains(&NetStack::Smoltcp) {
            format!(" with TAP {} ({})", net::TAP, net::TAP_KERNEL_CIDR)
        } else {
            String::new()
        }
    );
    Ok(Some((ns, limit.soft)))
}

/// Where a signal stopped `bench engine`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnginePhase {
    /// Starting the servers (or the namespace): nothing was measured.
    Starting,
    /// Latency round `round` (from 1) of `rounds`: every latency case has
    /// the rounds before it, and part of this one.
    Latency {
        /// The round in progress.
        round: usize,
        /// All rounds.
        rounds: usize,
    },
    /// The throughput, overload or soak case of this name, left out.
    Case(&'static str),
    /// `conns` round `round` (from 1) of `rounds`.
    Conns {
        /// The round in progress.
        round: usize,
        /// All rounds.
        rounds: usize,
    },
}

impl std::fmt::Display for EnginePhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::Starting => f.write_str("while starting the servers"),
            Self::Latency { round, rounds } => {
                write!(f, "in latency round {round} of {rounds}")
            }
            Self::Case(name) => write!(f, "during the {name} case, which is left out"),
            Self::Conns { round, rounds } => write!(f, "in conns round {round} of {rounds}"),
        }
    }
}

/// What `bench engine` measured: every case, or with `interrupted`, the
/// ones that had samples when a signal stopped it (the phase is also in
/// the report's `machine.modes.interrupted`).
pub struct EngineRun {
    /// The report of what was measured.
    pub report: Report,
    /// Where a signal stopped the run; `None` for a whole run.
    pub interrupted: Option<EnginePhase>,
}

/// What the run has measured so far (all of it, once it ends). Holds the
/// server guards: dropping it stops every server and removes its files.
struct Measured {
    slots: Vec<Slot>,
    reply_bytes: usize,
    machine: Option<Machine>,
    throughput: Vec<(ThroughputKind, ThroughputTally, ServerMemory)>,
    overload: Option<CaseResult>,
    soak: Option<CaseResult>,
    conns: Option<(Vec<ConnsCase>, ConnsPlan)>,
    phase: EnginePhase,
}

/// Runs every case and returns the report; a signal caught by
/// `sys::catch_interrupts` (the command installs it) stops it early with what was measured (see
/// [`EngineRun`]). Either way every server is stopped and the namespace
/// removed before it returns.
pub fn run_engine(settings: &EngineSettings) -> anyhow::Result<EngineRun> {
    let allowed = allowed_cores().context("reading this process's allowed cores")?;
    let mut cores = vec![settings.client_core, settings.io_core];
    cores.extend(&settings.client_cores);
    cores.extend(&settings.worker_cores);
    check_cores_against(&cores, &allowed)
        .context("--client-core / --client-cores / --io-core / --worker-cores")?;
    let exe = std::env::current_exe().context("cannot locate the nocturne binary")?;
    let payload = vec![b'p'; settings.payload];
    // Made before any server, so dropped after every one of them.
    let net_bed = prepare_net(settings)?;
    let mut measured = Measured {
        slots: Vec::new(),
        reply_bytes: 0,
        machine: None,
        throughput: Vec::new(),
        overload: None,
        soak: None,
        conns: None,
        phase: EnginePhase::Starting,
    };
    let interrupted = match measure(settings, &exe, &payload, net_bed.as_ref(), &mut measured) {
        Ok(()) => None,
        // Whatever stopped the run then (a read cut short by EINTR, or a
        // server that took the same Ctrl-C) was the interruption.
        Err(_) if sys::interrupted() => Some(measured.phase),
        // `measured` and then `net_bed` drop: servers, then namespace.
        Err(e) => return Err(e),
    };
    let report = measured.report(settings, net_bed.as_ref(), interrupted);
    for slot in &mut measured.slots {
        // Our end closes first, so no client socket outlives its server.
        slot.client = None;
        let status = slot.process.shutdown(super::server::SHUTDOWN_GRACE)?;
        if slot.mode.is_some() && !status.success() && interrupted.is_none() {
            eprintln!(
                "nocturne bench engine: warning: {} ended with {status}",
                slot.process.name()
            );
        }
    }
    drop(measured);
    drop(net_bed);
    Ok(EngineRun {
        report,
        interrupted,
    })
}

impl Measured {
    /// The report of every case with samples (all of them after a whole
    /// run), in the run's case order.
    fn report(
        &mut self,
        settings: &EngineSettings,
        net_bed: Option<&(Netns, u64)>,
        interrupted: Option<EnginePhase>,
    ) -> Report {
        let mut by_name: BTreeMap<String, CaseResult> = BTreeMap::new();
        for slot in &self.slots {
            for case in &slot.cases {
                by_name.insert(case.name.clone(), case.result());
            }
        }
        for (kind, tally, memory) in &self.throughput {
            let case = memory.note_on(tally.result(*kind, settings));
            by_name.insert(kind.name().to_owned(), case);
        }
        for case in [&self.overload, &self.soak].into_iter().flatten() {
            by_name.insert(case.name.clone(), case.clone());
        }
        if let Some((cases, plan)) = &self.conns {
            for case in cases {
                by_name.insert(case.name.clone(), case.result(plan));
            }
        }
        let cases = settings
            .case_names()
            .into_iter()
            .filter_map(|name| by_name.remove(&name))
            // A case a signal came before has nothing to say.
            .filter(|case| interrupted.is_none() || case.samples > 0 || case.errors > 0)
            .collect();
        let mut machine = self
            .machine
            .take()
            .unwrap_or_else(|| self.probe_machine(settings, net_bed));
        if let Some(phase) = interrupted {
            machine
                .modes
                .insert("interrupted".to_owned(), phase.to_string());
        }
        Report::new("engine", machine, cases)
    }

    /// The machine and the settings, probed while this process may still
    /// use every core (before the client pins itself).
    fn probe_machine(&self, settings: &EngineSettings, net_bed: Option<&(Netns, u64)>) -> Machine {
        let mut modes = modes_map(settings, self.reply_bytes, &self.slots);
        if let Some((ns, open_files)) = net_bed {
            modes.extend(net_modes(settings, ns, *open_files, &self.slots));
        }
        Machine::probe(
            BTreeMap::from([
                ("client".into(), vec![settings.client_core]),
                ("throughput_clients".into(), settings.client_cores.clone()),
                ("io".into(), vec![settings.io_core]),
                ("workers".into(), settings.worker_cores.clone()),
            ]),
            modes,
        )
    }
}

/// The run itself, into `m`; `m.phase` says where it is.
fn measure(
    settings: &EngineSettings,
    exe: &Path,
    payload: &[u8],
    net_bed: Option<&(Netns, u64)>,
    m: &mut Measured,
) -> anyhow::Result<()> {
    // Spawn every server before pinning: children inherit the mask.
    for &mode in &settings.modes {
        check_interrupted()?;
        let mut engine =
            ServerProcess::start(engine_launch(exe, EnginePlace::Host(mode), settings)?)?;
        eprintln!(
            "nocturne bench engine: {} pid {} on http://{}",
            engine.name(),
            engine.pid(),
            engine.addr()
        );
        engine.pause(PAUSE_TIMEOUT)?;
        let host = engine.addr().to_string();
        let mode_name = mode.as_str();
        let cases = [
            (EXTERNAL_CALL, LatencyKind::External),
            (CHAIN, LatencyKind::Chain),
            (INTERNAL_CALL, LatencyKind::Internal),
        ]
        .into_iter()
        .map(|(prefix, kind)| {
            LatencyCase::new(format!("{prefix}/{mode_name}"), kind, &host, payload)
        })
        .collect();
        m.slots.push(Slot {
            process: engine,
            mode: Some(mode),
            net: None,
            client: None,
            cases,
        });
    }
    let reply_bytes = engine_reply_size(&mut m.slots[0], payload, settings.timeout)?;
    m.reply_bytes = reply_bytes;
    check_interrupted()?;
    let mut floor = ServerProcess::start(floor_launch(exe, settings, reply_bytes))?;
    eprintln!(
        "nocturne bench engine: {} pid {} on http://{} ({reply_bytes}-byte replies, as the engine's)",
        floor.name(),
        floor.pid(),
        floor.addr()
    );
    floor.pause(PAUSE_TIMEOUT)?;
    let floor_host = floor.addr().to_string();
    m.slots.insert(
        0,
        Slot {
            process: floor,
            mode: None,
            net: None,
            client: None,
            cases: vec![LatencyCase::new(
                TCP_ECHO_FLOOR.into(),
                LatencyKind::Floor,
                &floor_host,
                payload,
            )],
        },
    );

    // The engines inside the namespace, after the others (slot 1 stays
    // the first mode's engine).
    if let Some((ns, _)) = net_bed {
        for &stack in &settings.nets {
            check_interrupted()?;
            let mut engine =
                ServerProcess::start(engine_launch(exe, EnginePlace::Netns(ns, stack), settings)?)?;
            eprintln!(
                "nocturne bench engine: {} pid {} on http://{} in namespace {}",
                engine.name(),
                engine.pid(),
                engine.addr(),
                ns.name()
            );
            engine.pause(PAUSE_TIMEOUT)?;
            let case = LatencyCase::new(
                format!("{EXTERNAL_CALL}/{}", stack.as_str()),
                LatencyKind::External,
                &engine.addr().to_string(),
                payload,
            );
            m.slots.push(Slot {
                process: engine,
                mode: Some(PollMode::Spin),
                net: Some(stack),
                client: None,
                cases: vec![case],
            });
        }
    }

    // Probe before pinning: the probe records the cores this process may use.
    m.machine = Some(m.probe_machine(settings, net_bed));
    pin_current_thread(settings.client_core).context("pinning the client")?;
    eprintln!(
        "nocturne bench engine: client on core {}, io core {}, worker cores {}; \
         {} latency cases x {} rounds x ({} warm-up + {} samples)",
        settings.client_core,
        settings.io_core,
        format_core_list(&settings.worker_cores),
        m.slots.iter().map(|s| s.cases.len()).sum::<usize>(),
        settings.rounds,
        settings.warmup,
        settings.samples
    );
    let started = Instant::now();
    let rounds = settings.rounds as usize;
    for round in 0..rounds {
        m.phase = EnginePhase::Latency {
            round: round + 1,
            rounds,
        };
        for k in 0..m.slots.len() {
            let index = (k + round) % m.slots.len();
            run_turn(&mut m.slots[index], round, settings)?;
        }
    }
    eprintln!(
        "nocturne bench engine: latency rounds done in {:.1} s; throughput with {} connections for {:?} each",
        started.elapsed().as_secs_f64(),
        settings.connections,
        settings.duration
    );

    // Throughput on the first mode's engine (slot 0 is the floor).
    let slot = &mut m.slots[1];
    slot.process.resume()?;
    for kind in [ThroughputKind::Internal, ThroughputKind::External] {
        m.phase = EnginePhase::Case(kind.name());
        check_interrupted()?;
        let tally = run_throughput(slot.process.addr(), kind, payload, settings)
            .map_err(|e| server_failure(&mut slot.process, kind.name(), e))?;
        // A window a signal cut short is no measurement of the rate.
        check_interrupted()?;
        m.throughput
            .push((kind, tally, ServerMemory::of(&slot.process)));
    }
    m.phase = EnginePhase::Case(super::soak::OVERLOAD);
    check_interrupted()?;
    let overload = super::soak::run_overload(&slot.process, settings)
        .map_err(|e| server_failure(&mut slot.process, super::soak::OVERLOAD, e))?;
    m.overload = Some(ServerMemory::of(&slot.process).note_on(overload));
    m.phase = EnginePhase::Case(super::soak::SOAK);
    check_interrupted()?;
    let soak = super::soak::run_soak(&slot.process, payload, settings)
        .map_err(|e| server_failure(&mut slot.process, super::soak::SOAK, e))?;
    // The soak's own rss_mb (read when its requests ended) stays.
    m.soak = Some(ServerMemory::of(&slot.process).note_on(soak));
    slot.process.pause(PAUSE_TIMEOUT)?;
    run_conns(m, payload, settings)
}

/// The `conns/<net>/<N>` cases, with `--net`: `rounds` rounds, each giving
/// every case (rotated) a turn against its engine, the others frozen.
fn run_conns(m: &mut Measured, payload: &[u8], settings: &EngineSettings) -> anyhow::Result<()> {
    if settings.nets.is_empty() {
        return Ok(());
    }
    let cases: Vec<ConnsCase> = settings
        .nets
        .iter()
        .flat_map(|&net| CONNS_COUNTS.map(|n| ConnsCase::new(net, n)))
        .collect();
    let slot_of = |slots: &[Slot], net: NetStack| {
        slots
            .iter()
            .position(|s| s.net == Some(net))
            .expect("every --net stack has its engine")
    };
    // One request for every engine: the server does not look at `Host`.
    let request = build_request("POST", "/function/echo", "bench", payload);
    let plan = ConnsPlan::new(
        request,
        payload.to_vec(),
        settings.conns_rate,
        settings.conns_duration,
        settings.rounds,
        settings.timeout,
    );
    eprintln!(
        "nocturne bench engine: conns: {} cases x {} rounds x ({} run-in + {} timed requests \
         at {}/s, round-robin over the case's connections)",
        cases.len(),
        settings.rounds,
        plan.run_in,
        plan.timed,
        plan.rate
    );
    // The external-call connections would count among each case's open
    // ones. Reset rather than FIN: a FIN to a frozen smoltcp engine goes
    // unacknowledged and is retransmitted during other cases' turns.
    for slot in m.slots.iter_mut() {
        if let (Some(_), Some(client)) = (slot.net, slot.client.take()) {
            // A socket that cannot take SO_LINGER is closed normally.
            let _ = client.close_with_reset();
        }
    }
    // Kept in `m` as they fill: a signal leaves the rounds that finished.
    let (cases, plan) = m.conns.insert((cases, plan));
    let slots = &mut m.slots;
    let started = Instant::now();
    let rounds = settings.rounds as usize;
    for round in 0..rounds {
        m.phase = EnginePhase::Conns {
            round: round + 1,
            rounds,
        };
        for k in 0..cases.len() {
            check_interrupted()?;
            let index = (k + round) % cases.len();
            let case = &mut cases[index];
            let at = slot_of(slots, case.net);
            let slot = &mut slots[at];
            slot.process.resume()?;
            match case.run_turn(&slot.process, plan, &sys::interrupted) {
                Ok(()) => {}
                Err(ConnsError::Interrupted) => check_interrupted()?,
                Err(ConnsError::Client(e)) => {
                    let name = case.name.clone();
                    return Err(server_failure(&mut slot.process, &name, e));
                }
            }
            case.memory = Some(ServerMemory::of(&slot.process));
            slot.process.pause(PAUSE_TIMEOUT)?;
        }
    }
    eprintln!(
        "nocturne bench engine: conns rounds done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The `modes` entries of a `--net` run: the namespace, the path each
/// stack's cases take, and the `conns` schedule.
fn net_modes(
    settings: &EngineSettings,
    ns: &Netns,
    open_files: u64,
    slots: &[Slot],
) -> BTreeMap<String, String> {
    let mut modes = BTreeMap::from([
        (
            "nets".to_owned(),
            settings
                .nets
                .iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(","),
        ),
        ("net_namespace".to_owned(), ns.name().to_owned()),
        ("net_poll".to_owned(), PollMode::Spin.as_str().to_owned()),
        (
            "conns_rate_per_s".to_owned(),
            settings.conns_rate.to_string(),
        ),
        (
            "conns_duration_s".to_owned(),
            format!("{:.3}", settings.conns_duration.as_secs_f64()),
        ),
        (
            "conns_client".to_owned(),
            "one blocking client thread, one request in flight, requests round-robin over the \
             case's connections on a fixed schedule, latency from each intended send time"
                .to_owned(),
        ),
        ("open_files_limit".to_owned(), open_files.to_string()),
    ]);
    for slot in slots {
        if let Some(net) = slot.net {
            modes.insert(
                format!("{}{}", net::PATH_KEY_PREFIX, net.as_str()),
                net::path_description(net, &slot.process),
            );
        }
    }
    modes
}

/// The `modes` map of the report: every setting that shapes the numbers.
fn modes_map(
    settings: &EngineSettings,
    reply_bytes: usize,
    slots: &[Slot],
) -> BTreeMap<String, String> {
    let mut modes = BTreeMap::from([
        (
            "modes".to_owned(),
            settings
                .modes
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(","),
        ),
        ("quick".to_owned(), settings.quick.to_string()),
        ("rounds".to_owned(), settings.rounds.to_string()),
        ("samples_per_round".to_owned(), settings.samples.to_string()),
        ("warmup_per_round".to_owned(), settings.warmup.to_string()),
        ("payload_bytes".to_owned(), settings.payload.to_string()),
        ("reply_bytes".to_owned(), reply_bytes.to_string()),
        ("connections".to_owned(), settings.connections.to_string()),
        (
            "throughput_duration_s".to_owned(),
            format!("{:.3}", settings.duration.as_secs_f64()),
        ),
        (
            "throughput_mode".to_owned(),
            settings.modes[0].as_str().to_owned(),
        ),
        ("engine_args".to_owned(), settings.engine_args.join(" ")),
    ]);
    for slot in slots {
        let key = match (slot.net, slot.mode) {
            (Some(net), _) => format!("server_net_{}", net.as_str()),
            (None, Some(mode)) => format!("server_{}", mode.as_str()),
            (None, None) => "server_floor".to_owned(),
        };
        modes.insert(key, slot.process.listening_line().to_owned());
    }
    modes
}

/// The functions every engine of the run serves: the built-ins the cases
/// call, at least one worker each, up to one per throughput connection.
fn engine_config(max_workers: usize) -> String {
    let mut text = String::from("# Written by `nocturne bench engine`.\n");
    for name in ["echo", "foo", "bar", "nop", "whoami", "ping"] {
        text.push_str(&format!(
            "\n[[functions]]\nname = \"{name}\"\nbuiltin = \"{name}\"\n\
             min_workers = 1\nmax_workers = {max_workers}\n"
        ));
    }
    // The overload case's function: one worker, a queue of one.
    text.push_str(&format!(
        "\n[[functions]]\nname = \"{}\"\nbuiltin = \"sleep\"\n\
         min_workers = 1\nmax_workers = 1\nmax_queue = 1\n",
        super::soak::OVERLOAD_FUNCTION
    ));
    text
}

/// Where an engine serves.
#[derive(Clone, Copy)]
enum EnginePlace<'a> {
    /// On this process's loopback, in a poll mode.
    Host(PollMode),
    /// Inside the namespace, on a network stack, spinning.
    Netns(&'a Netns, NetStack),
}

fn engine_launch(
    exe: &Path,
    place: EnginePlace<'_>,
    settings: &EngineSettings,
) -> Result<Launch, StartError> {
    let (name, mut command, mode, netns) = match place {
        EnginePlace::Host(mode) => {
            let mut command = Command::new(exe);
            command.args(["serve", "--listen", "127.0.0.1:0"]);
            (
                format!("engine (poll {})", mode.as_str()),
                command,
                mode,
                None,
            )
        }
        EnginePlace::Netns(ns, net) => (
            format!("engine (net {}, poll spin)", net.as_str()),
            net::serve_command(ns, exe, net),
            PollMode::Spin,
            Some(ns.name().to_owned()),
        ),
    };
    let config = write_temp_file("engine", "toml", &engine_config(settings.connections)).map_err(
        |source| StartError::Spawn {
            name: name.clone(),
            source,
        },
    )?;
    command
        .arg("--config")
        .arg(&config)
        .args(["--poll", mode.as_str()])
        .args(["--io-cores", &settings.io_core.to_string()])
        .args(["--worker-cores", &format_core_list(&settings.worker_cores)])
        .args(&settings.engine_args);
    Ok(Launch {
        name,
        command,
        temp_files: vec![config],
        health_path: Some("/healthz"),
        timeout: settings.timeout,
        netns,
    })
}

fn floor_launch(exe: &Path, settings: &EngineSettings, reply_bytes: usize) -> Launch {
    let mut command = Command::new(exe);
    command
        .args(["bench", "engine-floor-server", "--core"])
        .arg(settings.io_core.to_string())
        .arg("--reply-bytes")
        .arg(reply_bytes.to_string())
        .arg("--body-bytes")
        .arg(settings.payload.to_string());
    Launch {
        name: "tcp-echo-floor server".into(),
        command,
        temp_files: Vec::new(),
        health_path: None,
        timeout: settings.timeout,
        netns: None,
    }
}

/// The size of the engine's answer to the echo request, warm.
fn engine_reply_size(slot: &mut Slot, payload: &[u8], timeout: Duration) -> anyhow::Result<usize> {
    slot.process.resume()?;
    let request = build_request(
        "POST",
        "/function/echo",
        &slot.process.addr().to_string(),
        payload,
    );
    let mut size = 0;
    let probe = slot.process.connect(timeout).and_then(|mut client| {
        for _ in 0..REPLY_SIZE_PROBES {
            let reply = client.round_trip(&request)?;
            if reply.status != 200 || reply.body != payload {
                return Ok(Some((
                    reply.status,
                    String::from_utf8_lossy(reply.body).into_owned(),
                )));
            }
            size = reply.wire_len;
        }
        Ok(None)
    });
    match probe {
        Ok(None) => {}
        Ok(Some((status, body))) => bail!(
            "{}: POST /function/echo answered {status} {body:?}; its log:\n{}",
            slot.process.name(),
            slot.process.log_tail()
        ),
        Err(e) => return Err(server_failure(&mut slot.process, "echo reply size", e)),
    }
    slot.process.pause(PAUSE_TIMEOUT)?;
    Ok(size)
}

/// An error of a case, with the server's state and log.
fn server_failure(
    process: &mut ServerProcess,
    case: &str,
    e: impl Into<anyhow::Error>,
) -> anyhow::Error {
    let e = e.into();
    match process.check_alive() {
        Err(dead) => e.context(format!("{case}: {dead:#}")),
        Ok(()) => e.context(format!(
            "{case} against {} (pid {}); its log:\n{}",
            process.name(),
            process.pid(),
            process.log_tail()
        )),
    }
}

/// One server's turn in a round: resume, run each case's chunk, pause.
fn run_turn(slot: &mut Slot, round: usize, settings: &EngineSettings) -> anyhow::Result<()> {
    check_interrupted()?;
    slot.process.resume()?;
    if slot.client.is_none() {
        let client = slot
            .process
            .connect(settings.timeout)
            .map_err(|e| server_failure(&mut slot.process, "connecting", e))?;
        slot.client = Some(client);
    }
    let count = slot.cases.len();
    for j in 0..count {
        let index = (j + round) % count;
        let client = slot.client.as_mut().expect("connected above");
        let case = &mut slot.cases[index];
        let outcome = match case.kind {
            LatencyKind::Internal => run_internal_chunk(case, client, settings).map(Some),
            _ => run_http_chunk(case, client, settings).map(|()| None),
        };
        let pids = match outcome {
            Ok(pids) => pids,
            Err(e) => {
                let name = case.name.clone();
                return Err(server_failure(&mut slot.process, &name, e));
            }
        };
        if let Some(caller) = pids {
            check_call_pids(&mut slot.cases[index], &slot.process, caller);
        }
    }
    slot.note_memory();
    slot.process.pause(PAUSE_TIMEOUT)
}

/// Warm-up, then timed round trips of the case's fixed request.
fn run_http_chunk(
    case: &mut LatencyCase,
    client: &mut HttpClient,
    settings: &EngineSettings,
) -> Result<(), ClientError> {
    for i in 0..settings.warmup + settings.samples {
        if sys::interrupted() {
            break;
        }
        let start = Instant::now();
        let reply = client.round_trip(&case.request)?;
        let elapsed = start.elapsed();
        let (status, body) = (reply.status, reply.body);
        let ok = case.reply_ok(status, body);
        // The floor's canned reply copies the engine's headers (for the
        // same size on the wire), Server-Timing too: not a measurement.
        let inside = (case.kind != LatencyKind::Floor)
            .then(|| server_timing_ns(reply.head))
            .flatten();
        if !ok {
            case.errors += 1;
            if status != 200 {
                // Which errors (503 overloaded, 504 deadline…) is the first clue.
                *case.counts.entry(format!("status_{status}")).or_default() += 1;
            }
        } else if i >= settings.warmup {
            case.latency.record(elapsed);
            case.timed_ns += elapsed.as_nanos();
            if let Some(inside) = inside {
                case.inside.record_ns(inside);
                let total = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
                case.outside.record_ns(total.saturating_sub(inside));
            }
        }
    }
    Ok(())
}

/// What `ping` answers.
#[derive(Debug, serde::Deserialize)]
struct PingReply {
    caller_pid: u32,
    // Its `callee_pid` is `whoami`'s worker, not `nop`'s: see `check_call_pids`.
    samples_ns: Vec<u64>,
}

/// Calls `ping?n=N` once; `Ok(None)` when the answer is not a good one.
fn ping(client: &mut HttpClient, host: &str, calls: u64) -> Result<Option<PingReply>, ClientError> {
    let request = build_request("POST", &format!("/function/ping?n={calls}"), host, b"");
    let reply = client.round_trip(&request)?;
    if reply.status != 200 {
        return Ok(None);
    }
    Ok(serde_json::from_slice::<PingReply>(reply.body)
        .ok()
        .filter(|p| p.samples_ns.len() as u64 == calls))
}

/// One warm-up `ping`, then `ping`s of up to [`PING_BATCH`] calls until
/// the chunk's samples are in; returns the caller's pid.
fn run_internal_chunk(
    case: &mut LatencyCase,
    client: &mut HttpClient,
    settings: &EngineSettings,
) -> Result<u32, ClientError> {
    let host = "bench";
    let mut caller = 0;
    if settings.warmup > 0 {
        match ping(client, host, settings.warmup.min(PING_BATCH))? {
            Some(reply) => caller = reply.caller_pid,
            None => case.errors += 1,
        }
    }
    let mut remaining = settings.samples;
    while remaining > 0 {
        let calls = remaining.min(PING_BATCH);
        remaining -= calls;
        let Some(reply) = ping(client, host, calls)? else {
            case.errors += 1;
            continue;
        };
        caller = reply.caller_pid;
        for &ns in &reply.samples_ns {
            case.latency.record_ns(ns);
            case.timed_ns += u128::from(ns);
        }
    }
    Ok(caller)
}

/// Names the processes on both ends of the internal calls: the caller is
/// the `ping` worker that answered (it must be one of this engine's), the
/// callee the engine's `nop` worker (reported when there is exactly one).
fn check_call_pids(case: &mut LatencyCase, process: &ServerProcess, caller: u32) {
    let workers = process.children();
    let of = |f: &str| {
        workers
            .iter()
            .filter(|w| w.worker_function() == Some(f))
            .map(|w| w.pid)
            .collect::<Vec<_>>()
    };
    let (pings, nops) = (of("ping"), of("nop"));
    if !pings.contains(&caller) || nops.contains(&caller) {
        case.errors += 1;
    }
    case.counts.insert("caller_pid".into(), u64::from(caller));
    match nops[..] {
        [callee] => {
            case.counts.insert("callee_pid".into(), u64::from(callee));
        }
        _ => {
            case.counts.remove("callee_pid");
            case.counts
                .insert("callee_workers".into(), nops.len() as u64);
        }
    }
}

/// The throughput cases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ThroughputKind {
    /// `ping` requests; an op is one internal call.
    Internal,
    /// `echo` requests; an op is one request.
    External,
}

impl ThroughputKind {
    fn name(self) -> &'static str {
        match self {
            ThroughputKind::Internal => THROUGHPUT_INTERNAL,
            ThroughputKind::External => THROUGHPUT_EXTERNAL,
        }
    }
}

/// What the client threads of a throughput case measured.
#[derive(Default)]
struct ThroughputTally {
    latency: LatencyHistogram,
    ops: u64,
    errors: u64,
}

impl ThroughputTally {
    fn merge(&mut self, other: ThroughputTally) {
        self.latency.merge(&other.latency);
        self.ops += other.ops;
        self.errors += other.errors;
    }

    fn result(&self, kind: ThroughputKind, settings: &EngineSettings) -> CaseResult {
        let ops_per_s = self.ops as f64 / settings.duration.as_secs_f64();
        let mut case =
            CaseResult::from_histogram(kind.name(), &self.latency, ops_per_s, self.errors)
                .with_count("connections", settings.connections as u64);
        if kind == ThroughputKind::Internal {
            case = case.with_count("calls_per_request", THROUGHPUT_PING_CALLS);
        }
        case
    }
}

/// Throughput client thread `i` is named this and `i` (15 bytes at most
/// for up to [`super::MAX_CONNECTIONS`] threads: the kernel's limit).
const THROUGHPUT_CLIENT_THREAD: &str = "throughput-";

/// `settings.connections` closed-loop clients, each on its own thread and
/// connection (pinned over the throughput client cores in turn), run until
/// the measuring window ends; what completes inside the window counts.
fn run_throughput(
    addr: std::net::SocketAddr,
    kind: ThroughputKind,
    payload: &[u8],
    settings: &EngineSettings,
) -> anyhow::Result<ThroughputTally> {
    // The run-in lets the engine scale its pools up before the window.
    let window_start = Instant::now() + settings.throughput_warmup;
    let window_end = window_start + settings.duration;
    let host = addr.to_string();
    let request = match kind {
        ThroughputKind::External => build_request("POST", "/function/echo", &host, payload),
        ThroughputKind::Internal => build_request(
            "POST",
            &format!("/function/ping?n={THROUGHPUT_PING_CALLS}"),
            &host,
            b"",
        ),
    };
    let results: Vec<anyhow::Result<ThroughputTally>> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..settings.connections)
            .map(|i| {
                let request = &request;
                let core = settings.client_cores[i % settings.client_cores.len()];
                let run_client = move || -> anyhow::Result<ThroughputTally> {
                    pin_current_thread(core)?;
                    let mut client = HttpClient::connect(addr, settings.timeout)?;
                    let mut tally = ThroughputTally::default();
                    loop {
                        let start = Instant::now();
                        // Ctrl-C ends the window early (the caller then
                        // drops the case).
                        if start >= window_end || sys::interrupted() {
                            return Ok(tally);
                        }
                        let reply = client.round_trip(request)?;
                        let done = Instant::now();
                        let counted = done >= window_start && done <= window_end;
                        match kind {
                            ThroughputKind::External => {
                                let ok = reply.status == 200 && reply.body == payload;
                                if !ok {
                                    tally.errors += 1;
                                } else if counted {
                                    tally.latency.record(done - start);
                                    tally.ops += 1;
                                }
                            }
                            ThroughputKind::Internal => {
                                let parsed = (reply.status == 200)
                                    .then(|| serde_json::from_slice::<PingReply>(reply.body).ok())
                                    .flatten()
                                    .filter(|p| p.samples_ns.len() as u64 == THROUGHPUT_PING_CALLS);
                                match parsed {
                                    None => tally.errors += 1,
                                    Some(p) if counted => {
                                        for &ns in &p.samples_ns {
                                            tally.latency.record_ns(ns);
                                        }
                                        tally.ops += THROUGHPUT_PING_CALLS;
                                    }
                                    Some(_) => {}
                                }
                            }
                        }
                    }
                };
                // Named, so that a test can find the thread in /proc.
                std::thread::Builder::new()
                    .name(format!("{THROUGHPUT_CLIENT_THREAD}{i}"))
                    .spawn_scoped(scope, run_client)
            })
            .collect();
        threads
            .into_iter()
            .map(|t| match t.map(|t| t.join()) {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(anyhow::anyhow!("a client thread panicked")),
                Err(e) => Err(anyhow::Error::new(e).context("starting a client thread")),
            })
            .collect()
    });
    let mut total = ThroughputTally::default();
    for result in results {
        total.merge(result?);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_config_serves_every_function_the_cases_call() {
        let text = engine_config(8);
        for name in ["echo", "foo", "bar", "nop", "whoami", "ping"] {
            assert!(
                text.contains(&format!("name = \"{name}\"\nbuiltin = \"{name}\"")),
                "{name}"
            );
        }
        assert_eq!(text.matches("max_workers = 8").count(), 6);
    }

    #[test]
    fn replies_are_checked_per_kind() {
        let payload = b"0123";
        let external = LatencyCase::new("e".into(), LatencyKind::External, "h", payload);
        assert!(external.reply_ok(200, payload));
        assert!(!external.reply_ok(200, b"0124"));
        assert!(!external.reply_ok(503, payload));
        let chain = LatencyCase::new("c".into(), LatencyKind::Chain, "h", payload);
        assert!(chain.reply_ok(200, b"From function Foo: From function Bar: 0123"));
        assert!(!chain.reply_ok(200, payload));
        let floor = LatencyCase::new("f".into(), LatencyKind::Floor, "h", payload);
        assert!(floor.reply_ok(200, b"ffff"));
        assert!(!floor.reply_ok(200, b"fff"));
        assert!(chain
            .request
            .starts_with(b"POST /function/foo HTTP/1.1\r\n"));
        assert!(external.request.ends_with(b"\r\n\r\n0123"));
    }

    #[test]
    fn ping_replies_parse() {
        let p: PingReply =
            serde_json::from_str(r#"{"caller_pid":5,"callee_pid":6,"samples_ns":[1,2,3]}"#)
                .unwrap();
        assert_eq!((p.caller_pid, p.samples_ns.len()), (5, 3));
        assert!(serde_json::from_str::<PingReply>(r#"{"caller_pid":5}"#).is_err());
    }

    #[test]
    fn a_case_result_carries_its_percentiles_rate_and_extras() {
        let mut case = LatencyCase::new("x".into(), LatencyKind::External, "h", b"");
        let r = case.result();
        assert_eq!((r.samples, r.ops_per_s), (0, 0.0));
        for us in 1..=100u64 {
            case.latency.record_ns(us * 1000);
            case.timed_ns += u128::from(us * 1000);
        }
        case.errors = 2;
        case.counts.insert("status_503".into(), 2);
        case.memory = Some(ServerMemory {
            rss_mb: 3.5,
            workers: Some((4, 8.0)),
        });
        let r = case.result();
        assert_eq!((r.name.as_str(), r.samples, r.errors), ("x", 100, 2));
        assert!((r.p50_us - 50.0).abs() < 0.1, "{r:?}");
        // 100 round trips in 5050 µs.
        assert!((r.ops_per_s - 100.0 / 5050e-6).abs() < 1.0, "{r:?}");
        assert_eq!(r.extra["rss_mb"], 3.5);
        // Counts are JSON integers; measurements stay floats.
        let json = serde_json::to_value(&r).unwrap();
        for count in ["status_503", "workers"] {
            assert!(json[count].is_u64(), "{count}: {json}");
        }
        assert_eq!(json["workers"], 4);
        assert!(json["rss_mb"].is_f64(), "{json}");
    }
}
