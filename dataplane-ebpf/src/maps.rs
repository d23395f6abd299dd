//! Every map the programs use, in one place. The pinned ones are septa's kernel/agent
//! contract (names and types in `dataplane_common::maps`); the scratch ones hold no state
//! between packets.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use dataplane_common::{
    sizes, stats, BlockEntry, Config, CtEntry, CtKey, EndpointInfo, FqdnKey, FqdnValue, FragKey,
    FragPorts, IpcacheEntry, PolicyKey, PolicyValue,
};

use crate::datapath::Flow;

#[map(name = "SEPTA_CONFIG")]
pub(crate) static CONFIG: Array<Config> = Array::pinned(1, 0);
#[map(name = "SEPTA_ENDPOINTS")]
pub(crate) static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::pinned(sizes::ENDPOINTS, 0);
#[map(name = "SEPTA_IPCACHE")]
pub(crate) static IPCACHE: LpmTrie<[u8; 16], IpcacheEntry> = LpmTrie::pinned(sizes::IPCACHE, 0);
#[map(name = "SEPTA_POLICY")]
pub(crate) static POLICY: HashMap<PolicyKey, PolicyValue> = HashMap::pinned(sizes::POLICY, 0);
#[map(name = "SEPTA_CT")]
pub(crate) static CT: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(sizes::CONNTRACK, 0);
#[map(name = "SEPTA_FRAGS")]
pub(crate) static FRAGS: LruHashMap<FragKey, FragPorts> = LruHashMap::pinned(sizes::FRAGS, 0);
#[map(name = "SEPTA_DENY_RL")]
pub(crate) static DENY_RL: LruHashMap<CtKey, u64> = LruHashMap::pinned(sizes::DENY_RATELIMIT, 0);
#[map(name = "SEPTA_EVENTS")]
pub(crate) static EVENTS: RingBuf = RingBuf::pinned(sizes::EVENTS_BYTES, 0);
#[map(name = "SEPTA_STATS")]
pub(crate) static STATS: PerCpuArray<u64> = PerCpuArray::pinned(stats::COUNT, 0);
#[map(name = "SEPTA_CG_SLOTS")]
pub(crate) static CG_SLOTS: HashMap<u64, u32> = HashMap::pinned(sizes::CGROUP_SLOTS, 0);
#[map(name = "SEPTA_BLOCK_V4")]
pub(crate) static BLOCK_V4: LpmTrie<[u8; 4], BlockEntry> = LpmTrie::pinned(sizes::BLOCK_V4, 0);
#[map(name = "SEPTA_BLOCK_V6")]
pub(crate) static BLOCK_V6: LpmTrie<[u8; 16], BlockEntry> = LpmTrie::pinned(sizes::BLOCK_V6, 0);
#[map(name = "SEPTA_FEED_STATS")]
pub(crate) static FEED_STATS: PerCpuArray<u64> = PerCpuArray::pinned(sizes::FEED_STATS, 0);
#[map(name = "SEPTA_FQDN")]
pub(crate) static FQDN: HashMap<FqdnKey, FqdnValue> = HashMap::pinned(sizes::FQDN, 0);
#[map(name = "SEPTA_DNS")]
pub(crate) static DNS_ANSWERS: RingBuf = RingBuf::pinned(sizes::DNS_ANSWERS_BYTES, 0);
#[map(name = "SEPTA_DNS_BUDGET")]
pub(crate) static DNS_BUDGET: LruHashMap<u32, u64> = LruHashMap::pinned(sizes::DNS_BUDGET, 0);
#[map(name = "SEPTA_AGENT")]
pub(crate) static AGENT: Array<u64> = Array::pinned(1, 0);
/// Per-CPU scratch for a new connection's conntrack entry (not pinned).
#[map(name = "SEPTA_CT_SCRATCH")]
pub(crate) static CT_SCRATCH: PerCpuArray<CtEntry> = PerCpuArray::with_max_entries(1, 0);
/// Per-CPU scratch for the per-packet [`Flow`] (not pinned: it holds no state between packets).
#[map(name = "SEPTA_SCRATCH")]
pub(crate) static SCRATCH: PerCpuArray<Flow> = PerCpuArray::with_max_entries(1, 0);
