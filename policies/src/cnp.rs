//! ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`, typed in
//! [`api::cluster_network_policy`]), validated once into the model the evaluator uses.
//!
//! Validation follows the upstream CRD's markers and CEL rules: priority 0-1000, at most 25
//! rules per direction, 1-25 peers per rule, 1-25 protocols when present, exactly one field in
//! a subject, peer, protocol and port, ports 1-65535, a range's start below its end, CIDRs
//! without host bits, domain names in upstream's pattern and only in Accept rules, and no named
//! port beside a networks, nodes or domainNames peer. Every problem names its field path.
//!
//! Fail closed, as upstream asks of a peer the implementation cannot understand (a newer API
//! than this one): an Accept rule treats such a peer as matching nothing, and a Deny or Pass
//! rule with one becomes a Deny of everything. A peer of a type this version does not know for
//! its direction (`networks`, `nodes` or `domainNames` under `ingress.from`) is such a peer,
//! with a warning; any other unknown field stays an error (a misspelling), unless the caller
//! reads from an API server whose CRD may be newer ([`UnknownPeers::FailClosed`]).

use std::{collections::BTreeSet, net::IpAddr};

use api::cluster_network_policy::{
    self as wire, Action, ClusterNetworkPolicySpec, NamespacedPod, Tier, MAX_ITEMS, MAX_PRIORITY,
    MAX_RULE_NAME, MIN_PRIORITY,
};
use ipnetwork::IpNetwork;
use serde_json::Value;

use crate::{
    model::{Direction, Pod, Protocol, AUDIT_ANNOTATION, AUDIT_VALUE},
    selector::{Labels, Selector},
};

/// A validated ClusterNetworkPolicy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterPolicy {
    pub name: String,
    pub tier: Tier,
    /// 0-1000; lower is checked first.
    pub priority: u16,
    /// `septa.dev/mode: audit`: its denials are recorded, not enforced.
    pub audit: bool,
    pub subject: PodSet,
    /// In order; empty: ingress is not affected.
    pub ingress: Vec<ClusterRule>,
    /// In order; empty: egress is not affected.
    pub egress: Vec<ClusterRule>,
}

impl ClusterPolicy {
    /// The rules of one direction, in order.
    pub fn rules(&self, dir: Direction) -> &[ClusterRule] {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// Whether the policy applies to `pod` (never a host-network pod).
    pub fn selects(&self, pod: &Pod, ns_labels: &Labels) -> bool {
        !pod.host_network && self.subject.matches(pod, ns_labels)
    }

    /// The order policies are checked in: tier, then priority, then name. Upstream leaves
    /// the order of equal priorities to the implementation; the name makes it deterministic
    /// and visible in `kubectl get`.
    pub fn order_key(&self) -> (Tier, u16, &str) {
        (self.tier, self.priority, &self.name)
    }
}

/// Pods by namespace labels and pod labels (a `namespaces` selector selects every pod).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodSet {
    pub namespaces: Selector,
    pub pods: Selector,
}

impl PodSet {
    /// Whether `pod` (in a namespace with `ns_labels`) is in the set.
    pub fn matches(&self, pod: &Pod, ns_labels: &Labels) -> bool {
        self.namespaces.matches(ns_labels) && self.pods.matches(&pod.labels)
    }
}

/// One rule, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterRule {
    /// Upstream's optional name (may be empty); flow records name it with the index.
    pub name: String,
    pub action: Action,
    /// Any one matching is enough. Never empty.
    pub peers: Vec<ClusterPeer>,
    /// `None`: every protocol and port.
    pub protocols: Option<Vec<ProtocolPort>>,
    /// The rule held a peer septa cannot evaluate and was turned into what upstream's fail
    /// closed asks for (see the module documentation).
    pub fail_closed: bool,
}

