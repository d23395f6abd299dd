//! `septa recommend`: least-privilege NetworkPolicies learned from flow records.
//!
//! [`observe`] turns flow records into connection tuples with evidence, [`propose`] turns the
//! tuples into one NetworkPolicy (and optionally one `FqdnPolicy`) per workload, [`replay`]
//! checks a proposal against another window of traffic, [`report`] writes the review report.

pub mod cli;
pub mod observe;
pub mod propose;
pub mod replay;
pub mod report;

use std::{
    fmt::Write as _,
    io::{BufReader, Write},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context, Result};

use crate::output::UsageError;
use policies::Cluster;

use observe::{Observations, Observer, Party, Tuple, Window};
use propose::{Options, Proposal};

/// Where flow records come from.
#[derive(Clone, Debug)]
pub enum FlowSource {
    File(PathBuf),
    /// The local agent's recent records (its query socket).
    Agent(PathBuf),
}

/// A `septa recommend` run.
#[derive(Clone, Debug)]
pub struct Request {
    pub manifests: Vec<PathBuf>,
    pub flows: Vec<FlowSource>,
    pub options: Options,
    /// Learn from this long from the start of the data (with `replay_window`).
    pub learn_window: Option<Duration>,
    /// Replay this long after the learning window.
    pub replay_window: Option<Duration>,
    /// Or replay these files.
    pub replay_flows: Vec<PathBuf>,
}

/// What a run produced.
pub struct Outcome {
    pub proposals: Vec<Proposal>,
    pub warnings: Vec<String>,
    pub observations: Observations,
    pub replay: Option<replay::ReplayResult>,
    pub changes: Vec<policies::connlist::Change>,
}

fn read_into(obs: &mut Observer, src: &FlowSource) -> Result<()> {
    match src {
        FlowSource::File(p) => {
            let f = std::fs::File::open(p).with_context(|| format!("{}", p.display()))?;
            let (good, bad) = obs
                .read(&p.display().to_string(), BufReader::new(f))
                .with_context(|| format!("reading {}", p.display()))?;
            // A file of nothing but bad lines is the wrong file (a YAML manifest, a binary
            // IPFIX dump), not traffic that happened to be malformed.
            if good == 0 && bad > 0 {
                bail!(
                    "{}: none of its {bad} lines is a flow record (JSON lines as written by septa-agent --flow-log)",
                    p.display()
                );
            }
            Ok(())
        }
        FlowSource::Agent(sock) => {
            let mut n = 0usize;
            let filter = api::protocol::FlowFilter::default();
            api::protocol::query_flows(
                sock,
                &filter,
                usize::MAX,
                false,
                Duration::from_secs(10),
                |rec| {
                    n += 1;
                    obs.record(&format!("agent:{n}"), &rec);
                    true
                },
            )
            .with_context(|| format!("querying the agent at {}", sock.display()))
        }
    }
}

/// The earliest record time over the sources (for windows).
fn start_of(cluster: &Cluster, sources: &[FlowSource]) -> Result<Option<SystemTime>> {
    let mut o = Observer::new(cluster, Window::default());
    for s in sources {
        read_into(&mut o, s)?;
    }
    Ok(o.obs.span.map(|s| s.0))
}

/// Run: load manifests and flows, propose, optionally replay, and diff against today.
pub fn run(req: &Request) -> Result<Outcome> {
    let (cluster, problems) = crate::objects::load(&req.manifests, None);
    if !problems.is_empty() {
        let mut msg = String::from(
            "the manifests have errors; a proposal from partial manifests could be wrong:\n",
        );
        for d in &problems.0 {
            let _ = writeln!(msg, "  {}: {} {}: {}", d.file, d.object, d.field, d.message);
        }
        bail!(msg);
    }
    if req.flows.is_empty() {
        return Err(
            UsageError("no flow records given (--flows FILE or --agent SOCKET)".into()).into(),
        );
    }
    let (learn, replay_w) = match (req.learn_window, req.replay_window) {
        (Some(l), Some(r)) => {
            let Some(start) = start_of(&cluster, &req.flows)? else {
                bail!("the flow records hold no valid record to start the windows from");
            };
            (
                Window {
                    from: Some(start),
                    until: Some(start + l),
                },
                Some(Window {
                    from: Some(start + l),
                    until: Some(start + l + r),
                }),
            )
        }
        (None, None) => (Window::default(), None),
        _ => return Err(UsageError("--learn and --replay go together".into()).into()),
    };
    let mut learner = Observer::new(&cluster, learn);
    for s in &req.flows {
        read_into(&mut learner, s)?;
    }
    let pods = cluster.pods.clone();
    let workloads = learner.workloads.clone();
    let learned = learner.finish();
    let (proposals, warnings) = propose::propose(&learned, &workloads, &pods, &req.options);
    let replay_obs = if let Some(w) = replay_w {
        let mut r = Observer::new(&cluster, w);
        for s in &req.flows {
            read_into(&mut r, s)?;
        }
        Some(r.finish_for_replay())
    } else if !req.replay_flows.is_empty() {
        let mut r = Observer::new(&cluster, Window::default());
        for p in &req.replay_flows {
            read_into(&mut r, &FlowSource::File(p.clone()))?;
        }
        Some(r.finish_for_replay())
    } else {
        None
    };
    let replay = match &replay_obs {
        Some(ro) => {
            Some(replay::replay(&cluster, &proposals, &learned, ro).map_err(anyhow::Error::msg)?)
        }
        None => None,
    };
    // Today's policies versus today's plus the proposal (as enforcement would see it).
    let mut with = replay::proposal_cluster(&cluster, &proposals).map_err(anyhow::Error::msg)?;
    with.policies.extend(cluster.policies.iter().cloned());
    with.fqdn_policies
        .extend(cluster.fqdn_policies.iter().cloned());
    let changes = policies::connlist::diff(&cluster, &with);
    Ok(Outcome {
        proposals,
        warnings,
        observations: learned,
        replay,
        changes,
    })
}

