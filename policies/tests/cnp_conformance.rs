//! The upstream ClusterNetworkPolicy conformance cases (tests/conformance/cnp/*.yaml), every
//! object loaded through the strict loader and every probe judged by the reference evaluator.
//! See tests/conformance/cnp/README.md for the format.

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use policies::{
    eval::{evaluate, Endpoint},
    load::load_str,
    model::*,
};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    steps: Vec<Step>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    #[serde(default)]
    apply: Vec<serde_json::Value>,
    #[serde(default)]
    delete: Vec<String>,
    probes: Vec<Probe>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Probe {
    from: String,
    to: String,
    protocol: String,
    port: u16,
    allow: bool,
}

const HOUSES: [(&str, &str); 4] = [
    ("gryffindor", "harry-potter"),
    ("slytherin", "draco-malfoy"),
    ("hufflepuff", "cedric-diggory"),
    ("ravenclaw", "luna-lovegood"),
];

fn namespace(house: &str) -> String {
    format!("network-policy-conformance-{house}")
}

/// The upstream world: four namespaces, two pods each.
fn world() -> Cluster {
    let mut c = Cluster::default();
    for (hi, (house, stem)) in HOUSES.iter().enumerate() {
        let ns = namespace(house);
        c.namespaces.insert(
            ns.clone(),
            Namespace {
                name: ns.clone(),
                labels: Labels::from([
                    (NAMESPACE_NAME_LABEL.to_string(), ns.clone()),
                    ("conformance-house".to_string(), house.to_string()),
                ]),
            },
        );
        for i in 0..2 {
            let name = format!("{stem}-{i}");
            c.pods.push(Pod {
                namespace: ns.clone(),
                name: name.clone(),
                workload: WorkloadRef {
                    namespace: ns.clone(),
                    name: stem.to_string(),
                    kind: "StatefulSet".into(),
                },
                labels: Labels::from([("conformance-house".to_string(), house.to_string())]),
                named_ports: BTreeMap::new(),
                ips: vec![format!("10.1.{}.{}", hi + 1, i + 1).parse().unwrap()],
                host_network: false,
            });
        }
    }
    c
}

fn endpoint<'a>(c: &'a Cluster, name: &str, case: &str) -> Endpoint<'a> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Endpoint::External(ip);
    }
    let (house, pod) = name.split_once('/').unwrap_or_else(|| {
        panic!("{case}: probe end {name:?} is neither house/pod nor an address")
    });
    let ns = namespace(house);
    Endpoint::Pod(
        c.pods
            .iter()
            .find(|p| p.namespace == ns && p.name == pod)
            .unwrap_or_else(|| panic!("{case}: no pod {name}")),
    )
}

fn apply_step(c: &mut Cluster, step: &Step, case: &str) {
    for d in &step.delete {
        let (before_np, before_cnp) = (c.policies.len(), c.cluster_policies.len());
        match d.split_once('/') {
            Some(("ClusterNetworkPolicy", name)) => c.cluster_policies.retain(|p| p.name != name),
            Some(("NetworkPolicy", key)) => c
                .policies
                .retain(|p| format!("{}/{}", p.namespace, p.name) != key),
            _ => panic!(
                "{case}: delete {d}: expected ClusterNetworkPolicy/name or NetworkPolicy/ns/name"
            ),
        }
        assert!(
            c.policies.len() + c.cluster_policies.len() < before_np + before_cnp,
            "{case}: delete {d}: no such object"
        );
    }
    if step.apply.is_empty() {
        return;
    }
    let text = step
        .apply
        .iter()
        .map(|o| serde_json::to_string(o).unwrap())
        .collect::<Vec<_>>()
        .join("\n---\n");
    let (loaded, d) = load_str(case, &text);
    assert!(d.is_empty(), "{case}: the loader rejects the step:\n{d}");
    for p in loaded.policies {
        c.policies
            .retain(|q| !(q.namespace == p.namespace && q.name == p.name));
        c.policies.push(p);
    }
    for p in loaded.cluster_policies {
        c.cluster_policies.retain(|q| q.name != p.name);
        c.cluster_policies.push(p);
    }
}

fn run(case: &Case) -> (usize, Vec<String>) {
    let mut c = world();
    let mut failures = Vec::new();
    let mut probes = 0;
    for (si, step) in case.steps.iter().enumerate() {
        apply_step(&mut c, step, &case.name);
        for p in &step.probes {
            probes += 1;
            let proto = Protocol::parse(&p.protocol)
                .unwrap_or_else(|| panic!("{}: protocol {}", case.name, p.protocol));
            let from = endpoint(&c, &p.from, &case.name);
            let to = endpoint(&c, &p.to, &case.name);
            let e = evaluate(&c, from, to, proto, p.port, false);
            if e.allowed() != p.allow {
                let why = |r: &Option<policies::eval::DirectionResult>| {
                    r.as_ref()
                        .map(|r| format!("{:?}", r.decision(false).by))
                        .unwrap_or_else(|| "-".into())
                };
                failures.push(format!(
                    "{} (step {}): {} -> {} {proto} {}: want {}, evaluator {} (egress: {}; ingress: {})",
                    case.name,
                    si + 1,
                    p.from,
                    p.to,
                    p.port,
                    p.allow,
                    e.allowed(),
                    why(&e.egress),
                    why(&e.ingress)
                ));
            }
        }
    }
    (probes, failures)
}

#[test]
fn upstream_cnp_cases() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/conformance/cnp");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let (mut cases, mut probes) = (0, 0);
    let mut failures = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let case = Case::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            assert!(!case.steps.is_empty(), "{}: no steps", case.name);
            cases += 1;
            let (n, fails) = run(&case);
            probes += n;
            failures.extend(fails);
        }
    }
    assert!(
        cases >= 14,
        "found only {cases} cases under {}",
        dir.display()
    );
    assert!(
        failures.is_empty(),
        "{} failures in {cases} cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{cases} ClusterNetworkPolicy conformance cases ({probes} probes) passed against the evaluator");
}
