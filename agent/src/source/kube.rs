//! The Kubernetes source: watches of the API server, kept in the compact [`Index`] and handed
//! to the agent as whole loads, like the manifests directory's.
//!
//! # Phases
//! 1. **Connect**: a client from `--kubeconfig`, else the in-cluster service account.
//! 2. **Watch**: one kube-runtime watcher per kind (Namespaces, Pods, NetworkPolicies,
//!    Services, EndpointSlices, FqdnPolicies, ThreatFeeds), with a backoff (see [`Retry`]), so a
//!    disconnect, a slow API server or a `410 Gone` is retried and relisted by the watcher.
//!    Objects are pruned as they arrive (managed fields, annotations, the status and spec
//!    fields policy does not read), and a relist replaces its kind in the index at once.
//! 3. **Load**: [`KubeSource::poll`] waits until every kind is listed once, then hands the
//!    index's [`Cluster`](policies::Cluster) to the agent after every change.
//!
//! Fail mode: the source only ever adds information. While the API server is unreachable the
//! watchers retry and the agent enforces the last state it applied; nothing is removed because
//! a connection failed. An object that does not validate keeps its last good version (see
//! [`super::index`]) and is reported: logged, counted in `septa_kubernetes_object_errors`, and
//! for septa's own kinds a Kubernetes Event on the object.

use std::{
    fmt::Debug,
    path::Path,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};
use kube::{
    api::{Api, ApiResource, DynamicObject, GroupVersionKind},
    runtime::{
        events::{Event as KEvent, EventType, Recorder, Reporter},
        watcher::{self, Event},
        WatchStreamExt,
    },
    Client, Resource,
};
use policies::{Diagnostic, Diagnostics};
use serde::de::DeserializeOwned;
use tracing::{error, info, warn};

use super::{
    index::{Index, Kind},
    Load, Source,
};

/// The index and the signal that it changed, shared by the watch tasks, the source's thread
/// and the agent.
pub struct Shared {
    index: Mutex<Index>,
    changed: Condvar,
}

impl Shared {
    /// The index (a poisoned lock is taken as is: the index is consistent after every call).
    pub fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self) {
        self.changed.notify_all();
    }
}

/// The agent's view of the source: which pods the API knows, and whether it is listed.
#[derive(Clone)]
pub struct KubeHandle(pub Arc<Shared>);

/// The Kubernetes source (see the module doc).
pub struct KubeSource {
    shared: Arc<Shared>,
    last: u64,
}

/// A client from a kubeconfig file, or from the in-cluster service account when `None`.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, String> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::incluster()
            .map_err(|e| format!("in-cluster configuration (service account): {e}"))?,
    };
    Client::try_from(config).map_err(|e| format!("Kubernetes client: {e}"))
}

impl KubeSource {
    /// Start watching with `client` on the current tokio runtime. `node` names this node (in
    /// Events); ThreatFeeds are validated with `min_refresh`.
    pub fn start(client: Client, node: &str, min_refresh: Duration) -> (Self, KubeHandle) {
        let shared = Arc::new(Shared {
            index: Mutex::new(Index::new(min_refresh)),
            changed: Condvar::new(),
        });
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "septa-agent".into(),
                instance: Some(node.to_owned()),
            },
        );
        let sh = shared.clone();
        tokio::spawn(watch(
            Api::<Namespace>::all(client.clone()),
            Kind::Namespace,
            sh.clone(),
            |ix, o| {
                ix.apply_namespace(o);
                Ok(())
            },
            Index::delete_namespace,
            |_| {},
        ));
        tokio::spawn(watch(
            Api::<Pod>::all(client.clone()),
            Kind::Pod,
            sh.clone(),
            Index::apply_pod,
            Index::delete_pod,
            prune_pod,
        ));
        tokio::spawn(watch(
            Api::<NetworkPolicy>::all(client.clone()),
            Kind::NetworkPolicy,
            sh.clone(),
            Index::apply_policy,
            Index::delete_policy,
            |_| {},
        ));
        tokio::spawn(watch(
            Api::<k8s_openapi::api::core::v1::Service>::all(client.clone()),
            Kind::Service,
            sh.clone(),
            Index::apply_service,
            Index::delete_service,
            |_| {},
        ));
        tokio::spawn(watch(
            Api::<EndpointSlice>::all(client.clone()),
            Kind::EndpointSlice,
            sh.clone(),
            Index::apply_slice,
            Index::delete_slice,
            |_| {},
        ));
        for (kind, name) in [
            (Kind::FqdnPolicy, "fqdnpolicies"),
            (Kind::ThreatFeed, "threatfeeds"),
        ] {
            let gvk = GroupVersionKind::gvk("septa.dev", "v1alpha1", kind.as_str());
            let ar = ApiResource::from_gvk_with_plural(&gvk, name);
            tokio::spawn(watch_septa(
                Api::<DynamicObject>::all_with(client.clone(), &ar),
                kind,
                sh.clone(),
                recorder.clone(),
                ar,
            ));
        }
        (KubeSource { shared, last: 0 }, KubeHandle(sh))
    }
}

