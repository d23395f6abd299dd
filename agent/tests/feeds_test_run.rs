//! Threat-feed enforcement under BPF_PROG_TEST_RUN: the merged blocklist written through the
//! agent's store and map code, then XDP and TC run on packets from and to listed addresses.

use agent::feeds::{
    parse::parse,
    spec::Format,
    store::{diff, Blocklist, Store},
};
use dataplane::{testrun::TEST_RUN_IFINDEX, EventReader};
use dataplane_common::{
    block_action::{AUDIT as A, DROP as D, NONE as N},
    endpoint_flags, event,
    packets::*,
    parse::*,
    programs::{TC_FROM_POD, TC_TO_POD, XDP_HOST},
    reason, rule, stats, v4_mapped, verdict, EndpointInfo, FlowEvent,
};
use testbed::ScratchDatapath;

const TC_PASS: i32 = -1;
const TC_DROP: i32 = 2;
const XDP_PASS: i32 = 2;
const XDP_DROP: i32 = 1;

const POD: [u8; 4] = v4(10, 0, 0, 1);
const LISTED: [u8; 4] = v4(203, 0, 113, 9);
const AUDITED: [u8; 4] = v4(198, 51, 100, 7);
const CLEAN: [u8; 4] = v4(192, 0, 2, 5);

fn v6_listed() -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    a[15] = 0x42;
    a
}

struct Bed {
    dp: ScratchDatapath,
    events: EventReader,
    store: Store,
    applied: Blocklist,
}

impl Bed {
    fn new(tag: &str) -> Self {
        let mut dp = ScratchDatapath::load_configured(tag).expect("load");
        // An endpoint with no isolation: policy allows everything, so only feeds decide.
        dp.set_endpoint(
            TEST_RUN_IFINDEX,
            &EndpointInfo {
                identity: 1000,
                flags: endpoint_flags::HAS_IPV4 | endpoint_flags::HAS_IPV6,
                ipv4: v4_mapped(POD),
                ipv6: v6(1),
                endpoint_id: 1,
                ..Default::default()
            },
        )
        .unwrap();
        let events = dp.take_events().unwrap();
        Bed {
            dp,
            events,
            store: Store::new(vec!["10.0.0.0/16".parse().unwrap()]),
            applied: Blocklist::new(),
        }
    }

    fn feed(&mut self, name: &str, actions: [u8; 3], body: &str) -> u32 {
        self.store
            .accept(name, actions, parse(body.as_bytes(), Format::Lines))
            .unwrap();
        let (desired, _) = self.store.desired();
        self.dp
            .apply_blocklist(&diff(&self.applied, &desired))
            .unwrap();
        self.applied = desired;
        self.store.id(name).unwrap()
    }

    fn run(&self, prog: &str, pkt: &[u8]) -> i32 {
        self.dp.test_run(prog, pkt, 1).expect("test run").action
    }

    /// The one event since the last call: (kind, verdict, reason, rule).
    fn event(&mut self) -> Option<(u8, u8, u8, u32)> {
        let evs: Vec<FlowEvent> = self.events.drain();
        assert!(evs.len() <= 1, "more than one event: {evs:?}");
        evs.first()
            .map(|e| (e.kind, e.verdict, e.reason, e.rule_id))
    }
}

fn tcp4(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    ipv4(src, dst, IPPROTO_TCP, &tcp(40000, 443, TCP_SYN))
}

