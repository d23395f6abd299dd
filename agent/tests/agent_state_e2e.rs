//! The agent's own state, end to end, by fault injection: a full state file system, a damaged
//! registry, a second agent on the same node, directories others can write to, a link planted
//! where the registry is written, a pod with two addresses of one family. Real agent in a node
//! namespace, pods through the real CNI chain.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use api::protocol::{Endpoint, Request, Response};
use cni::plugin::call_agent;
use testbed::{
    cni::Attachment,
    node::{Binaries, Node},
    traffic::*,
};

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: demo}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 8080}]}]
"#;

fn bins() -> Binaries {
    Binaries::for_agent(env!("CARGO_BIN_EXE_septa-agent"))
}

/// A node with the manifests written, the agent not started.
fn node(tag: &str) -> Node {
    let n = Node::new(tag, bins()).unwrap();
    n.write_manifest("00-demo.yaml", MANIFESTS).unwrap();
    n
}

fn to(a: &Attachment, port: u16) -> SocketAddr {
    SocketAddr::new(Node::pod_ip(a), port)
}

fn agent(n: &Node, req: &Request) -> Response {
    call_agent(&n.socket, req, Duration::from_secs(10)).unwrap()
}

fn registered(n: &Node, container_id: &str) -> bool {
    agent(
        n,
        &Request::Check {
            container_id: container_id.into(),
        },
    )
    .ok
}

/// Program links pinned for pod interfaces.
fn pinned_links(n: &Node) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(n.pin_dir.join("links"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// client → web:8080 connects and echoes; other → web:8080 does not connect.
fn assert_policy_holds(client: &Attachment, other: &Attachment, web: &Attachment, when: &str) {
    let mut c = tcp_connect(&client.netns, to(web, 8080))
        .unwrap_or_else(|e| panic!("{when}: client reaches web: {e}"));
    echo(&mut c, b"hi").unwrap();
    assert!(
        tcp_connect(&other.netns, to(web, 8080)).is_err(),
        "{when}: other is denied"
    );
}

/// A tmpfs mounted over a directory for the length of a test (lazily unmounted: the agent may
/// still hold files in it when the test ends).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, options: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "septa-test"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", dir.display());
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Write `path` until the file system is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = [0u8; 4096];
    loop {
        if let Err(e) = f.write_all(&block).and_then(|_| f.sync_all()) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            return;
        }
    }
}

#[test]
fn an_add_whose_registration_cannot_be_saved_fails_and_is_undone() {
    let mut n = node("full");
    // The state directory on a small file system of its own, filled below.
    let _fs = Tmpfs::mount(&n.state_dir(), "size=256k,mode=0700");
    n.start_agent().unwrap();
    let web = n.add_pod("demo", "web-1", "app=web").unwrap();
    let other = n.add_pod("demo", "other-1", "app=other").unwrap();
    let _srv = Server::start(&web.netns, &[8080], &[]).unwrap();
    fill(&n.state_dir().join("filler"));
    let links = pinned_links(&n);

    // Through the runtime directly, without the DEL `add_pod` runs after a failure: what is
    // undone here is the agent's own doing. (Listed as the node's pod, so it is cleaned up
    // whatever happens.)
    let netns = format!("septa-{}-client-1", n.bed.id);
    testbed::bed::ip(&["netns", "add", &netns]).unwrap();
    let failed = Attachment {
        container_id: "c-client-1".into(),
        netns: PathBuf::from("/run/netns").join(&netns),
        ifname: "eth0".into(),
        args:
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=client-1;SEPTA_LABELS=app:client"
                .into(),
        result: serde_json::Value::Null,
    };
    n.pods.push((netns, failed.clone()));
    let e = n
        .runtime
        .add(&failed.container_id, &failed.netns, "eth0", &failed.args)
        .expect_err("an ADD the agent could not persist is not acknowledged")
        .to_string();
    assert!(
        e.contains("endpoints.json") && e.contains("not saved"),
        "the error names the registry: {e}"
    );
    assert!(!registered(&n, "c-client-1"), "the registration is undone");
    assert_eq!(pinned_links(&n), links, "and so are its programs");
    assert!(registered(&n, "c-web-1") && registered(&n, "c-other-1"));
    // As a runtime does after a failed ADD: DEL, then the namespace goes.
    n.del_pod("client-1").unwrap();

    // With space again the ADD succeeds, and what it saved outlives the agent.
    std::fs::remove_file(n.state_dir().join("filler")).unwrap();
    let client = n.add_pod("demo", "client-1", "app=client").unwrap();
    n.stop_agent().unwrap();
    n.start_agent().unwrap();
    for a in [&web, &client, &other] {
        n.runtime.check(a).unwrap();
    }
    assert_policy_holds(&client, &other, &web, "after the restart");
}

