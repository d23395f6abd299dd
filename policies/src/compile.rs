//! Compiling a [`Cluster`] into the data path's desired map state, and diffing two states.
//!
//! # Identities
//! An endpoint's *subject* identity is keyed by (namespace, labels, named ports): everything
//! its own policies depend on. Each of its addresses gets a *peer* identity keyed by the same
//! plus the set of ipBlocks that contain the address (usually none, and then the two are the
//! same identity). Pods that policy cannot tell apart share an identity, so the number of
//! policy entries grows with distinct identities, not with pods.
//!
//! Every ipBlock CIDR and `except` prefix goes into the ipcache. A prefix's identity stands for
//! the addresses it covers minus its more specific prefixes (longest prefix wins), so it
//! belongs to an ipBlock exactly when it lies inside the block's CIDR and inside none of its
//! excepts. Prefixes in the same set of ipBlocks share one identity; prefixes in none get
//! `world`.
//!
//! # Policy entries
//! See `dataplane_common::policy` for the kernel's lookup order (first match wins). For each
//! subject identity and direction, the rules that select it are turned into contributions
//! (peer, protocol, port range, enforce/audit, rule id), and entries are emitted so that the
//! first entry the kernel finds already holds the union of every rule that covers the packet.
//!
//! # Services
//! kube-proxy DNATs a connection to a Service address (ClusterIP, external or load-balancer
//! IP) or to a node port after the client's egress hook has judged it, so that hook sees the
//! Service address, not the backend. Each Service gets an identity of its own, and each of its
//! addresses goes into the ipcache as a host prefix with it (more specific than any ipBlock,
//! so the Service identity wins over an ipBlock that contains the address: ipBlocks never
//! decide about Service addresses, the backends do). The rule, decided per identity:
//!
//! > A client whose egress is isolated may open a Service port (protocol and port, on any of
//! > the Service's addresses) exactly when its egress policy allows it to reach **every**
//! > ready backend of that port directly, on that backend's port. If any backend is denied,
//! > or the port has no ready backend, the connection is denied at the Service address (fail
//! > closed). It is audit rather than allowed when a backend is allowed only by an audit-mode
//! > policy, and it names the rule that allows the first backend (backends in address order
//! > from EndpointSlices; selected pods in input order from manifests). A node port is
//! > decided the same way over every Service port with that node port.
//!
//! Entries: `(client, service, protocol, port)` for every allowed Service port, one port
//! exact (prefix length 16, which the kernel always probes, so `port_plens` does not change).
//! Nothing else reaches a Service address: when the client has wildcard-peer entries (a rule
//! without peers) an any-protocol entry without allow bits stops the lookup at the Service
//! identity, so a rule "anyone on TCP 80" does not open a ClusterIP's port 80 whose backends
//! listen on 8080 and are not allowed there.
//!
//! Node ports are entries for the `host` identity, one port exact, with an entry without
//! allow bits for a denied node port when the client has wildcard-peer entries; other ports
//! of the node are left to the rules as before. Pod egress to the node is exempt from policy
//! unless the agent runs with `--policy-host`, so each node port also gets its marker entry
//! (`dataplane_common::policy::node_port_key`), which takes that port, and only it, out of
//! the exemption: an isolated client reaches a node port only when the Service rule allows
//! it, with or without `--policy-host`. The entries also decide a connection to that port of
//! the node that kube-proxy does not DNAT (a node address outside its
//! `--nodeport-addresses`): allowed or denied like the node port, never exempt.
//!
//! Without EndpointSlices (manifests, standalone mode) the backends are the pods the selector
//! selects, on the target port (a named target resolves per pod); a pod without addresses
//! counts by its identity (only pod selectors can match it). A backend address that is no pod
//! counts as the address it is (its ipBlock identity, or `world`). A Service's addresses of
//! both families share one decision, over the backends of both families.
//!
//! # Phases
//! [`Compiler::compile`] runs these in order: collect the identity keys, number identities
//! and rules (keeping earlier numbers), fill the ipcache, resolve every rule's peers once,
//! then per subject identity compute its isolation and emit its policy entries, and last
//! compile Services: resolve each Service port's backends to (identity, port) once, then per
//! egress-isolated subject identity decide each Service port and node port from the entries
//! just emitted (the kernel's own lookup, so the decision is the one a direct connection to
//! the backend would get), and mark the node ports.

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use dataplane_common::{allow, identity, isolation, EndpointInfo, PolicyKey, PolicyValue};
use ipnetwork::IpNetwork;

use crate::{
    eval::{pods_by_ip, service_backends, Endpoint, RuleRef, ServiceBackend},
    model::{Cluster, Direction, IpBlock, NamespaceScope, Peer, Pod, PortSel, Protocol, Rule},
    ports::prefix_blocks,
    selector::Labels,
};

/// Peer identities a rule matches (with their keys, for named-port resolution).
type PeerList<'a> = Vec<(u32, Option<&'a IdentityKey>)>;

/// What an identity stands for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IdentityKey {
    Pod {
        namespace: String,
        labels: Labels,
        named_ports: BTreeMap<String, (Protocol, u16)>,
        /// ipBlocks containing the address (empty for subject identities).
        blocks: BTreeSet<IpBlock>,
    },
    /// Addresses outside pods that are in exactly these ipBlocks (never empty).
    Cidr { blocks: BTreeSet<IpBlock> },
    /// A Service's addresses (ClusterIPs, external and load-balancer IPs), where kube-proxy
    /// sends connections on to the backends (see the module docs).
    Service { namespace: String, name: String },
}

