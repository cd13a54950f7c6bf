//! A plain shared-memory mailbox for the non-ring baselines: one request
//! area (64-byte header + payload) and one 64-byte reply line in a sealed
//! memfd, each led by its own ready flag — no ring, no indices, no arena.
//!
//! The flag is the header's first word, so a 64-byte message is exactly one
//! cache line moving between cores (as a ring slot carrying its own
//! sequence is). A writer fills the bytes after the flag, then stores the
//! flag (`Release`); a reader loads it (`Acquire`), then reads the bytes.
//! The futex and eventfd baselines use the same mailbox and add their
//! wake-up on top.
//!
//! ```text
//! 0     reply line: flag u32 | RawHeader bytes 4..64
//! 256   request: flag u32 | RawHeader bytes 4..64 | payload (max_payload bytes)
//! ```
#![allow(unsafe_code)]

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

use nocturne_ipc::region::{MemfdRegion, Region, RegionError};

use super::msg::{checksum, RawHeader, HEADER_BYTES, REPLY_BYTES};

const REPLY_OFFSET: usize = 0;
const REQUEST_OFFSET: usize = 256;

/// Why a mailbox could not be created or attached.
#[derive(Debug, thiserror::Error)]
pub enum MailboxError {
    /// The memfd could not be created, sealed or mapped.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// The received region is too small for the payload size agreed on.
    #[error("mailbox region has {len} bytes, {need} needed")]
    TooSmall {
        /// Bytes in the region.
        len: usize,
        /// Bytes the payload size needs.
        need: usize,
    },
}

/// A request whose header says more bytes than the mailbox holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("request header claims {len} payload bytes, the mailbox holds {max}")]
pub struct BadRequestLength {
    /// Claimed length.
    pub len: u64,
    /// Capacity.
    pub max: usize,
}

/// One side's mapping of the mailbox.
pub struct Mailbox {
    region: MemfdRegion,
    max_payload: usize,
}

impl Mailbox {
    /// Bytes of region a mailbox for `max_payload` needs.
    pub fn region_len(max_payload: usize) -> usize {
        REQUEST_OFFSET + HEADER_BYTES + max_payload
    }

    /// Creates a sealed, zeroed mailbox (the driver's side).
    pub fn create(max_payload: usize) -> Result<Self, MailboxError> {
        let region = MemfdRegion::create("nocturne-bench-mailbox", Self::region_len(max_payload))?;
        region.seal()?;
        Ok(Self {
            region,
            max_payload,
        })
    }

    /// Maps a mailbox received from the driver (the peer's side).
    pub fn attach(fd: OwnedFd, max_payload: usize) -> Result<Self, MailboxError> {
        let region = MemfdRegion::attach(fd)?;
        let need = Self::region_len(max_payload);
        if region.len() < need {
            return Err(MailboxError::TooSmall {
                len: region.len(),
                need,
            });
        }
        Ok(Self {
            region,
            max_payload,
        })
    }

    /// The memfd, to hand to the peer.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.region.fd()
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: every offset used is 4-aligned inside the region (whose
        // base is page-aligned and which lives as long as `self`); the word
        // is only ever accessed atomically, by both processes.
        unsafe { &*self.region.base().add(offset).cast::<AtomicU32>() }
    }

    /// The request's ready flag: the sequence number of the last request.
    pub fn request_flag(&self) -> &AtomicU32 {
        self.word(REQUEST_OFFSET)
    }

    /// The reply's ready flag: the sequence number of the last reply.
    pub fn reply_flag(&self) -> &AtomicU32 {
        self.word(REPLY_OFFSET)
    }

    /// Writes the request header and `payload`, then publishes `seq`.
    ///
    /// # Panics
    /// If `payload` is larger than the mailbox.
    #[inline]
    pub fn post_request(&self, seq: u32, payload: &[u8]) {
        assert!(
            payload.len() <= self.max_payload,
            "payload larger than the mailbox"
        );
        let mut header = [0u8; HEADER_BYTES];
        RawHeader {
            flag: seq,
            seq: u64::from(seq),
            len: payload.len() as u64,
            checksum: 0,
        }
        .emit(&mut header);
        // SAFETY: both ranges lie inside the region (checked length above);
        // the peer reads them only after acquiring the flag stored below, and
        // does not touch them again until the next request is published, so
        // nothing reads these bytes while they are written. Bytes 0..4 (the
        // flag) are left to the atomic store.
        unsafe {
            let request = self.region.base().add(REQUEST_OFFSET);
            std::ptr::copy_nonoverlapping(
                payload.as_ptr(),
                request.add(HEADER_BYTES),
                payload.len(),
            );
            std::ptr::copy_nonoverlapping(header[4..].as_ptr(), request.add(4), HEADER_BYTES - 4);
        }
        // Release: publishes the bytes above; pairs with the Acquire load of
        // `request_flag` in the peer's wait.
        self.request_flag().store(seq, Ordering::Release);
    }

