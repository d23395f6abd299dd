//! Packet parsing shared by the eBPF programs and host tests.
//!
//! The parser reads through [`PacketBytes`], so the kernel side implements it with
//! `bpf_skb_load_bytes` and host tests with a byte slice. It handles on purpose:
//! - up to two VLAN tags (802.1Q / 802.1ad): the policy applies to the inner packet, so a pod
//!   cannot bypass it by tagging;
//! - IPv4 options (IHL > 5): the L4 header is found past them;
//! - IPv6 extension headers (hop-by-hop, routing, destination options, fragment, AH), at most
//!   [`MAX_IPV6_EXT_HEADERS`] of them; more is an error (the caller fails closed);
//! - IP fragments: the first carries the ports, later ones are marked [`FRAG_LATER`] and get
//!   their ports from the fragment map in the data path;
//! - truncated headers, bad versions, bad IHL and lengths: an error, never a guess;
//! - ICMP and ICMPv6 errors: the tuple of the packet they quote is read into
//!   [`Packet::quoted`], so the data path can relate an error to the connection it is about
//!   (conntrack's RELATED); a quote too short to read leaves it unset, never an error.
//!
//! Non-IP frames (ARP, LLDP, ...) parse to a [`Packet`] with `family == 0`.

/// Read bytes of the packet at an offset (from the start of the Ethernet header).
pub trait PacketBytes {
    /// `N` bytes at `offset`, or `None` if the packet is shorter.
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
    /// Total length of the packet in bytes.
    fn len(&self) -> usize;
    /// Whether the packet is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl PacketBytes for [u8] {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        let s = self.get(offset..end)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Some(out)
    }
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
}

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_NONE: u8 = 59;
pub const IPPROTO_DSTOPTS: u8 = 60;
pub const IPPROTO_SCTP: u8 = 132;

/// Extension headers followed before giving up (and failing closed).
pub const MAX_IPV6_EXT_HEADERS: usize = 6;
/// VLAN tags followed (QinQ).
pub const MAX_VLAN_TAGS: usize = 2;

/// [`Packet::frag`]: not a fragment.
pub const FRAG_NONE: u8 = 0;
/// The first fragment (offset 0, more fragments follow): carries the L4 header.
pub const FRAG_FIRST: u8 = 1;
/// A later fragment: no L4 header, ports unknown here.
pub const FRAG_LATER: u8 = 2;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Why a packet could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// A header ends past the end of the packet.
    Truncated,
    /// A header field is invalid (version, IHL, lengths, TCP data offset).
    BadHeader,
    /// More IPv6 extension headers than [`MAX_IPV6_EXT_HEADERS`], or more VLAN tags than
    /// [`MAX_VLAN_TAGS`].
    TooManyHeaders,
}

/// The fields of a packet the data path decides on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Packet {
    /// 4, 6, or 0 for a non-IP frame.
    pub family: u8,
    /// L4 protocol (after extension headers).
    pub proto: u8,
    /// [`FRAG_NONE`], [`FRAG_FIRST`] or [`FRAG_LATER`].
    pub frag: u8,
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
    /// ICMP/ICMPv6 type (0 for other protocols).
    pub icmp_type: u8,
    /// Innermost ethertype.
    pub ethertype: u16,
    /// Source and destination, IPv4-mapped for IPv4.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Transport ports; for ICMP echo the identifier is the request's `sport` and the reply's
    /// `dport`, so that a reply is the reverse tuple of its request.
    pub sport: u16,
    pub dport: u16,
    /// Fragment identification (IPv4 16-bit id, IPv6 32-bit id).
    pub frag_id: u32,
    /// IPv4 TTL or IPv6 hop limit.
    pub hop_limit: u8,
    /// For an ICMP/ICMPv6 error, the packet it quotes.
    pub quoted: Quoted,
}

/// The tuple of the packet an ICMP error quotes: the packet that caused the error, sent by the
/// error's destination. Ports as [`Packet`] has them (echo identifier in `sport` for a request).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quoted {
    /// Whether a quoted header of the same family was read; the other fields mean nothing if not.
    pub valid: bool,
    pub proto: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
}

/// Whether `a` is IPv6 link-local unicast (`fe80::/10`).
#[inline(always)]
pub fn is_link_local6(a: &[u8; 16]) -> bool {
    a[0] == 0xfe && a[1] & 0xc0 == 0x80
}

