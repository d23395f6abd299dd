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
use policies::{connlist::connlist, load::load_paths, model::Protocol};
use testbed::{
    cni::Attachment,
    dns::{query, Outside},
    node::{flow_records, http_get, metric, Binaries, Node},
    traffic::{echo, poll_until, tcp_connect, tcp_connect_from, Server},
};

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

/// Where the demo's threat feed (policies/examples/demo-egress/threat-feed.yaml) is read from.
const FEED_FILE: &str = "/run/septa-demo/bad-hosts.txt";
/// Outside the node: the partner's API, a host the partner's DNS also knows, a listed host.
const PARTNER_API: &str = "198.51.100.10";
const PARTNER_STATUS: &str = "198.51.100.67";
const BAD_HOST: &str = "198.51.100.66";

/// Step 4: egress by DNS name (FqdnPolicy) and a threat feed, with the expected verdicts.
/// Returns how many connections went otherwise than expected.
fn egress_and_feeds(node: &mut Node, outside: &Outside, outsider: &Attachment) -> Result<usize> {
    let examples = root().join("policies/examples/demo-egress");
    std::fs::create_dir_all(Path::new(FEED_FILE).parent().context("feed dir")?)?;
    std::fs::write(FEED_FILE, format!("# demo blocklist\n{BAD_HOST}\n"))?;
    for f in ["egress-by-name.yaml", "threat-feed.yaml"] {
        node.write_manifest(
            &format!("30-{f}"),
            &std::fs::read_to_string(examples.join(f))?,
        )?;
    }
    let ns = node.bed.node_path();
    let loaded = poll_until(Duration::from_secs(10), || {
        let m = http_get(&ns, "/metrics");
        let body = m.split("\r\n\r\n").nth(1)?;
        // The feed starts after the manifests it came in are compiled, the FqdnPolicy included.
        (metric(body, "septa_feed_entries{feed=\"demo-bad-hosts\"") >= 1.0).then_some(())
    });
    if loaded.is_none() {
        bail!(
            "the agent did not apply the egress policy and the feed:\n{}",
            node.agent_log()
        );
    }
    let payments = node.add_pod("shop", "payments-1", "app=payments")?;
    for a in [&payments, outsider] {
        Node::route_via_node(a)?;
    }
    let to = |a: &str| SocketAddr::new(a.parse().expect("address"), 443);
    let ok = |r: Result<std::net::TcpStream>| r.and_then(|mut c| echo(&mut c, b"hi")).is_ok();
    let resolve = |name: &str| -> String {
        match query(&payments.netns, name, false) {
            Ok(a) if !a.is_empty() => format!("{name} -> {}", a[0]),
            Ok(_) => format!("{name}: no address"),
            Err(e) => format!("{name}: {e:#}"),
        }
    };
    let mut wrong = 0;
    let mut show = |what: &str, got: bool, want: bool| {
        let verdict = if got {
            format!("{GREEN}allowed{RESET}")
        } else {
            format!("{RED}denied{RESET}")
        };
        let mark = if got == want {
            ""
        } else {
            wrong += 1;
            "  ! expected otherwise"
        };
        println!("  {what:<84} {verdict}{mark}");
    };
    show(
        &format!("shop/payments-1 -> {PARTNER_API}:443 before any lookup"),
        ok(tcp_connect(&payments.netns, to(PARTNER_API))),
        false,
    );
    let answer = resolve("api.partner.example");
    show(
        &format!("shop/payments-1 resolves {answer}, connects (first try)"),
        ok(tcp_connect(&payments.netns, to(PARTNER_API))),
        true,
    );
    let answer = resolve("status.partner.example");
    show(
        &format!("shop/payments-1 resolves {answer} (not in the policy)"),
        ok(tcp_connect(&payments.netns, to(PARTNER_STATUS))),
        false,
    );
    show(
        &format!("default/outsider-1 -> {PARTNER_STATUS}:443 (no policy)"),
        ok(tcp_connect(&outsider.netns, to(PARTNER_STATUS))),
        true,
    );
    show(
        &format!("default/outsider-1 -> {BAD_HOST}:443 (listed in the feed)"),
        ok(tcp_connect(&outsider.netns, to(BAD_HOST))),
        false,
    );
    let pod = SocketAddr::new(Node::pod_ip(outsider), 8080);
    show(
        &format!("{PARTNER_STATUS} (outside) -> default/outsider-1:8080"),
        ok(tcp_connect_from(
            &outside.path(),
            PARTNER_STATUS.parse()?,
            pod,
        )),
        true,
    );
    show(
        &format!("{BAD_HOST} (outside, listed) -> default/outsider-1:8080"),
        ok(tcp_connect_from(&outside.path(), BAD_HOST.parse()?, pod)),
        false,
    );
    Ok(wrong)
}

