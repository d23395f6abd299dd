//! From flow records to observed connections: who talked to whom on which port, with the
//! evidence (connections, bytes, first and last seen, replicas).
//!
//! What is learned, and what is counted and left out:
//! - connections that were let through (`forwarded` or `audit`); denied ones are counted, not
//!   learned (a proposal must not open what today's policy blocks);
//! - a pod-to-pod connection only when both ends let it through: the destination's own
//!   record allowed it, or a reply came back (reverse bytes). The source's `forwarded` record
//!   alone does not count: the destination may have dropped it (counted
//!   `denied_at_destination`, or `unconfirmed` when nothing is known of the other end);
//! - one count per connection: the `new` record of the endpoint that sent the first packet
//!   (pod-to-pod connections are recorded at both ends), `aggregate` records by `connections`;
//!   bytes from `end` and `aggregate` records;
//! - traffic with the node (`host`: probes, node ports) is always allowed and not learned;
//! - a record naming a workload the manifests do not have is skipped and counted (a policy
//!   for a workload that does not exist, or with labels guessed from a flow, would be wrong);
//! - a destination that is a Service's cluster IP is mapped to the pods behind it and their
//!   target port (named target ports resolved per workload);
//! - malformed lines are skipped with their file and line number; nothing else is guessed.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::BufRead,
    net::IpAddr,
    time::SystemTime,
};

use api::flow::{FlowPeer, FlowRecord};
use policies::{
    model::{Pod, Protocol, WorkloadRef},
    Cluster,
};

/// One side of an observed connection.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Party {
    Workload(WorkloadRef),
    /// An address that is not a pod of the manifests (outside the cluster).
    External(IpAddr),
}

/// A connection shape: source, destination, protocol, destination port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tuple {
    pub src: Party,
    pub dst: Party,
    pub proto: Protocol,
    pub port: u16,
}

/// What was seen of one tuple.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Evidence {
    pub connections: u64,
    pub bytes: u64,
    pub first: Option<SystemTime>,
    pub last: Option<SystemTime>,
    /// Pods on the source side that used it.
    pub src_pods: BTreeSet<String>,
    /// Pods on the destination side that served it.
    pub dst_pods: BTreeSet<String>,
    /// DNS names the records carried for an external peer.
    pub names: BTreeSet<String>,
}

impl Evidence {
    fn seen(&mut self, t: SystemTime) {
        self.first = Some(self.first.map_or(t, |f| f.min(t)));
        self.last = Some(self.last.map_or(t, |l| l.max(t)));
    }

    /// Fold another tuple's evidence into this one (for per-rule totals).
    pub fn merge(&mut self, o: &Evidence) {
        self.connections += o.connections;
        self.bytes += o.bytes;
        if let Some(f) = o.first {
            self.seen(f);
        }
        if let Some(l) = o.last {
            self.seen(l);
        }
        self.src_pods.extend(o.src_pods.iter().cloned());
        self.dst_pods.extend(o.dst_pods.iter().cloned());
        self.names.extend(o.names.iter().cloned());
    }
}

/// Why records were left out, with counts and the first few locations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Skips {
    /// reason → (count, first few `file:line: detail`).
    pub by_reason: BTreeMap<&'static str, (u64, Vec<String>)>,
}

impl Skips {
    fn add(&mut self, reason: &'static str, at: &str, detail: impl std::fmt::Display) {
        self.add_n(reason, at, detail, 1);
    }

    fn add_n(&mut self, reason: &'static str, at: &str, detail: impl std::fmt::Display, n: u64) {
        let e = self.by_reason.entry(reason).or_default();
        e.0 += n;
        if e.1.len() < 5 {
            e.1.push(format!("{at}: {detail}"));
        }
    }

    /// How many records were skipped for `reason`.
    pub fn count(&self, reason: &str) -> u64 {
        self.by_reason.get(reason).map_or(0, |e| e.0)
    }
}

/// Everything learned from a set of records.
#[derive(Clone, Debug, Default)]
pub struct Observations {
    pub tuples: BTreeMap<Tuple, Evidence>,
    pub skips: Skips,
    /// Records read (valid JSON flow records).
    pub records: u64,
    /// Earliest and latest record time.
    pub span: Option<(SystemTime, SystemTime)>,
}

/// Which records to take.
#[derive(Clone, Copy, Debug, Default)]
pub struct Window {
    pub from: Option<SystemTime>,
    pub until: Option<SystemTime>,
}

impl Window {
    fn contains(&self, t: SystemTime) -> bool {
        self.from.is_none_or(|f| t >= f) && self.until.is_none_or(|u| t < u)
    }
}

