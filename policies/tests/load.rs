//! Loading manifests: every supported kind, and bad input reported with file, object, field.

use policies::{load::load_str, model::NAMESPACE_NAME_LABEL};

const GOOD: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: a}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}]}]}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: shop}
spec:
  serviceName: db
  selector: {matchLabels: {app: db}}
  template: {metadata: {labels: {app: db}}, spec: {containers: [{name: c, image: i}]}}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: kube-system}
spec:
  selector: {matchLabels: {app: agent}}
  template: {metadata: {labels: {app: agent}}, spec: {hostNetwork: true, containers: [{name: c, image: i}]}}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: report}
spec:
  schedule: "0 * * * *"
  jobTemplate: {spec: {template: {metadata: {labels: {app: report}}, spec: {restartPolicy: Never, containers: [{name: c, image: i}]}}}}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-7d4b9-abcde
  namespace: shop
  labels: {app: web, pod-template-hash: 7d4b9}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-7d4b9, uid: u1, controller: true}]
spec: {containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.1.0.5, podIPs: [{ip: 10.1.0.5}, {ip: "fd00::5"}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: http}, {name: admin, port: 81, targetPort: 9000, protocol: TCP}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ignored}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{ports: [{port: http}]}]
"#;

#[test]
fn every_kind_loads() {
    let (c, d) = load_str("good.yaml", GOOD);
    assert!(d.is_empty(), "{d}");
    let names: Vec<String> = c
        .pods
        .iter()
        .map(|p| format!("{}[{}]", p.key(), p.workload))
        .collect();
    assert_eq!(
        names,
        [
            "default/report[default/report[CronJob]]",
            "kube-system/agent[kube-system/agent[DaemonSet]]",
            "shop/db[shop/db[StatefulSet]]",
            // The real pod stands for its Deployment; the template is not listed twice.
            "shop/web-7d4b9-abcde[shop/web[Deployment]]",
        ]
    );
    let web = &c.pods[3];
    assert_eq!(web.ips.len(), 2);
    assert_eq!(web.named_ports["http"].1, 8080);
    assert!(c.pods[1].host_network);
    assert_eq!(c.namespaces["shop"].labels[NAMESPACE_NAME_LABEL], "shop");
    assert_eq!(c.namespaces["shop"].labels["team"], "a");
    assert!(
        c.namespaces.contains_key("default"),
        "namespaces in use exist implicitly"
    );
    assert_eq!(c.policies.len(), 1);
    let svc = &c.services[0];
    assert!(svc.selects(web));
    assert_eq!(
        svc.cluster_ips,
        vec!["10.96.0.10".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(
        svc.target_on(&svc.ports[0], web),
        Some(8080),
        "named targetPort resolves per pod"
    );
    assert_eq!(svc.target_on(&svc.ports[1], web), Some(9000));
}

#[test]
fn json_and_lists() {
    let json = r#"{"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "deny"}, "spec": {"podSelector": {}}}
    ]}"#;
    let (c, d) = load_str("list.json", json);
    assert!(d.is_empty(), "{d}");
    assert_eq!((c.pods.len(), c.policies.len()), (1, 1));
    assert_eq!(c.pods[0].namespace, "default");
    assert_eq!(
        c.policies[0].ingress,
        Some(vec![]),
        "no policyTypes: ingress isolated, nothing allowed"
    );
    assert_eq!(c.policies[0].egress, None);
}

fn np(name: &str, spec: &str) -> String {
    format!("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n{spec}\n")
}

