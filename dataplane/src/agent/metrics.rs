//! Prometheus metrics (the `metrics` facade and its Prometheus renderer), served by the
//! agent's health listener at `GET /metrics`.
//!
//! Kernel counters are read from the per-CPU stats map and exported as absolute counters;
//! flows are counted from the events as they arrive; the reconciler records its own work.

use dataplane_common::stats;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::{reconcile::MapState, Datapath};

/// Install the recorder (once per process) and describe every metric.
pub fn install() -> Option<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0])
        .ok()?
        .install_recorder()
        .ok()?;
    describe_counter!(
        "septa_datapath_packets_total",
        "Packets the data path decided, by verdict."
    );
    describe_counter!(
        "septa_datapath_drops_total",
        "Packets dropped for reasons other than policy, by reason."
    );
    describe_counter!(
        "septa_datapath_events_lost_total",
        "Kernel events lost because the ring buffer was full."
    );
    describe_counter!(
        "septa_datapath_deny_events_suppressed_total",
        "Denial events not emitted because of per-flow rate limiting."
    );
    describe_counter!(
        "septa_conntrack_operations_total",
        "Conntrack entries created, re-checked after a policy change, and revoked."
    );
    describe_counter!(
        "septa_xdp_packets_total",
        "Packets seen by XDP on host interfaces."
    );
    describe_counter!(
        "septa_flows_total",
        "Flow events, by kind, verdict, direction and drop reason."
    );
    describe_counter!(
        "septa_flow_log_write_errors_total",
        "Flow records that could not be written to the flow log."
    );
    describe_counter!(
        "septa_ipfix_export_errors_total",
        "IPFIX messages that could not be sent."
    );
    describe_counter!(
        "septa_ipfix_records_total",
        "Flow records exported over IPFIX."
    );
    describe_counter!(
        "septa_rule_hits_total",
        "Connections each policy rule allowed (one series per compiled rule)."
    );
    describe_gauge!(
        "septa_conntrack_entries",
        "Conntrack entries after the last sweep."
    );
    describe_gauge!(
        "septa_flow_aggregate_overflow",
        "Records passed unaggregated because the group table was full."
    );
    describe_counter!(
        "septa_flow_query_records_skipped_total",
        "Records a slow `septa flows --follow` client missed."
    );
    describe_counter!("septa_reconciles_total", "Map reconciliations, by result.");
    describe_histogram!(
        "septa_map_update_duration_seconds",
        Unit::Seconds,
        "Time to compile and write one change to the maps."
    );
    describe_gauge!("septa_policy_map_entries", "Entries in the policy map.");
    describe_gauge!("septa_ipcache_entries", "Entries in the ipcache.");
    describe_gauge!("septa_endpoints", "Endpoints in the data path.");
    describe_gauge!(
        "septa_policy_revision",
        "The policy revision established connections are checked against."
    );
    describe_gauge!(
        "septa_manifest_errors",
        "Errors in the last load of the manifests directory (0 when applied)."
    );
    Some(handle)
}

/// Export the kernel's counters.
pub fn scrape(dp: &Datapath) {
    let Ok(s) = dp.stats() else { return };
    let v = |i: u32| s[i as usize];
    for (verdict, i) in [
        ("forwarded", stats::FORWARDED),
        ("dropped", stats::DROPPED),
        ("audit", stats::AUDIT),
    ] {
        counter!("septa_datapath_packets_total", "verdict" => verdict).absolute(v(i));
    }
    for (reason, i) in [
        ("malformed", stats::MALFORMED),
        ("fragment_unknown", stats::FRAG_UNKNOWN),
        ("no_endpoint", stats::NO_ENDPOINT),
        ("spoofed_source", stats::SPOOFED),
        ("blocklisted", stats::BLOCKLISTED),
    ] {
        counter!("septa_datapath_drops_total", "reason" => reason).absolute(v(i));
    }
    counter!("septa_datapath_events_lost_total").absolute(v(stats::EVENTS_LOST));
    counter!("septa_datapath_deny_events_suppressed_total")
        .absolute(v(stats::DENY_EVENTS_SUPPRESSED));
    for (op, i) in [
        ("created", stats::CT_CREATED),
        ("revalidated", stats::CT_REVALIDATED),
        ("revoked", stats::CT_REVOKED),
    ] {
        counter!("septa_conntrack_operations_total", "operation" => op).absolute(v(i));
    }
    counter!("septa_xdp_packets_total").absolute(v(stats::XDP_SEEN));
    if let Ok(cfg) = dp.config() {
        gauge!("septa_policy_revision").set(cfg.policy_revision as f64);
    }
}

/// Record the map sizes after a reconcile.
pub fn map_sizes(state: &MapState) {
    gauge!("septa_policy_map_entries").set(state.policy.len() as f64);
    gauge!("septa_ipcache_entries").set(state.ipcache.len() as f64);
    gauge!("septa_endpoints").set(state.endpoints.len() as f64);
}
