//! The CustomResourceDefinitions of septa's kinds, generated from the Rust types so that the
//! cluster validates exactly what the agent decodes.

use kube::CustomResourceExt;

use crate::{fqdn_policy::FqdnPolicy, threat_feed::ThreatFeed};

/// Each CRD as (file name, YAML), in a stable order.
pub fn all() -> Vec<(&'static str, String)> {
    let yaml = |crd| serde_yaml::to_string(&crd).expect("a CRD serialises");
    vec![
        ("fqdnpolicies.septa.dev.yaml", yaml(FqdnPolicy::crd())),
        ("threatfeeds.septa.dev.yaml", yaml(ThreatFeed::crd())),
    ]
}

/// Read one of these YAML documents back (for tests and tools that check them).
pub fn parse(yaml: &str) -> serde_json::Value {
    serde_yaml::from_str(yaml).expect("crdgen's own YAML parses")
}
