//! kube-proxy, emulated: from the Kubernetes objects it watches (core/v1 `Service`,
//! discovery.k8s.io/v1 `EndpointSlice`) write the NAT rules kube-proxy writes, in a node's
//! network namespace, with the real tools: `iptables-restore` (kube-proxy's iptables mode) or
//! `nft -f` (its nftables mode). Chain, map and comment names are kube-proxy's own
//! (`pkg/proxy/iptables/proxier.go`, `pkg/proxy/nftables/proxier.go`), hashes included, so a
//! rule listing reads like a real node's.
//!
//! Phases: [`service_ports`] reduces the objects to what the rules need (pure: each service
//! port with its ready endpoints); [`render_iptables`] / [`render_nftables`] write the rules
//! (pure); [`KubeProxy::sync`] applies them as one full sync, atomically replacing the previous
//! sync's rules (one `iptables-restore` / one `nft -f` transaction), as kube-proxy's full syncs
//! do; [`KubeProxy::flush`] removes everything.
//!
//! Covered: ClusterIP, NodePort (any local address but 127/8) and externalIPs, TCP, UDP and
//! SCTP, IPv4, `Cluster` traffic policies (ClusterIP traffic from outside the cluster CIDR and
//! all NodePort/external traffic masqueraded; hairpin traffic masqueraded), only ready
//! endpoints. Not covered: `Local` traffic policies, session affinity, LoadBalancer IPs, IPv6,
//! and kube-proxy's filter-table rules (REJECT for services without endpoints: here such a
//! service gets no rules, and its traffic goes wherever the ClusterIP routes).

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    io::Write as _,
    net::Ipv4Addr,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};
/// The objects kube-proxy reads (re-exported so callers need no k8s-openapi of their own).
pub use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

/// kube-proxy's masquerade mark (`--iptables-masquerade-bit` 14, the default).
const MASQ_MARK: &str = "0x4000";
/// The label naming an EndpointSlice's Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Which of kube-proxy's modes to emulate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `--proxy-mode iptables`: the nat table's KUBE-* chains, through `iptables-restore`.
    Iptables,
    /// `--proxy-mode nftables`: `table ip kube-proxy`, through `nft -f`.
    Nftables,
}

/// One port of one Service with the endpoints traffic to it goes to: kube-proxy's unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The port's name ("" for an unnamed single port).
    pub port_name: String,
    /// `tcp`, `udp` or `sctp` (lower case, as in rules).
    pub protocol: String,
    /// `spec.clusterIP`.
    pub cluster_ip: Ipv4Addr,
    /// The port on the ClusterIP and external IPs.
    pub port: u16,
    /// The NodePort on every local address (0: none).
    pub node_port: u16,
    /// `spec.externalIPs` (IPv4).
    pub external_ips: Vec<Ipv4Addr>,
    /// Ready endpoints (address, port), sorted.
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

impl ServicePort {
    /// kube-proxy's `ServicePortName.String()`: `ns/name:port`, or `ns/name` for an unnamed port.
    pub fn port_name_string(&self) -> String {
        if self.port_name.is_empty() {
            format!("{}/{}", self.namespace, self.name)
        } else {
            format!("{}/{}:{}", self.namespace, self.name, self.port_name)
        }
    }

    fn external(&self) -> bool {
        self.node_port != 0 || !self.external_ips.is_empty()
    }
}

