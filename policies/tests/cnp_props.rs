//! Invariants of the tiered evaluation on random mixes of ClusterNetworkPolicies and
//! NetworkPolicies: what the Admin tier says is final, the Baseline tier never overrides a
//! NetworkPolicy, Pass is exact, and connlist agrees with the evaluator port by port.

use std::collections::BTreeSet;

use api::cluster_network_policy::{Action, Tier};
use policies::{
    cnp::{ClusterPeer, ClusterPolicy, ClusterRule, PodSet, ProtocolPort},
    connlist::allowance,
    eval::{evaluate, Endpoint},
    model::*,
    selector::{Requirement, Selector},
};
use proptest::prelude::*;

const PORTS: [u16; 7] = [1, 53, 80, 81, 90, 5432, 65535];

fn sel() -> impl Strategy<Value = Selector> {
    let req = prop_oneof![
        (prop::sample::select(vec!["web", "db", "api"]))
            .prop_map(|v| Requirement::In("app".into(), BTreeSet::from([v.to_string()]))),
        Just(Requirement::Exists("app".into())),
        Just(Requirement::DoesNotExist("app".into())),
    ];
    prop::collection::vec(req, 0..=1).prop_map(Selector)
}

fn ns_sel() -> impl Strategy<Value = Selector> {
    let req = prop::sample::select(vec!["x", "y", "z"]).prop_map(|n| {
        Requirement::In(NAMESPACE_NAME_LABEL.into(), BTreeSet::from([n.to_string()]))
    });
    prop::collection::vec(req, 0..=1).prop_map(Selector)
}

fn pod_set() -> impl Strategy<Value = PodSet> {
    (ns_sel(), sel()).prop_map(|(namespaces, pods)| PodSet { namespaces, pods })
}

fn cluster_peer() -> impl Strategy<Value = ClusterPeer> {
    prop_oneof![
        4 => pod_set().prop_map(ClusterPeer::Pods),
        1 => prop::sample::select(vec!["10.0.0.0/8", "10.0.1.0/24", "10.0.2.2/32", "0.0.0.0/0"])
            .prop_map(|n| ClusterPeer::Networks(vec![n.parse().unwrap()])),
    ]
}

fn protocols() -> impl Strategy<Value = Option<Vec<ProtocolPort>>> {
    let one = prop_oneof![
        (
            prop::sample::select(Protocol::ALL.to_vec()),
            prop::sample::select(vec![(80, 80), (53, 53), (80, 90), (1, 1024), (5432, 5433)])
        )
            .prop_map(|(p, (a, b))| ProtocolPort::Range(p, a, b)),
        Just(ProtocolPort::Named("http".into())),
    ];
    prop::option::of(prop::collection::vec(one, 1..=2))
}

fn cluster_rule() -> impl Strategy<Value = ClusterRule> {
    (
        prop::sample::select(vec![Action::Accept, Action::Deny, Action::Pass]),
        prop::collection::vec(cluster_peer(), 1..=2),
        protocols(),
    )
        .prop_map(|(action, peers, protocols)| ClusterRule {
            name: format!("{action:?}"),
            action,
            peers,
            protocols,
            fail_closed: false,
        })
}

fn cluster_policy() -> impl Strategy<Value = ClusterPolicy> {
    (
        prop::sample::select(vec![Tier::Admin, Tier::Baseline]),
        0u16..3,
        prop::sample::select(vec!["p-a", "p-b", "p-c", "p-d"]),
        pod_set(),
        prop::collection::vec(cluster_rule(), 0..=3),
        prop::collection::vec(cluster_rule(), 0..=3),
    )
        .prop_map(
            |(tier, priority, name, subject, ingress, egress)| ClusterPolicy {
                name: name.into(),
                tier,
                priority,
                audit: false,
                subject,
                ingress,
                egress,
            },
        )
}

fn np_rule() -> impl Strategy<Value = Rule> {
    let peer = (prop::option::of(ns_sel()), sel()).prop_map(|(ns, pods)| Peer::Pods {
        namespaces: ns.map_or(NamespaceScope::Own, NamespaceScope::Selected),
        pods,
    });
    let port = prop_oneof![
        Just(PortSpec {
            protocol: Protocol::Tcp,
            port: PortSel::Range(80, 81)
        }),
        Just(PortSpec {
            protocol: Protocol::Udp,
            port: PortSel::Range(53, 53)
        }),
        Just(PortSpec {
            protocol: Protocol::Tcp,
            port: PortSel::Named("http".into())
        }),
    ];
    (
        prop::option::of(prop::collection::vec(peer, 1..=2)),
        prop::option::of(prop::collection::vec(port, 1..=2)),
    )
        .prop_map(|(peers, ports)| Rule { peers, ports })
}

fn network_policy() -> impl Strategy<Value = Policy> {
    (
        prop::sample::select(vec!["x", "y", "z"]),
        prop::sample::select(vec!["n1", "n2"]),
        sel(),
        prop::option::of(prop::collection::vec(np_rule(), 0..=2)),
        prop::option::of(prop::collection::vec(np_rule(), 0..=2)),
    )
        .prop_map(|(ns, name, pod_selector, ingress, egress)| Policy {
            namespace: ns.into(),
            name: name.into(),
            audit: false,
            pod_selector,
            ingress,
            egress,
        })
}

