//! Kubernetes mode end to end: real `septa-agent`s in node namespaces of a multi-node world
//! (`testbed::world`), each watching the fake API server (`testbed::kubeapi`, the real JSON
//! and watch protocol) through a kubeconfig, pods made through each node's real CNI chain
//! after their Pod objects exist in the API (as a kubelet does), pod routes between nodes
//! (host-gw, and a VXLAN overlay), Services through kube-proxy's iptables and nftables DNAT
//! rules (`testbed::kubeproxy`), and real sockets.
//!
//! Every verdict is compared with the policy engine's reference evaluator run on the same API
//! objects (what `septa connlist` prints for them).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use serde_json::{json, Value};
use testbed::{
    cni::Attachment,
    kubeapi::{FakeApi, Rbac},
    kubeproxy::{EndpointSlice, KubeProxy, Mode, Service},
    node::{metric, Binaries, Node},
    traffic::{echo, poll_until, tcp_connect, Server},
    world::{Backend, Overlay, World, CLUSTER_CIDR},
};

/// A deadline, not a measurement: generous for a loaded two-core machine.
const DEADLINE: Duration = Duration::from_secs(30);
const TOKEN: &str = "septa-agent-token";

/// The Helm chart rendered with its default values (`helm template`, as `helm install`
/// would apply it), as JSON documents.
fn chart() -> &'static [Value] {
    static DOCS: std::sync::OnceLock<Vec<Value>> = std::sync::OnceLock::new();
    DOCS.get_or_init(|| {
        let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/septa");
        let out = std::process::Command::new("helm")
            .args(["template", "septa", chart, "--namespace", "septa"])
            .output()
            .unwrap_or_else(|e| panic!("helm: {e} (scripts/setup.sh installs it)"));
        assert!(
            out.status.success(),
            "helm template: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("helm prints UTF-8");
        serde_yaml::Deserializer::from_str(&text)
            .filter_map(|d| {
                let v: Value = serde::Deserialize::deserialize(d).expect("helm renders YAML");
                (!v.is_null()).then_some(v)
            })
            .collect()
    })
}

/// What the chart's RBAC objects grant the agent's ServiceAccount.
fn chart_rbac() -> Rbac {
    Rbac::from_manifests(chart(), "septa", "septa-agent").expect("the chart's RBAC")
}

/// The chart's agent DaemonSet.
fn chart_daemonset() -> Value {
    chart()
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("the chart renders a DaemonSet")
        .clone()
}

/// A world of nodes whose agents watch one fake API server.
struct Cluster {
    world: World,
    api: FakeApi,
}

impl Cluster {
    fn new(tag: &str, nodes: usize, overlay: Overlay) -> Self {
        Self::with(tag, nodes, overlay, |_, _| {})
    }

    /// A cluster whose API server authorizes the agents with the RBAC rules of the rendered
    /// Helm chart; `setup` runs before the agents start (flags, conf dirs, more objects).
    fn with(
        tag: &str,
        nodes: usize,
        overlay: Overlay,
        setup: impl FnOnce(&mut World, &FakeApi),
    ) -> Self {
        testbed::require_root("Kubernetes-mode end-to-end tests");
        let bins = Binaries::for_agent(env!("CARGO_BIN_EXE_septa-agent"));
        let mut world = World::new(tag, nodes, overlay, bins).expect("world");
        let api = FakeApi::start(world.api_listener().expect("listener")).expect("fake API");
        api.add_user(TOKEN, "system:serviceaccount:septa:septa-agent");
        api.set_rbac(Some(chart_rbac()));
        let kubeconfig = world.nodes[0].dir.join("kubeconfig");
        api.kubeconfig(&kubeconfig, TOKEN).expect("kubeconfig");
        for ns in ["shop", "other"] {
            api.apply(&namespace(ns, &[("team", ns)])).unwrap();
        }
        for n in &mut world.nodes {
            n.agent_args.extend(
                [
                    "--source",
                    "kubernetes",
                    "--kubeconfig",
                    &kubeconfig.display().to_string(),
                    "--pod-wait",
                    "2s",
                    "--flow-log",
                    &n.dir.join("flows.jsonl").display().to_string(),
                ]
                .map(String::from),
            );
        }
        setup(&mut world, &api);
        world.start_agents().expect("agents ready");
        Cluster { world, api }
    }

    /// A pod on node `node`: its Pod object first, then the CNI chain, then its address in
    /// the Pod's status (as the kubelet reports it).
    fn pod(&mut self, node: usize, ns: &str, name: &str, labels: &[(&str, &str)]) -> Attachment {
        self.api.apply(&pod(node, ns, name, labels, None)).unwrap();
        let a = self.world.nodes[node]
            .add_pod(ns, name, "")
            .unwrap_or_else(|e| panic!("CNI ADD {ns}/{name}: {e}\n{}", self.logs()));
        self.api
            .apply(&pod(node, ns, name, labels, Some(Node::pod_ip(&a))))
            .unwrap();
        a
    }

