//! The Kubernetes source's index: what policy needs of the cluster's objects, and nothing
//! more, as the same [`Cluster`] the manifests directory gives.
//!
//! # Phases
//! 1. **Prune on arrival.** Each watched object is reduced as it arrives: a pod to its
//!    addresses, labels, owner workload, node, named container ports, hostNetwork and whether
//!    it ended; a Service to its addresses and ports; an EndpointSlice to its backends; a
//!    NetworkPolicy to the model's policy. Labels, owners and port sets are interned, so the
//!    pods of one workload share one copy of each; nothing else of the object is kept.
//! 2. **Relist.** After a watch restarts (start-up, 410 Gone, a long disconnect), the objects
//!    of that kind are replaced at once, so the index never mixes two lists.
//! 3. **Snapshot.** [`Index::cluster`] builds the input of the compiler.
//!
//! # Addresses
//! Two pods may report the same address while the first one's deletion is in flight and the
//! address has already been given to a second pod. An address belongs to the **newest** pod
//! that reports it (creation time, then arrival order): the network can only hand it to a new
//! pod after the old one's sandbox is gone, so the newest claim is the current one. Pods that
//! ended (phase `Succeeded` or `Failed`) hold no address; a pod being deleted keeps its
//! address until its object is gone or a newer pod reports it, so its graceful shutdown is
//! judged as itself.
//!
//! # Bad objects
//! A NetworkPolicy, FqdnPolicy or ThreatFeed that does not validate keeps the last good
//! version of that object (none if it never had one): a typo in an update must not take the
//! isolation of its pods with it. The problem is returned to the caller, which reports it,
//! and stays listed in [`Index::problems`] until the object is fixed or deleted.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    hash::Hash,
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use k8s_openapi::api::{
    core::v1::{Namespace as K8sNamespace, Pod as K8sPod, Service as K8sService},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};
use policies::{
    model::{Backend, CustomObject, Namespace, Policy, Protocol, Service, WorkloadRef},
    selector::Labels,
    Cluster, Diagnostic,
};

/// The kinds the source watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Pod,
    NetworkPolicy,
    Service,
    EndpointSlice,
    FqdnPolicy,
    ThreatFeed,
}

impl Kind {
    /// Every kind, in the order the source starts their watches.
    pub const ALL: [Kind; 7] = [
        Kind::Namespace,
        Kind::Pod,
        Kind::NetworkPolicy,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::FqdnPolicy,
        Kind::ThreatFeed,
    ];

    /// The kind's name, as in manifests (and metric labels).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::FqdnPolicy => "FqdnPolicy",
            Kind::ThreatFeed => "ThreatFeed",
        }
    }
}

/// Where diagnostics of API objects say they come from (the `file` of a [`Diagnostic`]).
pub const ORIGIN: &str = "kubernetes";

/// Shared copies of values many objects hold alike.
struct Interner<T: Hash + Eq + ?Sized> {
    set: HashSet<Arc<T>>,
}

impl<T: Hash + Eq + ?Sized> Default for Interner<T> {
    fn default() -> Self {
        Self {
            set: HashSet::new(),
        }
    }
}

impl<T: Hash + Eq> Interner<T> {
    fn get(&mut self, v: T) -> Arc<T> {
        if let Some(a) = self.set.get(&v) {
            return a.clone();
        }
        let a = Arc::new(v);
        self.set.insert(a.clone());
        a
    }
}

impl<T: Hash + Eq + ?Sized> Interner<T> {
    /// Drop the values no object holds any more.
    fn sweep(&mut self) {
        self.set.retain(|a| Arc::strong_count(a) > 1);
    }
}

/// What the index keeps of a pod.
#[derive(Clone, Debug, PartialEq)]
struct PodEntry {
    labels: Arc<Labels>,
    workload: Arc<(String, String)>,
    named_ports: Arc<BTreeMap<String, (Protocol, u16)>>,
    node: Arc<str>,
    ips: Box<[IpAddr]>,
    host_network: bool,
    /// Phase `Succeeded` or `Failed`: it holds no address.
    ended: bool,
    /// Being deleted (its containers stop within the grace period; it keeps its address
    /// until then).
    terminating: bool,
    /// Creation time (seconds since the epoch) and arrival order: the newest claim of an
    /// address wins.
    created: i64,
    seq: u64,
}

