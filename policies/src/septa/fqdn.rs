//! The `FqdnPolicy` manifest (`septa.dev/v1alpha1`, typed in [`api::fqdn_policy`]): egress to
//! DNS names for selected pods, validated once.
//!
//! ```yaml
//! apiVersion: septa.dev/v1alpha1
//! kind: FqdnPolicy
//! metadata: {name: payments-api, namespace: shop}
//! spec:
//!   podSelector: {matchLabels: {app: api}}
//!   egress:
//!   - toFQDNs: [{matchName: api.payments.example}, {matchPattern: "*.cdn.example"}]
//!     ports: [{protocol: TCP, port: 443}]      # absent: every port
//!   resolvers: [10.96.0.10]                     # absent: the agent's --dns-resolver
//! ```
//!
//! The selected pods may send DNS only to the trusted resolvers, and only their answers (to
//! queries the pod sent) are learned.
//!
//! `septa recommend --external fqdn` writes this shape.

use std::net::IpAddr;

use api::fqdn_policy::FqdnPolicySpec;
use ipnetwork::IpNetwork;

use crate::{
    model::{IpBlock, Peer, Pod, Policy, PortSel, PortSpec, Protocol, Rule},
    selector::Selector,
};

use super::pattern::Pattern;

/// One egress rule: names and ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FqdnRule {
    pub patterns: Vec<Pattern>,
    /// `None`: every port of every protocol.
    pub ports: Option<Vec<(Protocol, u16)>>,
}

/// A validated `FqdnPolicy`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FqdnSpec {
    pub namespace: String,
    pub name: String,
    pub selector: Selector,
    pub rules: Vec<FqdnRule>,
    /// The resolvers trusted for these rules; empty: the agent's default.
    pub resolvers: Vec<std::net::IpAddr>,
}

/// A field-level problem: (field path, message).
pub type SpecError = (String, String);

impl FqdnSpec {
    /// Whether the policy selects `pod` (same namespace, selector matches).
    pub fn selects(&self, pod: &Pod) -> bool {
        self.namespace == pod.namespace && self.selector.matches(&pod.labels)
    }

    /// The resolvers the policy trusts: its own, else `default`; `None` when it names none
    /// and the default is not known.
    pub fn trusted_resolvers<'a>(&'a self, default: Option<&'a [IpAddr]>) -> Option<&'a [IpAddr]> {
        if self.resolvers.is_empty() {
            default
        } else {
            Some(&self.resolvers)
        }
    }

    /// The NetworkPolicy the agent enforces for it in the policy map: egress isolation plus
    /// DNS (UDP and TCP 53) to exactly the trusted resolvers (with none, DNS to nowhere: the
    /// pods stay isolated and resolve nothing). Egress by name comes on top of it, from the
    /// FQDN allowlist.
    pub fn isolation_policy(&self, default_resolvers: &[IpAddr]) -> Policy {
        let resolvers = self
            .trusted_resolvers(Some(default_resolvers))
            .unwrap_or_default();
        let dns = Rule {
            peers: Some(
                resolvers
                    .iter()
                    .map(|ip| {
                        Peer::Block(IpBlock {
                            cidr: IpNetwork::from(*ip),
                            except: Vec::new(),
                        })
                    })
                    .collect(),
            ),
            ports: Some(
                [Protocol::Udp, Protocol::Tcp]
                    .map(|protocol| PortSpec {
                        protocol,
                        port: PortSel::Range(53, 53),
                    })
                    .to_vec(),
            ),
        };
        Policy {
            namespace: self.namespace.clone(),
            name: format!("{} (FqdnPolicy DNS)", self.name),
            audit: false,
            pod_selector: self.selector.clone(),
            ingress: None,
            egress: Some(if resolvers.is_empty() {
                Vec::new()
            } else {
                vec![dns]
            }),
        }
    }
}

/// Validate an `FqdnPolicy` object; the first problem (see [`validate`] for all of them).
pub fn from_manifest(v: &serde_json::Value) -> Result<FqdnSpec, SpecError> {
    validate(v).map_err(|mut e| e.swap_remove(0))
}

