//! Threat feeds end to end: the real agent pulls feeds from an HTTP server (in the test),
//! applies them, and real traffic from and to listed addresses is dropped at XDP (host
//! interface) and TC (pod veth) while unlisted traffic passes.
//!
//! Topology: the node namespace, a pod on the CNI bridge, and an "outside" namespace joined
//! to the node by a veth (`sx0` on the node, XDP attached) that owns the listed and unlisted
//! addresses and routes to the pod network through the node.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use testbed::{
    dns::Outside,
    http::{FeedServer, Reply},
    node::{flow_records, http_get, metric, Binaries, Node},
    traffic::*,
};

const NODE_ADDR: &str = "198.18.0.1";
/// On the "pods" feed (pod egress and ingress only).
const POD_LISTED: &str = "203.0.113.9";
/// On the "host" feed (host ingress only).
const HOST_LISTED: &str = "203.0.113.10";
const CLEAN: &str = "192.0.2.20";
const PORT: u16 = 7100;

fn bins() -> Binaries {
    Binaries::for_agent(env!("CARGO_BIN_EXE_septa-agent"))
}

fn outside(n: &Node) -> Outside {
    Outside::new(n, &[POD_LISTED, HOST_LISTED, CLEAN], &["203.0.113.0/24"]).unwrap()
}

fn feed_manifest(name: &str, url: &str, applies: &str, action: &str) -> String {
    format!(
        "apiVersion: septa.dev/v1alpha1\nkind: ThreatFeed\nmetadata: {{name: {name}}}\nspec:\n  url: {url}\n  format: lines\n  refresh: 1s\n  action: {action}\n  appliesTo: [{applies}]\n"
    )
}

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Whether a TCP connection from `from` (in `ns`) to `to` completes.
fn connects(ns: &std::path::Path, from: Option<&str>, to: SocketAddr) -> bool {
    match from {
        Some(f) => tcp_connect_from(ns, addr(f), to).is_ok(),
        None => tcp_connect(ns, to).is_ok(),
    }
}

fn metrics(n: &Node) -> String {
    http_get(&n.bed.node_path(), "/metrics")
}

/// Wait until a metric reaches `at_least` (the agent works on its own schedule).
fn wait_metric(n: &Node, name: &str, at_least: f64) -> f64 {
    poll_until(Duration::from_secs(30), || {
        let v = metric(&metrics(n), name);
        (v >= at_least).then_some(v)
    })
    .unwrap_or_else(|| {
        panic!(
            "{name} did not reach {at_least}; now {}; agent log:\n{}",
            metric(&metrics(n), name),
            n.agent_log()
        )
    })
}

