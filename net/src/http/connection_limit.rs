//! One cap on open connections shared by the servers of several core loops.
//!
//! Each loop's listener takes the connections the kernel's `SO_REUSEPORT`
//! hash gives it, which is not an even split: with the cap divided into
//! per-loop shares, one loop answered 503 while the other had room, and a
//! cap of one served two. Servers given the same [`ConnectionLimit`] count
//! against one total instead.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Open connections of every server sharing it, at most `max`.
#[derive(Debug)]
pub struct ConnectionLimit {
    open: AtomicUsize,
    max: usize,
}

impl ConnectionLimit {
    /// A limit of `max` open connections in all.
    pub fn new(max: usize) -> Self {
        Self {
            open: AtomicUsize::new(0),
            max,
        }
    }

    /// Counts one more open connection, unless `max` are open.
    pub(crate) fn try_acquire(&self) -> bool {
        // Relaxed: the count guards nothing but itself; each increment and
        // decrement is one atomic read-modify-write, so the total is exact.
        self.open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Counts one connection less (one [`try_acquire`](Self::try_acquire)d).
    pub(crate) fn release(&self) {
        // Relaxed: see `try_acquire`.
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Open connections now, over every server sharing the limit.
    pub fn open(&self) -> usize {
        // Relaxed: a reading for logs and tests.
        self.open.load(Ordering::Relaxed)
    }

    /// The limit.
    pub fn max(&self) -> usize {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acquires_up_to_max_and_again_after_a_release() {
        let limit = ConnectionLimit::new(2);
        assert!(limit.try_acquire());
        assert!(limit.try_acquire());
        assert!(!limit.try_acquire());
        assert_eq!(limit.open(), 2);
        limit.release();
        assert!(limit.try_acquire());
        assert!(!limit.try_acquire());
    }

    #[test]
    fn threads_never_take_more_than_max_together() {
        let limit = std::sync::Arc::new(ConnectionLimit::new(100));
        let taken: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let limit = &limit;
                    s.spawn(move || (0..1000).filter(|_| limit.try_acquire()).count())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(taken, 100);
        assert_eq!(limit.open(), 100);
    }
}
