//! The agent's side of FqdnPolicy: what the policies compile into, which endpoints get which
//! FQDN rules, and the loop that turns held-back DNS answers into allowlist entries before it
//! puts the answers back on their way.
//!
//! An FqdnPolicy makes the pods it selects egress-isolated (like a NetworkPolicy with
//! `policyTypes: [Egress]`) and allows them DNS (UDP and TCP 53) to its trusted resolvers only,
//! so that a pod cannot ask a server it controls; egress to a name's addresses comes from the
//! answers to the queries it sent them.

use std::{collections::BTreeMap, net::IpAddr};

use dataplane_common::rule;
use policies::model::{Pod, Policy};
use tracing::{debug, warn};

use crate::dns::{
    engine::{Engine, Outcome, SlotRule},
    inject::Injector,
    maps::{DnsFrameKind, HeldAnswer},
    spec::FqdnSpec,
};
use dataplane::Datapath;

/// The resolvers a policy trusts: its own, else the agent's.
pub fn resolvers_of<'a>(spec: &'a FqdnSpec, default: &'a [IpAddr]) -> &'a [IpAddr] {
    if spec.resolvers.is_empty() {
        default
    } else {
        &spec.resolvers
    }
}

/// The NetworkPolicy equivalent of each FqdnPolicy: egress isolation plus DNS to its trusted
/// resolvers (see [`FqdnSpec::isolation_policy`], which `septa connlist` models too).
pub fn isolation_policies(specs: &[FqdnSpec], default_resolvers: &[IpAddr]) -> Vec<Policy> {
    specs
        .iter()
        .map(|s| s.isolation_policy(default_resolvers))
        .collect()
}

/// Every FqdnPolicy rule with its id (`rule::FQDN_BASE + n`, in namespace/name/index order, so
/// ids are stable while the policies are).
pub fn numbered(specs: &[FqdnSpec]) -> Vec<(u32, &FqdnSpec, usize)> {
    let mut v: Vec<(&FqdnSpec, usize)> = specs
        .iter()
        .flat_map(|s| (0..s.rules.len()).map(move |i| (s, i)))
        .collect();
    v.sort_by(|a, b| (&a.0.namespace, &a.0.name, a.1).cmp(&(&b.0.namespace, &b.0.name, b.1)));
    v.into_iter()
        .enumerate()
        .map(|(n, (s, i))| (rule::FQDN_BASE + n as u32, s, i))
        .collect()
}

/// The FQDN rules of each endpoint slot, from the pods behind the slots, each with the
/// resolvers its policy trusts.
pub fn slot_rules<'a>(
    specs: &[FqdnSpec],
    default_resolvers: &[IpAddr],
    pods: impl Iterator<Item = (u32, &'a Pod)>,
) -> BTreeMap<u32, Vec<SlotRule>> {
    let numbered = numbered(specs);
    let mut out = BTreeMap::new();
    for (slot, pod) in pods {
        let rules: Vec<SlotRule> = numbered
            .iter()
            .filter(|(_, s, _)| s.namespace == pod.namespace && s.selector.matches(&pod.labels))
            .map(|(id, s, i)| SlotRule {
                rule_id: *id,
                rule: s.rules[*i].clone(),
                resolvers: resolvers_of(s, default_resolvers).to_vec(),
            })
            .collect();
        if !rules.is_empty() {
            out.insert(slot, rules);
        }
    }
    out
}

/// Handle the frames the kernel handed over: queries are remembered; answers have their
/// entries written, then are re-injected. Returns whether flow records' names changed. An
/// answer is always re-injected (a malformed, unsolicited or unmatched one adds nothing), so
/// DNS keeps working; only a failed map write holds it back (the client retries), because
/// delivering it then would produce exactly the first-packet drop this exists to prevent.
pub fn handle_answers(
    engine: &mut Engine,
    dp: &mut Datapath,
    injector: &Injector,
    frames: Vec<HeldAnswer>,
) -> bool {
    let mut names_changed = false;
    for a in frames {
        let now = hostnet::clock::monotonic_ns();
        if a.kind == DnsFrameKind::Query {
            let r = engine.on_query(a.ifindex, &a.frame, now);
            metrics::counter!("septa_dns_queries_total", "result" => r).increment(1);
            continue;
        }
        let answered = engine.on_answer(a.ifindex, &a.frame, now);
        let mut ok = true;
        for o in &answered.outcomes {
            ok &= write_outcome(dp, a.ifindex, o);
            names_changed |= o.names_changed;
        }
        if !ok {
            metrics::counter!("septa_dns_answers_total", "result" => "held_back").increment(1);
            continue;
        }
        deliver(injector, a.ifindex, &answered.deliver);
    }
    metrics::gauge!("septa_fqdn_entries").set(engine.len() as f64);
    metrics::gauge!("septa_dns_pending_queries").set(engine.pending_queries() as f64);
    names_changed
}

/// Count one answer's outcome and write its entries; false if a write failed (the answer
/// must then not be delivered).
fn write_outcome(dp: &mut Datapath, ifindex: u32, o: &Outcome) -> bool {
    metrics::counter!("septa_dns_answers_total", "result" => o.result).increment(1);
    if matches!(
        o.result,
        "unsolicited" | "mismatched" | "untrusted_resolver"
    ) {
        debug!(
            ifindex,
            result = o.result,
            "DNS answer delivered without being learned"
        );
    }
    let mut ok = true;
    for k in &o.remove {
        if let Err(e) = dp.remove_fqdn(k) {
            warn!(error = %e, "removing an evicted FQDN entry");
        }
    }
    for (k, v) in &o.write {
        if let Err(e) = dp.set_fqdn(k, v) {
            warn!(error = %e, "writing an FQDN entry; the answer is held back (the client will retry)");
            ok = false;
        }
    }
    metrics::counter!("septa_fqdn_evicted_total").increment(o.evicted as u64);
    if o.result == "added" {
        metrics::counter!("septa_fqdn_addresses_added_total").increment(o.addresses as u64);
    }
    if !o.names.is_empty() {
        debug!(ifindex, names = ?o.names, entries = o.write.len(), "DNS answer learned");
    }
    ok
}

