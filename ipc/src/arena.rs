//! The per-direction payload arena: a byte ring for payloads larger than a
//! slot's inline space, in the same region as the rings. No file, mapping or
//! system call per message.
//!
//! Layout (offsets from the arena's start):
//!
//! | off | size  | content                                              |
//! |-----|-------|------------------------------------------------------|
//! | 0   | 128   | constants: magic, version, data size                 |
//! | 128 | 128   | receiver line: release position (u64)                |
//! | 256 | …     | loom-only access trackers (zero bytes normally)      |
//! | D   | size  | data                                                 |
//!
//! Protocol. Both sides count bytes in monotonically increasing *positions*;
//! the data offset of position `p` is always `p mod size`. An allocation of
//! `len` bytes takes `alen = round_up(len, 64)` bytes at the sender's current
//! offset if they fit before the end of the data area, else the tail is
//! skipped and it starts at offset 0 (`place`, the one rule both sides
//! apply). Messages are consumed in ring order, so the receiver mirrors the
//! sender's cursor exactly: it knows the offset the next arena payload *must*
//! have, and anything else is a protocol error. After reading, the receiver
//! publishes its new position (Release; once per message or per batch); the
//! sender caches it and re-reads it (Acquire) only when its cached copy says
//! there is no room. An allocation fits when it ends no more than `size`
//! bytes after the oldest unreleased position — or, when everything is
//! released, whenever `alen <= size` (so any payload up to `size` eventually
//! fits, even one that needs a skip).
#![allow(unsafe_code)]

use crate::ring::{check_release, ProtocolError};
use crate::sync::{init_atomic_u64, AccessTracker, AtomicU64, Ordering};
use std::mem::size_of;

/// "NARN" — identifies an arena header.
pub const ARENA_MAGIC: u32 = 0x4e52_414e;
/// Arena layout version.
pub const ARENA_VERSION: u32 = 1;
/// Bytes of arena header before the trackers and data.
pub const ARENA_HEADER_LEN: usize = 256;
/// Allocation granule (and data alignment).
pub const GRANULE: u64 = 64;
/// Offset of the receiver's release position (u64) within the arena.
pub const RELEASE_OFFSET: usize = 128;

/// Bytes the arena of `size` data bytes occupies in a region.
pub(crate) fn arena_bytes(size: u32) -> usize {
    data_offset(size) + size as usize
}

/// Offset of the data area within an arena of `size` bytes.
pub fn data_offset(size: u32) -> usize {
    let trackers = (size as u64 / GRANULE) as usize * size_of::<AccessTracker>();
    ARENA_HEADER_LEN + trackers.next_multiple_of(128)
}

/// Where an allocation of `alen` bytes starts when the cursor is at `off`
/// (0 ≤ off ≤ size), and how many tail bytes are skipped to get there.
#[inline(always)]
pub(crate) fn place(off: u64, size: u64, alen: u64) -> (u64, u64) {
    if size - off >= alen {
        (off, 0)
    } else {
        (0, size - off)
    }
}

/// Why an arena could not be attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArenaAttachError {
    /// Wrong magic.
    #[error("bad arena magic {0:#x}")]
    BadMagic(u32),
    /// Unsupported version.
    #[error("unsupported arena version {0}")]
    BadVersion(u32),
    /// Size differs from the channel's.
    #[error("arena size {found} differs from the expected {expected}")]
    SizeMismatch {
        /// Size in the header.
        found: u32,
        /// Size expected.
        expected: u32,
    },
}

/// Initializes an arena header.
///
/// # Safety
/// `base` valid for writes of `arena_bytes(size)` bytes, 128-aligned, unshared.
pub(crate) unsafe fn init_raw(base: *mut u8, size: u32) {
    // SAFETY: within the arena; aligned; unshared (caller's contract).
    unsafe {
        base.cast::<u32>().write(ARENA_MAGIC);
        base.add(4).cast::<u32>().write(ARENA_VERSION);
        base.add(8).cast::<u32>().write(size);
        init_atomic_u64(base.add(RELEASE_OFFSET), 0);
        AccessTracker::init_array(base.add(ARENA_HEADER_LEN), (size as u64 / GRANULE) as usize);
    }
}

