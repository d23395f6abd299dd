//! The conntrack sweep: what the kernel cannot report by itself. Long-lived connections get
//! periodic `update` events with their counts; connections without an end the kernel sees
//! (UDP, ICMP, other protocols) end after `idle`, and TCP connections already closed end
//! after `closed_grace`; their entries are deleted so the table does not fill with the dead.

use std::{collections::HashMap, time::Duration};

use dataplane_common::{ct_state, event, CtEntry, CtKey, FlowEvent};

/// Sweep settings.
#[derive(Clone, Copy, Debug)]
pub struct SweepConfig {
    /// A connection with no packet for this long ends (non-TCP, and TCP as a last resort ×10).
    pub idle: Duration,
    /// A closed TCP connection's entry is deleted after this.
    pub closed_grace: Duration,
}

/// What one sweep found.
#[derive(Debug, Default)]
pub struct SweepResult {
    pub events: Vec<FlowEvent>,
    /// Entries to delete.
    pub expired: Vec<CtKey>,
}

/// Remembers what was last reported per connection, so an update is sent only on change.
#[derive(Debug, Default)]
pub struct Sweeper {
    reported: HashMap<CtKey, u64>,
}

fn event_of(kind: u8, k: &CtKey, e: &CtEntry) -> FlowEvent {
    let family = if dataplane_common::is_v4_mapped(&k.saddr) {
        4
    } else {
        6
    };
    FlowEvent::from_ct(kind, 0, family, k, e)
}

impl Sweeper {
    /// Look at every entry once; `now_ns` is the kernel clock (CLOCK_MONOTONIC).
    pub fn sweep(
        &mut self,
        entries: &[(CtKey, CtEntry)],
        now_ns: u64,
        cfg: &SweepConfig,
    ) -> SweepResult {
        let mut out = SweepResult::default();
        let idle_ns = cfg.idle.as_nanos() as u64;
        let mut seen = HashMap::with_capacity(entries.len());
        for (k, e) in entries {
            let age = now_ns.saturating_sub(e.last_seen_ns);
            let tcp = k.proto == 6;
            let closed = e.state & ct_state::CLOSED != 0;
            let dead = if closed {
                age >= cfg.closed_grace.as_nanos() as u64
            } else if tcp {
                age >= idle_ns.saturating_mul(10)
            } else {
                age >= idle_ns
            };
            if dead {
                // Closed TCP connections already had their END from the kernel.
                if !closed {
                    out.events.push(event_of(event::END, k, e));
                }
                out.expired.push(*k);
                self.reported.remove(k);
                continue;
            }
            let total = e.packets_fwd + e.packets_rev;
            let before = self.reported.get(k).copied();
            if !closed && before.is_some_and(|b| b != total) {
                out.events.push(event_of(event::UPDATE, k, e));
            }
            seen.insert(*k, total);
        }
        // Forget connections the LRU evicted or the kernel deleted.
        self.reported = seen;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(proto: u8, last_seen: u64, packets: u64, state: u8) -> (CtKey, CtEntry) {
        let k = CtKey {
            proto,
            sport: packets as u16 + 1000,
            dport: 53,
            ..Default::default()
        };
        (
            k,
            CtEntry {
                last_seen_ns: last_seen,
                packets_fwd: packets,
                state,
                verdict: 1,
                ..Default::default()
            },
        )
    }

    #[test]
    fn updates_only_on_change_and_ends_idle_flows() {
        let cfg = SweepConfig {
            idle: Duration::from_secs(60),
            closed_grace: Duration::from_secs(10),
        };
        let s = 1_000_000_000u64;
        let mut sw = Sweeper::default();
        let udp = entry(17, 100 * s, 5, 0);
        let tcp = entry(6, 100 * s, 9, 0);
        let closed = entry(6, 100 * s, 3, ct_state::CLOSED);
        // First sweep: remembers, reports nothing.
        let r = sw.sweep(&[udp, tcp, closed], 105 * s, &cfg);
        assert!(r.events.is_empty() && r.expired.is_empty());
        // The UDP flow moved: one update.
        let udp2 = (
            udp.0,
            CtEntry {
                packets_fwd: 8,
                last_seen_ns: 120 * s,
                ..udp.1
            },
        );
        let r = sw.sweep(&[udp2, tcp, closed], 121 * s, &cfg);
        assert_eq!(
            r.events
                .iter()
                .map(|e| (e.kind, e.packets_fwd))
                .collect::<Vec<_>>(),
            vec![(event::UPDATE, 8)]
        );
        assert_eq!(
            r.expired,
            vec![closed.0],
            "closed TCP past its grace is deleted, without a second END"
        );
        // Unchanged: nothing. Then the UDP flow goes idle: END and delete.
        assert!(sw.sweep(&[udp2, tcp], 130 * s, &cfg).events.is_empty());
        let r = sw.sweep(&[udp2, tcp], 181 * s, &cfg);
        assert_eq!(
            r.events.iter().map(|e| e.kind).collect::<Vec<_>>(),
            vec![event::END]
        );
        assert_eq!(r.expired, vec![udp2.0]);
        // Idle TCP lasts ten times longer.
        assert!(sw.sweep(&[tcp], 600 * s, &cfg).expired.is_empty());
        assert_eq!(sw.sweep(&[tcp], 701 * s, &cfg).expired, vec![tcp.0]);
    }
}
