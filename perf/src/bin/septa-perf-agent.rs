//! septa-perf-agent: the agent at scale.
//!
//! - Enforcement latency: the time from writing a policy file to the first packet that gets
//!   the new verdict, over many changes, with N endpoints registered. A client sends a UDP
//!   datagram every 100 µs (sequence number and send time); each change flips the server's
//!   ingress between allowing and not allowing that port, so the first dropped (or first
//!   delivered) datagram after the write marks enforcement. The figure includes noticing the
//!   change (the agent polls the directory), compiling, and writing the maps.
//! - Agent memory (VmRSS) once N endpoints are adopted, and the time to adopt them.
//!
//! Endpoints beyond the two real pods are veth pairs in the node namespace, registered through
//! the agent's registry file (adopted at start, as after a restart).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    net::{IpAddr, Ipv4Addr, UdpSocket},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use agent::registry::Registered;
use anyhow::{bail, Context, Result};
use api::protocol::Endpoint;
use clap::Parser;
use hostnet::netns::in_netns;
use testbed::{
    node::{Binaries, Node},
    traffic::poll_until,
};

#[derive(Parser)]
#[command(
    about = "Measure septa-agent: policy-change-to-enforcement latency and memory at N endpoints"
)]
struct Args {
    /// Output directory for agent.{md,csv}.
    #[arg(long, default_value = "perf/results")]
    out: PathBuf,
    /// Endpoint counts for the memory measurement.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    endpoints: Vec<usize>,
    /// Endpoints during the latency measurement.
    #[arg(long, default_value_t = 1000)]
    latency_endpoints: usize,
    /// Policy changes to time.
    #[arg(long, default_value_t = 100)]
    changes: usize,
    /// Agent directory poll interval.
    #[arg(long, default_value = "10ms")]
    poll: String,
}

const WORKLOADS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n";

/// 100 policies over the synthetic endpoints (app0..app99), so the compile is not trivial.
fn background_policies() -> String {
    let mut s = String::new();
    for k in 0..100 {
        let _ = write!(s, "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{k}, namespace: bench}}\nspec:\n  podSelector: {{matchLabels: {{app: app{k}}}}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{app: app{}}}}}}}], ports: [{{port: 8080}}]}}]\n", (k + 1) % 100);
    }
    s
}

fn server_policy(port: u16) -> String {
    format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: server, namespace: bench}}\nspec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{app: client}}}}}}], ports: [{{protocol: UDP, port: {port}}}]}}]\n")
}

