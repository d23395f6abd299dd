//! Label selectors (matchLabels and matchExpressions), validated once, matched many times.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::error::FieldError;

/// Labels of a pod or namespace.
pub type Labels = BTreeMap<String, String>;

/// One requirement of a selector.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Requirement {
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        match self {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            // Kubernetes: NotIn matches when the key is absent, too.
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

/// A validated selector: all requirements must hold. Empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector(pub Vec<Requirement>);

impl Selector {
    /// The selector that matches everything.
    pub fn everything() -> Self {
        Selector(Vec::new())
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().all(|r| r.matches(labels))
    }

    /// Validate and convert; `field` is the path of the selector for error messages.
    pub fn from_k8s(sel: &LabelSelector, field: &str) -> Result<Self, FieldError> {
        let mut reqs = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            validate_key(k, &format!("{field}.matchLabels"))?;
            reqs.push(Requirement::In(k.clone(), BTreeSet::from([v.clone()])));
        }
        for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
            let f = format!("{field}.matchExpressions[{i}]");
            validate_key(&e.key, &format!("{f}.key"))?;
            let values: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
            let r = match e.operator.as_str() {
                "In" | "NotIn" => {
                    if values.is_empty() {
                        return Err(FieldError::new(
                            format!("{f}.values"),
                            format!("operator {} needs at least one value", e.operator),
                        ));
                    }
                    if e.operator == "In" {
                        Requirement::In(e.key.clone(), values)
                    } else {
                        Requirement::NotIn(e.key.clone(), values)
                    }
                }
                "Exists" | "DoesNotExist" => {
                    if !values.is_empty() {
                        return Err(FieldError::new(
                            format!("{f}.values"),
                            format!("operator {} takes no values", e.operator),
                        ));
                    }
                    if e.operator == "Exists" {
                        Requirement::Exists(e.key.clone())
                    } else {
                        Requirement::DoesNotExist(e.key.clone())
                    }
                }
                other => {
                    return Err(FieldError::new(
                        format!("{f}.operator"),
                        format!(
                        "unknown operator {other:?} (expected In, NotIn, Exists or DoesNotExist)"
                    ),
                    ))
                }
            };
            reqs.push(r);
        }
        reqs.sort();
        reqs.dedup();
        Ok(Selector(reqs))
    }
}

fn validate_key(k: &str, field: &str) -> Result<(), FieldError> {
    if k.is_empty() {
        return Err(FieldError::new(field, "empty label key"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: Option<&[&str]>) -> LabelSelector {
        LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: values.map(|v| v.iter().map(|s| s.to_string()).collect()),
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn operators() {
        let l = labels(&[("app", "web"), ("tier", "fe")]);
        let ok = |s: LabelSelector| Selector::from_k8s(&s, "s").unwrap().matches(&l);
        assert!(ok(expr("app", "In", Some(&["web", "api"]))));
        assert!(!ok(expr("app", "In", Some(&["api"]))));
        assert!(ok(expr("app", "NotIn", Some(&["api"]))));
        assert!(
            ok(expr("missing", "NotIn", Some(&["x"]))),
            "NotIn matches an absent key"
        );
        assert!(ok(expr("tier", "Exists", None)));
        assert!(ok(expr("missing", "DoesNotExist", None)));
        assert!(!ok(expr("tier", "DoesNotExist", None)));
        assert!(Selector::from_k8s(&LabelSelector::default(), "s")
            .unwrap()
            .matches(&Labels::new()));
    }

    #[test]
    fn invalid_selectors_name_the_field() {
        let e =
            Selector::from_k8s(&expr("a", "Equals", Some(&["x"])), "spec.podSelector").unwrap_err();
        assert_eq!(e.field, "spec.podSelector.matchExpressions[0].operator");
        assert!(e.message.contains("Equals"));
        let e = Selector::from_k8s(&expr("a", "Exists", Some(&["x"])), "s").unwrap_err();
        assert_eq!(e.field, "s.matchExpressions[0].values");
        let e = Selector::from_k8s(&expr("a", "In", Some(&[])), "s").unwrap_err();
        assert!(e.message.contains("at least one"));
    }
}
