//! The baseline servers' tokio runtime and listener, set up the way a
//! performance-minded team would: a multi-threaded runtime with one worker
//! thread per granted core, each thread pinned (round-robin) to one of
//! them, and a listener whose accepted sockets get `TCP_NODELAY`.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::pin::{allowed_cores, check_cores, parse_core_list, pin_current_thread};

/// Threads and cores of one server process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerCores {
    /// tokio worker threads.
    pub threads: usize,
    /// Cores the threads are pinned to round-robin (empty: not pinned).
    pub cores: Vec<usize>,
}

/// Why `--threads`/`--cores` do not describe a runtime.
#[derive(Debug, thiserror::Error)]
pub enum CoresError {
    /// `--cores` does not parse.
    #[error("--cores: {0}")]
    Parse(#[from] crate::pin::CoreListError),
    /// `--cores` names a core this process may not use (or the mask is unreadable).
    #[error("--cores: {0}")]
    Pin(#[from] crate::pin::PinError),
    /// `--threads` outside its range.
    #[error(transparent)]
    Threads(#[from] crate::range::RangeError),
}

impl ServerCores {
    /// `threads` defaults to one per core of `cores` (or per allowed core
    /// when `cores` is not given).
    pub fn from_args(threads: Option<usize>, cores: Option<&str>) -> Result<Self, CoresError> {
        let cores = match cores {
            Some(list) => {
                let cores = parse_core_list(list)?;
                check_cores(&cores)?;
                cores
            }
            None => Vec::new(),
        };
        let threads = match threads {
            Some(n) => super::ranges::THREADS.check_usize(n)?,
            None if !cores.is_empty() => cores.len(),
            None => allowed_cores()?.len().max(1),
        };
        Ok(Self { threads, cores })
    }
}

/// A multi-threaded runtime of `cores.threads` workers; every thread it
/// starts is pinned to the next core of `cores.cores` in turn.
pub fn build_runtime(cores: &ServerCores) -> io::Result<tokio::runtime::Runtime> {
    let next = Arc::new(AtomicUsize::new(0));
    let list = cores.cores.clone();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores.threads)
        .thread_name("rpc-worker")
        .enable_io()
        .enable_time()
        .on_thread_start(move || {
            if list.is_empty() {
                return;
            }
            // Relaxed: only hands out distinct indices; no data is published.
            let i = next.fetch_add(1, Ordering::Relaxed);
            let core = list[i % list.len()];
            if let Err(e) = pin_current_thread(core) {
                eprintln!("warning: cannot pin a runtime thread to core {core}: {e}");
            }
        })
        .build()
}

/// Binds `addr` for the current runtime (call it inside the runtime).
pub fn bind_listener(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_default_to_the_cores() {
        let allowed = allowed_cores().unwrap();
        let first = allowed[0].to_string();
        assert_eq!(
            ServerCores::from_args(None, Some(&first)).unwrap(),
            ServerCores {
                threads: 1,
                cores: vec![allowed[0]]
            }
        );
        assert_eq!(
            ServerCores::from_args(Some(3), Some(&first))
                .unwrap()
                .threads,
            3
        );
        assert_eq!(
            ServerCores::from_args(None, None).unwrap().threads,
            allowed.len()
        );
        assert!(matches!(
            ServerCores::from_args(Some(0), None),
            Err(CoresError::Threads(_))
        ));
        assert!(matches!(
            ServerCores::from_args(None, Some("0-")),
            Err(CoresError::Parse(_))
        ));
        assert!(matches!(
            ServerCores::from_args(None, Some("4095")),
            Err(CoresError::Pin(_))
        ));
    }

    #[test]
    fn runtime_threads_run_on_the_granted_core() {
        let core = allowed_cores().unwrap()[0];
        let cores = ServerCores {
            threads: 2,
            cores: vec![core],
        };
        let rt = build_runtime(&cores).unwrap();
        let seen = rt.block_on(async {
            tokio::spawn(async { allowed_cores().unwrap() })
                .await
                .unwrap()
        });
        assert_eq!(seen, vec![core]);
    }
}
