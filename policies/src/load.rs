//! Reading Kubernetes manifests into a [`Cluster`].
//!
//! Files and directories (recursively: `.yaml`, `.yml`, `.json`), multi-document YAML, JSON,
//! `kind: List`, and typed lists as the API server returns them (`PodList`,
//! `NetworkPolicyList`, ...: their items' kind and apiVersion are implied by the list). Only regular files are read (a link to one is followed; a FIFO, device
//! or socket is reported, never opened in a way that blocks), each up to [`MAX_FILE_BYTES`]
//! counted while reading, not taken from its metadata; links to directories are not followed
//! (so a `self -> .` link is no loop). Kinds used: Namespace, Node, Pod, Service (core),
//! Deployment, ReplicaSet, StatefulSet, DaemonSet (apps), Job, CronJob (batch; their pod
//! templates stand for their pods), NetworkPolicy (networking.k8s.io), ClusterNetworkPolicy
//! (policy.networking.k8s.io/v1alpha2, validated by [`crate::cnp`]); objects of septa's own group
//! (`septa.dev/...`) are kept as they are for their owners. Hidden entries (names starting
//! with `.`: a ConfigMap volume's `..data`, `.git/`, `.github/`) are not read. A document with
//! neither apiVersion nor kind is another tool's and a warning; with only one of them, an
//! error.
//!
//! Strict, as the API server with strict field validation: an unknown (misspelled) field is an
//! error naming its path, never dropped — a dropped `from:` or `matchLabels:` would turn a
//! rule into allow-all. An unknown kind in a group septa analyses (`networking.k8s.io`,
//! `policy.networking.k8s.io`) is an error; another product's policy kind (Cilium, Calico,
//! Antrea) is a warning that it is not enforced; other kinds are skipped quietly.
//!
//! A bad object is reported with its file, object and field, and left out; the rest is still
//! loaded, so callers can analyse what is safe and still exit non-zero.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::{Path, PathBuf},
};

use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet},
        batch::v1::{CronJob, Job},
        core::v1::{
            Namespace as K8sNamespace, Node as K8sNode, Pod as K8sPod, PodSpec, PodTemplateSpec,
            Service as K8sService,
        },
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

use crate::{
    cnp::{self, NodeInfo, UnknownPeers},
    error::Diagnostics,
    model::{
        Cluster, Namespace, Pod, Policy, Protocol, Service, ServicePort, TargetPort, WorkloadRef,
        NAMESPACE_NAME_LABEL,
    },
    selector::Labels,
};

/// Largest manifest file read (a guard against reading something that is not a manifest).
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Load every manifest under `paths`. Returns the cluster (everything that loaded) and the
/// problems found (empty when all is well).
pub fn load_paths<P: AsRef<Path>>(paths: &[P]) -> (Cluster, Diagnostics) {
    let mut b = Builder::default();
    for p in paths {
        let p = p.as_ref();
        let mut files = Vec::new();
        if let Err(e) = collect(p, &mut files) {
            b.diags.push(&p.display().to_string(), "", "", e);
            continue;
        }
        if files.is_empty() {
            b.diags.push(
                &p.display().to_string(),
                "",
                "",
                "no .yaml, .yml or .json files here",
            );
        }
        for f in files {
            let name = f.display().to_string();
            match read_manifest(&f) {
                Ok(text) => b.add_text(&name, &text),
                Err(e) => b.diags.push(&name, "", "", e),
            }
        }
    }
    b.finish()
}

/// Load manifests from a string (one "file" named `name`).
pub fn load_str(name: &str, text: &str) -> (Cluster, Diagnostics) {
    let mut b = Builder::default();
    b.add_text(name, text);
    b.finish()
}

/// Read one manifest file: a regular file (opened non-blocking, so a FIFO cannot hang the
/// caller, then checked with fstat), at most [`MAX_FILE_BYTES`], UTF-8.
fn read_manifest(f: &Path) -> Result<String, String> {
    use std::{io::Read, os::unix::fs::OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(f)
        .map_err(|e| format!("cannot open: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file (FIFOs, devices and sockets are never read)".into());
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("file is more than the {MAX_FILE_BYTES}-byte limit"));
    }
    String::from_utf8(bytes).map_err(|e| format!("cannot read: not UTF-8: {e}"))
}

