//! The standalone demo (placeholder until the agent and CNI plugin land): two pods as network
//! namespaces on a bridge, septa's TC programs on their veths, a policy that lets the client
//! reach the server on TCP 8080 and UDP 9000 only, real connections, the verdicts the kernel
//! reports, then a live policy change that cuts an established connection.

use std::net::{IpAddr, SocketAddr};

use anyhow::Result;
use dataplane::events::describe;
use dataplane_common::{event, parse::IPPROTO_TCP, parse::IPPROTO_UDP};
use septa_tests::{scenario::Scenario, traffic::*};

const GREEN: &str = "\x1b[32m";
const RED: &str = "\x1b[31m";
const RESET: &str = "\x1b[0m";

fn mark(ok: bool) -> String {
    if ok {
        format!("{GREEN}allowed{RESET}")
    } else {
        format!("{RED}denied {RESET}")
    }
}

fn main() -> Result<()> {
    println!(
        "septa demo: pods as network namespaces, enforcement in TC (TCX) on the host-side veths\n"
    );
    let mut s = Scenario::new("demo")?;
    let server = Server::start(&s.server.netns_path(), &[8080, 8081], &[9000, 9001])?;
    let client_ns = s.client.netns_path();
    println!(
        "client {} / {}  ->  server {} / {}",
        s.client.ipv4, s.client.ipv6, s.server.ipv4, s.server.ipv6
    );
    println!(
        "policy: server ingress isolated; allow client -> TCP 8080 (rule 1), UDP 9000 (rule 2)\n"
    );
    let tcp_rule = s.allow(IPPROTO_TCP, 8080, 1)?;
    s.allow(IPPROTO_UDP, 9000, 2)?;

    let probe = |s: &mut Scenario, ip: IpAddr, proto: &str, port: u16| -> Result<bool> {
        let to = SocketAddr::new(ip, port);
        Ok(match proto {
            "TCP" => tcp_connect(&client_ns, to)
                .and_then(|mut c| echo(&mut c, b"hi"))
                .is_ok(),
            _ => {
                let before = server.bytes();
                udp_send(&client_ns, to, b"hi")?;
                let delivered =
                    poll_until(PROBE_WAIT, || (server.bytes() > before).then_some(())).is_some();
                if !delivered {
                    s.wait_event(PROBE_WAIT, |e| e.kind == event::DENY && e.dport == port);
                }
                delivered
            }
        })
    };
    println!("{:<28} {:<6} verdict", "destination", "proto");
    for ip in [IpAddr::V4(s.server.ipv4), IpAddr::V6(s.server.ipv6)] {
        for (proto, port) in [("TCP", 8080), ("TCP", 8081), ("UDP", 9000), ("UDP", 9001)] {
            let ok = probe(&mut s, ip, proto, port)?;
            println!(
                "{:<28} {proto:<6} {}",
                SocketAddr::new(ip, port).to_string(),
                mark(ok)
            );
        }
    }

    println!("\nflow events from the kernel:");
    s.wait_event(std::time::Duration::from_millis(200), |_| false);
    for e in s.seen.iter().take(12) {
        println!("  {}", describe(e));
    }

    println!("\nlive change: an established TCP 8080 connection, then rule 1 is removed");
    let mut conn = tcp_connect(&client_ns, SocketAddr::new(s.server.ipv4.into(), 8080))?;
    println!(
        "  before: echo {}",
        mark(echo(&mut conn, b"before").is_ok())
    );
    s.revoke(&tcp_rule)?;
    println!("  after:  echo {}", mark(echo(&mut conn, b"after").is_ok()));
    if let Some(e) = s.wait_event(PROBE_WAIT, |e| {
        e.reason == dataplane_common::reason::REVOKED
    }) {
        println!("  kernel: {}", describe(&e));
    }
    let stats = s.dp.stats()?;
    println!(
        "\ncounters: forwarded={} dropped={} conntrack-created={} revoked={} events-lost={}",
        stats[0], stats[1], stats[4], stats[6], stats[3]
    );
    println!("cleaning up (namespaces, attachments, pinned maps)");
    Ok(())
}
