//! The Helm chart, rendered by the real helm (v4) with the default values and with value sets
//! a platform team would use: it lints, every document validates against the Kubernetes
//! OpenAPI schema (strict: an unknown field fails), the agent runs with the least privilege
//! its values say, its RBAC is exactly what the agent uses, the agent accepts the
//! configuration file the chart writes, a wrong value fails with its path, and the README's
//! values table is values.yaml's. helm and kubernetes-validate come from scripts/setup.sh.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicUsize, Ordering},
};

use clap::CommandFactory;
use serde_json::{json, Value};

/// The Kubernetes version whose schemas the rendered documents are checked against (one the
/// chart supports: kubeVersion >= 1.30).
const KUBERNETES_VERSION: &str = "1.31.0";
const NAMESPACE: &str = "septa";
const RELEASE: &str = "septa";
const SETUP: &str = "scripts/setup.sh (as root) installs helm v4 and kubernetes-validate";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn chart() -> PathBuf {
    repo().join("charts/septa")
}

/// Run a tool the test needs; a missing one fails the test and says how to get it.
fn run(cmd: &mut Command) -> Output {
    let name = cmd.get_program().to_string_lossy().into_owned();
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run `{name}` ({e}): {SETUP}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A scratch directory for one test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("septa-chart-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
    fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, content).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `helm template` of the chart with a values file (YAML text; empty: the defaults) and extra
/// arguments; the command line the agent's e2e tests use too:
/// `helm template septa charts/septa --namespace septa --include-crds --values FILE`.
fn helm_template(values: &str, extra: &[&str]) -> Output {
    let dir = Scratch::new("values");
    let file = dir.write("values.yaml", values);
    run(Command::new("helm")
        .arg("template")
        .arg(RELEASE)
        .arg(chart())
        .args(["--namespace", NAMESPACE, "--include-crds", "--values"])
        .arg(&file)
        .args(extra))
}

/// The rendered documents of a value set that must render.
fn render(set: &ValueSet) -> Vec<Value> {
    let out = helm_template(set.values, &[]);
    assert!(
        out.status.success(),
        "{}: helm template failed:\n{}",
        set.name,
        text(&out.stderr)
    );
    documents(&text(&out.stdout))
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).expect("rendered YAML parses"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

/// A named set of values, as a user's values file.
struct ValueSet {
    name: &'static str,
    values: &'static str,
}

const OWN_CONFLIST: &str = r#"{"cniVersion": "1.0.0", "name": "pods", "plugins": [{"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.0.0/24"}]]}}, {"type": "portmap", "capabilities": {"portMappings": true}}, {"type": "septa-cni"}]}"#;

fn value_sets() -> Vec<ValueSet> {
    vec![
        ValueSet {
            name: "defaults",
            values: "",
        },
        ValueSet {
            name: "splice into a named network",
            values: "cni:\n  mode: splice\n  network: 10-flannel.conflist\n  socketWait: 45s\n  confDir: /etc/kubernetes/cni/net.d\n  binDir: /home/kubernetes/bin\n",
        },
        ValueSet {
            name: "own file",
            values: OWN_FILE_VALUES,
        },
        ValueSet {
            name: "service monitor",
            values: "serviceMonitor:\n  enabled: true\n  interval: 15s\n  labels:\n    release: prometheus\n",
        },
        ValueSet {
            name: "custom capabilities, bpffs mounted by the node",
            values: "agent:\n  securityContext:\n    capabilities: [BPF, NET_ADMIN, PERFMON, SYS_ADMIN, NET_RAW, SYS_RESOURCE]\n    seLinuxType: null\n    appArmorProfile: RuntimeDefault\nbpffs:\n  mount: false\n",
        },
        ValueSet {
            name: "resource limits",
            values: "agent:\n  resources:\n    requests:\n      cpu: 250m\n      memory: 512Mi\n    limits:\n      cpu: 2\n      memory: 1Gi\n  maxUnavailable: 10%\n",
        },
        ValueSet {
            name: "every agent option",
            values: EVERY_OPTION,
        },
    ]
}

const OWN_FILE_VALUES: &str = concat!(
    "cni:\n  mode: own-file\n  fileName: 05-septa.conflist\n  ownFile:\n    conflist: '",
    r#"{"cniVersion": "1.0.0", "name": "pods", "plugins": [{"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.0.0/24"}]]}}, {"type": "portmap", "capabilities": {"portMappings": true}}, {"type": "septa-cni"}]}"#,
    "'\n"
);

/// Every key of the option groups set to a value other than the agent's default (so each one
/// reaches the configuration file), except --feed-ca-file, which the agent reads at once.
const EVERY_OPTION: &str = "\
node:
  pinDir: /sys/fs/bpf/septa-test
  stateDir: /var/lib/septa
  healthAddr: '0.0.0.0:19876'
  xdpInterface: [eth0, eth1]
  failOpen: true
  policyHost: true
  removeEnforcement: true
source:
  podWait: 7s
  netnsDir: [/run/netns, /var/run/docker/netns]
maps:
  conntrackEntries: 131072
  policyEntries: 65536
  ipcacheEntries: 524288
  eventsBytes: 8388608
  denyEventInterval: 2s
flows:
  conntrackIdle: 90s
  flowUpdateInterval: 20s
  flowAggregateWindow: 1m
  flowAggregateMaxGroups: 5000
export:
  flowLog: '-'
  flowLogMaxBytes: 1048576
  flowLogKeep: 3
  ipfixCollector: '127.0.0.1:4739'
  ipfixDomain: 7
  ipfixTemplateInterval: 2m
dns:
  dnsMinTtl: 10s
  dnsMaxTtl: 30m
  dnsGrace: 2m
  dnsMaxIpsPerName: 32
  dnsPreresolveInterval: 1m
  dnsServer: '10.96.0.10:53'
  dnsResolver: [10.96.0.10, 'fd00::a']
feeds:
  feedTimeout: 30s
  feedMaxBytes: 1048576
  feedRetryMin: 5s
  feedMinRefresh: 2m
  feedProtect: [10.244.0.0/16, 10.96.0.0/12]
cni:
  mode: splice
  network: 10-calico.conflist
  fileName: 07-septa.conflist
  socketWait: 1m
";

/// The chart's own values.yaml.
fn default_values() -> Value {
    let text = std::fs::read_to_string(chart().join("values.yaml")).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

/// `base` with `over` merged in, as helm merges a values file over the defaults (maps merge,
/// everything else replaces; null removes).
fn merged(mut base: Value, over: &Value) -> Value {
    if let (Some(b), Some(o)) = (base.as_object_mut(), over.as_object()) {
        for (k, v) in o {
            match (b.get_mut(k), v) {
                (Some(bv), Value::Object(_)) if bv.is_object() => *bv = merged(bv.take(), v),
                (_, Value::Null) => {
                    b.remove(k);
                }
                _ => {
                    b.insert(k.clone(), v.clone());
                }
            }
        }
        base
    } else {
        over.clone()
    }
}

fn values_of(set: &ValueSet) -> Value {
    let over: Value = if set.values.is_empty() {
        json!({})
    } else {
        serde_yaml::from_str(set.values).unwrap()
    };
    merged(default_values(), &over)
}

#[test]
fn helm_is_v4() {
    let out = run(Command::new("helm").args(["version", "--short"]));
    assert!(
        text(&out.stdout).starts_with("v4."),
        "helm {} is not v4: {SETUP}",
        text(&out.stdout)
    );
}

#[test]
fn chart_lints_strictly_with_every_value_set() {
    let dir = Scratch::new("lint");
    for set in value_sets() {
        let file = dir.write("values.yaml", set.values);
        for strict in [false, true] {
            let mut cmd = Command::new("helm");
            cmd.arg("lint").arg(chart()).arg("--values").arg(&file);
            if strict {
                cmd.arg("--strict");
            }
            let out = run(&mut cmd);
            assert!(
                out.status.success(),
                "{}: helm lint{} failed:\n{}{}",
                set.name,
                if strict { " --strict" } else { "" },
                text(&out.stdout),
                text(&out.stderr)
            );
        }
    }
}

/// Every rendered document passes kubernetes-validate --strict, which knows every built-in
/// kind and CustomResourceDefinitions themselves; the ServiceMonitor (a Prometheus Operator
/// kind it has no schema for) is checked by shape instead.
#[test]
fn rendered_documents_validate_against_the_kubernetes_schema() {
    let dir = Scratch::new("validate");
    for set in value_sets() {
        let docs = render(&set);
        let (monitors, builtin): (Vec<&Value>, Vec<&Value>) = docs
            .iter()
            .partition(|d| d["apiVersion"] == "monitoring.coreos.com/v1");
        let kinds: BTreeSet<&str> = builtin.iter().filter_map(|d| d["kind"].as_str()).collect();
        for kind in [
            "CustomResourceDefinition",
            "DaemonSet",
            "ConfigMap",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Service",
        ] {
            assert!(kinds.contains(kind), "{}: no {kind} rendered", set.name);
        }
        let stream: String = builtin
            .iter()
            .map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap()))
            .collect();
        let file = dir.write("rendered.yaml", &stream);
        let out = run(Command::new("kubernetes-validate")
            .args(["--strict", "--quiet", "-k", KUBERNETES_VERSION])
            .arg(&file));
        let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(
            out.status.success() && !said.contains("WARN") && !said.contains("ERROR"),
            "{}: kubernetes-validate {KUBERNETES_VERSION} refused the rendered chart:\n{said}",
            set.name
        );
        let values = values_of(&set);
        if values["serviceMonitor"]["enabled"] == true {
            assert_eq!(monitors.len(), 1, "{}: one ServiceMonitor", set.name);
            service_monitor_has_its_shape(monitors[0], &docs, &values);
        } else {
            assert!(
                monitors.is_empty(),
                "{}: a ServiceMonitor though disabled",
                set.name
            );
        }
    }
}

/// The fields of a monitoring.coreos.com/v1 ServiceMonitor the operator reads, and that it
/// selects the metrics Service's `metrics` port.
fn service_monitor_has_its_shape(sm: &Value, docs: &[Value], values: &Value) {
    assert_eq!(sm["kind"], "ServiceMonitor");
    assert_eq!(sm["metadata"]["namespace"], NAMESPACE);
    let spec = sm["spec"].as_object().expect("spec");
    let known: BTreeSet<&str> = ["selector", "namespaceSelector", "endpoints"].into();
    for k in spec.keys() {
        assert!(known.contains(k.as_str()), "ServiceMonitor spec.{k}");
    }
    for (k, v) in values["serviceMonitor"]["labels"].as_object().unwrap() {
        assert_eq!(&sm["metadata"]["labels"][k], v, "label {k}");
    }
    let svc = find(docs, "Service", "septa-agent-metrics");
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            &svc["metadata"]["labels"][k], v,
            "the Service lacks label {k}"
        );
    }
    assert_eq!(
        sm["spec"]["namespaceSelector"]["matchNames"],
        json!([NAMESPACE])
    );
    let ep = &sm["spec"]["endpoints"][0];
    assert_eq!(ep["port"], "metrics");
    assert_eq!(ep["path"], "/metrics");
    assert_eq!(ep["interval"], values["serviceMonitor"]["interval"]);
    assert!(svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "metrics"));
}

