//! Endpoints registered by the CNI plugin, persisted so a restarted agent adopts the pods
//! that already exist (without restarting them).
//!
//! The registry is kept twice in the state directory: on every change `endpoints.json.prev`
//! and then `endpoints.json` are each replaced atomically with the same content (fsync of the
//! file and the directory; see [`crate::dirs`]), so either copy alone holds every
//! acknowledged endpoint. (A crash between the two writes leaves `endpoints.json` one change
//! behind, a change that was never acknowledged.)
//!
//! Fail mode on load: an unreadable or corrupt `endpoints.json` is moved aside to
//! `endpoints.json.corrupt` and the previous copy is used; when that copy is unreadable too,
//! the agent **refuses to start** with an error naming both files. It never starts empty over
//! a damaged registry: that would remove every pinned endpoint entry and cut every pod on the
//! node off (or leave them unenforced with `--fail-open`), whereas the pinned programs and
//! maps keep enforcing the last state while the agent is down. Rebuilding the registry from
//! the pinned maps is not attempted: they hold an interface's identity and addresses but not
//! the container id, pod name and labels a registration needs.

use std::{collections::BTreeMap, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::dirs::Dir;
use api::protocol::Endpoint;
use dataplane::Error;

/// The registry's file in the state directory.
pub const FILE: &str = "endpoints.json";
/// The second copy, written just before `FILE`, used when `FILE` is damaged or missing.
pub const PREVIOUS: &str = "endpoints.json.prev";
/// Where a damaged `FILE` is moved when the previous copy is used instead.
pub const CORRUPT: &str = "endpoints.json.corrupt";
/// Largest registry read (about 300 bytes an endpoint: far beyond any node's pods).
pub const MAX_BYTES: u64 = 256 << 20;

/// One registered endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    pub endpoint: Endpoint,
    /// The endpoint's slot in the kernel's endpoint map: the host-side interface index (in the
    /// agent's namespace) of a veth pod, a slot of its own for a cgroup workload. Registries
    /// written before the field had this name call it `ifindex`.
    #[serde(alias = "ifindex")]
    pub slot: u32,
    /// Stable id reported in events.
    pub endpoint_id: u32,
}

/// All registered endpoints, by container id.
#[derive(Debug)]
pub struct Registry {
    dir: Arc<Dir>,
    pub endpoints: BTreeMap<String, Registered>,
    next_id: u32,
}

/// What one copy of the registry holds: `Ok(None)` when the file does not exist.
type Copy = Result<Option<BTreeMap<String, Registered>>, String>;

impl Registry {
    /// Load from the state directory `dir`, falling back to the previous copy (see the module
    /// documentation). Returns the registry and, when the previous copy had to be used, what
    /// happened (for the log). No file at all is an empty registry (a new node).
    pub fn load(dir: Arc<Dir>) -> Result<(Self, Option<String>), Error> {
        let read = |name: &str| -> Copy {
            match dir.read(name, MAX_BYTES) {
                Ok(None) => Ok(None),
                Ok(Some(bytes)) => serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| format!("{}: {e}", dir.join(name).display())),
                Err(e) => Err(e.to_string()),
            }
        };
        let (endpoints, note) = match read(FILE) {
            Ok(Some(eps)) => (eps, None),
            Ok(None) => match read(PREVIOUS) {
                Ok(None) => (BTreeMap::new(), None),
                Ok(Some(eps)) => (
                    eps,
                    Some(format!(
                        "{} is missing; using {}",
                        dir.join(FILE).display(),
                        dir.join(PREVIOUS).display()
                    )),
                ),
                Err(prev) => {
                    return Err(refusal(
                        &dir,
                        &format!("{} is missing", dir.join(FILE).display()),
                        &prev,
                    ))
                }
            },
            Err(current) => match read(PREVIOUS) {
                Ok(Some(eps)) => {
                    dir.rename(FILE, CORRUPT).map_err(|e| {
                        Error::Config(format!(
                            "endpoint registry {current}; cannot move it aside to use {}: {e}",
                            dir.join(PREVIOUS).display()
                        ))
                    })?;
                    (
                        eps,
                        Some(format!(
                            "{current}; moved to {} and using {}",
                            dir.join(CORRUPT).display(),
                            dir.join(PREVIOUS).display()
                        )),
                    )
                }
                Ok(None) => {
                    return Err(refusal(
                        &dir,
                        &current,
                        &format!("{} does not exist", dir.join(PREVIOUS).display()),
                    ))
                }
                Err(prev) => return Err(refusal(&dir, &current, &prev)),
            },
        };
        let next_id = endpoints
            .values()
            .map(|e| e.endpoint_id + 1)
            .max()
            .unwrap_or(1);
        Ok((
            Registry {
                dir,
                endpoints,
                next_id,
            },
            note,
        ))
    }

    /// The next endpoint id.
    pub fn allocate_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Write both copies of the registry (mode 0600) and make them durable before returning:
    /// an endpoint is acknowledged only once this succeeded. The error names the file.
    pub fn save(&self) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.endpoints)?;
        self.dir.replace(PREVIOUS, &bytes, 0o600)?;
        self.dir.replace(FILE, &bytes, 0o600)
    }

    /// Remove the registry and its copies (enforcement removed: nothing to adopt).
    pub fn remove_files(&self) -> std::io::Result<()> {
        for name in [FILE, PREVIOUS, CORRUPT] {
            self.dir.remove(name)?;
        }
        Ok(())
    }
}

