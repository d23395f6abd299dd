//! Map keys and values, constants and the event record shared by kernel and userspace.
//!
//! Addresses are always 16 bytes: IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`) so one map
//! serves both families and one code path handles both.

/// Map names, as the eBPF object declares them and as they are pinned under bpffs.
pub mod maps {
    /// [`crate::Config`] at index 0.
    pub const CONFIG: &str = "SEPTA_CONFIG";
    /// Endpoint slot (host-side veth ifindex, or a cgroup slot at or above
    /// [`crate::CGROUP_SLOT_BASE`]) → [`crate::EndpointInfo`].
    pub const ENDPOINTS: &str = "SEPTA_ENDPOINTS";
    /// LPM trie: address prefix → [`crate::IpcacheEntry`].
    pub const IPCACHE: &str = "SEPTA_IPCACHE";
    /// [`crate::PolicyKey`] → [`crate::PolicyValue`].
    pub const POLICY: &str = "SEPTA_POLICY";
    /// LRU: [`crate::CtKey`] → [`crate::CtEntry`].
    pub const CONNTRACK: &str = "SEPTA_CT";
    /// LRU: [`crate::FragKey`] → [`crate::FragPorts`], ports of in-flight IP fragments.
    pub const FRAGS: &str = "SEPTA_FRAGS";
    /// LRU: [`crate::CtKey`] → last denial event time (ns), for per-flow rate limiting.
    pub const DENY_RATELIMIT: &str = "SEPTA_DENY_RL";
    /// Ring buffer of [`crate::FlowEvent`].
    pub const EVENTS: &str = "SEPTA_EVENTS";
    /// Per-CPU array of u64 counters indexed by [`crate::stats`].
    pub const STATS: &str = "SEPTA_STATS";
    /// cgroup id → endpoint slot (a key of [`ENDPOINTS`] at or above [`crate::CGROUP_SLOT_BASE`]).
    pub const CGROUP_SLOTS: &str = "SEPTA_CG_SLOTS";
    /// LPM trie: IPv4 prefix (4-byte key) → [`crate::BlockEntry`], the merged threat-feed list.
    pub const BLOCK_V4: &str = "SEPTA_BLOCK_V4";
    /// LPM trie: IPv6 prefix (16-byte key) → [`crate::BlockEntry`].
    pub const BLOCK_V6: &str = "SEPTA_BLOCK_V6";
    /// Per-CPU array of u64: index `feed id * 2` drops, `feed id * 2 + 1` audits.
    pub const FEED_STATS: &str = "SEPTA_FEED_STATS";
    /// [`crate::FqdnKey`] → [`crate::FqdnValue`]: addresses a pod may reach because a DNS
    /// answer for an allowed name gave them.
    pub const FQDN: &str = "SEPTA_FQDN";
    /// Ring buffer of DNS frames for the agent: [`crate::DnsCapture`] (answers held back from
    /// pods until the agent has put their addresses in [`FQDN`]) and [`crate::DnsQueryCapture`]
    /// (copies of the queries those pods send, which answers must match to be learned).
    pub const DNS_ANSWERS: &str = "SEPTA_DNS";
    /// LRU: endpoint slot → the GCRA arrival time (ns) of its DNS budget
    /// ([`crate::dns_budget`]): queries copied and answers held per endpoint are rate-limited.
    pub const DNS_BUDGET: &str = "SEPTA_DNS_BUDGET";
    /// Array of one u64: the CLOCK_MONOTONIC ns of the agent's last heartbeat (0: stopped).
    /// DNS frames are handed to the agent only while it is fresh ([`crate::agent`]).
    pub const AGENT: &str = "SEPTA_AGENT";

    /// Every map above: the maps the eBPF object pins by name.
    pub const ALL: [&str; 17] = [
        CONFIG,
        ENDPOINTS,
        IPCACHE,
        POLICY,
        CONNTRACK,
        FRAGS,
        DENY_RATELIMIT,
        EVENTS,
        STATS,
        CGROUP_SLOTS,
        BLOCK_V4,
        BLOCK_V6,
        FEED_STATS,
        FQDN,
        DNS_ANSWERS,
        DNS_BUDGET,
        AGENT,
    ];
}

/// The agent's presence, as the data path sees it.
pub mod agent {
    /// How often the agent's main loop writes its heartbeat.
    pub const HEARTBEAT_INTERVAL_NS: u64 = 250_000_000;
    /// A heartbeat older than this means no agent: DNS answers pass unheld (unlearned) and
    /// queries are not copied, so an absent agent is never a DNS outage.
    pub const STALE_NS: u64 = 2_000_000_000;

