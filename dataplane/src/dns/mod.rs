//! DNS-aware egress (issue 6, in progress): FQDN patterns and answer parsing. The policy kind,
//! the data path and the agent's answer handling build on these.

pub mod answer;
pub mod engine;
pub mod inject;
pub mod maps;
pub mod pattern;
pub mod spec;