fn health_port(values: &Value) -> u64 {
    let addr = values["node"]["healthAddr"].as_str().unwrap();
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

fn container<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

#[test]
fn agent_runs_on_the_host_network_with_the_capabilities_its_values_name() {
    for set in value_sets() {
        let values = values_of(&set);
        let docs = render(&set);
        let ds = find(&docs, "DaemonSet", "septa-agent");
        let name = set.name;
        assert_eq!(ds["metadata"]["namespace"], NAMESPACE);
        let pod = &ds["spec"]["template"]["spec"];
        assert_eq!(pod["hostNetwork"], true, "{name}");
        assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet", "{name}");
        assert_eq!(pod["priorityClassName"], "system-node-critical", "{name}");
        assert_eq!(pod["serviceAccountName"], "septa-agent", "{name}");
        assert_eq!(
            pod["tolerations"],
            json!([{"operator": "Exists"}]),
            "{name}"
        );
        assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
        assert_eq!(
            ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
            values["agent"]["maxUnavailable"],
            "{name}"
        );
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!((10..=120).contains(&grace), "{name}: grace {grace}s");

        let agent = container(&pod["containers"], "agent");
        let sc = &agent["securityContext"];
        assert_eq!(
            sc["privileged"], false,
            "{name}: the agent must not be privileged"
        );
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{name}");
        let caps = &values["agent"]["securityContext"]["capabilities"];
        assert_eq!(&sc["capabilities"]["add"], caps, "{name}: capabilities");
        assert!(
            caps.as_array()
                .unwrap()
                .iter()
                .all(|c| !c.as_str().unwrap().starts_with("CAP_")),
            "{name}: capability names go without CAP_"
        );
        assert_eq!(agent["command"], json!(["/usr/bin/septa-agent"]), "{name}");
        assert_eq!(
            agent["args"],
            json!(["--config", "/etc/septa/agent.yaml"]),
            "{name}"
        );
        let env = agent["env"].as_array().unwrap();
        let var = |n: &str| {
            env.iter()
                .find(|e| e["name"] == n)
                .unwrap_or_else(|| panic!("{name}: no env {n}"))
        };
        assert_eq!(
            var("NODE_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
            "spec.nodeName"
        );
        assert_eq!(var("SEPTA_DAEMONSET")["value"], "septa/septa-agent");

        let port = health_port(&values);
        for (probe, path) in [
            ("readinessProbe", "/readyz"),
            ("livenessProbe", "/healthz"),
            ("startupProbe", "/healthz"),
        ] {
            assert_eq!(agent[probe]["httpGet"]["path"], path, "{name}: {probe}");
            assert_eq!(agent[probe]["httpGet"]["port"], port, "{name}: {probe}");
        }
        assert_eq!(agent["ports"][0]["containerPort"], port, "{name}");
        let svc = find(&docs, "Service", "septa-agent-metrics");
        assert_eq!(svc["spec"]["ports"][0]["name"], "metrics");
        assert_eq!(svc["spec"]["ports"][0]["port"], port);
        let mut resources = values["agent"]["resources"].clone();
        resources
            .as_object_mut()
            .unwrap()
            .retain(|_, v| v.as_object().is_some_and(|m| !m.is_empty()));
        assert_eq!(agent["resources"], resources, "{name}: resources");

        let init = container(&pod["initContainers"], "prepare-node");
        assert_eq!(
            init["args"],
            json!(["--config", "/etc/septa/agent.yaml", "--prepare-node"])
        );
        let bpffs_mount = |c: &Value| {
            c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["mountPath"] == "/sys/fs/bpf")
                .unwrap_or_else(|| panic!("{name}: no bpffs mount"))["mountPropagation"]
                .clone()
        };
        assert_eq!(bpffs_mount(agent), "HostToContainer", "{name}");
        if values["bpffs"]["mount"] == true {
            assert_eq!(init["securityContext"]["privileged"], true, "{name}");
            assert_eq!(bpffs_mount(init), "Bidirectional", "{name}");
        } else {
            assert_eq!(init["securityContext"], agent["securityContext"], "{name}");
            assert_eq!(bpffs_mount(init), "HostToContainer", "{name}");
        }

        // The image has no shell.
        for c in [agent, init] {
            let line = format!("{} {}", c["command"], c["args"]);
            assert!(
                !line.contains("sh\"") && !line.contains("-c\""),
                "{name}: {line}"
            );
        }

        let host_paths: BTreeSet<String> = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v["hostPath"]["path"].as_str().map(str::to_owned))
            .collect();
        let mut want: BTreeSet<String> = [
            "/sys/fs/bpf",
            "/run/septa",
            values["cni"]["binDir"].as_str().unwrap(),
            values["cni"]["confDir"].as_str().unwrap(),
            values["node"]["stateDir"].as_str().unwrap(),
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        for d in values["source"]["netnsDir"].as_array().unwrap() {
            want.insert(d.as_str().unwrap().to_owned());
        }
        assert_eq!(host_paths, want, "{name}: hostPath volumes");
        let mounts_of = |c: &Value| -> BTreeSet<String> {
            c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["mountPath"].as_str().unwrap().to_owned())
                .collect()
        };
        assert!(mounts_of(agent).contains("/host/etc/cni/net.d"), "{name}");
        assert!(mounts_of(init).contains("/host/opt/cni/bin"), "{name}");
        assert!(!mounts_of(agent).contains("/host/opt/cni/bin"), "{name}");
    }
}

