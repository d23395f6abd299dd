//! The flow record: one versioned schema for every exporter (JSON lines, the agent socket,
//! IPFIX) and every reader (`septa flows`, `septa recommend`).
//!
//! Schema version 1 is documented in the README ("Flow records"); fields are only ever added
//! within a version.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The schema version written in every record.
pub const SCHEMA_VERSION: u32 = 1;

/// One side of a flow.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowPeer {
    pub ip: String,
    pub port: u16,
    /// The security identity of this address (0 when unknown).
    pub identity: u32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pod: Option<String>,
    /// `Kind/name` of the owner (`Deployment/web`, `Pod/x`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub workload: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub labels: BTreeMap<String, String>,
    /// `host`, `world` or `cidr` for addresses that are not pods.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub entity: Option<String>,
}

/// The policy rule that decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRef {
    pub namespace: String,
    pub name: String,
    pub direction: String,
    pub rule_index: usize,
}

/// Packet and byte counts, forward (original direction) and reverse.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub forward: u64,
    pub reverse: u64,
}

/// A flow record (schema version 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    pub version: u32,
    /// RFC 3339 with milliseconds, UTC: when this record's event happened (for `end`, the
    /// connection's last packet).
    pub time: String,
    /// When the connection started (its first packet).
    pub start: String,
    /// `new` (connection accepted), `deny` (packet dropped, or connection revoked), `update`
    /// (periodic counts of a long-lived connection), `end`, `aggregate` (see `connections`).
    pub kind: String,
    /// `forwarded`, `dropped` or `audit`.
    pub verdict: String,
    /// Why it was dropped (or would be, for audit): `policy-denied`, `revoked`, ... or null.
    pub drop_reason: Option<String>,
    /// Policy direction of the connection's first packet, from the subject's side.
    pub direction: String,
    pub ip_version: u8,
    pub protocol: String,
    pub source: FlowPeer,
    pub destination: FlowPeer,
    /// What decided: `rule`, `threat-feed`, `default-deny`, `default-allow`, `host`,
    /// `anti-spoof`, `fail-mode`.
    pub decided_by: String,
    /// The threat feed, when `decided_by` is `threat-feed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feed: Option<String>,
    /// The rule, when `decided_by` is `rule`.
    pub policy: Option<PolicyRef>,
    pub rule_id: u32,
    pub packets: Counts,
    pub bytes: Counts,
    pub tcp_flags: Vec<String>,
    /// DNS names known for the peer (filled by the DNS feature).
    pub dns_names: Vec<String>,
    pub node: String,
    /// For `aggregate` records: connections opened in the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u64>,
}