impl IdentityKey {
    fn subject_of(p: &Pod) -> Self {
        IdentityKey::Pod {
            namespace: p.namespace.clone(),
            labels: p.labels.clone(),
            named_ports: p.named_ports.clone(),
            blocks: BTreeSet::new(),
        }
    }
}

/// Per-endpoint state in the data path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointState {
    pub identity: u32,
    /// `isolation` bits indexed by direction number.
    pub isolation: [u8; 2],
    /// Port prefix lengths in use, indexed by direction number.
    pub port_plens: [u32; 2],
}

impl EndpointState {
    /// The data-path value (addresses are the agent's to fill in).
    pub fn to_info(&self) -> EndpointInfo {
        EndpointInfo {
            identity: self.identity,
            ingress_port_plens: self.port_plens[0],
            egress_port_plens: self.port_plens[1],
            isolation: self.isolation,
            ..Default::default()
        }
    }
}

/// The desired content of the data path's maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub identities: BTreeMap<IdentityKey, u32>,
    /// By `namespace/pod`.
    pub endpoints: BTreeMap<String, EndpointState>,
    pub ipcache: BTreeMap<IpNetwork, u32>,
    pub policy: BTreeMap<PolicyKey, PolicyValue>,
    /// Rule id → the rule.
    pub rules: BTreeMap<u32, RuleRef>,
    /// Every Service address in the ipcache → its Service (namespace, name), so flow records
    /// can name the Service a connection was opened to.
    pub services: BTreeMap<IpAddr, (String, String)>,
}

/// Keeps identity and rule numbers stable across compilations, so a small change to the input
/// is a small change to the maps. Numbers are never reused within a compiler's lifetime.
#[derive(Clone, Debug)]
pub struct Compiler {
    identities: BTreeMap<IdentityKey, u32>,
    next_identity: u32,
    rules: BTreeMap<RuleRef, u32>,
    next_rule: u32,
}

impl Default for Compiler {
    fn default() -> Self {
        Self {
            identities: BTreeMap::new(),
            next_identity: dataplane_common::IDENTITY_FIRST_DYNAMIC,
            rules: BTreeMap::new(),
            next_rule: 1,
        }
    }
}

/// The union of the rules that cover one (peer, protocol, port).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Val {
    flags: u32,
    enforce_rule: u32,
    audit_rule: u32,
}

impl Val {
    const EMPTY: Val = Val {
        flags: 0,
        enforce_rule: u32::MAX,
        audit_rule: u32::MAX,
    };

    fn add(mut self, flag: u32, rule: u32) -> Val {
        self.flags |= flag;
        if flag == allow::ENFORCE {
            self.enforce_rule = self.enforce_rule.min(rule);
        } else {
            self.audit_rule = self.audit_rule.min(rule);
        }
        self
    }

    fn join(self, o: Val) -> Val {
        Val {
            flags: self.flags | o.flags,
            enforce_rule: self.enforce_rule.min(o.enforce_rule),
            audit_rule: self.audit_rule.min(o.audit_rule),
        }
    }

    fn is_empty(&self) -> bool {
        self.flags == 0
    }

    fn value(&self) -> PolicyValue {
        let rule_id = if self.enforce_rule != u32::MAX {
            self.enforce_rule
        } else {
            self.audit_rule
        };
        PolicyValue {
            rule_id,
            flags: self.flags,
        }
    }
}

/// One rule's allowance for one peer: protocol 0 = every protocol (ports ignored).
#[derive(Clone, Copy, Debug)]
struct Contrib {
    proto: u8,
    lo: u16,
    hi: u16,
    flag: u32,
    rule: u32,
}

impl Contrib {
    fn covers(&self, lo: u32, hi: u32) -> bool {
        self.lo as u32 <= lo && hi <= self.hi as u32
    }
    fn val(&self) -> Val {
        Val::EMPTY.add(self.flag, self.rule)
    }
}

/// The identity keys a cluster needs, before they are numbered.
struct IdentityKeys<'c> {
    /// Subject keys, each with one pod it stands for (all such pods select the same rules).
    subjects: BTreeMap<IdentityKey, &'c Pod>,
    /// Every endpoint address with its peer key.
    addrs: Vec<(IpAddr, IdentityKey)>,
    /// Every ipcache prefix the ipBlocks need, with its key (`None`: in no ipBlock, `world`).
    prefixes: Vec<(IpNetwork, Option<IdentityKey>)>,
    /// Every Service address with its Service. An address that is also a pod's stays the
    /// pod's; one claimed by two Services is the first's by (namespace, name), and the other
    /// Service's ports on it are denied (fail closed).
    services: BTreeMap<IpAddr, (String, String)>,
}

