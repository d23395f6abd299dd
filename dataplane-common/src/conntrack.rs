//! Conntrack helpers: tuple keys and the TCP close logic, pure so they are host-tested.

use crate::{ct_state, parse::Packet, parse::TCP_FIN, parse::TCP_RST, CtEntry, CtKey, FragKey};

/// The conntrack key of a packet in its own direction.
#[inline(always)]
pub fn key_of(pkt: &Packet, ifindex: u32) -> CtKey {
    CtKey {
        saddr: pkt.saddr,
        daddr: pkt.daddr,
        sport: pkt.sport,
        dport: pkt.dport,
        ifindex,
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
        e.state |= if reply { ct_state::FIN_REV } else { ct_state::FIN_FWD };
        if e.state & (ct_state::FIN_FWD | ct_state::FIN_REV) == (ct_state::FIN_FWD | ct_state::FIN_REV) {
            e.state |= ct_state::CLOSED;
            return CtTransition::Ended;
        }
    }
    CtTransition::Continue
}
