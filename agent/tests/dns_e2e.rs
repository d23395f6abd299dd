//! FQDN rules end to end with real DNS: dnsmasq in an "outside" namespace serves a zone
//! (CNAME chains, several A records, short TTLs, a name that changes address); pods behind the
//! real agent and CNI chain resolve names and connect at once.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    path::PathBuf,
    str::FromStr,
    time::Duration,
};

use hickory_proto::{
    op::{Message, MessageType, Query},
    rr::{Name, RData, RecordType},
};
use hostnet::netns::in_netns;
use testbed::{
    bed::ip,
    cni::Attachment,
    dns::{query, Outside, FAKE_RESOLVER},
    node::{flow_records, http_get, metric, Binaries, Node},
    traffic::*,
};

const PORT: u16 = 443;

fn bins() -> Binaries {
    Binaries::for_agent(env!("CARGO_BIN_EXE_septa-agent"))
}

const SERVICES: [&str; 10] = [
    "198.51.100.10",
    "198.51.100.11",
    "198.51.100.12",
    "198.51.100.13",
    "198.51.100.14",
    "198.51.100.15",
    "198.51.100.16",
    "198.51.100.17",
    "198.51.100.20",
    "198.51.100.99",
];

fn outside(n: &Node) -> Outside {
    let records: Vec<String> = [
        "--host-record=api.example.test,198.51.100.10",
        "--host-record=multi.example.test,198.51.100.11",
        "--host-record=multi.example.test,198.51.100.12",
        "--host-record=edge.cdn.test,198.51.100.13",
        "--cname=www.example.test,edge.cdn.test",
        "--host-record=blocked.other.test,198.51.100.20",
        // A long TTL (the others have dnsmasq's 2 s local TTL).
        "--host-record=stable.example.test,198.51.100.16,600",
        // Never looked up by a pod: reachable through the agent's pre-resolution.
        "--host-record=cached.example.test,198.51.100.17,600",
        "--host-record=v6.example.test,198.51.100.15,2001:db8::15",
    ]
    .map(str::to_owned)
    .to_vec();
    // A pattern, not a name: exact names are pre-resolved by the agent, and this answer is
    // only meant to reach the pod.
    let mut records = records;
    for i in 100..220 {
        records.push(format!(
            "--host-record=many.big.example.test,198.51.100.{i}"
        ));
    }
    let o = Outside::start(n, &SERVICES, &records, "api.example.test").unwrap();
    o.set_hosts("198.51.100.14 moving.example.test\n").unwrap();
    poll_until(Duration::from_secs(10), || {
        query(&o.path(), "moving.example.test", false)
            .ok()
            .filter(|a| !a.is_empty())
    })
    .expect("dnsmasq did not take the hosts file");
    o
}

fn to(a: &str) -> SocketAddr {
    SocketAddr::new(a.parse().unwrap(), PORT)
}

fn connects(pod: &Attachment, dst: SocketAddr) -> bool {
    tcp_connect(&pod.netns, dst).is_ok()
}

const POLICY: &str = "apiVersion: septa.dev/v1alpha1
kind: FqdnPolicy
metadata: {name: egress-by-name, namespace: demo}
spec:
  podSelector: {matchLabels: {app: client}}
  egress:
  - toFQDNs:
    - {matchName: api.example.test}
    - {matchName: multi.example.test}
    - {matchName: www.example.test}
    - {matchName: moving.example.test}
    - {matchName: cached.example.test}
    - {matchPattern: '*.big.example.test'}
    - {matchPattern: '*.example.test'}
    ports: [{protocol: TCP, port: 443}]
";

/// `preresolve`: the agent's own resolution of exact names, off unless a test is about it (so
/// the other tests see the answer hold-back alone).
fn setup(tag: &str, preresolve: &str) -> (Node, Outside, Attachment, Attachment, PathBuf) {
    let mut n = Node::new(tag, bins()).unwrap();
    let out = outside(&n);
    let log = n.dir.join("flows.jsonl");
    n.agent_args = [
        "--dns-min-ttl",
        "1s",
        "--dns-grace",
        "60s",
        "--dns-server",
        "192.0.2.53:53",
        // Two trusted resolvers: dnsmasq, and the address the fuzz test answers from.
        "--dns-resolver",
        "192.0.2.53",
        "--dns-resolver",
        FAKE_RESOLVER,
        "--dns-preresolve-interval",
        preresolve,
        "--flow-log",
        log.to_str().unwrap(),
    ]
    .map(str::to_owned)
    .to_vec();
    n.write_manifest(
        "00-ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n",
    )
    .unwrap();
    n.write_manifest("10-fqdn.yaml", POLICY).unwrap();
    n.start_agent().unwrap();
    let a = n.add_pod("demo", "client-1", "app=client").unwrap();
    let b = n.add_pod("demo", "client-2", "app=client").unwrap();
    for p in [&a, &b] {
        Node::route_via_node(p).unwrap();
    }
    (n, out, a, b, log)
}

