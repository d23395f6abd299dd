//! Agent configuration: a YAML file, overridden by flags.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use clap::Parser;
use serde::Deserialize;

/// septa node agent: enforces NetworkPolicies in the kernel (TC/TCX on pod veths).
///
/// Standalone mode: workloads and policies come from --manifests (a directory of Kubernetes
/// YAML/JSON, watched for changes); pods are registered by the septa-cni plugin over --socket.
/// Every change is applied to the BPF maps as a diff. Maps and program links are pinned under
/// --pin-dir, so restarting the agent never opens or closes a connection.
#[derive(Parser, Debug, Clone, Default)]
#[command(name = "septa-agent", version)]
pub struct Args {
    /// YAML config file with the same keys as the long flags (flags win).
    #[arg(long, env = "SEPTA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory of manifests (Namespaces, Pods or workloads, NetworkPolicies) [default: none]
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    /// bpffs directory for pinned maps and links; locked while the agent runs [default: /sys/fs/bpf/septa]
    #[arg(long)]
    pub pin_dir: Option<PathBuf>,
    /// Unix socket septa-cni registers endpoints on (root-only, in a directory only the agent's user can write to) [default: /run/septa/septa.sock]
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Directory for the endpoint registry, so a restarted agent adopts existing pods; owned by the agent's user, not writable by group or others, locked while the agent runs [default: /run/septa]
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Address of the health endpoint (GET /healthz, /readyz) [default: 127.0.0.1:9876]
    #[arg(long)]
    pub health_addr: Option<SocketAddr>,
    /// Run in this network namespace (a path like /run/netns/node) [default: the current one]
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// Attach XDP to this host interface (repeatable); threat feeds drop there [default: none]
    #[arg(long = "xdp-interface")]
    pub xdp_interfaces: Vec<String>,
    /// Let packets that cannot be evaluated pass instead of dropping them [default: fail closed]
    #[arg(long)]
    pub fail_open: bool,
    /// Apply policy to traffic with the node's own addresses too [default: node traffic always allowed]
    #[arg(long)]
    pub policy_host: bool,
    /// How often the manifests directory is checked for changes, e.g. 100ms [default: 100ms]
    #[arg(long, value_parser = parse_duration)]
    pub poll_interval: Option<Duration>,
    /// Minimum interval between two denial events of one flow, e.g. 1s [default: 1s]
    #[arg(long, value_parser = parse_duration)]
    pub deny_event_interval: Option<Duration>,
    /// Conntrack entries [default: 262144]
    #[arg(long)]
    pub conntrack_entries: Option<u32>,
    /// Policy map entries [default: 262144]
    #[arg(long)]
    pub policy_entries: Option<u32>,
    /// ipcache entries [default: 1048576]
    #[arg(long)]
    pub ipcache_entries: Option<u32>,
    /// Size of the kernel's event ring buffer in bytes (a power of two, at least 4096) [default: 4194304]
    #[arg(long)]
    pub events_bytes: Option<u32>,
    /// Write flow records as JSON lines to this file ("-" for stdout) [default: none]
    #[arg(long)]
    pub flow_log: Option<PathBuf>,
    /// Rotate the flow log at this size in bytes [default: 104857600]
    #[arg(long)]
    pub flow_log_max_bytes: Option<u64>,
    /// Rotated flow-log files kept [default: 5]
    #[arg(long)]
    pub flow_log_keep: Option<usize>,
    /// Export flow records over IPFIX (UDP) to this collector, e.g. 192.0.2.10:4739 [default: none]
    #[arg(long)]
    pub ipfix_collector: Option<std::net::SocketAddr>,
    /// IPFIX observation domain id [default: 1]
    #[arg(long)]
    pub ipfix_domain: Option<u32>,
    /// How often IPFIX templates are resent, e.g. 60s [default: 60s]
    #[arg(long, value_parser = parse_duration)]
    pub ipfix_template_interval: Option<Duration>,
    /// A connection with no packet for this long ends (UDP, ICMP, ...; TCP after 10x) [default: 60s]
    #[arg(long, value_parser = parse_duration)]
    pub conntrack_idle: Option<Duration>,
    /// How often long-lived connections are reported and idle ones ended [default: 30s]
    #[arg(long, value_parser = parse_duration)]
    pub flow_update_interval: Option<Duration>,
    /// Aggregate forwarded flows per workload pair, port and verdict over this window; denials stay detailed [default: off]
    #[arg(long, value_parser = parse_duration)]
    pub flow_aggregate_window: Option<Duration>,
    /// Groups held per aggregation window; beyond it records pass unaggregated [default: 100000]
    #[arg(long)]
    pub flow_aggregate_max_groups: Option<usize>,
    /// This node's name in flow records [default: the host name]
    #[arg(long)]
    pub node_name: Option<String>,
    /// On shutdown, detach programs and remove pinned state (default: leave enforcement in place)
    #[arg(long)]
    pub remove_enforcement: bool,
    /// FQDN rules: shortest lifetime of an address learned from a DNS answer, whatever its TTL [default: 5s]
    #[arg(long, value_parser = parse_duration)]
    pub dns_min_ttl: Option<Duration>,
    /// FQDN rules: how long an expired address stays allowed while a connection still uses it [default: 60s]
    #[arg(long, value_parser = parse_duration)]
    pub dns_grace: Option<Duration>,
    /// FQDN rules: most addresses kept per (pod, name); the oldest is evicted [default: 64]
    #[arg(long)]
    pub dns_max_ips_per_name: Option<usize>,
    /// FQDN rules: how often the agent itself resolves the exact names of the rules, so apps with their own DNS cache keep working; 0s turns it off [default: 30s]
    #[arg(long, value_parser = parse_duration)]
    pub dns_preresolve_interval: Option<Duration>,
    /// FQDN rules: the DNS server the agent resolves with, e.g. 10.96.0.10:53 [default: /etc/resolv.conf]
    #[arg(long)]
    pub dns_server: Option<SocketAddr>,
    /// FQDN rules: a resolver FqdnPolicy pods may query and whose answers are learned, for policies that name none in spec.resolvers (repeatable; give the cluster DNS service) [default: --dns-server, else the node's /etc/resolv.conf without loopback]
    #[arg(long = "dns-resolver", value_name = "IP")]
    pub dns_resolvers: Vec<IpAddr>,
    /// FQDN rules: longest lifetime of an address learned from a DNS answer, whatever its TTL [default: 1h]
    #[arg(long, value_parser = parse_duration)]
    pub dns_max_ttl: Option<Duration>,
    /// Threat feeds: deadline for one fetch, body included [default: 60s]
    #[arg(long, value_parser = parse_duration)]
    pub feed_timeout: Option<Duration>,
    /// Threat feeds: largest body accepted, in bytes [default: 67108864]
    #[arg(long)]
    pub feed_max_bytes: Option<u64>,
    /// Threat feeds: first retry after a failed fetch; doubles up to the feed's refresh [default: 10s]
    #[arg(long, value_parser = parse_duration)]
    pub feed_retry_min: Option<Duration>,
    /// Threat feeds: shortest refresh a ThreatFeed may ask for [default: 60s]
    #[arg(long, value_parser = parse_duration)]
    pub feed_min_refresh: Option<Duration>,
    /// Threat feeds never block these ranges (repeatable; give the pod and service CIDRs). Loopback and the node's addresses are always protected
    #[arg(long = "feed-protect", value_name = "CIDR")]
    pub feed_protect: Vec<ipnetwork::IpNetwork>,
    /// Threat feeds: PEM bundle of CA certificates trusted for https feeds besides the public roots (an internal mirror's CA)
    #[arg(long, value_name = "FILE")]
    pub feed_ca_file: Option<PathBuf>,
}

