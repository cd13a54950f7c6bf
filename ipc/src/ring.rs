//! A lock-free single-producer/single-consumer ring of fixed-size slots that
//! lives inside a shared [`Region`], designed for the physical floor of one
//! cache-line transfer per message.
//!
//! Layout (`#[repr(C)]`-style fixed offsets from the ring's start; see
//! `docs/ipc.md`):
//!
//! | off | size | content                                                   |
//! |-----|------|-----------------------------------------------------------|
//! | 0   | 128  | constants: magic, version, slot size, capacity            |
//! | 128 | 128  | consumer line: release index (u64, written by consumer)   |
//! | 256 | 128  | doorbell line: sleep word (u32, see [`crate::doorbell`])  |
//! | 384 | …    | loom-only access trackers (zero bytes in a normal build)  |
//! | S   | cap × stride | slots, [`RingLayout::slot_stride`] apart; each starts with its `seq` |
//!
//! Protocol. The producer writes the slot for position `p` (slot `p & mask`),
//! then stores `seq = p + 1` (Release). The consumer at position `p` loads the
//! slot's seq (Acquire): `p + 1` means ready; the value the previous lap left
//! (`p + 1 - cap`, or 0 on the first lap) means empty; anything else is a
//! protocol error (a hostile or broken peer), never UB. So a consumer touches
//! only the slot's own cache line(s) per message — it reads no producer index.
//! The consumer publishes how far it has *released* (Release store in its own
//! line, once per message or once per batch); the producer caches that value
//! and re-reads it (Acquire) only when its cached copy says the ring is full.
//! The index lines are 128 B apart so adjacent-line prefetch does not make the
//! two sides share a line.
//!
//! Everything read from shared memory is checked: the constants on attach,
//! each seq against the two legal values, the release index against the
//! producer's own head (it may never run ahead, nor go backwards).
#![allow(unsafe_code)]

use crate::region::Region;
use crate::sync::{
    init_atomic_u32, init_atomic_u64, AccessTracker, Arc, AtomicU32, AtomicU64, Ordering,
};
use std::mem::size_of;

/// "NRNG" — identifies a ring header.
pub const RING_MAGIC: u32 = 0x474e_524e;
/// Layout version; bumped on any incompatible change (2: slots of an even
/// number of lines, four or more, are padded by a line; see
/// [`RingLayout::slot_stride`]).
pub const RING_VERSION: u32 = 2;
/// Bytes of ring header before the trackers and slots.
pub const RING_HEADER_LEN: usize = 384;
/// Offset of the consumer's release index (u64) within the ring.
pub const RELEASE_OFFSET: usize = 128;
/// Offset of the doorbell word (u32) within the ring.
pub const DOORBELL_OFFSET: usize = 256;
/// Bytes at the start of each slot that hold its sequence word.
pub const SEQ_LEN: usize = 8;
/// Largest supported capacity (slots).
pub const MAX_CAPACITY: u32 = 1 << 20;
/// Largest supported slot size (bytes).
pub const MAX_SLOT_SIZE: u32 = 1 << 20;

/// Geometry of a ring: capacity and slot size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingLayout {
    capacity: u32,
    slot_size: u32,
}

/// A ring geometry that cannot work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// Capacity is zero, not a power of two, or above [`MAX_CAPACITY`].
    #[error("ring capacity {0} is not a power of two in 1..={MAX_CAPACITY}")]
    BadCapacity(u32),
    /// Slot size is not a multiple of 64 in 64..=[`MAX_SLOT_SIZE`].
    #[error("slot size {0} is not a multiple of 64 in 64..={MAX_SLOT_SIZE}")]
    BadSlotSize(u32),
}

