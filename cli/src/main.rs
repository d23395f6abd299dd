//! `septa`: the command-line interface.

use std::path::PathBuf;

use std::io::Write;

use clap::{Parser, Subcommand};
use cli::{
    output::PipeEnd,
    reachability::{cmd_connlist, cmd_diff, Format},
};

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
    /// List every connection the policies allow between workloads, external IPv4 and IPv6
    /// ranges and the names of FqdnPolicies, one line per ordered pair: `SRC => DST : CONNS`.
    ///
    /// Reads Namespaces, Pods, Deployments, ReplicaSets, StatefulSets, DaemonSets, Jobs,
    /// CronJobs, NetworkPolicies, FqdnPolicies and ThreatFeeds from YAML/JSON files and
    /// directories. Problems are printed to stderr with file, object and field; what loaded is
    /// still analysed, and the exit code is then 1.
    Connlist {
        /// Manifest files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The agent's --dns-resolver (repeatable): where pods of FqdnPolicies without
        /// spec.resolvers may send DNS. Without it that peer is shown as
        /// `dns-resolvers:agent-default`.
        #[arg(long = "dns-resolver", value_name = "IP")]
        dns_resolvers: Vec<std::net::IpAddr>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Text)]
        output: Format,
    },
    /// Check manifests as the agent would load them: every problem of every object (Kubernetes
    /// kinds, FqdnPolicy, ThreatFeed) with file, object and field. Exit 0 when the agent would
    /// accept the directory (warnings aside), 1 when it would refuse it.
    Lint {
        /// Manifest files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The agent's --feed-min-refresh: shortest ThreatFeed refresh accepted.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        feed_min_refresh: std::time::Duration,
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
        /// Exit 1 when there are changes, 0 when there are none, 2 when an input has errors
        /// (for CI).
        #[arg(long)]
        exit_code: bool,
        /// The agent's --dns-resolver (repeatable), as for connlist.
        #[arg(long = "dns-resolver", value_name = "IP")]
        dns_resolvers: Vec<std::net::IpAddr>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Text)]
        output: Format,
    },
}

/// Resolvers given on the command line; none given: not known here.
fn known(resolvers: Vec<std::net::IpAddr>) -> Option<Vec<std::net::IpAddr>> {
    (!resolvers.is_empty()).then_some(resolvers)
}

fn main() {
    let cli = Cli::parse();
    let mut out = PipeEnd::new(std::io::stdout().lock());
    let mut err = PipeEnd::new(std::io::stderr());
    let r = match cli.command {
        Command::Connlist {
            paths,
            dns_resolvers,
            output,
        } => cmd_connlist(&paths, known(dns_resolvers), output, &mut out, &mut err),
        Command::Diff {
            old,
            new,
            exit_code,
            dns_resolvers,
            output,
        } => cmd_diff(
            &[old],
            &[new],
            known(dns_resolvers),
            exit_code,
            output,
            &mut out,
            &mut err,
        ),
        Command::Lint {
            paths,
            feed_min_refresh,
        } => cli::reachability::cmd_lint(&paths, feed_min_refresh, &mut out, &mut err),
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
            // Raw stdout: a reader that goes away must end --follow, not be written past.
            Ok(cli::flows::cmd_flows(
                &socket,
                &filter,
                last,
                follow,
                output,
                &mut std::io::stdout().lock(),
                &mut err,
            ))
        }
    };
    match r {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let _ = writeln!(err, "error: {e:#}");
            std::process::exit(cli::output::exit_code_of(&e));
        }
    }
}
