//! septa-perf-kube-world: Kubernetes mode end to end, three real agents against the fake API
//! server (`testbed::kubeapi::FakeApi`) in a three-node world (`testbed::world::World`, host-gw
//! routes between the nodes' pod subnets).
//!
//! - **Start-up to ready**: the API holds N synthetic pods (`perf::kube::Shape`: Deployment
//!   pods of other nodes, with their Services, EndpointSlices and 100 NetworkPolicies); the
//!   three agents start side by side with `--source kubernetes`, and each one's time from
//!   spawn to its socket's `Status` ok (every kind listed, the first state compiled and
//!   written) is taken, and its memory (VmRSS) then. A fresh world per size, so no pinned
//!   state helps a start.
//! - **NetworkPolicy change → enforced on all three nodes**: a server pod on each node (made
//!   through the real CNI chain, its Pod written to the API first and its address after, as a
//!   kubelet does) and a client pod on node-0 sending each server a UDP datagram every
//!   `--tick` (sequence number and send time). Each change writes the servers' policy to the
//!   API, flipping between allowing the client's port and not; a node's latency is the time
//!   from the write to the first datagram to its server with the new verdict (the first
//!   delivered after an allow; after a revoke, the first of an unbroken run of undelivered
//!   ones), and the change's latency is the slowest node's. Enforcement is observed by
//!   traffic, as septa-perf-agent does, so it includes the watch, the agent's compile and the
//!   map writes, and nothing the maps do not do.
//! - **CNI ADD → enforced**: a new pod's Pod is written to the API (on a node, its labels
//!   selected by an egress policy that allows only the server on that node), then the real
//!   CNI chain runs its ADD, which waits for the pod in the agent's index; once ADD returns
//!   the pod sends datagrams to its node's server (allowed) and to the client (not allowed).
//!   The latency is from the API write to the first datagram delivered to the server; any
//!   datagram the client receives from the new pod is a window without its policy, and is
//!   counted.

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Parser;
use hostnet::netns::in_netns;
use k8s_openapi::api::{core::v1::Pod, networking::v1::NetworkPolicy};
use perf::kube::Shape;
use serde_json::json;
use testbed::{
    cni::Attachment,
    kubeapi::FakeApi,
    node::{Binaries, Node},
    traffic::poll_until,
    world::{Overlay, World},
};

#[derive(Parser)]
#[command(
    about = "Measure Kubernetes mode end to end: start-up to ready, NetworkPolicy change and CNI ADD to enforced on three nodes"
)]
struct Args {
    /// Output directory for kube_world.{md,csv}.
    #[arg(long, default_value = "perf/results")]
    out: PathBuf,
    /// Pods in the API for the start-up measurement (a fresh world each).
    #[arg(long, value_delimiter = ',', default_value = "0,1000,10000")]
    startup_pods: Vec<usize>,
    /// Pods in the API during the latency measurements (a fresh world each).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pods: Vec<usize>,
    /// NetworkPolicies in the API besides the measured ones.
    #[arg(long, default_value_t = 100)]
    policies: usize,
    /// NetworkPolicy changes to time.
    #[arg(long, default_value_t = 30)]
    changes: usize,
    /// Pods to add through CNI.
    #[arg(long, default_value_t = 30)]
    adds: usize,
    /// Interval between datagrams to each server.
    #[arg(long, default_value = "200us", value_parser = humantime::parse_duration)]
    tick: Duration,
    /// Keep each agent's log here (`<pods>-node-<i>.log`), to see where the time goes.
    #[arg(long)]
    logs: Option<PathBuf>,
}

const NODES: usize = 3;
const NS: &str = "bench";
const PORT: u16 = 9000;
/// The port the client stops being allowed to (the revoke flips the rule to it).
const OTHER_PORT: u16 = 9001;
/// Where the client listens for what new pods must not be able to send it.
const CLIENT_PORT: u16 = 9005;
const TOKEN: &str = "septa-agent-token";

/// The world, its API server and the kubeconfig the agents use.
struct Cluster {
    world: World,
    api: FakeApi,
}

