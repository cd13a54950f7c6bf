//! Starting and stopping the engine: binding, core-loop threads, signals.
//!
//! The main thread resolves the configuration, binds one `SO_REUSEPORT`
//! listener per core loop (the first one picks the port when it is 0), starts
//! the spawner and one pinned thread per io core, then waits for SIGINT or
//! SIGTERM. On a signal it raises the stop flag, wakes every loop, and joins
//! them; each loop ends its workers.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use nocturne_ipc::channel::{ChannelConfig, WaitPolicy, MAX_ARENA_BYTES};
use nocturne_net::http::{ConnectionLimit, Limits};
use nocturne_net::kernel::{KernelOptions, KernelTransport};
use nocturne_net::{SmoltcpOptions, SmoltcpTransport, Transport};

use crate::config::{Config, FunctionSource, NetBackend, PollMode, WorkerPoll};
use crate::core_loop::{post_offices, CoreLoop, CorePool, LoopContext};
use crate::status::EngineStatus;
use crate::worker::{Spawner, WorkerSpec};

/// Loop `index`'s share of an engine-wide `max_connections` over `loops`
/// (each listener sees only its own connections).
pub(crate) fn connection_share(max_connections: usize, loops: usize, index: usize) -> usize {
    let loops = loops.max(1);
    (max_connections / loops + usize::from(index < max_connections % loops)).max(1)
}

/// Lingering closes a loop allows beside its `connections` open ones: an
/// eighth of them, at least 16 (each is a file descriptor too).
pub(crate) fn lingering_share(connections: usize) -> usize {
    (connections / 8).max(16)
}

/// HTTP limits of core loop `index`. `max_connections` is an engine-wide
/// cap that the loops count against together (`LoopContext::connections`):
/// any loop may hold all of them. Lingering closes get a loop's even share's
/// worth (the open-files budget counts them so).
pub(crate) fn http_limits(config: &Config, index: usize) -> Limits {
    let share = connection_share(config.max_connections, config.io_cores.len(), index);
    Limits {
        max_header_bytes: config.max_header_bytes,
        max_body_bytes: config
            .functions
            .iter()
            .map(|f| f.max_payload)
            .max()
            .unwrap_or(0)
            .max(64 * 1024),
        max_connections: config.max_connections,
        max_lingering: lingering_share(share),
        header_timeout: config.header_timeout,
        idle_timeout: config.keepalive_timeout,
        ..Limits::default()
    }
}

/// The channel a worker of function `f` gets: inline slots for small messages,
/// an arena per direction big enough for the function's largest payload.
pub(crate) fn channel_config(config: &Config, f: usize) -> ChannelConfig {
    // Room for the largest payload plus its prefix: a query string, which
    // is at most a whole request head (`max_header_bytes`), or a content
    // type; 4 KiB for their framing. (`max_payload` alone was not enough: a
    // body at the limit with a long query was refused.) The region is mapped
    // with MAP_POPULATE (no page fault on the first large message), so every
    // arena byte is resident in both processes: one message's worth, not
    // more. A second large message while the first is still unreleased waits
    // (ArenaFull is backpressure, never loss).
    let largest = config.functions[f].max_payload + config.max_header_bytes + 4096;
    // The configuration keeps `largest` within MAX_ARENA_BYTES, a power of 2.
    let arena = largest
        .next_power_of_two()
        .clamp(256 * 1024, MAX_ARENA_BYTES as usize);
    // Few slots: a ring's slots cycle through L1, and docs/ipc.md measures
    // 32 × 256 B within 1.1–1.2× of a raw ping-pong where 256 slots cost 1.6×.
    // A worker needs one slot per call plus one per internal call in flight;
    // anything beyond waits in the slot's backlog.
    ChannelConfig {
        ring_slots: 32,
        slot_size: 256,
        arena_bytes: u32::try_from(arena).unwrap_or(MAX_ARENA_BYTES),
    }
}

/// How workers wait for work, from `--worker-poll` and `--worker-spin-us`.
pub(crate) fn worker_wait(config: &Config) -> WaitPolicy {
    let spin = Duration::from_micros(config.worker_spin_us);
    match config.worker_poll {
        // As documented for `--worker-poll`: spin (on a core of its own) for
        // the budget then park; yield (shared core) for the budget then park;
        // park at once.
        WorkerPoll::Spin => WaitPolicy::Park { spin },
        WorkerPoll::Yield => WaitPolicy::Yield { spin },
        WorkerPoll::Park => WaitPolicy::Park {
            spin: Duration::ZERO,
        },
    }
}

