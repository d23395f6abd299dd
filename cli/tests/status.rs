//! `septa status` against a stand-in agent socket that answers every request with one given
//! line: what is printed and the exit code are what the CLI makes of the agent's answer.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixListener,
    path::PathBuf,
    process::Command,
};

use serde_json::json;

/// A socket served by a thread that reads one request line per connection and answers
/// `answer` (written as is: no newline is added).
fn stand_in_agent(tag: &str, answer: Vec<u8>) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("septa-status-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("septa.sock");
    let l = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut req = String::new();
            let _ = BufReader::new(&s).read_line(&mut req);
            assert_eq!(req.trim(), r#"{"op":"status"}"#);
            let _ = s.write_all(&answer);
        }
    });
    path
}

fn status(socket: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_septa"))
        .arg("status")
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

fn answer(v: serde_json::Value) -> Vec<u8> {
    let mut line = v.to_string().into_bytes();
    line.push(b'\n');
    line
}

fn node(cni_present: bool) -> serde_json::Value {
    json!({
        "node": "node-2", "source": "kubernetes", "ready": true, "revision": 41,
        "enforced": 12, "adopted": 3,
        "cni": {"mode": "splice", "file": "/host/etc/cni/net.d/10-calico.conflist", "present": cni_present},
        "feeds": [{"name": "spamhaus-drop", "entries": 1203}],
        "dns": {"names": 4, "addresses": 9}
    })
}

#[test]
fn a_healthy_node_exits_0() {
    let sock = stand_in_agent("ok", answer(json!({"ok": true, "node": node(true)})));
    let (code, out, err) = status(&sock, &[]);
    assert_eq!(code, 0, "{out}{err}");
    for want in [
        "node-2 (source: kubernetes)",
        "enforcing, policy revision 41",
        "septa-cni entry present in /host/etc/cni/net.d/10-calico.conflist",
        "12 enforced (3 adopted)",
        "spamhaus-drop: 1203 ranges blocked",
        "4 names allowed by FqdnPolicies, 9 addresses learned",
    ] {
        assert!(out.contains(want), "{want:?} in:\n{out}");
    }
    let (code, out, _) = status(&sock, &["--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["node"]["revision"], 41);
}

#[test]
fn a_node_that_needs_attention_exits_1_and_says_why() {
    let sock = stand_in_agent(
        "attention",
        answer(json!({"ok": true, "node": node(false), "unadopted": [
            {"pod": "shop/legacy-7d9", "reason": "10.244.1.9 is held by two network namespaces"}
        ]})),
    );
    let (code, out, _) = status(&sock, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("septa-cni entry NOT in place"), "{out}");
    assert!(
        out.contains("shop/legacy-7d9: 10.244.1.9 is held by two network namespaces"),
        "{out}"
    );
}

#[test]
fn no_agent_or_a_bad_answer_exits_2_naming_the_socket() {
    let (code, _, err) = status(std::path::Path::new("/nonexistent/septa.sock"), &[]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/septa.sock"), "{err}");
    for (tag, bad) in [
        ("garbage", b"not json\n".to_vec()),
        (
            "unknown-field",
            answer(json!({"ok": true, "node": {"nodes": "x"}})),
        ),
        ("truncated", br#"{"ok": true, "node": {"node": "n"#.to_vec()),
        // An answer that never ends is read up to a bound, not into memory whole.
        ("endless", vec![b'x'; 4 << 20]),
    ] {
        let sock = stand_in_agent(tag, bad);
        let (code, out, err) = status(&sock, &[]);
        assert_eq!(code, 2, "{tag}: {out}{err}");
        assert!(err.contains("septa.sock"), "{tag}: {err}");
    }
}

/// A socket bound by a process of another user (one that took the agent's place while it was
/// down) is not believed: exit 2, naming the uid.
#[test]
fn a_socket_served_by_another_user_is_not_believed() {
    use std::os::unix::{fs::PermissionsExt, process::CommandExt};
    // Tests run as root (scripts/setup.sh); the stand-in runs as nobody, with Debian's python3.
    let dir = std::env::temp_dir().join(format!("septa-status-foreign-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let path = dir.join("septa.sock");
    let serve = "import socket, sys\n\
                 s = socket.socket(socket.AF_UNIX)\n\
                 s.bind(sys.argv[1])\n\
                 s.listen()\n\
                 while True:\n\
                 \x20   c, _ = s.accept()\n\
                 \x20   c.recv(100)\n\
                 \x20   c.sendall(b'{\"ok\": true}\\n')\n";
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", serve])
        .arg(&path)
        .uid(65534)
        .gid(65534)
        .spawn()
        .expect("/usr/bin/python3 (Debian's python3-minimal)");
    let bound = (0..500).any(|_| {
        path.exists() || {
            std::thread::park_timeout(std::time::Duration::from_millis(10));
            false
        }
    });
    let (code, out, err) = status(&path, &[]);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(bound, "the stand-in never bound {}", path.display());
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("uid 65534"), "{err}");
}
