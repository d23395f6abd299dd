//! A node running the real `septa-agent` binary in its own network namespace, with pods
//! created through a real CNI chain (bridge + host-local + septa-cni). Used by the agent's
//! end-to-end tests, by the demo, and (one per cluster node, each with its own pod subnet) by
//! the multi-node [`crate::world`].

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use super::{
    bed::{ip, Bed},
    cni::{septa_network, Attachment, Runtime},
    traffic::poll_until,
};
use api::protocol::Request;

/// Where the binaries are.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub agent: PathBuf,
    /// Directory holding `septa-cni`.
    pub cni_dir: PathBuf,
}

impl Binaries {
    /// For an integration test of the agent package: the agent cargo built for it
    /// (`env!("CARGO_BIN_EXE_septa-agent")`) and `septa-cni` beside it, which the `cni`
    /// package's build put there (`make test` builds the whole workspace first). Panics with
    /// the command to run when `septa-cni` is missing, rather than testing without it.
    pub fn for_agent(agent: &str) -> Self {
        let agent = PathBuf::from(agent);
        let cni_dir = agent.parent().map(Path::to_path_buf).unwrap_or_default();
        assert!(
            cni_dir.join("septa-cni").exists(),
            "{} missing: build it with `cargo build -p cni` (make test builds every package)",
            cni_dir.join("septa-cni").display()
        );
        Binaries { agent, cni_dir }
    }

    /// Next to the running executable (benchmarks and the demo, built with `--bins`).
    pub fn beside_current_exe() -> Result<Self> {
        let dir = std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .to_owned();
        let b = Binaries {
            agent: dir.join("septa-agent"),
            cni_dir: dir.clone(),
        };
        if !b.agent.exists() || !dir.join("septa-cni").exists() {
            bail!(
                "{} missing: cargo build --release -p agent -p cni",
                b.agent.display()
            );
        }
        Ok(b)
    }
}

/// The pod network of a test node, and the bridge's address in it (the pods' gateway).
pub const POD_NETWORK: &str = "10.88.0.0/24";
const NODE_GATEWAY: &str = "10.88.0.1";

/// A node's pod network: what its CNI chain (bridge + host-local + septa-cni) hands out.
#[derive(Clone, Debug)]
pub struct PodNetwork {
    /// The node's pod subnet (e.g. `10.88.3.0/24`); the bridge `cni-septa0` takes its first
    /// address, the pods' gateway.
    pub subnet: String,
    /// MTU of the bridge and the pods' veths (the bridge plugin's `mtu`); `None` keeps the
    /// kernel's 1500. An overlay needs room for its encapsulation (VXLAN: 50 bytes less).
    pub mtu: Option<u32>,
    /// Give pods a default route via the bridge (the bridge plugin's `isDefaultGateway`, as
    /// flannel configures it), rather than only their subnet route (see [`Node::route_via_node`]).
    pub default_route: bool,
}

impl Default for PodNetwork {
    /// [`POD_NETWORK`], MTU 1500, subnet route only: what [`Node::new`] gives.
    fn default() -> Self {
        PodNetwork {
            subnet: POD_NETWORK.into(),
            mtu: None,
            default_route: false,
        }
    }
}

/// The node: namespace, agent process, CNI runtime, and the pods made so far.
pub struct Node {
    pub bed: Bed,
    pub dir: PathBuf,
    pub manifests: PathBuf,
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
    pub runtime: Runtime,
    bins: Binaries,
    agent: Option<Child>,
    pub pods: Vec<(String, Attachment)>,
    /// Extra agent flags.
    pub agent_args: Vec<String>,
    /// The agent's SEPTA_LOG filter.
    pub log_filter: String,
    /// How long `start_agent` waits for readiness.
    pub ready_timeout: Duration,
    /// The agent's `--node-name` (unless `agent_args` gives it); `None` leaves the flag out.
    pub node_name: Option<String>,
    /// A command the agent is run under, which must exec it in its own process (so the pid
    /// and SIGTERM are the agent's): e.g. `setpriv --bounding-set -all,+bpf,...` to run it
    /// with only the capabilities a Kubernetes security context would give.
    pub agent_prefix: Vec<String>,
}

impl Node {
    /// A node with an empty manifests directory (write files, then [`Node::start_agent`]), pod
    /// network [`POD_NETWORK`].
    pub fn new(tag: &str, bins: Binaries) -> Result<Self> {
        Self::with_pod_network(tag, bins, PodNetwork::default())
    }