/// The file form of [`Args`] (kebab-case keys).
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    manifests: Option<PathBuf>,
    pin_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    health_addr: Option<SocketAddr>,
    netns: Option<PathBuf>,
    xdp_interfaces: Option<Vec<String>>,
    fail_open: Option<bool>,
    policy_host: Option<bool>,
    poll_interval: Option<String>,
    deny_event_interval: Option<String>,
    conntrack_entries: Option<u32>,
    policy_entries: Option<u32>,
    ipcache_entries: Option<u32>,
    events_bytes: Option<u32>,
    remove_enforcement: Option<bool>,
    flow_log: Option<PathBuf>,
    flow_log_max_bytes: Option<u64>,
    flow_log_keep: Option<usize>,
    node_name: Option<String>,
    ipfix_collector: Option<std::net::SocketAddr>,
    ipfix_domain: Option<u32>,
    ipfix_template_interval: Option<String>,
    conntrack_idle: Option<String>,
    flow_update_interval: Option<String>,
    flow_aggregate_window: Option<String>,
    flow_aggregate_max_groups: Option<usize>,
    feed_timeout: Option<String>,
    dns_min_ttl: Option<String>,
    dns_grace: Option<String>,
    dns_max_ips_per_name: Option<usize>,
    dns_preresolve_interval: Option<String>,
    dns_server: Option<SocketAddr>,
    dns_resolver: Option<Vec<String>>,
    dns_max_ttl: Option<String>,
    feed_max_bytes: Option<u64>,
    feed_retry_min: Option<String>,
    feed_min_refresh: Option<String>,
    feed_protect: Option<Vec<String>>,
    feed_ca_file: Option<PathBuf>,
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub manifests: Option<PathBuf>,
    pub pin_dir: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub health_addr: SocketAddr,
    pub netns: Option<PathBuf>,
    pub xdp_interfaces: Vec<String>,
    pub fail_open: bool,
    pub policy_host: bool,
    pub poll_interval: Duration,
    pub deny_event_interval: Duration,
    pub conntrack_entries: u32,
    pub policy_entries: u32,
    pub ipcache_entries: u32,
    pub events_bytes: u32,
    pub remove_enforcement: bool,
    pub flow_log: Option<PathBuf>,
    pub flow_log_max_bytes: u64,
    pub flow_log_keep: usize,
    pub node_name: String,
    pub ipfix_collector: Option<std::net::SocketAddr>,
    pub ipfix_domain: u32,
    pub ipfix_template_interval: Duration,
    pub conntrack_idle: Duration,
    pub flow_update_interval: Duration,
    pub flow_aggregate_window: Option<Duration>,
    pub flow_aggregate_max_groups: usize,
    pub feed_timeout: Duration,
    pub dns_min_ttl: Duration,
    pub dns_grace: Duration,
    pub dns_max_ips_per_name: usize,
    pub dns_preresolve_interval: Duration,
    pub dns_server: Option<SocketAddr>,
    /// The resolvers FqdnPolicies trust unless they name their own (never empty unless the
    /// node has no usable resolver: then FQDN pods can resolve nothing, and the agent says so).
    pub dns_resolvers: Vec<IpAddr>,
    pub dns_max_ttl: Duration,
    pub feed_max_bytes: u64,
    pub feed_retry_min: Duration,
    pub feed_min_refresh: Duration,
    pub feed_protect: Vec<ipnetwork::IpNetwork>,
    /// Read and checked at start-up from `--feed-ca-file`.
    pub feed_ca: Vec<reqwest::Certificate>,
}