impl<'c> IdentityKeys<'c> {
    fn of(c: &'c Cluster, blocks: &BTreeSet<IpBlock>) -> Self {
        let index = BlockIndex::new(blocks);
        let mut subjects: BTreeMap<IdentityKey, &Pod> = BTreeMap::new();
        let mut addrs: Vec<(IpAddr, IdentityKey)> = Vec::new();
        for p in c.endpoints() {
            subjects.entry(IdentityKey::subject_of(p)).or_insert(p);
            for &ip in &p.ips {
                let IdentityKey::Pod {
                    namespace,
                    labels,
                    named_ports,
                    ..
                } = IdentityKey::subject_of(p)
                else {
                    unreachable!()
                };
                let inside: BTreeSet<IpBlock> = index
                    .around(IpNetwork::from(ip))
                    .filter(|b| b.contains(ip))
                    .cloned()
                    .collect();
                addrs.push((
                    ip,
                    IdentityKey::Pod {
                        namespace,
                        labels,
                        named_ports,
                        blocks: inside,
                    },
                ));
            }
        }
        let prefixes = cidr_prefixes(blocks)
            .into_iter()
            .map(|net| {
                let inside: BTreeSet<IpBlock> = index
                    .around(net)
                    .filter(|b| !b.except.iter().any(|e| within(&net, e)))
                    .cloned()
                    .collect();
                (
                    net,
                    (!inside.is_empty()).then_some(IdentityKey::Cidr { blocks: inside }),
                )
            })
            .collect();
        let pod_addrs: BTreeSet<IpAddr> = addrs.iter().map(|(ip, _)| *ip).collect();
        let mut by_name: Vec<&crate::model::Service> = c.services.iter().collect();
        by_name.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        // ClusterIPs first: the API server allocates them, so they are the Services' own,
        // while anyone who may create a Service can write any address into its externalIPs.
        // An external IP never takes over another Service's ClusterIP (nor a pod's address).
        let mut services = BTreeMap::new();
        for svc in &by_name {
            for ip in svc.cluster_ips.iter().filter(|ip| !pod_addrs.contains(ip)) {
                services
                    .entry(*ip)
                    .or_insert_with(|| (svc.namespace.clone(), svc.name.clone()));
            }
        }
        for svc in by_name {
            for ip in svc.external_ips.iter().filter(|ip| !pod_addrs.contains(ip)) {
                services
                    .entry(*ip)
                    .or_insert_with(|| (svc.namespace.clone(), svc.name.clone()));
            }
        }
        Self {
            subjects,
            addrs,
            prefixes,
            services,
        }
    }

    fn all(&self) -> BTreeSet<IdentityKey> {
        let mut wanted: BTreeSet<IdentityKey> = self.subjects.keys().cloned().collect();
        wanted.extend(self.addrs.iter().map(|(_, k)| k.clone()));
        wanted.extend(self.prefixes.iter().filter_map(|(_, k)| k.clone()));
        wanted.extend(self.services.values().map(service_key));
        wanted
    }
}

/// ipBlocks by their CIDR (normalised), so the blocks around an address or prefix are found by
/// looking up its ancestors at the prefix lengths in use (at most 33 or 129 lookups) rather
/// than by testing every block: linear in the blocks, where all pairs was quadratic.
struct BlockIndex<'b> {
    by_cidr: HashMap<IpNetwork, Vec<&'b IpBlock>>,
    /// Prefix lengths of the CIDRs, per family (IPv4, IPv6).
    plens: [BTreeSet<u8>; 2],
}

impl<'b> BlockIndex<'b> {
    fn new(blocks: &'b BTreeSet<IpBlock>) -> Self {
        let mut by_cidr: HashMap<IpNetwork, Vec<&IpBlock>> = HashMap::new();
        let mut plens = [BTreeSet::new(), BTreeSet::new()];
        for b in blocks {
            by_cidr.entry(normalised(b.cidr)).or_default().push(b);
            plens[usize::from(b.cidr.is_ipv6())].insert(b.cidr.prefix());
        }
        Self { by_cidr, plens }
    }

    /// The blocks whose CIDR contains `net` (excepts not applied).
    fn around(&self, net: IpNetwork) -> impl Iterator<Item = &'b IpBlock> + '_ {
        self.plens[usize::from(net.is_ipv6())]
            .iter()
            .take_while(move |&&p| p <= net.prefix())
            .filter_map(move |&p| IpNetwork::new(net.network(), p).ok())
            .filter_map(|anc| self.by_cidr.get(&normalised(anc)))
            .flatten()
            .copied()
    }
}

/// `net` with its host bits cleared, so equal prefixes compare equal however they were written.
fn normalised(net: IpNetwork) -> IpNetwork {
    IpNetwork::new(net.network(), net.prefix()).unwrap_or(net)
}

/// The numbered identities a rule's peers can match, indexed so each rule is resolved once.
struct PeerIndex<'a> {
    /// Pod identities by namespace (for pod selectors).
    by_ns: BTreeMap<&'a str, Vec<(&'a IdentityKey, u32)>>,
    /// Identities inside each ipBlock (for ipBlock peers).
    by_block: HashMap<&'a IpBlock, Vec<(&'a IdentityKey, u32)>>,
}

impl<'a> PeerIndex<'a> {
    fn new(identities: &'a BTreeMap<IdentityKey, u32>) -> Self {
        let mut by_ns: BTreeMap<&str, Vec<(&IdentityKey, u32)>> = BTreeMap::new();
        let mut by_block: HashMap<&IpBlock, Vec<(&IdentityKey, u32)>> = HashMap::new();
        for (k, &v) in identities {
            match k {
                IdentityKey::Pod {
                    namespace, blocks, ..
                } => {
                    by_ns.entry(namespace.as_str()).or_default().push((k, v));
                    for b in blocks {
                        by_block.entry(b).or_default().push((k, v));
                    }
                }
                IdentityKey::Cidr { blocks } => {
                    for b in blocks {
                        by_block.entry(b).or_default().push((k, v));
                    }
                }
                // No rule names a Service: its backends decide (see the module docs).
                IdentityKey::Service { .. } => {}
            }
        }
        Self { by_ns, by_block }
    }