/// Checks an arena header.
///
/// # Safety
/// `base` valid for reads of [`ARENA_HEADER_LEN`] bytes, 8-aligned.
pub(crate) unsafe fn check_raw(base: *const u8, size: u32) -> Result<(), ArenaAttachError> {
    // SAFETY: within the header (caller's contract).
    let (magic, version, found) = unsafe {
        (
            base.cast::<u32>().read_volatile(),
            base.add(4).cast::<u32>().read_volatile(),
            base.add(8).cast::<u32>().read_volatile(),
        )
    };
    if magic != ARENA_MAGIC {
        return Err(ArenaAttachError::BadMagic(magic));
    }
    if version != ARENA_VERSION {
        return Err(ArenaAttachError::BadVersion(version));
    }
    if found != size {
        return Err(ArenaAttachError::SizeMismatch {
            found,
            expected: size,
        });
    }
    Ok(())
}

#[derive(Clone, Copy)]
struct ArenaPtrs {
    data: *mut u8,
    #[cfg_attr(not(loom), allow(dead_code))]
    trackers: *const u8,
    release: *const AtomicU64,
    size: u64,
}

impl ArenaPtrs {
    /// # Safety
    /// `base` points at an initialized arena of `size` that outlives the value.
    unsafe fn new(base: *mut u8, size: u32) -> Self {
        // SAFETY: RELEASE_OFFSET, ARENA_HEADER_LEN and `data_offset(size)`
        // all lie within the `arena_bytes(size)` bytes of the arena at
        // `base` (caller's contract).
        unsafe {
            Self {
                data: base.add(data_offset(size)),
                trackers: base.add(ARENA_HEADER_LEN),
                release: base.add(RELEASE_OFFSET).cast(),
                size: size as u64,
            }
        }
    }

    #[inline(always)]
    fn release(&self) -> &AtomicU64 {
        // SAFETY: an AtomicU64 initialized in place by `init_raw` at an
        // 8-aligned offset of the 128-aligned arena, which outlives `self`
        // (`new`'s contract).
        unsafe { &*self.release }
    }

    /// Loom write guards for the granules of `[start, start + alen)`.
    #[cfg(loom)]
    fn write_guards(&self, start: u64, alen: u64) -> Vec<crate::sync::WriteGuard> {
        (start / GRANULE..(start + alen) / GRANULE)
            // SAFETY: granule index < size / GRANULE initialized trackers.
            .map(|g| unsafe { AccessTracker::at(self.trackers, g as usize) }.write())
            .collect()
    }

    #[cfg(loom)]
    fn read_guards(&self, start: u64, alen: u64) -> Vec<crate::sync::ReadGuard> {
        (start / GRANULE..(start + alen) / GRANULE)
            // SAFETY: granule index < size / GRANULE initialized trackers.
            .map(|g| unsafe { AccessTracker::at(self.trackers, g as usize) }.read())
            .collect()
    }
}

/// Loom read guards held by a message view over arena bytes (nothing outside
/// loom).
#[cfg(loom)]
pub(crate) type ArenaReadGuards = Vec<crate::sync::ReadGuard>;
#[cfg(not(loom))]
pub(crate) type ArenaReadGuards = crate::sync::ReadGuard;
/// Read guards for a message without arena bytes.
#[inline(always)]
pub(crate) fn no_read_guards() -> ArenaReadGuards {
    #[cfg(loom)]
    return Vec::new();
    #[cfg(not(loom))]
    crate::sync::ReadGuard
}

/// Loom write guards held while the sender fills arena bytes.
#[cfg(loom)]
pub(crate) type ArenaWriteGuards = Vec<crate::sync::WriteGuard>;
#[cfg(not(loom))]
pub(crate) type ArenaWriteGuards = crate::sync::WriteGuard;

/// Why the sender could not allocate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AllocError {
    /// No room until the receiver releases more.
    Full,
    /// Larger than the whole arena.
    TooLarge,
    /// The receiver's release position is impossible.
    Protocol(ProtocolError),
}

