//! septa controller and CLI: reachability reports, flow queries, and least-privilege
//! NetworkPolicy recommendations learned from flows.

pub mod flows;
pub mod reachability;
pub mod recommend;
