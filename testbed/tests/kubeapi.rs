//! The fake Kubernetes API server against the real kube-rs client and watcher, through a
//! kubeconfig, as septa's agent will use it. Every wait is on a stream or state with a
//! deadline that only guards against hangs.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodStatus, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind, PartialObjectMeta};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Config};
use serde_json::{json, Value};
use testbed::kubeapi::{FakeApi, Rbac};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

/// Guards every wait against a hang; never a measure of speed.
const DEADLINE: Duration = Duration::from_secs(60);
const TOKEN: &str = "agent-token";
const USER: &str = "system:serviceaccount:septa:agent";

fn scratch(tag: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("septa-kubeapi-{}-{n}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A server with the agent's user, and a kube-rs client made from a kubeconfig file.
async fn setup(tag: &str) -> (FakeApi, Client) {
    let api = FakeApi::start_local().expect("start the fake API");
    api.add_user(TOKEN, USER);
    let client = client_with(&api, tag, TOKEN).await;
    (api, client)
}

async fn client_with(api: &FakeApi, tag: &str, token: &str) -> Client {
    let path = scratch(tag).join("kubeconfig");
    api.kubeconfig(&path, token).expect("write kubeconfig");
    let kc = Kubeconfig::read_from(&path).expect("read kubeconfig");
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config from kubeconfig");
    Client::try_from(cfg).expect("client")
}

fn pod(ns: &str, name: &str, app: &str, node: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some(BTreeMap::from([("app".to_string(), app.to_string())])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            containers: vec![Container {
                name: "c".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            pod_ip: Some("10.1.0.7".into()),
            ..Default::default()
        }),
    }
}

type Events = Pin<Box<dyn Stream<Item = Result<Event<Pod>, watcher::Error>> + Send>>;

/// What a watcher's events say the cluster holds, as a reflector would keep it.
struct Mirror {
    events: Events,
    objs: BTreeMap<String, Pod>,
    pending: BTreeMap<String, Pod>,
    synced: bool,
    errors: usize,
}

fn key(p: &Pod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or(""),
        p.metadata.name.as_deref().unwrap_or("")
    )
}

impl Mirror {
    fn new(events: Events) -> Self {
        Self {
            events,
            objs: BTreeMap::new(),
            pending: BTreeMap::new(),
            synced: false,
            errors: 0,
        }
    }

    fn take(&mut self, what: &str, ev: Option<Result<Event<Pod>, watcher::Error>>) {
        match ev {
            Some(Ok(Event::Init)) => self.pending.clear(),
            Some(Ok(Event::InitApply(p))) => {
                self.pending.insert(key(&p), p);
            }
            Some(Ok(Event::InitDone)) => {
                self.objs = std::mem::take(&mut self.pending);
                self.synced = true;
            }
            Some(Ok(Event::Apply(p))) => {
                self.objs.insert(key(&p), p);
            }
            Some(Ok(Event::Delete(p))) => {
                self.objs.remove(&key(&p));
            }
            Some(Err(_)) => self.errors += 1,
            None => panic!("the watcher ended while waiting for {what}"),
        }
    }

    /// Consume events until `pred` holds on a synced mirror.
    async fn until(&mut self, what: &str, pred: impl Fn(&BTreeMap<String, Pod>) -> bool) {
        let done = timeout(DEADLINE, async {
            while !(self.synced && pred(&self.objs)) {
                let ev = self.events.next().await;
                self.take(what, ev);
            }
        })
        .await;
        assert!(
            done.is_ok(),
            "no {what} within {DEADLINE:?}: mirror {:?}",
            self.objs.keys()
        );
    }

    /// Consume events until the watcher reports an error (more than `seen` in all).
    async fn until_error(&mut self, what: &str, seen: usize) {
        let done = timeout(DEADLINE, async {
            while self.errors <= seen {
                let ev = self.events.next().await;
                self.take(what, ev);
            }
        })
        .await;
        assert!(done.is_ok(), "no {what} within {DEADLINE:?}");
    }

    /// Consume events until `fut` resolves (a watcher makes requests only while polled).
    async fn drive_until(&mut self, what: &str, fut: impl std::future::Future<Output = ()>) {
        let mut fut = std::pin::pin!(fut);
        let done = timeout(DEADLINE, async {
            loop {
                tokio::select! {
                    biased;
                    _ = &mut fut => return,
                    ev = self.events.next() => self.take(what, ev),
                }
            }
        })
        .await;
        assert!(done.is_ok(), "no {what} within {DEADLINE:?}");
    }
}

fn names(m: &BTreeMap<String, Pod>) -> BTreeSet<String> {
    m.keys().cloned().collect()
}

fn count(api: &FakeApi, verb: &str, prefix: &str) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.verb == verb && r.path.starts_with(prefix))
        .count()
}