/// The service ports of `services` (ClusterIP set, IPv4; headless and ExternalName Services
/// have none), each with the ready endpoints the EndpointSlices labelled with its Service's
/// name give for its port (matched by port name and protocol, as kube-proxy does). A ready
/// condition left unset counts as ready (the API's meaning).
pub fn service_ports(services: &[Service], slices: &[EndpointSlice]) -> Vec<ServicePort> {
    let mut out = Vec::new();
    for svc in services {
        let (Some(ns), Some(name), Some(spec)) = (
            svc.metadata.namespace.as_deref(),
            svc.metadata.name.as_deref(),
            svc.spec.as_ref(),
        ) else {
            continue;
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let Some(cluster_ip) = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        else {
            continue; // headless ("None"), unset, or IPv6
        };
        let external_ips: Vec<Ipv4Addr> = spec
            .external_ips
            .iter()
            .flatten()
            .filter_map(|ip| ip.parse().ok())
            .collect();
        let mine = slices.iter().filter(|s| {
            s.metadata.namespace.as_deref() == Some(ns)
                && s.address_type == "IPv4"
                && s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL))
                    .map(String::as_str)
                    == Some(name)
        });
        let mine: Vec<_> = mine.collect();
        for p in spec.ports.iter().flatten() {
            let port_name = p.name.clone().unwrap_or_default();
            let protocol = p.protocol.as_deref().unwrap_or("TCP");
            let mut endpoints = BTreeSet::new();
            for slice in &mine {
                let Some(ep_port) = slice.ports.iter().flatten().find(|ep| {
                    ep.name.as_deref().unwrap_or_default() == port_name
                        && ep.protocol.as_deref().unwrap_or("TCP") == protocol
                }) else {
                    continue;
                };
                let Some(target) = ep_port.port.and_then(|p| u16::try_from(p).ok()) else {
                    continue;
                };
                for ep in &slice.endpoints {
                    let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                    if !ready {
                        continue;
                    }
                    for a in &ep.addresses {
                        if let Ok(a) = a.parse::<Ipv4Addr>() {
                            endpoints.insert((a, target));
                        }
                    }
                }
            }
            out.push(ServicePort {
                namespace: ns.into(),
                name: name.into(),
                port_name,
                protocol: protocol.to_ascii_lowercase(),
                cluster_ip,
                port: u16::try_from(p.port).unwrap_or(0),
                node_port: p.node_port.and_then(|n| u16::try_from(n).ok()).unwrap_or(0),
                external_ips: external_ips.clone(),
                endpoints: endpoints.into_iter().collect(),
            });
        }
    }
    out
}

