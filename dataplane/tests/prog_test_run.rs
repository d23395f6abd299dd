//! BPF_PROG_TEST_RUN tables: packets built with etherparse × map states → TC action, the event
//! the kernel emits (kind, verdict, reason, rule id) and the counters it moves.
//!
//! Every case loads a fresh data path (own pin directory), so cases cannot leak state.

use dataplane::{testrun::TEST_RUN_IFINDEX, EventReader};
use dataplane_common::{
    allow, config_flags, endpoint_flags, event, identity, isolation,
    packets::*,
    parse::*,
    programs::{TC_FROM_POD as FROM, TC_TO_POD as TO},
    reason, rule, stats, v4_mapped, verdict, Config, EndpointInfo, FlowEvent, PolicyKey,
    PolicyValue,
};
use testbed::ScratchDatapath;

const PASS: i32 = -1;
const DROP: i32 = 2;

const POD: [u8; 4] = v4(10, 0, 0, 1);
const PEER4: [u8; 4] = v4(10, 0, 0, 2);
const IN_CIDR: [u8; 4] = v4(10, 9, 9, 9);
const OUTSIDE: [u8; 4] = v4(203, 0, 113, 7);
const NODE: [u8; 4] = v4(192, 168, 1, 1);
const SUBJ: u32 = 1000;
const PEER: u32 = 2000;
const CIDR_ID: u32 = 3000;

/// Isolation of the endpoint under test: (ingress, egress).
#[derive(Clone, Copy)]
struct Iso(u8, u8);
const OPEN: Iso = Iso(0, 0);
const ING: Iso = Iso(isolation::ENFORCE, 0);
const EGR: Iso = Iso(0, isolation::ENFORCE);

/// A policy entry: (direction, peer, proto, port, plen, rule id, allow flags).
type Entry = (u8, u32, u8, u16, u8, u32, u32);
const IN: u8 = dataplane_common::direction::INGRESS;
const OUT: u8 = dataplane_common::direction::EGRESS;

struct World {
    dp: ScratchDatapath,
    events: EventReader,
}

fn world(tag: &str, iso: Iso, entries: &[Entry], cfg_flags: u32, endpoint: bool) -> World {
    let mut dp = ScratchDatapath::load(tag).expect("load");
    dp.set_config(&Config {
        policy_revision: 1,
        flags: cfg_flags,
        deny_event_interval_ns: 0,
    })
    .unwrap();
    let mut plens = [0u32; 2];
    for &(dir, peer, proto, port, plen, id, flags) in entries {
        dp.set_policy(
            &PolicyKey::new(SUBJ, dir, peer, proto, port, plen),
            &PolicyValue { rule_id: id, flags },
        )
        .unwrap();
        if (1..16).contains(&plen) {
            plens[dir as usize] |= 1 << plen;
        }
    }
    if endpoint {
        dp.set_endpoint(
            TEST_RUN_IFINDEX,
            &EndpointInfo {
                identity: SUBJ,
                ingress_port_plens: plens[0],
                egress_port_plens: plens[1],
                isolation: [iso.0, iso.1],
                flags: endpoint_flags::HAS_IPV4 | endpoint_flags::HAS_IPV6,
                ipv4: v4_mapped(POD),
                ipv6: v6(1),
                endpoint_id: 1,
                ..Default::default()
            },
        )
        .unwrap();
    }
    for (net, id) in [
        ("10.0.0.2/32", PEER),
        ("10.0.0.0/8", CIDR_ID),
        ("10.0.0.1/32", SUBJ),
        ("192.168.1.1/32", identity::HOST),
        ("fd00::2/128", PEER),
        ("fd00::1/128", SUBJ),
    ] {
        dp.set_ipcache(net.parse().unwrap(), id).unwrap();
    }
    let events = dp.take_events().unwrap();
    World { dp, events }
}

impl World {
    fn run(&self, prog: &str, pkt: &[u8]) -> i32 {
        self.try_run(prog, pkt).expect("test run")
    }
    fn try_run(&self, prog: &str, pkt: &[u8]) -> Result<i32, dataplane::Error> {
        self.dp.test_run(prog, pkt, 1).map(|r| r.action)
    }
    fn events(&mut self) -> Vec<FlowEvent> {
        self.events.drain()
    }
    fn stat(&self, idx: u32) -> u64 {
        self.dp.stats().unwrap()[idx as usize]
    }
}

/// What a case expects besides the action: the one event (kind, verdict, reason, rule), or
/// none, and a counter that must be 1.
struct Case {
    name: &'static str,
    prog: &'static str,
    pkt: Vec<u8>,
    iso: Iso,
    entries: Vec<Entry>,
    cfg: u32,
    endpoint: bool,
    action: i32,
    event: Option<(u8, u8, u8, u32)>,
    stat: Option<u32>,
}

fn case(
    name: &'static str,
    prog: &'static str,
    pkt: Vec<u8>,
    iso: Iso,
    entries: &[Entry],
    action: i32,
) -> Case {
    Case {
        name,
        prog,
        pkt,
        iso,
        entries: entries.to_vec(),
        cfg: 0,
        endpoint: true,
        action,
        event: None,
        stat: None,
    }
}

