//! `septa`: the command-line interface.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use controller::reachability::{cmd_connlist, cmd_diff, Format};

#[derive(Parser)]
#[command(
    name = "septa",
    version,
    about = "septa: network microsegmentation for Kubernetes and Linux hosts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every connection the NetworkPolicies allow between workloads and external IPv4
    /// ranges, one line per ordered pair: `SRC => DST : CONNS`.
    ///
    /// Reads Namespaces, Pods, Deployments, ReplicaSets, StatefulSets, DaemonSets, Jobs,
    /// CronJobs and NetworkPolicies from YAML/JSON files and directories. Problems are printed
    /// to stderr with file, object and field; what loaded is still analysed, and the exit code
    /// is then 1.
    Connlist {
        /// Manifest files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Text)]
        output: Format,
    },
    /// Show recent flow records from the local agent, and with --follow new ones as they come.
    ///
    /// Filters combine (all must hold): --namespace and --pod match either side, --port
    /// either port.
    Flows {
        /// The agent's socket.
        #[arg(long, default_value = "/run/septa/septa.sock")]
        socket: PathBuf,
        /// Either side in this namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// Either side is this pod.
        #[arg(long)]
        pod: Option<String>,
        /// forwarded, dropped or audit.
        #[arg(long, value_parser = ["forwarded", "dropped", "audit"])]
        verdict: Option<String>,
        /// new, deny or end.
        #[arg(long, value_parser = ["new", "deny", "end"])]
        kind: Option<String>,
        /// Either side uses this port.
        #[arg(long)]
        port: Option<u16>,
        /// How many recent records to show first.
        #[arg(long, default_value_t = 20)]
        last: usize,
        /// Keep printing new records until interrupted.
        #[arg(short, long)]
        follow: bool,
        /// Output format (text or json lines).
        #[arg(short, long, value_enum, default_value_t = Format::Text)]
        output: Format,
    },
    /// Propose least-privilege NetworkPolicies from observed flows, one per workload.
    ///
    /// Reads flow records (the agent's JSON-lines flow log, or the live agent) and the
    /// cluster's manifests; writes one NetworkPolicy per workload seen (selected by the
    /// labels its pods share, without per-rollout labels), ingress and egress, with the
    /// evidence in annotations. Egress to the cluster DNS resolver is always kept. With
    /// --learn and --replay (or --replay-flows) it checks the proposal against other traffic
    /// and exits 3 if the proposal would deny any of it.
    Recommend {
        /// Manifest files or directories (Namespaces, workloads, Services, NetworkPolicies).
        #[arg(long = "manifests", required = true)]
        manifests: Vec<PathBuf>,
        /// Flow-record files (JSON lines, as written by septa-agent --flow-log).
        #[arg(long = "flows")]
        flows: Vec<PathBuf>,
        /// Also read the live agent's recent records from its socket.
        #[arg(long)]
        agent: Option<PathBuf>,
        /// Write the YAML here instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Write a review report (Markdown, or HTML for .html).
        #[arg(long)]
        report: Option<PathBuf>,
        /// Emit the policies in audit mode (annotation septa.dev/mode: audit): would-be
        /// denials show as AUDIT in flow records before anything is enforced.
        #[arg(long)]
        audit: bool,
        /// How external peers with DNS names are written: cidr (NetworkPolicy ipBlocks) or
        /// fqdn (septa FqdnPolicy objects).
        #[arg(long, value_enum, default_value_t = controller::recommend::propose::ExternalMode::Cidr)]
        external: controller::recommend::propose::ExternalMode,
        /// A label never used in selectors (repeatable; added to pod-template-hash,
        /// controller-revision-hash, pod-template-generation, statefulset pod-name, ...).
        #[arg(long = "ignore-label")]
        ignore_labels: Vec<String>,
        /// Namespace of the cluster DNS resolver.
        #[arg(long, default_value = "kube-system")]
        dns_namespace: String,
        /// Labels of the cluster DNS resolver's pods (k=v,k2=v2).
        #[arg(long, default_value = "k8s-app=kube-dns")]
        dns_labels: String,
        /// Do not add the DNS egress rule.
        #[arg(long)]
        no_dns: bool,
        /// Widen to a block (see --max-prefix-v4/-v6) when at least this many of its
        /// addresses were seen; 0 never widens.
        #[arg(long, default_value_t = 4)]
        widen_min: usize,
        /// Widest IPv4 block an external peer may become.
        #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u8).range(8..=32))]
        max_prefix_v4: u8,
        /// Widest IPv6 block an external peer may become.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u8).range(16..=128))]
        max_prefix_v6: u8,
        /// A workload with no new connection shape for this long is `stable`.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        stable_after: std::time::Duration,
        /// A workload with no flow at all for this long is `stale`.
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        stale_after: std::time::Duration,
        /// Learn from this long from the first record (with --replay).
        #[arg(long, value_parser = humantime::parse_duration)]
        learn: Option<std::time::Duration>,
        /// Replay the following window of this length against the proposal.
        #[arg(long, value_parser = humantime::parse_duration)]
        replay: Option<std::time::Duration>,
        /// Replay these flow files against the proposal.
        #[arg(long = "replay-flows")]
        replay_flows: Vec<PathBuf>,
    },
    /// Show the connections one set of manifests allows and the other does not
    /// (`added`, `removed`, `changed`).
    Diff {
        /// The manifests before (a file or directory).
        old: PathBuf,
        /// The manifests after (a file or directory).
        new: PathBuf,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Text)]
        output: Format,
    },
}

