//! Flow records: the kernel's events enriched in userspace (pods, workloads, labels, the
//! policy and rule that decided), in one versioned schema, and their exporters.
//!
//! Schema version 1 is documented in the README ("Flow records"); fields are only ever added
//! within a version.

pub mod aggregate;
pub mod ipfix;
pub mod jsonl;
pub mod sweep;
pub mod tap;

use std::{collections::BTreeMap, net::IpAddr};

pub use api::flow::{Counts, FlowPeer, FlowRecord, PolicyRef, SCHEMA_VERSION};
use dataplane_common::{direction, rule, FlowEvent, Reason};

/// Where records go: the JSON-lines log and the IPFIX collector, as configured.
pub struct Exporters {
    jsonl: Option<jsonl::JsonlWriter>,
    ipfix: Option<ipfix::IpfixExporter>,
    log_errors: Throttle,
    ipfix_errors: Throttle,
}

/// How often a failing exporter is logged: a collector that is down fails every batch, and a
/// full disk every record; the counters carry the full count.
const ERROR_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Errors of one kind logged at most once per period, with how many were not.
#[derive(Debug)]
pub struct Throttle {
    every: std::time::Duration,
    last: Option<std::time::Instant>,
    unlogged: u64,
    failing: bool,
}

impl Throttle {
    /// At most one log line per `every`.
    pub fn new(every: std::time::Duration) -> Self {
        Self {
            every,
            last: None,
            unlogged: 0,
            failing: false,
        }
    }

    /// An error at `now`: `Some(n)` when it is to be logged, `n` being the errors not logged
    /// since the last line; `None` when it is only counted.
    pub fn failed(&mut self, now: std::time::Instant) -> Option<u64> {
        self.failing = true;
        match self.last {
            Some(t) if now.duration_since(t) < self.every => {
                self.unlogged += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.unlogged))
            }
        }
    }

    /// A success: `Some(n)` when it ends a run of errors (to be logged as recovered, with the
    /// `n` errors not logged); the next error is then logged at once.
    pub fn succeeded(&mut self) -> Option<u64> {
        if !std::mem::take(&mut self.failing) {
            return None;
        }
        self.last = None;
        Some(std::mem::take(&mut self.unlogged))
    }
}

impl Exporters {
    /// Open what the agent configuration asks for; errors name the path or address.
    pub fn from_config(cfg: &crate::config::Config) -> std::io::Result<Self> {
        let jsonl = match &cfg.flow_log {
            None => None,
            Some(p) if p.as_os_str() == "-" => Some(jsonl::JsonlWriter::stdout()),
            Some(p) => Some(
                jsonl::JsonlWriter::file(p, cfg.flow_log_max_bytes, cfg.flow_log_keep)
                    .map_err(|e| std::io::Error::new(e.kind(), format!("--flow-log: {e}")))?,
            ),
        };
        let ipfix = match cfg.ipfix_collector {
            Some(addr) => Some(
                ipfix::IpfixExporter::new(addr, cfg.ipfix_domain, cfg.ipfix_template_interval)
                    .map_err(|e| {
                        std::io::Error::new(e.kind(), format!("--ipfix-collector: {e}"))
                    })?,
            ),
            None => None,
        };
        Ok(Self {
            jsonl,
            ipfix,
            log_errors: Throttle::new(ERROR_LOG_EVERY),
            ipfix_errors: Throttle::new(ERROR_LOG_EVERY),
        })
    }

    /// Write records to every exporter; failures are counted and logged, never fatal.
    pub fn emit(&mut self, records: &[FlowRecord]) {
        if records.is_empty() {
            return;
        }
        let now = std::time::Instant::now();
        if let Some(w) = self.jsonl.as_mut() {
            for r in records {
                match w.write(r) {
                    Ok(()) => {
                        if let Some(n) = self.log_errors.succeeded() {
                            tracing::info!(records_lost_unlogged = n, "flow log writable again");
                        }
                    }
                    Err(e) => {
                        metrics::counter!("septa_flow_log_write_errors_total").increment(1);
                        if let Some(n) = self.log_errors.failed(now) {
                            tracing::error!(error = %e, more_since_last_logged = n, "writing the flow log; records are being lost (logged at most once a minute, counted in septa_flow_log_write_errors_total)");
                        }
                    }
                }
            }
            let _ = w.flush();
        }
        if let Some(x) = self.ipfix.as_mut() {
            match x.export(records) {
                Ok(()) => {
                    metrics::counter!("septa_ipfix_records_total").increment(records.len() as u64);
                    if let Some(n) = self.ipfix_errors.succeeded() {
                        tracing::info!(failed_unlogged = n, "IPFIX export works again");
                    }
                }
                Err(e) => {
                    metrics::counter!("septa_ipfix_export_errors_total").increment(1);
                    if let Some(n) = self.ipfix_errors.failed(now) {
                        tracing::warn!(error = %e, more_since_last_logged = n, "IPFIX export (logged at most once a minute, counted in septa_ipfix_export_errors_total)");
                    }
                }
            }
        }
    }
}

