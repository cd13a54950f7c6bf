//! nocturne-engine: the engine that runs functions.
//!
//! ```text
//!            ┌────────────── engine process ───────────────┐
//!  client ──▶│ core loop (pinned thread, one per io core)   │──ring──▶ worker process
//!   HTTP     │  HttpServer ─▶ routes ─▶ dispatch ─▶ calls    │◀─ring─── (one per function instance)
//!            │      ▲                      │  ▲             │
//!            │      └──── completions ◀────┘  └─ workers ◀──│── spawner threads (fork/exec, handshake)
//!            └──────────────────────────────────────────────┘
//! ```
//!
//! * [`cli`], [`config`] — `nocturne serve` flags and `nocturne.toml`, resolved
//!   into one validated [`config::Config`].
//! * [`engine`] — start/stop: binding, one pinned thread per core loop, signals.
//! * `fd_limit` — the open-files limit raised for, or fitted to, `max_connections`.
//! * [`error_report`] — the one line `nocturne` prints for a failed command.
//! * `core_loop` — a core loop's turn: network, rings, workers, timers; routes,
//!   dispatch, the call table, the mailbox between loops (calls of a
//!   function a loop has no workers of) and the loop's wake board (seats for
//!   its yielding workers, whose wake-ups a worker awake on their core does)
//!   live under it.
//! * [`limiter`] — the Little's-law concurrency limit per function.
//! * [`logger`] — the engine's log: a queue to a writer thread, so that no
//!   core loop ever waits for stderr.
//! * [`worker`] — worker processes: spawn, handshake, pidfd, logs, back-off.
//! * [`status`] — counters behind `/healthz` and `/system/functions`.
//! * [`slab`] — generational keys for calls and workers.
//! * `sys` — eventfds, signal masks, the open-files limit.

pub mod cli;
pub mod config;
mod core_loop;
pub mod engine;
pub mod error_report;
mod fd_limit;
pub mod limiter;
pub mod logger;
pub mod slab;
pub mod status;
mod sys;
pub mod worker;

pub use engine::{serve, Engine};
