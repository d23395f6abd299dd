//! The desired blocklist: every feed's last good list, merged, with the ranges the node must
//! never block taken out, and the diff against what the kernel map holds.
//!
//! Pure (no I/O), so the reconciler that fetches feeds and writes the LPM maps stays thin.
//!
//! Two guards protect the node from a bad feed:
//! - a refresh that looks wrong keeps the last good list: a fetch or parse error, an empty
//!   list where there was one, or a body where bad lines outnumber entries (an HTML error page
//!   served with status 200 parses as nothing but bad lines);
//! - entries overlapping a protected range (the pod and service CIDRs, node addresses,
//!   loopback) are left out and counted, because public lists such as FireHOL level1 carry the
//!   bogons (10.0.0.0/8, 192.168.0.0/16, ...) and blocking them would cut the cluster off from
//!   itself.

pub use dataplane::blocklist::{Blocklist, Diff};
use std::collections::{BTreeMap, BTreeSet};

use dataplane_common::{block_action, block_hook, BlockEntry, MAX_FEEDS};
use ipnetwork::IpNetwork;

use super::{parse::Parsed, spec::Actions};

/// Why a refresh was refused (the last good list stays in force).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Fetching or parsing failed.
    #[error("refresh failed: {0}")]
    Failed(String),
    /// The new list is empty where the last good one was not.
    #[error("the new list is empty; the last good list has {0} entries")]
    Emptied(usize),
    /// More bad lines than entries: probably not a feed at all.
    #[error("{bad} bad lines against {good} entries: not taken as a feed (first bad: {first})")]
    MostlyBad {
        /// Bad lines.
        bad: usize,
        /// Good entries.
        good: usize,
        /// The first bad line, as reported by the parser.
        first: String,
    },
    /// Every feed id is in use.
    #[error("no feed id left: at most {MAX_FEEDS} feeds")]
    TooManyFeeds,
}

impl Refused {
    /// A short label for the `septa_feed_refresh_errors_total{reason}` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Refused::Failed(_) => "failed",
            Refused::Emptied(_) => "emptied",
            Refused::MostlyBad { .. } => "mostly_bad",
            Refused::TooManyFeeds => "too_many_feeds",
        }
    }
}

#[derive(Clone, Debug)]
struct Feed {
    id: u32,
    actions: Actions,
    nets: BTreeSet<IpNetwork>,
    /// False for a feed [`Store::reserve`]d from the last run that has not delivered yet.
    has_list: bool,
}

/// Every feed's last good list and the protected ranges.
#[derive(Clone, Debug, Default)]
pub struct Store {
    feeds: BTreeMap<String, Feed>,
    protected: Vec<IpNetwork>,
}

/// Feed ids start here; 0 means "no feed" in the kernel map value.
pub const FIRST_FEED_ID: u32 = 1;

impl Store {
    /// An empty store that never blocks anything overlapping `protected`.
    pub fn new(protected: Vec<IpNetwork>) -> Self {
        Store {
            feeds: BTreeMap::new(),
            protected,
        }
    }

    /// Take a refresh of feed `name`, or refuse it and keep the last good list. `actions`
    /// (from the manifest) apply either way. Returns the number of entries now in force.
    pub fn accept(
        &mut self,
        name: &str,
        actions: Actions,
        refresh: Result<Parsed, String>,
    ) -> Result<usize, Refused> {
        if let Some(f) = self.feeds.get_mut(name) {
            f.actions = actions;
        }
        let parsed = refresh.map_err(Refused::Failed)?;
        let previous = self.feeds.get(name).map_or(0, |f| f.nets.len());
        if parsed.bad > parsed.nets.len() {
            let first = parsed
                .first_bad
                .first()
                .map(|(line, why)| format!("line {line}: {why}"))
                .unwrap_or_default();
            return Err(Refused::MostlyBad {
                bad: parsed.bad,
                good: parsed.nets.len(),
                first,
            });
        }
        if parsed.nets.is_empty() && previous > 0 {
            return Err(Refused::Emptied(previous));
        }
        let len = parsed.nets.len();
        match self.feeds.get_mut(name) {
            Some(f) => {
                f.nets = parsed.nets;
                f.has_list = true;
            }
            None => {
                let id = self.free_id().ok_or(Refused::TooManyFeeds)?;
                self.feeds.insert(
                    name.to_string(),
                    Feed {
                        id,
                        actions,
                        nets: parsed.nets,
                        has_list: true,
                    },
                );
            }
        }
        Ok(len)
    }

