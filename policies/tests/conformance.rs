//! The upstream network-policy conformance cases (tests/conformance/netpol/*.yaml), each step
//! judged against the reference evaluator and against the compiled map state, for every
//! ordered pair of the nine pods. See tests/conformance/netpol/README.md for the format.

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use policies::{
    compile::{kernel_verdict, Compiler},
    eval::{evaluate, Endpoint},
    model::*,
};
use serde::Deserialize;

#[derive(Deserialize)]
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
    #[serde(default)]
    delete_all: bool,
    #[serde(default)]
    pod_labels: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    check: Check,
    #[serde(default = "yes")]
    default: bool,
    #[serde(default)]
    expect: Vec<Expect>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct Check {
    protocol: String,
    port: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    from: String,
    to: String,
    allow: bool,
}

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

fn world() -> Cluster {
    let mut c = Cluster::default();
    for (ni, ns) in NAMESPACES.iter().enumerate() {
        c.namespaces.insert(
            ns.to_string(),
            Namespace {
                name: ns.to_string(),
                labels: Labels::from([(NAMESPACE_NAME_LABEL.to_string(), ns.to_string())]),
            },
        );
        for (pi, pod) in PODS.iter().enumerate() {
            let mut named_ports = BTreeMap::new();
            for port in [80u16, 81] {
                for proto in Protocol::ALL {
                    named_ports.insert(
                        format!("serve-{port}-{}", proto.to_string().to_lowercase()),
                        (proto, port),
                    );
                }
            }
            let ip: IpAddr = format!("10.0.{}.{}", ni + 1, pi + 1).parse().unwrap();
            c.pods.push(Pod {
                namespace: ns.to_string(),
                name: pod.to_string(),
                workload: WorkloadRef {
                    namespace: ns.to_string(),
                    name: pod.to_string(),
                    kind: "Pod".into(),
                },
                labels: Labels::from([("pod".to_string(), pod.to_string())]),
                named_ports,
                ips: vec![ip],
                host_network: false,
            });
        }
    }
    c
}

fn matches(sel: &str, pod: &Pod) -> bool {
    sel == "*" || sel == pod.namespace || sel == pod.key()
}

fn apply_step(c: &mut Cluster, step: &Step, case: &str) {
    if step.delete_all {
        c.policies.clear();
    }
    for d in &step.delete {
        let before = c.policies.len();
        c.policies
            .retain(|p| format!("{}/{}", p.namespace, p.name) != *d);
        assert!(
            c.policies.len() < before,
            "{case}: delete {d}: no such policy"
        );
    }
    for raw in &step.apply {
        let mut v = raw.clone();
        v["apiVersion"] = "networking.k8s.io/v1".into();
        v["kind"] = "NetworkPolicy".into();
        let np: NetworkPolicy =
            serde_json::from_value(v).unwrap_or_else(|e| panic!("{case}: bad policy: {e}"));
        let ns = np.metadata.namespace.clone().expect("namespace");
        let p = Policy::from_k8s(&np, &ns)
            .unwrap_or_else(|e| panic!("{case}: {}: {}", e.field, e.message));
        c.policies
            .retain(|q| !(q.namespace == p.namespace && q.name == p.name));
        c.policies.push(p);
    }
    for (pod, labels) in &step.pod_labels {
        let p = c
            .pods
            .iter_mut()
            .find(|p| p.key() == *pod)
            .unwrap_or_else(|| panic!("{case}: no pod {pod}"));
        p.labels.extend(labels.clone());
    }
    for (ns, labels) in &step.namespace_labels {
        c.namespaces
            .get_mut(ns)
            .unwrap_or_else(|| panic!("{case}: no namespace {ns}"))
            .labels
            .extend(labels.clone());
    }
}

/// Run one case; returns the failures (empty when it passes).
fn run(case: &Case) -> Vec<String> {
    let mut c = world();
    let mut compiler = Compiler::default();
    let mut failures = Vec::new();
    for (si, step) in case.steps.iter().enumerate() {
        apply_step(&mut c, step, &case.name);
        let proto = Protocol::parse(&step.check.protocol)
            .unwrap_or_else(|| panic!("{}: protocol {}", case.name, step.check.protocol));
        let port = step.check.port;
        let state = compiler.compile(&c);
        let mut table = String::new();
        let mut wrong = 0;
        for from in &c.pods {
            for to in &c.pods {
                if from.key() == to.key() {
                    continue; // Upstream ignores loopback.
                }
                let mut want = step.default;
                for e in &step.expect {
                    if matches(&e.from, from) && matches(&e.to, to) {
                        want = e.allow;
                    }
                }
                let eval = evaluate(
                    &c,
                    Endpoint::Pod(from),
                    Endpoint::Pod(to),
                    proto,
                    port,
                    false,
                )
                .allowed();
                let kernel = kernel_verdict(
                    &c,
                    &state,
                    Endpoint::Pod(from),
                    Endpoint::Pod(to),
                    proto,
                    port,
                    false,
                )
                .expect("addresses")
                    != dataplane_common::verdict::DROPPED;
                if eval != want || kernel != want {
                    wrong += 1;
                    table.push_str(&format!(
                        "    {} -> {}: want {want}, evaluator {eval}, compiled {kernel}\n",
                        from.key(),
                        to.key()
                    ));
                }
            }
        }
        if wrong > 0 {
            failures.push(format!(
                "{} (step {}, {proto} {port}): {wrong} cells wrong\n{table}",
                case.name,
                si + 1
            ));
        }
    }
    failures
}

#[test]
fn upstream_netpol_cases() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/conformance/netpol");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut cases = 0;
    let mut failures = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let case = Case::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            assert!(!case.steps.is_empty(), "{}: no steps", case.name);
            cases += 1;
            failures.extend(run(&case));
        }
    }
    assert!(
        cases >= 45,
        "found only {cases} cases under {}",
        dir.display()
    );
    assert!(
        failures.is_empty(),
        "{} failures in {cases} cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{cases} conformance cases passed against the evaluator and the compiled state");
}
