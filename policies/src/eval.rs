//! The reference evaluator: decides a connection straight from the policy model, with no
//! identities, no compilation and no fallbacks. The compiler is tested against it.

use std::{fmt, net::IpAddr};

use dataplane_common::verdict;

use crate::model::{Cluster, Direction, Peer, Pod, PortSel, Protocol, Rule};

/// One side of a connection.
#[derive(Clone, Copy, Debug)]
pub enum Endpoint<'a> {
    Pod(&'a Pod),
    /// An address that is not a pod (outside the cluster, or a node).
    External(IpAddr),
}

impl Endpoint<'_> {
    /// The address used for a connection of family v4/v6.
    pub fn addr(&self, v6: bool) -> Option<IpAddr> {
        match self {
            Endpoint::Pod(p) => p.ip_of_family(v6),
            Endpoint::External(ip) => Some(*ip),
        }
    }

    fn subject(&self) -> Option<&Pod> {
        match self {
            Endpoint::Pod(p) if !p.host_network => Some(p),
            _ => None,
        }
    }
}

/// A rule: the `index`-th rule of a policy's ingress or egress list.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleRef {
    pub namespace: String,
    pub name: String,
    pub direction: Direction,
    pub index: usize,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}[{}]",
            self.namespace, self.name, self.direction, self.index
        )
    }
}

/// The outcome for one direction (the source's egress or the destination's ingress).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirectionResult {
    /// An enforcing policy selects the endpoint for this direction.
    pub enforced: bool,
    /// An audit-mode policy selects it.
    pub audited: bool,
    /// Enforcing rules that allow the connection.
    pub enforce_allowed: Vec<RuleRef>,
    /// Audit-mode rules that allow it.
    pub audit_allowed: Vec<RuleRef>,
}

impl DirectionResult {
    pub fn enforce_ok(&self) -> bool {
        !self.enforced || !self.enforce_allowed.is_empty()
    }
    pub fn audit_ok(&self) -> bool {
        !(self.enforced || self.audited)
            || !self.enforce_allowed.is_empty()
            || !self.audit_allowed.is_empty()
    }
}

/// The outcome for a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evaluation {
    /// `dataplane_common::verdict::{FORWARDED, DROPPED, AUDIT}`.
    pub verdict: u8,
    /// The source's egress (None: the source is not an endpoint).
    pub egress: Option<DirectionResult>,
    /// The destination's ingress (None: the destination is not an endpoint).
    pub ingress: Option<DirectionResult>,
}

impl Evaluation {
    pub fn allowed(&self) -> bool {
        self.verdict != verdict::DROPPED
    }
}

/// Decide a connection from `src` to `dst` on `proto`/`port` over IPv4 or IPv6.
pub fn evaluate(
    c: &Cluster,
    src: Endpoint,
    dst: Endpoint,
    proto: Protocol,
    port: u16,
    v6: bool,
) -> Evaluation {
    let egress = src
        .subject()
        .map(|s| direction(c, s, &dst, Direction::Egress, proto, port, v6));
    let ingress = dst
        .subject()
        .map(|d| direction(c, d, &src, Direction::Ingress, proto, port, v6));
    let results = [&egress, &ingress];
    let enforce_ok = results
        .iter()
        .all(|r| r.as_ref().is_none_or(|r| r.enforce_ok()));
    let audit_ok = results
        .iter()
        .all(|r| r.as_ref().is_none_or(|r| r.audit_ok()));
    let verdict = if !enforce_ok {
        verdict::DROPPED
    } else if !audit_ok {
        verdict::AUDIT
    } else {
        verdict::FORWARDED
    };
    Evaluation {
        verdict,
        egress,
        ingress,
    }
}

fn direction(
    c: &Cluster,
    subject: &Pod,
    peer: &Endpoint,
    dir: Direction,
    proto: Protocol,
    port: u16,
    v6: bool,
) -> DirectionResult {
    let mut r = DirectionResult::default();
    for p in c.enforced_policies() {
        let Some(rules) = p.rules(dir) else { continue };
        if !p.selects(subject) {
            continue;
        }
        if p.audit {
            r.audited = true;
        } else {
            r.enforced = true;
        }
        for (index, rule) in rules.iter().enumerate() {
            let dest = if dir == Direction::Ingress {
                Some(subject)
            } else {
                peer.subject()
            };
            if rule_peer_matches(c, rule, &p.namespace, peer, v6)
                && rule_port_matches(rule, dest, proto, port)
            {
                let rr = RuleRef {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    direction: dir,
                    index,
                };
                if p.audit {
                    r.audit_allowed.push(rr);
                } else {
                    r.enforce_allowed.push(rr);
                }
            }
        }
    }
    r
}

/// Whether `peer` is among a rule's peers (`None` peers: everyone).
pub(crate) fn rule_peer_matches(
    c: &Cluster,
    rule: &Rule,
    policy_ns: &str,
    peer: &Endpoint,
    v6: bool,
) -> bool {
    let Some(peers) = &rule.peers else {
        return true;
    };
    peers.iter().any(|pr| match peer.subject() {
        Some(q) => c.peer_matches_pod(pr, policy_ns, q, v6),
        // Non-endpoints (external addresses, hostNetwork pods) match only by address.
        None => match pr {
            Peer::Block(b) => peer.addr(v6).is_some_and(|ip| b.contains(ip)),
            Peer::Pods { .. } => false,
        },
    })
}

fn rule_port_matches(rule: &Rule, dest: Option<&Pod>, proto: Protocol, port: u16) -> bool {
    let Some(ports) = &rule.ports else {
        return true;
    };
    ports.iter().any(|s| {
        s.protocol == proto
            && match &s.port {
                PortSel::All => true,
                PortSel::Range(a, b) => *a <= port && port <= *b,
                // Named ports resolve against the destination pod's container ports, with the
                // rule's protocol; an external destination has no named ports.
                PortSel::Named(n) => dest
                    .and_then(|d| d.named_ports.get(n))
                    .is_some_and(|&(pp, num)| pp == proto && num == port),
            }
    })
}
