//! The message header: the first cache line of every ring slot.
//!
//! Wire format (little-endian, offsets from the start of the slot):
//!
//! | off | size | field            | owner                                   |
//! |-----|------|------------------|-----------------------------------------|
//! | 0   | 8    | seq              | ring (publication sequence, see `ring`) |
//! | 8   | 2    | kind             | user ([`Kind`])                         |
//! | 10  | 2    | flags            | user                                    |
//! | 12  | 4    | function_id      | user                                    |
//! | 16  | 8    | call_id          | user                                    |
//! | 24  | 8    | parent_call_id   | user (0 = none)                         |
//! | 32  | 8    | t0_ns            | user                                    |
//! | 40  | 8    | t1_ns            | user                                    |
//! | 48  | 4    | payload_len      | channel                                 |
//! | 52  | 2    | status           | user                                    |
//! | 54  | 2    | placement        | channel (0 inline, 1 arena)             |
//! | 56  | 4    | deadline_us      | user                                    |
//! | 60  | 4    | arena_offset     | channel (byte offset in the arena)      |
//!
//! The inline payload follows at offset 64, to the end of the slot.
//!
//! As in smoltcp's `wire` module, [`HeaderView`] is a checked view over bytes
//! and [`Header`] (with [`PayloadLocation`]) is the parsed representation with
//! `parse`/`emit`. A receiver copies the 56 bytes after the sequence word out
//! of shared memory once and parses the copy: the peer may rewrite the slot
//! at any time, so nothing is ever re-read.

/// Size of the header, including the ring's sequence word (one cache line).
pub const HEADER_LEN: usize = 64;

/// Byte offsets of the header fields within a slot.
pub mod field {
    use core::ops::Range;
    /// Ring sequence word (owned by the ring, not part of [`super::Header`]).
    pub const SEQ: Range<usize> = 0..8;
    /// [`super::Kind`] as a u16.
    pub const KIND: Range<usize> = 8..10;
    /// User flags.
    pub const FLAGS: Range<usize> = 10..12;
    /// Function id.
    pub const FUNCTION_ID: Range<usize> = 12..16;
    /// Call id.
    pub const CALL_ID: Range<usize> = 16..24;
    /// Parent call id.
    pub const PARENT_CALL_ID: Range<usize> = 24..32;
    /// First timestamp.
    pub const T0_NS: Range<usize> = 32..40;
    /// Second timestamp.
    pub const T1_NS: Range<usize> = 40..48;
    /// Payload length in bytes.
    pub const PAYLOAD_LEN: Range<usize> = 48..52;
    /// Status code.
    pub const STATUS: Range<usize> = 52..54;
    /// Payload placement (0 inline, 1 arena).
    pub const PLACEMENT: Range<usize> = 54..56;
    /// Remaining deadline in µs.
    pub const DEADLINE_US: Range<usize> = 56..60;
    /// Arena offset of the payload.
    pub const ARENA_OFFSET: Range<usize> = 60..64;
}

/// What a message is. On the wire a `u16`; values this version does not know
/// are kept as [`Kind::Unknown`] so the receiver decides what to do with them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Run a function (engine → worker, or worker → engine for an internal call).
    #[default]
    Invoke,
    /// A call finished (worker → engine, or engine → worker for an internal call).
    Complete,
    /// A kind this version does not know.
    Unknown(u16),
}

impl Kind {
    const INVOKE: u16 = 1;
    const COMPLETE: u16 = 2;
}

impl From<u16> for Kind {
    fn from(raw: u16) -> Self {
        match raw {
            Kind::INVOKE => Kind::Invoke,
            Kind::COMPLETE => Kind::Complete,
            other => Kind::Unknown(other),
        }
    }
}

impl From<Kind> for u16 {
    fn from(k: Kind) -> u16 {
        match k {
            Kind::Invoke => Kind::INVOKE,
            Kind::Complete => Kind::COMPLETE,
            Kind::Unknown(raw) => raw,
        }
    }
}

/// Where a message's payload lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadLocation {
    /// In the slot, right after the header.
    Inline {
        /// Length in bytes.
        len: u32,
    },
    /// In the direction's payload arena.
    Arena {
        /// Byte offset within the arena's data area.
        offset: u32,
        /// Length in bytes.
        len: u32,
    },
}

