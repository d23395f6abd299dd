//! The fake API server's state, free of I/O: the served resource types, the objects (as
//! JSON), one global resourceVersion counter, a bounded history of changes for watches,
//! and the snapshots behind paginated lists.
//!
//! Every write goes through [`Store::commit`]: it bumps the resourceVersion, stamps it on
//! the object, and appends the change to the history. A watch resumes from a
//! resourceVersion `r` only while `r >= compacted` (every later change is still in the
//! history); older ones get 410 Expired, which is what makes clients relist.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::selector::{FieldSelector, LabelSelector};

/// A resource the fake serves: where it lives in the URL space and how it behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceType {
    /// API group, `""` for the core group.
    pub group: &'static str,
    /// API version within the group.
    pub version: &'static str,
    /// The plural name used in URLs (`pods`).
    pub plural: &'static str,
    /// The kind of one object (`Pod`).
    pub kind: &'static str,
    /// Namespaced (true) or cluster-scoped.
    pub namespaced: bool,
    /// Whether it has a `status` subresource: then writes to the main resource keep the
    /// stored status, and only `…/status` writes change it (as for CRDs with
    /// `subresources.status`, and for Pods, Nodes, Services and Namespaces).
    pub status: bool,
    /// Fields usable in a `fieldSelector` besides `metadata.name` and `metadata.namespace`.
    pub field_labels: &'static [&'static str],
}

