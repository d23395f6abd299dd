//! The `septa` binary: golden output, formats, diff, bad input and exit codes.

use std::{path::PathBuf, process::Command};

fn septa(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_septa"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run septa");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn connlist_golden() {
    let (code, out, err) = septa(&["connlist", "policies/examples/shop"]);
    assert_eq!(code, 0, "{err}");
    let golden =
        std::fs::read_to_string(root().join("cli/tests/golden/shop.connlist.txt")).unwrap();
    assert_eq!(out, golden);
    assert!(
        out.contains("shop/frontend[Deployment] => shop/api[Deployment] : TCP 8000\n"),
        "named port resolved against the api pods"
    );
    assert!(out.contains(
        "monitoring/prometheus[Deployment] => shop/frontend[Deployment] : TCP 8080,9090-9091\n"
    ));
    assert!(
        !out.contains("shop/api[Deployment] => shop/frontend"),
        "api may not call the frontend"
    );
}

#[test]
fn json_and_csv_carry_the_same_rows() {
    let (_, text, _) = septa(&["connlist", "policies/examples/shop"]);
    let (code, json, _) = septa(&["connlist", "-o", "json", "policies/examples/shop"]);
    assert_eq!(code, 0);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(rows.len(), text.lines().count());
    assert_eq!(rows[0]["src"], "monitoring/prometheus[Deployment]");
    let (_, csv, _) = septa(&["connlist", "-o", "csv", "policies/examples/shop"]);
    let mut r = csv::Reader::from_reader(csv.as_bytes());
    let recs: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
    assert_eq!(recs.len(), rows.len());
    assert_eq!(
        &recs[1][2], "TCP 8080,9090-9091",
        "commas inside a field are quoted"
    );
}

