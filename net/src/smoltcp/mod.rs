//! The userspace TCP transport: smoltcp over a TAP device or an AF_PACKET
//! socket, behind the same [`Transport`](crate::transport::Transport) trait
//! as the kernel one.
//!
//! ```text
//!  HttpServer ──read/write/poll──▶ SmoltcpTransport                (stack)
//!                                   │  frame ─▶ flow::classify ─▶ 4-tuple ─▶ that connection's
//!                                   │           one-socket SocketSet ─▶ smoltcp ingress
//!                                   │  write ─▶ smoltcp egress for that socket, at once
//!                                   │  timers: a heap of each socket's poll_at
//!                                   ▼
//!                                  FrameDevice (phy::Device, preallocated)   (device)
//!                                   ├── TAP queue        read/write per frame   (sys)
//!                                   └── AF_PACKET socket recvmsg/write per frame
//! ```
//!
//! * [`stack`] — [`SmoltcpTransport`]: one smoltcp `Interface` per core
//!   loop, a socket set per connection, bounded ingress per poll, write-
//!   through egress, the listener pool and connection cap, TIME-WAIT
//!   without sockets, one epoll for the device fd and the wake fds.
//! * `device` — the `phy::Device` with buffers allocated once, for both
//!   backends; completes checksums a veth left to an offload.
//! * `flow` — frame classification (the demultiplexer), the TIME-WAIT
//!   table, neighbour hints.
//! * [`options`] — [`SmoltcpOptions`], [`DeviceSpec`], [`Ipv4Cidr`],
//!   [`OpenError`].
//! * `sys` — the system calls (TUNSETIFF, AF_PACKET, ioctls, epoll); its
//!   TAP attach, interface index, socket option and packet-socket bind are
//!   re-exported, hidden, for the link impairer of the tests.
//!
//! Several core loops: each opens its own transport with the same options
//! and `queues` = the number of loops. A TAP is then opened as one queue of
//! a multi-queue TAP (`IFF_MULTI_QUEUE`), a packet socket joins a
//! `PACKET_FANOUT_HASH` group; the kernel keeps each flow on one queue, so
//! every loop owns its connections outright (shared nothing, same IP and
//! MAC on every loop).

mod device;
mod flow;
pub mod options;
pub mod stack;
mod sys;

pub use options::{DeviceSpec, Ipv4Cidr, OpenError, ParseCidrError, SmoltcpOptions};
pub use stack::{SmoltcpStats, SmoltcpTransport};
// For the link impairer under net/tests/netns (a test and an example include
// it), which opens its TAP and packet socket with the same calls.
#[doc(hidden)]
pub use sys::{attach_tap_queue, bind_packet_socket, interface_index, set_int_option};