    /// [`Node::new`] with its own pod network (subnet, MTU, default route for pods). IPv4
    /// forwarding is on in the node namespace: the node routes its pods' traffic.
    pub fn with_pod_network(tag: &str, bins: Binaries, pods: PodNetwork) -> Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let bed = Bed::new(tag)?;
        hostnet::netns::in_netns(&bed.node_path(), || {
            // /proc/sys/net is the opening thread's namespace's.
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        })?
        .context("ip_forward in the node namespace")?;
        let dir = std::env::temp_dir().join(format!(
            "septa-node-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let manifests = dir.join("manifests");
        std::fs::create_dir_all(&manifests)?;
        // The socket's directory: the agent refuses one that others can write to, whatever
        // the umask made of it.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let socket = dir.join("septa.sock");
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/septa-node-{}", bed.id));
        let mut network = septa_network(
            &format!("septa-{tag}"),
            "cni-septa0",
            &pods.subnet,
            &dir.join("ipam"),
            &socket,
        );
        let bridge = &mut network["plugins"][0];
        if let Some(mtu) = pods.mtu {
            bridge["mtu"] = mtu.into();
        }
        if pods.default_route {
            bridge["isDefaultGateway"] = true.into();
        }
        let runtime = Runtime {
            node: bed.node_path(),
            cni_path: vec![bins.cni_dir.clone(), PathBuf::from("/usr/lib/cni")],
            network,
            conf_dir: None,
        };
        Ok(Node {
            bed,
            dir,
            manifests,
            socket,
            pin_dir,
            runtime,
            bins,
            agent: None,
            pods: Vec::new(),
            agent_args: Vec::new(),
            log_filter: "info".into(),
            // A deadline, not a measurement: generous for a loaded two-core machine.
            ready_timeout: Duration::from_secs(60),
            node_name: None,
            agent_prefix: Vec::new(),
        })
    }

    /// Run pods through a CNI configuration directory, as a container runtime does, holding
    /// only the primary network (this node's bridge, host-local and portmap, without
    /// septa-cni): septa's entry gets there only if the agent splices it in (`--cni-mode
    /// splice --cni-conf-dir <dir>`). Returns the primary network's file. Pretty-printed with
    /// two-space indentation and a final newline, as primary CNIs write their files.
    pub fn use_conf_dir(&mut self) -> Result<PathBuf> {
        let dir = self.dir.join("net.d");
        std::fs::create_dir_all(&dir)?;
        let mut network = self.runtime.network.clone();
        let plugins = network["plugins"]
            .as_array_mut()
            .context("the node's network has plugins")?;
        plugins.retain(|p| p["type"] != "septa-cni");
        plugins
            .push(serde_json::json!({"type": "portmap", "capabilities": {"portMappings": true}}));
        let file = dir.join("10-bridge.conflist");
        let mut text = serde_json::to_string_pretty(&network)?;
        text.push('\n');
        std::fs::write(&file, text)?;
        self.runtime.conf_dir = Some(dir);
        Ok(file)
    }

    /// Write a manifest file (replacing it atomically, as an editor would).
    pub fn write_manifest(&self, name: &str, yaml: &str) -> Result<()> {
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, self.manifests.join(name))?;
        Ok(())
    }