    /// Every pod identity: the targets of egress to any peer on a named port.
    fn all_pods(&self) -> PeerList<'a> {
        self.by_ns
            .values()
            .flatten()
            .map(|&(k, v)| (v, Some(k)))
            .collect()
    }

    /// The identities `rule` (of a policy in `policy_ns`) allows; no peer list is the
    /// wildcard peer.
    fn resolve(&self, c: &Cluster, rule: &Rule, policy_ns: &str) -> PeerList<'a> {
        let Some(list) = &rule.peers else {
            return vec![(identity::ANY, None)];
        };
        let mut v: BTreeMap<u32, &IdentityKey> = BTreeMap::new();
        for pr in list {
            let candidates: Vec<&(&IdentityKey, u32)> = match pr {
                Peer::Block(b) => self.by_block.get(b).into_iter().flatten().collect(),
                Peer::Pods {
                    namespaces: NamespaceScope::Own,
                    ..
                } => self.by_ns.get(policy_ns).into_iter().flatten().collect(),
                Peer::Pods {
                    namespaces: NamespaceScope::Selected(s),
                    ..
                } => self
                    .by_ns
                    .iter()
                    .filter(|(ns, _)| s.matches(&c.namespace_labels(ns)))
                    .flat_map(|(_, ks)| ks.iter())
                    .collect(),
            };
            for &&(k, pid) in &candidates {
                if key_matches(c, pr, policy_ns, k) {
                    v.insert(pid, k);
                }
            }
        }
        v.into_iter().map(|(pid, k)| (pid, Some(k))).collect()
    }
}

/// Every rule of a cluster, numbered and with its peers resolved, ready to be turned into
/// the entries of the subjects it applies to.
struct ResolvedRules<'a> {
    c: &'a Cluster,
    /// [policy][direction][rule] → (rule id, peers).
    rules: Vec<[Vec<(u32, PeerList<'a>)>; 2]>,
    /// Policy indices by namespace.
    policies_by_ns: BTreeMap<&'a str, Vec<usize>>,
    /// See [`PeerIndex::all_pods`].
    all_pod_peers: PeerList<'a>,
}

impl ResolvedRules<'_> {
    /// The isolation bits and per-peer contributions of the policies selecting `subject`
    /// in direction `dir`.
    fn contributions(&self, subject: &Pod, dir: Direction) -> (u8, BTreeMap<u32, Vec<Contrib>>) {
        let c = self.c;
        let d = dir.number() as usize;
        let mut isolated = 0u8;
        let mut contribs: BTreeMap<u32, Vec<Contrib>> = BTreeMap::new();
        let selecting = self
            .policies_by_ns
            .get(subject.namespace.as_str())
            .into_iter()
            .flatten()
            .copied()
            .filter(|&i| c.policies[i].selects(subject));
        for pi in selecting {
            let p = &c.policies[pi];
            let Some(rules) = p.rules(dir) else { continue };
            let flag = if p.audit {
                allow::AUDIT
            } else {
                allow::ENFORCE
            };
            isolated |= if p.audit {
                isolation::AUDIT
            } else {
                isolation::ENFORCE
            };
            for (index, rule) in rules.iter().enumerate() {
                let (rid, peers) = &self.rules[pi][d][index];
                let (rid, peers) = (*rid, peers.as_slice());
                // Egress to any peer on a named port means every pod whose port of
                // that name resolves: the wildcard peer cannot carry it.
                let named_any_egress = rule.peers.is_none() && dir == Direction::Egress;
                let Some(specs) = &rule.ports else {
                    for &(pid, _) in peers {
                        contribs.entry(pid).or_default().push(Contrib {
                            proto: 0,
                            lo: 0,
                            hi: 65535,
                            flag,
                            rule: rid,
                        });
                    }
                    continue;
                };
                for s in specs {
                    let named = matches!(s.port, PortSel::Named(_));
                    let targets = if named && named_any_egress {
                        self.all_pod_peers.as_slice()
                    } else {
                        peers
                    };
                    for &(pid, pkey) in targets {
                        // Named ports resolve against the destination: the subject for
                        // ingress, the peer for egress.
                        let dest_ports = match dir {
                            Direction::Ingress => Some(&subject.named_ports),
                            Direction::Egress => match pkey {
                                Some(IdentityKey::Pod { named_ports, .. }) => Some(named_ports),
                                _ => None,
                            },
                        };
                        let range = match &s.port {
                            PortSel::All => Some((0, 65535)),
                            PortSel::Range(a, b) => Some((*a, *b)),
                            PortSel::Named(n) => dest_ports
                                .and_then(|m| m.get(n))
                                .filter(|(pp, _)| *pp == s.protocol)
                                .map(|&(_, num)| (num, num)),
                        };
                        if let Some((lo, hi)) = range {
                            contribs.entry(pid).or_default().push(Contrib {
                                proto: s.protocol.number(),
                                lo,
                                hi,
                                flag,
                                rule: rid,
                            });
                        }
                    }
                }
            }
        }
        (isolated, contribs)
    }

    /// The isolation of the subject identity `sid` (standing for `subject`), and its policy
    /// entries, added to `policy`.
    fn subject_state(
        &self,
        sid: u32,
        subject: &Pod,
        policy: &mut BTreeMap<PolicyKey, PolicyValue>,
    ) -> EndpointState {
        let mut es = EndpointState {
            identity: sid,
            ..Default::default()
        };
        for dir in [Direction::Ingress, Direction::Egress] {
            let d = dir.number() as usize;
            let (isolated, mut contribs) = self.contributions(subject, dir);
            es.isolation[d] = isolated;
            if isolated == 0 {
                continue; // Not isolated: the kernel never looks up entries.
            }
            let any = contribs.remove(&identity::ANY).unwrap_or_default();
            let mut plens = 0u32;
            emit(
                policy,
                sid,
                dir.number(),
                identity::ANY,
                &any,
                &[],
                &mut plens,
            );
            for (pid, own) in &contribs {
                emit(policy, sid, dir.number(), *pid, own, &any, &mut plens);
            }
            es.port_plens[d] = plens;
        }
        es
    }
}