#[tokio::test]
async fn list_with_limit_pages_and_gives_every_object_once() {
    let (api, client) = setup("pages").await;
    let mut want = BTreeSet::new();
    for i in 0..23 {
        let ns = ["a", "b", "c"][i % 3];
        let app = if i % 2 == 0 { "web" } else { "db" };
        api.apply(&pod(ns, &format!("p{i:02}"), app, &format!("n{}", i % 2)))
            .expect("apply");
        want.insert(format!("{ns}/p{i:02}"));
    }
    let pods: Api<Pod> = Api::all(client.clone());
    let (mut seen, mut pages, mut token, mut rvs) =
        (Vec::new(), 0, None::<String>, BTreeSet::new());
    loop {
        let mut lp = ListParams::default().limit(4);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let list = pods.list(&lp).await.expect("list page");
        pages += 1;
        rvs.insert(list.metadata.resource_version.clone().expect("list RV"));
        seen.extend(list.items.iter().map(key));
        token = list.metadata.continue_.filter(|c| !c.is_empty());
        if token.is_none() {
            break;
        }
    }
    assert_eq!(pages, 6, "23 objects in pages of 4");
    assert_eq!(seen.len(), 23, "each object once: {seen:?}");
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), want);
    assert_eq!(rvs.len(), 1, "every page is the same snapshot");
    assert_eq!(count(&api, "list", "/api/v1/pods?"), 6);

    // Selectors, namespaced lists, and objects that round-trip through k8s-openapi.
    let web = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("labels");
    assert_eq!(web.items.len(), 12);
    let set = pods
        .list(&ListParams::default().labels("app in (web,db),app!=db"))
        .await
        .expect("set");
    assert_eq!(set.items.len(), 12);
    let on_n1 = pods
        .list(&ListParams::default().fields("spec.nodeName=n1"))
        .await
        .expect("fields");
    assert_eq!(on_n1.items.len(), 11);
    let in_b: Api<Pod> = Api::namespaced(client, "b");
    let b = in_b.list(&ListParams::default()).await.expect("namespaced");
    assert!(b
        .items
        .iter()
        .all(|p| p.metadata.namespace.as_deref() == Some("b")));
    assert_eq!(b.items.len(), 8);
    let p = in_b.get("p01").await.expect("get");
    assert_eq!(p.status.and_then(|s| s.pod_ip).as_deref(), Some("10.1.0.7"));
    assert!(p.metadata.uid.is_some() && p.metadata.creation_timestamp.is_some());
}

#[tokio::test]
async fn watcher_sees_creates_updates_and_deletes() {
    let (api, client) = setup("watch").await;
    api.apply(&pod("default", "before", "web", "n1"))
        .expect("apply");
    let events = watcher(Api::<Pod>::all(client), watcher::Config::default()).boxed();
    let mut m = Mirror::new(events);
    m.until("the initial list", |o| o.contains_key("default/before"))
        .await;

    api.apply(&pod("default", "new", "web", "n1"))
        .expect("create");
    m.until("the create", |o| o.contains_key("default/new"))
        .await;
    api.apply(&pod("default", "new", "db", "n1"))
        .expect("update");
    m.until("the update", |o| {
        o.get("default/new")
            .and_then(|p| p.metadata.labels.as_ref())
            .is_some_and(|l| l.get("app").map(String::as_str) == Some("db"))
    })
    .await;
    api.delete::<Pod>("default", "before").expect("delete");
    m.until("the delete", |o| !o.contains_key("default/before"))
        .await;
    assert_eq!(names(&m.objs), BTreeSet::from(["default/new".to_string()]));
    assert_eq!(m.errors, 0);
    assert_eq!(
        count(&api, "list", "/api/v1/pods"),
        1,
        "one list, then the watch"
    );
}

#[tokio::test]
async fn bookmarks_arrive_when_asked() {
    let (api, client) = setup("bookmarks").await;
    api.set_bookmark_interval(Duration::from_millis(20));
    api.apply(&pod("default", "a", "web", "n1")).expect("apply");
    let rv = api.resource_version();
    let pods: Api<Pod> = Api::all(client);
    let mut s = pods
        .watch(&WatchParams::default(), &rv.to_string())
        .await
        .expect("watch")
        .boxed();
    let first = timeout(DEADLINE, s.next()).await.expect("an event");
    match first {
        Some(Ok(WatchEvent::Bookmark(b))) => {
            assert_eq!(b.metadata.resource_version, rv.to_string());
            assert_eq!(b.types.kind, "Pod");
        }
        other => panic!(
            "expected a bookmark, got {:?}",
            other.map(|r| r.map(|_| ()))
        ),
    }
    assert!(api
        .requests()
        .iter()
        .any(|r| r.verb == "watch" && r.path.contains("allowWatchBookmarks=true")));
}

