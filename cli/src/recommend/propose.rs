//! From observed connections to least-privilege NetworkPolicies, one per workload.
//!
//! Rules of the construction (each keeps the proposal exactly as permissive as what was
//! observed, except where said):
//! - a workload is selected by the labels all its pods share, without the labels that change
//!   per rollout or per pod ([`DEFAULT_VOLATILE_LABELS`] and `--ignore-label`);
//! - a workload peer is `podSelector` (its labels), AND `namespaceSelector`
//!   (`kubernetes.io/metadata.name`) in the same peer when it is in another namespace;
//! - ingress ports are the container port's name when the workload names it (robust to
//!   renumbering), else the number; egress ports are numbers (a named port in an egress rule
//!   resolves per destination and could open more than was seen); consecutive numbers merge
//!   into `port`..`endPort`;
//! - peers with the same set of ports share one rule (peers × ports is then exactly the union
//!   of what each peer used);
//! - external addresses become CIDRs: addresses merge with their sibling when both were seen
//!   (exact), and, **widening**, a block of `/max-prefix` (default /24, IPv6 /64) replaces its
//!   addresses when at least `widen-min` (default 4) of them were seen; never wider;
//! - external peers known by name become FQDN rules (`FqdnPolicy`, `--external fqdn`);
//! - egress to the cluster DNS resolver is always allowed (**added**, not observed), so a
//!   proposal cannot break name resolution.

use api::fqdn_policy::{FqdnEgressRule, FqdnPolicySpec, FqdnPort, FqdnSelector};
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, SystemTime},
};

use ipnetwork::IpNetwork;
use k8s_openapi::{
    api::networking::v1::{
        IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule,
        NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
    },
    apimachinery::pkg::{
        apis::meta::v1::LabelSelector, apis::meta::v1::ObjectMeta, util::intstr::IntOrString,
    },
};
use policies::model::{Pod, Protocol, WorkloadRef, NAMESPACE_NAME_LABEL};

use super::observe::{Evidence, Observations, Party, Tuple};

/// Labels that differ between pods of one workload or between rollouts; never selected on.
pub const DEFAULT_VOLATILE_LABELS: [&str; 9] = [
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "batch.kubernetes.io/controller-uid",
    "batch.kubernetes.io/job-name",
    "controller-uid",
    "job-name",
];

/// How external peers that carry DNS names are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExternalMode {
    /// CIDRs in the NetworkPolicy (enforced by any CNI).
    Cidr,
    /// `FqdnPolicy` objects for peers known by name (septa's DNS-aware rules).
    Fqdn,
}

/// The cluster resolver every proposal may reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsTarget {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

/// Settings of the construction.
#[derive(Clone, Debug)]
pub struct Options {
    pub volatile_labels: BTreeSet<String>,
    pub dns: Option<DnsTarget>,
    pub external: ExternalMode,
    /// Widen to a `/max_prefix` block when at least this many of its addresses were seen
    /// (0: never widen).
    pub widen_min: usize,
    pub max_prefix_v4: u8,
    pub max_prefix_v6: u8,
    pub audit: bool,
    /// No new tuple for this long before the end of the data: `stable`.
    pub stable_after: Duration,
    /// No flow at all for this long before the end of the data: `stale`.
    pub stale_after: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            volatile_labels: DEFAULT_VOLATILE_LABELS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            dns: Some(DnsTarget {
                namespace: "kube-system".into(),
                labels: BTreeMap::from([("k8s-app".into(), "kube-dns".into())]),
            }),
            external: ExternalMode::Cidr,
            widen_min: 4,
            max_prefix_v4: 24,
            max_prefix_v6: 64,
            audit: false,
            stable_after: Duration::from_secs(24 * 3600),
            stale_after: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Whether a workload's proposal is ready for review.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LearningState {
    /// New tuples appeared within `stable_after` of the end of the data.
    Learning,
    /// No new tuple for `stable_after`.
    Stable,
    /// No flow at all for `stale_after`: the evidence may be out of date.
    Stale,
}

impl std::fmt::Display for LearningState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LearningState::Learning => "learning",
            LearningState::Stable => "stable",
            LearningState::Stale => "stale",
        })
    }
}

/// What one rule allows, in words, with its evidence.
#[derive(Clone, Debug)]
pub struct RuleEvidence {
    pub direction: &'static str,
    pub index: usize,
    pub peers: Vec<String>,
    pub ports: Vec<String>,
    /// `None` for rules added without observation (DNS).
    pub evidence: Option<Evidence>,
    /// Replicas of the workload that used the rule.
    pub replicas: usize,
}

