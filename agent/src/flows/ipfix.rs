//! IPFIX (RFC 7011) export over UDP.
//!
//! Two templates (256: IPv4, 257: IPv6) with standard information elements where they exist,
//! the reverse counters of RFC 5103 (enterprise 29305), and septa's own fields under
//! enterprise number 32473 (the number RFC 5612 reserves for documentation and examples; a
//! registered number replaces it before production use). Strings are fixed-length (reduced
//! size encoding), zero-padded, so collectors that skip unknown elements only need lengths.
//! Templates go out at start and then every `template_interval` (UDP can lose them).

use std::{
    io,
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use dataplane_common::{Direction, EventKind, Verdict};

use super::FlowRecord;

/// septa's enterprise number (see the module docs).
pub const SEPTA_PEN: u32 = 32473;
/// RFC 5103 reverse information elements.
pub const REVERSE_PEN: u32 = 29305;
/// Length of the fixed-size string fields.
pub const NAME_LEN: usize = 64;

const TEMPLATE_V4: u16 = 256;
const TEMPLATE_V6: u16 = 257;
/// Keep messages under a typical MTU.
const MAX_MESSAGE: usize = 1400;

/// (enterprise, element id, length)
fn fields(v6: bool) -> Vec<(u32, u16, u16)> {
    let (src, dst, alen) = if v6 { (27, 28, 16) } else { (8, 12, 4) };
    vec![
        (0, 152, 8), // flowStartMilliseconds
        (0, 153, 8), // flowEndMilliseconds
        (0, src, alen),
        (0, dst, alen),
        (0, 7, 2),  // sourceTransportPort
        (0, 11, 2), // destinationTransportPort
        (0, 4, 1),  // protocolIdentifier
        (0, 6, 2),  // tcpControlBits
        (0, 1, 8),  // octetDeltaCount
        (0, 2, 8),  // packetDeltaCount
        (REVERSE_PEN, 1, 8),
        (REVERSE_PEN, 2, 8),
        (0, 61, 1),                      // flowDirection: 0 ingress, 1 egress
        (0, 233, 1),                     // firewallEvent
        (SEPTA_PEN, 1, 4),               // ruleId
        (SEPTA_PEN, 2, 1),               // verdict: 1 forwarded, 2 dropped, 3 audit
        (SEPTA_PEN, 3, NAME_LEN as u16), // policy: namespace/name/direction[index] or decided_by
        (SEPTA_PEN, 4, NAME_LEN as u16), // source workload: namespace/Kind/name
        (SEPTA_PEN, 5, NAME_LEN as u16), // destination workload
        (SEPTA_PEN, 6, NAME_LEN as u16), // drop reason
    ]
}

/// An IPFIX exporter to one collector.
pub struct IpfixExporter {
    sock: UdpSocket,
    domain: u32,
    /// Data records sent so far (the header's sequence number).
    sequence: u32,
    last_template: Option<Instant>,
    template_interval: Duration,
    /// Messages sent.
    pub messages: u64,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    let n = b.len().min(NAME_LEN);
    out.extend_from_slice(&b[..n]);
    out.extend(std::iter::repeat_n(0u8, NAME_LEN - n));
}

fn millis(rfc3339: &str) -> u64 {
    humantime::parse_rfc3339(rfc3339)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

impl IpfixExporter {
    /// Connect to `collector` (a UDP socket; nothing is sent until the first records).
    pub fn new(
        collector: SocketAddr,
        domain: u32,
        template_interval: Duration,
    ) -> io::Result<Self> {
        let bind: SocketAddr = if collector.is_ipv4() {
            "0.0.0.0:0".parse().expect("valid")
        } else {
            "[::]:0".parse().expect("valid")
        };
        let sock = UdpSocket::bind(bind)?;
        sock.connect(collector)
            .map_err(|e| io::Error::new(e.kind(), format!("IPFIX collector {collector}: {e}")))?;
        Ok(Self {
            sock,
            domain,
            sequence: 0,
            last_template: None,
            template_interval,
            messages: 0,
        })
    }

    fn header(&self, len: usize, out: &mut Vec<u8>) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as u32);
        out.extend_from_slice(&10u16.to_be_bytes());
        out.extend_from_slice(&(len as u16).to_be_bytes());
        out.extend_from_slice(&now.to_be_bytes());
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.domain.to_be_bytes());
    }

    fn template_set() -> Vec<u8> {
        let mut set = Vec::new();
        for (id, v6) in [(TEMPLATE_V4, false), (TEMPLATE_V6, true)] {
            let f = fields(v6);
            set.extend_from_slice(&id.to_be_bytes());
            set.extend_from_slice(&(f.len() as u16).to_be_bytes());
            for (pen, ie, len) in f {
                let ie = if pen != 0 { ie | 0x8000 } else { ie };
                set.extend_from_slice(&ie.to_be_bytes());
                set.extend_from_slice(&len.to_be_bytes());
                if pen != 0 {
                    set.extend_from_slice(&pen.to_be_bytes());
                }
            }
        }
        let mut out = Vec::new();
        out.extend_from_slice(&2u16.to_be_bytes());
        out.extend_from_slice(&((set.len() + 4) as u16).to_be_bytes());
        out.extend(set);
        out
    }

    /// Encode one record's data (for template 256 or 257).
    pub fn encode(r: &FlowRecord) -> Option<(u16, Vec<u8>)> {
        let (src, dst): (IpAddr, IpAddr) =
            (r.source.ip.parse().ok()?, r.destination.ip.parse().ok()?);
        let mut d = Vec::with_capacity(320);
        d.extend_from_slice(&millis(&r.start).to_be_bytes());
        d.extend_from_slice(&millis(&r.time).to_be_bytes());
        let id = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(t)) => {
                d.extend_from_slice(&s.octets());
                d.extend_from_slice(&t.octets());
                TEMPLATE_V4
            }
            (IpAddr::V6(s), IpAddr::V6(t)) => {
                d.extend_from_slice(&s.octets());
                d.extend_from_slice(&t.octets());
                TEMPLATE_V6
            }
            _ => return None,
        };
        d.extend_from_slice(&r.source.port.to_be_bytes());
        d.extend_from_slice(&r.destination.port.to_be_bytes());
        let proto: u8 = match r.protocol.as_str() {
            "ICMP" => 1,
            "IGMP" => 2,
            "TCP" => 6,
            "UDP" => 17,
            "ICMPv6" => 58,
            "SCTP" => 132,
            p => p.parse().unwrap_or(0),
        };
        d.push(proto);
        let flags: u16 = r
            .tcp_flags
            .iter()
            .map(|f| match f.as_str() {
                "FIN" => 0x01,
                "SYN" => 0x02,
                "RST" => 0x04,
                "PSH" => 0x08,
                "ACK" => 0x10,
                "URG" => 0x20,
                _ => 0,
            })
            .fold(0, |a, b| a | b);
        d.extend_from_slice(&flags.to_be_bytes());
        d.extend_from_slice(&r.bytes.forward.to_be_bytes());
        d.extend_from_slice(&r.packets.forward.to_be_bytes());
        d.extend_from_slice(&r.bytes.reverse.to_be_bytes());
        d.extend_from_slice(&r.packets.reverse.to_be_bytes());
        d.push(Direction::from_name(r.direction.as_str()).map_or(Direction::INGRESS.0, u8::from));
        // firewallEvent (IANA IE 233): 1 created, 2 deleted, 3 denied, 5 updated.
        d.push(match EventKind::from_name(r.kind.as_str()) {
            Some(EventKind::NEW) => 1,
            Some(EventKind::END) => 2,
            Some(EventKind::UPDATE) => 5,
            _ => 3,
        });
        d.extend_from_slice(&r.rule_id.to_be_bytes());
        d.push(Verdict::from_name(r.verdict.as_str()).map_or(0, u8::from));
        let policy = r.policy.as_ref().map_or_else(
            || match &r.feed {
                Some(f) => format!("threat-feed:{f}"),
                None => r.decided_by.to_string(),
            },
            |p| {
                format!(
                    "{}/{}/{}[{}]",
                    p.namespace, p.name, p.direction, p.rule_index
                )
            },
        );
        put_str(&mut d, &policy);
        let wl = |p: &super::FlowPeer| match (&p.namespace, &p.workload) {
            (Some(ns), Some(w)) => format!("{ns}/{w}"),
            _ => p.entity.clone().unwrap_or_default(),
        };
        put_str(&mut d, &wl(&r.source));
        put_str(&mut d, &wl(&r.destination));
        put_str(&mut d, r.drop_reason.map(|d| d.as_str()).unwrap_or(""));
        Some((id, d))
    }

    /// Send records (templates first when due), in messages under the MTU.
    pub fn export(&mut self, records: &[FlowRecord]) -> io::Result<()> {
        let mut sets: Vec<Vec<u8>> = Vec::new();
        if self
            .last_template
            .is_none_or(|t| t.elapsed() >= self.template_interval)
        {
            sets.push(Self::template_set());
            self.last_template = Some(Instant::now());
        }
        for r in records {
            if let Some((id, data)) = Self::encode(r) {
                let mut set = Vec::with_capacity(data.len() + 4);
                set.extend_from_slice(&id.to_be_bytes());
                set.extend_from_slice(&((data.len() + 4) as u16).to_be_bytes());
                set.extend(data);
                sets.push(set);
            }
        }
        // Pack sets into messages; each data set holds one record, which keeps the sequence
        // arithmetic exact when a message is cut.
        let mut msg: Vec<Vec<u8>> = Vec::new();
        let mut size = 16;
        let mut data_in_msg = 0u32;
        let flush = |msg: &mut Vec<Vec<u8>>,
                     size: &mut usize,
                     data: &mut u32,
                     this: &mut Self|
         -> io::Result<()> {
            if msg.is_empty() {
                return Ok(());
            }
            let mut out = Vec::with_capacity(*size);
            this.header(*size, &mut out);
            for s in msg.drain(..) {
                out.extend(s);
            }
            this.sock.send(&out)?;
            this.messages += 1;
            this.sequence = this.sequence.wrapping_add(*data);
            *size = 16;
            *data = 0;
            Ok(())
        };
        for s in sets {
            if size + s.len() > MAX_MESSAGE {
                flush(&mut msg, &mut size, &mut data_in_msg, self)?;
            }
            let is_data = u16::from_be_bytes([s[0], s[1]]) >= 256;
            size += s.len();
            msg.push(s);
            if is_data {
                data_in_msg += 1;
            }
        }
        flush(&mut msg, &mut size, &mut data_in_msg, self)
    }
}