    /// What the reference evaluator says of `from` → `to`:`port`, for the objects in the API.
    fn expected(&self, from: (&str, &str), to: (&str, &str), port: u16) -> bool {
        let mut docs = Vec::new();
        for (v, k) in [
            ("v1", "Namespace"),
            ("v1", "Pod"),
            ("networking.k8s.io/v1", "NetworkPolicy"),
        ] {
            for mut o in self.api.list_json(v, k).unwrap() {
                o["apiVersion"] = json!(v);
                o["kind"] = json!(k);
                if let Some(m) = o["metadata"].as_object_mut() {
                    for f in [
                        "resourceVersion",
                        "uid",
                        "creationTimestamp",
                        "generation",
                        "managedFields",
                    ] {
                        m.remove(f);
                    }
                }
                docs.push(serde_json::to_string(&o).unwrap());
            }
        }
        let (c, d) = policies::load::load_str("api", &docs.join("\n---\n"));
        assert!(d.is_empty(), "the API's objects load: {d:?}");
        let find = |(ns, name): (&str, &str)| {
            c.pods
                .iter()
                .find(|p| p.namespace == ns && p.name == name)
                .unwrap_or_else(|| panic!("pod {ns}/{name}"))
        };
        policies::eval::evaluate(
            &c,
            policies::eval::Endpoint::Pod(find(from)),
            policies::eval::Endpoint::Pod(find(to)),
            policies::model::Protocol::Tcp,
            port,
            false,
        )
        .allowed()
    }

    fn logs(&self) -> String {
        self.world
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("--- node-{i}\n{}", n.agent_log()))
            .collect()
    }
}

fn namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": map(labels)}})).unwrap()
}

fn map(labels: &[(&str, &str)]) -> Value {
    labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn pod(node: usize, ns: &str, name: &str, labels: &[(&str, &str)], ip: Option<IpAddr>) -> Pod {
    let mut v = json!({
        "metadata": {"namespace": ns, "name": name, "labels": map(labels)},
        "spec": {"nodeName": World::node_name(node),
                 "containers": [{"name": "c", "image": "registry.example/app:1",
                                 "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Pending"}
    });
    if let Some(ip) = ip {
        v["status"] = json!({"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]});
    }
    serde_json::from_value(v).unwrap()
}

fn ingress_policy(name: &str, ns: &str, target: &str, from: Value, port: u16) -> NetworkPolicy {
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name},
        "spec": {"podSelector": {"matchLabels": {"app": target}}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": from, "ports": [{"port": port}]}]}
    }))
    .unwrap()
}

fn connects(from: &Attachment, to: SocketAddr) -> bool {
    tcp_connect(&from.netns, to).is_ok_and(|mut s| echo(&mut s, b"ping").is_ok())
}

/// Wait until `from` → `to` gives `want` (the change is enforced), panicking with the agents'
/// logs when it does not within the deadline.
fn until(c: &Cluster, what: &str, from: &Attachment, to: SocketAddr, want: bool) {
    if poll_until(DEADLINE, || (connects(from, to) == want).then_some(())).is_none() {
        panic!(
            "{what}: {to} never became {}\n{}",
            if want { "reachable" } else { "unreachable" },
            c.logs()
        );
    }
}

/// Pods `client` and `guest` on node 0, `web` on node 1 serving TCP 8080, and a policy that
/// lets only `client` reach it, enforced.
struct Scene {
    client: Attachment,
    guest: Attachment,
    web_addr: SocketAddr,
    _server: Server,
}

fn client_only_to_web(c: &mut Cluster) -> Scene {
    let client = c.pod(0, "shop", "client", &[("app", "client")]);
    let guest = c.pod(0, "shop", "guest", &[("app", "guest")]);
    let web = c.pod(1, "shop", "web", &[("app", "web")]);
    let server = Server::start(&web.netns, &[8080], &[]).unwrap();
    let web_addr = addr(&web, 8080);
    c.api
        .apply(&ingress_policy(
            "web",
            "shop",
            "web",
            json!([{"podSelector": {"matchLabels": {"app": "client"}}}]),
            8080,
        ))
        .unwrap();
    until(c, "policy", &guest, web_addr, false);
    assert!(connects(&client, web_addr), "{}", c.logs());
    Scene {
        client,
        guest,
        web_addr,
        _server: server,
    }
}

fn addr(a: &Attachment, port: u16) -> SocketAddr {
    SocketAddr::new(Node::pod_ip(a), port)
}

fn cross_node_enforcement(overlay: Overlay, tag: &str) {
    let mut c = Cluster::new(tag, 3, overlay);
    let client = c.pod(0, "shop", "client", &[("app", "client")]);
    let web = c.pod(1, "shop", "web", &[("app", "web")]);
    let stranger = c.pod(2, "other", "stranger", &[("app", "client")]);
    let _server = Server::start(&web.netns, &[8080, 8081], &[]).unwrap();
    let web_addr = addr(&web, 8080);
    // No policy: everything flows, across nodes, as the evaluator says.
    assert!(c.expected(("shop", "client"), ("shop", "web"), 8080));
    until(&c, "no policy", &client, web_addr, true);
    assert!(connects(&stranger, web_addr));

    // A NetworkPolicy in the API: web admits app=client of its own namespace on 8080.
    let np = ingress_policy(
        "web",
        "shop",
        "web",
        json!([{"podSelector": {"matchLabels": {"app": "client"}}}]),
        8080,
    );
    c.api.apply(&np).unwrap();
    until(&c, "policy added", &stranger, web_addr, false);
    for (from, a, want) in [
        (("shop", "client"), &client, true),
        (("other", "stranger"), &stranger, false),
    ] {
        assert_eq!(
            c.expected(from, ("shop", "web"), 8080),
            want,
            "evaluator {from:?}"
        );
        assert_eq!(connects(a, web_addr), want, "kernel {from:?}\n{}", c.logs());
    }
    assert!(
        !connects(&client, addr(&web, 8081)),
        "8081 is not in the rule"
    );

    // Changed: any pod of a namespace labelled team=other.
    c.api
        .apply(&ingress_policy(
            "web",
            "shop",
            "web",
            json!([{"namespaceSelector": {"matchLabels": {"team": "other"}}}]),
            8080,
        ))
        .unwrap();
    until(&c, "policy changed", &stranger, web_addr, true);
    until(&c, "policy changed", &client, web_addr, false);
    assert!(c.expected(("other", "stranger"), ("shop", "web"), 8080));

    // A namespace label change moves the stranger out of the rule.
    c.api
        .apply(&namespace("other", &[("team", "elsewhere")]))
        .unwrap();
    until(&c, "namespace relabelled", &stranger, web_addr, false);
    assert!(!c.expected(("other", "stranger"), ("shop", "web"), 8080));

    // A pod label change: the rule selects app=client in any namespace; the client's label
    // goes, then comes back.
    c.api
        .apply(&ingress_policy(
            "web",
            "shop",
            "web",
            json!([{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "client"}}}]),
            8080,
        ))
        .unwrap();
    until(&c, "rule by pod label", &client, web_addr, true);
    c.api
        .apply(&pod(
            0,
            "shop",
            "client",
            &[("app", "other")],
            Some(Node::pod_ip(&client)),
        ))
        .unwrap();
    until(&c, "pod relabelled", &client, web_addr, false);
    assert!(!c.expected(("shop", "client"), ("shop", "web"), 8080));

    // Removed: back to no isolation.
    c.api.delete::<NetworkPolicy>("shop", "web").unwrap();
    until(&c, "policy removed", &client, web_addr, true);
    assert!(connects(&stranger, web_addr));
}

