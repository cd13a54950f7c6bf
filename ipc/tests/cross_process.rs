//! A real worker process on the other end of a real memfd channel.
//!
//! The test binary re-executes itself (`current_exe()`, filtered to the
//! `child_worker` test, with `NOCTURNE_IPC_CHILD_FD` set) so the child is an
//! ordinary process with its own address space. The parent hands it the
//! sealed memfd (and, in the eventfd variant, the doorbell eventfd) over a
//! unix socket with `SCM_RIGHTS`, then both stream messages both ways with
//! mixed inline and arena payloads whose sizes and contents derive from the
//! sequence number. Each side checks order, content and count, and both
//! consumers sleep with a yielding or parking wait policy (the machine may
//! have two cores shared with a compiler).
//!
//! Count: 1 M messages each way per variant in an optimized build, 200 k in a
//! debug build (override with `NOCTURNE_IPC_STREAM_N`).
#![allow(unsafe_code)]

use nocturne_ipc::channel::{
    ChannelConfig, EngineEnd, SendError, WaitOutcome, WaitPolicy, WorkerEnd,
};
use nocturne_ipc::fdpass::{recv_with_fds, send_with_fds};
use nocturne_ipc::message::{Header, Kind};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

const CHILD_FD_ENV: &str = "NOCTURNE_IPC_CHILD_FD";

fn config() -> ChannelConfig {
    ChannelConfig {
        ring_slots: 64,
        slot_size: 256,
        arena_bytes: 64 * 1024,
    }
}

fn message_count() -> u64 {
    if let Some(n) = std::env::var("NOCTURNE_IPC_STREAM_N")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    if cfg!(debug_assertions) {
        200_000
    } else {
        1_000_000
    }
}

/// Payload length for message `i` of a direction (`salt` makes the two
/// directions differ): about half inline (≤ 192), the rest in the arena, a
/// few large.
fn payload_len(i: u64, salt: u64) -> usize {
    let x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(salt) >> 40;
    match i % 8 {
        0 => 0,
        1..=4 => (x % 193) as usize,
        5 | 6 => 193 + (x % 2000) as usize,
        _ => 2000 + (x % 14000) as usize,
    }
}

/// Fills `buf` with the content of message `i` (8 bytes at a time).
fn fill(buf: &mut [u8], i: u64, salt: u64) {
    let mut v = i ^ salt.rotate_left(17);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        v = v
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        c.copy_from_slice(&v.to_le_bytes());
    }
    let rest = chunks.into_remainder();
    let tail = v.wrapping_add(1).to_le_bytes();
    rest.copy_from_slice(&tail[..rest.len()]);
}

fn check(payload: &[u8], i: u64, salt: u64, scratch: &mut Vec<u8>) {
    assert_eq!(payload.len(), payload_len(i, salt), "length of message {i}");
    scratch.resize(payload.len(), 0);
    fill(scratch, i, salt);
    assert!(payload == &scratch[..], "content of message {i}");
}

const REQ_SALT: u64 = 0x1111;
const RESP_SALT: u64 = 0x2222;

/// Sends one message, yielding while the ring or arena is full (the peer
/// drains them).
fn send_blocking(
    tx: &mut nocturne_ipc::channel::Sender,
    h: &Header,
    len: usize,
    i: u64,
    salt: u64,
) {
    loop {
        match tx.try_send_with(h, len, |buf| fill(buf, i, salt)) {
            Ok(()) => return,
            Err(SendError::RingFull | SendError::ArenaFull) => std::thread::yield_now(),
            Err(e) => panic!("send {i}: {e}"),
        }
    }
}

/// The child: attaches, checks it cannot resize the region, echoes every
/// request as a response of a different size, then reports the count.
#[test]
fn child_worker() {
    let Ok(fd) = std::env::var(CHILD_FD_ENV) else {
        return; // Only meaningful when re-executed by `stream_across_processes`.
    };
    let raw: i32 = fd.parse().expect("fd number");
    // SAFETY: the parent passed us this inherited socket descriptor; nothing
    // else in this process owns it.
    let sock = UnixStream::from(unsafe { OwnedFd::from_raw_fd(raw) });
    let mut buf = [0u8; 64];
    let (n, mut fds) = recv_with_fds(&sock, &mut buf, 2).expect("setup message");
    let setup = std::str::from_utf8(&buf[..n]).unwrap().to_owned();
    let mut parts = setup.split_whitespace();
    let count: u64 = parts.next().unwrap().parse().unwrap();
    let policy = match parts.next().unwrap() {
        "park" => WaitPolicy::Park {
            spin: Duration::from_micros(20),
        },
        _ => WaitPolicy::Yield {
            spin: Duration::from_micros(50),
        },
    };
    let memfd = fds.remove(0);
    // The seals hold in the peer: it cannot shrink or grow the region.
    for len in [0, 1 << 30] {
        // SAFETY: ftruncate on a descriptor we own.
        assert_eq!(unsafe { libc::ftruncate(memfd.as_raw_fd(), len) }, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EPERM)
        );
    }
    let end = match fds.pop() {
        Some(efd) => WorkerEnd::attach_with_eventfd(memfd, efd).expect("attach"),
        None => WorkerEnd::attach(memfd).expect("attach"),
    };
    let (mut tx, mut rx) = end.split();
    let mut scratch = Vec::new();
    let mut next = 0u64;
    while next < count {
        assert_eq!(
            rx.wait(&policy, Some(Duration::from_secs(30))),
            WaitOutcome::Ready,
            "request {next} never came"
        );
        // Take a batch, answer each as it is read (the view borrows only the
        // receiving half).
        while let Some(m) = rx.try_recv().expect("valid request") {
            let h = *m.header();
            assert_eq!(h.kind, Kind::Invoke);
            assert_eq!(h.call_id, next, "requests in order");
            check(m.payload(), next, REQ_SALT, &mut scratch);
            drop(m);
            let resp = Header {
                kind: Kind::Complete,
                call_id: next,
                status: (next % 7) as u16,
                ..h
            };
            send_blocking(
                &mut tx,
                &resp,
                payload_len(next, RESP_SALT),
                next,
                RESP_SALT,
            );
            next += 1;
        }
    }
    assert!(
        rx.try_recv().unwrap().is_none(),
        "nothing after the last request"
    );
    send_with_fds(&sock, format!("done {next}").as_bytes(), &[]).unwrap();
}