/// The host name (for flow records), or `localhost`.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

/// Parse a duration such as `100ms`, `2s`, `1m30s`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration {s:?} ({e}); e.g. 100ms, 2s, 1m30s, 1h"))
}

impl Config {
    /// Merge the file (if any) and the flags over the defaults, and check every value (see
    /// [`Config::validate`]).
    pub fn resolve(args: &Args) -> Result<Self, String> {
        let c = Self::merge(args)?;
        c.validate()?;
        Ok(c)
    }

    /// Refuse values the agent cannot run with, naming the option: checked before anything is
    /// loaded or written, so a bad option never leaves half a start behind (a zero interval
    /// would otherwise stop the agent after the maps were written).
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            (
                "--poll-interval",
                self.poll_interval,
                "how often the manifests directory is read",
            ),
            (
                "--flow-update-interval",
                self.flow_update_interval,
                "how often long-lived connections are reported",
            ),
            (
                "--ipfix-template-interval",
                self.ipfix_template_interval,
                "how often IPFIX templates are resent",
            ),
            (
                "--conntrack-idle",
                self.conntrack_idle,
                "how long an idle connection lives",
            ),
            (
                "--feed-timeout",
                self.feed_timeout,
                "the deadline of a feed fetch",
            ),
            (
                "--feed-retry-min",
                self.feed_retry_min,
                "the first retry after a failed fetch",
            ),
            (
                "--feed-min-refresh",
                self.feed_min_refresh,
                "the shortest refresh of a feed",
            ),
        ];
        for (flag, d, what) in positive {
            if d.is_zero() {
                return Err(format!("{flag} 0s: must be more than zero ({what})"));
            }
        }
        if self.flow_aggregate_window.is_some_and(|d| d.is_zero()) {
            return Err(
                "--flow-aggregate-window 0s: must be more than zero (leave it out to turn aggregation off)"
                    .into(),
            );
        }
        for (flag, n) in [
            ("--conntrack-entries", self.conntrack_entries),
            ("--policy-entries", self.policy_entries),
            ("--ipcache-entries", self.ipcache_entries),
        ] {
            if n == 0 {
                return Err(format!("{flag} 0: a map needs at least one entry"));
            }
        }
        if self.feed_max_bytes == 0 {
            return Err("--feed-max-bytes 0: must be at least 1".into());
        }
        if self.dns_max_ttl < self.dns_min_ttl {
            return Err(format!(
                "--dns-max-ttl {:?} is below --dns-min-ttl {:?}",
                self.dns_max_ttl, self.dns_min_ttl
            ));
        }
        Ok(())
    }

    fn merge(args: &Args) -> Result<Self, String> {
        let file: FileConfig = match &args.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("config file {}: {e}", p.display()))?;
                serde_yaml::from_str(&text)
                    .map_err(|e| format!("config file {}: {e}", p.display()))?
            }
            None => FileConfig::default(),
        };
        let dur = |flag: Option<Duration>,
                   file: &Option<String>,
                   default: Duration,
                   key: &str|
         -> Result<Duration, String> {
            match (flag, file) {
                (Some(d), _) => Ok(d),
                (None, Some(s)) => parse_duration(s).map_err(|e| format!("config key {key}: {e}")),
                (None, None) => Ok(default),
            }
        };
        let sizes = dataplane_common::sizes::CONNTRACK;
        Ok(Config {
            manifests: args.manifests.clone().or(file.manifests),
            pin_dir: args
                .pin_dir
                .clone()
                .or(file.pin_dir)
                .unwrap_or_else(|| dataplane::loader::DEFAULT_PIN_DIR.into()),
            socket: args
                .socket
                .clone()
                .or(file.socket)
                .unwrap_or_else(|| api::protocol::DEFAULT_SOCKET.into()),
            state_dir: args
                .state_dir
                .clone()
                .or(file.state_dir)
                .unwrap_or_else(|| "/run/septa".into()),
            health_addr: args
                .health_addr
                .or(file.health_addr)
                .unwrap_or_else(|| "127.0.0.1:9876".parse().expect("valid")),
            netns: args.netns.clone().or(file.netns),
            xdp_interfaces: if args.xdp_interfaces.is_empty() {
                file.xdp_interfaces.unwrap_or_default()
            } else {
                args.xdp_interfaces.clone()
            },
            fail_open: args.fail_open || file.fail_open.unwrap_or(false),
            policy_host: args.policy_host || file.policy_host.unwrap_or(false),
            poll_interval: dur(
                args.poll_interval,
                &file.poll_interval,
                Duration::from_millis(100),
                "poll-interval",
            )?,
            deny_event_interval: dur(
                args.deny_event_interval,
                &file.deny_event_interval,
                Duration::from_secs(1),
                "deny-event-interval",
            )?,
            conntrack_entries: args
                .conntrack_entries
                .or(file.conntrack_entries)
                .unwrap_or(sizes),
            policy_entries: args
                .policy_entries
                .or(file.policy_entries)
                .unwrap_or(dataplane_common::sizes::POLICY),
            ipcache_entries: args
                .ipcache_entries
                .or(file.ipcache_entries)
                .unwrap_or(dataplane_common::sizes::IPCACHE),
            events_bytes: {
                let n = args
                    .events_bytes
                    .or(file.events_bytes)
                    .unwrap_or(dataplane_common::sizes::EVENTS_BYTES);
                if n < 4096 || !n.is_power_of_two() {
                    return Err(format!(
                        "events-bytes {n} must be a power of two of at least 4096"
                    ));
                }
                n
            },
            remove_enforcement: args.remove_enforcement || file.remove_enforcement.unwrap_or(false),
            flow_log: args.flow_log.clone().or(file.flow_log),
            flow_log_max_bytes: args
                .flow_log_max_bytes
                .or(file.flow_log_max_bytes)
                .unwrap_or(100 << 20),
            flow_log_keep: args.flow_log_keep.or(file.flow_log_keep).unwrap_or(5),
            node_name: args
                .node_name
                .clone()
                .or(file.node_name)
                .unwrap_or_else(hostname),
            ipfix_collector: args.ipfix_collector.or(file.ipfix_collector),
            ipfix_domain: args.ipfix_domain.or(file.ipfix_domain).unwrap_or(1),
            ipfix_template_interval: dur(
                args.ipfix_template_interval,
                &file.ipfix_template_interval,
                Duration::from_secs(60),
                "ipfix-template-interval",
            )?,
            conntrack_idle: dur(
                args.conntrack_idle,
                &file.conntrack_idle,
                Duration::from_secs(60),
                "conntrack-idle",
            )?,
            flow_update_interval: dur(
                args.flow_update_interval,
                &file.flow_update_interval,
                Duration::from_secs(30),
                "flow-update-interval",
            )?,
            flow_aggregate_window: match (args.flow_aggregate_window, &file.flow_aggregate_window) {
                (Some(d), _) => Some(d),
                (None, Some(s)) => Some(
                    parse_duration(s)
                        .map_err(|e| format!("config key flow-aggregate-window: {e}"))?,
                ),
                (None, None) => None,
            },
            flow_aggregate_max_groups: args
                .flow_aggregate_max_groups
                .or(file.flow_aggregate_max_groups)
                .unwrap_or(100_000),
            dns_min_ttl: dur(
                args.dns_min_ttl,
                &file.dns_min_ttl,
                Duration::from_secs(5),
                "dns-min-ttl",
            )?,
            dns_grace: dur(
                args.dns_grace,
                &file.dns_grace,
                Duration::from_secs(60),
                "dns-grace",
            )?,
            dns_max_ips_per_name: match args
                .dns_max_ips_per_name
                .or(file.dns_max_ips_per_name)
                .unwrap_or(64)
            {
                0 => return Err("dns-max-ips-per-name must be at least 1".into()),
                n => n,
            },
            dns_preresolve_interval: dur(
                args.dns_preresolve_interval,
                &file.dns_preresolve_interval,
                Duration::from_secs(30),
                "dns-preresolve-interval",
            )?,
            dns_server: args.dns_server.or(file.dns_server),
            dns_resolvers: if !args.dns_resolvers.is_empty() {
                args.dns_resolvers.clone()
            } else if let Some(list) = &file.dns_resolver {
                list.iter()
                    .map(|a| {
                        a.parse()
                            .map_err(|e| format!("config key dns-resolver: {a:?}: {e}"))
                    })
                    .collect::<Result<_, _>>()?
            } else if let Some(s) = args.dns_server.or(file.dns_server) {
                vec![s.ip()]
            } else {
                resolv_conf_nameservers(
                    &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
                )
            },
            dns_max_ttl: dur(
                args.dns_max_ttl,
                &file.dns_max_ttl,
                Duration::from_secs(3600),
                "dns-max-ttl",
            )?,
            feed_timeout: dur(
                args.feed_timeout,
                &file.feed_timeout,
                Duration::from_secs(60),
                "feed-timeout",
            )?,
            feed_max_bytes: args
                .feed_max_bytes
                .or(file.feed_max_bytes)
                .unwrap_or(64 << 20),
            feed_retry_min: dur(
                args.feed_retry_min,
                &file.feed_retry_min,
                Duration::from_secs(10),
                "feed-retry-min",
            )?,
            feed_min_refresh: dur(
                args.feed_min_refresh,
                &file.feed_min_refresh,
                crate::feeds::spec::MIN_REFRESH,
                "feed-min-refresh",
            )?,
            feed_protect: if args.feed_protect.is_empty() {
                file.feed_protect
                    .unwrap_or_default()
                    .iter()
                    .map(|c| {
                        c.parse()
                            .map_err(|e| format!("config key feed-protect: {c:?}: {e}"))
                    })
                    .collect::<Result<_, _>>()?
            } else {
                args.feed_protect.clone()
            },
            feed_ca: match args.feed_ca_file.as_ref().or(file.feed_ca_file.as_ref()) {
                Some(p) => crate::feeds::fetch::load_ca_bundle(p)
                    .map_err(|e| format!("--feed-ca-file {e}"))?,
                None => Vec::new(),
            },
        })
    }
}