#[test]
fn diff_reports_added_removed_changed() {
    let dir = std::env::temp_dir().join(format!("septa-diff-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        root().join("policies/examples/shop/workloads.yaml"),
        dir.join("workloads.yaml"),
    )
    .unwrap();
    let pol = std::fs::read_to_string(root().join("policies/examples/shop/policies.yaml")).unwrap();
    // The db now also accepts the frontend; the api loses its external 443.
    let pol = pol.replace("    - from: [{podSelector: {matchLabels: {app: api}}}]\n      ports: [{port: 5432}]", "    - from: [{podSelector: {matchLabels: {app: api}}}, {podSelector: {matchLabels: {app: frontend}}}]\n      ports: [{port: 5432}]");
    let pol = pol.replace("      ports: [{port: 443}]", "      ports: [{port: 8443}]");
    std::fs::write(dir.join("policies.yaml"), pol).unwrap();
    let (code, out, err) = septa(&["diff", "policies/examples/shop", dir.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "changed shop/api[Deployment] => 203.0.113.0-203.0.113.127[External] : TCP 443 -> TCP 8443\n", "frontend egress does not reach the db, so only one line changes");
}

#[test]
fn bad_input_is_reported_and_exits_non_zero() {
    let dir = std::env::temp_dir().join(format!("septa-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.yaml"), "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: broken, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: 0}]}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: ok, namespace: x}\nspec: {containers: [{name: c, image: i}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: ok2, namespace: x}\nspec: {containers: [{name: c, image: i}]}\n").unwrap();
    let (code, out, err) = septa(&["connlist", dir.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("a.yaml#1: NetworkPolicy x/broken: spec.ingress[0].ports[0].port: port 0 is outside 1-65535"), "{err}");
    assert!(
        out.contains("x/ok[Pod] => x/ok2[Pod] : All Connections"),
        "the valid objects are still analysed: {out}"
    );
}

/// A misspelled field (`form:` for `from:`) is an error with exit code 1, not a silent
/// allow-all; another product's policy is a warning.
#[test]
fn typos_fail_and_foreign_policies_warn() {
    let dir = std::env::temp_dir().join(format!("septa-typo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.yaml"), "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{form: [{podSelector: {matchLabels: {app: api}}}]}]\n---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: c, namespace: x}\nspec: {}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: ok, namespace: x}\nspec: {containers: [{name: c, image: i}]}\n").unwrap();
    let (code, _out, err) = septa(&["connlist", dir.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("NetworkPolicy x/db: spec.ingress[0].form: unknown field \"form\""),
        "{err}"
    );
    assert!(
        err.contains("warning:")
            && err.contains("CiliumNetworkPolicy")
            && err.contains("not enforce"),
        "{err}"
    );
}

#[test]
fn usage_errors() {
    let (code, _, err) = septa(&["connlist"]);
    assert_eq!(code, 2);
    assert!(err.contains("<PATHS>"), "{err}");
    let (code, _, err) = septa(&["connlist", "-o", "xml", "policies/examples/shop"]);
    assert_eq!(code, 2);
    assert!(err.contains("xml"), "{err}");
    let (code, out, _) = septa(&["connlist", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("SRC => DST : CONNS"));
}

#[test]
fn flows_without_an_agent_is_a_clear_error() {
    let (code, _, err) = septa(&["flows", "--socket", "/nonexistent/septa.sock"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/septa.sock"), "{err}");
    let (code, _, err) = septa(&["flows", "--verdict", "maybe"]);
    assert_eq!(code, 2);
    assert!(err.contains("maybe"), "{err}");
}

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("septa-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
    fn write(&self, name: &str, text: &str) -> &Self {
        let p = self.0.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
        self
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const TWO_PODS: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: api, namespace: shop, labels: {app: api}}\nspec: {containers: [{name: c, image: i}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop, labels: {app: web}}\nspec: {containers: [{name: c, image: i}]}\n";

const FQDN_POLICY: &str = "apiVersion: septa.dev/v1alpha1\nkind: FqdnPolicy\nmetadata: {name: payments, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: api}}\n  egress:\n  - toFQDNs: [{matchName: API.payments.example}, {matchPattern: '*.cdn.example'}]\n    ports: [{protocol: TCP, port: 443}]\n  resolvers: [10.96.0.10]\n";

/// An FqdnPolicy makes its pods egress-isolated: connlist lists DNS to its resolver and its
/// names with their ports, and nothing else out of the pod; the pods it does not select
/// keep their egress.
#[test]
fn connlist_models_fqdn_policies() {
    let d = TempDir::new("fqdn");
    d.write("pods.yaml", TWO_PODS)
        .write("fqdn.yaml", FQDN_POLICY);
    let (code, out, err) = septa(&["connlist", d.path()]);
    assert_eq!(code, 0, "{err}");
    let api: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("shop/api[Pod] =>"))
        .collect();
    assert_eq!(
        api,
        [
            "shop/api[Pod] => 10.96.0.10-10.96.0.10[External] : TCP 53,UDP 53",
            "shop/api[Pod] => dns:*.cdn.example : TCP 443",
            "shop/api[Pod] => dns:api.payments.example : TCP 443",
        ],
        "{out}"
    );
    assert!(
        out.contains("shop/web[Pod] => shop/api[Pod] : All Connections")
            && out.contains("shop/web[Pod] => 0.0.0.0-255.255.255.255[External] : All Connections"),
        "{out}"
    );
}

/// Without spec.resolvers the pods may query the agent's resolvers: given with
/// --dns-resolver they are an address range; not given, a peer of their own.
#[test]
fn fqdn_policy_default_resolvers() {
    let d = TempDir::new("fqdn-default");
    d.write("pods.yaml", TWO_PODS).write(
        "fqdn.yaml",
        &FQDN_POLICY.replace("  resolvers: [10.96.0.10]\n", ""),
    );
    let (code, out, err) = septa(&["connlist", d.path()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("shop/api[Pod] => dns-resolvers:agent-default : TCP 53,UDP 53\n"),
        "{out}"
    );
    let (_, out, _) = septa(&["connlist", "--dns-resolver", "192.0.2.53", d.path()]);
    assert!(
        out.contains("shop/api[Pod] => 192.0.2.53-192.0.2.53[External] : TCP 53,UDP 53\n")
            && !out.contains("agent-default"),
        "{out}"
    );
}

/// Deleting an FqdnPolicy is a change: its pods get their egress back and lose the names.
#[test]
fn diff_sees_a_deleted_fqdn_policy() {
    let (a, b) = (TempDir::new("fqdn-a"), TempDir::new("fqdn-b"));
    a.write("pods.yaml", TWO_PODS)
        .write("fqdn.yaml", FQDN_POLICY);
    b.write("pods.yaml", TWO_PODS);
    let (code, out, err) = septa(&["diff", a.path(), b.path()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("removed shop/api[Pod] => dns:api.payments.example : TCP 443\n"),
        "{out}"
    );
    assert!(
        out.contains("added   shop/api[Pod] => shop/web[Pod] : All Connections\n"),
        "{out}"
    );
    assert!(
        out.contains("changed shop/api[Pod] => 10.96.0.10-10.96.0.10[External] : TCP 53,UDP 53 -> All Connections\n"),
        "{out}"
    );
}

/// septa's own kinds are validated with the agent's rules: an invalid FqdnPolicy or
/// ThreatFeed is an error naming file, object and field; a valid feed is named in a note.
#[test]
fn septa_objects_are_validated_and_feeds_named() {
    let d = TempDir::new("septa-objects");
    d.write("pods.yaml", TWO_PODS)
        .write("fqdn.yaml", &FQDN_POLICY.replace("port: 443", "port: 70000"))
        .write("feed.yaml", "apiVersion: septa.dev/v1alpha1\nkind: ThreatFeed\nmetadata: {name: drop}\nspec: {url: 'https://feeds.example/drop.txt', appliesTo: [podEgress]}\n---\napiVersion: septa.dev/v1alpha1\nkind: ThreatFeed\nmetadata: {name: Bad_Name}\nspec: {url: 'https://feeds.example/x.txt'}\n---\napiVersion: septa.dev/v1alpha1\nkind: FqdnPolicyy\nmetadata: {name: x, namespace: shop}\nspec: {}\n");
    let (code, out, err) = septa(&["connlist", d.path()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("fqdn.yaml#1: FqdnPolicy shop/payments: spec.egress[0].ports[0].port: 70000 is outside 1-65535"),
        "{err}"
    );
    assert!(
        err.contains("feed.yaml#2: ThreatFeed Bad_Name: metadata.name:"),
        "{err}"
    );
    assert!(
        err.contains("feed.yaml#3: FqdnPolicyy shop/x: kind:"),
        "{err}"
    );
    assert!(
        err.contains("note: ThreatFeed drop (https://feeds.example/drop.txt) drops the addresses listed at podEgress"),
        "{err}"
    );
    assert!(
        out.contains("shop/api[Pod] => shop/web[Pod] : All Connections"),
        "the invalid FqdnPolicy is left out, as the agent leaves it out: {out}"
    );
}

/// `diff --exit-code`: 0 no change, 1 changes, 2 an input has errors.
#[test]
fn diff_exit_code_for_ci() {
    let (a, b) = (TempDir::new("exit-a"), TempDir::new("exit-b"));
    a.write("pods.yaml", TWO_PODS);
    b.write("pods.yaml", TWO_PODS);
    assert_eq!(septa(&["diff", "--exit-code", a.path(), b.path()]).0, 0);
    b.write("fqdn.yaml", FQDN_POLICY);
    let (code, out, _) = septa(&["diff", "--exit-code", a.path(), b.path()]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        septa(&["diff", a.path(), b.path()]).0,
        0,
        "without the flag"
    );
    b.write(
        "bad.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containerz: []}\n",
    );
    assert_eq!(septa(&["diff", "--exit-code", a.path(), b.path()]).0, 2);
    assert_eq!(septa(&["diff", a.path(), b.path()]).0, 1);
}

/// `septa lint` reports every problem of every object, septa's kinds included, with the
/// agent's rules (a ThreatFeed refresh below --feed-min-refresh), and exits 1.
#[test]
fn lint_reports_every_problem() {
    let d = TempDir::new("lint");
    d.write("pods.yaml", TWO_PODS)
        .write("fqdn.yaml", &FQDN_POLICY.replace("port: 443", "port: 70000").replace("matchPattern: '*.cdn.example'", "matchPattern: '*.com'"))
        .write("feed.yaml", "apiVersion: septa.dev/v1alpha1\nkind: ThreatFeed\nmetadata: {name: drop}\nspec: {url: 'ftp://feeds.example/drop.txt', refresh: 30s}\n");
    let (code, out, err) = septa(&["lint", d.path()]);
    assert_eq!(code, 1, "{err}");
    for want in [
        "FqdnPolicy shop/payments: spec.egress[0].toFQDNs[1].matchPattern:",
        "FqdnPolicy shop/payments: spec.egress[0].ports[0].port:",
        "ThreatFeed drop: spec.refresh:",
        "ThreatFeed drop: spec.url:",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
    assert!(out.starts_with("4 errors, 0 warnings"), "{out}");
    let (code, _, err) = septa(&["lint", "--feed-min-refresh", "10s", d.path()]);
    assert_eq!(code, 1);
    assert!(!err.contains("spec.refresh"), "{err}");
    let ok = TempDir::new("lint-ok");
    ok.write("pods.yaml", TWO_PODS)
        .write("fqdn.yaml", FQDN_POLICY);
    let (code, out, err) = septa(&["lint", ok.path()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 FqdnPolicies"), "{out}");
}

/// stdout and stderr whose reader is gone before anything is written.
fn closed_pipes(args: &[&str]) -> i32 {
    let (r1, w1) = std::io::pipe().unwrap();
    let (r2, w2) = std::io::pipe().unwrap();
    drop((r1, r2));
    Command::new(env!("CARGO_BIN_EXE_septa"))
        .args(args)
        .current_dir(root())
        .stdout(w1)
        .stderr(w2)
        .status()
        .unwrap()
        .code()
        .unwrap_or(-1)
}

/// `septa diff a b | head`: a reader that goes away ends the output, never a panic (exit
/// 101), and the exit code is still the command's.
#[test]
fn a_closed_stdout_or_stderr_is_no_panic() {
    let (a, b) = (TempDir::new("pipe-a"), TempDir::new("pipe-b"));
    a.write("pods.yaml", TWO_PODS);
    b.write("pods.yaml", TWO_PODS)
        .write("fqdn.yaml", FQDN_POLICY);
    assert_eq!(closed_pipes(&["connlist", "policies/examples/shop"]), 0);
    assert_eq!(
        closed_pipes(&["diff", "--exit-code", a.path(), b.path()]),
        1
    );
    assert_eq!(closed_pipes(&["connlist", "/nonexistent"]), 1);
    assert_eq!(closed_pipes(&["connlist", "--help"]), 0);
}

/// Usage errors found after parsing exit 2, like the parser's own.
#[test]
fn usage_errors_found_late_exit_2() {
    for args in [
        &["recommend", "--manifests", "policies/examples/shop"][..],
        &[
            "recommend",
            "--manifests",
            "policies/examples/shop",
            "--flows",
            "cli/tests/data/recommend/shop-flows.jsonl",
            "--learn",
            "1h",
        ],
        &[
            "recommend",
            "--manifests",
            "policies/examples/shop",
            "--flows",
            "cli/tests/data/recommend/shop-flows.jsonl",
            "--dns-labels",
            "k8s-app",
        ],
    ] {
        let (code, _, err) = septa(args);
        assert_eq!(code, 2, "{args:?}: {err}");
    }
}

/// A flow file with no record in it is the wrong file: an error, not an empty proposal.
/// The same file given twice is read once.
#[test]
fn recommend_flow_files_wrong_or_repeated() {
    let d = TempDir::new("flows");
    d.write("bad.jsonl", "not json\n{\"also\": \"not a record\"}\n");
    let bad = format!("{}/bad.jsonl", d.path());
    let (code, _, err) = septa(&[
        "recommend",
        "--manifests",
        "cli/tests/data/recommend/shop",
        "--flows",
        &bad,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("bad.jsonl: none of its 2 lines is a flow record"),
        "{err}"
    );
    let f = "cli/tests/data/recommend/shop-flows.jsonl";
    let summary = |args: &[&str]| -> String {
        let (code, _, err) = septa(args);
        assert_eq!(code, 0, "{err}");
        err.lines().next().unwrap().to_owned()
    };
    let once = summary(&[
        "recommend",
        "--manifests",
        "cli/tests/data/recommend/shop",
        "--flows",
        f,
    ]);
    let twice = summary(&[
        "recommend",
        "--manifests",
        "cli/tests/data/recommend/shop",
        "--flows",
        f,
        "--flows",
        &format!("./{f}"),
    ]);
    assert_eq!(once, twice);
}