impl Case {
    fn event(mut self, kind: u8, v: u8, r: u8, rule_id: u32) -> Self {
        self.event = Some((kind, v, r, rule_id));
        self
    }
    fn stat(mut self, s: u32) -> Self {
        self.stat = Some(s);
        self
    }
    fn cfg(mut self, flags: u32) -> Self {
        self.cfg = flags;
        self
    }
    fn no_endpoint(mut self) -> Self {
        self.endpoint = false;
        self
    }
}

fn tcp4(src: [u8; 4], dst: [u8; 4], dport: u16) -> Vec<u8> {
    ipv4(src, dst, IPPROTO_TCP, &tcp(40000, dport, TCP_SYN))
}
fn udp4(src: [u8; 4], dst: [u8; 4], dport: u16) -> Vec<u8> {
    ipv4(src, dst, IPPROTO_UDP, &udp(40000, dport, 16))
}
fn tcp6(src: [u8; 16], dst: [u8; 16], dport: u16) -> Vec<u8> {
    ipv6(src, dst, IPPROTO_TCP, &[], &tcp(40000, dport, TCP_SYN))
}
fn ext_chain_tcp6(dport: u16) -> Vec<u8> {
    let mut chain = ext6(IPPROTO_DSTOPTS);
    chain.extend(ext6(IPPROTO_TCP));
    ipv6(
        v6(2),
        v6(1),
        IPPROTO_HOPOPTS,
        &chain,
        &tcp(40000, dport, TCP_SYN),
    )
}
fn cut(mut v: Vec<u8>, len: usize) -> Vec<u8> {
    v.truncate(len);
    v
}
fn poke(mut v: Vec<u8>, at: usize, byte: u8) -> Vec<u8> {
    v[at] = byte;
    v
}

const ALLOW80: Entry = (IN, PEER, IPPROTO_TCP, 80, 16, 10, allow::ENFORCE);
const F: u32 = allow::ENFORCE;

