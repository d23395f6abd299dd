//! The reference evaluator: decides a connection straight from the policy model, with no
//! identities, no compilation and no fallbacks. The compiler is tested against it.
//!
//! Each direction (the source's egress, the destination's ingress) is decided in tiers, as
//! ClusterNetworkPolicy defines them, and a connection needs both:
//!
//! 1. Admin-tier ClusterNetworkPolicies that select the pod, by priority (lower first; equal
//!    priorities by name), each one's rules in order: the first rule whose peers and protocols
//!    match decides. Accept allows and Deny denies, final; Pass skips the rest of the tier.
//! 2. NetworkPolicies (and FqdnPolicies): when any selects the pod for this direction, the
//!    connection is allowed if and only if one of their rules allows it.
//! 3. Baseline-tier ClusterNetworkPolicies, the same way; Pass here skips to the default.
//! 4. Default: allowed.
//!
//! Host-network pods are never subjects nor pod peers (only addresses match them). Audit
//! mode (`septa.dev/mode: audit`) works for every tier the same way: the verdict is decided
//! twice, with only enforcing policies and with every policy; a denial only the second makes
//! is AUDIT. [`DirectionResult::decision`] names what decided (the ClusterNetworkPolicy rule
//! with tier and priority, the NetworkPolicy rule, isolation, or the default).
//!
//! Connections to a Service's address ([`evaluate_service`], [`evaluate_node_port`]) are
//! decided at the client's egress by the Service's backends, the way `crate::compile`
//! states it: allowed when the client's egress allows every ready backend on that backend's
//! port, denied when any backend is denied or there is none.

use std::{collections::BTreeMap, fmt, net::IpAddr};

use dataplane_common::verdict;

use api::cluster_network_policy::{Action, Tier};

use crate::{
    cnp::{ClusterPeer, ClusterPolicy, ClusterRule, ProtocolPort},
    model::{Cluster, Direction, Peer, Pod, PortSel, Protocol, Rule, Service},
};

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

/// A ClusterNetworkPolicy rule: the `index`-th rule of a policy's ingress or egress list.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterRuleRef {
    /// The policy's name (cluster-scoped).
    pub policy: String,
    pub tier: Tier,
    pub priority: u16,
    pub direction: Direction,
    pub index: usize,
    /// The rule's name (upstream's optional `name`; may be empty).
    pub rule: String,
    /// What the rule does (Deny for a rule that failed closed).
    pub action: Action,
    /// The policy is in audit mode.
    pub audit: bool,
    /// The rule held a peer septa cannot evaluate and failed closed.
    pub fail_closed: bool,
}

impl fmt::Display for ClusterRuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ClusterNetworkPolicy/{} ({:?} tier, priority {}) {}[{}]",
            self.policy, self.tier, self.priority, self.direction, self.index
        )?;
        if !self.rule.is_empty() {
            write!(f, " {:?}", self.rule)?;
        }
        write!(f, ": {:?}", self.action)
    }
}

/// The outcome for one direction (the source's egress or the destination's ingress).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirectionResult {
    /// An enforcing NetworkPolicy selects the endpoint for this direction.
    pub enforced: bool,
    /// An audit-mode NetworkPolicy selects it.
    pub audited: bool,
    /// Enforcing NetworkPolicy rules that allow the connection.
    pub enforce_allowed: Vec<RuleRef>,
    /// Audit-mode NetworkPolicy rules that allow it.
    pub audit_allowed: Vec<RuleRef>,
    /// The first matching Admin-tier rule of the enforcing ClusterNetworkPolicies.
    pub admin: Option<ClusterRuleRef>,
    /// The first matching Admin-tier rule counting audit-mode ClusterNetworkPolicies too.
    pub admin_audit: Option<ClusterRuleRef>,
    /// The first matching Baseline-tier rule of the enforcing ClusterNetworkPolicies.
    pub baseline: Option<ClusterRuleRef>,
    /// The first matching Baseline-tier rule counting audit-mode ones too.
    pub baseline_audit: Option<ClusterRuleRef>,
}

/// What decided one direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecidedBy {
    /// A ClusterNetworkPolicy rule (Accept or Deny) of the Admin or Baseline tier.
    Cluster(ClusterRuleRef),
    /// NetworkPolicies isolate the pod: the smallest allowing rule, or `None` when none
    /// allows (isolation's default deny).
    NetworkPolicy(Option<RuleRef>),
    /// No tier decided (no policy, or a Pass through to the end): allowed.
    Default,
}

