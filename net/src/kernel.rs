//! The kernel transport: non-blocking kernel TCP sockets multiplexed by one
//! edge-triggered epoll instance (mio), one per core loop.
//!
//! Every core loop binds its own listener to the same address with
//! `SO_REUSEPORT`, so the kernel spreads incoming connections across the
//! loops and no accept queue is shared. Accepted sockets get `TCP_NODELAY`
//! (a µs-scale RPC cannot wait for Nagle). Work per [`Transport::poll`] is
//! bounded: at most `max_events` readiness events and `accept_budget` accepts;
//! a listener with connections left over is remembered and drained on the
//! next poll without sleeping, because an edge-triggered listener would not
//! report them again.
//!
//! Out of file descriptors, `accept` fails while connections wait in the
//! backlog, and their edge has been reported already: they would wait there
//! unanswered. The transport holds one spare descriptor for that case: it
//! frees it, accepts each waiting connection and closes it at once (its
//! client sees the connection end instead of a hang), takes the spare back
//! and says so in the log. (libuv does the same.) The engine sizes
//! `max_connections` to the open-files limit, so this is a last resort.
//!
//! Connection ids are `generation << 32 | slot`: the slot table is reused, the
//! generation makes a stale id (and a stale epoll event still queued for a
//! closed socket) miss instead of hitting the socket that took its slot. The
//! id doubles as the epoll token; the listener and the extra wake-up file
//! descriptors use tokens with the top bits set.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};

use crate::transport::{ConnId, Transport, TransportEvent};

/// Token of the listening socket.
const LISTENER_TOKEN: usize = 1 << 62;
/// Tokens with this bit set carry a caller's wake token in the low bits.
const WAKE_BIT: usize = 1 << 63;
/// Wake tokens must stay clear of the two bits above.
const MAX_WAKE_TOKEN: usize = LISTENER_TOKEN - 1;
/// Generations stay below 2^29 so that a connection id (and thus its token)
/// never touches the listener or wake bits.
const GENERATION_MASK: u32 = (1 << 29) - 1;

/// Settings of a [`KernelTransport`].
#[derive(Clone, Debug)]
pub struct KernelOptions {
    /// `listen(2)` backlog.
    pub backlog: i32,
    /// Readiness events collected per poll at most.
    pub max_events: usize,
    /// Connections accepted per poll at most; the rest wait for the next poll.
    pub accept_budget: usize,
    /// Set `TCP_NODELAY` on accepted sockets.
    pub nodelay: bool,
}

impl Default for KernelOptions {
    fn default() -> Self {
        Self {
            backlog: 1024,
            max_events: 1024,
            accept_budget: 64,
            nodelay: true,
        }
    }
}

struct Slot {
    generation: u32,
    stream: Option<TcpStream>,
    /// epoll reported the peer's FIN, a hang-up or an error: reads go on
    /// until `read` says which (see [`Transport::short_read_drains`]).
    read_closed: bool,
}

impl Slot {
    /// Whether this slot holds the open connection of `generation`.
    fn holds(&self, generation: u32) -> bool {
        self.generation == generation && self.stream.is_some()
    }
}

/// Kernel TCP sockets behind an edge-triggered mio `Poll`: one `SO_REUSEPORT`
/// listener plus the connections it accepted.
pub struct KernelTransport {
    poll: Poll,
    mio_events: Events,
    /// `None` once [`Transport::stop_accepting`] closed it.
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    /// The listener reported readiness and may still hold connections.
    accept_pending: bool,
    accept_budget: usize,
    nodelay: bool,
    open: usize,
    /// A descriptor kept free for closing the backlog when out of them.
    spare_fd: Option<File>,
    /// Connections closed unanswered for want of descriptors, all told.
    shed: u64,
    /// When the log last said so (at most once a second).
    shed_logged: Option<Instant>,
}

/// What stands in for a descriptor kept free.
fn spare_fd() -> Option<File> {
    File::open("/dev/null").ok()
}

