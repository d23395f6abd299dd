//! The normalised model the evaluator and the compiler work on.
//!
//! Conversion from Kubernetes types validates everything once (selectors, CIDRs, ports), so
//! the rest of the engine never sees an invalid policy.

use std::{collections::BTreeMap, fmt, net::IpAddr};

use ipnetwork::IpNetwork;
use k8s_openapi::{
    api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    apimachinery::pkg::util::intstr::IntOrString,
};

pub use crate::selector::Labels;
use crate::{error::FieldError, selector::Selector};

/// Annotation that puts a policy in audit mode: its denials are recorded, not enforced.
pub const AUDIT_ANNOTATION: &str = "septa.dev/mode";
/// The value of [`AUDIT_ANNOTATION`] that means audit.
pub const AUDIT_VALUE: &str = "audit";
/// Label every namespace carries (Kubernetes sets it; the loader adds it when absent).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// L4 protocols NetworkPolicy can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.number() == n)
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// The owner a pod is reported under (`namespace/name[Kind]`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadRef {
    pub namespace: String,
    pub name: String,
    /// Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob, or Pod.
    pub kind: String,
}

impl fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}[{}]", self.namespace, self.name, self.kind)
    }
}

/// A pod, or the representative pod of a workload's template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub workload: WorkloadRef,
    pub labels: Labels,
    /// Named container ports: name → (protocol, port).
    pub named_ports: BTreeMap<String, (Protocol, u16)>,
    /// Known addresses (status.podIPs, or given by the standalone source).
    pub ips: Vec<IpAddr>,
    /// hostNetwork pods are not endpoints: septa treats them as the node (see README).
    pub host_network: bool,
}

impl Pod {
    /// The pod's address of the family of `like` (v4 or v6).
    pub fn ip_of_family(&self, v6: bool) -> Option<IpAddr> {
        self.ips.iter().copied().find(|ip| ip.is_ipv6() == v6)
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A namespace and its labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

/// Which namespaces a pod peer may be in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NamespaceScope {
    /// The policy's own namespace (no namespaceSelector).
    Own,
    /// Namespaces whose labels match.
    Selected(Selector),
}

/// An ipBlock.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpBlock {
    pub cidr: IpNetwork,
    pub except: Vec<IpNetwork>,
}

impl IpBlock {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(ip) && !self.except.iter().any(|e| e.contains(ip))
    }
}

/// One entry of `from` / `to`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    Pods {
        namespaces: NamespaceScope,
        pods: Selector,
    },
    Block(IpBlock),
}

/// Which ports of a protocol.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortSel {
    All,
    /// Inclusive range (one port when equal).
    Range(u16, u16),
    /// A container port name, resolved against the destination pod.
    Named(String),
}

/// One entry of `ports`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    pub protocol: Protocol,
    pub port: PortSel,
}

/// One ingress or egress rule. `None` means "all" (field absent or empty).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub peers: Option<Vec<Peer>>,
    pub ports: Option<Vec<PortSpec>>,
}