/// The rules are exactly what the agent's watches and Events use: a verb or resource added
/// here without the agent needing it fails, and so does one taken away.
#[test]
fn rbac_is_exactly_what_the_agent_uses() {
    let docs = render(&value_sets()[0]);
    let rules = |kind: &str| -> BTreeSet<(String, String, String, String)> {
        let mut out = BTreeSet::new();
        for r in find(&docs, kind, "septa-agent")["rules"]
            .as_array()
            .unwrap()
        {
            let names: Vec<String> = r["resourceNames"]
                .as_array()
                .map(|a| a.iter().map(|n| n.as_str().unwrap().to_owned()).collect())
                .unwrap_or_default();
            for g in r["apiGroups"].as_array().unwrap() {
                for res in r["resources"].as_array().unwrap() {
                    for v in r["verbs"].as_array().unwrap() {
                        out.insert((
                            g.as_str().unwrap().to_owned(),
                            res.as_str().unwrap().to_owned(),
                            v.as_str().unwrap().to_owned(),
                            names.join(","),
                        ));
                    }
                }
            }
        }
        out
    };
    let expect = |rows: &[(&str, &str, &str, &str)]| -> BTreeSet<(String, String, String, String)> {
        rows.iter()
            .map(|(g, r, v, n)| (g.to_string(), r.to_string(), v.to_string(), n.to_string()))
            .collect()
    };
    let mut cluster = Vec::new();
    for (group, resources) in [
        ("", &["namespaces", "pods", "services"][..]),
        ("networking.k8s.io", &["networkpolicies"]),
        ("discovery.k8s.io", &["endpointslices"]),
        ("septa.dev", &["fqdnpolicies", "threatfeeds"]),
    ] {
        for r in resources {
            for v in ["list", "watch"] {
                cluster.push((group, *r, v, ""));
            }
        }
    }
    cluster.push(("events.k8s.io", "events", "create", ""));
    cluster.push(("events.k8s.io", "events", "patch", ""));
    assert_eq!(rules("ClusterRole"), expect(&cluster), "ClusterRole rules");
    assert_eq!(
        rules("Role"),
        expect(&[
            ("apps", "daemonsets", "get", "septa-agent"),
            ("apps", "daemonsets", "list", "septa-agent"),
            ("apps", "daemonsets", "watch", "septa-agent"),
        ]),
        "Role rules"
    );
    assert_eq!(
        find(&docs, "Role", "septa-agent")["metadata"]["namespace"],
        NAMESPACE
    );
    for binding in ["ClusterRoleBinding", "RoleBinding"] {
        let b = find(&docs, binding, "septa-agent");
        assert_eq!(
            b["subjects"],
            json!([{"kind": "ServiceAccount", "name": "septa-agent", "namespace": NAMESPACE}]),
            "{binding}"
        );
        assert_eq!(b["roleRef"]["name"], "septa-agent", "{binding}");
    }
}

