//! A fake Kubernetes API server, real enough for kube-rs's client and
//! `kube::runtime::watcher` to run against it through a kubeconfig: the same URL paths,
//! JSON, `Status` errors, paginated lists and watch protocol as kube-apiserver, over plain
//! HTTP/1 on loopback (or on a listener the caller made inside a network namespace).
//!
//! It owns three things: the pure [`store`] (objects as JSON, one global
//! resourceVersion, a bounded history of changes, list snapshots for continue tokens),
//! [`selector`] parsing, and the hyper shell in `server` (authentication, an optional
//! RBAC-like authorizer, routing, verbs, watch streams). [`FakeApi`] runs that shell on its
//! own thread and tokio runtime, so sync tests and async callers use it alike, and gives
//! tests typed helpers to write the cluster's state and fault controls to break the API
//! (stop, restart, cut watches, compact the history, slow every answer).
//!
//! Protocol notes, as the real server behaves:
//! - A list answers `{"kind":"PodList","metadata":{"resourceVersion","continue"},"items"}`;
//!   `limit`/`continue` pages a snapshot taken at the first page; a continue token from
//!   before a [`FakeApi::compact`] gets 410 `Expired`.
//! - A watch replays the history after its `resourceVersion`; one older than the history
//!   gets a 200 response carrying one `ERROR` event with a 410 `Expired` `Status`, which
//!   makes kube-rs's watcher relist. `resourceVersion` `0` or empty starts with the current
//!   objects as `ADDED` events. `allowWatchBookmarks=true` gets a `BOOKMARK` every
//!   [`FakeApi::set_bookmark_interval`] (default 1 s). `timeoutSeconds` ends the stream
//!   cleanly.
//! - Streaming lists (`sendInitialEvents=true`, kube-rs's `watcher::Config::streaming_lists`)
//!   are supported: the current objects as `ADDED`, then a `BOOKMARK` annotated
//!   `k8s.io/initial-events-end: "true"`, then changes.
//! - A watch event that moves an object into or out of a selector is `ADDED` or `DELETED`
//!   for that watch.
//! - `Accept: ...;as=PartialObjectMetadata` (kube-rs's `Api<PartialObjectMeta<K>>`) gets
//!   metadata only.
//! - Bearer tokens name users ([`FakeApi::add_user`]); anything else gets 401. An optional
//!   [`Rbac`] answers 403 with RBAC's message. `POST .../authentication.k8s.io/v1/tokenreviews`
//!   reviews a token against the same users (for a controller that authenticates agents).
//! - `/version`, `/api`, `/apis`, `/api/v1` and `/apis/GROUP[/VERSION]` discovery are served.
//!
//! For tests: one store can be served on several listeners ([`FakeApi::add_listener`], e.g.
//! one inside each node's network namespace); [`FakeApi::wait_for_watches`] says when a
//! watcher is in place (watchers only make requests while polled), and
//! [`FakeApi::requests`] logs every request with its user, verb and status.
//!
//! Simplifications: finalizers are not honoured (deletes are immediate); namespaces need
//! not exist for objects in them; strategic merge patches and server-side apply are merge
//! patches (no field ownership, no conflicts); a list at an exact past resourceVersion
//! other than the latest gets 410; core and `events.k8s.io` Events are stored apart.

pub mod selector;
mod server;
pub mod store;

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use serde_json::Value;

use server::{lock, Shared};
pub use store::{ResourceType, Store};

/// One logged request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// The authenticated user, `None` when authentication failed.
    pub user: Option<String>,
    /// The Kubernetes verb (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`), or the lower-case HTTP method when the path was not understood.
    pub verb: String,
    /// The path with its query string, as sent.
    pub path: String,
    /// The HTTP status answered (200 for a watch that started).
    pub status: u16,
}

