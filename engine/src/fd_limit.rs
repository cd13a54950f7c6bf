//! Fitting kernel-TCP connections into the open-files limit.
//!
//! Every kernel-TCP connection is a file descriptor, and so is each worker's
//! pidfd, control socket, region and log pipes. An engine out of descriptors
//! cannot accept: its clients wait in the listen backlog and nobody answers
//! them. So at start the engine raises its soft `RLIMIT_NOFILE` as far as
//! `max_connections` needs (never past the hard limit, and its workers get
//! the old limit back), and when even the hard limit cannot hold that many it
//! serves fewer connections and says so at start: connections over the
//! effective limit then get the HTTP layer's `503`, not a hang. (Running out
//! anyway, e.g. by descriptors this plan did not foresee, is the kernel
//! transport's last resort: it closes what it cannot accept, see
//! `nocturne_net::kernel`.)
//!
//! A userspace stack's connections are not descriptors: for `--net smoltcp`
//! only the workers count.

use crate::config::{Config, NetBackend};
use crate::sys::OpenFilesLimit;

/// Descriptors the engine holds per worker: its pidfd, control socket,
/// region memfd, stdout and stderr pipes, and a doorbell eventfd.
const FDS_PER_WORKER: usize = 6;
/// Headroom for what comes and goes: spawns in flight (a socket pair and
/// pipes each), `/proc` reads, a device queue.
const SPARE_FDS: usize = 64;

/// What [`fit`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FdPlan {
    /// Descriptors the configuration may use at worst.
    pub wanted: usize,
    /// The limits after raising.
    pub limit: OpenFilesLimit,
    /// The connections served at once: `max_connections`, or fewer where the
    /// limit cannot hold them.
    pub max_connections: usize,
}

/// Descriptors a configuration uses at worst: what is open now, every
/// worker at `max_workers`, and each loop's share of the connections with
/// the lingering closes it allows beside them (refused connections linger
/// until their clients have read the 503).
fn wanted(open_now: usize, workers: usize, connections: usize, loops: usize) -> usize {
    // No connections (a userspace stack's): no shares, which count at least
    // one connection and 16 lingering closes each.
    let connection_fds: usize = if connections == 0 {
        0
    } else {
        (0..loops)
            .map(|i| crate::engine::connection_share(connections, loops, i))
            .map(|c| c + crate::engine::lingering_share(c))
            .sum()
    };
    open_now + SPARE_FDS + FDS_PER_WORKER * workers + connection_fds
}

/// The most connections whose [`wanted`] fits under `soft` (at least one per
/// loop: the engine must be reachable to say anything).
fn connections_within(soft: u64, open_now: usize, workers: usize, loops: usize) -> usize {
    let soft = usize::try_from(soft).unwrap_or(usize::MAX);
    let fits = |c| wanted(open_now, workers, c, loops) <= soft;
    // `wanted` grows with the connections: bisect on [loops, soft].
    let (mut lo, mut hi) = (loops, soft.max(loops));
    if !fits(lo) {
        return lo;
    }
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

/// Raises the open-files limit for `config` and returns the connections the
/// engine can serve at once.
pub(crate) fn fit(config: &Config) -> std::io::Result<FdPlan> {
    let open_now = crate::sys::open_fd_count()?;
    let workers = config.total_max_workers();
    let loops = config.io_cores.len().max(1);
    let connections = match config.net {
        NetBackend::Kernel => config.max_connections,
        NetBackend::Smoltcp => 0,
    };
    let wanted = wanted(open_now, workers, connections, loops);
    let limit = crate::sys::raise_own_open_files_limit(wanted as u64)?;
    let max_connections = match config.net {
        NetBackend::Kernel => config
            .max_connections
            .min(connections_within(limit.soft, open_now, workers, loops)),
        NetBackend::Smoltcp => config.max_connections,
    };
    Ok(FdPlan {
        wanted,
        limit,
        max_connections,
    })
}

/// The start-up line about the plan: `None` when there is nothing to say.
pub(crate) fn describe(plan: &FdPlan, config: &Config) -> Option<String> {
    let limit = plan.limit;
    if plan.max_connections < config.max_connections {
        return Some(format!(
            "nocturne: warning: max_connections {} needs up to {} open files, but the \
             limit is {} (hard limit {}; `ulimit -n`, or LimitNOFILE= under systemd): \
             serving at most {} connection{} at once, more get 503",
            config.max_connections,
            plan.wanted,
            limit.soft,
            limit.hard,
            plan.max_connections,
            if plan.max_connections == 1 { "" } else { "s" }
        ));
    }
    limit.raised().then(|| {
        format!(
            "nocturne: open-files limit raised from {} to {} (max_connections {})",
            limit.before, limit.soft, plan.max_connections
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_fit_beside_workers_and_spares() {
        // 40 open, 20 workers (120), 64 spare: 800 left of 1024 for
        // connections and an eighth of them lingering.
        assert_eq!(wanted(40, 20, 0, 1), 224);
        assert_eq!(wanted(40, 20, 800, 1), 224 + 800 + 100);
        assert_eq!(wanted(40, 20, 8, 1), 224 + 8 + 16, "at least 16 lingering");
        for loops in [1, 2, 3, 16] {
            for soft in [300, 1024, 20_000, 1 << 20] {
                let fit = connections_within(soft, 40, 20, loops);
                let floor = fit == loops;
                assert!(
                    floor || wanted(40, 20, fit, loops) <= soft as usize,
                    "{soft} {loops}"
                );
                assert!(
                    wanted(40, 20, fit + 1, loops) > soft as usize,
                    "{soft} {loops}"
                );
            }
        }
        assert_eq!(connections_within(1024, 40, 20, 1), 711);
        // Nothing left: still one per loop, so the engine can answer at all.
        assert_eq!(connections_within(100, 40, 20, 1), 1);
        assert_eq!(connections_within(100, 40, 20, 4), 4);
        // The default 10000 fits in 20000 descriptors.
        assert!(wanted(40, 20, 10_000, 1) <= 20_000);
    }

    #[test]
    fn describe_says_nothing_unless_raised_or_clamped() {
        let overrides = crate::config::Overrides::default();
        let config = Config::load(None, &overrides, &[0, 1]).unwrap();
        let plan = |before, soft, max_connections| FdPlan {
            wanted: 11_474,
            limit: OpenFilesLimit {
                before,
                soft,
                hard: soft,
            },
            max_connections,
        };
        assert_eq!(describe(&plan(65_536, 65_536, 10_000), &config), None);
        let raised = describe(&plan(1024, 11_474, 10_000), &config).unwrap();
        assert!(raised.contains("raised from 1024 to 11474"), "{raised}");
        let clamped = describe(&plan(1024, 1024, 400), &config).unwrap();
        assert!(
            clamped.contains("max_connections 10000 needs up to 11474 open files")
                && clamped.contains("serving at most 400 connections"),
            "{clamped}"
        );
        let one = describe(&plan(40, 40, 1), &config).unwrap();
        assert!(
            one.contains("serving at most 1 connection at once"),
            "{one}"
        );
    }
}