/// A three-node world with the fake API server holding `pods` synthetic pods, their Services
/// and slices, `policies` policies, and namespace `bench`; agents not started.
fn cluster(tag: &str, pods: usize, policies: usize) -> Result<Cluster> {
    let mut world = World::new(tag, NODES, Overlay::HostGw, Binaries::beside_current_exe()?)?;
    let api = FakeApi::start(world.api_listener()?)?;
    api.add_user(TOKEN, "system:serviceaccount:septa:septa-agent");
    let kubeconfig = world.nodes[0].dir.join("kubeconfig");
    api.kubeconfig(&kubeconfig, TOKEN)?;
    let s = Shape::new(pods);
    for n in 0..s.namespaces {
        api.apply(&s.namespace(n)?)?;
    }
    for i in 0..pods {
        api.apply(&s.pod(i, false)?)?;
    }
    for a in 0..s.apps {
        let (svc, slice) = s.service(a)?;
        api.apply(&svc)?;
        api.apply(&slice)?;
    }
    // (No apps, no policies: each isolates an app.)
    for p in (0..policies).filter(|_| s.apps > 0) {
        api.apply(&s.policy(p, policies)?)?;
    }
    api.apply_json(
        "v1",
        "Namespace",
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": NS, "labels": {"kubernetes.io/metadata.name": NS}}}),
    )?;
    for node in &mut world.nodes {
        node.agent_args = vec![
            "--source".into(),
            "kubernetes".into(),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
        ];
        node.ready_timeout = Duration::from_secs(900);
    }
    Ok(Cluster { world, api })
}

/// Start the three agents side by side; each one's seconds from spawn to ready.
fn start(world: &mut World) -> Result<Vec<f64>> {
    std::thread::scope(|s| {
        let started: Vec<_> = world
            .nodes
            .iter_mut()
            .map(|n| {
                s.spawn(move || {
                    let t = Instant::now();
                    n.start_agent().map(|()| t.elapsed().as_secs_f64())
                })
            })
            .collect();
        started
            .into_iter()
            .map(|t| t.join().expect("start_agent panicked"))
            .collect()
    })
}

/// A Pod of `bench` on node `node`, as the scheduler (and with `ip`, the kubelet) wrote it.
fn api_pod(name: &str, node: usize, app: &str, ip: Option<IpAddr>) -> Result<Pod> {
    let mut v = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": NS, "name": name, "labels": {"app": app},
                     "creationTimestamp": "2026-12-01T00:00:00Z"},
        "spec": {"nodeName": World::node_name(node),
                 "containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": "Pending"}
    });
    if let Some(ip) = ip {
        v["status"] = json!({"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]});
    }
    Ok(serde_json::from_value(v)?)
}

/// A pod through the API and the CNI chain of node `node`: the Pod first, ADD, then its
/// address (the kubelet's status update, which the other nodes need to give it an identity).
fn pod(c: &mut Cluster, node: usize, name: &str, app: &str) -> Result<Attachment> {
    c.api.apply(&api_pod(name, node, app, None)?)?;
    let a = c.world.nodes[node].add_pod(NS, name, &format!("app={app}"))?;
    c.api
        .apply(&api_pod(name, node, app, Some(Node::pod_ip(&a)))?)?;
    Ok(a)
}

/// The servers' policy: ingress from the client on `port`, from new pods on [`PORT`].
fn server_policy(port: u16) -> Result<NetworkPolicy> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"namespace": NS, "name": "server"},
        "spec": {"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"],
                 "ingress": [
                     {"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                      "ports": [{"protocol": "UDP", "port": port}]},
                     {"from": [{"podSelector": {"matchLabels": {"app": "new"}}}],
                      "ports": [{"protocol": "UDP", "port": PORT}]}]}
    }))?)
}

/// New pods may send only to the servers on [`PORT`].
fn new_pod_policy() -> Result<NetworkPolicy> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"namespace": NS, "name": "new"},
        "spec": {"podSelector": {"matchLabels": {"app": "new"}}, "policyTypes": ["Egress"],
                 "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "server"}}}],
                             "ports": [{"protocol": "UDP", "port": PORT}]}]}
    }))?)
}

/// Datagrams received by one socket: (sequence, µs since the stream's base).
type Received = Arc<Mutex<Vec<(u64, u64)>>>;

