//! The agent's threat-feed loop: one task per feed fetches and parses on its schedule; the
//! agent's main loop takes each result through the [`Store`] guards and writes the minimal
//! diff to the kernel tries (a reconciler: desired = merged last good lists, actual = what the
//! tries hold).
//!
//! # Restart
//! The tries are pinned, so enforcement survives an agent restart. A restarted agent adopts
//! what the tries hold and, until every configured feed has delivered one good list, only adds
//! entries: a feed whose host is unreachable after a restart must not open what its last good
//! list blocked. Feed ids (which flow records and counters are keyed by) are kept in
//! `<state-dir>/feeds.json` so attribution survives too.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use ipnetwork::IpNetwork;
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{error, info, warn};

use super::{
    fetch::{self, FetchError, Fetched, Limits, Validators},
    parse::{parse, Parsed},
    spec::FeedSpec,
    store::{diff, Blocklist, Store},
};
use dataplane::{Datapath, Error};

/// One fetch outcome, sent by a feed's task to the main loop.
#[derive(Debug)]
pub struct FeedUpdate {
    pub name: String,
    /// Which task sent it (a spec change restarts the task; stale results are ignored).
    pub generation: u64,
    pub outcome: Outcome,
}

/// What a fetch produced.
#[derive(Debug)]
pub enum Outcome {
    /// The source answered "not modified".
    NotModified,
    /// A body was fetched and parsed (or failed to parse).
    Parsed(Result<Parsed, String>),
    /// The fetch failed.
    Failed(FetchError),
}

struct Running {
    spec: FeedSpec,
    generation: u64,
    task: Option<JoinHandle<()>>,
}

/// What one apply did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub upserts: usize,
    pub removals: usize,
    /// Entries left in place because a feed has not delivered since the agent started.
    pub held: usize,
}

/// The file in the state directory that keeps feed ids.
const IDS_FILE: &str = "feeds.json";

/// Settings of the feed loop (from the agent's configuration).
#[derive(Clone, Debug)]
pub struct Settings {
    pub limits: Limits,
    pub retry_min: Duration,
    /// Ranges never blocked (besides loopback and the node's addresses).
    pub protect: Vec<IpNetwork>,
    /// Where feed ids are kept across restarts (`feeds.json`, written like the registry).
    pub state: std::sync::Arc<crate::dirs::Dir>,
    /// CA certificates trusted for HTTPS feeds besides the public roots.
    pub ca: Vec<reqwest::Certificate>,
}

/// The feeds, their last good lists and what the kernel tries hold.
pub struct Manager {
    store: Store,
    applied: Blocklist,
    running: BTreeMap<String, Running>,
    /// Configured feeds with no good list since the agent started.
    pending: BTreeSet<String>,
    wanted: Vec<FeedSpec>,
    next_generation: u64,
    settings: Settings,
    client: reqwest::Client,
    tx: Option<mpsc::UnboundedSender<FeedUpdate>>,
    ids_path: PathBuf,
    /// Why each feed's last refresh failed, until one succeeds (for `septa status`).
    errors: BTreeMap<String, String>,
}

