//! FQDN patterns of `FqdnPolicy` rules.
//!
//! - `api.example.com`: exactly that name;
//! - `*.example.com`: one label in front of `example.com` (`a.example.com`, not
//!   `a.b.example.com`, not `example.com`);
//! - `**.example.com`: one or more labels in front (`a.example.com`, `a.b.example.com`).
//!
//! Names and patterns compare case-insensitively; a trailing dot is ignored. Invalid patterns
//! are rejected with what is wrong.

use std::fmt;

/// A validated pattern.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pattern {
    Exact(String),
    /// `*.suffix`: exactly one more label.
    OneLabel(String),
    /// `**.suffix`: one or more labels.
    AnyDepth(String),
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(n) => write!(f, "{n}"),
            Pattern::OneLabel(s) => write!(f, "*.{s}"),
            Pattern::AnyDepth(s) => write!(f, "**.{s}"),
        }
    }
}

/// Lower-case a name and drop one trailing dot.
pub fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

fn valid_name(n: &str) -> Result<(), String> {
    if n.is_empty() {
        return Err("empty name".into());
    }
    if n.len() > 253 {
        return Err(format!(
            "{} characters; a DNS name has at most 253",
            n.len()
        ));
    }
    for label in n.split('.') {
        if label.is_empty() {
            return Err(format!("{n:?} has an empty label"));
        }
        if label.len() > 63 {
            return Err(format!("label {label:?} is longer than 63 characters"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "{c:?} is not allowed in a DNS name (label {label:?})"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} starts or ends with '-'"));
        }
    }
    Ok(())
}

impl Pattern {
    /// Parse and validate a pattern.
    pub fn parse(p: &str) -> Result<Self, String> {
        let n = normalize(p.trim());
        if n == "*" || n == "**" {
            return Err(format!("{p:?}: a bare wildcard would match every name"));
        }
        let (ctor, rest): (fn(String) -> Pattern, &str) = if let Some(s) = n.strip_prefix("**.") {
            (Pattern::AnyDepth, s)
        } else if let Some(s) = n.strip_prefix("*.") {
            (Pattern::OneLabel, s)
        } else {
            (Pattern::Exact, n.as_str())
        };
        if rest.contains('*') {
            return Err(format!(
                "{p:?}: '*' and '**' are only allowed as the whole first label"
            ));
        }
        valid_name(rest).map_err(|e| format!("{p:?}: {e}"))?;
        if !matches!(ctor(String::new()), Pattern::Exact(_)) && !rest.contains('.') {
            return Err(format!(
                "{p:?}: a wildcard needs at least two labels after it (it would match a whole top-level domain)"
            ));
        }
        Ok(ctor(rest.to_owned()))
    }

    /// Whether `name` (any case, trailing dot or not) matches.
    pub fn matches(&self, name: &str) -> bool {
        let n = normalize(name);
        match self {
            Pattern::Exact(e) => n == *e,
            Pattern::OneLabel(s) => n
                .strip_suffix(s.as_str())
                .and_then(|head| head.strip_suffix('.'))
                .is_some_and(|head| !head.is_empty() && !head.contains('.')),
            Pattern::AnyDepth(s) => n
                .strip_suffix(s.as_str())
                .and_then(|head| head.strip_suffix('.'))
                .is_some_and(|head| !head.is_empty()),
        }
    }

    /// The name to pre-resolve, for exact patterns.
    pub fn exact(&self) -> Option<&str> {
        match self {
            Pattern::Exact(n) => Some(n),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_rules() {
        let exact = Pattern::parse("API.Example.com.").unwrap();
        assert_eq!(exact, Pattern::Exact("api.example.com".into()));
        assert!(exact.matches("api.example.com"));
        assert!(exact.matches("API.EXAMPLE.COM."));
        assert!(!exact.matches("x.api.example.com"));

        let one = Pattern::parse("*.example.com").unwrap();
        assert!(one.matches("a.example.com"));
        assert!(one.matches("A.Example.Com."));
        assert!(!one.matches("a.b.example.com"));
        assert!(!one.matches("example.com"));
        assert!(!one.matches("aexample.com"), "the suffix is whole labels");

        let deep = Pattern::parse("**.example.com").unwrap();
        assert!(deep.matches("a.example.com"));
        assert!(deep.matches("a.b.c.example.com."));
        assert!(!deep.matches("example.com"));
        assert!(!deep.matches("badexample.com"));
        assert_eq!(deep.to_string(), "**.example.com");
        assert_eq!(deep.exact(), None);
        assert_eq!(exact.exact(), Some("api.example.com"));
    }

    #[test]
    fn invalid_patterns_say_what_is_wrong() {
        for (p, why) in [
            ("", "empty name"),
            ("*", "would match every name"),
            ("**.", "would match every name"),
            ("*.com", "whole top-level domain"),
            ("**.com.", "whole top-level domain"),
            ("a.*.example.com", "only allowed as the whole first label"),
            ("*a.example.com", "only allowed as the whole first label"),
            ("***.example.com", "only allowed as the whole first label"),
            ("a..example.com", "empty label"),
            ("exa mple.com", "not allowed in a DNS name"),
            ("-a.example.com", "starts or ends with '-'"),
            ("héllo.example.com", "not allowed in a DNS name"),
        ] {
            let e = Pattern::parse(p).unwrap_err();
            assert!(e.contains(why), "{p:?}: {e}");
        }
        let long = format!("{}.example.com", "a".repeat(64));
        assert!(Pattern::parse(&long)
            .unwrap_err()
            .contains("longer than 63"));
        let huge = vec!["abcdefghi"; 30].join(".");
        assert!(Pattern::parse(&huge).unwrap_err().contains("at most 253"));
    }
}
