//! The registry protocol between `septa-cni` and the agent: one JSON request per line on the
//! Unix socket, one JSON response line back.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

/// Where the agent listens and where `septa-cni` and `septa` look by default.
pub const DEFAULT_SOCKET: &str = "/run/septa/septa.sock";

/// An endpoint as the CNI plugin reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub container_id: String,
    /// The pod's network namespace path.
    pub netns: String,
    /// The interface inside the pod.
    pub ifname: String,
    /// The host-side veth (in the agent's namespace); empty for a cgroup workload.
    #[serde(default)]
    pub host_ifname: String,
    /// A cgroup v2 directory: the workload is the processes in it (no veth); its identity is
    /// taken from the cgroup, its traffic enforced by cgroup_skb programs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    pub namespace: String,
    pub name: String,
    /// Labels given by the runtime (standalone mode: optional; manifests may give them).
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    pub ips: Vec<IpAddr>,
}

impl Endpoint {
    /// At most one address of each family: anti-spoofing and the ipcache hold one IPv4 and one
    /// IPv6 address per endpoint, so a second one would have its traffic dropped as spoofed.
    /// The error names both addresses.
    pub fn check_addresses(&self) -> Result<(), String> {
        for (i, a) in self.ips.iter().enumerate() {
            if let Some(b) = self.ips[..i]
                .iter()
                .find(|b| b.is_ipv4() == a.is_ipv4() && *b != a)
            {
                let family = if a.is_ipv4() { "IPv4" } else { "IPv6" };
                return Err(format!(
                    "pod {}/{} has two {family} addresses, {b} and {a}; septa enforces one \
                     address per family: give the pod one {family} address",
                    self.namespace, self.name
                ));
            }
        }
        Ok(())
    }
}

/// A request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// Register and enforce; answered once programs and map entries are in place.
    Add(Endpoint),
    /// Forget an endpoint (idempotent).
    Del { container_id: String },
    /// Whether the endpoint is registered and its programs attached.
    Check { container_id: String },
    /// Whether the agent is up and ready.
    Status,
    /// Flow records: the last `last` that match, then (with `follow`) new ones as they come,
    /// one JSON record per line, until the client hangs up.
    Flows {
        #[serde(default)]
        filter: FlowFilter,
        #[serde(default)]
        last: usize,
        #[serde(default)]
        follow: bool,
    },
}

/// Which flow records a query wants (all given conditions must hold).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowFilter {
    /// Either side in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Either side is this pod: `name`, or `namespace/name` for one pod of one namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// forwarded, dropped or audit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// Either side uses this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// new, deny, update, end or aggregate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Either side belongs to this workload: `Kind/name` (`Deployment/web`) or `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// Either side carries all these labels.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Records at or after this time (RFC 3339, UTC, as in the records' `time`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

impl FlowFilter {
    pub fn matches(&self, r: &crate::flow::FlowRecord) -> bool {
        let sides = [&r.source, &r.destination];
        let pod = |s: &crate::flow::FlowPeer, want: &str| match want.split_once('/') {
            Some((ns, name)) => {
                s.namespace.as_deref() == Some(ns) && s.pod.as_deref() == Some(name)
            }
            None => s.pod.as_deref() == Some(want),
        };
        let workload = |s: &crate::flow::FlowPeer, want: &str| {
            s.workload.as_deref().is_some_and(|w| {
                w == want || w.split_once('/').is_some_and(|(_, name)| name == want)
            })
        };
        self.namespace
            .as_ref()
            .is_none_or(|n| sides.iter().any(|s| s.namespace.as_ref() == Some(n)))
            && self
                .pod
                .as_ref()
                .is_none_or(|p| sides.iter().any(|s| pod(s, p)))
            && self
                .workload
                .as_ref()
                .is_none_or(|w| sides.iter().any(|s| workload(s, w)))
            && (self.labels.is_empty()
                || sides
                    .iter()
                    .any(|s| self.labels.iter().all(|(k, v)| s.labels.get(k) == Some(v))))
            && self.verdict.as_ref().is_none_or(|v| &r.verdict == v)
            && self.kind.as_ref().is_none_or(|k| &r.kind == k)
            && self.port.is_none_or(|p| sides.iter().any(|s| s.port == p))
            // Same format (RFC 3339, UTC, fixed width): text order is time order.
            && self.since.as_ref().is_none_or(|t| r.time.as_str() >= t.as_str())
    }
}

