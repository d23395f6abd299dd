//! Ethernet frames for tests and benchmarks, built with etherparse.
//!
//! Only compiled for host tests and with the `user` feature (never for the kernel). Malformed
//! variants are made by building a valid frame and then changing the bytes that make it
//! malformed, so each test says exactly what is wrong.

extern crate std;
use std::vec::Vec;

use etherparse::{
    EtherType, Ethernet2Header, IcmpEchoHeader, Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type,
    IpFragOffset, IpNumber, Ipv4Header, Ipv6FragmentHeader, Ipv6Header, Ipv6RawExtHeader,
    SingleVlanHeader, TcpHeader, UdpHeader, VlanId, VlanPcp,
};

use crate::parse::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// Source MAC of built frames.
pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
/// Destination MAC of built frames.
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

/// An Ethernet II frame around `payload`.
pub fn eth(ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Ethernet2Header {
        source: SRC_MAC,
        destination: DST_MAC,
        ether_type: EtherType(ether_type),
    }
    .to_bytes()
    .to_vec();
    v.extend_from_slice(payload);
    v
}

/// A TCP header with the given [`crate::parse`] `TCP_*` flags.
pub fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut h = TcpHeader::new(sport, dport, 1000, 64240);
    h.syn = flags & TCP_SYN != 0;
    h.ack = flags & TCP_ACK != 0;
    h.fin = flags & TCP_FIN != 0;
    h.rst = flags & TCP_RST != 0;
    h.to_bytes().to_vec()
}

/// A UDP header followed by `payload_len` zero bytes.
pub fn udp(sport: u16, dport: u16, payload_len: usize) -> Vec<u8> {
    let h = UdpHeader {
        source_port: sport,
        destination_port: dport,
        length: (8 + payload_len) as u16,
        checksum: 0,
    };
    let mut v = h.to_bytes().to_vec();
    v.resize(8 + payload_len, 0);
    v
}

/// An SCTP common header (etherparse has no SCTP type): ports, verification tag, checksum.
pub fn sctp(sport: u16, dport: u16) -> Vec<u8> {
    let mut v = Vec::with_capacity(12);
    v.extend_from_slice(&sport.to_be_bytes());
    v.extend_from_slice(&dport.to_be_bytes());
    v.extend_from_slice(&[0; 8]);
    v
}

/// An ICMPv4 echo request (or reply).
pub fn icmp4_echo(id: u16, reply: bool) -> Vec<u8> {
    let echo = IcmpEchoHeader { id, seq: 1 };
    let t = if reply {
        Icmpv4Type::EchoReply(echo)
    } else {
        Icmpv4Type::EchoRequest(echo)
    };
    Icmpv4Header::new(t).to_bytes().to_vec()
}

/// An ICMPv6 echo request (or reply).
pub fn icmp6_echo(id: u16, reply: bool) -> Vec<u8> {
    let echo = IcmpEchoHeader { id, seq: 1 };
    let t = if reply {
        Icmpv6Type::EchoReply(echo)
    } else {
        Icmpv6Type::EchoRequest(echo)
    };
    Icmpv6Header::new(t).to_bytes().to_vec()
}

/// An ICMPv6 message of a raw type (e.g. 135, neighbour solicitation) with an 8-byte header.
pub fn icmp6_raw(icmp_type: u8) -> Vec<u8> {
    let t = Icmpv6Type::Unknown {
        type_u8: icmp_type,
        code_u8: 0,
        bytes5to8: [0; 4],
    };
    Icmpv6Header::new(t).to_bytes().to_vec()
}

/// An ICMPv4 error of `icmp_type`/`code` quoting `quoted` (an IP packet from its header on).
pub fn icmp4_error(icmp_type: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let mut v = vec![icmp_type, code, 0, 0, 0, 0, 0, 0];
    v.extend_from_slice(quoted);
    v
}

/// An ICMPv6 error of `icmp_type` (code 0) quoting `quoted` (an IPv6 packet from its header on).
pub fn icmp6_error(icmp_type: u8, quoted: &[u8]) -> Vec<u8> {
    icmp4_error(icmp_type, 0, quoted)
}

/// An IPv4 header for `l4_len` bytes of payload.
pub fn ipv4_header(src: [u8; 4], dst: [u8; 4], proto: u8, l4_len: usize) -> Ipv4Header {
    Ipv4Header::new(l4_len as u16, 64, IpNumber(proto), src, dst).expect("payload fits")
}