#[tokio::test]
async fn streaming_lists_are_served() {
    let (api, client) = setup("streaming").await;
    api.apply(&pod("default", "a", "web", "n1")).expect("apply");
    api.apply(&pod("other", "b", "web", "n1")).expect("apply");
    let cfg = watcher::Config::default().streaming_lists();
    let mut m = Mirror::new(watcher(Api::<Pod>::all(client), cfg).boxed());
    m.until("the streamed initial state", |o| o.len() == 2)
        .await;
    api.apply(&pod("default", "c", "web", "n1")).expect("apply");
    m.until("a change after it", |o| o.contains_key("default/c"))
        .await;
    assert_eq!(count(&api, "list", "/api/v1/pods"), 0, "no list call");
    assert!(api
        .requests()
        .iter()
        .any(|r| r.verb == "watch" && r.path.contains("sendInitialEvents=true")));
}

#[tokio::test]
async fn compact_makes_the_watcher_relist() {
    let (api, client) = setup("compact").await;
    for n in ["a", "b", "c"] {
        api.apply(&pod("default", n, "web", "n1")).expect("apply");
    }
    let events = watcher(Api::<Pod>::all(client), watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut m = Mirror::new(events);
    m.until("the initial list", |o| o.len() == 3).await;
    assert_eq!(count(&api, "list", "/api/v1/pods"), 1);
    m.drive_until("the watch", api.wait_for_watches(1)).await;

    api.compact();
    api.delete::<Pod>("default", "b").expect("delete");
    api.apply(&pod("default", "d", "web", "n1")).expect("apply");
    let want: BTreeSet<String> = ["default/a", "default/c", "default/d"]
        .map(String::from)
        .into();
    m.until("the relisted state", |o| names(o) == want).await;
    assert_eq!(
        count(&api, "list", "/api/v1/pods"),
        2,
        "a second list after the 410"
    );
    assert!(m.errors >= 1, "the 410 surfaced as a watcher error");
}

#[tokio::test]
async fn dropped_watches_resume_without_a_relist() {
    let (api, client) = setup("drop").await;
    api.apply(&pod("default", "a", "web", "n1")).expect("apply");
    let events = watcher(Api::<Pod>::all(client), watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut m = Mirror::new(events);
    m.until("the initial list", |o| o.len() == 1).await;
    m.drive_until("the watch", api.wait_for_watches(1)).await;
    api.drop_watches();
    api.apply(&pod("default", "b", "web", "n1")).expect("apply");
    m.until("the change after the cut", |o| o.contains_key("default/b"))
        .await;
    assert_eq!(
        count(&api, "list", "/api/v1/pods"),
        1,
        "resumed from its RV"
    );
    m.drive_until("a second watch", api.wait_for_watches(2))
        .await;
    assert_eq!(
        count(&api, "watch", "/api/v1/pods"),
        api.watches_started() as usize
    );
}

#[tokio::test]
async fn the_watcher_recovers_after_stop_and_restart() {
    let (api, client) = setup("restart").await;
    api.apply(&pod("default", "a", "web", "n1")).expect("apply");
    let events = watcher(Api::<Pod>::all(client), watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut m = Mirror::new(events);
    m.until("the initial list", |o| o.len() == 1).await;
    m.drive_until("the watch", api.wait_for_watches(1)).await;

    api.stop();
    assert!(!api.is_serving());
    assert_eq!(api.open_watches(), 0, "every watch cut");
    let refused = std::net::TcpStream::connect(api.addr()).map_err(|e| e.kind());
    assert_eq!(refused.err(), Some(std::io::ErrorKind::ConnectionRefused));
    let seen = m.errors;
    m.until_error("the outage", seen).await;
    api.apply(&pod("default", "while-stopped", "web", "n1"))
        .expect("apply");
    api.restart().expect("restart");
    assert!(api.restart().is_err(), "already serving");
    m.until("the change made while stopped", |o| {
        o.contains_key("default/while-stopped")
    })
    .await;
    assert!(m.errors >= 1, "the outage was seen");
}

#[tokio::test]
async fn unknown_token_gets_401() {
    let api = FakeApi::start_local().expect("start");
    api.add_user(TOKEN, USER);
    let client = client_with(&api, "401", "not-a-token").await;
    let err = Api::<Pod>::all(client)
        .list(&ListParams::default())
        .await
        .expect_err("401");
    match err {
        kube::Error::Api(s) => assert_eq!((s.code, s.reason.as_str()), (401, "Unauthorized")),
        other => panic!("expected a Status, got {other:?}"),
    }
    let r = api.requests();
    assert_eq!((r.len(), r[0].user.as_deref(), r[0].status), (1, None, 401));
}

fn threat_feeds(client: Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("septa.dev", "v1alpha1", "ThreatFeed");
    Api::all_with(
        client,
        &ApiResource::from_gvk_with_plural(&gvk, "threatfeeds"),
    )
}

#[tokio::test]
async fn rbac_denial_gives_403_with_the_kubernetes_reason() {
    let (api, client) = setup("rbac").await;
    api.apply_json(
        "septa.dev/v1alpha1",
        "ThreatFeed",
        json!({"metadata": {"name": "feed"}, "spec": {"url": "http://x/list"}}),
    )
    .expect("apply feed");
    api.set_rbac(Some(
        Rbac::new()
            .allow(USER, &["list", "watch"], &[""], &["pods"])
            .allow(USER, &["get"], &["septa.dev"], &["threatfeeds"])
            .allow_in("septa", USER, &["get"], &[""], &["services"]),
    ));
    let pods: Api<Pod> = Api::all(client.clone());
    pods.list(&ListParams::default()).await.expect("allowed");
    let cases: Vec<(&str, kube::Error)> = vec![
        (
            r#"services is forbidden: User "system:serviceaccount:septa:agent" cannot list resource "services" in API group "" at the cluster scope"#,
            Api::<Service>::all(client.clone())
                .list(&ListParams::default())
                .await
                .expect_err("list services"),
        ),
        (
            r#"services "s" is forbidden: User "system:serviceaccount:septa:agent" cannot get resource "services" in API group "" in the namespace "default""#,
            Api::<Service>::namespaced(client.clone(), "default")
                .get("s")
                .await
                .expect_err("get elsewhere"),
        ),
        (
            r#"threatfeeds.septa.dev "feed" is forbidden: User "system:serviceaccount:septa:agent" cannot patch resource "threatfeeds/status" in API group "septa.dev" at the cluster scope"#,
            threat_feeds(client.clone())
                .patch_status(
                    "feed",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {}})),
                )
                .await
                .expect_err("patch status"),
        ),
    ];
    for (want, err) in cases {
        match err {
            kube::Error::Api(s) => {
                assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
                assert_eq!(s.message, want);
            }
            other => panic!("expected a Status, got {other:?}"),
        }
    }
    // Allowed in its namespace: the answer is the object's absence, not a denial.
    let e = Api::<Service>::namespaced(client, "septa")
        .get("s")
        .await
        .expect_err("404");
    assert!(matches!(e, kube::Error::Api(s) if s.code == 404));
}

