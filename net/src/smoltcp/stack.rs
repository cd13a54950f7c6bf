//! [`SmoltcpTransport`]: one smoltcp `Interface` over one device queue, with
//! a socket set per connection, behind the [`Transport`] trait.
//!
//! Every connection owns a one-socket `SocketSet`; the transport routes each
//! incoming frame to its set through a hash table (see `flow`) and runs
//! smoltcp's ingress on that set alone. Egress is per connection as well:
//! a write is sent at once (`poll_egress` on the writer's set), ACKs and
//! window updates owed after a read go out at the start of the next poll,
//! and smoltcp's timers (retransmission, delayed ACK, keep-alive, close)
//! live in one binary heap keyed by each socket's `poll_at`. No step visits
//! every connection, so the cost per frame does not grow with their number.
//!
//! Connections move through `Listening` (the one socket bound to the port)
//! → `Embryo` (SYN received, handshake in flight; invisible to the
//! application) → `Open` (reported as `Accepted`) → `Orphan` (the
//! application closed it, the FIN exchange finishes here) → `Spare`. The
//! socket that takes a SYN is replaced by a spare at once, before the next
//! frame is looked at, so a burst of connects always finds a listener up
//! to `max_connections`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::RawFd;
use std::time::Duration;

use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::tcp::{self, RecvError, SendError, SocketBuffer, State};
use smoltcp::time::{Duration as SmolDuration, Instant};
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, HardwareAddress, IpAddress, IpCidr,
    IpListenEndpoint, IpProtocol, Ipv4Packet, Ipv4Repr, TcpPacket, TcpRepr,
};

use super::device::{Backend, FrameDevice};
use super::flow::{
    self, classify, FlowKey, FlowMap, Frame, Segment, TimeWaitAction, TimeWaitTable,
};
use super::options::{DeviceSpec, Ipv4Cidr, OpenError, SmoltcpOptions};
use super::sys::{self, Epoll};
use crate::transport::{ConnId, Transport, TransportEvent};

/// Epoll data of the device fd.
const DEVICE_TOKEN: u64 = 1 << 62;
/// Epoll data of wake fds: this bit plus the caller's token.
const WAKE_BIT: u64 = 1 << 63;
/// Wake tokens must stay clear of the two bits above.
const MAX_WAKE_TOKEN: usize = (1 << 62) - 1;
/// smoltcp's clock starts here rather than at 0, which some of its timers
/// use as "never".
const CLOCK_ORIGIN_US: i64 = 1_000_000;
/// Timers handled per poll at most.
const TIMER_BUDGET: usize = 256;
/// Re-teach the neighbour cache a connection's peer this often (smoltcp
/// forgets entries after 60 s and would then stall on a fresh ARP).
const NEIGHBOR_REFRESH_US: i64 = 20_000_000;
/// A socket whose `poll_at` still says "now" right after an egress pass
/// (nothing it can do yet) is looked at again this much later.
const RETRY_US: i64 = 1_000;
/// ARP replies wake neighbour-waiting connections at most this often.
const ARP_WAKE_EVERY_US: i64 = 1_000;
/// An empty entry of `Conn::timers`.
const NO_TIMER: i64 = i64::MAX;
/// Timer heap entries reserved up front (it holds about one per connection
/// plus the delayed ACKs due within `ack_delay`).
const TIMER_HEAP_RESERVE: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Closed socket with buffers, ready for reuse.
    Spare,
    /// The socket bound to the port, waiting for a SYN.
    Listening,
    /// SYN received, handshake not complete; the application does not know.
    Embryo,
    /// Handed to the application.
    Open,
    /// Released by the application, finishing its FIN exchange.
    Orphan,
}

struct Conn {
    /// Bumped on every reuse: stale ids and timer entries miss.
    generation: u32,
    phase: Phase,
    key: FlowKey,
    set: SocketSet<'static>,
    handle: SocketHandle,
    in_dirty: bool,
    in_touched: bool,
    /// Times of this slot's live entries in the timer heap (`NO_TIMER`:
    /// none); see `schedule`.
    timers: [i64; 2],
    /// Handshake or close must be done by then (Embryo, Orphan).
    deadline: Option<i64>,
    /// The last write was refused or short: report `Writable` when there
    /// is room again.
    want_write: bool,
    /// When the neighbour cache was last taught this peer's MAC.
    neighbor_at: i64,
}

/// Settings fixed at open, in the units the hot path uses.
struct Settings {
    port: u16,
    max_connections: usize,
    rx_buffer: usize,
    tx_buffer: usize,
    ack_delay: Option<SmolDuration>,
    nagle: bool,
    tcp_timeout: Option<SmolDuration>,
    keep_alive: Option<SmolDuration>,
    handshake_timeout_us: i64,
    close_timeout_us: i64,
    ingress_budget: usize,
    egress_budget: usize,
}

/// Counters of a [`SmoltcpTransport`]; see [`SmoltcpTransport::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SmoltcpStats {
    /// Frames read from the device.
    pub rx_frames: u64,
    /// Frames written to the device.
    pub tx_frames: u64,
    /// Frames the device refused (queue full, interface down).
    pub tx_errors: u64,
    /// Frames dropped on receive (larger than the buffer).
    pub rx_dropped: u64,
    /// Received TCP checksums completed for a skipped offload (veth).
    pub checksum_fixups: u64,
    /// Connections handed to the application.
    pub accepted: u64,
    /// SYNs answered with a reset because `max_connections` were live.
    pub refused: u64,
    /// Connections reset by us: closed with unread input, or a handshake
    /// or close that timed out.
    pub resets: u64,
    /// Retransmitted FINs acknowledged from the TIME-WAIT table.
    pub time_wait_acks: u64,
    /// Open connections now.
    pub open: usize,
    /// Handshakes in flight now.
    pub handshaking: usize,
    /// Released connections still closing now.
    pub closing: usize,
    /// Tuples in TIME-WAIT now.
    pub time_wait: usize,
}

