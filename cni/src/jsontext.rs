//! Byte spans inside a JSON document: the top-level object's members and an array's elements.
//!
//! Edits made through these spans leave every other byte of a file as it was, which a
//! re-serialised document cannot (key order, indentation, escapes and number spellings would
//! all change). The input must already have been accepted by serde_json: the scanner finds
//! boundaries, it does not judge syntax. It never recurses, so nesting depth cannot exhaust the
//! stack, and it answers `None` instead of panicking when the input is not what it expects.

use std::ops::Range;

/// One member of an object: its decoded key and the span of its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The key with its escapes resolved (`"plu\u0067ins"` is `plugins`).
    pub key: String,
    /// The value's bytes, from its first to one past its last byte.
    pub value: Range<usize>,
}

/// An array's layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elements {
    /// The index of `[`.
    pub open: usize,
    /// Each element's span, in order.
    pub items: Vec<Range<usize>>,
    /// The index of `]`.
    pub close: usize,
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn skip_ws(text: &[u8], mut i: usize) -> usize {
    while text.get(i).copied().is_some_and(is_ws) {
        i += 1;
    }
    i
}

/// One past the closing quote of the string that opens at `i`.
fn string_end(text: &[u8], i: usize) -> Option<usize> {
    if text.get(i) != Some(&b'"') {
        return None;
    }
    let mut j = i + 1;
    loop {
        match text.get(j)? {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
}

/// One past the last byte of the value that starts at `i`.
fn value_end(text: &[u8], i: usize) -> Option<usize> {
    match text.get(i)? {
        b'"' => string_end(text, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match text.get(j)? {
                    b'"' => {
                        j = string_end(text, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while text
                .get(j)
                .is_some_and(|&b| !is_ws(b) && !matches!(b, b',' | b']' | b'}'))
            {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

/// The members of the top-level object, in file order, duplicates included.
pub fn members(text: &[u8]) -> Option<Vec<Member>> {
    let mut i = skip_ws(text, 0);
    if text.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(text, i + 1);
    let mut out = Vec::new();
    if text.get(i) == Some(&b'}') {
        return Some(out);
    }
    loop {
        let key_end = string_end(text, i)?;
        let key: String = serde_json::from_slice(text.get(i..key_end)?).ok()?;
        i = skip_ws(text, key_end);
        if text.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_ws(text, i + 1);
        let end = value_end(text, start)?;
        out.push(Member {
            key,
            value: start..end,
        });
        i = skip_ws(text, end);
        match text.get(i)? {
            b',' => i = skip_ws(text, i + 1),
            b'}' => return Some(out),
            _ => return None,
        }
    }
}

/// The layout of the array whose value spans `span`.
pub fn elements(text: &[u8], span: Range<usize>) -> Option<Elements> {
    let open = span.start;
    if text.get(open) != Some(&b'[') {
        return None;
    }
    let mut items = Vec::new();
    let mut i = skip_ws(text, open + 1);
    if text.get(i) == Some(&b']') {
        return (i + 1 == span.end).then_some(Elements {
            open,
            items,
            close: i,
        });
    }
    loop {
        let end = value_end(text, i)?;
        items.push(i..end);
        i = skip_ws(text, end);
        match text.get(i)? {
            b',' => i = skip_ws(text, i + 1),
            b']' if i + 1 == span.end => {
                return Some(Elements {
                    open,
                    items,
                    close: i,
                })
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at<'a>(text: &'a str, r: &Range<usize>) -> &'a str {
        &text[r.clone()]
    }

    #[test]
    fn members_and_elements_with_escapes_and_nesting() {
        let t = r#" { "a\"]}" : "x\\", "plu\u0067ins" :[ {"k":[1,{"]":"}"}]} ,2e-3, null ,"s,]"] ,"z":{}}"#;
        let m = members(t.as_bytes()).unwrap();
        let keys: Vec<&str> = m.iter().map(|m| m.key.as_str()).collect();
        assert_eq!(keys, ["a\"]}", "plugins", "z"]);
        assert_eq!(at(t, &m[0].value), r#""x\\""#);
        let e = elements(t.as_bytes(), m[1].value.clone()).unwrap();
        let items: Vec<&str> = e.items.iter().map(|r| at(t, r)).collect();
        assert_eq!(
            items,
            [r#"{"k":[1,{"]":"}"}]}"#, "2e-3", "null", r#""s,]""#]
        );
        assert_eq!(&t[e.close..e.close + 1], "]");
        assert_eq!(at(t, &m[2].value), "{}");
    }

    #[test]
    fn empty_shapes_and_garbage_give_none_not_panics() {
        assert_eq!(members(b"{}").unwrap(), vec![]);
        let e = elements(b"[ ]", 0..3).unwrap();
        assert!(e.items.is_empty());
        for bad in [
            &b""[..],
            b"[",
            b"{\"a\"",
            b"{\"a\":",
            b"{\"a\":1",
            b"{\"a\\",
            b"{\"a\":1 2}",
            b"{\"a\":}",
            b"}}}}",
            b"{\"a\":]]]",
        ] {
            assert!(members(bad).is_none(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(elements(b"[1,2", 0..4).is_none());
        assert!(elements(b"[1,2]", 0..3).is_none(), "span must end at ]");
        assert!(elements(b"{}", 0..2).is_none());
        assert!(elements(b"[", 5..9).is_none());
        let deep = "[".repeat(100_000);
        assert!(elements(deep.as_bytes(), 0..deep.len()).is_none());
    }
}