impl KernelTransport {
    /// Binds a listener to `addr` with `SO_REUSEADDR` and `SO_REUSEPORT`, so
    /// that the transports of N core loops can bind the same address and
    /// port. Port 0 picks an ephemeral port; [`Transport::local_addr`] then
    /// reports it (bind the other loops to that address).
    pub fn bind(addr: SocketAddr, opts: &KernelOptions) -> io::Result<Self> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(opts.backlog)?;
        let mut listener = TcpListener::from_std(socket.into());
        let local_addr = listener.local_addr()?;
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, Token(LISTENER_TOKEN), Interest::READABLE)?;
        Ok(Self {
            poll,
            mio_events: Events::with_capacity(opts.max_events.max(1)),
            listener: Some(listener),
            local_addr,
            slots: Vec::new(),
            free_slots: Vec::new(),
            accept_pending: false,
            accept_budget: opts.accept_budget.max(1),
            nodelay: opts.nodelay,
            open: 0,
            spare_fd: spare_fd(),
            shed: 0,
            shed_logged: None,
        })
    }

    /// Binds `count` listeners sharing `addr` (one per core loop), after
    /// checking that nothing listens there yet: `AddrInUse` if something
    /// does. Port 0 picks a free port for the first; the others join it.
    ///
    /// `SO_REUSEPORT`, which lets the loops share the port, would let a
    /// second engine (or any process of the same user that sets it) share it
    /// too, and the kernel would then split connections between them. The
    /// check binds a socket without it first, which such a listener refuses.
    /// (A process that binds in the moment between the check and the bind
    /// is not caught.)
    pub fn bind_group(
        addr: SocketAddr,
        count: usize,
        opts: &KernelOptions,
    ) -> io::Result<Vec<Self>> {
        if addr.port() != 0 {
            let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            // Connections of an earlier run in TIME_WAIT do not hold the port.
            probe.set_reuse_address(true)?;
            probe.bind(&addr.into())?;
        }
        let first = Self::bind(addr, opts)?;
        let addr = first.local_addr;
        let mut group = vec![first];
        for _ in 1..count {
            group.push(Self::bind(addr, opts)?);
        }
        Ok(group)
    }

    /// Open connections (accepted and not yet closed).
    pub fn connection_count(&self) -> usize {
        self.open
    }

    /// Connections closed unanswered because the process was out of file
    /// descriptors when they arrived.
    pub fn shed_connections(&self) -> u64 {
        self.shed
    }

    /// The slot of open connection `conn` (`None`: unknown or closed).
    fn live_slot(&self, conn: ConnId) -> Option<&Slot> {
        let (index, generation) = split_id(conn);
        self.slots.get(index).filter(|s| s.holds(generation))
    }

    fn stream(&self, conn: ConnId) -> io::Result<&TcpStream> {
        self.live_slot(conn)
            .and_then(|s| s.stream.as_ref())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }

    /// Accepts up to `accept_budget` connections; leaves `accept_pending`
    /// set when the budget ran out first.
    fn accept_some(&mut self, events: &mut Vec<TransportEvent>) -> io::Result<()> {
        let Some(listener) = &self.listener else {
            self.accept_pending = false;
            return Ok(());
        };
        for _ in 0..self.accept_budget {
            let mut stream = match listener.accept() {
                Ok((stream, _peer)) => stream,
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock => {
                        self.accept_pending = false;
                        return Ok(());
                    }
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => continue,
                    _ if is_accept_fatal(&e) => return Err(e),
                    _ if is_out_of_fds(&e) => {
                        self.shed_backlog(&e);
                        return Ok(());
                    }
                    // Out of memory, or a protocol error of one connection:
                    // stop for now; the next connection's edge brings us back.
                    _ => {
                        self.accept_pending = false;
                        return Ok(());
                    }
                },
            };
            if self.nodelay {
                // A socket that refuses NODELAY still works, only slower.
                let _ = stream.set_nodelay(true);
            }
            let index = match self.free_slots.pop() {
                Some(index) => index as usize,
                None => {
                    if self.slots.len() >= u32::MAX as usize {
                        continue; // dropped: closes the socket
                    }
                    self.slots.push(Slot {
                        generation: 1,
                        stream: None,
                        read_closed: false,
                    });
                    self.slots.len() - 1
                }
            };
            let id = make_id(index, self.slots[index].generation);
            if self
                .poll
                .registry()
                .register(
                    &mut stream,
                    Token(id as usize),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
            {
                self.free_slots.push(index as u32);
                continue;
            }
            self.slots[index].stream = Some(stream);
            self.slots[index].read_closed = false;
            self.open += 1;
            events.push(TransportEvent::Accepted(id));
        }
        Ok(())
    }

    /// Out of descriptors (`why`): closes the connections waiting in the
    /// backlog (up to the accept budget; the rest on the next poll) through
    /// the spare descriptor, then takes the spare back.
    fn shed_backlog(&mut self, why: &io::Error) {
        // Unless the budget runs out below, the next connection's edge
        // brings the loop back (also when there is no spare to shed with).
        self.accept_pending = false;
        let Some(listener) = &self.listener else {
            return;
        };
        // Without a spare (all taken when it was last given up), there may
        // be room again by now.
        let Some(spare) = self.spare_fd.take().or_else(spare_fd) else {
            return;
        };
        drop(spare);
        let mut shed = 0u64;
        // A flood refills the backlog as fast as it is shed: bounded like
        // accepting, and resumed on the next poll.
        let mut budget_spent = true;
        for _ in 0..self.accept_budget {
            match listener.accept() {
                // Dropped: closed unanswered.
                Ok(_) => shed += 1,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                // WouldBlock (the backlog is empty), or another thread took
                // the freed descriptor: what is left waits for the next edge.
                Err(_) => {
                    budget_spent = false;
                    break;
                }
            }
        }
        self.accept_pending = budget_spent;
        self.spare_fd = spare_fd();
        self.shed += shed;
        let now = Instant::now();
        if shed > 0
            && self
                .shed_logged
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.shed_logged = Some(now);
            log::info!(
                "nocturne-net: cannot accept on {}: {why}; closed {shed} waiting connection(s) \
                 unanswered ({} so far): raise the open-files limit or lower max_connections",
                self.local_addr,
                self.shed
            );
        }
    }
}