#[test]
fn a_damaged_registry_costs_no_pod_its_policy() {
    let mut n = node("corrupt");
    n.start_agent().unwrap();
    let web = n.add_pod("demo", "web-1", "app=web").unwrap();
    let client = n.add_pod("demo", "client-1", "app=client").unwrap();
    let other = n.add_pod("demo", "other-1", "app=other").unwrap();
    let _srv = Server::start(&web.netns, &[8080], &[]).unwrap();
    assert_policy_holds(&client, &other, &web, "before");
    let state = n.state_dir();
    let (current, previous) = (
        state.join("endpoints.json"),
        state.join("endpoints.json.prev"),
    );
    let good = std::fs::read(&current).unwrap();
    let truncated = &good[..good.len() / 2];

    // endpoints.json truncated: its second copy takes over, every pod stays as it was.
    n.stop_agent().unwrap();
    std::fs::write(&current, truncated).unwrap();
    n.start_agent().unwrap();
    for a in [&web, &client, &other] {
        n.runtime.check(a).unwrap();
    }
    assert_policy_holds(
        &client,
        &other,
        &web,
        "after a restart over a truncated registry",
    );
    assert!(n.agent_log().contains("using its second copy"));
    assert_eq!(std::fs::read(&current).unwrap(), good, "rewritten at start");

    // Both copies truncated: no start (and so no empty registry wiping the pinned endpoints).
    n.stop_agent().unwrap();
    for f in [&current, &previous] {
        std::fs::write(f, truncated).unwrap();
    }
    let e = n
        .start_agent()
        .expect_err("no start over an unreadable registry")
        .to_string();
    assert!(
        e.contains(&current.display().to_string()) && e.contains("Refusing to start"),
        "the error names the file: {e}"
    );
    assert_policy_holds(&client, &other, &web, "with the agent refusing to start");

    std::fs::write(&previous, &good).unwrap();
    n.start_agent().unwrap();
    for a in [&web, &client, &other] {
        n.runtime.check(a).unwrap();
    }
    assert_policy_holds(&client, &other, &web, "once a copy is restored");
}

