//! The DNS maps: the FQDN allowlist and the ring of held-back answers and copied queries.

use aya::maps::{Array, HashMap, MapData, RingBuf};
use dataplane_common::{
    dns_capture, maps, FqdnKey, FqdnValue, DNS_CAPTURE_MAX, DNS_QUERY_CAPTURE_MAX,
};

use crate::{error::map_err, Datapath, Error};

/// What the kernel handed over: a held-back answer or a copy of a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsFrameKind {
    /// An answer held back from the pod; the agent re-injects it.
    Answer,
    /// A copy of a query the pod sent (already on its way).
    Query,
}

/// A DNS frame from the ring: its kind, the endpoint's interface and the frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldAnswer {
    pub kind: DnsFrameKind,
    pub ifindex: u32,
    pub frame: Vec<u8>,
}

/// Reads held-back answers and copied queries.
pub struct AnswerReader {
    ring: RingBuf<MapData>,
}

impl AnswerReader {
    /// Every frame waiting now, in the order the kernel produced them (a query before its
    /// answer). Records of an unknown kind are skipped.
    pub fn drain(&mut self) -> Vec<HeldAnswer> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() < 8 {
                continue;
            }
            let ifindex = u32::from_ne_bytes(item[0..4].try_into().expect("4 bytes"));
            let (kind, max) = match item[6] {
                dns_capture::ANSWER => (DnsFrameKind::Answer, DNS_CAPTURE_MAX),
                dns_capture::QUERY => (DnsFrameKind::Query, DNS_QUERY_CAPTURE_MAX),
                _ => continue,
            };
            let len = (u16::from_ne_bytes(item[4..6].try_into().expect("2 bytes")) as usize)
                .min(max)
                .min(item.len() - 8);
            out.push(HeldAnswer {
                kind,
                ifindex,
                frame: item[8..8 + len].to_vec(),
            });
        }
        out
    }
}

impl std::os::fd::AsRawFd for AnswerReader {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}

impl Datapath {
    fn fqdn(&mut self) -> Result<HashMap<&mut MapData, FqdnKey, FqdnValue>, Error> {
        HashMap::try_from(self.map_mut(maps::FQDN)?).map_err(map_err(maps::FQDN))
    }

    /// Allow `key` until `value.expires_ns`.
    pub fn set_fqdn(&mut self, key: &FqdnKey, value: &FqdnValue) -> Result<(), Error> {
        self.fqdn()?
            .insert(key, value, 0)
            .map_err(map_err(maps::FQDN))
    }

    /// Remove an entry (no error if absent).
    pub fn remove_fqdn(&mut self, key: &FqdnKey) -> Result<(), Error> {
        crate::loader::ignore_missing(self.fqdn()?.remove(key), maps::FQDN)
    }

    /// Write the agent's heartbeat (CLOCK_MONOTONIC ns; 0 when it stops), which lets the
    /// kernel hand DNS frames to it.
    pub fn set_agent_heartbeat(&mut self, ns: u64) -> Result<(), Error> {
        let mut a: Array<&mut MapData, u64> =
            Array::try_from(self.map_mut(maps::AGENT)?).map_err(map_err(maps::AGENT))?;
        a.set(0, ns, 0).map_err(map_err(maps::AGENT))
    }

    /// Every entry (read at start to adopt what a previous run left).
    pub fn fqdn_entries(&self) -> Result<Vec<(FqdnKey, FqdnValue)>, Error> {
        let m: HashMap<&MapData, FqdnKey, FqdnValue> =
            HashMap::try_from(self.map(maps::FQDN)?).map_err(map_err(maps::FQDN))?;
        m.iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(maps::FQDN))
    }

    /// Take the held-answer ring (once).
    pub fn take_dns_answers(&mut self) -> Result<AnswerReader, Error> {
        let map = self
            .ebpf_mut()
            .take_map(maps::DNS_ANSWERS)
            .ok_or_else(|| Error::Missing {
                kind: "map (already taken?)",
                name: maps::DNS_ANSWERS.into(),
            })?;
        Ok(AnswerReader {
            ring: RingBuf::try_from(map).map_err(map_err(maps::DNS_ANSWERS))?,
        })
    }
}