impl Transport for KernelTransport {
    fn poll(
        &mut self,
        timeout: Option<Duration>,
        events: &mut Vec<TransportEvent>,
    ) -> io::Result<()> {
        // Connections left in the backlog by the accept budget produce no new
        // edge: don't sleep on them.
        let timeout = if self.accept_pending {
            Some(Duration::ZERO)
        } else {
            timeout
        };
        match self.poll.poll(&mut self.mio_events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        for event in self.mio_events.iter() {
            let token = event.token().0;
            if token == LISTENER_TOKEN {
                self.accept_pending = true;
                continue;
            }
            if token & WAKE_BIT != 0 {
                events.push(TransportEvent::Wake(token & !WAKE_BIT));
                continue;
            }
            let id = token as ConnId;
            let (index, generation) = split_id(id);
            let Some(slot) = self.slots.get_mut(index).filter(|s| s.holds(generation)) else {
                continue; // queued for a socket closed earlier in this turn
            };
            // EOF, hang-up and socket errors are all discovered by `read`.
            if event.is_read_closed() || event.is_error() {
                slot.read_closed = true;
            }
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                events.push(TransportEvent::Readable(id));
            }
            if event.is_writable() {
                events.push(TransportEvent::Writable(id));
            }
        }
        if self.accept_pending {
            self.accept_some(events)?;
        }
        Ok(())
    }