/// What the agent knows to enrich events: endpoints by address, rules by id, identities.
#[derive(Clone, Debug, Default)]
pub struct Enricher {
    /// address → (namespace, pod, workload `Kind/name`, labels)
    pub endpoints: BTreeMap<IpAddr, (String, String, String, BTreeMap<String, String>)>,
    pub rules: BTreeMap<u32, PolicyRef>,
    /// Threat-feed id → feed name.
    pub feeds: BTreeMap<u32, String>,
    /// Addresses learned from DNS answers → the names that gave them.
    pub dns_names: BTreeMap<IpAddr, Vec<String>>,
    /// Service addresses (ClusterIPs, external IPs) → (namespace, name).
    pub services: BTreeMap<IpAddr, (String, String)>,
    pub node: String,
    /// CLOCK_MONOTONIC (the kernel's event clock) → wall clock offset, in ns.
    pub wall_offset_ns: i128,
}

impl Enricher {
    /// The offset from the monotonic clock to the wall clock, measured now.
    pub fn measure_wall_offset() -> i128 {
        let mono = hostnet::clock::monotonic_ns() as i128;
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        wall - mono
    }

    fn peer(&self, addr: &[u8; 16], port: u16, identity: u32) -> FlowPeer {
        let ip = dataplane::events::addr(addr);
        let mut p = FlowPeer {
            ip: ip.to_string(),
            port,
            identity,
            ..Default::default()
        };
        match self.endpoints.get(&ip) {
            Some((ns, pod, workload, labels)) => {
                p.namespace = Some(ns.clone());
                p.pod = Some(pod.clone());
                p.workload = Some(workload.clone());
                p.labels = labels.clone();
            }
            None if self.services.contains_key(&ip) => {
                let (ns, name) = &self.services[&ip];
                p.namespace = Some(ns.clone());
                p.service = Some(name.clone());
                p.entity = Some("service".into());
            }
            None => {
                p.entity = Some(
                    match identity {
                        dataplane_common::identity::HOST => "host",
                        dataplane_common::identity::WORLD => "world",
                        0 | dataplane_common::identity::UNKNOWN => "unknown",
                        _ => "cidr",
                    }
                    .into(),
                )
            }
        }
        p
    }

