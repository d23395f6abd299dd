//! Prometheus metrics (the `metrics` facade and its Prometheus renderer), served by the
//! agent's health listener at `GET /metrics`.
//!
//! Kernel counters are read from the per-CPU stats map and exported as absolute counters;
//! flows are counted from the events as they arrive; the reconciler records its own work.

use dataplane_common::stats;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use dataplane::{reconcile::MapState, Datapath};

/// What a metric is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    /// In seconds.
    Histogram,
}

/// Every metric the agent emits, with its help text: `install` describes each one, and a test
/// holds this list, the code that records them and the README's list to the same names.
pub const METRICS: &[(&str, Kind, &str)] = &[
    ("septa_datapath_packets_total", Kind::Counter, "Packets the data path decided, by verdict."),
    ("septa_datapath_drops_total", Kind::Counter, "Packets dropped for reasons other than policy, by reason."),
    ("septa_dns_kernel_queries_copied_total", Kind::Counter, "DNS queries of FQDN pods copied to the agent (answers are learned only if they match one)."),
    ("septa_dns_kernel_over_budget_total", Kind::Counter, "DNS queries not copied and answers delivered unheld because a pod exceeded its DNS budget."),
    ("septa_icmp_related_total", Kind::Counter, "ICMP errors passed because they quote a tracked connection."),
    ("septa_datapath_events_lost_total", Kind::Counter, "Kernel events lost because the ring buffer was full."),
    ("septa_datapath_deny_events_suppressed_total", Kind::Counter, "Denial events not emitted because of per-flow rate limiting."),
    ("septa_conntrack_operations_total", Kind::Counter, "Conntrack entries created, re-checked after a policy change, and revoked."),
    ("septa_xdp_packets_total", Kind::Counter, "Packets seen by XDP on host interfaces."),
    ("septa_blocklist_update_duration_seconds", Kind::Histogram, "Merge, diff and write of one threat-feed blocklist change."),
    ("septa_flows_total", Kind::Counter, "Flow events, by kind, verdict, direction and drop reason."),
    ("septa_flow_log_write_errors_total", Kind::Counter, "Flow records that could not be written to the flow log."),
    ("septa_ipfix_export_errors_total", Kind::Counter, "IPFIX messages that could not be sent."),
    ("septa_ipfix_records_total", Kind::Counter, "Flow records exported over IPFIX."),
    ("septa_rule_hits_total", Kind::Counter, "Connections each policy rule allowed (one series per compiled rule)."),
    ("septa_conntrack_entries", Kind::Gauge, "Conntrack entries after the last sweep."),
    ("septa_flow_aggregate_overflow", Kind::Gauge, "Records passed unaggregated because the group table was full."),
    ("septa_flow_query_records_skipped_total", Kind::Counter, "Records a slow `septa flows --follow` client missed."),
    ("septa_reconciles_total", Kind::Counter, "Map reconciliations, by result."),
    ("septa_accept_errors_total", Kind::Counter, "Failed accepts on the agent's listeners (health, socket), e.g. out of file descriptors."),
    ("septa_health_connections_evicted_total", Kind::Counter, "Idle health connections closed to make room for new ones."),
    ("septa_requests_dropped_total", Kind::Counter, "Requests dropped unserved because their client hung up first, by operation."),
    ("septa_endpoints_forgotten_total", Kind::Counter, "Endpoints forgotten because their host interface disappeared without a DEL."),
    ("septa_map_update_duration_seconds", Kind::Histogram, "Time to compile and write one change to the maps."),
    ("septa_policy_map_entries", Kind::Gauge, "Entries in the policy map."),
    ("septa_ipcache_entries", Kind::Gauge, "Entries in the ipcache."),
    ("septa_endpoints", Kind::Gauge, "Endpoints in the data path."),
    ("septa_policy_revision", Kind::Gauge, "The policy revision established connections are checked against."),
    ("septa_manifest_errors", Kind::Gauge, "Errors in the last load of the manifests directory (0 when applied)."),
    ("septa_manifest_load_stalled", Kind::Gauge, "1 while a read of the manifests directory has taken longer than its 10 s deadline."),
    ("septa_kubernetes_pods", Kind::Gauge, "Pods in the Kubernetes source's index (every node's)."),
    ("septa_kubernetes_object_errors", Kind::Gauge, "API objects that do not validate; their last good version (if any) stays enforced."),
    ("septa_kubernetes_invalid_objects_total", Kind::Counter, "Times an API object arrived that does not validate."),
    ("septa_kubernetes_lists_total", Kind::Counter, "Complete lists of a kind: the first one, and relists after 410 Gone or a long disconnect."),
    ("septa_kubernetes_watch_errors_total", Kind::Counter, "Failed lists or watches of a kind (retried with backoff; the last good state stays enforced)."),
    ("septa_kubernetes_events_total", Kind::Counter, "Watch events (and completed lists) applied to the index, by kind."),
    ("septa_cni_pod_wait_timeouts_total", Kind::Counter, "CNI ADDs failed because their pod did not appear in the Kubernetes API within --pod-wait."),
    ("septa_pods_unadopted", Kind::Gauge, "Pods of this node running unenforced until they restart: from before the agent and not adoptable, or started without septa-cni while the CNI entry was not in place."),
    ("septa_cni_entry_present", Kind::Gauge, "1 while septa's entry is in the node's CNI configuration as the agent wants it."),
    ("septa_cni_writes_total", Kind::Counter, "Writes of the CNI configuration: septa's entry put in, or back after the primary CNI rewrote its file."),
    ("septa_cni_errors_total", Kind::Counter, "New reasons septa's CNI entry cannot be put in place (a malformed primary file, no network file)."),
    ("septa_dns_kernel_answers_total", Kind::Counter, "DNS answers to FQDN pods: held for the agent, lost (ring full), not held (fragmented or too large)."),
    ("septa_fqdn_connections_total", Kind::Counter, "New egress connections of FQDN pods: allowed by an FQDN entry, or denied to an address no DNS answer gave."),
    ("septa_dns_answers_total", Kind::Counter, "DNS answers the agent handled, by result (learned, or why not: unsolicited, mismatched, late, untrusted_resolver, ...)."),
    ("septa_dns_queries_total", Kind::Counter, "DNS query copies the agent handled, by result."),
    ("septa_fqdn_addresses_added_total", Kind::Counter, "Addresses added to the FQDN allowlist from DNS answers."),
    ("septa_fqdn_entries_expired_total", Kind::Counter, "FQDN allowlist entries removed after their TTL (and grace)."),
    ("septa_fqdn_evicted_total", Kind::Counter, "Addresses evicted because a (pod, name) had too many."),
    ("septa_dns_reinject_errors_total", Kind::Counter, "DNS answers that could not be re-injected."),
    ("septa_feed_refreshes_total", Kind::Counter, "Threat-feed fetches, by feed and result (updated, not_modified)."),
    ("septa_feed_refresh_errors_total", Kind::Counter, "Refused threat-feed refreshes, by feed and reason; the last good list stays."),
    ("septa_feed_drops_total", Kind::Counter, "Packets a threat feed dropped (XDP and TC)."),
    ("septa_feed_audits_total", Kind::Counter, "Packets a threat feed in audit mode let through."),
    ("septa_fqdn_entries", Kind::Gauge, "Entries in the FQDN allowlist."),
    ("septa_dns_pending_queries", Kind::Gauge, "DNS queries of FQDN pods waiting for their answer."),
    ("septa_feed_entries", Kind::Gauge, "Entries of a threat feed's list in force."),
    ("septa_feed_last_refresh_timestamp_seconds", Kind::Gauge, "When a threat feed was last fetched successfully (Unix time)."),
    ("septa_feed_bad_lines", Kind::Gauge, "Bad lines in a threat feed's last body."),
    ("septa_blocklist_entries", Kind::Gauge, "Prefixes in the threat-feed tries, by family."),
    ("septa_feed_protected_skipped", Kind::Gauge, "Listed entries left out because they overlap a protected range."),
    ("septa_dns_preresolve_total", Kind::Counter, "The agent's own resolutions of the exact names of FQDN rules, by result (ok, error)."),
];