/// Whether `a` is the IPv6 unspecified address `::`.
#[inline(always)]
pub fn is_unspecified6(a: &[u8; 16]) -> bool {
    u128::from_ne_bytes(*a) == 0
}

/// Whether `a` is IPv6 multicast (`ff00::/8`).
#[inline(always)]
pub fn is_multicast6(a: &[u8; 16]) -> bool {
    a[0] == 0xff
}

/// Whether an IPv6 address embeds an IPv4 one: IPv4-mapped (`::ffff:0:0/96`) or
/// IPv4-compatible (`::/96` but `::` and `::1`). The data path keys IPv4 addresses
/// IPv4-mapped in the same 16-byte space as IPv6, so an IPv6 packet carrying such an address
/// would be looked up (conntrack, ipcache) as the IPv4 host it names; it is dropped before any
/// lookup instead, which keeps the two families disjoint in every map.
#[inline(always)]
pub fn is_v4_embedded6(a: &[u8; 16]) -> bool {
    let head = u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]);
    if head != 0 || a[8] != 0 || a[9] != 0 {
        return false;
    }
    if a[10] == 0xff && a[11] == 0xff {
        return true;
    }
    // ::/96 (IPv4-compatible), except :: and ::1.
    a[10] == 0 && a[11] == 0 && !(a[12] == 0 && a[13] == 0 && a[14] == 0 && a[15] <= 1)
}

/// ICMPv4 error types that quote the offending packet and may relate to a connection:
/// destination unreachable (fragmentation needed among them), source quench, time exceeded,
/// parameter problem. Redirects (5) are not: they change routing, not a connection's fate.
#[inline(always)]
pub fn is_icmp4_error(t: u8) -> bool {
    matches!(t, 3 | 4 | 11 | 12)
}

/// ICMPv6 error types: destination unreachable, packet too big, time exceeded, parameter
/// problem.
#[inline(always)]
pub fn is_icmp6_error(t: u8) -> bool {
    matches!(t, 1..=4)
}

impl Packet {
    /// Port that policy is keyed on: the destination port for TCP/UDP/SCTP, 0 otherwise
    /// (ICMP and other protocols are matched by protocol only).
    #[inline(always)]
    pub fn policy_port(&self) -> u16 {
        if has_ports(self.proto) {
            self.dport
        } else {
            0
        }
    }

    /// IPv6 neighbour discovery / MLD: link-local control traffic that must pass for IPv6 to
    /// work at all, like ARP for IPv4, and so is not subject to policy. Only when it is
    /// link-scoped as the RFCs require, so the exemption cannot carry traffic off the link:
    /// neighbour discovery and redirects (133-137) with hop limit 255 (RFC 4861 7.1.1: a
    /// router would have decremented it), MLD (130-132, 143) with hop limit 1, a link-local or
    /// unspecified source and a multicast or link-local destination (RFC 2710, RFC 3810).
    /// Anything else of these types is an ordinary ICMPv6 packet under policy.
    #[inline(always)]
    pub fn is_link_control(&self) -> bool {
        if self.family != 6 || self.proto != IPPROTO_ICMPV6 || self.frag != FRAG_NONE {
            return false;
        }
        match self.icmp_type {
            133..=137 => self.hop_limit == 255,
            130..=132 | 143 => {
                self.hop_limit == 1
                    && (is_link_local6(&self.saddr) || is_unspecified6(&self.saddr))
                    && (is_multicast6(&self.daddr) || is_link_local6(&self.daddr))
            }
            _ => false,
        }
    }

    /// Whether an IPv6 packet has an IPv4-embedding source or destination (see
    /// [`is_v4_embedded6`]); always false for IPv4.
    #[inline(always)]
    pub fn has_v4_embedded_addr(&self) -> bool {
        self.family == 6 && (is_v4_embedded6(&self.saddr) || is_v4_embedded6(&self.daddr))
    }
}

