//! The agent's FQDN engine: from held-back DNS answers to FQDN allowlist entries, and their
//! lifetime. Pure (no I/O): it says which map entries to write and remove; the agent writes
//! them before it re-injects the answer.
//!
//! Trust: an answer is learned only if it answers a query the endpoint sent (see
//! [`super::solicit`]) to a resolver the matching rule's policy trusts; its TTL is capped
//! at `max_ttl`. Anything else is delivered unlearned and counted by its result.
//!
//! Lifetime of an entry: new connections for the record's TTL (at least `min_ttl`); for
//! `grace` after that the entry stays so that an established connection re-checked after a
//! policy change is not cut; then it is removed. At most `max_ips_per_name` addresses per
//! (endpoint, name), oldest evicted and counted.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    net::IpAddr,
    time::Duration,
};

use dataplane_common::{v4_mapped, FqdnKey, FqdnValue};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};

use super::{
    answer,
    pattern::Pattern,
    solicit::{Asked, Pending, QueryKey},
    spec::FqdnRule,
    stream::{StreamKey, Streams},
};

/// Settings.
#[derive(Clone, Debug)]
pub struct Limits {
    pub min_ttl: Duration,
    /// Longest life of an address learned from an answer, whatever TTL it claims.
    pub max_ttl: Duration,
    pub grace: Duration,
    pub max_ips_per_name: usize,
    /// How long after a query its answer still counts.
    pub query_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(3600),
            grace: Duration::from_secs(60),
            max_ips_per_name: 64,
            query_timeout: Duration::from_secs(10),
        }
    }
}

/// A compiled FqdnPolicy rule that applies to an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotRule {
    pub rule_id: u32,
    pub rule: FqdnRule,
    /// The resolvers whose answers this rule learns from (its policy's, or the agent's).
    pub resolvers: Vec<IpAddr>,
}

#[derive(Clone, Debug)]
struct Entry {
    value: FqdnValue,
}

/// What handling one answer produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Entries to write before the answer is delivered.
    pub write: Vec<(FqdnKey, FqdnValue)>,
    /// Entries to remove (evicted).
    pub remove: Vec<FqdnKey>,
    /// `added`, `refreshed`, `no_rule`, `not_dns`, `malformed`, `no_match`, or why the answer
    /// was not trusted: `unsolicited`, `mismatched`, `late`, `untrusted_resolver`.
    pub result: &'static str,
    /// Addresses allowed (new or refreshed).
    pub addresses: usize,
    pub evicted: usize,
    /// The names of the answer (for flow records), when it allowed something.
    pub names: Vec<String>,
    /// An address gained a name it did not have (flow records' names need refreshing).
    pub names_changed: bool,
}

/// The engine's state.
#[derive(Default)]
pub struct Engine {
    pub limits: Limits,
    rules: BTreeMap<u32, Vec<SlotRule>>,
    entries: BTreeMap<FqdnKey, Entry>,
    /// (slot, qname) → addresses, oldest first.
    per_name: BTreeMap<(u32, String), VecDeque<IpAddr>>,
    names: BTreeMap<String, u32>,
    /// address → names that gave it (for flow records).
    pub names_of_addr: BTreeMap<IpAddr, BTreeSet<String>>,
    /// Queries the endpoints sent, which answers must match.
    pending: Pending,
    /// TCP answers waiting for the rest of their message.
    streams: Streams,
}

/// What handling one held answer frame gave: an outcome per DNS message it completed, and the
/// frames to deliver now (the frame itself; for TCP, every segment of a message once it is
/// whole, or none while it waits).
#[derive(Debug, Default)]
pub struct Answered {
    pub outcomes: Vec<Outcome>,
    pub deliver: Vec<Vec<u8>>,
}

/// The transport payload of a frame, with the addresses and ports it travelled between.
struct Dns<'a> {
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    proto: u8,
    /// TCP sequence number (0 for UDP).
    seq: u32,
    /// UDP: the DNS message; TCP: the segment's payload (length-prefixed messages).
    payload: &'a [u8],
}