impl PayloadLocation {
    /// Payload length in bytes.
    pub fn len(&self) -> u32 {
        match *self {
            PayloadLocation::Inline { len } | PayloadLocation::Arena { len, .. } => len,
        }
    }
    /// True for a zero-length payload.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A message header: the validated *copy* a receiver works with.
///
/// `payload_len` and the arena location are not here: the channel manages
/// them (see [`PayloadLocation`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// What the message is.
    pub kind: Kind,
    /// User flags (the channel does not interpret them).
    pub flags: u16,
    /// Function id.
    pub function_id: u32,
    /// Call id (engine-unique).
    pub call_id: u64,
    /// Parent call id; 0 = none.
    pub parent_call_id: u64,
    /// Timestamp (CLOCK_MONOTONIC ns); meaning per kind.
    pub t0_ns: u64,
    /// Timestamp (CLOCK_MONOTONIC ns); meaning per kind.
    pub t1_ns: u64,
    /// For `Complete`: 0 ok, else a status code the engine defines.
    pub status: u16,
    /// Remaining deadline budget in µs; 0 = none.
    pub deadline_us: u32,
}

/// Why header bytes could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Fewer than [`HEADER_LEN`] bytes.
    #[error("header truncated: {0} bytes, need 64")]
    Truncated(usize),
    /// The placement field is neither inline (0) nor arena (1).
    #[error("bad payload placement {0}")]
    BadPlacement(u16),
    /// An inline payload that claims an arena offset.
    #[error("inline payload with non-zero arena offset {0}")]
    StrayArenaOffset(u32),
}

const PLACEMENT_INLINE: u16 = 0;
const PLACEMENT_ARENA: u16 = 1;

/// A checked view over the first [`HEADER_LEN`] bytes of a slot.
#[derive(Debug, Clone, Copy)]
pub struct HeaderView<T: AsRef<[u8]>> {
    buffer: T,
}

macro_rules! get {
    ($name:ident, $ty:ty, $range:expr) => {
        #[doc = concat!("The raw `", stringify!($name), "` field.")]
        #[inline]
        pub fn $name(&self) -> $ty {
            let b = &self.buffer.as_ref()[$range];
            <$ty>::from_le_bytes(b.try_into().unwrap_or_default())
        }
    };
}

macro_rules! set {
    ($name:ident, $ty:ty, $range:expr) => {
        #[doc = "Writes the field."]
        #[inline]
        pub fn $name(&mut self, v: $ty) {
            self.buffer.as_mut()[$range].copy_from_slice(&v.to_le_bytes());
        }
    };
}

impl<T: AsRef<[u8]>> HeaderView<T> {
    /// Wraps `buffer` after checking it holds a whole header.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, HeaderError> {
        let len = buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(HeaderError::Truncated(len));
        }
        Ok(Self { buffer })
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    get!(seq, u64, field::SEQ);
    get!(kind_raw, u16, field::KIND);
    get!(flags, u16, field::FLAGS);
    get!(function_id, u32, field::FUNCTION_ID);
    get!(call_id, u64, field::CALL_ID);
    get!(parent_call_id, u64, field::PARENT_CALL_ID);
    get!(t0_ns, u64, field::T0_NS);
    get!(t1_ns, u64, field::T1_NS);
    get!(payload_len, u32, field::PAYLOAD_LEN);
    get!(status, u16, field::STATUS);
    get!(placement, u16, field::PLACEMENT);
    get!(deadline_us, u32, field::DEADLINE_US);
    get!(arena_offset, u32, field::ARENA_OFFSET);
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> HeaderView<T> {
    set!(set_kind_raw, u16, field::KIND);
    set!(set_flags, u16, field::FLAGS);
    set!(set_function_id, u32, field::FUNCTION_ID);
    set!(set_call_id, u64, field::CALL_ID);
    set!(set_parent_call_id, u64, field::PARENT_CALL_ID);
    set!(set_t0_ns, u64, field::T0_NS);
    set!(set_t1_ns, u64, field::T1_NS);
    set!(set_payload_len, u32, field::PAYLOAD_LEN);
    set!(set_status, u16, field::STATUS);
    set!(set_placement, u16, field::PLACEMENT);
    set!(set_deadline_us, u32, field::DEADLINE_US);
    set!(set_arena_offset, u32, field::ARENA_OFFSET);
}

impl Header {
    /// Parses a header and its payload location. Every bit pattern parses to
    /// either a value or a [`HeaderError`]; the location still has to be
    /// checked against the channel's limits by the caller.
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(
        view: &HeaderView<T>,
    ) -> Result<(Header, PayloadLocation), HeaderError> {
        let len = view.payload_len();
        let offset = view.arena_offset();
        let location = match view.placement() {
            PLACEMENT_INLINE if offset != 0 => return Err(HeaderError::StrayArenaOffset(offset)),
            PLACEMENT_INLINE => PayloadLocation::Inline { len },
            PLACEMENT_ARENA => PayloadLocation::Arena { offset, len },
            other => return Err(HeaderError::BadPlacement(other)),
        };
        let header = Header {
            kind: Kind::from(view.kind_raw()),
            flags: view.flags(),
            function_id: view.function_id(),
            call_id: view.call_id(),
            parent_call_id: view.parent_call_id(),
            t0_ns: view.t0_ns(),
            t1_ns: view.t1_ns(),
            status: view.status(),
            deadline_us: view.deadline_us(),
        };
        Ok((header, location))
    }

