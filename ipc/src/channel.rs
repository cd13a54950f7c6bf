//! A channel: the engine↔worker ring pair, their payload arenas and doorbells,
//! in one region.
//!
//! Region layout (offsets are in the region header and re-derived and
//! compared on attach):
//!
//! ```text
//! 0      region header (256 B): magic, version, flags, region length,
//!        ring slots, slot size, arena bytes, four section offsets
//! 256    request ring   (engine → worker)     see `ring`
//! …      response ring  (worker → engine)
//! …      request arena  (written by the engine, released by the worker)
//! …      response arena (written by the worker, released by the engine)
//! ```
//!
//! [`EngineEnd::create`] builds and seals the region; the worker receives its
//! memfd (see [`crate::fdpass`]) and calls [`WorkerEnd::attach`], which checks
//! the seals and every layout field. Both ends [`split`](EngineEnd::split)
//! into a [`Sender`] and a [`Receiver`]. A sender copies a payload into the
//! slot when it fits inline ([`ChannelConfig::max_inline`]), else into the
//! arena; the receiver copies the header out of shared memory once, validates
//! the copy (placement, lengths, the arena offset it *expects* next) and hands
//! out a [`MessageView`] whose drop releases the slot and the arena bytes.
//!
//! The response ring's doorbell can be an eventfd ([`EngineEnd::create_with_eventfd`])
//! so the engine can sleep in epoll next to its sockets; a region flag records
//! the choice and a mismatched attach fails.
#![allow(unsafe_code)]

use crate::arena::{self, ArenaAttachError, ArenaError, ArenaReadGuards, ArenaReader, ArenaWriter};
use crate::contention::YieldContention;
use crate::copy;
use crate::doorbell::{self, Bell, Doorbell, Seated};
use crate::message::{Header, HeaderError, PayloadLocation, BODY_WORDS, HEADER_LEN};
use crate::region::{HeapRegion, MemfdRegion, Region, RegionError};
use crate::ring::{self, ProtocolError, RawConsumer, RawProducer, RingLayout};
use crate::sync::Arc;
use crate::wake_board::{Delegation, WakeSeat};
use std::cell::Cell;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Duration;

pub use crate::doorbell::{WaitOutcome, WaitPolicy};

/// "NOCTIPC1" — identifies a channel region.
pub const REGION_MAGIC: u64 = u64::from_le_bytes(*b"NOCTIPC1");
/// Channel layout version (2: ring version 2's slot stride).
pub const REGION_VERSION: u32 = 2;
/// Bytes of region header.
pub const REGION_HEADER_LEN: usize = 256;
/// Region flag: the response ring's doorbell is an eventfd.
pub const FLAG_RESPONSE_EVENTFD: u32 = 1;
const KNOWN_FLAGS: u32 = FLAG_RESPONSE_EVENTFD;
/// Largest arena per direction.
pub const MAX_ARENA_BYTES: u32 = 1 << 30;

/// Byte offsets of the region header fields (all little-endian).
pub mod region_field {
    /// u64 [`super::REGION_MAGIC`].
    pub const MAGIC: usize = 0;
    /// u32 [`super::REGION_VERSION`].
    pub const VERSION: usize = 8;
    /// u32 flags ([`super::FLAG_RESPONSE_EVENTFD`]).
    pub const FLAGS: usize = 12;
    /// u64 total region length.
    pub const REGION_LEN: usize = 16;
    /// u32 slots per ring.
    pub const RING_SLOTS: usize = 24;
    /// u32 bytes per slot.
    pub const SLOT_SIZE: usize = 28;
    /// u32 arena bytes per direction.
    pub const ARENA_BYTES: usize = 32;
    /// u64 offset of the request ring.
    pub const REQ_RING: usize = 40;
    /// u64 offset of the response ring.
    pub const RESP_RING: usize = 48;
    /// u64 offset of the request arena.
    pub const REQ_ARENA: usize = 56;
    /// u64 offset of the response arena.
    pub const RESP_ARENA: usize = 64;
}
use region_field as hdr;

/// Channel geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelConfig {
    /// Slots per ring; a power of two.
    pub ring_slots: u32,
    /// Bytes per slot, a multiple of 64, at least 128 (64 header + inline).
    pub slot_size: u32,
    /// Arena bytes per direction, a multiple of 64 (0 disables the arenas).
    pub arena_bytes: u32,
}

impl Default for ChannelConfig {
    /// 32 slots × 256 B (192 B inline), 1 MiB arena each way.
    ///
    /// Few slots on purpose: a ring's slots are used round-robin, so its
    /// whole footprint cycles through the caches of both cores. Measured on
    /// a 32 KiB-L1d machine, a 64-byte round trip costs 1.27× a raw
    /// ping-pong of the same bytes with 4–32 slots of 256 B, 1.4× with 64 and
    /// 1.55× with 128 (docs/ipc.md §7).
    fn default() -> Self {
        Self {
            ring_slots: 32,
            slot_size: 256,
            arena_bytes: 1 << 20,
        }
    }
}

/// A channel geometry that cannot work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Ring geometry.
    #[error(transparent)]
    Ring(#[from] ring::LayoutError),
    /// Slot smaller than 128 bytes.
    #[error("slot size {0} is below 128 (64-byte header + inline payload)")]
    SlotTooSmall(u32),
    /// Arena size not a multiple of 64 or above [`MAX_ARENA_BYTES`].
    #[error("arena size {0} is not a multiple of 64 up to {MAX_ARENA_BYTES}")]
    BadArena(u32),
}

/// Section offsets of a channel region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    ring: RingLayout,
    arena_bytes: u32,
    req_ring: usize,
    resp_ring: usize,
    req_arena: usize,
    resp_arena: usize,
    len: usize,
}

impl ChannelConfig {
    fn layout(&self) -> Result<Layout, ConfigError> {
        let ring = RingLayout::new(self.ring_slots, self.slot_size)?;
        if self.slot_size < 128 {
            return Err(ConfigError::SlotTooSmall(self.slot_size));
        }
        if !self.arena_bytes.is_multiple_of(64) || self.arena_bytes > MAX_ARENA_BYTES {
            return Err(ConfigError::BadArena(self.arena_bytes));
        }
        // Bounded by the limits above (2^20 × 2^20 × 2 + 2^31): no overflow.
        let req_ring = REGION_HEADER_LEN;
        let resp_ring = (req_ring + ring.bytes()).next_multiple_of(128);
        let req_arena = (resp_ring + ring.bytes()).next_multiple_of(128);
        let resp_arena = (req_arena + arena::arena_bytes(self.arena_bytes)).next_multiple_of(128);
        let len = (resp_arena + arena::arena_bytes(self.arena_bytes)).next_multiple_of(4096);
        Ok(Layout {
            ring,
            arena_bytes: self.arena_bytes,
            req_ring,
            resp_ring,
            req_arena,
            resp_arena,
            len,
        })
    }

    /// Checks the geometry.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.layout().map(|_| ())
    }

    /// Bytes of the region this geometry needs (0 if invalid).
    pub fn region_len(&self) -> usize {
        self.layout().map_or(0, |l| l.len)
    }

    /// Largest payload stored in the slot itself.
    pub fn max_inline(&self) -> usize {
        (self.slot_size as usize).saturating_sub(HEADER_LEN)
    }

    /// Largest payload at all (inline or arena).
    pub fn max_payload(&self) -> usize {
        self.max_inline().max(self.arena_bytes as usize)
    }
}

/// Why a channel could not be created or attached.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// Invalid geometry (in the caller's config, or in an attached header).
    #[error("bad channel config: {0}")]
    Config(#[from] ConfigError),
    /// The region could not be created, sealed or mapped.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// Duplicating the eventfd failed.
    #[error("dup of the eventfd failed: {0}")]
    Dup(io::Error),
    /// The region is shorter than its header, or than its layout needs.
    #[error("region of {found} bytes, need {need}")]
    TooSmall {
        /// Region length.
        found: usize,
        /// Length needed.
        need: usize,
    },
    /// Not a channel region.
    #[error("bad region magic {0:#x}")]
    BadMagic(u64),
    /// Unsupported layout version.
    #[error("unsupported region version {0}")]
    BadVersion(u32),
    /// Unknown flag bits.
    #[error("unknown region flags {0:#x}")]
    UnknownFlags(u32),
    /// The header's region length differs from the mapping's.
    #[error("header says the region has {header} bytes, the mapping has {actual}")]
    LengthMismatch {
        /// From the header.
        header: u64,
        /// From the mapping.
        actual: usize,
    },
    /// A section offset is not where the geometry puts it.
    #[error("{section} at offset {found}, expected {expected}")]
    BadOffset {
        /// Which section.
        section: &'static str,
        /// Offset in the header.
        found: u64,
        /// Offset the geometry dictates.
        expected: usize,
    },
    /// A ring header is invalid.
    #[error("{section}: {source}")]
    Ring {
        /// Which ring.
        section: &'static str,
        /// What is wrong.
        source: ring::AttachError,
    },
    /// An arena header is invalid.
    #[error("{section}: {source}")]
    Arena {
        /// Which arena.
        section: &'static str,
        /// What is wrong.
        source: ArenaAttachError,
    },
    /// The region uses the eventfd response doorbell and no eventfd was
    /// given, or the other way round.
    #[error("response doorbell mismatch: region {region}, attach {attach}")]
    DoorbellMismatch {
        /// What the region says.
        region: &'static str,
        /// What the attacher asked for.
        attach: &'static str,
    },
}

