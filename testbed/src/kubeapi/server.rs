//! The HTTP shell around the [`Store`]: hyper's HTTP/1 server, authentication and
//! authorization, routing of the URL paths Kubernetes clients use, the verbs, and watch
//! streams.
//!
//! Phases of one request: (1) the configured delay, (2) the bearer token names a user or
//! the answer is 401, (3) the path names a non-resource endpoint (`/version`, discovery)
//! or a resource, namespace, name and subresource, else 404, (4) the method and query give
//! the verb and the authorizer may answer 403, (5) the verb runs against the store under
//! its lock, (6) the request is logged with its status. Watches hand their response body
//! to a task that replays history after the requested resourceVersion and then follows
//! the store's change notifications, until the client leaves, `timeoutSeconds` passes, or
//! the test cuts the stream.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use super::selector::{FieldSelector, LabelSelector};
use super::store::{ApiError, Key, Part, PatchKind, ResourceType, Selection, Store};
use super::{Rbac, RequestRecord};

/// The response body: whole JSON documents, or a watch stream fed by a task.
pub(crate) type Body = UnsyncBoxBody<Bytes, io::Error>;

/// The largest request body accepted (the API server's limit is 3 MiB).
const MAX_BODY: usize = 3 << 20;
/// How many request records are kept.
const MAX_RECORDS: usize = 100_000;
/// `timeoutSeconds` when a watch gives none (the API server's default is random in
/// 30-60 minutes).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// State shared by the request handlers, the watch tasks and the test's handle.
pub(crate) struct Shared {
    pub store: Mutex<Store>,
    pub users: Mutex<HashMap<String, String>>,
    pub rbac: Mutex<Option<Rbac>>,
    pub delay: Mutex<Duration>,
    pub bookmark_interval: Mutex<Duration>,
    pub requests: Mutex<std::collections::VecDeque<RequestRecord>>,
    /// The store's resourceVersion after each write: watch tasks wake on it.
    pub changed: watch::Sender<u64>,
    /// Bumped to cut every open watch stream.
    pub cut_watches: watch::Sender<u64>,
    /// Bumped to close every open connection.
    pub cut_conns: watch::Sender<u64>,
    /// Watch streams opened so far, for tests to wait on a watch being in place.
    pub watches_started: watch::Sender<u64>,
    /// Watch streams open now.
    pub watches_open: watch::Sender<usize>,
    /// Open connections, to let `stop` wait until they are all closed.
    pub live_conns: Mutex<usize>,
    pub conns_closed: Condvar,
}

/// Lock, carrying on after a panic elsewhere (the data stays usable for a test double).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn new(store: Store) -> Self {
        Self {
            store: Mutex::new(store),
            users: Mutex::new(HashMap::new()),
            rbac: Mutex::new(None),
            delay: Mutex::new(Duration::ZERO),
            bookmark_interval: Mutex::new(Duration::from_secs(1)),
            requests: Mutex::new(Default::default()),
            changed: watch::Sender::new(0),
            cut_watches: watch::Sender::new(0),
            cut_conns: watch::Sender::new(0),
            watches_started: watch::Sender::new(0),
            watches_open: watch::Sender::new(0),
            live_conns: Mutex::new(0),
            conns_closed: Condvar::new(),
        }
    }

    /// Run a write on the store and wake the watches. With `dry_run`, the write runs on a
    /// copy and leaves no trace, as `dryRun=All` does.
    pub(crate) fn write<T>(
        &self,
        dry_run: bool,
        f: impl FnOnce(&mut Store) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let mut st = lock(&self.store);
        if dry_run {
            let mut copy = st.clone();
            return f(&mut copy);
        }
        let out = f(&mut st);
        let rv = st.rv();
        drop(st);
        self.changed.send_replace(rv);
        out
    }

    fn record(&self, r: RequestRecord) {
        let mut log = lock(&self.requests);
        if log.len() >= MAX_RECORDS {
            log.pop_front();
        }
        log.push_back(r);
    }
}

/// Counts an open connection for as long as it lives.
struct LiveConn(Arc<Shared>);

