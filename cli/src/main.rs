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
    /// Filters combine (all must hold): --namespace, --pod, --workload and --label match
    /// either side, --port either port. Each line shows the policy direction (egress: the
    /// source's side of the connection, ingress: the destination's), and what decided: the
    /// policy rule, the threat feed, or the default.
    Flows {
        /// The agent's socket.
        #[arg(long, default_value = api::protocol::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Either side in this namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// Either side is this pod: NAME, or NAMESPACE/NAME.
        #[arg(long)]
        pod: Option<String>,
        /// Either side belongs to this workload: KIND/NAME (Deployment/web) or NAME.
        #[arg(long)]
        workload: Option<String>,
        /// Either side carries this label, KEY=VALUE (repeatable: all of them, on one side).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = label)]
        labels: Vec<(String, String)>,
        /// forwarded, dropped or audit.
        #[arg(long, value_parser = ["forwarded", "dropped", "audit"])]
        verdict: Option<String>,
        /// new, deny, update, end or aggregate.
        #[arg(long, value_parser = ["new", "deny", "update", "end", "aggregate"])]
        kind: Option<String>,
        /// Either side uses this port.
        #[arg(long)]
        port: Option<u16>,
        /// Only records from this long ago (e.g. 10m) or this time (RFC 3339) on.
        #[arg(long, value_parser = since)]
        since: Option<String>,
        /// How many recent records to show first.
        #[arg(long, default_value_t = 20)]
        last: usize,
        /// Keep printing new records until interrupted.
        #[arg(short, long)]
        follow: bool,
        /// Output format: text, json (JSON lines) or csv (with a header line).
        #[arg(short, long, value_enum, default_value_t = Format::Text)]
        output: Format,
    },
    /// Show this node's enforcement, asked of the local agent: whether a good state is
    /// enforced (and the policy revision), septa's entry in the CNI configuration, pods
    /// enforced, adopted and running unenforced (with why), threat feeds and DNS-aware rules.
    ///
    /// Exit 0 when all is well, 1 when something needs attention (not ready, CNI entry
    /// missing, pods not adopted, a feed failing), 2 when the agent cannot be asked. In a
    /// cluster: `kubectl -n septa exec <agent pod> -- septa status`.
    Status {
        /// The agent's socket.
        #[arg(long, default_value = api::protocol::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Print the agent's answer as JSON.
        #[arg(long)]
        json: bool,
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

/// `KEY=VALUE`.
fn label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// A duration back from now, or an RFC 3339 time, as the records write time (UTC, ms).
fn since(s: &str) -> Result<String, String> {
    let t = match humantime::parse_duration(s) {
        Ok(d) => std::time::SystemTime::now()
            .checked_sub(d)
            .ok_or_else(|| format!("{s:?} is before the epoch"))?,
        Err(_) => humantime::parse_rfc3339_weak(s)
            .map_err(|_| format!("{s:?} is neither a duration (10m) nor an RFC 3339 time"))?,
    };
    if t < std::time::UNIX_EPOCH {
        return Err(format!("{s:?} is before 1970"));
    }
    Ok(humantime::format_rfc3339_millis(t).to_string())
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
        Command::Status { socket, json } => Ok(cli::status::cmd_status(
            &socket,
            json,
            &mut std::io::stdout().lock(),
            &mut err,
        )),
        Command::Flows {
            socket,
            namespace,
            pod,
            workload,
            labels,
            verdict,
            kind,
            port,
            since,
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
                workload,
                labels: labels.into_iter().collect(),
                since,
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
