//! The worker manager against real processes: spawn, handshake, one call over
//! the attached channel, death by EOF / SIGKILL / parent death, logs, affinity,
//! and every way a start can fail.
//!
//! The worker side is this test binary re-executed: `child_entry` is a no-op
//! in a normal run, and when `NOCTURNE_TEST_CHILD` names a mode it becomes that
//! worker (built on `nocturne_functions::control` and the raw channel, not on
//! the engine's built-in functions). Waits for events are bounded by [`LONG`]
//! so a bug fails instead of hanging; no test asserts how fast anything is.
// The garbage-speaking child wraps its inherited control fd, and the eventfd
// poll helper calls poll(2).
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use nocturne_engine::worker::log::{format_output, LineOrigin, Output};
use nocturne_engine::worker::{
    eventfd, spawn, spawn_with_log, ExitStatus, HandshakeFailure, LogForwarder, SpawnError,
    SpawnRequest, Spawner, Worker, WorkerSpec,
};
use nocturne_functions::control;
use nocturne_ipc::channel::{ChannelConfig, WaitPolicy};
use nocturne_ipc::message::{Header, Kind};

const CHILD_ENV: &str = "NOCTURNE_TEST_CHILD";
/// Upper bound on any wait for an event; reaching it is a failure, not a timing.
const LONG: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// The child side.

/// Worker body of the other tests; does nothing unless `NOCTURNE_TEST_CHILD` is set.
#[test]
fn child_entry() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    match mode.as_str() {
        "echo" => echo_worker(),
        "sleeper" => {
            // Handshake, then ignore the control socket: only a signal ends it.
            let _boot = control::connect_from_env().expect("handshake");
            say("sleeper up");
            sleep_forever()
        }
        "refuse" => {
            // Pretend to be started for another function: connect refuses.
            std::env::set_var(control::FUNCTION_ENV, "impostor");
            let err = control::connect_from_env().err().expect("must refuse");
            eprintln!("refused: {err}");
            std::process::exit(2)
        }
        "garbage" => {
            let sock = raw_control_socket();
            nocturne_ipc::fdpass::send_with_fds(&sock, b"HTTP/1.1 200 OK\r\n\r\n", &[]).unwrap();
            sleep_forever()
        }
        "exit3" => std::process::exit(3),
        "refuse-rudely" => {
            // Refuses with a terminal escape in its reason, and takes a
            // moment to exit (code 4), as a process with cleanup to do would.
            let sock = raw_control_socket();
            let reason = "no thanks \u{1b}[31mred".to_string();
            control::send(&sock, &control::ControlMessage::Refused { reason }, &[]).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            std::process::exit(4)
        }
        "middle" => middle(),
        other => panic!("unknown child mode {other}"),
    }
}

