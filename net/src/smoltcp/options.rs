//! Settings of a [`SmoltcpTransport`](super::SmoltcpTransport) and the
//! errors of opening one.

use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

/// Where the transport's Ethernet frames come from and go to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// A TAP interface (`--tap IFNAME`): created if it does not exist
    /// (non-persistent: it goes away with the process), attached otherwise.
    /// The kernel side of the TAP is the "wire": give it an address in the
    /// same subnet (e.g. `192.0.2.1/24`) and bring it up.
    Tap(String),
    /// An AF_PACKET raw socket on an existing Ethernet interface
    /// (`--raw IFNAME`), e.g. one end of a veth pair. The interface must be
    /// up and must **not** carry the transport's IP address itself, or the
    /// kernel's stack answers for it too.
    Raw(String),
}

impl DeviceSpec {
    /// The interface name.
    pub fn interface(&self) -> &str {
        match self {
            Self::Tap(name) | Self::Raw(name) => name,
        }
    }
}

/// As a log line names it: `TAP nct0`, `raw socket on veth0`.
impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tap(name) => write!(f, "TAP {name}"),
            Self::Raw(name) => write!(f, "raw socket on {name}"),
        }
    }
}

/// An IPv4 address with its prefix length, as in `192.0.2.2/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    /// The address.
    pub addr: Ipv4Addr,
    /// The network prefix length, 0–32.
    pub prefix_len: u8,
}

impl Ipv4Cidr {
    /// `addr/prefix_len`; `None` when the prefix is longer than 32.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Option<Self> {
        (prefix_len <= 32).then_some(Self { addr, prefix_len })
    }

    /// Whether `other` is in this network.
    pub fn contains(&self, other: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0);
        u32::from(self.addr) & mask == u32::from(other) & mask
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// A string that is not `a.b.c.d/len`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected an IPv4 address with a prefix length, like 192.0.2.2/24: {0:?}")]
pub struct ParseCidrError(pub String);

impl FromStr for Ipv4Cidr {
    type Err = ParseCidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseCidrError(s.to_owned());
        let (addr, len) = s.split_once('/').ok_or_else(err)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| err())?;
        let len: u8 = len.parse().map_err(|_| err())?;
        Self::new(addr, len).ok_or_else(err)
    }
}

/// Settings of a [`SmoltcpTransport`](super::SmoltcpTransport). Build with
/// [`SmoltcpOptions::new`] and adjust fields; the defaults and the reasons
/// for them are in `docs/userspace-networking.md`.
#[derive(Clone, Debug)]
pub struct SmoltcpOptions {
    /// The TAP or packet-socket interface.
    pub device: DeviceSpec,
    /// The transport's own address and subnet (not the kernel side's).
    pub address: Ipv4Cidr,
    /// Next hop for peers outside `address`'s subnet (usually the kernel
    /// side of the TAP); `None`: on-link peers only.
    pub gateway: Option<Ipv4Addr>,
    /// The TCP port to listen on (not 0: all core loops must agree on it).
    pub port: u16,
    /// Our Ethernet address. `None`: a TAP gets `02:00:` followed by the IP
    /// address (locally administered, the same for every queue); a packet
    /// socket uses the interface's own address.
    pub mac: Option<[u8; 6]>,
    /// Core loops sharing the interface, each with its own transport: above
    /// 1, a TAP is opened as one queue of a multi-queue TAP and a packet
    /// socket joins a hash fanout group, so the kernel keeps every flow on
    /// one loop.
    pub queues: usize,
    /// Live TCP connections at most (handshaking, open, and closing ones
    /// the application already released). At the cap the listening socket
    /// is withdrawn, so new connections are refused with a reset, and one
    /// line is logged.
    pub max_connections: usize,
    /// Sockets (with their buffers) created up front and kept for reuse, so
    /// a burst of connects allocates nothing up to this many.
    pub listen_pool: usize,
    /// Receive buffer (and so the largest window) per connection, bytes.
    pub rx_buffer: usize,
    /// Transmit buffer per connection, bytes.
    pub tx_buffer: usize,
    /// How long an ACK may wait for data to ride on; `None` sends every ACK
    /// at once (the transport still holds it for one turn, which covers
    /// answers written within the turn). More than one segment's worth of
    /// unacknowledged data is always acknowledged at once.
    pub ack_delay: Option<Duration>,
    /// Nagle's algorithm (holds small segments while data is unacknowledged:
    /// fatal for µs-scale request/response).
    pub nagle: bool,
    /// Abort a connection that hears nothing from its peer this long while
    /// it has something to send; `None`: never (the HTTP layer's timeouts
    /// close idle connections).
    pub tcp_timeout: Option<Duration>,
    /// TCP keep-alive interval; `None`: off.
    pub keep_alive: Option<Duration>,
    /// A handshake not completed in this time is dropped.
    pub handshake_timeout: Duration,
    /// A connection the application closed that has not finished its FIN
    /// exchange in this time is reset.
    pub close_timeout: Duration,
    /// How long a closed connection's tuple stays in TIME-WAIT.
    pub time_wait: Duration,
    /// TIME-WAIT entries kept at most (the oldest goes first).
    pub max_time_wait: usize,
    /// Frames taken from the device per poll at most.
    pub ingress_budget: usize,
    /// Segments one connection may emit per egress pass before the others
    /// get their turn.
    pub egress_budget: usize,
    /// Override the interface MTU (IP bytes).
    pub mtu: Option<usize>,
}