/// The error that stops the start when neither copy of the registry can be read.
fn refusal(dir: &Dir, current: &str, previous: &str) -> Error {
    Error::Config(format!(
        "endpoint registry unreadable: {current}; and {previous}. Refusing to start: starting \
         empty would remove every pinned endpoint entry, while the pinned programs and maps keep \
         enforcing the last state until the agent runs again. Restore {} (or {}) from a backup, \
         or remove both to start with no endpoints (every pod registered before then falls to \
         the data path's fail mode until it is added again)",
        dir.join(FILE).display(),
        dir.join(PREVIOUS).display()
    ))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn scratch(tag: &str) -> (PathBuf, Arc<Dir>) {
        let d = std::env::temp_dir().join(format!("septa-registry-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let dir = Arc::new(Dir::open(&d, "state directory (--state-dir)").unwrap());
        (d, dir)
    }

    #[test]
    fn a_registry_written_with_ifindex_reads_as_the_slot() {
        let old = serde_json::to_value(endpoint("c1", 1)).unwrap();
        let mut v = old.clone();
        let slot = v.as_object_mut().unwrap().remove("slot").unwrap();
        v["ifindex"] = slot;
        let r: Registered = serde_json::from_value(v).unwrap();
        assert_eq!(r, endpoint("c1", 1));
        assert!(old.get("ifindex").is_none(), "written under its own name");
    }

    fn endpoint(cid: &str, id: u32) -> Registered {
        Registered {
            endpoint: Endpoint {
                container_id: cid.into(),
                netns: "/run/netns/x".into(),
                ifname: "eth0".into(),
                host_ifname: format!("veth{id}"),
                cgroup: None,
                namespace: "demo".into(),
                name: cid.into(),
                labels: None,
                ips: vec![format!("10.0.0.{id}").parse().unwrap()],
            },
            slot: 10 + id,
            endpoint_id: id,
        }
    }

    fn saved(dir: &Arc<Dir>, cids: &[&str]) {
        let (mut r, _) = Registry::load(dir.clone()).unwrap();
        for (i, cid) in cids.iter().enumerate() {
            r.endpoints
                .insert((*cid).into(), endpoint(cid, i as u32 + 1));
            r.save().unwrap();
        }
    }

    fn cids(r: &Registry) -> Vec<&str> {
        r.endpoints.keys().map(String::as_str).collect()
    }

    #[test]
    fn a_truncated_registry_falls_back_to_the_previous_copy() {
        let (d, dir) = scratch("trunc");
        saved(&dir, &["a", "b"]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "root-only: it names every pod");
        let full = std::fs::read(d.join(FILE)).unwrap();
        std::fs::write(d.join(FILE), &full[..full.len() / 2]).unwrap();
        let (r, note) = Registry::load(dir.clone()).unwrap();
        assert_eq!(cids(&r), ["a", "b"], "nothing acknowledged is lost");
        let note = note.expect("the fallback is reported");
        assert!(note.contains(FILE) && note.contains(PREVIOUS), "{note}");
        assert_eq!(
            std::fs::read(d.join(CORRUPT)).unwrap(),
            &full[..full.len() / 2],
            "the damaged file is kept for inspection"
        );
        // The next write restores both copies.
        r.save().unwrap();
        let (again, note) = Registry::load(dir.clone()).unwrap();
        assert_eq!((cids(&again), note), (vec!["a", "b"], None));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_missing_registry_uses_the_previous_copy() {
        let (d, dir) = scratch("missing");
        saved(&dir, &["a", "b"]);
        std::fs::remove_file(d.join(FILE)).unwrap();
        let (r, note) = Registry::load(dir.clone()).unwrap();
        assert_eq!(cids(&r), ["a", "b"]);
        assert!(note.is_some());
        r.save().unwrap();
        // The crash between the two writes: the copies differ by a change never acknowledged,
        // and the main file, the older one, wins.
        let (mut r, _) = Registry::load(dir.clone()).unwrap();
        r.endpoints.insert("c".into(), endpoint("c", 3));
        let bytes = serde_json::to_vec(&r.endpoints).unwrap();
        dir.replace(PREVIOUS, &bytes, 0o600).unwrap();
        let (r, note) = Registry::load(dir.clone()).unwrap();
        assert_eq!((cids(&r), note), (vec!["a", "b"], None));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn both_copies_unreadable_refuses_to_start_naming_the_files() {
        /// (case, endpoints.json, endpoints.json.prev); None: no such file.
        type Case<'a> = (&'a str, Option<&'a [u8]>, Option<&'a [u8]>);
        let cases: [Case; 4] = [
            ("both-truncated", Some(b"{\"a\": {"), Some(b"{\"a\"")),
            ("no-previous", Some(b"not json"), None),
            ("missing-and-bad-previous", None, Some(b"[")),
            ("not-a-map", Some(b"[1, 2]"), Some(b"\"x\"")),
        ];
        for (tag, current, previous) in cases {
            let (d, dir) = scratch(tag);
            for (name, content) in [(FILE, current), (PREVIOUS, previous)] {
                if let Some(c) = content {
                    std::fs::write(d.join(name), c).unwrap();
                }
            }
            let e = Registry::load(dir.clone()).unwrap_err().to_string();
            assert!(
                e.contains(&d.join(FILE).display().to_string())
                    && e.contains(&d.join(PREVIOUS).display().to_string())
                    && e.contains("Refusing to start"),
                "{tag}: {e}"
            );
            for (name, content) in [(FILE, current), (PREVIOUS, previous)] {
                assert_eq!(
                    std::fs::read(d.join(name)).ok().as_deref(),
                    content,
                    "{tag}: {name} left as it was for the operator"
                );
            }
            let _ = std::fs::remove_dir_all(&d);
        }
    }

    #[test]
    fn no_registry_at_all_is_an_empty_one() {
        let (d, dir) = scratch("new");
        let (r, note) = Registry::load(dir).unwrap();
        assert!(r.endpoints.is_empty() && note.is_none());
        let _ = std::fs::remove_dir_all(&d);
    }
}
