//! Our `phy::Device`: Ethernet frames in and out of a TAP queue or an
//! AF_PACKET socket through buffers allocated once.
//!
//! smoltcp's stock `TunTapInterface` allocates and zeroes an MTU-sized
//! buffer on every receive call, even one that finds nothing. Here the
//! transport first *fetches* a frame into the device's receive buffer (one
//! `read`/`recvmsg`), looks at it to pick the socket set it belongs to, and
//! only then runs smoltcp's ingress, whose `receive` hands out that pending
//! frame. Transmit tokens fill a preallocated buffer and `write` it out at
//! once. A second, small receive slot holds frames the transport injects
//! itself (neighbour hints, see `flow`), which `receive` serves first.
//!
//! The seam is this type: a kernel-bypass device (AF_XDP on a NIC queue)
//! would implement the same fetch/receive/transmit on its UMEM rings.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Packet, TcpPacket,
};

use super::sys;

/// Receive buffer size: the largest IPv4 packet plus an Ethernet header. A
/// TAP never delivers more than its MTU, but a packet socket on a veth sees
/// the sender's GSO super-frames (up to 64 KiB) whole.
const RX_BUFFER: usize = 65_535 + 14 + 4;
/// Room for an injected frame (an ARP packet is 42 bytes).
const INJECT_BUFFER: usize = 64;

/// Which kind of file descriptor carries the frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    /// A TAP queue: one `read`/`write` per frame.
    Tap,
    /// An AF_PACKET socket bound to one interface.
    Packet,
}

/// Frame counters of one device.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DeviceCounters {
    pub rx_frames: u64,
    pub tx_frames: u64,
    pub tx_errors: u64,
    pub rx_dropped: u64,
    pub checksum_fixups: u64,
}

/// A frame device with preallocated buffers; see the module docs.
pub(crate) struct FrameDevice {
    fd: OwnedFd,
    backend: Backend,
    rx: Box<[u8]>,
    /// Length of the fetched, not yet consumed frame in `rx` (0: none).
    rx_len: usize,
    inject: [u8; INJECT_BUFFER],
    inject_len: usize,
    tx: Box<[u8]>,
    /// IP MTU.
    mtu: usize,
    pub counters: DeviceCounters,
}

impl FrameDevice {
    pub(crate) fn new(fd: OwnedFd, backend: Backend, mtu: usize) -> Self {
        Self {
            fd,
            backend,
            rx: vec![0; RX_BUFFER].into_boxed_slice(),
            rx_len: 0,
            inject: [0; INJECT_BUFFER],
            inject_len: 0,
            tx: vec![0; mtu + 14].into_boxed_slice(),
            mtu,
            counters: DeviceCounters::default(),
        }
    }

    pub(crate) fn mtu(&self) -> usize {
        self.mtu
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Reads one frame into the receive buffer. `Ok(false)`: nothing queued.
    /// A frame that cannot be used (truncated) is dropped and counted, and
    /// reported as fetched-but-empty so the caller's budget still counts it.
    pub(crate) fn fetch(&mut self) -> io::Result<bool> {
        self.rx_len = 0;
        loop {
            let got = match self.backend {
                Backend::Tap => {
                    sys::read_frame(self.fd.as_raw_fd(), &mut self.rx).map(|len| sys::PacketFrame {
                        len,
                        truncated: false,
                        checksum_partial: false,
                    })
                }
                Backend::Packet => sys::recv_packet(self.fd.as_raw_fd(), &mut self.rx),
            };
            match got {
                Ok(frame) => {
                    self.counters.rx_frames += 1;
                    if frame.truncated {
                        self.counters.rx_dropped += 1;
                        return Ok(true);
                    }
                    self.rx_len = frame.len;
                    if frame.checksum_partial && complete_tcp_checksum(&mut self.rx[..frame.len]) {
                        self.counters.checksum_fixups += 1;
                    }
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The TAP's interface went down (EIO) and the like: nothing
                // to read now; the caller sleeps in epoll, not on an error.
                Err(e) if is_transient(&e) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }

    /// The fetched frame (empty when none).
    pub(crate) fn pending(&self) -> &[u8] {
        &self.rx[..self.rx_len]
    }

    /// Forgets the fetched frame without processing it.
    pub(crate) fn drop_pending(&mut self) {
        self.rx_len = 0;
    }

    /// Queues a frame that the next `receive` hands out before the fetched
    /// one; `build` writes it and returns its length.
    pub(crate) fn inject(&mut self, build: impl FnOnce(&mut [u8]) -> usize) {
        self.inject_len = build(&mut self.inject).min(INJECT_BUFFER);
    }

    /// Sends a frame built by `build` directly (frames the transport makes
    /// itself, e.g. a TIME-WAIT acknowledgement).
    pub(crate) fn send_raw(&mut self, len: usize, build: impl FnOnce(&mut [u8])) {
        let len = len.min(self.tx.len());
        build(&mut self.tx[..len]);
        send(self.fd.as_raw_fd(), &self.tx[..len], &mut self.counters);
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO | libc::ENETDOWN | libc::ENOBUFS | libc::ENOMEM | libc::ENXIO)
    )
}

fn send(fd: RawFd, frame: &[u8], counters: &mut DeviceCounters) {
    loop {
        match sys::write_frame(fd, frame) {
            Ok(_) => {
                counters.tx_frames += 1;
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // Dropped (queue full, interface down): TCP retransmits.
            Err(_) => {
                counters.tx_errors += 1;
                return;
            }
        }
    }
}

/// Fills in the TCP checksum of an IPv4 frame whose checksum field holds
/// only the pseudo-header sum (the kernel deferred it to an offload that a
/// veth never performs). Returns whether it did. Other protocols are left
/// alone: smoltcp drops them if their checksum is bad.
fn complete_tcp_checksum(frame: &mut [u8]) -> bool {
    let Ok(eth) = EthernetFrame::new_checked(&frame[..]) else {
        return false;
    };
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return false;
    }
    let header_len = EthernetFrame::<&[u8]>::header_len();
    let Ok(ip) = Ipv4Packet::new_checked(&frame[header_len..]) else {
        return false;
    };
    if ip.next_header() != IpProtocol::Tcp || ip.more_frags() || ip.frag_offset() != 0 {
        return false;
    }
    let (src, dst) = (
        IpAddress::Ipv4(ip.src_addr()),
        IpAddress::Ipv4(ip.dst_addr()),
    );
    let ip_header = usize::from(ip.header_len());
    let total = usize::from(ip.total_len());
    let Some(segment) = frame.get_mut(header_len + ip_header..header_len + total) else {
        return false;
    };
    let Ok(mut tcp) = TcpPacket::new_checked(segment) else {
        return false;
    };
    tcp.fill_checksum(&src, &dst);
    true
}

/// Hands out the fetched (or injected) frame.
pub(crate) struct RxFrame<'a>(&'a [u8]);

impl phy::RxToken for RxFrame<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.0)
    }
}

