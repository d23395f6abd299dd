//! `ThreatFeed` (`septa.dev/v1alpha1`, cluster-scoped): a list of malicious addresses pulled
//! from a URL or a file and enforced at XDP on host interfaces and at TC on pod veths.
//!
//! ```yaml
//! apiVersion: septa.dev/v1alpha1
//! kind: ThreatFeed
//! metadata: {name: spamhaus-drop}
//! spec:
//!   url: https://www.spamhaus.org/drop/drop.txt     # or file: /etc/septa/feeds/drop.txt
//!   format: lines                                   # lines | csv | json
//!   csvColumn: 0                                    # csv only: which column (0-based)
//!   csvHeader: false                                # csv only: skip the first line
//!   refresh: 1h
//!   action: drop                                    # drop | audit
//!   appliesTo: [hostIngress, podEgress, podIngress]
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The spec of a `ThreatFeed`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "kube",
    derive(kube::CustomResource, schemars::JsonSchema),
    kube(
        group = "septa.dev",
        version = "v1alpha1",
        kind = "ThreatFeed",
        status = "crate::status::Status",
        shortname = "feed",
        category = "septa",
        doc = "A list of malicious addresses enforced at XDP on host interfaces and at TC on pod veths.",
        printcolumn = r#"{"name": "Action", "type": "string", "jsonPath": ".spec.action"}"#,
        printcolumn = r#"{"name": "Refresh", "type": "string", "jsonPath": ".spec.refresh"}"#,
        printcolumn = r#"{"name": "Valid", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Valid\")].status"}"#,
        printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
    )
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ThreatFeedSpec {
    /// An `http` or `https` URL (exactly one of `url` and `file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// An absolute path on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// How the body is laid out (default `lines`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<FeedFormat>,
    /// `csv` only: the column holding the address (0-based, default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csv_column: Option<usize>,
    /// `csv` only: skip the first line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csv_header: Option<bool>,
    /// How often to pull it, e.g. `1h` (default 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<String>,
    /// What happens to matching traffic (default `drop`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<FeedAction>,
    /// Where it is enforced (default: everywhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applies_to: Option<Vec<FeedHook>>,
}

/// How a feed's body is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum FeedFormat {
    /// One address or CIDR per line; `#` and `;` start comments (Spamhaus DROP, FireHOL).
    Lines,
    /// Comma-separated values; the address is in `csvColumn`.
    Csv,
    /// A JSON array of address/CIDR strings.
    Json,
}

/// What happens to traffic to or from a listed address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum FeedAction {
    /// Dropped.
    Drop,
    /// Let through and recorded (verdict `audit`).
    Audit,
}

/// Where a feed is enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum FeedHook {
    /// XDP on host interfaces: traffic from listed addresses, before the stack sees it.
    HostIngress,
    /// TC: pods calling out to listed addresses.
    PodEgress,
    /// TC: listed addresses calling in to pods.
    PodIngress,
}