impl RingLayout {
    /// Checks and builds a layout.
    pub fn new(capacity: u32, slot_size: u32) -> Result<Self, LayoutError> {
        if capacity == 0 || !capacity.is_power_of_two() || capacity > MAX_CAPACITY {
            return Err(LayoutError::BadCapacity(capacity));
        }
        if slot_size < 64 || !slot_size.is_multiple_of(64) || slot_size > MAX_SLOT_SIZE {
            return Err(LayoutError::BadSlotSize(slot_size));
        }
        Ok(Self {
            capacity,
            slot_size,
        })
    }
    /// Number of slots.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }
    /// Bytes per slot, including the 8-byte sequence word.
    pub fn slot_size(&self) -> u32 {
        self.slot_size
    }
    /// Bytes from one slot to the next: the slot size, plus one cache line
    /// when the slot size is an even number of lines, four or more.
    ///
    /// Every message touches the first line or two of its slot. With a
    /// stride of `2^k` lines (k ≥ 2) those lines fall into at most half of
    /// the 64 sets of a 32 KiB 8-way L1d — the others never hold a ring
    /// line, these hold several — and a ring of a few dozen slots starts
    /// missing L1 on both cores: on the development VM a round trip through
    /// 64 × 256-byte slots took 152–154 ns at a 256-byte stride and
    /// 145–148 ns at 320 (an odd number of lines: every set), against a raw
    /// ping-pong of the same bytes of 114 ns (`examples/ipc_probe.rs`).
    /// Two-line slots use every set already (first lines in the even sets,
    /// second lines in the odd ones).
    pub fn slot_stride(&self) -> usize {
        let lines = self.slot_size as usize / 64;
        if lines >= 4 && lines.is_multiple_of(2) {
            self.slot_size as usize + 64
        } else {
            self.slot_size as usize
        }
    }
    /// Offset of slot `index` (its seq word) from the ring's start.
    pub fn slot_offset(&self, index: usize) -> usize {
        self.slots_offset() + index * self.slot_stride()
    }
    /// Usable bytes per slot (after the sequence word).
    pub fn body_len(&self) -> usize {
        self.slot_size as usize - SEQ_LEN
    }
    fn trackers_len(&self) -> usize {
        (self.capacity as usize * size_of::<AccessTracker>()).next_multiple_of(128)
    }
    /// Offset of slot 0 from the ring's start.
    pub fn slots_offset(&self) -> usize {
        RING_HEADER_LEN + self.trackers_len()
    }
    /// Total bytes the ring occupies.
    pub fn bytes(&self) -> usize {
        self.slots_offset() + self.capacity as usize * self.slot_stride()
    }
}

/// Why a ring could not be placed in or attached from a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    /// The ring would not fit in the region at that offset, or the offset is
    /// not 128-aligned.
    #[error("ring at offset {offset} (+{len} bytes) does not fit a region of {region_len} bytes or is misaligned")]
    OutOfBounds {
        /// Ring offset.
        offset: usize,
        /// Ring length.
        len: usize,
        /// Region length.
        region_len: usize,
    },
    /// Wrong magic number.
    #[error("bad ring magic {0:#x}")]
    BadMagic(u32),
    /// Unsupported version.
    #[error("unsupported ring version {0}")]
    BadVersion(u32),
    /// The header's geometry differs from the expected one.
    #[error("ring geometry mismatch: header says {found_capacity} x {found_slot_size}")]
    Mismatch {
        /// Capacity in the header.
        found_capacity: u32,
        /// Slot size in the header.
        found_slot_size: u32,
    },
}

/// The peer broke the ring protocol (a bug or a hostile process). Fatal for
/// the ring: the same error is returned until it is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A slot's sequence word is neither "ready" nor "empty" for the position.
    #[error("slot sequence for position {pos} is {found}: neither ready ({ready}) nor empty")]
    BadSequence {
        /// Consumer position.
        pos: u64,
        /// Value found.
        found: u64,
        /// Value that would mean "ready".
        ready: u64,
    },
    /// The consumer's release index ran ahead of the producer or went back.
    #[error("release index {release} outside [{last_seen}, {head}]")]
    BadRelease {
        /// Value found.
        release: u64,
        /// Last value seen.
        last_seen: u64,
        /// Producer head.
        head: u64,
    },
    /// A message its producer published reads as never published: the
    /// consumer wrote the slot's sequence word. Seen only when the producer
    /// reads its unreleased messages back (`Sender::into_unreleased`).
    #[error("slot for position {pos} was published but its sequence word says empty")]
    Withdrawn {
        /// The message's position.
        pos: u64,
    },
}

/// Checks a release position read from the peer's line against what the
/// writer knows: never back from the `last_seen` one, never ahead of its
/// `head`. (The ring's release index and the arena's release position.)
pub(crate) fn check_release(release: u64, last_seen: u64, head: u64) -> Result<u64, ProtocolError> {
    if release < last_seen || release > head {
        return Err(ProtocolError::BadRelease {
            release,
            last_seen,
            head,
        });
    }
    Ok(release)
}

/// Initializes a ring header and zeroes every slot sequence.
///
/// # Safety
/// `base` must be valid for writes of `layout.bytes()` bytes, 128-aligned, and
/// not accessed by anyone else during the call.
pub(crate) unsafe fn init_raw(base: *mut u8, layout: RingLayout) {
    // SAFETY: all offsets are within `layout.bytes()` and suitably aligned
    // (base is 128-aligned, fields are at 4-, 8- and 128-multiples); nobody
    // else accesses the memory yet (caller's contract).
    unsafe {
        base.cast::<u32>().write(RING_MAGIC);
        base.add(4).cast::<u32>().write(RING_VERSION);
        base.add(8).cast::<u32>().write(layout.slot_size);
        base.add(12).cast::<u32>().write(layout.capacity);
        init_atomic_u64(base.add(RELEASE_OFFSET), 0);
        init_atomic_u32(base.add(DOORBELL_OFFSET), crate::doorbell::AWAKE);
        AccessTracker::init_array(base.add(RING_HEADER_LEN), layout.capacity as usize);
        let slots = base.add(layout.slots_offset());
        for i in 0..layout.capacity as usize {
            init_atomic_u64(slots.add(i * layout.slot_stride()), 0);
        }
    }
}

