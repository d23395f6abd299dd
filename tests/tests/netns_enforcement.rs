//! Real TCP and UDP sockets between pods in network namespaces, with the programs attached by
//! TCX to the host-side veths: allowed traffic flows, denied traffic does not, and an
//! established connection is cut once the entry that allowed it is removed.

use std::net::{IpAddr, SocketAddr};

use dataplane_common::{event, parse::IPPROTO_TCP, parse::IPPROTO_UDP, reason, verdict};
use septa_tests::{scenario::Scenario, traffic::*};

fn addr(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

#[test]
fn allow_deny_and_revoke_with_real_sockets() {
    let mut s = Scenario::new("enf").expect("test bed");
    let server = Server::start(&s.server.netns_path(), &[8080, 8081], &[9000, 9001]).unwrap();
    let client_ns = s.client.netns_path();
    let tcp_rule = s.allow(IPPROTO_TCP, 8080, 42).unwrap();
    s.allow(IPPROTO_UDP, 9000, 43).unwrap();

    // Allowed TCP, IPv4 and IPv6: connect and echo.
    let mut conn =
        tcp_connect(&client_ns, addr(s.server.ipv4, 8080)).expect("allowed TCP connects");
    echo(&mut conn, b"hello").expect("allowed TCP echoes");
    let mut conn6 =
        tcp_connect(&client_ns, addr(s.server.ipv6, 8080)).expect("allowed TCP over IPv6");
    echo(&mut conn6, b"hello6").unwrap();
    let new = s.wait_event(PROBE_WAIT, |e| {
        e.kind == event::NEW && e.dport == 8080 && e.rule_id == 42
    });
    assert!(new.is_some(), "a NEW event names rule 42");

    // Denied TCP: no connection, and the kernel reports why.
    assert!(
        tcp_connect(&client_ns, addr(s.server.ipv4, 8081)).is_err(),
        "TCP 8081 is denied"
    );
    let deny = s.wait_event(PROBE_WAIT, |e| e.kind == event::DENY && e.dport == 8081);
    assert_eq!(
        deny.map(|e| (e.verdict, e.reason)),
        Some((verdict::DROPPED, reason::POLICY_DENIED))
    );

    // UDP: the allowed port receives, the denied one does not.
    let before = server.bytes();
    udp_send(&client_ns, addr(s.server.ipv4, 9000), b"0123456789").unwrap();
    assert!(
        poll_until(PROBE_WAIT, || (server.bytes() >= before + 10).then_some(())).is_some(),
        "UDP 9000 delivered"
    );
    let before = server.bytes();
    udp_send(&client_ns, addr(s.server.ipv4, 9001), b"0123456789").unwrap();
    assert!(
        s.wait_event(PROBE_WAIT, |e| e.kind == event::DENY && e.dport == 9001)
            .is_some(),
        "UDP 9001 denied"
    );
    assert_eq!(
        server.bytes(),
        before,
        "nothing reached the UDP 9001 socket"
    );

    // Revoke: the established connection stops at its next packet.
    echo(&mut conn, b"still-open").expect("established connection works before the revoke");
    s.revoke(&tcp_rule).unwrap();
    let before = server.bytes();
    assert!(
        echo(&mut conn, b"after-revoke").is_err(),
        "no echo after the revoke"
    );
    let revoked = s.wait_event(PROBE_WAIT, |e| {
        e.reason == reason::REVOKED && e.dport == 8080
    });
    assert!(
        revoked.is_some(),
        "the kernel reports the revoked connection"
    );
    assert_eq!(
        server.bytes(),
        before,
        "the server received nothing after the revoke"
    );
    assert!(
        tcp_connect(&client_ns, addr(s.server.ipv4, 8080)).is_err(),
        "new connections are denied too"
    );
}

#[test]
fn traffic_from_the_node_reaches_isolated_pods() {
    // Kubernetes requires node-to-pod traffic (kubelet probes) to pass whatever the policy.
    let s = Scenario::new("host").expect("test bed");
    let _server = Server::start(&s.server.netns_path(), &[8080], &[]).unwrap();
    let mut conn =
        tcp_connect(&s.bed.node_path(), addr(s.server.ipv4, 8080)).expect("node reaches the pod");
    echo(&mut conn, b"probe").unwrap();
}

#[test]
fn detach_removes_enforcement() {
    let mut s = Scenario::new("det").expect("test bed");
    let _server = Server::start(&s.server.netns_path(), &[8081], &[]).unwrap();
    let client_ns = s.client.netns_path();
    assert!(
        tcp_connect(&client_ns, addr(s.server.ipv4, 8081)).is_err(),
        "denied while attached"
    );
    let iface = s.server.host_if.clone();
    hostnet::netns::in_netns(&s.bed.node_path(), || s.dp.detach(&iface))
        .unwrap()
        .unwrap();
    assert!(!s.dp.attached_interfaces().contains(&iface));
    let mut c = tcp_connect(&client_ns, addr(s.server.ipv4, 8081)).expect("no program, no policy");
    echo(&mut c, b"open").unwrap();
}

/// An agent restart: a new program instance is swapped into the pinned links while traffic
/// flows. The established connection keeps working, the denied port stays denied, and the
/// conntrack state (pinned) carries over.
#[test]
fn restart_swaps_programs_without_a_gap() {
    let mut s = Scenario::new("rst").expect("test bed");
    let _server = Server::start(&s.server.netns_path(), &[8080, 8081], &[]).unwrap();
    let client_ns = s.client.netns_path();
    s.allow(IPPROTO_TCP, 8080, 42).unwrap();
    let mut conn = tcp_connect(&client_ns, addr(s.server.ipv4, 8080)).unwrap();
    echo(&mut conn, b"before").unwrap();

    let mut second = s.dp.reopen().expect("second agent loads on the same pins");
    let node = s.bed.node_path();
    for iface in [s.client.host_if.clone(), s.server.host_if.clone()] {
        hostnet::netns::in_netns(&node, || second.attach(&iface))
            .unwrap()
            .unwrap();
    }
    // The first agent goes away; its programs are no longer in any link.
    let old = std::mem::replace(&mut s.dp, second);
    drop(old);

    echo(&mut conn, b"after").expect("established connection survives the restart");
    assert!(
        tcp_connect(&client_ns, addr(s.server.ipv4, 8081)).is_err(),
        "denied port stays denied"
    );
    assert!(
        !s.dp.conntrack().unwrap().is_empty(),
        "conntrack carried over"
    );
}

/// A stopped agent leaves enforcement in place (pinned maps and links hold it).
#[test]
fn stopped_agent_leaves_enforcement() {
    let s = Scenario::new("stop").expect("test bed");
    let _server = Server::start(&s.server.netns_path(), &[8081], &[]).unwrap();
    let client_ns = s.client.netns_path();
    let Scenario {
        dp,
        events,
        bed,
        client: _,
        server,
        ..
    } = s;
    drop(events);
    let opts = dp.leave_pinned();
    assert!(
        tcp_connect(&client_ns, addr(server.ipv4, 8081)).is_err(),
        "still enforced with no agent running"
    );
    // Clean up: a new loader removes everything.
    let mut again = dataplane::Datapath::load(&opts).unwrap();
    again.unpin_all().unwrap();
    let mut c = tcp_connect(&client_ns, addr(server.ipv4, 8081)).expect("enforcement removed");
    echo(&mut c, b"x").unwrap();
    drop(bed);
}

/// XDP on a host interface sees the traffic and lets it through (the hook the threat-feed
/// blocklist will use).
#[test]
fn xdp_on_a_host_interface_counts_and_passes() {
    let mut s = Scenario::new("xdp").expect("test bed");
    let _server = Server::start(&s.server.netns_path(), &[8080], &[]).unwrap();
    s.allow(IPPROTO_TCP, 8080, 1).unwrap();
    let iface = s.client.host_if.clone();
    hostnet::netns::in_netns(&s.bed.node_path(), || s.dp.attach_xdp(&iface))
        .unwrap()
        .expect("XDP attaches");
    let mut c =
        tcp_connect(&s.client.netns_path(), addr(s.server.ipv4, 8080)).expect("traffic passes XDP");
    echo(&mut c, b"x").unwrap();
    let seen = s.dp.stats().unwrap()[dataplane_common::stats::XDP_SEEN as usize];
    assert!(seen >= 3, "XDP saw the client's packets ({seen})");
    assert!(
        s.dp.pin_dir().join("xdp").join(&iface).exists(),
        "link pinned"
    );
}
