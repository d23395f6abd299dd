//! The data path shared by every program that enforces policy (TC on pod veths, cgroup_skb
//! on cgroup workloads) and the threat-feed check XDP shares with them. Program-specific
//! parts (context access, verdict encoding, DNS hold-back) are in `tc`, `cgroup` and `xdp`.
//!
//! # Fail mode
//! - Non-IP frames (ARP, ...) and link-scoped IPv6 neighbour discovery/MLD pass: they are link
//!   control, outside NetworkPolicy, and the pod cannot work without them. Only link-scoped
//!   ones ([`Packet::is_link_control`]); a pod's with a global source must use its own address.
//! - IPv6 packets with an IPv4-mapped or -compatible source or destination are dropped in both
//!   directions before any lookup (they would be looked up as the IPv4 host they name).
//! - Pod egress from a source that is not the pod's is dropped, and so is any egress of a
//!   family the pod has no address of (IPv6 link-local aside).
//! - ICMP errors that quote a tracked connection pass (RELATED: path MTU discovery must work
//!   through ingress isolation); other ICMP errors are ordinary packets under policy.
//! - DNS answers are held for the agent only on the reverse of a connection the pod opened to
//!   port 53, after conntrack, anti-spoofing and ingress checks; the pod's queries are copied
//!   to the agent so it learns only answers to them. Both are rate-limited per endpoint, and
//!   both happen only while the agent's heartbeat is fresh: without an agent, answers pass
//!   unlearned (DNS works; new names' addresses are not allowed until it returns).
//! - Malformed IP packets and interfaces with no endpoint entry fail **closed** (dropped and
//!   counted), unless the node runs with `FAIL_OPEN`, in which case they pass and are counted
//!   as fail-open passes. Policy must not be bypassable with a bad header.
//! - A later IP fragment whose first fragment was not seen is dropped: its ports are unknown.
//! - A full ring buffer never changes a verdict; the loss is counted.
//! - A missing config entry reads as the default config (revision 0, fail closed).
//!
//! # Stack
//! BPF has a 512-byte stack shared by the call chain, and BPF-to-BPF calls take at most five
//! arguments. So the per-packet state is one [`Flow`] on `handle`'s frame, passed by reference
//! to the non-inlined steps (`new_flow`, `established`, `emit`), which are siblings, not nested.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    maps::lpm_trie::Key,
};
use dataplane_common::{
    agent, block_action, block_hook,
    blocklist::{self, BlockMap},
    config_flags,
    conntrack::{self, CtTransition},
    ct_state, direction, identity,
    parse::{self, Packet, PacketBytes},
    policy::{self, Decision, PolicyMap},
    reason, rule, stats, verdict, BlockEntry, Config, CtEntry, CtKey, EndpointInfo, EventKind,
    FlowEvent, FqdnKey, FragPorts, PolicyKey, PolicyValue, Reason, CGROUP_SLOT_BASE,
};

use crate::maps::*;

/// Let the packet continue (TCX_NEXT: later programs on the hook still run).
pub(crate) const PASS: i32 = TC_ACT_UNSPEC;
pub(crate) const DROP: i32 = TC_ACT_SHOT as i32;

#[inline(always)]
fn is_fqdn_endpoint(slot: u32) -> bool {
    // SAFETY: read at once.
    unsafe { ENDPOINTS.get(&slot) }
        .is_some_and(|ep| ep.flags & dataplane_common::endpoint_flags::FQDN != 0)
}

/// `evaluate` flag: an established connection is being re-checked.
const RECHECK: u8 = 2;
/// `policy_or_fqdn` flag: traffic with the node is exempt from policy.
const HOST_EXEMPT: u8 = 4;

/// Policy for the connection, and for egress that policy denies, the FQDN allowlist. Its own
/// frame: `evaluate`'s call chain is the deepest, and the 512-byte stack is shared by it.
#[inline(never)]
fn policy_or_fqdn(ep: &EndpointInfo, flags: u8, key: &CtKey, peer: u32, port: u16) -> Decision {
    let dir = flags & 1;
    let d = policy::evaluate(
        &PolicyHash,
        ep,
        dir,
        peer,
        key.proto,
        port,
        flags & HOST_EXEMPT != 0,
    );
    // Egress to an address a DNS answer for an allowed name gave this endpoint.
    if d.verdict != verdict::DROPPED
        || dir != direction::EGRESS
        || ep.flags & dataplane_common::endpoint_flags::FQDN == 0
    {
        return d;
    }
    match fqdn_allows(key, flags & RECHECK != 0) {
        Some(rule_id) => {
            count(stats::FQDN_ALLOWED);
            Decision {
                verdict: verdict::FORWARDED,
                reason: reason::NONE,
                rule_id,
            }
        }
        None => {
            count(stats::FQDN_DENIED);
            d
        }
    }
}

