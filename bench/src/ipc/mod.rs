//! `nocturne bench ipc`: round-trip latency between two processes pinned to
//! two cores, for nocturne's channel and for every mechanism it replaces,
//! side by side in one run.
//!
//! For each payload size N (bytes after the 64-byte header) a request of
//! 64 + N bytes goes from the driver (core A) to a peer process (core B),
//! which reads every payload byte and answers with 64 bytes:
//!
//! | case | mechanism | module |
//! |---|---|---|
//! | `atomic-floor/N` | plain shared memory, one ready flag per direction, spinning | `floor` |
//! | `ring-spin/N` | a nocturne channel, both sides spinning | `ring` |
//! | `ring-park/N` | a nocturne channel, both sides parking before every message | `ring` |
//! | `futex/N`, `eventfd/N` | the mailbox bytes, kernel wake-ups | `wake` |
//! | `pipe/N`, `unix-socket/N`, `tcp-loopback/N` | kernel byte streams | `stream` |
//! | `ring-stream/64` | one-way batched streaming through a channel (messages/s) | `ring` |
//!
//! The peer is this same binary re-executed (`bench ipc-peer`, see
//! [`control`]); every shared-memory region is a sealed memfd passed over a
//! unix socket, and the ring cases attach the real [`nocturne_ipc::channel`]
//! from it exactly as a worker does. The cases run interleaved: R rounds,
//! each running every case for K samples (after a warm-up), the case order
//! rotating each round, so machine noise hits all cases alike.
//!
//! Blocking cases (`ring-park`, futex, eventfd, pipe, sockets) wait, untimed,
//! until the peer thread has left the CPU to sleep in the kernel before each
//! request, and the peer counts the messages it really slept for:
//! `parks_per_msg` must be exactly 1.0 for `ring-park` and `futex` or the
//! case reports errors.
//!
//! Run it with `cargo run --release -- bench ipc --quick` (see the crate's
//! README for the options).

pub mod control;
pub mod guard;

mod driver;
mod floor;
mod mailbox;
mod msg;
mod park;
mod peer;
mod ring;
mod stream;
mod sys;
mod wake;

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::hist::LatencyHistogram;
use crate::load::spec::{parse_duration, SpecError};
use crate::pin::{parse_core_list, CoreListError};

pub use driver::{check_targets, run_ipc, TargetCheck};
pub use msg::MAX_PAYLOAD;

/// Fewest `ring-stream` windows per round `--stream-messages` may give.
pub const MIN_STREAM_WINDOWS_PER_ROUND: u64 = 10;
pub use peer::run_peer;

use control::{ControlError, Frame};
use guard::{Stop, Waker};
use mailbox::MailboxError;
use park::{ParkBoard, ParkCounter, SleepProbe};

/// `nocturne bench ipc` options.
#[derive(clap::Args, Debug, Clone)]
pub struct IpcArgs {
    /// Cores of the driver and the peer process: `A,B`.
    #[arg(long, default_value = "0,1", value_name = "CORES")]
    pub cores: String,
    /// Payload sizes N (bytes after the 64-byte header), comma separated,
    /// each [range: 0..=1048576].
    #[arg(long, default_value = "64,1024,16384", value_name = "SIZES")]
    pub payload: String,
    /// Fewer samples (every case still runs); finishes in well under a minute.
    #[arg(long)]
    pub quick: bool,
    /// Rounds (every case runs once per round) [default: 10, quick 5]
    /// [range: 1..=1000000].
    #[arg(long, value_name = "N")]
    pub rounds: Option<u32>,
    /// Timed round trips per case per round [default: 10000, quick 2000]
    /// [range: 1..=1000000000].
    #[arg(long, value_name = "N")]
    pub samples: Option<u64>,
    /// Untimed warm-up round trips per case per round [default: 200, quick
    /// 100] [range: 0..=1000000000].
    #[arg(long, value_name = "N")]
    pub warmup: Option<u64>,
    /// Messages `ring-stream` moves in all, at least rounds × 10 windows of
    /// 4096 (its percentiles are per window) [default: 5000000, quick
    /// 1000000] [range: 1..=1000000000000].
    #[arg(long, value_name = "N")]
    pub stream_messages: Option<u64>,
    /// Messages per batch in `ring-stream` [range: 1..=1024].
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub stream_batch: u32,
    /// Run only the cases whose name contains this text.
    #[arg(long, value_name = "TEXT")]
    pub filter: Option<String>,
    /// Give up (killing the peer) after this long without progress, e.g.
    /// 20s or 500ms (a bare number is seconds, as the old --stall-timeout-s
    /// took) [range: 1ms..=3600s].
    #[arg(
        long,
        alias = "stall-timeout-s",
        value_name = "DURATION",
        default_value = "20s"
    )]
    pub stall_timeout: String,
    /// Write the report as JSON (schema: docs/design.md §7) to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
}