fn collect(p: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let meta = std::fs::metadata(p).map_err(|e| format!("cannot open: {e}"))?;
    if meta.is_file() {
        out.push(p.to_owned());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
        .map_err(|e| format!("cannot list: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for e in entries {
        // Hidden entries are not manifests: a ConfigMap volume's `..data` and timestamped
        // `..2026_…` directories hold a second copy of every file, a Git checkout's `.git/` and
        // `.github/` hold other tools' YAML. Read, they would fail the directory for good.
        if e.file_name()
            .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."))
        {
            continue;
        }
        // Not through a link: a link to a directory is skipped (`self -> .` would loop), a link
        // to a file is read like the file.
        let Ok(lmeta) = std::fs::symlink_metadata(&e) else {
            continue;
        };
        if lmeta.is_dir() {
            collect(&e, out)?;
        } else if lmeta.file_type().is_symlink() && e.is_dir() {
            continue;
        } else if matches!(
            e.extension().and_then(|x| x.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(e);
        }
    }
    Ok(())
}

#[derive(Default)]
struct Builder {
    cluster: Cluster,
    diags: Diagnostics,
    /// (kind, namespace, name) → where first seen, to report duplicates.
    seen: BTreeMap<(String, String, String), String>,
    /// Deployments seen, so a ReplicaSet they own is not counted twice.
    deployments: BTreeSet<(String, String)>,
    /// CronJobs seen (namespace, name).
    owned_replicasets: Vec<(String, String, Pod)>,
    jobs_by_cronjob: BTreeMap<(String, String), String>,
    /// Container ports of the object being added that were left out, as (field, problem).
    skipped_ports: Vec<(String, String)>,
}

impl Builder {
    fn add_text(&mut self, file: &str, text: &str) {
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let at = format!("{file}#{}", i + 1);
            let value: serde_yaml::Value = match serde::Deserialize::deserialize(doc) {
                Ok(v) => v,
                Err(e) => {
                    self.diags.push(
                        file,
                        &format!("document {}", i + 1),
                        "",
                        format!("not valid YAML/JSON: {e}"),
                    );
                    // The YAML stream cannot be resynchronised after a syntax error.
                    return;
                }
            };
            if value.is_null() {
                continue;
            }
            let json = match serde_json::to_value(&value) {
                Ok(j) => j,
                Err(e) => {
                    self.diags
                        .push(&at, "", "", format!("cannot convert to JSON: {e}"));
                    continue;
                }
            };
            self.add_value(&at, json);
        }
    }

    fn add_value(&mut self, at: &str, v: serde_json::Value) {
        let kind = v
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_owned();
        let api = v
            .get("apiVersion")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_owned();
        if kind.is_empty() && api.is_empty() {
            // Another tool's file (Helm values, CI configuration, ...): nothing of ours, but
            // said, since a manifest that lost both fields would otherwise vanish unnoticed.
            self.diags.warn(
                at,
                "",
                "",
                "not a Kubernetes object (no apiVersion and kind); skipped",
            );
            return;
        }
        if kind.is_empty() || api.is_empty() {
            let missing = if kind.is_empty() {
                "kind"
            } else {
                "apiVersion"
            };
            self.diags.push(
                at,
                "",
                missing,
                "missing: a Kubernetes object needs apiVersion and kind",
            );
            return;
        }
        let ns = v
            .pointer("/metadata/namespace")
            .and_then(|n| n.as_str())
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
            .to_owned();
        let name = v
            .pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .unwrap_or_default()
            .to_owned();
        let cluster_scoped = matches!(kind.as_str(), "Namespace" | "Node" | "ClusterNetworkPolicy");
        let object = if cluster_scoped {
            format!("{kind} {name}")
        } else {
            format!("{kind} {ns}/{name}")
        };
        if let Some(item_kind) = kind.strip_suffix("List") {
            if let Some(items) = v.get("items").and_then(|i| i.as_array()) {
                // A typed list (`PodList`, `NetworkPolicyList`, ... as the API server returns
                // them) leaves each item's kind and apiVersion implied; `List` does not.
                for item in items.iter().cloned() {
                    let mut item = item;
                    if !item_kind.is_empty() {
                        if let Some(o) = item.as_object_mut() {
                            o.entry("kind").or_insert_with(|| item_kind.into());
                            o.entry("apiVersion").or_insert_with(|| api.clone().into());
                        }
                    }
                    self.add_value(at, item);
                }
                return;
            }
        }
        let group = api.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        if let Some(why) = foreign_policy(group) {
            self.diags.warn(
                at,
                &object,
                "",
                format!("{kind} ({api}) is {why}'s policy kind; septa does not enforce it"),
            );
            return;
        }
        if api.starts_with("septa.dev/") {
            self.cluster.custom.push(crate::model::CustomObject {
                at: at.to_owned(),
                kind,
                value: v,
            });
            return;
        }
        match kind_in_group(group, &kind) {
            KindUse::Analysed => {}
            KindUse::Other => return, // Another Kubernetes kind: not ours to analyse.
            KindUse::NotEnforced => {
                self.diags.warn(
                    at,
                    &object,
                    "",
                    format!("{kind} ({api}) is not enforced by this version of septa"),
                );
                return;
            }
            KindUse::Unknown(known) => {
                self.diags.push(
                    at,
                    &object,
                    "kind",
                    format!("{group} has no kind {kind:?} (known: {known})"),
                );
                return;
            }
        }
        if name.is_empty() {
            self.diags.push(at, &object, "metadata.name", "missing");
            return;
        }
        let key = (
            kind.clone(),
            if cluster_scoped {
                String::new()
            } else {
                ns.clone()
            },
            name.clone(),
        );
        if let Some(first) = self.seen.get(&key) {
            self.diags.push(
                at,
                &object,
                "",
                format!("duplicate object (first defined at {first}); this one is ignored"),
            );
            return;
        }
        self.seen.insert(key, at.to_owned());
        let r = match kind.as_str() {
            "Namespace" => typed::<K8sNamespace>(v).map(|n| self.namespace(&n.metadata)),
            "Node" => typed::<K8sNode>(v).and_then(|n| {
                let node = node(&n)?;
                self.cluster.nodes.push(node);
                Ok(())
            }),
            "ClusterNetworkPolicy" => {
                self.cluster_policy(at, &object, &api, &v);
                Ok(())
            }
            "NetworkPolicy" => typed::<NetworkPolicy>(v).and_then(|np| {
                let p = Policy::from_k8s(&np, &ns).map_err(|e| (e.field, e.message))?;
                self.cluster.policies.push(p);
                Ok(())
            }),
            "Pod" => typed::<K8sPod>(v).and_then(|p| self.pod(&p, &ns)),
            "Service" => typed::<K8sService>(v).and_then(|svc| {
                let s = service(&svc, &ns, &name)?;
                self.cluster.services.push(s);
                Ok(())
            }),
            "Deployment" => typed::<Deployment>(v).and_then(|d| {
                self.deployments.insert((ns.clone(), name.clone()));
                self.template(
                    &ns,
                    &name,
                    "Deployment",
                    d.spec.as_ref().map(|s| &s.template),
                    "spec.template",
                )
            }),
            "StatefulSet" => typed::<StatefulSet>(v).and_then(|d| {
                self.template(
                    &ns,
                    &name,
                    "StatefulSet",
                    d.spec.as_ref().map(|s| &s.template),
                    "spec.template",
                )
            }),
            "DaemonSet" => typed::<DaemonSet>(v).and_then(|d| {
                self.template(
                    &ns,
                    &name,
                    "DaemonSet",
                    d.spec.as_ref().map(|s| &s.template),
                    "spec.template",
                )
            }),
            "ReplicaSet" => typed::<ReplicaSet>(v).and_then(|rs| self.replicaset(&rs, &ns, &name)),
            "Job" => typed::<Job>(v).and_then(|j| {
                if let Some(owner) = cronjob_owner(&j.metadata) {
                    self.jobs_by_cronjob
                        .insert((ns.clone(), name.clone()), owner);
                }
                self.template(
                    &ns,
                    &name,
                    "Job",
                    j.spec.as_ref().map(|s| &s.template),
                    "spec.template",
                )
            }),
            "CronJob" => typed::<CronJob>(v).and_then(|c| {
                let t = c
                    .spec
                    .as_ref()
                    .and_then(|s| s.job_template.spec.as_ref())
                    .map(|s| &s.template);
                self.template(&ns, &name, "CronJob", t, "spec.jobTemplate.spec.template")
            }),
            _ => Ok(()),
        };
        if let Err((field, message)) = r {
            self.diags.push(at, &object, &field, message);
        }
        for (field, message) in std::mem::take(&mut self.skipped_ports) {
            self.diags.push(at, &object, &field, message);
        }
    }

    /// A ClusterNetworkPolicy: every problem is reported; fail-closed peers are warnings.
    fn cluster_policy(&mut self, at: &str, object: &str, api: &str, v: &Value) {
        if api != api::cluster_network_policy::API_VERSION {
            self.diags.push(
                at,
                object,
                "apiVersion",
                format!(
                    "septa reads ClusterNetworkPolicy as {}, not {api}",
                    api::cluster_network_policy::API_VERSION
                ),
            );
            return;
        }
        match cnp::validate(v, UnknownPeers::Error) {
            Ok((p, warnings)) => {
                for (field, message) in warnings {
                    self.diags.warn(at, object, &field, message);
                }
                self.diags.warn(
                    at,
                    object,
                    "",
                    "evaluated by connlist, diff and the reference evaluator; this version's \
                     data path does not enforce ClusterNetworkPolicies yet",
                );
                self.cluster.cluster_policies.push(p);
            }
            Err(errors) => {
                for (field, message) in errors {
                    self.diags.push(at, object, &field, message);
                }
            }
        }
    }

    fn namespace(&mut self, meta: &ObjectMeta) {
        let name = meta.name.clone().unwrap_or_default();
        let mut labels: Labels = meta.labels.clone().unwrap_or_default();
        labels.insert(NAMESPACE_NAME_LABEL.into(), name.clone());
        self.cluster
            .namespaces
            .insert(name.clone(), Namespace { name, labels });
    }

    fn pod(&mut self, p: &K8sPod, ns: &str) -> Result<(), (String, String)> {
        let pod = pod(p, ns, &mut self.skipped_ports)?;
        self.cluster.pods.push(pod);
        Ok(())
    }

    fn template(
        &mut self,
        ns: &str,
        name: &str,
        kind: &str,
        t: Option<&PodTemplateSpec>,
        field: &str,
    ) -> Result<(), (String, String)> {
        let t = t.ok_or((field.to_owned(), "missing".to_owned()))?;
        let labels = t
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let spec = t
            .spec
            .as_ref()
            .ok_or((format!("{field}.spec"), "missing".to_owned()))?;
        let w = WorkloadRef {
            namespace: ns.into(),
            name: name.into(),
            kind: kind.into(),
        };
        let pod = pod_from_spec(
            ns,
            name,
            w,
            labels,
            spec,
            &format!("{field}.spec"),
            &mut self.skipped_ports,
        );
        self.cluster.pods.push(pod);
        Ok(())
    }

    fn replicaset(
        &mut self,
        rs: &ReplicaSet,
        ns: &str,
        name: &str,
    ) -> Result<(), (String, String)> {
        let owner = rs
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.kind == "Deployment")
            .map(|o| o.name.clone());
        let t = rs.spec.as_ref().and_then(|s| s.template.as_ref());
        match owner {
            Some(dep) => {
                // Reported as its Deployment; dropped in finish() if the Deployment is present.
                let before = self.cluster.pods.len();
                self.template(ns, &dep, "Deployment", t, "spec.template")?;
                let pod = self.cluster.pods.remove(before);
                self.owned_replicasets.push((ns.to_owned(), dep, pod));
                Ok(())
            }
            None => self.template(ns, name, "ReplicaSet", t, "spec.template"),
        }
    }

    fn finish(mut self) -> (Cluster, Diagnostics) {
        for (ns, dep, pod) in std::mem::take(&mut self.owned_replicasets) {
            if !self.deployments.contains(&(ns, dep)) {
                self.cluster.pods.push(pod);
            }
        }
        // Pods owned by Jobs of a CronJob are reported as the CronJob.
        for p in &mut self.cluster.pods {
            if p.workload.kind == "Job" {
                if let Some(cj) = self
                    .jobs_by_cronjob
                    .get(&(p.namespace.clone(), p.workload.name.clone()))
                {
                    p.workload = WorkloadRef {
                        namespace: p.namespace.clone(),
                        name: cj.clone(),
                        kind: "CronJob".into(),
                    };
                }
            }
        }
        // Real pods stand for their workload; its template is then only a duplicate.
        let real: BTreeSet<WorkloadRef> = self
            .cluster
            .pods
            .iter()
            .filter(|p| p.name != p.workload.name || p.workload.kind == "Pod")
            .map(|p| p.workload.clone())
            .collect();
        self.cluster.pods.retain(|p| {
            !(p.name == p.workload.name && p.workload.kind != "Pod" && real.contains(&p.workload))
        });
        // Namespaces used but never declared exist with their name label.
        let used: BTreeSet<String> = self
            .cluster
            .pods
            .iter()
            .map(|p| p.namespace.clone())
            .chain(self.cluster.policies.iter().map(|p| p.namespace.clone()))
            .collect();
        for ns in used {
            self.cluster
                .namespaces
                .entry(ns.clone())
                .or_insert_with(|| Namespace {
                    name: ns.clone(),
                    labels: Labels::from([(NAMESPACE_NAME_LABEL.to_owned(), ns)]),
                });
        }
        self.cluster
            .pods
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        self.cluster
            .policies
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        self.cluster
            .services
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        self.cluster
            .cluster_policies
            .sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        self.cluster.nodes.sort_by(|a, b| a.name.cmp(&b.name));
        (self.cluster, self.diags)
    }
}

/// A Service as the model keeps it; an error names the field path and what is wrong with it.
pub fn service(svc: &K8sService, ns: &str, name: &str) -> Result<Service, (String, String)> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let spec = svc
        .spec
        .as_ref()
        .ok_or(("spec".to_owned(), "missing".to_owned()))?;
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let f = format!("spec.ports[{i}]");
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        let protocol = Protocol::parse(proto).ok_or((
            format!("{f}.protocol"),
            format!("unknown protocol {proto:?}"),
        ))?;
        if !(1..=65535).contains(&p.port) {
            return Err((
                format!("{f}.port"),
                format!("port {} is outside 1-65535", p.port),
            ));
        }
        let target = match &p.target_port {
            None => TargetPort::Number(p.port as u16),
            Some(IntOrString::Int(n)) if (1..=65535).contains(n) => TargetPort::Number(*n as u16),
            Some(IntOrString::Int(n)) => {
                return Err((
                    format!("{f}.targetPort"),
                    format!("port {n} is outside 1-65535"),
                ))
            }
            Some(IntOrString::String(s)) => TargetPort::Named(s.clone()),
        };
        ports.push(ServicePort {
            name: p.name.clone(),
            protocol,
            port: p.port as u16,
            target,
            node_port: match p.node_port {
                None | Some(0) => None,
                Some(n) if (1..=65535).contains(&n) => Some(n as u16),
                Some(n) => {
                    return Err((
                        format!("{f}.nodePort"),
                        format!("port {n} is outside 1-65535"),
                    ))
                }
            },
        });
    }
    let mut cluster_ips = Vec::new();
    for (i, s) in spec
        .cluster_ip
        .iter()
        .chain(spec.cluster_ips.iter().flatten())
        .enumerate()
    {
        if s == "None" || s.is_empty() {
            continue;
        }
        let ip: IpAddr = s
            .parse()
            .map_err(|_| (format!("spec.clusterIPs[{i}]"), format!("invalid IP {s:?}")))?;
        if !cluster_ips.contains(&ip) {
            cluster_ips.push(ip);
        }
    }
    let mut external_ips = Vec::new();
    let lb = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref());
    let external = spec
        .external_ips
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, s)| (format!("spec.externalIPs[{i}]"), s))
        .chain(lb.into_iter().flatten().enumerate().filter_map(|(i, g)| {
            g.ip.as_ref()
                .map(|s| (format!("status.loadBalancer.ingress[{i}].ip"), s))
        }));
    for (f, s) in external {
        let ip: IpAddr = s.parse().map_err(|_| (f, format!("invalid IP {s:?}")))?;
        if !external_ips.contains(&ip) {
            external_ips.push(ip);
        }
    }
    Ok(Service {
        namespace: ns.into(),
        name: name.into(),
        selector: spec.selector.clone().unwrap_or_default(),
        cluster_ips,
        ports,
        external_ips,
        backends: None,
    })
}