#[test]
fn a_second_agent_on_the_node_fails_at_once_and_the_first_keeps_serving() {
    let mut n = node("twice");
    n.start_agent().unwrap();
    let web = n.add_pod("demo", "web-1", "app=web").unwrap();
    let client = n.add_pod("demo", "client-1", "app=client").unwrap();
    let other = n.add_pod("demo", "other-1", "app=other").unwrap();
    let _srv = Server::start(&web.netns, &[8080], &[]).unwrap();
    let pid = n.agent_pid().unwrap();

    let own_pins = format!("{}-second", n.pin_dir.display());
    let own_state = n.dir.join("state-second").display().to_string();
    let lock = n.state_dir().join("agent.lock").display().to_string();
    let pins = n.pin_dir.display().to_string();
    let socket_lock = n.dir.join(".septa.sock.lock").display().to_string();
    // A socket something else already serves on (an agent of a build without the lock).
    let served = n.dir.join("served.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&served).unwrap();
    let served = served.display().to_string();
    /// (case, flags of the second agent that differ from the first's, what its error names).
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<String>);
    let cases: [Case; 5] = [
        (
            "the same directories",
            vec![],
            vec![lock.clone(), format!("pid {pid}")],
        ),
        (
            "the same pins, its own state",
            vec![("--state-dir", &own_state)],
            vec![pins.clone(), "locked by another septa-agent".into()],
        ),
        (
            "the same state, its own pins",
            vec![("--pin-dir", &own_pins)],
            vec![lock.clone(), format!("pid {pid}")],
        ),
        (
            "its own state and pins, the same socket",
            vec![("--state-dir", &own_state), ("--pin-dir", &own_pins)],
            vec![socket_lock.clone(), format!("pid {pid}")],
        ),
        (
            "its own state and pins, a socket served by another process",
            vec![
                ("--state-dir", &own_state),
                ("--pin-dir", &own_pins),
                ("--socket", &served),
            ],
            vec![served.clone(), "another agent is serving on it".into()],
        ),
    ];
    for (case, overrides, want) in cases {
        let out = n.agent_command(&overrides).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{case}: a second agent must not run");
        for w in &want {
            assert!(err.contains(w.as_str()), "{case}: {w:?} not in:\n{err}");
        }
        testbed::remove_pins(Path::new(&own_pins));
        // The first agent still serves, on its own socket, with every endpoint.
        assert!(n.agent_running(), "{case}");
        for cid in ["c-web-1", "c-client-1", "c-other-1"] {
            assert!(registered(&n, cid), "{case}: {cid} still registered");
        }
        assert_policy_holds(&client, &other, &web, case);
    }
    let late = n.add_pod("demo", "late-1", "app=client").unwrap();
    n.runtime.check(&late).unwrap();
}

#[test]
fn directories_others_could_write_to_are_refused_at_start() {
    let cases: [(&str, u32); 4] = [
        ("state", 0o777),
        ("state", 0o770),
        ("socket", 0o757),
        ("pin", 0o777),
    ];
    for (which, mode) in cases {
        let case = format!("{which} directory mode {mode:o}");
        let mut n = node("perm");
        let dir = match which {
            "state" => n.state_dir(),
            "socket" => n.dir.clone(),
            _ => n.pin_dir.clone(),
        };
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
        let e = n.start_agent().expect_err(&case).to_string();
        let dir = dir.canonicalize().unwrap();
        assert!(
            e.contains(&dir.display().to_string()) && e.contains("chmod go-w"),
            "{case}: {e}"
        );
        assert!(
            !n.socket.exists(),
            "{case}: no socket bound by an agent that refused to start"
        );
    }
    // Owned by another user.
    let mut n = node("owner");
    std::fs::create_dir_all(n.state_dir()).unwrap();
    std::os::unix::fs::chown(n.state_dir(), Some(65534), Some(65534)).unwrap();
    let e = n.start_agent().expect_err("foreign owner").to_string();
    assert!(e.contains("owned by uid 65534"), "{e}");
}

#[test]
fn a_link_planted_where_the_registry_is_written_is_never_followed() {
    let mut n = node("planted");
    let precious = n.dir.join("precious");
    std::fs::write(&precious, "keep me").unwrap();
    std::fs::create_dir_all(n.state_dir()).unwrap();
    std::os::unix::fs::symlink(&precious, n.state_dir().join("endpoints.json.tmp")).unwrap();
    n.start_agent().unwrap();
    n.add_pod("demo", "web-1", "app=web").unwrap();
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
    let registry = n.state_dir().join("endpoints.json");
    let meta = std::fs::symlink_metadata(&registry).unwrap();
    assert!(meta.is_file(), "the registry is a file of its own");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    assert!(std::fs::read_to_string(&registry)
        .unwrap()
        .contains("c-web-1"));
}