/// `nocturne bench ipc-peer` options (started by the driver, not by users).
#[derive(clap::Args, Debug, Clone)]
pub struct IpcPeerArgs {
    /// Core to pin to.
    #[arg(long, value_name = "CORE")]
    pub core: usize,
    /// Process id of the driver (the peer dies with it).
    #[arg(long, value_name = "PID")]
    pub driver_pid: u32,
}

/// Validated settings of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpcSettings {
    /// Core of the driver (the timing side).
    pub driver_core: usize,
    /// Core of the peer process.
    pub peer_core: usize,
    /// Payload sizes.
    pub payloads: Vec<usize>,
    /// Whether `--quick` chose the defaults.
    pub quick: bool,
    /// Rounds.
    pub rounds: u32,
    /// Timed samples per case per round.
    pub samples: u64,
    /// Warm-up round trips per case per round.
    pub warmup: u64,
    /// Total `ring-stream` messages.
    pub stream_messages: u64,
    /// `ring-stream` batch size.
    pub stream_batch: u32,
    /// Case-name filter.
    pub filter: Option<String>,
    /// Watchdog timeout.
    pub stall_timeout: Duration,
}

/// A bad command line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    /// `--cores` is not a core list.
    #[error("bad --cores")]
    Cores(#[from] CoreListError),
    /// `--cores` does not name exactly two cores.
    #[error("--cores needs exactly two different cores (driver,peer), got {0}")]
    CoreCount(usize),
    /// A payload size is not a number.
    #[error("--payload: {0:?} is not a byte count")]
    PayloadNotANumber(String),
    /// A payload size is listed twice.
    #[error("--payload: {0} is listed twice")]
    PayloadDuplicate(usize),
    /// A number outside its option's range ([`ranges`]).
    #[error(transparent)]
    Range(#[from] crate::range::RangeError),
    /// `--stall-timeout` is not a duration.
    #[error("--stall-timeout: {0}")]
    StallTimeout(SpecError),
    /// Too few `ring-stream` messages for its windows to mean anything.
    #[error(
        "--stream-messages must be at least {min} ({rounds} rounds x {MIN_STREAM_WINDOWS_PER_ROUND} \
         windows of {window} messages: ring-stream's percentiles are per window), got {got}"
    )]
    StreamMessages {
        /// The value given.
        got: u64,
        /// The least value for this many rounds.
        min: u64,
        /// `--rounds`.
        rounds: u32,
        /// Messages per window.
        window: u64,
    },
}

/// The accepted ranges of `bench ipc`'s numeric options (the help states
/// each in the same words).
pub mod ranges {
    use std::time::Duration;

    use crate::range::{DurationRange, IntRange};