/// A userspace TCP transport: smoltcp over a TAP queue or a packet socket,
/// owned and polled by one core loop. See the [module docs](self).
pub struct SmoltcpTransport {
    iface: Interface,
    device: FrameDevice,
    epoll: Epoll,
    conns: Vec<Conn>,
    spare: Vec<u32>,
    flows: FlowMap<u32>,
    listener: Option<u32>,
    /// A set without sockets, for frames that belong to no connection.
    no_sockets: SocketSet<'static>,
    dirty: Vec<u32>,
    dirty_batch: Vec<u32>,
    touched: Vec<u32>,
    timers: BinaryHeap<Reverse<(i64, u32, u32)>>,
    time_wait: TimeWaitTable,
    /// Readiness found by internal steps, handed out by the next poll.
    pending: Vec<TransportEvent>,
    clock_base: std::time::Instant,
    now: Instant,
    /// The device may hold frames (epoll said so, or the budget ran out).
    rx_ready: bool,
    settings: Settings,
    our_ip: Ipv4Addr,
    our_mac: EthernetAddress,
    subnet: Ipv4Cidr,
    gateway: Option<Ipv4Addr>,
    embryos: usize,
    open: usize,
    orphans: usize,
    at_cap: bool,
    /// Cleared by `stop_accepting`: no listener is put back.
    accepting: bool,
    last_arp_wake: i64,
    stats: SmoltcpStats,
    interface: String,
    local_addr: SocketAddr,
}

impl SmoltcpTransport {
    /// Opens the device named in `opts` (one TAP queue, or one packet
    /// socket), brings up an interface with `opts.address` and starts
    /// listening on `opts.port`. A core loop calls this once for its own
    /// transport; with several loops, pass the same options with
    /// `queues` set to their number.
    pub fn open(opts: &SmoltcpOptions) -> Result<Self, OpenError> {
        opts.validate()?;
        let (fd, backend, name, queried_mac) = match &opts.device {
            DeviceSpec::Tap(name) => {
                let (fd, actual) =
                    sys::open_tap(name, opts.queues > 1).map_err(|source| OpenError::Tap {
                        name: name.clone(),
                        source,
                    })?;
                wait_until_running(&actual);
                (fd, Backend::Tap, actual, None)
            }
            DeviceSpec::Raw(name) => {
                let packet_err = |source| OpenError::Packet {
                    name: name.clone(),
                    source,
                };
                let index = sys::interface_index(name).map_err(packet_err)?;
                let mac = match opts.mac {
                    Some(mac) => mac,
                    None => sys::interface_mac(name).map_err(|source| OpenError::Query {
                        name: name.clone(),
                        source,
                    })?,
                };
                // Same group for every loop of this process on this
                // interface, different from other processes'.
                let fanout = (opts.queues > 1)
                    .then(|| ((sys::process_id() ^ index.rotate_left(16)) & 0xffff) as u16);
                let fd = sys::open_packet_socket(index, fanout).map_err(packet_err)?;
                (fd, Backend::Packet, name.clone(), Some(mac))
            }
        };
        let mtu = match opts.mtu {
            Some(mtu) => mtu,
            None => sys::interface_mtu(&name).map_err(|source| OpenError::Query {
                name: name.clone(),
                source,
            })?,
        };
        if !(576..=65_521).contains(&mtu) {
            return Err(OpenError::InvalidOption(
                "the interface MTU is outside 576..=65521",
            ));
        }
        let mac = opts
            .mac
            .or(queried_mac)
            .unwrap_or_else(|| SmoltcpOptions::default_tap_mac(opts.address.addr));
        let our_mac = EthernetAddress(mac);
        if !our_mac.is_unicast() {
            return Err(OpenError::InvalidOption(
                "the interface's MAC is not a unicast address",
            ));
        }
        let mut device = FrameDevice::new(fd, backend, mtu);

        let clock_base = std::time::Instant::now();
        let now = Instant::from_micros(CLOCK_ORIGIN_US);
        let mut config = Config::new(HardwareAddress::Ethernet(our_mac));
        config.random_seed = random_seed();
        let mut iface = Interface::new(config, &mut device, now);
        let cidr = IpCidr::new(opts.address.addr.into(), opts.address.prefix_len);
        iface.update_ip_addrs(|addrs| {
            // Capacity 2, empty: cannot fail.
            let _ = addrs.push(cidr);
        });
        if let Some(gateway) = opts.gateway {
            iface
                .routes_mut()
                .add_default_ipv4_route(gateway)
                .map_err(|_| OpenError::InvalidOption("the route table is full"))?;
        }

        let epoll = Epoll::new(64).map_err(OpenError::Poll)?;
        epoll
            .add(device.raw_fd(), DEVICE_TOKEN, false)
            .map_err(OpenError::Poll)?;

        let mut transport = Self {
            iface,
            device,
            epoll,
            conns: Vec::with_capacity(opts.listen_pool),
            spare: Vec::with_capacity(opts.listen_pool),
            flows: FlowMap::default(),
            listener: None,
            no_sockets: SocketSet::new(Vec::new()),
            dirty: Vec::new(),
            dirty_batch: Vec::new(),
            touched: Vec::new(),
            timers: BinaryHeap::with_capacity(TIMER_HEAP_RESERVE),
            time_wait: TimeWaitTable::new(micros(opts.time_wait), opts.max_time_wait),
            pending: Vec::new(),
            clock_base,
            now,
            rx_ready: true,
            settings: Settings {
                port: opts.port,
                max_connections: opts.max_connections,
                rx_buffer: opts.rx_buffer,
                tx_buffer: opts.tx_buffer,
                ack_delay: opts.ack_delay.map(smol),
                nagle: opts.nagle,
                tcp_timeout: opts.tcp_timeout.map(smol),
                keep_alive: opts.keep_alive.map(smol),
                handshake_timeout_us: micros(opts.handshake_timeout),
                close_timeout_us: micros(opts.close_timeout),
                ingress_budget: opts.ingress_budget,
                egress_budget: opts.egress_budget,
            },
            our_ip: opts.address.addr,
            our_mac,
            subnet: opts.address,
            gateway: opts.gateway,
            embryos: 0,
            open: 0,
            orphans: 0,
            at_cap: false,
            accepting: true,
            last_arp_wake: 0,
            stats: SmoltcpStats::default(),
            interface: name,
            local_addr: SocketAddr::V4(SocketAddrV4::new(opts.address.addr, opts.port)),
        };
        transport.flows.reserve(opts.listen_pool);
        for _ in 0..opts.listen_pool.max(1) {
            let slot = transport.new_slot();
            transport.spare.push(slot);
        }
        transport.refill_listener();
        Ok(transport)
    }