#[test]
fn bad_policies_name_file_object_and_field() {
    let cases = [
        ("bad-op", "  podSelector: {matchExpressions: [{key: a, operator: Equals, values: [x]}]}", "spec.podSelector.matchExpressions[0].operator", "Equals"),
        ("exists-value", "  podSelector: {matchExpressions: [{key: a, operator: Exists, values: [x]}]}", "spec.podSelector.matchExpressions[0].values", "takes no values"),
        ("bad-cidr", "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]", "spec.ingress[0].from[0].ipBlock.cidr", "invalid CIDR"),
        ("host-bits", "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.1/8}}]}]", "spec.ingress[0].from[0].ipBlock.cidr", "host bits"),
        ("except-outside", "  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]}]", "spec.egress[0].to[0].ipBlock.except[0]", "not strictly inside"),
        ("port-zero", "  podSelector: {}\n  ingress: [{ports: [{port: 0}]}]", "spec.ingress[0].ports[0].port", "outside 1-65535"),
        ("port-big", "  podSelector: {}\n  ingress: [{ports: [{port: 70000}]}]", "spec.ingress[0].ports[0].port", "outside 1-65535"),
        ("endport-alone", "  podSelector: {}\n  ingress: [{ports: [{endPort: 90}]}]", "spec.ingress[0].ports[0].endPort", "needs port"),
        ("endport-below", "  podSelector: {}\n  ingress: [{ports: [{port: 90, endPort: 80}]}]", "spec.ingress[0].ports[0].endPort", "below port"),
        ("bad-proto", "  podSelector: {}\n  ingress: [{ports: [{protocol: ICMP, port: 1}]}]", "spec.ingress[0].ports[0].protocol", "ICMP"),
        ("bad-type", "  podSelector: {}\n  policyTypes: [Ingres]", "spec.policyTypes[0]", "Ingres"),
        ("empty-peer", "  podSelector: {}\n  ingress: [{from: [{}]}]", "spec.ingress[0].from[0]", "needs podSelector"),
        ("wrong-shape", "  podSelector: [a, b]", "spec.podSelector", "invalid type"),
    ];
    let svc = "---\napiVersion: v1\nkind: Service\nmetadata: {name: bad-svc, namespace: ns}\nspec: {ports: [{port: 80, protocol: ICMP}]}\n";
    let mut text = String::from("apiVersion: v1\nkind: Pod\nmetadata: {name: survivor, namespace: ns}\nspec: {containers: [{name: c, image: i}]}\n");
    for (name, spec, _, _) in &cases {
        text.push_str(&np(name, spec));
    }
    text.push_str(&np("fine", "  podSelector: {}"));
    text.push_str(svc);
    let (c, d) = load_str("bad.yaml", &text);
    let bad_svc =
        d.0.iter()
            .find(|x| x.object == "Service ns/bad-svc")
            .expect("service diagnostic");
    assert_eq!(bad_svc.field, "spec.ports[0].protocol");
    for (name, _, field, msg) in &cases {
        let hit =
            d.0.iter()
                .find(|x| x.object == format!("NetworkPolicy ns/{name}"));
        let hit = hit.unwrap_or_else(|| panic!("no diagnostic for {name}:\n{d}"));
        assert!(hit.file.starts_with("bad.yaml#"), "{hit}");
        assert_eq!(hit.field, *field, "{name}: {hit}");
        assert!(hit.message.contains(msg), "{name}: {hit}");
    }
    assert_eq!(d.0.len(), cases.len() + 1, "{d}");
    // What was fine still loaded.
    assert_eq!(c.pods.len(), 1);
    assert_eq!(
        c.policies
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        ["fine"]
    );
}

#[test]
fn not_kubernetes_duplicates_and_broken_yaml() {
    let (c, d) = load_str("x.yaml", "just: a map\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: []}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: []}\n---\nkind: NetworkPolicy\nmetadata: {name: p}\n");
    assert_eq!(c.pods.len(), 1);
    assert_eq!(d.0.len(), 2, "{d}");
    assert!(
        d.0[0].message.contains("duplicate") && d.0[0].message.contains("x.yaml#2"),
        "{d}"
    );
    assert!(
        d.0[1].file == "x.yaml#4" && d.0[1].field == "apiVersion",
        "half an object is a broken manifest: {d}"
    );
    assert!(
        d.warnings().len() == 1 && d.warnings()[0].message.contains("not a Kubernetes object"),
        "another tool's YAML is a warning: {d}"
    );

    let (_, d) = load_str(
        "broken.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: [\n",
    );
    assert_eq!(d.0.len(), 1);
    assert!(d.0[0].message.contains("not valid YAML"), "{d}");

    let (_, d) = load_str(
        "noname.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {}\nspec: {containers: []}\n",
    );
    assert_eq!(d.0[0].field, "metadata.name");
}

#[test]
fn hostile_inputs_do_not_crash() {
    // Deep nesting, huge scalars, binary junk, anchors: errors or ignored, never a panic.
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let _ = load_str("deep.yaml", &deep);
    let _ = load_str(
        "huge.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {}}}\n",
            "a".repeat(1 << 20)
        ),
    );
    let _ = load_str("junk.yaml", "\u{0}\u{1}\u{2}\u{feff}--- !!binary x");
    let bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n";
    let (_, d) = load_str("bomb.yaml", bomb);
    assert!(!d.is_empty());
}