/// An unexpired FQDN entry for the connection `key` (egress): the exact port, any port of the
/// protocol, any protocol. A new connection needs the TTL; a re-checked established one the
/// grace period (so a policy change does not cut a live connection whose name just expired).
// Not inlined: its key would otherwise sit in `evaluate`'s frame, on the deepest call chain.
#[inline(never)]
fn fqdn_allows(key: &CtKey, recheck: bool) -> Option<u32> {
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let mut k = FqdnKey {
        slot: key.slot,
        addr: key.daddr,
        port: key.dport,
        proto: key.proto,
        _pad: 0,
    };
    for _ in 0..3 {
        // Read in place: two fields, not the whole value on this deep stack.
        if let Some(v) = FQDN.get_ptr(&k) {
            // SAFETY: a pointer into the map value, read at once.
            let (until, rule_id) = unsafe {
                (
                    if recheck {
                        (*v).grace_ns
                    } else {
                        (*v).expires_ns
                    },
                    (*v).rule_id,
                )
            };
            if until > now {
                return Some(rule_id);
            }
        }
        if k.port != 0 {
            k.port = 0;
        } else {
            k.proto = 0;
        }
    }
    None
}

/// The two threat-feed tries.
pub(crate) struct Tries;

impl BlockMap for Tries {
    #[inline(always)]
    fn lookup_v4(&self, addr: [u8; 4]) -> Option<BlockEntry> {
        BLOCK_V4.get(Key::new(32, addr)).copied()
    }
    #[inline(always)]
    fn lookup_v6(&self, addr: [u8; 16]) -> Option<BlockEntry> {
        BLOCK_V6.get(Key::new(128, addr)).copied()
    }
}

/// Per-feed drop (`drop`) or audit counter.
#[inline(always)]
pub(crate) fn feed_count(feed: u32, drop: bool) {
    if feed <= dataplane_common::MAX_FEEDS {
        let idx = feed * 2 + if drop { 0 } else { 1 };
        if let Some(p) = FEED_STATS.get_ptr_mut(idx) {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            unsafe { *p += 1 };
        }
    }
}

/// What the shared logic decided; each program kind encodes it its own way.
pub(crate) enum Verdict {
    Pass,
    Drop,
    /// A DNS answer to hold for the agent (TC only).
    HoldDns,
    /// Pass, and copy the DNS query to the agent (TC only).
    CopyDnsQuery,
}

/// Per-packet state, in per-CPU scratch memory.
pub(crate) struct Flow {
    pub(crate) cfg: Config,
    pub(crate) pkt: Packet,
    pub(crate) key: CtKey,
    pub(crate) rkey: CtKey,
    pub(crate) bytes: u64,
    pub(crate) now: u64,
    pub(crate) dir: u8,
}

struct PolicyHash;

impl PolicyMap for PolicyHash {
    #[inline(always)]
    fn get(&self, key: &PolicyKey) -> Option<PolicyValue> {
        // SAFETY: the value is copied out at once.
        unsafe { POLICY.get(key).copied() }
    }
}

/// `*pkt = Packet::default()` without building the default on the stack first (the
/// 512-byte stack is shared by the deepest call chain, which starts in the caller's frame).
#[inline(always)]
pub(crate) fn clear(pkt: &mut Packet) {
    // SAFETY: `Packet` is plain integers, byte arrays and a bool, for which all-zero is
    // valid and equals `Packet::default()`.
    unsafe { core::ptr::write_bytes(pkt as *mut Packet, 0, 1) };
}

#[inline(always)]
pub(crate) fn count(idx: u32) {
    if let Some(p) = STATS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}

