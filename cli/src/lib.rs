//! The `septa` CLI: reachability reports, flow queries, and least-privilege
//! NetworkPolicy recommendations learned from flows.

#![forbid(unsafe_code)]

pub mod flows;
pub mod objects;
pub mod output;
pub mod reachability;
pub mod recommend;
pub mod status;
