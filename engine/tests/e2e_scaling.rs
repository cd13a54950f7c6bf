//! Worker pool scaling, end to end: load makes the engine start more worker
//! processes of a function (up to max_workers), idleness makes it retire them
//! (down to min_workers). Counted as real processes in /proc.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{for_each_poll, Client, Engine, LONG};

const SCALING_CONFIG: &str = r#"
[[functions]]
name = "sleep"
builtin = "sleep"
min_workers = 1
max_workers = 4
idle_timeout = "1s"

[[functions]]
name = "echo"
builtin = "echo"
"#;

/// Runs `clients` closed-loop clients of `sleep?us=20000` for `load`; returns
/// the most `sleep` worker processes seen meanwhile (checking the maximum).
fn load_sleep(engine: &Engine, clients: usize, load: Duration) -> usize {
    let stop = AtomicBool::new(false);
    let answered = AtomicUsize::new(0);
    let mut most = 0;
    std::thread::scope(|s| {
        for client in 0..clients {
            let (stop, answered, addr) = (&stop, &answered, engine.addr());
            s.spawn(move || {
                let mut c = Client::connect(addr);
                // Relaxed: a flag polled between requests; nothing else hangs on it.
                while !stop.load(Ordering::Relaxed) {
                    let r = c
                        .try_request("POST", "/function/sleep?us=20000", &[], b"")
                        .unwrap_or_else(|e| panic!("client {client}: {e}"));
                    assert_eq!(r.status, 200, "client {client}: {}", r.text());
                    assert_eq!(r.text(), "slept 20000 us");
                    // Relaxed: a counter read after the threads are joined.
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let end = Instant::now() + load;
        while Instant::now() < end {
            let n = engine.workers("sleep").len();
            assert!(n <= 4, "more than max_workers: {:?}", engine.all_workers());
            most = most.max(n);
            std::thread::sleep(Duration::from_millis(20));
        }
        // Relaxed: see above.
        stop.store(true, Ordering::Relaxed);
    });
    assert!(answered.into_inner() > 0);
    most
}

// Regression: a cold pool under load grows, then shrinks when idle.
#[test]
fn load_scales_workers_up_and_idleness_scales_them_down() {
    for_each_poll(|poll| {
        const CLIENTS: usize = 8;
        let engine = Engine::builder().config(SCALING_CONFIG).poll(poll).start();
        assert_eq!(
            engine.workers("sleep").len(),
            1,
            "{:?}",
            engine.all_workers()
        );
        let most = load_sleep(&engine, CLIENTS, Duration::from_secs(2));
        eprintln!("sleep workers under load: at most {most}");
        if most <= 1 {
            engine.fail(&format!(
                "{CLIENTS} concurrent clients of a 20 ms function never got more than one sleep worker"
            ));
        }
        let status = engine.functions_status();
        let sleep = status
            .iter()
            .find(|f| f["name"] == "sleep")
            .expect("listed");
        assert_eq!(
            (sleep["in_flight"].as_u64(), sleep["queued"].as_u64()),
            (Some(0), Some(0)),
            "{sleep}"
        );

        // Idle for longer than idle_timeout: back to min_workers, by retiring
        // (not crashing) the extra workers. The wait is bounded generously: the
        // idle timeout plus timer slack on a loaded machine.
        let deadline = Instant::now() + Duration::from_secs(1) + LONG / 3;
        let idle_since = Instant::now();
        loop {
            let n = engine.workers("sleep").len();
            if n == 1 {
                break;
            }
            if Instant::now() > deadline {
                engine.fail(&format!(
                    "sleep still has {n} workers after {:?} idle",
                    idle_since.elapsed()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = engine.log_text();
        assert!(log.contains("retiring idle worker sleep"), "{log}");
        assert!(
            !log.contains("killed by signal"),
            "no worker crashed:\n{log}"
        );
        // The remaining worker stays, and serves.
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(engine.workers("sleep").len(), 1, "min_workers is kept");
        assert_eq!(
            engine.post("/function/sleep?us=5", b"").text(),
            "slept 5 us"
        );
        // echo was never loaded: it kept its one worker throughout.
        assert_eq!(engine.workers("echo").len(), 1);
    });
}

#[test]
fn min_workers_start_eagerly_and_max_workers_caps_a_queue() {
    let engine = Engine::builder()
        .config(
            "[[functions]]\nname = \"sleep\"\nbuiltin = \"sleep\"\nmin_workers = 3\nmax_workers = 3\n\
             max_queue = 2\n",
        )
        .start();
    // /healthz waited for all three.
    assert_eq!(
        engine.workers("sleep").len(),
        3,
        "{:?}",
        engine.all_workers()
    );
    // 3 running + 2 queued; the sixth concurrent call overflows the queue: 503.
    let mut clients: Vec<Client> = (0..5).map(|_| engine.client()).collect();
    for c in &mut clients {
        c.send("POST", "/function/sleep?us=1500000", &[], b"")
            .unwrap();
    }
    let deadline = Instant::now() + LONG;
    loop {
        let status = engine.functions_status();
        let f = status
            .iter()
            .find(|f| f["name"] == "sleep")
            .expect("listed")
            .clone();
        if f["in_flight"] == 3 && f["queued"] == 2 {
            break;
        }
        if Instant::now() > deadline {
            engine.fail(&format!("expected 3 in flight and 2 queued: {f}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = engine.post("/function/sleep?us=1", b"");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    for c in &mut clients {
        let r = c.read_response();
        assert_eq!((r.status, r.text()), (200, "slept 1500000 us".to_string()));
    }
    assert_eq!(
        engine.workers("sleep").len(),
        3,
        "never more than max_workers"
    );
}

// Regression: closed-loop load on an undersized pool grows it (the limiter
// measures time in the system, not execution time alone).
#[test]
fn load_rising_after_quiet_traffic_scales_up() {
    let engine = Engine::builder().config(SCALING_CONFIG).start();
    // Quiet traffic first: one call at a time, with pauses between them.
    let mut c = engine.client();
    for _ in 0..20 {
        assert_eq!(c.post("/function/sleep?us=20000", b"").status, 200);
        std::thread::sleep(Duration::from_millis(30));
    }
    assert_eq!(
        engine.workers("sleep").len(),
        1,
        "one caller needs one worker"
    );
    // Then 8 concurrent callers for 2 s: 7 calls wait behind each one served.
    let most = load_sleep(&engine, 8, Duration::from_secs(2));
    if most <= 1 {
        engine
            .fail("8 concurrent clients of a 20 ms function never got more than one sleep worker");
    }
}

#[test]
fn a_burst_after_a_quiet_spell_runs_on_every_worker_at_once() {
    let engine = Engine::builder().config(SCALING_CONFIG).start();
    // The function is known to take 300 ms; then it is quiet for longer
    // than its workers' idle_timeout.
    assert_eq!(engine.post("/function/sleep?us=300000", b"").status, 200);
    std::thread::sleep(Duration::from_millis(1500));
    // Eight calls at once: four workers (max_workers) should run them four
    // at a time, not one at a time beside idle workers.
    let mut most_running = 0;
    std::thread::scope(|s| {
        let callers: Vec<_> = (0..8)
            .map(|_| {
                let addr = engine.addr();
                s.spawn(move || {
                    let r = Client::connect(addr).post("/function/sleep?us=300000", b"");
                    assert_eq!(r.status, 200, "{}", r.text());
                })
            })
            .collect();
        while !callers.iter().all(|c| c.is_finished()) {
            for f in engine.functions_status() {
                if f["name"] == "sleep" {
                    most_running = most_running.max(f["in_flight"].as_u64().unwrap_or(0));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    assert!(
        most_running >= 3,
        "a burst of 8 ran at most {most_running} at once on up to 4 workers"
    );
}

/// `sleep` with 1..=`max` workers, `timeout`, and no retiring during a test.
fn sleep_config(max: usize, timeout: &str) -> String {
    format!(
        "[[functions]]\nname = \"sleep\"\nbuiltin = \"sleep\"\nmin_workers = 1\n\
         max_workers = {max}\ntimeout = \"{timeout}\"\nidle_timeout = \"5m\"\n"
    )
}

/// `n` concurrent calls of `sleep?us=US`, from their own connections; the
/// statuses and bodies in the order the calls were made.
fn concurrent_sleeps(engine: &Engine, n: usize, us: u64) -> Vec<(u16, String)> {
    std::thread::scope(|s| {
        let calls: Vec<_> = (0..n)
            .map(|_| {
                let addr = engine.addr();
                s.spawn(move || {
                    let r = Client::connect(addr).post(&format!("/function/sleep?us={us}"), b"");
                    (r.status, r.text())
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    })
}

#[test]
fn long_calls_of_a_burst_do_not_wait_a_service_time_beside_idle_workers() {
    // The limit's averages know the function takes 800 ms and that calls
    // are rare. A burst of three: each must get a worker soon enough to end
    // within its 1.5 s timeout (a call that waited one service time for a
    // busy worker, as the overdue rule once said, ended after 1.6 s: 504).
    let engine = Engine::builder().config(&sleep_config(4, "1500ms")).start();
    assert_eq!(engine.post("/function/sleep?us=800000", b"").status, 200);
    let answers = concurrent_sleeps(&engine, 3, 800_000);
    for (status, text) in &answers {
        assert_eq!(*status, 200, "{answers:?}");
        assert_eq!(text, "slept 800000 us");
    }
}

#[test]
fn a_worker_killed_while_calls_wait_is_replaced_for_them() {
    // Two workers (max_workers) run two 1 s calls; a third waits. One busy
    // worker is killed: its call gets 502, and the waiting call must get a
    // new worker at once (the pool, still at min_workers, used to grow only
    // when another call arrived): on the surviving worker it would start
    // after 1 s and miss its 1.6 s timeout.
    let engine = Engine::builder().config(&sleep_config(2, "1600ms")).start();
    let warm = concurrent_sleeps(&engine, 2, 100_000);
    assert!(warm.iter().all(|(s, _)| *s == 200), "{warm:?}");
    engine.wait_workers("sleep", 2, Duration::from_secs(10));
    std::thread::scope(|s| {
        let calls = s.spawn(|| concurrent_sleeps(&engine, 3, 1_000_000));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let status = engine.functions_status();
            let sleep = status.iter().find(|f| f["name"] == "sleep").unwrap();
            if sleep["in_flight"] == 2 && sleep["queued"] == 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "never 2 running, 1 waiting: {sleep}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let victim = engine.workers("sleep")[0];
        common::signal(victim, libc::SIGKILL);
        let mut answers = calls.join().unwrap();
        answers.sort();
        assert_eq!(answers.len(), 3);
        assert_eq!(answers[0].0, 200, "{answers:?}");
        assert_eq!(answers[1].0, 200, "the waiting call: {answers:?}");
        assert_eq!(answers[2].0, 502, "the killed worker's call: {answers:?}");
    });
}
