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

use api::fqdn_policy::FqdnPolicySpec;
use policies::{model::Protocol, selector::Selector};

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

/// Validate an `FqdnPolicy` object.
pub fn from_manifest(v: &serde_json::Value) -> Result<FqdnSpec, SpecError> {
    let name = v
        .pointer("/metadata/name")
        .and_then(|n| n.as_str())
        .filter(|n| !n.is_empty())
        .ok_or(("metadata.name".to_owned(), "missing".to_owned()))?
        .to_owned();
    let namespace = v
        .pointer("/metadata/namespace")
        .and_then(|n| n.as_str())
        .filter(|n| !n.is_empty())
        .unwrap_or("default")
        .to_owned();
    let spec = v
        .get("spec")
        .ok_or(("spec".to_owned(), "missing".to_owned()))?;
    let raw: FqdnPolicySpec = serde_path_to_error::deserialize(spec)
        .map_err(|e| (format!("spec.{}", e.path()), e.into_inner().to_string()))?;
    let selector = Selector::from_k8s(&raw.pod_selector, "spec.podSelector")
        .map_err(|e| (e.field, e.message))?;
    if raw.egress.is_empty() {
        return Err((
            "spec.egress".into(),
            "empty: the policy would allow nothing by name".into(),
        ));
    }
    let mut rules = Vec::new();
    for (i, r) in raw.egress.iter().enumerate() {
        if r.to_fqdns.is_empty() {
            return Err((format!("spec.egress[{i}].toFQDNs"), "empty".into()));
        }
        let mut patterns = Vec::new();
        for (j, f) in r.to_fqdns.iter().enumerate() {
            let at = format!("spec.egress[{i}].toFQDNs[{j}]");
            let p = match (&f.match_name, &f.match_pattern) {
                (Some(n), None) => {
                    if n.contains('*') {
                        return Err((
                            format!("{at}.matchName"),
                            format!("{n:?}: wildcards go in matchPattern"),
                        ));
                    }
                    Pattern::parse(n).map_err(|e| (format!("{at}.matchName"), e))?
                }
                (None, Some(p)) => {
                    Pattern::parse(p).map_err(|e| (format!("{at}.matchPattern"), e))?
                }
                _ => return Err((at, "give exactly one of matchName and matchPattern".into())),
            };
            patterns.push(p);
        }
        let ports = match &r.ports {
            None => None,
            Some(ps) => {
                let mut out = Vec::new();
                for (j, p) in ps.iter().enumerate() {
                    let at = format!("spec.egress[{i}].ports[{j}]");
                    let proto = match p.protocol.as_deref() {
                        None => Protocol::Tcp,
                        Some(s) => Protocol::parse(s).ok_or((
                            format!("{at}.protocol"),
                            format!("{s:?}: expected TCP, UDP or SCTP"),
                        ))?,
                    };
                    if p.port == 0 || p.port > 65535 {
                        return Err((
                            format!("{at}.port"),
                            format!("{} is outside 1-65535", p.port),
                        ));
                    }
                    out.push((proto, p.port as u16));
                }
                Some(out)
            }
        };
        rules.push(FqdnRule { patterns, ports });
    }
    let mut resolvers = Vec::new();
    for (i, r) in raw.resolvers.iter().flatten().enumerate() {
        let at = format!("spec.resolvers[{i}]");
        let ip: std::net::IpAddr = r
            .parse()
            .map_err(|_| (at.clone(), format!("{r:?} is not an IP address")))?;
        let embedded = matches!(ip, std::net::IpAddr::V6(a) if a.to_ipv4_mapped().is_some());
        if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() || embedded {
            return Err((
                at,
                format!("{r}: not a resolver pods can reach (give the cluster DNS address)"),
            ));
        }
        resolvers.push(ip);
    }
    if raw.resolvers.as_ref().is_some_and(|r| r.is_empty()) {
        return Err((
            "spec.resolvers".into(),
            "empty: the pods could resolve nothing (omit it for the agent's default)".into(),
        ));
    }
    Ok(FqdnSpec {
        namespace,
        name,
        selector,
        rules,
        resolvers,
    })
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
}
