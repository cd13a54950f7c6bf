//! A quick, dependency-free probe of the channel's hot paths against a raw
//! shared-memory floor, for tuning nocturne-ipc itself (the real benchmark
//! suite is `nocturne bench ipc`). Threads, not processes; numbers are only
//! meaningful as ratios within one run on an otherwise idle machine with at
//! least two free cores.
//!
//! ```text
//! cargo run --release -p nocturne-ipc --example ipc_probe [round_trips]
//! ```
//!
//! `PROBE_SLOTS`, `PROBE_SLOT_SIZE` and `PROBE_LEN` (payload bytes, ≤ 64)
//! override the default geometry and payload.
//!
//! Prints, for 64-byte payloads: raw two-flag ping-pong round trip, channel
//! round trip with `WaitPolicy::Spin` (both p50 of per-trip samples, best of
//! 5 interleaved trials), and one-way streaming throughput with batched send
//! and receive.

use nocturne_ipc::channel::{heap_pair, ChannelConfig, SendError, WaitPolicy};
use nocturne_ipc::message::Header;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[repr(C, align(128))]
struct Line {
    flag: AtomicU64,
    bytes: [AtomicU64; 8],
}

fn p50(mut v: Vec<u64>) -> f64 {
    v.sort_unstable();
    v[v.len() / 2] as f64
}

/// The floor: each side writes 64 bytes and a flag, the other spins on it.
fn raw_ping_pong(n: u64) -> f64 {
    let lines: Arc<[Line; 2]> = Arc::new(std::array::from_fn(|_| Line {
        flag: AtomicU64::new(0),
        bytes: std::array::from_fn(|_| AtomicU64::new(0)),
    }));
    let l2 = lines.clone();
    let echo = std::thread::spawn(move || {
        for i in 1..=n {
            while l2[0].flag.load(Ordering::Acquire) != i {
                std::hint::spin_loop();
            }
            for (k, b) in l2[1].bytes.iter().enumerate() {
                b.store(l2[0].bytes[k].load(Ordering::Relaxed), Ordering::Relaxed);
            }
            l2[1].flag.store(i, Ordering::Release);
        }
    });
    let mut samples = Vec::with_capacity(n as usize);
    for i in 1..=n {
        let t = Instant::now();
        for b in &lines[0].bytes {
            b.store(i, Ordering::Relaxed);
        }
        lines[0].flag.store(i, Ordering::Release);
        while lines[1].flag.load(Ordering::Acquire) != i {
            std::hint::spin_loop();
        }
        samples.push(t.elapsed().as_nanos() as u64);
    }
    echo.join().unwrap();
    p50(samples)
}

fn probe_config() -> ChannelConfig {
    let d = ChannelConfig::default();
    let env = |name: &str, default: u32| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    ChannelConfig {
        ring_slots: env("PROBE_SLOTS", d.ring_slots),
        slot_size: env("PROBE_SLOT_SIZE", d.slot_size),
        ..d
    }
}

fn payload_len() -> usize {
    std::env::var("PROBE_LEN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

fn ring_ping_pong(n: u64) -> f64 {
    let (engine, worker) = heap_pair(&probe_config());
    let len = payload_len();
    let (mut req_tx, mut resp_rx) = engine.split();
    let (mut resp_tx, mut req_rx) = worker.split();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        for _ in 0..n {
            req_rx.wait(&WaitPolicy::Spin, None);
            let m = req_rx.try_recv().unwrap().unwrap();
            let h = *m.header();
            buf[..len].copy_from_slice(m.payload());
            drop(m);
            resp_tx.try_send(&h, &buf[..len]).unwrap();
        }
    });
    let payload = [7u8; 64];
    let payload = &payload[..len];
    let mut samples = Vec::with_capacity(n as usize);
    for i in 0..n {
        let t = Instant::now();
        req_tx
            .try_send(
                &Header {
                    call_id: i,
                    ..Header::default()
                },
                payload,
            )
            .unwrap();
        resp_rx.wait(&WaitPolicy::Spin, None);
        let m = resp_rx.try_recv().unwrap().unwrap();
        assert_eq!(m.header().call_id, i);
        drop(m);
        samples.push(t.elapsed().as_nanos() as u64);
    }
    echo.join().unwrap();
    p50(samples)
}

fn ring_stream(n: u64) -> f64 {
    let (engine, worker) = heap_pair(&probe_config());
    let (mut tx, _r) = engine.split();
    let (_t, mut rx) = worker.split();
    let consumer = std::thread::spawn(move || {
        let mut got = 0u64;
        let mut sum = 0u64;
        while got < n {
            got += rx
                .recv_batch(64, |h, p| sum = sum.wrapping_add(h.call_id + p[0] as u64))
                .unwrap() as u64;
        }
        sum
    });
    let payload = [1u8; 64];
    let headers: Vec<Header> = (0..32)
        .map(|i| Header {
            call_id: i,
            ..Header::default()
        })
        .collect();
    let t = Instant::now();
    let mut sent = 0u64;
    while sent < n {
        let k = ((n - sent) as usize).min(32);
        match tx.try_send_batch(headers[..k].iter().map(|h| (h, &payload[..]))) {
            Ok(m) => sent += m as u64,
            Err(SendError::RingFull) => std::hint::spin_loop(),
            Err(e) => panic!("{e}"),
        }
    }
    consumer.join().unwrap();
    n as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50_000);
    // Interleaved trials; the best p50 of each filters out a noisy neighbour.
    let (mut raw, mut ring, mut rate) = (f64::MAX, f64::MAX, 0f64);
    for _ in 0..5 {
        raw = raw.min(raw_ping_pong(n));
        ring = ring.min(ring_ping_pong(n));
        rate = rate.max(ring_stream(20 * n));
    }
    println!("raw two-flag ping-pong, 64 B: {raw:8.1} ns round trip (p50, best of 5)");
    println!(
        "ring-spin/64 round trip:      {ring:8.1} ns ({:.2}x raw)",
        ring / raw
    );
    println!(
        "ring-stream/64 one way:       {:8.2} M msgs/s (batches of 32, best of 5)",
        rate / 1e6
    );
}