/// The proposal for one workload.
#[derive(Clone, Debug)]
pub struct Proposal {
    pub workload: WorkloadRef,
    pub policy: NetworkPolicy,
    /// Egress by name (only with `--external fqdn` and named peers).
    pub fqdn: Option<serde_json::Value>,
    pub rules: Vec<RuleEvidence>,
    pub state: LearningState,
    pub tuples: usize,
    pub connections: u64,
    pub warnings: Vec<String>,
}

/// A peer of a rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum PeerKey {
    Workload(WorkloadRef),
    Cidr(IpNetwork),
}

/// A port of a rule: (protocol, first, last, name).
type PortKey = (Protocol, u16, u16, Option<String>);
/// The ports a peer used: (protocol, number, container port name).
type PortsUsed = BTreeSet<(Protocol, u16, Option<String>)>;
/// FQDN rules: names sharing one port set.
type NameGroups = Vec<(BTreeSet<(Protocol, u16)>, BTreeSet<String>)>;

/// Build every workload's proposal.
pub fn propose(
    obs: &Observations,
    workloads: &BTreeMap<WorkloadRef, &Pod>,
    all_pods: &[Pod],
    opts: &Options,
) -> (Vec<Proposal>, Vec<String>) {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    let end = obs.span.map(|s| s.1);
    for (w, rep) in workloads {
        let ingress: Vec<(&Tuple, &Evidence)> = obs
            .tuples
            .iter()
            .filter(|(t, _)| t.dst == Party::Workload(w.clone()))
            .collect();
        let egress: Vec<(&Tuple, &Evidence)> = obs
            .tuples
            .iter()
            .filter(|(t, _)| t.src == Party::Workload(w.clone()))
            .collect();
        if ingress.is_empty() && egress.is_empty() {
            warnings.push(format!(
                "{w}: never seen in the flows; no proposal (it would cut it off)"
            ));
            continue;
        }
        let Some(labels) = selector_labels(w, all_pods, opts) else {
            warnings.push(format!(
                "{w}: its pods share no stable label to select them by; no proposal"
            ));
            continue;
        };
        let mut p_warn = Vec::new();
        let also: Vec<String> = workloads
            .iter()
            .filter(|(o, pod)| {
                *o != w
                    && o.namespace == w.namespace
                    && labels.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
            })
            .map(|(o, _)| o.to_string())
            .collect();
        if !also.is_empty() {
            p_warn.push(format!("the selector also selects {}", also.join(", ")));
        }
        let mut rules = Vec::new();
        let mut dns_evidence: Option<Evidence> = None;
        // The resolver itself answers every pod of the cluster on port 53, seen or not: the
        // DNS rule every proposal carries must find it open.
        let resolver = is_resolver(w, opts, workloads);
        let (dns_in, ingress_rest): (Vec<_>, Vec<_>) = ingress
            .iter()
            .copied()
            .partition(|(t, _)| resolver && t.port == 53 && matches!(t.src, Party::Workload(_)));
        let mut in_rules: Vec<NetworkPolicyIngressRule> = build_rules(
            &ingress_rest,
            |t| &t.src,
            w,
            rep,
            true,
            opts,
            &mut rules,
            all_pods,
            workloads,
            &mut p_warn,
        );
        if resolver {
            let mut e = Evidence::default();
            for (_, x) in &dns_in {
                e.merge(x);
            }
            rules.push(RuleEvidence {
                direction: "ingress",
                index: in_rules.len(),
                peers: vec!["DNS clients: every pod of the cluster".into()],
                ports: vec!["UDP 53".into(), "TCP 53".into()],
                replicas: e.dst_pods.len(),
                evidence: (!dns_in.is_empty()).then_some(e),
            });
            in_rules.push(NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    namespace_selector: Some(LabelSelector::default()),
                    ..NetworkPolicyPeer::default()
                }]),
                ports: Some(vec![
                    np_port(Protocol::Udp, 53, 53, None),
                    np_port(Protocol::Tcp, 53, 53, None),
                ]),
            });
        }
        let (mut eg_rules_cidr, fqdn_groups) = {
            let (named, plain): (Vec<_>, Vec<_>) = egress.iter().partition(|(t, e)| {
                opts.external == ExternalMode::Fqdn
                    && matches!(t.dst, Party::External(_))
                    && !e.names.is_empty()
            });
            // DNS to the cluster resolver is covered by the DNS rule below.
            let (dns_seen, plain): (Vec<_>, Vec<_>) = plain
                .into_iter()
                .copied()
                .partition(|(t, _)| is_cluster_dns(t, opts, workloads));
            for (_, e) in dns_seen {
                dns_evidence.get_or_insert_with(Evidence::default).merge(e);
            }
            let r = build_rules(
                &plain,
                |t| &t.dst,
                w,
                rep,
                false,
                opts,
                &mut rules,
                all_pods,
                workloads,
                &mut p_warn,
            );
            (r, fqdn_rules(&named))
        };
        if let Some(dns) = &opts.dns {
            let peer = NetworkPolicyPeer {
                namespace_selector: Some(match_labels(BTreeMap::from([(
                    NAMESPACE_NAME_LABEL.to_owned(),
                    dns.namespace.clone(),
                )]))),
                pod_selector: Some(match_labels(dns.labels.clone())),
                ip_block: None,
            };
            let ports = vec![
                np_port(Protocol::Udp, 53, 53, None),
                np_port(Protocol::Tcp, 53, 53, None),
            ];
            rules.push(RuleEvidence {
                direction: "egress",
                index: eg_rules_cidr.len(),
                peers: vec![format!("DNS {}/{}", dns.namespace, fmt_labels(&dns.labels))],
                ports: vec!["UDP 53".into(), "TCP 53".into()],
                replicas: dns_evidence.as_ref().map_or(0, |e| e.src_pods.len()),
                evidence: dns_evidence,
            });
            eg_rules_cidr.push(NetworkPolicyEgressRule {
                to: Some(vec![peer]),
                ports: Some(ports),
            });
        }
        let mut total = Evidence::default();
        for (_, e) in ingress.iter().chain(egress.iter()) {
            total.merge(e);
        }
        // From the tuples, not from reading order: the last time the workload was seen, and
        // the latest first sighting of any of its tuples.
        let last_seen = ingress
            .iter()
            .chain(egress.iter())
            .filter_map(|(_, e)| e.last)
            .max();
        let last_new = ingress
            .iter()
            .chain(egress.iter())
            .filter_map(|(_, e)| e.first)
            .max();
        let state = match (last_seen, last_new, end) {
            (Some(seen), Some(new), Some(end)) => {
                let since = |t: SystemTime| end.duration_since(t).unwrap_or_default();
                if since(seen) >= opts.stale_after {
                    LearningState::Stale
                } else if since(new) >= opts.stable_after {
                    LearningState::Stable
                } else {
                    LearningState::Learning
                }
            }
            _ => LearningState::Learning,
        };
        for r in rules
            .iter()
            .filter(|r| r.evidence.as_ref().is_some_and(|e| e.connections <= 1))
        {
            p_warn.push(format!(
                "{} rule {} was seen once ({})",
                r.direction,
                r.index,
                r.peers.join(", ")
            ));
        }
        let name = policy_name(w);
        let mut annotations = BTreeMap::from([
            (
                "septa.dev/generated-by".to_owned(),
                "septa recommend".to_owned(),
            ),
            ("septa.dev/workload".to_owned(), w.to_string()),
            ("septa.dev/learning-state".to_owned(), state.to_string()),
            ("septa.dev/evidence".to_owned(), evidence_json(&rules)),
        ]);
        if opts.audit {
            annotations.insert("septa.dev/mode".into(), "audit".into());
        }
        let selector = match_labels(labels.clone());
        let policy = NetworkPolicy {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(w.namespace.clone()),
                annotations: Some(annotations),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "septa".to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(selector.clone()),
                policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
                ingress: Some(in_rules),
                egress: Some(eg_rules_cidr),
            }),
        };
        let fqdn = (!fqdn_groups.is_empty()).then(|| {
            let spec = FqdnPolicySpec {
                pod_selector: LabelSelector {
                    match_labels: Some(labels.clone()),
                    match_expressions: None,
                },
                egress: fqdn_groups
                    .iter()
                    .map(|(ports, names)| FqdnEgressRule {
                        to_fqdns: names
                            .iter()
                            .map(|n| FqdnSelector {
                                match_name: Some(n.clone()),
                                match_pattern: None,
                            })
                            .collect(),
                        ports: Some(
                            ports
                                .iter()
                                .map(|(p, n)| FqdnPort {
                                    protocol: Some(p.to_string()),
                                    port: u32::from(*n),
                                })
                                .collect(),
                        ),
                    })
                    .collect(),
                resolvers: None,
            };
            serde_json::json!({
                "apiVersion": api::API_VERSION,
                "kind": "FqdnPolicy",
                "metadata": {"name": name, "namespace": w.namespace,
                             "labels": {"app.kubernetes.io/managed-by": "septa"}},
                "spec": spec,
            })
        });
        out.push(Proposal {
            workload: w.clone(),
            policy,
            fqdn,
            rules,
            state,
            tuples: ingress.len() + egress.len(),
            connections: total.connections,
            warnings: p_warn,
        });
    }
    (out, warnings)
}