impl LiveConn {
    fn new(shared: Arc<Shared>) -> Self {
        *lock(&shared.live_conns) += 1;
        Self(shared)
    }
}

impl Drop for LiveConn {
    fn drop(&mut self) {
        let mut n = lock(&self.0.live_conns);
        *n = n.saturating_sub(1);
        self.0.conns_closed.notify_all();
    }
}

/// Accept connections until `stop` fires, then close the listener (so connects are
/// refused) and say so on `done`.
pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    done: std::sync::mpsc::Sender<()>,
) {
    loop {
        tokio::select! {
            _ = &mut stop => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    tokio::spawn(serve_conn(shared.clone(), stream));
                }
                // Out of descriptors and the like: keep serving the others.
                Err(_) => tokio::task::yield_now().await,
            },
        }
    }
    drop(listener);
    let _ = done.send(());
}

async fn serve_conn(shared: Arc<Shared>, stream: tokio::net::TcpStream) {
    let _live = LiveConn::new(shared.clone());
    let mut cut = shared.cut_conns.subscribe();
    let svc_shared = shared.clone();
    let svc = hyper::service::service_fn(move |req| handle(svc_shared.clone(), req));
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
    tokio::select! {
        _ = conn => {}
        // Dropping the connection closes the socket, mid-response or not.
        _ = cut.changed() => {}
    }
}

/// What the request log says about a request while it is handled.
struct Ctx {
    user: Option<String>,
    verb: String,
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let delay = *lock(&shared.delay);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_string(), |p| p.as_str().to_string());
    let mut ctx = Ctx {
        user: None,
        verb: req.method().as_str().to_ascii_lowercase(),
    };
    let resp = match serve(&shared, req, &mut ctx).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    shared.record(RequestRecord {
        user: ctx.user,
        verb: ctx.verb,
        path,
        status: resp.status().as_u16(),
    });
    Ok(resp)
}

fn full(bytes: Vec<u8>) -> Body {
    Full::new(Bytes::from(bytes))
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    let mut bytes = serde_json::to_vec(v).unwrap_or_default();
    bytes.push(b'\n');
    let mut r = Response::new(full(bytes));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.to_status())
}

fn unauthorized() -> ApiError {
    ApiError {
        code: 401,
        reason: "Unauthorized",
        message: "Unauthorized".into(),
        details: None,
    }
}

fn authenticate(shared: &Shared, headers: &HeaderMap) -> Option<String> {
    let h = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let token = h
        .strip_prefix("Bearer ")
        .or_else(|| h.strip_prefix("bearer "))?
        .trim();
    lock(&shared.users).get(token).cloned()
}

/// The query parameters of a request, their values checked.
#[derive(Default)]
struct Params {
    watch: bool,
    label_selector: Option<String>,
    field_selector: Option<String>,
    limit: Option<usize>,
    continue_token: Option<String>,
    resource_version: Option<String>,
    resource_version_match: Option<String>,
    timeout: Option<Duration>,
    bookmarks: bool,
    send_initial_events: Option<bool>,
    dry_run: bool,
    field_manager: Option<String>,
}

fn parse_bool(name: &str, v: &str) -> Result<bool, ApiError> {
    match v {
        "" | "true" | "1" | "True" | "TRUE" | "t" | "T" => Ok(true),
        "false" | "0" | "False" | "FALSE" | "f" | "F" => Ok(false),
        _ => Err(ApiError::bad_request(format!(
            "{name}: strconv.ParseBool: parsing {v:?}: invalid syntax"
        ))),
    }
}

fn parse_uint(name: &str, v: &str) -> Result<u64, ApiError> {
    v.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "{name}: strconv.ParseInt: parsing {v:?}: invalid syntax"
        ))
    })
}