#[test]
fn names_open_egress_on_the_first_packet_and_only_for_the_pod_that_asked() {
    let (mut n, out, a, b, log) = setup("dns", "0s");
    let _srv = Server::start(&out.path(), &[PORT], &[]).unwrap();
    let api = to("198.51.100.10");

    // Isolated: nothing by address alone.
    assert!(
        !connects(&a, api),
        "egress must be isolated by the FqdnPolicy"
    );

    if let Err(e) = query(&a.netns, "api.example.test", false) {
        panic!(
            "first lookup: {e}\nmetrics:\n{}\nagent log:\n{}",
            http_get(&n.bed.node_path(), "/metrics")
                .lines()
                .filter(|l| l.contains("dns") || l.contains("fqdn"))
                .collect::<Vec<_>>()
                .join("\n"),
            n.agent_log()
        );
    }
    // 1,000 fresh lookups, each followed at once by a connection: never a first-packet drop.
    let mut failures = 0;
    for i in 0..1000 {
        let addrs = query(&a.netns, "api.example.test", false).unwrap();
        assert_eq!(addrs, [Ipv4Addr::new(198, 51, 100, 10)], "lookup {i}");
        if tcp_connect(&a.netns, api).is_err() {
            failures += 1;
        }
    }
    assert_eq!(failures, 0, "connections right after a lookup failed");

    // Several A records; a CNAME chain; DNS over TCP.
    assert_eq!(
        query(&a.netns, "multi.example.test", false).unwrap().len(),
        2
    );
    assert!(connects(&a, to("198.51.100.11")) && connects(&a, to("198.51.100.12")));
    assert_eq!(
        query(&a.netns, "www.example.test", true).unwrap(),
        [Ipv4Addr::new(198, 51, 100, 13)]
    );
    assert!(connects(&a, to("198.51.100.13")), "CNAME chain over TCP");
    // The rule's port only.
    assert!(tcp_connect(
        &a.netns,
        SocketAddr::new("198.51.100.10".parse().unwrap(), 8443)
    )
    .is_err());

    // Not allowed: a name outside the rules, an address no answer gave.
    assert_eq!(
        query(&a.netns, "blocked.other.test", false).unwrap().len(),
        1
    );
    assert!(!connects(&a, to("198.51.100.20")));
    assert!(!connects(&a, to("198.51.100.99")));

    // The other pod did not ask for multi.example.test: still closed for it.
    assert!(
        !connects(&b, to("198.51.100.11")),
        "one pod's lookup opened another pod"
    );
    query(&b.netns, "multi.example.test", false).unwrap();
    assert!(connects(&b, to("198.51.100.11")));

    // Flow records name the DNS name; metrics count answers and denials.
    let rec = poll_until(Duration::from_secs(10), || {
        flow_records(&log).into_iter().find(|r| {
            r["kind"] == "new"
                && r["destination"]["ip"] == "198.51.100.10"
                && r["verdict"] == "forwarded"
        })
    })
    .expect("a flow record for the API connection");
    assert_eq!(
        rec["dns_names"],
        serde_json::json!(["api.example.test"]),
        "{rec}"
    );
    assert_eq!(rec["policy"]["name"], "egress-by-name");
    let m = http_get(&n.bed.node_path(), "/metrics");
    assert!(
        metric(&m, "septa_dns_answers_total{result=\"added\"}") >= 1.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "septa_fqdn_connections_total{result=\"denied_unresolved\"}"
        ) >= 1.0
    );
    assert!(metric(&m, "septa_fqdn_addresses_added_total") >= 4.0);

    // Restart: learned names keep working without a new lookup, and new lookups work.
    query(&a.netns, "stable.example.test", false).unwrap();
    n.stop_agent().unwrap();
    n.start_agent().unwrap();
    assert!(
        connects(&a, to("198.51.100.16")),
        "entries survive the restart"
    );
    query(&a.netns, "api.example.test", false).unwrap();
    assert!(connects(&a, api));
    n.stop_agent().unwrap();
}

