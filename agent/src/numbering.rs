//! Identity and rule numbers that survive a restart.
//!
//! The compiler numbers identities and rules in the order it first meets them, which within
//! one run keeps a small change small; but a restarted agent meets them all at once and would
//! number them in sorted order, which differs from the order in which pods and policies came.
//! Every map entry would then change, the policy revision would be bumped and every
//! established connection re-checked, for a restart with no input change, and for a moment
//! old policy entries would meet new identity numbers.
//!
//! So the agent keeps its own numbers, by what each number stands for, in the state directory
//! (`numbers.json`, written like the registry), and renames the compiler's numbers to them
//! before anything is written to the maps. Numbers are never reused: the next free one is kept
//! too. A lost or unreadable file costs one renumbering, never enforcement.

use std::collections::BTreeMap;

use policies::compile::DesiredState;
use serde::{Deserialize, Serialize};

use crate::dirs::Dir;

/// The file in the state directory.
pub const FILE: &str = "numbers.json";
/// Largest file read.
const MAX_BYTES: u64 = 64 << 20;

/// Identity and rule numbers by what they stand for (the compiler's key, written out).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Numbering {
    identities: BTreeMap<String, u32>,
    next_identity: u32,
    rules: BTreeMap<String, u32>,
    next_rule: u32,
}

impl Default for Numbering {
    fn default() -> Self {
        Self {
            identities: BTreeMap::new(),
            next_identity: dataplane_common::IDENTITY_FIRST_DYNAMIC,
            rules: BTreeMap::new(),
            next_rule: 1,
        }
    }
}

impl Numbering {
    /// Read the numbers of the last run; `Err` names the file (the caller starts afresh).
    pub fn read(dir: &Dir) -> Result<Self, String> {
        match dir.read(FILE, MAX_BYTES) {
            Ok(None) => Ok(Self::default()),
            Ok(Some(b)) => {
                serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", dir.join(FILE).display()))
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Write the numbers, durably (mode 0600).
    pub fn save(&self, dir: &Dir) -> std::io::Result<()> {
        dir.replace(FILE, &serde_json::to_vec(self)?, 0o600)
    }

    /// Rename the compiler's identity and rule numbers in `st` to this numbering, giving new
    /// keys the next free numbers and forgetting keys no longer used. Returns whether the
    /// numbering changed (and should be saved before the maps are written).
    pub fn apply(&mut self, st: &mut DesiredState) -> bool {
        let before = self.clone();
        let mut ids = BTreeMap::new();
        let mut kept = BTreeMap::new();
        for (key, &compiled) in &st.identities {
            let name = format!("{key:?}");
            let n = match self.identities.get(&name) {
                Some(&n) => n,
                None => {
                    let n = self.next_identity;
                    self.next_identity += 1;
                    n
                }
            };
            ids.insert(compiled, n);
            kept.insert(name, n);
        }
        self.identities = kept;
        let mut rules = BTreeMap::new();
        let mut kept = BTreeMap::new();
        for (&compiled, r) in &st.rules {
            let name = format!("{r:?}");
            let n = match self.rules.get(&name) {
                Some(&n) => n,
                None => {
                    let n = self.next_rule;
                    self.next_rule += 1;
                    n
                }
            };
            rules.insert(compiled, n);
            kept.insert(name, n);
        }
        self.rules = kept;
        let id = |i: u32| ids.get(&i).copied().unwrap_or(i);
        let rule = |i: u32| rules.get(&i).copied().unwrap_or(i);
        for v in st.identities.values_mut() {
            *v = id(*v);
        }
        for v in st.ipcache.values_mut() {
            *v = id(*v);
        }
        for e in st.endpoints.values_mut() {
            e.identity = id(e.identity);
        }
        st.policy = std::mem::take(&mut st.policy)
            .into_iter()
            .map(|(mut k, mut v)| {
                k.subject = id(k.subject);
                k.peer = id(k.peer);
                v.rule_id = rule(v.rule_id);
                (k, v)
            })
            .collect();
        st.rules = std::mem::take(&mut st.rules)
            .into_iter()
            .map(|(i, r)| (rule(i), r))
            .collect();
        *self != before
    }
}

#[cfg(test)]
mod tests {
    use policies::{compile::Compiler, load::load_str};

    use super::*;

    const POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: d}\nspec:\n  podSelector: {}\n  ingress: [{from: [{podSelector: {matchLabels: {app: a}}}, {ipBlock: {cidr: 192.0.2.0/24}}]}]\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: q, namespace: d}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  egress: [{to: [{podSelector: {}}]}]\n";

    fn pod(app: &str, ip: &str) -> String {
        format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {app}, namespace: d, labels: {{app: {app}}}}}\nspec: {{containers: [{{name: c, image: x}}]}}\nstatus: {{podIP: {ip}}}\n")
    }

    #[test]
    fn a_restarted_compiler_writes_the_same_numbers_as_the_run_it_replaces() {
        // The first run meets the pods one by one, in an order that is not sorted.
        let mut first = Compiler::default();
        let mut numbers = Numbering::default();
        let mut text = POLICY.to_owned();
        let mut st = None;
        for (app, ip) in [("z", "10.0.0.3"), ("m", "10.0.0.2"), ("a", "10.0.0.1")] {
            text.push_str(&pod(app, ip));
            let (c, problems) = load_str("m.yaml", &text);
            assert!(problems.is_empty(), "{problems:?}");
            let mut s = first.compile(&c);
            numbers.apply(&mut s);
            st = Some((c, s));
        }
        let (cluster, before) = st.unwrap();
        // What a restart without the saved numbers writes: other numbers.
        let fresh = Compiler::default().compile(&cluster);
        assert_ne!(fresh.policy, before.policy, "the scenario must renumber");
        // With them: the same maps, and nothing to save.
        let saved: Numbering =
            serde_json::from_slice(&serde_json::to_vec(&numbers).unwrap()).unwrap();
        let mut restarted = saved.clone();
        let mut after = Compiler::default().compile(&cluster);
        assert!(!restarted.apply(&mut after));
        assert_eq!(after.policy, before.policy);
        assert_eq!(after.ipcache, before.ipcache);
        assert_eq!(after.endpoints, before.endpoints);
        assert_eq!(after.rules, before.rules);
        assert_eq!(restarted, saved);
    }

    #[test]
    fn numbers_are_never_reused() {
        let mut c = Compiler::default();
        let mut numbers = Numbering::default();
        let (one, _) = load_str("m.yaml", &format!("{POLICY}{}", pod("z", "10.0.0.3")));
        let mut s = c.compile(&one);
        numbers.apply(&mut s);
        let used: Vec<u32> = s.identities.values().copied().collect();
        let (other, _) = load_str("m.yaml", &format!("{POLICY}{}", pod("y", "10.0.0.4")));
        let mut s = c.compile(&other);
        assert!(numbers.apply(&mut s));
        let pod_y = s.endpoints.get("d/y").expect("the pod's endpoint").identity;
        assert!(!used.contains(&pod_y), "{used:?} {pod_y}");
    }
}
