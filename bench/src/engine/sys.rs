//! The few process-control system calls std does not wrap: sending
//! `SIGSTOP`/`SIGCONT`/`SIGTERM` to a server process (so that servers
//! sharing the io core take turns instead of stealing it from each other),
//! and `PR_SET_PDEATHSIG` in a child between fork and exec, so that no
//! server outlives the benchmark even when it is SIGKILLed.
#![allow(unsafe_code)]

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

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
}