    /// Whether a heartbeat written at `heartbeat` (0: stopped) is fresh at `now`.
    #[inline(always)]
    pub fn present(heartbeat: u64, now: u64) -> bool {
        heartbeat != 0 && (heartbeat >= now || now - heartbeat < STALE_NS)
    }
}

/// Endpoint slots of cgroup workloads start here (below it, slots are interface indexes):
/// conntrack and the endpoints map treat a cgroup like an interface with this index.
pub const CGROUP_SLOT_BASE: u32 = 0x8000_0000;

/// Program names in the eBPF object.
pub mod programs {
    /// TC on the host-side veth, ingress hook: packets leaving the pod (pod egress policy).
    pub const TC_FROM_POD: &str = "tc_from_pod";
    /// TC on the host-side veth, egress hook: packets entering the pod (pod ingress policy).
    pub const TC_TO_POD: &str = "tc_to_pod";
    /// cgroup_skb egress: packets a cgroup workload sends (its egress policy).
    pub const CG_EGRESS: &str = "cg_egress";
    /// cgroup_skb ingress: packets a cgroup workload receives (its ingress policy).
    pub const CG_INGRESS: &str = "cg_ingress";
    /// XDP on a host interface: the earliest hook, where threat-feed drops will happen.
    pub const XDP_HOST: &str = "xdp_host";
    /// Benchmark traffic generator (XDP, live-frames test run): transmits its frame back out.
    pub const PERF_XDP_REDIRECT: &str = "perf_xdp_redirect";
    /// Benchmark helper: an XDP program that passes everything.
    pub const PERF_XDP_PASS: &str = "perf_xdp_pass";
}

/// Default map sizes (entries); the loader can override them.
pub mod sizes {
    pub const ENDPOINTS: u32 = 16_384;
    pub const IPCACHE: u32 = 1_048_576;
    pub const POLICY: u32 = 262_144;
    pub const CONNTRACK: u32 = 262_144;
    pub const FRAGS: u32 = 8_192;
    pub const DENY_RATELIMIT: u32 = 65_536;
    pub const CGROUP_SLOTS: u32 = 4_096;
    /// Threat-feed IPv4 prefixes (LPM tries allocate per entry; this is only the cap).
    pub const BLOCK_V4: u32 = 2_097_152;
    /// Threat-feed IPv6 prefixes.
    pub const BLOCK_V6: u32 = 1_048_576;
    /// FQDN-allowed (endpoint, address, port) entries.
    pub const FQDN: u32 = 262_144;
    /// Endpoints with a DNS budget (LRU: an endpoint evicted starts with a full budget).
    pub const DNS_BUDGET: u32 = 16_384;
    /// Ring buffer for held-back DNS answers, in bytes.
    pub const DNS_ANSWERS_BYTES: u32 = 1 << 22;
    /// Entries of the per-feed counters: two per feed id.
    pub const FEED_STATS: u32 = 2 * (crate::MAX_FEEDS + 1);
    /// Ring buffer size in bytes (power of two, multiple of the page size).
    pub const EVENTS_BYTES: u32 = 1 << 22;
}

/// Reserved identities. Workload and CIDR identities are allocated from [`IDENTITY_FIRST_DYNAMIC`].
pub mod identity {
    /// Wildcard peer in policy keys: "any peer", including addresses outside the cluster.
    pub const ANY: u32 = 0;
    /// The node itself (its addresses are in the ipcache with this identity).
    pub const HOST: u32 = 1;
    /// Any address the ipcache has no more specific entry for.
    pub const WORLD: u32 = 2;
    /// The subject could not be determined (no endpoint entry, fail-open mode only).
    pub const UNKNOWN: u32 = 3;
}
/// First identity the policy compiler may allocate.
pub const IDENTITY_FIRST_DYNAMIC: u32 = 256;

