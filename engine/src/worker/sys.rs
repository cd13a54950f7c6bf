//! The process-control system calls the worker manager needs and std does not
//! offer: pidfds (`pidfd_open`, `pidfd_send_signal`, `waitid(P_PIDFD)`), the
//! child's setup between fork and exec, and eventfd/poll helpers. All of the
//! worker manager's `unsafe` lives here.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use super::ExitStatus;

/// A set of CPUs for `sched_setaffinity`, built before the fork so the child
/// only copies it.
#[derive(Clone, Copy)]
pub(crate) struct CpuSet(libc::cpu_set_t);

impl CpuSet {
    /// Largest CPU number + 1 a set can hold.
    pub(crate) const CAPACITY: usize = libc::CPU_SETSIZE as usize;

    /// The set of `cores`; `None` if one is beyond [`Self::CAPACITY`].
    pub(crate) fn new(cores: &[usize]) -> Option<Self> {
        // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for &core in cores {
            if core >= Self::CAPACITY {
                return None;
            }
            // SAFETY: `core` < CPU_SETSIZE, so the bit index is inside the array.
            unsafe { libc::CPU_SET(core, &mut set) };
        }
        Some(Self(set))
    }
}

/// Arranges for the child of `cmd`, between fork and exec, to
/// * get `SIGKILL` when the thread that forks it dies (`PR_SET_PDEATHSIG`), and
///   fail the spawn instead if its parent `parent` is already gone (the death
///   happened before the prctl, so the signal would never come);
/// * run on `cpus` if given;
/// * inherit `control_fd` across exec (it is close-on-exec in the parent, so a
///   worker spawned concurrently by another thread never inherits it);
/// * get back the open-files limit the engine started with, if it raised its
///   own (`crate::fd_limit`);
/// * start with no signal blocked: the engine blocks SIGINT and SIGTERM in
///   every thread to take them in `sigtimedwait`, and a mask survives fork
///   and exec, so a worker (and whatever it runs) could not be stopped;
/// * hold no descriptor but its stdio and `control_fd`: whatever the engine
///   inherited without close-on-exec from whoever started it is not the
///   function's to hold.
pub(crate) fn prepare_child(
    cmd: &mut Command,
    control_fd: RawFd,
    parent: libc::pid_t,
    cpus: Option<CpuSet>,
) {
    let open_files = crate::sys::starting_open_files_limit();
    let child_setup = move || -> io::Result<()> {
        // This runs in the freshly forked child, where only async-signal-safe
        // calls are allowed; nothing here allocates or locks (an io::Error
        // from a raw errno does not allocate).
        // SAFETY: prctl, getppid, sched_setaffinity, fcntl, setrlimit,
        // sigprocmask and close_range are plain system calls on integers, on
        // `set`, a live cpu_set_t of the size passed, on `limit`, a live
        // rlimit, and on `unblocked`, a live sigset_t sigemptyset filled.
        unsafe {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            if let Some(set) = &cpus {
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set.0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::fcntl(control_fd, libc::F_SETFD, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(limit) = &open_files {
                if libc::setrlimit(libc::RLIMIT_NOFILE, limit) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            let mut unblocked = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut unblocked);
            if libc::sigprocmask(libc::SIG_SETMASK, &unblocked, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            // Close-on-exec rather than closed: std reports a failed exec
            // through a close-on-exec pipe of its own, which must stay open
            // until the exec. Kernels before 5.11 lack the flag (EINVAL);
            // the descriptors then stay, as they did before.
            let cloexec_from = |first: u32, last: u32| {
                libc::syscall(
                    libc::SYS_close_range,
                    first,
                    last,
                    libc::CLOSE_RANGE_CLOEXEC,
                )
            };
            let control = control_fd as u32;
            if control > 3 {
                cloexec_from(3, control - 1);
            }
            cloexec_from(control + 1, u32::MAX);
        }
        Ok(())
    };
    // SAFETY: `child_setup` only makes async-signal-safe system calls (see above)
    // and captures plain Copy data, so running it in the forked child is sound.
    unsafe { cmd.pre_exec(child_setup) };
}

/// Moves `fd` to a number >= 3 if it is 0, 1 or 2, keeping close-on-exec, so the
/// child's stdio redirection cannot overwrite it before exec (possible only
/// when the engine runs with a standard stream closed).
pub(crate) fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC on an fd we own creates a new fd; no memory involved.
    let dup = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fcntl returned a new open fd that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

/// `pidfd_open(pid, 0)`: a handle on the process that stays valid (and never
/// names another process) until it is closed, even after the pid is reaped.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new close-on-exec fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `pidfd_send_signal(pidfd, sig)`. `ESRCH` (already exited) is success: the
/// caller wants it dead, and it is.
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: a null siginfo is allowed (the kernel fills in a SI_USER one).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(e);
        }
    }
    Ok(())
}

/// `waitid(P_PIDFD, pidfd, WEXITED [| WNOHANG])`: reaps the child if it has
/// exited. `Ok(None)` when `block` is false and it is still running. `ECHILD`
/// means someone else reaped it: reported as an error, the status is lost.
pub(crate) fn waitid_pidfd(pidfd: BorrowedFd<'_>, block: bool) -> io::Result<Option<ExitStatus>> {
    let flags = libc::WEXITED | if block { 0 } else { libc::WNOHANG };
    loop {
        // SAFETY: all-zero is a valid siginfo_t; waitid writes it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is valid for writes; the pidfd is borrowed and open.
        let rc = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                flags,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // SAFETY: waitid succeeded with WEXITED, so the SIGCHLD fields are the
        // valid union member (si_pid 0 = WNOHANG and nothing to reap).
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return Ok(None);
        }
        return Ok(Some(match info.si_code {
            libc::CLD_EXITED => ExitStatus::Exited(status),
            // CLD_KILLED or CLD_DUMPED (WEXITED reports nothing else).
            _ => ExitStatus::Signaled(status),
        }));
    }
}

/// Waits until `fd` is readable (or hung up) or `timeout` passes; `Ok(false)` on
/// timeout. `None` waits forever.
pub(crate) fn poll_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    let ms = match timeout {
        None => -1,
        // Round up so a short positive timeout does not become a busy poll.
        Some(t) => t
            .as_nanos()
            .div_ceil(1_000_000)
            .min(libc::c_int::MAX as u128) as libc::c_int,
    };
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd, count 1.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc >= 0 {
            return Ok(rc > 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