/// The verdict for a packet that could not be evaluated: fail closed unless the node opted in
/// to fail open.
#[inline(always)]
fn fail(cfg: &Config) -> i32 {
    if cfg.flags & config_flags::FAIL_OPEN != 0 {
        count(stats::FAIL_OPEN_PASSED);
        PASS
    } else {
        count(stats::DROPPED);
        DROP
    }
}

/// The data path for one packet, whatever program saw it: `l3` is the protocol when the
/// packet starts at the IP header (cgroup) and `None` for Ethernet frames (TC); `slot` is the
/// endpoint key (interface index, or a cgroup slot); `dns`: DNS of FQDN endpoints goes
/// through the agent (TC, except re-injected answers).
#[inline(always)]
pub(crate) fn handle<P: PacketBytes>(
    bytes: &P,
    l3: Option<u16>,
    slot: u32,
    len: u64,
    dir: u8,
    dns: bool,
) -> Verdict {
    let Some(f) = SCRATCH.get_ptr_mut(0) else {
        // Cannot happen (a one-slot per-CPU array always has its slot); fail closed.
        return Verdict::Drop;
    };
    // SAFETY: per-CPU scratch, exclusively ours for this program run.
    let f = unsafe { &mut *f };
    f.cfg = CONFIG.get(0).copied().unwrap_or_default();
    clear(&mut f.pkt);
    let parsed = match l3 {
        None => parse::parse_into(bytes, &mut f.pkt),
        Some(ethertype) => parse::parse_l3_into(bytes, ethertype, &mut f.pkt),
    };
    if parsed.is_err() {
        count(stats::MALFORMED);
        return verdict(fail(&f.cfg));
    }
    if f.pkt.family == 0 {
        count(stats::NON_IP);
        return Verdict::Pass;
    }
    // Before any lookup: conntrack and the ipcache key IPv4 IPv4-mapped.
    if f.pkt.has_v4_embedded_addr() {
        count(stats::SPOOFED);
        count(stats::DROPPED);
        return Verdict::Drop;
    }
    if f.pkt.is_link_control() {
        return link_control(&f.pkt, slot, dir);
    }
    if f.pkt.quoted.valid && related(&f.pkt, slot) {
        count(stats::ICMP_RELATED);
        return Verdict::Pass;
    }
    if f.pkt.frag == parse::FRAG_FIRST {
        let ports = FragPorts {
            sport: f.pkt.sport,
            dport: f.pkt.dport,
        };
        let _ = FRAGS.insert(&conntrack::frag_key_of(&f.pkt), &ports, 0);
    } else if f.pkt.frag == parse::FRAG_LATER {
        // SAFETY: copied out at once.
        match unsafe { FRAGS.get(&conntrack::frag_key_of(&f.pkt)) } {
            Some(p) => {
                f.pkt.sport = p.sport;
                f.pkt.dport = p.dport;
            }
            None => {
                count(stats::FRAG_UNKNOWN);
                count(stats::DROPPED);
                return Verdict::Drop;
            }
        }
    }
    f.key = conntrack::key_of(&f.pkt, slot);
    f.bytes = len;
    // The fast path only refreshes `last_seen`, for which the coarse clock (one tick) is
    // enough and far cheaper; new flows and their events read the precise clock.
    // SAFETY: helper without preconditions.
    f.now = unsafe { bpf_ktime_get_coarse_ns() };
    f.dir = dir;
    if let Some(e) = CT.get_ptr_mut(&f.key) {
        // SAFETY: a pointer into the map value, read at once.
        if !conntrack::starts_anew(unsafe { &*e }, f.pkt.proto, f.pkt.tcp_flags) {
            let action = established(f, &f.key, e, false);
            return dns_query_or(action, &f.pkt, slot, dir, dns);
        }
        // The new connection's entry replaces the closed one under the same key.
    }
    f.rkey = f.key.reversed();
    // SAFETY: as above.
    let reverse = CT.get_ptr_mut(&f.rkey);
    if reverse.is_some_and(|e| conntrack::starts_anew(unsafe { &*e }, f.pkt.proto, f.pkt.tcp_flags))
    {
        // The other side opens a connection on the closed one's tuple: its replies would
        // find the old entry under their own key first.
        let _ = CT.remove(&f.rkey);
    } else if let Some(e) = reverse {
        // SAFETY: a pointer into the map value, read at once.
        let opened_by_pod = unsafe { (*e).direction } == direction::EGRESS;
        let action = established(f, &f.rkey, e, true);
        // An answer is held only here: on the reverse of a connection the pod opened to port
        // 53, whose creation passed anti-spoofing and egress policy. Unsolicited "answers"
        // are new flows under ingress policy and are never learned.
        if action == PASS
            && dns
            && opened_by_pod
            && dir == direction::INGRESS
            && f.pkt.sport == 53
            && (f.pkt.proto == parse::IPPROTO_UDP || f.pkt.proto == parse::IPPROTO_TCP)
            && is_fqdn_endpoint(slot)
        {
            if is_dns(&f.pkt, f.pkt.sport) && agent_present() {
                return Verdict::HoldDns;
            }
            // A fragment of an answer (not a whole message), or no agent to hand it to:
            // delivered unlearned.
            count(stats::DNS_NOT_HELD);
        }
        return dns_query_or(action, &f.pkt, slot, dir, dns);
    }
    // SAFETY: helper without preconditions.
    f.now = unsafe { bpf_ktime_get_ns() };
    let action = new_flow(f);
    dns_query_or(action, &f.pkt, slot, dir, dns)
}