impl Params {
    fn parse(query: &str) -> Result<Self, ApiError> {
        let mut p = Params::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let v = v.as_ref();
            match k.as_ref() {
                "watch" => p.watch = parse_bool("watch", v)?,
                "labelSelector" => p.label_selector = Some(v.to_string()),
                "fieldSelector" => p.field_selector = Some(v.to_string()),
                "limit" => {
                    // A limit of 0 or less means no limit, as in the API server.
                    let l: i64 = v.parse().map_err(|_| {
                        ApiError::bad_request(format!(
                            "limit: strconv.ParseInt: parsing {v:?}: invalid syntax"
                        ))
                    })?;
                    p.limit = usize::try_from(l).ok().filter(|l| *l > 0);
                }
                "continue" => p.continue_token = Some(v.to_string()).filter(|s| !s.is_empty()),
                "resourceVersion" => {
                    if !v.is_empty() {
                        parse_uint("resourceVersion", v)?;
                    }
                    p.resource_version = Some(v.to_string());
                }
                "resourceVersionMatch" => match v {
                    "" => {}
                    "NotOlderThan" | "Exact" => p.resource_version_match = Some(v.to_string()),
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "resourceVersionMatch: Unsupported value: {v:?}: supported values: \"Exact\", \"NotOlderThan\""
                        )))
                    }
                },
                "timeoutSeconds" => {
                    p.timeout = Some(Duration::from_secs(parse_uint("timeoutSeconds", v)?))
                }
                "allowWatchBookmarks" => p.bookmarks = parse_bool("allowWatchBookmarks", v)?,
                "sendInitialEvents" => {
                    p.send_initial_events = Some(parse_bool("sendInitialEvents", v)?)
                }
                "dryRun" => match v {
                    "All" => p.dry_run = true,
                    "" => {}
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "dryRun: Unsupported value: {v:?}: supported values: \"All\""
                        )))
                    }
                },
                "fieldManager" => p.field_manager = Some(v.to_string()),
                "force" => {
                    parse_bool("force", v)?;
                }
                "fieldValidation" => match v {
                    "" | "Ignore" | "Warn" | "Strict" => {}
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "fieldValidation: Unsupported value: {v:?}"
                        )))
                    }
                },
                "gracePeriodSeconds" => {
                    parse_uint("gracePeriodSeconds", v)?;
                }
                "propagationPolicy" => match v {
                    "" | "Orphan" | "Background" | "Foreground" => {}
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "propagationPolicy: Unsupported value: {v:?}"
                        )))
                    }
                },
                // `pretty`, `timeout` and parameters this fake does not know are ignored,
                // as the API server ignores unknown ones.
                _ => {}
            }
        }
        Ok(p)
    }

    fn selection(&self, rt: &ResourceType, namespace: Option<&str>) -> Result<Selection, ApiError> {
        Ok(Selection {
            namespace: namespace.map(str::to_string),
            labels: LabelSelector::parse(self.label_selector.as_deref().unwrap_or(""))
                .map_err(ApiError::bad_request)?,
            fields: FieldSelector::parse(
                self.field_selector.as_deref().unwrap_or(""),
                rt.field_labels,
            )
            .map_err(ApiError::bad_request)?,
        })
    }
}

/// A parsed resource path.
struct Target {
    rt_idx: usize,
    rt: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_target(st: &Store, group: &str, version: &str, rest: &[&str]) -> Result<Target, ApiError> {
    let (namespace, plural, tail) = match rest {
        ["namespaces", ns, plural, tail @ ..] if *plural != "status" && *plural != "finalize" => {
            (Some(*ns), *plural, tail)
        }
        [plural, tail @ ..] => (None, *plural, tail),
        [] => return Err(ApiError::no_route()),
    };
    let rt_idx = st
        .find(group, version, plural)
        .ok_or_else(ApiError::no_route)?;
    let rt = st.types()[rt_idx].clone();
    if namespace.is_some() && !rt.namespaced {
        return Err(ApiError::no_route());
    }
    let (name, status) = match tail {
        [] => (None, false),
        [name] => (Some(name.to_string()), false),
        [name, "status"] if rt.status => (Some(name.to_string()), true),
        _ => return Err(ApiError::no_route()),
    };
    Ok(Target {
        rt_idx,
        rt,
        namespace: namespace.map(str::to_string),
        name,
        status,
    })
}

fn forbidden(user: &str, verb: &str, t: &Target) -> ApiError {
    let resource = if t.status {
        format!("{}/status", t.rt.plural)
    } else {
        t.rt.plural.to_string()
    };
    let subject = match &t.name {
        Some(n) => format!("{} \"{n}\"", t.rt.qualified()),
        None => t.rt.qualified(),
    };
    let scope = match &t.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    ApiError {
        code: 403,
        reason: "Forbidden",
        message: format!(
            "{subject} is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\" in API group \"{}\" {scope}",
            t.rt.group
        ),
        details: Some(json!({
            "name": t.name.clone().unwrap_or_default(),
            "group": t.rt.group,
            "kind": t.rt.plural,
        })),
    }
}

/// `as=PartialObjectMetadata` in the Accept header: the client wants metadata only.
fn wants_metadata(headers: &HeaderMap) -> bool {
    headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=PartialObjectMetadata"))
}

fn metadata_only(v: &Value) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadata",
        "metadata": v["metadata"],
    })
}