/// Checks the header of a ring at `base` against `expected`.
///
/// # Safety
/// `base` must be valid for reads of [`RING_HEADER_LEN`] bytes, 8-aligned.
pub(crate) unsafe fn check_raw(base: *const u8, expected: RingLayout) -> Result<(), AttachError> {
    // The constants were written before the region was handed over; a
    // volatile read keeps the compiler from assuming anything about memory a
    // peer can write.
    // SAFETY: within the header (caller's contract), 4-aligned.
    let (magic, version, slot_size, capacity) = unsafe {
        (
            base.cast::<u32>().read_volatile(),
            base.add(4).cast::<u32>().read_volatile(),
            base.add(8).cast::<u32>().read_volatile(),
            base.add(12).cast::<u32>().read_volatile(),
        )
    };
    if magic != RING_MAGIC {
        return Err(AttachError::BadMagic(magic));
    }
    if version != RING_VERSION {
        return Err(AttachError::BadVersion(version));
    }
    if slot_size != expected.slot_size || capacity != expected.capacity {
        return Err(AttachError::Mismatch {
            found_capacity: capacity,
            found_slot_size: slot_size,
        });
    }
    Ok(())
}

/// Pointers into one ring, shared by both raw ends.
#[derive(Clone, Copy)]
struct RingPtrs {
    slots: *mut u8,
    trackers: *const u8,
    release: *const AtomicU64,
    doorbell: *const AtomicU32,
    slot_size: usize,
    /// Bytes between slots ([`RingLayout::slot_stride`]).
    stride: usize,
    mask: u64,
    capacity: u64,
}

impl RingPtrs {
    /// # Safety
    /// `base` points at an initialized ring of `layout` that outlives every use.
    unsafe fn new(base: *mut u8, layout: RingLayout) -> Self {
        // SAFETY: offsets within the ring (caller's contract).
        unsafe {
            Self {
                slots: base.add(layout.slots_offset()),
                trackers: base.add(RING_HEADER_LEN),
                release: base.add(RELEASE_OFFSET).cast(),
                doorbell: base.add(DOORBELL_OFFSET).cast(),
                slot_size: layout.slot_size as usize,
                stride: layout.slot_stride(),
                mask: layout.capacity as u64 - 1,
                capacity: layout.capacity as u64,
            }
        }
    }

    /// First byte (the seq word) of the slot for position `pos`.
    #[inline(always)]
    fn slot(&self, pos: u64) -> *mut u8 {
        // SAFETY: (pos & mask) < capacity, so the slot lies within the ring.
        unsafe { self.slots.add((pos & self.mask) as usize * self.stride) }
    }

    #[inline(always)]
    fn seq(&self, pos: u64) -> &AtomicU64 {
        // SAFETY: every slot starts with an 8-aligned AtomicU64 initialized by
        // `init_raw` (any bit pattern is a valid u64 in a normal build), and
        // the ring outlives `self`.
        unsafe { &*self.slot(pos).cast::<AtomicU64>() }
    }

    #[inline(always)]
    fn tracker(&self, pos: u64) -> &AccessTracker {
        // SAFETY: `capacity` trackers were initialized in place by `init_raw`
        // and (pos & mask) < capacity; the ring outlives `self`.
        unsafe { AccessTracker::at(self.trackers, (pos & self.mask) as usize) }
    }

    #[inline(always)]
    fn release(&self) -> &AtomicU64 {
        // SAFETY: initialized by `init_raw`; the ring outlives `self`.
        unsafe { &*self.release }
    }
}

/// The producer's private state over raw ring memory. Used directly by the
/// channel; [`Producer`] wraps it for standalone use.
pub(crate) struct RawProducer {
    ptrs: RingPtrs,
    /// Next position to write.
    head: u64,
    /// Last release index read from the consumer's line.
    cached_release: u64,
}

// SAFETY: the pointers refer to shared memory kept alive by the owner; the
// producer is the only writer of its slots, synchronised with the consumer by
// the atomics.
unsafe impl Send for RawProducer {}

/// The free slot at a producer's head: handed out by
/// [`RawProducer::next_free`], written through [`body`](Self::body), consumed
/// by [`RawProducer::publish`]. Not `Clone`: a slot is published once.
pub(crate) struct FreeSlot {
    /// The slot's first byte (its seq word).
    base: *mut u8,
}

impl FreeSlot {
    /// The slot's body: everything after the seq word, `slot_size - 8` bytes.
    #[inline(always)]
    pub(crate) fn body(&self) -> *mut u8 {
        // SAFETY: slots are at least 64 bytes, so +8 stays inside this one.
        unsafe { self.base.add(SEQ_LEN) }
    }

    #[inline(always)]
    fn seq(&self) -> &AtomicU64 {
        // SAFETY: every slot starts with an 8-aligned AtomicU64 initialized by
        // `init_raw`; the ring outlives the producer that handed this out.
        unsafe { &*self.base.cast::<AtomicU64>() }
    }
}