    /// The agent's state directory (`--state-dir`).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The command [`Node::start_agent`] runs, with `overrides` replacing the values of the
    /// flags they name (`--pin-dir`, `--state-dir`, `--socket`, ...; clap refuses a flag given
    /// twice) and standard streams left to the caller. Defaults are left out for flags that
    /// `agent_args` gives, and `--manifests` (the standalone source's) when `agent_args` choose
    /// `--source kubernetes`, which refuses it.
    pub fn agent_command(&self, overrides: &[(&str, &str)]) -> Command {
        let kubernetes = self
            .agent_args
            .windows(2)
            .any(|w| w[0] == "--source" && w[1] == "kubernetes")
            || self.agent_args.iter().any(|a| a == "--source=kubernetes");
        let state = self.state_dir();
        let node_name = self.node_name.clone().unwrap_or_default();
        let (netns, manifests, pins, socket, state) = (
            self.bed.node_path().display().to_string(),
            self.manifests.display().to_string(),
            self.pin_dir.display().to_string(),
            self.socket.display().to_string(),
            state.display().to_string(),
        );
        // Defaults for tests, unless the caller passes the flag itself.
        let flags = [
            ("--netns", netns.as_str()),
            ("--manifests", &manifests),
            ("--pin-dir", &pins),
            ("--socket", &socket),
            ("--state-dir", &state),
            ("--health-addr", "127.0.0.1:9876"),
            ("--poll-interval", "50ms"),
            ("--deny-event-interval", "0ms"),
            ("--node-name", &node_name),
        ];
        let mut c = match self.agent_prefix.split_first() {
            None => Command::new(&self.bins.agent),
            Some((wrapper, args)) => {
                let mut c = Command::new(wrapper);
                c.args(args).arg(&self.bins.agent);
                c
            }
        };
        for (flag, value) in flags {
            if self
                .agent_args
                .iter()
                .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
                || (flag == "--node-name" && self.node_name.is_none())
                || (flag == "--manifests" && kubernetes)
            {
                continue;
            }
            let value = overrides
                .iter()
                .find(|(f, _)| *f == flag)
                .map_or(value, |(_, v)| *v);
            c.args([flag, value]);
        }
        c.args(&self.agent_args).env("SEPTA_LOG", &self.log_filter);
        c
    }