/// An allocation made by [`ArenaWriter::try_alloc`], committed with
/// [`ArenaWriter::commit`] once the message is written.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Allocation {
    pub(crate) offset: u32,
    pub(crate) ptr: *mut u8,
    next_pos: u64,
    next_off: u64,
}

/// The sender's side of an arena.
pub(crate) struct ArenaWriter {
    ptrs: ArenaPtrs,
    head: u64,
    off: u64,
    cached_release: u64,
}

// SAFETY: the pointers are into shared memory that the owner (a `Sender`,
// holding the region's Arc) keeps mapped wherever the writer moves; nothing
// in the writer is tied to a thread. It is the only writer of the bytes the
// receiver has released, synchronised with it by the release position.
unsafe impl Send for ArenaWriter {}

impl ArenaWriter {
    /// # Safety
    /// `base` points at an initialized arena of `size` bytes that outlives the
    /// value; only one writer exists.
    pub(crate) unsafe fn new(base: *mut u8, size: u32) -> Self {
        // SAFETY: forwarded.
        let ptrs = unsafe { ArenaPtrs::new(base, size) };
        Self {
            ptrs,
            head: 0,
            off: 0,
            cached_release: 0,
        }
    }

    #[inline(always)]
    fn fits(&self, release: u64, need: u64) -> bool {
        let in_use = self.head - release;
        in_use == 0 || in_use + need <= self.ptrs.size
    }

    /// Finds room for `len` bytes. Nothing is reserved until `commit`.
    #[inline]
    pub(crate) fn try_alloc(&mut self, len: usize) -> Result<Allocation, AllocError> {
        let alen = (len as u64).next_multiple_of(GRANULE);
        if alen > self.ptrs.size {
            return Err(AllocError::TooLarge);
        }
        let (start, skip) = place(self.off, self.ptrs.size, alen);
        let need = skip + alen;
        if !self.fits(self.cached_release, need) {
            let release = self.read_release().map_err(AllocError::Protocol)?;
            if !self.fits(release, need) {
                return Err(AllocError::Full);
            }
        }
        Ok(Allocation {
            offset: start as u32,
            // SAFETY: start + alen <= size: within the data area.
            ptr: unsafe { self.ptrs.data.add(start as usize) },
            next_pos: self.head + need,
            next_off: start + alen,
        })
    }

    /// The receiver's release position, checked (never ahead of the head,
    /// never back) and cached.
    #[cold]
    fn read_release(&mut self) -> Result<u64, ProtocolError> {
        // Acquire pairs with the receiver's Release store in
        // `ArenaReader::release`: its reads of the released bytes are done.
        let loaded = self.ptrs.release().load(Ordering::Acquire);
        let release = check_release(loaded, self.cached_release, self.head)?;
        self.cached_release = release;
        Ok(release)
    }

    /// Turns this writer into a reader of the bytes the receiver never
    /// released, for when the receiver is gone for good: a reader whose
    /// cursor is the release position, so that it expects the first
    /// unreleased payload exactly where the writer put it.
    pub(crate) fn into_unreleased(mut self) -> Result<ArenaReader, ProtocolError> {
        let release = self.read_release()?;
        // `pos` and `off` advance together, a wrap skipping `size - off`, so
        // `off` is `pos` modulo the size (an `off` of `size` places like 0).
        let off = if self.ptrs.size == 0 {
            0
        } else {
            release % self.ptrs.size
        };
        Ok(ArenaReader {
            ptrs: self.ptrs,
            pos: release,
            off,
            released: release,
        })
    }

    /// Loom write guards over an allocation of `len` bytes (nothing outside
    /// loom); hold them while writing.
    #[inline(always)]
    pub(crate) fn guards(&self, a: &Allocation, len: usize) -> ArenaWriteGuards {
        #[cfg(loom)]
        {
            self.ptrs
                .write_guards(a.offset as u64, (len as u64).next_multiple_of(GRANULE))
        }
        #[cfg(not(loom))]
        {
            let _ = (a, len);
            crate::sync::WriteGuard
        }
    }

