//! The agent's state and main loop: registry requests, manifest changes and shutdown, each
//! followed by a compile and a reconcile of the maps.
//!
//! Start-up order is what keeps a second agent, or one that cannot start, from disturbing a
//! running one: directories checked and locked first (see [`crate::dirs`]), then the registry
//! read, then the data path loaded, and the socket bound last of all, once nothing else can
//! fail; it is bound under a temporary name and renamed into place, and removed at shutdown
//! only if it is still the one this agent bound.
//!
//! Registry requests queued together share one compile and reconcile.
//!
//! Fail mode of registrations: an endpoint is accepted only for a host interface the kernel
//! shows to be the veth peer of the pod's interface, and only once per interface; programs
//! are attached after the map entries, and an ADD that fails is undone. An endpoint whose
//! interface disappears is forgotten with its links; CHECK answers from the kernel's view.

use std::{collections::BTreeMap, net::IpAddr, os::unix::fs::PermissionsExt, sync::Arc};

use dataplane_common::{endpoint_flags, identity, v4_mapped, Config as DpConfig, EndpointInfo};
use ipnetwork::IpNetwork;
use policies::{
    compile::Compiler,
    model::{Pod, WorkloadRef},
    Cluster,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::UnixListener,
    sync::{mpsc, oneshot},
};
use tracing::{debug, error, info, warn};

use crate::{
    config::Config,
    dirs::{AgentDirs, Dir},
    registry::{Registered, Registry},
    source::Source,
};
use api::protocol::{Endpoint, Request, Response, MAX_LINE};
use dataplane::{reconcile::MapState, Datapath, Error, LoadOptions};

/// The agent: data path, compiler, inputs and the map state it last wrote.
pub struct Agent {
    pub cfg: Config,
    pub dp: Datapath,
    actual: MapState,
    compiler: Compiler,
    /// Identity and rule numbers kept across restarts (see [`crate::numbering`]).
    numbers: crate::numbering::Numbering,
    /// The last manifests that loaded without errors (None: none yet).
    manifests: Option<Cluster>,
    /// Where [`Agent::manifests`] came from, for messages ("the manifests directory", or the
    /// saved copy's file and when it was saved).
    good_from: String,
    /// Why the saved last good manifests could not be started from, if they could not.
    saved_unusable: Option<String>,
    /// The errors of the last load of the manifests directory (None: it had none).
    dir_errors: Option<policies::Diagnostics>,
    source: Option<Source>,
    pub registry: Registry,
    /// The state, pin and socket directories, checked and locked for this agent's lifetime.
    dirs: AgentDirs,
    /// Readiness: served by `/readyz` and answered to the CNI plugin's STATUS.
    pub ready: Arc<crate::health::Readiness>,
    sweeper: crate::flows::sweep::Sweeper,
    /// What flow records are enriched with; refreshed after every compile.
    pub enricher: Arc<std::sync::RwLock<crate::flows::Enricher>>,
    /// Threat feeds: fetch tasks, last good lists, the blocklist tries.
    pub feeds: crate::feeds::manager::Manager,
    /// FQDN rules: the engine that turns DNS answers into allowlist entries.
    pub dns: crate::dns::engine::Engine,
    /// The FqdnPolicies of the last good manifests.
    fqdn_specs: Vec<crate::dns::spec::FqdnSpec>,
    /// Slot rules computed by the last compile, handed to the engine once the maps match.
    next_fqdn_rules: Option<BTreeMap<u32, Vec<crate::dns::engine::SlotRule>>>,
}

impl Agent {
    /// Load (or re-open) the data path, adopt registered endpoints, read the manifests.
    pub fn start(cfg: Config) -> Result<Self, Error> {
        // Everything that can refuse the start comes before the first write to pinned state.
        let dirs = AgentDirs::take(&cfg.state_dir, &cfg.pin_dir, &cfg.socket)?;
        let (mut registry, note) = Registry::load(dirs.state.clone())?;
        if let Some(n) = &note {
            error!(problem = %n, "endpoint registry damaged; using its second copy");
        }
        let mut dp = Datapath::load(&LoadOptions {
            pin_dir: cfg.pin_dir.clone(),
            conntrack_entries: cfg.conntrack_entries,
            policy_entries: cfg.policy_entries,
            ipcache_entries: cfg.ipcache_entries,
            events_bytes: cfg.events_bytes,
        })?;
        let mut dcfg = dp.config()?;
        dcfg.flags = 0;
        if cfg.fail_open {
            dcfg.flags |= dataplane_common::config_flags::FAIL_OPEN;
        }
        if cfg.policy_host {
            dcfg.flags |= dataplane_common::config_flags::POLICY_HOST;
        }
        dcfg.deny_event_interval_ns = cfg.deny_event_interval.as_nanos() as u64;
        dp.set_config(&DpConfig { ..dcfg })?;
        let actual = dp.read_state()?;
        info!(pin_dir = %cfg.pin_dir.display(), policy_entries = actual.policy.len(), ipcache_entries = actual.ipcache.len(), endpoints = actual.endpoints.len(), "data path loaded");
        // Adopt endpoints whose interface (or cgroup) still exists; forget the others.
        let mut gone = Vec::new();
        for (cid, r) in registry.endpoints.iter_mut() {
            if let Some(cg) = &r.endpoint.cgroup {
                if std::path::Path::new(cg).is_dir() {
                    dp.attach_cgroup(std::path::Path::new(cg), r.ifindex)?;
                    info!(container = %cid, cgroup = %cg, "cgroup workload adopted");
                } else {
                    gone.push(cid.clone());
                }
                continue;
            }
            // The registered index, under the registered name: a name alone may have been
            // reused by another pod's veth since.
            match hostnet::link::link(r.ifindex) {
                Ok(l) if l.name == r.endpoint.host_ifname => {
                    dp.attach_ifindex(r.ifindex, &r.endpoint.host_ifname)?;
                    info!(container = %cid, pod = %format!("{}/{}", r.endpoint.namespace, r.endpoint.name), iface = %r.endpoint.host_ifname, ifindex = r.ifindex, "endpoint adopted");
                }
                _ => gone.push(cid.clone()),
            }
        }
        let rewrite = note.is_some() || !gone.is_empty();
        for cid in gone {
            warn!(container = %cid, "registered endpoint's interface is gone; forgetting it");
            registry.endpoints.remove(&cid);
        }
        // Both copies as they now are: a damaged one does not linger until the next change.
        if rewrite {
            if let Err(e) = registry.save() {
                warn!(error = %e, "saving the endpoint registry; will retry on the next change");
            }
        }
        let pruned = dp.prune_dead_links();
        if pruned > 0 {
            info!(
                pins = pruned,
                "removed pins of links whose interface is gone"
            );
        }
        for iface in &cfg.xdp_interfaces {
            dp.attach_xdp(iface)?;
            info!(iface = %iface, "XDP attached");
        }
        let source = cfg.manifests.clone().map(Source::new);
        let numbers = crate::numbering::Numbering::read(&dirs.state).unwrap_or_else(|e| {
            warn!(error = %e, "identity numbers of the last run unreadable; numbering afresh (every map entry is written again once)");
            Default::default()
        });
        let feeds = crate::feeds::manager::Manager::new(
            &dp,
            crate::feeds::manager::Settings {
                limits: crate::feeds::fetch::Limits {
                    timeout: cfg.feed_timeout,
                    max_bytes: cfg.feed_max_bytes,
                },
                retry_min: cfg.feed_retry_min,
                protect: cfg.feed_protect.clone(),
                state: dirs.state.clone(),
                ca: cfg.feed_ca.clone(),
            },
            &hostnet::addrs::host_addresses(),
        )?;
        let mut dns = crate::dns::engine::Engine::new(crate::dns::engine::Limits {
            min_ttl: cfg.dns_min_ttl,
            max_ttl: cfg.dns_max_ttl,
            grace: cfg.dns_grace,
            max_ips_per_name: cfg.dns_max_ips_per_name,
            ..Default::default()
        });
        if cfg.dns_resolvers.is_empty() {
            warn!("no trusted DNS resolver (no --dns-resolver, --dns-server, nor a usable nameserver in /etc/resolv.conf): pods of FqdnPolicies without spec.resolvers can resolve nothing");
        } else {
            info!(resolvers = ?cfg.dns_resolvers, "trusted DNS resolvers for FqdnPolicies without their own");
        }
        // Entries a previous run left keep enforcing; the engine takes over their expiry.
        let adopted = dp.fqdn_entries()?;
        if !adopted.is_empty() {
            info!(
                entries = adopted.len(),
                "FQDN allowlist adopted from pinned maps"
            );
        }
        for (k, v) in adopted {
            dns.adopt(k, v);
        }
        let mut agent = Agent {
            dns,
            fqdn_specs: Vec::new(),
            next_fqdn_rules: None,
            feeds,
            cfg,
            dp,
            actual,
            compiler: Compiler::default(),
            numbers,
            manifests: None,
            good_from: String::new(),
            dir_errors: None,
            saved_unusable: None,
            source,
            registry,
            dirs,
            ready: Default::default(),
            enricher: Default::default(),
            sweeper: Default::default(),
        };
        if agent.source.is_none() {
            agent.manifests = Some(Cluster::default());
        }
        agent.poll_source();
        if agent.manifests.is_none() && agent.source.is_some() {
            agent.restore_saved();
        }
        if agent.manifests.is_some() {
            agent.reconcile()?;
        }
        Ok(agent)
    }

