//! Port sets and the decomposition of port ranges into the prefix blocks the data path stores.

use std::fmt;

/// A set of ports: sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSet(Vec<(u16, u16)>);

impl PortSet {
    pub fn empty() -> Self {
        PortSet(Vec::new())
    }

    /// Every real port, 1-65535.
    pub fn all() -> Self {
        PortSet(vec![(1, 65535)])
    }

    pub fn range(lo: u16, hi: u16) -> Self {
        let mut s = PortSet::empty();
        s.insert(lo, hi);
        s
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn is_all(&self) -> bool {
        self.0 == [(1, 65535)] || self.0 == [(0, 65535)]
    }

    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.0
    }

    pub fn contains(&self, p: u16) -> bool {
        self.0.iter().any(|&(a, b)| a <= p && p <= b)
    }

    /// Add `lo..=hi` (port 0 is dropped: it is not a port).
    pub fn insert(&mut self, lo: u16, hi: u16) {
        let lo = lo.max(1);
        if lo > hi {
            return;
        }
        self.0.push((lo, hi));
        self.0.sort();
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(self.0.len());
        for &(a, b) in &self.0 {
            match merged.last_mut() {
                Some(last) if a as u32 <= last.1 as u32 + 1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        self.0 = merged;
    }

    pub fn union(&self, other: &PortSet) -> PortSet {
        let mut s = self.clone();
        for &(a, b) in &other.0 {
            s.insert(a, b);
        }
        s
    }

    pub fn intersect(&self, other: &PortSet) -> PortSet {
        let mut out = PortSet::empty();
        for &(a, b) in &self.0 {
            for &(c, d) in &other.0 {
                let (lo, hi) = (a.max(c), b.min(d));
                if lo <= hi {
                    out.insert(lo, hi);
                }
            }
        }
        out
    }

    /// Ports in `self` and not in `other`.
    pub fn minus(&self, other: &PortSet) -> PortSet {
        let mut out = PortSet::empty();
        for &(a, b) in &self.0 {
            let mut lo = a as u32;
            for &(c, d) in &other.0 {
                let (c, d) = (c as u32, d as u32);
                if d < lo || c > b as u32 {
                    continue;
                }
                if c > lo {
                    out.insert(lo as u16, (c - 1) as u16);
                }
                lo = d + 1;
            }
            if lo <= b as u32 {
                out.insert(lo as u16, b);
            }
        }
        out
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|&(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Cover `lo..=hi` exactly with aligned prefix blocks: (first port, prefix length), fewest
/// blocks, ascending. 16 is one port, 0 is every port.
pub fn prefix_blocks(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (lo as u32, hi as u32);
    while lo <= hi {
        // Largest aligned block starting at lo that does not pass hi.
        let mut size = if lo == 0 {
            1u32 << 16
        } else {
            1u32 << lo.trailing_zeros()
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((lo as u16, 16 - size.trailing_zeros() as u8));
        lo += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn blocks_examples() {
        assert_eq!(prefix_blocks(80, 80), vec![(80, 16)]);
        assert_eq!(prefix_blocks(0, 65535), vec![(0, 0)]);
        assert_eq!(prefix_blocks(8192, 16383), vec![(8192, 3)]);
        assert_eq!(prefix_blocks(1, 3), vec![(1, 16), (2, 15)]);
    }

    #[test]
    fn sets() {
        let mut s = PortSet::range(1, 79);
        s.insert(81, 65535);
        assert_eq!(s.to_string(), "1-79,81-65535");
        assert_eq!(PortSet::all().minus(&PortSet::range(80, 80)), s);
        assert!(s.union(&PortSet::range(80, 80)).is_all());
        assert_eq!(
            s.intersect(&PortSet::range(70, 90)).to_string(),
            "70-79,81-90"
        );
    }

    proptest! {
        #[test]
        fn blocks_cover_exactly(a in any::<u16>(), b in any::<u16>()) {
            let (lo, hi) = (a.min(b), a.max(b));
            let blocks = prefix_blocks(lo, hi);
            let mut next = lo as u32;
            for (start, plen) in blocks {
                prop_assert_eq!(start as u32, next);
                let size = 1u32 << (16 - plen as u32);
                prop_assert_eq!(start as u32 % size, 0, "aligned");
                next += size;
            }
            prop_assert_eq!(next, hi as u32 + 1);
        }
    }
}
