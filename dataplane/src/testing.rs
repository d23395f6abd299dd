//! Helpers for tests and benchmarks that load the real data path.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::{Datapath, Error, LoadOptions};

/// A data path with its own pin directory, unpinned and removed on drop, so tests can run in
/// parallel without seeing each other's maps.
pub struct ScratchDatapath {
    pub dp: Datapath,
}

impl ScratchDatapath {
    /// Load with small maps under `/sys/fs/bpf/septa-test-<pid>-<n>-<tag>`.
    pub fn load(tag: &str) -> Result<Self, Error> {
        Self::load_with(tag, |_| {})
    }

    /// Load with options adjusted by `f` (the pin directory is set here).
    pub fn load_with(tag: &str, f: impl FnOnce(&mut LoadOptions)) -> Result<Self, Error> {
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
        Ok(Self {
            dp: Datapath::load(&opts)?,
        })
    }
}

impl Drop for ScratchDatapath {
    fn drop(&mut self) {
        let _ = self.dp.unpin_all();
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