/// An object that validates, or the last version that did and why the current one does not.
#[derive(Clone, Debug)]
struct Kept<T> {
    good: Option<T>,
    problem: Option<Diagnostic>,
}

/// A Service's EndpointSlice, reduced to its backends.
#[derive(Clone, Debug)]
struct Slice {
    service: String,
    backends: Vec<Backend>,
}

type Key = (String, String);

/// The index (see the module doc).
pub struct Index {
    namespaces: BTreeMap<String, Labels>,
    pods: HashMap<(Arc<str>, Box<str>), PodEntry>,
    policies: BTreeMap<Key, Kept<Policy>>,
    services: BTreeMap<Key, Service>,
    slices: BTreeMap<Key, Slice>,
    septa: BTreeMap<(Kind, String, String), Kept<serde_json::Value>>,
    /// During a relist: the kept objects of before, for their last good versions.
    old_policies: BTreeMap<Key, Kept<Policy>>,
    old_septa: BTreeMap<(Kind, String, String), Kept<serde_json::Value>>,
    strings: Interner<str>,
    labels: Interner<Labels>,
    workloads: Interner<(String, String)>,
    ports: Interner<BTreeMap<String, (Protocol, u16)>>,
    deletes_since_sweep: usize,
    seq: u64,
    synced: BTreeSet<Kind>,
    min_refresh: Duration,
    /// Bumped by every change: a snapshot is current while it is unchanged.
    pub generation: u64,
}

impl Index {
    /// An empty index; ThreatFeeds are validated with this shortest refresh.
    pub fn new(min_refresh: Duration) -> Self {
        Self {
            namespaces: BTreeMap::new(),
            pods: HashMap::new(),
            policies: BTreeMap::new(),
            services: BTreeMap::new(),
            slices: BTreeMap::new(),
            septa: BTreeMap::new(),
            old_policies: BTreeMap::new(),
            old_septa: BTreeMap::new(),
            strings: Interner::default(),
            labels: Interner::default(),
            workloads: Interner::default(),
            ports: Interner::default(),
            deletes_since_sweep: 0,
            seq: 0,
            synced: BTreeSet::new(),
            min_refresh,
            generation: 0,
        }
    }

    /// Whether every kind has been listed once.
    pub fn synced(&self) -> bool {
        Kind::ALL.iter().all(|k| self.synced.contains(k))
    }

