//! Shared-memory regions: the bytes a channel lives in.
//!
//! [`MemfdRegion`] is the real thing: an anonymous `memfd_create` file mapped
//! `MAP_SHARED`, handed to a worker over a unix socket ([`crate::fdpass`]) and
//! never given a name anywhere on the host. Before hand-over it is sealed
//! against shrinking and growing (`F_SEAL_SHRINK | F_SEAL_GROW`, then
//! `F_SEAL_SEAL`): a peer that could `ftruncate` the file would make our next
//! access to the mapping a `SIGBUS`, whatever our bounds checks say. The
//! attaching side therefore refuses a file without those seals.
//!
//! [`HeapRegion`] is a page-aligned, zeroed heap allocation behind the same
//! [`Region`] trait, for single-process tests and the loom models.
#![allow(unsafe_code)]

use std::alloc::{self, Layout};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The seals a region must carry before it is handed to (or accepted from) a
/// peer.
pub const REQUIRED_SEALS: i32 = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// Alignment of every region's base address (a page).
pub const REGION_ALIGN: usize = 4096;

/// A contiguous, writable byte range that stays mapped (at the same address)
/// for the life of the value.
///
/// The rings, arenas and doorbells of a channel are built on raw pointers
/// into a region and trust `base()` and `len()` without further checks, so a
/// wrong implementation is undefined behaviour in safe code: hence an
/// `unsafe trait`.
///
/// # Safety
///
/// An implementor guarantees, for as long as the value lives (until its
/// `Drop` starts):
///
/// * `base()` is non-null, [`REGION_ALIGN`]-aligned and always returns the
///   same address;
/// * the `len()` bytes from `base()` are one allocation or mapping, valid for
///   reads and writes, and `len()` always returns the same value;
/// * nothing else treats those bytes as a Rust object (no `&`/`&mut`
///   reference to them is held elsewhere): the channel reads and writes them
///   only through raw pointers and atomics, and another process or thread may
///   do so concurrently (for a region shared across processes the mapping
///   must be `MAP_SHARED`, so that both sides see the same bytes);
/// * the value may be sent to and shared between threads (hence the
///   `Send + Sync` bound) without changing any of the above;
/// * within this process, the bytes are used by one channel's ends only as
///   the channel API hands them out:
///   [`EngineEnd::create_in`](crate::channel::EngineEnd::create_in), which
///   initializes them with plain stores, runs while no other thread uses
///   them, and at most one
///   [`WorkerEnd::attach_region`](crate::channel::WorkerEnd::attach_region)
///   end (one producer of the response ring) lives at a time. For
///   [`HeapRegion`] and [`MemfdRegion`] owning the value is enough (a new
///   value is a new allocation or mapping; a second mapping of one memfd is
///   as good as a peer process, below); a wrapper that forwards to a shared
///   allocation (say an `Arc<HeapRegion>`, to attach a worker end in the
///   same process) vouches for this itself.
///
/// A region that forwards to another region upholds the rest of the
/// contract by forwarding both methods unchanged and keeping the inner
/// region alive. (A *peer process* writing the same bytes at any time is
/// allowed: the channel checks everything it reads back.)
///
/// A safe `impl` is refused:
///
/// ```compile_fail,E0200
/// use nocturne_ipc::region::Region;
///
/// struct Fake;
///
/// impl Region for Fake {
///     fn base(&self) -> *mut u8 {
///         std::ptr::null_mut()
///     }
///     fn len(&self) -> usize {
///         1 << 20
///     }
/// }
/// ```
pub unsafe trait Region: Send + Sync {
    /// First byte of the region.
    fn base(&self) -> *mut u8;
    /// Length in bytes.
    fn len(&self) -> usize;
    /// True when the region has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a region could not be created, sealed or attached.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Sys {
        /// The call that failed.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The name contains a NUL byte.
    #[error("region name contains a NUL byte")]
    BadName,
    /// Zero length, or larger than the address space allows.
    #[error("bad region length {0}")]
    BadLength(u64),
    /// The received file lacks the seals that keep its size fixed.
    #[error(
        "region is not sealed (seals {found:#x}, need {required:#x}): the peer could resize it"
    )]
    NotSealed {
        /// Seals present.
        found: i32,
        /// Seals required ([`REQUIRED_SEALS`]).
        required: i32,
    },
}

fn sys_err(op: &'static str) -> RegionError {
    RegionError::Sys {
        op,
        source: io::Error::last_os_error(),
    }
}

