//! The byte-stream transport seam between a core loop's network stack and the
//! HTTP layer.
//!
//! A [`Transport`] owns the listening socket(s) and every accepted connection
//! of one core loop and is polled by that loop alone: it accepts, reports
//! readiness as [`TransportEvent`]s and moves bytes. The HTTP layer
//! ([`crate::http::HttpServer`]) is generic over it and never learns whether
//! the bytes travel through kernel sockets ([`crate::kernel::KernelTransport`])
//! or a userspace TCP stack.
//!
//! Readiness is *edge-triggered*: after a `Readable(id)` the consumer reads
//! until `read` returns [`io::ErrorKind::WouldBlock`] (or EOF); only then is
//! another `Readable(id)` guaranteed when more bytes arrive. The same holds for
//! `Writable` and `write`. A consumer that stops early must remember that the
//! connection is still ready.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

/// Identifies one connection of one transport.
///
/// Unique for the life of the transport: a closed connection's id is not
/// handed out again soon (the kernel transport packs a slot index with a
/// per-slot generation), so a stale id held by a late responder refers to
/// nothing rather than to a stranger's connection.
pub type ConnId = u64;

/// What a [`Transport::poll`] observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransportEvent {
    /// A new connection was accepted. It may already have bytes to read.
    Accepted(ConnId),
    /// The connection may have bytes to read, or has reached EOF or an error:
    /// [`Transport::read`] tells which.
    Readable(ConnId),
    /// The connection may accept more bytes.
    Writable(ConnId),
    /// The transport itself tore the connection down (e.g. a userspace stack
    /// timed it out); the id is already dead. The kernel transport reports
    /// peer closes and errors through `read`/`write` instead.
    Closed(ConnId),
    /// A registered extra file descriptor (a doorbell, a pidfd) became
    /// readable; carries the caller's token.
    Wake(usize),
}

/// A non-blocking byte-stream transport polled by one core loop.
pub trait Transport {
    /// Bounded work: waits at most `timeout` (`None`: until something
    /// happens) for readiness, accepts new connections (a bounded number per
    /// call) and appends what happened to `events`.
    fn poll(
        &mut self,
        timeout: Option<Duration>,
        events: &mut Vec<TransportEvent>,
    ) -> io::Result<()>;

    /// Reads ready bytes. `Ok(0)` is EOF (for a non-empty `buf`);
    /// `WouldBlock` means nothing more until the next `Readable`;
    /// `NotConnected` means the id is unknown (closed).
    fn read(&mut self, conn: ConnId, buf: &mut [u8]) -> io::Result<usize>;

    /// Whether a `read` that returned fewer bytes than its buffer held left
    /// nothing to read until the next `Readable`, so the caller may skip the
    /// read that would only say `WouldBlock` (a system call per request on
    /// the kernel transport). `false`, the default, is always correct.
    fn short_read_drains(&self, conn: ConnId) -> bool {
        let _ = conn;
        false
    }

    /// Writes some of `bytes` (a partial write is normal); `WouldBlock` means
    /// wait for `Writable`; `NotConnected` means the id is unknown (closed).
    fn write(&mut self, conn: ConnId, bytes: &[u8]) -> io::Result<usize>;

    /// Sends FIN but keeps reading possible: the first half of a lingering
    /// close, so that the peer reads everything written before the FIN
    /// instead of a reset. Unknown ids are ignored.
    fn shutdown_write(&mut self, conn: ConnId);

    /// Releases the connection now. Unknown ids are ignored.
    fn close(&mut self, conn: ConnId);

    /// The address the transport listens on (with the real port when bound
    /// to port 0).
    fn local_addr(&self) -> SocketAddr;

    /// Registers an extra file descriptor (the core loop's eventfd doorbell,
    /// a worker's pidfd) in the set the transport sleeps on, so one wait
    /// covers the network and everything else; its readiness comes back as
    /// [`TransportEvent::Wake`]`(token)`. Edge-triggered: drain the fd on
    /// every `Wake`. The fd must stay open until it is deregistered.
    fn register_wake_fd(&mut self, fd: RawFd, token: usize) -> io::Result<()>;

    /// Removes a file descriptor added by
    /// [`register_wake_fd`](Self::register_wake_fd).
    fn deregister_wake_fd(&mut self, fd: RawFd) -> io::Result<()>;

    /// Stops accepting connections (graceful shutdown): new connects are
    /// refused, open connections keep working.
    fn stop_accepting(&mut self);

    /// The last step of a shutdown: closes every connection (FIN), gives the
    /// peers up to `grace` to finish the exchange, and resets what is left,
    /// so no client is left waiting on a connection nobody serves. The
    /// default does nothing: a kernel socket closed by its owner (or by the
    /// process exiting) is finished by the kernel.
    fn close_all(&mut self, grace: Duration) {
        let _ = grace;
    }
}