impl RawProducer {
    /// # Safety
    /// `base` points at an initialized ring of `layout` that outlives the value,
    /// and no other producer exists for it.
    pub(crate) unsafe fn new(base: *mut u8, layout: RingLayout) -> Self {
        // SAFETY: forwarded contract.
        let ptrs = unsafe { RingPtrs::new(base, layout) };
        Self {
            ptrs,
            head: 0,
            cached_release: 0,
        }
    }

    /// Pointer to the doorbell word of this ring.
    pub(crate) fn doorbell(&self) -> *const AtomicU32 {
        self.ptrs.doorbell
    }

    /// Usable bytes per slot after the sequence word.
    pub(crate) fn body_len(&self) -> usize {
        self.ptrs.slot_size - SEQ_LEN
    }

    /// How many slots are free (at most `capacity`), re-reading the
    /// consumer's release index only when the cached copy shows fewer than
    /// `want` free.
    #[inline]
    pub(crate) fn free_slots(&mut self, want: u64) -> Result<u64, ProtocolError> {
        let free = self.ptrs.capacity - (self.head - self.cached_release);
        if free >= want {
            return Ok(free);
        }
        self.reload_release()
    }

    /// The free slot at the head, or `Ok(None)` when the ring is full. The
    /// fast path reads only the producer's private state: the consumer's
    /// release index is re-read only when the cached copy says "full".
    #[inline(always)]
    pub(crate) fn next_free(&mut self) -> Result<Option<FreeSlot>, ProtocolError> {
        if self.head - self.cached_release >= self.ptrs.capacity && self.reload_release()? == 0 {
            return Ok(None);
        }
        Ok(Some(FreeSlot {
            base: self.ptrs.slot(self.head),
        }))
    }

    /// Re-reads the consumer's release index; returns the free slots.
    #[cold]
    #[inline(never)]
    fn reload_release(&mut self) -> Result<u64, ProtocolError> {
        let release = self.read_release()?;
        Ok(self.ptrs.capacity - (self.head - release))
    }

    /// The consumer's release index, checked (it may never run ahead of the
    /// head, nor go back) and cached.
    fn read_release(&mut self) -> Result<u64, ProtocolError> {
        // Acquire pairs with the consumer's Release store in
        // `RawConsumer::release`: once we see a position released, the
        // consumer's reads of those slots are done and we may overwrite them.
        let loaded = self.ptrs.release().load(Ordering::Acquire);
        let release = check_release(loaded, self.cached_release, self.head)?;
        self.cached_release = release;
        Ok(release)
    }

    /// Turns this producer into the consumer of its own unreleased messages,
    /// for when the real consumer is gone for good: a consumer positioned at
    /// the release index, and the head it must stop at (the slots from there
    /// on hold earlier laps, or whatever the dead consumer left in them).
    pub(crate) fn into_unreleased(mut self) -> Result<(RawConsumer, u64), ProtocolError> {
        let release = self.read_release()?;
        let consumer = RawConsumer {
            ptrs: self.ptrs,
            pos: release,
            released: release,
        };
        Ok((consumer, self.head))
    }

    /// Body (bytes after the seq word) of the slot `k` positions past the
    /// head. Only valid for `k < free_slots(..)`.
    #[inline(always)]
    pub(crate) fn body(&self, k: u64) -> *mut u8 {
        // SAFETY: the slot is at least 64 bytes, so +8 stays inside it.
        unsafe { self.ptrs.slot(self.head + k).add(SEQ_LEN) }
    }

    /// The loom access tracker of the slot `k` past the head.
    #[inline(always)]
    pub(crate) fn tracker(&self, k: u64) -> &AccessTracker {
        self.ptrs.tracker(self.head + k)
    }

    /// Publishes the slot at the head (its body must be fully written).
    #[inline(always)]
    pub(crate) fn publish_next(&mut self) {
        let pos = self.head;
        // Release pairs with the consumer's Acquire load in `RawConsumer::peek`:
        // the body written before this store is visible to a consumer that
        // sees the new seq.
        self.ptrs.seq(pos).store(pos + 1, Ordering::Release);
        self.head = pos + 1;
    }

    /// Publishes `slot`, the one [`next_free`](Self::next_free) handed out
    /// for the current head (its body must be fully written). Same as
    /// [`publish_next`](Self::publish_next) without recomputing the address.
    #[inline(always)]
    pub(crate) fn publish(&mut self, slot: FreeSlot) {
        debug_assert_eq!(slot.base, self.ptrs.slot(self.head));
        let pos = self.head;
        // Release pairs with the consumer's Acquire load in `RawConsumer::peek`,
        // as in `publish_next`.
        slot.seq().store(pos + 1, Ordering::Release);
        self.head = pos + 1;
    }

    /// Messages published so far.
    pub(crate) fn head(&self) -> u64 {
        self.head
    }