/// Protocols whose policy is keyed by port.
#[inline(always)]
pub fn has_ports(proto: u8) -> bool {
    proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Parse an Ethernet frame.
pub fn parse<P: PacketBytes + ?Sized>(p: &P) -> Result<Packet, ParseError> {
    let mut pkt = Packet::default();
    parse_into(p, &mut pkt)?;
    Ok(pkt)
}

/// Parse an Ethernet frame into `pkt`, which must start out as `Packet::default()`. (In place,
/// so the kernel side can parse into per-CPU scratch memory instead of its small stack.)
#[inline(always)]
pub fn parse_into<P: PacketBytes + ?Sized>(p: &P, pkt: &mut Packet) -> Result<(), ParseError> {
    let mut off = 12;
    let mut ethertype = be16(p.load::<2>(off).ok_or(ParseError::Truncated)?);
    off += 2;
    let mut tags = 0;
    while ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        if tags == MAX_VLAN_TAGS {
            return Err(ParseError::TooManyHeaders);
        }
        ethertype = be16(p.load::<2>(off + 2).ok_or(ParseError::Truncated)?);
        off += 4;
        tags += 1;
    }
    pkt.ethertype = ethertype;
    let l4 = match ethertype {
        ETH_P_IP => parse_ipv4(p, off, pkt)?,
        ETH_P_IPV6 => parse_ipv6(p, off, pkt)?,
        _ => return Ok(()),
    };
    if pkt.frag != FRAG_LATER {
        parse_l4(p, l4, pkt)?;
    }
    Ok(())
}

/// Parse a packet that starts at its IP header (cgroup_skb programs see no L2 header);
/// `ethertype` is the skb's protocol (0x0800 or 0x86dd, host order).
#[inline(always)]
pub fn parse_l3_into<P: PacketBytes + ?Sized>(
    p: &P,
    ethertype: u16,
    pkt: &mut Packet,
) -> Result<(), ParseError> {
    pkt.ethertype = ethertype;
    let l4 = match ethertype {
        ETH_P_IP => parse_ipv4(p, 0, pkt)?,
        ETH_P_IPV6 => parse_ipv6(p, 0, pkt)?,
        _ => return Ok(()),
    };
    if pkt.frag != FRAG_LATER {
        parse_l4(p, l4, pkt)?;
    }
    Ok(())
}

/// Returns the L4 offset.
#[inline(always)]
fn parse_ipv4<P: PacketBytes + ?Sized>(
    p: &P,
    off: usize,
    pkt: &mut Packet,
) -> Result<usize, ParseError> {
    let h = p.load::<20>(off).ok_or(ParseError::Truncated)?;
    if h[0] >> 4 != 4 {
        return Err(ParseError::BadHeader);
    }
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    let total = be16([h[2], h[3]]) as usize;
    if ihl < 20 || total < ihl {
        return Err(ParseError::BadHeader);
    }
    if off + total > p.len() {
        return Err(ParseError::Truncated);
    }
    let frag = be16([h[6], h[7]]);
    let more = frag & 0x2000 != 0;
    let offset = frag & 0x1fff;
    pkt.frag = if offset != 0 {
        FRAG_LATER
    } else if more {
        FRAG_FIRST
    } else {
        FRAG_NONE
    };
    pkt.frag_id = be16([h[4], h[5]]) as u32;
    pkt.hop_limit = h[8];
    pkt.family = 4;
    pkt.proto = h[9];
    pkt.saddr = crate::v4_mapped([h[12], h[13], h[14], h[15]]);
    pkt.daddr = crate::v4_mapped([h[16], h[17], h[18], h[19]]);
    Ok(off + ihl)
}

#[inline(always)]
fn parse_ipv6<P: PacketBytes + ?Sized>(
    p: &P,
    off: usize,
    pkt: &mut Packet,
) -> Result<usize, ParseError> {
    let h = p.load::<8>(off).ok_or(ParseError::Truncated)?;
    if h[0] >> 4 != 6 {
        return Err(ParseError::BadHeader);
    }
    let payload = be16([h[4], h[5]]) as usize;
    if off + 40 + payload > p.len() {
        return Err(ParseError::Truncated);
    }
    pkt.family = 6;
    pkt.hop_limit = h[7];
    pkt.saddr = p.load::<16>(off + 8).ok_or(ParseError::Truncated)?;
    pkt.daddr = p.load::<16>(off + 24).ok_or(ParseError::Truncated)?;
    let mut next = h[6];
    let mut off = off + 40;
    let mut n = 0;
    while n < MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let e = p.load::<2>(off).ok_or(ParseError::Truncated)?;
                next = e[0];
                off += (e[1] as usize + 1) * 8;
            }
            IPPROTO_AH => {
                let e = p.load::<2>(off).ok_or(ParseError::Truncated)?;
                next = e[0];
                off += (e[1] as usize + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let e = p.load::<8>(off).ok_or(ParseError::Truncated)?;
                next = e[0];
                let fo = be16([e[2], e[3]]);
                pkt.frag_id = u32::from_be_bytes([e[4], e[5], e[6], e[7]]);
                pkt.frag = if fo >> 3 != 0 {
                    FRAG_LATER
                } else if fo & 1 != 0 {
                    FRAG_FIRST
                } else {
                    FRAG_NONE
                };
                off += 8;
                if pkt.frag == FRAG_LATER {
                    pkt.proto = next;
                    return Ok(off);
                }
            }
            _ => {
                pkt.proto = next;
                return Ok(off);
            }
        }
        n += 1;
    }
    Err(ParseError::TooManyHeaders)
}