impl Compiler {
    /// Compile `c`. Deterministic: the same input and compiler history give the same state.
    pub fn compile(&mut self, c: &Cluster) -> DesiredState {
        let c = with_fqdn_isolation(c);
        let blocks = ip_blocks(&c);
        let keys = IdentityKeys::of(&c, &blocks);
        self.number_identities(keys.all());
        self.number_rules(&c);

        let mut st = DesiredState {
            identities: self.identities.clone(),
            ipcache: self.ipcache(&keys),
            rules: self.rules.iter().map(|(r, i)| (*i, r.clone())).collect(),
            ..Default::default()
        };
        let rules = self.resolve_rules(&c, &PeerIndex::new(&self.identities));
        let subject_states: BTreeMap<u32, EndpointState> = keys
            .subjects
            .iter()
            .map(|(key, subject)| {
                let sid = self.identities[key];
                (sid, rules.subject_state(sid, subject, &mut st.policy))
            })
            .collect();
        let targets = self.service_targets(&c, &keys, &st.ipcache);
        let service_ids: BTreeSet<u32> = keys
            .services
            .values()
            .map(|s| self.identities[&service_key(s)])
            .collect();
        for (&sid, es) in &subject_states {
            service_entries(&targets, &service_ids, sid, es, &mut st.policy);
        }
        for t in targets.iter().filter(|t| t.peer == identity::HOST) {
            st.policy.insert(
                dataplane_common::policy::node_port_key(t.proto, t.port),
                PolicyValue {
                    rule_id: dataplane_common::rule::DEFAULT_DENY,
                    flags: 0,
                },
            );
        }
        st.services = keys.services;
        st.endpoints = c
            .endpoints()
            .map(|p| {
                let sid = self.identities[&IdentityKey::subject_of(p)];
                (p.key(), subject_states[&sid])
            })
            .collect();
        st
    }

    /// Every Service port on a Service address, and every node port, with its backends as
    /// (identity, port): resolved once, for all subjects. `ipcache` holds the pod addresses
    /// and ipBlock prefixes (a Service address is never a backend).
    fn service_targets(
        &self,
        c: &Cluster,
        keys: &IdentityKeys,
        ipcache: &BTreeMap<IpNetwork, u32>,
    ) -> Vec<ServiceTarget> {
        let pods = pods_by_ip(c);
        let blocks: BTreeMap<IpNetwork, u32> = keys
            .prefixes
            .iter()
            .map(|(net, k)| {
                let id = k.as_ref().map_or(identity::WORLD, |k| self.identities[k]);
                (*net, id)
            })
            .collect();
        let identity_of = |b: &ServiceBackend| -> u32 {
            match b.endpoint {
                Endpoint::Pod(p) => match p.ip_of_family(b.v6) {
                    Some(ip) => ipcache
                        .get(&IpNetwork::from(ip))
                        .copied()
                        .unwrap_or_else(|| ipcache_lookup(&blocks, ip)),
                    None => self
                        .identities
                        .get(&IdentityKey::subject_of(p))
                        .copied()
                        .unwrap_or(identity::WORLD),
                },
                Endpoint::External(ip) => ipcache_lookup(&blocks, ip),
            }
        };
        let owners: BTreeSet<&(String, String)> = keys.services.values().collect();
        // (peer, protocol, port) → backends, in order; grouped so that two Service ports
        // meeting on one key (only in invalid input) must both allow.
        let mut grouped: BTreeMap<(u32, Protocol, u16), Vec<(u32, u16)>> = BTreeMap::new();
        for svc in &c.services {
            let owned = owners.contains(&(svc.namespace.clone(), svc.name.clone()));
            let sid = self
                .identities
                .get(&service_key(&(svc.namespace.clone(), svc.name.clone())))
                .copied();
            for sp in &svc.ports {
                let backends: Vec<(u32, u16)> =
                    service_backends(c, &pods, svc, sp.protocol, sp.port)
                        .iter()
                        .map(|b| (identity_of(b), b.port))
                        .collect();
                if let (true, Some(sid)) = (owned, sid) {
                    grouped
                        .entry((sid, sp.protocol, sp.port))
                        .or_default()
                        .extend(&backends);
                }
                if let Some(np) = sp.node_port {
                    grouped
                        .entry((identity::HOST, sp.protocol, np))
                        .or_default()
                        .extend(&backends);
                }
            }
        }
        grouped
            .into_iter()
            .map(|((peer, proto, port), mut backends)| {
                let mut seen = BTreeSet::new();
                backends.retain(|b| seen.insert(*b));
                ServiceTarget {
                    peer,
                    proto: proto.number(),
                    port,
                    backends,
                }
            })
            .collect()
    }

    /// Keep the numbers of identities still wanted, drop the others and number new ones.
    fn number_identities(&mut self, wanted: BTreeSet<IdentityKey>) {
        self.identities.retain(|k, _| wanted.contains(k));
        for k in wanted {
            if !self.identities.contains_key(&k) {
                self.identities.insert(k, self.next_identity);
                self.next_identity += 1;
            }
        }
    }

    /// Keep the numbers of rules still present, drop the others and number new ones.
    fn number_rules(&mut self, c: &Cluster) {
        let mut refs = BTreeSet::new();
        for p in &c.policies {
            for dir in [Direction::Ingress, Direction::Egress] {
                for index in 0..p.rules(dir).map_or(0, |r| r.len()) {
                    refs.insert(RuleRef {
                        namespace: p.namespace.clone(),
                        name: p.name.clone(),
                        direction: dir,
                        index,
                    });
                }
            }
        }
        self.rules.retain(|r, _| refs.contains(r));
        for r in refs {
            if !self.rules.contains_key(&r) {
                self.rules.insert(r, self.next_rule);
                self.next_rule += 1;
            }
        }
    }

