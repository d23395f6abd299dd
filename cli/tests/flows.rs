//! `septa flows` against a stand-in agent socket that answers every query with the same
//! records, unfiltered: what is shown is what the CLI's own filters and formats make of them.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixListener,
    path::PathBuf,
    process::Command,
};

fn record(
    time: &str,
    kind: &str,
    verdict: &str,
    src: (&str, &str, &str),
    extra: serde_json::Value,
) -> String {
    let mut r = serde_json::json!({
        "version": 1, "time": time, "start": time, "kind": kind, "verdict": verdict,
        "drop_reason": null, "direction": "egress", "ip_version": 4, "protocol": "TCP",
        "source": {"ip": "10.0.0.5", "port": 40000, "identity": 300, "namespace": src.0, "pod": src.1,
                   "workload": src.2, "labels": {"app": "api", "tier": "backend"}},
        "destination": {"ip": "198.51.100.7", "port": 443, "identity": 2, "entity": "world"},
        "decided_by": "default-allow", "policy": null, "rule_id": 0,
        "packets": {"forward": 3, "reverse": 2}, "bytes": {"forward": 300, "reverse": 200},
        "tcp_flags": [], "dns_names": [], "node": "n1"
    });
    for (k, v) in extra.as_object().unwrap() {
        r[k] = v.clone();
    }
    r.to_string()
}

/// A socket path served by a thread: each connection reads one request line and gets
/// `records`, then the blank line that ends a backlog.
fn stand_in_agent(tag: &str, records: Vec<String>) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("septa-flows-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("septa.sock");
    let l = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut req = String::new();
            let _ = BufReader::new(&s).read_line(&mut req);
            for r in &records {
                let _ = writeln!(s, "{r}");
            }
            let _ = writeln!(s);
        }
    });
    path
}

fn flows(socket: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_septa"))
        .arg("flows")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sample() -> Vec<String> {
    vec![
        record(
            "2026-12-02T03:00:00.000Z",
            "new",
            "forwarded",
            ("shop", "api-1", "Deployment/api"),
            serde_json::json!({}),
        ),
        record(
            "2026-12-02T03:05:00.000Z",
            "deny",
            "dropped",
            ("other", "api-1", "Deployment/api"),
            serde_json::json!({"decided_by": "threat-feed", "feed": "spamhaus-drop", "drop_reason": "blocklisted"}),
        ),
        record(
            "2026-12-02T03:10:00.000Z",
            "new",
            "audit",
            ("shop", "web-1", "Deployment/web"),
            serde_json::json!({"decided_by": "rule", "policy": {"namespace": "shop", "name": "lockdown", "direction": "egress", "rule_index": 0},
                               "source": {"ip": "10.0.0.6", "port": 40001, "identity": 301, "namespace": "shop", "pod": "web-1", "workload": "Deployment/web", "labels": {"app": "web"}}}),
        ),
        record(
            "2026-12-02T03:15:00.000Z",
            "update",
            "forwarded",
            ("shop", "api-2", "StatefulSet/api"),
            serde_json::json!({}),
        ),
    ]
}

fn times(out: &str) -> Vec<&str> {
    out.lines().map(|l| &l[14..19]).collect()
}

#[test]
fn filters_pod_workload_label_since_and_every_kind() {
    let sock = stand_in_agent("filters", sample());
    let (code, out, err) = flows(&sock, &["--pod", "shop/api-1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(times(&out), ["00:00"], "{out}");
    assert_eq!(
        times(&flows(&sock, &["--pod", "api-1"]).1),
        ["00:00", "05:00"]
    );
    assert_eq!(
        times(&flows(&sock, &["--workload", "Deployment/api"]).1),
        ["00:00", "05:00"]
    );
    assert_eq!(
        times(&flows(&sock, &["--workload", "api"]).1),
        ["00:00", "05:00", "15:00"]
    );
    assert_eq!(times(&flows(&sock, &["--label", "app=web"]).1), ["10:00"]);
    assert_eq!(
        times(
            &flows(
                &sock,
                &[
                    "--label",
                    "app=api",
                    "--label",
                    "tier=backend",
                    "--namespace",
                    "shop"
                ]
            )
            .1
        ),
        ["00:00", "15:00"]
    );
    assert_eq!(
        times(&flows(&sock, &["--since", "2026-12-02T03:06:00Z"]).1),
        ["10:00", "15:00"]
    );
    assert_eq!(times(&flows(&sock, &["--kind", "update"]).1), ["15:00"]);
    assert_eq!(
        flows(&sock, &["--since", "10000d"]).1.lines().count(),
        4,
        "a duration counts back from now"
    );
    for bad in [
        &["--label", "app"][..],
        &["--since", "100000d"],
        &["--since", "yesterday"],
    ] {
        let (code, _, err) = flows(&sock, bad);
        assert_eq!(code, 2, "{bad:?}: {err}");
    }
}

#[test]
fn lines_show_direction_feed_and_audit_policy() {
    let sock = stand_in_agent("lines", sample());
    let (code, out, err) = flows(&sock, &[]);
    assert_eq!(code, 0, "{err}");
    let l: Vec<&str> = out.lines().collect();
    assert!(
        l[0].contains(" egress ")
            && l[0].contains("shop/api-1:40000 -> 198.51.100.7:443(world) by default-allow"),
        "{out}"
    );
    assert!(
        l[1].contains("by threat-feed spamhaus-drop (blocklisted)"),
        "{out}"
    );
    assert!(l[2].contains("by shop/lockdown egress[0] (audit)"), "{out}");
}

#[test]
fn csv_is_csv() {
    let sock = stand_in_agent("csv", sample());
    let (code, out, err) = flows(&sock, &["-o", "csv"]);
    assert_eq!(code, 0, "{err}");
    let mut r = csv::Reader::from_reader(out.as_bytes());
    assert_eq!(
        r.headers().unwrap().iter().collect::<Vec<_>>(),
        cli::flows::CSV_HEADER
    );
    let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
    assert_eq!(rows.len(), 4);
    assert_eq!(&rows[1][9], "spamhaus-drop");
    assert_eq!(&rows[2][8], "shop/lockdown egress[0]");
    assert_eq!((&rows[0][11], &rows[0][12]), ("5", "500"));
}

#[test]
fn an_absent_socket_says_how_to_name_it() {
    let (code, _, err) = flows(std::path::Path::new("/nonexistent/septa.sock"), &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("/nonexistent/septa.sock") && err.contains("--socket"),
        "{err}"
    );
}