    /// The interface the transport runs on (the TAP's actual name).
    pub fn interface_name(&self) -> &str {
        &self.interface
    }

    /// The transport's Ethernet address.
    pub fn mac(&self) -> [u8; 6] {
        self.our_mac.0
    }

    /// The IP MTU in use (the interface's, unless overridden).
    pub fn mtu(&self) -> usize {
        self.device.mtu()
    }

    /// Frame and connection counters.
    pub fn stats(&self) -> SmoltcpStats {
        let device = &self.device.counters;
        SmoltcpStats {
            rx_frames: device.rx_frames,
            tx_frames: device.tx_frames,
            tx_errors: device.tx_errors,
            rx_dropped: device.rx_dropped,
            checksum_fixups: device.checksum_fixups,
            open: self.open,
            handshaking: self.embryos,
            closing: self.orphans,
            time_wait: self.time_wait.len(),
            ..self.stats
        }
    }

    /// Open connections (accepted and not yet closed by the application).
    pub fn connection_count(&self) -> usize {
        self.open
    }

    fn tick(&mut self) {
        let elapsed = self.clock_base.elapsed().as_micros() as i64;
        self.now = Instant::from_micros(CLOCK_ORIGIN_US + elapsed);
    }

    fn now_us(&self) -> i64 {
        self.now.total_micros()
    }

    fn new_slot(&mut self) -> u32 {
        let s = &self.settings;
        let mut socket = tcp::Socket::new(
            SocketBuffer::new(vec![0u8; s.rx_buffer]),
            SocketBuffer::new(vec![0u8; s.tx_buffer]),
        );
        socket.set_nagle_enabled(s.nagle);
        socket.set_ack_delay(s.ack_delay);
        socket.set_timeout(s.tcp_timeout);
        socket.set_keep_alive(s.keep_alive);
        let mut set = SocketSet::new(Vec::with_capacity(1));
        let handle = set.add(socket);
        self.conns.push(Conn {
            generation: 1,
            phase: Phase::Spare,
            key: 0,
            set,
            handle,
            in_dirty: false,
            in_touched: false,
            timers: [NO_TIMER; 2],
            deadline: None,
            want_write: false,
            neighbor_at: 0,
        });
        (self.conns.len() - 1) as u32
    }

