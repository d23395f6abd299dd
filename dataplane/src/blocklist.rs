//! The threat-feed maps: the two LPM tries (the merged blocklist) and the per-feed counters.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use aya::maps::{lpm_trie::Key, LpmTrie, MapData, PerCpuArray, PerCpuValues};
use dataplane_common::{maps, BlockEntry, MAX_FEEDS};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use crate::{error::map_err, Datapath, Error};

/// The merged blocklist as the kernel tries hold it.
pub type Blocklist = BTreeMap<IpNetwork, BlockEntry>;

/// What a kernel map update must do: insert or overwrite these, delete those.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Entries to insert or whose value changed.
    pub upsert: Vec<(IpNetwork, BlockEntry)>,
    /// Entries to delete.
    pub remove: Vec<IpNetwork>,
}

impl Diff {
    /// True when the map already matches.
    pub fn is_empty(&self) -> bool {
        self.upsert.is_empty() && self.remove.is_empty()
    }
}
/// Drops and audits one feed caused, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FeedCounts {
    pub drops: u64,
    pub audits: u64,
}

impl Datapath {
    fn block_v4(&mut self) -> Result<LpmTrie<&mut MapData, [u8; 4], BlockEntry>, Error> {
        LpmTrie::try_from(self.map_mut(maps::BLOCK_V4)?).map_err(map_err(maps::BLOCK_V4))
    }

    fn block_v6(&mut self) -> Result<LpmTrie<&mut MapData, [u8; 16], BlockEntry>, Error> {
        LpmTrie::try_from(self.map_mut(maps::BLOCK_V6)?).map_err(map_err(maps::BLOCK_V6))
    }

    /// What the tries hold now (read once at start; afterwards the agent knows what it wrote).
    pub fn blocklist(&self) -> Result<Blocklist, Error> {
        let mut out = Blocklist::new();
        let v4: LpmTrie<&MapData, [u8; 4], BlockEntry> =
            LpmTrie::try_from(self.map(maps::BLOCK_V4)?).map_err(map_err(maps::BLOCK_V4))?;
        for item in v4.iter() {
            let (k, v) = item.map_err(map_err(maps::BLOCK_V4))?;
            let net = Ipv4Network::new(Ipv4Addr::from(k.data()), k.prefix_len() as u8)
                .map_err(|e| Error::Corrupt(format!("{}: {e}", maps::BLOCK_V4)))?;
            out.insert(IpNetwork::V4(net), v);
        }
        let v6: LpmTrie<&MapData, [u8; 16], BlockEntry> =
            LpmTrie::try_from(self.map(maps::BLOCK_V6)?).map_err(map_err(maps::BLOCK_V6))?;
        for item in v6.iter() {
            let (k, v) = item.map_err(map_err(maps::BLOCK_V6))?;
            let net = Ipv6Network::new(Ipv6Addr::from(k.data()), k.prefix_len() as u8)
                .map_err(|e| Error::Corrupt(format!("{}: {e}", maps::BLOCK_V6)))?;
            out.insert(IpNetwork::V6(net), v);
        }
        Ok(out)
    }

    /// Apply a diff: every insert and overwrite first, then the removals, so that no lookup
    /// ever sees neither the old list nor the new one. On error the tries hold the old list
    /// plus part of the new one (nothing removed yet when an insert fails).
    pub fn apply_blocklist(&mut self, diff: &Diff) -> Result<(), Error> {
        {
            let mut v4 = self.block_v4()?;
            for (net, e) in &diff.upsert {
                if let IpNetwork::V4(n) = net {
                    v4.insert(&v4_key(n), e, 0)
                        .map_err(map_err(maps::BLOCK_V4))?;
                }
            }
        }
        {
            let mut v6 = self.block_v6()?;
            for (net, e) in &diff.upsert {
                if let IpNetwork::V6(n) = net {
                    v6.insert(&v6_key(n), e, 0)
                        .map_err(map_err(maps::BLOCK_V6))?;
                }
            }
        }
        {
            let mut v4 = self.block_v4()?;
            for net in &diff.remove {
                if let IpNetwork::V4(n) = net {
                    crate::loader::ignore_missing(v4.remove(&v4_key(n)), maps::BLOCK_V4)?;
                }
            }
        }
        let mut v6 = self.block_v6()?;
        for net in &diff.remove {
            if let IpNetwork::V6(n) = net {
                crate::loader::ignore_missing(v6.remove(&v6_key(n)), maps::BLOCK_V6)?;
            }
        }
        Ok(())
    }

    /// Drops and audits per feed id (index = id; index 0 is unused).
    pub fn feed_counts(&self) -> Result<Vec<FeedCounts>, Error> {
        let a: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(self.map(maps::FEED_STATS)?)
            .map_err(map_err(maps::FEED_STATS))?;
        let sum = |i: u32| -> Result<u64, Error> {
            Ok(a.get(&i, 0)
                .map_err(map_err(maps::FEED_STATS))?
                .iter()
                .sum())
        };
        (0..=MAX_FEEDS)
            .map(|id| {
                Ok(FeedCounts {
                    drops: sum(id * 2)?,
                    audits: sum(id * 2 + 1)?,
                })
            })
            .collect()
    }

    /// Zero a feed id's counters (when the id is given to a new feed).
    pub fn reset_feed_counts(&mut self, id: u32) -> Result<(), Error> {
        let mut a: PerCpuArray<&mut MapData, u64> =
            PerCpuArray::try_from(self.map_mut(maps::FEED_STATS)?)
                .map_err(map_err(maps::FEED_STATS))?;
        let cpus =
            aya::util::nr_cpus().map_err(|(_, e)| Error::Corrupt(format!("nr_cpus: {e}")))?;
        for idx in [id * 2, id * 2 + 1] {
            let zeros = PerCpuValues::try_from(vec![0u64; cpus])
                .map_err(|e| Error::Corrupt(format!("per-CPU values: {e}")))?;
            a.set(idx, zeros, 0).map_err(map_err(maps::FEED_STATS))?;
        }
        Ok(())
    }
}

fn v4_key(n: &Ipv4Network) -> Key<[u8; 4]> {
    Key::new(n.prefix() as u32, n.network().octets())
}

fn v6_key(n: &Ipv6Network) -> Key<[u8; 16]> {
    Key::new(n.prefix() as u32, n.network().octets())
}