/// Re-inject frames out of `ifindex`, in order.
fn deliver(injector: &Injector, ifindex: u32, frames: &[Vec<u8>]) {
    for f in frames {
        if let Err(e) = injector.send(ifindex, f) {
            warn!(ifindex, error = %e, "re-injecting a DNS answer");
            metrics::counter!("septa_dns_reinject_errors_total").increment(1);
        }
    }
}

/// Deliver, unlearned, the TCP answer segments whose message did not complete in time.
pub fn release_stalled(engine: &mut Engine, injector: &Injector) {
    for (slot, frames) in engine.stalled_streams(hostnet::clock::monotonic_ns()) {
        metrics::counter!("septa_dns_answers_total", "result" => "incomplete").increment(1);
        deliver(injector, slot, &frames);
    }
}

/// Tell the kernel the agent is here to take DNS frames (see [`dataplane_common::agent`]);
/// `running == false` on the way out, so that answers pass at once instead of after the
/// heartbeat goes stale.
pub fn heartbeat(dp: &mut Datapath, running: bool) {
    let ns = if running {
        hostnet::clock::monotonic_ns()
    } else {
        0
    };
    if let Err(e) = dp.set_agent_heartbeat(ns) {
        warn!(error = %e, "writing the agent heartbeat; DNS answers may pass unlearned");
    }
}

/// Remove entries whose TTL and grace period are over; returns how many.
pub fn gc(engine: &mut Engine, dp: &mut Datapath) -> usize {
    let remove = engine.gc(hostnet::clock::monotonic_ns());
    for k in &remove {
        if let Err(e) = dp.remove_fqdn(k) {
            warn!(error = %e, "removing an expired FQDN entry");
        }
    }
    metrics::counter!("septa_fqdn_entries_expired_total").increment(remove.len() as u64);
    metrics::gauge!("septa_fqdn_entries").set(engine.len() as f64);
    remove.len()
}

/// A resolver for pre-resolution: `server`, or the system's (`/etc/resolv.conf`); no cache,
/// so every resolution sees the current TTL.
pub fn resolver(
    server: Option<std::net::SocketAddr>,
) -> Result<hickory_resolver::TokioResolver, String> {
    use hickory_resolver::{
        config::{NameServerConfigGroup, ResolverConfig},
        name_server::TokioConnectionProvider,
        TokioResolver,
    };
    let mut b = match server {
        Some(s) => TokioResolver::builder_with_config(
            ResolverConfig::from_parts(
                None,
                vec![],
                NameServerConfigGroup::from_ips_clear(&[s.ip()], s.port(), true),
            ),
            TokioConnectionProvider::default(),
        ),
        None => {
            TokioResolver::builder_tokio().map_err(|e| format!("reading /etc/resolv.conf: {e}"))?
        }
    };
    let o = b.options_mut();
    o.cache_size = 0;
    o.timeout = std::time::Duration::from_secs(2);
    o.attempts = 2;
    Ok(b.build())
}

/// One resolution: the addresses with their TTL.
pub type Resolved = (String, Result<Vec<(std::net::IpAddr, u32)>, String>);

/// Resolve the rules' exact names every `interval` (and when the set changes).
pub async fn preresolve(
    resolver: hickory_resolver::TokioResolver,
    mut names: tokio::sync::watch::Receiver<std::collections::BTreeSet<String>>,
    interval: std::time::Duration,
    tx: tokio::sync::mpsc::UnboundedSender<Resolved>,
) {
    loop {
        let current = names.borrow_and_update().clone();
        for n in current {
            // The trailing dot: the name as written, never a search-domain expansion.
            let r = resolver
                .lookup_ip(format!("{n}."))
                .await
                .map(|l| {
                    let ttl = l
                        .as_lookup()
                        .record_iter()
                        .map(|r| r.ttl())
                        .min()
                        .unwrap_or(0);
                    l.iter().map(|ip| (ip, ttl)).collect()
                })
                .map_err(|e| e.to_string());
            if tx.send((n, r)).is_err() {
                return;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            r = names.changed() => if r.is_err() { return },
        }
    }
}

/// Take one pre-resolution: entries for every endpoint whose rules name it exactly, alive for
/// at least two intervals (so they never lapse between resolutions). Returns whether it
/// added an address not held before.
pub fn handle_resolved(
    engine: &mut Engine,
    dp: &mut Datapath,
    interval: std::time::Duration,
    (name, result): Resolved,
) -> bool {
    let addrs = match result {
        Ok(a) => a,
        Err(e) => {
            metrics::counter!("septa_dns_preresolve_total", "result" => "error").increment(1);
            debug!(name = %name, error = %e, "pre-resolution failed; entries expire with their TTL");
            return false;
        }
    };
    metrics::counter!("septa_dns_preresolve_total", "result" => "ok").increment(1);
    let o = engine.on_resolved(&name, &addrs, hostnet::clock::monotonic_ns(), interval * 2);
    for k in &o.remove {
        let _ = dp.remove_fqdn(k);
    }
    for (k, v) in &o.write {
        if let Err(e) = dp.set_fqdn(k, v) {
            warn!(name = %name, error = %e, "writing a pre-resolved FQDN entry");
        }
    }
    metrics::gauge!("septa_fqdn_entries").set(engine.len() as f64);
    o.names_changed
}
