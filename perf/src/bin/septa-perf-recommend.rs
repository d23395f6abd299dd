//! septa-perf-recommend: `septa recommend` at scale and on the golden application.
//!
//! - Ingestion: N flow records (1M and 10M by default) of a synthetic cluster (200 workloads in
//!   20 namespaces, 2,000 distinct connection tuples, each connection recorded at both ends
//!   plus an end record), generated as JSON lines on the fly and read through the same code
//!   path as a flow-log file. Each size runs in its own child process so its peak RSS
//!   (`VmHWM`) is its own. Records/s = records / (parse + ingest time); then the proposal time.
//! - Proposal size against observed tuples: policies, rules, peers, YAML lines.
//! - The golden application (`cli/tests/data/recommend`): learn from its 12-hour log,
//!   replay the following 6 hours: false-denial rate and over-permissiveness, with and without
//!   the DNS rule.

use std::{
    fmt::Write as _,
    io::{BufReader, Read},
    path::PathBuf,
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result};
use clap::Parser;
use cli::recommend::{
    observe::{Observer, Window},
    propose::{self, Options},
    FlowSource, Request,
};
use policies::load::load_str;

#[derive(Parser)]
#[command(
    about = "Measure septa recommend: ingestion rate and memory, proposal size, replay quality"
)]
struct Args {
    /// Output directory for recommend.{md,csv}.
    #[arg(long, default_value = "perf/results")]
    out: PathBuf,
    /// Record counts to ingest.
    #[arg(long, value_delimiter = ',', default_value = "1000000,10000000")]
    records: Vec<u64>,
    /// Internal: measure one size in this process and print one JSON line.
    #[arg(long, hide = true)]
    one: Option<u64>,
}

const NAMESPACES: usize = 20;
const PER_NS: usize = 10;
const TUPLES: usize = 2000;

fn manifests() -> String {
    let mut y = String::new();
    for n in 0..NAMESPACES {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{n}}}\n"
        );
        for a in 0..PER_NS {
            let _ = write!(
                y,
                "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: app{a}, namespace: ns{n}}}\nspec:\n  selector: {{matchLabels: {{app: app{a}}}}}\n  template:\n    metadata: {{labels: {{app: app{a}, team: t{n}}}}}\n    spec: {{containers: [{{name: c, image: i, ports: [{{name: http, containerPort: 8080}}]}}]}}\n"
            );
        }
    }
    y
}

/// Tuple `i` (0..TUPLES): (src workload, dst workload, port); all distinct.
fn tuple(i: usize) -> (usize, usize, u16) {
    let w = NAMESPACES * PER_NS;
    let (src, k) = (i % w, i / w);
    let dst = (src + 1 + k * 17) % w;
    let port = [8080u16, 9090, 5432, 6379, 443][k % 5];
    (src, dst, port)
}

/// JSON lines of flow records, generated as they are read.
struct Gen {
    n: u64,
    i: u64,
    buf: Vec<u8>,
    pos: usize,
}

impl Gen {
    fn refill(&mut self) {
        self.buf.clear();
        self.pos = 0;
        while self.buf.len() < 1 << 16 && self.i < self.n {
            let i = self.i;
            self.i += 1;
            let (s, d, port) = tuple((i / 3) as usize % TUPLES);
            let side = |w: usize, port: u16| {
                serde_json::json!({"ip": format!("10.{}.{}.{}", w / PER_NS, w % PER_NS, 10 + (i % 3)), "port": port,
                    "identity": 300, "namespace": format!("ns{}", w / PER_NS), "pod": format!("app{}-x-{}", w % PER_NS, i % 3),
                    "workload": format!("Deployment/app{}", w % PER_NS), "labels": {"app": format!("app{}", w % PER_NS)}})
            };
            let (kind, dir) = match i % 3 {
                0 => ("new", "egress"),
                1 => ("new", "ingress"),
                _ => ("end", "egress"),
            };
            let secs = 1_790_000_000 + i / 100;
            let t = humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
            )
            .to_string();
            let rec = serde_json::json!({
                "version": 1, "time": t, "start": t, "kind": kind, "verdict": "forwarded",
                "drop_reason": null, "direction": dir, "ip_version": 4, "protocol": "TCP",
                "source": side(s, 40000 + (i % 20000) as u16), "destination": side(d, port),
                "decided_by": "default-allow", "policy": null, "rule_id": 4294967294u32,
                "packets": {"forward": 10, "reverse": 8}, "bytes": {"forward": 1500, "reverse": 9000},
                "tcp_flags": ["SYN", "ACK"], "dns_names": [], "node": "node-1"
            });
            serde_json::to_writer(&mut self.buf, &rec).expect("serialize");
            self.buf.push(b'\n');
        }
    }
}