/// One allow rule of [`Rbac`]: like a ClusterRole rule bound to one user (or a Role rule
/// bound in one namespace). `"*"` matches any verb, group or resource; a resource
/// `"*/status"` matches every status subresource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The username the rule is bound to.
    pub user: String,
    /// `None` for a cluster-wide binding; `Some(ns)` allows only requests in `ns`.
    pub namespace: Option<String>,
    /// Verbs (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`).
    pub verbs: Vec<String>,
    /// API groups, `""` for the core group.
    pub api_groups: Vec<String>,
    /// Resources, `plural` or `plural/subresource`.
    pub resources: Vec<String>,
    /// When not empty, the rule allows only requests for objects of these names (never a
    /// list, watch or create, which name no object).
    pub resource_names: Vec<String>,
}

/// An authorizer: a request is allowed when some rule allows it; otherwise it gets 403
/// `Forbidden` with the message Kubernetes's RBAC gives. Non-resource paths (`/version`,
/// discovery) are always allowed to authenticated users.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rbac {
    /// The allow rules.
    pub rules: Vec<Rule>,
}

fn owned(xs: &[&str]) -> Vec<String> {
    xs.iter().map(|s| s.to_string()).collect()
}

impl Rbac {
    /// No rules: everything is denied.
    pub fn new() -> Self {
        Self::default()
    }

    /// Allow `user` the `verbs` on `resources` of `api_groups`, cluster-wide.
    pub fn allow(
        mut self,
        user: &str,
        verbs: &[&str],
        api_groups: &[&str],
        resources: &[&str],
    ) -> Self {
        self.rules.push(Rule {
            user: user.into(),
            namespace: None,
            verbs: owned(verbs),
            api_groups: owned(api_groups),
            resources: owned(resources),
            resource_names: Vec::new(),
        });
        self
    }

    /// Allow as [`Rbac::allow`], but only in `namespace` (a RoleBinding).
    pub fn allow_in(
        mut self,
        namespace: &str,
        user: &str,
        verbs: &[&str],
        api_groups: &[&str],
        resources: &[&str],
    ) -> Self {
        self.rules.push(Rule {
            user: user.into(),
            namespace: Some(namespace.into()),
            verbs: owned(verbs),
            api_groups: owned(api_groups),
            resources: owned(resources),
            resource_names: Vec::new(),
        });
        self
    }