    /// Re-read the manifests if they changed; apply them only when they load without errors.
    /// Returns whether the state changed. (At start; the run loop reads them on a thread of
    /// their own, see [`spawn_loader`].)
    pub fn poll_source(&mut self) -> bool {
        let Some(src) = self.source.as_mut() else {
            return false;
        };
        let Some(load) = src.poll() else {
            return false;
        };
        self.apply_load(load)
    }

    /// Apply one load of the manifests directory, only when it has no errors, and save its
    /// texts as the last good manifests. Returns whether the state changed.
    pub fn apply_load(&mut self, load: crate::source::Load) -> bool {
        let crate::source::Load {
            cluster,
            mut problems,
            snapshot,
        } = load;
        let dir = self.cfg.manifests.clone().unwrap_or_default();
        let (feeds, fqdns) = septa_objects(&cluster, self.cfg.feed_min_refresh, &mut problems);
        metrics::gauge!("septa_manifest_errors").set(problems.0.len() as f64);
        for d in problems.warnings() {
            warn!(file = %d.file, object = %d.object, "{}", d.message);
        }
        if !problems.is_empty() {
            for d in &problems.0 {
                error!(file = %d.file, object = %d.object, field = %d.field, "{}", d.message);
            }
            self.dir_errors = Some(problems);
            self.refresh_readiness();
            return false;
        }
        info!(dir = %dir.display(), pods = cluster.pods.len(), policies = cluster.policies.len(), threat_feeds = feeds.len(), "manifests loaded");
        match snapshot {
            Some(Ok(s)) => {
                if let Err(e) = s.save(&self.dirs.state) {
                    error!(error = %e, "saving the last good manifests; a restart on manifests with errors would start from an older copy (or none)")
                }
            }
            Some(Err(why)) => {
                warn!("the last good manifests are not saved this time: {why}")
            }
            None => {}
        }
        self.feeds.set_wanted(feeds);
        self.fqdn_specs = fqdns;
        self.manifests = Some(cluster);
        self.good_from = format!("the manifests in {}", dir.display());
        self.dir_errors = None;
        self.refresh_readiness();
        true
    }

    /// Say (log, readiness, CNI answers) what the directory's errors mean now.
    fn refresh_readiness(&mut self) {
        let why = self.dir_errors.as_ref().map(|p| {
            let dir = self.cfg.manifests.clone().unwrap_or_default();
            self.errors_summary(&dir, p)
        });
        if let Some(w) = &why {
            warn!("{w}");
        }
        self.ready.set_problem(why);
    }

    /// What the directory's errors mean for enforcement, in words that are true now.
    fn errors_summary(&self, dir: &std::path::Path, problems: &policies::Diagnostics) -> String {
        let first = problems.0.first().map_or(String::new(), |d| {
            let mut at = d.file.clone();
            for part in [&d.object, &d.field] {
                if !part.is_empty() {
                    at = format!("{at}: {part}");
                }
            }
            format!(" (first: {at}: {})", d.message)
        });
        let n = problems.0.len();
        let errors = if n == 1 { "error" } else { "errors" };
        let head = format!(
            "the manifests in {} have {n} {errors}{first}",
            dir.display()
        );
        if self.manifests.is_some() {
            format!(
                "{head}; enforcing the last good state, from {}, until they are fixed",
                self.good_from
            )
        } else {
            let saved = self.saved_unusable.clone().unwrap_or_else(|| {
                format!("no saved copy in {}", self.dirs.state.path().display())
            });
            format!(
                "{head}; no good state yet (none applied since the agent started, and {saved}): \
                 pods are refused until they are fixed"
            )
        }
    }

