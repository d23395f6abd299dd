//! `septa-cni`: a chained CNI plugin (spec 1.0 and 1.1). It runs after the plugin that made
//! the pod's veth (bridge, ptp, flannel, ...), registers the endpoint with the agent, waits
//! until its programs and map entries are in place, and passes `prevResult` through unchanged.
//!
//! Fail mode: ADD fails (code 11, try again later) when the agent cannot be reached, so a pod
//! never starts unprotected; DEL always succeeds, even with the agent down.

pub mod conflist;
pub mod ethtool;
pub mod plugin;
