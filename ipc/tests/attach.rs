//! The worker side refuses every region it cannot trust: unsealed, too small,
//! or with any layout field that is not what the geometry dictates.
#![allow(unsafe_code)]

use nocturne_ipc::channel::{region_field as f, ChannelConfig, ChannelError, EngineEnd, WorkerEnd};
use nocturne_ipc::region::{MemfdRegion, Region, RegionError};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

fn cfg() -> ChannelConfig {
    ChannelConfig {
        ring_slots: 8,
        slot_size: 128,
        arena_bytes: 1024,
    }
}

fn dup(r: &MemfdRegion) -> OwnedFd {
    r.fd().try_clone_to_owned().unwrap()
}

fn eventfd() -> OwnedFd {
    // SAFETY: eventfd(2) with valid flags; the result is checked and owned.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Writes `bytes` at `off` of the region, attaches a copy of its fd, then
/// restores the old bytes.
fn attach_with_patch(
    end: &EngineEnd<MemfdRegion>,
    off: usize,
    bytes: &[u8],
) -> Result<(), ChannelError> {
    let base = end.region().base();
    let mut old = vec![0u8; bytes.len()];
    // SAFETY: `off + len` is within the region (the callers use header and
    // section offsets); nobody else touches the region during the test.
    unsafe {
        std::ptr::copy_nonoverlapping(base.add(off), old.as_mut_ptr(), bytes.len());
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), base.add(off), bytes.len());
    }
    let r = WorkerEnd::attach(dup(end.region())).map(drop);
    // SAFETY: as above.
    unsafe { std::ptr::copy_nonoverlapping(old.as_ptr(), base.add(off), bytes.len()) };
    r
}

fn read_u64(end: &EngineEnd<MemfdRegion>, off: usize) -> u64 {
    // SAFETY: within the region header.
    unsafe { end.region().base().add(off).cast::<u64>().read() }
}

#[test]
fn refuses_unsealed_memfd() {
    let region = MemfdRegion::create("unsealed", cfg().region_len()).unwrap();
    let end = EngineEnd::create_in(region, &cfg(), None).unwrap();
    let e = WorkerEnd::attach(dup(end.region())).err().unwrap();
    assert!(
        matches!(e, ChannelError::Region(RegionError::NotSealed { .. })),
        "{e}"
    );
}

#[test]
fn refuses_too_small_memfds() {
    for len in [100, 4096] {
        let region = MemfdRegion::create("small", len).unwrap();
        region.seal().unwrap();
        match WorkerEnd::attach(dup(&region)) {
            Err(ChannelError::TooSmall { found, need: 256 }) if len == 100 => {
                assert_eq!(found, 100)
            }
            // 4096 bytes of zeros: big enough for a header, but not a channel.
            Err(ChannelError::BadMagic(0)) if len == 4096 => {}
            other => panic!("len {len}: {:?}", other.map(drop)),
        }
    }
    // A valid header copied into a region shorter than the layout needs.
    let good = EngineEnd::create(&cfg(), "good").unwrap();
    let short = MemfdRegion::create("short", 4096).unwrap();
    // SAFETY: copies the 256-byte header between two live mappings.
    unsafe { std::ptr::copy_nonoverlapping(good.region().base(), short.base(), 256) };
    // Make the header's length agree with the short region: then the layout
    // check is what refuses it.
    // SAFETY: within the header.
    unsafe { short.base().add(f::REGION_LEN).cast::<u64>().write(4096) };
    short.seal().unwrap();
    let e = WorkerEnd::attach(dup(&short)).err().unwrap();
    assert!(
        matches!(e, ChannelError::TooSmall { found: 4096, .. }),
        "{e}"
    );
}

