//! Every flag of `nocturne serve` (and its `NOCTURNE_*` variable) observably
//! takes effect on a real engine: the address it listens on, the functions it
//! serves, the cores its threads and workers may run on (`Cpus_allowed_list`
//! in /proc), whether its io loop and its workers sleep or run when idle
//! (thread state in /proc; `--spin-us` in `e2e_spin_budget`, alone), and
//! the limits it answers with.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{
    cpus_allowed_list, expect_state, mostly_running, mostly_sleeping, threads, two_cores, Client,
    Engine, LONG,
};

#[test]
fn listen_flag_and_address_in_use() {
    // Another loopback address (all of 127/8 is loopback on Linux), port 0:
    // the engine listens there and only there.
    let engine = Engine::builder()
        .no_listen_flag()
        .args(["--listen", "127.0.0.2:0"])
        .start();
    let addr = engine.addr();
    assert_eq!(addr.ip().to_string(), "127.0.0.2");
    assert_ne!(addr.port(), 0);
    let mut c = Client::connect(addr);
    assert_eq!(c.post("/function/echo", b"here").text(), "here");
    let elsewhere = format!("127.0.0.1:{}", addr.port()).parse().unwrap();
    assert!(
        Client::try_connect(elsewhere).is_err(),
        "the engine also answers on {elsewhere}"
    );
    drop(engine);

    // A port someone else holds (without SO_REUSEPORT): the engine refuses to start.
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap();
    let (status, log) = Engine::builder()
        .no_listen_flag()
        .args(["--listen", &taken.to_string()])
        .run_to_exit();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("cannot listen on") && log.contains(&taken.to_string()),
        "{log}"
    );

    // A port another engine serves (with SO_REUSEPORT, which would let a
    // second one share it and split the connections): refused too.
    let first = Engine::start(&[]);
    let (status, log) = Engine::builder()
        .no_listen_flag()
        .args(["--listen", &first.addr().to_string()])
        .run_to_exit();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains(&format!(
            "cannot listen on {}: something listens there already",
            first.addr()
        )),
        "{log}"
    );
    assert_eq!(first.post("/function/echo", b"mine").text(), "mine");
    drop(first);

    let (status, log) = Engine::builder()
        .no_listen_flag()
        .args(["--listen", "localhost:80"])
        .run_to_exit();
    assert!(!status.success(), "{log}");
    assert!(log.contains("not IP:PORT"), "{log}");
}

#[test]
fn config_flag_serves_the_file() {
    let engine = Engine::builder()
        .config(
            "[[functions]]\nname = \"greeter\"\nbuiltin = \"bar\"\nallow_get = true\n\
             [[functions]]\nname = \"twice\"\nbuiltin = \"echo\"\nmin_workers = 2\nmax_workers = 2\n",
        )
        .start();
    assert_eq!(
        engine.get("/function/greeter").text(),
        "From function Bar: "
    );
    assert_eq!(engine.post("/function/twice", b"2").text(), "2");
    // Only the file's functions: the embedded default's are not served.
    assert_eq!(engine.post("/function/foo", b"").status, 404);
    assert_eq!(
        engine.workers("twice").len(),
        2,
        "{:?}",
        engine.all_workers()
    );
    let names: Vec<String> = engine
        .functions_status()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["greeter", "twice"]);

    let (status, log) = Engine::builder()
        .args(["--config", "/nonexistent/nocturne.toml"])
        .run_to_exit();
    assert!(!status.success());
    assert!(log.contains("/nonexistent/nocturne.toml"), "{log}");
}