/// The first whole length-prefixed message of a TCP payload.
fn first_message(b: &[u8]) -> Result<&[u8], &'static str> {
    if b.len() < 2 {
        return Err("not_dns");
    }
    let n = u16::from_be_bytes([b[0], b[1]]) as usize;
    b.get(2..2 + n).ok_or("malformed")
}

/// Split an Ethernet frame into its addresses, ports and transport payload.
fn split(frame: &[u8]) -> Result<Dns<'_>, &'static str> {
    let p = SlicedPacket::from_ethernet(frame).map_err(|_| "malformed")?;
    let (src, dst) = match &p.net {
        Some(NetSlice::Ipv4(h)) => (
            IpAddr::V4(h.header().source_addr()),
            IpAddr::V4(h.header().destination_addr()),
        ),
        Some(NetSlice::Ipv6(h)) => (
            IpAddr::V6(h.header().source_addr()),
            IpAddr::V6(h.header().destination_addr()),
        ),
        _ => return Err("not_dns"),
    };
    let (sport, dport, proto, seq, payload) = match &p.transport {
        Some(TransportSlice::Udp(u)) => (u.source_port(), u.destination_port(), 17, 0, u.payload()),
        Some(TransportSlice::Tcp(t)) => (
            t.source_port(),
            t.destination_port(),
            6,
            t.sequence_number(),
            t.payload(),
        ),
        _ => return Err("not_dns"),
    };
    Ok(Dns {
        src,
        sport,
        dst,
        dport,
        proto,
        seq,
        payload,
    })
}

/// An address as the kernel keys it (IPv4 mapped).
fn addr_of(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => v4_mapped(a.octets()),
        IpAddr::V6(a) => a.octets(),
    }
}

fn key(slot: u32, ip: IpAddr, proto: u8, port: u16) -> FqdnKey {
    FqdnKey {
        slot,
        addr: addr_of(ip),
        port,
        proto,
        _pad: 0,
    }
}

/// A rule that matched an answer: its id and the (protocol, port) keys it allows
/// (`(0, 0)`: every port of every protocol).
type Matched = (u32, Vec<(u8, u16)>);

/// The rules among `rules` with a pattern matching a name of the answer's chain.
fn matching<'a>(rules: impl Iterator<Item = &'a SlotRule>, chain: &[String]) -> Vec<Matched> {
    rules
        .filter(|r| {
            r.rule
                .patterns
                .iter()
                .any(|pat: &Pattern| chain.iter().any(|n| pat.matches(n)))
        })
        .map(|r| {
            let ports = match &r.rule.ports {
                None => vec![(0, 0)],
                Some(ps) => ps.iter().map(|(p, n)| (p.number(), *n)).collect(),
            };
            (r.rule_id, ports)
        })
        .collect()
}

impl Engine {
    pub fn new(limits: Limits) -> Self {
        Engine {
            limits,
            ..Default::default()
        }
    }

    /// The FQDN rules of every endpoint slot (replaces the previous set). Entries of slots
    /// that no longer have rules are returned for removal.
    pub fn set_rules(&mut self, rules: BTreeMap<u32, Vec<SlotRule>>) -> Vec<FqdnKey> {
        self.rules = rules;
        let gone: Vec<FqdnKey> = self
            .entries
            .keys()
            .filter(|k| !self.rules.contains_key(&k.slot))
            .copied()
            .collect();
        for k in &gone {
            self.entries.remove(k);
        }
        self.per_name
            .retain(|(slot, _), _| self.rules.contains_key(slot));
        let rules = &self.rules;
        self.pending.retain_slots(|s| rules.contains_key(&s));
        gone
    }

