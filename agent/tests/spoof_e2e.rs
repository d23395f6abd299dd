//! Forged packets from a hostile pod (raw sockets, as `CAP_NET_RAW` allows), end to end: the
//! real agent, pods through the real CNI chain, frames built with etherparse and sent with a
//! packet socket, received (or not) by real sockets in the target pod.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    time::Duration,
};

use etherparse::PacketBuilder;
use hostnet::netns::in_netns;
use testbed::{
    cni::Attachment,
    node::{http_get, metric, Binaries, Node},
    traffic::{poll_until, tcp_connect, Server},
};

fn bins() -> Binaries {
    Binaries::for_agent(env!("CARGO_BIN_EXE_septa-agent"))
}

/// `server` (app=server) admits only `friend` (app=friend) on UDP 9000 and TCP 8080;
/// `mallory` (app=mallory) has no policy of its own.
const MANIFESTS: &str = "apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server, namespace: demo}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: friend}}}]
    ports: [{protocol: UDP, port: 9000}, {protocol: TCP, port: 8080}]
";

struct World {
    node: Node,
    server: Attachment,
    friend: Attachment,
    mallory: Attachment,
}

fn world(tag: &str) -> World {
    let mut node = Node::new(tag, bins()).unwrap();
    node.write_manifest("00.yaml", MANIFESTS).unwrap();
    node.start_agent().unwrap();
    let server = node.add_pod("demo", "server", "app=server").unwrap();
    let friend = node.add_pod("demo", "friend", "app=friend").unwrap();
    let mallory = node.add_pod("demo", "mallory", "app=mallory").unwrap();
    World {
        node,
        server,
        friend,
        mallory,
    }
}

fn netns_name(a: &Attachment) -> String {
    a.netns.file_name().unwrap().to_string_lossy().into_owned()
}