    fn socket(&mut self, slot: u32) -> &mut tcp::Socket<'static> {
        let conn = &mut self.conns[slot as usize];
        conn.set.get_mut::<tcp::Socket>(conn.handle)
    }

    fn live(&self) -> usize {
        self.embryos + self.open + self.orphans
    }

    /// Puts a spare socket on the port unless one listens already or the
    /// connection cap is reached.
    fn refill_listener(&mut self) {
        if self.listener.is_some() || !self.accepting {
            return;
        }
        if self.live() >= self.settings.max_connections {
            if !self.at_cap {
                self.at_cap = true;
                log::info!(
                    "nocturne-net: smoltcp transport on {} port {}: {} connections live \
                     (max_connections); refusing new ones with a reset until one closes",
                    self.interface,
                    self.settings.port,
                    self.live()
                );
            }
            return;
        }
        self.at_cap = false;
        let slot = match self.spare.pop() {
            Some(slot) => slot,
            None => self.new_slot(),
        };
        let port = self.settings.port;
        let socket = self.socket(slot);
        if socket
            .listen(IpListenEndpoint { addr: None, port })
            .is_err()
        {
            // Not reachable for a spare (always Closed); recover anyway.
            socket.abort();
            let _ = socket.listen(IpListenEndpoint { addr: None, port });
        }
        self.conns[slot as usize].phase = Phase::Listening;
        self.listener = Some(slot);
    }

    /// Returns a slot to the spare pool: forgets its tuple, resets the
    /// socket (without sending anything), and kills its id and timers.
    fn recycle(&mut self, slot: u32) {
        let conn = &mut self.conns[slot as usize];
        if conn.key != 0 && self.flows.get(&conn.key) == Some(&slot) {
            self.flows.remove(&conn.key);
        }
        conn.key = 0;
        conn.phase = Phase::Spare;
        conn.generation = next_generation(conn.generation);
        conn.in_dirty = false;
        conn.timers = [NO_TIMER; 2];
        conn.deadline = None;
        conn.want_write = false;
        let port = self.settings.port;
        let socket = self.socket(slot);
        // listen() resets every field of a non-open socket; close() of a
        // listener leaves it Closed with no tuple: a clean spare.
        if socket.is_open() {
            socket.abort();
        }
        let _ = socket.listen(IpListenEndpoint { addr: None, port });
        socket.close();
        self.spare.push(slot);
        self.refill_listener();
    }

    fn open_slot(&self, id: ConnId) -> Option<u32> {
        let slot = (id & 0xffff_ffff) as u32;
        let generation = (id >> 32) as u32;
        let conn = self.conns.get(slot as usize)?;
        (conn.generation == generation && conn.phase == Phase::Open).then_some(slot)
    }

    fn conn_id(&self, slot: u32) -> ConnId {
        (u64::from(self.conns[slot as usize].generation) << 32) | u64::from(slot)
    }

    fn mark_dirty(&mut self, slot: u32) {
        let conn = &mut self.conns[slot as usize];
        if !conn.in_dirty {
            conn.in_dirty = true;
            self.dirty.push(slot);
        }
    }

    fn touch(&mut self, slot: u32) {
        let conn = &mut self.conns[slot as usize];
        if !conn.in_touched {
            conn.in_touched = true;
            self.touched.push(slot);
        }
    }

    fn schedule(&mut self, slot: u32, at: i64) {
        let conn = &mut self.conns[slot as usize];
        // An entry due no later than `at` re-evaluates the socket when it
        // fires and schedules what is still needed: nothing to add. So a
        // slot has at most two live entries (typically a delayed ACK due in
        // a millisecond and a retransmission due in a second), and the heap
        // holds about one entry per connection plus the ACKs due soon,
        // instead of a stale entry per request.
        if conn.timers.iter().any(|&t| t <= at) {
            return;
        }
        let latest = usize::from(conn.timers[1] > conn.timers[0]);
        // The replaced one (if any) stays in the heap untracked: it is
        // skipped when it comes up.
        conn.timers[latest] = at;
        self.timers.push(Reverse((at, slot, conn.generation)));
    }

    /// Sends what the slot's socket has to send, up to the egress budget
    /// (then it stays dirty for the next poll).
    fn egress(&mut self, slot: u32) {
        let conn = &mut self.conns[slot as usize];
        let mut sent = 0;
        while self
            .iface
            .poll_egress(self.now, &mut self.device, &mut conn.set)
            == PollResult::SocketStateChanged
        {
            sent += 1;
            if sent == self.settings.egress_budget {
                self.mark_dirty(slot);
                break;
            }
        }
    }

    /// One step for a slot that frames, timers or the application touched:
    /// expire its deadline, or send what it owes (`egress_now`) and settle
    /// its phase, readiness and next timer.
    fn service(&mut self, slot: u32, egress_now: bool, readiness: bool) {
        let conn = &self.conns[slot as usize];
        if matches!(conn.phase, Phase::Spare | Phase::Listening) {
            return;
        }
        if conn.deadline.is_some_and(|d| d <= self.now_us()) {
            self.expire(slot);
            return;
        }
        if egress_now {
            self.egress(slot);
        }
        self.settle(slot, egress_now, readiness);
    }

    /// A handshake or close ran out of time: reset it.
    fn expire(&mut self, slot: u32) {
        match self.conns[slot as usize].phase {
            Phase::Embryo => self.embryos -= 1,
            Phase::Orphan => self.orphans -= 1,
            _ => return,
        }
        self.abort(slot);
        self.recycle(slot);
    }

    /// Sends a reset now.
    fn abort(&mut self, slot: u32) {
        self.socket(slot).abort();
        self.stats.resets += 1;
        self.egress(slot);
    }

    /// Phase changes, readiness events and the next timer of a slot.
    fn settle(&mut self, slot: u32, just_egressed: bool, readiness: bool) {
        let id = self.conn_id(slot);
        let close_timeout = self.settings.close_timeout_us;
        let now_us = self.now_us();
        let conn = &mut self.conns[slot as usize];
        let socket = conn.set.get::<tcp::Socket>(conn.handle);
        let state = socket.state();
        match conn.phase {
            Phase::Spare | Phase::Listening => return,
            Phase::Embryo => match state {
                State::SynReceived => {}
                State::Listen | State::Closed | State::TimeWait | State::SynSent => {
                    // Reset by the peer (smoltcp returned the socket to
                    // LISTEN) or timed out.
                    self.embryos -= 1;
                    self.recycle(slot);
                    return;
                }
                _ => {
                    conn.phase = Phase::Open;
                    conn.deadline = None;
                    self.embryos -= 1;
                    self.open += 1;
                    self.stats.accepted += 1;
                    self.pending.push(TransportEvent::Accepted(id));
                }
            },
            Phase::Open => {
                if readiness && (socket.can_recv() || !socket.may_recv()) {
                    self.pending.push(TransportEvent::Readable(id));
                }
                if conn.want_write && (socket.can_send() || !socket.may_send()) {
                    conn.want_write = false;
                    self.pending.push(TransportEvent::Writable(id));
                }
            }
            Phase::Orphan => match state {
                State::Closed => {
                    self.orphans -= 1;
                    self.recycle(slot);
                    return;
                }
                State::TimeWait => {
                    self.orphans -= 1;
                    self.time_wait.insert(conn.key, now_us);
                    self.recycle(slot);
                    return;
                }
                _ => {
                    conn.deadline.get_or_insert(now_us + close_timeout);
                }
            },
        }
        let conn = &mut self.conns[slot as usize];
        let mut at = self
            .iface
            .poll_at(self.now, &conn.set)
            .map(|t| t.total_micros());
        if let Some(deadline) = conn.deadline {
            at = Some(at.map_or(deadline, |t| t.min(deadline)));
        }
        match at {
            Some(t) if t <= now_us && !just_egressed => self.mark_dirty(slot),
            Some(t) if t <= now_us => self.schedule(slot, now_us + RETRY_US),
            Some(t) => self.schedule(slot, t),
            None => {}
        }
    }

    /// Sends what the previous turn left owed: ACKs and window updates
    /// after reads, segments past an egress budget.
    fn flush_dirty(&mut self) {
        std::mem::swap(&mut self.dirty, &mut self.dirty_batch);
        for i in 0..self.dirty_batch.len() {
            let slot = self.dirty_batch[i];
            let conn = &mut self.conns[slot as usize];
            if !conn.in_dirty {
                continue;
            }
            conn.in_dirty = false;
            self.service(slot, true, true);
        }
        self.dirty_batch.clear();
    }

    fn run_timers(&mut self) {
        let now_us = self.now_us();
        for _ in 0..TIMER_BUDGET {
            let Some(&Reverse((at, slot, generation))) = self.timers.peek() else {
                break;
            };
            if at > now_us {
                break;
            }
            self.timers.pop();
            let conn = &mut self.conns[slot as usize];
            if conn.generation != generation {
                continue; // recycled
            }
            let Some(i) = conn.timers.iter().position(|&t| t == at) else {
                continue; // superseded
            };
            conn.timers[i] = NO_TIMER;
            self.service(slot, true, true);
        }
    }

    /// Milliseconds epoll may sleep: the caller's timeout cut to the next
    /// timer, rounded up (a timer fired a little late is harmless; a busy
    /// loop until it is due is not).
    fn sleep_ms(&self, timeout: Option<Duration>) -> i32 {
        let to_timer = self
            .timers
            .peek()
            .map(|Reverse((at, _, _))| (at - self.now_us()).max(0) as u64);
        let caller = timeout.map(|t| t.as_micros().min(u128::from(u64::MAX)) as u64);
        let us = match (caller, to_timer) {
            (None, None) => return -1,
            (Some(a), None) | (None, Some(a)) => a,
            (Some(a), Some(b)) => a.min(b),
        };
        us.div_ceil(1000).min(i32::MAX as u64) as i32
    }

    /// Takes up to `ingress_budget` frames from the device and runs each
    /// through smoltcp with the socket set it belongs to.
    fn ingress(&mut self) -> io::Result<()> {
        for _ in 0..self.settings.ingress_budget {
            match self.device.fetch() {
                Ok(true) => {}
                Ok(false) => {
                    self.rx_ready = false;
                    break;
                }
                Err(e) => {
                    self.rx_ready = false;
                    self.settle_touched();
                    return Err(e);
                }
            }
            if self.device.pending().is_empty() {
                continue; // dropped by the device
            }
            match classify(self.device.pending(), self.our_ip, self.our_mac) {
                Frame::Own => self.device.drop_pending(),
                Frame::Other => self.ingress_unowned(),
                Frame::ArpReply => {
                    self.ingress_unowned();
                    self.wake_neighbor_waiters();
                }
                Frame::Tcp(seg) => self.ingress_segment(&seg),
            }
        }
        self.settle_touched();
        Ok(())
    }

    fn ingress_unowned(&mut self) {
        self.iface
            .poll_ingress_single(self.now, &mut self.device, &mut self.no_sockets);
    }

    fn ingress_segment(&mut self, seg: &Segment) {
        let now_us = self.now_us();
        if let Some(&slot) = self.flows.get(&seg.key) {
            // Only a frame smoltcp will accept may teach (see
            // `fit_to_teach`); a bogus one leaves the refresh for the next.
            if now_us - self.conns[slot as usize].neighbor_at > NEIGHBOR_REFRESH_US
                && self.pending_fit_to_teach()
            {
                self.conns[slot as usize].neighbor_at = now_us;
                self.teach_neighbor(seg);
            }
            let conn = &mut self.conns[slot as usize];
            self.iface
                .poll_ingress_single(self.now, &mut self.device, &mut conn.set);
            self.touch(slot);
            return;
        }
        if seg.local_port == self.settings.port {
            match self.time_wait.check(seg, now_us) {
                Some(TimeWaitAction::Ack) => {
                    let (mac, ip) = (self.our_mac, self.our_ip);
                    self.device.drop_pending();
                    self.device.send_raw(flow::BARE_SEGMENT_LEN, |buf| {
                        flow::write_time_wait_ack(buf, mac, ip, seg)
                    });
                    self.stats.time_wait_acks += 1;
                    return;
                }
                Some(TimeWaitAction::Drop) => {
                    self.device.drop_pending();
                    return;
                }
                Some(TimeWaitAction::Reopen) | None => {}
            }
            if seg.syn && !seg.ack && !seg.rst {
                if let Some(slot) = self.listener {
                    // Judged before smoltcp consumes the frame, acted on
                    // after it took the SYN: a frame that is not a valid
                    // segment for us never reaches the neighbour cache.
                    let fit = self.pending_fit_to_teach();
                    let conn = &mut self.conns[slot as usize];
                    self.iface
                        .poll_ingress_single(self.now, &mut self.device, &mut conn.set);
                    if self.socket(slot).state() != State::Listen {
                        // Still before any egress: the SYN-ACK finds the
                        // peer's MAC without an ARP exchange.
                        if fit {
                            self.teach_neighbor(seg);
                        }
                        let conn = &mut self.conns[slot as usize];
                        conn.phase = Phase::Embryo;
                        conn.key = seg.key;
                        conn.deadline = Some(now_us + self.settings.handshake_timeout_us);
                        conn.neighbor_at = now_us;
                        self.flows.insert(seg.key, slot);
                        self.embryos += 1;
                        self.listener = None;
                        self.touch(slot);
                        self.refill_listener();
                    }
                    return;
                }
                self.stats.refused += 1;
            }
        }
        // No connection: smoltcp answers with a reset.
        self.ingress_unowned();
    }

    /// Whether the fetched frame may teach the neighbour cache; see
    /// [`fit_to_teach`].
    fn pending_fit_to_teach(&self) -> bool {
        fit_to_teach(self.device.pending(), self.our_mac, self.subnet)
    }

    /// Teaches the neighbour cache the sender of `seg` (or the gateway it
    /// came through) with a synthetic ARP reply, so that answering never
    /// waits on an ARP exchange whose reply went to another queue. Callers
    /// first make sure the frame is one smoltcp accepts
    /// ([`fit_to_teach`]): the cache must not learn from a frame smoltcp
    /// would drop.
    fn teach_neighbor(&mut self, seg: &Segment) {
        let hop = if self.subnet.contains(seg.peer) {
            seg.peer
        } else if let Some(gateway) = self.gateway {
            gateway
        } else {
            return;
        };
        let (our_mac, our_ip) = (self.our_mac, self.our_ip);
        self.device
            .inject(|buf| flow::write_neighbor_hint(buf, our_mac, our_ip, seg.peer_mac, hop));
        // Serves the injected frame; the fetched one stays pending.
        self.ingress_unowned();
    }

    /// An ARP reply came: connections held back for a missing neighbour
    /// can send now rather than at smoltcp's one-second retry.
    fn wake_neighbor_waiters(&mut self) {
        let now_us = self.now_us();
        if now_us - self.last_arp_wake < ARP_WAKE_EVERY_US {
            return;
        }
        self.last_arp_wake = now_us;
        for slot in 0..self.conns.len() as u32 {
            let conn = &self.conns[slot as usize];
            if conn.timers != [NO_TIMER; 2]
                && matches!(conn.phase, Phase::Embryo | Phase::Open | Phase::Orphan)
            {
                self.mark_dirty(slot);
            }
        }
    }

    /// Settles the connections this ingress pass touched. Those with unread
    /// input do not send now: the application reads and most likely answers
    /// soon, and the answer carries the ACK. What is still owed goes out
    /// when smoltcp's delayed-ACK timer fires or, with `ack_delay` off, at
    /// the start of the next poll.
    fn settle_touched(&mut self) {
        let mut touched = std::mem::take(&mut self.touched);
        for &slot in &touched {
            let conn = &mut self.conns[slot as usize];
            conn.in_touched = false;
            let socket = conn.set.get::<tcp::Socket>(conn.handle);
            let defer = socket.can_recv() && matches!(conn.phase, Phase::Embryo | Phase::Open);
            if defer && self.settings.ack_delay.is_none() {
                self.mark_dirty(slot);
            }
            self.service(slot, !defer, true);
        }
        touched.clear();
        self.touched = touched;
    }
}