    /// The kinds not listed yet (for readiness messages).
    pub fn unsynced(&self) -> Vec<&'static str> {
        Kind::ALL
            .iter()
            .filter(|k| !self.synced.contains(k))
            .map(|k| k.as_str())
            .collect()
    }

    /// Pods in the index.
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// Whether the pod is in the index (CNI ADD waits for it).
    pub fn has_pod(&self, namespace: &str, name: &str) -> bool {
        self.pods
            .contains_key(&(Arc::from(namespace), Box::from(name)))
    }

    /// The pods the API places on `node` that run (not ended, not being deleted), with their
    /// addresses: what a starting agent adopts, and what must be registered once it runs.
    pub fn pods_on(&self, node: &str) -> Vec<(String, String, Vec<IpAddr>)> {
        let mut v: Vec<_> = self
            .pods
            .iter()
            .filter(|(_, p)| &*p.node == node && !p.host_network && !p.ended && !p.terminating)
            .map(|((ns, name), p)| (ns.to_string(), name.to_string(), p.ips.to_vec()))
            .collect();
        v.sort();
        v
    }

    /// The objects kept at an older version because the current one does not validate.
    pub fn problems(&self) -> Vec<Diagnostic> {
        let policies = self.policies.values().filter_map(|k| k.problem.clone());
        let septa = self.septa.values().filter_map(|k| k.problem.clone());
        policies.chain(septa).collect()
    }

    /// Replace every object of `kind` with `objects` (a relist), applied in order.
    pub fn relist<T>(&mut self, kind: Kind, objects: Vec<T>, mut apply: impl FnMut(&mut Self, T)) {
        match kind {
            Kind::Namespace => self.namespaces.clear(),
            Kind::Pod => self.pods.clear(),
            Kind::Service => self.services.clear(),
            Kind::EndpointSlice => self.slices.clear(),
            // Set aside, not dropped: a bad object's last good version is the one from before.
            Kind::NetworkPolicy => self.old_policies = std::mem::take(&mut self.policies),
            Kind::FqdnPolicy | Kind::ThreatFeed => {
                let (old, keep) = std::mem::take(&mut self.septa)
                    .into_iter()
                    .partition(|((k, _, _), _)| *k == kind);
                self.septa = keep;
                self.old_septa = old;
            }
        }
        for o in objects {
            apply(self, o);
        }
        self.old_policies.clear();
        self.old_septa.clear();
        self.synced.insert(kind);
        self.sweep();
        self.generation += 1;
    }

    fn sweep(&mut self) {
        self.strings.sweep();
        self.labels.sweep();
        self.workloads.sweep();
        self.ports.sweep();
        self.deletes_since_sweep = 0;
    }

    fn deleted(&mut self) {
        self.generation += 1;
        self.deletes_since_sweep += 1;
        // Amortised: a sweep walks every interned value.
        if self.deletes_since_sweep > 1024 {
            self.sweep();
        }
    }

    /// Add or replace a Namespace.
    pub fn apply_namespace(&mut self, ns: &K8sNamespace) {
        let Some(name) = ns.metadata.name.clone() else {
            return;
        };
        let mut labels = ns.metadata.labels.clone().unwrap_or_default();
        // The API server sets it on every namespace; a selector may rely on it.
        labels.insert(policies::model::NAMESPACE_NAME_LABEL.into(), name.clone());
        if self.namespaces.get(&name) != Some(&labels) {
            self.namespaces.insert(name, labels);
            self.generation += 1;
        }
    }

    /// Remove a Namespace.
    pub fn delete_namespace(&mut self, ns: &K8sNamespace) {
        if let Some(name) = &ns.metadata.name {
            if self.namespaces.remove(name).is_some() {
                self.deleted();
            }
        }
    }

    /// Add or replace a Pod. A pod whose addresses do not parse keeps its previous entry.
    pub fn apply_pod(&mut self, p: &K8sPod) -> Result<(), Diagnostic> {
        let (Some(ns), Some(name)) = (&p.metadata.namespace, &p.metadata.name) else {
            return Ok(());
        };
        let mut skipped = Vec::new();
        let pod = policies::load::pod(p, ns, &mut skipped)
            .map_err(|(field, message)| diag(&format!("Pod {ns}/{name}"), field, message))?;
        let ended = p
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|ph| ph == "Succeeded" || ph == "Failed");
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or("");
        let created = p
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second());
        let key = (self.strings.get_str(ns), Box::from(name.as_str()));
        let seq = match self.pods.get(&key) {
            // An address keeps its claim's age across updates of the same pod.
            Some(old) if *old.ips == *pod.ips => old.seq,
            _ => {
                self.seq += 1;
                self.seq
            }
        };
        let entry = PodEntry {
            labels: self.labels.get(pod.labels),
            workload: self.workloads.get((pod.workload.kind, pod.workload.name)),
            named_ports: self.ports.get(pod.named_ports),
            node: self.strings.get_str(node),
            ips: pod.ips.into_boxed_slice(),
            host_network: pod.host_network,
            ended,
            terminating: p.metadata.deletion_timestamp.is_some(),
            created,
            seq,
        };
        // Most updates of a pod are its status (conditions, container states): nothing policy
        // reads, and no reason to recompile on every node.
        if self.pods.get(&key) != Some(&entry) {
            self.pods.insert(key, entry);
            self.generation += 1;
        }
        Ok(())
    }

    /// Remove a Pod.
    pub fn delete_pod(&mut self, p: &K8sPod) {
        if let (Some(ns), Some(name)) = (&p.metadata.namespace, &p.metadata.name) {
            if self
                .pods
                .remove(&(Arc::from(ns.as_str()), Box::from(name.as_str())))
                .is_some()
            {
                self.deleted();
            }
        }
    }

    /// Add or replace a NetworkPolicy; one that does not convert keeps its last good version.
    pub fn apply_policy(&mut self, np: &NetworkPolicy) -> Result<(), Diagnostic> {
        let (Some(ns), Some(name)) = (&np.metadata.namespace, &np.metadata.name) else {
            return Ok(());
        };
        let key = (ns.clone(), name.clone());
        let prev = self
            .policies
            .get(&key)
            .or_else(|| self.old_policies.get(&key))
            .and_then(|k| k.good.clone());
        self.generation += 1;
        match Policy::from_k8s(np, ns) {
            Ok(p) => {
                self.policies.insert(
                    key,
                    Kept {
                        good: Some(p),
                        problem: None,
                    },
                );
                Ok(())
            }
            Err(e) => {
                let d = diag(&format!("NetworkPolicy {ns}/{name}"), e.field, e.message);
                self.policies.insert(
                    key,
                    Kept {
                        good: prev,
                        problem: Some(d.clone()),
                    },
                );
                Err(d)
            }
        }
    }

    /// Remove a NetworkPolicy.
    pub fn delete_policy(&mut self, np: &NetworkPolicy) {
        if let (Some(ns), Some(name)) = (&np.metadata.namespace, &np.metadata.name) {
            if self.policies.remove(&(ns.clone(), name.clone())).is_some() {
                self.deleted();
            }
        }
    }

    /// Add or replace a Service; one that does not convert is left out.
    pub fn apply_service(&mut self, svc: &K8sService) -> Result<(), Diagnostic> {
        let (Some(ns), Some(name)) = (&svc.metadata.namespace, &svc.metadata.name) else {
            return Ok(());
        };
        let key = (ns.clone(), name.clone());
        self.generation += 1;
        match policies::load::service(svc, ns, name) {
            Ok(s) => {
                self.services.insert(key, s);
                Ok(())
            }
            Err((field, message)) => {
                self.services.remove(&key);
                Err(diag(&format!("Service {ns}/{name}"), field, message))
            }
        }
    }

    /// Remove a Service.
    pub fn delete_service(&mut self, svc: &K8sService) {
        if let (Some(ns), Some(name)) = (&svc.metadata.namespace, &svc.metadata.name) {
            if self.services.remove(&(ns.clone(), name.clone())).is_some() {
                self.deleted();
            }
        }
    }

    /// Add or replace an EndpointSlice. Slices of no Service (no `kubernetes.io/service-name`
    /// label) are not kept; addresses that do not parse are left out.
    pub fn apply_slice(&mut self, es: &EndpointSlice) -> Result<(), Diagnostic> {
        let (Some(ns), Some(name)) = (&es.metadata.namespace, &es.metadata.name) else {
            return Ok(());
        };
        let key = (ns.clone(), name.clone());
        let Some(service) = es
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
        else {
            if self.slices.remove(&key).is_some() {
                self.deleted();
            }
            return Ok(());
        };
        let object = format!("EndpointSlice {ns}/{name}");
        let mut ports = Vec::new();
        for (i, p) in es.ports.iter().flatten().enumerate() {
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            let Some(protocol) = Protocol::parse(proto) else {
                return Err(diag(
                    &object,
                    format!("ports[{i}].protocol"),
                    format!("unknown protocol {proto:?}"),
                ));
            };
            match p.port {
                Some(n) if (1..=65535).contains(&n) => {
                    ports.push((p.name.clone().filter(|n| !n.is_empty()), protocol, n as u16))
                }
                // No port: every port, which a Service port never names; nothing to reach.
                None => {}
                Some(n) => {
                    return Err(diag(
                        &object,
                        format!("ports[{i}].port"),
                        format!("port {n} is outside 1-65535"),
                    ))
                }
            }
        }
        let mut backends = Vec::new();
        for (i, e) in es.endpoints.iter().enumerate() {
            // Unset means ready (the API's own rule).
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            for (j, a) in e.addresses.iter().enumerate() {
                let ip: IpAddr = a.parse().map_err(|_| {
                    diag(
                        &object,
                        format!("endpoints[{i}].addresses[{j}]"),
                        format!("invalid IP {a:?}"),
                    )
                })?;
                backends.push(Backend {
                    ip,
                    ports: ports.clone(),
                    ready,
                });
            }
        }
        self.slices.insert(
            key,
            Slice {
                service: service.clone(),
                backends,
            },
        );
        self.generation += 1;
        Ok(())
    }

    /// Remove an EndpointSlice.
    pub fn delete_slice(&mut self, es: &EndpointSlice) {
        if let (Some(ns), Some(name)) = (&es.metadata.namespace, &es.metadata.name) {
            if self.slices.remove(&(ns.clone(), name.clone())).is_some() {
                self.deleted();
            }
        }
    }

    /// Add or replace an FqdnPolicy or ThreatFeed (as JSON: validated here, with the rules of
    /// `septa lint`); one that does not validate keeps its last good version.
    pub fn apply_septa(&mut self, kind: Kind, v: &serde_json::Value) -> Result<(), Diagnostic> {
        let name = v.pointer("/metadata/name").and_then(|n| n.as_str());
        let ns = v
            .pointer("/metadata/namespace")
            .and_then(|n| n.as_str())
            .unwrap_or("");
        let Some(name) = name else { return Ok(()) };
        let key = (kind, ns.to_owned(), name.to_owned());
        let object = match kind {
            Kind::ThreatFeed => format!("ThreatFeed {name}"),
            _ => format!("{} {ns}/{name}", kind.as_str()),
        };
        let checked = match kind {
            Kind::FqdnPolicy => policies::septa::fqdn::validate(v).map(|_| ()),
            Kind::ThreatFeed => policies::septa::feed::validate(v, self.min_refresh).map(|_| ()),
            _ => return Ok(()),
        };
        // Only what validation reads: the rest of the object (managed fields, annotations,
        // status) is not kept.
        let pruned = serde_json::json!({
            "apiVersion": v.get("apiVersion"),
            "kind": kind.as_str(),
            "metadata": {"name": name, "namespace": ns},
            "spec": v.get("spec"),
        });
        let prev = self
            .septa
            .get(&key)
            .or_else(|| self.old_septa.get(&key))
            .and_then(|k| k.good.clone());
        self.generation += 1;
        match checked {
            Ok(()) => {
                self.septa.insert(
                    key,
                    Kept {
                        good: Some(pruned),
                        problem: None,
                    },
                );
                Ok(())
            }
            Err(errors) => {
                let (field, message) = errors
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| (String::new(), "invalid".into()));
                let d = diag(&object, field, message);
                self.septa.insert(
                    key,
                    Kept {
                        good: prev,
                        problem: Some(d.clone()),
                    },
                );
                Err(d)
            }
        }
    }

    /// Remove an FqdnPolicy or ThreatFeed.
    pub fn delete_septa(&mut self, kind: Kind, v: &serde_json::Value) {
        let name = v.pointer("/metadata/name").and_then(|n| n.as_str());
        let ns = v
            .pointer("/metadata/namespace")
            .and_then(|n| n.as_str())
            .unwrap_or("");
        if let Some(name) = name {
            if self
                .septa
                .remove(&(kind, ns.to_owned(), name.to_owned()))
                .is_some()
            {
                self.deleted();
            }
        }
    }

    /// The index as the compiler's input. Every pod that holds an address, and every pod of
    /// `node` (ADD looks them up), is in it; see the module doc for who holds an address.
    pub fn cluster(&self) -> Cluster {
        let namespaces = self
            .namespaces
            .iter()
            .map(|(n, l)| {
                (
                    n.clone(),
                    Namespace {
                        name: n.clone(),
                        labels: l.clone(),
                    },
                )
            })
            .collect();
        // Address to its newest claim.
        let mut owner: HashMap<IpAddr, (i64, u64)> = HashMap::new();
        for p in self.pods.values().filter(|p| !p.ended) {
            for ip in p.ips.iter() {
                let e = owner.entry(*ip).or_insert((p.created, p.seq));
                *e = (*e).max((p.created, p.seq));
            }
        }
        let mut pods: Vec<policies::model::Pod> = self
            .pods
            .iter()
            .map(|((ns, name), p)| policies::model::Pod {
                namespace: ns.to_string(),
                name: name.to_string(),
                workload: WorkloadRef {
                    namespace: ns.to_string(),
                    name: p.workload.1.clone(),
                    kind: p.workload.0.clone(),
                },
                labels: (*p.labels).clone(),
                named_ports: (*p.named_ports).clone(),
                ips: p
                    .ips
                    .iter()
                    .filter(|ip| !p.ended && owner.get(ip) == Some(&(p.created, p.seq)))
                    .copied()
                    .collect(),
                host_network: p.host_network,
            })
            .collect();
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let mut backends: BTreeMap<Key, Vec<Backend>> = BTreeMap::new();
        for ((ns, _), s) in &self.slices {
            backends
                .entry((ns.clone(), s.service.clone()))
                .or_default()
                .extend(s.backends.iter().cloned());
        }
        let services = self
            .services
            .iter()
            .map(|(k, s)| Service {
                // A Service without slices has no backends (yet), whatever its selector says.
                backends: Some(backends.get(k).cloned().unwrap_or_default()),
                ..s.clone()
            })
            .collect();
        let policies = self
            .policies
            .values()
            .filter_map(|k| k.good.clone())
            .collect();
        let custom = self
            .septa
            .iter()
            .filter_map(|((kind, ns, name), k)| {
                k.good.as_ref().map(|v| CustomObject {
                    at: format!("{ORIGIN}: {} {ns}/{name}", kind.as_str()),
                    kind: kind.as_str().to_owned(),
                    value: v.clone(),
                })
            })
            .collect();
        Cluster {
            namespaces,
            pods,
            services,
            policies,
            custom,
            ..Default::default()
        }
    }
}