/// One peer of a rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClusterPeer {
    /// Pods (never host-network pods).
    Pods(PodSet),
    /// The addresses of the nodes whose labels match.
    Nodes(Selector),
    /// Any address in one of the CIDRs, pods included.
    Networks(Vec<IpNetwork>),
    /// Whatever these names resolve to, learned at run time from DNS answers: the reference
    /// evaluator matches no address with them (their addresses are not known here).
    DomainNames(Vec<String>),
    /// Everything: what a Deny or Pass rule with a peer septa cannot evaluate becomes.
    All,
}

/// One protocol match.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProtocolPort {
    /// An inclusive range of one protocol (one port when equal; 1-65535 when upstream gave
    /// no port).
    Range(Protocol, u16, u16),
    /// A container port name of the destination pod, any protocol.
    Named(String),
}

/// A node: its labels and addresses (`nodes` peers match these addresses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub labels: Labels,
    pub ips: Vec<IpAddr>,
}

/// What to do with a peer that has no field this version knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownPeers {
    /// An error naming the field (files: most likely a misspelling).
    Error,
    /// Fail closed with a warning (an API server whose CRD is newer than septa).
    FailClosed,
}

/// A field path and what is wrong there.
pub type FieldProblem = (String, String);

/// Validate one ClusterNetworkPolicy object. `Ok` carries the policy and warnings (peers
/// turned fail closed); `Err` every problem found.
pub fn validate(
    v: &Value,
    unknown: UnknownPeers,
) -> Result<(ClusterPolicy, Vec<FieldProblem>), Vec<FieldProblem>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let name = v
        .pointer("/metadata/name")
        .and_then(|n| n.as_str())
        .filter(|n| !n.is_empty())
        .map(str::to_owned);
    if name.is_none() {
        errors.push(("metadata.name".to_owned(), "missing".to_owned()));
    }
    let audit = v
        .pointer(&format!(
            "/metadata/annotations/{}",
            AUDIT_ANNOTATION.replace('/', "~1")
        ))
        .and_then(|a| a.as_str())
        == Some(AUDIT_VALUE);
    let Some(spec) = v.get("spec") else {
        errors.push(("spec".to_owned(), "missing".to_owned()));
        return Err(errors);
    };
    // Peers septa cannot evaluate are taken out before the strict decoding and put back as
    // fail-closed peers, by (direction, rule, peer index).
    let mut spec = spec.clone();
    let mut opaque: BTreeSet<(Direction, usize, usize)> = BTreeSet::new();
    for (dir, list, peers, known, other_dir) in [
        (
            Direction::Ingress,
            "ingress",
            "from",
            &["namespaces", "pods"][..],
            &["networks", "nodes", "domainNames"][..],
        ),
        (
            Direction::Egress,
            "egress",
            "to",
            &["namespaces", "pods", "nodes", "networks", "domainNames"][..],
            &[][..],
        ),
    ] {
        let Some(rules) = spec.get_mut(list).and_then(|r| r.as_array_mut()) else {
            continue;
        };
        for (ri, rule) in rules.iter_mut().enumerate() {
            let Some(ps) = rule.get_mut(peers).and_then(|p| p.as_array_mut()) else {
                continue;
            };
            let mut kept = Vec::new();
            for (pi, p) in ps.drain(..).enumerate() {
                let keys: Vec<String> = p
                    .as_object()
                    .map(|o| o.keys().cloned().collect())
                    .unwrap_or_default();
                let foreign = !keys.is_empty() && keys.iter().all(|k| !known.contains(&k.as_str()));
                let understood_elsewhere = keys.iter().all(|k| other_dir.contains(&k.as_str()));
                if foreign && (understood_elsewhere || unknown == UnknownPeers::FailClosed) {
                    opaque.insert((dir, ri, pi));
                    warnings.push((
                        format!("spec.{list}[{ri}].{peers}[{pi}]"),
                        format!(
                            "peer type {} is not one septa evaluates for {list}; failing closed \
                             (an Accept rule ignores this peer, a Deny or Pass rule denies all)",
                            keys.join(", ")
                        ),
                    ));
                    // A placeholder keeps the other peers' indexes in error messages.
                    kept.push(serde_json::json!({"namespaces": {}}));
                } else {
                    kept.push(p);
                }
            }
            *ps = kept;
        }
    }
    let raw: ClusterNetworkPolicySpec = match serde_path_to_error::deserialize(&spec) {
        Ok(r) => r,
        Err(e) => {
            let path = e.path().to_string();
            let field = if path == "." {
                "spec".to_owned()
            } else {
                format!("spec.{path}")
            };
            errors.push((field, e.into_inner().to_string()));
            return Err(errors);
        }
    };
    // serde takes a list for a struct (fields by position); the API server does not.
    let kept = serde_json::to_value(&raw).unwrap_or_default();
    if let Some(at) = list_for_object(&spec, &kept, "spec") {
        errors.push((at, "a list where an object is expected".to_owned()));
        return Err(errors);
    }
    if !(MIN_PRIORITY..=MAX_PRIORITY).contains(&raw.priority) {
        errors.push((
            "spec.priority".to_owned(),
            format!(
                "priority {} is outside {MIN_PRIORITY}-{MAX_PRIORITY}",
                raw.priority
            ),
        ));
    }
    let subject = match (&raw.subject.namespaces, &raw.subject.pods) {
        (Some(ns), None) => selector(ns, "spec.subject.namespaces", &mut errors).map(|ns| PodSet {
            namespaces: ns,
            pods: Selector::everything(),
        }),
        (None, Some(p)) => pod_set(p, "spec.subject.pods", &mut errors),
        (Some(_), Some(_)) => {
            errors.push((
                "spec.subject".to_owned(),
                "set exactly one of namespaces and pods, not both".to_owned(),
            ));
            None
        }
        (None, None) => {
            errors.push((
                "spec.subject".to_owned(),
                "set exactly one of namespaces and pods".to_owned(),
            ));
            None
        }
    };
    let ingress_in = raw.ingress.iter().map(|r| {
        let peers: Vec<PeerIn> = r.from.iter().map(PeerIn::Ingress).collect();
        (&r.name, r.action, peers, r.protocols.as_deref())
    });
    let egress_in = raw.egress.iter().map(|r| {
        let peers: Vec<PeerIn> = r.to.iter().map(PeerIn::Egress).collect();
        (&r.name, r.action, peers, r.protocols.as_deref())
    });
    let ingress = rules(
        Direction::Ingress,
        ingress_in,
        raw.ingress.len(),
        &opaque,
        &mut errors,
    );
    let egress = rules(
        Direction::Egress,
        egress_in,
        raw.egress.len(),
        &opaque,
        &mut errors,
    );
    match (name, subject) {
        (Some(name), Some(subject)) if errors.is_empty() => Ok((
            ClusterPolicy {
                name,
                tier: raw.tier,
                priority: raw.priority as u16,
                audit,
                subject,
                ingress,
                egress,
            },
            warnings,
        )),
        _ => Err(errors),
    }
}