/// Why [`Sender::try_send`] did not send. Backpressure: the caller still has
/// the header and payload and retries later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Every slot of the ring is in use.
    #[error("ring full")]
    RingFull,
    /// The arena has no room for the payload yet.
    #[error("payload arena full")]
    ArenaFull,
    /// The payload exceeds the channel's largest payload.
    #[error("payload of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// [`ChannelConfig::max_payload`].
        max: usize,
    },
    /// The receiver wrote an impossible release position (a bug or a hostile
    /// peer). Permanent.
    #[error("peer broke the protocol: {0}")]
    Protocol(ProtocolError),
}

/// A message the receiver cannot accept: the peer broke the protocol (a bug
/// or a hostile process). Permanent: the channel should be dropped, the
/// worker killed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// A slot sequence number that is neither ready nor empty.
    #[error(transparent)]
    Ring(#[from] ProtocolError),
    /// Undecodable header.
    #[error("bad message header: {0}")]
    Header(#[from] HeaderError),
    /// An inline payload longer than the slot's inline space.
    #[error("inline payload of {len} bytes exceeds the slot's {max}")]
    BadLength {
        /// Claimed length.
        len: u32,
        /// [`ChannelConfig::max_inline`].
        max: usize,
    },
    /// An arena payload not where (or not as long as) it may be.
    #[error(transparent)]
    Arena(#[from] ArenaError),
}

/// The engine's end of a channel: sends requests, receives responses.
pub struct EngineEnd<R: Region = MemfdRegion> {
    region: Arc<R>,
    layout: Layout,
    /// The engine's copy of the response eventfd (it parks on it).
    response_efd: Option<OwnedFd>,
}

/// The worker's end of a channel: receives requests, sends responses.
pub struct WorkerEnd<R: Region = MemfdRegion> {
    region: Arc<R>,
    layout: Layout,
    /// The eventfd the worker writes to wake the engine.
    response_efd: Option<OwnedFd>,
    /// The request receiver's seat on a wake board, given to it on `split`.
    seat: Option<WakeSeat>,
}

/// Writes the region header and initializes both rings and arenas.
///
/// # Safety
/// The region is at least `layout.len` bytes and nobody else uses it yet.
unsafe fn init_region(base: *mut u8, layout: &Layout, flags: u32) {
    // SAFETY: all writes are within the header / sections of `layout`, which
    // fit the region (caller's contract), at naturally aligned offsets.
    unsafe {
        base.add(hdr::MAGIC).cast::<u64>().write(REGION_MAGIC);
        base.add(hdr::VERSION).cast::<u32>().write(REGION_VERSION);
        base.add(hdr::FLAGS).cast::<u32>().write(flags);
        base.add(hdr::REGION_LEN)
            .cast::<u64>()
            .write(layout.len as u64);
        base.add(hdr::RING_SLOTS)
            .cast::<u32>()
            .write(layout.ring.capacity());
        base.add(hdr::SLOT_SIZE)
            .cast::<u32>()
            .write(layout.ring.slot_size());
        base.add(hdr::ARENA_BYTES)
            .cast::<u32>()
            .write(layout.arena_bytes);
        base.add(hdr::REQ_RING)
            .cast::<u64>()
            .write(layout.req_ring as u64);
        base.add(hdr::RESP_RING)
            .cast::<u64>()
            .write(layout.resp_ring as u64);
        base.add(hdr::REQ_ARENA)
            .cast::<u64>()
            .write(layout.req_arena as u64);
        base.add(hdr::RESP_ARENA)
            .cast::<u64>()
            .write(layout.resp_arena as u64);
        ring::init_raw(base.add(layout.req_ring), layout.ring);
        ring::init_raw(base.add(layout.resp_ring), layout.ring);
        arena::init_raw(base.add(layout.req_arena), layout.arena_bytes);
        arena::init_raw(base.add(layout.resp_arena), layout.arena_bytes);
    }
}

/// Reads and validates every layout field of a region someone else built.
fn validate_region(region: &dyn Region) -> Result<(Layout, u32), ChannelError> {
    let actual = region.len();
    if actual < REGION_HEADER_LEN {
        return Err(ChannelError::TooSmall {
            found: actual,
            need: REGION_HEADER_LEN,
        });
    }
    // Copy the header out once; every check below runs on the copy.
    let mut h = [0u8; REGION_HEADER_LEN];
    // SAFETY: the region has at least REGION_HEADER_LEN bytes.
    unsafe { std::ptr::copy_nonoverlapping(region.base(), h.as_mut_ptr(), REGION_HEADER_LEN) };
    let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
    let magic = u64_at(hdr::MAGIC);
    if magic != REGION_MAGIC {
        return Err(ChannelError::BadMagic(magic));
    }
    let version = u32_at(hdr::VERSION);
    if version != REGION_VERSION {
        return Err(ChannelError::BadVersion(version));
    }
    let flags = u32_at(hdr::FLAGS);
    if flags & !KNOWN_FLAGS != 0 {
        return Err(ChannelError::UnknownFlags(flags));
    }
    let header_len = u64_at(hdr::REGION_LEN);
    if header_len != actual as u64 {
        return Err(ChannelError::LengthMismatch {
            header: header_len,
            actual,
        });
    }
    let cfg = ChannelConfig {
        ring_slots: u32_at(hdr::RING_SLOTS),
        slot_size: u32_at(hdr::SLOT_SIZE),
        arena_bytes: u32_at(hdr::ARENA_BYTES),
    };
    let layout = cfg.layout()?;
    if layout.len > actual {
        return Err(ChannelError::TooSmall {
            found: actual,
            need: layout.len,
        });
    }
    for (section, field, expected) in [
        ("request ring", hdr::REQ_RING, layout.req_ring),
        ("response ring", hdr::RESP_RING, layout.resp_ring),
        ("request arena", hdr::REQ_ARENA, layout.req_arena),
        ("response arena", hdr::RESP_ARENA, layout.resp_arena),
    ] {
        let found = u64_at(field);
        if found != expected as u64 {
            return Err(ChannelError::BadOffset {
                section,
                found,
                expected,
            });
        }
    }
    let base = region.base();
    for (section, off) in [
        ("request ring", layout.req_ring),
        ("response ring", layout.resp_ring),
    ] {
        // SAFETY: the ring lies within the region (layout.len <= actual).
        unsafe { ring::check_raw(base.add(off), layout.ring) }
            .map_err(|source| ChannelError::Ring { section, source })?;
    }
    for (section, off) in [
        ("request arena", layout.req_arena),
        ("response arena", layout.resp_arena),
    ] {
        // SAFETY: the arena lies within the region.
        unsafe { arena::check_raw(base.add(off), layout.arena_bytes) }
            .map_err(|source| ChannelError::Arena { section, source })?;
    }
    Ok((layout, flags))
}

fn flag_name(eventfd: bool) -> &'static str {
    if eventfd {
        "eventfd"
    } else {
        "futex"
    }
}

impl<R: Region> EngineEnd<R> {
    /// Builds a channel in `region` (which must be at least
    /// [`ChannelConfig::region_len`] bytes and not shared with anyone yet).
    /// With `response_efd`, the worker wakes the engine through that eventfd
    /// (the region keeps a duplicate).
    pub fn create_in(
        region: R,
        cfg: &ChannelConfig,
        response_efd: Option<BorrowedFd<'_>>,
    ) -> Result<Self, ChannelError> {
        let layout = cfg.layout()?;
        if region.len() < layout.len {
            return Err(ChannelError::TooSmall {
                found: region.len(),
                need: layout.len,
            });
        }
        let response_efd = response_efd
            .map(|fd| fd.try_clone_to_owned())
            .transpose()
            .map_err(ChannelError::Dup)?;
        let flags = if response_efd.is_some() {
            FLAG_RESPONSE_EVENTFD
        } else {
            0
        };
        // SAFETY: the region is at least `layout.len` bytes (checked above),
        // page-aligned, and we hold the only way to its bytes that this
        // process uses: all part of the `Region` contract for a value given
        // to `create_in`.
        unsafe { init_region(region.base(), &layout, flags) };
        Ok(Self {
            region: Arc::new(region),
            layout,
            response_efd,
        })
    }

    /// The channel's geometry.
    pub fn config(&self) -> ChannelConfig {
        layout_config(&self.layout)
    }

    /// The region, shared with the halves after `split`.
    pub fn region(&self) -> &R {
        &self.region
    }

    /// Splits into the request [`Sender`] and the response [`Receiver`].
    pub fn split(self) -> (Sender<R>, Receiver<R>) {
        // SAFETY: init_region laid out these sections; this end is the only
        // producer of the request ring / consumer of the response ring.
        unsafe {
            self.layout
                .halves(self.region, self.response_efd, Direction::Request)
        }
    }
}

/// One of the channel's two directions.
#[derive(Clone, Copy)]
enum Direction {
    /// Engine → worker, with the request arena; its doorbell is always a futex.
    Request,
    /// Worker → engine, with the response arena; its doorbell is the region's
    /// choice (`response_efd`).
    Response,
}

impl Layout {
    /// One end's halves: a [`Sender`] on the ring it produces (`sends`) and a
    /// [`Receiver`] on the other. Both ends split the same way, mirrored: each
    /// direction keeps its doorbell whichever half holds it, so the response
    /// eventfd goes to the engine's receiver and to the worker's sender.
    ///
    /// # Safety
    /// These sections are initialized within `region`, and the calling end is
    /// the only producer of `sends` and the only consumer of the other ring.
    unsafe fn halves<R: Region>(
        &self,
        region: Arc<R>,
        response_efd: Option<OwnedFd>,
        sends: Direction,
    ) -> (Sender<R>, Receiver<R>) {
        let response_bell = match response_efd {
            Some(fd) => Bell::Eventfd(fd),
            None => Bell::Futex,
        };
        let request = (self.req_ring, self.req_arena, Bell::Futex);
        let response = (self.resp_ring, self.resp_arena, response_bell);
        let ((tx_ring, tx_arena, tx_bell), (rx_ring, rx_arena, rx_bell)) = match sends {
            Direction::Request => (request, response),
            Direction::Response => (response, request),
        };
        let base = region.base();
        // SAFETY: the offsets are sections of `self` within the region
        // (caller's contract); the Arc each half keeps holds the region mapped
        // for its lifetime; the calling end is the only producer of `sends`
        // and the only consumer of the other ring.
        unsafe {
            (
                Sender::new(
                    region.clone(),
                    base.add(tx_ring),
                    base.add(tx_arena),
                    self,
                    tx_bell,
                ),
                Receiver::new(region, base.add(rx_ring), base.add(rx_arena), self, rx_bell),
            )
        }
    }
}

fn layout_config(l: &Layout) -> ChannelConfig {
    ChannelConfig {
        ring_slots: l.ring.capacity(),
        slot_size: l.ring.slot_size(),
        arena_bytes: l.arena_bytes,
    }
}

impl EngineEnd<MemfdRegion> {
    /// Creates a sealed memfd channel whose response doorbell is a futex.
    pub fn create(cfg: &ChannelConfig, name: &str) -> Result<Self, ChannelError> {
        Self::create_memfd(cfg, name, None)
    }

    /// Creates a sealed memfd channel whose worker wakes the engine by writing
    /// `efd` (send the same eventfd to the worker next to the memfd).
    pub fn create_with_eventfd(
        cfg: &ChannelConfig,
        name: &str,
        efd: BorrowedFd<'_>,
    ) -> Result<Self, ChannelError> {
        Self::create_memfd(cfg, name, Some(efd))
    }

    fn create_memfd(
        cfg: &ChannelConfig,
        name: &str,
        efd: Option<BorrowedFd<'_>>,
    ) -> Result<Self, ChannelError> {
        let len = cfg.layout()?.len;
        let region = MemfdRegion::create(name, len)?;
        region.seal()?;
        Self::create_in(region, cfg, efd)
    }

    /// The memfd to hand to the worker.
    pub fn region_fd(&self) -> BorrowedFd<'_> {
        self.region.fd()
    }
}

