//! Loading the eBPF object, attaching the TC programs, and typed access to the maps.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf},
    programs::{
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        SchedClassifier, TcAttachType,
    },
    Ebpf, EbpfLoader,
};
use dataplane_common::{
    maps, programs, sizes, stats, Config, CtEntry, CtKey, EndpointInfo, IpcacheEntry, PolicyKey,
    PolicyValue,
};
use ipnetwork::IpNetwork;

use crate::{contract, error::map_err, events::EventReader, Error, EBPF_OBJECT};

/// Where the default pin directory lives (under the bpffs mount).
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/septa";

/// How to load the data path.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Directory under bpffs where the maps are pinned (created if missing). Maps already
    /// pinned there are reused, so a restarted agent keeps conntrack and policy state.
    pub pin_dir: PathBuf,
    /// Conntrack entries (LRU).
    pub conntrack_entries: u32,
    /// Policy map entries.
    pub policy_entries: u32,
    /// ipcache (LPM trie) entries.
    pub ipcache_entries: u32,
    /// Events ring buffer size in bytes (power of two, at least a page).
    pub events_bytes: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
            conntrack_entries: sizes::CONNTRACK,
            policy_entries: sizes::POLICY,
            ipcache_entries: sizes::IPCACHE,
            events_bytes: sizes::EVENTS_BYTES,
        }
    }
}

/// The loaded data path: programs, maps and attachments.
///
/// TCX links are pinned under `<pin dir>/tcx/<ifindex>_<hook>`, keyed by interface index, not
/// name: a name is reused as soon as a pod's veth is gone, an index is not (the kernel hands
/// them out in increasing order). Pins outlive the process: a restarted agent swaps its new
/// program into the existing link atomically, and a stopped one leaves the last programs
/// enforcing. A pinned link is trusted only after the kernel confirms it: its program runs on
/// that interface now, and it reads the maps pinned now (see [`Datapath::tcx_verify`]).
pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    /// Interfaces attached or adopted by this process: index and name at the time.
    attached: BTreeMap<u32, String>,
    /// Per loaded program: the pinned maps it uses (ids). A link whose program lacks one of
    /// them reads maps that are no longer the pinned ones.
    pinned_maps: BTreeMap<&'static str, BTreeSet<u32>>,
}

/// The TCX hooks on a pod's host interface: program, attach type, pin name suffix.
const TCX_HOOKS: [(&str, TcAttachType, &str); 2] = [
    (programs::TC_FROM_POD, TcAttachType::Ingress, "ingress"),
    (programs::TC_TO_POD, TcAttachType::Egress, "egress"),
];

/// A pinned link, as the kernel sees it.
#[derive(Debug, PartialEq, Eq)]
enum LinkState {
    /// Runs this process's program, or the same build reading the same pinned maps.
    Current,
    /// Live, but runs another program or reads other maps: swap ours in.
    Outdated,
    /// Not attached where its pin says (its interface is gone, or it is detached).
    Dead,
}

