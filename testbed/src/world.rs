//! A multi-node cluster as network namespaces: an **underlay** namespace whose bridge is the
//! switch between nodes (and hosts the cluster's service address, where a fake API server
//! listens), and N [`Node`]s, each with its own pod subnet, joined to the switch by a veth, with
//! routes between their pod subnets as flannel writes them (host-gw, or a VXLAN overlay).
//!
//! Phases: [`World::new`] builds the underlay, the nodes and the routes (no agent runs yet; no
//! pod exists); the caller sets agent flags on `world.nodes[i]` and starts the agents
//! ([`World::start_agents`]); pods are made through each node's real CNI chain
//! ([`Node::add_pod`]); drop removes nodes (agents, pods, pins) and then the underlay.
//! [`Backend`] and [`udp_request`] are the servers and client that tell which address a backend
//! saw and which address answered.
//!
//! Address plan (every namespace is the world's own, so parallel worlds reuse it):
//!
//! | what | address |
//! |---|---|
//! | underlay switch `sw0`, service address (API server) | [`SERVICE_ADDRESS`] 172.30.0.1/24 |
//! | node i, veth `ul0` to the switch (`n<i>` on the switch) | 172.30.0.(10+i)/24, default route via 172.30.0.1 |
//! | node i pod subnet, bridge `cni-septa0` = gateway | 10.88.i.0/24, 10.88.i.1 |
//! | cluster pod CIDR (all nodes) | [`CLUSTER_CIDR`] 10.88.0.0/16 |
//! | VXLAN: device `flannel.1` in node i, VNI 1, UDP 8472 | 10.88.i.0/32, MAC 0a:58:0a:58:i:00, MTU 1450 |

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result};

use super::{
    bed::ip,
    node::{Binaries, Node, PodNetwork},
};

/// The cluster's pod CIDR: every node's pod subnet is a /24 in it.
pub const CLUSTER_CIDR: &str = "10.88.0.0/16";
/// The address of cluster services on the underlay (the fake API server listens here); nodes
/// reach it directly from their namespaces.
pub const SERVICE_ADDRESS: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
/// The underlay MTU (veths default).
const UNDERLAY_MTU: u32 = 1500;
/// flannel's VXLAN overhead: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
const VXLAN_OVERHEAD: u32 = 50;
/// The VXLAN device, VNI and port flannel's vxlan backend uses (port 8472, the Linux default,
/// not IANA's 4789).
const VXLAN_DEV: &str = "flannel.1";
const VXLAN_VNI: &str = "1";
const VXLAN_PORT: &str = "8472";

/// How pod traffic crosses between nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overlay {
    /// Plain routes: in node i, `10.88.j.0/24 via <node j's underlay address>` (flannel's
    /// host-gw backend; needs the nodes on one L2 segment, as here).
    HostGw,
    /// A VXLAN overlay (flannel's vxlan backend): per peer node j, a route `10.88.j.0/24 via
    /// 10.88.j.0 dev flannel.1 onlink`, a permanent neighbour entry for 10.88.j.0 with j's VTEP
    /// MAC, and an FDB entry sending that MAC to j's underlay address; pods' MTU 1450.
    Vxlan,
}

/// A cluster of nodes on an underlay switch. `nodes[i]` is named [`World::node_name`]`(i)`.
pub struct World {
    /// The nodes, in order (node-0, node-1, ...).
    pub nodes: Vec<Node>,
    /// How pod traffic crosses nodes.
    pub overlay: Overlay,
    underlay: String,
}

impl World {
    /// Build the underlay, `n` nodes (each with a pod subnet, its default route, its link to the
    /// switch) and the routes between pod subnets. Agents are not started (set flags on
    /// `nodes[i]`, then [`World::start_agents`]).
    pub fn new(tag: &str, n: usize, overlay: Overlay, bins: Binaries) -> Result<Self> {
        crate::require_root("a world of network namespaces");
        anyhow::ensure!(n <= 200, "the address plan has room for 200 nodes");
        static N: AtomicU32 = AtomicU32::new(0);
        let underlay = format!(
            "septa-{}{}-{tag}-underlay",
            std::process::id() % 100_000,
            N.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &underlay])?;
        // From here on, drop cleans up whatever was made.
        let mut world = World {
            nodes: Vec::new(),
            overlay,
            underlay,
        };
        let ul = |args: &[&str]| -> Result<()> {
            let mut a = vec!["-n", world.underlay.as_str()];
            a.extend_from_slice(args);
            ip(&a)
        };
        ul(&["link", "set", "lo", "up"])?;
        ul(&["link", "add", "sw0", "type", "bridge"])?;
        ul(&[
            "addr",
            "add",
            &format!("{SERVICE_ADDRESS}/24"),
            "dev",
            "sw0",
        ])?;
        ul(&["link", "set", "sw0", "up"])?;

