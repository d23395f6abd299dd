//! Every metric the agent can emit, rendered as the agent renders it, passes
//! `promtool check metrics` (help text, type, names, units).

use std::{
    io::Write,
    process::{Command, Stdio},
};

use agent::metrics::{install, Kind, METRICS};

#[test]
fn every_metric_the_agent_can_emit_passes_promtool() {
    let handle = install().expect("the recorder installs once");
    for &(name, kind, _) in METRICS {
        match kind {
            Kind::Counter => metrics::counter!(name, "result" => "ok").increment(1),
            Kind::Gauge => metrics::gauge!(name).set(1.0),
            Kind::Histogram => metrics::histogram!(name).record(0.002),
        }
    }
    let text = handle.render();
    for &(name, _, _) in METRICS {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} rendered without help text:\n{text}"
        );
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt package prometheus) must be installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
