//! The call protocol: how invocations and completions ride on ipc messages.
//!
//! nocturne-ipc moves opaque messages (a [`Header`] plus payload bytes). This
//! module fixes what those messages *mean* between the engine and a worker; the
//! engine and the SDK both use it, so there is one definition.
//!
//! | direction        | kind       | `call_id`                         | `parent_call_id`     | payload            |
//! |------------------|------------|-----------------------------------|----------------------|--------------------|
//! | engine → worker  | `Invoke`   | engine call id of the new call    | 0                    | \[query\] input    |
//! | worker → engine  | `Complete` | engine call id it answers         | 0                    | \[content-type\] out |
//! | worker → engine  | `Invoke`   | worker-local id of an internal call | engine id of the call being served | input |
//! | engine → worker  | `Complete` | worker-local id it answers        | 0                    | \[content-type\] out |
//!
//! `status` of a `Complete` is an HTTP status code: 200 (or whatever the handler
//! set) on success, 500 handler error, 404 unknown callee, 502 callee crashed,
//! 503 overloaded, 504 deadline exceeded, 508 call depth exceeded.
//!
//! Optional prefixes, announced by header flags, keep the common case (no query
//! string, default content type) free of any framing:
//! * [`FLAG_QUERY`]: the payload starts with a little-endian `u16` length and that
//!   many bytes of URL query string (without `?`).
//! * [`FLAG_CONTENT_TYPE`]: the payload starts with one length byte and that many
//!   bytes of content type.
//!
//! Timestamps are `CLOCK_MONOTONIC` nanoseconds, which are comparable across the
//! processes of one host. On an engine `Invoke`, `t0_ns` is the dispatch time; on a
//! worker `Complete`, `t0_ns`/`t1_ns` are the handler's start and end.

use nocturne_ipc::message::Header;

/// Payload starts with a `u16` LE query-string length and the query string.
pub const FLAG_QUERY: u16 = 1 << 0;
/// Payload starts with a `u8` content-type length and the content type.
pub const FLAG_CONTENT_TYPE: u16 = 1 << 1;

/// Success.
pub const STATUS_OK: u16 = 200;
/// The handler returned an error or panicked.
pub const STATUS_HANDLER_ERROR: u16 = 500;
/// The callee named in an internal call does not exist.
pub const STATUS_UNKNOWN_FUNCTION: u16 = 404;
/// The input is larger than the callee takes (its `max_payload`).
pub const STATUS_TOO_LARGE: u16 = 413;
/// The worker running the call died.
pub const STATUS_WORKER_CRASHED: u16 = 502;
/// The callee's queue is full.
pub const STATUS_OVERLOADED: u16 = 503;
/// The call's deadline passed.
pub const STATUS_DEADLINE: u16 = 504;
/// The chain of internal calls is deeper than `max_call_depth`.
pub const STATUS_CALL_DEPTH: u16 = 508;

/// Why an optional payload prefix could not be split off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// The prefix claims more bytes than the payload has.
    #[error("payload prefix claims {claimed} bytes but only {available} remain")]
    Truncated {
        /// Bytes the prefix claims.
        claimed: usize,
        /// Bytes that remain in the payload.
        available: usize,
    },
    /// The prefix is not UTF-8.
    #[error("payload prefix is not UTF-8")]
    NotUtf8,
}

/// Splits the optional query-string prefix off an `Invoke` payload.
pub fn split_query<'p>(
    header: &Header,
    payload: &'p [u8],
) -> Result<(Option<&'p str>, &'p [u8]), PrefixError> {
    if header.flags & FLAG_QUERY == 0 {
        return Ok((None, payload));
    }
    let (len_bytes, rest) = payload
        .split_first_chunk::<2>()
        .ok_or(PrefixError::Truncated {
            claimed: 2,
            available: payload.len(),
        })?;
    let len = usize::from(u16::from_le_bytes(*len_bytes));
    if len > rest.len() {
        return Err(PrefixError::Truncated {
            claimed: len,
            available: rest.len(),
        });
    }
    let (query, body) = rest.split_at(len);
    let query = std::str::from_utf8(query).map_err(|_| PrefixError::NotUtf8)?;
    Ok((Some(query), body))
}

/// Splits the optional content-type prefix off a `Complete` payload.
pub fn split_content_type<'p>(
    header: &Header,
    payload: &'p [u8],
) -> Result<(Option<&'p str>, &'p [u8]), PrefixError> {
    let (ct, body) = content_type_span(header, payload)?;
    let ct = ct
        .map(std::str::from_utf8)
        .transpose()
        .map_err(|_| PrefixError::NotUtf8)?;
    Ok((ct, body))
}