#[test]
fn cross_node_policy_follows_the_api_host_gw() {
    cross_node_enforcement(Overlay::HostGw, "k8s-hgw");
}

#[test]
fn cross_node_policy_follows_the_api_vxlan() {
    cross_node_enforcement(Overlay::Vxlan, "k8s-vx");
}

/// A reused address is never judged as the pod that had it before: on the node where the
/// address is reused (registration orders it), and on another node (the newer claim wins as
/// soon as the API shows it). Traffic runs during the swap.
#[test]
fn a_reused_address_never_carries_the_old_identity() {
    let mut c = Cluster::new("k8s-reuse", 2, Overlay::HostGw);
    let db = c.pod(0, "shop", "db", &[("app", "db")]);
    let _server = Server::start(&db.netns, &[5432], &[]).unwrap();
    c.api
        .apply(&ingress_policy(
            "db",
            "shop",
            "db",
            json!([{"podSelector": {"matchLabels": {"role": "trusted"}}}]),
            5432,
        ))
        .unwrap();
    let db_addr = addr(&db, 5432);
    // The policy is in force on node-0 once a guest is refused.
    let probe = c.pod(1, "shop", "probe", &[("role", "guest")]);
    until(&c, "db isolated", &probe, db_addr, false);
    for node in [0, 1] {
        let old = c.pod(node, "shop", &format!("old-{node}"), &[("role", "trusted")]);
        until(&c, "trusted pod admitted", &old, db_addr, true);
        let reused = Node::pod_ip(&old);
        // The old pod goes (API, then sandbox), the new one takes its address.
        c.api.delete::<Pod>("shop", &format!("old-{node}")).unwrap();
        c.world.nodes[node].del_pod(&format!("old-{node}")).unwrap();
        let name = format!("new-{node}");
        c.api
            .apply(&pod(node, "shop", &name, &[("role", "guest")], None))
            .unwrap();
        let new = c.world.nodes[node]
            .add_pod_with_ip("shop", &name, reused)
            .unwrap_or_else(|e| panic!("CNI ADD {name}: {e}\n{}", c.logs()));
        assert_eq!(Node::pod_ip(&new), reused, "the address is reused");
        // From the first packet on, before and after the API reports the address.
        assert!(
            !connects(&new, db_addr),
            "node-{node}: the new pod is judged as the old one\n{}",
            c.logs()
        );
        c.api
            .apply(&pod(
                node,
                "shop",
                &name,
                &[("role", "guest")],
                Some(reused),
            ))
            .unwrap();
        for _ in 0..5 {
            assert!(
                !connects(&new, db_addr),
                "node-{node}: the new pod is judged as the old one"
            );
        }
    }
}