        let pod_mtu = match overlay {
            Overlay::HostGw => None,
            Overlay::Vxlan => Some(UNDERLAY_MTU - VXLAN_OVERHEAD),
        };
        for i in 0..n {
            let pods = PodNetwork {
                subnet: Self::pod_cidr(i),
                mtu: pod_mtu,
                default_route: true,
            };
            let mut node = Node::with_pod_network(&format!("{tag}-n{i}"), bins.clone(), pods)?;
            node.node_name = Some(Self::node_name(i));
            world.nodes.push(node);
            world.join_underlay(i)?;
        }
        for i in 0..n {
            match overlay {
                Overlay::HostGw => world.host_gw_routes(i)?,
                Overlay::Vxlan => world.vxlan(i)?,
            }
        }
        Ok(world)
    }

    /// `node-<i>`: the node's name (its agent's `--node-name`; a Pod's `spec.nodeName`).
    pub fn node_name(i: usize) -> String {
        format!("node-{i}")
    }

    /// Node i's underlay address, 172.30.0.(10+i) (its InternalIP; where NodePorts answer).
    pub fn node_address(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(172, 30, 0, 10 + i as u8)
    }

    /// Node i's pod subnet, `10.88.<i>.0/24` (its `spec.podCIDR`).
    pub fn pod_cidr(i: usize) -> String {
        format!("10.88.{i}.0/24")
    }

    /// Path of node i's network namespace.
    pub fn node_netns(&self, i: usize) -> PathBuf {
        self.nodes[i].bed.node_path()
    }

    /// Path of the underlay namespace (where [`SERVICE_ADDRESS`] lives).
    pub fn underlay_netns(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.underlay)
    }

    /// A listener on [`SERVICE_ADDRESS`], port 0 (the kernel picks), in the underlay namespace:
    /// for the fake API server, which every node reaches from its own namespace.
    pub fn api_listener(&self) -> Result<TcpListener> {
        hostnet::netns::in_netns(&self.underlay_netns(), || {
            TcpListener::bind((SERVICE_ADDRESS, 0))
        })?
        .context("listening on the underlay's service address")
    }

    /// Start every node's agent (with its `agent_args`) and wait until all are ready; they start
    /// side by side, so the wait is the slowest one's.
    pub fn start_agents(&mut self) -> Result<()> {
        std::thread::scope(|s| {
            let started: Vec<_> = self
                .nodes
                .iter_mut()
                .enumerate()
                .map(|(i, n)| s.spawn(move || n.start_agent().with_context(|| Self::node_name(i))))
                .collect();
            started
                .into_iter()
                .try_for_each(|t| t.join().expect("start_agent panicked"))
        })
    }

    /// A veth from the switch to node i, with its underlay address and default route.
    fn join_underlay(&self, i: usize) -> Result<()> {
        let node = self.nodes[i].bed.node.clone();
        let port = format!("n{i}");
        let ul = |args: &[&str]| -> Result<()> {
            let mut a = vec!["-n", self.underlay.as_str()];
            a.extend_from_slice(args);
            ip(&a)
        };
        ul(&[
            "link", "add", &port, "type", "veth", "peer", "name", "ul0", "netns", &node,
        ])?;
        ul(&["link", "set", &port, "master", "sw0"])?;
        ul(&["link", "set", &port, "up"])?;
        let bed = &self.nodes[i].bed;
        let addr = format!("{}/24", Self::node_address(i));
        bed.exec(&["addr", "add", &addr, "dev", "ul0"])?;
        bed.exec(&["link", "set", "ul0", "up"])?;
        // The underlay is the nodes' way out (as a node's default gateway is): a ClusterIP
        // needs a route before the node's own OUTPUT DNAT can rewrite it.
        bed.exec(&[
            "route",
            "add",
            "default",
            "via",
            &SERVICE_ADDRESS.to_string(),
        ])
    }

    /// host-gw: in node i, each other node's pod subnet via that node's underlay address.
    fn host_gw_routes(&self, i: usize) -> Result<()> {
        for j in (0..self.nodes.len()).filter(|&j| j != i) {
            self.nodes[i].bed.exec(&[
                "route",
                "add",
                &Self::pod_cidr(j),
                "via",
                &Self::node_address(j).to_string(),
                "dev",
                "ul0",
            ])?;
        }
        Ok(())
    }

    /// Node j's VTEP MAC. flannel lets the kernel choose and publishes it in a Node annotation;
    /// a fixed, locally administered one saves the exchange.
    fn vtep_mac(j: usize) -> String {
        format!("0a:58:0a:58:{j:02x}:00")
    }

    /// Node j's VTEP address: the network address of its pod subnet (flannel's choice).
    fn vtep_ip(j: usize) -> String {
        format!("10.88.{j}.0")
    }

    /// VXLAN: node i's `flannel.1` and, per peer node j, what flannel's vxlan backend writes on
    /// learning of j: route, neighbour (ARP) entry, FDB entry.
    fn vxlan(&self, i: usize) -> Result<()> {
        let bed = &self.nodes[i].bed;
        let mtu = (UNDERLAY_MTU - VXLAN_OVERHEAD).to_string();
        bed.exec(&[
            "link",
            "add",
            VXLAN_DEV,
            "address",
            &Self::vtep_mac(i),
            "mtu",
            &mtu,
            "type",
            "vxlan",
            "id",
            VXLAN_VNI,
            "local",
            &Self::node_address(i).to_string(),
            "dev",
            "ul0",
            "dstport",
            VXLAN_PORT,
            "nolearning",
        ])?;
        bed.exec(&[
            "addr",
            "add",
            &format!("{}/32", Self::vtep_ip(i)),
            "dev",
            VXLAN_DEV,
        ])?;
        bed.exec(&["link", "set", VXLAN_DEV, "up"])?;
        for j in (0..self.nodes.len()).filter(|&j| j != i) {
            let (mac, vtep) = (Self::vtep_mac(j), Self::vtep_ip(j));
            bed.exec(&[
                "neigh",
                "replace",
                &vtep,
                "lladdr",
                &mac,
                "dev",
                VXLAN_DEV,
                "nud",
                "permanent",
            ])?;
            // `bridge fdb` is iproute2's too; `ip` has no fdb command.
            bridge(&[
                "-n",
                &bed.node,
                "fdb",
                "replace",
                &mac,
                "dev",
                VXLAN_DEV,
                "dst",
                &Self::node_address(j).to_string(),
                "self",
                "permanent",
            ])?;
            bed.exec(&[
                "route",
                "add",
                &Self::pod_cidr(j),
                "via",
                &vtep,
                "dev",
                VXLAN_DEV,
                "onlink",
            ])?;
        }
        Ok(())
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Nodes first (agents, pods, pins, node namespaces: their veths to the switch go with
        // them), then the switch.
        self.nodes.clear();
        let _ = ip(&["netns", "del", &self.underlay]);
    }
}

