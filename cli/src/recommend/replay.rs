//! The replay check: learn from one window, then decide every connection of another window
//! under the proposal alone, with the reference evaluator (the same semantics the compiler is
//! tested against). Reports the connections the proposal would deny and two ratios:
//! - **false-denial rate**: denied replay connections / replay connections;
//! - **over-permissiveness**: (workload, workload, port, protocol) tuples the proposal allows
//!   between the workloads observed, divided by the tuples observed.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use policies::{
    connlist::{allowance, ConnSet},
    eval::{evaluate, Endpoint},
    model::{Direction, Pod, Policy, Protocol, WorkloadRef},
    Cluster,
};

use super::{
    observe::{Observations, Party, Tuple},
    propose::Proposal,
};

/// What the replay found.
#[derive(Clone, Debug, Default)]
pub struct ReplayResult {
    pub connections: u64,
    pub denied_connections: u64,
    /// Denied tuples with their connection counts.
    pub denied: Vec<(Tuple, u64)>,
    pub allowed_tuples: u64,
    pub observed_tuples: u64,
}

impl ReplayResult {
    pub fn false_denial_rate(&self) -> f64 {
        if self.connections == 0 {
            0.0
        } else {
            self.denied_connections as f64 / self.connections as f64
        }
    }

    /// One line: connections, denials and both ratios.
    pub fn summary(&self) -> String {
        format!(
            "{} connections, {} denied (false-denial rate {:.4}); over-permissiveness {:.2} ({} allowed / {} observed workload tuples)",
            self.connections,
            self.denied_connections,
            self.false_denial_rate(),
            self.over_permissiveness(),
            self.allowed_tuples,
            self.observed_tuples
        )
    }

    pub fn over_permissiveness(&self) -> f64 {
        if self.observed_tuples == 0 {
            0.0
        } else {
            self.allowed_tuples as f64 / self.observed_tuples as f64
        }
    }
}

/// The cluster with the proposal as its only policies (its FqdnPolicies included), enforced
/// (audit mode off: the replay asks what enforcement would do).
pub fn proposal_cluster(cluster: &Cluster, proposals: &[Proposal]) -> Result<Cluster, String> {
    let mut c = cluster.clone();
    c.policies = proposals
        .iter()
        .map(|p| {
            let ns = p.workload.namespace.clone();
            Policy::from_k8s(&p.policy, &ns)
                .map(|mut pol| {
                    pol.audit = false;
                    pol
                })
                .map_err(|e| {
                    format!(
                        "generated policy for {}: {}: {}",
                        p.workload, e.field, e.message
                    )
                })
        })
        .collect::<Result<_, _>>()?;
    c.fqdn_policies = proposals
        .iter()
        .filter_map(|p| Some((p, p.fqdn.as_ref()?)))
        .map(|(p, f)| {
            policies::septa::fqdn::from_manifest(f).map_err(|(field, msg)| {
                format!("generated FqdnPolicy for {}: {field}: {msg}", p.workload)
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(c)
}

/// Replay `replay`'s connections against the proposal learned from `learned`.
pub fn replay(
    cluster: &Cluster,
    proposals: &[Proposal],
    learned: &Observations,
    replay: &Observations,
) -> Result<ReplayResult, String> {
    let c = proposal_cluster(cluster, proposals)?;
    let mut reps: BTreeMap<WorkloadRef, &Pod> = BTreeMap::new();
    for p in c.endpoints() {
        reps.entry(p.workload.clone()).or_insert(p);
    }
    let fqdn: BTreeMap<&WorkloadRef, BTreeSet<(String, Protocol, u16)>> = proposals
        .iter()
        .filter_map(|p| Some((&p.workload, fqdn_allows(p.fqdn.as_ref()?))))
        .collect();
    let mut r = ReplayResult::default();
    for (t, e) in &replay.tuples {
        let conns = e.connections.max(1);
        r.connections += conns;
        let v6 = [&t.src, &t.dst]
            .iter()
            .any(|p| matches!(p, Party::External(IpAddr::V6(_))));
        let ep = |p: &Party| match p {
            Party::Workload(w) => reps.get(w).map(|pod| Endpoint::Pod(pod)),
            Party::External(ip) => Some(Endpoint::External(*ip)),
        };
        let (Some(src), Some(dst)) = (ep(&t.src), ep(&t.dst)) else {
            r.denied_connections += conns;
            r.denied.push((t.clone(), conns));
            continue;
        };
        let mut allowed = evaluate(&c, src, dst, t.proto, t.port, v6).allowed();
        if !allowed {
            // Egress by name: allowed when the proposal's FqdnPolicy names the peer.
            if let (Party::Workload(w), Party::External(_)) = (&t.src, &t.dst) {
                let by_name = fqdn.get(w).is_some_and(|allows| {
                    e.names
                        .iter()
                        .any(|n| allows.contains(&(n.clone(), t.proto, t.port)))
                });
                // The name opens the egress side; the destination is external, so that is all.
                allowed = by_name;
            }
        }
        if !allowed {
            r.denied_connections += conns;
            r.denied.push((t.clone(), conns));
        }
    }
    // Over-permissiveness between the workloads the learning window saw.
    let observed: BTreeSet<(&WorkloadRef, &WorkloadRef, Protocol, u16)> = learned
        .tuples
        .keys()
        .filter_map(|t| match (&t.src, &t.dst) {
            (Party::Workload(a), Party::Workload(b)) => Some((a, b, t.proto, t.port)),
            _ => None,
        })
        .collect();
    let seen: BTreeSet<&WorkloadRef> = observed.iter().flat_map(|(a, b, _, _)| [*a, *b]).collect();
    r.observed_tuples = observed.len() as u64;
    for a in &seen {
        for b in &seen {
            if a == b {
                continue;
            }
            let (Some(pa), Some(pb)) = (reps.get(*a), reps.get(*b)) else {
                continue;
            };
            let conns = allowance(&c, pa, &Endpoint::Pod(pb), Direction::Egress)
                .intersect(&allowance(&c, pb, &Endpoint::Pod(pa), Direction::Ingress));
            r.allowed_tuples += count(&conns);
        }
    }
    Ok(r)
}

fn count(c: &ConnSet) -> u64 {
    if c.all {
        return 3 * 65535;
    }
    c.protocols
        .values()
        .map(|s| {
            s.ranges()
                .iter()
                .map(|(a, b)| (*b - *a) as u64 + 1)
                .sum::<u64>()
        })
        .sum()
}

fn fqdn_allows(v: &serde_json::Value) -> BTreeSet<(String, Protocol, u16)> {
    let mut out = BTreeSet::new();
    for rule in v["spec"]["egress"].as_array().into_iter().flatten() {
        for n in rule["toFQDNs"].as_array().into_iter().flatten() {
            let Some(name) = n["matchName"].as_str() else {
                continue;
            };
            for p in rule["ports"].as_array().into_iter().flatten() {
                let proto = p["protocol"].as_str().and_then(Protocol::parse);
                let port = p["port"].as_u64().and_then(|n| u16::try_from(n).ok());
                if let (Some(proto), Some(port)) = (proto, port) {
                    out.insert((name.to_owned(), proto, port));
                }
            }
        }
    }
    out
}