impl Read for Gen {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.buf.len() {
            self.refill();
            if self.buf.is_empty() {
                return Ok(0);
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn one(n: u64) -> Result<()> {
    let (cluster, problems) = load_str("synthetic.yaml", &manifests());
    anyhow::ensure!(problems.is_empty(), "{problems:?}");
    // Time the generator alone, so its cost can be taken out of the ingestion rate.
    let t = Instant::now();
    let mut sink = std::io::sink();
    let bytes = std::io::copy(
        &mut Gen {
            n,
            i: 0,
            buf: Vec::new(),
            pos: 0,
        },
        &mut sink,
    )?;
    let gen_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut o = Observer::new(&cluster, Window::default());
    o.read(
        "generated",
        BufReader::with_capacity(
            1 << 20,
            Gen {
                n,
                i: 0,
                buf: Vec::new(),
                pos: 0,
            },
        ),
    )?;
    let total_s = t.elapsed().as_secs_f64();
    let ingest_s = (total_s - gen_s).max(1e-9);
    let t = Instant::now();
    let opts = Options::default();
    let (proposals, _) = propose::propose(&o.obs, &o.workloads, &cluster.pods, &opts);
    let propose_s = t.elapsed().as_secs_f64();
    let yaml = cli::recommend::yaml(&proposals)?;
    let rules: usize = proposals.iter().map(|p| p.rules.len()).sum();
    let peers: usize = proposals
        .iter()
        .map(|p| p.rules.iter().map(|r| r.peers.len()).sum::<usize>())
        .sum();
    println!(
        "{}",
        serde_json::json!({
            "records": o.obs.records, "bytes": bytes, "ingest_s": ingest_s, "gen_s": gen_s,
            "propose_s": propose_s, "tuples": o.obs.tuples.len(), "policies": proposals.len(),
            "rules": rules, "peers": peers, "yaml_lines": yaml.lines().count(),
            "peak_rss_mib": perf::status_mib(None, "VmHWM"),
        })
    );
    Ok(())
}

fn golden(dns: bool) -> Result<(f64, f64, u64, u64, usize, usize)> {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../cli/tests/data/recommend");
    let mut options = Options::default();
    if !dns {
        options.dns = None;
    }
    let req = Request {
        manifests: vec![data.join("shop")],
        flows: vec![FlowSource::File(data.join("shop-flows.jsonl"))],
        options,
        learn_window: None,
        replay_window: None,
        replay_flows: vec![data.join("shop-replay.jsonl")],
    };
    let o = cli::recommend::run(&req)?;
    let r = o.replay.context("replay")?;
    let rules = o.proposals.iter().map(|p| p.rules.len()).sum();
    Ok((
        r.false_denial_rate(),
        r.over_permissiveness(),
        r.allowed_tuples,
        r.observed_tuples,
        o.observations.tuples.len(),
        rules,
    ))
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(n) = args.one {
        return one(n);
    }
    std::fs::create_dir_all(&args.out)?;
    let exe = std::env::current_exe()?;
    let mut rows = Vec::new();
    for &n in &args.records {
        eprintln!("septa-perf-recommend: {n} records ...");
        let out = Command::new(&exe)
            .args(["--one", &n.to_string()])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        rows.push(v);
    }
    let mut md = String::from("# septa recommend\n\nReproduce: `cargo run --release -p perf --bin septa-perf-recommend -- --out perf/results`.\n\n");
    let _ = writeln!(
        md,
        "## Ingestion ({} workloads, {TUPLES} tuples; each size in its own process)\n",
        NAMESPACES * PER_NS
    );
    let _ = writeln!(md, "| records | JSON bytes | ingest (parse + learn) | records/s | propose | peak RSS | tuples | policies | rules | peers | YAML lines |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut csv = String::from("records,ingest_s,records_per_s,propose_s,peak_rss_mib,tuples,policies,rules,peers,yaml_lines\n");
    for v in &rows {
        let rec = v["records"].as_f64().unwrap_or(0.0);
        let ingest = v["ingest_s"].as_f64().unwrap_or(f64::NAN);
        let _ =
            writeln!(
            md,
            "| {} | {:.0} MiB | {:.1} s | {:.0} | {:.0} ms | {:.0} MiB | {} | {} | {} | {} | {} |",
            v["records"], v["bytes"].as_f64().unwrap_or(0.0) / 1048576.0, ingest, rec / ingest,
            v["propose_s"].as_f64().unwrap_or(0.0) * 1e3, v["peak_rss_mib"].as_f64().unwrap_or(0.0),
            v["tuples"], v["policies"], v["rules"], v["peers"], v["yaml_lines"]
        );
        let _ = writeln!(
            csv,
            "{},{:.2},{:.0},{:.3},{:.1},{},{},{},{},{}",
            v["records"],
            ingest,
            rec / ingest,
            v["propose_s"].as_f64().unwrap_or(0.0),
            v["peak_rss_mib"].as_f64().unwrap_or(0.0),
            v["tuples"],
            v["policies"],
            v["rules"],
            v["peers"],
            v["yaml_lines"]
        );
    }
    let _ = writeln!(md, "\nThe generator's own time (building the JSON) is measured separately and taken out; memory grows with distinct tuples, not with records.\n");
    let _ = writeln!(
        md,
        "## Golden application (learn 12 h, replay the next 6 h)\n"
    );
    let _ = writeln!(md, "| DNS rule | observed tuples | rules | false-denial rate | allowed / observed workload tuples | over-permissiveness |\n|---|---:|---:|---:|---:|---:|");
    for dns in [true, false] {
        let (fdr, op, allowed, observed, tuples, rules) = golden(dns)?;
        let _ = writeln!(
            md,
            "| {} | {tuples} | {rules} | {fdr:.4} | {allowed} / {observed} | {op:.2} |",
            if dns {
                "on (default)"
            } else {
                "off (--no-dns)"
            }
        );
        let _ = writeln!(
            csv,
            "golden_dns_{dns},false_denial_rate={fdr:.4},over_permissiveness={op:.2},,,,,,,"
        );
    }
    let _ = writeln!(md, "\nWith the DNS rule, every workload may query the resolver on UDP and TCP 53 (TCP was never observed): that is the whole excess over the observed tuples.");
    std::fs::write(args.out.join("recommend.md"), &md)?;
    std::fs::write(args.out.join("recommend.csv"), csv)?;
    print!("{md}");
    Ok(())
}