    /// `--rounds`, `--samples` and `--warmup`: as `bench engine`'s.
    pub use crate::engine::ranges::{ROUNDS, SAMPLES, WARMUP};
    /// `--stream-messages` (ring-stream also needs enough for its windows).
    pub const STREAM_MESSAGES: IntRange = IntRange::new("stream-messages", 1, 1_000_000_000_000);
    /// `--stream-batch`: at most the stream ring's slots.
    pub const STREAM_BATCH: IntRange =
        IntRange::new("stream-batch", 1, super::ring::STREAM_RING_SLOTS as u64);
    /// Each `--payload` size.
    pub const PAYLOAD: IntRange = IntRange::new("payload", 0, super::msg::MAX_PAYLOAD as u64);
    /// `--stall-timeout`.
    pub const STALL_TIMEOUT: DurationRange = DurationRange::new(
        "stall-timeout",
        Duration::from_millis(1),
        Duration::from_secs(3600),
    );
    /// Every integer range, for the help test.
    pub const INTS: [IntRange; 6] = [
        ROUNDS,
        SAMPLES,
        WARMUP,
        STREAM_MESSAGES,
        STREAM_BATCH,
        PAYLOAD,
    ];
}

impl IpcSettings {
    /// Validates `args` and fills in the defaults.
    pub fn from_args(args: &IpcArgs) -> Result<Self, ArgsError> {
        let cores = parse_core_list(&args.cores)?;
        let [driver_core, peer_core] = cores[..] else {
            return Err(ArgsError::CoreCount(cores.len()));
        };
        let payloads = parse_payloads(&args.payload)?;
        let (rounds, samples, warmup, stream) = if args.quick {
            (5, 2_000, 100, 1_000_000)
        } else {
            (10, 10_000, 200, 5_000_000)
        };
        let settings = Self {
            driver_core,
            peer_core,
            payloads,
            quick: args.quick,
            rounds: args.rounds.unwrap_or(rounds),
            samples: args.samples.unwrap_or(samples),
            warmup: args.warmup.unwrap_or(warmup),
            stream_messages: args.stream_messages.unwrap_or(stream),
            stream_batch: args.stream_batch,
            filter: args.filter.clone(),
            stall_timeout: ranges::STALL_TIMEOUT.check(
                parse_duration(&args.stall_timeout).map_err(ArgsError::StallTimeout)?,
                &args.stall_timeout,
            )?,
        };
        for (range, value) in [
            (ranges::ROUNDS, u64::from(settings.rounds)),
            (ranges::SAMPLES, settings.samples),
            (ranges::WARMUP, settings.warmup),
            (ranges::STREAM_MESSAGES, settings.stream_messages),
            (ranges::STREAM_BATCH, u64::from(settings.stream_batch)),
        ] {
            range.check(value)?;
        }
        // ring-stream times windows of STREAM_WINDOW messages, and a
        // round's remainder below a window is not timed: with too few
        // messages there is no window, and every percentile reads 0.
        let streams = settings
            .cases()
            .iter()
            .any(|c| c.mechanism == Mechanism::RingStream);
        let min = u64::from(settings.rounds) * MIN_STREAM_WINDOWS_PER_ROUND * ring::STREAM_WINDOW;
        if streams && settings.stream_messages < min {
            return Err(ArgsError::StreamMessages {
                got: settings.stream_messages,
                min,
                rounds: settings.rounds,
                window: ring::STREAM_WINDOW,
            });
        }
        Ok(settings)
    }

    /// The cases this run measures, in report order.
    pub fn cases(&self) -> Vec<CaseSpec> {
        let mut cases: Vec<CaseSpec> = self
            .payloads
            .iter()
            .flat_map(|&payload| {
                Mechanism::ROUND_TRIP
                    .iter()
                    .map(move |&mechanism| CaseSpec { mechanism, payload })
            })
            .collect();
        cases.push(CaseSpec {
            mechanism: Mechanism::RingStream,
            payload: 64,
        });
        if let Some(filter) = &self.filter {
            cases.retain(|c| c.name().contains(filter.as_str()));
        }
        cases
    }
}

/// Parses `--payload`: comma-separated byte counts.
pub fn parse_payloads(text: &str) -> Result<Vec<usize>, ArgsError> {
    let mut sizes = Vec::new();
    for item in text.split(',').map(str::trim) {
        let len: usize = item
            .parse()
            .map_err(|_| ArgsError::PayloadNotANumber(item.to_owned()))?;
        ranges::PAYLOAD.check_usize(len)?;
        if sizes.contains(&len) {
            return Err(ArgsError::PayloadDuplicate(len));
        }
        sizes.push(len);
    }
    Ok(sizes)
}

