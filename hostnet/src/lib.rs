//! Host network facts from the kernel, shared by the agent, the CNI plugin and the loader:
//! running code inside a network namespace, interface indices, and interfaces as rtnetlink
//! reports them (the veth-peer proof), the addresses of this namespace, and the kernel's
//! monotonic clock, and the host side of a running pod found from its address. The system calls of septa's processes go through rustix and nix here,
//! not through raw FFI. No aya: the CNI plugin links this, not the loader.

#![forbid(unsafe_code)]

pub mod addrs;
pub mod adopt;
pub mod clock;
pub mod link;
pub mod netns;

use std::path::PathBuf;

/// A namespace or interface query failed; the message names which.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("interface `{iface}`: {reason}")]
    Interface { iface: String, reason: String },
}
