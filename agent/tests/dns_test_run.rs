//! The kernel side of DNS-aware egress under BPF_PROG_TEST_RUN: the queries of pods with FQDN
//! rules are copied to the agent, answers on the reverse of a query's connection are held for
//! it (and pass once re-injected with the mark), unsolicited "answers" are never held, and
//! egress that policy denies passes when an unexpired FQDN entry covers it.

use agent::dns::maps::DnsFrameKind;
use dataplane_common::{
    allow, direction, dns_budget, endpoint_flags, event, identity, isolation,
    packets::*,
    parse::*,
    programs::{TC_FROM_POD, TC_TO_POD},
    rule, stats, v4_mapped, verdict, EndpointInfo, FqdnKey, FqdnValue, PolicyKey, PolicyValue,
    DNS_REINJECT_MARK,
};
use testbed::ScratchDatapath;

const PASS: i32 = -1;
const DROP: i32 = 2;
const POD: [u8; 4] = v4(10, 0, 0, 1);
const RESOLVER: [u8; 4] = v4(192, 0, 2, 53);
const API: [u8; 4] = v4(198, 51, 100, 80);
const RULE: u32 = rule::FQDN_BASE + 3;

fn dp(tag: &str, fqdn: bool) -> ScratchDatapath {
    let mut dp = ScratchDatapath::load_configured(tag).expect("load");
    let mut flags = endpoint_flags::HAS_IPV4;
    if fqdn {
        flags |= endpoint_flags::FQDN;
    }
    dp.set_endpoint(
        dataplane::testrun::TEST_RUN_IFINDEX,
        &EndpointInfo {
            identity: 1000,
            // Egress isolated with no allow: only FQDN entries let anything out.
            isolation: [0, isolation::ENFORCE],
            flags,
            ipv4: v4_mapped(POD),
            endpoint_id: 1,
            ..Default::default()
        },
    )
    .unwrap();
    allow_dns(&mut dp);
    dp
}

/// Egress DNS (UDP and TCP 53, any peer) for identity 1000, as an FqdnPolicy's isolation
/// policy allows it.
fn allow_dns(dp: &mut ScratchDatapath) {
    for proto in [IPPROTO_UDP, IPPROTO_TCP] {
        dp.set_policy(
            &PolicyKey::new(1000, direction::EGRESS, identity::ANY, proto, 53, 16),
            &PolicyValue {
                rule_id: 9,
                flags: allow::ENFORCE,
            },
        )
        .unwrap();
    }
}

fn query_frame() -> Vec<u8> {
    ipv4(POD, RESOLVER, IPPROTO_UDP, &udp(40000, 53, 32))
}

fn answer_frame() -> Vec<u8> {
    ipv4(RESOLVER, POD, IPPROTO_UDP, &udp(53, 40000, 48))
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[test]
fn dns_answers_are_held_until_reinjected() {
    let mut dp = dp("dns_hold", true);
    let mut answers = dp.take_dns_answers().unwrap();
    let query = query_frame();
    assert_eq!(dp.test_run(TC_FROM_POD, &query, 1).unwrap().action, PASS);
    let copied = answers.drain();
    assert_eq!(copied.len(), 1, "the query is copied to the agent");
    assert_eq!(copied[0].kind, DnsFrameKind::Query);
    assert_eq!(copied[0].frame, query);
    assert_eq!(dp.stats().unwrap()[stats::DNS_QUERIES as usize], 1);
    let frame = answer_frame();
    assert_eq!(dp.test_run(TC_TO_POD, &frame, 1).unwrap().action, DROP);
    let held = answers.drain();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].kind, DnsFrameKind::Answer);
    assert_eq!(held[0].ifindex, dataplane::testrun::TEST_RUN_IFINDEX);
    assert_eq!(held[0].frame, frame, "the frame is handed over whole");
    assert_eq!(dp.stats().unwrap()[stats::DNS_HELD as usize], 1);
    // The agent's re-injection carries the mark and goes through.
    assert_eq!(
        dp.test_run_marked(TC_TO_POD, &frame, DNS_REINJECT_MARK)
            .unwrap()
            .action,
        PASS
    );
    assert!(answers.drain().is_empty());
    // DNS over TCP too, on the reverse of the pod's connection.
    let syn = ipv4(POD, RESOLVER, IPPROTO_TCP, &tcp(40001, 53, TCP_SYN));
    assert_eq!(dp.test_run(TC_FROM_POD, &syn, 1).unwrap().action, PASS);
    assert_eq!(answers.drain().len(), 1, "TCP segments to 53 are copied");
    let tcp_answer = ipv4(RESOLVER, POD, IPPROTO_TCP, &tcp(53, 40001, TCP_ACK));
    assert_eq!(dp.test_run(TC_TO_POD, &tcp_answer, 1).unwrap().action, DROP);
    assert_eq!(answers.drain()[0].kind, DnsFrameKind::Answer);
    let not_dns = ipv4(RESOLVER, POD, IPPROTO_UDP, &udp(5353, 40000, 48));
    assert_ne!(dp.test_run(TC_TO_POD, &not_dns, 1).unwrap().action, 99);
    assert!(answers.drain().is_empty());
}

