//! Threat-feed lookup, shared by XDP and TC and by the host-side tests.
//!
//! One LPM trie per family (IPv4 keys are 4 bytes, so the IPv4 trie stays shallow); the
//! longest listed prefix answers, and its [`BlockEntry`] already holds, per hook, the strongest
//! action of every listed prefix covering it (merged by the agent), so one lookup decides.

use crate::{block_action, is_v4_mapped, policy::Decision, reason, rule, verdict, BlockEntry};

/// Read access to the two tries: the longest listed prefix containing the address.
pub trait BlockMap {
    fn lookup_v4(&self, addr: [u8; 4]) -> Option<BlockEntry>;
    fn lookup_v6(&self, addr: [u8; 16]) -> Option<BlockEntry>;
}

/// A listed address's decision at one hook: the feed and the [`block_action`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listed {
    pub feed: u32,
    pub action: u8,
}

/// Whether `addr` (16 bytes, IPv4 mapped) is listed for `hook` ([`crate::block_hook`]).
#[inline(always)]
pub fn check<M: BlockMap + ?Sized>(map: &M, addr: &[u8; 16], hook: usize) -> Option<Listed> {
    let e = if is_v4_mapped(addr) {
        map.lookup_v4([addr[12], addr[13], addr[14], addr[15]])?
    } else {
        map.lookup_v6(*addr)?
    };
    // `hook` is one of three constants; the match keeps the index provably in bounds for the
    // verifier without a runtime check on a variable index.
    let (feed, action) = match hook {
        0 => (e.feed[0], e.action[0]),
        1 => (e.feed[1], e.action[1]),
        _ => (e.feed[2], e.action[2]),
    };
    if action == block_action::NONE {
        None
    } else {
        Some(Listed { feed, action })
    }
}

/// Combine a threat-feed listing with the policy decision: a DROP listing decides without
/// looking at policy; an AUDIT listing lets policy decide and, when policy lets the packet
/// through, marks it AUDIT with the feed as the deciding rule.
#[inline(always)]
pub fn decide<F: FnOnce() -> Decision>(listed: Option<Listed>, policy: F) -> Decision {
    match drop_decision(listed) {
        Some(d) => d,
        None => with_audit(listed, policy()),
    }
}

/// The first half of [`decide`]: the decision when the listing drops (policy is not needed).
#[inline(always)]
pub fn drop_decision(listed: Option<Listed>) -> Option<Decision> {
    match listed {
        Some(l) if l.action == block_action::DROP => Some(Decision {
            verdict: verdict::DROPPED,
            reason: reason::BLOCKLISTED,
            rule_id: rule::feed_rule(l.feed),
        }),
        _ => None,
    }
}

/// The second half of [`decide`]: an audit listing marks what policy lets through.
#[inline(always)]
pub fn with_audit(listed: Option<Listed>, d: Decision) -> Decision {
    match listed {
        Some(l) if l.action == block_action::AUDIT && d.verdict != verdict::DROPPED => Decision {
            verdict: verdict::AUDIT,
            reason: reason::BLOCKLISTED,
            rule_id: rule::feed_rule(l.feed),
        },
        _ => d,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{block_hook, v4_mapped};

    /// A linear longest-prefix model: enough to test the decision logic.
    struct Model(Vec<([u8; 16], u8, BlockEntry)>);

    fn prefix_match(a: &[u8], b: &[u8], bits: u8) -> bool {
        (0..bits as usize).all(|i| (a[i / 8] >> (7 - i % 8)) & 1 == (b[i / 8] >> (7 - i % 8)) & 1)
    }

    impl Model {
        fn best(&self, addr: &[u8], v4: bool) -> Option<BlockEntry> {
            self.0
                .iter()
                .filter(|(net, _, _)| is_v4_mapped(net) == v4)
                .filter(|(net, plen, _)| {
                    let n: &[u8] = if v4 { &net[12..] } else { &net[..] };
                    prefix_match(n, addr, *plen)
                })
                .max_by_key(|(_, plen, _)| *plen)
                .map(|(_, _, e)| *e)
        }
    }

    impl BlockMap for Model {
        fn lookup_v4(&self, addr: [u8; 4]) -> Option<BlockEntry> {
            self.best(&addr, true)
        }
        fn lookup_v6(&self, addr: [u8; 16]) -> Option<BlockEntry> {
            self.best(&addr, false)
        }
    }

    fn entry(feed: u32, actions: [u8; 3]) -> BlockEntry {
        BlockEntry {
            feed: actions.map(|a| if a == 0 { 0 } else { feed }),
            action: actions,
            _pad: 0,
        }
    }

    #[test]
    fn drop_listing_overrides_policy_and_audit_listing_defers_to_a_policy_drop() {
        let allow = Decision {
            verdict: verdict::FORWARDED,
            reason: reason::NONE,
            rule_id: 7,
        };
        let deny = Decision {
            verdict: verdict::DROPPED,
            reason: reason::POLICY_DENIED,
            rule_id: rule::DEFAULT_DENY,
        };
        let drop = Some(Listed {
            feed: 4,
            action: block_action::DROP,
        });
        let audit = Some(Listed {
            feed: 5,
            action: block_action::AUDIT,
        });
        let d = decide(drop, || panic!("policy must not be consulted"));
        assert_eq!(
            (d.verdict, d.reason, d.rule_id),
            (verdict::DROPPED, reason::BLOCKLISTED, rule::feed_rule(4))
        );
        let d = decide(audit, || allow);
        assert_eq!(
            (d.verdict, d.reason, d.rule_id),
            (verdict::AUDIT, reason::BLOCKLISTED, rule::feed_rule(5))
        );
        assert_eq!(decide(audit, || deny), deny);
        assert_eq!(decide(None, || allow), allow);
        assert_eq!(rule::feed_of_rule(rule::feed_rule(5)), Some(5));
        assert_eq!(rule::feed_of_rule(rule::FEED_BASE), None);
        assert_eq!(rule::feed_of_rule(rule::DEFAULT_DENY), None);
    }

    #[test]
    fn longest_prefix_decides_per_hook() {
        let m = Model(vec![
            (v4_mapped([203, 0, 113, 0]), 24, entry(1, [2, 2, 0])),
            (v4_mapped([203, 0, 113, 7]), 32, entry(2, [1, 0, 0])),
            (
                [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                32,
                entry(3, [0, 0, 2]),
            ),
        ]);
        let a = v4_mapped([203, 0, 113, 9]);
        assert_eq!(
            check(&m, &a, block_hook::HOST_INGRESS),
            Some(Listed {
                feed: 1,
                action: block_action::DROP
            })
        );
        assert_eq!(check(&m, &a, block_hook::POD_INGRESS), None);
        let b = v4_mapped([203, 0, 113, 7]);
        assert_eq!(
            check(&m, &b, block_hook::HOST_INGRESS),
            Some(Listed {
                feed: 2,
                action: block_action::AUDIT
            })
        );
        assert_eq!(check(&m, &b, block_hook::POD_EGRESS), None);
        assert_eq!(check(&m, &v4_mapped([198, 51, 100, 1]), 0), None);
        let mut v6 = [0u8; 16];
        v6[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        v6[15] = 1;
        assert_eq!(
            check(&m, &v6, block_hook::POD_INGRESS).map(|l| l.feed),
            Some(3)
        );
        // An IPv6 address is never looked up in the IPv4 trie, even if its low bytes match.
        let mut v6b = [0u8; 16];
        v6b[12..].copy_from_slice(&[203, 0, 113, 9]);
        assert_eq!(check(&m, &v6b, block_hook::HOST_INGRESS), None);
    }
}