/// An anonymous shared-memory file (`memfd_create`) mapped `MAP_SHARED`.
#[derive(Debug)]
pub struct MemfdRegion {
    fd: OwnedFd,
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping is process-wide memory, valid until drop regardless of
// which thread holds the value; all access to its contents goes through
// raw pointers whose users synchronise with atomics.
unsafe impl Send for MemfdRegion {}
// SAFETY: as above; `&MemfdRegion` exposes only the base pointer and length.
unsafe impl Sync for MemfdRegion {}

impl MemfdRegion {
    /// Creates an unsealed, zero-filled region of `len` bytes named `name`
    /// (the name is only a label in `/proc/PID/fd`; it is not a path).
    pub fn create(name: &str, len: usize) -> Result<Self, RegionError> {
        if len == 0 || len > isize::MAX as usize {
            return Err(RegionError::BadLength(len as u64));
        }
        let cname = CString::new(name).map_err(|_| RegionError::BadName)?;
        // SAFETY: cname is a valid NUL-terminated string for the call.
        let raw = unsafe {
            libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if raw < 0 {
            return Err(sys_err("memfd_create"));
        }
        // SAFETY: memfd_create returned a fresh descriptor we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ftruncate on a descriptor we own; len fits in off_t (checked
        // against isize::MAX above).
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(sys_err("ftruncate"));
        }
        let base = map(&fd, len)?;
        Ok(Self { fd, base, len })
    }

    /// Seals the region's size (`F_SEAL_SHRINK | F_SEAL_GROW`) and then the
    /// seal set itself (`F_SEAL_SEAL`). Idempotent.
    pub fn seal(&self) -> Result<(), RegionError> {
        let have = seals(self.fd.as_fd())?;
        if have & REQUIRED_SEALS == REQUIRED_SEALS {
            return Ok(());
        }
        // SAFETY: fcntl(F_ADD_SEALS) on a descriptor we own.
        if unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_ADD_SEALS, REQUIRED_SEALS) } != 0 {
            return Err(sys_err("fcntl(F_ADD_SEALS)"));
        }
        Ok(())
    }

    /// Maps a region received from a peer. Refuses a file whose size is not
    /// sealed (a memfd without [`REQUIRED_SEALS`], or any other kind of file,
    /// which cannot carry seals) and a zero-length one. The caller still
    /// validates the contents; the size is whatever the file says.
    pub fn attach(fd: OwnedFd) -> Result<Self, RegionError> {
        let found = seals(fd.as_fd())?;
        if found & REQUIRED_SEALS != REQUIRED_SEALS {
            return Err(RegionError::NotSealed {
                found,
                required: REQUIRED_SEALS,
            });
        }
        // SAFETY: an all-zero stat is a valid value for fstat to overwrite.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat writes into `st`, which lives across the call.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(sys_err("fstat"));
        }
        let size = st.st_size;
        if size <= 0 || size as u64 > isize::MAX as u64 {
            return Err(RegionError::BadLength(size as u64));
        }
        let len = size as usize;
        let base = map(&fd, len)?;
        Ok(Self { fd, base, len })
    }

    /// The memfd, to send to the peer (see [`crate::fdpass`]).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn seals(fd: BorrowedFd<'_>) -> Result<i32, RegionError> {
    // SAFETY: fcntl(F_GET_SEALS) on a valid descriptor; no memory is passed.
    let s = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if s < 0 {
        return Err(sys_err("fcntl(F_GET_SEALS)"));
    }
    Ok(s)
}

fn map(fd: &OwnedFd, len: usize) -> Result<*mut u8, RegionError> {
    // SAFETY: a fresh shared mapping of a file we hold; the kernel picks the
    // address. MAP_POPULATE pre-faults the pages so the first messages do not
    // pay page faults.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(sys_err("mmap"));
    }
    Ok(p.cast())
}

impl Drop for MemfdRegion {
    fn drop(&mut self) {
        // SAFETY: base/len are exactly the mapping made in `map`, and every
        // user of the memory holds the region alive (Arc) while using it.
        unsafe {
            libc::munmap(self.base.cast(), self.len);
        }
    }
}

// SAFETY: `base`/`len` are the `MAP_SHARED` mapping made in `map` (mmap
// returns a page-aligned, non-null address or fails, and `len` is the file size
// sealed against shrinking and growing, so the whole range stays backed); both
// fields are set once and the mapping is removed only in `Drop`.
unsafe impl Region for MemfdRegion {
    #[inline]
    fn base(&self) -> *mut u8 {
        self.base
    }
    #[inline]
    fn len(&self) -> usize {
        self.len
    }
}

