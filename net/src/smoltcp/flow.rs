//! Demultiplexing before smoltcp sees a frame: which connection (and so
//! which socket set) an incoming frame belongs to, the compact TIME-WAIT
//! table, and the few frames the transport writes itself.
//!
//! smoltcp finds the socket for every TCP segment by scanning its socket
//! set, and its egress and `poll_at` visit every socket in the set: O(open
//! connections) per frame and per turn. The transport instead gives every
//! connection a socket set of its own and looks the 4-tuple up here, in a
//! hash table, before calling `poll_ingress_single` with that one set.
//!
//! A closed connection in TIME-WAIT keeps only a table entry (no socket, no
//! buffers): a retransmitted FIN is acknowledged, a new SYN for the tuple
//! opens a new connection, anything else is dropped silently (never reset).

use std::collections::VecDeque;
use std::net::Ipv4Addr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, TcpPacket, TcpSeqNumber,
};

use crate::id_hash::IdMap;

/// A connection's 4-tuple as seen by this interface (our address is
/// implied): peer address, peer port, our port.
pub(crate) type FlowKey = u64;

pub(crate) fn flow_key(peer: Ipv4Addr, peer_port: u16, local_port: u16) -> FlowKey {
    (u64::from(u32::from(peer)) << 32) | (u64::from(peer_port) << 16) | u64::from(local_port)
}

pub(crate) type FlowMap<V> = IdMap<FlowKey, V>;

/// The fields of an incoming TCP segment the transport acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Segment {
    pub key: FlowKey,
    pub peer: Ipv4Addr,
    pub peer_mac: EthernetAddress,
    pub peer_port: u16,
    pub local_port: u16,
    pub syn: bool,
    pub ack: bool,
    pub rst: bool,
    pub fin: bool,
    pub seq: TcpSeqNumber,
    pub ack_number: TcpSeqNumber,
    pub payload_len: usize,
}

/// What a frame is, as far as routing it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A TCP segment addressed to our IP.
    Tcp(Segment),
    /// An ARP reply to us (smoltcp learns from it).
    ArpReply,
    /// A frame we sent ourselves, seen again (packet sockets without
    /// `PACKET_IGNORE_OUTGOING`).
    Own,
    /// Anything else (ARP requests, ICMP, noise): smoltcp decides, with no
    /// socket to look at.
    Other,
}

/// Looks at an Ethernet frame just far enough to route it. Malformed frames
/// are `Other`: smoltcp drops them.
pub(crate) fn classify(frame: &[u8], our_ip: Ipv4Addr, our_mac: EthernetAddress) -> Frame {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Frame::Other;
    };
    if eth.src_addr() == our_mac {
        return Frame::Own;
    }
    match eth.ethertype() {
        EthernetProtocol::Ipv4 => {}
        EthernetProtocol::Arp => {
            return match ArpPacket::new_checked(eth.payload()).and_then(|p| ArpRepr::parse(&p)) {
                Ok(ArpRepr::EthernetIpv4 {
                    operation: ArpOperation::Reply,
                    target_protocol_addr,
                    ..
                }) if target_protocol_addr == our_ip => Frame::ArpReply,
                _ => Frame::Other,
            };
        }
        _ => return Frame::Other,
    }
    let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
        return Frame::Other;
    };
    if ip.next_header() != IpProtocol::Tcp
        || ip.dst_addr() != our_ip
        || ip.more_frags()
        || ip.frag_offset() != 0
    {
        return Frame::Other;
    }
    let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
        return Frame::Other;
    };
    let peer = ip.src_addr();
    Frame::Tcp(Segment {
        key: flow_key(peer, tcp.src_port(), tcp.dst_port()),
        peer,
        peer_mac: eth.src_addr(),
        peer_port: tcp.src_port(),
        local_port: tcp.dst_port(),
        syn: tcp.syn(),
        ack: tcp.ack(),
        rst: tcp.rst(),
        fin: tcp.fin(),
        seq: tcp.seq_number(),
        ack_number: tcp.ack_number(),
        payload_len: tcp.payload().len(),
    })
}

/// Writes an ARP reply "`peer_ip` is at `peer_mac`" addressed to us: fed to
/// smoltcp as if received, it fills the neighbour cache. Used when a frame
/// arrives from a peer this interface may never have resolved (with several
/// queues the peer's ARP exchange can land on another core's queue).
/// Returns the frame length.
pub(crate) fn write_neighbor_hint(
    buf: &mut [u8],
    our_mac: EthernetAddress,
    our_ip: Ipv4Addr,
    peer_mac: EthernetAddress,
    peer_ip: Ipv4Addr,
) -> usize {
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: peer_mac,
        source_protocol_addr: peer_ip,
        target_hardware_addr: our_mac,
        target_protocol_addr: our_ip,
    };
    let len = 14 + arp.buffer_len();
    if buf.len() < len {
        return 0;
    }
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..len]);
    EthernetRepr {
        src_addr: peer_mac,
        dst_addr: our_mac,
        ethertype: EthernetProtocol::Arp,
    }
    .emit(&mut eth);
    arp.emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
    len
}

