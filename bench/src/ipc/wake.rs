//! `futex/N` and `eventfd/N`: the same mailbox bytes as the floor, but each
//! side sleeps in the kernel until the other wakes it — the blocking
//! baselines for `ring-park`.
//!
//! * futex: a raw ping-pong on the mailbox's two flag words. The sender
//!   stores the flag and always calls `FUTEX_WAKE`; the receiver
//!   `FUTEX_WAIT`s while the flag is stale.
//! * eventfd: one eventfd per direction as the doorbell (8-byte write to
//!   ring, blocking 8-byte read to wait); the bytes still go through the
//!   mailbox.
//!
//! Before each request the driver waits until the peer sleeps in the kernel
//! ([`SleepProbe`]), untimed, so every message pays the full wake-up; the
//! peer counts the messages it really slept for ([`ParkCounter`]).

use std::fs::File;
use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::guard::{Stop, Waker};
use super::mailbox::Mailbox;
use super::msg::{checksum, payload_pattern};
use super::park::{ParkCounter, SleepProbe};
use super::sys::{eventfd, futex_wait, futex_wake};
use super::{
    CaseError, Chunk, DriverCase, PeerCase, PeerSetup, PeerTally, SetupError, SetupLink, Tally,
};

/// How long a driver futex sleep lasts before it re-checks [`Stop`].
const DRIVER_SLEEP_SLICE: Duration = Duration::from_millis(100);

/// The doorbell flavour.
enum Doorbell {
    Futex,
    /// Our end: ring `request`, wait on `reply`.
    Eventfd {
        request: File,
        reply: File,
    },
}

/// The driver's side.
pub struct WakeDriver {
    mailbox: Mailbox,
    doorbell: Doorbell,
    probe: SleepProbe,
    payload: Vec<u8>,
    expected_sum: u64,
    seq: u32,
}

impl WakeDriver {
    /// Sets up a futex ping-pong.
    pub fn setup_futex(link: &SetupLink<'_>) -> Result<Self, SetupError> {
        let payload = payload_pattern(link.spec.payload);
        let mailbox = Mailbox::create(payload.len())?;
        link.send(0, &[mailbox.fd()])?;
        Self::new(link, mailbox, Doorbell::Futex, payload)
    }

    /// Sets up an eventfd ping-pong.
    pub fn setup_eventfd(link: &SetupLink<'_>) -> Result<Self, SetupError> {
        use std::os::fd::AsFd;
        let payload = payload_pattern(link.spec.payload);
        let mailbox = Mailbox::create(payload.len())?;
        let (request, reply) = (eventfd()?, eventfd()?);
        link.send(0, &[mailbox.fd(), request.as_fd(), reply.as_fd()])?;
        Self::new(link, mailbox, Doorbell::Eventfd { request, reply }, payload)
    }

    fn new(
        link: &SetupLink<'_>,
        mailbox: Mailbox,
        doorbell: Doorbell,
        payload: Vec<u8>,
    ) -> Result<Self, SetupError> {
        Ok(Self {
            mailbox,
            doorbell,
            probe: link.sleep_probe()?,
            expected_sum: checksum(&payload),
            payload,
            seq: 0,
        })
    }

    /// Waits for the reply to `seq`.
    fn wait_reply(&mut self, seq: u32, stop: &Stop) -> Result<(), CaseError> {
        let flag = self.mailbox.reply_flag();
        match &mut self.doorbell {
            Doorbell::Futex => loop {
                // Acquire: pairs with the peer's Release store in `post_reply`.
                let now = flag.load(Ordering::Acquire);
                if now == seq {
                    return Ok(());
                }
                stop.check()?;
                futex_wait(flag, now, Some(DRIVER_SLEEP_SLICE));
            },
            Doorbell::Eventfd { reply, .. } => {
                let mut count = [0u8; 8];
                reply.read_exact(&mut count)?;
                // Acquire: pairs with the peer's Release store in
                // `post_reply` (the eventfd write came after it).
                if flag.load(Ordering::Acquire) != seq {
                    // Only the watchdog rings our eventfd without a reply.
                    stop.check()?;
                    return Err(CaseError::Protocol("eventfd rang without a reply"));
                }
                Ok(())
            }
        }
    }
}