/// Whether a tuple is a lookup at the cluster resolver on port 53 (covered by the DNS rule).
fn is_cluster_dns(t: &Tuple, opts: &Options, workloads: &BTreeMap<WorkloadRef, &Pod>) -> bool {
    match &t.dst {
        Party::Workload(d) => t.port == 53 && is_resolver(d, opts, workloads),
        Party::External(_) => false,
    }
}

/// Whether `w` is the cluster resolver the DNS rule points at.
fn is_resolver(w: &WorkloadRef, opts: &Options, workloads: &BTreeMap<WorkloadRef, &Pod>) -> bool {
    let Some(dns) = &opts.dns else { return false };
    w.namespace == dns.namespace
        && workloads
            .get(w)
            .is_some_and(|p| dns.labels.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
}

/// `septa-<kind>-<name>`, within the 253 characters a name may have.
pub fn policy_name(w: &WorkloadRef) -> String {
    let mut n = format!("septa-{}-{}", w.kind.to_ascii_lowercase(), w.name);
    n.truncate(253);
    n
}

/// The labels every pod of `w` carries, without volatile ones; `None` if nothing is left.
fn selector_labels(
    w: &WorkloadRef,
    pods: &[Pod],
    opts: &Options,
) -> Option<BTreeMap<String, String>> {
    let mut common: Option<BTreeMap<String, String>> = None;
    for p in pods.iter().filter(|p| &p.workload == w && !p.host_network) {
        let l: BTreeMap<String, String> = p
            .labels
            .iter()
            .filter(|(k, _)| !opts.volatile_labels.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        common = Some(match common {
            None => l,
            Some(c) => c.into_iter().filter(|(k, v)| l.get(k) == Some(v)).collect(),
        });
    }
    common.filter(|c| !c.is_empty())
}

fn match_labels(l: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(l),
        match_expressions: None,
    }
}

fn fmt_labels(l: &BTreeMap<String, String>) -> String {
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn np_port(proto: Protocol, first: u16, last: u16, name: Option<&str>) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some(proto.to_string()),
        port: Some(match name {
            Some(n) => IntOrString::String(n.to_owned()),
            None => IntOrString::Int(first as i32),
        }),
        end_port: (last > first && name.is_none()).then_some(last as i32),
    }
}