    /// The rules that RBAC objects (ClusterRoles, Roles, ClusterRoleBindings, RoleBindings,
    /// as `helm template` renders them) give the ServiceAccount `namespace/name`: a
    /// ClusterRoleBinding grants its ClusterRole's rules cluster-wide, a RoleBinding grants
    /// its Role's (or ClusterRole's) rules in its namespace. Other kinds are ignored.
    pub fn from_manifests(docs: &[Value], namespace: &str, name: &str) -> anyhow::Result<Self> {
        let user = format!("system:serviceaccount:{namespace}:{name}");
        let strings = |v: &Value, key: &str| -> Vec<String> {
            v[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        };
        let role = |kind: &str, role_ns: Option<&str>, role_name: &str| {
            docs.iter().find(|d| {
                d["kind"] == kind
                    && d["metadata"]["name"] == role_name
                    && role_ns.is_none_or(|ns| d["metadata"]["namespace"] == ns)
            })
        };
        let mut rbac = Rbac::new();
        for b in docs {
            let cluster_wide = match b["kind"].as_str() {
                Some("ClusterRoleBinding") => true,
                Some("RoleBinding") => false,
                _ => continue,
            };
            let bound = b["subjects"].as_array().into_iter().flatten().any(|s| {
                s["kind"] == "ServiceAccount" && s["name"] == name && s["namespace"] == namespace
            });
            if !bound {
                continue;
            }
            let binding_ns = b["metadata"]["namespace"].as_str().map(str::to_owned);
            let role_kind = b["roleRef"]["kind"].as_str().unwrap_or_default();
            let role_name = b["roleRef"]["name"].as_str().unwrap_or_default();
            let found = match role_kind {
                "ClusterRole" => role("ClusterRole", None, role_name),
                "Role" => role("Role", binding_ns.as_deref(), role_name),
                other => anyhow::bail!(
                    "binding {:?}: roleRef kind {other:?}",
                    b["metadata"]["name"]
                ),
            }
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "binding {:?}: no {role_kind} {role_name:?} among the manifests",
                    b["metadata"]["name"]
                )
            })?;
            for r in found["rules"].as_array().into_iter().flatten() {
                rbac.rules.push(Rule {
                    user: user.clone(),
                    namespace: if cluster_wide {
                        None
                    } else {
                        binding_ns.clone()
                    },
                    verbs: strings(r, "verbs"),
                    api_groups: strings(r, "apiGroups"),
                    resources: strings(r, "resources"),
                    resource_names: strings(r, "resourceNames"),
                });
            }
        }
        Ok(rbac)
    }

    /// Whether `user` may `verb` the `resource` (`plural` or `plural/sub`) of `group`, in
    /// `namespace` (`None`: a cluster-scoped or all-namespaces request).
    pub fn allows(
        &self,
        user: &str,
        verb: &str,
        group: &str,
        resource: &str,
        namespace: Option<&str>,
    ) -> bool {
        self.allows_named(user, verb, group, resource, namespace, None)
    }

    /// [`Rbac::allows`] for a request that names one object (`get`, `update`, `patch`,
    /// `delete`): rules with `resourceNames` allow it only for those names.
    pub fn allows_named(
        &self,
        user: &str,
        verb: &str,
        group: &str,
        resource: &str,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> bool {
        let any = |xs: &[String], x: &str| xs.iter().any(|v| v == "*" || v == x);
        let res = |xs: &[String]| {
            xs.iter().any(|r| {
                r == "*"
                    || r == resource
                    || r.strip_prefix("*/")
                        .is_some_and(|sub| resource.split_once('/').is_some_and(|(_, s)| s == sub))
            })
        };
        self.rules.iter().any(|r| {
            r.user == user
                && r.namespace
                    .as_deref()
                    .is_none_or(|ns| Some(ns) == namespace)
                && any(&r.verbs, verb)
                && any(&r.api_groups, group)
                && res(&r.resources)
                && (r.resource_names.is_empty()
                    || name.is_some_and(|n| r.resource_names.iter().any(|x| x == n)))
        })
    }
}

/// The acceptor of a serving [`FakeApi`]: stop it and wait for it to close the listener.
struct Serving {
    stop: tokio::sync::oneshot::Sender<()>,
    done: std::sync::mpsc::Receiver<()>,
}

/// A fake Kubernetes API server on its own thread and tokio runtime; dropping it stops it.
pub struct FakeApi {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    addr: SocketAddr,
    /// Every address served, the first one `addr`: what `restart` binds again.
    endpoints: Mutex<Vec<Endpoint>>,
    /// The acceptors while serving; empty when stopped.
    serving: Mutex<Vec<Serving>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// An address served, and the network namespace of the listener it was first served on (to
/// serve there again on `restart`).
struct Endpoint {
    addr: SocketAddr,
    netns: Option<OwnedFd>,
}

/// `ioctl` asking for a socket's network namespace (linux/sockios.h); libc lacks it.
const SIOCGSKNS: libc::c_ulong = 0x894C;

/// The network namespace a socket was made in, when the kernel tells (it needs
/// CAP_NET_ADMIN; without it the caller's namespace is assumed on restart).
fn socket_netns(l: &std::net::TcpListener) -> Option<OwnedFd> {
    // SAFETY: SIOCGSKNS takes no argument and returns a new descriptor or -1; the listener's
    // descriptor is valid for the call.
    let fd = unsafe { libc::ioctl(l.as_raw_fd(), SIOCGSKNS as _) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Bind `addr` in the network namespace `netns` (the caller's when `None` or the same), on
/// a short-lived thread so no other thread changes namespace.
fn bind_in(netns: Option<&OwnedFd>, addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    use std::os::unix::fs::MetadataExt;
    std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<std::net::TcpListener> {
            if let Some(ns) = netns {
                let target = std::fs::metadata(format!("/proc/self/fd/{}", ns.as_raw_fd()))?.ino();
                let here = std::fs::metadata("/proc/thread-self/ns/net")?.ino();
                if target != here {
                    // SAFETY: `ns` is a valid namespace descriptor; setns changes only this
                    // thread, which ends after the bind.
                    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(std::io::Error::last_os_error())
                            .context("setns to the listener's network namespace");
                    }
                }
            }
            std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr} again"))
        })
        .join()
        .map_err(|_| anyhow!("the bind thread panicked"))?
    })
}