/// Reserved rule ids; compiled rules use ids below [`rule::FIRST_RESERVED`].
pub mod rule {
    /// Lowest reserved id.
    pub const FIRST_RESERVED: u32 = FQDN_BASE;
    /// FqdnPolicy rules: `FQDN_BASE + n`, numbered by the agent.
    pub const FQDN_BASE: u32 = 0xfff0_0000;
    /// Threat-feed decisions: the rule id is `FEED_BASE + feed id` (see [`feed_rule`]).
    pub const FEED_BASE: u32 = 0xffff_fe00;
    /// The rule id a threat feed's drops carry.
    #[inline(always)]
    pub const fn feed_rule(feed: u32) -> u32 {
        FEED_BASE + feed
    }
    /// The feed id behind a rule id, if it is a feed's.
    pub const fn feed_of_rule(rule: u32) -> Option<u32> {
        if rule > FEED_BASE && rule <= FEED_BASE + crate::MAX_FEEDS {
            Some(rule - FEED_BASE)
        } else {
            None
        }
    }
    /// No rule (not a decision).
    pub const NONE: u32 = 0;
    /// Denied because the endpoint is isolated in this direction and nothing allows it.
    pub const DEFAULT_DENY: u32 = 0xffff_ffff;
    /// Allowed because no policy isolates the endpoint in this direction.
    pub const DEFAULT_ALLOW: u32 = 0xffff_fffe;
    /// Traffic from or to the node itself, always allowed (as Kubernetes requires for probes).
    pub const HOST: u32 = 0xffff_fffd;
    /// The packet was not evaluated (malformed, missing endpoint): the node's fail mode decided.
    pub const FAIL_MODE: u32 = 0xffff_fffc;
    /// The source address is not the endpoint's own address, or (IPv6) embeds an IPv4 one.
    pub const ANTI_SPOOF: u32 = 0xffff_fffb;
}