    /// Messages the consumer has released so far (re-read and checked).
    pub(crate) fn released(&mut self) -> Result<u64, ProtocolError> {
        self.read_release()
    }
}

/// The consumer's private state over raw ring memory.
pub(crate) struct RawConsumer {
    ptrs: RingPtrs,
    /// Next position to read.
    pos: u64,
    /// Last release index published.
    released: u64,
}

// SAFETY: as for RawProducer: the owner keeps the ring mapped wherever the
// consumer moves; it is the only writer of the release index, and reads a
// slot only after the Acquire load of its seq.
unsafe impl Send for RawConsumer {}

impl RawConsumer {
    /// # Safety
    /// As [`RawProducer::new`], for the single consumer.
    pub(crate) unsafe fn new(base: *mut u8, layout: RingLayout) -> Self {
        // SAFETY: forwarded contract.
        let ptrs = unsafe { RingPtrs::new(base, layout) };
        Self {
            ptrs,
            pos: 0,
            released: 0,
        }
    }

    /// Pointer to the doorbell word of this ring.
    pub(crate) fn doorbell(&self) -> *const AtomicU32 {
        self.ptrs.doorbell
    }

    /// The body of the message `k` positions past the read position, if it
    /// has been published.
    #[inline]
    pub(crate) fn peek(&self, k: u64) -> Result<Option<*const u8>, ProtocolError> {
        let pos = self.pos + k;
        // Acquire pairs with the producer's Release store of the seq in
        // `publish_next` / `publish`: the body written before that store is
        // visible to our reads after this load sees `ready`.
        let seq = self.ptrs.seq(pos).load(Ordering::Acquire);
        let ready = pos + 1;
        if seq == ready {
            // SAFETY: +8 stays within the (>= 64-byte) slot.
            return Ok(Some(unsafe {
                self.ptrs.slot(pos).add(SEQ_LEN) as *const u8
            }));
        }
        let empty = if pos >= self.ptrs.capacity {
            ready - self.ptrs.capacity
        } else {
            0
        };
        if seq == empty {
            Ok(None)
        } else {
            Err(ProtocolError::BadSequence {
                pos,
                found: seq,
                ready,
            })
        }
    }

    /// True when the next slot holds a published message (or a bad seq,
    /// which `peek` will report).
    #[inline]
    pub(crate) fn has_next(&self) -> bool {
        !matches!(self.peek(0), Ok(None))
    }

    /// The loom access tracker of the slot `k` past the read position.
    #[inline(always)]
    pub(crate) fn tracker(&self, k: u64) -> &AccessTracker {
        self.ptrs.tracker(self.pos + k)
    }

    /// Moves past the current message (not yet released to the producer).
    #[inline(always)]
    pub(crate) fn advance(&mut self, n: u64) {
        self.pos += n;
    }

    /// Hands every slot read so far back to the producer.
    #[inline]
    pub(crate) fn release(&mut self) {
        if self.released != self.pos {
            // Release pairs with the producer's Acquire load in
            // `RawProducer::read_release` (reached from `free_slots`,
            // `next_free` and `into_unreleased`): our reads of the released
            // slots happen before its next writes to them.
            self.ptrs.release().store(self.pos, Ordering::Release);
            self.released = self.pos;
        }
    }

    /// Messages consumed so far.
    pub(crate) fn position(&self) -> u64 {
        self.pos
    }
}

/// Why [`Producer::try_push`] did not push; the value comes back.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TryPushError<T> {
    /// Every slot is in use; retry after the consumer releases some.
    #[error("ring full")]
    Full(T),
    /// The value does not fit a slot body.
    #[error("{len} bytes do not fit a slot body of {max}")]
    TooLarge {
        /// The value handed back.
        value: T,
        /// Its length.
        len: usize,
        /// Slot body size.
        max: usize,
    },
    /// The consumer broke the protocol.
    #[error(transparent)]
    Protocol(ProtocolError),
}

/// The producing end of a standalone ring (the channel uses the same code
/// internally). Not `Clone`: there is exactly one.
pub struct Producer {
    raw: RawProducer,
    _region: Arc<dyn Region>,
}

/// The consuming end of a standalone ring. Not `Clone`: there is exactly one.
pub struct Consumer {
    raw: RawConsumer,
    _region: Arc<dyn Region>,
}

fn check_bounds(
    region: &dyn Region,
    offset: usize,
    layout: RingLayout,
) -> Result<*mut u8, AttachError> {
    let len = layout.bytes();
    let fits = offset.is_multiple_of(128)
        && offset
            .checked_add(len)
            .is_some_and(|end| end <= region.len());
    if !fits {
        return Err(AttachError::OutOfBounds {
            offset,
            len,
            region_len: region.len(),
        });
    }
    // SAFETY: offset + len <= region.len(), and the `Region` contract makes
    // those bytes one valid allocation, so the result stays inside it.
    Ok(unsafe { region.base().add(offset) })
}