#[test]
fn refuses_every_bad_layout_field() {
    let end = EngineEnd::create(&cfg(), "fields").unwrap();
    assert!(
        attach_with_patch(&end, 0, &[]).is_ok(),
        "the untouched region attaches"
    );
    let len = end.region().len() as u64;
    let req_ring = read_u64(&end, f::REQ_RING) as usize;
    let resp_arena = read_u64(&end, f::RESP_ARENA) as usize;
    let cases: Vec<(&str, usize, Vec<u8>)> = vec![
        ("magic", f::MAGIC, b"NOTNOCT!".to_vec()),
        ("version", f::VERSION, 1u32.to_le_bytes().to_vec()),
        ("flags", f::FLAGS, 0x80u32.to_le_bytes().to_vec()),
        (
            "region len",
            f::REGION_LEN,
            (len + 4096).to_le_bytes().to_vec(),
        ),
        (
            "slots not a power of two",
            f::RING_SLOTS,
            6u32.to_le_bytes().to_vec(),
        ),
        (
            "more slots than fit",
            f::RING_SLOTS,
            (1u32 << 16).to_le_bytes().to_vec(),
        ),
        ("slot size", f::SLOT_SIZE, 100u32.to_le_bytes().to_vec()),
        ("arena size", f::ARENA_BYTES, 1000u32.to_le_bytes().to_vec()),
        (
            "request ring offset",
            f::REQ_RING,
            384u64.to_le_bytes().to_vec(),
        ),
        (
            "response ring offset",
            f::RESP_RING,
            u64::MAX.to_le_bytes().to_vec(),
        ),
        (
            "request arena offset",
            f::REQ_ARENA,
            0u64.to_le_bytes().to_vec(),
        ),
        (
            "response arena offset",
            f::RESP_ARENA,
            (len - 8).to_le_bytes().to_vec(),
        ),
        ("ring magic", req_ring, 0u32.to_le_bytes().to_vec()),
        (
            "ring slot size",
            req_ring + 8,
            256u32.to_le_bytes().to_vec(),
        ),
        (
            "arena size field",
            resp_arena + 8,
            64u32.to_le_bytes().to_vec(),
        ),
    ];
    for (name, off, bytes) in cases {
        let e = attach_with_patch(&end, off, &bytes)
            .err()
            .unwrap_or_else(|| panic!("{name} accepted"));
        let ok = match name {
            "magic" => matches!(e, ChannelError::BadMagic(_)),
            "version" => matches!(e, ChannelError::BadVersion(1)),
            "flags" => matches!(e, ChannelError::UnknownFlags(0x80)),
            "region len" => matches!(e, ChannelError::LengthMismatch { .. }),
            "more slots than fit" => matches!(e, ChannelError::TooSmall { .. }),
            "slots not a power of two" | "slot size" | "arena size" => {
                matches!(e, ChannelError::Config(_))
            }
            "ring magic" | "ring slot size" => matches!(e, ChannelError::Ring { .. }),
            "arena size field" => matches!(e, ChannelError::Arena { .. }),
            _ => matches!(e, ChannelError::BadOffset { .. }),
        };
        assert!(ok, "{name}: unexpected {e}");
    }
    assert!(
        attach_with_patch(&end, 0, &[]).is_ok(),
        "restored region attaches again"
    );
}

#[test]
fn doorbell_flavour_must_match() {
    let efd = eventfd();
    let with = EngineEnd::create_with_eventfd(&cfg(), "efd", efd.as_fd()).unwrap();
    let e = WorkerEnd::attach(dup(with.region())).err().unwrap();
    assert!(
        matches!(
            e,
            ChannelError::DoorbellMismatch {
                region: "eventfd",
                attach: "futex"
            }
        ),
        "{e}"
    );
    assert!(WorkerEnd::attach_with_eventfd(dup(with.region()), eventfd()).is_ok());
    let without = EngineEnd::create(&cfg(), "futex").unwrap();
    let e = WorkerEnd::attach_with_eventfd(dup(without.region()), eventfd())
        .err()
        .unwrap();
    assert!(
        matches!(
            e,
            ChannelError::DoorbellMismatch {
                region: "futex",
                attach: "eventfd"
            }
        ),
        "{e}"
    );
    // The engine keeps its own duplicate of the eventfd.
    assert_ne!(efd.as_raw_fd(), -1);
}

#[test]
fn eventfd_doorbell_wakes_the_engine() {
    use nocturne_ipc::channel::{WaitOutcome, WaitPolicy};
    use nocturne_ipc::message::Header;
    use std::time::Duration;
    let efd = eventfd();
    let engine = EngineEnd::create_with_eventfd(&cfg(), "efd", efd.as_fd()).unwrap();
    let worker =
        WorkerEnd::attach_with_eventfd(dup(engine.region()), efd.try_clone().unwrap()).unwrap();
    let (_req_tx, mut resp_rx) = engine.split();
    let (mut resp_tx, _req_rx) = worker.split();
    // The engine announces sleep (as before an epoll_wait); the worker's send
    // must make the eventfd readable.
    assert!(resp_rx.arm_sleep());
    resp_tx.try_send(&Header::default(), b"hi").unwrap();
    let mut pfd = libc::pollfd {
        fd: efd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    assert_eq!(unsafe { libc::poll(&mut pfd, 1, 5000) }, 1);
    resp_rx.disarm_sleep();
    // Without the announcement, no eventfd write happens (drain it first).
    let mut v = 0u64;
    // SAFETY: reads 8 bytes into a live u64 from a readable eventfd.
    let n = unsafe { libc::read(efd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    assert_eq!(n, 8);
    resp_tx.try_send(&Header::default(), b"again").unwrap();
    // SAFETY: one live pollfd.
    let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
    assert_eq!(ready, 0, "no wake when the engine did not sleep");
    assert_eq!(resp_rx.recv_batch(10, |_, _| {}).unwrap(), 2);
    // Receiver::wait parks on the eventfd and is woken by another thread.
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        resp_tx.try_send(&Header::default(), b"late").unwrap();
        resp_tx
    });
    let policy = WaitPolicy::Park {
        spin: Duration::ZERO,
    };
    assert_eq!(
        resp_rx.wait(&policy, Some(Duration::from_secs(10))),
        WaitOutcome::Ready
    );
    assert_eq!(resp_rx.try_recv().unwrap().unwrap().payload(), b"late");
    t.join().unwrap();
}