/// The `nameserver` addresses of a resolv.conf, without loopback ones (a node-local stub
/// resolver is not reachable from pods) and without ones that do not parse.
pub fn resolv_conf_nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()).flatten()
        })
        .filter_map(|a| a.split('%').next()?.parse::<IpAddr>().ok())
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_the_agent_cannot_run_with_are_refused_naming_the_option() {
        let zero = Duration::ZERO;
        for (args, flag) in [
            (
                Args {
                    poll_interval: Some(zero),
                    ..Default::default()
                },
                "--poll-interval 0s",
            ),
            (
                Args {
                    flow_update_interval: Some(zero),
                    ..Default::default()
                },
                "--flow-update-interval 0s",
            ),
            (
                Args {
                    flow_aggregate_window: Some(zero),
                    ..Default::default()
                },
                "--flow-aggregate-window 0s",
            ),
            (
                Args {
                    ipfix_template_interval: Some(zero),
                    ..Default::default()
                },
                "--ipfix-template-interval 0s",
            ),
            (
                Args {
                    conntrack_entries: Some(0),
                    ..Default::default()
                },
                "--conntrack-entries 0",
            ),
            (
                Args {
                    feed_retry_min: Some(zero),
                    ..Default::default()
                },
                "--feed-retry-min 0s",
            ),
            (
                Args {
                    dns_max_ttl: Some(Duration::from_secs(1)),
                    ..Default::default()
                },
                "--dns-max-ttl",
            ),
        ] {
            let e = Config::resolve(&args).unwrap_err();
            assert!(e.starts_with(flag), "{flag}: {e}");
        }
        assert!(Config::resolve(&Args::default()).is_ok());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("100ms").unwrap(), Duration::from_millis(100));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("2 fortnights").is_err());
        assert!(parse_duration("fast")
            .unwrap_err()
            .contains("invalid duration"));
    }

    #[test]
    fn file_then_flags() {
        let dir = std::env::temp_dir().join(format!("septa-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("agent.yaml");
        std::fs::write(
            &f,
            "manifests: /etc/septa/policies\nfail-open: true\npoll-interval: 250ms\n",
        )
        .unwrap();
        let args = Args {
            config: Some(f.clone()),
            poll_interval: Some(Duration::from_millis(50)),
            ..Default::default()
        };
        let c = Config::resolve(&args).unwrap();
        assert_eq!(
            c.manifests.as_deref(),
            Some(std::path::Path::new("/etc/septa/policies"))
        );
        assert!(c.fail_open);
        assert_eq!(c.poll_interval, Duration::from_millis(50), "flags win");
        let e = Config::resolve(&Args {
            feed_ca_file: Some(dir.join("corp-ca.pem")),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            e.starts_with("--feed-ca-file") && e.contains("corp-ca.pem: cannot read"),
            "{e}"
        );
        std::fs::write(&f, "manifest: typo\n").unwrap();
        let e = Config::resolve(&args).unwrap_err();
        assert!(e.contains("unknown field") && e.contains("manifest"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn trusted_resolvers_default_from_the_dns_server_then_resolv_conf() {
        let c = Config::resolve(&Args {
            dns_server: Some("192.0.2.53:5353".parse().unwrap()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.dns_resolvers, ["192.0.2.53".parse::<IpAddr>().unwrap()]);
        let c = Config::resolve(&Args {
            dns_server: Some("192.0.2.53:53".parse().unwrap()),
            dns_resolvers: vec!["10.96.0.10".parse().unwrap()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.dns_resolvers, ["10.96.0.10".parse::<IpAddr>().unwrap()]);
        assert_eq!(c.dns_max_ttl, Duration::from_secs(3600));
        assert_eq!(
            resolv_conf_nameservers(
                "# comment\nnameserver 127.0.0.53\nnameserver 10.96.0.10\nsearch a\nnameserver fe80::1%eth0\nnameserver ::1\nnameserver bogus\n"
            ),
            [
                "10.96.0.10".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
    }
}
