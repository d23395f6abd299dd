//! septa-perf-dns: the cost of FQDN rules' DNS answer hold-back, with real DNS (dnsmasq) and
//! the real agent, in one run:
//! - added latency of a lookup: the same lookups, interleaved, from a pod an FqdnPolicy
//!   selects (its answers go through the agent) and from one it does not (answers go
//!   straight through), median and p99;
//! - answers per second: 10,000 distinct names looked up with a window of outstanding queries,
//!   from each pod;
//! - agent memory per 10,000 tracked names (VmRSS before and after), and the entries held.

use std::{
    fmt::Write as _,
    net::{SocketAddr, UdpSocket},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Parser;
use hostnet::netns::in_netns;
use testbed::{
    cni::Attachment,
    dns::{dns_query, query, Outside, RESOLVER},
    node::{http_get, metric, Binaries, Node},
    traffic::poll_until,
};

#[derive(Parser)]
#[command(about = "Measure the DNS answer hold-back of FQDN rules: latency, answers/s, memory")]
struct Args {
    /// Output directory for dns.{md,csv}.
    #[arg(long, default_value = "perf/results")]
    out: PathBuf,
    /// Lookups per pod for the latency figures.
    #[arg(long, default_value_t = 2000)]
    lookups: usize,
    /// Distinct names for the throughput and memory figures.
    #[arg(long, default_value_t = 10_000)]
    names: usize,
    /// Outstanding queries during the throughput run.
    #[arg(long, default_value_t = 64)]
    window: usize,
}

const POLICY: &str = "apiVersion: septa.dev/v1alpha1
kind: FqdnPolicy
metadata: {name: by-name, namespace: bench}
spec:
  podSelector: {matchLabels: {app: fqdn}}
  egress:
  - toFQDNs: [{matchPattern: '**.example.test'}]
    ports: [{protocol: TCP, port: 443}]
";

/// Look up `names` from `pod` with at most `window` queries outstanding; returns
/// (answers received, seconds).
fn burst(pod: &Attachment, names: &[String], window: usize) -> Result<(usize, f64)> {
    let server: SocketAddr = format!("{RESOLVER}:53").parse()?;
    in_netns(&pod.netns, || -> Result<(usize, f64)> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let t = Instant::now();
        let (mut sent, mut got) = (0usize, 0usize);
        let mut buf = vec![0u8; 4096];
        while got < names.len() {
            while sent < names.len() && sent - got < window {
                s.send_to(&dns_query(&names[sent], sent as u16), server)?;
                sent += 1;
            }
            match s.recv(&mut buf) {
                Ok(_) => got += 1,
                // A lost answer: count it as done so the run ends; the total shows it.
                Err(_) => {
                    if sent == names.len() {
                        break;
                    }
                    got += 1;
                }
            }
        }
        Ok((got, t.elapsed().as_secs_f64()))
    })?
}

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    let mut node = Node::new("perfdns", Binaries::beside_current_exe()?)?;
    node.agent_args = [
        "--dns-resolver",
        RESOLVER,
        "--dns-preresolve-interval",
        "0s",
        "--dns-max-ips-per-name",
        "4",
    ]
    .map(str::to_owned)
    .to_vec();
    node.log_filter = "warn".into();
    node.write_manifest(
        "00-ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n",
    )?;
    node.write_manifest("10-fqdn.yaml", POLICY)?;
    node.start_agent()?;
    let held = node.add_pod("bench", "fqdn-1", "app=fqdn")?;
    let plain = node.add_pod("bench", "plain-1", "app=plain")?;
    for p in [&held, &plain] {
        Node::route_via_node(p)?;
    }
    let records = vec!["--host-record=api.example.test,198.51.100.10,600".to_owned()];
    let out = Outside::start(&node, &["198.51.100.10"], &records, "api.example.test")?;
    let names: Vec<String> = (0..args.names)
        .map(|i| format!("n{i}.example.test"))
        .collect();
    let hosts: String = (0..args.names)
        .map(|i| format!("100.64.{}.{} n{i}.example.test\n", i / 250, 1 + i % 250))
        .collect();
    out.set_hosts(&hosts)?;
    poll_until(Duration::from_secs(10), || {
        query(&out.path(), &names[args.names - 1], false)
            .ok()
            .filter(|a| !a.is_empty())
    })
    .context("dnsmasq did not load the names")?;

    // Latency, interleaved so drift hits both alike.
    eprintln!("septa-perf-dns: {} lookups per pod ...", args.lookups);
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..args.lookups {
        for (pod, v) in [(&held, &mut with), (&plain, &mut without)] {
            let t = Instant::now();
            let a = query(&pod.netns, "api.example.test", false)?;
            anyhow::ensure!(!a.is_empty(), "empty answer");
            v.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    let (w50, w99) = (
        perf::percentile(&mut with, 0.5),
        perf::percentile(&mut with, 0.99),
    );
    let (o50, o99) = (
        perf::percentile(&mut without, 0.5),
        perf::percentile(&mut without, 0.99),
    );

    // Throughput and memory.
    let pid = node.agent_pid().context("agent pid")?;
    let rss0 = perf::status_mib(Some(pid), "VmRSS");
    eprintln!(
        "septa-perf-dns: {} names, window {} ...",
        args.names, args.window
    );
    let (got_plain, secs_plain) = burst(&plain, &names, args.window)?;
    let (got_held, secs_held) = burst(&held, &names, args.window)?;
    let m = poll_until(Duration::from_secs(10), || {
        let m = http_get(&node.bed.node_path(), "/metrics");
        (metric(&m, "septa_fqdn_entries ") >= got_held as f64).then_some(m)
    })
    .unwrap_or_else(|| http_get(&node.bed.node_path(), "/metrics"));
    let rss1 = perf::status_mib(Some(pid), "VmRSS");
    let entries = metric(&m, "septa_fqdn_entries ");
    let lost = metric(&m, "septa_dns_kernel_answers_total{result=\"lost\"}");
    node.stop_agent()?;
    drop(out);

    let mut md = String::from("# FQDN rules: DNS answer hold-back\n\nReproduce: `cargo build --release -p dataplane --bins && cargo run --release -p perf --bin septa-perf-dns -- --out perf/results`. Real dnsmasq in a namespace, the real agent; one run.\n\n");
    let _ = writeln!(
        md,
        "## Lookup latency ({} lookups per pod, interleaved)\n",
        args.lookups
    );
    let _ = writeln!(md, "| pod | median | p99 |\n|---|---:|---:|");
    let _ = writeln!(
        md,
        "| not selected (answer goes straight through) | {o50:.0} µs | {o99:.0} µs |"
    );
    let _ = writeln!(md, "| selected by an FqdnPolicy (answer held, entries written, re-injected) | {w50:.0} µs | {w99:.0} µs |");
    let _ = writeln!(
        md,
        "| **added by the hold-back** | **{:+.0} µs (×{:.2})** | **{:+.0} µs (×{:.2})** |\n",
        w50 - o50,
        w50 / o50,
        w99 - o99,
        w99 / o99
    );
    let _ = writeln!(
        md,
        "## Answers per second ({} distinct names, {} outstanding)\n",
        args.names, args.window
    );
    let _ = writeln!(md, "| pod | answers | answers/s |\n|---|---:|---:|");
    let _ = writeln!(
        md,
        "| not selected | {got_plain} | {:.0} |",
        got_plain as f64 / secs_plain
    );
    let _ = writeln!(
        md,
        "| selected (through the agent) | {got_held} | {:.0} (×{:.2}) |",
        got_held as f64 / secs_held,
        (got_held as f64 / secs_held) / (got_plain as f64 / secs_plain)
    );
    let _ = writeln!(md, "\nAnswers lost to a full hold-back ring: {lost:.0}.\n");
    let _ = writeln!(md, "## Memory\n\nAgent VmRSS {rss0:.1} → {rss1:.1} MiB after learning {entries:.0} entries ({} names): **{:.1} MiB per 10,000 names**. The kernel allowlist is a preallocated hash (262,144 entries), its memory fixed.", args.names, (rss1 - rss0) * 10_000.0 / args.names as f64);
    let mut csv = String::from("measure,value,unit\n");
    for (k, v, u) in [
        ("lookup_median_without", o50, "us"),
        ("lookup_median_with", w50, "us"),
        ("lookup_p99_without", o99, "us"),
        ("lookup_p99_with", w99, "us"),
        (
            "answers_per_s_without",
            got_plain as f64 / secs_plain,
            "1/s",
        ),
        ("answers_per_s_with", got_held as f64 / secs_held, "1/s"),
        (
            "rss_mib_per_10k_names",
            (rss1 - rss0) * 10_000.0 / args.names as f64,
            "MiB",
        ),
    ] {
        let _ = writeln!(csv, "{k},{v:.1},{u}");
    }
    std::fs::write(args.out.join("dns.md"), &md)?;
    std::fs::write(args.out.join("dns.csv"), csv)?;
    print!("{md}");
    Ok(())
}