    /// Every ipBlock prefix with its identity, and every endpoint address (a host route,
    /// more specific than any block) with its peer identity.
    fn ipcache(&self, keys: &IdentityKeys) -> BTreeMap<IpNetwork, u32> {
        let mut ipcache = BTreeMap::new();
        for (net, key) in &keys.prefixes {
            let id = key.as_ref().map_or(identity::WORLD, |k| self.identities[k]);
            ipcache.insert(*net, id);
        }
        for (ip, key) in &keys.addrs {
            ipcache.insert(IpNetwork::from(*ip), self.identities[key]);
        }
        for (ip, svc) in &keys.services {
            ipcache.insert(IpNetwork::from(*ip), self.identities[&service_key(svc)]);
        }
        ipcache
    }

    /// Every rule's id and peer identities, once per rule rather than once per subject.
    fn resolve_rules<'a>(&self, c: &'a Cluster, peers: &PeerIndex<'a>) -> ResolvedRules<'a> {
        let rules = c
            .policies
            .iter()
            .map(|p| {
                [Direction::Ingress, Direction::Egress].map(|dir| {
                    p.rules(dir)
                        .into_iter()
                        .flatten()
                        .enumerate()
                        .map(|(index, rule)| {
                            let rid = self.rules[&RuleRef {
                                namespace: p.namespace.clone(),
                                name: p.name.clone(),
                                direction: dir,
                                index,
                            }];
                            (rid, peers.resolve(c, rule, &p.namespace))
                        })
                        .collect()
                })
            })
            .collect();
        let mut policies_by_ns: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, p) in c.policies.iter().enumerate() {
            policies_by_ns
                .entry(p.namespace.as_str())
                .or_default()
                .push(i);
        }
        ResolvedRules {
            c,
            rules,
            policies_by_ns,
            all_pod_peers: peers.all_pods(),
        }
    }
}

/// A Service port on a Service address, or a node port, and where it leads.
#[derive(Clone, Debug)]
struct ServiceTarget {
    /// The identity the client's egress sees: the Service's, or `host` for a node port.
    peer: u32,
    proto: u8,
    port: u16,
    /// Every ready backend as (peer identity, port), first occurrences in backend order.
    backends: Vec<(u32, u16)>,
}

/// The identity key of a Service (namespace, name).
fn service_key((namespace, name): &(String, String)) -> IdentityKey {
    IdentityKey::Service {
        namespace: namespace.clone(),
        name: name.clone(),
    }
}

/// Add the Service entries of subject identity `sid` (state `es`) to `policy`, which already
/// holds its other entries: each target is decided by looking its backends up as the kernel
/// would for a direct connection (see the module docs for the rule). `service_ids`: every
/// Service identity in the ipcache (each gets a stopping entry when needed, ports or not).
fn service_entries(
    targets: &[ServiceTarget],
    service_ids: &BTreeSet<u32>,
    sid: u32,
    es: &EndpointState,
    policy: &mut BTreeMap<PolicyKey, PolicyValue>,
) {
    use dataplane_common::{direction::EGRESS, policy::lookup, rule};
    let d = EGRESS as usize;
    if es.isolation[d] == 0 {
        return; // Not isolated: the kernel never looks up entries.
    }
    let start = PolicyKey {
        subject: sid,
        peer: identity::ANY,
        ..PolicyKey::default()
    };
    // Whether a lookup that finds nothing for a peer falls through to wildcard-peer entries.
    let wildcard = policy
        .range(start..)
        .take_while(|(k, _)| k.subject == sid && k.peer == identity::ANY)
        .any(|(k, _)| k.direction == EGRESS);
    let deny = PolicyValue {
        rule_id: rule::DEFAULT_DENY,
        flags: 0,
    };
    let mut out: Vec<(PolicyKey, PolicyValue)> = Vec::new();
    for t in targets {
        let vals: Vec<Option<PolicyValue>> = t
            .backends
            .iter()
            .map(|&(peer, port)| lookup(policy, sid, EGRESS, peer, t.proto, port, es.port_plens[d]))
            .collect();
        let flags_of = |v: &Option<PolicyValue>| v.map_or(0, |v| v.flags);
        // Every backend must be allowed: enforcing when all are by enforcing rules, audit
        // when all are by some rule; none at all is a denial.
        let flags = if vals.is_empty() {
            0
        } else if vals.iter().all(|v| flags_of(v) & allow::ENFORCE != 0) {
            allow::ENFORCE
        } else if vals.iter().all(|v| flags_of(v) != 0) {
            allow::AUDIT
        } else {
            0
        };
        let key = PolicyKey::new(sid, EGRESS, t.peer, t.proto, t.port, 16);
        match vals.first().copied().flatten() {
            Some(first) if flags != 0 => out.push((
                key,
                PolicyValue {
                    rule_id: first.rule_id,
                    flags,
                },
            )),
            _ if t.peer == identity::HOST && wildcard => out.push((key, deny)),
            _ => {}
        }
    }
    if wildcard {
        for &svc in service_ids {
            out.push((PolicyKey::new(sid, EGRESS, svc, 0, 0, 0), deny));
        }
    }
    policy.extend(out);
}