#[inline(always)]
fn parse_l4<P: PacketBytes + ?Sized>(
    p: &P,
    off: usize,
    pkt: &mut Packet,
) -> Result<(), ParseError> {
    match pkt.proto {
        IPPROTO_TCP => {
            let h = p.load::<14>(off).ok_or(ParseError::Truncated)?;
            if h[12] >> 4 < 5 {
                return Err(ParseError::BadHeader);
            }
            pkt.sport = be16([h[0], h[1]]);
            pkt.dport = be16([h[2], h[3]]);
            pkt.tcp_flags = h[13];
        }
        IPPROTO_UDP | IPPROTO_SCTP => {
            let h = p.load::<4>(off).ok_or(ParseError::Truncated)?;
            pkt.sport = be16([h[0], h[1]]);
            pkt.dport = be16([h[2], h[3]]);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let h = p.load::<8>(off).ok_or(ParseError::Truncated)?;
            pkt.icmp_type = h[0];
            let id = be16([h[4], h[5]]);
            let (request, reply) = if pkt.proto == IPPROTO_ICMP {
                (8, 0)
            } else {
                (128, 129)
            };
            if h[0] == request {
                pkt.sport = id;
            } else if h[0] == reply {
                pkt.dport = id;
            } else if (pkt.proto == IPPROTO_ICMP && is_icmp4_error(h[0]))
                || (pkt.proto == IPPROTO_ICMPV6 && is_icmp6_error(h[0]))
            {
                parse_quoted(p, off + 8, pkt);
            }
        }
        IPPROTO_NONE => {}
        _ => {}
    }
    Ok(())
}