impl Source for KubeSource {
    /// Wait (up to a second) for a change once every kind is listed, and load it.
    fn poll(&mut self) -> Option<Load> {
        let g = self.shared.index();
        let last = self.last;
        let (g, _) = self
            .shared
            .changed
            .wait_timeout_while(g, Duration::from_secs(1), |ix| {
                !ix.synced() || ix.generation == last
            })
            .unwrap_or_else(|e| e.into_inner());
        if !g.synced() || g.generation == last {
            return None;
        }
        self.last = g.generation;
        let cluster = g.cluster();
        metrics::gauge!("septa_kubernetes_pods").set(g.pod_count() as f64);
        metrics::gauge!("septa_kubernetes_object_errors").set(g.problems().len() as f64);
        drop(g);
        Some(Load {
            cluster,
            problems: Diagnostics::default(),
            snapshot: None,
            from_api: true,
        })
    }

    fn waits(&self) -> bool {
        true
    }
}

/// What a watch task keeps of a Pod: what [`Index::apply_pod`] reads.
pub fn prune_pod(p: &mut Pod) {
    if let Some(spec) = p.spec.as_mut() {
        spec.volumes = None;
        spec.affinity = None;
        spec.tolerations = None;
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            let ports = c.ports.take();
            *c = k8s_openapi::api::core::v1::Container {
                name: std::mem::take(&mut c.name),
                ports,
                ..Default::default()
            };
        }
        spec.ephemeral_containers = None;
    }
    if let Some(st) = p.status.as_mut() {
        *st = k8s_openapi::api::core::v1::PodStatus {
            phase: st.phase.take(),
            pod_ip: st.pod_ip.take(),
            pod_ips: st.pod_ips.take(),
            ..Default::default()
        };
    }
}

/// Fields no kind's conversion reads.
pub fn prune_meta<K: Resource>(o: &mut K) {
    let m = o.meta_mut();
    m.managed_fields = None;
    m.annotations = None;
    m.finalizers = None;
}

/// Watch one kind into the index.
async fn watch<K>(
    api: Api<K>,
    kind: Kind,
    shared: Arc<Shared>,
    apply: fn(&mut Index, &K) -> Result<(), Diagnostic>,
    delete: fn(&mut Index, &K),
    prune: fn(&mut K),
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .backoff(Retry::default())
        .modify(move |o: &mut K| {
            prune_meta(o);
            prune(o);
        })
        .boxed();
    let mut buffer: Vec<K> = Vec::new();
    while let Some(ev) = stream.next().await {
        let mut problems = Vec::new();
        match ev {
            Ok(Event::Init) => buffer.clear(),
            Ok(Event::InitApply(o)) => {
                buffer.push(o);
                continue;
            }
            Ok(Event::InitDone) => {
                let objects = std::mem::take(&mut buffer);
                let n = objects.len();
                shared.index().relist(kind, objects, |ix, o| {
                    if let Err(d) = apply(ix, &o) {
                        problems.push(d);
                    }
                });
                info!(kind = kind.as_str(), objects = n, "listed");
                metrics::counter!("septa_kubernetes_lists_total", "kind" => kind.as_str())
                    .increment(1);
            }
            Ok(Event::Apply(o)) => {
                if let Err(d) = apply(&mut shared.index(), &o) {
                    problems.push(d);
                }
            }
            Ok(Event::Delete(o)) => delete(&mut shared.index(), &o),
            Err(e) => {
                watch_failed(kind, &e);
                continue;
            }
        }
        applied(kind, &shared);
        report(&problems);
    }
}