    /// The current request: its header (copied out) and a view of its payload.
    /// Call only after an `Acquire` load of [`request_flag`](Self::request_flag)
    /// returned the sequence number being served.
    #[inline]
    pub fn request(&self) -> Result<(RawHeader, &[u8]), BadRequestLength> {
        let mut bytes = [0u8; HEADER_BYTES];
        // SAFETY: inside the region; published by the driver's Release store
        // of the flag, which the caller acquired, and not rewritten until we
        // reply.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.region.base().add(REQUEST_OFFSET),
                bytes.as_mut_ptr(),
                HEADER_BYTES,
            );
        }
        let header = RawHeader::parse(&bytes).expect("a full header was copied");
        let len = usize::try_from(header.len)
            .ok()
            .filter(|&len| len <= self.max_payload)
            .ok_or(BadRequestLength {
                len: header.len,
                max: self.max_payload,
            })?;
        // SAFETY: `len` is bounds-checked against the mailbox above; the bytes
        // are stable until we reply (same protocol as the header).
        let payload = unsafe {
            std::slice::from_raw_parts(self.region.base().add(REQUEST_OFFSET + HEADER_BYTES), len)
        };
        Ok((header, payload))
    }

    /// Writes the 64-byte reply to `seq`, then publishes it.
    #[inline]
    pub fn post_reply(&self, seq: u32, checksum: u64) {
        let mut reply = [0u8; REPLY_BYTES];
        RawHeader {
            flag: seq,
            seq: u64::from(seq),
            len: 0,
            checksum,
        }
        .emit(&mut reply);
        // SAFETY: inside the region; the driver reads the reply line only
        // after acquiring the flag stored below, and does not post the next
        // request (after which we write again) before reading it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                reply[4..].as_ptr(),
                self.region.base().add(REPLY_OFFSET + 4),
                REPLY_BYTES - 4,
            );
        }
        // Release: publishes the reply bytes; pairs with the driver's Acquire
        // load of `reply_flag`.
        self.reply_flag().store(seq, Ordering::Release);
    }

    /// The peer's answer to request `seq`, expected to carry `payload_len`
    /// bytes: replies with the payload's checksum when the request is the
    /// one expected, with 0 otherwise (the driver then sees a wrong
    /// checksum). Returns whether it was the one expected. Call as
    /// [`request`](Self::request).
    #[inline]
    pub fn answer_request(&self, seq: u32, payload_len: usize) -> bool {
        let sum = match self.request() {
            Ok((header, payload))
                if header.seq == u64::from(seq) && payload.len() == payload_len =>
            {
                Some(checksum(payload))
            }
            _ => None,
        };
        self.post_reply(seq, sum.unwrap_or(0));
        sum.is_some()
    }

    /// The current reply, copied out (all 64 bytes). Call only after an
    /// `Acquire` load of [`reply_flag`](Self::reply_flag).
    #[inline]
    pub fn reply(&self) -> RawHeader {
        let mut bytes = [0u8; REPLY_BYTES];
        // SAFETY: inside the region; published by the peer's Release store
        // of the reply flag, which the caller acquired.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.region.base().add(REPLY_OFFSET + 4),
                bytes.as_mut_ptr().add(4),
                REPLY_BYTES - 4,
            );
        }
        let mut reply = RawHeader::parse(&bytes).expect("a full reply was copied");
        // Acquire: (re)reads the flag word the caller already acquired.
        reply.flag = self.reply_flag().load(Ordering::Acquire);
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::msg::{checksum, payload_pattern};

    #[test]
    fn request_and_reply_cross_two_mappings() {
        let driver = Mailbox::create(1000).unwrap();
        let peer = Mailbox::attach(driver.fd().try_clone_to_owned().unwrap(), 1000).unwrap();
        let payload = payload_pattern(1000);
        driver.post_request(7, &payload);
        assert_eq!(peer.request_flag().load(Ordering::Acquire), 7);
        let (header, seen) = peer.request().unwrap();
        assert_eq!((header.seq, header.len), (7, 1000));
        assert_eq!(seen, &payload[..]);
        peer.post_reply(7, checksum(seen));
        assert_eq!(driver.reply_flag().load(Ordering::Acquire), 7);
        let reply = driver.reply();
        assert_eq!((reply.flag, reply.seq), (7, 7));
        assert_eq!(reply.checksum, checksum(&payload));
    }

    #[test]
    fn attach_refuses_a_small_region_and_reads_reject_bad_lengths() {
        let driver = Mailbox::create(64).unwrap();
        let fd = driver.fd().try_clone_to_owned().unwrap();
        assert!(matches!(
            Mailbox::attach(fd, 1 << 20),
            Err(MailboxError::TooSmall { .. })
        ));
        // A peer that agreed on a smaller size refuses the longer request.
        let small = Mailbox::attach(driver.fd().try_clone_to_owned().unwrap(), 16).unwrap();
        driver.post_request(1, &[1; 64]);
        assert_eq!(small.request(), Err(BadRequestLength { len: 64, max: 16 }));
    }
}
