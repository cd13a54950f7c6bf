//! The concurrency facade: every atomic, fence, spin hint, yield and futex the
//! rings and doorbells use comes from here, so the *shipped* code compiles
//! unchanged under `--cfg loom` (where these become loom's model-checked
//! versions) and under a normal build (where they are `core` atomics and raw
//! `futex(2)` calls).
//!
//! Under loom two more things change:
//! * shared-memory atomics are *constructed in place* ([`init_atomic_u64`],
//!   [`init_atomic_u32`]) so they are loom objects, and
//! * [`AccessTracker`] (a zero-sized type normally) becomes a
//!   `loom::cell::UnsafeCell<()>` whose read/write guards are held while a
//!   slot's or arena granule's plain bytes are read or written, so loom reports
//!   a torn message (a read concurrent with a write) as a causality violation.
#![allow(unsafe_code)]

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::Arc;

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::Arc;

use std::time::Duration;

/// Busy-wait hint (a `pause` on x86); loom: a yield to the model scheduler.
#[inline]
pub(crate) fn spin_loop() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    core::hint::spin_loop();
}

/// Gives the CPU to another runnable thread (`sched_yield(2)`).
#[inline]
pub(crate) fn yield_now() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    // SAFETY: sched_yield takes no arguments and cannot fail in a way that
    // matters to us (it always returns 0 on Linux).
    unsafe {
        libc::sched_yield();
    }
}

/// Writes a fresh `AtomicU64` holding `value` at `ptr`.
///
/// # Safety
/// `ptr` must be valid for writes of 8 bytes, 8-aligned, and not concurrently
/// accessed. (Under loom an atomic is 8 bytes too: checked by a test.)
#[inline]
pub(crate) unsafe fn init_atomic_u64(ptr: *mut u8, value: u64) {
    // SAFETY: the caller vouches that the 8 bytes at `ptr` are writable,
    // 8-aligned (AtomicU64's alignment) and unshared, so this plain write
    // races with nobody; an AtomicU64 is those 8 bytes.
    unsafe { ptr.cast::<AtomicU64>().write(AtomicU64::new(value)) }
}

/// Writes a fresh `AtomicU32` holding `value` at `ptr` (8 bytes are reserved
/// for it in every layout, as a loom `AtomicU32` is 8 bytes).
///
/// # Safety
/// As [`init_atomic_u64`].
#[inline]
pub(crate) unsafe fn init_atomic_u32(ptr: *mut u8, value: u32) {
    // SAFETY: as in `init_atomic_u64`: 8 writable, 8-aligned, unshared bytes
    // (caller's contract) hold the (at most 8-byte) AtomicU32.
    unsafe { ptr.cast::<AtomicU32>().write(AtomicU32::new(value)) }
}

/// Tracks plain (non-atomic) accesses to a slot or arena granule for loom;
/// zero-sized and free in a normal build.
#[cfg(not(loom))]
pub(crate) struct AccessTracker;

/// Tracks plain (non-atomic) accesses to a slot or arena granule for loom.
#[cfg(loom)]
pub(crate) struct AccessTracker(loom::cell::UnsafeCell<()>);