    /// Copies `bytes` into the allocation (loom: under write guards).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn write(&self, a: &Allocation, bytes: &[u8]) {
        let _g = self.guards(a, bytes.len());
        // SAFETY: the allocation's bytes are free (the receiver released them or
        // never had them) and `bytes.len()` <= its length.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), a.ptr, bytes.len()) };
    }

    /// Takes the allocation (call before publishing the message that names it).
    #[inline(always)]
    pub(crate) fn commit(&mut self, a: &Allocation) {
        self.head = a.next_pos;
        self.off = a.next_off;
    }
}

/// Why an arena payload location is not the one the receiver expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArenaError {
    /// The arena of this direction has no bytes.
    #[error("arena payload of {len} bytes but the arena is disabled")]
    Disabled {
        /// Claimed length.
        len: u32,
    },
    /// The length does not fit in the arena.
    #[error("arena payload of {len} bytes exceeds the arena's {size}")]
    TooLong {
        /// Claimed length.
        len: u32,
        /// Arena size.
        size: u64,
    },
    /// The offset is not where the sender's next allocation must be.
    #[error("arena payload at offset {found}, expected {expected}")]
    BadOffset {
        /// Offset in the header.
        found: u32,
        /// Offset the protocol dictates.
        expected: u64,
    },
}

/// A validated arena payload, consumed with [`ArenaReader::consume`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Located {
    pub(crate) ptr: *const u8,
    next_pos: u64,
    next_off: u64,
}

/// The receiver's side of an arena.
pub(crate) struct ArenaReader {
    ptrs: ArenaPtrs,
    pos: u64,
    off: u64,
    released: u64,
}

// SAFETY: as for ArenaWriter, with a `Receiver` as the owner that keeps the
// memory mapped; the reader only reads bytes the writer published and hands
// them back through the release position.
unsafe impl Send for ArenaReader {}

impl ArenaReader {
    /// # Safety
    /// As [`ArenaWriter::new`], for the single reader.
    pub(crate) unsafe fn new(base: *mut u8, size: u32) -> Self {
        // SAFETY: forwarded.
        let ptrs = unsafe { ArenaPtrs::new(base, size) };
        Self {
            ptrs,
            pos: 0,
            off: 0,
            released: 0,
        }
    }

    /// Checks a payload location against the mirrored sender cursor.
    #[inline]
    pub(crate) fn locate(&self, offset: u32, len: u32) -> Result<Located, ArenaError> {
        let size = self.ptrs.size;
        if size == 0 {
            return Err(ArenaError::Disabled { len });
        }
        let alen = (len as u64).next_multiple_of(GRANULE);
        if alen > size {
            return Err(ArenaError::TooLong { len, size });
        }
        let (start, skip) = place(self.off, size, alen);
        if offset as u64 != start {
            return Err(ArenaError::BadOffset {
                found: offset,
                expected: start,
            });
        }
        Ok(Located {
            // SAFETY: start + alen <= size: within the data area.
            ptr: unsafe { self.ptrs.data.add(start as usize) },
            next_pos: self.pos + skip + alen,
            next_off: start + alen,
        })
    }

    /// Loom read guards over a located payload of `len` bytes.
    #[inline(always)]
    pub(crate) fn guards(&self, l: &Located, len: u32) -> ArenaReadGuards {
        #[cfg(loom)]
        {
            // SAFETY: l.ptr is within the data area.
            let start = unsafe { l.ptr.offset_from(self.ptrs.data) } as u64;
            self.ptrs
                .read_guards(start, (len as u64).next_multiple_of(GRANULE))
        }
        #[cfg(not(loom))]
        {
            let _ = (l, len);
            crate::sync::ReadGuard
        }
    }

    /// Moves the cursor past a located payload (not yet released).
    #[inline(always)]
    pub(crate) fn consume(&mut self, l: &Located) {
        self.pos = l.next_pos;
        self.off = l.next_off;
    }

