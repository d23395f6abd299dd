//! `septa-cni` as a container runtime runs it: environment and stdin in, one JSON document
//! out. Without an agent: malformed and hostile input gets the CNI spec's error codes, VERSION
//! answers, ADD for a namespace that is not there fails naming it, and DEL always succeeds.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use serde_json::Value;

/// Run the plugin; the exit status and the JSON it printed.
fn cni(env: &[(&str, &str)], stdin: &str) -> (bool, Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_septa-cni"))
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.success(), json)
}

const ADD: [(&str, &str); 4] = [
    ("CNI_COMMAND", "ADD"),
    ("CNI_CONTAINERID", "c1"),
    ("CNI_NETNS", "/run/netns/septa-cni-absent"),
    ("CNI_IFNAME", "eth0"),
];

#[test]
fn version_lists_the_spec_versions_spoken() {
    let (ok, v) = cni(&[("CNI_COMMAND", "VERSION")], "");
    assert!(ok, "{v}");
    let versions: Vec<&str> = v["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(versions, cni::plugin::SUPPORTED);
}

#[test]
fn malformed_input_gets_the_spec_error_codes() {
    let (ok, e) = cni(&ADD, "{{{");
    assert!(!ok);
    assert_eq!(e["code"], 6, "undecodable config: {e}");
    let (_, e) = cni(
        &ADD,
        r#"{"cniVersion": "0.2.0", "name": "n", "type": "septa-cni"}"#,
    );
    assert_eq!(e["code"], 1, "unsupported version: {e}");
    let (_, e) = cni(
        &[("CNI_COMMAND", "ADD")],
        r#"{"cniVersion": "1.0.0", "name": "n", "type": "septa-cni"}"#,
    );
    assert_eq!(e["code"], 4, "missing environment: {e}");
    let (_, e) = cni(
        &[("CNI_COMMAND", "FROB")],
        r#"{"cniVersion": "1.0.0", "name": "n", "type": "septa-cni"}"#,
    );
    assert_eq!(e["code"], 4, "unknown command: {e}");
}

#[test]
fn add_for_a_missing_namespace_fails_naming_it_and_del_succeeds() {
    let conf = r#"{"cniVersion": "1.0.0", "name": "n", "type": "septa-cni",
        "agentSocket": "/nonexistent/septa.sock", "timeoutSeconds": 1,
        "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}], "ips": []}}"#;
    let (ok, e) = cni(&ADD, conf);
    assert!(!ok);
    assert_eq!(e["code"], 5, "{e}");
    assert!(
        e["details"]
            .as_str()
            .unwrap()
            .contains("/run/netns/septa-cni-absent"),
        "{e}"
    );
    let mut del = ADD;
    del[0].1 = "DEL";
    let out = Command::new(env!("CARGO_BIN_EXE_septa-cni"))
        .env_clear()
        .envs(del.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(conf.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