/// Consecutive numbers → ranges; names stay single.
fn merge_ports(ports: &PortsUsed) -> Vec<PortKey> {
    let mut out: Vec<PortKey> = Vec::new();
    for (proto, n, name) in ports {
        if name.is_none() {
            if let Some(last) = out.last_mut() {
                if last.0 == *proto && last.3.is_none() && last.2.checked_add(1) == Some(*n) {
                    last.2 = *n;
                    continue;
                }
            }
        }
        out.push((*proto, *n, *n, name.clone()));
    }
    out
}

/// Rules of one direction for workload `w`: peers from `peer_of`, grouped by identical port
/// sets. Appends the rules' descriptions and evidence to `descr`.
#[allow(clippy::too_many_arguments)]
fn build_rules<R: MakeRule>(
    tuples: &[(&Tuple, &Evidence)],
    peer_of: impl Fn(&Tuple) -> &Party,
    w: &WorkloadRef,
    rep: &Pod,
    ingress: bool,
    opts: &Options,
    descr: &mut Vec<RuleEvidence>,
    all_pods: &[Pod],
    workloads: &BTreeMap<WorkloadRef, &Pod>,
    warnings: &mut Vec<String>,
) -> Vec<R> {
    // peer → ports, and the evidence of each (peer, port).
    let mut by_peer: BTreeMap<PeerKey, PortsUsed> = BTreeMap::new();
    let mut ev: BTreeMap<(PeerKey, Protocol, u16), Evidence> = BTreeMap::new();
    let mut external: BTreeMap<IpAddr, BTreeSet<(Protocol, u16)>> = BTreeMap::new();
    for (t, e) in tuples {
        let name = if ingress {
            rep.named_ports
                .iter()
                .find(|(_, (p, n))| *p == t.proto && *n == t.port)
                .map(|(name, _)| name.clone())
        } else {
            None
        };
        match peer_of(t) {
            Party::Workload(pw) => {
                by_peer
                    .entry(PeerKey::Workload(pw.clone()))
                    .or_default()
                    .insert((t.proto, t.port, name));
                ev.entry((PeerKey::Workload(pw.clone()), t.proto, t.port))
                    .or_default()
                    .merge(e);
            }
            Party::External(ip) => {
                external.entry(*ip).or_default().insert((t.proto, t.port));
                if e.names.is_empty() && !ingress {
                    warnings.push(format!(
                        "egress to {ip} has no DNS name; it is allowed by address"
                    ));
                }
            }
        }
    }
    // External addresses: grouped by identical ports, aggregated per group.
    let mut groups: BTreeMap<BTreeSet<(Protocol, u16)>, Vec<IpAddr>> = BTreeMap::new();
    for (ip, ports) in &external {
        groups.entry(ports.clone()).or_default().push(*ip);
    }
    for (ports, ips) in groups {
        for net in aggregate(&ips, opts) {
            let key = PeerKey::Cidr(net);
            for (proto, port) in &ports {
                by_peer
                    .entry(key.clone())
                    .or_default()
                    .insert((*proto, *port, None));
                let e = ev.entry((key.clone(), *proto, *port)).or_default();
                for (t, te) in tuples {
                    if let Party::External(ip) = peer_of(t) {
                        if net.contains(*ip) && t.proto == *proto && t.port == *port {
                            e.merge(te);
                        }
                    }
                }
            }
        }
    }
    // Peers with the same port set share a rule.
    let mut rules: BTreeMap<PortsUsed, Vec<PeerKey>> = BTreeMap::new();
    for (peer, ports) in by_peer {
        rules.entry(ports).or_default().push(peer);
    }
    let mut ordered: Vec<(Vec<PeerKey>, PortsUsed)> = rules
        .into_iter()
        .map(|(ports, peers)| (peers, ports))
        .collect();
    ordered.sort();
    let direction = if ingress { "ingress" } else { "egress" };
    let mut out = Vec::new();
    for (index, (peers, ports)) in ordered.into_iter().enumerate() {
        let np_peers: Vec<NetworkPolicyPeer> = peers
            .iter()
            .map(|p| peer_of_key(p, w, all_pods, workloads, opts))
            .collect();
        let merged = merge_ports(&ports);
        let np_ports: Vec<NetworkPolicyPort> = merged
            .iter()
            .map(|(proto, a, b, name)| np_port(*proto, *a, *b, name.as_deref()))
            .collect();
        let mut e = Evidence::default();
        for p in &peers {
            for (proto, port, _) in &ports {
                if let Some(x) = ev.get(&(p.clone(), *proto, *port)) {
                    e.merge(x);
                }
            }
        }
        let replicas = if ingress {
            e.dst_pods.len()
        } else {
            e.src_pods.len()
        };
        descr.push(RuleEvidence {
            direction,
            index,
            peers: peers.iter().map(|p| describe_peer(p, w)).collect(),
            ports: merged
                .iter()
                .map(|(proto, a, b, name)| match name {
                    Some(n) => format!("{proto} {n} ({a})"),
                    None if a == b => format!("{proto} {a}"),
                    None => format!("{proto} {a}-{b}"),
                })
                .collect(),
            evidence: Some(e),
            replicas,
        });
        out.push(R::make(np_peers, np_ports));
    }
    out
}

