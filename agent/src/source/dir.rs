//! The standalone source: a directory of manifests, re-read when anything in it changes.
//!
//! Changes are noticed by polling a fingerprint (paths, sizes, modification times) every
//! `poll_interval`. The agent applies a load only when it has no errors at all: a policy with a
//! typo must not vanish and take its isolation with it, so the last good state stays enforced
//! and the errors are reported until the directory is fixed.

use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

use policies::load::load_paths;

use super::{Load, Source};
use crate::snapshot::{read_texts, Snapshot};

/// What the directory looks like: changes when a file is added, removed or written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fingerprint(Vec<(PathBuf, u64, Option<SystemTime>)>);

/// Fingerprint every file under `dir`.
pub fn fingerprint(dir: &Path) -> Fingerprint {
    let mut v = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(p),
                Ok(m) => v.push((p, m.len(), m.modified().ok())),
                Err(_) => {}
            }
        }
    }
    v.sort();
    Fingerprint(v)
}

/// The standalone source: the manifests directory and the last state read from it.
pub struct DirSource {
    /// The directory.
    pub dir: PathBuf,
    last: Fingerprint,
}

impl DirSource {
    /// A source for `dir`, not read yet.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            last: Fingerprint(vec![(PathBuf::from("<never read>"), 0, None)]),
        }
    }
}

impl Source for DirSource {
    /// Load if the directory changed since the last load.
    fn poll(&mut self) -> Option<Load> {
        let now = fingerprint(&self.dir);
        if now == self.last {
            return None;
        }
        self.last = now;
        let texts = read_texts(&self.dir);
        let (cluster, problems) = load_paths(&[&self.dir]);
        let snapshot = problems.is_empty().then(|| {
            let s = texts
                .map(|files| Snapshot {
                    dir: self.dir.clone(),
                    saved_at: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                    files,
                })
                .filter(|s| s.restores(&cluster));
            match s {
                Some(s) => Ok(s),
                None if fingerprint(&self.dir) != self.last => {
                    // Read again next time, whatever the fingerprint says then.
                    self.last = Fingerprint(vec![(PathBuf::from("<changed while read>"), 0, None)]);
                    Err("the manifests changed while they were read; they are saved once a read sees them unchanged".to_owned())
                }
                None => Err("their texts, loaded on their own, do not give what was applied (a file the saved copy cannot reproduce)".to_owned()),
            }
        });
        Some(Load {
            cluster,
            problems,
            snapshot,
            from_api: false,
        })
    }
}
