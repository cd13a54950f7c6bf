//! A hostile or broken peer can write anything into the shared region. Fill
//! the request ring, its arena and the release words with arbitrary bytes
//! (some structured so they get past the first checks) and check that the
//! receiver and the sender only ever produce a valid message, nothing, or a
//! typed error — never a panic, never a payload outside the region.
#![allow(unsafe_code)]

use nocturne_ipc::arena;
use nocturne_ipc::channel::{heap_pair, region_field as f, ChannelConfig};
use nocturne_ipc::message::{self, Header, HeaderView, PayloadLocation};
use nocturne_ipc::region::Region;
use nocturne_ipc::ring::{self, RingLayout};
use proptest::prelude::*;

const SLOTS: u32 = 8;
const SLOT_SIZE: u32 = 128;
const ARENA: u32 = 512;

fn cfg() -> ChannelConfig {
    ChannelConfig {
        ring_slots: SLOTS,
        slot_size: SLOT_SIZE,
        arena_bytes: ARENA,
    }
}

#[derive(Debug, Clone)]
struct Slot {
    seq_mode: u8,
    seq_raw: u64,
    placement: u16,
    len: u32,
    offset: u32,
    rest: Vec<u8>,
}

fn slot() -> impl Strategy<Value = Slot> {
    (
        0u8..3,
        any::<u64>(),
        prop_oneof![Just(0u16), Just(1u16), any::<u16>()],
        prop_oneof![0u32..=64, 0u32..=600, any::<u32>()],
        prop_oneof![Just(0u32), (0u32..10).prop_map(|g| g * 64), any::<u32>()],
        proptest::collection::vec(any::<u8>(), SLOT_SIZE as usize),
    )
        .prop_map(|(seq_mode, seq_raw, placement, len, offset, rest)| Slot {
            seq_mode,
            seq_raw,
            placement,
            len,
            offset,
            rest,
        })
}

fn read_u64(base: *const u8, off: usize) -> u64 {
    // SAFETY: callers pass offsets within the region header.
    unsafe { base.add(off).cast::<u64>().read() }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn receiver_and_sender_survive_garbage(
        slots in proptest::collection::vec(slot(), SLOTS as usize),
        arena_bytes in proptest::collection::vec(any::<u8>(), ARENA as usize),
        ring_release in prop_oneof![Just(0u64), 0u64..20, any::<u64>()],
        arena_release in prop_oneof![Just(0u64), (0u64..20).prop_map(|g| g * 64), any::<u64>()],
        batch in any::<bool>(),
        send_lens in proptest::collection::vec(0usize..=600, 1..12),
    ) {
        let (engine, worker) = heap_pair(&cfg());
        let base = engine.region().base();
        let region_len = engine.region().len();
        let req_ring = read_u64(base, f::REQ_RING) as usize;
        let req_arena = read_u64(base, f::REQ_ARENA) as usize;
        let layout = RingLayout::new(SLOTS, SLOT_SIZE).unwrap();
        let (mut tx, _resp_rx) = engine.split();
        let (_resp_tx, mut rx) = worker.split();

        // Garbage in the request ring's slots (the worker receives these).
        for (i, s) in slots.iter().enumerate() {
            let mut bytes = s.rest.clone();
            let seq = match s.seq_mode { 0 => i as u64 + 1, 1 => 0, _ => s.seq_raw };
            bytes[..8].copy_from_slice(&seq.to_le_bytes());
            let mut v = HeaderView::new_checked(&mut bytes[..]).unwrap();
            v.set_placement(s.placement);
            v.set_payload_len(s.len);
            v.set_arena_offset(s.offset);
            let off = req_ring + layout.slot_offset(i);
            // SAFETY: the slot lies within the region; no end is in use.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), base.add(off), bytes.len()) };
        }
        let data = req_arena + arena::data_offset(ARENA);
        // SAFETY: the arena data area and release words lie within the region.
        unsafe {
            std::ptr::copy_nonoverlapping(arena_bytes.as_ptr(), base.add(data), arena_bytes.len());
            base.add(req_ring + ring::RELEASE_OFFSET).cast::<u64>().write(ring_release);
            base.add(req_arena + arena::RELEASE_OFFSET).cast::<u64>().write(arena_release);
        }

        // Receive until nothing or an error; an error is sticky.
        let in_region = |p: &[u8]| {
            let start = p.as_ptr() as usize;
            start >= base as usize && start + p.len() <= base as usize + region_len
        };
        let mut got = 0;
        let mut failed = None;
        for _ in 0..3 * SLOTS {
            if batch {
                match rx.recv_batch(3, |h, p| {
                    assert!(in_region(p) || p.is_empty());
                    let _ = h;
                }) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) => { failed = Some(e); break; }
                }
            } else {
                match rx.try_recv() {
                    Ok(None) => break,
                    Ok(Some(m)) => {
                        prop_assert!(in_region(m.payload()) || m.payload().is_empty());
                        prop_assert!(m.payload().len() <= cfg().max_payload());
                        got += 1;
                    }
                    Err(e) => { failed = Some(e); break; }
                }
            }
        }
        prop_assert!(got <= SLOTS as usize);
        if let Some(e) = failed {
            prop_assert_eq!(rx.try_recv().err(), Some(e), "protocol errors are sticky");
            prop_assert!(!rx.is_empty());
        }

        // The sender reads the garbage release words: Ok or a typed error.
        for len in send_lens {
            let payload = vec![0xabu8; len];
            let _ = tx.try_send(&Header::default(), &payload);
        }
    }

    #[test]
    fn raw_garbage_region_body(body in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let (engine, worker) = heap_pair(&cfg());
        let base = engine.region().base();
        let n = body.len().min(engine.region().len() - 256);
        let (mut tx, _r) = engine.split();
        let (_t, mut rx) = worker.split();
        // SAFETY: everything after the 256-byte region header, within bounds.
        unsafe { std::ptr::copy_nonoverlapping(body.as_ptr(), base.add(256), n) };
        for _ in 0..2 * SLOTS {
            match rx.try_recv() {
                Ok(Some(m)) => prop_assert!(m.payload().len() <= cfg().max_payload()),
                Ok(None) | Err(_) => break,
            }
        }
        let _ = tx.try_send(&Header::default(), &[1; 300]);
        let _ = tx.try_send(&Header::default(), &[1; 30]);
    }

    #[test]
    fn header_decoder_total(bytes in proptest::collection::vec(any::<u8>(), 64)) {
        let view = HeaderView::new_checked(&bytes[..]).unwrap();
        match Header::parse(&view) {
            Ok((_, PayloadLocation::Inline { .. })) => prop_assert_eq!(view.placement(), 0),
            Ok((_, PayloadLocation::Arena { .. })) => prop_assert_eq!(view.placement(), 1),
            Err(message::HeaderError::BadPlacement(p)) => prop_assert!(p > 1),
            Err(e) => prop_assert!(matches!(e, message::HeaderError::StrayArenaOffset(_))),
        }
    }
}
