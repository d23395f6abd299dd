//! Conntrack helpers: tuple keys and the TCP close logic, pure so they are host-tested.

use crate::{ct_state, parse::Packet, parse::TCP_FIN, parse::TCP_RST, CtEntry, CtKey, FragKey};

/// The conntrack key of a packet in its own direction.
#[inline(always)]
pub fn key_of(pkt: &Packet, slot: u32) -> CtKey {
    CtKey {
        saddr: pkt.saddr,
        daddr: pkt.daddr,
        sport: pkt.sport,
        dport: pkt.dport,
        slot,
        proto: pkt.proto,
        _pad: [0; 3],
    }
}

/// The fragment-map key of a fragmented packet.
#[inline(always)]
pub fn frag_key_of(pkt: &Packet) -> FragKey {
    FragKey {
        saddr: pkt.saddr,
        daddr: pkt.daddr,
        id: pkt.frag_id,
        proto: pkt.proto,
        _pad: [0; 3],
    }
}

/// What a packet of an established connection does to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtTransition {
    /// Nothing ends.
    Continue,
    /// The connection ended now (RST, or the second FIN): report END once.
    Ended,
}

/// Whether a packet found on an entry starts a new connection instead: a TCP SYN (without
/// ACK) on the tuple of a closed connection (TIME_WAIT reuse, a client that reuses its port).
/// Taken as the old connection, it would skip policy evaluation and have no NEW or END
/// record of its own, and its counters would merge into the old entry.
#[inline(always)]
pub fn starts_anew(e: &CtEntry, proto: u8, tcp_flags: u8) -> bool {
    proto == crate::parse::IPPROTO_TCP
        && e.state & ct_state::CLOSED != 0
        && tcp_flags & crate::parse::TCP_SYN != 0
        && tcp_flags & crate::parse::TCP_ACK == 0
}

/// Account a packet on an entry: counters, flags, and TCP close tracking.
#[inline(always)]
pub fn account(e: &mut CtEntry, reply: bool, tcp_flags: u8, bytes: u64, now: u64) -> CtTransition {
    e.last_seen_ns = now;
    e.tcp_flags |= tcp_flags;
    if reply {
        e.packets_rev += 1;
        e.bytes_rev += bytes;
        e.state |= ct_state::SEEN_REPLY;
    } else {
        e.packets_fwd += 1;
        e.bytes_fwd += bytes;
    }
    if e.state & ct_state::CLOSED != 0 {
        return CtTransition::Continue;
    }
    if tcp_flags & TCP_RST != 0 {
        e.state |= ct_state::CLOSED;
        return CtTransition::Ended;
    }
    if tcp_flags & TCP_FIN != 0 {
        e.state |= if reply {
            ct_state::FIN_REV
        } else {
            ct_state::FIN_FWD
        };
        if e.state & (ct_state::FIN_FWD | ct_state::FIN_REV)
            == (ct_state::FIN_FWD | ct_state::FIN_REV)
        {
            e.state |= ct_state::CLOSED;
            return CtTransition::Ended;
        }
    }
    CtTransition::Continue
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_syn_on_a_closed_tcp_entry_starts_anew() {
        use crate::parse::{IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_SYN};
        let mut e = CtEntry::default();
        assert!(
            !starts_anew(&e, IPPROTO_TCP, TCP_SYN),
            "open: a retransmitted SYN"
        );
        e.state = ct_state::FIN_FWD;
        assert!(!starts_anew(&e, IPPROTO_TCP, TCP_SYN), "half closed");
        e.state = ct_state::FIN_FWD | ct_state::FIN_REV | ct_state::CLOSED;
        assert!(starts_anew(&e, IPPROTO_TCP, TCP_SYN));
        assert!(
            !starts_anew(&e, IPPROTO_TCP, TCP_SYN | TCP_ACK),
            "a SYN-ACK answers"
        );
        assert!(
            !starts_anew(&e, IPPROTO_TCP, TCP_ACK),
            "the last ACK of the old one"
        );
        assert!(
            !starts_anew(&e, IPPROTO_UDP, TCP_SYN),
            "no TCP flags outside TCP"
        );
        e.state = ct_state::CLOSED;
        assert!(starts_anew(&e, IPPROTO_TCP, TCP_SYN), "after a RST");
    }
    use crate::parse::{TCP_ACK, TCP_SYN};

    #[test]
    fn fin_both_ways_ends_once() {
        let mut e = CtEntry::default();
        assert_eq!(
            account(&mut e, false, TCP_SYN, 60, 1),
            CtTransition::Continue
        );
        assert_eq!(
            account(&mut e, true, TCP_SYN | TCP_ACK, 60, 2),
            CtTransition::Continue
        );
        assert_eq!(
            account(&mut e, false, TCP_FIN | TCP_ACK, 52, 3),
            CtTransition::Continue
        );
        assert_eq!(
            account(&mut e, true, TCP_FIN | TCP_ACK, 52, 4),
            CtTransition::Ended
        );
        assert_eq!(
            account(&mut e, false, TCP_ACK, 52, 5),
            CtTransition::Continue,
            "END is reported once"
        );
        assert_eq!(
            (e.packets_fwd, e.packets_rev, e.bytes_fwd, e.bytes_rev),
            (3, 2, 164, 112)
        );
        assert_eq!(e.last_seen_ns, 5);
        assert!(e.state & ct_state::SEEN_REPLY != 0);
    }

    #[test]
    fn rst_ends_at_once() {
        let mut e = CtEntry::default();
        assert_eq!(account(&mut e, true, TCP_RST, 40, 1), CtTransition::Ended);
        assert_eq!(
            account(&mut e, false, TCP_RST, 40, 2),
            CtTransition::Continue
        );
    }

    #[test]
    fn reversed_key_swaps_the_tuple_only() {
        let k = CtKey {
            saddr: [1; 16],
            daddr: [2; 16],
            sport: 3,
            dport: 4,
            slot: 9,
            proto: 6,
            _pad: [0; 3],
        };
        let r = k.reversed();
        assert_eq!(
            (r.saddr, r.daddr, r.sport, r.dport, r.slot, r.proto),
            ([2; 16], [1; 16], 4, 3, 9, 6)
        );
        assert_eq!(r.reversed(), k);
    }
}