/// Writes one frame through the preallocated transmit buffer.
pub(crate) struct TxFrame<'a> {
    fd: RawFd,
    buf: &'a mut [u8],
    counters: &'a mut DeviceCounters,
}

impl phy::TxToken for TxFrame<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        if len <= self.buf.len() {
            let result = f(&mut self.buf[..len]);
            send(self.fd, &self.buf[..len], self.counters);
            result
        } else {
            // smoltcp sizes frames by our MTU, so this is unreachable in
            // practice; build the frame aside and drop it rather than panic.
            let mut scratch = vec![0; len];
            self.counters.tx_errors += 1;
            f(&mut scratch)
        }
    }
}

impl phy::Device for FrameDevice {
    type RxToken<'a>
        = RxFrame<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxFrame<'a>
    where
        Self: 'a;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let fd = self.fd.as_raw_fd();
        let frame = if self.inject_len > 0 {
            let len = std::mem::take(&mut self.inject_len);
            &self.inject[..len]
        } else if self.rx_len > 0 {
            let len = std::mem::take(&mut self.rx_len);
            &self.rx[..len]
        } else {
            return None;
        };
        Some((
            RxFrame(frame),
            TxFrame {
                fd,
                buf: &mut self.tx,
                counters: &mut self.counters,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        Some(TxFrame {
            fd: self.fd.as_raw_fd(),
            buf: &mut self.tx,
            counters: &mut self.counters,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu + 14;
        caps.max_burst_size = None;
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{EthernetAddress, EthernetRepr, Ipv4Repr, TcpSeqNumber};
    use std::net::Ipv4Addr;

    /// An Ethernet/IPv4/TCP frame with a valid checksum, plus its payload.
    fn tcp_frame(payload: &[u8]) -> Vec<u8> {
        let src = Ipv4Addr::new(192, 0, 2, 1);
        let dst = Ipv4Addr::new(192, 0, 2, 2);
        let tcp_len = 20 + payload.len();
        let mut frame = vec![0u8; 14 + 20 + tcp_len];
        EthernetRepr {
            src_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
            dst_addr: EthernetAddress([2, 0, 0, 0, 0, 2]),
            ethertype: EthernetProtocol::Ipv4,
        }
        .emit(&mut EthernetFrame::new_unchecked(&mut frame[..]));
        Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Tcp,
            payload_len: tcp_len,
            hop_limit: 64,
        }
        .emit(
            &mut Ipv4Packet::new_unchecked(&mut frame[14..]),
            &ChecksumCapabilities::default(),
        );
        let mut tcp = TcpPacket::new_unchecked(&mut frame[34..]);
        tcp.set_src_port(40000);
        tcp.set_dst_port(80);
        tcp.set_seq_number(TcpSeqNumber(7));
        tcp.set_header_len(20);
        tcp.clear_flags();
        tcp.set_ack(true);
        tcp.payload_mut().copy_from_slice(payload);
        tcp.fill_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst));
        frame
    }

    fn checksum_ok(frame: &[u8]) -> bool {
        let tcp = TcpPacket::new_checked(&frame[34..]).unwrap();
        tcp.verify_checksum(&IpAddress::v4(192, 0, 2, 1), &IpAddress::v4(192, 0, 2, 2))
    }

    #[test]
    fn partial_checksums_are_completed() {
        let mut frame = tcp_frame(b"hello, partial checksum");
        assert!(checksum_ok(&frame));
        // What the kernel leaves for an offload: some other value.
        frame[34 + 16] ^= 0x5a;
        assert!(!checksum_ok(&frame));
        assert!(complete_tcp_checksum(&mut frame));
        assert!(checksum_ok(&frame));
    }

    #[test]
    fn malformed_frames_are_left_alone() {
        for len in [0, 10, 14, 20, 33, 40] {
            let mut frame = tcp_frame(b"x");
            frame.truncate(len);
            assert!(!complete_tcp_checksum(&mut frame));
        }
        // An IPv4 total length past the end of the frame.
        let mut frame = tcp_frame(b"abc");
        frame[16] = 0xff;
        assert!(!complete_tcp_checksum(&mut frame));
    }
}