#[test]
fn a_pod_with_two_addresses_of_one_family_is_refused_naming_both() {
    let mut n = node("dual");
    n.start_agent().unwrap();
    let web = n.add_pod("demo", "web-1", "app=web").unwrap();
    let host_ifname = web.result["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i.get("sandbox").is_none() && i["name"] != "cni-septa0")
        .and_then(|i| i["name"].as_str())
        .unwrap()
        .to_owned();
    // The runtime's ADD again, now with a second IPv4 address (as a prevResult of a primary
    // plugin that assigns two would list them).
    let ip = Node::pod_ip(&web);
    let r = agent(
        &n,
        &Request::Add(Endpoint {
            container_id: web.container_id.clone(),
            netns: web.netns.display().to_string(),
            ifname: "eth0".into(),
            host_ifname,
            cgroup: None,
            namespace: "demo".into(),
            name: "web-1".into(),
            labels: Some([("app".to_owned(), "web".to_owned())].into()),
            ips: vec![
                ip,
                "fd00::200".parse().unwrap(),
                "10.88.0.201".parse().unwrap(),
            ],
        }),
    );
    assert!(!r.ok, "refused");
    assert!(
        r.error.contains(&ip.to_string()) && r.error.contains("10.88.0.201"),
        "the error names both: {}",
        r.error
    );
    n.runtime.check(&web).expect("the registration as it was");
}

/// Manifests with septa's own kinds: an FqdnPolicy for the client pods and a threat feed
/// that applies to pod ingress.
fn septa_manifests(feed_url: &str) -> String {
    format!(
        "apiVersion: septa.dev/v1alpha1
kind: FqdnPolicy
metadata: {{name: by-name, namespace: demo}}
spec:
  podSelector: {{matchLabels: {{app: client}}}}
  egress:
  - toFQDNs: [{{matchName: api.example.test}}, {{matchName: later.example.test}}]
    ports: [{{protocol: TCP, port: 443}}]
---
apiVersion: septa.dev/v1alpha1
kind: ThreatFeed
metadata: {{name: bad}}
spec: {{url: '{feed_url}', format: lines, refresh: 1s, appliesTo: [podIngress]}}
"
    )
}

/// A NetworkPolicy with a misspelled field: an error of the directory, unrelated to the rest.
const BROKEN: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: typo, namespace: demo}
spec:
  podSelecter: {matchLabels: {app: web}}
";