fn agent_yaml(docs: &[Value]) -> String {
    find(docs, "ConfigMap", "septa-agent-config")["data"]["agent.yaml"]
        .as_str()
        .expect("agent.yaml")
        .to_owned()
}

/// The built septa-agent: cargo builds only the package under test's binaries, so this one
/// comes from `cargo build -p agent` into the same target directory.
fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("septa-agent"))
        .collect();
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no septa-agent beside the test ({}): run `cargo build -p agent --bin septa-agent` first",
                candidates[0].display()
            )
        })
}

fn check_config(agent: &Path, file: &Path, extra: &[&std::ffi::OsStr]) -> Output {
    run(Command::new(agent)
        .arg("--config")
        .arg(file)
        .args(extra)
        .arg("--check-config")
        .env_remove("SEPTA_CONFIG")
        .env_remove("SEPTA_DAEMONSET")
        .env_remove("NODE_NAME"))
}

/// The configuration file each value set produces is one the agent accepts (and the check
/// is one that refuses a key the agent does not know).
#[test]
fn agent_accepts_the_configuration_the_chart_writes() {
    let agent = agent_binary();
    let dir = Scratch::new("config");
    let every = default_values();
    let every_set: Value = serde_yaml::from_str(EVERY_OPTION).unwrap();
    for (group, _) in GROUPS {
        for key in every[group].as_object().unwrap().keys() {
            let reaches_the_file_as_is = !matches!(
                (group, key.as_str()),
                ("feeds", "feedCaFile") | ("cni", "ownFile" | "confDir" | "binDir")
            );
            assert!(
                !reaches_the_file_as_is || every_set[group].get(key).is_some(),
                "the `every agent option` value set leaves out {group}.{key}"
            );
        }
    }
    for set in value_sets() {
        let docs = render(&set);
        let file = dir.write("agent.yaml", &agent_yaml(&docs));
        // The own conflist is mounted from the chart's ConfigMap in the pod; here it is that
        // ConfigMap's text at a path of the test's, which the check reads and validates.
        let own = docs
            .iter()
            .find_map(|d| d["data"]["conflist.json"].as_str())
            .map(|text| dir.write("conflist.json", text));
        let mut extra: Vec<&std::ffi::OsStr> = Vec::new();
        if let Some(own) = &own {
            extra.extend([std::ffi::OsStr::new("--cni-own-file"), own.as_os_str()]);
        }
        let out = check_config(&agent, &file, &extra);
        assert!(
            out.status.success(),
            "{}: septa-agent --check-config refused the chart's agent.yaml:\n{}\n{}{}",
            set.name,
            std::fs::read_to_string(&file).unwrap(),
            text(&out.stdout),
            text(&out.stderr)
        );
        let bad = dir.write(
            "bad.yaml",
            &format!("{}conntrack-entrie: 5\n", agent_yaml(&docs)),
        );
        let out = check_config(&agent, &bad, &extra);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}: a misspelled key passed",
            set.name
        );
        assert!(text(&out.stderr).contains("conntrack-entrie"));
    }
}

