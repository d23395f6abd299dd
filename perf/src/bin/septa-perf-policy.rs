//! septa-perf-policy: policy-engine scale. For each (pods, policies) size it builds a
//! synthetic cluster, compiles it, records the time, the size of the compiled state and the
//! peak memory (each size in its own child process, so peaks do not mix), then changes one
//! pod's labels and measures the recompile + diff and the diff's size.

use std::{
    collections::BTreeMap, fmt::Write as _, net::IpAddr, path::PathBuf, process::Command,
    time::Instant,
};

use anyhow::{Context, Result};
use clap::Parser;
use policies::{
    compile::{Compiler, StateDiff},
    model::*,
    selector::{Requirement, Selector},
};

#[derive(Parser)]
#[command(about = "Measure the policy compiler: time, state size, peak memory, incremental diff")]
struct Args {
    /// Output directory for policy_compile.{md,csv}.
    #[arg(long, default_value = "perf/results")]
    out: PathBuf,
    /// Pod counts.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,50000")]
    pods: Vec<usize>,
    /// Policy counts.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
    policies: Vec<usize>,
    /// ipBlock counts for the ipBlock sweep (1,000 pods, one policy per ipBlock); `none`
    /// skips it.
    #[arg(long, value_delimiter = ',', default_value = "0,1000,10000")]
    blocks: Vec<String>,
    /// Internal: measure one size in this process and print one JSON line.
    #[arg(long, num_args = 2, hide = true)]
    one: Option<Vec<usize>>,
    /// Internal: measure one ipBlock count in this process and print one JSON line.
    #[arg(long, hide = true)]
    one_blocks: Option<usize>,
}

/// Deterministic pseudo-random numbers (no seed files, same cluster every run).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n.max(1)
    }
}

/// A cluster shaped like real ones: 10 replicas per app, 20 apps per namespace, teams of
/// namespaces; each policy isolates one app and allows a few others by label, across
/// namespaces, on numbered, named and ranged ports; some egress to ipBlocks.
fn synth(pods: usize, policies: usize) -> Result<Cluster> {
    synth_with_blocks(pods, policies, 10)
}

/// [`synth`] with an ipBlock egress rule (a distinct /24 with a /25 except) in every
/// `block_every`th policy.
fn synth_with_blocks(pods: usize, policies: usize, block_every: usize) -> Result<Cluster> {
    let mut rng = Lcg(42);
    let apps = (pods / 10).max(1);
    let namespaces = (apps / 20).max(1);
    let mut c = Cluster::default();
    for n in 0..namespaces {
        let name = format!("ns{n}");
        let labels = Labels::from([
            (NAMESPACE_NAME_LABEL.to_string(), name.clone()),
            ("team".to_string(), format!("t{}", n % 10)),
        ]);
        c.namespaces
            .insert(name.clone(), Namespace { name, labels });
    }
    for i in 0..pods {
        let app = i % apps;
        let ns = format!("ns{}", app % namespaces);
        let ip: IpAddr = std::net::Ipv4Addr::from(0x0a00_0000u32 + i as u32 + 1).into();
        c.pods.push(Pod {
            namespace: ns.clone(),
            name: format!("app{app}-{i}"),
            workload: WorkloadRef {
                namespace: ns,
                name: format!("app{app}"),
                kind: "Deployment".into(),
            },
            labels: Labels::from([
                ("app".to_string(), format!("app{app}")),
                (
                    "tier".to_string(),
                    ["web", "api", "db"][app % 3].to_string(),
                ),
            ]),
            named_ports: BTreeMap::from([
                ("http".to_string(), (Protocol::Tcp, 8080)),
                ("metrics".to_string(), (Protocol::Tcp, 9090)),
            ]),
            ips: vec![ip],
            host_network: false,
        });
    }
    let app_sel = |a: usize| {
        Selector(vec![Requirement::In(
            "app".into(),
            [format!("app{a}")].into(),
        )])
    };
    for p in 0..policies {
        let target = p % apps;
        let mut ingress = Vec::new();
        for _ in 0..2 {
            let from = rng.next(apps);
            let port = match rng.next(3) {
                0 => PortSel::Range(8080, 8080),
                1 => PortSel::Named("http".into()),
                _ => PortSel::Range(9000, 9099),
            };
            ingress.push(Rule {
                peers: Some(vec![Peer::Pods {
                    namespaces: NamespaceScope::Selected(Selector(vec![Requirement::In(
                        "team".into(),
                        [format!("t{}", (from % namespaces) % 10)].into(),
                    )])),
                    pods: app_sel(from),
                }]),
                ports: Some(vec![PortSpec {
                    protocol: Protocol::Tcp,
                    port,
                }]),
            });
        }
        let mut egress = vec![Rule {
            peers: Some(vec![Peer::Pods {
                namespaces: NamespaceScope::Own,
                pods: app_sel(rng.next(apps)),
            }]),
            ports: Some(vec![PortSpec {
                protocol: Protocol::Tcp,
                port: PortSel::Named("http".into()),
            }]),
        }];
        if p % block_every == 0 {
            let base = 0xc000_0000u32 + (p as u32) * 256;
            egress.push(Rule {
                peers: Some(vec![Peer::Block(IpBlock {
                    cidr: ipnetwork::IpNetwork::V4(ipnetwork::Ipv4Network::new(base.into(), 24)?),
                    except: vec![ipnetwork::IpNetwork::V4(ipnetwork::Ipv4Network::new(
                        (base + 128).into(),
                        25,
                    )?)],
                })]),
                ports: Some(vec![PortSpec {
                    protocol: Protocol::Tcp,
                    port: PortSel::Range(443, 443),
                }]),
            });
        }
        c.policies.push(Policy {
            namespace: format!("ns{}", target % namespaces),
            name: format!("p{p}"),
            audit: false,
            pod_selector: app_sel(target),
            ingress: Some(ingress),
            egress: Some(egress),
        });
    }
    Ok(c)
}

