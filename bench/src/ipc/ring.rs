//! The nocturne channel cases: `ring-spin/N`, `ring-park/N` and
//! `ring-stream/64`.
//!
//! The driver creates the channel as the engine does
//! ([`EngineEnd::create`]: a sealed memfd) and hands the memfd to the peer,
//! which attaches it exactly as a worker does ([`WorkerEnd::attach`]).
//! Requests go down the request ring as `Invoke` messages (call id = the
//! sequence number), inline when they fit the slot and through the request
//! arena when they don't; replies come back as header-only `Complete`
//! messages carrying the checksum in `t1_ns`.
//!
//! * spin: both sides poll `try_recv` (an engine core loop in `--poll spin`).
//! * park: both sides `wait` with [`WaitPolicy::Park`] and no spin budget, and
//!   the driver sends only once the peer sleeps in the kernel, so every
//!   message rings the doorbell and wakes a parked thread.
//! * stream: the driver pushes with `try_send_batch`, the peer pops with
//!   `recv_batch`, validating each header's kind and sequence and reading
//!   each payload; one `Complete` per chunk carries the count and checksums.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use nocturne_ipc::channel::{ChannelConfig, EngineEnd, Receiver, Sender, WorkerEnd};
use nocturne_ipc::{Header, Kind, SendError, WaitOutcome, WaitPolicy};

use super::guard::{Spinner, Stop};
use super::msg::{checksum, payload_pattern};
use super::park::{ParkCounter, SleepProbe};
use super::{
    CaseError, Chunk, DriverCase, PeerCase, PeerSetup, PeerTally, SetupError, SetupLink, Tally,
};

/// Slots of the ping-pong channels (one message is in flight at a time).
const PING_RING_SLOTS: u32 = 64;
/// Slot size of the ping-pong channels: 192 bytes inline, so 64-byte
/// payloads travel in the slot and 1 KiB and up through the arena.
const PING_SLOT_SIZE: u32 = 256;
/// Slots of the `ring-stream` channel.
pub const STREAM_RING_SLOTS: u32 = 1024;
/// Slot size of the `ring-stream` channel: header + 64 bytes inline.
const STREAM_SLOT_SIZE: u32 = 128;
/// Payload bytes of every `ring-stream` message.
pub const STREAM_PAYLOAD: usize = 64;
/// Messages per latency window of `ring-stream`.
pub const STREAM_WINDOW: u64 = 4096;
/// How long a parked driver sleeps before it re-checks [`Stop`].
const DRIVER_SLEEP_SLICE: Duration = Duration::from_millis(100);

/// The channel geometry for a ping-pong case with `payload` bytes: the
/// default slots, an arena with room for a few payloads.
pub fn ping_config(payload: usize) -> ChannelConfig {
    let granules = u32::try_from(payload.div_ceil(64)).unwrap_or(u32::MAX / 64);
    ChannelConfig {
        ring_slots: PING_RING_SLOTS,
        slot_size: PING_SLOT_SIZE,
        arena_bytes: (granules * 64 * 4).max(64 * 1024),
    }
}

/// The channel geometry of `ring-stream`.
pub fn stream_config() -> ChannelConfig {
    ChannelConfig {
        ring_slots: STREAM_RING_SLOTS,
        slot_size: STREAM_SLOT_SIZE,
        arena_bytes: 0,
    }
}

fn channel_err(e: impl std::fmt::Display) -> CaseError {
    CaseError::Channel(e.to_string())
}

/// Sends one message, spinning while the ring or arena is full (the peer
/// frees them).
#[inline]
fn send_spinning(
    tx: &mut Sender,
    header: &Header,
    payload: &[u8],
    stop: &Stop,
) -> Result<(), CaseError> {
    let mut spinner = Spinner::new();
    loop {
        match tx.try_send(header, payload) {
            Ok(()) => return Ok(()),
            Err(SendError::RingFull | SendError::ArenaFull) => spinner.spin(stop)?,
            Err(e) => return Err(channel_err(e)),
        }
    }
}

/// Polls until a message arrives; returns its header and the checksum of
/// its payload (computed while the view is held), after releasing it.
#[inline]
fn recv_spinning(rx: &mut Receiver, stop: &Stop) -> Result<(Header, usize, u64), CaseError> {
    let mut spinner = Spinner::new();
    loop {
        if let Some(view) = rx.try_recv().map_err(channel_err)? {
            let payload = view.payload();
            return Ok((*view.header(), payload.len(), checksum(payload)));
        }
        spinner.spin(stop)?;
    }
}

/// Parks until a message arrives (in slices of `slice`, re-checking `stop`),
/// then receives it as [`recv_spinning`] does.
#[inline]
fn recv_parking(
    rx: &mut Receiver,
    slice: Option<Duration>,
    stop: &Stop,
) -> Result<(Header, usize, u64), CaseError> {
    let park = WaitPolicy::Park {
        spin: Duration::ZERO,
    };
    while rx.wait(&park, slice) == WaitOutcome::TimedOut {
        stop.check()?;
    }
    recv_spinning(rx, stop)
}

