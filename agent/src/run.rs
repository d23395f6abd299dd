//! The run loop: registry requests, manifest loads, DNS frames, flow events, feed updates and
//! shutdown, each handled on the main task in turn, followed by a compile and a reconcile of
//! the maps when it changed something.

use std::sync::Arc;

use dataplane::Error;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::{
    daemon::{Agent, MAX_BATCH},
    flows::tap::FlowTap,
    server::{bind_socket, serve_socket, Job},
    source::Source,
};

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
                    metrics::counter!("septa_flows_total", "kind" => rec.kind.as_str(), "verdict" => rec.verdict.as_str(), "direction" => rec.direction.as_str(), "reason" => rec.drop_reason.map_or("", |r| r.as_str())).increment(1);
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
    let mut kube_client = None;
    let mut owner: Option<crate::source::kube::OwnerWatch> = None;
    if agent.cfg.source == Some(crate::config::SourceKind::Kubernetes) {
        let client = crate::source::kube::client(agent.cfg.kubeconfig.as_deref())
            .await
            .map_err(|reason| Error::Interface {
                iface: "kubernetes".into(),
                reason,
            })?;
        let (src, handle) = crate::source::kube::KubeSource::start(
            client.clone(),
            agent.cfg.node(),
            agent.cfg.feed_min_refresh,
        );
        info!(node = %agent.cfg.node(), kubeconfig = ?agent.cfg.kubeconfig, "watching the Kubernetes API server");
        agent.source = Some(Box::new(src));
        agent.kube = Some(handle);
        if let (true, Some((ns, name))) = (agent.cni.enabled(), &agent.cfg.daemonset) {
            owner = Some(crate::source::kube::OwnerWatch::start(
                client.clone(),
                ns,
                name,
            ));
        }
        kube_client = Some(client);
    }
    let (mut loads, load_started) = spawn_loader(agent.source.take(), agent.cfg.poll_interval);
    let mut parked_tick = tokio::time::interval(std::time::Duration::from_millis(100));
    let mut stalled = false;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Last: nothing below can fail, so an agent that cannot start never replaces the socket.
    let (listener, bound) = bind_socket(&agent.dirs.socket, &agent.dirs.socket_name)?;
    tokio::spawn(serve_socket(listener, tx, tap.clone()));
    info!(socket = %sock.display(), health = %agent.cfg.health_addr, "septa-agent running");
    // The CNI entry follows the socket: a runtime that runs septa-cni finds an agent.
    let (cni_tx, mut cni_rx) = mpsc::unbounded_channel::<()>();
    // A safety net under the directory watch (which may fail, or miss a replaced mount).
    let mut cni_tick = tokio::time::interval(std::time::Duration::from_secs(10));
    if agent.cni.enabled() {
        crate::cniconf::watch(agent.cni.dir().to_owned(), cni_tx);
        agent.arm_cni();
    }
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
                    // Before the first compile of the API's objects: pods running without a
                    // registration would otherwise lose their endpoint entries for a moment.
                    agent.adopt_running();
                    if let Err(e) = agent.reconcile() {
                        error!(error = %e, kind = e.metric_label(), "reconcile failed; will retry on the next change");
                    }
                    agent.sync_feeds(&feed_tx);
                    agent.retry_parked();
                    agent.arm_cni();
                }
            }
            _ = cni_tick.tick(), if agent.cni.enabled() => agent.arm_cni(),
            Some(()) = cni_rx.recv() => {
                // One look at the directory for every change queued meanwhile.
                while cni_rx.try_recv().is_ok() {}
                agent.reconcile_cni();
            }
            _ = parked_tick.tick(), if agent.has_parked() => agent.retry_parked(),
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
                agent.report_listing();
                agent.find_unregistered();
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
    if agent.cni.enabled() {
        if let (Some(client), Some((ns, name))) = (kube_client, agent.cfg.daemonset.clone()) {
            let deleted = match owner.as_ref().and_then(|o| o.deleted()) {
                Some(d) => d,
                None => crate::source::kube::daemonset_deleted(client, &ns, &name).await,
            };
            if deleted {
                match agent.cni.uninstall() {
                    Ok(files) => {
                        info!(files = ?files, daemonset = %format!("{ns}/{name}"), "DaemonSet deleted: septa's CNI entry removed")
                    }
                    Err(e) => {
                        error!(error = %e, "DaemonSet deleted, but septa's CNI entry could not be removed")
                    }
                }
            }
        }
    }
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
pub(crate) fn spawn_loader(
    source: Option<Box<dyn Source>>,
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
                if !src.waits() {
                    std::thread::sleep(interval);
                }
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
