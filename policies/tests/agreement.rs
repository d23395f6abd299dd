//! The compiled map state, queried the way the kernel queries it, agrees with the reference
//! evaluator on random clusters, policies and connections.

use std::{collections::BTreeMap, collections::BTreeSet, net::IpAddr};

use policies::{
    compile::{kernel_verdict, Compiler},
    eval::{evaluate, Endpoint},
    model::*,
    selector::{Requirement, Selector},
};
use proptest::prelude::*;

fn sel_strategy() -> impl Strategy<Value = Selector> {
    let req = prop_oneof![
        (
            prop::sample::select(vec!["app", "tier"]),
            prop::sample::select(vec!["web", "api", "db", "fe", "be"])
        )
            .prop_map(|(k, v)| Requirement::In(k.into(), BTreeSet::from([v.to_string()]))),
        (
            prop::sample::select(vec!["app", "tier"]),
            prop::sample::select(vec!["web", "db", "be"])
        )
            .prop_map(|(k, v)| Requirement::NotIn(k.into(), BTreeSet::from([v.to_string()]))),
        prop::sample::select(vec!["app", "tier"]).prop_map(|k| Requirement::Exists(k.into())),
        prop::sample::select(vec!["app", "tier"]).prop_map(|k| Requirement::DoesNotExist(k.into())),
    ];
    prop::collection::vec(req, 0..=2).prop_map(Selector)
}

fn ns_sel_strategy() -> impl Strategy<Value = Selector> {
    let req = prop_oneof![
        prop::sample::select(vec!["x", "y", "z"]).prop_map(|n| Requirement::In(
            NAMESPACE_NAME_LABEL.into(),
            BTreeSet::from([n.to_string()])
        )),
        prop::sample::select(vec!["a", "b"])
            .prop_map(|v| Requirement::In("team".into(), BTreeSet::from([v.to_string()]))),
        Just(Requirement::Exists("team".into())),
    ];
    prop::collection::vec(req, 0..=1).prop_map(Selector)
}

fn block_strategy() -> impl Strategy<Value = IpBlock> {
    prop::sample::select(vec![
        ("10.0.0.0/16", vec!["10.0.1.0/24"]),
        ("10.0.0.0/8", vec![]),
        ("10.0.2.5/32", vec![]),
        ("0.0.0.0/0", vec!["10.0.0.0/8"]),
        ("192.0.2.0/24", vec!["192.0.2.128/25"]),
        ("fd00::/64", vec!["fd00::3/128"]),
        ("::/0", vec![]),
    ])
    .prop_map(|(c, e)| IpBlock {
        cidr: c.parse().unwrap(),
        except: e.iter().map(|s| s.parse().unwrap()).collect(),
    })
}

fn peer_strategy() -> impl Strategy<Value = Peer> {
    prop_oneof![
        3 => (prop::option::of(ns_sel_strategy()), sel_strategy()).prop_map(|(ns, pods)| Peer::Pods {
            namespaces: ns.map_or(NamespaceScope::Own, NamespaceScope::Selected),
            pods
        }),
        2 => block_strategy().prop_map(Peer::Block),
    ]
}

fn port_strategy() -> impl Strategy<Value = PortSpec> {
    let proto = prop::sample::select(vec![Protocol::Tcp, Protocol::Udp, Protocol::Sctp]);
    let sel = prop_oneof![
        Just(PortSel::All),
        prop::sample::select(vec![
            (80, 80),
            (81, 81),
            (53, 53),
            (80, 90),
            (1, 1024),
            (8000, 8191),
            (8080, 8080)
        ])
        .prop_map(|(a, b)| PortSel::Range(a, b)),
        prop::sample::select(vec!["http", "dns", "alt", "nope"])
            .prop_map(|n| PortSel::Named(n.into())),
    ];
    (proto, sel).prop_map(|(protocol, port)| PortSpec { protocol, port })
}

fn rules_strategy() -> impl Strategy<Value = Option<Vec<Rule>>> {
    let rule = (
        prop::option::of(prop::collection::vec(peer_strategy(), 1..=2)),
        prop::option::of(prop::collection::vec(port_strategy(), 1..=2)),
    )
        .prop_map(|(peers, ports)| Rule { peers, ports });
    // Mostly present (the direction isolates), sometimes empty (deny all), sometimes absent.
    prop_oneof![1 => Just(None), 4 => prop::collection::vec(rule, 0..=3).prop_map(Some)]
}