    /// The lowest id no feed holds (ids index the kernel's per-feed counters, so they are
    /// reused rather than grown without bound).
    fn free_id(&self) -> Option<u32> {
        let used: BTreeSet<u32> = self.feeds.values().map(|f| f.id).collect();
        (FIRST_FEED_ID..=MAX_FEEDS).find(|id| !used.contains(id))
    }

    /// Entries in force for a feed.
    pub fn len(&self, name: &str) -> usize {
        self.feeds.get(name).map_or(0, |f| f.nets.len())
    }

    /// Names of the feeds that have a list.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.feeds.keys().map(String::as_str)
    }

    /// Keep `id` for `name` (an id from the last run) until its first list arrives. Ignored
    /// when the id is out of range or taken.
    pub fn reserve(&mut self, name: &str, id: u32) {
        let taken = self.feeds.values().any(|f| f.id == id);
        if (FIRST_FEED_ID..=MAX_FEEDS).contains(&id) && !taken && !self.feeds.contains_key(name) {
            self.feeds.insert(
                name.to_string(),
                Feed {
                    id,
                    actions: [block_action::NONE; block_hook::COUNT],
                    nets: BTreeSet::new(),
                    has_list: false,
                },
            );
        }
    }

    /// Whether the feed has delivered a list (reserved ids do not count).
    pub fn has_list(&self, name: &str) -> bool {
        self.feeds.get(name).is_some_and(|f| f.has_list)
    }

    /// Change what a feed does; true when it changed.
    pub fn set_actions(&mut self, name: &str, actions: Actions) -> bool {
        match self.feeds.get_mut(name) {
            Some(f) if f.actions != actions => {
                f.actions = actions;
                true
            }
            _ => false,
        }
    }

    /// Forget a feed whose manifest was deleted.
    pub fn remove(&mut self, name: &str) -> bool {
        self.feeds.remove(name).is_some()
    }

    /// The id a feed's entries carry in the kernel map (for flow attribution).
    pub fn id(&self, name: &str) -> Option<u32> {
        self.feeds.get(name).map(|f| f.id)
    }

    /// The merged blocklist, as the kernel tries must hold it. Also returns how many entries
    /// were left out for overlapping a protected range.
    ///
    /// Per hook, the strongest action wins (drop over audit); among equals the feed with the
    /// lowest id, so attribution does not flip from one refresh to the next. Because an LPM
    /// lookup sees only the longest matching prefix, every entry also takes, per hook, a
    /// stronger action of any listed prefix that contains it.
    pub fn desired(&self) -> (Blocklist, usize) {
        let mut merged = Blocklist::new();
        let mut protected_hits = 0;
        let mut feeds: Vec<&Feed> = self.feeds.values().collect();
        feeds.sort_by_key(|f| f.id);
        for f in feeds {
            if f.actions.iter().all(|a| *a == block_action::NONE) {
                continue;
            }
            for net in &f.nets {
                if self.protected.iter().any(|p| overlaps(p, net)) {
                    protected_hits += 1;
                    continue;
                }
                let e = merged.entry(*net).or_default();
                for h in 0..block_hook::COUNT {
                    if f.actions[h] > e.action[h] {
                        e.action[h] = f.actions[h];
                        e.feed[h] = f.id;
                    }
                }
            }
        }
        inherit(&mut merged);
        (merged, protected_hits)
    }
}

/// Push each prefix's actions down into the listed prefixes it contains, where stronger.
/// `list` iterates in (address, prefix length) order, so a containing prefix comes before
/// everything it contains and a stack of open ancestors finds each entry's nearest one.
fn inherit(list: &mut Blocklist) {
    let mut stack: Vec<(IpNetwork, BlockEntry)> = Vec::new();
    for (net, e) in list.iter_mut() {
        while let Some((top, _)) = stack.last() {
            if same_family(top, net) && top.contains(net.network()) && top.prefix() <= net.prefix()
            {
                break;
            }
            stack.pop();
        }
        if let Some((_, parent)) = stack.last() {
            for h in 0..block_hook::COUNT {
                if parent.action[h] > e.action[h] {
                    e.action[h] = parent.action[h];
                    e.feed[h] = parent.feed[h];
                }
            }
        }
        stack.push((*net, *e));
    }
}

