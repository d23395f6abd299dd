//! The DNS queries FQDN pods sent, which an answer must match to be learned.
//!
//! The kernel copies every query an FQDN endpoint sends to port 53, and holds an answer only
//! on the reverse of a connection the pod opened. Here an answer is further tied to one query:
//! the same endpoint, resolver address and port, client port, protocol and transaction id, the
//! same question (name and type), before the query's deadline. Each query is answered once.
//! So a peer, a forged packet, or an answer to a question the pod never asked opens nothing.
//!
//! Bounded: at most [`MAX_PER_SLOT`] outstanding queries per endpoint (the oldest is
//! forgotten, and its answer is then delivered unlearned), each forgotten at its deadline.

use std::{
    collections::{BTreeMap, VecDeque},
    net::IpAddr,
};

/// Outstanding queries kept per endpoint.
pub const MAX_PER_SLOT: usize = 256;

/// What identifies the query an answer answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueryKey {
    /// The endpoint slot (host-side interface) the query came from.
    pub slot: u32,
    /// The resolver the query went to.
    pub resolver: IpAddr,
    pub resolver_port: u16,
    /// The pod's source port.
    pub client_port: u16,
    /// 6 (TCP) or 17 (UDP).
    pub proto: u8,
    /// DNS transaction id.
    pub id: u16,
}

/// The question a query asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Asked {
    /// Normalized name.
    pub qname: String,
    pub qtype: u16,
    /// Monotonic ns after which an answer no longer counts.
    pub deadline_ns: u64,
}

/// Why an answer matched no query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unmatched {
    /// No outstanding query with this key (never asked, answered already, or forgotten).
    Unsolicited,
    /// A query with this key asked another question.
    Mismatched,
    /// The query's deadline has passed.
    Late,
}

impl Unmatched {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Unmatched::Unsolicited => "unsolicited",
            Unmatched::Mismatched => "mismatched",
            Unmatched::Late => "late",
        }
    }
}

/// Outstanding queries.
#[derive(Debug, Default)]
pub struct Pending {
    asked: BTreeMap<QueryKey, Asked>,
    /// Per endpoint, keys in the order they were asked (for the bound).
    order: BTreeMap<u32, VecDeque<QueryKey>>,
}

impl Pending {
    /// Record a query. A repeat of an outstanding key (a retransmission) replaces it.
    /// Returns how many older queries the bound forgot (0 or 1).
    pub fn insert(&mut self, key: QueryKey, asked: Asked) -> usize {
        let order = self.order.entry(key.slot).or_default();
        if self.asked.insert(key, asked).is_some() {
            order.retain(|k| *k != key);
        }
        order.push_back(key);
        let mut forgotten = 0;
        while order.len() > MAX_PER_SLOT {
            if let Some(old) = order.pop_front() {
                self.asked.remove(&old);
                forgotten += 1;
            }
        }
        forgotten
    }

    /// Match an answer to its query (and forget the query: it is answered).
    pub fn take(
        &mut self,
        key: &QueryKey,
        qname: &str,
        qtype: u16,
        now_ns: u64,
    ) -> Result<(), Unmatched> {
        let Some(a) = self.asked.get(key) else {
            return Err(Unmatched::Unsolicited);
        };
        if a.qname != qname || a.qtype != qtype {
            return Err(Unmatched::Mismatched);
        }
        let late = a.deadline_ns <= now_ns;
        self.forget(key);
        if late {
            return Err(Unmatched::Late);
        }
        Ok(())
    }

    fn forget(&mut self, key: &QueryKey) {
        self.asked.remove(key);
        if let Some(o) = self.order.get_mut(&key.slot) {
            o.retain(|k| k != key);
            if o.is_empty() {
                self.order.remove(&key.slot);
            }
        }
    }

    /// Forget queries past their deadline; returns how many.
    pub fn expire(&mut self, now_ns: u64) -> usize {
        let old: Vec<QueryKey> = self
            .asked
            .iter()
            .filter(|(_, a)| a.deadline_ns <= now_ns)
            .map(|(k, _)| *k)
            .collect();
        for k in &old {
            self.forget(k);
        }
        old.len()
    }

    /// Forget every query of endpoints not in `keep`.
    pub fn retain_slots(&mut self, keep: impl Fn(u32) -> bool) {
        self.asked.retain(|k, _| keep(k.slot));
        self.order.retain(|s, _| keep(*s));
    }

    /// Outstanding queries.
    pub fn len(&self) -> usize {
        self.asked.len()
    }

    /// None outstanding.
    pub fn is_empty(&self) -> bool {
        self.asked.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(slot: u32, id: u16) -> QueryKey {
        QueryKey {
            slot,
            resolver: "192.0.2.53".parse().unwrap(),
            resolver_port: 53,
            client_port: 40000,
            proto: 17,
            id,
        }
    }

    fn asked(name: &str, deadline_ns: u64) -> Asked {
        Asked {
            qname: name.into(),
            qtype: 1,
            deadline_ns,
        }
    }

    #[test]
    fn an_answer_matches_its_query_once() {
        let mut p = Pending::default();
        p.insert(key(1, 7), asked("a.example", 100));
        assert_eq!(
            p.take(&key(1, 8), "a.example", 1, 0),
            Err(Unmatched::Unsolicited),
            "another id"
        );
        assert_eq!(
            p.take(&key(2, 7), "a.example", 1, 0),
            Err(Unmatched::Unsolicited),
            "another endpoint"
        );
        assert_eq!(
            p.take(&key(1, 7), "b.example", 1, 0),
            Err(Unmatched::Mismatched),
            "another question"
        );
        assert_eq!(
            p.take(&key(1, 7), "a.example", 28, 0),
            Err(Unmatched::Mismatched),
            "another type"
        );
        assert_eq!(p.take(&key(1, 7), "a.example", 1, 50), Ok(()));
        assert_eq!(
            p.take(&key(1, 7), "a.example", 1, 50),
            Err(Unmatched::Unsolicited),
            "a second answer to one query"
        );
        assert!(p.is_empty());
    }

    #[test]
    fn late_answers_and_expiry() {
        let mut p = Pending::default();
        p.insert(key(1, 1), asked("a.example", 100));
        p.insert(key(1, 2), asked("a.example", 200));
        assert_eq!(
            p.take(&key(1, 1), "a.example", 1, 100),
            Err(Unmatched::Late)
        );
        assert_eq!(p.expire(150), 0);
        assert_eq!(p.expire(200), 1);
        assert!(p.is_empty());
    }

    #[test]
    fn outstanding_queries_are_bounded_per_endpoint() {
        let mut p = Pending::default();
        let mut forgotten = 0;
        for id in 0..(MAX_PER_SLOT as u16 + 10) {
            forgotten += p.insert(key(1, id), asked("a.example", 1000));
        }
        p.insert(key(2, 0), asked("a.example", 1000));
        assert_eq!(forgotten, 10);
        assert_eq!(p.len(), MAX_PER_SLOT + 1);
        assert_eq!(
            p.take(&key(1, 0), "a.example", 1, 0),
            Err(Unmatched::Unsolicited),
            "the oldest went first"
        );
        assert_eq!(p.take(&key(1, 10), "a.example", 1, 0), Ok(()));
        // A retransmission replaces its query instead of taking a second place.
        p.insert(key(2, 0), asked("a.example", 2000));
        assert_eq!(p.len(), MAX_PER_SLOT);
        p.retain_slots(|s| s != 1);
        assert_eq!(p.len(), 1);
    }
}
