//! ClusterNetworkPolicy input: what loads, what is rejected (with the field that is wrong),
//! what fails closed; and the evaluator's answers on the edges the conformance data does not
//! reach (host-network pods, audit mode, which rule decided, connlist).

use std::collections::BTreeMap;

use api::cluster_network_policy::{Action, Tier};
use policies::{
    cnp::{validate, ClusterPeer, UnknownPeers},
    connlist::{connlist, Boundaries, Node},
    eval::{evaluate, DecidedBy, Endpoint},
    load::load_str,
    model::*,
};

const HEAD: &str = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\n";

/// Load one ClusterNetworkPolicy with `spec` (YAML, indented as under `spec:`).
fn load(spec: &str) -> (Cluster, policies::Diagnostics) {
    load_str(
        "cnp.yaml",
        &format!("{HEAD}metadata: {{name: p}}\nspec:\n{spec}"),
    )
}

/// The single error of loading `spec`, as (field, message).
fn error(spec: &str) -> (String, String) {
    let (c, d) = load(spec);
    assert!(c.cluster_policies.is_empty(), "loaded anyway: {spec}");
    assert!(!d.0.is_empty(), "no error for:\n{spec}");
    (d.0[0].field.clone(), d.0[0].message.clone())
}

const SUBJECT: &str = "  tier: Admin\n  priority: 1\n  subject: {namespaces: {}}\n";

#[test]
fn the_documented_example_loads() {
    let (c, d) = load(
        "  tier: Admin
  priority: 10
  subject:
    namespaces: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
  ingress:
  - name: allow-dns
    action: Accept
    from: [{namespaces: {}}]
    protocols:
    - udp: {destinationPort: {number: 53}}
    - tcp: {destinationPort: {range: {start: 53, end: 54}}}
  - name: deny-rest
    action: Deny
    from: [{namespaces: {}}]
  egress:
  - name: no-metadata
    action: Deny
    to: [{networks: [169.254.169.254/32]}]
",
    );
    assert!(d.is_empty(), "{d}");
    assert_eq!(d.warnings().len(), 1, "only the data-path warning: {d}");
    let p = &c.cluster_policies[0];
    assert_eq!(
        (p.tier, p.priority, p.name.as_str()),
        (Tier::Admin, 10, "p")
    );
    assert_eq!(p.ingress.len(), 2);
    assert_eq!(p.ingress[1].action, Action::Deny);
    assert!(matches!(&p.egress[0].peers[0], ClusterPeer::Networks(n) if n.len() == 1));
    assert!(c.policies.is_empty(), "not a NetworkPolicy");
}