impl<R: Region> WorkerEnd<R> {
    /// Attaches to a channel built by [`EngineEnd::create_in`] in `region`,
    /// validating every layout field. `response_efd` must be given exactly
    /// when the region uses the eventfd response doorbell.
    pub fn attach_region(
        region: Arc<R>,
        response_efd: Option<OwnedFd>,
    ) -> Result<Self, ChannelError> {
        let (layout, flags) = validate_region(&*region)?;
        let region_eventfd = flags & FLAG_RESPONSE_EVENTFD != 0;
        if region_eventfd != response_efd.is_some() {
            return Err(ChannelError::DoorbellMismatch {
                region: flag_name(region_eventfd),
                attach: flag_name(response_efd.is_some()),
            });
        }
        Ok(Self {
            region,
            layout,
            response_efd,
            seat: None,
        })
    }

    /// The channel's geometry.
    pub fn config(&self) -> ChannelConfig {
        layout_config(&self.layout)
    }

    /// Seats the request receiver on a wake board: [`split`](Self::split)
    /// hands it out seated ([`Receiver::take_seat`]), so whoever splits the
    /// end cannot forget to. The engine's sender must take the same seat.
    pub fn take_seat(&mut self, seat: WakeSeat) {
        self.seat = Some(seat);
    }

    /// Splits into the response [`Sender`] and the request [`Receiver`]
    /// (seated, if the end was).
    pub fn split(self) -> (Sender<R>, Receiver<R>) {
        // SAFETY: validate_region checked these sections against the region;
        // this end is the only producer of the response ring / consumer of the
        // request ring.
        let (sender, mut receiver) = unsafe {
            self.layout
                .halves(self.region, self.response_efd, Direction::Response)
        };
        if let Some(seat) = self.seat {
            receiver.take_seat(seat);
        }
        (sender, receiver)
    }
}

impl WorkerEnd<MemfdRegion> {
    /// Attaches to a channel from its received memfd (futex doorbells). The
    /// memfd must be sealed against resizing.
    pub fn attach(fd: OwnedFd) -> Result<Self, ChannelError> {
        Self::attach_region(Arc::new(MemfdRegion::attach(fd)?), None)
    }

    /// Attaches to a channel whose response doorbell is the eventfd `efd`.
    pub fn attach_with_eventfd(fd: OwnedFd, efd: OwnedFd) -> Result<Self, ChannelError> {
        Self::attach_region(Arc::new(MemfdRegion::attach(fd)?), Some(efd))
    }
}

/// A heap-backed, connected channel pair for in-process tests and loom
/// models. The worker end goes through the same validation as a real attach.
///
/// # Panics
/// If `cfg` is invalid (see [`try_heap_pair`]).
pub fn heap_pair(cfg: &ChannelConfig) -> (EngineEnd<HeapRegion>, WorkerEnd<HeapRegion>) {
    try_heap_pair(cfg).expect("invalid channel config")
}

/// [`heap_pair`] that reports an invalid config instead of panicking.
pub fn try_heap_pair(
    cfg: &ChannelConfig,
) -> Result<(EngineEnd<HeapRegion>, WorkerEnd<HeapRegion>), ChannelError> {
    let engine = EngineEnd::create_in(HeapRegion::new(cfg.layout()?.len), cfg, None)?;
    let worker = WorkerEnd::attach_region(engine.region.clone(), None)?;
    Ok((engine, worker))
}

/// The sending half of an end: writes one ring and its arena.
pub struct Sender<R: Region = MemfdRegion> {
    ring: RawProducer,
    arena: ArenaWriter,
    doorbell: Doorbell,
    bell: Bell,
    /// The receiver's seat on a wake board, when it has one: its doorbell
    /// word is there, and its wake-ups are delegated ([`Sender::take_seat`]).
    seat: Option<WakeSeat>,
    /// A wake was delegated since [`Sender::take_new_delegation`] last said so.
    new_delegation: Cell<bool>,
    max_inline: usize,
    max_payload: usize,
    _region: Arc<R>,
}

/// The receiving half of an end: reads one ring and its arena.
pub struct Receiver<R: Region = MemfdRegion> {
    core: RxCore,
    doorbell: Doorbell,
    bell: Bell,
    /// Its seat on a wake board, when it has one ([`Receiver::take_seat`]).
    seated: Option<Seated>,
    /// Whether yielding pays on this consumer's core (see [`YieldContention`]).
    contention: YieldContention,
    _region: Arc<R>,
}

/// What a [`MessageView`] needs to release its message.
struct RxCore {
    ring: RawConsumer,
    arena: ArenaReader,
    max_inline: usize,
}

