//! Endpoints registered by the CNI plugin, persisted so a restarted agent adopts the pods
//! that already exist (without restarting them).

use std::{collections::BTreeMap, path::PathBuf};

use serde::{Deserialize, Serialize};

use super::protocol::Endpoint;

/// One registered endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    pub endpoint: Endpoint,
    /// The host-side interface index (in the agent's namespace).
    pub ifindex: u32,
    /// Stable id reported in events.
    pub endpoint_id: u32,
}

/// All registered endpoints, by container id.
#[derive(Debug, Default)]
pub struct Registry {
    path: PathBuf,
    pub endpoints: BTreeMap<String, Registered>,
    next_id: u32,
}

impl Registry {
    /// Load from `dir/endpoints.json`; a missing file is an empty registry. A corrupt file is
    /// moved aside (named in the error) and the registry starts empty: the pods it held fall
    /// back to the data path's fail mode (closed by default) until they are registered again.
    pub fn load(dir: &std::path::Path) -> (Self, Option<String>) {
        let path = dir.join("endpoints.json");
        let mut r = Registry {
            path: path.clone(),
            endpoints: BTreeMap::new(),
            next_id: 1,
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (r, None),
            Err(e) => return (r, Some(format!("cannot read {}: {e}", path.display()))),
        };
        match serde_json::from_str::<BTreeMap<String, Registered>>(&text) {
            Ok(eps) => {
                r.next_id = eps.values().map(|e| e.endpoint_id + 1).max().unwrap_or(1);
                r.endpoints = eps;
                (r, None)
            }
            Err(e) => {
                let aside = path.with_extension("json.corrupt");
                let _ = std::fs::rename(&path, &aside);
                (
                    r,
                    Some(format!(
                        "{}: {e}; moved to {} and starting empty",
                        path.display(),
                        aside.display()
                    )),
                )
            }
        }
    }

    /// The next endpoint id.
    pub fn allocate_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Write atomically (temp file + rename).
    pub fn save(&self) -> std::io::Result<()> {
        if let Some(d) = self.path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&self.endpoints)?)?;
        std::fs::rename(&tmp, &self.path)
    }
}