impl SmoltcpOptions {
    /// The defaults for `device`, `address` and `port`.
    pub fn new(device: DeviceSpec, address: Ipv4Cidr, port: u16) -> Self {
        Self {
            device,
            address,
            gateway: None,
            port,
            mac: None,
            queues: 1,
            max_connections: 16_384,
            listen_pool: 64,
            rx_buffer: 64 * 1024,
            tx_buffer: 64 * 1024,
            ack_delay: Some(Duration::from_millis(1)),
            nagle: false,
            tcp_timeout: None,
            keep_alive: None,
            handshake_timeout: Duration::from_secs(30),
            close_timeout: Duration::from_secs(60),
            time_wait: Duration::from_secs(10),
            max_time_wait: 65_536,
            ingress_budget: 64,
            egress_budget: 64,
            mtu: None,
        }
    }

    /// The MAC a TAP transport uses when none is given: `02:00:` + IP.
    pub fn default_tap_mac(addr: Ipv4Addr) -> [u8; 6] {
        let [a, b, c, d] = addr.octets();
        [0x02, 0x00, a, b, c, d]
    }

    pub(crate) fn validate(&self) -> Result<(), OpenError> {
        let bad = |what: &'static str| Err(OpenError::InvalidOption(what));
        if self.port == 0 {
            return bad("port must not be 0");
        }
        if self.queues == 0 {
            return bad("queues must be at least 1");
        }
        if self.max_connections == 0 {
            return bad("max_connections must be at least 1");
        }
        // smoltcp refuses windows above 1 GiB; tiny buffers cannot hold a
        // single segment.
        for size in [self.rx_buffer, self.tx_buffer] {
            if !(1024..=(1 << 30)).contains(&size) {
                return bad("buffer sizes must be between 1 KiB and 1 GiB");
            }
        }
        if self.ingress_budget == 0 || self.egress_budget == 0 {
            return bad("budgets must be at least 1");
        }
        if let Some(mtu) = self.mtu {
            if !(576..=65_521).contains(&mtu) {
                return bad("mtu must be between 576 and 65521");
            }
        }
        if self.address.addr.is_unspecified()
            || self.address.addr.is_broadcast()
            || self.address.addr.is_multicast()
        {
            return bad("address must be a unicast IPv4 address");
        }
        if let Some(mac) = self.mac {
            if mac[0] & 1 != 0 || mac == [0; 6] {
                return bad("mac must be a unicast Ethernet address");
            }
        }
        if let Some(gw) = self.gateway {
            if !self.address.contains(gw) || gw == self.address.addr {
                return bad("gateway must be another address in the subnet");
            }
        }
        Ok(())
    }
}