/// The first place where `input` has a list and `kept` (the decoded value written back) an
/// object.
fn list_for_object(input: &Value, kept: &Value, at: &str) -> Option<String> {
    match (input, kept) {
        (Value::Array(_), Value::Object(_)) => Some(at.to_owned()),
        (Value::Object(i), Value::Object(k)) => i.iter().find_map(|(name, iv)| {
            k.get(name)
                .and_then(|kv| list_for_object(iv, kv, &format!("{at}.{name}")))
        }),
        (Value::Array(i), Value::Array(k)) => i
            .iter()
            .zip(k)
            .enumerate()
            .find_map(|(n, (iv, kv))| list_for_object(iv, kv, &format!("{at}[{n}]"))),
        _ => None,
    }
}

/// A peer as decoded, of either direction.
enum PeerIn<'a> {
    Ingress(&'a wire::IngressPeer),
    Egress(&'a wire::EgressPeer),
}

fn rules<'a>(
    dir: Direction,
    list: impl Iterator<
        Item = (
            &'a String,
            Action,
            Vec<PeerIn<'a>>,
            Option<&'a [wire::ProtocolMatch]>,
        ),
    >,
    len: usize,
    opaque: &BTreeSet<(Direction, usize, usize)>,
    errors: &mut Vec<FieldProblem>,
) -> Vec<ClusterRule> {
    let (field, peers_field) = match dir {
        Direction::Ingress => ("spec.ingress", "from"),
        Direction::Egress => ("spec.egress", "to"),
    };
    if len > MAX_ITEMS {
        errors.push((
            field.to_owned(),
            format!("{len} rules; at most {MAX_ITEMS} are allowed"),
        ));
    }
    let mut out = Vec::new();
    for (ri, (name, action, peers_in, protocols_in)) in list.enumerate() {
        let f = format!("{field}[{ri}]");
        if name.chars().count() > MAX_RULE_NAME {
            errors.push((
                format!("{f}.name"),
                format!("longer than {MAX_RULE_NAME} characters"),
            ));
        }
        let pf = format!("{f}.{peers_field}");
        if peers_in.is_empty() {
            errors.push((pf.clone(), "at least one peer is required".to_owned()));
        } else if peers_in.len() > MAX_ITEMS {
            errors.push((
                pf.clone(),
                format!("{} peers; at most {MAX_ITEMS} are allowed", peers_in.len()),
            ));
        }
        let mut peers = Vec::new();
        let mut fail_closed = false;
        let mut address_peer = false;
        for (pi, p) in peers_in.iter().enumerate() {
            if opaque.contains(&(dir, ri, pi)) {
                fail_closed = true;
                continue;
            }
            let f = format!("{pf}[{pi}]");
            if let Some(p) = peer(p, &f, action, errors) {
                address_peer |= matches!(
                    p,
                    ClusterPeer::Nodes(_) | ClusterPeer::Networks(_) | ClusterPeer::DomainNames(_)
                );
                peers.push(p);
            }
        }
        let protocols = protocols_in.map(|list| {
            let pf = format!("{f}.protocols");
            if list.is_empty() {
                errors.push((
                    pf.clone(),
                    "at least one protocol is required when present".to_owned(),
                ));
            } else if list.len() > MAX_ITEMS {
                errors.push((
                    pf.clone(),
                    format!("{} protocols; at most {MAX_ITEMS} are allowed", list.len()),
                ));
            }
            list.iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    let p = protocol(m, &format!("{pf}[{i}]"), errors)?;
                    if address_peer && matches!(p, ProtocolPort::Named(_)) {
                        errors.push((
                            format!("{pf}[{i}].destinationNamedPort"),
                            "a named port cannot be used with networks, nodes or domainNames \
                             peers (they have no named ports)"
                                .to_owned(),
                        ));
                    }
                    Some(p)
                })
                .collect::<Vec<_>>()
        });
        let rule = if fail_closed && action != Action::Accept {
            ClusterRule {
                name: name.clone(),
                action: Action::Deny,
                peers: vec![ClusterPeer::All],
                protocols: None,
                fail_closed: true,
            }
        } else {
            ClusterRule {
                name: name.clone(),
                action,
                peers,
                protocols,
                fail_closed,
            }
        };
        out.push(rule);
    }
    out
}

