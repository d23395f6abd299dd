//! The last good manifests, kept in the state directory so that a restart never enforces less
//! than the run before it.
//!
//! A load of the manifests directory is applied only when it has no errors; the texts of that
//! load are then saved (the same two-copy scheme as the endpoint registry: `manifests.json.prev`
//! and then `manifests.json`, each replaced atomically and fsynced, see [`crate::dirs`]). An agent
//! that starts on a directory with errors loads this copy instead and enforces it, threat
//! feeds and FQDN rules included, until the directory is fixed.
//!
//! The copy holds the files' texts, not a compiled form: it is loaded by the same loader as
//! the directory, so it means what the directory meant. A copy is saved only when loading it
//! gives exactly what was applied (a file changed between the read of the texts and the load
//! would otherwise be saved as something that was never applied).

use std::path::{Path, PathBuf};

use policies::{load::load_str, Cluster, Diagnostics};
use serde::{Deserialize, Serialize};

use crate::dirs::Dir;

/// The copy's file in the state directory.
pub const FILE: &str = "manifests.json";
/// The second copy, written just before `FILE`, read when `FILE` is missing or damaged.
pub const PREVIOUS: &str = "manifests.json.prev";
/// Largest copy read.
pub const MAX_BYTES: u64 = 256 << 20;

/// The texts of one good load of the manifests directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// The directory they were read from.
    pub dir: PathBuf,
    /// When the load was applied (seconds since the Unix epoch).
    pub saved_at: u64,
    /// Every manifest file, in the order the loader reads them.
    pub files: Vec<SavedFile>,
}

/// One manifest file of a [`Snapshot`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedFile {
    /// Its path relative to the directory.
    pub path: String,
    pub text: String,
}

impl Snapshot {
    /// Load the saved texts as one stream, so that what spans files (workloads and their
    /// ReplicaSets, namespaces used but not declared) is resolved as in the directory.
    /// Problems name the copy's file.
    pub fn load(&self, name: &str) -> (Cluster, Diagnostics) {
        let mut text = String::new();
        for f in &self.files {
            text.push_str("\n---\n");
            text.push_str(&f.text);
        }
        load_str(name, &text)
    }

    /// Whether loading this copy gives `cluster` (where objects were read aside).
    pub fn restores(&self, cluster: &Cluster) -> bool {
        let unplaced = |c: &Cluster| {
            let mut c = c.clone();
            for o in &mut c.custom {
                o.at.clear();
            }
            c
        };
        let (restored, problems) = self.load("");
        problems.is_empty() && unplaced(&restored) == unplaced(cluster)
    }

    /// Write both copies (mode 0600), durably. The error names the file.
    pub fn save(&self, dir: &Dir) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(self)?;
        dir.replace(PREVIOUS, &bytes, 0o600)?;
        dir.replace(FILE, &bytes, 0o600)
    }

    /// Read the saved copy: `FILE`, or `PREVIOUS` when `FILE` is missing or damaged. `Ok(None)`
    /// when neither exists. The second value is where it was read from; errors name both files.
    pub fn read(dir: &Dir) -> Result<Option<(Self, PathBuf)>, String> {
        let one = |name: &str| -> Result<Option<Self>, String> {
            match dir.read(name, MAX_BYTES) {
                Ok(None) => Ok(None),
                Ok(Some(b)) => serde_json::from_slice(&b)
                    .map(Some)
                    .map_err(|e| format!("{}: {e}", dir.join(name).display())),
                Err(e) => Err(e.to_string()),
            }
        };
        match one(FILE) {
            Ok(Some(s)) => Ok(Some((s, dir.join(FILE)))),
            current => match (current, one(PREVIOUS)) {
                (_, Ok(Some(s))) => Ok(Some((s, dir.join(PREVIOUS)))),
                (Ok(None), Ok(None)) => Ok(None),
                (Err(e), Ok(None)) | (Ok(None), Err(e)) => Err(e),
                (Err(a), Err(b)) => Err(format!("{a}; and {b}")),
                (Ok(Some(_)), _) => unreachable!("matched above"),
            },
        }
    }

    /// Remove both copies (enforcement removed: nothing to start from).
    pub fn remove_files(dir: &Dir) -> std::io::Result<()> {
        dir.remove(FILE)?;
        dir.remove(PREVIOUS)
    }
}

