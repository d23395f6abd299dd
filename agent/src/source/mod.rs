//! The agent's sources behind one trait: the standalone one ([`dir`]: a directory of
//! manifests) and the Kubernetes one ([`kube`]: watches of the API server, kept in the compact
//! [`index`]). Everything below a source (compile, reconcile, DNS, feeds, flows) is the same
//! whatever the source.

pub mod dir;
pub mod index;
pub mod kube;

pub use dir::DirSource;

use policies::{Cluster, Diagnostics};

use crate::snapshot::Snapshot;

/// One read of a source: the whole input, and its problems.
pub struct Load {
    pub cluster: Cluster,
    pub problems: Diagnostics,
    /// The texts that were loaded, when they load to `cluster` on their own (see
    /// [`crate::snapshot`]): what to save once the load is applied; else why not. `None`
    /// when the load has problems (nothing is saved then).
    pub snapshot: Option<Result<Snapshot, String>>,
    /// The objects are the cluster's (the Kubernetes API): every pod with addresses is a peer
    /// with its identity, and the pods of this node are found by namespace and name.
    pub from_api: bool,
}

/// Where the agent's inputs come from. Everything below a source (compile, reconcile, DNS,
/// feeds, flows) is the same whatever the source: it hands over whole loads, and the agent
/// applies a load only when it has no errors. A source is polled on a thread of its own, so a
/// read that hangs stalls only that thread.
pub trait Source: Send {
    /// Read the inputs if they changed since the last poll.
    fn poll(&mut self) -> Option<Load>;

    /// Whether [`Source::poll`] waits for a change itself (then it is called again at once,
    /// rather than after the poll interval).
    fn waits(&self) -> bool {
        false
    }
}