/// What an attacker sends as an "answer" is never held for the agent (so never learned): from
/// a port the pod did not query from, from an address it did not query, or to an endpoint
/// whose query went unanswered elsewhere. Ingress isolation then decides it as any packet.
#[test]
fn unsolicited_answers_are_never_held() {
    let mut dp = dp("dns_unsolicited", true);
    let mut answers = dp.take_dns_answers().unwrap();
    // Nothing asked yet (ingress is open here, so this "answer" opens a connection inbound).
    let _ = dp.test_run(TC_TO_POD, &answer_frame(), 1).unwrap();
    assert!(answers.drain().is_empty(), "no query, nothing held");
    // The pod's query on that tuple is then a reply: still copied; the answer that follows
    // is on a connection the peer opened, and is not held.
    assert_eq!(
        dp.test_run(TC_FROM_POD, &query_frame(), 1).unwrap().action,
        PASS
    );
    assert_eq!(answers.drain().len(), 1);
    let _ = dp.test_run(TC_TO_POD, &answer_frame(), 1).unwrap();
    assert!(
        answers.drain().is_empty(),
        "an answer on a peer-opened connection is held"
    );
    let query_frame = || ipv4(POD, RESOLVER, IPPROTO_UDP, &udp(40000 + 7, 53, 32));
    assert_eq!(dp.stats().unwrap()[stats::DNS_HELD as usize], 0);
    assert_eq!(
        dp.test_run(TC_FROM_POD, &query_frame(), 1).unwrap().action,
        PASS
    );
    assert_eq!(answers.drain().len(), 1);
    let attacker = v4(10, 0, 0, 66);
    for (what, frame) in [
        (
            "another source",
            ipv4(attacker, POD, IPPROTO_UDP, &udp(53, 40007, 48)),
        ),
        (
            "another port",
            ipv4(RESOLVER, POD, IPPROTO_UDP, &udp(53, 40999, 48)),
        ),
        (
            "TCP on a UDP query",
            ipv4(RESOLVER, POD, IPPROTO_TCP, &tcp(53, 40007, TCP_ACK)),
        ),
    ] {
        let _ = dp.test_run(TC_TO_POD, &frame, 1).unwrap();
        assert!(answers.drain().is_empty(), "{what}: held");
    }
    // The pod's own packet from port 53 (raw socket) looped back through the node: its
    // source is the pod, which opened nothing to itself on 53.
    let own = ipv4(POD, POD, IPPROTO_UDP, &udp(53, 40007, 48));
    let _ = dp.test_run(TC_TO_POD, &own, 1).unwrap();
    assert!(
        answers.drain().is_empty(),
        "the pod's own forged answer is held"
    );
    assert_eq!(dp.stats().unwrap()[stats::DNS_HELD as usize], 0);
}

/// One endpoint cannot fill the ring: past its budget, queries are not copied (and answers
/// would pass unheld), counted.
#[test]
fn dns_frames_are_rate_limited_per_endpoint() {
    let mut dp = dp("dns_budget", true);
    let mut answers = dp.take_dns_answers().unwrap();
    let burst = (dns_budget::BURST_NS / dns_budget::INTERVAL_NS) as u32;
    // A test run's repeats all happen at once: far more than the budget allows.
    let runs = burst * 3;
    let _ = dp.test_run(TC_FROM_POD, &query_frame(), runs).unwrap();
    let copied = answers.drain().len() as u32;
    assert!(
        copied >= burst && copied < runs,
        "{copied} copies of {runs} queries with a burst of {burst}"
    );
    let over = dp.stats().unwrap()[stats::DNS_OVER_BUDGET as usize];
    assert_eq!(over + copied as u64, runs as u64);
}