/// Services through kube-proxy: egress policy at the client's veth sees the ClusterIP (or the
/// node port) before the DNAT and judges it by the backends; ingress at the backend sees the
/// real client.
#[test]
fn services_through_kube_proxy_iptables_and_nftables() {
    let mut c = Cluster::new("k8s-svc", 3, Overlay::HostGw);
    let allowed = c.pod(0, "shop", "frontend", &[("app", "frontend")]);
    let denied = c.pod(0, "shop", "batch", &[("app", "batch")]);
    let partial = c.pod(0, "shop", "partial", &[("app", "partial")]);
    let web1 = c.pod(1, "shop", "web-1", &[("app", "web"), ("zone", "a")]);
    let web2 = c.pod(2, "shop", "web-2", &[("app", "web"), ("zone", "b")]);
    let b1 = Backend::start(&web1.netns, 8080, 15353).unwrap();
    let b2 = Backend::start(&web2.netns, 8080, 15354).unwrap();
    let cluster_ip = Ipv4Addr::new(10, 96, 0, 10);
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "shop", "name": "web"},
        "spec": {"type": "NodePort", "clusterIP": cluster_ip.to_string(), "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 30080}]}
    }))
    .unwrap();
    let ip4 = |a: &Attachment| match Node::pod_ip(a) {
        IpAddr::V4(v) => v,
        IpAddr::V6(_) => unreachable!(),
    };
    let slice: EndpointSlice = serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "shop", "name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip4(&web1).to_string()], "conditions": {"ready": true}},
                      {"addresses": [ip4(&web2).to_string()], "conditions": {"ready": true}}]
    }))
    .unwrap();
    c.api.apply(&svc).unwrap();
    c.api.apply(&slice).unwrap();
    // Both clients are egress-isolated; only the frontend may reach app=web on 8080.
    let isolate: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"namespace": "shop", "name": "clients"},
        "spec": {"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["frontend", "batch", "partial"]}]},
                 "policyTypes": ["Egress"], "egress": []}
    }))
    .unwrap();
    let frontend: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"namespace": "shop", "name": "frontend-to-web"},
        "spec": {"podSelector": {"matchLabels": {"app": "frontend"}}, "policyTypes": ["Egress"],
                 "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": 8080}]}]}
    }))
    .unwrap();
    // `partial` may reach one backend of the two: the Service is denied to it.
    let zone_a: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"namespace": "shop", "name": "partial-to-zone-a"},
        "spec": {"podSelector": {"matchLabels": {"app": "partial"}}, "policyTypes": ["Egress"],
                 "egress": [{"to": [{"podSelector": {"matchLabels": {"zone": "a"}}}], "ports": [{"port": 8080}]}]}
    }))
    .unwrap();
    c.api.apply(&isolate).unwrap();
    c.api.apply(&frontend).unwrap();
    c.api.apply(&zone_a).unwrap();
    until(&c, "partial isolated", &partial, addr(&web2, 8080), false);
    assert!(
        connects(&partial, addr(&web1, 8080)),
        "partial reaches its backend directly"
    );
    let vip = SocketAddr::new(cluster_ip.into(), 80);
    let node_port = SocketAddr::new(World::node_address(0).into(), 30080);
    for mode in [Mode::Iptables, Mode::Nftables] {
        let proxies: Vec<_> = (0..3)
            .map(|i| KubeProxy::new(&c.world.node_netns(i), mode, CLUSTER_CIDR))
            .collect();
        for p in &proxies {
            p.sync(std::slice::from_ref(&svc), std::slice::from_ref(&slice))
                .unwrap();
        }
        until(
            &c,
            &format!("{mode:?}: ClusterIP allowed"),
            &allowed,
            vip,
            true,
        );
        assert!(
            !connects(&denied, vip),
            "{mode:?}: denied at the ClusterIP\n{}",
            c.logs()
        );
        assert!(
            !connects(&partial, vip),
            "{mode:?}: a client allowed to one backend of two is denied at the ClusterIP"
        );
        // The backends saw the frontend's own address (ingress after DNAT sees the client).
        let peers: Vec<IpAddr> = b1
            .peers()
            .into_iter()
            .chain(b2.peers())
            .map(|p| p.ip())
            .collect();
        assert!(
            peers.contains(&Node::pod_ip(&allowed)),
            "{mode:?}: backends saw {peers:?}"
        );
        assert!(!peers.contains(&Node::pod_ip(&denied)));
        until(
            &c,
            &format!("{mode:?}: NodePort allowed"),
            &allowed,
            node_port,
            true,
        );
        assert!(
            !connects(&denied, node_port),
            "{mode:?}: denied at the NodePort\n{}",
            c.logs()
        );
        for p in &proxies {
            p.flush().unwrap();
        }
    }
    // node-0's flow records name the Service, and the rule that allowed the frontend.
    let records = testbed::node::flow_records(&c.world.nodes[0].dir.join("flows.jsonl"));
    let to_web = |r: &&Value| r["destination"]["service"] == "web";
    assert!(
        records
            .iter()
            .filter(to_web)
            .any(|r| r["verdict"] == "forwarded"
                && r["policy"]["name"] == "frontend-to-web"
                && r["destination"]["entity"] == "service"),
        "an allowed record names the Service and the rule\n{records:#?}"
    );
    assert!(
        records
            .iter()
            .filter(to_web)
            .any(|r| r["verdict"] == "dropped" && r["source"]["pod"] == "partial"),
        "a denial names the Service"
    );
}