fn policy_strategy() -> impl Strategy<Value = Policy> {
    (
        prop::sample::select(vec!["x", "y", "z"]),
        sel_strategy(),
        prop::bool::weighted(0.4),
        rules_strategy(),
        rules_strategy(),
        0u32..1000,
    )
        .prop_map(|(ns, pod_selector, audit, ingress, egress, n)| Policy {
            namespace: ns.into(),
            name: format!("p{n}"),
            audit,
            pod_selector,
            ingress,
            egress,
        })
}

fn labels_strategy() -> impl Strategy<Value = Labels> {
    (
        prop::option::of(prop::sample::select(vec!["web", "api", "db"])),
        prop::option::of(prop::sample::select(vec!["fe", "be"])),
    )
        .prop_map(|(a, t)| {
            let mut l = Labels::new();
            if let Some(a) = a {
                l.insert("app".into(), a.into());
            }
            if let Some(t) = t {
                l.insert("tier".into(), t.into());
            }
            l
        })
}

fn cluster_strategy() -> impl Strategy<Value = Cluster> {
    let pod = (
        prop::sample::select(vec!["x", "y", "z"]),
        labels_strategy(),
        prop::sample::subsequence(vec!["http", "dns", "alt"], 0..=3),
        prop::bool::ANY,
    );
    let nsl = prop::collection::vec(prop::option::of(prop::sample::select(vec!["a", "b"])), 3);
    (
        prop::collection::vec(pod, 1..=6),
        prop::collection::vec(policy_strategy(), 1..=5),
        nsl,
        prop::option::of(fqdn_strategy()),
    )
        .prop_map(|(pods, mut policies, ns_teams, fqdn)| {
            let mut c = Cluster::default();
            for (i, n) in ["x", "y", "z"].iter().enumerate() {
                let mut labels = Labels::from([(NAMESPACE_NAME_LABEL.to_string(), n.to_string())]);
                if let Some(t) = ns_teams[i] {
                    labels.insert("team".into(), t.into());
                }
                c.namespaces.insert(
                    n.to_string(),
                    Namespace {
                        name: n.to_string(),
                        labels,
                    },
                );
            }
            for (i, (ns, labels, ports, alt81)) in pods.into_iter().enumerate() {
                let mut named = BTreeMap::new();
                for p in ports {
                    named.insert(
                        p.to_string(),
                        match p {
                            "http" => (Protocol::Tcp, 80),
                            "dns" => (Protocol::Udp, 53),
                            _ => (Protocol::Tcp, if alt81 { 81 } else { 8080 }),
                        },
                    );
                }
                let ips: Vec<IpAddr> = vec![
                    format!("10.0.{}.{}", i % 3, i + 2).parse().unwrap(),
                    format!("fd00::{}", i + 2).parse().unwrap(),
                ];
                c.pods.push(Pod {
                    namespace: ns.into(),
                    name: format!("pod{i}"),
                    workload: WorkloadRef {
                        namespace: ns.into(),
                        name: format!("pod{i}"),
                        kind: "Pod".into(),
                    },
                    labels,
                    named_ports: named,
                    ips,
                    host_network: false,
                });
            }
            for (i, p) in policies.iter_mut().enumerate() {
                p.name = format!("p{i}");
            }
            c.policies = policies;
            c.fqdn_policies = fqdn.into_iter().collect();
            c.dns_resolvers = Some(vec!["203.0.113.9".parse().unwrap()]);
            c
        })
}

/// An FqdnPolicy: egress isolation of the pods it selects, with DNS to its resolvers (its own,
/// one of them an external address the tests probe, or the default).
fn fqdn_strategy() -> impl Strategy<Value = policies::septa::fqdn::FqdnSpec> {
    (
        prop::sample::select(vec!["x", "y", "z"]),
        sel_strategy(),
        prop::sample::subsequence(vec!["192.0.2.7", "10.0.1.99", "fd00::99"], 0..=2),
    )
        .prop_map(
            |(ns, selector, resolvers)| policies::septa::fqdn::FqdnSpec {
                namespace: ns.into(),
                name: "names".into(),
                selector,
                rules: vec![policies::septa::fqdn::FqdnRule {
                    patterns: vec![policies::septa::pattern::Pattern::Exact("a.example".into())],
                    ports: Some(vec![(Protocol::Tcp, 443)]),
                }],
                resolvers: resolvers.iter().map(|r| r.parse().unwrap()).collect(),
            },
        )
}