impl<R: Region> Sender<R> {
    /// # Safety
    /// `ring`/`arena` point at initialized sections of `layout` within
    /// `region`; this is their only producer.
    unsafe fn new(
        region: Arc<R>,
        ring: *mut u8,
        arena: *mut u8,
        layout: &Layout,
        bell: Bell,
    ) -> Self {
        // SAFETY: forwarded contract.
        let (ring, arena) = unsafe {
            (
                RawProducer::new(ring, layout.ring),
                ArenaWriter::new(arena, layout.arena_bytes),
            )
        };
        // SAFETY: the doorbell word belongs to the same ring.
        let doorbell = unsafe { Doorbell::new(ring.doorbell()) };
        let cfg = layout_config(layout);
        Self {
            ring,
            arena,
            doorbell,
            bell,
            seat: None,
            new_delegation: Cell::new(false),
            max_inline: cfg.max_inline(),
            max_payload: cfg.max_payload(),
            _region: region,
        }
    }

    /// Largest payload that travels inline.
    pub fn max_inline(&self) -> usize {
        self.max_inline
    }

    /// Largest payload at all.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Copies `payload` inline into the slot if it fits, else into the arena,
    /// publishes the message and wakes the receiver if it sleeps. Never
    /// blocks; backpressure hands the reason back.
    #[inline]
    pub fn try_send(&mut self, header: &Header, payload: &[u8]) -> Result<(), SendError> {
        self.write_one(header, payload)?;
        self.notify();
        Ok(())
    }

    /// Like [`try_send`](Self::try_send), but the payload of `len` bytes is
    /// written in place by `fill` (no intermediate buffer). `fill` gets a
    /// slice of exactly `len` bytes of shared memory.
    #[inline]
    pub fn try_send_with(
        &mut self,
        header: &Header,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<(), SendError> {
        self.write_with(header, len, |dst: *mut u8| {
            // SAFETY: `dst` is valid for `len` bytes that only we touch until
            // publication (see write_with).
            fill(unsafe { std::slice::from_raw_parts_mut(dst, len) })
        })?;
        self.notify();
        Ok(())
    }

    /// Sends messages in order until one does not fit, waking the receiver at
    /// most once. Returns how many were sent; an error only when not even the
    /// first could be (an empty batch sends 0).
    pub fn try_send_batch<'a>(
        &mut self,
        messages: impl IntoIterator<Item = (&'a Header, &'a [u8])>,
    ) -> Result<usize, SendError> {
        let mut sent = 0;
        let mut result = Ok(());
        for (h, p) in messages {
            if let Err(e) = self.write_one(h, p) {
                result = Err(e);
                break;
            }
            sent += 1;
        }
        if sent > 0 {
            self.notify();
            return Ok(sent);
        }
        result.map(|()| 0)
    }

    #[inline(always)]
    fn write_one(&mut self, header: &Header, payload: &[u8]) -> Result<(), SendError> {
        self.write_with(header, payload.len(), |dst: *mut u8| {
            // SAFETY: `dst` is valid for payload.len() bytes that nobody reads
            // before publication (see write_with); `payload` is ours.
            unsafe { copy::copy_payload(payload.as_ptr(), dst, payload.len()) }
        })
    }

    /// Reserves a slot (and arena bytes), lets `fill` write `len` payload
    /// bytes at the pointer it gets, writes the header and publishes.
    ///
    /// The inline case is the latency-critical one: everything before the
    /// seq store is on the round trip's critical path, so it is kept to a
    /// length check, the cached free-slot check, the copy and seven word
    /// stores; the arena case lives out of line.
    #[inline(always)]
    fn write_with(
        &mut self,
        header: &Header,
        len: usize,
        fill: impl FnOnce(*mut u8),
    ) -> Result<(), SendError> {
        if len > self.max_inline && len > self.max_payload {
            return Err(SendError::TooLarge {
                len,
                max: self.max_payload,
            });
        }
        let slot = match self.ring.next_free() {
            Ok(Some(slot)) => slot,
            Ok(None) => return Err(SendError::RingFull),
            Err(e) => return Err(SendError::Protocol(e)),
        };
        let body = slot.body();
        // The slot is written in this block (under a loom write access) and
        // published after it.
        {
            let _slot_guard = self.ring.tracker(0).write();
            let location = if len <= self.max_inline {
                // SAFETY: the body holds slot_size - 8 >= 56 + max_inline bytes;
                // the slot is free, so the receiver does not read it until we publish.
                fill(unsafe { body.add(HEADER_LEN - ring::SEQ_LEN) });
                PayloadLocation::Inline { len: len as u32 }
            } else {
                self.write_arena(len, fill)?
            };
            // Seven word stores after the seq word (never a `&mut` over the
            // slot's first bytes: the consumer may be reading the seq).
            let words = header.to_words(location);
            // SAFETY: the body is 8-aligned (slots are 64-aligned, +8) and has
            // at least 56 bytes; the slot is ours until published.
            unsafe { body.cast::<[u64; BODY_WORDS]>().write(words) };
        }
        self.ring.publish(slot);
        Ok(())
    }

    /// Allocates `len` (> max_inline) bytes in the arena and fills them.
    #[inline(never)]
    fn write_arena(
        &mut self,
        len: usize,
        fill: impl FnOnce(*mut u8),
    ) -> Result<PayloadLocation, SendError> {
        let a = match self.arena.try_alloc(len) {
            Ok(a) => a,
            Err(arena::AllocError::Full) => return Err(SendError::ArenaFull),
            Err(arena::AllocError::TooLarge) => {
                return Err(SendError::TooLarge {
                    len,
                    max: self.max_payload,
                })
            }
            Err(arena::AllocError::Protocol(e)) => return Err(SendError::Protocol(e)),
        };
        {
            let _arena_guards = self.arena.guards(&a, len);
            fill(a.ptr);
        }
        self.arena.commit(&a);
        Ok(PayloadLocation::Arena {
            offset: a.offset,
            len: len as u32,
        })
    }

    /// Wakes the receiver if (and only if) it announced it is going to sleep.
    /// `try_send` already calls this; exposed for callers that batch.
    ///
    /// A seated receiver's wake is handed to a consumer polling on its
    /// board if there is one ([`WakeBoard::delegate`](crate::wake_board::WakeBoard::delegate)):
    /// the caller then checks on it later ([`take_new_delegation`](Self::take_new_delegation),
    /// [`wake_if_unreleased`](Self::wake_if_unreleased)).
    #[inline]
    pub fn notify(&self) {
        if self.doorbell.should_wake() {
            self.wake_receiver();
        }
    }

    /// The receiver sleeps and this sender won the right to wake it.
    #[cold]
    #[inline(never)]
    fn wake_receiver(&self) {
        let Some(seat) = &self.seat else {
            self.bell.ring(&self.doorbell);
            return;
        };
        match seat.board().delegate(seat.slot()) {
            Delegation::WakeYourself => seat.board().wake(seat.slot()),
            Delegation::Delegated => self.new_delegation.set(true),
        }
    }

    /// Moves the receiver's doorbell word to its seat on a wake board (the
    /// receiver must take the same seat before it first waits, and before
    /// anything is sent). From then on a wake-up this sender owes is
    /// delegated to a consumer polling on the board when there is one.
    pub fn take_seat(&mut self, seat: WakeSeat) {
        // SAFETY: the word lives in the board's mapping, which `seat` keeps
        // alive, and `seat` is stored in `self` beside the doorbell.
        self.doorbell = unsafe { Doorbell::new(seat.doorbell_word()) };
        self.seat = Some(seat);
    }

    /// The receiver's seat, if it has one.
    pub fn seat(&self) -> Option<&WakeSeat> {
        self.seat.as_ref()
    }

    /// Whether a wake was delegated since the last call (the caller then
    /// checks, after a grace period, that it was done:
    /// [`wake_if_unreleased`](Self::wake_if_unreleased)).
    pub fn take_new_delegation(&self) -> bool {
        self.new_delegation.replace(false)
    }

    /// For a seated receiver, after a grace period: if it has not released
    /// everything sent, its wake may not have happened — a poller stopped
    /// or died, a peer took the request without waking, or a peer wrote
    /// `AWAKE` over the receiver's word on the board so that `notify` saw
    /// no sleeper — so this sender takes back any delegated request and
    /// wakes the receiver itself; a spare wake is harmless. Returns whether
    /// it woke. No-op without a seat (the ring's word is shared with the
    /// receiver alone).
    pub fn wake_if_unreleased(&mut self) -> bool {
        let Some(seat) = &self.seat else {
            return false;
        };
        // A release index that does not read back cleanly is a broken peer;
        // the wake is the safe answer, and the next send reports the error.
        let head = self.ring.head();
        if self.ring.released().is_ok_and(|released| released >= head) {
            return false;
        }
        // Whoever holds the request now (us, or a poller that claimed it
        // and has not woken), the receiver gets a wake from here.
        let _ = seat.board().reclaim(seat.slot());
        seat.board().wake(seat.slot());
        true
    }