/// Ask the agent for flow records; `each` gets every record until it returns false, the agent
/// hangs up, or (without `follow`) the last record was sent.
pub fn query_flows(
    socket: &std::path::Path,
    filter: &FlowFilter,
    last: usize,
    follow: bool,
    timeout: std::time::Duration,
    mut each: impl FnMut(crate::flow::FlowRecord) -> bool,
) -> std::io::Result<()> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("septa agent at {}: {e}", socket.display()),
        )
    })?;
    if !follow {
        s.set_read_timeout(Some(timeout))?;
    }
    let mut req = serde_json::to_string(&Request::Flows {
        filter: filter.clone(),
        last,
        follow,
    })?;
    req.push('\n');
    s.write_all(req.as_bytes())?;
    for line in std::io::BufReader::new(s).lines() {
        let line = line?;
        if line.trim().is_empty() {
            break; // end of the backlog without follow
        }
        if let Ok(resp) = serde_json::from_str::<Response>(&line) {
            if !resp.ok {
                return Err(std::io::Error::other(resp.error));
            }
            continue;
        }
        let rec: crate::flow::FlowRecord = serde_json::from_str(&line)
            .map_err(|e| std::io::Error::other(format!("malformed record from the agent: {e}")))?;
        if !each(rec) {
            break;
        }
    }
    Ok(())
}

/// A response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// The identity assigned (Add, Check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<u32>,
    /// Something the caller should know although the request succeeded (Add, Status): the
    /// manifests have errors and an older state is enforced.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub warning: String,
    /// Pods of this node that run unenforced because the agent could not adopt them (Status,
    /// Kubernetes mode).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unadopted: Vec<Unadopted>,
    /// What the node enforces and how (Status; also when the agent is not ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Box<NodeStatus>>,
}

/// One node's enforcement, as `septa status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeStatus {
    /// The node's name.
    pub node: String,
    /// `dir` (standalone) or `kubernetes`.
    pub source: String,
    /// Whether a good state is enforced.
    pub ready: bool,
    /// Why not, or what is wrong although an older good state is enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// How many policy states the agent has compiled and enforced since it started; it
    /// grows by one with every change of workloads or policies that reached the kernel.
    pub revision: u64,
    /// Pods registered by septa-cni (or adopted) and enforced in the kernel.
    pub enforced: usize,
    /// Of those, pods the agent adopted because they ran before it started.
    pub adopted: usize,
    /// septa's entry in the node's CNI configuration.
    pub cni: CniStatus,
    /// Threat feeds and their blocklists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feeds: Vec<FeedStatus>,
    /// DNS-aware rules: the names they allow and the addresses learned for them.
    pub dns: DnsStatus,
}

/// septa's entry in the node's CNI configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CniStatus {
    /// `off`, `splice` or `own-file`.
    pub mode: String,
    /// The file that carries septa's entry (or should).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Whether the file carries septa's entry as the agent wants it.
    pub present: bool,
    /// Why the entry is not (or not yet) in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One threat feed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedStatus {
    /// The ThreatFeed's name.
    pub name: String,
    /// Ranges in its blocklist in the kernel.
    pub entries: usize,
    /// Why its last fetch failed (the previous blocklist stays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// DNS-aware rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsStatus {
    /// Names and patterns FqdnPolicies allow.
    pub names: usize,
    /// Addresses learned from answers to queries pods sent, still alive.
    pub addresses: usize,
}

/// A running pod the agent could not adopt, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unadopted {
    /// `namespace/name`.
    pub pod: String,
    pub reason: String,
}

impl Response {
    pub fn ok() -> Self {
        Response {
            ok: true,
            error: String::new(),
            identity: None,
            warning: String::new(),
            unadopted: Vec::new(),
            node: None,
        }
    }
    pub fn err(e: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: e.into(),
            identity: None,
            warning: String::new(),
            unadopted: Vec::new(),
            node: None,
        }
    }
}

/// Largest request line accepted (a guard against a misbehaving client).
pub const MAX_LINE: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_per_family() {
        let ep = |ips: &[&str]| Endpoint {
            container_id: "c".into(),
            netns: "/run/netns/p".into(),
            ifname: "eth0".into(),
            host_ifname: "veth0".into(),
            cgroup: None,
            namespace: "demo".into(),
            name: "web-1".into(),
            labels: None,
            ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
        };
        let cases: [(&[&str], Option<&str>); 5] = [
            (&["10.0.0.1"], None),
            (&["10.0.0.1", "fd00::1"], None),
            (&["10.0.0.1", "10.0.0.1"], None),
            (
                &["10.0.0.1", "fd00::1", "10.0.0.2"],
                Some("pod demo/web-1 has two IPv4 addresses, 10.0.0.1 and 10.0.0.2"),
            ),
            (
                &["fd00::1", "fd00::2"],
                Some("two IPv6 addresses, fd00::1 and fd00::2"),
            ),
        ];
        for (ips, want) in cases {
            match (ep(ips).check_addresses(), want) {
                (Ok(()), None) => {}
                (Err(e), Some(w)) => assert!(e.contains(w), "{ips:?}: {e}"),
                (got, _) => panic!("{ips:?}: {got:?}"),
            }
        }
    }
}