fn peer(
    p: &PeerIn,
    f: &str,
    action: Action,
    errors: &mut Vec<FieldProblem>,
) -> Option<ClusterPeer> {
    let (namespaces, pods, nodes, networks, domains) = match p {
        PeerIn::Ingress(p) => (p.namespaces.as_ref(), p.pods.as_ref(), None, None, None),
        PeerIn::Egress(p) => (
            p.namespaces.as_ref(),
            p.pods.as_ref(),
            p.nodes.as_ref(),
            p.networks.as_ref(),
            p.domain_names.as_ref(),
        ),
    };
    let set = [
        namespaces.is_some(),
        pods.is_some(),
        nodes.is_some(),
        networks.is_some(),
        domains.is_some(),
    ]
    .iter()
    .filter(|s| **s)
    .count();
    if set != 1 {
        let known = match p {
            PeerIn::Ingress(_) => "namespaces or pods",
            PeerIn::Egress(_) => "namespaces, pods, nodes, networks or domainNames",
        };
        errors.push((
            f.to_owned(),
            format!("set exactly one of {known} ({set} set)"),
        ));
        return None;
    }
    if let Some(ns) = namespaces {
        return selector(ns, &format!("{f}.namespaces"), errors).map(|ns| {
            ClusterPeer::Pods(PodSet {
                namespaces: ns,
                pods: Selector::everything(),
            })
        });
    }
    if let Some(p) = pods {
        return pod_set(p, &format!("{f}.pods"), errors).map(ClusterPeer::Pods);
    }
    if let Some(n) = nodes {
        return selector(n, &format!("{f}.nodes"), errors).map(ClusterPeer::Nodes);
    }
    if let Some(list) = networks {
        let nf = format!("{f}.networks");
        if !(1..=MAX_ITEMS).contains(&list.len()) {
            errors.push((
                nf.clone(),
                format!("1-{MAX_ITEMS} CIDRs ({} given)", list.len()),
            ));
        }
        let mut nets = Vec::new();
        for (i, s) in list.iter().enumerate() {
            match cidr(s) {
                Ok(n) => nets.push(n),
                Err(e) => errors.push((format!("{nf}[{i}]"), e)),
            }
        }
        nets.sort();
        nets.dedup();
        return Some(ClusterPeer::Networks(nets));
    }
    let list = domains?;
    let df = format!("{f}.domainNames");
    if action != Action::Accept {
        errors.push((
            df.clone(),
            format!("domainNames are only supported in Accept rules (this rule is {action:?})"),
        ));
    }
    if !(1..=MAX_ITEMS).contains(&list.len()) {
        errors.push((
            df.clone(),
            format!("1-{MAX_ITEMS} names ({} given)", list.len()),
        ));
    }
    let mut names = Vec::new();
    for (i, n) in list.iter().enumerate() {
        if domain_name_ok(n) {
            names.push(n.trim_end_matches('.').to_ascii_lowercase());
        } else {
            errors.push((
                format!("{df}[{i}]"),
                format!(
                    "{n:?} is not a domain name (at least two labels of letters, digits, '-' and \
                     '_', up to 63 bytes each and 253 in all, optionally starting with \"*.\")"
                ),
            ));
        }
    }
    names.sort();
    names.dedup();
    Some(ClusterPeer::DomainNames(names))
}

