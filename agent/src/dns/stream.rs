//! DNS answers over TCP that arrive in several segments: the held segments of one stream are
//! put together until they hold whole messages (2-byte length prefix each), which are then
//! learned before every segment is delivered, in order.
//!
//! Bounded and never stuck: at most [`MAX_STREAMS`] streams of at most [`MAX_BUFFER`] bytes,
//! each for at most [`DEADLINE_NS`]; a segment out of order (a retransmission, a gap), a bound
//! or the deadline give the stream up: its segments are delivered as they are, unlearned (the
//! pod gets its answer; only the addresses of that answer are not allowed).

use std::{collections::BTreeMap, net::IpAddr};

/// Streams reassembled at once.
pub const MAX_STREAMS: usize = 1024;
/// Bytes buffered per stream: one largest DNS message and its length prefix.
pub const MAX_BUFFER: usize = 2 + 65_535;
/// How long segments are held waiting for the rest of their message.
pub const DEADLINE_NS: u64 = 2_000_000_000;

/// One direction of one TCP connection, as seen on one endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamKey {
    pub slot: u32,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
}

struct Stream {
    next_seq: u32,
    buf: Vec<u8>,
    frames: Vec<Vec<u8>>,
    since_ns: u64,
}

/// What feeding one segment gave.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fed {
    /// Whole messages completed (without their length prefix), to learn now.
    pub messages: Vec<Vec<u8>>,
    /// Frames to deliver now, in order (none while the stream waits for more).
    pub deliver: Vec<Vec<u8>>,
    /// The stream was given up: its frames are delivered unlearned.
    pub abandoned: bool,
}

/// Streams waiting for the rest of a message.
#[derive(Default)]
pub struct Streams {
    map: BTreeMap<StreamKey, Stream>,
}

/// Cut whole length-prefixed messages off the front of `buf`; returns them and the bytes used.
fn messages(buf: &[u8]) -> (Vec<Vec<u8>>, usize) {
    let (mut out, mut off) = (Vec::new(), 0);
    while buf.len() - off >= 2 {
        let n = u16::from_be_bytes([buf[off], buf[off + 1]]) as usize;
        if buf.len() - off < 2 + n {
            break;
        }
        out.push(buf[off + 2..off + 2 + n].to_vec());
        off += 2 + n;
    }
    (out, off)
}

impl Streams {
    /// Feed a held segment (`seq`, `payload`, the whole `frame`) of stream `key` at `now_ns`.
    pub fn feed(
        &mut self,
        key: StreamKey,
        seq: u32,
        payload: &[u8],
        frame: Vec<u8>,
        now_ns: u64,
    ) -> Fed {
        let mut st = match self.map.remove(&key) {
            Some(st) if st.next_seq == seq => st,
            Some(st) => {
                let mut deliver = st.frames;
                deliver.push(frame);
                return Fed {
                    deliver,
                    abandoned: true,
                    ..Fed::default()
                };
            }
            None => Stream {
                next_seq: seq,
                buf: Vec::new(),
                frames: Vec::new(),
                since_ns: now_ns,
            },
        };
        st.buf.extend_from_slice(payload);
        st.frames.push(frame);
        st.next_seq = seq.wrapping_add(payload.len() as u32);
        let (messages, used) = messages(&st.buf);
        if used == st.buf.len() {
            return Fed {
                messages,
                deliver: st.frames,
                abandoned: false,
            };
        }
        if st.buf.len() > MAX_BUFFER || self.map.len() >= MAX_STREAMS {
            return Fed {
                messages,
                deliver: st.frames,
                abandoned: true,
            };
        }
        st.buf.drain(..used);
        self.map.insert(key, st);
        Fed {
            messages,
            ..Fed::default()
        }
    }