    fn read(&mut self, conn: ConnId, buf: &mut [u8]) -> io::Result<usize> {
        let mut stream = self.stream(conn)?;
        loop {
            match stream.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    /// Edge-triggered epoll signals every arrival after the `epoll_wait`
    /// that reported the last one, so a read that did not fill its buffer
    /// emptied the socket: the next bytes bring a new `Readable`. The one
    /// exception is a FIN that came with the data under the same edge: once
    /// epoll has said the peer closed, reads go on until EOF.
    fn short_read_drains(&self, conn: ConnId) -> bool {
        self.live_slot(conn).is_some_and(|s| !s.read_closed)
    }

    fn write(&mut self, conn: ConnId, bytes: &[u8]) -> io::Result<usize> {
        let mut stream = self.stream(conn)?;
        loop {
            match stream.write(bytes) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    fn shutdown_write(&mut self, conn: ConnId) {
        if let Ok(stream) = self.stream(conn) {
            // ENOTCONN after a peer reset is fine: nothing left to flush.
            let _ = stream.shutdown(Shutdown::Write);
        }
    }

    fn close(&mut self, conn: ConnId) {
        let (index, generation) = split_id(conn);
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        if slot.generation != generation {
            return;
        }
        let Some(mut stream) = slot.stream.take() else {
            return;
        };
        // Dropping the socket removes it from epoll anyway; deregistering
        // first keeps mio's bookkeeping exact.
        let _ = self.poll.registry().deregister(&mut stream);
        drop(stream);
        slot.generation = (slot.generation + 1) & GENERATION_MASK;
        if slot.generation == 0 {
            slot.generation = 1;
        }
        self.free_slots.push(index as u32);
        self.open -= 1;
    }

    /// Registers an extra file descriptor (the core loop's eventfd doorbell,
    /// a worker's pidfd) in the same epoll; its readiness comes back as
    /// [`TransportEvent::Wake`]`(token)`.
    ///
    /// Edge-triggered like everything else: drain the fd (read the eventfd)
    /// on every `Wake`, or no further `Wake` comes for it. `token` must be
    /// below 2^62. The fd must stay open until
    /// [`deregister_wake_fd`](Self::deregister_wake_fd).
    fn register_wake_fd(&mut self, fd: RawFd, token: usize) -> io::Result<()> {
        if token > MAX_WAKE_TOKEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "wake token must be below 2^62",
            ));
        }
        self.poll.registry().register(
            &mut SourceFd(&fd),
            Token(WAKE_BIT | token),
            Interest::READABLE,
        )
    }

    /// Removes a file descriptor added by
    /// [`register_wake_fd`](Self::register_wake_fd).
    fn deregister_wake_fd(&mut self, fd: RawFd) -> io::Result<()> {
        self.poll.registry().deregister(&mut SourceFd(&fd))
    }

    fn stop_accepting(&mut self) {
        if let Some(mut listener) = self.listener.take() {
            // Closing the socket makes new connects fail (refused) instead of
            // waiting in a backlog nobody drains.
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.accept_pending = false;
    }

    fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

fn make_id(index: usize, generation: u32) -> ConnId {
    (u64::from(generation) << 32) | index as u64
}

fn split_id(id: ConnId) -> (usize, u32) {
    ((id & 0xffff_ffff) as usize, (id >> 32) as u32)
}

/// Errors that mean the listener itself is broken rather than one incoming
/// connection or a passing resource shortage.
fn is_accept_fatal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK | libc::EOPNOTSUPP | libc::EFAULT)
    )
}

/// `EMFILE` (this process) or `ENFILE` (the whole system).
fn is_out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_stay_clear_of_reserved_token_bits() {
        let id = make_id(12345, GENERATION_MASK);
        assert_eq!(split_id(id), (12345, GENERATION_MASK));
        let max = make_id(u32::MAX as usize, GENERATION_MASK) as usize;
        assert_eq!(max & (LISTENER_TOKEN | WAKE_BIT), 0);
    }

    #[test]
    fn unknown_ids_are_not_connected() {
        let mut t =
            KernelTransport::bind("127.0.0.1:0".parse().unwrap(), &KernelOptions::default())
                .unwrap();
        let mut buf = [0u8; 8];
        let err = t.read(make_id(0, 1), &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotConnected);
        let err = t.write(make_id(3, 7), b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotConnected);
        t.shutdown_write(make_id(0, 1));
        t.close(make_id(0, 1));
        assert_eq!(t.connection_count(), 0);
    }

    #[test]
    fn oversized_wake_token_is_rejected() {
        let mut t =
            KernelTransport::bind("127.0.0.1:0".parse().unwrap(), &KernelOptions::default())
                .unwrap();
        let err = t.register_wake_fd(0, LISTENER_TOKEN).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