impl Manager {
    /// Adopt what the tries hold; `host` are the node's addresses (never blocked).
    pub fn new(dp: &Datapath, settings: Settings, host: &[IpAddr]) -> Result<Self, Error> {
        let mut protect = settings.protect.clone();
        protect.push("127.0.0.0/8".parse().expect("valid"));
        protect.push("::1/128".parse().expect("valid"));
        protect.extend(host.iter().map(|ip| IpNetwork::from(*ip)));
        let client = fetch::client(&settings.ca).map_err(Error::Config)?;
        let applied = dp.blocklist()?;
        let ids_path = settings.state.join(IDS_FILE);
        let mut store = Store::new(protect);
        // Ids from the last run, so adopted entries keep their attribution.
        if let Ok(Some(text)) = settings.state.read(IDS_FILE, 16 << 20) {
            match serde_json::from_slice::<BTreeMap<String, u32>>(&text) {
                Ok(ids) => {
                    for (name, id) in ids {
                        store.reserve(&name, id);
                    }
                }
                Err(e) => {
                    warn!(path = %ids_path.display(), error = %e, "feed ids unreadable; new ids will be assigned")
                }
            }
        }
        if !applied.is_empty() {
            info!(
                entries = applied.len(),
                "threat-feed blocklist adopted from pinned maps"
            );
        }
        Ok(Manager {
            store,
            applied,
            running: BTreeMap::new(),
            pending: BTreeSet::new(),
            wanted: Vec::new(),
            next_generation: 1,
            settings,
            client,
            tx: None,
            ids_path,
            errors: BTreeMap::new(),
        })
    }

    /// The feeds the manifests ask for (applied by [`Manager::sync`]).
    pub fn set_wanted(&mut self, specs: Vec<FeedSpec>) {
        self.wanted = specs;
    }

    /// Feed id → name, for flow records.
    pub fn names(&self) -> BTreeMap<u32, String> {
        self.store
            .names()
            .filter_map(|n| Some((self.store.id(n)?, n.to_owned())))
            .collect()
    }