/// Length of a bare TCP segment frame (Ethernet + IPv4 + TCP, no options).
pub(crate) const BARE_SEGMENT_LEN: usize = 14 + 20 + 20;

/// Writes the ACK a TIME-WAIT endpoint owes a retransmitted FIN: it
/// acknowledges everything the segment carried, FIN included, with our
/// sequence number where the peer's ACK says it is.
pub(crate) fn write_time_wait_ack(
    buf: &mut [u8],
    our_mac: EthernetAddress,
    our_ip: Ipv4Addr,
    seg: &Segment,
) {
    let buf = &mut buf[..BARE_SEGMENT_LEN];
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src_addr: our_mac,
        dst_addr: seg.peer_mac,
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut eth);
    let mut ip = Ipv4Packet::new_unchecked(eth.payload_mut());
    Ipv4Repr {
        src_addr: our_ip,
        dst_addr: seg.peer,
        next_header: IpProtocol::Tcp,
        payload_len: 20,
        hop_limit: 64,
    }
    .emit(&mut ip, &ChecksumCapabilities::default());
    let mut tcp = TcpPacket::new_unchecked(ip.payload_mut());
    tcp.set_src_port(seg.local_port);
    tcp.set_dst_port(seg.peer_port);
    tcp.set_seq_number(seg.ack_number);
    tcp.set_ack_number(seg.seq + seg.payload_len + usize::from(seg.syn) + usize::from(seg.fin));
    tcp.set_header_len(20);
    tcp.clear_flags();
    tcp.set_ack(true);
    tcp.set_window_len(0);
    tcp.set_urgent_at(0);
    tcp.fill_checksum(&IpAddress::Ipv4(our_ip), &IpAddress::Ipv4(seg.peer));
}

/// What to do with a segment for a tuple in TIME-WAIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TimeWaitAction {
    /// A new SYN: the entry is gone, open a connection as usual.
    Reopen,
    /// A retransmitted FIN: acknowledge it.
    Ack,
    /// An old duplicate or a reset: drop it.
    Drop,
}

/// Closed connections' tuples, each remembered for the TIME-WAIT period,
/// without a socket. Entries expire in insertion order (one period for
/// all), so expiry is a queue; the map answers lookups.
pub(crate) struct TimeWaitTable {
    map: FlowMap<i64>,
    order: VecDeque<(FlowKey, i64)>,
    period_us: i64,
    capacity: usize,
}