/// A kernel/user value carried as a raw integer: a `#[repr(transparent)]` newtype (free in the
/// kernel, where it is the integer), its named values as associated constants and, for code
/// that stores the raw integer, the same constants in a module. [`as_str`](Verdict::as_str) is
/// the one text of each value, used by every renderer (logs, flow records, exports).
macro_rules! abi_value {
    (
        $(#[$meta:meta])*
        $name:ident($raw:ty), raw constants in mod $module:ident {
            $( $(#[$cmeta:meta])* $konst:ident = $val:literal, $text:literal; )*
        }
    ) => {
        $(#[$meta])*
        #[repr(transparent)]
        #[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub $raw);

        impl $name {
            $( $(#[$cmeta])* pub const $konst: $name = $name($val); )*

            /// Every value this build defines.
            pub const ALL: &'static [$name] = &[$($name::$konst),*];

            /// The value's name, as flow records (schema v1), logs and exports show it;
            /// `unknown` for a value this build does not define.
            pub const fn as_str(self) -> &'static str {
                match self.0 {
                    $($val => $text,)*
                    _ => "unknown",
                }
            }

            /// The value [`as_str`](Self::as_str) names `name`.
            pub fn from_name(name: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == name)
            }

            /// Whether this build defines the value.
            pub const fn is_known(self) -> bool {
                match self.0 {
                    $($val => true,)*
                    _ => false,
                }
            }
        }

        impl From<$raw> for $name {
            #[inline(always)]
            fn from(raw: $raw) -> Self {
                $name(raw)
            }
        }

        impl From<$name> for $raw {
            #[inline(always)]
            fn from(v: $name) -> Self {
                v.0
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                write!(f, concat!(stringify!($name), "({}={})"), self.0, self.as_str())
            }
        }

        #[doc = concat!("The values of [`", stringify!($name), "`] as raw integers, for the fields that store them.")]
        pub mod $module {
            $(
                #[doc = concat!("[`", stringify!($name), "::", stringify!($konst), "`](super::", stringify!($name), "::", stringify!($konst), ").")]
                pub const $konst: $raw = super::$name::$konst.0;
            )*
        }

        const _: () = assert!(core::mem::size_of::<$name>() == core::mem::size_of::<$raw>());
    };
}

abi_value! {
    /// A verdict: what happened to the packet.
    Verdict(u8), raw constants in mod verdict {
        /// Let through.
        FORWARDED = 1, "forwarded";
        /// Dropped.
        DROPPED = 2, "dropped";
        /// Let through, but an audit-mode policy would have denied it.
        AUDIT = 3, "audit";
    }
}

abi_value! {
    /// Why a packet was dropped (or, for an AUDIT verdict, would have been).
    Reason(u8), raw constants in mod reason {
        /// Not dropped.
        NONE = 0, "none";
        /// Isolated endpoint and no policy entry allows it.
        POLICY_DENIED = 1, "policy-denied";
        /// Truncated or invalid L2/L3/L4 header.
        MALFORMED = 2, "malformed";
        /// A non-first IP fragment whose first fragment was not seen.
        FRAG_UNKNOWN = 3, "fragment-unknown";
        /// The interface carries the program but has no endpoint entry.
        NO_ENDPOINT = 4, "no-endpoint";
        /// Pod egress with a source address that is not the pod's (or of a family the pod has
        /// no address of), or an IPv6 packet with an IPv4-embedding address in either direction.
        SPOOFED = 5, "spoofed-source";
        /// An established connection whose allowing policy was removed.
        REVOKED = 6, "revoked";
        /// More IPv6 extension headers than the parser follows.
        EXT_HDR_LIMIT = 7, "ext-header-limit";
        /// The peer address is on a threat feed (the rule id names the feed).
        BLOCKLISTED = 8, "blocklisted";
    }
}

abi_value! {
    /// Policy direction, from the subject endpoint's point of view.
    Direction(u8), raw constants in mod direction {
        /// Traffic entering the subject endpoint.
        INGRESS = 0, "ingress";
        /// Traffic leaving the subject endpoint.
        EGRESS = 1, "egress";
    }
}

/// Isolation bits of an endpoint, per direction ([`EndpointInfo::isolation`]).
pub mod isolation {
    /// An enforcing policy selects the endpoint for this direction: unmatched traffic is dropped.
    pub const ENFORCE: u8 = 1;
    /// An audit-mode policy selects the endpoint for this direction: unmatched traffic that
    /// enforcement lets through is marked AUDIT.
    pub const AUDIT: u8 = 2;
}

/// Flags of [`PolicyValue::flags`].
pub mod allow {
    /// An enforcing policy allows the traffic.
    pub const ENFORCE: u32 = 1;
    /// An audit-mode policy allows the traffic.
    pub const AUDIT: u32 = 2;
}

/// Flags of [`Config::flags`].
pub mod config_flags {
    /// Fail open: packets that cannot be evaluated (malformed, no endpoint entry) pass instead
    /// of being dropped. Off by default: policy fails closed.
    pub const FAIL_OPEN: u32 = 1;
    /// Subject traffic from and to the node's own addresses to policy (off: always allowed).
    pub const POLICY_HOST: u32 = 2;
}

/// Flags of [`EndpointInfo::flags`].
pub mod endpoint_flags {
    /// `ipv4` holds the endpoint's IPv4 address; pod egress from other IPv4 sources is dropped,
    /// and without it every IPv4 source is.
    pub const HAS_IPV4: u8 = 1;
    /// `ipv6` holds the endpoint's IPv6 address; pod egress from other global IPv6 sources is
    /// dropped, and without it every global one is (link-local `fe80::/10` aside).
    pub const HAS_IPV6: u8 = 2;
    /// FqdnPolicies select this endpoint: its DNS answers go through the agent, and egress
    /// that policy denies is checked against the FQDN allowlist.
    pub const FQDN: u8 = 4;
}

abi_value! {
    /// The kind of a [`FlowEvent`].
    EventKind(u8), raw constants in mod event {
        /// A new connection was accepted (verdict FORWARDED or AUDIT).
        NEW = 1, "new";
        /// A packet was dropped (rate-limited per flow), or a connection was revoked.
        DENY = 2, "deny";
        /// A connection ended (TCP FIN both ways or RST) with its packet and byte counts.
        END = 3, "end";
        /// Userspace only: the periodic report of a long-lived connection's counts.
        UPDATE = 4, "update";
    }
}

/// Indices of the per-CPU counters in the stats map.
pub mod stats {
    pub const FORWARDED: u32 = 0;
    pub const DROPPED: u32 = 1;
    pub const AUDIT: u32 = 2;
    pub const EVENTS_LOST: u32 = 3;
    pub const CT_CREATED: u32 = 4;
    pub const CT_REVALIDATED: u32 = 5;
    pub const CT_REVOKED: u32 = 6;
    pub const MALFORMED: u32 = 7;
    pub const FRAG_UNKNOWN: u32 = 8;
    pub const NON_IP: u32 = 9;
    pub const FAIL_OPEN_PASSED: u32 = 10;
    pub const NO_ENDPOINT: u32 = 11;
    pub const SPOOFED: u32 = 12;
    pub const DENY_EVENTS_SUPPRESSED: u32 = 13;
    /// Packets seen by XDP on host interfaces.
    pub const XDP_SEEN: u32 = 14;
    /// Packets a threat feed dropped (XDP and TC; also counted in [`DROPPED`]).
    pub const BLOCKLISTED: u32 = 15;
    /// DNS answers held back for the agent.
    pub const DNS_HELD: u32 = 16;
    /// DNS answers dropped because the answer ring buffer was full (the client retries).
    pub const DNS_LOST: u32 = 17;
    /// New connections allowed by an FQDN entry.
    pub const FQDN_ALLOWED: u32 = 18;
    /// DNS answers that passed without being held (fragmented, or over [`crate::DNS_CAPTURE_MAX`]).
    pub const DNS_NOT_HELD: u32 = 19;
    /// New egress connections of FQDN endpoints that policy denied and no FQDN entry allowed
    /// (denials to addresses not obtained from DNS).
    pub const FQDN_DENIED: u32 = 20;
    /// DNS queries of FQDN endpoints copied to the agent (answers are learned only when they
    /// match one).
    pub const DNS_QUERIES: u32 = 21;
    /// DNS queries not copied and answers delivered unheld because the endpoint was over its
    /// DNS budget (their addresses are not learned).
    pub const DNS_OVER_BUDGET: u32 = 22;
    /// ICMP/ICMPv6 errors passed because they quote a tracked connection (RELATED).
    pub const ICMP_RELATED: u32 = 23;
    /// Number of counters.
    pub const COUNT: u32 = 24;
}

/// Highest threat-feed id (ids start at 1; 0 means "no feed").
pub const MAX_FEEDS: u32 = 255;

/// Where a threat-feed entry applies: index into [`BlockEntry::feed`] / [`BlockEntry::action`].
pub mod block_hook {
    /// XDP on host interfaces: packets whose source is listed.
    pub const HOST_INGRESS: usize = 0;
    /// TC from a pod: connections a pod opens to a listed destination.
    pub const POD_EGRESS: usize = 1;
    /// TC to a pod: connections a listed source opens to a pod.
    pub const POD_INGRESS: usize = 2;
    /// Number of hooks.
    pub const COUNT: usize = 3;
}

/// What a threat-feed entry does at a hook ([`BlockEntry::action`]).
pub mod block_action {
    /// The entry does not apply at this hook.
    pub const NONE: u8 = 0;
    /// Let through, counted and reported with verdict AUDIT.
    pub const AUDIT: u8 = 1;
    /// Drop.
    pub const DROP: u8 = 2;
}

/// Value of the threat-feed LPM tries. Because a lookup returns only the longest matching
/// prefix, each entry already carries, per hook, the strongest action of every listed prefix
/// that covers it (the agent merges them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BlockEntry {
    /// Deciding feed id per [`block_hook`] (0 where the action is NONE).
    pub feed: [u32; block_hook::COUNT],
    /// [`block_action`] per [`block_hook`].
    pub action: [u8; block_hook::COUNT],
    pub _pad: u8,
}

/// Global data-path configuration, index 0 of the config array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Bumped by the agent after every policy change; conntrack entries approved under an older
    /// revision are re-checked once on their next packet.
    pub policy_revision: u32,
    /// [`config_flags`].
    pub flags: u32,
    /// Minimum interval between two denial events of the same flow.
    pub deny_event_interval_ns: u64,
}

/// What the data path knows about the endpoint behind one host-side interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointInfo {
    /// The endpoint's security identity (subject of its policy keys).
    pub identity: u32,
    /// Bit `n` (1..=15) set: this identity has ingress policy entries with port prefix length `n`
    /// (port ranges). Lengths 16 (one port) and 0 (all ports) are always looked up.
    pub ingress_port_plens: u32,
    /// The same for egress.
    pub egress_port_plens: u32,
    /// [`isolation`] bits, indexed by [`direction`].
    pub isolation: [u8; 2],
    /// [`endpoint_flags`].
    pub flags: u8,
    pub _pad: u8,
    /// IPv4-mapped IPv4 address (when `HAS_IPV4`).
    pub ipv4: [u8; 16],
    /// IPv6 address (when `HAS_IPV6`).
    pub ipv6: [u8; 16],
    /// The agent's id for this endpoint (reported in events).
    pub endpoint_id: u32,
}

impl EndpointInfo {
    /// Port prefix lengths in use for `dir`.
    #[inline(always)]
    pub fn port_plens(&self, dir: u8) -> u32 {
        if dir == direction::INGRESS {
            self.ingress_port_plens
        } else {
            self.egress_port_plens
        }
    }

    /// Isolation bits for `dir`.
    #[inline(always)]
    pub fn isolation_for(&self, dir: u8) -> u8 {
        if dir == direction::INGRESS {
            self.isolation[0]
        } else {
            self.isolation[1]
        }
    }
}

/// Value of the ipcache LPM trie (key: prefix length + 16-byte address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpcacheEntry {
    pub identity: u32,
    pub flags: u32,
}