#[test]
fn io_cores_pin_the_io_threads() {
    let Some((first, last)) = two_cores() else {
        return;
    };
    // Default: one loop on the last allowed core.
    let engine = Engine::start(&[]);
    let io = engine.io_threads();
    assert_eq!(io.len(), 1, "{io:?}");
    assert_eq!(io[0].1, format!("nocturne-io-{last}"));
    assert_eq!(cpus_allowed_list(engine.pid(), io[0].0), last.to_string());
    drop(engine);

    for core in [first, last] {
        let engine = Engine::start(&["--io-cores", &core.to_string()]);
        let io = engine.io_threads();
        assert_eq!(io.len(), 1, "{io:?}");
        assert_eq!(io[0].1, format!("nocturne-io-{core}"));
        assert_eq!(
            cpus_allowed_list(engine.pid(), io[0].0),
            core.to_string(),
            "{io:?}"
        );
        assert_eq!(engine.post("/function/foo", b"x").status, 200);
    }

    // Two loops, one per core, both serving (SO_REUSEPORT spreads connections).
    let engine = Engine::start(&["--io-cores", &format!("{first},{last}")]);
    let mut io = engine.io_threads();
    io.sort_by(|a, b| a.1.cmp(&b.1));
    let names: Vec<&str> = io.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            format!("nocturne-io-{first}"),
            format!("nocturne-io-{last}")
        ]
    );
    for (tid, name) in &io {
        let core = name.trim_start_matches("nocturne-io-");
        assert_eq!(cpus_allowed_list(engine.pid(), *tid), core, "{name}");
    }
    for i in 0..32 {
        let r = engine.post("/function/foo", format!("{i}").as_bytes());
        assert_eq!(
            r.text(),
            format!("From function Foo: From function Bar: {i}")
        );
    }

    let (status, log) = Engine::builder().args(["--io-cores", "1000"]).run_to_exit();
    assert!(!status.success());
    assert!(log.contains("1000") && log.contains("allowed"), "{log}");
}

#[test]
fn worker_cores_pin_every_worker() {
    let Some((first, last)) = two_cores() else {
        return;
    };
    let all = common::cpus_allowed_list(std::process::id() as i32, std::process::id() as i32);
    // Default (adaptive): workers are not pinned.
    let engine = Engine::start(&[]);
    for (pid, f) in engine.all_workers() {
        assert_eq!(cpus_allowed_list(pid, pid), all, "{f} worker {pid}");
    }
    drop(engine);

    let engine = Engine::start(&["--worker-cores", &first.to_string()]);
    let workers = engine.all_workers();
    assert_eq!(workers.len(), 5, "{workers:?}");
    for (pid, f) in workers {
        for (tid, name) in threads(pid) {
            assert_eq!(
                cpus_allowed_list(pid, tid),
                first.to_string(),
                "{f} worker {pid} thread {name}"
            );
        }
    }
    // The engine's own threads are not confined to the worker cores.
    assert_eq!(cpus_allowed_list(engine.pid(), engine.pid()), all);
    assert_eq!(
        engine.post("/function/foo", b"pinned").text(),
        "From function Foo: From function Bar: pinned"
    );
    drop(engine);

    // --poll spin keeps workers off the io core by default...
    let engine = Engine::start(&["--poll", "spin", "--io-cores", &last.to_string()]);
    for (pid, f) in engine.all_workers() {
        let cores = common::parse_cpu_list(&cpus_allowed_list(pid, pid));
        assert!(
            !cores.contains(&last),
            "{f} worker {pid} may run on the spinning io core: {cores:?}"
        );
    }
    // ...and the engine's other threads (log writer, spawners, …) too.
    for (tid, name) in threads(engine.pid()) {
        let cores = common::parse_cpu_list(&cpus_allowed_list(engine.pid(), tid));
        if name.starts_with("nocturne-io-") {
            assert_eq!(cores, [last], "{name}");
        } else {
            assert!(
                !cores.contains(&last),
                "engine thread {name} may run on the spinning io core: {cores:?}"
            );
        }
    }
    drop(engine);

    // ...and refuses worker cores that overlap a spinning io core.
    let (status, log) = Engine::builder()
        .args([
            "--poll",
            "spin",
            "--io-cores",
            &last.to_string(),
            "--worker-cores",
            &last.to_string(),
        ])
        .run_to_exit();
    assert!(!status.success());
    assert!(log.contains("overlap"), "{log}");
}

#[test]
fn poll_mode_decides_whether_an_idle_io_loop_sleeps() {
    let poke = |engine: &Engine| {
        let engine_addr = engine.addr();
        move || {
            let r = Client::connect(engine_addr).post("/function/echo", b"poke");
            assert_eq!(r.text(), "poke");
        }
    };
    // spin: the io thread never sleeps, even with nothing to do.
    let engine = Engine::start(&["--poll", "spin"]);
    expect_state(
        &engine,
        "--poll spin, idle",
        engine.pid(),
        engine.io_thread(),
        || {},
        mostly_running,
    );
    expect_state(
        &engine,
        "--poll spin, after a call",
        engine.pid(),
        engine.io_thread(),
        poke(&engine),
        mostly_running,
    );
    drop(engine);

    // block and adaptive (its default 50 us spin): asleep in epoll when idle.
    for mode in ["block", "adaptive"] {
        let engine = Engine::start(&["--poll", mode]);
        let what = format!("--poll {mode}, idle after a call");
        expect_state(
            &engine,
            &what,
            engine.pid(),
            engine.io_thread(),
            poke(&engine),
            mostly_sleeping,
        );
        // Sleeping costs nothing in correctness: calls are answered.
        assert_eq!(
            engine.post("/function/foo", b"z").text(),
            "From function Foo: From function Bar: z"
        );
    }
}

