//! Reachability: every allowed connection between workloads and external address ranges, and
//! the difference between two policy sets.
//!
//! Connection sets are computed from the policy text (not by probing): the source's egress
//! allowance intersected with the destination's ingress allowance. Only enforcing policies
//! count (audit-mode policies change no verdict). ClusterNetworkPolicies count with their
//! tiers, as [`crate::eval`] decides them; their `networks` and the addresses of nodes their
//! `nodes` peers select split external space like ipBlocks, and `domainNames` peers are not
//! listed (their addresses are learned at run time). A workload is represented by one of its pods
//! (pods of one template share labels and ports). External space is IPv4 and IPv6, split at
//! every ipBlock boundary so each range behaves the same throughout, then joined again where
//! adjacent ranges have the same connections. FqdnPolicies count as the agent enforces them:
//! their pods are egress-isolated with DNS to their trusted resolvers, and each name pattern
//! is a peer of its own (`dns:api.example.com`) with the rule's ports.
//!
//! Services with an address (ClusterIP, external or load-balancer IP) are a peer too
//! (`shop/api[Service]`), with the Service ports the client's egress may open on that address:
//! the rule of `crate::compile` (every ready backend allowed on its port, see
//! [`crate::eval::evaluate_service`]). Those lines say only what the client's egress allows at
//! the Service address; each backend's ingress still applies, as the workload lines show.
//! [`service_access`] lists each decision with the rule that made it. [`diff`] compares
//! workload and external lines only.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnetwork::IpNetwork;

use crate::{
    cnp::{ClusterPeer, ProtocolPort},
    eval::{pods_by_ip, service_backends, service_decision, Endpoint, RuleRef},
    model::{Cluster, Direction, Peer, Pod, PortSel, Protocol, WorkloadRef},
    ports::PortSet,
};

/// A set of allowed connections.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnSet {
    /// Every protocol and port ("All Connections").
    pub all: bool,
    /// Otherwise, ports per protocol (empty sets are absent).
    pub protocols: BTreeMap<Protocol, PortSet>,
}

impl ConnSet {
    pub fn all() -> Self {
        ConnSet {
            all: true,
            protocols: BTreeMap::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.all && self.protocols.is_empty()
    }

    fn add(&mut self, proto: Protocol, ports: &PortSet) {
        if self.all || ports.is_empty() {
            return;
        }
        let e = self.protocols.entry(proto).or_default();
        *e = e.union(ports);
    }

    /// Every connection of either.
    pub fn union(&self, o: &ConnSet) -> ConnSet {
        if self.all || o.all {
            return ConnSet::all();
        }
        let mut out = self.clone();
        for (p, s) in &o.protocols {
            out.add(*p, s);
        }
        out
    }

    pub fn intersect(&self, o: &ConnSet) -> ConnSet {
        match (self.all, o.all) {
            (true, _) => o.clone(),
            (_, true) => self.clone(),
            _ => {
                let mut out = ConnSet::default();
                for (p, a) in &self.protocols {
                    if let Some(b) = o.protocols.get(p) {
                        out.add(*p, &a.intersect(b));
                    }
                }
                out
            }
        }
    }

    /// Whether every connection of `self` is also in `o`.
    pub fn is_subset(&self, o: &ConnSet) -> bool {
        if o.all {
            return true;
        }
        if self.all {
            return false;
        }
        self.protocols
            .iter()
            .all(|(p, a)| o.protocols.get(p).is_some_and(|b| a.minus(b).is_empty()))
    }

    /// Whether `port` of `proto` is in the set.
    pub fn allows(&self, proto: Protocol, port: u16) -> bool {
        self.all || self.protocols.get(&proto).is_some_and(|s| s.contains(port))
    }
}

impl fmt::Display for ConnSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.all {
            return f.write_str("All Connections");
        }
        if self.protocols.is_empty() {
            return f.write_str("No Connections");
        }
        let parts: Vec<String> = Protocol::ALL
            .iter()
            .filter_map(|p| self.protocols.get(p).map(|s| format!("{p} {s}")))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// One side of a reachability pair.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Node {
    Workload(crate::model::WorkloadRef),
    /// An inclusive address range outside the cluster (both ends of one family).
    External(IpAddr, IpAddr),
    /// Whatever a name pattern of an FqdnPolicy resolves to (`dns:api.example.com`).
    Name(String),
    /// The resolvers the agent trusts for FqdnPolicies that name none (its `--dns-resolver`),
    /// when they are not known here.
    AgentResolvers,
    /// A Service's addresses (`namespace/name[Service]`).
    Service {
        namespace: String,
        name: String,
    },
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Workload(w) => write!(f, "{w}"),
            Node::External(a, b) => write!(f, "{a}-{b}[External]"),
            Node::Name(n) => write!(f, "dns:{n}"),
            Node::AgentResolvers => f.write_str("dns-resolvers:agent-default"),
            Node::Service { namespace, name } => write!(f, "{namespace}/{name}[Service]"),
        }
    }
}

