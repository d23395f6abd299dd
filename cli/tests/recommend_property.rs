//! The replay property of `septa recommend`: on flows generated from a known ground-truth
//! policy set, the proposal denies no flow of the replay window, and between the workloads
//! observed it never allows what the ground truth denies.

use std::collections::BTreeMap;

use api::flow::{Counts, FlowPeer, FlowRecord};
use cli::recommend::{
    observe::{Observer, Window},
    propose::{self, Options},
    replay,
};
use policies::{
    connlist::allowance,
    eval::{evaluate, Endpoint},
    load::load_str,
    model::{Direction, Protocol},
    Cluster,
};
use proptest::prelude::*;

const PORTS: [(Protocol, u16); 5] = [
    (Protocol::Tcp, 80),
    (Protocol::Tcp, 443),
    (Protocol::Tcp, 5432),
    (Protocol::Udp, 53),
    (Protocol::Tcp, 9000),
];

/// Workload `i` is Deployment `w{i}` in namespace `ns{ns[i]}`, labels app=w{i}.
fn manifests(ns: &[u8], truth: &[(usize, usize, usize)]) -> String {
    let mut y = String::new();
    for n in 0..3 {
        y += &format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{n}}}\n");
    }
    for (i, n) in ns.iter().enumerate() {
        y += &format!(
            "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: w{i}, namespace: ns{n}}}\nspec:\n  selector: {{matchLabels: {{app: w{i}}}}}\n  template:\n    metadata: {{labels: {{app: w{i}, pod-template-hash: h{i}}}}}\n    spec: {{containers: [{{name: c, image: i}}]}}\n"
        );
    }
    // Ground truth: per workload, ingress from exactly its true clients, egress to exactly
    // its true servers.
    let peer = |from: usize| {
        format!(
            "{{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: ns{}}}}}, podSelector: {{matchLabels: {{app: w{from}}}}}}}",
            ns[from]
        )
    };
    for (i, n) in ns.iter().enumerate() {
        let ing: Vec<String> = truth
            .iter()
            .filter(|(_, d, _)| *d == i)
            .map(|(s, _, p)| {
                format!(
                    "{{from: [{}], ports: [{{protocol: {}, port: {}}}]}}",
                    peer(*s),
                    PORTS[*p].0,
                    PORTS[*p].1
                )
            })
            .collect();
        let eg: Vec<String> = truth
            .iter()
            .filter(|(s, _, _)| *s == i)
            .map(|(_, d, p)| {
                format!(
                    "{{to: [{}], ports: [{{protocol: {}, port: {}}}]}}",
                    peer(*d),
                    PORTS[*p].0,
                    PORTS[*p].1
                )
            })
            .collect();
        y += &format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: truth-w{i}, namespace: ns{n}}}\nspec:\n  podSelector: {{matchLabels: {{app: w{i}}}}}\n  policyTypes: [Ingress, Egress]\n  ingress: [{}]\n  egress: [{}]\n",
            ing.join(", "),
            eg.join(", ")
        );
    }
    y
}

fn side(ns: &[u8], i: usize, port: u16) -> FlowPeer {
    FlowPeer {
        ip: format!("10.0.{}.{}", ns[i], 10 + i),
        port,
        identity: 300,
        namespace: Some(format!("ns{}", ns[i])),
        pod: Some(format!("w{i}-h{i}-a")),
        workload: Some(format!("Deployment/w{i}")),
        labels: BTreeMap::from([("app".into(), format!("w{i}"))]),
        entity: None,
        service: None,
    }
}

fn record(ns: &[u8], t: u64, s: usize, d: usize, p: usize, direction: &str) -> FlowRecord {
    let time = humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_790_000_000 + t),
    )
    .to_string();
    FlowRecord {
        version: 1,
        time: time.clone(),
        start: time,
        kind: "new".into(),
        verdict: "forwarded".into(),
        drop_reason: None,
        direction: direction.into(),
        ip_version: 4,
        protocol: PORTS[p].0.to_string(),
        source: side(ns, s, 40000),
        destination: side(ns, d, PORTS[p].1),
        decided_by: "rule".into(),
        feed: None,
        policy: None,
        rule_id: 1,
        packets: Counts {
            forward: 1,
            reverse: 0,
        },
        bytes: Counts {
            forward: 60,
            reverse: 0,
        },
        tcp_flags: vec![],
        dns_names: vec![],
        node: "n".into(),
        connections: None,
    }
}

