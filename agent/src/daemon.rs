//! The agent: the data path, its inputs and the map state it last wrote; registrations,
//! loads, reconciles and shutdown. The desired state itself is [`crate::state`], the loop that
//! drives the agent [`crate::run`], its socket [`crate::server`].
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

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use dataplane_common::Config as DpConfig;
use policies::{compile::Compiler, Cluster};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::server::Job;
use crate::{
    config::Config,
    dirs::AgentDirs,
    registry::{Registered, Registry},
    source::Source,
};
use api::protocol::{Endpoint, Request, Response};
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
    pub(crate) manifests: Option<Cluster>,
    /// Where [`Agent::manifests`] came from, for messages ("the manifests directory", or the
    /// saved copy's file and when it was saved).
    good_from: String,
    /// Why the saved last good manifests could not be started from, if they could not.
    saved_unusable: Option<String>,
    /// The errors of the last load of the manifests directory (None: it had none).
    dir_errors: Option<policies::Diagnostics>,
    pub(crate) source: Option<Box<dyn Source>>,
    pub registry: Registry,
    /// The state, pin and socket directories, checked and locked for this agent's lifetime.
    pub(crate) dirs: AgentDirs,
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
    /// Kubernetes mode: the source's index, for ADDs that wait for their pod.
    pub kube: Option<crate::source::kube::KubeHandle>,
    /// The applied manifests are the API server's (every pod with addresses is a peer).
    from_api: bool,
    /// ADDs waiting for their pod to appear in the API, with their deadlines.
    parked: Vec<(Endpoint, oneshot::Sender<Response>, std::time::Instant)>,
    /// Kubernetes mode: whether the pods running before the agent were adopted yet.
    adopted: bool,
    /// Pods of this node that run unenforced, and why they could not be adopted.
    pub unadopted: Vec<(String, String)>,
    /// Pods of this node that started after the agent without registering (`namespace/name`).
    unregistered: Vec<String>,
    /// septa's entry in the node's CNI configuration.
    pub cni: crate::cniconf::CniConf,
    /// The kernel's policy revision after the last reconcile.
    revision: u32,
}

/// Why a pod found running without a registration is not enforced.
const UNREGISTERED: &str = "running without septa: its CNI ADD did not run septa-cni (the CNI entry was not in place when it started); restart the pod to enforce its policy";

/// The container id of a registration the agent made for a pod it adopted.
const ADOPTED_PREFIX: &str = "adopted:";