/// One line of a connlist.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Connection {
    pub src: Node,
    pub dst: Node,
    pub conns: ConnSet,
}

/// Where external address space is split: range starts per family (`false` IPv4, `true`
/// IPv6), as integers. Always holds the start of each family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Boundaries(BTreeSet<(bool, u128)>);

impl Boundaries {
    /// Both families' starts.
    fn with_starts(mut self) -> Self {
        self.0.insert((false, 0));
        self.0.insert((true, 0));
        self
    }

    /// Split at both ends of `net`.
    pub fn add(&mut self, net: &IpNetwork) {
        let (v6, lo, hi) = bounds_of(net);
        self.0.insert((v6, lo));
        if hi < family_max(v6) {
            self.0.insert((v6, hi + 1));
        }
    }

    /// Every boundary of either.
    pub fn union(&self, o: &Boundaries) -> Boundaries {
        Boundaries(self.0.union(&o.0).copied().collect())
    }

    /// The inclusive ranges between the boundaries, IPv4 first, in address order.
    fn ranges(&self) -> Vec<(IpAddr, IpAddr)> {
        let all = self.clone().with_starts();
        let v: Vec<(bool, u128)> = all.0.into_iter().collect();
        v.iter()
            .enumerate()
            .map(|(i, &(v6, lo))| {
                let hi = match v.get(i + 1) {
                    Some(&(n6, next)) if n6 == v6 => next - 1,
                    _ => family_max(v6),
                };
                (addr(v6, lo), addr(v6, hi))
            })
            .collect()
    }
}

fn family_max(v6: bool) -> u128 {
    if v6 {
        u128::MAX
    } else {
        u32::MAX as u128
    }
}

fn addr(v6: bool, n: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(n))
    } else {
        IpAddr::V4(Ipv4Addr::from(n as u32))
    }
}

fn num(a: IpAddr) -> (bool, u128) {
    match a {
        IpAddr::V4(a) => (false, u32::from(a) as u128),
        IpAddr::V6(a) => (true, u128::from(a)),
    }
}

fn bounds_of(net: &IpNetwork) -> (bool, u128, u128) {
    match net {
        IpNetwork::V4(n) => (
            false,
            u32::from(n.network()) as u128,
            u32::from(n.broadcast()) as u128,
        ),
        IpNetwork::V6(n) => {
            let lo = u128::from(n.network());
            (
                true,
                lo,
                lo | u128::MAX.checked_shr(n.prefix().into()).unwrap_or(0),
            )
        }
    }
}