    /// Writes every header field except the sequence word.
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        view: &mut HeaderView<T>,
        location: PayloadLocation,
    ) {
        view.set_kind_raw(self.kind.into());
        view.set_flags(self.flags);
        view.set_function_id(self.function_id);
        view.set_call_id(self.call_id);
        view.set_parent_call_id(self.parent_call_id);
        view.set_t0_ns(self.t0_ns);
        view.set_t1_ns(self.t1_ns);
        view.set_status(self.status);
        view.set_deadline_us(self.deadline_us);
        match location {
            PayloadLocation::Inline { len } => {
                view.set_payload_len(len);
                view.set_placement(PLACEMENT_INLINE);
                view.set_arena_offset(0);
            }
            PayloadLocation::Arena { offset, len } => {
                view.set_payload_len(len);
                view.set_placement(PLACEMENT_ARENA);
                view.set_arena_offset(offset);
            }
        }
    }
}

/// Number of little-endian u64 words after the sequence word (bytes 8..64).
pub const BODY_WORDS: usize = 7;

impl Header {
    /// Encodes the header as the seven words at bytes 8..64 of a slot (the
    /// channel's hot path: seven stores instead of twelve field writes).
    /// Byte-for-byte identical to [`Header::emit`].
    #[inline(always)]
    pub fn to_words(&self, location: PayloadLocation) -> [u64; BODY_WORDS] {
        let (placement, len, offset) = match location {
            PayloadLocation::Inline { len } => (PLACEMENT_INLINE, len, 0),
            PayloadLocation::Arena { offset, len } => (PLACEMENT_ARENA, len, offset),
        };
        [
            u64::from(u16::from(self.kind))
                | u64::from(self.flags) << 16
                | u64::from(self.function_id) << 32,
            self.call_id,
            self.parent_call_id,
            self.t0_ns,
            self.t1_ns,
            u64::from(len) | u64::from(self.status) << 32 | u64::from(placement) << 48,
            u64::from(self.deadline_us) | u64::from(offset) << 32,
        ]
        .map(u64::to_le)
    }

    /// Decodes the seven words at bytes 8..64 of a slot; the same result as
    /// [`Header::parse`] over the same bytes.
    #[inline(always)]
    pub fn from_words(words: &[u64; BODY_WORDS]) -> Result<(Header, PayloadLocation), HeaderError> {
        let location = Header::payload_location(words[5], words[6])?;
        Ok((Header::fields_from_words(words), location))
    }

    /// The payload location encoded in words 5 and 6 (bytes 48..64): the
    /// placement, length and arena offset, checked for consistency.
    #[inline(always)]
    pub(crate) fn payload_location(word5: u64, word6: u64) -> Result<PayloadLocation, HeaderError> {
        let w5 = u64::from_le(word5);
        let len = w5 as u32;
        let offset = (u64::from_le(word6) >> 32) as u32;
        match (w5 >> 48) as u16 {
            PLACEMENT_INLINE if offset != 0 => Err(HeaderError::StrayArenaOffset(offset)),
            PLACEMENT_INLINE => Ok(PayloadLocation::Inline { len }),
            PLACEMENT_ARENA => Ok(PayloadLocation::Arena { offset, len }),
            other => Err(HeaderError::BadPlacement(other)),
        }
    }

    /// The user fields of the seven words. Every bit pattern is a valid
    /// [`Header`]; the payload fields are not looked at.
    #[inline(always)]
    pub(crate) fn fields_from_words(words: &[u64; BODY_WORDS]) -> Header {
        let w = |i: usize| u64::from_le(words[i]);
        Header {
            kind: Kind::from(w(0) as u16),
            flags: (w(0) >> 16) as u16,
            function_id: (w(0) >> 32) as u32,
            call_id: w(1),
            parent_call_id: w(2),
            t0_ns: w(3),
            t1_ns: w(4),
            status: (w(5) >> 32) as u16,
            deadline_us: w(6) as u32,
        }
    }