    /// Messages sent so far.
    pub fn sent(&self) -> u64 {
        self.ring.head()
    }

    /// Reads back the messages the receiver never released, once that
    /// receiver is gone for good (its process has exited and been reaped).
    ///
    /// A message still unreleased is one the receiver had not finished with;
    /// for a receiver that releases each message before acting on it (the
    /// worker SDK copies a request's input out, then drops the view), it is
    /// one the receiver never acted on, so the engine may hand it to another
    /// worker. The release positions are the dead peer's last word and are
    /// checked like any other (never ahead of what was sent, never back);
    /// each message is decoded and validated exactly as [`Receiver::try_recv`]
    /// does, so a peer that scribbled on its ring yields an error, not
    /// garbage.
    pub fn into_unreleased(self) -> Result<Unreleased<R>, ProtocolError> {
        let (ring, end) = self.ring.into_unreleased()?;
        let arena = self.arena.into_unreleased()?;
        Ok(Unreleased {
            receiver: Receiver::assemble(self._region, ring, arena, self.max_inline, self.bell),
            end,
        })
    }
}

/// The messages a gone receiver never released, in order, read back by their
/// sender (see [`Sender::into_unreleased`]).
pub struct Unreleased<R: Region = MemfdRegion> {
    /// A receiver positioned where the dead one had released up to.
    receiver: Receiver<R>,
    /// The sender's head: nothing at or past it was sent on this lap.
    end: u64,
}

impl<R: Region> Unreleased<R> {
    /// The next unreleased message, `Ok(None)` after the last one sent. A
    /// message that no longer decodes (the dead peer wrote over its slot or
    /// the release positions) is an error, and so is every call after it.
    pub fn next_message(&mut self) -> Result<Option<MessageView<'_>>, RecvError> {
        let pos = self.receiver.received();
        if pos >= self.end {
            return Ok(None);
        }
        match self.receiver.try_recv()? {
            Some(view) => Ok(Some(view)),
            None => Err(RecvError::Ring(ProtocolError::Withdrawn { pos })),
        }
    }

    /// Messages left to read back.
    pub fn len(&self) -> u64 {
        self.end - self.receiver.received()
    }

    /// Whether the receiver released everything sent.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<R: Region> Receiver<R> {
    /// # Safety
    /// As [`Sender::new`], for the only consumer.
    unsafe fn new(
        region: Arc<R>,
        ring: *mut u8,
        arena: *mut u8,
        layout: &Layout,
        bell: Bell,
    ) -> Self {
        // SAFETY: forwarded contract.
        let (ring, arena) = unsafe {
            (
                RawConsumer::new(ring, layout.ring),
                ArenaReader::new(arena, layout.arena_bytes),
            )
        };
        let max_inline = layout_config(layout).max_inline();
        Self::assemble(region, ring, arena, max_inline, bell)
    }

    /// A receiver over a ring and arena consumer of one channel direction
    /// (fresh, or positioned by [`Sender::into_unreleased`]).
    fn assemble(
        region: Arc<R>,
        ring: RawConsumer,
        arena: ArenaReader,
        max_inline: usize,
        bell: Bell,
    ) -> Self {
        // SAFETY: the doorbell word belongs to the same ring.
        let doorbell = unsafe { Doorbell::new(ring.doorbell()) };
        Self {
            core: RxCore {
                ring,
                arena,
                max_inline,
            },
            doorbell,
            bell,
            seated: None,
            contention: YieldContention::new(),
            _region: region,
        }
    }

    /// The next message, if one is published. The header is copied out of
    /// shared memory once and validated on the copy; lengths and offsets are
    /// checked; a bad message is a [`RecvError`] (and stays one: the channel
    /// is broken), never UB or a panic. Dropping the view releases the slot
    /// and its arena bytes.
    #[inline(always)]
    pub fn try_recv(&mut self) -> Result<Option<MessageView<'_>>, RecvError> {
        let Some(body) = self.core.ring.peek(0)? else {
            return Ok(None);
        };
        let slot_guard = self.core.ring.tracker(0).read();
        let (header, ptr, len, arena) = self.core.decode(body)?;
        let (arena_guards, located) = match arena {
            Some((l, alen)) => (self.core.arena.guards(&l, alen), Some(l)),
            None => (arena::no_read_guards(), None),
        };
        // SAFETY: `decode` bounds-checked [ptr, ptr + len) within the slot or
        // the arena; those bytes are the sender's no more until this view
        // releases them on drop (a hostile peer can only garble them).
        let payload = unsafe { std::slice::from_raw_parts(ptr, len) };
        Ok(Some(MessageView {
            core: &mut self.core,
            header,
            payload,
            located,
            guards: Some((slot_guard, arena_guards)),
        }))
    }

    /// Calls `f` on up to `max` published messages in order, then releases
    /// all their slots and arena bytes with one store each. Returns how many
    /// were consumed; on a bad message, those before it are consumed and
    /// released and the error is returned.
    pub fn recv_batch(
        &mut self,
        max: usize,
        mut f: impl FnMut(&Header, &[u8]),
    ) -> Result<usize, RecvError> {
        let mut n = 0;
        let result = loop {
            if n == max {
                break Ok(n);
            }
            let body = match self.core.ring.peek(0) {
                Ok(Some(b)) => b,
                Ok(None) => break Ok(n),
                Err(e) => break Err(e.into()),
            };
            let _slot_guard = self.core.ring.tracker(0).read();
            match self.core.decode(body) {
                Ok((header, ptr, len, arena)) => {
                    {
                        let _arena_guards = arena.map(|(l, alen)| self.core.arena.guards(&l, alen));
                        // SAFETY: as in try_recv; released only after the loop.
                        f(&header, unsafe { std::slice::from_raw_parts(ptr, len) });
                    }
                    if let Some((l, _)) = arena {
                        self.core.arena.consume(&l);
                    }
                    self.core.ring.advance(1);
                    n += 1;
                }
                Err(e) => break Err(e),
            }
        };
        self.core.release();
        result
    }

    /// True when no message is waiting (a protocol violation counts as
    /// "not empty": `try_recv` reports it).
    #[inline]
    pub fn is_empty(&self) -> bool {
        !self.core.ring.has_next()
    }

    /// Blocks until a message is available or `timeout` passes, spinning,
    /// yielding and parking as `policy` says. A `Yield` waiter whose yields
    /// come back late (a CPU-bound thread shares its core) parks at once for
    /// a while instead ([`YieldContention`]).
    ///
    /// A seated receiver that yields polls its board meanwhile (see
    /// [`take_seat`](Self::take_seat)).
    pub fn wait(&mut self, policy: &WaitPolicy, timeout: Option<Duration>) -> WaitOutcome {
        let ring = &self.core.ring;
        doorbell::wait(
            &self.doorbell,
            &self.bell,
            policy,
            timeout,
            &mut self.contention,
            self.seated.as_ref(),
            || ring.has_next(),
        )
    }

    /// Moves this receiver's doorbell word to its seat on a wake board (the
    /// sender must take the same seat). Then, while it yields in
    /// [`wait`](Self::wait), it serves the wakes producers delegate to the
    /// board, and it parks at once when another consumer of the board
    /// already polls.
    pub fn take_seat(&mut self, seat: WakeSeat) {
        // SAFETY: the word lives in the board's mapping, which `seat` keeps
        // alive, and `seat` is stored in `self` beside the doorbell.
        self.doorbell = unsafe { Doorbell::new(seat.doorbell_word()) };
        self.seated = Some(Seated {
            seat,
            park_beside_a_poller: false,
        });
    }

    /// Whether the next waits of a seated receiver that yields park at once
    /// when another consumer of its board already polls (that one then
    /// serves its wake), instead of polling too. Right when its messages
    /// come far apart, so that the wake costs less than a second yielder
    /// costs the core's other tenants; a receiver that a tight loop of
    /// calls feeds should keep polling. Off when seated; no-op without a
    /// seat.
    pub fn park_beside_a_poller(&mut self, park: bool) {
        if let Some(seated) = &mut self.seated {
            seated.park_beside_a_poller = park;
        }
    }

    /// A seated receiver about to send a request whose answer it will wait
    /// for announces that it polls from now on, so that the wake its request
    /// causes (the callee's) is delegated to it rather than done from
    /// another core. The next [`wait`](Self::wait) withdraws it; so does
    /// [`end_polling`](Self::end_polling). No-op without a seat.
    pub fn begin_polling(&self) {
        if let Some(Seated { seat, .. }) = &self.seated {
            seat.board().enter_poll(seat.slot());
        }
    }

    /// Its seat on a wake board, if it has one.
    pub fn seat(&self) -> Option<&WakeSeat> {
        self.seated.as_ref().map(|s| &s.seat)
    }

    /// Withdraws an announcement of [`begin_polling`](Self::begin_polling)
    /// (serving what was delegated until now). No-op without a seat.
    pub fn end_polling(&self) {
        if let Some(Seated { seat, .. }) = &self.seated {
            seat.board().leave_poll(seat.slot());
        }
    }

    /// For a consumer that sleeps elsewhere (epoll on the eventfd): announces
    /// sleep. Returns false (and withdraws) if a message is already there —
    /// don't sleep then. After waking, call [`disarm_sleep`](Self::disarm_sleep).
    pub fn arm_sleep(&self) -> bool {
        self.doorbell.arm();
        if self.core.ring.has_next() {
            self.doorbell.disarm();
            return false;
        }
        true
    }

    /// Withdraws a sleep announcement.
    pub fn disarm_sleep(&self) {
        self.doorbell.disarm();
    }

    /// Messages consumed so far.
    pub fn received(&self) -> u64 {
        self.core.ring.position()
    }
}

