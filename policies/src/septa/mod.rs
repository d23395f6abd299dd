//! septa's own kinds (`septa.dev/v1alpha1`), validated: one set of rules for the agent that
//! enforces them and for the CLI that analyses and lints them.
//!
//! - [`fqdn`]: `FqdnPolicy`, egress to DNS names, with its name [`pattern`]s;
//! - [`feed`]: `ThreatFeed`, blocklists fetched at run time.

pub mod feed;
pub mod fqdn;
pub mod pattern;

use std::time::Duration;

use crate::{Cluster, Diagnostics};

/// Validate `c.custom` into `c.fqdn_policies` and `c.threat_feeds` with the agent's rules:
/// every problem of every object goes to `d` with file, object and field, and the object is
/// left out; a second
/// object of a kind with the same name (per namespace for FqdnPolicies) is an error.
/// `min_refresh` is the shortest ThreatFeed refresh accepted (the agent's
/// `--feed-min-refresh`, [`feed::MIN_REFRESH`] by default).
pub fn validate(c: &mut Cluster, min_refresh: Duration, d: &mut Diagnostics) {
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
                match fqdn::validate(&o.value) {
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
                    Ok(s) => c.fqdn_policies.push(s),
                    Err(errors) => {
                        for (field, msg) in errors {
                            d.push(&o.at, &object, &field, msg);
                        }
                    }
                }
            }
            "ThreatFeed" => {
                let object = format!("ThreatFeed {name}");
                match feed::validate(&o.value, min_refresh) {
                    Ok(s) if c.threat_feeds.iter().any(|f| f.name == s.name) => d.push(
                        &o.at,
                        &object,
                        "metadata.name",
                        "another ThreatFeed has this name",
                    ),
                    Ok(s) => c.threat_feeds.push(s),
                    Err(errors) => {
                        for (field, msg) in errors {
                            d.push(&o.at, &object, &field, msg);
                        }
                    }
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