#[tokio::test]
async fn patch_status_on_a_threat_feed_stores_the_status() {
    let (api, client) = setup("status").await;
    let spec = json!({"url": "http://feeds.example/list", "action": "deny"});
    api.apply_json(
        "septa.dev/v1alpha1",
        "ThreatFeed",
        json!({"apiVersion": "septa.dev/v1alpha1", "kind": "ThreatFeed",
               "metadata": {"name": "bad-hosts"}, "spec": spec}),
    )
    .expect("apply feed");
    let feeds = threat_feeds(client);
    let status = json!({"conditions": [{"type": "Valid", "status": "True", "reason": "Loaded"}], "entries": 3});
    let applied = feeds
        .patch_status(
            "bad-hosts",
            &PatchParams::apply("septa-agent"),
            &Patch::Apply(
                json!({"apiVersion": "septa.dev/v1alpha1", "kind": "ThreatFeed", "status": status}),
            ),
        )
        .await
        .expect("server-side apply of the status");
    assert_eq!(applied.data["status"], status);
    assert_eq!(api.status_of("threatfeeds", "", "bad-hosts"), Some(status));

    let merged = feeds
        .patch_status(
            "bad-hosts",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"entries": 4}, "spec": {"action": "allow"}})),
        )
        .await
        .expect("merge patch of the status");
    assert_eq!(merged.data["status"]["entries"], 4);
    assert_eq!(merged.data["status"]["conditions"][0]["reason"], "Loaded");
    let stored = api
        .get_json("septa.dev/v1alpha1", "ThreatFeed", "", "bad-hosts")
        .expect("stored");
    assert_eq!(stored["spec"], spec, "a status patch leaves the spec");
    assert_eq!(stored["metadata"]["generation"], 1);
    assert_eq!(
        api.status_of("threatfeeds.septa.dev", "", "bad-hosts")
            .map(|s| s["entries"].clone()),
        Some(json!(4))
    );
}