impl Transport for SmoltcpTransport {
    fn poll(
        &mut self,
        timeout: Option<Duration>,
        events: &mut Vec<TransportEvent>,
    ) -> io::Result<()> {
        self.tick();
        self.time_wait.expire(self.now_us());
        self.flush_dirty();
        self.run_timers();
        let busy = !self.pending.is_empty() || self.rx_ready || !self.dirty.is_empty();
        let wait_ms = if busy { 0 } else { self.sleep_ms(timeout) };
        let mut device_ready = false;
        let waited = self.epoll.wait(wait_ms, |ready| {
            if ready.data == DEVICE_TOKEN {
                device_ready = true;
            } else {
                events.push(TransportEvent::Wake((ready.data & !WAKE_BIT) as usize));
            }
        });
        self.rx_ready |= device_ready;
        if wait_ms != 0 {
            self.tick();
        }
        let ingress = if self.rx_ready {
            self.ingress()
        } else {
            Ok(())
        };
        events.append(&mut self.pending);
        waited.and(ingress)
    }

    fn read(&mut self, conn: ConnId, buf: &mut [u8]) -> io::Result<usize> {
        let slot = self.open_slot(conn).ok_or(io::ErrorKind::NotConnected)?;
        if buf.is_empty() {
            return Ok(0);
        }
        let socket = self.socket(slot);
        match socket.recv_slice(buf) {
            Ok(0) => Err(io::ErrorKind::WouldBlock.into()),
            Ok(n) => {
                // The window grew: smoltcp decides at the next poll whether
                // that is worth an update (it is once the window doubled).
                self.mark_dirty(slot);
                Ok(n)
            }
            Err(RecvError::Finished) => Ok(0),
            Err(RecvError::InvalidState) => Err(io::ErrorKind::ConnectionReset.into()),
        }
    }