/// How the bytes travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// Plain shared memory, spinning: the floor.
    AtomicFloor,
    /// nocturne channel, spinning.
    RingSpin,
    /// nocturne channel, parking before every message.
    RingPark,
    /// Raw futex ping-pong over shared memory.
    Futex,
    /// eventfd doorbells over shared memory.
    Eventfd,
    /// Two pipes.
    Pipe,
    /// A unix stream socketpair.
    UnixSocket,
    /// A TCP connection over 127.0.0.1.
    TcpLoopback,
    /// One-way batched streaming through a nocturne channel.
    RingStream,
}

impl Mechanism {
    /// The round-trip mechanisms, in report order.
    pub const ROUND_TRIP: [Mechanism; 8] = [
        Mechanism::AtomicFloor,
        Mechanism::RingSpin,
        Mechanism::RingPark,
        Mechanism::Futex,
        Mechanism::Eventfd,
        Mechanism::Pipe,
        Mechanism::UnixSocket,
        Mechanism::TcpLoopback,
    ];

    /// The case-name prefix.
    pub fn label(self) -> &'static str {
        match self {
            Mechanism::AtomicFloor => "atomic-floor",
            Mechanism::RingSpin => "ring-spin",
            Mechanism::RingPark => "ring-park",
            Mechanism::Futex => "futex",
            Mechanism::Eventfd => "eventfd",
            Mechanism::Pipe => "pipe",
            Mechanism::UnixSocket => "unix-socket",
            Mechanism::TcpLoopback => "tcp-loopback",
            Mechanism::RingStream => "ring-stream",
        }
    }

    /// The code on the control channel.
    pub fn code(self) -> u64 {
        match self {
            Mechanism::AtomicFloor => 1,
            Mechanism::RingSpin => 2,
            Mechanism::RingPark => 3,
            Mechanism::Futex => 4,
            Mechanism::Eventfd => 5,
            Mechanism::Pipe => 6,
            Mechanism::UnixSocket => 7,
            Mechanism::TcpLoopback => 8,
            Mechanism::RingStream => 9,
        }
    }

    /// The mechanism of a control-channel code.
    pub fn from_code(code: u64) -> Option<Self> {
        Mechanism::ROUND_TRIP
            .into_iter()
            .chain([Mechanism::RingStream])
            .find(|m| m.code() == code)
    }

    /// Both sides sleep in the kernel for every message.
    pub fn blocking(self) -> bool {
        !matches!(
            self,
            Mechanism::AtomicFloor | Mechanism::RingSpin | Mechanism::RingStream
        )
    }

    /// The case fails unless the peer parked before every message.
    pub fn must_park(self) -> bool {
        matches!(self, Mechanism::RingPark | Mechanism::Futex)
    }
}

/// One case: a mechanism and a payload size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CaseSpec {
    /// How the bytes travel.
    pub mechanism: Mechanism,
    /// Payload bytes after the 64-byte header.
    pub payload: usize,
}

impl CaseSpec {
    /// `mechanism/payload`, e.g. `ring-spin/64`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.mechanism.label(), self.payload)
    }
}