fn one(pods: usize, policies: usize) -> Result<serde_json::Value> {
    let mut c = synth(pods, policies)?;
    let mut compiler = Compiler::default();
    let t = Instant::now();
    let before = compiler.compile(&c);
    let compile_ms = t.elapsed().as_secs_f64() * 1e3;
    // One label change: a pod moves to another app.
    c.pods[0].labels.insert("app".into(), "app1".into());
    let t = Instant::now();
    let after = compiler.compile(&c);
    let diff = StateDiff::between(&before, &after);
    let change_ms = t.elapsed().as_secs_f64() * 1e3;
    Ok(serde_json::json!({
        "pods": pods, "policies": policies,
        "compile_ms": compile_ms,
        "identities": before.identities.len(),
        "policy_entries": before.policy.len(),
        "ipcache_entries": before.ipcache.len(),
        "endpoints": before.endpoints.len(),
        "state_bytes": before.policy.len() * 24 + before.ipcache.len() * 28 + before.endpoints.len() * 52,
        "change_ms": change_ms,
        "diff_entries": diff.len(),
        "peak_rss_mib": perf::status_mib(None, "VmHWM"),
    }))
}

/// Compile a 1,000-pod cluster whose `blocks` policies each egress to an ipBlock (and a CNI
/// ADD's recompile: one pod more).
fn one_blocks(blocks: usize) -> Result<serde_json::Value> {
    let mut c = synth_with_blocks(1000, blocks, 1)?;
    let mut compiler = Compiler::default();
    let t = Instant::now();
    let before = compiler.compile(&c);
    let compile_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut added = c.pods[0].clone();
    added.name = "added".into();
    added.ips = vec![std::net::Ipv4Addr::new(10, 255, 0, 1).into()];
    c.pods.push(added);
    let t = Instant::now();
    let after = compiler.compile(&c);
    let _ = StateDiff::between(&before, &after);
    let add_ms = t.elapsed().as_secs_f64() * 1e3;
    Ok(serde_json::json!({
        "blocks": blocks, "compile_ms": compile_ms, "add_ms": add_ms,
        "ipcache_entries": before.ipcache.len(), "policy_entries": before.policy.len(),
    }))
}

