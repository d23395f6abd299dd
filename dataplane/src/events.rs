//! Reading [`FlowEvent`]s from the ring buffer, asynchronously (tokio `AsyncFd`) or by draining.

use std::io;

use aya::maps::{MapData, RingBuf};
use dataplane_common::FlowEvent;
use tokio::io::unix::AsyncFd;

/// Decode one ring-buffer record; `None` if it is not the size of a [`FlowEvent`] (a kernel/user
/// version mismatch, reported by the caller rather than misread).
pub fn decode(bytes: &[u8]) -> Option<FlowEvent> {
    if bytes.len() != std::mem::size_of::<FlowEvent>() {
        return None;
    }
    // SAFETY: FlowEvent is Pod (any bit pattern valid); size checked; unaligned read.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const FlowEvent) })
}

/// Consumer of the events ring buffer.
pub struct EventReader {
    ring: RingBuf<MapData>,
    /// Records that did not decode (size mismatch).
    pub malformed: u64,
}

impl EventReader {
    pub(crate) fn new(ring: RingBuf<MapData>) -> Self {
        Self { ring, malformed: 0 }
    }

    /// Everything available now, without waiting.
    pub fn drain(&mut self) -> Vec<FlowEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            match decode(&item) {
                Some(e) => out.push(e),
                None => self.malformed += 1,
            }
        }
        out
    }

    /// Wrap for async use (needs a tokio runtime).
    pub fn into_async(self) -> io::Result<AsyncEventReader> {
        // SAFETY: the ring buffer's fd is owned by `self`, which the AsyncFd owns, so it stays
        // open exactly as long as it is registered.
        let fd = unsafe { AsyncFd::register(self) }.map_err(io::Error::from)?;
        Ok(AsyncEventReader { fd })
    }
}

impl std::os::fd::AsRawFd for EventReader {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}

/// [`EventReader`] driven by epoll readiness.
pub struct AsyncEventReader {
    fd: AsyncFd<EventReader>,
}

impl AsyncEventReader {
    /// Wait until at least one event is available and return all available.
    pub async fn next_batch(&mut self) -> io::Result<Vec<FlowEvent>> {
        loop {
            let mut guard = self.fd.readable_mut().await?;
            let batch = guard.get_inner_mut().drain();
            guard.clear_ready();
            if !batch.is_empty() {
                return Ok(batch);
            }
        }
    }

    /// The inner reader.
    pub fn get_mut(&mut self) -> &mut EventReader {
        self.fd.get_mut()
    }
}

/// A one-line, human-readable rendering of an event (for logs and the demo).
pub fn describe(e: &FlowEvent) -> String {
    describe_with(e, |_| None)
}

/// As [`describe`], naming compiled rules with `rule_name` (e.g. `shop/api/ingress[0]`).
pub fn describe_with(e: &FlowEvent, rule_name: impl Fn(u32) -> Option<String>) -> String {
    use dataplane_common::{rule, Reason};
    let kind = e.kind().as_str();
    let v = e.verdict().as_str();
    let why = match e.reason() {
        Reason::NONE => String::new(),
        r => format!(" reason={r}"),
    };
    let rule_name = match e.rule_id {
        rule::DEFAULT_DENY => "default-deny".to_owned(),
        rule::DEFAULT_ALLOW => "default-allow".to_owned(),
        rule::HOST => "host".to_owned(),
        rule::FAIL_MODE => "fail-mode".to_owned(),
        rule::ANTI_SPOOF => "anti-spoof".to_owned(),
        id => rule_name(id).unwrap_or_else(|| format!("#{id}")),
    };
    let dir = e.direction().as_str();
    let proto = match e.proto {
        6 => "TCP".to_owned(),
        17 => "UDP".to_owned(),
        132 => "SCTP".to_owned(),
        1 => "ICMP".to_owned(),
        2 => "IGMP".to_owned(),
        58 => "ICMPv6".to_owned(),
        p => format!("proto-{p}"),
    };
    format!(
        "{kind:<6} {v:<9} {proto} {}:{} -> {}:{} {dir} rule={rule_name}{why} pkts={}/{} bytes={}/{}",
        addr(&e.saddr),
        e.sport,
        addr(&e.daddr),
        e.dport,
        e.packets_fwd,
        e.packets_rev,
        e.bytes_fwd,
        e.bytes_rev
    )
}

/// A 16-byte address as text (IPv4-mapped shown as IPv4).
pub fn addr(a: &[u8; 16]) -> std::net::IpAddr {
    let v6 = std::net::Ipv6Addr::from(*a);
    match v6.to_ipv4_mapped() {
        Some(v4) => v4.into(),
        None => v6.into(),
    }
}