impl ResourceType {
    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural` for the core group, `plural.group` otherwise (as in RBAC messages).
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// The resources every [`Store`] starts with: what septa's agent and controller watch or
/// write.
pub fn default_types() -> Vec<ResourceType> {
    const NONE: &[&str] = &[];
    let t = |group, version, plural, kind, namespaced, status, field_labels| ResourceType {
        group,
        version,
        plural,
        kind,
        namespaced,
        status,
        field_labels,
    };
    vec![
        t(
            "",
            "v1",
            "namespaces",
            "Namespace",
            false,
            true,
            &["status.phase"],
        ),
        t(
            "",
            "v1",
            "pods",
            "Pod",
            true,
            true,
            &[
                "spec.nodeName",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "status.phase",
                "status.podIP",
            ],
        ),
        t(
            "",
            "v1",
            "services",
            "Service",
            true,
            true,
            &["spec.clusterIP", "spec.type"],
        ),
        t(
            "",
            "v1",
            "nodes",
            "Node",
            false,
            true,
            &["spec.unschedulable"],
        ),
        t(
            "",
            "v1",
            "events",
            "Event",
            true,
            false,
            &[
                "involvedObject.kind",
                "involvedObject.namespace",
                "involvedObject.name",
                "involvedObject.uid",
                "reason",
                "source",
                "type",
            ],
        ),
        t(
            "",
            "v1",
            "serviceaccounts",
            "ServiceAccount",
            true,
            false,
            NONE,
        ),
        t("", "v1", "configmaps", "ConfigMap", true, false, NONE),
        t("apps", "v1", "daemonsets", "DaemonSet", true, true, NONE),
        t("apps", "v1", "deployments", "Deployment", true, true, NONE),
        t(
            "networking.k8s.io",
            "v1",
            "networkpolicies",
            "NetworkPolicy",
            true,
            false,
            NONE,
        ),
        t(
            "policy.networking.k8s.io",
            "v1alpha2",
            "clusternetworkpolicies",
            "ClusterNetworkPolicy",
            false,
            true,
            NONE,
        ),
        t(
            "discovery.k8s.io",
            "v1",
            "endpointslices",
            "EndpointSlice",
            true,
            false,
            NONE,
        ),
        t(
            "events.k8s.io",
            "v1",
            "events",
            "Event",
            true,
            false,
            &[
                "regarding.kind",
                "regarding.namespace",
                "regarding.name",
                "reason",
                "type",
            ],
        ),
        t(
            "coordination.k8s.io",
            "v1",
            "leases",
            "Lease",
            true,
            false,
            NONE,
        ),
        t(
            "septa.dev",
            "v1alpha1",
            "fqdnpolicies",
            "FqdnPolicy",
            true,
            true,
            NONE,
        ),
        t(
            "septa.dev",
            "v1alpha1",
            "threatfeeds",
            "ThreatFeed",
            false,
            true,
            NONE,
        ),
    ]
}

/// An error the API server reports as a `Status` object.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// The `Status` reason (`NotFound`, `AlreadyExists`, `Expired`, ...).
    pub reason: &'static str,
    /// The human-readable message.
    pub message: String,
    /// `details` (name, group, kind), when the error is about one object.
    pub details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn about(mut self, rt: &ResourceType, name: &str) -> Self {
        self.details = Some(json!({"name": name, "group": rt.group, "kind": rt.plural}));
        self
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 404 for a path the server does not serve.
    pub fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// 404 for a missing object.
    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", rt.qualified()),
        )
        .about(rt, name)
    }

    /// 405 for a verb the path does not take.
    pub fn method_not_allowed(method: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        )
    }

    /// 410 Expired, for a continue token or resourceVersion older than what is kept.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 415 for a body type the verb does not take.
    pub fn unsupported_media_type(ct: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json, application/merge-patch+json, application/json-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (got {ct:?})"),
        )
    }

    /// 422 Invalid.
    pub fn invalid(rt: &ResourceType, name: &str, message: impl Into<String>) -> Self {
        Self::new(
            422,
            "Invalid",
            format!(
                "{}.{} \"{name}\" is invalid: {}",
                rt.kind,
                rt.group,
                message.into()
            ),
        )
        .about(rt, name)
    }

    /// The `Status` object Kubernetes sends for this error.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

/// Where an object lives: its resource type (an index into the store's types), namespace
/// (empty for cluster-scoped) and name. Ordered as etcd orders keys, so lists come out in
/// namespace, then name order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// Index into [`Store::types`].
    pub resource: usize,
    /// Namespace, empty for cluster-scoped resources.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
}

/// What a change did, as a watch event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// Created.
    Added,
    /// Updated.
    Modified,
    /// Deleted.
    Deleted,
}

impl ChangeKind {
    /// The watch event type.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Added => "ADDED",
            ChangeKind::Modified => "MODIFIED",
            ChangeKind::Deleted => "DELETED",
        }
    }
}

/// One entry of the history.
#[derive(Clone, Debug)]
pub struct Change {
    /// The object's key.
    pub key: Key,
    /// What happened.
    pub kind: ChangeKind,
    /// The object after the change (for a deletion: the last state, at the deletion's RV).
    pub object: Arc<Value>,
    /// The object before the change (to turn MODIFIED into ADDED/DELETED for a watch whose
    /// selector the change enters or leaves).
    pub old: Option<Arc<Value>>,
    /// The resourceVersion of the change.
    pub rv: u64,
}

/// Which objects a list or watch selects.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Only this namespace (namespaced URL), or all.
    pub namespace: Option<String>,
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
}

impl Selection {
    /// Whether the object at `key` is selected.
    pub fn matches(&self, key: &Key, obj: &Value) -> bool {
        self.namespace
            .as_ref()
            .is_none_or(|ns| *ns == key.namespace)
            && self.labels.matches(obj)
            && self.fields.matches(obj)
    }

    /// The watch event a change makes for this selection, if any: a change that moves an
    /// object into the selection is ADDED and one that moves it out is DELETED, as the
    /// API server's watch cache reports them.
    pub fn event_for(&self, c: &Change) -> Option<(&'static str, Arc<Value>)> {
        let now = c.kind != ChangeKind::Deleted && self.matches(&c.key, &c.object);
        let before = match c.kind {
            ChangeKind::Added => false,
            ChangeKind::Deleted => self.matches(&c.key, &c.object),
            ChangeKind::Modified => c.old.as_ref().is_some_and(|o| self.matches(&c.key, o)),
        };
        let kind = match (before, now) {
            (false, true) => "ADDED",
            (true, true) => "MODIFIED",
            (true, false) => "DELETED",
            (false, false) => return None,
        };
        Some((kind, c.object.clone()))
    }
}

/// One page of a list.
#[derive(Clone, Debug)]
pub struct Page {
    /// The objects of this page.
    pub items: Vec<Arc<Value>>,
    /// The resourceVersion the whole list is consistent at.
    pub rv: u64,
    /// The token for the next page, if any.
    pub continue_token: Option<String>,
    /// How many objects the following pages hold.
    pub remaining: Option<u64>,
}

/// The result of a paginated list kept for its continue tokens: a consistent snapshot.
#[derive(Clone, Debug)]
struct Snapshot {
    rv: u64,
    items: Arc<Vec<Arc<Value>>>,
}

/// How many paginated lists keep their snapshot (older continue tokens expire).
const SNAPSHOTS_KEPT: usize = 256;

/// Which part of an object a write addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The object itself (spec, metadata; status kept if the type has a status
    /// subresource).
    Main,
    /// The `status` subresource: only `.status` changes.
    Status,
}

/// How a PATCH body is to be applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/merge-patch+json` (RFC 7386).
    Merge,
    /// `application/strategic-merge-patch+json`, applied as a merge patch (lists are
    /// replaced, not merged by key).
    Strategic,
    /// `application/json-patch+json` (RFC 6902).
    Json,
    /// `application/apply-patch+yaml` (server-side apply), applied as a merge of the given
    /// fields; creates the object if it is missing. No field ownership or conflicts.
    Apply,
}

