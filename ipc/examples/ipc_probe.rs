//! An in-process probe of the channel's hot paths against a raw shared-memory
//! floor, for tuning nocturne-ipc itself (the real benchmark suite is
//! `nocturne bench ipc`, two processes). Two threads pinned to two cores,
//! a sealed-memfd channel attached as a worker attaches it, the same work per
//! message as the bench (the receiver checksums every payload byte).
//!
//! ```text
//! cargo run --release -p nocturne-ipc --example ipc_probe [trials] [round_trips]
//! ```
//!
//! Environment: `PROBE_CORES` (`A,B`, default `0,1`), `PROBE_SLOTS` (default
//! 64), `PROBE_SLOT_SIZE` (default 256: the bench's ping geometry) and
//! `PROBE_LEN` (payload bytes, ≤ 64, default 64).
//!
//! Each trial runs, interleaved: the raw floor (64-byte header line plus a
//! payload line one way, one line back, each side spinning on a flag), the
//! channel round trip (`try_send` / `try_recv`, both sides spinning) and a
//! one-way batched stream (1024 × 128-byte slots, batches of 32). A trial's
//! latency is the lowest mean over 200 consecutive round trips — what the
//! path costs while nothing else runs on the two cores — and its stream rate
//! the median over 4096-message windows. The report gives the medians over
//! trials, counting only trials whose floor was under 200 ns: on the
//! development VM the two vCPUs sometimes land on distant cores (floor
//! ≈ 450 ns), which says nothing about the ring.

use nocturne_ipc::channel::{ChannelConfig, EngineEnd, Receiver, Sender, WorkerEnd};
use nocturne_ipc::{Header, Kind, SendError};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Round trips per latency block.
const BLOCK: usize = 200;
/// A floor above this means the vCPUs are far apart: the trial is skipped.
const FAST_FLOOR_NS: f64 = 200.0;
/// Messages per stream window.
const WINDOW: u64 = 4096;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn cores() -> (usize, usize) {
    let spec = std::env::var("PROBE_CORES").unwrap_or_else(|_| "0,1".into());
    let mut it = spec
        .split(',')
        .map(|c| c.trim().parse().expect("PROBE_CORES: A,B"));
    (it.next().unwrap_or(0), it.next().unwrap_or(1))
}

fn pin(core: usize) {
    assert!(
        core_affinity::set_for_current(core_affinity::CoreId { id: core }),
        "cannot pin to core {core}"
    );
}