/// The driver's side of `ring-spin/N` and `ring-park/N`.
pub struct RingDriver {
    tx: Sender,
    rx: Receiver,
    /// Some: park mode (the peer must be asleep before each send).
    probe: Option<SleepProbe>,
    payload: Vec<u8>,
    expected_sum: u64,
    seq: u64,
}

impl RingDriver {
    /// Creates the channel and hands its memfd to the peer.
    pub fn setup(link: &SetupLink<'_>, park: bool) -> Result<Self, SetupError> {
        let payload = payload_pattern(link.spec.payload);
        let end = EngineEnd::create(&ping_config(payload.len()), "nocturne-bench-ring")?;
        link.send(0, &[end.region_fd()])?;
        let (tx, rx) = end.split();
        Ok(Self {
            tx,
            rx,
            probe: if park {
                Some(link.sleep_probe()?)
            } else {
                None
            },
            expected_sum: checksum(&payload),
            payload,
            seq: 0,
        })
    }
}

impl DriverCase for RingDriver {
    fn run_chunk(&mut self, chunk: Chunk, tally: &mut Tally, stop: &Stop) -> Result<(), CaseError> {
        let mut header = Header {
            kind: Kind::Invoke,
            ..Header::default()
        };
        for i in 0..chunk.total() {
            self.seq += 1;
            header.call_id = self.seq;
            if let Some(probe) = &mut self.probe {
                probe.wait_asleep(stop)?;
            }
            let t0 = Instant::now();
            send_spinning(&mut self.tx, &header, &self.payload, stop)?;
            let (reply, len, _) = if self.probe.is_some() {
                recv_parking(&mut self.rx, Some(DRIVER_SLEEP_SLICE), stop)?
            } else {
                recv_spinning(&mut self.rx, stop)?
            };
            let elapsed = t0.elapsed();
            let ok = reply.kind == Kind::Complete
                && reply.call_id == self.seq
                && reply.t1_ns == self.expected_sum
                && len == 0;
            tally.record(i >= chunk.warmup, elapsed, ok);
        }
        Ok(())
    }
}

/// The peer's side of `ring-spin/N` and `ring-park/N`.
pub struct RingPeer {
    tx: Sender,
    rx: Receiver,
    /// Some: park mode. Only then: a getrusage per message would sit on the
    /// spinning round trip's critical path.
    parks: Option<ParkCounter>,
    payload_len: usize,
    expected: u64,
}

impl RingPeer {
    /// Attaches the channel from the received memfd, as a worker does.
    pub fn attach(mut setup: PeerSetup, park: bool) -> Result<Self, SetupError> {
        let [fd] = setup.take_fds::<1>()?;
        let (tx, rx) = attach_worker(fd)?;
        Ok(Self {
            tx,
            rx,
            parks: if park {
                Some(setup.park_counter()?)
            } else {
                None
            },
            payload_len: setup.spec.payload,
            expected: 0,
        })
    }
}

fn attach_worker(fd: OwnedFd) -> Result<(Sender, Receiver), SetupError> {
    Ok(WorkerEnd::attach(fd)?.split())
}

impl PeerCase for RingPeer {
    fn begin_chunk(&mut self) {
        if let Some(parks) = &mut self.parks {
            parks.begin_chunk();
        }
    }

    fn serve(&mut self, count: u64, stop: &Stop) -> Result<PeerTally, CaseError> {
        let mut tally = PeerTally::default();
        let mut reply = Header {
            kind: Kind::Complete,
            ..Header::default()
        };
        for _ in 0..count {
            self.expected += 1;
            // No timeout when parking: the peer dies with its driver.
            let (request, len, sum) = if self.parks.is_some() {
                recv_parking(&mut self.rx, None, stop)?
            } else {
                recv_spinning(&mut self.rx, stop)?
            };
            let valid = request.kind == Kind::Invoke
                && request.call_id == self.expected
                && len == self.payload_len;
            if !valid {
                tally.errors += 1;
            }
            reply.call_id = request.call_id;
            reply.t1_ns = if valid { sum } else { 0 };
            send_spinning(&mut self.tx, &reply, &[], stop)?;
            if let Some(parks) = &mut self.parks {
                parks.message_done();
            }
        }
        tally.parks = self.parks.as_ref().map_or(0, ParkCounter::parks);
        Ok(tally)
    }
}

/// The driver's side of `ring-stream/64`: the producer.
pub struct StreamProducer {
    tx: Sender,
    rx: Receiver,
    batch: Vec<Header>,
    payload: Vec<u8>,
    message_sum: u64,
    /// Messages sent so far (the next call id is `sent + 1`).
    sent: u64,
}

