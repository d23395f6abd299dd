//! Synthetic Kubernetes objects for the Kubernetes-mode benchmarks: a cluster of realistic
//! k8s-openapi objects as the API server sends them (pods of Deployments with everything a
//! kubelet and controllers write, Services, EndpointSlices, NetworkPolicies), deterministic
//! so every run sees the same cluster.

use std::net::Ipv4Addr;

use anyhow::Result;
use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};
use serde_json::{json, Value};

/// Pods per app (each app is a Deployment).
pub const REPLICAS: usize = 10;
/// Apps per namespace.
pub const APPS_PER_NAMESPACE: usize = 20;
/// The kubelet's default maximum: nodes are interned strings in the index.
pub const PODS_PER_NODE: usize = 110;

/// The synthetic cluster of `pods` pods.
pub struct Shape {
    /// Pods, numbered from 0; pod `i` belongs to app `i / REPLICAS`.
    pub pods: usize,
    /// Apps (Deployments), each with a Service.
    pub apps: usize,
    /// Namespaces `ns0`, `ns1`, ...
    pub namespaces: usize,
}

/// Lower-case letters and digits as Kubernetes' name generator uses them (no vowels).
const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The `len` characters Kubernetes would generate for a name, from `x`.
fn generated(mut x: u64, len: usize) -> String {
    // A multiplicative hash first, so neighbouring numbers do not share a prefix.
    x = x.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (x >> 29);
    (0..len)
        .map(|_| {
            let c = ALPHABET[(x % ALPHABET.len() as u64) as usize] as char;
            x /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

impl Shape {
    /// `pods` pods in apps of [`REPLICAS`], [`APPS_PER_NAMESPACE`] apps per namespace.
    pub fn new(pods: usize) -> Self {
        let apps = pods.div_ceil(REPLICAS);
        Self {
            pods,
            apps,
            namespaces: apps.div_ceil(APPS_PER_NAMESPACE),
        }
    }

    /// The namespace of `app`.
    pub fn namespace_of(&self, app: usize) -> String {
        format!("ns{}", app / APPS_PER_NAMESPACE)
    }

    /// The team label of `app`'s namespace.
    pub fn team_of(&self, app: usize) -> String {
        format!("team{}", (app / APPS_PER_NAMESPACE) % 10)
    }

    /// Pod `i`'s address: 10.0.0.0/8 from the bottom (outside the test bed's 10.88.0.0/16 up
    /// to 5.7 million pods).
    pub fn pod_ip(i: usize) -> Ipv4Addr {
        Ipv4Addr::from(0x0a00_0000u32 + i as u32 + 1)
    }

    /// Namespace `ns<n>`, labelled with its team.
    pub fn namespace(&self, n: usize) -> Result<Namespace> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": format!("ns{n}"), "uid": format!("{:08x}-0000-4000-8000-{:012x}", n, n),
                         "resourceVersion": "1000", "creationTimestamp": "2026-10-01T08:00:00Z",
                         "labels": {"kubernetes.io/metadata.name": format!("ns{n}"), "team": format!("team{}", n % 10)}},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"}
        }))?)
    }

    /// Pod `i` as the API server sends it; `canary` adds one label (the change events make).
    pub fn pod_json(&self, i: usize, canary: bool) -> Value {
        let app = i / REPLICAS;
        let ns = self.namespace_of(app);
        let hash = generated(app as u64, 10);
        let rs = format!("app{app}-{hash}");
        let name = format!("{rs}-{}", generated(i as u64, 5));
        let node = format!("node-{:04}", i / PODS_PER_NODE);
        let host_ip = Ipv4Addr::from(0xc0a8_0000u32 + (i / PODS_PER_NODE) as u32 + 1).to_string();
        let ip = Self::pod_ip(i).to_string();
        let created = format!(
            "2026-11-{:02}T{:02}:{:02}:{:02}Z",
            1 + app % 28,
            app % 24,
            i % 60,
            (i * 7) % 60
        );
        let tier = ["web", "api", "db"][app % 3];
        let mut labels = json!({
            "app": format!("app{app}"),
            "app.kubernetes.io/name": format!("app{app}"),
            "app.kubernetes.io/part-of": self.team_of(app),
            "app.kubernetes.io/version": format!("1.{}.{}", app % 7, app % 3),
            "tier": tier,
            "pod-template-hash": hash,
        });
        if canary {
            labels["track"] = json!("canary");
        }
        let uid = format!(
            "{:08x}-{:04x}-4{:03x}-8000-{:012x}",
            i,
            app % 65536,
            i % 4096,
            i
        );
        let probe = |path: &str| {
            json!({"httpGet": {"path": path, "port": "http", "scheme": "HTTP"},
                   "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3})
        };
        let condition = |t: &str| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": created});
        let mount = json!({"name": "kube-api-access", "readOnly": true,
                           "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"});
        let status = |c: &str, image: &str| {
            json!({"name": c, "ready": true, "restartCount": 0, "started": true,
                   "image": image, "imageID": format!("{image}@sha256:{}", "3f".repeat(32)),
                   "containerID": format!("containerd://{}", "a1".repeat(32)),
                   "state": {"running": {"startedAt": created}}})
        };
        let app_image = format!(
            "registry.example.com/team{}/app{app}:1.{}.0",
            app % 10,
            app % 7
        );
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": name, "generateName": format!("{rs}-"), "namespace": ns, "uid": uid,
                "resourceVersion": format!("{}", 100_000 + i), "creationTimestamp": created,
                "labels": labels,
                "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9090",
                                "kubectl.kubernetes.io/restartedAt": "2026-11-01T09:00:00Z"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs,
                                     "uid": format!("{:08x}-0000-4000-8000-{:012x}", app, app),
                                     "controller": true, "blockOwnerDeletion": true}],
                "managedFields": [
                    {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                     "time": created, "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:annotations": {".": {}, "f:kubectl.kubernetes.io/restartedAt": {}},
                                  "f:labels": {".": {}, "f:app": {}, "f:app.kubernetes.io/name": {}, "f:app.kubernetes.io/part-of": {},
                                               "f:app.kubernetes.io/version": {}, "f:pod-template-hash": {}, "f:tier": {}},
                                  "f:ownerReferences": {".": {}, format!("k:{{\"uid\":\"{app:08x}\"}}"): {}}},
                                  "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {".": {}, "f:image": {}, "f:name": {}, "f:ports": {}},
                                                              "k:{\"name\":\"proxy\"}": {".": {}, "f:image": {}, "f:name": {}, "f:ports": {}}},
                                             "f:dnsPolicy": {}, "f:restartPolicy": {}, "f:schedulerName": {}, "f:serviceAccountName": {}}}},
                    {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": created,
                     "fieldsType": "FieldsV1", "subresource": "status",
                     "fieldsV1": {"f:status": {"f:conditions": {}, "f:containerStatuses": {}, "f:hostIP": {}, "f:hostIPs": {},
                                               "f:phase": {}, "f:podIP": {}, "f:podIPs": {".": {}, format!("k:{{\"ip\":\"{ip}\"}}"): {}},
                                               "f:startTime": {}}}}
                ]
            },
            "spec": {
                "containers": [
                    {"name": "app", "image": app_image, "imagePullPolicy": "IfNotPresent",
                     "args": ["--listen=:8080", "--metrics=:9090"],
                     "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                               {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}],
                     "env": [{"name": "LOG_LEVEL", "value": "info"},
                             {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}],
                     "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                     "readinessProbe": probe("/ready"), "livenessProbe": probe("/healthz"),
                     "volumeMounts": [mount.clone()],
                     "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"},
                    {"name": "proxy", "image": "registry.example.com/platform/proxy:2.3.1", "imagePullPolicy": "IfNotPresent",
                     "ports": [{"name": "proxy-admin", "containerPort": 15000, "protocol": "TCP"}],
                     "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
                     "volumeMounts": [mount],
                     "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"}
                ],
                "volumes": [{"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}}],
                "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
                "serviceAccountName": "default", "serviceAccount": "default", "nodeName": node,
                "securityContext": {}, "schedulerName": "default-scheduler",
                "tolerations": [
                    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
                "priority": 0, "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority"
            },
            "status": {
                "phase": "Running",
                "conditions": [condition("PodReadyToStartContainers"), condition("Initialized"), condition("Ready"),
                               condition("ContainersReady"), condition("PodScheduled")],
                "hostIP": host_ip, "hostIPs": [{"ip": host_ip}], "podIP": ip, "podIPs": [{"ip": ip}],
                "startTime": created, "qosClass": "Burstable",
                "containerStatuses": [status("app", &app_image), status("proxy", "registry.example.com/platform/proxy:2.3.1")]
            }
        })
    }

    /// [`Shape::pod_json`] as a k8s-openapi Pod.
    pub fn pod(&self, i: usize, canary: bool) -> Result<Pod> {
        Ok(serde_json::from_value(self.pod_json(i, canary))?)
    }

    /// The Service of `app`, selecting its pods, and its EndpointSlice with their addresses.
    pub fn service(&self, app: usize) -> Result<(Service, EndpointSlice)> {
        let ns = self.namespace_of(app);
        let ports = json!([{"name": "http", "port": 8080, "protocol": "TCP"},
                           {"name": "metrics", "port": 9090, "protocol": "TCP"}]);
        let endpoints: Vec<Value> = (app * REPLICAS..((app + 1) * REPLICAS).min(self.pods))
            .map(|i| {
                json!({"addresses": [Self::pod_ip(i).to_string()],
                       "conditions": {"ready": true, "serving": true, "terminating": false},
                       "nodeName": format!("node-{:04}", i / PODS_PER_NODE)})
            })
            .collect();
        let cluster_ip = Ipv4Addr::from(0x0a60_0000u32 + app as u32 + 10).to_string();
        let svc = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("app{app}"), "namespace": ns},
            "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                     "selector": {"app": format!("app{app}")},
                     "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
                               {"name": "metrics", "port": 9090, "targetPort": 9090, "protocol": "TCP"}]}
        }))?;
        let slice = serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("app{app}-{}", generated(app as u64, 5)), "namespace": ns,
                         "labels": {"kubernetes.io/service-name": format!("app{app}")}},
            "addressType": "IPv4", "endpoints": endpoints, "ports": ports
        }))?;
        Ok((svc, slice))
    }

    /// Policy `p` isolates one app: ingress from another app of a team's namespaces on a named
    /// and a numbered port, and from the namespace's web tier; egress to a third app and DNS.
    pub fn policy(&self, p: usize, policies: usize) -> Result<NetworkPolicy> {
        let target = p * self.apps / policies.max(1);
        let from = (target * 7 + 3) % self.apps;
        let to = (target * 13 + 5) % self.apps;
        Ok(serde_json::from_value(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": format!("app{target}-allow"), "namespace": self.namespace_of(target)},
            "spec": {
                "podSelector": {"matchLabels": {"app": format!("app{target}")}},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [
                    {"from": [{"namespaceSelector": {"matchLabels": {"team": self.team_of(from)}},
                               "podSelector": {"matchLabels": {"app": format!("app{from}")}}}],
                     "ports": [{"port": "http"}, {"protocol": "TCP", "port": 9090}]},
                    {"from": [{"podSelector": {"matchLabels": {"tier": "web"}}}], "ports": [{"port": 8080}]}
                ],
                "egress": [
                    {"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": format!("app{to}")}}}],
                     "ports": [{"port": "http"}]},
                    {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}],
                     "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}
                ]
            }
        }))?)
    }

    /// The pod the `k`-th change event modifies: spread over the cluster (7919 is prime, so
    /// coprime with any size that is not its multiple).
    pub fn changed(&self, k: usize) -> usize {
        (k * 7919) % self.pods
    }
}