/// Reads records into [`Observations`] against a cluster.
pub struct Observer<'a> {
    cluster: &'a Cluster,
    /// workload → a representative pod (labels, named ports).
    pub workloads: BTreeMap<WorkloadRef, &'a Pod>,
    /// Pod IPs of the manifests → workload (for records from older agents without names).
    by_ip: BTreeMap<IpAddr, WorkloadRef>,
    window: Window,
    pub obs: Observations,
    /// Pod-to-pod tuples the destination let through, or that were answered.
    confirmed: BTreeSet<Tuple>,
    /// Pod-to-pod tuples the destination dropped.
    refused: BTreeSet<Tuple>,
}

impl<'a> Observer<'a> {
    pub fn new(cluster: &'a Cluster, window: Window) -> Self {
        let mut workloads = BTreeMap::new();
        let mut by_ip = BTreeMap::new();
        for p in cluster.endpoints() {
            workloads.entry(p.workload.clone()).or_insert(p);
            for ip in &p.ips {
                by_ip.insert(*ip, p.workload.clone());
            }
        }
        Observer {
            cluster,
            workloads,
            by_ip,
            window,
            obs: Observations::default(),
            confirmed: BTreeSet::new(),
            refused: BTreeSet::new(),
        }
    }

    /// The observations to learn from, once every record is read: pod-to-pod tuples that
    /// neither end confirmed are taken out (counted by why).
    pub fn finish(self) -> Observations {
        self.finish_with(true)
    }

    /// The observations to replay against: only tuples the destination dropped (and never
    /// let through) are taken out; unconfirmed ones stay, so a proposal that would deny real
    /// traffic is never excused for lack of the other end's records.
    pub fn finish_for_replay(self) -> Observations {
        self.finish_with(false)
    }

    fn finish_with(mut self, require_confirmation: bool) -> Observations {
        let unconfirmed: Vec<Tuple> = self
            .obs
            .tuples
            .keys()
            .filter(|t| {
                matches!((&t.src, &t.dst), (Party::Workload(_), Party::Workload(_)))
                    && !self.confirmed.contains(t)
                    && (require_confirmation || self.refused.contains(t))
            })
            .cloned()
            .collect();
        for t in unconfirmed {
            let e = self.obs.tuples.remove(&t).unwrap_or_default();
            let (reason, why) = if self.refused.contains(&t) {
                ("denied_at_destination", "the destination dropped it")
            } else {
                (
                    "unconfirmed",
                    "no record from the destination and no reply: it may have been blocked there",
                )
            };
            let at = super::describe_tuple(&t);
            self.obs.skips.add_n(reason, &at, why, e.connections.max(1));
        }
        self.obs
    }

    /// Read JSON lines from `r` (`name` is used in skip reports).
    /// Returns (lines that are records, lines that are not); blank lines are neither.
    pub fn read(&mut self, name: &str, r: impl BufRead) -> std::io::Result<(usize, usize)> {
        let (mut good, mut bad) = (0, 0);
        for (i, line) in r.split(b'\n').enumerate() {
            let line = line?;
            let at = format!("{name}:{}", i + 1);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<FlowRecord>(&line) {
                Ok(rec) => {
                    good += 1;
                    self.record(&at, &rec)
                }
                Err(e) => {
                    bad += 1;
                    self.obs.skips.add("malformed", &at, e)
                }
            }
        }
        Ok((good, bad))
    }

