//! The few raw system calls the engine makes itself: eventfds, signal masks
//! and the open-files limit.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

pub use nocturne_ipc::open_files::OpenFilesLimit;

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
/// (see [`raise_own_open_files_limit`]): workers get it back before exec.
static STARTING_OPEN_FILES: std::sync::OnceLock<libc::rlimit> = std::sync::OnceLock::new();

/// Raises the engine's soft open-files limit to `want`, or as near as the
/// hard limit allows, never lowering it
/// ([`nocturne_ipc::open_files::raise_open_files_limit`]); when it raised
/// it, remembers the limit it started with for
/// [`starting_open_files_limit`] (the first raise's: a later one starts
/// from a limit the engine set itself).
pub fn raise_own_open_files_limit(want: u64) -> io::Result<OpenFilesLimit> {
    let limit = nocturne_ipc::open_files::raise_open_files_limit(want)?;
    if limit.raised() {
        let _ = STARTING_OPEN_FILES.set(libc::rlimit {
            rlim_cur: limit.before,
            rlim_max: limit.hard,
        });
    }
    Ok(limit)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Lowers the soft open-files limit to `soft` (the hard one stays).
    fn lower_soft_open_files_limit(soft: u64) {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit struct we own; setrlimit
        // reads it back.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
            limit.rlim_cur = soft.min(limit.rlim_cur);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }

    #[test]
    fn raising_its_own_limit_remembers_the_one_the_engine_started_with() {
        let now = raise_own_open_files_limit(0).unwrap();
        assert!(!now.raised(), "never lowered, nothing raised");
        if now.hard < 64 {
            return; // no room to lower and raise again
        }
        // Room to raise even where the soft limit starts at the hard one.
        lower_soft_open_files_limit(now.hard - 16);
        let raised = raise_own_open_files_limit(now.hard - 8).unwrap();
        assert!(raised.raised(), "{raised:?}");
        assert_eq!(raised.soft, now.hard - 8);
        // The first raise's starting point: this one's, or an earlier
        // one's (another test may have raised it first), never higher.
        let starting = starting_open_files_limit().expect("remembered");
        assert!(
            starting.rlim_cur <= raised.before,
            "{starting:?} {raised:?}"
        );
        assert_eq!(starting.rlim_max, now.hard);
        raise_own_open_files_limit(now.soft).unwrap();
    }
}
