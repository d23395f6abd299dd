//! Policy lookup and decision, shared by the kernel and its host-side model.
//!
//! # Lookup order (first match wins)
//! For the peer's identity, then for [`identity::ANY`]:
//! 1. `(proto, port)` with prefix length 16 (one port), when the protocol has ports;
//! 2. `(proto, port)` with each prefix length 15..=1 that the subject uses (port ranges are
//!    stored as aligned prefix blocks; [`EndpointInfo::port_plens`] says which lengths exist);
//! 3. `(proto, any port)`;
//! 4. `(any protocol)`.
//!
//! That is at most 2 × (1 + 15 + 2) hash lookups, whatever the number of rules: O(1).
//!
//! Because the first match wins, **the compiler stores in every entry the union of everything
//! a later fallback would also match for the same packet** (the [`allow`] bits and the deciding
//! rule). This keeps the kernel to a fixed sequence of exact lookups and puts the set logic in
//! userspace, where it is tested against the reference evaluator.

use crate::{
    allow, identity, isolation, reason, rule, verdict, EndpointInfo, PolicyKey, PolicyValue,
};

/// Read access to the policy map.
pub trait PolicyMap {
    fn get(&self, key: &PolicyKey) -> Option<PolicyValue>;
}

/// Find the policy entry for a packet (see the module docs for the order).
#[inline(always)]
pub fn lookup<M: PolicyMap + ?Sized>(
    map: &M,
    subject: u32,
    dir: u8,
    peer: u32,
    proto: u8,
    port: u16,
    port_plens: u32,
) -> Option<PolicyValue> {
    let ported = crate::parse::has_ports(proto);
    let peers = [peer, identity::ANY];
    let mut pi = 0;
    while pi < 2 {
        let p = peers[pi];
        pi += 1;
        if pi == 2 && peer == identity::ANY {
            break;
        }
        if ported {
            if let Some(v) = map.get(&PolicyKey::new(subject, dir, p, proto, port, 16)) {
                return Some(v);
            }
            if port_plens != 0 {
                let mut plen: u8 = 15;
                while plen >= 1 {
                    if port_plens & (1 << plen) != 0 {
                        if let Some(v) =
                            map.get(&PolicyKey::new(subject, dir, p, proto, port, plen))
                        {
                            return Some(v);
                        }
                    }
                    plen -= 1;
                }
            }
        }
        if let Some(v) = map.get(&PolicyKey::new(subject, dir, p, proto, 0, 0)) {
            return Some(v);
        }
        if let Some(v) = map.get(&PolicyKey::new(subject, dir, p, 0, 0, 0)) {
            return Some(v);
        }
    }
    None
}

/// The outcome of a policy evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// [`verdict`].
    pub verdict: u8,
    /// [`reason`] (NONE when forwarded).
    pub reason: u8,
    /// The deciding rule, or a reserved [`rule`] id.
    pub rule_id: u32,
}

/// Combine the endpoint's isolation for this direction with the matching entry.
///
/// Enforcement only counts enforcing policies; the audit view counts all of them. A packet the
/// enforcing view denies is DROPPED; one it allows but the audit view denies is AUDIT (let
/// through, recorded); otherwise FORWARDED.
#[inline(always)]
pub fn decide(isolation_bits: u8, entry: Option<PolicyValue>) -> Decision {
    let flags = match entry {
        Some(v) => v.flags,
        None => 0,
    };
    let enforced = isolation_bits & isolation::ENFORCE != 0;
    let audited = isolation_bits & (isolation::ENFORCE | isolation::AUDIT) != 0;
    let enforce_ok = !enforced || flags & allow::ENFORCE != 0;
    let audit_ok = !audited || flags & (allow::ENFORCE | allow::AUDIT) != 0;
    let matched = entry.map(|v| v.rule_id);
    if !enforce_ok {
        Decision {
            verdict: verdict::DROPPED,
            reason: reason::POLICY_DENIED,
            rule_id: rule::DEFAULT_DENY,
        }
    } else if !audit_ok {
        Decision {
            verdict: verdict::AUDIT,
            reason: reason::POLICY_DENIED,
            rule_id: rule::DEFAULT_DENY,
        }
    } else {
        let rule_id = if enforced || audited {
            matched.unwrap_or(rule::DEFAULT_ALLOW)
        } else {
            rule::DEFAULT_ALLOW
        };
        Decision {
            verdict: verdict::FORWARDED,
            reason: reason::NONE,
            rule_id,
        }
    }
}

/// The marker entry that says a port of the node is a node port: subject [`identity::ANY`]
/// (never an endpoint's), egress, peer `host`, the port exact, no allow bits. kube-proxy
/// DNATs a connection to a node port on the node's own addresses after the pod's egress hook
/// has judged it, so egress to such a port is decided by policy (the compiler's node-port
/// entries, by the Service's backends) even where traffic with the node is exempt.
#[inline(always)]
pub fn node_port_key(proto: u8, port: u16) -> PolicyKey {
    PolicyKey::new(
        identity::ANY,
        crate::direction::EGRESS,
        identity::HOST,
        proto,
        port,
        16,
    )
}

