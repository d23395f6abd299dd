//! Learning from flows, end to end: the demo application runs without policies under the real
//! agent (pods through the real CNI chain), its flows are recorded, `septa recommend` proposes
//! policies in audit mode, the same traffic then shows no AUDIT record while a new, unexpected
//! connection does; enforcing the proposal drops that connection and keeps the application.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use cli::recommend::{propose::Options, FlowSource, Request};
use testbed::{
    cni::Attachment,
    node::{flow_records, Binaries, Node},
    traffic::{poll_until, tcp_connect, Server},
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bins() -> Binaries {
    // The workspace build puts the agent and the plugin next to the demo binary.
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_septa-demo"))
        .parent()
        .unwrap()
        .to_owned();
    let agent = dir.join("septa-agent");
    assert!(
        agent.exists(),
        "{} missing: build the workspace",
        agent.display()
    );
    Binaries {
        agent,
        cni_dir: dir,
    }
}

struct App {
    frontend: Attachment,
    api: Attachment,
    db: Attachment,
    prometheus: Attachment,
    outsider: Attachment,
}

fn to(a: &Attachment, port: u16) -> SocketAddr {
    SocketAddr::new(Node::pod_ip(a), port)
}

fn ip(a: &Attachment) -> IpAddr {
    Node::pod_ip(a)
}

/// The application's own traffic: what the proposal must keep.
fn app_traffic(app: &App) -> Vec<(&Attachment, SocketAddr)> {
    vec![
        (&app.frontend, to(&app.api, 8000)),
        (&app.api, to(&app.db, 5432)),
        (&app.prometheus, to(&app.frontend, 9090)),
        (&app.prometheus, to(&app.api, 9090)),
    ]
}

fn connects(from: &Attachment, dst: SocketAddr) -> bool {
    tcp_connect(&from.netns, dst).is_ok()
}

/// Records after line `skip` of the log for connections from `src` to `dst`.
fn records_for(log: &Path, skip: usize, src: IpAddr, dst: SocketAddr) -> Vec<serde_json::Value> {
    flow_records(log)
        .into_iter()
        .skip(skip)
        .filter(|r| {
            r["kind"] == "new"
                && r["source"]["ip"] == src.to_string()
                && r["destination"]["ip"] == dst.ip().to_string()
                && r["destination"]["port"] == dst.port()
        })
        .collect()
}

fn recommend(node: &Node, flows: &Path, audit: bool) -> String {
    let req = Request {
        manifests: vec![node.manifests.clone()],
        flows: vec![FlowSource::File(flows.to_owned())],
        options: Options {
            audit,
            ..Options::default()
        },
        learn_window: None,
        replay_window: None,
        replay_flows: vec![],
    };
    let out = cli::recommend::run(&req).expect("recommend");
    assert_eq!(out.observations.skips.count("malformed"), 0);
    cli::recommend::yaml(&out.proposals).unwrap()
}

#[test]
fn learn_recommend_audit_then_enforce() {
    let mut node = Node::new("recommend", bins()).unwrap();
    let log = node.dir.join("flows.jsonl");
    node.agent_args = vec!["--flow-log".into(), log.display().to_string()];
    let workloads =
        std::fs::read_to_string(root().join("policies/examples/demo/workloads.yaml")).unwrap();
    node.write_manifest("00-workloads.yaml", &workloads)
        .unwrap();
    node.start_agent().unwrap();
    let app = App {
        frontend: node
            .add_pod("shop", "frontend-1", "app=frontend,tier=web")
            .unwrap(),
        api: node
            .add_pod("shop", "api-1", "app=api,tier=backend")
            .unwrap(),
        db: node.add_pod("shop", "db-1", "app=db,tier=data").unwrap(),
        prometheus: node
            .add_pod("monitoring", "prometheus-1", "app=prometheus")
            .unwrap(),
        outsider: node
            .add_pod("default", "outsider-1", "app=outsider")
            .unwrap(),
    };
    let _servers = [
        Server::start(&app.frontend.netns, &[8080, 9090], &[]).unwrap(),
        Server::start(&app.api.netns, &[8000, 9090], &[]).unwrap(),
        Server::start(&app.db.netns, &[5432], &[]).unwrap(),
    ];

    // 1. Learn: the application runs without policies; everything is allowed.
    for _ in 0..3 {
        for (src, dst) in app_traffic(&app) {
            assert!(connects(src, dst), "no policy yet: {dst} must be reachable");
        }
    }
    for (src, dst) in app_traffic(&app) {
        poll_until(Duration::from_secs(10), || {
            (!records_for(&log, 0, ip(src), dst).is_empty()).then_some(())
        })
        .unwrap_or_else(|| panic!("no flow record for {} -> {dst}", ip(src)));
    }
    let learned = node.dir.join("learned.jsonl");
    std::fs::copy(&log, &learned).unwrap();

    // The live agent's recent records give the same proposal as its log.
    let live = cli::recommend::run(&Request {
        manifests: vec![node.manifests.clone()],
        flows: vec![FlowSource::Agent(node.socket.clone())],
        options: Options::default(),
        learn_window: None,
        replay_window: None,
        replay_flows: vec![],
    })
    .expect("recommend from the agent");
    let from_log = recommend(&node, &learned, false);
    assert_eq!(
        cli::recommend::yaml(&live.proposals)
            .unwrap()
            .lines()
            .filter(|l| !l.contains("septa.dev/evidence") && !l.starts_with('#'))
            .collect::<Vec<_>>(),
        from_log
            .lines()
            .filter(|l| !l.contains("septa.dev/evidence") && !l.starts_with('#'))
            .collect::<Vec<_>>(),
        "live records and the log disagree"
    );

    // 2. Recommend in audit mode and apply.
    let audit_yaml = recommend(&node, &learned, true);
    assert!(audit_yaml.contains("septa.dev/mode: audit"));
    assert!(audit_yaml.contains("name: septa-deployment-api"));
    node.write_manifest("50-proposal.yaml", &audit_yaml)
        .unwrap();
    // Live once an unexpected connection shows as AUDIT (it still connects: audit mode).
    let unexpected = to(&app.api, 8000);
    let mark = flow_records(&log).len();
    let audited = poll_until(Duration::from_secs(20), || {
        assert!(
            connects(&app.outsider, unexpected),
            "audit mode must not drop"
        );
        records_for(&log, mark, ip(&app.outsider), unexpected)
            .iter()
            .any(|r| r["verdict"] == "audit")
            .then_some(())
    });
    assert!(
        audited.is_some(),
        "no AUDIT record for outsider -> api:\n{}",
        node.agent_log()
    );

    // 3. The application's own traffic: zero AUDIT records.
    let mark = flow_records(&log).len();
    for _ in 0..3 {
        for (src, dst) in app_traffic(&app) {
            assert!(connects(src, dst));
        }
    }
    for (src, dst) in app_traffic(&app) {
        let recs = poll_until(Duration::from_secs(10), || {
            let r = records_for(&log, mark, ip(src), dst);
            (r.len() >= 3).then_some(r)
        })
        .unwrap_or_else(|| panic!("records for {} -> {dst} missing", ip(src)));
        for r in recs {
            assert_eq!(r["verdict"], "forwarded", "learned traffic audited: {r}");
        }
    }

    // 4. Enforce the reviewed proposal: the unexpected connection is dropped, the app is not.
    let enforce_yaml = recommend(&node, &learned, false);
    assert!(!enforce_yaml.contains("septa.dev/mode"));
    node.write_manifest("50-proposal.yaml", &enforce_yaml)
        .unwrap();
    poll_until(Duration::from_secs(20), || {
        (!connects(&app.outsider, unexpected)).then_some(())
    })
    .expect("the enforced proposal did not drop outsider -> api");
    let mark = flow_records(&log).len();
    for (src, dst) in app_traffic(&app) {
        assert!(
            connects(src, dst),
            "enforced proposal broke {} -> {dst}",
            ip(src)
        );
    }
    assert!(
        !connects(&app.frontend, to(&app.db, 5432)),
        "frontend -> db was never seen"
    );
    let denied = poll_until(Duration::from_secs(10), || {
        flow_records(&log)
            .into_iter()
            .skip(mark)
            .find(|r| r["verdict"] == "dropped" && r["destination"]["port"] == 5432)
    })
    .expect("a dropped record for frontend -> db");
    assert_eq!(denied["drop_reason"], "policy-denied");
    node.stop_agent().unwrap();
}
