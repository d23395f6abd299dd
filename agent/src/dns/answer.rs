//! What a DNS answer allows: the addresses of the asked name, following its CNAME chain.
//!
//! Only records on the chain from the question count: an answer carrying unrelated A records
//! (cache poisoning attempts, "additional" glue) opens nothing. A chain longer than
//! [`MAX_CHAIN`] or with a loop is cut there. The TTL of an address is the smallest TTL on the
//! chain that leads to it.

use std::net::IpAddr;

use hickory_proto::{
    op::{Message, MessageType, ResponseCode},
    rr::{RData, RecordType},
};

use super::pattern::normalize;

/// Most CNAME hops followed.
pub const MAX_CHAIN: usize = 16;

/// The useful part of an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The transaction id.
    pub id: u16,
    /// The question's record type (0 when the answer has no question).
    pub qtype: u16,
    /// The question's name (normalized).
    pub qname: String,
    /// The question followed by every CNAME target on its chain.
    pub chain: Vec<String>,
    /// Addresses at the end of the chain, with their TTL (seconds).
    pub addrs: Vec<(IpAddr, u32)>,
    /// The TC bit: a truncated UDP answer (the client will retry over TCP).
    pub truncated: bool,
}

/// Parse a DNS message (UDP payload, or a TCP message without its length prefix).
pub fn parse(bytes: &[u8]) -> Result<Answer, String> {
    let m = Message::from_vec(bytes).map_err(|e| format!("not a DNS message: {e}"))?;
    if m.message_type() != MessageType::Response {
        return Err("a query, not an answer".into());
    }
    if m.response_code() != ResponseCode::NoError {
        // NXDOMAIN and errors carry no addresses; still a valid answer to deliver.
        let (qname, qtype) = m
            .queries()
            .first()
            .map(|q| (normalize(&q.name().to_ascii()), u16::from(q.query_type())))
            .unwrap_or_default();
        return Ok(Answer {
            id: m.id(),
            qtype,
            chain: vec![qname.clone()],
            qname,
            addrs: Vec::new(),
            truncated: m.truncated(),
        });
    }
    let [q] = m.queries() else {
        return Err(format!("{} questions; expected one", m.queries().len()));
    };
    let qname = normalize(&q.name().to_ascii());
    let mut chain = vec![qname.clone()];
    // (name on the chain, smallest TTL to reach it)
    let mut reach: Vec<(String, u32)> = vec![(qname.clone(), u32::MAX)];
    let mut current = (qname.clone(), u32::MAX);
    for _ in 0..MAX_CHAIN {
        let next = m.answers().iter().find_map(|r| match r.data() {
            RData::CNAME(c) if normalize(&r.name().to_ascii()) == current.0 => {
                Some((normalize(&c.0.to_ascii()), r.ttl()))
            }
            _ => None,
        });
        match next {
            Some((target, ttl)) if !chain.contains(&target) => {
                current = (target.clone(), current.1.min(ttl));
                chain.push(target);
                reach.push(current.clone());
            }
            _ => break,
        }
    }
    let mut addrs = Vec::new();
    for r in m.answers() {
        let owner = normalize(&r.name().to_ascii());
        let Some((_, via)) = reach.iter().find(|(n, _)| *n == owner) else {
            continue;
        };
        let ip = match (r.record_type(), r.data()) {
            (RecordType::A, RData::A(a)) => IpAddr::V4(a.0),
            (RecordType::AAAA, RData::AAAA(a)) => IpAddr::V6(a.0),
            _ => continue,
        };
        addrs.push((ip, r.ttl().min(*via)));
    }
    Ok(Answer {
        id: m.id(),
        qtype: u16::from(q.query_type()),
        qname,
        chain,
        addrs,
        truncated: m.truncated(),
    })
}

/// A query's transaction id, question name (normalized) and record type. Exactly one question,
/// as every resolver sends.
pub fn question(bytes: &[u8]) -> Result<(u16, String, u16), String> {
    let m = Message::from_vec(bytes).map_err(|e| format!("not a DNS message: {e}"))?;
    if m.message_type() != MessageType::Query {
        return Err("an answer, not a query".into());
    }
    let [q] = m.queries() else {
        return Err(format!("{} questions; expected one", m.queries().len()));
    };
    Ok((
        m.id(),
        normalize(&q.name().to_ascii()),
        u16::from(q.query_type()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::{
        op::{Message, Query},
        rr::{rdata, Name, RData, Record},
    };
    use std::str::FromStr;

    fn answer(q: &str, records: Vec<Record>) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(7)
            .set_message_type(MessageType::Response)
            .add_query(Query::query(Name::from_str(q).unwrap(), RecordType::A));
        for r in records {
            m.add_answer(r);
        }
        m.to_vec().unwrap()
    }

    fn a(name: &str, ttl: u32, ip: &str) -> Record {
        Record::from_rdata(
            Name::from_str(name).unwrap(),
            ttl,
            RData::A(rdata::A(ip.parse().unwrap())),
        )
    }

    fn cname(name: &str, ttl: u32, target: &str) -> Record {
        Record::from_rdata(
            Name::from_str(name).unwrap(),
            ttl,
            RData::CNAME(rdata::CNAME(Name::from_str(target).unwrap())),
        )
    }

    #[test]
    fn follows_cname_chains_with_the_smallest_ttl() {
        let bytes = answer(
            "WWW.Example.com.",
            vec![
                cname("www.example.com.", 300, "edge.cdn.example.net."),
                cname("edge.cdn.example.net.", 30, "pop7.cdn.example.net."),
                a("pop7.cdn.example.net.", 120, "192.0.2.7"),
                a("pop7.cdn.example.net.", 10, "192.0.2.8"),
                // Not on the chain: must not be allowed.
                a("evil.example.org.", 3600, "203.0.113.66"),
            ],
        );
        let ans = parse(&bytes).unwrap();
        assert_eq!(ans.qname, "www.example.com");
        assert_eq!(
            ans.chain,
            [
                "www.example.com",
                "edge.cdn.example.net",
                "pop7.cdn.example.net"
            ]
        );
        assert_eq!(
            ans.addrs,
            vec![
                ("192.0.2.7".parse().unwrap(), 30),
                ("192.0.2.8".parse().unwrap(), 10)
            ]
        );
    }

    #[test]
    fn loops_and_queries_and_garbage() {
        let looped = answer(
            "a.example.com.",
            vec![
                cname("a.example.com.", 60, "b.example.com."),
                cname("b.example.com.", 60, "a.example.com."),
            ],
        );
        let ans = parse(&looped).unwrap();
        assert_eq!(ans.chain.len(), 2);
        assert!(ans.addrs.is_empty());

        let mut q = Message::new();
        q.add_query(Query::query(
            Name::from_str("a.example.com.").unwrap(),
            RecordType::A,
        ));
        assert!(parse(&q.to_vec().unwrap()).unwrap_err().contains("a query"));

        assert!(parse(&[]).is_err());
        assert!(parse(&[0xff; 11]).is_err());
        let good = answer("a.example.com.", vec![a("a.example.com.", 5, "192.0.2.1")]);
        for cut in 0..good.len() {
            // Every truncation is an error or a smaller answer, never a panic.
            let _ = parse(&good[..cut]);
        }
    }
}