    /// Start, restart and stop feed tasks to match the wanted specs; drop removed feeds'
    /// entries. Needs the tokio runtime (it spawns the fetch tasks).
    pub fn sync(
        &mut self,
        dp: &mut Datapath,
        tx: &mpsc::UnboundedSender<FeedUpdate>,
    ) -> Result<(), Error> {
        self.tx = Some(tx.clone());
        let wanted: BTreeMap<String, FeedSpec> = self
            .wanted
            .iter()
            .map(|s| (s.name.clone(), s.clone()))
            .collect();
        let mut changed = false;
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|n| !wanted.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(r) = self.running.remove(&name) {
                if let Some(t) = r.task {
                    t.abort();
                }
            }
            self.pending.remove(&name);
            changed |= self.store.remove(&name);
            metrics::gauge!("septa_feed_entries", "feed" => name.clone()).set(0.0);
            info!(feed = %name, "threat feed removed");
        }
        // Feeds reserved from the last run but no longer configured.
        let stale: Vec<String> = self
            .store
            .names()
            .filter(|n| !wanted.contains_key(*n))
            .map(str::to_owned)
            .collect();
        for name in stale {
            changed |= self.store.remove(&name);
        }
        for (name, spec) in wanted {
            if self.running.get(&name).is_some_and(|r| r.spec == spec) {
                continue;
            }
            if let Some(r) = self.running.remove(&name) {
                if let Some(t) = r.task {
                    t.abort();
                }
                // Actions may have changed (drop → audit, hooks): they apply at once.
                changed |= self.store.set_actions(&name, spec.actions());
            } else if !self.store.has_list(&name) {
                self.pending.insert(name.clone());
            }
            let generation = self.next_generation;
            self.next_generation += 1;
            let task = tokio::spawn(run_feed(
                spec.clone(),
                generation,
                self.client.clone(),
                self.settings.limits,
                self.settings.retry_min,
                tx.clone(),
            ));
            info!(feed = %name, source = %source_str(&spec), refresh = ?spec.refresh, "threat feed started");
            self.running.insert(
                name,
                Running {
                    spec,
                    generation,
                    task: Some(task),
                },
            );
        }
        if changed {
            self.apply(dp)?;
        }
        Ok(())
    }

    /// Take one fetch result. Returns what was written to the tries.
    pub fn on_update(&mut self, dp: &mut Datapath, u: FeedUpdate) -> Result<Applied, Error> {
        let Some(run) = self.running.get(&u.name) else {
            return Ok(Applied::default());
        };
        if run.generation != u.generation {
            return Ok(Applied::default());
        }
        let actions = run.spec.actions();
        let name = u.name;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let parsed = match u.outcome {
            Outcome::NotModified => {
                metrics::counter!("septa_feed_refreshes_total", "feed" => name.clone(), "result" => "not_modified").increment(1);
                metrics::gauge!("septa_feed_last_refresh_timestamp_seconds", "feed" => name.clone()).set(now);
                return Ok(Applied::default());
            }
            Outcome::Failed(e) => {
                metrics::counter!("septa_feed_refresh_errors_total", "feed" => name.clone(), "reason" => e.metric_label()).increment(1);
                error!(feed = %name, error = %e, entries_kept = self.store.len(&name), "threat feed fetch failed; keeping the last good list");
                self.errors.insert(name, e.to_string());
                return Ok(Applied::default());
            }
            Outcome::Parsed(p) => p,
        };
        if let Ok(p) = &parsed {
            if p.bad > 0 {
                let first: Vec<String> = p
                    .first_bad
                    .iter()
                    .map(|(line, why)| format!("line {line}: {why}"))
                    .collect();
                warn!(feed = %name, bad_lines = p.bad, first = %first.join("; "), "threat feed has bad lines; they were skipped");
            }
            metrics::gauge!("septa_feed_bad_lines", "feed" => name.clone()).set(p.bad as f64);
        }
        let fresh = !self.store.has_list(&name);
        match self.store.accept(&name, actions, parsed) {
            Ok(n) => {
                self.pending.remove(&name);
                self.errors.remove(&name);
                metrics::counter!("septa_feed_refreshes_total", "feed" => name.clone(), "result" => "updated").increment(1);
                metrics::gauge!("septa_feed_last_refresh_timestamp_seconds", "feed" => name.clone()).set(now);
                metrics::gauge!("septa_feed_entries", "feed" => name.clone()).set(n as f64);
                if fresh {
                    self.save_ids();
                    if let Some(id) = self.store.id(&name) {
                        dp.reset_feed_counts(id)?;
                    }
                }
                info!(feed = %name, entries = n, "threat feed refreshed");
                self.apply(dp)
            }
            Err(refused) => {
                metrics::counter!("septa_feed_refresh_errors_total", "feed" => name.clone(), "reason" => refused.metric_label()).increment(1);
                error!(feed = %name, error = %refused, entries_kept = self.store.len(&name), "threat feed refresh refused; keeping the last good list");
                self.errors.insert(name, refused.to_string());
                Ok(Applied::default())
            }
        }
    }

    /// Write the difference between the merged lists and the tries.
    fn apply(&mut self, dp: &mut Datapath) -> Result<Applied, Error> {
        let t = Instant::now();
        let (desired, protected) = self.store.desired();
        let mut d = diff(&self.applied, &desired);
        let mut held = 0;
        if !self.pending.is_empty() {
            // Some feed has not delivered since the start: what the tries hold may be its.
            let pending: std::collections::BTreeSet<u32> = self
                .pending
                .iter()
                .filter_map(|n| self.store.id(n))
                .collect();
            held = super::store::hold_pending_removals(&mut d.remove, &self.applied, &pending);
        }
        if d.is_empty() {
            return Ok(Applied {
                held,
                ..Applied::default()
            });
        }
        let res = dp.apply_blocklist(&d);
        if let Err(e) = res {
            // Part of the diff may be in: re-read so the next diff starts from the truth.
            self.applied = dp.blocklist().unwrap_or_default();
            return Err(e);
        }
        for (net, e) in &d.upsert {
            self.applied.insert(*net, *e);
        }
        for net in &d.remove {
            self.applied.remove(net);
        }
        if !d.upsert.is_empty() {
            // Connections to newly listed addresses are re-checked on their next packet.
            dp.bump_revision()?;
        }
        let v4 = self.applied.keys().filter(|n| n.is_ipv4()).count();
        metrics::gauge!("septa_blocklist_entries", "family" => "ipv4").set(v4 as f64);
        metrics::gauge!("septa_blocklist_entries", "family" => "ipv6")
            .set((self.applied.len() - v4) as f64);
        metrics::gauge!("septa_feed_protected_skipped").set(protected as f64);
        metrics::histogram!("septa_blocklist_update_duration_seconds")
            .record(t.elapsed().as_secs_f64());
        info!(
            upserts = d.upsert.len(),
            removals = d.remove.len(),
            held,
            protected_skipped = protected,
            elapsed_ms = t.elapsed().as_millis() as u64,
            "blocklist updated"
        );
        Ok(Applied {
            upserts: d.upsert.len(),
            removals: d.remove.len(),
            held,
        })
    }

    /// Each configured feed: the ranges of its last good list, and why its last refresh
    /// failed, if it did.
    pub fn status(&self) -> Vec<api::protocol::FeedStatus> {
        self.wanted
            .iter()
            .map(|spec| api::protocol::FeedStatus {
                name: spec.name.clone(),
                entries: self.store.len(&spec.name),
                error: self.errors.get(&spec.name).cloned().or_else(|| {
                    self.pending
                        .contains(&spec.name)
                        .then(|| "no list fetched since the agent started".to_owned())
                }),
            })
            .collect()
    }

    /// Export the kernel's per-feed counters.
    pub fn scrape(&self, dp: &Datapath) {
        let Ok(counts) = dp.feed_counts() else { return };
        for (id, name) in self.names() {
            if let Some(c) = counts.get(id as usize) {
                metrics::counter!("septa_feed_drops_total", "feed" => name.clone())
                    .absolute(c.drops);
                metrics::counter!("septa_feed_audits_total", "feed" => name).absolute(c.audits);
            }
        }
    }

    fn save_ids(&self) {
        let ids: BTreeMap<String, u32> = self
            .store
            .names()
            .filter_map(|n| Some((n.to_owned(), self.store.id(n)?)))
            .collect();
        let bytes = serde_json::to_vec(&ids).unwrap_or_default();
        if let Err(e) = self.settings.state.replace(IDS_FILE, &bytes, 0o600) {
            warn!(path = %self.ids_path.display(), error = %e, "cannot save feed ids");
        }
    }
}