/// Initializes a ring at `offset` of `region` and returns both ends.
///
/// # Safety
///
/// The `layout.bytes()` bytes at `offset` must not be in use by any other
/// ring, end or object in this process, now or while the returned ends live
/// (other than through ends attached later under the rules of
/// [`attach_producer`] and [`attach_consumer`]): this overwrites them with
/// plain stores, and a second producer or consumer of one ring writes or
/// releases slots the first one is using. (A peer *process* that breaks the
/// protocol is a different matter: everything read back is checked.)
pub unsafe fn create(
    region: Arc<dyn Region>,
    offset: usize,
    layout: RingLayout,
) -> Result<(Producer, Consumer), AttachError> {
    let base = check_bounds(&*region, offset, layout)?;
    // SAFETY: bounds checked; base is 128-aligned (the region is page-aligned
    // by the `Region` contract, offset a multiple of 128); nobody else uses
    // the bytes (caller's contract).
    unsafe { init_raw(base, layout) };
    // SAFETY: initialized just above; the Arcs keep the region alive; these
    // are the ring's only producer and consumer (caller's contract).
    let (raw_p, raw_c) = unsafe {
        (
            RawProducer::new(base, layout),
            RawConsumer::new(base, layout),
        )
    };
    Ok((
        Producer {
            raw: raw_p,
            _region: region.clone(),
        },
        Consumer {
            raw: raw_c,
            _region: region,
        },
    ))
}

/// Attaches the producing end of a ring another party initialized. The peer
/// must not have produced into it yet.
///
/// # Safety
///
/// No other producer of this ring exists in this process, nor will while
/// the returned one lives: two producers write the same slots with plain
/// stores.
pub unsafe fn attach_producer(
    region: Arc<dyn Region>,
    offset: usize,
    layout: RingLayout,
) -> Result<Producer, AttachError> {
    let base = check_bounds(&*region, offset, layout)?;
    // SAFETY: bounds checked (the header is the ring's first bytes); base is
    // 128-aligned, so 8-aligned.
    unsafe { check_raw(base, layout)? };
    // SAFETY: header checked: the ring is initialized with this layout; the
    // Arc keeps it alive; the only producer (caller's contract).
    let raw = unsafe { RawProducer::new(base, layout) };
    Ok(Producer {
        raw,
        _region: region,
    })
}

/// Attaches the consuming end of a ring another party initialized.
///
/// # Safety
///
/// No other consumer of this ring exists in this process, nor will while
/// the returned one lives: a second consumer would release slots this one
/// is still reading, and the producer would overwrite them.
pub unsafe fn attach_consumer(
    region: Arc<dyn Region>,
    offset: usize,
    layout: RingLayout,
) -> Result<Consumer, AttachError> {
    let base = check_bounds(&*region, offset, layout)?;
    // SAFETY: bounds checked (the header is the ring's first bytes); base is
    // 128-aligned, so 8-aligned.
    unsafe { check_raw(base, layout)? };
    // SAFETY: header checked: the ring is initialized with this layout; the
    // Arc keeps it alive; the only consumer (caller's contract).
    let raw = unsafe { RawConsumer::new(base, layout) };
    Ok(Consumer {
        raw,
        _region: region,
    })
}

impl Producer {
    /// Bytes each slot body holds.
    pub fn body_len(&self) -> usize {
        self.raw.body_len()
    }

    /// Copies `value` into the next slot's body (the rest of the body keeps
    /// old bytes) and publishes it. Full or too large: the value comes back.
    #[inline]
    pub fn try_push<'v>(&mut self, value: &'v [u8]) -> Result<(), TryPushError<&'v [u8]>> {
        let max = self.raw.body_len();
        if value.len() > max {
            return Err(TryPushError::TooLarge {
                value,
                len: value.len(),
                max,
            });
        }
        match self.raw.free_slots(1) {
            Ok(0) => return Err(TryPushError::Full(value)),
            Ok(_) => {}
            Err(e) => return Err(TryPushError::Protocol(e)),
        }
        self.write_body(0, value);
        self.raw.publish_next();
        Ok(())
    }

    /// Pushes as many of `values` as fit with one free-space check; returns
    /// how many were pushed. Values longer than a body stop the batch.
    pub fn push_batch(&mut self, values: &[&[u8]]) -> Result<usize, ProtocolError> {
        let max = self.raw.body_len();
        let free = self.raw.free_slots(values.len() as u64)?;
        let mut n = 0;
        for v in values.iter().take(free as usize) {
            if v.len() > max {
                break;
            }
            self.write_body(0, v);
            self.raw.publish_next();
            n += 1;
        }
        Ok(n)
    }

    #[inline(always)]
    fn write_body(&mut self, k: u64, value: &[u8]) {
        let _w = self.raw.tracker(k).write();
        // SAFETY: the slot is free (free_slots > k), so the consumer does not
        // read it until we publish; value.len() <= body length.
        unsafe { crate::copy::copy_payload(value.as_ptr(), self.raw.body(k), value.len()) };
    }

    /// Messages pushed so far.
    pub fn pushed(&self) -> u64 {
        self.raw.head()
    }
}

