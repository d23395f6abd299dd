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