/// What the spawner needs to start a worker of function `f` for loop
/// `loop_index`; `own_core` pins it to one core (spinning workers) instead of
/// the whole worker core set.
pub(crate) fn worker_spec(
    ctx: &LoopContext,
    f: u32,
    loop_index: usize,
    own_core: Option<usize>,
) -> WorkerSpec {
    let config = &ctx.config;
    let fc = &config.functions[f as usize];
    let argv: Vec<OsString> = match &fc.source {
        FunctionSource::Builtin(name) => {
            vec![
                ctx.exe.clone().into_os_string(),
                "worker".into(),
                name.into(),
            ]
        }
        FunctionSource::Command(argv) => argv.iter().map(OsString::from).collect(),
    };
    WorkerSpec {
        function: fc.name.clone(),
        function_id: f,
        argv,
        env: fc.env.iter().map(|(k, v)| (k.into(), v.into())).collect(),
        cores: own_core
            .map(|c| vec![c])
            .or_else(|| config.worker_cores.clone()),
        channel: channel_config(config, f as usize),
        functions: config
            .functions
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name.clone(), i as u32))
            .collect(),
        wait: worker_wait(config),
        // Given by the loop (`LoopState::request_spawn`), which owns the board.
        wake_seat: None,
        handshake_timeout: Duration::from_secs(10),
        worker_index: loop_index as u32,
    }
}

type LoopThreads = (
    Vec<Arc<std::os::fd::OwnedFd>>,
    Vec<std::thread::JoinHandle<()>>,
);

