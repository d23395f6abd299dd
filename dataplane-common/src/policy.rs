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

use crate::{allow, identity, isolation, reason, rule, verdict, EndpointInfo, PolicyKey, PolicyValue};

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
                        if let Some(v) = map.get(&PolicyKey::new(subject, dir, p, proto, port, plen)) {
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

/// Evaluate a new flow for an endpoint: isolation + lookup + decision. `host_exempt`: traffic
/// with the node itself is allowed without a lookup (Kubernetes: probes from the node work).
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
    if host_exempt && peer == identity::HOST {
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
