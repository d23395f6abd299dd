//! Prometheus metrics (the `metrics` facade and its Prometheus renderer), served by the
//! agent's health listener at `GET /metrics`.
//!
//! Kernel counters are read from the per-CPU stats map and exported as absolute counters;
//! flows are counted from the events as they arrive; the reconciler records its own work.

use dataplane_common::stats;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use dataplane::{reconcile::MapState, Datapath};

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
        "septa_dns_kernel_queries_copied_total",
        "DNS queries of FQDN pods copied to the agent (answers are learned only if they match one)."
    );
    describe_counter!(
        "septa_dns_kernel_over_budget_total",
        "DNS queries not copied and answers delivered unheld because a pod exceeded its DNS budget."
    );
    describe_counter!(
        "septa_icmp_related_total",
        "ICMP errors passed because they quote a tracked connection."
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
    for (name, help) in [
        ("septa_dns_kernel_answers_total", "DNS answers to FQDN pods: held for the agent, lost (ring full), not held (fragmented or too large)."),
        ("septa_fqdn_connections_total", "New egress connections of FQDN pods: allowed by an FQDN entry, or denied to an address no DNS answer gave."),
        ("septa_dns_answers_total", "DNS answers the agent handled, by result (learned, or why not: unsolicited, mismatched, late, untrusted_resolver, ...)."),
        ("septa_dns_queries_total", "DNS query copies the agent handled, by result."),
        ("septa_fqdn_addresses_added_total", "Addresses added to the FQDN allowlist from DNS answers."),
        ("septa_fqdn_entries_expired_total", "FQDN allowlist entries removed after their TTL (and grace)."),
        ("septa_fqdn_evicted_total", "Addresses evicted because a (pod, name) had too many."),
        ("septa_dns_reinject_errors_total", "DNS answers that could not be re-injected."),
        ("septa_feed_refreshes_total", "Threat-feed fetches, by feed and result (updated, not_modified)."),
        ("septa_feed_refresh_errors_total", "Refused threat-feed refreshes, by feed and reason; the last good list stays."),
        ("septa_feed_drops_total", "Packets a threat feed dropped (XDP and TC)."),
        ("septa_feed_audits_total", "Packets a threat feed in audit mode let through."),
    ] {
        describe_counter!(name, help);
    }
    for (name, help) in [
        ("septa_fqdn_entries", "Entries in the FQDN allowlist."),
        (
            "septa_dns_pending_queries",
            "DNS queries of FQDN pods waiting for their answer.",
        ),
        (
            "septa_feed_entries",
            "Entries of a threat feed's list in force.",
        ),
        (
            "septa_feed_last_refresh_timestamp_seconds",
            "When a threat feed was last fetched successfully (Unix time).",
        ),
        (
            "septa_feed_bad_lines",
            "Bad lines in a threat feed's last body.",
        ),
        (
            "septa_blocklist_entries",
            "Prefixes in the threat-feed tries, by family.",
        ),
        (
            "septa_feed_protected_skipped",
            "Listed entries left out because they overlap a protected range.",
        ),
    ] {
        describe_gauge!(name, help);
    }
    describe_histogram!(
        "septa_blocklist_update_duration_seconds",
        Unit::Seconds,
        "Merge, diff and write of one threat-feed blocklist change."
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
    describe_counter!(
        "septa_accept_errors_total",
        "Failed accepts on the agent's listeners (health, socket), e.g. out of file descriptors."
    );
    describe_counter!(
        "septa_health_connections_evicted_total",
        "Idle health connections closed to make room for new ones."
    );
    describe_counter!(
        "septa_requests_dropped_total",
        "Requests dropped unserved because their client hung up first, by operation."
    );
    describe_counter!(
        "septa_endpoints_forgotten_total",
        "Endpoints forgotten because their host interface disappeared without a DEL."
    );
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
    describe_gauge!(
        "septa_manifest_load_stalled",
        "1 while a read of the manifests directory has taken longer than its 10 s deadline."
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
    for (what, i) in [
        ("held", stats::DNS_HELD),
        ("lost", stats::DNS_LOST),
        ("not_held", stats::DNS_NOT_HELD),
    ] {
        counter!("septa_dns_kernel_answers_total", "result" => what).absolute(v(i));
    }
    counter!("septa_dns_kernel_queries_copied_total").absolute(v(stats::DNS_QUERIES));
    counter!("septa_dns_kernel_over_budget_total").absolute(v(stats::DNS_OVER_BUDGET));
    counter!("septa_icmp_related_total").absolute(v(stats::ICMP_RELATED));
    counter!("septa_fqdn_connections_total", "result" => "allowed")
        .absolute(v(stats::FQDN_ALLOWED));
    counter!("septa_fqdn_connections_total", "result" => "denied_unresolved")
        .absolute(v(stats::FQDN_DENIED));
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
