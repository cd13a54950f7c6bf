//! Copies of short payloads into a slot without a call to `memcpy`.
//!
//! A message's inline payload is typically tens of bytes. `ptr::copy_nonoverlapping`
//! with a length known only at run time becomes a call through the PLT into
//! libc's size-dispatching `memmove` (≈ 9 % of the producer's time in the
//! streaming profile); the copies here are a handful of unaligned vector
//! loads and stores the compiler inlines, using the usual trick of two
//! overlapping chunks for the ragged end. Longer payloads (arena ones) still
//! go to `memcpy`, which is the right tool there.
#![allow(unsafe_code)]

/// Payloads up to this many bytes are copied inline.
pub(crate) const INLINE_COPY_MAX: usize = 256;

/// Copies `len` bytes from `src` to `dst`.
///
/// # Safety
/// As for [`core::ptr::copy_nonoverlapping`]: `src` valid for reads and `dst`
/// for writes of `len` bytes, the ranges do not overlap. No alignment is
/// required. Bytes may be written more than once (always with their final
/// value), so nobody may read `dst` concurrently — true of a slot or arena
/// range before its message is published.
#[inline(always)]
pub(crate) unsafe fn copy_payload(src: *const u8, dst: *mut u8, len: usize) {
    if len <= INLINE_COPY_MAX {
        // SAFETY: forwarded contract.
        unsafe { copy_short(src, dst, len) }
    } else {
        // SAFETY: forwarded contract.
        unsafe { core::ptr::copy_nonoverlapping(src, dst, len) }
    }
}

/// Copies one `N`-byte chunk at byte offset `at`.
///
/// # Safety
/// `at + N` bytes are valid at `src` (reads) and `dst` (writes).
#[inline(always)]
unsafe fn chunk<const N: usize>(src: *const u8, dst: *mut u8, at: usize) {
    // SAFETY: in bounds by the caller's contract; unaligned accesses.
    unsafe {
        let v = src.add(at).cast::<[u8; N]>().read_unaligned();
        dst.add(at).cast::<[u8; N]>().write_unaligned(v);
    }
}

/// [`copy_payload`] for `len <= INLINE_COPY_MAX`.
///
/// # Safety
/// As [`copy_payload`].
#[inline(always)]
unsafe fn copy_short(src: *const u8, dst: *mut u8, len: usize) {
    // SAFETY: every chunk below starts at or after 0 and ends at or before
    // `len`, given the branch it is in; the caller vouches for `len` bytes.
    unsafe {
        if len >= 32 {
            // 32-byte chunks, the last one ending exactly at `len` (it may
            // overlap the one before). Unrolled rather than a loop, which
            // LLVM would turn back into a `memcpy` call.
            chunk::<32>(src, dst, 0);
            // Chunk `c` is copied when it ends before `len`; the chain stops
            // at the first that does not.
            if len > 64 {
                chunk::<32>(src, dst, 32);
                if len > 96 {
                    chunk::<32>(src, dst, 64);
                    if len > 128 {
                        chunk::<32>(src, dst, 96);
                        if len > 160 {
                            chunk::<32>(src, dst, 128);
                            if len > 192 {
                                chunk::<32>(src, dst, 160);
                                if len > 224 {
                                    chunk::<32>(src, dst, 192);
                                }
                            }
                        }
                    }
                }
            }
            chunk::<32>(src, dst, len - 32);
        } else if len >= 16 {
            chunk::<16>(src, dst, 0);
            chunk::<16>(src, dst, len - 16);
        } else if len >= 8 {
            chunk::<8>(src, dst, 0);
            chunk::<8>(src, dst, len - 8);
        } else if len >= 4 {
            chunk::<4>(src, dst, 0);
            chunk::<4>(src, dst, len - 4);
        } else if len > 0 {
            chunk::<1>(src, dst, 0);
            chunk::<1>(src, dst, len / 2);
            chunk::<1>(src, dst, len - 1);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// Every length up to past the inline limit, at every misalignment of
    /// source and destination: exactly the bytes asked for change.
    #[test]
    fn copies_exactly_len_bytes() {
        let src: Vec<u8> = (0..INLINE_COPY_MAX + 80)
            .map(|i| (i * 7 + 1) as u8)
            .collect();
        for len in 0..=INLINE_COPY_MAX + 40 {
            for (s_off, d_off) in [(0, 0), (1, 3), (7, 0), (0, 5), (13, 11)] {
                let mut dst = vec![0xeeu8; INLINE_COPY_MAX + 96];
                // SAFETY: both ranges are in bounds (len + 40 < buffer lengths)
                // and in different allocations.
                unsafe { copy_payload(src.as_ptr().add(s_off), dst.as_mut_ptr().add(d_off), len) };
                assert_eq!(
                    &dst[d_off..d_off + len],
                    &src[s_off..s_off + len],
                    "len {len}"
                );
                assert!(dst[..d_off].iter().all(|&b| b == 0xee), "len {len}");
                assert!(dst[d_off + len..].iter().all(|&b| b == 0xee), "len {len}");
            }
        }
    }
}