    fn write(&mut self, conn: ConnId, bytes: &[u8]) -> io::Result<usize> {
        let slot = self.open_slot(conn).ok_or(io::ErrorKind::NotConnected)?;
        if bytes.is_empty() {
            return Ok(0);
        }
        let socket = self.socket(slot);
        let result = match socket.send_slice(bytes) {
            Ok(0) => {
                self.conns[slot as usize].want_write = true;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n) => {
                if n < bytes.len() {
                    self.conns[slot as usize].want_write = true;
                }
                Ok(n)
            }
            Err(SendError::InvalidState) => {
                return Err(if socket.state() == State::Closed {
                    io::ErrorKind::ConnectionReset
                } else {
                    io::ErrorKind::BrokenPipe
                }
                .into());
            }
        };
        // Out at once: no waiting for the next turn.
        self.service(slot, true, false);
        result
    }

    fn shutdown_write(&mut self, conn: ConnId) {
        if let Some(slot) = self.open_slot(conn) {
            self.socket(slot).close();
            self.service(slot, true, false);
        }
    }

    fn close(&mut self, conn: ConnId) {
        let Some(slot) = self.open_slot(conn) else {
            return;
        };
        self.open -= 1;
        let now_us = self.now_us();
        let max_orphans = self.settings.max_connections;
        let orphans = self.orphans;
        let socket = self.socket(slot);
        match socket.state() {
            State::Closed | State::Listen | State::SynSent | State::SynReceived => {
                self.recycle(slot)
            }
            State::TimeWait => {
                let key = self.conns[slot as usize].key;
                self.time_wait.insert(key, now_us);
                self.recycle(slot);
            }
            // Like the kernel: unread input turns a close into a reset.
            _ if socket.recv_queue() > 0 || orphans >= max_orphans => {
                self.abort(slot);
                self.recycle(slot);
            }
            _ => {
                socket.close();
                let conn = &mut self.conns[slot as usize];
                conn.phase = Phase::Orphan;
                conn.deadline = Some(now_us + self.settings.close_timeout_us);
                conn.want_write = false;
                self.orphans += 1;
                self.service(slot, true, false);
            }
        }
    }

    fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A userspace stack's connections die with the process, silently: the
    /// peers would wait for their own timeouts. So: FIN every open
    /// connection, run the stack until the exchanges finish or `grace`
    /// passes, then reset whatever is still alive.
    fn close_all(&mut self, grace: Duration) {
        self.stop_accepting();
        for slot in 0..self.conns.len() as u32 {
            if matches!(self.conns[slot as usize].phase, Phase::Open) {
                let id = self.conn_id(slot);
                self.close(id);
            }
        }
        let deadline = std::time::Instant::now() + grace;
        let mut events = Vec::new();
        while self.live() > 0 && std::time::Instant::now() < deadline {
            events.clear();
            if self
                .poll(Some(Duration::from_millis(1)), &mut events)
                .is_err()
            {
                break;
            }
        }
        for slot in 0..self.conns.len() as u32 {
            if matches!(
                self.conns[slot as usize].phase,
                Phase::Embryo | Phase::Open | Phase::Orphan
            ) {
                self.abort(slot);
                self.recycle(slot);
            }
        }
    }

    /// Withdraws the listening socket: new connects are answered with a
    /// reset (refused), open connections carry on.
    fn stop_accepting(&mut self) {
        self.accepting = false;
        if let Some(slot) = self.listener.take() {
            self.recycle(slot);
        }
    }

    /// Registers an extra file descriptor in the epoll set the transport
    /// sleeps on (edge-triggered); `token` must be below 2^62.
    fn register_wake_fd(&mut self, fd: RawFd, token: usize) -> io::Result<()> {
        if token > MAX_WAKE_TOKEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "wake token must be below 2^62",
            ));
        }
        self.epoll.add(fd, WAKE_BIT | token as u64, true)
    }

    fn deregister_wake_fd(&mut self, fd: RawFd) -> io::Result<()> {
        self.epoll.delete(fd)
    }
}

/// Waits (at most 3 s) for a TAP that is up to start carrying frames.
///
/// Attaching the first queue turns the TAP's carrier on, but the kernel
/// activates its queueing discipline only in a deferred link-watch event (up
/// to a second later); until then it drops every frame sent to the TAP, and
/// a client's first SYN would wait for its one-second retransmission. An
/// interface that is administratively down is not waited for.
fn wait_until_running(name: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while let Ok(flags) = sys::interface_flags(name) {
        if flags & libc::IFF_UP == 0
            || flags & libc::IFF_RUNNING != 0
            || std::time::Instant::now() >= deadline
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whether `frame` may teach the neighbour cache its sender's MAC: an
/// Ethernet frame addressed to `our_mac` from a unicast MAC, carrying a
/// well-formed IPv4 packet (header checksum right) from a unicast address
/// other than ours and the subnet's broadcast, to our address, with a TCP
/// segment whose checksum is right.
///
/// `flow::classify` only looks far enough to route a frame; smoltcp makes
/// these checks itself, but the synthetic ARP reply that teaches the cache
/// is fed to it separately, so without them a frame smoltcp then drops (a
/// corrupted one, one for another host on the segment, a forged one with a
/// bad checksum) would still point the client's IP at the sender's MAC, and
/// every answer on that client's connections would be lost until the next
/// refresh. It costs one checksum pass over the frame, on SYNs and once per
/// `NEIGHBOR_REFRESH_US` per connection.
fn fit_to_teach(frame: &[u8], our_mac: EthernetAddress, subnet: Ipv4Cidr) -> bool {
    // Verify every checksum, whatever the device's capabilities say: the
    // device's own (all checked) are what smoltcp applies to this frame.
    let caps = ChecksumCapabilities::default();
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return false;
    };
    if eth.dst_addr() != our_mac
        || !eth.src_addr().is_unicast()
        || eth.ethertype() != EthernetProtocol::Ipv4
    {
        return false;
    }
    let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
        return false;
    };
    let Ok(ip_repr) = Ipv4Repr::parse(&ip, &caps) else {
        return false;
    };
    let (src, dst) = (ip_repr.src_addr, ip_repr.dst_addr);
    let subnet_broadcast = (subnet.prefix_len < 31).then(|| {
        let host_bits = u32::MAX >> subnet.prefix_len;
        Ipv4Addr::from(u32::from(subnet.addr) | host_bits)
    });
    if dst != subnet.addr
        || ip_repr.next_header != IpProtocol::Tcp
        || src == subnet.addr
        || src.is_unspecified()
        || src.is_broadcast()
        || src.is_multicast()
        || src.is_loopback()
        || Some(src) == subnet_broadcast
    {
        return false;
    }
    let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
        return false;
    };
    TcpRepr::parse(&tcp, &IpAddress::Ipv4(src), &IpAddress::Ipv4(dst), &caps).is_ok()
}