impl DriverCase for WakeDriver {
    fn run_chunk(&mut self, chunk: Chunk, tally: &mut Tally, stop: &Stop) -> Result<(), CaseError> {
        for i in 0..chunk.total() {
            self.seq = self.seq.wrapping_add(1);
            let seq = self.seq;
            self.probe.wait_asleep(stop)?;
            let t0 = Instant::now();
            self.mailbox.post_request(seq, &self.payload);
            match &mut self.doorbell {
                Doorbell::Futex => {
                    futex_wake(self.mailbox.request_flag(), 1);
                }
                Doorbell::Eventfd { request, .. } => request.write_all(&1u64.to_ne_bytes())?,
            }
            self.wait_reply(seq, stop)?;
            let reply = self.mailbox.reply();
            let elapsed = t0.elapsed();
            let ok = reply.seq == u64::from(seq) && reply.checksum == self.expected_sum;
            tally.record(i >= chunk.warmup, elapsed, ok);
        }
        Ok(())
    }

    fn waker(&self) -> Option<Waker> {
        match &self.doorbell {
            Doorbell::Futex => None,
            Doorbell::Eventfd { reply, .. } => {
                let reply = reply.try_clone().ok()?;
                Some(Box::new(move || {
                    let _ = (&reply).write_all(&1u64.to_ne_bytes());
                }))
            }
        }
    }
}

/// The peer's side.
pub struct WakePeer {
    mailbox: Mailbox,
    /// None: futex; Some((request, reply)): eventfd.
    eventfds: Option<(File, File)>,
    payload_len: usize,
    expected: u32,
    parks: ParkCounter,
}

impl WakePeer {
    /// Attaches a futex (1 descriptor) or eventfd (3 descriptors) case.
    pub fn attach(mut setup: PeerSetup, eventfd: bool) -> Result<Self, SetupError> {
        let payload_len = setup.spec.payload;
        let (mailbox, eventfds) = if eventfd {
            let [mailbox, request, reply] = setup.take_fds::<3>()?;
            (mailbox, Some((File::from(request), File::from(reply))))
        } else {
            let [mailbox] = setup.take_fds::<1>()?;
            (mailbox, None)
        };
        Ok(Self {
            mailbox: Mailbox::attach(mailbox, payload_len)?,
            eventfds,
            payload_len,
            expected: 0,
            parks: setup.park_counter()?,
        })
    }

    /// Sleeps until request `expected` is posted.
    fn wait_request(&mut self, expected: u32, stop: &Stop) -> Result<(), CaseError> {
        let flag = self.mailbox.request_flag();
        match &mut self.eventfds {
            None => loop {
                // Acquire: pairs with the driver's Release store in
                // `post_request`.
                let now = flag.load(Ordering::Acquire);
                if now == expected {
                    return Ok(());
                }
                stop.check()?;
                futex_wait(flag, now, None);
            },
            Some((request, _)) => {
                let mut count = [0u8; 8];
                request.read_exact(&mut count)?;
                // Acquire: pairs with the driver's Release store in
                // `post_request` (its eventfd write came after it).
                if flag.load(Ordering::Acquire) != expected {
                    return Err(CaseError::Protocol("eventfd rang without a request"));
                }
                Ok(())
            }
        }
    }
}

impl PeerCase for WakePeer {
    fn begin_chunk(&mut self) {
        self.parks.begin_chunk();
    }

    fn serve(&mut self, count: u64, stop: &Stop) -> Result<PeerTally, CaseError> {
        let mut tally = PeerTally::default();
        for _ in 0..count {
            self.expected = self.expected.wrapping_add(1);
            let expected = self.expected;
            self.wait_request(expected, stop)?;
            if !self.mailbox.answer_request(expected, self.payload_len) {
                tally.errors += 1;
            }
            match &mut self.eventfds {
                None => {
                    futex_wake(self.mailbox.reply_flag(), 1);
                }
                Some((_, reply)) => reply.write_all(&1u64.to_ne_bytes())?,
            }
            self.parks.message_done();
        }
        tally.parks = self.parks.parks();
        Ok(tally)
    }
}