/// The API server goes away for 30 s: enforcement is unchanged meanwhile, a change made
/// meanwhile is applied when it returns; a 410 Gone relists; an agent restart without its
/// registry adopts the running pods without breaking an allowed connection or letting a denied
/// one through; an ADD for a pod the API does not know fails, and succeeds once it appears; a
/// malformed FqdnPolicy keeps its last good version and gets an Event.
#[test]
fn outage_relist_restart_unknown_pods_and_bad_objects() {
    let mut c = Cluster::new("k8s-out", 2, Overlay::HostGw);
    let Scene {
        client,
        guest,
        web_addr,
        _server,
    } = client_only_to_web(&mut c);
    let rogue = c.pod(0, "shop", "rogue", &[("app", "rogue")]);

    // Outage: 30 s of probes, every one as before.
    c.api.stop();
    let until_back = std::time::Instant::now() + Duration::from_secs(30);
    let mut changed = false;
    while std::time::Instant::now() < until_back {
        assert!(
            connects(&client, web_addr),
            "allowed during the outage\n{}",
            c.logs()
        );
        assert!(!connects(&guest, web_addr), "denied during the outage");
        if !changed {
            // Made while the agents cannot see it.
            c.api
                .apply(&ingress_policy(
                    "web",
                    "shop",
                    "web",
                    json!([{"podSelector": {"matchLabels": {"app": "guest"}}}]),
                    8080,
                ))
                .unwrap();
            changed = true;
        }
    }
    c.api.restart().unwrap();
    until(&c, "change made during the outage", &guest, web_addr, true);
    until(
        &c,
        "change made during the outage",
        &client,
        web_addr,
        false,
    );

    // 410 Gone: the history is compacted and the watches cut; the agents relist.
    let lists = |c: &Cluster| {
        c.api
            .requests()
            .iter()
            .filter(|r| r.verb == "list" && r.path.contains("networkpolicies"))
            .count()
    };
    let before = lists(&c);
    c.api.compact();
    c.api
        .apply(&ingress_policy(
            "web",
            "shop",
            "web",
            json!([{"podSelector": {"matchLabels": {"app": "client"}}}]),
            8080,
        ))
        .unwrap();
    until(&c, "after a relist", &client, web_addr, true);
    until(&c, "after a relist", &guest, web_addr, false);
    assert!(lists(&c) > before, "the agents relisted");

    // Restart node-0's agent without its registry: its pods are adopted from the API.
    let mut held = tcp_connect(&client.netns, web_addr).unwrap();
    echo(&mut held, b"before").unwrap();
    // A hostile pod puts the guest's address on its own interface too: neither can be proven
    // to hold it, so the guest is not adopted (rather than the rogue adopted as the guest).
    let rogue_ns = rogue
        .netns
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let guest_ip = format!("{}/32", Node::pod_ip(&guest));
    testbed::bed::ip(&["-n", &rogue_ns, "addr", "add", &guest_ip, "dev", "eth0"]).unwrap();
    c.world.nodes[0].stop_agent().unwrap();
    for f in ["endpoints.json", "endpoints.json.prev"] {
        let _ = std::fs::remove_file(c.world.nodes[0].state_dir().join(f));
    }
    c.world.nodes[0].start_agent().unwrap();
    if let Err(e) = echo(&mut held, b"after") {
        panic!(
            "an allowed connection survives the restart: {e}\n{}",
            c.logs()
        );
    }
    assert!(connects(&client, web_addr));
    assert!(
        !connects(&guest, web_addr),
        "a denied one stays denied\n{}",
        c.logs()
    );
    let status = cni::plugin::call_agent(
        &c.world.nodes[0].socket,
        &api::protocol::Request::Status,
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(status.ok, "{status:?}");
    let unadopted: Vec<_> = status.unadopted.iter().map(|u| u.pod.as_str()).collect();
    assert_eq!(unadopted, ["shop/guest"], "{status:?}\n{}", c.logs());
    assert!(
        status.unadopted[0]
            .reason
            .contains("held in 2 network namespaces"),
        "{status:?}"
    );
    assert!(c.world.nodes[0].agent_log().contains("running pod adopted"));

    // An ADD for a pod the API does not know: refused (after --pod-wait), then it appears and
    // the runtime's retry succeeds.
    let err = c.world.nodes[0].add_pod("shop", "late", "").unwrap_err();
    assert!(
        err.to_string().contains("is not in the Kubernetes API"),
        "{err}"
    );
    let late = c.pod(0, "shop", "late", &[("app", "client")]);
    // Admitted once node-1 sees its address in the API (the kubelet reports it after the ADD).
    until(
        &c,
        "the retried ADD, with its API labels",
        &late,
        web_addr,
        true,
    );

    // A FqdnPolicy: good, then a typo in an update: the good one stays, and an Event says why.
    let fqdn = |field: &str| {
        json!({"apiVersion": "septa.dev/v1alpha1", "kind": "FqdnPolicy",
               "metadata": {"namespace": "shop", "name": "egress"},
               "spec": {"podSelector": {"matchLabels": {"app": "guest"}},
                        "egress": [{"toFQDNs": [{field: "api.example.com"}]}]}})
    };
    c.api
        .apply_json("septa.dev/v1alpha1", "FqdnPolicy", fqdn("matchName"))
        .unwrap();
    c.api
        .apply_json("septa.dev/v1alpha1", "FqdnPolicy", fqdn("matchNme"))
        .unwrap();
    let event = poll_until(DEADLINE, || {
        c.api
            .events()
            .into_iter()
            .find(|e| e["regarding"]["name"] == "egress" && e["reason"] == "Invalid")
    });
    let event = event.unwrap_or_else(|| panic!("no Event for the bad FqdnPolicy\n{}", c.logs()));
    assert!(
        event["note"].as_str().unwrap_or("").contains("spec.egress"),
        "{event}"
    );
    let errors = poll_until(DEADLINE, || {
        let m = testbed::node::http_get(&c.world.node_netns(0), "/metrics");
        (metric(&m, "septa_kubernetes_object_errors") >= 1.0).then_some(())
    });
    assert!(errors.is_some(), "the bad object is counted");
}

/// The agent's answer to `Status` (what `septa status` prints).
fn status(n: &Node) -> api::protocol::Response {
    cni::plugin::call_agent(
        &n.socket,
        &api::protocol::Request::Status,
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("status: {e:?}\n{}", n.agent_log()))
}

/// Whether `file` carries septa's entry for `n`'s agent as its network's last plugin, on top
/// of exactly the primary network `primary`.
fn spliced(file: &std::path::Path, primary: &[u8], n: &Node) -> bool {
    let Ok(have) = std::fs::read(file) else {
        return false;
    };
    let (Ok(mut have), Ok(want)) = (
        serde_json::from_slice::<Value>(&have),
        serde_json::from_slice::<Value>(primary),
    ) else {
        return false;
    };
    let Some(last) = have["plugins"].as_array_mut().and_then(|p| p.pop()) else {
        return false;
    };
    last["type"] == "septa-cni"
        && last["agentSocket"] == n.socket.display().to_string()
        && have == want
}

/// The chart's agent container: its capabilities, and the agent configuration file the
/// chart renders for it.
fn chart_agent() -> (Vec<String>, String) {
    let ds = chart_daemonset();
    let agent = ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "agent"))
        .expect("the DaemonSet has a container named agent")
        .clone();
    let caps: Vec<String> = agent["securityContext"]["capabilities"]["add"]
        .as_array()
        .expect("the agent container adds capabilities")
        .iter()
        .map(|c| c.as_str().expect("a capability name").to_lowercase())
        .collect();
    let config = chart()
        .iter()
        .find_map(|d| (d["kind"] == "ConfigMap").then(|| d["data"]["agent.yaml"].as_str())?)
        .expect("a ConfigMap with agent.yaml")
        .to_owned();
    (caps, config)
}