/// The control socket the engine passed, for a child that speaks the
/// protocol by hand.
fn raw_control_socket() -> UnixStream {
    let fd: i32 = std::env::var(control::CONTROL_FD_ENV)
        .unwrap()
        .parse()
        .unwrap();
    // SAFETY: the engine passed this fd for us alone, and it is wrapped once:
    // each child mode calls this at most once.
    UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn say(line: &str) {
    // Straight to fd 1 (not print!, which libtest may capture).
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Answers every request with `<bootstrap facts>|<input>`; exits on control EOF.
fn echo_worker() -> ! {
    let boot = control::connect_from_env().expect("handshake");
    say(&format!("echo worker up: {}", boot.function));
    eprintln!("echo worker stderr line");
    control::spawn_eof_watchdog(&boot.control);
    let facts = format!(
        "{}|{}|{}|{:?}|",
        boot.function, boot.function_id, boot.worker_index, boot.functions
    );
    let (mut tx, mut rx) = boot.end.split();
    loop {
        rx.wait(&boot.wait, None);
        let Some(msg) = rx.try_recv().expect("valid request") else {
            continue;
        };
        let request = *msg.header();
        let mut reply = facts.clone().into_bytes();
        reply.extend_from_slice(msg.payload());
        drop(msg);
        let header = Header {
            kind: Kind::Complete,
            function_id: request.function_id,
            call_id: request.call_id,
            ..Header::default()
        };
        tx.try_send(&header, &reply)
            .expect("response ring has room");
    }
}

/// Starts a `sleeper` worker, reports its pid on stdout, and waits to be killed.
fn middle() -> ! {
    let efd = eventfd().unwrap();
    let worker = spawn(&spec("sleeper"), efd.as_fd()).expect("middle spawns its worker");
    say(&format!("worker-pid={}", worker.pid));
    let _keep = worker;
    sleep_forever()
}

// ---------------------------------------------------------------------------
// Helpers of the engine side.

fn child_argv() -> Vec<OsString> {
    let exe = std::env::current_exe().unwrap();
    [
        "child_entry",
        "--exact",
        "--nocapture",
        "--test-threads=1",
        "--quiet",
    ]
    .into_iter()
    .map(OsString::from)
    .fold(vec![exe.into_os_string()], |mut v, a| {
        v.push(a);
        v
    })
}

fn spec(mode: &str) -> WorkerSpec {
    WorkerSpec {
        function: "echo".into(),
        function_id: 3,
        argv: child_argv(),
        env: vec![(CHILD_ENV.into(), mode.into())],
        cores: None,
        channel: ChannelConfig {
            ring_slots: 16,
            slot_size: 256,
            arena_bytes: 4096,
        },
        functions: vec![("echo".into(), 3), ("other".into(), 4)],
        wait: WaitPolicy::Park {
            spin: Duration::ZERO,
        },
        wake_seat: None,
        handshake_timeout: LONG,
        worker_index: 5,
    }
}

fn poll_readable(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, count 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
    rc > 0
}

/// `(state, ppid)` from /proc/<pid>/stat, `None` if there is no such process.
fn proc_state(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid …": comm may hold spaces and parens, so split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

fn is_running(pid: u32) -> bool {
    matches!(proc_state(pid), Some((state, _)) if state != 'Z' && state != 'X')
}

/// True when no process of ours (running or zombie) has this pid.
fn not_our_process(pid: u32) -> bool {
    !matches!(proc_state(pid), Some((_, ppid)) if ppid == std::process::id())
}

/// Polls `cond` until it holds; false if it still does not after [`LONG`].
fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + LONG;
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    assert!(eventually(cond), "gave up waiting: {what}");
}

fn wait_for_exit(worker: &mut Worker) -> ExitStatus {
    assert!(
        poll_readable(worker.pidfd(), LONG),
        "pidfd never turned readable"
    );
    worker
        .try_reap()
        .expect("a readable pidfd means it can be reaped")
}

// ---------------------------------------------------------------------------
// The tests.

#[test]
fn handshake_then_a_call_round_trips_over_the_channel() {
    let efd = eventfd().unwrap();
    let worker = spawn(&spec("echo"), efd.as_fd()).unwrap();
    assert!(is_running(worker.pid));
    let Worker {
        end,
        mut process,
        pid,
        function_id,
        worker_index,
    } = worker;
    assert_eq!((function_id, worker_index), (3, 5));
    let (mut tx, mut rx) = end.expect("a new worker has its channel").split();

    // Announce sleep first: the worker's completion must then write the
    // eventfd passed in the hello (the engine's epoll doorbell).
    assert!(rx.arm_sleep(), "nothing is in the response ring yet");
    let request = Header {
        kind: Kind::Invoke,
        function_id: 3,
        call_id: 77,
        ..Header::default()
    };
    tx.try_send(&request, b"ping").unwrap();
    assert!(
        poll_readable(efd.as_fd(), LONG),
        "the worker's completion did not ring the eventfd"
    );
    rx.disarm_sleep();

    let msg = rx
        .try_recv()
        .unwrap()
        .expect("completion arrived before the doorbell rang");
    assert_eq!(msg.header().kind, Kind::Complete);
    assert_eq!(msg.header().call_id, 77);
    let expected = format!("echo|3|5|{:?}|ping", [("echo", 3), ("other", 4)]);
    assert_eq!(String::from_utf8_lossy(msg.payload()), expected);
    drop(msg);

    assert_eq!(process.try_reap(), None, "still serving");
    assert_eq!(process.pid(), pid);
    assert_eq!(
        process.shutdown(LONG),
        ExitStatus::Exited(0),
        "EOF on control ends it cleanly"
    );
    assert!(not_our_process(pid));
}

#[test]
fn closing_the_control_socket_ends_the_worker() {
    let efd = eventfd().unwrap();
    let mut worker = spawn(&spec("echo"), efd.as_fd()).unwrap();
    worker.close_control();
    assert_eq!(wait_for_exit(&mut worker), ExitStatus::Exited(0));
    assert_eq!(
        worker.try_reap(),
        Some(ExitStatus::Exited(0)),
        "the status is kept"
    );
    assert!(not_our_process(worker.pid));
    worker.kill(); // after reaping: a harmless no-op, never another process
}

#[test]
fn pidfd_reports_a_sigkill() {
    let efd = eventfd().unwrap();
    let mut worker = spawn(&spec("echo"), efd.as_fd()).unwrap();
    worker.kill();
    let status = wait_for_exit(&mut worker);
    assert_eq!(status, ExitStatus::Signaled(libc::SIGKILL));
    assert_eq!(status.to_string(), "killed by signal 9 (SIGKILL)");
    assert!(not_our_process(worker.pid));
}

#[test]
fn handshake_timeout_kills_and_reaps() {
    let mut s = spec("unused");
    s.argv = vec!["sleep".into(), "30".into()];
    s.handshake_timeout = Duration::from_millis(200);
    let efd = eventfd().unwrap();
    let err = spawn(&s, efd.as_fd()).err().expect("sleep never answers");
    let SpawnError::Timeout { pid, timeout, .. } = err else {
        panic!("expected a timeout, got {err}")
    };
    assert_eq!(timeout, Duration::from_millis(200));
    assert!(
        not_our_process(pid),
        "the timed-out child must be gone, not a zombie: {:?}",
        proc_state(pid)
    );
}

#[test]
fn exec_failure_names_the_program() {
    let mut s = spec("unused");
    s.argv = vec!["/nonexistent/nocturne-no-such-worker".into(), "x".into()];
    let efd = eventfd().unwrap();
    let err = spawn(&s, efd.as_fd()).err().expect("no such program");
    assert!(
        matches!(&err, SpawnError::Exec { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("/nonexistent/nocturne-no-such-worker"),
        "{err}"
    );
}

#[test]
fn invalid_specs_are_refused_before_forking() {
    let efd = eventfd().unwrap();
    let mut s = spec("unused");
    s.argv.clear();
    assert!(matches!(
        spawn(&s, efd.as_fd()),
        Err(SpawnError::EmptyArgv { .. })
    ));

    for cores in [vec![], vec![1 << 20]] {
        let mut s = spec("unused");
        s.cores = Some(cores);
        assert!(matches!(
            spawn(&s, efd.as_fd()),
            Err(SpawnError::BadCores { .. })
        ));
    }
}

#[test]
fn worker_that_exits_during_the_handshake_reports_its_code() {
    let efd = eventfd().unwrap();
    let err = spawn(&spec("exit3"), efd.as_fd()).err().expect("it exits");
    let SpawnError::Handshake {
        cause: HandshakeFailure::Closed,
        status,
        pid,
        ..
    } = &err
    else {
        panic!("expected a closed handshake, got {err}")
    };
    assert_eq!(*status, ExitStatus::Exited(3));
    assert!(err.to_string().contains("exited with code 3"), "{err}");
    assert!(not_our_process(*pid));
}

#[test]
fn refusal_carries_the_workers_reason() {
    let efd = eventfd().unwrap();
    let err = spawn(&spec("refuse"), efd.as_fd())
        .err()
        .expect("it refuses");
    let SpawnError::Handshake {
        cause: HandshakeFailure::Refused(reason),
        pid,
        ..
    } = &err
    else {
        panic!("expected a refusal, got {err}")
    };
    assert!(
        reason.contains("impostor") && reason.contains("echo"),
        "{reason}"
    );
    assert!(not_our_process(*pid));
}

#[test]
fn a_refusal_is_logged_escaped_with_the_workers_own_exit() {
    // The worker's reason reaches the log and clients: its escape sequences
    // must not. It exits by itself 50 ms after refusing: the engine waits
    // for that rather than report its own SIGKILL ("it killed by signal 9").
    let efd = eventfd().unwrap();
    let err = spawn(&spec("refuse-rudely"), efd.as_fd())
        .err()
        .expect("it refuses");
    let SpawnError::Handshake { status, .. } = &err else {
        panic!("expected a refusal, got {err}")
    };
    assert_eq!(*status, ExitStatus::Exited(4), "{err}");
    let text = err.to_string();
    assert!(!text.contains('\u{1b}'), "{text:?}");
    assert!(
        text.ends_with("it refused: no thanks \\u{1b}[31mred; it exited with code 4"),
        "{text}"
    );
}

#[test]
fn garbage_on_the_control_socket_is_a_protocol_error() {
    let efd = eventfd().unwrap();
    let err = spawn(&spec("garbage"), efd.as_fd())
        .err()
        .expect("it speaks HTTP");
    let SpawnError::Protocol { pid, detail, .. } = &err else {
        panic!("expected a protocol error, got {err}")
    };
    assert!(detail.contains("magic"), "{detail}");
    assert!(
        not_our_process(*pid),
        "a protocol offender is killed and reaped"
    );
}

#[test]
fn stdout_and_stderr_lines_are_forwarded_with_a_tag() {
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = Arc::clone(&lines);
    let forwarder = LogForwarder::new(move |origin: &LineOrigin<'_>, output: Output<'_>| {
        sink.lock().unwrap().push(format_output(origin, output));
    })
    .unwrap();
    let efd = eventfd().unwrap();
    let worker = spawn_with_log(&spec("echo"), efd.as_fd(), &forwarder).unwrap();
    let pid = worker.pid;
    let want_out = format!("[worker echo pid={pid}] echo worker up: echo");
    let want_err = format!("[worker echo pid={pid}] echo worker stderr line");
    wait_until("both lines forwarded", || {
        let got = lines.lock().unwrap();
        got.contains(&want_out) && got.contains(&want_err)
    });
    drop(worker);
}

#[test]
fn affinity_is_applied_before_exec() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let allowed = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string();
    // The last CPU we may use ("0-1,4" -> 4).
    let last: usize = allowed.rsplit([',', '-']).next().unwrap().parse().unwrap();

    let mut s = spec("echo");
    s.cores = Some(vec![last]);
    let efd = eventfd().unwrap();
    let worker = spawn(&s, efd.as_fd()).unwrap();
    let child = std::fs::read_to_string(format!("/proc/{}/status", worker.pid)).unwrap();
    let child_allowed = child
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim();
    assert_eq!(child_allowed, last.to_string());
}

#[test]
fn affinity_to_a_missing_cpu_fails_the_start() {
    let mut s = spec("echo");
    s.cores = Some(vec![1000]); // fits a cpu_set_t, exists on no test machine
    let efd = eventfd().unwrap();
    let err = spawn(&s, efd.as_fd())
        .err()
        .expect("sched_setaffinity must fail in the child");
    assert!(matches!(err, SpawnError::Exec { .. }), "{err}");
}

#[test]
fn worker_dies_with_its_parent() {
    // middle (this binary) spawns a sleeper worker, which ignores control EOF:
    // only PR_SET_PDEATHSIG can end it when the middle is SIGKILLed.
    let mut middle = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_entry",
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "--quiet",
        ])
        .env(CHILD_ENV, "middle")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = middle.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(pid) = line.strip_prefix("worker-pid=") {
                let _ = tx.send(pid.parse::<u32>().unwrap());
            }
        }
    });
    let worker_pid = rx.recv_timeout(LONG).expect("middle reports its worker");
    assert!(is_running(worker_pid));
    assert_eq!(
        proc_state(worker_pid).unwrap().1,
        middle.id(),
        "the worker is the middle's child"
    );

    middle.kill().unwrap();
    middle.wait().unwrap();
    // Reparented to init (or a subreaper) and killed; a zombie left for an init
    // that does not reap counts as dead.
    if !eventually(|| !is_running(worker_pid)) {
        // Do not leave the orphan behind when the test fails.
        // SAFETY: kill(2) takes no pointers; the pid was running a moment ago
        // as our grandchild.
        unsafe { libc::kill(worker_pid as libc::pid_t, libc::SIGKILL) };
        panic!("the orphaned worker survived its parent");
    }
}