/// One echo worker (so `--worker-poll spin` can have a core of its own).
const ONE_ECHO: &str =
    "[[functions]]\nname = \"echo\"\nbuiltin = \"echo\"\nmin_workers = 1\nmax_workers = 1\n";

/// An engine serving [`ONE_ECHO`] with `args`, and its worker's pid.
fn one_echo_engine(args: &[&str]) -> (Engine, i32) {
    let engine = Engine::builder().config(ONE_ECHO).args(args).start();
    let [pid] = engine.workers("echo")[..] else {
        engine.fail(&format!(
            "expected one echo worker: {:?}",
            engine.all_workers()
        ))
    };
    (engine, pid)
}

#[test]
fn worker_poll_and_worker_spin_us_decide_how_an_idle_worker_waits() {
    let Some((first, last)) = two_cores() else {
        return;
    };
    let poke = |engine: &Engine| {
        let addr = engine.addr();
        move || {
            assert_eq!(
                Client::connect(addr).post("/function/echo", b"w").text(),
                "w"
            )
        }
    };
    let (first, last) = (first.to_string(), last.to_string());
    // yield and spin with the longest budget: the worker's thread keeps
    // running after a call; park: it sleeps on its futex at once. Beside
    // CPU-bound neighbours (compilers, other agents' builds) a yielding
    // worker parks on purpose (ipc's `contention` module), so the yield case
    // fails on a machine busy with other work: run it on a quiet one.
    for (args, want_running) in [
        (
            vec!["--worker-poll", "yield", "--worker-spin-us", "1000000"],
            true,
        ),
        (
            vec![
                "--worker-poll",
                "spin",
                "--worker-spin-us",
                "1000000",
                "--io-cores",
                &last,
                "--worker-cores",
                &first,
            ],
            true,
        ),
        (
            vec!["--worker-poll", "park", "--worker-spin-us", "1000000"],
            false,
        ),
        // No budget: yield and spin park at once too.
        (
            vec!["--worker-poll", "yield", "--worker-spin-us", "0"],
            false,
        ),
        (
            vec![
                "--worker-poll",
                "spin",
                "--worker-spin-us",
                "0",
                "--io-cores",
                &last,
                "--worker-cores",
                &first,
            ],
            false,
        ),
    ] {
        let (engine, worker) = one_echo_engine(&args);
        let what = format!("worker with {}", args.join(" "));
        let want = if want_running {
            mostly_running
        } else {
            mostly_sleeping
        };
        // The worker's main thread runs the worker loop.
        expect_state(&engine, &what, worker, worker, poke(&engine), want);
        assert!(
            // Spelt as the flag takes it.
            engine
                .log_text()
                .contains(&format!("workers wait {}", args[1])),
            "{}",
            engine.log_text()
        );
    }

    // spin without a core per worker is refused.
    let (status, log) = Engine::builder()
        .args(["--worker-poll", "spin"])
        .run_to_exit();
    assert!(!status.success());
    assert!(log.contains("core of its own"), "{log}");
}

#[test]
fn max_connections_refuses_the_next_connection() {
    let engine = Engine::start(&["--max-connections", "2"]);
    // The harness's /healthz probes closed just now; the engine may not have
    // seen those closes yet, so a connection may be refused until it has.
    let mut open: Vec<Client> = (0..2).map(|_| served_client(&engine)).collect();
    let mut third = engine.client();
    assert_refused(&engine, &mut third);
    // The two open connections are unaffected.
    for c in &mut open {
        assert_eq!(c.post("/function/echo", b"still").text(), "still");
    }
    // Once one closes, a new connection is served (the engine notices the
    // close asynchronously, so a few attempts may still be refused).
    drop(open.pop());
    drop(third);
    let mut again = served_client(&engine);
    assert_eq!(again.post("/function/echo", b"again").text(), "again");
}