fn cases() -> Vec<Case> {
    use event::{DENY, NEW};
    use verdict::{AUDIT, DROPPED, FORWARDED};
    let denied = |c: Case| c.event(DENY, DROPPED, reason::POLICY_DENIED, rule::DEFAULT_DENY);
    let malformed = |c: Case| c.stat(stats::MALFORMED);
    vec![
        // Not isolated: everything passes as default-allow.
        case("open egress", FROM, tcp4(POD, PEER4, 80), OPEN, &[], PASS).event(
            NEW,
            FORWARDED,
            0,
            rule::DEFAULT_ALLOW,
        ),
        case("open ingress", TO, tcp4(PEER4, POD, 80), OPEN, &[], PASS).event(
            NEW,
            FORWARDED,
            0,
            rule::DEFAULT_ALLOW,
        ),
        // Ingress isolation and the lookup order.
        case(
            "ingress allowed port",
            TO,
            tcp4(PEER4, POD, 80),
            ING,
            &[ALLOW80],
            PASS,
        )
        .event(NEW, FORWARDED, 0, 10),
        denied(case(
            "ingress other port",
            TO,
            tcp4(PEER4, POD, 81),
            ING,
            &[ALLOW80],
            DROP,
        )),
        denied(case(
            "ingress other protocol",
            TO,
            udp4(PEER4, POD, 80),
            ING,
            &[ALLOW80],
            DROP,
        )),
        denied(case(
            "ingress other peer",
            TO,
            tcp4(OUTSIDE, POD, 80),
            ING,
            &[ALLOW80],
            DROP,
        )),
        case(
            "ingress any-peer entry",
            TO,
            tcp4(OUTSIDE, POD, 443),
            ING,
            &[(IN, identity::ANY, IPPROTO_TCP, 443, 16, 11, F)],
            PASS,
        )
        .event(NEW, FORWARDED, 0, 11),
        case(
            "ingress protocol-only entry",
            TO,
            udp4(PEER4, POD, 5000),
            ING,
            &[(IN, PEER, IPPROTO_UDP, 0, 0, 12, F)],
            PASS,
        )
        .event(NEW, FORWARDED, 0, 12),
        case(
            "ingress all-protocols entry, SCTP",
            TO,
            ipv4(PEER4, POD, IPPROTO_SCTP, &sctp(1, 9)),
            ING,
            &[(IN, PEER, 0, 0, 0, 13, F)],
            PASS,
        )
        .event(NEW, FORWARDED, 0, 13),
        case(
            "ingress all-protocols entry, ICMP",
            TO,
            ipv4(PEER4, POD, IPPROTO_ICMP, &icmp4_echo(3, false)),
            ING,
            &[(IN, PEER, 0, 0, 0, 13, F)],
            PASS,
        )
        .event(NEW, FORWARDED, 0, 13),
        denied(case(
            "ingress ICMP without entry",
            TO,
            ipv4(PEER4, POD, IPPROTO_ICMP, &icmp4_echo(3, false)),
            ING,
            &[ALLOW80],
            DROP,
        )),
        case(
            "port range inside",
            TO,
            tcp4(PEER4, POD, 9000),
            ING,
            &[(IN, PEER, IPPROTO_TCP, 8192, 3, 14, F)],
            PASS,
        )
        .event(NEW, FORWARDED, 0, 14),
        denied(case(
            "port range outside",
            TO,
            tcp4(PEER4, POD, 7000),
            ING,
            &[(IN, PEER, IPPROTO_TCP, 8192, 3, 14, F)],
            DROP,
        )),
        case(
            "CIDR identity",
            TO,
            tcp4(IN_CIDR, POD, 80),
            ING,
            &[(IN, CIDR_ID, IPPROTO_TCP, 80, 16, 15, F)],
            PASS,
        )
        .event(NEW, FORWARDED, 0, 15),
        denied(case(
            "longest prefix wins over CIDR",
            TO,
            tcp4(PEER4, POD, 80),
            ING,
            &[(IN, CIDR_ID, IPPROTO_TCP, 80, 16, 15, F)],
            DROP,
        )),
        case(
            "host always allowed",
            TO,
            tcp4(NODE, POD, 8080),
            ING,
            &[],
            PASS,
        )
        .event(NEW, FORWARDED, 0, rule::HOST),
        denied(
            case(
                "host under policy when configured",
                TO,
                tcp4(NODE, POD, 8080),
                ING,
                &[],
                DROP,
            )
            .cfg(config_flags::POLICY_HOST),
        ),
        // Audit mode.
        case(
            "audit isolation, no entry",
            TO,
            tcp4(PEER4, POD, 81),
            Iso(isolation::AUDIT, 0),
            &[],
            PASS,
        )
        .event(NEW, AUDIT, reason::POLICY_DENIED, rule::DEFAULT_DENY)
        .stat(stats::AUDIT),
        case(
            "enforce+audit, enforcing entry",
            TO,
            tcp4(PEER4, POD, 80),
            Iso(isolation::ENFORCE | isolation::AUDIT, 0),
            &[ALLOW80],
            PASS,
        )
        .event(NEW, FORWARDED, 0, 10),
        denied(case(
            "enforce, audit-only entry",
            TO,
            tcp4(PEER4, POD, 80),
            ING,
            &[(IN, PEER, IPPROTO_TCP, 80, 16, 16, allow::AUDIT)],
            DROP,
        )),
        // Egress.
        case(
            "egress allowed",
            FROM,
            tcp4(POD, PEER4, 5432),
            EGR,
            &[(OUT, PEER, IPPROTO_TCP, 5432, 16, 20, F)],
            PASS,
        )
        .event(NEW, FORWARDED, 0, 20),
        denied(case(
            "egress denied",
            FROM,
            tcp4(POD, OUTSIDE, 443),
            EGR,
            &[(OUT, PEER, IPPROTO_TCP, 5432, 16, 20, F)],
            DROP,
        )),
        case(
            "egress spoofed IPv4 source",
            FROM,
            tcp4(v4(10, 0, 0, 99), PEER4, 80),
            OPEN,
            &[],
            DROP,
        )
        .event(DENY, DROPPED, reason::SPOOFED, rule::ANTI_SPOOF)
        .stat(stats::SPOOFED),
        case(
            "egress spoofed IPv6 source",
            FROM,
            tcp6(v6(0x99), v6(2), 80),
            OPEN,
            &[],
            DROP,
        )
        .event(DENY, DROPPED, reason::SPOOFED, rule::ANTI_SPOOF),
        case(
            "egress IPv6 link-local source",
            FROM,
            {
                let mut ll = [0u8; 16];
                ll[0] = 0xfe;
                ll[1] = 0x80;
                ll[15] = 1;
                tcp6(ll, v6(2), 80)
            },
            OPEN,
            &[],
            PASS,
        ),
        // IPv6.
        case(
            "IPv6 allowed",
            TO,
            tcp6(v6(2), v6(1), 80),
            ING,
            &[ALLOW80],
            PASS,
        )
        .event(NEW, FORWARDED, 0, 10),
        denied(case(
            "IPv6 denied",
            TO,
            ipv6(v6(2), v6(1), IPPROTO_UDP, &[], &udp(1, 80, 0)),
            ING,
            &[ALLOW80],
            DROP,
        )),
        case(
            "IPv6 extension chain, allowed port",
            TO,
            ext_chain_tcp6(80),
            ING,
            &[ALLOW80],
            PASS,
        ),
        denied(case(
            "IPv6 extension chain, denied port",
            TO,
            ext_chain_tcp6(81),
            ING,
            &[ALLOW80],
            DROP,
        )),
        malformed(case(
            "IPv6 too many extension headers",
            TO,
            {
                let mut chain = Vec::new();
                for _ in 0..MAX_IPV6_EXT_HEADERS {
                    chain.extend(ext6(IPPROTO_DSTOPTS));
                }
                ipv6(v6(2), v6(1), IPPROTO_DSTOPTS, &chain, &tcp(1, 80, TCP_SYN))
            },
            OPEN,
            &[],
            DROP,
        )),
        case(
            "neighbour solicitation passes isolation",
            TO,
            ipv6_hops(v6(2), v6(1), IPPROTO_ICMPV6, &[], &icmp6_raw(135), 255),
            ING,
            &[],
            PASS,
        ),
        denied(case(
            "routed neighbour discovery type (hop limit 64) is under policy",
            TO,
            ipv6(v6(2), v6(1), IPPROTO_ICMPV6, &[], &icmp6_raw(135)),
            ING,
            &[],
            DROP,
        )),
        denied(case(
            "MLD type with a global source is under policy",
            TO,
            ipv6_hops(v6(2), v6(1), IPPROTO_ICMPV6, &[], &icmp6_raw(143), 1),
            ING,
            &[],
            DROP,
        )),
        case(
            "pod's neighbour solicitation from its own global address",
            FROM,
            ipv6_hops(v6(1), v6(2), IPPROTO_ICMPV6, &[], &icmp6_raw(135), 255),
            EGR,
            &[],
            PASS,
        ),
        case(
            "pod's neighbour advertisement from another pod's address",
            FROM,
            ipv6_hops(v6(2), v6(0x99), IPPROTO_ICMPV6, &[], &icmp6_raw(136), 255),
            OPEN,
            &[],
            DROP,
        )
        .stat(stats::SPOOFED),
        case(
            "IPv4-mapped IPv6 source into a pod",
            TO,
            tcp6(v4_mapped(PEER4), v6(1), 80),
            OPEN,
            &[],
            DROP,
        )
        .stat(stats::SPOOFED),
        case(
            "IPv4-mapped IPv6 destination from a pod",
            FROM,
            tcp6(v6(1), v4_mapped(PEER4), 80),
            OPEN,
            &[],
            DROP,
        )
        .stat(stats::SPOOFED),
        case(
            "IPv4-compatible IPv6 source into a pod",
            TO,
            {
                let mut compat = [0u8; 16];
                compat[12..].copy_from_slice(&PEER4);
                tcp6(compat, v6(1), 80)
            },
            OPEN,
            &[],
            DROP,
        )
        .stat(stats::SPOOFED),
        denied(case(
            "ICMPv6 echo under isolation",
            TO,
            ipv6(v6(2), v6(1), IPPROTO_ICMPV6, &[], &icmp6_echo(1, false)),
            ING,
            &[ALLOW80],
            DROP,
        )),
        // VLAN tags cannot hide a packet from policy.
        denied(case(
            "VLAN denied port",
            TO,
            with_vlans(&tcp4(PEER4, POD, 81), &[7]),
            ING,
            &[ALLOW80],
            DROP,
        )),
        case(
            "VLAN allowed port",
            TO,
            with_vlans(&tcp4(PEER4, POD, 80), &[7]),
            ING,
            &[ALLOW80],
            PASS,
        )
        .event(NEW, FORWARDED, 0, 10),
        case(
            "QinQ allowed port",
            TO,
            with_vlans(&tcp4(PEER4, POD, 80), &[7, 8]),
            ING,
            &[ALLOW80],
            PASS,
        ),
        malformed(case(
            "three VLAN tags",
            TO,
            {
                let mut f = with_vlans(&tcp4(PEER4, POD, 80), &[7, 8]);
                f.splice(20..20, [0x81, 0x00, 0x00, 0x09]);
                f
            },
            OPEN,
            &[],
            DROP,
        )),
        // Malformed: fail closed.
        // BPF_PROG_TEST_RUN itself refuses an IPv4-typed frame shorter than an IPv4 header, but a
        // veth delivers one to TC; behind a VLAN tag the kernel leaves it to our parser.
        malformed(case(
            "truncated IPv4 header",
            TO,
            cut(with_vlans(&tcp4(PEER4, POD, 80), &[7]), 28),
            OPEN,
            &[],
            DROP,
        )),
        malformed(case(
            "IPv4 IHL below 5",
            TO,
            poke(tcp4(PEER4, POD, 80), 14, 0x44),
            OPEN,
            &[],
            DROP,
        )),
        malformed(case(
            "IP version mismatch",
            TO,
            poke(tcp4(PEER4, POD, 80), 14, 0x65),
            OPEN,
            &[],
            DROP,
        )),
        malformed(case(
            "IPv4 total length past the frame",
            TO,
            poke(tcp4(PEER4, POD, 80), 16, 0x10),
            OPEN,
            &[],
            DROP,
        )),
        malformed(case(
            "truncated TCP header",
            TO,
            {
                let full = tcp4(PEER4, POD, 80);
                let mut f = cut(full, 14 + 20 + 10);
                f[16..18].copy_from_slice(&30u16.to_be_bytes());
                f
            },
            OPEN,
            &[],
            DROP,
        )),
        malformed(case(
            "zero-length IPv4 frame",
            TO,
            with_vlans(&eth(0x0800, &[]), &[7]),
            OPEN,
            &[],
            DROP,
        )),
        case(
            "malformed with fail-open",
            TO,
            poke(tcp4(PEER4, POD, 80), 14, 0x44),
            ING,
            &[],
            PASS,
        )
        .cfg(config_flags::FAIL_OPEN)
        .stat(stats::FAIL_OPEN_PASSED),
        case("ARP passes", TO, eth(0x0806, &[0; 28]), ING, &[], PASS).stat(stats::NON_IP),
        case(
            "IPv4 options, allowed port",
            TO,
            {
                let mut h = ipv4_header(PEER4, POD, IPPROTO_TCP, 20);
                h.options = [1u8, 1, 1, 0][..].try_into().unwrap();
                ipv4_with(h, &tcp(1, 80, TCP_SYN))
            },
            ING,
            &[ALLOW80],
            PASS,
        ),
        denied(case(
            "IPv4 options, denied port",
            TO,
            {
                let mut h = ipv4_header(PEER4, POD, IPPROTO_TCP, 20);
                h.options = [1u8, 1, 1, 0][..].try_into().unwrap();
                ipv4_with(h, &tcp(1, 81, TCP_SYN))
            },
            ING,
            &[ALLOW80],
            DROP,
        )),
        // Fragments.
        case(
            "later fragment without its first",
            TO,
            ipv4_fragment(PEER4, POD, IPPROTO_UDP, 5, 8, false, &[0; 32]),
            OPEN,
            &[],
            DROP,
        )
        .stat(stats::FRAG_UNKNOWN),
        case(
            "first fragment, allowed port",
            TO,
            ipv4_fragment(PEER4, POD, IPPROTO_UDP, 5, 0, true, &udp(1, 53, 24)),
            ING,
            &[(IN, PEER, IPPROTO_UDP, 53, 16, 30, F)],
            PASS,
        )
        .event(NEW, FORWARDED, 0, 30),
        // Interfaces without an endpoint entry.
        case(
            "no endpoint fails closed",
            TO,
            tcp4(PEER4, POD, 80),
            OPEN,
            &[],
            DROP,
        )
        .no_endpoint()
        .stat(stats::NO_ENDPOINT),
        case(
            "no endpoint with fail-open",
            TO,
            tcp4(PEER4, POD, 80),
            OPEN,
            &[],
            PASS,
        )
        .no_endpoint()
        .cfg(config_flags::FAIL_OPEN)
        .stat(stats::FAIL_OPEN_PASSED),
    ]
}