/// Rule direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    /// The data path's direction number.
    pub fn number(self) -> u8 {
        match self {
            Direction::Ingress => dataplane_common::direction::INGRESS,
            Direction::Egress => dataplane_common::direction::EGRESS,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// A NetworkPolicy, validated. `ingress`/`egress` is `None` when the policy does not apply
/// to that direction (after policyTypes defaulting); `Some(vec![])` isolates with no allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub audit: bool,
    pub pod_selector: Selector,
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

impl Policy {
    pub fn rules(&self, dir: Direction) -> Option<&Vec<Rule>> {
        match dir {
            Direction::Ingress => self.ingress.as_ref(),
            Direction::Egress => self.egress.as_ref(),
        }
    }

    /// Whether the policy selects `pod` (same namespace, selector matches).
    pub fn selects(&self, pod: &Pod) -> bool {
        self.namespace == pod.namespace && self.pod_selector.matches(&pod.labels)
    }

    /// Convert and validate a Kubernetes NetworkPolicy.
    pub fn from_k8s(np: &NetworkPolicy, namespace: &str) -> Result<Self, FieldError> {
        let name = np.metadata.name.clone().unwrap_or_default();
        let spec = np
            .spec
            .as_ref()
            .ok_or_else(|| FieldError::new("spec", "missing"))?;
        let audit = np
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(AUDIT_ANNOTATION))
            .is_some_and(|v| v == AUDIT_VALUE);
        let pod_selector = Selector::from_k8s(
            spec.pod_selector.as_ref().unwrap_or(&Default::default()),
            "spec.podSelector",
        )?;
        let (mut has_in, mut has_eg) = (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty()));
        if let Some(types) = &spec.policy_types {
            has_in = false;
            has_eg = false;
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => has_in = true,
                    "Egress" => has_eg = true,
                    other => {
                        return Err(FieldError::new(
                            format!("spec.policyTypes[{i}]"),
                            format!("unknown policy type {other:?} (expected Ingress or Egress)"),
                        ))
                    }
                }
            }
        }
        let ingress_rules = spec
            .ingress
            .iter()
            .flatten()
            .map(|r| (r.from.as_deref(), r.ports.as_deref()));
        let egress_rules = spec
            .egress
            .iter()
            .flatten()
            .map(|r| (r.to.as_deref(), r.ports.as_deref()));
        let ingress = has_in
            .then(|| convert_rules(ingress_rules, "spec.ingress", "from"))
            .transpose()?;
        let egress = has_eg
            .then(|| convert_rules(egress_rules, "spec.egress", "to"))
            .transpose()?;
        Ok(Policy {
            namespace: namespace.to_owned(),
            name,
            audit,
            pod_selector,
            ingress,
            egress,
        })
    }
}

/// Convert the rules of one direction; `peers_field` is `from` or `to`.
fn convert_rules<'a>(
    rules: impl Iterator<
        Item = (
            Option<&'a [NetworkPolicyPeer]>,
            Option<&'a [NetworkPolicyPort]>,
        ),
    >,
    field: &str,
    peers_field: &str,
) -> Result<Vec<Rule>, FieldError> {
    rules
        .enumerate()
        .map(|(i, (p, ports_list))| {
            let f = format!("{field}[{i}]");
            Ok(Rule {
                peers: peers(p, &format!("{f}.{peers_field}"))?,
                ports: ports(ports_list, &format!("{f}.ports"))?,
            })
        })
        .collect()
}

fn peers(list: Option<&[NetworkPolicyPeer]>, field: &str) -> Result<Option<Vec<Peer>>, FieldError> {
    let Some(list) = list.filter(|l| !l.is_empty()) else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        if let Some(b) = &p.ip_block {
            if p.pod_selector.is_some() || p.namespace_selector.is_some() {
                return Err(FieldError::new(
                    f,
                    "ipBlock cannot be combined with podSelector or namespaceSelector",
                ));
            }
            out.push(Peer::Block(ip_block(
                &b.cidr,
                b.except.as_deref(),
                &format!("{f}.ipBlock"),
            )?));
            continue;
        }
        let namespaces = match &p.namespace_selector {
            Some(s) => {
                NamespaceScope::Selected(Selector::from_k8s(s, &format!("{f}.namespaceSelector"))?)
            }
            None => NamespaceScope::Own,
        };
        let pods = match &p.pod_selector {
            Some(s) => Selector::from_k8s(s, &format!("{f}.podSelector"))?,
            None if p.namespace_selector.is_some() => Selector::everything(),
            None => {
                return Err(FieldError::new(
                    f,
                    "a peer needs podSelector, namespaceSelector or ipBlock",
                ))
            }
        };
        out.push(Peer::Pods { namespaces, pods });
    }
    Ok(Some(out))
}

fn ip_block(cidr: &str, except: Option<&[String]>, field: &str) -> Result<IpBlock, FieldError> {
    let parse = |s: &str, f: &str| -> Result<IpNetwork, FieldError> {
        let n: IpNetwork = s
            .parse()
            .map_err(|e| FieldError::new(f, format!("invalid CIDR {s:?}: {e}")))?;
        if n.network() != n.ip() {
            return Err(FieldError::new(
                f,
                format!(
                    "{s:?} has host bits set (did you mean {}/{}?)",
                    n.network(),
                    n.prefix()
                ),
            ));
        }
        Ok(n)
    };
    let cidr = parse(cidr, &format!("{field}.cidr"))?;
    let mut ex = Vec::new();
    for (i, e) in except.into_iter().flatten().enumerate() {
        let f = format!("{field}.except[{i}]");
        let n = parse(e, &f)?;
        if n.is_ipv4() != cidr.is_ipv4()
            || n.prefix() <= cidr.prefix()
            || !cidr.contains(n.network())
        {
            return Err(FieldError::new(
                f,
                format!("{e} is not strictly inside {cidr}"),
            ));
        }
        ex.push(n);
    }
    ex.sort();
    ex.dedup();
    Ok(IpBlock { cidr, except: ex })
}