const EXTERNAL: [&str; 7] = [
    "192.0.2.7",
    "192.0.2.200",
    "203.0.113.9",
    "10.0.1.99",
    "10.5.0.1",
    "fd00::99",
    "2001:db8::1",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(1500), ..ProptestConfig::default() })]

    #[test]
    fn compiled_entries_agree_with_the_evaluator(
        c in cluster_strategy(),
        conns in prop::collection::vec((0usize..13, 0usize..13, prop::sample::select(vec![Protocol::Tcp, Protocol::Udp, Protocol::Sctp]), prop::sample::select(vec![53u16, 80, 81, 85, 443, 8080, 8191, 1024]), any::<bool>()), 60),
    ) {
        let st = Compiler::default().compile(&c);
        let ext: Vec<IpAddr> = EXTERNAL.iter().map(|s| s.parse().unwrap()).collect();
        let ep = |i: usize| if i < c.pods.len() { Endpoint::Pod(&c.pods[i]) } else { Endpoint::External(ext[(i - c.pods.len()) % ext.len()]) };
        for (s, d, proto, port, v6) in conns {
            let (src, dst) = (ep(s), ep(d));
            let Some(kernel) = kernel_verdict(&c, &st, src, dst, proto, port, v6) else { continue };
            let want = evaluate(&c, src, dst, proto, port, v6);
            prop_assert_eq!(kernel, want.verdict, "{:?} -> {:?} {} {} v6={}\neval: {:?}\npolicies: {:#?}", src, dst, proto, port, v6, want, c.policies);
        }
    }

    #[test]
    fn compilation_is_deterministic(c in cluster_strategy()) {
        prop_assert_eq!(Compiler::default().compile(&c), Compiler::default().compile(&c));
    }
}

/// An enforcing any-peer rule must still be seen through a specific peer's audit-only
/// all-protocols entry (the kernel stops at the peer's entry).
#[test]
fn wildcard_enforce_is_folded_into_peer_entries() {
    let yaml = r#"
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: x, labels: {app: web}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.0.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: x, labels: {app: api}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.0.0.2}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: audit-all-from-api, namespace: x, annotations: {septa.dev/mode: audit}}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {app: api}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: enforce-80-from-anyone, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{ports: [{port: 80}]}]
"#;
    let (c, d) = policies::load::load_str("inline", yaml);
    assert!(d.is_empty(), "{d}");
    let st = Compiler::default().compile(&c);
    let (client, server) = (&c.pods[0], &c.pods[1]);
    assert_eq!(client.name, "client");
    for port in [80u16, 81] {
        let want = evaluate(
            &c,
            Endpoint::Pod(client),
            Endpoint::Pod(server),
            Protocol::Tcp,
            port,
            false,
        )
        .verdict;
        let got = kernel_verdict(
            &c,
            &st,
            Endpoint::Pod(client),
            Endpoint::Pod(server),
            Protocol::Tcp,
            port,
            false,
        );
        assert_eq!(got, Some(want), "port {port}");
    }
    assert_eq!(
        evaluate(
            &c,
            Endpoint::Pod(client),
            Endpoint::Pod(server),
            Protocol::Tcp,
            80,
            false
        )
        .verdict,
        dataplane_common::verdict::FORWARDED
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// connlist says a port is open between two workloads (or a workload and an external range)
    /// exactly when the evaluator allows a connection on it.
    #[test]
    fn connlist_agrees_with_the_evaluator(
        c in cluster_strategy(),
        probes in prop::collection::vec((prop::sample::select(vec![Protocol::Tcp, Protocol::Udp, Protocol::Sctp]), prop::sample::select(vec![53u16, 80, 81, 85, 443, 8080, 8191])), 6),
    ) {
        use policies::connlist::{connlist, Node};
        let list = connlist(&c, &Default::default());
        let find = |s: &Node, d: &Node| list.iter().find(|x| &x.src == s && &x.dst == d).map(|x| x.conns.clone()).unwrap_or_default();
        let ext: Vec<std::net::IpAddr> = EXTERNAL.iter().filter_map(|s| s.parse().ok()).collect();
        for (i, a) in c.pods.iter().enumerate() {
            for (j, b) in c.pods.iter().enumerate() {
                if i == j { continue; }
                let set = find(&Node::Workload(a.workload.clone()), &Node::Workload(b.workload.clone()));
                for &(proto, port) in &probes {
                    let want = evaluate(&c, Endpoint::Pod(a), Endpoint::Pod(b), proto, port, false).allowed();
                    prop_assert_eq!(set.allows(proto, port), want, "{} -> {} {} {}", a.key(), b.key(), proto, port);
                }
            }
            for e in &ext {
                let range = list.iter().filter_map(|x| match (&x.src, &x.dst) {
                    (Node::Workload(w), Node::External(lo, hi)) if w == &a.workload && lo <= e && e <= hi => Some(x.conns.clone()),
                    _ => None,
                }).next().unwrap_or_default();
                for &(proto, port) in &probes {
                    let want = evaluate(&c, Endpoint::Pod(a), Endpoint::External(*e), proto, port, e.is_ipv6()).allowed();
                    prop_assert_eq!(range.allows(proto, port), want, "{} -> {} {} {}", a.key(), e, proto, port);
                }
            }
        }
    }
}

