//! The driver process: starts the peer, sets up every case, runs the
//! interleaved rounds under a watchdog, and turns the tallies into a
//! [`Report`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::pin::{check_cores, pin_current_thread};
use crate::report::{CaseResult, Machine, Report};

use super::control::{self, ControlError, Frame, PeerProcess};
use super::floor::FloorDriver;
use super::guard::{Stop, Watchdog};
use super::park::ParkBoard;
use super::ring::{self, RingDriver, StreamProducer, STREAM_WINDOW};
use super::stream::{PipeDriver, SocketDriver};
use super::wake::WakeDriver;
use super::{CaseSpec, Chunk, DriverCase, IpcSettings, Mechanism, SetupError, SetupLink, Tally};

/// How long the peer has to start, pin itself and say Hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the peer has to exit after Shutdown.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// One case as the driver runs it.
struct Running {
    spec: CaseSpec,
    driver: Box<dyn DriverCase>,
    tally: Tally,
    /// Messages the peer served, parked for, and rejected.
    served: u64,
    parks: u64,
    peer_errors: u64,
}

/// Runs the benchmark: every case of `settings`, in one run, and returns the
/// report (the caller prints it and decides the exit status from its
/// errors).
pub fn run_ipc(settings: &IpcSettings) -> anyhow::Result<Report> {
    let specs = settings.cases();
    if specs.is_empty() {
        bail!("no case matches the filter {:?}", settings.filter);
    }
    let (driver_core, peer_core) = (settings.driver_core, settings.peer_core);
    check_cores(&[driver_core, peer_core]).context("--cores")?;
    // Probe now: unpinned (the report lists every core we may use), and no
    // `git` process runs during the measurements.
    let machine = machine(settings);
    let exe = std::env::current_exe().context("cannot find this executable to start the peer")?;
    // Spawn before pinning: the child inherits the spawning thread's mask.
    let peer = PeerProcess::spawn(&exe, peer_core, HANDSHAKE_TIMEOUT)?;
    pin_current_thread(driver_core).context("pinning the driver")?;
    eprintln!(
        "nocturne bench ipc: driver on core {driver_core}, peer pid {} on core {peer_core}; \
         {} cases x {} rounds x ({} warm-up + {} samples)",
        peer.pid(),
        specs.len(),
        settings.rounds,
        settings.warmup,
        settings.samples
    );

    let board = Arc::new(ParkBoard::create(specs.len()).context("park board")?);
    control::send_with_fds(
        peer.control(),
        Frame::Board {
            slots: specs.len() as u64,
        },
        &[board.fd()],
    )?;
    match control::recv(peer.control())? {
        Frame::BoardOk => {}
        got => {
            return Err(ControlError::Unexpected {
                expected: "BoardOk",
                got,
            }
            .into())
        }
    }

    let mut cases = Vec::with_capacity(specs.len());
    for (index, spec) in specs.iter().enumerate() {
        let link = SetupLink {
            control: peer.control(),
            case: u32::try_from(index).context("too many cases")?,
            spec: *spec,
            peer_pid: peer.pid(),
            board: &board,
        };
        let driver =
            setup_driver(&link, settings).with_context(|| format!("setting up {}", spec.name()))?;
        cases.push(Running {
            spec: *spec,
            driver,
            tally: Tally::default(),
            served: 0,
            parks: 0,
            peer_errors: 0,
        });
    }

    let stop = Arc::new(Stop::new());
    let watchdog = Watchdog::start(Arc::clone(&stop), peer.killer(), settings.stall_timeout)?;
    for case in &cases {
        if let Some(waker) = case.driver.waker() {
            watchdog.add_waker(waker);
        }
    }
    peer.control()
        .set_read_timeout(Some(settings.stall_timeout))?;

    let started = Instant::now();
    for round in 0..settings.rounds {
        // Rotate the order each round so no case always follows the same one.
        for k in 0..cases.len() {
            let index = (k + round as usize) % cases.len();
            run_chunk(&peer, index, &mut cases[index], settings, &stop).map_err(|e| {
                if watchdog.fired() {
                    e.context(format!(
                        "no progress for {:?}: the watchdog killed the peer",
                        settings.stall_timeout
                    ))
                } else {
                    e
                }
            })?;
            watchdog.progress();
        }
        // About ten progress lines, whatever the number of rounds.
        let step = settings.rounds.div_ceil(10);
        if (round + 1) % step == 0 || round + 1 == settings.rounds {
            eprintln!(
                "  round {}/{} done ({:.1} s)",
                round + 1,
                settings.rounds,
                started.elapsed().as_secs_f64()
            );
        }
    }
    drop(watchdog);
    let status = peer.shutdown(SHUTDOWN_TIMEOUT)?;
    if !status.success() {
        bail!("the peer process exited with {status}");
    }

    let results = cases.iter().map(|c| case_result(c, settings)).collect();
    Ok(Report::new("ipc", machine, results))
}

