//! The registry protocol between `septa-cni` and the agent: one JSON request per line on the
//! Unix socket, one JSON response line back.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

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
    /// Either side is this pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// forwarded, dropped or audit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// Either side uses this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// new, deny or end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

impl FlowFilter {
    pub fn matches(&self, r: &crate::flows::FlowRecord) -> bool {
        let sides = [&r.source, &r.destination];
        self.namespace
            .as_ref()
            .is_none_or(|n| sides.iter().any(|s| s.namespace.as_ref() == Some(n)))
            && self
                .pod
                .as_ref()
                .is_none_or(|p| sides.iter().any(|s| s.pod.as_ref() == Some(p)))
            && self.verdict.as_ref().is_none_or(|v| &r.verdict == v)
            && self.kind.as_ref().is_none_or(|k| &r.kind == k)
            && self.port.is_none_or(|p| sides.iter().any(|s| s.port == p))
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
    mut each: impl FnMut(crate::flows::FlowRecord) -> bool,
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
        let rec: crate::flows::FlowRecord = serde_json::from_str(&line)
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
}

impl Response {
    pub fn ok() -> Self {
        Response {
            ok: true,
            error: String::new(),
            identity: None,
        }
    }
    pub fn err(e: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: e.into(),
            identity: None,
        }
    }
}

/// Largest request line accepted (a guard against a misbehaving client).
pub const MAX_LINE: usize = 64 * 1024;