impl TimeWaitTable {
    pub(crate) fn new(period_us: i64, capacity: usize) -> Self {
        Self {
            map: FlowMap::default(),
            order: VecDeque::new(),
            period_us,
            capacity,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Remembers `key` until `now + period`. When full, the oldest entry is
    /// forgotten early (that tuple merely loses its protection).
    pub(crate) fn insert(&mut self, key: FlowKey, now_us: i64) {
        if self.capacity == 0 || self.period_us <= 0 {
            return;
        }
        while self.map.len() >= self.capacity {
            let Some((old, expires)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&old) == Some(&expires) {
                self.map.remove(&old);
            }
        }
        let expires = now_us + self.period_us;
        self.map.insert(key, expires);
        self.order.push_back((key, expires));
    }

    /// Forgets entries whose period is over.
    pub(crate) fn expire(&mut self, now_us: i64) {
        while let Some(&(key, expires)) = self.order.front() {
            if expires > now_us {
                break;
            }
            self.order.pop_front();
            if self.map.get(&key) == Some(&expires) {
                self.map.remove(&key);
            }
        }
    }

    /// Whether `seg`'s tuple is in TIME-WAIT, and what to do with it.
    pub(crate) fn check(&mut self, seg: &Segment, now_us: i64) -> Option<TimeWaitAction> {
        let expires = *self.map.get(&seg.key)?;
        if expires <= now_us {
            self.map.remove(&seg.key);
            return None;
        }
        Some(if seg.rst {
            self.map.remove(&seg.key);
            TimeWaitAction::Drop
        } else if seg.syn && !seg.ack {
            self.map.remove(&seg.key);
            TimeWaitAction::Reopen
        } else if seg.fin {
            TimeWaitAction::Ack
        } else {
            TimeWaitAction::Drop
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::Ipv4Address;

    const OUR_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 2]);
    const PEER_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);
    const OUR_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
    const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

    fn segment(syn: bool, ack: bool, fin: bool, rst: bool) -> Segment {
        Segment {
            key: flow_key(PEER_IP, 40000, 80),
            peer: PEER_IP,
            peer_mac: PEER_MAC,
            peer_port: 40000,
            local_port: 80,
            syn,
            ack,
            rst,
            fin,
            seq: TcpSeqNumber(1000),
            ack_number: TcpSeqNumber(5000),
            payload_len: 0,
        }
    }

    #[test]
    fn flow_keys_separate_every_field() {
        let a = flow_key(PEER_IP, 1, 2);
        assert_ne!(a, flow_key(PEER_IP, 2, 1));
        assert_ne!(a, flow_key(Ipv4Address::new(192, 0, 2, 3), 1, 2));
        assert_eq!(a, flow_key(PEER_IP, 1, 2));
    }

    #[test]
    fn time_wait_ack_round_trips_through_classify() {
        let mut buf = [0u8; BARE_SEGMENT_LEN];
        let fin = Segment {
            payload_len: 3,
            ..segment(false, true, true, false)
        };
        write_time_wait_ack(&mut buf, OUR_MAC, OUR_IP, &fin);
        // Seen from the peer's side: swap the roles.
        let Frame::Tcp(ack) = classify(&buf, PEER_IP, PEER_MAC) else {
            panic!("not a TCP frame");
        };
        assert_eq!(ack.peer, OUR_IP);
        assert_eq!((ack.peer_port, ack.local_port), (80, 40000));
        assert!(ack.ack && !ack.syn && !ack.fin && !ack.rst);
        assert_eq!(ack.seq, TcpSeqNumber(5000));
        assert_eq!(ack.ack_number, TcpSeqNumber(1000 + 3 + 1));
        let ip = Ipv4Packet::new_checked(&buf[14..]).unwrap();
        assert!(ip.verify_checksum());
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.verify_checksum(&IpAddress::Ipv4(OUR_IP), &IpAddress::Ipv4(PEER_IP)));
    }

    #[test]
    fn neighbor_hint_is_an_arp_reply_to_us() {
        let mut buf = [0u8; 64];
        let len = write_neighbor_hint(&mut buf, OUR_MAC, OUR_IP, PEER_MAC, PEER_IP);
        assert_eq!(len, 42);
        // Its source is the peer, so the classifier sees a reply to us.
        assert_eq!(classify(&buf[..len], OUR_IP, OUR_MAC), Frame::ArpReply);
        assert_eq!(
            write_neighbor_hint(&mut buf[..10], OUR_MAC, OUR_IP, PEER_MAC, PEER_IP),
            0
        );
    }

    #[test]
    fn classify_drops_our_own_and_malformed_frames() {
        let mut buf = [0u8; BARE_SEGMENT_LEN];
        write_time_wait_ack(
            &mut buf,
            OUR_MAC,
            OUR_IP,
            &segment(false, true, true, false),
        );
        assert_eq!(classify(&buf, PEER_IP, OUR_MAC), Frame::Own);
        // Cut inside the IPv4 header.
        assert_eq!(classify(&buf[..20], PEER_IP, PEER_MAC), Frame::Other);
        assert_eq!(classify(&[], OUR_IP, OUR_MAC), Frame::Other);
        // Addressed to another IP.
        assert_eq!(
            classify(&buf, Ipv4Addr::new(10, 0, 0, 1), PEER_MAC),
            Frame::Other
        );
    }

    #[test]
    fn time_wait_answers_fins_reopens_on_syn_and_expires() {
        let mut tw = TimeWaitTable::new(1_000, 4);
        let key = segment(false, true, false, false).key;
        tw.insert(key, 0);
        assert_eq!(tw.len(), 1);
        assert_eq!(
            tw.check(&segment(false, true, true, false), 10),
            Some(TimeWaitAction::Ack)
        );
        assert_eq!(
            tw.check(&segment(false, true, false, false), 10),
            Some(TimeWaitAction::Drop)
        );
        assert_eq!(
            tw.check(&segment(true, false, false, false), 10),
            Some(TimeWaitAction::Reopen)
        );
        assert_eq!(tw.check(&segment(true, false, false, false), 10), None);
        tw.insert(key, 100);
        assert_eq!(
            tw.check(&segment(false, false, false, true), 200),
            Some(TimeWaitAction::Drop)
        );
        assert_eq!(tw.len(), 0);
        tw.insert(key, 100);
        tw.expire(1_099);
        assert_eq!(tw.len(), 1);
        tw.expire(1_100);
        assert_eq!(tw.len(), 0);
    }

    #[test]
    fn a_full_time_wait_table_forgets_the_oldest() {
        let mut tw = TimeWaitTable::new(1_000, 2);
        for port in 1..=3 {
            tw.insert(flow_key(PEER_IP, port, 80), i64::from(port));
        }
        assert_eq!(tw.len(), 2);
        let mut seg = segment(false, true, true, false);
        seg.key = flow_key(PEER_IP, 1, 80);
        assert_eq!(tw.check(&seg, 10), None);
        seg.key = flow_key(PEER_IP, 3, 80);
        assert_eq!(tw.check(&seg, 10), Some(TimeWaitAction::Ack));
        // A re-inserted key outlives its stale queue entry.
        tw.insert(seg.key, 500);
        tw.expire(1_003);
        assert_eq!(tw.check(&seg, 1_003), Some(TimeWaitAction::Ack));
    }
}