/// An IPv4 frame (Ethernet + IPv4 + `l4`).
pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    ipv4_with(ipv4_header(src, dst, proto, l4.len()), l4)
}

/// An IPv4 frame with a prepared header (options, fragment fields); `total_len` is fixed up.
pub fn ipv4_with(mut h: Ipv4Header, l4: &[u8]) -> Vec<u8> {
    h.total_len = (h.header_len() + l4.len()) as u16;
    h.header_checksum = h.calc_header_checksum();
    let mut l3 = h.to_bytes().to_vec();
    l3.extend_from_slice(l4);
    eth(0x0800, &l3)
}

/// An IPv4 fragment: `offset` in 8-byte units, `more` = more fragments follow.
pub fn ipv4_fragment(
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    id: u16,
    offset: u16,
    more: bool,
    l4: &[u8],
) -> Vec<u8> {
    let mut h = ipv4_header(src, dst, proto, l4.len());
    h.identification = id;
    h.more_fragments = more;
    h.fragment_offset = IpFragOffset::try_new(offset).expect("13-bit offset");
    ipv4_with(h, l4)
}

/// An IPv6 frame. `exts` is an already serialised extension-header chain whose first header is
/// `first_next` (use [`ext6`] and [`frag6`]); `first_next` is the L4 protocol when `exts` is empty.
pub fn ipv6(src: [u8; 16], dst: [u8; 16], first_next: u8, exts: &[u8], l4: &[u8]) -> Vec<u8> {
    ipv6_hops(src, dst, first_next, exts, l4, 64)
}

/// [`ipv6`] with a given hop limit.
pub fn ipv6_hops(
    src: [u8; 16],
    dst: [u8; 16],
    first_next: u8,
    exts: &[u8],
    l4: &[u8],
    hop_limit: u8,
) -> Vec<u8> {
    let h = Ipv6Header {
        traffic_class: 0,
        flow_label: Default::default(),
        payload_length: (exts.len() + l4.len()) as u16,
        next_header: IpNumber(first_next),
        hop_limit,
        source: src,
        destination: dst,
    };
    let mut l3 = h.to_bytes().to_vec();
    l3.extend_from_slice(exts);
    l3.extend_from_slice(l4);
    eth(0x86dd, &l3)
}

/// A generic 8-byte IPv6 extension header (hop-by-hop, routing, destination options) whose
/// next header is `next`.
pub fn ext6(next: u8) -> Vec<u8> {
    Ipv6RawExtHeader::new_raw(IpNumber(next), &[0; 6])
        .expect("6 bytes")
        .to_bytes()
        .to_vec()
}

/// An IPv6 fragment header.
pub fn frag6(next: u8, offset: u16, more: bool, id: u32) -> Vec<u8> {
    Ipv6FragmentHeader {
        next_header: IpNumber(next),
        fragment_offset: IpFragOffset::try_new(offset).expect("13-bit offset"),
        more_fragments: more,
        identification: id,
    }
    .to_bytes()
    .to_vec()
}

/// Insert VLAN tags (outermost first) after the MAC addresses of `frame`.
pub fn with_vlans(frame: &[u8], vids: &[u16]) -> Vec<u8> {
    let inner = u16::from_be_bytes([frame[12], frame[13]]);
    let mut v = frame[..12].to_vec();
    // Outer TPID is the frame's type field; each tag then carries the type of what follows.
    let outer: u16 = if vids.len() > 1 { 0x88a8 } else { 0x8100 };
    v.extend_from_slice(&outer.to_be_bytes());
    for (i, vid) in vids.iter().enumerate() {
        let next = if i + 1 < vids.len() { 0x8100 } else { inner };
        let tag = SingleVlanHeader {
            pcp: VlanPcp::ZERO,
            drop_eligible_indicator: false,
            vlan_id: VlanId::try_new(*vid).expect("12-bit vid"),
            ether_type: EtherType(next),
        }
        .to_bytes();
        v.extend_from_slice(&tag);
    }
    v.extend_from_slice(&frame[14..]);
    v
}

/// IPv4 address `a.b.c.d`.
pub const fn v4(a: u8, b: u8, c: u8, d: u8) -> [u8; 4] {
    [a, b, c, d]
}

/// IPv6 address `fd00::<last>` (a ULA used by the tests).
pub const fn v6(last: u16) -> [u8; 16] {
    let b = last.to_be_bytes();
    [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, b[0], b[1]]
}