/// A Service of namespace `ns`: ClusterIPs of one or both families (or none: headless), maybe
/// an external IP, one or two ports with numbered or named targets and node ports, and
/// backends from its selector or from EndpointSlices (pods' addresses, addresses of no pod,
/// ready or not).
fn service_strategy() -> impl Strategy<Value = Service> {
    let port = (
        prop::sample::select(vec![Some("http"), None, Some("b")]),
        prop::sample::select(vec![Protocol::Tcp, Protocol::Udp]),
        prop::sample::select(vec![80u16, 53, 443]),
        prop_oneof![
            prop::sample::select(vec![80u16, 81, 53, 8080]).prop_map(TargetPort::Number),
            prop::sample::select(vec!["http", "dns", "alt", "nope"])
                .prop_map(|n| TargetPort::Named(n.into())),
        ],
        prop::option::of(prop::sample::select(vec![30001u16, 30002, 30003])),
    )
        .prop_map(|(name, protocol, port, target, node_port)| ServicePort {
            name: name.map(Into::into),
            protocol,
            port,
            target,
            node_port,
        });
    let backend = (
        prop::sample::select(vec![
            "10.0.0.2",
            "10.0.1.3",
            "10.0.2.4",
            "10.0.0.5",
            "fd00::2",
            "fd00::4",
            "10.0.1.99",
            "192.0.2.7",
            "203.0.113.5",
        ]),
        prop::sample::subsequence(
            vec![
                (Some("http"), Protocol::Tcp, 80u16),
                (Some("http"), Protocol::Tcp, 8080),
                (None, Protocol::Tcp, 81),
                (None, Protocol::Udp, 53),
                (Some("b"), Protocol::Udp, 53),
                (Some("b"), Protocol::Tcp, 80),
            ],
            0..=3,
        ),
        prop::bool::weighted(0.8),
    )
        .prop_map(|(ip, ports, ready)| Backend {
            ip: ip.parse().unwrap(),
            ports: ports
                .into_iter()
                .map(|(n, p, port)| (n.map(Into::into), p, port))
                .collect(),
            ready,
        });
    (
        prop::sample::select(vec!["x", "y", "z"]),
        labels_strategy(),
        prop::sample::select(vec![0usize, 1, 1, 2, 3]),
        prop::bool::weighted(0.3),
        prop::collection::vec(port, 1..=2),
        prop::option::of(prop::collection::vec(backend, 0..=4)),
    )
        .prop_map(
            |(ns, selector, families, external, ports, backends)| Service {
                namespace: ns.into(),
                name: "svc".into(),
                selector,
                cluster_ips: match families {
                    0 => vec![],
                    1 => vec!["10.96.0.1".parse().unwrap()],
                    2 => vec!["fd00:96::1".parse().unwrap()],
                    _ => vec!["10.96.0.1".parse().unwrap(), "fd00:96::1".parse().unwrap()],
                },
                ports,
                external_ips: if external {
                    vec!["192.0.2.50".parse().unwrap()]
                } else {
                    vec![]
                },
                backends,
            },
        )
}

