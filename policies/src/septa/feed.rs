//! The `ThreatFeed` manifest (`apiVersion: septa.dev/v1alpha1`, typed in
//! [`api::threat_feed`]), validated once.
//!
//! ```yaml
//! apiVersion: septa.dev/v1alpha1
//! kind: ThreatFeed
//! metadata: {name: spamhaus-drop}
//! spec:
//!   url: https://www.spamhaus.org/drop/drop.txt     # or file: /etc/septa/feeds/drop.txt
//!   format: lines                                   # lines | csv | json
//!   csvColumn: 0                                    # csv only: which column (0-based)
//!   csvHeader: false                                # csv only: skip the first line
//!   refresh: 1h
//!   action: drop                                    # drop | audit
//!   appliesTo: [hostIngress, podEgress, podIngress]
//! ```

use std::{collections::BTreeSet, path::PathBuf, time::Duration};

use api::threat_feed::{FeedAction, FeedFormat, FeedHook, ThreatFeedSpec};

/// Where a feed comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Url(String),
    File(PathBuf),
}

/// How a feed's body is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One address or CIDR per line; `#` and `;` start comments (Spamhaus DROP, FireHOL).
    Lines,
    /// Comma-separated values; the address is in `column` (0-based).
    Csv { column: usize, header: bool },
    /// A JSON array of address/CIDR strings.
    Json,
}

/// What happens to matching traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Drop,
    /// Let it through, record it (verdict AUDIT).
    Audit,
}

/// Where a feed is enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    /// XDP on host interfaces: traffic from listed addresses, before the stack sees it.
    HostIngress,
    /// TC: pods calling out to listed addresses.
    PodEgress,
    /// TC: listed addresses calling in to pods.
    PodIngress,
}

/// A validated feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedSpec {
    pub name: String,
    pub source: Source,
    pub format: Format,
    pub refresh: Duration,
    pub action: Action,
    pub applies_to: BTreeSet<Hook>,
}

impl Hook {
    /// The index of this hook in the kernel's [`dataplane_common::BlockEntry`].
    pub fn index(self) -> usize {
        use dataplane_common::block_hook;
        match self {
            Hook::HostIngress => block_hook::HOST_INGRESS,
            Hook::PodEgress => block_hook::POD_EGRESS,
            Hook::PodIngress => block_hook::POD_INGRESS,
        }
    }
}

impl FeedSpec {
    /// The [`dataplane_common::block_action`] this feed takes at each hook.
    pub fn actions(&self) -> Actions {
        use dataplane_common::block_action;
        let a = match self.action {
            Action::Drop => block_action::DROP,
            Action::Audit => block_action::AUDIT,
        };
        let mut out = [block_action::NONE; dataplane_common::block_hook::COUNT];
        for h in &self.applies_to {
            out[h.index()] = a;
        }
        out
    }
}

/// A [`dataplane_common::block_action`] per [`dataplane_common::block_hook`].
pub type Actions = [u8; dataplane_common::block_hook::COUNT];

/// A field-level problem: (field path, message).
pub type SpecError = (String, String);

/// Shortest refresh accepted by default (feed hosts rate-limit; Spamhaus asks for at most
/// hourly). The agent's `--feed-min-refresh` lowers it for labs and tests.
pub const MIN_REFRESH: Duration = Duration::from_secs(60);

/// Validate a `ThreatFeed` object (already known to have that kind).
pub fn from_manifest(v: &serde_json::Value) -> Result<FeedSpec, SpecError> {
    from_manifest_with(v, MIN_REFRESH)
}

/// [`from_manifest`] with another shortest refresh period.
pub fn from_manifest_with(
    v: &serde_json::Value,
    min_refresh: Duration,
) -> Result<FeedSpec, SpecError> {
    validate(v, min_refresh).map_err(|mut e| e.swap_remove(0))
}