async fn read_json(req: Request<Incoming>) -> Result<Value, ApiError> {
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| ApiError {
            code: 413,
            reason: "RequestEntityTooLarge",
            message: format!("the request body could not be read: {e}"),
            details: None,
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
    })
}

fn content_type(req: &Request<Incoming>) -> String {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

async fn serve(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    ctx: &mut Ctx,
) -> Result<Response<Body>, ApiError> {
    let user = authenticate(shared, req.headers()).ok_or_else(unauthorized)?;
    ctx.user = Some(user.clone());
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // Discovery and other non-resource URLs: every authenticated user may read them
    // (system:discovery and system:public-info-viewer).
    if let Some(v) = non_resource(shared, &segs) {
        if req.method() != Method::GET {
            return Err(ApiError::method_not_allowed(req.method().as_str()));
        }
        ctx.verb = "get".into();
        return Ok(json_response(200, &v));
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::no_route()),
    };
    if (group, version, rest) == ("authentication.k8s.io", "v1", &["tokenreviews"][..]) {
        ctx.verb = "create".into();
        if req.method() != Method::POST {
            return Err(ApiError::method_not_allowed(req.method().as_str()));
        }
        return token_review(shared, req).await;
    }
    let target = parse_target(&lock(&shared.store), group, version, rest)?;
    let params = Params::parse(req.uri().query().unwrap_or(""))?;
    let verb = match (req.method(), &target.name) {
        (&Method::GET, None) if params.watch => "watch",
        (&Method::GET, None) => "list",
        (&Method::GET, Some(_)) => "get",
        (&Method::POST, None) if !target.status => "create",
        (&Method::PUT, Some(_)) => "update",
        (&Method::PATCH, Some(_)) => "patch",
        (&Method::DELETE, Some(_)) if !target.status => "delete",
        (&Method::DELETE, None) => "deletecollection",
        (m, _) => return Err(ApiError::method_not_allowed(m.as_str())),
    };
    ctx.verb = verb.into();
    if let Some(rbac) = lock(&shared.rbac).as_ref() {
        let resource = if target.status {
            format!("{}/status", target.rt.plural)
        } else {
            target.rt.plural.to_string()
        };
        // A list or watch narrowed to one name by `fieldSelector=metadata.name=NAME` is
        // authorized as a request for that name (RBAC's resourceNames), as Kubernetes does.
        let selected = params
            .field_selector
            .as_deref()
            .filter(|_| verb == "list" || verb == "watch")
            .and_then(|f| {
                f.strip_prefix("metadata.name==")
                    .or_else(|| f.strip_prefix("metadata.name="))
            })
            .filter(|n| !n.contains(','));
        if !rbac.allows_named(
            &user,
            verb,
            target.rt.group,
            &resource,
            target.namespace.as_deref(),
            target.name.as_deref().or(selected),
        ) {
            return Err(forbidden(&user, verb, &target));
        }
    }
    let meta_only = wants_metadata(req.headers());
    let ns = target.namespace.clone().unwrap_or_default();
    let name = target.name.clone().unwrap_or_default();
    let key = Key {
        resource: target.rt_idx,
        namespace: ns.clone(),
        name: name.clone(),
    };
    let part = if target.status {
        Part::Status
    } else {
        Part::Main
    };
    let shape = |v: &Value| {
        if meta_only {
            metadata_only(v)
        } else {
            v.clone()
        }
    };
    match verb {
        "watch" => start_watch(shared, &target, &params, meta_only),
        "list" => list(shared, &target, &params, meta_only),
        "get" => {
            let obj = lock(&shared.store)
                .get(&key)
                .ok_or_else(|| ApiError::not_found(&target.rt, &name))?;
            Ok(json_response(200, &shape(&obj)))
        }
        "create" => {
            let body = read_json(req).await?;
            let obj = shared.write(params.dry_run, |st| st.create(target.rt_idx, &ns, body))?;
            Ok(json_response(201, &shape(&obj)))
        }
        "update" => {
            let body = read_json(req).await?;
            let obj = shared.write(params.dry_run, |st| {
                st.update(target.rt_idx, &ns, &name, body, part)
            })?;
            Ok(json_response(200, &shape(&obj)))
        }
        "patch" => {
            let ct = content_type(&req);
            let kind = match ct.as_str() {
                "application/merge-patch+json" => PatchKind::Merge,
                "application/strategic-merge-patch+json" => PatchKind::Strategic,
                "application/json-patch+json" => PatchKind::Json,
                "application/apply-patch+yaml" => PatchKind::Apply,
                _ => return Err(ApiError::unsupported_media_type(&ct)),
            };
            if kind == PatchKind::Apply && params.field_manager.as_deref().unwrap_or("").is_empty()
            {
                return Err(ApiError::bad_request(
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                ));
            }
            let body = read_json(req).await?;
            let existed = lock(&shared.store).get(&key).is_some();
            let obj = shared.write(params.dry_run, |st| {
                st.patch(target.rt_idx, &ns, &name, kind, body, part)
            })?;
            Ok(json_response(if existed { 200 } else { 201 }, &shape(&obj)))
        }
        "delete" => {
            let obj = shared.write(params.dry_run, |st| st.delete(&key))?;
            Ok(json_response(200, &shape(&obj)))
        }
        "deletecollection" => {
            let sel = params.selection(&target.rt, target.namespace.as_deref())?;
            let deleted = shared.write(params.dry_run, |st| {
                let keys: Vec<Key> = st
                    .select(target.rt_idx, &sel)
                    .iter()
                    .map(|o| Key {
                        resource: target.rt_idx,
                        namespace: o["metadata"]["namespace"].as_str().unwrap_or("").into(),
                        name: o["metadata"]["name"].as_str().unwrap_or("").into(),
                    })
                    .collect();
                keys.iter()
                    .map(|k| st.delete(k).map(|o| shape(&o)))
                    .collect::<Result<Vec<_>, _>>()
            })?;
            let rv = lock(&shared.store).rv();
            Ok(json_response(
                200,
                &list_doc(&target.rt, meta_only, rv, None, None, deleted),
            ))
        }
        _ => Err(ApiError::method_not_allowed(verb)),
    }
}