    /// Start from the last good manifests saved in the state directory (the directory has
    /// errors, or cannot be read, and nothing good was applied yet).
    fn restore_saved(&mut self) {
        let saved = match crate::snapshot::Snapshot::read(&self.dirs.state) {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(e) => {
                error!(error = %e, "the saved last good manifests are unreadable");
                self.saved_unusable = Some(format!("the saved copy is unreadable: {e}"));
                self.refresh_readiness();
                return;
            }
        };
        let (snap, from) = saved;
        let name = from.display().to_string();
        let (cluster, mut problems) = snap.load(&name);
        let (feeds, fqdns) = septa_objects(&cluster, self.cfg.feed_min_refresh, &mut problems);
        if !problems.is_empty() {
            for d in &problems.0 {
                error!(file = %d.file, object = %d.object, field = %d.field, "{}", d.message);
            }
            error!("the saved last good manifests do not load without errors either; not used");
            self.saved_unusable = Some(format!(
                "the saved copy {name} has {} errors of its own",
                problems.0.len()
            ));
            self.refresh_readiness();
            return;
        }
        let when = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(snap.saved_at),
        );
        info!(copy = %name, saved_at = %when, files = snap.files.len(), pods = cluster.pods.len(), policies = cluster.policies.len(), threat_feeds = feeds.len(), fqdn_policies = fqdns.len(), "starting from the last good manifests saved in the state directory");
        self.feeds.set_wanted(feeds);
        self.fqdn_specs = fqdns;
        self.manifests = Some(cluster);
        self.good_from = format!(
            "the copy of {} saved in {name} at {when}",
            snap.dir.display()
        );
        self.refresh_readiness();
    }

    /// The pod an endpoint stands for: its Pod object in the manifests if there is one,
    /// else the labels the runtime gave, owned by a workload whose template they match.
    fn pod_for(ep: &Endpoint, m: &Cluster) -> Pod {
        let mut pod = m
            .pods
            .iter()
            .find(|p| p.namespace == ep.namespace && p.name == ep.name && p.workload.kind == "Pod")
            .cloned()
            .unwrap_or_else(|| {
                let labels = ep.labels.clone().unwrap_or_default();
                let template = m.pods.iter().find(|t| {
                    t.namespace == ep.namespace
                        && t.name == t.workload.name
                        && t.workload.kind != "Pod"
                        && !t.labels.is_empty()
                        && t.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
                });
                Pod {
                    namespace: ep.namespace.clone(),
                    name: ep.name.clone(),
                    workload: template.map_or_else(
                        || WorkloadRef {
                            namespace: ep.namespace.clone(),
                            name: ep.name.clone(),
                            kind: "Pod".into(),
                        },
                        |t| t.workload.clone(),
                    ),
                    named_ports: template.map(|t| t.named_ports.clone()).unwrap_or_default(),
                    labels,
                    ips: Vec::new(),
                    host_network: false,
                }
            });
        if let Some(l) = &ep.labels {
            pod.labels.extend(l.clone());
        }
        pod.ips = ep.ips.clone();
        pod
    }

    /// The desired map state: compiled policy over the registered endpoints, plus the node's
    /// own addresses as `host`.
    pub fn desired(&mut self) -> Option<MapState> {
        let m = self.manifests.as_ref()?;
        let mut cluster = Cluster {
            namespaces: m.namespaces.clone(),
            pods: Vec::new(),
            services: m.services.clone(),
            policies: m.policies.clone(),
            custom: Vec::new(),
            ..Default::default()
        };
        cluster.policies.extend(crate::fqdn::isolation_policies(
            &self.fqdn_specs,
            &self.cfg.dns_resolvers,
        ));
        let mut slot_pods = Vec::new();
        for r in self.registry.endpoints.values() {
            let pod = Self::pod_for(&r.endpoint, m);
            slot_pods.push((r.ifindex, pod.clone()));
            cluster.pods.push(pod);
        }
        let slot_rules = crate::fqdn::slot_rules(
            &self.fqdn_specs,
            &self.cfg.dns_resolvers,
            slot_pods.iter().map(|(s, p)| (*s, p)),
        );
        let mut st = self.compiler.compile(&cluster);
        // Saved before the maps are written: numbers in the maps are always in the file.
        if self.numbers.apply(&mut st) {
            if let Err(e) = self.numbers.save(&self.dirs.state) {
                warn!(error = %e, "saving identity numbers; a restart would renumber");
            }
        }
        if let Ok(mut en) = self.enricher.write() {
            en.rules = st
                .rules
                .iter()
                .map(|(id, r)| {
                    (
                        *id,
                        crate::flows::PolicyRef {
                            namespace: r.namespace.clone(),
                            name: r.name.clone(),
                            direction: r.direction.to_string(),
                            rule_index: r.index,
                        },
                    )
                })
                .collect();
            for (id, s, i) in crate::fqdn::numbered(&self.fqdn_specs) {
                en.rules.insert(
                    id,
                    crate::flows::PolicyRef {
                        namespace: s.namespace.clone(),
                        name: s.name.clone(),
                        direction: "egress".into(),
                        rule_index: i,
                    },
                );
            }
            en.endpoints.clear();
            for p in &cluster.pods {
                for ip in &p.ips {
                    en.endpoints.insert(
                        *ip,
                        (
                            p.namespace.clone(),
                            p.name.clone(),
                            format!("{}/{}", p.workload.kind, p.workload.name),
                            p.labels.clone(),
                        ),
                    );
                }
            }
            en.node = self.cfg.node().to_owned();
        }
        let mut ms = MapState {
            policy: st.policy,
            ipcache: st.ipcache,
            endpoints: BTreeMap::new(),
        };
        for ip in hostnet::addrs::host_addresses() {
            ms.ipcache.insert(IpNetwork::from(ip), identity::HOST);
        }
        for r in self.registry.endpoints.values() {
            let key = format!("{}/{}", r.endpoint.namespace, r.endpoint.name);
            let Some(es) = st.endpoints.get(&key) else {
                continue;
            };
            let mut info: EndpointInfo = es.to_info();
            info.endpoint_id = r.endpoint_id;
            for ip in &r.endpoint.ips {
                match ip {
                    IpAddr::V4(v4) => {
                        info.ipv4 = v4_mapped(v4.octets());
                        info.flags |= endpoint_flags::HAS_IPV4;
                    }
                    IpAddr::V6(v6) => {
                        info.ipv6 = v6.octets();
                        info.flags |= endpoint_flags::HAS_IPV6;
                    }
                }
            }
            if slot_rules.contains_key(&r.ifindex) {
                info.flags |= endpoint_flags::FQDN;
            }
            ms.endpoints.insert(r.ifindex, info);
        }
        self.next_fqdn_rules = Some(slot_rules);
        Some(ms)
    }

    /// Compile and write the difference to the maps.
    pub fn reconcile(&mut self) -> Result<(), Error> {
        // Timed from the compile: the histogram is the whole cost of one change.
        let t = std::time::Instant::now();
        let Some(desired) = self.desired() else {
            debug!("no valid manifests yet; maps left as they are");
            return Ok(());
        };
        let stats = match self.dp.reconcile(&mut self.actual, &desired) {
            Ok(st) => {
                metrics::counter!("septa_reconciles_total", "result" => "ok").increment(1);
                st
            }
            Err(e) => {
                metrics::counter!("septa_reconciles_total", "result" => "error").increment(1);
                return Err(e);
            }
        };
        metrics::histogram!("septa_map_update_duration_seconds").record(t.elapsed().as_secs_f64());
        if let Some(rules) = self.next_fqdn_rules.take() {
            for k in self.dns.set_rules(rules) {
                if let Err(e) = self.dp.remove_fqdn(&k) {
                    warn!(error = %e, "removing the FQDN entry of an endpoint without FQDN rules");
                }
            }
        }
        crate::metrics::map_sizes(&self.actual);
        // Current as soon as a change is answered, not at the next scrape of the maps.
        metrics::gauge!("septa_policy_revision").set(stats.revision as f64);
        if stats.upserts + stats.removals > 0 {
            info!(
                upserts = stats.upserts,
                removals = stats.removals,
                revision = stats.revision,
                elapsed_us = t.elapsed().as_micros() as u64,
                "maps reconciled"
            );
        }
        self.ready.set_reconciled();
        Ok(())
    }

    /// Bring the feed tasks in line with the manifests.
    fn sync_feeds(&mut self, tx: &mpsc::UnboundedSender<crate::feeds::manager::FeedUpdate>) {
        if let Err(e) = self.feeds.sync(&mut self.dp, tx) {
            error!(error = %e, kind = e.metric_label(), "threat feeds: blocklist update failed");
        }
        self.refresh_feed_names();
    }

    fn refresh_dns_names(&mut self) {
        if let Ok(mut en) = self.enricher.write() {
            en.dns_names = self
                .dns
                .names_of_addr
                .iter()
                .map(|(ip, n)| (*ip, n.iter().cloned().collect()))
                .collect();
        }
    }

    fn refresh_feed_names(&mut self) {
        if let Ok(mut en) = self.enricher.write() {
            en.feeds = self.feeds.names();
        }
    }

    /// Serve one registry request.
    pub fn handle(&mut self, req: Request) -> Response {
        match req {
            Request::Status => match (self.ready.reconciled(), self.ready.problem()) {
                (true, warning) => Response {
                    warning: warning.unwrap_or_default(),
                    ..Response::ok()
                },
                (false, Some(why)) => Response::err(format!("agent not ready: {why}")),
                (false, None) => Response::err("agent not ready: no valid manifests applied yet"),
            },
            Request::Check { container_id } => {
                self.forget_if_gone(&container_id);
                match self.registry.endpoints.get(&container_id) {
                    None => Response::err(format!("container {container_id} is not registered")),
                    Some(r) => match self.verify(r) {
                        Err(e) => Response::err(format!("container {container_id}: {e}")),
                        Ok(()) => Response {
                            identity: self.actual.endpoints.get(&r.ifindex).map(|e| e.identity),
                            ..Response::ok()
                        },
                    },
                }
            }
            req @ (Request::Add(_) | Request::Del { .. }) => {
                let (tx, mut rx) = oneshot::channel();
                self.handle_batch(vec![(req, tx)]);
                rx.try_recv()
                    .unwrap_or_else(|_| Response::err("the request was not answered"))
            }
            // Served by the socket task from the flow tap, never queued here.
            Request::Flows { .. } => Response::err("flow queries are served by the socket task"),
        }
    }

    /// Serve queued requests. ADDs and DELs change the registry first and share one compile
    /// and reconcile, then the added endpoints get their programs: a burst of requests costs
    /// one compile, not one each. Other requests, and a second request for a container with
    /// an ADD in the batch, first finish what came before them, so answers keep the order of
    /// the requests. An ADD whose client hung up is dropped unanswered: nobody waits for it,
    /// and its runtime will not DEL a pod it never heard was added.
    pub fn handle_batch(&mut self, jobs: Vec<Job>) {
        let mut batch = Batch::default();
        for (req, reply) in jobs {
            match req {
                Request::Add(ep) => {
                    if reply.is_closed() {
                        metrics::counter!("septa_requests_dropped_total", "op" => "add")
                            .increment(1);
                        warn!(container = %ep.container_id, "ADD dropped: its client hung up before it was served");
                        continue;
                    }
                    if batch.has(&ep.container_id) {
                        self.finish_batch(&mut batch);
                    }
                    match self.prepare_add(ep) {
                        Ok(p) => batch.adds.push((p, reply)),
                        Err(r) => {
                            let _ = reply.send(r);
                        }
                    }
                }
                Request::Del { container_id } => {
                    if batch.has(&container_id) {
                        self.finish_batch(&mut batch);
                    }
                    batch.removed |= self.remove_registration(&container_id);
                    batch.dels.push(reply);
                }
                other => {
                    self.finish_batch(&mut batch);
                    let _ = reply.send(self.handle(other));
                }
            }
        }
        self.finish_batch(&mut batch);
    }

    /// Validate an ADD and put it in the registry; its map entries and programs follow in
    /// [`Agent::finish_batch`].
    fn prepare_add(&mut self, ep: Endpoint) -> Result<PendingAdd, Response> {
        if self.manifests.is_none() {
            return Err(Response::err(format!(
                "agent not ready: {}",
                self.ready
                    .problem()
                    .unwrap_or_else(|| "no valid manifests applied yet".into())
            )));
        }
        if let Err(e) = ep.check_addresses() {
            return Err(Response::err(e));
        }
        // A veth endpoint is keyed by its interface index, a cgroup by a slot above them.
        let slot = match &ep.cgroup {
            Some(cg) if !std::path::Path::new(cg).is_dir() => {
                return Err(Response::err(format!("cgroup {cg} is not a directory")))
            }
            Some(_) => None,
            None => match hostnet::netns::ifindex(&ep.host_ifname) {
                Ok(i) => Some(i),
                Err(e) => return Err(Response::err(format!("host interface: {e}"))),
            },
        };
        // The request names the pod's host interface; only the kernel can vouch for it.
        if let Some(ifindex) = slot {
            if let Err(e) = hostnet::link::verify_veth_peer(
                ifindex,
                std::path::Path::new(&ep.netns),
                &ep.ifname,
            ) {
                warn!(container = %ep.container_id, iface = %ep.host_ifname, netns = %ep.netns, reason = %e, "ADD refused: the host interface is not the pod's");
                return Err(Response::err(format!(
                    "{} is not the host side of {} in {}: {e}",
                    ep.host_ifname, ep.ifname, ep.netns
                )));
            }
        }
        let owner = |reg: &Registry| {
            reg.endpoints
                .iter()
                .find(|(c, r)| {
                    **c != ep.container_id
                        && match (&ep.cgroup, &r.endpoint.cgroup) {
                            (None, None) => Some(r.ifindex) == slot,
                            (Some(a), Some(b)) => a == b,
                            _ => false,
                        }
                })
                .map(|(c, _)| c.clone())
        };
        if let Some(other) = owner(&self.registry) {
            // Its interface may be gone, and the index given to this one since.
            self.forget_if_gone(&other);
            if self.registry.endpoints.contains_key(&other) {
                return Err(Response::err(format!(
                    "{} is already registered to container {other}; DEL that container first",
                    ep.cgroup.as_deref().unwrap_or(&ep.host_ifname)
                )));
            }
        }
        let previous = self.registry.endpoints.get(&ep.container_id).cloned();
        let endpoint_id = match &previous {
            Some(r) => r.endpoint_id,
            None => self.registry.allocate_id(),
        };
        let slot = slot.unwrap_or(dataplane_common::CGROUP_SLOT_BASE | endpoint_id);
        self.registry.endpoints.insert(
            ep.container_id.clone(),
            Registered {
                endpoint: ep.clone(),
                ifindex: slot,
                endpoint_id,
            },
        );
        Ok(PendingAdd { ep, slot, previous })
    }

    /// Forget a registration and detach its programs (map entries go at the next reconcile).
    /// Returns whether there was one.
    fn remove_registration(&mut self, container_id: &str) -> bool {
        match self.registry.endpoints.remove(container_id) {
            Some(r) => {
                self.detach_endpoint(&r.endpoint, r.ifindex);
                info!(container = %container_id, pod = %format!("{}/{}", r.endpoint.namespace, r.endpoint.name), "endpoint removed");
                true
            }
            None => {
                // An ADD that never completed may have left links behind.
                self.dp.prune_dead_links();
                false
            }
        }
    }

    /// Compile once for the batch's registry changes, attach the added endpoints' programs
    /// (map entries first, programs second: the first packet already finds its endpoint),
    /// save the registry and answer. An ADD is acknowledged only once the registry is durable:
    /// a pod that a restarted agent would not adopt must not be started as if it were
    /// protected, so a failed save fails (and undoes) the batch's ADDs. A DEL is answered ok
    /// all the same (the runtime would retry it for good); its stale line only re-attaches
    /// enforcement after a restart, to an interface or cgroup that still exists then.
    fn finish_batch(&mut self, batch: &mut Batch) {
        if batch.adds.is_empty() && !batch.removed {
            for reply in batch.dels.drain(..) {
                let _ = reply.send(Response::ok());
            }
            return;
        }
        let compiled = self.reconcile();
        if let Err(e) = &compiled {
            error!(error = %e, kind = e.metric_label(), "reconcile after registry changes");
        }
        let mut failed = false;
        let mut attached = Vec::new();
        for (p, reply) in batch.adds.drain(..) {
            let done = match &compiled {
                Ok(()) => self
                    .attach_endpoint(&p.ep, p.slot)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match done {
                Ok(()) => attached.push((p, reply)),
                Err(e) => {
                    self.undo_add(&p);
                    failed = true;
                    error!(container = %p.ep.container_id, pod = %format!("{}/{}", p.ep.namespace, p.ep.name), error = %e, "endpoint add failed");
                    let _ = reply.send(Response::err(e));
                }
            }
        }
        if let Err(e) = self.registry.save() {
            let why = format!("endpoint registry not saved, so a restarted agent would not adopt this pod: {e}; free space in the state directory or fix it, then retry");
            error!(error = %e, adds = attached.len(), "saving the endpoint registry; the batch's ADDs fail and are undone");
            for (p, reply) in attached.drain(..) {
                self.undo_add(&p);
                let _ = reply.send(Response::err(why.clone()));
            }
            failed = true;
        }
        if failed {
            if let Err(e) = self.reconcile() {
                error!(error = %e, "reconcile after a failed add");
            }
        }
        for (p, reply) in attached {
            // The same container registered again on another interface: the old one is no
            // longer its own.
            if let Some(old) = p.previous.filter(|o| o.ifindex != p.slot) {
                self.detach_endpoint(&old.endpoint, old.ifindex);
            }
            let identity = self.actual.endpoints.get(&p.slot).map(|e| e.identity);
            info!(container = %p.ep.container_id, pod = %format!("{}/{}", p.ep.namespace, p.ep.name), iface = %p.ep.host_ifname, cgroup = ?p.ep.cgroup, slot = p.slot, identity, "endpoint added");
            let _ = reply.send(Response {
                identity,
                warning: self.ready.problem().unwrap_or_default(),
                ..Response::ok()
            });
        }
        for reply in batch.dels.drain(..) {
            let _ = reply.send(Response::ok());
        }
        batch.removed = false;
    }

    /// Back to what was registered (and persisted) before an ADD: its previous registration,
    /// or none; the new slot's programs go unless the previous registration used them too.
    fn undo_add(&mut self, p: &PendingAdd) {
        let keep_attached = p.previous.as_ref().is_some_and(|o| {
            o.ifindex == p.slot
                && o.endpoint.host_ifname == p.ep.host_ifname
                && o.endpoint.cgroup == p.ep.cgroup
        });
        match &p.previous {
            Some(o) => {
                self.registry
                    .endpoints
                    .insert(p.ep.container_id.clone(), o.clone());
            }
            None => {
                self.registry.endpoints.remove(&p.ep.container_id);
            }
        }
        if !keep_attached {
            self.detach_endpoint(&p.ep, p.slot);
        }
    }

    fn attach_endpoint(&mut self, ep: &Endpoint, slot: u32) -> Result<(), Error> {
        match &ep.cgroup {
            Some(cg) => self.dp.attach_cgroup(std::path::Path::new(cg), slot),
            None => self.dp.attach_ifindex(slot, &ep.host_ifname),
        }
    }

    /// Detach an endpoint's programs, unless another registration owns the same interface or
    /// slot (its programs are that endpoint's enforcement).
    fn detach_endpoint(&mut self, ep: &Endpoint, slot: u32) {
        if self.registry.endpoints.values().any(|r| r.ifindex == slot) {
            return;
        }
        let r = match &ep.cgroup {
            Some(cg) => self.dp.detach_cgroup(std::path::Path::new(cg), slot),
            None => self.dp.detach_ifindex(slot),
        };
        if let Err(e) = r {
            warn!(error = %e, "detaching");
        }
    }

    /// Whether an endpoint is enforced: for a veth, the host interface is still the pod's and
    /// both programs run on it, reading the maps pinned now; for a cgroup, its links are pinned.
    fn verify(&self, r: &Registered) -> Result<(), String> {
        match &r.endpoint.cgroup {
            Some(_) => {
                let pin = self
                    .dp
                    .pin_dir()
                    .join("cgroups")
                    .join(format!("{}_egress", r.ifindex));
                if pin.exists() {
                    Ok(())
                } else {
                    Err("programs are not attached to its cgroup".into())
                }
            }
            None => {
                hostnet::link::verify_veth_peer(
                    r.ifindex,
                    std::path::Path::new(&r.endpoint.netns),
                    &r.endpoint.ifname,
                )?;
                self.dp.tcx_verify(r.ifindex)
            }
        }
    }

    /// Forget the veth endpoint of `container_id` if its host interface is gone.
    fn forget_if_gone(&mut self, container_id: &str) {
        let gone = self.registry.endpoints.get(container_id).is_some_and(|r| {
            r.endpoint.cgroup.is_none()
                && hostnet::link::link(r.ifindex).map_or(true, |l| l.name != r.endpoint.host_ifname)
        });
        if gone {
            self.forget(vec![container_id.to_owned()]);
        }
    }

    /// Forget veth endpoints whose host interface is gone (the pod's namespace was removed
    /// without a DEL), with their links and map entries. Returns how many were forgotten.
    pub fn forget_gone(&mut self) -> usize {
        let links = match hostnet::link::links() {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "listing interfaces");
                return 0;
            }
        };
        let gone: Vec<String> = self
            .registry
            .endpoints
            .iter()
            .filter(|(_, r)| {
                r.endpoint.cgroup.is_none()
                    && links
                        .get(&r.ifindex)
                        .is_none_or(|l| l.name != r.endpoint.host_ifname)
            })
            .map(|(c, _)| c.clone())
            .collect();
        self.forget(gone)
    }

    /// Forget these endpoints (their interface is gone), with their links and map entries.
    fn forget(&mut self, gone: Vec<String>) -> usize {
        for cid in &gone {
            let Some(r) = self.registry.endpoints.remove(cid) else {
                continue;
            };
            self.detach_endpoint(&r.endpoint, r.ifindex);
            warn!(container = %cid, pod = %format!("{}/{}", r.endpoint.namespace, r.endpoint.name), iface = %r.endpoint.host_ifname, ifindex = r.ifindex, "endpoint's interface is gone; forgetting it");
        }
        if !gone.is_empty() {
            metrics::counter!("septa_endpoints_forgotten_total").increment(gone.len() as u64);
            self.dp.prune_dead_links();
            if let Err(e) = self.registry.save() {
                warn!(error = %e, "saving the endpoint registry");
            }
            if let Err(e) = self.reconcile() {
                error!(error = %e, "reconcile after forgetting endpoints");
            }
        }
        gone.len()
    }

    /// Sweep conntrack: updates for long-lived connections, ends for idle ones (their entries
    /// are deleted). Returns the events to report.
    pub fn sweep(&mut self) -> Vec<dataplane_common::FlowEvent> {
        let Ok(entries) = self.dp.conntrack() else {
            return Vec::new();
        };
        // The kernel stamps entries with CLOCK_MONOTONIC.
        let now = hostnet::clock::monotonic_ns();
        let cfg = crate::flows::sweep::SweepConfig {
            idle: self.cfg.conntrack_idle,
            closed_grace: std::time::Duration::from_secs(10),
        };
        let r = self.sweeper.sweep(&entries, now, &cfg);
        for k in &r.expired {
            if let Err(e) = self.dp.remove_conntrack(k) {
                warn!(error = %e, "removing an idle conntrack entry");
            }
        }
        metrics::gauge!("septa_conntrack_entries").set((entries.len() - r.expired.len()) as f64);
        r.events
    }

    /// On shutdown: leave enforcement in place, or remove everything when configured.
    pub fn shutdown(mut self) {
        if self.cfg.remove_enforcement {
            match self.dp.unpin_all() {
                Ok(()) => info!("enforcement removed: programs detached, pinned state deleted"),
                Err(e) => error!(error = %e, "removing enforcement"),
            }
            if let Err(e) = self.registry.remove_files() {
                error!(error = %e, "removing the endpoint registry");
            }
            if let Err(e) = self.dirs.state.remove(crate::numbering::FILE) {
                error!(error = %e, "removing the identity numbers");
            }
            if let Err(e) = crate::snapshot::Snapshot::remove_files(&self.dirs.state) {
                error!(error = %e, "removing the saved last good manifests");
            }
        } else {
            info!("stopping; enforcement stays in place (pinned maps and links)");
        }
    }
}

