//! The world outside a node, for tests and benchmarks: a namespace joined to the node by a veth
//! (`sx0` on the node, `ox0` outside, 198.18.0.0/24) holding service addresses, optionally with
//! a real dnsmasq serving test names; plus a DNS client that resolves from inside any
//! namespace.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    str::FromStr,
    time::Duration,
};

use anyhow::{Context, Result};
use hickory_proto::{
    op::{Message, MessageType, Query},
    rr::{Name, RData, RecordType},
};

use super::{
    bed::ip,
    node::Node,
    traffic::{netns_path, poll_until},
};

/// Where dnsmasq listens.
pub const RESOLVER: &str = "192.0.2.53";
/// A second address on the outside, for answers that do not come from dnsmasq.
pub const FAKE_RESOLVER: &str = "192.0.2.54";

/// The outside namespace (and its dnsmasq, if started); removed on drop.
pub struct Outside {
    pub name: String,
    dnsmasq: Option<Child>,
    hosts: PathBuf,
}

impl Drop for Outside {
    fn drop(&mut self) {
        if let Some(mut c) = self.dnsmasq.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}

impl Outside {
    /// With dnsmasq: [`Outside::new`], then dnsmasq on [`RESOLVER`] answering `records`
    /// (dnsmasq options such as `--host-record=name,addr[,ttl]`; a 2 s TTL unless given) and a
    /// hosts file for [`Outside::set_hosts`]. Waits until dnsmasq answers `probe`.
    pub fn start(node: &Node, services: &[&str], records: &[String], probe: &str) -> Result<Self> {
        let mut o = Outside::new(node, services, &[])?;
        std::fs::write(&o.hosts, "")?;
        let log = std::fs::File::create(node.dir.join("dnsmasq.log"))?;
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &o.name,
                "dnsmasq",
                "--no-daemon",
                "--conf-file=/dev/null",
            ])
            .args([
                "--no-resolv",
                "--no-hosts",
                "--user=root",
                "--bind-interfaces",
            ])
            .arg(format!("--listen-address={RESOLVER}"))
            .args(["--local-ttl=2", "--cache-size=0"])
            .arg(format!("--addn-hosts={}", o.hosts.display()))
            .args(records)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("dnsmasq (apt package dnsmasq-base) must be installed")?;
        o.dnsmasq = Some(child);
        let ready = poll_until(Duration::from_secs(10), || {
            query(&o.path(), probe, false)
                .ok()
                .filter(|a| !a.is_empty())
        });
        anyhow::ensure!(ready.is_some(), "dnsmasq did not answer {probe}");
        Ok(o)
    }

    /// The namespace next to `node`: `services` addresses on `ox0` (plus [`RESOLVER`] and
    /// [`FAKE_RESOLVER`]), the node routing 192.0.2.0/24, 198.51.100.0/24 and `routes` to it,
    /// the outside routing the pod network (10.88.0.0/24) back, forwarding on in the node.
    pub fn new(node: &Node, services: &[&str], routes: &[&str]) -> Result<Self> {
        let name = format!("{}-out", node.bed.node);
        let n = node.bed.node.as_str();
        ip(&["netns", "add", &name])?;
        // Built first so that a failure below still removes the namespace.
        let o = Outside {
            name: name.clone(),
            dnsmasq: None,
            hosts: node.dir.join("dns.hosts"),
        };
        let mut cmds: Vec<Vec<&str>> = vec![
            vec![
                "-n", n, "link", "add", "sx0", "type", "veth", "peer", "name", "ox0", "netns",
                &name,
            ],
            vec!["-n", n, "addr", "add", "198.18.0.1/24", "dev", "sx0"],
            vec!["-n", n, "link", "set", "sx0", "up"],
            vec!["-n", n, "route", "add", "192.0.2.0/24", "via", "198.18.0.2"],
            vec![
                "-n",
                n,
                "route",
                "add",
                "198.51.100.0/24",
                "via",
                "198.18.0.2",
            ],
            vec!["-n", &name, "link", "set", "lo", "up"],
            vec!["-n", &name, "addr", "add", "198.18.0.2/24", "dev", "ox0"],
            vec!["-n", &name, "addr", "add", "192.0.2.53/32", "dev", "ox0"],
            vec!["-n", &name, "addr", "add", "192.0.2.54/32", "dev", "ox0"],
            vec!["-n", &name, "link", "set", "ox0", "up"],
            vec![
                "-n",
                &name,
                "route",
                "add",
                "10.88.0.0/24",
                "via",
                "198.18.0.1",
            ],
            vec!["netns", "exec", n, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
        ];
        let addrs: Vec<String> = services.iter().map(|s| format!("{s}/32")).collect();
        for a in &addrs {
            cmds.push(vec!["-n", &name, "addr", "add", a, "dev", "ox0"]);
        }
        for r in routes {
            cmds.push(vec!["-n", n, "route", "add", r, "via", "198.18.0.2"]);
        }
        for c in cmds {
            ip(&c)?;
        }
        Ok(o)
    }

    /// The namespace path.
    pub fn path(&self) -> PathBuf {
        netns_path(&self.name)
    }

    /// Replace the hosts-file names (`addr name` lines); dnsmasq re-reads it on SIGHUP.
    pub fn set_hosts(&self, lines: &str) -> Result<()> {
        std::fs::write(&self.hosts, lines)?;
        let pid = self.dnsmasq.as_ref().context("dnsmasq")?.id();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGHUP) };
        Ok(())
    }
}

/// A query for the A records of `name`.
pub fn dns_query(name: &str, id: u16) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(
            Name::from_str(name).expect("a valid name"),
            RecordType::A,
        ));
    m.to_vec().expect("serializable")
}

/// Resolve `name` at [`RESOLVER`] from inside `netns` (UDP or TCP): the A records.
pub fn query(netns: &Path, name: &str, tcp: bool) -> Result<Vec<Ipv4Addr>> {
    let server: SocketAddr = format!("{RESOLVER}:53").parse().expect("address");
    let id = (std::process::id() as u16) ^ (name.len() as u16);
    let q = dns_query(name, id);
    let bytes = hostnet::netns::in_netns(netns, || -> std::io::Result<Vec<u8>> {
        if tcp {
            let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut msg = (q.len() as u16).to_be_bytes().to_vec();
            msg.extend_from_slice(&q);
            s.write_all(&msg)?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len)?;
            let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
            s.read_exact(&mut buf)?;
            Ok(buf)
        } else {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.send_to(&q, server)?;
            let mut buf = vec![0u8; 4096];
            let n = s.recv(&mut buf)?;
            buf.truncate(n);
            Ok(buf)
        }
    })??;
    let m = Message::from_vec(&bytes)?;
    anyhow::ensure!(m.id() == id, "answer to another query");
    Ok(m.answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect())
}
