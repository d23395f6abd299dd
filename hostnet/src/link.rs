//! Interfaces as the kernel reports them over rtnetlink: an interface's kind and veth peer
//! (peer index and the namespace id it lives in), the id a namespace has from here, and the
//! interfaces that exist now.
//!
//! This is how the agent proves that a host interface really is the veth peer of a pod's
//! interface instead of trusting what a CNI request claims: a name can be anyone's, an index
//! can be reused, but "the peer of this host interface is interface N in the namespace the
//! request names, and N is called `CNI_IFNAME` there" cannot be forged by the request.
//!
//! Fail mode: every query answers in the caller's network namespace (threads may differ, see
//! [`crate::netns`]); a failed query is an error, never "no peer".

use std::{
    collections::BTreeMap,
    os::fd::{AsFd, OwnedFd},
    path::Path,
};

use rustix::net::{
    netlink, recv, sendto, socket_with, AddressFamily, RecvFlags, SendFlags, SocketFlags,
    SocketType,
};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWNSID: u16 = 88;
const RTM_GETNSID: u16 = 90;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINK: u16 = 5;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_LINK_NETNSID: u16 = 37;
const NETNSA_NSID: u16 = 1;
const NETNSA_FD: u16 = 3;
const HDR: usize = 16;

/// One interface.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    /// `IFLA_INFO_KIND` (`veth`, `bridge`, ...); None for a physical device.
    pub kind: Option<String>,
    /// `IFLA_LINK`: for a veth, its peer's index (in the peer's namespace).
    pub peer_ifindex: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the id, from here, of the namespace the peer lives in; absent
    /// when the peer is in this namespace.
    pub peer_netnsid: Option<i32>,
}

fn io_err(what: &str, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("rtnetlink {what}: {e}"))
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

fn push_attr(msg: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    msg.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    msg.extend_from_slice(&ty.to_ne_bytes());
    msg.extend_from_slice(payload);
    msg.resize(align(msg.len()), 0);
}

/// The attributes of `buf` (type, payload).
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[align(len).min(buf.len())..];
        Some((ty, payload))
    })
}

fn u32_of(p: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(p.get(..4)?.try_into().ok()?))
}

