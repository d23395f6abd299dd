//! Services: the compiled entries at a Service address (and at a node port) decide as the
//! reference evaluator's Service rule does, case by case. The random agreement is in
//! `agreement.rs`.

use std::{collections::BTreeSet, net::IpAddr};

use dataplane_common::{direction::EGRESS, identity, policy, rule, verdict};
use policies::{
    compile::{ipcache_lookup, Compiler, DesiredState, IdentityKey},
    connlist::{connlist, service_access, Node},
    eval::{evaluate_node_port, evaluate_service},
    model::*,
    selector::{Requirement, Selector},
};

const DROPPED: u8 = verdict::DROPPED;
const AUDIT: u8 = verdict::AUDIT;
const FORWARDED: u8 = verdict::FORWARDED;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn labels(l: &[(&str, &str)]) -> Labels {
    l.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sel(l: &[(&str, &str)]) -> Selector {
    Selector(
        l.iter()
            .map(|(k, v)| Requirement::In(k.to_string(), BTreeSet::from([v.to_string()])))
            .collect(),
    )
}

fn pod(name: &str, l: &[(&str, &str)], named: &[(&str, Protocol, u16)], ips: &[&str]) -> Pod {
    Pod {
        namespace: "x".into(),
        name: name.into(),
        workload: WorkloadRef {
            namespace: "x".into(),
            name: name.into(),
            kind: "Pod".into(),
        },
        labels: labels(l),
        named_ports: named
            .iter()
            .map(|(n, p, port)| (n.to_string(), (*p, *port)))
            .collect(),
        ips: ips.iter().map(|s| ip(s)).collect(),
        host_network: false,
    }
}

/// Egress rule to pods with labels `l` (`None`: any peer) on TCP `ports` (empty: all).
fn to(l: Option<&[(&str, &str)]>, ports: &[u16]) -> Rule {
    Rule {
        peers: l.map(|l| {
            vec![Peer::Pods {
                namespaces: NamespaceScope::Own,
                pods: sel(l),
            }]
        }),
        ports: (!ports.is_empty()).then(|| {
            ports
                .iter()
                .map(|&p| PortSpec {
                    protocol: Protocol::Tcp,
                    port: PortSel::Range(p, p),
                })
                .collect()
        }),
    }
}

fn to_block(cidr: &str) -> Rule {
    Rule {
        peers: Some(vec![Peer::Block(IpBlock {
            cidr: cidr.parse().unwrap(),
            except: vec![],
        })]),
        ports: None,
    }
}

/// An egress policy for the client.
fn egress(name: &str, audit: bool, rules: Vec<Rule>) -> Policy {
    Policy {
        namespace: "x".into(),
        name: name.into(),
        audit,
        pod_selector: sel(&[("app", "client")]),
        ingress: None,
        egress: Some(rules),
    }
}

fn service(cluster_ips: &[&str], target: TargetPort) -> Service {
    Service {
        namespace: "x".into(),
        name: "web".into(),
        selector: labels(&[("app", "web")]),
        cluster_ips: cluster_ips.iter().map(|s| ip(s)).collect(),
        ports: vec![ServicePort {
            name: Some("http".into()),
            protocol: Protocol::Tcp,
            port: 80,
            target,
            node_port: Some(30080),
        }],
        external_ips: vec![],
        backends: None,
    }
}

fn backend(addr: &str, port: u16, ready: bool) -> Backend {
    Backend {
        ip: ip(addr),
        ports: vec![(Some("http".into()), Protocol::Tcp, port)],
        ready,
    }
}

/// A client, two web pods (a: web=80, b: web=8080) and the Service `web` (TCP 80 → `target`).
fn cluster(policies: Vec<Policy>, target: TargetPort) -> Cluster {
    Cluster {
        pods: vec![
            pod(
                "client",
                &[("app", "client")],
                &[],
                &["10.0.0.2", "fd00::2"],
            ),
            pod(
                "a",
                &[("app", "web"), ("tier", "a")],
                &[("web", Protocol::Tcp, 80)],
                &["10.0.0.3", "fd00::3"],
            ),
            pod(
                "b",
                &[("app", "web"), ("tier", "b")],
                &[("web", Protocol::Tcp, 8080)],
                &["10.0.0.4", "fd00::4"],
            ),
        ],
        services: vec![service(&["10.96.0.10"], target)],
        policies,
        ..Default::default()
    }
}

/// What the client's egress hook decides for a connection to `addr`, and the rule it names.
fn kernel(c: &Cluster, st: &DesiredState, addr: IpAddr, port: u16) -> (u8, u32) {
    let ep = st.endpoints[&c.pods[0].key()].to_info();
    let peer = ipcache_lookup(&st.ipcache, addr);
    let d = policy::evaluate(&st.policy, &ep, EGRESS, peer, 6, port, false);
    (d.verdict, d.rule_id)
}

/// The same for the node's address on `node_port` (`host_exempt`: no `--policy-host`).
fn kernel_node(st: &DesiredState, c: &Cluster, node_port: u16, host_exempt: bool) -> u8 {
    assert!(
        st.policy.contains_key(&policy::node_port_key(6, 30080)),
        "the node port is marked"
    );
    let ep = st.endpoints[&c.pods[0].key()].to_info();
    policy::evaluate(
        &st.policy,
        &ep,
        EGRESS,
        identity::HOST,
        6,
        node_port,
        host_exempt,
    )
    .verdict
}

/// Check the kernel against the evaluator on every Service address and the node port; return
/// the verdict and the deciding rule's text.
fn decide(c: &Cluster) -> (u8, Option<String>) {
    let st = Compiler::default().compile(c);
    let svc = &c.services[0];
    let want = evaluate_service(c, &c.pods[0], svc, Protocol::Tcp, 80).unwrap();
    for addr in svc.addresses() {
        let (v, r) = kernel(c, &st, addr, 80);
        assert_eq!(v, want.verdict, "{addr}: {want:#?}");
        if let Some(rr) = &want.rule {
            assert_eq!(st.rules.get(&r), Some(rr), "{addr}");
        }
        assert_eq!(
            st.services.get(&addr),
            Some(&(svc.namespace.clone(), svc.name.clone()))
        );
    }
    let np = evaluate_node_port(c, &c.pods[0], Protocol::Tcp, 30080).unwrap();
    assert_eq!(np.verdict, want.verdict);
    assert_eq!(kernel_node(&st, c, 30080, false), want.verdict);
    assert_eq!(
        kernel_node(&st, c, 30080, true),
        want.verdict,
        "a node port is decided without --policy-host too"
    );
    // connlist says the same (enforcing policy only: audit is allowed).
    let line = connlist(c, &Default::default())
        .into_iter()
        .find(|l| {
            l.src == Node::Workload(c.pods[0].workload.clone())
                && l.dst
                    == Node::Service {
                        namespace: "x".into(),
                        name: "web".into(),
                    }
        })
        .map(|l| l.conns)
        .unwrap_or_default();
    assert_eq!(line.allows(Protocol::Tcp, 80), want.allowed());
    (want.verdict, want.rule.map(|r| r.to_string()))
}

#[test]
fn table() {
    use TargetPort::{Named, Number};
    let web = Some(&[("app", "web")][..]);
    let a = Some(&[("tier", "a")][..]);
    let b = Some(&[("tier", "b")][..]);
    #[allow(clippy::type_complexity)]
    let cases: Vec<(
        &str,
        Vec<Policy>,
        TargetPort,
        Option<Vec<Backend>>,
        u8,
        Option<&str>,
    )> = vec![
        (
            "not isolated: everything",
            vec![],
            Number(80),
            None,
            FORWARDED,
            None,
        ),
        (
            "every backend allowed",
            vec![egress("e", false, vec![to(web, &[80])])],
            Number(80),
            None,
            FORWARDED,
            Some("x/e/egress[0]"),
        ),
        (
            "mixed: one backend denied denies all",
            vec![egress("e", false, vec![to(a, &[80])])],
            Number(80),
            None,
            DROPPED,
            None,
        ),
        (
            "each backend by a different rule: the first backend's rule",
            vec![egress("e", false, vec![to(b, &[80]), to(a, &[80])])],
            Number(80),
            None,
            FORWARDED,
            Some("x/e/egress[1]"),
        ),
        (
            "named target: a on 80, b on 8080, only 80 allowed",
            vec![egress("e", false, vec![to(web, &[80])])],
            Named("web".into()),
            None,
            DROPPED,
            None,
        ),
        (
            "named target: both ports allowed",
            vec![egress("e", false, vec![to(web, &[80, 8080])])],
            Named("web".into()),
            None,
            FORWARDED,
            Some("x/e/egress[0]"),
        ),
        (
            "an ipBlock containing the ClusterIP does not open it",
            vec![egress("e", false, vec![to_block("10.96.0.0/12")])],
            Number(80),
            None,
            DROPPED,
            None,
        ),
        (
            "an ipBlock containing the backends opens it",
            vec![egress(
                "e",
                false,
                vec![to_block("10.0.0.0/24"), to_block("fd00::/64")],
            )],
            Number(80),
            None,
            FORWARDED,
            Some("x/e/egress[0]"),
        ),
        (
            "both families judged together: v6 backends denied",
            vec![egress("e", false, vec![to_block("10.0.0.0/24")])],
            Number(80),
            None,
            DROPPED,
            None,
        ),
        (
            "a wildcard rule on 80 does not open 80 → 8080",
            vec![egress("e", false, vec![to(None, &[80])])],
            Number(8080),
            None,
            DROPPED,
            None,
        ),
        (
            "a wildcard rule on 80 opens 80 → 80",
            vec![egress("e", false, vec![to(None, &[80])])],
            Number(80),
            None,
            FORWARDED,
            Some("x/e/egress[0]"),
        ),
        (
            "one backend only audit-allowed: dropped when enforced",
            vec![
                egress("e", false, vec![to(a, &[80])]),
                egress("z", true, vec![to(b, &[80])]),
            ],
            Number(80),
            None,
            DROPPED,
            None,
        ),
        (
            "audit-only client, every backend audit-allowed",
            vec![egress("z", true, vec![to(web, &[80])])],
            Number(80),
            None,
            FORWARDED,
            Some("x/z/egress[0]"),
        ),
        (
            "audit-only client, one backend not allowed: audit",
            vec![egress("z", true, vec![to(a, &[80])])],
            Number(80),
            None,
            AUDIT,
            None,
        ),
        (
            "endpoint slices: no ready backend",
            vec![egress("e", false, vec![to(web, &[80])])],
            Number(80),
            Some(vec![backend("10.0.0.3", 80, false)]),
            DROPPED,
            None,
        ),
        (
            "endpoint slices: the not-ready denied backend does not count",
            vec![egress("e", false, vec![to(a, &[80])])],
            Number(80),
            Some(vec![
                backend("10.0.0.3", 80, true),
                backend("10.0.0.4", 80, false),
            ]),
            FORWARDED,
            Some("x/e/egress[0]"),
        ),
        (
            "endpoint slices: a backend that is no pod counts by its address",
            vec![egress("e", false, vec![to(a, &[80])])],
            Number(80),
            Some(vec![
                backend("10.0.0.3", 80, true),
                backend("192.0.2.9", 80, true),
            ]),
            DROPPED,
            None,
        ),
        (
            "endpoint slices: an external backend allowed by its ipBlock",
            vec![egress(
                "e",
                false,
                vec![to(a, &[80]), to_block("192.0.2.0/24")],
            )],
            Number(80),
            Some(vec![
                backend("192.0.2.9", 80, true),
                backend("10.0.0.3", 80, true),
            ]),
            FORWARDED,
            Some("x/e/egress[0]"),
        ),
        (
            "a named target no pod has: no backend, fail closed",
            vec![egress("e", false, vec![to(None, &[])])],
            Named("nope".into()),
            None,
            DROPPED,
            None,
        ),
    ];
    for (name, pols, target, backends, want, rule) in cases {
        for ips in [
            &["10.96.0.10"][..],
            &["fd00:96::10"][..],
            &["10.96.0.10", "fd00:96::10"][..],
        ] {
            let mut c = cluster(pols.clone(), target.clone());
            c.services[0].cluster_ips = ips.iter().map(|s| ip(s)).collect();
            c.services[0].backends = backends.clone();
            let (v, r) = decide(&c);
            assert_eq!(v, want, "{name} {ips:?}");
            assert_eq!(r.as_deref(), rule, "{name} {ips:?}");
        }
    }
}

#[test]
fn service_addresses_and_identity() {
    let mut c = cluster(
        vec![egress("e", false, vec![to(None, &[])])],
        TargetPort::Number(80),
    );
    c.services[0].cluster_ips = vec![ip("10.96.0.10"), ip("fd00:96::10")];
    c.services[0].external_ips = vec![ip("192.0.2.50")];
    let st = Compiler::default().compile(&c);
    let id = st.identities[&IdentityKey::Service {
        namespace: "x".into(),
        name: "web".into(),
    }];
    for a in ["10.96.0.10", "fd00:96::10", "192.0.2.50"] {
        assert_eq!(ipcache_lookup(&st.ipcache, ip(a)), id, "{a}");
        assert_eq!(st.services[&ip(a)], ("x".into(), "web".into()));
    }
    // The key prints distinctly, which the agent's persistent numbering relies on.
    assert_eq!(
        format!(
            "{:?}",
            IdentityKey::Service {
                namespace: "x".into(),
                name: "web".into()
            }
        ),
        "Service { namespace: \"x\", name: \"web\" }"
    );
}

#[test]
fn an_external_ip_never_takes_another_services_cluster_ip() {
    // `a/x` sorts before `x/web` and claims web's ClusterIP as an external IP: a namespace
    // user must not take over kube-dns's address this way.
    let mut c = cluster(vec![], TargetPort::Number(80));
    c.services[0].cluster_ips = vec![ip("10.96.0.10")];
    let mut rogue = c.services[0].clone();
    rogue.namespace = "a".into();
    rogue.name = "x".into();
    rogue.cluster_ips = vec![ip("10.96.0.99")];
    rogue.external_ips = vec![ip("10.96.0.10"), ip("192.0.2.7")];
    c.services.push(rogue);
    let st = Compiler::default().compile(&c);
    assert_eq!(st.services[&ip("10.96.0.10")], ("x".into(), "web".into()));
    assert_eq!(st.services[&ip("192.0.2.7")], ("a".into(), "x".into()));
    let web = st.identities[&IdentityKey::Service {
        namespace: "x".into(),
        name: "web".into(),
    }];
    assert_eq!(ipcache_lookup(&st.ipcache, ip("10.96.0.10")), web);
}

#[test]
fn other_ports_of_a_service_address_are_closed() {
    // Allowed to everything on every port: the wildcard peer has entries, and still only the
    // Service's port is open at its address (kube-proxy forwards nothing else).
    let c = cluster(
        vec![egress("e", false, vec![to(None, &[])])],
        TargetPort::Number(80),
    );
    let st = Compiler::default().compile(&c);
    assert_eq!(kernel(&c, &st, ip("10.96.0.10"), 80).0, FORWARDED);
    assert_eq!(kernel(&c, &st, ip("10.96.0.10"), 81).0, DROPPED);
    // A denied node port is closed even though a wildcard rule covers it; other node ports
    // are left to the rules.
    let c = cluster(
        vec![egress(
            "e",
            false,
            vec![to(a_only(), &[80]), to(None, &[30080, 22])],
        )],
        TargetPort::Number(80),
    );
    let st = Compiler::default().compile(&c);
    assert_eq!(kernel_node(&st, &c, 30080, false), DROPPED);
    assert_eq!(kernel_node(&st, &c, 30080, true), DROPPED);
    assert_eq!(kernel_node(&st, &c, 22, false), FORWARDED);
    // Without --policy-host the node's other ports stay exempt, whatever the rules say.
    let c2 = cluster(
        vec![egress("e", false, vec![to(a_only(), &[80])])],
        TargetPort::Number(80),
    );
    let st2 = Compiler::default().compile(&c2);
    assert_eq!(kernel_node(&st2, &c2, 22, true), FORWARDED);
    assert_eq!(kernel_node(&st2, &c2, 22, false), DROPPED);
    assert_eq!(kernel_node(&st2, &c2, 30080, true), DROPPED);
    let d = kernel(&c, &st, ip("10.96.0.10"), 80);
    assert_eq!(d, (DROPPED, rule::DEFAULT_DENY));
}

fn a_only() -> Option<&'static [(&'static str, &'static str)]> {
    Some(&[("tier", "a")])
}

#[test]
fn service_access_names_the_rule() {
    let c = cluster(
        vec![egress("e", false, vec![to(Some(&[("app", "web")]), &[80])])],
        TargetPort::Number(80),
    );
    let list = service_access(&c);
    let mine: Vec<_> = list.iter().filter(|a| a.client.name == "client").collect();
    assert_eq!(mine.len(), 1);
    assert!(mine[0].allowed);
    assert_eq!(
        mine[0].rule.as_ref().map(|r| r.to_string()).as_deref(),
        Some("x/e/egress[0]")
    );
    let lines: Vec<String> = connlist(&c, &Default::default())
        .iter()
        .map(|l| format!("{} => {} : {}", l.src, l.dst, l.conns))
        .collect();
    assert!(
        lines.contains(&"x/client[Pod] => x/web[Service] : TCP 80".to_string()),
        "{lines:#?}"
    );
}