fn setup_driver(
    link: &SetupLink<'_>,
    settings: &IpcSettings,
) -> Result<Box<dyn DriverCase>, SetupError> {
    Ok(match link.spec.mechanism {
        Mechanism::AtomicFloor => Box::new(FloorDriver::setup(link)?),
        Mechanism::RingSpin => Box::new(RingDriver::setup(link, false)?),
        Mechanism::RingPark => Box::new(RingDriver::setup(link, true)?),
        Mechanism::Futex => Box::new(WakeDriver::setup_futex(link)?),
        Mechanism::Eventfd => Box::new(WakeDriver::setup_eventfd(link)?),
        Mechanism::Pipe => Box::new(PipeDriver::setup_pipe(link)?),
        Mechanism::UnixSocket => Box::new(SocketDriver::setup_unix(link)?),
        Mechanism::TcpLoopback => Box::new(SocketDriver::setup_tcp(link)?),
        Mechanism::RingStream => Box::new(StreamProducer::setup(link, settings.stream_batch)?),
    })
}

/// The chunk one round runs of `spec`.
fn chunk_of(spec: &CaseSpec, settings: &IpcSettings) -> Chunk {
    if spec.mechanism == Mechanism::RingStream {
        let per_round = settings
            .stream_messages
            .div_ceil(u64::from(settings.rounds));
        Chunk {
            warmup: (per_round / 10).min(10 * STREAM_WINDOW),
            samples: per_round,
        }
    } else {
        Chunk {
            warmup: settings.warmup,
            samples: settings.samples,
        }
    }
}

fn run_chunk(
    peer: &PeerProcess,
    index: usize,
    case: &mut Running,
    settings: &IpcSettings,
    stop: &Stop,
) -> anyhow::Result<()> {
    let name = || case.spec.name();
    let chunk = chunk_of(&case.spec, settings);
    let id = index as u32;
    let control = peer.control();
    control::send(
        control,
        Frame::Serve {
            case: id,
            count: chunk.total(),
        },
    )?;
    match control::recv(control).with_context(|| format!("{}: waiting for Ready", name()))? {
        Frame::Ready { case } if case == id => {}
        got => {
            return Err(ControlError::Unexpected {
                expected: "Ready",
                got,
            })
            .with_context(name)
        }
    }
    case.driver
        .run_chunk(chunk, &mut case.tally, stop)
        .with_context(name)?;
    match control::recv(control).with_context(|| format!("{}: waiting for Done", name()))? {
        Frame::Done {
            case: done,
            served,
            parks,
            errors,
        } if done == id => {
            case.served += served;
            case.parks += parks;
            case.peer_errors += errors;
            if served != chunk.total() {
                case.peer_errors += 1;
            }
            Ok(())
        }
        got => Err(ControlError::Unexpected {
            expected: "Done",
            got,
        })
        .with_context(name),
    }
}