/// UDP or TCP with `port` 53, unfragmented (a fragment's payload is not a whole message).
#[inline(always)]
fn is_dns(pkt: &Packet, port: u16) -> bool {
    port == 53
        && (pkt.proto == parse::IPPROTO_UDP || pkt.proto == parse::IPPROTO_TCP)
        && pkt.frag == parse::FRAG_NONE
}

/// `action`, or for a DNS query an FQDN endpoint is let send: pass and copy it to the agent.
#[inline(always)]
fn dns_query_or(action: i32, pkt: &Packet, slot: u32, dir: u8, dns: bool) -> Verdict {
    if action == PASS
        && dns
        && dir == direction::EGRESS
        && is_dns(pkt, pkt.dport)
        && is_fqdn_endpoint(slot)
        && agent_present()
    {
        return Verdict::CopyDnsQuery;
    }
    verdict(action)
}

/// Whether an agent is there to take DNS frames (its heartbeat is fresh). Without one, a held
/// answer would never be delivered: the pods' DNS would stop with the agent.
#[inline(never)]
fn agent_present() -> bool {
    let heartbeat = AGENT.get(0).copied().unwrap_or(0);
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    agent::present(heartbeat, now)
}

/// Link-scoped neighbour discovery and MLD pass; from the pod, a global source must still be
/// the pod's own (a link-local or unspecified one is how these messages are sent).
#[inline(never)]
fn link_control(pkt: &Packet, slot: u32, dir: u8) -> Verdict {
    if dir == direction::INGRESS
        || slot >= CGROUP_SLOT_BASE
        || parse::is_link_local6(&pkt.saddr)
        || parse::is_unspecified6(&pkt.saddr)
    {
        return Verdict::Pass;
    }
    // SAFETY: read at once.
    let own = match unsafe { ENDPOINTS.get(&slot) } {
        Some(ep) => {
            ep.flags & dataplane_common::endpoint_flags::HAS_IPV6 != 0 && ep.ipv6 == pkt.saddr
        }
        // No endpoint: nothing to check against; the node's fail mode governs its traffic.
        None => true,
    };
    if own {
        Verdict::Pass
    } else {
        count(stats::SPOOFED);
        count(stats::DROPPED);
        Verdict::Drop
    }
}

/// Whether an ICMP error relates to a connection tracked on `slot`: it is addressed to the
/// sender of the packet it quotes, and that packet's tuple (either way round) is in conntrack.
/// Like conntrack's RELATED, it lets path MTU discovery and unreachables reach an allowed
/// connection through isolation; an error about nothing tracked is evaluated by policy.
#[inline(never)]
fn related(pkt: &Packet, slot: u32) -> bool {
    let q = &pkt.quoted;
    if pkt.daddr != q.saddr {
        return false;
    }
    let key = CtKey {
        saddr: q.saddr,
        daddr: q.daddr,
        sport: q.sport,
        dport: q.dport,
        slot,
        proto: q.proto,
        _pad: [0; 3],
    };
    // SAFETY: existence only.
    unsafe { CT.get(&key).is_some() || CT.get(&key.reversed()).is_some() }
}