/// The `ThreatFeed` and `FqdnPolicy` objects of a load, validated by
/// [`policies::septa::validate`] (the rules `septa lint` applies too); every problem is added
/// to `problems`.
fn septa_objects(
    cluster: &Cluster,
    min_refresh: std::time::Duration,
    problems: &mut policies::Diagnostics,
) -> (
    Vec<crate::feeds::spec::FeedSpec>,
    Vec<crate::dns::spec::FqdnSpec>,
) {
    let mut c = Cluster {
        custom: cluster.custom.clone(),
        ..Default::default()
    };
    policies::septa::validate(&mut c, min_refresh, problems);
    (c.threat_feeds, c.fqdn_policies)
}

/// A request waiting on the main loop, and where its answer goes.
pub type Job = (Request, oneshot::Sender<Response>);

/// Requests queued together on the main loop: more than this wait for the next batch.
const MAX_BATCH: usize = 256;

/// An ADD in the registry, waiting for its batch's compile and then its programs.
struct PendingAdd {
    ep: Endpoint,
    slot: u32,
    /// The container's registration before this ADD, if any.
    previous: Option<Registered>,
}

/// The registry changes of one batch, not yet compiled, and the answers they owe.
#[derive(Default)]
struct Batch {
    adds: Vec<(PendingAdd, oneshot::Sender<Response>)>,
    dels: Vec<oneshot::Sender<Response>>,
    /// A DEL removed a registration.
    removed: bool,
}

