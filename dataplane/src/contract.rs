//! The pinned-map contract: what a map pinned under the pin directory must be for this build to
//! reuse it.
//!
//! aya reuses a map pinned under the expected name whatever it is, so a pin left by another
//! build (another layout, another size) or by anything else would be read and written with this
//! build's layout. The contract is derived from the embedded eBPF object, the kernel programs'
//! own map declarations, plus the sizes the load options set: a map added to or changed in the
//! kernel programs is checked without an edit here.

use std::path::Path;

use aya::maps::{MapError, MapInfo, MapType};
use aya_obj::{generated::bpf_map_type, maps::PinningType};
use dataplane_common::maps;

use crate::Error;

/// The kernel keeps map names to `BPF_OBJ_NAME_LEN` bytes, the terminating NUL included.
const KERNEL_NAME_LEN: usize = 15;

/// One pinned map, as this build creates it.
#[derive(Clone, Debug, PartialEq)]
pub struct MapContract {
    /// The map's name in the eBPF object, which is also its pin file name.
    pub name: String,
    /// The map type.
    pub map_type: MapType,
    /// Key size in bytes (0 for ring buffers).
    pub key_size: u32,
    /// Value size in bytes (0 for ring buffers).
    pub value_size: u32,
    /// Maximum entries (bytes for ring buffers).
    pub max_entries: u32,
}

