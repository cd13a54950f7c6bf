//! Raw access to this worker's own channel region, past the SDK: where the
//! rings lie, a way to publish any words in the response ring (worker →
//! engine), and a way to write any release index into the request ring
//! (engine → worker), whose producer is the engine.
//!
//! A well-behaved worker writes its response ring only through
//! `nocturne_ipc::channel::Sender`, which keeps every field consistent. This
//! module writes a slot's header words and its sequence word itself, so it can
//! publish exactly the lies the engine must survive: a placement, length or
//! arena offset that is wrong, or a sequence word from another lap. The region
//! is found the way any code in the process could find it — the memfd among
//! `/proc/self/fd` — and mapped a second time, so the writes land in the very
//! memory the engine reads.
// Mapping the memfd again, reading the region header and writing slot words
// are raw memory accesses.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

use nocturne_ipc::channel::{region_field, REGION_HEADER_LEN, REGION_MAGIC};
use nocturne_ipc::message::BODY_WORDS;
use nocturne_ipc::region::{MemfdRegion, Region};
use nocturne_ipc::ring::{self, RingLayout, SEQ_LEN};

/// Why the region header does not describe a response ring we can write.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The region is shorter than its own header.
    #[error("region of {0} bytes is shorter than a channel header")]
    TooSmall(usize),
    /// Not a nocturne channel.
    #[error("region magic {0:#x} is not a nocturne channel's")]
    BadMagic(u64),
    /// The ring geometry in the header is impossible.
    #[error("ring geometry {slots} x {slot_size} B is invalid: {source}")]
    BadRing {
        /// Slots in the header.
        slots: u32,
        /// Slot size in the header.
        slot_size: u32,
        /// What is wrong with it.
        source: ring::LayoutError,
    },
    /// A ring would lie (partly) outside the region.
    #[error("{ring} ring at {offset} (+{len} B) lies outside the {region} B region")]
    OutOfBounds {
        /// Which ring.
        ring: &'static str,
        /// Ring offset in the header.
        offset: u64,
        /// Ring length from its geometry.
        len: usize,
        /// Region length.
        region: usize,
    },
}

/// Why this process's channel region could not be found.
#[derive(Debug, thiserror::Error)]
pub enum FindError {
    /// `/proc/self/fd` could not be read.
    #[error("cannot list /proc/self/fd: {0}")]
    ListFds(#[source] io::Error),
    /// No open descriptor is a sealed memfd holding a channel.
    #[error("no open file descriptor is a sealed memfd holding a nocturne channel")]
    NotFound,
}

/// The rings of a channel region, writable word by word.
pub struct RawChannel<'r> {
    region: &'r dyn Region,
    /// Offset of the request ring from the region's start.
    request_ring: usize,
    /// Offset of the response ring from the region's start.
    response_ring: usize,
    ring: RingLayout,
    arena_bytes: u32,
}