#[test]
fn ttl_expiry_closes_new_connections_but_not_live_ones() {
    let (n, out, a, _b, _log) = setup("dns-ttl", "0s");
    let _srv = Server::start(&out.path(), &[PORT], &[]).unwrap();
    let moving = to("198.51.100.14");
    assert_eq!(
        query(&a.netns, "moving.example.test", false).unwrap(),
        [Ipv4Addr::new(198, 51, 100, 14)]
    );
    let mut live = tcp_connect(&a.netns, moving).expect("allowed after the lookup");
    echo(&mut live, b"before").unwrap();
    // The name moves; the old address expires with its 2 s TTL.
    out.set_hosts("198.51.100.15 moving.example.test\n")
        .unwrap();
    poll_until(Duration::from_secs(20), || {
        (!connects(&a, moving)).then_some(())
    })
    .expect("the expired address still accepts new connections");
    echo(&mut live, b"after expiry").expect("a live connection was cut within the grace period");
    // The new address comes with the next lookup.
    assert_eq!(
        query(&a.netns, "moving.example.test", false).unwrap(),
        [Ipv4Addr::new(198, 51, 100, 15)]
    );
    assert!(connects(&a, to("198.51.100.15")));
    drop(n);
}

#[test]
fn fuzzed_answers_do_not_crash_the_agent_and_add_nothing() {
    let (n, out, a, _b, _log) = setup("dns-fuzz", "0s");
    let _srv = Server::start(&out.path(), &[PORT], &[]).unwrap();
    // Answers from a second trusted resolver address to a query the pod sent it (so that they
    // reach the agent): garbage, truncated answers, valid headers with lying counts, oversized
    // names.
    let pod_ip = Node::pod_ip(&a);
    let fake: SocketAddr = format!("{FAKE_RESOLVER}:53").parse().unwrap();
    let pod_sock = in_netns(&a.netns, || UdpSocket::bind(("0.0.0.0", 40999)))
        .unwrap()
        .unwrap();
    pod_sock
        .send_to(&testbed::dns::dns_query("evil.example.test", 9), fake)
        .unwrap();
    let good = {
        let mut m = Message::new();
        m.set_id(9)
            .set_message_type(MessageType::Response)
            .add_query(Query::query(
                Name::from_str("evil.example.test.").unwrap(),
                RecordType::A,
            ));
        m.add_answer(hickory_proto::rr::Record::from_rdata(
            Name::from_str("evil.example.test.").unwrap(),
            60,
            RData::A(hickory_proto::rr::rdata::A(
                "198.51.100.99".parse().unwrap(),
            )),
        ));
        m.to_vec().unwrap()
    };
    let mut payloads: Vec<Vec<u8>> = vec![vec![], vec![0xff; 12], b"not dns at all".to_vec()];
    for cut in [2, 5, 11, 12, 20, good.len() - 1] {
        payloads.push(good[..cut].to_vec());
    }
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..300 {
        let mut p = good.clone();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let i = 12 + (seed as usize % (p.len() - 12));
        p[i] ^= (seed >> 40) as u8 | 1;
        // Keep the mutation from being a valid answer for the allowed address.
        if p == good {
            continue;
        }
        payloads.push(p[..p.len() - (seed as usize % 4) - 1].to_vec());
    }
    in_netns(&out.path(), || {
        let s = UdpSocket::bind((FAKE_RESOLVER, 53)).unwrap();
        for p in &payloads {
            let _ = s.send_to(p, SocketAddr::new(pod_ip, 40999));
        }
    })
    .unwrap();
    // The agent handled every one of them (counted), is healthy, and opened nothing.
    poll_until(Duration::from_secs(10), || {
        let m = http_get(&n.bed.node_path(), "/metrics");
        let seen: f64 = [
            "malformed",
            "no_match",
            "not_dns",
            "added",
            "refreshed",
            "unsolicited",
            "mismatched",
        ]
        .iter()
        .map(|r| metric(&m, &format!("septa_dns_answers_total{{result=\"{r}\"}}")))
        .sum();
        (seen >= payloads.len() as f64).then_some(())
    })
    .expect("the agent did not handle every answer");
    assert!(http_get(&n.bed.node_path(), "/healthz").starts_with("HTTP/1.0 200"));
    assert!(
        !connects(&a, to("198.51.100.99")),
        "a fuzzed answer opened egress"
    );
    // DNS still works for the pod.
    query(&a.netns, "api.example.test", false).unwrap();
    assert!(connects(&a, to("198.51.100.10")));
    drop(pod_sock);
}

