//! Reachability: every allowed connection between workloads and external address ranges, and
//! the difference between two policy sets.
//!
//! Connection sets are computed from the policy text (not by probing): the source's egress
//! allowance intersected with the destination's ingress allowance. Only enforcing policies
//! count (audit-mode policies change no verdict). A workload is represented by one of its pods
//! (pods of one template share labels and ports). External space is IPv4, split at every
//! ipBlock boundary so each range behaves the same throughout.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr},
};

use ipnetwork::IpNetwork;

use crate::{
    eval::Endpoint,
    model::{Cluster, Direction, Peer, Pod, PortSel, Protocol},
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
    /// An inclusive IPv4 range outside the cluster.
    External(Ipv4Addr, Ipv4Addr),
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Workload(w) => write!(f, "{w}"),
            Node::External(a, b) => write!(f, "{a}-{b}[External]"),
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

/// Every IPv4 boundary of the cluster's ipBlocks (range starts), always including 0.0.0.0.
pub fn boundaries(c: &Cluster) -> BTreeSet<u32> {
    let mut b = BTreeSet::from([0u32]);
    for p in &c.policies {
        for rule in p.ingress.iter().chain(p.egress.iter()).flatten() {
            for peer in rule.peers.iter().flatten() {
                if let Peer::Block(blk) = peer {
                    for net in std::iter::once(&blk.cidr).chain(blk.except.iter()) {
                        if let IpNetwork::V4(n) = net {
                            b.insert(u32::from(n.network()));
                            if let Some(end) = u32::from(n.broadcast()).checked_add(1) {
                                b.insert(end);
                            }
                        }
                    }
                }
            }
        }
    }
    b
}

/// The allowed connections, sorted. `extra` adds range boundaries (used by [`diff`] so both
/// sides split external space the same way).
pub fn connlist(c: &Cluster, extra: &BTreeSet<u32>) -> Vec<Connection> {
    let mut reps: BTreeMap<crate::model::WorkloadRef, &Pod> = BTreeMap::new();
    for p in c.endpoints() {
        reps.entry(p.workload.clone()).or_insert(p);
    }
    let mut bounds: Vec<u32> = boundaries(c).union(extra).copied().collect();
    bounds.sort();
    let ranges: Vec<(u32, u32)> = bounds
        .iter()
        .enumerate()
        .map(|(i, &lo)| (lo, bounds.get(i + 1).map_or(u32::MAX, |n| n - 1)))
        .collect();

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
            let ext = Endpoint::External(IpAddr::V4(Ipv4Addr::from(lo)));
            let node = Node::External(Ipv4Addr::from(lo), Ipv4Addr::from(hi));
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
    }
    out.sort();
    out
}

/// What `subject`'s enforcing policies allow in `dir` with `peer`.
pub fn allowance(c: &Cluster, subject: &Pod, peer: &Endpoint, dir: Direction) -> ConnSet {
    let mut isolated = false;
    let mut set = ConnSet::default();
    for p in c.policies.iter().filter(|p| !p.audit && p.selects(subject)) {
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

/// The connections one policy set allows and the other does not.
pub fn diff(old: &Cluster, new: &Cluster) -> Vec<Change> {
    let bounds: BTreeSet<u32> = boundaries(old).union(&boundaries(new)).copied().collect();
    let key = |c: &Connection| (c.src.clone(), c.dst.clone());
    let a: BTreeMap<_, _> = connlist(old, &bounds)
        .into_iter()
        .map(|c| (key(&c), c.conns))
        .collect();
    let b: BTreeMap<_, _> = connlist(new, &bounds)
        .into_iter()
        .map(|c| (key(&c), c.conns))
        .collect();
    let keys: BTreeSet<_> = a.keys().chain(b.keys()).cloned().collect();
    keys.into_iter()
        .filter(|k| a.get(k) != b.get(k))
        .map(|(src, dst)| Change {
            old: a.get(&(src.clone(), dst.clone())).cloned(),
            new: b.get(&(src.clone(), dst.clone())).cloned(),
            src,
            dst,
        })
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
        let any = Node::External(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST);
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