/// The decision for one direction and what made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub by: DecidedBy,
    /// The Pass rules that handed the decision on to a later tier, in order (Admin, then
    /// Baseline).
    pub passed: Vec<ClusterRuleRef>,
}

impl DirectionResult {
    /// Allowed by the enforcing policies.
    pub fn enforce_ok(&self) -> bool {
        self.decision(false).allowed
    }

    /// Allowed by every policy, audit-mode ones included.
    pub fn audit_ok(&self) -> bool {
        self.decision(true).allowed
    }

    /// The tiered decision (see the module documentation): with only enforcing policies, or
    /// (`with_audit`) with audit-mode ones too.
    pub fn decision(&self, with_audit: bool) -> Decision {
        let (admin, baseline) = if with_audit {
            (&self.admin_audit, &self.baseline_audit)
        } else {
            (&self.admin, &self.baseline)
        };
        let mut passed = Vec::new();
        let decided = |r: &ClusterRuleRef, passed: Vec<ClusterRuleRef>| Decision {
            allowed: r.action == Action::Accept,
            by: DecidedBy::Cluster(r.clone()),
            passed,
        };
        if let Some(r) = admin {
            if r.action != Action::Pass {
                return decided(r, passed);
            }
            passed.push(r.clone());
        }
        let isolated = self.enforced || (with_audit && self.audited);
        if isolated {
            let allowing = self.enforce_allowed.iter().min().or_else(|| {
                with_audit
                    .then(|| self.audit_allowed.iter().min())
                    .flatten()
            });
            return Decision {
                allowed: allowing.is_some(),
                by: DecidedBy::NetworkPolicy(allowing.cloned()),
                passed,
            };
        }
        if let Some(r) = baseline {
            if r.action != Action::Pass {
                return decided(r, passed);
            }
            passed.push(r.clone());
        }
        Decision {
            allowed: true,
            by: DecidedBy::Default,
            passed,
        }
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

pub(crate) fn direction(
    c: &Cluster,
    subject: &Pod,
    peer: &Endpoint,
    dir: Direction,
    proto: Protocol,
    port: u16,
    v6: bool,
) -> DirectionResult {
    let mut r = DirectionResult::default();
    if !c.cluster_policies.is_empty() {
        let ordered = ordered_cluster_policies(c);
        let first = |tier, with_audit| {
            cluster_match(
                c, &ordered, tier, with_audit, subject, peer, dir, proto, port, v6,
            )
        };
        r.admin = first(Tier::Admin, false);
        r.admin_audit = first(Tier::Admin, true);
        r.baseline = first(Tier::Baseline, false);
        r.baseline_audit = first(Tier::Baseline, true);
    }
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

/// The cluster's ClusterNetworkPolicies in evaluation order: tier, priority, name.
pub fn ordered_cluster_policies(c: &Cluster) -> Vec<&ClusterPolicy> {
    let mut v: Vec<&ClusterPolicy> = c.cluster_policies.iter().collect();
    v.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
    v
}

/// The first rule of `tier` that matches, in policy order then rule order.
#[allow(clippy::too_many_arguments)]
fn cluster_match(
    c: &Cluster,
    ordered: &[&ClusterPolicy],
    tier: Tier,
    with_audit: bool,
    subject: &Pod,
    peer: &Endpoint,
    dir: Direction,
    proto: Protocol,
    port: u16,
    v6: bool,
) -> Option<ClusterRuleRef> {
    let ns = c.namespace_labels(&subject.namespace);
    let dest = match dir {
        Direction::Ingress => Some(subject),
        Direction::Egress => peer.subject(),
    };
    ordered
        .iter()
        .filter(|p| p.tier == tier && (with_audit || !p.audit) && p.selects(subject, &ns))
        .find_map(|p| {
            p.rules(dir).iter().enumerate().find_map(|(index, rule)| {
                (cluster_peer_matches(c, rule, peer, v6)
                    && cluster_port_matches(rule, dest, proto, port))
                .then(|| ClusterRuleRef {
                    policy: p.name.clone(),
                    tier: p.tier,
                    priority: p.priority,
                    direction: dir,
                    index,
                    rule: rule.name.clone(),
                    action: rule.action,
                    audit: p.audit,
                    fail_closed: rule.fail_closed,
                })
            })
        })
}

/// Whether `peer` is among a ClusterNetworkPolicy rule's peers. Pods match pod peers only when
/// they are endpoints (not host-network); addresses match networks and nodes peers, whoever
/// has them.
pub(crate) fn cluster_peer_matches(
    c: &Cluster,
    rule: &ClusterRule,
    peer: &Endpoint,
    v6: bool,
) -> bool {
    rule.peers.iter().any(|pr| match pr {
        ClusterPeer::All => true,
        ClusterPeer::Pods(set) => peer
            .subject()
            .is_some_and(|q| set.matches(q, &c.namespace_labels(&q.namespace))),
        ClusterPeer::Networks(nets) => peer
            .addr(v6)
            .is_some_and(|ip| nets.iter().any(|n| n.contains(ip))),
        ClusterPeer::Nodes(sel) => peer.addr(v6).is_some_and(|ip| {
            c.nodes
                .iter()
                .any(|n| n.ips.contains(&ip) && sel.matches(&n.labels))
        }),
        ClusterPeer::DomainNames(_) => false,
    })
}

/// Whether a ClusterNetworkPolicy rule's protocols match. Named ports resolve against the
/// destination pod's container ports (an address has none).
pub(crate) fn cluster_port_matches(
    rule: &ClusterRule,
    dest: Option<&Pod>,
    proto: Protocol,
    port: u16,
) -> bool {
    let Some(list) = &rule.protocols else {
        return true;
    };
    list.iter().any(|m| match m {
        ProtocolPort::Range(p, a, b) => *p == proto && *a <= port && port <= *b,
        ProtocolPort::Named(n) => dest
            .and_then(|d| d.named_ports.get(n))
            .is_some_and(|&(pp, num)| pp == proto && num == port),
    })
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

/// One backend of a Service port: where kube-proxy may send a new connection.
#[derive(Clone, Copy, Debug)]
pub struct ServiceBackend<'a> {
    pub endpoint: Endpoint<'a>,
    /// The backend's port for the Service port.
    pub port: u16,
    /// The family of the backend's address. A selected pod without addresses is listed once,
    /// as IPv4: with no address, only pod selectors can match it, whatever the family.
    pub v6: bool,
}

impl ServiceBackend<'_> {
    /// `namespace/pod` or the address.
    pub fn name(&self) -> String {
        match self.endpoint {
            Endpoint::Pod(p) => p.key(),
            Endpoint::External(ip) => ip.to_string(),
        }
    }
}

/// Endpoints (not hostNetwork pods) by address; of two pods with one address the later wins,
/// as in the compiled ipcache.
pub fn pods_by_ip(c: &Cluster) -> BTreeMap<IpAddr, &Pod> {
    c.endpoints()
        .flat_map(|p| p.ips.iter().map(move |&ip| (ip, p)))
        .collect()
}

/// The ready backends of the ports of `svc` with protocol `proto` and port `port` (one, in a
/// valid Service), in a fixed order: the first one names the deciding rule.
///
/// With EndpointSlices (`svc.backends` is `Some`): the ready backends, by address, each on its
/// port named like the Service port (unnamed matches unnamed); a backend without such a port
/// is no backend of that Service port. The backend is the endpoint with that address, or an
/// external address. Without them (manifests): the endpoints the selector selects, in cluster
/// order, on the Service port's target port (a named target resolves per pod; a pod without
/// that port is no backend), once per address.
pub fn service_backends<'a>(
    c: &'a Cluster,
    pods: &BTreeMap<IpAddr, &'a Pod>,
    svc: &Service,
    proto: Protocol,
    port: u16,
) -> Vec<ServiceBackend<'a>> {
    let mut out = Vec::new();
    for sp in svc
        .ports
        .iter()
        .filter(|sp| sp.protocol == proto && sp.port == port)
    {
        match &svc.backends {
            Some(list) => {
                let mut ready: Vec<_> = list.iter().filter(|b| b.ready).collect();
                ready.sort_by_key(|b| b.ip);
                for b in ready {
                    let Some(&(_, _, bport)) = b
                        .ports
                        .iter()
                        .find(|(n, pr, _)| *n == sp.name && *pr == sp.protocol)
                    else {
                        continue;
                    };
                    let endpoint = match pods.get(&b.ip) {
                        Some(p) => Endpoint::Pod(p),
                        None => Endpoint::External(b.ip),
                    };
                    out.push(ServiceBackend {
                        endpoint,
                        port: bport,
                        v6: b.ip.is_ipv6(),
                    });
                }
            }
            None => {
                for p in c.endpoints().filter(|p| svc.selects(p)) {
                    let Some(target) = svc.target_on(sp, p) else {
                        continue;
                    };
                    let families: Vec<bool> = if p.ips.is_empty() {
                        vec![false]
                    } else {
                        p.ips.iter().map(|ip| ip.is_ipv6()).collect()
                    };
                    out.extend(families.into_iter().map(|v6| ServiceBackend {
                        endpoint: Endpoint::Pod(p),
                        port: target,
                        v6,
                    }));
                }
            }
        }
    }
    out
}