#[test]
fn dropping_a_worker_leaves_no_zombie() {
    let efd = eventfd().unwrap();
    let worker = spawn(&spec("sleeper"), efd.as_fd()).unwrap();
    let pid = worker.pid;
    drop(worker);
    wait_until("the dropped worker is reaped", || not_our_process(pid));
}

#[test]
fn spawner_replies_on_the_loops_queue_and_wakes_it() {
    let spawner = Spawner::start();
    let wake = Arc::new(eventfd().unwrap());
    let (reply_tx, reply_rx) = mpsc::channel();

    let mut bad = spec("unused");
    bad.argv = vec!["/nonexistent/nocturne-spawner-test".into()];
    for (tag, spec) in [(1, spec("echo")), (2, bad)] {
        spawner.request(SpawnRequest {
            spec,
            tag,
            reply: reply_tx.clone(),
            wake_efd: Arc::clone(&wake),
        });
    }
    assert!(
        poll_readable(wake.as_fd(), LONG),
        "the spawner must write the loop's eventfd"
    );

    let mut replies: Vec<_> = (0..2)
        .map(|_| reply_rx.recv_timeout(LONG).expect("a reply per request"))
        .collect();
    replies.sort_by_key(|(tag, _)| *tag);
    let (_, second) = replies.pop().unwrap();
    let (_, first) = replies.pop().unwrap();
    assert!(matches!(second, Err(SpawnError::Exec { .. })));
    let mut worker = first.expect("echo starts");
    assert!(is_running(worker.pid));
    // The spawner's forker thread, not this one, is the parent thread: it
    // keeps running. Close it cleanly before the spawner (and its
    // PDEATHSIG) goes.
    worker.close_control();
    assert_eq!(wait_for_exit(&mut worker), ExitStatus::Exited(0));
    drop(spawner);
}