/// So one builder makes ingress and egress rules.
trait MakeRule {
    fn make(peers: Vec<NetworkPolicyPeer>, ports: Vec<NetworkPolicyPort>) -> Self;
}

impl MakeRule for NetworkPolicyIngressRule {
    fn make(from: Vec<NetworkPolicyPeer>, ports: Vec<NetworkPolicyPort>) -> Self {
        NetworkPolicyIngressRule {
            from: Some(from),
            ports: Some(ports),
        }
    }
}

impl MakeRule for NetworkPolicyEgressRule {
    fn make(to: Vec<NetworkPolicyPeer>, ports: Vec<NetworkPolicyPort>) -> Self {
        NetworkPolicyEgressRule {
            to: Some(to),
            ports: Some(ports),
        }
    }
}

fn describe_peer(p: &PeerKey, w: &WorkloadRef) -> String {
    match p {
        PeerKey::Workload(o) if o.namespace == w.namespace => format!("{}[{}]", o.name, o.kind),
        PeerKey::Workload(o) => o.to_string(),
        PeerKey::Cidr(n) => n.to_string(),
    }
}

fn peer_of_key(
    p: &PeerKey,
    w: &WorkloadRef,
    all_pods: &[Pod],
    workloads: &BTreeMap<WorkloadRef, &Pod>,
    opts: &Options,
) -> NetworkPolicyPeer {
    match p {
        PeerKey::Workload(o) => {
            let labels = selector_labels(o, all_pods, opts)
                .or_else(|| workloads.get(o).map(|pod| pod.labels.clone()))
                .unwrap_or_default();
            NetworkPolicyPeer {
                namespace_selector: (o.namespace != w.namespace).then(|| {
                    match_labels(BTreeMap::from([(
                        NAMESPACE_NAME_LABEL.to_owned(),
                        o.namespace.clone(),
                    )]))
                }),
                pod_selector: Some(match_labels(labels)),
                ip_block: None,
            }
        }
        PeerKey::Cidr(n) => NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: n.to_string(),
                except: None,
            }),
            ..NetworkPolicyPeer::default()
        },
    }
}