fn observe(c: &Cluster, records: &[FlowRecord]) -> cli::recommend::observe::Observations {
    let mut o = Observer::new(c, Window::default());
    for (i, r) in records.iter().enumerate() {
        o.record(&format!("gen:{i}"), r);
    }
    o.obs
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn proposals_deny_no_replayed_flow_and_never_exceed_the_truth(
        ns in prop::collection::vec(0u8..3, 2..6),
        truth_bits in prop::collection::vec(any::<bool>(), 6 * 6 * 5),
        observed_bits in prop::collection::vec(any::<bool>(), 6 * 6 * 5),
        repeats in 1u64..4,
    ) {
        let n = ns.len();
        let idx = |s: usize, d: usize, p: usize| (s * 6 + d) * 5 + p;
        let truth: Vec<(usize, usize, usize)> = (0..n)
            .flat_map(|s| (0..n).flat_map(move |d| (0..5).map(move |p| (s, d, p))))
            .filter(|&(s, d, p)| s != d && truth_bits[idx(s, d, p)])
            .collect();
        let observed: Vec<(usize, usize, usize)> = truth
            .iter()
            .copied()
            .filter(|&(s, d, p)| observed_bits[idx(s, d, p)])
            .collect();
        let (gt, problems) = load_str("truth.yaml", &manifests(&ns, &truth));
        prop_assert!(problems.is_empty(), "{:?}", problems);
        // The flows the ground truth let through, recorded at both ends.
        let mut learn = Vec::new();
        let mut later = Vec::new();
        for (k, &(s, d, p)) in observed.iter().enumerate() {
            // Generated traffic must be traffic the truth allows.
            let (ps, pd) = (
                gt.pods.iter().find(|x| x.workload.name == format!("w{s}")).unwrap(),
                gt.pods.iter().find(|x| x.workload.name == format!("w{d}")).unwrap(),
            );
            prop_assert!(evaluate(&gt, Endpoint::Pod(ps), Endpoint::Pod(pd), PORTS[p].0, PORTS[p].1, false).allowed());
            for r in 0..repeats {
                let t = k as u64 * 10 + r;
                learn.push(record(&ns, t, s, d, p, "egress"));
                learn.push(record(&ns, t, s, d, p, "ingress"));
                later.push(record(&ns, 100_000 + t, s, d, p, "egress"));
            }
        }
        // Learning needs the cluster without its policies: the proposal must come from flows.
        let mut bare = gt.clone();
        bare.policies.clear();
        let learned = observe(&bare, &learn);
        let replayed = observe(&bare, &later);
        let observer = Observer::new(&bare, Window::default());
        let opts = Options { dns: None, ..Options::default() };
        let (proposals, _) = propose::propose(&learned, &observer.workloads, &bare.pods, &opts);
        let r = replay::replay(&bare, &proposals, &learned, &replayed).unwrap();
        prop_assert_eq!(r.denied_connections, 0, "denied: {:?}", r.denied);
        prop_assert_eq!(r.connections, observed.len() as u64 * repeats);

        // Never more permissive than the truth between observed workloads.
        let prop_cluster = replay::proposal_cluster(&bare, &proposals).unwrap();
        let seen: std::collections::BTreeSet<usize> = observed.iter().flat_map(|&(s, d, _)| [s, d]).collect();
        for &s in &seen {
            for &d in &seen {
                if s == d { continue; }
                let pod = |c: &Cluster, i: usize| c.pods.iter().find(|x| x.workload.name == format!("w{i}")).unwrap().clone();
                let (a, b) = (pod(&prop_cluster, s), pod(&prop_cluster, d));
                let (ta, tb) = (pod(&gt, s), pod(&gt, d));
                for (proto, port) in PORTS {
                    let allowed = evaluate(&prop_cluster, Endpoint::Pod(&a), Endpoint::Pod(&b), proto, port, false).allowed();
                    let truth_allows = evaluate(&gt, Endpoint::Pod(&ta), Endpoint::Pod(&tb), proto, port, false).allowed();
                    prop_assert!(!allowed || truth_allows, "w{} -> w{} {}/{} allowed by the proposal, denied by the truth", s, d, proto, port);
                    // And each side on its own: s's egress towards d, d's ingress from s.
                    for (dir, subj, peer, tsubj, tpeer) in [
                        (Direction::Egress, &a, &b, &ta, &tb),
                        (Direction::Ingress, &b, &a, &tb, &ta),
                    ] {
                        let p_side = allowance(&prop_cluster, subj, &Endpoint::Pod(peer), dir).allows(proto, port);
                        let t_side = allowance(&gt, tsubj, &Endpoint::Pod(tpeer), dir).allows(proto, port);
                        prop_assert!(!p_side || t_side, "w{} -> w{} {}/{}: the proposal's {:?} side allows what the truth's does not", s, d, proto, port, dir);
                    }
                }
            }
        }
    }
}

/// A connection is learned only when both ends let it through: the source's `forwarded`
/// record alone (the destination may have dropped it) is left out and counted.
#[test]
fn connections_the_destination_blocked_are_not_learned() {
    let ns = [0u8, 1];
    let (c, d) = load_str("m.yaml", &manifests(&ns, &[]));
    assert!(d.is_empty(), "{d}");
    let mut o = Observer::new(&c, Window::default());
    // w0 → w1 on 80: forwarded by w0's egress, dropped by w1's ingress.
    o.record("a:1", &record(&ns, 0, 0, 1, 0, "egress"));
    let mut dropped = record(&ns, 0, 0, 1, 0, "ingress");
    dropped.verdict = "dropped".into();
    o.record("a:2", &dropped);
    // w0 → w1 on 443: only the source's record, no reply.
    o.record("a:3", &record(&ns, 1, 0, 1, 1, "egress"));
    // w0 → w1 on 5432: only the source's record, but answered (reverse bytes).
    let mut answered = record(&ns, 2, 0, 1, 2, "egress");
    answered.kind = "end".into();
    answered.bytes.reverse = 100;
    o.record("a:4", &answered);
    // w1 → w0 on 9000: both ends' records.
    o.record("a:5", &record(&ns, 3, 1, 0, 4, "egress"));
    o.record("a:6", &record(&ns, 3, 1, 0, 4, "ingress"));
    let obs = o.finish();
    let ports: Vec<u16> = obs.tuples.keys().map(|t| t.port).collect();
    assert_eq!(ports, [5432, 9000], "{:?}", obs.skips);
    assert_eq!(obs.skips.count("denied_at_destination"), 1);
    assert_eq!(obs.skips.count("unconfirmed"), 1);
}