/// Evaluate a new flow for an endpoint: isolation + lookup + decision. `host_exempt`: traffic
/// with the node itself is allowed without a lookup (Kubernetes: probes from the node work),
/// except egress to a node port (see [`node_port_key`]): one more lookup, for new flows from a
/// pod to its node only.
#[inline(always)]
pub fn evaluate<M: PolicyMap + ?Sized>(
    map: &M,
    ep: &EndpointInfo,
    dir: u8,
    peer: u32,
    proto: u8,
    port: u16,
    host_exempt: bool,
) -> Decision {
    if host_exempt
        && peer == identity::HOST
        && !(dir == crate::direction::EGRESS && map.get(&node_port_key(proto, port)).is_some())
    {
        return Decision {
            verdict: verdict::FORWARDED,
            reason: reason::NONE,
            rule_id: rule::HOST,
        };
    }
    let iso = ep.isolation_for(dir);
    if iso == 0 {
        return decide(0, None);
    }
    let entry = lookup(map, ep.identity, dir, peer, proto, port, ep.port_plens(dir));
    decide(iso, entry)
}

/// The host-side model of the kernel's policy map: the same lookup over a `HashMap`.
#[cfg(any(test, feature = "std"))]
impl<S: std::hash::BuildHasher> PolicyMap for std::collections::HashMap<PolicyKey, PolicyValue, S> {
    fn get(&self, key: &PolicyKey) -> Option<PolicyValue> {
        std::collections::HashMap::get(self, key).copied()
    }
}