/// The flow records of step 4 (the JSON-lines log), one line each.
fn print_egress_records(log: &Path) {
    let outside = |r: &serde_json::Value| {
        ["source", "destination"].iter().any(|side| {
            r[side]["ip"]
                .as_str()
                .is_some_and(|ip| ip.starts_with("198.51.100."))
        })
    };
    let peer = |p: &serde_json::Value| {
        let who = match (p["namespace"].as_str(), p["pod"].as_str()) {
            (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
            _ => p["ip"].as_str().unwrap_or("?").to_owned(),
        };
        format!("{who}:{}", p["port"])
    };
    let mut seen = std::collections::BTreeSet::new();
    for r in flow_records(log).iter().filter(|r| outside(r)) {
        if r["protocol"] != "TCP" || !matches!(r["kind"].as_str(), Some("new" | "deny")) {
            continue;
        }
        let mut why = r["decided_by"].as_str().unwrap_or("?").to_owned();
        if let Some(p) = r["policy"]["name"].as_str() {
            why += &format!(" {}/{p}", r["policy"]["namespace"].as_str().unwrap_or(""));
        }
        if let Some(feed) = r["feed"].as_str() {
            why += &format!(" feed={feed}");
        }
        let names: Vec<&str> = r["dns_names"]
            .as_array()
            .map(|n| n.iter().filter_map(|n| n.as_str()).collect())
            .unwrap_or_default();
        if !names.is_empty() {
            why += &format!(" dns={}", names.join(","));
        }
        let line = format!(
            "{:<5} {:<9} {} -> {}  {why}",
            r["kind"].as_str().unwrap_or("?").to_uppercase(),
            r["verdict"].as_str().unwrap_or("?"),
            peer(&r["source"]),
            peer(&r["destination"]),
        );
        // A denied connect retries its SYN; one line per distinct record is enough here.
        if seen.insert(line.clone()) {
            println!("  {line}");
        }
    }
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
    let bins = Binaries::beside_current_exe().context("build with `make demo`")?;
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
    // The world beyond the node's uplink (sx0): a DNS server (dnsmasq) and a few hosts.
    let outside = Outside::start(
        &node,
        &[PARTNER_API, PARTNER_STATUS, BAD_HOST],
        &[
            format!("--host-record=api.partner.example,{PARTNER_API}"),
            format!("--host-record=status.partner.example,{PARTNER_STATUS}"),
        ],
        "api.partner.example",
    )?;
    let _outside_servers = Server::start(&outside.path(), &[443], &[])?;
    let flow_log = node.dir.join("flows.jsonl");
    node.agent_args = vec![
        "--xdp-interface".into(),
        "sx0".into(),
        "--flow-log".into(),
        flow_log.display().to_string(),
        // Only the pod's own lookups open egress here, so the first step below shows a denial.
        "--dns-preresolve-interval".into(),
        "0s".into(),
    ];
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
    for f in tcp("deny").take(4).chain(tcp("new").take(4)) {
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
        "\n{BOLD}4. egress by name and a threat feed{RESET}: adding {}",
        root().join("policies/examples/demo-egress").display()
    );
    let outsider = &pods
        .iter()
        .find(|p| p.name == "outsider-1")
        .context("outsider pod")?
        .att;
    let wrong3 = egress_and_feeds(&mut node, &outside, outsider)?;
    println!(
        "{}",
        if wrong3 == 0 {
            format!("{GREEN}every egress verdict as expected{RESET}")
        } else {
            format!("{RED}{wrong3} egress verdicts differ from what the policies say{RESET}")
        }
    );
    println!("flow records (the JSON-lines log; see README, \"Flow records\"):");
    print_egress_records(&flow_log);

    println!(
        "\ncleaning up: pods (CNI DEL), agent, namespaces, pinned state ({:.0?} in all)",
        started.elapsed()
    );
    drop(pods);
    drop(node);
    drop(outside);
    let _ = std::fs::remove_dir_all(Path::new(FEED_FILE).parent().unwrap_or(Path::new("/")));
    if wrong + wrong2 > 0 {
        bail!("the data path disagreed with the policy engine");
    }
    if wrong3 > 0 {
        bail!("egress by name or the threat feed did not do what the policies say");
    }
    Ok(())
}
