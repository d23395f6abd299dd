//! The multi-node test world and kube-proxy emulation, end to end: three nodes on an underlay
//! switch, each running the real standalone `septa-agent` (no policies: everything allowed)
//! in its namespace, pods made through each node's real CNI chain (bridge + host-local +
//! septa-cni), pod subnets joined by host-gw routes or a VXLAN overlay, and Services reached
//! through the NAT rules kube-proxy writes, in iptables and in nftables mode. Real sockets
//! throughout; one world per overlay (building one takes seconds).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::PathBuf,
    time::Duration,
};

use serde_json::json;
use testbed::{
    cni::Attachment,
    kubeproxy::{EndpointSlice, KubeProxy, Mode, Service},
    node::{Binaries, Node},
    traffic::{echo, poll_until, tcp_connect},
    world::{udp_request, Backend, Overlay, World, CLUSTER_CIDR},
};

/// A deadline, not a measurement: generous for a loaded two-core machine.
const DEADLINE: Duration = Duration::from_secs(30);
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// An external IP of the Service: no interface has it; node-0 routes it (default route) and
/// kube-proxy's rules catch it before it leaves.
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const NODE_PORT: u16 = 30080;
const UDP_NODE_PORT: u16 = 30053;

fn bins() -> Binaries {
    // The workspace build puts the agent and the plugin next to the package's own binary.
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_septa-demo"))
        .parent()
        .unwrap()
        .to_owned();
    let agent = dir.join("septa-agent");
    assert!(
        agent.exists() && dir.join("septa-cni").exists(),
        "{} or septa-cni missing: build the workspace (`cargo build -p agent -p cni`)",
        agent.display()
    );
    Binaries {
        agent,
        cni_dir: dir,
    }
}

fn ip(a: &Attachment) -> IpAddr {
    Node::pod_ip(a)
}

fn ip4(a: &Attachment) -> Ipv4Addr {
    match ip(a) {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => panic!("pod address {v6} is not IPv4"),
    }
}

/// Service `demo/web`: TCP 80 → `http` 8080 (NodePort 30080), UDP 53 → `dns` 5353 (NodePort
/// 30053), with an external IP.
fn service() -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "demo", "name": "web"},
        "spec": {
            "type": "NodePort",
            "clusterIP": CLUSTER_IP.to_string(),
            "externalIPs": [EXTERNAL_IP.to_string()],
            "selector": {"app": "web"},
            "ports": [
                {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": NODE_PORT},
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353, "nodePort": UDP_NODE_PORT}
            ]
        }
    }))
    .unwrap()
}

/// The Service's EndpointSlice, one endpoint per `(address, ready)`.
fn slice(endpoints: &[(Ipv4Addr, bool)]) -> EndpointSlice {
    let eps: Vec<_> = endpoints
        .iter()
        .map(|(a, ready)| json!({"addresses": [a.to_string()], "conditions": {"ready": ready}}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "demo", "name": "web-x1",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                  {"name": "dns", "port": 5353, "protocol": "UDP"}],
        "endpoints": eps
    }))
    .unwrap()
}

/// One TCP connection from `from` to `to` with an echo of `len` bytes.
fn tcp_echo(from: &Attachment, to: SocketAddr, len: usize) -> anyhow::Result<()> {
    let mut c = tcp_connect(&from.netns, to)?;
    let msg: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    echo(&mut c, &msg)
}

/// The last peer a backend saw.
fn last_peer(b: &Backend) -> IpAddr {
    b.peers().last().expect("a peer").ip()
}

/// How many connections and datagrams each backend has seen.
fn counts(c: &Cluster) -> Vec<usize> {
    c.backends.iter().map(Backend::count).collect()
}

/// The backend that saw something since `before` (a request answered, so one did).
fn served_by<'a>(c: &'a Cluster, before: &[usize]) -> &'a Backend {
    c.backends
        .iter()
        .zip(before)
        .find(|(b, &n)| b.count() > n)
        .map(|(b, _)| b)
        .expect("a backend served the request")
}

/// Fields drop in order: servers, then the world (agents, pods, nodes, underlay).
struct Cluster {
    backends: [Backend; 2],
    client: Attachment,
    web: [Attachment; 2],
    world: World,
}

