//! The system calls the load generator needs beyond mio: a `timerfd` that
//! wakes a sleeping client thread at a nanosecond-precise intended send time
//! (epoll's own timeout has millisecond granularity, the very resolution
//! problem of wrk2), the calling thread's CPU time, and the echo server's
//! listen backlog.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Resizes the accept queue of a listening socket to `backlog` (listen(2)
/// again on a listening socket does only that; the kernel caps it at
/// `net.core.somaxconn`).
pub fn set_listen_backlog(listener: &impl AsRawFd, backlog: libc::c_int) -> io::Result<()> {
    // SAFETY: listen(2) on a descriptor `listener` owns and keeps open for
    // the call; no memory is passed.
    if unsafe { libc::listen(listener.as_raw_fd(), backlog) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A non-blocking `CLOCK_MONOTONIC` one-shot timer, readable when it fires.
#[derive(Debug)]
pub struct TimerFd {
    fd: OwnedFd,
}

impl TimerFd {
    /// A disarmed timer.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain system call with constant flags; the result is
        // checked before it is used as a descriptor.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// Fires once, `after` from now (at least 1 ns: a zero value would
    /// disarm the timer instead). Arming resets the count of expiries, so a
    /// timer that fired need not be read before it is armed again: under
    /// edge-triggered epoll each expiry is a new event.
    pub fn arm_after(&self, after: Duration) -> io::Result<()> {
        let after = after.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs().min(i64::MAX as u64) as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `spec` is a valid itimerspec that outlives the call; the
        // old value is not asked for (null).
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsRawFd for TimerFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// CPU time the calling thread has used (user and system).
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn timer_fires_and_rearming_resets_it() {
        let t = TimerFd::new().unwrap();
        let mut fds = [libc::pollfd {
            fd: t.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let poll = |fds: &mut [libc::pollfd; 1], ms: i32| {
            // SAFETY: one valid pollfd in a live array.
            unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) }
        };
        assert_eq!(poll(&mut fds, 0), 0, "a disarmed timer is not readable");
        t.arm_after(Duration::from_micros(200)).unwrap();
        assert_eq!(poll(&mut fds, 5_000), 1, "an armed timer fires");
        // The client loop never reads the expiry: arming again must reset it.
        t.arm_after(Duration::from_secs(3_600)).unwrap();
        assert_eq!(poll(&mut fds, 0), 0, "arming again resets a fired timer");
        t.arm_after(Duration::from_micros(200)).unwrap();
        assert_eq!(poll(&mut fds, 5_000), 1, "and it fires again");
    }

    #[test]
    fn thread_cpu_time_advances_with_work() {
        let before = thread_cpu_time();
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(20) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(thread_cpu_time() > before);
    }
}
