//! The agent and the CNI plugin, end to end: real binaries, the Debian CNI reference plugins
//! (bridge, host-local, macvlan) invoked per the spec, pods as network namespaces, real sockets.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use testbed::{
    node::{flow_records as records, http_get, metric, Binaries, Node},
    traffic::*,
};

const NAMESPACE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: demo}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}]}]}
"#;

fn policy(port: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: web, namespace: demo}}\nspec:\n  podSelector: {{matchLabels: {{app: web}}}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{app: client}}}}}}], ports: [{{port: {port}}}]}}]\n"
    )
}

fn bins() -> Binaries {
    Binaries::for_agent(env!("CARGO_BIN_EXE_septa-agent"))
}

fn node(tag: &str) -> Node {
    let mut n = Node::new(tag, bins()).unwrap();
    n.write_manifest("00-workloads.yaml", NAMESPACE).unwrap();
    n.write_manifest("10-policy.yaml", &policy("http")).unwrap();
    n.start_agent().unwrap();
    n
}

/// Write the standard manifests, start the agent (with `n.agent_args`), and create the three
/// pods web-1 (app=web), client-1 (app=client) and other-1 (app=other), web serving `tcp`/`udp`.
fn start_with_pods(
    n: &mut Node,
    tcp: &[u16],
    udp: &[u16],
) -> (
    testbed::cni::Attachment,
    testbed::cni::Attachment,
    testbed::cni::Attachment,
    Server,
) {
    n.write_manifest("00-workloads.yaml", NAMESPACE).unwrap();
    n.write_manifest("10-policy.yaml", &policy("http")).unwrap();
    n.start_agent().unwrap();
    let web = n.add_pod("demo", "web-1", "app=web").unwrap();
    let client = n.add_pod("demo", "client-1", "app=client").unwrap();
    let other = n.add_pod("demo", "other-1", "app=other").unwrap();
    let srv = Server::start(&web.netns, tcp, udp).unwrap();
    (web, client, other, srv)
}

fn to(a: &testbed::cni::Attachment, port: u16) -> SocketAddr {
    SocketAddr::new(Node::pod_ip(a), port)
}

#[test]
fn cni_add_check_del_round_trips() {
    let mut n = node("rt");
    let web = n.add_pod("demo", "web-1", "app=web").unwrap();
    let client = n.add_pod("demo", "client-1", "app=client").unwrap();
    let other = n.add_pod("demo", "other-1", "app=other").unwrap();
    assert_eq!(
        web.result["cniVersion"], "1.0.0",
        "prevResult passed through"
    );
    assert!(web.result["interfaces"].as_array().unwrap().len() >= 2);
    n.runtime.check(&web).expect("CHECK after ADD");

    let _srv = Server::start(&web.netns, &[8080, 8081], &[]).unwrap();
    let mut c =
        tcp_connect(&client.netns, to(&web, 8080)).expect("client reaches web on the named port");
    echo(&mut c, b"hi").unwrap();
    assert!(
        tcp_connect(&client.netns, to(&web, 8081)).is_err(),
        "other ports denied"
    );
    assert!(
        tcp_connect(&other.netns, to(&web, 8080)).is_err(),
        "other pods denied"
    );

    n.del_pod("web-1").unwrap();
    assert!(n.runtime.check(&web).is_err(), "CHECK fails once deleted");
    n.runtime.del(&web).expect("a second DEL succeeds");
    // Add the same pod again (new namespace, maybe a new address).
    let web2 = n.add_pod("demo", "web-1", "app=web").unwrap();
    n.runtime.check(&web2).unwrap();
    let _srv2 = Server::start(&web2.netns, &[8080], &[]).unwrap();
    echo(
        &mut tcp_connect(&client.netns, to(&web2, 8080)).unwrap(),
        b"again",
    )
    .unwrap();
    assert!(tcp_connect(&other.netns, to(&web2, 8080)).is_err());
}

#[test]
fn del_succeeds_with_the_agent_down_and_add_asks_to_retry() {
    let mut n = node("down");
    let web = n.add_pod("demo", "web-1", "app=web").unwrap();
    n.stop_agent().unwrap();
    n.runtime
        .del(&web)
        .expect("DEL with the agent down succeeds");
    let err = n
        .add_pod("demo", "web-2", "app=web")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Some(11)") && err.contains("not reachable"),
        "{err}"
    );
    n.start_agent().unwrap();
}

