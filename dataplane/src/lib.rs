//! septa's node data plane in userspace: loading and attaching the eBPF programs, typed access
//! to their maps, reading their events, and running them under `BPF_PROG_TEST_RUN`.
//!
//! The kernel/user contract (map layouts, constants) is `dataplane-common`.

pub mod blocklist;
pub mod dns;
pub mod error;
pub mod events;
pub mod loader;
pub mod reconcile;
pub mod testrun;

pub use error::Error;
pub use events::EventReader;
pub use loader::{Datapath, LoadOptions};

/// The eBPF object built by build.rs, embedded in the binary.
pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/septa"));