/// Starts one pinned thread per transport (io core), each running a core loop.
fn start_loops<T: Transport + Send + 'static>(
    ctx: &Arc<LoopContext>,
    transports: Vec<T>,
) -> anyhow::Result<LoopThreads> {
    let mut loops = transports
        .into_iter()
        .enumerate()
        .map(|(index, transport)| {
            CoreLoop::new(index, transport, ctx.clone())
                .with_context(|| format!("cannot set up core loop {index}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let wake_fds: Vec<_> = loops.iter().map(CoreLoop::wake_fd).collect();
    // Loops forward calls of functions they have no workers of to loops
    // that have (fewer workers than loops); one loop has them all.
    if loops.len() > 1 {
        for (core_loop, office) in loops.iter_mut().zip(post_offices(&wake_fds)) {
            core_loop.connect(office);
        }
    }
    let mut threads = Vec::new();
    for (index, (core_loop, &core)) in loops.into_iter().zip(&ctx.config.io_cores).enumerate() {
        let thread = std::thread::Builder::new()
            .name(format!("nocturne-io-{core}"))
            .spawn(move || {
                if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                    log::warn!("nocturne: warning: cannot pin core loop {index} to core {core}");
                }
                core_loop.run();
            })
            .context("cannot start a core loop thread")?;
        threads.push(thread);
    }
    Ok((wake_fds, threads))
}

/// A running engine (its core loops run on their own threads).
pub struct Engine {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
    // Workers are children of the spawner's forker thread (PR_SET_PDEATHSIG
    // follows the parent *thread*): it must outlive the loops.
    _spawner: Arc<Spawner>,
    wake_fds: Vec<Arc<std::os::fd::OwnedFd>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Engine {
    /// Binds, starts the core loops and begins starting workers.
    pub fn start(mut config: Config) -> anyhow::Result<Self> {
        let fds = crate::fd_limit::fit(&config).context("cannot read the open-files limit")?;
        let fd_note = crate::fd_limit::describe(&fds, &config);
        config.max_connections = fds.max_connections;
        let config = Arc::new(config);
        let loops = config.io_cores.len();
        let status = Arc::new(EngineStatus::new(
            loops,
            &config
                .functions
                .iter()
                .map(|f| (f.name.clone(), f.min_workers as u32))
                .collect::<Vec<_>>(),
        ));
        let ctx = Arc::new(LoopContext {
            config: config.clone(),
            status,
            spawner: Arc::new(Spawner::start()),
            connections: Arc::new(ConnectionLimit::new(config.max_connections)),
            stop: Arc::new(AtomicBool::new(false)),
            draining: Arc::new(AtomicBool::new(false)),
            exe: std::env::current_exe().context("cannot locate the nocturne binary")?,
            loops,
            spin_cores: match (config.worker_poll, &config.worker_cores) {
                (WorkerPoll::Spin, Some(cores)) => Some(CorePool::new(cores)),
                _ => None,
            },
        });
        // Open every listener (or device queue) before any thread starts, so
        // a bad address fails the start instead of one loop.
        let (addr, wake_fds, threads) = match config.net {
            NetBackend::Kernel => {
                let opts = KernelOptions::default();
                let transports =
                    KernelTransport::bind_group(config.listen, loops, &opts).map_err(|e| {
                        let why = if e.kind() == std::io::ErrorKind::AddrInUse {
                            ": something listens there already (another nocturne?)"
                        } else {
                            ""
                        };
                        anyhow::Error::new(e)
                            .context(format!("cannot listen on {}{why}", config.listen))
                    })?;
                let addr = transports[0].local_addr();
                let (fds, threads) = start_loops(&ctx, transports)?;
                (addr, fds, threads)
            }
            NetBackend::Smoltcp => {
                let sc = config
                    .smoltcp
                    .as_ref()
                    .context("smoltcp settings missing")?;
                let mut opts =
                    SmoltcpOptions::new(sc.device.clone(), sc.address, config.listen.port());
                opts.gateway = sc.gateway;
                opts.queues = loops;
                // The transport's own cap must sit above the HTTP layer's
                // (which any loop may reach), or its resets pre-empt the
                // HTTP 503 a client can read.
                opts.max_connections = config.max_connections + 64;
                let transports = (0..loops)
                    .map(|_| {
                        SmoltcpTransport::open(&opts).with_context(|| {
                            format!(
                                "cannot open {} for the smoltcp stack",
                                sc.device.interface()
                            )
                        })
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let addr = transports[0].local_addr();
                let (fds, threads) = start_loops(&ctx, transports)?;
                (addr, fds, threads)
            }
        };
        log_startup(&config, addr);
        if let Some(note) = fd_note {
            log::warn!("{note}");
        }
        Ok(Self {
            addr,
            stop: ctx.stop.clone(),
            draining: ctx.draining.clone(),
            _spawner: ctx.spawner.clone(),
            wake_fds,
            threads,
        })
    }

    /// The address the engine listens on (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts a graceful shutdown: loops stop accepting, finish their calls
    /// (up to `drain_timeout`) and stop. Returns at once; see [`is_stopped`](Self::is_stopped).
    pub fn begin_drain(&self) {
        // Relaxed: see `stop`.
        self.draining.store(true, Ordering::Relaxed);
        for fd in &self.wake_fds {
            // A loop that cannot be woken still sees the flag on its next turn.
            let _ = crate::sys::signal_eventfd(fd.as_fd());
        }
    }

    /// Whether every core loop has finished.
    pub fn is_stopped(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    /// A core loop that has finished although nobody asked the engine to
    /// stop or drain, if any.
    pub fn stopped_loop(&self) -> Option<usize> {
        // Relaxed: see `stop`; a loop that stops on request may end any time.
        if self.stop.load(Ordering::Relaxed) || self.draining.load(Ordering::Relaxed) {
            return None;
        }
        self.threads.iter().position(|t| t.is_finished())
    }

    /// Stops the other loops after loop `index` ended on its own; returns
    /// why it ended (its panic message).
    pub fn stop_after_loop_died(mut self, index: usize) -> String {
        let dead = self.threads.remove(index);
        let why = match dead.join() {
            Ok(()) => "it returned".to_string(),
            Err(payload) => match payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
            {
                Some(message) => format!("it panicked: {message}"),
                None => "it panicked".to_string(),
            },
        };
        self.stop();
        why
    }

    /// Stops every core loop and waits for them; their workers end with them.
    pub fn stop(self) {
        // Relaxed: the loops only need to see it eventually; the eventfd write
        // that follows wakes any that sleep.
        self.stop.store(true, Ordering::Relaxed);
        for fd in &self.wake_fds {
            // A loop that cannot be woken still sees the flag on its next turn.
            let _ = crate::sys::signal_eventfd(fd.as_fd());
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn log_startup(config: &Config, addr: SocketAddr) {
    let stack = match &config.smoltcp {
        None => "kernel TCP".to_string(),
        Some(sc) => format!("smoltcp on {}", sc.device),
    };
    // Modes as the flags spell them (`--poll adaptive`), so the line can be
    // checked against the command that started the engine.
    log::info!(
        "nocturne: listening on http://{addr} ({stack}; {} core loop{} on cores {:?}, poll {}{}, workers wait {}{}{})",
        config.io_cores.len(),
        if config.io_cores.len() == 1 { "" } else { "s" },
        config.io_cores,
        config.poll.as_str(),
        if config.poll == PollMode::Adaptive && config.io_shares_workers() {
            " (yielding: workers may run on its cores)"
        } else {
            ""
        },
        config.worker_poll.as_str(),
        match &config.worker_cores {
            Some(c) => format!(" on cores {c:?}"),
            None => String::new(),
        },
        if config.delegates_wakes() {
            ", wakes delegated on the shared core"
        } else {
            ""
        }
    );
    for (i, f) in config.functions.iter().enumerate() {
        let source = match &f.source {
            FunctionSource::Builtin(name) => format!("built-in {name}"),
            FunctionSource::Command(argv) => format!("command {argv:?}"),
        };
        let placement = match config.worker_loops(i) {
            Some(cores) => {
                format!(
                    "; the loops of io cores {cores:?} run them, the others forward their calls"
                )
            }
            None => String::new(),
        };
        log::info!(
            "nocturne: function {} ({source}): {}..{} workers{placement}, {} /function/{}",
            f.name,
            f.min_workers,
            f.max_workers,
            f.methods(),
            f.name
        );
    }
}

/// `nocturne serve`: runs until SIGINT or SIGTERM.
pub fn serve(args: crate::cli::ServeArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    // Before any thread starts: threads inherit the mask, and one that did
    // not block SIGTERM could take it and die of it, the whole engine with
    // it, undrained (the log writer did, in 3 of 8 SIGSTOP/SIGCONT/SIGTERM
    // tries).
    crate::sys::block_shutdown_signals().context("cannot block shutdown signals")?;
    keep_helpers_off_spinning_cores(&config);
    crate::logger::install();
    crate::cli::print_config_warnings(&config);
    crate::cli::warn_about_unknown_env();
    let engine = Engine::start(config)?;
    let sig = loop {
        if let Some(sig) = crate::sys::wait_for_signal(Some(LOOP_CHECK_PERIOD)) {
            break sig;
        }
        if let Some(index) = engine.stopped_loop() {
            // A core loop that died (a bug: it panicked) serves nothing;
            // an engine that went on without it would look alive to its
            // supervisor. Stop, say why, exit non-zero.
            let why = engine.stop_after_loop_died(index);
            crate::logger::flush(LOG_FLUSH_AT_EXIT);
            anyhow::bail!("core loop {index} stopped: {why}");
        }
    };
    log::info!("nocturne: signal {sig} received: draining (a second signal stops at once)");
    engine.begin_drain();
    while !engine.is_stopped() {
        if let Some(sig) = crate::sys::wait_for_signal(Some(Duration::from_millis(20))) {
            log::info!("nocturne: second signal {sig}: stopping now");
            crate::logger::flush(LOG_FLUSH_AT_EXIT);
            // Workers die with us (PR_SET_PDEATHSIG, and EOF on their control sockets).
            std::process::exit(130);
        }
    }
    engine.stop();
    log::info!("nocturne: stopped");
    crate::logger::flush(LOG_FLUSH_AT_EXIT);
    Ok(())
}

/// Under `--poll spin` each io core belongs to its loop alone: the engine's
/// other threads (this one, the log writer, the spawners and log forwarder
/// it starts, the workers those start unless they are pinned) run on the
/// other allowed cores. Each loop pins itself to its core when it starts.
fn keep_helpers_off_spinning_cores(config: &Config) {
    if config.poll != PollMode::Spin {
        return;
    }
    let Ok(allowed) = crate::config::allowed_cores() else {
        return;
    };
    let others: Vec<usize> = allowed
        .into_iter()
        .filter(|c| !config.io_cores.contains(c))
        .collect();
    if others.is_empty() {
        return; // nowhere else to go; the configuration allowed it
    }
    if let Err(e) = crate::sys::set_thread_affinity(&others) {
        eprintln!(
            "nocturne: warning: cannot keep the engine's helper threads off the io cores: {e}"
        );
    }
}

/// How often `serve` checks that every core loop still runs.
const LOOP_CHECK_PERIOD: Duration = Duration::from_millis(100);
/// How long an exiting engine waits for its log to be written (a stalled
/// reader must not keep it from exiting).
const LOG_FLUSH_AT_EXIT: Duration = Duration::from_secs(1);