/// Addresses → CIDRs: exact sibling merges, and widening to `/max_prefix` blocks with at
/// least `widen_min` addresses seen.
pub fn aggregate(ips: &[IpAddr], opts: &Options) -> Vec<IpNetwork> {
    let mut set: BTreeSet<IpNetwork> = BTreeSet::new();
    // Widening first: blocks with enough addresses.
    let mut blocks: BTreeMap<IpNetwork, Vec<IpAddr>> = BTreeMap::new();
    for ip in ips {
        let bound = if ip.is_ipv4() {
            opts.max_prefix_v4
        } else {
            opts.max_prefix_v6
        };
        let block = IpNetwork::new(*ip, bound)
            .ok()
            .and_then(|n| IpNetwork::new(n.network(), bound).ok());
        if let Some(b) = block {
            blocks.entry(b).or_default().push(*ip);
        }
    }
    for (block, members) in blocks {
        if opts.widen_min > 0 && members.len() >= opts.widen_min {
            set.insert(block);
        } else {
            set.extend(members.iter().map(|ip| IpNetwork::from(*ip)));
        }
    }
    // Exact merges: two halves of a prefix (not wider than the bound) become the prefix.
    loop {
        let mut merged = false;
        let v: Vec<IpNetwork> = set.iter().copied().collect();
        for n in v {
            let bound = if n.is_ipv4() {
                opts.max_prefix_v4
            } else {
                opts.max_prefix_v6
            };
            if n.prefix() == 0 || n.prefix() <= bound || !set.contains(&n) {
                continue;
            }
            let Ok(parent) = IpNetwork::new(n.network(), n.prefix() - 1) else {
                continue;
            };
            let Ok(parent) = IpNetwork::new(parent.network(), parent.prefix()) else {
                continue;
            };
            let halves: Vec<IpNetwork> = set
                .iter()
                .filter(|m| m.prefix() == n.prefix() && parent.contains(m.network()))
                .copied()
                .collect();
            if halves.len() == 2 {
                for h in halves {
                    set.remove(&h);
                }
                set.insert(parent);
                merged = true;
            }
        }
        if !merged {
            break;
        }
    }
    // A block that contains others makes them redundant.
    let all: Vec<IpNetwork> = set.iter().copied().collect();
    set.retain(|n| {
        !all.iter()
            .any(|o| o != n && o.prefix() < n.prefix() && o.contains(n.network()))
    });
    set.into_iter().collect()
}

/// Names with their ports, grouped by identical port sets.
fn fqdn_rules(named: &[&(&Tuple, &Evidence)]) -> NameGroups {
    let mut by_name: BTreeMap<String, BTreeSet<(Protocol, u16)>> = BTreeMap::new();
    for (t, e) in named {
        for n in &e.names {
            by_name
                .entry(n.clone())
                .or_default()
                .insert((t.proto, t.port));
        }
    }
    let mut groups: BTreeMap<BTreeSet<(Protocol, u16)>, BTreeSet<String>> = BTreeMap::new();
    for (n, ports) in by_name {
        groups.entry(ports).or_default().insert(n);
    }
    groups.into_iter().collect()
}

