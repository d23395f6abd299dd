//! The standalone demo: a node as a network namespace running `septa-agent` on
//! `policies/examples/demo/`, pods created through a real CNI chain (bridge + host-local +
//! septa-cni), real connections between every pair, the verdicts checked against what
//! `septa connlist` predicts, flow records, then a live policy change. Cleans up after itself.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use dataplane::testing::{
    cni::Attachment,
    node::{Binaries, Node},
    traffic::{echo, poll_until, tcp_connect, Server},
};
use policies::{connlist::connlist, load::load_paths, model::Protocol};

const GREEN: &str = "\x1b[32m";
const RED: &str = "\x1b[31m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

/// (namespace, pod, labels, workload, ports it serves)
const PODS: [(&str, &str, &str, &str, &[u16]); 5] = [
    (
        "shop",
        "frontend-1",
        "app=frontend,tier=web",
        "frontend",
        &[8080, 9090],
    ),
    (
        "shop",
        "api-1",
        "app=api,tier=backend",
        "api",
        &[8000, 9090],
    ),
    ("shop", "db-1", "app=db,tier=data", "db", &[5432]),
    (
        "monitoring",
        "prometheus-1",
        "app=prometheus",
        "prometheus",
        &[9090],
    ),
    ("default", "outsider-1", "app=outsider", "outsider", &[8080]),
];

struct Pod {
    ns: &'static str,
    name: &'static str,
    workload: &'static str,
    ports: &'static [u16],
    att: Attachment,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Try every (source, destination port) at once; a denied TCP connect costs one timeout.
fn matrix(pods: &[Pod]) -> Vec<Vec<bool>> {
    std::thread::scope(|s| {
        let handles: Vec<Vec<_>> = pods
            .iter()
            .map(|src| {
                pods.iter()
                    .flat_map(|dst| dst.ports.iter().map(move |&p| (dst, p)))
                    .map(|(dst, port)| {
                        s.spawn(move || {
                            if std::ptr::eq(src, dst) {
                                return true;
                            }
                            let to = SocketAddr::new(Node::pod_ip(&dst.att), port);
                            tcp_connect(&src.att.netns, to)
                                .and_then(|mut c| echo(&mut c, b"hi"))
                                .is_ok()
                        })
                    })
                    .collect()
            })
            .collect();
        handles
            .into_iter()
            .map(|row| row.into_iter().map(|h| h.join().unwrap_or(false)).collect())
            .collect()
    })
}

/// What connlist says about the same cells, from the manifests alone.
fn predicted(dir: &[&Path], pods: &[Pod]) -> Result<Vec<Vec<bool>>> {
    let (cluster, diags) = load_paths(dir);
    if !diags.is_empty() {
        bail!("manifests: {diags}");
    }
    let list = connlist(&cluster, &Default::default());
    let allows = |s: &Pod, d: &Pod, port: u16| {
        std::ptr::eq(s, d)
            || list.iter().any(|c| {
                c.src
                    .to_string()
                    .starts_with(&format!("{}/{}[", s.ns, s.workload))
                    && c.dst
                        .to_string()
                        .starts_with(&format!("{}/{}[", d.ns, d.workload))
                    && c.conns.allows(Protocol::Tcp, port)
            })
    };
    Ok(pods
        .iter()
        .map(|s| {
            pods.iter()
                .flat_map(|d| d.ports.iter().map(move |&p| (d, p)))
                .map(|(d, p)| allows(s, d, p))
                .collect()
        })
        .collect())
}

fn print_matrix(pods: &[Pod], got: &[Vec<bool>], want: &[Vec<bool>]) -> usize {
    let cols: Vec<String> = pods
        .iter()
        .flat_map(|d| d.ports.iter().map(move |p| format!("{}:{p}", d.workload)))
        .collect();
    print!("{:<24}", "from \\ to");
    for c in &cols {
        print!("{c:>17}");
    }
    println!();
    let mut wrong = 0;
    for (i, s) in pods.iter().enumerate() {
        print!("{:<24}", format!("{}/{}", s.ns, s.name));
        for (j, c) in cols.iter().enumerate() {
            let (g, w) = (got[i][j], want[i][j]);
            let self_cell = c.starts_with(&format!("{}:", s.workload));
            let text = if self_cell {
                "-".to_string()
            } else if g {
                format!("{GREEN}allowed{RESET}")
            } else {
                format!("{RED}denied{RESET}")
            };
            let pad = if self_cell {
                17
            } else {
                17 + GREEN.len() + RESET.len()
            };
            let mark = if g != w && !self_cell {
                wrong += 1;
                "!"
            } else {
                ""
            };
            print!("{text:>pad$}{mark}");
        }
        println!();
    }
    wrong
}

fn main() -> Result<()> {
    let started = Instant::now();
    let exe_dir = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .to_owned();
    let bins = Binaries {
        agent: exe_dir.join("septa-agent"),
        cni_dir: exe_dir.clone(),
    };
    for b in [&bins.agent, &exe_dir.join("septa-cni")] {
        if !b.exists() {
            bail!(
                "{} not found: build with `make demo` (cargo build --release -p dataplane --bins)",
                b.display()
            );
        }
    }
    let examples = root().join("policies/examples/demo");
    let change = root().join("policies/examples/demo-change/monitoring-lockdown.yaml");

    println!(
        "{BOLD}septa demo{RESET}: a node (network namespace) running septa-agent on {}",
        examples.display()
    );
    let mut node = Node::new("demo", bins)?;
    node.log_filter = "info,septa::flow=debug".into();
    for f in ["workloads.yaml", "policies.yaml"] {
        node.write_manifest(f, &std::fs::read_to_string(examples.join(f))?)?;
    }
    node.start_agent()?;
    println!("agent ready; creating pods through CNI: bridge + host-local + septa-cni");
    let mut pods = Vec::new();
    for (ns, name, labels, workload, ports) in PODS {
        let att = node.add_pod(ns, name, labels)?;
        println!(
            "  {:<26} {:<12} labels {labels}",
            format!("{ns}/{name}"),
            Node::pod_ip(&att).to_string()
        );
        pods.push(Pod {
            ns,
            name,
            workload,
            ports,
            att,
        });
    }
    let _servers: Vec<Server> = pods
        .iter()
        .map(|p| Server::start(&p.att.netns, p.ports, &[]))
        .collect::<Result<_>>()?;

    println!("\n{BOLD}1. real TCP connections between every pair{RESET} (! = differs from `septa connlist`)");
    let got = matrix(&pods);
    let want = predicted(&[&examples], &pods)?;
    let wrong = print_matrix(&pods, &got, &want);
    println!(
        "{}",
        if wrong == 0 {
            format!(
                "{GREEN}every cell agrees with `septa connlist {}`{RESET}",
                examples.display()
            )
        } else {
            format!("{RED}{wrong} cells differ from connlist{RESET}")
        }
    );

    println!("\n{BOLD}2. flow records{RESET} (the kernel's events, as the agent logs them)");
    poll_until(Duration::from_secs(3), || {
        node.agent_log().contains("septa::flow").then_some(())
    });
    let flows: Vec<String> = node
        .agent_log()
        .lines()
        .filter(|l| l.contains("septa::flow"))
        .map(|l| l.split("septa::flow: ").nth(1).unwrap_or(l).to_owned())
        .collect();
    if flows.is_empty() {
        println!("  (none logged yet)");
    }
    let tcp = |kind: &'static str| {
        flows
            .iter()
            .filter(move |f| f.starts_with(kind) && f.contains(" TCP "))
    };
    for f in tcp("DENY").take(4).chain(tcp("NEW").take(4)) {
        println!("  {f}");
    }