impl Agent {
    /// Load (or re-open) the data path, adopt registered endpoints, read the manifests.
    pub fn start(cfg: Config) -> Result<Self, Error> {
        // Everything that can refuse the start comes before the first write to pinned state.
        let cni = crate::cniconf::CniConf::new(&cfg).map_err(|reason| Error::Interface {
            iface: "cni".into(),
            reason,
        })?;
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
                    dp.attach_cgroup(std::path::Path::new(cg), r.slot)?;
                    info!(container = %cid, cgroup = %cg, "cgroup workload adopted");
                } else {
                    gone.push(cid.clone());
                }
                continue;
            }
            // The registered index, under the registered name: a name alone may have been
            // reused by another pod's veth since.
            match hostnet::link::link(r.slot) {
                Ok(l) if l.name == r.endpoint.host_ifname => {
                    dp.attach_ifindex(r.slot, &r.endpoint.host_ifname)?;
                    info!(container = %cid, pod = %format!("{}/{}", r.endpoint.namespace, r.endpoint.name), iface = %r.endpoint.host_ifname, ifindex = r.slot, "endpoint adopted");
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
        let kubernetes = cfg.source == Some(crate::config::SourceKind::Kubernetes);
        // The Kubernetes source needs the runtime: `run` starts it.
        let source = cfg
            .manifests
            .clone()
            .filter(|_| !kubernetes)
            .map(|d| Box::new(crate::source::DirSource::new(d)) as Box<dyn Source>);
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
            kube: None,
            from_api: false,
            parked: Vec::new(),
            adopted: false,
            unadopted: Vec::new(),
            unregistered: Vec::new(),
            cni,
            revision: 0,
        };
        if kubernetes {
            // Until the first lists are in, the maps keep what they hold (the last good
            // state of a previous run, if any) and pods wait.
            agent.ready.set_problem(Some(
                "waiting for the first lists from the Kubernetes API server".into(),
            ));
            return Ok(agent);
        }
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
    /// their own, see [`crate::run::spawn_loader`].)
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
            from_api,
        } = load;
        let dir = match from_api {
            true => std::path::PathBuf::from("the Kubernetes API server"),
            false => self.cfg.manifests.clone().unwrap_or_default(),
        };
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
        self.from_api = from_api;
        if from_api {
            self.refresh_registered_labels();
        }
        self.good_from = match from_api {
            true => "the Kubernetes API server".into(),
            false => format!("the manifests in {}", dir.display()),
        };
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

    /// The desired map state (see [`crate::state`]), with the agent's identity numbers; the
    /// flow enricher gets the rules and endpoints it names, and the FQDN slot rules wait until
    /// the maps match.
    pub fn desired(&mut self) -> Option<MapState> {
        let m = self.manifests.as_ref()?;
        let inputs = crate::state::Inputs {
            manifests: m,
            fqdn_specs: &self.fqdn_specs,
            dns_resolvers: &self.cfg.dns_resolvers,
            registry: &self.registry,
            host_addresses: &hostnet::addrs::host_addresses(),
            api_pods: self.from_api,
        };
        let (numbers, state_dir) = (&mut self.numbers, &self.dirs.state);
        let d = crate::state::desired(&inputs, &mut self.compiler, |st| {
            // Saved before the maps are written: numbers in the maps are always in the file.
            if numbers.apply(st) {
                if let Err(e) = numbers.save(state_dir) {
                    warn!(error = %e, "saving identity numbers; a restart would renumber");
                }
            }
        });
        if let Ok(mut en) = self.enricher.write() {
            en.rules = d.rules;
            en.endpoints = d.endpoints;
            en.services = d.services;
            en.node = self.cfg.node().to_owned();
        }
        self.next_fqdn_rules = Some(d.fqdn_rules);
        Some(d.maps)
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
        self.revision = stats.revision;
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
    pub(crate) fn sync_feeds(
        &mut self,
        tx: &mpsc::UnboundedSender<crate::feeds::manager::FeedUpdate>,
    ) {
        if let Err(e) = self.feeds.sync(&mut self.dp, tx) {
            error!(error = %e, kind = e.metric_label(), "threat feeds: blocklist update failed");
        }
        self.refresh_feed_names();
    }

    pub(crate) fn refresh_dns_names(&mut self) {
        if let Ok(mut en) = self.enricher.write() {
            en.dns_names = self
                .dns
                .names_of_addr
                .iter()
                .map(|(ip, n)| (*ip, n.iter().cloned().collect()))
                .collect();
        }
    }

    pub(crate) fn refresh_feed_names(&mut self) {
        if let Ok(mut en) = self.enricher.write() {
            en.feeds = self.feeds.names();
        }
    }

    /// Once a good state is enforced, put septa's entry into the CNI configuration (and keep
    /// it there: later calls only check it).
    pub fn arm_cni(&mut self) {
        if self.cni.enabled() && self.ready.reconciled() {
            self.cni.arm();
            self.reconcile_cni();
        }
    }

    /// Check septa's CNI entry (writing it when needed) and say in `/readyz` whether it is
    /// in place.
    pub fn reconcile_cni(&mut self) {
        self.cni.reconcile();
        if self.cni.armed() {
            let st = self.cni.status();
            self.ready.set_cni_problem(
                (!st.present).then(|| st.error.unwrap_or_else(|| "not written".into())),
            );
        }
    }

    /// What `septa status` shows of this node.
    pub fn node_status(&self) -> api::protocol::NodeStatus {
        let source = match self.cfg.source {
            Some(crate::config::SourceKind::Kubernetes) => "kubernetes",
            _ => "dir",
        };
        api::protocol::NodeStatus {
            node: self.cfg.node().to_owned(),
            source: source.into(),
            ready: self.ready.reconciled(),
            problem: self.ready.problem(),
            revision: u64::from(self.revision),
            enforced: self.registry.endpoints.len(),
            adopted: self
                .registry
                .endpoints
                .keys()
                .filter(|cid| cid.starts_with(ADOPTED_PREFIX))
                .count(),
            cni: self.cni.status(),
            feeds: self.feeds.status(),
            dns: api::protocol::DnsStatus {
                names: self.dns.pattern_count(),
                addresses: self.dns.len(),
            },
        }
    }

    /// Serve one registry request.
    pub fn handle(&mut self, req: Request) -> Response {
        match req {
            Request::Status => {
                let resp =
                    match (self.ready.reconciled(), self.ready.problem()) {
                        (true, warning) => Response {
                            warning: warning.unwrap_or_default(),
                            unadopted: self
                                .unadopted
                                .iter()
                                .map(|(pod, reason)| api::protocol::Unadopted {
                                    pod: pod.clone(),
                                    reason: reason.clone(),
                                })
                                .chain(self.unregistered.iter().map(|pod| {
                                    api::protocol::Unadopted {
                                        pod: pod.clone(),
                                        reason: UNREGISTERED.into(),
                                    }
                                }))
                                .collect(),
                            ..Response::ok()
                        },
                        (false, Some(why)) => Response::err(format!("agent not ready: {why}")),
                        (false, None) => {
                            Response::err("agent not ready: no valid manifests applied yet")
                        }
                    };
                Response {
                    node: Some(Box::new(self.node_status())),
                    ..resp
                }
            }
            Request::Check { container_id } => {
                self.forget_if_gone(&container_id);
                match self.registry.endpoints.get(&container_id) {
                    None => Response::err(format!("container {container_id} is not registered")),
                    Some(r) => match self.verify(r) {
                        Err(e) => Response::err(format!("container {container_id}: {e}")),
                        Ok(()) => Response {
                            identity: self.actual.endpoints.get(&r.slot).map(|e| e.identity),
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
                    if self.waits_for_pod(&ep) {
                        let deadline = std::time::Instant::now() + self.cfg.pod_wait;
                        info!(container = %ep.container_id, pod = %format!("{}/{}", ep.namespace, ep.name), wait = ?self.cfg.pod_wait, "ADD waits for its pod to appear in the API");
                        self.parked.push((ep, reply, deadline));
                        continue;
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
                    // An ADD still waiting for its pod is over: the runtime gave the sandbox up.
                    for (ep, reply, _) in self
                        .parked
                        .extract_if(.., |(ep, _, _)| ep.container_id == container_id)
                    {
                        info!(container = %ep.container_id, "a waiting ADD ends with its DEL");
                        let _ = reply.send(Response::err(
                            "the container was deleted while its ADD waited for its pod",
                        ));
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

    /// The labels of a pod in the applied API objects.
    fn api_labels(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, String>> {
        self.manifests
            .as_ref()?
            .pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
            .map(|p| p.labels.clone())
    }

    /// Kubernetes mode: keep each registration's labels those of its Pod object, saved with
    /// the registry, so a pod whose object disappears while it runs keeps its last labels
    /// (also across a restart) rather than none.
    fn refresh_registered_labels(&mut self) {
        let mut changed = false;
        let updates: Vec<(String, BTreeMap<String, String>)> = self
            .registry
            .endpoints
            .iter()
            .filter_map(|(cid, r)| {
                let now = self.api_labels(&r.endpoint.namespace, &r.endpoint.name)?;
                (r.endpoint.labels.as_ref() != Some(&now)).then(|| (cid.clone(), now))
            })
            .collect();
        for (cid, labels) in updates {
            if let Some(r) = self.registry.endpoints.get_mut(&cid) {
                r.endpoint.labels = Some(labels);
                changed = true;
            }
        }
        if changed {
            if let Err(e) = self.registry.save() {
                warn!(error = %e, "saving the registry with the pods' current labels");
            }
        }
    }

    /// Kubernetes mode: whether an ADD must wait, its pod not being in the applied objects yet,
    /// or nothing listed yet (its labels and owner come from the API, never from the request).
    fn waits_for_pod(&self, ep: &Endpoint) -> bool {
        self.kube.is_some()
            && self.manifests.as_ref().is_none_or(|m| {
                !m.pods
                    .iter()
                    .any(|p| p.namespace == ep.namespace && p.name == ep.name)
            })
    }

    /// Serve the parked ADDs whose pods have appeared; fail those past their deadline (the
    /// runtime retries a failed ADD, so the pod starts once the API has it, never without its
    /// policy).
    pub fn retry_parked(&mut self) {
        if self.parked.is_empty() {
            return;
        }
        let now = std::time::Instant::now();
        let mut ready = Vec::new();
        for (ep, reply, deadline) in std::mem::take(&mut self.parked) {
            if reply.is_closed() {
                continue;
            }
            if !self.waits_for_pod(&ep) {
                ready.push((Request::Add(ep), reply));
            } else if now >= deadline {
                metrics::counter!("septa_cni_pod_wait_timeouts_total").increment(1);
                let known = self
                    .kube
                    .as_ref()
                    .is_some_and(|k| k.has_pod(&ep.namespace, &ep.name));
                let why = if self.manifests.is_none() {
                    "waits for the agent's first lists of the Kubernetes API"
                } else if known {
                    "is in the API but not applied yet"
                } else {
                    "is not in the Kubernetes API"
                };
                warn!(container = %ep.container_id, pod = %format!("{}/{}", ep.namespace, ep.name), "ADD failed: the pod {why} after {:?}", self.cfg.pod_wait);
                let _ = reply.send(Response::err(format!(
                    "pod {}/{} {why} (waited {:?}); its labels decide its policy, so it is not started without them: retry",
                    ep.namespace, ep.name, self.cfg.pod_wait
                )));
            } else {
                self.parked.push((ep, reply, deadline));
            }
        }
        if !ready.is_empty() {
            self.handle_batch(ready);
        }
    }

    /// Kubernetes mode, once the first lists are applied: enforce the pods of this node that
    /// were running before the agent (installed into a live cluster, or started without its
    /// registry). Each pod's host veth is found from its address (see [`hostnet::adopt`]) and
    /// registered as a CNI ADD would; a pod that cannot be found is reported (log, the
    /// `septa_pods_unadopted` gauge, the agent's status) with the reason.
    pub fn adopt_running(&mut self) {
        let Some(kube) = self.kube.clone() else {
            return;
        };
        if self.adopted || self.manifests.is_none() {
            return;
        }
        self.adopted = true;
        let mut unadopted = Vec::new();
        let mut jobs = Vec::new();
        let holders = hostnet::adopt::scan(&self.cfg.netns_dirs);
        for (namespace, name, ips) in kube.pods_on(self.cfg.node()) {
            let pod = format!("{namespace}/{name}");
            let registered = self
                .registry
                .endpoints
                .values()
                .any(|r| r.endpoint.namespace == namespace && r.endpoint.name == name);
            if registered {
                continue;
            }
            let Some(ip) = ips.first().copied() else {
                // Not started yet: its CNI ADD is still to come, and registers it.
                continue;
            };
            match holders.find(ip) {
                Ok(found) => {
                    let ep = Endpoint {
                        container_id: format!("{ADOPTED_PREFIX}{pod}"),
                        netns: found.netns.display().to_string(),
                        ifname: found.ifname,
                        host_ifname: found.host_ifname,
                        cgroup: None,
                        namespace,
                        name,
                        labels: None,
                        ips,
                    };
                    let (tx, rx) = oneshot::channel();
                    jobs.push((Request::Add(ep), tx));
                    unadopted.push((pod, rx));
                }
                Err(why) => {
                    warn!(pod = %pod, ip = %ip, reason = %why, "running pod not adopted: until it restarts, septa does not enforce its policy (its traffic is dropped if programs of an earlier run are still attached to its interface)");
                    self.unadopted.push((pod, why));
                }
            }
        }
        if !jobs.is_empty() {
            self.handle_batch(jobs);
        }
        for (pod, mut rx) in unadopted {
            match rx.try_recv() {
                Ok(r) if r.ok => info!(pod = %pod, identity = r.identity, "running pod adopted"),
                Ok(r) => {
                    warn!(pod = %pod, reason = %r.error, "running pod not adopted: until it restarts, septa does not enforce its policy (its traffic is dropped if programs of an earlier run are still attached to its interface)");
                    self.unadopted.push((pod, r.error));
                }
                Err(_) => self.unadopted.push((pod, "no answer".into())),
            }
        }
        metrics::gauge!("septa_pods_unadopted").set(self.unadopted.len() as f64);
    }

    /// Kubernetes mode, after the adoption at start: find the pods of this node that run with
    /// an address but no registration. The kubelet learns a pod's address from the CNI
    /// `ADD`, which septa-cni answers only once registered: such a pod's `ADD` did not run
    /// septa-cni (the CNI entry was not in place when it started). Reported (log, status,
    /// `septa_pods_unadopted`), not adopted: it is enforced once it restarts.
    pub fn find_unregistered(&mut self) {
        let Some(kube) = &self.kube else { return };
        if !self.adopted {
            return;
        }
        let known: BTreeSet<String> = self
            .registry
            .endpoints
            .values()
            .map(|r| &r.endpoint)
            .chain(self.parked.iter().map(|(ep, _, _)| ep))
            .map(|ep| format!("{}/{}", ep.namespace, ep.name))
            .chain(self.unadopted.iter().map(|(pod, _)| pod.clone()))
            .collect();
        let now: Vec<String> = kube
            .pods_on(self.cfg.node())
            .into_iter()
            .filter(|(_, _, ips)| !ips.is_empty())
            .map(|(ns, name, _)| format!("{ns}/{name}"))
            .filter(|pod| !known.contains(pod))
            .collect();
        for pod in now.iter().filter(|p| !self.unregistered.contains(p)) {
            warn!(pod = %pod, "{UNREGISTERED}");
        }
        self.unregistered = now;
        metrics::gauge!("septa_pods_unadopted")
            .set((self.unadopted.len() + self.unregistered.len()) as f64);
    }

    /// Kubernetes mode, before the first load: say which kinds are not listed yet (a missing
    /// CRD or RBAC rule keeps one from ever listing; the watch errors in the log say why).
    pub fn report_listing(&self) {
        let (Some(kube), None) = (&self.kube, &self.manifests) else {
            return;
        };
        let missing = kube.unsynced();
        if !missing.is_empty() {
            self.ready.set_problem(Some(format!(
                "waiting for the first lists from the Kubernetes API server: {} not listed yet",
                missing.join(", ")
            )));
        }
    }

    /// Whether ADDs are waiting for their pods.
    pub fn has_parked(&self) -> bool {
        !self.parked.is_empty()
    }

    /// Validate an ADD and put it in the registry; its map entries and programs follow in
    /// [`Agent::finish_batch`].
    fn prepare_add(&mut self, mut ep: Endpoint) -> Result<PendingAdd, Response> {
        if self.from_api {
            // The API's labels, kept with the registration: what the pod is judged by should
            // its object vanish (a forced deletion) while it still runs.
            ep.labels = self.api_labels(&ep.namespace, &ep.name);
        }
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
                            (None, None) => Some(r.slot) == slot,
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
                slot,
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
                self.detach_endpoint(&r.endpoint, r.slot);
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
            if let Some(old) = p.previous.filter(|o| o.slot != p.slot) {
                self.detach_endpoint(&old.endpoint, old.slot);
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
            o.slot == p.slot
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
        if self.registry.endpoints.values().any(|r| r.slot == slot) {
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
                    .join(format!("{}_egress", r.slot));
                if pin.exists() {
                    Ok(())
                } else {
                    Err("programs are not attached to its cgroup".into())
                }
            }
            None => {
                hostnet::link::verify_veth_peer(
                    r.slot,
                    std::path::Path::new(&r.endpoint.netns),
                    &r.endpoint.ifname,
                )?;
                self.dp.tcx_verify(r.slot)
            }
        }
    }

    /// Forget the veth endpoint of `container_id` if its host interface is gone.
    fn forget_if_gone(&mut self, container_id: &str) {
        let gone = self.registry.endpoints.get(container_id).is_some_and(|r| {
            r.endpoint.cgroup.is_none()
                && hostnet::link::link(r.slot).map_or(true, |l| l.name != r.endpoint.host_ifname)
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
                        .get(&r.slot)
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
            self.detach_endpoint(&r.endpoint, r.slot);
            warn!(container = %cid, pod = %format!("{}/{}", r.endpoint.namespace, r.endpoint.name), iface = %r.endpoint.host_ifname, ifindex = r.slot, "endpoint's interface is gone; forgetting it");
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

/// Requests queued together on the main loop: more than this wait for the next batch.
pub(crate) const MAX_BATCH: usize = 256;

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