#[inline(always)]
fn verdict(action: i32) -> Verdict {
    if action == DROP {
        Verdict::Drop
    } else {
        Verdict::Pass
    }
}

#[inline(always)]
fn peer_identity(addr: &[u8; 16]) -> u32 {
    match IPCACHE.get(Key::new(128, *addr)) {
        Some(e) => e.identity,
        None => identity::WORLD,
    }
}

/// Whether pod egress has a source that is not the pod's: another address, or any address of
/// a family the pod has none of (a v4-only pod must not use an allowed pod's IPv6 address).
/// Link-local IPv6 sources (`fe80::/10`) are the pod's own too. A cgroup workload sends from
/// the node's addresses, so only a family it has an address of is pinned.
#[inline(always)]
fn spoofed(ep: &EndpointInfo, pkt: &Packet, slot: u32) -> bool {
    use dataplane_common::endpoint_flags::{HAS_IPV4, HAS_IPV6};
    let (has, own) = if pkt.family == 4 {
        (ep.flags & HAS_IPV4 != 0, &ep.ipv4)
    } else {
        if parse::is_link_local6(&pkt.saddr) {
            return false;
        }
        (ep.flags & HAS_IPV6 != 0, &ep.ipv6)
    };
    if has {
        pkt.saddr != *own
    } else {
        slot < CGROUP_SLOT_BASE
    }
}

/// The decision for the original packet of a connection (`key`), whose other side has
/// identity `peer`: threat feeds first (pod egress: the destination; pod ingress: the
/// source), then policy.
#[inline(never)]
fn evaluate(cfg: &Config, ep: &EndpointInfo, dir_flags: u8, key: &CtKey, peer: u32) -> Decision {
    // Bit 0: the direction; RECHECK: an established connection re-checked after a change.
    let dir = dir_flags & 1;
    let port = if parse::has_ports(key.proto) {
        key.dport
    } else {
        0
    };
    let host_exempt = cfg.flags & config_flags::POLICY_HOST == 0;
    let (peer_addr, hook) = if dir == direction::EGRESS {
        (&key.daddr, block_hook::POD_EGRESS)
    } else {
        (&key.saddr, block_hook::POD_INGRESS)
    };
    let listed = blocklist::check(&Tries, peer_addr, hook);
    if let Some(l) = listed {
        feed_count(l.feed, l.action == block_action::DROP);
    }
    // The blocklist's two halves around policy, without a closure: an outlined closure
    // frame on this deepest call chain would not fit the 512-byte stack.
    if let Some(d) = blocklist::drop_decision(listed) {
        count(stats::BLOCKLISTED);
        return d;
    }
    let flags = dir_flags | if host_exempt { HOST_EXEMPT } else { 0 };
    let d = policy_or_fqdn(ep, flags, key, peer, port);
    // An audit listing never turns a verdict into a drop.
    blocklist::with_audit(listed, d)
}

#[inline(never)]
fn new_flow(f: &Flow) -> i32 {
    // SAFETY: a reference into the map value; endpoints are replaced, not freed, while in use.
    let ep = match unsafe { ENDPOINTS.get(&f.key.slot) } {
        Some(ep) => ep,
        None => {
            count(stats::NO_ENDPOINT);
            return fail(&f.cfg);
        }
    };
    // The entry is built in per-CPU scratch: on the stack it would push the deepest call chain
    // (new_flow → evaluate → ...) over the 512-byte limit.
    let Some(e) = CT_SCRATCH.get_ptr_mut(0) else {
        return fail(&f.cfg);
    };
    // SAFETY: per-CPU scratch, exclusively ours for this program run.
    let e = unsafe { &mut *e };
    *e = CtEntry {
        created_ns: f.now,
        last_seen_ns: f.now,
        packets_fwd: 1,
        bytes_fwd: f.bytes,
        policy_revision: f.cfg.policy_revision,
        subject_identity: ep.identity,
        direction: f.dir,
        tcp_flags: f.pkt.tcp_flags,
        ..CtEntry::default()
    };
    if f.dir == direction::EGRESS && spoofed(ep, &f.pkt, f.key.slot) {
        count(stats::SPOOFED);
        count(stats::DROPPED);
        e.verdict = verdict::DROPPED;
        e.rule_id = rule::ANTI_SPOOF;
        e.peer_identity = identity::UNKNOWN;
        deny_event(f, e, Reason::SPOOFED);
        return DROP;
    }
    let peer_addr = if f.dir == direction::EGRESS {
        &f.key.daddr
    } else {
        &f.key.saddr
    };
    let peer = peer_identity(peer_addr);
    let d = evaluate(&f.cfg, ep, f.dir, &f.key, peer);
    e.peer_identity = peer;
    e.rule_id = d.rule_id;
    e.verdict = d.verdict;
    if d.verdict == verdict::DROPPED {
        count(stats::DROPPED);
        deny_event(f, e, Reason(d.reason));
        return DROP;
    }
    count(if d.verdict == verdict::AUDIT {
        stats::AUDIT
    } else {
        stats::FORWARDED
    });
    // A first packet that is already a RST needs no entry.
    if f.pkt.tcp_flags & parse::TCP_RST == 0 {
        if CT.insert(&f.key, &*e, 0).is_ok() {
            count(stats::CT_CREATED);
        }
    } else {
        e.state = ct_state::CLOSED;
    }
    emit(EventKind::NEW, Reason(d.reason), &f.key, e, f.pkt.family);
    PASS
}