    /// Start the agent and wait until it answers `Status` ok.
    pub fn start_agent(&mut self) -> Result<()> {
        if self.agent.is_some() {
            bail!("agent already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))?;
        let child = self
            .agent_command(&[])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bins.agent.display()))?;
        self.agent = Some(child);
        let (socket, mut child) = (self.socket.clone(), self.agent.take());
        let ready = poll_until(self.ready_timeout, || {
            if child
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_some())
            {
                return Some(false); // exited
            }
            cni::plugin::call_agent(&socket, &Request::Status, Duration::from_secs(1))
                .ok()
                .filter(|r| r.ok)
                .map(|_| true)
        });
        self.agent = child;
        if ready == Some(false) {
            // It exited: reaped and forgotten, so the node can start another.
            if let Some(mut c) = self.agent.take() {
                let _ = c.wait();
            }
        }
        if ready != Some(true) {
            bail!(
                "agent not ready (it exited, or not within {:?}); log:\n{}",
                self.ready_timeout,
                self.agent_log()
            );
        }
        Ok(())
    }

    /// Stop the agent with SIGTERM and wait for it.
    pub fn stop_agent(&mut self) -> Result<()> {
        if let Some(mut c) = self.agent.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let status = c.wait()?;
            if !status.success() {
                bail!("agent exited with {status}; log:\n{}", self.agent_log());
            }
        }
        Ok(())
    }

    /// The agent's process id, while it runs.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(|c| c.id())
    }

    /// Whether the agent process is still running.
    pub fn agent_running(&mut self) -> bool {
        self.agent
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// The agent's log so far.
    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Create a pod: a network namespace, then CNI ADD through the chain. `labels` is
    /// `k=v,k2=v2`.
    pub fn add_pod(&mut self, namespace: &str, name: &str, labels: &str) -> Result<Attachment> {
        self.add_pod_with(namespace, name, labels, None)
    }

    /// [`Node::add_pod`] asking host-local IPAM for this address (its `IP` CNI argument), as
    /// when an address freed by a deleted pod is given to the next one.
    pub fn add_pod_with_ip(
        &mut self,
        namespace: &str,
        name: &str,
        ip: std::net::IpAddr,
    ) -> Result<Attachment> {
        self.add_pod_with(namespace, name, "", Some(ip))
    }

    fn add_pod_with(
        &mut self,
        namespace: &str,
        name: &str,
        labels: &str,
        address: Option<std::net::IpAddr>,
    ) -> Result<Attachment> {
        let labels = labels.replace('=', ":");
        let netns = format!("septa-{}-{name}", self.bed.id);
        ip(&["netns", "add", &netns])?;
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        let mut args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};SEPTA_LABELS={labels}");
        if let Some(a) = address {
            args.push_str(&format!(";IP={a}"));
        }
        let path = PathBuf::from("/run/netns").join(&netns);
        let a = match self.runtime.add(&format!("c-{name}"), &path, "eth0", &args) {
            Ok(a) => a,
            Err(e) => {
                // As a runtime does after a failed ADD: DEL the chain, drop the namespace.
                let failed = Attachment {
                    container_id: format!("c-{name}"),
                    netns: path,
                    ifname: "eth0".into(),
                    args,
                    result: serde_json::Value::Null,
                };
                let _ = self.runtime.del(&failed);
                let _ = ip(&["netns", "del", &netns]);
                return Err(anyhow::anyhow!("CNI ADD {namespace}/{name}: {e}"));
            }
        };
        self.pods.push((netns, a.clone()));
        Ok(a)
    }

    /// Give a pod a default route through the node (the bridge's address: the gateway of its
    /// CNI result), for traffic beyond the pod network: the test network's IPAM gives pods their
    /// subnet route only (unless [`PodNetwork::default_route`]).
    pub fn route_via_node(a: &Attachment) -> Result<()> {
        let ns = a.netns.file_name().context("pod netns")?.to_string_lossy();
        let gateway = a.result["ips"][0]["gateway"]
            .as_str()
            .unwrap_or(NODE_GATEWAY);
        ip(&["-n", &ns, "route", "add", "default", "via", gateway])
    }

    /// The pod's IPv4 address from its CNI result.
    pub fn pod_ip(a: &Attachment) -> std::net::IpAddr {
        let cidr = a.result["ips"][0]["address"].as_str().unwrap_or_default();
        cidr.split('/')
            .next()
            .unwrap_or_default()
            .parse()
            .expect("pod address")
    }

    /// Delete a pod (CNI DEL, then its namespace).
    pub fn del_pod(&mut self, name: &str) -> Result<()> {
        let i = self
            .pods
            .iter()
            .position(|(_, a)| a.container_id == format!("c-{name}"))
            .context("no such pod")?;
        let (netns, a) = self.pods.remove(i);
        self.runtime
            .del(&a)
            .map_err(|e| anyhow::anyhow!("CNI DEL {name}: {e}"))?;
        ip(&["netns", "del", &netns])?;
        Ok(())
    }

    /// The namespace path of a pod.
    pub fn netns_of(a: &Attachment) -> &Path {
        &a.netns
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for (_, a) in self.pods.clone().iter().rev() {
            let _ = self.runtime.del(a);
        }
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for (ns, _) in &self.pods {
            let _ = ip(&["netns", "del", ns]);
        }
        // Remove enforcement state: pins of maps and of links (in subdirectories).
        super::remove_pins(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `GET path` from the agent's health listener (127.0.0.1:9876 inside `node`).
pub fn http_get(node: &Path, path: &str) -> String {
    use std::io::{Read, Write};
    hostnet::netns::in_netns(node, || -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect("127.0.0.1:9876")?;
        s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .ok()
    .and_then(Result::ok)
    .unwrap_or_default()
}

/// The value of the first metric line starting with `name_and_labels` (0 when absent).
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Every record of a JSON-lines flow log (none if it does not exist yet).
pub fn flow_records(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Check Prometheus text exposition with `promtool check metrics` (the real tool, installed by
/// scripts/setup.sh); panics with promtool's complaint and the text.
pub fn promtool_check(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (apt package prometheus) must be installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics rejected the metrics:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(c: &Command) -> Vec<String> {
        c.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    /// The defaults give way to the caller's flags; `--source kubernetes` drops `--manifests`.
    #[test]
    fn agent_flags_from_defaults_and_agent_args() {
        let bins = Binaries {
            agent: "/bin/true".into(),
            cni_dir: "/nonexistent".into(),
        };
        let mut n = Node::new("flags", bins).unwrap();
        let a = args(&n.agent_command(&[]));
        assert!(a.contains(&"--manifests".into()), "{a:?}");
        assert!(!a.contains(&"--node-name".into()), "{a:?}");
        n.node_name = Some("node-7".into());
        n.agent_args = [
            "--source",
            "kubernetes",
            "--kubeconfig",
            "/k",
            "--poll-interval=1s",
        ]
        .map(String::from)
        .into();
        let a = args(&n.agent_command(&[]));
        assert!(!a.contains(&"--manifests".into()), "{a:?}");
        assert!(!a.contains(&"--poll-interval".into()), "{a:?}");
        let i = a
            .iter()
            .position(|x| x == "--node-name")
            .expect("--node-name");
        assert_eq!(a[i + 1], "node-7");
    }
}
