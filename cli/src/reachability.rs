//! `septa connlist` and `septa diff`: loading, rendering, exit codes.

use std::{io::Write, path::PathBuf};

use anyhow::Result;
use policies::{
    connlist::{connlist, diff, Change, Connection},
    load::load_paths,
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

/// Load manifests and print their problems to stderr; `Err(n)` counts problems (the cluster
/// is still returned: what loaded is analysed).
pub fn load_reporting(paths: &[PathBuf], stderr: &mut dyn Write) -> (Cluster, Diagnostics) {
    let (c, d) = load_paths(paths);
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

/// `septa connlist`: returns the exit code.
pub fn cmd_connlist(
    paths: &[PathBuf],
    fmt: Format,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32> {
    let (c, d) = load_reporting(paths, err);
    render_connlist(&connlist(&c, &Default::default()), fmt, out)?;
    Ok(if d.is_empty() { 0 } else { 1 })
}

/// `septa diff`: returns the exit code.
pub fn cmd_diff(
    old: &[PathBuf],
    new: &[PathBuf],
    fmt: Format,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32> {
    let (a, da) = load_reporting(old, err);
    let (b, db) = load_reporting(new, err);
    render_diff(&diff(&a, &b), fmt, out)?;
    Ok(if da.is_empty() && db.is_empty() { 0 } else { 1 })
}
