//! The system calls under the smoltcp transport: opening a TAP queue or an
//! AF_PACKET socket, asking an interface for its index, MTU and MAC, moving
//! one frame in or out, and the epoll set the transport sleeps on.
//!
//! Everything unsafe in the transport lives here, each call wrapped into a
//! function that returns `io::Result` and owns its file descriptors.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `SOL_PACKET` options and auxdata status bits (linux/if_packet.h); stable
/// kernel ABI, spelled out because not every libc release exports them.
const PACKET_AUXDATA: libc::c_int = 8;
const PACKET_FANOUT: libc::c_int = 18;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const PACKET_FANOUT_HASH: u32 = 0;
const TP_STATUS_CSUMNOTREADY: u32 = 1 << 3;
/// `SO_RCVBUFFORCE` / `SO_SNDBUFFORCE` on the generic socket-option layout
/// (x86-64, arm64, riscv): set a buffer size past `rmem_max` as root.
const SO_SNDBUFFORCE: libc::c_int = 32;
const SO_RCVBUFFORCE: libc::c_int = 33;

/// `struct tpacket_auxdata` (linux/if_packet.h).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct TpacketAuxdata {
    tp_status: u32,
    tp_len: u32,
    tp_snaplen: u32,
    tp_mac: u16,
    tp_net: u16,
    tp_vlan_tci: u16,
    tp_vlan_tpid: u16,
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// An `ifreq` naming `name`; `InvalidInput` when the name does not fit.
fn ifreq_for(name: &str) -> io::Result<libc::ifreq> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name must be 1 to 15 bytes without NUL",
        ));
    }
    // SAFETY: ifreq is plain old data (a name array and a union of integers
    // and sockaddrs); all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn ifreq_name(req: &libc::ifreq) -> String {
    let bytes: Vec<u8> = req
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Runs an interface ioctl on a throwaway datagram socket.
fn interface_ioctl(name: &str, request: libc::c_ulong) -> io::Result<libc::ifreq> {
    let mut req = ifreq_for(name)?;
    // SAFETY: plain socket(2) call; the result is checked and owned below.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `req` is a valid ifreq that outlives the call; the SIOCGIF*
    // requests used here only write inside it.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), request as _, &mut req as *mut libc::ifreq) })?;
    Ok(req)
}

/// The interface's IP MTU (`ip link`'s `mtu`).
pub(crate) fn interface_mtu(name: &str) -> io::Result<usize> {
    let req = interface_ioctl(name, libc::SIOCGIFMTU as libc::c_ulong)?;
    // SAFETY: SIOCGIFMTU filled the `ifru_mtu` member of the union.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    Ok(mtu.max(0) as usize)
}

/// The interface's `IFF_*` flags.
pub(crate) fn interface_flags(name: &str) -> io::Result<libc::c_int> {
    let req = interface_ioctl(name, libc::SIOCGIFFLAGS as libc::c_ulong)?;
    // SAFETY: SIOCGIFFLAGS filled the `ifru_flags` member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    Ok(libc::c_int::from(flags) & 0xffff)
}

/// The interface's Ethernet address.
pub(crate) fn interface_mac(name: &str) -> io::Result<[u8; 6]> {
    let req = interface_ioctl(name, libc::SIOCGIFHWADDR as libc::c_ulong)?;
    // SAFETY: SIOCGIFHWADDR filled the `ifru_hwaddr` member of the union.
    let addr = unsafe { req.ifr_ifru.ifru_hwaddr };
    if addr.sa_family != libc::ARPHRD_ETHER {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not an Ethernet interface",
        ));
    }
    let mut mac = [0u8; 6];
    for (dst, &src) in mac.iter_mut().zip(addr.sa_data.iter()) {
        *dst = src as u8;
    }
    Ok(mac)
}

/// The interface's index; `NotFound` when there is no such interface.
///
/// Public (hidden) also for the link impairer of the tests (see
/// [`attach_tap_queue`]); not part of the crate's API.
#[doc(hidden)]
pub fn interface_index(name: &str) -> io::Result<u32> {
    let cname = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name has a NUL"))?;
    // SAFETY: cname is a valid NUL-terminated string for the call's duration.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(index)
}

/// Opens one queue of the TAP interface `name` (creating a non-persistent
/// one if it does not exist) without packet information headers; the fd is
/// non-blocking. Returns the fd and the interface's actual name.
///
/// `multi_queue` asks for `IFF_MULTI_QUEUE` (one fd per core loop, the
/// kernel spreads flows over them); a persistent interface created the other
/// way round is attached as it is.
pub(crate) fn open_tap(name: &str, multi_queue: bool) -> io::Result<(OwnedFd, String)> {
    match attach_tap_queue(name, multi_queue) {
        // An existing interface made with the other queue mode refuses the
        // request with EINVAL: attach it the way it was made.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => attach_tap_queue(name, !multi_queue),
        other => other,
    }
}