    /// Hands every consumed byte back to the sender.
    #[inline]
    pub(crate) fn release(&mut self) {
        if self.released != self.pos {
            // Release pairs with the writer's Acquire load in
            // `ArenaWriter::read_release` (from `try_alloc` and the read-back
            // of unreleased messages): our reads of the released bytes happen
            // before the writer overwrites them.
            self.ptrs.release().store(self.pos, Ordering::Release);
            self.released = self.pos;
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::region::{HeapRegion, Region};

    #[test]
    fn place_skips_only_a_too_small_tail() {
        assert_eq!(place(0, 1024, 1024), (0, 0));
        assert_eq!(place(960, 1024, 64), (960, 0));
        assert_eq!(place(960, 1024, 128), (0, 64));
        assert_eq!(place(1024, 1024, 64), (0, 0));
    }

    #[test]
    fn alloc_release_wrap_and_full() {
        let size = 1024u32;
        let region = HeapRegion::new(arena_bytes(size));
        // SAFETY: a fresh, page-aligned region of `arena_bytes(size)` bytes
        // that nothing else uses.
        unsafe { init_raw(region.base(), size) };
        // SAFETY: initialized above; region outlives both.
        let (mut w, mut r) = unsafe {
            (
                ArenaWriter::new(region.base(), size),
                ArenaReader::new(region.base(), size),
            )
        };
        assert_eq!(w.try_alloc(1025).unwrap_err(), AllocError::TooLarge);
        // 3 x 320 (= 5 granules) fill 960 bytes.
        let mut pending = Vec::new();
        for i in 0..3u8 {
            let a = w.try_alloc(300).unwrap();
            w.write(&a, &[i; 300]);
            w.commit(&a);
            pending.push((a.offset, 300u32));
        }
        // The next one would need a 64-byte tail skip + 128: no room.
        assert_eq!(w.try_alloc(100).unwrap_err(), AllocError::Full);
        // After the receiver releases the first, skip + 320 fits exactly at 0.
        let (off, len) = pending.remove(0);
        let l = r.locate(off, len).unwrap();
        r.consume(&l);
        r.release();
        let a = w.try_alloc(300).unwrap();
        assert_eq!(a.offset, 0);
        w.commit(&a);
        // [320, 384) is still the second message's: no room for 64 bytes.
        assert_eq!(w.try_alloc(64).unwrap_err(), AllocError::Full);
        // The receiver mirrors the cursor: a wrong offset is refused.
        let (off, len) = pending.remove(0);
        assert_eq!(
            r.locate(off + 64, len).unwrap_err(),
            ArenaError::BadOffset {
                found: off + 64,
                expected: 320
            }
        );
        for (off, len) in [(off, len), (640, 300), (0, 300)] {
            let l = r.locate(off, len).unwrap();
            r.consume(&l);
        }
        r.release();
        // Everything released: a full-size allocation fits although the cursor
        // sits at 320 (it needs a 704-byte skip).
        let a = w.try_alloc(1024).unwrap();
        assert_eq!(a.offset, 0);
        w.commit(&a);
        assert_eq!(
            r.locate(0, 1024).map(|l| l.next_pos).unwrap(),
            960 + 384 + 704 + 1024
        );
        assert_eq!(
            r.locate(0, 1025).unwrap_err(),
            ArenaError::TooLong {
                len: 1025,
                size: 1024
            }
        );
    }

    #[test]
    fn hostile_release_is_detected() {
        let size = 256u32;
        let region = HeapRegion::new(arena_bytes(size));
        // SAFETY: fresh region.
        unsafe { init_raw(region.base(), size) };
        // SAFETY: initialized above.
        let mut w = unsafe { ArenaWriter::new(region.base(), size) };
        let a = w.try_alloc(256).unwrap();
        w.commit(&a);
        // SAFETY: the release word.
        unsafe {
            region
                .base()
                .add(RELEASE_OFFSET)
                .cast::<u64>()
                .write_volatile(512)
        };
        assert!(matches!(
            w.try_alloc(64),
            Err(AllocError::Protocol(ProtocolError::BadRelease {
                release: 512,
                ..
            }))
        ));
        // SAFETY: header within the region.
        let checked = unsafe { check_raw(region.base(), 128) };
        assert_eq!(
            checked,
            Err(ArenaAttachError::SizeMismatch {
                found: 256,
                expected: 128
            })
        );
    }
}
