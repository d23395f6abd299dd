//! Which interface an endpoint's programs are attached to, and how the agent's local listeners
//! and request queue hold up, end to end: the real agent in a node namespace, pods through the
//! real CNI chain (bridge + host-local + septa-cni), and requests crafted the way a buggy or
//! hostile runtime, previous plugin or local user would send them.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use api::protocol::{Endpoint, Request, Response};
use cni::plugin::call_agent;
use dataplane_common::maps;
use testbed::{
    bed::ip,
    cni::Attachment,
    node::{http_get, Binaries, Node},
    traffic::*,
};

const WORKLOADS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo}
"#;

/// web accepts client on `port`, nothing else.
fn policy(port: u16) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: web, namespace: demo}}\nspec:\n  podSelector: {{matchLabels: {{app: web}}}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{app: client}}}}}}], ports: [{{port: {port}}}]}}]\n"
    )
}

fn bins() -> Binaries {
    Binaries::for_agent(env!("CARGO_BIN_EXE_septa-agent"))
}

/// A node with the agent running and pods web-1 (app=web, serving `tcp`), client-1
/// (app=client) and other-1 (app=other).
fn node_with_pods(tag: &str, tcp: &[u16]) -> (Node, Attachment, Attachment, Attachment, Server) {
    let mut n = Node::new(tag, bins()).unwrap();
    n.write_manifest("00-workloads.yaml", WORKLOADS).unwrap();
    n.write_manifest("10-policy.yaml", &policy(8080)).unwrap();
    n.start_agent().unwrap();
    let web = n.add_pod("demo", "web-1", "app=web").unwrap();
    let client = n.add_pod("demo", "client-1", "app=client").unwrap();
    let other = n.add_pod("demo", "other-1", "app=other").unwrap();
    let srv = Server::start(&web.netns, tcp, &[]).unwrap();
    (n, web, client, other, srv)
}