/// Turns one case's tallies into its report entry.
fn case_result(case: &Running, settings: &IpcSettings) -> CaseResult {
    let spec = &case.spec;
    let tally = &case.tally;
    let secs = tally.timed_ns as f64 / 1e9;
    let ops_per_s = if secs > 0.0 {
        (tally.ops as f64 / secs * 10.0).round() / 10.0
    } else {
        0.0
    };
    let mut errors = tally.errors + case.peer_errors;
    let summary = if spec.mechanism == Mechanism::RingStream {
        // Windows of STREAM_WINDOW messages: report the cost per message.
        tally.latency.summary_scaled(STREAM_WINDOW as f64)
    } else {
        tally.latency.summary()
    };
    let mut result = CaseResult::from_summary(spec.name(), &summary, ops_per_s, 0)
        .with_extra("p9999_us", summary.p9999_us)
        .with_extra("mean_us", summary.mean_us);
    if spec.mechanism == Mechanism::RingStream {
        // `samples` stays the number of windows the percentiles rest on
        // (each a per-message cost); the messages moved are `messages`.
        result = result
            .with_count("messages", tally.ops)
            .with_count("batch", u64::from(settings.stream_batch))
            .with_count("window_msgs", STREAM_WINDOW);
    }
    if spec.mechanism.blocking() && case.served > 0 {
        result = result.with_extra("parks_per_msg", case.parks as f64 / case.served as f64);
        if spec.mechanism.must_park() && case.parks != case.served {
            errors += case.served.abs_diff(case.parks);
        }
    }
    result.errors = errors;
    result
}

fn machine(settings: &IpcSettings) -> Machine {
    let core_map = BTreeMap::from([
        ("driver".to_owned(), vec![settings.driver_core]),
        ("peer".to_owned(), vec![settings.peer_core]),
    ]);
    let ping = ring::ping_config(64);
    let stream = ring::stream_config();
    let modes = BTreeMap::from(
        [
            ("quick", settings.quick.to_string()),
            ("rounds", settings.rounds.to_string()),
            ("samples_per_round", settings.samples.to_string()),
            ("warmup_per_round", settings.warmup.to_string()),
            ("stream_messages", settings.stream_messages.to_string()),
            ("stream_batch", settings.stream_batch.to_string()),
            (
                "order",
                "interleaved: every case once per round, order rotated each round".into(),
            ),
            (
                "blocking_cases",
                "sender waits (untimed) until the receiver thread has blocked in the kernel \
                 (its voluntary context switches moved); both sides block"
                    .into(),
            ),
            ("clock", "std::time::Instant (CLOCK_MONOTONIC)".into()),
            (
                "ring_ping_channel",
                format!(
                    "{} slots x {} B ({} B inline), arena >= {} B per direction",
                    ping.ring_slots,
                    ping.slot_size,
                    ping.max_inline(),
                    ping.arena_bytes
                ),
            ),
            (
                "ring_stream_channel",
                format!(
                    "{} slots x {} B, no arena",
                    stream.ring_slots, stream.slot_size
                ),
            ),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    Machine::probe(core_map, modes)
}

/// One of the targets, checked against a report.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetCheck {
    /// What is compared, e.g. `ring-spin/64 p50 / atomic-floor/64 p50`.
    pub what: String,
    /// The measured ratio or rate.
    pub measured: f64,
    /// The bound.
    pub limit: f64,
    /// True for "at least `limit`", false for "at most".
    pub at_least: bool,
}

impl TargetCheck {
    /// Whether the measurement meets the target.
    pub fn met(&self) -> bool {
        if self.at_least {
            self.measured >= self.limit
        } else {
            self.measured <= self.limit
        }
    }
}

impl fmt::Display for TargetCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (op, verdict) = (
            if self.at_least { ">=" } else { "<=" },
            if self.met() { "met" } else { "MISSED" },
        );
        if self.limit >= 1e6 {
            write!(
                f,
                "{}: {:.2}M (target {op} {:.0}M) {verdict}",
                self.what,
                self.measured / 1e6,
                self.limit / 1e6
            )
        } else {
            write!(
                f,
                "{}: {:.3} (target {op} {}) {verdict}",
                self.what, self.measured, self.limit
            )
        }
    }
}