#[tokio::test]
async fn posted_events_are_recorded() {
    use k8s_openapi::api::core::v1 as core;
    use k8s_openapi::api::events::v1 as events;
    let (api, client) = setup("events").await;
    let ev = events::Event {
        metadata: ObjectMeta {
            generate_name: Some("septa-".into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        reason: Some("PolicyDenied".into()),
        note: Some("denied 10.1.0.7 -> 10.1.0.8:80".into()),
        type_: Some("Warning".into()),
        action: Some("Enforce".into()),
        reporting_controller: Some("septa.dev/agent".into()),
        reporting_instance: Some("node-1".into()),
        event_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        )),
        ..Default::default()
    };
    let created = Api::<events::Event>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &ev)
        .await
        .expect("create event");
    let name = created.metadata.name.expect("generated name");
    assert!(name.starts_with("septa-"));
    let core_ev = core::Event {
        metadata: ObjectMeta {
            name: Some("pod-a.1".into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        involved_object: core::ObjectReference {
            kind: Some("Pod".into()),
            name: Some("a".into()),
            ..Default::default()
        },
        reason: Some("Adopted".into()),
        ..Default::default()
    };
    Api::<core::Event>::namespaced(client, "default")
        .create(&PostParams::default(), &core_ev)
        .await
        .expect("create core event");
    let recorded = api.events();
    let reasons: Vec<&str> = recorded
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert_eq!(reasons, ["PolicyDenied", "Adopted"]);
    assert_eq!(recorded[0]["note"], "denied 10.1.0.7 -> 10.1.0.8:80");
    assert_eq!(recorded[0]["metadata"]["name"], name.as_str());
}

/// One HTTP/1.1 request on a fresh connection; the status, content type and JSON body.
async fn raw(
    api: &FakeApi,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, Value) {
    let go = async {
        let mut s = tokio::net::TcpStream::connect(api.addr())
            .await
            .expect("connect");
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: fake\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("read");
        String::from_utf8_lossy(&out).into_owned()
    };
    let text = timeout(DEADLINE, go)
        .await
        .expect("an answer, not a hung connection");
    let (head, body) = text.split_once("\r\n\r\n").expect("a full HTTP response");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let ct = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_string)
        })
        .unwrap_or_default();
    (code, ct, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// (what, method, path, headers, body, status code, reason).
type Case<'a> = (
    &'a str,
    &'a str,
    String,
    Vec<(&'a str, &'a str)>,
    String,
    u16,
    &'a str,
);