    /// Build the record for one kernel event.
    pub fn record(&self, e: &FlowEvent) -> FlowRecord {
        let egress = e.direction == direction::EGRESS;
        // The subject is the endpoint that saw the first packet: the source for egress.
        let (src_id, dst_id) = if egress {
            (e.subject_identity, e.peer_identity)
        } else {
            (e.peer_identity, e.subject_identity)
        };
        let feed = rule::feed_of_rule(e.rule_id).map(|id| {
            self.feeds
                .get(&id)
                .cloned()
                .unwrap_or_else(|| format!("feed#{id}"))
        });
        let (decided_by, policy) = match e.rule_id {
            _ if feed.is_some() => ("threat-feed", None),
            rule::DEFAULT_DENY => ("default-deny", None),
            rule::DEFAULT_ALLOW => ("default-allow", None),
            rule::HOST => ("host", None),
            rule::ANTI_SPOOF => ("anti-spoof", None),
            rule::FAIL_MODE => ("fail-mode", None),
            id => ("rule", self.rules.get(&id).cloned()),
        };
        let wall = |ns: u64| {
            let w = (ns as i128 + self.wall_offset_ns).max(0) as u64;
            humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + std::time::Duration::from_nanos(w),
            )
            .to_string()
        };
        let flags = [
            (0x01, "FIN"),
            (0x02, "SYN"),
            (0x04, "RST"),
            (0x08, "PSH"),
            (0x10, "ACK"),
            (0x20, "URG"),
        ];
        let start_ns = if e.start_ns == 0 {
            e.timestamp_ns
        } else {
            e.start_ns
        };
        // A connection's creation is stamped with the kernel's precise clock and its later
        // packets with the coarse one, which lags it by up to a tick: a short flow's last
        // packet can read earlier than its first. No record of a flow is before its start.
        let time_ns = e.timestamp_ns.max(start_ns);
        FlowRecord {
            version: SCHEMA_VERSION,
            time: wall(time_ns),
            start: wall(start_ns),
            kind: e.kind().as_str().into(),
            verdict: e.verdict().as_str().into(),
            drop_reason: (e.reason() != Reason::NONE).then(|| e.reason().as_str().into()),
            direction: e.direction().as_str().into(),
            ip_version: e.family,
            protocol: match e.proto {
                1 => "ICMP".to_owned(),
                2 => "IGMP".to_owned(),
                6 => "TCP".to_owned(),
                17 => "UDP".to_owned(),
                58 => "ICMPv6".to_owned(),
                132 => "SCTP".to_owned(),
                p => p.to_string(),
            },
            source: self.peer(&e.saddr, e.sport, src_id),
            destination: self.peer(&e.daddr, e.dport, dst_id),
            decided_by: decided_by.into(),
            feed,
            policy,
            rule_id: e.rule_id,
            packets: Counts {
                forward: e.packets_fwd,
                reverse: e.packets_rev,
            },
            bytes: Counts {
                forward: e.bytes_fwd,
                reverse: e.bytes_rev,
            },
            tcp_flags: flags
                .iter()
                .filter(|(b, _)| e.tcp_flags & b != 0)
                .map(|(_, n)| n.to_string())
                .collect(),
            dns_names: self
                .dns_names
                .get(&dataplane::events::addr(if egress {
                    &e.daddr
                } else {
                    &e.saddr
                }))
                .cloned()
                .unwrap_or_default(),
            node: self.node.clone(),
            connections: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use dataplane_common::{event, reason, verdict};

    use super::*;

    #[test]
    fn a_failing_exporter_is_logged_once_per_period_with_what_was_not() {
        let t0 = std::time::Instant::now();
        let s = std::time::Duration::from_secs;
        let mut t = Throttle::new(s(60));
        assert_eq!(t.succeeded(), None, "nothing to recover from");
        assert_eq!(t.failed(t0), Some(0));
        for i in 1..=1000 {
            assert_eq!(t.failed(t0 + std::time::Duration::from_millis(i)), None);
        }
        assert_eq!(t.failed(t0 + s(61)), Some(1000));
        assert_eq!(t.failed(t0 + s(62)), None);
        assert_eq!(t.succeeded(), Some(1));
        assert_eq!(t.succeeded(), None);
        assert_eq!(t.failed(t0 + s(63)), Some(0), "a new run is logged at once");
    }

    #[test]
    fn no_record_of_a_flow_is_before_its_start() {
        let en = Enricher::default();
        let s = 1_000_000_000u64;
        // Created at 4 ms past the second by the precise clock; last seen by the coarse clock
        // at a tick that began before it.
        for (kind, ts) in [(event::NEW, s + 4_000_000), (event::END, s)] {
            let r = en.record(&FlowEvent {
                kind,
                start_ns: s + 4_000_000,
                timestamp_ns: ts,
                ..Default::default()
            });
            assert!(
                r.time >= r.start,
                "{}: {} before {}",
                r.kind,
                r.time,
                r.start
            );
            assert_eq!(r.time, r.start);
        }
        let r = en.record(&FlowEvent {
            kind: event::END,
            start_ns: s,
            timestamp_ns: s + 2_000_000_000,
            ..Default::default()
        });
        assert!(r.time > r.start);
    }

    #[test]
    fn records_are_enriched_and_round_trip() {
        let mut en = Enricher {
            node: "node-1".into(),
            ..Default::default()
        };
        en.endpoints.insert(
            "10.0.0.2".parse().unwrap(),
            (
                "shop".into(),
                "web-1".into(),
                "Deployment/web".into(),
                [("app".into(), "web".into())].into(),
            ),
        );
        en.rules.insert(
            7,
            PolicyRef {
                namespace: "shop".into(),
                name: "web".into(),
                direction: "ingress".into(),
                rule_index: 0,
            },
        );
        let e = FlowEvent {
            kind: event::NEW,
            verdict: verdict::FORWARDED,
            direction: direction::INGRESS,
            saddr: dataplane_common::v4_mapped([203, 0, 113, 9]),
            daddr: dataplane_common::v4_mapped([10, 0, 0, 2]),
            sport: 40000,
            dport: 8080,
            proto: 6,
            family: 4,
            rule_id: 7,
            subject_identity: 300,
            peer_identity: dataplane_common::identity::WORLD,
            tcp_flags: 0x02,
            packets_fwd: 1,
            bytes_fwd: 74,
            ..Default::default()
        };
        let r = en.record(&e);
        assert_eq!(
            (
                r.kind.as_str(),
                r.verdict.as_str(),
                r.direction.as_str(),
                r.decided_by.as_str()
            ),
            ("new", "forwarded", "ingress", "rule")
        );
        assert_eq!(r.destination.pod.as_deref(), Some("web-1"));
        assert_eq!(r.destination.identity, 300);
        assert_eq!(r.source.entity.as_deref(), Some("world"));
        assert_eq!(r.policy.as_ref().unwrap().name, "web");
        assert_eq!(r.tcp_flags, vec!["SYN"]);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<FlowRecord>(&json).unwrap(), r);
        let denied = en.record(&FlowEvent {
            kind: event::DENY,
            verdict: verdict::DROPPED,
            reason: reason::POLICY_DENIED,
            rule_id: rule::DEFAULT_DENY,
            ..e
        });
        assert_eq!(
            (
                denied.decided_by.as_str(),
                denied.drop_reason.map(|d| d.as_str()),
                denied.policy.is_none()
            ),
            ("default-deny", Some("policy-denied"), true)
        );
    }
}