/// Nothing but the pod's own query, answered by a trusted resolver, opens egress: not an
/// "answer" from another pod (whatever its source port), nor one from a resolver the policy
/// does not trust (the pod cannot even ask it), nor one the pod asked for another name.
#[test]
fn forged_and_untrusted_answers_open_nothing() {
    let (mut n, out, a, _b, _log) = setup("dns-forge", "0s");
    let _srv = Server::start(&out.path(), &[PORT], &[]).unwrap();
    let evil = to("198.51.100.99");
    let forged = |id: u16| {
        let mut m = Message::new();
        m.set_id(id)
            .set_message_type(MessageType::Response)
            .add_query(Query::query(
                Name::from_str("api.example.test.").unwrap(),
                RecordType::A,
            ))
            .add_answer(hickory_proto::rr::Record::from_rdata(
                Name::from_str("api.example.test.").unwrap(),
                i32::MAX as u32,
                RData::A(hickory_proto::rr::rdata::A(
                    "198.51.100.99".parse().unwrap(),
                )),
            ));
        m.to_vec().unwrap()
    };
    // (a) Another pod (no policy of its own, and the FQDN pod's ingress is open) sends the
    // FQDN pod unsolicited answers from port 53, to the port it queries from.
    let mallory = n.add_pod("default", "mallory", "app=mallory").unwrap();
    Node::route_via_node(&mallory).unwrap();
    let pod_sock = in_netns(&a.netns, || UdpSocket::bind(("0.0.0.0", 41053)))
        .unwrap()
        .unwrap();
    let a_addr = SocketAddr::new(Node::pod_ip(&a), 41053);
    in_netns(&mallory.netns, || {
        let s = UdpSocket::bind(("0.0.0.0", 53)).unwrap();
        for id in 0..64u16 {
            s.send_to(&forged(id), a_addr).unwrap();
        }
    })
    .unwrap();
    // The pod receives them (its ingress is open), but the agent never saw them.
    pod_sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 512];
    pod_sock
        .recv(&mut buf)
        .expect("an answer from an allowed peer is still delivered");
    let m = http_get(&n.bed.node_path(), "/metrics");
    assert_eq!(
        metric(&m, "septa_dns_answers_total{result=\"added\"}"),
        0.0,
        "a forged answer was learned"
    );
    assert!(!connects(&a, evil), "a forged answer opened egress");
    // (b) A resolver the policy does not trust, which would answer with the evil address: the
    // pod cannot reach it at all.
    let rogue = in_netns(&out.path(), || UdpSocket::bind(("198.51.100.99", 53)))
        .unwrap()
        .unwrap();
    rogue
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let rogue = std::thread::spawn(move || {
        let mut b = [0u8; 512];
        let got = rogue.recv_from(&mut b);
        if let Ok((_, from)) = got {
            let _ = rogue.send_to(&forged(u16::from_be_bytes([b[0], b[1]])), from);
        }
        got.is_ok()
    });
    pod_sock
        .send_to(
            &testbed::dns::dns_query("api.example.test", 7),
            SocketAddr::new("198.51.100.99".parse().unwrap(), 53),
        )
        .unwrap();
    assert!(
        !rogue.join().unwrap(),
        "the pod's query reached a resolver its policy does not name"
    );
    assert!(
        !connects(&a, evil),
        "an untrusted resolver's answer opened egress"
    );
    // The real lookup still works, and opens only the real address.
    assert_eq!(
        query(&a.netns, "api.example.test", false).unwrap(),
        [Ipv4Addr::new(198, 51, 100, 10)]
    );
    assert!(connects(&a, to("198.51.100.10")));
    assert!(!connects(&a, evil));
    let m = http_get(&n.bed.node_path(), "/metrics");
    assert!(metric(&m, "septa_dns_queries_total{result=\"query\"}") >= 1.0);
    drop(pod_sock);
}