/// A cluster installed as the chart installs it, on nodes whose runtime reads a CNI
/// configuration directory holding only the primary network (bridge, host-local, portmap):
/// the agents run with the chart's configuration file, with only the capabilities of the
/// chart's security context (setpriv's bounding set) and the chart's RBAC, and splice their
/// entry into the primary network's file. Returns the cluster, and per node the primary
/// file and its bytes before septa.
fn installed(tag: &str, nodes: usize) -> (Cluster, Vec<(std::path::PathBuf, Vec<u8>)>) {
    let (caps, config) = chart_agent();
    let bounding = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    let mut primaries = Vec::new();
    let c = Cluster::with(tag, nodes, Overlay::HostGw, |world, api| {
        api.apply_json("apps/v1", "DaemonSet", chart_daemonset())
            .unwrap();
        for n in &mut world.nodes {
            let file = n.use_conf_dir().unwrap();
            primaries.push((file.clone(), std::fs::read(&file).unwrap()));
            let config_file = n.dir.join("agent.yaml");
            std::fs::write(&config_file, &config).unwrap();
            n.agent_prefix = ["setpriv", "--bounding-set", &bounding, "--"]
                .map(String::from)
                .to_vec();
            n.agent_args.extend(
                [
                    "--config",
                    &config_file.display().to_string(),
                    "--cni-conf-dir",
                    &file.parent().unwrap().display().to_string(),
                    "--daemonset",
                    "septa/septa-agent",
                ]
                .map(String::from),
            );
        }
    });
    (c, primaries)
}