fn to(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// The host-side veth the bridge plugin made for a pod (named in its result, no sandbox).
fn host_veth(a: &Attachment) -> String {
    a.result["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["sandbox"].as_str().unwrap_or_default().is_empty())
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .find(|n| n != "cni-septa0")
        .expect("the bridge plugin names the host veth")
}

fn request(n: &Node, req: Request) -> Response {
    call_agent(&n.socket, &req, Duration::from_secs(15)).unwrap()
}

fn add(n: &Node, container: &str, netns: &Path, host: &str, app: &str, ip: IpAddr) -> Response {
    request(
        n,
        Request::Add(Endpoint {
            container_id: container.into(),
            netns: netns.display().to_string(),
            ifname: "eth0".into(),
            host_ifname: host.into(),
            cgroup: None,
            namespace: "demo".into(),
            name: container.into(),
            labels: Some([("app".to_string(), app.to_string())].into()),
            ips: vec![ip],
        }),
    )
}

fn check(n: &Node, container: &str) -> Response {
    request(
        n,
        Request::Check {
            container_id: container.into(),
        },
    )
}

fn del(n: &Node, container: &str) -> Response {
    request(
        n,
        Request::Del {
            container_id: container.into(),
        },
    )
}

/// Web is enforced as the policy says: client reaches it on 8080, other does not.
fn assert_web_enforced(client: &Attachment, other: &Attachment, web: IpAddr, what: &str) {
    let mut c = tcp_connect(&client.netns, to(web, 8080))
        .unwrap_or_else(|e| panic!("{what}: client reaches web: {e}"));
    echo(&mut c, b"hi").unwrap();
    assert!(
        tcp_connect(&other.netns, to(web, 8080)).is_err(),
        "{what}: other is denied"
    );
}

/// A pod made by hand, as another runtime might: namespace `septa-<bed>-<name>`, a veth whose
/// host side is called `host` (on the node's bridge), address `addr` in the pod network.
fn manual_pod(n: &Node, name: &str, host: &str, addr: &str) -> PathBuf {
    let netns = format!("septa-{}-{name}", n.bed.id);
    ip(&["netns", "add", &netns]).unwrap();
    n.bed
        .exec(&[
            "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ])
        .unwrap();
    n.bed
        .exec(&["link", "set", host, "master", "cni-septa0"])
        .unwrap();
    n.bed.exec(&["link", "set", host, "up"]).unwrap();
    for args in [
        vec!["link", "set", "lo", "up"],
        vec!["addr", "add", &format!("{addr}/24"), "dev", "eth0"],
        vec!["link", "set", "eth0", "up"],
    ] {
        let mut a = vec!["-n", netns.as_str()];
        a.extend(args.iter().copied());
        ip(&a).unwrap();
    }
    PathBuf::from("/run/netns").join(netns)
}

/// Remove a pod without a DEL (a runtime that crashed): its veth pair, then its namespace.
/// (Deleting the veth first makes it gone now; a namespace's devices go asynchronously.)
fn vanish(n: &mut Node, a: &Attachment) {
    let i = n
        .pods
        .iter()
        .position(|(_, p)| p.container_id == a.container_id)
        .unwrap();
    let (netns, _) = n.pods.remove(i);
    n.bed.exec(&["link", "del", &host_veth(a)]).unwrap();
    ip(&["netns", "del", &netns]).unwrap();
}

#[test]
fn add_is_refused_for_an_interface_that_is_not_the_pods_own() {
    let (n, web, client, other, _srv) = node_with_pods("own", &[8080]);
    let web_ip = Node::pod_ip(&web);
    let web_veth = host_veth(&web);
    // Another pod's namespace claims web's host veth (a forged prevResult).
    let r = add(&n, "c-evil", &other.netns, &web_veth, "client", web_ip);
    assert!(!r.ok, "another pod's veth accepted: {r:?}");
    assert!(r.error.contains("not the host side"), "{r:?}");
    // Web's own namespace, but for another container: the interface is taken.
    let r = add(&n, "c-evil2", &web.netns, &web_veth, "client", web_ip);
    assert!(!r.ok, "a registered interface accepted again: {r:?}");
    assert!(
        r.error.contains("already registered to container c-web-1"),
        "{r:?}"
    );
    // The node's bridge (the kind of interface an uplink is) is no pod's veth.
    let r = add(&n, "c-evil3", &other.netns, "cni-septa0", "client", web_ip);
    assert!(!r.ok && r.error.contains("not a veth"), "{r:?}");
    // The node's own namespace is no pod's namespace.
    let r = add(
        &n,
        "c-evil4",
        &n.bed.node_path(),
        &web_veth,
        "client",
        web_ip,
    );
    assert!(!r.ok, "the node namespace accepted as a pod's: {r:?}");
    // The refused containers' DELs leave web as it was.
    for c in ["c-evil", "c-evil2", "c-evil3", "c-evil4"] {
        assert!(del(&n, c).ok);
    }
    assert!(check(&n, "c-web-1").ok, "{}", n.agent_log());
    assert_web_enforced(&client, &other, web_ip, "after the refused registrations");
}

#[test]
fn a_reused_host_veth_name_gets_programs_and_check_tells_the_truth() {
    let (mut n, web, client, other, _srv) = node_with_pods("reuse", &[8080]);
    let name = host_veth(&web);
    vanish(&mut n, &web);
    let r = check(&n, "c-web-1");
    assert!(!r.ok, "CHECK of a pod whose veth is gone: {r:?}");
    // A new pod whose host veth has the old name.
    let netns = manual_pod(&n, "web-2", &name, "10.88.0.200");
    let web2: IpAddr = "10.88.0.200".parse().unwrap();
    let r = add(&n, "c-web-2", &netns, &name, "web", web2);
    assert!(r.ok, "{r:?}\n{}", n.agent_log());
    assert!(check(&n, "c-web-2").ok);
    let _srv2 = Server::start(&netns, &[8080], &[]).unwrap();
    assert_web_enforced(&client, &other, web2, "the new pod");
    // The vanished pod's DEL (late) leaves the new pod's programs alone.
    assert!(del(&n, "c-web-1").ok);
    assert!(check(&n, "c-web-2").ok, "{}", n.agent_log());
    assert_web_enforced(&client, &other, web2, "after the old pod's DEL");
    // CHECK looks at the kernel: programs removed behind the agent's back are reported.
    let pins = n.pin_dir.join("tcx");
    for e in std::fs::read_dir(&pins).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    let r = check(&n, "c-web-2");
    assert!(!r.ok && r.error.contains("no ingress program"), "{r:?}");
    let _ = ip(&["netns", "del", netns.file_name().unwrap().to_str().unwrap()]);
}

#[test]
fn restart_with_a_reused_host_veth_name_attaches_afresh() {
    let (mut n, web, client, other, _srv) = node_with_pods("reuse-rst", &[8080]);
    let name = host_veth(&web);
    n.stop_agent().unwrap();
    vanish(&mut n, &web);
    let netns = manual_pod(&n, "web-2", &name, "10.88.0.201");
    let web2: IpAddr = "10.88.0.201".parse().unwrap();
    n.start_agent().unwrap();
    assert!(!check(&n, "c-web-1").ok, "the vanished pod is forgotten");
    let r = add(&n, "c-web-2", &netns, &name, "web", web2);
    assert!(r.ok, "{r:?}\n{}", n.agent_log());
    let _srv2 = Server::start(&netns, &[8080], &[]).unwrap();
    assert_web_enforced(&client, &other, web2, "the new pod after a restart");
    let _ = ip(&["netns", "del", netns.file_name().unwrap().to_str().unwrap()]);
}

#[test]
fn del_of_an_unknown_container_removes_links_left_behind() {
    let (n, _web, _client, _other, _srv) = node_with_pods("orphan", &[8080]);
    // Links without a registration, as an ADD interrupted between attach and answer leaves
    // them: attached by a second data path on the agent's pins.
    let netns = manual_pod(&n, "half", "septa-half0", "10.88.0.220");
    let max = |m: &str| {
        aya::maps::MapInfo::from_pin(n.pin_dir.join(m))
            .unwrap()
            .max_entries()
    };
    let mut dp = dataplane::Datapath::load(&dataplane::LoadOptions {
        pin_dir: n.pin_dir.clone(),
        conntrack_entries: max(maps::CONNTRACK),
        policy_entries: max(maps::POLICY),
        ipcache_entries: max(maps::IPCACHE),
        events_bytes: max(maps::EVENTS),
    })
    .unwrap();
    hostnet::netns::in_netns(&n.bed.node_path(), || dp.attach("septa-half0"))
        .unwrap()
        .unwrap();
    drop(dp);
    let pins = || std::fs::read_dir(n.pin_dir.join("tcx")).unwrap().count();
    assert_eq!(
        pins(),
        8,
        "three pods and the half-added one, two hooks each"
    );
    n.bed.exec(&["link", "del", "septa-half0"]).unwrap();
    assert!(del(&n, "c-half").ok);
    assert_eq!(
        pins(),
        6,
        "the DEL removed the pins of the interface that is gone"
    );
    let _ = ip(&["netns", "del", netns.file_name().unwrap().to_str().unwrap()]);
}

#[test]
fn policy_reaches_the_programs_after_the_map_pins_were_deleted() {
    let (mut n, web, client, _other, _srv) = node_with_pods("mappins", &[8080, 8081]);
    let web_ip = Node::pod_ip(&web);
    assert!(tcp_connect(&client.netns, to(web_ip, 8081)).is_err());
    n.stop_agent().unwrap();
    // The map pins go (link pins, in subdirectories, stay): the restarted agent makes new maps.
    for e in std::fs::read_dir(&n.pin_dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::remove_file(p).unwrap();
        }
    }
    n.start_agent().unwrap();
    n.write_manifest("10-policy.yaml", &policy(8081)).unwrap();
    let opened = poll_until(Duration::from_secs(10), || {
        tcp_connect(&client.netns, to(web_ip, 8081)).ok()
    });
    assert!(
        opened.is_some(),
        "the new policy is enforced by the programs on the pods\n{}",
        n.agent_log()
    );
    assert!(tcp_connect(&client.netns, to(web_ip, 8080)).is_err());
    assert!(check(&n, "c-web-1").ok);
}

/// Idle connections to the health port, kept at `count` (each one the agent closes is opened
/// again) until `stop`, from the node's namespace: what any local user can do. `held` hears
/// once the first `count` are open; the thread returns how many it opened in all.
fn hold_idle_connections(
    node: PathBuf,
    count: usize,
    stop: Arc<AtomicBool>,
    held: std::sync::mpsc::Sender<()>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        hostnet::netns::in_netns(&node, || {
            use std::io::Read;
            let connect = || std::net::TcpStream::connect("127.0.0.1:9876").ok();
            let mut conns: Vec<std::net::TcpStream> =
                (0..count).filter_map(|_| connect()).collect();
            let mut opened = conns.len();
            let _ = held.send(());
            // Bounded: a few thousand rounds at most, then it stops by itself.
            for _ in 0..6000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                for s in conns.iter_mut() {
                    s.set_nonblocking(true).unwrap();
                    let mut b = [0u8; 64];
                    if matches!(s.read(&mut b), Ok(0) | Err(_))
                        && !matches!(s.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                    {
                        if let Some(c) = connect() {
                            *s = c;
                            opened += 1;
                        }
                    }
                }
                // Pacing of the load, not synchronisation.
                std::thread::sleep(Duration::from_millis(10));
            }
            opened
        })
        .unwrap()
    })
}

/// The sockets a process holds.
fn sockets_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().starts_with("socket:"))
        .count()
}