fn run_cni(env: &[(&str, &str)], stdin: &str) -> serde_json::Value {
    let mut child = Command::new(
        Binaries::for_agent(env!("CARGO_BIN_EXE_septa-agent"))
            .cni_dir
            .join("septa-cni"),
    )
    .env_clear()
    .envs(env.iter().copied())
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "expected a failure for {stdin}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn malformed_cni_input_gets_spec_errors_and_the_agent_is_unaffected() {
    let mut n = node("bad");
    let sock = n.socket.display().to_string();
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "x"),
        ("CNI_NETNS", "/run/netns/none"),
        ("CNI_IFNAME", "eth0"),
    ];
    assert_eq!(run_cni(&env, "{{{")["code"], 6);
    assert_eq!(
        run_cni(
            &env,
            r#"{"cniVersion": "0.2.0", "name": "n", "type": "septa-cni"}"#
        )["code"],
        1
    );
    assert_eq!(
        run_cni(
            &env,
            &format!(
                r#"{{"cniVersion": "1.0.0", "name": "n", "type": "septa-cni", "agentSocket": "{sock}"}}"#
            )
        )["code"],
        7
    );
    assert_eq!(
        run_cni(
            &[("CNI_COMMAND", "ADD")],
            r#"{"cniVersion": "1.0.0", "name": "n", "type": "septa-cni"}"#
        )["code"],
        4
    );
    // A request the agent refuses: an interface that does not exist.
    let bogus = format!(
        r#"{{"cniVersion": "1.0.0", "name": "n", "type": "septa-cni", "agentSocket": "{sock}", "prevResult": {{"interfaces": [{{"name": "eth0", "sandbox": "/x"}}], "ips": []}}}}"#
    );
    let e = run_cni(&env, &bogus);
    assert!(e["code"] == 5 || e["code"] == 7, "{e}");
    // A pod whose interface is not a veth (macvlan), through a real chain.
    n.bed
        .exec(&[
            "link", "add", "mvparent", "type", "veth", "peer", "name", "mvpeer",
        ])
        .unwrap();
    n.bed.exec(&["link", "set", "mvparent", "up"]).unwrap();
    let mut rt = testbed::cni::Runtime {
        node: n.runtime.node.clone(),
        cni_path: n.runtime.cni_path.clone(),
        network: n.runtime.network.clone(),
        conf_dir: None,
    };
    rt.network["plugins"][0] = serde_json::json!({"type": "macvlan", "master": "mvparent", "mode": "bridge", "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.99.0.0/24"}]], "dataDir": n.dir.join("ipam-mv")}});
    testbed::bed::ip(&["netns", "add", &format!("septa-{}-mv", n.bed.id)]).unwrap();
    let a = rt
        .add(
            "c-mv",
            &PathBuf::from(format!("/run/netns/septa-{}-mv", n.bed.id)),
            "eth0",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=mv",
        )
        .unwrap_err();
    assert_eq!((a.plugin.as_str(), a.code), ("septa-cni", Some(100)), "{a}");
    assert!(a.msg.contains("macvlan"), "{a}");
    let _ = testbed::bed::ip(&["netns", "del", &format!("septa-{}-mv", n.bed.id)]);
    assert!(n.agent_running(), "the agent survived all of it");
    let ok = cni::plugin::call_agent(
        &n.socket,
        &api::protocol::Request::Status,
        Duration::from_secs(2),
    )
    .unwrap();
    assert!(ok.ok);
}

