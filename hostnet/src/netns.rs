//! Running code inside a network namespace.
//!
//! A network namespace is per thread, so the closure runs on a fresh thread that enters the
//! namespace; the caller's thread never changes namespace. Sockets and interface lookups made
//! in the closure belong to that namespace; file descriptors (sockets, BPF links) stay valid
//! after the thread ends.

use std::{fs::File, os::fd::AsFd, path::Path};

use crate::Error;

/// Run `f` inside the network namespace at `path` (e.g. `/var/run/netns/NAME`).
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
    let ns = File::open(path).map_err(|source| Error::Netns {
        path: path.to_owned(),
        source,
    })?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // This thread is fresh and shares nothing, so only `f` runs in the namespace.
            enter(&ns).map_err(|source| Error::Netns {
                path: path.to_owned(),
                source,
            })?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Move the calling thread into the network namespace `ns` (an open namespace file). A
/// process that must live in it calls this before it starts any other thread.
pub fn enter(ns: &impl AsFd) -> std::io::Result<()> {
    rustix::thread::move_into_link_name_space(
        ns.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .map_err(std::io::Error::from)
}

/// The index of interface `name` in the caller's network namespace.
pub fn ifindex(name: &str) -> Result<u32, Error> {
    let c = std::ffi::CString::new(name).map_err(|_| Error::Interface {
        iface: name.to_owned(),
        reason: "name contains a NUL byte".into(),
    })?;
    nix::net::if_::if_nametoindex(c.as_c_str()).map_err(|e| Error::Interface {
        iface: name.to_owned(),
        reason: format!("no such interface ({})", std::io::Error::from(e)),
    })
}