/// Policy map key. Lookups go from most to least specific (see [`crate::policy::lookup`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    /// Identity of the endpoint the policy is for.
    pub subject: u32,
    /// Identity of the other side, or [`identity::ANY`].
    pub peer: u32,
    /// Destination port, host byte order, masked to `port_plen` leading bits.
    pub port: u16,
    /// IP protocol number, 0 = any protocol.
    pub proto: u8,
    /// [`direction`].
    pub direction: u8,
    /// Number of leading port bits that matter: 16 one port, 0 all ports, 1..=15 a range block.
    pub port_plen: u8,
    pub _pad: [u8; 3],
}

impl PolicyKey {
    /// A key for `port` with the given prefix length (the port is masked here).
    #[inline(always)]
    pub fn new(
        subject: u32,
        direction: u8,
        peer: u32,
        proto: u8,
        port: u16,
        port_plen: u8,
    ) -> Self {
        PolicyKey {
            subject,
            peer,
            port: port & port_mask(port_plen),
            proto,
            direction,
            port_plen,
            _pad: [0; 3],
        }
    }
}

/// Mask of the `plen` leading bits of a port.
#[inline(always)]
pub fn port_mask(plen: u8) -> u16 {
    if plen == 0 {
        0
    } else if plen >= 16 {
        0xffff
    } else {
        !(0xffffu16 >> plen)
    }
}