/// Validate a `ThreatFeed` object and report every problem in it, in field order (never an
/// empty list). A spec that does not decode into [`ThreatFeedSpec`] (an unknown field or
/// value, a wrong type) is one problem.
pub fn validate(v: &serde_json::Value, min_refresh: Duration) -> Result<FeedSpec, Vec<SpecError>> {
    let mut errors: Vec<SpecError> = Vec::new();
    let name = v
        .pointer("/metadata/name")
        .and_then(|n| n.as_str())
        .filter(|n| !n.is_empty());
    match name {
        None => errors.push(("metadata.name".to_owned(), "missing".to_owned())),
        Some(name)
            if !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                || name.len() > 63 =>
        {
            errors.push((
                "metadata.name".into(),
                format!("{name:?} is not a DNS label (lowercase letters, digits, '-', at most 63)"),
            ))
        }
        Some(_) => {}
    }
    let Some(spec) = v.get("spec") else {
        errors.push(("spec".to_owned(), "missing".to_owned()));
        return Err(errors);
    };
    let raw: ThreatFeedSpec = match serde_path_to_error::deserialize(spec.clone()) {
        Ok(r) => r,
        Err(e) => {
            errors.push((format!("spec.{}", e.path()), e.into_inner().to_string()));
            return Err(errors);
        }
    };
    let source = match (raw.url, raw.file) {
        (Some(u), None) if !(u.starts_with("http://") || u.starts_with("https://")) => {
            errors.push((
                "spec.url".into(),
                format!("{u:?} is not an http or https URL"),
            ));
            None
        }
        (Some(u), None) => Some(Source::Url(u)),
        (None, Some(f)) if !f.is_absolute() => {
            errors.push((
                "spec.file".into(),
                format!("{} must be an absolute path", f.display()),
            ));
            None
        }
        (None, Some(f)) => Some(Source::File(f)),
        (Some(_), Some(_)) => {
            errors.push(("spec".into(), "give url or file, not both".into()));
            None
        }
        (None, None) => {
            errors.push(("spec".into(), "give url or file".into()));
            None
        }
    };
    let format = match raw.format.unwrap_or(FeedFormat::Lines) {
        FeedFormat::Lines => Format::Lines,
        FeedFormat::Json => Format::Json,
        FeedFormat::Csv => Format::Csv {
            column: raw.csv_column.unwrap_or(0),
            header: raw.csv_header.unwrap_or(false),
        },
    };
    if raw.csv_column.is_some() && !matches!(format, Format::Csv { .. }) {
        errors.push(("spec.csvColumn".into(), "only for format csv".into()));
    }
    let refresh = match raw.refresh {
        None => Some(Duration::from_secs(3600)),
        Some(r) => humantime::parse_duration(&r)
            .map_err(|e| errors.push(("spec.refresh".to_owned(), format!("{r:?}: {e}"))))
            .ok(),
    };
    if let Some(refresh) = refresh.filter(|r| *r < min_refresh) {
        errors.push((
            "spec.refresh".into(),
            format!("{refresh:?} is shorter than the minimum {min_refresh:?}"),
        ));
    }
    let action = match raw.action.unwrap_or(FeedAction::Drop) {
        FeedAction::Drop => Action::Drop,
        FeedAction::Audit => Action::Audit,
    };
    let applies_to: BTreeSet<Hook> = raw
        .applies_to
        .unwrap_or_else(|| {
            vec![
                FeedHook::HostIngress,
                FeedHook::PodEgress,
                FeedHook::PodIngress,
            ]
        })
        .into_iter()
        .map(|h| match h {
            FeedHook::HostIngress => Hook::HostIngress,
            FeedHook::PodEgress => Hook::PodEgress,
            FeedHook::PodIngress => Hook::PodIngress,
        })
        .collect();
    if applies_to.is_empty() {
        errors.push((
            "spec.appliesTo".into(),
            "empty: the feed would apply nowhere".into(),
        ));
    }
    match (name, source, refresh) {
        (Some(name), Some(source), Some(refresh)) if errors.is_empty() => Ok(FeedSpec {
            name: name.to_owned(),
            source,
            format,
            refresh,
            action,
            applies_to,
        }),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(spec: &str) -> Result<FeedSpec, SpecError> {
        let v: serde_json::Value = serde_yaml::from_str(&format!("apiVersion: septa.dev/v1alpha1\nkind: ThreatFeed\nmetadata: {{name: drop}}\nspec: {spec}\n")).unwrap();
        from_manifest(&v)
    }

    #[test]
    fn defaults_and_full_form() {
        let f = feed("{url: 'https://example.org/drop.txt'}").unwrap();
        assert_eq!(
            (f.format, f.action, f.refresh, f.applies_to.len()),
            (Format::Lines, Action::Drop, Duration::from_secs(3600), 3)
        );
        let f = feed("{file: /etc/septa/x.csv, format: csv, csvColumn: 2, csvHeader: true, refresh: 15m, action: audit, appliesTo: [podEgress]}").unwrap();
        assert_eq!(
            f.format,
            Format::Csv {
                column: 2,
                header: true
            }
        );
        assert_eq!(
            (f.action, f.refresh),
            (Action::Audit, Duration::from_secs(900))
        );
        assert_eq!(f.applies_to, [Hook::PodEgress].into());
    }

    #[test]
    fn bad_specs_name_the_field() {
        let cases = [
            ("{}", "spec", "url or file"),
            ("{url: 'ftp://x'}", "spec.url", "http"),
            ("{url: 'https://x', file: /x}", "spec", "not both"),
            ("{file: relative.txt}", "spec.file", "absolute"),
            ("{url: 'https://x', format: xml}", "spec.format", "xml"),
            (
                "{url: 'https://x', csvColumn: 1}",
                "spec.csvColumn",
                "only for",
            ),
            ("{url: 'https://x', refresh: 5s}", "spec.refresh", "minimum"),
            ("{url: 'https://x', refresh: soon}", "spec.refresh", "soon"),
            ("{url: 'https://x', action: block}", "spec.action", "block"),
            (
                "{url: 'https://x', appliesTo: [egress]}",
                "spec.appliesTo[0]",
                "egress",
            ),
            (
                "{url: 'https://x', appliesTo: []}",
                "spec.appliesTo",
                "nowhere",
            ),
            ("{url: 'https://x', colour: red}", "spec.", "unknown field"),
        ];
        for (spec, field, msg) in cases {
            let (f, m) = feed(spec).unwrap_err();
            assert!(f.starts_with(field) && m.contains(msg), "{spec}: {f}: {m}");
        }
        let v: serde_json::Value = serde_yaml::from_str(
            "kind: ThreatFeed\nmetadata: {name: Bad_Name}\nspec: {url: 'https://x'}",
        )
        .unwrap();
        assert_eq!(from_manifest(&v).unwrap_err().0, "metadata.name");
    }

    /// Every problem of a feed is reported, not only the first.
    #[test]
    fn every_problem_is_reported() {
        let v: serde_json::Value = serde_yaml::from_str("kind: ThreatFeed\nmetadata: {name: Bad}\nspec: {url: 'ftp://x', format: json, csvColumn: 2, refresh: 1s, appliesTo: []}\n").unwrap();
        let fields: Vec<String> = validate(&v, MIN_REFRESH)
            .unwrap_err()
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(
            fields,
            [
                "metadata.name",
                "spec.url",
                "spec.csvColumn",
                "spec.refresh",
                "spec.appliesTo"
            ]
        );
    }
}
