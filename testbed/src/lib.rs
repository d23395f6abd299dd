//! Helpers for tests, benchmarks and the demo: a scratch data path, pods as network
//! namespaces on a bridge ([`bed`]), real sockets ([`traffic`]), a client/server setting
//! ([`scenario`]), a CNI runtime that runs real plugin chains ([`cni`]), a multi-node cluster of
//! namespaces with routes or a VXLAN overlay between nodes ([`world`]), kube-proxy's NAT rules
//! written with iptables or nftables ([`kubeproxy`]) and a fake Kubernetes API server
//! ([`kubeapi`]).

pub mod bed;
pub mod cni;
pub mod dns;
pub mod http;
pub mod kubeapi;
pub mod kubeproxy;
pub mod nfcapd;
pub mod node;
pub mod scenario;
pub mod traffic;
pub mod world;

use std::sync::atomic::{AtomicU32, Ordering};

use dataplane::{Datapath, Error, LoadOptions};

/// Remove a pin directory: files (maps, links) and its subdirectories of link pins. (bpffs
/// has no recursive removal; unpinning a link's last reference detaches it.)
pub fn remove_pins(dir: &std::path::Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                remove_pins(&p);
            } else {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// A data path with its own pin directory, unpinned and removed on drop, so tests can run in
/// parallel without seeing each other's maps.
pub struct ScratchDatapath {
    pub dp: Datapath,
    opts: LoadOptions,
    unpin_on_drop: bool,
}

/// Stop the test here, loudly, unless it runs as root: loading eBPF and making network
/// namespaces need it, and a test without it must fail with this reason rather than with a
/// confusing `EPERM` (or pass by testing nothing). CI runs as root.
pub fn require_root(what: &str) {
    assert!(
        rustix::process::geteuid().is_root(),
        "{what} needs root (eBPF and network namespaces); run the tests as root, as CI does"
    );
}

impl ScratchDatapath {
    /// Load with small maps under `/sys/fs/bpf/septa-test-<pid>-<n>-<tag>`.
    pub fn load(tag: &str) -> Result<Self, Error> {
        Self::load_with(tag, |_| {})
    }

    /// [`ScratchDatapath::load`], then policy revision 1, no flags, every denial reported (no
    /// event rate limit), and an agent present (a heartbeat that never goes stale): what most
    /// data-path tests start from.
    pub fn load_configured(tag: &str) -> Result<Self, Error> {
        let mut dp = Self::load(tag)?;
        dp.set_config(&dataplane_common::Config {
            policy_revision: 1,
            flags: 0,
            deny_event_interval_ns: 0,
        })?;
        dp.set_agent_heartbeat(u64::MAX)?;
        Ok(dp)
    }

    /// Load with options adjusted by `f` (the pin directory is set here).
    pub fn load_with(tag: &str, f: impl FnOnce(&mut LoadOptions)) -> Result<Self, Error> {
        require_root("loading the eBPF programs");
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let mut opts = LoadOptions {
            pin_dir: format!("/sys/fs/bpf/septa-test-{}-{n}-{tag}", std::process::id()).into(),
            conntrack_entries: 65_536,
            policy_entries: 65_536,
            ipcache_entries: 65_536,
            events_bytes: 1 << 20,
        };
        f(&mut opts);
        match Datapath::load(&opts) {
            Ok(dp) => Ok(Self {
                dp,
                opts,
                unpin_on_drop: true,
            }),
            Err(e) => {
                // A failed load (the verifier refusing a program) has already pinned maps.
                remove_pins(&opts.pin_dir);
                Err(e)
            }
        }
    }

    /// Load a second data path on the same pins and sizes (an agent restart). It owns the
    /// cleanup from now on; this one no longer unpins when dropped.
    pub fn reopen(&mut self) -> Result<Self, Error> {
        let dp = Datapath::load(&self.opts)?;
        self.unpin_on_drop = false;
        Ok(Self {
            dp,
            opts: self.opts.clone(),
            unpin_on_drop: true,
        })
    }

    /// Drop without unpinning (an agent that exits and leaves enforcement in place).
    pub fn leave_pinned(mut self) -> LoadOptions {
        self.unpin_on_drop = false;
        self.opts.clone()
    }
}

impl Drop for ScratchDatapath {
    fn drop(&mut self) {
        if self.unpin_on_drop {
            let _ = self.dp.unpin_all();
        }
    }
}

impl std::ops::Deref for ScratchDatapath {
    type Target = Datapath;
    fn deref(&self) -> &Datapath {
        &self.dp
    }
}

impl std::ops::DerefMut for ScratchDatapath {
    fn deref_mut(&mut self) -> &mut Datapath {
        &mut self.dp
    }
}