/// One `TUNSETIFF` attempt behind [`open_tap`]: opens a non-blocking
/// `/dev/net/tun` fd and attaches it to the TAP `name` (created if missing)
/// without packet information headers, as one queue of a multi-queue TAP
/// when `multi_queue`. Returns the fd and the interface's actual name.
///
/// Public (hidden) only for the link impairer of the tests and the
/// `netem_relay` example (`net/tests/netns/impair.rs`), which opens its TAP
/// the same way; not part of the crate's API.
#[doc(hidden)]
pub fn attach_tap_queue(name: &str, multi_queue: bool) -> io::Result<(OwnedFd, String)> {
    let mut req = ifreq_for(name)?;
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
    if multi_queue {
        flags |= libc::IFF_MULTI_QUEUE;
    }
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: the path is a valid NUL-terminated string.
    let fd = cvt(unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: TUNSETIFF reads and writes the ifreq, which outlives the
    // call.
    cvt(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETIFF,
            &mut req as *mut libc::ifreq,
        )
    })?;
    Ok((fd, ifreq_name(&req)))
}

/// Opens an AF_PACKET raw socket bound to interface `ifindex`, receiving
/// every protocol but not the frames sent from this host (so neither our
/// own frames nor the kernel's), with auxdata so checksums the kernel left
/// for offload can be completed. `fanout`: join this `PACKET_FANOUT_HASH`
/// group (one socket per core loop; the kernel keeps each flow on one).
///
/// The fd stays blocking: receives pass `MSG_DONTWAIT`, sends may wait for
/// a moment of socket buffer rather than drop a frame.
pub(crate) fn open_packet_socket(ifindex: u32, fanout: Option<u16>) -> io::Result<OwnedFd> {
    // Protocol 0: no frame is queued before bind() narrows the socket to
    // one interface.
    // SAFETY: plain socket(2) call; the result is checked and owned below.
    let fd = cvt(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_int_option(&fd, libc::SOL_PACKET, PACKET_AUXDATA, 1)?;
    // Kernels before 4.20 lack it; the frame classifier also drops frames
    // carrying our own source address.
    let _ = set_int_option(&fd, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1);
    // A burst of connects must not overflow the default ~200 KiB of skbs.
    if set_int_option(&fd, libc::SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20).is_err() {
        let _ = set_int_option(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, 8 << 20);
    }
    if set_int_option(&fd, libc::SOL_SOCKET, SO_SNDBUFFORCE, 4 << 20).is_err() {
        let _ = set_int_option(&fd, libc::SOL_SOCKET, libc::SO_SNDBUF, 4 << 20);
    }
    bind_packet_socket(&fd, ifindex)?;
    if let Some(group) = fanout {
        let value = u32::from(group) | (PACKET_FANOUT_HASH << 16);
        set_int_option(&fd, libc::SOL_PACKET, PACKET_FANOUT, value as libc::c_int)?;
    }
    Ok(fd)
}

/// Binds the AF_PACKET socket `fd` to interface `ifindex`, receiving every
/// protocol (`ETH_P_ALL`).
///
/// Public (hidden) only for the link impairer of the tests and the
/// `netem_relay` example (`net/tests/netns/impair.rs`), whose packet socket
/// is bound the same way; not part of the crate's API.
#[doc(hidden)]
pub fn bind_packet_socket(fd: &OwnedFd, ifindex: u32) -> io::Result<()> {
    // SAFETY: sockaddr_ll is plain old data; all zeroes is valid.
    let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    addr.sll_ifindex = ifindex as libc::c_int;
    // SAFETY: addr is a valid sockaddr_ll of the given length.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
            mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Sets the `c_int` socket option `level`/`name` of `fd` to `value`.
///
/// Public (hidden) also for the link impairer of the tests (see
/// [`attach_tap_queue`]); not part of the crate's API.
#[doc(hidden)]
pub fn set_int_option(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value is a c_int that outlives the call.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Reads one frame from a non-blocking TAP fd.
pub(crate) fn read_frame(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of buf.len() bytes.
    cvt_size(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

/// Writes one frame to a TAP fd or a bound packet socket.
pub(crate) fn write_frame(fd: RawFd, frame: &[u8]) -> io::Result<usize> {
    // SAFETY: frame is valid for reads of frame.len() bytes.
    cvt_size(unsafe { libc::write(fd, frame.as_ptr().cast(), frame.len()) })
}

/// One frame received from a packet socket.
pub(crate) struct PacketFrame {
    pub len: usize,
    /// The frame was longer than the buffer and is cut short.
    pub truncated: bool,
    /// The kernel left the transport checksum to an offload that never ran
    /// (a frame sent by this host through a veth): the checksum field holds
    /// only the pseudo-header sum.
    pub checksum_partial: bool,
}

/// Receives one frame from a packet socket without blocking.
pub(crate) fn recv_packet(fd: RawFd, buf: &mut [u8]) -> io::Result<PacketFrame> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for one cmsghdr carrying a tpacket_auxdata, 8-byte aligned.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain old data; all zeroes is valid.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = mem::size_of_val(&control) as _;
    // SAFETY: msg points at iov (valid for buf) and at control, both alive
    // for the call.
    let len =
        cvt_size(unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT | libc::MSG_TRUNC) })?;
    let mut status = 0u32;
    // The length a control message needs to carry a whole tpacket_auxdata.
    // SAFETY: CMSG_LEN is a pure size computation.
    let aux_cmsg_len = unsafe { libc::CMSG_LEN(mem::size_of::<TpacketAuxdata>() as u32) } as usize;
    // SAFETY: msg was filled by recvmsg; CMSG_FIRSTHDR returns null or a
    // header that lies within msg_control/msg_controllen.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: CMSG_FIRSTHDR/NXTHDR only return a header whose bytes lie
        // inside `control` (8-aligned, as a cmsghdr needs).
        let header = unsafe { &*cmsg };
        if header.cmsg_level == libc::SOL_PACKET
            && header.cmsg_type == PACKET_AUXDATA
            && header.cmsg_len as usize >= aux_cmsg_len
        {
            // SAFETY: the kernel never sets cmsg_len past msg_controllen (it
            // truncates, with MSG_CTRUNC), and this one's covers a whole
            // tpacket_auxdata after the header, so the read stays inside
            // `control`; read_unaligned copes with the data's alignment.
            let aux: TpacketAuxdata =
                unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast()) };
            status = aux.tp_status;
        }
        // SAFETY: `cmsg` is a header within msg's control buffer (above);
        // CMSG_NXTHDR checks the next one against msg_controllen.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok(PacketFrame {
        len: len.min(buf.len()),
        truncated: len > buf.len() || msg.msg_flags & libc::MSG_TRUNC != 0,
        checksum_partial: status & TP_STATUS_CSUMNOTREADY != 0,
    })
}