fn ports(
    list: Option<&[NetworkPolicyPort]>,
    field: &str,
) -> Result<Option<Vec<PortSpec>>, FieldError> {
    let Some(list) = list.filter(|l| !l.is_empty()) else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let proto_s = p.protocol.as_deref().unwrap_or("TCP");
        let protocol = Protocol::parse(proto_s).ok_or_else(|| {
            FieldError::new(
                format!("{f}.protocol"),
                format!("unknown protocol {proto_s:?} (expected TCP, UDP or SCTP)"),
            )
        })?;
        let port = match (&p.port, p.end_port) {
            (None, None) => PortSel::All,
            (None, Some(_)) => {
                return Err(FieldError::new(
                    format!("{f}.endPort"),
                    "endPort needs port",
                ))
            }
            (Some(IntOrString::String(name)), end) => {
                if end.is_some() {
                    return Err(FieldError::new(
                        format!("{f}.endPort"),
                        "endPort cannot be used with a named port",
                    ));
                }
                if name.is_empty() || name.len() > 15 {
                    return Err(FieldError::new(
                        format!("{f}.port"),
                        format!("invalid port name {name:?}"),
                    ));
                }
                // A numeric string is a number in disguise; Kubernetes rejects it too.
                if name.parse::<i64>().is_ok() {
                    return Err(FieldError::new(
                        format!("{f}.port"),
                        format!("port name {name:?} is a number; write it without quotes"),
                    ));
                }
                PortSel::Named(name.clone())
            }
            (Some(IntOrString::Int(n)), end) => {
                let start = port_number(*n as i64, &format!("{f}.port"))?;
                let end = match end {
                    None => start,
                    Some(e) => {
                        let e = port_number(e as i64, &format!("{f}.endPort"))?;
                        if e < start {
                            return Err(FieldError::new(
                                format!("{f}.endPort"),
                                format!("endPort {e} is below port {start}"),
                            ));
                        }
                        e
                    }
                };
                PortSel::Range(start, end)
            }
        };
        out.push(PortSpec { protocol, port });
    }
    Ok(Some(out))
}

fn port_number(n: i64, field: &str) -> Result<u16, FieldError> {
    if !(1..=65535).contains(&n) {
        return Err(FieldError::new(
            field,
            format!("port {n} is outside 1-65535"),
        ));
    }
    Ok(n as u16)
}

/// A Service's target port: a number, or a container port name resolved per pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    Named(String),
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: Option<String>,
    pub protocol: Protocol,
    pub port: u16,
    pub target: TargetPort,
    /// The port kube-proxy opens on every node's addresses for it (NodePort and
    /// LoadBalancer Services).
    pub node_port: Option<u16>,
}

/// One backend of a Service, as its EndpointSlices name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub ip: IpAddr,
    /// The backend's ports: (EndpointSlice port name, protocol, port number). A Service port
    /// reaches the backend on the port of the same name (unnamed: `None`).
    pub ports: Vec<(Option<String>, Protocol, u16)>,
    /// Ready, or serving while terminating: kube-proxy sends new connections to it.
    pub ready: bool,
}

/// A Service: which pods it fronts and how its ports map to theirs (used to turn flows to a
/// Service into rules on the pods' target ports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// Pod selector (empty: a Service without selector, fronting no pods here).
    pub selector: Labels,
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// `spec.externalIPs` and the load balancer's `status.loadBalancer.ingress[].ip`: kube-proxy
    /// DNATs these too.
    pub external_ips: Vec<IpAddr>,
    /// The backends from the Service's EndpointSlices (Kubernetes mode); `None` when only the
    /// selector is known (manifest files): then its backends are the pods it selects.
    pub backends: Option<Vec<Backend>>,
}

impl Service {
    /// The pod port a Service port reaches on `pod` (named targets resolve per pod).
    pub fn target_on(&self, port: &ServicePort, pod: &Pod) -> Option<u16> {
        match &port.target {
            TargetPort::Number(n) => Some(*n),
            TargetPort::Named(name) => pod
                .named_ports
                .get(name)
                .filter(|(p, _)| *p == port.protocol)
                .map(|(_, n)| *n),
        }
    }

