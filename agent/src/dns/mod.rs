//! DNS-aware egress: the FqdnPolicy kind, name patterns, answer parsing, the queries answers
//! must match, the engine that turns trusted answers into allowlist entries, and the maps and
//! re-injection that connect it to the data path.

pub mod answer;
pub mod engine;
pub mod inject;
pub use dataplane::dns as maps;
pub use policies::septa::pattern;
pub mod solicit;
pub use policies::septa::fqdn as spec;
pub mod stream;