#[test]
fn bad_input_names_the_field() {
    let rule = |r: &str| format!("{SUBJECT}  ingress:\n  - {r}\n");
    let egress = |r: &str| format!("{SUBJECT}  egress:\n  - {r}\n");
    let cases: Vec<(String, &str, &str)> = vec![
        (
            "  tier: Admin\n  priority: 1001\n  subject: {namespaces: {}}\n".into(),
            "spec.priority",
            "outside 0-1000",
        ),
        (
            "  tier: Admin\n  priority: -1\n  subject: {namespaces: {}}\n".into(),
            "spec.priority",
            "outside",
        ),
        (
            "  tier: Admin\n  priority: \"5\"\n  subject: {namespaces: {}}\n".into(),
            "spec.priority",
            "",
        ),
        (
            "  tier: Admin\n  priority: 1.5\n  subject: {namespaces: {}}\n".into(),
            "spec.priority",
            "",
        ),
        (
            "  tier: Admin\n  prority: 1\n  subject: {namespaces: {}}\n".into(),
            "spec.prority",
            "unknown field",
        ),
        (
            "  tier: Cluster\n  priority: 1\n  subject: {namespaces: {}}\n".into(),
            "spec.tier",
            "Cluster",
        ),
        (
            "  tier: Admin\n  priority: 1\n  subject: {namespaces: {}, pods: {podSelector: {}}}\n"
                .into(),
            "spec.subject",
            "not both",
        ),
        (
            "  tier: Admin\n  priority: 1\n  subject: {}\n".into(),
            "spec.subject",
            "exactly one",
        ),
        (
            "  tier: Admin\n  priority: 1\n  subject: {pods: {namespaceSelector: {}}}\n".into(),
            "spec.subject.pods",
            "podSelector",
        ),
        (
            "  tier: Admin\n  priority: 1\n  subject: {namespaces: {matchExpressions: [{key: a, operator: Equals, values: [b]}]}}\n".into(),
            "spec.subject.namespaces.matchExpressions[0].operator",
            "Equals",
        ),
        (
            rule("{action: Allow, from: [{namespaces: {}}]}"),
            "spec.ingress[0].action",
            "Allow",
        ),
        (rule("{action: Deny, from: []}"), "spec.ingress[0].from", "at least one"),
        (rule("{action: Deny}"), "spec.ingress[0]", "from"),
        (
            rule("{action: Deny, from: [{namespaces: {}, pods: {podSelector: {}}}]}"),
            "spec.ingress[0].from[0]",
            "exactly one",
        ),
        (
            rule("{action: Deny, from: [{namespace: {}}]}"),
            "spec.ingress[0].from[0].namespace",
            "unknown field",
        ),
        (
            rule("{name: x, action: Deny, from: [{namespaces: {}}], protocols: []}"),
            "spec.ingress[0].protocols",
            "at least one",
        ),
        (
            rule("{action: Deny, from: [{namespaces: {}}], protocols: [{icmp: {}}]}"),
            "spec.ingress[0].protocols[0].icmp",
            "unknown field",
        ),
        (
            rule("{action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {}}]}"),
            "spec.ingress[0].protocols[0].tcp.destinationPort",
            "missing",
        ),
        (
            rule("{action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 0}}}]}"),
            "spec.ingress[0].protocols[0].tcp.destinationPort.number",
            "outside 1-65535",
        ),
        (
            rule("{action: Deny, from: [{namespaces: {}}], protocols: [{udp: {destinationPort: {number: 70000}}}]}"),
            "spec.ingress[0].protocols[0].udp.destinationPort.number",
            "outside 1-65535",
        ),
        (
            rule("{action: Deny, from: [{namespaces: {}}], protocols: [{sctp: {destinationPort: {range: {start: 90, end: 80}}}}]}"),
            "spec.ingress[0].protocols[0].sctp.destinationPort.range",
            "less than",
        ),
        (
            rule("{action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {range: {start: 80, end: 80}}}}]}"),
            "spec.ingress[0].protocols[0].tcp.destinationPort.range",
            "less than",
        ),
        (
            rule("{action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 80, range: {start: 1, end: 2}}}}]}"),
            "spec.ingress[0].protocols[0].tcp.destinationPort",
            "exactly one",
        ),
        (
            rule("{action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 80}}, udp: {destinationPort: {number: 80}}}]}"),
            "spec.ingress[0].protocols[0]",
            "exactly one",
        ),
        (
            rule("{action: Deny, from: [{namespaces: {}}], protocols: [{destinationNamedPort: \"8080\"}]}"),
            "spec.ingress[0].protocols[0].destinationNamedPort",
            "not a container port name",
        ),
        (
            rule(&format!("{{name: {}, action: Deny, from: [{{namespaces: {{}}}}]}}", "n".repeat(101))),
            "spec.ingress[0].name",
            "100",
        ),
        (
            egress("{action: Deny, to: [{networks: [10.0.0.0/33]}]}"),
            "spec.egress[0].to[0].networks[0]",
            "invalid CIDR",
        ),
        (
            egress("{action: Deny, to: [{networks: [10.0.0.1/8]}]}"),
            "spec.egress[0].to[0].networks[0]",
            "host bits",
        ),
        (
            egress("{action: Deny, to: [{networks: [10.0.0.1]}]}"),
            "spec.egress[0].to[0].networks[0]",
            "not a CIDR",
        ),
        (
            egress("{action: Deny, to: [{networks: []}]}"),
            "spec.egress[0].to[0].networks",
            "1-25",
        ),
        (
            egress("{action: Deny, to: [{domainNames: [example.com]}]}"),
            "spec.egress[0].to[0].domainNames",
            "only supported in Accept",
        ),
        (
            egress("{action: Accept, to: [{domainNames: [\"*example.com\"]}]}"),
            "spec.egress[0].to[0].domainNames[0]",
            "not a domain name",
        ),
        (
            egress("{action: Accept, to: [{networks: [10.0.0.0/8]}], protocols: [{destinationNamedPort: http}]}"),
            "spec.egress[0].protocols[0].destinationNamedPort",
            "named port",
        ),
        (
            egress("{action: Accept, to: [{nodes: {matchLabels: {\"\": x}}}]}"),
            "spec.egress[0].to[0].nodes.matchLabels",
            "empty label key",
        ),
        ("  []\n".into(), "spec", ""),
        (
            "  [Admin, 1, {namespaces: {}}, [], []]\n".into(),
            "spec",
            "a list where an object",
        ),
        (
            "  tier: Admin\n  priority: 1\n  subject: {namespaces: {}}\n  egress: [[Deny, Deny, [{namespaces: {}}]]]\n".into(),
            "spec.egress[0]",
            "a list where an object",
        ),
    ];
    let mut wrong = Vec::new();
    for (spec, field, msg) in &cases {
        let (f, m) = error(spec);
        if f != *field || !m.contains(msg) {
            wrong.push(format!("{spec}  want {field} ({msg}), got {f}: {m}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn too_many_items_are_errors() {
    let rules: String = (0..26)
        .map(|i| format!("  - {{name: r{i}, action: Deny, from: [{{namespaces: {{}}}}]}}\n"))
        .collect();
    let (f, m) = error(&format!("{SUBJECT}  ingress:\n{rules}"));
    assert_eq!(f, "spec.ingress");
    assert!(m.contains("at most 25"), "{m}");
    let peers = vec!["{namespaces: {}}"; 26].join(", ");
    let (f, _) = error(&format!(
        "{SUBJECT}  egress:\n  - {{action: Deny, to: [{peers}]}}\n"
    ));
    assert_eq!(f, "spec.egress[0].to");
    let nets: Vec<String> = (0..26).map(|i| format!("10.0.{i}.0/24")).collect();
    let (f, _) = error(&format!(
        "{SUBJECT}  egress:\n  - {{action: Deny, to: [{{networks: [{}]}}]}}\n",
        nets.join(", ")
    ));
    assert_eq!(f, "spec.egress[0].to[0].networks");
    // Many problems in one object: each is reported.
    let (_, d) = load(&format!(
        "  tier: Admin\n  priority: 5000\n  subject: {{}}\n  ingress:\n{rules}"
    ));
    let fields: Vec<&str> = d.0.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        ["spec.priority", "spec.subject", "spec.ingress"],
        "{d}"
    );
}

#[test]
fn objects_are_checked_as_a_whole() {
    let (c, d) = load_str(
        "x.yaml",
        &format!("{HEAD}metadata: {{}}\nspec: {{tier: Admin, priority: 1, subject: {{namespaces: {{}}}}}}\n"),
    );
    assert!(c.cluster_policies.is_empty());
    assert_eq!(d.0[0].field, "metadata.name", "{d}");
    let (_, d) = load_str("x.yaml", &format!("{HEAD}metadata: {{name: p}}\n"));
    assert_eq!(d.0[0].field, "spec", "{d}");
    let (_, d) = load_str(
        "x.yaml",
        "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: ClusterNetworkPolicy\nmetadata: {name: p}\nspec: {}\n",
    );
    assert_eq!(d.0[0].field, "apiVersion", "{d}");
    assert!(d.0[0].message.contains("v1alpha2"), "{d}");
    let one = format!(
        "{HEAD}metadata: {{name: p}}\nspec: {{tier: Admin, priority: 1, subject: {{namespaces: {{}}}}}}\n"
    );
    let (c, d) = load_str("x.yaml", &format!("{one}---\n{one}"));
    assert_eq!(c.cluster_policies.len(), 1);
    assert!(d.0[0].message.contains("duplicate"), "{d}");
    assert!(d.0[0].object.starts_with("ClusterNetworkPolicy p"), "{d}");
    // Cluster-scoped: a namespace in the metadata does not make two objects.
    let (c, _) = load_str(
        "x.yaml",
        &format!(
            "{one}---\n{}",
            one.replace("{name: p}", "{name: p, namespace: other}")
        ),
    );
    assert_eq!(c.cluster_policies.len(), 1);
}

#[test]
fn peers_septa_cannot_evaluate_fail_closed() {
    // networks under ingress: a peer type of another direction (or a newer API).
    let (c, d) = load(&format!(
        "{SUBJECT}  ingress:\n  - {{name: a, action: Accept, from: [{{networks: [10.0.0.0/8]}}, {{namespaces: {{}}}}]}}\n  - {{name: p, action: Pass, from: [{{domainNames: [example.com]}}]}}\n"
    ));
    assert!(d.is_empty(), "{d}");
    let warned: Vec<&str> = d.warnings().iter().map(|w| w.field.as_str()).collect();
    assert!(warned.contains(&"spec.ingress[0].from[0]"), "{d}");
    assert!(warned.contains(&"spec.ingress[1].from[0]"), "{d}");
    let p = &c.cluster_policies[0];
    assert_eq!(p.ingress[0].action, Action::Accept);
    assert_eq!(
        p.ingress[0].peers.len(),
        1,
        "the unknown peer matches nothing"
    );
    assert!(p.ingress[0].fail_closed);
    assert_eq!(
        p.ingress[1].action,
        Action::Deny,
        "Pass fails closed as Deny"
    );
    assert_eq!(p.ingress[1].peers, vec![ClusterPeer::All]);
    assert_eq!(p.ingress[1].protocols, None);

    // From an API server whose CRD is newer: an unknown peer type fails closed too; from a
    // file it is an error (most likely a misspelling).
    let v: serde_json::Value = serde_yaml::from_str(&format!(
        "{HEAD}metadata: {{name: p}}\nspec:\n{SUBJECT}  egress:\n  - {{name: d, action: Deny, to: [{{serviceAccounts: {{}}}}]}}\n"
    ))
    .unwrap();
    let (p, warnings) = validate(&v, UnknownPeers::FailClosed).expect("fails closed");
    assert_eq!(warnings[0].0, "spec.egress[0].to[0]");
    assert_eq!(p.egress[0].peers, vec![ClusterPeer::All]);
    let errors = validate(&v, UnknownPeers::Error).unwrap_err();
    assert!(errors[0].1.contains("serviceAccounts"), "{errors:?}");
}

#[test]
fn hostile_documents_are_errors_not_panics() {
    for text in [
        format!("{HEAD}metadata: {{name: p}}\nspec: 7\n"),
        format!("{HEAD}metadata: {{name: p}}\nspec: {{tier: Admin, priority: 99999999999999999999, subject: {{namespaces: {{}}}}}}\n"),
        format!("{HEAD}metadata: {{name: p}}\nspec: {{tier: Admin, priority: 1, subject: {{namespaces: {{}}}}, ingress: [7]}}\n"),
        format!("{HEAD}metadata: {{name: p}}\nspec: {{tier: Admin, priority: 1, subject: {{namespaces: {{}}}}, ingress: [{{action: Deny, from: [7, null, []]}}]}}\n"),
        format!("{HEAD}metadata: {{name: [p]}}\nspec: {{}}\n"),
        format!("{HEAD}metadata: {{name: p}}\nspec: {{tier: Admin, priority: 1, subject: {{namespaces: {{}}}}, egress: [{{action: Accept, to: [{{domainNames: [\"{}.com\"]}}]}}]}}\n", "a".repeat(100_000)),
    ] {
        let (c, d) = load_str("hostile.yaml", &text);
        assert!(c.cluster_policies.is_empty(), "loaded: {text:.200}");
        assert!(!d.0.is_empty(), "no error: {text:.200}");
    }
}

#[test]
fn nodes_load_with_their_addresses() {
    let (c, d) = load_str(
        "n.yaml",
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1, labels: {role: infra}}\nstatus: {addresses: [{type: InternalIP, address: 192.168.1.10}, {type: Hostname, address: n1}]}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: n2}\nstatus: {addresses: [{type: InternalIP, address: not-an-ip}]}\n",
    );
    assert_eq!(c.nodes.len(), 1);
    assert_eq!(
        c.nodes[0].ips,
        vec!["192.168.1.10".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(d.0.len(), 1, "{d}");
    assert_eq!(d.0[0].field, "status.addresses[0].address");
}

fn pod(ns: &str, name: &str, ip: &str, host_network: bool) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        workload: WorkloadRef {
            namespace: ns.into(),
            name: name.into(),
            kind: "Pod".into(),
        },
        labels: Labels::from([("app".to_string(), name.to_string())]),
        named_ports: BTreeMap::from([("http".to_string(), (Protocol::Tcp, 8080))]),
        ips: vec![ip.parse().unwrap()],
        host_network,
    }
}

fn cluster(policies: &str) -> Cluster {
    let (mut c, d) = load_str("p.yaml", policies);
    assert!(d.is_empty(), "{d}");
    c.pods = vec![
        pod("shop", "web", "10.0.0.1", false),
        pod("shop", "db", "10.0.0.2", false),
        pod("kube-system", "agent", "192.168.1.10", true),
    ];
    c.nodes = vec![policies::cnp::NodeInfo {
        name: "n1".into(),
        labels: Labels::new(),
        ips: vec!["192.168.1.10".parse().unwrap()],
    }];
    c
}

#[test]
fn host_network_pods_are_neither_subjects_nor_pod_peers() {
    let c = cluster(&format!(
        "{HEAD}metadata: {{name: deny-all}}\nspec: {{tier: Admin, priority: 1, subject: {{namespaces: {{}}}}, ingress: [{{name: all-pods, action: Deny, from: [{{namespaces: {{}}}}]}}], egress: [{{name: nodes, action: Deny, to: [{{nodes: {{}}}}]}}]}}\n"
    ));
    let (web, db, agent) = (&c.pods[0], &c.pods[1], &c.pods[2]);
    let e = |a, b| evaluate(&c, a, b, Protocol::Tcp, 80, false);
    assert!(!e(Endpoint::Pod(web), Endpoint::Pod(db)).allowed());
    // The host-network pod is no pod peer of `namespaces: {}`, and no subject of it.
    assert!(e(Endpoint::Pod(agent), Endpoint::Pod(db)).allowed());
    assert!(
        !e(Endpoint::Pod(db), Endpoint::Pod(agent)).allowed(),
        "its address is a node's"
    );
    // ...but its address is the node's, which a nodes peer matches.
    let r = e(
        Endpoint::Pod(web),
        Endpoint::External("192.168.1.10".parse().unwrap()),
    );
    assert!(!r.allowed());
    let by = r.egress.unwrap().decision(false).by;
    assert!(
        matches!(&by, DecidedBy::Cluster(r) if r.rule == "nodes" && r.tier == Tier::Admin && r.priority == 1),
        "{by:?}"
    );
}

#[test]
fn audit_mode_cluster_policies_audit_and_name_the_rule() {
    let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-web, namespace: shop}\nspec: {podSelector: {matchLabels: {app: db}}, ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]}\n";
    let guard = format!(
        "{HEAD}metadata: {{name: guard, annotations: {{septa.dev/mode: audit}}}}\nspec: {{tier: Admin, priority: 7, subject: {{pods: {{podSelector: {{matchLabels: {{app: db}}}}}}}}, ingress: [{{name: only-8080, action: Accept, from: [{{namespaces: {{}}}}], protocols: [{{destinationNamedPort: http}}]}}, {{name: rest, action: Deny, from: [{{namespaces: {{}}}}]}}]}}\n"
    );
    let c = cluster(&format!("{np}---\n{guard}"));
    let (web, db) = (Endpoint::Pod(&c.pods[0]), Endpoint::Pod(&c.pods[1]));
    let r = evaluate(&c, web, db, Protocol::Tcp, 80, false);
    assert_eq!(r.verdict, dataplane_common::verdict::AUDIT);
    let ingress = r.ingress.unwrap();
    assert!(matches!(
        ingress.decision(false).by,
        DecidedBy::NetworkPolicy(Some(_))
    ));
    let by = ingress.decision(true).by;
    assert!(
        matches!(&by, DecidedBy::Cluster(r) if r.policy == "guard" && r.index == 1 && r.audit),
        "{by:?}"
    );
    assert!(by_display(&by)
        .contains("ClusterNetworkPolicy/guard (Admin tier, priority 7) ingress[1] \"rest\": Deny"));
    // A Pass in front: the NetworkPolicy decides, and the Pass is named on the way.
    let pass = guard.replace("action: Accept", "action: Pass");
    let c2 = cluster(&format!("{np}---\n{pass}"));
    let (web2, db2) = (Endpoint::Pod(&c2.pods[0]), Endpoint::Pod(&c2.pods[1]));
    let d = evaluate(&c2, web2, db2, Protocol::Tcp, 8080, false)
        .ingress
        .unwrap()
        .decision(true);
    assert!(
        d.allowed && matches!(d.by, DecidedBy::NetworkPolicy(Some(_))),
        "{d:?}"
    );
    assert_eq!(d.passed.len(), 1);
    assert_eq!(d.passed[0].rule, "only-8080");
    let r = evaluate(&c, web, db, Protocol::Tcp, 8080, false);
    assert_eq!(
        r.verdict,
        dataplane_common::verdict::FORWARDED,
        "the named port resolves"
    );
}

