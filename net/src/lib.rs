//! nocturne-net: the network side of a nocturne core loop — byte-stream
//! transports and the HTTP/1.1 server on top of them.
//!
//! ```text
//!  core loop turn ──▶ http::HttpServer::poll(timeout, budget, handler)
//!                        │  per connection: input buffer ─▶ parse (httparse, zero-copy)
//!                        │                  ─▶ RequestHandler::on_request(Request view, Responder)
//!                        │                  ◀─ respond(id, Response) (now or later, kept in order)
//!                        │                  output buffer ─▶ write
//!                        ▼
//!                    transport::Transport  (poll / read / write / shutdown_write / close)
//!                        ├── kernel::KernelTransport   mio + epoll, SO_REUSEPORT listener per loop
//!                        └── smoltcp::SmoltcpTransport  userspace TCP (smoltcp) over a TAP queue
//!                                                       or an AF_PACKET socket, one per loop
//! ```
//!
//! * [`transport`] — the [`Transport`] trait, connection
//!   ids and readiness events: the only thing the HTTP layer knows about the
//!   network.
//! * [`kernel`] — [`KernelTransport`]: non-blocking
//!   kernel sockets, `TCP_NODELAY`, bounded accepts per poll, extra wake-up
//!   fds (doorbells) in the same epoll.
//! * [`smoltcp`] — [`SmoltcpTransport`]: smoltcp
//!   with a socket set per connection (no scan per segment), our own
//!   preallocated TAP/AF_PACKET device, write-through egress, a listener
//!   refilled per SYN, TIME-WAIT without sockets, the device fd and wake fds
//!   in one epoll. See `docs/userspace-networking.md`.
//! * [`http`] — [`HttpServer`]: keep-alive, pipelining with
//!   in-order answers, chunked request bodies, `Expect: 100-continue`, header
//!   and body limits with lingering closes, slowloris and idle timeouts, a
//!   connection cap, backpressure on peers that don't read. No allocation per
//!   request once a connection's buffers have grown to its traffic.
//!
//! * `id_hash` — the one-multiply hasher of the connection and flow tables.
//!
//! The crate depends on no other nocturne crate.

pub mod http;
mod id_hash;
pub mod kernel;
pub mod smoltcp;
pub mod transport;

pub use http::{
    ConnectionLimit, EarlyAnswer, HttpServer, Limits, Method, Request, RequestHandler, RequestHead,
    RequestId, RespondError, Responder, Response,
};
pub use kernel::{KernelOptions, KernelTransport};
// `self::`: the module, not the smoltcp crate it wraps.
pub use self::smoltcp::{DeviceSpec, Ipv4Cidr, SmoltcpOptions, SmoltcpTransport};
pub use transport::{ConnId, Transport, TransportEvent};