/// Run iproute2's `bridge`; fail with its stderr.
fn bridge(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("bridge")
        .args(args)
        .output()
        .context("running bridge (iproute2)")?;
    anyhow::ensure!(
        out.status.success(),
        "bridge {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// A backend in a pod: a TCP echo server and a UDP echo server, each recording the peer
/// address of every connection or datagram, i.e. the client address the backend sees (after
/// whatever NAT the path applied). Stops on drop.
pub struct Backend {
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Backend {
    /// Listen on `0.0.0.0:tcp` and `0.0.0.0:udp` inside `netns`.
    pub fn start(netns: &Path, tcp: u16, udp: u16) -> Result<Self> {
        let peers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let l =
            hostnet::netns::in_netns(netns, || TcpListener::bind((Ipv4Addr::UNSPECIFIED, tcp)))??;
        let u = hostnet::netns::in_netns(netns, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, udp)))??;
        // Short waits so that the threads notice `stop` (a drop, not a synchronisation).
        l.set_nonblocking(true)?;
        u.set_read_timeout(Some(Duration::from_millis(50)))?;
        let (p, s) = (peers.clone(), stop.clone());
        let tcp_thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, peer)) => {
                        // Recorded before the echo, so a client that got its echo back finds
                        // its connection here.
                        p.lock().expect("peers").push(peer);
                        let s = s.clone();
                        conns.push(std::thread::spawn(move || echo_until(c, &s)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        let (p, s) = (peers.clone(), stop.clone());
        let udp_thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = u.recv_from(&mut buf) {
                    p.lock().expect("peers").push(peer);
                    let _ = u.send_to(&buf[..n], peer);
                }
            }
        });
        Ok(Backend {
            peers,
            stop,
            threads: vec![tcp_thread, udp_thread],
        })
    }

    /// Every peer seen so far (TCP connections and UDP datagrams), in order.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().expect("peers").clone()
    }

    /// How many connections and datagrams came so far.
    pub fn count(&self) -> usize {
        self.peers.lock().expect("peers").len()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Echo what `c` sends until it closes or `stop` is set.
fn echo_until(mut c: TcpStream, stop: &AtomicBool) {
    let _ = c.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = [0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) {
        match c.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if c.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// Send `msg` in one UDP datagram from inside `netns` to `to` and wait for the answer (up to
/// [`crate::traffic::PROBE_WAIT`]); returns the answer's source address, which NAT on the way
/// back must have made `to` again.
pub fn udp_request(netns: &Path, to: SocketAddr, msg: &[u8]) -> Result<SocketAddr> {
    let s = hostnet::netns::in_netns(netns, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))??;
    s.set_read_timeout(Some(crate::traffic::PROBE_WAIT))?;
    s.send_to(msg, to)?;
    let mut buf = [0u8; 2048];
    let (n, from) = s
        .recv_from(&mut buf)
        .with_context(|| format!("no answer from {to}"))?;
    anyhow::ensure!(
        &buf[..n] == msg,
        "answer from {from} differs from the request"
    );
    Ok(from)
}
