//! The few raw system calls the engine makes itself: eventfds, signal masks
//! and the open-files limit.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// A non-blocking, close-on-exec eventfd (a core loop's doorbell).
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with constant flags; the result is checked below.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds 1 to an eventfd, waking whoever waits on it in epoll. A full counter
/// (`EAGAIN`, only after 2^64-2 unconsumed wake-ups) already means
/// "readable", so it is success.
pub fn signal_eventfd(efd: BorrowedFd<'_>) -> io::Result<()> {
    let one: u64 = 1;
    loop {
        // SAFETY: writes 8 bytes from a live u64.
        let rc = unsafe { libc::write(efd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if rc == 8 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(()),
            _ => return Err(e),
        }
    }
}

/// Resets an eventfd's counter so the next epoll wait sleeps again.
pub fn drain_eventfd(fd: &OwnedFd) {
    let mut value: u64 = 0;
    // SAFETY: reads 8 bytes into a valid u64 from a non-blocking eventfd; EAGAIN
    // (already zero) is fine.
    unsafe {
        libc::read(fd.as_raw_fd(), (&mut value as *mut u64).cast(), 8);
    }
}

/// Blocks SIGINT and SIGTERM in the calling thread (and the threads it starts
/// afterwards), so that only [`wait_for_signal`] receives them.
pub fn block_shutdown_signals() -> io::Result<()> {
    let set = shutdown_set();
    // SAFETY: `set` is an initialised sigset; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Waits up to `timeout` (forever with `None`) for SIGINT or SIGTERM, which
/// must be blocked beforehand; returns its number, or `None` on timeout.
pub fn wait_for_signal(timeout: Option<std::time::Duration>) -> Option<i32> {
    let set = shutdown_set();
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(t.subsec_nanos() as i32),
    });
    loop {
        let ts_ptr = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `set` is initialised; `ts_ptr` is null or points at a live
        // timespec; a null siginfo pointer is allowed.
        let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), ts_ptr) };
        if sig > 0 {
            return Some(sig);
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) => return None,
            _ => continue, // EINTR
        }
    }
}

fn shutdown_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the zeroed set; sigaddset with valid
    // signal numbers cannot fail.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

/// The soft open-files limit the engine started with, when it raised its own
/// (see [`raise_open_files_limit`]): workers get it back before exec.
static STARTING_OPEN_FILES: std::sync::OnceLock<libc::rlimit> = std::sync::OnceLock::new();

/// The process's open-files limits after [`raise_open_files_limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit before.
    pub before: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit (the most an unprivileged raise reaches).
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to `want`, or as near as the hard limit
/// allows; never lowers it.
pub fn raise_open_files_limit(want: u64) -> io::Result<OpenFiles> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    let target = want.min(limit.rlim_max);
    if target > before {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let _ = STARTING_OPEN_FILES.set(limit);
    }
    Ok(OpenFiles {
        before,
        soft: target.max(before),
        hard: limit.rlim_max,
    })
}

/// The open-files limit the engine started with, if it has raised its own.
/// A worker is not the engine: it gets the limit it would have had (a
/// program using `select` breaks past 1024 descriptors).
pub fn starting_open_files_limit() -> Option<libc::rlimit> {
    STARTING_OPEN_FILES.get().copied()
}

/// How many file descriptors this process has open now.
pub fn open_fd_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count())
}

/// Confines the calling thread (and the threads it starts from now on) to
/// `cores`.
pub fn set_thread_affinity(cores: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &core in cores {
        if core >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("core {core} is beyond the CPU set size"),
            ));
        }
        // SAFETY: `core` is below CPU_SETSIZE (checked above); `set` is ours.
        unsafe { libc::CPU_SET(core, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the
    // size passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