/// The same over a `BTreeMap` (deterministic iteration for compilers and diffs).
#[cfg(any(test, feature = "std"))]
impl PolicyMap for std::collections::BTreeMap<PolicyKey, PolicyValue> {
    fn get(&self, key: &PolicyKey) -> Option<PolicyValue> {
        std::collections::BTreeMap::get(self, key).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{direction::INGRESS, parse::IPPROTO_TCP, parse::IPPROTO_UDP, port_mask};
    use std::collections::HashMap;

    const SUBJ: u32 = 300;
    const PEER: u32 = 400;

    fn v(rule_id: u32, flags: u32) -> PolicyValue {
        PolicyValue { rule_id, flags }
    }

    fn map(entries: &[(u32, u8, u16, u8, PolicyValue)]) -> HashMap<PolicyKey, PolicyValue> {
        entries
            .iter()
            .map(|&(peer, proto, port, plen, val)| {
                (PolicyKey::new(SUBJ, INGRESS, peer, proto, port, plen), val)
            })
            .collect()
    }

    fn look(
        m: &HashMap<PolicyKey, PolicyValue>,
        peer: u32,
        proto: u8,
        port: u16,
        plens: u32,
    ) -> Option<u32> {
        lookup(m, SUBJ, INGRESS, peer, proto, port, plens).map(|v| v.rule_id)
    }

    #[test]
    fn most_specific_first() {
        let m = map(&[
            (PEER, IPPROTO_TCP, 80, 16, v(1, allow::ENFORCE)),
            (PEER, IPPROTO_TCP, 0, 0, v(2, allow::ENFORCE)),
            (PEER, 0, 0, 0, v(3, allow::ENFORCE)),
            (identity::ANY, IPPROTO_TCP, 443, 16, v(4, allow::ENFORCE)),
            (identity::ANY, 0, 0, 0, v(5, allow::ENFORCE)),
        ]);
        assert_eq!(look(&m, PEER, IPPROTO_TCP, 80, 0), Some(1));
        assert_eq!(look(&m, PEER, IPPROTO_TCP, 81, 0), Some(2));
        assert_eq!(look(&m, PEER, IPPROTO_UDP, 80, 0), Some(3));
        // The peer's own entries come before the wildcard peer's, even less specific ones:
        // the compiler folds the wildcard's allows into them.
        assert_eq!(look(&m, PEER, IPPROTO_TCP, 443, 0), Some(2));
        assert_eq!(look(&m, 999, IPPROTO_TCP, 443, 0), Some(4));
        assert_eq!(look(&m, 999, IPPROTO_UDP, 53, 0), Some(5));
    }

    #[test]
    fn port_ranges_as_prefix_blocks() {
        // 8000-8191 is one /3 block (8000 = 0x1f40 is not aligned; use 8192-16383: /3).
        let m = map(&[(PEER, IPPROTO_TCP, 8192, 3, v(7, allow::ENFORCE))]);
        assert_eq!(look(&m, PEER, IPPROTO_TCP, 8192, 1 << 3), Some(7));
        assert_eq!(look(&m, PEER, IPPROTO_TCP, 16383, 1 << 3), Some(7));
        assert_eq!(look(&m, PEER, IPPROTO_TCP, 16384, 1 << 3), None);
        assert_eq!(look(&m, PEER, IPPROTO_TCP, 8191, 1 << 3), None);
        // Lengths not announced by the endpoint are not looked up.
        assert_eq!(look(&m, PEER, IPPROTO_TCP, 9000, 0), None);
    }

    #[test]
    fn protocols_without_ports_only_match_protocol_entries() {
        let m = map(&[
            (PEER, 1, 0, 16, v(8, allow::ENFORCE)), // never emitted by a compiler; must not match
            (PEER, 1, 0, 0, v(9, allow::ENFORCE)),
        ]);
        assert_eq!(look(&m, PEER, 1, 0, 0xfffe), Some(9));
    }

    #[test]
    fn port_masks() {
        assert_eq!(port_mask(0), 0);
        assert_eq!(port_mask(16), 0xffff);
        assert_eq!(port_mask(1), 0x8000);
        assert_eq!(port_mask(12), 0xfff0);
        assert_eq!(PolicyKey::new(1, 0, 2, 6, 0x1234, 8).port, 0x1200);
    }

    #[test]
    fn decision_table() {
        use isolation::{AUDIT as IA, ENFORCE as IE};
        let e = Some(v(11, allow::ENFORCE));
        let a = Some(v(12, allow::AUDIT));
        let both = Some(v(13, allow::ENFORCE | allow::AUDIT));
        let none: Option<PolicyValue> = None;
        let cases = [
            // (isolation, entry) -> (verdict, rule)
            (0, none, verdict::FORWARDED, rule::DEFAULT_ALLOW),
            (0, e, verdict::FORWARDED, rule::DEFAULT_ALLOW),
            (IE, none, verdict::DROPPED, rule::DEFAULT_DENY),
            (IE, e, verdict::FORWARDED, 11),
            (IE, a, verdict::DROPPED, rule::DEFAULT_DENY),
            (IA, none, verdict::AUDIT, rule::DEFAULT_DENY),
            (IA, a, verdict::FORWARDED, 12),
            (IE | IA, e, verdict::FORWARDED, 11),
            (IE | IA, a, verdict::DROPPED, rule::DEFAULT_DENY),
            (IE | IA, both, verdict::FORWARDED, 13),
        ];
        for (iso, entry, want_v, want_r) in cases {
            let d = decide(iso, entry);
            assert_eq!(
                (d.verdict, d.rule_id),
                (want_v, want_r),
                "iso {iso} entry {entry:?}"
            );
            assert_eq!(d.reason == reason::NONE, want_v == verdict::FORWARDED);
        }
    }

    #[test]
    fn host_is_exempt_unless_configured() {
        let ep = EndpointInfo {
            identity: SUBJ,
            isolation: [isolation::ENFORCE, 0],
            ..Default::default()
        };
        let m = map(&[]);
        let d = evaluate(&m, &ep, INGRESS, identity::HOST, IPPROTO_TCP, 80, true);
        assert_eq!((d.verdict, d.rule_id), (verdict::FORWARDED, rule::HOST));
        // A node port is not exempt: egress to it is decided by the entries.
        let mut np = m.clone();
        np.insert(node_port_key(IPPROTO_TCP, 30080), PolicyValue::default());
        let iso = EndpointInfo {
            isolation: [isolation::ENFORCE; 2],
            ..ep
        };
        let d = evaluate(
            &np,
            &iso,
            crate::direction::EGRESS,
            identity::HOST,
            IPPROTO_TCP,
            30080,
            true,
        );
        assert_eq!(
            d.verdict,
            verdict::DROPPED,
            "a node port without an allowing entry"
        );
        let d = evaluate(
            &np,
            &iso,
            crate::direction::EGRESS,
            identity::HOST,
            IPPROTO_TCP,
            30081,
            true,
        );
        assert_eq!(d.rule_id, rule::HOST, "other ports of the node stay exempt");
        let d = evaluate(&np, &iso, INGRESS, identity::HOST, IPPROTO_TCP, 30080, true);
        assert_eq!(d.rule_id, rule::HOST, "ingress from the node stays exempt");
        let d = evaluate(&m, &ep, INGRESS, identity::HOST, IPPROTO_TCP, 80, false);
        assert_eq!(d.verdict, verdict::DROPPED);
        // Egress is not isolated for this endpoint.
        let d = evaluate(
            &m,
            &ep,
            crate::direction::EGRESS,
            PEER,
            IPPROTO_TCP,
            80,
            false,
        );
        assert_eq!(
            (d.verdict, d.rule_id),
            (verdict::FORWARDED, rule::DEFAULT_ALLOW)
        );
    }
}
