//! The process's open-files limit (`RLIMIT_NOFILE`): every region memfd,
//! doorbell eventfd, passed descriptor and socket spends one. The engine
//! raises it for its connections and workers (remembering the limit it
//! started with, which its workers get back), the benchmarks for their
//! client connections; both through [`raise_open_files_limit`].
#![allow(unsafe_code)]

use std::io;

/// `RLIMIT_NOFILE` around [`raise_open_files_limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFilesLimit {
    /// The soft limit before.
    pub before: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit (the most an unprivileged raise reaches).
    pub hard: u64,
}

impl OpenFilesLimit {
    /// Whether the call raised the soft limit.
    pub fn raised(&self) -> bool {
        self.soft > self.before
    }
}

/// Raises this process's soft open-files limit to `want`, or as near as
/// the hard limit allows; never lowers it. Children spawned afterwards
/// inherit the new limit (unless they set their own back).
pub fn raise_open_files_limit(want: u64) -> io::Result<OpenFilesLimit> {
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
    }
    Ok(OpenFilesLimit {
        before,
        soft: target.max(before),
        hard: limit.rlim_max,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_files_limit_is_raised_at_most_to_the_hard_limit() {
        let first = raise_open_files_limit(0).unwrap();
        assert_eq!(first.soft, first.before, "never lowered");
        assert!(!first.raised());
        let want = first.before + 16;
        let raised = raise_open_files_limit(want).unwrap();
        assert_eq!(raised.soft, want.min(raised.hard));
        assert_eq!(raised.raised(), raised.before < raised.hard);
        let capped = raise_open_files_limit(u64::MAX).unwrap();
        assert_eq!(capped.soft, capped.hard);
    }
}