/// Without an agent (stopped: heartbeat 0; crashed: heartbeat stale) answers pass unheld and
/// queries are not copied: DNS keeps working, the addresses are just not learned.
#[test]
fn an_absent_agent_is_not_a_dns_outage() {
    let mut dp = dp("dns_absent", true);
    let mut answers = dp.take_dns_answers().unwrap();
    let stale = now_ns() - dataplane_common::agent::STALE_NS - 1_000_000_000;
    for (what, heartbeat) in [("stopped", 0), ("crashed", stale)] {
        dp.set_agent_heartbeat(heartbeat).unwrap();
        let before = dp.stats().unwrap()[stats::DNS_NOT_HELD as usize];
        assert_eq!(
            dp.test_run(TC_FROM_POD, &query_frame(), 1).unwrap().action,
            PASS
        );
        assert_eq!(
            dp.test_run(TC_TO_POD, &answer_frame(), 1).unwrap().action,
            PASS,
            "{what}: the answer is delivered"
        );
        assert!(answers.drain().is_empty(), "{what}: handed to no one");
        assert_eq!(
            dp.stats().unwrap()[stats::DNS_NOT_HELD as usize],
            before + 1,
            "{what}"
        );
    }
    // Back: held again.
    dp.set_agent_heartbeat(now_ns()).unwrap();
    assert_eq!(
        dp.test_run(TC_TO_POD, &answer_frame(), 1).unwrap().action,
        DROP
    );
    assert_eq!(answers.drain().len(), 1);
}

#[test]
fn endpoints_without_fqdn_rules_get_answers_directly() {
    let mut dp = dp("dns_plain", false);
    let mut answers = dp.take_dns_answers().unwrap();
    let _ = dp.test_run(TC_TO_POD, &answer_frame(), 1).unwrap();
    assert!(answers.drain().is_empty());
    assert_eq!(dp.stats().unwrap()[stats::DNS_HELD as usize], 0);
}

#[test]
fn fqdn_entries_allow_egress_until_they_expire() {
    let mut dp = dp("dns_allow", true);
    let mut events = dp.take_events().unwrap();
    let syn = |dport| {
        ipv4(
            POD,
            API,
            IPPROTO_TCP,
            &tcp(41000 + dport % 100, dport, TCP_SYN),
        )
    };
    assert_eq!(
        dp.test_run(TC_FROM_POD, &syn(443), 1).unwrap().action,
        DROP,
        "no entry yet"
    );
    let key = |port: u16, proto: u8| FqdnKey {
        slot: dataplane::testrun::TEST_RUN_IFINDEX,
        addr: v4_mapped(API),
        port,
        proto,
        _pad: 0,
    };
    let live = FqdnValue {
        expires_ns: now_ns() + 60_000_000_000,
        grace_ns: now_ns() + 120_000_000_000,
        rule_id: RULE,
        name_id: 9,
    };
    dp.set_fqdn(&key(443, IPPROTO_TCP), &live).unwrap();
    events.drain();
    assert_eq!(dp.test_run(TC_FROM_POD, &syn(443), 1).unwrap().action, PASS);
    let evs = events.drain();
    assert_eq!(
        evs.iter()
            .map(|e| (e.kind, e.verdict, e.rule_id))
            .collect::<Vec<_>>(),
        [(event::NEW, verdict::FORWARDED, RULE)]
    );
    assert_eq!(
        dp.test_run(TC_FROM_POD, &syn(444), 1).unwrap().action,
        DROP,
        "port-specific entry"
    );
    // Any port of the protocol, then any protocol.
    dp.set_fqdn(&key(0, IPPROTO_TCP), &live).unwrap();
    assert_eq!(dp.test_run(TC_FROM_POD, &syn(444), 1).unwrap().action, PASS);
    let udp_pkt = ipv4(POD, API, IPPROTO_UDP, &udp(41999, 123, 8));
    assert_eq!(dp.test_run(TC_FROM_POD, &udp_pkt, 1).unwrap().action, DROP);
    dp.set_fqdn(&key(0, 0), &live).unwrap();
    assert_eq!(dp.test_run(TC_FROM_POD, &udp_pkt, 1).unwrap().action, PASS);
    // An expired entry allows nothing new.
    let expired = FqdnValue {
        expires_ns: now_ns().saturating_sub(1_000_000_000),
        grace_ns: now_ns() + 60_000_000_000,
        ..live
    };
    for (p, proto) in [(443, IPPROTO_TCP), (0, IPPROTO_TCP), (0, 0)] {
        dp.set_fqdn(&key(p, proto), &expired).unwrap();
    }
    assert_eq!(dp.test_run(TC_FROM_POD, &syn(445), 1).unwrap().action, DROP);
    // Another endpoint's entries do not count.
    let other = FqdnKey {
        slot: 77,
        ..key(0, 0)
    };
    dp.set_fqdn(&other, &live).unwrap();
    assert_eq!(dp.test_run(TC_FROM_POD, &syn(446), 1).unwrap().action, DROP);
    assert_eq!(dp.fqdn_entries().unwrap().len(), 4);
    assert!(dp.stats().unwrap()[stats::FQDN_ALLOWED as usize] >= 3);
}