impl<'r> RawChannel<'r> {
    /// Reads the region header (as the engine wrote it) and checks that the
    /// rings it names lie within the region.
    pub fn new(region: &'r dyn Region) -> Result<Self, LayoutError> {
        let len = region.len();
        if len < REGION_HEADER_LEN {
            return Err(LayoutError::TooSmall(len));
        }
        let base = region.base();
        let u32_at = |off: usize| {
            // SAFETY: `off + 4 <= REGION_HEADER_LEN <= len` for every field
            // read below, the base is page-aligned and the fields are at
            // multiples of 4; volatile because another process wrote it.
            u32::from_le(unsafe { base.add(off).cast::<u32>().read_volatile() })
        };
        let u64_at = |off: usize| u64::from(u32_at(off)) | u64::from(u32_at(off + 4)) << 32;
        let magic = u64_at(region_field::MAGIC);
        if magic != REGION_MAGIC {
            return Err(LayoutError::BadMagic(magic));
        }
        let slots = u32_at(region_field::RING_SLOTS);
        let slot_size = u32_at(region_field::SLOT_SIZE);
        let ring = RingLayout::new(slots, slot_size).map_err(|source| LayoutError::BadRing {
            slots,
            slot_size,
            source,
        })?;
        let ring_at = |ring_name: &'static str, field: usize| {
            let offset = u64_at(field);
            usize::try_from(offset)
                .ok()
                .filter(|o| o % 128 == 0)
                .filter(|o| o.checked_add(ring.bytes()).is_some_and(|end| end <= len))
                .ok_or(LayoutError::OutOfBounds {
                    ring: ring_name,
                    offset,
                    len: ring.bytes(),
                    region: len,
                })
        };
        Ok(Self {
            region,
            request_ring: ring_at("request", region_field::REQ_RING)?,
            response_ring: ring_at("response", region_field::RESP_RING)?,
            ring,
            arena_bytes: u32_at(region_field::ARENA_BYTES),
        })
    }

    /// Stores `value` as the request ring's release index — the word in
    /// which this worker, the ring's consumer, tells the engine how far it has
    /// read. The SDK's receiver stores the true position again each time it
    /// takes a message.
    pub fn write_request_release(&self, value: u64) {
        // SAFETY: `new` checked that the request ring lies within the region;
        // its release word is at a fixed, 128-aligned offset inside the ring
        // header; the region stays mapped while `self.region` is borrowed.
        unsafe {
            let word = self
                .region
                .base()
                .add(self.request_ring + ring::RELEASE_OFFSET)
                .cast::<u64>();
            // Release: pairs with the engine producer's Acquire load of the
            // release index (as the SDK's own store does).
            AtomicU64::from_ptr(word).store(value, Ordering::Release);
        }
    }

    /// Slots of the response ring.
    pub fn capacity(&self) -> u32 {
        self.ring.capacity()
    }

    /// Data bytes of each payload arena.
    pub fn arena_bytes(&self) -> u32 {
        self.arena_bytes
    }

    /// Writes `words` as the header of the slot of position `pos` and then
    /// publishes `seq` as its sequence word (`pos + 1` is what a consumer at
    /// `pos` takes as "ready"). No check at all: that is the point.
    pub fn publish(&self, pos: u64, words: &[u64; BODY_WORDS], seq: u64) {
        let index = (pos & u64::from(self.ring.capacity() - 1)) as usize;
        let slot_offset = self.response_ring + self.ring.slot_offset(index);
        // SAFETY: `new` checked that the whole ring (slots included) lies
        // within the region, and `index < capacity`, so the slot's
        // `slot_size >= 64` bytes are in bounds; slots sit at multiples of 64
        // (their stride may add one unused line)
        // from a 128-aligned ring in a page-aligned region, so every word is
        // 8-aligned. The region stays mapped while `self.region` is borrowed.
        unsafe {
            let slot = self.region.base().add(slot_offset);
            let body = slot.add(SEQ_LEN).cast::<u64>();
            for (i, word) in words.iter().enumerate() {
                body.add(i).write_volatile(*word);
            }
            // Release: pairs with the engine consumer's Acquire load of this
            // sequence word, so it sees the header words written above.
            AtomicU64::from_ptr(slot.cast::<u64>()).store(seq, Ordering::Release);
        }
    }
}

/// Finds this process's channel: the sealed memfd (among the open
/// descriptors) that holds a channel header, mapped a second time.
pub fn find_own_region() -> Result<MemfdRegion, FindError> {
    let dir = std::fs::read_dir("/proc/self/fd").map_err(FindError::ListFds)?;
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if !target.to_string_lossy().starts_with("/memfd:") {
            continue;
        }
        // SAFETY: fcntl(F_DUPFD_CLOEXEC) takes plain integers; if `fd` was
        // closed since it was listed the call fails with EBADF (or dups
        // whatever took the number, which `attach` then checks like anything else).
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            continue;
        }
        // SAFETY: `dup` is a descriptor fcntl just created for us alone.
        let owned = unsafe { OwnedFd::from_raw_fd(dup) };
        // `attach` refuses an unsealed file; `RawChannel::new` anything that
        // is not a channel.
        if let Ok(region) = MemfdRegion::attach(owned) {
            if RawChannel::new(&region).is_ok() {
                return Ok(region);
            }
        }
    }
    Err(FindError::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    use nocturne_ipc::region::HeapRegion;

    #[test]
    fn refuses_regions_that_are_not_channels() {
        let tiny = HeapRegion::new(128);
        assert!(matches!(
            RawChannel::new(&tiny),
            Err(LayoutError::TooSmall(128))
        ));
        let zeros = HeapRegion::new(4096);
        assert!(matches!(
            RawChannel::new(&zeros),
            Err(LayoutError::BadMagic(0))
        ));
    }
}