/// Every boundary of the cluster's ipBlocks, FqdnPolicy resolvers, ClusterNetworkPolicy
/// networks and node addresses, IPv4 and IPv6.
pub fn boundaries(c: &Cluster) -> Boundaries {
    let mut b = Boundaries::default();
    for p in &c.cluster_policies {
        for rule in p.ingress.iter().chain(p.egress.iter()) {
            for peer in &rule.peers {
                match peer {
                    ClusterPeer::Networks(nets) => nets.iter().for_each(|n| b.add(n)),
                    ClusterPeer::Nodes(_) => {
                        for ip in c.nodes.iter().flat_map(|n| n.ips.iter()) {
                            b.add(&IpNetwork::from(*ip));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    for p in c.enforced_policies() {
        for rule in p.ingress.iter().chain(p.egress.iter()).flatten() {
            for peer in rule.peers.iter().flatten() {
                if let Peer::Block(blk) = peer {
                    for net in std::iter::once(&blk.cidr).chain(blk.except.iter()) {
                        b.add(net);
                    }
                }
            }
        }
    }
    b
}

/// The allowed connections, sorted; adjacent external ranges with the same connections are
/// one line. `extra` adds range boundaries.
pub fn connlist(c: &Cluster, extra: &Boundaries) -> Vec<Connection> {
    let lines = connlist_split(c, extra)
        .into_iter()
        .map(|l| (l.src, l.dst, l.conns))
        .collect();
    let mut services: BTreeMap<(Node, Node), ConnSet> = BTreeMap::new();
    for a in service_access(c).into_iter().filter(|a| a.allowed) {
        let set = services
            .entry((Node::Workload(a.client), a.service))
            .or_default();
        set.add(a.protocol, &PortSet::range(a.port, a.port));
    }
    let mut out: Vec<Connection> = merge_ranges(lines)
        .into_iter()
        .chain(services.into_iter().map(|((s, d), c)| (s, d, c)))
        .map(|(src, dst, conns)| Connection { src, dst, conns })
        .collect();
    out.sort();
    out
}

/// One workload's access to one Service port on the Service's addresses.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceAccess {
    pub client: WorkloadRef,
    /// Always [`Node::Service`].
    pub service: Node,
    pub protocol: Protocol,
    pub port: u16,
    /// Enforcing policy lets the client's egress open it (audit-mode policies change no
    /// verdict, as everywhere in this module).
    pub allowed: bool,
    /// The deciding rule when the client's egress is isolated and the port allowed.
    pub rule: Option<RuleRef>,
}

/// Every workload's access to every port of every Service that has an address, sorted.
pub fn service_access(c: &Cluster) -> Vec<ServiceAccess> {
    let mut reps: BTreeMap<&WorkloadRef, &Pod> = BTreeMap::new();
    for p in c.endpoints() {
        reps.entry(&p.workload).or_insert(p);
    }
    let pods = pods_by_ip(c);
    let mut out = Vec::new();
    for svc in c.services.iter().filter(|s| s.addresses().next().is_some()) {
        let ports: BTreeSet<(Protocol, u16)> =
            svc.ports.iter().map(|p| (p.protocol, p.port)).collect();
        for (proto, port) in ports {
            let backends = service_backends(c, &pods, svc, proto, port);
            for (w, p) in &reps {
                let e = service_decision(c, p, proto, &backends);
                out.push(ServiceAccess {
                    client: (*w).clone(),
                    service: Node::Service {
                        namespace: svc.namespace.clone(),
                        name: svc.name.clone(),
                    },
                    protocol: proto,
                    port,
                    allowed: e.allowed(),
                    rule: e.rule,
                });
            }
        }
    }
    out.sort();
    out
}

/// The allowed connections with external space split at every boundary, unmerged (so two
/// clusters split the same way compare range by range).
fn connlist_split(c: &Cluster, extra: &Boundaries) -> Vec<Connection> {
    let mut reps: BTreeMap<crate::model::WorkloadRef, &Pod> = BTreeMap::new();
    for p in c.endpoints() {
        reps.entry(p.workload.clone()).or_insert(p);
    }
    let ranges = boundaries(c).union(extra).ranges();

    let mut out = Vec::new();
    for (sw, sp) in &reps {
        for (dw, dp) in &reps {
            if sw == dw {
                continue;
            }
            let conns = allowance(c, sp, &Endpoint::Pod(dp), Direction::Egress)
                .intersect(&allowance(c, dp, &Endpoint::Pod(sp), Direction::Ingress));
            if !conns.is_empty() {
                out.push(Connection {
                    src: Node::Workload(sw.clone()),
                    dst: Node::Workload(dw.clone()),
                    conns,
                });
            }
        }
        for &(lo, hi) in &ranges {
            let ext = Endpoint::External(lo);
            let node = Node::External(lo, hi);
            let eg = allowance(c, sp, &ext, Direction::Egress);
            if !eg.is_empty() {
                out.push(Connection {
                    src: Node::Workload(sw.clone()),
                    dst: node.clone(),
                    conns: eg,
                });
            }
            let ing = allowance(c, sp, &ext, Direction::Ingress);
            if !ing.is_empty() {
                out.push(Connection {
                    src: node,
                    dst: Node::Workload(sw.clone()),
                    conns: ing,
                });
            }
        }
        for (node, conns) in by_name(c, sp) {
            out.push(Connection {
                src: Node::Workload(sw.clone()),
                dst: node,
                conns,
            });
        }
    }
    out.sort();
    out
}

/// Egress by name of `pod`'s FqdnPolicies (each name pattern with the union of its rules'
/// ports), and DNS to the agent's default resolvers when they are not known here.
fn by_name(c: &Cluster, pod: &Pod) -> BTreeMap<Node, ConnSet> {
    let mut out: BTreeMap<Node, ConnSet> = BTreeMap::new();
    for f in c.fqdn_policies.iter().filter(|f| f.selects(pod)) {
        for rule in &f.rules {
            let mut set = ConnSet::default();
            match &rule.ports {
                None => set = ConnSet::all(),
                Some(ports) => {
                    for &(proto, port) in ports {
                        set.add(proto, &PortSet::range(port, port));
                    }
                }
            }
            for n in &rule.patterns {
                let e = out.entry(Node::Name(n.to_string())).or_default();
                *e = e.union(&set);
            }
        }
        if f.trusted_resolvers(c.dns_resolvers.as_deref()).is_none() {
            let mut dns = ConnSet::default();
            for proto in [Protocol::Udp, Protocol::Tcp] {
                dns.add(proto, &PortSet::range(53, 53));
            }
            out.insert(Node::AgentResolvers, dns);
        }
    }
    out
}

/// Join lines between the same workload and adjacent external ranges of one family with equal
/// values; everything else is kept as it is. The result is sorted.
fn merge_ranges<T: Clone + Ord>(items: Vec<(Node, Node, T)>) -> Vec<(Node, Node, T)> {
    /// An external range and its value.
    type Ranged<T> = (IpAddr, IpAddr, T);
    // (workload side, egress?) → ranges in address order.
    let mut runs: BTreeMap<(Node, bool), Vec<Ranged<T>>> = BTreeMap::new();
    let mut out = Vec::new();
    for (src, dst, v) in items {
        match (&src, &dst) {
            (Node::Workload(_), Node::External(lo, hi)) => runs
                .entry((src.clone(), true))
                .or_default()
                .push((*lo, *hi, v)),
            (Node::External(lo, hi), Node::Workload(_)) => runs
                .entry((dst.clone(), false))
                .or_default()
                .push((*lo, *hi, v)),
            _ => out.push((src, dst, v)),
        }
    }
    for ((w, egress), mut ranges) in runs {
        ranges.sort_by_key(|r| (r.0, r.1));
        let mut merged: Vec<(IpAddr, IpAddr, T)> = Vec::new();
        for (lo, hi, v) in ranges {
            if let Some(last) = merged.last_mut() {
                let (f1, end) = num(last.1);
                let (f2, start) = num(lo);
                if f1 == f2 && end.checked_add(1) == Some(start) && last.2 == v {
                    last.1 = hi;
                    continue;
                }
            }
            merged.push((lo, hi, v));
        }
        for (lo, hi, v) in merged {
            let ext = Node::External(lo, hi);
            out.push(if egress {
                (w.clone(), ext, v)
            } else {
                (ext, w.clone(), v)
            });
        }
    }
    out.sort();
    out
}

/// What `subject`'s enforcing policies allow in `dir` with `peer`: with ClusterNetworkPolicies,
/// the tiered decision of [`crate::eval`] on every stretch of ports that no rule splits.
pub fn allowance(c: &Cluster, subject: &Pod, peer: &Endpoint, dir: Direction) -> ConnSet {
    if c.cluster_policies.is_empty() {
        return network_policy_allowance(c, subject, peer, dir);
    }
    let dest = match dir {
        Direction::Ingress => Some(subject),
        Direction::Egress => match peer {
            Endpoint::Pod(q) if !q.host_network => Some(*q),
            _ => None,
        },
    };
    // Where the decision may change, per protocol: the ends of every port range and named
    // port of every rule (the destination's named ports resolve to single ports).
    let mut starts: BTreeMap<Protocol, BTreeSet<u32>> = Protocol::ALL
        .iter()
        .map(|p| (*p, BTreeSet::from([1u32])))
        .collect();
    let mut split = |proto: Protocol, lo: u16, hi: u16| {
        let s = starts.entry(proto).or_default();
        s.insert(lo as u32);
        s.insert(hi as u32 + 1);
    };
    for p in &c.cluster_policies {
        for rule in p.rules(dir) {
            for m in rule.protocols.iter().flatten() {
                if let ProtocolPort::Range(proto, lo, hi) = m {
                    split(*proto, *lo, *hi);
                }
            }
        }
    }
    for p in c.enforced_policies() {
        for rule in p.rules(dir).into_iter().flatten() {
            for s in rule.ports.iter().flatten() {
                if let PortSel::Range(lo, hi) = s.port {
                    split(s.protocol, lo, hi);
                }
            }
        }
    }
    for &(proto, port) in dest.iter().flat_map(|d| d.named_ports.values()) {
        split(proto, port, port);
    }
    let mut set = ConnSet::default();
    let mut everything = true;
    for (proto, s) in starts {
        let bounds: Vec<u32> = s.into_iter().filter(|&b| b <= 65535).collect();
        for (i, &lo) in bounds.iter().enumerate() {
            let hi = bounds.get(i + 1).map_or(65535, |n| n - 1);
            let r = crate::eval::direction(c, subject, peer, dir, proto, lo as u16, false);
            if r.enforce_ok() {
                set.add(proto, &PortSet::range(lo as u16, hi as u16));
            } else {
                everything = false;
            }
        }
    }
    if everything {
        ConnSet::all()
    } else {
        set
    }
}

/// What `subject`'s enforcing NetworkPolicies allow in `dir` with `peer`.
fn network_policy_allowance(
    c: &Cluster,
    subject: &Pod,
    peer: &Endpoint,
    dir: Direction,
) -> ConnSet {
    let mut isolated = false;
    let mut set = ConnSet::default();
    for p in c
        .enforced_policies()
        .filter(|p| !p.audit && p.selects(subject))
    {
        let Some(rules) = p.rules(dir) else { continue };
        isolated = true;
        for rule in rules {
            if !crate::eval::rule_peer_matches(c, rule, &p.namespace, peer, false) {
                continue;
            }
            let Some(specs) = &rule.ports else {
                return ConnSet::all();
            };
            let dest = match dir {
                Direction::Ingress => Some(subject),
                Direction::Egress => match peer {
                    Endpoint::Pod(q) if !q.host_network => Some(*q),
                    _ => None,
                },
            };
            for s in specs {
                let ports = match &s.port {
                    PortSel::All => PortSet::all(),
                    PortSel::Range(a, b) => PortSet::range(*a, *b),
                    PortSel::Named(n) => match dest.and_then(|d| d.named_ports.get(n)) {
                        Some(&(pp, num)) if pp == s.protocol => PortSet::range(num, num),
                        _ => PortSet::empty(),
                    },
                };
                set.add(s.protocol, &ports);
            }
        }
    }
    if isolated {
        set
    } else {
        ConnSet::all()
    }
}

/// One difference between two connlists.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    pub src: Node,
    pub dst: Node,
    /// `None`: no connection on that side.
    pub old: Option<ConnSet>,
    pub new: Option<ConnSet>,
}

impl Change {
    /// `added`, `removed` or `changed`.
    pub fn kind(&self) -> &'static str {
        match (&self.old, &self.new) {
            (None, _) => "added",
            (_, None) => "removed",
            _ => "changed",
        }
    }

    /// What the change does, by set inclusion: `added` and `widens` allow more, `removed`
    /// and `narrows` allow less, `changes` both allows and takes away.
    pub fn effect(&self) -> &'static str {
        match (&self.old, &self.new) {
            (None, _) => "added",
            (_, None) => "removed",
            (Some(o), Some(n)) if o.is_subset(n) => "widens",
            (Some(o), Some(n)) if n.is_subset(o) => "narrows",
            _ => "changes",
        }
    }
}

/// The connections one policy set allows and the other does not. Both sides split external
/// space at the same boundaries; adjacent ranges that changed the same way are one change.
pub fn diff(old: &Cluster, new: &Cluster) -> Vec<Change> {
    let bounds = boundaries(old).union(&boundaries(new));
    let key = |c: &Connection| (c.src.clone(), c.dst.clone());
    let a: BTreeMap<_, _> = connlist_split(old, &bounds)
        .into_iter()
        .map(|c| (key(&c), c.conns))
        .collect();
    let b: BTreeMap<_, _> = connlist_split(new, &bounds)
        .into_iter()
        .map(|c| (key(&c), c.conns))
        .collect();
    let keys: BTreeSet<_> = a.keys().chain(b.keys()).cloned().collect();
    let changed = keys
        .into_iter()
        .filter(|k| a.get(k) != b.get(k))
        .map(|k| {
            let v = (a.get(&k).cloned(), b.get(&k).cloned());
            (k.0, k.1, v)
        })
        .collect();
    merge_ranges(changed)
        .into_iter()
        .map(|(src, dst, (old, new))| Change { src, dst, old, new })
        .collect()
}

#[cfg(test)]
mod effect_tests {
    use super::*;

    fn set(ports: &[(Protocol, u16, u16)]) -> ConnSet {
        let mut s = ConnSet::default();
        for &(p, lo, hi) in ports {
            s.add(p, &PortSet::range(lo, hi));
        }
        s
    }

    #[test]
    fn changes_are_classified_by_set_inclusion() {
        let any = Node::External(Ipv4Addr::UNSPECIFIED.into(), Ipv4Addr::BROADCAST.into());
        let change = |old: Option<ConnSet>, new: Option<ConnSet>| Change {
            src: any.clone(),
            dst: any.clone(),
            old,
            new,
        };
        let tcp80 = set(&[(Protocol::Tcp, 80, 80)]);
        let tcp80_90 = set(&[(Protocol::Tcp, 80, 90)]);
        let udp53 = set(&[(Protocol::Udp, 53, 53)]);
        assert_eq!(change(None, Some(tcp80.clone())).effect(), "added");
        assert_eq!(change(Some(tcp80.clone()), None).effect(), "removed");
        assert_eq!(
            change(Some(tcp80.clone()), Some(tcp80_90.clone())).effect(),
            "widens"
        );
        assert_eq!(
            change(Some(tcp80_90.clone()), Some(tcp80.clone())).effect(),
            "narrows"
        );
        assert_eq!(
            change(Some(tcp80.clone()), Some(ConnSet::all())).effect(),
            "widens"
        );
        assert_eq!(
            change(Some(ConnSet::all()), Some(udp53.clone())).effect(),
            "narrows"
        );
        assert_eq!(change(Some(tcp80), Some(udp53)).effect(), "changes");
    }
}
