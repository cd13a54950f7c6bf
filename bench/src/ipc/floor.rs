//! `atomic-floor/N`: the request and reply bytes moved through a plain
//! shared-memory [`Mailbox`] with one ready flag per direction, both sides
//! spinning — the physical floor any ring of the same bytes is measured
//! against.

use std::time::Instant;

use std::sync::atomic::Ordering;

use super::guard::{spin_until, Stop};
use super::mailbox::Mailbox;
use super::msg::{checksum, payload_pattern};
use super::{
    CaseError, Chunk, DriverCase, PeerCase, PeerSetup, PeerTally, SetupError, SetupLink, Tally,
};

/// The driver's side: posts a request, spins for the reply.
pub struct FloorDriver {
    mailbox: Mailbox,
    payload: Vec<u8>,
    expected_sum: u64,
    seq: u32,
}

impl FloorDriver {
    /// Creates the mailbox and hands it to the peer.
    pub fn setup(link: &SetupLink<'_>) -> Result<Self, SetupError> {
        let payload = payload_pattern(link.spec.payload);
        let mailbox = Mailbox::create(payload.len())?;
        link.send(0, &[mailbox.fd()])?;
        Ok(Self {
            expected_sum: checksum(&payload),
            mailbox,
            payload,
            seq: 0,
        })
    }
}

impl DriverCase for FloorDriver {
    fn run_chunk(&mut self, chunk: Chunk, tally: &mut Tally, stop: &Stop) -> Result<(), CaseError> {
        for i in 0..chunk.total() {
            self.seq = self.seq.wrapping_add(1);
            let seq = self.seq;
            let t0 = Instant::now();
            self.mailbox.post_request(seq, &self.payload);
            // Acquire: pairs with the peer's Release store in `post_reply`.
            spin_until(stop, || {
                self.mailbox.reply_flag().load(Ordering::Acquire) == seq
            })?;
            let reply = self.mailbox.reply();
            let elapsed = t0.elapsed();
            let ok = reply.seq == u64::from(seq) && reply.checksum == self.expected_sum;
            tally.record(i >= chunk.warmup, elapsed, ok);
        }
        Ok(())
    }
}

/// The peer's side: spins for a request, reads every byte, replies.
pub struct FloorPeer {
    mailbox: Mailbox,
    payload_len: usize,
    expected: u32,
}

impl FloorPeer {
    /// Attaches the mailbox sent with the setup frame.
    pub fn attach(mut setup: PeerSetup) -> Result<Self, SetupError> {
        let [fd] = setup.take_fds::<1>()?;
        Ok(Self {
            mailbox: Mailbox::attach(fd, setup.spec.payload)?,
            payload_len: setup.spec.payload,
            expected: 0,
        })
    }
}

impl PeerCase for FloorPeer {
    fn serve(&mut self, count: u64, stop: &Stop) -> Result<PeerTally, CaseError> {
        let mut tally = PeerTally::default();
        for _ in 0..count {
            self.expected = self.expected.wrapping_add(1);
            let expected = self.expected;
            // Acquire: pairs with the driver's Release store in `post_request`.
            spin_until(stop, || {
                self.mailbox.request_flag().load(Ordering::Acquire) == expected
            })?;
            if !self.mailbox.answer_request(expected, self.payload_len) {
                tally.errors += 1;
            }
        }
        Ok(tally)
    }
}