fn list_doc(
    rt: &ResourceType,
    meta_only: bool,
    rv: u64,
    cont: Option<String>,
    remaining: Option<u64>,
    items: Vec<Value>,
) -> Value {
    let (api_version, kind) = if meta_only {
        (
            "meta.k8s.io/v1".to_string(),
            "PartialObjectMetadataList".to_string(),
        )
    } else {
        (rt.api_version(), format!("{}List", rt.kind))
    };
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    if let Some(r) = remaining {
        meta["remainingItemCount"] = json!(r);
    }
    json!({"kind": kind, "apiVersion": api_version, "metadata": meta, "items": items})
}

fn list(
    shared: &Shared,
    t: &Target,
    p: &Params,
    meta_only: bool,
) -> Result<Response<Body>, ApiError> {
    let sel = p.selection(&t.rt, t.namespace.as_deref())?;
    let rv = p.resource_version.as_deref().filter(|s| !s.is_empty());
    if p.continue_token.is_some() && rv.is_some_and(|r| r != "0") {
        return Err(ApiError::bad_request(
            "specifying resource version is not allowed when using continue",
        ));
    }
    if p.resource_version_match.is_some() && rv.is_none() {
        return Err(ApiError::bad_request(
            "resourceVersionMatch is forbidden unless resourceVersion is provided",
        ));
    }
    let mut st = lock(&shared.store);
    if let Some(want) = rv.and_then(|r| r.parse::<u64>().ok()).filter(|r| *r != 0) {
        // Only the latest state is kept: an exact older one is gone, a newer one than any
        // written is "too large" as for an API server that has not seen it yet.
        if want > st.rv() {
            return Err(ApiError {
                code: 504,
                reason: "Timeout",
                message: format!("Too large resource version: {want}, current: {}", st.rv()),
                details: None,
            });
        }
        if p.resource_version_match.as_deref() == Some("Exact") && want != st.rv() {
            return Err(ApiError::expired(format!(
                "too old resource version: {want} ({})",
                st.rv()
            )));
        }
    }
    let page = st.list(t.rt_idx, &sel, p.limit, p.continue_token.as_deref())?;
    drop(st);
    let items = page
        .items
        .iter()
        .map(|o| {
            if meta_only {
                metadata_only(o)
            } else {
                (**o).clone()
            }
        })
        .collect();
    Ok(json_response(
        200,
        &list_doc(
            &t.rt,
            meta_only,
            page.rv,
            page.continue_token,
            page.remaining,
            items,
        ),
    ))
}