/// The process id, for naming a fanout group.
pub(crate) fn process_id() -> u32 {
    std::process::id()
}

/// What an [`Epoll::wait`] reported.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ready {
    pub data: u64,
}

/// A bare epoll instance: the device fd level-triggered, wake fds
/// edge-triggered (the `Transport` contract for `Wake`).
pub(crate) struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    pub(crate) fn new(capacity: usize) -> io::Result<Self> {
        // SAFETY: plain epoll_create1 call; the result is checked and owned.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        Ok(Self {
            // SAFETY: fd is a fresh descriptor nobody else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            events: vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(1)],
        })
    }

    pub(crate) fn add(&self, fd: RawFd, data: u64, edge_triggered: bool) -> io::Result<()> {
        let mut flags = libc::EPOLLIN as u32;
        if edge_triggered {
            flags |= libc::EPOLLET as u32;
        }
        let mut event = libc::epoll_event {
            events: flags,
            u64: data,
        };
        // SAFETY: event is a valid epoll_event for the call's duration.
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) })
            .map(drop)
    }

    pub(crate) fn delete(&self, fd: RawFd) -> io::Result<()> {
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: event is valid (ignored by DEL, required non-null by old
        // kernels).
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut event) })
            .map(drop)
    }

    /// Waits up to `timeout_ms` (-1: forever, 0: just look) and calls
    /// `on_ready` for each reported fd. EINTR counts as an empty wait.
    pub(crate) fn wait(
        &mut self,
        timeout_ms: i32,
        mut on_ready: impl FnMut(Ready),
    ) -> io::Result<()> {
        // SAFETY: events is valid for writes of events.len() entries.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                timeout_ms,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(err)
            };
        }
        for event in &self.events[..n as usize] {
            on_ready(Ready { data: event.u64 });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked() {
        assert_eq!(
            ifreq_for("").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            ifreq_for("a-name-far-too-long").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(ifreq_name(&ifreq_for("tap0").unwrap()), "tap0");
    }

    #[test]
    fn loopback_is_found_and_is_not_ethernet() {
        assert!(interface_index("lo").unwrap() > 0);
        assert!(interface_mtu("lo").unwrap() > 0);
        assert!(interface_mac("lo").is_err());
        assert!(interface_index("nct-missing0").is_err());
    }
}
