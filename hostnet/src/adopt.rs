//! Finding the host side of a pod that is already running, from its address alone: what an
//! agent installed into a live cluster (or restarted without its registry) adopts.
//!
//! The pod's network namespace is found among the namespace files of a directory (where
//! container runtimes keep them, `/run/netns`): the one with an interface holding the address.
//! That interface's veth peer is the host interface; the same proof as for a CNI ADD
//! ([`crate::link::verify_veth_peer`]) then checks it from the caller's namespace, so a
//! namespace that merely claims the address, or whose interface is no veth to here, is refused.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

/// A pod's interface, proven to be the veth peer of a host interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInterface {
    /// The pod's network namespace file.
    pub netns: PathBuf,
    /// The interface inside the pod.
    pub ifname: String,
    /// The host-side veth (in the caller's namespace).
    pub host_ifindex: u32,
    /// Its name.
    pub host_ifname: String,
}

/// The interface holding `ip` in one of the network namespaces under `dirs`, with its host
/// peer; the error says what was looked at and why nothing matched.
pub fn find_pod_interface(ip: IpAddr, dirs: &[PathBuf]) -> Result<PodInterface, String> {
    let mut refused = Vec::new();
    let mut seen = 0;
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        files.sort();
        for ns in files {
            seen += 1;
            let Ok(Some((ifname, peer))) = holder_in(&ns, ip) else {
                continue;
            };
            match crate::link::verify_veth_peer(peer, &ns, &ifname) {
                Ok(()) => {
                    let host_ifname = crate::link::link(peer)
                        .map(|l| l.name)
                        .map_err(|e| format!("host interface {peer}: {e}"))?;
                    return Ok(PodInterface {
                        netns: ns,
                        ifname,
                        host_ifindex: peer,
                        host_ifname,
                    });
                }
                Err(e) => refused.push(format!("{}: {e}", ns.display())),
            }
        }
    }
    let dirs: Vec<_> = dirs.iter().map(|d| d.display().to_string()).collect();
    match refused.is_empty() {
        true => Err(format!(
            "no network namespace in {} ({seen} looked at) has an interface with {ip}",
            dirs.join(", ")
        )),
        false => Err(format!(
            "{ip} is held in a namespace whose interface is not a veth to here: {}",
            refused.join("; ")
        )),
    }
}

/// In the namespace at `ns`: the interface holding `ip`, and its veth peer's index (None when
/// no interface holds it, or the holder is no veth).
fn holder_in(ns: &Path, ip: IpAddr) -> Result<Option<(String, u32)>, String> {
    if !std::fs::metadata(ns).is_ok_and(|m| m.is_file()) {
        return Ok(None);
    }
    crate::netns::in_netns(ns, move || {
        let addrs = nix::ifaddrs::getifaddrs().map_err(|e| e.to_string())?;
        let name = addrs
            .filter(|a| {
                a.address.is_some_and(|s| {
                    s.as_sockaddr_in()
                        .map(|v4| IpAddr::V4(v4.ip()))
                        .or_else(|| s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
                        == Some(ip)
                })
            })
            .map(|a| a.interface_name)
            .next();
        let Some(name) = name else { return Ok(None) };
        let index = crate::netns::ifindex(&name).map_err(|e| e.to_string())?;
        let link = crate::link::link(index).map_err(|e| e.to_string())?;
        Ok(link
            .peer_ifindex
            .filter(|_| link.kind.as_deref() == Some("veth"))
            .map(|p| (name, p)))
    })
    .map_err(|e| e.to_string())?
}