/// The ipBlock sweep, each count in its own process.
fn sweep_blocks(me: &std::path::Path, counts: &[usize], out: &std::path::Path) -> Result<()> {
    let mut rows = Vec::new();
    for &n in counts {
        eprintln!("septa-perf-policy: 1000 pods, {n} ipBlocks ...");
        let o = Command::new(me)
            .args(["--one-blocks", &n.to_string()])
            .output()
            .context("child run")?;
        anyhow::ensure!(
            o.status.success(),
            "child failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        rows.push(serde_json::from_slice::<serde_json::Value>(&o.stdout)?);
    }
    let mut csv = String::from("blocks,compile_ms,add_ms,ipcache_entries,policy_entries\n");
    let mut md = String::from("# Policy compiler: ipBlocks\n\nReproduce: `cargo run --release -p perf --bin septa-perf-policy -- --pods 0 --out perf/results` (the ipBlock sweep runs with the default `--blocks 0,1000,10000`).\n\n1,000 pods; every policy isolates one app and egresses to its own ipBlock (a /24 with a /25 except). `add` = the recompile and diff a CNI ADD waits for (one pod more). Each count in its own process.\n\n| ipBlocks | compile | add (recompile + diff) | ipcache entries | policy entries |\n|---:|---:|---:|---:|---:|\n");
    for r in &rows {
        let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
        let _ = writeln!(
            csv,
            "{},{:.3},{:.3},{},{}",
            f("blocks"),
            f("compile_ms"),
            f("add_ms"),
            f("ipcache_entries"),
            f("policy_entries")
        );
        let _ = writeln!(
            md,
            "| {} | {:.1} ms | {:.1} ms | {} | {} |",
            f("blocks"),
            f("compile_ms"),
            f("add_ms"),
            f("ipcache_entries"),
            f("policy_entries")
        );
    }
    std::fs::write(out.join("policy_ipblocks.csv"), csv)?;
    std::fs::write(out.join("policy_ipblocks.md"), &md)?;
    print!("{md}");
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(v) = &args.one {
        println!("{}", one(v[0], v[1])?);
        return Ok(());
    }
    if let Some(n) = args.one_blocks {
        println!("{}", one_blocks(n)?);
        return Ok(());
    }
    let me = std::env::current_exe()?;
    std::fs::create_dir_all(&args.out)?;
    if args.blocks != ["none"] {
        let counts = args
            .blocks
            .iter()
            .map(|b| {
                b.parse::<usize>()
                    .with_context(|| format!("--blocks {b}: a count, or none"))
            })
            .collect::<Result<Vec<_>>>()?;
        sweep_blocks(&me, &counts, &args.out)?;
    }
    if args.pods == [0] {
        return Ok(());
    }
    let mut rows = Vec::new();
    for &pods in &args.pods {
        for &policies in &args.policies {
            eprintln!("septa-perf-policy: {pods} pods, {policies} policies ...");
            let out = Command::new(&me)
                .args(["--one", &pods.to_string(), &policies.to_string()])
                .output()
                .context("child run")?;
            anyhow::ensure!(
                out.status.success(),
                "child failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            rows.push(serde_json::from_slice::<serde_json::Value>(&out.stdout)?);
        }
    }
    let cols = [
        "pods",
        "policies",
        "compile_ms",
        "identities",
        "policy_entries",
        "ipcache_entries",
        "state_bytes",
        "peak_rss_mib",
        "change_ms",
        "diff_entries",
    ];
    let mut csv = cols.join(",") + "\n";
    let mut md = String::from("# Policy compiler scale\n\nReproduce: `cargo run --release -p perf --bin septa-perf-policy -- --out perf/results`.\n");
    let _ = writeln!(md, "Synthetic clusters (10 replicas per app, 20 apps per namespace; each policy isolates one app, 2 ingress rules across namespaces on numbered/named/ranged ports, 1 egress rule, every 10th an ipBlock with except). Each size in its own process; `change` = recompile + diff after one pod's labels change.\n");
    let _ = writeln!(md, "| pods | policies | compile | identities | policy entries | ipcache entries | state | peak RSS | change (recompile+diff) | diff entries |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
        let _ = writeln!(
            csv,
            "{}",
            cols.iter()
                .map(|k| format!("{}", f(k)))
                .collect::<Vec<_>>()
                .join(",")
        );
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} ms | {} | {} | {} | {:.1} MiB | {:.0} MiB | {:.0} ms | {} |",
            f("pods"),
            f("policies"),
            f("compile_ms"),
            f("identities"),
            f("policy_entries"),
            f("ipcache_entries"),
            f("state_bytes") / 1048576.0,
            f("peak_rss_mib"),
            f("change_ms"),
            f("diff_entries")
        );
    }
    std::fs::write(args.out.join("policy_compile.csv"), csv)?;
    std::fs::write(args.out.join("policy_compile.md"), &md)?;
    print!("{md}");
    Ok(())
}