/// A new connection that the engine serves, retrying (bounded) while it
/// refuses: connections closed just before may not be counted out yet.
fn served_client(engine: &Engine) -> Client {
    let deadline = Instant::now() + LONG;
    loop {
        let mut c = engine.client();
        match c.try_request("POST", "/function/echo", &[], b"in") {
            Ok(r) if r.status == 200 => {
                assert_eq!(r.text(), "in");
                return c;
            }
            Ok(r) => assert_eq!(r.status, 503, "{}", r.text()),
            Err(_) => {} // refused by closing
        }
        if Instant::now() > deadline {
            engine.fail("no connection was served");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts that `c` is refused: a 503, or closed without an answer.
fn assert_refused(engine: &Engine, c: &mut Client) {
    let sent = c.send("POST", "/function/echo", &[], b"over");
    match (sent, c.try_read_response()) {
        (_, Ok(r)) => {
            assert_eq!(r.status, 503, "connection over the limit: {}", r.text());
            assert!(c.closed_within(LONG), "a refused connection is closed");
        }
        (Ok(()), Err(e)) | (Err(e), Err(_)) => {
            // Closed or reset without a response: also a refusal.
            let kind = e.kind();
            if !matches!(
                kind,
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
            ) {
                engine.fail(&format!(
                    "connection over the limit: neither 503 nor closed: {e}"
                ));
            }
        }
    }
}

#[test]
fn an_open_files_limit_too_low_for_max_connections_lowers_it_and_says_so() {
    // A hard limit of 256 cannot hold the default 10000 connections: the
    // engine serves what fits and answers the rest 503, rather than leave
    // them in the listen backlog once accept runs out of descriptors.
    let engine = Engine::builder().open_files_limit(256, 256).start();
    let line = engine
        .log()
        .wait_for(LONG, |l| l.contains("open files"))
        .unwrap_or_else(|| engine.fail("no word about the open-files limit"));
    assert!(
        line.contains("max_connections 10000 needs up to")
            && line.contains("the limit is 256 (hard limit 256"),
        "{line}"
    );
    let fits = common::number_between(&line, "serving at most ", " ")
        .unwrap_or_else(|| engine.fail(&format!("no connection count in: {line}")))
        as usize;
    assert!((8..128).contains(&fits), "{line}");
    let mut open: Vec<Client> = (0..fits).map(|_| served_client(&engine)).collect();
    let mut over = engine.client();
    assert_refused(&engine, &mut over);
    for c in open.iter_mut().step_by(7) {
        assert_eq!(c.post("/function/foo", b"x").status, 200);
    }
}

#[test]
fn the_open_files_limit_is_raised_for_max_connections_but_not_for_workers() {
    // The hard limit can only be kept or lowered without privilege.
    let (_, hard) = common::open_files_limit(std::process::id() as i32);
    assert!(
        hard >= 4096,
        "this test needs a hard open-files limit of 4096, not {hard}"
    );
    let engine = Engine::builder()
        .open_files_limit(256, hard)
        .args(["--max-connections", "1000"])
        .start();
    let line = engine
        .log()
        .wait_for(LONG, |l| l.contains("open-files limit raised"))
        .unwrap_or_else(|| engine.fail("no word about raising the limit"));
    assert!(
        line.contains("raised from 256 to ") && line.contains("(max_connections 1000)"),
        "{line}"
    );
    let (soft, engine_hard) = common::open_files_limit(engine.pid());
    assert!(
        (1000..=4096).contains(&soft) && engine_hard == hard,
        "engine limits {soft}/{engine_hard}"
    );
    assert!(line.contains(&format!("to {soft} ")), "{line} vs {soft}");
    // Workers get the limit the engine started with.
    for (pid, name) in engine.all_workers() {
        assert_eq!(
            common::open_files_limit(pid),
            (256, hard),
            "worker {name} {pid}"
        );
    }
}

#[test]
fn max_connections_counts_across_all_io_cores() {
    let Some((first, last)) = two_cores() else {
        return;
    };
    // The limit is documented as "across all io cores": with two loops, still
    // at most 2 connections are served at once.
    let engine = Engine::start(&[
        "--max-connections",
        "2",
        "--io-cores",
        &format!("{first},{last}"),
    ]);
    let mut served = 0;
    let mut clients = Vec::new();
    for _ in 0..8 {
        let mut c = engine.client();
        if let Ok(r) = c.try_request("POST", "/function/echo", &[], b"n") {
            if r.status == 200 {
                served += 1;
            }
        }
        clients.push(c); // keep every connection open
    }
    // Regression: max_connections is engine-wide, split across the io loops.
    assert!(
        served <= 2,
        "{served} of 8 connections served with --max-connections 2 over 2 io cores"
    );
}

#[test]
fn max_header_bytes_sets_the_431_threshold() {
    let pad = |n: usize| "a".repeat(n);
    // Default 8 KiB: a 3 KiB header is fine.
    let engine = Engine::start(&[]);
    let r = engine
        .client()
        .try_request("POST", "/function/echo", &[("X-Pad", &pad(3000))], b"ok")
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    drop(engine);

    let engine = Engine::start(&["--max-header-bytes", "2KiB"]);
    let mut c = engine.client();
    let r = c
        .try_request("POST", "/function/echo", &[("X-Pad", &pad(1500))], b"ok")
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    let r = c
        .try_request("POST", "/function/echo", &[("X-Pad", &pad(3000))], b"big")
        .unwrap();
    assert_eq!(r.status, 431, "{}", r.text());
    // The 431 ends that connection; others are served.
    assert!(c.closed_within(LONG));
    assert_eq!(engine.post("/function/echo", b"next").text(), "next");
}

#[test]
fn set_overrides_a_function_setting() {
    let engine = Engine::start(&[
        "--set",
        "echo.max_payload=1KiB",
        "--set",
        "echo.allow_get=true",
    ]);
    let r = engine.post("/function/echo", &[b'k'; 1024]);
    assert_eq!((r.status, r.body.len()), (200, 1024));
    let r = engine.post("/function/echo", &[b'k'; 1025]);
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(
        r.text().contains("limit of 1024 bytes"),
        "names the limit: {}",
        r.text()
    );
    // Other functions keep the default 1 MiB.
    let r = engine.post("/function/bar", &[b'k'; 4096]);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = engine.get("/function/echo");
    assert_eq!(r.status, 200, "allow_get was set: {}", r.text());
    drop(engine);

    let engine = Engine::start(&[
        "--set",
        "sleep.min_workers=2",
        "--set",
        "sleep.max_workers=2",
    ]);
    assert_eq!(
        engine.workers("sleep").len(),
        2,
        "{:?}",
        engine.all_workers()
    );
    drop(engine);

    let (status, log) = Engine::builder()
        .args(["--set", "nosuch.max_workers=2"])
        .run_to_exit();
    assert!(!status.success());
    assert!(log.contains("nosuch"), "{log}");
}

/// The start-up lines say what is served the way the flags spell it: each
/// function's methods (GET only with allow_get), the modes in their CLI
/// spelling, and a warning for a budget the chosen mode never reads.
#[test]
fn start_up_lines_say_the_methods_served_and_the_modes_as_spelt() {
    let engine = Engine::start(&["--poll", "block", "--spin-us", "20"]);
    let log = engine.log_text();
    for needle in [
        "function echo (built-in echo): 1..4 workers, POST /function/echo",
        "function bar (built-in bar): 1..4 workers, POST, GET, HEAD /function/bar",
        ", poll block, workers wait yield",
        "warning: --spin-us: has no effect with --poll block",
    ] {
        assert!(log.contains(needle), "{needle}\n---\n{log}");
    }
    // What the lines say is what is served.
    assert_eq!(engine.get("/function/bar").status, 200);
    assert_eq!(engine.get("/function/echo").status, 405);
}

#[test]
fn net_kernel_serves_and_smoltcp_without_a_device_is_refused() {
    let engine = Engine::start(&["--net", "kernel"]);
    assert_eq!(engine.post("/function/echo", b"k").text(), "k");
    drop(engine);
    let (status, log) = Engine::builder().args(["--net", "smoltcp"]).run_to_exit();
    assert!(!status.success());
    assert!(
        log.contains("smoltcp") && log.contains("--tap IFNAME or --raw IFNAME"),
        "{log}"
    );
}

#[test]
fn environment_variables_are_flag_fallbacks() {
    let Some((first, last)) = two_cores() else {
        return;
    };
    let dir = common::Scratch::new("env");
    let file = dir.write(
        "env.toml",
        "[[functions]]\nname = \"echo\"\nbuiltin = \"echo\"\n\
         [[functions]]\nname = \"sleep\"\nbuiltin = \"sleep\"\n",
    );
    let engine = Engine::builder()
        .no_listen_flag()
        .env("NOCTURNE_LISTEN", "127.0.0.1:0")
        .env("NOCTURNE_CONFIG", file.to_str().unwrap())
        .env("NOCTURNE_IO_CORES", &first.to_string())
        .env("NOCTURNE_WORKER_CORES", &last.to_string())
        .env("NOCTURNE_POLL", "block")
        .env("NOCTURNE_WORKER_POLL", "park")
        .env("NOCTURNE_MAX_HEADER_BYTES", "2KiB")
        .env("NOCTURNE_SET", "echo.max_payload=1KiB;echo.allow_get=true")
        .start();
    // NOCTURNE_CONFIG: only the file's functions.
    assert_eq!(engine.post("/function/foo", b"").status, 404);
    // NOCTURNE_SET, both entries.
    assert_eq!(engine.post("/function/echo", &[1; 1025]).status, 413);
    assert_eq!(engine.get("/function/echo").status, 200);
    // NOCTURNE_MAX_HEADER_BYTES.
    let r = engine
        .client()
        .try_request(
            "POST",
            "/function/echo",
            &[("X-Pad", &"p".repeat(3000))],
            b"",
        )
        .unwrap();
    assert_eq!(r.status, 431);
    // NOCTURNE_IO_CORES and NOCTURNE_WORKER_CORES.
    let io = engine.io_thread();
    assert_eq!(cpus_allowed_list(engine.pid(), io), first.to_string());
    for (pid, f) in engine.all_workers() {
        assert_eq!(cpus_allowed_list(pid, pid), last.to_string(), "{f}");
    }
    // NOCTURNE_POLL=block, NOCTURNE_WORKER_POLL=park: both asleep when idle.
    let log = engine.log_text();
    assert!(log.contains("poll block, workers wait park"), "{log}");
    let addr = engine.addr();
    let poke = move || {
        assert_eq!(
            Client::connect(addr).post("/function/echo", b"e").text(),
            "e"
        )
    };
    expect_state(
        &engine,
        "NOCTURNE_POLL=block",
        engine.pid(),
        io,
        poke,
        mostly_sleeping,
    );
    let worker = engine.workers("echo")[0];
    expect_state(
        &engine,
        "NOCTURNE_WORKER_POLL=park",
        worker,
        worker,
        poke,
        mostly_sleeping,
    );
    drop(engine);

    // A flag beats its variable.
    let engine = Engine::builder()
        .env("NOCTURNE_IO_CORES", &first.to_string())
        .env("NOCTURNE_SET", "echo.max_payload=1KiB")
        .args([
            "--io-cores",
            &last.to_string(),
            "--set",
            "echo.max_payload=2KiB",
        ])
        .start();
    assert_eq!(engine.io_threads()[0].1, format!("nocturne-io-{last}"));
    assert_eq!(engine.post("/function/echo", &[1; 2000]).status, 200);
    drop(engine);

    // A misspelt variable is named, with a guess, and ignored.
    let engine = Engine::builder().env("NOCTURNE_POLLL", "spin").start();
    if engine
        .log()
        .wait_for(LONG, |l| {
            l.contains("warning: NOCTURNE_POLLL is not a nocturne setting and is ignored (did you mean NOCTURNE_POLL?)")
        })
        .is_none()
    {
        engine.fail("no warning about NOCTURNE_POLLL");
    }
    drop(engine);

    // A bad variable is reported like a bad flag.
    let (status, log) = Engine::builder()
        .env("NOCTURNE_POLL", "sometimes")
        .run_to_exit();
    assert!(!status.success());
    assert!(log.contains("sometimes"), "{log}");
}

#[test]
fn drain_timeout_lets_in_flight_calls_finish_on_sigterm() {
    // Default drain timeout (10 s): a 1 s call in flight at SIGTERM finishes.
    let mut engine = Engine::start(&[]);
    let mut c = engine.client();
    let mut other = engine.client();
    let mut health = engine.client();
    let mut uploading = engine.client();
    assert_eq!(other.post("/function/echo", b"before").text(), "before");
    assert_eq!(health.get("/healthz").status, 200);
    c.send("POST", "/function/sleep?us=1000000", &[], b"")
        .unwrap();
    uploading
        .write_raw(b"POST /function/echo HTTP/1.1\r\nContent-Length: 6\r\n\r\nabc")
        .unwrap();
    wait_in_flight(&engine, "sleep");
    engine.signal(libc::SIGTERM);
    if engine
        .log()
        .wait_for(LONG, |l| l.contains("loop 0: draining"))
        .is_none()
    {
        engine.fail("no drain after SIGTERM");
    }
    assert!(
        engine.log_text().contains("draining 1 call(s) and "),
        "{}",
        engine.log_text()
    );
    // While draining: /healthz tells load balancers to go elsewhere...
    let r = health.get("/healthz");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("connection"), Some("close"));
    // ...new calls on an open connection are refused with 503, and the
    // answer says the connection ends...
    let r = other.post("/function/echo", b"during");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(other.closed_within(LONG), "the connection stayed open");
    // ...a request that was arriving is answered, not cut off...
    uploading.write_raw(b"def").unwrap();
    match uploading.try_read_response() {
        Ok(r) => assert_eq!(r.status, 503, "{}", r.text()),
        Err(e) => engine.fail(&format!(
            "a request arriving at SIGTERM was not answered: {e}"
        )),
    }
    // ...and new connections are not served.
    if let Ok(mut late) = Client::try_connect(engine.addr()) {
        late.set_read_timeout(Duration::from_secs(2));
        if let Ok(r) = late.try_request("POST", "/function/echo", &[], b"late") {
            assert_ne!(
                r.status,
                200,
                "a connection made while draining was served: {}",
                r.text()
            );
        }
    }
    // The call in flight completes normally, then the engine exits 0.
    match c.try_read_response() {
        Ok(r) => assert_eq!((r.status, r.text()), (200, "slept 1000000 us".to_string())),
        Err(e) => engine.fail(&format!(
            "the call in flight at SIGTERM was not answered: {e}"
        )),
    }
    let status = engine.wait_exit(LONG);
    assert!(
        status.is_some_and(|s| s.success()),
        "the engine exits 0 after draining: {status:?}"
    );
}

#[test]
fn every_engine_thread_leaves_sigterm_and_sigint_to_the_drain() {
    // A thread that did not block them could take the signal, and its
    // default action would kill the engine undrained (the log writer once
    // did). The mask is inherited: check every thread the engine has.
    let engine = Engine::start(&[]);
    let threads = threads(engine.pid());
    assert!(threads.len() > 3, "{threads:?}");
    for (tid, name) in threads {
        if tid == engine.pid() {
            // The main thread waits for them in sigtimedwait, which shows
            // them unblocked while it waits.
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{}/task/{tid}/status", engine.pid()))
            .unwrap_or_default();
        let Some(blocked) = status
            .lines()
            .find_map(|l| l.strip_prefix("SigBlk:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        else {
            continue; // the thread ended meanwhile
        };
        for sig in [libc::SIGTERM, libc::SIGINT] {
            assert!(
                blocked & (1 << (sig - 1)) != 0,
                "thread {name} ({tid}) does not block signal {sig}: SigBlk {blocked:#x}"
            );
        }
    }
}

#[test]
fn workers_start_with_no_signal_blocked_and_no_descriptor_of_the_engines_launcher() {
    // The engine blocks SIGINT/SIGTERM in its threads (previous test); a
    // mask survives fork and exec, so workers (and what they run) could not
    // be stopped. A descriptor the engine inherited is not theirs either.
    const STRAY: i32 = 77;
    let engine = Engine::builder().stray_fd(STRAY).start();
    let stray = std::fs::read_link(format!("/proc/{}/fd/{STRAY}", engine.pid()));
    assert!(stray.is_ok(), "the engine did not inherit fd {STRAY}");
    let workers = engine.all_workers();
    assert!(workers.len() >= 5, "{workers:?}");
    for (pid, name) in workers {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let blocked = status
            .lines()
            .find_map(|l| l.strip_prefix("SigBlk:"))
            .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap());
        assert_eq!(blocked, Some(0), "worker {name} ({pid}) blocks signals");
        let fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        assert!(
            !fds.contains(&STRAY),
            "worker {name} ({pid}) holds fd {STRAY}: {fds:?}"
        );
    }
    // And SIGTERM stops a worker (a replacement starts).
    let (pid, name) = engine.all_workers()[0].clone();
    common::signal(pid, libc::SIGTERM);
    let deadline = std::time::Instant::now() + LONG;
    while engine.workers(&name).contains(&pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGTERM did not stop worker {name} ({pid})"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn drain_timeout_bounds_how_long_shutdown_waits() {
    // A call far longer than the drain timeout does not hold the engine up:
    // it exits (well before the call could finish), and the client gets an
    // error answer or a closed connection, never the result.
    let mut engine = Engine::start(&["--drain-timeout", "200ms", "--set", "sleep.timeout=300s"]);
    let mut c = engine.client();
    c.send("POST", "/function/sleep?us=120000000", &[], b"")
        .unwrap();
    wait_in_flight(&engine, "sleep");
    engine.signal(libc::SIGTERM);
    let status = engine.wait_exit(LONG);
    assert!(
        status.is_some(),
        "the engine still runs {LONG:?} after SIGTERM with --drain-timeout 200ms"
    );
    // The call is answered 503, or its connection closed: never its result.
    if let Ok(r) = c.try_read_response() {
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(r.text().contains("shutting down"), "{}", r.text());
    }
    let log = engine.log_text();
    assert!(log.contains("up to 200 ms"), "{log}");
}

#[test]
fn second_signal_stops_at_once() {
    // The default drain would wait 10 s for this call; a second signal does not.
    let mut engine = Engine::start(&["--set", "sleep.timeout=300s"]);
    let mut c = engine.client();
    c.send("POST", "/function/sleep?us=120000000", &[], b"")
        .unwrap();
    wait_in_flight(&engine, "sleep");
    engine.signal(libc::SIGTERM);
    if engine
        .log()
        .wait_for(LONG, |l| l.contains("loop 0: draining"))
        .is_none()
    {
        engine.fail("no drain after SIGTERM");
    }
    engine.signal(libc::SIGINT);
    let status = engine
        .wait_exit(LONG)
        .unwrap_or_else(|| engine.fail("still running after a second signal"));
    assert!(!status.success(), "{status:?}");
    // Whatever the client saw, it is not a result, and its worker is gone
    // (the harness checks no process of the engine outlives it).
    if let Ok(r) = c.try_read_response() {
        assert_ne!(r.status, 200, "{}", r.text());
    }
}

/// Waits until `function` has a call in flight.
fn wait_in_flight(engine: &Engine, function: &str) {
    common::wait_function_status(engine, function, "a call in flight", |f| {
        f["in_flight"].as_u64() >= Some(1)
    });
}

#[test]
fn header_and_keepalive_timeouts_close_slow_and_idle_connections() {
    let engine = Engine::start(&["--header-timeout", "300ms", "--keepalive-timeout", "500ms"]);
    // A head that never completes: 408 after the header timeout, then close.
    let mut slow = engine.client();
    slow.write_raw(b"POST /function/echo HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    let r = slow.read_response();
    assert_eq!(r.status, 408, "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // An idle keep-alive connection is closed after the keep-alive timeout.
    let mut idle = engine.client();
    assert_eq!(idle.post("/function/echo", b"x").text(), "x");
    assert!(
        idle.closed_within(Duration::from_secs(5)),
        "the idle connection stayed open"
    );
    // With the defaults (10 s, 60 s) neither would have happened this fast:
    // another engine keeps an idle connection open past the same wait.
    drop(engine);
    let engine = Engine::start(&[]);
    let mut idle = engine.client();
    assert_eq!(idle.post("/function/echo", b"y").text(), "y");
    assert!(!idle.closed_within(Duration::from_millis(1500)));
}

/// An adaptive core loop whose core the workers share yields while it
/// polls (a spinning one would hold the core for its time slice while the
/// worker it handed a call to waits), says so at start, and serves the
/// chain; with the workers on another core it spins as before.
#[test]
fn adaptive_loop_yields_when_workers_share_its_core() {
    let Some((first, last)) = two_cores() else {
        return;
    };
    const SAYS: &str = "poll adaptive (yielding: workers may run on its cores)";
    let shared = Engine::builder()
        .poll("adaptive")
        .args([
            "--io-cores",
            &last.to_string(),
            "--worker-cores",
            &last.to_string(),
        ])
        .start();
    assert!(shared.log_text().contains(SAYS), "{}", shared.log_text());
    let mut client = shared.client();
    for i in 0..200 {
        let input = format!("x{i}");
        let r = client.post("/function/foo", input.as_bytes());
        assert_eq!(
            (r.status, r.text()),
            (
                200,
                format!("From function Foo: From function Bar: {input}")
            )
        );
    }
    drop(shared);
    let apart = Engine::builder()
        .poll("adaptive")
        .args([
            "--io-cores",
            &last.to_string(),
            "--worker-cores",
            &first.to_string(),
        ])
        .start();
    let log = apart.log_text();
    assert!(log.contains("poll adaptive, workers wait"), "{log}");
    assert!(!log.contains("yielding"), "{log}");
}