/// Why a case could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A system call failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The mailbox could not be created or attached.
    #[error(transparent)]
    Mailbox(#[from] MailboxError),
    /// A shared-memory region could not be created or attached.
    #[error(transparent)]
    Region(#[from] nocturne_ipc::region::RegionError),
    /// The channel could not be created or attached.
    #[error(transparent)]
    Channel(#[from] nocturne_ipc::channel::ChannelError),
    /// The control channel failed.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The setup frame carried the wrong number of descriptors.
    #[error("expected {expected} descriptors with the setup frame, got {got}")]
    Fds {
        /// Descriptors the mechanism needs.
        expected: usize,
        /// Descriptors that came.
        got: usize,
    },
    /// The TCP connection could not be made.
    #[error("tcp-loopback: {0}")]
    Tcp(&'static str),
    /// The setup frame's argument is out of range.
    #[error("bad setup argument: {0}")]
    BadArgument(&'static str),
    /// The setup frame names no known mechanism.
    #[error("unknown mechanism code {0}")]
    UnknownMechanism(u64),
}

/// Why a case stopped running (fatal for the run; a message that arrives
/// but is wrong only counts as an error of the case).
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    /// The watchdog stopped the run: no progress for too long.
    #[error("stopped by the watchdog: no progress (peer stalled or died)")]
    Aborted,
    /// The peer process is gone (EOF, or its thread exited).
    #[error("the peer process went away")]
    PeerGone,
    /// A system call failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The other side broke the benchmark's protocol.
    #[error("protocol: {0}")]
    Protocol(&'static str),
    /// The channel reported an error.
    #[error("channel: {0}")]
    Channel(String),
}

/// One chunk of a case: `warmup` untimed, then `samples` timed operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Chunk {
    pub warmup: u64,
    pub samples: u64,
}

impl Chunk {
    /// Operations in the chunk.
    pub fn total(&self) -> u64 {
        self.warmup + self.samples
    }
}

/// What the driver measured of one case, over all its chunks.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Round-trip latencies (ns); for `ring-stream`, window durations.
    pub latency: LatencyHistogram,
    /// Sum of the timed operations' durations (ns).
    pub timed_ns: u128,
    /// Timed operations (for `ring-stream`: messages).
    pub ops: u64,
    /// Operations whose reply was wrong.
    pub errors: u64,
}

impl Tally {
    /// Records one operation; `timed` is false during warm-up.
    #[inline]
    pub fn record(&mut self, timed: bool, elapsed: Duration, ok: bool) {
        if timed {
            self.latency.record(elapsed);
            self.timed_ns += elapsed.as_nanos();
            self.ops += 1;
        }
        if !ok {
            self.errors += 1;
        }
    }
}

/// What the peer reports after each chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PeerTally {
    /// Messages before which the peer thread slept in the kernel.
    pub parks: u64,
    /// Messages that failed validation on the peer.
    pub errors: u64,
}

/// The driver's half of a case.
pub(crate) trait DriverCase {
    /// Runs one chunk, adding to `tally`.
    fn run_chunk(&mut self, chunk: Chunk, tally: &mut Tally, stop: &Stop) -> Result<(), CaseError>;

    /// Unblocks a wait that the peer's death would not end (eventfd).
    fn waker(&self) -> Option<Waker> {
        None
    }
}

/// The peer's half of a case.
pub(crate) trait PeerCase {
    /// Called before the peer says Ready for a chunk (blocking cases start
    /// their park count here).
    fn begin_chunk(&mut self) {}

    /// Serves `count` messages (warm-up included).
    fn serve(&mut self, count: u64, stop: &Stop) -> Result<PeerTally, CaseError>;
}

/// The driver's view of the control channel while it sets up one case.
pub(crate) struct SetupLink<'a> {
    pub control: &'a UnixStream,
    pub case: u32,
    pub spec: CaseSpec,
    pub peer_pid: u32,
    pub board: &'a Arc<ParkBoard>,
}

impl SetupLink<'_> {
    /// The probe that tells when this case's peer sleeps.
    pub fn sleep_probe(&self) -> io::Result<SleepProbe> {
        SleepProbe::open(self.peer_pid, Arc::clone(self.board), self.case as usize)
    }

    /// Sends the setup frame with `arg` and `fds`, waits for the peer's
    /// acknowledgement and returns its argument.
    pub fn send(&self, arg: u64, fds: &[BorrowedFd<'_>]) -> Result<u64, SetupError> {
        let frame = Frame::Setup {
            case: self.case,
            mechanism: self.spec.mechanism.code(),
            payload: self.spec.payload as u64,
            arg,
        };
        control::send_with_fds(self.control, frame, fds)?;
        match control::recv(self.control)? {
            Frame::SetupOk { case, arg } if case == self.case => Ok(arg),
            got => Err(ControlError::Unexpected {
                expected: "SetupOk",
                got,
            }
            .into()),
        }
    }
}