#[tokio::test]
async fn malformed_requests_get_a_4xx_status() {
    let (api, _client) = setup("malformed").await;
    api.apply(&pod("default", "a", "web", "n1")).expect("apply");
    let stale = {
        let mut p = serde_json::to_value(pod("default", "a", "web", "n2")).expect("json");
        p["metadata"]["resourceVersion"] = json!("1");
        p.to_string()
    };
    let existing = serde_json::to_value(pod("default", "a", "web", "n1"))
        .expect("json")
        .to_string();
    let auth = ("Authorization", "Bearer agent-token");
    let json_ct = ("Content-Type", "application/json");
    let pods = "/api/v1/namespaces/default/pods";
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("bad JSON body", "POST", pods.into(), vec![auth, json_ct], "{not json".into(), 400, "BadRequest"),
        ("body not an object", "POST", pods.into(), vec![auth, json_ct], "[1]".into(), 400, "BadRequest"),
        ("bad labelSelector", "GET", "/api/v1/pods?labelSelector=app%20in%20(web".into(), vec![auth], String::new(), 400, "BadRequest"),
        ("unsupported field", "GET", "/api/v1/pods?fieldSelector=spec.bogus%3Dx".into(), vec![auth], String::new(), 400, "BadRequest"),
        ("bad limit", "GET", "/api/v1/pods?limit=many".into(), vec![auth], String::new(), 400, "BadRequest"),
        ("bad watch", "GET", "/api/v1/pods?watch=maybe".into(), vec![auth], String::new(), 400, "BadRequest"),
        ("bad resourceVersion", "GET", "/api/v1/pods?resourceVersion=abc".into(), vec![auth], String::new(), 400, "BadRequest"),
        ("bad continue", "GET", "/api/v1/pods?limit=1&continue=garbage".into(), vec![auth], String::new(), 400, "BadRequest"),
        ("unknown resource", "GET", "/apis/septa.dev/v1alpha1/widgets".into(), vec![auth], String::new(), 404, "NotFound"),
        ("unknown group", "GET", "/apis/nope.io/v1/things".into(), vec![auth], String::new(), 404, "NotFound"),
        ("cluster-scoped in a namespace", "GET", "/api/v1/namespaces/default/nodes".into(), vec![auth], String::new(), 404, "NotFound"),
        ("missing object", "GET", format!("{pods}/missing"), vec![auth], String::new(), 404, "NotFound"),
        ("delete missing", "DELETE", format!("{pods}/missing"), vec![auth], String::new(), 404, "NotFound"),
        ("create existing", "POST", pods.into(), vec![auth, json_ct], existing, 409, "AlreadyExists"),
        ("stale update", "PUT", format!("{pods}/a"), vec![auth, json_ct], stale, 409, "Conflict"),
        ("patch type", "PATCH", format!("{pods}/a"), vec![auth, ("Content-Type", "text/plain")], "{}".into(), 415, "UnsupportedMediaType"),
        ("apply without fieldManager", "PATCH", format!("{pods}/a"), vec![auth, ("Content-Type", "application/apply-patch+yaml")], r#"{"apiVersion":"v1","kind":"Pod"}"#.into(), 400, "BadRequest"),
        ("bad JSON patch", "PATCH", format!("{pods}/a"), vec![auth, ("Content-Type", "application/json-patch+json")], r#"[{"op":"explode"}]"#.into(), 400, "BadRequest"),
        ("wrong kind", "POST", pods.into(), vec![auth, json_ct], r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"x"}}"#.into(), 400, "BadRequest"),
        ("invalid name", "POST", pods.into(), vec![auth, json_ct], r#"{"metadata":{"name":"Not_Valid"}}"#.into(), 422, "Invalid"),
        ("no token", "GET", "/api/v1/pods".into(), vec![], String::new(), 401, "Unauthorized"),
        ("POST on a name", "POST", format!("{pods}/a"), vec![auth, json_ct], "{}".into(), 405, "MethodNotAllowed"),
    ];
    for (what, method, path, headers, body, code, reason) in cases {
        let (got, ct, status) = raw(&api, method, &path, &headers, &body).await;
        assert_eq!(got, code, "{what}: {status}");
        assert_eq!(ct, "application/json", "{what}");
        assert_eq!(status["kind"], "Status", "{what}");
        assert_eq!(status["code"], code, "{what}");
        assert_eq!(status["reason"], reason, "{what}: {status}");
    }
    // Still serving, and nothing changed.
    let (code, _, v) = raw(&api, "GET", &format!("{pods}/a"), &[auth], "").await;
    assert_eq!((code, v["spec"]["nodeName"].as_str()), (200, Some("n1")));
}

#[tokio::test]
async fn expired_continue_tokens_and_resource_versions_get_410() {
    let (api, client) = setup("expired").await;
    for n in ["a", "b", "c"] {
        api.apply(&pod("default", n, "web", "n1")).expect("apply");
    }
    let pods: Api<Pod> = Api::all(client);
    let first = pods
        .list(&ListParams::default().limit(1))
        .await
        .expect("page");
    let token = first.metadata.continue_.expect("continue token");
    let old_rv = first.metadata.resource_version.expect("rv");
    api.compact();
    let err = pods
        .list(&ListParams::default().limit(1).continue_token(&token))
        .await
        .expect_err("expired token");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 410 && s.reason == "Expired"),
        "{err:?}"
    );

    let mut s = pods
        .watch(&WatchParams::default(), &old_rv)
        .await
        .expect("watch")
        .boxed();
    match timeout(DEADLINE, s.next()).await.expect("an event") {
        Some(Ok(WatchEvent::Error(e))) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!(
            "expected a 410 ERROR event, got {:?}",
            other.map(|r| r.map(|_| ()))
        ),
    }
}

#[test]
fn typed_helpers_round_trip_through_k8s_openapi() {
    let api = FakeApi::start_local().expect("start");
    let rv1 = api.apply(&pod("default", "a", "web", "n1")).expect("apply");
    let rv2 = api
        .apply(&pod("default", "a", "db", "n1"))
        .expect("replace");
    assert!(rv2 > rv1);
    let p: Pod = api.get("default", "a").expect("decode").expect("present");
    assert_eq!(p.metadata.resource_version, Some(rv2.to_string()));
    assert_eq!(
        p.metadata
            .labels
            .and_then(|l| l.get("app").cloned())
            .as_deref(),
        Some("db")
    );
    assert_eq!(p.metadata.generation, Some(1), "labels are not spec");
    let mut moved = pod("default", "a", "db", "n2");
    moved.metadata.uid = Some("ignored".into());
    api.apply(&moved).expect("move");
    let p: Pod = api.get("default", "a").expect("decode").expect("present");
    assert_eq!(
        p.metadata.generation,
        Some(2),
        "a spec change bumps the generation"
    );
    assert_ne!(
        p.metadata.uid.as_deref(),
        Some("ignored"),
        "the server owns the uid"
    );
    assert_eq!(api.list_json("v1", "Pod").expect("list").len(), 1);
    let rv3 = api.delete::<Pod>("default", "a").expect("delete");
    assert!(rv3 > rv2);
    assert!(api.delete::<Pod>("default", "a").is_err(), "already gone");
    assert!(api.get::<Pod>("default", "a").expect("decode").is_none());
    assert!(
        api.apply_json("v1", "Widget", json!({})).is_err(),
        "unknown kind"
    );
}