/// A validated payload's address and length, and its arena location if any.
type LocatedPayload = (*const u8, usize, Option<(arena::Located, u32)>);

/// A validated header, its payload's address and length, and its arena
/// location if any.
type Decoded = (Header, *const u8, usize, Option<(arena::Located, u32)>);

impl RxCore {
    /// Copies the header out of the slot and validates it. The payload
    /// address stays valid until the message is released.
    #[inline(always)]
    fn decode(&self, body: *const u8) -> Result<Decoded, RecvError> {
        // Copy the header out of shared memory exactly once: volatile loads,
        // so the compiler cannot re-read a field the peer may have changed
        // after we validated it.
        let words: [u64; BODY_WORDS] = std::array::from_fn(|i| {
            // SAFETY: word i < 7 of the 8-aligned, >= 56-byte body; the slot
            // is published and ours until we release it.
            unsafe { body.cast::<u64>().add(i).read_volatile() }
        });
        // The fast path: an inline payload that fits the slot. Everything
        // else (arena payloads, and every malformed header) is checked out
        // of line; only the two payload words go there, so the header
        // fields stay in registers.
        let (payload, len, arena) = match Header::inline_len(&words) {
            Some(len) if len as usize <= self.max_inline => {
                // SAFETY: len <= max_inline, so [56, 56 + len) of the body is
                // within the slot.
                let payload = unsafe { body.add(HEADER_LEN - ring::SEQ_LEN) };
                (payload, len as usize, None)
            }
            _ => self.locate_checked(body, words[5], words[6])?,
        };
        Ok((Header::fields_from_words(&words), payload, len, arena))
    }

    /// The payload of a message that is not a well-formed inline one, from
    /// its two payload words (5 and 6 of the copied header): an arena
    /// payload where (and as long as) it may be, or the typed error.
    #[cold]
    #[inline(never)]
    fn locate_checked(
        &self,
        body: *const u8,
        word5: u64,
        word6: u64,
    ) -> Result<LocatedPayload, RecvError> {
        match Header::payload_location(word5, word6)? {
            PayloadLocation::Inline { len } => {
                if len as usize > self.max_inline {
                    return Err(RecvError::BadLength {
                        len,
                        max: self.max_inline,
                    });
                }
                // SAFETY: len <= max_inline, so [56, 56 + len) of the body is
                // within the slot.
                let payload = unsafe { body.add(HEADER_LEN - ring::SEQ_LEN) };
                Ok((payload, len as usize, None))
            }
            PayloadLocation::Arena { offset, len } => {
                // locate checks offset + len against the data area and the
                // offset the sender's cursor dictates.
                let l = self.arena.locate(offset, len)?;
                Ok((l.ptr, len as usize, Some((l, len))))
            }
        }
    }

    #[inline(always)]
    fn release(&mut self) {
        self.ring.release();
        self.arena.release();
    }
}

/// A received message, borrowed from the [`Receiver`]. Dropping it releases
/// the slot and (in order) the arena bytes.
pub struct MessageView<'a> {
    core: &'a mut RxCore,
    header: Header,
    payload: &'a [u8],
    located: Option<arena::Located>,
    /// Loom access guards (zero-sized otherwise), ended before the release.
    guards: Option<(crate::sync::ReadGuard, ArenaReadGuards)>,
}

impl MessageView<'_> {
    /// The validated copy of the header.
    #[inline]
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The payload, in shared memory (zero-copy). A hostile peer could
    /// rewrite these bytes while you read them: parse them once.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        self.payload
    }
}