impl Batch {
    /// Whether an ADD of this batch is for `container_id`.
    fn has(&self, container_id: &str) -> bool {
        self.adds
            .iter()
            .any(|(p, _)| p.ep.container_id == container_id)
    }
}

/// Recent flow records (bounded) and the live stream, for `septa flows`.
#[derive(Clone)]
struct FlowTap {
    recent: Arc<std::sync::Mutex<std::collections::VecDeque<crate::flows::FlowRecord>>>,
    live: tokio::sync::broadcast::Sender<crate::flows::FlowRecord>,
}

/// Records kept for queries without `follow`.
const RECENT_FLOWS: usize = 10_000;

impl FlowTap {
    fn new() -> Self {
        Self {
            recent: Default::default(),
            live: tokio::sync::broadcast::channel(4096).0,
        }
    }

    fn push(&self, r: &crate::flows::FlowRecord) {
        if let Ok(mut q) = self.recent.lock() {
            if q.len() == RECENT_FLOWS {
                q.pop_front();
            }
            q.push_back(r.clone());
        }
        let _ = self.live.send(r.clone());
    }

    /// Stream matching records to a client: the backlog, then (with `follow`) live ones.
    async fn serve(
        &self,
        w: &mut tokio::net::unix::OwnedWriteHalf,
        filter: api::protocol::FlowFilter,
        last: usize,
        follow: bool,
    ) {
        // Subscribe before reading the backlog, so nothing falls between the two.
        let mut rx = self.live.subscribe();
        let backlog: Vec<crate::flows::FlowRecord> = self
            .recent
            .lock()
            .map(|q| q.iter().filter(|r| filter.matches(r)).cloned().collect())
            .unwrap_or_default();
        let skip = backlog.len().saturating_sub(last);
        for r in backlog.into_iter().skip(skip) {
            if write_json_line(w, &r).await.is_err() {
                return;
            }
        }
        if !follow {
            let _ = w.write_all(b"\n").await;
            return;
        }
        loop {
            match rx.recv().await {
                Ok(r) if filter.matches(&r) => {
                    if write_json_line(w, &r).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    metrics::counter!("septa_flow_query_records_skipped_total").increment(n);
                }
                Err(_) => return,
            }
        }
    }
}