/// A receiver thread on `port` in `netns`, recording every datagram's sequence number.
fn receiver(
    netns: &Path,
    port: u16,
    base: Instant,
    stop: Arc<AtomicBool>,
) -> Result<(Received, std::thread::JoinHandle<()>)> {
    let sock = in_netns(netns, || UdpSocket::bind(("0.0.0.0", port)))??;
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    let got: Received = Arc::default();
    let g = got.clone();
    let t = std::thread::spawn(move || {
        let mut buf = [0u8; 8];
        while !stop.load(Ordering::Relaxed) {
            if let Ok(8) = sock.recv(&mut buf) {
                g.lock()
                    .unwrap()
                    .push((u64::from_be_bytes(buf), base.elapsed().as_micros() as u64));
            }
        }
    });
    Ok((got, t))
}

/// Time `changes` policy flips on the three servers; per change, each node's latency in ms.
fn policy_changes(c: &mut Cluster, args: &Args) -> Result<Vec<[f64; NODES]>> {
    c.api.apply(&server_policy(PORT)?)?;
    let servers: Vec<Attachment> = (0..NODES)
        .map(|n| pod(c, n, &format!("server-{n}"), "server"))
        .collect::<Result<_>>()?;
    let client = pod(c, 0, "client", "client")?;
    let base = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let mut received = Vec::new();
    for s in &servers {
        let (got, t) = receiver(&s.netns, PORT, base, stop.clone())?;
        received.push(got);
        threads.push(t);
    }
    let tx = in_netns(&client.netns, || UdpSocket::bind("0.0.0.0:0"))??;
    let dsts: Vec<SocketAddr> = servers
        .iter()
        .map(|s| SocketAddr::new(Node::pod_ip(s), PORT))
        .collect();
    // seq → send time (µs since base); one sequence for all servers, sent to each per tick.
    let sent: Arc<Mutex<Vec<u64>>> = Arc::default();
    {
        let (stop, sent, tick) = (stop.clone(), sent.clone(), args.tick);
        threads.push(std::thread::spawn(move || {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                sent.lock().unwrap().push(base.elapsed().as_micros() as u64);
                for d in &dsts {
                    let _ = tx.send_to(&seq.to_be_bytes(), d);
                }
                seq += 1;
                if let Some(wait) = (tick * seq as u32).checked_sub(base.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }));
    }
    poll_until(Duration::from_secs(30), || {
        received
            .iter()
            .all(|r| !r.lock().unwrap().is_empty())
            .then_some(())
    })
    .context("the client's datagrams do not reach every server")?;
    // A revoke is seen as silence: this much of it, after the last delivered datagram.
    let silence = 20_000u64;
    let mut out = Vec::new();
    let mut allowed = true;
    for _ in 0..args.changes {
        std::thread::sleep(Duration::from_millis(50)); // let every node settle
        allowed = !allowed;
        let t0 = base.elapsed().as_micros() as u64;
        c.api
            .apply(&server_policy(if allowed { PORT } else { OTHER_PORT })?)?;
        let mut lat = [0.0; NODES];
        for (n, r) in received.iter().enumerate() {
            let at = poll_until(Duration::from_secs(30), || {
                let rx = r.lock().unwrap();
                let tx = sent.lock().unwrap();
                if allowed {
                    rx.iter()
                        .map(|(s, _)| tx[*s as usize])
                        .filter(|&t| t >= t0)
                        .min()
                } else {
                    let last = rx.iter().map(|(s, _)| *s).max()?;
                    let next = tx.get(last as usize + 1).copied()?;
                    (tx.last().copied()? > next + silence).then_some(next.max(t0))
                }
            })
            .with_context(|| format!("node-{n}: the change was not enforced within 30 s"))?;
            lat[n] = at.saturating_sub(t0) as f64 / 1000.0;
        }
        out.push(lat);
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().ok();
    }
    Ok(out)
}

/// One row of a CNI ADD measurement.
struct Add {
    /// The Pod written to the API → first datagram delivered to the server (ms).
    enforced_ms: f64,
    /// The ADD alone (ms).
    add_ms: f64,
    /// Datagrams the client received from the new pod (its policy forbids them).
    leaked: usize,
}

/// Add `adds` pods through the API and CNI, rotating over the nodes; needs the servers and
/// the client of [`policy_changes`], and the servers' policy allowing new pods.
fn cni_adds(c: &mut Cluster, args: &Args) -> Result<Vec<Add>> {
    c.api.apply(&server_policy(PORT)?)?;
    c.api.apply(&new_pod_policy()?)?;
    std::thread::sleep(Duration::from_secs(2)); // the policies reach every node
    let made = |node: usize, name: &str| -> Result<(IpAddr, PathBuf)> {
        let (_, a) = c.world.nodes[node]
            .pods
            .iter()
            .find(|(_, a)| a.container_id == format!("c-{name}"))
            .with_context(|| format!("pod {name}"))?;
        Ok((Node::pod_ip(a), a.netns.clone()))
    };
    let (client_ip, client_ns) = made(0, "client")?;
    let servers: Vec<(IpAddr, PathBuf)> = (0..NODES)
        .map(|n| made(n, &format!("server-{n}")))
        .collect::<Result<_>>()?;
    let mut out = Vec::new();
    for k in 0..args.adds {
        let node = k % NODES;
        let (server_ip, server_ns) = &servers[node];
        let server = SocketAddr::new(*server_ip, PORT);
        let name = format!("new-{k}");
        let base = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let (leaks, leak_thread) = receiver(&client_ns, CLIENT_PORT, base, stop.clone())?;
        // The servers' sockets of the change measurement are closed by now: one of our own.
        let (got, server_thread) = receiver(server_ns, PORT, base, stop.clone())?;
        c.api.apply(&api_pod(&name, node, "new", None)?)?;
        let add_start = base.elapsed();
        let a = c.world.nodes[node].add_pod(NS, &name, "app=new")?;
        let add_ms = (base.elapsed() - add_start).as_secs_f64() * 1e3;
        // From the moment ADD returns, as the pod's first process would: a datagram to the
        // server and one to the client every 100 µs.
        let tx = in_netns(&a.netns, || UdpSocket::bind("0.0.0.0:0"))??;
        let client = SocketAddr::new(client_ip, CLIENT_PORT);
        let sender = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let _ = tx.send_to(&seq.to_be_bytes(), server);
                    let _ = tx.send_to(&seq.to_be_bytes(), client);
                    seq += 1;
                    std::thread::sleep(Duration::from_micros(100));
                }
            })
        };
        let first = poll_until(Duration::from_secs(10), || {
            got.lock().unwrap().first().map(|(_, t)| *t)
        })
        .context("the new pod never reached its server")?;
        std::thread::sleep(Duration::from_millis(50));
        stop.store(true, Ordering::Relaxed);
        for t in [sender, leak_thread, server_thread] {
            t.join().ok();
        }
        let leaked = leaks.lock().unwrap().len();
        out.push(Add {
            enforced_ms: first as f64 / 1000.0,
            add_ms,
            leaked,
        });
        c.world.nodes[node].del_pod(&name)?;
        c.api.delete::<Pod>(NS, &name)?;
    }
    Ok(out)
}