/// `c` with its FqdnPolicies as the isolation policies they enter the policy map as (the
/// names are the FQDN allowlist's, filled from DNS answers at run time).
fn with_fqdn_isolation(c: &Cluster) -> Cow<'_, Cluster> {
    if c.fqdn_policies.is_empty() {
        return Cow::Borrowed(c);
    }
    Cow::Owned(Cluster {
        policies: c.enforced_policies().map(|p| p.into_owned()).collect(),
        fqdn_policies: Vec::new(),
        ..c.clone()
    })
}

/// Every ipBlock any rule names.
fn ip_blocks(c: &Cluster) -> BTreeSet<IpBlock> {
    c.policies
        .iter()
        .flat_map(|p| p.ingress.iter().chain(p.egress.iter()).flatten())
        .flat_map(|r| r.peers.iter().flatten())
        .filter_map(|p| match p {
            Peer::Block(b) => Some(b.clone()),
            _ => None,
        })
        .collect()
}

/// Whether identity `k` is matched by peer `pr` of a policy in `policy_ns`.
fn key_matches(c: &Cluster, pr: &Peer, policy_ns: &str, k: &IdentityKey) -> bool {
    match (pr, k) {
        (Peer::Block(b), IdentityKey::Pod { blocks, .. } | IdentityKey::Cidr { blocks }) => {
            blocks.contains(b)
        }
        (
            Peer::Pods { namespaces, pods },
            IdentityKey::Pod {
                namespace, labels, ..
            },
        ) => {
            let ns_ok = match namespaces {
                NamespaceScope::Own => namespace == policy_ns,
                NamespaceScope::Selected(s) => s.matches(&c.namespace_labels(namespace)),
            };
            ns_ok && pods.matches(labels)
        }
        (Peer::Pods { .. }, IdentityKey::Cidr { .. }) | (_, IdentityKey::Service { .. }) => false,
    }
}

/// Every prefix the ipcache needs for the ipBlocks: CIDRs and excepts. When an IPv6 prefix
/// covers `::ffff:0:0/96` (where IPv4 lives, mapped, in the kernel's trie), IPv4's root
/// 0.0.0.0/0 is added so IPv4 addresses never take an IPv6 block's identity.
fn cidr_prefixes(blocks: &BTreeSet<IpBlock>) -> BTreeSet<IpNetwork> {
    let mut out: BTreeSet<IpNetwork> = blocks
        .iter()
        .flat_map(|b| std::iter::once(b.cidr).chain(b.except.iter().copied()))
        .collect();
    let mapped: IpNetwork = "::ffff:0:0/96".parse().expect("valid");
    if out.iter().any(|n| n.is_ipv6() && within(&mapped, n)) {
        out.insert("0.0.0.0/0".parse().expect("valid"));
    }
    out
}

/// Whether prefix `a` lies within prefix `b` (same family).
pub fn within(a: &IpNetwork, b: &IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4() && a.prefix() >= b.prefix() && b.contains(a.network())
}

/// Emit the entries for one peer key of one subject and direction. `own` are the peer's own
/// contributions; `any` the wildcard peer's, folded in because the kernel stops at the first
/// match (empty when emitting the wildcard peer itself).
fn emit(
    out: &mut BTreeMap<PolicyKey, PolicyValue>,
    subject: u32,
    dir: u8,
    peer: u32,
    own: &[Contrib],
    any: &[Contrib],
    plens: &mut u32,
) {
    let all: Vec<Contrib> = own.iter().chain(any.iter()).copied().collect();
    let anyproto = all
        .iter()
        .filter(|c| c.proto == 0)
        .fold(Val::EMPTY, |v, c| v.join(c.val()));
    let own_anyproto = own.iter().any(|c| c.proto == 0);
    if own_anyproto {
        out.insert(
            PolicyKey::new(subject, dir, peer, 0, 0, 0),
            anyproto.value(),
        );
    }
    let mut protos: BTreeSet<u8> = own.iter().map(|c| c.proto).filter(|&p| p != 0).collect();
    if own_anyproto {
        // The peer's any-protocol entry stops the lookup before the wildcard peer's
        // protocol entries, so those must be repeated here.
        protos.extend(any.iter().map(|c| c.proto).filter(|&p| p != 0));
    }
    for proto in protos {
        let cs: Vec<&Contrib> = all.iter().filter(|c| c.proto == proto).collect();
        let base = cs
            .iter()
            .filter(|c| c.covers(0, 65535))
            .fold(anyproto, |v, c| v.join(c.val()));
        let mut bounds: BTreeSet<u32> = BTreeSet::from([0, 65536]);
        for c in &cs {
            bounds.insert(c.lo as u32);
            bounds.insert(c.hi as u32 + 1);
        }
        let bounds: Vec<u32> = bounds.into_iter().collect();
        // Elementary intervals, merged where the value is the same.
        let mut runs: Vec<(u32, u32, Val)> = Vec::new();
        for w in bounds.windows(2) {
            let (lo, hi) = (w[0], w[1] - 1);
            let v = cs
                .iter()
                .filter(|c| c.covers(lo, hi))
                .fold(anyproto, |v, c| v.join(c.val()));
            match runs.last_mut() {
                Some(last) if last.2 == v && last.1 + 1 == lo => last.1 = hi,
                _ => runs.push((lo, hi, v)),
            }
        }
        if !base.is_empty() {
            out.insert(
                PolicyKey::new(subject, dir, peer, proto, 0, 0),
                base.value(),
            );
        }
        for (lo, hi, v) in runs {
            if v == base || v.is_empty() {
                continue;
            }
            for (start, plen) in prefix_blocks(lo as u16, hi as u16) {
                if plen == 0 {
                    continue; // The whole range: that is `base` above.
                }
                if plen < 16 {
                    *plens |= 1 << plen;
                }
                out.insert(
                    PolicyKey::new(subject, dir, peer, proto, start, plen),
                    v.value(),
                );
            }
        }
    }
}