async fn token_review(shared: &Shared, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let mut body = read_json(req).await?;
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request was not a JSON object",
        ));
    }
    let token = body["spec"]["token"].as_str().unwrap_or("").to_string();
    let user = lock(&shared.users).get(&token).cloned();
    body["status"] = match user {
        Some(u) => {
            json!({"authenticated": true, "user": {"username": u, "groups": ["system:authenticated"]}})
        }
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    body["apiVersion"] = json!("authentication.k8s.io/v1");
    body["kind"] = json!("TokenReview");
    Ok(json_response(201, &body))
}

/// Discovery and version documents, for the paths that are not resources.
fn non_resource(shared: &Shared, segs: &[&str]) -> Option<Value> {
    let types: Vec<ResourceType> = lock(&shared.store).types().to_vec();
    let group_doc = |g: &str| {
        let mut versions: Vec<&str> = types
            .iter()
            .filter(|t| t.group == g)
            .map(|t| t.version)
            .collect();
        versions.dedup();
        let vs: Vec<Value> = versions
            .iter()
            .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
            .collect();
        json!({"kind": "APIGroup", "apiVersion": "v1", "name": g, "versions": vs,
               "preferredVersion": vs.first().cloned().unwrap_or(Value::Null)})
    };
    let resource_list = |g: &str, v: &str| {
        let mut rs = Vec::new();
        for t in types.iter().filter(|t| t.group == g && t.version == v) {
            rs.push(json!({
                "name": t.plural, "singularName": t.kind.to_ascii_lowercase(),
                "namespaced": t.namespaced, "kind": t.kind,
                "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
            }));
            if t.status {
                rs.push(json!({
                    "name": format!("{}/status", t.plural), "singularName": "",
                    "namespaced": t.namespaced, "kind": t.kind, "verbs": ["get", "patch", "update"],
                }));
            }
        }
        let gv = if g.is_empty() {
            v.to_string()
        } else {
            format!("{g}/{v}")
        };
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": rs})
    };
    match segs {
        ["version"] => Some(json!({
            "major": "1", "minor": "34", "gitVersion": "v1.34.0-septa-fake",
            "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc",
            "platform": "linux/amd64",
        })),
        ["healthz"] | ["livez"] | ["readyz"] => Some(json!("ok")),
        ["api"] => Some(json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": []})),
        ["api", "v1"] => Some(resource_list("", "v1")),
        ["apis"] => {
            let mut groups: Vec<&str> = types
                .iter()
                .map(|t| t.group)
                .filter(|g| !g.is_empty())
                .collect();
            groups.sort_unstable();
            groups.dedup();
            let gs: Vec<Value> = groups.iter().map(|g| group_doc(g)).collect();
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": gs}))
        }
        ["apis", g] if types.iter().any(|t| t.group == *g) => Some(group_doc(g)),
        ["apis", g, v] if types.iter().any(|t| t.group == *g && t.version == *v) => {
            Some(resource_list(g, v))
        }
        _ => None,
    }
}

/// A watch response body: lines sent by the watch task, until the channel closes (a
/// clean end) or the test cuts watches: then an error aborts the chunked body, and the
/// client sees the connection drop mid-stream as when an API server goes away. The cut is
/// checked before every frame and wakes the body itself, so it works even while the
/// task is blocked on a client that does not read.
struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, io::Error>>,
    cut: Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

impl ChannelBody {
    fn new(rx: mpsc::Receiver<Result<Bytes, io::Error>>, mut cut: watch::Receiver<u64>) -> Self {
        let cut = Box::pin(async move {
            // A dropped sender (the server going away) never cuts.
            if cut.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        });
        Self { rx, cut }
    }
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.cut.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(io::Error::other("watch cut by the test"))));
        }
        self.rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut b = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