#[allow(clippy::too_many_arguments)]
fn recommend_request(
    manifests: Vec<PathBuf>,
    flows: Vec<PathBuf>,
    agent: Option<PathBuf>,
    audit: bool,
    external: controller::recommend::propose::ExternalMode,
    ignore_labels: Vec<String>,
    dns_namespace: String,
    dns_labels: &str,
    no_dns: bool,
    widen_min: usize,
    max_prefix_v4: u8,
    max_prefix_v6: u8,
    stable_after: std::time::Duration,
    stale_after: std::time::Duration,
    learn: Option<std::time::Duration>,
    replay: Option<std::time::Duration>,
    replay_flows: Vec<PathBuf>,
) -> anyhow::Result<controller::recommend::Request> {
    use controller::recommend::{propose, FlowSource, Request};
    let mut options = propose::Options::default();
    options.volatile_labels.extend(ignore_labels);
    options.dns = if no_dns {
        None
    } else {
        let mut labels = std::collections::BTreeMap::new();
        for kv in dns_labels.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--dns-labels: {kv:?} is not key=value"))?;
            labels.insert(k.to_owned(), v.to_owned());
        }
        if labels.is_empty() {
            anyhow::bail!(
                "--dns-labels is empty: the DNS rule would select every pod of {dns_namespace}"
            );
        }
        Some(propose::DnsTarget {
            namespace: dns_namespace,
            labels,
        })
    };
    options.external = external;
    options.widen_min = widen_min;
    options.max_prefix_v4 = max_prefix_v4;
    options.max_prefix_v6 = max_prefix_v6;
    options.audit = audit;
    options.stable_after = stable_after;
    options.stale_after = stale_after;
    let mut sources: Vec<FlowSource> = flows.into_iter().map(FlowSource::File).collect();
    sources.extend(agent.map(FlowSource::Agent));
    Ok(Request {
        manifests,
        flows: sources,
        options,
        learn_window: learn,
        replay_window: replay,
        replay_flows,
    })
}

fn main() {
    let cli = Cli::parse();
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr());
    let r = match cli.command {
        Command::Connlist { paths, output } => cmd_connlist(&paths, output, &mut out, &mut err),
        Command::Diff { old, new, output } => cmd_diff(&[old], &[new], output, &mut out, &mut err),
        Command::Recommend {
            manifests,
            flows,
            agent,
            output,
            report,
            audit,
            external,
            ignore_labels,
            dns_namespace,
            dns_labels,
            no_dns,
            widen_min,
            max_prefix_v4,
            max_prefix_v6,
            stable_after,
            stale_after,
            learn,
            replay,
            replay_flows,
        } => recommend_request(
            manifests,
            flows,
            agent,
            audit,
            external,
            ignore_labels,
            dns_namespace,
            &dns_labels,
            no_dns,
            widen_min,
            max_prefix_v4,
            max_prefix_v6,
            stable_after,
            stale_after,
            learn,
            replay,
            replay_flows,
        )
        .and_then(|req| {
            controller::recommend::cmd_recommend(
                &req,
                output.as_deref(),
                report.as_deref(),
                &mut out,
                &mut err,
            )
        }),
        Command::Flows {
            socket,
            namespace,
            pod,
            verdict,
            kind,
            port,
            last,
            follow,
            output,
        } => {
            let filter = dataplane::agent::protocol::FlowFilter {
                namespace,
                pod,
                verdict,
                port,
                kind,
            };
            Ok(controller::flows::cmd_flows(
                &socket, &filter, last, follow, output, &mut out, &mut err,
            ))
        }
    };
    match r {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
