//! Running code inside a network namespace.
//!
//! A network namespace is per thread, so the closure runs on a fresh thread that enters the
//! namespace; the caller's thread never changes namespace. Sockets and interface lookups made
//! in the closure belong to that namespace; file descriptors (sockets, BPF links) stay valid
//! after the thread ends.

use std::{fs::File, os::fd::AsRawFd, path::Path};

use crate::Error;

/// Run `f` inside the network namespace at `path` (e.g. `/var/run/netns/NAME`).
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
    let ns = File::open(path).map_err(|source| Error::Netns {
        path: path.to_owned(),
        source,
    })?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this (fresh, unshared-with-anyone) thread with a valid fd.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(Error::Netns {
                    path: path.to_owned(),
                    source: std::io::Error::last_os_error(),
                });
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// The index of interface `name` in the caller's network namespace.
pub fn ifindex(name: &str) -> Result<u32, Error> {
    let c = std::ffi::CString::new(name).map_err(|_| Error::Interface {
        iface: name.to_owned(),
        reason: "name contains a NUL byte".into(),
    })?;
    // SAFETY: valid C string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(Error::Interface {
            iface: name.to_owned(),
            reason: format!("no such interface ({})", std::io::Error::last_os_error()),
        });
    }
    Ok(idx)
}
