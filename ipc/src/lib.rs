//! nocturne-ipc: shared-memory channels between the engine and its workers.
//!
//! Layers, bottom up (data flows engine → worker on the request ring and
//! worker → engine on the response ring, each direction with its own arena):
//!
//! * [`region`] — the bytes: a sealed `memfd` mapped `MAP_SHARED`
//!   ([`region::MemfdRegion`]) or a heap allocation for tests
//!   ([`region::HeapRegion`]), behind the [`region::Region`] trait.
//! * [`fdpass`] — handing a region's memfd (and an eventfd) to the worker over
//!   a unix socket with `SCM_RIGHTS`.
//! * [`message`] — the wire format of the 64-byte message header that opens
//!   every slot: a checked view ([`message::HeaderView`]) and the parsed
//!   [`message::Header`] with parse/emit.
//! * [`ring`] — the lock-free SPSC ring of fixed-size slots, each carrying its
//!   own sequence word, with distinct [`ring::Producer`] / [`ring::Consumer`].
//! * [`arena`] — the per-direction byte ring for payloads larger than a slot.
//! * [`doorbell`] — the sleep word, the wait policies ([`doorbell::WaitPolicy`])
//!   and the futex/eventfd wake-up that cannot be lost.
//! * [`contention`] — when a yielding waiter should sleep instead: its yields
//!   come back a scheduler tick late beside a CPU-bound thread.
//! * [`channel`] — all of the above in one region: [`channel::EngineEnd`]
//!   creates it, [`channel::WorkerEnd`] attaches from the received fd, and each
//!   splits into a [`channel::Sender`] and a [`channel::Receiver`].
//!
//! Beside the channels: [`wake_board`] — doorbell words of consumers that
//! share a core, so that one awake there can do a producer's wake-up on the
//! sleeper's own core (a channel's ends take a [`wake_board::WakeSeat`]);
//! [`wake_gate`] — whether a consumer that sleeps in `epoll` must be woken
//! after a post into an in-process queue (the core loops' mailboxes), so
//! that posting to a spinning consumer costs no system call; and
//! [`open_files`] — raising the open-files limit every region, doorbell and
//! socket counts against (the engine's and the benchmarks' one way to); and
//! [`duration`] — the duration literals (`250us`, `1m30s`) that `serve` and
//! every bench read alike.
//!
//! `copy` (private) copies short payloads into a slot without a `memcpy`
//! call. `sync` (private) is the facade through which every atomic, fence,
//! yield and futex goes, so the same code runs under loom
//! (`RUSTFLAGS="--cfg loom" cargo test --release -p nocturne-ipc --lib -- loom`).
//!
//! Everything read from shared memory is untrusted: a bad value from the peer
//! is a typed error, never a panic or undefined behaviour. Byte layouts and
//! the wake-up argument: `docs/ipc.md`.
#![cfg_attr(not(test), warn(missing_docs))]

pub mod arena;
pub mod channel;
pub mod contention;
mod copy;
pub mod doorbell;
pub mod duration;
pub mod fdpass;
pub mod message;
pub mod open_files;
pub mod region;
pub mod ring;
mod sync;
pub mod wake_board;
pub mod wake_gate;

#[cfg(all(test, loom))]
mod loom_tests;

pub use channel::{
    heap_pair, ChannelConfig, ChannelError, EngineEnd, MessageView, Receiver, RecvError, SendError,
    Sender, WorkerEnd,
};
pub use contention::YieldContention;
pub use doorbell::{WaitOutcome, WaitPolicy};
pub use message::{Header, Kind};
pub use wake_gate::WakeGate;