/// What the peer got with a setup frame.
pub(crate) struct PeerSetup {
    pub case: u32,
    pub spec: CaseSpec,
    pub arg: u64,
    pub fds: Vec<OwnedFd>,
    pub board: Arc<ParkBoard>,
}

impl PeerSetup {
    /// The counter that records this case's parks on the board.
    pub fn park_counter(&self) -> Result<ParkCounter, SetupError> {
        ParkCounter::new(Arc::clone(&self.board), self.case as usize)
            .map_err(|_| SetupError::BadArgument("case index beyond the park board"))
    }

    /// Takes exactly `N` descriptors (none are taken on a mismatch).
    pub fn take_fds<const N: usize>(&mut self) -> Result<[OwnedFd; N], SetupError> {
        let got = self.fds.len();
        if got != N {
            return Err(SetupError::Fds { expected: N, got });
        }
        std::mem::take(&mut self.fds)
            .try_into()
            .map_err(|_| SetupError::Fds { expected: N, got })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: IpcArgs,
    }

    fn settings(argv: &[&str]) -> Result<IpcSettings, ArgsError> {
        let cli = Cli::try_parse_from(std::iter::once("ipc").chain(argv.iter().copied())).unwrap();
        IpcSettings::from_args(&cli.args)
    }

    #[test]
    fn defaults_and_quick() {
        let full = settings(&[]).unwrap();
        assert_eq!((full.driver_core, full.peer_core), (0, 1));
        assert_eq!(full.payloads, vec![64, 1024, 16384]);
        assert_eq!((full.rounds, full.samples), (10, 10_000));
        let quick = settings(&["--quick", "--cores", "1,0", "--samples", "7"]).unwrap();
        assert_eq!((quick.driver_core, quick.peer_core), (1, 0));
        assert_eq!((quick.rounds, quick.samples, quick.warmup), (5, 7, 100));
        assert!(quick.stream_messages < full.stream_messages);
    }

