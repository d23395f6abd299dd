//! Threat feeds: lists of malicious addresses, pulled from URLs or files, enforced at XDP on
//! host interfaces and at TC on pod veths.
//!
//! This module holds the pure parts: the `ThreatFeed` manifest ([`spec`]) and the parser for
//! the feed formats ([`parse`]), and the merged blocklist with its guards and map diff
//! ([`store`]). Fetching and the kernel LPM maps build on them.

pub mod fetch;
pub mod manager;
pub use dataplane::blocklist as maps;
pub mod parse;
pub use policies::septa::feed as spec;
pub mod store;
