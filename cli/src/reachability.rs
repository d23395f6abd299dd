//! `septa connlist` and `septa diff`: loading, rendering, exit codes.

use std::{io::Write, net::IpAddr, path::PathBuf};

use anyhow::Result;
use policies::{
    connlist::{connlist, diff, Change, Connection},
    Cluster, Diagnostics,
};
use serde::Serialize;

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Csv,
}

/// Load manifests (septa's own kinds included, see [`crate::objects`]) and print their
/// problems to stderr; the cluster is returned whatever they are: what loaded is analysed.
/// `dns_resolvers`: the agent's `--dns-resolver`, when known.
pub fn load_reporting(
    paths: &[PathBuf],
    dns_resolvers: Option<Vec<IpAddr>>,
    stderr: &mut dyn Write,
) -> (Cluster, Diagnostics) {
    let (c, d) = crate::objects::load(paths, dns_resolvers);
    for x in &d.0 {
        let _ = writeln!(stderr, "error: {x}");
    }
    for x in d.warnings() {
        let _ = writeln!(stderr, "warning: {x}");
    }
    (c, d)
}

#[derive(Serialize)]
struct ConnRow<'a> {
    src: String,
    dst: String,
    conn: &'a str,
}

/// Render a connlist.
pub fn render_connlist(list: &[Connection], fmt: Format, out: &mut dyn Write) -> Result<()> {
    let rows: Vec<(String, String, String)> = list
        .iter()
        .map(|c| (c.src.to_string(), c.dst.to_string(), c.conns.to_string()))
        .collect();
    match fmt {
        Format::Text => {
            for (s, d, c) in &rows {
                writeln!(out, "{s} => {d} : {c}")?;
            }
        }
        Format::Json => {
            let v: Vec<ConnRow> = rows
                .iter()
                .map(|(s, d, c)| ConnRow {
                    src: s.clone(),
                    dst: d.clone(),
                    conn: c,
                })
                .collect();
            serde_json::to_writer_pretty(&mut *out, &v)?;
            writeln!(out)?;
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(out);
            w.write_record(["src", "dst", "conn"])?;
            for (s, d, c) in &rows {
                w.write_record([s, d, c])?;
            }
            w.flush()?;
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct DiffRow {
    diff: &'static str,
    src: String,
    dst: String,
    old: String,
    new: String,
}

/// Render a diff.
pub fn render_diff(changes: &[Change], fmt: Format, out: &mut dyn Write) -> Result<()> {
    let none = || "No Connections".to_owned();
    let rows: Vec<DiffRow> = changes
        .iter()
        .map(|c| DiffRow {
            diff: c.kind(),
            src: c.src.to_string(),
            dst: c.dst.to_string(),
            old: c.old.as_ref().map_or_else(none, |x| x.to_string()),
            new: c.new.as_ref().map_or_else(none, |x| x.to_string()),
        })
        .collect();
    match fmt {
        Format::Text => {
            for r in &rows {
                let conns = match r.diff {
                    "added" => r.new.clone(),
                    "removed" => r.old.clone(),
                    _ => format!("{} -> {}", r.old, r.new),
                };
                writeln!(out, "{:<8}{} => {} : {conns}", r.diff, r.src, r.dst)?;
            }
        }
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, &rows)?;
            writeln!(out)?;
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(out);
            w.write_record(["diff", "src", "dst", "old", "new"])?;
            for r in &rows {
                w.write_record([r.diff, &r.src, &r.dst, &r.old, &r.new])?;
            }
            w.flush()?;
        }
    }
    Ok(())
}

fn notes(c: &Cluster, err: &mut dyn Write) {
    for n in crate::objects::feed_notes(c) {
        let _ = writeln!(err, "note: {n}");
    }
}

/// `septa connlist`: returns the exit code (0, or 1 when the input has errors).
pub fn cmd_connlist(
    paths: &[PathBuf],
    dns_resolvers: Option<Vec<IpAddr>>,
    fmt: Format,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32> {
    let (c, d) = load_reporting(paths, dns_resolvers, err);
    render_connlist(&connlist(&c, &Default::default()), fmt, out)?;
    notes(&c, err);
    Ok(if d.is_empty() { 0 } else { 1 })
}

/// `septa diff`: returns the exit code. Without `exit_code`: 0, or 1 when an input has
/// errors. With it (for CI): 0 no change, 1 changes, 2 an input has errors.
pub fn cmd_diff(
    old: &[PathBuf],
    new: &[PathBuf],
    dns_resolvers: Option<Vec<IpAddr>>,
    exit_code: bool,
    fmt: Format,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32> {
    let (a, da) = load_reporting(old, dns_resolvers.clone(), err);
    let (b, db) = load_reporting(new, dns_resolvers, err);
    let changes = diff(&a, &b);
    render_diff(&changes, fmt, out)?;
    let errors = !(da.is_empty() && db.is_empty());
    Ok(match (exit_code, errors) {
        (false, false) => 0,
        (false, true) => 1,
        (true, true) => 2,
        (true, false) => i32::from(!changes.is_empty()),
    })
}

/// `septa lint`: every problem on stderr, a summary on stdout; returns the exit code (0 the
/// agent would load these manifests, 1 it would keep its last good state instead).
pub fn cmd_lint(
    paths: &[PathBuf],
    feed_min_refresh: std::time::Duration,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32> {
    let (mut c, mut d) = policies::load::load_paths(paths);
    policies::septa::validate(&mut c, feed_min_refresh, &mut d);
    for x in &d.0 {
        let _ = writeln!(err, "error: {x}");
    }
    for x in d.warnings() {
        let _ = writeln!(err, "warning: {x}");
    }
    writeln!(
        out,
        "{} errors, {} warnings; {} NetworkPolicies, {} FqdnPolicies, {} ThreatFeeds, {} pods and workloads",
        d.0.len(),
        d.warnings().len(),
        c.policies.len(),
        c.fqdn_policies.len(),
        c.threat_feeds.len(),
        c.pods.len()
    )?;
    Ok(if d.is_empty() { 0 } else { 1 })
}