/// What the chart writes into agent.yaml: the keys the user set (each as its flag's name) and
/// the ones the chart decides, nothing else.
#[test]
fn agent_configuration_holds_what_is_set_and_what_the_chart_decides() {
    let parse = |set: &ValueSet| -> serde_json::Map<String, Value> {
        serde_yaml::from_str::<Value>(&agent_yaml(&render(set)))
            .unwrap()
            .as_object()
            .unwrap()
            .clone()
    };
    let sets = value_sets();
    let defaults = parse(&sets[0]);
    assert_eq!(
        Value::Object(defaults.clone()),
        json!({
            "source": "kubernetes",
            "daemonset": "septa/septa-agent",
            "state-dir": "/run/septa",
            "health-addr": "0.0.0.0:9876",
            "netns-dir": ["/run/netns"],
            "cni-mode": "splice",
            "cni-conf-dir": "/host/etc/cni/net.d",
            "cni-bin-dir": "/host/opt/cni/bin",
        })
    );
    let every = sets
        .iter()
        .find(|s| s.name == "every agent option")
        .unwrap();
    let all = parse(every);
    let set: Value = serde_yaml::from_str(every.values).unwrap();
    for (group, keys) in set.as_object().unwrap() {
        for (key, v) in keys.as_object().unwrap() {
            let flag = flag_of(group, key);
            assert_eq!(all.get(&flag), Some(v), "{group}.{key} as `{flag}`");
        }
    }
    let own = parse(sets.iter().find(|s| s.name == "own file").unwrap());
    assert_eq!(own["cni-mode"], "own-file");
    assert_eq!(own["cni-own-file"], "/etc/septa-cni/conflist.json");
    let docs = render(sets.iter().find(|s| s.name == "own file").unwrap());
    let cm = find(&docs, "ConfigMap", "septa-agent-cni");
    let conflist: Value =
        serde_json::from_str(cm["data"]["conflist.json"].as_str().unwrap()).unwrap();
    assert_eq!(
        conflist,
        serde_json::from_str::<Value>(OWN_CONFLIST).unwrap()
    );
    let agent = container(
        &find(&docs, "DaemonSet", "septa-agent")["spec"]["template"]["spec"]["containers"],
        "agent",
    );
    assert!(agent["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["mountPath"] == "/etc/septa-cni"));
}

/// The agent flag a values key stands for: the key in kebab case, with `cni-` in front in the
/// cni group.
fn flag_of(group: &str, key: &str) -> String {
    let mut kebab = String::new();
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            kebab.push('-');
            kebab.push(c.to_ascii_lowercase());
        } else {
            kebab.push(c);
        }
    }
    if group == "cni" {
        format!("cni-{kebab}")
    } else {
        kebab
    }
}

