//! Instruction path length of the hot paths, for use under
//! `valgrind --tool=callgrind` (deterministic where timings on a shared VM are
//! not): one thread sends and receives `n` 64-byte messages through a heap
//! channel, one at a time, then in batches of 32.
//!
//! ```text
//! cargo build --release -p nocturne-ipc --example ipc_pathlen
//! valgrind --tool=callgrind target/release/examples/ipc_pathlen 100000
//! ```

use nocturne_ipc::channel::{heap_pair, ChannelConfig, WaitPolicy};
use nocturne_ipc::message::Header;
use std::hint::black_box;

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let (engine, worker) = heap_pair(&ChannelConfig::default());
    let (mut tx, _r) = engine.split();
    let (_t, mut rx) = worker.split();
    // A Vec behind black_box, as a real caller's payload: its length is not
    // a compile-time constant, so the copy is the one real sends get.
    let payload: Vec<u8> = black_box((0..64u8).collect());
    let mut sum = 0u64;
    for i in 0..n {
        tx.try_send(
            black_box(&Header {
                call_id: i,
                ..Header::default()
            }),
            &payload[..],
        )
        .unwrap();
        rx.wait(&WaitPolicy::Spin, None);
        let m = rx.try_recv().unwrap().unwrap();
        sum = sum.wrapping_add(m.header().call_id + m.payload()[63] as u64);
    }
    let headers: Vec<Header> = (0..32)
        .map(|i| Header {
            call_id: i,
            ..Header::default()
        })
        .collect();
    for _ in 0..n / 32 {
        let k = tx
            .try_send_batch(headers.iter().map(|h| (h, &payload[..])))
            .unwrap();
        let got = rx
            .recv_batch(32, |h, p| sum = sum.wrapping_add(h.call_id + p[0] as u64))
            .unwrap();
        assert_eq!((k, got), (32, 32));
    }
    println!("{sum}");
}
