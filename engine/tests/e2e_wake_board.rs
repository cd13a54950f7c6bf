//! Delegated wakes on a shared core, end to end (docs/architecture.md,
//! "Delegated wakes on a shared core"): which workers the engine seats on
//! its loop's wake board (yielding workers that share one core), and that a worker stopped while it holds its
//! polling seat does not hold back the wake-ups delegated to it.
//!
//! The board is a memfd the engine and its seated workers map; the tests
//! find it in a worker's `/proc/PID/fd` (its name is
//! `nocturne-wake-board-LOOP`) and read its `polling` mask (the first 8
//! bytes, `nocturne_ipc::wake_board::WakeBoard` is `repr(C)`) to see what the
//! engine sees when it decides whether to delegate.

mod common;

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{only_worker, process_state, signal, Engine};

/// A configuration of these functions (built-ins of the same names), each
/// with exactly `workers` workers.
fn pools(functions: &[(&str, usize)]) -> String {
    functions
        .iter()
        .map(|(name, workers)| {
            format!(
                "[[functions]]\nname = \"{name}\"\nbuiltin = \"{name}\"\n\
                 min_workers = {workers}\nmax_workers = {workers}\n\n"
            )
        })
        .collect()
}

/// Yielding workers that share core 0: the placement that seats them.
const SEATED: [&str; 4] = ["--worker-poll", "yield", "--worker-cores", "0"];

/// An engine serving `functions` (see [`pools`]) with seated workers, and
/// `extra` flags.
fn seated_engine(functions: &[(&str, usize)], extra: &[&str]) -> Engine {
    Engine::builder()
        .config(&pools(functions))
        .args(SEATED)
        .args(extra)
        .start()
}

/// The wake board `pid` has open, if any: `/proc/PID/fd/N`.
fn board_of(pid: i32) -> Option<PathBuf> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    dir.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| {
        std::fs::read_link(p).is_ok_and(|target| {
            target
                .to_string_lossy()
                .starts_with("/memfd:nocturne-wake-board-")
        })
    })
}

/// The board's `polling` mask: bit `i`, slot `i` announced that it polls.
fn polling_mask(board: &PathBuf) -> u64 {
    let file = std::fs::File::open(board).unwrap_or_else(|e| panic!("{board:?}: {e}"));
    let mut word = [0u8; 8];
    file.read_exact_at(&mut word, 0)
        .unwrap_or_else(|e| panic!("{board:?}: {e}"));
    u64::from_le_bytes(word)
}

/// Foo→bar answers exactly.
fn chain_works(engine: &Engine) {
    let r = engine.post("/function/foo", b"seat");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "From function Foo: From function Bar: seat");
}

#[test]
fn yielding_workers_share_their_loops_board_and_no_other_worker_has_one() {
    let engine = Engine::start(&SEATED);
    chain_works(&engine);
    let workers = engine.all_workers();
    assert!(workers.len() >= 3, "{workers:?}");
    let mut boards = Vec::new();
    for (pid, function) in &workers {
        let board = board_of(*pid)
            .unwrap_or_else(|| engine.fail(&format!("worker {function} pid {pid} has no board")));
        boards.push(std::fs::metadata(&board).unwrap().ino());
    }
    boards.dedup();
    assert_eq!(boards.len(), 1, "one loop, one board: {boards:?}");
    assert!(
        engine
            .log_text()
            .contains("workers wait yield on cores [0], wakes delegated on the shared core"),
        "{}",
        engine.log_text()
    );
    drop(engine);

    for args in [
        &[
            "--worker-poll",
            "yield",
            "--worker-cores",
            "0",
            "--delegate-wakes",
            "false",
        ][..],
        // Yielding workers on any core: a board is for one core's workers.
        &["--worker-poll", "yield"][..],
        &["--worker-poll", "park"][..],
    ] {
        let engine = Engine::start(args);
        chain_works(&engine);
        for (pid, function) in engine.all_workers() {
            assert_eq!(
                board_of(pid),
                None,
                "{args:?}: worker {function} pid {pid} has a board"
            );
        }
        assert!(
            !engine.log_text().contains("wakes delegated"),
            "{args:?}: {}",
            engine.log_text()
        );
    }
}

/// Call `i` of bar answers exactly within 2 s (a wake-up lost for good
/// would leave it to its 10 s deadline).
fn bar_answers_in_time(engine: &Engine, i: usize) {
    let body = format!("call {i}");
    let started = Instant::now();
    let r = engine.post("/function/bar", body.as_bytes());
    assert_eq!(r.status, 200, "call {i}: {}", r.text());
    assert_eq!(r.text(), format!("From function Bar: {body}"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "call {i} took {:?}",
        started.elapsed()
    );
}

/// Resumes a stopped process when the test ends, passed or not.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        signal(self.0, libc::SIGCONT);
    }
}