fn by_display(by: &DecidedBy) -> String {
    match by {
        DecidedBy::Cluster(r) => r.to_string(),
        other => format!("{other:?}"),
    }
}

#[test]
fn connlist_shows_the_tiered_result() {
    let c = cluster(&format!(
        "{HEAD}metadata: {{name: db-guard}}\nspec: {{tier: Admin, priority: 1, subject: {{pods: {{podSelector: {{matchLabels: {{app: db}}}}}}}}, ingress: [{{name: pg, action: Accept, from: [{{pods: {{podSelector: {{matchLabels: {{app: web}}}}}}}}], protocols: [{{tcp: {{destinationPort: {{range: {{start: 5432, end: 5433}}}}}}}}]}}, {{name: rest, action: Deny, from: [{{namespaces: {{}}}}]}}], egress: [{{name: no-metadata, action: Deny, to: [{{networks: [169.254.169.254/32]}}]}}]}}\n"
    ));
    let lines = connlist(&c, &Boundaries::default());
    let find = |src: &str, dst: &str| {
        lines
            .iter()
            .find(|l| l.src.to_string() == src && l.dst.to_string() == dst)
            .map(|l| l.conns.to_string())
    };
    assert_eq!(
        find("shop/web[Pod]", "shop/db[Pod]").as_deref(),
        Some("TCP 5432-5433")
    );
    assert_eq!(
        find("shop/db[Pod]", "shop/web[Pod]").as_deref(),
        Some("All Connections")
    );
    let db_out: Vec<String> = lines
        .iter()
        .filter(|l| l.src.to_string() == "shop/db[Pod]" && matches!(l.dst, Node::External(..)))
        .map(|l| l.dst.to_string())
        .collect();
    assert!(
        db_out
            .iter()
            .any(|d| d == "0.0.0.0-169.254.169.253[External]")
            && db_out
                .iter()
                .any(|d| d == "169.254.169.255-255.255.255.255[External]")
            && !db_out
                .iter()
                .any(|d| d.contains("169.254.169.254-169.254.169.254")),
        "{db_out:?}"
    );
}

#[test]
fn diff_shows_what_a_guardrail_takes_away() {
    let old = cluster("");
    let new = cluster(&format!(
        "{HEAD}metadata: {{name: isolate-db}}\nspec: {{tier: Admin, priority: 1, subject: {{pods: {{podSelector: {{matchLabels: {{app: db}}}}}}}}, ingress: [{{name: web-pg, action: Accept, from: [{{pods: {{podSelector: {{matchLabels: {{app: web}}}}}}}}], protocols: [{{tcp: {{destinationPort: {{number: 5432}}}}}}]}}, {{name: rest, action: Deny, from: [{{namespaces: {{}}}}]}}]}}\n"
    ));
    let changes = policies::connlist::diff(&old, &new);
    let web_db = changes
        .iter()
        .find(|c| c.src.to_string() == "shop/web[Pod]" && c.dst.to_string() == "shop/db[Pod]")
        .expect("web -> db changed");
    assert_eq!(web_db.effect(), "narrows");
    assert_eq!(web_db.new.as_ref().unwrap().to_string(), "TCP 5432");
    assert!(
        changes.iter().all(|c| c.dst.to_string() == "shop/db[Pod]"),
        "only connections to db change: {changes:?}"
    );
}
