//! `septa-cni` as a container runtime runs it: environment and stdin in, one JSON document
//! out. Without an agent: malformed and hostile input gets the CNI spec's error codes, VERSION
//! answers, ADD for a namespace that is not there fails naming it, a misspelt key is named, and
//! DEL always succeeds and prints nothing. `--version` answers without reading stdin.

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

/// Run the plugin with arguments; stdin is closed unread or fed `stdin`.
fn raw(args: &[&str], env: &[(&str, &str)], stdin: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_septa-cni"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A closed pipe is fine: --version must not need stdin.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

#[test]
fn version_flag_help_and_bad_arguments() {
    // With CNI_COMMAND set and stdin left open, --version still answers without reading it.
    let mut child = Command::new(env!("CARGO_BIN_EXE_septa-cni"))
        .arg("--version")
        .env("CNI_COMMAND", "ADD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let _open = child.stdin.take();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("septa-cni {}\n", env!("CARGO_PKG_VERSION"))
    );
    let help = raw(&["--help"], &[], "");
    assert!(help.status.success());
    let text = String::from_utf8(help.stdout).unwrap();
    assert!(text.contains("chained CNI plugin") && text.contains("socketWaitSeconds"));
    for bad in [&["--frob"][..], &["--version", "--help"], &["ADD"]] {
        let out = raw(bad, &[("CNI_COMMAND", "VERSION")], "");
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(out.stdout.is_empty(), "{bad:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("usage: septa-cni"));
    }
}

#[test]
fn del_exits_0_and_prints_nothing_whatever_it_is_given() {
    for (env, stdin) in [
        (&[("CNI_COMMAND", "DEL")][..], ""),
        (&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c1")], "{{{"),
        (
            &[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c1")],
            r#"{"cniVersion": "0.1.0", "agentSockte": 3}"#,
        ),
        (
            &ADD[1..],
            r#"{"cniVersion": "1.0.0", "name": "n", "type": "septa-cni", "agentSocket": "/nonexistent/s.sock", "timeoutSeconds": 1}"#,
        ),
    ] {
        let mut env = env.to_vec();
        if !env.iter().any(|(k, _)| *k == "CNI_COMMAND") {
            env.push(("CNI_COMMAND", "DEL"));
        }
        let out = raw(&[], &env, stdin);
        assert!(out.status.success(), "{env:?} {stdin}");
        assert!(
            out.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn a_misspelt_key_is_invalid_config_naming_it() {
    let (ok, e) = cni(
        &ADD,
        r#"{"cniVersion": "1.0.0", "name": "n", "type": "septa-cni", "agentSockte": "/run/x.sock"}"#,
    );
    assert!(!ok);
    assert_eq!(e["code"], 7, "{e}");
    assert!(e["msg"].as_str().unwrap().contains("agentSockte"), "{e}");
}