/// Send one request (header filled in here) and collect the payloads of the answers of type
/// `want`, until the kernel says done (dumps) or after the first answer (single requests).
fn request(
    ty: u16,
    flags: u16,
    body: &[u8],
    want: u16,
    what: &str,
) -> std::io::Result<Vec<Vec<u8>>> {
    let fd: OwnedFd = socket_with(
        AddressFamily::NETLINK,
        SocketType::RAW,
        SocketFlags::CLOEXEC,
        None, // NETLINK_ROUTE is protocol 0
    )
    .map_err(|e| io_err(what, e))?;
    // The kernel answers at once; a deadline keeps a surprise from stalling the caller.
    rustix::net::sockopt::set_socket_timeout(
        &fd,
        rustix::net::sockopt::Timeout::Recv,
        Some(std::time::Duration::from_secs(5)),
    )
    .map_err(|e| io_err(what, e))?;
    let mut msg = Vec::with_capacity(HDR + body.len());
    msg.extend_from_slice(&((HDR + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&ty.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel's
    msg.extend_from_slice(body);
    sendto(
        fd.as_fd(),
        &msg,
        SendFlags::empty(),
        &netlink::SocketAddrNetlink::new(0, 0),
    )
    .map_err(|e| io_err(what, e))?;
    let dump = flags & NLM_F_DUMP != 0;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let (n, _) =
            recv(fd.as_fd(), &mut buf[..], RecvFlags::empty()).map_err(|e| io_err(what, e))?;
        let mut rest = &buf[..n];
        while rest.len() >= HDR {
            let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
            let mty = u16::from_ne_bytes([rest[4], rest[5]]);
            if len < HDR || len > rest.len() {
                return Err(io_err(what, "truncated answer"));
            }
            let payload = &rest[HDR..len];
            match mty {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let code = payload
                        .get(..4)
                        .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                        .unwrap_or(-libc::EIO);
                    if code == 0 {
                        return Ok(out);
                    }
                    return Err(std::io::Error::from_raw_os_error(-code));
                }
                t if t == want => {
                    out.push(payload.to_vec());
                    if !dump {
                        return Ok(out);
                    }
                }
                _ => {}
            }
            rest = &rest[align(len).min(rest.len())..];
        }
    }
}

fn ifinfomsg(ifindex: u32) -> Vec<u8> {
    let mut b = vec![0u8; 16];
    b[0] = libc::AF_UNSPEC as u8;
    b[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    b
}

fn parse_link(payload: &[u8]) -> Option<Link> {
    let ifindex = i32::from_ne_bytes(payload.get(4..8)?.try_into().ok()?) as u32;
    let mut l = Link {
        ifindex,
        ..Link::default()
    };
    for (ty, p) in attrs(payload.get(16..)?) {
        match ty {
            IFLA_IFNAME => {
                let end = p.iter().position(|&b| b == 0).unwrap_or(p.len());
                l.name = String::from_utf8_lossy(&p[..end]).into_owned();
            }
            IFLA_LINK => l.peer_ifindex = u32_of(p),
            IFLA_LINK_NETNSID => l.peer_netnsid = u32_of(p).map(|v| v as i32),
            IFLA_LINKINFO => {
                for (ity, ip) in attrs(p) {
                    if ity == IFLA_INFO_KIND {
                        let end = ip.iter().position(|&b| b == 0).unwrap_or(ip.len());
                        l.kind = Some(String::from_utf8_lossy(&ip[..end]).into_owned());
                    }
                }
            }
            _ => {}
        }
    }
    Some(l)
}

/// The interface with index `ifindex` in the caller's namespace (`NotFound`-like error,
/// ENODEV, when there is none).
pub fn link(ifindex: u32) -> std::io::Result<Link> {
    let answers = request(RTM_GETLINK, 0, &ifinfomsg(ifindex), RTM_NEWLINK, "get link")?;
    answers
        .first()
        .and_then(|p| parse_link(p))
        .ok_or_else(|| io_err("get link", format!("no answer for interface {ifindex}")))
}

/// Every interface in the caller's namespace, by index.
pub fn links() -> std::io::Result<BTreeMap<u32, Link>> {
    Ok(request(
        RTM_GETLINK,
        NLM_F_DUMP,
        &ifinfomsg(0),
        RTM_NEWLINK,
        "dump links",
    )?
    .iter()
    .filter_map(|p| parse_link(p))
    .map(|l| (l.ifindex, l))
    .collect())
}

/// The id that the namespace open as `ns` has from the caller's namespace (None when it has
/// none: nothing here refers to it).
pub fn netnsid(ns: &impl AsFd) -> std::io::Result<Option<i32>> {
    use std::os::fd::AsRawFd;
    let mut body = vec![libc::AF_UNSPEC as u8, 0, 0, 0];
    push_attr(
        &mut body,
        NETNSA_FD,
        &(ns.as_fd().as_raw_fd() as u32).to_ne_bytes(),
    );
    let answers = request(RTM_GETNSID, 0, &body, RTM_NEWNSID, "get netns id")?;
    Ok(answers
        .first()
        .and_then(|p| attrs(p.get(4..)?).find(|(t, _)| *t == NETNSA_NSID))
        .and_then(|(_, p)| u32_of(p))
        .map(|v| v as i32)
        .filter(|&v| v >= 0))
}

/// Prove that `host_ifindex` (in the caller's namespace) is a veth whose peer is the interface
/// `ifname` inside the network namespace at `netns`. The error says which part does not hold.
pub fn verify_veth_peer(host_ifindex: u32, netns: &Path, ifname: &str) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    // Only a namespace file: opening a FIFO or device here would block or misbehave.
    let meta = std::fs::metadata(netns).map_err(|e| format!("netns {}: {e}", netns.display()))?;
    if !meta.is_file() {
        return Err(format!(
            "netns {} is not a network namespace file",
            netns.display()
        ));
    }
    let ns = std::fs::File::open(netns).map_err(|e| format!("netns {}: {e}", netns.display()))?;
    let own = std::fs::metadata("/proc/thread-self/ns/net")
        .map_err(|e| format!("own network namespace: {e}"))?;
    if (meta.dev(), meta.ino()) == (own.dev(), own.ino()) {
        return Err(format!(
            "netns {} is the agent's own namespace, not a pod's",
            netns.display()
        ));
    }
    let host = link(host_ifindex).map_err(|e| format!("host interface {host_ifindex}: {e}"))?;
    if host.kind.as_deref() != Some("veth") {
        return Err(format!(
            "host interface {} is a {} device, not a veth",
            host.name,
            host.kind.as_deref().unwrap_or("physical")
        ));
    }
    let (Some(peer), Some(peer_ns)) = (host.peer_ifindex, host.peer_netnsid) else {
        return Err(format!(
            "host interface {}'s peer is not in another namespace",
            host.name
        ));
    };
    let pod_ns = netnsid(&ns).map_err(|e| format!("netns {}: {e}", netns.display()))?;
    if pod_ns != Some(peer_ns) {
        return Err(format!(
            "host interface {}'s peer is not in netns {}",
            host.name,
            netns.display()
        ));
    }
    let name = ifname.to_owned();
    let inside = crate::netns::in_netns(netns, move || crate::netns::ifindex(&name))
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("in netns {}: {e}", netns.display()))?;
    if inside != peer {
        return Err(format!(
            "host interface {}'s peer is interface {peer} in netns {}, not {ifname} ({inside})",
            host.name,
            netns.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An RTM_NEWLINK payload: ifinfomsg, then attributes.
    fn newlink(ifindex: u32, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut b = ifinfomsg(ifindex);
        for (ty, p) in attrs {
            push_attr(&mut b, *ty, p);
        }
        b
    }

    #[test]
    fn a_veth_with_its_peer_in_another_namespace() {
        let mut kind = Vec::new();
        push_attr(&mut kind, IFLA_INFO_KIND, b"veth\0");
        let p = newlink(
            7,
            &[
                (IFLA_IFNAME, b"vethabc\0".to_vec()),
                (IFLA_LINK, 2u32.to_ne_bytes().to_vec()),
                (IFLA_LINKINFO | 0x8000, kind), // NLA_F_NESTED is ignored
                (IFLA_LINK_NETNSID, 3i32.to_ne_bytes().to_vec()),
            ],
        );
        assert_eq!(
            parse_link(&p),
            Some(Link {
                ifindex: 7,
                name: "vethabc".into(),
                kind: Some("veth".into()),
                peer_ifindex: Some(2),
                peer_netnsid: Some(3),
            })
        );
    }

    #[test]
    fn truncated_or_odd_attributes_end_the_walk_instead_of_panicking() {
        assert_eq!(parse_link(&[0u8; 8]), None, "shorter than ifinfomsg");
        let mut p = newlink(4, &[(IFLA_IFNAME, b"eth0\0".to_vec())]);
        p.extend_from_slice(&[200, 0, 3, 0, b'x']); // claims 200 bytes, has 5
        let l = parse_link(&p).unwrap();
        assert_eq!((l.ifindex, l.name.as_str(), l.kind), (4, "eth0", None));
        assert_eq!(attrs(&[3, 0, 1, 0]).count(), 0, "length below the header");
        // Attributes are 4-byte aligned: a 5-byte payload is followed by padding.
        let mut b = Vec::new();
        push_attr(&mut b, 1, b"abcde");
        push_attr(&mut b, 2, b"f");
        let got: Vec<(u16, &[u8])> = attrs(&b).collect();
        assert_eq!(got, vec![(1, &b"abcde"[..]), (2, &b"f"[..])]);
    }
}