    /// Take one record.
    pub fn record(&mut self, at: &str, r: &FlowRecord) {
        if r.version != 1 {
            self.obs
                .skips
                .add("unsupported_version", at, format!("version {}", r.version));
            return;
        }
        let Ok(time) = humantime::parse_rfc3339_weak(&r.time) else {
            self.obs
                .skips
                .add("bad_time", at, format!("time {:?}", r.time));
            return;
        };
        if !self.window.contains(time) {
            return;
        }
        self.obs.records += 1;
        self.obs.span = Some(match self.obs.span {
            None => (time, time),
            Some((a, b)) => (a.min(time), b.max(time)),
        });
        let Some(proto) = Protocol::parse(&r.protocol) else {
            if r.verdict == "dropped" {
                self.obs
                    .skips
                    .add("denied", at, "a dropped connection is not learned");
                return;
            }
            // ICMP and others: NetworkPolicy has no rules for them.
            self.obs
                .skips
                .add("protocol", at, format!("protocol {}", r.protocol));
            return;
        };
        let src = match self.party(at, &r.source) {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(()) => return,
        };
        let dst_raw = match self.party(at, &r.destination) {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(()) => return,
        };
        // A Service's cluster IP: the pods behind it, on their target ports.
        let dsts: Vec<(Party, u16)> = match &dst_raw {
            Party::External(ip) => match self.service_targets(*ip, proto, r.destination.port) {
                Some(t) if !t.is_empty() => t,
                _ => vec![(dst_raw.clone(), r.destination.port)],
            },
            _ => vec![(dst_raw.clone(), r.destination.port)],
        };
        let pod_to_pod = matches!(src, Party::Workload(_));
        if r.verdict == "dropped" {
            if pod_to_pod && r.direction == "ingress" {
                for (dst, port) in &dsts {
                    if matches!(dst, Party::Workload(_)) {
                        self.refused.insert(Tuple {
                            src: src.clone(),
                            dst: dst.clone(),
                            proto,
                            port: *port,
                        });
                    }
                }
            }
            self.obs
                .skips
                .add("denied", at, "a dropped connection is not learned");
            return;
        }
        // The destination's own record, or a reply: both ends let it through.
        let confirms = r.direction == "ingress" || r.bytes.reverse > 0;
        if matches!(src, Party::External(_))
            && dsts.iter().all(|(d, _)| matches!(d, Party::External(_)))
        {
            self.obs
                .skips
                .add("no_workload", at, "neither side is a workload");
            return;
        }
        // One count per connection: pod-to-pod connections are recorded at both ends.
        let counts = match r.kind.as_str() {
            "new" => r.direction == "egress" || !matches!(src, Party::Workload(_)),
            "aggregate" => true,
            _ => false,
        };
        let connections = match r.kind.as_str() {
            "aggregate" => r.connections.unwrap_or(0),
            _ => u64::from(counts),
        };
        let bytes = match r.kind.as_str() {
            "end" | "aggregate" => r.bytes.forward + r.bytes.reverse,
            _ => 0,
        };
        for (dst, port) in dsts {
            let tuple = Tuple {
                src: src.clone(),
                dst,
                proto,
                port,
            };
            if confirms {
                self.confirmed.insert(tuple.clone());
            }
            let e = self.obs.tuples.entry(tuple.clone()).or_default();
            e.connections += connections;
            e.bytes += bytes;
            e.seen(time);
            if let Some(p) = &r.source.pod {
                e.src_pods.insert(format!(
                    "{}/{p}",
                    r.source.namespace.as_deref().unwrap_or("")
                ));
            }
            if let Some(p) = &r.destination.pod {
                e.dst_pods.insert(format!(
                    "{}/{p}",
                    r.destination.namespace.as_deref().unwrap_or("")
                ));
            }
            let names = if matches!(tuple.dst, Party::External(_)) {
                &r.dns_names
            } else {
                &Vec::new()
            };
            e.names.extend(
                names
                    .iter()
                    .map(|n| n.trim_end_matches('.').to_ascii_lowercase()),
            );
        }
    }

    /// The party a record side stands for: `Ok(None)` for the node (not learned), `Err` when
    /// skipped (counted).
    fn party(&mut self, at: &str, p: &FlowPeer) -> Result<Option<Party>, ()> {
        if p.entity.as_deref() == Some("host") {
            self.obs
                .skips
                .add("host", at, "traffic with the node is always allowed");
            return Ok(None);
        }
        let Ok(ip) = p.ip.parse::<IpAddr>() else {
            self.obs
                .skips
                .add("bad_address", at, format!("address {:?}", p.ip));
            return Err(());
        };
        match (&p.namespace, &p.workload) {
            (Some(ns), Some(w)) => {
                let Some((kind, name)) = w.split_once('/') else {
                    self.obs
                        .skips
                        .add("bad_workload", at, format!("workload {w:?}"));
                    return Err(());
                };
                let wr = WorkloadRef {
                    namespace: ns.clone(),
                    name: name.to_owned(),
                    kind: kind.to_owned(),
                };
                if self.workloads.contains_key(&wr) {
                    Ok(Some(Party::Workload(wr)))
                } else {
                    self.obs.skips.add(
                        "unknown_workload",
                        at,
                        format!("{wr} is not in the manifests"),
                    );
                    Err(())
                }
            }
            _ => Ok(Some(match self.by_ip.get(&ip) {
                Some(w) => Party::Workload(w.clone()),
                None => Party::External(ip),
            })),
        }
    }

    /// Where a connection to a Service cluster IP lands: (workload, target port) per backing
    /// workload; `None` when `ip` is not a cluster IP.
    fn service_targets(&self, ip: IpAddr, proto: Protocol, port: u16) -> Option<Vec<(Party, u16)>> {
        let svc = self
            .cluster
            .services
            .iter()
            .find(|s| s.cluster_ips.contains(&ip))?;
        let sp = svc
            .ports
            .iter()
            .find(|p| p.protocol == proto && p.port == port)?;
        let mut out = Vec::new();
        for (w, pod) in &self.workloads {
            if svc.selects(pod) {
                if let Some(t) = svc.target_on(sp, pod) {
                    out.push((Party::Workload(w.clone()), t));
                }
            }
        }
        Some(out)
    }
}