#[test]
fn chart_install_splices_enforces_restarts_and_uninstalls() {
    let (mut c, primaries) = installed("k8s-inst", 2);
    for (i, (file, primary)) in primaries.iter().enumerate() {
        let n = &c.world.nodes[i];
        if poll_until(DEADLINE, || spliced(file, primary, n).then_some(())).is_none() {
            panic!(
                "node-{i}: septa's entry never reached {}\n{}",
                file.display(),
                c.logs()
            );
        }
    }

    // Pods made through the spliced file are registered and enforced.
    let Scene {
        client,
        guest,
        web_addr,
        _server,
    } = client_only_to_web(&mut c);
    let s = status(&c.world.nodes[0]);
    let node = s.node.expect("the status describes the node");
    assert!(node.ready && node.cni.present, "{node:?}");
    assert_eq!(node.cni.mode, "splice");
    assert_eq!(
        node.cni.file.as_deref(),
        Some(primaries[0].0.display().to_string().as_str())
    );
    assert_eq!(node.enforced, 2, "client and guest: {node:?}");
    assert!(node.revision > 0);

    // The primary CNI rewrites its file (a restart of flannel, say): septa's entry returns.
    let (file, primary) = &primaries[0];
    std::fs::write(file, primary).unwrap();
    let n0 = &c.world.nodes[0];
    if poll_until(DEADLINE, || spliced(file, primary, n0).then_some(())).is_none() {
        panic!("the entry was not put back\n{}", c.logs());
    }

    // A malformed primary file is reported, never written to; once fixed, it is spliced.
    std::fs::write(file, b"{\"cniVersion\": \"1.0.0\", \"plugins\": [").unwrap();
    let reported = poll_until(DEADLINE, || {
        let node = status(&c.world.nodes[0]).node?;
        (!node.cni.present).then_some(node.cni)
    })
    .unwrap_or_else(|| panic!("a malformed primary file is reported\n{}", c.logs()));
    assert!(
        reported.error.as_deref().is_some_and(|e| !e.is_empty()),
        "{reported:?}"
    );
    assert_eq!(
        std::fs::read(file).unwrap(),
        b"{\"cniVersion\": \"1.0.0\", \"plugins\": [",
        "the malformed file is left as it is"
    );
    let node0 = c.world.nodes[0].bed.node_path();
    let readyz = testbed::node::http_get(&node0, "/readyz");
    assert!(
        readyz.starts_with("HTTP/1.0 503") && readyz.contains("CNI entry is not in place"),
        "a rollout must not take this node for ready: {readyz}"
    );
    std::fs::write(file, primary).unwrap();
    let n0 = &c.world.nodes[0];
    if poll_until(DEADLINE, || spliced(file, primary, n0).then_some(())).is_none() {
        panic!("the fixed file was not spliced\n{}", c.logs());
    }
    poll_until(DEADLINE, || {
        testbed::node::http_get(&node0, "/readyz")
            .starts_with("HTTP/1.0 200")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("ready again once the entry is back\n{}", c.logs()));

    // A primary file the runtime reads but septa refuses to splice (two `name` keys): a pod
    // started meanwhile runs without septa-cni, and the status says so until it is gone.
    let text = String::from_utf8(primary.clone()).unwrap();
    let twice = text.replacen('{', "{\n  \"name\": \"shadow\",", 1);
    std::fs::write(file, &twice).unwrap();
    poll_until(DEADLINE, || {
        (!status(&c.world.nodes[0]).node?.cni.present).then_some(())
    })
    .unwrap_or_else(|| panic!("the refused file is reported\n{}", c.logs()));
    let _late = c.pod(0, "shop", "late", &[("app", "late")]);
    let listed = poll_until(DEADLINE, || {
        status(&c.world.nodes[0])
            .unadopted
            .into_iter()
            .find(|u| u.pod == "shop/late")
    })
    .unwrap_or_else(|| panic!("a pod started without septa-cni is reported\n{}", c.logs()));
    assert!(
        listed.reason.contains("did not run septa-cni"),
        "{listed:?}"
    );
    std::fs::write(file, primary).unwrap();
    let n0 = &c.world.nodes[0];
    if poll_until(DEADLINE, || spliced(file, primary, n0).then_some(())).is_none() {
        panic!("the fixed file was not spliced\n{}", c.logs());
    }
    c.api.delete::<Pod>("shop", "late").unwrap();
    c.world.nodes[0].del_pod("late").unwrap();
    poll_until(DEADLINE, || {
        let s = status(&c.world.nodes[0]);
        s.unadopted.is_empty().then_some(())
    })
    .unwrap_or_else(|| panic!("a deleted pod is no longer reported\n{}", c.logs()));

    // A restart (the DaemonSet still exists) keeps the file: not removed while the agent is
    // down, not rewritten when it is back.
    use std::os::unix::fs::MetadataExt;
    let before = std::fs::metadata(file).unwrap().ino();
    let bytes = std::fs::read(file).unwrap();
    c.world.nodes[0].stop_agent().unwrap();
    assert_eq!(
        std::fs::read(file).unwrap(),
        bytes,
        "kept while the agent is down"
    );
    c.world.nodes[0].start_agent().unwrap();
    let back = poll_until(DEADLINE, || {
        status(&c.world.nodes[0])
            .node
            .filter(|n| n.cni.present)
            .map(|_| ())
    });
    assert!(back.is_some(), "{}", c.logs());
    assert_eq!(std::fs::read(file).unwrap(), bytes);
    assert_eq!(
        std::fs::metadata(file).unwrap().ino(),
        before,
        "an unchanged file is not rewritten"
    );
    assert!(connects(&client, web_addr));
    assert!(!connects(&guest, web_addr));

    // helm uninstall: the DaemonSet goes, then at once the agent's RoleBinding and
    // ServiceAccount (nothing it asks is answered any more), then its pods stop. Each agent
    // saw the deletion on its watch and removes exactly its entry, leaving the primary file
    // byte for byte as the primary CNI wrote it.
    c.api
        .delete_json("apps/v1", "DaemonSet", "septa", "septa-agent")
        .unwrap();
    for (i, n) in c.world.nodes.iter().enumerate() {
        let seen = poll_until(DEADLINE, || {
            n.agent_log()
                .contains("septa is being uninstalled")
                .then_some(())
        });
        assert!(
            seen.is_some(),
            "node-{i} saw its DaemonSet deleted\n{}",
            c.logs()
        );
    }
    c.api.set_rbac(Some(Rbac::new()));
    for n in &mut c.world.nodes {
        n.stop_agent().unwrap();
    }
    for (i, (file, primary)) in primaries.iter().enumerate() {
        assert_eq!(
            std::fs::read(file).unwrap(),
            *primary,
            "node-{i}: {} after uninstall\n{}",
            file.display(),
            c.logs()
        );
    }
}

#[test]
fn a_verb_missing_from_the_chart_rbac_fails_loudly() {
    testbed::require_root("Kubernetes-mode end-to-end tests");
    let bins = Binaries::for_agent(env!("CARGO_BIN_EXE_septa-agent"));
    let mut world = World::new("k8s-rbac", 1, Overlay::HostGw, bins).expect("world");
    let api = FakeApi::start(world.api_listener().expect("listener")).expect("fake API");
    api.add_user(TOKEN, "system:serviceaccount:septa:septa-agent");
    let mut rbac = chart_rbac();
    let mut removed = false;
    for r in &mut rbac.rules {
        if r.resources.iter().any(|x| x == "endpointslices") {
            r.verbs.retain(|v| v != "watch" && v != "list");
            removed = true;
        }
    }
    assert!(
        removed,
        "the chart lets the agent list and watch EndpointSlices"
    );
    api.set_rbac(Some(rbac));
    let kubeconfig = world.nodes[0].dir.join("kubeconfig");
    api.kubeconfig(&kubeconfig, TOKEN).expect("kubeconfig");
    let n = &mut world.nodes[0];
    n.ready_timeout = Duration::from_secs(5);
    n.agent_args.extend(
        [
            "--source",
            "kubernetes",
            "--kubeconfig",
            &kubeconfig.display().to_string(),
        ]
        .map(String::from),
    );
    let err = n
        .start_agent()
        .expect_err("an agent that cannot list is not ready");
    assert!(n.agent_running(), "it keeps running and retrying: {err:#}");
    // Loudly: not ready, with the kind named, on /readyz, in the status and in the log (each
    // once the agent has started and tried, which a loaded machine may take a while to do).
    let readyz = poll_until(DEADLINE, || {
        let r = testbed::node::http_get(&n.bed.node_path(), "/readyz");
        r.contains("EndpointSlice").then_some(r)
    })
    .unwrap_or_else(|| panic!("/readyz names the kind not listed\n{}", n.agent_log()));
    assert!(readyz.starts_with("HTTP/1.0 503"), "{readyz}");
    let s = status(n);
    assert!(!s.ok && s.error.contains("EndpointSlice"), "{s:?}");
    let log = poll_until(DEADLINE, || {
        let log = n.agent_log();
        (log.contains("forbidden") && log.contains("endpointslices")).then_some(log)
    });
    assert!(log.is_some(), "the log says why: {}", n.agent_log());
    assert!(api
        .requests()
        .iter()
        .any(|r| r.status == 403 && r.path.contains("endpointslices")));
}