/// Three nodes with their agents; a client pod on node-0, web pods on node-1 and node-2, each
/// serving TCP 8080 and UDP 5353.
fn cluster(tag: &str, overlay: Overlay) -> Cluster {
    testbed::require_root("the multi-node world");
    let mut world = World::new(tag, 3, overlay, bins()).unwrap();
    for n in &world.nodes {
        n.write_manifest(
            "00-namespace.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n",
        )
        .unwrap();
    }
    world.start_agents().unwrap();
    // Every node reaches the underlay's service address (where the API server will listen).
    let api = world.api_listener().unwrap();
    let api_addr = api.local_addr().unwrap();
    for i in 0..world.nodes.len() {
        let c = hostnet::netns::in_netns(&world.node_netns(i), || TcpStream::connect(api_addr))
            .unwrap()
            .unwrap_or_else(|e| panic!("node-{i} -> {api_addr}: {e}"));
        let (_, peer) = api.accept().unwrap();
        assert_eq!(peer.ip(), IpAddr::from(World::node_address(i)));
        drop(c);
    }
    let client = world.nodes[0]
        .add_pod("demo", "client", "app=client")
        .unwrap();
    let web1 = world.nodes[1].add_pod("demo", "web-1", "app=web").unwrap();
    let web2 = world.nodes[2].add_pod("demo", "web-2", "app=web").unwrap();
    let backends = [
        Backend::start(&web1.netns, 8080, 5353).unwrap(),
        Backend::start(&web2.netns, 8080, 5353).unwrap(),
    ];
    for (i, a) in [&client, &web1, &web2].into_iter().enumerate() {
        let subnet = World::pod_cidr(i);
        let prefix = subnet.trim_end_matches("0/24");
        assert!(
            ip(a).to_string().starts_with(prefix),
            "pod {} on node-{i} has {} outside {subnet}",
            a.container_id,
            ip(a)
        );
    }
    Cluster {
        world,
        client,
        web: [web1, web2],
        backends,
    }
}

/// A pod on node-0 reaches the pods on node-1 and node-2 directly, with `len` bytes each way,
/// and each backend sees the client's own address.
fn pod_to_pod(c: &Cluster, len: usize) {
    for (web, b) in c.web.iter().zip(&c.backends) {
        let to = SocketAddr::new(ip(web), 8080);
        tcp_echo(&c.client, to, len).unwrap_or_else(|e| panic!("client -> {to}: {e:#}"));
        assert_eq!(
            last_peer(b),
            ip(&c.client),
            "the backend sees the client pod"
        );
    }
}

/// Services through kube-proxy's rules on node-0 in `mode`: ClusterIP (TCP, spread over both
/// ready endpoints, the client's address kept; UDP answered from the ClusterIP), NodePort on
/// node-0's own address (masqueraded), external IP; a re-sync with one endpoint not ready
/// replaces the rules; a flush removes them.
fn services(c: &Cluster, mode: Mode) {
    let kp = KubeProxy::new(&c.world.node_netns(0), mode, CLUSTER_CIDR);
    let (w1, w2) = (ip4(&c.web[0]), ip4(&c.web[1]));
    let svc = [service()];
    kp.sync(&svc, &[slice(&[(w1, true), (w2, true)])])
        .unwrap_or_else(|e| panic!("{mode:?} sync: {e:#}"));
    let listing = kp.listing().unwrap();
    let expect = match mode {
        Mode::Iptables => "KUBE-SVC-",
        Mode::Nftables => "service-ips",
    };
    assert!(listing.contains(expect), "{mode:?} rules:\n{listing}");

    // ClusterIP, TCP: every new connection picks an endpoint at random; poll until both served.
    let cluster_ip = SocketAddr::from((CLUSTER_IP, 80));
    let before = counts(c);
    let seen = poll_until(DEADLINE, || {
        tcp_echo(&c.client, cluster_ip, 64).ok()?;
        (counts(c).iter().zip(&before).all(|(now, then)| now > then)).then_some(())
    });
    assert!(
        seen.is_some(),
        "{mode:?}: ClusterIP connections reached both endpoints (counts {} and {})",
        c.backends[0].count(),
        c.backends[1].count()
    );
    for b in &c.backends {
        assert_eq!(
            last_peer(b),
            ip(&c.client),
            "{mode:?}: a ClusterIP backend sees the client pod's own address, not the node's"
        );
    }

    // ClusterIP, UDP: the answer comes back from the ClusterIP (conntrack undoes the DNAT).
    let udp_ip = SocketAddr::from((CLUSTER_IP, 53));
    let before = counts(c);
    let from = udp_request(&c.client.netns, udp_ip, b"query")
        .unwrap_or_else(|e| panic!("{mode:?}: UDP through the ClusterIP: {e:#}"));
    assert_eq!(from, udp_ip, "{mode:?}: the UDP answer's source");
    assert_eq!(
        last_peer(served_by(c, &before)),
        ip(&c.client),
        "{mode:?}: a UDP backend sees the client pod"
    );

    // NodePort on the client's own node: externalTrafficPolicy Cluster masquerades it, so the
    // backend (on another node) sees one of node-0's addresses.
    let node0 = World::node_address(0);
    let before = counts(c);
    tcp_echo(&c.client, SocketAddr::from((node0, NODE_PORT)), 64)
        .unwrap_or_else(|e| panic!("{mode:?}: NodePort {node0}:{NODE_PORT}: {e:#}"));
    let peer = last_peer(served_by(c, &before));
    let node0_vtep: IpAddr = Ipv4Addr::new(10, 88, 0, 0).into();
    assert!(
        peer == IpAddr::from(node0) || peer == node0_vtep,
        "{mode:?}: a NodePort backend sees node-0 (masquerade), got {peer}"
    );
    let from = udp_request(
        &c.client.netns,
        SocketAddr::from((node0, UDP_NODE_PORT)),
        b"np",
    )
    .expect("UDP NodePort");
    assert_eq!(from, SocketAddr::from((node0, UDP_NODE_PORT)));

    // External IP.
    tcp_echo(&c.client, SocketAddr::from((EXTERNAL_IP, 80)), 64)
        .unwrap_or_else(|e| panic!("{mode:?}: external IP: {e:#}"));

    // Re-sync with web-1 not ready: the new rules replace the old, and only web-2 is used.
    kp.sync(&svc, &[slice(&[(w1, false), (w2, true)])]).unwrap();
    let listing = kp.listing().unwrap();
    assert!(
        !listing.contains(&w1.to_string()) && listing.contains(&w2.to_string()),
        "{mode:?}: the re-sync left only web-2's endpoint chains:\n{listing}"
    );
    let before1 = c.backends[0].count();
    for _ in 0..8 {
        tcp_echo(&c.client, cluster_ip, 64).expect("ClusterIP after the re-sync");
        assert_eq!(last_peer(&c.backends[1]), ip(&c.client));
    }
    assert_eq!(
        c.backends[0].count(),
        before1,
        "{mode:?}: a not-ready endpoint gets no new connections"
    );

    // Flushed: the ClusterIP leads nowhere (node-0 routes it to the underlay, which drops it).
    kp.flush().unwrap();
    assert!(
        tcp_connect(&c.client.netns, cluster_ip).is_err(),
        "{mode:?}: no ClusterIP without kube-proxy's rules"
    );
}