/// Waits until `pid` is in state `want` (`T`: stopped).
fn wait_state(pid: i32, want: char) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while process_state(pid) != Some(want) {
        assert!(
            Instant::now() < deadline,
            "pid {pid} is {:?}, not {want}",
            process_state(pid)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_worker_stopped_while_it_polls_does_not_hold_back_the_wakes_delegated_to_it() {
    // Idle workers yield for a whole second before they park: the echo
    // worker, called once, still polls when it is stopped.
    let engine = seated_engine(&[("echo", 1), ("bar", 1)], &["--worker-spin-us", "1000000"]);
    let echo = only_worker(&engine, "echo");
    let bar = only_worker(&engine, "bar");
    let board = board_of(bar).expect("bar is seated");
    // Both idle past their yield budget: parked, nobody polls.
    std::thread::sleep(Duration::from_millis(1500));

    // Echo answers, goes back to polling (nobody else polls), and is
    // stopped there, its polling bit set. A worker that found its core
    // contended parks at once instead; then try again.
    let mut stopped = None;
    for _ in 0..5 {
        let r = engine.post("/function/echo", b"poll");
        assert_eq!(r.status, 200, "{}", r.text());
        signal(echo, libc::SIGSTOP);
        let resume = Resume(echo);
        wait_state(echo, 'T');
        if polling_mask(&board) != 0 {
            stopped = Some(resume);
            break;
        }
        drop(resume);
        std::thread::sleep(Duration::from_millis(1200));
    }
    let _resume =
        stopped.unwrap_or_else(|| engine.fail("the echo worker was never stopped while it polled"));

    // Each call to bar: bar sleeps, and the board says a worker polls, so
    // the engine delegates its wake to the stopped one. The engine's grace
    // period must wake bar itself; without it every call would wait out
    // its deadline.
    for i in 0..20 {
        bar_answers_in_time(&engine, i);
    }
    assert_ne!(
        polling_mask(&board),
        0,
        "the stopped worker still holds its polling seat: the wakes were delegated to it"
    );
    assert_eq!(process_state(echo), Some('T'));

    // Resumed, it serves again.
    drop(_resume);
    let r = engine.post("/function/echo", b"again");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "again");
}

#[test]
fn chains_answer_while_seated_workers_are_stopped_and_resumed_at_random() {
    // Foo and bar with two workers each: four seats, two chains at a time.
    let engine = seated_engine(&[("foo", 2), ("bar", 2)], &[]);
    let workers: Vec<i32> = engine.all_workers().into_iter().map(|(p, _)| p).collect();
    assert_eq!(workers.len(), 4, "{workers:?}");
    let addr = engine.addr();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));

    // Stops a worker (busy, polling or parked: whatever it is doing) for
    // 1–20 ms, resumes it, and again, until told to stop.
    let chaos = {
        let stop = stop.clone();
        let workers = workers.clone();
        std::thread::spawn(move || {
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut stops = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let pid = workers[(x % workers.len() as u64) as usize];
                signal(pid, libc::SIGSTOP);
                let _resume = Resume(pid);
                std::thread::sleep(Duration::from_millis(1 + (x >> 8) % 20));
                stops += 1;
            }
            stops
        })
    };

    let clients: Vec<_> = (0..2)
        .map(|c| {
            std::thread::spawn(move || {
                let mut client = common::Client::connect(addr);
                let until = Instant::now() + Duration::from_secs(3);
                let mut calls = 0;
                while Instant::now() < until {
                    let body = format!("client {c} call {calls}");
                    let started = Instant::now();
                    let r = client.post("/function/foo", body.as_bytes());
                    assert_eq!(r.status, 200, "{body}: {}", r.text());
                    assert_eq!(
                        r.text(),
                        format!("From function Foo: From function Bar: {body}")
                    );
                    // Stops last 20 ms at most; a lost wake would wait out
                    // the 10 s deadline.
                    assert!(
                        started.elapsed() < Duration::from_secs(2),
                        "{body} took {:?}",
                        started.elapsed()
                    );
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    let calls: Vec<usize> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let stops = chaos.join().unwrap();
    assert!(stops >= 20, "only {stops} stops");
    assert!(
        calls.iter().all(|&n| n >= 10),
        "calls per client: {calls:?}"
    );
    // All four still serve.
    for pid in &workers {
        assert_ne!(process_state(*pid), Some('T'), "pid {pid} left stopped");
    }
    chain_works(&engine);
}

/// The doorbell words of a board (after its two 8-byte masks), all 64.
const DOORBELLS: std::ops::Range<u64> = 16..16 + 64 * 4;

#[test]
fn a_worker_that_marks_everyone_awake_on_the_board_does_not_stall_them() {
    // Idle workers park after 50 µs; the board is then full of sleepers.
    let engine = seated_engine(&[("echo", 1), ("bar", 1)], &[]);
    let bar = only_worker(&engine, "bar");
    let board = board_of(bar).expect("bar is seated");
    // The test plays a worker gone bad: it writes AWAKE (0) over every
    // doorbell word of the board, again and again, so the engine sees no
    // sleeper to wake when it hands bar a call.
    let liar = {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&board)
            .unwrap_or_else(|e| panic!("{board:?}: {e}"));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let awake = [0u8; (DOORBELLS.end - DOORBELLS.start) as usize];
            let mut writes = 0u64;
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                file.write_all_at(&awake, DOORBELLS.start).unwrap();
                writes += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
            writes
        });
        (stop, thread)
    };
    for i in 0..20 {
        // Let bar go back to sleep (its yield budget is 50 µs).
        std::thread::sleep(Duration::from_millis(5));
        // Without the loop's watch, a call whose wake was suppressed
        // would wait out its 10 s deadline.
        bar_answers_in_time(&engine, i);
    }
    liar.0.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = liar.1.join().unwrap();
    assert!(writes >= 20, "the liar wrote only {writes} times");
}
