//! Parsing feed bodies: plain lines (Spamhaus DROP, FireHOL), a CSV column, a JSON array.
//!
//! A bad line is counted and the first few are reported with their line numbers; it never
//! fails the feed. A CIDR with host bits set is taken as its network (and counted). Limits
//! bound the work a hostile body can cause: lines over [`MAX_LINE`] bytes are bad lines, and
//! more than [`MAX_ENTRIES`] entries fail the parse (the last good list stays in force).

use std::collections::BTreeSet;

use ipnetwork::IpNetwork;

use super::spec::Format;

/// Longest line read as an entry.
pub const MAX_LINE: usize = 4096;
/// Most entries one feed may hold.
pub const MAX_ENTRIES: usize = 4_000_000;
/// Bad lines reported by number (all are counted).
pub const REPORT_BAD: usize = 5;

/// The outcome of parsing one body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Distinct networks (addresses as /32 or /128).
    pub nets: BTreeSet<IpNetwork>,
    /// Lines (or array elements) that held no valid entry.
    pub bad: usize,
    /// The first [`REPORT_BAD`] bad lines: (1-based line or element number, what was wrong).
    pub first_bad: Vec<(usize, String)>,
    /// Entries given with host bits set, taken as their network.
    pub normalized: usize,
}

impl Parsed {
    fn bad(&mut self, line: usize, why: String) {
        self.bad += 1;
        if self.first_bad.len() < REPORT_BAD {
            self.first_bad.push((line, why));
        }
    }

    fn entry(&mut self, line: usize, text: &str) -> Result<(), String> {
        let t = text.trim();
        let net = match t.parse::<IpNetwork>() {
            Ok(n) => n,
            Err(_) => {
                let shown: String = t.chars().take(60).collect();
                self.bad(line, format!("{shown:?} is not an IP address or CIDR"));
                return Ok(());
            }
        };
        let net = if net.ip() != net.network() {
            self.normalized += 1;
            IpNetwork::new(net.network(), net.prefix()).expect("same prefix")
        } else {
            net
        };
        self.nets.insert(net);
        if self.nets.len() > MAX_ENTRIES {
            return Err(format!("more than {MAX_ENTRIES} entries"));
        }
        Ok(())
    }
}