/// Policy map value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyValue {
    /// The rule that allows it (the enforcing one when there is one).
    pub rule_id: u32,
    /// [`allow`] bits: the union over every rule this key and its fallbacks cover.
    pub flags: u32,
}

/// Conntrack key: the tuple in the direction of the packet that created the connection, and
/// the endpoint (so the two ends of a same-node connection are tracked separately).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// The endpoint slot (a key of [`maps::ENDPOINTS`]): the host-side interface index for a
    /// pod, a cgroup slot for a cgroup workload, the ingress interface for host XDP.
    pub slot: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl CtKey {
    /// The same connection seen from the other side.
    #[inline(always)]
    pub fn reversed(&self) -> Self {
        CtKey {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            slot: self.slot,
            proto: self.proto,
            _pad: [0; 3],
        }
    }
}

/// [`CtEntry::state`] bits.
pub mod ct_state {
    pub const FIN_FWD: u8 = 1;
    pub const FIN_REV: u8 = 2;
    /// The END event was sent; the entry stays for the last ACKs and ages out.
    pub const CLOSED: u8 = 4;
    pub const SEEN_REPLY: u8 = 8;
}

/// Conntrack entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    pub created_ns: u64,
    pub last_seen_ns: u64,
    pub packets_fwd: u64,
    pub bytes_fwd: u64,
    pub packets_rev: u64,
    pub bytes_rev: u64,
    /// [`Config::policy_revision`] this connection was last approved under.
    pub policy_revision: u32,
    pub rule_id: u32,
    pub subject_identity: u32,
    pub peer_identity: u32,
    /// FORWARDED or AUDIT.
    pub verdict: u8,
    /// Policy direction of the original packet.
    pub direction: u8,
    /// [`ct_state`] bits.
    pub state: u8,
    /// TCP flags seen, OR-ed.
    pub tcp_flags: u8,
    pub _pad: [u8; 4],
}

/// Key of the fragment map: identifies one fragmented datagram.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub id: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Ports learnt from a first fragment, applied to the later ones.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragPorts {
    pub sport: u16,
    pub dport: u16,
}

/// `skb->mark` of DNS answers the agent re-injects (they pass the hold-back).
pub const DNS_REINJECT_MARK: u32 = 0x5e97_0d05;

/// Largest DNS answer frame held back (bytes from the Ethernet header); larger ones pass
/// untouched (see the README's fail-mode table).
pub const DNS_CAPTURE_MAX: usize = 4096;

/// Key of the FQDN allowlist: an endpoint slot, an address, and a port (0 = any port) of a
/// protocol (0 = any protocol).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FqdnKey {
    pub slot: u32,
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Value of the FQDN allowlist.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FqdnValue {
    /// CLOCK_MONOTONIC ns after which new connections are no longer allowed (the TTL).
    pub expires_ns: u64,
    /// Until when an established connection re-checked after a policy change still passes
    /// (the TTL plus the grace period).
    pub grace_ns: u64,
    /// The FqdnPolicy rule (reported as the deciding rule).
    pub rule_id: u32,
    /// The agent's id for the name (for flow records).
    pub name_id: u32,
}

/// Largest DNS query frame copied to the agent; a longer one passes uncopied (its answer is
/// then delivered but not learned). Queries carry one question (at most 255 bytes of name).
pub const DNS_QUERY_CAPTURE_MAX: usize = 512;

/// [`DnsCapture::kind`] / [`DnsQueryCapture::kind`].
pub mod dns_capture {
    /// An answer held back from the pod (the agent re-injects it).
    pub const ANSWER: u8 = 1;
    /// A copy of a query the pod sent (the packet itself went on).
    pub const QUERY: u8 = 2;
}