/// Install the recorder (once per process) and describe every metric.
pub fn install() -> Option<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0])
        .ok()?
        .install_recorder()
        .ok()?;
    for &(name, kind, help) in METRICS {
        match kind {
            Kind::Counter => describe_counter!(name, help),
            Kind::Gauge => describe_gauge!(name, help),
            Kind::Histogram => describe_histogram!(name, Unit::Seconds, help),
        }
    }
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

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, path::Path};

    use super::*;

    /// Every metric recorded in the agent's source (a macro call with a literal name), with
    /// its kind.
    fn recorded() -> BTreeMap<String, Kind> {
        fn walk(d: &Path, out: &mut BTreeMap<String, Kind>) {
            for e in std::fs::read_dir(d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                    continue;
                }
                if p.extension().and_then(|x| x.to_str()) != Some("rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&p).unwrap();
                // Tests record nothing the agent emits (and this one names the macros).
                let text = text.split("#[cfg(test)]\nmod tests").next().unwrap();
                for (mac, kind) in [
                    ("counter!(", Kind::Counter),
                    ("gauge!(", Kind::Gauge),
                    ("histogram!(", Kind::Histogram),
                ] {
                    for (at, _) in text.match_indices(mac) {
                        if text[..at].ends_with("describe_") {
                            continue;
                        }
                        let rest = text[at + mac.len()..].trim_start();
                        let Some(rest) = rest.strip_prefix('"') else {
                            panic!("{}: a metric named by a variable", p.display());
                        };
                        let name = &rest[..rest.find('"').unwrap()];
                        if let Some(old) = out.insert(name.to_owned(), kind) {
                            assert_eq!(old, kind, "{name} recorded as two kinds");
                        }
                    }
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
        out
    }

    #[test]
    fn every_metric_recorded_is_described_and_every_one_described_is_recorded() {
        let described: BTreeMap<String, Kind> = METRICS
            .iter()
            .map(|&(n, k, h)| {
                assert!(!h.is_empty(), "{n} has no help text");
                (n.to_owned(), k)
            })
            .collect();
        assert_eq!(described.len(), METRICS.len(), "a metric listed twice");
        assert_eq!(recorded(), described);
    }

    #[test]
    fn the_readme_lists_exactly_the_metrics_of_the_code() {
        let readme =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
                .unwrap();
        let section = readme
            .split("\n## Metrics\n")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("a Metrics section");
        let mut listed = std::collections::BTreeSet::new();
        for row in section.lines().filter(|l| l.starts_with("| `")) {
            let first = row.split('|').nth(1).unwrap();
            for name in first.split('`').skip(1).step_by(2) {
                assert!(listed.insert(name.to_owned()), "{name} listed twice");
            }
        }
        let code: std::collections::BTreeSet<String> =
            METRICS.iter().map(|(n, _, _)| n.to_string()).collect();
        assert_eq!(listed, code);
    }
}
