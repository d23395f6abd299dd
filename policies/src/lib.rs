//! septa's policy engine: pure functions from Kubernetes objects to decisions and to the
//! data-path map state. Used by the agent, the `septa` CLI and the controller.
//!
//! - [`load`] reads manifests (files, directories, multi-document YAML and JSON) into a
//!   [`model::Cluster`], reporting bad objects with the file, object and field.
//! - [`eval`] is the reference evaluator: (source, destination, protocol, port) → verdict and
//!   the rules that decided it, straight from the policy text; and (client, Service port or
//!   node port) → verdict, decided by the Service's backends.
//! - [`compile`] turns a cluster into the desired data-path state (identities, ipcache,
//!   policy entries, per-endpoint isolation, Service addresses), deterministically, and diffs
//!   two states.
//! - [`connlist`] lists every allowed connection between workloads, external ranges, the
//!   names of FqdnPolicies and Services.
//! - [`cnp`] validates ClusterNetworkPolicies (admin and baseline tiers) into the model.
//! - [`septa`] validates septa's own kinds (FqdnPolicy, ThreatFeed) for the agent and the CLI.
//!
//! The compiler is checked against the evaluator through the kernel's own lookup code
//! (`dataplane_common::policy`), so the three agree by test, not by hope.

#![forbid(unsafe_code)]

pub mod cnp;
pub mod compile;
pub mod connlist;
pub mod error;
pub mod eval;
pub mod load;
pub mod model;
pub mod ports;
pub mod selector;
pub mod septa;

pub use error::{Diagnostic, Diagnostics};
pub use model::Cluster;