/// Parse a feed body.
pub fn parse(body: &[u8], format: Format) -> Result<Parsed, String> {
    let body = body.strip_prefix(b"\xef\xbb\xbf").unwrap_or(body);
    let mut p = Parsed::default();
    match format {
        Format::Lines => {
            for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
                let n = i + 1;
                if raw.len() > MAX_LINE {
                    p.bad(
                        n,
                        format!("line of {} bytes, longer than {MAX_LINE}", raw.len()),
                    );
                    continue;
                }
                let Ok(line) = std::str::from_utf8(raw) else {
                    p.bad(n, "not UTF-8".into());
                    continue;
                };
                let data = line.split(['#', ';']).next().unwrap_or("").trim();
                if data.is_empty() {
                    continue;
                }
                // Extra columns after the address (FireHOL-style annotations) are ignored.
                let token = data.split_whitespace().next().unwrap_or("");
                p.entry(n, token)?;
            }
        }
        Format::Csv { column, header } => {
            let mut r = csv::ReaderBuilder::new()
                .has_headers(header)
                .flexible(true)
                .comment(Some(b'#'))
                .from_reader(body);
            for (i, rec) in r.byte_records().enumerate() {
                let n = i + 1 + usize::from(header);
                let rec = match rec {
                    Ok(r) => r,
                    Err(e) => {
                        p.bad(n, format!("not CSV: {e}"));
                        continue;
                    }
                };
                match rec.get(column).map(std::str::from_utf8) {
                    Some(Ok(f)) if f.len() <= MAX_LINE => p.entry(n, f)?,
                    Some(Ok(_)) => p.bad(n, format!("field longer than {MAX_LINE} bytes")),
                    Some(Err(_)) => p.bad(n, "not UTF-8".into()),
                    None => p.bad(n, format!("no column {column}")),
                }
            }
        }
        Format::Json => {
            let v: Vec<serde_json::Value> = serde_json::from_slice(body)
                .map_err(|e| format!("not a JSON array of strings: {e}"))?;
            for (i, item) in v.iter().enumerate() {
                match item.as_str() {
                    Some(s) if s.len() <= MAX_LINE => p.entry(i + 1, s)?,
                    Some(_) => p.bad(i + 1, format!("string longer than {MAX_LINE} bytes")),
                    None => p.bad(i + 1, format!("element {item} is not a string")),
                }
            }
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(p: &Parsed) -> Vec<String> {
        p.nets.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn spamhaus_drop() {
        let body = b"; Spamhaus DROP List 2026/11/23 - (c) 2026 The Spamhaus Project SLU\r\n; Last-Modified: Sun, 22 Nov 2026 21:00:00 GMT\r\n1.10.16.0/20 ; SBL256894\r\n1.19.0.0/16 ; SBL434604\r\n";
        let p = parse(body, Format::Lines).unwrap();
        assert_eq!(nets(&p), ["1.10.16.0/20", "1.19.0.0/16"]);
        assert_eq!(p.bad, 0);
    }

    #[test]
    fn firehol_with_ipv6_duplicates_and_host_bits() {
        let body = b"#\n# firehol_level1\n#\n\n0.0.0.0/8\n1.10.16.0/20\n1.10.16.0/20\n203.0.113.7\n2001:db8::/32\n198.51.100.9/24 extra annotation\n";
        let p = parse(body, Format::Lines).unwrap();
        assert_eq!(
            nets(&p),
            [
                "0.0.0.0/8",
                "1.10.16.0/20",
                "198.51.100.0/24",
                "203.0.113.7/32",
                "2001:db8::/32"
            ]
        );
        assert_eq!((p.normalized, p.bad), (1, 0));
    }

    #[test]
    fn csv_column_and_json_array() {
        let csv = b"first_seen,ip,family\n2026-11-01,203.0.113.5,x\n# note\n2026-11-02,198.51.100.0/25,y\n2026-11-03\n";
        let p = parse(
            csv,
            Format::Csv {
                column: 1,
                header: true,
            },
        )
        .unwrap();
        assert_eq!(nets(&p), ["198.51.100.0/25", "203.0.113.5/32"]);
        assert_eq!((p.bad, p.first_bad[0].1.as_str()), (1, "no column 1"));
        let p = parse(
            br#"["198.51.100.7", "2001:db8::/32", 42, "nope"]"#,
            Format::Json,
        )
        .unwrap();
        assert_eq!(nets(&p), ["198.51.100.7/32", "2001:db8::/32"]);
        assert_eq!(
            p.first_bad.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            [3, 4]
        );
        assert!(parse(br#"{"ips": []}"#, Format::Json)
            .unwrap_err()
            .contains("not a JSON array"));
        assert!(
            parse(&[b'['; 10_000], Format::Json).is_err(),
            "deep nesting is an error, not a crash"
        );
    }

    #[test]
    fn hostile_bodies_are_bounded_and_reported() {
        let mut body = b"garbage\n\xff\xfe\x00binary\n".to_vec();
        body.extend(vec![b'1'; 1 << 20]); // a 1 MiB line
        body.extend(b"\n10.0.0.0/8\n999.1.1.1\n10.0.0.1/33\n::ffff:zz\nx\ny\n");
        let p = parse(&body, Format::Lines).unwrap();
        assert_eq!(nets(&p), ["10.0.0.0/8"]);
        assert_eq!(p.bad, 8);
        assert_eq!(p.first_bad.len(), REPORT_BAD, "only the first few are kept");
        assert_eq!(
            p.first_bad[0],
            (1, "\"garbage\" is not an IP address or CIDR".to_string())
        );
        assert_eq!(p.first_bad[1], (2, "not UTF-8".to_string()));
        assert!(
            p.first_bad[2].1.contains("longer than 4096"),
            "{:?}",
            p.first_bad
        );
        assert_eq!(parse(b"", Format::Lines).unwrap(), Parsed::default());
        assert_eq!(
            parse(b"\xef\xbb\xbf192.0.2.1\n", Format::Lines)
                .unwrap()
                .nets
                .len(),
            1,
            "a BOM is not part of the first entry"
        );
    }
}