/// `src -> dst PROTO/port`.
pub fn describe_tuple(t: &Tuple) -> String {
    let side = |p: &Party| match p {
        Party::Workload(w) => w.to_string(),
        Party::External(ip) => ip.to_string(),
    };
    format!(
        "{} -> {} {}/{}",
        side(&t.src),
        side(&t.dst),
        t.proto,
        t.port
    )
}

/// The proposals as multi-document YAML, ready for `kubectl apply -f`.
pub fn yaml(proposals: &[Proposal]) -> Result<String> {
    let mut s =
        String::from("# Generated by `septa recommend`. Review before applying: see --report.\n");
    for p in proposals {
        let _ = writeln!(
            s,
            "---\n# {}: {} ({} connections, {} tuples)",
            p.workload, p.state, p.connections, p.tuples
        );
        s.push_str(&serde_yaml::to_string(&p.policy)?);
        if let Some(f) = &p.fqdn {
            s.push_str("---\n");
            s.push_str(&serde_yaml::to_string(f)?);
        }
    }
    Ok(s)
}

/// Write the report; the format follows the extension (`.html`/`.htm`, else Markdown).
pub fn write_report(path: &Path, out: &Outcome) -> Result<()> {
    let input = report::ReportInput {
        proposals: &out.proposals,
        obs: &out.observations,
        changes: &out.changes,
        warnings: &out.warnings,
        replay: out.replay.as_ref(),
    };
    let text = match path.extension().and_then(|e| e.to_str()) {
        Some("html" | "htm") => report::html(&input),
        _ => report::markdown(&input),
    };
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The CLI: YAML to `output` (or stdout), summary and replay to `err`. Exit code 0; 3 when a
/// replay found connections the proposal would deny.
pub fn cmd_recommend(
    req: &Request,
    output: Option<&Path>,
    report_path: Option<&Path>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32> {
    let o = run(req)?;
    let y = yaml(&o.proposals)?;
    match output {
        Some(p) => std::fs::write(p, &y).with_context(|| format!("writing {}", p.display()))?,
        None => out.write_all(y.as_bytes())?,
    }
    if let Some(r) = report_path {
        write_report(r, &o)?;
    }
    writeln!(
        err,
        "septa recommend: {} records, {} tuples, {} proposals",
        o.observations.records,
        o.observations.tuples.len(),
        o.proposals.len()
    )?;
    for (reason, (n, first)) in &o.observations.skips.by_reason {
        writeln!(err, "  skipped {n} ({reason}), first: {}", first.join("; "))?;
    }
    for w in &o.warnings {
        writeln!(err, "  warning: {w}")?;
    }
    for p in &o.proposals {
        writeln!(
            err,
            "  {}: {} ({} connections, {} tuples, {} rules)",
            p.workload,
            p.state,
            p.connections,
            p.tuples,
            p.rules.len()
        )?;
    }
    let mut code = 0;
    if let Some(rp) = &o.replay {
        writeln!(err, "replay: {}", rp.summary())?;
        for (t, n) in &rp.denied {
            writeln!(err, "  would deny: {} ({n} connections)", describe_tuple(t))?;
        }
        if rp.denied_connections > 0 {
            code = 3;
        }
    }
    Ok(code)
}