/// The option groups of values.yaml and the agent's help headings they mirror.
const GROUPS: [(&str, &str); 8] = [
    ("node", "Node"),
    ("source", "Source"),
    ("maps", "Maps"),
    ("flows", "Flows"),
    ("export", "Export"),
    ("dns", "DNS"),
    ("feeds", "Feeds"),
    ("cni", "CNI"),
];

/// Flags of those groups that have no values key, each for a reason: the chart sets them, or
/// they mean nothing in a pod.
const NOT_IN_VALUES: [&str; 7] = [
    "socket",     // septa-cni's default, in /run/septa which the chart mounts
    "netns",      // the pod is in the node's network namespace already (hostNetwork)
    "node-name",  // NODE_NAME from the downward API
    "source",     // kubernetes, always
    "kubeconfig", // the pod's service account
    "manifests",  // standalone mode
    "daemonset",  // the chart's own DaemonSet (SEPTA_DAEMONSET)
];

/// Each values key of an option group is a flag of that group in `septa-agent --help`, and
/// every flag of the group has a key (or a reason not to): the values cannot drift from the
/// agent's options.
#[test]
fn values_groups_mirror_the_agent_options() {
    let cmd = agent::config::Config::command();
    let values = default_values();
    for (group, heading) in GROUPS {
        let keys = values[group]
            .as_object()
            .unwrap_or_else(|| panic!("values.yaml has no group {group}"));
        let mut mapped = BTreeSet::new();
        for key in keys.keys() {
            let flag = if group == "cni" && key == "ownFile" {
                "cni-own-file".to_owned()
            } else {
                flag_of(group, key)
            };
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_long() == Some(flag.as_str()))
                .unwrap_or_else(|| panic!("{group}.{key}: septa-agent has no --{flag}"));
            assert_eq!(
                arg.get_help_heading(),
                Some(heading),
                "{group}.{key}: --{flag} is not in the agent's {heading} group"
            );
            mapped.insert(flag);
        }
        for a in cmd.get_arguments() {
            if a.get_help_heading() != Some(heading) {
                continue;
            }
            let long = a.get_long().unwrap();
            assert!(
                mapped.contains(long)
                    || NOT_IN_VALUES.contains(&long)
                    || (heading == "Source" && long == "poll-interval"),
                "--{long} ({heading}) has no key in values.yaml's {group} group"
            );
        }
    }
}