/// The same path over IPv6: an answer to the pod's v6 address is held, and an FQDN entry for
/// a v6 address (from an AAAA record) lets the pod's v6 SYN out, for that address only.
#[test]
fn ipv6_answers_are_held_and_v6_entries_allow_egress() {
    const POD6: [u8; 16] = v6(1);
    const RESOLVER6: [u8; 16] = v6(53);
    const API6: [u8; 16] = v6(80);
    let mut dp = ScratchDatapath::load_configured("dns_v6").expect("load");
    dp.set_endpoint(
        dataplane::testrun::TEST_RUN_IFINDEX,
        &EndpointInfo {
            identity: 1000,
            isolation: [0, isolation::ENFORCE],
            flags: endpoint_flags::HAS_IPV6 | endpoint_flags::FQDN,
            ipv6: POD6,
            endpoint_id: 1,
            ..Default::default()
        },
    )
    .unwrap();
    allow_dns(&mut dp);
    let mut answers = dp.take_dns_answers().unwrap();
    let query = ipv6(POD6, RESOLVER6, IPPROTO_UDP, &[], &udp(40000, 53, 32));
    assert_eq!(dp.test_run(TC_FROM_POD, &query, 1).unwrap().action, PASS);
    assert_eq!(answers.drain().len(), 1, "a v6 query is copied");
    let answer = ipv6(RESOLVER6, POD6, IPPROTO_UDP, &[], &udp(53, 40000, 64));
    assert_eq!(dp.test_run(TC_TO_POD, &answer, 1).unwrap().action, DROP);
    assert_eq!(answers.drain().len(), 1, "a v6 answer is held");
    assert_eq!(
        dp.test_run_marked(TC_TO_POD, &answer, DNS_REINJECT_MARK)
            .unwrap()
            .action,
        PASS
    );

    let syn = |dst: [u8; 16]| ipv6(POD6, dst, IPPROTO_TCP, &[], &tcp(41000, 443, TCP_SYN));
    assert_eq!(
        dp.test_run(TC_FROM_POD, &syn(API6), 1).unwrap().action,
        DROP
    );
    dp.set_fqdn(
        &FqdnKey {
            slot: dataplane::testrun::TEST_RUN_IFINDEX,
            addr: API6,
            port: 443,
            proto: IPPROTO_TCP,
            _pad: 0,
        },
        &FqdnValue {
            expires_ns: now_ns() + 60_000_000_000,
            grace_ns: now_ns() + 120_000_000_000,
            rule_id: RULE,
            name_id: 1,
        },
    )
    .unwrap();
    assert_eq!(
        dp.test_run(TC_FROM_POD, &syn(API6), 1).unwrap().action,
        PASS
    );
    assert_eq!(
        dp.test_run(TC_FROM_POD, &syn(v6(81)), 1).unwrap().action,
        DROP,
        "another v6 address"
    );
}
