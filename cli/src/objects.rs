//! Loading manifests for analysis: Kubernetes objects through [`policies::load`], and
//! septa's own kinds (`FqdnPolicy`, `ThreatFeed`) validated with the rules the agent applies
//! ([`policies::septa`]), so that an object the agent would refuse is an error here too and
//! what it enforces is what the policy engine models.

use std::{net::IpAddr, path::Path};

use policies::{
    load::load_paths,
    septa::feed::{Action, FeedSpec, Hook, Source},
    Cluster, Diagnostics,
};

/// Load `paths` and validate septa's objects into the cluster's FqdnPolicies and ThreatFeeds.
/// `dns_resolvers` are the agent's `--dns-resolver` addresses, when known.
pub fn load<P: AsRef<Path>>(
    paths: &[P],
    dns_resolvers: Option<Vec<IpAddr>>,
) -> (Cluster, Diagnostics) {
    let (mut c, mut d) = load_paths(paths);
    policies::septa::validate(&mut c, policies::septa::feed::MIN_REFRESH, &mut d);
    c.dns_resolvers = dns_resolvers;
    (c, d)
}

fn describe(f: &FeedSpec) -> String {
    let source = match &f.source {
        Source::Url(u) => u.clone(),
        Source::File(p) => p.display().to_string(),
    };
    let action = match f.action {
        Action::Drop => "drops",
        Action::Audit => "audits",
    };
    let hooks: Vec<&str> = f
        .applies_to
        .iter()
        .map(|h| match h {
            Hook::HostIngress => "hostIngress",
            Hook::PodEgress => "podEgress",
            Hook::PodIngress => "podIngress",
        })
        .collect();
    format!(
        "ThreatFeed {} ({source}) {action} the addresses listed at {} at run time",
        f.name,
        hooks.join(", ")
    )
}

/// One line per ThreatFeed that acts on pod traffic: its addresses are fetched at run time, so
/// the external ranges of a connlist still include them.
pub fn feed_notes(c: &Cluster) -> Vec<String> {
    c.threat_feeds
        .iter()
        .filter(|f| {
            f.applies_to
                .iter()
                .any(|h| matches!(h, Hook::PodEgress | Hook::PodIngress))
        })
        .map(|f| format!("{}; external ranges above include them", describe(f)))
        .collect()
}