/// Read the header an ICMP error quotes at `off` into `pkt.quoted`. The quote is at least the
/// IP header and 8 bytes of the offending packet (RFC 792, RFC 4443); anything short of that,
/// of the other family, or a later fragment leaves `quoted` unset: the error is then an
/// ordinary ICMP packet, evaluated by policy.
#[inline(always)]
fn parse_quoted<P: PacketBytes + ?Sized>(p: &P, off: usize, pkt: &mut Packet) {
    let q = &mut pkt.quoted;
    let l4 = if pkt.family == 4 {
        let Some(h) = p.load::<20>(off) else { return };
        let ihl = ((h[0] & 0x0f) as usize) * 4;
        // A quoted later fragment has no ports.
        if h[0] >> 4 != 4 || ihl < 20 || be16([h[6], h[7]]) & 0x1fff != 0 {
            return;
        }
        q.proto = h[9];
        q.saddr = crate::v4_mapped([h[12], h[13], h[14], h[15]]);
        q.daddr = crate::v4_mapped([h[16], h[17], h[18], h[19]]);
        off + ihl
    } else {
        let Some(h) = p.load::<8>(off) else { return };
        if h[0] >> 4 != 6 {
            return;
        }
        // Only a quote whose transport header follows the fixed header is related; one behind
        // extension headers is evaluated as plain ICMPv6.
        q.proto = h[6];
        let (Some(s), Some(d)) = (p.load::<16>(off + 8), p.load::<16>(off + 24)) else {
            return;
        };
        q.saddr = s;
        q.daddr = d;
        off + 40
    };
    let Some(t) = p.load::<8>(l4) else { return };
    match q.proto {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => {
            q.sport = be16([t[0], t[1]]);
            q.dport = be16([t[2], t[3]]);
        }
        // An error about an echo request: the request's tuple (identifier as its source port).
        IPPROTO_ICMP if t[0] == 8 => q.sport = be16([t[4], t[5]]),
        IPPROTO_ICMPV6 if t[0] == 128 => q.sport = be16([t[4], t[5]]),
        _ => return,
    }
    q.valid = true;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packets::*;
    use proptest::prelude::*;

    const A: [u8; 4] = v4(10, 0, 0, 1);
    const B: [u8; 4] = v4(10, 0, 0, 2);

    fn ok(frame: &[u8]) -> Packet {
        parse(frame).unwrap_or_else(|e| panic!("{e:?} for {frame:02x?}"))
    }

    #[test]
    fn l3_parsing_matches_l2_parsing() {
        let f = ipv4(A, B, IPPROTO_TCP, &tcp(40000, 80, TCP_SYN));
        let mut l3 = Packet::default();
        parse_l3_into(&f[14..], ETH_P_IP, &mut l3).unwrap();
        assert_eq!(l3, ok(&f));
        let f6 = ipv6(
            v6(1),
            v6(2),
            IPPROTO_HOPOPTS,
            &ext6(IPPROTO_UDP),
            &udp(1, 53, 0),
        );
        let mut l3 = Packet::default();
        parse_l3_into(&f6[14..], ETH_P_IPV6, &mut l3).unwrap();
        assert_eq!(l3, ok(&f6));
        assert_eq!(
            parse_l3_into(&f[14..20], ETH_P_IP, &mut Packet::default()),
            Err(ParseError::Truncated)
        );
    }

    #[test]
    fn ipv4_tcp() {
        let p = ok(&ipv4(A, B, IPPROTO_TCP, &tcp(40000, 80, TCP_SYN)));
        assert_eq!(
            (p.family, p.proto, p.sport, p.dport, p.frag),
            (4, 6, 40000, 80, FRAG_NONE)
        );
        assert_eq!(p.tcp_flags, TCP_SYN);
        assert_eq!(p.saddr, crate::v4_mapped(A));
        assert_eq!(p.daddr, crate::v4_mapped(B));
        assert_eq!(p.policy_port(), 80);
    }

    #[test]
    fn udp_and_sctp_ports() {
        let p = ok(&ipv4(A, B, IPPROTO_UDP, &udp(5353, 53, 10)));
        assert_eq!((p.proto, p.sport, p.dport), (17, 5353, 53));
        let p = ok(&ipv4(A, B, IPPROTO_SCTP, &sctp(7, 9)));
        assert_eq!((p.proto, p.sport, p.dport, p.policy_port()), (132, 7, 9, 9));
    }

    #[test]
    fn icmp_echo_reply_is_the_reverse_tuple_of_its_request() {
        let req = ok(&ipv4(A, B, IPPROTO_ICMP, &icmp4_echo(77, false)));
        let rep = ok(&ipv4(B, A, IPPROTO_ICMP, &icmp4_echo(77, true)));
        assert_eq!((req.sport, req.dport), (77, 0));
        assert_eq!((rep.sport, rep.dport), (0, 77));
        assert_eq!(req.policy_port(), 0, "ICMP is matched by protocol only");
        let req6 = ok(&ipv6(
            v6(1),
            v6(2),
            IPPROTO_ICMPV6,
            &[],
            &icmp6_echo(5, false),
        ));
        let rep6 = ok(&ipv6(
            v6(2),
            v6(1),
            IPPROTO_ICMPV6,
            &[],
            &icmp6_echo(5, true),
        ));
        assert_eq!((req6.sport, rep6.dport), (5, 5));
    }

    #[test]
    fn ipv4_options_are_skipped() {
        let mut h = ipv4_header(A, B, IPPROTO_TCP, 20);
        h.options = [1u8, 1, 1, 1, 1, 1, 1, 0][..].try_into().unwrap(); // NOPs + EOL: IHL 7
        let f = ipv4_with(h, &tcp(1234, 443, TCP_SYN));
        assert_eq!(f[14] & 0x0f, 7);
        let p = ok(&f);
        assert_eq!((p.sport, p.dport), (1234, 443));
    }

    #[test]
    fn bad_ipv4_headers_are_errors() {
        let good = ipv4(A, B, IPPROTO_TCP, &tcp(1, 2, TCP_SYN));
        let mut f = good.clone();
        f[14] = 0x45 & 0x0f | 0x50; // version 5
        assert_eq!(parse(&f[..]), Err(ParseError::BadHeader));
        let mut f = good.clone();
        f[14] = 0x44; // IHL 4
        assert_eq!(parse(&f[..]), Err(ParseError::BadHeader));
        let mut f = good.clone();
        f[16..18].copy_from_slice(&10u16.to_be_bytes()); // total length < IHL
        assert_eq!(parse(&f[..]), Err(ParseError::BadHeader));
        let mut f = good.clone();
        f[16..18].copy_from_slice(&1000u16.to_be_bytes()); // claims more than is there
        assert_eq!(parse(&f[..]), Err(ParseError::Truncated));
        let mut f = good.clone();
        f[14 + 20 + 12] = 0x40; // TCP data offset 4
        assert_eq!(parse(&f[..]), Err(ParseError::BadHeader));
    }

    #[test]
    fn truncation_at_every_length_is_an_error_not_a_guess() {
        let f = ipv4(A, B, IPPROTO_TCP, &tcp(1, 2, TCP_SYN));
        for n in 0..f.len() {
            let r = parse(&f[..n]);
            if n < 14 {
                assert_eq!(r, Err(ParseError::Truncated), "len {n}");
            } else {
                assert!(r.is_err(), "len {n} parsed as {r:?}");
            }
        }
        let f6 = ipv6(
            v6(1),
            v6(2),
            IPPROTO_HOPOPTS,
            &ext6(IPPROTO_UDP),
            &udp(1, 2, 0),
        );
        for n in 14..f6.len() {
            assert!(parse(&f6[..n]).is_err(), "v6 len {n}");
        }
    }

    #[test]
    fn ethernet_only_frames() {
        // A frame with an IPv4 ethertype and no IP header at all.
        assert_eq!(parse(&eth(0x0800, &[])[..]), Err(ParseError::Truncated));
        let arp = ok(&eth(0x0806, &[0; 28]));
        assert_eq!((arp.family, arp.ethertype), (0, 0x0806));
    }

    #[test]
    fn ipv4_fragments() {
        let first = ok(&ipv4_fragment(
            A,
            B,
            IPPROTO_UDP,
            99,
            0,
            true,
            &udp(1000, 53, 16),
        ));
        assert_eq!(
            (first.frag, first.frag_id, first.dport),
            (FRAG_FIRST, 99, 53)
        );
        let later = ok(&ipv4_fragment(A, B, IPPROTO_UDP, 99, 3, false, &[0xab; 16]));
        assert_eq!(
            (later.frag, later.frag_id, later.sport, later.dport),
            (FRAG_LATER, 99, 0, 0)
        );
        // A first fragment too short to hold the L4 header is refused.
        assert_eq!(
            parse(&ipv4_fragment(A, B, IPPROTO_TCP, 1, 0, true, &[0; 8])[..]),
            Err(ParseError::Truncated)
        );
    }

    #[test]
    fn vlan_tags() {
        let inner = ipv4(A, B, IPPROTO_TCP, &tcp(1, 8080, TCP_SYN));
        let one = ok(&with_vlans(&inner, &[10]));
        assert_eq!((one.family, one.dport), (4, 8080));
        let two = ok(&with_vlans(&inner, &[10, 20]));
        assert_eq!((two.family, two.dport), (4, 8080));
        let mut three = with_vlans(&inner, &[10, 20]);
        // A third tag before the inner type: MACs(12) + TPID(2) + TCI+type(4) + TCI(2).
        let inner_type_at = 12 + 2 + 4 + 2;
        three.splice(inner_type_at..inner_type_at, [0x81, 0x00, 0x00, 0x1e]);
        assert_eq!(parse(&three[..]), Err(ParseError::TooManyHeaders));
    }

    #[test]
    fn ipv6_extension_chains() {
        let mut chain = ext6(IPPROTO_ROUTING);
        chain.extend(ext6(IPPROTO_DSTOPTS));
        chain.extend(ext6(IPPROTO_TCP));
        let p = ok(&ipv6(
            v6(1),
            v6(2),
            IPPROTO_HOPOPTS,
            &chain,
            &tcp(5, 6, TCP_SYN),
        ));
        assert_eq!((p.family, p.proto, p.sport, p.dport), (6, 6, 5, 6));
        // AH: length in 4-byte units minus 2.
        let mut ah = vec![IPPROTO_UDP, 4, 0, 0];
        ah.resize(24, 0);
        let p = ok(&ipv6(v6(1), v6(2), IPPROTO_AH, &ah, &udp(7, 8, 0)));
        assert_eq!((p.proto, p.dport), (17, 8));
        // One more header than the parser follows.
        let mut long = Vec::new();
        for _ in 0..MAX_IPV6_EXT_HEADERS {
            long.extend(ext6(IPPROTO_DSTOPTS));
        }
        let n = long.len();
        long[n - 8] = IPPROTO_UDP;
        assert_eq!(
            parse(&ipv6(v6(1), v6(2), IPPROTO_DSTOPTS, &long, &udp(1, 2, 0))[..]),
            Err(ParseError::TooManyHeaders)
        );
        // No next header.
        let p = ok(&ipv6(v6(1), v6(2), IPPROTO_NONE, &[], &[]));
        assert_eq!((p.proto, p.sport, p.dport), (IPPROTO_NONE, 0, 0));
    }

    #[test]
    fn ipv6_fragments() {
        let first = ok(&ipv6(
            v6(1),
            v6(2),
            IPPROTO_FRAGMENT,
            &frag6(IPPROTO_UDP, 0, true, 0xdead),
            &udp(9, 53, 8),
        ));
        assert_eq!(
            (first.frag, first.frag_id, first.dport),
            (FRAG_FIRST, 0xdead, 53)
        );
        let later = ok(&ipv6(
            v6(1),
            v6(2),
            IPPROTO_FRAGMENT,
            &frag6(IPPROTO_UDP, 2, false, 0xdead),
            &[1; 8],
        ));
        assert_eq!((later.frag, later.proto, later.dport), (FRAG_LATER, 17, 0));
    }

    #[test]
    fn neighbour_discovery_is_link_control_only_when_link_scoped() {
        let ll = {
            let mut a = v6(1);
            a[0] = 0xfe;
            a[1] = 0x80;
            a
        };
        let mcast = {
            let mut a = v6(0x16);
            a[0] = 0xff;
            a[1] = 0x02;
            a
        };
        let nd = |t: u8, hops: u8, src, dst| {
            ok(&ipv6_hops(
                src,
                dst,
                IPPROTO_ICMPV6,
                &[],
                &icmp6_raw(t),
                hops,
            ))
        };
        for t in [133u8, 134, 135, 136, 137] {
            assert!(nd(t, 255, ll, v6(2)).is_link_control(), "type {t}");
            assert!(
                nd(t, 255, v6(1), v6(2)).is_link_control(),
                "type {t}, global"
            );
            // Routed (hop limit decremented): an ordinary ICMPv6 packet under policy.
            assert!(!nd(t, 254, ll, v6(2)).is_link_control(), "type {t} routed");
            assert!(
                !nd(t, 64, v6(1), v6(2)).is_link_control(),
                "type {t} hop 64"
            );
        }
        for t in [130u8, 131, 132, 143] {
            assert!(nd(t, 1, ll, mcast).is_link_control(), "MLD {t}");
            assert!(
                nd(t, 1, [0; 16], mcast).is_link_control(),
                "MLD {t} from ::"
            );
            assert!(!nd(t, 2, ll, mcast).is_link_control(), "MLD {t} hop 2");
            assert!(
                !nd(t, 1, v6(1), mcast).is_link_control(),
                "MLD {t} global source"
            );
            assert!(
                !nd(t, 1, ll, v6(2)).is_link_control(),
                "MLD {t} global dest"
            );
        }
        assert!(!ok(&ipv6(
            v6(1),
            v6(2),
            IPPROTO_ICMPV6,
            &[],
            &icmp6_echo(1, false)
        ))
        .is_link_control());
    }

    #[test]
    fn v4_embedding_ipv6_addresses() {
        let mapped = crate::v4_mapped(A);
        let mut compat = [0u8; 16];
        compat[12..].copy_from_slice(&A);
        let mut loopback = [0u8; 16];
        loopback[15] = 1;
        assert!(is_v4_embedded6(&mapped));
        assert!(is_v4_embedded6(&compat));
        assert!(!is_v4_embedded6(&[0; 16]), ":: is not an embedding");
        assert!(!is_v4_embedded6(&loopback));
        assert!(!is_v4_embedded6(&v6(1)));
        let p = ok(&ipv6(mapped, v6(2), IPPROTO_UDP, &[], &udp(1, 2, 0)));
        assert!(p.has_v4_embedded_addr());
        let p = ok(&ipv6(v6(1), compat, IPPROTO_UDP, &[], &udp(1, 2, 0)));
        assert!(p.has_v4_embedded_addr());
        assert!(!ok(&ipv4(A, B, IPPROTO_UDP, &udp(1, 2, 0))).has_v4_embedded_addr());
    }

    #[test]
    fn icmp_errors_carry_the_quoted_tuple() {
        // A router tells A that its TCP segment to B needs fragmenting.
        let quoted = ipv4(A, B, IPPROTO_TCP, &tcp(40000, 443, TCP_ACK));
        let router = v4(10, 9, 9, 9);
        let e = ok(&ipv4(
            router,
            A,
            IPPROTO_ICMP,
            &icmp4_error(3, 4, &quoted[14..]),
        ));
        assert_eq!(e.icmp_type, 3);
        assert!(e.quoted.valid);
        assert_eq!(
            (e.quoted.proto, e.quoted.sport, e.quoted.dport),
            (IPPROTO_TCP, 40000, 443)
        );
        assert_eq!(e.quoted.saddr, crate::v4_mapped(A));
        assert_eq!(e.quoted.daddr, crate::v4_mapped(B));
        // Only the IP header and 8 bytes are quoted (RFC 792): enough.
        let e = ok(&ipv4(
            router,
            A,
            IPPROTO_ICMP,
            &icmp4_error(11, 0, &quoted[14..14 + 28]),
        ));
        assert!(e.quoted.valid);
        // Less than that: an ordinary ICMP packet.
        let e = ok(&ipv4(
            router,
            A,
            IPPROTO_ICMP,
            &icmp4_error(3, 4, &quoted[14..14 + 24]),
        ));
        assert!(!e.quoted.valid);
        // Redirects and echo are not errors.
        let e = ok(&ipv4(
            router,
            A,
            IPPROTO_ICMP,
            &icmp4_error(5, 0, &quoted[14..]),
        ));
        assert!(!e.quoted.valid);
        // An error about a ping: the request's identifier.
        let ping = ipv4(A, B, IPPROTO_ICMP, &icmp4_echo(77, false));
        let e = ok(&ipv4(
            router,
            A,
            IPPROTO_ICMP,
            &icmp4_error(3, 1, &ping[14..]),
        ));
        assert!(e.quoted.valid);
        assert_eq!((e.quoted.proto, e.quoted.sport), (IPPROTO_ICMP, 77));
        // IPv6 packet too big.
        let quoted6 = ipv6(v6(1), v6(2), IPPROTO_UDP, &[], &udp(5000, 53, 8));
        let e = ok(&ipv6(
            v6(9),
            v6(1),
            IPPROTO_ICMPV6,
            &[],
            &icmp6_error(2, &quoted6[14..]),
        ));
        assert!(e.quoted.valid);
        assert_eq!(
            (
                e.quoted.proto,
                e.quoted.saddr,
                e.quoted.daddr,
                e.quoted.sport,
                e.quoted.dport
            ),
            (IPPROTO_UDP, v6(1), v6(2), 5000, 53)
        );
        // An IPv4 quote inside ICMPv6: not related.
        let e = ok(&ipv6(
            v6(9),
            v6(1),
            IPPROTO_ICMPV6,
            &[],
            &icmp6_error(1, &quoted[14..]),
        ));
        assert!(!e.quoted.valid);
        // Every truncation of an error is an error or a smaller answer, never a panic.
        let f = ipv4(router, A, IPPROTO_ICMP, &icmp4_error(3, 4, &quoted[14..]));
        for n in 0..f.len() {
            let _ = parse(&f[..n]);
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes[..]);
        }

        #[test]
        fn arbitrary_ip_payloads_never_panic(v6h in any::<bool>(), body in proptest::collection::vec(any::<u8>(), 0..120)) {
            let f = eth(if v6h { 0x86dd } else { 0x0800 }, &body);
            let _ = parse(&f[..]);
        }
    }
}