/// The MTU of `dev` in the namespace at `netns` (from `ip -o link`).
fn mtu(netns: &std::path::Path, dev: &str) -> u32 {
    let name = netns.file_name().unwrap().to_string_lossy();
    let out = std::process::Command::new("ip")
        .args(["-n", &name, "-o", "link", "show", "dev", dev])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no mtu for {dev} in {name}: {text}"))
}

/// The device node-0 routes `to` through.
fn route_dev(c: &Cluster, to: IpAddr) -> String {
    let node = &c.world.nodes[0].bed.node;
    let out = std::process::Command::new("ip")
        .args(["-n", node, "-o", "route", "get", &to.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .unwrap_or_else(|| panic!("no route to {to} in node-0: {text}"))
        .to_owned()
}

/// Every agent still runs after the traffic (standalone, no policies: nothing to deny).
fn agents_up(c: &mut Cluster) {
    for (i, n) in c.world.nodes.iter_mut().enumerate() {
        assert!(
            n.agent_running(),
            "node-{i}'s agent exited:\n{}",
            n.agent_log()
        );
    }
}

#[test]
fn host_gw_pods_and_services_across_nodes() {
    let mut c = cluster("hgw", Overlay::HostGw);
    assert_eq!(
        route_dev(&c, ip(&c.web[0])),
        "ul0",
        "host-gw: straight over the underlay"
    );
    assert_eq!(mtu(&c.client.netns, "eth0"), 1500);
    pod_to_pod(&c, 64 * 1024);
    services(&c, Mode::Iptables);
    services(&c, Mode::Nftables);
    agents_up(&mut c);
}

#[test]
fn vxlan_pods_and_services_across_nodes() {
    let mut c = cluster("vxl", Overlay::Vxlan);
    assert_eq!(
        route_dev(&c, ip(&c.web[1])),
        "flannel.1",
        "VXLAN: through the overlay"
    );
    // The encapsulation's 50 bytes come off the pods' MTU, so full-size segments (64 KiB of
    // them below) cross without fragmentation or PMTU discovery.
    assert_eq!(mtu(&c.client.netns, "eth0"), 1450);
    assert_eq!(mtu(&c.world.node_netns(0), "flannel.1"), 1450);
    pod_to_pod(&c, 64 * 1024);
    services(&c, Mode::Nftables);
    services(&c, Mode::Iptables);
    agents_up(&mut c);
}