fn selector(
    s: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    f: &str,
    errors: &mut Vec<FieldProblem>,
) -> Option<Selector> {
    Selector::from_k8s(s, f)
        .map_err(|e| errors.push((e.field, e.message)))
        .ok()
}

fn pod_set(p: &NamespacedPod, f: &str, errors: &mut Vec<FieldProblem>) -> Option<PodSet> {
    let namespaces = selector(
        &p.namespace_selector,
        &format!("{f}.namespaceSelector"),
        errors,
    );
    let pods = selector(&p.pod_selector, &format!("{f}.podSelector"), errors);
    Some(PodSet {
        namespaces: namespaces?,
        pods: pods?,
    })
}

fn protocol(
    m: &wire::ProtocolMatch,
    f: &str,
    errors: &mut Vec<FieldProblem>,
) -> Option<ProtocolPort> {
    let set = [
        m.tcp.is_some(),
        m.udp.is_some(),
        m.sctp.is_some(),
        m.destination_named_port.is_some(),
    ]
    .iter()
    .filter(|s| **s)
    .count();
    if set != 1 {
        errors.push((
            f.to_owned(),
            format!("set exactly one of tcp, udp, sctp or destinationNamedPort ({set} set)"),
        ));
        return None;
    }
    if let Some(n) = &m.destination_named_port {
        // Container port names: 1-15 characters, and not a number.
        if n.is_empty() || n.len() > 15 || n.parse::<i64>().is_ok() {
            errors.push((
                format!("{f}.destinationNamedPort"),
                format!("{n:?} is not a container port name"),
            ));
            return None;
        }
        return Some(ProtocolPort::Named(n.clone()));
    }
    let (proto, key, pp) = [
        (Protocol::Tcp, "tcp", &m.tcp),
        (Protocol::Udp, "udp", &m.udp),
        (Protocol::Sctp, "sctp", &m.sctp),
    ]
    .into_iter()
    .find_map(|(p, k, v)| v.as_ref().map(|v| (p, k, v)))?;
    let f = format!("{f}.{key}");
    let Some(port) = &pp.destination_port else {
        errors.push((
            format!("{f}.destinationPort"),
            "missing (upstream requires it; leave out the protocol entry to match every port)"
                .to_owned(),
        ));
        return None;
    };
    let f = format!("{f}.destinationPort");
    match (port.number, &port.range) {
        (Some(n), None) => {
            let n = port_number(n, &format!("{f}.number"), errors)?;
            Some(ProtocolPort::Range(proto, n, n))
        }
        (None, Some(r)) => {
            let start = port_number(r.start, &format!("{f}.range.start"), errors);
            let end = port_number(r.end, &format!("{f}.range.end"), errors);
            let (start, end) = (start?, end?);
            if start >= end {
                errors.push((
                    format!("{f}.range"),
                    format!("start {start} must be less than end {end}"),
                ));
                return None;
            }
            Some(ProtocolPort::Range(proto, start, end))
        }
        _ => {
            errors.push((f, "set exactly one of number and range".to_owned()));
            None
        }
    }
}