/// The targets that `report` has the cases for: ring-spin within
/// 1.3x of the floor (64 B and 16 KiB), ring-park within 1.1x of futex
/// (64 B), ring-stream at 20 M messages/s.
pub fn check_targets(report: &Report) -> Vec<TargetCheck> {
    let p50 = |name: &str| report.case(name).map(|c| c.p50_us).filter(|&v| v > 0.0);
    let mut checks = Vec::new();
    for (case, base, limit) in [
        ("ring-spin/64", "atomic-floor/64", 1.3),
        ("ring-spin/16384", "atomic-floor/16384", 1.3),
        ("ring-park/64", "futex/64", 1.1),
    ] {
        if let (Some(a), Some(b)) = (p50(case), p50(base)) {
            checks.push(TargetCheck {
                what: format!("{case} p50 / {base} p50"),
                measured: a / b,
                limit,
                at_least: false,
            });
        }
    }
    if let Some(stream) = report.case("ring-stream/64") {
        checks.push(TargetCheck {
            what: "ring-stream/64 messages/s".into(),
            measured: stream.ops_per_s,
            limit: 20e6,
            at_least: true,
        });
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(name: &str, p50_us: f64, ops_per_s: f64) -> CaseResult {
        let mut c = CaseResult::from_summary(name, &Default::default(), ops_per_s, 0);
        c.p50_us = p50_us;
        c
    }

    #[test]
    fn targets_compare_within_one_report() {
        let report = Report::new(
            "ipc",
            Machine::default(),
            vec![
                case("atomic-floor/64", 0.4, 0.0),
                case("ring-spin/64", 0.5, 0.0),
                case("atomic-floor/16384", 2.0, 0.0),
                case("ring-spin/16384", 3.0, 0.0),
                case("futex/64", 10.0, 0.0),
                case("ring-park/64", 10.5, 0.0),
                case("ring-stream/64", 0.04, 25e6),
            ],
        );
        let checks = check_targets(&report);
        assert_eq!(checks.len(), 4);
        assert!(checks[0].met() && (checks[0].measured - 1.25).abs() < 1e-9);
        assert!(!checks[1].met(), "1.5x the floor misses 1.3x");
        assert!(checks[2].met());
        assert!(checks[3].met());
        assert!(checks[1].to_string().contains("MISSED"), "{}", checks[1]);
        assert!(checks[3].to_string().contains("25.00M"), "{}", checks[3]);
        // Cases filtered out of the run are not checked.
        let partial = Report::new("ipc", Machine::default(), vec![case("futex/64", 1.0, 0.0)]);
        assert!(check_targets(&partial).is_empty());
    }

    #[test]
    fn stream_chunks_cover_the_requested_messages() {
        let settings = IpcSettings {
            driver_core: 0,
            peer_core: 1,
            payloads: vec![64],
            quick: true,
            rounds: 3,
            samples: 10,
            warmup: 5,
            stream_messages: 1000,
            stream_batch: 32,
            filter: None,
            stall_timeout: Duration::from_secs(1),
        };
        let stream = CaseSpec {
            mechanism: Mechanism::RingStream,
            payload: 64,
        };
        let chunk = chunk_of(&stream, &settings);
        assert!(chunk.samples * 3 >= 1000 && chunk.warmup <= chunk.samples);
        let pipe = CaseSpec {
            mechanism: Mechanism::Pipe,
            payload: 64,
        };
        assert_eq!(
            chunk_of(&pipe, &settings),
            Chunk {
                warmup: 5,
                samples: 10,
            }
        );
    }
}
