//! `septa-agent`: the node agent. Standalone mode reads workloads and policies from a
//! directory; endpoints (pods as network namespaces) are registered by `septa-cni` over a
//! Unix socket. Each change is compiled by the policy engine and reconciled into the maps as a
//! diff (see [`dataplane::reconcile`]).

pub mod cniconf;
pub mod config;
pub mod daemon;
pub mod dirs;
pub mod dns;
pub mod feeds;
pub mod flows;
pub mod fqdn;
pub mod health;
pub mod metrics;
pub mod numbering;
pub mod prepare;
pub mod registry;
pub mod run;
pub mod server;
pub mod snapshot;
pub mod source;
pub mod state;
