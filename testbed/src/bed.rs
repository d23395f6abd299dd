//! A node as a network namespace with a bridge, and pods as network namespaces joined to it by
//! veth pairs: the shape the CNI bridge plugin builds, without touching the host's own
//! namespace. Everything is removed on drop.

use std::{
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context, Result};
use hostnet::netns::{ifindex, in_netns};

/// Run `ip` with arguments; fail with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A pod: its namespace, addresses and the host-side veth in the node namespace.
#[derive(Clone, Debug)]
pub struct Pod {
    pub name: String,
    pub netns: String,
    pub ipv4: std::net::Ipv4Addr,
    pub ipv6: std::net::Ipv6Addr,
    /// Host-side veth name (in the node namespace).
    pub host_if: String,
    /// Its ifindex in the node namespace (the endpoint key).
    pub host_ifindex: u32,
}

impl Pod {
    /// Path of the pod's namespace.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.netns)
    }
}

/// A node namespace with a bridge `br0` (10.77.0.1/24, fd77::1/64) and its pods.
pub struct Bed {
    pub id: String,
    pub node: String,
    pub pods: Vec<Pod>,
    pub bridge_v4: std::net::Ipv4Addr,
}

impl Bed {
    /// Create the node namespace and bridge.
    pub fn new(tag: &str) -> Result<Self> {
        crate::require_root("a test bed of network namespaces");
        static N: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{}{}",
            std::process::id() % 100_000,
            N.fetch_add(1, Ordering::Relaxed)
        );
        let node = format!("septa-{id}-{tag}-node");
        ip(&["netns", "add", &node])?;
        let bed = Bed {
            id,
            node,
            pods: Vec::new(),
            bridge_v4: "10.77.0.1".parse()?,
        };
        bed.exec(&["link", "add", "br0", "type", "bridge"])?;
        bed.exec(&["addr", "add", "10.77.0.1/24", "dev", "br0"])?;
        bed.exec(&["addr", "add", "fd77::1/64", "dev", "br0", "nodad"])?;
        bed.exec(&["link", "set", "br0", "up"])?;
        bed.exec(&["link", "set", "lo", "up"])?;
        Ok(bed)
    }

    /// Run `ip` inside the node namespace.
    pub fn exec(&self, args: &[&str]) -> Result<()> {
        let mut a = vec!["-n", self.node.as_str()];
        a.extend_from_slice(args);
        ip(&a)
    }

    /// Path of the node namespace.
    pub fn node_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.node)
    }

    /// Add a pod with address 10.77.0.`host` / fd77::`host`.
    pub fn add_pod(&mut self, name: &str, host: u8) -> Result<Pod> {
        let netns = format!("septa-{}-{name}", self.id);
        ip(&["netns", "add", &netns])?;
        let host_if = format!("s{}{}", self.id, name.chars().take(4).collect::<String>());
        let host_if: String = host_if.chars().take(15).collect();
        let ipv4: std::net::Ipv4Addr = format!("10.77.0.{host}").parse()?;
        let ipv6: std::net::Ipv6Addr = format!("fd77::{host}").parse()?;
        self.exec(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ])?;
        self.exec(&["link", "set", &host_if, "master", "br0"])?;
        self.exec(&["link", "set", &host_if, "up"])?;
        let pod_ip = |args: &[&str]| {
            let mut a = vec!["-n", netns.as_str()];
            a.extend_from_slice(args);
            ip(&a)
        };
        pod_ip(&["link", "set", "lo", "up"])?;
        pod_ip(&["addr", "add", &format!("{ipv4}/24"), "dev", "eth0"])?;
        pod_ip(&["addr", "add", &format!("{ipv6}/64"), "dev", "eth0", "nodad"])?;
        pod_ip(&["link", "set", "eth0", "up"])?;
        pod_ip(&["route", "add", "default", "via", "10.77.0.1"])?;
        let host_ifindex = in_netns(&self.node_path(), || ifindex(&host_if))??;
        let pod = Pod {
            name: name.into(),
            netns,
            ipv4,
            ipv6,
            host_if,
            host_ifindex,
        };
        self.pods.push(pod.clone());
        Ok(pod)
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        for p in &self.pods {
            let _ = ip(&["netns", "del", &p.netns]);
        }
        let _ = ip(&["netns", "del", &self.node]);
    }
}