/// Validate an `FqdnPolicy` object and report every problem in it, in field order (never
/// an empty list). A spec that does not decode (an unknown field, a wrong type) is one problem:
/// nothing after it can be read.
pub fn validate(v: &serde_json::Value) -> Result<FqdnSpec, Vec<SpecError>> {
    let mut errors: Vec<SpecError> = Vec::new();
    let name = v
        .pointer("/metadata/name")
        .and_then(|n| n.as_str())
        .filter(|n| !n.is_empty())
        .map(str::to_owned);
    if name.is_none() {
        errors.push(("metadata.name".to_owned(), "missing".to_owned()));
    }
    let namespace = v
        .pointer("/metadata/namespace")
        .and_then(|n| n.as_str())
        .filter(|n| !n.is_empty())
        .unwrap_or("default")
        .to_owned();
    let Some(spec) = v.get("spec") else {
        errors.push(("spec".to_owned(), "missing".to_owned()));
        return Err(errors);
    };
    let raw: FqdnPolicySpec = match serde_path_to_error::deserialize(spec) {
        Ok(r) => r,
        Err(e) => {
            errors.push((format!("spec.{}", e.path()), e.into_inner().to_string()));
            return Err(errors);
        }
    };
    let selector = Selector::from_k8s(&raw.pod_selector, "spec.podSelector")
        .map_err(|e| errors.push((e.field, e.message)))
        .ok();
    if raw.egress.is_empty() {
        errors.push((
            "spec.egress".into(),
            "empty: the policy would allow nothing by name".into(),
        ));
    }
    let mut rules = Vec::new();
    for (i, r) in raw.egress.iter().enumerate() {
        if r.to_fqdns.is_empty() {
            errors.push((format!("spec.egress[{i}].toFQDNs"), "empty".into()));
        }
        let mut patterns = Vec::new();
        for (j, f) in r.to_fqdns.iter().enumerate() {
            let at = format!("spec.egress[{i}].toFQDNs[{j}]");
            let p = match (&f.match_name, &f.match_pattern) {
                (Some(n), None) if n.contains('*') => Err((
                    format!("{at}.matchName"),
                    format!("{n:?}: wildcards go in matchPattern"),
                )),
                (Some(n), None) => Pattern::parse(n).map_err(|e| (format!("{at}.matchName"), e)),
                (None, Some(p)) => Pattern::parse(p).map_err(|e| (format!("{at}.matchPattern"), e)),
                _ => Err((at, "give exactly one of matchName and matchPattern".into())),
            };
            match p {
                Ok(p) => patterns.push(p),
                Err(e) => errors.push(e),
            }
        }
        let ports = r.ports.as_ref().map(|ps| {
            let mut out = Vec::new();
            for (j, p) in ps.iter().enumerate() {
                let at = format!("spec.egress[{i}].ports[{j}]");
                let proto = match p.protocol.as_deref() {
                    None => Some(Protocol::Tcp),
                    Some(s) => Protocol::parse(s).or_else(|| {
                        errors.push((
                            format!("{at}.protocol"),
                            format!("{s:?}: expected TCP, UDP or SCTP"),
                        ));
                        None
                    }),
                };
                if p.port == 0 || p.port > 65535 {
                    errors.push((
                        format!("{at}.port"),
                        format!("{} is outside 1-65535", p.port),
                    ));
                    continue;
                }
                if let Some(proto) = proto {
                    out.push((proto, p.port as u16));
                }
            }
            out
        });
        rules.push(FqdnRule { patterns, ports });
    }
    let mut resolvers = Vec::new();
    for (i, r) in raw.resolvers.iter().flatten().enumerate() {
        let at = format!("spec.resolvers[{i}]");
        let Ok(ip) = r.parse::<std::net::IpAddr>() else {
            errors.push((at, format!("{r:?} is not an IP address")));
            continue;
        };
        let embedded = matches!(ip, std::net::IpAddr::V6(a) if a.to_ipv4_mapped().is_some());
        if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() || embedded {
            errors.push((
                at,
                format!("{r}: not a resolver pods can reach (give the cluster DNS address)"),
            ));
            continue;
        }
        resolvers.push(ip);
    }
    if raw.resolvers.as_ref().is_some_and(|r| r.is_empty()) {
        errors.push((
            "spec.resolvers".into(),
            "empty: the pods could resolve nothing (omit it for the agent's default)".into(),
        ));
    }
    match (name, selector) {
        (Some(name), Some(selector)) if errors.is_empty() => Ok(FqdnSpec {
            namespace,
            name,
            selector,
            rules,
            resolvers,
        }),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(s: &str) -> serde_json::Value {
        serde_yaml::from_str(s).unwrap()
    }

    #[test]
    fn valid_policy() {
        let v = yaml("apiVersion: septa.dev/v1alpha1\nkind: FqdnPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: api}}\n  egress:\n  - toFQDNs: [{matchName: API.payments.example.}, {matchPattern: '**.cdn.example'}]\n    ports: [{protocol: TCP, port: 443}, {port: 80}]\n  - toFQDNs: [{matchPattern: '*.ntp.example'}]\n");
        let s = from_manifest(&v).unwrap();
        assert_eq!((s.namespace.as_str(), s.name.as_str()), ("shop", "p"));
        assert_eq!(s.rules.len(), 2);
        assert_eq!(
            s.rules[0].patterns,
            [
                Pattern::Exact("api.payments.example".into()),
                Pattern::AnyDepth("cdn.example".into())
            ]
        );
        assert_eq!(
            s.rules[0].ports,
            Some(vec![(Protocol::Tcp, 443), (Protocol::Tcp, 80)])
        );
        assert_eq!(s.rules[1].ports, None);
        assert!(s.resolvers.is_empty(), "the agent's default");
        let v = yaml("kind: FqdnPolicy\nmetadata: {name: p}\nspec:\n  podSelector: {}\n  egress: [{toFQDNs: [{matchName: a.example}]}]\n  resolvers: [10.96.0.10, 'fd00::a']\n");
        assert_eq!(
            from_manifest(&v).unwrap().resolvers,
            [
                "10.96.0.10".parse::<std::net::IpAddr>().unwrap(),
                "fd00::a".parse().unwrap()
            ]
        );
    }

    #[test]
    fn invalid_policies_name_the_field() {
        let base = "apiVersion: septa.dev/v1alpha1\nkind: FqdnPolicy\nmetadata: {name: p}\n";
        for (spec, field, why) in [
            ("spec: {egress: [{toFQDNs: [{matchName: a.example}]}]}", "spec", "podSelector"),
            ("spec: {podSelector: {}, egress: []}", "spec.egress", "empty"),
            ("spec: {podSelector: {}, egress: [{toFQDNs: []}]}", "spec.egress[0].toFQDNs", "empty"),
            ("spec: {podSelector: {}, egress: [{toFQDNs: [{matchName: '*.a.example'}]}]}", "spec.egress[0].toFQDNs[0].matchName", "matchPattern"),
            ("spec: {podSelector: {}, egress: [{toFQDNs: [{matchPattern: '*.com'}]}]}", "spec.egress[0].toFQDNs[0].matchPattern", "top-level"),
            ("spec: {podSelector: {}, egress: [{toFQDNs: [{}]}]}", "spec.egress[0].toFQDNs[0]", "exactly one"),
            ("spec: {podSelector: {}, egress: [{toFQDNs: [{matchName: a.example}], ports: [{port: 70000}]}]}", "spec.egress[0].ports[0].port", "outside"),
            ("spec: {podSelector: {}, egress: [{toFQDNs: [{matchName: a.example}], ports: [{protocol: ICMP, port: 1}]}]}", "spec.egress[0].ports[0].protocol", "TCP, UDP or SCTP"),
            ("spec: {podSelector: {}, egress: [{toFQDNs: [{matchName: a.example}], extra: 1}]}", "spec.egress[0]", "unknown field"),
            ("spec: {podSelector: {}, egress: [{toFQDNs: [{matchName: a.example}]}], resolvers: [dns.example]}", "spec.resolvers[0]", "not an IP"),
            ("spec: {podSelector: {}, egress: [{toFQDNs: [{matchName: a.example}]}], resolvers: ['::ffff:10.0.0.1']}", "spec.resolvers[0]", "cluster DNS"),
            ("spec: {podSelector: {}, egress: [{toFQDNs: [{matchName: a.example}]}], resolvers: [127.0.0.53]}", "spec.resolvers[0]", "cluster DNS"),
            ("spec: {podSelector: {}, egress: [{toFQDNs: [{matchName: a.example}]}], resolvers: []}", "spec.resolvers", "empty"),
            ("spec: {podSelector: {}, egress: [{toFQDNs: [{matchName: a.example}]}], resolver: [10.0.0.10]}", "spec", "unknown field"),
        ] {
            let (f, m) = from_manifest(&yaml(&format!("{base}{spec}\n"))).unwrap_err();
            assert!(f.starts_with(field) && m.contains(why), "{spec}: ({f}, {m})");
        }
        let (f, _) = from_manifest(&yaml("kind: FqdnPolicy\nspec: {}\n")).unwrap_err();
        assert_eq!(f, "metadata.name");
    }

    /// Every problem of an object is reported, not only the first.
    #[test]
    fn every_problem_is_reported() {
        let v = yaml("kind: FqdnPolicy\nmetadata: {namespace: x}\nspec:\n  podSelector: {matchExpressions: [{key: a, operator: Maybe}]}\n  egress:\n  - toFQDNs: [{matchName: '*.a.example'}, {matchName: ok.example}, {}]\n    ports: [{port: 0}, {protocol: ICMP, port: 1}, {port: 443}]\n  - toFQDNs: []\n  resolvers: [dns.example, 10.96.0.10, 127.0.0.1]\n");
        let fields: Vec<String> = validate(&v).unwrap_err().into_iter().map(|e| e.0).collect();
        assert_eq!(
            fields,
            [
                "metadata.name",
                "spec.podSelector.matchExpressions[0].operator",
                "spec.egress[0].toFQDNs[0].matchName",
                "spec.egress[0].toFQDNs[2]",
                "spec.egress[0].ports[0].port",
                "spec.egress[0].ports[1].protocol",
                "spec.egress[1].toFQDNs",
                "spec.resolvers[0]",
                "spec.resolvers[2]",
            ]
        );
        assert_eq!(from_manifest(&v).unwrap_err().0, "metadata.name");
    }
}
