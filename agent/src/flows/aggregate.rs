//! Aggregation: keeps flow-log volume bounded without losing denials.
//!
//! Forwarded and audit records are folded, over a window, by (source workload or address,
//! destination workload or address, destination port, protocol, verdict, direction) into one
//! `aggregate` record per group: `connections` counts the connections opened (`new`), and
//! `packets`/`bytes` sum the totals of the connections that ended (`end`) in the window
//! (`update` records are superseded by them and dropped). Denials are never aggregated. At
//! most `max_groups` groups are held; records beyond that pass through unaggregated and are
//! counted in `overflow`.

use std::collections::BTreeMap;

use super::{FlowPeer, FlowRecord};
use api::flow::{Direction, Verdict};

type Key = (String, String, u16, String, Verdict, Direction);

/// The aggregator for one window at a time.
pub struct Aggregator {
    groups: BTreeMap<Key, FlowRecord>,
    max_groups: usize,
    /// Records passed through because the group table was full.
    pub overflow: u64,
}

fn who(p: &FlowPeer) -> String {
    match (&p.namespace, &p.workload) {
        (Some(ns), Some(w)) => format!("{ns}/{w}"),
        _ => p.ip.clone(),
    }
}

impl Aggregator {
    pub fn new(max_groups: usize) -> Self {
        Self {
            groups: BTreeMap::new(),
            max_groups,
            overflow: 0,
        }
    }

    /// Take a record: returns it back when it must go out now (denials, overflow), or `None`
    /// when it was folded into its group.
    pub fn offer(&mut self, r: FlowRecord) -> Option<FlowRecord> {
        if r.verdict == "dropped" || r.kind == "deny" {
            return Some(r);
        }
        let key: Key = (
            who(&r.source),
            who(&r.destination),
            r.destination.port,
            r.protocol.clone(),
            r.verdict,
            r.direction,
        );
        if !self.groups.contains_key(&key) && self.groups.len() >= self.max_groups {
            self.overflow += 1;
            return Some(r);
        }
        let g = self.groups.entry(key).or_insert_with(|| {
            let mut g = r.clone();
            g.kind = api::flow::RecordKind::Aggregate;
            g.connections = Some(0);
            g.packets = Default::default();
            g.bytes = Default::default();
            g.tcp_flags.clear();
            g.source.port = 0;
            g.source.pod = None;
            g.destination.pod = None;
            g
        });
        match r.kind.as_str() {
            "new" => *g.connections.get_or_insert(0) += 1,
            "end" => {
                g.packets.forward += r.packets.forward;
                g.packets.reverse += r.packets.reverse;
                g.bytes.forward += r.bytes.forward;
                g.bytes.reverse += r.bytes.reverse;
            }
            _ => {}
        }
        for f in r.tcp_flags {
            if !g.tcp_flags.contains(&f) {
                g.tcp_flags.push(f);
            }
        }
        // Records of a window arrive in any order: the group spans the earliest start and the
        // latest time (fixed-width RFC 3339 in UTC, so text order is time order).
        if r.start < g.start {
            g.start = r.start;
        }
        if r.time > g.time {
            g.time = r.time;
        }
        None
    }

    /// End the window: one record per group, and an empty table.
    pub fn flush(&mut self) -> Vec<FlowRecord> {
        std::mem::take(&mut self.groups).into_values().collect()
    }

    /// Groups held now.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::Counts;

    fn rec(kind: &str, verdict: &str, sport: u16, bytes: u64) -> FlowRecord {
        FlowRecord {
            version: 1,
            time: "t".into(),
            start: "t".into(),
            kind: kind.into(),
            verdict: verdict.into(),
            drop_reason: None,
            direction: "egress".into(),
            ip_version: 4,
            protocol: "TCP".into(),
            source: FlowPeer {
                ip: "10.0.0.1".into(),
                port: sport,
                namespace: Some("a".into()),
                pod: Some(format!("web-{}", sport % 3)),
                workload: Some("Deployment/web".into()),
                ..Default::default()
            },
            destination: FlowPeer {
                ip: "10.0.0.9".into(),
                port: 5432,
                namespace: Some("a".into()),
                pod: Some("db-0".into()),
                workload: Some("StatefulSet/db".into()),
                ..Default::default()
            },
            decided_by: "rule".into(),
            feed: None,
            policy: None,
            rule_id: 1,
            packets: Counts {
                forward: 2,
                reverse: 1,
            },
            bytes: Counts {
                forward: bytes,
                reverse: 0,
            },
            tcp_flags: vec!["SYN".into()],
            dns_names: vec![],
            node: "n".into(),
            connections: None,
        }
    }

    #[test]
    fn folds_allowed_flows_and_passes_denials() {
        let mut a = Aggregator::new(100);
        for i in 0..50 {
            assert!(a.offer(rec("new", "forwarded", 40000 + i, 0)).is_none());
            assert!(a.offer(rec("end", "forwarded", 40000 + i, 100)).is_none());
        }
        assert!(a.offer(rec("update", "forwarded", 40000, 7)).is_none());
        let d = a.offer(rec("deny", "dropped", 40001, 0));
        assert!(
            d.is_some_and(|d| d.kind == "deny"),
            "denials keep full detail"
        );
        let out = a.flush();
        assert_eq!(
            out.len(),
            1,
            "one group for 50 connections of one workload pair and port"
        );
        let g = &out[0];
        assert_eq!(
            (
                g.kind.as_str(),
                g.connections,
                g.bytes.forward,
                g.packets.forward
            ),
            ("aggregate", Some(50), 5000, 100)
        );
        assert_eq!(
            (g.source.pod.as_ref(), g.source.port, g.destination.port),
            (None, 0, 5432)
        );
        assert!(a.is_empty());
    }

    #[test]
    fn a_group_spans_its_earliest_start_and_latest_time_whatever_the_order() {
        let mut a = Aggregator::new(10);
        let at = |start: &str, time: &str, port| {
            let mut r = rec("end", "forwarded", port, 1);
            r.start = format!("2026-01-01T00:00:{start}Z");
            r.time = format!("2026-01-01T00:00:{time}Z");
            r
        };
        for r in [
            at("05.000", "09.000", 1),
            at("01.000", "03.000", 2),
            at("04.000", "06.000", 3),
        ] {
            assert!(a.offer(r).is_none());
        }
        let g = a.flush();
        assert_eq!(g.len(), 1);
        assert_eq!(
            (g[0].start.as_str(), g[0].time.as_str()),
            ("2026-01-01T00:00:01.000Z", "2026-01-01T00:00:09.000Z")
        );
    }

    #[test]
    fn bounded_groups_overflow_unaggregated() {
        let mut a = Aggregator::new(2);
        let mut r1 = rec("new", "forwarded", 1, 0);
        r1.destination.port = 1;
        let mut r2 = r1.clone();
        r2.destination.port = 2;
        let mut r3 = r1.clone();
        r3.destination.port = 3;
        assert!(a.offer(r1).is_none() && a.offer(r2).is_none());
        assert!(a.offer(r3).is_some(), "a third group does not fit");
        assert_eq!((a.overflow, a.len()), (1, 2));
    }
}
