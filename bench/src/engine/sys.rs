//! The few process-control system calls std does not wrap: sending
//! `SIGSTOP`/`SIGCONT`/`SIGTERM` to a server process (so that servers
//! sharing the io core take turns instead of stealing it from each other),
//! `PR_SET_PDEATHSIG` in a child between fork and exec, so that no
//! server outlives the benchmark even when it is SIGKILLed, and turning
//! Ctrl-C into a flag the rounds check, so that an interrupted run still
//! unwinds and removes what it created (its network namespace). The
//! open-files limit, raised for a thousand client connections, is raised
//! with `nocturne_ipc::open_files`, as the engine raises its own.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

/// A signal the benchmark sends to its servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Freeze every thread of the process (cannot be caught).
    Stop,
    /// Resume a stopped process.
    Continue,
    /// Ask the process to shut down cleanly.
    Terminate,
}

impl Signal {
    fn number(self) -> libc::c_int {
        match self {
            Signal::Stop => libc::SIGSTOP,
            Signal::Continue => libc::SIGCONT,
            Signal::Terminate => libc::SIGTERM,
        }
    }
}

/// Sends `signal` to process `pid`.
///
/// The caller must own `pid` as an unreaped child, so the id cannot have
/// been recycled for an unrelated process.
pub fn send_signal(pid: u32, signal: Signal) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a process id"))?;
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, signal.number()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes the child of `cmd` receive SIGKILL when the thread that spawns it
/// exits (`PR_SET_PDEATHSIG`). Spawn from a thread that lives as long as the
/// child should (the benchmark's main thread).
pub fn kill_child_with_parent(cmd: &mut Command) {
    let hook = || {
        // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and no
        // pointers; it is async-signal-safe, as a pre_exec hook must be.
        let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    // SAFETY: the hook runs in the forked child before exec and calls only
    // prctl and errno reads, both async-signal-safe; it allocates nothing
    // and takes no lock.
    unsafe { cmd.pre_exec(hook) };
}

/// Makes closing `socket` send a reset instead of a FIN (`SO_LINGER` 0),
/// so the closing side keeps no TIME-WAIT entry: a run that opens and
/// closes thousands of connections does not fill its namespace's port
/// range with them.
pub fn set_linger_zero(socket: &impl AsRawFd) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads `size_of::<linger>()` bytes from a struct
    // that lives across the call; the fd is borrowed from an open socket.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Set by the SIGINT/SIGTERM/SIGHUP handler of [`catch_interrupts`].
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn note_interrupt(_signal: libc::c_int) {
    // Relaxed: a lone flag; whoever polls it acts on nothing else the
    // handler wrote.
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// From now on SIGINT, SIGTERM and SIGHUP only set a flag
/// ([`interrupted`]): the benchmark stops at its next check and unwinds,
/// so its guards remove its servers and its namespace. `SA_RESTART` keeps
/// blocking socket calls from failing with `EINTR` meanwhile.
pub fn catch_interrupts() -> io::Result<()> {
    catch(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP])
}

fn catch(signals: &[libc::c_int]) -> io::Result<()> {
    for &signal in signals {
        // SAFETY: an all-zero sigaction is a valid value to fill in.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = note_interrupt as extern "C" fn(libc::c_int) as usize;
        action.sa_flags = libc::SA_RESTART;
        // SAFETY: sigemptyset initialises the mask inside our struct.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: installs a handler that only stores to an atomic, which
        // is async-signal-safe; the struct is valid for the call.
        if unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether a signal caught by [`catch_interrupts`] asked the run to stop.
pub fn interrupted() -> bool {
    // Relaxed: pairs with the handler's store; only the flag matters.
    INTERRUPTED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn state(pid: u32) -> u8 {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let close = text.rfind(')').unwrap();
        text.as_bytes()[close + 2]
    }

    fn wait_state(pid: u32, want: &[u8]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !want.contains(&state(pid)) {
            assert!(Instant::now() < deadline, "process never reached {want:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn stop_continue_and_terminate_a_child() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        kill_child_with_parent(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let pid = child.id();
        send_signal(pid, Signal::Stop).unwrap();
        wait_state(pid, b"T");
        send_signal(pid, Signal::Continue).unwrap();
        wait_state(pid, b"SR");
        send_signal(pid, Signal::Terminate).unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success());
    }

    #[test]
    fn bad_pids_are_refused() {
        assert!(send_signal(0, Signal::Terminate).is_err());
        assert!(send_signal(u32::MAX, Signal::Terminate).is_err());
    }

    #[test]
    fn a_caught_signal_only_raises_the_flag() {
        // SIGUSR2 rather than SIGINT: Ctrl-C must still end this test binary.
        catch(&[libc::SIGUSR2]).unwrap();
        assert!(!interrupted());
        // To this thread only: a signal landing on another test's thread
        // would cut its socket read short (EINTR; reads with a timeout
        // are never restarted).
        // SAFETY: raise(3) signals the calling thread with a signal we catch.
        assert_eq!(unsafe { libc::raise(libc::SIGUSR2) }, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !interrupted() {
            assert!(Instant::now() < deadline, "the handler never ran");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