impl Drop for MessageView<'_> {
    #[inline]
    fn drop(&mut self) {
        // End the (loom) read accesses before handing the bytes back.
        self.guards = None;
        if let Some(l) = &self.located {
            self.core.arena.consume(l);
        }
        self.core.ring.advance(1);
        self.core.release();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::message::Kind;

    fn small() -> ChannelConfig {
        ChannelConfig {
            ring_slots: 4,
            slot_size: 128,
            arena_bytes: 1024,
        }
    }

    fn header(call_id: u64) -> Header {
        Header {
            kind: Kind::Invoke,
            call_id,
            function_id: 3,
            ..Header::default()
        }
    }

    fn payload(seed: u64, len: usize) -> Vec<u8> {
        (0..len).map(|i| (seed as usize * 31 + i) as u8).collect()
    }

    /// The same behaviour over heap and memfd regions.
    fn channel_behaviour<R: Region>(engine: EngineEnd<R>, worker: WorkerEnd<R>) {
        let cfg = engine.config();
        assert_eq!(worker.config(), cfg);
        let (mut req_tx, mut resp_rx) = engine.split();
        let (mut resp_tx, mut req_rx) = worker.split();
        assert_eq!(req_tx.max_inline(), 64);
        assert_eq!(req_tx.max_payload(), 1024);
        assert!(req_rx.is_empty());
        assert!(req_rx.try_recv().unwrap().is_none());

        // Inline and arena payloads, in order, with their headers.
        let sizes = [0usize, 1, 64, 65, 300, 1024];
        for (i, &n) in sizes.iter().enumerate().take(4) {
            req_tx
                .try_send(&header(i as u64), &payload(i as u64, n))
                .unwrap();
        }
        assert_eq!(req_tx.try_send(&header(9), b"x"), Err(SendError::RingFull));
        assert_eq!(
            req_tx.try_send(&header(9), &[0; 1025]),
            Err(SendError::TooLarge {
                len: 1025,
                max: 1024
            })
        );
        for (i, &n) in sizes.iter().enumerate().take(4) {
            let m = req_rx.try_recv().unwrap().unwrap();
            assert_eq!(*m.header(), header(i as u64));
            assert_eq!(m.payload(), &payload(i as u64, n)[..]);
        }
        assert!(req_rx.try_recv().unwrap().is_none());

        // Arena backpressure: 2 x 448 fill 896 of 1024; the third waits for a
        // release, and gets its room once the receiver drops the first view.
        resp_tx.try_send(&header(10), &payload(10, 448)).unwrap();
        resp_tx.try_send(&header(11), &payload(11, 448)).unwrap();
        assert_eq!(
            resp_tx.try_send(&header(12), &payload(12, 448)),
            Err(SendError::ArenaFull)
        );
        {
            let m = resp_rx.try_recv().unwrap().unwrap();
            assert_eq!(m.header().call_id, 10);
            assert_eq!(
                resp_tx.try_send(&header(12), &payload(12, 448)),
                Err(SendError::ArenaFull)
            );
        }
        resp_tx.try_send(&header(12), &payload(12, 448)).unwrap();
        // A full-arena payload also gets through once everything is released.
        let mut got = Vec::new();
        assert_eq!(
            resp_rx
                .recv_batch(8, |h, p| got.push((h.call_id, p.to_vec())))
                .unwrap(),
            2
        );
        assert_eq!(got, vec![(11, payload(11, 448)), (12, payload(12, 448))]);
        resp_tx.try_send(&header(13), &payload(13, 1024)).unwrap();
        assert_eq!(
            resp_rx.try_recv().unwrap().unwrap().payload(),
            &payload(13, 1024)[..]
        );

        // Batch send: stops at the full ring, reports how many went.
        let hs: Vec<Header> = (20..26).map(header).collect();
        let ps: Vec<Vec<u8>> = (20..26)
            .map(|i| payload(i, 30 * (i as usize - 20)))
            .collect();
        let sent = req_tx
            .try_send_batch(hs.iter().zip(ps.iter().map(|p| &p[..])))
            .unwrap();
        assert_eq!(sent, 4);
        assert_eq!(
            req_tx.try_send_batch(hs[4..].iter().zip(ps[4..].iter().map(|p| &p[..]))),
            Err(SendError::RingFull)
        );
        let mut n = 0;
        req_rx
            .recv_batch(100, |h, p| {
                assert_eq!(h.call_id, 20 + n);
                assert_eq!(p, &payload(20 + n, 30 * n as usize)[..]);
                n += 1;
            })
            .unwrap();
        assert_eq!(n, 4);
        assert_eq!(
            req_tx.try_send_with(&header(30), 100, |b| b.fill(7)),
            Ok(())
        );
        assert_eq!(
            req_rx.try_recv().unwrap().unwrap().payload(),
            &[7u8; 100][..]
        );
        assert_eq!(req_tx.sent(), req_rx.received());

        // Waiting: times out on an empty ring with every policy, returns at
        // once when a message is there.
        for policy in [
            WaitPolicy::Spin,
            WaitPolicy::Yield {
                spin: Duration::from_micros(50),
            },
            WaitPolicy::Park {
                spin: Duration::ZERO,
            },
        ] {
            assert_eq!(
                req_rx.wait(&policy, Some(Duration::from_millis(2))),
                WaitOutcome::TimedOut
            );
            req_tx.try_send(&header(40), b"w").unwrap();
            assert_eq!(
                req_rx.wait(&policy, Some(Duration::from_millis(2))),
                WaitOutcome::Ready
            );
            drop(req_rx.try_recv().unwrap().unwrap());
        }
        assert!(req_rx.arm_sleep());
        req_rx.disarm_sleep();
        req_tx.try_send(&header(41), b"w").unwrap();
        assert!(!req_rx.arm_sleep());
    }

    /// A request ring whose receiver died: it released the first message,
    /// held the second without releasing it, never saw the third.
    #[test]
    fn unreleased_messages_are_read_back_in_order() {
        let (engine, worker) = heap_pair(&small());
        let (mut tx, _resp_rx) = engine.split();
        let (_resp_tx, mut rx) = worker.split();
        // Earlier messages move the arena cursor to 448 and the ring close
        // to a wrap, so that the read-back starts mid-arena and mid-ring.
        for (i, len) in [448usize, 8, 8].into_iter().enumerate() {
            tx.try_send(&header(i as u64), &payload(i as u64, len))
                .unwrap();
            let m = rx.try_recv().unwrap().unwrap();
            assert_eq!(m.payload().len(), len);
        }
        let sent = [(10u64, 10usize), (11, 300), (12, 300)];
        for &(id, len) in &sent {
            tx.try_send(&header(id), &payload(id, len)).unwrap();
        }
        drop(rx.try_recv().unwrap().unwrap());
        // Read, never released: the receiver dies holding it.
        std::mem::forget(rx.try_recv().unwrap().unwrap());
        drop(rx);

        let mut back = tx.into_unreleased().unwrap();
        assert_eq!(back.len(), 2);
        // The first 300 bytes sit at arena offset 448, the next ones do not
        // fit the tail and wrap to 0: the read-back must expect both where
        // the sender put them.
        for &(id, len) in &sent[1..] {
            let m = back.next_message().unwrap().expect("unreleased message");
            assert_eq!(*m.header(), header(id));
            assert_eq!(m.payload(), &payload(id, len)[..]);
        }
        assert!(back.is_empty());
        assert!(back.next_message().unwrap().is_none());
    }

    #[test]
    fn a_receiver_that_released_everything_leaves_nothing_to_read_back() {
        let (engine, worker) = heap_pair(&small());
        let (mut tx, _resp_rx) = engine.split();
        let (_resp_tx, mut rx) = worker.split();
        tx.try_send(&header(1), b"one").unwrap();
        tx.try_send(&header(2), &payload(2, 200)).unwrap();
        drop(rx.try_recv().unwrap().unwrap());
        drop(rx.try_recv().unwrap().unwrap());
        let mut back = tx.into_unreleased().unwrap();
        assert!(back.is_empty());
        assert!(back.next_message().unwrap().is_none());
    }

    /// What a dead peer left in shared memory is checked, not trusted.
    #[test]
    fn read_back_refuses_a_scribbled_release_index_or_slot() {
        let scribble = |offset_in_ring: &dyn Fn(&Layout) -> usize, value: u64| {
            let (engine, _worker) = heap_pair(&small());
            let at = offset_in_ring(&engine.layout) + engine.layout.req_ring;
            let base = engine.region().base();
            let (mut tx, _resp_rx) = engine.split();
            tx.try_send(&header(1), b"one").unwrap();
            tx.try_send(&header(2), b"two").unwrap();
            // SAFETY: `at` is an 8-aligned word inside the request ring of
            // the heap region, which `tx` keeps alive; no other thread runs.
            unsafe { base.add(at).cast::<u64>().write_volatile(value) };
            tx.into_unreleased()
        };
        // A release index ahead of everything sent.
        let err = scribble(&|_| ring::RELEASE_OFFSET, 3).err().unwrap();
        assert_eq!(
            err,
            ProtocolError::BadRelease {
                release: 3,
                last_seen: 0,
                head: 2
            }
        );
        // The second message's sequence word set back to "empty".
        let mut back = scribble(&|l: &Layout| l.ring.slot_offset(1), 0).unwrap();
        drop(back.next_message().unwrap().unwrap());
        assert_eq!(
            back.next_message().err(),
            Some(RecvError::Ring(ProtocolError::Withdrawn { pos: 1 }))
        );
    }

    #[test]
    fn channel_on_heap() {
        let (e, w) = heap_pair(&small());
        channel_behaviour(e, w);
    }

    #[test]
    fn channel_on_memfd() {
        let e = EngineEnd::create(&small(), "chan-test").unwrap();
        let w = WorkerEnd::attach(e.region_fd().try_clone_to_owned().unwrap()).unwrap();
        channel_behaviour(e, w);
    }

    /// A parked (futex) or yielding receiver is woken by a sender on another
    /// thread, repeatedly.
    #[test]
    fn parked_receiver_is_woken_by_another_thread() {
        let (engine, worker) = heap_pair(&small());
        let (mut tx, _r) = engine.split();
        let (_t, mut rx) = worker.split();
        let sender = std::thread::spawn(move || {
            for i in 0..20u64 {
                std::thread::sleep(Duration::from_millis(1));
                while tx.try_send(&header(i), &payload(i, 100)) == Err(SendError::RingFull) {
                    std::thread::yield_now();
                }
            }
        });
        let policies = [
            WaitPolicy::Park {
                spin: Duration::ZERO,
            },
            WaitPolicy::Yield {
                spin: Duration::from_micros(10),
            },
        ];
        for i in 0..20u64 {
            let policy = &policies[i as usize % 2];
            assert_eq!(
                rx.wait(policy, Some(Duration::from_secs(20))),
                WaitOutcome::Ready
            );
            let m = rx.try_recv().unwrap().unwrap();
            assert_eq!((m.header().call_id, m.payload()), (i, &payload(i, 100)[..]));
        }
        sender.join().unwrap();
    }

    /// A sender and a receiver seated on slot 0 of a fresh board; slot 1
    /// is another consumer of the board (a poller, or a stopped one).
    fn seated_pair() -> (
        Sender<HeapRegion>,
        Receiver<HeapRegion>,
        crate::wake_board::WakeSeat,
    ) {
        use crate::wake_board::{SharedWakeBoard, Slot, WakeSeat};
        let board = std::sync::Arc::new(SharedWakeBoard::create("channel-seat-test").unwrap());
        let (engine, worker) = heap_pair(&small());
        let (mut tx, _r) = engine.split();
        let (_t, mut rx) = worker.split();
        tx.take_seat(WakeSeat::new(board.clone(), Slot::new(0).unwrap()));
        rx.take_seat(WakeSeat::new(board.clone(), Slot::new(0).unwrap()));
        (tx, rx, WakeSeat::new(board, Slot::new(1).unwrap()))
    }

    /// `rx` waiting (parked, 10 s at most) on a thread of its own for
    /// message `i`.
    fn receive_parked(rx: Receiver<HeapRegion>, i: u64) -> Parked {
        let tid = Arc::new(std::sync::atomic::AtomicI32::new(0));
        let its_tid = tid.clone();
        let handle = std::thread::spawn(move || {
            let mut rx = rx;
            // SAFETY: gettid has no arguments and cannot fail.
            its_tid.store(
                unsafe { libc::gettid() },
                std::sync::atomic::Ordering::Release,
            );
            let parked = WaitPolicy::Park {
                spin: Duration::ZERO,
            };
            let outcome = rx.wait(&parked, Some(Duration::from_secs(10)));
            if outcome == WaitOutcome::Ready {
                let m = rx.try_recv().unwrap().unwrap();
                assert_eq!(m.header().call_id, i);
            }
            (rx, outcome)
        });
        Parked { handle, tid }
    }

    /// A receiver waiting on its own thread ([`receive_parked`]).
    struct Parked {
        handle: std::thread::JoinHandle<(Receiver<HeapRegion>, WaitOutcome)>,
        /// Its thread's id, once it runs.
        tid: Arc<std::sync::atomic::AtomicI32>,
    }

    impl Parked {
        fn is_finished(&self) -> bool {
            self.handle.is_finished()
        }

        fn join(self) -> std::thread::Result<(Receiver<HeapRegion>, WaitOutcome)> {
            self.handle.join()
        }

        /// Until the receiver is inside its `FUTEX_WAIT`: its word on the
        /// board (`seat`'s board, slot 0) says it sleeps and its thread
        /// sleeps, the futex being the only blocking call on its way. A
        /// word that changes before the call only makes the receiver
        /// re-check (and, with a message there, return without a wake),
        /// so tests about who wakes it must start from here.
        fn until_in_futex_wait(&self, seat: &crate::wake_board::WakeSeat) {
            until_asleep(seat);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let tid = loop {
                let tid = self.tid.load(std::sync::atomic::Ordering::Acquire);
                if tid != 0 {
                    break tid;
                }
                std::thread::yield_now();
            };
            let stat = format!("/proc/self/task/{tid}/stat");
            loop {
                let text = std::fs::read_to_string(&stat).unwrap_or_default();
                // The state follows the command name's closing parenthesis.
                let state = text
                    .rsplit_once(") ")
                    .and_then(|(_, rest)| rest.chars().next());
                if state == Some('S') {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the receiver never slept in its futex (state {state:?})"
                );
                std::thread::yield_now();
            }
        }
    }

    /// Until `rx`'s doorbell (its seat's word) says it sleeps.
    fn until_asleep(seat: &crate::wake_board::WakeSeat) {
        let word = seat
            .board()
            .doorbell_word(crate::wake_board::Slot::new(0).unwrap());
        while word.load(std::sync::atomic::Ordering::Acquire) != doorbell::SLEEPING {
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_seated_receivers_wake_is_done_by_the_poller_it_was_delegated_to() {
        let (mut tx, mut rx, poller) = seated_pair();
        poller.board().enter_poll(poller.slot());
        for i in 0..50u64 {
            let waiting = receive_parked(rx, i);
            until_asleep(&poller);
            tx.try_send(&header(i), b"x").unwrap();
            assert!(tx.take_new_delegation(), "round {i}: delegated");
            assert!(!tx.take_new_delegation(), "said once");
            // The poller does the wake from its seat.
            while !waiting.is_finished() {
                poller.board().serve();
                std::thread::yield_now();
            }
            let (back, outcome) = waiting.join().unwrap();
            assert_eq!(outcome, WaitOutcome::Ready, "round {i}");
            rx = back;
            // Taken in time: nothing for the sender to settle.
            assert!(!tx.wake_if_unreleased(), "round {i}");
        }
        // No poller: the sender wakes the receiver itself.
        assert_eq!(poller.board().leave_poll(poller.slot()), 0);
        let waiting = receive_parked(rx, 99);
        until_asleep(&poller);
        tx.try_send(&header(99), b"x").unwrap();
        assert!(!tx.take_new_delegation());
        assert_eq!(waiting.join().unwrap().1, WaitOutcome::Ready);
    }

    #[test]
    fn a_wake_delegated_to_a_stopped_poller_is_settled_by_the_sender() {
        let (mut tx, rx, stopped) = seated_pair();
        // A poller that announced itself and then stopped (SIGSTOP): it
        // never serves.
        stopped.board().enter_poll(stopped.slot());
        let waiting = receive_parked(rx, 7);
        waiting.until_in_futex_wait(&stopped);
        tx.try_send(&header(7), b"x").unwrap();
        assert!(tx.take_new_delegation());
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiting.is_finished(), "nobody woke the receiver yet");
        // The grace period is over: the sender takes the wake back.
        assert!(tx.wake_if_unreleased());
        let (_rx, outcome) = waiting.join().unwrap();
        assert_eq!(outcome, WaitOutcome::Ready);
        assert!(!tx.wake_if_unreleased(), "settled once");
    }

    #[test]
    fn a_sleeper_whose_word_a_peer_overwrote_is_woken_by_the_sender_after_all() {
        let (mut tx, rx, peer) = seated_pair();
        let waiting = receive_parked(rx, 5);
        waiting.until_in_futex_wait(&peer);
        // Another consumer of the board writes AWAKE over the sleeper's
        // word: `notify` then sees nobody to wake.
        let word = peer
            .board()
            .doorbell_word(crate::wake_board::Slot::new(0).unwrap());
        word.store(doorbell::AWAKE, std::sync::atomic::Ordering::Release);
        tx.try_send(&header(5), b"x").unwrap();
        assert!(!tx.take_new_delegation());
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiting.is_finished(), "the sleeper missed its wake");
        // The message was not taken in time: the sender wakes.
        assert!(tx.wake_if_unreleased());
        assert_eq!(waiting.join().unwrap().1, WaitOutcome::Ready);
        assert!(!tx.wake_if_unreleased(), "taken now");
    }

    #[test]
    fn a_seated_receiver_parks_at_once_beside_a_poller_only_when_told() {
        let (_tx, mut rx, poller) = seated_pair();
        poller.board().enter_poll(poller.slot());
        let yielding = WaitPolicy::Yield {
            spin: Duration::from_secs(5),
        };
        // Told to: parks at once (no yielding for 5 s), so the timeout
        // ends the wait, and it never announced itself.
        rx.park_beside_a_poller(true);
        let started = std::time::Instant::now();
        assert_eq!(
            rx.wait(&yielding, Some(Duration::from_millis(30))),
            WaitOutcome::TimedOut
        );
        assert!(started.elapsed() < Duration::from_secs(4));
        assert!(!poller.board().others_polling(poller.slot()));
        // Not told to: yields (and polls) until the timeout, beside the
        // other poller; its own bit is withdrawn when the wait ends.
        rx.park_beside_a_poller(false);
        assert_eq!(
            rx.wait(&yielding, Some(Duration::from_millis(30))),
            WaitOutcome::TimedOut
        );
        assert!(!poller.board().others_polling(poller.slot()));
        // begin_polling announces it, end_polling withdraws it.
        rx.begin_polling();
        assert!(poller.board().others_polling(poller.slot()));
        rx.end_polling();
        assert!(!poller.board().others_polling(poller.slot()));
        // So does any wait, spinning included, however it ends.
        for policy in [
            WaitPolicy::Spin,
            yielding,
            WaitPolicy::Park {
                spin: Duration::ZERO,
            },
        ] {
            rx.begin_polling();
            assert_eq!(
                rx.wait(&policy, Some(Duration::from_millis(5))),
                WaitOutcome::TimedOut,
                "{policy:?}"
            );
            assert!(!poller.board().others_polling(poller.slot()), "{policy:?}");
        }
    }

    #[test]
    fn configs_are_validated() {
        let ok = ChannelConfig::default();
        assert!(ok.validate().is_ok());
        assert_eq!(ok.max_inline(), 192);
        assert_eq!(ok.max_payload(), 1 << 20);
        assert_eq!(ok.region_len() % 4096, 0);
        let bad = |c: ChannelConfig| c.validate().unwrap_err();
        assert_eq!(
            bad(ChannelConfig {
                slot_size: 64,
                ..ok
            }),
            ConfigError::SlotTooSmall(64)
        );
        assert!(matches!(
            bad(ChannelConfig {
                ring_slots: 3,
                ..ok
            }),
            ConfigError::Ring(_)
        ));
        assert_eq!(
            bad(ChannelConfig {
                arena_bytes: 100,
                ..ok
            }),
            ConfigError::BadArena(100)
        );
        assert_eq!(
            ChannelConfig {
                ring_slots: 3,
                ..ok
            }
            .region_len(),
            0
        );
        assert!(try_heap_pair(&ChannelConfig {
            ring_slots: 0,
            ..ok
        })
        .is_err());
        let no_arena = ChannelConfig {
            arena_bytes: 0,
            ..ok
        };
        let (e, _w) = heap_pair(&no_arena);
        let (mut tx, _rx) = e.split();
        assert_eq!(
            tx.try_send(&Header::default(), &[0; 193]),
            Err(SendError::TooLarge { len: 193, max: 192 })
        );
    }
}