/// What septa does with a kind of a group.
enum KindUse {
    /// Decoded and analysed.
    Analysed,
    /// A Kubernetes kind septa has no use for: skipped.
    Other,
    /// A policy kind of a group septa analyses that it does not enforce yet: a warning.
    NotEnforced,
    /// No such kind in a group septa analyses (a misspelling): an error listing the kinds.
    Unknown(&'static str),
}

fn kind_in_group(group: &str, kind: &str) -> KindUse {
    let analysed: &[&str] = match group {
        "" => &["Namespace", "Service", "Pod", "Node"],
        "apps" => &["Deployment", "ReplicaSet", "StatefulSet", "DaemonSet"],
        "batch" => &["Job", "CronJob"],
        "networking.k8s.io" => &["NetworkPolicy"],
        "policy.networking.k8s.io" => &["ClusterNetworkPolicy"],
        _ => &[],
    };
    if analysed.contains(&kind) {
        return KindUse::Analysed;
    }
    match group {
        "networking.k8s.io" => match kind {
            "Ingress" | "IngressClass" | "IPAddress" | "ServiceCIDR" => KindUse::Other,
            _ => KindUse::Unknown(
                "NetworkPolicy; Ingress, IngressClass, IPAddress, ServiceCIDR are not analysed",
            ),
        },
        "policy.networking.k8s.io" => match kind {
            "AdminNetworkPolicy" | "BaselineAdminNetworkPolicy" => KindUse::NotEnforced,
            _ => KindUse::Unknown(
                "ClusterNetworkPolicy, AdminNetworkPolicy, BaselineAdminNetworkPolicy",
            ),
        },
        _ => KindUse::Other,
    }
}

/// The product whose policy group this is, if it is another network policy engine's.
fn foreign_policy(group: &str) -> Option<&'static str> {
    match group {
        "cilium.io" => Some("Cilium"),
        "crd.projectcalico.org" | "projectcalico.org" => Some("Calico"),
        "crd.antrea.io" => Some("Antrea"),
        _ => None,
    }
}