    #[test]
    fn stall_timeout_takes_a_duration_and_the_old_seconds() {
        let stall = |argv: &[&str]| settings(argv).map(|s| s.stall_timeout);
        assert_eq!(stall(&[]), Ok(Duration::from_secs(20)));
        assert_eq!(
            stall(&["--stall-timeout", "5s"]),
            Ok(Duration::from_secs(5))
        );
        assert_eq!(
            stall(&["--stall-timeout", "500ms"]),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(
            stall(&["--stall-timeout", "1m30s"]),
            Ok(Duration::from_secs(90))
        );
        // The old spelling, whole seconds, still works (hidden from --help).
        assert_eq!(
            stall(&["--stall-timeout-s", "5"]),
            Ok(Duration::from_secs(5))
        );
        for argv in [["--stall-timeout", "0"], ["--stall-timeout-s", "0"]] {
            assert_eq!(
                stall(&argv).unwrap_err().to_string(),
                "--stall-timeout 0 is out of range: it takes 1ms..=3600s"
            );
        }
        assert!(matches!(
            stall(&["--stall-timeout", "5x"]),
            Err(ArgsError::StallTimeout(_))
        ));
        let help = <Cli as clap::CommandFactory>::command()
            .render_help()
            .to_string();
        assert!(help.contains("--stall-timeout <DURATION>"), "{help}");
        assert!(!help.contains("aliases"), "{help}");
    }

    #[test]
    fn every_case_is_listed_once_and_filters_apply() {
        let s = settings(&[]).unwrap();
        let names: Vec<String> = s.cases().iter().map(CaseSpec::name).collect();
        assert_eq!(names.len(), 3 * 8 + 1);
        for n in [64, 1024, 16384] {
            for m in [
                "atomic-floor",
                "ring-spin",
                "ring-park",
                "futex",
                "eventfd",
                "pipe",
                "unix-socket",
                "tcp-loopback",
            ] {
                assert!(names.contains(&format!("{m}/{n}")), "{m}/{n} missing");
            }
        }
        assert_eq!(names.last().unwrap(), "ring-stream/64");
        let only = settings(&["--filter", "ring-park"]).unwrap();
        assert_eq!(only.cases().len(), 3);
    }

    #[test]
    fn bad_arguments_are_typed_errors() {
        assert!(matches!(
            settings(&["--cores", "0"]),
            Err(ArgsError::CoreCount(1))
        ));
        assert!(matches!(
            settings(&["--cores", "0,1,2"]),
            Err(ArgsError::CoreCount(3))
        ));
        assert!(matches!(
            settings(&["--cores", "0,0"]),
            Err(ArgsError::Cores(_))
        ));
        assert!(matches!(
            settings(&["--cores", "x"]),
            Err(ArgsError::Cores(_))
        ));
        assert_eq!(
            settings(&["--payload", "64,abc"]),
            Err(ArgsError::PayloadNotANumber("abc".into()))
        );
        assert_eq!(
            settings(&["--payload", "64,64"]),
            Err(ArgsError::PayloadDuplicate(64))
        );
        for (argv, flag) in [
            (["--payload", "99999999"], "payload"),
            (["--rounds", "0"], "rounds"),
            (["--samples", "0"], "samples"),
            (["--stream-batch", "0"], "stream-batch"),
            (["--stream-batch", "100000"], "stream-batch"),
        ] {
            assert!(
                matches!(settings(&argv), Err(ArgsError::Range(e)) if e.flag == flag),
                "{argv:?}"
            );
        }
    }

    #[test]
    fn every_range_is_stated_in_help_and_is_the_one_checked() {
        crate::range::check_ranges(
            &<Cli as clap::CommandFactory>::command(),
            &ranges::INTS,
            &[ranges::STALL_TIMEOUT],
            |flag, v| {
                // No ring-stream case: its own minimum of messages stays out of it.
                settings(&["--filter", "atomic-floor", &format!("--{flag}={v}")])
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
        );
    }

    #[test]
    fn too_few_stream_messages_for_its_windows_are_refused() {
        // --quick: 5 rounds, 10 windows of 4096 each at least.
        let min = 5 * 10 * 4096;
        let err = settings(&["--quick", "--stream-messages", "100"]).unwrap_err();
        assert_eq!(
            err,
            ArgsError::StreamMessages {
                got: 100,
                min,
                rounds: 5,
                window: 4096
            }
        );
        assert!(err.to_string().contains("per window"), "{err}");
        assert!(settings(&["--quick", "--stream-messages", &(min - 1).to_string()]).is_err());
        assert!(settings(&["--quick", "--stream-messages", &min.to_string()]).is_ok());
        // The rounds set the least; a run without ring-stream ignores it.
        assert!(settings(&["--rounds", "1", "--stream-messages", "40960"]).is_ok());
        assert!(settings(&["--filter", "pipe", "--stream-messages", "100"]).is_ok());
    }

    #[test]
    fn mechanism_codes_round_trip() {
        for m in Mechanism::ROUND_TRIP
            .into_iter()
            .chain([Mechanism::RingStream])
        {
            assert_eq!(Mechanism::from_code(m.code()), Some(m));
        }
        assert_eq!(Mechanism::from_code(0), None);
        assert_eq!(Mechanism::from_code(99), None);
        assert!(Mechanism::RingPark.must_park() && Mechanism::Futex.must_park());
        assert!(Mechanism::Pipe.blocking() && !Mechanism::Pipe.must_park());
        assert!(!Mechanism::RingSpin.blocking());
    }

    #[test]
    fn peer_setup_takes_exactly_the_descriptors_needed() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut setup = PeerSetup {
            case: 0,
            board: Arc::new(ParkBoard::create(1).unwrap()),
            spec: CaseSpec {
                mechanism: Mechanism::Pipe,
                payload: 1,
            },
            arg: 0,
            fds: vec![a.into(), b.into()],
        };
        assert!(matches!(
            setup.take_fds::<1>(),
            Err(SetupError::Fds {
                expected: 1,
                got: 2
            })
        ));
        assert!(setup.take_fds::<2>().is_ok());
        assert!(matches!(
            setup.take_fds::<2>(),
            Err(SetupError::Fds {
                expected: 2,
                got: 0
            })
        ));
    }
}
