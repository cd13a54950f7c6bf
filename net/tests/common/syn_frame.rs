//! A crafted TCP SYN in an Ethernet frame, for the tests that hand the
//! smoltcp transport frames of their own: the neighbour-cache guard's unit
//! tests (`src/smoltcp/stack.rs`) and the bogus-frame test of
//! `tests/smoltcp_netem.rs` include this file with `#[path]`. Depends on
//! `std` and `smoltcp` only.

use std::net::Ipv4Addr;

use ::smoltcp::phy::ChecksumCapabilities;
use ::smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
    Ipv4Packet, Ipv4Repr, TcpPacket, TcpSeqNumber,
};

/// What a test chooses of a crafted SYN.
pub struct Syn {
    pub src_mac: EthernetAddress,
    pub dst_mac: EthernetAddress,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: i32,
    pub window: u16,
}

impl Syn {
    /// The frame: Ethernet, IPv4 (TTL 64, no options) and a 20-byte TCP
    /// header with only SYN set (acknowledgment number and urgent pointer
    /// zero), no payload, both checksums right.
    pub fn frame(&self) -> Vec<u8> {
        let mut frame = vec![0u8; 14 + 20 + 20];
        let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
        EthernetRepr {
            src_addr: self.src_mac,
            dst_addr: self.dst_mac,
            ethertype: EthernetProtocol::Ipv4,
        }
        .emit(&mut eth);
        let mut ip = Ipv4Packet::new_unchecked(eth.payload_mut());
        Ipv4Repr {
            src_addr: self.src,
            dst_addr: self.dst,
            next_header: IpProtocol::Tcp,
            payload_len: 20,
            hop_limit: 64,
        }
        .emit(&mut ip, &ChecksumCapabilities::default());
        let mut tcp = TcpPacket::new_unchecked(ip.payload_mut());
        tcp.set_src_port(self.src_port);
        tcp.set_dst_port(self.dst_port);
        tcp.set_seq_number(TcpSeqNumber(self.seq));
        tcp.set_header_len(20);
        tcp.clear_flags();
        tcp.set_syn(true);
        tcp.set_window_len(self.window);
        tcp.fill_checksum(&IpAddress::Ipv4(self.src), &IpAddress::Ipv4(self.dst));
        frame
    }
}