/// A held-back DNS answer: the frame as the pod would have received it. Only answers on the
/// reverse of a connection the pod opened to port 53 are held (see the data path).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsCapture {
    /// Host-side interface the answer was going out of, which the agent re-injects it into
    /// (also its endpoint slot: only TC programs hold answers, never cgroup ones).
    pub ifindex: u32,
    /// Bytes of `data` that hold the frame.
    pub len: u16,
    /// [`dns_capture::ANSWER`].
    pub kind: u8,
    pub _pad: u8,
    pub data: [u8; DNS_CAPTURE_MAX],
}

/// A copy of a DNS query an FQDN endpoint sent; same header as [`DnsCapture`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsQueryCapture {
    /// Host-side interface the query came in on (also its endpoint slot: only TC programs
    /// copy queries, never cgroup ones).
    pub ifindex: u32,
    /// Bytes of `data` that hold the frame.
    pub len: u16,
    /// [`dns_capture::QUERY`].
    pub kind: u8,
    pub _pad: u8,
    pub data: [u8; DNS_QUERY_CAPTURE_MAX],
}

/// Per-endpoint DNS budget: a GCRA (virtual scheduling) rate limit on the queries copied to
/// and answers held for the agent, so that one pod cannot crowd the shared ring.
pub mod dns_budget {
    /// Sustained rate: one event per this many ns (500 per second).
    pub const INTERVAL_NS: u64 = 2_000_000;
    /// Burst tolerance, in ns of credit (500 events at once).
    pub const BURST_NS: u64 = 1_000_000_000;

    /// Given an endpoint's theoretical arrival time `tat` (0: never seen) and `now`, whether
    /// one more event conforms, and the new `tat` to store when it does.
    #[inline(always)]
    pub fn take(tat: u64, now: u64) -> Option<u64> {
        let t = if tat > now { tat } else { now };
        if t - now > BURST_NS {
            return None;
        }
        Some(t + INTERVAL_NS)
    }
}

/// One record on the events ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    pub timestamp_ns: u64,
    /// When the connection started (its first packet), same clock.
    pub start_ns: u64,
    pub packets_fwd: u64,
    pub bytes_fwd: u64,
    pub packets_rev: u64,
    pub bytes_rev: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// The endpoint slot of the connection ([`CtKey::slot`]).
    pub slot: u32,
    pub rule_id: u32,
    pub subject_identity: u32,
    pub peer_identity: u32,
    pub sport: u16,
    pub dport: u16,
    /// [`EventKind`], raw (see [`FlowEvent::kind`]).
    pub kind: u8,
    /// [`Verdict`], raw (see [`FlowEvent::verdict`]).
    pub verdict: u8,
    /// [`Reason`], raw (see [`FlowEvent::reason`]).
    pub reason: u8,
    /// [`Direction`] of the connection's original packet, raw (see [`FlowEvent::direction`]).
    pub direction: u8,
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
    pub tcp_flags: u8,
    pub _pad: u8,
    pub policy_revision: u32,
}

impl FlowEvent {
    /// The event's kind.
    #[inline(always)]
    pub fn kind(&self) -> EventKind {
        EventKind(self.kind)
    }
    /// What happened to the packet.
    #[inline(always)]
    pub fn verdict(&self) -> Verdict {
        Verdict(self.verdict)
    }
    /// Why it was dropped ([`Reason::NONE`] when it was not).
    #[inline(always)]
    pub fn reason(&self) -> Reason {
        Reason(self.reason)
    }
    /// The policy direction of the connection's original packet.
    #[inline(always)]
    pub fn direction(&self) -> Direction {
        Direction(self.direction)
    }

    /// The event for a conntrack entry, as the kernel emits it and the sweeper re-reports it;
    /// one constructor so the two cannot drift apart.
    #[inline(always)]
    pub fn from_ct(kind: EventKind, reason: Reason, family: u8, key: &CtKey, e: &CtEntry) -> Self {
        FlowEvent {
            timestamp_ns: e.last_seen_ns,
            start_ns: e.created_ns,
            packets_fwd: e.packets_fwd,
            bytes_fwd: e.bytes_fwd,
            packets_rev: e.packets_rev,
            bytes_rev: e.bytes_rev,
            saddr: key.saddr,
            daddr: key.daddr,
            slot: key.slot,
            rule_id: e.rule_id,
            subject_identity: e.subject_identity,
            peer_identity: e.peer_identity,
            sport: key.sport,
            dport: key.dport,
            kind: kind.0,
            verdict: e.verdict,
            reason: reason.0,
            direction: e.direction,
            proto: key.proto,
            family,
            tcp_flags: e.tcp_flags,
            _pad: 0,
            policy_revision: e.policy_revision,
        }
    }
}

/// IPv4-mapped IPv6 form of an IPv4 address.
#[inline(always)]
pub const fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

