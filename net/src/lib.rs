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
//!                        └── (smoltcp over TAP/AF_PACKET: plugs in behind the same trait)
//! ```
//!
//! * [`transport`] — the [`Transport`] trait, connection
//!   ids and readiness events: the only thing the HTTP layer knows about the
//!   network.
//! * [`kernel`] — [`KernelTransport`]: non-blocking
//!   kernel sockets, `TCP_NODELAY`, bounded accepts per poll, extra wake-up
//!   fds (doorbells) in the same epoll.
//! * [`http`] — [`HttpServer`]: keep-alive, pipelining with
//!   in-order answers, chunked request bodies, `Expect: 100-continue`, header
//!   and body limits with lingering closes, slowloris and idle timeouts, a
//!   connection cap, backpressure on peers that don't read. No allocation per
//!   request once a connection's buffers have grown to its traffic.
//!
//! The crate depends on no other nocturne crate.

pub mod http;
pub mod kernel;
pub mod transport;

pub use http::{
    HttpServer, Limits, Method, Request, RequestHandler, RequestHead, RequestId, RespondError,
    Responder, Response,
};
pub use kernel::{KernelOptions, KernelTransport};
pub use transport::{ConnId, Transport, TransportEvent};