/// What a watch task needs to know.
struct WatchTask {
    rt: ResourceType,
    sel: Selection,
    meta_only: bool,
    bookmarks: bool,
    cursor: u64,
    /// Lines to send first: initial events, or a 410 error that ends the watch.
    first: Vec<Bytes>,
    /// Whether the watch ends after `first` (expired).
    end_after_first: bool,
    timeout: Duration,
}

fn bookmark(rt: &ResourceType, meta_only: bool, rv: u64, initial_end: bool) -> Value {
    let (api_version, kind) = if meta_only {
        ("meta.k8s.io/v1".to_string(), "PartialObjectMetadata")
    } else {
        (rt.api_version(), rt.kind)
    };
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": kind, "apiVersion": api_version, "metadata": meta})
}

fn too_old(rv: u64, compacted: u64) -> Bytes {
    event_line(
        "ERROR",
        &ApiError::expired(format!("too old resource version: {rv} ({compacted})")).to_status(),
    )
}

fn start_watch(
    shared: &Arc<Shared>,
    t: &Target,
    p: &Params,
    meta_only: bool,
) -> Result<Response<Body>, ApiError> {
    let sel = p.selection(&t.rt, t.namespace.as_deref())?;
    let initial_events = p.send_initial_events.unwrap_or(false);
    if p.send_initial_events.is_some() {
        if !p.bookmarks {
            return Err(ApiError {
                code: 422,
                reason: "Invalid",
                message: "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true".into(),
                details: None,
            });
        }
        if p.resource_version_match.as_deref() != Some("NotOlderThan") {
            return Err(ApiError {
                code: 422,
                reason: "Invalid",
                message: "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan".into(),
                details: None,
            });
        }
    } else if p.resource_version_match.is_some() {
        return Err(ApiError {
            code: 422,
            reason: "Invalid",
            message: "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided".into(),
            details: None,
        });
    }
    let shape = |v: &Value| {
        if meta_only {
            metadata_only(v)
        } else {
            v.clone()
        }
    };
    let rv: u64 = p
        .resource_version
        .as_deref()
        .filter(|s| !s.is_empty())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // Subscribe before reading the store, so no write between the two goes unnoticed.
    let changed = shared.changed.subscribe();
    let cut = shared.cut_watches.subscribe();
    let body_cut = shared.cut_watches.subscribe();
    let st = lock(&shared.store);
    let mut first = Vec::new();
    let mut end_after_first = false;
    let cursor = if rv == 0 || initial_events {
        // "Any" version, or a streaming list: the current state as ADDED events first.
        for o in st.select(t.rt_idx, &sel) {
            first.push(event_line("ADDED", &shape(&o)));
        }
        if initial_events {
            first.push(event_line(
                "BOOKMARK",
                &bookmark(&t.rt, meta_only, st.rv(), true),
            ));
        }
        st.rv()
    } else {
        match st.changes_after(rv) {
            Some(changes) => {
                for c in changes.filter(|c| c.key.resource == t.rt_idx) {
                    if let Some((kind, obj)) = sel.event_for(c) {
                        first.push(event_line(kind, &shape(&obj)));
                    }
                }
                // A version not written yet: only changes after it are news.
                st.rv().max(rv)
            }
            None => {
                first.push(too_old(rv, st.compacted()));
                end_after_first = true;
                rv
            }
        }
    };
    drop(st);
    let task = WatchTask {
        rt: t.rt.clone(),
        sel,
        meta_only,
        bookmarks: p.bookmarks,
        cursor,
        first,
        end_after_first,
        timeout: p.timeout.unwrap_or(DEFAULT_WATCH_TIMEOUT),
    };
    let (tx, rx) = mpsc::channel(64);
    shared.watches_open.send_modify(|n| *n += 1);
    shared.watches_started.send_modify(|n| *n += 1);
    tokio::spawn(run_watch(shared.clone(), t.rt_idx, task, tx, changed, cut));
    let mut r = Response::new(ChannelBody::new(rx, body_cut).boxed_unsync());
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(r)
}