/// Whether a 16-byte address is IPv4-mapped.
#[inline(always)]
pub fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[..10].iter().all(|b| *b == 0) && a[10] == 0xff && a[11] == 0xff
}

// Layout is the contract: a size change here is a kernel/user mismatch.
const _: () = assert!(core::mem::size_of::<Config>() == 16);
const _: () = assert!(core::mem::size_of::<EndpointInfo>() == 52);
const _: () = assert!(core::mem::size_of::<PolicyKey>() == 16);
const _: () = assert!(core::mem::size_of::<PolicyValue>() == 8);
const _: () = assert!(core::mem::size_of::<CtKey>() == 44);
const _: () = assert!(core::mem::size_of::<CtEntry>() == 72);
const _: () = assert!(core::mem::size_of::<FragKey>() == 40);
const _: () = assert!(core::mem::size_of::<FlowEvent>() == 112);
const _: () = assert!(core::mem::size_of::<BlockEntry>() == 16);
const _: () = assert!(core::mem::size_of::<FqdnKey>() == 24);
const _: () = assert!(core::mem::size_of::<FqdnValue>() == 24);
const _: () = assert!(core::mem::size_of::<DnsCapture>() == 8 + DNS_CAPTURE_MAX);
const _: () = assert!(core::mem::size_of::<DnsQueryCapture>() == 8 + DNS_QUERY_CAPTURE_MAX);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are #[repr(C)], Copy, made of integers and byte arrays with explicit padding
    // fields, so every bit pattern is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for EndpointInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for IpcacheEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PolicyKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PolicyValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CtKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CtEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FragKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FragPorts {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for BlockEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FqdnKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FqdnValue {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names<T: Copy>(all: &[T], as_str: fn(T) -> &'static str) -> Vec<&'static str> {
        all.iter().map(|v| as_str(*v)).collect()
    }

    /// These texts are flow record schema v1 (and the IPFIX and log texts): a change here is a
    /// change of the published format.
    #[test]
    fn values_have_their_schema_v1_names() {
        assert_eq!(
            names(EventKind::ALL, EventKind::as_str),
            ["new", "deny", "end", "update"]
        );
        assert_eq!(
            names(Verdict::ALL, Verdict::as_str),
            ["forwarded", "dropped", "audit"]
        );
        assert_eq!(
            names(Reason::ALL, Reason::as_str),
            [
                "none",
                "policy-denied",
                "malformed",
                "fragment-unknown",
                "no-endpoint",
                "spoofed-source",
                "revoked",
                "ext-header-limit",
                "blocklisted"
            ]
        );
        assert_eq!(
            names(Direction::ALL, Direction::as_str),
            ["ingress", "egress"]
        );
    }

    /// The raw constants are the newtypes' values, the names are unique and parse back, and
    /// only values outside `ALL` are unknown.
    #[test]
    fn values_round_trip_through_their_names() {
        macro_rules! check {
            ($t:ident, $module:ident, [$($k:ident),*]) => {{
                assert_eq!($t::ALL, [$($t($module::$k)),*], stringify!($t));
                for v in $t::ALL {
                    assert!(v.is_known());
                    assert_eq!($t::from_name(v.as_str()), Some(*v), "{v:?}");
                    assert_eq!($t::from(u8::from(*v)), *v);
                }
                for raw in 0..=u8::MAX {
                    let v = $t(raw);
                    assert_eq!(v.is_known(), $t::ALL.contains(&v), "{v:?}");
                    assert_eq!(v.as_str() == "unknown", !v.is_known(), "{v:?}");
                }
                assert_eq!($t::from_name("unknown"), None);
            }};
        }
        check!(EventKind, event, [NEW, DENY, END, UPDATE]);
        check!(Verdict, verdict, [FORWARDED, DROPPED, AUDIT]);
        check!(
            Reason,
            reason,
            [
                NONE,
                POLICY_DENIED,
                MALFORMED,
                FRAG_UNKNOWN,
                NO_ENDPOINT,
                SPOOFED,
                REVOKED,
                EXT_HDR_LIMIT,
                BLOCKLISTED
            ]
        );
        check!(Direction, direction, [INGRESS, EGRESS]);
    }

    #[test]
    fn flow_event_fields_read_as_their_types() {
        let e = FlowEvent {
            kind: event::UPDATE,
            verdict: verdict::AUDIT,
            reason: reason::REVOKED,
            direction: direction::EGRESS,
            ..Default::default()
        };
        assert_eq!(
            (e.kind(), e.verdict(), e.reason(), e.direction()),
            (
                EventKind::UPDATE,
                Verdict::AUDIT,
                Reason::REVOKED,
                Direction::EGRESS
            )
        );
    }
}