impl StreamProducer {
    /// Creates the stream channel; `batch` messages per `try_send_batch`.
    pub fn setup(link: &SetupLink<'_>, batch: u32) -> Result<Self, SetupError> {
        let end = EngineEnd::create(&stream_config(), "nocturne-bench-stream")?;
        link.send(u64::from(batch), &[end.region_fd()])?;
        let (tx, rx) = end.split();
        let payload = payload_pattern(STREAM_PAYLOAD);
        let header = Header {
            kind: Kind::Invoke,
            ..Header::default()
        };
        Ok(Self {
            tx,
            rx,
            batch: vec![header; batch as usize],
            message_sum: checksum(&payload),
            payload,
            sent: 0,
        })
    }

    /// Pushes `count` messages in batches, recording each full window of
    /// [`STREAM_WINDOW`] messages in `tally` when `timed`.
    fn push(
        &mut self,
        count: u64,
        tally: &mut Tally,
        timed: bool,
        stop: &Stop,
    ) -> Result<(), CaseError> {
        let end = self.sent + count;
        let mut window_start = Instant::now();
        let mut window_left = STREAM_WINDOW;
        let mut spinner = Spinner::new();
        while self.sent < end {
            let n = (end - self.sent).min(self.batch.len() as u64) as usize;
            for (i, header) in self.batch[..n].iter_mut().enumerate() {
                header.call_id = self.sent + 1 + i as u64;
            }
            let payload = &self.payload[..];
            let batch = self.batch[..n].iter().map(|h| (h, payload));
            match self.tx.try_send_batch(batch) {
                Ok(sent) => {
                    self.sent += sent as u64;
                    if timed {
                        if let Some(left) = window_left.checked_sub(sent as u64).filter(|&l| l > 0)
                        {
                            window_left = left;
                        } else {
                            let now = Instant::now();
                            tally.latency.record(now - window_start);
                            window_start = now;
                            window_left = STREAM_WINDOW;
                        }
                    }
                }
                Err(SendError::RingFull) => spinner.spin(stop)?,
                Err(e) => return Err(channel_err(e)),
            }
        }
        Ok(())
    }
}

impl DriverCase for StreamProducer {
    fn run_chunk(&mut self, chunk: Chunk, tally: &mut Tally, stop: &Stop) -> Result<(), CaseError> {
        let first = self.sent + 1;
        self.push(chunk.warmup, tally, false, stop)?;
        let t0 = Instant::now();
        self.push(chunk.samples, tally, true, stop)?;
        // The consumer's one reply per chunk: the last call id it saw and the
        // sum of every payload's checksum.
        let (done, _, _) = recv_spinning(&mut self.rx, stop)?;
        let elapsed = t0.elapsed();
        tally.ops += chunk.samples;
        tally.timed_ns += elapsed.as_nanos();
        let expected_sum = self.message_sum.wrapping_mul(self.sent - first + 1);
        if done.kind != Kind::Complete || done.call_id != self.sent || done.t1_ns != expected_sum {
            tally.errors += 1;
        }
        Ok(())
    }
}

/// The peer's side of `ring-stream/64`: the consumer.
pub struct StreamConsumer {
    tx: Sender,
    rx: Receiver,
    batch: usize,
    /// Messages received so far (the next call id is `received + 1`).
    received: u64,
}

impl StreamConsumer {
    /// Attaches the stream channel; pops up to `setup.arg` per batch.
    pub fn attach(mut setup: PeerSetup) -> Result<Self, SetupError> {
        let [fd] = setup.take_fds::<1>()?;
        let (tx, rx) = attach_worker(fd)?;
        let batch = usize::try_from(setup.arg)
            .ok()
            .filter(|b| (1..=STREAM_RING_SLOTS as usize).contains(b))
            .ok_or(SetupError::BadArgument("ring-stream batch size"))?;
        Ok(Self {
            tx,
            rx,
            batch,
            received: 0,
        })
    }
}

impl PeerCase for StreamConsumer {
    fn serve(&mut self, count: u64, stop: &Stop) -> Result<PeerTally, CaseError> {
        let mut errors = 0u64;
        let mut sum = 0u64;
        let end = self.received + count;
        let mut next = self.received + 1;
        let mut spinner = Spinner::new();
        while self.received < end {
            let max = (end - self.received).min(self.batch as u64) as usize;
            let n = self
                .rx
                .recv_batch(max, |header, payload| {
                    if header.kind != Kind::Invoke
                        || header.call_id != next
                        || payload.len() != STREAM_PAYLOAD
                    {
                        errors += 1;
                    }
                    next += 1;
                    sum = sum.wrapping_add(checksum(payload));
                })
                .map_err(channel_err)?;
            self.received += n as u64;
            if n == 0 {
                spinner.spin(stop)?;
            }
        }
        let done = Header {
            kind: Kind::Complete,
            call_id: self.received,
            t1_ns: sum,
            ..Header::default()
        };
        send_spinning(&mut self.tx, &done, &[], stop)?;
        Ok(PeerTally { parks: 0, errors })
    }
}