#[test]
fn paths_that_do_not_exist_or_hold_nothing() {
    let (_, d) = policies::load::load_paths(&["/nonexistent/septa"]);
    assert!(
        d.0[0].file.contains("/nonexistent/septa") && d.0[0].message.contains("cannot open"),
        "{d}"
    );
    let dir = std::env::temp_dir().join(format!("septa-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_, d) = policies::load::load_paths(&[&dir]);
    assert!(d.0[0].message.contains("no .yaml"), "{d}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A misspelled field is an error naming its path (the API server rejects it too), never
/// dropped: dropped, each of these turns a rule into allow-all.
#[test]
fn misspelled_fields_are_errors_not_allow_all() {
    let base = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n";
    for (spec, path) in [
        (
            "  podSelector: {}\n  ingress: [{form: [{podSelector: {matchLabels: {app: web}}}]}]\n",
            "spec.ingress[0].form",
        ),
        (
            "  podSelector: {}\n  ingress: [{from: [{podSelector: {matchLabel: {app: web}}}]}]\n",
            "spec.ingress[0].from[0].podSelector.matchLabel",
        ),
        (
            "  podSelecter: {matchLabels: {app: db}}\n  ingress: []\n",
            "spec.podSelecter",
        ),
        (
            "  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, expect: [10.1.0.0/16]}}]}]\n",
            "spec.egress[0].to[0].ipBlock.expect",
        ),
        ("  podSelector: {}\n  polcyTypes: [Ingress]\n", "spec.polcyTypes"),
    ] {
        let (c, d) = load_str("typo.yaml", &format!("{base}{spec}"));
        assert!(c.policies.is_empty(), "{path}: the policy was kept");
        assert_eq!(d.0.len(), 1, "{path}: {d}");
        assert_eq!(d.0[0].field, path, "{d}");
        assert!(d.0[0].message.contains("unknown field"), "{d}");
        assert_eq!(d.0[0].object, "NetworkPolicy shop/p");
    }
    // Misspelled fields in workloads and metadata too.
    let (_, d) = load_str(
        "w.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: w, namespace: shop, lables: {a: b}}\nspec:\n  selector: {matchLabels: {app: w}}\n  template: {metadata: {labels: {app: w}}, spec: {containers: [{name: c, image: i}]}}\n",
    );
    assert_eq!(d.0[0].field, "metadata.lables", "{d}");
    // Explicit nulls are absent values, as kubectl writes them.
    let (c, d) = load_str(
        "nulls.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, creationTimestamp: null}\nspec: {podSelector: {}, ingress: null}\n",
    );
    assert!(d.is_empty(), "{d}");
    assert_eq!(c.policies.len(), 1);
}

/// Kinds: a misspelled kind in a group septa analyses is an error; another product's policy
/// is a warning that it is not enforced (and never decoded as a NetworkPolicy); other
/// Kubernetes kinds are skipped quietly.
#[test]
fn unknown_and_foreign_policy_kinds() {
    let (c, d) = load_str(
        "k.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicies\nmetadata: {name: p}\nspec: {podSelector: {}}\n",
    );
    assert!(c.policies.is_empty());
    assert_eq!(d.0.len(), 1, "{d}");
    assert_eq!(d.0[0].field, "kind");
    assert!(d.0[0].message.contains("NetworkPolicy"), "{d}");
    let (_, d) = load_str(
        "anp.yaml",
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolcy\nmetadata: {name: p}\nspec: {}\n",
    );
    assert_eq!(d.0.len(), 1, "{d}");
    for (api, kind) in [
        ("cilium.io/v2", "CiliumNetworkPolicy"),
        ("projectcalico.org/v3", "NetworkPolicy"),
        ("crd.projectcalico.org/v1", "GlobalNetworkPolicy"),
        ("policy.networking.k8s.io/v1alpha1", "AdminNetworkPolicy"),
    ] {
        let (c, d) = load_str(
            "foreign.yaml",
            &format!("apiVersion: {api}\nkind: {kind}\nmetadata: {{name: p, namespace: shop}}\nspec: {{selector: all(), types: [Ingress]}}\n"),
        );
        assert!(d.is_empty(), "{api} {kind}: an error: {d}");
        assert!(
            c.policies.is_empty(),
            "{api} {kind} decoded as a NetworkPolicy"
        );
        assert_eq!(d.warnings().len(), 1, "{api} {kind}");
        assert!(d.warnings()[0].message.contains("not enforce"), "{d}");
    }
    let (_, d) = load_str(
        "other.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: i}\nspec: {}\n---\napiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n",
    );
    assert!(d.is_empty() && d.warnings().is_empty(), "{d}");
}

#[test]
fn fifos_devices_and_directory_link_loops_neither_block_nor_break_the_load() {
    let dir = std::env::temp_dir().join(format!("septa-hostile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(
        dir.join("sub/ns.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n",
    )
    .unwrap();
    // A link to a directory above: followed, it would be a loop and fail every load.
    std::os::unix::fs::symlink("..", dir.join("sub/up")).unwrap();
    std::os::unix::fs::symlink(".", dir.join("self")).unwrap();
    // A link to a file is read like the file.
    std::os::unix::fs::symlink("sub/ns.yaml", dir.join("linked.yaml")).unwrap();
    let (c, d) = policies::load::load_paths(&[&dir]);
    assert!(
        d.0.len() == 1 && d.0[0].message.contains("duplicate object"),
        "only the duplicate through the file link: {d}"
    );
    assert_eq!(c.namespaces.len(), 1, "{d}");
    std::fs::remove_file(dir.join("linked.yaml")).unwrap();
    let (_, d) = policies::load::load_paths(&[&dir]);
    assert!(d.is_empty(), "directory links are not followed: {d}");

    // A FIFO named like a manifest: a blocking open would wait for a writer for good. Loaded
    // on a thread so that a regression fails here instead of hanging the test run.
    let fifo =
        std::ffi::CString::new(dir.join("pipe.yaml").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    // A device named like a manifest: its metadata length (0) says nothing of what it yields.
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.yaml")).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let d2 = dir.clone();
    std::thread::spawn(move || {
        let _ = tx.send(policies::load::load_paths(&[&d2]));
    });
    let (c, d) = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the load returns instead of blocking on the FIFO or reading the device");
    let mut refused: Vec<&str> =
        d.0.iter()
            .filter(|p| p.message.contains("not a regular file"))
            .map(|p| p.file.rsplit('/').next().unwrap_or_default())
            .collect();
    refused.sort();
    assert_eq!(refused, ["pipe.yaml", "zero.yaml"], "{d}");
    assert_eq!(c.namespaces.len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A ConfigMap mounted as a volume (each file a link into `..data`, itself a link to a
/// timestamped directory) and a Git checkout (`.git/`, `.github/` with CI YAML) load as their
/// visible files, once, without errors; another tool's YAML among them is a warning.
#[test]
fn hidden_entries_are_skipped_and_foreign_yaml_warns() {
    let dir = std::env::temp_dir().join(format!("septa-configmap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let stamp = dir.join("..2026_12_02_03_00_00.123456789");
    std::fs::create_dir_all(&stamp).unwrap();
    std::fs::write(stamp.join("policy.yaml"), np("deny", "  podSelector: {}")).unwrap();
    std::fs::write(stamp.join("values.yaml"), "replicas: 3\nimage: {tag: v1}\n").unwrap();
    std::os::unix::fs::symlink("..2026_12_02_03_00_00.123456789", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/policy.yaml", dir.join("policy.yaml")).unwrap();
    std::os::unix::fs::symlink("..data/values.yaml", dir.join("values.yaml")).unwrap();
    std::fs::create_dir_all(dir.join(".github/workflows")).unwrap();
    std::fs::write(
        dir.join(".github/workflows/ci.yaml"),
        "on: push\njobs: {}\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.join(".git")).unwrap();
    std::fs::write(dir.join(".git/config.json"), "{}").unwrap();
    std::fs::write(dir.join(".hidden.yaml"), np("deny", "  podSelector: {}")).unwrap();
    let (c, d) = policies::load::load_paths(&[&dir]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(d.is_empty(), "{d}");
    assert_eq!(c.policies.len(), 1, "read once, through the visible link");
    assert_eq!(d.warnings().len(), 1, "{d}");
    assert!(
        d.warnings()[0].file.ends_with("/values.yaml#1")
            && d.warnings()[0].message.contains("not a Kubernetes object"),
        "{d}"
    );
}

/// Typed lists as `kubectl get -o json` and the API return them: the items carry no kind or
/// apiVersion, the list's type implies them.
#[test]
fn typed_lists_load_their_items() {
    let pods = r#"{"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": [
        {"metadata": {"name": "a", "namespace": "x", "labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
        {"metadata": {"name": "b", "namespace": "x"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
    ]}"#;
    let rest = "apiVersion: v1\nkind: NamespaceList\nitems: [{metadata: {name: x, labels: {team: t}}}]\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicyList\nitems:\n- metadata: {name: deny, namespace: x}\n  spec: {podSelector: {}}\n---\napiVersion: apps/v1\nkind: DeploymentList\nitems:\n- metadata: {name: web, namespace: y}\n  spec: {selector: {matchLabels: {app: web}}, template: {metadata: {labels: {app: web}}, spec: {containers: [{name: c, image: i}]}}}\n---\napiVersion: v1\nkind: ConfigMapList\nitems: [{metadata: {name: c}, data: {k: v}}]\n";
    let (c1, d1) = load_str("pods.json", pods);
    let (c2, d2) = load_str("rest.yaml", rest);
    assert!(d1.is_empty() && d2.is_empty(), "{d1}{d2}");
    assert_eq!(c1.pods.len(), 2);
    assert_eq!(
        c2.namespaces["x"].labels.get("team").map(String::as_str),
        Some("t")
    );
    assert_eq!(c2.policies.len(), 1);
    assert_eq!(c2.pods.len(), 1, "the Deployment's template");
    assert_eq!(c2.pods[0].workload.kind, "Deployment");
    // An item that names its kind keeps it; a bad item is reported like any object.
    let (_, d) = load_str("bad.yaml", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicyList\nitems:\n- metadata: {name: p, namespace: x}\n  spec: {podSelector: {}, ingress: [{form: []}]}\n");
    assert!(
        d.0.len() == 1
            && d.0[0].object == "NetworkPolicy x/p"
            && d.0[0].field == "spec.ingress[0].form",
        "{d}"
    );
}

/// A container port outside 1-65535 (or with an unknown protocol) is reported and left out;
/// the workload and its other ports stay.
#[test]
fn a_bad_container_port_is_skipped_not_the_workload() {
    let (c, d) = load_str("w.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: x}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}, {name: bad, containerPort: 70000}, {containerPort: 0}, {name: weird, containerPort: 53, protocol: ICMP}]}]}\n");
    assert_eq!(c.pods.len(), 1, "{d}");
    assert_eq!(
        c.pods[0].named_ports.keys().collect::<Vec<_>>(),
        ["http"],
        "{d}"
    );
    let fields: Vec<&str> = d.0.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.template.spec.containers[0].ports[1].containerPort",
            "spec.template.spec.containers[0].ports[2].containerPort",
            "spec.template.spec.containers[0].ports[3].protocol",
        ],
        "{d}"
    );
    assert!(
        d.0.iter()
            .all(|p| p.object == "Deployment x/web" && p.file == "w.yaml#1"),
        "{d}"
    );
}

/// A pod without a usable owner (none, a Node for a static pod's mirror, an owner reference
/// without kind) is its own workload, `name[Pod]`, never `name[]` or the node.
#[test]
fn pods_without_an_owner_workload_are_pods() {
    let (c, d) = load_str("p.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: lone, namespace: x}\nspec: {containers: [{name: c, image: i}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: etcd-n1, namespace: kube-system, ownerReferences: [{apiVersion: v1, kind: Node, name: n1, uid: u, controller: true}]}\nspec: {containers: [{name: c, image: i}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: odd, namespace: x, ownerReferences: [{apiVersion: v1, kind: '', name: '', uid: u}]}\nspec: {containers: [{name: c, image: i}]}\n");
    assert!(d.is_empty(), "{d}");
    let names: Vec<String> = c.pods.iter().map(|p| p.workload.to_string()).collect();
    assert_eq!(
        names,
        ["kube-system/etcd-n1[Pod]", "x/lone[Pod]", "x/odd[Pod]"]
    );
}
