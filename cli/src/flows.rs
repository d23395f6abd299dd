//! `septa flows`: recent and live flow records from the local agent, filtered, like
//! `hubble observe`.

use std::{io::Write, path::Path, time::Duration};

use api::{
    flow::{FlowPeer, FlowRecord},
    protocol::{query_flows, FlowFilter},
};

use crate::reachability::Format;

fn side(p: &FlowPeer) -> String {
    match (&p.namespace, &p.pod) {
        (Some(ns), Some(pod)) => format!("{ns}/{pod}:{}", p.port),
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

/// One human-readable line for a record.
pub fn line(r: &FlowRecord) -> String {
    let decided = match &r.policy {
        Some(p) => format!(
            "{}/{} {}[{}]",
            p.namespace, p.name, p.direction, p.rule_index
        ),
        None => r.decided_by.clone(),
    };
    let why = r
        .drop_reason
        .as_ref()
        .map(|d| format!(" ({d})"))
        .unwrap_or_default();
    format!(
        "{} {:<9} {:<4} {:<4} {} -> {} by {decided}{why}",
        r.time,
        r.verdict,
        r.kind,
        r.protocol,
        side(&r.source),
        side(&r.destination)
    )
}

/// Run the query; returns the exit code.
pub fn cmd_flows(
    socket: &Path,
    filter: &FlowFilter,
    last: usize,
    follow: bool,
    fmt: Format,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let r = query_flows(
        socket,
        filter,
        last,
        follow,
        Duration::from_secs(10),
        |rec| {
            let text = match fmt {
                Format::Json => serde_json::to_string(&rec).unwrap_or_default(),
                _ => line(&rec),
            };
            writeln!(out, "{text}").is_ok() && out.flush().is_ok()
        },
    );
    match r {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            1
        }
    }
}