/// Decode `v` as `T`, strictly: k8s-openapi's types drop unknown fields, so the typed object
/// is serialized again and the first input field it did not keep is an error.
fn typed<T: DeserializeOwned + Serialize>(v: Value) -> Result<T, (String, String)> {
    let t: T = serde_path_to_error::deserialize(&v).map_err(|e| {
        let path = e.path().to_string();
        (
            if path == "." { String::new() } else { path },
            e.into_inner().to_string(),
        )
    })?;
    let kept = serde_json::to_value(&t).map_err(|e| (String::new(), e.to_string()))?;
    if let Some((path, field)) = dropped_field(&v, &kept, "") {
        return Err((
            path,
            format!("unknown field {field:?} (misspelled? the API server rejects it too)"),
        ));
    }
    Ok(t)
}

/// The first field (path, name) of `input` that `kept` does not have. Nulls are absent values.
fn dropped_field(input: &Value, kept: &Value, at: &str) -> Option<(String, String)> {
    match (input, kept) {
        (Value::Object(i), Value::Object(k)) => i.iter().find_map(|(name, iv)| {
            if iv.is_null() {
                return None;
            }
            let path = if at.is_empty() {
                name.clone()
            } else {
                format!("{at}.{name}")
            };
            match k.get(name) {
                None => Some((path, name.clone())),
                Some(kv) => dropped_field(iv, kv, &path),
            }
        }),
        (Value::Array(i), Value::Array(k)) => i
            .iter()
            .zip(k)
            .enumerate()
            .find_map(|(n, (iv, kv))| dropped_field(iv, kv, &format!("{at}[{n}]"))),
        _ => None,
    }
}