#[test]
fn exact_names_are_preresolved_for_apps_with_their_own_cache() {
    let (n, out, a, _b, _log) = setup("dns-pre", "1s");
    let _srv = Server::start(&out.path(), &[PORT], &[]).unwrap();
    // The pod never asks for cached.example.test (an app with the address cached or
    // configured); the agent resolves the rule's exact name itself.
    poll_until(Duration::from_secs(20), || {
        connects(&a, to("198.51.100.17")).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "a pre-resolved name is not reachable; agent log:\n{}\nmetrics:\n{}",
            n.agent_log(),
            http_get(&n.bed.node_path(), "/metrics")
                .lines()
                .filter(|l| l.contains("dns") || l.contains("fqdn"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    let m = http_get(&n.bed.node_path(), "/metrics");
    assert!(
        metric(&m, "septa_dns_preresolve_total{result=\"ok\"}") >= 1.0,
        "{m}"
    );
    // Pattern rules are not pre-resolved (there is no name to ask for).
    assert!(!connects(&a, to("198.51.100.20")));
}

/// A large answer over TCP (120 A records, ~2 KB): the stack hands it to TC as one GSO frame
/// bigger than the MTU, which the agent learns from and re-injects cut into MTU-sized
/// segments (a packet socket refuses it whole, and the pod would wait for the resolver to
/// retransmit). The bound on addresses per name keeps the newest 64.
#[test]
fn large_tcp_answers_are_learned_and_delivered_at_once() {
    let (n, out, a, _b, _log) = setup("dnsbig", "0s");
    // Every address of the name answers on the outside (a local route, not 120 addresses).
    for block in ["198.51.100.64/26", "198.51.100.128/25"] {
        ip(&["-n", &out.name, "route", "add", "local", block, "dev", "lo"]).unwrap();
    }
    let _srv = Server::start(&out.path(), &[PORT], &[]).unwrap();
    let got = query(&a.netns, "many.big.example.test", true).unwrap();
    assert_eq!(got.len(), 120, "the whole answer arrived");
    let newest = SocketAddr::new(IpAddr::V4(*got.last().unwrap()), PORT);
    let evicted = SocketAddr::new(IpAddr::V4(got[0]), PORT);
    assert!(connects(&a, newest), "an address of the answer, first try");
    assert!(
        !connects(&a, evicted),
        "the oldest addresses beyond --dns-max-ips-per-name are evicted"
    );
    let m = http_get(&n.bed.node_path(), "/metrics");
    let m = m.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert_eq!(metric(m, "septa_dns_reinject_errors_total"), 0.0, "{m}");
    // Learned whole from one frame; a segment the resolver retransmits on its own (a busy
    // machine delays the pod's ACK) is delivered unlearned and counted `malformed`, harmless.
    assert!(
        metric(m, "septa_dns_answers_total{result=\"added\"}") >= 1.0,
        "{m}"
    );
    assert_eq!(metric(m, "septa_fqdn_evicted_total"), 56.0, "{m}");
}

/// Restarting the agent while a pod resolves in a loop: no lookup fails (answers pass unheld
/// while it is away, and the ones it held are delivered as it stops), and names resolved
/// after the restart open egress again.
#[test]
fn an_agent_restart_is_not_a_dns_outage() {
    let (mut n, out, a, _b, _log) = setup("dns-restart", "0s");
    let _srv = Server::start(&out.path(), &[PORT], &[]).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let looper = {
        let (netns, stop) = (a.netns.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match query(&netns, "api.example.test", false) {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        })
    };
    // Some lookups before, during and after the restart (the counters start again with the
    // new agent).
    let learned = |n: &Node| {
        let m = http_get(&n.bed.node_path(), "/metrics");
        metric(&m, "septa_dns_answers_total{result=\"added\"}")
            + metric(&m, "septa_dns_answers_total{result=\"refreshed\"}")
    };
    poll_until(Duration::from_secs(10), || {
        (learned(&n) >= 3.0).then_some(())
    })
    .expect("no lookups learned before the restart");
    n.stop_agent().unwrap();
    n.start_agent().unwrap();
    poll_until(Duration::from_secs(10), || {
        (learned(&n) >= 3.0).then_some(())
    })
    .expect("no lookups learned after the restart");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = looper.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} lookups failed: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    assert!(connects(&a, to("198.51.100.10")));
}