    /// The payload length when the words describe an inline payload (the
    /// placement is inline and the arena offset zero: exactly the headers for
    /// which [`from_words`](Self::from_words) returns `Inline`), else `None`.
    #[inline(always)]
    pub(crate) fn inline_len(words: &[u64; BODY_WORDS]) -> Option<u32> {
        let w5 = u64::from_le(words[5]);
        let offset = u64::from_le(words[6]) >> 32;
        // One test for both: placement (bits 48..64 of word 5) and offset
        // (bits 32..64 of word 6) must be zero.
        if (w5 >> 48) | offset == 0 {
            Some(w5 as u32)
        } else {
            None
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Header {
        Header {
            kind: Kind::Complete,
            flags: 0xa5a5,
            function_id: 7,
            call_id: u64::MAX - 3,
            parent_call_id: 42,
            t0_ns: 1,
            t1_ns: 2,
            status: 503,
            deadline_us: 1_000_000,
        }
    }

    #[test]
    fn emit_parse_round_trip_and_layout() {
        let mut buf = [0xffu8; 64];
        let loc = PayloadLocation::Arena {
            offset: 128,
            len: 1000,
        };
        sample().emit(&mut HeaderView::new_checked(&mut buf[..]).unwrap(), loc);
        assert_eq!(
            &buf[0..8],
            &[0xff; 8],
            "emit must not touch the ring's sequence word"
        );
        assert_eq!(&buf[8..10], &2u16.to_le_bytes());
        assert_eq!(&buf[60..64], &128u32.to_le_bytes());
        let (h, l) = Header::parse(&HeaderView::new_checked(&buf[..]).unwrap()).unwrap();
        assert_eq!((h, l), (sample(), loc));
    }

    #[test]
    fn kinds_keep_unknown_raw_values() {
        for raw in [0u16, 1, 2, 3, 0xffff] {
            assert_eq!(u16::from(Kind::from(raw)), raw);
        }
        assert_eq!(Kind::from(9), Kind::Unknown(9));
    }

    #[test]
    fn bad_headers_are_typed_errors() {
        assert_eq!(
            HeaderView::new_checked(&[0u8; 63][..]).unwrap_err(),
            HeaderError::Truncated(63)
        );
        let mut buf = [0u8; 64];
        HeaderView::new_checked(&mut buf[..])
            .unwrap()
            .set_placement(2);
        assert_eq!(
            Header::parse(&HeaderView::new_checked(&buf[..]).unwrap()),
            Err(HeaderError::BadPlacement(2))
        );
        let mut buf = [0u8; 64];
        HeaderView::new_checked(&mut buf[..])
            .unwrap()
            .set_arena_offset(64);
        assert_eq!(
            Header::parse(&HeaderView::new_checked(&buf[..]).unwrap()),
            Err(HeaderError::StrayArenaOffset(64))
        );
    }

    fn words_of(bytes: &[u8]) -> [u64; BODY_WORDS] {
        std::array::from_fn(|i| {
            u64::from_le_bytes(bytes[8 + 8 * i..16 + 8 * i].try_into().unwrap())
        })
    }

    proptest! {
        #[test]
        fn word_codec_matches_the_view(bytes in proptest::collection::vec(any::<u8>(), 64)) {
            let view = HeaderView::new_checked(&bytes[..]).unwrap();
            let by_view = Header::parse(&view);
            prop_assert_eq!(Header::from_words(&words_of(&bytes)), by_view);
            if let Ok((h, loc)) = by_view {
                let mut out = [0u8; 64];
                h.emit(&mut HeaderView::new_checked(&mut out[..]).unwrap(), loc);
                prop_assert_eq!(h.to_words(loc), words_of(&out));
            }
        }

        #[test]
        fn inline_fast_path_agrees_with_the_full_decoder(bytes in proptest::collection::vec(any::<u8>(), 64), inline in any::<bool>()) {
            let mut bytes = bytes;
            if inline {
                // Make the fast path's case likely: placement 0, offset 0.
                bytes[54..56].fill(0);
                bytes[60..64].fill(0);
            }
            let words = words_of(&bytes);
            match (Header::inline_len(&words), Header::from_words(&words)) {
                (Some(len), Ok((h, PayloadLocation::Inline { len: l }))) => {
                    prop_assert_eq!(len, l);
                    prop_assert_eq!(Header::fields_from_words(&words), h);
                }
                (None, Ok((_, PayloadLocation::Inline { .. }))) => prop_assert!(false, "inline header missed"),
                (Some(_), other) => prop_assert!(false, "fast path took {:?}", other),
                (None, _) => {}
            }
        }

        #[test]
        fn parse_never_panics_and_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            match HeaderView::new_checked(&bytes[..]) {
                Err(HeaderError::Truncated(n)) => prop_assert!(n < 64),
                Err(e) => prop_assert!(false, "unexpected {e:?}"),
                Ok(view) => {
                    if let Ok((h, loc)) = Header::parse(&view) {
                        let mut out = bytes[..64].to_vec();
                        h.emit(&mut HeaderView::new_checked(&mut out[..]).unwrap(), loc);
                        prop_assert_eq!(&out[..], &bytes[..64]);
                    }
                }
            }
        }
    }
}