/// One backend's part in a Service decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendResult {
    /// `namespace/pod`, or the address of a backend that is no pod.
    pub backend: String,
    pub port: u16,
    /// The client's egress to it, as if connected to directly.
    pub egress: DirectionResult,
}

/// The decision at the client's egress for a connection to a Service address (or a node port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEvaluation {
    /// `dataplane_common::verdict::{FORWARDED, DROPPED, AUDIT}`.
    pub verdict: u8,
    /// An enforcing policy isolates the client's egress.
    pub enforced: bool,
    /// An audit-mode policy isolates it.
    pub audited: bool,
    /// Every ready backend, in order (empty: none, and an isolated client is denied).
    pub backends: Vec<BackendResult>,
    /// When allowed by policy (isolated and not denied): the smallest rule that allowed the
    /// first backend, enforcing rules first. A fresh compiler numbers rules in this order, so
    /// it is the rule the compiled entry names.
    pub rule: Option<RuleRef>,
}

impl ServiceEvaluation {
    pub fn allowed(&self) -> bool {
        self.verdict != verdict::DROPPED
    }
}

/// Decide a connection from `client` to an address of `svc` on `proto`/`port`; `None` when
/// the Service has no such port.
pub fn evaluate_service(
    c: &Cluster,
    client: &Pod,
    svc: &Service,
    proto: Protocol,
    port: u16,
) -> Option<ServiceEvaluation> {
    if !svc
        .ports
        .iter()
        .any(|sp| sp.protocol == proto && sp.port == port)
    {
        return None;
    }
    let backends = service_backends(c, &pods_by_ip(c), svc, proto, port);
    Some(service_decision(c, client, proto, &backends))
}