/// The maps of the eBPF object `object` that are pinned by name, in the order of [`maps::ALL`]
/// (any other after them, by name), with the maximum entries of `overrides` (the loader's
/// `map_max_entries`) in place of the object's.
pub fn pinned_maps(object: &[u8], overrides: &[(&str, u32)]) -> Result<Vec<MapContract>, Error> {
    let obj = aya_obj::Object::parse(object).map_err(aya::EbpfError::from)?;
    let mut out = obj
        .maps
        .iter()
        .filter(|(_, m)| m.pinning() == PinningType::ByName)
        .map(|(name, m)| {
            let map_type = bpf_map_type::try_from(m.map_type())
                .map_err(MapError::from)
                .and_then(MapType::try_from)
                .map_err(aya::EbpfError::from)?;
            let max_entries = overrides
                .iter()
                .find(|(n, _)| n == name)
                .map_or(m.max_entries(), |(_, n)| *n);
            // aya creates ring buffers with value size 0 whatever the object says.
            let value_size = if map_type == MapType::RingBuf {
                0
            } else {
                m.value_size()
            };
            Ok(MapContract {
                name: name.clone(),
                map_type,
                key_size: m.key_size(),
                value_size,
                max_entries,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    // The order of dataplane-common's list, so that the first mismatch reported is stable.
    out.sort_by_key(|m| {
        (
            maps::ALL
                .iter()
                .position(|n| *n == m.name)
                .unwrap_or(usize::MAX),
            m.name.clone(),
        )
    });
    Ok(out)
}

impl MapContract {
    /// How the kernel map `info` differs from this contract, one phrase per difference (empty
    /// when it matches).
    pub fn mismatches(&self, info: &MapInfo) -> Vec<String> {
        let mut wrong = Vec::new();
        let expected_name = &self.name[..self.name.len().min(KERNEL_NAME_LEN)];
        match info.name_as_str() {
            Some(n) if n == expected_name => {}
            Some(n) => wrong.push(format!("is the map `{n}`, not `{expected_name}`")),
            None => wrong.push(format!(
                "has no name, this build names it `{expected_name}`"
            )),
        }
        match info.map_type() {
            Ok(t) if t == self.map_type => {}
            Ok(t) => wrong.push(format!(
                "is a {t:?} map, this build uses a {:?}",
                self.map_type
            )),
            Err(e) => wrong.push(format!(
                "has a type this build does not know ({e}), it uses a {:?}",
                self.map_type
            )),
        }
        if info.key_size() != self.key_size {
            wrong.push(format!(
                "has {}-byte keys, this build uses {}",
                info.key_size(),
                self.key_size
            ));
        }
        if info.value_size() != self.value_size {
            wrong.push(format!(
                "has {}-byte values, this build uses {}",
                info.value_size(),
                self.value_size
            ));
        }
        if info.max_entries() != self.max_entries {
            wrong.push(format!(
                "holds {} entries, {} were asked for",
                info.max_entries(),
                self.max_entries
            ));
        }
        wrong
    }

    /// Refuse the map pinned under `dir` with this map's name if it differs from the contract;
    /// no pin is fine (the loader creates it).
    pub fn check_pin(&self, dir: &Path) -> Result<(), Error> {
        let path = dir.join(&self.name);
        if !path.exists() {
            return Ok(());
        }
        let info = MapInfo::from_pin(&path).map_err(|e| Error::PinnedMismatch {
            path: path.clone(),
            what: format!("cannot be opened ({e})"),
        })?;
        let wrong = self.mismatches(&info);
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(Error::PinnedMismatch {
                path,
                what: wrong.join(" and "),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, mem::size_of};

    use aya::maps::lpm_trie::Key;
    use dataplane_common::{
        BlockEntry, Config, CtEntry, CtKey, EndpointInfo, FqdnKey, FqdnValue, FragKey, FragPorts,
        IpcacheEntry, PolicyKey, PolicyValue,
    };

    use super::*;

    fn object_maps(overrides: &[(&str, u32)]) -> Vec<MapContract> {
        pinned_maps(crate::EBPF_OBJECT, overrides).expect("the embedded object parses")
    }

    /// The kernel programs and userspace agree: the object pins exactly the maps
    /// `dataplane-common` names, with the sizes of the ABI types userspace reads them as.
    #[test]
    fn the_object_pins_the_abi_maps_with_the_abi_layouts() {
        let got = object_maps(&[]);
        let names: BTreeSet<&str> = got.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, maps::ALL.into_iter().collect::<BTreeSet<_>>());
        fn kv<K, V>() -> (u32, u32) {
            (size_of::<K>() as u32, size_of::<V>() as u32)
        }
        let abi = [
            (maps::CONFIG, MapType::Array, kv::<u32, Config>()),
            (maps::ENDPOINTS, MapType::Hash, kv::<u32, EndpointInfo>()),
            (
                maps::IPCACHE,
                MapType::LpmTrie,
                kv::<Key<[u8; 16]>, IpcacheEntry>(),
            ),
            (maps::POLICY, MapType::Hash, kv::<PolicyKey, PolicyValue>()),
            (maps::CONNTRACK, MapType::LruHash, kv::<CtKey, CtEntry>()),
            (maps::FRAGS, MapType::LruHash, kv::<FragKey, FragPorts>()),
            (maps::DENY_RATELIMIT, MapType::LruHash, kv::<CtKey, u64>()),
            (maps::EVENTS, MapType::RingBuf, (0, 0)),
            (maps::STATS, MapType::PerCpuArray, kv::<u32, u64>()),
            (maps::CGROUP_SLOTS, MapType::Hash, kv::<u64, u32>()),
            (
                maps::BLOCK_V4,
                MapType::LpmTrie,
                kv::<Key<[u8; 4]>, BlockEntry>(),
            ),
            (
                maps::BLOCK_V6,
                MapType::LpmTrie,
                kv::<Key<[u8; 16]>, BlockEntry>(),
            ),
            (maps::FEED_STATS, MapType::PerCpuArray, kv::<u32, u64>()),
            (maps::FQDN, MapType::Hash, kv::<FqdnKey, FqdnValue>()),
            (maps::DNS_ANSWERS, MapType::RingBuf, (0, 0)),
            (maps::DNS_BUDGET, MapType::LruHash, kv::<u32, u64>()),
            (maps::AGENT, MapType::Array, kv::<u32, u64>()),
        ];
        assert_eq!(abi.len(), maps::ALL.len(), "one layout per map");
        for (name, map_type, (key_size, value_size)) in abi {
            let m = got.iter().find(|m| m.name == name).expect("pinned");
            assert_eq!(
                (m.map_type, m.key_size, m.value_size),
                (map_type, key_size, value_size),
                "{name}: (type, key size, value size) of the object vs the ABI types"
            );
        }
    }

    #[test]
    fn overrides_replace_the_object_sizes_of_their_maps_only() {
        let plain = object_maps(&[]);
        let sized = object_maps(&[(maps::POLICY, 7), (maps::EVENTS, 1 << 12)]);
        for (a, b) in plain.iter().zip(&sized) {
            match a.name.as_str() {
                maps::POLICY => assert_eq!(b.max_entries, 7),
                maps::EVENTS => assert_eq!(b.max_entries, 1 << 12),
                _ => assert_eq!(a, b),
            }
        }
        let stats = plain.iter().find(|m| m.name == maps::STATS).unwrap();
        assert_eq!(stats.max_entries, dataplane_common::stats::COUNT);
    }
}