fn source_str(spec: &FeedSpec) -> String {
    match &spec.source {
        super::spec::Source::Url(u) => u.clone(),
        super::spec::Source::File(p) => p.display().to_string(),
    }
}

/// One feed's schedule: fetch, parse off the async threads, report, wait (the refresh period,
/// or a doubling backoff after failures).
async fn run_feed(
    spec: FeedSpec,
    generation: u64,
    client: reqwest::Client,
    limits: Limits,
    retry_min: Duration,
    tx: mpsc::UnboundedSender<FeedUpdate>,
) {
    let mut validators = Validators::default();
    let mut failures = 0u32;
    loop {
        let outcome = match fetch::fetch(&client, &spec.source, &validators, limits).await {
            Ok(Fetched::NotModified) => {
                failures = 0;
                Outcome::NotModified
            }
            Ok(Fetched::Body(body, v)) => {
                let format = spec.format;
                let parsed = tokio::task::spawn_blocking(move || parse(&body, format))
                    .await
                    .unwrap_or_else(|e| Err(format!("parser task failed: {e}")));
                if parsed.is_ok() {
                    validators = v;
                    failures = 0;
                } else {
                    failures += 1;
                }
                Outcome::Parsed(parsed)
            }
            Err(e) => {
                failures += 1;
                Outcome::Failed(e)
            }
        };
        let update = FeedUpdate {
            name: spec.name.clone(),
            generation,
            outcome,
        };
        if tx.send(update).is_err() {
            return;
        }
        let wait = match failures {
            0 => spec.refresh,
            n => fetch::backoff(n - 1, retry_min, spec.refresh),
        };
        tokio::time::sleep(wait).await;
    }
}