/// Decide a connection from `client` to the node's own address on `proto`/`node_port`, which
/// kube-proxy sends to the backends of every Service port with that node port; `None` when no
/// Service has it. (The kernel decides node ports so whether or not the rest of the traffic
/// with the node is exempt from policy.)
pub fn evaluate_node_port(
    c: &Cluster,
    client: &Pod,
    proto: Protocol,
    node_port: u16,
) -> Option<ServiceEvaluation> {
    let pods = pods_by_ip(c);
    let mut backends = Vec::new();
    let mut found = false;
    for svc in &c.services {
        for sp in svc
            .ports
            .iter()
            .filter(|sp| sp.protocol == proto && sp.node_port == Some(node_port))
        {
            found = true;
            backends.extend(service_backends(c, &pods, svc, proto, sp.port));
        }
    }
    found.then(|| service_decision(c, client, proto, &backends))
}

/// The Service rule over a backend list: every backend must be allowed; none is a denial.
pub(crate) fn service_decision(
    c: &Cluster,
    client: &Pod,
    proto: Protocol,
    backends: &[ServiceBackend],
) -> ServiceEvaluation {
    let (mut enforced, mut audited) = (false, false);
    for p in c.enforced_policies() {
        if p.rules(Direction::Egress).is_some() && p.selects(client) {
            enforced |= !p.audit;
            audited |= p.audit;
        }
    }
    let backends: Vec<BackendResult> = backends
        .iter()
        .map(|b| BackendResult {
            backend: b.name(),
            port: b.port,
            egress: direction(
                c,
                client,
                &b.endpoint,
                Direction::Egress,
                proto,
                b.port,
                b.v6,
            ),
        })
        .collect();
    let isolated = enforced || audited;
    let some = !backends.is_empty();
    // Every backend must be allowed (a ClusterNetworkPolicy may deny one even where no
    // NetworkPolicy isolates the client); an isolated client with no backend is denied.
    let enforce_ok = (!enforced || some) && backends.iter().all(|b| b.egress.enforce_ok());
    let audit_ok = (!isolated || some) && backends.iter().all(|b| b.egress.audit_ok());
    let verdict = if !enforce_ok {
        verdict::DROPPED
    } else if !audit_ok {
        verdict::AUDIT
    } else {
        verdict::FORWARDED
    };
    let rule = (isolated && verdict == verdict::FORWARDED)
        .then(|| backends.first())
        .flatten()
        .and_then(|b| {
            let e = &b.egress;
            e.enforce_allowed
                .iter()
                .min()
                .or_else(|| e.audit_allowed.iter().min())
                .cloned()
        });
    ServiceEvaluation {
        verdict,
        enforced,
        audited,
        backends,
        rule,
    }
}