fn same_family(a: &IpNetwork, b: &IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// True when one network contains the other (CIDRs either nest or are disjoint).
fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    match (a, b) {
        (IpNetwork::V4(_), IpNetwork::V4(_)) | (IpNetwork::V6(_), IpNetwork::V6(_)) => {
            a.contains(b.network()) || b.contains(a.network())
        }
        _ => false,
    }
}

/// While feeds have delivered no list since the start, removals are held back: an entry the
/// kernel holds may be theirs (adopted from the last run). Only what is attributed to a
/// pending feed is held, though: entries whose deciding feeds (`BlockEntry::feed`, ids kept
/// across restarts) are all known and not pending are removed at once, so deleting a feed
/// unblocks its addresses even while another feed is still being fetched. Returns how many
/// removals were held.
pub fn hold_pending_removals(
    remove: &mut Vec<IpNetwork>,
    actual: &Blocklist,
    pending_ids: &BTreeSet<u32>,
) -> usize {
    let before = remove.len();
    remove.retain(|net| {
        actual.get(net).is_some_and(|e| {
            e.feed.iter().any(|f| *f != 0) && e.feed.iter().all(|f| !pending_ids.contains(f))
        })
    });
    before - remove.len()
}

/// What turns `actual` (the kernel map's contents) into `desired`.
pub fn diff(actual: &Blocklist, desired: &Blocklist) -> Diff {
    let mut d = Diff::default();
    for (net, id) in desired {
        if actual.get(net) != Some(id) {
            d.upsert.push((*net, *id));
        }
    }
    for net in actual.keys() {
        if !desired.contains_key(net) {
            d.remove.push(*net);
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feeds::parse::parse;
    use crate::feeds::spec::Format;

    const DROP_ALL: Actions = [block_action::DROP; 3];

    fn entry(feed: u32, actions: Actions) -> BlockEntry {
        BlockEntry {
            feed: actions.map(|a| if a == block_action::NONE { 0 } else { feed }),
            action: actions,
            _pad: 0,
        }
    }

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    fn lines(body: &str) -> Result<Parsed, String> {
        parse(body.as_bytes(), Format::Lines)
    }

    #[test]
    fn bad_refreshes_keep_the_last_good_list() {
        let mut s = Store::new(vec![]);
        assert_eq!(
            s.accept("drop", DROP_ALL, lines("203.0.113.0/24\n198.51.100.7\n")),
            Ok(2)
        );
        let good = s.desired().0;

        let r = s.accept(
            "drop",
            DROP_ALL,
            Err("GET https://x: timed out after 30s".into()),
        );
        assert_eq!(r.as_ref().unwrap_err().metric_label(), "failed");
        assert_eq!(
            s.accept("drop", DROP_ALL, lines("# nothing today\n")),
            Err(Refused::Emptied(2))
        );
        // A captive portal's page served with 200.
        let html = "<!DOCTYPE html>\n<html>\n<body>Please log in</body>\n</html>\n";
        match s.accept("drop", DROP_ALL, lines(html)) {
            Err(Refused::MostlyBad { bad, good, first }) => {
                assert_eq!((bad, good), (4, 0));
                assert!(first.starts_with("line 1:"), "{first}");
            }
            other => panic!("an HTML page was taken as a feed: {other:?}"),
        }
        assert_eq!(
            s.desired().0,
            good,
            "a refused refresh changed the blocklist"
        );

        // A good refresh replaces the list; an empty first list is fine (nothing to lose).
        assert_eq!(s.accept("drop", DROP_ALL, lines("192.0.2.1\n")), Ok(1));
        assert_eq!(
            s.desired().0.keys().copied().collect::<Vec<_>>(),
            vec![net("192.0.2.1/32")]
        );
        assert_eq!(s.accept("new", DROP_ALL, lines("")), Ok(0));
    }

    #[test]
    fn protected_ranges_are_never_blocked() {
        // Pod CIDR, service CIDR, a node address, loopback; FireHOL level1 carries bogons.
        let protected = [
            "10.244.0.0/16",
            "10.96.0.0/12",
            "192.168.1.10/32",
            "127.0.0.0/8",
            "fd00:10:244::/56",
        ]
        .map(net)
        .to_vec();
        let mut s = Store::new(protected);
        let body = "0.0.0.0/8\n10.0.0.0/8\n127.0.0.0/8\n192.168.0.0/16\n10.244.3.7\n203.0.113.0/24\n::/0\n2001:db8::/32\n";
        s.accept("firehol_level1", DROP_ALL, lines(body)).unwrap();
        let (d, hits) = s.desired();
        assert_eq!(
            d.keys().copied().collect::<Vec<_>>(),
            ["0.0.0.0/8", "203.0.113.0/24", "2001:db8::/32"]
                .map(net)
                .to_vec()
        );
        // 10/8 contains the pod CIDR; 127/8 is protected; 192.168/16 contains the node;
        // 10.244.3.7 is inside the pod CIDR; ::/0 contains the IPv6 pod range.
        assert_eq!(hits, 5);
    }

    #[test]
    fn merge_attributes_to_the_oldest_feed_and_diffs_minimally() {
        let mut s = Store::new(vec![]);
        s.accept(
            "spamhaus",
            DROP_ALL,
            lines("203.0.113.0/24\n198.51.100.0/24\n"),
        )
        .unwrap();
        s.accept("local", DROP_ALL, lines("198.51.100.0/24\n192.0.2.9\n"))
            .unwrap();
        let (sp, lo) = (s.id("spamhaus").unwrap(), s.id("local").unwrap());
        assert!(sp < lo);
        assert_eq!(s.names().find(|n| s.id(n) == Some(lo)), Some("local"));
        let (d1, _) = s.desired();
        assert_eq!(d1[&net("198.51.100.0/24")], entry(sp, DROP_ALL));
        assert_eq!(d1[&net("192.0.2.9/32")], entry(lo, DROP_ALL));

        let first = diff(&BTreeMap::new(), &d1);
        assert_eq!((first.upsert.len(), first.remove.len()), (3, 0));
        assert!(diff(&d1, &d1).is_empty());

        // Spamhaus drops the shared entry: it changes owner, not presence; 203.0.113/24 goes.
        s.accept("spamhaus", DROP_ALL, lines("198.18.0.0/15\n"))
            .unwrap();
        let (d2, _) = s.desired();
        let step = diff(&d1, &d2);
        assert_eq!(
            step.upsert,
            vec![
                (net("198.18.0.0/15"), entry(sp, DROP_ALL)),
                (net("198.51.100.0/24"), entry(lo, DROP_ALL))
            ]
        );
        assert_eq!(step.remove, vec![net("203.0.113.0/24")]);

        // Removing a feed removes what only it held; its id is free again.
        assert!(s.remove("local"));
        assert!(!s.remove("local"));
        let step = diff(&d2, &s.desired().0);
        assert_eq!(step.upsert, vec![]);
        assert_eq!(
            step.remove,
            [net("192.0.2.9/32"), net("198.51.100.0/24")].to_vec()
        );
        s.accept("local", DROP_ALL, lines("192.0.2.9\n")).unwrap();
        assert_eq!(s.id("local"), Some(lo));
    }

    #[test]
    fn stronger_actions_win_per_hook_and_reach_contained_prefixes() {
        use dataplane_common::block_action::{AUDIT, DROP, NONE};
        let mut s = Store::new(vec![]);
        // "wide" drops 203.0.113.0/24 at host ingress only; "narrow" audits one address of it
        // everywhere; "v6" lists an IPv6 block for pods.
        s.accept("wide", [DROP, NONE, NONE], lines("203.0.113.0/24\n"))
            .unwrap();
        s.accept("narrow", [AUDIT; 3], lines("203.0.113.7\n203.0.113.0/25\n"))
            .unwrap();
        s.accept(
            "v6",
            [NONE, DROP, DROP],
            lines("2001:db8::/32\n2001:db8::1\n"),
        )
        .unwrap();
        let (w, n, v) = (
            s.id("wide").unwrap(),
            s.id("narrow").unwrap(),
            s.id("v6").unwrap(),
        );
        let (d, _) = s.desired();
        // The /32 inside the /24: host ingress must still drop (the /24's drop is stronger),
        // the pod hooks audit (only the /32's own feed lists them).
        let inner = d[&net("203.0.113.7/32")];
        assert_eq!(inner.action, [DROP, AUDIT, AUDIT]);
        assert_eq!(inner.feed, [w, n, n]);
        assert_eq!(d[&net("203.0.113.0/25")].feed, [w, n, n]);
        assert_eq!(d[&net("203.0.113.0/24")], entry(w, [DROP, NONE, NONE]));
        assert_eq!(d[&net("2001:db8::1/128")], entry(v, [NONE, DROP, DROP]));

        // Switching a feed to audit weakens its entries on the next desired state.
        s.accept("wide", [AUDIT, NONE, NONE], Err("offline".into()))
            .unwrap_err();
        assert_eq!(s.desired().0[&net("203.0.113.7/32")].action, [AUDIT; 3]);
        // A feed enforced nowhere contributes nothing.
        s.accept("v6", [NONE; 3], Err("offline".into()))
            .unwrap_err();
        assert!(!s.desired().0.contains_key(&net("2001:db8::/32")));
    }

    #[test]
    fn reserved_ids_are_kept_for_their_feed() {
        let mut s = Store::new(vec![]);
        s.reserve("spamhaus", 7);
        s.reserve("other", 7); // taken: ignored
        s.reserve("bad", 0); // out of range: ignored
        assert!(!s.has_list("spamhaus"));
        assert_eq!(s.id("other"), None);
        assert!(s.desired().0.is_empty());
        s.accept("new", DROP_ALL, lines("192.0.2.1\n")).unwrap();
        assert_eq!(s.id("new"), Some(1));
        s.accept("spamhaus", DROP_ALL, lines("192.0.2.2\n"))
            .unwrap();
        assert_eq!(s.id("spamhaus"), Some(7));
        assert!(s.has_list("spamhaus"));
        assert!(s.set_actions("spamhaus", [block_action::AUDIT; 3]));
        assert!(!s.set_actions("spamhaus", [block_action::AUDIT; 3]));
        assert_eq!(
            s.desired().0[&net("192.0.2.2/32")].action,
            [block_action::AUDIT; 3]
        );
    }

    #[test]
    fn feed_ids_are_bounded() {
        let mut s = Store::new(vec![]);
        for i in 0..MAX_FEEDS {
            s.accept(&format!("f{i}"), DROP_ALL, lines("192.0.2.1\n"))
                .unwrap();
        }
        assert_eq!(
            s.accept("one_too_many", DROP_ALL, lines("192.0.2.1\n")),
            Err(Refused::TooManyFeeds)
        );
        s.remove("f7");
        assert_eq!(
            s.accept("one_too_many", DROP_ALL, lines("192.0.2.1\n")),
            Ok(1)
        );
        assert_eq!(s.id("one_too_many"), Some(8));
    }

    #[test]
    fn large_feed_diff_is_proportional_to_the_change() {
        let mut s = Store::new(vec![]);
        let body: String = (0..100_000u32)
            .map(|i| format!("{}\n", std::net::Ipv4Addr::from(0x2000_0000 + i * 256)))
            .collect();
        s.accept("big", DROP_ALL, lines(&body)).unwrap();
        let (d1, _) = s.desired();
        assert_eq!(d1.len(), 100_000);
        let mut changed = body.lines().skip(10).collect::<Vec<_>>().join("\n");
        changed.push_str("\n192.0.2.1\n");
        s.accept("big", DROP_ALL, lines(&changed)).unwrap();
        let step = diff(&d1, &s.desired().0);
        assert_eq!((step.upsert.len(), step.remove.len()), (1, 10));
    }

    #[test]
    fn removals_are_held_only_for_pending_feeds() {
        let entry = |feed: u32| BlockEntry {
            feed: [feed, feed, 0],
            action: [block_action::DROP, block_action::DROP, block_action::NONE],
            _pad: 0,
        };
        let net = |s: &str| s.parse::<IpNetwork>().unwrap();
        let actual: Blocklist = BTreeMap::from([
            (net("192.0.2.1/32"), entry(1)),
            (net("192.0.2.2/32"), entry(2)),
            (net("192.0.2.3/32"), BlockEntry::default()),
        ]);
        let mut remove = vec![
            net("192.0.2.1/32"),
            net("192.0.2.2/32"),
            net("192.0.2.3/32"),
        ];
        // Feed 2 is pending: its entry, and one of unknown attribution, stay.
        let held = hold_pending_removals(&mut remove, &actual, &BTreeSet::from([2]));
        assert_eq!(held, 2);
        assert_eq!(
            remove,
            [net("192.0.2.1/32")],
            "a deleted feed's entry goes at once"
        );
    }
}