fn next_generation(generation: u32) -> u32 {
    generation.wrapping_add(1).max(1)
}

fn micros(d: Duration) -> i64 {
    d.as_micros().min(i64::MAX as u128) as i64
}

fn smol(d: Duration) -> SmolDuration {
    SmolDuration::from_micros(d.as_micros().min(u128::from(u64::MAX)) as u64)
}

/// Seeds smoltcp's generator (initial sequence numbers, IP ids): distinct
/// per process, per transport and per start, not cryptographic.
fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let local = 0u8;
    let stack = &local as *const u8 as u64;
    (nanos ^ (u64::from(sys::process_id()) << 32) ^ stack.rotate_left(17))
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

// The crafted SYN is shared with the bogus-frame test of
// tests/smoltcp_netem.rs.
#[cfg(test)]
#[path = "../../tests/common/syn_frame.rs"]
mod syn_frame;

#[cfg(test)]
mod tests {
    use super::syn_frame::Syn;
    use super::*;

    const OUR_MAC: EthernetAddress = EthernetAddress([2, 0, 192, 0, 2, 2]);
    const PEER_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);
    const OUR_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
    const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

    fn subnet() -> Ipv4Cidr {
        Ipv4Cidr::new(OUR_IP, 24).unwrap()
    }

    /// A SYN from `src` (at `src_mac`) to `dst` (at `dst_mac`), checksums
    /// right.
    fn syn(
        src_mac: EthernetAddress,
        dst_mac: EthernetAddress,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) -> Vec<u8> {
        Syn {
            src_mac,
            dst_mac,
            src,
            dst,
            src_port: 40_000,
            dst_port: 8080,
            seq: 1,
            window: 1000,
        }
        .frame()
    }

    fn good() -> Vec<u8> {
        syn(PEER_MAC, OUR_MAC, PEER_IP, OUR_IP)
    }

    fn fit(frame: &[u8]) -> bool {
        fit_to_teach(frame, OUR_MAC, subnet())
    }

    #[test]
    fn a_valid_segment_to_us_may_teach() {
        assert!(fit(&good()));
        // A peer outside the subnet (behind the gateway) too.
        assert!(fit(&syn(
            PEER_MAC,
            OUR_MAC,
            Ipv4Addr::new(198, 51, 100, 7),
            OUR_IP
        )));
    }

    #[test]
    fn corrupted_frames_may_not_teach() {
        // TCP checksum (last byte of the TCP header's checksum field).
        let mut frame = good();
        frame[14 + 20 + 17] ^= 0x40;
        assert!(!fit(&frame));
        // IPv4 header checksum.
        let mut frame = good();
        frame[14 + 11] ^= 0x40;
        assert!(!fit(&frame));
        // A payload bit the checksum covers.
        let mut frame = good();
        frame[14 + 20 + 4] ^= 1; // sequence number
        assert!(!fit(&frame));
        // Not IPv4 at all (version 6 in the header).
        let mut frame = good();
        frame[14] = 0x65;
        assert!(!fit(&frame));
        // Truncated.
        assert!(!fit(&good()[..14 + 20 + 10]));
        assert!(!fit(&good()[..10]));
    }

    #[test]
    fn frames_for_others_or_from_odd_senders_may_not_teach() {
        let other_mac = EthernetAddress([2, 0, 0, 0, 0, 0x77]);
        let multicast_mac = EthernetAddress([3, 0, 0, 0, 0, 1]);
        let cases = [
            (
                "another host's MAC",
                syn(PEER_MAC, other_mac, PEER_IP, OUR_IP),
            ),
            (
                "broadcast MAC",
                syn(PEER_MAC, EthernetAddress::BROADCAST, PEER_IP, OUR_IP),
            ),
            (
                "another IP",
                syn(PEER_MAC, OUR_MAC, PEER_IP, Ipv4Addr::new(192, 0, 2, 9)),
            ),
            (
                "multicast source MAC",
                syn(multicast_mac, OUR_MAC, PEER_IP, OUR_IP),
            ),
            (
                "our own IP as source",
                syn(PEER_MAC, OUR_MAC, OUR_IP, OUR_IP),
            ),
            (
                "subnet broadcast source",
                syn(PEER_MAC, OUR_MAC, Ipv4Addr::new(192, 0, 2, 255), OUR_IP),
            ),
            (
                "limited broadcast source",
                syn(PEER_MAC, OUR_MAC, Ipv4Addr::BROADCAST, OUR_IP),
            ),
            (
                "multicast source",
                syn(PEER_MAC, OUR_MAC, Ipv4Addr::new(224, 0, 0, 1), OUR_IP),
            ),
            (
                "unspecified source",
                syn(PEER_MAC, OUR_MAC, Ipv4Addr::UNSPECIFIED, OUR_IP),
            ),
        ];
        for (what, frame) in cases {
            assert!(!fit(&frame), "{what} may not teach");
        }
    }

    #[test]
    fn generations_skip_zero() {
        assert_eq!(next_generation(1), 2);
        assert_eq!(next_generation(u32::MAX), 1);
    }

    #[test]
    fn opening_a_missing_raw_interface_is_a_typed_error() {
        let opts = SmoltcpOptions::new(
            DeviceSpec::Raw("nct-missing0".into()),
            "192.0.2.2/24".parse().unwrap(),
            8080,
        );
        match SmoltcpTransport::open(&opts) {
            Err(OpenError::Packet { name, .. }) => assert_eq!(name, "nct-missing0"),
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("opened a missing interface"),
        }
        let mut bad = opts.clone();
        bad.port = 0;
        assert!(matches!(
            SmoltcpTransport::open(&bad),
            Err(OpenError::InvalidOption(_))
        ));
    }
}
