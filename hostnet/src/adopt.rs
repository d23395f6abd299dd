//! Finding the host side of a pod that is already running, from its address alone: what an
//! agent installed into a live cluster (or restarted without its registry) adopts.
//!
//! Phases: [`scan`] enters every network namespace file of the given directories (where
//! container runtimes keep them, `/run/netns`) once and notes which interface holds which
//! address and its veth peer; [`Holders::find`] then takes a pod's address and proves the
//! holder's veth peer is a host interface here, with the same proof as for a CNI ADD
//! ([`crate::link::verify_veth_peer`]).
//!
//! An address held in more than one namespace whose veth leads here is refused, never
//! guessed: a pod with `NET_ADMIN` can put another pod's address on its own interface, and a
//! namespace file leaked by a crashed runtime can still hold an address given to a new pod
//! since. (Holders whose veth leads elsewhere, such as other nodes' pods in a shared directory,
//! are not candidates.)

use std::{
    collections::BTreeMap,
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

/// Who holds which address: (namespace file, interface, its veth peer's index) per address.
#[derive(Debug, Default)]
pub struct Holders {
    by_ip: BTreeMap<IpAddr, Vec<(PathBuf, String, u32)>>,
    looked_at: usize,
    dirs: Vec<PathBuf>,
}

/// Enter each network namespace file under `dirs` once and note its veth interfaces'
/// addresses. Files that are not namespaces are skipped.
pub fn scan(dirs: &[PathBuf]) -> Holders {
    let mut h = Holders {
        dirs: dirs.to_vec(),
        ..Default::default()
    };
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        files.sort();
        for ns in files {
            h.looked_at += 1;
            for (ip, ifname, peer) in veth_addresses(&ns).unwrap_or_default() {
                h.by_ip
                    .entry(ip)
                    .or_default()
                    .push((ns.clone(), ifname, peer));
            }
        }
    }
    h
}

impl Holders {
    /// The interface holding `ip`, proven to be the veth peer of a host interface here; the
    /// error says what was looked at and why nothing (or more than one) matched.
    pub fn find(&self, ip: IpAddr) -> Result<PodInterface, String> {
        let dirs: Vec<_> = self.dirs.iter().map(|d| d.display().to_string()).collect();
        let holders = self.by_ip.get(&ip).map(Vec::as_slice).unwrap_or_default();
        if holders.is_empty() {
            return Err(format!(
                "no network namespace in {} ({} looked at) has a veth with {ip}",
                dirs.join(", "),
                self.looked_at
            ));
        }
        // Only a holder whose veth peer is an interface here can be a pod of this node (the
        // directory may hold other nodes' or other hosts' namespaces, as in a test bed).
        let mut refused = Vec::new();
        let mut proven = Vec::new();
        for (ns, ifname, peer) in holders {
            match crate::link::verify_veth_peer(*peer, ns, ifname) {
                Ok(()) => proven.push((ns, ifname, *peer)),
                Err(e) => refused.push(format!("{}: {e}", ns.display())),
            }
        }
        let (ns, ifname, peer) = match proven.as_slice() {
            [one] => *one,
            [] => {
                return Err(format!(
                    "{ip} is held only in namespaces whose interface is not a veth to here: {}",
                    refused.join("; ")
                ))
            }
            many => {
                let names: Vec<_> = many
                    .iter()
                    .map(|(n, _, _)| n.display().to_string())
                    .collect();
                return Err(format!(
                    "{ip} is held in {} network namespaces with a veth to here ({}): which is the pod's cannot be proven, so none is adopted",
                    many.len(),
                    names.join(", ")
                ));
            }
        };
        let host_ifname = crate::link::link(peer)
            .map(|l| l.name)
            .map_err(|e| format!("host interface {peer}: {e}"))?;
        Ok(PodInterface {
            netns: ns.clone(),
            ifname: ifname.clone(),
            host_ifindex: peer,
            host_ifname,
        })
    }
}

/// In the namespace at `ns`: each address of a veth interface, with the interface's name and
/// its peer's index.
fn veth_addresses(ns: &Path) -> Result<Vec<(IpAddr, String, u32)>, String> {
    if !std::fs::metadata(ns).is_ok_and(|m| m.is_file()) {
        return Ok(Vec::new());
    }
    crate::netns::in_netns(ns, move || {
        let links = crate::link::links().map_err(|e| e.to_string())?;
        let addrs = nix::ifaddrs::getifaddrs().map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for a in addrs {
            let Some(ip) = a.address.and_then(|s| {
                s.as_sockaddr_in()
                    .map(|v4| IpAddr::V4(v4.ip()))
                    .or_else(|| s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
            }) else {
                continue;
            };
            let link = links.values().find(|l| l.name == a.interface_name);
            if let Some(peer) = link
                .filter(|l| l.kind.as_deref() == Some("veth"))
                .and_then(|l| l.peer_ifindex)
            {
                out.push((ip, a.interface_name.clone(), peer));
            }
        }
        Ok(out)
    })
    .map_err(|e| e.to_string())?
}