/// The first `n` characters of standard base32 (RFC 4648, Go's `base32.StdEncoding`) of `bytes`.
fn base32_prefix(bytes: &[u8], n: usize) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(n);
    let (mut acc, mut bits) = (0u32, 0);
    for &b in bytes {
        if out.len() == n {
            break;
        }
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 && out.len() < n {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
        acc &= (1 << bits) - 1;
    }
    // A last partial group is padded with zero bits.
    if out.len() < n && bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn sha256_base32(s: &str, n: usize) -> String {
    base32_prefix(
        ring::digest::digest(&ring::digest::SHA256, s.as_bytes()).as_ref(),
        n,
    )
}

/// iptables mode's chain suffix: `portProtoHash` (sha256 of name + protocol, base32, 16 chars).
fn iptables_hash(sp: &ServicePort) -> String {
    sha256_base32(&format!("{}{}", sp.port_name_string(), sp.protocol), 16)
}

/// `KUBE-SVC-<hash>`: the service port's chain choosing an endpoint.
pub fn iptables_svc_chain(sp: &ServicePort) -> String {
    format!("KUBE-SVC-{}", iptables_hash(sp))
}

/// `KUBE-EXT-<hash>`: the chain NodePort and external IP traffic enters (masquerade, then SVC).
pub fn iptables_ext_chain(sp: &ServicePort) -> String {
    format!("KUBE-EXT-{}", iptables_hash(sp))
}

/// `KUBE-SEP-<hash>`: one endpoint's DNAT chain (hash of name + protocol + `ip:port`).
pub fn iptables_sep_chain(sp: &ServicePort, ep: (Ipv4Addr, u16)) -> String {
    let key = format!("{}{}{}:{}", sp.port_name_string(), sp.protocol, ep.0, ep.1);
    format!("KUBE-SEP-{}", sha256_base32(&key, 16))
}

/// nftables mode's `hashAndTruncate`: 8 hash characters, `-`, the name (kept under 240).
fn nft_hash_and_truncate(name: &str) -> String {
    let mut out = format!("{}-{name}", sha256_base32(name, 8));
    if out.len() > 240 {
        out.truncate(237);
        out.push_str("...");
    }
    out
}

fn nft_chain_base(sp: &ServicePort) -> String {
    nft_hash_and_truncate(&format!(
        "{}/{}/{}/{}",
        sp.namespace, sp.name, sp.protocol, sp.port_name
    ))
}

/// `service-<hash>-ns/name/proto/port`: the service port's chain choosing an endpoint.
pub fn nft_service_chain(sp: &ServicePort) -> String {
    format!("service-{}", nft_chain_base(sp))
}

/// `external-<hash>-ns/name/proto/port`: NodePort and external IP traffic (masquerade, then
/// the service chain).
pub fn nft_external_chain(sp: &ServicePort) -> String {
    format!("external-{}", nft_chain_base(sp))
}

/// `endpoint-<hash>-ns/name/proto/port__ip/port`: one endpoint's DNAT chain.
pub fn nft_endpoint_chain(sp: &ServicePort, ep: (Ipv4Addr, u16)) -> String {
    format!(
        "endpoint-{}",
        nft_hash_and_truncate(&format!(
            "{}/{}/{}/{}__{}/{}",
            sp.namespace, sp.name, sp.protocol, sp.port_name, ep.0, ep.1
        ))
    )
}

/// Service chain prefixes kube-proxy's iptables mode owns (and deletes when stale).
const IPTABLES_SERVICE_CHAINS: [&str; 5] = [
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-EXT-",
    "KUBE-FW-",
    "KUBE-SEP-",
];

/// The nat table of a full iptables-mode sync, as `iptables-restore --noflush` input: every
/// chain it uses declared (which flushes it), its rules, and the service chains of `existing`
/// (the table's chains now) that it no longer uses flushed and deleted, as kube-proxy deletes
/// stale chains. The jumps from the built-in chains (PREROUTING and OUTPUT to KUBE-SERVICES,
/// POSTROUTING to KUBE-POSTROUTING) are not in it: kube-proxy ensures those with separate
/// `iptables` calls so as not to own the built-in chains (see [`KubeProxy::sync`]).
pub fn render_iptables(ports: &[ServicePort], cluster_cidr: &str, existing: &[String]) -> String {
    let mut chains: Vec<String> = [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ]
    .map(String::from)
    .into();
    let mut rules = vec![
        format!("-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"),
        // Clear the mark so a packet that traverses the stack again is not masqueraded twice.
        format!("-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}"),
        r#"-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully"#.into(),
        format!("-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}"),
    ];
    for sp in ports.iter().filter(|sp| !sp.endpoints.is_empty()) {
        let (spn, proto) = (sp.port_name_string(), &sp.protocol);
        let (svc, ext) = (iptables_svc_chain(sp), iptables_ext_chain(sp));
        let dst = format!(
            "-m {proto} -p {proto} -d {} --dport {}",
            sp.cluster_ip, sp.port
        );
        rules.push(format!(
            r#"-A KUBE-SERVICES -m comment --comment "{spn} cluster IP" {dst} -j {svc}"#
        ));
        // ClusterIP traffic from outside the cluster's pods may bounce off-node: masquerade it.
        chains.push(svc.clone());
        rules.push(format!(
            r#"-A {svc} -m comment --comment "{spn} cluster IP" {dst} ! -s {cluster_cidr} -j KUBE-MARK-MASQ"#
        ));
        let n = sp.endpoints.len();
        for (i, &ep) in sp.endpoints.iter().enumerate() {
            let sep = iptables_sep_chain(sp, ep);
            // Endpoint i of n is taken with probability 1/(n-i) by those reaching its rule:
            // uniform overall; the last rule takes whatever is left.
            let statistic = if i + 1 < n {
                format!(
                    " -m statistic --mode random --probability {:.10}",
                    1.0 / (n - i) as f64
                )
            } else {
                String::new()
            };
            rules.push(format!(
                r#"-A {svc} -m comment --comment "{spn} -> {}:{}"{statistic} -j {sep}"#,
                ep.0, ep.1
            ));
            chains.push(sep.clone());
            // Hairpin: an endpoint reaching itself through the service must see another source.
            rules.push(format!(
                r#"-A {sep} -m comment --comment "{spn}" -s {} -j KUBE-MARK-MASQ"#,
                ep.0
            ));
            rules.push(format!(
                r#"-A {sep} -m comment --comment "{spn}" -m {proto} -p {proto} -j DNAT --to-destination {}:{}"#,
                ep.0, ep.1
            ));
        }
        if sp.external() {
            chains.push(ext.clone());
            for eip in &sp.external_ips {
                rules.push(format!(
                    r#"-A KUBE-SERVICES -m comment --comment "{spn} external IP" -m {proto} -p {proto} -d {eip} --dport {} -j {ext}"#,
                    sp.port
                ));
            }
            if sp.node_port != 0 {
                rules.push(format!(
                    r#"-A KUBE-NODEPORTS -m comment --comment "{spn}" -m {proto} -p {proto} --dport {} -j {ext}"#,
                    sp.node_port
                ));
            }
            // externalTrafficPolicy Cluster: the endpoint may be on another node.
            rules.push(format!(
                r#"-A {ext} -m comment --comment "masquerade traffic for {spn} external destinations" -j KUBE-MARK-MASQ"#
            ));
            rules.push(format!("-A {ext} -j {svc}"));
        }
    }
    // Last, so that service IPs match first; localhost NodePorts would need route_localnet.
    rules.push(r#"-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS"#.into());

    let stale: Vec<&String> = existing
        .iter()
        .filter(|c| IPTABLES_SERVICE_CHAINS.iter().any(|p| c.starts_with(p)))
        .filter(|c| !chains.contains(c))
        .collect();
    let mut out = String::from("*nat\n");
    for c in chains.iter().chain(stale.iter().copied()) {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    for r in rules {
        out.push_str(&r);
        out.push('\n');
    }
    for c in stale {
        let _ = writeln!(out, "-X {c}");
    }
    out.push_str("COMMIT\n");
    out
}

/// A full nftables-mode sync as one `nft -f` transaction: `table ip kube-proxy` deleted (if
/// present) and written anew, so the swap is atomic. Base chains (at kube-proxy's priorities),
/// `services` dispatching through the verdict maps `service-ips` (`ip daddr . meta l4proto . th
/// dport`) and `service-nodeports` (for `fib daddr type local`), per service port a chain
/// picking an endpoint by `numgen random mod N vmap`, per endpoint a chain with `dnat to`, and
/// masquerading of marked packets in `nat-postrouting`.
pub fn render_nftables(ports: &[ServicePort], cluster_cidr: &str) -> String {
    const T: &str = "ip kube-proxy";
    let mut chains: Vec<String> = Vec::new();
    let mut rules: Vec<(String, String)> = Vec::new();
    let mut elements: Vec<(&str, String)> = Vec::new();
    let mut rule = |chain: &str, r: String| rules.push((chain.to_owned(), r));
    rule("nat-prerouting", "jump services".into());
    rule("nat-output", "jump services".into());
    rule("nat-postrouting", "jump masquerading".into());
    rule(
        "mark-for-masquerade",
        format!("mark set mark or {MASQ_MARK}"),
    );
    rule("masquerading", format!("mark and {MASQ_MARK} == 0 return"));
    // Clear the mark so a packet that traverses the stack again is not masqueraded twice.
    rule("masquerading", format!("mark set mark xor {MASQ_MARK}"));
    rule("masquerading", "masquerade fully-random".into());
    rule(
        "services",
        "ip daddr . meta l4proto . th dport vmap @service-ips".into(),
    );
    rule(
        "services",
        "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports".into(),
    );
    for sp in ports.iter().filter(|sp| !sp.endpoints.is_empty()) {
        let proto = &sp.protocol;
        let (svc, ext) = (nft_service_chain(sp), nft_external_chain(sp));
        chains.push(svc.clone());
        elements.push((
            "service-ips",
            format!("{} . {proto} . {} : goto {svc}", sp.cluster_ip, sp.port),
        ));
        // ClusterIP traffic from outside the cluster's pods may bounce off-node: masquerade it.
        rule(
            &svc,
            format!(
                "ip daddr {} {proto} dport {} ip saddr != {cluster_cidr} jump mark-for-masquerade",
                sp.cluster_ip, sp.port
            ),
        );
        let mut vmap = Vec::new();
        for (i, &ep) in sp.endpoints.iter().enumerate() {
            let chain = nft_endpoint_chain(sp, ep);
            vmap.push(format!("{i} : goto {chain}"));
            chains.push(chain.clone());
            // Hairpin: an endpoint reaching itself through the service must see another source.
            rule(
                &chain,
                format!("ip saddr {} jump mark-for-masquerade", ep.0),
            );
            rule(
                &chain,
                format!("meta l4proto {proto} dnat to {}:{}", ep.0, ep.1),
            );
        }
        rule(
            &svc,
            format!(
                "numgen random mod {} vmap {{ {} }}",
                sp.endpoints.len(),
                vmap.join(", ")
            ),
        );
        if sp.external() {
            chains.push(ext.clone());
            for eip in &sp.external_ips {
                elements.push((
                    "service-ips",
                    format!("{eip} . {proto} . {} : goto {ext}", sp.port),
                ));
            }
            if sp.node_port != 0 {
                elements.push((
                    "service-nodeports",
                    format!("{proto} . {} : goto {ext}", sp.node_port),
                ));
            }
            // externalTrafficPolicy Cluster: the endpoint may be on another node.
            rule(&ext, "jump mark-for-masquerade".into());
            rule(&ext, format!("goto {svc}"));
        }
    }

    let mut out = String::new();
    // `add` then `delete`: the table goes whether or not it existed, in the same transaction
    // that writes the new one.
    let _ = writeln!(out, "add table {T}\ndelete table {T}");
    let _ = writeln!(
        out,
        "add table {T} {{ comment \"rules for kube-proxy\" ; }}"
    );
    // Base chains at kube-proxy's priorities. (nft 1.0.6 knows `dstnat` by name only for the
    // prerouting hook; -100 is its value.)
    for (chain, hook, prio) in [
        ("nat-prerouting", "prerouting", "dstnat"),
        ("nat-output", "output", "-100"),
        ("nat-postrouting", "postrouting", "srcnat"),
    ] {
        let _ = writeln!(
            out,
            "add chain {T} {chain} {{ type nat hook {hook} priority {prio} ; }}"
        );
    }
    for c in ["services", "masquerading", "mark-for-masquerade"]
        .map(String::from)
        .iter()
        .chain(&chains)
    {
        let _ = writeln!(out, "add chain {T} {c}");
    }
    let _ = writeln!(
        out,
        "add map {T} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}"
    );
    let _ = writeln!(
        out,
        "add map {T} service-nodeports {{ type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }}"
    );
    for (chain, r) in &rules {
        let _ = writeln!(out, "add rule {T} {chain} {r}");
    }
    for (map, e) in &elements {
        let _ = writeln!(out, "add element {T} {map} {{ {e} }}");
    }
    out
}

/// kube-proxy on one node: where its rules go and how it writes them.
pub struct KubeProxy {
    netns: PathBuf,
    /// Which mode's rules [`KubeProxy::sync`] writes.
    pub mode: Mode,
    /// kube-proxy's `--cluster-cidr` (its local-traffic detector): ClusterIP traffic from
    /// elsewhere is masqueraded, traffic from pods keeps its source.
    pub cluster_cidr: String,
}

/// The jumps from built-in nat chains kube-proxy's iptables mode ensures (`iptablesJumpChains`).
const IPTABLES_JUMPS: [(&str, &str, &str); 3] = [
    ("OUTPUT", "KUBE-SERVICES", "kubernetes service portals"),
    ("PREROUTING", "KUBE-SERVICES", "kubernetes service portals"),
    (
        "POSTROUTING",
        "KUBE-POSTROUTING",
        "kubernetes postrouting rules",
    ),
];

impl KubeProxy {
    /// kube-proxy in `mode` for the node whose network namespace is `netns`.
    pub fn new(netns: &Path, mode: Mode, cluster_cidr: &str) -> Self {
        KubeProxy {
            netns: netns.to_owned(),
            mode,
            cluster_cidr: cluster_cidr.into(),
        }
    }

    /// A full sync: the rules for `services` and `slices` replace this mode's previous rules in
    /// one transaction (connections already made keep their conntrack NAT, as on a real node).
    pub fn sync(&self, services: &[Service], slices: &[EndpointSlice]) -> Result<()> {
        let ports = service_ports(services, slices);
        match self.mode {
            Mode::Nftables => {
                let rules = render_nftables(&ports, &self.cluster_cidr);
                self.run("nft", &["-f", "-"], Some(&rules))?;
            }
            Mode::Iptables => {
                let existing = self.iptables_chains(&IPTABLES_SERVICE_CHAINS)?;
                let rules = render_iptables(&ports, &self.cluster_cidr, &existing);
                self.run("iptables-restore", &["-w", "--noflush"], Some(&rules))?;
                // After the restore, which created the targets.
                for (chain, target, comment) in IPTABLES_JUMPS {
                    let rule = ["-m", "comment", "--comment", comment, "-j", target];
                    let check = [&["-w", "-t", "nat", "-C", chain][..], &rule].concat();
                    if self.run("iptables", &check, None).is_err() {
                        let insert = [&["-w", "-t", "nat", "-I", chain][..], &rule].concat();
                        self.run("iptables", &insert, None)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Remove every rule this mode wrote (kube-proxy's `--cleanup`).
    pub fn flush(&self) -> Result<()> {
        match self.mode {
            Mode::Nftables => {
                self.run(
                    "nft",
                    &["-f", "-"],
                    Some("add table ip kube-proxy\ndelete table ip kube-proxy\n"),
                )?;
            }
            Mode::Iptables => {
                for (chain, target, comment) in IPTABLES_JUMPS {
                    let rule = ["-m", "comment", "--comment", comment, "-j", target];
                    let delete = [&["-w", "-t", "nat", "-D", chain][..], &rule].concat();
                    while self.run("iptables", &delete, None).is_ok() {}
                }
                let ours = self.iptables_chains(&["KUBE-"])?;
                let mut restore = String::from("*nat\n");
                for c in &ours {
                    let _ = writeln!(restore, ":{c} - [0:0]");
                }
                for c in &ours {
                    let _ = writeln!(restore, "-X {c}");
                }
                restore.push_str("COMMIT\n");
                self.run("iptables-restore", &["-w", "--noflush"], Some(&restore))?;
            }
        }
        Ok(())
    }

    /// The current rules as the tools list them (`iptables-save -t nat` or `nft list table`).
    pub fn listing(&self) -> Result<String> {
        match self.mode {
            Mode::Iptables => self.run("iptables-save", &["-t", "nat"], None),
            Mode::Nftables => self.run("nft", &["list", "table", "ip", "kube-proxy"], None),
        }
    }

    /// Chains of the nat table whose names start with one of `prefixes`.
    fn iptables_chains(&self, prefixes: &[&str]) -> Result<Vec<String>> {
        let save = self.run("iptables-save", &["-t", "nat"], None)?;
        Ok(save
            .lines()
            .filter_map(|l| l.strip_prefix(':'))
            .filter_map(|l| l.split(' ').next())
            .filter(|c| prefixes.iter().any(|p| c.starts_with(p)))
            .map(String::from)
            .collect())
    }

    /// Run `prog args` inside the node's namespace with `stdin`; its stdout, or its stderr as
    /// the error.
    fn run(&self, prog: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let ns = std::fs::File::open(&self.netns)
            .with_context(|| format!("node netns {}", self.netns.display()))?;
        let fd = ns.as_raw_fd();
        let mut cmd = Command::new(prog);
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: setns is async-signal-safe; the fd stays open until after spawn.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().with_context(|| format!("running {prog}"))?;
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        drop(ns);
        if !out.status.success() {
            bail!(
                "{prog} {}: {}\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim(),
                stdin.unwrap_or_default()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Which endpoints each service port (`ns/name:port/proto`) has.
    fn endpoints_by_port(ports: &[ServicePort]) -> BTreeMap<String, Vec<(Ipv4Addr, u16)>> {
        ports
            .iter()
            .map(|sp| {
                (
                    format!("{}/{}", sp.port_name_string(), sp.protocol),
                    sp.endpoints.clone(),
                )
            })
            .collect()
    }

    fn sp(endpoints: &[(&str, u16)]) -> ServicePort {
        ServicePort {
            namespace: "ns1".into(),
            name: "svc1".into(),
            port_name: "p80".into(),
            protocol: "tcp".into(),
            cluster_ip: "172.30.0.41".parse().unwrap(),
            port: 80,
            node_port: 0,
            external_ips: vec![],
            endpoints: endpoints
                .iter()
                .map(|(a, p)| (a.parse().unwrap(), *p))
                .collect(),
        }
    }

    /// Chain names as kube-proxy's own tests and comments spell them.
    #[test]
    fn chain_names_are_kube_proxys() {
        let s = sp(&[("10.180.0.1", 80)]);
        let ep = ("10.180.0.1".parse().unwrap(), 80);
        let ep2 = ("10.180.0.2".parse().unwrap(), 80);
        assert_eq!(iptables_svc_chain(&s), "KUBE-SVC-XPGD46QRK7WJZT7O");
        assert_eq!(iptables_sep_chain(&s, ep), "KUBE-SEP-SXIVWICOYRO3J4NJ");
        assert_eq!(iptables_sep_chain(&s, ep2), "KUBE-SEP-LXVODXWDISEETFEF");
        assert_eq!(nft_service_chain(&s), "service-ULMVA6XW-ns1/svc1/tcp/p80");
        assert_eq!(
            nft_endpoint_chain(&s, ep),
            "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        );
    }

    #[test]
    fn iptables_spreads_with_kube_proxys_probabilities_and_deletes_stale_chains() {
        let s = sp(&[("10.180.0.1", 80), ("10.180.0.2", 80), ("10.180.0.3", 80)]);
        let existing = [
            "KUBE-SEP-OLDOLDOLDOLDOLDO",
            "KUBE-SVC-XPGD46QRK7WJZT7O",
            "CNI-HOSTPORT-DNAT",
        ]
        .map(String::from);
        let text = render_iptables(&[s], "10.88.0.0/16", &existing);
        assert!(
            text.contains(":KUBE-SEP-OLDOLDOLDOLDOLDO - [0:0]\n"),
            "{text}"
        );
        assert!(
            text.contains("\n-X KUBE-SEP-OLDOLDOLDOLDOLDO\n"),
            "stale chain deleted:\n{text}"
        );
        assert!(
            !text.contains("-X KUBE-SVC-"),
            "a chain in use stays:\n{text}"
        );
        assert!(
            !text.contains("CNI-HOSTPORT"),
            "others' chains are left alone:\n{text}"
        );
        let svc: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SVC-") && l.contains(" -> "))
            .collect();
        assert_eq!(svc.len(), 3, "{text}");
        assert!(svc[0].contains("--probability 0.3333333333"), "{text}");
        assert!(svc[1].contains("--probability 0.5000000000"), "{text}");
        assert!(!svc[2].contains("--probability"), "{text}");
        assert!(
            text.lines()
                .rfind(|l| l.starts_with("-A KUBE-SERVICES"))
                .unwrap()
                .contains("-j KUBE-NODEPORTS"),
            "the NodePort jump is the last rule of KUBE-SERVICES:\n{text}"
        );
    }

    #[test]
    fn only_ready_endpoints_of_the_matching_port() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "ns1", "name": "svc1"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [
                {"name": "http", "port": 80, "protocol": "TCP"},
                {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}]}
        }))
        .unwrap();
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "ns1", "name": "svc1-abc",
                         "labels": {"kubernetes.io/service-name": "svc1"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                      {"name": "dns", "port": 5353, "protocol": "UDP"}],
            "endpoints": [
                {"addresses": ["10.88.1.5"], "conditions": {"ready": true}},
                {"addresses": ["10.88.2.5"], "conditions": {"ready": false}},
                {"addresses": ["10.88.3.5"]}]
        }))
        .unwrap();
        let other: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "ns2", "name": "svc1-x",
                         "labels": {"kubernetes.io/service-name": "svc1"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 9999}],
            "endpoints": [{"addresses": ["10.88.9.9"]}]
        }))
        .unwrap();
        let ports = service_ports(&[svc], &[slice, other]);
        let by = endpoints_by_port(&ports);
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            by["ns1/svc1:http/tcp"],
            vec![(ip("10.88.1.5"), 8080), (ip("10.88.3.5"), 8080)]
        );
        assert_eq!(
            by["ns1/svc1:dns/udp"],
            vec![(ip("10.88.1.5"), 5353), (ip("10.88.3.5"), 5353)]
        );
        assert_eq!(ports[1].node_port, 30053);
    }

    #[test]
    fn base32_matches_rfc4648() {
        // RFC 4648 section 10 test vectors.
        assert_eq!(base32_prefix(b"foobar", 8), "MZXW6YTB");
        assert_eq!(base32_prefix(b"f", 2), "MY");
    }
}
