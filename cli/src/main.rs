//! `septa`: the command-line interface.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use cli::reachability::{cmd_connlist, cmd_diff, Format};

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
        #[arg(long, default_value = api::protocol::DEFAULT_SOCKET)]
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
    Recommend(cli::recommend::cli::RecommendArgs),
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

fn main() {
    let cli = Cli::parse();
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr());
    let r = match cli.command {
        Command::Connlist { paths, output } => cmd_connlist(&paths, output, &mut out, &mut err),
        Command::Diff { old, new, output } => cmd_diff(&[old], &[new], output, &mut out, &mut err),
        Command::Recommend(args) => args.request().and_then(|req| {
            cli::recommend::cmd_recommend(
                &req,
                args.output.as_deref(),
                args.report.as_deref(),
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
            let filter = api::protocol::FlowFilter {
                namespace,
                pod,
                verdict,
                port,
                kind,
            };
            Ok(cli::flows::cmd_flows(
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
