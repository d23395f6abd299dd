//! Agent configuration, declared once: every option is one field of [`Config`] with its flag,
//! its default and its help, grouped under the headings `--help` shows (node, source, maps,
//! flows, export, DNS, feeds; the groups the Helm chart's values mirror). A YAML file given
//! with `--config` takes the long flag names as keys; [`Config::load`] merges it under the
//! flags, the flags winning, and checks every value before anything is loaded or written.

use std::{
    ffi::OsString,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use clap::{parser::ValueSource, CommandFactory, FromArgMatches, Parser};

/// Where the agent's workloads and policies come from.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// The --manifests directory (standalone mode).
    Dir,
    /// The Kubernetes API server (Kubernetes mode).
    Kubernetes,
}

/// How the node's CNI configuration runs septa-cni.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CniMode {
    /// The agent leaves the CNI configuration alone.
    Off,
    /// septa's entry is appended to the primary network's conflist.
    Splice,
    /// A complete conflist the user provides is installed.
    OwnFile,
}

/// septa node agent: enforces NetworkPolicies in the kernel (TC/TCX on pod veths).
///
/// Kubernetes mode (--source kubernetes): Namespaces, Pods, NetworkPolicies, Services,
/// EndpointSlices, FqdnPolicies and ThreatFeeds come from watches of the API server.
///
/// Standalone mode: workloads and policies come from --manifests (a directory of Kubernetes
/// YAML/JSON, watched for changes); pods are registered by the septa-cni plugin over --socket.
/// Every change is applied to the BPF maps as a diff. Maps and program links are pinned under
/// --pin-dir, so restarting the agent never opens or closes a connection.
#[derive(Parser, Debug, Clone)]
#[command(name = "septa-agent", version)]
pub struct Config {
    /// A YAML file whose keys are the long flag names (e.g. `poll-interval: 250ms`; a list for a repeatable flag); flags win, an unknown key is an error
    #[arg(long, env = "SEPTA_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// bpffs directory for pinned maps and program links; locked while the agent runs
    #[arg(long, value_name = "DIR", default_value = dataplane::loader::DEFAULT_PIN_DIR, help_heading = "Node")]
    pub pin_dir: PathBuf,
    /// Unix socket septa-cni registers endpoints on (mode 0600, in a directory only the agent's user can write to)
    #[arg(long, value_name = "PATH", default_value = api::protocol::DEFAULT_SOCKET, help_heading = "Node")]
    pub socket: PathBuf,
    /// The endpoint registry (`endpoints.json` and its second copy `endpoints.json.prev`), the last good manifests (`manifests.json`, `manifests.json.prev`), identity and rule numbers (`numbers.json`), feed ids and `agent.lock`, all mode 0600 in a directory owned by the agent's user; give a persistent directory (e.g. /var/lib/septa) for them to survive a reboot
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/run/septa",
        help_heading = "Node"
    )]
    pub state_dir: PathBuf,
    /// `GET /healthz` (up), `GET /readyz` (200 once a good state is enforced, the manifests have no errors and septa's CNI entry is in place when the agent manages it; 503 with the reason in words otherwise), `GET /metrics`
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:9876",
        help_heading = "Node"
    )]
    pub health_addr: SocketAddr,
    /// Run inside this network namespace (a path like /run/netns/node), entered before anything else: --health-addr is that namespace's address, and the IPFIX collector, --dns-server, feed URLs and --xdp-interface names are reached and looked up there, while paths are the file system's as usual [default: the current one]
    #[arg(long, value_name = "PATH", help_heading = "Node")]
    pub netns: Option<PathBuf>,
    /// This node's name: in flow records, and in Kubernetes mode the `spec.nodeName` of the pods it adopts [default: the host name]
    #[arg(long, env = "NODE_NAME", value_name = "NAME", help_heading = "Node")]
    pub node_name: Option<String>,
    /// Attach XDP to this host interface, where threat feeds drop first (repeatable)
    #[arg(
        long = "xdp-interface",
        alias = "xdp-interfaces",
        value_name = "IF",
        help_heading = "Node"
    )]
    pub xdp_interfaces: Vec<String>,
    /// Let packets that cannot be evaluated pass instead of dropping them (fail open; the default is fail closed)
    #[arg(long, help_heading = "Node")]
    pub fail_open: bool,
    /// Apply policy to traffic with the node's own addresses too (by default node traffic is always allowed)
    #[arg(long, help_heading = "Node")]
    pub policy_host: bool,
    /// On shutdown, detach every program and delete the pinned state (by default enforcement stays in place)
    #[arg(long, help_heading = "Node")]
    pub remove_enforcement: bool,

    /// Where workloads and policies come from: `dir` (the --manifests directory) or `kubernetes` (watches of the API server; see --kubeconfig) [default: kubernetes when the in-cluster service account environment is present and --manifests is not given, else dir]
    #[arg(long, value_name = "SOURCE", value_enum, help_heading = "Source")]
    pub source: Option<SourceKind>,
    /// Kubernetes mode: the kubeconfig to reach the API server with [default: the in-cluster service account]
    #[arg(long, value_name = "FILE", help_heading = "Source")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubernetes mode: how long a CNI ADD waits for its pod to appear in the API before it fails (the runtime retries the ADD); keep it below septa-cni's timeoutSeconds
    #[arg(long, value_name = "D", default_value = "5s", value_parser = parse_duration, help_heading = "Source")]
    pub pod_wait: Duration,
    /// Kubernetes mode: where container runtimes keep pods' network namespace files, searched for the pods of this node that run before the agent starts (repeatable)
    #[arg(
        long = "netns-dir",
        value_name = "DIR",
        default_value = "/run/netns",
        help_heading = "Source"
    )]
    pub netns_dirs: Vec<PathBuf>,
    /// Kubernetes mode: the DaemonSet this agent runs in, as `NAMESPACE/NAME`; on shutdown the agent removes its CNI entry only when this DaemonSet is gone or being deleted (`helm uninstall`), and keeps it on a restart or an upgrade [default: the entry is always kept]
    #[arg(long, env = "SEPTA_DAEMONSET", value_name = "NS/NAME", value_parser = parse_daemonset, help_heading = "Source")]
    pub daemonset: Option<(String, String)>,
    /// Directory of manifests (Namespaces, Pods or workloads, Services, NetworkPolicies, FqdnPolicies, ThreatFeeds), watched for changes
    #[arg(long, value_name = "DIR", help_heading = "Source")]
    pub manifests: Option<PathBuf>,
    /// How often the manifests directory is checked for changes
    #[arg(long, value_name = "D", default_value = "100ms", value_parser = parse_duration, help_heading = "Source")]
    pub poll_interval: Duration,

    /// How the node's CNI configuration runs septa-cni: `off` (you wire it yourself), `splice` (append septa's entry as the last plugin of the primary network's conflist, and put it back when the primary CNI rewrites its file) or `own-file` (install the complete conflist of --cni-own-file). Written once the agent enforces a good state, atomically, never when unchanged; kept when the agent stops
    #[arg(
        long,
        value_name = "MODE",
        value_enum,
        default_value = "off",
        help_heading = "CNI"
    )]
    pub cni_mode: CniMode,
    /// The directory the container runtime reads network configurations from
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/etc/cni/net.d",
        help_heading = "CNI"
    )]
    pub cni_conf_dir: PathBuf,
    /// splice: the file name of the primary network's conflist in --cni-conf-dir [default: the file the runtime uses, the first .conf/.conflist/.json by name]
    #[arg(long, value_name = "NAME", help_heading = "CNI")]
    pub cni_network: Option<String>,
    /// own-file: a complete conflist whose last plugin is septa-cni, installed in --cni-conf-dir as --cni-file-name
    #[arg(long, value_name = "FILE", help_heading = "CNI")]
    pub cni_own_file: Option<PathBuf>,
    /// own-file: the file name it is installed as (it should sort before the primary network's file, which the runtime would use otherwise)
    #[arg(
        long,
        value_name = "NAME",
        default_value = "05-septa.conflist",
        help_heading = "CNI"
    )]
    pub cni_file_name: String,
    /// How long septa-cni waits for the agent's socket on ADD before it fails with a retryable error (the runtime retries; the pod never runs unenforced)
    #[arg(long, value_name = "D", default_value = "30s", value_parser = parse_duration, help_heading = "CNI")]
    pub cni_socket_wait: Duration,
    /// Where --prepare-node installs the septa-cni binary
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/opt/cni/bin",
        help_heading = "CNI"
    )]
    pub cni_bin_dir: PathBuf,

    /// Check the options and the --config file, print the configuration and exit (0 when valid, 2 naming the bad option otherwise)
    #[arg(long, help_heading = "Run modes")]
    pub check_config: bool,
    /// Prepare the node and exit (an init container): mount bpffs under --pin-dir when it is not on one, and install the septa-cni binary found beside this one into --cni-bin-dir
    #[arg(long, help_heading = "Run modes", conflicts_with_all = ["check_config", "cni_uninstall"])]
    pub prepare_node: bool,
    /// Remove septa's CNI entry (spliced entry or own file) from --cni-conf-dir and exit, leaving every other byte as it was
    #[arg(long, help_heading = "Run modes", conflicts_with = "check_config")]
    pub cni_uninstall: bool,

    /// Conntrack map entries
    #[arg(long, value_name = "N", default_value_t = dataplane_common::sizes::CONNTRACK, help_heading = "Maps")]
    pub conntrack_entries: u32,
    /// Policy map entries
    #[arg(long, value_name = "N", default_value_t = dataplane_common::sizes::POLICY, help_heading = "Maps")]
    pub policy_entries: u32,
    /// ipcache (address to identity) map entries
    #[arg(long, value_name = "N", default_value_t = dataplane_common::sizes::IPCACHE, help_heading = "Maps")]
    pub ipcache_entries: u32,
    /// The kernel's event ring buffer in bytes (a power of two, at least 4096)
    #[arg(long, value_name = "N", default_value_t = dataplane_common::sizes::EVENTS_BYTES, help_heading = "Maps")]
    pub events_bytes: u32,
    /// At most one denial event per flow per interval
    #[arg(long, value_name = "D", default_value = "1s", value_parser = parse_duration, help_heading = "Maps")]
    pub deny_event_interval: Duration,

    /// A connection with no packet this long ends (UDP, ICMP, ...; TCP after 10x)
    #[arg(long, value_name = "D", default_value = "60s", value_parser = parse_duration, help_heading = "Flows")]
    pub conntrack_idle: Duration,
    /// How often long-lived connections are reported (`update`) and idle ones ended
    #[arg(long, value_name = "D", default_value = "30s", value_parser = parse_duration, help_heading = "Flows")]
    pub flow_update_interval: Duration,
    /// Fold forwarded flows per workload pair, port and verdict over this window; denials stay detailed [default: off]
    #[arg(long, value_name = "D", value_parser = parse_duration, help_heading = "Flows")]
    pub flow_aggregate_window: Option<Duration>,
    /// Groups per aggregation window; beyond it records pass unaggregated
    #[arg(
        long,
        value_name = "N",
        default_value_t = 100_000,
        help_heading = "Flows"
    )]
    pub flow_aggregate_max_groups: usize,

    /// Write flow records as JSON lines to this file (`-` for stdout; files are mode 0600, a wider mode left by an older build is narrowed)
    #[arg(long, value_name = "PATH", help_heading = "Export")]
    pub flow_log: Option<PathBuf>,
    /// Rotate the flow log at this size in bytes
    #[arg(long, value_name = "N", default_value_t = 100 << 20, help_heading = "Export")]
    pub flow_log_max_bytes: u64,
    /// Rotated flow-log files kept (`flows.jsonl.1` is the newest)
    #[arg(long, value_name = "N", default_value_t = 5, help_heading = "Export")]
    pub flow_log_keep: usize,
    /// Export flow records over IPFIX (UDP) to this collector, e.g. 192.0.2.10:4739
    #[arg(long, value_name = "ADDR", help_heading = "Export")]
    pub ipfix_collector: Option<SocketAddr>,
    /// IPFIX observation domain id
    #[arg(long, value_name = "N", default_value_t = 1, help_heading = "Export")]
    pub ipfix_domain: u32,
    /// How often IPFIX templates are resent
    #[arg(long, value_name = "D", default_value = "60s", value_parser = parse_duration, help_heading = "Export")]
    pub ipfix_template_interval: Duration,

    /// Shortest life of an address learned from a DNS answer, whatever its TTL
    #[arg(long, value_name = "D", default_value = "5s", value_parser = parse_duration, help_heading = "DNS")]
    pub dns_min_ttl: Duration,
    /// Longest life of an address learned from a DNS answer, whatever TTL it claims
    #[arg(long, value_name = "D", default_value = "1h", value_parser = parse_duration, help_heading = "DNS")]
    pub dns_max_ttl: Duration,
    /// How long after its TTL an address still passes re-checks of established connections
    #[arg(long, value_name = "D", default_value = "60s", value_parser = parse_duration, help_heading = "DNS")]
    pub dns_grace: Duration,
    /// Addresses kept per (pod, name); the oldest is evicted
    #[arg(long, value_name = "N", default_value_t = 64, help_heading = "DNS")]
    pub dns_max_ips_per_name: usize,
    /// How often the agent itself resolves the rules' exact names, so apps with their own DNS cache keep working (`0s`: never)
    #[arg(long, value_name = "D", default_value = "30s", value_parser = parse_duration, help_heading = "DNS")]
    pub dns_preresolve_interval: Duration,
    /// The DNS server the agent resolves with, e.g. 10.96.0.10:53 [default: /etc/resolv.conf]
    #[arg(long, value_name = "ADDR", help_heading = "DNS")]
    pub dns_server: Option<SocketAddr>,
    /// A resolver FqdnPolicy pods may query and whose answers are learned, for policies that name none in spec.resolvers (repeatable; give the cluster DNS service) [default: --dns-server, else the node's /etc/resolv.conf without loopback]
    #[arg(long = "dns-resolver", value_name = "IP", help_heading = "DNS")]
    pub dns_resolvers: Vec<IpAddr>,

    /// Deadline for one feed fetch, body included
    #[arg(long, value_name = "D", default_value = "60s", value_parser = parse_duration, help_heading = "Feeds")]
    pub feed_timeout: Duration,
    /// Largest feed body accepted, in bytes
    #[arg(long, value_name = "N", default_value_t = 64 << 20, help_heading = "Feeds")]
    pub feed_max_bytes: u64,
    /// First retry after a failed fetch; doubles up to the feed's refresh
    #[arg(long, value_name = "D", default_value = "10s", value_parser = parse_duration, help_heading = "Feeds")]
    pub feed_retry_min: Duration,
    /// Shortest refresh a ThreatFeed may ask for
    #[arg(long, value_name = "D", default_value = "60s", value_parser = parse_duration, help_heading = "Feeds")]
    pub feed_min_refresh: Duration,
    /// Threat feeds never block these ranges (repeatable; give the pod and service CIDRs); loopback and the node's addresses are always protected
    #[arg(long = "feed-protect", value_name = "CIDR", help_heading = "Feeds")]
    pub feed_protect: Vec<ipnetwork::IpNetwork>,
    /// PEM bundle of CA certificates trusted for https feeds besides the public web roots (an internal mirror signed by your CA); read and checked at start-up
    #[arg(long, value_name = "FILE", help_heading = "Feeds")]
    pub feed_ca_file: Option<PathBuf>,

    /// The certificates of --feed-ca-file, read by [`Config::load`].
    #[arg(skip)]
    pub feed_ca: Vec<reqwest::Certificate>,
}