/// Copy the agents' logs to `dir`, if given.
fn keep_logs(world: &World, dir: Option<&Path>, pods: usize) -> Result<()> {
    let Some(dir) = dir else { return Ok(()) };
    std::fs::create_dir_all(dir)?;
    for (i, n) in world.nodes.iter().enumerate() {
        std::fs::write(dir.join(format!("{pods}-node-{i}.log")), n.agent_log())?;
    }
    Ok(())
}

/// A table row and its CSV lines: p50, p99 and max of `v` (ms).
fn row(md: &mut String, csv: &mut String, pods: usize, label: &str, key: &str, v: &mut [f64]) {
    let (p50, p99, max) = (
        perf::percentile(v, 0.5),
        perf::percentile(v, 0.99),
        perf::percentile(v, 1.0),
    );
    let _ = writeln!(
        md,
        "| {pods} | {label} | {p50:.1} ms | {p99:.1} ms | {max:.1} ms |"
    );
    let _ = writeln!(
        csv,
        "{key}_p50_ms,{pods},{p50:.2},ms\n{key}_p99_ms,{pods},{p99:.2},ms\n{key}_max_ms,{pods},{max:.2},ms"
    );
}

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    let mut md =
        String::from("# Kubernetes mode end to end: three agents, the fake API server\n\n");
    let _ = writeln!(md, "Reproduce (as root): `cargo build --release -p agent -p cni -p perf && target/release/septa-perf-kube-world --out perf/results`. Three nodes (network namespaces, host-gw routes), the fake API server on the underlay, each agent with `--source kubernetes`; see the binary's module doc.\n");
    let mut csv = String::from("measure,pods,value,unit\n");

    let _ = writeln!(md, "## Start-up to ready (three agents side by side, fresh world)\n\n| pods in the API | node-0 | node-1 | node-2 | agent RSS once ready (node-0 / 1 / 2) |\n|---:|---:|---:|---:|---:|");
    for &n in &args.startup_pods {
        eprintln!("septa-perf-kube-world: start-up with {n} pods in the API ...");
        let mut c = cluster(&format!("ks{}", n / 1000), n, args.policies)?;
        let t = start(&mut c.world)?;
        keep_logs(&c.world, args.logs.as_deref(), n)?;
        let rss: Vec<f64> = c
            .world
            .nodes
            .iter()
            .map(|node| perf::status_mib(node.agent_pid(), "VmRSS"))
            .collect();
        let _ = writeln!(
            md,
            "| {n} | {:.2} s | {:.2} s | {:.2} s | {:.0} / {:.0} / {:.0} MiB |",
            t[0], t[1], t[2], rss[0], rss[1], rss[2]
        );
        for (i, v) in t.iter().enumerate() {
            let _ = writeln!(csv, "startup_s_node{i},{n},{v:.3},s");
        }
        for (i, v) in rss.iter().enumerate() {
            let _ = writeln!(csv, "rss_mib_node{i},{n},{v:.1},MiB");
        }
    }

    let mut runs = Vec::new();
    for &n in &args.pods {
        eprintln!(
            "septa-perf-kube-world: {} policy changes and {} CNI ADDs with {n} pods in the API ...",
            args.changes, args.adds
        );
        let mut c = cluster(&format!("kl{}", n / 1000), n, args.policies)?;
        start(&mut c.world)?;
        let changes = policy_changes(&mut c, &args)?;
        let adds = cni_adds(&mut c, &args)?;
        keep_logs(&c.world, args.logs.as_deref(), n)?;
        runs.push((n, changes, adds));
    }

    let _ = writeln!(md, "\n## NetworkPolicy change in the API → enforced ({} changes, datagram every {:?} from node-0's client to each node's server)\n\n| pods in the API | | p50 | p99 | max |\n|---:|---|---:|---:|---:|", args.changes, args.tick);
    for (n, changes, _) in &runs {
        let mut all: Vec<f64> = changes
            .iter()
            .map(|l| l.iter().copied().fold(0.0, f64::max))
            .collect();
        row(
            &mut md,
            &mut csv,
            *n,
            "**all three nodes** (the slowest)",
            "policy_all",
            &mut all,
        );
        for node in 0..NODES {
            let mut v: Vec<f64> = changes.iter().map(|l| l[node]).collect();
            row(
                &mut md,
                &mut csv,
                *n,
                &format!("node-{node}"),
                &format!("policy_node{node}"),
                &mut v,
            );
        }
    }
    let _ = writeln!(md, "\n## CNI ADD → enforced ({} pods, rotating over the nodes)\n\n| pods in the API | | p50 | p99 | max |\n|---:|---|---:|---:|---:|", args.adds);
    let mut leaks = Vec::new();
    for (n, _, adds) in &runs {
        let mut enforced: Vec<f64> = adds.iter().map(|a| a.enforced_ms).collect();
        let mut add: Vec<f64> = adds.iter().map(|a| a.add_ms).collect();
        row(
            &mut md,
            &mut csv,
            *n,
            "**Pod written to the API → first allowed datagram delivered**",
            "add_enforced",
            &mut enforced,
        );
        row(
            &mut md,
            &mut csv,
            *n,
            "the CNI ADD alone",
            "add_only",
            &mut add,
        );
        let leaked: usize = adds.iter().map(|a| a.leaked).sum();
        let _ = writeln!(csv, "add_leaked,{n},{leaked},datagrams");
        leaks.push(format!("{leaked} with {n} pods in the API"));
    }
    let _ = writeln!(
        md,
        "\nDatagrams new pods sent where their policy forbids, delivered: {} ({} pods each).",
        leaks.join(", "),
        args.adds
    );
    std::fs::write(args.out.join("kube_world.md"), &md)?;
    std::fs::write(args.out.join("kube_world.csv"), &csv)?;
    print!("{md}");
    Ok(())
}