fn evidence_json(rules: &[RuleEvidence]) -> String {
    let mut m: BTreeMap<&str, Vec<serde_json::Value>> = BTreeMap::new();
    for r in rules {
        let v = match &r.evidence {
            None => serde_json::json!({"added": "always allowed (cluster DNS)"}),
            Some(e) if r.peers.iter().any(|p| p.starts_with("DNS")) => serde_json::json!({
                "added": "always allowed (cluster DNS)",
                "connections": e.connections,
                "replicas": r.replicas,
            }),
            Some(e) => serde_json::json!({
                "connections": e.connections,
                "bytes": e.bytes,
                "first": e.first.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                "last": e.last.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                "replicas": r.replicas,
            }),
        };
        m.entry(r.direction).or_default().push(v);
    }
    serde_json::to_string(&m).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn nets(v: &[IpNetwork]) -> Vec<String> {
        v.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn aggregation_merges_siblings_exactly_and_widens_only_within_the_bound() {
        let o = Options::default();
        // Siblings merge (exact); a lone address stays /32.
        assert_eq!(
            nets(&aggregate(
                &ips(&["192.0.2.4", "192.0.2.5", "192.0.2.6", "192.0.2.9"]),
                &Options {
                    widen_min: 0,
                    ..o.clone()
                }
            )),
            ["192.0.2.4/31", "192.0.2.6/32", "192.0.2.9/32"]
        );
        // All four of a /30: one /30.
        assert_eq!(
            nets(&aggregate(
                &ips(&["192.0.2.4", "192.0.2.5", "192.0.2.6", "192.0.2.7"]),
                &Options {
                    widen_min: 0,
                    ..o.clone()
                }
            )),
            ["192.0.2.4/30"]
        );
        // Widening: 4 addresses of one /24 become the /24; 3 in another stay.
        assert_eq!(
            nets(&aggregate(
                &ips(&[
                    "198.51.100.1",
                    "198.51.100.50",
                    "198.51.100.99",
                    "198.51.100.200",
                    "203.0.113.1",
                    "203.0.113.9",
                    "203.0.113.77"
                ]),
                &o
            )),
            [
                "198.51.100.0/24",
                "203.0.113.1/32",
                "203.0.113.9/32",
                "203.0.113.77/32"
            ]
        );
        // Never wider than the bound, even when everything in two /24s was seen.
        let all: Vec<IpAddr> = (0..=255u8)
            .flat_map(|b| [format!("10.1.0.{b}"), format!("10.1.1.{b}")])
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(
            nets(&aggregate(
                &all,
                &Options {
                    widen_min: 0,
                    ..o.clone()
                }
            )),
            ["10.1.0.0/24", "10.1.1.0/24"]
        );
        // IPv6 to /64 at most.
        assert_eq!(
            nets(&aggregate(
                &ips(&["2001:db8::1", "2001:db8::2", "2001:db8::3", "2001:db8::4"]),
                &o
            )),
            ["2001:db8::/64"]
        );
    }

    #[test]
    fn consecutive_ports_merge_into_ranges_names_stay_single() {
        let ports: PortsUsed = [
            (Protocol::Tcp, 8080, None),
            (Protocol::Tcp, 8081, None),
            (Protocol::Tcp, 8082, None),
            (Protocol::Tcp, 9090, None),
            (Protocol::Tcp, 9091, Some("metrics".into())),
            (Protocol::Udp, 8083, None),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            merge_ports(&ports),
            vec![
                (Protocol::Tcp, 8080, 8082, None),
                (Protocol::Tcp, 9090, 9090, None),
                (Protocol::Tcp, 9091, 9091, Some("metrics".into())),
                (Protocol::Udp, 8083, 8083, None),
            ]
        );
        let p = np_port(Protocol::Tcp, 8080, 8082, None);
        assert_eq!(p.end_port, Some(8082));
        assert_eq!(
            policy_name(&WorkloadRef {
                namespace: "a".into(),
                name: "web".into(),
                kind: "StatefulSet".into()
            }),
            "septa-statefulset-web"
        );
    }
}
