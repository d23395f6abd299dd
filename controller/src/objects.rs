//! Loading manifests for analysis: Kubernetes objects through [`policies::load`], and
//! septa's own kinds (`FqdnPolicy`, `ThreatFeed`) validated with the agent's own validators,
//! so that an object the agent would refuse is an error here too, and what it enforces is
//! what the policy engine models.

use std::{net::IpAddr, path::Path};

use dataplane::{dns::spec::FqdnSpec, feeds::spec::FeedSpec};
use policies::{
    load::load_paths,
    model::{FqdnPolicy, FqdnRule, ThreatFeedRef},
    Cluster, Diagnostics,
};

/// Load `paths`, validate septa's objects into the cluster's FqdnPolicies and ThreatFeeds.
/// `dns_resolvers` are the agent's `--dns-resolver` addresses, when known.
pub fn load<P: AsRef<Path>>(
    paths: &[P],
    dns_resolvers: Option<Vec<IpAddr>>,
) -> (Cluster, Diagnostics) {
    let (mut c, mut d) = load_paths(paths);
    septa_objects(&mut c, &mut d);
    c.dns_resolvers = dns_resolvers;
    (c, d)
}

/// Validate `c.custom` as the agent does (same validators, same duplicate rules), filling
/// `c.fqdn_policies` and `c.threat_feeds`; problems go to `d`.
pub fn septa_objects(c: &mut Cluster, d: &mut Diagnostics) {
    for o in &c.custom {
        let name = o
            .value
            .pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .unwrap_or("");
        let ns = o
            .value
            .pointer("/metadata/namespace")
            .and_then(|n| n.as_str())
            .filter(|n| !n.is_empty())
            .unwrap_or("default");
        match o.kind.as_str() {
            "FqdnPolicy" => {
                let object = format!("FqdnPolicy {ns}/{name}");
                match dataplane::dns::spec::from_manifest(&o.value) {
                    Ok(s)
                        if c.fqdn_policies
                            .iter()
                            .any(|f| f.name == s.name && f.namespace == s.namespace) =>
                    {
                        d.push(
                            &o.at,
                            &object,
                            "metadata.name",
                            "another FqdnPolicy in this namespace has this name",
                        )
                    }
                    Ok(s) => c.fqdn_policies.push(fqdn_policy(&s)),
                    Err((field, msg)) => d.push(&o.at, &object, &field, msg),
                }
            }
            "ThreatFeed" => {
                let object = format!("ThreatFeed {name}");
                match dataplane::feeds::spec::from_manifest(&o.value) {
                    Ok(s) if c.threat_feeds.iter().any(|f| f.name == s.name) => d.push(
                        &o.at,
                        &object,
                        "metadata.name",
                        "another ThreatFeed has this name",
                    ),
                    Ok(s) => c.threat_feeds.push(threat_feed(&s)),
                    Err((field, msg)) => d.push(&o.at, &object, &field, msg),
                }
            }
            other => d.push(
                &o.at,
                &format!("{other} {ns}/{name}"),
                "kind",
                format!("septa.dev has no kind {other:?} (known: ThreatFeed, FqdnPolicy)"),
            ),
        }
    }
}

/// The policy engine's form of a validated FqdnPolicy.
pub fn fqdn_policy(s: &FqdnSpec) -> FqdnPolicy {
    FqdnPolicy {
        namespace: s.namespace.clone(),
        name: s.name.clone(),
        selector: s.selector.clone(),
        rules: s
            .rules
            .iter()
            .map(|r| FqdnRule {
                names: r.patterns.iter().map(|p| p.to_string()).collect(),
                ports: r.ports.clone(),
            })
            .collect(),
        resolvers: s.resolvers.clone(),
    }
}

fn threat_feed(s: &FeedSpec) -> ThreatFeedRef {
    use dataplane::feeds::spec::{Action, Hook, Source};
    ThreatFeedRef {
        name: s.name.clone(),
        source: match &s.source {
            Source::Url(u) => u.clone(),
            Source::File(f) => f.display().to_string(),
        },
        action: match s.action {
            Action::Drop => "drop",
            Action::Audit => "audit",
        }
        .into(),
        applies_to: s
            .applies_to
            .iter()
            .map(|h| {
                match h {
                    Hook::HostIngress => "hostIngress",
                    Hook::PodEgress => "podEgress",
                    Hook::PodIngress => "podIngress",
                }
                .to_owned()
            })
            .collect(),
    }
}

/// One line per ThreatFeed that acts on pod traffic: its addresses are fetched at run time, so
/// the external ranges of a connlist still include them.
pub fn feed_notes(c: &Cluster) -> Vec<String> {
    c.threat_feeds
        .iter()
        .filter(|f| f.applies_to.iter().any(|h| h.starts_with("pod")))
        .map(|f| {
            format!(
                "ThreatFeed {} ({}) {}s the addresses listed at {} at run time; external ranges above include them",
                f.name,
                f.source,
                f.action,
                f.applies_to.join(", ")
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policy engine's isolation of an FqdnPolicy is the NetworkPolicy the agent compiles
    /// into the kernel's maps for it, with the policy's own resolvers and with the default.
    #[test]
    fn isolation_agrees_with_the_agent() {
        let default: Vec<IpAddr> = vec!["192.0.2.53".parse().unwrap()];
        for resolvers in ["\n  resolvers: [10.96.0.10, 'fd00::a']", ""] {
            let v: serde_json::Value = serde_yaml::from_str(&format!("apiVersion: septa.dev/v1alpha1\nkind: FqdnPolicy\nmetadata: {{name: p, namespace: shop}}\nspec:\n  podSelector: {{matchLabels: {{app: api}}}}\n  egress: [{{toFQDNs: [{{matchName: a.example}}]}}]{resolvers}\n")).unwrap();
            let spec = dataplane::dns::spec::from_manifest(&v).unwrap();
            for d in [&default[..], &[]] {
                let agent =
                    dataplane::agent::fqdn::isolation_policies(std::slice::from_ref(&spec), d);
                assert_eq!(vec![fqdn_policy(&spec).isolation_policy(d)], agent);
            }
        }
    }
}
