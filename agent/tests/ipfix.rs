//! IPFIX to a real collector: nfcapd (Debian nfdump) on loopback receives the export, and
//! `nfdump` reads back the flows with their addresses, ports, protocols and counts.

use std::{net::UdpSocket, time::Duration};

use agent::flows::{ipfix::IpfixExporter, Counts, FlowPeer, FlowRecord};
use testbed::nfcapd::Collector;

fn record(src: &str, dst: &str, sport: u16, dport: u16, proto: &str, kind: &str) -> FlowRecord {
    FlowRecord {
        version: 1,
        time: "2026-11-23T01:02:03.456Z".into(),
        start: "2026-11-23T01:02:01.000Z".into(),
        kind: kind.into(),
        verdict: if kind == "deny" {
            "dropped"
        } else {
            "forwarded"
        }
        .into(),
        drop_reason: (kind == "deny").then(|| "policy-denied".into()),
        direction: "egress".into(),
        ip_version: if src.contains(':') { 6 } else { 4 },
        protocol: proto.into(),
        source: FlowPeer {
            ip: src.into(),
            port: sport,
            namespace: Some("shop".into()),
            workload: Some("Deployment/web".into()),
            ..Default::default()
        },
        destination: FlowPeer {
            ip: dst.into(),
            port: dport,
            entity: Some("world".into()),
            ..Default::default()
        },
        decided_by: "default-allow".into(),
        feed: None,
        policy: None,
        rule_id: 7,
        packets: Counts {
            forward: 1,
            reverse: 1,
        },
        bytes: Counts {
            forward: 100,
            reverse: 60,
        },
        tcp_flags: vec!["SYN".into(), "ACK".into()],
        dns_names: vec![],
        node: "n".into(),
        connections: None,
    }
}

fn with_counts(mut r: FlowRecord, bytes: u64, packets: u64) -> FlowRecord {
    r.bytes.forward = bytes;
    r.packets.forward = packets;
    r
}

#[test]
fn nfcapd_reads_back_the_exported_flows() {
    let dir = std::env::temp_dir().join(format!("septa-ipfix-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let collector = Collector::start(&dir, port, None).unwrap();

    let mut ex = IpfixExporter::new(
        format!("127.0.0.1:{port}").parse().unwrap(),
        42,
        Duration::from_secs(60),
    )
    .unwrap();
    let mut batch = vec![
        with_counts(
            record("10.1.0.5", "203.0.113.7", 40000, 443, "TCP", "new"),
            1234,
            5,
        ),
        with_counts(
            record("10.1.0.5", "198.51.100.9", 5353, 53, "UDP", "deny"),
            80,
            1,
        ),
        with_counts(
            record("fd00::5", "2001:db8::9", 40001, 8443, "TCP", "end"),
            98765,
            77,
        ),
    ];
    // Enough records to span several messages.
    for i in 0..60 {
        batch.push(with_counts(
            record("10.1.0.6", "203.0.113.8", 30000 + i, 80, "TCP", "new"),
            100 + i as u64,
            1,
        ));
    }
    ex.export(&batch).unwrap();
    assert!(
        ex.messages >= 2,
        "split under the MTU: {} messages",
        ex.messages
    );
    let rows = collector
        .stop_and_read("%sa|%da|%sp|%dp|%pr|%ibyt|%ipkt")
        .unwrap();
    let text = format!("{rows:?}");
    let find = |sa: &str, dp: &str| {
        rows.iter()
            .find(|r| r[0] == sa && r[3] == dp)
            .unwrap_or_else(|| panic!("no {sa} -> :{dp} in\n{text}"))
    };
    let tcp = find("10.1.0.5", "443");
    assert_eq!(
        (
            tcp[1].as_str(),
            tcp[2].as_str(),
            tcp[4].as_str(),
            tcp[5].as_str(),
            tcp[6].as_str()
        ),
        ("203.0.113.7", "40000", "TCP", "1234", "5")
    );
    let udp = find("10.1.0.5", "53");
    assert_eq!((udp[4].as_str(), udp[5].as_str()), ("UDP", "80"));
    let v6 = find("fd00::5", "8443");
    assert_eq!(
        (v6[1].as_str(), v6[5].as_str(), v6[6].as_str()),
        ("2001:db8::9", "98765", "77")
    );
    assert_eq!(rows.len(), 63, "every record arrived:\n{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}