/// A wrong value fails at `helm template` (as at install), and the message names its path.
#[test]
fn schema_rejects_bad_values_naming_their_path() {
    for (set, path) in [
        ("cni.mode=bogus", "/cni/mode"),
        ("maps.conntrackEntrie=5", "conntrackEntrie"),
        (
            "agent.resources.requests.cpu=abc",
            "/agent/resources/requests/cpu",
        ),
        ("flows.conntrackIdle=5 minutes", "/flows/conntrackIdle"),
        (
            "agent.securityContext.capabilities[0]=CAP_BPF",
            "/agent/securityContext/capabilities/0",
        ),
        ("node.pinDir=/var/septa", "/node/pinDir"),
        ("cni.mode=own-file", "/cni/ownFile/conflist"),
        ("serviceMonitor.interval=often", "/serviceMonitor/interval"),
        ("agent.maxUnavailable=0", "/agent/maxUnavailable"),
        // What the agent would refuse at start (a crash loop after an upgrade), refused at
        // install instead.
        ("cni.socketWait=10m", "/cni/socketWait"),
        ("cni.socketWait=0s", "/cni/socketWait"),
        ("source.podWait=0s", "/source/podWait"),
        (
            "cni.mode=off,cni.network=10-flannel.conflist",
            "/cni/network",
        ),
    ] {
        let out = helm_template("", &["--set", set]);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "--set {set} was accepted");
        assert!(
            err.contains(path) && err.contains("schema"),
            "--set {set}: the error does not name {path}:\n{err}"
        );
    }
    // Not a schema matter, caught by the template: a conflist that is not JSON.
    let out = helm_template(
        "cni:\n  mode: own-file\n  ownFile:\n    conflist: '{nope'\n",
        &[],
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("cni.ownFile.conflist is not JSON"));
    let out = helm_template("", &["--set", "controller.enabled=true"]);
    assert!(
        !out.status.success(),
        "controller.enabled rendered nothing silently"
    );
}