    /// A copy of a query `slot` sent at `now_ns`: remember it for its answer. Returns the
    /// result for the metric: `query`, or `no_rule`, `not_dns`, `malformed`.
    pub fn on_query(&mut self, slot: u32, frame: &[u8], now_ns: u64) -> &'static str {
        if !self.rules.contains_key(&slot) {
            return "no_rule";
        }
        let d = match split(frame) {
            Ok(d) => d,
            Err(r) => return r,
        };
        let message = if d.proto == 6 {
            match first_message(d.payload) {
                Ok(m) => m,
                Err(r) => return r,
            }
        } else {
            d.payload
        };
        let Ok((id, qname, qtype)) = answer::question(message) else {
            return "malformed";
        };
        let key = QueryKey {
            slot,
            resolver: d.dst,
            resolver_port: d.dport,
            client_port: d.sport,
            proto: d.proto,
            id,
        };
        let deadline_ns = now_ns + self.limits.query_timeout.as_nanos() as u64;
        self.pending.insert(
            key,
            Asked {
                qname,
                qtype,
                deadline_ns,
            },
        );
        "query"
    }

    /// Queries waiting for their answer.
    pub fn pending_queries(&self) -> usize {
        self.pending.len()
    }

    /// Adopt an entry found in the pinned map at start.
    pub fn adopt(&mut self, key: FqdnKey, value: FqdnValue) {
        self.entries.insert(key, Entry { value });
    }

    fn name_id(&mut self, name: &str) -> u32 {
        if let Some(id) = self.names.get(name) {
            return *id;
        }
        let id = self.names.len() as u32 + 1;
        self.names.insert(name.to_owned(), id);
        id
    }

    /// Handle one held-back frame going out of `slot` at monotonic time `now_ns`: learn what
    /// it completes, and say which frames to deliver.
    pub fn on_answer(&mut self, slot: u32, frame: &[u8], now_ns: u64) -> Answered {
        let mut a = Answered::default();
        let only = |result| Answered {
            outcomes: vec![Outcome {
                result,
                ..Outcome::default()
            }],
            deliver: vec![frame.to_vec()],
        };
        if !self.rules.contains_key(&slot) {
            return only("no_rule");
        }
        let d = match split(frame) {
            Ok(d) => d,
            Err(r) => return only(r),
        };
        if d.proto != 6 {
            a.outcomes
                .push(self.on_message(slot, &d, d.payload, now_ns));
            a.deliver.push(frame.to_vec());
            return a;
        }
        if d.payload.is_empty() {
            return only("not_dns");
        }
        let key = StreamKey {
            slot,
            src: d.src,
            sport: d.sport,
            dst: d.dst,
            dport: d.dport,
        };
        let fed = self
            .streams
            .feed(key, d.seq, d.payload, frame.to_vec(), now_ns);
        for m in &fed.messages {
            let o = self.on_message(slot, &d, m, now_ns);
            a.outcomes.push(o);
        }
        if fed.abandoned {
            a.outcomes.push(Outcome {
                result: "malformed",
                ..Outcome::default()
            });
        }
        a.deliver = fed.deliver;
        a
    }

    /// TCP segments held longer than the reassembly deadline: (slot, frames) to deliver
    /// unlearned.
    pub fn stalled_streams(&mut self, now_ns: u64) -> Vec<(u32, Vec<Vec<u8>>)> {
        self.streams.expire(now_ns)
    }

    /// [`Engine::on_answer`] for a frame that holds one whole message (UDP, or TCP in one
    /// segment): its outcome.
    pub fn on_frame(&mut self, slot: u32, frame: &[u8], now_ns: u64) -> Outcome {
        self.on_answer(slot, frame, now_ns)
            .outcomes
            .pop()
            .unwrap_or(Outcome {
                result: "held",
                ..Outcome::default()
            })
    }

    /// One DNS answer message of `slot`, which travelled as `d` says.
    fn on_message(&mut self, slot: u32, d: &Dns<'_>, message: &[u8], now_ns: u64) -> Outcome {
        let mut out = Outcome::default();
        let ans = match answer::parse(message) {
            Ok(a) => a,
            Err(_) => {
                out.result = "malformed";
                return out;
            }
        };
        let key = QueryKey {
            slot,
            resolver: d.src,
            resolver_port: d.sport,
            client_port: d.dport,
            proto: d.proto,
            id: ans.id,
        };
        if let Err(u) = self.pending.take(&key, &ans.qname, ans.qtype, now_ns) {
            out.result = u.as_str();
            return out;
        }
        let rules = &self.rules[&slot];
        if !rules.iter().any(|r| r.resolvers.contains(&d.src)) {
            out.result = "untrusted_resolver";
            return out;
        }
        let trusted = rules.iter().filter(|r| r.resolvers.contains(&d.src));
        let matched = matching(trusted, &ans.chain);
        self.apply(slot, &matched, &ans, now_ns, self.limits.min_ttl)
    }

    /// Distinct names and patterns the endpoints' rules allow.
    pub fn pattern_count(&self) -> usize {
        self.rules
            .values()
            .flatten()
            .flat_map(|r| r.rule.patterns.iter().map(ToString::to_string))
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// Every exact name some endpoint's rules allow (what the agent pre-resolves).
    pub fn exact_names(&self) -> BTreeSet<String> {
        self.rules
            .values()
            .flatten()
            .flat_map(|r| {
                r.rule
                    .patterns
                    .iter()
                    .filter_map(|p| p.exact().map(str::to_owned))
            })
            .collect()
    }

    /// The agent resolved `name` itself: allow its addresses for every endpoint whose rules
    /// name it exactly, for at least `min_life` (so apps that cache addresses keep working
    /// between two resolutions).
    pub fn on_resolved(
        &mut self,
        name: &str,
        addrs: &[(IpAddr, u32)],
        now_ns: u64,
        min_life: Duration,
    ) -> Outcome {
        let name = super::pattern::normalize(name);
        let ans = answer::Answer {
            id: 0,
            qtype: 0,
            qname: name.clone(),
            chain: vec![name.clone()],
            addrs: addrs.to_vec(),
            truncated: false,
        };
        let slots: Vec<(u32, Vec<Matched>)> = self
            .rules
            .iter()
            .filter(|(_, rs)| {
                rs.iter().any(|r| {
                    r.rule
                        .patterns
                        .iter()
                        .any(|p| p.exact() == Some(name.as_str()))
                })
            })
            .map(|(s, rs)| (*s, matching(rs.iter(), &ans.chain)))
            .collect();
        let mut total = Outcome {
            result: "no_rule",
            ..Outcome::default()
        };
        let floor = min_life.max(self.limits.min_ttl);
        for (slot, matched) in slots {
            let o = self.apply(slot, &matched, &ans, now_ns, floor);
            total.write.extend(o.write);
            total.remove.extend(o.remove);
            total.addresses += o.addresses;
            total.evicted += o.evicted;
            total.result = o.result;
            total.names = o.names;
            total.names_changed |= o.names_changed;
        }
        total
    }

    /// Put an answer's addresses into `slot`'s allowlist, for the rules that matched it.
    fn apply(
        &mut self,
        slot: u32,
        matched: &[Matched],
        ans: &answer::Answer,
        now_ns: u64,
        min_ttl: Duration,
    ) -> Outcome {
        let mut out = Outcome::default();
        if matched.is_empty() || ans.addrs.is_empty() {
            out.result = "no_match";
            return out;
        }
        let name_id = self.name_id(&ans.qname);
        let mut refreshed_only = true;
        // Keys this answer created: evicted again within the same answer (an answer with more
        // addresses than the bound), they were never in the kernel and must not be written.
        let mut fresh = BTreeSet::new();
        for (ip, ttl) in &ans.addrs {
            let ttl = Duration::from_secs(u64::from(*ttl))
                .min(self.limits.max_ttl)
                .max(min_ttl);
            let expires_ns = now_ns + ttl.as_nanos() as u64;
            // Bound the addresses per (endpoint, name), oldest out first.
            let list = self.per_name.entry((slot, ans.qname.clone())).or_default();
            if let Some(pos) = list.iter().position(|a| a == ip) {
                list.remove(pos);
            } else {
                refreshed_only = false;
            }
            list.push_back(*ip);
            while list.len() > self.limits.max_ips_per_name {
                let old = list.pop_front().expect("non-empty");
                out.evicted += 1;
                // Keys order by slot, then address: the address's entries are one range.
                let (lo, hi) = (key(slot, old, 0, 0), key(slot, old, u8::MAX, u16::MAX));
                let keys: Vec<FqdnKey> = self
                    .entries
                    .range(
                        lo..=FqdnKey {
                            _pad: u8::MAX,
                            ..hi
                        },
                    )
                    .map(|(k, _)| *k)
                    .collect();
                for k in keys {
                    self.entries.remove(&k);
                    if !fresh.remove(&k) {
                        out.remove.push(k);
                    }
                }
            }
            for (rule_id, ports) in matched {
                for &(proto, port) in ports {
                    let k = key(slot, *ip, proto, port);
                    let value = FqdnValue {
                        expires_ns,
                        grace_ns: expires_ns + self.limits.grace.as_nanos() as u64,
                        rule_id: *rule_id,
                        name_id,
                    };
                    // Never shorten what another answer allowed.
                    let e = self.entries.entry(k).or_insert_with(|| {
                        fresh.insert(k);
                        Entry { value }
                    });
                    if value.expires_ns >= e.value.expires_ns {
                        e.value = value;
                    }
                    out.write.push((k, e.value));
                }
            }
            let names = self.names_of_addr.entry(*ip).or_default();
            let before = names.len();
            names.extend(ans.chain.iter().cloned());
            out.names_changed |= names.len() > before;
            out.addresses += 1;
        }
        out.write.retain(|(k, _)| self.entries.contains_key(k));
        out.names = ans.chain.clone();
        out.result = if refreshed_only { "refreshed" } else { "added" };
        out
    }

    /// Remove the entries whose grace period ended at `now_ns` (the kernel already refuses
    /// new connections once their TTL passed).
    pub fn gc(&mut self, now_ns: u64) -> Vec<FqdnKey> {
        self.pending.expire(now_ns);
        let mut remove = Vec::new();
        for (k, e) in self.entries.iter() {
            if e.value.grace_ns <= now_ns {
                remove.push(*k);
            }
        }
        if remove.is_empty() {
            return remove;
        }
        for k in &remove {
            self.entries.remove(k);
        }
        // Forget addresses no entry holds any more.
        let live: BTreeSet<[u8; 16]> = self.entries.keys().map(|k| k.addr).collect();
        for list in self.per_name.values_mut() {
            list.retain(|ip| live.contains(&addr_of(*ip)));
        }
        self.per_name.retain(|_, l| !l.is_empty());
        self.names_of_addr
            .retain(|ip, _| live.contains(&addr_of(*ip)));
        remove
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::{
        op::{Message, MessageType, Query},
        rr::{rdata, Name, RData, Record, RecordType},
    };
    use policies::model::Protocol;
    use std::str::FromStr;

    const SLOT: u32 = 7;

    /// The answer message (id `id`, type A question `q`) with `records` (name, TTL, address or
    /// CNAME target).
    fn response(id: u16, q: &str, records: &[(&str, u32, &str)]) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(id)
            .set_message_type(MessageType::Response)
            .add_query(Query::query(Name::from_str(q).unwrap(), RecordType::A));
        for (name, ttl, data) in records {
            let rd = match data.parse::<IpAddr>() {
                Ok(IpAddr::V4(a)) => RData::A(rdata::A(a)),
                Ok(IpAddr::V6(a)) => RData::AAAA(rdata::AAAA(a)),
                Err(_) => RData::CNAME(rdata::CNAME(Name::from_str(data).unwrap())),
            };
            m.add_answer(Record::from_rdata(Name::from_str(name).unwrap(), *ttl, rd));
        }
        m.to_vec().unwrap()
    }

    /// The answer to query id 1 for `q`, from `resolver`:53 to 10.0.0.1:40000.
    fn frame_from(resolver: [u8; 4], q: &str, records: &[(&str, u32, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        etherparse::PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4(resolver, [10, 0, 0, 1], 64)
            .udp(53, 40000)
            .write(&mut out, &response(1, q, records))
            .unwrap();
        out
    }

    fn frame(q: &str, records: &[(&str, u32, &str)]) -> Vec<u8> {
        frame_from([192, 0, 2, 53], q, records)
    }

    /// The pod's query for `q` (id 1, type A) from 10.0.0.1:40000 to `resolver`:53.
    fn query_from(q: &str, resolver: [u8; 4], id: u16) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(id)
            .set_message_type(MessageType::Query)
            .add_query(Query::query(Name::from_str(q).unwrap(), RecordType::A));
        let mut out = Vec::new();
        etherparse::PacketBuilder::ethernet2([2; 6], [1; 6])
            .ipv4([10, 0, 0, 1], resolver, 64)
            .udp(40000, 53)
            .write(&mut out, &m.to_vec().unwrap())
            .unwrap();
        out
    }

    fn query(q: &str) -> Vec<u8> {
        query_from(q, [192, 0, 2, 53], 1)
    }

    /// The pod asks `q`, then the answer `records` arrives.
    fn asked_and_answered(
        e: &mut Engine,
        slot: u32,
        q: &str,
        records: &[(&str, u32, &str)],
        now: u64,
    ) -> Outcome {
        e.on_query(slot, &query(q), now);
        e.on_frame(slot, &frame(q, records), now)
    }

    fn engine(patterns: &[&str], ports: Option<Vec<(Protocol, u16)>>) -> Engine {
        let mut e = Engine::new(Limits {
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(3600),
            grace: Duration::from_secs(30),
            max_ips_per_name: 2,
            query_timeout: Duration::from_secs(10),
        });
        e.set_rules(BTreeMap::from([(
            SLOT,
            vec![SlotRule {
                rule_id: 0xfff0_0001,
                rule: FqdnRule {
                    patterns: patterns
                        .iter()
                        .map(|p| Pattern::parse(p).unwrap())
                        .collect(),
                    ports,
                },
                resolvers: vec!["192.0.2.53".parse().unwrap()],
            }],
        )]));
        e
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn answers_for_allowed_names_become_entries_with_their_ttl() {
        let mut e = engine(&["*.example.com"], Some(vec![(Protocol::Tcp, 443)]));
        let o = asked_and_answered(
            &mut e,
            SLOT,
            "www.example.com.",
            &[
                ("www.example.com.", 300, "edge.cdn.net."),
                ("edge.cdn.net.", 2, "192.0.2.7"),
            ],
            100 * S,
        );
        assert_eq!(o.result, "added");
        assert_eq!(o.write.len(), 1);
        let (k, v) = o.write[0];
        assert_eq!((k.slot, k.port, k.proto), (SLOT, 443, 6));
        assert_eq!(k.addr, v4_mapped([192, 0, 2, 7]));
        // TTL 2 s is raised to the 5 s minimum.
        assert_eq!(v.expires_ns, 105 * S);
        assert_eq!(o.names, ["www.example.com", "edge.cdn.net"]);
        // Another endpoint, an unmatched name, a non-answer: nothing.
        assert_eq!(
            e.on_frame(
                99,
                &frame("www.example.com.", &[("www.example.com.", 60, "192.0.2.8")]),
                0
            )
            .result,
            "no_rule"
        );
        assert_eq!(
            asked_and_answered(
                &mut e,
                SLOT,
                "example.com.",
                &[("example.com.", 60, "192.0.2.9")],
                0
            )
            .result,
            "no_match"
        );
        assert_eq!(e.on_frame(SLOT, b"garbage", 0).result, "malformed");
        assert_eq!(e.len(), 1);
    }

    #[test]
    fn addresses_per_name_are_bounded_and_entries_outlive_their_ttl_by_the_grace() {
        let mut e = engine(&["api.example.com"], None);
        for (i, ip) in ["192.0.2.1", "192.0.2.2", "192.0.2.3"].iter().enumerate() {
            let o = asked_and_answered(
                &mut e,
                SLOT,
                "api.example.com.",
                &[("api.example.com.", 60, ip)],
                i as u64 * S,
            );
            assert_eq!(o.write[0].0.port, 0, "no ports: any port, any protocol");
            if i == 2 {
                assert_eq!(o.evicted, 1, "the oldest address goes");
                assert_eq!(o.remove[0].addr, v4_mapped([192, 0, 2, 1]));
            }
        }
        assert_eq!(e.len(), 2);
        // TTL 60 s, grace 30 s: entries stay (for re-checks of live connections) until 90 s
        // after they were written; the kernel refuses new connections after 60 s.
        let v = e.entries.values().next().unwrap().value;
        assert_eq!(v.grace_ns - v.expires_ns, 30 * S);
        assert!(e.gc(70 * S).is_empty());
        assert_eq!(e.gc(91 * S).len(), 1, "the address written at 1 s");
        assert_eq!(e.gc(92 * S).len(), 1);
        assert!(e.is_empty());
        assert!(e.names_of_addr.is_empty());
    }

    #[test]
    fn one_answer_over_the_bound_writes_only_what_it_keeps() {
        let mut e = engine(&["big.example.com"], None);
        let first = asked_and_answered(
            &mut e,
            SLOT,
            "big.example.com.",
            &[("big.example.com.", 60, "192.0.2.1")],
            0,
        );
        assert_eq!(first.write.len(), 1);
        // Four more addresses in one answer, bound 2: the old one and the first two new ones go.
        let records: Vec<(&str, u32, &str)> = ["192.0.2.2", "192.0.2.3", "192.0.2.4", "192.0.2.5"]
            .iter()
            .map(|ip| ("big.example.com.", 60, *ip))
            .collect();
        let o = asked_and_answered(&mut e, SLOT, "big.example.com.", &records, S);
        assert_eq!(o.evicted, 3);
        let written: Vec<[u8; 16]> = o.write.iter().map(|(k, _)| k.addr).collect();
        assert_eq!(
            written,
            [v4_mapped([192, 0, 2, 4]), v4_mapped([192, 0, 2, 5])],
            "addresses evicted within the answer are not written"
        );
        let removed: Vec<[u8; 16]> = o.remove.iter().map(|k| k.addr).collect();
        assert_eq!(
            removed,
            [v4_mapped([192, 0, 2, 1])],
            "only what the kernel held is removed"
        );
        assert_eq!(e.len(), 2);
    }

    #[test]
    fn fuzzed_answers_never_panic_and_add_nothing() {
        let mut e = engine(&["**.example.com"], None);
        let good = frame("a.example.com.", &[("a.example.com.", 60, "192.0.2.1")]);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let mut f = good.clone();
            for _ in 0..(seed % 6 + 1) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = 42 + (seed as usize % (f.len() - 42));
                f[i] = (seed >> 32) as u8;
            }
            let cut = 42 + (seed as usize >> 3) % (f.len() - 41);
            e.on_query(SLOT, &query("a.example.com."), 0);
            let o = e.on_frame(SLOT, &f[..cut], 0);
            // A mutated answer may still parse; it can only ever allow its own addresses.
            for (k, _) in o.write {
                assert_eq!(k.slot, SLOT);
            }
        }
        let before = e.len();
        e.on_query(SLOT, &query("a.example.com."), 0);
        assert_eq!(
            e.on_frame(SLOT, &good[..good.len() - 1], 0).write.len(),
            0,
            "a cut answer"
        );
        assert_eq!(e.len(), before);
    }

    /// An answer is learned only for a query the endpoint sent to a resolver its rule trusts,
    /// once, in time, and never for longer than the TTL cap.
    #[test]
    fn only_answers_to_the_pods_own_queries_are_learned() {
        let mut e = engine(&["api.example.com"], None);
        let answer = frame("api.example.com.", &[("api.example.com.", 60, "192.0.2.7")]);
        assert_eq!(e.on_frame(SLOT, &answer, 0).result, "unsolicited");
        // Asked another name with the same id and ports.
        e.on_query(SLOT, &query("other.example.com."), 0);
        assert_eq!(e.on_frame(SLOT, &answer, 0).result, "mismatched");
        // Asked the right question, answered too late.
        e.on_query(SLOT, &query("api.example.com."), 0);
        assert_eq!(e.on_frame(SLOT, &answer, 11 * S).result, "late");
        // Asked with another id.
        let other_id = query_from("api.example.com.", [192, 0, 2, 53], 9);
        assert_eq!(e.on_query(SLOT, &other_id, 0), "query");
        assert_eq!(e.on_frame(SLOT, &answer, 0).result, "unsolicited");
        // Asked a resolver the rule does not trust: the answer comes from there.
        let untrusted = frame_from(
            [203, 0, 113, 53],
            "api.example.com.",
            &[("api.example.com.", 60, "203.0.113.66")],
        );
        e.on_query(
            SLOT,
            &query_from("api.example.com.", [203, 0, 113, 53], 1),
            0,
        );
        assert_eq!(e.on_frame(SLOT, &untrusted, 0).result, "untrusted_resolver");
        assert!(e.is_empty(), "nothing learned so far");
        // The real thing, once; a replay of the same answer is unsolicited.
        e.on_query(SLOT, &query("api.example.com."), 0);
        assert_eq!(e.on_frame(SLOT, &answer, S).result, "added");
        assert_eq!(e.on_frame(SLOT, &answer, S).result, "unsolicited");
        // A TTL of 2^31 s is capped.
        let huge = frame(
            "api.example.com.",
            &[("api.example.com.", 1 << 31, "192.0.2.8")],
        );
        e.on_query(SLOT, &query("api.example.com."), 0);
        let o = e.on_frame(SLOT, &huge, 0);
        assert_eq!(o.result, "added");
        let v = o
            .write
            .iter()
            .find(|(k, _)| k.addr == v4_mapped([192, 0, 2, 8]))
            .unwrap()
            .1;
        assert_eq!(v.expires_ns, 3600 * S);
        // A query copy that is an answer, or garbage, is not remembered.
        assert_eq!(e.on_query(SLOT, &answer, 0), "malformed");
        assert_eq!(e.on_query(SLOT, b"junk", 0), "malformed");
        assert_eq!(e.on_query(99, &query("api.example.com."), 0), "no_rule");
        assert_eq!(
            e.pending_queries(),
            1,
            "only the query with id 9, never answered"
        );
        assert_eq!(e.gc(10 * S).len(), 0);
        assert_eq!(e.pending_queries(), 0, "forgotten at its deadline");
    }

    /// A TCP answer split over segments is learned once whole, and every segment is delivered
    /// then, in order; before that nothing is delivered.
    #[test]
    fn tcp_answers_in_several_segments_are_reassembled() {
        let mut e = engine(&["api.example.com"], None);
        let tcp = |src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, seq: u32, p: &[u8]| {
            let mut out = Vec::new();
            etherparse::PacketBuilder::ethernet2([1; 6], [2; 6])
                .ipv4(src, dst, 64)
                .tcp(sport, dport, seq, 65535)
                .write(&mut out, p)
                .unwrap();
            out
        };
        let framed = |m: Vec<u8>| {
            let mut v = (m.len() as u16).to_be_bytes().to_vec();
            v.extend(m);
            v
        };
        let mut q = Message::new();
        q.set_id(3)
            .set_message_type(MessageType::Query)
            .add_query(Query::query(
                Name::from_str("api.example.com.").unwrap(),
                RecordType::A,
            ));
        let query = framed(q.to_vec().unwrap());
        assert_eq!(
            e.on_query(
                SLOT,
                &tcp([10, 0, 0, 1], [192, 0, 2, 53], 40000, 53, 1, &query),
                0
            ),
            "query"
        );
        let answer = framed(response(
            3,
            "api.example.com.",
            &[("api.example.com.", 60, "192.0.2.77")],
        ));
        let (a, b) = answer.split_at(1);
        let first = tcp([192, 0, 2, 53], [10, 0, 0, 1], 53, 40000, 500, a);
        let second = tcp([192, 0, 2, 53], [10, 0, 0, 1], 53, 40000, 501, b);
        let held = e.on_answer(SLOT, &first, 0);
        assert!(held.deliver.is_empty() && held.outcomes.is_empty());
        let done = e.on_answer(SLOT, &second, 0);
        assert_eq!(done.deliver, [first.clone(), second.clone()]);
        assert_eq!(done.outcomes.len(), 1);
        assert_eq!(done.outcomes[0].result, "added");
        assert_eq!(done.outcomes[0].write[0].0.addr, v4_mapped([192, 0, 2, 77]));
        // A stream that never completes is released unlearned after the deadline.
        assert!(e.on_answer(SLOT, &first, S).deliver.is_empty());
        assert!(e.stalled_streams(S).is_empty());
        assert_eq!(e.stalled_streams(3 * S), [(SLOT, vec![first])]);
    }
}