impl Interner<str> {
    fn get_str(&mut self, v: &str) -> Arc<str> {
        if let Some(a) = self.set.get(v) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(v);
        self.set.insert(a.clone());
        a
    }
}

fn diag(object: &str, field: impl Into<String>, message: impl Into<String>) -> Diagnostic {
    Diagnostic {
        file: ORIGIN.into(),
        object: object.into(),
        field: field.into(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(ns: &str, name: &str, app: &str, ip: Option<&str>, created: &str) -> K8sPod {
        let mut v = json!({
            "metadata": {"namespace": ns, "name": name, "labels": {"app": app},
                         "creationTimestamp": created,
                         "managedFields": [{"manager": "kubelet"}]},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "x",
                     "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running"}
        });
        if let Some(ip) = ip {
            v["status"]["podIP"] = json!(ip);
        }
        serde_json::from_value(v).unwrap()
    }

    fn np(name: &str, port: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": name},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"],
                     "ingress": [{"ports": [{"port": port}]}]}
        }))
        .unwrap()
    }

    fn synced() -> Index {
        let mut ix = Index::new(Duration::from_secs(60));
        for k in Kind::ALL {
            ix.relist::<()>(k, vec![], |_, _| {});
        }
        ix
    }

    #[test]
    fn the_newest_pod_that_reports_an_address_holds_it() {
        let mut ix = synced();
        ix.apply_pod(&pod(
            "shop",
            "old",
            "web",
            Some("10.88.1.5"),
            "2026-01-01T00:00:00Z",
        ))
        .unwrap();
        ix.apply_pod(&pod(
            "shop",
            "new",
            "db",
            Some("10.88.1.5"),
            "2026-01-01T00:01:00Z",
        ))
        .unwrap();
        let c = ix.cluster();
        let ips = |n: &str| c.pods.iter().find(|p| p.name == n).unwrap().ips.clone();
        assert_eq!(ips("new"), vec!["10.88.1.5".parse::<IpAddr>().unwrap()]);
        assert!(ips("old").is_empty(), "the older claim is dropped");
        // The same second: arrival order decides, and an update of the older pod that does
        // not change its addresses does not make its claim newer.
        ix.apply_pod(&pod(
            "shop",
            "a",
            "x",
            Some("10.88.1.6"),
            "2026-01-01T00:02:00Z",
        ))
        .unwrap();
        ix.apply_pod(&pod(
            "shop",
            "b",
            "y",
            Some("10.88.1.6"),
            "2026-01-01T00:02:00Z",
        ))
        .unwrap();
        ix.apply_pod(&pod(
            "shop",
            "a",
            "x2",
            Some("10.88.1.6"),
            "2026-01-01T00:02:00Z",
        ))
        .unwrap();
        let c = ix.cluster();
        let holder: Vec<_> = c
            .pods
            .iter()
            .filter(|p| p.ips.contains(&"10.88.1.6".parse().unwrap()))
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(holder, ["b"]);
    }

    #[test]
    fn an_ended_pod_holds_no_address_and_a_deleted_one_is_gone() {
        let mut ix = synced();
        let mut p = pod(
            "shop",
            "job",
            "batch",
            Some("10.88.1.7"),
            "2026-01-01T00:00:00Z",
        );
        ix.apply_pod(&p).unwrap();
        assert_eq!(ix.cluster().pods[0].ips.len(), 1);
        p.status.as_mut().unwrap().phase = Some("Succeeded".into());
        ix.apply_pod(&p).unwrap();
        assert!(ix.cluster().pods[0].ips.is_empty());
        ix.delete_pod(&p);
        assert!(ix.cluster().pods.is_empty());
        assert!(!ix.has_pod("shop", "job"));
    }

    #[test]
    fn pods_keep_what_policy_needs_and_share_their_labels() {
        let mut ix = synced();
        let mut owned = pod(
            "shop",
            "web-5d8f-abcde",
            "web",
            Some("10.88.1.8"),
            "2026-01-01T00:00:00Z",
        );
        owned
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("pod-template-hash".into(), "5d8f".into());
        owned.metadata.owner_references = Some(vec![serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f",
            "uid": "u", "controller": true
        }))
        .unwrap()]);
        ix.apply_pod(&owned).unwrap();
        let c = ix.cluster();
        let p = &c.pods[0];
        assert_eq!(
            (p.workload.kind.as_str(), p.workload.name.as_str()),
            ("Deployment", "web")
        );
        assert_eq!(p.named_ports.get("http"), Some(&(Protocol::Tcp, 8080)));
        for i in 0..10 {
            ix.apply_pod(&pod(
                "shop",
                &format!("same-{i}"),
                "same",
                None,
                "2026-01-01T00:00:00Z",
            ))
            .unwrap();
        }
        // One label set for the ten pods (plus the owned pod's), one port set for all.
        assert_eq!(ix.labels.set.len(), 2);
        assert_eq!(ix.ports.set.len(), 1);
        assert_eq!(ix.pods_on("node-1").len(), 11);
    }

    #[test]
    fn a_bad_policy_keeps_its_last_good_version_also_across_a_relist() {
        let mut ix = synced();
        ix.apply_policy(&np("p", json!(80))).unwrap();
        let d = ix.apply_policy(&np("p", json!(70000))).unwrap_err();
        assert_eq!(d.object, "NetworkPolicy shop/p");
        assert!(d.field.contains("port"), "{d:?}");
        let c = ix.cluster();
        assert_eq!(c.policies.len(), 1, "the last good version stays");
        assert_eq!(ix.problems().len(), 1);
        // A relist with the bad version still keeps the good one; a policy the list no
        // longer has is gone.
        ix.apply_policy(&np("other", json!(81))).unwrap();
        ix.relist(Kind::NetworkPolicy, vec![np("p", json!(70000))], |ix, o| {
            let _ = ix.apply_policy(&o);
        });
        let c = ix.cluster();
        assert_eq!(c.policies.len(), 1);
        assert_eq!(c.policies[0].name, "p");
        // Fixed: the problem goes.
        ix.apply_policy(&np("p", json!(90))).unwrap();
        assert!(ix.problems().is_empty());
        // A bad first version is no policy at all, and reported.
        assert!(ix.apply_policy(&np("new", json!(0))).is_err());
        assert_eq!(ix.cluster().policies.len(), 1);
    }

    #[test]
    fn septa_objects_are_validated_and_pruned() {
        let mut ix = synced();
        let good = json!({
            "apiVersion": "septa.dev/v1alpha1", "kind": "FqdnPolicy",
            "metadata": {"namespace": "shop", "name": "f", "annotations": {"a": "b"}},
            "spec": {"podSelector": {}, "egress": [{"toFQDNs": [{"matchName": "api.example.com"}]}]}
        });
        ix.apply_septa(Kind::FqdnPolicy, &good).unwrap();
        let mut bad = good.clone();
        bad["spec"]["egress"][0]["toFQDNs"][0] = json!({"matchNme": "x.example.com"});
        let d = ix.apply_septa(Kind::FqdnPolicy, &bad).unwrap_err();
        assert_eq!(d.object, "FqdnPolicy shop/f");
        assert!(d.field.starts_with("spec.egress"), "{d:?}");
        let c = ix.cluster();
        assert_eq!(c.custom.len(), 1);
        assert_eq!(
            c.custom[0].value["spec"]["egress"][0]["toFQDNs"][0]["matchName"],
            "api.example.com"
        );
        assert!(c.custom[0].value["metadata"].get("annotations").is_none());
        ix.delete_septa(Kind::FqdnPolicy, &bad);
        assert!(ix.cluster().custom.is_empty());
    }

    #[test]
    fn services_get_the_backends_of_their_slices() {
        let mut ix = synced();
        let svc: K8sService = serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": "web"},
            "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}],
                     "type": "NodePort"}
        }))
        .unwrap();
        ix.apply_service(&svc).unwrap();
        assert_eq!(
            ix.cluster().services[0].backends,
            Some(vec![]),
            "no slice: no backend"
        );
        let slice = |name: &str, ip: &str, ready: bool| -> EndpointSlice {
            serde_json::from_value(json!({
                "metadata": {"namespace": "shop", "name": name,
                             "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [ip], "conditions": {"ready": ready}}],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
            }))
            .unwrap()
        };
        ix.apply_slice(&slice("web-a", "10.88.1.9", true)).unwrap();
        ix.apply_slice(&slice("web-b", "10.88.2.9", false)).unwrap();
        let c = ix.cluster();
        let s = &c.services[0];
        assert_eq!(s.ports[0].node_port, Some(30080));
        let b = s.backends.as_ref().unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].ports, vec![(Some("http".into()), Protocol::Tcp, 8080)]);
        assert!(b[0].ready && !b[1].ready);
        let bad = slice("web-c", "not-an-ip", true);
        let d = ix.apply_slice(&bad).unwrap_err();
        assert_eq!(d.field, "endpoints[0].addresses[0]");
    }

    #[test]
    fn the_index_is_synced_once_every_kind_is_listed() {
        let mut ix = Index::new(Duration::from_secs(60));
        assert!(!ix.synced());
        for k in &Kind::ALL[..6] {
            ix.relist::<()>(*k, vec![], |_, _| {});
        }
        assert_eq!(ix.unsynced(), ["ThreatFeed"]);
        ix.relist::<()>(Kind::ThreatFeed, vec![], |_, _| {});
        assert!(ix.synced());
    }
}
