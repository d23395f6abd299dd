//! `ClusterNetworkPolicy` (`policy.networking.k8s.io/v1alpha2`, cluster-scoped): the upstream
//! Kubernetes API for cluster-wide policy with explicit deny, from kubernetes-sigs/network-policy-api
//! v0.2.0 (it merged AdminNetworkPolicy and BaselineAdminNetworkPolicy).
//!
//! ```yaml
//! apiVersion: policy.networking.k8s.io/v1alpha2
//! kind: ClusterNetworkPolicy
//! metadata: {name: protect-kube-system}
//! spec:
//!   tier: Admin                         # Admin | Baseline
//!   priority: 10                        # 0-1000, lower is checked first
//!   subject:                            # exactly one of namespaces / pods
//!     namespaces: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
//!   ingress:                            # ordered, at most 25; first match decides
//!   - name: allow-dns
//!     action: Accept                    # Accept | Deny | Pass
//!     from: [{namespaces: {}}]
//!     protocols:
//!     - udp: {destinationPort: {number: 53}}
//!     - tcp: {destinationPort: {range: {start: 53, end: 54}}}
//!   - name: deny-rest
//!     action: Deny
//!     from: [{namespaces: {}}]
//!   egress:
//!   - name: no-metadata
//!     action: Deny
//!     to: [{networks: [169.254.169.254/32]}]   # egress also: nodes, domainNames
//! ```
//!
//! These types are the wire shape only, field for field as upstream's Go types: decoding is
//! strict (an unknown field is an error), and the rules the upstream CRD states as markers and
//! CEL (ranges, exactly-one-of, list sizes) are checked by one validation in the policy engine,
//! shared by the agent and the CLI. Upstream installs the CRD; septa only reads the objects.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::{Deserialize, Serialize};

/// The API group.
pub const GROUP: &str = "policy.networking.k8s.io";
/// The version septa implements.
pub const VERSION: &str = "v1alpha2";
/// `apiVersion` of the kind.
pub const API_VERSION: &str = "policy.networking.k8s.io/v1alpha2";
/// Lowest `spec.priority`.
pub const MIN_PRIORITY: i64 = 0;
/// Highest `spec.priority`.
pub const MAX_PRIORITY: i64 = 1000;
/// Most rules per direction, peers per rule, protocols per rule, networks and domain names
/// per peer.
pub const MAX_ITEMS: usize = 25;
/// Longest rule name.
pub const MAX_RULE_NAME: usize = 100;

/// The spec of a `ClusterNetworkPolicy`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "kube",
    derive(kube::CustomResource, schemars::JsonSchema),
    kube(
        group = "policy.networking.k8s.io",
        version = "v1alpha2",
        kind = "ClusterNetworkPolicy",
        status = "crate::status::Status",
        shortname = "cnp",
        doc = "A cluster-wide network policy (kubernetes-sigs/network-policy-api).",
        printcolumn = r#"{"name": "Tier", "type": "string", "jsonPath": ".spec.tier"}"#,
        printcolumn = r#"{"name": "Priority", "type": "string", "jsonPath": ".spec.priority"}"#,
        printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
    )
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterNetworkPolicySpec {
    /// `Admin` (before NetworkPolicies) or `Baseline` (after them).
    pub tier: Tier,
    /// 0-1000; lower values are checked first within the tier. A wider type so that an
    /// out-of-range value is reported, not misread.
    pub priority: i64,
    /// The pods the rules apply to (never host-network pods).
    pub subject: Subject,
    /// Rules for traffic to the subject, in order (at most 25); absent: ingress unaffected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IngressRule>,
    /// Rules for traffic from the subject, in order (at most 25); absent: egress unaffected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressRule>,
}

/// Where a ClusterNetworkPolicy sits in the evaluation order.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
pub enum Tier {
    /// Checked first; its Accept and Deny cannot be overridden by NetworkPolicies.
    #[default]
    Admin,
    /// Checked last, for pods no NetworkPolicy decides; a default NetworkPolicies override.
    Baseline,
}

/// The pods a policy applies to: exactly one field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Subject {
    /// Every pod in the namespaces whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// The pods whose namespace and own labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

/// Pods by namespace labels and pod labels.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamespacedPod {
    /// Absent or empty: every namespace.
    #[serde(default)]
    pub namespace_selector: LabelSelector,
    /// Empty: every pod of those namespaces.
    pub pod_selector: LabelSelector,
}

/// What a matching rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
pub enum Action {
    /// Allowed; no later ClusterNetworkPolicy or NetworkPolicy rule of this direction counts.
    Accept,
    /// Dropped; nothing later counts.
    Deny,
    /// The rest of this tier is skipped; the next tier decides.
    Pass,
}

/// A rule for traffic to the subject.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressRule {
    /// At most 100 characters; named in flow records.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// What the rule does to matching traffic.
    pub action: Action,
    /// The sources (1-25; any one matching is enough).
    pub from: Vec<IngressPeer>,
    /// Absent: every protocol and port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocols: Option<Vec<ProtocolMatch>>,
}

/// A rule for traffic from the subject.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EgressRule {
    /// At most 100 characters; named in flow records.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// What the rule does to matching traffic.
    pub action: Action,
    /// The destinations (1-25; any one matching is enough).
    pub to: Vec<EgressPeer>,
    /// Absent: every protocol and port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocols: Option<Vec<ProtocolMatch>>,
}

/// A source of ingress traffic: exactly one field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressPeer {
    /// Every pod of the matching namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// Matching pods of matching namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

/// A destination of egress traffic: exactly one field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EgressPeer {
    /// Every pod of the matching namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// Matching pods of matching namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
    /// The addresses of the nodes whose labels match (experimental channel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<LabelSelector>,
    /// CIDRs (1-25), pod addresses included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
    /// Names (1-25), `*.` for one or more leading labels (experimental channel; Accept only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_names: Option<Vec<String>>,
}

/// One protocol match: exactly one field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProtocolMatch {
    /// TCP to a port or range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<ProtocolPort>,
    /// UDP to a port or range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<ProtocolPort>,
    /// SCTP to a port or range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sctp: Option<ProtocolPort>,
    /// A container port name of the destination pod, any protocol (experimental channel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_named_port: Option<String>,
}

/// The port match of one protocol (upstream requires it to be set).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProtocolPort {
    /// The destination port or range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<Port>,
}

/// A port number or a range: exactly one field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Port {
    /// 1-65535 (a wider type so that an out-of-range port is reported, not misread).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<i64>,
    /// An inclusive range, `start` below `end`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<PortRange>,
}

/// An inclusive port range.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortRange {
    /// 1-65535, below `end`.
    pub start: i64,
    /// 1-65535.
    pub end: i64,
}