async fn write_json_line<T: serde::Serialize>(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    v: &T,
) -> std::io::Result<()> {
    let mut out = serde_json::to_vec(v).unwrap_or_default();
    out.push(b'\n');
    w.write_all(&out).await
}

/// Connections to the registry socket served at once (flow followers included); more wait in
/// the kernel's backlog.
const MAX_SOCKET_CONNECTIONS: usize = 256;
/// Deadline for a client to send a whole request line, and for an answer to be written.
const SOCKET_IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Accept registry connections on `socket` (mode 0600) and forward requests to the loop. Only
/// root may register endpoints: the peer's credentials are checked on every connection, in case
/// the socket's mode or directory is not what it should be.
async fn serve_socket(listener: UnixListener, tx: mpsc::Sender<Job>, tap: FlowTap) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_SOCKET_CONNECTIONS));
    let mut errors = crate::health::AcceptErrors::new("socket");
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => {
                errors.recovered();
                s
            }
            Err(e) => {
                errors.failed(&e).await;
                continue;
            }
        };
        let tx = tx.clone();
        let tap = tap.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let uid = stream.peer_cred().map(|c| c.uid()).ok();
            let (r, mut w) = stream.into_split();
            if uid != Some(0) {
                warn!(uid = ?uid, "refused a registry connection from a user other than root");
                let mut out = serde_json::to_string(&Response::err(
                    "only root may use the septa agent's socket",
                ))
                .unwrap_or_default();
                out.push('\n');
                let _ = tokio::time::timeout(SOCKET_IO_TIMEOUT, w.write_all(out.as_bytes())).await;
                return;
            }
            let mut lines = BufReader::new(r.take(MAX_LINE as u64 * 16));
            let mut line = String::new();
            loop {
                line.clear();
                match tokio::time::timeout(SOCKET_IO_TIMEOUT, lines.read_line(&mut line)).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
                    Ok(Ok(_)) => {}
                }
                let resp = if line.len() > MAX_LINE {
                    Response::err(format!("request longer than {MAX_LINE} bytes"))
                } else {
                    match serde_json::from_str::<Request>(&line) {
                        Err(e) => Response::err(format!("malformed request: {e}")),
                        Ok(Request::Flows {
                            filter,
                            last,
                            follow,
                        }) => {
                            tap.serve(&mut w, filter, last, follow).await;
                            return;
                        }
                        Ok(req @ Request::Add(_)) => {
                            // An ADD whose client hung up (a CNI plugin past its deadline) is
                            // dropped: the loop does not register a pod nobody waits for.
                            // (Other requests are answered even to a client that only shut
                            // down its sending side.)
                            let gone_already = hung_up_now(&lines);
                            if gone_already {
                                warn!("ADD dropped: its client hung up before it was queued");
                                metrics::counter!("septa_requests_dropped_total", "op" => "add")
                                    .increment(1);
                                return;
                            }
                            let (otx, mut orx) = oneshot::channel();
                            if tx.send((req, otx)).await.is_err() {
                                return;
                            }
                            tokio::select! {
                                r = &mut orx => r.unwrap_or_else(|_| Response::err("agent shutting down")),
                                gone = hung_up(&mut lines) => {
                                    if gone {
                                        return;
                                    }
                                    orx.await.unwrap_or_else(|_| Response::err("agent shutting down"))
                                }
                            }
                        }
                        Ok(req) => {
                            let (otx, orx) = oneshot::channel();
                            if tx.send((req, otx)).await.is_err() {
                                return;
                            }
                            orx.await
                                .unwrap_or_else(|_| Response::err("agent shutting down"))
                        }
                    }
                };
                let mut out = serde_json::to_string(&resp).unwrap_or_default();
                out.push('\n');
                match tokio::time::timeout(SOCKET_IO_TIMEOUT, w.write_all(out.as_bytes())).await {
                    Ok(Ok(())) => {}
                    _ => return,
                }
            }
        });
    }
}