#[tokio::test]
async fn a_slow_api_still_answers_and_discovery_is_served() {
    let (api, client) = setup("slow").await;
    api.set_delay(Duration::from_millis(50));
    let v = client.apiserver_version().await.expect("version");
    assert_eq!(v.major, "1");
    let groups = client.list_api_groups().await.expect("groups");
    assert!(groups.groups.iter().any(|g| g.name == "septa.dev"));
    let res = client
        .list_api_group_resources("septa.dev/v1alpha1")
        .await
        .expect("resources");
    let names: BTreeSet<&str> = res.resources.iter().map(|r| r.name.as_str()).collect();
    assert!(names.contains("threatfeeds/status") && names.contains("fqdnpolicies"));
    let core = client.list_core_api_resources("v1").await.expect("core");
    assert!(core
        .resources
        .iter()
        .any(|r| r.name == "pods" && r.namespaced));
    assert_eq!(count(&api, "get", "/version"), 1);
}

#[tokio::test]
async fn timeout_seconds_ends_the_watch_cleanly() {
    let (api, client) = setup("timeout").await;
    api.apply(&pod("default", "a", "web", "n1")).expect("apply");
    let pods: Api<Pod> = Api::all(client);
    let s = pods
        .watch(&WatchParams::default().timeout(1).disable_bookmarks(), "0")
        .await
        .expect("watch");
    let items: Vec<_> = timeout(DEADLINE, s.collect::<Vec<_>>())
        .await
        .expect("the stream ends");
    let kinds: Vec<&str> = items
        .iter()
        .map(|e| match e {
            Ok(WatchEvent::Added(_)) => "ADDED",
            Ok(_) => "other",
            Err(_) => "error",
        })
        .collect();
    assert_eq!(kinds, ["ADDED"], "the current state, then a clean end");
    assert_eq!(api.open_watches(), 0);
}

#[tokio::test]
async fn metadata_watchers_and_selectors_get_what_they_ask_for() {
    let (api, client) = setup("metadata").await;
    api.apply(&pod("default", "a", "web", "n1")).expect("apply");
    api.apply(&pod("default", "b", "db", "n1")).expect("apply");
    let cfg = watcher::Config::default().labels("app=web");
    let mut s = watcher(Api::<PartialObjectMeta<Pod>>::all(client), cfg).boxed();
    let mut names = BTreeSet::new();
    let synced = timeout(DEADLINE, async {
        while let Some(ev) = s.next().await {
            match ev.expect("no error") {
                Event::InitApply(m) => {
                    assert!(m.metadata.labels.is_some(), "metadata kept");
                    let kind = m.types.as_ref().map(|t| t.kind.as_str());
                    assert_eq!(kind, Some("PartialObjectMetadata"), "metadata only");
                    names.insert(m.metadata.name.unwrap_or_default());
                }
                Event::InitDone => return,
                _ => {}
            }
        }
    })
    .await;
    assert!(synced.is_ok(), "initial list within the deadline");
    assert_eq!(names, BTreeSet::from(["a".to_string()]));
    // A change that takes an object out of the selector is a deletion for this watch.
    api.apply(&pod("default", "a", "db", "n1"))
        .expect("relabel");
    let next = timeout(DEADLINE, async {
        loop {
            match s.next().await {
                Some(Ok(Event::Delete(m))) => return m.metadata.name,
                Some(Ok(_)) => continue,
                other => panic!("unexpected {:?}", other.map(|r| r.map(|_| ()))),
            }
        }
    })
    .await
    .expect("a deletion");
    assert_eq!(next.as_deref(), Some("a"));
    assert!(api
        .requests()
        .iter()
        .all(|r| r.path.contains("labelSelector=app%3Dweb")));
}