impl Datapath {
    /// Load (or re-open, when pinned maps exist) the data path.
    ///
    /// A load that fails removes the pins it created (maps are created and pinned one by one,
    /// so a map the kernel refuses would otherwise leave the ones before it pinned, with
    /// sizes the next load might not ask for); pins that were there before stay.
    pub fn load(opts: &LoadOptions) -> Result<Self, Error> {
        if EBPF_OBJECT.is_empty() {
            return Err(Error::NoObject);
        }
        let existed = opts.pin_dir.is_dir();
        let before: BTreeSet<std::ffi::OsString> = std::fs::read_dir(&opts.pin_dir)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        let loaded = Self::load_pinned(opts);
        if loaded.is_err() {
            if let Ok(d) = std::fs::read_dir(&opts.pin_dir) {
                for e in d.flatten() {
                    if !before.contains(&e.file_name()) && !e.path().is_dir() {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
            if !existed {
                let _ = std::fs::remove_dir(&opts.pin_dir);
            }
        }
        loaded
    }

    fn load_pinned(opts: &LoadOptions) -> Result<Self, Error> {
        std::fs::create_dir_all(&opts.pin_dir).map_err(|source| Error::PinDir {
            path: opts.pin_dir.clone(),
            source,
        })?;
        check_pins(opts)?;
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(&opts.pin_dir);
        for (name, entries) in max_entries(opts) {
            loader.map_max_entries(name, entries);
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        for name in [programs::TC_FROM_POD, programs::TC_TO_POD] {
            program::<SchedClassifier>(&mut ebpf, name)?
                .load()
                .map_err(|source| Error::Program {
                    name: name.into(),
                    source,
                })?;
        }
        let xdp = program::<aya::programs::Xdp>(&mut ebpf, programs::XDP_HOST)?;
        xdp.load().map_err(|source| Error::Program {
            name: programs::XDP_HOST.into(),
            source,
        })?;
        for name in [programs::CG_EGRESS, programs::CG_INGRESS] {
            program::<aya::programs::CgroupSkb>(&mut ebpf, name)?
                .load()
                .map_err(|source| Error::Program {
                    name: name.into(),
                    source,
                })?;
        }
        let pinned: BTreeSet<u32> = std::fs::read_dir(&opts.pin_dir)
            .map_err(|source| Error::PinDir {
                path: opts.pin_dir.clone(),
                source,
            })?
            .filter_map(|e| aya::maps::MapInfo::from_pin(e.ok()?.path()).ok())
            .map(|m| m.id())
            .collect();
        let mut pinned_maps = BTreeMap::new();
        for name in [
            programs::TC_FROM_POD,
            programs::TC_TO_POD,
            programs::XDP_HOST,
            programs::CG_EGRESS,
            programs::CG_INGRESS,
        ] {
            let used = ebpf
                .program(name)
                .and_then(|p| p.info().ok())
                .and_then(|i| i.map_ids().ok().flatten())
                .ok_or_else(|| Error::Missing {
                    kind: "map ids of program",
                    name: name.into(),
                })?;
            pinned_maps.insert(
                name,
                used.into_iter().filter(|id| pinned.contains(id)).collect(),
            );
        }
        Ok(Self {
            ebpf,
            pin_dir: opts.pin_dir.clone(),
            attached: BTreeMap::new(),
            pinned_maps,
        })
    }

    /// The pin directory.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The underlying aya object.
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// The underlying aya object, mutably.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Whether a link's program `prog_id` (tag `tag`, maps `map_ids`) is as good as the loaded
    /// program `name`: the same program, or the same build reading the same pinned maps.
    /// Keeping such a link saves the kernel an RCU grace period per swap (tens of ms), which
    /// adds up over thousands of endpoints at agent start.
    fn is_current(&self, name: &str, prog_id: u32, tag: u64, map_ids: &[u32]) -> bool {
        let Some(ours) = self.ebpf.program(name).and_then(|p| p.info().ok()) else {
            return false;
        };
        prog_id == ours.id()
            || (tag == ours.tag()
                && self
                    .pinned_maps
                    .get(name)
                    .is_some_and(|m| m.iter().all(|id| map_ids.contains(id))))
    }

    /// Whether `link` runs a program as good as the loaded program `name` (see `is_current`).
    fn link_is_current(&self, link: &FdLink, name: &str) -> bool {
        let Ok(id) = link.info().map(|i| i.program_id()) else {
            return false;
        };
        aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .find(|p| p.id() == id)
            .is_some_and(|p| {
                let maps = p.map_ids().ok().flatten().unwrap_or_default();
                self.is_current(name, id, p.tag(), &maps)
            })
    }

    /// What the link pinned at `pin` for interface `ifindex` is: whether its program is among
    /// those the kernel runs on that interface's `hook` now, and whether it is ours.
    fn tcx_state(&self, pin: &Path, ifindex: u32, name: &str, hook: TcAttachType) -> LinkState {
        let Some(info) = tcx_program_on(pin, ifindex, hook) else {
            return LinkState::Dead;
        };
        let map_ids = info.map_ids().ok().flatten().unwrap_or_default();
        if self.is_current(name, info.id(), info.tag(), &map_ids) {
            LinkState::Current
        } else {
            LinkState::Outdated
        }
    }

    fn tcx_pin(&self, ifindex: u32, hook_name: &str) -> PathBuf {
        self.pin_dir
            .join("tcx")
            .join(format!("{ifindex}_{hook_name}"))
    }

    /// Attach both TC programs (TCX) to the host-side interface `iface` of an endpoint, in the
    /// caller's network namespace (see [`hostnet::netns::in_netns`]). See [`Datapath::attach_ifindex`].
    pub fn attach(&mut self, iface: &str) -> Result<(), Error> {
        let ifindex = hostnet::netns::ifindex(iface)?;
        self.attach_ifindex(ifindex, iface)
    }

    /// Attach both TC programs (TCX) to interface `ifindex` (named `iface`) in the caller's
    /// network namespace. A pinned link for the interface (a previous agent) that is live keeps
    /// running if it is current, or gets this program swapped in atomically: there is no
    /// moment without a program. A pinned link that is not live on this interface is dropped
    /// and the programs attached afresh.
    pub fn attach_ifindex(&mut self, ifindex: u32, iface: &str) -> Result<(), Error> {
        let iface_err = |e: String| Error::Interface {
            iface: iface.into(),
            reason: e,
        };
        let dir = self.pin_dir.join("tcx");
        std::fs::create_dir_all(&dir).map_err(|source| Error::PinDir {
            path: dir.clone(),
            source,
        })?;
        for (name, hook, hook_name) in TCX_HOOKS {
            let pin = self.tcx_pin(ifindex, hook_name);
            // Pins of earlier versions were named after the interface.
            let legacy = self
                .pin_dir
                .join("links")
                .join(format!("{iface}_{hook_name}"));
            let mut from = None;
            for p in [&pin, &legacy] {
                if from.is_none() && p.exists() {
                    match self.tcx_state(p, ifindex, name, hook) {
                        LinkState::Dead => {
                            let _ = std::fs::remove_file(p);
                        }
                        state => from = Some((p.clone(), state)),
                    }
                }
            }
            let link = match from {
                Some((p, LinkState::Current)) => {
                    if p == pin {
                        // A live pin of the earlier naming as well would run the program twice.
                        let _ = std::fs::remove_file(&legacy);
                        continue;
                    }
                    PinnedLink::from_pin(&p).ok().map(FdLink::from)
                }
                Some((p, _)) => {
                    let prog = program::<SchedClassifier>(&mut self.ebpf, name)?;
                    let swapped = PinnedLink::from_pin(&p)
                        .ok()
                        .map(FdLink::from)
                        .and_then(|l| SchedClassifierLink::try_from(l).ok())
                        .and_then(|l| prog.attach_to_link(l).ok());
                    match swapped {
                        Some(id) => Some(self.take_tcx_link(name, id, iface)?),
                        None => {
                            let _ = std::fs::remove_file(&p);
                            None
                        }
                    }
                }
                None => None,
            };
            let link = match link {
                Some(l) => l,
                None => {
                    let prog = program::<SchedClassifier>(&mut self.ebpf, name)?;
                    let id = prog
                        .attach(iface, hook)
                        .map_err(|e| iface_err(format!("attaching {name}: {e}")))?;
                    let link = self.take_tcx_link(name, id, iface)?;
                    // Attached by name: make sure the name still meant this index.
                    if hostnet::netns::ifindex(iface).ok() != Some(ifindex) {
                        drop(link);
                        return Err(iface_err(format!(
                            "renamed or replaced while attaching (expected interface index {ifindex})"
                        )));
                    }
                    link
                }
            };
            if !pin.exists() {
                link.pin(&pin).map_err(|e| {
                    iface_err(format!(
                        "pinning {name} link at {}: {e} ({e:?})",
                        pin.display()
                    ))
                })?;
            }
            if legacy.exists() {
                let _ = std::fs::remove_file(&legacy);
            }
        }
        self.attached.insert(ifindex, iface.to_owned());
        Ok(())
    }

    fn take_tcx_link(
        &mut self,
        name: &str,
        id: aya::programs::tc::SchedClassifierLinkId,
        iface: &str,
    ) -> Result<FdLink, Error> {
        program::<SchedClassifier>(&mut self.ebpf, name)?
            .take_link(id)
            .map_err(|source| Error::Program {
                name: name.into(),
                source,
            })?
            .try_into()
            .map_err(|e| Error::Interface {
                iface: iface.into(),
                reason: format!("{name}: not an fd link: {e}"),
            })
    }

    /// Whether both TC programs run on interface `ifindex` through this data path's pinned
    /// links, and read the maps pinned now. The error says what is missing.
    pub fn tcx_verify(&self, ifindex: u32) -> Result<(), String> {
        for (name, hook, hook_name) in TCX_HOOKS {
            let pin = self.tcx_pin(ifindex, hook_name);
            match self.tcx_state(&pin, ifindex, name, hook) {
                LinkState::Current => {}
                LinkState::Outdated => {
                    return Err(format!(
                        "the {hook_name} program on interface {ifindex} is not the current one"
                    ))
                }
                LinkState::Dead => {
                    return Err(format!(
                        "no {hook_name} program runs on interface {ifindex}"
                    ))
                }
            }
        }
        Ok(())
    }

    /// Detach both programs from interface `ifindex` and remove their pins (no error if not
    /// attached).
    pub fn detach_ifindex(&mut self, ifindex: u32) -> Result<(), Error> {
        self.attached.remove(&ifindex);
        for (_, _, hook_name) in TCX_HOOKS {
            let pin = self.tcx_pin(ifindex, hook_name);
            // Unpinning drops the last reference: the kernel detaches the link.
            if let Ok(link) = PinnedLink::from_pin(&pin) {
                let _ = link.unpin();
            }
            let _ = std::fs::remove_file(&pin);
        }
        Ok(())
    }

    /// Remove the pins of TCX links whose program no longer runs on the interface the pin
    /// names (the interface is gone, or was replaced), of this and of earlier versions' naming.
    /// Returns how many were removed.
    pub fn prune_dead_links(&mut self) -> usize {
        let mut removed = 0;
        for dir in ["tcx", "links"] {
            let Ok(rd) = std::fs::read_dir(self.pin_dir.join(dir)) else {
                continue;
            };
            for e in rd.flatten() {
                let file = e.file_name().to_string_lossy().into_owned();
                let Some((iface, hook)) = file
                    .strip_suffix("_ingress")
                    .map(|i| (i, TcAttachType::Ingress))
                    .or_else(|| {
                        file.strip_suffix("_egress")
                            .map(|i| (i, TcAttachType::Egress))
                    })
                else {
                    continue;
                };
                let ifindex = match dir {
                    "tcx" => iface.parse().ok(),
                    _ => hostnet::netns::ifindex(iface).ok(),
                };
                let live = ifindex.is_some_and(|i| tcx_program_on(&e.path(), i, hook).is_some());
                if !live && std::fs::remove_file(e.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }

    /// Detach both programs from `iface` and remove their pins (no error if not attached or
    /// if the interface is gone).
    pub fn detach(&mut self, iface: &str) -> Result<(), Error> {
        let found = self
            .attached
            .iter()
            .find(|(_, n)| n.as_str() == iface)
            .map(|(i, _)| *i);
        match found.or_else(|| hostnet::netns::ifindex(iface).ok()) {
            Some(ifindex) => self.detach_ifindex(ifindex),
            None => Ok(()),
        }
    }

    /// Attach both cgroup_skb programs to the cgroup v2 directory `path` and map the cgroup to
    /// endpoint slot `slot` (at or above `CGROUP_SLOT_BASE`). Links are pinned as
    /// `cgroups/<slot>_<hook>`; a pinned link from a previous agent is kept while its program
    /// is this build reading the maps pinned now, and replaced otherwise.
    pub fn attach_cgroup(&mut self, path: &Path, slot: u32) -> Result<(), Error> {
        use std::os::unix::fs::MetadataExt;
        let cg_err = |reason: String| Error::Interface {
            iface: path.display().to_string(),
            reason,
        };
        let dir = std::fs::File::open(path).map_err(|e| cg_err(format!("cgroup: {e}")))?;
        let id = dir
            .metadata()
            .map_err(|e| cg_err(format!("cgroup: {e}")))?
            .ino();
        let links = self.pin_dir.join("cgroups");
        std::fs::create_dir_all(&links).map_err(|source| Error::PinDir {
            path: links.clone(),
            source,
        })?;
        for (name, hook, hook_name) in [
            (
                programs::CG_EGRESS,
                aya::programs::CgroupSkbAttachType::Egress,
                "egress",
            ),
            (
                programs::CG_INGRESS,
                aya::programs::CgroupSkbAttachType::Ingress,
                "ingress",
            ),
        ] {
            let pin = links.join(format!("{slot}_{hook_name}"));
            // A previous agent's link is kept only while it runs this build on the maps pinned
            // now; otherwise the new link goes in first and the old one is dropped after (two
            // programs on a cgroup both have to pass a packet: never less enforcement).
            let stale = match PinnedLink::from_pin(&pin).map(FdLink::from) {
                Ok(old) if self.link_is_current(&old, name) => continue,
                Ok(_) => true,
                Err(_) => false,
            };
            let prog = program::<aya::programs::CgroupSkb>(&mut self.ebpf, name)?;
            // Link-based cgroup attachments always coexist with others; the flags must be 0.
            let lid = prog
                .attach(&dir, hook, aya::programs::CgroupAttachMode::Single)
                .map_err(|e| cg_err(format!("attaching {name}: {e} ({e:?})")))?;
            let link: FdLink = prog
                .take_link(lid)
                .map_err(|source| Error::Program {
                    name: name.into(),
                    source,
                })?
                .try_into()
                .map_err(|e| cg_err(format!("{name}: not an fd link: {e}")))?;
            if stale {
                if let Ok(old) = PinnedLink::from_pin(&pin) {
                    let _ = old.unpin();
                }
            }
            link.pin(&pin)
                .map_err(|e| cg_err(format!("pinning {name} link: {e}")))?;
        }
        let mut slots: HashMap<&mut MapData, u64, u32> =
            HashMap::try_from(self.map_mut(maps::CGROUP_SLOTS)?)
                .map_err(map_err(maps::CGROUP_SLOTS))?;
        slots
            .insert(id, slot, 0)
            .map_err(map_err(maps::CGROUP_SLOTS))
    }

    /// Detach the cgroup programs of `slot` and forget the cgroup `path` (if it still exists).
    pub fn detach_cgroup(&mut self, path: &Path, slot: u32) -> Result<(), Error> {
        use std::os::unix::fs::MetadataExt;
        for hook in ["egress", "ingress"] {
            let pin = self.pin_dir.join("cgroups").join(format!("{slot}_{hook}"));
            if let Ok(link) = PinnedLink::from_pin(&pin) {
                let _ = link.unpin();
            }
            let _ = std::fs::remove_file(&pin);
        }
        if let Ok(m) = std::fs::metadata(path) {
            let mut slots: HashMap<&mut MapData, u64, u32> =
                HashMap::try_from(self.map_mut(maps::CGROUP_SLOTS)?)
                    .map_err(map_err(maps::CGROUP_SLOTS))?;
            ignore_missing(slots.remove(&m.ino()), maps::CGROUP_SLOTS)?;
        }
        Ok(())
    }

    /// Attach XDP to a host interface (in the caller's network namespace), pinned as
    /// `xdp/<interface>`; a pinned link from a previous agent is kept while its program is this
    /// build reading the maps pinned now, and gets this program swapped in otherwise.
    pub fn attach_xdp(&mut self, iface: &str) -> Result<(), Error> {
        let dir = self.pin_dir.join("xdp");
        std::fs::create_dir_all(&dir).map_err(|source| Error::PinDir {
            path: dir.clone(),
            source,
        })?;
        let pin = dir.join(iface);
        let err = |reason: String| Error::Interface {
            iface: iface.into(),
            reason,
        };
        // A previous agent's link is kept while it runs this build on the maps pinned now;
        // otherwise this program is swapped into it atomically.
        let swapped = match PinnedLink::from_pin(&pin) {
            Ok(old) => {
                let old = FdLink::from(old);
                if self.link_is_current(&old, programs::XDP_HOST) {
                    return Ok(());
                }
                let prog = program::<aya::programs::Xdp>(&mut self.ebpf, programs::XDP_HOST)?;
                aya::programs::xdp::XdpLink::try_from(old)
                    .ok()
                    .and_then(|l| prog.attach_to_link(l).ok())
            }
            Err(_) => None,
        };
        let prog = program::<aya::programs::Xdp>(&mut self.ebpf, programs::XDP_HOST)?;
        let id = match swapped {
            Some(id) => id,
            None => {
                // No pin, or a stale one (its interface is gone): start afresh.
                let _ = std::fs::remove_file(&pin);
                prog.attach(iface, aya::programs::XdpMode::Default)
                    .map_err(|e| err(format!("attaching XDP: {e}")))?
            }
        };
        let link: FdLink = prog
            .take_link(id)
            .map_err(|source| Error::Program {
                name: programs::XDP_HOST.into(),
                source,
            })?
            .try_into()
            .map_err(|e| err(format!("XDP link: {e}")))?;
        if !pin.exists() {
            link.pin(&pin)
                .map_err(|e| err(format!("pinning XDP link: {e}")))?;
        }
        Ok(())
    }

    /// Indexes of the interfaces with pinned TCX links (attached by this or a previous agent).
    pub fn pinned_ifindexes(&self) -> Vec<u32> {
        let mut v: Vec<u32> = std::fs::read_dir(self.pin_dir.join("tcx"))
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let name = e.ok()?.file_name().to_str()?.to_owned();
                name.strip_suffix("_ingress")
                    .or_else(|| name.strip_suffix("_egress"))?
                    .parse()
                    .ok()
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Interfaces the programs are attached to (by this process), by name.
    pub fn attached_interfaces(&self) -> Vec<String> {
        self.attached.values().cloned().collect()
    }

    pub(crate) fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, Error> {
        self.ebpf.map_mut(name).ok_or_else(|| Error::Missing {
            kind: "map",
            name: name.into(),
        })
    }

    pub(crate) fn map(&self, name: &'static str) -> Result<&aya::maps::Map, Error> {
        self.ebpf.map(name).ok_or_else(|| Error::Missing {
            kind: "map",
            name: name.into(),
        })
    }

    /// The global configuration.
    pub fn config(&self) -> Result<Config, Error> {
        let a: Array<&MapData, Config> =
            Array::try_from(self.map(maps::CONFIG)?).map_err(map_err(maps::CONFIG))?;
        a.get(&0, 0).map_err(map_err(maps::CONFIG))
    }

    /// Replace the global configuration.
    pub fn set_config(&mut self, cfg: &Config) -> Result<(), Error> {
        let mut a: Array<&mut MapData, Config> =
            Array::try_from(self.map_mut(maps::CONFIG)?).map_err(map_err(maps::CONFIG))?;
        a.set(0, cfg, 0).map_err(map_err(maps::CONFIG))
    }

    /// Increment the policy revision, so established connections are re-checked once against
    /// the policy now in the maps. Call after every batch of policy/identity changes.
    pub fn bump_revision(&mut self) -> Result<u32, Error> {
        let mut cfg = self.config()?;
        cfg.policy_revision = cfg.policy_revision.wrapping_add(1);
        self.set_config(&cfg)?;
        Ok(cfg.policy_revision)
    }

    fn endpoints(&mut self) -> Result<HashMap<&mut MapData, u32, EndpointInfo>, Error> {
        HashMap::try_from(self.map_mut(maps::ENDPOINTS)?).map_err(map_err(maps::ENDPOINTS))
    }

    /// Insert or replace the endpoint behind interface `ifindex`.
    pub fn set_endpoint(&mut self, ifindex: u32, info: &EndpointInfo) -> Result<(), Error> {
        self.endpoints()?
            .insert(ifindex, info, 0)
            .map_err(map_err(maps::ENDPOINTS))
    }

    /// Remove the endpoint behind `ifindex` (no error if absent).
    pub fn remove_endpoint(&mut self, ifindex: u32) -> Result<(), Error> {
        ignore_missing(self.endpoints()?.remove(&ifindex), maps::ENDPOINTS)
    }

    fn ipcache(&mut self) -> Result<LpmTrie<&mut MapData, [u8; 16], IpcacheEntry>, Error> {
        LpmTrie::try_from(self.map_mut(maps::IPCACHE)?).map_err(map_err(maps::IPCACHE))
    }

    /// Map every address in `net` (unless a longer prefix says otherwise) to `identity`.
    pub fn set_ipcache(&mut self, net: IpNetwork, identity: u32) -> Result<(), Error> {
        let entry = IpcacheEntry { identity, flags: 0 };
        self.ipcache()?
            .insert(&ipcache_key(net), entry, 0)
            .map_err(map_err(maps::IPCACHE))
    }

    /// Remove the ipcache entry for exactly `net` (no error if absent).
    pub fn remove_ipcache(&mut self, net: IpNetwork) -> Result<(), Error> {
        ignore_missing(self.ipcache()?.remove(&ipcache_key(net)), maps::IPCACHE)
    }

    fn policy(&mut self) -> Result<HashMap<&mut MapData, PolicyKey, PolicyValue>, Error> {
        HashMap::try_from(self.map_mut(maps::POLICY)?).map_err(map_err(maps::POLICY))
    }

    /// Insert or replace a policy entry.
    pub fn set_policy(&mut self, key: &PolicyKey, value: &PolicyValue) -> Result<(), Error> {
        self.policy()?
            .insert(key, value, 0)
            .map_err(map_err(maps::POLICY))
    }

    /// Remove a policy entry (no error if absent).
    pub fn remove_policy(&mut self, key: &PolicyKey) -> Result<(), Error> {
        ignore_missing(self.policy()?.remove(key), maps::POLICY)
    }

    /// Every conntrack entry (a snapshot).
    pub fn conntrack(&self) -> Result<Vec<(CtKey, CtEntry)>, Error> {
        let m: HashMap<&MapData, CtKey, CtEntry> =
            HashMap::try_from(self.map(maps::CONNTRACK)?).map_err(map_err(maps::CONNTRACK))?;
        m.iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(maps::CONNTRACK))
    }

    /// Delete one conntrack entry (no error if it is already gone).
    pub fn remove_conntrack(&mut self, key: &CtKey) -> Result<(), Error> {
        let mut m: HashMap<&mut MapData, CtKey, CtEntry> =
            HashMap::try_from(self.map_mut(maps::CONNTRACK)?).map_err(map_err(maps::CONNTRACK))?;
        ignore_missing(m.remove(key), maps::CONNTRACK)
    }

    /// The data-path counters, summed over CPUs, indexed by [`dataplane_common::stats`].
    pub fn stats(&self) -> Result<[u64; stats::COUNT as usize], Error> {
        let a: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.map(maps::STATS)?).map_err(map_err(maps::STATS))?;
        let mut out = [0u64; stats::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let per_cpu = a.get(&(i as u32), 0).map_err(map_err(maps::STATS))?;
            *slot = per_cpu.iter().sum();
        }
        Ok(out)
    }

    /// Take the events ring buffer (once: the reader owns it).
    pub fn take_events(&mut self) -> Result<EventReader, Error> {
        let map = self
            .ebpf
            .take_map(maps::EVENTS)
            .ok_or_else(|| Error::Missing {
                kind: "map (already taken?)",
                name: maps::EVENTS.into(),
            })?;
        Ok(EventReader::new(
            RingBuf::try_from(map).map_err(map_err(maps::EVENTS))?,
        ))
    }

    /// Unpin every map of this data path (the kernel frees them once nothing else holds them)
    /// and remove the pin directory, which is septa's own. For tests and
    /// `--remove-enforcement`; a normal restart keeps them.
    pub fn unpin_all(&mut self) -> Result<(), Error> {
        let pin_err = |source| Error::PinDir {
            path: self.pin_dir.clone(),
            source,
        };
        // Links first: removing a link's pin detaches it (nothing else holds it).
        self.attached.clear();
        for sub in ["tcx", "links", "cgroups", "xdp"] {
            let links = self.pin_dir.join(sub);
            if links.exists() {
                for entry in std::fs::read_dir(&links).map_err(pin_err)? {
                    std::fs::remove_file(entry.map_err(pin_err)?.path()).map_err(pin_err)?;
                }
                std::fs::remove_dir(&links).map_err(pin_err)?;
            }
        }
        for entry in std::fs::read_dir(&self.pin_dir).map_err(pin_err)? {
            std::fs::remove_file(entry.map_err(pin_err)?.path()).map_err(pin_err)?;
        }
        std::fs::remove_dir(&self.pin_dir).map_err(pin_err)
    }
}

/// Refuse pinned maps that do not match what this build and these options would create: aya
/// would reuse them silently, with the old size or, worse, an old layout.
fn check_pins(opts: &LoadOptions) -> Result<(), Error> {
    for map in contract::pinned_maps(EBPF_OBJECT, &max_entries(opts))? {
        map.check_pin(&opts.pin_dir)?;
    }
    Ok(())
}

/// The map sizes the options set, as given to the loader and expected of pinned maps.
fn max_entries(opts: &LoadOptions) -> [(&'static str, u32); 4] {
    [
        (maps::CONNTRACK, opts.conntrack_entries),
        (maps::POLICY, opts.policy_entries),
        (maps::IPCACHE, opts.ipcache_entries),
        (maps::EVENTS, opts.events_bytes),
    ]
}

/// The program of the link pinned at `pin`, if the kernel runs it on interface `ifindex`'s
/// TCX `hook` now. The interface's programs are queried by name, so the name is confirmed to
/// mean this index before and after the query.
fn tcx_program_on(
    pin: &Path,
    ifindex: u32,
    hook: TcAttachType,
) -> Option<aya::programs::ProgramInfo> {
    let prog_id = FdLink::from(PinnedLink::from_pin(pin).ok()?)
        .info()
        .ok()?
        .program_id();
    let iface = hostnet::link::link(ifindex).ok()?;
    let (_, progs) = SchedClassifier::query_tcx(&iface.name, hook).ok()?;
    if hostnet::netns::ifindex(&iface.name).ok() != Some(ifindex) {
        return None;
    }
    progs.into_iter().find(|p| p.id() == prog_id)
}

/// A loaded program by name, as its concrete type (SchedClassifier, CgroupSkb, Xdp).
pub fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P, Error>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| Error::Missing {
            kind: "program",
            name: name.into(),
        })?
        .try_into()
        .map_err(|source| Error::Program {
            name: name.into(),
            source,
        })
}

/// The LPM key of a network: IPv4 is stored IPv4-mapped with the prefix shifted by 96 bits.
pub fn ipcache_key(net: IpNetwork) -> Key<[u8; 16]> {
    match net {
        IpNetwork::V4(n) => Key::new(
            96 + n.prefix() as u32,
            dataplane_common::v4_mapped(n.network().octets()),
        ),
        IpNetwork::V6(n) => Key::new(n.prefix() as u32, n.network().octets()),
    }
}

pub(crate) fn ignore_missing(
    r: Result<(), aya::maps::MapError>,
    name: &'static str,
) -> Result<(), Error> {
    match r {
        Ok(()) => Ok(()),
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        Err(e) => Err(map_err(name)(e)),
    }
}
