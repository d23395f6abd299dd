#![cfg_attr(not(any(test, feature = "std")), no_std)]
//! The kernel/user contract of septa's data path.
//!
//! Everything the eBPF programs and the agent must agree on lives here: map keys and values
//! (`#[repr(C)]`, `Copy`, no implicit padding), verdicts, drop reasons, reserved identities and
//! rule ids, and the event record. The packet parser and the policy lookup are written once,
//! here, behind tiny traits ([`parse::PacketBytes`], [`policy::PolicyMap`]) so that the same code
//! runs in the kernel and in host unit tests against plain byte slices and `HashMap`s.
//!
//! Feature `std` adds the host-side models of the kernel maps (lookups over `HashMap` and
//! `BTreeMap`), all a pure policy engine needs; `packets` adds frame builders for tests and
//! benchmarks; `user` adds `aya::Pod` impls for the map types, for the loader.

pub mod abi;
pub mod blocklist;
pub mod conntrack;
pub mod parse;
pub mod policy;

#[cfg(any(test, feature = "packets"))]
pub mod packets;

pub use abi::*;