/// Why a [`SmoltcpTransport`](super::SmoltcpTransport) could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A setting is out of range.
    #[error("invalid smoltcp transport option: {0}")]
    InvalidOption(&'static str),
    /// The TAP queue could not be opened or attached (no `/dev/net/tun`, no
    /// `CAP_NET_ADMIN`, the name is taken by a non-TAP interface).
    #[error("cannot open TAP interface {name}: {source}")]
    Tap {
        /// The interface name.
        name: String,
        /// The system error.
        source: io::Error,
    },
    /// The packet socket could not be opened or bound (no such interface,
    /// no `CAP_NET_RAW`).
    #[error("cannot open a packet socket on {name}: {source}")]
    Packet {
        /// The interface name.
        name: String,
        /// The system error.
        source: io::Error,
    },
    /// The interface's MTU or MAC could not be read, or it is not Ethernet.
    #[error("cannot query interface {name}: {source}")]
    Query {
        /// The interface name.
        name: String,
        /// The system error.
        source: io::Error,
    },
    /// Creating the epoll instance or registering the device failed.
    #[error("cannot set up polling: {0}")]
    Poll(#[source] io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> SmoltcpOptions {
        SmoltcpOptions::new(
            DeviceSpec::Tap("nct0".into()),
            "192.0.2.2/24".parse().unwrap(),
            8080,
        )
    }

    #[test]
    fn cidrs_parse_and_print() {
        let cidr: Ipv4Cidr = "192.0.2.2/24".parse().unwrap();
        assert_eq!(cidr.addr, Ipv4Addr::new(192, 0, 2, 2));
        assert_eq!(cidr.prefix_len, 24);
        assert_eq!(cidr.to_string(), "192.0.2.2/24");
        assert!(cidr.contains(Ipv4Addr::new(192, 0, 2, 200)));
        assert!(!cidr.contains(Ipv4Addr::new(192, 0, 3, 1)));
        assert!("0.0.0.0/0"
            .parse::<Ipv4Cidr>()
            .unwrap()
            .contains(Ipv4Addr::new(8, 8, 8, 8)));
        for bad in [
            "192.0.2.2",
            "192.0.2.2/33",
            "192.0.2/24",
            "x/24",
            "1.2.3.4/-1",
            "",
        ] {
            assert_eq!(
                bad.parse::<Ipv4Cidr>(),
                Err(ParseCidrError(bad.to_owned())),
                "{bad}"
            );
        }
    }

    #[test]
    fn defaults_validate_and_bad_values_are_refused() {
        opts().validate().unwrap();
        type Change = Box<dyn Fn(&mut SmoltcpOptions)>;
        let cases: Vec<Change> = vec![
            Box::new(|o| o.port = 0),
            Box::new(|o| o.queues = 0),
            Box::new(|o| o.max_connections = 0),
            Box::new(|o| o.rx_buffer = 10),
            Box::new(|o| o.tx_buffer = 2 << 30),
            Box::new(|o| o.ingress_budget = 0),
            Box::new(|o| o.mtu = Some(100)),
            Box::new(|o| o.address.addr = Ipv4Addr::UNSPECIFIED),
            Box::new(|o| o.mac = Some([1, 0, 0, 0, 0, 1])),
            Box::new(|o| o.gateway = Some(Ipv4Addr::new(10, 0, 0, 1))),
            Box::new(|o| o.gateway = Some(Ipv4Addr::new(192, 0, 2, 2))),
        ];
        for (i, change) in cases.iter().enumerate() {
            let mut o = opts();
            change(&mut o);
            assert!(
                matches!(o.validate(), Err(OpenError::InvalidOption(_))),
                "case {i}"
            );
        }
    }

    #[test]
    fn default_tap_mac_is_local_unicast_and_follows_the_address() {
        let mac = SmoltcpOptions::default_tap_mac(Ipv4Addr::new(192, 0, 2, 2));
        assert_eq!(mac, [0x02, 0x00, 192, 0, 2, 2]);
        assert_eq!(mac[0] & 1, 0, "unicast");
        assert_eq!(mac[0] & 2, 2, "locally administered");
    }
}