#[test]
fn listed_addresses_are_dropped_where_their_feed_applies() {
    let mut b = Bed::new("feeds_hooks");
    let drop = b.feed(
        "spamhaus_drop",
        [D, D, D],
        "203.0.113.0/24 ; SBL1\n10.0.0.0/8\n",
    );
    let audit = b.feed("watch", [A, A, A], "198.51.100.7\n");
    let v6id = b.feed("v6_egress", [N, D, N], "2001:db8::/32\n");
    let drop_rule = rule::feed_rule(drop);

    // XDP, host ingress: the source decides.
    assert_eq!(b.run(XDP_HOST, &tcp4(LISTED, POD)), XDP_DROP);
    assert_eq!(
        b.event(),
        Some((
            event::DENY,
            verdict::DROPPED,
            reason::BLOCKLISTED,
            drop_rule
        ))
    );
    assert_eq!(
        b.run(XDP_HOST, &tcp4(POD, LISTED)),
        XDP_PASS,
        "destination is not checked at host ingress"
    );
    assert_eq!(b.run(XDP_HOST, &tcp4(CLEAN, POD)), XDP_PASS);
    assert_eq!(b.event(), None);
    assert_eq!(b.run(XDP_HOST, &tcp4(AUDITED, POD)), XDP_PASS);
    assert_eq!(
        b.event(),
        Some((
            event::DENY,
            verdict::AUDIT,
            reason::BLOCKLISTED,
            rule::feed_rule(audit)
        ))
    );
    let v6pkt = ipv6(
        v6_listed(),
        v6(1),
        IPPROTO_TCP,
        &[],
        &tcp(40000, 443, TCP_SYN),
    );
    assert_eq!(
        b.run(XDP_HOST, &v6pkt),
        XDP_PASS,
        "the IPv6 feed applies to pod egress only"
    );
    // The protected pod range stayed out even though the feed lists 10/8.
    assert_eq!(b.run(XDP_HOST, &tcp4(v4(10, 0, 0, 2), POD)), XDP_PASS);
    // Fails open on what it cannot parse: a truncated IPv4 header, a non-IP frame.
    let mut cut = tcp4(LISTED, POD);
    cut.truncate(14 + 12);
    assert_eq!(b.run(XDP_HOST, &cut), XDP_PASS);
    assert_eq!(b.run(XDP_HOST, &eth(0x0806, &[0u8; 28])), XDP_PASS);
    let _ = b.event();

    // TC from the pod: the destination decides; to the pod: the source.
    assert_eq!(b.run(TC_FROM_POD, &tcp4(POD, LISTED)), TC_DROP);
    assert_eq!(
        b.event(),
        Some((
            event::DENY,
            verdict::DROPPED,
            reason::BLOCKLISTED,
            drop_rule
        ))
    );
    assert_eq!(b.run(TC_TO_POD, &tcp4(LISTED, POD)), TC_DROP);
    assert_eq!(
        b.event(),
        Some((
            event::DENY,
            verdict::DROPPED,
            reason::BLOCKLISTED,
            drop_rule
        ))
    );
    let out6 = ipv6(
        v6(1),
        v6_listed(),
        IPPROTO_TCP,
        &[],
        &tcp(40001, 443, TCP_SYN),
    );
    assert_eq!(b.run(TC_FROM_POD, &out6), TC_DROP);
    assert_eq!(b.event().map(|e| e.3), Some(rule::feed_rule(v6id)));
    let in6 = ipv6(
        v6_listed(),
        v6(1),
        IPPROTO_TCP,
        &[],
        &tcp(40001, 443, TCP_SYN),
    );
    assert_eq!(
        b.run(TC_TO_POD, &in6),
        TC_PASS,
        "the IPv6 feed does not apply to pod ingress"
    );
    assert_eq!(b.event().map(|e| e.1), Some(verdict::FORWARDED));
    assert_eq!(b.run(TC_FROM_POD, &tcp4(POD, AUDITED)), TC_PASS);
    assert_eq!(
        b.event(),
        Some((
            event::NEW,
            verdict::AUDIT,
            reason::BLOCKLISTED,
            rule::feed_rule(audit)
        ))
    );
    assert_eq!(b.run(TC_FROM_POD, &tcp4(POD, CLEAN)), TC_PASS);
    assert_eq!(
        b.event().map(|e| (e.1, e.2)),
        Some((verdict::FORWARDED, reason::NONE))
    );

    // Per-feed counters: XDP 1 drop + TC 2 drops for the drop feed; one IPv6 drop.
    let counts = b.dp.feed_counts().unwrap();
    assert_eq!(
        (counts[drop as usize].drops, counts[drop as usize].audits),
        (3, 0)
    );
    assert_eq!(
        (counts[audit as usize].drops, counts[audit as usize].audits),
        (0, 2)
    );
    assert_eq!(counts[v6id as usize].drops, 1);
    assert_eq!(b.dp.stats().unwrap()[stats::BLOCKLISTED as usize], 4);
}

#[test]
fn a_newly_listed_address_cuts_established_connections_after_the_revision_bump() {
    let mut b = Bed::new("feeds_revoke");
    b.feed("local", [D, D, D], "203.0.113.0/24\n");
    assert_eq!(b.run(TC_FROM_POD, &tcp4(POD, CLEAN)), TC_PASS);
    assert_eq!(b.event().map(|e| e.0), Some(event::NEW));
    b.feed("local", [D, D, D], "203.0.113.0/24\n192.0.2.0/24\n");
    // Entries alone do not touch established connections; the agent bumps the revision.
    assert_eq!(b.run(TC_FROM_POD, &tcp4(POD, CLEAN)), TC_PASS);
    b.dp.bump_revision().unwrap();
    assert_eq!(b.run(TC_FROM_POD, &tcp4(POD, CLEAN)), TC_DROP);
    let id = b.store.id("local").unwrap();
    assert_eq!(
        b.event(),
        Some((
            event::DENY,
            verdict::DROPPED,
            reason::REVOKED,
            rule::feed_rule(id)
        ))
    );
    // Removing the entry lets a new connection through again.
    b.feed("local", [D, D, D], "203.0.113.0/24\n");
    assert_eq!(b.run(TC_FROM_POD, &tcp4(POD, CLEAN)), TC_PASS);
}

#[test]
fn blocklist_map_round_trips_and_diffs_apply_in_place() {
    let mut b = Bed::new("feeds_roundtrip");
    b.feed(
        "a",
        [D, N, A],
        "203.0.113.0/24\n2001:db8::/48\n198.51.100.1\n",
    );
    assert_eq!(
        b.dp.blocklist().unwrap(),
        b.applied,
        "the tries hold what was written"
    );
    b.feed("a", [D, N, A], "2001:db8::/48\n");
    assert_eq!(b.dp.blocklist().unwrap(), b.applied);
    assert_eq!(b.applied.len(), 1);
}