/// A Node as `nodes` peers see it: its labels and its internal and external addresses.
pub fn node(n: &K8sNode) -> Result<NodeInfo, (String, String)> {
    let mut ips = Vec::new();
    let addresses = n.status.as_ref().and_then(|s| s.addresses.as_ref());
    for (i, a) in addresses.into_iter().flatten().enumerate() {
        if a.type_ != "InternalIP" && a.type_ != "ExternalIP" {
            continue;
        }
        let ip: IpAddr = a.address.parse().map_err(|_| {
            (
                format!("status.addresses[{i}].address"),
                format!("invalid IP {:?}", a.address),
            )
        })?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    Ok(NodeInfo {
        name: n.metadata.name.clone().unwrap_or_default(),
        labels: n.metadata.labels.clone().unwrap_or_default(),
        ips,
    })
}

fn cronjob_owner(meta: &ObjectMeta) -> Option<String> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "CronJob")
        .map(|o| o.name.clone())
}

/// A Pod object as the model keeps it: labels, owner workload, named ports, addresses. A
/// container port that is invalid is left out and added to `skipped` as (field, problem); an
/// invalid address is an error naming its field.
pub fn pod(
    p: &K8sPod,
    ns: &str,
    skipped: &mut Vec<(String, String)>,
) -> Result<Pod, (String, String)> {
    let name = p.metadata.name.clone().unwrap_or_default();
    let labels = p.metadata.labels.clone().unwrap_or_default();
    let workload = owner_of(&p.metadata, ns, &name, &labels);
    let spec = p
        .spec
        .as_ref()
        .ok_or(("spec".to_owned(), "missing".to_owned()))?;
    let mut ips = Vec::new();
    if let Some(st) = &p.status {
        let listed = st.pod_ips.iter().flatten().map(|i| i.ip.clone());
        for (i, s) in st.pod_ip.clone().into_iter().chain(listed).enumerate() {
            let ip: IpAddr = s
                .parse()
                .map_err(|_| (format!("status.podIPs[{i}]"), format!("invalid IP {s:?}")))?;
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    let mut pod = pod_from_spec(ns, &name, workload, labels, spec, "spec", skipped);
    pod.ips = ips;
    Ok(pod)
}

/// The workload a real pod belongs to, from its owner references.
fn owner_of(meta: &ObjectMeta, ns: &str, name: &str, labels: &Labels) -> WorkloadRef {
    let mk = |n: &str, k: &str| WorkloadRef {
        namespace: ns.into(),
        name: n.into(),
        kind: k.into(),
    };
    // A static pod's mirror is owned by its Node, which is no workload; an owner without kind
    // or name names nothing. Such pods are reported as themselves.
    let Some(o) = meta
        .owner_references
        .iter()
        .flatten()
        .filter(|o| !o.kind.is_empty() && !o.name.is_empty() && o.kind != "Node")
        .find(|o| o.controller == Some(true))
        .or_else(|| {
            meta.owner_references
                .iter()
                .flatten()
                .find(|o| !o.kind.is_empty() && !o.name.is_empty() && o.kind != "Node")
        })
    else {
        return mk(name, "Pod");
    };
    match o.kind.as_str() {
        // ReplicaSets made by a Deployment are named <deployment>-<pod-template-hash>.
        "ReplicaSet" => match labels
            .get("pod-template-hash")
            .and_then(|h| o.name.strip_suffix(&format!("-{h}")))
        {
            Some(dep) => mk(dep, "Deployment"),
            None => mk(&o.name, "ReplicaSet"),
        },
        k => mk(&o.name, k),
    }
}

/// The pod a spec describes. A container port that is invalid (outside 1-65535, unknown
/// protocol) is left out and added to `skipped` as (field, problem); the pod stays.
fn pod_from_spec(
    ns: &str,
    name: &str,
    workload: WorkloadRef,
    labels: Labels,
    spec: &PodSpec,
    field: &str,
    skipped: &mut Vec<(String, String)>,
) -> Pod {
    let mut named_ports = BTreeMap::new();
    let containers = spec.containers.iter().map(|c| ("containers", c)).chain(
        spec.init_containers
            .iter()
            .flatten()
            .map(|c| ("initContainers", c)),
    );
    for (ci, (list, c)) in containers.enumerate() {
        for (pi, p) in c.ports.iter().flatten().enumerate() {
            let f = format!("{field}.{list}[{ci}].ports[{pi}]");
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            let Some(proto) = Protocol::parse(proto) else {
                skipped.push((
                    format!("{f}.protocol"),
                    format!("unknown protocol {proto:?}; this port is left out"),
                ));
                continue;
            };
            if !(1..=65535).contains(&p.container_port) {
                skipped.push((
                    format!("{f}.containerPort"),
                    format!(
                        "port {} is outside 1-65535; this port is left out",
                        p.container_port
                    ),
                ));
                continue;
            }
            if let Some(pname) = &p.name {
                named_ports.insert(pname.clone(), (proto, p.container_port as u16));
            }
        }
    }
    Pod {
        namespace: ns.into(),
        name: name.into(),
        workload,
        labels,
        named_ports,
        ips: Vec::new(),
        host_network: spec.host_network.unwrap_or(false),
    }
}