/// A node with a pod, the outside namespace, a feed server in the node namespace and the
/// agent started with XDP on `sx0`.
fn setup(
    tag: &str,
    extra_args: &[&str],
) -> (Node, Outside, FeedServer, testbed::cni::Attachment, PathBuf) {
    let mut n = Node::new(tag, bins()).unwrap();
    n.log_filter = "info,septa::flow=debug".into();
    let out = outside(&n);
    let server = FeedServer::start(&n.bed.node_path(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let log = n.dir.join("flows.jsonl");
    n.agent_args = [
        "--xdp-interface",
        "sx0",
        "--feed-min-refresh",
        "1s",
        "--feed-retry-min",
        "200ms",
        "--feed-protect",
        "10.88.0.0/24",
        "--flow-log",
        log.to_str().unwrap(),
    ]
    .iter()
    .chain(extra_args)
    .map(|s| s.to_string())
    .collect();
    n.write_manifest(
        "00-ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n",
    )
    .unwrap();
    n.start_agent().unwrap();
    let pod = n.add_pod("demo", "client-1", "app=client").unwrap();
    // The test network's IPAM gives the pod its subnet route only; the node routes the rest.
    Node::route_via_node(&pod).unwrap();
    (n, out, server, pod, log)
}

#[test]
fn feeds_drop_listed_traffic_at_xdp_and_tc_and_follow_changes() {
    let (mut n, out, server, pod, log) = setup("feeds", &[]);
    let node_ns = n.bed.node_path();
    let _outside_srv = Server::start(&out.path(), &[PORT], &[]).unwrap();
    let _node_srv = Server::start(&node_ns, &[PORT], &[]).unwrap();
    let _pod_srv = Server::start(&pod.netns, &[PORT], &[]).unwrap();
    let pod_addr = SocketAddr::new(Node::pod_ip(&pod), PORT);
    let node_addr = SocketAddr::new(addr(NODE_ADDR), PORT);
    let sock = |a: &str| SocketAddr::new(addr(a), PORT);

    // Everything passes before any feed.
    assert!(connects(&pod.netns, None, sock(POD_LISTED)));
    assert!(connects(&out.path(), Some(HOST_LISTED), node_addr));

    server.set(
        "/pods.txt",
        Reply::list(&format!("# pods feed\n{POD_LISTED}\n")),
    );
    server.set("/host.txt", Reply::list(&format!("{HOST_LISTED} ; SBL\n")));
    n.write_manifest(
        "20-feeds.yaml",
        &format!(
            "{}---\n{}",
            feed_manifest(
                "pods",
                &server.url("/pods.txt"),
                "podEgress, podIngress",
                "drop"
            ),
            feed_manifest("host", &server.url("/host.txt"), "hostIngress", "drop")
        ),
    )
    .unwrap();
    wait_metric(&n, "septa_blocklist_entries{family=\"ipv4\"}", 2.0);

    // TC: the pod cannot call the listed address, nor be called by it; clean ones pass.
    assert!(
        !connects(&pod.netns, None, sock(POD_LISTED)),
        "pod egress to a listed address"
    );
    assert!(connects(&pod.netns, None, sock(CLEAN)));
    assert!(
        !connects(&out.path(), Some(POD_LISTED), pod_addr),
        "listed source into a pod"
    );
    assert!(connects(&out.path(), Some(CLEAN), pod_addr));
    // The pods feed does not apply at host ingress.
    assert!(connects(&out.path(), Some(POD_LISTED), node_addr));
    // XDP: the host-listed address reaches neither the node nor, through it, the pod.
    assert!(
        !connects(&out.path(), Some(HOST_LISTED), node_addr),
        "XDP host ingress"
    );
    assert!(!connects(&out.path(), Some(HOST_LISTED), pod_addr));
    assert!(connects(&out.path(), Some(CLEAN), node_addr));

    // Attribution: flow records name the feed; counters per feed moved.
    let recs = poll_until(Duration::from_secs(10), || {
        let r = flow_records(&log);
        let has = |feed: &str| {
            r.iter().any(|x| {
                x["decided_by"] == "threat-feed"
                    && x["feed"] == feed
                    && x["verdict"] == "dropped"
                    && x["drop_reason"] == "blocklisted"
            })
        };
        (has("pods") && has("host")).then_some(r)
    });
    assert!(
        recs.is_some(),
        "no threat-feed flow records for both feeds:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // The agent's flow log lines name the feed too.
    let agent_log = n.agent_log();
    for feed in ["pods", "host"] {
        assert!(
            agent_log.contains(&format!("rule=threat-feed:{feed} reason=blocklisted")),
            "no flow line names feed {feed}:\n{agent_log}"
        );
    }
    let m = metrics(&n);
    assert!(
        metric(&m, "septa_feed_drops_total{feed=\"host\"}") >= 1.0,
        "{m}"
    );
    assert!(
        metric(&m, "septa_feed_drops_total{feed=\"pods\"}") >= 2.0,
        "{m}"
    );
    assert_eq!(metric(&m, "septa_feed_entries{feed=\"pods\"}"), 1.0);
    assert!(
        metric(
            &m,
            "septa_feed_last_refresh_timestamp_seconds{feed=\"pods\"}"
        ) > 0.0
    );

    // Unchanged feeds are asked conditionally and answered 304; nothing changes.
    poll_until(Duration::from_secs(10), || {
        server.statuses("/pods.txt").contains(&304).then_some(())
    })
    .expect("the agent never sent a conditional request that got 304");
    wait_metric(
        &n,
        "septa_feed_refreshes_total{feed=\"pods\",result=\"not_modified\"}",
        1.0,
    );
    assert_eq!(
        metric(&metrics(&n), "septa_blocklist_entries{family=\"ipv4\"}"),
        2.0
    );

    // A change: the clean address is added, the listed one removed.
    server.set("/pods.txt", Reply::list(&format!("{CLEAN}\n")));
    wait_metric(
        &n,
        "septa_feed_refreshes_total{feed=\"pods\",result=\"updated\"}",
        2.0,
    );
    assert!(
        !connects(&pod.netns, None, sock(CLEAN)),
        "newly listed address still reachable"
    );
    assert!(
        connects(&pod.netns, None, sock(POD_LISTED)),
        "removed address still blocked"
    );

    // Restart with the feed host failing: the last good list stays enforced.
    n.stop_agent().unwrap();
    server.set("/pods.txt", Reply::Status(503));
    server.set("/host.txt", Reply::Status(503));
    n.start_agent().unwrap();
    wait_metric(
        &n,
        "septa_feed_refresh_errors_total{feed=\"pods\",reason=\"http_status\"}",
        1.0,
    );
    assert!(
        !connects(&pod.netns, None, sock(CLEAN)),
        "restart + failing feed opened the list"
    );
    assert!(!connects(&out.path(), Some(HOST_LISTED), node_addr));
    assert!(connects(&pod.netns, None, sock(POD_LISTED)));

    // Deleting one feed while the other has still delivered nothing since the restart: the
    // deleted feed's entries go at once, the pending one's stay.
    n.write_manifest(
        "20-feeds.yaml",
        &feed_manifest("host", &server.url("/host.txt"), "hostIngress", "drop"),
    )
    .unwrap();
    poll_until(Duration::from_secs(10), || {
        connects(&pod.netns, None, sock(CLEAN)).then_some(())
    })
    .expect("a deleted feed's entries stayed while another feed was pending");
    assert!(
        !connects(&out.path(), Some(HOST_LISTED), node_addr),
        "the pending feed's entries must stay"
    );

    // Removing the feeds removes their entries.
    std::fs::remove_file(n.manifests.join("20-feeds.yaml")).unwrap();
    poll_until(Duration::from_secs(10), || {
        connects(&pod.netns, None, sock(CLEAN)).then_some(())
    })
    .expect("entries of a removed feed stayed");
    assert!(connects(&out.path(), Some(HOST_LISTED), node_addr));
    n.stop_agent().unwrap();
}

#[test]
fn hostile_feeds_are_bounded_and_keep_the_last_good_list() {
    let (n, _out, server, pod, _log) = setup(
        "feeds-hostile",
        &["--feed-timeout", "2s", "--feed-max-bytes", "8388608"],
    );
    let node_ns = n.bed.node_path();
    let paths = ["garbage", "hugeline", "endless", "html", "error", "slow"];
    for (i, p) in paths.iter().enumerate() {
        server.set(
            &format!("/{p}"),
            Reply::list(&format!("203.0.113.{}\n", 100 + i)),
        );
    }
    let manifests: Vec<String> = paths
        .iter()
        .map(|p| feed_manifest(p, &server.url(&format!("/{p}")), "podEgress", "drop"))
        .collect();
    n.write_manifest("20-feeds.yaml", &manifests.join("---\n"))
        .unwrap();
    for p in paths {
        wait_metric(&n, &format!("septa_feed_entries{{feed=\"{p}\"}}"), 1.0);
    }
    // The per-feed gauge moves when a feed is parsed, the merged one once it is in the kernel.
    let before = wait_metric(
        &n,
        "septa_blocklist_entries{family=\"ipv4\"}",
        paths.len() as f64,
    );
    assert_eq!(before, paths.len() as f64);

    // Now every feed turns hostile.
    let garbage: String = (0..500)
        .map(|i| format!("<div>not an address {i}</div>\n"))
        .collect();
    server.set("/garbage", Reply::list(&garbage));
    server.set("/hugeline", Reply::list(&"9".repeat(3 << 20)));
    server.set("/endless", Reply::Endless { len: 2 << 30 });
    server.set(
        "/html",
        Reply::Body {
            body: b"203.0.113.200\n".to_vec(),
            content_type: "text/html; charset=utf-8".into(),
            etag: "\"x\"".into(),
        },
    );
    server.set("/error", Reply::Status(500));
    server.set(
        "/slow",
        Reply::Trickle {
            every: Duration::from_millis(100),
        },
    );
    for (feed, reason) in [
        ("garbage", "mostly_bad"),
        ("hugeline", "mostly_bad"),
        ("endless", "too_large"),
        ("html", "content_type"),
        ("error", "http_status"),
        ("slow", "timeout"),
    ] {
        wait_metric(
            &n,
            &format!("septa_feed_refresh_errors_total{{feed=\"{feed}\",reason=\"{reason}\"}}"),
            1.0,
        );
    }
    let m = metrics(&n);
    assert_eq!(
        metric(&m, "septa_blocklist_entries{family=\"ipv4\"}"),
        before,
        "last good lists were lost"
    );
    for p in paths {
        assert_eq!(
            metric(&m, &format!("septa_feed_entries{{feed=\"{p}\"}}")),
            1.0,
            "{p}"
        );
    }
    // Still enforced: the garbage feed's last good address is blocked.
    assert!(!connects(
        &pod.netns,
        None,
        SocketAddr::new(addr("203.0.113.100"), PORT)
    ));
    // Bounded memory: the 2 GB body and the 3 MB line cost at most the 8 MiB limit, a few
    // times over for parsing; far below what reading them whole would take.
    let pid = n.agent_pid().expect("agent running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hwm_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(hwm_kib < 256 * 1024, "agent peak RSS {hwm_kib} KiB");
    assert!(http_get(&node_ns, "/healthz").starts_with("HTTP/1.0 200"));
    drop(n);
}

#[test]
fn a_million_entry_feed_loads_and_enforces() {
    let (n, out, server, pod, _log) = setup("feeds-1m", &[]);
    let node_ns = n.bed.node_path();
    let _node_srv = Server::start(&node_ns, &[PORT], &[]).unwrap();
    let _outside_srv = Server::start(&out.path(), &[PORT], &[]).unwrap();
    // 1,000,000 distinct /32s: 999,998 in 11.0.0.0/8 plus the two test addresses.
    let mut body = String::with_capacity(16 << 20);
    for i in 0..999_998u32 {
        let a = std::net::Ipv4Addr::from(0x0b00_0000 + i * 7);
        body.push_str(&format!("{a}\n"));
    }
    body.push_str(&format!("{HOST_LISTED}\n{POD_LISTED}\n"));
    server.set("/big.txt", Reply::list(&body));
    n.write_manifest(
        "20-feeds.yaml",
        &feed_manifest(
            "big",
            &server.url("/big.txt"),
            "hostIngress, podEgress",
            "drop",
        ),
    )
    .unwrap();
    let entries = wait_metric(&n, "septa_blocklist_entries{family=\"ipv4\"}", 1_000_000.0);
    assert_eq!(entries, 1_000_000.0);
    assert!(!connects(
        &out.path(),
        Some(HOST_LISTED),
        SocketAddr::new(addr(NODE_ADDR), PORT)
    ));
    assert!(connects(
        &out.path(),
        Some(CLEAN),
        SocketAddr::new(addr(NODE_ADDR), PORT)
    ));
    assert!(!connects(
        &pod.netns,
        None,
        SocketAddr::new(addr(POD_LISTED), PORT)
    ));
    assert!(connects(
        &pod.netns,
        None,
        SocketAddr::new(addr(CLEAN), PORT)
    ));
}