/// Held while plain bytes are read; loom checks it against writes.
#[cfg(loom)]
pub(crate) struct ReadGuard(#[allow(dead_code)] loom::cell::ConstPtr<()>);
/// Held while plain bytes are written; loom checks it against reads and writes.
#[cfg(loom)]
pub(crate) struct WriteGuard(#[allow(dead_code)] loom::cell::MutPtr<()>);
#[cfg(not(loom))]
pub(crate) struct ReadGuard;
#[cfg(not(loom))]
pub(crate) struct WriteGuard;

impl AccessTracker {
    /// Constructs an array of `count` trackers in place at `base` (nothing
    /// outside loom: the type is zero-sized there).
    ///
    /// # Safety
    /// `base` valid for writes of `count * size_of::<AccessTracker>()` bytes,
    /// 8-aligned, unshared.
    #[inline]
    pub(crate) unsafe fn init_array(base: *mut u8, count: usize) {
        #[cfg(loom)]
        for i in 0..count {
            // SAFETY: within the array (caller's contract).
            unsafe {
                base.cast::<AccessTracker>()
                    .add(i)
                    .write(AccessTracker(loom::cell::UnsafeCell::new(())))
            };
        }
        #[cfg(not(loom))]
        let _ = (base, count);
    }

    /// Tracker `i` of the array at `base`.
    ///
    /// # Safety
    /// The array was initialized by [`init_array`](Self::init_array) with more
    /// than `i` entries and outlives `'a`.
    #[inline(always)]
    pub(crate) unsafe fn at<'a>(base: *const u8, i: usize) -> &'a AccessTracker {
        #[cfg(loom)]
        // SAFETY: entry `i` of an array `init_array` initialized with more
        // than `i` entries, alive for `'a` (caller's contract); trackers are
        // only ever used through shared references.
        return unsafe { &*base.cast::<AccessTracker>().add(i) };
        #[cfg(not(loom))]
        {
            let _ = (base, i);
            &AccessTracker
        }
    }

    #[inline]
    pub(crate) fn read(&self) -> ReadGuard {
        #[cfg(loom)]
        return ReadGuard(self.0.get());
        #[cfg(not(loom))]
        ReadGuard
    }

    #[inline]
    pub(crate) fn write(&self) -> WriteGuard {
        #[cfg(loom)]
        return WriteGuard(self.0.get_mut());
        #[cfg(not(loom))]
        WriteGuard
    }
}

/// Sleeps while `*word == expected`, at most `timeout` (None: forever).
/// Returns on a wake-up, a change of the word, a signal or the timeout;
/// callers re-check their condition (spurious returns are allowed).
///
/// Shared (not `FUTEX_PRIVATE_FLAG`): the word lives in a `MAP_SHARED`
/// mapping and the waker is another process.
#[cfg(not(loom))]
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts;
    let ts_ptr = match timeout {
        Some(d) => {
            ts = libc::timespec {
                tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            };
            &ts as *const libc::timespec
        }
        None => core::ptr::null(),
    };
    // SAFETY: the word is a live, 4-aligned AtomicU32 for the duration of the
    // call; FUTEX_WAIT only reads it. The timespec outlives the call.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            core::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wakes every thread (of any process) sleeping in [`futex_wait`] on `word`.
#[cfg(not(loom))]
pub(crate) fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE only uses the address as a key; no memory access.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            core::ptr::null::<libc::timespec>(),
            core::ptr::null::<u32>(),
            0u32,
        );
    }
}

// The loom model of a futex: one mutex + condvar per model execution. The
// check of the word happens under the mutex and a waker takes the mutex before
// notifying, which is exactly the atomicity the kernel's hash-bucket lock
// gives FUTEX_WAIT against FUTEX_WAKE. A lost wake-up therefore shows up as a
// loom deadlock. Timeouts are not modelled (tests pass `None`).
#[cfg(loom)]
loom::lazy_static! {
    static ref FUTEX: (loom::sync::Mutex<()>, loom::sync::Condvar) =
        (loom::sync::Mutex::new(()), loom::sync::Condvar::new());
}

#[cfg(loom)]
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, _timeout: Option<Duration>) {
    let guard = FUTEX.0.lock().unwrap();
    // Checked under the mutex that `futex_wake` takes after the waker's swap:
    // the mutex orders the two, as the kernel's bucket lock does.
    if word.load(Ordering::SeqCst) == expected {
        drop(FUTEX.1.wait(guard).unwrap());
    }
}

#[cfg(loom)]
pub(crate) fn futex_wake(_word: &AtomicU32) {
    drop(FUTEX.0.lock().unwrap());
    FUTEX.1.notify_all();
}
