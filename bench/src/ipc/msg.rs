//! What every case moves: a request of a 64-byte header plus N payload
//! bytes, a 64-byte reply, and the checksum the receiver computes over every
//! payload byte (the same work in every case, and proof it read them).
//!
//! The ring cases carry nocturne's own [`Header`](nocturne_ipc::message::Header);
//! every other mechanism carries [`RawHeader`], whose first word is left for
//! the shared-memory cases' ready flag:
//!
//! ```text
//! 0..4   flag / magic (u32)      8..16  seq (u64)       16..24 payload length (u64)
//! 24..32 checksum (u64, reply)   32..64 zero
//! ```

/// Bytes of the header in front of every request payload.
pub const HEADER_BYTES: usize = 64;
/// Bytes of every reply.
pub const REPLY_BYTES: usize = 64;
/// Largest payload a case accepts (the mailbox and ring arena are sized
/// from the largest payload asked for).
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Marks a raw header on the byte-stream mechanisms (no flag word there).
pub const STREAM_MAGIC: u32 = u32::from_le_bytes(*b"NBnc");

/// The payload every request of `len` bytes carries: a fixed, non-trivial
/// pattern, so a checksum mismatch shows a byte went missing or moved.
pub fn payload_pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(131) + 7) as u8).collect()
}

/// Sums every byte of `bytes` (as little-endian u64 words plus the tail).
/// Reads each byte once; vectorizes, so it costs about a memory read.
#[inline]
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(8);
    let mut sum = 0u64;
    for word in &mut words {
        let word: [u8; 8] = word.try_into().expect("chunks_exact(8) yields 8 bytes");
        sum = sum.wrapping_add(u64::from_le_bytes(word));
    }
    for &b in words.remainder() {
        sum = sum.wrapping_add(u64::from(b));
    }
    std::hint::black_box(sum)
}

/// The header (and reply) of the non-ring mechanisms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawHeader {
    /// First word: the ready flag (shared memory) or [`STREAM_MAGIC`].
    pub flag: u32,
    /// Message sequence number, echoed by the reply.
    pub seq: u64,
    /// Payload bytes after the header (0 in a reply).
    pub len: u64,
    /// The receiver's checksum of the payload (reply only).
    pub checksum: u64,
}

impl RawHeader {
    /// Encodes into the first [`HEADER_BYTES`] of `out`.
    ///
    /// # Panics
    /// If `out` is shorter than [`HEADER_BYTES`].
    #[inline]
    pub fn emit(&self, out: &mut [u8]) {
        let out = &mut out[..HEADER_BYTES];
        out[0..4].copy_from_slice(&self.flag.to_le_bytes());
        out[4..8].fill(0);
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
        out[16..24].copy_from_slice(&self.len.to_le_bytes());
        out[24..32].copy_from_slice(&self.checksum.to_le_bytes());
        out[32..].fill(0);
    }

    /// Decodes from the first [`HEADER_BYTES`] of `bytes`; `None` if short.
    #[inline]
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let bytes = bytes.get(..HEADER_BYTES)?;
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        Some(Self {
            flag: u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")),
            seq: u64_at(8),
            len: u64_at(16),
            checksum: u64_at(24),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_reads_every_byte() {
        assert_eq!(checksum(&[]), 0);
        assert_eq!(checksum(&[1, 2, 3]), 6);
        let data = payload_pattern(1027);
        let base = checksum(&data);
        // Changing any single byte, in the words or in the tail, changes it.
        for i in [0, 7, 8, 500, 1023, 1024, 1026] {
            let mut copy = data.clone();
            copy[i] = copy[i].wrapping_add(1);
            assert_ne!(checksum(&copy), base, "byte {i} not read");
        }
    }

    #[test]
    fn raw_header_round_trips_and_rejects_short_input() {
        let h = RawHeader {
            flag: 9,
            seq: u64::MAX - 1,
            len: 16_384,
            checksum: 0xdead_beef,
        };
        let mut buf = [0xffu8; 80];
        h.emit(&mut buf);
        assert_eq!(RawHeader::parse(&buf), Some(h));
        assert!(buf[32..64].iter().all(|&b| b == 0));
        assert_eq!(buf[64], 0xff, "emit wrote past the header");
        assert_eq!(RawHeader::parse(&buf[..63]), None);
    }
}