    println!(
        "\n{BOLD}3. live change{RESET}: adding {}",
        change.file_name().unwrap_or_default().to_string_lossy()
    );
    let before = node.agent_log().matches("maps reconciled").count();
    node.write_manifest(
        "20-monitoring-lockdown.yaml",
        &std::fs::read_to_string(&change)?,
    )?;
    let applied = poll_until(Duration::from_secs(10), || {
        (node.agent_log().matches("maps reconciled").count() > before).then_some(())
    });
    if applied.is_none() {
        bail!("the agent did not apply the change:\n{}", node.agent_log());
    }
    let dir = node.manifests.clone();
    let got2 = matrix(&pods);
    let want2 = predicted(&[&dir], &pods)?;
    let wrong2 = print_matrix(&pods, &got2, &want2);
    let changed = got
        .iter()
        .flatten()
        .zip(got2.iter().flatten())
        .filter(|(a, b)| a != b)
        .count();
    println!(
        "{changed} cells changed; {}",
        if wrong2 == 0 {
            format!("{GREEN}every cell agrees with connlist on the new policies{RESET}")
        } else {
            format!("{RED}{wrong2} cells differ from connlist{RESET}")
        }
    );

    println!(
        "\ncleaning up: pods (CNI DEL), agent, namespaces, pinned state ({:.0?} in all)",
        started.elapsed()
    );
    drop(pods);
    drop(node);
    if wrong + wrong2 > 0 {
        bail!("the data path disagreed with the policy engine");
    }
    Ok(())
}