/// Whether the client has hung up already, without waiting: bytes it sent after its request
/// mean it is still there; otherwise the socket is peeked, and end of file means gone. (A
/// poll through tokio would not do: after a short read it waits for a new readiness edge,
/// which an end of file that arrived with the request never gives.)
fn hung_up_now(lines: &BufReader<tokio::io::Take<tokio::net::unix::OwnedReadHalf>>) -> bool {
    use std::os::fd::AsFd;
    if !lines.buffer().is_empty() {
        return false;
    }
    let stream: &tokio::net::UnixStream = lines.get_ref().get_ref().as_ref();
    let mut b = [0u8; 1];
    matches!(
        rustix::net::recv(
            stream.as_fd(),
            &mut b[..],
            rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT
        ),
        Ok((_, 0))
    )
}

/// Whether the client hung up: its side is at end of file (or failed). Data it sent after its
/// request (pipelining) means it is still there; nothing is consumed.
async fn hung_up<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> bool {
    r.fill_buf().await.map_or(true, |b| b.is_empty())
}

/// Run the agent until SIGTERM/SIGINT. `prometheus` renders `/metrics`: installed before
/// [`Agent::start`], so what the start records is there from the first scrape. `out` are the
/// flow exporters, opened before the start too, so a flow log that cannot be written stops
/// the agent before it has written anything.
pub async fn run(
    mut agent: Agent,
    prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
    mut out: crate::flows::Exporters,
) -> Result<(), Error> {
    let sock = agent.cfg.socket.clone();
    let (tx, mut rx) = mpsc::channel::<Job>(64);
    let tap = FlowTap::new();
    let health = tokio::net::TcpListener::bind(agent.cfg.health_addr)
        .await
        .map_err(|e| Error::Interface {
            iface: agent.cfg.health_addr.to_string(),
            reason: format!("health endpoint: {e}"),
        })?;
    tokio::spawn(crate::health::serve(
        health,
        agent.ready.clone(),
        prometheus,
    ));
    let (sweep_tx, mut sweep_rx) = mpsc::unbounded_channel::<Vec<dataplane_common::FlowEvent>>();
    if let Ok(events) = agent.dp.take_events() {
        let enricher = agent.enricher.clone();
        let tap = tap.clone();
        if let Ok(mut en) = enricher.write() {
            en.wall_offset_ns = crate::flows::Enricher::measure_wall_offset();
        }
        let mut aggregator = agent
            .cfg
            .flow_aggregate_window
            .map(|_| crate::flows::aggregate::Aggregator::new(agent.cfg.flow_aggregate_max_groups));
        let mut window = tokio::time::interval(
            agent
                .cfg
                .flow_aggregate_window
                .unwrap_or(std::time::Duration::from_secs(3600)),
        );
        tokio::spawn(async move {
            let Ok(mut r) = events.into_async() else {
                return;
            };
            loop {
                let batch = tokio::select! {
                    b = r.next_batch() => match b {
                        Ok(b) => b,
                        Err(_) => break,
                    },
                    Some(b) = sweep_rx.recv() => b,
                    _ = window.tick() => {
                        if let Some(a) = aggregator.as_mut() {
                            out.emit(&a.flush());
                            metrics::gauge!("septa_flow_aggregate_overflow").set(a.overflow as f64);
                        }
                        continue;
                    }
                };
                let Ok(en) = enricher.read() else { continue };
                let mut records = Vec::with_capacity(batch.len());
                for e in batch {
                    let rec = en.record(&e);
                    metrics::counter!("septa_flows_total", "kind" => rec.kind.clone(), "verdict" => rec.verdict.clone(), "direction" => rec.direction.clone(), "reason" => rec.drop_reason.clone().unwrap_or_default()).increment(1);
                    let rule_name = |id| match &rec.feed {
                        Some(feed) => Some(format!("threat-feed:{feed}")),
                        None => en.rules.get(&id).map(|p| {
                            format!(
                                "{}/{}/{}[{}]",
                                p.namespace, p.name, p.direction, p.rule_index
                            )
                        }),
                    };
                    debug!(target: "septa::flow", "{}", dataplane::events::describe_with(&e, rule_name));
                    // Bounded: one series per compiled rule.
                    if let (Some(p), "new") = (&rec.policy, rec.kind.as_str()) {
                        metrics::counter!("septa_rule_hits_total", "namespace" => p.namespace.clone(), "policy" => p.name.clone(), "direction" => p.direction.clone(), "rule" => p.rule_index.to_string()).increment(1);
                    }
                    tap.push(&rec);
                    match aggregator.as_mut() {
                        Some(a) => records.extend(a.offer(rec)),
                        None => records.push(rec),
                    }
                }
                drop(en);
                out.emit(&records);
            }
        });
    }
    let (feed_tx, mut feed_rx) = mpsc::unbounded_channel();
    // Without good manifests no feed is known: the pinned blocklist stays as it is.
    if agent.manifests.is_some() {
        agent.sync_feeds(&feed_tx);
    }
    let injector = crate::dns::inject::Injector::new()?;
    let (names_tx, names_rx) = tokio::sync::watch::channel(agent.dns.exact_names());
    let (resolved_tx, mut resolved_rx) = mpsc::unbounded_channel();
    let interval = agent.cfg.dns_preresolve_interval;
    if !interval.is_zero() {
        match crate::fqdn::resolver(agent.cfg.dns_server) {
            Ok(r) => {
                tokio::spawn(crate::fqdn::preresolve(r, names_rx, interval, resolved_tx));
            }
            Err(e) => warn!(error = %e, "no resolver: exact FQDN names are not pre-resolved"),
        }
    }
    // SAFETY: the ring buffer's fd is owned by the reader, which the AsyncFd owns, so it
    // stays open exactly as long as it is registered.
    let mut answers = unsafe { tokio::io::unix::AsyncFd::register(agent.dp.take_dns_answers()?) }
        .map_err(std::io::Error::from)?;
    let mut scrape = tokio::time::interval(std::time::Duration::from_secs(1));
    // Written by this loop, the one that handles answers: a stuck loop is an absent agent.
    let mut heartbeat = tokio::time::interval(std::time::Duration::from_nanos(
        dataplane_common::agent::HEARTBEAT_INTERVAL_NS,
    ));
    let mut sweep_tick = tokio::time::interval(agent.cfg.flow_update_interval);
    let (mut loads, load_started) = spawn_loader(agent.source.take(), agent.cfg.poll_interval);
    let mut stalled = false;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Last: nothing below can fail, so an agent that cannot start never replaces the socket.
    let (listener, bound) = bind_socket(&agent.dirs.socket, &agent.dirs.socket_name)?;
    tokio::spawn(serve_socket(listener, tx, tap.clone()));
    info!(socket = %sock.display(), health = %agent.cfg.health_addr, "septa-agent running");
    loop {
        tokio::select! {
            Some(job) = rx.recv() => {
                // Everything queued meanwhile goes in the same batch: one compile for all.
                let mut jobs = vec![job];
                while jobs.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(j) => jobs.push(j),
                        Err(_) => break,
                    }
                }
                agent.handle_batch(jobs);
            }
            Some(load) = loads.recv() => {
                if agent.apply_load(load) {
                    if let Err(e) = agent.reconcile() {
                        error!(error = %e, kind = e.metric_label(), "reconcile failed; will retry on the next change");
                    }
                    agent.sync_feeds(&feed_tx);
                }
            }
            Some(r) = resolved_rx.recv() => {
                if crate::fqdn::handle_resolved(&mut agent.dns, &mut agent.dp, interval, r) {
                    agent.refresh_dns_names();
                }
            }
            Some(update) = feed_rx.recv() => {
                let name = update.name.clone();
                if let Err(e) = agent.feeds.on_update(&mut agent.dp, update) {
                    error!(feed = %name, error = %e, kind = e.metric_label(), "blocklist update failed; will retry on the next refresh");
                }
                agent.refresh_feed_names();
            }
            r = answers.readable_mut() => {
                if let Ok(mut guard) = r {
                    let batch = guard.get_inner_mut().drain();
                    guard.clear_ready();
                    if crate::fqdn::handle_answers(&mut agent.dns, &mut agent.dp, &injector, batch) {
                        agent.refresh_dns_names();
                    }
                }
            }
            _ = scrape.tick() => {
                stalled = check_load_deadline(&load_started, stalled);
                agent.forget_gone();
                crate::metrics::scrape(&agent.dp);
                agent.feeds.scrape(&agent.dp);
                // The enricher's copy of the names follows only real changes.
                crate::fqdn::release_stalled(&mut agent.dns, &injector);
                if crate::fqdn::gc(&mut agent.dns, &mut agent.dp) > 0 {
                    agent.refresh_dns_names();
                }
                // Rules change with manifests and with endpoints; names to pre-resolve follow.
                names_tx.send_if_modified(|n| {
                    let now = agent.dns.exact_names();
                    let changed = *n != now;
                    *n = now;
                    changed
                });
            }
            _ = heartbeat.tick() => crate::fqdn::heartbeat(&mut agent.dp, true),
            _ = sweep_tick.tick() => {
                let events = agent.sweep();
                if !events.is_empty() {
                    let _ = sweep_tx.send(events);
                }
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    // Answers pass unheld from now on, rather than wait in the ring for a stopped agent; the
    // ones already held are delivered on the way out.
    crate::fqdn::heartbeat(&mut agent.dp, false);
    let held = answers.get_mut().drain();
    crate::fqdn::handle_answers(&mut agent.dns, &mut agent.dp, &injector, held);
    // Only the socket this agent bound: a replacement belongs to someone else.
    if agent.dirs.socket.identity(&agent.dirs.socket_name) == bound {
        let _ = agent.dirs.socket.remove(&agent.dirs.socket_name);
    }
    agent.shutdown();
    Ok(())
}

/// How long one read of the manifests directory may take before the agent says it is stuck.
const LOAD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Read the manifests directory on a thread of its own, every `interval`, and send each load
/// that changed something. A read that hangs (a stuck network mount, a file that never ends)
/// then stalls only this thread: the main loop keeps serving pods and DNS with the last good
/// state, and says the load is late (see [`check_load_deadline`]). The second value is when
/// the load in progress started (ns since the Unix epoch; 0 when none is).
fn spawn_loader(
    source: Option<Source>,
    interval: std::time::Duration,
) -> (
    mpsc::Receiver<crate::source::Load>,
    Arc<std::sync::atomic::AtomicU64>,
) {
    let (tx, rx) = mpsc::channel(1);
    let started = Arc::new(std::sync::atomic::AtomicU64::new(0));
    if let Some(mut src) = source {
        let started = started.clone();
        let spawned = std::thread::Builder::new()
            .name("septa-manifests".into())
            .spawn(move || loop {
                started.store(unix_ns(), std::sync::atomic::Ordering::Relaxed);
                let load = src.poll();
                started.store(0, std::sync::atomic::Ordering::Relaxed);
                if let Some(l) = load {
                    if tx.blocking_send(l).is_err() {
                        return;
                    }
                }
                std::thread::sleep(interval);
            });
        if let Err(e) = spawned {
            error!(error = %e, "cannot start the manifest reader; manifests are not re-read");
        }
    }
    (rx, started)
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Report a manifest read past [`LOAD_DEADLINE`] (once, until it ends): logged, and the
/// `septa_manifest_load_stalled` gauge is 1 meanwhile. Returns whether it is stalled now.
fn check_load_deadline(started: &std::sync::atomic::AtomicU64, was: bool) -> bool {
    let at = started.load(std::sync::atomic::Ordering::Relaxed);
    let late = at != 0 && unix_ns().saturating_sub(at) > LOAD_DEADLINE.as_nanos() as u64;
    if late && !was {
        error!(deadline = ?LOAD_DEADLINE, "reading the manifests directory is taking too long (a hung file system?); the last good state stays enforced");
    }
    metrics::gauge!("septa_manifest_load_stalled").set(if late { 1.0 } else { 0.0 });
    late
}

/// Bind the registry socket: under a temporary name, made mode 0600, then renamed over `name`,
/// so the socket path never exists with looser permissions and a stale socket is replaced
/// atomically. Returns the listener and the socket file's identity (device, inode).
fn bind_socket(dir: &Dir, name: &str) -> Result<(UnixListener, Option<(u64, u64)>), Error> {
    let tmp = format!(".{name}.new");
    let named = |e: std::io::Error| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("socket {}: {e}", dir.join(name).display()),
        ))
    };
    dir.remove(&tmp).map_err(named)?;
    let listener = std::os::unix::net::UnixListener::bind(dir.join(&tmp)).map_err(named)?;
    std::fs::set_permissions(dir.join(&tmp), std::fs::Permissions::from_mode(0o600))
        .and_then(|_| dir.rename(&tmp, name))
        .and_then(|_| listener.set_nonblocking(true))
        .map_err(named)?;
    let bound = dir.identity(name);
    Ok((UnixListener::from_std(listener).map_err(named)?, bound))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threat_feed_manifests_are_validated_with_their_location() {
        let yaml = "apiVersion: septa.dev/v1alpha1\nkind: ThreatFeed\nmetadata: {name: ok}\nspec: {url: 'https://example.org/drop.txt'}\n---\n\
apiVersion: septa.dev/v1alpha1\nkind: ThreatFeed\nmetadata: {name: ok}\nspec: {file: /etc/x}\n---\n\
apiVersion: septa.dev/v1alpha1\nkind: ThreatFeed\nmetadata: {name: fast}\nspec: {url: 'http://x/', refresh: 1s}\n---\n\
apiVersion: septa.dev/v1alpha1\nkind: ThreatFeed\nmetadata: {name: hooks}\nspec: {url: 'http://x/', appliesTo: [hostEgress]}\n---\n\
apiVersion: septa.dev/v1alpha1\nkind: ThreatFeeds\nmetadata: {name: typo}\nspec: {}\n";
        let (cluster, mut problems) = policies::load::load_str("feeds.yaml", yaml);
        assert!(problems.is_empty(), "{problems:?}");
        let (feeds, _) = septa_objects(&cluster, std::time::Duration::from_secs(60), &mut problems);
        assert_eq!(
            feeds.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
            ["ok"]
        );
        let got: Vec<(String, String, String)> = problems
            .0
            .iter()
            .map(|d| (d.file.clone(), d.object.clone(), d.field.clone()))
            .collect();
        let want = [
            ("feeds.yaml#2", "ThreatFeed ok", "metadata.name"),
            ("feeds.yaml#3", "ThreatFeed fast", "spec.refresh"),
            ("feeds.yaml#4", "ThreatFeed hooks", "spec.appliesTo[0]"),
            ("feeds.yaml#5", "ThreatFeeds default/typo", "kind"),
        ]
        .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()));
        assert_eq!(got, want);
    }
}
