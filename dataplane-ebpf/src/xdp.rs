//! XDP on host interfaces: the threat-feed blocklist for host ingress.

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_ktime_get_coarse_ns, macros::xdp, programs::XdpContext,
};
use dataplane_common::{
    block_action, block_hook,
    blocklist::{self, Listed},
    conntrack, direction, identity,
    parse::{self, PacketBytes},
    rule, stats, verdict, CtEntry, EventKind, Reason,
};

use crate::{datapath::*, maps::*};

/// XDP on a host interface: drops packets whose source is on a threat feed that applies to
/// host ingress, before the stack sees them.
///
/// # Fail mode
/// Open: non-IP and malformed packets pass (the stack validates them as it always does). A
/// host interface carries the node's own traffic, which the blocklist must not cut off for a
/// parse corner case; the blocklist only ever removes traffic it can positively attribute.
#[xdp]
pub fn xdp_host(ctx: XdpContext) -> u32 {
    count(stats::XDP_SEEN);
    // SAFETY: the context pointer is valid for the program's run.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    match xdp_blocklist(&XdpBytes(&ctx), ifindex) {
        Verdict::Drop => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}

#[inline(always)]
fn xdp_blocklist<P: PacketBytes>(bytes: &P, ifindex: u32) -> Verdict {
    let Some(f) = SCRATCH.get_ptr_mut(0) else {
        return Verdict::Pass;
    };
    // SAFETY: per-CPU scratch, exclusively ours for this program run.
    let f = unsafe { &mut *f };
    clear(&mut f.pkt);
    if parse::parse_into(bytes, &mut f.pkt).is_err() || f.pkt.family == 0 {
        return Verdict::Pass;
    }
    let Some(l) = blocklist::check(&Tries, &f.pkt.saddr, block_hook::HOST_INGRESS) else {
        return Verdict::Pass;
    };
    f.cfg = CONFIG.get(0).copied().unwrap_or_default();
    f.key = conntrack::key_of(&f.pkt, ifindex);
    f.bytes = bytes.len() as u64;
    // The coarse clock is enough to rate-limit events, and a flood is mostly rate-limited.
    // SAFETY: helper without preconditions.
    f.now = unsafe { bpf_ktime_get_coarse_ns() };
    f.dir = direction::INGRESS;
    xdp_listed(f, l)
}

/// Count and report a host-ingress listing; drop unless the feed audits.
#[inline(never)]
fn xdp_listed(f: &Flow, l: Listed) -> Verdict {
    let drop = l.action == block_action::DROP;
    feed_count(l.feed, drop);
    let verdict = if drop {
        count(stats::DROPPED);
        count(stats::BLOCKLISTED);
        Verdict::Drop
    } else {
        count(stats::AUDIT);
        Verdict::Pass
    };
    // Rate-limited like policy denials: a flood from a listed address is one event per flow
    // per interval, and the per-feed counters carry the full count.
    if !deny_event_due(f) {
        return verdict;
    }
    let e = CtEntry {
        created_ns: f.now,
        last_seen_ns: f.now,
        packets_fwd: 1,
        bytes_fwd: f.bytes,
        policy_revision: f.cfg.policy_revision,
        subject_identity: identity::HOST,
        peer_identity: identity::WORLD,
        direction: direction::INGRESS,
        tcp_flags: f.pkt.tcp_flags,
        rule_id: rule::feed_rule(l.feed),
        verdict: if drop {
            verdict::DROPPED
        } else {
            verdict::AUDIT
        },
        ..CtEntry::default()
    };
    emit(
        EventKind::DENY,
        Reason::BLOCKLISTED,
        &f.key,
        &e,
        f.pkt.family,
    );
    verdict
}

struct XdpBytes<'a>(&'a XdpContext);

impl PacketBytes for XdpBytes<'_> {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let (start, end) = (self.0.data(), self.0.data_end());
        if offset < 0xffff && start + offset + N <= end {
            // SAFETY: bounds checked against data_end just above.
            return Some(unsafe { core::ptr::read_unaligned((start + offset) as *const [u8; N]) });
        }
        None
    }
    #[inline(always)]
    fn len(&self) -> usize {
        self.0.data_end() - self.0.data()
    }
}