/// The objects, their resourceVersions and their history.
#[derive(Clone, Debug)]
pub struct Store {
    types: Vec<ResourceType>,
    rv: u64,
    uids: u64,
    objects: BTreeMap<Key, Arc<Value>>,
    history: VecDeque<Change>,
    history_limit: usize,
    compacted: u64,
    snapshots: HashMap<u64, Snapshot>,
    next_snapshot: u64,
}

impl Default for Store {
    fn default() -> Self {
        Self::new(default_types(), 10_000)
    }
}

fn now_rfc3339() -> String {
    use k8s_openapi::jiff::Timestamp;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Timestamp::from_second(i64::try_from(secs).unwrap_or(0))
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_string()
}

/// A DNS subdomain (RFC 1123), which is what most object names must be.
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Everything of an object that is not metadata (nor status, for types with a status
/// subresource): what `metadata.generation` counts changes of.
fn spec_part(rt: &ResourceType, v: &Value) -> Map<String, Value> {
    let mut m = v.as_object().cloned().unwrap_or_default();
    m.remove("metadata");
    m.remove("apiVersion");
    m.remove("kind");
    if rt.status {
        m.remove("status");
    }
    m
}

impl Store {
    /// A store serving `types`, keeping at most `history_limit` changes for watches.
    pub fn new(types: Vec<ResourceType>, history_limit: usize) -> Self {
        Self {
            types,
            rv: 1,
            uids: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            compacted: 0,
            snapshots: HashMap::new(),
            next_snapshot: 0,
        }
    }

    /// The served resource types; a [`Key`]'s `resource` indexes this.
    pub fn types(&self) -> &[ResourceType] {
        &self.types
    }

    /// Serve one more resource type (replacing one with the same group, version and
    /// plural); returns its index.
    pub fn register(&mut self, rt: ResourceType) -> usize {
        if let Some(i) = self
            .types
            .iter()
            .position(|t| t.group == rt.group && t.version == rt.version && t.plural == rt.plural)
        {
            self.types[i] = rt;
            i
        } else {
            self.types.push(rt);
            self.types.len() - 1
        }
    }

    /// The type serving `group`/`version`/`plural`.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<usize> {
        self.types
            .iter()
            .position(|t| t.group == group && t.version == version && t.plural == plural)
    }

    /// The type for an `apiVersion` and `kind`.
    pub fn find_kind(&self, api_version: &str, kind: &str) -> Option<usize> {
        self.types
            .iter()
            .position(|t| t.api_version() == api_version && t.kind == kind)
    }

    /// The current (latest) resourceVersion.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    /// Watches from a resourceVersion below this get 410 Expired.
    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    /// Forget the history and every list snapshot: watches and continue tokens from before
    /// now expire (as after an etcd compaction). The compaction takes a resourceVersion of
    /// its own, so even a watcher that had seen every change must relist, while a list
    /// made after it can be watched from.
    pub fn compact(&mut self) {
        self.history.clear();
        self.snapshots.clear();
        self.rv += 1;
        self.compacted = self.rv;
    }

    /// Keep at most `n` changes (the oldest beyond it are forgotten).
    pub fn set_history_limit(&mut self, n: usize) {
        self.history_limit = n.max(1);
        self.trim();
    }

    fn trim(&mut self) {
        while self.history.len() > self.history_limit {
            if let Some(c) = self.history.pop_front() {
                self.compacted = self.compacted.max(c.rv);
            }
        }
        let oldest = self.compacted;
        self.snapshots.retain(|_, s| s.rv >= oldest);
    }

    /// The changes after `rv`, oldest first, or `None` when some of them are forgotten.
    pub fn changes_after(&self, rv: u64) -> Option<impl Iterator<Item = &Change>> {
        if rv < self.compacted {
            return None;
        }
        let start = self.history.partition_point(|c| c.rv <= rv);
        Some(self.history.range(start..))
    }

    /// The objects of type `resource` that `sel` selects, in key order.
    pub fn select(&self, resource: usize, sel: &Selection) -> Vec<Arc<Value>> {
        let lo = Key {
            resource,
            namespace: String::new(),
            name: String::new(),
        };
        self.objects
            .range(lo..)
            .take_while(|(k, _)| k.resource == resource)
            .filter(|(k, v)| sel.matches(k, v))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// One page of a list: the first `limit` selected objects (all when `None`), or the
    /// page a continue token points at.
    pub fn list(
        &mut self,
        resource: usize,
        sel: &Selection,
        limit: Option<usize>,
        continue_token: Option<&str>,
    ) -> Result<Page, ApiError> {
        let (id, rv, items, offset) = match continue_token {
            Some(tok) => {
                let (id, rv, offset) = parse_continue(tok)?;
                let snap = self
                    .snapshots
                    .get(&id)
                    .filter(|s| s.rv == rv && rv >= self.compacted)
                    .ok_or_else(|| {
                        ApiError::expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue value from the response to get the remaining results.")
                    })?;
                (Some(id), snap.rv, snap.items.clone(), offset)
            }
            None => (None, self.rv, Arc::new(self.select(resource, sel)), 0),
        };
        let end = match limit {
            Some(l) if l > 0 => offset.saturating_add(l).min(items.len()),
            _ => items.len(),
        };
        let page: Vec<Arc<Value>> = items.get(offset..end).unwrap_or_default().to_vec();
        if end >= items.len() {
            if let Some(id) = id {
                self.snapshots.remove(&id);
            }
            return Ok(Page {
                items: page,
                rv,
                continue_token: None,
                remaining: None,
            });
        }
        let id = match id {
            Some(id) => id,
            None => {
                let id = self.next_snapshot;
                self.next_snapshot += 1;
                if self.snapshots.len() >= SNAPSHOTS_KEPT {
                    if let Some(oldest) = self.snapshots.keys().min().copied() {
                        self.snapshots.remove(&oldest);
                    }
                }
                self.snapshots.insert(
                    id,
                    Snapshot {
                        rv,
                        items: items.clone(),
                    },
                );
                id
            }
        };
        Ok(Page {
            items: page,
            rv,
            continue_token: Some(format!("{id}.{rv}.{end}")),
            remaining: Some((items.len() - end) as u64),
        })
    }

    /// The object at `key`.
    pub fn get(&self, key: &Key) -> Option<Arc<Value>> {
        self.objects.get(key).cloned()
    }

    /// Record a write: bump the resourceVersion, stamp it, store or remove the object,
    /// append the change to the history. Returns the stored object.
    fn commit(&mut self, key: Key, new: Option<Value>) -> Option<Arc<Value>> {
        let old = self.objects.get(&key).cloned();
        self.rv += 1;
        let rv = self.rv;
        let (kind, object) = match new {
            Some(mut v) => {
                v["metadata"]["resourceVersion"] = json!(rv.to_string());
                let v = Arc::new(v);
                self.objects.insert(key.clone(), v.clone());
                let kind = if old.is_some() {
                    ChangeKind::Modified
                } else {
                    ChangeKind::Added
                };
                (kind, v)
            }
            None => {
                self.objects.remove(&key);
                let mut v = match &old {
                    Some(o) => (**o).clone(),
                    None => return None,
                };
                v["metadata"]["resourceVersion"] = json!(rv.to_string());
                (ChangeKind::Deleted, Arc::new(v))
            }
        };
        self.history.push_back(Change {
            key,
            kind,
            object: object.clone(),
            old,
            rv,
        });
        self.trim();
        Some(object)
    }

    /// Check a request body against its type and key, and make it a stored object: the
    /// type's apiVersion and kind, the key's namespace and name, and the server-owned
    /// metadata (uid, creationTimestamp, generation) from `old` or fresh.
    fn prepare(
        &mut self,
        rt_idx: usize,
        key: &Key,
        mut body: Value,
        old: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let rt = self.types[rt_idx].clone();
        let Some(obj) = body.as_object_mut() else {
            return Err(ApiError::bad_request(
                "the body of the request was not a JSON object",
            ));
        };
        if let Some(av) = obj.get("apiVersion").and_then(Value::as_str) {
            if av != rt.api_version() {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({av}) does not match the expected API version ({})",
                    rt.api_version()
                )));
            }
        }
        if let Some(k) = obj.get("kind").and_then(Value::as_str) {
            if k != rt.kind {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    rt.kind
                )));
            }
        }
        obj.insert("apiVersion".into(), json!(rt.api_version()));
        obj.insert("kind".into(), json!(rt.kind));
        let meta = obj.entry("metadata").or_insert_with(|| json!({}));
        let Some(meta) = meta.as_object_mut() else {
            return Err(ApiError::bad_request("metadata must be an object"));
        };
        if !valid_name(&key.name) {
            return Err(ApiError::invalid(
                &rt,
                &key.name,
                format!("metadata.name: Invalid value: {:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character", key.name),
            ));
        }
        meta.insert("name".into(), json!(key.name));
        if rt.namespaced {
            meta.insert("namespace".into(), json!(key.namespace));
        } else {
            meta.remove("namespace");
        }
        match old {
            Some(o) => {
                for f in ["uid", "creationTimestamp", "generation"] {
                    match o["metadata"].get(f) {
                        Some(v) => meta.insert(f.into(), v.clone()),
                        None => meta.remove(f),
                    };
                }
                let gen = o["metadata"]["generation"].as_i64().unwrap_or(1);
                if spec_part(&rt, &body) != spec_part(&rt, o) {
                    body["metadata"]["generation"] = json!(gen + 1);
                }
            }
            None => {
                self.uids += 1;
                meta.insert(
                    "uid".into(),
                    json!(format!("00000000-0000-4000-8000-{:012x}", self.uids)),
                );
                meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
                meta.insert("generation".into(), json!(1));
            }
        }
        Ok(body)
    }

    /// The key a body names under a request's namespace, checking the two agree.
    fn key_for(
        &self,
        rt_idx: usize,
        namespace: &str,
        name: Option<&str>,
        body: &Value,
    ) -> Result<Key, ApiError> {
        let rt = &self.types[rt_idx];
        let body_ns = body["metadata"]["namespace"].as_str().unwrap_or("");
        if rt.namespaced && !body_ns.is_empty() && body_ns != namespace {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let body_name = body["metadata"]["name"].as_str().unwrap_or("");
        let name = match name {
            Some(n) => {
                if !body_name.is_empty() && body_name != n {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({body_name}) does not match the name on the URL ({n})"
                    )));
                }
                n.to_string()
            }
            None => body_name.to_string(),
        };
        Ok(Key {
            resource: rt_idx,
            namespace: if rt.namespaced {
                namespace.to_string()
            } else {
                String::new()
            },
            name,
        })
    }

    /// POST: create, as the API server does (status dropped for types with a status
    /// subresource; `generateName` honoured).
    pub fn create(
        &mut self,
        rt_idx: usize,
        namespace: &str,
        mut body: Value,
    ) -> Result<Arc<Value>, ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request was not a JSON object",
            ));
        }
        if body["metadata"]["name"].as_str().unwrap_or("").is_empty() {
            if let Some(prefix) = body["metadata"]["generateName"].as_str() {
                self.uids += 1;
                let name = format!("{prefix}{:05x}", self.uids & 0xfffff);
                body["metadata"]["name"] = json!(name);
            }
        }
        let key = self.key_for(rt_idx, namespace, None, &body)?;
        let rt = self.types[rt_idx].clone();
        if key.name.is_empty() {
            return Err(ApiError::invalid(
                &rt,
                "",
                "metadata.name: Required value: name or generateName is required",
            ));
        }
        if self.objects.contains_key(&key) {
            return Err(ApiError {
                code: 409,
                reason: "AlreadyExists",
                message: format!("{} \"{}\" already exists", rt.qualified(), key.name),
                details: None,
            }
            .about(&rt, &key.name));
        }
        if rt.status {
            if let Some(o) = body.as_object_mut() {
                o.remove("status");
            }
        }
        if let Some(m) = body["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        let body = self.prepare(rt_idx, &key, body, None)?;
        self.commit(key, Some(body))
            .ok_or_else(|| ApiError::bad_request("nothing to create"))
    }

    fn conflict(rt: &ResourceType, name: &str) -> ApiError {
        ApiError {
            code: 409,
            reason: "Conflict",
            message: format!("Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again", rt.qualified()),
            details: None,
        }
        .about(rt, name)
    }

    /// PUT: replace the object (or its status), honouring a `metadata.resourceVersion`
    /// precondition.
    pub fn update(
        &mut self,
        rt_idx: usize,
        namespace: &str,
        name: &str,
        body: Value,
        part: Part,
    ) -> Result<Arc<Value>, ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request was not a JSON object",
            ));
        }
        let key = self.key_for(rt_idx, namespace, Some(name), &body)?;
        let rt = self.types[rt_idx].clone();
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt, name))?;
        if let Some(want) = body["metadata"]["resourceVersion"].as_str() {
            if !want.is_empty() && Some(want) != old["metadata"]["resourceVersion"].as_str() {
                return Err(Self::conflict(&rt, name));
            }
        }
        let new = match part {
            Part::Main => {
                let mut b = body;
                if rt.status {
                    match old.get("status") {
                        Some(s) => b["status"] = s.clone(),
                        None => {
                            if let Some(o) = b.as_object_mut() {
                                o.remove("status");
                            }
                        }
                    }
                }
                b
            }
            Part::Status => {
                let mut b = (*old).clone();
                match body.get("status") {
                    Some(s) => b["status"] = s.clone(),
                    None => {
                        if let Some(o) = b.as_object_mut() {
                            o.remove("status");
                        }
                    }
                }
                b
            }
        };
        let new = self.prepare(rt_idx, &key, new, Some(&old))?;
        self.commit(key, Some(new))
            .ok_or_else(|| ApiError::not_found(&rt, name))
    }

    /// PATCH: apply the patch to the stored object and store the result as an update
    /// would. Server-side apply creates a missing object.
    pub fn patch(
        &mut self,
        rt_idx: usize,
        namespace: &str,
        name: &str,
        kind: PatchKind,
        patch: Value,
        part: Part,
    ) -> Result<Arc<Value>, ApiError> {
        let rt = self.types[rt_idx].clone();
        let key = Key {
            resource: rt_idx,
            namespace: if rt.namespaced {
                namespace.to_string()
            } else {
                String::new()
            },
            name: name.to_string(),
        };
        if kind == PatchKind::Apply {
            if !patch.is_object() {
                return Err(ApiError::bad_request(
                    "the body of an apply patch must be an object",
                ));
            }
            for f in ["apiVersion", "kind"] {
                if patch.get(f).and_then(Value::as_str).is_none() {
                    return Err(ApiError::bad_request(format!(
                        "{f} is required for apply patch"
                    )));
                }
            }
        }
        let Some(old) = self.objects.get(&key).cloned() else {
            if kind == PatchKind::Apply && part == Part::Main {
                let body = patch;
                let key = self.key_for(rt_idx, namespace, Some(name), &body)?;
                let body = self.prepare(rt_idx, &key, body, None)?;
                return self
                    .commit(key, Some(body))
                    .ok_or_else(|| ApiError::not_found(&rt, name));
            }
            return Err(ApiError::not_found(&rt, name));
        };
        let mut doc = (*old).clone();
        match kind {
            PatchKind::Merge | PatchKind::Strategic | PatchKind::Apply => {
                if !patch.is_object() {
                    return Err(ApiError::bad_request(
                        "the body of a merge patch must be a JSON object",
                    ));
                }
                json_patch::merge(&mut doc, &patch);
            }
            PatchKind::Json => {
                let ops: json_patch::Patch = serde_json::from_value(patch).map_err(|e| {
                    ApiError::bad_request(format!("the JSON patch is malformed: {e}"))
                })?;
                json_patch::patch(&mut doc, &ops).map_err(|e| ApiError {
                    code: 422,
                    reason: "Invalid",
                    message: format!("the JSON patch could not be applied: {e}"),
                    details: None,
                })?;
            }
        }
        // A patch that sets metadata.resourceVersion makes it a precondition; otherwise
        // the stored one is still in `doc` and passes.
        self.update(rt_idx, namespace, name, doc, part)
    }

    /// DELETE: remove the object; returns its last state (at the deletion's RV).
    /// Finalizers are not honoured: the object goes at once.
    pub fn delete(&mut self, key: &Key) -> Result<Arc<Value>, ApiError> {
        let rt = self.types[key.resource].clone();
        if !self.objects.contains_key(key) {
            return Err(ApiError::not_found(&rt, &key.name));
        }
        self.commit(key.clone(), None)
            .ok_or_else(|| ApiError::not_found(&rt, &key.name))
    }

    /// Write an object whole, status included, creating or replacing it without
    /// preconditions (the test's hand on the cluster, like a kubelet or controller
    /// writing). Returns the new resourceVersion.
    pub fn put(&mut self, rt_idx: usize, body: Value) -> Result<u64, ApiError> {
        let ns = body["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let rt = self.types[rt_idx].clone();
        if rt.namespaced && ns.is_empty() {
            return Err(ApiError::bad_request(format!(
                "{} is namespaced: metadata.namespace is required",
                rt.kind
            )));
        }
        let key = self.key_for(rt_idx, &ns, None, &body)?;
        let old = self.objects.get(&key).cloned();
        let mut body = self.prepare(rt_idx, &key, body, old.as_deref())?;
        if let Some(m) = body["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        self.commit(key, Some(body));
        Ok(self.rv)
    }
}

/// A continue token is `snapshot.rv.offset`; the client treats it as opaque.
fn parse_continue(tok: &str) -> Result<(u64, u64, usize), ApiError> {
    let bad = || ApiError::bad_request(format!("continue key is not valid: {tok:?}"));
    let mut it = tok.split('.');
    let id = it.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let rv = it.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let off = it.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    if it.next().is_some() {
        return Err(bad());
    }
    Ok((id, rv, off))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, app: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": "ns", "labels": {"app": app}},
               "spec": {"nodeName": "n1"}, "status": {"podIP": "10.0.0.1"}})
    }

    fn pods(s: &Store) -> usize {
        s.find("", "v1", "pods").unwrap_or(usize::MAX)
    }

    #[test]
    fn pages_are_a_consistent_snapshot() {
        let mut s = Store::default();
        let p = pods(&s);
        for i in 0..5 {
            s.put(p, pod(&format!("p{i}"), "web")).unwrap();
        }
        let sel = Selection::default();
        let first = s.list(p, &sel, Some(2), None).unwrap();
        assert_eq!(first.items.len(), 2);
        assert_eq!(first.remaining, Some(3));
        // A write between pages does not show in the rest of the list.
        s.put(p, pod("p9", "web")).unwrap();
        let tok = first.continue_token.clone().unwrap();
        let second = s.list(p, &sel, Some(10), Some(&tok)).unwrap();
        assert_eq!(second.items.len(), 3);
        assert_eq!(second.rv, first.rv);
        assert!(second.continue_token.is_none());
        // The snapshot is gone once the list is done, and after a compaction.
        assert_eq!(s.list(p, &sel, Some(1), Some(&tok)).unwrap_err().code, 410);
        let again = s.list(p, &sel, Some(1), None).unwrap();
        s.compact();
        let tok = again.continue_token.unwrap();
        assert_eq!(s.list(p, &sel, Some(1), Some(&tok)).unwrap_err().code, 410);
        assert_eq!(s.list(p, &sel, None, Some("x.y")).unwrap_err().code, 400);
    }

    #[test]
    fn history_is_bounded_and_selective() {
        let mut s = Store::new(default_types(), 3);
        let p = pods(&s);
        let start = s.rv();
        s.put(p, pod("a", "web")).unwrap();
        let rv_a = s.rv();
        s.put(p, pod("a", "db")).unwrap();
        let sel = Selection {
            labels: LabelSelector::parse("app=web").unwrap(),
            ..Default::default()
        };
        let evs: Vec<_> = s
            .changes_after(start)
            .unwrap()
            .filter_map(|c| sel.event_for(c))
            .map(|(t, _)| t)
            .collect();
        assert_eq!(
            evs,
            ["ADDED", "DELETED"],
            "leaving the selector is a deletion"
        );
        for i in 0..3 {
            s.put(p, pod(&format!("b{i}"), "web")).unwrap();
        }
        assert!(s.changes_after(rv_a).is_none(), "beyond the kept history");
        assert!(s.changes_after(s.rv() - 1).is_some());
    }

    #[test]
    fn writes_keep_server_fields_and_check_preconditions() {
        let mut s = Store::default();
        let p = pods(&s);
        let created = s.create(p, "ns", pod("a", "web")).unwrap();
        assert!(
            created.get("status").is_none(),
            "status is the subresource's"
        );
        assert_eq!(created["metadata"]["generation"], 1);
        let uid = created["metadata"]["uid"].clone();
        let err = s.create(p, "ns", pod("a", "web")).unwrap_err();
        assert_eq!((err.code, err.reason), (409, "AlreadyExists"));
        let mut b = pod("a", "web");
        b["spec"]["nodeName"] = json!("n2");
        b["metadata"]["resourceVersion"] = json!("1");
        assert_eq!(
            s.update(p, "ns", "a", b.clone(), Part::Main)
                .unwrap_err()
                .code,
            409
        );
        b["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"].clone();
        let updated = s.update(p, "ns", "a", b, Part::Main).unwrap();
        assert_eq!(updated["metadata"]["uid"], uid);
        assert_eq!(updated["metadata"]["generation"], 2);
        let st = s
            .patch(
                p,
                "ns",
                "a",
                PatchKind::Merge,
                json!({"status": {"phase": "Running"}, "spec": {"nodeName": "x"}}),
                Part::Status,
            )
            .unwrap();
        assert_eq!(st["status"]["phase"], "Running");
        assert_eq!(
            st["spec"]["nodeName"], "n2",
            "a status write leaves the spec"
        );
        assert_eq!(st["metadata"]["generation"], 2);
        assert_eq!(
            s.patch(p, "ns", "zz", PatchKind::Merge, json!({}), Part::Main)
                .unwrap_err()
                .code,
            404
        );
        let bad = s.create(p, "other", pod("b", "web")).unwrap_err();
        assert_eq!(bad.code, 400);
    }
}
