//! `FqdnPolicy` (`septa.dev/v1alpha1`, namespaced): egress to DNS names for the selected pods.
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
//! These types are the wire shape only: decoding is strict (an unknown field is an error),
//! and the meaning (name patterns, port ranges, resolver addresses) is checked by one
//! validation shared by the agent and `septa lint`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::{Deserialize, Serialize};

/// The spec of an `FqdnPolicy`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "kube",
    derive(kube::CustomResource, schemars::JsonSchema),
    kube(
        group = "septa.dev",
        version = "v1alpha1",
        kind = "FqdnPolicy",
        namespaced,
        status = "crate::status::Status",
        shortname = "fqdnpol",
        category = "septa",
        doc = "Egress to DNS names for the selected pods (septa's DNS-aware allowlist).",
        printcolumn = r#"{"name": "Valid", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Valid\")].status"}"#,
        printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
    )
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FqdnPolicySpec {
    /// The pods these rules apply to (in the policy's namespace). They become
    /// egress-isolated: what no rule allows is denied.
    pub pod_selector: LabelSelector,
    /// Names the pods may reach, with their ports.
    pub egress: Vec<FqdnEgressRule>,
    /// The resolvers whose answers are trusted, and the only ones the pods may query;
    /// absent: the agent's `--dns-resolver`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolvers: Option<Vec<String>>,
}

/// One egress rule: names and ports.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FqdnEgressRule {
    /// The names (each exactly one of `matchName` and `matchPattern`).
    #[serde(rename = "toFQDNs")]
    pub to_fqdns: Vec<FqdnSelector>,
    /// Absent: every port of every protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<FqdnPort>>,
}

/// A DNS name or a pattern of names.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FqdnSelector {
    /// One name, e.g. `api.payments.example`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_name: Option<String>,
    /// `*.example.com` (one label) or `**.example.com` (any depth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_pattern: Option<String>,
}

/// A port of an egress rule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct FqdnPort {
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// 1-65535 (a wider type so that an out-of-range port is reported, not misread).
    #[cfg_attr(feature = "kube", schemars(range(min = 1, max = 65535)))]
    pub port: u32,
}
