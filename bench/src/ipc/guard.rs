//! Keeping every wait bounded.
//!
//! [`Stop`] is the flag every driver loop polls (spin loops every 1024
//! turns through [`Spinner`], timed sleeps on each timeout); the
//! [`Watchdog`] sets it when the run stops making progress, after killing
//! the peer (which turns blocked reads into EOF) and ringing the registered
//! wakers (for the eventfd reads that a dead peer would never end).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::control::PeerKiller;
use super::CaseError;

/// Set once when the run must give up; polled by every waiting loop.
#[derive(Debug, Default)]
pub struct Stop(AtomicBool);

impl Stop {
    /// A flag that is not set.
    pub const fn new() -> Self {
        Self(AtomicBool::new(false))
    }

    /// Sets the flag.
    pub fn set(&self) {
        // Relaxed: a lone flag; what the waiter does next (report an error)
        // needs no data published by the setter.
        self.0.store(true, Ordering::Relaxed);
    }

    /// True once [`set`](Self::set).
    #[inline]
    pub fn is_set(&self) -> bool {
        // Relaxed: pairs with the Relaxed store in `set`; see there.
        self.0.load(Ordering::Relaxed)
    }

    /// `Err(Aborted)` once set.
    #[inline]
    pub fn check(&self) -> Result<(), CaseError> {
        if self.is_set() {
            Err(CaseError::Aborted)
        } else {
            Ok(())
        }
    }
}

/// One busy-wait turn after another, polling [`Stop`] every 1024 turns (a
/// relaxed load is cheap, but not free inside the tightest loops).
#[derive(Debug, Default)]
pub struct Spinner {
    turns: u32,
}

impl Spinner {
    /// A fresh spinner.
    pub fn new() -> Self {
        Self::default()
    }

    /// Spins once (the CPU's spin hint); `Err(Aborted)` once `stop` is set.
    #[inline]
    pub fn spin(&mut self, stop: &Stop) -> Result<(), CaseError> {
        std::hint::spin_loop();
        self.turns = self.turns.wrapping_add(1);
        if self.turns.is_multiple_of(1024) {
            stop.check()?;
        }
        Ok(())
    }
}

/// Busy-waits until `ready()`, polling `stop` every 1024 turns.
#[inline]
pub fn spin_until(stop: &Stop, mut ready: impl FnMut() -> bool) -> Result<(), CaseError> {
    let mut spinner = Spinner::new();
    while !ready() {
        spinner.spin(stop)?;
    }
    Ok(())
}

/// Something that unblocks a driver stuck in a wait the peer's death does
/// not end.
pub type Waker = Box<dyn Fn() + Send + Sync>;

/// Kills the peer and sets [`Stop`] when the run stalls.
pub struct Watchdog {
    shared: Arc<WatchdogShared>,
    thread: Option<JoinHandle<()>>,
}

struct WatchdogShared {
    progress: AtomicU64,
    stop: Arc<Stop>,
    finished: AtomicBool,
    fired: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

impl Watchdog {
    /// Starts watching: if [`progress`](Self::progress) is not called for
    /// `stall_timeout`, kills the peer, sets `stop` and calls the wakers.
    pub fn start(stop: Arc<Stop>, peer: PeerKiller, stall_timeout: Duration) -> io::Result<Self> {
        let shared = Arc::new(WatchdogShared {
            progress: AtomicU64::new(0),
            stop,
            finished: AtomicBool::new(false),
            fired: AtomicBool::new(false),
            wakers: Mutex::new(Vec::new()),
        });
        let watched = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("bench-watchdog".into())
            .spawn(move || watch(&watched, &peer, stall_timeout))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Adds a waker, called once if the watchdog fires.
    pub fn add_waker(&self, waker: Waker) {
        self.shared
            .wakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(waker);
    }

    /// Records progress (a chunk done).
    pub fn progress(&self) {
        // Relaxed: a counter compared only with itself by the watchdog.
        self.shared.progress.fetch_add(1, Ordering::Relaxed);
    }

    /// True if the watchdog fired.
    pub fn fired(&self) -> bool {
        // Acquire: pairs with the Release store in `watch`.
        self.shared.fired.load(Ordering::Acquire)
    }
}

/// The watchdog's decision, apart from its thread and clock, so that a
/// test can drive it with made-up times: a stall is `stall_timeout` since
/// the progress count last changed.
#[derive(Debug)]
struct StallDetector {
    stall_timeout: Duration,
    seen: u64,
    since: Instant,
}

impl StallDetector {
    fn new(stall_timeout: Duration, start: Instant) -> Self {
        Self {
            stall_timeout,
            // No count equals it: the first look counts as progress.
            seen: u64::MAX,
            since: start,
        }
    }