/// Why the agent cannot start with these options.
#[derive(Debug)]
pub enum ConfigError {
    /// A flag or `--help`/`--version`: clap prints it (and exits 0 for help).
    Usage(clap::Error),
    /// A value the agent cannot run with, or a bad config file; the message names it.
    Invalid(String),
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

/// Parse `NAMESPACE/NAME` (both DNS labels, as Kubernetes names them).
fn parse_daemonset(s: &str) -> Result<(String, String), String> {
    let label = |x: &str| {
        !x.is_empty()
            && x.len() <= 253
            && x.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !x.starts_with(['-', '.'])
            && !x.ends_with(['-', '.'])
    };
    match s.split_once('/') {
        Some((ns, name)) if label(ns) && label(name) => Ok((ns.to_owned(), name.to_owned())),
        _ => Err(format!(
            "{s:?} is not NAMESPACE/NAME of a DaemonSet (lower-case letters, digits, '-' and '.')"
        )),
    }
}

impl Config {
    /// The configuration from a command line (`argv[0]` first): the config file's keys under
    /// the flags, defaults under both; then the values that depend on the node (host name,
    /// resolvers, CA bundle) filled in and every value checked (see [`Config::validate`]).
    pub fn load<I, T>(argv: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
        let flags = Self::command()
            .try_get_matches_from(&argv)
            .map_err(ConfigError::Usage)?;
        let mut cfg = match flags.get_one::<PathBuf>("config") {
            None => Self::from_arg_matches(&flags).map_err(ConfigError::Usage)?,
            Some(path) => {
                let file_args = Self::file_args(path, &flags).map_err(ConfigError::Invalid)?;
                let mut merged = argv[..1].to_vec();
                merged.extend(file_args);
                merged.extend(argv[1..].iter().cloned());
                Self::try_parse_from(merged).map_err(|e| {
                    ConfigError::Invalid(format!(
                        "config file {}: {}",
                        path.display(),
                        e.render().to_string().trim().trim_start_matches("error: ")
                    ))
                })?
            }
        };
        cfg.fill_in().map_err(ConfigError::Invalid)?;
        cfg.validate().map_err(ConfigError::Invalid)?;
        Ok(cfg)
    }