/// The changes that turn one map into another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapDiff<K, V> {
    pub upsert: Vec<(K, V)>,
    pub remove: Vec<K>,
}

impl<K, V> MapDiff<K, V> {
    pub fn len(&self) -> usize {
        self.upsert.len() + self.remove.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Diff two maps.
pub fn diff_map<K: Ord + Clone, V: PartialEq + Clone>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
) -> MapDiff<K, V> {
    let upsert = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let remove = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .cloned()
        .collect();
    MapDiff { upsert, remove }
}

/// Everything that changes between two desired states. Apply in this order so that no
/// moment exists with less enforcement than either state: policy upserts, then ipcache and
/// endpoints, then removals, then bump the revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateDiff {
    pub policy: MapDiff<PolicyKey, PolicyValue>,
    pub ipcache: MapDiff<IpNetwork, u32>,
    pub endpoints: MapDiff<String, EndpointState>,
}

impl StateDiff {
    pub fn between(old: &DesiredState, new: &DesiredState) -> Self {
        Self {
            policy: diff_map(&old.policy, &new.policy),
            ipcache: diff_map(&old.ipcache, &new.ipcache),
            endpoints: diff_map(&old.endpoints, &new.endpoints),
        }
    }
    pub fn len(&self) -> usize {
        self.policy.len() + self.ipcache.len() + self.endpoints.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The kernel's longest-prefix match over the ipcache, done the kernel's way (16-byte keys,
/// IPv4 mapped), so tests see exactly what the kernel would.
pub fn ipcache_lookup(ipcache: &BTreeMap<IpNetwork, u32>, ip: IpAddr) -> u32 {
    let addr = u128::from_be_bytes(mapped(ip));
    let mut best: Option<(u32, u32)> = None;
    for (net, id) in ipcache {
        let plen = if net.is_ipv4() {
            96 + net.prefix() as u32
        } else {
            net.prefix() as u32
        };
        let key = u128::from_be_bytes(mapped(net.network()));
        let mask = if plen == 0 {
            0
        } else {
            u128::MAX << (128 - plen)
        };
        if addr & mask == key & mask && best.is_none_or(|(bp, _)| plen > bp) {
            best = Some((plen, *id));
        }
    }
    best.map_or(identity::WORLD, |(_, id)| id)
}

fn mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => dataplane_common::v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The host-side model of the kernel's whole decision over a compiled state: the source's
/// egress at its veth, the destination's ingress at its veth, each through
/// `dataplane_common::policy::evaluate` (the code the eBPF program runs). Node traffic is not
/// modelled here (the kernel exempts it before the lookup).
pub fn kernel_verdict(
    c: &Cluster,
    st: &DesiredState,
    src: Endpoint,
    dst: Endpoint,
    proto: Protocol,
    port: u16,
    v6: bool,
) -> Option<u8> {
    use dataplane_common::{policy, verdict};
    let (sa, da) = (src.addr(v6)?, dst.addr(v6)?);
    let mut verdicts = Vec::new();
    let endpoint = |e: &Endpoint| match e {
        Endpoint::Pod(p) if !p.host_network => st.endpoints.get(&p.key()).map(|s| s.to_info()),
        _ => None,
    };
    let _ = c;
    if let Some(ep) = endpoint(&src) {
        verdicts.push(
            policy::evaluate(
                &st.policy,
                &ep,
                dataplane_common::direction::EGRESS,
                ipcache_lookup(&st.ipcache, da),
                proto.number(),
                port,
                false,
            )
            .verdict,
        );
    }
    if let Some(ep) = endpoint(&dst) {
        verdicts.push(
            policy::evaluate(
                &st.policy,
                &ep,
                dataplane_common::direction::INGRESS,
                ipcache_lookup(&st.ipcache, sa),
                proto.number(),
                port,
                false,
            )
            .verdict,
        );
    }
    Some(if verdicts.contains(&verdict::DROPPED) {
        verdict::DROPPED
    } else if verdicts.contains(&verdict::AUDIT) {
        verdict::AUDIT
    } else {
        verdict::FORWARDED
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(a: u32, plen: u8) -> IpNetwork {
        IpNetwork::new(IpAddr::from(std::net::Ipv4Addr::from(a)), plen).unwrap()
    }

    proptest! {
        /// The index finds exactly the blocks that contain a prefix, as testing every block
        /// does, whether CIDRs are written with host bits or not.
        #[test]
        fn blocks_around_a_prefix_are_those_containing_it(
            cidrs in prop::collection::vec((any::<u32>(), 0u8..=32), 1..40),
            probes in prop::collection::vec((any::<u32>(), 0u8..=32), 1..40),
        ) {
            // Few distinct high bits, so prefixes nest often.
            let squash = |a: u32| a & 0xc0ff_00f0;
            let blocks: BTreeSet<IpBlock> = cidrs
                .iter()
                .map(|&(a, p)| IpBlock { cidr: net(squash(a), p), except: Vec::new() })
                .collect();
            let index = BlockIndex::new(&blocks);
            for &(a, p) in &probes {
                let probe = normalised(net(squash(a), p));
                let mut fast: Vec<&IpBlock> = index.around(probe).collect();
                fast.sort();
                fast.dedup();
                let slow: Vec<&IpBlock> =
                    blocks.iter().filter(|b| within(&probe, &b.cidr)).collect();
                prop_assert_eq!(fast, slow, "probe {}", probe);
            }
        }
    }
}