#[test]
fn a_restart_on_manifests_with_errors_keeps_threat_feeds_and_fqdn_rules() {
    use testbed::{
        dns::Outside,
        http::{FeedServer, Reply},
        node::{http_get, metric},
    };
    const LISTED: &str = "198.51.100.30";
    const CLEAN: &str = "198.51.100.31";
    let mut n = node("lastgood");
    let records = [
        "--host-record=api.example.test,198.51.100.10",
        "--host-record=later.example.test,198.51.100.11",
    ]
    .map(str::to_owned);
    let out = Outside::start(
        &n,
        &["198.51.100.10", "198.51.100.11", LISTED, CLEAN],
        &records,
        "api.example.test",
    )
    .unwrap();
    let server = FeedServer::start(&n.bed.node_path(), "127.0.0.1:0".parse().unwrap()).unwrap();
    server.set("/bad.txt", Reply::list(&format!("{LISTED}\n")));
    n.agent_args = [
        "--dns-server",
        "192.0.2.53:53",
        "--dns-resolver",
        "192.0.2.53",
        "--dns-preresolve-interval",
        "0s",
        "--feed-min-refresh",
        "1s",
    ]
    .map(str::to_owned)
    .to_vec();
    n.write_manifest("10-septa.yaml", &septa_manifests(&server.url("/bad.txt")))
        .unwrap();
    n.start_agent().unwrap();
    let client = n.add_pod("demo", "client", "app=client").unwrap();
    let web = n.add_pod("demo", "open", "app=open").unwrap();
    Node::route_via_node(&client).unwrap();
    Node::route_via_node(&web).unwrap();
    let _srv = Server::start(&out.path(), &[443], &[]).unwrap();
    let _web_srv = Server::start(&web.netns, &[8080], &[]).unwrap();
    let from = |src: &str| tcp_connect_from(&out.path(), src.parse().unwrap(), to(&web, 8080));
    let https = |a: &str| SocketAddr::new(a.parse().unwrap(), 443);
    poll_until(Duration::from_secs(30), || {
        from(LISTED).is_err().then_some(())
    })
    .expect("the feed never blocked its address");
    assert!(from(CLEAN).is_ok());
    testbed::dns::query(&client.netns, "api.example.test", false).unwrap();
    assert!(tcp_connect(&client.netns, https("198.51.100.10")).is_ok());
    assert!(tcp_connect(&client.netns, https(CLEAN)).is_err());
    assert_eq!(
        http_get(&n.bed.node_path(), "/readyz").lines().next(),
        Some("HTTP/1.0 200 OK")
    );

    // A restart with an unrelated error in the directory, and the feed host down.
    n.stop_agent().unwrap();
    n.write_manifest("20-broken.yaml", BROKEN).unwrap();
    server.set("/bad.txt", Reply::Status(503));
    n.start_agent().unwrap();
    assert!(
        from(LISTED).is_err(),
        "the blocklist was emptied by the restart"
    );
    assert!(from(CLEAN).is_ok());
    // A name never looked up before the restart: only rules can let it through.
    let got = testbed::dns::query(&client.netns, "later.example.test", false).unwrap();
    assert_eq!(
        got,
        ["198.51.100.11".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    assert!(
        tcp_connect(&client.netns, https("198.51.100.11")).is_ok(),
        "FQDN rules lost by the restart; agent log:\n{}",
        n.agent_log()
    );
    assert!(tcp_connect(&client.netns, https(CLEAN)).is_err());

    // Readiness and the CNI answers say what is enforced, and why not ready.
    let ready = http_get(&n.bed.node_path(), "/readyz");
    assert!(ready.starts_with("HTTP/1.0 503"), "{ready}");
    for words in [
        "20-broken.yaml",
        "spec.podSelecter",
        "enforcing the last good state, from the copy of",
        "manifests.json",
    ] {
        assert!(ready.contains(words), "{words:?} not in {ready}");
    }
    let status = agent(&n, &Request::Status);
    assert!(status.ok, "{status:?}");
    assert!(
        status.warning.contains("enforcing the last good state"),
        "{status:?}"
    );
    assert!(!ready.contains("no good state yet"), "{ready}");
    let m = http_get(&n.bed.node_path(), "/metrics");
    assert_eq!(metric(&m, "septa_manifest_errors"), 1.0, "{m}");

    // Fixed: ready again.
    std::fs::remove_file(n.manifests.join("20-broken.yaml")).unwrap();
    poll_until(Duration::from_secs(10), || {
        http_get(&n.bed.node_path(), "/readyz")
            .starts_with("HTTP/1.0 200")
            .then_some(())
    })
    .expect("not ready once the manifests were fixed");
    n.stop_agent().unwrap();
}

#[test]
fn an_agent_with_no_good_state_says_so() {
    let n = node("nogood");
    n.write_manifest("20-broken.yaml", BROKEN).unwrap();
    let mut child = n
        .agent_command(&[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = poll_until(Duration::from_secs(30), || {
        call_agent(&n.socket, &Request::Status, Duration::from_secs(1)).ok()
    });
    let _ = child.kill();
    let _ = child.wait();
    let status = status.expect("the agent never answered");
    assert!(!status.ok);
    for words in [
        "20-broken.yaml",
        "no good state yet",
        "no saved copy",
        "pods are refused",
    ] {
        assert!(status.error.contains(words), "{words:?} not in {status:?}");
    }
    assert!(!status.error.contains("last good state"), "{status:?}");

    // A saved copy that cannot be used is named as such, not as absent.
    std::fs::write(n.state_dir().join(agent::snapshot::FILE), "{\"half\": ").unwrap();
    let mut child = n
        .agent_command(&[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = poll_until(Duration::from_secs(30), || {
        call_agent(&n.socket, &Request::Status, Duration::from_secs(1)).ok()
    });
    let _ = child.kill();
    let _ = child.wait();
    let status = status.expect("the agent never answered");
    for words in [
        "no good state yet",
        "the saved copy is unreadable",
        "manifests.json",
    ] {
        assert!(status.error.contains(words), "{words:?} not in {status:?}");
    }
}

#[test]
fn a_restart_with_no_input_change_writes_nothing_to_the_maps() {
    use testbed::node::{http_get, metric};
    let mut n = node("renumber");
    n.start_agent().unwrap();
    // Pods come in an order that is not the sorted order of their labels.
    let web = n.add_pod("demo", "web", "app=web").unwrap();
    let client = n.add_pod("demo", "client", "app=client").unwrap();
    let other = n.add_pod("demo", "other", "app=other").unwrap();
    let _srv = Server::start(&web.netns, &[8080], &[]).unwrap();
    let revision = |n: &Node| {
        poll_until(Duration::from_secs(10), || {
            let v = metric(
                &http_get(&n.bed.node_path(), "/metrics"),
                "septa_policy_revision",
            );
            (v > 0.0).then_some(v)
        })
        .expect("no septa_policy_revision")
    };
    let before = revision(&n);
    let identity = |n: &Node, c: &Attachment| {
        agent(
            n,
            &Request::Check {
                container_id: c.container_id.clone(),
            },
        )
        .identity
    };
    let ids: Vec<_> = [&web, &client, &other].map(|c| identity(&n, c)).to_vec();
    let writes = |n: &Node| n.agent_log().matches("maps reconciled").count();
    let written = writes(&n);
    n.stop_agent().unwrap();
    n.start_agent().unwrap();
    assert_eq!(
        revision(&n),
        before,
        "the restart bumped the policy revision"
    );
    assert_eq!(
        writes(&n),
        written,
        "the restart wrote to the maps:\n{}",
        n.agent_log()
    );
    assert_eq!(
        [&web, &client, &other].map(|c| identity(&n, c)).to_vec(),
        ids
    );
    assert_policy_holds(&client, &other, &web, "after the restart");
    n.stop_agent().unwrap();
}

#[test]
fn bad_options_exit_2_naming_the_option_before_anything_is_loaded() {
    let n = node("badopts");
    let pin = n.dir.join("pins-badopts");
    let pin_s = pin.display().to_string();
    for (flag, value) in [
        ("--poll-interval", "0s"),
        ("--flow-update-interval", "0s"),
        ("--flow-aggregate-window", "0s"),
        ("--conntrack-entries", "0"),
        ("--flow-log", "/nonexistent-septa/flows.jsonl"),
    ] {
        let mut c = n.agent_command(&[("--pin-dir", pin_s.as_str())]);
        let out = c.args([flag, value]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(flag), "{flag} {value}: {stderr}");
        assert!(
            !pin.exists(),
            "{flag} {value}: something was pinned: {stderr}"
        );
        assert!(
            !n.state_dir().join(agent::registry::FILE).exists(),
            "{flag} {value}: state was written"
        );
    }
}

#[test]
fn metrics_set_while_starting_are_there_at_the_first_scrape() {
    let mut n = node("metrics-start");
    n.start_agent().unwrap();
    let _web = n.add_pod("demo", "web", "app=web").unwrap();
    n.stop_agent().unwrap();
    n.start_agent().unwrap();
    let m = testbed::node::http_get(&n.bed.node_path(), "/metrics");
    for series in [
        "septa_manifest_errors 0",
        "septa_endpoints 1",
        "septa_policy_map_entries ",
        "septa_ipcache_entries ",
    ] {
        assert!(
            m.lines().any(|l| l.starts_with(series)),
            "{series:?} missing right after the start:\n{m}"
        );
    }
    n.stop_agent().unwrap();
}
