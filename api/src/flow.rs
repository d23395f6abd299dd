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
    /// `host`, `world`, `cidr` or `service` for addresses that are not pods.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub entity: Option<String>,
    /// The Service whose address this is (`entity` `service`; `namespace` is the Service's):
    /// a connection to a ClusterIP or external IP, judged before kube-proxy's DNAT.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub service: Option<String>,
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
    pub kind: RecordKind,
    /// `forwarded`, `dropped` or `audit`.
    pub verdict: Verdict,
    /// Why it was dropped (or would be, for audit): `policy-denied`, `revoked`, ... or null.
    pub drop_reason: Option<DropReason>,
    /// Policy direction of the connection's first packet, from the subject's side.
    pub direction: Direction,
    pub ip_version: u8,
    pub protocol: String,
    pub source: FlowPeer,
    pub destination: FlowPeer,
    /// What decided: `rule`, `threat-feed`, `default-deny`, `default-allow`, `host`,
    /// `anti-spoof`, `fail-mode`.
    pub decided_by: DecidedBy,
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

/// An enumeration of the schema, serialised as exactly the strings of schema version 1.
/// A value a newer writer adds reads as `Unknown` (written as `unknown`), never as an error.
macro_rules! schema_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $v:ident = $s:literal,)* }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $s)] $v,)*
            /// A value this version does not know.
            #[serde(rename = "unknown", other)]
            Unknown,
        }

        impl $name {
            /// Every known value.
            pub const ALL: &'static [$name] = &[$($name::$v,)*];

            /// The schema's string.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$v => $s,)*
                    $name::Unknown => "unknown",
                }
            }

            /// The value of a schema string (`Unknown` for any other).
            pub fn parse(s: &str) -> Self {
                match s {
                    $($s => $name::$v,)*
                    _ => $name::Unknown,
                }
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self::parse(s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}

schema_enum! {
    /// What a record reports.
    RecordKind {
        /// A connection accepted.
        New = "new",
        /// A packet dropped, or a connection revoked.
        Deny = "deny",
        /// Periodic counts of a long-lived connection.
        Update = "update",
        /// A connection ended.
        End = "end",
        /// Forwarded connections folded over a window (see `connections`).
        Aggregate = "aggregate",
    }
}

schema_enum! {
    /// What happened to the traffic.
    Verdict {
        /// Let through.
        Forwarded = "forwarded",
        /// Dropped.
        Dropped = "dropped",
        /// Let through, but a rule in audit mode would have dropped it.
        Audit = "audit",
    }
}

schema_enum! {
    /// Why traffic was dropped (or would be, for `audit`).
    DropReason {
        /// No rule allows it.
        PolicyDenied = "policy-denied",
        /// The packet could not be parsed.
        Malformed = "malformed",
        /// A fragment of a datagram whose first fragment was not seen.
        FragmentUnknown = "fragment-unknown",
        /// No endpoint is registered for the interface.
        NoEndpoint = "no-endpoint",
        /// The source is not the pod's address.
        SpoofedSource = "spoofed-source",
        /// A connection a policy change no longer allows.
        Revoked = "revoked",
        /// More IPv6 extension headers than are parsed.
        ExtHeaderLimit = "ext-header-limit",
        /// A threat-feed address.
        Blocklisted = "blocklisted",
    }
}

schema_enum! {
    /// The policy direction of a connection's first packet, from the subject's side.
    Direction {
        /// The subject sent it.
        Egress = "egress",
        /// The subject received it.
        Ingress = "ingress",
    }
}

schema_enum! {
    /// What decided.
    DecidedBy {
        /// A policy rule (see `policy`).
        Rule = "rule",
        /// A threat feed (see `feed`).
        ThreatFeed = "threat-feed",
        /// Isolated, and no rule allows it.
        DefaultDeny = "default-deny",
        /// Not isolated.
        DefaultAllow = "default-allow",
        /// Traffic of the node itself.
        Host = "host",
        /// The source address is not the pod's.
        AntiSpoof = "anti-spoof",
        /// The packet could not be evaluated; the fail mode decided.
        FailMode = "fail-mode",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_strings_round_trip_and_unknown_values_are_read() {
        for k in RecordKind::ALL {
            let json = serde_json::to_string(k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
            assert_eq!(serde_json::from_str::<RecordKind>(&json).unwrap(), *k);
            assert_eq!(RecordKind::parse(k.as_str()), *k);
        }
        for r in DropReason::ALL {
            assert_eq!(
                serde_json::from_value::<DropReason>(serde_json::json!(r.as_str())).unwrap(),
                *r
            );
        }
        assert_eq!(
            serde_json::from_str::<Verdict>("\"quarantined\"").unwrap(),
            Verdict::Unknown
        );
        assert_eq!(DecidedBy::parse("threat-feed"), DecidedBy::ThreatFeed);
        assert!(Direction::Egress == "egress");
    }
}