    /// Give up the streams held past the deadline: their frames, to deliver unlearned.
    pub fn expire(&mut self, now_ns: u64) -> Vec<(u32, Vec<Vec<u8>>)> {
        let old: Vec<StreamKey> = self
            .map
            .iter()
            .filter(|(_, s)| now_ns.saturating_sub(s.since_ns) >= DEADLINE_NS)
            .map(|(k, _)| *k)
            .collect();
        old.into_iter()
            .filter_map(|k| self.map.remove(&k).map(|s| (k.slot, s.frames)))
            .collect()
    }

    /// Streams waiting.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// None waiting.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> StreamKey {
        StreamKey {
            slot: 1,
            src: "192.0.2.53".parse().unwrap(),
            sport: 53,
            dst: "10.0.0.1".parse().unwrap(),
            dport: 40000,
        }
    }

    fn framed(msg: &[u8]) -> Vec<u8> {
        let mut v = (msg.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(msg);
        v
    }

    #[test]
    fn a_message_in_three_segments_is_released_whole_with_every_frame() {
        let mut s = Streams::default();
        let msg = vec![7u8; 300];
        let bytes = framed(&msg);
        let parts = [&bytes[..1], &bytes[1..150], &bytes[150..]];
        let mut seq = 1000u32;
        for (i, p) in parts.iter().enumerate() {
            let fed = s.feed(key(), seq, p, vec![i as u8], 0);
            seq += p.len() as u32;
            if i < 2 {
                assert_eq!(fed, Fed::default(), "segment {i} is held");
            } else {
                assert_eq!(fed.messages, std::slice::from_ref(&msg));
                assert_eq!(fed.deliver, [vec![0u8], vec![1], vec![2]], "in order");
                assert!(!fed.abandoned);
            }
        }
        assert!(s.is_empty());
    }

    #[test]
    fn two_messages_and_a_tail_and_a_whole_one() {
        let mut s = Streams::default();
        let mut bytes = framed(b"one");
        bytes.extend(framed(b"two"));
        bytes.extend(&framed(b"three")[..3]);
        let fed = s.feed(key(), 5, &bytes, vec![0], 0);
        assert_eq!(
            fed.messages,
            [b"one".to_vec(), b"two".to_vec()],
            "learned at once"
        );
        assert!(fed.deliver.is_empty(), "held for the tail");
        let rest = &framed(b"three")[3..];
        let fed = s.feed(key(), 5 + bytes.len() as u32, rest, vec![1], 0);
        assert_eq!(fed.messages, [b"three".to_vec()]);
        assert_eq!(fed.deliver.len(), 2);
        // A whole message in one segment needs no state.
        let fed = s.feed(key(), 1, &framed(b"x"), vec![9], 0);
        assert_eq!(fed.deliver, [vec![9u8]]);
        assert!(s.is_empty());
    }

    #[test]
    fn gaps_retransmissions_bounds_and_the_deadline_give_up() {
        let mut s = Streams::default();
        let bytes = framed(&[1u8; 100]);
        assert!(s
            .feed(key(), 0, &bytes[..50], vec![0], 0)
            .deliver
            .is_empty());
        // A retransmission of the first segment.
        let fed = s.feed(key(), 0, &bytes[..50], vec![1], 0);
        assert!(fed.abandoned && fed.messages.is_empty());
        assert_eq!(fed.deliver, [vec![0u8], vec![1]]);
        // The deadline.
        assert!(s
            .feed(key(), 0, &bytes[..50], vec![2], 10)
            .deliver
            .is_empty());
        assert!(s.expire(10 + DEADLINE_NS - 1).is_empty());
        assert_eq!(s.expire(10 + DEADLINE_NS), [(1, vec![vec![2u8]])]);
        // Too many streams: the newest partial one is not kept.
        for i in 0..MAX_STREAMS as u16 {
            let k = StreamKey { dport: i, ..key() };
            assert!(s.feed(k, 0, &bytes[..10], vec![], 0).deliver.is_empty());
        }
        let k = StreamKey {
            dport: u16::MAX,
            ..key()
        };
        assert!(s.feed(k, 0, &bytes[..10], vec![3], 0).abandoned);
        assert_eq!(s.len(), MAX_STREAMS);
    }
}