/// A zeroed, page-aligned heap allocation with the [`Region`] interface.
#[derive(Debug)]
pub struct HeapRegion {
    base: *mut u8,
    len: usize,
}

// SAFETY: as for MemfdRegion: a heap allocation owned by the value, valid
// until drop whichever thread drops it; its contents are only reached through
// raw pointers whose users synchronise with atomics.
unsafe impl Send for HeapRegion {}
// SAFETY: `&HeapRegion` exposes only the base pointer and the length.
unsafe impl Sync for HeapRegion {}

impl HeapRegion {
    /// Allocates `len` zeroed bytes (at least one page is allocated).
    ///
    /// # Panics
    /// If `len` overflows a `Layout` or the allocator fails (as `Vec` does).
    pub fn new(len: usize) -> Self {
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size (at least one page).
        let base = unsafe { alloc::alloc_zeroed(layout) };
        if base.is_null() {
            alloc::handle_alloc_error(layout);
        }
        Self { base, len }
    }

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len.max(REGION_ALIGN), REGION_ALIGN)
            .expect("region length overflows")
    }
}

impl Drop for HeapRegion {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout.
        unsafe { alloc::dealloc(self.base, Self::layout(self.len)) }
    }
}

// SAFETY: `base` is a non-null allocation of at least `len` bytes aligned to
// `REGION_ALIGN` (see `layout`), made in `new`, never reallocated, and freed
// only in `Drop`; no reference to its bytes is ever handed out.
unsafe impl Region for HeapRegion {
    #[inline]
    fn base(&self) -> *mut u8 {
        self.base
    }
    #[inline]
    fn len(&self) -> usize {
        self.len
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn memfd_create_seal_attach_and_peer_cannot_resize() {
        let r = MemfdRegion::create("t", 8192).unwrap();
        // SAFETY: within the mapping.
        unsafe { r.base().add(100).write(7) };
        r.seal().unwrap();
        r.seal().unwrap(); // idempotent
        let dup = r.fd().try_clone_to_owned().unwrap();
        let peer = MemfdRegion::attach(dup).unwrap();
        assert_eq!(peer.len(), 8192);
        // SAFETY: within the mapping.
        assert_eq!(unsafe { peer.base().add(100).read() }, 7);
        for new_len in [0, 4096, 1 << 20] {
            // SAFETY: ftruncate on a descriptor we hold.
            let rc = unsafe { libc::ftruncate(peer.fd().as_raw_fd(), new_len) };
            assert_eq!(rc, -1);
            assert_eq!(io::Error::last_os_error().raw_os_error(), Some(libc::EPERM));
        }
        // Nor can the seals be lifted or extended.
        // SAFETY: fcntl on a descriptor we hold.
        let rc =
            unsafe { libc::fcntl(peer.fd().as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_WRITE) };
        assert_eq!(rc, -1);
    }

    #[test]
    fn attach_refuses_unsealed_and_non_memfd() {
        let r = MemfdRegion::create("t", 4096).unwrap();
        let dup = r.fd().try_clone_to_owned().unwrap();
        assert!(matches!(
            MemfdRegion::attach(dup),
            Err(RegionError::NotSealed { .. })
        ));
        let f = std::fs::File::open("/proc/self/exe").unwrap();
        assert!(matches!(
            MemfdRegion::attach(f.into()),
            Err(RegionError::Sys { .. })
        ));
    }

    #[test]
    fn attach_refuses_empty_sealed_memfd() {
        // A zero-length region whose size is sealed: nothing to map.
        let cname = CString::new("empty").unwrap();
        // SAFETY: valid C string.
        let raw = unsafe {
            libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        assert!(raw >= 0);
        // SAFETY: fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: fcntl on our fd.
        let rc = unsafe { libc::fcntl(raw, libc::F_ADD_SEALS, REQUIRED_SEALS) };
        assert_eq!(rc, 0);
        assert!(matches!(
            MemfdRegion::attach(fd),
            Err(RegionError::BadLength(0))
        ));
        assert!(matches!(
            MemfdRegion::create("x", 0),
            Err(RegionError::BadLength(0))
        ));
        assert!(matches!(
            MemfdRegion::create("a\0b", 10),
            Err(RegionError::BadName)
        ));
    }

    #[test]
    fn heap_region_is_zeroed_and_aligned() {
        let h = HeapRegion::new(10_000);
        assert_eq!(h.base() as usize % REGION_ALIGN, 0);
        assert_eq!(h.len(), 10_000);
        // SAFETY: within the allocation.
        let s = unsafe { std::slice::from_raw_parts(h.base(), h.len()) };
        assert!(s.iter().all(|&b| b == 0));
    }
}
