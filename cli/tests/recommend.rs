//! `septa recommend` on a recorded multi-tier application (`tests/data/recommend/`: manifests,
//! a 12-hour learning log with the junk real logs hold, a later 6-hour window): exact YAML,
//! determinism, replay, audit mode, the report, and bad input.
//!
//! Regenerate the golden file after an intended change with `SEPTA_BLESS=1 cargo test -p
//! cli --test recommend`, and review the diff.

use std::{path::PathBuf, process::Command};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn data(p: &str) -> String {
    root()
        .join("tests/data/recommend")
        .join(p)
        .display()
        .to_string()
}

fn septa(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_septa"))
        .arg("recommend")
        .args(args)
        .output()
        .expect("run septa");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("septa-recommend-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn golden(name: &str, got: &str) {
    let path = root().join("tests/golden").join(name);
    if std::env::var_os("SEPTA_BLESS").is_some() {
        std::fs::write(&path, got).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        got == want,
        "{} differs from the output (SEPTA_BLESS=1 to accept):\n{got}",
        path.display()
    );
}

const BASE: [&str; 2] = ["--stable-after", "6h"];

#[test]
fn shop_proposal_is_exact_and_the_replay_denies_nothing() {
    let manifests = data("shop");
    let flows = data("shop-flows.jsonl");
    let replay = data("shop-replay.jsonl");
    let report = tmp("report.md");
    let (code, out, err) = septa(&[
        BASE[0],
        BASE[1],
        "--manifests",
        &manifests,
        "--flows",
        &flows,
        "--replay-flows",
        &replay,
        "--external",
        "fqdn",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    golden("recommend-shop.yaml", &out);

    // What the golden file must say, spelled out.
    for want in [
        // Service traffic lands on the pods' target port: named in ingress, numeric in egress.
        "name: septa-deployment-api",
        "port: api-http",
        "port: pg",
        // Cross-namespace peers: namespaceSelector AND podSelector in one peer.
        "kubernetes.io/metadata.name: data",
        // The CronJob by its template labels, not the per-run job-name.
        "name: septa-cronjob-report",
        // The external API by name, the bare IP by address.
        "matchName: api.payments.example",
        "cidr: 198.51.100.7/32",
        "kind: FqdnPolicy",
    ] {
        assert!(out.contains(want), "missing {want:?}");
    }
    for never in [
        "pod-template-hash",
        "job-name",
        "statefulset.kubernetes.io/pod-name",
        "ghost",
        "192.168.1.10",
    ] {
        assert!(!out.contains(never), "{never:?} must not appear");
    }
    // Skips are counted with their locations; nothing junk became a rule.
    for want in [
        "skipped 1 (malformed), first: ",
        "shop-flows.jsonl:14",
        "skipped 1 (unknown_workload)",
        "shop/ghost[Deployment] is not in the manifests",
        "skipped 1 (bad_time)",
        "skipped 12 (denied)",
        "skipped 12 (host)",
        "replay: 120 connections, 0 denied (false-denial rate 0.0000)",
    ] {
        assert!(err.contains(want), "stderr lacks {want:?}:\n{err}");
    }
    let r = std::fs::read_to_string(&report).unwrap();
    for want in [
        "## shop/api[Deployment] — stable",
        "| ingress 0 | frontend[Deployment], report[CronJob] | TCP api-http (9000) |",
        "Takes away or narrows",
        "egress to 198.51.100.7 has no DNS name",
        "false-denial rate 0.0000",
    ] {
        assert!(r.contains(want), "report lacks {want:?}:\n{r}");
    }
    // The YAML loads back as valid NetworkPolicies (what kubectl would apply).
    let (cluster, problems) = policies::load::load_str("proposal.yaml", &out);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(cluster.policies.len(), 6);
    assert!(cluster.policies.iter().all(|p| !p.audit));
    assert_eq!(cluster.custom.len(), 1, "one FqdnPolicy (the API's names)");
}

#[test]
fn output_is_stable_across_runs_and_input_order() {
    let manifests = data("shop");
    let flows = std::fs::read_to_string(data("shop-flows.jsonl")).unwrap();
    let mut lines: Vec<&str> = flows.lines().collect();
    lines.reverse();
    let reversed = tmp("reversed.jsonl");
    std::fs::write(&reversed, lines.join("\n")).unwrap();
    let a = septa(&[
        BASE[0],
        BASE[1],
        "--manifests",
        &manifests,
        "--flows",
        &data("shop-flows.jsonl"),
    ]);
    let b = septa(&[
        BASE[0],
        BASE[1],
        "--manifests",
        &manifests,
        "--flows",
        &data("shop-flows.jsonl"),
    ]);
    let c = septa(&[
        BASE[0],
        BASE[1],
        "--manifests",
        &manifests,
        "--flows",
        reversed.to_str().unwrap(),
    ]);
    assert_eq!(a.0, 0, "{}", a.2);
    assert_eq!(a.1, b.1);
    assert_eq!(a.1, c.1, "record order changed the proposal");
    // Without names the two API addresses are siblings and merge into one /31.
    assert!(a.1.contains("cidr: 93.184.216.34/31"), "{}", a.1);
}

#[test]
fn audit_mode_is_an_annotation_the_engine_honours() {
    let (code, out, err) = septa(&[
        "--manifests",
        &data("shop"),
        "--flows",
        &data("shop-flows.jsonl"),
        "--audit",
    ]);
    assert_eq!(code, 0, "{err}");
    let (cluster, problems) = policies::load::load_str("proposal.yaml", &out);
    assert!(problems.is_empty(), "{problems:?}");
    assert!(!cluster.policies.is_empty());
    assert!(
        cluster.policies.iter().all(|p| p.audit),
        "every policy in audit mode"
    );
    assert_eq!(
        out.matches("septa.dev/mode: audit").count(),
        cluster.policies.len()
    );
}

#[test]
fn replay_windows_and_unseen_traffic() {
    // Learn 6 h, replay the next 6 h of the same log: the hourly pattern repeats.
    let (code, _, err) = septa(&[
        "--manifests",
        &data("shop"),
        "--flows",
        &data("shop-flows.jsonl"),
        "--learn",
        "6h",
        "--replay",
        "6h",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("0 denied"), "{err}");

    // A replay window with a connection never learned: the frontend calling the cache.
    let mut replay = std::fs::read_to_string(data("shop-replay.jsonl")).unwrap();
    let mut v: serde_json::Value = replay
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| {
            v["kind"] == "new"
                && v["direction"] == "egress"
                && v["source"]["pod"] == "frontend-7d9f-a"
        })
        .unwrap();
    v["destination"] = serde_json::json!({"ip": "10.0.2.20", "port": 6379, "identity": 300,
        "namespace": "data", "pod": "cache-6f8d-a", "workload": "Deployment/cache"});
    replay.push_str(&serde_json::to_string(&v).unwrap());
    replay.push('\n');
    let path = tmp("replay-new.jsonl");
    std::fs::write(&path, replay).unwrap();
    let (code, _, err) = septa(&[
        "--manifests",
        &data("shop"),
        "--flows",
        &data("shop-flows.jsonl"),
        "--replay-flows",
        path.to_str().unwrap(),
    ]);
    assert_eq!(code, 3, "a replay with denials exits 3:\n{err}");
    assert!(
        err.contains("would deny: shop/frontend[Deployment] -> data/cache[Deployment] TCP/6379 (1 connections)"),
        "{err}"
    );
}

#[test]
fn html_report_is_escaped_and_complete() {
    let report = tmp("report.html");
    let (code, _, err) = septa(&[
        "--manifests",
        &data("shop"),
        "--flows",
        &data("shop-flows.jsonl"),
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<h2>shop/api[Deployment] — "), "{html}");
    assert!(html.contains("<table>"));
    // Workload names carry brackets; arrows are text, not markup.
    assert!(html.contains("→"));
    assert!(
        !html.contains("<li>shop/frontend[Deployment] -> "),
        "raw '>' must be escaped"
    );
}

#[test]
fn bad_input_gets_clear_errors_or_counted_skips() {
    // Missing flow file: the path is named.
    let (code, _, err) = septa(&[
        "--manifests",
        &data("shop"),
        "--flows",
        "/nonexistent/flows.jsonl",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/flows.jsonl"), "{err}");
    // No flow source at all: a usage error.
    let (code, _, err) = septa(&["--manifests", &data("shop")]);
    assert_eq!(code, 2);
    assert!(err.contains("no flow records given"), "{err}");
    // Broken manifests: refused (a proposal from partial manifests could be wrong).
    let bad = tmp("bad-manifests.yaml");
    std::fs::write(&bad, "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\nspec: {podSelector: {}, ingress: [{ports: [{port: 70000}]}]}\n").unwrap();
    let (code, _, err) = septa(&[
        "--manifests",
        bad.to_str().unwrap(),
        "--flows",
        &data("shop-flows.jsonl"),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("bad-manifests.yaml"), "{err}");
    // A file of garbage, truncated records and binary noise and nothing else: the wrong file.
    let junk = tmp("junk.jsonl");
    let mut j = b"{\"version\": 1, \"time\": \"2026-11-20T00:00:00Z\"\nnot json\n\x00\xff\xfe\n{\"version\": 2}\n".to_vec();
    j.extend(std::iter::repeat_n(b'x', 100_000));
    std::fs::write(&junk, &j).unwrap();
    let (code, _, err) = septa(&[
        "--manifests",
        &data("shop"),
        "--flows",
        junk.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("none of its 5 lines is a flow record"),
        "{err}"
    );
    // The same garbage after one record of an unknown workload: every bad line counted, no
    // proposal.
    let rec = std::fs::read_to_string(data("shop-flows.jsonl")).unwrap();
    let first = rec
        .lines()
        .next()
        .unwrap()
        .replace("\"shop\"", "\"elsewhere\"");
    let mut j2 = format!("{first}\n").into_bytes();
    j2.extend(j);
    std::fs::write(&junk, j2).unwrap();
    let (code, out, err) = septa(&[
        "--manifests",
        &data("shop"),
        "--flows",
        junk.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("skipped 5 (malformed)"), "{err}");
    assert!(err.contains("0 proposals"), "{err}");
    assert!(
        err.contains("never seen in the flows; no proposal"),
        "{err}"
    );
    assert!(!out.contains("kind: NetworkPolicy"));
    // Bad flags, on otherwise good input: (flags, exit code, what stderr names).
    for (flags, want_code, needle) in [
        (["--learn", "6h"], 2, "--learn and --replay go together"),
        (["--dns-labels", "nokey"], 2, "--dns-labels"),
        // clap rejects an out-of-range prefix.
        (["--max-prefix-v4", "2"], 2, "max-prefix-v4"),
    ] {
        let (shop, flows) = (data("shop"), data("shop-flows.jsonl"));
        let mut args = vec!["--manifests", &shop, "--flows", &flows];
        args.extend(flags);
        let (code, _, err) = septa(&args);
        assert_eq!(code, want_code, "{flags:?}: {err}");
        assert!(err.contains(needle), "{flags:?}: {err}");
    }
}

/// Today's FqdnPolicies count in the diff against today: the api's egress is already
/// isolated by one, so the proposal takes away less than it would from an unisolated api.
#[test]
fn todays_fqdn_policies_count_in_the_diff() {
    let dir = tmp("today-fqdn");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(data("shop/manifests.yaml"), dir.join("manifests.yaml")).unwrap();
    let run = |manifests: &std::path::Path| {
        let req = cli::recommend::Request {
            manifests: vec![manifests.to_owned()],
            flows: vec![cli::recommend::FlowSource::File(
                data("shop-flows.jsonl").into(),
            )],
            options: Default::default(),
            learn_window: None,
            replay_window: None,
            replay_flows: vec![],
        };
        cli::recommend::run(&req).unwrap().changes
    };
    let without = run(&dir);
    std::fs::write(dir.join("fqdn.yaml"), "apiVersion: septa.dev/v1alpha1\nkind: FqdnPolicy\nmetadata: {name: api-out, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: api}}\n  egress: [{toFQDNs: [{matchName: api.payments.example}], ports: [{port: 443}]}]\n  resolvers: [10.96.0.10]\n").unwrap();
    let with = run(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    let api_egress_removed = |changes: &[policies::connlist::Change]| {
        changes
            .iter()
            .filter(|c| c.src.to_string() == "shop/api[Deployment]" && c.effect() == "removed")
            .count()
    };
    assert!(
        api_egress_removed(&with) < api_egress_removed(&without),
        "with: {with:#?}\nwithout: {without:#?}"
    );
}
