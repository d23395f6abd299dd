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