    /// The config file as flags, placed before the command line's so that those win; keys
    /// the command line sets are left out (a repeatable flag given there replaces the file's
    /// list instead of adding to it).
    fn file_args(
        path: &std::path::Path,
        flags: &clap::ArgMatches,
    ) -> Result<Vec<OsString>, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("config file {}: {e}", path.display()))?;
        let doc: serde_yaml::Value = serde_yaml::from_str(&text)
            .map_err(|e| format!("config file {}: {e}", path.display()))?;
        let map = match doc {
            serde_yaml::Value::Mapping(m) => m,
            serde_yaml::Value::Null => return Ok(Vec::new()),
            _ => {
                return Err(format!(
                    "config file {}: not a mapping of option names to values",
                    path.display()
                ))
            }
        };
        let cmd = Self::command();
        let mut out = Vec::new();
        for (k, v) in map {
            let key = k.as_str().ok_or_else(|| {
                format!(
                    "config file {}: a key that is not a string: {k:?}",
                    path.display()
                )
            })?;
            let arg = cmd
                .get_arguments()
                .find(|a| {
                    a.get_id() != "config"
                        && (a.get_long() == Some(key)
                            || a.get_all_aliases().is_some_and(|al| al.contains(&key)))
                })
                .ok_or_else(|| format!("config file {}: unknown key `{key}` (the keys are the long flag names of septa-agent --help)", path.display()))?;
            if flags.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine) {
                continue;
            }
            let long = arg.get_long().expect("every option has a long flag");
            let scalar = |v: &serde_yaml::Value| -> Result<String, String> {
                match v {
                    serde_yaml::Value::String(s) => Ok(s.clone()),
                    serde_yaml::Value::Number(n) => Ok(n.to_string()),
                    serde_yaml::Value::Bool(b) => Ok(b.to_string()),
                    _ => Err(format!(
                        "config file {}: `{key}`: expected a single value",
                        path.display()
                    )),
                }
            };
            if !arg.get_action().takes_values() {
                match v {
                    serde_yaml::Value::Bool(true) => out.push(format!("--{long}").into()),
                    serde_yaml::Value::Bool(false) => {}
                    _ => {
                        return Err(format!(
                            "config file {}: `{key}`: expected true or false",
                            path.display()
                        ))
                    }
                }
                continue;
            }
            match &v {
                serde_yaml::Value::Sequence(items) => {
                    for item in items {
                        out.push(format!("--{long}={}", scalar(item)?).into());
                    }
                }
                v => out.push(format!("--{long}={}", scalar(v)?).into()),
            }
        }
        Ok(out)
    }

    /// The values that come from the node when no option gives them.
    fn fill_in(&mut self) -> Result<(), String> {
        if self.source.is_none() {
            let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
            self.source = Some(if in_cluster && self.manifests.is_none() {
                SourceKind::Kubernetes
            } else {
                SourceKind::Dir
            });
        }
        if self.node_name.is_none() {
            self.node_name = Some(hostname());
        }
        if self.dns_resolvers.is_empty() {
            self.dns_resolvers = match self.dns_server {
                Some(s) => vec![s.ip()],
                None => resolv_conf_nameservers(
                    &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
                ),
            };
        }
        if let Some(p) = &self.feed_ca_file {
            self.feed_ca = crate::feeds::fetch::load_ca_bundle(p)
                .map_err(|e| format!("--feed-ca-file {e}"))?;
        }
        Ok(())
    }

    /// This node's name in flow records.
    pub fn node(&self) -> &str {
        self.node_name.as_deref().unwrap_or("localhost")
    }
    /// The CNI options agree with --cni-mode and with each other.
    fn validate_cni(&self) -> Result<(), String> {
        let mode = self.cni_mode;
        if mode != CniMode::OwnFile && self.cni_own_file.is_some() {
            return Err("--cni-own-file is for --cni-mode own-file".into());
        }
        if mode == CniMode::OwnFile && self.cni_own_file.is_none() {
            return Err(
                "--cni-mode own-file needs --cni-own-file (the conflist to install)".into(),
            );
        }
        if mode != CniMode::Splice && self.cni_network.is_some() {
            return Err("--cni-network is for --cni-mode splice".into());
        }
        for (flag, name) in [
            ("--cni-network", self.cni_network.as_deref()),
            ("--cni-file-name", Some(self.cni_file_name.as_str())),
        ] {
            let Some(name) = name else { continue };
            let plain = !name.is_empty()
                && !name.starts_with('.')
                && !name.contains(['/', '\\', '\0'])
                && [".conf", ".conflist", ".json"]
                    .iter()
                    .any(|ext| name.ends_with(ext));
            if !plain {
                return Err(format!(
                    "{flag} {name:?}: a file name in --cni-conf-dir ending in .conflist, .conf or .json, without '/' and not hidden"
                ));
            }
        }
        if self.cni_socket_wait.is_zero() || self.cni_socket_wait > Duration::from_secs(300) {
            return Err(format!(
                "--cni-socket-wait {:?}: between 1s and 5m (septa-cni waits this long for the agent on ADD)",
                self.cni_socket_wait
            ));
        }
        if mode != CniMode::Off && self.socket.to_str().is_none() {
            return Err(format!(
                "--socket {}: septa-cni reads the socket's path from JSON, which holds only UTF-8",
                self.socket.display()
            ));
        }
        if self.daemonset.is_some() && self.source != Some(SourceKind::Kubernetes) {
            return Err("--daemonset is for --source kubernetes".into());
        }
        if self.cni_uninstall && mode == CniMode::Off {
            return Err(
                "--cni-uninstall needs --cni-mode splice or own-file (what to remove)".into(),
            );
        }
        Ok(())
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
        if self.events_bytes < 4096 || !self.events_bytes.is_power_of_two() {
            return Err(format!(
                "--events-bytes {}: must be a power of two of at least 4096",
                self.events_bytes
            ));
        }
        match self.source {
            Some(SourceKind::Kubernetes) if self.manifests.is_some() => {
                return Err(
                    "--manifests is the standalone source; with --source kubernetes workloads and policies come from the API server: give one of them"
                        .into(),
                )
            }
            Some(SourceKind::Dir) if self.kubeconfig.is_some() => {
                return Err("--kubeconfig is for --source kubernetes".into())
            }
            _ => {}
        }
        self.validate_cni()?;
        if self.pod_wait.is_zero() {
            return Err("--pod-wait 0s: must be more than zero (how long an ADD waits for its pod in the API)".into());
        }
        if self.dns_max_ips_per_name == 0 {
            return Err("--dns-max-ips-per-name 0: must be at least 1".into());
        }
        if self.dns_max_ttl < self.dns_min_ttl {
            return Err(format!(
                "--dns-max-ttl {:?} is below --dns-min-ttl {:?}",
                self.dns_max_ttl, self.dns_min_ttl
            ));
        }
        Ok(())
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

    fn load(args: &[&str]) -> Result<Config, String> {
        Config::load(std::iter::once("septa-agent").chain(args.iter().copied())).map_err(
            |e| match e {
                ConfigError::Usage(e) => e.to_string(),
                ConfigError::Invalid(e) => e,
            },
        )
    }

    #[test]
    fn values_the_agent_cannot_run_with_are_refused_naming_the_option() {
        for (args, flag) in [
            (&["--poll-interval", "0s"][..], "--poll-interval 0s"),
            (
                &["--flow-update-interval", "0s"],
                "--flow-update-interval 0s",
            ),
            (
                &["--flow-aggregate-window", "0s"],
                "--flow-aggregate-window 0s",
            ),
            (
                &["--ipfix-template-interval", "0s"],
                "--ipfix-template-interval 0s",
            ),
            (&["--conntrack-entries", "0"], "--conntrack-entries 0"),
            (&["--feed-retry-min", "0s"], "--feed-retry-min 0s"),
            (&["--dns-max-ttl", "1s"], "--dns-max-ttl"),
            (&["--events-bytes", "5000"], "--events-bytes 5000"),
            (&["--dns-max-ips-per-name", "0"], "--dns-max-ips-per-name 0"),
        ] {
            let e = load(args).unwrap_err();
            assert!(e.starts_with(flag), "{flag}: {e}");
        }
        assert!(load(&[]).is_ok());
        let e = load(&["--poll-interval", "fast"]).unwrap_err();
        assert!(
            e.contains("--poll-interval") && e.contains("invalid duration"),
            "{e}"
        );
    }

    #[test]
    fn cni_options_are_checked() {
        let e = load(&["--cni-mode", "own-file"]).unwrap_err();
        assert!(e.contains("needs --cni-own-file"), "{e}");
        let e = load(&["--cni-own-file", "/etc/septa/net.conflist"]).unwrap_err();
        assert!(
            e.starts_with("--cni-own-file is for --cni-mode own-file"),
            "{e}"
        );
        let e = load(&["--cni-network", "10-flannel.conflist"]).unwrap_err();
        assert!(
            e.starts_with("--cni-network is for --cni-mode splice"),
            "{e}"
        );
        for bad in [
            "../10-flannel.conflist",
            ".hidden.conflist",
            "10-flannel",
            "",
        ] {
            let e = load(&["--cni-mode", "splice", "--cni-network", bad]).unwrap_err();
            assert!(e.starts_with("--cni-network"), "{bad:?}: {e}");
        }
        let e = load(&["--cni-file-name", "septa/x.conflist"]).unwrap_err();
        assert!(e.starts_with("--cni-file-name"), "{e}");
        for bad in ["0s", "6m"] {
            let e = load(&["--cni-socket-wait", bad]).unwrap_err();
            assert!(e.starts_with("--cni-socket-wait"), "{bad}: {e}");
        }
        let e = load(&["--cni-mode", "splce"]).unwrap_err();
        assert!(e.contains("splce") && e.contains("splice"), "{e}");
        let e = load(&["--cni-uninstall"]).unwrap_err();
        assert!(e.starts_with("--cni-uninstall needs"), "{e}");
        let e = load(&["--daemonset", "septa/septa-agent"]).unwrap_err();
        assert!(
            e.starts_with("--daemonset is for --source kubernetes"),
            "{e}"
        );
        for bad in ["septa-agent", "Septa/agent", "septa/", "/x", "a/b/c"] {
            let e = load(&["--source", "kubernetes", "--daemonset", bad]).unwrap_err();
            assert!(e.contains("NAMESPACE/NAME"), "{bad}: {e}");
        }
        let e = load(&["--prepare-node", "--check-config"]).unwrap_err();
        assert!(e.contains("--check-config"), "{e}");
        let c = load(&[
            "--source",
            "kubernetes",
            "--cni-mode",
            "splice",
            "--cni-network",
            "10-calico.conflist",
            "--daemonset",
            "kube-system/septa-agent",
        ])
        .unwrap();
        assert_eq!(c.cni_mode, CniMode::Splice);
        assert_eq!(
            c.daemonset,
            Some(("kube-system".to_owned(), "septa-agent".to_owned()))
        );
        assert_eq!(c.cni_conf_dir, PathBuf::from("/etc/cni/net.d"));
        assert_eq!(c.cni_socket_wait, Duration::from_secs(30));
        assert_eq!(load(&[]).unwrap().cni_mode, CniMode::Off);
    }

    #[test]
    fn kubernetes_mode_options_are_checked() {
        let e = load(&["--source", "kubernetes", "--manifests", "/etc/septa"]).unwrap_err();
        assert!(e.starts_with("--manifests is the standalone source"), "{e}");
        let e = load(&["--source", "dir", "--kubeconfig", "/root/.kube/config"]).unwrap_err();
        assert!(
            e.starts_with("--kubeconfig is for --source kubernetes"),
            "{e}"
        );
        let e = load(&["--source", "kubernetes", "--pod-wait", "0s"]).unwrap_err();
        assert!(e.starts_with("--pod-wait 0s"), "{e}");
        let e = load(&["--source", "kubernets"]).unwrap_err();
        assert!(e.contains("kubernets") && e.contains("kubernetes"), "{e}");
        let c = load(&["--source", "kubernetes", "--node-name", "node-7"]).unwrap();
        assert_eq!(
            (c.source, c.node()),
            (Some(SourceKind::Kubernetes), "node-7")
        );
        assert_eq!(c.pod_wait, Duration::from_secs(5));
        assert_eq!(c.netns_dirs, [PathBuf::from("/run/netns")]);
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
    fn defaults_are_the_engines() {
        let c = load(&[]).unwrap();
        assert_eq!(c.feed_min_refresh, crate::feeds::spec::MIN_REFRESH);
        assert_eq!(c.pin_dir, PathBuf::from(dataplane::loader::DEFAULT_PIN_DIR));
        assert_eq!(c.socket, PathBuf::from(api::protocol::DEFAULT_SOCKET));
        assert!(c.node_name.is_some(), "filled in from the host");
    }

    #[test]
    fn file_then_flags() {
        let dir = std::env::temp_dir().join(format!("septa-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("agent.yaml");
        let fs = f.display().to_string();
        std::fs::write(
            &f,
            "manifests: /etc/septa/policies\nfail-open: true\npoll-interval: 250ms\nfeed-protect: [10.0.0.0/8, 'fd00::/8']\nconntrack-entries: 4096\n",
        )
        .unwrap();
        let c = load(&["--config", &fs, "--poll-interval", "50ms"]).unwrap();
        assert_eq!(
            c.manifests.as_deref(),
            Some(std::path::Path::new("/etc/septa/policies"))
        );
        assert!(c.fail_open);
        assert_eq!(c.poll_interval, Duration::from_millis(50), "flags win");
        assert_eq!(c.conntrack_entries, 4096);
        assert_eq!(c.feed_protect.len(), 2, "a list for a repeatable flag");
        let c = load(&["--config", &fs, "--feed-protect", "192.168.0.0/16"]).unwrap();
        assert_eq!(
            c.feed_protect.len(),
            1,
            "the flag's list replaces the file's"
        );
        let e = load(&["--feed-ca-file", dir.join("corp-ca.pem").to_str().unwrap()]).unwrap_err();
        assert!(
            e.starts_with("--feed-ca-file") && e.contains("corp-ca.pem: cannot read"),
            "{e}"
        );
        for (text, why) in [
            ("manifest: typo\n", "unknown key `manifest`"),
            ("poll-interval: soon\n", "poll-interval"),
            ("fail-open: 1\n", "expected true or false"),
            ("conntrack-entries: [1, 2]\n", "conntrack-entries"),
            ("[1, 2]\n", "not a mapping"),
            ("policy-host: {a: 1}\n", "policy-host"),
        ] {
            std::fs::write(&f, text).unwrap();
            let e = load(&["--config", &fs]).unwrap_err();
            assert!(e.contains(&fs) && e.contains(why), "{text}: {e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn trusted_resolvers_default_from_the_dns_server_then_resolv_conf() {
        let c = load(&["--dns-server", "192.0.2.53:5353"]).unwrap();
        assert_eq!(c.dns_resolvers, ["192.0.2.53".parse::<IpAddr>().unwrap()]);
        let c = load(&[
            "--dns-server",
            "192.0.2.53:53",
            "--dns-resolver",
            "10.96.0.10",
        ])
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
