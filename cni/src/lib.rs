//! `septa-cni`: a chained CNI plugin (spec 0.3.0 to 1.1.0). It runs after the plugin that made
//! the pod's veth (bridge, ptp, flannel, ...), registers the endpoint with the agent, waits
//! until its programs and map entries are in place, and passes `prevResult` through unchanged.
//!
//! Fail mode: ADD waits for the agent's socket (`socketWaitSeconds`), then fails (code 11, try
//! again later) when the agent cannot be reached, so a pod never starts unprotected; DEL always
//! succeeds, even with the agent down or a configuration it cannot read.
//!
//! [`conflist`] is the pure core of installing the plugin into a node's CNI configuration: which
//! file the runtime uses, septa's entry spliced into it and removed byte for byte.

pub mod conflist;
pub mod ethtool;
pub mod invocation;
mod jsontext;
pub mod plugin;