/// A node with `n` synthetic endpoints registered, ready to start its agent.
fn prepare(n: usize, poll: &str) -> Result<Node> {
    let mut node = Node::new("bench", Binaries::beside_current_exe()?)?;
    node.agent_args = vec!["--poll-interval".into(), poll.into()];
    node.ready_timeout = Duration::from_secs(900);
    node.write_manifest("00-ns.yaml", WORKLOADS)?;
    node.write_manifest("10-background.yaml", &background_policies())?;
    node.write_manifest("20-server.yaml", &server_policy(9000))?;
    // Veth pairs, in batches through `ip -batch`.
    let mut batch = String::new();
    for i in 0..n {
        let _ = writeln!(
            batch,
            "link add b{i}a type veth peer name b{i}b\nlink set b{i}a up"
        );
    }
    let mut ipb = Command::new("ip")
        .args(["-n", &node.bed.node, "-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()?;
    ipb.stdin
        .take()
        .context("stdin")?
        .write_all(batch.as_bytes())?;
    if !ipb.wait()?.success() {
        bail!("ip -batch failed");
    }
    let mut reg: BTreeMap<String, Registered> = BTreeMap::new();
    for i in 0..n {
        let ip = IpAddr::V4(Ipv4Addr::from(0x0a40_0000u32 + i as u32 + 1));
        let endpoint = Endpoint {
            container_id: format!("bench-{i}"),
            netns: String::new(),
            ifname: "eth0".into(),
            host_ifname: format!("b{i}a"),
            cgroup: None,
            namespace: "bench".into(),
            name: format!("pod-{i}"),
            labels: Some([("app".to_string(), format!("app{}", i % 100))].into()),
            ips: vec![ip],
        };
        reg.insert(
            endpoint.container_id.clone(),
            Registered {
                endpoint,
                slot: 0,
                endpoint_id: i as u32 + 1,
            },
        );
    }
    let state = node.dir.join("state");
    std::fs::create_dir_all(&state)?;
    std::fs::write(state.join("endpoints.json"), serde_json::to_vec(&reg)?)?;
    Ok(node)
}

/// Time `changes` policy flips; returns latencies in ms.
fn latency(node: &mut Node, changes: usize) -> Result<Vec<f64>> {
    let server = node.add_pod("bench", "server", "app=server")?;
    let client = node.add_pod("bench", "client", "app=client")?;
    let dst = std::net::SocketAddr::new(Node::pod_ip(&server), 9000);
    let rx_sock = in_netns(&server.netns, || UdpSocket::bind("0.0.0.0:9000"))??;
    rx_sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    let tx_sock = in_netns(&client.netns, || UdpSocket::bind("0.0.0.0:0"))??;
    let base = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    // seq → send time (µs since base)
    let sent: Arc<Mutex<Vec<u64>>> = Arc::default();
    let received: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default(); // (seq, receive time)
    let sender = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = base.elapsed().as_micros() as u64;
                sent.lock().unwrap().push(t);
                let _ = tx_sock.send_to(&seq.to_be_bytes(), dst);
                seq += 1;
                let next = Duration::from_micros(100 * seq);
                if let Some(wait) = next.checked_sub(base.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        })
    };
    let receiver = {
        let (stop, received) = (stop.clone(), received.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 8];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(8) = rx_sock.recv(&mut buf) {
                    received
                        .lock()
                        .unwrap()
                        .push((u64::from_be_bytes(buf), base.elapsed().as_micros() as u64));
                }
            }
        })
    };
    let mut out = Vec::new();
    let mut allowed = true;
    // Wait for the stream to flow.
    poll_until(Duration::from_secs(10), || {
        (!received.lock().unwrap().is_empty()).then_some(())
    })
    .context("no datagram arrives")?;
    for _ in 0..changes {
        std::thread::sleep(Duration::from_millis(20)); // let the state settle between changes
        let t0 = base.elapsed().as_micros() as u64;
        allowed = !allowed;
        node.write_manifest(
            "20-server.yaml",
            &server_policy(if allowed { 9000 } else { 9001 }),
        )?;
        let seen = poll_until(Duration::from_secs(10), || {
            let rx = received.lock().unwrap();
            let tx = sent.lock().unwrap();
            if allowed {
                // First datagram sent after t0 that arrived.
                rx.iter()
                    .filter(|(s, _)| tx[*s as usize] >= t0)
                    .map(|(s, _)| tx[*s as usize])
                    .min()
            } else {
                // The first datagram after the last one that arrived, once 20 ms of silence shows it.
                let last = rx.iter().map(|(s, _)| *s).max()?;
                let next = tx.get(last as usize + 1).copied()?;
                (tx.last().copied()? > next + 20_000).then_some(next.max(t0))
            }
        });
        let at = seen.context("the change was not enforced within 10 s")?;
        out.push((at.saturating_sub(t0)) as f64 / 1000.0);
    }
    stop.store(true, Ordering::Relaxed);
    sender.join().ok();
    receiver.join().ok();
    Ok(out)
}

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    let mut md = String::from("# septa-agent at scale\n\nReproduce: `cargo build --release -p dataplane --bins && cargo run --release -p perf --bin septa-perf-agent -- --out perf/results`.\n\n");
    let mut csv = String::from("measure,endpoints,value,unit\n");

    eprintln!(
        "septa-perf-agent: latency at {} endpoints, {} changes ...",
        args.latency_endpoints, args.changes
    );
    let mut node = prepare(args.latency_endpoints, &args.poll)?;
    node.start_agent()?;
    let mut lat = latency(&mut node, args.changes)?;
    drop(node);
    let (p50, p99, max) = (
        perf::percentile(&mut lat, 0.5),
        perf::percentile(&mut lat, 0.99),
        perf::percentile(&mut lat, 1.0),
    );
    let _ = writeln!(md, "## Policy file change → enforcement ({} endpoints, {} changes, agent --poll-interval {})\n", args.latency_endpoints, args.changes, args.poll);
    let _ = writeln!(
        md,
        "| median | p99 | max |\n|---:|---:|---:|\n| {p50:.1} ms | {p99:.1} ms | {max:.1} ms |\n"
    );
    let _ = writeln!(md, "Measured as the first datagram of a 10 kHz UDP stream with the new verdict after the file write; it includes the directory poll (up to one interval), the compile of all {} endpoints and 100+ policies, and the map diff.\n", args.latency_endpoints);
    for (k, v) in [
        ("latency_p50_ms", p50),
        ("latency_p99_ms", p99),
        ("latency_max_ms", max),
    ] {
        let _ = writeln!(csv, "{k},{},{v:.2},ms", args.latency_endpoints);
    }

    let _ = writeln!(md, "## Agent memory and adoption time\n\n| endpoints | adopt + first reconcile | agent RSS |\n|---:|---:|---:|");
    for &n in &args.endpoints {
        eprintln!("septa-perf-agent: memory at {n} endpoints ...");
        let mut node = prepare(n, &args.poll)?;
        let t = Instant::now();
        node.start_agent()?;
        let ready = t.elapsed().as_secs_f64();
        let pid = node.agent_pid().context("agent pid")?;
        std::thread::sleep(Duration::from_millis(200));
        let rss = perf::status_mib(Some(pid), "VmRSS");
        let adopted = node.agent_log().matches("endpoint adopted").count();
        if adopted != n {
            bail!(
                "adopted {adopted} of {n} endpoints:\n{}",
                node.agent_log()
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        let _ = writeln!(md, "| {n} | {ready:.1} s | {rss:.0} MiB |");
        let _ = writeln!(csv, "rss_mib,{n},{rss:.1},MiB\nadopt_s,{n},{ready:.2},s");
    }
    std::fs::write(args.out.join("agent.md"), &md)?;
    std::fs::write(args.out.join("agent.csv"), &csv)?;
    print!("{md}");
    Ok(())
}