/// Read the texts of the manifest files under `dir` in the loader's order: entries sorted,
/// directories entered where they sort, links to directories skipped, `.yaml`, `.yml` and
/// `.json` files read. Only regular files are read, opened non-blocking (a FIFO never hangs
/// the reader). `None` when one cannot be read (the load reports it).
pub fn read_texts(dir: &Path) -> Option<Vec<SavedFile>> {
    let mut out = Vec::new();
    walk(dir, dir, &mut out).then_some(out)
}

fn walk(root: &Path, d: &Path, out: &mut Vec<SavedFile>) -> bool {
    let Ok(rd) = std::fs::read_dir(d) else {
        return false;
    };
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for e in entries {
        let Ok(lmeta) = std::fs::symlink_metadata(&e) else {
            continue;
        };
        if lmeta.is_dir() {
            if !walk(root, &e, out) {
                return false;
            }
        } else if lmeta.file_type().is_symlink() && e.is_dir() {
            continue;
        } else if matches!(
            e.extension().and_then(|x| x.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            let Some(text) = read_regular(&e) else {
                return false;
            };
            let path = e.strip_prefix(root).unwrap_or(&e).display().to_string();
            out.push(SavedFile { path, text });
        }
    }
    true
}

fn read_regular(p: &Path) -> Option<String> {
    use std::{io::Read, os::unix::fs::OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(p)
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut s = String::new();
    f.take(policies::load::MAX_FILE_BYTES + 1)
        .read_to_string(&mut s)
        .ok()?;
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("septa-snapshot-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_copy_loads_to_what_the_directory_loaded_across_files() {
        let d = scratch("across");
        std::fs::create_dir_all(d.join("apps")).unwrap();
        // A Deployment and its ReplicaSet in two files: the ReplicaSet is folded into the
        // Deployment only when both are seen by one load.
        std::fs::write(
            d.join("apps/deploy.yaml"),
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: demo}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: c, image: x}]}\n",
        )
        .unwrap();
        std::fs::write(
            d.join("feed.json"),
            r#"{"apiVersion":"septa.dev/v1alpha1","kind":"ThreatFeed","metadata":{"name":"f"},"spec":{"url":"https://example.org/x"}}"#,
        )
        .unwrap();
        std::fs::write(d.join("notes.txt"), "not a manifest").unwrap();
        let (live, problems) = policies::load::load_paths(&[&d]);
        assert!(problems.is_empty(), "{problems:?}");
        let snap = Snapshot {
            dir: d.clone(),
            saved_at: 0,
            files: read_texts(&d).unwrap(),
        };
        assert_eq!(
            snap.files
                .iter()
                .map(|f| f.path.as_str())
                .collect::<Vec<_>>(),
            ["apps/deploy.yaml", "feed.json"]
        );
        assert!(snap.restores(&live));
        let mut other = live.clone();
        other.custom.clear();
        assert!(!snap.restores(&other));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_second_copy_stands_in_for_a_damaged_first() {
        let d = scratch("copies");
        let dir = Dir::open(&d.join("state"), "state directory").unwrap();
        assert_eq!(Snapshot::read(&dir).unwrap(), None);
        let snap = Snapshot {
            dir: "/m".into(),
            saved_at: 7,
            files: vec![SavedFile {
                path: "a.yaml".into(),
                text: "kind: Namespace\n".into(),
            }],
        };
        snap.save(&dir).unwrap();
        let (got, from) = Snapshot::read(&dir).unwrap().unwrap();
        assert_eq!((got, from), (snap.clone(), dir.join(FILE)));
        dir.replace(FILE, b"{half", 0o600).unwrap();
        let (got, from) = Snapshot::read(&dir).unwrap().unwrap();
        assert_eq!((got, from), (snap, dir.join(PREVIOUS)));
        dir.replace(PREVIOUS, b"[]", 0o600).unwrap();
        let e = Snapshot::read(&dir).unwrap_err();
        assert!(e.contains(FILE) && e.contains(PREVIOUS), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