#[test]
fn verdict_table() {
    let cases = cases();
    assert!(cases.len() >= 40, "the table keeps at least 40 cases");
    let mut failures = Vec::new();
    for c in &cases {
        let mut w = world("table", c.iso, &c.entries, c.cfg, c.endpoint);
        let action = match w.try_run(c.prog, &c.pkt) {
            Ok(a) => a,
            Err(e) => {
                failures.push(format!("{}: {e} ({} bytes)", c.name, c.pkt.len()));
                continue;
            }
        };
        let evs = w.events();
        let got_event = evs
            .first()
            .map(|e| (e.kind, e.verdict, e.reason, e.rule_id));
        if action != c.action {
            failures.push(format!("{}: action {action}, want {}", c.name, c.action));
        }
        if let Some(want) = c.event {
            if evs.len() != 1 || got_event != Some(want) {
                failures.push(format!(
                    "{}: events {:?}, want one {want:?}",
                    c.name,
                    evs.iter()
                        .map(|e| (e.kind, e.verdict, e.reason, e.rule_id))
                        .collect::<Vec<_>>()
                ));
            }
        }
        if let Some(s) = c.stat {
            let n = w.stat(s);
            if n != 1 {
                failures.push(format!("{}: counter {s} = {n}, want 1", c.name));
            }
        }
        let dropped = w.stat(stats::DROPPED);
        if (c.action == DROP) != (dropped == 1) {
            failures.push(format!("{}: dropped counter {dropped}", c.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn kinds(evs: &[FlowEvent]) -> Vec<(u8, u8, u8)> {
    evs.iter().map(|e| (e.kind, e.verdict, e.reason)).collect()
}

/// A pod with only an IPv4 address sends nothing from an IPv6 global source (an allowed pod's
/// address among them), and a v6-only pod nothing over IPv4; IPv6 link-local stays usable.
#[test]
fn sources_of_a_family_the_pod_lacks_are_spoofed() {
    for (tag, flags, pkt, action) in [
        (
            "v4only_v6",
            endpoint_flags::HAS_IPV4,
            tcp6(v6(2), v6(3), 80),
            DROP,
        ),
        (
            "v4only_v4",
            endpoint_flags::HAS_IPV4,
            tcp4(POD, PEER4, 80),
            PASS,
        ),
        (
            "v6only_v4",
            endpoint_flags::HAS_IPV6,
            tcp4(POD, PEER4, 80),
            DROP,
        ),
        ("none_v4", 0, tcp4(POD, PEER4, 80), DROP),
        (
            "v4only_ll",
            endpoint_flags::HAS_IPV4,
            {
                let mut ll = [0u8; 16];
                ll[0] = 0xfe;
                ll[1] = 0x80;
                ll[15] = 7;
                tcp6(ll, v6(3), 80)
            },
            PASS,
        ),
    ] {
        let mut w = world(tag, OPEN, &[], 0, true);
        let mut ep = EndpointInfo {
            identity: SUBJ,
            flags,
            endpoint_id: 1,
            ..Default::default()
        };
        if flags & endpoint_flags::HAS_IPV4 != 0 {
            ep.ipv4 = v4_mapped(POD);
        }
        if flags & endpoint_flags::HAS_IPV6 != 0 {
            ep.ipv6 = v6(1);
        }
        w.dp.set_endpoint(TEST_RUN_IFINDEX, &ep).unwrap();
        assert_eq!(w.run(FROM, &pkt), action, "{tag}");
        if action == DROP {
            assert_eq!(w.stat(stats::SPOOFED), 1, "{tag}");
            assert_eq!(
                kinds(&w.events()),
                vec![(event::DENY, verdict::DROPPED, reason::SPOOFED)],
                "{tag}"
            );
        }
    }
}

/// ICMP errors about a tracked connection pass isolation (path MTU discovery works); errors
/// about nothing tracked, or not addressed to the quoted packet's sender, are under policy.
#[test]
fn icmp_errors_relate_to_tracked_connections() {
    let router = v4(192, 0, 2, 1);
    // Egress allowed to the peer on 80; ingress isolated with nothing allowed.
    let w = world(
        "related",
        Iso(isolation::ENFORCE, isolation::ENFORCE),
        &[(OUT, PEER, IPPROTO_TCP, 80, 16, 20, F)],
        0,
        true,
    );
    let syn = tcp4(POD, PEER4, 80);
    assert_eq!(w.run(FROM, &syn), PASS);
    let frag_needed = ipv4(router, POD, IPPROTO_ICMP, &icmp4_error(3, 4, &syn[14..]));
    assert_eq!(w.run(TO, &frag_needed), PASS, "fragmentation needed");
    assert_eq!(w.stat(stats::ICMP_RELATED), 1);
    let untracked = tcp4(POD, PEER4, 81);
    let unrelated = ipv4(
        router,
        POD,
        IPPROTO_ICMP,
        &icmp4_error(3, 4, &untracked[14..]),
    );
    assert_eq!(
        w.run(TO, &unrelated),
        DROP,
        "an error about nothing tracked"
    );
    // Quoting the pod's connection but addressed elsewhere (the attacker cannot redirect an
    // error at another endpoint behind the same interface).
    let misaddressed = ipv4(
        router,
        v4(10, 0, 0, 42),
        IPPROTO_ICMP,
        &icmp4_error(3, 4, &syn[14..]),
    );
    assert_eq!(w.run(TO, &misaddressed), DROP);
    assert_eq!(w.stat(stats::ICMP_RELATED), 1);
    // IPv6 packet too big, and the pod's own unreachable about an inbound connection.
    let syn6 = tcp6(v6(1), v6(2), 80);
    assert_eq!(w.run(FROM, &syn6), PASS);
    let too_big = ipv6(
        v6(0x77),
        v6(1),
        IPPROTO_ICMPV6,
        &[],
        &icmp6_error(2, &syn6[14..]),
    );
    assert_eq!(w.run(TO, &too_big), PASS, "packet too big");
    assert_eq!(w.stat(stats::ICMP_RELATED), 2);
}

/// Replies take the conntrack fast path even when policy in their own direction would deny.
#[test]
fn replies_of_allowed_connections_pass() {
    let mut w = world(
        "reply",
        Iso(isolation::ENFORCE, isolation::ENFORCE),
        &[ALLOW80],
        0,
        true,
    );
    assert_eq!(w.run(TO, &tcp4(PEER4, POD, 80)), PASS);
    let syn_ack = ipv4(POD, PEER4, IPPROTO_TCP, &tcp(80, 40000, TCP_SYN | TCP_ACK));
    assert_eq!(
        w.run(FROM, &syn_ack),
        PASS,
        "reply passes although egress is isolated with no entries"
    );
    // A new connection in the other direction is still denied.
    assert_eq!(w.run(FROM, &tcp4(POD, PEER4, 80)), DROP);
    let ct = w.dp.conntrack().unwrap();
    assert_eq!(ct.len(), 1);
    assert_eq!((ct[0].1.packets_fwd, ct[0].1.packets_rev), (1, 1));
    assert_eq!(
        kinds(&w.events()),
        vec![
            (event::NEW, verdict::FORWARDED, 0),
            (event::DENY, verdict::DROPPED, reason::POLICY_DENIED)
        ]
    );
}

/// Removing the allowing entry and bumping the revision ends an established connection.
#[test]
fn revoked_connections_end() {
    let mut w = world("revoke", ING, &[ALLOW80], 0, true);
    let data = ipv4(PEER4, POD, IPPROTO_TCP, &tcp(40000, 80, TCP_ACK));
    assert_eq!(w.run(TO, &tcp4(PEER4, POD, 80)), PASS);
    assert_eq!(w.run(TO, &data), PASS);
    // Same revision: the entry is not even looked at.
    w.dp.remove_policy(&PolicyKey::new(SUBJ, IN, PEER, IPPROTO_TCP, 80, 16))
        .unwrap();
    assert_eq!(
        w.run(TO, &data),
        PASS,
        "fast path until the revision changes"
    );
    w.dp.bump_revision().unwrap();
    assert_eq!(w.run(TO, &data), DROP);
    assert!(w.dp.conntrack().unwrap().is_empty(), "the entry is gone");
    let evs = w.events();
    assert_eq!(
        kinds(&evs).last(),
        Some(&(event::DENY, verdict::DROPPED, reason::REVOKED))
    );
    assert_eq!(
        evs.last().unwrap().packets_fwd,
        3,
        "the revoke event carries the connection's counts"
    );
    assert_eq!(w.stat(stats::CT_REVOKED), 1);
}

/// After a revision change an allowed connection is re-checked once, then fast-pathed again.
#[test]
fn still_allowed_connections_are_rechecked_once() {
    let mut w = world("recheck", ING, &[ALLOW80], 0, true);
    let data = ipv4(PEER4, POD, IPPROTO_TCP, &tcp(40000, 80, TCP_ACK));
    assert_eq!(w.run(TO, &tcp4(PEER4, POD, 80)), PASS);
    let rev = w.dp.bump_revision().unwrap();
    for _ in 0..3 {
        assert_eq!(w.run(TO, &data), PASS);
    }
    assert_eq!(w.stat(stats::CT_REVALIDATED), 1);
    assert_eq!(w.dp.conntrack().unwrap()[0].1.policy_revision, rev);
    let _ = w.events();
}

/// A peer whose identity changes (a label change) loses access to established connections.
#[test]
fn identity_change_revokes() {
    let mut w = world("ident", ING, &[ALLOW80], 0, true);
    assert_eq!(w.run(TO, &tcp4(PEER4, POD, 80)), PASS);
    w.dp.set_ipcache("10.0.0.2/32".parse().unwrap(), 2001)
        .unwrap();
    w.dp.bump_revision().unwrap();
    assert_eq!(
        w.run(TO, &ipv4(PEER4, POD, IPPROTO_TCP, &tcp(40000, 80, TCP_ACK))),
        DROP
    );
    let evs = w.events();
    assert_eq!(
        evs.last().map(|e| (e.reason, e.peer_identity)),
        Some((reason::REVOKED, 2001))
    );
}

/// Later fragments get their ports from the first one, so policy still applies to them.
#[test]
fn fragments_follow_their_first() {
    let mut w = world(
        "frags",
        ING,
        &[(IN, PEER, IPPROTO_UDP, 53, 16, 30, F)],
        0,
        true,
    );
    assert_eq!(
        w.run(
            TO,
            &ipv4_fragment(PEER4, POD, IPPROTO_UDP, 7, 0, true, &udp(1, 53, 24))
        ),
        PASS
    );
    assert_eq!(
        w.run(
            TO,
            &ipv4_fragment(PEER4, POD, IPPROTO_UDP, 7, 4, false, &[0; 16])
        ),
        PASS
    );
    // The same for a denied port: the first fragment and its followers are dropped.
    assert_eq!(
        w.run(
            TO,
            &ipv4_fragment(PEER4, POD, IPPROTO_UDP, 8, 0, true, &udp(1, 54, 24))
        ),
        DROP
    );
    assert_eq!(
        w.run(
            TO,
            &ipv4_fragment(PEER4, POD, IPPROTO_UDP, 8, 4, false, &[0; 16])
        ),
        DROP
    );
    // IPv6 fragment header.
    let first6 = ipv6(
        v6(2),
        v6(1),
        IPPROTO_FRAGMENT,
        &frag6(IPPROTO_UDP, 0, true, 0x77),
        &udp(1, 53, 16),
    );
    let later6 = ipv6(
        v6(2),
        v6(1),
        IPPROTO_FRAGMENT,
        &frag6(IPPROTO_UDP, 3, false, 0x77),
        &[0; 16],
    );
    assert_eq!(w.run(TO, &first6), PASS);
    assert_eq!(w.run(TO, &later6), PASS);
    assert_eq!(w.stat(stats::FRAG_UNKNOWN), 0);
    let _ = w.events();
}

/// TCP FIN both ways and RST end a connection with one END event carrying the counts.
#[test]
fn connection_end_events() {
    let mut w = world("end", OPEN, &[], 0, true);
    let pkt = |src, dst, sp, dp, fl| ipv4(src, dst, IPPROTO_TCP, &tcp(sp, dp, fl));
    assert_eq!(w.run(FROM, &pkt(POD, PEER4, 40000, 80, TCP_SYN)), PASS);
    assert_eq!(
        w.run(TO, &pkt(PEER4, POD, 80, 40000, TCP_SYN | TCP_ACK)),
        PASS
    );
    assert_eq!(
        w.run(FROM, &pkt(POD, PEER4, 40000, 80, TCP_FIN | TCP_ACK)),
        PASS
    );
    assert_eq!(
        w.run(TO, &pkt(PEER4, POD, 80, 40000, TCP_FIN | TCP_ACK)),
        PASS
    );
    assert_eq!(w.run(FROM, &pkt(POD, PEER4, 40000, 80, TCP_ACK)), PASS);
    // A second connection reset by the peer.
    assert_eq!(w.run(FROM, &pkt(POD, PEER4, 40001, 80, TCP_SYN)), PASS);
    assert_eq!(w.run(TO, &pkt(PEER4, POD, 80, 40001, TCP_RST)), PASS);
    let evs = w.events();
    let ends: Vec<_> = evs.iter().filter(|e| e.kind == event::END).collect();
    assert_eq!(ends.len(), 2, "{:?}", kinds(&evs));
    assert_eq!(
        (ends[0].packets_fwd, ends[0].packets_rev),
        (2, 2),
        "END is sent at the second FIN"
    );
    assert_eq!(
        (ends[0].sport, ends[0].dport),
        (40000, 80),
        "in the original direction"
    );
    assert!(ends[0].bytes_fwd > 0 && ends[0].bytes_rev > 0);
    assert_eq!((ends[1].sport, ends[1].packets_rev), (40001, 1));
}

/// A SYN on the tuple of a closed connection starts a new one, with its own NEW and END and
/// its own counts, from either side; a SYN-ACK or a late ACK on it does not.
#[test]
fn a_reused_tuple_is_a_new_connection() {
    let mut w = world("reuse", OPEN, &[], 0, true);
    let pkt = |src, dst, sp, dp, fl| ipv4(src, dst, IPPROTO_TCP, &tcp(sp, dp, fl));
    let close = |w: &World| {
        assert_eq!(
            w.run(FROM, &pkt(POD, PEER4, 40000, 80, TCP_FIN | TCP_ACK)),
            PASS
        );
        assert_eq!(
            w.run(TO, &pkt(PEER4, POD, 80, 40000, TCP_FIN | TCP_ACK)),
            PASS
        );
        assert_eq!(w.run(FROM, &pkt(POD, PEER4, 40000, 80, TCP_ACK)), PASS);
    };
    assert_eq!(w.run(FROM, &pkt(POD, PEER4, 40000, 80, TCP_SYN)), PASS);
    assert_eq!(
        w.run(TO, &pkt(PEER4, POD, 80, 40000, TCP_SYN | TCP_ACK)),
        PASS
    );
    close(&w);
    // The pod reuses its port at once (no TIME_WAIT on its side, or SO_REUSEADDR).
    assert_eq!(w.run(FROM, &pkt(POD, PEER4, 40000, 80, TCP_SYN)), PASS);
    assert_eq!(
        w.run(TO, &pkt(PEER4, POD, 80, 40000, TCP_SYN | TCP_ACK)),
        PASS
    );
    close(&w);
    // The peer opens a connection on the same tuple, the other way round.
    assert_eq!(w.run(TO, &pkt(PEER4, POD, 80, 40000, TCP_SYN)), PASS);
    assert_eq!(
        w.run(FROM, &pkt(POD, PEER4, 40000, 80, TCP_SYN | TCP_ACK)),
        PASS
    );
    assert_eq!(w.run(TO, &pkt(PEER4, POD, 80, 40000, TCP_RST)), PASS);
    // A late ACK of a closed connection is not a new one.
    assert_eq!(w.run(TO, &pkt(PEER4, POD, 80, 40000, TCP_ACK)), PASS);
    let evs = w.events();
    let of = |k| evs.iter().filter(|e| e.kind == k).collect::<Vec<_>>();
    let (news, ends) = (of(event::NEW), of(event::END));
    assert_eq!((news.len(), ends.len()), (3, 3), "{:?}", kinds(&evs));
    assert_eq!(w.stat(stats::CT_CREATED), 3);
    for (i, end) in ends.iter().take(2).enumerate() {
        assert_eq!(
            (end.sport, end.dport, end.packets_fwd, end.packets_rev),
            (40000, 80, 2, 2),
            "connection {i} has its own counts"
        );
    }
    assert_eq!(
        (news[2].sport, news[2].dport, news[2].direction),
        (80, 40000, IN),
        "opened by the peer"
    );
    assert_eq!((ends[2].packets_fwd, ends[2].packets_rev), (2, 1));
}

/// Denials of one flow are reported once per interval; the rest are counted.
#[test]
fn denial_events_are_rate_limited() {
    let mut w = world("ratelimit", ING, &[], 0, true);
    let mut cfg = w.dp.config().unwrap();
    cfg.deny_event_interval_ns = 3_600_000_000_000;
    w.dp.set_config(&cfg).unwrap();
    for _ in 0..5 {
        assert_eq!(w.run(TO, &tcp4(PEER4, POD, 81)), DROP);
    }
    // Another flow is reported on its own.
    assert_eq!(w.run(TO, &tcp4(PEER4, POD, 82)), DROP);
    let evs = w.events();
    assert_eq!(evs.len(), 2, "{:?}", kinds(&evs));
    assert_eq!(w.stat(stats::DENY_EVENTS_SUPPRESSED), 4);
    assert_eq!(w.stat(stats::DROPPED), 6);
}

/// An audit-mode connection keeps its AUDIT verdict on the fast path.
#[test]
fn audit_connections_count_as_audit() {
    let mut w = world("audit", Iso(isolation::AUDIT, 0), &[], 0, true);
    assert_eq!(w.run(TO, &tcp4(PEER4, POD, 81)), PASS);
    assert_eq!(
        w.run(TO, &ipv4(PEER4, POD, IPPROTO_TCP, &tcp(40000, 81, TCP_ACK))),
        PASS
    );
    assert_eq!(w.stat(stats::AUDIT), 2);
    assert_eq!(w.dp.conntrack().unwrap()[0].1.verdict, verdict::AUDIT);
    let _ = w.events();
}

/// A burst larger than the ring buffer: verdicts are unaffected and the loss is counted.
#[test]
fn full_ring_buffer_counts_losses() {
    let mut dp = ScratchDatapath::load_with("ringfull", |o| o.events_bytes = 4096).unwrap();
    dp.set_endpoint(
        TEST_RUN_IFINDEX,
        &EndpointInfo {
            identity: SUBJ,
            flags: endpoint_flags::HAS_IPV4,
            ipv4: v4_mapped(POD),
            ..Default::default()
        },
    )
    .unwrap();
    let mut events = dp.take_events().unwrap();
    let n = 200u16;
    for port in 0..n {
        let a = dp
            .test_run(
                FROM,
                &ipv4(POD, PEER4, IPPROTO_UDP, &udp(1000 + port, 53, 8)),
                1,
            )
            .unwrap();
        assert_eq!(a.action, PASS);
    }
    let got = events.drain().len() as u64;
    let lost = dp.stats().unwrap()[stats::EVENTS_LOST as usize];
    assert!(lost > 0, "a 4 KiB ring cannot hold {n} events");
    assert_eq!(
        got + lost,
        n as u64,
        "every event is either delivered or counted as lost"
    );
}

/// The async reader wakes on ring-buffer readiness (tokio AsyncFd) and returns the events.
#[test]
fn async_event_reader_wakes_on_events() {
    let w = world("async", OPEN, &[], 0, true);
    let World { dp, events } = w;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut reader = events.into_async().unwrap();
        let waiter = tokio::spawn(async move { reader.next_batch().await });
        tokio::task::yield_now().await;
        assert_eq!(
            dp.test_run(FROM, &tcp4(POD, PEER4, 80), 1).unwrap().action,
            PASS
        );
        let batch = tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("woken within the deadline")
            .unwrap()
            .unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!((batch[0].kind, batch[0].dport), (event::NEW, 80));
    });
}