/// A published slot borrowed from the [`Consumer`]; dropping it releases the
/// slot to the producer.
pub struct SlotRef<'a> {
    consumer: &'a mut RawConsumer,
    body: &'a [u8],
    /// Loom access guard, ended before the release.
    guard: Option<crate::sync::ReadGuard>,
}

impl SlotRef<'_> {
    /// The slot's body (everything after the sequence word).
    pub fn body(&self) -> &[u8] {
        self.body
    }
}

impl Drop for SlotRef<'_> {
    fn drop(&mut self) {
        // End the (loom) read access before handing the slot back.
        self.guard = None;
        self.consumer.advance(1);
        self.consumer.release();
    }
}

impl Consumer {
    /// The next published slot, if any.
    #[inline]
    pub fn try_pop(&mut self) -> Result<Option<SlotRef<'_>>, ProtocolError> {
        let Some(p) = self.raw.peek(0)? else {
            return Ok(None);
        };
        let guard = self.raw.tracker(0).read();
        let len = self.raw.ptrs.slot_size - SEQ_LEN;
        // SAFETY: the slot is published and not released until the SlotRef
        // drops; the producer does not write it before then.
        let body = unsafe { std::slice::from_raw_parts(p, len) };
        Ok(Some(SlotRef {
            consumer: &mut self.raw,
            body,
            guard: Some(guard),
        }))
    }

    /// Calls `f` on up to `max` published slots, then releases them all with
    /// one store. Returns how many were consumed.
    pub fn pop_batch(
        &mut self,
        max: usize,
        mut f: impl FnMut(&[u8]),
    ) -> Result<usize, ProtocolError> {
        let len = self.raw.ptrs.slot_size - SEQ_LEN;
        let mut n = 0;
        let result = loop {
            if n == max {
                break Ok(n);
            }
            match self.raw.peek(0) {
                Ok(Some(p)) => {
                    let _guard = self.raw.tracker(0).read();
                    // SAFETY: as in try_pop.
                    f(unsafe { std::slice::from_raw_parts(p, len) });
                    self.raw.advance(1);
                    n += 1;
                }
                Ok(None) => break Ok(n),
                Err(e) => break Err(e),
            }
        };
        self.raw.release();
        result
    }

    /// True when no published slot is waiting.
    pub fn is_empty(&self) -> bool {
        !self.raw.has_next()
    }

    /// Messages consumed so far.
    pub fn popped(&self) -> u64 {
        self.raw.position()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::region::{HeapRegion, MemfdRegion};

    fn layout() -> RingLayout {
        RingLayout::new(8, 64).unwrap()
    }

    /// The same behaviour, whatever memory backs the ring.
    fn ring_behaviour(region: Arc<dyn Region>) {
        // SAFETY: a fresh region; these are the ring's only ends.
        let (mut p, mut c) = unsafe { create(region.clone(), 128, layout()) }.unwrap();
        assert!(c.is_empty());
        assert!(c.try_pop().unwrap().is_none());
        // Fill it: the 9th push comes back.
        for i in 0..8u8 {
            p.try_push(&[i; 56]).unwrap();
        }
        assert_eq!(p.try_push(b"x"), Err(TryPushError::Full(&b"x"[..])));
        let big = [0u8; 57];
        assert!(matches!(
            p.try_push(&big),
            Err(TryPushError::TooLarge {
                len: 57,
                max: 56,
                ..
            })
        ));
        // Drain half one by one, the rest in a batch.
        for i in 0..4u8 {
            let s = c.try_pop().unwrap().unwrap();
            assert_eq!(s.body(), &[i; 56]);
        }
        let mut seen = Vec::new();
        assert_eq!(c.pop_batch(100, |b| seen.push(b[0])).unwrap(), 4);
        assert_eq!(seen, [4, 5, 6, 7]);
        assert!(c.is_empty());
        // Wrap around many laps with batches.
        let mut next_in = 0u64;
        let mut next_out = 0u64;
        while next_out < 1000 {
            let vals: Vec<[u8; 8]> = (0..5).map(|k| (next_in + k).to_le_bytes()).collect();
            let refs: Vec<&[u8]> = vals.iter().map(|v| &v[..]).collect();
            next_in += p.push_batch(&refs).unwrap() as u64;
            c.pop_batch(3, |b| {
                assert_eq!(u64::from_le_bytes(b[..8].try_into().unwrap()), next_out);
                next_out += 1;
            })
            .unwrap();
        }
        assert_eq!(p.pushed(), 8 + next_in);
        assert_eq!(c.popped(), 8 + next_out);
        // A second attach of the consumer end sees the same header. (The
        // first one goes first: one consumer at a time.)
        drop(c);
        let attach = |offset, layout| {
            // SAFETY: `c` is gone, and each consumer attached here is dropped
            // at once, unused.
            unsafe { attach_consumer(region.clone(), offset, layout) }.map(drop)
        };
        assert!(attach(128, layout()).is_ok());
        assert!(matches!(
            attach(128, RingLayout::new(16, 64).unwrap()),
            Err(AttachError::Mismatch {
                found_capacity: 8,
                found_slot_size: 64
            })
        ));
        assert!(matches!(
            attach(64, layout()),
            Err(AttachError::OutOfBounds { .. })
        ));
        assert!(matches!(
            attach(1 << 20, layout()),
            Err(AttachError::OutOfBounds { .. })
        ));
    }

    #[test]
    fn ring_on_heap() {
        ring_behaviour(Arc::new(HeapRegion::new(8192)));
    }

    #[test]
    fn ring_on_memfd() {
        ring_behaviour(Arc::new(MemfdRegion::create("ring-test", 8192).unwrap()));
    }

    #[test]
    fn even_strides_of_four_lines_or_more_are_padded() {
        let stride = |slot| RingLayout::new(8, slot).unwrap().slot_stride();
        assert_eq!(
            [64, 128, 192, 256, 320, 384, 512].map(stride),
            [64, 128, 192, 320, 320, 448, 576]
        );
        let l = RingLayout::new(8, 256).unwrap();
        assert_eq!(l.slot_offset(0), l.slots_offset());
        assert_eq!(l.slot_offset(3), l.slots_offset() + 3 * 320);
        assert_eq!(l.bytes(), l.slots_offset() + 8 * 320);
        assert_eq!(l.body_len(), 248);
    }

    /// Full-body messages through a padded ring, several laps: every body
    /// arrives intact and the padding line of every slot is never written.
    #[test]
    fn padded_slots_keep_to_their_bytes() {
        let l = RingLayout::new(4, 256).unwrap();
        let region: Arc<dyn Region> = Arc::new(HeapRegion::new(8192));
        // SAFETY: a fresh region; these are the ring's only ends.
        let (mut p, mut c) = unsafe { create(region.clone(), 0, l) }.unwrap();
        for lap in 0..5u8 {
            for i in 0..4u8 {
                p.try_push(&[lap * 16 + i + 1; 248]).unwrap();
            }
            for i in 0..4u8 {
                let s = c.try_pop().unwrap().unwrap();
                assert_eq!(s.body(), &[lap * 16 + i + 1; 248][..]);
            }
        }
        for i in 0..4 {
            let pad = l.slot_offset(i) + 256;
            // SAFETY: within the region (the ring fits it); nothing else
            // accesses it now.
            let bytes = unsafe { std::slice::from_raw_parts(region.base().add(pad), 64) };
            assert_eq!(bytes, &[0u8; 64][..], "padding of slot {i} written");
        }
    }

    #[test]
    fn layouts_are_checked() {
        assert_eq!(RingLayout::new(0, 64), Err(LayoutError::BadCapacity(0)));
        assert_eq!(RingLayout::new(3, 64), Err(LayoutError::BadCapacity(3)));
        assert_eq!(RingLayout::new(4, 65), Err(LayoutError::BadSlotSize(65)));
        assert_eq!(RingLayout::new(4, 0), Err(LayoutError::BadSlotSize(0)));
        assert_eq!(layout().bytes(), RING_HEADER_LEN + 8 * 64);
    }

    #[test]
    fn hostile_seq_and_release_are_protocol_errors() {
        let region: Arc<dyn Region> = Arc::new(HeapRegion::new(8192));
        // SAFETY: a fresh region; these are the ring's only ends.
        let (mut p, mut c) = unsafe { create(region.clone(), 0, layout()) }.unwrap();
        let slots = layout().slots_offset();
        // A seq that jumps ahead.
        // SAFETY: within the region; an 8-aligned u64 slot seq.
        unsafe { region.base().add(slots).cast::<u64>().write_volatile(99) };
        assert!(matches!(
            c.try_pop(),
            Err(ProtocolError::BadSequence {
                pos: 0,
                found: 99,
                ready: 1
            })
        ));
        assert!(!c.is_empty());
        assert!(c.pop_batch(4, |_| {}).is_err());
        // A release index ahead of the producer.
        for _ in 0..8 {
            p.try_push(b"a").unwrap();
        }
        // SAFETY: the release word within the region.
        unsafe {
            region
                .base()
                .add(RELEASE_OFFSET)
                .cast::<u64>()
                .write_volatile(1000)
        };
        assert!(matches!(
            p.try_push(b"b"),
            Err(TryPushError::Protocol(ProtocolError::BadRelease {
                release: 1000,
                ..
            }))
        ));
        // SAFETY: the magic word.
        unsafe { region.base().cast::<u32>().write_volatile(1) };
        drop(p);
        // SAFETY: `p` is gone; the attach fails anyway.
        let attached = unsafe { attach_producer(region, 0, layout()) };
        assert!(matches!(attached, Err(AttachError::BadMagic(1))));
    }
}