impl FakeApi {
    /// Serve on `listener` (made by the caller, possibly inside another network namespace).
    pub fn start(listener: std::net::TcpListener) -> anyhow::Result<FakeApi> {
        let addr = listener.local_addr()?;
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("fake-kube-api".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(rt.handle().clone()));
                rt.block_on(async {
                    let _ = shutdown_rx.await;
                });
            })?;
        let runtime = handle_rx
            .recv()
            .map_err(|_| anyhow!("the fake API's thread ended"))?
            .context("building the fake API's runtime")?;
        let api = FakeApi {
            shared: Arc::new(Shared::new(Store::default())),
            runtime,
            addr,
            endpoints: Mutex::new(Vec::new()),
            serving: Mutex::new(Vec::new()),
            shutdown: Some(shutdown),
            thread: Some(thread),
        };
        api.add_listener(listener)?;
        Ok(api)
    }

    /// Serve on 127.0.0.1 at a free port.
    pub fn start_local() -> anyhow::Result<FakeApi> {
        Self::start(std::net::TcpListener::bind("127.0.0.1:0")?)
    }

    fn serve(&self, listener: std::net::TcpListener) -> anyhow::Result<()> {
        listener.set_nonblocking(true)?;
        let listener = {
            let _in_runtime = self.runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let (done_tx, done) = std::sync::mpsc::channel();
        self.runtime.spawn(server::accept_loop(
            self.shared.clone(),
            listener,
            stop_rx,
            done_tx,
        ));
        lock(&self.serving).push(Serving { stop, done });
        Ok(())
    }

    /// Serve the same store on one more listener, e.g. one made inside each node's network
    /// namespace, so agents there reach the API on their own loopback. Returns its address
    /// (see [`FakeApi::kubeconfig_at`]). [`FakeApi::stop`] and [`FakeApi::restart`] act on
    /// every listener.
    pub fn add_listener(&self, listener: std::net::TcpListener) -> anyhow::Result<SocketAddr> {
        let addr = listener.local_addr()?;
        let netns = socket_netns(&listener);
        self.serve(listener)?;
        lock(&self.endpoints).push(Endpoint { addr, netns });
        Ok(addr)
    }

    /// The address served (the first listener's).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Write a kubeconfig at `path`: one cluster at [`FakeApi::url`], one user with the
    /// bearer `token`, and a current context joining them (namespace `default`). The token
    /// must be known ([`FakeApi::add_user`]) for requests to pass.
    pub fn kubeconfig(&self, path: &Path, token: &str) -> anyhow::Result<()> {
        self.kubeconfig_at(path, token, self.addr)
    }

    /// [`FakeApi::kubeconfig`] for the server at `addr` (one of [`FakeApi::add_listener`]'s).
    pub fn kubeconfig_at(&self, path: &Path, token: &str, addr: SocketAddr) -> anyhow::Result<()> {
        // JSON strings are YAML double-quoted scalars: any token is quoted safely.
        let server = serde_json::to_string(&format!("http://{addr}"))?;
        let token = serde_json::to_string(token)?;
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: septa-fake\n  cluster:\n    server: {server}\nusers:\n- name: septa-fake-user\n  user:\n    token: {token}\ncontexts:\n- name: septa-fake\n  context:\n    cluster: septa-fake\n    user: septa-fake-user\n    namespace: default\ncurrent-context: septa-fake\n"
        );
        std::fs::write(path, yaml).with_context(|| format!("writing {}", path.display()))
    }

    /// Accept bearer `token` as `username`.
    pub fn add_user(&self, token: &str, username: &str) {
        lock(&self.shared.users).insert(token.into(), username.into());
    }

    /// Authorize with `rbac`, or allow every authenticated request (`None`, the default).
    pub fn set_rbac(&self, rbac: Option<Rbac>) {
        *lock(&self.shared.rbac) = rbac;
    }

    /// Serve one more resource type (or replace one with the same group, version, plural).
    pub fn register(&self, rt: ResourceType) {
        lock(&self.shared.store).register(rt);
    }

    fn kind_index(&self, api_version: &str, kind: &str) -> anyhow::Result<usize> {
        lock(&self.shared.store)
            .find_kind(api_version, kind)
            .ok_or_else(|| anyhow!("the fake API does not serve {api_version} {kind}"))
    }

    /// Create or replace `obj` whole (status included, no preconditions), as a kubelet or
    /// controller would have written it. Returns the new resourceVersion.
    pub fn apply<K: k8s_openapi::Resource + serde::Serialize>(
        &self,
        obj: &K,
    ) -> anyhow::Result<u64> {
        self.apply_json(K::API_VERSION, K::KIND, serde_json::to_value(obj)?)
    }

    /// [`FakeApi::apply`] for an object given as JSON (custom resources such as septa.dev's
    /// `FqdnPolicy` and `ThreatFeed`).
    pub fn apply_json(&self, api_version: &str, kind: &str, value: Value) -> anyhow::Result<u64> {
        let idx = self.kind_index(api_version, kind)?;
        self.shared
            .write(false, |st| st.put(idx, value))
            .map_err(|e| anyhow!("{}", e.message))
    }

    /// Delete a `K` (`namespace` is ignored for cluster-scoped kinds). Returns the
    /// resourceVersion of the deletion; an error if there was no such object.
    pub fn delete<K: k8s_openapi::Resource>(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<u64> {
        self.delete_json(K::API_VERSION, K::KIND, namespace, name)
    }

    /// [`FakeApi::delete`] by apiVersion and kind.
    pub fn delete_json(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<u64> {
        let key = self.key(api_version, kind, namespace, name)?;
        self.shared
            .write(false, |st| st.delete(&key).map(|_| st.rv()))
            .map_err(|e| anyhow!("{}", e.message))
    }

    fn key(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<store::Key> {
        let idx = self.kind_index(api_version, kind)?;
        let namespaced = lock(&self.shared.store).types()[idx].namespaced;
        Ok(store::Key {
            resource: idx,
            namespace: if namespaced {
                namespace.into()
            } else {
                String::new()
            },
            name: name.into(),
        })
    }

    /// The stored object, as JSON.
    pub fn get_json(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let key = self.key(api_version, kind, namespace, name).ok()?;
        lock(&self.shared.store).get(&key).map(|v| (*v).clone())
    }

    /// The stored object as a `K`; `Ok(None)` when there is none.
    pub fn get<K>(&self, namespace: &str, name: &str) -> anyhow::Result<Option<K>>
    where
        K: k8s_openapi::Resource + serde::de::DeserializeOwned,
    {
        match self.get_json(K::API_VERSION, K::KIND, namespace, name) {
            Some(v) => Ok(Some(serde_json::from_value(v)?)),
            None => Ok(None),
        }
    }

    /// Every stored object of a kind, in namespace and name order.
    pub fn list_json(&self, api_version: &str, kind: &str) -> anyhow::Result<Vec<Value>> {
        let idx = self.kind_index(api_version, kind)?;
        let st = lock(&self.shared.store);
        Ok(st
            .select(idx, &store::Selection::default())
            .iter()
            .map(|v| (**v).clone())
            .collect())
    }

    /// Every recorded Event (core `v1` and `events.k8s.io/v1`), oldest write first: what
    /// agents reported.
    pub fn events(&self) -> Vec<Value> {
        let st = lock(&self.shared.store);
        let mut evs: Vec<Value> = (0..st.types().len())
            .filter(|i| st.types()[*i].kind == "Event")
            .flat_map(|i| st.select(i, &store::Selection::default()))
            .map(|v| (*v).clone())
            .collect();
        let rv = |v: &Value| {
            v["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0)
        };
        evs.sort_by_key(rv);
        evs
    }

    /// The `.status` of an object; `resource` is a plural (`threatfeeds`) or
    /// `plural.group` (`threatfeeds.septa.dev`).
    pub fn status_of(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let st = lock(&self.shared.store);
        let idx = st
            .types()
            .iter()
            .position(|t| t.qualified() == resource || t.plural == resource)?;
        let key = store::Key {
            resource: idx,
            namespace: if st.types()[idx].namespaced {
                namespace.into()
            } else {
                String::new()
            },
            name: name.into(),
        };
        st.get(&key).and_then(|v| v.get("status").cloned())
    }

    /// The latest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared.store).rv()
    }

    /// Stop serving: close the listener (connections are refused) and every open
    /// connection, watches included. The store stays; [`FakeApi::restart`] serves it again.
    pub fn stop(&self) {
        let serving = std::mem::take(&mut *lock(&self.serving));
        for s in serving {
            let _ = s.stop.send(());
            let _ = s.done.recv_timeout(Duration::from_secs(10));
        }
        self.shared.cut_conns.send_modify(|n| *n += 1);
        let live = lock(&self.shared.live_conns);
        let _ = self
            .shared
            .conns_closed
            .wait_timeout_while(live, Duration::from_secs(10), |n| *n > 0);
        // Watch tasks notice their closed connection on the server's thread; wait for
        // them so `open_watches` is 0 when this returns.
        let mut open = self.shared.watches_open.subscribe();
        let (tx, rx) = std::sync::mpsc::channel();
        self.runtime.spawn(async move {
            let _ = open.wait_for(|n| *n == 0).await;
            let _ = tx.send(());
        });
        let _ = rx.recv_timeout(Duration::from_secs(10));
    }

    /// Serve again on the same addresses (and network namespaces) with the same store,
    /// changes made while stopped included. An error if it is serving.
    pub fn restart(&self) -> anyhow::Result<()> {
        if !lock(&self.serving).is_empty() {
            bail!("the fake API is serving already");
        }
        let endpoints = lock(&self.endpoints);
        for e in endpoints.iter() {
            if let Err(err) = bind_in(e.netns.as_ref(), e.addr).and_then(|l| self.serve(l)) {
                drop(endpoints);
                self.stop();
                return Err(err);
            }
        }
        Ok(())
    }

    /// Whether it is serving (not stopped).
    pub fn is_serving(&self) -> bool {
        !lock(&self.serving).is_empty()
    }

    /// Cut every open watch stream abruptly (the connection drops mid-stream).
    pub fn drop_watches(&self) {
        self.shared.cut_watches.send_modify(|n| *n += 1);
    }

    /// How many watch streams are open now.
    pub fn open_watches(&self) -> usize {
        *self.shared.watches_open.borrow()
    }

    /// How many watch streams have been opened since the start.
    pub fn watches_started(&self) -> u64 {
        *self.shared.watches_started.borrow()
    }

    /// Resolves once at least `n` watch streams have been opened since the start (so a
    /// test knows a watcher is in place before it cuts it); usable from any runtime.
    pub fn wait_for_watches(
        &self,
        n: u64,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.shared.watches_started.subscribe();
        async move {
            let _ = rx.wait_for(|v| *v >= n).await;
        }
    }

    /// Delay every response by `d` (a slow API); zero for none.
    pub fn set_delay(&self, d: Duration) {
        *lock(&self.shared.delay) = d;
    }

    /// How often watches that allow bookmarks get one (default 1 s); for watches started
    /// from now on.
    pub fn set_bookmark_interval(&self, d: Duration) {
        *lock(&self.shared.bookmark_interval) = d;
    }

    /// Forget the history and cut the watches: watchers resuming from their last
    /// resourceVersion get 410 Expired and must relist; continue tokens expire too.
    pub fn compact(&self) {
        lock(&self.shared.store).compact();
        self.drop_watches();
    }

    /// Keep at most `n` changes in the history (default 10 000).
    pub fn set_history_limit(&self, n: usize) {
        lock(&self.shared.store).set_history_limit(n);
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.requests).iter().cloned().collect()
    }

    /// Forget the request log.
    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop();
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
