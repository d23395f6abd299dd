//! The review report: per workload, what the proposal allows and on what evidence, what it
//! changes against today's policies (the `septa diff` computation), and what to look at
//! twice. Written as Markdown or HTML from one document model.

use std::fmt::Write as _;

use policies::connlist::Change;

use super::{observe::Observations, propose::Proposal, replay::ReplayResult};

/// A block of the report.
enum Block {
    H(u8, String),
    P(String),
    List(Vec<String>),
    Table(Vec<&'static str>, Vec<Vec<String>>),
}

/// Everything the report shows.
pub struct ReportInput<'a> {
    pub proposals: &'a [Proposal],
    pub obs: &'a Observations,
    /// Changes from today's policies to today's plus the proposal.
    pub changes: &'a [Change],
    pub warnings: &'a [String],
    pub replay: Option<&'a ReplayResult>,
}

fn when(t: Option<std::time::SystemTime>) -> String {
    t.map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_default()
}

fn blocks(r: &ReportInput) -> Vec<Block> {
    let mut b = vec![Block::H(1, "septa recommend: review report".into())];
    let span = r
        .obs
        .span
        .map(|(a, z)| format!("from {} to {}", when(Some(a)), when(Some(z))))
        .unwrap_or_else(|| "no records".into());
    b.push(Block::P(format!(
        "{} flow records read ({span}); {} connection tuples; {} workload proposals.",
        r.obs.records,
        r.obs.tuples.len(),
        r.proposals.len()
    )));
    let mut skipped: Vec<String> = r
        .obs
        .skips
        .by_reason
        .iter()
        .map(|(k, (n, first))| format!("{n} skipped ({k}), e.g. {}", first.join("; ")))
        .collect();
    skipped.extend(r.warnings.iter().cloned());
    if !skipped.is_empty() {
        b.push(Block::H(2, "Input and warnings".into()));
        b.push(Block::List(skipped));
    }
    if let Some(rp) = r.replay {
        b.push(Block::H(2, "Replay check".into()));
        b.push(Block::P(format!("Replayed: {}.", rp.summary())));
        if !rp.denied.is_empty() {
            b.push(Block::List(
                rp.denied
                    .iter()
                    .map(|(t, n)| format!("{} ({n} connections)", super::describe_tuple(t)))
                    .collect(),
            ));
        }
    }
    for p in r.proposals {
        b.push(Block::H(
            2,
            format!(
                "{} — {} ({} connections, {} tuples)",
                p.workload, p.state, p.connections, p.tuples
            ),
        ));
        let rows = p
            .rules
            .iter()
            .map(|rule| {
                let e = rule.evidence.as_ref();
                vec![
                    format!("{} {}", rule.direction, rule.index),
                    rule.peers.join(", "),
                    rule.ports.join(", "),
                    e.map_or("added".into(), |e| e.connections.to_string()),
                    e.map_or(String::new(), |e| e.bytes.to_string()),
                    e.map_or(String::new(), |e| when(e.first)),
                    e.map_or(String::new(), |e| when(e.last)),
                    e.map_or(String::new(), |_| rule.replicas.to_string()),
                ]
            })
            .collect();
        b.push(Block::Table(
            vec![
                "rule",
                "peers",
                "ports",
                "connections",
                "bytes",
                "first seen",
                "last seen",
                "replicas",
            ],
            rows,
        ));
        let w = policies::connlist::Node::Workload(p.workload.clone());
        let mine: Vec<&Change> = r
            .changes
            .iter()
            .filter(|c| c.src == w || c.dst == w)
            .collect();
        let line = |c: &Change| {
            format!(
                "{} → {}: {} (today: {})",
                c.src,
                c.dst,
                c.new.as_ref().map_or("nothing".into(), |s| s.to_string()),
                c.old.as_ref().map_or("nothing".into(), |s| s.to_string())
            )
        };
        let of = |effects: &[&str]| -> Vec<String> {
            mine.iter()
                .filter(|c| effects.contains(&c.effect()))
                .map(|c| line(c))
                .collect()
        };
        let removed = of(&["removed", "narrows"]);
        let added = of(&["added", "widens"]);
        let both = of(&["changes"]);
        if removed.is_empty() && added.is_empty() && both.is_empty() {
            b.push(Block::P("Against today's policies: no change.".into()));
        }
        if !removed.is_empty() {
            b.push(Block::P(format!(
                "Takes away or narrows ({} pairs) against today's policies:",
                removed.len()
            )));
            b.push(Block::List(removed));
        }
        if !added.is_empty() {
            b.push(Block::P(format!(
                "Adds or widens ({} pairs) against today's policies:",
                added.len()
            )));
            b.push(Block::List(added));
        }
        if !both.is_empty() {
            b.push(Block::P(format!(
                "Both adds and takes away ({} pairs) against today's policies:",
                both.len()
            )));
            b.push(Block::List(both));
        }
        if !p.warnings.is_empty() {
            b.push(Block::P("Look twice:".into()));
            b.push(Block::List(p.warnings.clone()));
        }
    }
    b
}

/// The report as Markdown.
pub fn markdown(r: &ReportInput) -> String {
    let mut s = String::new();
    for b in blocks(r) {
        match b {
            Block::H(l, t) => {
                let _ = writeln!(s, "{} {t}\n", "#".repeat(l as usize));
            }
            Block::P(t) => {
                let _ = writeln!(s, "{t}\n");
            }
            Block::List(items) => {
                for i in items {
                    let _ = writeln!(s, "- {}", i.replace('\n', " "));
                }
                s.push('\n');
            }
            Block::Table(h, rows) => {
                let _ = writeln!(s, "| {} |", h.join(" | "));
                let _ = writeln!(s, "|{}", "---|".repeat(h.len()));
                for r in rows {
                    let cells: Vec<String> = r.iter().map(|c| c.replace('|', "\\|")).collect();
                    let _ = writeln!(s, "| {} |", cells.join(" | "));
                }
                s.push('\n');
            }
        }
    }
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The report as a standalone HTML page.
pub fn html(r: &ReportInput) -> String {
    let mut s = String::from("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>septa recommend</title>\n<style>body{font-family:sans-serif;max-width:75em;margin:2em auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left}</style></head><body>\n");
    for b in blocks(r) {
        match b {
            Block::H(l, t) => {
                let _ = writeln!(s, "<h{l}>{}</h{l}>", esc(&t));
            }
            Block::P(t) => {
                let _ = writeln!(s, "<p>{}</p>", esc(&t));
            }
            Block::List(items) => {
                s.push_str("<ul>\n");
                for i in items {
                    let _ = writeln!(s, "<li>{}</li>", esc(&i));
                }
                s.push_str("</ul>\n");
            }
            Block::Table(h, rows) => {
                s.push_str("<table>\n<tr>");
                for c in h {
                    let _ = write!(s, "<th>{}</th>", esc(c));
                }
                s.push_str("</tr>\n");
                for r in rows {
                    s.push_str("<tr>");
                    for c in r {
                        let _ = write!(s, "<td>{}</td>", esc(&c));
                    }
                    s.push_str("</tr>\n");
                }
                s.push_str("</table>\n");
            }
        }
    }
    s.push_str("</body></html>\n");
    s
}