fn port_number(n: i64, f: &str, errors: &mut Vec<FieldProblem>) -> Option<u16> {
    if (1..=65535).contains(&n) {
        Some(n as u16)
    } else {
        errors.push((f.to_owned(), format!("port {n} is outside 1-65535")));
        None
    }
}

fn cidr(s: &str) -> Result<IpNetwork, String> {
    let n: IpNetwork = s.parse().map_err(|e| format!("invalid CIDR {s:?}: {e}"))?;
    if !s.contains('/') {
        return Err(format!(
            "{s:?} is an address, not a CIDR (did you mean {s}/{}?)",
            n.prefix()
        ));
    }
    if n.network() != n.ip() {
        return Err(format!(
            "{s:?} has host bits set (did you mean {}/{}?)",
            n.network(),
            n.prefix()
        ));
    }
    Ok(n)
}

/// Upstream's pattern: optional `*.`, then two or more labels of letters, digits, `-` and `_`
/// (not starting or ending with `-` or `_`), optionally a final dot; and DNS's lengths (labels
/// up to 63 bytes, names up to 253), which no answer can exceed.
fn domain_name_ok(n: &str) -> bool {
    let n = n.strip_prefix("*.").unwrap_or(n);
    let n = n.strip_suffix('.').unwrap_or(n);
    let labels: Vec<&str> = n.split('.').collect();
    n.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
        })
}

/// Whether a domain name peer entry matches `name` (`*.` is one or more leading labels).
pub fn domain_matches(pattern: &str, name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => name.len() > suffix.len() + 1 && name.ends_with(&format!(".{suffix}")),
        None => name == pattern,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_names() {
        assert!(domain_name_ok("kubernetes.io"));
        assert!(domain_name_ok("*.kubernetes.io"));
        assert!(domain_name_ok("a_b.example.com."));
        assert!(!domain_name_ok("localhost"));
        assert!(!domain_name_ok("*kubernetes.io"));
        assert!(!domain_name_ok("a.*.io"));
        assert!(!domain_name_ok("-a.io"));
        assert!(!domain_name_ok("a..io"));
        assert!(domain_matches(
            "*.kubernetes.io",
            "latest.blog.kubernetes.io"
        ));
        assert!(!domain_matches("*.kubernetes.io", "kubernetes.io"));
        assert!(!domain_matches("kubernetes.io", "www.kubernetes.io"));
    }
}