/// A cluster with Services, each with addresses of its own (`svc{i}`, `…::{i}`).
fn services_cluster_strategy() -> impl Strategy<Value = Cluster> {
    (
        cluster_strategy(),
        prop::collection::vec(service_strategy(), 1..=3),
    )
        .prop_map(|(mut c, services)| {
            for (i, mut s) in services.into_iter().enumerate() {
                let n = i as u8 + 1;
                s.name = format!("svc{i}");
                for a in s.cluster_ips.iter_mut().chain(s.external_ips.iter_mut()) {
                    *a = match *a {
                        IpAddr::V4(v4) => {
                            let o = v4.octets();
                            IpAddr::from([o[0], o[1], o[2], o[3] + n])
                        }
                        IpAddr::V6(v6) => {
                            let mut o = v6.octets();
                            o[15] += n;
                            IpAddr::from(o)
                        }
                    };
                }
                c.services.push(s);
            }
            c
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(1000), ..ProptestConfig::default() })]

    /// From every endpoint to every Service address and port (and to the node on every node
    /// port, with and without `--policy-host`), the kernel's lookup on the compiled maps decides as the
    /// evaluator's Service rule, names the same rule, and connlist agrees; a port the Service
    /// does not have is closed at its address for an isolated client.
    #[test]
    fn service_entries_agree_with_the_evaluator(c in services_cluster_strategy()) {
        use dataplane_common::{direction::EGRESS, identity, policy, verdict};
        use policies::{compile::ipcache_lookup, connlist::{connlist, Node}, eval::{evaluate_node_port, evaluate_service}};
        let st = Compiler::default().compile(&c);
        let list = connlist(&c, &Default::default());
        for client in c.endpoints() {
            let ep = st.endpoints[&client.key()].to_info();
            for svc in &c.services {
                let line = list.iter().find(|l| l.src == Node::Workload(client.workload.clone()) && l.dst == Node::Service { namespace: svc.namespace.clone(), name: svc.name.clone() }).map(|l| l.conns.clone()).unwrap_or_default();
                for sp in &svc.ports {
                    let want = evaluate_service(&c, client, svc, sp.protocol, sp.port).unwrap();
                    for addr in svc.addresses() {
                        prop_assert_eq!(st.services.get(&addr), Some(&(svc.namespace.clone(), svc.name.clone())));
                        let peer = ipcache_lookup(&st.ipcache, addr);
                        let d = policy::evaluate(&st.policy, &ep, EGRESS, peer, sp.protocol.number(), sp.port, false);
                        prop_assert_eq!(d.verdict, want.verdict, "{} -> {} {} {}\n{:#?}\nservice {:#?}\npolicies {:#?}", client.key(), addr, sp.protocol, sp.port, want, svc, c.policies);
                        if let Some(r) = &want.rule {
                            prop_assert_eq!(st.rules.get(&d.rule_id), Some(r));
                        }
                        // A port the Service does not have: nothing at this address answers.
                        let other = policy::evaluate(&st.policy, &ep, EGRESS, peer, sp.protocol.number(), 9999, false);
                        let closed = if want.enforced { verdict::DROPPED } else if want.audited { verdict::AUDIT } else { verdict::FORWARDED };
                        prop_assert_eq!(other.verdict, closed);
                    }
                    if svc.addresses().next().is_some() {
                        prop_assert_eq!(line.allows(sp.protocol, sp.port), want.allowed(), "connlist {} -> {}/{} {} {}", client.key(), svc.namespace, svc.name, sp.protocol, sp.port);
                    }
                    if let Some(np) = sp.node_port {
                        let want = evaluate_node_port(&c, client, sp.protocol, np).unwrap();
                        // With and without --policy-host (the node-port marker ends the exemption).
                        for host_exempt in [false, true] {
                            let d = policy::evaluate(&st.policy, &ep, EGRESS, identity::HOST, sp.protocol.number(), np, host_exempt);
                            prop_assert_eq!(d.verdict, want.verdict, "{} -> host:{} {} exempt={}\n{:#?}", client.key(), np, sp.protocol, host_exempt, want);
                            if let Some(r) = &want.rule {
                                prop_assert_eq!(st.rules.get(&d.rule_id), Some(r));
                            }
                        }
                    }
                }
            }
        }
        // Services leave the rest alone: pod-to-pod and external connections still agree.
        for (i, s) in c.pods.iter().enumerate() {
            for d in c.pods.iter().skip(i) {
                for (proto, port) in [(Protocol::Tcp, 80u16), (Protocol::Udp, 53), (Protocol::Tcp, 8080)] {
                    let Some(kernel) = kernel_verdict(&c, &st, Endpoint::Pod(s), Endpoint::Pod(d), proto, port, false) else { continue };
                    prop_assert_eq!(kernel, evaluate(&c, Endpoint::Pod(s), Endpoint::Pod(d), proto, port, false).verdict);
                }
            }
        }
    }
}