/// The parent: streams `count` requests while draining responses.
fn stream(eventfd: bool, policy: &str) {
    let count = message_count();
    let (parent_sock, child_sock) = UnixStream::pair().unwrap();
    // A dup has no close-on-exec flag, so the child inherits it.
    // SAFETY: dup of a descriptor we own; the result is checked and owned.
    let inherited = unsafe { libc::dup(child_sock.as_raw_fd()) };
    assert!(inherited >= 0);
    // SAFETY: fresh descriptor from dup.
    let inherited = unsafe { OwnedFd::from_raw_fd(inherited) };
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_worker", "--nocapture", "--test-threads=1"])
        .env(CHILD_FD_ENV, inherited.as_raw_fd().to_string())
        .spawn()
        .expect("spawn child");
    drop(inherited);
    drop(child_sock);

    // SAFETY: eventfd(2) with valid flags; the result is checked and owned.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(efd >= 0);
    // SAFETY: fresh descriptor.
    let efd = unsafe { OwnedFd::from_raw_fd(efd) };
    let end = if eventfd {
        EngineEnd::create_with_eventfd(&config(), "xproc", efd.as_fd()).unwrap()
    } else {
        EngineEnd::create(&config(), "xproc").unwrap()
    };
    let setup = format!("{count} {policy}");
    let fds = if eventfd {
        vec![end.region_fd(), efd.as_fd()]
    } else {
        vec![end.region_fd()]
    };
    send_with_fds(&parent_sock, setup.as_bytes(), &fds).unwrap();
    let (mut tx, mut rx) = end.split();
    let wait = match policy {
        "park" => WaitPolicy::Park {
            spin: Duration::from_micros(20),
        },
        _ => WaitPolicy::Yield {
            spin: Duration::from_micros(50),
        },
    };

    let mut sent = 0u64;
    let mut received = 0u64;
    let mut scratch = Vec::new();
    while received < count {
        // Send until backpressure (or done).
        let mut progressed = false;
        while sent < count {
            let h = Header {
                kind: Kind::Invoke,
                call_id: sent,
                function_id: 1,
                t0_ns: sent * 3,
                ..Header::default()
            };
            match tx.try_send_with(&h, payload_len(sent, REQ_SALT), |b| fill(b, sent, REQ_SALT)) {
                Ok(()) => {
                    sent += 1;
                    progressed = true;
                }
                Err(SendError::RingFull | SendError::ArenaFull) => break,
                Err(e) => panic!("send {sent}: {e}"),
            }
        }
        let got = rx
            .recv_batch(64, |h, p| {
                assert_eq!(h.kind, Kind::Complete);
                assert_eq!(h.call_id, received, "responses in order");
                assert_eq!(h.status, (received % 7) as u16);
                assert_eq!(h.t0_ns, received * 3, "header fields echoed");
                check(p, received, RESP_SALT, &mut scratch);
                received += 1;
            })
            .expect("valid response");
        if got == 0 && !progressed {
            // Nothing to do until the worker answers: sleep on the doorbell.
            assert_eq!(
                rx.wait(&wait, Some(Duration::from_secs(30))),
                WaitOutcome::Ready,
                "worker stalled"
            );
        }
    }
    assert_eq!(sent, count);
    assert!(rx.try_recv().unwrap().is_none(), "no extra responses");
    let mut done = String::new();
    (&parent_sock).read_to_string(&mut done).unwrap();
    assert_eq!(done, format!("done {count}"));
    let status = child.wait().unwrap();
    assert!(status.success(), "child failed: {status}");
}

#[test]
fn stream_across_processes() {
    // Sequential, not two #[test]s: each variant's inherited descriptor must
    // not leak into the other's child.
    stream(false, "park");
    stream(true, "yield");
}