/// Watch FqdnPolicies or ThreatFeeds (as JSON, so that an object that does not decode is one
/// bad object, not a failed list) into the index; a bad one gets a Warning Event.
async fn watch_septa(
    api: Api<DynamicObject>,
    kind: Kind,
    shared: Arc<Shared>,
    recorder: Recorder,
    ar: ApiResource,
) {
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .backoff(Retry::default())
        .modify(prune_meta)
        .boxed();
    let mut buffer: Vec<DynamicObject> = Vec::new();
    let json = |o: &DynamicObject| serde_json::to_value(o).unwrap_or_default();
    while let Some(ev) = stream.next().await {
        let mut problems: Vec<(Diagnostic, DynamicObject)> = Vec::new();
        match ev {
            Ok(Event::Init) => buffer.clear(),
            Ok(Event::InitApply(o)) => {
                buffer.push(o);
                continue;
            }
            Ok(Event::InitDone) => {
                let objects = std::mem::take(&mut buffer);
                shared.index().relist(kind, objects, |ix, o| {
                    if let Err(d) = ix.apply_septa(kind, &json(&o)) {
                        problems.push((d, o));
                    }
                });
            }
            Ok(Event::Apply(o)) => {
                if let Err(d) = shared.index().apply_septa(kind, &json(&o)) {
                    problems.push((d, o));
                }
            }
            Ok(Event::Delete(o)) => shared.index().delete_septa(kind, &json(&o)),
            Err(e) => {
                watch_failed(kind, &e);
                continue;
            }
        }
        applied(kind, &shared);
        report(&problems.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>());
        for (d, o) in problems {
            let ev = KEvent {
                type_: EventType::Warning,
                reason: "Invalid".into(),
                note: Some(format!(
                    "{}: {}; the last good version stays enforced",
                    if d.field.is_empty() {
                        "object"
                    } else {
                        &d.field
                    },
                    d.message
                )),
                action: "Validate".into(),
                secondary: None,
            };
            let reference = o.object_ref(&ar);
            // Not awaited here: a slow Events API must not hold up the watch.
            let recorder = recorder.clone();
            tokio::spawn(async move {
                if let Err(e) = recorder.publish(&ev, &reference).await {
                    warn!(object = %d.object, error = %e, "could not post the Event");
                }
            });
        }
    }
}

/// How long a failed list or watch waits: kube-runtime's default shape (from 800 ms,
/// doubling, with jitter), but capped at 5 s rather than 30 s and reset by every event that
/// arrives rather than after two quiet minutes. A `410 Gone` reaches the backoff as an error:
/// with the default, the relist right after an outage would wait out the outage's 30 s while
/// the changes made meanwhile stay unenforced (client-go's reflector relists at once).
struct Retry {
    next: Duration,
}

const RETRY_FIRST: Duration = Duration::from_millis(800);
const RETRY_MAX: Duration = Duration::from_secs(5);

impl Default for Retry {
    fn default() -> Self {
        Retry { next: RETRY_FIRST }
    }
}

impl Iterator for Retry {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (now * 2).min(RETRY_MAX);
        // Up to a quarter less, so that the agents of many nodes do not retry in step.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Some(now - now.mul_f64(f64::from(nanos % 1000) / 4000.0))
    }
}

impl kube::runtime::utils::Backoff for Retry {
    fn reset(&mut self) {
        self.next = RETRY_FIRST;
    }
}

/// A list or watch failed: kube-runtime's backoff retries it; the index keeps what it has.
fn watch_failed(kind: Kind, e: &watcher::Error) {
    metrics::counter!("septa_kubernetes_watch_errors_total", "kind" => kind.as_str()).increment(1);
    warn!(kind = kind.as_str(), error = %e, "watch failed; retrying with backoff, enforcing the last good state meanwhile");
}

/// An event went into the index: count it and wake the source's reader.
fn applied(kind: Kind, shared: &Shared) {
    metrics::counter!("septa_kubernetes_events_total", "kind" => kind.as_str()).increment(1);
    shared.changed();
}

/// Log objects that do not validate.
fn report(problems: &[Diagnostic]) {
    for d in problems {
        error!(object = %d.object, field = %d.field, "{}; its last good version (if any) stays enforced", d.message);
        metrics::counter!("septa_kubernetes_invalid_objects_total").increment(1);
    }
}

