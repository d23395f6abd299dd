//! Every metric the agent can emit, rendered as the agent renders it, passes
//! `promtool check metrics` (help text, type, names, units).

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
    testbed::node::promtool_check(&text);
}