    /// The addresses kube-proxy DNATs for this Service: its ClusterIPs, then its external IPs.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.cluster_ips
            .iter()
            .chain(self.external_ips.iter())
            .copied()
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether the Service fronts `pod`.
    pub fn selects(&self, pod: &Pod) -> bool {
        !self.selector.is_empty()
            && self.namespace == pod.namespace
            && self
                .selector
                .iter()
                .all(|(k, v)| pod.labels.get(k) == Some(v))
    }
}

/// The whole input: namespaces, pods (or workload templates), services and policies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cluster {
    pub namespaces: BTreeMap<String, Namespace>,
    pub pods: Vec<Pod>,
    pub services: Vec<Service>,
    pub policies: Vec<Policy>,
    /// Objects of septa's own API group (`septa.dev/...`), validated by the part that owns
    /// their kind (threat feeds, DNS policies), in load order.
    pub custom: Vec<CustomObject>,
    /// FqdnPolicies, validated (see [`crate::septa::validate`]).
    pub fqdn_policies: Vec<crate::septa::fqdn::FqdnSpec>,
    /// ThreatFeeds, validated: their addresses are fetched at run time, so they are named,
    /// not evaluated.
    pub threat_feeds: Vec<crate::septa::feed::FeedSpec>,
    /// The resolvers FqdnPolicies without `spec.resolvers` trust (the agent's
    /// `--dns-resolver`); `None` when not known here (analysis off the node).
    pub dns_resolvers: Option<Vec<IpAddr>>,
    /// ClusterNetworkPolicies, validated, in evaluation order
    /// ([`crate::cnp::ClusterPolicy::order_key`]).
    pub cluster_policies: Vec<crate::cnp::ClusterPolicy>,
    /// Nodes (their addresses are what `nodes` peers of ClusterNetworkPolicies match).
    pub nodes: Vec<crate::cnp::NodeInfo>,
}

/// An object of septa's API group, as loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomObject {
    /// Where it was read (`file#document`).
    pub at: String,
    pub kind: String,
    pub value: serde_json::Value,
}

impl Cluster {
    /// Labels of a namespace; a namespace that was never declared has only its name label.
    pub fn namespace_labels(&self, ns: &str) -> std::borrow::Cow<'_, Labels> {
        match self.namespaces.get(ns) {
            Some(n) => std::borrow::Cow::Borrowed(&n.labels),
            None => std::borrow::Cow::Owned(Labels::from([(
                NAMESPACE_NAME_LABEL.to_owned(),
                ns.to_owned(),
            )])),
        }
    }

    /// Every policy the data path enforces as a NetworkPolicy: the NetworkPolicies, and the
    /// isolation (with DNS to the trusted resolvers) of each FqdnPolicy. Resolvers not known
    /// here count as none; [`crate::connlist`] shows them as a peer of their own.
    pub fn enforced_policies(&self) -> impl Iterator<Item = std::borrow::Cow<'_, Policy>> {
        let default = self.dns_resolvers.as_deref().unwrap_or_default();
        self.policies.iter().map(std::borrow::Cow::Borrowed).chain(
            self.fqdn_policies
                .iter()
                .map(move |f| std::borrow::Cow::Owned(f.isolation_policy(default))),
        )
    }

    /// Pods that are endpoints (not hostNetwork).
    pub fn endpoints(&self) -> impl Iterator<Item = &Pod> {
        self.pods.iter().filter(|p| !p.host_network)
    }

    /// Whether a pod-selecting peer of a policy in `policy_ns` matches pod `q`.
    pub fn peer_matches_pod(&self, peer: &Peer, policy_ns: &str, q: &Pod, v6: bool) -> bool {
        match peer {
            Peer::Pods { namespaces, pods } => {
                let ns_ok = match namespaces {
                    NamespaceScope::Own => q.namespace == policy_ns,
                    NamespaceScope::Selected(s) => s.matches(&self.namespace_labels(&q.namespace)),
                };
                ns_ok && pods.matches(&q.labels)
            }
            Peer::Block(b) => q.ip_of_family(v6).is_some_and(|ip| b.contains(ip)),
        }
    }
}