#[inline(never)]
fn established(f: &Flow, orig: &CtKey, e: *mut CtEntry, reply: bool) -> i32 {
    // SAFETY: a pointer into the LRU map; concurrent updates from another CPU only race on
    // counters, which are statistics.
    let e = unsafe { &mut *e };
    if e.policy_revision != f.cfg.policy_revision {
        count(stats::CT_REVALIDATED);
        // Re-check the connection as its original packet, under today's policy and identities.
        // SAFETY: reference into the map value, read at once.
        let ep = match unsafe { ENDPOINTS.get(&orig.slot) } {
            Some(ep) => ep,
            None => {
                count(stats::NO_ENDPOINT);
                return fail(&f.cfg);
            }
        };
        let dir = e.direction;
        let peer_addr = if dir == direction::EGRESS {
            &orig.daddr
        } else {
            &orig.saddr
        };
        let peer = peer_identity(peer_addr);
        let d = evaluate(&f.cfg, ep, dir | RECHECK, orig, peer);
        e.policy_revision = f.cfg.policy_revision;
        e.rule_id = d.rule_id;
        e.verdict = d.verdict;
        e.subject_identity = ep.identity;
        e.peer_identity = peer;
        if d.verdict == verdict::DROPPED {
            count(stats::CT_REVOKED);
            count(stats::DROPPED);
            emit(EventKind::DENY, Reason::REVOKED, orig, e, f.pkt.family);
            let _ = CT.remove(orig);
            return DROP;
        }
    }
    count(if e.verdict == verdict::AUDIT {
        stats::AUDIT
    } else {
        stats::FORWARDED
    });
    if conntrack::account(e, reply, f.pkt.tcp_flags, f.bytes, f.now) == CtTransition::Ended {
        emit(EventKind::END, Reason::NONE, orig, e, f.pkt.family);
    }
    PASS
}

/// A denial event, at most one per flow per `deny_event_interval_ns`.
#[inline(always)]
fn deny_event(f: &Flow, e: &CtEntry, why: Reason) {
    if deny_event_due(f) {
        emit(EventKind::DENY, why, &f.key, e, f.pkt.family);
    }
}

/// Whether this flow's denial event is due (and if so, records that it is sent now).
#[inline(always)]
pub(crate) fn deny_event_due(f: &Flow) -> bool {
    // SAFETY: copied out at once.
    if let Some(last) = unsafe { DENY_RL.get(&f.key) } {
        if f.now.wrapping_sub(*last) < f.cfg.deny_event_interval_ns {
            count(stats::DENY_EVENTS_SUPPRESSED);
            return false;
        }
    }
    let _ = DENY_RL.insert(&f.key, &f.now, 0);
    true
}

#[inline(never)]
pub(crate) fn emit(kind: EventKind, why: Reason, key: &CtKey, e: &CtEntry, family: u8) {
    let Some(mut slot) = EVENTS.reserve::<FlowEvent>(0) else {
        count(stats::EVENTS_LOST);
        return;
    };
    slot.write(FlowEvent::from_ct(kind, why, family, key, e));
    slot.submit(0);
}
