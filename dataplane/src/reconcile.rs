//! Reconciling the data path's maps with a desired state: read what the (pinned) maps hold,
//! diff, apply only the difference, in an order that never leaves less enforcement than
//! either the old or the new state, then bump the policy revision so established connections
//! are re-checked once.
//!
//! Order: policy upserts (allows needed by the new state exist before anything points at
//! them), ipcache upserts, endpoint upserts, endpoint removals, ipcache removals, policy
//! removals, revision bump. Never a flush-and-reload.

use std::collections::BTreeMap;

use aya::maps::{lpm_trie::Key, HashMap, LpmTrie, MapData};
use dataplane_common::{maps, EndpointInfo, IpcacheEntry, PolicyKey, PolicyValue};
use ipnetwork::IpNetwork;
use policies::compile::{diff_map, MapDiff};

use crate::{error::map_err, Datapath, Error};

/// The content of the three maps the control plane owns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapState {
    pub policy: BTreeMap<PolicyKey, PolicyValue>,
    pub ipcache: BTreeMap<IpNetwork, u32>,
    /// By endpoint slot (host-side ifindex, or a cgroup slot).
    pub endpoints: BTreeMap<u32, EndpointInfo>,
}

/// What one reconciliation did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReconcileStats {
    pub upserts: usize,
    pub removals: usize,
    /// The policy revision after the run (unchanged when nothing changed).
    pub revision: u32,
}

/// The network an ipcache key stands for (IPv4-mapped keys back to IPv4).
pub fn network_of(key: &Key<[u8; 16]>) -> Option<IpNetwork> {
    let (plen, data) = (key.prefix_len(), key.data());
    if plen >= 96 && dataplane_common::is_v4_mapped(&data) {
        let v4 = std::net::Ipv4Addr::new(data[12], data[13], data[14], data[15]);
        IpNetwork::new(v4.into(), (plen - 96) as u8).ok()
    } else {
        IpNetwork::new(std::net::Ipv6Addr::from(data).into(), plen as u8).ok()
    }
}

impl Datapath {
    /// Read the maps (e.g. pinned by a previous agent) into a [`MapState`].
    pub fn read_state(&self) -> Result<MapState, Error> {
        let mut st = MapState::default();
        let policy: HashMap<&MapData, PolicyKey, PolicyValue> =
            HashMap::try_from(self.ebpf().map(maps::POLICY).ok_or(Error::Missing {
                kind: "map",
                name: maps::POLICY.into(),
            })?)
            .map_err(map_err(maps::POLICY))?;
        for kv in policy.iter() {
            let (k, v) = kv.map_err(map_err(maps::POLICY))?;
            st.policy.insert(k, v);
        }
        let ipc: LpmTrie<&MapData, [u8; 16], IpcacheEntry> =
            LpmTrie::try_from(self.ebpf().map(maps::IPCACHE).ok_or(Error::Missing {
                kind: "map",
                name: maps::IPCACHE.into(),
            })?)
            .map_err(map_err(maps::IPCACHE))?;
        for kv in ipc.iter() {
            let (k, v) = kv.map_err(map_err(maps::IPCACHE))?;
            if let Some(net) = network_of(&k) {
                st.ipcache.insert(net, v.identity);
            }
        }
        let eps: HashMap<&MapData, u32, EndpointInfo> =
            HashMap::try_from(self.ebpf().map(maps::ENDPOINTS).ok_or(Error::Missing {
                kind: "map",
                name: maps::ENDPOINTS.into(),
            })?)
            .map_err(map_err(maps::ENDPOINTS))?;
        for kv in eps.iter() {
            let (k, v) = kv.map_err(map_err(maps::ENDPOINTS))?;
            st.endpoints.insert(k, v);
        }
        Ok(st)
    }

    /// Make the maps equal `desired`, given that they now hold `actual` (from
    /// [`Datapath::read_state`] or the previous run). On success `actual` becomes `desired`.
    /// On error, `actual` is re-read so the next run starts from the truth.
    pub fn reconcile(
        &mut self,
        actual: &mut MapState,
        desired: &MapState,
    ) -> Result<ReconcileStats, Error> {
        let r = self.apply(actual, desired);
        match r {
            Ok(stats) => {
                *actual = desired.clone();
                Ok(stats)
            }
            Err(e) => {
                if let Ok(now) = self.read_state() {
                    *actual = now;
                }
                Err(e)
            }
        }
    }

    fn apply(&mut self, actual: &MapState, desired: &MapState) -> Result<ReconcileStats, Error> {
        let p: MapDiff<PolicyKey, PolicyValue> = diff_map(&actual.policy, &desired.policy);
        let i: MapDiff<IpNetwork, u32> = diff_map(&actual.ipcache, &desired.ipcache);
        let e: MapDiff<u32, EndpointInfo> = diff_map(&actual.endpoints, &desired.endpoints);
        for (k, v) in &p.upsert {
            self.set_policy(k, v)?;
        }
        for (k, v) in &i.upsert {
            self.set_ipcache(*k, *v)?;
        }
        for (k, v) in &e.upsert {
            self.set_endpoint(*k, v)?;
        }
        for k in &e.remove {
            self.remove_endpoint(*k)?;
        }
        for k in &i.remove {
            self.remove_ipcache(*k)?;
        }
        for k in &p.remove {
            self.remove_policy(k)?;
        }
        let (upserts, removals) = (
            p.upsert.len() + i.upsert.len() + e.upsert.len(),
            p.remove.len() + i.remove.len() + e.remove.len(),
        );
        let revision = if upserts + removals > 0 {
            self.bump_revision()?
        } else {
            self.config()?.policy_revision
        };
        Ok(ReconcileStats {
            upserts,
            removals,
            revision,
        })
    }
}