/// The MAC address of a pod's `eth0`.
fn mac_of(a: &Attachment) -> [u8; 6] {
    let out = std::process::Command::new("ip")
        .args(["-n", &netns_name(a), "-j", "link", "show", "eth0"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = v[0]["address"].as_str().unwrap();
    let mut mac = [0u8; 6];
    for (i, b) in s.split(':').enumerate() {
        mac[i] = u8::from_str_radix(b, 16).unwrap();
    }
    mac
}

/// Send a whole Ethernet frame out of `eth0` in `netns`, as a pod with raw sockets can.
fn send_frame(netns: &Path, frame: &[u8]) {
    in_netns(netns, || {
        // SAFETY: plain socket(2); checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new("eth0").unwrap();
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(ifindex > 0);
        // SAFETY: zeroed sockaddr_ll is valid; filled below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: valid buffer and address.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            n,
            frame.len() as isize,
            "{}",
            std::io::Error::last_os_error()
        );
    })
    .unwrap();
}

fn spoofed_drops(n: &Node) -> f64 {
    metric(
        &http_get(&n.bed.node_path(), "/metrics"),
        "septa_datapath_drops_total{reason=\"spoofed_source\"}",
    )
}

fn v4(a: IpAddr) -> [u8; 4] {
    match a {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(_) => panic!("IPv4 pods"),
    }
}

/// In an IPv4-only cluster, mallory sends the server IPv6 datagrams that claim to come from
/// the friend: from `::ffff:<friend's IPv4>` (the data path's own key for the friend), and
/// from a global IPv6 address mallory does not have. The server's dual-stack socket, which
/// the friend may reach, receives none of them; the same datagram over IPv4 from mallory's
/// own address is refused by policy, and the friend's real one arrives.
#[test]
fn ipv6_impersonation_of_an_allowed_pod_is_dropped() {
    let w = world("spoof6");
    let server_sock = in_netns(&w.server.netns, || UdpSocket::bind(("::", 9000)))
        .unwrap()
        .unwrap();
    server_sock
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let (server_mac, mallory_mac) = (mac_of(&w.server), mac_of(&w.mallory));
    let friend4 = v4(Node::pod_ip(&w.friend));
    let mut mapped = [0u8; 16];
    mapped[10] = 0xff;
    mapped[11] = 0xff;
    mapped[12..].copy_from_slice(&friend4);
    let mut global = [0u8; 16];
    global[0] = 0xfd;
    global[15] = 0x99;
    // The server's link-local address from its MAC (EUI-64): what the kernel assigned.
    let mut server_ll = [0u8; 16];
    server_ll[0] = 0xfe;
    server_ll[1] = 0x80;
    server_ll[8] = server_mac[0] ^ 0x02;
    server_ll[9] = server_mac[1];
    server_ll[10] = server_mac[2];
    server_ll[11] = 0xff;
    server_ll[12] = 0xfe;
    server_ll[13] = server_mac[3];
    server_ll[14] = server_mac[4];
    server_ll[15] = server_mac[5];
    let before = spoofed_drops(&w.node);
    for (i, src) in [mapped, global].into_iter().enumerate() {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(mallory_mac, server_mac)
            .ipv6(src, server_ll, 64)
            .udp(40000 + i as u16, 9000)
            .write(&mut frame, b"i am your friend")
            .unwrap();
        send_frame(&w.mallory.netns, &frame);
    }
    poll_until(Duration::from_secs(10), || {
        (spoofed_drops(&w.node) >= before + 2.0).then_some(())
    })
    .expect("the forged datagrams were not dropped as spoofed");
    // The friend's real datagram is the first (and only) thing the server receives.
    let server4 = Node::pod_ip(&w.server);
    in_netns(&w.friend.netns, || {
        let s = UdpSocket::bind(("0.0.0.0", 0)).unwrap();
        s.send_to(b"really me", SocketAddr::new(server4, 9000))
            .unwrap();
    })
    .unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = server_sock.recv_from(&mut buf).unwrap();
    assert_eq!(
        &buf[..n],
        b"really me",
        "a forged datagram got through first"
    );
    assert_eq!(
        from.ip().to_canonical(),
        IpAddr::V4(Ipv4Addr::from(friend4))
    );
}

/// Path MTU discovery through ingress isolation: an ICMP "fragmentation needed" about the
/// server's own connection reaches it although the sender (any router; here mallory) may not
/// otherwise send it anything; one about a connection that does not exist does not.
#[test]
fn icmp_errors_about_tracked_connections_reach_isolated_pods() {
    let w = world("pmtu");
    // The server connects out to the friend (its egress is open): a tracked connection.
    let _friend_srv = Server::start(&w.friend.netns, &[7070], &[]).unwrap();
    let friend = Node::pod_ip(&w.friend);
    let conn = tcp_connect(&w.server.netns, SocketAddr::new(friend, 7070)).unwrap();
    let local = conn.local_addr().unwrap();
    let server = Node::pod_ip(&w.server);
    // An ICMP socket in the server sees every ICMP message delivered to it.
    let icmp = in_netns(&w.server.netns, || {
        // SAFETY: plain socket(2); checked.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor we own.
        unsafe { OwnedFd::from_raw_fd(fd) }
    })
    .unwrap();
    let tv = libc::timeval {
        tv_sec: 3,
        tv_usec: 0,
    };
    // SAFETY: valid option pointer and length.
    unsafe {
        libc::setsockopt(
            icmp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    let quote = |sport: u16, dport: u16| {
        let mut q = Vec::new();
        PacketBuilder::ipv4(v4(server), v4(friend), 64)
            .tcp(sport, dport, 1, 65535)
            .write(&mut q, &[])
            .unwrap();
        q.truncate(28);
        q
    };
    let error = |quoted: Vec<u8>, mtu_code: u8| {
        let mut frame = Vec::new();
        let mut body = vec![3u8, mtu_code, 0, 0, 0, 0, 0x04, 0xb0];
        body.extend_from_slice(&quoted);
        let sum = !ones_sum(&body);
        body[2..4].copy_from_slice(&sum.to_be_bytes());
        PacketBuilder::ethernet2(mac_of(&w.mallory), mac_of(&w.server))
            .ipv4(v4(Node::pod_ip(&w.mallory)), v4(server), 64)
            .write(&mut frame, etherparse::IpNumber::ICMP, &body)
            .unwrap();
        frame
    };
    // First one about nothing tracked (a port the server never used), then the real one: the
    // socket must see exactly the second.
    send_frame(&w.mallory.netns, &error(quote(1, 7070), 4));
    send_frame(&w.mallory.netns, &error(quote(local.port(), 7070), 4));
    let mut buf = [0u8; 256];
    // SAFETY: valid buffer.
    let n = unsafe {
        libc::recv(
            icmp.as_raw_fd(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            0,
        )
    };
    assert!(
        n > 0,
        "the fragmentation-needed error never reached the server: {}",
        std::io::Error::last_os_error()
    );
    // IPv4 header (20) + ICMP header (8) + quoted IPv4 header (20): the quoted source port.
    let quoted_sport = u16::from_be_bytes([buf[48], buf[49]]);
    assert_eq!(
        quoted_sport,
        local.port(),
        "the unrelated error got through first"
    );
    // The kernel's counters reach /metrics on the agent's next scrape.
    poll_until(Duration::from_secs(10), || {
        let m = http_get(&w.node.bed.node_path(), "/metrics");
        (metric(&m, "septa_icmp_related_total") >= 1.0).then_some(())
    })
    .expect("septa_icmp_related_total did not move");
    drop(conn);
}

fn ones_sum(b: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in b.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}
