//! The few raw system calls the baselines need and std does not wrap:
//! `futex(2)` on a shared word (reporting whether the caller really slept),
//! `eventfd(2)`, the calling thread's voluntary context switches
//! (`getrusage(RUSAGE_THREAD)`: how a peer proves it slept), and
//! `prctl(PR_SET_PDEATHSIG)` so a peer never outlives its driver.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// How a [`futex_wait`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FutexWait {
    /// The caller slept and was woken (or woke spuriously).
    Woken,
    /// The word no longer held the expected value: it did not sleep.
    ValueChanged,
    /// The timeout passed.
    TimedOut,
    /// A signal interrupted the sleep.
    Interrupted,
}

/// Sleeps while `*word == expected`, at most `timeout` (None: forever).
///
/// Shared futex (no `FUTEX_PRIVATE_FLAG`): the word lives in a `MAP_SHARED`
/// mapping and the waker is another process.
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> FutexWait {
    let ts;
    let ts_ptr = match timeout {
        Some(d) => {
            ts = libc::timespec {
                tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
                tv_nsec: d.subsec_nanos() as libc::c_long,
            };
            &ts as *const libc::timespec
        }
        None => std::ptr::null(),
    };
    // SAFETY: `word` is a live, 4-aligned AtomicU32 for the duration of the
    // call and FUTEX_WAIT only reads it; the timespec outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    if rc == 0 {
        return FutexWait::Woken;
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::ETIMEDOUT) => FutexWait::TimedOut,
        Some(libc::EINTR) => FutexWait::Interrupted,
        // EAGAIN: the value changed before we slept. Nothing else is possible
        // for a valid, aligned, mapped word.
        _ => FutexWait::ValueChanged,
    }
}

/// Wakes up to `count` sleepers on `word` (of any process); returns how many
/// were woken.
pub fn futex_wake(word: &AtomicU32, count: i32) -> usize {
    // SAFETY: FUTEX_WAKE uses the address only as a key; no memory access.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            count,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    usize::try_from(rc).unwrap_or(0)
}

/// A blocking, close-on-exec eventfd with counter 0, as a `File` (8-byte
/// `read`/`write` are the whole eventfd interface).
pub fn eventfd() -> io::Result<File> {
    // SAFETY: eventfd takes no pointers.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: eventfd returned a fresh descriptor that nothing else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(raw) }))
}

/// Voluntary context switches of the calling thread so far: each time it
/// blocked in the kernel (a futex sleep, a read that had to wait).
pub fn voluntary_switches() -> u64 {
    // SAFETY: an all-zero rusage is a valid value for getrusage to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into `usage`, which lives across the call.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    if rc != 0 {
        return 0;
    }
    u64::try_from(usage.ru_nvcsw).unwrap_or(0)
}

/// Asks the kernel to SIGKILL this process when the thread that spawned it
/// exits, then checks the parent is still `expected_parent` (it may have
/// died before the request was made).
pub fn die_with_parent(expected_parent: u32) -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number; no memory is passed.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if std::os::unix::process::parent_id() != expected_parent {
        return Err(io::Error::other("the benchmark driver already exited"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    #[test]
    fn futex_reports_changed_value_timeout_and_wake() {
        let word = Arc::new(AtomicU32::new(5));
        assert_eq!(futex_wait(&word, 4, None), FutexWait::ValueChanged);
        assert_eq!(
            futex_wait(&word, 5, Some(Duration::from_millis(1))),
            FutexWait::TimedOut
        );
        assert_eq!(futex_wake(&word, 1), 0);
        let sleeper = {
            let word = Arc::clone(&word);
            std::thread::spawn(move || loop {
                if word.load(Ordering::Acquire) != 5 {
                    return;
                }
                futex_wait(&word, 5, Some(Duration::from_secs(10)));
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        // Release: pairs with the sleeper's Acquire load.
        word.store(6, Ordering::Release);
        futex_wake(&word, 1);
        sleeper.join().unwrap();
    }

    #[test]
    fn eventfd_counts_writes() {
        let mut efd = eventfd().unwrap();
        efd.write_all(&2u64.to_ne_bytes()).unwrap();
        efd.write_all(&3u64.to_ne_bytes()).unwrap();
        let mut buf = [0u8; 8];
        efd.read_exact(&mut buf).unwrap();
        assert_eq!(u64::from_ne_bytes(buf), 5);
        // A short buffer is refused by the kernel.
        assert!(efd.read(&mut [0u8; 4]).is_err());
    }

    #[test]
    fn voluntary_switches_count_sleeps() {
        let before = voluntary_switches();
        std::thread::sleep(Duration::from_millis(2));
        assert!(voluntary_switches() > before);
    }

    #[test]
    fn die_with_parent_rejects_a_wrong_parent() {
        // PDEATHSIG on the test process is harmless: its parent waits for it.
        let parent = std::os::unix::process::parent_id();
        assert!(die_with_parent(parent.wrapping_add(1)).is_err());
        die_with_parent(parent).unwrap();
    }
}