/// Send the lines of the changes after the cursor and move it to the store's latest
/// resourceVersion; `false` when the history no longer reaches back to the cursor (the
/// 410 has been sent) or the client is gone.
async fn flush(
    shared: &Shared,
    rt_idx: usize,
    w: &mut WatchTask,
    tx: &mpsc::Sender<Result<Bytes, io::Error>>,
) -> bool {
    let lines = {
        let st = lock(&shared.store);
        let lines = match st.changes_after(w.cursor) {
            Some(changes) => {
                let lines: Vec<Bytes> = changes
                    .filter(|c| c.key.resource == rt_idx)
                    .filter_map(|c| w.sel.event_for(c))
                    .map(|(kind, obj)| {
                        let obj = if w.meta_only {
                            metadata_only(&obj)
                        } else {
                            (*obj).clone()
                        };
                        event_line(kind, &obj)
                    })
                    .collect();
                w.cursor = w.cursor.max(st.rv());
                Ok(lines)
            }
            None => Err(too_old(w.cursor, st.compacted())),
        };
        lines
    };
    match lines {
        Ok(lines) => {
            for l in lines {
                if tx.send(Ok(l)).await.is_err() {
                    return false;
                }
            }
            true
        }
        Err(line) => {
            let _ = tx.send(Ok(line)).await;
            false
        }
    }
}

/// Counts an open watch stream for as long as its task lives.
struct OpenWatch(Arc<Shared>);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0
            .watches_open
            .send_modify(|n| *n = n.saturating_sub(1));
    }
}

async fn run_watch(
    shared: Arc<Shared>,
    rt_idx: usize,
    mut w: WatchTask,
    tx: mpsc::Sender<Result<Bytes, io::Error>>,
    mut changed: watch::Receiver<u64>,
    mut cut: watch::Receiver<u64>,
) {
    let _open = OpenWatch(shared.clone());
    let deadline = tokio::time::Instant::now() + w.timeout;
    for line in std::mem::take(&mut w.first) {
        if tx.send(Ok(line)).await.is_err() {
            return;
        }
    }
    if w.end_after_first {
        return;
    }
    let every = (*lock(&shared.bookmark_interval)).max(Duration::from_millis(1));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            biased;
            // The body aborts the response itself (see `ChannelBody`).
            _ = cut.changed() => return,
            _ = tokio::time::sleep_until(deadline) => return,
            _ = tx.closed() => return,
            r = changed.changed() => {
                if r.is_err() || !flush(&shared, rt_idx, &mut w, &tx).await {
                    return;
                }
            }
            _ = ticks.tick(), if w.bookmarks => {
                if !flush(&shared, rt_idx, &mut w, &tx).await {
                    return;
                }
                let b = bookmark(&w.rt, w.meta_only, w.cursor, false);
                if tx.send(Ok(event_line("BOOKMARK", &b))).await.is_err() {
                    return;
                }
            }
        }
    }
}