#[test]
fn policy_changes_apply_to_new_and_established_connections() {
    let mut n = node("chg");
    let web = n.add_pod("demo", "web-1", "app=web").unwrap();
    let client = n.add_pod("demo", "client-1", "app=client").unwrap();
    let _srv = Server::start(&web.netns, &[8080, 8081], &[]).unwrap();
    let mut est = tcp_connect(&client.netns, to(&web, 8080)).unwrap();
    echo(&mut est, b"1").unwrap();

    n.write_manifest("10-policy.yaml", &policy("8081")).unwrap();
    let opened = poll_until(Duration::from_secs(10), || {
        tcp_connect(&client.netns, to(&web, 8081)).ok()
    });
    assert!(opened.is_some(), "the new port opens once the file changes");
    assert!(
        echo(&mut est, b"2").is_err(),
        "the established connection on the old port is cut"
    );
    assert!(tcp_connect(&client.netns, to(&web, 8080)).is_err());

    // A broken edit keeps the last good state.
    n.write_manifest("10-policy.yaml", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: demo}\nspec: {podSelector: {}, ingress: [{ports: [{port: 0}]}]}\n").unwrap();
    let logged = poll_until(Duration::from_secs(10), || {
        n.agent_log()
            .contains("enforcing the last good state")
            .then_some(())
    });
    assert!(
        logged.is_some(),
        "the agent reports the bad file:\n{}",
        n.agent_log()
    );
    assert!(
        tcp_connect(&client.netns, to(&web, 8080)).is_err(),
        "still enforcing the last good policy"
    );
    assert!(n.agent_log().contains("port 0 is outside 1-65535"));

    std::fs::remove_file(n.manifests.join("10-policy.yaml")).unwrap();
    let open = poll_until(Duration::from_secs(10), || {
        tcp_connect(&client.netns, to(&web, 8080)).ok()
    });
    assert!(open.is_some(), "no policy: web is not isolated any more");
}