/// `GET /healthz`, with the error if there is one.
fn health(node: &Path) -> std::io::Result<String> {
    use std::io::{Read, Write};
    hostnet::netns::in_netns(node, || {
        let mut s = std::net::TcpStream::connect("127.0.0.1:9876")?;
        s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .map_err(std::io::Error::other)?
}

#[test]
fn idle_health_connections_leave_the_agent_able_to_serve() {
    let mut n = Node::new("fds", bins()).unwrap();
    n.write_manifest("00-workloads.yaml", WORKLOADS).unwrap();
    n.write_manifest("10-policy.yaml", &policy(8080)).unwrap();
    n.start_agent().unwrap();
    let web = n.add_pod("demo", "web-1", "app=web").unwrap();
    // A small limit on the agent's open files, so that holding connections could exhaust it.
    let pid = n.agent_pid().unwrap();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64;
    let limit = rustix::process::Rlimit {
        current: Some(open + 128),
        maximum: Some(open + 128),
    };
    rustix::process::prlimit(
        rustix::process::Pid::from_raw(pid as i32),
        rustix::process::Resource::Nofile,
        limit,
    )
    .unwrap();
    let sockets = sockets_of(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let holder = hold_idle_connections(n.bed.node_path(), 300, stop.clone(), held_tx);
    held_rx.recv().unwrap();
    // The agent holds a bounded number of them, far from its limit.
    let held = sockets_of(pid).saturating_sub(sockets);
    // While they are held: a CNI ADD and a CHECK succeed, and health answers.
    let r = n.add_pod("demo", "client-1", "app=client");
    let checked = n.runtime.check(&web);
    let health_under_load = health(&n.bed.node_path());
    stop.store(true, Ordering::Relaxed);
    let opened = holder.join().unwrap();
    assert!(opened >= 300, "the connections were held ({opened})");
    assert!(
        held <= agent::health::MAX_WAITING + 16,
        "the agent holds {held} idle connections"
    );
    let client = r.unwrap_or_else(|e| panic!("ADD under load: {e}\n{}", n.agent_log()));
    checked.unwrap_or_else(|e| panic!("CHECK under load: {e}\n{}", n.agent_log()));
    let h =
        health_under_load.unwrap_or_else(|e| panic!("health under load: {e}\n{}", n.agent_log()));
    assert!(h.starts_with("HTTP/1.0 200"), "{h:?}");
    // And afterwards.
    assert!(http_get(&n.bed.node_path(), "/healthz").starts_with("HTTP/1.0 200"));
    n.runtime.check(&client).unwrap();
    assert!(n.agent_running());
}

#[test]
fn an_add_whose_client_hung_up_is_not_registered() {
    let (n, _web, client, other, _srv) = node_with_pods("hangup", &[8080]);
    let netns = manual_pod(&n, "late", "septa-late0", "10.88.0.202");
    let late: IpAddr = "10.88.0.202".parse().unwrap();
    let ep = Endpoint {
        container_id: "c-late".into(),
        netns: netns.display().to_string(),
        ifname: "eth0".into(),
        host_ifname: "septa-late0".into(),
        cgroup: None,
        namespace: "demo".into(),
        name: "late".into(),
        labels: Some([("app".to_string(), "web".to_string())].into()),
        ips: vec![late],
    };
    // The agent is stopped while a runtime sends an ADD and gives up on it (closes); the agent
    // finds the request and the hang-up together when it resumes.
    let pid = n.agent_pid().unwrap() as i32;
    // SAFETY: signalling the test's own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    {
        use std::io::Write;
        let mut s = std::os::unix::net::UnixStream::connect(&n.socket).unwrap();
        let mut line = serde_json::to_string(&Request::Add(ep.clone())).unwrap();
        line.push('\n');
        s.write_all(line.as_bytes()).unwrap();
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let dropped = poll_until(Duration::from_secs(10), || {
        n.agent_log().contains("ADD dropped").then_some(())
    });
    assert!(dropped.is_some(), "{}", n.agent_log());
    assert!(
        !check(&n, "c-late").ok,
        "nobody waited for it: not registered"
    );
    // The same ADD from a client that waits is served.
    let r = request(&n, Request::Add(ep));
    assert!(r.ok, "{r:?}");
    let _srv2 = Server::start(&netns, &[8080], &[]).unwrap();
    assert_web_enforced(&client, &other, late, "the pod added by a waiting client");
    let _ = ip(&["netns", "del", netns.file_name().unwrap().to_str().unwrap()]);
}

#[test]
fn requests_queued_together_are_all_served_in_order() {
    let (n, web, client, other, _srv) = node_with_pods("batch", &[8080]);
    let pods: Vec<(String, PathBuf, IpAddr)> = (0..6)
        .map(|i| {
            let host = format!("septa-b{i}");
            let addr = format!("10.88.0.{}", 210 + i);
            let netns = manual_pod(&n, &format!("b{i}"), &host, &addr);
            (host, netns, addr.parse().unwrap())
        })
        .collect();
    // Queued while the agent is stopped: six ADDs, a DEL of client-1 and, on one connection,
    // an ADD followed by the DEL of the same container and a CHECK.
    let pid = n.agent_pid().unwrap() as i32;
    // SAFETY: signalling the test's own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let socket = n.socket.clone();
    let send = move |reqs: Vec<Request>| {
        let socket = socket.clone();
        std::thread::spawn(move || {
            use std::io::{BufRead, Write};
            let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
            for r in &reqs {
                let mut line = serde_json::to_string(r).unwrap();
                line.push('\n');
                s.write_all(line.as_bytes()).unwrap();
            }
            std::io::BufReader::new(s)
                .lines()
                .take(reqs.len())
                .map(|l| serde_json::from_str::<Response>(&l.unwrap()).unwrap())
                .collect::<Vec<_>>()
        })
    };
    let endpoint = |i: usize, (host, netns, ip): &(String, PathBuf, IpAddr)| Endpoint {
        container_id: format!("c-b{i}"),
        netns: netns.display().to_string(),
        ifname: "eth0".into(),
        host_ifname: host.clone(),
        cgroup: None,
        namespace: "demo".into(),
        name: format!("b{i}"),
        labels: Some([("app".to_string(), "web".to_string())].into()),
        ips: vec![*ip],
    };
    let mut threads: Vec<_> = pods[..5]
        .iter()
        .enumerate()
        .map(|(i, p)| send(vec![Request::Add(endpoint(i, p))]))
        .collect();
    threads.push(send(vec![Request::Del {
        container_id: "c-other-1".into(),
    }]));
    let ordered = send(vec![
        Request::Add(endpoint(5, &pods[5])),
        Request::Del {
            container_id: "c-b5".into(),
        },
        Request::Check {
            container_id: "c-b5".into(),
        },
    ]);
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    for t in threads {
        let r = t.join().unwrap();
        assert!(r.iter().all(|r| r.ok), "{r:?}\n{}", n.agent_log());
    }
    let r = ordered.join().unwrap();
    assert!(r[0].ok && r[1].ok, "{r:?}");
    assert!(!r[2].ok, "the CHECK sees the DEL before it: {r:?}");
    for (i, p) in pods[..5].iter().enumerate() {
        assert!(check(&n, &format!("c-b{i}")).ok);
        let _srv = Server::start(&p.1, &[8080], &[]).unwrap();
        let mut c = tcp_connect(&client.netns, to(p.2, 8080)).unwrap();
        echo(&mut c, b"hi").unwrap();
    }
    assert!(!check(&n, "c-other-1").ok);
    assert!(check(&n, "c-web-1").ok);
    // other-1 is gone from the agent: its programs are detached.
    let _ = (web, other);
    for (_, netns, _) in &pods {
        let _ = ip(&["netns", "del", netns.file_name().unwrap().to_str().unwrap()]);
    }
}

#[test]
fn links_pinned_by_interface_name_are_taken_over() {
    use dataplane_common::parse::IPPROTO_TCP;
    use testbed::scenario::Scenario;
    let mut s = Scenario::new("legacy").expect("test bed");
    let _server = Server::start(&s.server.netns_path(), &[8080, 8081], &[]).unwrap();
    s.allow(IPPROTO_TCP, 8080, 42).unwrap();
    let pins = s.dp.pin_dir().to_owned();
    let (iface, ifindex) = (s.server.host_if.clone(), s.server.host_ifindex);
    // Pins as an earlier version named them: links/<interface>_<hook>.
    std::fs::create_dir_all(pins.join("links")).unwrap();
    for hook in ["ingress", "egress"] {
        std::fs::rename(
            pins.join("tcx").join(format!("{ifindex}_{hook}")),
            pins.join("links").join(format!("{iface}_{hook}")),
        )
        .unwrap();
    }
    let mut second = s.dp.reopen().expect("a second load on the same pins");
    let node = s.bed.node_path();
    hostnet::netns::in_netns(&node, || second.attach(&iface))
        .unwrap()
        .unwrap();
    for hook in ["ingress", "egress"] {
        assert!(pins.join("tcx").join(format!("{ifindex}_{hook}")).exists());
        assert!(!pins.join("links").join(format!("{iface}_{hook}")).exists());
    }
    // One program per hook: the old link was taken over, not joined by a second one.
    for hook in [
        aya::programs::TcAttachType::Ingress,
        aya::programs::TcAttachType::Egress,
    ] {
        let (_, progs) = hostnet::netns::in_netns(&node, || {
            aya::programs::SchedClassifier::query_tcx(&iface, hook)
        })
        .unwrap()
        .unwrap();
        assert_eq!(progs.len(), 1, "{hook:?}");
    }
    hostnet::netns::in_netns(&node, || second.tcx_verify(ifindex))
        .unwrap()
        .unwrap();
    let client_ns = s.client.netns_path();
    let mut c = tcp_connect(&client_ns, to(s.server.ipv4.into(), 8080)).unwrap();
    echo(&mut c, b"hi").unwrap();
    assert!(tcp_connect(&client_ns, to(s.server.ipv4.into(), 8081)).is_err());
    let old = std::mem::replace(&mut s.dp, second);
    drop(old);
}