    /// Looks at the progress count at `now`; true when the run stalled.
    fn stalled(&mut self, progress: u64, now: Instant) -> bool {
        if progress != self.seen {
            self.seen = progress;
            self.since = now;
            return false;
        }
        now.saturating_duration_since(self.since) >= self.stall_timeout
    }
}

fn watch(shared: &WatchdogShared, peer: &PeerKiller, stall_timeout: Duration) {
    let tick = Duration::from_millis(20).min(stall_timeout);
    let mut detector = StallDetector::new(stall_timeout, Instant::now());
    // Acquire: pairs with the Release store in `Drop`.
    while !shared.finished.load(Ordering::Acquire) {
        std::thread::park_timeout(tick);
        // Relaxed: see `progress`.
        let progress = shared.progress.load(Ordering::Relaxed);
        if detector.stalled(progress, Instant::now()) {
            // Release: pairs with the Acquire load in `fired`.
            shared.fired.store(true, Ordering::Release);
            peer.kill();
            shared.stop.set();
            for waker in shared
                .wakers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
            {
                waker();
            }
            return;
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Release: pairs with the Acquire load in `watch`.
        self.shared.finished.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spin_until_stops_when_told() {
        let stop = Stop::new();
        let mut n = 0;
        spin_until(&stop, || {
            n += 1;
            n == 10
        })
        .unwrap();
        stop.set();
        assert!(matches!(
            spin_until(&stop, || false),
            Err(CaseError::Aborted)
        ));
    }

    #[test]
    fn a_stall_is_the_timeout_without_progress_and_progress_resets_it() {
        // Made-up times: no sleeping, nothing for a loaded machine to delay.
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut d = StallDetector::new(Duration::from_millis(1000), t0);
        // Progress at any pace, even with gaps just under the timeout.
        for (i, ms) in [0, 999, 1998, 2997].into_iter().enumerate() {
            assert!(!d.stalled(i as u64, at(ms)), "progress at {ms} ms");
        }
        // No progress since 2997 ms: not yet a stall a moment before the
        // timeout, a stall at it and after it.
        assert!(!d.stalled(3, at(3996)));
        assert!(d.stalled(3, at(3997)));
        assert!(d.stalled(3, at(60_000)));
        // Progress after a stall starts the count again.
        assert!(!d.stalled(4, at(60_001)));
        assert!(!d.stalled(4, at(61_000)));
        // A clock that reads earlier than the last progress is no stall.
        assert!(!d.stalled(4, t0));
    }

    /// A stand-in for the peer: a process that waits to be killed.
    fn sleeping_child() -> Arc<Mutex<std::process::Child>> {
        let child = std::process::Command::new("sleep")
            .arg("300")
            .spawn()
            .unwrap();
        Arc::new(Mutex::new(child))
    }

    #[test]
    fn watchdog_kills_the_peer_and_wakes_the_driver_on_a_stall() {
        let child = sleeping_child();
        let stop = Arc::new(Stop::new());
        // No progress at all: it fires after the (short) timeout, however
        // late its thread runs. Only whether it fires is asserted, not when;
        // the deadline below only keeps a broken watchdog from hanging the
        // test.
        let dog = Watchdog::start(
            Arc::clone(&stop),
            PeerKiller::new(Arc::clone(&child)),
            Duration::from_millis(50),
        )
        .unwrap();
        let woken = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&woken);
        dog.add_waker(Box::new(move || flag.store(true, Ordering::SeqCst)));
        let t = Instant::now();
        while !stop.is_set() {
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "watchdog never fired"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(dog.fired() && woken.load(Ordering::SeqCst));
        drop(dog);
        // The child was killed.
        let status = child.lock().unwrap().wait().unwrap();
        assert!(!status.success());
    }

    #[test]
    fn watchdog_stays_quiet_while_the_run_progresses() {
        let child = sleeping_child();
        let stop = Arc::new(Stop::new());
        // A timeout no scheduling delay reaches; the stall logic itself is
        // tested with made-up times above.
        let dog = Watchdog::start(
            Arc::clone(&stop),
            PeerKiller::new(Arc::clone(&child)),
            Duration::from_secs(3600),
        )
        .unwrap();
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(20));
            dog.progress();
        }
        assert!(!dog.fired() && !stop.is_set());
        drop(dog);
        assert!(!stop.is_set(), "dropping a watchdog does not fire it");
        let mut child = child.lock().unwrap();
        assert!(
            child.try_wait().unwrap().is_none(),
            "the peer was left alone"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