#[test]
fn agent_restart_keeps_allowed_and_denied_traffic_as_it_was() {
    let mut n = node("restart");
    let web = n.add_pod("demo", "web-1", "app=web").unwrap();
    let client = n.add_pod("demo", "client-1", "app=client").unwrap();
    let other = n.add_pod("demo", "other-1", "app=other").unwrap();
    let _srv = Server::start(&web.netns, &[8080], &[]).unwrap();
    let mut est = tcp_connect(&client.netns, to(&web, 8080)).unwrap();
    echo(&mut est, b"before").unwrap();

    // Probe both directions continuously while the agent restarts.
    let stop = Arc::new(AtomicBool::new(false));
    let (bad, probes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let prober = {
        let (stop, bad, probes) = (stop.clone(), bad.clone(), probes.clone());
        let (cns, ons, dst) = (client.netns.clone(), other.netns.clone(), to(&web, 8080));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if tcp_connect(&cns, dst)
                    .and_then(|mut c| echo(&mut c, b"p"))
                    .is_err()
                {
                    bad.fetch_add(1, Ordering::Relaxed);
                }
                if tcp_connect(&ons, dst).is_ok() {
                    bad.fetch_add(1_000_000, Ordering::Relaxed);
                }
                probes.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    n.stop_agent().unwrap();
    echo(&mut est, b"agent-down").expect("established connection works with no agent");
    n.start_agent().unwrap();
    echo(&mut est, b"after").expect("and after the new agent took over");
    let before = probes.load(Ordering::Relaxed);
    poll_until(Duration::from_secs(20), || {
        (probes.load(Ordering::Relaxed) >= before + 2).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    prober.join().unwrap();
    assert!(probes.load(Ordering::Relaxed) >= 2);
    assert_eq!(
        bad.load(Ordering::Relaxed),
        0,
        "no allowed connection failed (units) and no denied one got through (millions)"
    );
    assert!(
        n.agent_log().contains("endpoint adopted"),
        "{}",
        n.agent_log()
    );
}

/// The cgroup v2 mount point (hybrid layouts put it at /sys/fs/cgroup/unified).
fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let m = mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&"cgroup2"));
    PathBuf::from(m.expect("cgroup v2 must be mounted for cgroup workloads")[1])
}

/// Try a TCP connection from a process inside `cgroup`, in the node's namespace.
fn connect_from_cgroup(cgroup: &std::path::Path, node: &std::path::Path, to: SocketAddr) -> bool {
    use std::os::{fd::AsRawFd, unix::process::CommandExt};
    let procs = std::ffi::CString::new(cgroup.join("cgroup.procs").display().to_string()).unwrap();
    let ns = std::fs::File::open(node).unwrap();
    let ns_fd = ns.as_raw_fd();
    let mut cmd = Command::new("timeout");
    cmd.args([
        "3",
        "bash",
        "-c",
        &format!("exec 3<>/dev/tcp/{}/{}", to.ip(), to.port()),
    ]);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut buf = [0u8; 16];
            let mut n = libc::getpid() as u32;
            let mut i = buf.len();
            loop {
                i -= 1;
                buf[i] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            let w = libc::write(fd, buf[i..].as_ptr().cast(), buf.len() - i);
            libc::close(fd);
            if w < 0 || libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let ok = cmd.status().unwrap().success();
    drop(ns);
    ok
}

#[test]
fn cgroup_workload_allowed_and_denied_by_policy() {
    let mut n = node("cg");
    let loads = n.agent_log().matches("manifests loaded").count();
    n.write_manifest(
        "20-job.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: job, namespace: demo}\nspec:\n  podSelector: {matchLabels: {app: job}}\n  policyTypes: [Egress]\n  egress: [{to: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 8080}]}]\n",
    )
    .unwrap();
    poll_until(Duration::from_secs(10), || {
        (n.agent_log().matches("manifests loaded").count() > loads).then_some(())
    })
    .expect("policy loaded");
    let web = n.add_pod("demo", "web-1", "app=web").unwrap();
    let _srv = Server::start(&web.netns, &[8080, 8081], &[]).unwrap();

    let cg = cgroup2_root().join(format!("septa-test-{}-job", std::process::id()));
    std::fs::create_dir_all(&cg).unwrap();
    let ep = api::protocol::Endpoint {
        container_id: "cg-job".into(),
        netns: String::new(),
        ifname: String::new(),
        host_ifname: String::new(),
        cgroup: Some(cg.display().to_string()),
        namespace: "demo".into(),
        name: "job-1".into(),
        labels: Some([("app".to_string(), "job".to_string())].into()),
        ips: vec![],
    };
    let r = cni::plugin::call_agent(
        &n.socket,
        &api::protocol::Request::Add(ep),
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(r.ok, "{r:?}\n{}", n.agent_log());
    let node_ns = n.bed.node_path();
    assert!(
        connect_from_cgroup(&cg, &node_ns, to(&web, 8080)),
        "the job may reach web:8080"
    );
    assert!(
        !connect_from_cgroup(&cg, &node_ns, to(&web, 8081)),
        "and nothing else"
    );
    // A process outside the cgroup is not the job: not subject to its policy.
    assert!(tcp_connect(&node_ns, to(&web, 8081)).is_ok());

    let r = cni::plugin::call_agent(
        &n.socket,
        &api::protocol::Request::Del {
            container_id: "cg-job".into(),
        },
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(r.ok);
    assert!(
        connect_from_cgroup(&cg, &node_ns, to(&web, 8081)),
        "deregistered: programs detached"
    );
    std::fs::remove_dir(&cg).unwrap();
}

#[test]
fn health_endpoints() {
    let n = node("health");
    let node_ns = n.bed.node_path();
    assert!(http_get(&node_ns, "/healthz").starts_with("HTTP/1.0 200"));
    assert!(http_get(&node_ns, "/readyz").starts_with("HTTP/1.0 200"));
    assert!(http_get(&node_ns, "/nope").starts_with("HTTP/1.0 404"));
}

#[test]
fn flow_log_records_are_complete_and_enriched() {
    let mut n = Node::new("flowlog", bins()).unwrap();
    let log = n.dir.join("flows.jsonl");
    n.agent_args = vec![
        "--flow-log".into(),
        log.display().to_string(),
        "--node-name".into(),
        "node-a".into(),
    ];
    let (web, client, other, _srv) = start_with_pods(&mut n, &[8080], &[]);
    echo(
        &mut tcp_connect(&client.netns, to(&web, 8080)).unwrap(),
        b"x",
    )
    .unwrap();
    assert!(tcp_connect(&other.netns, to(&web, 8080)).is_err());

    let records = poll_until(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&log).ok()?;
        let recs: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        let has_new = recs.iter().any(|r| {
            r["kind"] == "new" && r["destination"]["pod"] == "web-1" && r["direction"] == "ingress"
        });
        let has_deny = recs
            .iter()
            .any(|r| r["kind"] == "deny" && r["source"]["pod"] == "other-1");
        (has_new && has_deny).then_some(recs)
    })
    .unwrap_or_else(|| {
        panic!(
            "flow log incomplete:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    // Every field of schema version 1 is there, with its type.
    for r in &records {
        assert_eq!(r["version"], 1);
        for (k, ty) in [
            ("time", "s"),
            ("kind", "s"),
            ("verdict", "s"),
            ("direction", "s"),
            ("protocol", "s"),
            ("decided_by", "s"),
            ("node", "s"),
            ("ip_version", "n"),
            ("rule_id", "n"),
            ("source", "o"),
            ("destination", "o"),
            ("packets", "o"),
            ("bytes", "o"),
            ("tcp_flags", "a"),
            ("dns_names", "a"),
        ] {
            let v = &r[k];
            let ok = match ty {
                "s" => v.is_string(),
                "n" => v.is_u64(),
                "o" => v.is_object(),
                _ => v.is_array(),
            };
            assert!(ok, "field {k} in {r}");
        }
        assert!(
            r.get("drop_reason").is_some() && r.get("policy").is_some(),
            "nullable fields present: {r}"
        );
        assert!(r["source"]["ip"].is_string() && r["destination"]["port"].is_u64());
        assert_eq!(r["node"], "node-a");
    }
    let new = records
        .iter()
        .find(|r| {
            r["kind"] == "new" && r["destination"]["pod"] == "web-1" && r["direction"] == "ingress"
        })
        .unwrap();
    assert_eq!(new["verdict"], "forwarded");
    assert_eq!(new["decided_by"], "rule");
    assert_eq!(new["policy"]["name"], "web");
    assert_eq!(new["policy"]["direction"], "ingress");
    assert_eq!(new["source"]["pod"], "client-1");
    assert_eq!(new["destination"]["workload"], "Deployment/web");
    assert_eq!(new["destination"]["labels"]["app"], "web");
    assert_eq!(new["destination"]["port"], 8080);
    assert!(new["tcp_flags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "SYN"));
    let deny = records
        .iter()
        .find(|r| r["kind"] == "deny" && r["source"]["pod"] == "other-1")
        .unwrap();
    assert_eq!(
        (
            deny["verdict"].as_str(),
            deny["decided_by"].as_str(),
            deny["drop_reason"].as_str()
        ),
        (Some("dropped"), Some("default-deny"), Some("policy-denied"))
    );
}

#[test]
fn unwritable_flow_log_fails_at_start_with_the_path() {
    let mut n = Node::new("badlog", bins()).unwrap();
    n.agent_args = vec!["--flow-log".into(), "/nonexistent/septa/flows.jsonl".into()];
    n.write_manifest("00-workloads.yaml", NAMESPACE).unwrap();
    let err = n.start_agent().unwrap_err().to_string();
    assert!(
        err.contains("flow log /nonexistent/septa/flows.jsonl"),
        "{err}"
    );
}

#[test]
fn metrics_pass_promtool_and_move_with_traffic() {
    let mut n = node("metrics");
    let web = n.add_pod("demo", "web-1", "app=web").unwrap();
    let client = n.add_pod("demo", "client-1", "app=client").unwrap();
    let _srv = Server::start(&web.netns, &[8080, 8081], &[]).unwrap();
    let node_ns = n.bed.node_path();
    let body = |s: String| s.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    let before = body(http_get(&node_ns, "/metrics"));
    for _ in 0..3 {
        echo(
            &mut tcp_connect(&client.netns, to(&web, 8080)).unwrap(),
            b"x",
        )
        .unwrap();
    }
    assert!(tcp_connect(&client.netns, to(&web, 8081)).is_err());
    let after = poll_until(Duration::from_secs(10), || {
        let m = body(http_get(&node_ns, "/metrics"));
        (metric(&m, "septa_datapath_packets_total{verdict=\"dropped\"}")
            > metric(&before, "septa_datapath_packets_total{verdict=\"dropped\"}"))
        .then_some(m)
    })
    .expect("counters move");
    testbed::node::promtool_check(&after);
    assert!(
        metric(
            &after,
            "septa_datapath_packets_total{verdict=\"forwarded\"}"
        ) > metric(
            &before,
            "septa_datapath_packets_total{verdict=\"forwarded\"}"
        )
    );
    assert!(
        metric(
            &after,
            "septa_conntrack_operations_total{operation=\"created\"}"
        ) >= 3.0
    );
    assert!(after.contains("septa_flows_total{kind=\"deny\",verdict=\"dropped\",direction=\"ingress\",reason=\"policy-denied\"}"), "{after}");
    assert_eq!(metric(&after, "septa_endpoints"), 2.0);
    assert!(metric(&after, "septa_policy_map_entries") > 0.0);
    assert!(
        after.contains("septa_map_update_duration_seconds_bucket"),
        "{after}"
    );
    assert_eq!(metric(&after, "septa_manifest_errors"), 0.0);
}

#[test]
fn flow_queries_filter_the_backlog_and_follow_new_flows() {
    use api::protocol::{query_flows, FlowFilter};
    let mut n = node("flows");
    let web = n.add_pod("demo", "web-1", "app=web").unwrap();
    let client = n.add_pod("demo", "client-1", "app=client").unwrap();
    let other = n.add_pod("demo", "other-1", "app=other").unwrap();
    let _srv = Server::start(&web.netns, &[8080], &[]).unwrap();
    echo(
        &mut tcp_connect(&client.netns, to(&web, 8080)).unwrap(),
        b"x",
    )
    .unwrap();
    assert!(tcp_connect(&other.netns, to(&web, 8080)).is_err());

    let collect = |f: FlowFilter| {
        let mut v = Vec::new();
        query_flows(&n.socket, &f, 100, false, Duration::from_secs(5), |r| {
            v.push(r);
            true
        })
        .unwrap();
        v
    };
    let dropped = poll_until(Duration::from_secs(10), || {
        let v = collect(FlowFilter {
            verdict: Some("dropped".into()),
            ..Default::default()
        });
        (!v.is_empty()).then_some(v)
    })
    .expect("denials are queryable");
    assert!(dropped.iter().all(|r| r.verdict == "dropped"));
    assert!(dropped
        .iter()
        .any(|r| r.source.pod.as_deref() == Some("other-1")));
    let clients = collect(FlowFilter {
        pod: Some("client-1".into()),
        ..Default::default()
    });
    assert!(
        !clients.is_empty()
            && clients.iter().all(|r| [&r.source.pod, &r.destination.pod]
                .iter()
                .any(|p| p.as_deref() == Some("client-1")))
    );
    assert!(collect(FlowFilter {
        pod: Some("nobody".into()),
        ..Default::default()
    })
    .is_empty());
    let last_two = {
        let mut v = Vec::new();
        query_flows(
            &n.socket,
            &FlowFilter::default(),
            2,
            false,
            Duration::from_secs(5),
            |r| {
                v.push(r);
                true
            },
        )
        .unwrap();
        v
    };
    assert_eq!(last_two.len(), 2, "--last bounds the backlog");

    // Follow: a new connection shows up while the query is open.
    let socket = n.socket.clone();
    let follower = std::thread::spawn(move || {
        let mut got = None;
        query_flows(
            &socket,
            &FlowFilter {
                port: Some(8080),
                kind: Some("new".into()),
                ..Default::default()
            },
            0,
            true,
            Duration::from_secs(5),
            |r| {
                got = Some(r);
                false
            },
        )
        .unwrap();
        got
    });
    let rec = poll_until(Duration::from_secs(10), || {
        echo(&mut tcp_connect(&client.netns, to(&web, 8080)).ok()?, b"y").ok()?;
        follower.is_finished().then_some(())
    });
    assert!(rec.is_some(), "the follower saw a new flow");
    let r = follower.join().unwrap().expect("a record");
    assert_eq!((r.kind.as_str(), r.destination.port), ("new", 8080));
}

#[test]
fn idle_udp_flows_end_and_long_ones_update() {
    let mut n = Node::new("sweep", bins()).unwrap();
    let log = n.dir.join("flows.jsonl");
    n.agent_args = vec![
        "--flow-log".into(),
        log.display().to_string(),
        "--conntrack-idle".into(),
        "1s".into(),
        "--flow-update-interval".into(),
        "200ms".into(),
    ];
    n.write_manifest("00-workloads.yaml", NAMESPACE).unwrap();
    n.start_agent().unwrap();
    let web = n.add_pod("demo", "web-1", "app=web").unwrap();
    let client = n.add_pod("demo", "client-1", "app=client").unwrap();
    let _srv = Server::start(&web.netns, &[], &[9000]).unwrap();
    // A UDP "connection" that keeps talking for a while, then goes quiet.
    let sock = hostnet::netns::in_netns(&client.netns, || std::net::UdpSocket::bind("0.0.0.0:0"))
        .unwrap()
        .unwrap();
    let dst = to(&web, 9000);
    let mut sent = 0;
    let updated = poll_until(Duration::from_secs(10), || {
        sock.send_to(b"tick", dst).ok()?;
        sent += 1;
        records(&log)
            .into_iter()
            .find(|r| r["kind"] == "update" && r["protocol"] == "UDP")
    });
    assert!(updated.is_some(), "a long-lived flow reports its counts");
    let ended = poll_until(Duration::from_secs(10), || {
        records(&log).into_iter().find(|r| {
            r["kind"] == "end"
                && r["protocol"] == "UDP"
                && r["destination"]["port"] == 9000
                && r["direction"] == "egress"
        })
    });
    let ended = ended.expect("the idle UDP flow ends");
    assert!(
        ended["packets"]["forward"].as_u64().unwrap() >= sent as u64,
        "{ended}"
    );
}

#[test]
fn aggregation_folds_allowed_flows_and_keeps_denials() {
    let mut n = Node::new("agg", bins()).unwrap();
    let log = n.dir.join("flows.jsonl");
    n.agent_args = vec![
        "--flow-log".into(),
        log.display().to_string(),
        "--flow-aggregate-window".into(),
        "300ms".into(),
    ];
    let (web, client, other, _srv) = start_with_pods(&mut n, &[8080], &[]);
    for _ in 0..5 {
        echo(
            &mut tcp_connect(&client.netns, to(&web, 8080)).unwrap(),
            b"x",
        )
        .unwrap();
    }
    assert!(tcp_connect(&other.netns, to(&web, 8080)).is_err());
    // The five connections may straddle two windows on a busy machine: their aggregates
    // together count them all.
    let agg = poll_until(Duration::from_secs(10), || {
        let aggs: Vec<serde_json::Value> = records(&log)
            .into_iter()
            .filter(|r| {
                r["kind"] == "aggregate"
                    && r["direction"] == "ingress"
                    && r["destination"]["port"] == 8080
                    && r["source"]["workload"] == "Pod/client-1"
            })
            .collect();
        let total: u64 = aggs.iter().filter_map(|r| r["connections"].as_u64()).sum();
        (total >= 5).then(|| aggs[0].clone())
    })
    .unwrap_or_else(|| {
        panic!(
            "no aggregate record:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    assert_eq!(agg["source"]["workload"], "Pod/client-1");
    assert!(
        agg["source"]["pod"].is_null(),
        "aggregates are per workload"
    );
    let all = records(&log);
    assert!(
        all.iter().all(|r| r["kind"] != "new"),
        "no per-connection records when aggregating"
    );
    assert!(
        all.iter()
            .any(|r| r["kind"] == "deny" && r["source"]["pod"] == "other-1"),
        "denials keep full detail"
    );
}

#[test]
fn bursts_beyond_the_ring_buffer_are_counted_and_the_agent_carries_on() {
    let mut n = Node::new("burst", bins()).unwrap();
    n.agent_args = vec!["--events-bytes".into(), "4096".into()];
    n.write_manifest("00-workloads.yaml", NAMESPACE).unwrap();
    n.start_agent().unwrap();
    let web = n.add_pod("demo", "web-1", "app=web").unwrap();
    let client = n.add_pod("demo", "client-1", "app=client").unwrap();
    let _srv = Server::start(&web.netns, &[], &[9000]).unwrap();
    let pid = n.agent_pid().unwrap() as i32;
    // Freeze the consumer, then open 300 new flows: far more events than 4 KiB hold.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let dst = to(&web, 9000);
    hostnet::netns::in_netns(&client.netns, || {
        for _ in 0..300 {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            s.send_to(b"burst", dst).unwrap();
        }
    })
    .unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let node_ns = n.bed.node_path();
    let lost = poll_until(Duration::from_secs(10), || {
        let m = http_get(&node_ns, "/metrics");
        let v = metric(
            m.split("\r\n\r\n").nth(1)?,
            "septa_datapath_events_lost_total",
        );
        (v > 0.0).then_some(v)
    });
    assert!(
        lost.is_some_and(|v| v >= 200.0),
        "losses are counted: {lost:?}"
    );
    assert!(n.agent_running(), "the agent keeps running");
    // And it still works: a new pod is enforced.
    let other = n.add_pod("demo", "other-1", "app=other").unwrap();
    assert!(
        cni::plugin::call_agent(
            &n.socket,
            &api::protocol::Request::Check {
                container_id: other.container_id.clone()
            },
            Duration::from_secs(5)
        )
        .unwrap()
        .ok
    );
}

#[test]
fn agent_exports_ipfix_that_nfdump_reads_back() {
    let mut n = Node::new("ipfix", bins()).unwrap();
    let port = 4739u16;
    let collector =
        testbed::nfcapd::Collector::start(&n.dir.join("nfcapd"), port, Some(&n.bed.node_path()))
            .unwrap();
    // The flow log is written before IPFIX from the same batch, so once the END record is in
    // the log, the exporter has it too once its counter covers every line logged by then.
    // (Counting IPFIX records alone raced: the bridge's IGMP reports are flows as well.)
    let log = n.dir.join("flows.jsonl");
    n.agent_args = vec![
        "--ipfix-collector".into(),
        format!("127.0.0.1:{port}"),
        "--flow-log".into(),
        log.display().to_string(),
    ];
    let (web, client, _other, _srv) = start_with_pods(&mut n, &[8080], &[]);
    {
        let mut c = tcp_connect(&client.netns, to(&web, 8080)).unwrap();
        echo(&mut c, &[7u8; 1000]).unwrap();
    } // closed: FIN both ways gives an END with the byte counts
    let logged = poll_until(Duration::from_secs(10), || {
        let recs = records(&log);
        recs.iter()
            .any(|r| {
                r["kind"] == "end" && r["protocol"] == "TCP" && r["destination"]["port"] == 8080
            })
            .then_some(recs.len())
    })
    .expect("the connection's END record is logged");
    let node_ns = n.bed.node_path();
    let exported = poll_until(Duration::from_secs(10), || {
        let m = http_get(&node_ns, "/metrics");
        let v = metric(m.split("\r\n\r\n").nth(1)?, "septa_ipfix_records_total");
        (v >= logged as f64).then_some(v)
    });
    assert!(
        exported.is_some(),
        "the agent exported the {logged} logged records: {exported:?}"
    );
    let rows = collector.stop_and_read("%sa|%da|%dp|%pr|%ibyt").unwrap();
    let (cip, wip) = (
        Node::pod_ip(&client).to_string(),
        Node::pod_ip(&web).to_string(),
    );
    let flows: Vec<&Vec<String>> = rows
        .iter()
        .filter(|f| f.len() == 5 && f[0] == cip && f[1] == wip && f[2] == "8080")
        .collect();
    assert!(!flows.is_empty(), "no {cip} -> {wip}:8080 in {rows:?}");
    assert!(flows.iter().all(|f| f[3] == "TCP"));
    let max_bytes: u64 = flows
        .iter()
        .filter_map(|f| f[4].parse().ok())
        .max()
        .unwrap_or(0);
    assert!(
        max_bytes >= 1000,
        "the END record carries the payload bytes: {rows:?}"
    );
}

#[test]
fn malformed_exporter_settings_fail_at_start() {
    for (args, needle) in [
        (
            vec!["--ipfix-collector", "not-an-address"],
            "--ipfix-collector",
        ),
        (vec!["--flow-log-max-bytes", "lots"], "--flow-log-max-bytes"),
        (
            vec![
                "--events-bytes",
                "5000",
                "--pin-dir",
                "/sys/fs/bpf/septa-never",
            ],
            "power of two",
        ),
        (vec!["--flow-update-interval", "soon"], "invalid duration"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_septa-agent"))
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
