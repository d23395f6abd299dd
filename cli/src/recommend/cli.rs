//! The `septa recommend` command line: flags and their translation into a [`Request`].

use std::path::PathBuf;

use super::{propose, FlowSource, Request};
use crate::output::UsageError;

/// Flags of `septa recommend`.
#[derive(Clone, Debug, clap::Args)]
pub struct RecommendArgs {
    /// Manifest files or directories (Namespaces, workloads, Services, NetworkPolicies).
    #[arg(long = "manifests", required = true)]
    pub manifests: Vec<PathBuf>,
    /// Flow-record files (JSON lines, as written by septa-agent --flow-log).
    #[arg(long = "flows")]
    pub flows: Vec<PathBuf>,
    /// Also read the live agent's recent records from its socket.
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// Write the YAML here instead of stdout.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Write a review report (Markdown, or HTML for .html).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Emit the policies in audit mode (annotation septa.dev/mode: audit): would-be
    /// denials show as AUDIT in flow records before anything is enforced.
    #[arg(long)]
    pub audit: bool,
    /// How external peers with DNS names are written: cidr (NetworkPolicy ipBlocks) or
    /// fqdn (septa FqdnPolicy objects).
    #[arg(long, value_enum, default_value_t = propose::ExternalMode::Cidr)]
    pub external: propose::ExternalMode,
    /// A label never used in selectors (repeatable; added to pod-template-hash,
    /// controller-revision-hash, pod-template-generation, statefulset pod-name, ...).
    #[arg(long = "ignore-label")]
    pub ignore_labels: Vec<String>,
    /// Namespace of the cluster DNS resolver.
    #[arg(long, default_value = "kube-system")]
    pub dns_namespace: String,
    /// Labels of the cluster DNS resolver's pods (k=v,k2=v2).
    #[arg(long, default_value = "k8s-app=kube-dns")]
    pub dns_labels: String,
    /// Do not add the DNS egress rule.
    #[arg(long)]
    pub no_dns: bool,
    /// Widen to a block (see --max-prefix-v4/-v6) when at least this many of its
    /// addresses were seen; 0 never widens.
    #[arg(long, default_value_t = 4)]
    pub widen_min: usize,
    /// Widest IPv4 block an external peer may become.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u8).range(8..=32))]
    pub max_prefix_v4: u8,
    /// Widest IPv6 block an external peer may become.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u8).range(16..=128))]
    pub max_prefix_v6: u8,
    /// A workload with no new connection shape for this long is `stable`.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub stable_after: std::time::Duration,
    /// A workload with no flow at all for this long is `stale`.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    pub stale_after: std::time::Duration,
    /// Learn from this long from the first record (with --replay).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub learn: Option<std::time::Duration>,
    /// Replay the following window of this length against the proposal.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub replay: Option<std::time::Duration>,
    /// Replay these flow files against the proposal.
    #[arg(long = "replay-flows")]
    pub replay_flows: Vec<PathBuf>,
}

impl RecommendArgs {
    /// The run these flags ask for; errors name the flag.
    pub fn request(&self) -> anyhow::Result<Request> {
        let mut options = propose::Options::default();
        options
            .volatile_labels
            .extend(self.ignore_labels.iter().cloned());
        options.dns = if self.no_dns {
            None
        } else {
            let mut labels = std::collections::BTreeMap::new();
            for kv in self.dns_labels.split(',').filter(|s| !s.is_empty()) {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| UsageError(format!("--dns-labels: {kv:?} is not key=value")))?;
                labels.insert(k.to_owned(), v.to_owned());
            }
            if labels.is_empty() {
                return Err(UsageError(format!(
                    "--dns-labels is empty: the DNS rule would select every pod of {}",
                    self.dns_namespace
                ))
                .into());
            }
            Some(propose::DnsTarget {
                namespace: self.dns_namespace.clone(),
                labels,
            })
        };
        options.external = self.external;
        options.widen_min = self.widen_min;
        options.max_prefix_v4 = self.max_prefix_v4;
        options.max_prefix_v6 = self.max_prefix_v6;
        options.audit = self.audit;
        options.stable_after = self.stable_after;
        options.stale_after = self.stale_after;
        // A file given twice (`--flows a --flows a`, or through a link) is read once: its
        // records would otherwise count twice as evidence.
        let mut seen = std::collections::BTreeSet::new();
        let mut flows: Vec<FlowSource> = self
            .flows
            .iter()
            .filter(|p| seen.insert(std::fs::canonicalize(p).unwrap_or_else(|_| (*p).clone())))
            .cloned()
            .map(FlowSource::File)
            .collect();
        flows.extend(self.agent.clone().map(FlowSource::Agent));
        Ok(Request {
            manifests: self.manifests.clone(),
            flows,
            options,
            learn_window: self.learn,
            replay_window: self.replay,
            replay_flows: self.replay_flows.clone(),
        })
    }
}