/// The NOTES tell how to check that every node enforces.
#[test]
fn notes_tell_how_to_check_every_node() {
    let notes = std::fs::read_to_string(chart().join("templates/NOTES.txt")).unwrap();
    for needle in [
        "rollout status ds/",
        "-l app.kubernetes.io/name=",
        "exec \"$pod\" -c agent -- septa status",
    ] {
        assert!(notes.contains(needle), "NOTES.txt lacks {needle:?}");
    }
    let out = run(Command::new("helm")
        .args(["install", RELEASE])
        .arg(chart())
        .args(["--namespace", NAMESPACE, "--dry-run=client"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rendered = text(&out.stdout);
    assert!(rendered.contains("kubectl -n septa rollout status ds/septa-agent"));
    assert!(rendered.contains("kubectl -n septa exec \"$pod\" -c agent -- septa status"));
}

const README_BEGIN: &str =
    "<!-- chart values: generated from charts/septa/values.yaml by tests/tests/chart.rs -->\n";
const README_END: &str = "<!-- end of chart values -->\n";

/// One documented leaf key of values.yaml.
struct Row {
    key: String,
    default: String,
    description: String,
}

/// The leaves of values.yaml (the keys the schema gives no properties of their own), in file
/// order, each with its default and the comment above it.
fn values_rows() -> Vec<Row> {
    let text = std::fs::read_to_string(chart().join("values.yaml")).unwrap();
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(chart().join("values.schema.json")).unwrap())
            .unwrap();
    let values = default_values();
    let mut rows = Vec::new();
    let mut comments: Vec<String> = Vec::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    // Lines inside a leaf's own value (a list's items, a map of labels) are its default.
    let mut leaf_indent: Option<usize> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if leaf_indent.is_some_and(|i| indent > i) || trimmed.starts_with('-') {
            comments.clear();
            continue;
        }
        leaf_indent = None;
        if let Some(c) = trimmed.strip_prefix('#') {
            comments.push(c.trim().to_owned());
            continue;
        }
        let key = trimmed
            .split_once(':')
            .map(|(k, _)| k)
            .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric()));
        let Some(key) = key else {
            comments.clear();
            continue;
        };
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        let path: Vec<String> = stack
            .iter()
            .map(|(_, k)| k.clone())
            .chain([key.to_owned()])
            .collect();
        let description = comments.join(" ");
        comments.clear();
        let node_schema = path
            .iter()
            .try_fold(&schema, |s, k| s["properties"].get(k))
            .unwrap_or_else(|| panic!("values.yaml key {} is not in the schema", path.join(".")));
        if node_schema.get("properties").is_some() {
            stack.push((indent, key.to_owned()));
            continue;
        }
        leaf_indent = Some(indent);
        let value = path.iter().fold(&values, |v, k| &v[k]);
        assert!(
            !description.is_empty(),
            "values.yaml: {} has no comment saying what it is",
            path.join(".")
        );
        rows.push(Row {
            key: path.join("."),
            default: match value {
                Value::String(s) if s.is_empty() => "\"\"".into(),
                Value::String(s) => s.clone(),
                v => v.to_string(),
            },
            description,
        });
    }
    rows
}

fn schema_leaves(schema: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    for (k, v) in schema["properties"].as_object().unwrap() {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if v.get("properties").is_some() {
            schema_leaves(v, &path, out);
        } else {
            out.insert(path);
        }
    }
}

fn values_table() -> String {
    let mut out = String::from("| key | default | meaning |\n|---|---|---|\n");
    for r in values_rows() {
        out.push_str(&format!(
            "| `{}` | `{}` | {} |\n",
            r.key,
            r.default.replace('|', "\\|"),
            r.description.replace('|', "\\|")
        ));
    }
    out
}

/// Every key the schema types is in values.yaml with a comment, and the README's table of
/// values is generated from it. Regenerate with `SEPTA_BLESS=1 cargo test -p septa-tests
/// --test chart readme`.
#[test]
fn readme_values_table_is_values_yaml() {
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(chart().join("values.schema.json")).unwrap())
            .unwrap();
    let mut leaves = BTreeSet::new();
    schema_leaves(&schema, "", &mut leaves);
    let listed: BTreeSet<String> = values_rows().into_iter().map(|r| r.key).collect();
    assert_eq!(
        listed, leaves,
        "values.yaml's documented keys against the schema's"
    );

    let path = repo().join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let (Some(b), Some(e)) = (readme.find(README_BEGIN), readme.find(README_END)) else {
        panic!("README.md has no {README_BEGIN:?} ... {README_END:?} section");
    };
    let want = values_table();
    if std::env::var_os("SEPTA_BLESS").is_some() {
        let updated = format!("{}{README_BEGIN}{want}{}", &readme[..b], &readme[e..]);
        std::fs::write(&path, updated).unwrap();
        return;
    }
    assert!(
        readme[b + README_BEGIN.len()..e] == want,
        "the README's values table differs from charts/septa/values.yaml (SEPTA_BLESS=1 to rewrite):\n{want}"
    );
}

#[test]
fn chart_app_version_is_the_workspace_version() {
    let chart_yaml: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(chart_yaml["apiVersion"], "v2");
    assert_eq!(chart_yaml["appVersion"], env!("CARGO_PKG_VERSION"));
    let docs = render(&value_sets()[0]);
    let ds = find(&docs, "DaemonSet", "septa-agent");
    let image = ds["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap();
    assert_eq!(
        image,
        format!("localhost/septa-agent:{}", env!("CARGO_PKG_VERSION"))
    );
}