/// The bench's checksum: every payload byte read once.
#[inline]
fn checksum(bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(8);
    let mut sum = 0u64;
    for w in &mut words {
        sum = sum.wrapping_add(u64::from_le_bytes(w.try_into().expect("8 bytes")));
    }
    for &b in words.remainder() {
        sum = sum.wrapping_add(u64::from(b));
    }
    std::hint::black_box(sum)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The lowest mean over blocks of [`BLOCK`] consecutive samples.
fn best_block_mean(samples: &[u64]) -> f64 {
    samples
        .chunks_exact(BLOCK)
        .map(|c| c.iter().sum::<u64>() as f64 / BLOCK as f64)
        .fold(f64::MAX, f64::min)
}

/// One cache line: a flag word and seven data words.
#[repr(C, align(128))]
#[derive(Default)]
struct Line {
    words: [AtomicU64; 8],
}

/// The floor's shared memory: request header line, request payload line,
/// reply line (128 bytes apart, like the mailbox of the bench).
#[derive(Default)]
struct Mailbox {
    request: Line,
    payload: Line,
    reply: Line,
}

fn floor(n: usize, (a, b): (usize, usize)) -> f64 {
    let m = Arc::new(Mailbox::default());
    let peer_m = m.clone();
    let peer = std::thread::spawn(move || {
        pin(b);
        let m = peer_m;
        for i in 1..=n as u64 {
            // Acquire pairs with the driver's Release store of the flag.
            while m.request.words[0].load(Ordering::Acquire) != i {
                std::hint::spin_loop();
            }
            // Relaxed (these words and the payload): the Acquire load of
            // the flag above already ordered them after the driver's stores.
            let header: u64 = (1..8)
                .map(|k| m.request.words[k].load(Ordering::Relaxed))
                .sum();
            let sum = m
                .payload
                .words
                .iter()
                .fold(header, |s, w| s.wrapping_add(w.load(Ordering::Relaxed)));
            // Relaxed: published by the Release store of the reply flag next.
            m.reply.words[1].store(std::hint::black_box(sum), Ordering::Relaxed);
            // Release pairs with the driver's Acquire load of the reply flag.
            m.reply.words[0].store(i, Ordering::Release);
        }
    });
    pin(a);
    let mut samples = Vec::with_capacity(n);
    for i in 1..=n as u64 {
        let t = Instant::now();
        // Relaxed (payload and header words): published by the Release
        // store of the request flag below, as a ring's seq publishes a slot.
        for w in &m.payload.words {
            w.store(i, Ordering::Relaxed);
        }
        for w in &m.request.words[1..] {
            w.store(i, Ordering::Relaxed);
        }
        // Release: pairs with the peer's Acquire load of the request flag.
        m.request.words[0].store(i, Ordering::Release);
        // Acquire: pairs with the peer's Release store of the reply flag,
        // making its reply word visible.
        while m.reply.words[0].load(Ordering::Acquire) != i {
            std::hint::spin_loop();
        }
        std::hint::black_box(m.reply.words[1].load(Ordering::Relaxed));
        samples.push(t.elapsed().as_nanos() as u64);
    }
    peer.join().expect("floor peer");
    best_block_mean(&samples)
}

/// An engine end and a worker end attached from a duplicate of its memfd.
fn channel(cfg: &ChannelConfig) -> ((Sender, Receiver), (Sender, Receiver)) {
    let engine = EngineEnd::create(cfg, "ipc-probe").expect("create");
    let fd = engine
        .region_fd()
        .as_fd()
        .try_clone_to_owned()
        .expect("dup");
    let worker = WorkerEnd::attach(fd).expect("attach");
    (engine.split(), worker.split())
}

fn send(tx: &mut Sender, header: &Header, payload: &[u8]) {
    loop {
        match tx.try_send(header, payload) {
            Ok(()) => return,
            Err(SendError::RingFull | SendError::ArenaFull) => std::hint::spin_loop(),
            Err(e) => panic!("send: {e}"),
        }
    }
}

fn recv(rx: &mut Receiver) -> (Header, u64) {
    loop {
        if let Some(m) = rx.try_recv().expect("recv") {
            return (*m.header(), checksum(m.payload()));
        }
        std::hint::spin_loop();
    }
}

fn ring(n: usize, cfg: &ChannelConfig, len: usize, (a, b): (usize, usize)) -> f64 {
    let ((mut tx, mut rx), (mut peer_tx, mut peer_rx)) = channel(cfg);
    let peer = std::thread::spawn(move || {
        pin(b);
        let mut reply = Header {
            kind: Kind::Complete,
            ..Header::default()
        };
        for _ in 0..n {
            let (request, sum) = recv(&mut peer_rx);
            reply.call_id = request.call_id;
            reply.t1_ns = sum;
            send(&mut peer_tx, &reply, &[]);
        }
    });
    pin(a);
    let payload: Vec<u8> = (0..len).map(|i| (i * 131 + 7) as u8).collect();
    let mut header = Header {
        kind: Kind::Invoke,
        ..Header::default()
    };
    let mut samples = Vec::with_capacity(n);
    for i in 1..=n as u64 {
        header.call_id = i;
        let t = Instant::now();
        send(&mut tx, &header, &payload);
        let (reply, _) = recv(&mut rx);
        samples.push(t.elapsed().as_nanos() as u64);
        assert_eq!(reply.call_id, i);
    }
    peer.join().expect("ring peer");
    best_block_mean(&samples)
}

/// Median messages/s over windows of [`WINDOW`] messages.
fn stream(total: u64, (a, b): (usize, usize)) -> f64 {
    let cfg = ChannelConfig {
        ring_slots: 1024,
        slot_size: 128,
        arena_bytes: 0,
    };
    let ((mut tx, _), (_, mut rx)) = channel(&cfg);
    let peer = std::thread::spawn(move || {
        pin(b);
        let (mut got, mut next, mut sum) = (0u64, 1u64, 0u64);
        while got < total {
            got += rx
                .recv_batch(32, |h, p| {
                    assert_eq!((h.call_id, p.len()), (next, 64));
                    next += 1;
                    sum = sum.wrapping_add(checksum(p));
                })
                .expect("recv_batch") as u64;
        }
        sum
    });
    pin(a);
    // A Vec, as the bench sends: the length is not a compile-time constant.
    let payload: Vec<u8> = (0..64u8)
        .map(|i| i.wrapping_mul(131).wrapping_add(7))
        .collect();
    let mut batch = vec![
        Header {
            kind: Kind::Invoke,
            ..Header::default()
        };
        32
    ];
    let (mut sent, mut window_left) = (0u64, WINDOW);
    let mut window_start = Instant::now();
    let mut windows = Vec::new();
    while sent < total {
        let k = ((total - sent) as usize).min(batch.len());
        for (i, h) in batch[..k].iter_mut().enumerate() {
            h.call_id = sent + 1 + i as u64;
        }
        match tx.try_send_batch(batch[..k].iter().map(|h| (h, &payload[..]))) {
            Ok(m) => {
                sent += m as u64;
                if let Some(left) = window_left.checked_sub(m as u64).filter(|&l| l > 0) {
                    window_left = left;
                } else {
                    let now = Instant::now();
                    windows.push(WINDOW as f64 / (now - window_start).as_secs_f64());
                    window_start = now;
                    window_left = WINDOW;
                }
            }
            Err(SendError::RingFull) => std::hint::spin_loop(),
            Err(e) => panic!("send_batch: {e}"),
        }
    }
    peer.join().expect("stream peer");
    median(windows)
}

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a number"));
    let trials: usize = args.next().unwrap_or(9);
    let n: usize = args.next().unwrap_or(4000).max(BLOCK);
    let cores = cores();
    let len: usize = env_or("PROBE_LEN", 64).min(64);
    let cfg = ChannelConfig {
        ring_slots: env_or("PROBE_SLOTS", 64),
        slot_size: env_or("PROBE_SLOT_SIZE", 256),
        arena_bytes: 64 * 1024,
    };
    let (mut floors, mut rings, mut ratios, mut rates) = (vec![], vec![], vec![], vec![]);
    for _ in 0..trials {
        let f = floor(n, cores);
        let r = ring(n, &cfg, len, cores);
        let s = stream(100 * WINDOW, cores);
        if f < FAST_FLOOR_NS {
            floors.push(f);
            rings.push(r);
            ratios.push(r / f);
            rates.push(s);
        }
    }
    println!(
        "{} x {} B slots, {len}-byte payload; {} of {trials} trials with the cores close",
        cfg.ring_slots,
        cfg.slot_size,
        floors.len()
    );
    if floors.is_empty() {
        println!("no trial had the two cores close (floor < {FAST_FLOOR_NS} ns): run again");
        return;
    }
    println!("raw floor round trip:   {:7.1} ns", median(floors));
    println!(
        "channel round trip:     {:7.1} ns ({:.2}x floor)",
        median(rings),
        median(ratios)
    );
    println!(
        "stream, batches of 32:  {:7.1} M msgs/s",
        median(rates) / 1e6
    );
}
