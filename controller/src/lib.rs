//! septa controller and CLI: reachability reports today; Kubernetes watches, learning from
//! flows and recommendations as their issues land.

pub mod flows;
pub mod reachability;