#[tokio::test]
async fn kube_recorder_events_and_their_series_are_recorded() {
    use kube::runtime::events::{Event as Ev, EventType, Recorder, Reporter};
    let (api, client) = setup("recorder").await;
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "septa-agent".into(),
            instance: Some("node-1".into()),
        },
    );
    let pod_ref = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some("a".into()),
        namespace: Some("default".into()),
        ..Default::default()
    };
    let ev = Ev {
        type_: EventType::Warning,
        reason: "PolicyDenied".into(),
        note: Some("denied egress to 10.1.0.8:80".into()),
        action: "Enforce".into(),
        secondary: None,
    };
    recorder
        .publish(&ev, &pod_ref)
        .await
        .expect("first publish: create");
    recorder
        .publish(&ev, &pod_ref)
        .await
        .expect("second publish: merge patch");
    let recorded = api.events();
    assert_eq!(recorded.len(), 1, "one Event with a series");
    assert_eq!(recorded[0]["reason"], "PolicyDenied");
    assert_eq!(recorded[0]["regarding"]["name"], "a");
    assert_eq!(recorded[0]["series"]["count"], 2);
    let verbs: Vec<String> = api.requests().into_iter().map(|r| r.verb).collect();
    assert_eq!(verbs, ["create", "patch"]);
}

/// Open a raw watch, read until its first event, then let `after` act and read the rest.
async fn raw_watch(api: &FakeApi, query: &str, after: impl FnOnce()) -> String {
    let mut s = tokio::net::TcpStream::connect(api.addr())
        .await
        .expect("connect");
    let req = format!(
        "GET /api/v1/pods?watch=true&{query} HTTP/1.1\r\nHost: fake\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let first = timeout(DEADLINE, async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("ADDED") {
            let n = s.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed before the first event");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(first.is_ok(), "a first event");
    after();
    let rest = timeout(DEADLINE, s.read_to_end(&mut got)).await;
    assert!(rest.is_ok(), "the stream ends");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn cut_watches_end_mid_stream_and_timeouts_end_cleanly() {
    let (api, _client) = setup("cut").await;
    api.apply(&pod("default", "a", "web", "n1")).expect("apply");
    // The last chunk of a chunked body that ends properly.
    let clean_end = "\r\n0\r\n\r\n";
    let cut = raw_watch(&api, "resourceVersion=0", || api.drop_watches()).await;
    assert!(cut.contains("200 OK") && cut.contains("\"ADDED\""), "{cut}");
    assert!(
        !cut.ends_with(clean_end),
        "a cut stream has no last chunk: {cut}"
    );
    let timed_out = raw_watch(&api, "resourceVersion=0&timeoutSeconds=0", || {}).await;
    assert!(timed_out.ends_with(clean_end), "{timed_out}");
}

#[tokio::test]
async fn extra_listeners_serve_the_same_store_and_stop_and_restart_together() {
    fn shareable<T: Send + Sync>(_: &T) {}
    let (api, first) = setup("listeners").await;
    shareable(&api);
    let second_addr = api
        .add_listener(std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .expect("add a listener");
    assert_ne!(second_addr, api.addr());
    let path = scratch("listeners-2").join("kubeconfig");
    api.kubeconfig_at(&path, TOKEN, second_addr)
        .expect("kubeconfig");
    let cfg = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&path).expect("read"),
        &KubeConfigOptions::default(),
    )
    .await
    .expect("config");
    let second = Client::try_from(cfg).expect("client");
    api.apply(&pod("default", "a", "web", "n1")).expect("apply");
    for client in [first.clone(), second.clone()] {
        let p = Api::<Pod>::namespaced(client, "default").get("a").await;
        assert!(p.is_ok(), "{p:?}");
    }
    api.stop();
    for addr in [api.addr(), second_addr] {
        let e = std::net::TcpStream::connect(addr)
            .map_err(|e| e.kind())
            .err();
        assert_eq!(e, Some(std::io::ErrorKind::ConnectionRefused), "{addr}");
    }
    api.restart().expect("restart");
    for client in [first, second] {
        let pods = Api::<Pod>::all(client).list(&ListParams::default()).await;
        assert_eq!(pods.map(|l| l.items.len()).ok(), Some(1));
    }
}

#[tokio::test]
async fn token_reviews_check_tokens_against_the_known_users() {
    use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
    let (_api, client) = setup("tokenreview").await;
    let reviews: Api<TokenReview> = Api::all(client);
    for (token, want) in [(TOKEN, Some(USER)), ("forged", None)] {
        let tr = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let done = reviews
            .create(&PostParams::default(), &tr)
            .await
            .expect("review");
        let status = done.status.expect("status");
        assert_eq!(status.authenticated, Some(want.is_some()), "{token}");
        assert_eq!(
            status.user.and_then(|u| u.username).as_deref(),
            want,
            "{token}"
        );
    }
}
