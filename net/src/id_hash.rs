//! A hasher for the crate's integer-keyed tables (connection ids, TCP flow
//! keys): one multiply per key instead of SipHash.
//!
//! Keys are either ours (connection ids) or chosen by peers within a
//! bounded space (a flow's address and ports), so a bad key set costs at
//! worst long probe chains in one core's table, never memory; the hot path
//! looks a key up per segment and per request, where SipHash shows.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Hashes a `u64` key with a fold and a Fibonacci multiply.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached by keys that are not a single integer; kept correct,
        // not fast.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        // hashbrown takes the top 7 bits for the control byte and the low
        // bits for the bucket: fold the high half (a connection's generation,
        // a flow's peer address) into the low half (slot index, ports) and
        // spread both ways.
        self.0 = (n ^ (n >> 29) ^ (n >> 47)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 ^= self.0 >> 32;
    }
}

/// A map keyed by an integer id, hashed with [`IdHasher`].
pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    fn hash(n: u64) -> u64 {
        BuildHasherDefault::<IdHasher>::default().hash_one(n)
    }

    #[test]
    fn keys_differing_only_in_the_high_half_land_in_different_low_buckets() {
        // Two connections in the same slot with different generations, or
        // two peers on the same ports: the bucket (low bits) must differ.
        let buckets: std::collections::HashSet<u64> = (0..64u64)
            .map(|generation| hash(generation << 32 | 7) & 0x3ff)
            .collect();
        assert!(
            buckets.len() > 48,
            "only {} distinct buckets of 64",
            buckets.len()
        );
    }

    #[test]
    fn keys_differing_only_in_the_low_bits_get_different_control_bytes() {
        let tags: std::collections::HashSet<u64> =
            (0..64u64).map(|port| hash(port) >> 57).collect();
        assert!(
            tags.len() > 32,
            "only {} distinct top-7-bit tags of 64",
            tags.len()
        );
    }
}