/// The content-type prefix of a `Complete` payload, unchecked, and the
/// body after it. The length byte is read once ([`read_once`]), so a peer
/// rewriting it cannot make the two slices disagree with each other.
fn content_type_span<'p>(
    header: &Header,
    payload: &'p [u8],
) -> Result<(Option<&'p [u8]>, &'p [u8]), PrefixError> {
    if header.flags & FLAG_CONTENT_TYPE == 0 {
        return Ok((None, payload));
    }
    let (len, rest) = payload.split_first().ok_or(PrefixError::Truncated {
        claimed: 1,
        available: 0,
    })?;
    let len = usize::from(read_once(len));
    if len > rest.len() {
        return Err(PrefixError::Truncated {
            claimed: len,
            available: rest.len(),
        });
    }
    let (ct, body) = rest.split_at(len);
    Ok((Some(ct), body))
}

/// A content type copied out of a payload into memory its holder owns (at
/// most [`MAX_CONTENT_TYPE`] bytes, inline), see [`split_content_type_copied`].
#[derive(Clone, Copy)]
pub struct ContentType {
    len: u8,
    bytes: [u8; MAX_CONTENT_TYPE],
}

impl ContentType {
    /// The content type; UTF-8, checked on this copy.
    pub fn as_str(&self) -> &str {
        // Checked in `split_content_type_copied` on these very bytes, which
        // nobody can have changed since (they are ours); checking again costs
        // a few ns and keeps this free of `unsafe`.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

impl std::fmt::Debug for ContentType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq for ContentType {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for ContentType {}

/// [`split_content_type`] for a payload the peer can still write (a view
/// into a ring slot or arena): the length byte is read once and the content
/// type is copied into a [`ContentType`] before it is checked, so what is
/// checked (here for UTF-8; by the HTTP layer for control characters) is
/// what is later written into the response header. Checking the shared bytes
/// and reading them again would let a worker swap in a CR/LF in between and
/// inject headers (response splitting).
///
/// The body stays a view into `payload`: a worker that rewrites it only
/// garbles its own answer.
pub fn split_content_type_copied<'p>(
    header: &Header,
    payload: &'p [u8],
) -> Result<(Option<ContentType>, &'p [u8]), PrefixError> {
    let (Some(ct), body) = content_type_span(header, payload)? else {
        return Ok((None, payload));
    };
    // At most 255 bytes: the length travels in one byte.
    let mut copy = ContentType {
        len: ct.len() as u8,
        bytes: [0; MAX_CONTENT_TYPE],
    };
    for (dst, src) in copy.bytes.iter_mut().zip(ct) {
        *dst = read_once(src);
    }
    std::str::from_utf8(&copy.bytes[..ct.len()]).map_err(|_| PrefixError::NotUtf8)?;
    Ok((Some(copy), body))
}

/// One byte of shared memory, read exactly once: a volatile load, so the
/// compiler cannot replace later uses of the copy with fresh reads of the
/// original (it may otherwise, since a `&u8` promises the byte does not
/// change).
#[inline(always)]
fn read_once(b: &u8) -> u8 {
    // SAFETY: `b` is a reference, so the pointer is valid and aligned for a
    // one-byte read.
    #[allow(unsafe_code)]
    unsafe {
        std::ptr::read_volatile(b)
    }
}

/// The longest query string a call carries (its length travels as a `u16`);
/// the engine answers a longer one 414.
pub const MAX_QUERY: usize = u16::MAX as usize;

/// Writes `[u16 len][query]` into `out` (cleared first). Queries longer than
/// [`MAX_QUERY`] are cut (the engine refuses them before).
pub fn encode_query_prefix(out: &mut Vec<u8>, query: &str) {
    let q = &query.as_bytes()[..query.len().min(MAX_QUERY)];
    out.clear();
    out.extend_from_slice(&(q.len() as u16).to_le_bytes());
    out.extend_from_slice(q);
}

/// The longest content type a completion carries (its length travels as a
/// `u8`); the SDK answers a handler that sets a longer one 500.
pub const MAX_CONTENT_TYPE: usize = u8::MAX as usize;

/// Writes `[u8 len][content type]` into `out` (cleared first); content types
/// longer than [`MAX_CONTENT_TYPE`] are cut (the SDK refuses them before).
pub fn encode_content_type_prefix(out: &mut Vec<u8>, content_type: &str) {
    let ct = &content_type.as_bytes()[..content_type.len().min(MAX_CONTENT_TYPE)];
    out.clear();
    out.push(ct.len() as u8);
    out.extend_from_slice(ct);
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock every timestamp in a header uses.
pub fn monotonic_ns() -> u64 {
    // `Instant` is CLOCK_MONOTONIC on Linux but opaque; read the clock directly so
    // values are comparable across processes.
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    #[allow(unsafe_code)]
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_prefix_round_trips() {
        let mut buf = Vec::new();
        encode_query_prefix(&mut buf, "us=10&x=y");
        buf.extend_from_slice(b"body");
        let h = Header {
            flags: FLAG_QUERY,
            ..Header::default()
        };
        assert_eq!(
            split_query(&h, &buf).unwrap(),
            (Some("us=10&x=y"), &b"body"[..])
        );
    }

    #[test]
    fn no_flag_means_no_prefix() {
        let h = Header::default();
        assert_eq!(split_query(&h, b"abc").unwrap(), (None, &b"abc"[..]));
        assert_eq!(split_content_type(&h, b"abc").unwrap(), (None, &b"abc"[..]));
    }

    #[test]
    fn truncated_prefixes_are_errors() {
        let h = Header {
            flags: FLAG_QUERY | FLAG_CONTENT_TYPE,
            ..Header::default()
        };
        assert!(matches!(
            split_query(&h, &[5]),
            Err(PrefixError::Truncated { .. })
        ));
        assert!(matches!(
            split_query(&h, &[5, 0, b'a']),
            Err(PrefixError::Truncated { .. })
        ));
        assert!(matches!(
            split_content_type(&h, &[]),
            Err(PrefixError::Truncated { .. })
        ));
        assert!(matches!(
            split_content_type(&h, &[3, b'a']),
            Err(PrefixError::Truncated { .. })
        ));
        assert_eq!(
            split_content_type(&h, &[1, 0xff]),
            Err(PrefixError::NotUtf8)
        );
    }

    #[test]
    fn copied_content_type_matches_the_borrowing_split() {
        let h = Header {
            flags: FLAG_CONTENT_TYPE,
            ..Header::default()
        };
        let mut buf = Vec::new();
        encode_content_type_prefix(&mut buf, "application/json");
        buf.extend_from_slice(b"{}");
        let (ct, body) = split_content_type_copied(&h, &buf).unwrap();
        assert_eq!(ct.unwrap().as_str(), "application/json");
        assert_eq!(body, b"{}");
        let max = "x".repeat(MAX_CONTENT_TYPE);
        encode_content_type_prefix(&mut buf, &max);
        let (ct, body) = split_content_type_copied(&h, &buf).unwrap();
        assert_eq!(ct.unwrap().as_str(), max);
        assert!(body.is_empty());
        assert_eq!(
            split_content_type_copied(&Header::default(), b"abc").unwrap(),
            (None, &b"abc"[..])
        );
        for bad in [&[][..], &[3, b'a'], &[1, 0xff]] {
            assert_eq!(
                split_content_type_copied(&h, bad).unwrap_err(),
                split_content_type(&h, bad).unwrap_err()
            );
        }
    }

    #[test]
    fn copied_content_type_does_not_follow_later_writes() {
        // The payload stands for a ring slot the worker still writes: after
        // the split, a CR/LF written into the shared bytes must not reach
        // the content type that was checked.
        let h = Header {
            flags: FLAG_CONTENT_TYPE,
            ..Header::default()
        };
        let mut shared = Vec::new();
        encode_content_type_prefix(&mut shared, "text/plainXX");
        shared.extend_from_slice(b"body");
        let (ct, _) = split_content_type_copied(&h, &shared).unwrap();
        let ct = ct.unwrap();
        let n = shared.len();
        shared[n - 6..n - 4].copy_from_slice(b"\r\n");
        assert_eq!(ct.as_str(), "text/plainXX");
        assert!(!ct.as_str().contains(['\r', '\n']));
    }

    #[test]
    fn content_type_prefix_round_trips() {
        let mut buf = Vec::new();
        encode_content_type_prefix(&mut buf, "application/json");
        buf.extend_from_slice(b"{}");
        let h = Header {
            flags: FLAG_CONTENT_TYPE,
            ..Header::default()
        };
        assert_eq!(
            split_content_type(&h, &buf).unwrap(),
            (Some("application/json"), &b"{}"[..])
        );
    }
}
