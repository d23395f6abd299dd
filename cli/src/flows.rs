//! `septa flows`: recent and live flow records from the local agent, filtered, like
//! `hubble observe`.

use std::{io::Write, path::Path, time::Duration};

use api::{
    flow::{FlowPeer, FlowRecord},
    protocol::{query_flows, FlowFilter},
};

use crate::reachability::Format;

fn side(p: &FlowPeer) -> String {
    match (&p.namespace, &p.pod, &p.service) {
        (Some(ns), Some(pod), _) => format!("{ns}/{pod}:{}", p.port),
        (Some(ns), None, Some(svc)) => format!("{ns}/{svc}:{}(service)", p.port),
        _ => format!(
            "{}:{}{}",
            p.ip,
            p.port,
            p.entity
                .as_ref()
                .map(|e| format!("({e})"))
                .unwrap_or_default()
        ),
    }
}

/// What decided: the policy rule (marked when the verdict is audit: the rule of an audit-mode
/// policy would have denied it), the threat feed by name, or the default.
fn decided(r: &FlowRecord) -> String {
    match (&r.policy, &r.feed) {
        (Some(p), _) => format!(
            "{}/{} {}[{}]{}",
            p.namespace,
            p.name,
            p.direction,
            p.rule_index,
            if r.verdict == "audit" { " (audit)" } else { "" }
        ),
        (None, Some(f)) => format!("threat-feed {f}"),
        (None, None) => r.decided_by.to_string(),
    }
}

/// One human-readable line for a record: time, verdict, kind, policy direction, protocol,
/// source -> destination, what decided and why.
pub fn line(r: &FlowRecord) -> String {
    let why = r
        .drop_reason
        .as_ref()
        .map(|d| format!(" ({d})"))
        .unwrap_or_default();
    format!(
        "{} {:<9} {:<9} {:<7} {:<4} {} -> {} by {}{why}",
        r.time,
        r.verdict,
        r.kind,
        r.direction,
        r.protocol,
        side(&r.source),
        side(&r.destination),
        decided(r)
    )
}

/// The CSV columns, in order.
pub const CSV_HEADER: [&str; 13] = [
    "time",
    "verdict",
    "kind",
    "direction",
    "protocol",
    "source",
    "destination",
    "decided_by",
    "policy",
    "feed",
    "drop_reason",
    "packets",
    "bytes",
];

fn csv_row(r: &FlowRecord) -> [String; 13] {
    [
        r.time.clone(),
        r.verdict.to_string(),
        r.kind.to_string(),
        r.direction.to_string(),
        r.protocol.clone(),
        side(&r.source),
        side(&r.destination),
        r.decided_by.to_string(),
        r.policy
            .as_ref()
            .map(|p| {
                format!(
                    "{}/{} {}[{}]",
                    p.namespace, p.name, p.direction, p.rule_index
                )
            })
            .unwrap_or_default(),
        r.feed.clone().unwrap_or_default(),
        r.drop_reason.map(|d| d.to_string()).unwrap_or_default(),
        (r.packets.forward + r.packets.reverse).to_string(),
        (r.bytes.forward + r.bytes.reverse).to_string(),
    ]
}

/// One CSV line (quoted where a field needs it), with its newline.
fn csv_line<I: IntoIterator<Item = T>, T: AsRef<[u8]>>(fields: I) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record(fields);
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

/// Run the query; returns the exit code. Records are filtered here too, so that an agent
/// that does not know a filter yet cannot widen the answer.
pub fn cmd_flows(
    socket: &Path,
    filter: &FlowFilter,
    last: usize,
    follow: bool,
    fmt: Format,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    if fmt == Format::Csv && out.write_all(csv_line(CSV_HEADER).as_bytes()).is_err() {
        return 0;
    }
    let r = query_flows(
        socket,
        filter,
        last,
        follow,
        Duration::from_secs(10),
        |rec| {
            if !filter.matches(&rec) {
                return true;
            }
            let text = match fmt {
                Format::Csv => csv_line(csv_row(&rec)),
                Format::Json => serde_json::to_string(&rec).unwrap_or_default() + "\n",
                Format::Text => line(&rec) + "\n",
            };
            out.write_all(text.as_bytes()).is_ok() && out.flush().is_ok()
        },
    );
    match r {
        Ok(()) => 0,
        Err(e) => {
            let hint = match e.kind() {
                std::io::ErrorKind::NotFound
                | std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::PermissionDenied => {
                    " (is septa-agent running on this node? its socket is --socket in its configuration; give the same path with --socket PATH)"
                }
                _ => "",
            };
            let _ = writeln!(err, "error: {e}{hint}");
            1
        }
    }
}