fn cluster() -> impl Strategy<Value = Cluster> {
    (
        prop::collection::vec(prop::sample::select(vec!["web", "db", "api"]), 6),
        prop::collection::vec(network_policy(), 0..=3),
        prop::collection::vec(cluster_policy(), 0..=4),
    )
        .prop_map(|(apps, policies, cluster_policies)| {
            let mut c = Cluster::default();
            for (i, app) in apps.iter().enumerate() {
                let ns = ["x", "y", "z"][i % 3];
                let name = format!("p{i}");
                c.pods.push(Pod {
                    namespace: ns.into(),
                    name: name.clone(),
                    workload: WorkloadRef {
                        namespace: ns.into(),
                        name,
                        kind: "Pod".into(),
                    },
                    labels: Labels::from([("app".to_string(), app.to_string())]),
                    named_ports: [("http".to_string(), (Protocol::Tcp, 8080 + i as u16))].into(),
                    ips: vec![format!("10.0.{}.{}", i % 3, i + 1).parse().unwrap()],
                    host_network: false,
                });
            }
            let mut seen = BTreeSet::new();
            c.policies = policies
                .into_iter()
                .filter(|p| seen.insert((p.namespace.clone(), p.name.clone())))
                .collect();
            let mut names = BTreeSet::new();
            c.cluster_policies = cluster_policies
                .into_iter()
                .filter(|p| names.insert(p.name.clone()))
                .collect();
            c
        })
}

/// Every (source, destination, protocol, port) of the cluster's pods, with the verdict.
fn verdicts(c: &Cluster) -> Vec<bool> {
    let mut out = Vec::new();
    for a in &c.pods {
        for b in &c.pods {
            for proto in Protocol::ALL {
                for port in PORTS.iter().copied().chain([8080, 8083]) {
                    out.push(
                        evaluate(c, Endpoint::Pod(a), Endpoint::Pod(b), proto, port, false)
                            .allowed(),
                    );
                }
            }
        }
    }
    out
}

fn everything(name: &str, action: Action) -> ClusterPolicy {
    let all = || ClusterRule {
        name: "all".into(),
        action,
        peers: vec![ClusterPeer::Pods(PodSet {
            namespaces: Selector::everything(),
            pods: Selector::everything(),
        })],
        protocols: None,
        fail_closed: false,
    };
    ClusterPolicy {
        name: name.into(),
        tier: Tier::Admin,
        priority: 0,
        audit: false,
        subject: PodSet {
            namespaces: Selector::everything(),
            pods: Selector::everything(),
        },
        ingress: vec![all()],
        egress: vec![all()],
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// An Admin Deny of everything at the first place denies every connection whatever the
    /// NetworkPolicies and other ClusterNetworkPolicies allow; an Accept allows every one.
    #[test]
    fn the_first_admin_decision_is_final(c in cluster()) {
        let mut deny = c.clone();
        deny.cluster_policies.push(everything("0-guard", Action::Deny));
        prop_assert!(verdicts(&deny).iter().all(|v| !v));
        let mut accept = c.clone();
        accept.cluster_policies.push(everything("0-guard", Action::Accept));
        prop_assert!(verdicts(&accept).iter().all(|v| *v));
    }

    /// A Pass of everything at the first place is the same as no Admin tier at all.
    #[test]
    fn pass_skips_exactly_the_rest_of_the_tier(c in cluster()) {
        let mut pass = c.clone();
        pass.cluster_policies.push(everything("0-pass", Action::Pass));
        let mut no_admin = c.clone();
        no_admin.cluster_policies.retain(|p| p.tier != Tier::Admin);
        prop_assert_eq!(verdicts(&pass), verdicts(&no_admin));
    }

    /// ClusterNetworkPolicies that select no pod change nothing; with none, a direction a
    /// NetworkPolicy isolates is decided by the NetworkPolicies alone, whatever the Baseline
    /// tier says.
    #[test]
    fn baseline_never_overrides_a_network_policy(c in cluster()) {
        let mut inert = c.clone();
        for p in &mut inert.cluster_policies {
            p.subject.namespaces = Selector(vec![Requirement::Exists("no-such-label".into())]);
        }
        let mut none = c.clone();
        none.cluster_policies.clear();
        prop_assert_eq!(verdicts(&inert), verdicts(&none));

        let mut baseline_only = c.clone();
        baseline_only.cluster_policies.retain(|p| p.tier == Tier::Baseline);
        for a in &c.pods {
            for b in &c.pods {
                for port in PORTS {
                    let with = evaluate(&baseline_only, Endpoint::Pod(a), Endpoint::Pod(b), Protocol::Tcp, port, false);
                    let without = evaluate(&none, Endpoint::Pod(a), Endpoint::Pod(b), Protocol::Tcp, port, false);
                    for (w, wo) in [(&with.egress, &without.egress), (&with.ingress, &without.ingress)] {
                        let (w, wo) = (w.as_ref().unwrap(), wo.as_ref().unwrap());
                        if wo.enforced {
                            prop_assert_eq!(w.enforce_ok(), wo.enforce_ok());
                        }
                    }
                }
            }
        }
    }

    /// connlist's connection sets hold exactly the ports the evaluator allows.
    #[test]
    fn connlist_agrees_with_the_evaluator(c in cluster()) {
        for a in &c.pods {
            for b in &c.pods {
                let set = allowance(&c, a, &Endpoint::Pod(b), Direction::Egress)
                    .intersect(&allowance(&c, b, &Endpoint::Pod(a), Direction::Ingress));
                for proto in Protocol::ALL {
                    for port in PORTS.iter().copied().chain([8080, 8081, 8085]) {
                        let e = evaluate(&c, Endpoint::Pod(a), Endpoint::Pod(b), proto, port, false);
                        prop_assert_eq!(
                            set.allows(proto, port),
                            e.allowed(),
                            "{} -> {} {} {}: connlist {}", a.key(), b.key(), proto, port, set
                        );
                    }
                }
            }
        }
    }
}