impl KubeHandle {
    /// Whether the API has the pod.
    pub fn has_pod(&self, namespace: &str, name: &str) -> bool {
        self.0.index().has_pod(namespace, name)
    }

    /// Whether every kind is listed, and which are not.
    pub fn unsynced(&self) -> Vec<&'static str> {
        self.0.index().unsynced()
    }

    /// The pods the API places on `node`.
    pub fn pods_on(&self, node: &str) -> Vec<(String, String, Vec<std::net::IpAddr>)> {
        self.0.index().pods_on(node)
    }
}

/// What the agent knows of its own DaemonSet, from a watch of it: whether septa is being
/// uninstalled. Watched, not asked at shutdown: `helm uninstall` deletes the DaemonSet and
/// then, without waiting, the agent's RoleBinding and ServiceAccount, so by the time the
/// agent is stopped a request would be refused; a watch that is already open still delivers
/// the deletion.
#[derive(Clone, Default)]
pub struct OwnerWatch(Arc<std::sync::atomic::AtomicU8>);

impl OwnerWatch {
    const UNKNOWN: u8 = 0;
    const PRESENT: u8 = 1;
    const DELETED: u8 = 2;

    /// Watch `namespace/name` on the current tokio runtime (a list and watch narrowed to the
    /// one name, which RBAC's `resourceNames` allows).
    pub fn start(client: Client, namespace: &str, name: &str) -> Self {
        let owner = OwnerWatch::default();
        let api = Api::<k8s_openapi::api::apps::v1::DaemonSet>::namespaced(client, namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let (state, what) = (owner.0.clone(), format!("{namespace}/{name}"));
        tokio::spawn(async move {
            let mut stream = watcher::watcher(api, config)
                .backoff(Retry::default())
                .boxed();
            let mut listed = false;
            while let Some(ev) = stream.next().await {
                let now = match ev {
                    Ok(Event::Init) => {
                        listed = false;
                        continue;
                    }
                    Ok(Event::InitApply(ds) | Event::Apply(ds)) => {
                        listed = true;
                        if ds.metadata.deletion_timestamp.is_some() {
                            Self::DELETED
                        } else {
                            Self::PRESENT
                        }
                    }
                    Ok(Event::InitDone) if listed => continue,
                    Ok(Event::InitDone | Event::Delete(_)) => Self::DELETED,
                    Err(e) => {
                        warn!(daemonset = %what, error = %e, "watching the agent's own DaemonSet failed; retrying");
                        continue;
                    }
                };
                let was = state.swap(now, std::sync::atomic::Ordering::Relaxed);
                if now == Self::DELETED && was != Self::DELETED {
                    info!(daemonset = %what, "the agent's DaemonSet is gone or being deleted: septa is being uninstalled; its CNI entry is removed when this agent stops");
                }
            }
        });
        owner
    }

    /// `Some(true)`: the DaemonSet is gone or being deleted; `Some(false)`: it exists;
    /// `None`: not known yet.
    pub fn deleted(&self) -> Option<bool> {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            Self::UNKNOWN => None,
            s => Some(s == Self::DELETED),
        }
    }
}

/// Whether the DaemonSet `namespace/name` is gone or being deleted: the agent stops because
/// septa is uninstalled, not restarted or upgraded. Asked when its watch has not answered
/// yet. Unknown (the API does not answer within five seconds, or refuses) counts as not
/// deleted, so the CNI entry stays: a node where septa-cni waits for an agent fails closed.
pub async fn daemonset_deleted(client: Client, namespace: &str, name: &str) -> bool {
    let api = Api::<k8s_openapi::api::apps::v1::DaemonSet>::namespaced(client, namespace);
    match tokio::time::timeout(Duration::from_secs(5), api.get_opt(name)).await {
        Ok(Ok(None)) => true,
        Ok(Ok(Some(ds))) => ds.metadata.deletion_timestamp.is_some(),
        Ok(Err(e)) => {
            warn!(daemonset = %format!("{namespace}/{name}"), error = %e, "cannot tell whether septa is being uninstalled; the CNI entry stays");
            false
        }
        Err(_) => {
            warn!(daemonset = %format!("{namespace}/{name}"), "the API server did not answer within 5s; the CNI entry stays");
            false
        }
    }
}