#[cfg(test)]
mod tests {
    use dataplane_common::{Direction, EventKind, FlowEvent, Reason, Verdict};

    use super::*;

    /// Where the element `(enterprise, id)` starts in an IPv4 data record.
    fn offset(enterprise: u32, id: u16) -> usize {
        let f = fields(false);
        let i = f
            .iter()
            .position(|&(e, n, _)| (e, n) == (enterprise, id))
            .expect("element in the template");
        f[..i].iter().map(|&(_, _, len)| len as usize).sum()
    }

    /// Every value of every ABI newtype renders as its one name in the log line, the flow
    /// record and IPFIX, and none of them as `?` or `unknown`.
    #[test]
    fn every_abi_value_renders_the_same_in_every_renderer() {
        let at_direction = offset(0, 61);
        let at_event = offset(0, 233);
        let at_verdict = offset(SEPTA_PEN, 2);
        let at_reason = offset(SEPTA_PEN, 6);
        // firewallEvent is IPFIX's own vocabulary (IANA IE 233).
        let firewall_event = [
            (EventKind::NEW, 1),
            (EventKind::DENY, 3),
            (EventKind::END, 2),
            (EventKind::UPDATE, 5),
        ];
        assert_eq!(firewall_event.len(), EventKind::ALL.len());
        let enricher = super::super::Enricher::default();
        for &kind in EventKind::ALL {
            for &verdict in Verdict::ALL {
                for &reason in Reason::ALL {
                    for &direction in Direction::ALL {
                        let e = FlowEvent {
                            kind: kind.0,
                            verdict: verdict.0,
                            reason: reason.0,
                            direction: direction.0,
                            saddr: dataplane_common::v4_mapped([10, 0, 0, 1]),
                            daddr: dataplane_common::v4_mapped([10, 0, 0, 2]),
                            proto: 6,
                            family: 4,
                            ..Default::default()
                        };
                        let case = format!("{kind:?} {verdict:?} {reason:?} {direction:?}");

                        let line = dataplane::events::describe(&e);
                        let words: Vec<&str> = line.split_whitespace().collect();
                        assert_eq!(words[..2], [kind.as_str(), verdict.as_str()], "{line}");
                        assert!(
                            line.contains(&format!(" {direction} rule=")),
                            "{case}: {line}"
                        );
                        if reason == Reason::NONE {
                            assert!(!line.contains("reason="), "{case}: {line}");
                        } else {
                            assert!(line.contains(&format!(" reason={reason} ")), "{line}");
                        }
                        assert!(
                            !line
                                .split(|c: char| c.is_whitespace() || c == '=')
                                .any(|w| w == "?" || w == "unknown"),
                            "{case}: {line}"
                        );

                        let r = enricher.record(&e);
                        assert_eq!(
                            (
                                r.kind.as_str(),
                                r.verdict.as_str(),
                                r.direction.as_str(),
                                r.drop_reason.map(|d| d.as_str())
                            ),
                            (
                                kind.as_str(),
                                verdict.as_str(),
                                direction.as_str(),
                                (reason != Reason::NONE).then_some(reason.as_str())
                            ),
                            "{case}"
                        );

                        let (_, data) = IpfixExporter::encode(&r).expect("an IPv4 record");
                        assert_eq!(data[at_direction], direction.0, "{case}");
                        assert_eq!(data[at_verdict], verdict.0, "{case}");
                        let fw = firewall_event.iter().find(|(k, _)| *k == kind).unwrap().1;
                        assert_eq!(data[at_event], fw, "{case}");
                        let why = &data[at_reason..at_reason + NAME_LEN];
                        let why = std::str::from_utf8(why).unwrap().trim_end_matches('\0');
                        assert_eq!(
                            why,
                            r.drop_reason.map(|d| d.as_str()).unwrap_or(""),
                            "{case}"
                        );
                    }
                }
            }
        }
    }
}
